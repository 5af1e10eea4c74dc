//! `--plot DIR`: SVG figures of a run's results, drawn with `plotters`' SVG backend. Every
//! subcommand hands its records (and the latency histograms behind them) to its
//! [`crate::output::Reporter`], which calls [`write_figures`] once at the end; this module is the
//! only one that draws.
//!
//! Figures, each file named after the run (the subcommand and transport, `invoke-tcp-...`):
//!
//! - `cdf-BENCH[-MODE][-FUNCTION]-SIZE[-N-workers][-fan-out-N][-vs-BASELINE].svg`: the latency CDF of
//!   ours and of the baseline, per size (and worker count, fan-out, baseline other than raw TCP);
//! - `latency-BENCH[-MODE][-FUNCTION].svg`: p50 and p99 of ours and of the baseline against the size;
//! - `throughput-vs-in-flight.svg`: completions per second of ours and of the baseline against the
//!   invocations in flight (where the run has throughput lines);
//! - `throughput-vs-size.svg`: MiB/s of swap-out, swap-in and their baselines against the size;
//! - `throughput-vs-workers.svg`: completions per second of each function against the process's
//!   workers, beside its ideal scaling (`python-gil`).
//!
//! Every title names the machine (host name and CPU model) and the placement; every axis says
//! its unit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::prelude::*;
use thiserror::Error;

use crate::report::{format_size, Record, RunInfo};

/// Width and height of every figure, in pixels.
const FIGURE: (u32, u32) = (1024, 640);

/// Why a figure could not be written.
#[derive(Debug, Error)]
pub enum PlotError {
    /// The folder could not be made.
    #[error("cannot create {}: {source}", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Drawing or writing a figure failed.
    #[error("cannot draw {}: {message}", path.display())]
    Draw {
        /// The figure's file.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
}

/// The latency distribution behind one latency record: ours and, where the baseline's was
/// measured here (not by an external tool that reports percentiles only), the baseline's.
#[derive(Debug, Clone)]
pub struct Distribution {
    /// What it is: bench, backend, mode, size (as the record names them).
    pub what: String,
    /// The file-name part that tells it apart.
    pub stem: String,
    /// The baseline's name.
    pub baseline: &'static str,
    /// Ours: (latency in µs, fraction of iterations at most that long).
    pub ours: Vec<(f64, f64)>,
    /// The baseline's, alike.
    pub base: Option<Vec<(f64, f64)>>,
}

/// The CDF of a nanosecond histogram: (µs, cumulative fraction) at every recorded value.
fn cdf(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    hist.iter_recorded().map(|v| (v.value_iterated_to() as f64 / 1e3, v.quantile_iterated_to())).collect()
}

impl Distribution {
    /// The distribution of `record`'s measurement: `ours` and the baseline's histogram if any.
    pub fn of(record: &Record, ours: &Histogram<u64>, base: Option<&Histogram<u64>>) -> Self {
        let mut what = [Some(record.bench), record.backend, record.mode, record.function]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if record.bench != "allocate" {
            what.push(' ');
            what.push_str(&format_size(record.size));
        }
        // What else tells one line of a run from another: the figures of `reduce` per worker
        // count, of `remote-invoke` per fan-out, and a second baseline beside the first
        // (`message --redis`) would otherwise overwrite each other.
        if let Some(workers) = record.workers {
            what.push_str(&format!(" {workers} workers"));
        }
        if let Some(fan_out) = record.fan_out {
            what.push_str(&format!(" fan-out {fan_out}"));
        }
        if !matches!(record.baseline, "raw-tcp" | "none") {
            what.push_str(&format!(" vs {}", record.baseline));
        }
        Self { stem: what.replace(' ', "-"), what, baseline: record.baseline, ours: cdf(ours), base: base.map(cdf) }
    }
}

/// The machine as titles name it: host name and CPU model.
pub fn machine() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            matches!(key.trim(), "model name" | "Model" | "cpu model").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let host = if host.is_empty() { "unknown host".to_owned() } else { host };
    format!("{host}, {model}")
}

/// One line of a figure: its name, colour and points.
struct Line {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

const OURS: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const OURS_TAIL: RGBColor = RGBColor(0x17, 0xbe, 0xcf);
const BASE: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const BASE_TAIL: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

/// The axes of a figure: labels with units, and whether each is logarithmic.
struct Axes<'a> {
    x: &'a str,
    y: &'a str,
    x_log: bool,
    y_log: bool,
    /// Mark every point (sparse lines: one point per size or per in-flight count).
    marks: bool,
}

/// `lo..hi` around `values`, padded so that one value still makes a range.
fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return (1.0, 10.0);
    }
    if log {
        lo = lo.max(1e-9);
        hi = hi.max(lo);
        (lo / 1.5, hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.05).max(1e-9);
        let lo = if lo >= 0.0 { (lo - pad).max(0.0) } else { lo - pad };
        (lo, hi + pad)
    }
}

/// Draws `lines` into `path` under `title` (which the run's machine and placement follow).
fn draw(path: &Path, title: &str, info: &RunInfo, axes: &Axes, lines: &[Line]) -> Result<(), PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw { path: path.to_owned(), message: e.to_string() };
    let (x_lo, x_hi) = range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)), axes.x_log);
    let (y_lo, y_hi) = range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)), axes.y_log);
    let root = SVGBackend::new(path, FIGURE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let subtitle = format!("{} | placement {} | {}", machine(), info.placement, info.host);
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| fail(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(subtitle, ("sans-serif", 14)).margin(16).x_label_area_size(48).y_label_area_size(80);
    // Four combinations of linear and logarithmic axes, each its own coordinate type.
    macro_rules! plot {
        ($x:expr, $y:expr) => {{
            let mut chart = builder.build_cartesian_2d($x, $y).map_err(|e| fail(&e))?;
            chart.configure_mesh().x_desc(axes.x).y_desc(axes.y).draw().map_err(|e| fail(&e))?;
            for line in lines {
                let color = line.color;
                chart
                    .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| fail(&e))?
                    .label(line.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                if axes.marks {
                    chart
                        .draw_series(line.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                        .map_err(|e| fail(&e))?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| fail(&e))?;
        }};
    }
    match (axes.x_log, axes.y_log) {
        (true, true) => plot!((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale()),
        (true, false) => plot!((x_lo..x_hi).log_scale(), y_lo..y_hi),
        (false, true) => plot!(x_lo..x_hi, (y_lo..y_hi).log_scale()),
        (false, false) => plot!(x_lo..x_hi, y_lo..y_hi),
    }
    root.present().map_err(|e| fail(&e))
}

/// Writes every figure `records` and `distributions` of run `run` (`invoke-tcp`, `swap`, ...)
/// make into `dir` (created if missing), naming files `RUN-...svg`; returns the files written.
pub fn write_figures(
    dir: &Path,
    run: &str,
    info: &RunInfo,
    records: &[Record],
    distributions: &[Distribution],
) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(dir).map_err(|source| PlotError::Folder { path: dir.to_owned(), source })?;
    let mut written = Vec::new();
    let mut file = |name: &str| {
        let path = dir.join(format!("{run}-{name}.svg"));
        written.push(path.clone());
        path
    };

    for d in distributions {
        let mut lines = vec![Line { name: "praas".into(), color: OURS, points: d.ours.clone() }];
        if let Some(base) = &d.base {
            lines.push(Line { name: d.baseline.into(), color: BASE, points: base.clone() });
        }
        let axes = Axes {
            x: "latency (µs, log scale)",
            y: "fraction of iterations ≤ latency",
            x_log: true,
            y_log: false,
            marks: false,
        };
        let title = format!("{run}: latency CDF of {}, praas vs {}", d.what, d.baseline);
        draw(&file(&format!("cdf-{}", d.stem)), &title, info, &axes, &lines)?;
    }

    // p50 and p99 against the size, per kind of latency line (sizes are what varies).
    let mut latency: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.p50_ns.is_some() && r.bench != "allocate") {
        let key = [Some(r.bench), r.mode, r.function].into_iter().flatten().collect::<Vec<_>>().join("-");
        latency.entry(format!("{key}:{}", r.baseline)).or_default().push(r);
    }
    for (key, group) in &latency {
        let (kind, baseline) = key.split_once(':').unwrap_or((key, "none"));
        let us = |ns: Option<u64>| ns.map(|ns| ns as f64 / 1e3);
        let size = |r: &Record| r.size.max(1) as f64;
        let series = |f: &dyn Fn(&Record) -> Option<f64>| -> Vec<(f64, f64)> {
            group.iter().filter_map(|r| Some((size(r), f(r)?))).collect()
        };
        let mut lines = vec![
            Line { name: "praas p50".into(), color: OURS, points: series(&|r| us(r.p50_ns)) },
            Line { name: "praas p99".into(), color: OURS_TAIL, points: series(&|r| us(r.p99_ns)) },
        ];
        if baseline != "none" {
            lines.push(Line {
                name: format!("{baseline} p50"),
                color: BASE,
                points: series(&|r| us(r.baseline_p50_ns)),
            });
            lines.push(Line {
                name: format!("{baseline} p99"),
                color: BASE_TAIL,
                points: series(&|r| us(r.baseline_p99_ns)),
            });
        }
        lines.retain(|l| !l.points.is_empty());
        let axes = Axes {
            x: "payload size (bytes, log scale)",
            y: "latency (µs, log scale)",
            x_log: true,
            y_log: true,
            marks: true,
        };
        let versus = if baseline == "none" { String::new() } else { format!(" vs {baseline}") };
        let title = format!("{run}: {} p50 and p99 against size, praas{versus}", kind.replace('-', " "));
        draw(&file(&format!("latency-{kind}")), &title, info, &axes, &lines)?;
    }

    // Throughput against the invocations in flight.
    let throughput: Vec<&Record> =
        records.iter().filter(|r| r.ops_per_sec.is_some() && r.in_flight.is_some() && r.workers.is_none()).collect();
    if let Some(first) = throughput.first() {
        let point = |r: &&Record, rate: Option<f64>| Some((r.in_flight? as f64, rate? / 1e3));
        let ours = throughput.iter().filter_map(|r| point(r, r.ops_per_sec)).collect();
        let base = throughput.iter().filter_map(|r| point(r, r.baseline_ops_per_sec)).collect();
        let lines = [
            Line { name: "praas".into(), color: OURS, points: ours },
            Line { name: first.baseline.into(), color: BASE, points: base },
        ];
        let axes = Axes {
            x: "invocations in flight on one connection (log scale)",
            y: "throughput (thousand completions per second)",
            x_log: true,
            y_log: false,
            marks: true,
        };
        let title = format!("{run}: throughput of {} B invocations against in-flight count", first.size);
        draw(&file("throughput-vs-in-flight"), &title, info, &axes, &lines)?;
    }

    // Throughput against the workers, per function, beside each one's ideal scaling.
    let mut scaling: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.workers.is_some() && r.ops_per_sec.is_some()) {
        scaling.entry(r.function.unwrap_or(r.bench)).or_default().push(r);
    }
    if !scaling.is_empty() {
        let colors = [(OURS, OURS_TAIL), (BASE, BASE_TAIL)];
        let mut lines = Vec::new();
        for ((function, group), (color, ideal_color)) in scaling.iter().zip(colors.iter().cycle()) {
            let point = |r: &&Record, rate: Option<f64>| Some((r.workers? as f64, rate? / 1e3));
            let ours = group.iter().filter_map(|r| point(r, r.ops_per_sec)).collect();
            let ideal = group.iter().filter_map(|r| point(r, Some(r.baseline_ops_per_sec? * r.ideal_ratio?))).collect();
            lines.push(Line { name: function.to_string(), color: *color, points: ours });
            lines.push(Line { name: format!("{function} ideal"), color: *ideal_color, points: ideal });
        }
        let axes = Axes {
            x: "workers of the process (log scale)",
            y: "throughput (thousand completions per second)",
            x_log: true,
            y_log: false,
            marks: true,
        };
        let title = format!("{run}: throughput against the workers, with the ideal scaling");
        draw(&file("throughput-vs-workers"), &title, info, &axes, &lines)?;
    }

    // Swap throughput against the size.
    let transfers: Vec<&Record> = records.iter().filter(|r| r.secs.is_some() && r.bytes.is_some()).collect();
    if !transfers.is_empty() {
        let mib_per_s = |bytes: u64, secs: f64| bytes as f64 / (1 << 20) as f64 / secs.max(1e-12);
        let mut lines = Vec::new();
        for (bench, color, base_color) in [("swap-out", OURS, BASE), ("swap-in", OURS_TAIL, BASE_TAIL)] {
            let mine: Vec<&&Record> = transfers.iter().filter(|r| r.bench == bench).collect();
            let Some(first) = mine.first() else { continue };
            let size = |r: &Record| r.bytes.unwrap_or(0) as f64 / (1 << 20) as f64;
            let ours = mine.iter().filter_map(|r| Some((size(r), mib_per_s(r.bytes?, r.secs?)))).collect();
            let base = mine.iter().filter_map(|r| Some((size(r), mib_per_s(r.bytes?, r.baseline_secs?)))).collect();
            lines.push(Line { name: format!("praas {bench}"), color, points: ours });
            lines.push(Line { name: first.baseline.into(), color: base_color, points: base });
        }
        let axes = Axes {
            x: "state size (MiB, log scale)",
            y: "throughput (MiB/s, log scale)",
            x_log: true,
            y_log: true,
            marks: true,
        };
        let title = format!("{run}: swap throughput against state size, praas vs plain write/read");
        draw(&file("throughput-vs-size"), &title, info, &axes, &lines)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{self, Summary};

    fn info() -> RunInfo {
        RunInfo { transport: "tcp", placement: "server=0,client=0".into(), host: "linux 6.1.0 2cpu".into() }
    }

    #[test]
    fn every_kind_of_figure_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut ours = report::histogram();
        let mut base = report::histogram();
        for ns in 1..=1000u64 {
            ours.record(10_000 + ns * 10).unwrap();
            base.record(8_000 + ns * 10).unwrap();
        }
        let (o, b) = (Summary::of(&ours), Summary::of(&base));
        let records = vec![
            Record::latency("invoke", &info(), 8, 10, &o, "raw-tcp", &b),
            Record::latency("invoke", &info(), 1024, 10, &o, "raw-tcp", &b),
            Record::throughput(&info(), 8, 1, 100, 10, 50_000.0, "raw-tcp", 60_000.0),
            Record::throughput(&info(), 8, 8, 100, 10, 90_000.0, "raw-tcp", 120_000.0),
            Record::transfer("swap-out", &info(), 1 << 20, 3, 0.01, "plain-write", 0.008),
            Record::transfer("swap-in", &info(), 1 << 20, 3, 0.005, "plain-read", 0.004),
        ];
        let distributions = vec![Distribution::of(&records[0], &ours, Some(&base))];
        let files = write_figures(dir.path(), "invoke-tcp", &info(), &records, &distributions).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [
                "invoke-tcp-cdf-invoke-8B.svg",
                "invoke-tcp-latency-invoke.svg",
                "invoke-tcp-throughput-vs-in-flight.svg",
                "invoke-tcp-throughput-vs-size.svg"
            ]
        );
        for file in &files {
            let svg = std::fs::read_to_string(file).unwrap();
            assert!(svg.contains("<svg") && svg.contains("</svg>"), "{}", file.display());
            assert!(svg.contains("placement server=0,client=0"), "the title names the placement");
        }
        let cdf = std::fs::read_to_string(&files[0]).unwrap();
        assert!(cdf.contains("latency (µs, log scale)") && cdf.contains("raw-tcp"), "{cdf}");
    }

    #[test]
    fn lines_of_one_run_that_differ_in_workers_fan_out_or_baseline_get_figures_of_their_own() {
        let mut ours = report::histogram();
        ours.record(10_000).unwrap();
        let o = Summary::of(&ours);
        let mut records = [
            Record::latency("reduce", &info(), 8, 10, &o, "redis", &o),
            Record::latency("reduce", &info(), 8, 10, &o, "redis", &o),
            Record::latency("remote-invoke", &info(), 8, 10, &o, "raw-tcp", &o),
            Record::latency("remote-invoke", &info(), 8, 10, &o, "raw-tcp", &o),
            Record::latency("message", &info(), 8, 10, &o, "raw-tcp", &o),
            Record::latency("message", &info(), 8, 10, &o, "redis", &o),
        ];
        records[0].workers = Some(1);
        records[1].workers = Some(8);
        records[2].fan_out = Some(1);
        records[3].fan_out = Some(16);
        let stems: Vec<String> = records.iter().map(|r| Distribution::of(r, &ours, None).stem).collect();
        assert_eq!(
            stems,
            [
                "reduce-8B-1-workers-vs-redis",
                "reduce-8B-8-workers-vs-redis",
                "remote-invoke-8B-fan-out-1",
                "remote-invoke-8B-fan-out-16",
                "message-8B",
                "message-8B-vs-redis",
            ]
        );
    }

    #[test]
    fn the_machine_names_host_and_cpu() {
        let machine = machine();
        assert!(machine.contains(", "), "{machine}");
        assert!(!machine.starts_with("unknown host"), "{machine}");
    }

    #[test]
    fn a_distribution_is_a_rising_cdf() {
        let mut hist = report::histogram();
        for ns in [1_000u64, 2_000, 2_000, 4_000] {
            hist.record(ns).unwrap();
        }
        let points = cdf(&hist);
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{points:?}");
        assert_eq!(points.last().unwrap().1, 1.0);
        assert!((points[0].0 - 1.0).abs() < 0.01, "µs: {points:?}");
    }
}
