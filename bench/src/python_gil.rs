//! `python-gil`: what the interpreter lock does to Python functions on several workers.
//!
//! For each worker count (1 always, it is the baseline), one praas process with that many workers,
//! free to run on every online CPU, serves a pipelined connection with `--in-flight` invocations
//! outstanding of
//!
//! - `py_burn` (`burn` of examples/python/functions.py): a pure-Python loop of `--python-work`
//!   iterations, holding the GIL throughout;
//! - `fill` of the example library (C ABI, Rust): generates `--c-work` pseudo-random bytes, hashes
//!   them and stores them in the state under one key, CPU-bound and taking no GIL: the reference
//!   of how far workers scale on this machine. (Not `local_loop`: its local invocations of `echo`
//!   do not scale with the workers either, which is the runtime's, not the GIL's.)
//!
//! Each line's `ratio` is the function's rate over its own rate with one worker in the same run
//! (its speed-up), beside `ideal_ratio`: the workers, at most the online CPUs. The work is a
//! fixed number of iterations, not a time: a loop that ran until a deadline would end sooner
//! when it waited for the GIL, and hide what the GIL costs.

use std::ffi::OsString;
use std::time::Duration;

use praas_dataplane::{Client, ClientOptions};

use crate::child::ChildServer;
use crate::cli::PythonGilArgs;
use crate::functions::{self, PY_BURN};
use crate::invoke::pipelined;
use crate::output::Reporter;
use crate::placement;
use crate::report::{Record, RunInfo};

/// Every line's baseline: the same function on a process with one worker, in the same run.
const BASELINE: &str = "one-worker";
/// The CPU-bound C ABI reference of the example library.
const C_REFERENCE: &str = "fill";
/// The state key `fill` stores its bytes under (each invocation replaces the last one's).
const C_KEY: &str = "python-gil";

/// One function measured: its name, its language and its input.
struct Job {
    function: &'static str,
    language: &'static str,
    input: Vec<u8>,
    /// Bytes it answers.
    answer: usize,
}

/// Runs the benchmark: per worker count, a process and both functions' throughput on it.
pub fn run(args: &PythonGilArgs) -> Result<(), String> {
    let module = functions::require_python()?;
    let online = placement::online_cpus();
    // The client on CPU 0; the servers (which re-pin) on every CPU.
    placement::pin_current_thread(0)?;
    let info = RunInfo {
        transport: args.transport.name(),
        placement: format!("server=0-{},client=0", online - 1),
        host: placement::host(),
    };
    eprintln!("praas-bench: python-gil with {}, {}, {}", module.display(), info.placement, info.host);
    let mut reporter = Reporter::new(format!("python-gil-{}", info.transport), &args.output);
    let report_error = |e: std::io::Error| format!("cannot write the report: {e}");

    let timeout = Duration::from_secs(args.timeout_secs);
    let library = functions::library()?;
    let manifest = functions::write_manifest(&library)?;
    let jobs = [
        Job { function: PY_BURN, language: "python", input: args.python_work.to_string().into_bytes(), answer: 0 },
        Job {
            function: C_REFERENCE,
            language: "c",
            input: format!("{C_KEY} {}", args.c_work).into_bytes(),
            // `BYTES HASH`: the count, a space and 16 hexadecimal digits.
            answer: args.c_work.to_string().len() + 17,
        },
    ];
    let mut workers = args.workers.clone();
    workers.push(1);
    workers.sort_unstable();
    workers.dedup();
    let mut one_worker = [None; 2];
    for &count in &workers {
        let server = ChildServer::spawn(
            &format!("praas server ({count} workers)"),
            &[
                "serve-praas".into(),
                "--manifest".into(),
                manifest.path().into(),
                "--cpu".into(),
                "0".into(),
                "--all-cpus".into(),
                "--workers".into(),
                OsString::from(count.to_string()),
                "--transport".into(),
                args.transport.name().into(),
            ],
            None,
            timeout,
        )?;
        let options = ClientOptions { timeout, transport: args.transport.dataplane(), ..ClientOptions::default() };
        let mut client = Client::connect_with(server.addr(), options)
            .map_err(|e| format!("cannot connect to the praas server at {}: {e}", server.addr()))?;
        for (job, base) in jobs.iter().zip(one_worker.iter_mut()) {
            eprintln!(
                "praas-bench: {} on {count} workers, {} in flight: {} warm-up + {} measured completions",
                job.function, args.in_flight, args.warmup, args.iters
            );
            let check = |output: &[u8]| {
                if output.len() != job.answer {
                    return Err(format!("{} answered {} bytes, not {}", job.function, output.len(), job.answer));
                }
                Ok(())
            };
            let rate =
                pipelined(&mut client, job.function, &job.input, args.in_flight, args.warmup, args.iters, check)?;
            let base = *base.get_or_insert(rate);
            let ideal = count.min(online as u64) as f64;
            let mut record = Record::scaling(
                "python-gil",
                &info,
                job.input.len(),
                usize::try_from(count).unwrap_or(usize::MAX),
                args.in_flight,
                args.iters,
                args.warmup,
                rate,
                BASELINE,
                base,
                ideal,
            );
            (record.function, record.language) = (Some(job.function), Some(job.language));
            reporter.push(record).map_err(report_error)?;
        }
    }
    reporter.finish(&info).map_err(|e| format!("cannot write the report: {e}"))
}
