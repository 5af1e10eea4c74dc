//! `praas`: the command-line tool. It parses arguments, calls the libraries, and maps errors to
//! exit codes: 0 success, 1 the operation failed (the message says why), 2 bad usage,
//! 3 a process refused by its control plane.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use praas_control::cli::{self, Api, ApiCallError};
use praas_control::logging::{self, LogFormat};
use praas_control::model::Resources;
use praas_control::process_main::{self, ProcessMainError, ServeOptions};
use praas_control::server::{self, ServerError};
use praas_control::{routes, ControlConfig};
use praas_dataplane::serve::ConnectionLimits;
use praas_dataplane::{ClientOptions, TransportKind};

/// praas: Process-as-a-Service for HPC clusters.
#[derive(Debug, Parser)]
#[command(name = "praas", version, about)]
struct Cli {
    /// The control plane's HTTP API (for app, process and invoke --app).
    #[arg(long, global = true, env = "PRAAS_CONTROL", default_value = "http://127.0.0.1:7000")]
    control: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    #[command(subcommand)]
    Control(ControlCommand),
    /// Manage applications.
    #[command(subcommand)]
    App(AppCommand),
    /// Manage cloud processes, or run one in the foreground (`serve`).
    #[command(subcommand)]
    Process(ProcessCommand),
    /// Invoke a function and print its output: directly on a process (`--process ADDR`) or
    /// through the control plane (`--app APP [--process NAME]`).
    Invoke(InvokeArgs),
}

#[derive(Debug, Subcommand)]
enum ControlCommand {
    /// Serve the control plane's API and control channel.
    Serve(Box<ControlServeArgs>),
}

#[derive(Debug, Args)]
struct ControlServeArgs {
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Address processes register on (default: the one used last time with this data folder).
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// Folder for the database, logs, process folders and the swap store.
    #[arg(long)]
    data_dir: PathBuf,
    /// Where processes run: local (child processes) or slurm (jobs or steps on a Slurm cluster).
    #[arg(long, default_value = "local")]
    backend: String,
    /// Slurm backend: job (one job per process) or pool (job steps in a standing allocation).
    #[arg(long, default_value = "job")]
    slurm_mode: praas_control::backend::SlurmMode,
    /// Slurm backend: partition (`--partition`).
    #[arg(long)]
    slurm_partition: Option<String>,
    /// Slurm backend: account (`--account`).
    #[arg(long)]
    slurm_account: Option<String>,
    /// Slurm backend: time limit of each job, or of the pool (`--time`).
    #[arg(long)]
    slurm_time: Option<String>,
    /// Slurm backend: node features required (`--constraint`).
    #[arg(long)]
    slurm_constraint: Option<String>,
    /// Slurm backend, pool mode: nodes of the standing allocation.
    #[arg(long, default_value_t = 1)]
    slurm_pool_nodes: u32,
    /// Slurm backend, pool mode: job name of the pool, reused while it runs (default: one per
    /// data folder, so a restarted control plane finds its pool).
    #[arg(long)]
    slurm_pool_name: Option<String>,
    /// Swap store root (a shared filesystem on a cluster); default DATA_DIR/swap.
    #[arg(long)]
    swap_dir: Option<PathBuf>,
    /// Swap out processes idle for this many milliseconds (0: never).
    #[arg(long, default_value_t = 0)]
    idle_swap_ms: u64,
    /// How often processes report metrics, in milliseconds.
    #[arg(long, default_value_t = 500)]
    metrics_ms: u64,
    /// How long a client of the HTTP API may take to send a request's header, in milliseconds,
    /// before its connection is closed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_ms: u64,
    /// How long an HTTP connection may stay idle (no request in flight, no byte moving), in
    /// milliseconds, before it is closed.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_ms: u64,
    /// HTTP connections open at once; one past it is answered 503 and closed at once (default:
    /// derived from the descriptor limit, which the control plane raises to its hard limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_http_connections: Option<u64>,
    /// Control-channel connections open at once; one past it is closed at once (default: derived
    /// from the descriptor limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_control_connections: Option<u64>,
    /// How long a control-channel connection may take to prove itself, in milliseconds, before it
    /// is closed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout_ms: u64,
    /// Routed invocations (`POST /apps/APP/invoke/FUNCTION`) in flight at once, each on a thread
    /// of their own pool; one past it is answered 503 at once (default: 1024, at most a quarter
    /// of the descriptor limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_invocations: Option<u64>,
    /// Lifecycle operations (create, swap, swap in, stop, delete) in flight at once; one past it
    /// is answered 503 at once.
    #[arg(long, default_value_t = server::DEFAULT_LIFECYCLE as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_lifecycle: u64,
    /// Processes also serve RDMA (`praas process serve --rdma-listen SPEC`): `auto` (each node's
    /// RDMA device address), an IP address, or IP:PORT. Their RDMA addresses are listed with
    /// the processes, and messages between processes go over RDMA.
    #[arg(long, env = "PRAAS_PROCESS_RDMA")]
    process_rdma: Option<String>,
    /// The data-plane transport its processes serve with (`praas process serve --transport`):
    /// uring, mio or auto (the default: io_uring where the kernel allows it).
    #[arg(long)]
    process_transport: Option<TransportKind>,
    /// Processes serve authenticated data-plane clients only: an SDK client presents its
    /// application's client key (`praas app client-key APP`); `praas invoke --direct` and the
    /// control plane's own invocations authenticate by themselves.
    #[arg(long, env = "PRAAS_CLIENT_AUTH")]
    client_auth: bool,
    /// A folder whose libraries manifests may name in place (repeatable); without one, every
    /// library is uploaded with its manifest (`praas app create` does).
    #[arg(long)]
    function_root: Vec<PathBuf>,
    /// Log lines as text or as JSON objects, on standard error (levels from RUST_LOG); the
    /// processes it starts log in the same format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "PRAAS_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// Create an application from a functions manifest.
    Create {
        /// Application name.
        name: String,
        /// TOML functions manifest; relative library paths resolve against its folder.
        #[arg(long)]
        manifest: PathBuf,
        #[command(flatten)]
        resources: ResourceArgs,
        #[command(flatten)]
        slurm: AppSlurmArgs,
        /// Do not upload the libraries: the control plane uses them where the manifest names
        /// them, inside one of its `--function-root` folders.
        #[arg(long)]
        in_place: bool,
    },
    /// List applications.
    List,
    /// Delete an application without processes.
    Delete {
        /// Application name.
        name: String,
    },
    /// Print the application's client key: what its data-plane clients authenticate with.
    ClientKey {
        /// Application name.
        name: String,
    },
}

/// Slurm settings of an application's processes (Slurm backend, job mode); unset ones take the
/// control plane's.
#[derive(Debug, Args)]
struct AppSlurmArgs {
    /// Slurm partition of its processes.
    #[arg(long = "slurm-partition")]
    partition: Option<String>,
    /// Slurm account of its processes.
    #[arg(long = "slurm-account")]
    account: Option<String>,
    /// Slurm time limit of each of its processes.
    #[arg(long = "slurm-time")]
    time_limit: Option<String>,
    /// Slurm node features its processes need.
    #[arg(long = "slurm-constraint")]
    constraint: Option<String>,
}

impl AppSlurmArgs {
    fn get(self) -> Option<praas_control::model::SlurmOptions> {
        let options = praas_control::model::SlurmOptions {
            partition: self.partition,
            account: self.account,
            time_limit: self.time_limit,
            constraint: self.constraint,
        };
        (options != praas_control::model::SlurmOptions::default()).then_some(options)
    }
}

#[derive(Debug, Args)]
struct ResourceArgs {
    /// vCPUs per process.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Memory per process, MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
}

impl ResourceArgs {
    fn get(&self) -> Option<Resources> {
        if self.vcpus.is_none() && self.memory_mb.is_none() {
            return None;
        }
        let default = Resources::default();
        Some(Resources {
            vcpus: self.vcpus.unwrap_or(default.vcpus),
            memory_mb: self.memory_mb.unwrap_or(default.memory_mb),
        })
    }
}

#[derive(Debug, Subcommand)]
enum ProcessCommand {
    /// Run a cloud process in the foreground, serving the functions of a manifest.
    Serve(Box<ServeArgs>),
    /// Create a process (answers once ALLOCATED).
    Create {
        /// Application.
        app: String,
        /// Process name.
        name: String,
        #[command(flatten)]
        resources: ResourceArgs,
    },
    /// List the processes of an application.
    List {
        /// Application.
        app: String,
    },
    /// Swap a process out to the swap store.
    Swap {
        /// Application.
        app: String,
        /// Process name.
        name: String,
    },
    /// Swap a process back in.
    Swapin {
        /// Application.
        app: String,
        /// Process name.
        name: String,
    },
    /// Per-function statistics of a process: invocations, errors, p50/p99/max latency since
    /// start and over the last metrics interval.
    Stats {
        /// Application.
        app: String,
        /// Process name.
        name: String,
    },
    /// Stop a process.
    Stop {
        /// Application.
        app: String,
        /// Process name.
        name: String,
    },
    /// Delete a stopped, failed or swapped-out process and its swap data.
    Delete {
        /// Application.
        app: String,
        /// Process name.
        name: String,
        /// Delete also a swapped-out process, whose snapshot (its only state) goes with it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML manifest listing the functions (name, library, symbol, mode).
    #[arg(long)]
    manifest: PathBuf,
    /// Log lines as text or as JSON objects, on standard error (levels from RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "PRAAS_LOG_FORMAT")]
    log_format: LogFormat,
    /// Also serve this process's own metrics (Prometheus text format) at `GET /metrics` on this
    /// address, e.g. 127.0.0.1:9464 (port 0: a free one, printed). Unauthenticated and
    /// read-only: give it an address only trusted scrapers reach.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Threads of the worker pool.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Process id.
    #[arg(long, default_value = "process-0")]
    id: String,
    /// Application.
    #[arg(long, default_value = "default")]
    app: String,
    /// Default deadline of an invocation in milliseconds (0: none).
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// Largest frame accepted or produced, in bytes.
    #[arg(long, default_value_t = praas_dataplane::protocol::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Bytes of buffers the process may hand out at once.
    #[arg(long, default_value_t = praas_dataplane::buffer::DEFAULT_BUDGET)]
    buffer_budget: usize,
    /// Data-plane transport: uring (io_uring), mio (epoll), or auto: io_uring where the kernel
    /// allows it, else mio (logged once).
    #[arg(long, default_value = "auto")]
    transport: TransportKind,
    /// Also serve over RDMA verbs: `auto` (the address of the RDMA device, `PRAAS_RDMA_DEVICE` or
    /// the first with one), an IP address or IP:PORT (port 0 or none: a free port, printed on
    /// start). Clients use rdma://HOST:PORT; messages to other processes that serve RDMA go over it.
    #[cfg(feature = "rdma")]
    #[arg(long)]
    rdma_listen: Option<String>,
    /// Serve invocations only on connections that authenticated with the application's client
    /// key (needs the secret).
    #[arg(long)]
    client_auth: bool,
    /// The control plane's control channel to register with (HOST:PORT).
    #[arg(long)]
    control_channel: Option<SocketAddr>,
    /// A file holding the application's secret (surrounding whitespace is dropped). Without it
    /// the secret comes from the environment variable PRAAS_SECRET, never from the command line;
    /// absent or empty: the process has none and refuses every peer and authenticated client.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Root of the swap store.
    #[arg(long)]
    swap_dir: Option<PathBuf>,
    /// The process's state files, swapped with it.
    #[arg(long)]
    files_dir: Option<PathBuf>,
    /// Start from the process's snapshot in the swap store.
    #[arg(long)]
    restore: bool,
    /// CPUs to run on (comma-separated list).
    #[arg(long)]
    cpus: Option<String>,
    /// Address-space limit in MiB (RLIMIT_AS).
    #[arg(long)]
    memory_mb: Option<u64>,
    /// How often metrics go to the control plane, in milliseconds.
    #[arg(long, default_value_t = 500)]
    metrics_ms: u64,
    /// Data-plane connections the process serves at once (more are refused with an error frame).
    #[arg(long, default_value_t = ConnectionLimits::default().max_connections)]
    max_connections: usize,
    /// Data-plane connections one source address may hold at once.
    #[arg(long, default_value_t = ConnectionLimits::default().max_per_source)]
    max_connections_per_source: usize,
    /// A data-plane connection with nothing in flight that sends nothing for this many
    /// milliseconds is closed.
    #[arg(long, default_value_t = ConnectionLimits::default().idle_timeout.as_millis() as u64)]
    idle_timeout_ms: u64,
    /// A frame begun whose bytes stop arriving for this many milliseconds (a stalled header or
    /// body) is refused and its connection closed; a frame that keeps arriving is never cut.
    #[arg(long, default_value_t = ConnectionLimits::default().header_timeout.as_millis() as u64)]
    header_timeout_ms: u64,
}

impl ServeArgs {
    fn options(self) -> ServeOptions {
        ServeOptions {
            manifest: self.manifest,
            listen: self.listen,
            workers: self.workers,
            id: self.id,
            app: self.app,
            default_timeout: (self.timeout_ms > 0).then(|| Duration::from_millis(self.timeout_ms)),
            max_frame: self.max_frame,
            buffer_budget: self.buffer_budget,
            transport: self.transport,
            #[cfg(feature = "rdma")]
            rdma_listen: self.rdma_listen,
            client_auth: self.client_auth,
            control_channel: self.control_channel,
            secret_file: self.secret_file,
            swap_dir: self.swap_dir,
            files_dir: self.files_dir,
            restore: self.restore,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            metrics_interval: Duration::from_millis(self.metrics_ms.max(10)),
            metrics_listen: self.metrics_listen,
            connection_limits: ConnectionLimits {
                max_connections: self.max_connections.max(1),
                max_per_source: self.max_connections_per_source.max(1),
                idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
                header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            },
        }
    }
}

#[derive(Debug, Args)]
struct InvokeArgs {
    /// Without --app: the data-plane address of the process (HOST:PORT, or rdma://HOST:PORT for
    /// the RDMA transport). With --app: a process name.
    #[arg(long)]
    process: Option<String>,
    /// Invoke through the control plane, on a process of this application.
    #[arg(long)]
    app: Option<String>,
    /// Function to invoke.
    function: String,
    /// Input: TEXT as given, @FILE for a file's bytes, - for standard input.
    #[arg(long, default_value = "")]
    input: String,
    /// How long to wait for the result, in milliseconds; also the process's deadline.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u32,
    /// How the client moves bytes: uring (io_uring), mio (plain blocking calls), or auto.
    #[arg(long, default_value = "auto")]
    transport: TransportKind,
    /// With --app and --process NAME: look the process up and invoke it directly on its data
    /// plane, over RDMA where it serves RDMA, else over TCP (the fast path, as the SDK takes it).
    #[arg(long, requires_all = ["app", "process"])]
    direct: bool,
    /// With a data-plane address (--process HOST:PORT): authenticate as a client of application
    /// APP with its client key, read from FILE holding `APP:KEY` (`praas app client-key APP`
    /// prints the key), or from the environment variable PRAAS_CLIENT_CREDENTIALS=APP:KEY; never
    /// on the command line, where `ps` would show it. --direct fetches the key by itself.
    #[arg(long, value_name = "FILE", conflicts_with = "app")]
    credentials_file: Option<PathBuf>,
}

/// The `APP:KEY` a data-plane client authenticates with: from `--credentials-file`, else from
/// `PRAAS_CLIENT_CREDENTIALS`.
fn given_credentials(file: Option<&std::path::Path>) -> Result<Option<praas_dataplane::Credentials>, Failure> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| Failure::CredentialsFile { path: path.to_owned(), source })?,
        None => match std::env::var("PRAAS_CLIENT_CREDENTIALS") {
            Ok(text) if !text.is_empty() => text,
            _ => return Ok(None),
        },
    };
    let (app, key) = text.trim().split_once(':').ok_or(Failure::BadCredentials)?;
    Ok(Some(praas_dataplane::Credentials { app: app.into(), name: "praas-cli".into(), key: key.into() }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Control(ControlCommand::Serve(args)) => args.log_format,
        Command::Process(ProcessCommand::Serve(args)) => args.log_format,
        _ => LogFormat::Text,
    };
    if let Err(e) = logging::init(log_format) {
        eprintln!("praas: {e}");
        return ExitCode::from(1);
    }
    let api = || Api::new(&cli.control, Duration::from_secs(600));
    let json = cli.json;
    let result = match cli.command {
        Command::Control(ControlCommand::Serve(args)) => control_serve(*args),
        Command::App(command) => app(&api(), command, json),
        Command::Process(ProcessCommand::Serve(args)) => process_main::serve(args.options()).map_err(Failure::from),
        Command::Process(command) => process(&api(), command, json),
        Command::Invoke(args) => invoke(&api(), args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("praas: {failure}");
            ExitCode::from(if matches!(failure, Failure::Refused(_)) { 3 } else { 1 })
        }
    }
}

/// Why a command failed: `main` prints it and exits with 3 for [`Failure::Refused`], else 1.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The control plane refused this process (its words).
    #[error("refused by the control plane: {0}")]
    Refused(String),
    /// A call of the control plane's HTTP API failed.
    #[error(transparent)]
    Api(#[from] ApiCallError),
    /// The Slurm backend could not start.
    #[error(transparent)]
    Slurm(#[from] praas_control::backend::SlurmError),
    /// A cloud process could not start, or stopped serving.
    #[error(transparent)]
    Process(ProcessMainError),
    /// The control plane could not start, or stopped serving.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The path of this binary is unknown.
    #[error("cannot find the praas binary: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// `--backend` names no backend.
    #[error("unknown backend {0:?} (available: local, slurm)")]
    UnknownBackend(String),
    /// A `--function-root` cannot be resolved.
    #[error("--function-root {}: {source}", path.display())]
    FunctionRoot { path: PathBuf, source: std::io::Error },
    /// The `--credentials-file` cannot be read.
    #[error("--credentials-file {}: {source}", path.display())]
    CredentialsFile { path: PathBuf, source: std::io::Error },
    /// The client credentials are not `APP:KEY`.
    #[error("client credentials are APP:KEY")]
    BadCredentials,
    /// The input (`-`) cannot be read from standard input.
    #[error("cannot read standard input: {0}")]
    Stdin(#[source] std::io::Error),
    /// The input file (`@PATH`) cannot be read.
    #[error("cannot read {path}: {source}")]
    InputFile { path: String, source: std::io::Error },
    /// `--direct` to a process without a data-plane address.
    #[error("process {app}/{name} is {} and has no data-plane address", status.name())]
    NoDataAddress { app: String, name: String, status: praas_control::model::ProcessStatus },
    /// `invoke` without a process or an application.
    #[error("say where: --process ADDR, or --app APP [--process NAME]")]
    NoTarget,
    /// The control plane's answer holds no client key.
    #[error("the control plane sent no client key")]
    NoClientKey,
    /// The process's data plane cannot be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: praas_dataplane::ClientError },
    /// The invocation failed.
    #[error("{function}: {source}")]
    Invoke { function: String, source: praas_dataplane::ClientError },
    /// Writing to standard output failed.
    #[error("{0}")]
    Output(#[source] std::io::Error),
}

impl From<ProcessMainError> for Failure {
    fn from(e: ProcessMainError) -> Self {
        match e {
            ProcessMainError::Refused(reason) => Failure::Refused(reason),
            other => Failure::Process(other),
        }
    }
}

fn control_serve(args: ControlServeArgs) -> Result<(), Failure> {
    let praas = std::env::current_exe().map_err(Failure::CurrentExe)?;
    let backend: Box<dyn praas_control::backend::Backend> = match args.backend.as_str() {
        "local" => Box::new(praas_control::backend::LocalBackend::new(praas)),
        "slurm" => Box::new(praas_control::backend::SlurmBackend::new(
            praas,
            praas_control::backend::SlurmConfig {
                mode: args.slurm_mode,
                partition: args.slurm_partition,
                account: args.slurm_account,
                time_limit: args.slurm_time,
                constraint: args.slurm_constraint,
                pool_nodes: args.slurm_pool_nodes,
                pool_name: Some(
                    args.slurm_pool_name.unwrap_or_else(|| praas_control::backend::default_pool_name(&args.data_dir)),
                ),
            },
        )?),
        other => return Err(Failure::UnknownBackend(other.to_owned())),
    };
    let mut config = ControlConfig::new(&args.data_dir);
    if let Some(swap) = args.swap_dir {
        config.swap_dir = swap;
    }
    config.idle_swap = (args.idle_swap_ms > 0).then(|| Duration::from_millis(args.idle_swap_ms));
    config.metrics_interval = Duration::from_millis(args.metrics_ms.max(10));
    config.process_rdma = args.process_rdma;
    config.process_transport = args.process_transport.map(|kind| kind.to_string());
    config.client_auth = args.client_auth;
    config.log_format = args.log_format;
    config.header_timeout = Duration::from_millis(args.header_timeout_ms);
    for root in &args.function_root {
        let canonical = root.canonicalize().map_err(|source| Failure::FunctionRoot { path: root.clone(), source })?;
        config.function_roots.push(canonical);
    }
    let descriptors = server::raise_descriptor_limit(None).unwrap_or_else(|e| {
        tracing::warn!("cannot raise the descriptor limit ({e}): limits derived from 1024 descriptors");
        1024
    });
    let mut limits = server::Limits::for_descriptors(descriptors);
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if let Some(n) = args.max_http_connections {
        limits.http_connections = count(n);
    }
    if let Some(n) = args.max_control_connections {
        limits.control_connections = count(n);
    }
    if let Some(n) = args.max_invocations {
        limits.invocations = count(n);
    }
    limits.lifecycle = count(args.max_lifecycle);
    limits.idle_timeout = Duration::from_millis(args.idle_timeout_ms);
    limits.handshake_timeout = Duration::from_millis(args.handshake_timeout_ms);
    tracing::info!(
        descriptors,
        http_connections = limits.http_connections,
        control_connections = limits.control_connections,
        invocations = limits.invocations,
        lifecycle = limits.lifecycle,
        "limits"
    );
    let server = server::bind_backend(config, backend, args.listen, args.control_listen, limits)?;
    // Scripts read this line to learn the ports.
    println!("control plane on http://{} (processes register on {})", server.http_addr(), server.control_addr);
    std::io::stdout().flush().map_err(Failure::Output)?;
    Ok(server.run()?)
}

fn print<T: serde::Serialize>(
    value: &T,
    json: bool,
    table: impl FnOnce(&T, &mut std::io::StdoutLock) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let written = if json { cli::print_json(value, &mut out) } else { table(value, &mut out) };
    written.map_err(Failure::Output)
}

fn app(api: &Api, command: AppCommand, json: bool) -> Result<(), Failure> {
    match command {
        AppCommand::Create { name, manifest, resources, slurm, in_place } => {
            let app = cli::app_create_with(api, &name, &manifest, resources.get(), slurm.get(), !in_place)?;
            print(&app, json, |a, out| cli::print_apps(std::slice::from_ref(a), out))
        }
        AppCommand::List => {
            let apps: Vec<praas_control::controller::AppView> = api.get(&routes::apps())?;
            print(&apps, json, |a, out| cli::print_apps(a, out))
        }
        AppCommand::Delete { name } => {
            let answer: serde_json::Value = api.delete(&routes::app(&name))?;
            print(&answer, json, |_, out| writeln!(out, "deleted application {name}"))
        }
        AppCommand::ClientKey { name } => {
            let answer: serde_json::Value = api.get(&routes::client_key(&name))?;
            print(&answer, json, |a, out| writeln!(out, "{}", a["client_key"].as_str().unwrap_or_default()))
        }
    }
}

fn process(api: &Api, command: ProcessCommand, json: bool) -> Result<(), Failure> {
    let one = |record: praas_control::model::ProcessRecord| {
        print(&record, json, |r, out| cli::print_processes(std::slice::from_ref(r), out))
    };
    match command {
        ProcessCommand::Serve(_) => unreachable!("handled in main"),
        ProcessCommand::Create { app, name, resources } => one(cli::process_create(api, &app, &name, resources.get())?),
        ProcessCommand::List { app } => {
            let processes: Vec<praas_control::model::ProcessRecord> = api.get(&routes::processes(&app))?;
            print(&processes, json, |p, out| cli::print_processes(p, out))
        }
        ProcessCommand::Swap { app, name } => one(cli::process_swap(api, &app, &name, !json)?),
        ProcessCommand::Swapin { app, name } => one(api.post(&routes::swap_in(&app, &name))?),
        ProcessCommand::Stop { app, name } => one(api.post(&routes::stop(&app, &name))?),
        ProcessCommand::Stats { app, name } => {
            let stats: Vec<praas_control::metrics::FunctionStats> = api.get(&routes::stats(&app, &name))?;
            print(&stats, json, |s, out| cli::print_function_stats(s, out))
        }
        ProcessCommand::Delete { app, name, force } => {
            let path = routes::process(&app, &name);
            let answer: serde_json::Value = api.delete(&if force { format!("{path}?force=true") } else { path })?;
            print(&answer, json, |_, out| writeln!(out, "deleted process {app}/{name}"))
        }
    }
}

fn read_input(spec: &str) -> Result<Vec<u8>, Failure> {
    if spec == "-" {
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input).map_err(Failure::Stdin)?;
        Ok(input)
    } else if let Some(path) = spec.strip_prefix('@') {
        std::fs::read(path).map_err(|source| Failure::InputFile { path: path.to_owned(), source })
    } else {
        Ok(spec.as_bytes().to_vec())
    }
}

fn invoke(api: &Api, args: InvokeArgs) -> Result<(), Failure> {
    let input = read_input(&args.input)?;
    let invoke_failure = |source| Failure::Invoke { function: args.function.clone(), source };
    let direct = match (&args.app, &args.process) {
        (Some(app), Some(name)) if args.direct => {
            let record: praas_control::model::ProcessRecord = api.get(&routes::process(app, name))?;
            let rdma = record.rdma_addr.as_ref().filter(|_| cfg!(feature = "rdma")).map(|a| format!("rdma://{a}"));
            Some(rdma.or(record.data_addr).ok_or_else(|| Failure::NoDataAddress {
                app: app.clone(),
                name: name.clone(),
                status: record.status,
            })?)
        }
        (Some(_), _) => None,
        (None, Some(addr)) => Some(addr.clone()),
        (None, None) => return Err(Failure::NoTarget),
    };
    let credentials = match &args.app {
        Some(app) if direct.is_some() => {
            let answer: serde_json::Value = api.get(&routes::client_key(app))?;
            let key = answer["client_key"].as_str().ok_or(Failure::NoClientKey)?;
            Some(praas_dataplane::Credentials { app: app.clone(), name: "praas-cli".into(), key: key.into() })
        }
        Some(_) => None,
        None => given_credentials(args.credentials_file.as_deref())?,
    };
    let output = match (direct, &args.app) {
        (None, Some(app)) => api.invoke(app, &args.function, args.process.as_deref(), &input)?,
        (Some(addr), _) => {
            // `rdma://HOST:PORT` by RDMA, anything else by TCP.
            let options = ClientOptions {
                timeout: Duration::from_millis(args.timeout_ms.into()) + Duration::from_secs(1),
                invocation_timeout_ms: args.timeout_ms,
                transport: args.transport,
                credentials,
                ..ClientOptions::default()
            };
            let mut client = praas_dataplane::connect_invoker(&addr, options)
                .map_err(|source| Failure::Connect { addr: addr.clone(), source })?;
            client.invoke(&args.function, &input).map_err(invoke_failure)?
        }
        (None, None) => unreachable!("handled above"),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&output).and_then(|()| stdout.flush()).map_err(Failure::Output)
}
