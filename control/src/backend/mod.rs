//! Backends: where cloud processes run. The `local` backend starts each process as a child OS
//! process of the control plane (`praas process serve`), on this machine.
//!
//! Resources: the child pins itself to `vcpus` CPUs (`sched_setaffinity`, round-robin over the
//! machine's CPUs) and runs that many workers; memory is limited by a cgroup v2 `memory.max` (and
//! CPU time by `cpu.max`) when `/sys/fs/cgroup` is a writable cgroup v2 hierarchy with the memory
//! controller, otherwise by `RLIMIT_AS` (address space, a looser bound: thread stacks and
//! allocator arenas count too). The child is moved into its cgroup right after it starts, before
//! it has allocated anything of note.

mod local;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use local::{alive, LocalBackend};

use crate::model::Resources;

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
}

/// Why a process could not be started.
#[derive(Debug, Error)]
#[error("cannot start process {process}: {reason}")]
pub struct BackendError {
    /// The process.
    pub process: String,
    /// Why.
    pub reason: String,
}

/// How a started process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The OS process id.
    pub pid: u32,
    /// Human description: `exit status 0`, `killed by signal 9`.
    pub description: String,
    /// Whether it exited with status 0.
    pub success: bool,
}

/// Called when a started process ends.
pub type ExitHandler = Arc<dyn Fn(Exit) + Send + Sync>;

/// Where processes run.
pub trait Backend: Send + Sync {
    /// `local`, `slurm`, ...
    fn name(&self) -> &'static str;
    /// Starts a process; `on_exit` is called once when it ends. Returns its OS process id.
    fn start(&self, launch: &Launch, on_exit: ExitHandler) -> Result<u32, BackendError>;
    /// Asks a process to stop (SIGTERM), or kills it (SIGKILL) when `force`.
    fn signal(&self, pid: u32, force: bool);
    /// Watches a process this backend did not start in this run (after a control-plane restart);
    /// `on_exit` is called when it is gone.
    fn adopt(&self, pid: u32, on_exit: ExitHandler);
}
