//! `invoke --transport rdma`: round trips of `echo` over the RDMA verbs transport, each size beside
//! perftest's `ib_send_lat` and `ib_write_lat` measured in the same run, on the same device, with
//! the same placement, in interleaved rounds. perftest reports the typical (median) one-way latency of a ping-pong, so a
//! round trip is twice its `t_typical` (and twice its percentiles).
//!
//! Needs an RDMA device: `PRAAS_RDMA_DEVICE` (e.g. `rxe0`) and `PRAAS_RDMA_ADDR` (its IP address),
//! as `scripts/rxe-vm.sh` sets them in its guest, and perftest on the PATH. Busy-polling sides
//! should not share a CPU: run with `--split`.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use praas_dataplane::clock::Tick;
use praas_dataplane::{
    FunctionRegistry, Manifest, Process, ProcessConfig, RdmaClient, RdmaClientOptions, RdmaOptions, ServerHandle,
    Transport,
};

use crate::cli::InvokeArgs;
use crate::functions;
use crate::output::Reporter;
use crate::placement::{self, Placement};
use crate::raw_tcp;
use crate::report::{self, Record, RunInfo, Summary};

const ECHO: &str = "echo";
const BASELINES: [&str; 2] = ["ib_send_lat", "ib_write_lat"];
/// Interleaved rounds of baseline and praas measurements per size.
const ROUNDS: u64 = 9;

/// Per figure, the median of the rounds' figures (counts add up).
fn median(mut rounds: Vec<Summary>) -> Summary {
    let mid = rounds.len() / 2;
    let count = rounds.iter().map(|r| r.count).sum();
    let mut pick = |f: fn(&Summary) -> u64| {
        rounds.sort_by_key(f);
        f(&rounds[mid])
    };
    Summary { count, p50: pick(|r| r.p50), p99: pick(|r| r.p99), p999: pick(|r| r.p999), max: pick(|r| r.max) }
}

/// Measured round trips of one size unless `--iters` says otherwise (software RDMA is slow with
/// large messages; perftest runs as many).
fn default_iters(size: usize) -> u64 {
    match size {
        0..=1024 => 5_000,
        1025..=65536 => 1_000,
        _ => 200,
    }
}

/// The RDMA device and its address, from `PRAAS_RDMA_DEVICE` and `PRAAS_RDMA_ADDR`.
fn device_and_addr() -> Result<(String, IpAddr), String> {
    let device = std::env::var("PRAAS_RDMA_DEVICE").map_err(|_| "PRAAS_RDMA_DEVICE is not set (e.g. rxe0)")?;
    let addr: IpAddr = std::env::var("PRAAS_RDMA_ADDR")
        .map_err(|_| "PRAAS_RDMA_ADDR is not set (the RDMA device's IP address)".to_owned())?
        .parse()
        .map_err(|e| format!("PRAAS_RDMA_ADDR: {e}"))?;
    Ok((device, addr))
}

/// Runs the RDMA invoke benchmark.
pub fn run(args: &InvokeArgs) -> Result<(), String> {
    let (device, addr) = device_and_addr()?;
    let placement = Placement::new(args.split);
    placement.check(placement::online_cpus())?;
    let info = RunInfo { transport: "rdma", placement: placement.describe(), host: placement::host() };
    let timeout = Duration::from_secs(args.timeout_secs);

    // The process runs in this OS process, on threads started from one pinned to the server CPU
    // (threads inherit the mask); the client is this thread, pinned to the client CPU.
    let library = functions::library()?;
    let manifest = functions::write_manifest(&library)?;
    let manifest_path = manifest.path().to_path_buf();
    let server_cpu = placement.server;
    let (_process, server) = std::thread::spawn(move || serve(&manifest_path, addr, server_cpu))
        .join()
        .map_err(|_| "the server start-up thread panicked".to_owned())??;
    placement::pin_current_thread(placement.client)?;
    let options = RdmaClientOptions { timeout, device: Some(device.clone()), ..RdmaClientOptions::default() };
    let mut client = RdmaClient::connect_with(server.local_addr(), options)
        .map_err(|e| format!("cannot connect to rdma://{}: {e}", server.local_addr()))?;
    eprintln!(
        "praas-bench: praas RDMA server at rdma://{} on {device}, {}, {}",
        server.local_addr(),
        info.placement,
        info.host
    );

    let mut reporter = Reporter::new("invoke-rdma", &args.output);
    for &size in &args.sizes {
        let iters = args.iters.unwrap_or_else(|| default_iters(size));
        let warmup = args.warmup.unwrap_or(iters / 10);
        eprintln!("praas-bench: invoke {size} B over RDMA: {warmup} warm-up + {iters} measured round trips each");
        // Interleaved rounds (perftest, praas, perftest, ...), so that drift in a shared, noisy
        // VM affects both alike; every figure, praas's and each baseline's, is the median of its
        // rounds, so a round that met a busy host weighs on neither side alone.
        let per_round = iters.div_ceil(ROUNDS);
        let mut bases: Vec<Vec<Summary>> = vec![Vec::new(); BASELINES.len()];
        let mut ours = Vec::new();
        // Every round's round trips together, for the figures' CDF (perftest reports none).
        let mut merged = report::histogram();
        for round in 0..ROUNDS {
            for (i, tool) in BASELINES.iter().enumerate() {
                bases[i].push(perftest(tool, &device, addr, size, warmup + per_round, placement, timeout)?);
                if i == 0 {
                    let warm = if round == 0 { warmup } else { warmup / 4 };
                    let hist = latency(&mut client, size, warm, per_round)?;
                    merged.add(&hist).map_err(|e| format!("cannot merge latencies: {e}"))?;
                    ours.push(Summary::of(&hist));
                }
            }
        }
        let ours = median(ours);
        for (tool, rounds) in BASELINES.iter().zip(bases) {
            let record = Record::latency("invoke", &info, size, warmup, &ours, tool, &median(rounds));
            reporter.push_measured(record, &merged, None).map_err(|e| format!("cannot write the report: {e}"))?;
        }
    }
    drop(client);
    server.stop().map_err(|e| format!("the RDMA transport failed: {e}"))?;
    reporter.finish(&info).map_err(|e| format!("cannot write the report: {e}"))
}

fn serve(manifest: &std::path::Path, addr: IpAddr, cpu: usize) -> Result<(Arc<Process>, ServerHandle), String> {
    let config = ProcessConfig { id: "bench-rdma".into(), app: "bench".into(), workers: 1, ..ProcessConfig::default() };
    serve_as(manifest, addr, cpu, config)
}

/// Starts a process of `config` serving RDMA on `addr`, its threads on `cpu`.
fn serve_as(
    manifest: &std::path::Path,
    addr: IpAddr,
    cpu: usize,
    config: ProcessConfig,
) -> Result<(Arc<Process>, ServerHandle), String> {
    placement::pin_current_thread(cpu)?;
    let manifest = Manifest::from_file(manifest).map_err(|e| e.to_string())?;
    let functions = FunctionRegistry::load(&manifest).map_err(|e| e.to_string())?;
    let process = Process::start(config, functions).map_err(|e| format!("cannot start the process: {e}"))?;
    let transport = praas_dataplane::transport::rdma::bind_with_peers(
        SocketAddr::new(addr, 0),
        Arc::clone(&process),
        RdmaOptions::default(),
    )
    .map_err(|e| format!("cannot serve RDMA on {addr}: {e}"))?;
    let server = Box::new(transport).spawn().map_err(|e| format!("cannot start the RDMA transport: {e}"))?;
    Ok((process, server))
}

/// `message --transport rdma`: round trips of a message between two processes that serve RDMA
/// (A puts to B over RDMA, B gets it and puts it back, A gets it; each put returns once its
/// destination stored the message, so a round trip is two acknowledged RDMA exchanges plus two
/// mailbox hand-offs), timed inside A by `msg_roundtrip`, beside perftest's `ib_send_lat` round
/// trip of the same size in the same run. A runs on the client CPU, B on the server CPU, as
/// perftest's two sides do; each process is driven by an RDMA client of this thread.
pub fn message(args: &crate::cli::MessageArgs) -> Result<(), String> {
    if args.redis {
        return Err("message --redis is measured over tcp (the Redis clients speak TCP): drop --transport rdma".into());
    }
    let (device, addr) = device_and_addr()?;
    let placement = Placement::new(true);
    placement.check(placement::online_cpus())?;
    let info = RunInfo { transport: "rdma", placement: placement.describe(), host: placement::host() };
    let timeout = Duration::from_secs(args.timeout_secs);
    let library = functions::library()?;
    let manifest = functions::write_manifest(&library)?;
    let secret = praas_dataplane::Secret::random();
    let mut nodes = Vec::new();
    for (id, cpu) in [("a", placement.client), ("b", placement.server)] {
        let path = manifest.path().to_path_buf();
        let config = ProcessConfig {
            id: id.into(),
            app: "bench".into(),
            secret: Some(secret.clone()),
            workers: 2,
            ..ProcessConfig::default()
        };
        let node = std::thread::spawn(move || serve_as(&path, addr, cpu, config))
            .join()
            .map_err(|_| "the server start-up thread panicked".to_owned())??;
        nodes.push(node);
    }
    let peers: Vec<praas_dataplane::peer::PeerInfo> = nodes
        .iter()
        .map(|(process, server)| praas_dataplane::peer::PeerInfo {
            id: process.id().to_owned(),
            // Not used: both ends serve RDMA, so puts go over it.
            addr: "127.0.0.1:1".into(),
            rdma: Some(server.local_addr().to_string()),
            status: praas_dataplane::lifecycle::ProcessStatus::Allocated,
        })
        .collect();
    for (process, _) in &nodes {
        process.peers().update(peers.clone());
    }
    let options = RdmaClientOptions { timeout, device: Some(device.clone()), ..RdmaClientOptions::default() };
    let connect = |server: &ServerHandle| {
        RdmaClient::connect_with(server.local_addr(), options.clone())
            .map_err(|e| format!("cannot connect to rdma://{}: {e}", server.local_addr()))
    };
    let (mut client_a, mut client_b) = (connect(&nodes[0].1)?, connect(&nodes[1].1)?);
    eprintln!("praas-bench: processes a and b serve RDMA on {device}, {}, {}", info.placement, info.host);
    let mut reporter = Reporter::new("message-rdma", &args.output);
    for size in args.sizes() {
        let (warmup, iters) = crate::message::counts(size, args);
        eprintln!("praas-bench: message {size} B over RDMA: {warmup} warm-up + {iters} measured round trips");
        let base = perftest("ib_send_lat", &device, addr, size, warmup + iters, placement, timeout)?;
        let total = warmup + iters;
        let hist = crate::message::round_trips(&mut client_a, &mut client_b, size, warmup, total)?;
        let sent = nodes[0].0.peers().delivered();
        if sent.tcp != 0 || sent.rdma < total {
            return Err(format!("a's messages did not all go over RDMA: {sent:?}"));
        }
        let record = Record::latency("message", &info, size, warmup, &Summary::of(&hist), "ib_send_lat", &base);
        reporter.push_measured(record, &hist, None).map_err(|e| format!("cannot print: {e}"))?;
    }
    drop((client_a, client_b));
    for (_, server) in nodes {
        server.stop().map_err(|e| format!("the RDMA transport failed: {e}"))?;
    }
    reporter.finish(&info).map_err(|e| format!("cannot print: {e}"))
}

/// Blocking `echo` round trips: `warmup` dropped, then `iters` measured; the echo is compared
/// with the input before and after the measured loop. Timed with the time-stamp counter where
/// the kernel keeps time with it ([`praas_dataplane::clock`]), as perftest times its own
/// (`get_cycles`): a monotonic-clock read inside the timed window costs 280 ns in the VM.
fn latency(client: &mut RdmaClient, size: usize, warmup: u64, iters: u64) -> Result<Histogram<u64>, String> {
    let payload = raw_tcp::payload(size);
    let fail = |e| format!("praas invocation of {ECHO} with {size} bytes over RDMA failed: {e}");
    raw_tcp::verify("praas", &payload, &client.invoke(ECHO, &payload).map_err(fail)?)?;
    for _ in 0..warmup {
        client.invoke(ECHO, &payload).map_err(fail)?;
    }
    let mut hist = report::histogram();
    let mut last = Vec::new();
    for _ in 0..iters {
        let start = Tick::now();
        let output = client.invoke(ECHO, &payload).map_err(fail)?;
        report::record(&mut hist, start.elapsed());
        last = output;
    }
    if iters > 0 {
        raw_tcp::verify("praas", &payload, &last)?;
    }
    Ok(hist)
}

/// Starts a perftest program pinned to `cpu` (pinned right after it starts, long before it
/// measures: spawning without a `pre_exec` hook lets the standard library use `posix_spawn`, so
/// the child never runs on a forked copy of this process, whose registered pages it would lack).
fn perftest_spawn(
    tool: &str,
    device: &str,
    size: usize,
    iters: u64,
    cpu: usize,
    server: Option<IpAddr>,
) -> Result<Child, String> {
    let mut command = Command::new(tool);
    command.args(["-d", device, "-s", &size.to_string(), "-n", &iters.to_string()]);
    command.args(server.map(|a| a.to_string()));
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("cannot run {tool} (is perftest installed?): {e}"))?;
    if let Err(e) = placement::pin(child.id(), cpu) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{tool}: {e}"));
    }
    Ok(child)
}

/// Runs `tool`'s server and client on `device` and returns its round trips (twice the one-way
/// figures it reports), in nanoseconds.
fn perftest(
    tool: &str,
    device: &str,
    addr: IpAddr,
    size: usize,
    iters: u64,
    placement: Placement,
    timeout: Duration,
) -> Result<Summary, String> {
    let deadline = Instant::now() + timeout;
    let mut server = perftest_spawn(tool, device, size, iters, placement.server, None)?;
    // The server needs a moment to listen; the client retries until it is there.
    let output = loop {
        std::thread::sleep(Duration::from_millis(300));
        let output = perftest_spawn(tool, device, size, iters, placement.client, Some(addr))
            .and_then(|client| client.wait_with_output().map_err(|e| format!("cannot run {tool}: {e}")));
        let output = match output {
            Ok(output) => output,
            Err(e) => {
                // No server left behind, waiting for a client that will not come.
                let _ = server.kill();
                let _ = server.wait();
                return Err(e);
            }
        };
        if output.status.success() || Instant::now() >= deadline {
            break output;
        }
    };
    if !output.status.success() {
        // The client never got through: the server would wait for it forever.
        let _ = server.kill();
    }
    let server_status = server.wait().map_err(|e| format!("{tool} server: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !server_status.success() {
        return Err(format!(
            "{tool} -s {size} failed (client {}, server {server_status}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_perftest(&stdout, iters).ok_or_else(|| format!("cannot read {tool}'s report:\n{stdout}"))
}

/// Reads perftest's result line: `#bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%`
/// (microseconds, one way) into round-trip nanoseconds.
fn parse_perftest(report: &str, iters: u64) -> Option<Summary> {
    let mut lines = report.lines().skip_while(|l| !l.trim_start().starts_with("#bytes"));
    lines.next()?;
    let fields: Vec<f64> = lines.next()?.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
    let round_trip_ns = |us: f64| (us * 2000.0).round() as u64;
    match fields.as_slice() {
        [_, _, _, max, typical, _, _, p99, p999, ..] => Some(Summary {
            count: iters,
            p50: round_trip_ns(*typical),
            p99: round_trip_ns(*p99),
            p999: round_trip_ns(*p999),
            max: round_trip_ns(*max),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perftest_reports_become_round_trips() {
        let report = "\
---------------------------------------------------------------------------------------
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] \n\
 8       2000          10.89          14064.45      12.06    	       570.24      	1343.57		6003.01 		9285.49\n\
---------------------------------------------------------------------------------------\n";
        let summary = parse_perftest(report, 2000).expect("parses");
        assert_eq!(summary.p50, 24_120);
        assert_eq!(summary.p99, 12_006_020);
        assert_eq!(summary.max, 28_128_900);
        assert_eq!(summary.count, 2000);
        assert!(parse_perftest("nothing here", 1).is_none());
    }

    #[test]
    fn baselines_take_the_median_round() {
        let round = |p50| Summary { count: 10, p50, p99: p50 * 2, p999: p50 * 3, max: p50 * 4 };
        let m = median(vec![round(30), round(10), round(20)]);
        assert_eq!((m.count, m.p50, m.p99, m.p999, m.max), (30, 20, 40, 60, 80));
    }
}
