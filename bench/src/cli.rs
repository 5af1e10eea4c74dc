//! Command-line arguments, and the iteration counts that follow from them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Largest payload a size may ask for: a praas frame holds the function name and the input.
pub const MAX_SIZE: usize = praas_dataplane::protocol::DEFAULT_MAX_FRAME - 64;

/// praas-bench: praas microbenchmarks, each against a baseline measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "praas-bench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Round trips, throughput and local invocations of `echo`, against raw TCP ping-pong.
    Invoke(InvokeArgs),
    /// Swap-out and swap-in of state, against a plain write and read of the same bytes.
    Swap(SwapArgs),
    /// Process-to-process put/get round trips, against raw TCP ping-pong.
    Message(MessageArgs),
    /// A function on process A invoking `echo` on process B (timed inside A), against raw TCP
    /// ping-pong; and fan-outs to 1, 4 and 16 processes, against one remote invocation.
    RemoteInvoke(RemoteInvokeArgs),
    /// A k-means step over N worker processes holding their points in state, gathered by one
    /// reducer by remote invocation and by messages, against the same step through Redis.
    Reduce(ReduceArgs),
    /// Create-to-ALLOCATED latency on the local and Slurm backends, against `srun -n1 true`.
    Allocate(AllocateArgs),
    /// `GET /apps` with routed invocations of a sleeping function in flight, against the same
    /// `GET /apps` on the idle control plane.
    ApiLoad(ApiLoadArgs),
    /// What recording per-function statistics costs an inline invocation: round trips of the same
    /// binary with the recording on against off, pass against pass, and instructions per
    /// invocation counted by callgrind.
    StatsCost(StatsCostArgs),
    /// The GIL: throughput of a CPU-bound Python function on 1, 2 and 4 workers under pipelined
    /// load, beside a CPU-bound C ABI function's on the same processes, each against its own
    /// one-worker rate and the ideal scaling.
    PythonGil(PythonGilArgs),
    /// A legitimate client's 8 B echo round trips during floods of connections (10,000 idle,
    /// 10,000 half-open, 1,000 announcing 64 MiB frames), against the same process idle just
    /// before; the server's resident memory before, during and after, and how soon it is back.
    Flood(FloodArgs),
    /// (internal) Inline invocations straight through the dispatcher (what callgrind counts).
    #[command(hide = true)]
    DispatchLoop(DispatchLoopArgs),
    /// (internal) Serve a praas process on 127.0.0.1:0 until stdin closes.
    #[command(hide = true)]
    ServePraas(ServePraasArgs),
    /// (internal) Serve the raw TCP echo baseline on 127.0.0.1:0 until stdin closes.
    #[command(hide = true)]
    ServeRaw(ServeRawArgs),
}

/// Where a subcommand's results go, besides the table: the options every subcommand takes.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// One JSON object per line on stdout (logs go to stderr) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write SVG figures of the results into this folder (created if missing): latency
    /// CDFs, p50/p99 against size, throughput against in-flight count, swap throughput.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

/// The data-plane transport under test, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// TCP over mio (epoll) on the server, plain blocking calls in the client.
    #[value(alias = "mio")]
    Tcp,
    /// TCP over io_uring on the server and in the client.
    Uring,
    /// RDMA verbs (feature `rdma`), against perftest's ib_send_lat and ib_write_lat; run alone.
    Rdma,
}

impl TransportKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Uring => "uring",
            Self::Rdma => "rdma",
        }
    }

    /// The data plane's name for it (never `Auto`: a benchmark says what it measures).
    pub fn dataplane(self) -> praas_dataplane::transport::TransportKind {
        match self {
            Self::Tcp => praas_dataplane::transport::TransportKind::Mio,
            Self::Uring => praas_dataplane::transport::TransportKind::Uring,
            Self::Rdma => unreachable!("the RDMA benchmark (bench/src/rdma.rs) has its own server and client"),
        }
    }
}

/// Where the measured `echo` runs in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InvokeMode {
    /// `echo`, run on the I/O thread that received the request.
    Inline,
    /// `echo_worker` (the same `echo` symbol), run on the process's worker pool.
    Worker,
}

impl InvokeMode {
    /// Its name in reports (the `mode` field of `invoke` lines).
    pub fn name(self) -> &'static str {
        match self {
            Self::Inline => "inline",
            Self::Worker => "worker",
        }
    }

    /// The function invoked in this mode.
    pub fn function(self) -> &'static str {
        match self {
            Self::Inline => "echo",
            Self::Worker => crate::functions::ECHO_WORKER,
        }
    }

    /// The C no-op and the Python no-op in this mode (`invoke --python`).
    pub fn noops(self) -> [&'static str; 2] {
        use crate::functions::{NOOP_WORKER, PY_NOOP, PY_NOOP_WORKER};
        match self {
            Self::Inline => ["noop", PY_NOOP],
            Self::Worker => [NOOP_WORKER, PY_NOOP_WORKER],
        }
    }
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Pin the server to CPU 1 and the client to CPU 0 (default: both on CPU 0).
    #[arg(long)]
    pub split: bool,
    /// Payload sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_values_t = [8, 1024, 65536, 1048576])]
    pub sizes: Vec<usize>,
    /// Measured iterations of every size, local invocation and throughput run (default: by size).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// Warm-up iterations of every size, local invocation and throughput run (default: by size).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Data-plane transports, comma-separated (`uring,mio`: both in one run, each beside its own
    /// raw TCP baseline, plus io_uring's throughput against mio's).
    #[arg(long = "transport", value_enum, value_delimiter = ',', default_values_t = [TransportKind::Tcp])]
    pub transports: Vec<TransportKind>,
    /// Execution modes of the round-trip runs, comma-separated (`inline,worker`: each size's
    /// round trips of the inline `echo` and of the worker-mode `echo_worker` in one run, each
    /// beside its own raw TCP baseline, their lines carrying `mode`). Default: inline only, and
    /// the lines carry no `mode`. Throughput and local runs are always inline.
    #[arg(long = "mode", value_enum, value_delimiter = ',')]
    pub modes: Option<Vec<InvokeMode>>,
    /// Also the round trips of the C no-op (`noop`, `noop_worker`) and of the Python no-op
    /// (`py_noop`, `py_noop_worker`) per size and mode, each beside its own raw TCP baseline, in
    /// passes that alternate between them, and a `python-vs-c` line of the Python one against the
    /// C one (`ratio_p50`, `added_ns`). Implies `--mode inline,worker` unless `--mode` is given.
    /// Needs the `python` feature and examples/python/functions.py.
    #[arg(long)]
    pub python: bool,
    /// Invocations in flight on one connection for the throughput runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 64],
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub in_flight: Vec<u64>,
    /// Payload sizes of the local-invocation runs, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_values_t = [8, 1024])]
    pub local_sizes: Vec<usize>,
    /// Seconds to wait for any response or server before giving up.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
    /// Clients (praas's and the raw baseline's alike) poll their socket this many microseconds
    /// before blocking on an answer (`ClientOptions::spin`; default 0: block at once).
    #[arg(long, default_value_t = 0)]
    pub client_spin_us: u64,
    /// Run the praas server under this command (e.g. "strace -c -f -o /tmp/praas.strace").
    #[arg(long, hide = true)]
    pub wrap_praas: Option<String>,
    /// Run the raw TCP server under this command.
    #[arg(long, hide = true)]
    pub wrap_raw: Option<String>,
}

#[derive(Debug, Args)]
pub struct SwapArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Bytes of state, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1 << 20, 64 << 20, 256 << 20, 1 << 30])]
    pub sizes: Vec<u64>,
    /// Folder on the filesystem under test (default: a temporary folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub reps: u64,
}

#[derive(Debug, Args)]
pub struct MessageArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Wire between the two processes: tcp (the processes serve over mio) or uring (over
    /// io_uring), both against raw TCP and puts over TCP; or rdma (feature `rdma`: the
    /// processes serve RDMA and put over it, against perftest's ib_send_lat; needs
    /// PRAAS_RDMA_DEVICE and PRAAS_RDMA_ADDR, as in the SoftRoCE VM: scripts/bench-rdma.sh message).
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// Pin the processes to CPU 1 and the client to CPU 0 (default: all on CPU 0).
    #[arg(long)]
    pub split: bool,
    /// Message sizes in bytes, comma-separated (default: 8, 1024, 65536, 1048576; with
    /// `--redis` the paper's 10, 1024, 102400, 1048576, 5242880).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// Also carry the same ping-pong through a real redis-server (LPUSH/BLPOP, started on a free
    /// loopback port with persistence off, stopped at the end): a line against Redis beside each
    /// line against raw TCP. Fails if redis-server is not installed (scripts/setup.sh installs it).
    #[arg(long)]
    pub redis: bool,
    /// Measured round trips of every size (default: by size).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// Warm-up round trips of every size (default: by size).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Seconds to wait for any response or server before giving up.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct RemoteInvokeArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Transport the processes serve with: tcp (mio) or uring (the calls go over blocking TCP
    /// either way).
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// Pin the callees (and the raw echo server) to CPU 1, the caller (and the raw client) to CPU
    /// 0 (default: all on CPU 0).
    #[arg(long)]
    pub split: bool,
    /// Payload sizes of the single calls, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_values_t = [8, 1024, 65536, 1048576])]
    pub sizes: Vec<usize>,
    /// Fan-outs, comma-separated: processes invoked at once per round.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16],
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub fan_out: Vec<u64>,
    /// Payload bytes of the fan-out calls.
    #[arg(long, default_value_t = 8, value_parser = parse_size)]
    pub fan_out_size: usize,
    /// Measured calls (rounds) of every size and fan-out (default: by size).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// Warm-up calls (rounds) of every size and fan-out (default: by size).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Seconds to wait for any response or server before giving up.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

impl RemoteInvokeArgs {
    /// Warm-up and measured calls of one size.
    pub fn counts(&self, size: usize) -> (u64, u64) {
        let iters = self.iters.unwrap_or(match size {
            0..=1024 => 5000,
            1025..=65536 => 1000,
            _ => 200,
        });
        (self.warmup.unwrap_or((iters / 10).max(20)), iters)
    }
}

#[derive(Debug, Args)]
pub struct ReduceArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Transport the processes serve with: tcp (mio) or uring.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// Worker processes, comma-separated: one run of each count.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8],
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: Vec<u64>,
    /// Points of the data set (8 doubles each), split evenly among the workers.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub points: u64,
    /// Clusters (centroids) of the k-means step.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub clusters: u64,
    /// Passes per worker count; each runs every exchange, rotating which goes first.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub passes: u64,
    /// Measured iterations per pass, worker count and exchange.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Warm-up iterations before them, in every pass.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Seconds to wait for any response or server before giving up.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

/// The message sizes measured by default.
pub const MESSAGE_SIZES: [usize; 4] = [8, 1024, 65536, 1048576];
/// The message sizes measured by default against Redis (the PraaS paper's section 6.2).
pub const REDIS_SIZES: [usize; 5] = [10, 1024, 102400, 1048576, 5242880];

impl MessageArgs {
    /// The sizes to measure: those given, else the defaults ([`REDIS_SIZES`] with `--redis`).
    pub fn sizes(&self) -> Vec<usize> {
        match (self.sizes.is_empty(), self.redis) {
            (false, _) => self.sizes.clone(),
            (true, false) => MESSAGE_SIZES.to_vec(),
            (true, true) => REDIS_SIZES.to_vec(),
        }
    }
}

#[derive(Debug, Args)]
pub struct AllocateArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Backends, comma-separated: local, slurm-job, slurm-pool (Slurm: the cluster of SLURM_CONF).
    #[arg(long, value_delimiter = ',', default_values_t = ["local".to_string(), "slurm-job".into(), "slurm-pool".into()])]
    pub backends: Vec<String>,
    /// Measured allocations per backend (and `srun -n1 true` runs).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Warm-up allocations per backend.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Nodes of the pool (slurm-pool).
    #[arg(long, default_value_t = 1)]
    pub slurm_pool_nodes: u32,
}

#[derive(Debug, Args)]
pub struct ApiLoadArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Routed invocations in flight during the loaded measurement.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub in_flight: u64,
    /// How long each routed invocation sleeps, in milliseconds (longer than the measurement).
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sleep_ms: u64,
    /// Measured `GET /apps` of each side.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// `GET /apps` dropped before the measured ones, on each side.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Memory limit of the process the invocations wait at, MiB.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..))]
    pub process_memory_mb: u64,
}

#[derive(Debug, Args)]
pub struct ServePraasArgs {
    /// Manifest of the functions to serve.
    #[arg(long)]
    pub manifest: PathBuf,
    /// CPU the whole server process is pinned to.
    #[arg(long)]
    pub cpu: usize,
    /// Data-plane transport to serve with.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// Process id.
    #[arg(long, default_value = "bench")]
    pub id: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// A peer of the same application, `ID=HOST:PORT` (repeatable).
    #[arg(long)]
    pub peer: Vec<String>,
    /// Record no per-function statistics (to measure what recording costs).
    #[arg(long)]
    pub no_function_stats: bool,
    /// Worker threads of the process (its worker-mode functions run on them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub workers: u64,
    /// Spread the server over every online CPU instead of pinning it to `--cpu` (`python-gil`:
    /// its workers must be free to run in parallel).
    #[arg(long)]
    pub all_cpus: bool,
    /// Connections one source address may hold (`flood`: all of its connections come from
    /// 127.0.0.1); default: the process's default.
    #[arg(long)]
    pub max_connections_per_source: Option<usize>,
    /// Connections the process serves at once; default: the process's default.
    #[arg(long)]
    pub max_connections: Option<usize>,
}

#[derive(Debug, Args)]
pub struct FloodArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Data-plane transports to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [TransportKind::Tcp, TransportKind::Uring])]
    pub transport: Vec<TransportKind>,
    /// Connections of the idle and half-open floods.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=18_000))]
    pub connections: u64,
    /// Connections of the flood announcing 64 MiB frames.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=18_000))]
    pub large_connections: u64,
    /// Measured round trips per phase (idle, flooded).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Warm-up round trips per phase.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: u64,
    /// Payload bytes of the round trips.
    #[arg(long, default_value_t = 8, value_parser = parse_size)]
    pub size: usize,
    /// Pin the server to CPU 1 and the client to CPU 0 (default: all on CPU 0).
    #[arg(long)]
    pub split: bool,
    /// Seconds to wait for any response, the flood's acceptance or memory to come back.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct PythonGilArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Data-plane transport of the invocations.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// Worker counts of the served processes, comma-separated (1 is always measured: it is every
    /// line's baseline).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4],
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub workers: Vec<u64>,
    /// Invocations in flight on the one pipelined connection (enough to keep every worker busy).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub in_flight: u64,
    /// Measured completions per function and worker count.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Completions dropped before the measured ones.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Iterations of the Python loop (`burn` in examples/python/functions.py) per invocation.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub python_work: u64,
    /// Bytes the C ABI reference (`fill` of the example library) generates, hashes and stores per
    /// invocation. Keep it well below malloc's mmap threshold (128 KiB): larger buffers are mapped
    /// and unmapped per invocation, and their page faults serialise the workers (200 KB scaled by
    /// 1.03 on 2 workers of a 2-vCPU VM where 50 KB scaled by 1.67).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=16_000_000))]
    pub c_work: u64,
    /// Seconds to wait for any response or server before giving up.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct StatsCostArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Data-plane transport of the round trips.
    #[arg(long, value_enum, default_value_t = TransportKind::Uring)]
    pub transport: TransportKind,
    /// Pin the servers to CPU 1 and the client to CPU 0 (default: all on CPU 0).
    #[arg(long)]
    pub split: bool,
    /// Payload bytes of the round trips.
    #[arg(long, default_value_t = 8, value_parser = parse_size)]
    pub size: usize,
    /// Passes; each measures both servers, alternating which goes first.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub passes: u64,
    /// Measured round trips per server and pass.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Warm-up round trips per server and pass.
    #[arg(long, default_value_t = 2_000)]
    pub warmup: u64,
    /// Invocations of the larger of the two runs callgrind counts per setting (the smaller runs a
    /// tenth as many).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub callgrind_iters: u64,
    /// Seconds to wait for any response or server before giving up.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct DispatchLoopArgs {
    /// Manifest of the functions (its inline `echo` is invoked).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Invocations.
    #[arg(long)]
    pub iters: u64,
    /// Record no per-function statistics.
    #[arg(long)]
    pub no_function_stats: bool,
}

#[derive(Debug, Args)]
pub struct ServeRawArgs {
    /// CPU the whole server process is pinned to.
    #[arg(long)]
    pub cpu: usize,
}

/// Parses one payload size in bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: usize = text.trim().parse().map_err(|_| format!("{text:?} is not a size in bytes"))?;
    if size > MAX_SIZE {
        return Err(format!("{size} bytes exceeds the largest payload of {MAX_SIZE} bytes"));
    }
    Ok(size)
}

/// Measured round trips of one size unless `--iters` says otherwise.
pub fn default_iters(size: usize) -> u64 {
    match size {
        0..=1024 => 20_000,
        1025..=65536 => 5_000,
        _ => 1_000,
    }
}

/// Warm-up round trips of one size unless `--warmup` says otherwise.
pub fn default_warmup(size: usize) -> u64 {
    if size <= 65536 {
        2_000
    } else {
        200
    }
}

/// Completions counted per throughput run, and dropped before it.
pub const THROUGHPUT_OPS: u64 = 50_000;
pub const THROUGHPUT_WARMUP: u64 = 5_000;
/// Local invocations per `local_loop` call, and in the warm-up call before it.
pub const LOCAL_ITERS: u64 = 20_000;
pub const LOCAL_WARMUP: u64 = 2_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke(args: &[&str]) -> Result<InvokeArgs, clap::Error> {
        let cli = Cli::try_parse_from(["praas-bench", "invoke"].iter().chain(args))?;
        match cli.command {
            Command::Invoke(args) => Ok(args),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn sizes_default_to_the_four_standard_sizes() {
        let args = invoke(&[]).unwrap();
        assert_eq!(args.sizes, [8, 1024, 65536, 1048576]);
        assert_eq!(args.in_flight, [1, 8, 64]);
        assert_eq!(args.local_sizes, [8, 1024]);
        assert!(!args.output.json && !args.split && args.output.plot.is_none());
        assert_eq!(args.transports, [TransportKind::Tcp]);
        assert_eq!((args.iters, args.warmup), (None, None));
        assert_eq!(args.modes, None);
        assert!(!args.python);
    }

    #[test]
    fn remote_invoke_and_reduce_options_parse() {
        let cli = Cli::try_parse_from(["praas-bench", "remote-invoke"]).unwrap();
        let Command::RemoteInvoke(args) = cli.command else { panic!("parsed {cli:?}") };
        assert_eq!((args.sizes.as_slice(), args.fan_out.as_slice()), (&[8, 1024, 65536, 1048576][..], &[1, 4, 16][..]));
        assert_eq!((args.counts(8), args.counts(1 << 20)), ((500, 5000), (20, 200)));
        let cli = Cli::try_parse_from(["praas-bench", "remote-invoke", "--fan-out", "2,8", "--iters", "10"]).unwrap();
        let Command::RemoteInvoke(args) = cli.command else { panic!("parsed {cli:?}") };
        assert_eq!((args.fan_out.as_slice(), args.counts(8)), (&[2, 8][..], (20, 10)));
        assert!(Cli::try_parse_from(["praas-bench", "remote-invoke", "--fan-out", "0"]).is_err());
        let cli = Cli::try_parse_from(["praas-bench", "reduce"]).unwrap();
        let Command::Reduce(args) = cli.command else { panic!("parsed {cli:?}") };
        assert_eq!((args.workers.as_slice(), args.points, args.clusters), (&[1, 2, 4, 8][..], 100_000, 8));
        assert!(Cli::try_parse_from(["praas-bench", "reduce", "--workers", "0"]).is_err());
        assert!(Cli::try_parse_from(["praas-bench", "reduce", "--points", "0"]).is_err());
    }

    #[test]
    fn python_gil_options_parse() {
        let cli = Cli::try_parse_from(["praas-bench", "python-gil"]).unwrap();
        let Command::PythonGil(args) = cli.command else { panic!("parsed {cli:?}") };
        assert_eq!((args.workers, args.in_flight, args.iters), (vec![1, 2, 4], 16, 2_000));
        let cli = Cli::try_parse_from(["praas-bench", "python-gil", "--workers", "2,8", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::PythonGil(PythonGilArgs { ref workers, .. }) if workers == &[2, 8]));
        assert!(Cli::try_parse_from(["praas-bench", "python-gil", "--workers", "0"]).is_err());
        assert!(invoke(&["--python"]).unwrap().python);
    }

    #[test]
    fn modes_parse_comma_separated() {
        assert_eq!(
            invoke(&["--mode", "inline,worker"]).unwrap().modes,
            Some(vec![InvokeMode::Inline, InvokeMode::Worker])
        );
        assert_eq!(invoke(&["--mode=worker"]).unwrap().modes, Some(vec![InvokeMode::Worker]));
        assert!(invoke(&["--mode", "inline,fast"]).is_err());
        assert_eq!(InvokeMode::Worker.function(), "echo_worker");
        assert_eq!((InvokeMode::Inline.function(), InvokeMode::Inline.name()), ("echo", "inline"));
    }

    #[test]
    fn sizes_parse_comma_separated() {
        assert_eq!(invoke(&["--sizes", "8,64"]).unwrap().sizes, [8, 64]);
        assert_eq!(invoke(&["--sizes", "0"]).unwrap().sizes, [0]);
        assert_eq!(invoke(&["--sizes=1048576", "--json", "--split"]).unwrap().sizes, [1048576]);
        let plotted = invoke(&["--plot", "/tmp/figures", "--json"]).unwrap().output;
        assert_eq!((plotted.plot.as_deref(), plotted.json), (Some(std::path::Path::new("/tmp/figures")), true));
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(invoke(&["--sizes", "8,abc"]).is_err());
        assert!(invoke(&["--sizes", "-1"]).is_err());
        assert!(invoke(&["--sizes", &(MAX_SIZE + 1).to_string()]).is_err());
        assert_eq!(parse_size(" 42 "), Ok(42));
        assert!(parse_size("1k").unwrap_err().contains("not a size"));
    }

    #[test]
    fn counts_and_transport_are_checked() {
        assert!(invoke(&["--iters", "0"]).is_err());
        assert!(invoke(&["--in-flight", "0"]).is_err());
        assert_eq!(invoke(&["--transport", "rdma"]).unwrap().transports, [TransportKind::Rdma]);
        assert_eq!(invoke(&["--transport", "uring"]).unwrap().transports, [TransportKind::Uring]);
        assert_eq!(
            invoke(&["--transport", "uring,mio"]).unwrap().transports,
            [TransportKind::Uring, TransportKind::Tcp]
        );
        assert_eq!(
            invoke(&["--iters", "5", "--warmup", "0"]).map(|a| (a.iters, a.warmup)).unwrap(),
            (Some(5), Some(0))
        );
    }

    #[test]
    fn iteration_counts_follow_the_size() {
        assert_eq!(default_iters(8), 20_000);
        assert_eq!(default_iters(1024), 20_000);
        assert_eq!(default_iters(65536), 5_000);
        assert_eq!(default_iters(1 << 20), 1_000);
        assert_eq!(default_warmup(65536), 2_000);
        assert_eq!(default_warmup(1 << 20), 200);
    }

    #[test]
    fn hidden_server_commands_parse() {
        let cli = Cli::try_parse_from(["praas-bench", "serve-praas", "--manifest", "/m.toml", "--cpu", "1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::ServePraas(ServePraasArgs {
                cpu: 1,
                transport: TransportKind::Tcp,
                workers: 1,
                all_cpus: false,
                ..
            })
        ));
        let cli = Cli::try_parse_from([
            "praas-bench",
            "serve-praas",
            "--manifest",
            "m",
            "--cpu",
            "0",
            "--workers",
            "4",
            "--all-cpus",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::ServePraas(ServePraasArgs { workers: 4, all_cpus: true, .. })));
        let cli = Cli::try_parse_from([
            "praas-bench",
            "serve-praas",
            "--manifest",
            "m",
            "--cpu",
            "0",
            "--transport",
            "uring",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::ServePraas(ServePraasArgs { transport: TransportKind::Uring, .. })));
        let cli = Cli::try_parse_from(["praas-bench", "serve-raw", "--cpu", "0"]).unwrap();
        assert!(matches!(cli.command, Command::ServeRaw(ServeRawArgs { cpu: 0 })));
    }
}
