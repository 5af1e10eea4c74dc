//! `message`: round trips of a message between two cloud processes (A puts to B, B gets it and
//! puts it back, A gets the answer; every put returns once its destination stored the message),
//! against the raw TCP ping-pong between two OS processes, in the same run with the same placement.
//!
//! A and B are separate OS processes of one application, started on ports chosen up front so each
//! can be told the other's address; they authenticate each other as the data plane always does.
//! With `--redis`, the same ping-pong also goes through a real `redis-server` (LPUSH/BLPOP,
//! [`crate::redis`]) after each size's praas round trips, reported as a line against `redis`.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use hdrhistogram::Histogram;
use praas_dataplane::{Client, ClientOptions};

use crate::child::ChildServer;
use crate::cli::MessageArgs;
use crate::functions;
use crate::output::Reporter;
use crate::placement::{self, Placement};
use crate::raw_tcp::{self, RawClient};
use crate::redis::RedisServer;
use crate::report::{self, Record, RunInfo, Summary};

fn free_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    listener.local_addr().map_err(|e| e.to_string())
}

/// The SDK calls the message benchmark drives its two processes with (TCP and RDMA clients).
pub trait Driver {
    /// Sends an invocation; returns its id.
    fn submit(&mut self, function: &str, input: &[u8]) -> Result<u64, praas_dataplane::ClientError>;
    /// Waits for the output of `id`.
    fn wait(&mut self, id: u64) -> Result<Vec<u8>, praas_dataplane::ClientError>;
}

impl Driver for Client {
    fn submit(&mut self, function: &str, input: &[u8]) -> Result<u64, praas_dataplane::ClientError> {
        Client::submit(self, function, input)
    }
    fn wait(&mut self, id: u64) -> Result<Vec<u8>, praas_dataplane::ClientError> {
        Client::wait(self, id)
    }
}

#[cfg(feature = "rdma")]
impl Driver for praas_dataplane::RdmaClient {
    fn submit(&mut self, function: &str, input: &[u8]) -> Result<u64, praas_dataplane::ClientError> {
        praas_dataplane::RdmaClient::submit(self, function, input)
    }
    fn wait(&mut self, id: u64) -> Result<Vec<u8>, praas_dataplane::ClientError> {
        praas_dataplane::RdmaClient::wait(self, id)
    }
}

/// `total` message round trips of `size` bytes between process a and process b (b bounces with
/// `msg_bounce`, a times each with `msg_roundtrip`), the first `warmup` dropped, after checking
/// that all of them ran.
pub fn round_trips<D: Driver>(
    a: &mut D,
    b: &mut D,
    size: usize,
    warmup: u64,
    total: u64,
) -> Result<Histogram<u64>, String> {
    let bounce = b.submit("msg_bounce", format!("a {total}").as_bytes()).map_err(|e| format!("b: {e}"))?;
    let roundtrip = a.submit("msg_roundtrip", format!("b {total} {size}").as_bytes()).map_err(|e| format!("a: {e}"))?;
    let times = a.wait(roundtrip).map_err(|e| format!("a: msg_roundtrip: {e}"))?;
    let bounced = b.wait(bounce).map_err(|e| format!("b: msg_bounce: {e}"))?;
    if bounced != b"bounced" || times.len() as u64 != total * 8 {
        return Err(format!("the round trips did not complete ({} timings for {total})", times.len() / 8));
    }
    let mut hist = report::histogram();
    for chunk in times.chunks_exact(8).skip(warmup as usize) {
        hist.saturating_record(u64::from_le_bytes(chunk.try_into().expect("8 bytes")).max(1));
    }
    Ok(hist)
}

/// Warm-up and measured round trips of one size.
pub fn counts(size: usize, args: &MessageArgs) -> (u64, u64) {
    let iters = args.iters.unwrap_or(match size {
        0..=1024 => 5000,
        1025..=65536 => 1000,
        _ => 200,
    });
    let warmup = args.warmup.unwrap_or((iters / 10).max(20));
    (warmup, iters)
}

/// Runs the whole `message` benchmark.
pub fn run(args: &MessageArgs) -> Result<(), String> {
    // Over RDMA the caller runs `rdma::message` instead.
    // Over RDMA the caller runs `rdma::message` instead; tcp and uring are the processes' transport
    // (their puts go over blocking TCP either way).
    if args.transport == crate::cli::TransportKind::Rdma {
        return Err("message over rdma runs in rdma::message".into());
    }
    let placement = Placement::new(args.split);
    placement.check(placement::online_cpus())?;
    let info = RunInfo { transport: args.transport.name(), placement: placement.describe(), host: placement::host() };
    placement::pin_current_thread(placement.client)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let library = functions::library()?;
    let manifest = functions::write_manifest(&library)?;
    let cpu = OsString::from(placement.server.to_string());
    let secret = praas_dataplane::auth::new_secret();
    let (addr_a, addr_b) = (free_port()?, free_port()?);
    let peer = |id: &str, addr: SocketAddr| -> OsString { format!("{id}={addr}").into() };
    let process = |id: &str, listen: SocketAddr, other: OsString| -> Vec<OsString> {
        vec![
            "serve-praas".into(),
            "--manifest".into(),
            manifest.path().into(),
            "--cpu".into(),
            cpu.clone(),
            "--id".into(),
            id.into(),
            "--listen".into(),
            listen.to_string().into(),
            "--peer".into(),
            other,
            "--transport".into(),
            args.transport.name().into(),
        ]
    };
    // The secret goes through the environment: a command line is visible to every user (`ps`).
    let env = [(crate::serve::SECRET_VAR, secret.as_str())];
    let a = ChildServer::spawn_with_env("process a", &process("a", addr_a, peer("b", addr_b)), &env, None, timeout)?;
    let b = ChildServer::spawn_with_env("process b", &process("b", addr_b, peer("a", addr_a)), &env, None, timeout)?;
    let raw =
        ChildServer::spawn("raw TCP echo server", &["serve-raw".into(), "--cpu".into(), cpu.clone()], None, timeout)?;
    let options = ClientOptions {
        timeout,
        transport: praas_dataplane::transport::TransportKind::Mio,
        ..ClientOptions::default()
    };
    let mut client_a = Client::connect_with(a.addr(), options.clone()).map_err(|e| format!("process a: {e}"))?;
    let mut client_b = Client::connect_with(b.addr(), options).map_err(|e| format!("process b: {e}"))?;
    let mut raw_client =
        RawClient::connect(raw.addr(), timeout, Duration::ZERO).map_err(|e| format!("raw server: {e}"))?;
    // Started before anything is measured, so that a missing redis-server fails the run at once.
    let redis = if args.redis {
        Some(RedisServer::start(Some(placement.server), timeout).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let mut reporter = Reporter::new(format!("message-{}", args.transport.name()), &args.output);
    for size in args.sizes() {
        let (warmup, iters) = counts(size, args);
        eprintln!("praas-bench: message {size} B: {warmup} warm-up + {iters} measured round trips");
        let payload = raw_tcp::payload(size);
        let baseline = raw_client.latency(&payload, warmup, iters)?;
        let total = warmup + iters;
        let hist = round_trips(&mut client_a, &mut client_b, size, warmup, total)?;
        let (ours, base) = (Summary::of(&hist), Summary::of(&baseline));
        reporter
            .push_measured(
                Record::latency("message", &info, size, warmup, &ours, "raw-tcp", &base),
                &hist,
                Some(&baseline),
            )
            .map_err(|e| format!("cannot print: {e}"))?;
        if let Some(redis) = &redis {
            let theirs = crate::redis::round_trips(redis, placement.server, size, warmup, total, timeout)
                .map_err(|e| format!("redis {size} B: {e}"))?;
            reporter
                .push_measured(
                    Record::latency("message", &info, size, warmup, &ours, "redis", &Summary::of(&theirs)),
                    &hist,
                    Some(&theirs),
                )
                .map_err(|e| format!("cannot print: {e}"))?;
        }
    }
    drop((a, b, raw, redis));
    reporter.finish(&info).map_err(|e| format!("cannot print: {e}"))
}
