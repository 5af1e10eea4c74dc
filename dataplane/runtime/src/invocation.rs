//! One invocation of a function, from its arrival to its answer: the [`Dispatcher`] that runs it
//! inline or hands it to a worker (and counts, drains and watches invocations), the context handed
//! to the function through the C ABI, the output buffer it writes into, the runtime's side of
//! every [`praas_api`] entry, and the [`Response`] a transport sends.
//!
//! [`execute`] runs a function on the calling thread. The function reads its input in place (a
//! slice of the buffer the transport received it into) and writes its output into a
//! [`PoolBuf`] from the process's pool, which the transport then sends as it is. A Python
//! function (cargo feature `python`) gets the same input in place as a read-only `memoryview`
//! and the same services, through the safe methods of the running invocation that the C ABI's
//! entries call too (`crate::python`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TrySendError};

use praas_ffi::{
    praas_api, praas_bytes, praas_context, praas_output, PRAAS_ABI_VERSION, PRAAS_ERR_INTERNAL,
    PRAAS_ERR_INVALID_ARGUMENT, PRAAS_ERR_NOT_FOUND, PRAAS_ERR_TOO_LARGE, PRAAS_LOG_DEBUG, PRAAS_LOG_ERROR,
    PRAAS_LOG_INFO, PRAAS_LOG_WARN, PRAAS_OK,
};

use crate::buffer::{Payload, PoolBuf, MIN_BUF};
use crate::clock::Tick;
use crate::function::{ExecutionMode, Function, FunctionCode};
use crate::peer::DEFAULT_PUT_TIMEOUT;
use crate::process_core::ProcessCore;
use crate::remote::RemoteError;
use crate::state::{validate_key, StateEntry};
use praas_wire::protocol::Status;

/// Deepest chain of local invocations (a function invoking a function invoking ...).
pub const MAX_LOCAL_DEPTH: u32 = 64;
/// Remote invocations one invocation may have submitted and not waited for.
pub const MAX_REMOTE_IN_FLIGHT: usize = 1024;
/// Extra workers a process starts, beyond its pool, for invocations from its peers that find
/// every worker busy (a remote invocation nested in one of its own: A invokes B invokes A).
pub const MAX_EXTRA_WORKERS: usize = 16;

/// The result of one invocation.
#[derive(Debug)]
pub struct Outcome {
    /// Success or why not.
    pub status: Status,
    /// The error text when `status` is not `Ok`.
    pub message: String,
    /// The output when `status` is `Ok`.
    pub output: Option<PoolBuf>,
}

impl Outcome {
    /// A failed outcome.
    pub fn error(status: Status, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), output: None }
    }

    /// A successful outcome.
    pub fn ok(output: PoolBuf) -> Self {
        Self { status: Status::Ok, message: String::new(), output: Some(output) }
    }
}

/// When an invocation must have finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Never.
    None,
    /// At this instant.
    At(Instant),
    /// This long after this tick: an inline invocation's, turned into an instant only when a
    /// function needs it (a local invocation, a message), so that the inline path reads no
    /// monotonic clock.
    After(Tick, Duration),
}

impl Deadline {
    /// The deadline as an instant (`None`: never).
    pub fn instant(self) -> Option<Instant> {
        match self {
            Deadline::None => None,
            Deadline::At(at) => Some(at),
            Deadline::After(start, timeout) => Some(start.to_instant() + timeout),
        }
    }
}

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

/// What [`Dispatcher::dispatch`] did with a request.
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

/// An invocation queued for a worker.
pub struct Job {
    function: Function,
    input: Payload,
    pending: Arc<Pending>,
    /// When its frame reached the dispatcher.
    arrival: Tick,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("function", &self.function.name).field("id", &self.pending.id).finish()
    }
}

/// What each worker is running, for the watchdog.
type RunningSlot = Mutex<Option<Arc<Pending>>>;

/// How a process's invocations reach their functions: an `inline` function runs to completion on
/// the calling (I/O) thread and its response is returned at once, no thread hand-off; a `worker`
/// function is queued to the worker pool (one hand-off) and its worker hands the response to the
/// connection's [`ResponseSink`]. It counts the invocations in flight, refuses new ones while the
/// process drains for a swap, and its watchdog answers those that run past their deadline with
/// [`Status::Timeout`] (a function cannot be stopped, so its late result is dropped).
pub struct Dispatcher {
    jobs: Sender<Job>,
    running: Arc<[RunningSlot]>,
    watchdog: Thread,
    /// When the watchdog will next look, in ns after `epoch` (u64::MAX: not before a wake-up).
    watchdog_next: Arc<AtomicU64>,
    epoch: Instant,
    /// Client invocations accepted and not finished (local invocations run inside them).
    in_flight: AtomicUsize,
    /// Set while swapping out: new invocations are refused with a retryable error.
    draining: AtomicBool,
    /// Worker jobs the pool accepted and has not finished (queued or running).
    busy: AtomicUsize,
    /// The watchdog slots (after the pool's) of extra workers not running now.
    extra_slots: Mutex<Vec<usize>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("workers", &self.workers())
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher for `workers` workers (at least one) with at most `queue_capacity` invocations
    /// waiting for them, and its watchdog thread (named after process `id`), which stops once the
    /// dispatcher is dropped. Returns the queue the workers take [`Job`]s from
    /// ([`Dispatcher::work`]).
    pub fn start(
        workers: usize,
        queue_capacity: usize,
        id: &str,
    ) -> std::io::Result<(Self, Receiver<Job>, JoinHandle<()>)> {
        let (jobs, queue) = channel::bounded(queue_capacity.max(1));
        let workers = workers.max(1);
        let running: Arc<[RunningSlot]> = (0..workers + MAX_EXTRA_WORKERS).map(|_| Mutex::new(None)).collect();
        let watchdog_next = Arc::new(AtomicU64::new(u64::MAX));
        let epoch = Instant::now();
        let watchdog = {
            let running = Arc::clone(&running);
            let next = Arc::clone(&watchdog_next);
            thread::Builder::new()
                .name(format!("praas-watchdog-{id}"))
                .spawn(move || watchdog_loop(&running, &next, epoch))?
        };
        let dispatcher = Self {
            jobs,
            running,
            watchdog: watchdog.thread().clone(),
            watchdog_next,
            epoch,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            extra_slots: Mutex::new((workers..workers + MAX_EXTRA_WORKERS).rev().collect()),
        };
        Ok((dispatcher, queue, watchdog))
    }

    /// Workers: how many invocations run at once off the I/O threads (extra workers aside).
    pub fn workers(&self) -> usize {
        self.running.len() - MAX_EXTRA_WORKERS
    }

    /// Client invocations accepted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Stops accepting invocations (they get a retryable `Overloaded` before running) and waits
    /// until those in flight have finished. Returns false, still draining, if they did not
    /// finish within `timeout`; [`Dispatcher::resume`] undoes the drain.
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

    /// Accepts invocations again after [`Dispatcher::drain`].
    pub fn resume(&self) {
        self.draining.store(false, Ordering::SeqCst);
    }

    /// Runs or queues the invocation `id` of `function` with `input` against `core`. Inline
    /// functions run here and their response is returned; worker functions are queued and
    /// answered through `sink`.
    pub fn dispatch(
        &self,
        core: &ProcessCore,
        id: u64,
        function: &[u8],
        input: Payload,
        timeout_ms: u32,
        sink: &Arc<dyn ResponseSink>,
    ) -> Dispatched {
        self.dispatch_with(core, id, function, input, timeout_ms, sink, None)
    }

    /// [`Dispatcher::dispatch`] for an invocation from another process of the application: a
    /// worker function that finds every worker busy runs at once on an extra worker, which
    /// `spawn` starts with the job and its watchdog slot (so that A invoking B invoking A never
    /// waits for the worker A's first invocation holds); with every extra worker busy too, it
    /// waits in the queue like any other.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch_from_peer(
        &self,
        core: &ProcessCore,
        id: u64,
        function: &[u8],
        input: Payload,
        timeout_ms: u32,
        sink: &Arc<dyn ResponseSink>,
        spawn: &dyn Fn(Job, usize),
    ) -> Dispatched {
        self.dispatch_with(core, id, function, input, timeout_ms, sink, Some(spawn))
    }

    /// An extra worker's slot, if one is free and every worker is busy.
    fn extra_slot(&self) -> Option<usize> {
        if self.busy.load(Ordering::SeqCst) < self.workers() {
            return None;
        }
        self.extra_slots.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Gives an extra worker's slot back once its job is done.
    pub fn release_extra(&self, slot: usize) {
        self.extra_slots.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
    }

    /// Answers `job` with `status` and `message` without running it (its extra worker could not
    /// start).
    pub fn refuse(&self, core: &ProcessCore, job: Job, status: Status, message: String) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        refused(core, &job.function, status);
        job.pending.answer(Outcome::error(status, message));
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch_with(
        &self,
        core: &ProcessCore,
        id: u64,
        function: &[u8],
        input: Payload,
        timeout_ms: u32,
        sink: &Arc<dyn ResponseSink>,
        spawn: Option<&dyn Fn(Job, usize)>,
    ) -> Dispatched {
        let arrival = Tick::now();
        let function = praas_wire::protocol::unpadded(function);
        let Some(function) = core.functions().get(function) else {
            let outcome = Outcome::error(Status::UnknownFunction, unknown_function_message(core, function));
            return Dispatched::Done(Response { id, outcome });
        };
        // Counted before the drain flag is read: a swap that sets the flag and then sees no
        // invocation in flight knows that every later one will see the flag and not run.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            refused(core, function, Status::Overloaded);
            let message = format!("process {} is swapping out: retry through the control plane", core.id());
            return Dispatched::Done(Response { id, outcome: Outcome::error(Status::Overloaded, message) });
        }
        let timeout = match timeout_ms {
            0 => function.timeout.or(core.config().default_timeout),
            ms => Some(Duration::from_millis(ms.into())),
        };
        match function.mode {
            ExecutionMode::Inline => {
                let outcome = run_inline(core, id, function, &input, arrival, timeout);
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                Dispatched::Done(Response { id, outcome })
            }
            ExecutionMode::Worker => {
                let deadline = timeout.map(|t| arrival.to_instant() + t);
                let pending =
                    Arc::new(Pending { id, sink: Arc::clone(sink), answered: AtomicBool::new(false), deadline });
                let job = Job { function: function.clone(), input, pending, arrival };
                if let Some(spawn) = spawn {
                    if let Some(slot) = self.extra_slot() {
                        spawn(job, slot);
                        return Dispatched::Queued;
                    }
                }
                self.busy.fetch_add(1, Ordering::SeqCst);
                let queued = self.jobs.try_send(job);
                if queued.is_err() {
                    self.busy.fetch_sub(1, Ordering::SeqCst);
                }
                if queued.is_err() {
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let status = if matches!(queued, Err(TrySendError::Full(_))) {
                        Status::Overloaded
                    } else {
                        Status::Internal
                    };
                    refused(core, function, status);
                }
                match queued {
                    Ok(()) => Dispatched::Queued,
                    Err(TrySendError::Full(_)) => Dispatched::Done(Response {
                        id,
                        outcome: Outcome::error(
                            Status::Overloaded,
                            format!("{} invocations already wait for a worker", core.config().queue_capacity),
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

    /// Runs `job` on this thread, worker `slot`, against `core`, and answers it (unless it waited
    /// past its deadline for a worker, or the watchdog answered it meanwhile).
    pub fn work(&self, core: &ProcessCore, slot: usize, job: Job) {
        let pending = job.pending;
        let picked = Instant::now();
        let pooled = slot < self.workers();
        if pending.deadline.is_some_and(|d| picked >= d) {
            if pooled {
                self.busy.fetch_sub(1, Ordering::SeqCst);
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            refused(core, &job.function, Status::Timeout);
            pending.answer(Outcome::error(
                Status::Timeout,
                format!("invocation of {:?} waited past its deadline for a worker", job.function.name),
            ));
            return;
        }
        self.watch(slot, Some(Arc::clone(&pending)));
        let deadline = pending.deadline;
        let deadline_at = deadline.map_or(Deadline::None, Deadline::At);
        let outcome = execute_input(core, pending.id, &job.function, Input::Shared(&job.input), deadline_at);
        let finished = Instant::now();
        let ran = finished.saturating_duration_since(picked);
        let finished_tick = Tick::now();
        let latency = finished_tick.duration_since(job.arrival);
        let overran = deadline.is_some_and(|deadline| finished > deadline);
        let outcome = finish(core, &job.function, outcome, ran, latency, finished_tick, overran);
        drop(job.input);
        self.watch(slot, None);
        // The function has returned: a drain waiting for it may now snapshot its effects.
        if pooled {
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        pending.answer(outcome);
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

/// Runs an inline `function` on this (the I/O) thread for the invocation that arrived at
/// `arrival`, accounting it and applying its timeout: one more clock reading per invocation,
/// both on the cheap clock ([`crate::clock`]; the deadline becomes an instant only if the
/// function asks for it).
fn run_inline(
    core: &ProcessCore,
    id: u64,
    function: &Function,
    input: &Payload,
    arrival: Tick,
    timeout: Option<Duration>,
) -> Outcome {
    let deadline = timeout.map_or(Deadline::None, |t| Deadline::After(arrival, t));
    let outcome = execute_input(core, id, function, Input::Shared(input), deadline);
    let finished = Tick::now();
    let ran = finished.duration_since(arrival);
    finish(core, function, outcome, ran, ran, finished, timeout.is_some_and(|timeout| ran > timeout))
}

/// Accounts an invocation of `function` that ran for `ran` until `finished`, `latency` after
/// its frame reached the dispatcher (the wait for a worker included): its `outcome`, or
/// `Timeout` if it `overran` its deadline (a function cannot be stopped, only disowned). The one
/// place every finished invocation is counted, whatever its transport.
#[inline]
fn finish(
    core: &ProcessCore,
    function: &Function,
    outcome: Outcome,
    ran: Duration,
    latency: Duration,
    finished: Tick,
    overran: bool,
) -> Outcome {
    core.metrics().record(ran, finished);
    // A Python function interrupted at its deadline already says so.
    let outcome = if overran && outcome.status != Status::Timeout {
        Outcome::error(Status::Timeout, format!("function {:?} ran {ran:?}, past its deadline", function.name))
    } else {
        outcome
    };
    if core.config().function_stats {
        // Saturates past 584 years: never.
        function.stats.record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX), outcome.status);
    }
    outcome
}

/// Counts an invocation of `function` refused before it ran.
#[cold]
fn refused(core: &ProcessCore, function: &Function, status: Status) {
    if core.config().function_stats {
        function.stats.record_error(status);
    }
}

fn watchdog_loop(running: &Arc<[RunningSlot]>, next: &AtomicU64, epoch: Instant) {
    // The dispatcher holds the only other reference to `running`: when it is gone, stop.
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
        // when the dispatcher is gone.
        let wait =
            earliest.map_or(Duration::from_secs(1), |e| e.saturating_duration_since(now)).min(Duration::from_secs(1));
        let next_ns = u64::try_from((now + wait).saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        next.store(next_ns, Ordering::Release);
        thread::park_timeout(wait);
    }
}

/// Runtime-side state of a running invocation, reached through `praas_context::runtime`.
struct Invocation<'p> {
    /// The id of the client's invocation it runs in (a local invocation carries its caller's).
    id: u64,
    process: &'p ProcessCore,
    function: &'p str,
    /// The function's statistics (its messages count there).
    stats: &'p crate::stats::FunctionStats,
    deadline: Deadline,
    depth: u32,
    error: Option<String>,
    /// Runs on the transport's I/O thread (an inline function, or one it invoked locally): it
    /// must not block on other processes.
    inline: bool,
    /// Remote invocations it submitted and has not waited for, by handle (closed if it returns
    /// without waiting).
    /// (Behind a lock only so that the invocation is `Sync`, as Python's services need: one
    /// invocation runs on one thread. Made at the first submit: an invocation that calls no
    /// other process neither builds nor drops it.)
    calls: OnceLock<Mutex<RemoteCalls>>,
}

/// The remote invocations of one invocation in flight, and the handle of its next one.
struct RemoteCalls {
    calls: Vec<(u64, crate::remote::RemoteCall)>,
    next: u64,
}

/// What `praas_bytes::owner` points to: bytes the runtime lends to a function.
enum LentBytes {
    Shared(Arc<Vec<u8>>),
    Buffer(PoolBuf),
    Owned(Vec<u8>),
}

impl LentBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            LentBytes::Shared(v) => v,
            LentBytes::Buffer(b) => b,
            LentBytes::Owned(v) => v,
        }
    }

    fn lend(self, out: *mut praas_bytes) {
        let boxed = Box::new(self);
        let bytes = boxed.bytes();
        let (data, len) = (bytes.as_ptr(), bytes.len());
        // SAFETY: callers pass a non-null `out` the function gave us (checked by `non_null`);
        // the heap bytes stay put until `release` reconstructs and drops the box.
        unsafe { out.write(praas_bytes { data, len, owner: Box::into_raw(boxed).cast() }) };
    }
}

/// A function's input: a payload a transport received (shared, so that a Python function's view
/// of it can outlive the call safely), or bytes borrowed from a caller (a local invocation).
#[derive(Clone, Copy)]
enum Input<'a> {
    Shared(&'a Payload),
    Borrowed(&'a [u8]),
}

impl Input<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Input::Shared(payload) => payload,
            Input::Borrowed(bytes) => bytes,
        }
    }
}

/// Runs `function` on this thread with `input` for the client's invocation `id` (the id its
/// log lines carry); never unwinds.
pub fn execute(process: &ProcessCore, id: u64, function: &Function, input: &[u8], deadline: Deadline) -> Outcome {
    execute_input(process, id, function, Input::Borrowed(input), deadline)
}

fn execute_input(process: &ProcessCore, id: u64, function: &Function, input: Input<'_>, deadline: Deadline) -> Outcome {
    execute_nested(process, id, function, input, deadline, 0, function.mode == ExecutionMode::Inline)
}

/// Runs `function` at local-invocation `depth` (0: a client's), on the I/O thread if `inline`.
fn execute_nested(
    process: &ProcessCore,
    id: u64,
    function: &Function,
    input: Input<'_>,
    deadline: Deadline,
    depth: u32,
    inline: bool,
) -> Outcome {
    let invocation = Invocation {
        id,
        process,
        function: &function.name,
        stats: &function.stats,
        deadline,
        depth,
        error: None,
        inline,
        calls: OnceLock::new(),
    };
    match function.code() {
        FunctionCode::Native { entry, .. } => execute_native(invocation, *entry, input.bytes()),
        #[cfg(feature = "python")]
        FunctionCode::Python(code) => execute_python(invocation, code, input),
    }
}

/// Runs a C ABI function.
fn execute_native(mut invocation: Invocation<'_>, entry: praas_ffi::praas_function, input: &[u8]) -> Outcome {
    let (process, name) = (invocation.process, invocation.function);
    let Some(mut buffer) = process.pool().get(MIN_BUF.max(input.len())) else {
        return Outcome::error(Status::Overloaded, "no buffer for the output: the process's buffer budget is spent");
    };
    let mut context = praas_context { api: &API, runtime: (&mut invocation as *mut Invocation<'_>).cast() };
    let mut output = praas_output {
        data: buffer.memory_mut().as_mut_ptr(),
        len: 0,
        capacity: buffer.capacity(),
        handle: (&mut buffer as *mut PoolBuf).cast(),
    };
    // SAFETY: `entry` has the praas_function signature (the manifest says so, see
    // `FunctionRegistry::load`) and its library is kept loaded by the function, which the caller
    // holds. The input slice, the context and the output (whose `data`/`capacity` describe
    // `buffer`'s memory, and whose `handle` points to `buffer`) all live until the call returns.
    let result =
        catch_unwind(AssertUnwindSafe(|| unsafe { entry(&mut context, input.as_ptr(), input.len(), &mut output) }));
    let status = match result {
        Ok(code) => code,
        Err(_) => {
            invocation.error = Some(format!("function {name:?} unwound into the runtime"));
            praas_ffi::PRAAS_ERR_PANICKED
        }
    };
    if status != PRAAS_OK {
        let status = Status::from_abi(status);
        let message = invocation.error.take().unwrap_or_else(|| format!("function {name:?} failed: {status}"));
        return Outcome::error(status, message);
    }
    if output.len > buffer.capacity() {
        return Outcome::error(
            Status::Internal,
            format!("function {name:?} set output length {} beyond its capacity {}", output.len, buffer.capacity()),
        );
    }
    buffer.set_len(output.len);
    Outcome::ok(buffer)
}

/// Runs a Python function: its input is shared with it (bytes a caller lent are copied into a
/// buffer of the pool first, since a Python view of them may outlive the call).
#[cfg(feature = "python")]
fn execute_python(invocation: Invocation<'_>, code: &crate::python::PythonFunction, input: Input<'_>) -> Outcome {
    let (process, name) = (invocation.process, invocation.function);
    let payload = match input {
        Input::Shared(payload) => payload.clone(),
        Input::Borrowed(bytes) => match output_buffer(process, bytes.len(), bytes.len().max(MIN_BUF)) {
            Ok(mut buffer) => {
                buffer.memory_mut()[..bytes.len()].copy_from_slice(bytes);
                buffer.set_len(bytes.len());
                Payload::whole(buffer)
            }
            Err(status) => return Outcome::error(status, format!("no buffer for the input of {name:?}: {status}")),
        },
    };
    let deadline = invocation.deadline.instant();
    let result = catch_unwind(AssertUnwindSafe(|| crate::python::call(code, name, &invocation, payload, deadline)));
    match result {
        Ok(Ok(output)) => Outcome::ok(output),
        Ok(Err((status, message))) => Outcome::error(status, message),
        Err(_) => Outcome::error(Status::Panicked, format!("Python function {name:?} panicked in the runtime")),
    }
}

/// A buffer of at least `capacity` bytes for an output of `needed` bytes: `TooLarge` past the
/// process's largest frame, `Overloaded` when the pool's budget is spent.
fn output_buffer(process: &ProcessCore, needed: usize, capacity: usize) -> Result<PoolBuf, Status> {
    if needed > process.config().max_frame {
        return Err(Status::TooLarge);
    }
    process.pool().get(capacity).ok_or(Status::Overloaded)
}

/// What a context call failed with: its status and the error text.
type CallResult<T> = Result<T, (Status, String)>;

/// A remote invocation's failure as a context call's: its status and its text.
#[cfg(feature = "python")]
fn failed(err: RemoteError) -> (Status, String) {
    (err.status(), err.to_string())
}

fn bad_key(err: crate::state::StateError) -> (Status, String) {
    (Status::InvalidArgument, err.to_string())
}

/// The services of a running invocation, in safe Rust: the C ABI's entries (below) and the
/// Python context (`crate::python`) both call these.
impl Invocation<'_> {
    fn state_put(&self, key: &[u8], value: &[u8]) -> CallResult<()> {
        let key = validate_key(key).map_err(bad_key)?;
        self.process.state().put(key, value.to_vec()).map(drop).map_err(bad_key)
    }

    fn state_get(&self, key: &[u8]) -> CallResult<Option<StateEntry>> {
        Ok(self.process.state().get(validate_key(key).map_err(bad_key)?))
    }

    fn state_delete(&self, key: &[u8]) -> CallResult<bool> {
        Ok(self.process.state().delete(validate_key(key).map_err(bad_key)?))
    }

    fn state_keys(&self) -> Vec<(String, u64)> {
        self.process.state().keys()
    }

    /// Runs `name` right here, on the caller's thread, with the caller's deadline: a local
    /// invocation needs no free worker, so it cannot deadlock however busy the pool is.
    fn invoke_local(&self, name: &[u8], input: &[u8]) -> CallResult<PoolBuf> {
        let process = self.process;
        let Some(callee) = process.functions().get(name) else {
            return Err((Status::UnknownFunction, unknown_function_message(process, name)));
        };
        if self.depth + 1 >= MAX_LOCAL_DEPTH {
            return Err((Status::InvalidArgument, format!("local invocations nested deeper than {MAX_LOCAL_DEPTH}")));
        }
        if self.deadline.instant().is_some_and(|d| Instant::now() >= d) {
            return Err((Status::Timeout, format!("deadline passed before {:?} could be invoked", callee.name)));
        }
        let outcome = execute_nested(
            process,
            self.id,
            callee,
            Input::Borrowed(input),
            self.deadline,
            self.depth + 1,
            self.inline,
        );
        process.metrics().record_local();
        match outcome.output {
            Some(buffer) if outcome.status == Status::Ok => Ok(buffer),
            _ => Err((outcome.status, outcome.message)),
        }
    }

    /// Puts a message to `dest`; waits for its acknowledgement (refused inline, where that would
    /// block the I/O thread, unless `dest` is this process).
    fn put_message(&self, dest: &str, key: &str, data: &[u8]) -> CallResult<()> {
        validate_key(key.as_bytes()).map_err(bad_key)?;
        let process = self.process;
        if self.inline && dest != process.id() {
            let text = format!(
                "put to process {dest:?} waits for its answer, which would block the I/O thread: declare \
                 function {:?} with mode = \"worker\"",
                self.function
            );
            return Err((Status::Unsupported, text));
        }
        let timeout = match self.deadline.instant() {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()).min(DEFAULT_PUT_TIMEOUT),
            None => DEFAULT_PUT_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err((Status::Timeout, format!("deadline passed before the put to {dest:?}")));
        }
        process.peers().put(dest, key, data, timeout).map_err(|err| (err.status(), err.to_string()))?;
        self.stats.record_message_put();
        Ok(())
    }

    /// Takes the oldest message under `key` from `source` (any if `None`), waiting at most
    /// `timeout` and never past the invocation's deadline (refused inline with a timeout).
    fn get_message(&self, source: Option<&str>, key: &str, timeout: Duration) -> CallResult<(String, Vec<u8>)> {
        validate_key(key.as_bytes()).map_err(bad_key)?;
        if self.inline && !timeout.is_zero() {
            let text = format!(
                "get with a timeout would block the I/O thread: declare function {:?} with mode = \"worker\", \
                 or get with timeout 0 to only look",
                self.function
            );
            return Err((Status::Unsupported, text));
        }
        let left = self.deadline.instant().map(|d| d.saturating_duration_since(Instant::now()));
        let wait = left.map_or(timeout, |left| left.min(timeout));
        let got = self.process.mailbox().get(source, key, wait).map_err(|err| {
            let mut text = err.to_string();
            if wait < timeout {
                text.push_str(" (the invocation's deadline came first)");
            }
            (crate::mailbox::MailboxError::status(&err), text)
        })?;
        self.stats.record_message_got();
        Ok(got)
    }

    /// Its remote invocations in flight (none yet the first time).
    fn remote_calls(&self) -> &Mutex<RemoteCalls> {
        self.calls.get_or_init(|| Mutex::new(RemoteCalls { calls: Vec::new(), next: 1 }))
    }

    /// When a remote invocation from this one must be answered: its own deadline, else
    /// [`DEFAULT_CALL_TIMEOUT`](crate::remote::DEFAULT_CALL_TIMEOUT) from now.
    fn remote_deadline(&self, dest: &str, function: &str) -> Result<Instant, RemoteError> {
        if self.inline {
            return Err(RemoteError::Inline { function: self.function.to_owned() });
        }
        let now = Instant::now();
        let deadline = self.deadline.instant().unwrap_or(now + crate::remote::DEFAULT_CALL_TIMEOUT);
        if deadline <= now {
            return Err(RemoteError::Timeout {
                dest: dest.to_owned(),
                function: function.to_owned(),
                timeout: Duration::ZERO,
            });
        }
        Ok(deadline)
    }

    /// Invokes `function` of process `dest` and waits for its output, within this invocation's
    /// deadline (refused inline, where it would block the I/O thread).
    fn invoke_remote(&self, dest: &str, function: &str, input: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let deadline = self.remote_deadline(dest, function)?;
        self.process.peers().invoke_remote(dest, function, input, deadline, Some(self.process.swap_ins()))
    }

    /// Starts invoking `function` of process `dest`; returns the handle to wait for it with.
    fn submit_remote(&self, dest: &str, function: &str, input: &[u8]) -> Result<u64, RemoteError> {
        let mut calls = self.remote_calls().lock().unwrap_or_else(|p| p.into_inner());
        if calls.calls.len() >= MAX_REMOTE_IN_FLIGHT {
            return Err(RemoteError::TooMany(calls.calls.len()));
        }
        let deadline = self.remote_deadline(dest, function)?;
        let call = self.process.peers().submit(dest, function, input, deadline, Some(self.process.swap_ins()))?;
        let handle = calls.next;
        calls.next += 1;
        calls.calls.push((handle, call));
        Ok(handle)
    }

    /// Waits for the first of the calls `handles` names to finish: its position in `handles`
    /// and its result. An unknown handle fails at once, at its position.
    fn wait_remote(&self, handles: &[u64]) -> (usize, Result<Vec<u8>, RemoteError>) {
        let mut in_flight = self.remote_calls().lock().unwrap_or_else(|p| p.into_inner());
        let mut waiting = Vec::with_capacity(handles.len());
        for (index, &handle) in handles.iter().enumerate() {
            match in_flight.calls.iter().position(|(h, _)| *h == handle) {
                Some(at) => waiting.push(in_flight.calls.swap_remove(at)),
                None => {
                    in_flight.calls.append(&mut waiting);
                    return (index, Err(RemoteError::UnknownHandle(handle)));
                }
            }
        }
        let (mut ids, mut calls): (Vec<u64>, Vec<_>) = waiting.into_iter().unzip();
        let Some((done, result)) = crate::remote::wait_any(&mut calls, self.process.peers()) else {
            return (0, Err(RemoteError::UnknownHandle(0)));
        };
        let handle = ids.remove(done);
        in_flight.calls.extend(ids.into_iter().zip(calls));
        let index = handles.iter().position(|&h| h == handle).unwrap_or(done);
        (index, result)
    }

    /// A line in the process's log from the function, naming the invocation, the application,
    /// the process and the function.
    fn log(&self, level: i32, text: &str) {
        let (id, app, process, function) =
            (self.id, self.process.config().app.as_str(), self.process.id(), self.function);
        match level {
            PRAAS_LOG_ERROR => tracing::error!(target: "praas::function", id, app, process, function, "{text}"),
            PRAAS_LOG_WARN => tracing::warn!(target: "praas::function", id, app, process, function, "{text}"),
            PRAAS_LOG_INFO => tracing::info!(target: "praas::function", id, app, process, function, "{text}"),
            PRAAS_LOG_DEBUG => tracing::debug!(target: "praas::function", id, app, process, function, "{text}"),
            _ => tracing::trace!(target: "praas::function", id, app, process, function, "{text}"),
        }
    }
}

#[cfg(feature = "python")]
impl crate::python::Services for Invocation<'_> {
    fn process_id(&self) -> &str {
        self.process.id()
    }

    fn function(&self) -> &str {
        self.function
    }

    fn state_put(&self, key: &[u8], value: &[u8]) -> CallResult<()> {
        Invocation::state_put(self, key, value)
    }

    fn state_get(&self, key: &[u8]) -> CallResult<Option<StateEntry>> {
        Invocation::state_get(self, key)
    }

    fn state_delete(&self, key: &[u8]) -> CallResult<bool> {
        Invocation::state_delete(self, key)
    }

    fn state_keys(&self) -> Vec<(String, u64)> {
        Invocation::state_keys(self)
    }

    fn put_message(&self, dest: &str, key: &str, data: &[u8]) -> CallResult<()> {
        Invocation::put_message(self, dest, key, data)
    }

    fn get_message(&self, source: Option<&str>, key: &str, timeout: Duration) -> CallResult<(String, Vec<u8>)> {
        Invocation::get_message(self, source, key, timeout)
    }

    fn is_python(&self, function: &[u8]) -> bool {
        self.process.functions().get(function).is_some_and(|f| f.language() == crate::function::Language::Python)
    }

    fn invoke_local(&self, function: &[u8], input: &[u8]) -> CallResult<PoolBuf> {
        Invocation::invoke_local(self, function, input)
    }

    fn invoke_remote(&self, dest: &str, function: &str, input: &[u8]) -> CallResult<Vec<u8>> {
        Invocation::invoke_remote(self, dest, function, input).map_err(failed)
    }

    fn submit_remote(&self, dest: &str, function: &str, input: &[u8]) -> CallResult<u64> {
        Invocation::submit_remote(self, dest, function, input).map_err(failed)
    }

    fn wait_remote(&self, handles: &[u64]) -> (usize, CallResult<Vec<u8>>) {
        let (index, result) = Invocation::wait_remote(self, handles);
        (index, result.map_err(failed))
    }

    fn log(&self, level: i32, message: &str) {
        Invocation::log(self, level, message)
    }

    fn output(&self, bytes: &[u8]) -> CallResult<PoolBuf> {
        let mut buffer = output_buffer(self.process, bytes.len(), bytes.len().max(MIN_BUF)).map_err(|status| {
            let text = match status {
                Status::TooLarge => format!(
                    "function {:?} returned {} bytes, more than the largest frame of this process ({} bytes)",
                    self.function,
                    bytes.len(),
                    self.process.config().max_frame
                ),
                _ => "no buffer for the output: the process's buffer budget is spent".to_owned(),
            };
            (status, text)
        })?;
        buffer.memory_mut()[..bytes.len()].copy_from_slice(bytes);
        buffer.set_len(bytes.len());
        Ok(buffer)
    }
}

/// Runs `f` with the invocation behind `ctx`, turning a panic of the runtime's own code into an
/// internal error instead of unwinding through the function's C frames.
fn with_invocation(ctx: *mut praas_context, f: impl FnOnce(&mut Invocation<'_>) -> i32) -> i32 {
    if ctx.is_null() {
        return PRAAS_ERR_INVALID_ARGUMENT;
    }
    // SAFETY: a non-null `ctx` is the context `execute_nested` created for the running invocation;
    // its `runtime` points to that invocation's `Invocation`, alive and not otherwise borrowed
    // while the function (the only holder of `ctx`) calls back into us.
    let invocation = unsafe { &mut *(*ctx).runtime.cast::<Invocation<'_>>() };
    catch_unwind(AssertUnwindSafe(|| f(invocation))).unwrap_or(PRAAS_ERR_INTERNAL)
}

/// Borrows `len` bytes at `ptr` as a slice; a null pointer is only valid with length 0.
///
/// # Safety
/// If non-null, `ptr` must point to `len` readable bytes that stay valid for `'a`.
unsafe fn slice<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        Some(&[])
    } else if ptr.is_null() {
        None
    } else {
        // SAFETY: guaranteed by the caller.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

unsafe extern "C" fn output_reserve(ctx: *mut praas_context, out: *mut praas_output, additional: usize) -> i32 {
    with_invocation(ctx, |invocation| {
        if out.is_null() {
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        // SAFETY: `out` is the output `execute_nested` passed to this invocation (non-null,
        // checked), exclusively the function's, which is blocked in this call.
        let out = unsafe { &mut *out };
        // SAFETY: `handle` was set by `execute_nested` to the invocation's live `PoolBuf`.
        let buffer = unsafe { &mut *out.handle.cast::<PoolBuf>() };
        if out.len > buffer.capacity() {
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        let Some(needed) = out.len.checked_add(additional) else {
            return PRAAS_ERR_TOO_LARGE;
        };
        if needed <= buffer.capacity() {
            return PRAAS_OK;
        }
        let mut grown = match output_buffer(invocation.process, needed, needed.max(buffer.capacity() * 2)) {
            Ok(grown) => grown,
            Err(status) => return status.code() as i32,
        };
        grown.memory_mut()[..out.len].copy_from_slice(&buffer.memory_mut()[..out.len]);
        *buffer = grown;
        out.data = buffer.memory_mut().as_mut_ptr();
        out.capacity = buffer.capacity();
        PRAAS_OK
    })
}

unsafe extern "C" fn state_put(
    ctx: *mut praas_context,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> i32 {
    with_invocation(ctx, |invocation| {
        // SAFETY: the ABI requires `key`/`value` to point to `key_len`/`value_len` readable bytes.
        let (Some(key), Some(value)) = (unsafe { slice(key, key_len) }, unsafe { slice(value, value_len) }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        match invocation.state_put(key, value) {
            Ok(()) => PRAAS_OK,
            Err((status, _)) => status.code() as i32,
        }
    })
}

unsafe extern "C" fn state_get(
    ctx: *mut praas_context,
    key: *const u8,
    key_len: usize,
    value: *mut praas_bytes,
    timestamp_ns: *mut u64,
) -> i32 {
    with_invocation(ctx, |invocation| {
        // SAFETY: the ABI requires `key` to point to `key_len` readable bytes.
        let Some(key) = (unsafe { slice(key, key_len) }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        if value.is_null() {
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        let entry = match invocation.state_get(key) {
            Ok(Some(entry)) => entry,
            Ok(None) => return PRAAS_ERR_NOT_FOUND,
            Err((status, _)) => return status.code() as i32,
        };
        if !timestamp_ns.is_null() {
            // SAFETY: a non-null `timestamp_ns` points to a writable u64 (ABI contract).
            unsafe { timestamp_ns.write(entry.timestamp_ns) };
        }
        LentBytes::Shared(entry.value).lend(value);
        PRAAS_OK
    })
}

unsafe extern "C" fn state_delete(ctx: *mut praas_context, key: *const u8, key_len: usize) -> i32 {
    with_invocation(ctx, |invocation| {
        // SAFETY: the ABI requires `key` to point to `key_len` readable bytes.
        let Some(key) = (unsafe { slice(key, key_len) }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        match invocation.state_delete(key) {
            Ok(true) => PRAAS_OK,
            Ok(false) => PRAAS_ERR_NOT_FOUND,
            Err((status, _)) => status.code() as i32,
        }
    })
}

unsafe extern "C" fn state_keys(ctx: *mut praas_context, keys: *mut praas_bytes) -> i32 {
    with_invocation(ctx, |invocation| {
        if keys.is_null() {
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        let mut encoded = Vec::new();
        for (key, ts) in invocation.state_keys() {
            praas_ffi::encode_key(&mut encoded, &key, ts);
        }
        LentBytes::Owned(encoded).lend(keys);
        PRAAS_OK
    })
}

unsafe extern "C" fn invoke(
    ctx: *mut praas_context,
    function: *const u8,
    function_len: usize,
    input: *const u8,
    input_len: usize,
    output: *mut praas_bytes,
) -> i32 {
    with_invocation(ctx, |invocation| {
        // SAFETY: the ABI requires both pointers to address their lengths of readable bytes.
        let (Some(name), Some(input)) = (unsafe { slice(function, function_len) }, unsafe { slice(input, input_len) })
        else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        if output.is_null() {
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        match invocation.invoke_local(name, input) {
            Ok(buffer) => {
                LentBytes::Buffer(buffer).lend(output);
                PRAAS_OK
            }
            Err((status, message)) => {
                LentBytes::Owned(message.into_bytes()).lend(output);
                status.code() as i32
            }
        }
    })
}

unsafe extern "C" fn process_id(ctx: *mut praas_context, id: *mut praas_bytes) -> i32 {
    with_invocation(ctx, |invocation| {
        if id.is_null() {
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        let text = invocation.process.id();
        // SAFETY: `id` is non-null and writable (ABI contract); the id string lives as long as
        // the process, so nothing needs releasing (null owner).
        unsafe { id.write(praas_bytes { data: text.as_ptr(), len: text.len(), owner: std::ptr::null_mut() }) };
        PRAAS_OK
    })
}

unsafe extern "C" fn log(ctx: *mut praas_context, level: i32, message: *const u8, message_len: usize) {
    with_invocation(ctx, |invocation| {
        // SAFETY: the ABI requires `message` to point to `message_len` readable bytes.
        let Some(bytes) = (unsafe { slice(message, message_len) }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        invocation.log(level, &String::from_utf8_lossy(bytes));
        PRAAS_OK
    });
}

unsafe extern "C" fn set_error(ctx: *mut praas_context, message: *const u8, message_len: usize) {
    with_invocation(ctx, |invocation| {
        // SAFETY: the ABI requires `message` to point to `message_len` readable bytes.
        let Some(bytes) = (unsafe { slice(message, message_len) }) else {
            return PRAAS_ERR_INVALID_ARGUMENT;
        };
        invocation.error = Some(String::from_utf8_lossy(bytes).into_owned());
        PRAAS_OK
    });
}

unsafe extern "C" fn release(_ctx: *mut praas_context, bytes: *mut praas_bytes) {
    if bytes.is_null() {
        return;
    }
    // SAFETY: a non-null `bytes` was filled by `LentBytes::lend` (or has a null owner); taking the
    // owner out first makes a second release of the same `praas_bytes` a no-op.
    let owner = unsafe { std::mem::replace(&mut (*bytes).owner, std::ptr::null_mut()) };
    if !owner.is_null() {
        // SAFETY: `owner` came from `Box::into_raw` in `LentBytes::lend` and is released only once.
        drop(unsafe { Box::from_raw(owner.cast::<LentBytes>()) });
    }
    // SAFETY: `bytes` is non-null and writable; clear it so stale use sees an empty value.
    unsafe {
        (*bytes).data = std::ptr::null();
        (*bytes).len = 0;
    }
}

/// Lends `text` through `out` if it is non-null; returns `status`.
fn fail_into(out: *mut praas_bytes, status: Status, text: String) -> i32 {
    if !out.is_null() {
        LentBytes::Owned(text.into_bytes()).lend(out);
    }
    status.code() as i32
}

/// Clears an optional out-parameter, so that releasing it is a no-op whatever happens next.
fn clear(out: *mut praas_bytes) {
    if !out.is_null() {
        // SAFETY: a non-null out-parameter is writable (ABI contract).
        unsafe { out.write(praas_bytes::empty()) };
    }
}

unsafe extern "C" fn put(
    ctx: *mut praas_context,
    dest: *const u8,
    dest_len: usize,
    key: *const u8,
    key_len: usize,
    data: *const u8,
    data_len: usize,
    error: *mut praas_bytes,
) -> i32 {
    with_invocation(ctx, |invocation| {
        clear(error);
        // SAFETY: the ABI requires each pointer to address its length of readable bytes.
        let (Some(dest), Some(key), Some(data)) =
            (unsafe { slice(dest, dest_len) }, unsafe { slice(key, key_len) }, unsafe { slice(data, data_len) })
        else {
            return fail_into(error, Status::InvalidArgument, "put: a null pointer with a non-zero length".into());
        };
        let (Ok(dest), Ok(key)) = (std::str::from_utf8(dest), std::str::from_utf8(key)) else {
            return fail_into(error, Status::InvalidArgument, "put: destination and key must be UTF-8".into());
        };
        match invocation.put_message(dest, key, data) {
            Ok(()) => PRAAS_OK,
            Err((status, text)) => fail_into(error, status, text),
        }
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn get(
    ctx: *mut praas_context,
    source: *const u8,
    source_len: usize,
    key: *const u8,
    key_len: usize,
    timeout_ms: u64,
    message: *mut praas_bytes,
    from: *mut praas_bytes,
) -> i32 {
    with_invocation(ctx, |invocation| {
        if message.is_null() {
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        clear(message);
        clear(from);
        // SAFETY: the ABI requires a non-null `source` to address `source_len` readable bytes.
        let source = if source.is_null() { Some(&[][..]) } else { unsafe { slice(source, source_len) } };
        // SAFETY: the ABI requires `key` to address `key_len` readable bytes.
        let (Some(source), Some(key)) = (source, unsafe { slice(key, key_len) }) else {
            return fail_into(message, Status::InvalidArgument, "get: a null key with a non-zero length".into());
        };
        let (Ok(source), Ok(key)) = (std::str::from_utf8(source), std::str::from_utf8(key)) else {
            return fail_into(message, Status::InvalidArgument, "get: source and key must be UTF-8".into());
        };
        let source = Some(source).filter(|s| !s.is_empty());
        match invocation.get_message(source, key, Duration::from_millis(timeout_ms)) {
            Ok((sender, bytes)) => {
                LentBytes::Owned(bytes).lend(message);
                if !from.is_null() {
                    LentBytes::Owned(sender.into_bytes()).lend(from);
                }
                PRAAS_OK
            }
            Err((status, text)) => fail_into(message, status, text),
        }
    })
}

/// Borrows a UTF-8 string argument of the C ABI.
///
/// # Safety
/// As [`slice`].
unsafe fn utf8<'a>(ptr: *const u8, len: usize) -> Option<&'a str> {
    // SAFETY: guaranteed by the caller.
    unsafe { slice(ptr, len) }.and_then(|bytes| std::str::from_utf8(bytes).ok())
}

/// Lends the output or the error text of a remote invocation through `out`; returns its status.
fn lend_remote(out: *mut praas_bytes, result: Result<Vec<u8>, RemoteError>) -> i32 {
    match result {
        Ok(bytes) => {
            if !out.is_null() {
                LentBytes::Owned(bytes).lend(out);
            }
            PRAAS_OK
        }
        Err(err) => fail_into(out, err.status(), err.to_string()),
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn remote_invoke(
    ctx: *mut praas_context,
    process: *const u8,
    process_len: usize,
    function: *const u8,
    function_len: usize,
    input: *const u8,
    input_len: usize,
    output: *mut praas_bytes,
) -> i32 {
    with_invocation(ctx, |invocation| {
        if output.is_null() {
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        clear(output);
        // SAFETY: the ABI requires each pointer to address its length of readable bytes.
        let args = unsafe { (utf8(process, process_len), utf8(function, function_len), slice(input, input_len)) };
        let (Some(process), Some(function), Some(input)) = args else {
            let text = "remote_invoke: process and function must be UTF-8, pointers non-null".to_owned();
            return fail_into(output, Status::InvalidArgument, text);
        };
        lend_remote(output, invocation.invoke_remote(process, function, input))
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn remote_submit(
    ctx: *mut praas_context,
    process: *const u8,
    process_len: usize,
    function: *const u8,
    function_len: usize,
    input: *const u8,
    input_len: usize,
    handle: *mut u64,
    error: *mut praas_bytes,
) -> i32 {
    with_invocation(ctx, |invocation| {
        clear(error);
        if handle.is_null() {
            return fail_into(error, Status::InvalidArgument, "remote_submit: a null handle".into());
        }
        // SAFETY: the ABI requires each pointer to address its length of readable bytes.
        let args = unsafe { (utf8(process, process_len), utf8(function, function_len), slice(input, input_len)) };
        let (Some(process), Some(function), Some(input)) = args else {
            let text = "remote_submit: process and function must be UTF-8, pointers non-null".to_owned();
            return fail_into(error, Status::InvalidArgument, text);
        };
        match invocation.submit_remote(process, function, input) {
            Ok(id) => {
                // SAFETY: `handle` is non-null and writable (ABI contract).
                unsafe { handle.write(id) };
                PRAAS_OK
            }
            Err(err) => fail_into(error, err.status(), err.to_string()),
        }
    })
}

unsafe extern "C" fn remote_wait(
    ctx: *mut praas_context,
    handles: *const u64,
    count: usize,
    index: *mut usize,
    output: *mut praas_bytes,
) -> i32 {
    with_invocation(ctx, |invocation| {
        if output.is_null() {
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        clear(output);
        if handles.is_null() || count == 0 {
            return fail_into(output, Status::InvalidArgument, "remote_wait: no handles".into());
        }
        // SAFETY: the ABI requires `handles` to address `count` readable handles (non-null, checked).
        let handles = unsafe { std::slice::from_raw_parts(handles, count) };
        let (done, result) = invocation.wait_remote(handles);
        if !index.is_null() {
            // SAFETY: a non-null `index` is writable (ABI contract).
            unsafe { index.write(done) };
        }
        lend_remote(output, result)
    })
}

/// The error text for a function that is not there, listing those that are.
pub fn unknown_function_message(process: &ProcessCore, name: &[u8]) -> String {
    format!("unknown function {:?}: this process has {:?}", String::from_utf8_lossy(name), process.functions().names())
}

/// The runtime's function table, shared by every invocation.
static API: praas_api = praas_api {
    abi_version: PRAAS_ABI_VERSION,
    output_reserve,
    state_put,
    state_get,
    state_delete,
    state_keys,
    invoke,
    process_id,
    log,
    set_error,
    release,
    put,
    get,
    remote_invoke,
    remote_submit,
    remote_wait,
};
