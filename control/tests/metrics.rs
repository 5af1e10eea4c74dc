//! `GET /metrics` of a real control plane with real processes, after invocations (one failing,
//! one of a missing function), messages between two processes and a swap out and in: the values
//! are checked, and `promtool check metrics` (Debian's `prometheus`, installed by
//! scripts/setup.sh) must accept the text.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use praas_control::cli::Api;
use praas_control::model::{ProcessRecord, ProcessStatus};
use support::ControlPlaneProcess;

/// The value of the series `series` (its name and labels exactly as written), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn expect(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Scrapes until `done` holds for the text, for at most `timeout`; returns the last text.
fn scrape_until(api: &Api, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = api.metrics().expect("GET /metrics");
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} not seen within {timeout:?}; last scrape:\n{text}");
        // The processes report every 50 ms (the test control plane's --metrics-ms).
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `promtool check metrics` on `text`; fails the test if promtool is missing or refuses it.
fn promtool_accepts(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool is needed to check the metrics ({e}): install Debian's package `prometheus` (scripts/setup.sh does)"
        ),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics refused the text ({}):\n{}{}\n--- the text:\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn metrics_count_what_happened_and_promtool_accepts_them() {
    let cp = ControlPlaneProcess::start("metrics", &[]);
    cp.create_example_app("obs");
    let api = &cp.api;
    for name in ["p1", "p2"] {
        let record: ProcessRecord = api.put(&format!("/apps/obs/processes/{name}"), &serde_json::json!({})).unwrap();
        assert_eq!(record.status, ProcessStatus::Allocated);
    }

    // Before the swap: 3 echoes, one failing function, one missing function, a message p1 -> p2.
    for _ in 0..3 {
        assert_eq!(cp.invoke("obs", Some("p1"), "echo", b"hi").unwrap(), b"hi");
    }
    let failed = cp.invoke("obs", Some("p1"), "fail", b"on purpose").unwrap_err();
    assert_eq!(failed.status(), Some(500), "{failed}");
    let missing = cp.invoke("obs", Some("p1"), "no_such_function", b"").unwrap_err();
    assert_eq!(missing.status(), Some(404), "{missing}");
    // p1 learns that p2 is ALLOCATED from a peer update that may come after p2's creation
    // answered: until then its put is refused as `unavailable` (counted below too).
    let mut refused_puts = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cp.invoke("obs", Some("p1"), "msg_put", b"p2 key hello") {
            Ok(answer) => break assert_eq!(answer, b"stored"),
            Err(e) if e.to_string().contains("cannot receive messages now") && Instant::now() < deadline => {
                refused_puts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("msg_put: {e}"),
        }
    }
    assert_eq!(cp.invoke("obs", Some("p2"), "msg_get", b"p1 key 5000").unwrap(), b"p1 hello");
    // p1's report of its delivery, before it swaps out and starts counting again.
    scrape_until(api, Duration::from_secs(10), "p1's message delivery", |text| {
        value(text, "praas_process_messages_sent_total{app=\"obs\",process=\"p1\",wire=\"tcp\"}") == Some(1.0)
    });

    let swapped: ProcessRecord = api.post("/apps/obs/processes/p1/swap").unwrap();
    let swap_bytes = swapped.swap.as_ref().expect("swap info").bytes;
    let back: ProcessRecord = api.post("/apps/obs/processes/p1/swapin").unwrap();
    assert_eq!(back.status, ProcessStatus::Allocated);
    // After the swap-in: 2 echoes on the new OS process, which counts from zero.
    for _ in 0..2 {
        assert_eq!(cp.invoke("obs", Some("p1"), "echo", b"again").unwrap(), b"again");
    }

    // Without the token: 401, and counted as such.
    let anonymous = Api::with_token(&cp.http, Duration::from_secs(10), None);
    assert_eq!(anonymous.metrics().unwrap_err().status(), Some(401));

    let text = scrape_until(api, Duration::from_secs(10), "p1's 2 invocations after the swap-in", |text| {
        value(text, "praas_process_invocations_total{app=\"obs\",process=\"p1\"}") == Some(2.0)
    });

    // Swaps: one out, one in, of the same snapshot.
    assert_eq!(expect(&text, "praas_swap_out_bytes_count{app=\"obs\"}"), 1.0);
    assert_eq!(expect(&text, "praas_swap_out_bytes_sum{app=\"obs\"}"), swap_bytes as f64);
    assert_eq!(expect(&text, "praas_swap_in_bytes_count{app=\"obs\"}"), 1.0);
    assert_eq!(expect(&text, "praas_swap_in_bytes_sum{app=\"obs\"}"), swap_bytes as f64);
    assert_eq!(expect(&text, "praas_swap_out_seconds_count{app=\"obs\"}"), 1.0);
    assert!(expect(&text, "praas_swap_in_seconds_sum{app=\"obs\"}") > 0.0);
    assert_eq!(expect(&text, "praas_swap_in_seconds_bucket{app=\"obs\",le=\"+Inf\"}"), 1.0);
    // Two creations.
    assert_eq!(expect(&text, "praas_allocation_seconds_count{app=\"obs\"}"), 2.0);
    // Processes by status, zeros included.
    assert_eq!(expect(&text, "praas_processes{app=\"obs\",status=\"ALLOCATED\"}"), 2.0);
    assert_eq!(expect(&text, "praas_processes{app=\"obs\",status=\"SWAPPED_OUT\"}"), 0.0);
    // Routed invocations by outcome: 3 + 2 echoes, msg_put and msg_get succeeded.
    assert_eq!(expect(&text, "praas_routed_invocations_total{app=\"obs\",outcome=\"ok\"}"), 7.0);
    assert_eq!(expect(&text, "praas_routed_invocations_total{app=\"obs\",outcome=\"function_failed\"}"), 1.0);
    assert_eq!(expect(&text, "praas_routed_invocations_total{app=\"obs\",outcome=\"unknown_function\"}"), 1.0);
    let unavailable = value(&text, "praas_routed_invocations_total{app=\"obs\",outcome=\"unavailable\"}");
    assert_eq!(unavailable.unwrap_or(0.0), f64::from(refused_puts));
    // HTTP requests by route template and status.
    let invoke = "route=\"/apps/{app}/invoke/{function}\"";
    assert_eq!(expect(&text, &format!("praas_http_requests_total{{method=\"POST\",{invoke},status=\"200\"}}")), 7.0);
    assert_eq!(
        expect(&text, &format!("praas_http_requests_total{{method=\"POST\",{invoke},status=\"500\"}}")),
        f64::from(1 + refused_puts)
    );
    assert_eq!(expect(&text, &format!("praas_http_requests_total{{method=\"POST\",{invoke},status=\"404\"}}")), 1.0);
    let swap = "route=\"/apps/{app}/processes/{proc}/swap\"";
    assert_eq!(expect(&text, &format!("praas_http_requests_total{{method=\"POST\",{swap},status=\"200\"}}")), 1.0);
    let create = "route=\"/apps/{app}/processes/{proc}\"";
    assert_eq!(expect(&text, &format!("praas_http_requests_total{{method=\"PUT\",{create},status=\"200\"}}")), 2.0);
    let refused = "praas_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"401\"}";
    assert_eq!(expect(&text, refused), 1.0);
    assert!(expect(&text, "praas_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}") >= 1.0);
    assert!(!text.contains("/apps/obs/"), "routes are templates, never concrete paths");
    // The processes' own counters: p2 ran msg_get; p1 counts again from zero after its swap-in.
    assert!(expect(&text, "praas_process_invocations_total{app=\"obs\",process=\"p2\"}") >= 1.0);
    assert!(expect(&text, "praas_process_compute_seconds_total{app=\"obs\",process=\"p2\"}") > 0.0);
    assert_eq!(expect(&text, "praas_process_in_flight{app=\"obs\",process=\"p1\"}"), 0.0);
    // Per function, added up across p1's swap (its new OS process reports from zero).
    let echo = "app=\"obs\",process=\"p1\",function=\"echo\"";
    assert_eq!(expect(&text, &format!("praas_function_invocations_total{{{echo}}}")), 5.0);
    assert_eq!(expect(&text, &format!("praas_function_latency_seconds_count{{{echo}}}")), 5.0);
    assert_eq!(expect(&text, &format!("praas_function_latency_seconds_bucket{{{echo},le=\"+Inf\"}}")), 5.0);
    assert!(expect(&text, &format!("praas_function_latency_seconds_sum{{{echo}}}")) > 0.0);
    let fail = "app=\"obs\",process=\"p1\",function=\"fail\",status=\"function_failed\"";
    assert_eq!(expect(&text, &format!("praas_function_errors_total{{{fail}}}")), 1.0);
    assert!(!text.contains("function=\"no_such_function\""), "an unknown function has no series");
    let get = "app=\"obs\",process=\"p2\",function=\"msg_get\"";
    assert_eq!(expect(&text, &format!("praas_function_invocations_total{{{get}}}")), 1.0);
    assert_eq!(expect(&text, &format!("praas_function_messages_got_total{{{get}}}")), 1.0);
    let put = "app=\"obs\",process=\"p1\",function=\"msg_put\"";
    assert_eq!(expect(&text, &format!("praas_function_messages_put_total{{{put}}}")), 1.0, "the acknowledged put only");
    // Which transport each running process serves with.
    let info =
        text.lines().find(|l| l.starts_with("praas_process_info{app=\"obs\",process=\"p1\",")).expect("p1's info");
    assert!(
        (info.contains("transport=\"uring\"") || info.contains("transport=\"mio\"")) && info.ends_with("} 1"),
        "{info}"
    );
    assert!(info.contains("rdma=\"false\""), "{info}");
    // The processes' mailboxes and pools.
    assert!(expect(&text, "praas_process_messages_received_total{app=\"obs\",process=\"p2\"}") >= 1.0);
    assert_eq!(expect(&text, "praas_process_messages_got_total{app=\"obs\",process=\"p2\"}"), 1.0);
    assert_eq!(expect(&text, "praas_process_mailbox_depth{app=\"obs\",process=\"p2\"}"), 0.0);
    assert!(expect(&text, "praas_process_pool_budget_bytes{app=\"obs\",process=\"p2\"}") > 0.0);

    promtool_accepts(&text);
}

/// `praas process stats` of a real process, run as a user runs it.
fn cli_stats(cp: &ControlPlaneProcess, json: bool, app: &str, name: &str) -> std::process::Output {
    let mut command = support::praas();
    command.env("PRAAS_TOKEN_FILE", cp.data_dir.join("api-token")).args(["--control", &cp.http]);
    if json {
        command.arg("--json");
    }
    command.args(["process", "stats", app, name]).output().expect("praas process stats runs")
}

#[test]
fn process_stats_show_counts_errors_and_the_order_of_latencies() {
    let cp = ControlPlaneProcess::start("stats", &[]);
    cp.create_example_app("st");
    let record: ProcessRecord = cp.api.put("/apps/st/processes/p1", &serde_json::json!({})).unwrap();
    assert_eq!(record.status, ProcessStatus::Allocated);
    for _ in 0..20 {
        assert_eq!(cp.invoke("st", Some("p1"), "echo", b"fast").unwrap(), b"fast");
    }
    for _ in 0..3 {
        assert_eq!(cp.invoke("st", Some("p1"), "sleep", b"40").unwrap(), b"slept");
    }
    for _ in 0..2 {
        assert_eq!(cp.invoke("st", Some("p1"), "fail", b"no").unwrap_err().status(), Some(500));
    }

    // The process reports every 50 ms: wait until its report of all 25 came.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let output = cli_stats(&cp, true, "st", "p1");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stats: Vec<praas_control::metrics::FunctionStats> = serde_json::from_slice(&output.stdout).unwrap();
        let count = |name: &str| stats.iter().find(|s| s.function == name).map_or(0, |s| s.total.count);
        if (count("echo"), count("sleep"), count("fail")) == (20, 3, 2) {
            break stats;
        }
        assert!(Instant::now() < deadline, "the stats never showed 20, 3 and 2 invocations: {stats:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let of = |name: &str| stats.iter().find(|s| s.function == name).unwrap().total.clone();
    let (echo, sleep, fail) = (of("echo"), of("sleep"), of("fail"));
    assert!(echo.errors.is_empty() && sleep.errors.is_empty(), "{stats:?}");
    assert_eq!(fail.errors.get("function_failed"), Some(&2), "{stats:?}");
    assert!(echo.p50_ns <= echo.p99_ns && echo.p99_ns <= echo.max_ns, "{echo:?}");
    assert!(echo.max_ns < sleep.p50_ns, "an echo is faster than a 40 ms sleep: {echo:?} {sleep:?}");
    assert!(sleep.p50_ns >= 38_000_000 && sleep.max_ns >= 40_000_000, "{sleep:?}");
    assert!(sleep.p50_ns <= sleep.p99_ns && sleep.p99_ns <= sleep.max_ns, "{sleep:?}");
    assert_eq!(stats.iter().map(|s| s.function.as_str()).collect::<Vec<_>>(), ["echo", "fail", "sleep"]);

    // The table a user reads.
    let table = cli_stats(&cp, false, "st", "p1");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("FUNCTION"), "{text}");
    let echo_row = text.lines().find(|l| l.starts_with("echo ")).unwrap_or_else(|| panic!("no echo row: {text}"));
    assert!(echo_row.split_whitespace().nth(1) == Some("20"), "{echo_row}");
    assert!(text.contains("2 function_failed"), "{text}");

    // An unknown process: 404, said so.
    let missing = cli_stats(&cp, false, "st", "nope");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"), "{}", String::from_utf8_lossy(&missing.stderr));
}

/// A process serving on its own (`praas process serve --metrics-listen`): its own figures at
/// `GET /metrics`, in the families the control plane uses for it, accepted by promtool.
#[test]
fn a_process_alone_serves_its_own_metrics() {
    let dir = support::temp_dir("alone");
    let lib = praas_testkit::example_functions();
    let manifest = dir.join("functions.toml");
    let mut text = String::new();
    for (name, mode) in [("echo", "inline"), ("fail", "worker")] {
        text.push_str(&format!("[[function]]\nname = \"{name}\"\nlibrary = {lib:?}\nmode = \"{mode}\"\n\n"));
    }
    std::fs::write(&manifest, text).unwrap();
    let mut child = support::praas()
        .args(["process", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--id", "alone"])
        .args(["--app", "solo", "--manifest"])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("praas process serve starts");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let data = lines.next().unwrap().unwrap();
    let data =
        data.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {data:?}")).to_owned();
    let metrics = lines.next().unwrap().unwrap();
    let url =
        metrics.strip_prefix("metrics on ").unwrap_or_else(|| panic!("unexpected second line {metrics:?}")).to_owned();

    let mut client = praas_dataplane::Client::connect(data.as_str()).expect("connect");
    for _ in 0..5 {
        assert_eq!(client.invoke("echo", b"x").unwrap(), b"x");
    }
    assert_eq!(client.invoke("fail", b"no").unwrap_err().status(), Some(praas_dataplane::Status::FunctionFailed));

    let text = ureq::get(&url).call().expect("GET /metrics").into_body().read_to_string().unwrap();
    let echo = "app=\"solo\",process=\"alone\",function=\"echo\"";
    assert_eq!(expect(&text, &format!("praas_function_invocations_total{{{echo}}}")), 5.0);
    assert_eq!(expect(&text, &format!("praas_function_latency_seconds_count{{{echo}}}")), 5.0);
    let fail = "app=\"solo\",process=\"alone\",function=\"fail\",status=\"function_failed\"";
    assert_eq!(expect(&text, &format!("praas_function_errors_total{{{fail}}}")), 1.0);
    assert_eq!(expect(&text, "praas_process_invocations_total{app=\"solo\",process=\"alone\"}"), 6.0);
    assert_eq!(expect(&text, "praas_processes{app=\"solo\",status=\"ALLOCATED\"}"), 1.0);
    assert!(
        text.lines().any(|l| l.starts_with("praas_process_info{app=\"solo\",process=\"alone\",transport=")),
        "{text}"
    );
    promtool_accepts(&text);
    child.kill().unwrap();
    child.wait().unwrap();
}
