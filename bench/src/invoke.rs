//! `invoke`: round-trip latency of `echo` per size (inline, and with `--mode` also the worker-mode
//! `echo_worker`), throughput at several invocations in flight, and local (function-to-function)
//! invocation, each praas figure beside the raw TCP baseline measured in the same run with the
//! same placement.
//!
//! Per size (and mode) the baseline runs first and praas right after, so drift affects both alike.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use praas_dataplane::{Client, ClientError, ClientOptions};

use crate::child::ChildServer;
use crate::cli::{self, InvokeArgs, InvokeMode};
use crate::functions;
use crate::output::Reporter;
use crate::placement::{self, Placement};
use crate::raw_tcp::{self, RawClient};
use crate::report::{self, Record, RunInfo, Summary};

const BASELINE: &str = "raw-tcp";
const ECHO: &str = "echo";

/// Runs the whole `invoke` benchmark, once per transport asked for; with several, io_uring's
/// throughput is also reported against the mio transport's of the same run.
pub fn run(args: &InvokeArgs) -> Result<(), String> {
    if args.transports.contains(&cli::TransportKind::Rdma) {
        if args.transports.len() > 1 {
            return Err("--transport rdma runs alone (its baselines are perftest's, not raw TCP)".into());
        }
        if args.modes.is_some() {
            return Err("--mode applies to tcp and uring (the RDMA benchmark measures the inline echo)".into());
        }
        #[cfg(feature = "rdma")]
        return crate::rdma::run(args);
        #[cfg(not(feature = "rdma"))]
        return Err("this praas-bench was built without the rdma feature".into());
    }
    if args.modes.as_ref().is_some_and(|modes| modes.is_empty()) {
        return Err("--mode needs at least one of inline, worker".into());
    }
    let online = placement::online_cpus();
    let placement = Placement::new(args.split);
    placement.check(online)?;
    // Pin before anything starts a thread or a child: both inherit the mask (children re-pin).
    placement::pin_current_thread(placement.client)?;
    let mut throughputs = Vec::new();
    for &transport in &args.transports {
        throughputs.push((transport, run_transport(args, transport, &placement)?));
    }
    let find = |kind: cli::TransportKind| throughputs.iter().find(|(k, _)| *k == kind).map(|(_, t)| t);
    if let (Some(uring), Some(mio)) = (find(cli::TransportKind::Uring), find(cli::TransportKind::Tcp)) {
        let info = RunInfo { transport: "uring", placement: describe(&placement, args), host: placement::host() };
        let mut reporter = Reporter::new("invoke-uring-vs-tcp", &args.output);
        for (&(in_flight, ops, warmup, ours), &(_, _, _, base)) in uring.iter().zip(mio) {
            let record = Record::throughput(&info, 8, in_flight, ops, warmup, ours, "tcp", base);
            reporter.push(record).map_err(|e| format!("cannot write the report: {e}"))?;
        }
        reporter.finish(&info).map_err(|e| format!("cannot write the report: {e}"))?;
    }
    Ok(())
}

/// The placement as reports name it, with the clients' polling and the praas server's
/// (`PRAAS_URING_SPIN_US`, which the server inherits) when they poll.
fn describe(placement: &Placement, args: &InvokeArgs) -> String {
    let mut described = placement.describe();
    if args.client_spin_us > 0 {
        described.push_str(&format!(",client-spin={}us", args.client_spin_us));
    }
    // The server reads the same variable through the same default.
    let server_spin = praas_dataplane::transport::uring::UringOptions::default().spin;
    if !server_spin.is_zero() {
        described.push_str(&format!(",uring-server-spin={}us", server_spin.as_micros()));
    }
    described
}

/// Throughput runs of one transport: (in flight, operations, warm-up, operations per second).
type Throughputs = Vec<(u64, u64, u64, f64)>;

/// The benchmark on one transport, its raw TCP baseline beside it.
fn run_transport(
    args: &InvokeArgs,
    transport: cli::TransportKind,
    placement: &Placement,
) -> Result<Throughputs, String> {
    let info = RunInfo { transport: transport.name(), placement: describe(placement, args), host: placement::host() };
    let mut throughputs = Throughputs::new();

    let timeout = Duration::from_secs(args.timeout_secs);
    let library = functions::library()?;
    let manifest = functions::write_manifest(&library)?;
    let server_cpu = OsString::from(placement.server.to_string());
    let raw_server = ChildServer::spawn(
        "raw TCP echo server",
        &["serve-raw".into(), "--cpu".into(), server_cpu.clone()],
        args.wrap_raw.as_deref(),
        timeout,
    )?;
    let praas_server = ChildServer::spawn(
        "praas server",
        &[
            "serve-praas".into(),
            "--manifest".into(),
            manifest.path().into(),
            "--cpu".into(),
            server_cpu,
            "--transport".into(),
            transport.name().into(),
        ],
        args.wrap_praas.as_deref(),
        timeout,
    )?;
    eprintln!(
        "praas-bench: praas server ({}, pid {}) at {}, raw TCP echo server (pid {}) at {}, {}, {}",
        info.transport,
        praas_server.pid(),
        praas_server.addr(),
        raw_server.pid(),
        raw_server.addr(),
        info.placement,
        info.host
    );
    let spin = Duration::from_micros(args.client_spin_us);
    let mut raw = RawClient::connect(raw_server.addr(), timeout, spin)
        .map_err(|e| format!("cannot connect to the raw TCP server at {}: {e}", raw_server.addr()))?;
    let options = ClientOptions { timeout, transport: transport.dataplane(), spin, ..ClientOptions::default() };
    let mut praas = Client::connect_with(praas_server.addr(), options)
        .map_err(|e| format!("cannot connect to the praas server at {}: {e}", praas_server.addr()))?;

    let mut reporter = Reporter::new(format!("invoke-{}", info.transport), &args.output);
    let report_error = |e: std::io::Error| format!("cannot write the report: {e}");

    // Without --mode: the inline echo, and lines without `mode` (as before the option existed).
    let modes = args.modes.as_deref().unwrap_or(&[InvokeMode::Inline]);
    for &size in &args.sizes {
        let iters = args.iters.unwrap_or_else(|| cli::default_iters(size));
        let warmup = args.warmup.unwrap_or_else(|| cli::default_warmup(size));
        let payload = raw_tcp::payload(size);
        for &mode in modes {
            let function = mode.function();
            eprintln!("praas-bench: invoke {function} {size} B: {warmup} warm-up + {iters} measured round trips each");
            let base = raw.latency(&payload, warmup, iters)?;
            let ours = praas_latency(&mut praas, function, &payload, warmup, iters)?;
            let summaries = (Summary::of(&ours), Summary::of(&base));
            let mut record = Record::latency("invoke", &info, size, warmup, &summaries.0, BASELINE, &summaries.1);
            record.mode = args.modes.is_some().then_some(mode.name());
            reporter.push_measured(record, &ours, Some(&base)).map_err(report_error)?;
        }
    }

    let ops = args.iters.unwrap_or(cli::THROUGHPUT_OPS);
    let warmup = args.warmup.unwrap_or(cli::THROUGHPUT_WARMUP);
    let payload = raw_tcp::payload(8);
    for &in_flight in &args.in_flight {
        eprintln!("praas-bench: throughput, {in_flight} in flight: {warmup} warm-up + {ops} measured completions");
        let base = raw.throughput(&payload, in_flight, warmup, ops)?;
        let ours = praas_throughput(&mut praas, &payload, in_flight, warmup, ops)?;
        throughputs.push((in_flight, ops, warmup, ours));
        reporter
            .push(Record::throughput(&info, payload.len(), in_flight, ops, warmup, ours, BASELINE, base))
            .map_err(report_error)?;
    }

    let iters = args.iters.unwrap_or(cli::LOCAL_ITERS);
    let warmup = args.warmup.unwrap_or(cli::LOCAL_WARMUP);
    for &size in &args.local_sizes {
        eprintln!("praas-bench: local-invoke {size} B: {warmup} warm-up + {iters} measured local invocations");
        local_loop(&mut praas, warmup, size)?;
        let hist = local_loop(&mut praas, iters, size)?;
        let record = Record::unbaselined("local-invoke", &info, size, warmup, &Summary::of(&hist));
        reporter.push_measured(record, &hist, None).map_err(report_error)?;
    }

    drop(praas);
    drop(raw);
    drop(praas_server);
    drop(raw_server);
    reporter.finish(&info).map_err(|e| format!("cannot write the report: {e}"))?;
    Ok(throughputs)
}

fn invoke_error(what: &str, e: ClientError) -> String {
    format!("praas {what} failed: {e}")
}

/// Blocking round trips of `function` (an echo: `echo` or `echo_worker`): `warmup` dropped, then
/// `iters` measured; the echo is compared with the input before and after the measured loop.
pub(crate) fn praas_latency(
    client: &mut Client,
    function: &str,
    payload: &[u8],
    warmup: u64,
    iters: u64,
) -> Result<Histogram<u64>, String> {
    let fail = |e| invoke_error(&format!("invocation of {function} with {} bytes", payload.len()), e);
    raw_tcp::verify("praas", payload, &client.invoke(function, payload).map_err(fail)?)?;
    for _ in 0..warmup {
        client.invoke(function, payload).map_err(fail)?;
    }
    let mut hist = report::histogram();
    let mut last = Vec::new();
    for _ in 0..iters {
        let start = Instant::now();
        let output = client.invoke(function, payload).map_err(fail)?;
        let elapsed = start.elapsed();
        if output.len() != payload.len() {
            return Err(format!("praas echoed {} bytes for {}", output.len(), payload.len()));
        }
        report::record(&mut hist, elapsed);
        last = output;
    }
    if iters > 0 {
        raw_tcp::verify("praas", payload, &last)?;
    }
    Ok(hist)
}

/// Pipelined `echo` on one connection: `in_flight` submitted, then each completion received is
/// replaced by a new submission; returns completions per second over `ops` after `warmup`.
fn praas_throughput(client: &mut Client, payload: &[u8], in_flight: u64, warmup: u64, ops: u64) -> Result<f64, String> {
    let fail = |e| invoke_error(&format!("pipelined {ECHO}"), e);
    raw_tcp::verify("praas", payload, &client.invoke(ECHO, payload).map_err(fail)?)?;
    for _ in 0..in_flight {
        client.submit(ECHO, payload).map_err(fail)?;
    }
    let next = |client: &mut Client| -> Result<Vec<u8>, String> {
        let output = client.recv().map_err(fail)?.result.map_err(fail)?;
        if output.len() != payload.len() {
            return Err(format!("praas echoed {} bytes for {}", output.len(), payload.len()));
        }
        client.submit(ECHO, payload).map_err(fail)?;
        Ok(output)
    };
    for _ in 0..warmup {
        next(client)?;
    }
    let start = Instant::now();
    for _ in 0..ops {
        next(client)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut last = Vec::new();
    for _ in 0..in_flight {
        last = client.recv().map_err(fail)?.result.map_err(fail)?;
    }
    raw_tcp::verify("praas", payload, &last)?;
    Ok(ops as f64 / secs)
}

/// Invokes `local_loop` for `iters` local `echo` calls of `size` bytes; returns their durations.
fn local_loop(client: &mut Client, iters: u64, size: usize) -> Result<Histogram<u64>, String> {
    let input = format!("{iters} {size}");
    let output = client.invoke("local_loop", input.as_bytes()).map_err(|e| invoke_error("local_loop", e))?;
    durations(&output, iters)
}

/// The histogram of `local_loop`'s output: `iters` little-endian u64 nanosecond counts.
fn durations(output: &[u8], iters: u64) -> Result<Histogram<u64>, String> {
    if output.len() as u64 != iters * 8 {
        return Err(format!("local_loop returned {} bytes for {iters} durations", output.len()));
    }
    let mut hist = report::histogram();
    for chunk in output.chunks_exact(8) {
        let ns = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        report::record(&mut hist, Duration::from_nanos(ns));
    }
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_loop_output_becomes_a_histogram() {
        let output: Vec<u8> = [100u64, 200, 300].iter().flat_map(|ns| ns.to_le_bytes()).collect();
        let hist = durations(&output, 3).unwrap();
        assert_eq!(hist.len(), 3);
        assert_eq!(hist.value_at_quantile(0.5), 200);
        assert!(durations(&output, 4).unwrap_err().contains("24 bytes"));
    }
}
