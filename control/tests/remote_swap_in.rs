//! A remote invocation of a swapped-out process swaps it in through the control plane (the
//! caller's `SwapInRequest` on its control channel) and then runs, within the caller's deadline:
//! a real control plane, real `praas process serve` processes on mio and io_uring.

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use praas_control::metrics::FunctionStats;
use praas_control::model::{ProcessRecord, ProcessStatus};
use praas_control::routes;
use praas_dataplane::transport::TransportKind;
use praas_dataplane::{Client, ClientError, ClientOptions, Status};
use support::{call_once_known, invoke_on, sample, swap_out, ControlPlaneProcess};

const FUNCTIONS: &[&str] = &["remote_call", "counter", "process_id", "sleep"];

fn start(name: &str, kind: TransportKind, extra: &[&str]) -> ControlPlaneProcess {
    let transport = kind.to_string();
    let mut args = vec!["--process-transport", transport.as_str()];
    args.extend_from_slice(extra);
    ControlPlaneProcess::start(&format!("{name}-{kind}"), &args)
}

fn create(cp: &ControlPlaneProcess, app: &str, name: &str, kind: TransportKind) -> ProcessRecord {
    let record: ProcessRecord = cp.api.put(&routes::process(app, name), &serde_json::json!({})).unwrap();
    assert_eq!(record.status, ProcessStatus::Allocated);
    assert_eq!(record.transport.as_deref(), Some(kind.to_string().as_str()), "served on {kind}");
    record
}

fn swap_ins(cp: &ControlPlaneProcess, app: &str) -> f64 {
    sample(&cp.api.metrics().unwrap(), &format!("praas_swap_in_bytes_count{{app=\"{app}\"}}"))
}

/// The count of `function`'s invocations on process `name`, as `GET .../stats` gives it, once it
/// reaches `want` (within 10 s).
fn wait_for_count(cp: &ControlPlaneProcess, app: &str, name: &str, function: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats: Vec<FunctionStats> = cp.api.get(&routes::stats(app, name)).unwrap();
        let count = stats.iter().find(|s| s.function == function).map_or(0, |s| s.total.count);
        if count == want {
            return;
        }
        assert!(Instant::now() < deadline, "{app}/{name}'s stats count {count} {function}, not {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn swapped_out_by_the_api_is_swapped_in_by_a_call(kind: TransportKind) {
    let cp = start("remote-swapin-api", kind, &[]);
    cp.create_app_of("rs", FUNCTIONS, "");
    create(&cp, "rs", "caller", kind);
    create(&cp, "rs", "callee", kind);
    // State on the callee, reached once remotely while it runs.
    assert_eq!(invoke_on(&cp, "rs", "callee", "counter", "", 5000).unwrap(), b"1");
    assert_eq!(call_once_known(&cp, "rs", "caller", "callee", "counter"), b"2");
    swap_out(&cp, "rs", "callee");
    let before = swap_ins(&cp, "rs");

    let started = Instant::now();
    let output = invoke_on(&cp, "rs", "caller", "remote_call", "callee counter ", 20_000).unwrap();
    let took = started.elapsed();
    assert_eq!(output, b"3", "the callee answers with its state intact");
    assert_eq!(cp.process("rs", "callee").status, ProcessStatus::Allocated);
    assert_eq!(swap_ins(&cp, "rs") - before, 1.0, "one swap-in");
    // The next call finds it running.
    assert_eq!(invoke_on(&cp, "rs", "caller", "remote_call", "callee counter ", 5000).unwrap(), b"4");
    // Remote invocations count in the callee's statistics: 1 direct + 3 remote.
    wait_for_count(&cp, "rs", "callee", "counter", 4);
    wait_for_count(&cp, "rs", "caller", "remote_call", 3);
    eprintln!("{kind}: a call to a swapped-out callee answered in {took:?} (swap-in included)");
}

#[test]
fn mio_a_callee_swapped_out_by_the_api_is_swapped_in_by_a_remote_call() {
    swapped_out_by_the_api_is_swapped_in_by_a_call(TransportKind::Mio);
}

#[test]
fn uring_a_callee_swapped_out_by_the_api_is_swapped_in_by_a_remote_call() {
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    swapped_out_by_the_api_is_swapped_in_by_a_call(TransportKind::Uring);
}

fn swapped_out_by_the_downscaler_is_swapped_in_by_a_call(kind: TransportKind) {
    let cp = start("remote-swapin-idle", kind, &["--idle-swap-ms", "1500"]);
    cp.create_app_of("idle", FUNCTIONS, "");
    create(&cp, "idle", "callee", kind);
    assert_eq!(invoke_on(&cp, "idle", "callee", "counter", "", 5000).unwrap(), b"1");
    cp.wait_status("idle", "callee", ProcessStatus::SwappedOut, Duration::from_secs(20));
    // The caller is created after the callee went idle: it runs while the callee is swapped out.
    create(&cp, "idle", "caller", kind);
    let output = call_once_known(&cp, "idle", "caller", "callee", "counter");
    assert_eq!(output, b"2", "the downscaled callee answers with its state intact");
    assert_eq!(cp.process("idle", "callee").status, ProcessStatus::Allocated);
    wait_for_count(&cp, "idle", "callee", "counter", 2);
}

#[test]
fn mio_a_callee_swapped_out_by_the_downscaler_is_swapped_in_by_a_remote_call() {
    swapped_out_by_the_downscaler_is_swapped_in_by_a_call(TransportKind::Mio);
}

#[test]
fn uring_a_callee_swapped_out_by_the_downscaler_is_swapped_in_by_a_remote_call() {
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    swapped_out_by_the_downscaler_is_swapped_in_by_a_call(TransportKind::Uring);
}

fn two_callers_at_once_cause_one_swap_in(kind: TransportKind) {
    let cp = Arc::new(start("remote-swapin-two", kind, &[]));
    cp.create_app_of("two", FUNCTIONS, "");
    for name in ["a1", "a2", "callee"] {
        create(&cp, "two", name, kind);
    }
    assert_eq!(invoke_on(&cp, "two", "callee", "counter", "", 5000).unwrap(), b"1");
    // Both callers know the callee before it swaps out.
    for caller in ["a1", "a2"] {
        assert_eq!(call_once_known(&cp, "two", caller, "callee", "process_id"), b"callee");
    }
    swap_out(&cp, "two", "callee");
    let before = swap_ins(&cp, "two");
    let barrier = Arc::new(Barrier::new(2));
    let callers: Vec<_> = ["a1", "a2"]
        .into_iter()
        .map(|caller| {
            let (cp, barrier) = (Arc::clone(&cp), Arc::clone(&barrier));
            let addr = cp.process("two", caller).data_addr.unwrap();
            std::thread::spawn(move || {
                let options = ClientOptions {
                    timeout: Duration::from_secs(60),
                    invocation_timeout_ms: 20_000,
                    ..ClientOptions::default()
                };
                let mut client = Client::connect_with(addr.as_str(), options).unwrap();
                barrier.wait();
                client.invoke("remote_call", b"callee counter ")
            })
        })
        .collect();
    let mut outputs: Vec<Vec<u8>> = callers.into_iter().map(|c| c.join().unwrap().unwrap()).collect();
    outputs.sort();
    assert_eq!(outputs, [b"2".to_vec(), b"3".to_vec()], "both ran, on the one callee's state");
    assert_eq!(swap_ins(&cp, "two") - before, 1.0, "two callers at once: one swap-in");
    let requests = sample(&cp.api.metrics().unwrap(), "praas_swap_in_requests_total{app=\"two\",outcome=\"ok\"}");
    assert_eq!(requests, 2.0, "each caller asked, and each was answered ok");
    assert_eq!(cp.process("two", "callee").status, ProcessStatus::Allocated);
}

#[test]
fn mio_two_callers_at_once_cause_one_swap_in() {
    two_callers_at_once_cause_one_swap_in(TransportKind::Mio);
}

#[test]
fn uring_two_callers_at_once_cause_one_swap_in() {
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    two_callers_at_once_cause_one_swap_in(TransportKind::Uring);
}

fn remote_error(result: Result<Vec<u8>, ClientError>) -> (Status, String) {
    match result {
        Err(ClientError::Remote { status, message }) => (status, message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn with_the_setting_off_a_swapped_out_callee_is_unavailable_at_once(kind: TransportKind) {
    let cp = start("remote-swapin-off", kind, &[]);
    cp.create_app_of("off", FUNCTIONS, "swap_in_on_call = false");
    create(&cp, "off", "caller", kind);
    create(&cp, "off", "callee", kind);
    assert_eq!(call_once_known(&cp, "off", "caller", "callee", "counter"), b"1");
    swap_out(&cp, "off", "callee");
    // The caller hears of the swap from the control plane's peer updates, on its own time: until
    // it has heard of the end (SWAPPED_OUT), it may still know the callee as swapping out.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, message, took) = loop {
        let started = Instant::now();
        let (status, message) = remote_error(invoke_on(&cp, "off", "caller", "remote_call", "callee counter ", 20_000));
        let took = started.elapsed();
        if !message.contains("swapping out") || Instant::now() > deadline {
            break (status, message, took);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status, Status::Unavailable, "{message}");
    assert!(message.contains("swap_in_on_call = false"), "{message}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}, not within the 20 s deadline");
    assert_eq!(cp.process("off", "callee").status, ProcessStatus::SwappedOut, "not swapped in");
    assert_eq!(swap_ins(&cp, "off"), 0.0);
}

#[test]
fn mio_with_swap_in_on_call_off_a_swapped_out_callee_is_unavailable_at_once() {
    with_the_setting_off_a_swapped_out_callee_is_unavailable_at_once(TransportKind::Mio);
}

#[test]
fn uring_with_swap_in_on_call_off_a_swapped_out_callee_is_unavailable_at_once() {
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    with_the_setting_off_a_swapped_out_callee_is_unavailable_at_once(TransportKind::Uring);
}

fn a_deadline_too_short_for_the_swap_in_gives_timeout(kind: TransportKind) {
    let cp = start("remote-swapin-late", kind, &[]);
    cp.create_app_of("late", FUNCTIONS, "");
    create(&cp, "late", "caller", kind);
    create(&cp, "late", "callee", kind);
    assert_eq!(call_once_known(&cp, "late", "caller", "callee", "counter"), b"1");
    swap_out(&cp, "late", "callee");
    // 5 ms: less than starting an OS process takes, so the swap-in cannot be done by then.
    let started = Instant::now();
    let (status, message) = remote_error(invoke_on(&cp, "late", "caller", "remote_call", "callee counter ", 5));
    let took = started.elapsed();
    assert_eq!(status, Status::Timeout, "{message}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    // The next call, with time enough, finds the callee with its state (swapped in by the
    // request the short call sent, which goes on past its deadline, or by this one).
    assert_eq!(invoke_on(&cp, "late", "caller", "remote_call", "callee counter ", 20_000).unwrap(), b"2");
    assert_eq!(cp.process("late", "callee").status, ProcessStatus::Allocated);
}

#[test]
fn mio_a_deadline_too_short_for_the_swap_in_gives_timeout() {
    a_deadline_too_short_for_the_swap_in_gives_timeout(TransportKind::Mio);
}

#[test]
fn uring_a_deadline_too_short_for_the_swap_in_gives_timeout() {
    if !praas_dataplane::transport::uring_available() {
        eprintln!("skipped: io_uring is unavailable on this kernel");
        return;
    }
    a_deadline_too_short_for_the_swap_in_gives_timeout(TransportKind::Uring);
}
