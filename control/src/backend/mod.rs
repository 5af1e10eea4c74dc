//! Backends: where cloud processes run. The `local` backend starts each process as a child OS
//! process of the control plane (`praas process serve`), on this machine.
//!
//! Resources: the child pins itself to `vcpus` CPUs (`sched_setaffinity`, round-robin over the
//! machine's CPUs) and runs that many workers; memory is limited by a cgroup v2 `memory.max` (and
//! CPU time by `cpu.max`) when `/sys/fs/cgroup` is a writable cgroup v2 hierarchy with the memory
//! controller, otherwise by `RLIMIT_AS` (address space, a looser bound: thread stacks and
//! allocator arenas count too). The child is moved into its cgroup right after it starts, before
//! it has allocated anything of note.
//!
//! The `slurm` backend ([`SlurmBackend`]) places processes on cluster nodes as Slurm jobs or as job
//! steps of a standing allocation; see its module.

mod local;
mod slurm;

use std::ffi::OsString;
use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use local::{alive, LocalBackend};
pub use slurm::{
    default_pool_name, job_state, SlurmBackend, SlurmCommandError, SlurmConfig, SlurmError, SlurmMode, UnknownSlurmMode,
};

use crate::model::{Capacity, Resources};

/// Everything needed to start one cloud process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Application.
    pub app: String,
    /// Process name.
    pub process: String,
    /// The functions manifest file.
    pub manifest: PathBuf,
    /// Resources.
    pub resources: Resources,
    /// The control plane's control-channel address.
    pub control_addr: String,
    /// The application's secret (passed in the environment, never on the command line).
    pub secret: String,
    /// Root of the swap store.
    pub swap_dir: PathBuf,
    /// The process's working folder (its state files).
    pub files_dir: PathBuf,
    /// Start from the swapped-out snapshot.
    pub restore: bool,
    /// File for the process's standard output and error.
    pub log: PathBuf,
    /// How often the process reports metrics.
    pub metrics_interval: Duration,
    /// The application's Slurm settings (over the Slurm backend's own).
    pub slurm: Option<crate::model::SlurmOptions>,
    /// Also serve RDMA on this address (`--rdma-listen`: `auto`, an IP, IP:PORT).
    pub rdma: Option<String>,
    /// The data-plane transport (`--transport`: `uring`, `mio`, `auto`); none: the process's
    /// default.
    pub transport: Option<String>,
    /// Serve authenticated data-plane clients only (`--client-auth`).
    pub client_auth: bool,
    /// The format of its log (`--log-format`).
    pub log_format: crate::logging::LogFormat,
}

impl Launch {
    /// An error about this launch.
    pub fn error(&self, reason: impl Into<String>) -> BackendError {
        BackendError::new(&self.process, reason)
    }

    /// An error about this launch caused by `source` (an `io::Error`, a Slurm command's failure).
    pub fn error_from(
        &self,
        reason: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> BackendError {
        BackendError::new(&self.process, reason).with_source(source)
    }

    /// The arguments of `praas process serve` for this launch, listening on `listen` with
    /// `workers` workers (the backend adds its own: placement, limits).
    pub fn serve_args(&self, listen: &str, workers: u32) -> Vec<OsString> {
        // Every value travels as `--option=VALUE`: no name or path can pass for an option.
        let pair = |option: &str, value: &std::ffi::OsStr| {
            let mut arg = OsString::from(format!("--{option}="));
            arg.push(value);
            arg
        };
        let mut args: Vec<OsString> = vec!["process".into(), "serve".into()];
        args.push(pair("listen", listen.as_ref()));
        args.push(pair("id", self.process.as_ref()));
        args.push(pair("app", self.app.as_ref()));
        args.push(pair("manifest", self.manifest.as_os_str()));
        args.push(pair("control-channel", self.control_addr.as_ref()));
        args.push(pair("swap-dir", self.swap_dir.as_os_str()));
        args.push(pair("files-dir", self.files_dir.as_os_str()));
        args.push(pair("workers", workers.max(1).to_string().as_ref()));
        args.push(pair("metrics-ms", self.metrics_interval.as_millis().to_string().as_ref()));
        args.push(pair("log-format", self.log_format.name().as_ref()));
        if let Some(rdma) = &self.rdma {
            args.push(pair("rdma-listen", rdma.as_ref()));
        }
        if let Some(transport) = &self.transport {
            args.push(pair("transport", transport.as_ref()));
        }
        if self.client_auth {
            args.push("--client-auth".into());
        }
        if self.restore {
            args.push("--restore".into());
        }
        args
    }

    /// Creates the process's working folder and its log's folder (owner-only, 0700), and opens
    /// the log (appending, 0600) twice: for the process's standard output and error.
    pub fn prepare(&self) -> Result<(File, File), BackendError> {
        use crate::private_fs::{create_dir, open_file, PrivateFileError};
        let private = |e: PrivateFileError| self.error_from(e.path.display().to_string(), e.source);
        create_dir(&self.files_dir).map_err(private)?;
        if let Some(parent) = self.log.parent() {
            create_dir(parent).map_err(private)?;
        }
        let log = open_file(&self.log, true).map_err(private)?;
        let log_err = log.try_clone().map_err(|e| self.error_from(self.log.display().to_string(), e))?;
        Ok((log, log_err))
    }
}

/// Why a process could not be started, or the backend cannot say what a node offers.
#[derive(Debug, Error)]
#[error("cannot start process {process}: {}", cause(.reason, .source))]
pub struct BackendError {
    /// The process (empty when the error is about no process).
    pub process: String,
    /// Why, in the backend's words (without the text of `source`).
    pub reason: String,
    /// The failure underneath, when there is one: an `io::Error` (its kind kept), a Slurm
    /// command's failure.
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// `reason`, then `: SOURCE` when there is a source (the source alone for an empty reason).
fn cause(reason: &str, source: &Option<Box<dyn std::error::Error + Send + Sync>>) -> String {
    match source {
        Some(source) if reason.is_empty() => source.to_string(),
        Some(source) => format!("{reason}: {source}"),
        None => reason.to_owned(),
    }
}

impl BackendError {
    /// An error about `process` (empty: about none).
    pub fn new(process: &str, reason: impl Into<String>) -> Self {
        Self { process: process.to_owned(), reason: reason.into(), source: None }
    }

    /// The same error, caused by `source`.
    pub fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Why, with the failure underneath: the message without the process.
    pub fn cause(&self) -> String {
        cause(&self.reason, &self.source)
    }
}

/// How a started process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The backend's handle of the process (see [`Backend::start`]).
    pub handle: String,
    /// Human description: `exit status 0`, `killed by signal 9`, `Slurm job 12 CANCELLED`.
    pub description: String,
    /// Whether it exited with status 0.
    pub success: bool,
}

/// Called when a started process ends.
pub type ExitHandler = Arc<dyn Fn(Exit) + Send + Sync>;

/// Where a started process runs, as far as the backend knows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// The node (host name or Slurm node name).
    pub node: String,
    /// The Slurm job (`12`) or job step (`12.3`) holding it, when it runs under Slurm.
    pub job: Option<String>,
}

/// Where processes run. A started process is named by a backend-specific handle: the OS process
/// id for `local`, a unique Slurm job or step name for `slurm`.
pub trait Backend: Send + Sync {
    /// `local`, `slurm`, ...
    fn name(&self) -> &'static str;
    /// Starts a process; `on_exit` is called once when it ends. Returns its handle.
    fn start(&self, launch: &Launch, on_exit: ExitHandler) -> Result<String, BackendError>;
    /// Asks a process to stop (SIGTERM, or cancels its Slurm job or step), or kills it when `force`.
    fn signal(&self, handle: &str, force: bool);
    /// Whether a process (possibly started before a control-plane restart) still runs.
    fn alive(&self, handle: &str) -> bool;
    /// Watches a process this backend did not start in this run (after a control-plane restart);
    /// `on_exit` is called when it is gone.
    fn adopt(&self, handle: &str, on_exit: ExitHandler);
    /// Where a started process runs, once the backend knows (no blocking query on this path).
    fn placement(&self, _handle: &str) -> Option<Placement> {
        None
    }
    /// What one node offers a process: requests for more CPUs or memory are refused (400).
    /// `slurm` is the application's Slurm settings (its partition).
    fn capacity(&self, slurm: Option<&crate::model::SlurmOptions>) -> Result<Capacity, BackendError>;
    /// Releases what the backend holds for itself (a Slurm pool) when the control plane stops
    /// on request; processes of the local backend live on.
    fn shutdown(&self) {}
}

/// The address other hosts use to reach a socket bound to `addr`: `addr` itself, or for an
/// unspecified address (`0.0.0.0`, `::`) the host named by `PRAAS_ADVERTISE_HOST`, else this
/// host's name as it resolves (a non-loopback IPv4 address first), else 127.0.0.1.
pub fn routable(addr: SocketAddr) -> SocketAddr {
    if !addr.ip().is_unspecified() {
        return addr;
    }
    let port = addr.port();
    let host = std::env::var("PRAAS_ADVERTISE_HOST").ok().filter(|h| !h.is_empty()).or_else(hostname);
    let resolved: Vec<SocketAddr> =
        host.and_then(|h| (h.as_str(), port).to_socket_addrs().ok()).map(Iterator::collect).unwrap_or_default();
    resolved
        .iter()
        .find(|a| a.is_ipv4() && !a.ip().is_loopback())
        .or_else(|| resolved.first())
        .copied()
        .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

/// What this machine offers one process: the CPUs this process may run on and the memory
/// `/proc/meminfo` reports.
pub fn this_node() -> std::io::Result<Capacity> {
    let cpus = std::thread::available_parallelism()?.get();
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| std::io::Error::other("/proc/meminfo has no MemTotal"))?;
    Ok(Capacity { cpus: u32::try_from(cpus).unwrap_or(u32::MAX), memory_mb: kib / 1024, what: "this node" })
}

/// This host's name.
fn hostname() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length; gethostname NUL-terminates within it
    // or reports an error.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0)?;
    String::from_utf8(buffer[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_become_routable() {
        let bound: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(routable(bound), bound);
        let any = routable("0.0.0.0:5001".parse().unwrap());
        assert!(!any.ip().is_unspecified());
        assert_eq!(any.port(), 5001);
    }
}
