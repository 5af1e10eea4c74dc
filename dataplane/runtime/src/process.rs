//! The cloud process: its functions, its state, its buffer pool, its worker pool, and the one
//! entry point every transport calls, [`Process::dispatch`].
//!
//! An invocation of an `inline` function runs to completion on the transport's I/O thread and its
//! response is returned at once: no thread hand-off. An invocation of a `worker` function is
//! queued to the worker pool (one hand-off) and its worker hands the response straight to the
//! connection's [`ResponseSink`]: the mio and RDMA transports write (post) it from the worker
//! thread, no hand-off back; the io_uring transport queues it back to its I/O thread, which sends
//! it (a second hand-off: docs/uring.md). A watchdog answers invocations that run past their deadline with [`Status::Timeout`]; a
//! function cannot be stopped, so its late result is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TrySendError};

use crate::buffer::{BufferPool, Payload};
use crate::clock::Tick;
use crate::function::{ExecutionMode, Function, FunctionRegistry};
use crate::invocation::{execute, unknown_function_message, Deadline, Outcome};
use crate::mailbox::{Mailbox, SnapshotError};
use crate::peer::PeerDirectory;
use crate::peer::PeerList;
use crate::state::StateStore;
use praas_wire::protocol::Status;

pub use crate::process_core::{Metrics, ProcessConfig, ProcessCore};
pub use praas_wire::handshake::NO_SECRET;

/// The answer to one invocation, ready for a transport to send.
#[derive(Debug)]
pub struct Response {
    /// The invocation id from the request.
    pub id: u64,
    /// Status, error text and output.
    pub outcome: Outcome,
}

/// Where a transport's connection takes responses produced off its I/O thread. Implementations
/// must not block for long: they queue what the socket does not take at once.
pub trait ResponseSink: Send + Sync {
    /// Sends (or queues) one response.
    fn send(&self, response: Response);
}

/// What [`Process::dispatch`] did with a request.
#[derive(Debug)]
pub enum Dispatched {
    /// The response, produced on the calling thread.
    Done(Response),
    /// Queued to a worker; the response will reach the sink.
    Queued,
}

/// An invocation handed to a worker; answered exactly once, by the worker or the watchdog.
struct Pending {
    id: u64,
    sink: Arc<dyn ResponseSink>,
    answered: AtomicBool,
    deadline: Option<Instant>,
}

impl Pending {
    fn answer(&self, outcome: Outcome) {
        if !self.answered.swap(true, Ordering::AcqRel) {
            self.sink.send(Response { id: self.id, outcome });
        }
    }
}

struct Job {
    function: Function,
    input: Payload,
    pending: Arc<Pending>,
}

/// What each worker is running, for the watchdog.
type RunningSlot = Mutex<Option<Arc<Pending>>>;

/// A cloud process.
pub struct Process {
    /// What its invocations run against.
    core: ProcessCore,
    jobs: Sender<Job>,
    running: Arc<[RunningSlot]>,
    watchdog: Thread,
    /// When the watchdog will next look, in ns after `epoch` (u64::MAX: not before a wake-up).
    watchdog_next: Arc<AtomicU64>,
    epoch: Instant,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Client invocations accepted and not finished (local invocations run inside them).
    in_flight: AtomicUsize,
    /// Set while swapping out: new invocations are refused with a retryable error.
    draining: AtomicBool,
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
        let (jobs, queue) = channel::bounded(config.queue_capacity.max(1));
        let running: Arc<[RunningSlot]> = (0..workers).map(|_| Mutex::new(None)).collect();
        let watchdog_next = Arc::new(AtomicU64::new(u64::MAX));
        let epoch = Instant::now();
        let watchdog = {
            let running = Arc::clone(&running);
            let next = Arc::clone(&watchdog_next);
            thread::Builder::new()
                .name(format!("praas-watchdog-{}", config.id))
                .spawn(move || watchdog_loop(&running, &next, epoch))?
        };
        let process = Arc::new(Self {
            core: ProcessCore::new(config, functions),
            jobs,
            running,
            watchdog: watchdog.thread().clone(),
            watchdog_next,
            epoch,
            threads: Mutex::new(vec![watchdog]),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
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

    /// Takes the control plane's list of this application's processes (a `PeerUpdate`).
    pub fn set_peers(&self, list: PeerList) {
        self.core.peers().update(list.peers.into_iter().filter(|p| p.id != self.core.id()).collect());
    }

    /// Puts back the undelivered messages of a snapshot (swap-in, before serving).
    pub fn restore_mailbox(&self, encoded: &[u8]) -> Result<usize, SnapshotError> {
        self.core.mailbox().load(encoded)
    }

    /// Client invocations accepted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Stops accepting invocations (they get a retryable `Overloaded` before running) and waits
    /// until those in flight have finished. Returns false, still draining, if they did not
    /// finish within `timeout`; [`Process::resume`] undoes the drain.
    pub fn drain(&self, timeout: Duration) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Accepts invocations again after [`Process::drain`].
    pub fn resume(&self) {
        self.draining.store(false, Ordering::SeqCst);
    }

    /// How long an invocation of `function` may take: the request's `timeout_ms`, else the
    /// function's, else the process's default.
    fn timeout(&self, function: &Function, timeout_ms: u32) -> Option<Duration> {
        match timeout_ms {
            0 => function.timeout.or(self.core.config().default_timeout),
            ms => Some(Duration::from_millis(ms.into())),
        }
    }

    /// Runs or queues the invocation `id` of `function` with `input`. Inline functions run here
    /// and their response is returned; worker functions are queued and answered through `sink`.
    pub fn dispatch(
        &self,
        id: u64,
        function: &[u8],
        input: Payload,
        timeout_ms: u32,
        sink: &Arc<dyn ResponseSink>,
    ) -> Dispatched {
        let arrival = Tick::now();
        let function = praas_wire::protocol::unpadded(function);
        let Some(function) = self.core.functions().get(function) else {
            let outcome = Outcome::error(Status::UnknownFunction, unknown_function_message(&self.core, function));
            return Dispatched::Done(Response { id, outcome });
        };
        // Counted before the drain flag is read: a swap that sets the flag and then sees no
        // invocation in flight knows that every later one will see the flag and not run.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let message = format!("process {} is swapping out: retry through the control plane", self.core.id());
            return Dispatched::Done(Response { id, outcome: Outcome::error(Status::Overloaded, message) });
        }
        let timeout = self.timeout(function, timeout_ms);
        match function.mode {
            ExecutionMode::Inline => {
                let outcome = self.run_inline(function, &input, arrival, timeout);
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                Dispatched::Done(Response { id, outcome })
            }
            ExecutionMode::Worker => {
                let deadline = timeout.map(|t| arrival.to_instant() + t);
                let pending =
                    Arc::new(Pending { id, sink: Arc::clone(sink), answered: AtomicBool::new(false), deadline });
                let job = Job { function: function.clone(), input, pending };
                let queued = self.jobs.try_send(job);
                if queued.is_err() {
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                match queued {
                    Ok(()) => Dispatched::Queued,
                    Err(TrySendError::Full(_)) => Dispatched::Done(Response {
                        id,
                        outcome: Outcome::error(
                            Status::Overloaded,
                            format!("{} invocations already wait for a worker", self.core.config().queue_capacity),
                        ),
                    }),
                    Err(TrySendError::Disconnected(_)) => Dispatched::Done(Response {
                        id,
                        outcome: Outcome::error(Status::Internal, "the worker pool has stopped"),
                    }),
                }
            }
        }
    }

    /// Runs an inline `function` on this (the I/O) thread for the invocation that arrived at
    /// `arrival`, accounting it and applying its timeout: one more clock reading per invocation,
    /// both on the cheap clock ([`crate::clock`]; the deadline becomes an instant only if the
    /// function asks for it).
    fn run_inline(&self, function: &Function, input: &[u8], arrival: Tick, timeout: Option<Duration>) -> Outcome {
        let deadline = timeout.map_or(Deadline::None, |t| Deadline::After(arrival, t));
        let outcome = execute(&self.core, function, input, deadline);
        let finished = Tick::now();
        let ran = finished.duration_since(arrival);
        self.finish(function, outcome, ran, finished, timeout.is_some_and(|timeout| ran > timeout))
    }

    /// Runs `function` on this (a worker) thread from `started` (a clock reading the caller
    /// already took), accounting it and applying its deadline.
    fn run(&self, function: &Function, input: &[u8], started: Instant, deadline: Option<Instant>) -> Outcome {
        let outcome = execute(&self.core, function, input, deadline.map_or(Deadline::None, Deadline::At));
        let finished = Instant::now();
        let ran = finished.saturating_duration_since(started);
        self.finish(function, outcome, ran, Tick::now(), deadline.is_some_and(|deadline| finished > deadline))
    }

    /// Accounts an invocation of `function` that ran for `ran` until `finished`: its `outcome`,
    /// or `Timeout` if it `overran` its deadline (a function cannot be stopped, only disowned).
    fn finish(&self, function: &Function, outcome: Outcome, ran: Duration, finished: Tick, overran: bool) -> Outcome {
        self.core.metrics().record(ran, finished);
        if overran {
            Outcome::error(Status::Timeout, format!("function {:?} ran {ran:?}, past its deadline", function.name))
        } else {
            outcome
        }
    }

    fn watch(&self, slot: usize, pending: Option<Arc<Pending>>) {
        let deadline = pending.as_ref().and_then(|p| p.deadline);
        *self.running[slot].lock().unwrap_or_else(|p| p.into_inner()) = pending;
        if let Some(deadline) = deadline {
            // A deadline past u64 nanoseconds (584 years) saturates, as `watchdog_next` does.
            let at = u64::try_from(deadline.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
            if at < self.watchdog_next.load(Ordering::Acquire) {
                self.watchdog.unpark();
            }
        }
    }
}

fn worker_loop(slot: usize, process: &Weak<Process>, queue: &Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        let Some(process) = process.upgrade() else { break };
        let pending = job.pending;
        let picked = Instant::now();
        if pending.deadline.is_some_and(|d| picked >= d) {
            process.in_flight.fetch_sub(1, Ordering::SeqCst);
            pending.answer(Outcome::error(
                Status::Timeout,
                format!("invocation of {:?} waited past its deadline for a worker", job.function.name),
            ));
            continue;
        }
        process.watch(slot, Some(Arc::clone(&pending)));
        let outcome = process.run(&job.function, &job.input, picked, pending.deadline);
        drop(job.input);
        process.watch(slot, None);
        // The function has returned: a drain waiting for it may now snapshot its effects.
        process.in_flight.fetch_sub(1, Ordering::SeqCst);
        pending.answer(outcome);
    }
}

fn watchdog_loop(running: &Arc<[RunningSlot]>, next: &AtomicU64, epoch: Instant) {
    // The process holds the only other reference to `running`: when it is gone, stop.
    while Arc::strong_count(running) > 1 {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for slot in running.iter() {
            let guard = slot.lock().unwrap_or_else(|p| p.into_inner());
            let Some(pending) = guard.as_ref() else { continue };
            let Some(deadline) = pending.deadline else { continue };
            if deadline <= now {
                pending.answer(Outcome::error(Status::Timeout, "the invocation ran past its deadline"));
            } else {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
            }
        }
        // Look again at the earliest deadline, and at least every second so that the loop notices
        // when the process is gone.
        let wait =
            earliest.map_or(Duration::from_secs(1), |e| e.saturating_duration_since(now)).min(Duration::from_secs(1));
        let next_ns = u64::try_from((now + wait).saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        next.store(next_ns, Ordering::Release);
        thread::park_timeout(wait);
    }
}
