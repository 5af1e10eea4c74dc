//! `remote-invoke`: a function on process A invoking `echo` on process B (the PraaS paper's
//! remote invocation), against the raw TCP ping-pong between two OS processes measured just
//! before it; and fan-outs: A invoking `echo` on 1, 4 and 16 processes at once per round, against
//! one remote invocation of the same size measured just before each, and against the raw TCP
//! fan-out to as many echo server processes (the bench sends to each, then reads every echo).
//!
//! A's `remote_bench` (examples/functions) loops the calls and times each one (or each round)
//! itself, around the call: the client that starts it is not in the figure, as it is not in the
//! raw ping-pong. B's `echo` is inline (it runs on the I/O thread that reads the call).

use std::ffi::OsString;
use std::time::Duration;

use crate::application::{self, Application, Cpu};
use crate::child::ChildServer;
use crate::cli::{RemoteInvokeArgs, TransportKind};
use crate::output::Reporter;
use crate::placement::{self, Placement};
use crate::raw_tcp::{self, RawClient};
use crate::report::{Record, RunInfo, Summary};

/// The calling process.
const CALLER: &str = "a";

fn callee(index: u64) -> String {
    format!("b{index}")
}

/// `total` calls (rounds) of `size` bytes from A's `remote_bench` to `echo` on `callees`, the
/// first `warmup` dropped.
fn remote_rounds(
    app: &mut Application,
    callees: &[String],
    size: usize,
    warmup: u64,
    total: u64,
) -> Result<hdrhistogram::Histogram<u64>, String> {
    let input = format!("{} echo {total} {size}", callees.join(","));
    let times = app.invoke(CALLER, "remote_bench", input.as_bytes())?;
    application::times(&times, warmup, total, "remote_bench")
}

/// Runs the whole `remote-invoke` benchmark.
pub fn run(args: &RemoteInvokeArgs) -> Result<(), String> {
    if args.transport == TransportKind::Rdma {
        return Err(
            "remote-invoke measures tcp or uring; over rdma the calls take the same path, not measured here".into()
        );
    }
    let placement = Placement::new(args.split);
    placement.check(placement::online_cpus())?;
    let info = RunInfo { transport: args.transport.name(), placement: placement.describe(), host: placement::host() };
    placement::pin_current_thread(placement.client)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let callees = args.fan_out.iter().copied().max().unwrap_or(1);
    let mut processes = vec![(CALLER.to_string(), Cpu::Pinned(placement.client))];
    processes.extend((1..=callees).map(|i| (callee(i), Cpu::Pinned(placement.server))));
    eprintln!("praas-bench: remote-invoke: process {CALLER} and {callees} callee(s), {}", info.placement);
    let mut app = Application::start(&processes, args.transport, timeout)?;
    let cpu = OsString::from(placement.server.to_string());
    let raw = ChildServer::spawn("raw TCP echo server", &["serve-raw".into(), "--cpu".into(), cpu], None, timeout)?;
    let mut raw_client =
        RawClient::connect(raw.addr(), timeout, Duration::ZERO).map_err(|e| format!("raw server: {e}"))?;
    // One more raw echo server process per callee beyond the first: the raw fan-out's far ends.
    let mut raw_servers = vec![raw];
    for i in 2..=callees {
        let cpu = OsString::from(placement.server.to_string());
        let name = format!("raw TCP echo server {i}");
        raw_servers.push(ChildServer::spawn(&name, &["serve-raw".into(), "--cpu".into(), cpu], None, timeout)?);
    }
    let mut reporter = Reporter::new(format!("remote-invoke-{}", args.transport.name()), &args.output);
    let one = [callee(1)];
    for &size in &args.sizes {
        let (warmup, iters) = args.counts(size);
        eprintln!("praas-bench: remote-invoke {size} B: {warmup} warm-up + {iters} measured calls");
        let baseline = raw_client.latency(&raw_tcp::payload(size), warmup, iters)?;
        let hist = remote_rounds(&mut app, &one, size, warmup, warmup + iters)?;
        let record = Record::latency(
            "remote-invoke",
            &info,
            size,
            warmup,
            &Summary::of(&hist),
            "raw-tcp",
            &Summary::of(&baseline),
        );
        reporter.push_measured(record, &hist, Some(&baseline)).map_err(|e| format!("cannot print: {e}"))?;
    }
    let size = args.fan_out_size;
    let (warmup, iters) = args.counts(size);
    for &n in &args.fan_out {
        eprintln!("praas-bench: remote fan-out to {n}, {size} B: {warmup} warm-up + {iters} measured rounds");
        let single = remote_rounds(&mut app, &one, size, warmup, warmup + iters)?;
        let targets: Vec<String> = (1..=n).map(callee).collect();
        let hist = remote_rounds(&mut app, &targets, size, warmup, warmup + iters)?;
        let mut record = Record::latency(
            "remote-fan-out",
            &info,
            size,
            warmup,
            &Summary::of(&hist),
            "remote-invoke",
            &Summary::of(&single),
        );
        record.fan_out = Some(n as usize);
        reporter.push_measured(record, &hist, Some(&single)).map_err(|e| format!("cannot print: {e}"))?;
        let mut clients = raw_servers[..n as usize]
            .iter()
            .map(|s| RawClient::connect(s.addr(), timeout, Duration::ZERO).map_err(|e| format!("raw server: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let raw = raw_tcp::fan_out_latency(&mut clients, &raw_tcp::payload(size), warmup, iters)?;
        let mut record = Record::latency(
            "remote-fan-out",
            &info,
            size,
            warmup,
            &Summary::of(&hist),
            "raw-tcp-fan-out",
            &Summary::of(&raw),
        );
        record.fan_out = Some(n as usize);
        reporter.push_measured(record, &hist, Some(&raw)).map_err(|e| format!("cannot print: {e}"))?;
    }
    drop((app, raw_servers));
    reporter.finish(&info).map_err(|e| format!("cannot print: {e}"))
}
