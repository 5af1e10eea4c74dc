//! `praas-bench message --redis`, run for real with small counts against a real `redis-server`
//! (installed by scripts/setup.sh): each size's line against raw TCP and against Redis, with the
//! fields of the benchmark contract (docs/benchmarks.md), the server stopped at the end; and a
//! clear failure when redis-server is missing. What the figures are is the benchmark's to say.

mod support;

use std::process::Command;

use support::{bench_binary, run, temp_dir};

/// Process ids of the running `redis-server`s (read from /proc; none is touched).
fn redis_servers() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "redis-server"))
        .collect()
}

#[test]
fn message_against_redis_reports_both_baselines_and_stops_the_server() {
    let dir = temp_dir("message-redis");
    let bench = bench_binary(&dir);
    let before = redis_servers();
    let args = ["message", "--redis", "--json", "--sizes", "10,102400", "--iters", "50", "--warmup", "5"];
    let lines = run(&bench, &args);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (line, (size, baseline)) in
        lines.iter().zip([(10, "raw-tcp"), (10, "redis"), (102400, "raw-tcp"), (102400, "redis")])
    {
        assert_eq!(line["bench"], "message", "{line}");
        assert_eq!(line["transport"], "tcp", "{line}");
        assert_eq!(line["baseline"], baseline, "{line}");
        assert_eq!((line["size"].as_u64(), line["iters"].as_u64()), (Some(size), Some(50)), "{line}");
        assert!(line["p50_ns"].as_u64().unwrap() > 0 && line["baseline_p50_ns"].as_u64().unwrap() > 0, "{line}");
        assert!(line["ratio_p50"].as_f64().unwrap() > 0.0, "{line}");
    }
    // The praas figures of one size are the same on both of its lines.
    assert_eq!(lines[0]["p50_ns"], lines[1]["p50_ns"]);
    let after = redis_servers();
    let left: Vec<_> = after.iter().filter(|pid| !before.contains(pid)).collect();
    assert!(left.is_empty(), "redis-server processes left running: {left:?}");
}

#[test]
fn message_with_redis_asked_for_but_missing_fails_and_says_so() {
    let dir = temp_dir("message-no-redis");
    let bench = bench_binary(&dir);
    // A PATH without redis-server (the bench finds its own executable and functions by path).
    let output = Command::new(&bench)
        .args(["message", "--redis", "--json", "--sizes", "10", "--iters", "20"])
        .env("PATH", &dir)
        .output()
        .expect("praas-bench runs");
    assert!(!output.status.success(), "it must fail, not skip Redis");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis-server is not installed"), "{stderr}");
    assert!(output.stdout.is_empty(), "no line printed: {}", String::from_utf8_lossy(&output.stdout));
}
