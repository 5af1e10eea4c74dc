//! `flood`: what floods of connections cost a legitimate client and the process. For each
//! transport, one `serve-praas` child (its per-source limit raised: every connection comes from
//! 127.0.0.1) and, for each flood:
//!
//! 1. the baseline: 8 B `echo` round trips of a legitimate client on the process as it is, idle;
//! 2. the flood opens (paced by what the process accepted, so the kernel's accept queue never
//!    overflows): `idle` connections send nothing, `half-open` ones half a header or a whole
//!    header announcing a 64 MiB frame, `large` ones a header announcing 64 MiB each;
//! 3. the same round trips again, on a fresh connection, while the flood is held: `ratio_p50` is
//!    flooded / idle;
//! 4. the flood closes; the seconds until the process's resident memory is back within 16 MiB of
//!    where it started.
//!
//! The server's `VmRSS` before, during and after goes into each line (`rss_*_kib`), and into a
//! second table in human mode.

use std::ffi::OsString;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use praas_dataplane::protocol::{Header, HEADER_LEN};
use praas_dataplane::{Client, ClientOptions};

use crate::child::ChildServer;
use crate::cli::{FloodArgs, TransportKind};
use crate::functions;
use crate::invoke::praas_latency;
use crate::output::Reporter;
use crate::placement::{self, Placement};
use crate::report::{Record, RunInfo, Summary};

const ECHO: &str = "echo";
const BASELINE: &str = "idle-process";
/// How close to its start the resident memory must come back.
const BACK_WITHIN_KIB: u64 = 16 << 10;
/// Connections opened ahead of what the process accepted, at most.
const AHEAD: usize = 1024;

/// What each connection of a flood sends, and then nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flood {
    Idle,
    HalfOpen,
    Large,
}

impl Flood {
    fn bench(self) -> &'static str {
        match self {
            Self::Idle => "flood-idle",
            Self::HalfOpen => "flood-half-open",
            Self::Large => "flood-large",
        }
    }

    /// The bytes connection `index` of the flood sends.
    fn bytes(self, index: usize) -> Vec<u8> {
        let header = Header::invoke(7, 4, 0, (64 << 20) - 4).encode();
        match self {
            Self::Idle => Vec::new(),
            Self::HalfOpen if index.is_multiple_of(2) => header[..10].to_vec(),
            Self::HalfOpen | Self::Large => header[..HEADER_LEN].to_vec(),
        }
    }
}

/// Runs the benchmark on every transport asked for.
pub fn run(args: &FloodArgs) -> Result<(), String> {
    if let Err(e) = praas_dataplane::connection::raise_descriptor_limit(None) {
        eprintln!("praas-bench: cannot raise the descriptor limit: {e}");
    }
    let placement = Placement::new(args.split);
    placement.check(placement::online_cpus())?;
    placement::pin_current_thread(placement.client)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let library = functions::library()?;
    let manifest = functions::write_manifest(&library)?;
    let mut memory = Vec::new();
    for &transport in &args.transport {
        if transport == TransportKind::Rdma {
            return Err("flood measures the TCP transports (tcp, uring)".into());
        }
        let info = RunInfo {
            transport: transport.name(),
            placement: format!("server={},client={}", placement.server, placement.client),
            host: placement::host(),
        };
        let mut reporter = Reporter::new(format!("flood-{}", transport.name()), &args.output);
        let argv: Vec<OsString> = vec![
            "serve-praas".into(),
            "--manifest".into(),
            manifest.path().into(),
            "--cpu".into(),
            placement.server.to_string().into(),
            "--transport".into(),
            transport.name().into(),
            "--max-connections-per-source".into(),
            "20000".into(),
            "--max-connections".into(),
            "20000".into(),
        ];
        let server = ChildServer::spawn("praas server", &argv, None, timeout)?;
        // Its descriptors before any client: what it comes back to when a flood has gone.
        let base_fds = open_fds(server.pid());
        let options = ClientOptions { timeout, transport: transport.dataplane(), ..ClientOptions::default() };
        let floods = [
            (Flood::Idle, args.connections),
            (Flood::HalfOpen, args.connections),
            (Flood::Large, args.large_connections),
        ];
        for (flood, count) in floods {
            let (record, flooded, idle) =
                measure(&server, base_fds, &options, &info, args, flood, count as usize, timeout)?;
            memory.push(record.clone());
            reporter
                .push_measured(record, &flooded, Some(&idle))
                .map_err(|e| format!("cannot write the report: {e}"))?;
        }
        drop(server);
        reporter.finish(&info).map_err(|e| format!("cannot write the report: {e}"))?;
    }
    if !args.output.json {
        print!("{}", memory_table(&memory));
    }
    Ok(())
}

/// One flood against `server`: the idle round trips, the flood, the flooded round trips, the
/// close and the wait for memory.
#[allow(clippy::too_many_arguments)]
fn measure(
    server: &ChildServer,
    base_fds: usize,
    options: &ClientOptions,
    info: &RunInfo,
    args: &FloodArgs,
    flood: Flood,
    count: usize,
    timeout: Duration,
) -> Result<(Record, Histogram<u64>, Histogram<u64>), String> {
    let pid = server.pid();
    let payload = vec![0x5a; args.size];
    let connect = || {
        Client::connect_with(server.addr(), options.clone())
            .map_err(|e| format!("cannot connect to the praas server at {}: {e}", server.addr()))
    };
    let idle = praas_latency(&mut connect()?, ECHO, &payload, args.warmup, args.iters)?;
    // The measuring client's connection closed again.
    let fds = wait_for_fds(pid, |n| n <= base_fds, timeout);
    let before = rss_kib(pid)?;
    let conns = open_flood(server.addr(), pid, flood, count, timeout)?;
    wait_for_fds(pid, |n| n >= fds + count, timeout);
    let flooded = praas_latency(&mut connect()?, ECHO, &payload, args.warmup, args.iters)?;
    let during = rss_kib(pid)?;
    drop(conns);
    let closed = Instant::now();
    let deadline = closed + timeout;
    let (after, reclaim) = loop {
        let now = rss_kib(pid)?;
        if open_fds(pid) <= fds && now <= before + BACK_WITHIN_KIB {
            break (now, Some(closed.elapsed().as_secs_f64()));
        }
        if Instant::now() >= deadline {
            break (now, None);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut record = Record::latency(
        flood.bench(),
        info,
        args.size,
        args.warmup,
        &Summary::of(&flooded),
        BASELINE,
        &Summary::of(&idle),
    );
    record.connections = Some(count as u64);
    record.rss_before_kib = Some(before);
    record.rss_during_kib = Some(during);
    record.rss_after_kib = Some(after);
    record.reclaim_secs = reclaim.map(|s| (s * 1000.0).round() / 1000.0);
    Ok((record, flooded, idle))
}

/// Opens the flood's connections, never more than [`AHEAD`] ahead of what the process accepted.
fn open_flood(
    addr: SocketAddr,
    pid: u32,
    flood: Flood,
    count: usize,
    timeout: Duration,
) -> Result<Vec<TcpStream>, String> {
    let start = open_fds(pid);
    let mut conns = Vec::with_capacity(count);
    for index in 0..count {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("flood connection {index} cannot connect: {e}"))?;
        let bytes = flood.bytes(index);
        if !bytes.is_empty() {
            stream.write_all(&bytes).map_err(|e| format!("flood connection {index} cannot send: {e}"))?;
        }
        conns.push(stream);
        if index % 512 == 511 {
            let behind = conns.len().saturating_sub(AHEAD);
            wait_for_fds(pid, |n| n >= start + behind, timeout);
        }
    }
    Ok(conns)
}

/// Waits (at most `timeout`) until the process's descriptor count satisfies `done`; returns the
/// count then.
fn wait_for_fds(pid: u32, done: impl Fn(usize) -> bool, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = open_fds(pid);
        if done(n) || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read the server's status: {e}"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| "no VmRSS in the server's status".to_string())
}

/// The memory figures of the records, one row each.
fn memory_table(records: &[Record]) -> String {
    let mib = |kib: Option<u64>| kib.map_or_else(|| "-".to_string(), |k| format!("{:.1}MiB", k as f64 / 1024.0));
    let mut out =
        String::from("\nbench            transport  connections  rss_before  rss_during  rss_after  back_in\n");
    for r in records {
        out.push_str(&format!(
            "{:<16} {:<9} {:>12} {:>11} {:>11} {:>10} {:>8}\n",
            r.bench,
            r.transport.unwrap_or("-"),
            r.connections.unwrap_or(0),
            mib(r.rss_before_kib),
            mib(r.rss_during_kib),
            mib(r.rss_after_kib),
            r.reclaim_secs.map_or_else(|| "never".to_string(), |s| format!("{s:.2}s")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floods_send_what_they_say() {
        assert!(Flood::Idle.bytes(0).is_empty());
        assert_eq!(Flood::HalfOpen.bytes(0).len(), 10);
        assert_eq!(Flood::HalfOpen.bytes(1).len(), HEADER_LEN);
        let head = Flood::Large.bytes(3);
        let header = Header::decode(head.first_chunk().unwrap(), Default::default()).unwrap();
        assert_eq!(header.body_len(), 64 << 20);
    }
}
