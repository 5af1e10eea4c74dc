//! The RDMA transport end to end, on a real device (SoftRoCE in CI: `scripts/test-rdma.sh` runs
//! this binary inside the QEMU VM of `scripts/rxe-vm.sh`, with `PRAAS_RDMA_ADDR` set to the rxe
//! device's address and `PRAAS_RDMA_REQUIRED=1`, so a missing device fails instead of skipping).
//!
//! The tests are `#[ignore]`d so that a plain `cargo test` on a host without RDMA reports them as
//! ignored instead of passing them vacuously; `scripts/test-rdma.sh` (called by the test command)
//! always runs them with `--include-ignored`. Run by hand with `--include-ignored` and no device,
//! each says it skipped.
#![cfg(feature = "rdma")]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use praas_dataplane::function::{ExecutionMode, Manifest};
use praas_dataplane::protocol::{encode_frame, Header};
use praas_dataplane::testing::spec;
use praas_dataplane::{
    ClientError, FunctionRegistry, Process, ProcessConfig, RdmaClient, RdmaClientOptions, RdmaOptions, RdmaTransport,
    ServerHandle, Status, Transport,
};

/// The address of the RDMA device to test on, or `None` (after saying so) where there is none.
fn rdma_addr() -> Option<IpAddr> {
    match std::env::var("PRAAS_RDMA_ADDR") {
        Ok(addr) => Some(addr.parse().expect("PRAAS_RDMA_ADDR is an IP address")),
        Err(_) if std::env::var_os("PRAAS_RDMA_REQUIRED").is_some() => {
            panic!("PRAAS_RDMA_REQUIRED is set but PRAAS_RDMA_ADDR is not: no RDMA device to test on")
        }
        Err(_) => {
            eprintln!("SKIPPED: no RDMA device (PRAAS_RDMA_ADDR unset); scripts/test-rdma.sh runs this on SoftRoCE");
            None
        }
    }
}

macro_rules! require_rdma {
    () => {
        match rdma_addr() {
            Some(addr) => addr,
            None => return,
        }
    };
}

fn library() -> PathBuf {
    std::env::var_os("PRAAS_EXAMPLE_FUNCTIONS")
        .map(PathBuf::from)
        .unwrap_or_else(praas_dataplane::testing::example_functions)
}

fn manifest() -> Manifest {
    let lib = library();
    let functions = vec![
        spec("echo", &lib, None, ExecutionMode::Inline),
        spec("noop", &lib, None, ExecutionMode::Inline),
        spec("echo_worker", &lib, Some("echo"), ExecutionMode::Worker),
        spec("sleep", &lib, None, ExecutionMode::Worker),
        spec("generate", &lib, None, ExecutionMode::Worker),
    ];
    Manifest { functions, base_dir: PathBuf::new() }
}

fn serve(ip: IpAddr, options: RdmaOptions) -> (Arc<Process>, ServerHandle) {
    let functions = FunctionRegistry::load(&manifest()).expect("the test manifest loads");
    let config = ProcessConfig { id: "rdma-test".into(), workers: 4, ..ProcessConfig::default() };
    let process = Process::start(config, functions).expect("the process starts");
    let transport =
        RdmaTransport::bind(SocketAddr::new(ip, 0), Arc::clone(&process), options).expect("bind the RDMA transport");
    let server = Box::new(transport).spawn().expect("the transport starts");
    (process, server)
}

fn client(addr: SocketAddr) -> RdmaClient {
    let options = RdmaClientOptions { timeout: Duration::from_secs(30), ..RdmaClientOptions::default() };
    RdmaClient::connect_with(addr, options).expect("connect over RDMA")
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn assert_serving(addr: SocketAddr) {
    let mut c = client(addr);
    eprintln!("assert_serving: connected");
    assert_eq!(c.invoke("echo", b"still here").expect("the process keeps serving"), b"still here");
    eprintln!("assert_serving: small ok");
    let big = pattern(300 << 10, 99);
    assert_eq!(c.invoke("echo_worker", &big).expect("large payloads too"), big);
    eprintln!("assert_serving: large ok");
}

#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn invocations_from_0_bytes_to_16_mib_are_byte_exact() {
    let ip = require_rdma!();
    let (_process, server) = serve(ip, RdmaOptions::default());
    let mut c = client(server.local_addr());
    let slot = RdmaOptions::default().recv_size;
    let sizes = [0, 1, 8, 1024, slot - 24 - 4, slot - 24 - 3, slot, 64 << 10, (1 << 20) + 7, 16 << 20];
    for (i, &size) in sizes.iter().enumerate() {
        let input = pattern(size, i as u64);
        for function in ["echo", "echo_worker"] {
            let started = Instant::now();
            let output = c.invoke(function, &input).unwrap_or_else(|e| panic!("{function} of {size} bytes: {e}"));
            assert!(output == input, "{function} of {size} bytes came back different");
            eprintln!("{function:>11} {size:>9} B: {:?}", started.elapsed());
        }
    }
    // Output larger than input: generated by a worker.
    let out = c.invoke("generate", b"3000000").expect("generate 3 MB");
    assert_eq!(out.len(), 3_000_000);
    assert!(out.iter().enumerate().all(|(i, &b)| b as usize == i % 251), "generated bytes");
    let err = c.invoke("nope", b"").unwrap_err();
    assert_eq!(err.status(), Some(Status::UnknownFunction), "{err}");
}

#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn sixteen_clients_pipeline_concurrently() {
    let ip = require_rdma!();
    let (_process, server) = serve(ip, RdmaOptions::default());
    let addr = server.local_addr();
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            thread::spawn(move || {
                let mut c = client(addr);
                c.set_timeout(Duration::from_secs(30));
                let mut expected = std::collections::HashMap::new();
                // More requests than credits: submit waits for credits and keeps what arrives.
                for i in 0..40u64 {
                    let size = match i % 5 {
                        0 => 0,
                        1 => 100,
                        2 => 5000,
                        3 => 20_000,
                        _ => 70_000,
                    };
                    let input = pattern(size, t * 1000 + i);
                    let function = if i % 2 == 0 { "echo" } else { "echo_worker" };
                    let id = c.submit(function, &input).unwrap_or_else(|e| panic!("client {t} submit {i}: {e}: {c:?}"));
                    expected.insert(id, input);
                }
                while !expected.is_empty() {
                    let done = c
                        .recv()
                        .unwrap_or_else(|e| panic!("client {t}: {e}: {c:?}, waiting for {:?}", expected.keys()));
                    let input = expected.remove(&done.id).expect("a response to a request of ours");
                    assert!(done.result.expect("success") == input, "client {t}: response {} differs", done.id);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
}

/// Not a test of its own: the child process `a_client_killed_mid_transfer...` kills.
#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn child_client_for_the_kill_test() {
    let Ok(addr) = std::env::var("PRAAS_RDMA_CHILD_ADDR") else { return };
    let mut c = client(addr.parse().expect("a socket address"));
    let input = pattern(16 << 20, 5);
    println!("connected");
    loop {
        let id = c.submit("echo_worker", &input).expect("submit");
        println!("sent {id}");
        let _ = c.wait(id);
    }
}

#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn a_client_killed_mid_transfer_leaves_the_process_serving() {
    let ip = require_rdma!();
    let (_process, server) = serve(ip, RdmaOptions::default());
    eprintln!("fork protection: {}", praas_dataplane::transport::rdma::verbs::fork_protection());
    let addr = server.local_addr();
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "child_client_for_the_kill_test", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env("PRAAS_RDMA_CHILD_ADDR", addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child client");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    // Wait until the child is in the middle of its second 16 MiB transfer, then kill it.
    loop {
        let line = lines.next().expect("the child talks").expect("utf-8");
        if line.starts_with("sent 2") {
            break;
        }
    }
    thread::sleep(Duration::from_millis(20));
    eprintln!("kill test: killing the child");
    child.kill().expect("kill the child");
    let status = child.wait().expect("reap the child");
    eprintln!("kill test: child reaped");
    assert!(!status.success(), "the child was killed");
    assert_serving(addr);
}

#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn a_process_that_goes_away_mid_transfer_gives_its_client_a_clear_error() {
    let ip = require_rdma!();
    let (_process, server) = serve(ip, RdmaOptions::default());
    let addr = server.local_addr();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = thread::spawn(move || {
        let mut c = client(addr);
        c.set_timeout(Duration::from_secs(20));
        let input = pattern(16 << 20, 3);
        loop {
            let _ = tx.send(());
            if let Err(e) = c.invoke("echo_worker", &input) {
                return e;
            }
        }
    });
    rx.recv().expect("the client started");
    rx.recv().expect("the first transfer finished");
    thread::sleep(Duration::from_millis(30));
    let started = Instant::now();
    server.stop().expect("the transport stops");
    let error = worker.join().expect("the client thread returns");
    assert!(
        matches!(error, ClientError::Closed | ClientError::Io(_)),
        "a closed connection, not a timeout or a wrong answer: {error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "the client noticed within {:?}", started.elapsed());
    eprintln!("client error after the process went away: {error}");
}

#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn a_malformed_frame_gets_an_error_and_only_its_connection_closes() {
    let ip = require_rdma!();
    let (_process, server) = serve(ip, RdmaOptions::default());
    let addr = server.local_addr();
    let mut good = client(addr);
    assert_eq!(good.invoke("echo", b"before").expect("echo"), b"before");
    let mut bad = client(addr);
    bad.send_raw(b"XX this is not a praas frame at all.....", false).expect("send garbage");
    let done = bad.recv().expect("an error response");
    match done.result {
        Err(ClientError::Remote { status: Status::Malformed, message }) => {
            assert!(message.contains("magic"), "{message}")
        }
        other => panic!("expected a Malformed error, got {other:?}"),
    }
    let after = bad.invoke("echo", b"again");
    assert!(after.is_err(), "the connection that broke the protocol is closed: {after:?}");
    assert_eq!(good.invoke("echo", b"after").expect("the other connection still works"), b"after");
    assert_serving(addr);
}

#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn a_client_beyond_its_credits_loses_its_connection() {
    let ip = require_rdma!();
    let options = RdmaOptions::default();
    let credits = options.credits;
    let (_process, server) = serve(ip, options);
    let addr = server.local_addr();
    let mut c = client(addr);
    // Use every credit on slow invocations, so none comes back before the extra message.
    for _ in 0..credits {
        c.submit("sleep", b"500").expect("submit within the credits");
    }
    let mut frame = Vec::new();
    encode_frame(&mut frame, Header::invoke(777, 0, 0, 0), b"echo", b"one too many").expect("encodes");
    c.send_raw(&frame, true).expect("send beyond the credits");
    let mut saw_error = false;
    for _ in 0..=credits {
        match c.recv() {
            Ok(done) => match done.result {
                Err(ClientError::Remote { status: Status::Malformed, message }) => {
                    assert!(message.contains("credits"), "{message}");
                    saw_error = true;
                    break;
                }
                Ok(out) => assert_eq!(out, b"slept"),
                Err(e) => panic!("unexpected error response: {e}"),
            },
            Err(_) => break,
        }
    }
    assert!(saw_error, "the process answered the overrun with an error");
    assert!(c.invoke("echo", b"x").is_err(), "the connection is closed");
    assert_serving(addr);
}

#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn an_idle_process_sleeps_on_the_completion_channel() {
    let ip = require_rdma!();
    let options = RdmaOptions {
        poll: praas_dataplane::transport::rdma::PollPolicy::Adaptive { spin: Duration::from_micros(200) },
        ..RdmaOptions::default()
    };
    let (_process, server) = serve(ip, options);
    let mut c = client(server.local_addr());
    c.set_timeout(Duration::from_secs(15));
    assert_eq!(c.invoke("echo", b"wake").expect("echo"), b"wake");
    // Idle now: the I/O thread must block. Measure this process's CPU time over an idle second
    // (the client is idle too; other tests may run, so compare against a generous bound).
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", server_tid(&server))).ok()?;
        let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    thread::sleep(Duration::from_millis(50));
    if let Some(before) = cpu() {
        thread::sleep(Duration::from_secs(1));
        let after = cpu().expect("the thread still exists");
        // Clock ticks (100 per second): a spinning thread would use about 100.
        assert!(after - before < 20, "the idle I/O thread used {} ticks in a second", after - before);
    }
    assert_eq!(c.invoke("echo", b"awake").expect("echo after idling"), b"awake");
    eprintln!("idle test: dropping the client");
    drop(c);
    eprintln!("idle test: stopping the server");
    server.stop().expect("the transport stops");
    eprintln!("idle test: stopped");
}

/// The thread id of the transport's I/O thread, found by its name.
fn server_tid(server: &ServerHandle) -> u32 {
    let name = format!("rdma-io-{}", server.local_addr().port());
    let comm: String = name.chars().take(15).collect();
    for entry in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let entry = entry.expect("a task");
        let path = entry.path().join("comm");
        if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == comm) {
            return entry.file_name().to_string_lossy().parse().expect("a tid");
        }
    }
    panic!("no thread named {comm}")
}

/// Prints the median round trip of small invocations (no assertion: the benchmark
/// `praas-bench invoke --transport rdma` compares it with perftest in the same VM run).
#[test]
#[ignore = "needs an RDMA device: scripts/test-rdma.sh runs it on SoftRoCE with --include-ignored"]
fn small_invocation_round_trip_report() {
    let ip = require_rdma!();
    let (_process, server) = serve(ip, RdmaOptions::default());
    let mut c = client(server.local_addr());
    for size in [8usize, 1024, 64 << 10] {
        let input = pattern(size, 1);
        for _ in 0..50 {
            c.invoke("echo", &input).expect("warm-up");
        }
        let mut times: Vec<Duration> = (0..300)
            .map(|_| {
                let started = Instant::now();
                c.invoke("echo", &input).expect("echo");
                started.elapsed()
            })
            .collect();
        times.sort();
        eprintln!("rdma echo {size:>6} B: p50 {:?} p99 {:?}", times[times.len() / 2], times[times.len() * 99 / 100]);
    }
    // The same over TCP (mio), for scale.
    let config = ProcessConfig { id: "tcp-compare".into(), ..ProcessConfig::default() };
    let (_tcp_process, tcp_server) = praas_dataplane::testing::serve(&manifest(), config);
    let mut tcp = praas_dataplane::Client::connect(tcp_server.local_addr()).expect("tcp connect");
    let input = pattern(8, 1);
    let mut times: Vec<Duration> = (0..300)
        .map(|_| {
            let started = Instant::now();
            tcp.invoke("echo", &input).expect("echo");
            started.elapsed()
        })
        .collect();
    times.sort();
    eprintln!("tcp  echo      8 B: p50 {:?} p99 {:?}", times[times.len() / 2], times[times.len() * 99 / 100]);
}
