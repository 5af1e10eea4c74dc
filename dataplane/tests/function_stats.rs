//! Per-function statistics recorded by the dispatcher, over real sockets on both transports
//! (`mio::*` and `uring::*`): counts, errors by status and the order of latencies, what the
//! control channel reports between two reports, and the switch that turns recording off.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use praas_dataplane::control_channel::Reporter;
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{Client, ClientOptions, Process, ProcessConfig, ServerHandle, Status};
use praas_testkit::{example_manifest, serve_on};

fn start(kind: TransportKind, function_stats: bool) -> (Arc<Process>, ServerHandle) {
    let config = ProcessConfig { id: "stats".into(), workers: 2, function_stats, ..ProcessConfig::default() };
    serve_on(kind, &example_manifest(), config)
}

fn client(kind: TransportKind, server: &ServerHandle) -> Client {
    let options = ClientOptions { timeout: Duration::from_secs(30), transport: kind, ..ClientOptions::default() };
    Client::connect_with(server.local_addr(), options).expect("connect")
}

fn stats_of(process: &Process, name: &str) -> praas_dataplane::stats::StatsSnapshot {
    process.functions().get(name.as_bytes()).expect("the function exists").stats.snapshot()
}

fn counts_fast_slow_and_failing_invocations(kind: TransportKind) {
    let (process, server) = start(kind, true);
    let mut client = client(kind, &server);
    for i in 0..50u32 {
        assert_eq!(client.invoke("echo", &i.to_le_bytes()).unwrap(), i.to_le_bytes());
    }
    for _ in 0..3 {
        assert_eq!(client.invoke("sleep", b"30").unwrap(), b"slept");
    }
    for _ in 0..4 {
        let err = client.invoke("fail", b"on purpose").unwrap_err();
        assert_eq!(err.status(), Some(Status::FunctionFailed));
    }
    let err = client.invoke("panic", b"boom").unwrap_err();
    assert_eq!(err.status(), Some(Status::Panicked));
    // An unknown function has no statistics of its own, and counts in no other's.
    assert_eq!(client.invoke("nonesuch", b"").unwrap_err().status(), Some(Status::UnknownFunction));

    let echo = stats_of(&process, "echo");
    let sleep = stats_of(&process, "sleep");
    let fail = stats_of(&process, "fail");
    let panic = stats_of(&process, "panic");
    assert_eq!((echo.latency.count(), sleep.latency.count(), fail.latency.count()), (50, 3, 4));
    assert!(echo.errors.is_empty() && sleep.errors.is_empty());
    assert_eq!(fail.errors, vec![(Status::FunctionFailed, 4)]);
    assert_eq!(panic.errors, vec![(Status::Panicked, 1)]);
    // The sleeps took at least their 30 ms each, and longer than any echo.
    assert!(sleep.latency.quantile(0.5) >= 28_000_000, "sleep p50 {}", sleep.latency.quantile(0.5));
    assert!(sleep.latency.max_ns >= 30_000_000);
    assert!(echo.latency.quantile(0.99) < sleep.latency.quantile(0.5));
    assert!(echo.latency.quantile(0.5) <= echo.latency.quantile(0.99));
    assert!(echo.latency.quantile(0.99) <= echo.latency.max_ns);
    let untouched = stats_of(&process, "noop");
    assert_eq!((untouched.latency.count(), untouched.errors.len()), (0, 0));
    server.stop().unwrap();
}

fn reports_carry_what_came_since_the_previous_one(kind: TransportKind) {
    let (process, server) = start(kind, true);
    let mut client = client(kind, &server);
    let mut reporter = Reporter::default();
    for _ in 0..10 {
        client.invoke("echo", b"x").unwrap();
    }
    client.invoke("fail", b"once").unwrap_err();
    let first = reporter.report(&process);
    let echo = first.functions.iter().find(|f| f.name == "echo").expect("echo is reported");
    assert_eq!(echo.latency.count(), 10);
    assert!(echo.latency.max_ns > 0);
    let fail = first.functions.iter().find(|f| f.name == "fail").expect("fail is reported");
    assert_eq!(fail.errors, vec![(Status::FunctionFailed.code(), 1)]);
    assert!(first.functions.iter().all(|f| f.name == "echo" || f.name == "fail"), "{:?}", first.functions);

    // Nothing new: nothing reported. Then only what came since.
    assert!(reporter.report(&process).functions.is_empty());
    for _ in 0..3 {
        client.invoke("echo", b"y").unwrap();
    }
    let third = reporter.report(&process);
    assert_eq!(third.functions.len(), 1);
    assert_eq!((third.functions[0].name.as_str(), third.functions[0].latency.count()), ("echo", 3));
    assert_eq!(third.invocations, 14, "the process's own counter counts every invocation that ran");
    server.stop().unwrap();
}

fn recording_switched_off_records_nothing(kind: TransportKind) {
    let (process, server) = start(kind, false);
    let mut client = client(kind, &server);
    for _ in 0..20 {
        client.invoke("echo", b"z").unwrap();
    }
    client.invoke("fail", b"no").unwrap_err();
    assert_eq!(stats_of(&process, "echo").latency.count(), 0);
    assert!(stats_of(&process, "fail").errors.is_empty());
    // The process's own counters still count.
    assert_eq!(process.metrics().invocations(), 21);
    server.stop().unwrap();
}

on_both_transports!(
    counts_fast_slow_and_failing_invocations,
    reports_carry_what_came_since_the_previous_one,
    recording_switched_off_records_nothing,
);
