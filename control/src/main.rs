//! `praas`: the command-line tool. It parses arguments, calls the libraries, and maps errors to
//! exit codes: 0 success, 1 the operation failed (the message says why), 2 bad usage,
//! 3 a process refused by its control plane.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use praas_control::cli::{self, Api};
use praas_control::model::Resources;
use praas_control::{server, ControlConfig};
use praas_dataplane::control_channel::{run_control_link, ControlLinkOptions, LinkEnd};
use praas_dataplane::swap::SwapStore;
use praas_dataplane::{Client, ClientOptions, FunctionRegistry, Manifest, Process, ProcessConfig, TransportKind};

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
    Serve(ControlServeArgs),
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
    /// Processes also serve RDMA (`praas process serve --rdma-listen SPEC`): `auto` (each node's
    /// RDMA device address), an IP address, or IP:PORT. Their RDMA addresses are listed with
    /// the processes, and messages between processes go over RDMA.
    #[arg(long, env = "PRAAS_PROCESS_RDMA")]
    process_rdma: Option<String>,
    /// Processes serve authenticated data-plane clients only: an SDK client presents its
    /// application's client key (`praas app client-key APP`); `praas invoke --direct` and the
    /// control plane's own invocations authenticate by themselves.
    #[arg(long, env = "PRAAS_CLIENT_AUTH")]
    client_auth: bool,
    /// A folder whose libraries manifests may name in place (repeatable); without one, every
    /// library is uploaded with its manifest (`praas app create` does).
    #[arg(long)]
    function_root: Vec<PathBuf>,
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
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML manifest listing the functions (name, library, symbol, mode).
    #[arg(long)]
    manifest: PathBuf,
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
fn given_credentials(file: Option<&std::path::Path>) -> Result<Option<praas_dataplane::Credentials>, String> {
    let text = match file {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("--credentials-file {}: {e}", path.display()))?
        }
        None => match std::env::var("PRAAS_CLIENT_CREDENTIALS") {
            Ok(text) if !text.is_empty() => text,
            _ => return Ok(None),
        },
    };
    let (app, key) = text.trim().split_once(':').ok_or_else(|| "client credentials are APP:KEY".to_owned())?;
    Ok(Some(praas_dataplane::Credentials { app: app.into(), name: "praas-cli".into(), key: key.into() }))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let api = || Api::new(&cli.control, Duration::from_secs(600));
    let json = cli.json;
    let result = match cli.command {
        Command::Control(ControlCommand::Serve(args)) => control_serve(args),
        Command::App(command) => app(&api(), command, json),
        Command::Process(ProcessCommand::Serve(args)) => serve(*args),
        Command::Process(command) => process(&api(), command, json),
        Command::Invoke(args) => invoke(&api(), args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(message)) => {
            eprintln!("praas: refused by the control plane: {message}");
            ExitCode::from(3)
        }
        Err(Failure::Message(message)) => {
            eprintln!("praas: {message}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Message(String),
    Refused(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Message(message)
    }
}

fn control_serve(args: ControlServeArgs) -> Result<(), Failure> {
    let praas = std::env::current_exe().map_err(|e| format!("cannot find the praas binary: {e}"))?;
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
        other => return Err(format!("unknown backend {other:?} (available: local, slurm)").into()),
    };
    let mut config = ControlConfig::new(&args.data_dir);
    if let Some(swap) = args.swap_dir {
        config.swap_dir = swap;
    }
    config.idle_swap = (args.idle_swap_ms > 0).then(|| Duration::from_millis(args.idle_swap_ms));
    config.metrics_interval = Duration::from_millis(args.metrics_ms.max(10));
    config.process_rdma = args.process_rdma;
    config.client_auth = args.client_auth;
    for root in &args.function_root {
        let canonical = root.canonicalize().map_err(|e| format!("--function-root {}: {e}", root.display()))?;
        config.function_roots.push(canonical);
    }
    let server = server::bind_backend(config, backend, args.listen, args.control_listen).map_err(|e| e.to_string())?;
    // Scripts read this line to learn the ports.
    println!("control plane on http://{} (processes register on {})", server.http_addr(), server.control_addr);
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    server.run().map_err(|e| Failure::Message(e.to_string()))
}

fn print<T: serde::Serialize>(
    value: &T,
    json: bool,
    table: impl FnOnce(&T, &mut std::io::StdoutLock) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let written = if json { cli::print_json(value, &mut out) } else { table(value, &mut out) };
    written.map_err(|e| Failure::Message(e.to_string()))
}

fn app(api: &Api, command: AppCommand, json: bool) -> Result<(), Failure> {
    match command {
        AppCommand::Create { name, manifest, resources, slurm, in_place } => {
            let app = cli::app_create_with(api, &name, &manifest, resources.get(), slurm.get(), !in_place)?;
            print(&app, json, |a, out| cli::print_apps(std::slice::from_ref(a), out))
        }
        AppCommand::List => {
            let apps: Vec<praas_control::controller::AppView> = api.get("/apps")?;
            print(&apps, json, |a, out| cli::print_apps(a, out))
        }
        AppCommand::Delete { name } => {
            let answer: serde_json::Value = api.delete(&format!("/apps/{name}"))?;
            print(&answer, json, |_, out| writeln!(out, "deleted application {name}"))
        }
        AppCommand::ClientKey { name } => {
            let answer: serde_json::Value = api.get(&format!("/apps/{name}/client-key"))?;
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
            let processes: Vec<praas_control::model::ProcessRecord> = api.get(&format!("/apps/{app}/processes"))?;
            print(&processes, json, |p, out| cli::print_processes(p, out))
        }
        ProcessCommand::Swap { app, name } => one(cli::process_swap(api, &app, &name, !json)?),
        ProcessCommand::Swapin { app, name } => one(api.post(&format!("/apps/{app}/processes/{name}/swapin"))?),
        ProcessCommand::Stop { app, name } => one(api.post(&format!("/apps/{app}/processes/{name}/stop"))?),
        ProcessCommand::Delete { app, name } => {
            let answer: serde_json::Value = api.delete(&format!("/apps/{app}/processes/{name}"))?;
            print(&answer, json, |_, out| writeln!(out, "deleted process {app}/{name}"))
        }
    }
}

/// Applies CPU placement and the memory limit to this process before any thread starts.
fn apply_resources(cpus: Option<&str>, memory_mb: Option<u64>) -> Result<(), String> {
    if let Some(list) = cpus {
        let cpus: Vec<usize> = list
            .split(',')
            .map(|c| c.trim().parse().map_err(|_| format!("bad CPU {c:?} in --cpus")))
            .collect::<Result<_, _>>()?;
        // SAFETY: `set` is a plain bit set on the stack; sched_setaffinity reads
        // `size_of::<cpu_set_t>()` bytes from it and affects only this process.
        let status = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for cpu in &cpus {
                libc::CPU_SET(*cpu, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if status != 0 {
            return Err(format!("cannot pin to CPUs {list}: {}", std::io::Error::last_os_error()));
        }
    }
    if let Some(mb) = memory_mb {
        let bytes = mb.saturating_mul(1 << 20);
        let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
        // SAFETY: `limit` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
            return Err(format!("cannot limit memory to {mb} MiB: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    // The application's secret: the content of --secret-file (trimmed), else PRAAS_SECRET; never
    // a command-line value (others see command lines in `ps`). Absent or empty: none.
    let secret = match &args.secret_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?
            .trim()
            .to_owned(),
        None => match std::env::var("PRAAS_SECRET") {
            Ok(value) => value,
            Err(std::env::VarError::NotPresent) => String::new(),
            Err(std::env::VarError::NotUnicode(_)) => return Err("PRAAS_SECRET is not UTF-8".to_owned().into()),
        },
    };
    let secret = praas_dataplane::Secret::new(secret).ok();
    if secret.is_none() && args.control_channel.is_some() {
        return Err(Failure::Message(
            "--control-channel needs the application's secret (PRAAS_SECRET or --secret-file): none was given"
                .to_owned(),
        ));
    }
    apply_resources(args.cpus.as_deref(), args.memory_mb)?;
    let manifest = Manifest::from_file(&args.manifest).map_err(|e| e.to_string())?;
    let functions = FunctionRegistry::load(&manifest).map_err(|e| e.to_string())?;
    let config = ProcessConfig {
        id: args.id.clone(),
        app: args.app.clone(),
        secret,
        workers: args.workers,
        default_timeout: (args.timeout_ms > 0).then(|| Duration::from_millis(args.timeout_ms)),
        max_frame: args.max_frame,
        buffer_budget: args.buffer_budget,
        client_auth: args.client_auth,
        ..ProcessConfig::default()
    };
    let names = functions.names().join(", ");
    let process = Process::start(config, functions).map_err(|e| format!("cannot start the process: {e}"))?;
    let swap_store = args.swap_dir.as_ref().map(SwapStore::new);
    if args.restore {
        let store = swap_store.as_ref().ok_or_else(|| "--restore needs --swap-dir".to_owned())?;
        let snapshot = store.read(&args.app, &args.id).map_err(|e| format!("cannot swap in: {e}"))?;
        snapshot.restore_state(process.state());
        process.restore_mailbox(&snapshot.mailbox).map_err(|e| format!("cannot swap in the messages: {e}"))?;
        if let Some(files) = &args.files_dir {
            snapshot.restore_files(files).map_err(|e| format!("cannot swap in the state files: {e}"))?;
        }
        tracing::info!(keys = snapshot.state.len(), bytes = snapshot.manifest.bytes(), "swapped in");
    }
    let transport = praas_dataplane::transport::bind(args.transport, args.listen, Arc::clone(&process))
        .map_err(|e| format!("cannot listen on {} ({} transport): {e}", args.listen, args.transport))?;
    let server = transport.spawn().map_err(|e| format!("cannot start the transport: {e}"))?;
    // Scripts read this line to learn the port.
    println!("listening on {}", server.local_addr());
    #[cfg(feature = "rdma")]
    let rdma_server = match &args.rdma_listen {
        Some(spec) => serve_rdma(spec, &process)?,
        None => None,
    };
    #[cfg(feature = "rdma")]
    let rdma_addr = rdma_server.as_ref().map(|r| praas_control::backend::routable(r.local_addr()).to_string());
    #[cfg(not(feature = "rdma"))]
    let rdma_addr = None;
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    tracing::info!(process = process.id(), functions = %names, "serving");
    let Some(control_addr) = args.control_channel else {
        return server.join().map_err(|e| format!("transport failed: {e}").into());
    };
    let options = ControlLinkOptions {
        control_addr,
        data_addr: praas_control::backend::routable(server.local_addr()).to_string(),
        rdma_addr,
        swap_store: match swap_store {
            Some(store) => store,
            None => SwapStore::new(private_swap_default()?),
        },
        files_dir: args.files_dir.clone(),
        metrics_interval: Duration::from_millis(args.metrics_ms.max(10)),
        drain_timeout: Duration::from_secs(120),
        restored: args.restore,
    };
    match run_control_link(&process, &options) {
        LinkEnd::SwappedOut(report) => {
            tracing::info!(bytes = report.bytes, secs = report.secs, "swapped out; exiting");
            let _ = server.stop();
            Ok(())
        }
        LinkEnd::Refused(reason) => Err(Failure::Refused(reason)),
    }
}

/// The swap store of a process started without `--swap-dir`: `TMP/praas-swap-UID`, created
/// owner-only; refused if another user made it first (it would see, or plant, snapshots).
fn private_swap_default() -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let path = std::env::temp_dir().join(format!("praas-swap-{uid}"));
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&path) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(format!("{}: {e}", path.display()));
        }
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(format!("{} is not a folder of this user with mode 0700: give --swap-dir", path.display()));
    }
    Ok(path)
}

/// Starts the RDMA transport where `--rdma-listen SPEC` says. With `auto` on a node without an
/// RDMA device the process serves TCP only (one log line says why), so that one setting serves a
/// cluster whose nodes differ; an address that cannot be served is an error.
#[cfg(feature = "rdma")]
fn serve_rdma(spec: &str, process: &Arc<Process>) -> Result<Option<praas_dataplane::ServerHandle>, String> {
    let addr = match praas_dataplane::transport::rdma::connect::listen_address(spec) {
        Ok(addr) => addr,
        Err(e) if spec == "auto" => {
            tracing::warn!("--rdma-listen auto: {e}; serving TCP only");
            println!("rdma: none ({e})");
            return Ok(None);
        }
        Err(e) => return Err(format!("--rdma-listen {spec}: {e}")),
    };
    let rdma = praas_dataplane::RdmaTransport::bind(addr, Arc::clone(process), praas_dataplane::RdmaOptions::default())
        .map_err(|e| format!("cannot serve RDMA on {addr}: {e}"))?;
    let rdma = praas_dataplane::Transport::spawn(Box::new(rdma))
        .map_err(|e| format!("cannot start the RDMA transport: {e}"))?;
    println!("rdma listening on rdma://{}", rdma.local_addr());
    Ok(Some(rdma))
}

fn read_input(spec: &str) -> Result<Vec<u8>, String> {
    if spec == "-" {
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input).map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(input)
    } else if let Some(path) = spec.strip_prefix('@') {
        std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
    } else {
        Ok(spec.as_bytes().to_vec())
    }
}

fn invoke(api: &Api, args: InvokeArgs) -> Result<(), Failure> {
    let input = read_input(&args.input)?;
    let direct = match (&args.app, &args.process) {
        (Some(app), Some(name)) if args.direct => {
            let record: praas_control::model::ProcessRecord = api.get(&format!("/apps/{app}/processes/{name}"))?;
            let rdma = record.rdma_addr.as_ref().filter(|_| cfg!(feature = "rdma")).map(|a| format!("rdma://{a}"));
            Some(rdma.or(record.data_addr).ok_or_else(|| {
                format!("process {app}/{name} is {} and has no data-plane address", record.status.name())
            })?)
        }
        (Some(_), _) => None,
        (None, Some(addr)) => Some(addr.clone()),
        (None, None) => return Err("say where: --process ADDR, or --app APP [--process NAME]".to_owned().into()),
    };
    let credentials = match &args.app {
        Some(app) if direct.is_some() => {
            let answer: serde_json::Value = api.get(&format!("/apps/{app}/client-key"))?;
            let key = answer["client_key"].as_str().ok_or_else(|| "the control plane sent no client key".to_owned())?;
            Some(praas_dataplane::Credentials { app: app.clone(), name: "praas-cli".into(), key: key.into() })
        }
        Some(_) => None,
        None => given_credentials(args.credentials_file.as_deref())?,
    };
    let output = match (direct, &args.app) {
        (None, Some(app)) => api.invoke(app, &args.function, args.process.as_deref(), &input)?,
        #[cfg(feature = "rdma")]
        (Some(addr), _) if addr.starts_with("rdma://") => {
            let addr = &addr["rdma://".len()..];
            let options = praas_dataplane::RdmaClientOptions {
                timeout: Duration::from_millis(args.timeout_ms.into()) + Duration::from_secs(1),
                invocation_timeout_ms: args.timeout_ms,
                credentials,
                ..praas_dataplane::RdmaClientOptions::default()
            };
            let mut client = praas_dataplane::RdmaClient::connect_with(addr, options)
                .map_err(|e| format!("cannot connect to rdma://{addr}: {e}"))?;
            client.invoke(&args.function, &input).map_err(|e| format!("{}: {e}", args.function))?
        }
        (Some(addr), _) => {
            let options = ClientOptions {
                timeout: Duration::from_millis(args.timeout_ms.into()) + Duration::from_secs(1),
                invocation_timeout_ms: args.timeout_ms,
                transport: args.transport,
                credentials,
                ..ClientOptions::default()
            };
            let mut client =
                Client::connect_with(addr.as_str(), options).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            client.invoke(&args.function, &input).map_err(|e| format!("{}: {e}", args.function))?
        }
        (None, None) => unreachable!("handled above"),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&output).and_then(|()| stdout.flush()).map_err(|e| Failure::Message(e.to_string()))
}
