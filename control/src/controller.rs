//! The control plane's core: applications and processes, their lifecycle, swapping, routing of
//! invocations. The HTTP API ([`crate::api`]) and the control channel ([`crate::channel`]) call
//! into it; every change is written through to the [`Store`] before it is visible.
//!
//! Lifecycle (`PUT` = create, `swap`, `swapin`, `stop`, `DELETE`):
//!
//! ```text
//! PUT ─▶ ALLOCATING ─register─▶ ALLOCATED ─swap─▶ SWAPPING_OUT ─confirm─▶ SWAPPED_OUT ─swapin─▶ SWAPPING_IN ─register─▶ ALLOCATED
//!                                   │ stop                                     │ DELETE?force=true    │ exit
//!                                   ▼                                          ▼                      ▼
//!                                CLOSING ─exit─▶ CLOSED ─DELETE─▶ (gone)     (gone, swap data removed) SWAPPED_OUT (error recorded)
//! any other running status ─unexpected exit─▶ FAILURE ─DELETE─▶ (gone)
//! ```
//! Any other request is refused ([`ControlError::InvalidTransition`]) and changes nothing.
//!
//! A swap-out is a transaction between the process, the swap store and the database: the
//! control plane names it (a swap id the snapshot's manifest carries), records SWAPPED_OUT once
//! the process confirmed, and only then tells the process to exit (`SwapCommit`). Whatever
//! crashes, nothing is lost: a process whose control plane died re-registers drained and is told
//! whether its swap was recorded ([`ControlPlane::on_register`]); a SWAPPING_OUT record whose
//! process is gone becomes SWAPPED_OUT if the snapshot in place is complete and carries its swap
//! id, FAILURE (the previous snapshot kept) otherwise; a SWAPPING_IN record whose process is gone
//! goes back to SWAPPED_OUT, its snapshot untouched. A swap-in that fails (a damaged or missing
//! snapshot) leaves the process SWAPPED_OUT with the reason recorded: it can be retried.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use praas_dataplane::control_channel::{
    MetricsReport, PeerList, Registration, RegistrationAnswer, SwapConfirmation, SwapDecision, SwapOrder,
};
use praas_dataplane::peer::PeerInfo;
use praas_dataplane::protocol::{Header, MessageKind};
use praas_dataplane::swap::{test_pause, SnapshotManifest, SwapError, SwapStore};
use praas_dataplane::{Client, ClientError, ClientOptions, Credentials, Manifest, Status};
use thiserror::Error;

use crate::application::DeployError;
use crate::backend::{Backend, BackendError, Exit, Launch};
use crate::link::{ControlLink, LinkWriter};
use crate::metrics::{ControlMetrics, MetricsError, ProcessSnapshot};
use crate::model::{
    valid_name, Application, ProcessRecord, ProcessStatus, ResourceError, Resources, SwapInfo, NAME_RULE,
};
use crate::store::{Store, StoreError};

/// What went wrong in the control plane, in its own words; the HTTP API ([`crate::api`]) alone
/// says which HTTP status each answers with.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No application of that name.
    #[error("no application {app:?}")]
    NoApplication {
        /// The name asked for.
        app: String,
    },
    /// No process of that name in the application.
    #[error("no process {app}/{name}")]
    NoProcess {
        /// The application.
        app: String,
        /// The process name asked for.
        name: String,
    },
    /// A name that breaks [`NAME_RULE`].
    #[error("invalid {kind} name {name:?}: {NAME_RULE}")]
    InvalidName {
        /// `application` or `process`.
        kind: &'static str,
        /// The name as given.
        name: String,
    },
    /// Resources that are not positive or exceed what one node offers.
    #[error(transparent)]
    Resources(ResourceError),
    /// The application's functions cannot be deployed: its manifest or its files.
    #[error(transparent)]
    Deploy(DeployError),
    /// An application of that name exists.
    #[error("application {app:?} exists")]
    AppExists {
        /// The application.
        app: String,
    },
    /// An application still has processes.
    #[error("application {app:?} has {count} processes: delete them first")]
    AppHasProcesses {
        /// The application.
        app: String,
        /// How many.
        count: usize,
    },
    /// A process of that name exists.
    #[error("process {app}/{name} exists ({})", .status.name())]
    ProcessExists {
        /// The application.
        app: String,
        /// The process.
        name: String,
        /// Its status.
        status: ProcessStatus,
    },
    /// A request the process's status does not allow (the lifecycle in this module's
    /// documentation); nothing changed.
    #[error("process {app}/{name} is {}{}", .status.name(), .operation.refusal())]
    InvalidTransition {
        /// The application.
        app: String,
        /// The process.
        name: String,
        /// Its status.
        status: ProcessStatus,
        /// What was asked.
        operation: Operation,
    },
    /// The process did not reach the status a request waited for (it failed, or stopped).
    #[error("process {app}/{name} is {}: {reason}", .status.name())]
    Unsettled {
        /// The application.
        app: String,
        /// The process.
        name: String,
        /// The status it has.
        status: ProcessStatus,
        /// Why, as its record says (empty when it says nothing).
        reason: String,
    },
    /// The backend cannot say what a node offers.
    #[error("{}", .0.cause())]
    Capacity(#[source] BackendError),
    /// The backend could not start the process.
    #[error(transparent)]
    Launch(BackendError),
    /// The process has no control channel (it has not registered again since a restart).
    #[error("process {app}/{name} has no control channel right now")]
    NoControlChannel {
        /// The application.
        app: String,
        /// The process.
        name: String,
    },
    /// A swap out failed; the process serves on where it can.
    #[error("swap of {app}/{name} failed: {cause}")]
    SwapFailed {
        /// The application.
        app: String,
        /// The process.
        name: String,
        /// Why.
        #[source]
        cause: SwapFailure,
    },
    /// The process left SWAPPING_OUT other than by its swap's confirmation (it died).
    #[error("process {app}/{name} became {} while swapping out", .status.name())]
    LostWhileSwapping {
        /// The application.
        app: String,
        /// The process.
        name: String,
        /// The status it became.
        status: ProcessStatus,
    },
    /// An ALLOCATED process without a data-plane address.
    #[error("no data-plane address")]
    NoDataAddress {
        /// The application.
        app: String,
        /// The process.
        name: String,
    },
    /// The process could not be reached on its data plane, or broke the connection.
    #[error("process {app}/{name}: {source}")]
    Unreachable {
        /// The application.
        app: String,
        /// The process.
        name: String,
        /// The data-plane client's error.
        #[source]
        source: ClientError,
    },
    /// The process kept refusing the invocation because it was swapping.
    #[error("process {app}/{name} stayed busy swapping")]
    StayedBusy {
        /// The application.
        app: String,
        /// The process.
        name: String,
    },
    /// The function (or the process running it) answered with an error.
    #[error("{status}: {message}")]
    Function {
        /// The data-plane status.
        status: Status,
        /// The process's explanation.
        message: String,
    },
    /// The process did not reach the awaited status in time.
    #[error("process {app}/{name} still {} after {after:?}", .status.name())]
    TimedOut {
        /// The application.
        app: String,
        /// The process.
        name: String,
        /// The status it is still in.
        status: ProcessStatus,
        /// How long the request waited.
        after: Duration,
    },
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
    /// The database cannot be written right now (its disk is full or failing): nothing changed,
    /// and the request can succeed once the disk is back (the database reopens by itself).
    #[error("control plane database unavailable: {}", .0.reason())]
    DatabaseUnavailable(#[source] StoreError),
    /// The data folder, or a file of it, could not be made or written owner-only.
    #[error(transparent)]
    PrivateFiles(#[from] crate::private_fs::PrivateFileError),
    /// The application's files could not be installed in its folder.
    #[error(transparent)]
    Install(DeployError),
    /// The swap store failed.
    #[error(transparent)]
    SwapStore(SwapError),
    /// A swap-in failed: the snapshot is missing or damaged, or the process restoring it died.
    /// The process is SWAPPED_OUT with its snapshot kept and the reason recorded; swap-in can be
    /// retried (once the snapshot is repaired).
    #[error("swap-in of {app}/{name} failed (it stays SWAPPED_OUT, its snapshot kept): {reason}")]
    SwapInFailed {
        /// The application.
        app: String,
        /// The process.
        name: String,
        /// Why, in the words of the swap store or of the process that tried.
        reason: String,
    },
    /// `DELETE` without `force` of a process whose snapshot holds state no process has restored.
    #[error(
        "process {app}/{name} is {} and its snapshot was never restored: deleting it destroys its state; \
         add ?force=true (praas process delete --force) to delete it anyway",
        .status.name()
    )]
    UnrestoredSnapshot {
        /// The application.
        app: String,
        /// The process.
        name: String,
        /// Its status.
        status: ProcessStatus,
    },
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            Self::DatabaseUnavailable(e)
        } else {
            Self::Store(e)
        }
    }
}

/// Whether an I/O error means the disk has no space (or quota) left.
fn no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.kind() == std::io::ErrorKind::QuotaExceeded
}

impl ControlError {
    /// Whether the request failed because the data folder's disk is full (or the database cannot
    /// be written): nothing changed, and the same request can succeed once space is back.
    pub fn disk_full(&self) -> bool {
        match self {
            Self::DatabaseUnavailable(_) => true,
            Self::PrivateFiles(e) => no_space(&e.source),
            Self::Install(DeployError::Io { source, .. }) => no_space(source),
            _ => false,
        }
    }

    /// The `outcome` label of a routed invocation that failed with this error: for an error
    /// answer of the function or its process, the data-plane status in snake case
    /// (`function_failed`, `unknown_function`, `timeout`, ...); otherwise the control plane's
    /// reason (`no_application`, `no_process`, `refused`, `timed_out`, `unavailable`, `error`).
    pub fn outcome(&self) -> String {
        let reason = match self {
            Self::Function { status, .. } => return crate::metrics::status_label(*status),
            Self::NoApplication { .. } => "no_application",
            Self::NoProcess { .. } => "no_process",
            Self::InvalidName { .. } | Self::InvalidTransition { .. } => "refused",
            Self::TimedOut { .. } => "timed_out",
            Self::Unreachable { .. }
            | Self::StayedBusy { .. }
            | Self::NoDataAddress { .. }
            | Self::Unsettled { .. }
            | Self::SwapInFailed { .. }
            | Self::Launch(_)
            | Self::Capacity(_)
            | Self::DatabaseUnavailable(_) => "unavailable",
            _ => "error",
        };
        reason.to_owned()
    }
}

/// A lifecycle request on a process, as [`ControlError::InvalidTransition`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// `swap`: ALLOCATED only.
    SwapOut,
    /// `swapin`: SWAPPED_OUT only.
    SwapIn,
    /// `stop`: ALLOCATED only.
    Stop,
    /// `DELETE`: a process that is not running.
    Delete,
    /// An invocation: a process that is or can become ALLOCATED.
    Invoke,
}

impl Operation {
    /// What the refusal adds after the status.
    fn refusal(self) -> &'static str {
        match self {
            Self::SwapOut => ": only an ALLOCATED process can swap out",
            Self::SwapIn => ": only a SWAPPED_OUT process can swap in",
            Self::Stop => ": only an ALLOCATED process can stop",
            Self::Delete => ": stop or swap it out first",
            Self::Invoke => "",
        }
    }
}

/// Why a swap out failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SwapFailure {
    /// The swap request could not be sent on the control channel.
    #[error("cannot reach the process: {0}")]
    Unreachable(#[source] std::io::Error),
    /// The process reported a failure (its own words, from the control channel).
    #[error("{0}")]
    Reported(String),
    /// No confirmation came within the swap timeout.
    #[error("no confirmation within the swap timeout")]
    NoConfirmation,
}

/// Why the control channel refuses a process's registration (the text goes back to it).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Not a process of this control plane.
    #[error(transparent)]
    Unknown(ControlError),
    /// Its record's status does not take a registration (CLOSED, SWAPPED_OUT, FAILURE).
    #[error("process is {} and cannot register", .0.name())]
    Status(ProcessStatus),
    /// Another OS process is registered under its name.
    #[error("process is already registered with pid {0}")]
    AlreadyRegistered(u32),
    /// The registration could not be written to the database.
    #[error(transparent)]
    Store(StoreError),
}

/// Settings of a control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Folder for the database, manifests, logs, process folders and (by default) the swap store.
    pub data_dir: PathBuf,
    /// Root of the swap store.
    pub swap_dir: PathBuf,
    /// How long a starting process may take to register.
    pub start_timeout: Duration,
    /// How long a swap may take.
    pub swap_timeout: Duration,
    /// Swap out processes idle longer than this (none: never).
    pub idle_swap: Option<Duration>,
    /// How often processes report metrics.
    pub metrics_interval: Duration,
    /// Processes also serve RDMA on this address (`auto`, an IP, IP:PORT); none: TCP only.
    pub process_rdma: Option<String>,
    /// The data-plane transport processes serve with (`uring`, `mio`, `auto`); none: theirs
    /// (`auto`).
    pub process_transport: Option<String>,
    /// Processes serve authenticated data-plane clients only (`--client-auth`): clients present
    /// their application's client key ([`ControlPlane::client_key`]).
    pub client_auth: bool,
    /// Folders whose libraries manifests may name in place (`--function-root`; links in them are
    /// resolved when a manifest is checked);
    /// otherwise libraries must be uploaded with the manifest ([`crate::application`]).
    pub function_roots: Vec<PathBuf>,
    /// The log format its processes write (`--log-format`), the control plane's own.
    pub log_format: crate::logging::LogFormat,
    /// How long a client of the HTTP API may take to send a request's header before its
    /// connection is closed (a half-sent request never holds a connection for good).
    pub header_timeout: Duration,
}

impl ControlConfig {
    /// Defaults for a data folder.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            swap_dir: data_dir.join("swap"),
            data_dir,
            start_timeout: Duration::from_secs(20),
            swap_timeout: Duration::from_secs(300),
            idle_swap: None,
            metrics_interval: Duration::from_millis(500),
            process_rdma: None,
            process_transport: None,
            client_auth: false,
            function_roots: Vec::new(),
            log_format: crate::logging::LogFormat::Text,
            header_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct Entry {
    record: ProcessRecord,
    /// The record as last committed: written to the database, or a fact ([`ControlPlane::record_fact`])
    /// waiting to be; a request whose write fails puts `record` back to it.
    saved: ProcessRecord,
    link: Option<ControlLink>,
    /// Counts OS processes started for this record: an exit of an older one changes nothing.
    generation: u64,
    swap_result: Option<Result<praas_dataplane::swap::SwapReport, String>>,
    /// When it last became ALLOCATED (for the idle downscaler).
    since: Instant,
}

impl Entry {
    /// An entry for a record as committed, no OS process known.
    fn new(record: ProcessRecord, generation: u64) -> Self {
        Self { saved: record.clone(), record, link: None, generation, swap_result: None, since: Instant::now() }
    }
}

#[derive(Debug, Default)]
struct Registry {
    apps: BTreeMap<String, Application>,
    processes: BTreeMap<(String, String), Entry>,
}

struct Inner {
    config: ControlConfig,
    store: Store,
    backend: Box<dyn Backend>,
    registry: Mutex<Registry>,
    changed: Condvar,
    control_addr: Mutex<String>,
    clients: Mutex<HashMap<String, Vec<Client>>>,
    next_auto: Mutex<u64>,
    metrics: ControlMetrics,
    /// Whether the `praas-store-retry` thread runs: it writes the records the database could not
    /// take yet ([`Store::flush_pending`]) until there are none.
    retrying: std::sync::atomic::AtomicBool,
    /// Swap-in requests of processes ([`ControlPlane::on_swap_in_request`]) being served now.
    swap_in_requests: std::sync::atomic::AtomicUsize,
}

/// Most swap-in requests of processes served at once (each waits on a thread of its own); one
/// more is answered `Overloaded` at once.
pub const MAX_SWAP_IN_REQUESTS: usize = 256;

/// The control plane; cheap to clone (shared).
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("data_dir", &self.inner.config.data_dir).finish()
    }
}

/// An application as the API shows it (no secret).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppView {
    /// Name.
    pub name: String,
    /// Default resources.
    pub resources: Resources,
    /// Function names.
    pub functions: Vec<String>,
    /// Number of processes.
    pub processes: usize,
    /// Slurm settings of its processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<crate::model::SlurmOptions>,
}

fn function_names(manifest: &str) -> Vec<String> {
    Manifest::from_toml(manifest, Path::new("/"))
        .map(|m| m.functions.into_iter().map(|f| f.name).collect())
        .unwrap_or_default()
}

impl ControlPlane {
    /// Opens the control plane's data folder and recovers what it held: applications, and
    /// processes (running ones are watched again and re-register through the control channel).
    pub fn open(config: ControlConfig, backend: Box<dyn Backend>) -> Result<Self, ControlError> {
        // Owner-only: the database holds every application's secret.
        crate::private_fs::create_dir(&config.data_dir)?;
        let store = Store::open(&config.data_dir.join("control.redb"))?;
        let mut registry = Registry::default();
        for app in store.apps()? {
            registry.apps.insert(app.name.clone(), app);
        }
        let recovered = store.processes()?;
        let plane = Self {
            inner: Arc::new(Inner {
                config,
                store,
                backend,
                registry: Mutex::new(registry),
                changed: Condvar::new(),
                control_addr: Mutex::new(String::new()),
                clients: Mutex::new(HashMap::new()),
                next_auto: Mutex::new(0),
                metrics: ControlMetrics::default(),
                retrying: std::sync::atomic::AtomicBool::new(false),
                swap_in_requests: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        for mut record in recovered {
            let key = (record.app.clone(), record.name.clone());
            let mut generation = 0;
            let mut vanished = false;
            if record.status.is_running() {
                let handle = record.handle.clone().or_else(|| record.pid.map(|pid| pid.to_string()));
                match handle.filter(|handle| plane.inner.backend.alive(handle)) {
                    Some(handle) => {
                        generation = 1;
                        plane.inner.backend.adopt(&handle, plane.exit_handler(&record.app, &record.name, generation));
                    }
                    None => {
                        plane.recover_vanished(&mut record);
                        record.data_addr = None;
                        record.rdma_addr = None;
                        record.pid = None;
                        record.handle = None;
                        vanished = true;
                    }
                }
            }
            let mut entry = Entry::new(record, generation);
            if vanished {
                // A fact: a control plane restarted on a full data folder starts, and writes it
                // once the disk takes it.
                plane.record_fact(&mut entry);
            }
            plane.registry().processes.insert(key, entry);
        }
        Ok(plane)
    }

    /// What a running record whose OS process was gone at start-up becomes: a swap-out whose
    /// complete snapshot carries its id is SWAPPED_OUT, a swap-in goes back to SWAPPED_OUT (its
    /// snapshot untouched), anything else is FAILURE with the reason.
    fn recover_vanished(&self, record: &mut ProcessRecord) {
        const GONE: &str = "its OS process was gone when the control plane restarted";
        match record.status {
            ProcessStatus::SwappingOut => {
                match self.complete_snapshot(&record.app, &record.name, record.swap_id.as_deref()) {
                    Ok(manifest) => {
                        record.status = ProcessStatus::SwappedOut;
                        record.error = None;
                        record.swap = Some(SwapInfo { bytes: manifest.bytes(), secs: 0.0, total_secs: 0.0 });
                    }
                    Err(reason) => {
                        record.status = ProcessStatus::Failure;
                        record.error = Some(format!("{GONE} while it swapped out: {reason}"));
                    }
                }
            }
            ProcessStatus::SwappingIn => {
                record.status = ProcessStatus::SwappedOut;
                record.error = Some(format!("swap-in interrupted: {GONE}; its snapshot is kept"));
            }
            _ => {
                record.status = ProcessStatus::Failure;
                record.error = Some(GONE.into());
            }
        }
    }

    /// The manifest of the process's snapshot if it is complete, verified and written by the
    /// swap-out `swap_id`; else why not (the snapshot in place, if any, is left as it is).
    fn complete_snapshot(&self, app: &str, name: &str, swap_id: Option<&str>) -> Result<SnapshotManifest, String> {
        let Some(swap_id) = swap_id else {
            return Err("the swap-out has no id (recorded by an older control plane)".into());
        };
        match self.swap_store().verify(app, name) {
            Ok(manifest) if manifest.swap_id == swap_id => Ok(manifest),
            Ok(manifest) => Err(format!(
                "the snapshot of swap {swap_id} was not completed; the snapshot in place (swap {}) is kept",
                if manifest.swap_id.is_empty() { "without id" } else { &manifest.swap_id }
            )),
            Err(SwapError::Missing(_)) => Err(format!("the snapshot of swap {swap_id} was not completed")),
            Err(e) => Err(format!("the snapshot of swap {swap_id} is unusable: {e}")),
        }
    }

    /// Releases the backend's own resources (a Slurm pool) before the control plane exits.
    pub fn shutdown(&self) {
        self.inner.backend.shutdown();
    }

    /// Records where the control channel listens (processes are told on start).
    pub fn set_control_addr(&self, addr: String) {
        *self.inner.control_addr.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// The settings.
    pub fn config(&self) -> &ControlConfig {
        &self.inner.config
    }

    /// The database (for settings such as the control port).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The counters and histograms of what the control plane does (the HTTP API counts its
    /// requests in them).
    pub fn metrics(&self) -> &ControlMetrics {
        &self.inner.metrics
    }

    /// Every metric in the Prometheus text format (`GET /metrics`): the events counted so far and
    /// every process as it is now.
    pub fn metrics_text(&self) -> Result<String, MetricsError> {
        let processes = self
            .registry()
            .processes
            .iter()
            .map(|((app, process), entry)| ProcessSnapshot {
                app: app.clone(),
                process: process.clone(),
                status: entry.record.status,
                metrics: entry.record.metrics.clone(),
                // While it runs: a process that is not running serves no transport.
                transport: entry.record.data_addr.as_ref().and(entry.record.transport.clone()),
                rdma: entry.record.rdma_addr.is_some(),
            })
            .collect();
        self.inner.metrics.encode(processes)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn swap_store(&self) -> SwapStore {
        SwapStore::new(&self.inner.config.swap_dir)
    }

    /// Writes a record through and wakes everyone waiting for a change: the change a request
    /// made to `entry.record` is committed. When the write fails, the record is put back to what
    /// was committed before (its live metrics kept), so memory and disk agree and the request
    /// fails having changed nothing.
    fn save(&self, entry: &mut Entry) -> Result<(), StoreError> {
        match self.inner.store.put_process(&entry.record) {
            Ok(()) => {
                entry.saved = entry.record.clone();
                self.inner.changed.notify_all();
                Ok(())
            }
            Err(e) => {
                let metrics = std::mem::take(&mut entry.record.metrics);
                entry.record = entry.saved.clone();
                entry.record.metrics = metrics;
                Err(e)
            }
        }
    }

    /// Writes a record that states a fact no request can refuse (its OS process started,
    /// registered or exited): memory takes it at once; if the database cannot, the store keeps it
    /// and writes it with the next write that succeeds, or a retry thread does (until then a
    /// restart finds the earlier record, and recovers as from a crash).
    fn record_fact(&self, entry: &mut Entry) {
        entry.saved = entry.record.clone();
        self.inner.changed.notify_all();
        if let Err(e) = self.inner.store.put_process_later(&entry.record) {
            let (app, name, status) = (&entry.record.app, &entry.record.name, entry.record.status.name());
            tracing::warn!(app, process = name, "cannot record that {app}/{name} is {status} yet: {e}");
            if !self.inner.retrying.swap(true, std::sync::atomic::Ordering::AcqRel) {
                self.retry_pending();
            }
        }
    }

    /// Writes the store's pending records on a thread until there are none.
    fn retry_pending(&self) {
        use std::sync::atomic::Ordering;
        let plane = self.clone();
        let spawned = std::thread::Builder::new().name("praas-store-retry".into()).spawn(move || loop {
            std::thread::sleep(PENDING_RETRY);
            match plane.inner.store.flush_pending() {
                Ok(0) => {}
                Ok(written) => tracing::info!("recorded {written} processes' changes the database could not take"),
                Err(e) => tracing::debug!("recording processes' changes: {e}"),
            }
            if !plane.inner.store.has_pending() {
                plane.inner.retrying.store(false, Ordering::Release);
                // A record that became pending since: go on unless another thread took over.
                if !plane.inner.store.has_pending() || plane.inner.retrying.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            self.inner.retrying.store(false, Ordering::Release);
            tracing::warn!("cannot start the thread that records processes' changes: {e}");
        }
    }

    // ----- applications -----

    /// Creates an application from a functions manifest (TOML) and the files uploaded with it:
    /// every library must be one of them or lie inside a function root ([`crate::application`]).
    pub fn create_app(
        &self,
        name: &str,
        manifest: &str,
        uploads: Vec<crate::application::Upload>,
        resources: Resources,
        slurm: Option<crate::model::SlurmOptions>,
    ) -> Result<AppView, ControlError> {
        if !valid_name(name) {
            return Err(ControlError::InvalidName { kind: "application", name: name.into() });
        }
        self.check_resources(&resources, slurm.as_ref())?;
        let dir = crate::application::app_dir(&self.inner.config.data_dir, name);
        let deployment =
            crate::application::Deployment::resolve(manifest, uploads, &dir, &self.inner.config.function_roots)
                .map_err(ControlError::Deploy)?;
        let mut registry = self.registry();
        if registry.apps.contains_key(name) {
            return Err(ControlError::AppExists { app: name.into() });
        }
        deployment.install(&dir).map_err(ControlError::Install)?;
        let app = Application {
            name: name.into(),
            manifest: deployment.manifest,
            resources,
            secret: praas_dataplane::auth::new_secret(),
            slurm,
        };
        if let Err(e) = self.inner.store.put_app(&app) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        registry.apps.insert(name.into(), app.clone());
        Ok(app_view(&registry, &app))
    }

    /// Refuses resources that are not positive or exceed what one node of the backend offers.
    fn check_resources(
        &self,
        resources: &Resources,
        slurm: Option<&crate::model::SlurmOptions>,
    ) -> Result<(), ControlError> {
        let capacity = self.inner.backend.capacity(slurm).map_err(ControlError::Capacity)?;
        resources.check(&capacity).map_err(ControlError::Resources)
    }

    /// Every application.
    pub fn list_apps(&self) -> Vec<AppView> {
        let registry = self.registry();
        registry.apps.values().map(|app| app_view(&registry, app)).collect()
    }

    /// The client key of application `name`: what its data-plane clients authenticate with.
    pub fn client_key(&self, name: &str) -> Result<serde_json::Value, ControlError> {
        let secret = self.app_secret(name).ok_or_else(|| no_application(name))?;
        Ok(serde_json::json!({"app": name, "client_key": praas_dataplane::auth::client_key(&secret)}))
    }

    /// One application.
    pub fn get_app(&self, name: &str) -> Result<AppView, ControlError> {
        let registry = self.registry();
        let app = registry.apps.get(name).ok_or_else(|| no_application(name))?;
        Ok(app_view(&registry, app))
    }

    /// Deletes an application that has no processes.
    pub fn delete_app(&self, name: &str) -> Result<(), ControlError> {
        let mut registry = self.registry();
        if !registry.apps.contains_key(name) {
            return Err(no_application(name));
        }
        let count = registry.processes.keys().filter(|(app, _)| app == name).count();
        if count > 0 {
            return Err(ControlError::AppHasProcesses { app: name.into(), count });
        }
        self.inner.store.remove_app(name)?;
        registry.apps.remove(name);
        let dir = crate::application::app_dir(&self.inner.config.data_dir, name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("deleted application {name:?} left {}: {e}", dir.display());
            }
        }
        Ok(())
    }

    /// The secret of an application (for the control channel's authentication).
    pub fn app_secret(&self, app: &str) -> Option<String> {
        self.registry().apps.get(app).map(|a| a.secret.clone())
    }

    // ----- processes -----

    /// Every process of an application.
    pub fn list_processes(&self, app: &str) -> Result<Vec<ProcessRecord>, ControlError> {
        let registry = self.registry();
        if !registry.apps.contains_key(app) {
            return Err(no_application(app));
        }
        Ok(registry.processes.iter().filter(|((a, _), _)| a == app).map(|(_, e)| e.record.clone()).collect())
    }

    /// One process; while it swaps out, with the bytes of its snapshot written so far.
    pub fn get_process(&self, app: &str, name: &str) -> Result<ProcessRecord, ControlError> {
        let mut record = lookup(&self.registry(), app, name)?.record.clone();
        if record.status == ProcessStatus::SwappingOut {
            record.swap_progress = self.swap_store().folder(app, name).ok().map(|folder| bytes_under(&folder, ".tmp-"));
        }
        Ok(record)
    }

    /// Creates a process and waits until it is ALLOCATED (or failed).
    pub fn create_process(
        &self,
        app: &str,
        name: &str,
        resources: Option<Resources>,
    ) -> Result<ProcessRecord, ControlError> {
        if !valid_name(name) {
            return Err(ControlError::InvalidName { kind: "process", name: name.into() });
        }
        let started = Instant::now();
        {
            let registry = self.registry();
            let application = registry.apps.get(app).ok_or_else(|| no_application(app))?;
            let resources = resources.unwrap_or(application.resources);
            let slurm = application.slurm.clone();
            let application = application.clone();
            drop(registry);
            self.check_resources(&resources, slurm.as_ref())?;
            // The files its process needs first: a data folder that cannot take them (full)
            // refuses the process before anything of it is recorded.
            self.manifest_path(&application)?;
            let mut registry = self.registry();
            if !registry.apps.contains_key(app) {
                return Err(no_application(app));
            }
            let key = (app.to_owned(), name.to_owned());
            if let Some(existing) = registry.processes.get(&key) {
                return Err(ControlError::ProcessExists {
                    app: app.into(),
                    name: name.into(),
                    status: existing.record.status,
                });
            }
            // Written before it is visible: a write that fails leaves no process behind.
            let entry = Entry::new(ProcessRecord::new(app, name, resources), 0);
            self.inner.store.put_process(&entry.record)?;
            self.inner.changed.notify_all();
            registry.processes.insert(key, entry);
        }
        self.launch(app, name, false)?;
        self.wait_for(app, name, self.inner.config.start_timeout, |s| !matches!(s, ProcessStatus::Allocating))?;
        let record = self.settled(app, name, ProcessStatus::Allocated)?;
        self.inner.metrics.observe_allocation(app, started.elapsed().as_secs_f64());
        Ok(record)
    }

    /// Returns the record if it reached `want`, else the error that explains why not.
    fn settled(&self, app: &str, name: &str, want: ProcessStatus) -> Result<ProcessRecord, ControlError> {
        let record = self.get_process(app, name)?;
        if record.status == want {
            Ok(record)
        } else {
            let reason = record.error.clone().unwrap_or_default();
            Err(ControlError::Unsettled { app: app.into(), name: name.into(), status: record.status, reason })
        }
    }

    /// Writes the manifest the application's processes load (0600): the stored one, already
    /// resolved to absolute library paths and written by the TOML library at creation.
    fn manifest_path(&self, app: &Application) -> Result<PathBuf, ControlError> {
        let dir = crate::application::app_dir(&self.inner.config.data_dir, &app.name);
        crate::private_fs::create_dir(&dir)?;
        let path = dir.join("functions.toml");
        crate::private_fs::write_file(&path, app.manifest.as_bytes())?;
        Ok(path)
    }

    fn exit_handler(&self, app: &str, name: &str, generation: u64) -> crate::backend::ExitHandler {
        let plane = self.clone();
        let (app, name) = (app.to_owned(), name.to_owned());
        Arc::new(move |exit: Exit| plane.on_exit(&app, &name, generation, exit))
    }

    /// Starts the OS process of a record that is ALLOCATING or SWAPPING_IN.
    fn launch(&self, app: &str, name: &str, restore: bool) -> Result<(), ControlError> {
        let (application, resources, generation) = {
            let mut registry = self.registry();
            let application = registry.apps.get(app).cloned().ok_or_else(|| no_application(app))?;
            let entry = lookup_mut(&mut registry, app, name)?;
            entry.generation += 1;
            (application, entry.record.resources, entry.generation)
        };
        let manifest = match self.manifest_path(&application) {
            Ok(manifest) => manifest,
            Err(e) => {
                // Not started (a full data folder, say): the record says why instead of waiting.
                let mut registry = self.registry();
                let entry = lookup_mut(&mut registry, app, name)?;
                if entry.generation == generation {
                    entry.record.status = ProcessStatus::Failure;
                    entry.record.error = Some(format!("not started: {e}"));
                    self.record_fact(entry);
                }
                return Err(e);
            }
        };
        let control_addr = self.inner.control_addr.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let data = &self.inner.config.data_dir;
        let launch = Launch {
            app: app.into(),
            process: name.into(),
            manifest,
            resources,
            control_addr,
            secret: application.secret.clone(),
            swap_dir: self.inner.config.swap_dir.clone(),
            files_dir: data.join("processes").join(app).join(name),
            restore,
            log: self.log_path(app, name),
            metrics_interval: self.inner.config.metrics_interval,
            slurm: application.slurm.clone(),
            rdma: self.inner.config.process_rdma.clone(),
            transport: self.inner.config.process_transport.clone(),
            client_auth: self.inner.config.client_auth,
            log_format: self.inner.config.log_format,
        };
        match self.inner.backend.start(&launch, self.exit_handler(app, name, generation)) {
            Ok(handle) => {
                let mut registry = self.registry();
                let entry = lookup_mut(&mut registry, app, name)?;
                if entry.generation == generation && entry.record.status.is_running() {
                    // The local backend's handle is the pid; a Slurm handle is a job name.
                    if let Ok(pid) = handle.parse() {
                        entry.record.pid = Some(pid);
                    }
                    entry.record.handle = Some(handle);
                    self.record_fact(entry);
                }
                Ok(())
            }
            Err(e) => {
                let mut registry = self.registry();
                let entry = lookup_mut(&mut registry, app, name)?;
                // A swap-in that could not start leaves the snapshot as it was: swapped out.
                entry.record.status = if restore { ProcessStatus::SwappedOut } else { ProcessStatus::Failure };
                entry.record.error = Some(e.to_string());
                self.record_fact(entry);
                Err(ControlError::Launch(e))
            }
        }
    }

    /// Waits until the process's status satisfies `done`, or `timeout` passes ([`ControlError::TimedOut`] then).
    fn wait_for(
        &self,
        app: &str,
        name: &str,
        timeout: Duration,
        done: impl Fn(ProcessStatus) -> bool,
    ) -> Result<ProcessStatus, ControlError> {
        let deadline = Instant::now() + timeout;
        let mut registry = self.registry();
        loop {
            let status = lookup(&registry, app, name)?.record.status;
            if done(status) {
                return Ok(status);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ControlError::TimedOut { app: app.into(), name: name.into(), status, after: timeout });
            }
            registry = self.inner.changed.wait_timeout(registry, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Called by the control channel when a process authenticated; returns an error to refuse it,
    /// else the answer's payload. A process that registers with a pending swap (it confirmed a
    /// swap-out and then lost its connection, staying drained) is told the swap is committed when
    /// the record says that swap was recorded (it exits then, and is not registered); otherwise
    /// it registers as usual and serves on with the state it kept.
    pub fn on_register(
        &self,
        registration: &Registration,
        link: ControlLink,
    ) -> Result<RegistrationAnswer, RegisterError> {
        let mut registry = self.registry();
        let entry =
            lookup_mut(&mut registry, &registration.app, &registration.process).map_err(RegisterError::Unknown)?;
        if let Some(pending) = &registration.pending_swap {
            // Recorded: the record is SWAPPED_OUT by that swap, or another OS process swapped in
            // from its snapshot since. (ALLOCATED with this very pid: the swap was given up on.)
            let recorded = entry.record.swap_id.as_ref() == Some(pending)
                && match entry.record.status {
                    ProcessStatus::SwappedOut | ProcessStatus::SwappingIn => true,
                    ProcessStatus::Allocated => entry.record.pid.is_some_and(|pid| pid != registration.pid),
                    _ => false,
                };
            if recorded {
                tracing::info!(
                    app = registration.app,
                    process = registration.process,
                    swap = pending,
                    "a process asked about its swap: recorded, it exits"
                );
                return Ok(RegistrationAnswer { swap_committed: true });
            }
        }
        match entry.record.status {
            ProcessStatus::Allocating | ProcessStatus::SwappingIn | ProcessStatus::Allocated => {}
            // A process that re-registers after a control plane restart while it was being
            // swapped or stopped: the request that was under way is lost; it serves on.
            ProcessStatus::SwappingOut | ProcessStatus::Closing => {}
            other => return Err(RegisterError::Status(other)),
        }
        if entry.record.pid.is_some_and(|pid| pid != registration.pid)
            && entry.record.status == ProcessStatus::Allocated
        {
            return Err(RegisterError::AlreadyRegistered(entry.record.pid.unwrap_or(0)));
        }
        entry.record.status = ProcessStatus::Allocated;
        entry.record.data_addr = Some(registration.data_addr.clone());
        entry.record.rdma_addr = registration.rdma_addr.clone();
        entry.record.transport = registration.transport.clone();
        entry.record.pid = Some(registration.pid);
        entry.record.error = None;
        if let Some(placement) = entry.record.handle.as_deref().and_then(|h| self.inner.backend.placement(h)) {
            entry.record.node = Some(placement.node);
            entry.record.job = placement.job;
        }
        // A fact: the process serves (refusing it for a full disk would make it exit and lose
        // its state); the database takes it as soon as it can.
        self.record_fact(entry);
        entry.link = Some(link);
        entry.since = Instant::now();
        Ok(RegistrationAnswer::default())
    }

    /// Tells every running process of `app` about the others (the control channel calls it
    /// once it has answered a registration, so the answer comes first).
    pub fn announce_peers(&self, app: &str) {
        let registry = self.registry();
        let peers: Vec<PeerInfo> = registry
            .processes
            .iter()
            .filter(|((a, _), _)| a == app)
            .map(|((_, name), e)| PeerInfo {
                id: name.clone(),
                addr: e.record.data_addr.clone().unwrap_or_default(),
                rdma: e.record.rdma_addr.clone(),
                status: e.record.status,
            })
            .collect();
        let links: Vec<ControlLink> =
            registry.processes.iter().filter(|((a, _), _)| a == app).filter_map(|(_, e)| e.link.clone()).collect();
        drop(registry);
        let list = PeerList { peers };
        for link in links {
            if let Err(e) = link.send(MessageKind::PeerUpdate, &list) {
                tracing::debug!("peer update not delivered: {e}");
            }
        }
    }

    /// Called by the control channel with a process's metrics: its counters, and the
    /// per-function figures since its previous report (added up here, not kept in its record).
    pub fn on_metrics(&self, app: &str, name: &str, mut metrics: MetricsReport) {
        let functions = std::mem::take(&mut metrics.functions);
        let mut registry = self.registry();
        if let Ok(entry) = lookup_mut(&mut registry, app, name) {
            entry.record.metrics = metrics;
            self.inner.metrics.add_function_reports(app, name, &functions);
        }
    }

    /// The statistics of each function of a process that has run (`praas process stats`).
    pub fn function_stats(&self, app: &str, name: &str) -> Result<Vec<crate::metrics::FunctionStats>, ControlError> {
        let registry = self.registry();
        lookup(&registry, app, name)?;
        Ok(self.inner.metrics.function_stats(app, name))
    }

    /// Called by the control channel when a process confirms (or fails) a swap. A confirmation
    /// of a swap nobody waits for any more (it timed out, or it is not the swap under way) is
    /// answered at once with an abandoning decision: the process serves on.
    pub fn on_swap_confirm(&self, app: &str, name: &str, confirmation: SwapConfirmation) {
        let mut registry = self.registry();
        let Ok(entry) = lookup_mut(&mut registry, app, name) else { return };
        let current = entry.record.status == ProcessStatus::SwappingOut
            && entry.swap_result.is_none()
            && (confirmation.swap_id.is_empty() || entry.record.swap_id.as_ref() == Some(&confirmation.swap_id));
        if current {
            entry.swap_result = Some(confirmation.result);
            self.inner.changed.notify_all();
            return;
        }
        let link = entry.link.clone();
        drop(registry);
        if let (Ok(_), Some(link)) = (&confirmation.result, link) {
            tracing::warn!(app, process = name, swap = confirmation.swap_id, "a swap nobody waits for: abandoned");
            let decision = SwapDecision { swap_id: confirmation.swap_id, committed: false };
            if let Err(e) = link.send(MessageKind::SwapCommit, &decision) {
                tracing::warn!(app, process = name, "cannot abandon a stale swap: {e}");
            }
        }
    }

    /// Called by the control channel when a process's connection ends.
    pub fn on_link_closed(&self, app: &str, name: &str, link_id: u64) {
        let mut registry = self.registry();
        if let Ok(entry) = lookup_mut(&mut registry, app, name) {
            if entry.link.as_ref().is_some_and(|l| l.id == link_id) {
                entry.link = None;
            }
        }
    }

    /// Where process `name` of `app` logs (its standard output and error).
    fn log_path(&self, app: &str, name: &str) -> PathBuf {
        self.inner.config.data_dir.join("logs").join(format!("{app}.{name}.log"))
    }

    fn on_exit(&self, app: &str, name: &str, generation: u64, exit: Exit) {
        let mut registry = self.registry();
        // A process that swapped out confirms and exits with status 0: its exit can be seen
        // before the control channel has read the confirmation. Give the confirmation 2 s.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let Ok(entry) = lookup_mut(&mut registry, app, name) else { return };
            let unconfirmed = entry.record.status == ProcessStatus::SwappingOut && entry.swap_result.is_none();
            let left = deadline.saturating_duration_since(Instant::now());
            if entry.generation != generation || !exit.success || !unconfirmed || left.is_zero() {
                break;
            }
            registry = self.inner.changed.wait_timeout(registry, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        let Ok(entry) = lookup_mut(&mut registry, app, name) else { return };
        if entry.generation != generation {
            return;
        }
        // A process that died mid-swap-out: its snapshot, if complete and its swap's, is its
        // state. Verified without the registry's lock (it reads the whole snapshot).
        let mut unconfirmed_swap = None;
        if entry.record.status == ProcessStatus::SwappingOut && !entry.swap_result.as_ref().is_some_and(Result::is_ok) {
            let swap_id = entry.record.swap_id.clone();
            drop(registry);
            unconfirmed_swap = Some(self.complete_snapshot(app, name, swap_id.as_deref()));
            registry = self.registry();
        }
        let Ok(entry) = lookup_mut(&mut registry, app, name) else { return };
        if entry.generation != generation {
            return;
        }
        let status = entry.record.status;
        entry.link = None;
        entry.record.data_addr = None;
        entry.record.rdma_addr = None;
        entry.record.pid = None;
        entry.record.handle = None;
        let died = || match last_words(&self.log_path(app, name)) {
            Some(words) => format!("the process died: {}: {words}", exit.description),
            None => format!("the process died: {}", exit.description),
        };
        entry.record.status = match (status, unconfirmed_swap) {
            (ProcessStatus::Closing, _) => ProcessStatus::Closed,
            (ProcessStatus::SwappedOut | ProcessStatus::Closed | ProcessStatus::Failure, _) => status,
            (ProcessStatus::SwappingOut, Some(Ok(manifest))) => {
                tracing::warn!(app, process = name, "process died after writing its snapshot: swapped out");
                entry.record.error = None;
                entry.record.swap = Some(SwapInfo { bytes: manifest.bytes(), secs: 0.0, total_secs: 0.0 });
                ProcessStatus::SwappedOut
            }
            (ProcessStatus::SwappingOut, Some(Err(reason))) => {
                tracing::warn!(app, process = name, "process died while swapping out: {}", exit.description);
                entry.record.error = Some(format!("{} while it swapped out: {reason}", died()));
                ProcessStatus::Failure
            }
            (ProcessStatus::SwappingOut, None) => status,
            (ProcessStatus::SwappingIn, _) => {
                tracing::warn!(app, process = name, "swap-in failed: {}", exit.description);
                entry.record.error = Some(format!("swap-in failed: {}; its snapshot is kept", died()));
                ProcessStatus::SwappedOut
            }
            _ => {
                entry.record.error = Some(died());
                tracing::warn!(app, process = name, "process died: {}", exit.description);
                ProcessStatus::Failure
            }
        };
        self.record_fact(entry);
        drop(registry);
        self.drop_clients(app, name);
        self.announce_peers(app);
    }

    /// Swaps a process out: it drains, writes its snapshot, confirms; SWAPPED_OUT is recorded,
    /// then the process is told to exit. Answers once SWAPPED_OUT.
    pub fn swap_out(&self, app: &str, name: &str) -> Result<ProcessRecord, ControlError> {
        let started = Instant::now();
        let swap_id = format!(
            "{:x}-{}",
            praas_dataplane::state::now_ns(),
            praas_dataplane::control_channel::hex(&praas_dataplane::auth::nonce()[..6])
        );
        let link = {
            let mut registry = self.registry();
            let entry = lookup_mut(&mut registry, app, name)?;
            if entry.record.status != ProcessStatus::Allocated {
                return Err(invalid_transition(app, name, entry.record.status, Operation::SwapOut));
            }
            let Some(link) = entry.link.clone() else {
                return Err(ControlError::NoControlChannel { app: app.into(), name: name.into() });
            };
            entry.record.status = ProcessStatus::SwappingOut;
            entry.record.swap_id = Some(swap_id.clone());
            entry.swap_result = None;
            self.save(entry)?;
            link
        };
        self.announce_peers(app);
        test_pause("request");
        if let Err(e) = link.send(MessageKind::SwapRequest, &SwapOrder { swap_id: swap_id.clone() }) {
            return self.swap_failed(app, name, SwapFailure::Unreachable(e));
        }
        let deadline = Instant::now() + self.inner.config.swap_timeout;
        let mut registry = self.registry();
        loop {
            let entry = lookup_mut(&mut registry, app, name)?;
            if entry.record.status != ProcessStatus::SwappingOut || entry.record.swap_id.as_ref() != Some(&swap_id) {
                let status = entry.record.status;
                // It died after writing its complete snapshot: that is the swap ([`Self::on_exit`]).
                if status == ProcessStatus::SwappedOut && entry.record.swap_id.as_ref() == Some(&swap_id) {
                    return Ok(entry.record.clone());
                }
                return Err(ControlError::LostWhileSwapping { app: app.into(), name: name.into(), status });
            }
            match entry.swap_result.take() {
                Some(Ok(report)) => {
                    drop(registry);
                    return self.commit_swap(app, name, &swap_id, &link, &report, started);
                }
                Some(Err(reason)) => {
                    drop(registry);
                    return self.swap_failed(app, name, SwapFailure::Reported(reason));
                }
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(registry);
                // A confirmation that comes later is answered with an abandoning decision
                // ([`Self::on_swap_confirm`]).
                return self.swap_failed(app, name, SwapFailure::NoConfirmation);
            }
            registry = self.inner.changed.wait_timeout(registry, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Records SWAPPED_OUT for the confirmed swap `swap_id`, then tells the process to exit; a
    /// record that cannot be written abandons the swap (the process serves on).
    fn commit_swap(
        &self,
        app: &str,
        name: &str,
        swap_id: &str,
        link: &ControlLink,
        report: &praas_dataplane::swap::SwapReport,
        started: Instant,
    ) -> Result<ProcessRecord, ControlError> {
        test_pause("confirmed");
        let decide = |committed| {
            let decision = SwapDecision { swap_id: swap_id.to_owned(), committed };
            if let Err(e) = link.send(MessageKind::SwapCommit, &decision) {
                // It asks again when it re-registers ([`Self::on_register`]).
                tracing::warn!(app, process = name, swap = swap_id, "the swap's decision was not delivered: {e}");
            }
        };
        let mut registry = self.registry();
        let entry = lookup_mut(&mut registry, app, name)?;
        if entry.record.status != ProcessStatus::SwappingOut || entry.record.swap_id.as_deref() != Some(swap_id) {
            let status = entry.record.status;
            drop(registry);
            decide(false);
            return Err(ControlError::LostWhileSwapping { app: app.into(), name: name.into(), status });
        }
        entry.record.status = ProcessStatus::SwappedOut;
        entry.record.data_addr = None;
        entry.record.rdma_addr = None;
        entry.record.error = None;
        let total_secs = started.elapsed().as_secs_f64();
        entry.record.swap = Some(SwapInfo { bytes: report.bytes, secs: report.secs, total_secs });
        let link_before = entry.link.take();
        if let Err(e) = self.save(entry) {
            // Not recorded: the process is told so and serves on, a fact written when it can be.
            entry.record.status = ProcessStatus::Allocated;
            self.record_fact(entry);
            entry.link = link_before;
            drop(registry);
            decide(false);
            return Err(e.into());
        }
        self.inner.metrics.observe_swap_out(app, report.bytes, total_secs);
        let record = entry.record.clone();
        drop(registry);
        test_pause("recorded");
        decide(true);
        self.drop_clients(app, name);
        self.announce_peers(app);
        self.collect_swap_garbage(app, name);
        Ok(record)
    }

    /// Deletes replaced snapshots and crashed swaps' leftovers of a process, on a thread of its
    /// own: a swap answers without waiting for hundreds of MiB to be unlinked.
    fn collect_swap_garbage(&self, app: &str, name: &str) {
        let store = self.swap_store();
        let who = format!("{app}/{name}");
        let (app, name) = (app.to_owned(), name.to_owned());
        let spawned = std::thread::Builder::new().name("praas-swap-gc".into()).spawn(move || {
            if let Err(e) = store.collect_garbage(&app, &name) {
                tracing::warn!("cleaning the swap folder of {app}/{name}: {e}");
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot clean the swap folder of {who}: {e}");
        }
    }

    fn swap_failed(&self, app: &str, name: &str, cause: SwapFailure) -> Result<ProcessRecord, ControlError> {
        let mut registry = self.registry();
        let entry = lookup_mut(&mut registry, app, name)?;
        if entry.record.status == ProcessStatus::SwappingOut {
            // The process serves on: a fact.
            entry.record.status = ProcessStatus::Allocated;
            self.record_fact(entry);
        }
        Err(ControlError::SwapFailed { app: app.into(), name: name.into(), cause })
    }

    /// Swaps a process back in from its snapshot; answers once ALLOCATED.
    pub fn swap_in(&self, app: &str, name: &str) -> Result<ProcessRecord, ControlError> {
        let started = Instant::now();
        let bytes = {
            let mut registry = self.registry();
            let entry = lookup_mut(&mut registry, app, name)?;
            if entry.record.status != ProcessStatus::SwappedOut {
                return Err(invalid_transition(app, name, entry.record.status, Operation::SwapIn));
            }
            // A missing snapshot answers like a damaged one (which the process finds): the
            // process stays SWAPPED_OUT with the reason recorded.
            if let Err(e) = self.swap_store().manifest(app, name) {
                let reason = e.to_string();
                entry.record.error = Some(reason.clone());
                self.save(entry)?;
                return Err(ControlError::SwapInFailed { app: app.into(), name: name.into(), reason });
            }
            entry.record.status = ProcessStatus::SwappingIn;
            entry.record.error = None;
            // From here on a late exit of the swapped-out process is an older generation's.
            entry.generation += 1;
            self.save(entry)?;
            // The snapshot it restores is the one its last swap-out wrote.
            entry.record.swap.as_ref().map_or(0, |swap| swap.bytes)
        };
        self.launch(app, name, true)?;
        let status = self.wait_for(app, name, self.inner.config.start_timeout, |s| s != ProcessStatus::SwappingIn)?;
        if status == ProcessStatus::SwappedOut {
            let reason = self.get_process(app, name)?.error.unwrap_or_default();
            return Err(ControlError::SwapInFailed { app: app.into(), name: name.into(), reason });
        }
        let record = self.settled(app, name, ProcessStatus::Allocated)?;
        self.inner.metrics.observe_swap_in(app, bytes, started.elapsed().as_secs_f64());
        // The peers hear of its new address before the caller hears of the swap-in (the
        // registration's own announcement may still be on its way).
        self.announce_peers(app);
        Ok(record)
    }

    /// Stops a process; answers once CLOSED.
    pub fn stop(&self, app: &str, name: &str) -> Result<ProcessRecord, ControlError> {
        let handle = {
            let mut registry = self.registry();
            let entry = lookup_mut(&mut registry, app, name)?;
            if entry.record.status != ProcessStatus::Allocated {
                return Err(invalid_transition(app, name, entry.record.status, Operation::Stop));
            }
            entry.record.status = ProcessStatus::Closing;
            self.save(entry)?;
            entry.record.handle.clone().or_else(|| entry.record.pid.map(|pid| pid.to_string()))
        };
        if let Some(handle) = handle {
            self.inner.backend.signal(&handle, false);
            if self.wait_for(app, name, Duration::from_secs(10), |s| s != ProcessStatus::Closing).is_err() {
                self.inner.backend.signal(&handle, true);
                self.wait_for(app, name, Duration::from_secs(10), |s| s != ProcessStatus::Closing)?;
            }
        } else {
            // No OS process to stop: a fact.
            let mut registry = self.registry();
            let entry = lookup_mut(&mut registry, app, name)?;
            entry.record.status = ProcessStatus::Closed;
            self.record_fact(entry);
        }
        self.settled(app, name, ProcessStatus::Closed)
    }

    /// Deletes a process that is not running, and its swap data. A process whose snapshot is
    /// the only copy of its state, one no process has restored (SWAPPED_OUT: every failed swap-in
    /// returns there, so no FAILURE holds such a snapshot), is deleted only with `force`
    /// ([`ControlError::UnrestoredSnapshot`] otherwise).
    pub fn delete_process(&self, app: &str, name: &str, force: bool) -> Result<(), ControlError> {
        let mut registry = self.registry();
        let entry = lookup(&registry, app, name)?;
        let status = entry.record.status;
        if status.is_running() {
            return Err(invalid_transition(app, name, status, Operation::Delete));
        }
        if status == ProcessStatus::SwappedOut && !force {
            return Err(ControlError::UnrestoredSnapshot { app: app.into(), name: name.into(), status });
        }
        self.swap_store().delete(app, name).map_err(ControlError::SwapStore)?;
        self.inner.store.remove_process(app, name)?;
        registry.processes.remove(&(app.to_owned(), name.to_owned()));
        self.inner.metrics.forget_process(app, name);
        let folder = self.inner.config.data_dir.join("processes").join(app).join(name);
        let _ = std::fs::remove_dir_all(folder);
        self.inner.changed.notify_all();
        Ok(())
    }

    // ----- invocations -----

    /// Invokes `function` of `app`: on `process` if named (swapping it in when swapped out),
    /// else on an idle ALLOCATED process, a swapped-out one, or a new one (FaaS mode). Counts
    /// the invocation and its outcome in the metrics.
    pub fn invoke(
        &self,
        app: &str,
        function: &str,
        process: Option<&str>,
        input: &[u8],
    ) -> Result<Vec<u8>, ControlError> {
        let result = self.route(app, function, process, input);
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.outcome(),
        };
        self.inner.metrics.count_routed_invocation(app, &outcome);
        result
    }

    /// [`ControlPlane::invoke`], uncounted.
    fn route(&self, app: &str, function: &str, process: Option<&str>, input: &[u8]) -> Result<Vec<u8>, ControlError> {
        let name = match process {
            Some(name) => name.to_owned(),
            None => self.pick_process(app)?,
        };
        // A process that is swapping out refuses new invocations with a retryable error before
        // running them: wait for it to settle, swap it back in, and try again.
        for _ in 0..3 {
            let record = self.ready(app, &name)?;
            let addr = record
                .data_addr
                .clone()
                .ok_or_else(|| ControlError::NoDataAddress { app: app.into(), name: name.clone() })?;
            match self.call(app, &name, &addr, function, input) {
                Err(ClientError::Remote { status, .. }) if status.is_retryable() => {
                    self.wait_for(app, &name, self.inner.config.swap_timeout, |s| !s.is_transient())?;
                }
                Err(ClientError::Remote { status, message }) => return Err(ControlError::Function { status, message }),
                Err(source) => return Err(ControlError::Unreachable { app: app.into(), name, source }),
                Ok(output) => return Ok(output),
            }
        }
        Err(ControlError::StayedBusy { app: app.into(), name })
    }

    /// Brings a named process to ALLOCATED: waits out transitions, swaps it in if needed.
    fn ready(&self, app: &str, name: &str) -> Result<ProcessRecord, ControlError> {
        self.allocated(app, name, self.inner.config.swap_timeout)
    }

    /// Brings a named process to ALLOCATED, waiting at most `wait` for another request's
    /// transition (a swap-in already under way, a swap-out) to end: swaps it in when it is
    /// SWAPPED_OUT. Requests at the same time swap it in once: the first makes it SWAPPING_IN,
    /// the others wait for that swap-in's outcome.
    fn allocated(&self, app: &str, name: &str, wait: Duration) -> Result<ProcessRecord, ControlError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let status = self.wait_for(app, name, left, |s| !s.is_transient())?;
            match status {
                ProcessStatus::Allocated => return self.get_process(app, name),
                ProcessStatus::SwappedOut => match self.swap_in(app, name) {
                    // Another request began swapping it in since: wait for its outcome.
                    Err(ControlError::InvalidTransition { .. }) if !left.is_zero() => {}
                    other => return other,
                },
                other => return Err(invalid_transition(app, name, other, Operation::Invoke)),
            }
        }
    }

    /// Called by the control channel when process `caller` of `app` asks (request `id`) for
    /// process `name` of its application to be swapped in for a remote invocation, within `wait`
    /// (what is left of the caller's deadline). The swap-in runs on a thread of its own; the
    /// answer, a `SwapInAnswer` of the same id, is queued on `caller`'s control connection once
    /// the process is ALLOCATED (after the peer list that says so: [`ControlPlane::swap_in`]
    /// announces it first), or with the reason: `NotFound` (no such process in the application),
    /// `Timeout` (still not ALLOCATED within `wait`), `Overloaded` ([`MAX_SWAP_IN_REQUESTS`]),
    /// `Unavailable` (any other reason, in words).
    pub fn on_swap_in_request(&self, app: &str, caller: &str, id: u64, wait: Duration, name: &str, writer: LinkWriter) {
        use std::sync::atomic::Ordering;
        let metrics = self.inner.metrics.clone();
        let counted = app.to_owned();
        let answer = move |result: Result<ProcessRecord, (Status, String)>| {
            let outcome = match &result {
                Ok(_) => "ok".to_owned(),
                Err((status, _)) => crate::metrics::status_label(*status),
            };
            metrics.count_swap_in_request(&counted, &outcome);
            let (status, meta, payload) = match result {
                Ok(record) => {
                    let info = PeerInfo {
                        id: record.name.clone(),
                        addr: record.data_addr.clone().unwrap_or_default(),
                        rdma: record.rdma_addr.clone(),
                        status: record.status,
                    };
                    (Status::Ok, String::new(), serde_json::to_vec(&info).unwrap_or_default())
                }
                Err((status, reason)) => (status, reason, Vec::new()),
            };
            let header = Header { kind: MessageKind::SwapInAnswer, ..Header::response(id, status, 0, 0) };
            if let Err(e) = writer.send_frame(header, meta.as_bytes(), &payload) {
                tracing::debug!("a swap-in answer was not delivered: {e}");
            }
        };
        let waiting = self.inner.swap_in_requests.fetch_add(1, Ordering::SeqCst);
        if waiting >= MAX_SWAP_IN_REQUESTS {
            self.inner.swap_in_requests.fetch_sub(1, Ordering::SeqCst);
            answer(Err((Status::Overloaded, format!("{waiting} swap-in requests are already being served"))));
            return;
        }
        tracing::info!(app, caller, process = name, "a remote invocation asks for a swap-in");
        let plane = self.clone();
        let (app, name) = (app.to_owned(), name.to_owned());
        let spawned = std::thread::Builder::new().name("praas-swap-in".into()).spawn(move || {
            let result = plane.allocated(&app, &name, wait).map_err(|e| {
                let status = match &e {
                    ControlError::NoProcess { .. } | ControlError::NoApplication { .. } => Status::NotFound,
                    ControlError::TimedOut { .. } => Status::Timeout,
                    _ => Status::Unavailable,
                };
                (status, e.to_string())
            });
            plane.inner.swap_in_requests.fetch_sub(1, Ordering::SeqCst);
            answer(result);
        });
        if let Err(e) = spawned {
            self.inner.swap_in_requests.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("cannot serve a swap-in request: {e}");
        }
    }

    fn pick_process(&self, app: &str) -> Result<String, ControlError> {
        {
            let registry = self.registry();
            if !registry.apps.contains_key(app) {
                return Err(no_application(app));
            }
            let mine = || registry.processes.iter().filter(|((a, _), _)| a == app);
            let idle = mine()
                .filter(|(_, e)| e.record.status == ProcessStatus::Allocated)
                .min_by_key(|(_, e)| e.record.metrics.in_flight);
            if let Some(((_, name), _)) = idle {
                return Ok(name.clone());
            }
            if let Some(((_, name), _)) = mine().find(|(_, e)| e.record.status.is_transient()) {
                return Ok(name.clone());
            }
            if let Some(((_, name), _)) = mine().find(|(_, e)| e.record.status == ProcessStatus::SwappedOut) {
                return Ok(name.clone());
            }
        }
        let name = {
            let mut next = self.inner.next_auto.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                *next += 1;
                let candidate = format!("auto-{}", *next);
                if !self.registry().processes.contains_key(&(app.to_owned(), candidate.clone())) {
                    break candidate;
                }
            }
        };
        self.create_process(app, &name, None)?;
        Ok(name)
    }

    fn call(&self, app: &str, name: &str, addr: &str, function: &str, input: &[u8]) -> Result<Vec<u8>, ClientError> {
        let key = format!("{app}/{name}");
        let pooled = self.inner.clients.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&key).and_then(Vec::pop);
        let mut client = match pooled {
            Some(client) => client,
            None => {
                // The control plane is a client of the application like any other: it proves the
                // client key (which a process that requires authentication asks for).
                let key = self.app_secret(app).map(|secret| praas_dataplane::auth::client_key(&secret));
                let credentials =
                    key.map(|key| Credentials { app: app.to_owned(), name: "control-plane".to_owned(), key });
                Client::connect_with(addr, ClientOptions { credentials, ..ClientOptions::default() })?
            }
        };
        let result = client.invoke(function, input);
        // A connection that answered can be reused; one that broke is dropped.
        if matches!(result, Ok(_) | Err(ClientError::Remote { .. })) {
            self.inner.clients.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().push(client);
        }
        result
    }

    fn drop_clients(&self, app: &str, name: &str) {
        self.inner.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("{app}/{name}"));
    }

    // ----- idle downscaler -----

    /// Swaps out ALLOCATED processes idle for longer than the configured threshold; returns the
    /// processes it swapped. Call it periodically ([`ControlPlane::run_downscaler`] does).
    pub fn downscale_once(&self) -> Vec<String> {
        let Some(threshold) = self.inner.config.idle_swap else { return Vec::new() };
        let now_ns = praas_dataplane::state::now_ns();
        let idle: Vec<(String, String)> = {
            let registry = self.registry();
            registry
                .processes
                .iter()
                .filter(|(_, e)| e.record.status == ProcessStatus::Allocated && e.record.metrics.in_flight == 0)
                .filter(|(_, e)| {
                    let last = e.record.metrics.last_invocation_ns;
                    let idle_since_invocation = last == 0 || now_ns.saturating_sub(last) >= threshold.as_nanos() as u64;
                    idle_since_invocation && e.since.elapsed() >= threshold
                })
                .map(|(key, _)| key.clone())
                .collect()
        };
        let mut swapped = Vec::new();
        for (app, name) in idle {
            match self.swap_out(&app, &name) {
                Ok(_) => {
                    self.inner.metrics.count_downscaler_action("swap_out", "ok");
                    swapped.push(format!("{app}/{name}"));
                }
                Err(e) => {
                    self.inner.metrics.count_downscaler_action("swap_out", "failed");
                    tracing::debug!("idle swap of {app}/{name}: {e}");
                }
            }
        }
        swapped
    }

    /// Runs the idle downscaler on a thread until the process ends.
    pub fn run_downscaler(&self) {
        let Some(threshold) = self.inner.config.idle_swap else { return };
        let plane = self.clone();
        let period = (threshold / 4).max(Duration::from_millis(10));
        std::thread::Builder::new()
            .name("praas-downscaler".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                for swapped in plane.downscale_once() {
                    tracing::info!("swapped out idle process {swapped}");
                }
            })
            .expect("spawn the downscaler thread");
    }
}

/// Bytes of the files under the children of `folder` whose names start with `prefix`.
fn bytes_under(folder: &Path, prefix: &str) -> u64 {
    fn walk(path: &Path) -> u64 {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                std::fs::read_dir(path).map(|d| d.flatten().map(|e| walk(&e.path())).sum()).unwrap_or(0)
            }
            Ok(meta) => meta.len(),
            Err(_) => 0,
        }
    }
    std::fs::read_dir(folder)
        .map(|d| {
            d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).map(|e| walk(&e.path())).sum()
        })
        .unwrap_or(0)
}

fn app_view(registry: &Registry, app: &Application) -> AppView {
    AppView {
        name: app.name.clone(),
        resources: app.resources,
        functions: function_names(&app.manifest),
        processes: registry.processes.keys().filter(|(a, _)| *a == app.name).count(),
        slurm: app.slurm.clone(),
    }
}

fn no_application(app: &str) -> ControlError {
    ControlError::NoApplication { app: app.into() }
}

fn no_process(app: &str, name: &str) -> ControlError {
    ControlError::NoProcess { app: app.into(), name: name.into() }
}

fn invalid_transition(app: &str, name: &str, status: ProcessStatus, operation: Operation) -> ControlError {
    ControlError::InvalidTransition { app: app.into(), name: name.into(), status, operation }
}

fn lookup<'r>(registry: &'r Registry, app: &str, name: &str) -> Result<&'r Entry, ControlError> {
    if !registry.apps.contains_key(app) {
        return Err(no_application(app));
    }
    registry.processes.get(&(app.to_owned(), name.to_owned())).ok_or_else(|| no_process(app, name))
}

fn lookup_mut<'r>(registry: &'r mut Registry, app: &str, name: &str) -> Result<&'r mut Entry, ControlError> {
    if !registry.apps.contains_key(app) {
        return Err(no_application(app));
    }
    registry.processes.get_mut(&(app.to_owned(), name.to_owned())).ok_or_else(|| no_process(app, name))
}

/// How often records the database could not take are written again ([`ControlPlane::record_fact`]).
const PENDING_RETRY: Duration = Duration::from_millis(250);

/// Most bytes of a dead process's log read for its last words.
const LAST_WORDS: u64 = 8 << 10;

/// What a process that died said last about why: the error the `praas` binary printed before it
/// exited (`praas: ...`, with the lines that follow it, such as a Python traceback), read from
/// the end of its log; `None` if the log holds none.
fn last_words(log: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LAST_WORDS))).ok()?;
    let mut tail = Vec::new();
    file.take(LAST_WORDS).read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let at = text.rfind("\npraas: ").map(|i| i + 1).or_else(|| text.starts_with("praas: ").then_some(0))?;
    let words = text[at + "praas: ".len()..].trim_end();
    (!words.is_empty()).then(|| words.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_process_s_last_words_are_its_final_error_and_what_follows() {
        let dir = std::env::temp_dir().join(format!("praas-last-words-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("a.p.log");
        assert_eq!(last_words(&log), None, "no log");
        std::fs::write(&log, "listening on 127.0.0.1:1\nINFO serving\n").unwrap();
        assert_eq!(last_words(&log), None, "no error in it");
        let long = "x".repeat(20_000);
        let text =
            format!("{long}\npraas: early\nmore\npraas: cannot load f: Traceback:\n  line 3\nRuntimeError: no\n");
        std::fs::write(&log, text).unwrap();
        assert_eq!(last_words(&log).as_deref(), Some("cannot load f: Traceback:\n  line 3\nRuntimeError: no"));
        std::fs::write(&log, "praas: only this").unwrap();
        assert_eq!(last_words(&log).as_deref(), Some("only this"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A request's write that fails puts the record back as committed (live metrics kept); a
    /// fact stays in memory, and the database takes it once the disk has room again.
    #[test]
    fn a_failed_write_leaves_the_record_as_committed_and_a_fact_is_written_later() {
        let dir = std::env::temp_dir().join(format!("praas-save-{}", std::process::id()));
        let tmpfs = praas_testkit::disk::Tmpfs::mount(&dir, 4);
        let backend = Box::new(crate::backend::LocalBackend::new(PathBuf::from("praas")));
        let plane = ControlPlane::open(ControlConfig::new(tmpfs.path().join("data")), backend).unwrap();
        let store = &plane.inner.store;
        let record = ProcessRecord::new("a", "p", Resources::default());
        store.put_process(&record).unwrap();
        let mut entry = Entry::new(record, 0);
        let filler = tmpfs.fill("filler");
        let big = Application {
            name: "big".into(),
            manifest: "#".repeat(1 << 20),
            resources: Resources::default(),
            secret: "s".into(),
            slurm: None,
        };
        assert!(store.put_app(&big).unwrap_err().is_unavailable());

        // A request: SWAPPED_OUT cannot be recorded.
        entry.record.status = ProcessStatus::SwappedOut;
        entry.record.data_addr = None;
        entry.record.metrics.invocations = 7;
        let error = plane.save(&mut entry).unwrap_err();
        assert!(ControlError::from(error).disk_full());
        assert_eq!(entry.record.status, ProcessStatus::Allocating, "as on disk");
        assert_eq!(entry.record.metrics.invocations, 7, "live figures are not undone");

        // A fact: memory has it at once; a request that fails after it goes back to it.
        entry.record.status = ProcessStatus::Failure;
        plane.record_fact(&mut entry);
        assert_eq!(entry.record.status, ProcessStatus::Failure);
        assert!(store.has_pending());
        entry.record.status = ProcessStatus::Closing;
        assert!(plane.save(&mut entry).is_err());
        assert_eq!(entry.record.status, ProcessStatus::Failure);

        // Room again: the retry thread writes the fact, no other write needed.
        std::fs::remove_file(filler).unwrap();
        praas_testkit::wait_until(Duration::from_secs(5), "the fact to be written", || !store.has_pending());
        let on_disk = store.processes().unwrap();
        assert_eq!(on_disk.len(), 1);
        assert_eq!(on_disk[0].status, ProcessStatus::Failure);
    }
}
