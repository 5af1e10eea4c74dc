//! The control channel without a thread per connection (issue 15's "3,000 idle connections: 1,010
//! threads"): thousands of idle connections cost a little memory and no threads, a real process
//! registers and is served meanwhile; a connection that does not prove itself is closed after the
//! handshake timeout, and one past the connection limit at once.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use praas_testkit::flood::Flood;
use support::{proc_status, sample, ControlPlaneProcess};

/// Control-channel connections open now, as `/metrics` counts them.
fn open_control_connections(cp: &ControlPlaneProcess) -> f64 {
    sample(&cp.api.metrics().unwrap_or_default(), "praas_connections_open{listener=\"control\"}")
}

/// Creates process `name` of `app` (it registers through the control channel) and invokes it
/// through the control plane.
fn registers_and_serves(cp: &ControlPlaneProcess, name: &str) {
    let started = Instant::now();
    praas_control::cli::process_create(&cp.api, "app", name, None).expect("the process registers");
    let output = cp.invoke("app", Some(name), "echo", b"still served").expect("the process is served");
    assert_eq!(output, b"still served");
    eprintln!("{name} registered and answered in {:?}", started.elapsed());
}

#[test]
fn ten_thousand_idle_and_half_open_control_connections_cost_little_memory_and_no_threads() {
    praas_testkit::flood::raise_nofile_limit();
    let cp = ControlPlaneProcess::start(
        "channel-idle",
        &["--handshake-timeout-ms", "120000", "--max-control-connections", "10100"],
    );
    cp.create_example_app("app");
    let pid = cp.child.id();
    let (rss_before, threads_before) = (proc_status(pid, "VmRSS:"), proc_status(pid, "Threads:"));

    // Half of them idle, half half-open (the first 10 bytes of a frame's header, then nothing).
    let addr: std::net::SocketAddr = cp.control.parse().unwrap();
    let mut idle = praas_testkit::flood::open(addr, 5_000, Flood::Idle).expect("connect to the control channel");
    idle.extend(praas_testkit::flood::open(addr, 5_000, Flood::PartialHeader).expect("connect to the control channel"));
    praas_testkit::wait_until(Duration::from_secs(60), "10,000 control connections open", || {
        open_control_connections(&cp) >= 10_000.0
    });
    let (rss_idle, threads_idle) = (proc_status(pid, "VmRSS:"), proc_status(pid, "Threads:"));
    eprintln!(
        "10,000 idle and half-open: resident {rss_before} -> {rss_idle} KiB (+{} KiB), threads {threads_before} -> {threads_idle}",
        rss_idle.saturating_sub(rss_before)
    );
    assert!(rss_idle < rss_before + 64 * 1024, "resident memory grew from {rss_before} KiB to {rss_idle} KiB");
    // A thread per connection made 10,000; the runtime's and its blocking pool's few remain.
    assert!(threads_idle < threads_before + 16, "threads grew from {threads_before} to {threads_idle}");

    registers_and_serves(&cp, "p");

    idle.into_iter().for_each(praas_testkit::linux::close_with_reset);
    praas_testkit::wait_until(Duration::from_secs(10), "only the process's link open", || {
        open_control_connections(&cp) == 1.0
    });
    let closed = Instant::now();
    let grown = rss_idle.saturating_sub(rss_before);
    praas_testkit::wait_until(Duration::from_secs(10), "resident memory back", || {
        proc_status(pid, "VmRSS:") < rss_before + grown / 4 + 8 * 1024
    });
    eprintln!("resident {} KiB {:?} after the close", proc_status(pid, "VmRSS:"), closed.elapsed());
}

#[test]
fn unproved_connections_are_closed_after_the_handshake_timeout_and_past_the_limit_at_once() {
    let cp = ControlPlaneProcess::start(
        "channel-bounds",
        &["--handshake-timeout-ms", "500", "--max-control-connections", "20"],
    );
    cp.create_example_app("app");
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut conn = TcpStream::connect(cp.control.as_str()).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // Served: its challenge comes.
            let mut first = [0u8; 1];
            conn.read_exact(&mut first).expect("the control plane's Hello");
            conn
        })
        .collect();
    let started = Instant::now();
    let mut over = TcpStream::connect(cp.control.as_str()).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    over.read_to_end(&mut answer).expect("the connection past the limit is closed");
    assert!(answer.is_empty(), "the connection past the limit got {} bytes", answer.len());
    assert!(started.elapsed() < Duration::from_secs(1), "closed after {:?}", started.elapsed());
    let metrics = cp.api.metrics().unwrap();
    assert_eq!(sample(&metrics, "praas_connections_refused_total{listener=\"control\"}"), 1.0, "{metrics}");

    // The 20 never prove themselves: closed by the control plane after the handshake timeout.
    for conn in &mut idle {
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).expect("closed by the control plane, not by our timeout");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "the unproved connections were closed after {waited:?}");
    // Their slots are free again: a real process registers.
    praas_testkit::wait_until(Duration::from_secs(5), "no control connection open", || {
        open_control_connections(&cp) == 0.0
    });
    registers_and_serves(&cp, "p");
}
