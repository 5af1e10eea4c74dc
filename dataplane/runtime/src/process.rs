//! The cloud process: its functions, its state, its buffer pool, its workers and watchdog (its
//! [`Dispatcher`]), and how it starts, drains and resumes. Every transport hands each frame to
//! [`serve_frame`](crate::serve::serve_frame), which dispatches invocations through the
//! process's [`Dispatcher`] (`crate::invocation`).
//!
//! The mio and RDMA transports write (post) a worker's response from the worker thread, no
//! hand-off back; the io_uring transport queues it back to its I/O thread, which sends it (a
//! second hand-off: docs/uring.md).

use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam::channel::Receiver;

use crate::buffer::BufferPool;
use crate::function::FunctionRegistry;
use crate::invocation::{Dispatcher, Job};
use crate::mailbox::{Mailbox, SnapshotError};
use crate::peer::PeerDirectory;
use crate::peer::PeerList;
use crate::state::StateStore;
use praas_wire::protocol::Status;

pub use crate::invocation::{Dispatched, Response, ResponseSink};
pub use crate::process_core::{Metrics, ProcessConfig, ProcessCore};
pub use praas_wire::handshake::NO_SECRET;

/// A cloud process.
pub struct Process {
    /// What its invocations run against.
    core: ProcessCore,
    /// How its invocations reach their functions.
    dispatcher: Dispatcher,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Itself, for the extra workers it starts ([`Process::dispatch_from_peer`]).
    me: Weak<Process>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("id", &self.core.id())
            .field("functions", &self.core.functions().names())
            .finish()
    }
}

impl Process {
    /// Starts a process with `functions`: its worker threads and watchdog run until the last
    /// `Arc<Process>` is dropped.
    pub fn start(config: ProcessConfig, functions: FunctionRegistry) -> std::io::Result<Arc<Self>> {
        // Once per OS process, here rather than at the first invocation.
        crate::clock::calibrate();
        if config.client_auth && config.secret.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "client authentication needs the application's secret: none was given",
            ));
        }
        if config.secret.is_none() {
            tracing::warn!(
                process = %config.id,
                "no application secret: this process refuses every peer connection and authenticated client, \
                 and puts no message to another process"
            );
        }
        let workers = config.workers.max(1);
        let (dispatcher, queue, watchdog) = Dispatcher::start(workers, config.queue_capacity, &config.id)?;
        let process = Arc::new_cyclic(|me| Self {
            core: ProcessCore::new(config, functions),
            dispatcher,
            threads: Mutex::new(vec![watchdog]),
            me: me.clone(),
        });
        for index in 0..workers {
            let weak = Arc::downgrade(&process);
            let queue = queue.clone();
            let handle = thread::Builder::new()
                .name(format!("praas-worker-{index}"))
                .spawn(move || worker_loop(index, &weak, &queue))?;
            process.threads.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
        }
        Ok(process)
    }

    /// What its invocations run against.
    #[inline]
    pub fn core(&self) -> &ProcessCore {
        &self.core
    }

    /// The process id.
    pub fn id(&self) -> &str {
        self.core.id()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ProcessConfig {
        self.core.config()
    }

    /// Its functions.
    pub fn functions(&self) -> &FunctionRegistry {
        self.core.functions()
    }

    /// Its state.
    pub fn state(&self) -> &StateStore {
        self.core.state()
    }

    /// Its buffer pool, shared with its transports.
    pub fn pool(&self) -> &BufferPool {
        self.core.pool()
    }

    /// Its connections, counted against its connection limits by every transport.
    pub fn connections(&self) -> &Arc<crate::connection::Connections> {
        self.core.connections()
    }

    /// Its counters.
    pub fn metrics(&self) -> &Metrics {
        self.core.metrics()
    }

    /// Its mailbox: messages put to it and not yet got (`docs/messages.md`).
    pub fn mailbox(&self) -> &Mailbox {
        self.core.mailbox()
    }

    /// Its peers: the other processes of its application, to put messages to.
    pub fn peers(&self) -> &PeerDirectory {
        self.core.peers()
    }

    /// Its swap-in requests to the control plane (remote invocations of swapped-out callees).
    pub fn swap_ins(&self) -> &crate::swap_in::SwapIns {
        self.core.swap_ins()
    }

    /// Takes the control plane's list of this application's processes (a `PeerUpdate`).
    pub fn set_peers(&self, list: PeerList) {
        self.core.peers().update(list.peers.into_iter().filter(|p| p.id != self.core.id()).collect());
    }

    /// Puts back the undelivered messages of a snapshot (swap-in, before serving).
    pub fn restore_mailbox(&self, encoded: &[u8]) -> Result<usize, SnapshotError> {
        self.core.mailbox().load(encoded)
    }

    /// How its invocations reach their functions.
    #[inline]
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Runs or queues an invocation that came from another process of the application (a
    /// connection that proved it holds the application's secret): like any invocation, except
    /// that a worker function finding every worker busy runs on an extra worker thread
    /// ([`Dispatcher::dispatch_from_peer`]), so that nested remote invocations cannot deadlock.
    pub fn dispatch_from_peer(
        &self,
        id: u64,
        function: &[u8],
        input: crate::buffer::Payload,
        timeout_ms: u32,
        sink: &Arc<dyn ResponseSink>,
    ) -> Dispatched {
        let spawn = |job: Job, slot: usize| {
            let me = self.me.clone();
            let parked = Arc::new(Mutex::new(Some(job)));
            let taken = Arc::clone(&parked);
            let started = thread::Builder::new().name(format!("praas-extra-{slot}")).spawn(move || {
                let job = taken.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let (Some(process), Some(job)) = (me.upgrade(), job) {
                    process.dispatcher.work(&process.core, slot, job);
                    process.dispatcher.release_extra(slot);
                }
            });
            if let Err(err) = started {
                self.dispatcher.release_extra(slot);
                if let Some(job) = parked.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let text = format!("no extra worker for an invocation from a peer: {err}");
                    self.dispatcher.refuse(&self.core, job, Status::Overloaded, text);
                }
            }
        };
        self.dispatcher.dispatch_from_peer(&self.core, id, function, input, timeout_ms, sink, &spawn)
    }

    /// Client invocations accepted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.dispatcher.in_flight()
    }

    /// Stops accepting invocations (they get a retryable `Overloaded` before running) and waits
    /// until those in flight have finished. Returns false, still draining, if they did not
    /// finish within `timeout`; [`Process::resume`] undoes the drain.
    pub fn drain(&self, timeout: Duration) -> bool {
        self.dispatcher.drain(timeout)
    }

    /// Accepts invocations again after [`Process::drain`].
    pub fn resume(&self) {
        self.dispatcher.resume();
    }
}

fn worker_loop(slot: usize, process: &Weak<Process>, queue: &Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        let Some(process) = process.upgrade() else { break };
        process.dispatcher.work(&process.core, slot, job);
    }
}
