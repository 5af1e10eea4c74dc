//! `praas-bench invoke --python` and `praas-bench python-gil`, run for real with tiny counts: their
//! lines, with the fields the benchmark contract (docs/benchmarks.md) gives them. What the figures
//! are is the benchmark's to say, not this test's: it checks that they were measured, not how fast.

mod support;

use serde_json::Value;
use support::{bench_binary, run, temp_dir};

fn positive(line: &Value, field: &str) -> f64 {
    let value = line[field].as_f64().unwrap_or_else(|| panic!("no {field} in {line}"));
    assert!(value > 0.0, "{field} of {line}");
    value
}

#[test]
fn invoke_python_measures_the_python_no_op_beside_the_c_one_in_both_modes() {
    let dir = temp_dir("invoke-python");
    let bench = bench_binary(&dir);
    let args = [
        "invoke",
        "--python",
        "--json",
        "--sizes",
        "8,1024",
        "--iters",
        "8",
        "--warmup",
        "2",
        "--in-flight",
        "2",
        "--local-sizes",
        "8",
    ];
    let lines = run(&bench, &args);
    for mode in ["inline", "worker"] {
        for size in [8, 1024] {
            let of = |bench: &str, function: Option<&str>| -> Vec<&Value> {
                lines
                    .iter()
                    .filter(|l| l["bench"] == bench && l["mode"] == mode && l["size"] == size)
                    .filter(|l| function.map_or(l.get("function").is_none(), |f| l["function"] == f))
                    .collect()
            };
            let (c, python) = if mode == "inline" { ("noop", "py_noop") } else { ("noop_worker", "py_noop_worker") };
            assert_eq!(of("invoke", None).len(), 1, "the echo line of {mode} {size}: {lines:?}");
            for (function, language) in [(c, "c"), (python, "python")] {
                let found = of("invoke", Some(function));
                assert_eq!(found.len(), 1, "{function} {size}: {lines:?}");
                let line = found[0];
                assert_eq!((&line["language"], &line["baseline"]), (&language.into(), &"raw-tcp".into()), "{line}");
                // Four passes of two measured round trips each.
                assert_eq!(line["iters"], 8, "{line}");
                for field in ["p50_ns", "p99_ns", "p999_ns", "max_ns", "baseline_p50_ns", "ratio_p50"] {
                    positive(line, field);
                }
            }
            let versus = of("python-vs-c", Some(python));
            assert_eq!(versus.len(), 1, "python-vs-c {mode} {size}: {lines:?}");
            let line = versus[0];
            assert_eq!((&line["baseline"], &line["language"]), (&"c-noop".into(), &"python".into()), "{line}");
            let (ours, base) = (positive(line, "p50_ns"), positive(line, "baseline_p50_ns"));
            positive(line, "ratio_p50");
            assert_eq!(line["added_ns"].as_f64(), Some(ours - base), "{line}");
            for field in ["transport", "placement", "host", "warmup"] {
                assert!(line.get(field).is_some(), "no {field} in {line}");
            }
        }
    }
    assert!(lines.iter().any(|l| l["bench"] == "throughput") && lines.iter().any(|l| l["bench"] == "local-invoke"));
}

#[test]
fn python_gil_measures_throughput_per_worker_count_against_one_worker() {
    let dir = temp_dir("python-gil");
    let bench = bench_binary(&dir);
    let args = [
        "python-gil",
        "--json",
        "--workers",
        "2",
        "--in-flight",
        "4",
        "--iters",
        "6",
        "--warmup",
        "2",
        "--python-work",
        "100",
        "--c-work",
        "1000",
    ];
    let lines = run(&bench, &args);
    // One worker is always measured (the baseline), then the two asked for.
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (line, (workers, function, language)) in
        lines.iter().zip([(1, "py_burn", "python"), (1, "fill", "c"), (2, "py_burn", "python"), (2, "fill", "c")])
    {
        assert_eq!(line["bench"], "python-gil", "{line}");
        assert_eq!(
            (&line["workers"], &line["function"], &line["language"]),
            (&workers.into(), &function.into(), &language.into())
        );
        assert_eq!(
            (&line["in_flight"], &line["iters"], &line["baseline"]),
            (&4.into(), &6.into(), &"one-worker".into())
        );
        assert_eq!(line["higher_is_better"], true, "{line}");
        positive(line, "ops_per_sec");
        positive(line, "baseline_ops_per_sec");
        positive(line, "ratio");
        let ideal = positive(line, "ideal_ratio");
        assert!(ideal <= workers as f64, "{line}");
        for field in ["transport", "placement", "host", "size", "warmup"] {
            assert!(line.get(field).is_some(), "no {field} in {line}");
        }
    }
    assert_eq!(lines[0]["ratio"], 1.0, "the one-worker line is its own baseline");
}
