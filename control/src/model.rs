//! What the control plane knows: applications, processes and their lifecycle.

use serde::{Deserialize, Serialize};

/// Resources of one cloud process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// vCPUs: worker threads and, where possible, CPUs the process may run on.
    pub vcpus: u32,
    /// Memory limit in MiB.
    pub memory_mb: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Self { vcpus: 1, memory_mb: 2048 }
    }
}

/// An application: functions shared by its processes, and its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// Its name.
    pub name: String,
    /// The functions manifest (TOML), with library paths absolute or relative to `manifest_dir`.
    pub manifest: String,
    /// Folder relative library paths resolve against.
    pub manifest_dir: String,
    /// Resources of processes created without their own.
    pub resources: Resources,
    /// The secret its processes authenticate with; never shown by the API.
    #[serde(default)]
    pub secret: String,
    /// Slurm settings of its processes (Slurm backend, job mode), over the control plane's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmOptions>,
}

/// Where an application's processes go on a Slurm cluster; absent fields take the control
/// plane's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmOptions {
    /// `--partition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `--account`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `--time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
    /// `--constraint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
}

pub use praas_dataplane::lifecycle::ProcessStatus;

/// The last swap of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapInfo {
    /// Bytes written.
    pub bytes: u64,
    /// Seconds the process took to write them.
    pub secs: f64,
    /// Seconds from the request to SWAPPED_OUT, as the control plane saw it.
    pub total_secs: f64,
}

/// Counters the process last reported.
pub use praas_dataplane::control_channel::MetricsReport as Metrics;

/// A cloud process as the control plane tracks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Application.
    pub app: String,
    /// Process name (its id within the application).
    pub name: String,
    /// Lifecycle status.
    pub status: ProcessStatus,
    /// Resources.
    pub resources: Resources,
    /// Data-plane address while running.
    pub data_addr: Option<String>,
    /// RDMA address while running, if it serves RDMA (clients use `rdma://ADDR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_addr: Option<String>,
    /// OS process id while running (on its node).
    pub pid: Option<u32>,
    /// The backend's handle while running: the pid (`local`), a Slurm job or step name (`slurm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// The node it runs on, when the backend reports one (`slurm`: the Slurm node name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Its Slurm job (`12`, job mode) or job step (`12.3`, pool mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Why it failed, when `status` is FAILURE.
    pub error: Option<String>,
    /// The last swap.
    pub swap: Option<SwapInfo>,
    /// Counters last reported.
    #[serde(default)]
    pub metrics: Metrics,
    /// While SWAPPING_OUT: bytes of the snapshot written so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_progress: Option<u64>,
}

impl ProcessRecord {
    /// A new record in ALLOCATING.
    pub fn new(app: &str, name: &str, resources: Resources) -> Self {
        Self {
            app: app.into(),
            name: name.into(),
            status: ProcessStatus::Allocating,
            resources,
            data_addr: None,
            rdma_addr: None,
            pid: None,
            handle: None,
            node: None,
            job: None,
            error: None,
            swap: None,
            metrics: Metrics::default(),
            swap_progress: None,
        }
    }
}

/// Checks a name used in URLs and folder names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("app-1.v2_x"));
        assert!(!valid_name(""));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
