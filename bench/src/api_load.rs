//! `api-load`: how long the control plane's `GET /apps` takes with many routed invocations in
//! flight (`POST /apps/APP/invoke/sleep` of a function that sleeps), against the same `GET /apps`
//! on the same control plane idle, measured first in the same run.
//!
//! One control plane (`praas control serve`, the `praas` binary beside this one) and one process
//! of 1 vCPU: the invocations wait at the process for its one worker, each holding a routed
//! invocation's slot and thread in the control plane, which is the load. The load is in place once
//! the control plane counts `--in-flight` routed invocations (`praas_requests_in_flight`); each
//! `GET /apps` is timed on one kept-alive connection, its answer checked outside the timed region.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::allocate::ControlPlane;
use crate::cli::ApiLoadArgs;
use crate::functions;
use crate::output::Reporter;
use crate::placement;
use crate::report::{self, Record, RunInfo, Summary};

/// The sleeping function's process: killed when dropped (a control plane leaves its processes
/// running when it stops).
struct ProcessGuard(Option<libc::pid_t>);

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is the process this run
            // created, which the control plane started and only it reaps.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn get(cp: &ControlPlane, agent: &ureq::Agent, path: &str) -> Result<serde_json::Value, String> {
    let url = format!("{}{path}", cp.http);
    let mut response = agent
        .get(&url)
        .header("Authorization", cp.authorization.as_str())
        .call()
        .map_err(|e| format!("GET {path}: {e}"))?;
    let text = response.body_mut().read_to_string().map_err(|e| format!("GET {path}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {path}: HTTP {}: {text}", response.status().as_u16()));
    }
    serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e}: {text}"))
}

/// Times `warmup + iters` `GET /apps` on one connection; checks one answer after.
fn time_list_apps(cp: &ControlPlane, agent: &ureq::Agent, args: &ApiLoadArgs) -> Result<Histogram<u64>, String> {
    let mut hist = report::histogram();
    let mut last = serde_json::Value::Null;
    for i in 0..args.warmup + args.iters {
        let started = Instant::now();
        last = get(cp, agent, "/apps")?;
        let elapsed = started.elapsed();
        if i >= args.warmup {
            report::record(&mut hist, elapsed);
        }
    }
    let names: Vec<&str> = last.as_array().into_iter().flatten().filter_map(|a| a["name"].as_str()).collect();
    if names != ["bench"] {
        return Err(format!("GET /apps answered {last}, not the one application"));
    }
    Ok(hist)
}

/// Routed invocations the control plane has in flight, as its `/metrics` counts them.
fn routed_in_flight(cp: &ControlPlane, agent: &ureq::Agent) -> Result<u64, String> {
    let url = format!("{}/metrics", cp.http);
    let mut response = agent
        .get(&url)
        .header("Authorization", cp.authorization.as_str())
        .call()
        .map_err(|e| format!("GET /metrics: {e}"))?;
    let text = response.body_mut().read_to_string().map_err(|e| format!("GET /metrics: {e}"))?;
    let series = "praas_requests_in_flight{kind=\"invocation\"} ";
    Ok(text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0))
}

/// `n` routed invocations of `sleep`, each from a thread with a connection of its own.
fn start_load(cp: &ControlPlane, n: u64, sleep_ms: u64) -> Vec<JoinHandle<()>> {
    (0..n)
        .filter_map(|_| {
            let url = format!("{}/apps/bench/invoke/sleep?process=p", cp.http);
            let authorization = cp.authorization.clone();
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let agent: ureq::Agent =
                        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(600))).build().into();
                    // Ends with the control plane at the latest; the answer is not measured.
                    let _ = agent.post(&url).header("Authorization", authorization).send(sleep_ms.to_string());
                })
                .ok()
        })
        .collect()
}

pub fn run(args: &ApiLoadArgs) -> Result<(), String> {
    if let Err(e) = praas_dataplane::connection::raise_descriptor_limit(None) {
        eprintln!("praas-bench: cannot raise the descriptor limit: {e}");
    }
    let library = functions::library()?;
    let root = library.parent().ok_or("the functions library has no folder")?;
    let cp = ControlPlane::start(&["--backend", "local"], root)?;
    let library_path = library.to_str().ok_or("the library's path is not UTF-8")?;
    let manifest = format!("[[function]]\nname = \"sleep\"\nlibrary = \"{library_path}\"\nmode = \"worker\"\n");
    // Each connection costs the process buffers and address space: 4 GiB for 600.
    let resources = serde_json::json!({ "vcpus": 1, "memory_mb": args.process_memory_mb });
    cp.call("PUT", "/apps/bench", Some(serde_json::json!({ "manifest": manifest, "resources": resources })))?;
    cp.call("PUT", "/apps/bench/processes/p", Some(serde_json::json!({})))?;
    let agent = cp.agent.clone();
    let record = get(&cp, &agent, "/apps/bench/processes/p")?;
    let _process = ProcessGuard(record["pid"].as_i64().and_then(|pid| libc::pid_t::try_from(pid).ok()));

    let idle = time_list_apps(&cp, &agent, args)?;
    let load = start_load(&cp, args.in_flight, args.sleep_ms);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let in_flight = routed_in_flight(&cp, &agent)?;
        if in_flight >= args.in_flight {
            break;
        }
        if load.iter().all(JoinHandle::is_finished) {
            return Err("every routed invocation ended before the load was in place (see the log above)".into());
        }
        if Instant::now() > deadline {
            return Err(format!("only {in_flight} of {} routed invocations in flight after 120 s", args.in_flight));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let loaded = time_list_apps(&cp, &agent, args)?;
    let still = routed_in_flight(&cp, &agent)?;
    if still < args.in_flight {
        return Err(format!("routed invocations ended while measuring ({still} left): raise --sleep-ms"));
    }
    drop(cp);
    for thread in load {
        let _ = thread.join();
    }

    let info = RunInfo { transport: "http", placement: "control-plane=any".into(), host: placement::host() };
    let mut reporter = Reporter::new("api-load", &args.output);
    let mut line = Record::latency(
        "api-load",
        &info,
        0,
        args.warmup,
        &Summary::of(&loaded),
        "idle-control-plane",
        &Summary::of(&idle),
    );
    line.in_flight = Some(args.in_flight);
    reporter.push_measured(line, &loaded, Some(&idle)).map_err(|e| e.to_string())?;
    reporter.finish(&info).map_err(|e| e.to_string())
}
