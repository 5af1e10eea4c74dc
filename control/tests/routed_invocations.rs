//! Routed invocations do not stall the rest of the API (issue 15's "600 slow invocations made
//! `GET /apps` take 57 s"): they run on a pool of their own, at most `--max-invocations` at once,
//! and one past the limit is answered 503 with the reason at once.

mod support;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use praas_control::cli::ApiCallError;
use praas_control::controller::AppView;
use praas_control::model::ProcessRecord;
use praas_control::routes;
use support::ControlPlaneProcess;

/// How long the example `sleep` sleeps: longer than any of these tests runs.
const SLEEP_MS: &[u8] = b"60000";

/// A control plane with an application and one ALLOCATED process `p`.
fn control_plane(name: &str, args: &[&str]) -> ControlPlaneProcess {
    let cp = ControlPlaneProcess::start(name, args);
    cp.create_example_app("app");
    praas_control::cli::process_create(&cp.api, "app", "p", None).expect("the process starts");
    cp
}

/// `n` routed invocations of `sleep` on `p`, each from a thread of its own.
fn sleepers(cp: &ControlPlaneProcess, n: usize) -> Vec<JoinHandle<Result<Vec<u8>, ApiCallError>>> {
    (0..n)
        .map(|_| {
            let api = support::api_of(&cp.http, &cp.data_dir);
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || api.invoke("app", "sleep", Some("p"), SLEEP_MS))
                .unwrap()
        })
        .collect()
}

/// Invocations the process has accepted and not finished (running or waiting for a worker), as
/// it last reported.
fn process_in_flight(cp: &ControlPlaneProcess) -> u64 {
    cp.api.get::<ProcessRecord>(&routes::process("app", "p")).map(|r| r.metrics.in_flight).unwrap_or(0)
}

/// Kills the control plane and its process, then waits for the invoking threads (their calls
/// fail once the control plane is gone).
fn finish(cp: ControlPlaneProcess, threads: Vec<JoinHandle<Result<Vec<u8>, ApiCallError>>>) {
    drop(cp);
    for thread in threads {
        let _ = thread.join();
    }
}

#[test]
fn get_apps_answers_within_a_second_while_600_routed_invocations_are_in_flight() {
    praas_testkit::flood::raise_nofile_limit();
    let cp = control_plane("routed-load", &[]);
    let threads = sleepers(&cp, 600);
    // Before routed invocations had a pool of their own, they filled the blocking pool (512
    // threads) every handler shared: a `GET` waited behind the invocations queued after them
    // (here until the first ones ran past their 60 s deadline).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut slowest = Duration::ZERO;
    loop {
        let started = Instant::now();
        let in_flight = process_in_flight(&cp);
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(took < Duration::from_secs(1), "GET of the process took {took:?}, {in_flight} invocations in flight");
        if in_flight == 600 {
            break;
        }
        assert!(Instant::now() < deadline, "only {in_flight} invocations in flight at the process after 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..20 {
        let started = Instant::now();
        let apps: Vec<AppView> = cp.api.get(&routes::apps()).expect("GET /apps answers");
        slowest = slowest.max(started.elapsed());
        assert_eq!(apps.len(), 1);
    }
    eprintln!("the slowest GET with 600 routed invocations in flight: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "GET /apps took {slowest:?} with 600 routed invocations in flight");
    finish(cp, threads);
}

#[test]
fn past_the_routed_limit_an_invocation_is_answered_503_with_the_reason_at_once() {
    let cp = control_plane("routed-limit", &["--max-invocations", "8"]);
    let threads = sleepers(&cp, 8);
    praas_testkit::wait_until(Duration::from_secs(30), "8 routed invocations in flight", || {
        let metrics = cp.api.metrics().unwrap_or_default();
        support::sample(&metrics, "praas_requests_in_flight{kind=\"invocation\"}") == 8.0
    });
    let started = Instant::now();
    let refused = cp.invoke("app", Some("p"), "echo", b"x").expect_err("a ninth invocation is refused");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(1), "the refusal took {waited:?}");
    match refused {
        ApiCallError::Refused { status: 503, message, .. } => {
            assert!(message.contains("8 routed invocations are in flight"), "{message}");
            assert!(message.contains("--max-invocations"), "{message}");
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    // Other routes answer meanwhile, and the refusals are counted.
    let apps: Vec<AppView> = cp.api.get(&routes::apps()).unwrap();
    assert_eq!(apps.len(), 1);
    let metrics = cp.api.metrics().unwrap();
    let refusals = "praas_http_requests_total{method=\"POST\",route=\"/apps/{app}/invoke/{function}\",status=\"503\"}";
    assert_eq!(support::sample(&metrics, refusals), 1.0, "{metrics}");
    finish(cp, threads);
}
