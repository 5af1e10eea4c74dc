//! `stats-cost`: what recording per-function statistics costs an inline invocation, in the same
//! binary with the recording switched on and off (`ProcessConfig::function_stats`):
//!
//! - round trips of the inline `echo`, two servers (on, off) with the same placement, in passes
//!   that alternate between them so that drift affects both alike: the `on` line's baseline is
//!   the `off` server (`ratio_p50` is on/off);
//! - instructions per inline invocation counted by `valgrind --tool=callgrind` over the
//!   dispatcher alone (no sockets: instruction counts do not drift with the machine's load), each
//!   setting run twice with different counts so that start-up cancels out.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use praas_dataplane::buffer::Payload;
use praas_dataplane::invocation::{Dispatched, Response, ResponseSink};
use praas_dataplane::{Client, ClientOptions, FunctionRegistry, Manifest, Process, ProcessConfig, Status};

use crate::child::ChildServer;
use crate::cli::{DispatchLoopArgs, StatsCostArgs};
use crate::functions;
use crate::invoke::praas_latency;
use crate::output::Reporter;
use crate::placement::{self, Placement};
use crate::report::{self, Record, RunInfo, Summary};

const ECHO: &str = "echo";
/// The baseline's name: the same binary with the recording off.
const BASELINE: &str = "function-stats-off";

/// Runs the benchmark: the pass-against-pass round trips, then the instruction counts.
pub fn run(args: &StatsCostArgs) -> Result<(), String> {
    let placement = Placement::new(args.split);
    placement.check(placement::online_cpus())?;
    placement::pin_current_thread(placement.client)?;
    let info = RunInfo {
        transport: args.transport.name(),
        placement: format!("server={},client={}", placement.server, placement.client),
        host: placement::host(),
    };
    let mut reporter = Reporter::new(format!("stats-cost-{}", args.transport.name()), &args.output);

    let timeout = Duration::from_secs(args.timeout_secs);
    let library = functions::library()?;
    let manifest = functions::write_manifest(&library)?;
    let server = |stats: bool| {
        let mut argv: Vec<OsString> = vec![
            "serve-praas".into(),
            "--manifest".into(),
            manifest.path().into(),
            "--cpu".into(),
            placement.server.to_string().into(),
            "--transport".into(),
            args.transport.name().into(),
        ];
        if !stats {
            argv.push("--no-function-stats".into());
        }
        ChildServer::spawn(
            if stats { "praas server (stats on)" } else { "praas server (stats off)" },
            &argv,
            None,
            timeout,
        )
    };
    let (on, off) = (server(true)?, server(false)?);
    let options = ClientOptions { timeout, transport: args.transport.dataplane(), ..ClientOptions::default() };
    let connect = |server: &ChildServer| {
        Client::connect_with(server.addr(), options.clone())
            .map_err(|e| format!("cannot connect to the praas server at {}: {e}", server.addr()))
    };
    let (mut client_on, mut client_off) = (connect(&on)?, connect(&off)?);
    let payload = vec![0x5a; args.size];
    let (mut hist_on, mut hist_off) = (report::histogram(), report::histogram());
    for pass in 0..args.passes {
        // Each pass first on one, then the other, alternating which goes first.
        let order: [bool; 2] = if pass % 2 == 0 { [true, false] } else { [false, true] };
        for stats in order {
            let (client, hist) = if stats { (&mut client_on, &mut hist_on) } else { (&mut client_off, &mut hist_off) };
            let measured = praas_latency(client, ECHO, &payload, args.warmup, args.iters)?;
            hist.add(&measured).map_err(|e| format!("cannot merge the histograms: {e}"))?;
        }
    }
    let mut record = Record::latency(
        "stats-cost",
        &info,
        args.size,
        args.warmup * args.passes,
        &Summary::of(&hist_on),
        BASELINE,
        &Summary::of(&hist_off),
    );
    record.mode = Some("inline");
    reporter.push_measured(record, &hist_on, Some(&hist_off)).map_err(|e| format!("cannot write the report: {e}"))?;
    drop((client_on, client_off, on, off));

    let per_invocation = |stats: bool| -> Result<f64, String> {
        let (few, many) = (args.callgrind_iters / 10, args.callgrind_iters);
        let counted = |iters: u64| callgrind_instructions(manifest.path(), iters, stats);
        let (a, b) = (counted(few)?, counted(many)?);
        Ok(b.saturating_sub(a) as f64 / (many - few) as f64)
    };
    let (ours, base) = (per_invocation(true)?, per_invocation(false)?);
    let mut record =
        Record::instructions("stats-instructions", &info, args.size, args.callgrind_iters, ours, BASELINE, base);
    record.mode = Some("inline");
    record.transport = None;
    reporter.push(record).map_err(|e| format!("cannot write the report: {e}"))?;
    reporter.finish(&info).map_err(|e| format!("cannot write the report: {e}"))
}

/// Instructions (callgrind's `Ir` total) of `dispatch-loop` over `iters` inline invocations.
fn callgrind_instructions(manifest: &Path, iters: u64, stats: bool) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench executable: {e}"))?;
    let out = tempfile::NamedTempFile::new().map_err(|e| format!("cannot make a temporary file: {e}"))?;
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.path().display()))
        .arg(&exe)
        .args(["dispatch-loop", "--manifest"])
        .arg(manifest)
        .args(["--iters", &iters.to_string()]);
    if !stats {
        command.arg("--no-function-stats");
    }
    let output = command.output().map_err(|e| {
        format!("cannot run valgrind ({e}): the instruction counts need it (Debian's package `valgrind`)")
    })?;
    if !output.status.success() {
        return Err(format!(
            "valgrind --tool=callgrind failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = std::fs::read_to_string(out.path()).map_err(|e| format!("cannot read callgrind's output: {e}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:")))
        .and_then(|total| total.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "callgrind's output has no instruction total".to_owned())
}

/// Where `dispatch-loop` sends answers: nowhere (its invocations are inline, answered in place).
struct Nowhere;

impl ResponseSink for Nowhere {
    fn send(&self, _: Response) {}
}

/// `dispatch-loop` (internal): `iters` inline invocations of `echo` with 8 bytes straight through
/// the dispatcher, the loop the instruction counts measure.
pub fn dispatch_loop(args: &DispatchLoopArgs) -> Result<(), String> {
    let manifest = Manifest::from_file(&args.manifest).map_err(|e| e.to_string())?;
    let functions = FunctionRegistry::load(&manifest).map_err(|e| e.to_string())?;
    let config = ProcessConfig {
        id: "dispatch-loop".into(),
        workers: 1,
        function_stats: !args.no_function_stats,
        ..Default::default()
    };
    let process = Process::start(config, functions).map_err(|e| format!("cannot start the process: {e}"))?;
    let mut input = process.pool().get(8).ok_or("no buffer for the input")?;
    input.try_extend(&[7u8; 8]);
    let input = Arc::new(input);
    let sink: Arc<dyn ResponseSink> = Arc::new(Nowhere);
    for id in 0..args.iters {
        let payload = Payload::new(Arc::clone(&input), 0..8);
        match process.dispatcher().dispatch(process.core(), id, ECHO.as_bytes(), payload, 0, &sink) {
            Dispatched::Done(Response { outcome, .. }) if outcome.status == Status::Ok => {}
            Dispatched::Done(Response { outcome, .. }) => {
                return Err(format!("echo failed: {} {}", outcome.status, outcome.message))
            }
            Dispatched::Queued => return Err("echo went to a worker: it must be inline".into()),
        }
    }
    Ok(())
}
