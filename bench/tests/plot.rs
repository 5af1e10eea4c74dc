//! `praas-bench invoke` and `praas-bench swap` with `--plot DIR`, run for real with small
//! parameters: every figure is an SVG document, and one renders to a PNG of the figure's size
//! with `rsvg-convert` (Debian's `librsvg2-bin`, installed by scripts/setup.sh).

mod support;

use std::path::Path;
use std::process::Command;

use support::{bench_binary, run, temp_dir};

/// The SVG figures in `dir`, by file name.
fn figures(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    names.sort();
    names
}

/// Checks that `path` is a non-empty SVG document with a title naming the placement and axes
/// with units; returns its declared width and height.
fn check_svg(path: &Path) -> (u32, u32) {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.len() > 1000, "{} is nearly empty", path.display());
    let start = svg.find("<svg").unwrap_or_else(|| panic!("{} has no <svg", path.display()));
    assert!(svg.trim_end().ends_with("</svg>"), "{} is not a whole SVG document", path.display());
    assert!(svg.contains("placement "), "{}: the title names the placement", path.display());
    assert!(svg.contains("<polyline"), "{}: no line drawn", path.display());
    assert!(svg.contains("(µs") || svg.contains("(MiB") || svg.contains("(thousand"), "{}: units", path.display());
    let attribute = |name: &str| -> u32 {
        let tag = &svg[start..start + svg[start..].find('>').unwrap()];
        let value = tag.split(&format!("{name}=\"")).nth(1).and_then(|rest| rest.split('"').next()).unwrap();
        value.parse().unwrap_or_else(|_| panic!("{name}={value:?}"))
    };
    (attribute("width"), attribute("height"))
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&png[12..16], b"IHDR", "the first chunk is IHDR");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn invoke_and_swap_write_svg_figures_that_render() {
    let dir = temp_dir("plot");
    let bench = bench_binary(&dir);
    let plots = dir.join("figures");
    let plot = plots.to_str().unwrap();

    let lines = run(
        &bench,
        &[
            "invoke",
            "--json",
            "--sizes",
            "8,1024",
            "--iters",
            "300",
            "--warmup",
            "30",
            "--in-flight",
            "1,8",
            "--local-sizes",
            "8",
            "--plot",
            plot,
        ],
    );
    assert_eq!(lines.iter().filter(|l| l["bench"] == "invoke").count(), 2, "{lines:?}");
    let swap_dir = dir.join("swap");
    let lines = run(
        &bench,
        &[
            "swap",
            "--json",
            "--sizes",
            "1048576,4194304",
            "--reps",
            "1",
            "--dir",
            swap_dir.to_str().unwrap(),
            "--plot",
            plot,
        ],
    );
    assert_eq!(lines.len(), 4, "{lines:?}");

    let names = figures(&plots);
    assert_eq!(
        names,
        [
            "invoke-tcp-cdf-invoke-1KiB.svg",
            "invoke-tcp-cdf-invoke-8B.svg",
            "invoke-tcp-cdf-local-invoke-8B.svg",
            "invoke-tcp-latency-invoke.svg",
            "invoke-tcp-latency-local-invoke.svg",
            "invoke-tcp-throughput-vs-in-flight.svg",
            "swap-throughput-vs-size.svg",
        ]
    );
    let mut sizes = Vec::new();
    for name in &names {
        sizes.push(check_svg(&plots.join(name)));
    }
    let cdf = std::fs::read_to_string(plots.join("invoke-tcp-cdf-invoke-8B.svg")).unwrap();
    assert!(cdf.contains("raw-tcp") && cdf.contains("praas"), "both lines are in the legend");
    let swap = std::fs::read_to_string(plots.join("swap-throughput-vs-size.svg")).unwrap();
    for legend in ["praas swap-out", "plain-write", "praas swap-in", "plain-read"] {
        assert!(swap.contains(legend), "the swap figure's legend lacks {legend}");
    }

    // One figure rendered as a person would see it.
    let png = dir.join("cdf.png");
    let rendered = Command::new("rsvg-convert")
        .arg("--output")
        .arg(&png)
        .arg(plots.join("invoke-tcp-cdf-invoke-8B.svg"))
        .status()
        .unwrap_or_else(|e| {
            panic!("rsvg-convert is needed to render the figures ({e}): install Debian's librsvg2-bin (scripts/setup.sh does)")
        });
    assert!(rendered.success(), "rsvg-convert failed: {rendered}");
    let png = std::fs::read(&png).unwrap();
    assert_eq!(png_size(&png), sizes[1], "the PNG has the figure's size");
    assert_eq!(sizes[1], (1024, 640));
}
