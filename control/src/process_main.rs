//! The start-up of a cloud process (`praas process serve`): its CPU placement and memory limit,
//! its functions, the process itself (restored from the swap store on swap-in), its transports
//! and its control link to the control plane. The `praas` binary parses the arguments into
//! [`ServeOptions`] and calls [`serve`].
//!
//! [`serve`] prints the lines scripts and tests read on standard output: `listening on ADDR`,
//! then with RDMA `rdma listening on rdma://ADDR` or `rdma: none (WHY)`.
//!
//! The application's secret is the content of `--secret-file` (trimmed), else the environment
//! variable `PRAAS_SECRET`; never a command-line value (others see command lines in `ps`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use praas_dataplane::control_channel::{run_control_link, ControlLinkOptions, LinkEnd};
use praas_dataplane::function::LoadError;
use praas_dataplane::mailbox::SnapshotError;
use praas_dataplane::swap::{SwapError, SwapStore};
use praas_dataplane::{FunctionRegistry, Manifest, Process, ProcessConfig, TransportKind};
use thiserror::Error;

/// How to run a cloud process: the options of `praas process serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The functions manifest.
    pub manifest: PathBuf,
    /// Address to listen on (port 0: a free one, printed).
    pub listen: SocketAddr,
    /// Threads of the worker pool.
    pub workers: usize,
    /// Process id.
    pub id: String,
    /// Application.
    pub app: String,
    /// Default deadline of an invocation (none: no deadline).
    pub default_timeout: Option<Duration>,
    /// Largest frame accepted or produced, in bytes.
    pub max_frame: usize,
    /// Bytes of buffers the process may hand out at once.
    pub buffer_budget: usize,
    /// The data-plane transport.
    pub transport: TransportKind,
    /// Also serve RDMA here: `auto`, an IP address or IP:PORT.
    #[cfg(feature = "rdma")]
    pub rdma_listen: Option<String>,
    /// Serve invocations only on connections that authenticated with the client key.
    pub client_auth: bool,
    /// The control plane's control channel to register with.
    pub control_channel: Option<SocketAddr>,
    /// A file holding the application's secret; without it the secret comes from the
    /// environment variable `PRAAS_SECRET` (absent or empty: none).
    pub secret_file: Option<PathBuf>,
    /// Root of the swap store.
    pub swap_dir: Option<PathBuf>,
    /// The process's state files, swapped with it.
    pub files_dir: Option<PathBuf>,
    /// Start from the process's snapshot in the swap store.
    pub restore: bool,
    /// CPUs to run on (comma-separated list).
    pub cpus: Option<String>,
    /// Address-space limit in MiB (`RLIMIT_AS`).
    pub memory_mb: Option<u64>,
    /// How often metrics go to the control plane.
    pub metrics_interval: Duration,
    /// Also serve this process's own metrics at `GET /metrics` on this address (Prometheus text
    /// format; read-only and unauthenticated: bind it to an address only trusted scrapers reach).
    pub metrics_listen: Option<SocketAddr>,
    /// How many data-plane connections it serves, and their idle and frame timeouts.
    pub connection_limits: praas_dataplane::serve::ConnectionLimits,
}

/// Why a cloud process could not start, or stopped serving.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProcessMainError {
    /// `--metrics-listen` could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsListen {
        /// The address asked for.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The metrics server's thread or runtime could not start.
    #[error("cannot start the metrics server: {0}")]
    MetricsRuntime(#[source] std::io::Error),
    /// The secret file could not be read.
    #[error("cannot read the secret file {}: {source}", path.display())]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// `PRAAS_SECRET` holds bytes that are not UTF-8.
    #[error("PRAAS_SECRET is not UTF-8")]
    SecretNotUtf8,
    /// A control channel was asked for without a secret to authenticate with.
    #[error("--control-channel needs the application's secret (PRAAS_SECRET or --secret-file): none was given")]
    NoSecret,
    /// A CPU of `--cpus` is not a number.
    #[error("bad CPU {cpu:?} in --cpus")]
    BadCpu {
        /// The item as given.
        cpu: String,
    },
    /// `sched_setaffinity` refused the CPUs.
    #[error("cannot pin to CPUs {cpus}: {source}")]
    Pin {
        /// The list as given.
        cpus: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// `setrlimit(RLIMIT_AS)` refused the limit.
    #[error("cannot limit memory to {mb} MiB: {source}")]
    MemoryLimit {
        /// The limit.
        mb: u64,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The manifest could not be read or parsed.
    #[error(transparent)]
    Manifest(LoadError),
    /// The manifest's functions could not be loaded.
    #[error(transparent)]
    Functions(LoadError),
    /// The process could not start.
    #[error("cannot start the process: {0}")]
    Start(#[source] std::io::Error),
    /// `--restore` without a swap store.
    #[error("--restore needs --swap-dir")]
    RestoreWithoutSwapDir,
    /// The snapshot could not be read.
    #[error("cannot swap in: {0}")]
    SwapIn(#[source] SwapError),
    /// The snapshot's undelivered messages could not be put back.
    #[error("cannot swap in the messages: {0}")]
    RestoreMailbox(#[source] SnapshotError),
    /// The snapshot's state files could not be put back.
    #[error("cannot swap in the state files: {0}")]
    RestoreFiles(#[source] SwapError),
    /// The transport could not bind its address.
    #[error("cannot listen on {addr} ({transport} transport): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The transport asked for.
        transport: TransportKind,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The transport could not start serving.
    #[error("cannot start the transport: {0}")]
    Transport(#[source] std::io::Error),
    /// The transport stopped with an error (no control channel).
    #[error("transport failed: {0}")]
    TransportFailed(#[source] std::io::Error),
    /// `--rdma-listen` names no address this node can serve.
    #[error("--rdma-listen {spec}: {source}")]
    RdmaAddress {
        /// The option as given.
        spec: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The RDMA transport could not bind its address.
    #[error("cannot serve RDMA on {addr}: {source}")]
    RdmaListen {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The RDMA transport could not start serving.
    #[error("cannot start the RDMA transport: {0}")]
    RdmaTransport(#[source] std::io::Error),
    /// Standard output could not be written (the lines scripts read).
    #[error("{0}")]
    Stdout(#[source] std::io::Error),
    /// The default swap store (`TMP/praas-swap-UID`) could not be made.
    #[error("{}: {source}", path.display())]
    SwapFolder {
        /// The folder.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The default swap store exists but is not this user's owner-only folder.
    #[error("{} is not a folder of this user with mode 0700: give --swap-dir", path.display())]
    SwapFolderUnsafe {
        /// The folder.
        path: PathBuf,
    },
    /// The control plane refused the process (wrong secret, unknown process).
    #[error("refused by the control plane: {0}")]
    Refused(String),
}

/// The application's secret: the content of `file` (trimmed), else `PRAAS_SECRET`; absent or
/// empty: none.
fn secret(file: Option<&std::path::Path>) -> Result<Option<praas_dataplane::Secret>, ProcessMainError> {
    let secret = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| ProcessMainError::SecretFile { path: path.to_owned(), source })?
            .trim()
            .to_owned(),
        None => match std::env::var("PRAAS_SECRET") {
            Ok(value) => value,
            Err(std::env::VarError::NotPresent) => String::new(),
            Err(std::env::VarError::NotUnicode(_)) => return Err(ProcessMainError::SecretNotUtf8),
        },
    };
    Ok(praas_dataplane::Secret::new(secret).ok())
}

/// Applies CPU placement and the memory limit to this process before any thread starts.
fn apply_resources(cpus: Option<&str>, memory_mb: Option<u64>) -> Result<(), ProcessMainError> {
    if let Some(list) = cpus {
        let cpus: Vec<usize> = list
            .split(',')
            .map(|c| c.trim().parse().map_err(|_| ProcessMainError::BadCpu { cpu: c.to_owned() }))
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
            return Err(ProcessMainError::Pin { cpus: list.to_owned(), source: std::io::Error::last_os_error() });
        }
    }
    if let Some(mb) = memory_mb {
        let bytes = mb.saturating_mul(1 << 20);
        let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
        // SAFETY: `limit` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
            return Err(ProcessMainError::MemoryLimit { mb, source: std::io::Error::last_os_error() });
        }
    }
    Ok(())
}

/// Runs a cloud process until it swaps out (then `Ok`), its control plane refuses it
/// ([`ProcessMainError::Refused`]), or, without a control channel, its transport fails.
pub fn serve(options: ServeOptions) -> Result<(), ProcessMainError> {
    let secret = secret(options.secret_file.as_deref())?;
    if secret.is_none() && options.control_channel.is_some() {
        return Err(ProcessMainError::NoSecret);
    }
    apply_resources(options.cpus.as_deref(), options.memory_mb)?;
    // As far as its connection limit (and some for files and the control link) needs; where the
    // hard limit is lower, connections beyond it fail to be accepted (logged).
    let wanted = (options.connection_limits.max_connections as u64).saturating_add(256);
    if let Err(e) = praas_dataplane::connection::raise_descriptor_limit(Some(wanted)) {
        tracing::warn!("cannot raise the open-file limit to {wanted}: {e}");
    }
    let manifest = Manifest::from_file(&options.manifest).map_err(ProcessMainError::Manifest)?;
    let functions = FunctionRegistry::load(&manifest).map_err(ProcessMainError::Functions)?;
    let config = ProcessConfig {
        id: options.id.clone(),
        app: options.app.clone(),
        secret,
        workers: options.workers,
        default_timeout: options.default_timeout,
        max_frame: options.max_frame,
        buffer_budget: budget_within(options.buffer_budget, options.memory_mb),
        client_auth: options.client_auth,
        connection_limits: options.connection_limits,
        swap_in_on_call: manifest.swap_in_on_call,
        ..ProcessConfig::default()
    };
    let names = functions.names().join(", ");
    let process = Process::start(config, functions).map_err(ProcessMainError::Start)?;
    let swap_store = options.swap_dir.as_ref().map(SwapStore::new);
    if options.restore {
        let store = swap_store.as_ref().ok_or(ProcessMainError::RestoreWithoutSwapDir)?;
        praas_dataplane::swap::test_pause("restore");
        let snapshot = store.read(&options.app, &options.id).map_err(ProcessMainError::SwapIn)?;
        snapshot.restore_state(process.state());
        process.restore_mailbox(&snapshot.mailbox).map_err(ProcessMainError::RestoreMailbox)?;
        if let Some(files) = &options.files_dir {
            snapshot.restore_files(files).map_err(ProcessMainError::RestoreFiles)?;
        }
        tracing::info!(keys = snapshot.state.len(), bytes = snapshot.manifest.bytes(), "swapped in");
    }
    let transport = praas_dataplane::transport::bind(options.transport, options.listen, Arc::clone(&process))
        .map_err(|source| ProcessMainError::Listen { addr: options.listen, transport: options.transport, source })?;
    let server = transport.spawn().map_err(ProcessMainError::Transport)?;
    // Scripts read this line to learn the port.
    println!("listening on {}", server.local_addr());
    #[cfg(feature = "rdma")]
    let rdma_server = match &options.rdma_listen {
        Some(spec) => serve_rdma(spec, &process)?,
        None => None,
    };
    #[cfg(feature = "rdma")]
    let rdma_addr = rdma_server.as_ref().map(|r| crate::backend::routable(r.local_addr()).to_string());
    #[cfg(not(feature = "rdma"))]
    let rdma_addr = None;
    if let Some(addr) = options.metrics_listen {
        let bound = serve_metrics(addr, &process, &options.app, options.transport.resolve(), rdma_addr.is_some())?;
        println!("metrics on http://{bound}/metrics");
    }
    std::io::stdout().flush().map_err(ProcessMainError::Stdout)?;
    tracing::info!(process = process.id(), functions = %names, "serving");
    let Some(control_addr) = options.control_channel else {
        return server.join().map_err(ProcessMainError::TransportFailed);
    };
    let link = ControlLinkOptions {
        control_addr,
        data_addr: crate::backend::routable(server.local_addr()).to_string(),
        rdma_addr,
        transport: Some(options.transport.resolve().to_string()),
        swap_store: match swap_store {
            Some(store) => store,
            None => SwapStore::new(private_swap_default()?),
        },
        files_dir: options.files_dir.clone(),
        metrics_interval: options.metrics_interval,
        drain_timeout: Duration::from_secs(120),
        restored: options.restore,
        commit_timeout: Duration::from_secs(30),
    };
    match run_control_link(&process, &link) {
        LinkEnd::SwappedOut(report) => {
            tracing::info!(bytes = report.bytes, secs = report.secs, "swapped out; exiting");
            let _ = server.stop();
            Ok(())
        }
        LinkEnd::Refused(reason) => Err(ProcessMainError::Refused(reason)),
    }
}

/// The buffer budget a process runs with: `asked`, but with the default budget under an
/// address-space limit of `memory_mb`, half the limit at most, so that buffers handed out to
/// connections (a large frame's buffer is taken as its header arrives) run out as a refusal
/// from the pool, never as an allocation failure that aborts the process and loses its state.
fn budget_within(asked: usize, memory_mb: Option<u64>) -> usize {
    match memory_mb {
        Some(mb) if asked == praas_dataplane::buffer::DEFAULT_BUDGET => {
            let half = usize::try_from(mb.saturating_mul(1 << 19)).unwrap_or(usize::MAX);
            asked.min(half)
        }
        Some(mb) if u64::try_from(asked).map_or(true, |asked| asked >= mb << 20) => {
            tracing::warn!(
                budget = asked,
                memory_mb = mb,
                "the buffer budget is not below the memory limit: a flood of large frames can exhaust memory"
            );
            asked
        }
        _ => asked,
    }
}

/// Serves `GET /metrics` of `process` on `addr` from a thread of its own; returns the bound
/// address.
fn serve_metrics(
    addr: SocketAddr,
    process: &Arc<Process>,
    app: &str,
    transport: TransportKind,
    rdma: bool,
) -> Result<SocketAddr, ProcessMainError> {
    let listen_error = |source| ProcessMainError::MetricsListen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ProcessMainError::MetricsRuntime)?;
    let (process, app) = (Arc::clone(process), app.to_owned());
    let handler = move || {
        let (process, app) = (Arc::clone(&process), app.clone());
        async move {
            let report = praas_dataplane::control_channel::totals(&process);
            match crate::metrics::encode_process(&app, process.id(), &transport.to_string(), rdma, report) {
                Ok(text) => ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
                Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
    };
    let router = axum::Router::new().route(crate::routes::METRICS, axum::routing::get(handler));
    std::thread::Builder::new()
        .name("praas-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        if let Err(e) = axum::serve(listener, router).await {
                            tracing::error!("the metrics server stopped: {e}");
                        }
                    }
                    Err(e) => tracing::error!("cannot serve metrics: {e}"),
                }
            })
        })
        .map_err(ProcessMainError::MetricsRuntime)?;
    Ok(bound)
}

/// The swap store of a process started without `--swap-dir`: `TMP/praas-swap-UID`, created
/// owner-only; refused if another user made it first (it would see, or plant, snapshots).
fn private_swap_default() -> Result<PathBuf, ProcessMainError> {
    use std::os::unix::fs::DirBuilderExt;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let path = std::env::temp_dir().join(format!("praas-swap-{uid}"));
    if let Err(source) = std::fs::DirBuilder::new().mode(0o700).create(&path) {
        if source.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(ProcessMainError::SwapFolder { path, source });
        }
    }
    match crate::private_fs::owned_private_dir(&path) {
        Ok(true) => Ok(path),
        Ok(false) => Err(ProcessMainError::SwapFolderUnsafe { path }),
        Err(e) => Err(ProcessMainError::SwapFolder { path, source: e.source }),
    }
}

/// Starts the RDMA transport where `--rdma-listen SPEC` says. With `auto` on a node without an
/// RDMA device the process serves TCP only (one log line says why), so that one setting serves a
/// cluster whose nodes differ; an address that cannot be served is an error.
#[cfg(feature = "rdma")]
fn serve_rdma(spec: &str, process: &Arc<Process>) -> Result<Option<praas_dataplane::ServerHandle>, ProcessMainError> {
    let addr = match praas_dataplane::transport::rdma::connect::listen_address(spec) {
        Ok(addr) => addr,
        Err(e) if spec == "auto" => {
            tracing::warn!("--rdma-listen auto: {e}; serving TCP only");
            println!("rdma: none ({e})");
            return Ok(None);
        }
        Err(source) => return Err(ProcessMainError::RdmaAddress { spec: spec.to_owned(), source }),
    };
    let rdma = praas_dataplane::transport::rdma::bind_with_peers(
        addr,
        Arc::clone(process),
        praas_dataplane::RdmaOptions::default(),
    )
    .map_err(|source| ProcessMainError::RdmaListen { addr, source })?;
    let rdma = praas_dataplane::Transport::spawn(Box::new(rdma)).map_err(ProcessMainError::RdmaTransport)?;
    println!("rdma listening on rdma://{}", rdma.local_addr());
    Ok(Some(rdma))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_fits_inside_a_memory_limit() {
        let default = praas_dataplane::buffer::DEFAULT_BUDGET;
        assert_eq!(budget_within(default, None), default);
        assert_eq!(budget_within(default, Some(2048)), 1 << 30);
        assert_eq!(budget_within(default, Some(64 << 10)), default, "a limit far above the budget leaves it");
        assert_eq!(budget_within(100 << 20, Some(2048)), 100 << 20, "a budget asked for is kept");
    }
}
