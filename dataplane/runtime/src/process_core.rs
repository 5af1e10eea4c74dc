//! What an invocation runs against: a process's configuration, functions, state, buffer pool,
//! counters, mailbox and peers. The [`crate::process::Process`] adds its workers, watchdog and
//! drain around one; [`crate::invocation`] needs nothing more than this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::buffer::{BufferPool, DEFAULT_BUDGET};
use crate::clock::Tick;
use crate::function::FunctionRegistry;
use crate::mailbox::Mailbox;
use crate::peer::PeerDirectory;
use crate::state::{now_ns, StateStore};
use crate::swap_in::SwapIns;
use praas_wire::auth::Secret;
use praas_wire::protocol::DEFAULT_MAX_FRAME;

/// How a process runs.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The process id, as functions and the control plane see it.
    pub id: String,
    /// The application the process belongs to.
    pub app: String,
    /// The application's secret: peers and the control plane authenticate with it. `None`: the
    /// process authenticates nobody, so it refuses every peer and every client presenting a
    /// client key, puts no message to another process, and cannot register with a control plane.
    pub secret: Option<Secret>,
    /// Threads of the worker pool (at least 1).
    pub workers: usize,
    /// Deadline of invocations whose request and function set none; `None`: no deadline.
    pub default_timeout: Option<Duration>,
    /// Largest frame (metadata plus payload) accepted or produced, in bytes.
    pub max_frame: usize,
    /// Bytes of buffers the process may hand out at once.
    pub buffer_budget: usize,
    /// Invocations that may wait for a worker before new ones get `Overloaded`.
    pub queue_capacity: usize,
    /// Serve invocations only on connections that authenticated: with the application's client
    /// key ([`praas_wire::auth::client_key`]; a client's `ClientOptions::credentials`) or, for other
    /// processes, its secret. Needs a secret.
    pub client_auth: bool,
    /// Record per-function statistics ([`crate::stats`]) of every invocation: on by default; off
    /// only to measure what recording costs.
    pub function_stats: bool,
    /// How many connections the process serves, and their timeouts (every transport).
    pub connection_limits: crate::connection::ConnectionLimits,
    /// A remote invocation of a swapped-out process asks the control plane to swap it in and
    /// waits for it within the caller's deadline (the manifest's `swap_in_on_call`, on by
    /// default); off, it fails at once with `UNAVAILABLE`.
    pub swap_in_on_call: bool,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            id: "process".into(),
            app: "default".into(),
            secret: None,
            workers: 4,
            default_timeout: Some(Duration::from_secs(60)),
            max_frame: DEFAULT_MAX_FRAME,
            buffer_budget: DEFAULT_BUDGET,
            queue_capacity: 1 << 16,
            client_auth: false,
            function_stats: true,
            connection_limits: crate::connection::ConnectionLimits::default(),
            swap_in_on_call: true,
        }
    }
}

/// Counters the control plane reads.
#[derive(Debug)]
pub struct Metrics {
    invocations: AtomicU64,
    local_invocations: AtomicU64,
    compute_ns: AtomicU64,
    /// When the last client invocation finished: a [`Tick`]'s raw value plus one (0: never),
    /// turned into wall-clock time when read.
    last_invocation: AtomicU64,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            invocations: AtomicU64::new(0),
            local_invocations: AtomicU64::new(0),
            compute_ns: AtomicU64::new(0),
            last_invocation: AtomicU64::new(0),
        }
    }

    /// Counts one client invocation that ran for `ran` and finished at `finished`.
    pub(crate) fn record(&self, ran: Duration, finished: Tick) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        // Saturates only past 584 years of running: never, and free (one compare).
        self.compute_ns.fetch_add(u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.last_invocation.store(finished.raw() + 1, Ordering::Relaxed);
    }

    /// Counts one local invocation.
    pub fn record_local(&self) {
        self.local_invocations.fetch_add(1, Ordering::Relaxed);
    }

    /// Invocations from clients completed so far.
    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }

    /// Local invocations (function to function) completed so far.
    pub fn local_invocations(&self) -> u64 {
        self.local_invocations.load(Ordering::Relaxed)
    }

    /// Nanoseconds spent running functions for clients.
    pub fn compute_ns(&self) -> u64 {
        self.compute_ns.load(Ordering::Relaxed)
    }

    /// When the last client invocation finished (ns since the Unix epoch; 0: never).
    pub fn last_invocation_ns(&self) -> u64 {
        match self.last_invocation.load(Ordering::Relaxed) {
            0 => 0,
            raw => {
                let ago = u64::try_from(Tick::from_raw(raw - 1).elapsed().as_nanos()).unwrap_or(u64::MAX);
                now_ns().saturating_sub(ago)
            }
        }
    }
}

/// A process's resources, shared by every invocation it runs.
#[derive(Debug)]
pub struct ProcessCore {
    config: ProcessConfig,
    functions: FunctionRegistry,
    state: StateStore,
    pool: BufferPool,
    /// Its connections, counted against `config.connection_limits`.
    connections: Arc<crate::connection::Connections>,
    metrics: Metrics,
    /// Messages put to this process, not yet got.
    mailbox: Arc<Mailbox>,
    /// The application's other processes and the connections to them, for messages.
    peers: PeerDirectory,
    /// Its requests to the control plane to swap in callees, and the control connection's
    /// write half.
    swap_ins: SwapIns,
}

impl ProcessCore {
    /// The resources of a process configured by `config` serving `functions`.
    pub fn new(config: ProcessConfig, functions: FunctionRegistry) -> Self {
        let mailbox = Arc::new(Mailbox::new());
        let peers =
            PeerDirectory::new(&config.app, &config.id, config.secret.clone(), config.max_frame, Arc::clone(&mailbox));
        let pool = BufferPool::new(config.buffer_budget);
        let connections = Arc::new(crate::connection::Connections::new(config.connection_limits, pool.clone()));
        Self {
            pool,
            connections,
            swap_ins: SwapIns::new(config.swap_in_on_call),
            config,
            functions,
            state: StateStore::default(),
            metrics: Metrics::new(),
            mailbox,
            peers,
        }
    }

    /// The process id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ProcessConfig {
        &self.config
    }

    /// Its functions.
    pub fn functions(&self) -> &FunctionRegistry {
        &self.functions
    }

    /// Its state.
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// Its buffer pool, shared with its transports.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Its connections (every transport counts its own here).
    pub fn connections(&self) -> &Arc<crate::connection::Connections> {
        &self.connections
    }

    /// Its counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Its mailbox: messages put to it and not yet got (`docs/messages.md`).
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Its peers: the other processes of its application, to put messages to.
    pub fn peers(&self) -> &PeerDirectory {
        &self.peers
    }

    /// Its swap-in requests to the control plane (remote invocations of swapped-out callees).
    pub fn swap_ins(&self) -> &SwapIns {
        &self.swap_ins
    }
}
