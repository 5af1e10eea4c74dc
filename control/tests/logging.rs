//! `--log-format json`: a standalone `praas process serve` writes one JSON object per line on
//! standard error, and a control plane started with it starts its processes with it too (their
//! logs in the data folder are JSON lines).

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use praas_control::model::{ProcessRecord, ProcessStatus};
use support::{praas, ControlPlaneProcess};

/// Checks that `text` is non-empty JSON lines of tracing events.
fn json_lines(text: &str, what: &str) {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "{what}: no log line");
    for line in lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {line:?}"));
        assert!(event["level"].is_string() && event["timestamp"].is_string(), "{what}: {line}");
        assert!(event["fields"]["message"].is_string(), "{what}: {line}");
    }
}

#[test]
fn a_standalone_process_logs_json_lines() {
    let dir = support::temp_dir("log-json");
    let lib = praas_testkit::example_functions();
    let manifest = dir.join("functions.toml");
    let spec = format!(
        "[[function]]\nname = \"echo\"\nlibrary = \"{0}\"\nmode = \"inline\"\n\n\
         [[function]]\nname = \"counter\"\nlibrary = \"{0}\"\nmode = \"worker\"\n",
        lib.display()
    );
    std::fs::write(&manifest, spec).unwrap();
    let mut child = praas()
        .args(["process", "serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--manifest"])
        .arg(&manifest)
        .env("RUST_LOG", "info")
        .env_remove("PRAAS_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on"), "{line:?}");
    // Its log lines, read on a thread until its "serving" line came (within a bounded wait).
    let (lines, receive) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stderr.contains("serving") {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive.recv_timeout(left) {
            Ok(line) => stderr.push_str(&format!("{line}\n")),
            Err(e) => panic!("no \"serving\" log line within 20 s ({e}); got: {stderr}"),
        }
    }
    // A function's own log line names its invocation, application, process and function.
    let addr = line.trim().strip_prefix("listening on ").unwrap().to_owned();
    let mut client = praas_dataplane::Client::connect(addr.as_str()).unwrap();
    let id = client.submit("counter", b"").unwrap();
    assert_eq!(client.wait(id).unwrap(), b"1");
    while !stderr.contains("counter is now 1") {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive.recv_timeout(left) {
            Ok(line) => stderr.push_str(&format!("{line}\n")),
            Err(e) => panic!("no log line of the function within 20 s ({e}); got: {stderr}"),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    json_lines(&stderr, "praas process serve --log-format json");
    let logged = stderr.lines().find(|l| l.contains("counter is now 1")).unwrap();
    let event: serde_json::Value = serde_json::from_str(logged).unwrap();
    let fields = &event["fields"];
    assert_eq!(fields["id"], id, "{logged}");
    assert_eq!((fields["app"].as_str(), fields["process"].as_str()), (Some("default"), Some("process-0")), "{logged}");
    assert_eq!(fields["function"], "counter", "{logged}");
}

#[test]
fn a_control_plane_starts_its_processes_with_its_log_format() {
    let cp = ControlPlaneProcess::start("log-json-cp", &["--log-format", "json"]);
    cp.create_example_app("logs");
    let record: ProcessRecord = cp.api.put("/apps/logs/processes/p", &serde_json::json!({})).unwrap();
    assert_eq!(record.status, ProcessStatus::Allocated);
    let stopped: ProcessRecord = cp.api.post("/apps/logs/processes/p/stop").unwrap();
    assert_eq!(stopped.status, ProcessStatus::Closed);
    let log = std::fs::read_to_string(cp.data_dir.join("logs/logs.p.log")).unwrap();
    // The process's standard output (the lines scripts read) shares the file: the log lines are
    // the JSON objects among them.
    let events: String = log.lines().filter(|l| l.starts_with('{')).map(|l| format!("{l}\n")).collect();
    json_lines(&events, "the process's log");
    assert!(log.lines().all(|l| l.starts_with('{') || !l.contains(" INFO ")), "no text log line: {log}");
}
