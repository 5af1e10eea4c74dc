//! The control plane with processes that serve RDMA (`praas control serve --process-rdma auto`):
//! they register their RDMA address, clients invoke them over it, and they message each other
//! over it, also after a swap. Needs an RDMA device: `scripts/test-rdma.sh` runs this binary in
//! the SoftRoCE VM (with `PRAAS_RDMA_ADDR` set and `PRAAS_RDMA_REQUIRED=1`), as it runs the data
//! plane's RDMA tests; the test is `#[ignore]`d so that a host without a device reports it as
//! ignored instead of passing it vacuously.
#![cfg(feature = "rdma")]

mod support;

use std::time::{Duration, Instant};

use praas_control::model::{Metrics, ProcessRecord, ProcessStatus};
use praas_dataplane::peer::DeliveryCounts;
use praas_dataplane::{RdmaClient, RdmaClientOptions};
use support::{call_once_known, invoke_on, swap_out, ControlPlaneProcess};

/// Waits until `p` of `app` reports `n` messages delivered over RDMA (metrics come every 50 ms).
fn wait_for_rdma_messages(cp: &ControlPlaneProcess, app: &str, p: &str, n: u64) -> ProcessRecord {
    wait_for_rdma_counts(cp, app, p, "messages", |m| m.messages_sent, n)
}

/// Waits until `p` of `app` reports `n` of `what` (`counts` of its metrics) over RDMA, and none
/// over TCP.
fn wait_for_rdma_counts(
    cp: &ControlPlaneProcess,
    app: &str,
    p: &str,
    what: &str,
    counts: fn(&Metrics) -> DeliveryCounts,
    n: u64,
) -> ProcessRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let record = cp.process(app, p);
        let sent = counts(&record.metrics);
        if sent.rdma == n || Instant::now() > deadline {
            assert_eq!((sent.rdma, sent.tcp), (n, 0), "{app}/{p}'s {what} went over RDMA: {record:?}");
            return record;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn processes_register_their_rdma_address_and_message_each_other_over_rdma_across_a_swap() {
    let Some(ip) = praas_testkit::rdma_test_addr() else { return };
    let cp = ControlPlaneProcess::start("rdma", &["--process-rdma", "auto"]);
    cp.create_example_app("hpc");
    for p in ["p0", "p1"] {
        let record = praas_control::cli::process_create(&cp.api, "hpc", p, None).expect("create");
        assert_eq!(record.status, ProcessStatus::Allocated);
        let rdma: std::net::SocketAddr =
            record.rdma_addr.as_deref().expect("an RDMA address in the record").parse().expect("HOST:PORT");
        assert_eq!(rdma.ip(), ip, "auto picks the device's address");
        // Clients reach the process over RDMA at the address the control plane lists.
        let options = RdmaClientOptions { timeout: Duration::from_secs(30), ..RdmaClientOptions::default() };
        let mut client = RdmaClient::connect_with(rdma, options).expect("connect over RDMA");
        assert_eq!(client.invoke("process_id", b"").expect("invoke over RDMA"), p.as_bytes());
    }

    // A C program through the C client library (ffi/client), over RDMA: scripts/test-rdma.sh
    // builds it on the host and names it in PRAAS_C_INVOKE.
    match std::env::var_os("PRAAS_C_INVOKE") {
        Some(program) => {
            let rdma = cp.process("hpc", "p0").rdma_addr.expect("an RDMA address");
            let out = std::process::Command::new(program)
                .args([&format!("rdma://{rdma}"), "echo", "from C over RDMA"])
                .output()
                .expect("the C client runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout, b"from C over RDMA");
        }
        None if std::env::var_os("PRAAS_RDMA_REQUIRED").is_some() => panic!("PRAAS_C_INVOKE is not set"),
        None => eprintln!("the C client over RDMA: skipped (PRAAS_C_INVOKE unset)"),
    }

    // The CLI's direct path takes the process's RDMA address from the control plane.
    let out = support::praas()
        .args(["--control", &cp.http, "invoke", "--app", "hpc", "--process", "p1", "--direct", "process_id"])
        .output()
        .expect("praas runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"p1");

    let put = |text: &str| cp.invoke("hpc", Some("p0"), "msg_put", text.as_bytes()).expect("msg_put");
    let get = || cp.invoke("hpc", Some("p1"), "msg_get", b"p0 k 10000").expect("msg_get");
    assert_eq!(put("p1 k hello over rdma"), b"stored");
    assert_eq!(get(), b"p0 hello over rdma");
    wait_for_rdma_messages(&cp, "hpc", "p0", 1);

    // Swapped out and in, p1 comes back with a new RDMA address; p0 learns it and messages go
    // over RDMA again. A message stored before the swap survives it.
    assert_eq!(put("p1 k kept across the swap"), b"stored");
    let before = cp.process("hpc", "p1").rdma_addr;
    let swapped: ProcessRecord = cp.api.post("/apps/hpc/processes/p1/swap").expect("swap out");
    assert_eq!(swapped.status, ProcessStatus::SwappedOut);
    assert_eq!(swapped.rdma_addr, None, "a swapped-out process has no address");
    let back: ProcessRecord = cp.api.post("/apps/hpc/processes/p1/swapin").expect("swap in");
    assert_eq!(back.status, ProcessStatus::Allocated);
    assert!(back.rdma_addr.is_some() && back.rdma_addr != before, "{:?} after {before:?}", back.rdma_addr);
    assert_eq!(get(), b"p0 kept across the swap");
    // p0 hears of p1's new address from the control plane, shortly after p1 registers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cp.invoke("hpc", Some("p0"), "msg_put", b"p1 k after the swap") {
            Ok(out) => {
                assert_eq!(out, b"stored");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("p0 cannot reach p1 after its swap-in: {e}"),
        }
    }
    assert_eq!(get(), b"p0 after the swap");
    wait_for_rdma_messages(&cp, "hpc", "p0", 3);
}

#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn a_remote_call_over_rdma_swaps_in_a_swapped_out_callee() {
    let Some(ip) = praas_testkit::rdma_test_addr() else { return };
    let cp = ControlPlaneProcess::start("rdma-swap-in", &["--process-rdma", "auto"]);
    cp.create_app_of("rs", &["remote_call", "counter"], "");
    for p in ["caller", "callee"] {
        let record = praas_control::cli::process_create(&cp.api, "rs", p, None).expect("create");
        let rdma: std::net::SocketAddr = record.rdma_addr.expect("an RDMA address").parse().expect("HOST:PORT");
        assert_eq!(rdma.ip(), ip);
    }
    // State on the callee, reached once remotely while it runs.
    assert_eq!(invoke_on(&cp, "rs", "callee", "counter", "", 5000).unwrap(), b"1");
    assert_eq!(call_once_known(&cp, "rs", "caller", "callee", "counter"), b"2");
    let before = cp.process("rs", "callee").rdma_addr;
    swap_out(&cp, "rs", "callee");
    // The call swaps it in (at a new RDMA address) and reaches it there, over RDMA.
    let started = Instant::now();
    let output = invoke_on(&cp, "rs", "caller", "remote_call", "callee counter ", 20_000).unwrap();
    let took = started.elapsed();
    assert_eq!(output, b"3", "the callee answers with its state intact");
    let callee = cp.process("rs", "callee");
    assert_eq!(callee.status, ProcessStatus::Allocated);
    assert!(callee.rdma_addr.is_some() && callee.rdma_addr != before, "{:?} after {before:?}", callee.rdma_addr);
    assert_eq!(invoke_on(&cp, "rs", "caller", "remote_call", "callee counter ", 5000).unwrap(), b"4");
    wait_for_rdma_counts(&cp, "rs", "caller", "remote calls", |m| m.remote_calls, 3);
    let metrics = cp.api.metrics().expect("the metrics");
    for (wire, calls) in [("rdma", 3.0), ("tcp", 0.0)] {
        let series = format!("praas_process_remote_calls_total{{app=\"rs\",process=\"caller\",wire=\"{wire}\"}}");
        assert_eq!(support::sample(&metrics, &series), calls, "{series}");
    }
    eprintln!("rdma: a call to a swapped-out callee answered in {took:?} (swap-in included)");
}
