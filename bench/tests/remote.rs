//! `praas-bench remote-invoke` and `praas-bench reduce`, run for real with tiny counts between
//! real processes (and a real `redis-server` for `reduce`): the lines and fields of the benchmark
//! contract (docs/benchmarks.md), and no process left running. What the figures are is the
//! benchmarks' to say.

mod support;

use support::{bench_binary, run, temp_dir};

/// Process ids of running processes whose command name is `comm` (read from /proc).
fn running(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .collect()
}

fn assert_latency_line(line: &serde_json::Value, bench: &str, size: u64, iters: u64, baseline: &str) {
    assert_eq!(line["bench"], bench, "{line}");
    assert_eq!(line["transport"], "tcp", "{line}");
    assert_eq!(line["baseline"], baseline, "{line}");
    assert_eq!((line["size"].as_u64(), line["iters"].as_u64()), (Some(size), Some(iters)), "{line}");
    for field in ["p50_ns", "p99_ns", "baseline_p50_ns"] {
        assert!(line[field].as_u64().is_some_and(|ns| ns > 0), "{field}: {line}");
    }
    assert!(line["ratio_p50"].as_f64().is_some_and(|r| r > 0.0), "{line}");
    assert!(line["placement"].is_string() && line["host"].is_string(), "{line}");
}

#[test]
fn remote_invoke_reports_each_size_against_raw_tcp_and_each_fan_out_against_one_call() {
    let dir = temp_dir("remote-invoke");
    let bench = bench_binary(&dir);
    let args = ["remote-invoke", "--json", "--sizes", "8,65536", "--fan-out", "1,3", "--iters", "30", "--warmup", "3"];
    let lines = run(&bench, &args);
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_latency_line(&lines[0], "remote-invoke", 8, 30, "raw-tcp");
    assert_latency_line(&lines[1], "remote-invoke", 65536, 30, "raw-tcp");
    // Per fan-out: against one remote invocation, then against the raw TCP fan-out.
    for (line, (fan_out, baseline)) in lines[2..].iter().zip([
        (1, "remote-invoke"),
        (1, "raw-tcp-fan-out"),
        (3, "remote-invoke"),
        (3, "raw-tcp-fan-out"),
    ]) {
        assert_latency_line(line, "remote-fan-out", 8, 30, baseline);
        assert_eq!(line["fan_out"].as_u64(), Some(fan_out), "{line}");
    }
    // Both lines of one fan-out carry the same praas figures.
    assert_eq!(lines[4]["p50_ns"], lines[5]["p50_ns"]);
    assert!(lines[0].get("fan_out").is_none(), "{}", lines[0]);
}

#[test]
fn reduce_reports_both_exchanges_against_redis_per_worker_count_and_stops_everything() {
    let dir = temp_dir("reduce");
    let bench = bench_binary(&dir);
    let before = running("redis-server");
    let args = [
        "reduce",
        "--json",
        "--workers",
        "1,3",
        "--points",
        "3001",
        "--clusters",
        "4",
        "--passes",
        "2",
        "--iters",
        "5",
        "--warmup",
        "1",
    ];
    let lines = run(&bench, &args);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (line, (workers, mode)) in
        lines.iter().zip([(1, "remote-invoke"), (1, "messages"), (3, "remote-invoke"), (3, "messages")])
    {
        // size: the bytes of one worker's partial, 4 clusters of 9 doubles; 2 passes of 5.
        assert_latency_line(line, "reduce", 4 * 9 * 8, 10, "redis");
        assert_eq!(line["mode"], mode, "{line}");
        assert_eq!(line["workers"].as_u64(), Some(workers), "{line}");
        assert_eq!((line["points"].as_u64(), line["clusters"].as_u64()), (Some(3001), Some(4)), "{line}");
    }
    // Both exchanges of one worker count are against the same Redis run.
    assert_eq!(lines[0]["baseline_p50_ns"], lines[1]["baseline_p50_ns"]);
    let left: Vec<_> = running("redis-server").into_iter().filter(|pid| !before.contains(pid)).collect();
    assert!(left.is_empty(), "redis-server processes left running: {left:?}");
}

#[test]
fn reduce_without_redis_fails_and_says_so() {
    let dir = temp_dir("reduce-no-redis");
    let bench = bench_binary(&dir);
    // A PATH without redis-server (the bench finds its own executable and functions by path).
    let output = std::process::Command::new(&bench)
        .args(["reduce", "--json", "--workers", "1", "--points", "100", "--iters", "2"])
        .env("PATH", &dir)
        .output()
        .expect("praas-bench runs");
    assert!(!output.status.success(), "it must fail, not leave the baseline out");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis-server is not installed"), "{stderr}");
    assert!(output.stdout.is_empty(), "no line printed: {}", String::from_utf8_lossy(&output.stdout));
}
