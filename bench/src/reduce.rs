//! `reduce`: the PraaS paper's state-and-reduction pattern. N worker processes hold their part of
//! a data set in state (`--points`, 8 doubles each, split evenly; written once by `kmeans_load`,
//! not timed); one k-means step computes each worker's partial sums for K centroids (per cluster
//! 8 coordinate sums and a count) and one reducer process gathers and sums them and moves the
//! centroids. The step runs three ways that differ only in the exchange (examples/functions):
//!
//! - `remote-invoke`: the reducer's `kmeans_reduce` invokes `kmeans_partial` on every worker at
//!   once (the centroids as input, the partial as output) and waits for all;
//! - `messages`: the reducer's `kmeans_reduce_msg` puts the centroids to every worker, whose
//!   `kmeans_worker_msg` gets them and puts its partial back, and gets N partials;
//! - `redis` (the baseline): the reducer's `kmeans_reduce_redis` LPUSHes the centroids to every
//!   worker's list on a real `redis-server`, whose `kmeans_worker_redis` BLPOPs them and LPUSHes its
//!   partial, and BLPOPs N partials.
//!
//! The three run in `--passes` passes that rotate which goes first. Each iteration is timed by the reducer, from sending the centroids to the new centroids; the
//! median per worker count and exchange is reported against Redis's. The three runs start from the
//! same centroids and run the same iterations, so their last sums must be equal to the bit (the
//! reducers sum in worker order), and their counts must add up to the data set: both are checked.

use std::time::Duration;

use praas_dataplane::Client;

use crate::application::{self, Application, Cpu};
use crate::cli::{ReduceArgs, TransportKind};
use crate::output::Reporter;
use crate::placement;
use crate::redis::RedisServer;
use crate::report::{Record, RunInfo, Summary};

/// Doubles per point, and per cluster in a partial (the sums and the count).
const DIMS: usize = 8;
const PARTIAL: usize = DIMS + 1;

/// The reducer process.
const REDUCER: &str = "r";

fn worker(index: u64) -> String {
    format!("w{index}")
}

/// The first centroids: K points spread over the data set's range, the same in every run.
fn initial_centroids(k: usize) -> Vec<u8> {
    (0..k * DIMS).map(|i| (((i / DIMS) * 7 + (i % DIMS) * 3) % 16) as f64 + 0.5).flat_map(f64::to_le_bytes).collect()
}

/// What a reducer returned: its per-iteration times and the last iteration's summed partials.
#[derive(Debug)]
struct Reduced {
    hist: hdrhistogram::Histogram<u64>,
    sums: Vec<f64>,
}

fn reduced(bytes: &[u8], warmup: u64, total: u64, k: usize, what: &str) -> Result<Reduced, String> {
    let times = total as usize * 8;
    if bytes.len() != times + k * PARTIAL * 8 {
        return Err(format!("{what} returned {} bytes, not {total} timings and {k} clusters' sums", bytes.len()));
    }
    let hist = application::times(&bytes[..times], warmup, total, what)?;
    let sums = bytes[times..].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    Ok(Reduced { hist, sums })
}

/// Starts `function` with `input` on every worker's client; returns the invocation ids.
fn start_workers(clients: &mut [&mut Client], function: &str, input: &str) -> Result<Vec<u64>, String> {
    clients.iter_mut().map(|c| c.submit(function, input.as_bytes()).map_err(|e| format!("{function}: {e}"))).collect()
}

/// Waits for the workers' loops started by [`start_workers`]; each must answer `done`.
fn finish_workers(clients: &mut [&mut Client], ids: &[u64], function: &str) -> Result<(), String> {
    for (client, &id) in clients.iter_mut().zip(ids) {
        let answer = client.wait(id).map_err(|e| format!("{function}: {e}"))?;
        if answer != b"done" {
            return Err(format!("{function} answered {:?}", String::from_utf8_lossy(&answer)));
        }
    }
    Ok(())
}

/// How the reducer gathers the partials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// `kmeans_reduce`: remote invocations of `kmeans_partial`.
    Remote = 0,
    /// `kmeans_reduce_msg` with `kmeans_worker_msg` on the workers.
    Messages = 1,
    /// `kmeans_reduce_redis` with `kmeans_worker_redis` on the workers (the baseline).
    Redis = 2,
}

const EXCHANGES: [Exchange; 3] = [Exchange::Remote, Exchange::Messages, Exchange::Redis];

impl Exchange {
    /// The reducer's function.
    fn reducer(self) -> &'static str {
        match self {
            Self::Remote => "kmeans_reduce",
            Self::Messages => "kmeans_reduce_msg",
            Self::Redis => "kmeans_reduce_redis",
        }
    }
}

/// Runs `total` k-means steps from `centroids` over `workers` with `exchange`; returns the
/// reducer's output.
fn step(
    app: &mut Application,
    exchange: Exchange,
    workers: &[String],
    list: &str,
    redis: &RedisServer,
    centroids: &[u8],
    total: u64,
) -> Result<Vec<u8>, String> {
    let input = |head: String| -> Vec<u8> { [head.into_bytes(), centroids.to_vec()].concat() };
    let addr = redis.addr();
    let (loop_function, loop_input, reducer_input) = match exchange {
        Exchange::Remote => return app.invoke(REDUCER, exchange.reducer(), &input(format!("{list} {total} "))),
        Exchange::Messages => ("kmeans_worker_msg", format!("{REDUCER} {total}"), input(format!("{list} {total} "))),
        Exchange::Redis => ("kmeans_worker_redis", format!("{addr} {total}"), input(format!("{addr} {list} {total} "))),
    };
    let ids = start_workers(&mut app.clients_of(workers)?, loop_function, &loop_input)?;
    let output = app.invoke(REDUCER, exchange.reducer(), &reducer_input);
    // The workers' loops end on their own (done, or their get/BLPOP times out): wait for them
    // whatever the reducer answered.
    let finished = finish_workers(&mut app.clients_of(workers)?, &ids, loop_function);
    let output = output?;
    finished?;
    Ok(output)
}

/// Runs the whole `reduce` benchmark.
pub fn run(args: &ReduceArgs) -> Result<(), String> {
    if args.transport == TransportKind::Rdma {
        return Err("reduce measures tcp or uring".into());
    }
    let online = placement::online_cpus();
    // Every process (and Redis) may run on every CPU: the workers compute in parallel.
    let info = RunInfo {
        transport: args.transport.name(),
        placement: format!("server=0-{0},client=0-{0}", online - 1),
        host: placement::host(),
    };
    let timeout = Duration::from_secs(args.timeout_secs);
    let redis = RedisServer::start(None, timeout).map_err(|e| e.to_string())?;
    let most = args.workers.iter().copied().max().unwrap_or(1);
    let mut processes = vec![(REDUCER.to_string(), Cpu::Any)];
    processes.extend((1..=most).map(|i| (worker(i), Cpu::Any)));
    eprintln!("praas-bench: reduce: a reducer and {most} worker process(es), {}, {}", info.placement, info.host);
    let mut app = Application::start(&processes, args.transport, timeout)?;
    let k = usize::try_from(args.clusters).map_err(|_| "too many clusters")?;
    let centroids = initial_centroids(k);
    let total = args.warmup + args.iters;
    let mut reporter = Reporter::new(format!("reduce-{}", args.transport.name()), &args.output);
    for &n in &args.workers {
        let workers: Vec<String> = (1..=n).map(worker).collect();
        for (i, w) in (0..n).zip(&workers) {
            let (start, end) = (args.points * i / n, args.points * (i + 1) / n);
            app.invoke(w, "kmeans_load", format!("{start} {}", end - start).as_bytes())?;
        }
        eprintln!(
            "praas-bench: reduce over {n} worker(s), {} points, {k} clusters: {} passes of {} warm-up + {} measured iterations per exchange",
            args.points, args.passes, args.warmup, args.iters
        );
        let list = workers.join(",");
        let mut runs: [Option<Reduced>; 3] = [None, None, None];
        // Passes that rotate which exchange goes first, so that a drift of the machine's load
        // falls on all three alike; each pass starts from the same centroids.
        for pass in 0..args.passes {
            for turn in 0..EXCHANGES.len() {
                let exchange = EXCHANGES[(turn + pass as usize) % EXCHANGES.len()];
                let ran = step(&mut app, exchange, &workers, &list, &redis, &centroids, total)?;
                let ran = reduced(&ran, args.warmup, total, k, exchange.reducer())?;
                let slot = &mut runs[exchange as usize];
                match slot {
                    Some(sofar) => {
                        if sofar.sums != ran.sums {
                            return Err(format!("{} computed other sums in pass {pass}", exchange.reducer()));
                        }
                        sofar.hist.add(&ran.hist).map_err(|e| format!("cannot merge the histograms: {e}"))?;
                    }
                    None => *slot = Some(ran),
                }
            }
        }
        let [Some(remote), Some(messages), Some(through_redis)] = runs else {
            return Err("an exchange did not run".into());
        };
        check(&remote, &messages, &through_redis, args.points)?;
        let base = Summary::of(&through_redis.hist);
        for (mode, ours) in [("remote-invoke", &remote), ("messages", &messages)] {
            let mut record = Record::latency(
                "reduce",
                &info,
                k * PARTIAL * 8,
                args.warmup,
                &Summary::of(&ours.hist),
                "redis",
                &base,
            );
            record.mode = Some(mode);
            record.workers = Some(n as usize);
            record.points = Some(args.points);
            record.clusters = Some(k);
            reporter
                .push_measured(record, &ours.hist, Some(&through_redis.hist))
                .map_err(|e| format!("cannot print: {e}"))?;
        }
    }
    drop((app, redis));
    reporter.finish(&info).map_err(|e| format!("cannot print: {e}"))
}

/// The three exchanges computed the same: equal last sums, and counts that add up to the points.
fn check(remote: &Reduced, messages: &Reduced, redis: &Reduced, points: u64) -> Result<(), String> {
    if remote.sums != messages.sums || remote.sums != redis.sums {
        return Err("the three exchanges' last k-means sums differ: they must compute the same".into());
    }
    let counted: f64 = remote.sums.iter().skip(DIMS).step_by(PARTIAL).sum();
    if counted != points as f64 {
        return Err(format!("the k-means step counted {counted} points of {points}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_centroids_are_k_points_of_8_doubles() {
        let bytes = initial_centroids(3);
        assert_eq!(bytes.len(), 3 * DIMS * 8);
        assert_eq!(f64::from_le_bytes(bytes[..8].try_into().unwrap()), 0.5);
        assert_eq!(initial_centroids(3), bytes, "the same in every run");
    }

    #[test]
    fn a_reducer_output_splits_into_times_and_sums() {
        let mut bytes = Vec::new();
        for t in [5u64, 1000, 2000] {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        for i in 0..PARTIAL {
            bytes.extend_from_slice(&(i as f64).to_le_bytes());
        }
        let out = reduced(&bytes, 1, 3, 1, "test").unwrap();
        assert_eq!((out.hist.len(), out.hist.min() >= 999), (2, true));
        assert_eq!(out.sums[DIMS], 8.0);
        assert!(reduced(&bytes[..bytes.len() - 8], 1, 3, 1, "test").unwrap_err().contains("not 3 timings"));
        let counts = Reduced { hist: out.hist.clone(), sums: out.sums.clone() };
        assert!(check(&out, &counts, &counts, 8).is_ok());
        assert!(check(&out, &counts, &counts, 9).unwrap_err().contains("counted 8 points of 9"));
        let other = Reduced { hist: out.hist.clone(), sums: vec![0.0; PARTIAL] };
        assert!(check(&out, &counts, &other, 8).unwrap_err().contains("differ"));
    }
}
