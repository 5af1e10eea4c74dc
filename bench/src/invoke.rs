//! `invoke`: round-trip latency of `echo` per size (inline, and with `--mode` also the worker-mode
//! `echo_worker`), throughput at several invocations in flight, and local (function-to-function)
//! invocation, each praas figure beside the raw TCP baseline measured in the same run with the
//! same placement; with `--python` also the C and the Python no-op per size and mode, and the
//! Python one against the C one.
//!
//! Per size (and mode) the baseline runs first and praas right after, so drift affects both alike.
//! The two no-ops run in passes that alternate which goes first, each pass of each beside a pass
//! of its own baseline, for the same reason.

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
/// The `python-vs-c` line's baseline: the C no-op of the same run and mode.
const C_NOOP: &str = "c-noop";
/// Passes of the no-op comparison (`--python`): the iterations and warm-up of a size are split
/// over them, and the order of the C and the Python no-op alternates from pass to pass.
const NOOP_PASSES: u64 = 4;

/// Runs the whole `invoke` benchmark, once per transport asked for; with several, io_uring's
/// throughput is also reported against the mio transport's of the same run.
pub fn run(args: &InvokeArgs) -> Result<(), String> {
    if args.transports.contains(&cli::TransportKind::Rdma) {
        if args.transports.len() > 1 {
            return Err("--transport rdma runs alone (its baselines are perftest's, not raw TCP)".into());
        }
        if args.modes.is_some() || args.python {
            return Err(
                "--mode and --python apply to tcp and uring (the RDMA benchmark measures the inline echo)".into()
            );
        }
        #[cfg(feature = "rdma")]
        return crate::rdma::run(args);
        #[cfg(not(feature = "rdma"))]
        return Err("this praas-bench was built without the rdma feature".into());
    }
    if args.modes.as_ref().is_some_and(|modes| modes.is_empty()) {
        return Err("--mode needs at least one of inline, worker".into());
    }
    if args.python {
        let module = functions::require_python()?;
        eprintln!("praas-bench: the Python functions are {}'s", module.display());
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

    // Without --mode: the inline echo, and lines without `mode` (as before the option existed);
    // --python implies both modes.
    let implied: &[InvokeMode] =
        if args.python { &[InvokeMode::Inline, InvokeMode::Worker] } else { &[InvokeMode::Inline] };
    let modes = args.modes.as_deref().unwrap_or(implied);
    let named = args.modes.is_some() || args.python;
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
            record.mode = named.then_some(mode.name());
            reporter.push_measured(record, &ours, Some(&base)).map_err(report_error)?;
            if args.python {
                let mut bench = NoopBench { praas: &mut praas, raw: &mut raw, info: &info, reporter: &mut reporter };
                bench.python_versus_c(mode, &payload, warmup, iters)?;
            }
        }
    }

    let ops = args.iters.unwrap_or(cli::THROUGHPUT_OPS);
    let warmup = args.warmup.unwrap_or(cli::THROUGHPUT_WARMUP);
    let payload = raw_tcp::payload(8);
    for &in_flight in &args.in_flight {
        eprintln!("praas-bench: throughput, {in_flight} in flight: {warmup} warm-up + {ops} measured completions");
        let base = raw.throughput(&payload, in_flight, warmup, ops)?;
        // Every echo compared in full: 8 bytes, a few nanoseconds of a round trip's microseconds.
        let ours = pipelined(&mut praas, ECHO, &payload, in_flight, warmup, ops, |output| {
            raw_tcp::verify("praas", &payload, output)
        })?;
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

/// The comparison of the Python no-op with the C no-op of one mode (`--python`): where it
/// measures and where it reports.
struct NoopBench<'a> {
    praas: &'a mut Client,
    raw: &'a mut RawClient,
    info: &'a RunInfo,
    reporter: &'a mut Reporter,
}

impl NoopBench<'_> {
    /// Round trips of the C and of the Python no-op of `mode` with `payload`, in
    /// [`NOOP_PASSES`] passes alternating which goes first, each pass beside a pass of its own raw
    /// TCP baseline; reports an `invoke` line of each, then the `python-vs-c` line of the Python
    /// one against the C one.
    fn python_versus_c(&mut self, mode: InvokeMode, payload: &[u8], warmup: u64, iters: u64) -> Result<(), String> {
        let functions = mode.noops();
        let (warm, per_pass) = (warmup.div_ceil(NOOP_PASSES), iters.div_ceil(NOOP_PASSES));
        eprintln!(
            "praas-bench: invoke {} and {} {} B: {NOOP_PASSES} passes of {warm} warm-up + {per_pass} measured round trips each",
            functions[0],
            functions[1],
            payload.len()
        );
        let mut ours = [report::histogram(), report::histogram()];
        let mut base = [report::histogram(), report::histogram()];
        let merge = |into: &mut Histogram<u64>, from: &Histogram<u64>| {
            into.add(from).map_err(|e| format!("cannot merge the histograms: {e}"))
        };
        for pass in 0..NOOP_PASSES {
            let order = if pass % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                merge(&mut base[i], &self.raw.latency(payload, warm, per_pass)?)?;
                merge(&mut ours[i], &round_trips(self.praas, functions[i], payload, warm, per_pass, Answer::Empty)?)?;
            }
        }
        let warmed = warm * NOOP_PASSES;
        let report_error = |e: std::io::Error| format!("cannot write the report: {e}");
        for (i, language) in ["c", "python"].into_iter().enumerate() {
            let summaries = (Summary::of(&ours[i]), Summary::of(&base[i]));
            let mut record =
                Record::latency("invoke", self.info, payload.len(), warmed, &summaries.0, BASELINE, &summaries.1);
            (record.mode, record.function, record.language) = (Some(mode.name()), Some(functions[i]), Some(language));
            self.reporter.push_measured(record, &ours[i], Some(&base[i])).map_err(report_error)?;
        }
        let (python, c) = (Summary::of(&ours[1]), Summary::of(&ours[0]));
        let mut record = Record::versus("python-vs-c", self.info, payload.len(), warmed, &python, C_NOOP, &c);
        (record.mode, record.function, record.language) = (Some(mode.name()), Some(functions[1]), Some("python"));
        self.reporter.push_measured(record, &ours[1], Some(&ours[0])).map_err(report_error)
    }
}

/// What a measured function answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Its input, byte for byte (an echo).
    Echo,
    /// Nothing (a no-op).
    Empty,
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
    round_trips(client, function, payload, warmup, iters, Answer::Echo)
}

/// Blocking round trips of `function`, which answers as `answer` says: `warmup` dropped, then
/// `iters` measured; the answer is checked on every round trip (its length) and compared in full
/// before and after the measured loop.
pub(crate) fn round_trips(
    client: &mut Client,
    function: &str,
    payload: &[u8],
    warmup: u64,
    iters: u64,
    answer: Answer,
) -> Result<Histogram<u64>, String> {
    let fail = |e| invoke_error(&format!("invocation of {function} with {} bytes", payload.len()), e);
    let expected: &[u8] = match answer {
        Answer::Echo => payload,
        Answer::Empty => &[],
    };
    raw_tcp::verify("praas", expected, &client.invoke(function, payload).map_err(fail)?)?;
    for _ in 0..warmup {
        client.invoke(function, payload).map_err(fail)?;
    }
    let mut hist = report::histogram();
    let mut last = Vec::new();
    for _ in 0..iters {
        let start = Instant::now();
        let output = client.invoke(function, payload).map_err(fail)?;
        let elapsed = start.elapsed();
        if output.len() != expected.len() {
            return Err(format!("praas {function} answered {} bytes, not {}", output.len(), expected.len()));
        }
        report::record(&mut hist, elapsed);
        last = output;
    }
    if iters > 0 {
        raw_tcp::verify("praas", expected, &last)?;
    }
    Ok(hist)
}

/// Pipelined invocations of `function` with `payload` on one connection: `in_flight` submitted,
/// then each completion received (its output passed to `check`) is replaced by a new submission;
/// returns completions per second over `ops` after `warmup`.
pub(crate) fn pipelined(
    client: &mut Client,
    function: &str,
    payload: &[u8],
    in_flight: u64,
    warmup: u64,
    ops: u64,
    check: impl Fn(&[u8]) -> Result<(), String>,
) -> Result<f64, String> {
    let fail = |e| invoke_error(&format!("pipelined {function}"), e);
    check(&client.invoke(function, payload).map_err(fail)?)?;
    for _ in 0..in_flight {
        client.submit(function, payload).map_err(fail)?;
    }
    let next = |client: &mut Client| -> Result<(), String> {
        check(&client.recv().map_err(fail)?.result.map_err(fail)?)?;
        client.submit(function, payload).map_err(fail)?;
        Ok(())
    };
    for _ in 0..warmup {
        next(client)?;
    }
    let start = Instant::now();
    for _ in 0..ops {
        next(client)?;
    }
    let secs = start.elapsed().as_secs_f64();
    for _ in 0..in_flight {
        check(&client.recv().map_err(fail)?.result.map_err(fail)?)?;
    }
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
