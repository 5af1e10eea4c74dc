//! `praas-bench stats-cost`, run for real with small counts: both of its lines, with the fields
//! the benchmark contract (docs/benchmarks.md) gives them. What the figures are is the
//! benchmark's to say, not this test's: it checks that they were measured, not how fast.

mod support;

use support::{bench_binary, run, temp_dir};

#[test]
fn stats_cost_measures_round_trips_and_instructions_against_recording_off() {
    let dir = temp_dir("stats-cost");
    let bench = bench_binary(&dir);
    let args = [
        "stats-cost",
        "--json",
        "--transport",
        "tcp",
        "--passes",
        "2",
        "--iters",
        "200",
        "--warmup",
        "20",
        "--callgrind-iters",
        "200",
    ];
    let lines = run(&bench, &args);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (latency, instructions) = (&lines[0], &lines[1]);
    assert_eq!(latency["bench"], "stats-cost");
    assert_eq!(latency["baseline"], "function-stats-off");
    assert_eq!((latency["size"].as_u64(), latency["iters"].as_u64()), (Some(8), Some(400)));
    assert!(latency["p50_ns"].as_u64().unwrap() > 0 && latency["baseline_p50_ns"].as_u64().unwrap() > 0);
    assert!(latency["ratio_p50"].as_f64().unwrap() > 0.0);
    assert_eq!(instructions["bench"], "stats-instructions");
    let (ours, base) =
        (instructions["instructions"].as_f64().unwrap(), instructions["baseline_instructions"].as_f64().unwrap());
    // An inline echo runs a few hundred instructions at least, either way.
    assert!(ours > 100.0 && base > 100.0, "{instructions}");
    let added = instructions["added_instructions"].as_f64().unwrap();
    assert!((added - (ours - base)).abs() < 0.2, "{instructions}");
}
