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
    /// The functions manifest (TOML) its processes load, every library an absolute path inside
    /// its own folder or a function root ([`crate::application`]).
    pub manifest: String,
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
    /// The transport of its data-plane address (`uring`, `mio`), as it registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
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
    /// Why it failed, when `status` is FAILURE; when SWAPPED_OUT, why its last swap-in did not
    /// succeed (a damaged or missing snapshot, the process's own words).
    pub error: Option<String>,
    /// The swap-out under way (SWAPPING_OUT), or the last one recorded: the id its snapshot's
    /// manifest carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_id: Option<String>,
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
            transport: None,
            pid: None,
            handle: None,
            node: None,
            job: None,
            error: None,
            swap_id: None,
            swap: None,
            metrics: Metrics::default(),
            swap_progress: None,
        }
    }
}

/// The rule names of applications and processes follow, for error messages.
pub const NAME_RULE: &str = "1 to 64 ASCII letters, digits, '_', '.' and '-', beginning with a letter, a digit or '_'";

/// Checks a name used in URLs, folder names and child command lines ([`NAME_RULE`]): it can be
/// neither a path component such as `..` nor an option such as `--help`.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

impl Resources {
    /// Checks these resources against what one node offers: both positive, neither above it.
    pub fn check(&self, capacity: &Capacity) -> Result<(), ResourceError> {
        if self.vcpus == 0 {
            return Err(ResourceError::NoCpu);
        }
        if self.memory_mb == 0 {
            return Err(ResourceError::NoMemory);
        }
        if self.vcpus > capacity.cpus {
            return Err(ResourceError::TooManyCpus { asked: self.vcpus, limit: capacity.cpus, node: capacity.what });
        }
        if self.memory_mb > capacity.memory_mb {
            return Err(ResourceError::TooMuchMemory {
                asked: self.memory_mb,
                limit: capacity.memory_mb,
                node: capacity.what,
            });
        }
        Ok(())
    }
}

/// What one node of a backend offers a process: the most CPUs and memory it can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// CPUs of the node.
    pub cpus: u32,
    /// Memory of the node, MiB.
    pub memory_mb: u64,
    /// What the figures are of, for messages ("this node", "the largest node of the partition").
    pub what: &'static str,
}

/// Why resources were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// vcpus = 0.
    #[error("vcpus must be positive")]
    NoCpu,
    /// memory_mb = 0.
    #[error("memory_mb must be positive")]
    NoMemory,
    /// More vCPUs than a node has.
    #[error("vcpus = {asked} is more than the {limit} CPUs of {node}")]
    TooManyCpus {
        /// What was asked.
        asked: u32,
        /// The limit.
        limit: u32,
        /// Whose limit.
        node: &'static str,
    },
    /// More memory than a node has.
    #[error("memory_mb = {asked} is more than the {limit} MiB of {node}")]
    TooMuchMemory {
        /// What was asked.
        asked: u64,
        /// The limit.
        limit: u64,
        /// Whose limit.
        node: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("app-1.v2_x"));
        assert!(valid_name("_x"));
        assert!(valid_name(&"x".repeat(64)));
        for bad in ["", "..", ".x", "a/b", "-rf", "--help", "a b", "a\u{7f}", "e\u{301}", "a\u{200b}", "\u{e9}"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"x".repeat(65)));
    }

    #[test]
    fn resources_are_checked_against_the_node() {
        let node = Capacity { cpus: 2, memory_mb: 24_000, what: "this node" };
        assert_eq!(Resources { vcpus: 2, memory_mb: 24_000 }.check(&node), Ok(()));
        assert_eq!(Resources { vcpus: 0, memory_mb: 1 }.check(&node), Err(ResourceError::NoCpu));
        assert_eq!(Resources { vcpus: 1, memory_mb: 0 }.check(&node), Err(ResourceError::NoMemory));
        let error = Resources { vcpus: u32::MAX, memory_mb: 1 }.check(&node).unwrap_err();
        assert_eq!(error.to_string(), "vcpus = 4294967295 is more than the 2 CPUs of this node");
        let error = Resources { vcpus: 1, memory_mb: u64::MAX }.check(&node).unwrap_err();
        assert!(error.to_string().contains("24000 MiB"), "{error}");
    }
}
