//! Results: one [`Record`] per measured line, as a JSON line or as a row of the table
//! (docs/benchmarks.md is the contract of the fields); [`crate::output`] prints them and draws
//! them.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds, from 1 ns to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records one measured duration.
pub fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    hist.saturating_record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1));
}

/// The figures a latency line reports from its histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(hist: &Histogram<u64>) -> Self {
        Self {
            count: hist.len(),
            p50: hist.value_at_quantile(0.50),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }
}

/// What every line of one run shares.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub transport: &'static str,
    pub placement: String,
    pub host: String,
}

/// One result line. Fields that do not apply to a kind of line are left out of its JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub bench: &'static str,
    /// `allocate`: `local` or `slurm`, and for Slurm `job` or `pool`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// The function measured, on lines that compare functions (`invoke --python`, `python-gil`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<&'static str>,
    /// Its language: `c` (the C ABI: C, C++ and Rust libraries) or `python`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<&'static str>,
    pub size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
    /// Worker threads of the served process (`python-gil`); worker processes (`reduce`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Processes invoked at once per round (`remote-fan-out`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<usize>,
    /// Points of the data set (`reduce`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<u64>,
    /// Clusters of the k-means step (`reduce`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clusters: Option<usize>,
    pub iters: u64,
    pub warmup: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secs: Option<f64>,
    /// Instructions per operation, as callgrind counts them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<f64>,
    pub baseline: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_p50_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_p99_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_ops_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_instructions: Option<f64>,
    /// `instructions` minus `baseline_instructions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_instructions: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_p50: Option<f64>,
    /// `p50_ns` minus `baseline_p50_ns` (negative when ours is faster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub higher_is_better: Option<bool>,
    /// What `ratio` would be with perfect scaling (`python-gil`: the workers, at most the CPUs
    /// the server may use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ideal_ratio: Option<f64>,
    /// Connections of the flood (`flood`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// The server's resident memory before the flood, in KiB (`flood`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    /// ... while the flood's connections were open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_during_kib: Option<u64>,
    /// ... once memory was back (or when the wait for it ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_kib: Option<u64>,
    /// Seconds from closing the flood until the resident memory was back within 16 MiB of where it
    /// started (absent: not within the wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaim_secs: Option<f64>,
    pub placement: String,
    pub host: String,
}

/// Ratios to 3 decimals, rates to 1: more digits than that are noise.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

impl Record {
    fn base(bench: &'static str, info: &RunInfo, size: usize, iters: u64, warmup: u64) -> Self {
        Self {
            bench,
            backend: None,
            mode: None,
            function: None,
            language: None,
            transport: Some(info.transport),
            size,
            in_flight: None,
            workers: None,
            fan_out: None,
            points: None,
            clusters: None,
            iters,
            warmup,
            p50_ns: None,
            p99_ns: None,
            p999_ns: None,
            max_ns: None,
            ops_per_sec: None,
            bytes: None,
            secs: None,
            instructions: None,
            baseline: "none",
            baseline_secs: None,
            baseline_p50_ns: None,
            baseline_p99_ns: None,
            baseline_ops_per_sec: None,
            baseline_instructions: None,
            added_instructions: None,
            ratio_p50: None,
            added_ns: None,
            ratio: None,
            higher_is_better: None,
            ideal_ratio: None,
            connections: None,
            rss_before_kib: None,
            rss_during_kib: None,
            rss_after_kib: None,
            reclaim_secs: None,
            placement: info.placement.clone(),
            host: info.host.clone(),
        }
    }

    fn with_latency(mut self, ours: &Summary) -> Self {
        self.p50_ns = Some(ours.p50);
        self.p99_ns = Some(ours.p99);
        self.p999_ns = Some(ours.p999);
        self.max_ns = Some(ours.max);
        self
    }

    /// A round-trip latency line against a latency baseline.
    pub fn latency(
        bench: &'static str,
        info: &RunInfo,
        size: usize,
        warmup: u64,
        ours: &Summary,
        baseline: &'static str,
        base: &Summary,
    ) -> Self {
        let mut record = Self::base(bench, info, size, ours.count, warmup).with_latency(ours);
        record.baseline = baseline;
        record.baseline_p50_ns = Some(base.p50);
        record.baseline_p99_ns = Some(base.p99);
        record.ratio_p50 = Some(round(ours.p50 as f64 / base.p50.max(1) as f64, 3));
        record
    }

    /// A latency line against another function's latency measured in the same run (`base`), with
    /// the p50 difference in `added_ns`.
    pub fn versus(
        bench: &'static str,
        info: &RunInfo,
        size: usize,
        warmup: u64,
        ours: &Summary,
        baseline: &'static str,
        base: &Summary,
    ) -> Self {
        let mut record = Self::latency(bench, info, size, warmup, ours, baseline, base);
        let signed = |ns: u64| i64::try_from(ns).unwrap_or(i64::MAX);
        record.added_ns = Some(signed(ours.p50) - signed(base.p50));
        record
    }

    /// A line of the workers' scaling: `ops` completions of `size`-byte inputs with `in_flight`
    /// outstanding on a process with `workers` workers, against the same function's rate with the baseline's
    /// workers; `ratio` (higher is better) is the speed-up, beside the `ideal` one.
    #[allow(clippy::too_many_arguments)]
    pub fn scaling(
        bench: &'static str,
        info: &RunInfo,
        size: usize,
        workers: usize,
        in_flight: u64,
        ops: u64,
        warmup: u64,
        ops_per_sec: f64,
        baseline: &'static str,
        baseline_ops_per_sec: f64,
        ideal: f64,
    ) -> Self {
        let mut record =
            Self::throughput(info, size, in_flight, ops, warmup, ops_per_sec, baseline, baseline_ops_per_sec);
        record.bench = bench;
        record.workers = Some(workers);
        record.ideal_ratio = Some(round(ideal, 3));
        record
    }

    /// A latency line with no baseline (and so no ratio), measured inside the process.
    pub fn unbaselined(bench: &'static str, info: &RunInfo, size: usize, warmup: u64, ours: &Summary) -> Self {
        let mut record = Self::base(bench, info, size, ours.count, warmup).with_latency(ours);
        record.transport = None;
        record
    }

    /// A throughput line: `ops` completions with `in_flight` outstanding, against a baseline rate.
    #[allow(clippy::too_many_arguments)]
    pub fn throughput(
        info: &RunInfo,
        size: usize,
        in_flight: u64,
        ops: u64,
        warmup: u64,
        ops_per_sec: f64,
        baseline: &'static str,
        baseline_ops_per_sec: f64,
    ) -> Self {
        let mut record = Self::base("throughput", info, size, ops, warmup);
        record.in_flight = Some(in_flight);
        record.ops_per_sec = Some(round(ops_per_sec, 1));
        record.baseline = baseline;
        record.baseline_ops_per_sec = Some(round(baseline_ops_per_sec, 1));
        record.ratio = Some(round(ops_per_sec / baseline_ops_per_sec.max(f64::MIN_POSITIVE), 3));
        record.higher_is_better = Some(true);
        record
    }

    /// A one-shot transfer of `bytes` (a swap) taking `secs`, against a baseline moving the same
    /// bytes in `baseline_secs`; `ratio` is our throughput over the baseline's.
    pub fn transfer(
        bench: &'static str,
        info: &RunInfo,
        bytes: u64,
        iters: u64,
        secs: f64,
        baseline: &'static str,
        baseline_secs: f64,
    ) -> Self {
        let mut record = Self::base(bench, info, bytes as usize, iters, 0);
        record.transport = None;
        record.bytes = Some(bytes);
        record.secs = Some(round(secs, 6));
        record.baseline = baseline;
        record.baseline_secs = Some(round(baseline_secs, 6));
        record.ratio = Some(round(baseline_secs / secs.max(f64::MIN_POSITIVE), 3));
        record.higher_is_better = Some(true);
        record
    }

    /// Instructions per operation (`ours`) against a baseline's (`base`), counted by callgrind
    /// over `iters` operations; `ratio` is ours over the baseline's (lower is better).
    #[allow(clippy::too_many_arguments)]
    pub fn instructions(
        bench: &'static str,
        info: &RunInfo,
        size: usize,
        iters: u64,
        ours: f64,
        baseline: &'static str,
        base: f64,
    ) -> Self {
        let mut record = Self::base(bench, info, size, iters, 0);
        record.instructions = Some(round(ours, 1));
        record.baseline = baseline;
        record.baseline_instructions = Some(round(base, 1));
        record.added_instructions = Some(round(ours - base, 1));
        record.ratio = Some(round(ours / base.max(f64::MIN_POSITIVE), 3));
        record
    }

    /// The record as one line of JSON.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }

    fn row(&self) -> [String; 9] {
        let dash = || "-".to_string();
        let time = |ns: Option<u64>| ns.map_or_else(dash, format_ns);
        let secs = |s: f64| format_ns((s * 1e9) as u64);
        let (p50, baseline, ratio) = match (self.ops_per_sec, self.secs) {
            _ if self.instructions.is_some() => (
                self.instructions.map_or_else(dash, |i| format!("{i:.0} instr")),
                self.baseline_instructions.map_or_else(dash, |i| format!("{i:.0} instr")),
                self.ratio.map_or_else(dash, |r| format!("{r:.3}")),
            ),
            (_, Some(ours)) => (
                secs(ours),
                self.baseline_secs.map_or_else(dash, secs),
                self.ratio.map_or_else(dash, |r| format!("{r:.2} (higher better)")),
            ),
            (Some(rate), None) => (
                format_rate(rate),
                self.baseline_ops_per_sec.map_or_else(dash, format_rate),
                self.ratio.map_or_else(dash, |r| format!("{r:.2} (higher better)")),
            ),
            (None, None) => {
                (time(self.p50_ns), time(self.baseline_p50_ns), self.ratio_p50.map_or_else(dash, |r| format!("{r:.2}")))
            }
        };
        let ratio = match (self.added_ns, self.ideal_ratio) {
            (Some(ns), _) => format!("{ratio} ({}{})", if ns < 0 { "-" } else { "+" }, format_ns(ns.unsigned_abs())),
            (None, Some(ideal)) => format!("{ratio}, ideal {ideal:.2}"),
            (None, None) => ratio,
        };
        let baseline = if self.baseline == "none" { dash() } else { format!("{baseline} {}", self.baseline) };
        let workers = self.workers.map(|n| format!("{n} worker{}", if n == 1 { "" } else { "s" }));
        let fan_out = self.fan_out.map(|n| format!("to {n}"));
        let bench = [Some(self.bench), self.backend, self.mode, self.function, workers.as_deref(), fan_out.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        [
            bench,
            format_size(self.size),
            self.in_flight.map_or_else(dash, |n| n.to_string()),
            self.iters.to_string(),
            p50,
            time(self.p99_ns),
            time(self.p999_ns),
            baseline,
            ratio,
        ]
    }
}

const HEADERS: [&str; 9] = ["bench", "size", "in_flight", "iters", "p50", "p99", "p99.9", "baseline p50", "ratio"];

/// The human table of `records`, columns aligned, numbers right-aligned.
pub fn table(records: &[Record]) -> String {
    let rows: Vec<[String; 9]> = records.iter().map(Record::row).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i == 0 {
                text.push_str(&format!("{cell:<width$}"));
            } else {
                text.push_str(&format!("  {cell:>width$}"));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&HEADERS.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}

/// Nanoseconds as microseconds (or milliseconds from 1 ms).
pub fn format_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}us", ns as f64 / 1e3)
    }
}

/// Operations per second, in thousands.
pub fn format_rate(rate: f64) -> String {
    format!("{:.1}k/s", rate / 1e3)
}

/// Bytes, in KiB or MiB when exact.
pub fn format_size(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}KiB", s >> 10),
        s => format!("{s}B"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::*;

    fn info() -> RunInfo {
        RunInfo { transport: "tcp", placement: "server=0,client=0".into(), host: "linux 6.1.0 2cpu".into() }
    }

    fn summary(p50: u64) -> Summary {
        Summary { count: 20_000, p50, p99: p50 * 2, p999: p50 * 3, max: p50 * 10 }
    }

    fn fields(record: &Record) -> Map<String, Value> {
        let line = record.json();
        assert!(!line.contains('\n'), "one line: {line}");
        match serde_json::from_str(&line).unwrap() {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    const LATENCY_FIELDS: [&str; 14] = [
        "bench",
        "transport",
        "size",
        "iters",
        "warmup",
        "p50_ns",
        "p99_ns",
        "p999_ns",
        "max_ns",
        "baseline",
        "baseline_p50_ns",
        "ratio_p50",
        "placement",
        "host",
    ];

    #[test]
    fn latency_line_has_every_required_field() {
        let record = Record::latency("invoke", &info(), 8, 2_000, &summary(12_000), "raw-tcp", &summary(10_000));
        let map = fields(&record);
        for field in LATENCY_FIELDS {
            assert!(map.contains_key(field), "missing {field} in {}", record.json());
        }
        assert_eq!(map["bench"], "invoke");
        assert_eq!(map["transport"], "tcp");
        assert_eq!(map["iters"], 20_000);
        assert_eq!(map["warmup"], 2_000);
        assert_eq!(map["baseline"], "raw-tcp");
        assert_eq!(map["ratio_p50"], 1.2);
        assert_eq!(map["placement"], "server=0,client=0");
        assert!(!map.contains_key("higher_is_better") && !map.contains_key("ops_per_sec"));
    }

    #[test]
    fn an_invoke_line_names_its_mode_only_when_asked() {
        let plain = Record::latency("invoke", &info(), 8, 2_000, &summary(12_000), "raw-tcp", &summary(10_000));
        assert!(!fields(&plain).contains_key("mode"), "{}", plain.json());
        let worker = Record { mode: Some("worker"), ..plain };
        let map = fields(&worker);
        assert_eq!(map["mode"], "worker");
        assert_eq!(map["bench"], "invoke");
        let text = table(&[worker]);
        assert!(text.lines().nth(1).unwrap().starts_with("invoke worker"), "{text}");
    }

    #[test]
    fn throughput_line_says_higher_is_better() {
        let record = Record::throughput(&info(), 8, 64, 50_000, 5_000, 90_000.04, "raw-tcp", 120_000.0);
        let map = fields(&record);
        for field in ["bench", "transport", "size", "in_flight", "iters", "warmup", "ops_per_sec", "baseline"] {
            assert!(map.contains_key(field), "missing {field}");
        }
        for field in ["baseline_ops_per_sec", "ratio", "placement", "host"] {
            assert!(map.contains_key(field), "missing {field}");
        }
        assert_eq!(map["bench"], "throughput");
        assert_eq!(map["in_flight"], 64);
        assert_eq!(map["ops_per_sec"], 90_000.0);
        assert_eq!(map["ratio"], 0.75);
        assert_eq!(map["higher_is_better"], true);
        assert!(!map.contains_key("ratio_p50"));
    }

    #[test]
    fn a_versus_line_adds_the_p50_difference() {
        let mut record = Record::versus("python-vs-c", &info(), 8, 2_000, &summary(12_500), "c-noop", &summary(12_000));
        record.mode = Some("worker");
        record.function = Some("py_noop_worker");
        record.language = Some("python");
        let map = fields(&record);
        assert_eq!((map["added_ns"].as_i64(), map["ratio_p50"].as_f64()), (Some(500), Some(1.042)));
        assert_eq!(
            (&map["baseline"], &map["language"], &map["function"]),
            (&"c-noop".into(), &"python".into(), &"py_noop_worker".into())
        );
        let faster = Record::versus("python-vs-c", &info(), 8, 0, &summary(900), "c-noop", &summary(1_000));
        assert_eq!(fields(&faster)["added_ns"], -100);
        let text = table(&[record, faster]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("python-vs-c worker py_noop_worker") && lines[1].ends_with("1.04 (+0.50us)"),
            "{text}"
        );
        assert!(lines[2].ends_with("(-0.10us)"), "{text}");
    }

    #[test]
    fn a_scaling_line_names_its_workers_and_the_ideal() {
        let mut record =
            Record::scaling("python-gil", &info(), 5, 4, 16, 2_000, 200, 1_050.0, "one-worker", 1_000.0, 2.0);
        record.function = Some("py_burn");
        let map = fields(&record);
        assert_eq!((map["workers"].as_u64(), map["in_flight"].as_u64()), (Some(4), Some(16)));
        assert_eq!((map["ratio"].as_f64(), map["ideal_ratio"].as_f64()), (Some(1.05), Some(2.0)));
        assert_eq!((&map["bench"], &map["higher_is_better"]), (&"python-gil".into(), &true.into()));
        assert!(map.contains_key("ops_per_sec") && map.contains_key("baseline_ops_per_sec"));
        let text = table(&[record]);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("python-gil py_burn 4 workers") && row.ends_with("ideal 2.00"), "{text}");
    }

    #[test]
    fn local_invoke_line_has_no_ratio() {
        let record = Record::unbaselined("local-invoke", &info(), 1024, 2_000, &summary(300));
        let map = fields(&record);
        for field in ["bench", "size", "iters", "warmup", "p50_ns", "p99_ns", "p999_ns", "max_ns", "baseline", "host"] {
            assert!(map.contains_key(field), "missing {field}");
        }
        assert_eq!(map["baseline"], "none");
        assert!(!map.contains_key("ratio_p50") && !map.contains_key("baseline_p50_ns"));
    }

    #[test]
    fn table_has_a_header_and_one_row_per_record() {
        let records = [
            Record::latency("invoke", &info(), 1 << 20, 200, &summary(400_000), "raw-tcp", &summary(380_000)),
            Record::throughput(&info(), 8, 8, 50_000, 5_000, 90_000.0, "raw-tcp", 120_000.0),
            Record::unbaselined("local-invoke", &info(), 8, 2_000, &summary(250)),
        ];
        let text = table(&records);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for header in HEADERS {
            assert!(lines[0].contains(header), "{header} missing: {}", lines[0]);
        }
        assert!(lines[1].starts_with("invoke") && lines[1].contains("1MiB") && lines[1].contains("400.00us"));
        assert!(lines[1].contains("380.00us raw-tcp") && lines[1].ends_with("1.05"), "{}", lines[1]);
        assert!(lines[2].contains("90.0k/s") && lines[2].contains("0.75 (higher better)"), "{}", lines[2]);
        assert!(lines[3].starts_with("local-invoke") && lines[3].ends_with('-'), "{}", lines[3]);
    }

    #[test]
    fn summary_reads_the_histogram() {
        let mut hist = histogram();
        for us in 1..=1000u64 {
            record(&mut hist, Duration::from_micros(us));
        }
        let s = Summary::of(&hist);
        assert_eq!(s.count, 1000);
        assert!((499_000..=501_000).contains(&s.p50), "{s:?}");
        assert!(s.p99 <= s.p999 && s.p999 <= s.max);
        assert!((999_000..=1_001_000).contains(&s.max), "{s:?}");
    }

    #[test]
    fn sizes_and_times_format_for_people() {
        assert_eq!(format_size(8), "8B");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(65536), "64KiB");
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_ns(12_345), "12.35us");
        assert_eq!(format_ns(12_345_678), "12.35ms");
    }
}
