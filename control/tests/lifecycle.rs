//! The control plane over real HTTP, with real cloud processes on the local backend.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use praas_control::cli::ApiCallError;
use praas_control::model::{ProcessRecord, ProcessStatus};
use praas_dataplane::{Client, ClientError, Status};
use support::{praas, ControlPlaneProcess};

fn expect_status(result: Result<ProcessRecord, ApiCallError>, code: u16) {
    match result {
        Err(e) => assert_eq!(e.status(), Some(code), "expected HTTP {code}, got {e}"),
        Ok(record) => panic!("expected HTTP {code}, got {record:?}"),
    }
}

#[test]
fn every_lifecycle_transition_and_every_invalid_one() {
    let cp = ControlPlaneProcess::start("lifecycle", &[]);
    let api = &cp.api;
    cp.create_example_app("demo");

    // Bad requests: 400 and 404, and the app exists once.
    let dup = praas_control::cli::app_create(api, "demo", &cp.data_dir.join("manifests/demo/functions.toml"), None);
    assert_eq!(dup.unwrap_err().status(), Some(409));
    expect_status(api.put("/apps/demo/processes/bad!name", &serde_json::json!({})), 400);
    expect_status(api.put("/apps/nope/processes/p", &serde_json::json!({})), 404);
    expect_status(api.get("/apps/demo/processes/missing"), 404);
    let bad_json: Result<serde_json::Value, ApiCallError> = api.put("/apps/x", &"not an object");
    assert_eq!(bad_json.unwrap_err().status(), Some(400));

    // PUT answers once ALLOCATED, with the data-plane address.
    let p1: ProcessRecord = api.put("/apps/demo/processes/p1", &serde_json::json!({})).unwrap();
    assert_eq!(p1.status, ProcessStatus::Allocated);
    let addr = p1.data_addr.clone().expect("a data-plane address");
    let mut direct = Client::connect(addr.as_str()).unwrap();
    assert_eq!(direct.invoke("echo", b"direct").unwrap(), b"direct");

    // Invalid transitions from ALLOCATED: 409, nothing changes.
    expect_status(api.put("/apps/demo/processes/p1", &serde_json::json!({})), 409);
    expect_status(api.post("/apps/demo/processes/p1/swapin"), 409);
    expect_status(api.delete("/apps/demo/processes/p1"), 409);
    assert_eq!(api.delete::<serde_json::Value>("/apps/demo").unwrap_err().status(), Some(409));
    assert_eq!(cp.process("demo", "p1").status, ProcessStatus::Allocated);

    // ALLOCATED -> SWAPPED_OUT -> ALLOCATED, state kept.
    assert_eq!(cp.invoke("demo", Some("p1"), "counter", b"").unwrap(), b"1");
    let swapped: ProcessRecord = api.post("/apps/demo/processes/p1/swap").unwrap();
    assert_eq!(swapped.status, ProcessStatus::SwappedOut);
    assert!(swapped.swap.as_ref().unwrap().bytes > 0);
    assert!(swapped.data_addr.is_none());
    expect_status(api.post("/apps/demo/processes/p1/swap"), 409);
    expect_status(api.post("/apps/demo/processes/p1/stop"), 409);
    let back: ProcessRecord = api.post("/apps/demo/processes/p1/swapin").unwrap();
    assert_eq!(back.status, ProcessStatus::Allocated);
    assert_eq!(cp.invoke("demo", Some("p1"), "counter", b"").unwrap(), b"2");

    // ALLOCATED -> CLOSED -> deleted.
    let closed: ProcessRecord = api.post("/apps/demo/processes/p1/stop").unwrap();
    assert_eq!(closed.status, ProcessStatus::Closed);
    expect_status(api.post("/apps/demo/processes/p1/stop"), 409);
    expect_status(api.post("/apps/demo/processes/p1/swap"), 409);
    let _: serde_json::Value = api.delete("/apps/demo/processes/p1").unwrap();
    expect_status(api.get("/apps/demo/processes/p1"), 404);

    // A swapped-out process can be deleted, with ?force=true only (its snapshot is its state),
    // and its swap data goes with it.
    let _: ProcessRecord = api.put("/apps/demo/processes/p2", &serde_json::json!({})).unwrap();
    let _: ProcessRecord = api.post("/apps/demo/processes/p2/swap").unwrap();
    let swap_folder = cp.data_dir.join("swap/demo/p2");
    assert!(swap_folder.exists());
    assert_eq!(api.delete::<serde_json::Value>("/apps/demo/processes/p2").unwrap_err().status(), Some(409));
    assert!(swap_folder.exists());
    let _: serde_json::Value = api.delete("/apps/demo/processes/p2?force=true").unwrap();
    assert!(!swap_folder.exists(), "deleting a process removes its swap data");

    // The application can go once it has no processes.
    let _: serde_json::Value = api.delete("/apps/demo").unwrap();
    expect_status(api.get("/apps/demo"), 404);
}

#[test]
fn invocations_route_through_the_control_plane() {
    let cp = ControlPlaneProcess::start("routing", &[]);
    cp.create_example_app("faas");
    // No process named and none exists: one is allocated (FaaS mode), then reused.
    assert_eq!(cp.invoke("faas", None, "echo", b"first").unwrap(), b"first");
    assert_eq!(cp.invoke("faas", None, "counter", b"").unwrap(), b"1");
    assert_eq!(cp.invoke("faas", None, "counter", b"").unwrap(), b"2");
    let processes: Vec<ProcessRecord> = cp.api.get("/apps/faas/processes").unwrap();
    assert_eq!(processes.len(), 1);
    let name = processes[0].name.clone();
    // A swapped-out process named in an invocation is swapped back in for it.
    let _: ProcessRecord = cp.api.post(&format!("/apps/faas/processes/{name}/swap")).unwrap();
    assert_eq!(cp.invoke("faas", Some(&name), "counter", b"").unwrap(), b"3");
    assert_eq!(cp.process("faas", &name).status, ProcessStatus::Allocated);
    // Errors of the function keep their meaning.
    let err = cp.invoke("faas", Some(&name), "missing_function", b"").unwrap_err();
    assert!(err.status() == Some(404) && err.to_string().contains("missing_function"), "{err}");
    let err = cp.invoke("nope", None, "echo", b"").unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
}

#[test]
fn swap_round_trip_is_byte_exact_with_256_mib_of_state_and_files() {
    let cp = ControlPlaneProcess::start("swap-big", &[]);
    cp.create_example_app("big");
    let _: ProcessRecord = cp.api.put("/apps/big/processes/p", &serde_json::json!({})).unwrap();
    let mut sums = Vec::new();
    for (key, size) in [("a", 128usize << 20), ("b", 96 << 20), ("c", 32 << 20), ("tiny", 7), ("empty", 0)] {
        let answer = cp.invoke("big", Some("p"), "fill", format!("{key} {size}").as_bytes()).unwrap();
        sums.push((key, String::from_utf8(answer).unwrap()));
    }
    assert_eq!(cp.invoke("big", Some("p"), "file_write", b"notes.txt hello files").unwrap(), b"written");
    let swapped: ProcessRecord = cp.api.post("/apps/big/processes/p/swap").unwrap();
    assert!(swapped.swap.unwrap().bytes >= 256 << 20);
    let _: ProcessRecord = cp.api.post("/apps/big/processes/p/swapin").unwrap();
    for (key, sum) in sums {
        assert_eq!(String::from_utf8(cp.invoke("big", Some("p"), "checksum", key.as_bytes()).unwrap()).unwrap(), sum);
    }
    assert_eq!(cp.invoke("big", Some("p"), "file_read", b"notes.txt").unwrap(), b"hello files");
}

#[test]
fn a_swap_during_eight_invocations_loses_none_and_runs_none_twice() {
    let cp = ControlPlaneProcess::start("swap-busy", &[]);
    cp.create_example_app("busy");
    let p: ProcessRecord = cp.api.put("/apps/busy/processes/p", &serde_json::json!({})).unwrap();
    let addr = p.data_addr.unwrap();
    let started = Arc::new(std::sync::Barrier::new(9));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.clone();
            let started = Arc::clone(&started);
            thread::spawn(move || {
                let mut client = Client::connect(addr.as_str()).unwrap();
                let id = client.submit("slow_count", b"400").unwrap();
                started.wait();
                client.wait(id)
            })
        })
        .collect();
    started.wait();
    // All 8 reached the process (running, queued for a worker, or done) before the swap.
    praas_testkit::wait_until(Duration::from_secs(20), "the process to report all 8 invocations", || {
        let metrics = cp.process("busy", "p").metrics;
        metrics.in_flight + metrics.invocations == 8
    });
    let swapped: ProcessRecord = cp.api.post("/apps/busy/processes/p/swap").unwrap();
    assert_eq!(swapped.status, ProcessStatus::SwappedOut);
    let mut counts: Vec<u64> = Vec::new();
    for w in workers {
        match w.join().unwrap() {
            Ok(out) => counts.push(String::from_utf8(out).unwrap().parse().unwrap()),
            // An invocation that reached the process after the swap began is refused before it
            // runs, with a retryable error; with two workers all 8 were accepted before it.
            Err(ClientError::Remote { status, .. }) => assert_eq!(status, Status::Overloaded),
            Err(other) => panic!("an invocation was lost: {other}"),
        }
    }
    counts.sort_unstable();
    let ran = counts.len() as u64;
    assert_eq!(counts, (1..=ran).collect::<Vec<_>>(), "each accepted invocation ran exactly once");
    // After swap-in the counter shows exactly the invocations that ran before the swap.
    let _: ProcessRecord = cp.api.post("/apps/busy/processes/p/swapin").unwrap();
    assert_eq!(cp.invoke("busy", Some("p"), "slow_count", b"0").unwrap(), (ran + 1).to_string().as_bytes());
    assert_eq!(ran, 8, "every invocation in flight at the swap finished before the snapshot");
}

#[test]
fn kill_9_of_a_process_gives_failure_and_errors_for_its_invocations() {
    let cp = ControlPlaneProcess::start("kill-process", &[]);
    cp.create_example_app("fragile");
    let p: ProcessRecord = cp.api.put("/apps/fragile/processes/p", &serde_json::json!({})).unwrap();
    let pid = p.pid.unwrap();
    let http = cp.http.clone();
    let pending = thread::spawn(move || {
        let api = praas_control::cli::Api::new(&http, Duration::from_secs(60));
        let started = Instant::now();
        (api.invoke("fragile", "sleep", Some("p"), b"20000"), started.elapsed())
    });
    praas_testkit::wait_until(Duration::from_secs(20), "the sleep to be in flight on the process", || {
        cp.process("fragile", "p").metrics.in_flight == 1
    });
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let failed = cp.wait_status("fragile", "p", ProcessStatus::Failure, Duration::from_secs(5));
    assert!(failed.error.unwrap().contains("signal 9"));
    let (result, waited) = pending.join().unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(waited < Duration::from_secs(10), "the pending invocation failed at once, not at its timeout");
    // A failed process cannot be invoked or swapped, only deleted.
    assert_eq!(cp.invoke("fragile", Some("p"), "echo", b"").unwrap_err().status(), Some(409));
    let _: serde_json::Value = cp.api.delete("/apps/fragile/processes/p").unwrap();
}

#[test]
fn kill_9_of_the_control_plane_then_restart_recovers_everything() {
    let mut cp = ControlPlaneProcess::start("kill-control", &[]);
    cp.create_example_app("durable");
    let _: ProcessRecord = cp.api.put("/apps/durable/processes/running", &serde_json::json!({})).unwrap();
    let _: ProcessRecord = cp.api.put("/apps/durable/processes/sleeper", &serde_json::json!({})).unwrap();
    assert_eq!(cp.invoke("durable", Some("running"), "counter", b"").unwrap(), b"1");
    assert_eq!(cp.invoke("durable", Some("sleeper"), "counter", b"").unwrap(), b"1");
    let _: ProcessRecord = cp.api.post("/apps/durable/processes/sleeper/swap").unwrap();
    let pid = cp.process("durable", "running").pid.unwrap();

    cp.kill9();
    cp.restart();

    let apps: Vec<praas_control::controller::AppView> = cp.api.get("/apps").unwrap();
    assert_eq!(apps.len(), 1);
    // The running process re-registers on its own and keeps its state and pid.
    let running = cp.wait_status("durable", "running", ProcessStatus::Allocated, Duration::from_secs(10));
    assert_eq!(running.pid, Some(pid));
    assert_eq!(cp.invoke("durable", Some("running"), "counter", b"").unwrap(), b"2");
    assert_eq!(cp.process("durable", "sleeper").status, ProcessStatus::SwappedOut);
    let _: ProcessRecord = cp.api.post("/apps/durable/processes/sleeper/swapin").unwrap();
    assert_eq!(cp.invoke("durable", Some("sleeper"), "counter", b"").unwrap(), b"2");
    // It is still watched: a kill -9 after the restart is a FAILURE too.
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    cp.wait_status("durable", "running", ProcessStatus::Failure, Duration::from_secs(5));
}

#[test]
fn a_process_presenting_another_applications_secret_is_refused() {
    let cp = ControlPlaneProcess::start("auth", &[]);
    cp.create_example_app("alpha");
    cp.create_example_app("beta");
    let _: ProcessRecord = cp.api.put("/apps/alpha/processes/a1", &serde_json::json!({})).unwrap();
    // The control channel's address, as the control plane gave it to its processes.
    let record = cp.process("alpha", "a1");
    assert_eq!(record.status, ProcessStatus::Allocated);
    let control = control_address(&cp);
    let manifest = cp.data_dir.join("apps/alpha/functions.toml");
    // alpha's real secret, as its process holds it.
    let pid = record.pid.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let alpha_secret = environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"PRAAS_SECRET="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("the process got its secret in the environment");
    // alpha's secret presented for beta; a made-up secret for beta; a made-up one for alpha.
    for (app, id, secret) in
        [("beta", "b1", alpha_secret.as_str()), ("beta", "b1", "0123456789abcdef"), ("alpha", "a1", "00ff")]
    {
        let out = praas()
            .args(["process", "serve", "--app", app, "--id", id, "--control-channel", &control, "--manifest"])
            .arg(&manifest)
            .env("PRAAS_SECRET", secret)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
    }
    assert_eq!(cp.process("alpha", "a1").status, ProcessStatus::Allocated, "the impostor changed nothing");
}

fn control_address(cp: &ControlPlaneProcess) -> String {
    // The control plane remembers its control-channel address in its database; the process
    // command lines carry it too. Read it from a running process's command line.
    let pid = cp.process("alpha", "a1").pid.unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let value = args.iter().find_map(|a| a.strip_prefix("--control-channel="));
    value.expect("--control-channel=ADDR on the command line").to_owned()
}

#[test]
fn the_idle_downscaler_swaps_out_idle_processes() {
    let cp = ControlPlaneProcess::start("idle", &["--idle-swap-ms", "400"]);
    cp.create_example_app("lazy");
    let _: ProcessRecord = cp.api.put("/apps/lazy/processes/p", &serde_json::json!({})).unwrap();
    assert_eq!(cp.invoke("lazy", Some("p"), "counter", b"").unwrap(), b"1");
    let swapped = cp.wait_status("lazy", "p", ProcessStatus::SwappedOut, Duration::from_secs(10));
    assert!(swapped.swap.is_some());
    // Invoking it brings it back with its state.
    assert_eq!(cp.invoke("lazy", Some("p"), "counter", b"").unwrap(), b"2");
}

#[test]
fn messages_between_processes_follow_peer_updates_and_survive_swapping() {
    let cp = ControlPlaneProcess::start("messages", &[]);
    cp.create_example_app("ring");
    for p in ["p1", "p2", "p3"] {
        let _: ProcessRecord = cp.api.put(&format!("/apps/ring/processes/{p}"), &serde_json::json!({})).unwrap();
    }
    // Around the ring, each process learnt the others from the control plane's peer updates.
    for (from, to) in [("p1", "p2"), ("p2", "p3"), ("p3", "p1")] {
        let put = cp.invoke("ring", Some(from), "msg_put", format!("{to} ring hello from {from}").as_bytes());
        assert_eq!(put.unwrap(), b"stored");
        let got = cp.invoke("ring", Some(to), "msg_get", format!("{from} ring 5000").as_bytes()).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), format!("{from} hello from {from}"));
    }
    // Two messages under one key queue in order; one stays undelivered across a swap of p2.
    for text in ["first", "second"] {
        let put = cp.invoke("ring", Some("p1"), "msg_put", format!("p2 keep {text}").as_bytes());
        assert_eq!(put.unwrap(), b"stored");
    }
    assert_eq!(cp.invoke("ring", Some("p2"), "msg_get", b"p1 keep 1000").unwrap(), b"p1 first");
    let _: ProcessRecord = cp.api.post("/apps/ring/processes/p2/swap").unwrap();
    // A put to a swapped-out process is refused with an error that says so. (Peer updates reach
    // p1 after the swap's answer, so p1 may still know p2 as swapping out.)
    let refused = cp.invoke("ring", Some("p1"), "msg_put", b"p2 late too late").unwrap_err();
    let refused_text = refused.to_string().to_lowercase();
    assert!(refused_text.contains("swapped out") || refused_text.contains("swapping out"), "{refused}");
    let _: ProcessRecord = cp.api.post("/apps/ring/processes/p2/swapin").unwrap();
    assert_eq!(cp.invoke("ring", Some("p2"), "msg_get", b"* keep 1000").unwrap(), b"p1 second");
    // After the swap-in, p2 is reachable again at its new address, once p3 has read the peer
    // update (sent before the swap-in's answer, read by p3's control thread on its own time).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cp.invoke("ring", Some("p3"), "msg_put", b"p2 again welcome back") {
            Ok(put) => break assert_eq!(put, b"stored"),
            Err(e) => {
                let text = e.to_string().to_lowercase();
                assert!(text.contains("swapped out") || text.contains("swapping"), "{e}");
                assert!(Instant::now() < deadline, "p3 never learnt p2's new address: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    assert_eq!(cp.invoke("ring", Some("p2"), "msg_get", b"p3 again 5000").unwrap(), b"p3 welcome back");
}
