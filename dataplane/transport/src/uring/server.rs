//! The event loop of one I/O thread: one ring, a multishot accept on the shared listener, and the
//! connections this thread accepted.
//!
//! Every operation carries `user_data` = connection slot (high 32 bits) and operation kind (low
//! byte). A connection has at most one operation of each kind in flight (one multishot receive or
//! one direct receive, one send, cancels), so the state an operation needs (the send's `msghdr` and
//! iovecs, the buffer ring, the large frame's buffer) lives in the connection's slot of the slab,
//! boxed where the kernel holds pointers to it. A slot is freed, and its memory released, only
//! after the last operation of its connection has completed (`in_flight == 0`).
//!
//! A connection that has not proven itself ([`serve::proven`]) has no buffer ring: a one-shot
//! poll says when it is readable, and one small pool buffer (4 KiB) takes what arrived; an idle
//! connection holds no buffer at all. Once proven, it gets its buffer ring and multishot receive.
//! Connections past their idle or frame timeout are closed by a periodic sweep (a timer the ring
//! reads: [`SweepTimer`]); a connection
//! waiting for the pool is woken by the pool when a buffer comes back, not by polling.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::queue::SegQueue;
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::fixed::FixedBuffers;
use super::recv::BufRing;
use super::recv::{self, Frames, Intake, Partial, Receiving, RecvStep};
use super::{UringOptions, UringStats};
use crate::sweep::{Reads, SweepTimer};
use praas_runtime::buffer::{Payload, PoolBuf, MIN_BUF};
use praas_runtime::invocation::{Response, ResponseSink};
use praas_runtime::process::Process;
use praas_runtime::serve::{self, Activity, Admitted, ConnectionOptions, Delivery, End, Link, ReadState};
use praas_runtime::serve::{flatten_frames, FlatBuf, Gathered, OutFrame};
use praas_runtime::serve::{serve_frame, FrameAction};
use praas_runtime::session::PeerSession;
use praas_wire::protocol::{FrameLimits, Header};

/// Most iovecs in one send.
const MAX_IOV: usize = praas_runtime::serve::MAX_GATHER;

/// Operation kinds, the low byte of `user_data`.
const OP_ACCEPT: u8 = 1;
const OP_WAKE: u8 = 2;
const OP_RECV: u8 = 3;
const OP_RECV_LARGE: u8 = 4;
const OP_SEND: u8 = 5;
const OP_CANCEL: u8 = 6;
const OP_CANCEL_ALL: u8 = 7;
/// The header and metadata of a frame whose payload follows in a linked fixed `SEND_ZC`.
const OP_SEND_HEAD: u8 = 8;
/// A one-shot readiness poll of a connection that has no buffer ring yet.
const OP_POLL: u8 = 9;
/// A read of the sweep timer: completes at each of its periods.
const OP_SWEEP: u8 = 10;

/// How long a connection waiting for the pool waits at most for the pool's word.
const STARVED_FALLBACK: Duration = Duration::from_millis(100);

fn user_data(slot: usize, op: u8) -> u64 {
    ((slot as u64) << 32) | op as u64
}

fn split_user_data(data: u64) -> (usize, u8) {
    ((data >> 32) as usize, (data & 0xff) as u8)
}

/// What workers share with the I/O thread: responses for its connections, and how to wake it.
pub(crate) struct LoopShared {
    /// Responses produced on worker threads, keyed by connection (slot and generation).
    responses: SegQueue<(u64, Response)>,
    /// The eventfd the ring reads; written when the loop must look at `responses` or `stop`.
    eventfd: OwnedFd,
    /// Set by the first producer after the loop last drained: later ones skip the eventfd write.
    notified: AtomicBool,
    /// Set to stop the loop.
    pub stop: AtomicBool,
    /// A buffer came back to the pool that connections of this loop wait on.
    pool_freed: AtomicBool,
    /// The counters of the transport this loop serves.
    pub stats: Arc<UringStats>,
}

impl LoopShared {
    /// A queue and its eventfd, for a loop of the transport that counts into `stats`.
    pub fn new(stats: Arc<UringStats>) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            responses: SegQueue::new(),
            eventfd,
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            pool_freed: AtomicBool::new(false),
            stats,
        })
    }

    /// Wakes the loop whatever the loop last saw (to stop it).
    pub fn wake_always(&self) {
        self.notified.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let _ = unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Wakes the loop (once until it drains again).
    pub fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            let _ = unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// A connection's [`ResponseSink`]: queues the response for the I/O thread and wakes it. The
/// inline path never comes here (its responses are queued on the I/O thread itself), so it pays
/// for no atomic and no lock; a worker pays one lock-free push and, at most once per loop
/// iteration, one eventfd write.
struct ConnSink {
    key: u64,
    shared: Arc<LoopShared>,
}

impl ResponseSink for ConnSink {
    fn send(&self, response: Response) {
        self.shared.responses.push((self.key, response));
        self.shared.wake();
    }
}

/// The `sendmsg` arguments of the connection's send in flight; boxed: the kernel reads them.
struct SendState {
    msg: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
}

struct Conn {
    // Field order is drop order: the socket closes before its buffers are released.
    fd: OwnedFd,
    generation: u32,
    sink: Arc<dyn ResponseSink>,
    /// The provided-buffer ring, once the connection proved itself.
    bufs: Option<BufRing>,
    /// Buffers that came back unshared after their data was consumed: provided again first.
    spare: Vec<Arc<PoolBuf>>,
    /// Received buffers not yet decoded (back-pressure holds them here), and where to resume.
    backlog: VecDeque<(Arc<PoolBuf>, usize)>,
    /// The frame received in part (assembled by copying, or a large frame in its own buffer).
    partial: Partial,
    state: ReadState,
    /// The receive operations in flight.
    receiving: Receiving,
    /// Invocations at the workers, not yet answered.
    outstanding: usize,
    queue: VecDeque<Box<OutFrame>>,
    /// Boxes of frames sent, emptied, for the next frames (a response allocates no box).
    #[allow(clippy::vec_box)]
    spare_frames: Vec<Box<OutFrame>>,
    queued_bytes: usize,
    send: Box<SendState>,
    sending: bool,
    /// Zero-copy notifications still to come; frames sent meanwhile wait in `zc_hold`.
    zc_notifs: usize,
    // Boxed: the kernel may still read a frame's header bytes (inside `OutFrame`) by address.
    #[allow(clippy::vec_box)]
    zc_hold: Vec<Box<OutFrame>>,
    /// Shut the sending side once the queue is flushed (after a protocol error response).
    shutdown_after_flush: bool,
    /// The peer is on this host: loopback delivery copies zero-copy sends anyway, so none are made.
    loopback: bool,
    /// Operations in flight (each multishot counts once, a zero-copy send until its notification).
    in_flight: usize,
    closing: bool,
    /// The cancel of every operation of a closing connection was pushed.
    cancel_all_sent: bool,
    /// Waiting for the pool to give buffers.
    starved: bool,
    /// The peer-process handshake and identity of this connection (`Hello`, `Message` frames).
    peer: PeerSession,
    /// Back-pressure, and how long to keep reading (and discarding) after refusing the connection.
    limits: ConnectionOptions,
    /// Counted against the process's connection limits while it lives.
    _admitted: Admitted,
    /// What the idle and frame timeouts look at.
    activity: Activity,
    /// It has proven itself ([`serve::proven`]): its buffer ring and multishot receive.
    proven: bool,
    /// A one-shot poll (no buffer ring yet) is in flight.
    polling: bool,
}

impl Conn {
    #[inline]
    fn blocked_by_peer(&self) -> bool {
        self.limits.blocked(self.outstanding, || self.queued_bytes)
    }

    fn finished(&self) -> bool {
        let drained = || self.queue.is_empty() && !self.sending && self.outstanding == 0;
        self.state.finished(Delivery::PeerClose, drained)
    }

    /// Whether it has invocations at the workers or answers to send (then it is not idle).
    fn busy(&self) -> bool {
        self.outstanding > 0 || !self.queue.is_empty() || self.sending
    }

    fn push_frame(&mut self, frame: OutFrame) {
        self.queued_bytes += frame.len();
        let boxed = match self.spare_frames.pop() {
            Some(mut spare) => {
                *spare = frame;
                spare
            }
            None => Box::new(frame),
        };
        self.queue.push_back(boxed);
    }
}

/// One I/O thread's loop.
pub(crate) struct EventLoop {
    // Field order is drop order: the ring goes first, so no operation outlives the memory below.
    ring: IoUring,
    listener: Arc<TcpListener>,
    process: Arc<Process>,
    options: UringOptions,
    shared: Arc<LoopShared>,
    wake_buf: Box<u64>,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<usize>,
    /// Connections to look at after this batch of completions.
    dirty: Vec<usize>,
    /// Connections to look at again at a time: starved ones and lingering ones.
    retry: Vec<(Instant, usize)>,
    accept_armed: bool,
    /// This batch touched one connection: its send may go out as a plain `sendmsg`.
    direct_send: bool,
    /// After a failed accept (out of descriptors and the like): not before this time again.
    accept_paused_until: Option<Instant>,
    wake_armed: bool,
    /// Ticks when to look for connections past their timeouts (read by the ring, so that its
    /// waits carry no timeout of their own but for the rare retries).
    sweep_timer: SweepTimer,
    /// Where the sweep timer's read puts its count (boxed: the ring writes it).
    sweep_buf: Box<u64>,
    sweep_armed: bool,
    /// The ring's registered buffers (dropped after the ring, which unregisters them).
    fixed: FixedBuffers,
    /// The ring's own descriptor registered with it (not under SQPOLL): waits skip its lookup.
    registered: Option<super::probe::RegisteredRing>,
    /// Connections waiting for the pool: looked at again when it says a buffer came back.
    starved: Vec<usize>,
    /// The time after the last wait (what completions and pumps of a batch see).
    now: Instant,
}

/// Emptied frame boxes a connection keeps for its next responses.
const SPARE_FRAMES: usize = 4;

/// Slot used in `user_data` for operations that belong to no connection.
const NO_CONN: usize = u32::MAX as usize;

impl EventLoop {
    /// A loop with its own ring.
    pub fn new(
        listener: Arc<TcpListener>,
        process: Arc<Process>,
        options: UringOptions,
        shared: Arc<LoopShared>,
    ) -> io::Result<Self> {
        let ring = super::probe::build_ring(super::probe::RingConfig {
            entries: options.ring_entries,
            sqpoll_idle_ms: options.sqpoll_idle_ms,
            single_issuer: true,
            taskrun_flag: !options.spin.is_zero(),
        })?;
        let registered =
            options.sqpoll_idle_ms.is_none().then(|| super::probe::RegisteredRing::register(&ring)).flatten();
        let weak = Arc::downgrade(&shared);
        process.pool().on_release(Box::new(move || {
            let Some(shared) = weak.upgrade() else { return false };
            shared.pool_freed.store(true, Ordering::Release);
            shared.wake();
            true
        }));
        let sweep_timer = SweepTimer::periodic(process.config().connection_limits.sweep_interval(), Reads::Blocking)?;
        Ok(Self {
            starved: Vec::new(),
            sweep_timer,
            sweep_buf: Box::new(0),
            sweep_armed: false,
            now: Instant::now(),
            listener,
            process,
            options,
            shared,
            wake_buf: Box::new(0),
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            retry: Vec::new(),
            accept_armed: false,
            accept_paused_until: None,
            direct_send: false,
            wake_armed: false,
            fixed: FixedBuffers::new(&ring),
            registered,
            ring,
        })
    }

    /// Pushes one entry, submitting to make room when the submission queue is full: a full ring
    /// delays the entry, it never drops it.
    ///
    /// # Safety
    /// Every buffer and structure `entry` points to must stay valid until its completion (or, for
    /// a zero-copy send, its notification) has been reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push_all(std::slice::from_ref(entry)) }
    }

    /// Pushes `entries` together, into the same submission (so that a link never spans two),
    /// submitting first to make room if needed.
    ///
    /// # Safety
    /// As for [`EventLoop::push`], for every entry.
    unsafe fn push_all(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push_multiple(entries) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EAGAIN) => {
                    // The completion queue is full too: make room by handling completions.
                    self.reap()?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if self.options.sqpoll_idle_ms.is_some() {
                let _ = self.ring.submitter().squeue_wait();
            }
        }
    }

    /// Serves until told to stop.
    ///
    /// However it ends (told to stop, or a ring error), every connection's operations are
    /// cancelled and reaped before this returns: no operation outlives the memory it points to.
    pub fn run(&mut self) -> io::Result<()> {
        let served = self.serve();
        if let Err(e) = &served {
            tracing::error!("io_uring event loop failed: {e}");
        }
        let stopped = self.shutdown();
        served.and(stopped)
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut cqes = Vec::with_capacity(256);
        while !self.shared.stop.load(Ordering::Acquire) {
            self.arm_listeners()?;
            self.pump_dirty()?;
            self.wait()?;
            self.now = Instant::now();
            self.collect(&mut cqes);
            for (data, result, flags) in cqes.drain(..) {
                self.complete(data, result, flags)?;
            }
            self.drain_responses();
            if self.shared.pool_freed.swap(false, Ordering::AcqRel) {
                self.dirty.append(&mut self.starved);
            }
            self.retry_due();
        }
        Ok(())
    }

    /// Closes the connections past their idle or frame timeout (a frame timeout with an error
    /// frame first).
    fn sweep(&mut self) {
        let limits = self.process.config().connection_limits;
        for (slot, conn) in self.conns.iter_mut().enumerate() {
            let Some(conn) = conn.as_mut().filter(|c| !c.closing && c.state == ReadState::Open) else { continue };
            let Some(expiry) = conn.activity.expired(self.now, &limits, conn.busy()) else { continue };
            if let Some(refusal) = expiry.refusal(&limits) {
                tracing::debug!("closing a connection: {}", refusal.text);
                serve::turn_away(conn.fd.as_fd(), refusal);
            }
            conn.closing = true;
            self.dirty.push(slot);
        }
    }

    /// Looks at `slot` again when the pool says a buffer came back (or after a fallback time).
    fn wait_for_pool(&mut self, slot: usize) {
        self.process.pool().want();
        self.starved.push(slot);
        self.retry.push((self.now + STARVED_FALLBACK, slot));
    }

    fn collect(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
    }

    /// Handles completions already in the queue (used when the rings are full).
    fn reap(&mut self) -> io::Result<()> {
        let mut cqes = Vec::new();
        self.collect(&mut cqes);
        for (data, result, flags) in cqes {
            self.complete(data, result, flags)?;
        }
        Ok(())
    }

    /// Submits what was pushed and waits for at least one completion (or the next timer).
    ///
    /// (Waiting for one completion more than the sends just pushed, with a minimum-wait timeout,
    /// would save the second `io_uring_enter` a ping-pong costs; measured on 6.18 it doubled the
    /// round trip instead: `docs/uring.md`.)
    fn wait(&mut self) -> io::Result<()> {
        if !self.options.spin.is_zero() && self.retry.is_empty() && self.poll_for_work()? {
            return Ok(());
        }
        let now = Instant::now();
        let timeout = self.retry.iter().map(|(at, _)| *at).min().map(|at| at.saturating_duration_since(now));
        let result = match timeout {
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                self.ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts))
            }
            None => self.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what was pushed and polls the ring for up to `options.spin`, yielding the CPU
    /// between looks; returns whether completions came (else the caller blocks as usual). Deferred
    /// task work (a receive whose data arrived) is flagged in the submission queue
    /// (`IORING_SQ_TASKRUN`) and run by entering the ring without waiting.
    fn poll_for_work(&mut self) -> io::Result<bool> {
        self.enter_without_waiting()?;
        let mut started: Option<Instant> = None;
        loop {
            if !self.ring.completion().is_empty() {
                return Ok(true);
            }
            if self.ring.submission().taskrun() {
                self.enter_without_waiting()?;
                continue;
            }
            let polled = started.get_or_insert_with(Instant::now).elapsed();
            if polled >= self.options.spin || self.shared.stop.load(Ordering::Acquire) {
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }

    /// Submits what was pushed and runs the ring's deferred task work, without waiting.
    fn enter_without_waiting(&mut self) -> io::Result<()> {
        match self.submit_and_wait(0) {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Submits what was pushed and waits for `want` completions, naming the ring by its
    /// registered index where it has one.
    fn submit_and_wait(&mut self, want: u32) -> io::Result<usize> {
        match &self.registered {
            Some(registered) => registered.submit_and_wait(&mut self.ring, want),
            None => self.ring.submit_and_wait(want as usize),
        }
    }

    fn arm_listeners(&mut self) -> io::Result<()> {
        let paused = self.accept_paused_until.is_some_and(|until| Instant::now() < until);
        if !self.accept_armed && !paused {
            let entry = opcode::AcceptMulti::new(Fd(self.listener.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(user_data(NO_CONN, OP_ACCEPT));
            // SAFETY: a multishot accept points to no memory of ours.
            unsafe { self.push(&entry)? };
            self.accept_armed = true;
        }
        if !self.wake_armed {
            let buf: *mut u64 = &mut *self.wake_buf;
            let entry = opcode::Read::new(Fd(self.shared.eventfd.as_raw_fd()), buf.cast(), 8)
                .build()
                .user_data(user_data(NO_CONN, OP_WAKE));
            // SAFETY: `wake_buf` is boxed and lives as long as the loop, which reaps this read
            // (or cancels it and waits) before it drops.
            unsafe { self.push(&entry)? };
            self.wake_armed = true;
        }
        if !self.sweep_armed {
            let buf: *mut u64 = &mut *self.sweep_buf;
            let entry = opcode::Read::new(Fd(self.sweep_timer.as_raw_fd()), buf.cast(), 8)
                .build()
                .user_data(user_data(NO_CONN, OP_SWEEP));
            // SAFETY: `sweep_buf` is boxed and lives as long as the loop, which reaps this read
            // (or cancels it and waits) before it drops.
            unsafe { self.push(&entry)? };
            self.sweep_armed = true;
        }
        Ok(())
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32) -> io::Result<()> {
        let (slot, op) = split_user_data(data);
        match op {
            OP_ACCEPT => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                if result >= 0 {
                    // SAFETY: the kernel just created this descriptor for us.
                    let fd = unsafe { OwnedFd::from_raw_fd(result) };
                    let source = peer_addr(&fd).map_or(std::net::IpAddr::from([0u8; 4]), |a| a.ip());
                    let admitted = match self.process.connections().admit(self.process.id(), source) {
                        Ok(admitted) => admitted,
                        Err(refusal) => {
                            tracing::debug!(%source, "{}", refusal.text);
                            serve::turn_away(fd.as_fd(), refusal);
                            return Ok(());
                        }
                    };
                    if let Err(e) = self.add(fd, admitted) {
                        tracing::warn!("cannot serve a new connection: {e}");
                    }
                } else if result != -libc::ECANCELED {
                    // The pending connection stays queued in the kernel: try again in 10 ms
                    // rather than spin on, say, EMFILE.
                    tracing::warn!("accept failed: {}", io::Error::from_raw_os_error(-result));
                    let until = Instant::now() + Duration::from_millis(10);
                    self.accept_paused_until = Some(until);
                    self.retry.push((until, NO_CONN));
                }
            }
            OP_WAKE => {
                self.wake_armed = false;
                self.shared.notified.store(false, Ordering::Release);
            }
            OP_SWEEP => {
                self.sweep_armed = false;
                if result > 0 {
                    self.sweep();
                }
            }
            _ => self.complete_conn(slot, op, result, flags),
        }
        Ok(())
    }

    fn add(&mut self, fd: OwnedFd, admitted: Admitted) -> io::Result<()> {
        let one: libc::c_int = 1;
        // The size of an int: fits any socklen_t.
        #[allow(clippy::cast_possible_truncation)]
        let one_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: setsockopt reads an int from a live local.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                one_len,
            )
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.conns.len() < u16::MAX as usize => {
                self.conns.push(None);
                self.generations.push(0);
                self.conns.len() - 1
            }
            None => return Err(io::Error::other("too many connections on one I/O thread")),
        };
        let generation = self.generations[slot];
        let loopback = is_loopback_peer(&fd);
        let key = ((slot as u64) << 32) | generation as u64;
        let sink: Arc<dyn ResponseSink> = Arc::new(ConnSink { key, shared: Arc::clone(&self.shared) });
        // SAFETY: an all-zero msghdr and iovecs are valid values (null pointers, zero lengths).
        let send: Box<SendState> = Box::new(unsafe { std::mem::zeroed() });
        self.conns[slot] = Some(Conn {
            fd,
            generation,
            sink,
            bufs: None,
            spare: Vec::new(),
            backlog: VecDeque::new(),
            partial: Partial::default(),
            state: ReadState::Open,
            receiving: Receiving::default(),
            outstanding: 0,
            queue: VecDeque::new(),
            spare_frames: Vec::new(),
            queued_bytes: 0,
            send,
            sending: false,
            zc_notifs: 0,
            zc_hold: Vec::new(),
            shutdown_after_flush: false,
            loopback,
            in_flight: 0,
            closing: false,
            cancel_all_sent: false,
            starved: false,
            peer: PeerSession::default(),
            limits: self.options.connection,
            _admitted: admitted,
            activity: Activity::new(self.now),
            proven: false,
            polling: false,
        });
        self.dirty.push(slot);
        Ok(())
    }

    fn complete_conn(&mut self, slot: usize, op: u8, result: i32, flags: u32) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            tracing::error!(slot, op, "completion for a connection that is gone");
            return;
        };
        match op {
            OP_RECV => {
                if !cqueue::more(flags) {
                    conn.in_flight -= 1;
                    conn.receiving.multishot_ended();
                }
                if result > 0 {
                    let bid = cqueue::buffer_select(flags).expect("a receive with data names its buffer");
                    let bufs = conn.bufs.as_mut().expect("a multishot receive has a buffer ring");
                    let buf = bufs.take(bid, result as usize).expect("the kernel filled a provided buffer");
                    conn.activity.received(self.now);
                    if !conn.closing {
                        conn.backlog.push_back((buf, 0));
                    }
                } else if result == 0 {
                    peer_closed(conn);
                } else if result == -libc::ENOBUFS {
                    // Every provided buffer is in use (back-pressure, or the pool is spent).
                } else if result != -libc::ECANCELED {
                    fail(conn, result);
                }
            }
            OP_RECV_LARGE => {
                conn.in_flight -= 1;
                conn.receiving.large_done();
                if result > 0 {
                    conn.partial.large_received(result as usize);
                    conn.activity.received(self.now);
                } else if result == 0 {
                    peer_closed(conn);
                } else if result != -libc::ECANCELED {
                    fail(conn, result);
                }
            }
            OP_SEND => self.send_done(slot, result, flags),
            OP_SEND_HEAD => {
                // The payload's send follows (or is cancelled if this one came back short).
                conn.in_flight -= 1;
                if result < 0 {
                    if result != -libc::ECANCELED {
                        fail(conn, result);
                    }
                } else {
                    advance_queue(conn, result as usize);
                }
            }
            OP_CANCEL => {
                conn.in_flight -= 1;
                conn.receiving.cancel_done();
            }
            OP_CANCEL_ALL => conn.in_flight -= 1,
            OP_POLL => {
                conn.in_flight -= 1;
                conn.polling = false;
                if result >= 0 && !conn.closing {
                    let pool = self.process.pool();
                    let read = if conn.partial.large_waiting() {
                        read_large_small(conn, pool, self.now)
                    } else {
                        read_small(conn, pool, self.now)
                    };
                    if !read {
                        self.wait_for_pool(slot);
                    }
                } else if result != -libc::ECANCELED {
                    fail(conn, result);
                }
            }
            _ => tracing::error!(op, "completion of an unknown operation"),
        }
        self.dirty.push(slot);
    }

    fn send_done(&mut self, slot: usize, result: i32, flags: u32) {
        let conn = self.conns[slot].as_mut().expect("checked by the caller");
        if cqueue::notif(flags) {
            // The kernel no longer reads the buffers of a zero-copy send.
            conn.zc_notifs -= 1;
            conn.in_flight -= 1;
            if conn.zc_notifs == 0 {
                conn.zc_hold.clear();
            }
            return;
        }
        conn.sending = false;
        if cqueue::more(flags) {
            conn.zc_notifs += 1;
        } else {
            conn.in_flight -= 1;
        }
        if result < 0 {
            if result != -libc::ECANCELED {
                fail(conn, result);
            }
            return;
        }
        advance_queue(conn, result as usize);
    }

    /// Takes the responses workers produced and queues them on their connections.
    fn drain_responses(&mut self) {
        while let Some((key, response)) = self.shared.responses.pop() {
            let (slot, generation) = ((key >> 32) as usize, (key & 0xffff_ffff) as u32);
            match self.conns.get_mut(slot).and_then(Option::as_mut) {
                Some(conn) if conn.generation == generation => {
                    conn.outstanding -= 1;
                    if !conn.closing {
                        conn.push_frame(OutFrame::from_response(response, self.process.config().max_frame));
                    }
                    self.dirty.push(slot);
                }
                // The connection closed meanwhile: the response has no reader.
                _ => {}
            }
        }
    }

    fn retry_due(&mut self) {
        if self.retry.is_empty() {
            return;
        }
        let now = Instant::now();
        let retry = &mut self.retry;
        let dirty = &mut self.dirty;
        retry.retain(|&(at, slot)| {
            if at <= now {
                dirty.push(slot);
            }
            at > now
        });
    }

    /// Moves every connection touched by this batch forward: decodes, dispatches, arms receives,
    /// pushes sends; all entries of the batch go to the kernel in the next single `enter`.
    fn pump_dirty(&mut self) -> io::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        self.direct_send = dirty.len() == 1;
        for &slot in &dirty {
            self.pump(slot)?;
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        Ok(())
    }

    fn pump(&mut self, slot: usize) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return Ok(()) };
        if !conn.closing {
            let intake = Intake {
                pool: self.process.pool(),
                limits: FrameLimits { max_frame: self.process.config().max_frame },
                buffer_size: self.options.recv_buffer_size,
                proven: conn.proven,
            };
            recv::decode_backlog(
                &mut Serving { conn, process: &self.process, buffer_size: self.options.recv_buffer_size },
                intake,
            );
            conn.activity.frame(self.now, conn.partial.mid_frame());
            if conn.finished() {
                conn.closing = true;
            }
        }
        if conn.closing {
            return self.close(slot);
        }
        // Sends: everything queued goes out in one operation.
        if !conn.sending && !conn.queue.is_empty() {
            self.push_send(slot)?;
        }
        let conn = self.conns[slot].as_mut().expect("still open");
        if conn.shutdown_after_flush && conn.queue.is_empty() && !conn.sending {
            conn.shutdown_after_flush = false;
            // SAFETY: plain syscall on a descriptor we own.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_WR) };
        }
        // Receives.
        let blocked_by_peer = conn.blocked_by_peer();
        let blocked = blocked_by_peer || !conn.backlog.is_empty();
        if let ReadState::Lingering(until) = conn.state {
            self.retry.push((until, slot));
        }
        let paused_on_pool = !blocked_by_peer && !conn.backlog.is_empty();
        if conn.state == ReadState::Draining || blocked {
            if paused_on_pool {
                self.wait_for_pool(slot);
            }
            return Ok(());
        }
        if conn.partial.large_waiting() && conn.proven && !conn.polling {
            let step = conn.receiving.next(true);
            match step {
                RecvStep::Cancel => {
                    // The rest of a large frame goes straight into its own buffer: stop the
                    // multishot receive first, so bytes cannot land in two places.
                    let entry = opcode::AsyncCancel::new(user_data(slot, OP_RECV))
                        .build()
                        .user_data(user_data(slot, OP_CANCEL));
                    conn.receiving.submitted(step);
                    conn.in_flight += 1;
                    // SAFETY: a cancel points to no memory.
                    unsafe { self.push(&entry)? };
                }
                RecvStep::Large => {
                    // The frame's buffer grows with its bytes: a full one waits for the pool.
                    let Some(room) = conn.partial.large_room(self.process.pool()) else {
                        self.wait_for_pool(slot);
                        return Ok(());
                    };
                    // A receive may take less than the room (past 4 GiB only): the next takes the rest.
                    let want = u32::try_from(room.len()).unwrap_or(u32::MAX);
                    let entry = opcode::Recv::new(Fd(conn.fd.as_raw_fd()), room.as_mut_ptr(), want)
                        .flags(libc::MSG_WAITALL)
                        .build()
                        .user_data(user_data(slot, OP_RECV_LARGE));
                    conn.receiving.submitted(step);
                    conn.in_flight += 1;
                    // SAFETY: the large frame's buffer stays in the connection (it is neither taken
                    // nor dropped while the direct receive is in flight) until this receive completes.
                    unsafe { self.push(&entry)? };
                }
                RecvStep::Multishot | RecvStep::Wait => {}
            }
            return Ok(());
        }
        if !conn.proven || conn.polling {
            // Not proven yet (or its last poll still in flight): no buffer ring, a one-shot poll.
            if !conn.polling && !conn.proven {
                let entry = opcode::PollAdd::new(Fd(conn.fd.as_raw_fd()), (libc::POLLIN | libc::POLLRDHUP) as u32)
                    .build()
                    .user_data(user_data(slot, OP_POLL));
                conn.polling = true;
                conn.in_flight += 1;
                // SAFETY: a poll points to no memory.
                unsafe { self.push(&entry)? };
            }
            return Ok(());
        }
        if conn.bufs.is_none() {
            // Proven: its buffer ring, registered as the buffer group of its slot (below u16::MAX).
            let mut bufs = BufRing::new(self.options.recv_buffers)?;
            let bgid = u16::try_from(slot).map_err(io::Error::other)?;
            if let Err(e) = bufs.register(&self.ring, bgid) {
                tracing::warn!("cannot register a connection's buffer ring: {e}");
                conn.closing = true;
                self.dirty.push(slot);
                return Ok(());
            }
            conn.bufs = Some(bufs);
        }
        let bufs = conn.bufs.as_mut().expect("made above");
        // Refill the buffer ring from spares, then the pool.
        while let Some(bid) = bufs.empty_slot() {
            let buf = match conn.spare.pop() {
                Some(buf) => buf,
                None => match self.process.pool().get(self.options.recv_buffer_size) {
                    Some(buf) => Arc::new(buf),
                    None => break,
                },
            };
            bufs.provide(bid, buf);
        }
        conn.starved = bufs.provided() == 0;
        if conn.starved {
            self.wait_for_pool(slot);
            return Ok(());
        }
        if let step @ RecvStep::Multishot = conn.receiving.next(false) {
            // The connection's buffer group, its slot (below u16::MAX): never fails.
            let bgid = u16::try_from(slot).map_err(io::Error::other)?;
            let entry =
                opcode::RecvMulti::new(Fd(conn.fd.as_raw_fd()), bgid).build().user_data(user_data(slot, OP_RECV));
            conn.receiving.submitted(step);
            conn.in_flight += 1;
            // SAFETY: the receive writes only into buffers provided through the connection's
            // buffer ring, which stays registered until the connection's last operation completed.
            unsafe { self.push(&entry)? };
        }
        Ok(())
    }

    fn push_send(&mut self, slot: usize) -> io::Result<()> {
        if self.push_fixed_send(slot)? {
            return Ok(());
        }
        let conn = self.conns[slot].as_mut().expect("caller checked");
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        if self.direct_send && conn.zc_notifs == 0 {
            // A small queue leaves as one plain send of one buffer, copied straight from its frames.
            let mut flat = FlatBuf::new();
            if let Some(small) = flatten_frames(conn.queue.iter().map(|frame| &**frame), &mut flat) {
                self.direct_send = false;
                // SAFETY: `small` is initialised memory for the duration of the call.
                let sent = unsafe { libc::send(conn.fd.as_raw_fd(), small.as_ptr().cast(), small.len(), flags) };
                if sent_directly(conn, sent) {
                    return if conn.queue.is_empty() { Ok(()) } else { self.push_send(slot) };
                }
            }
        }
        let state = &mut *conn.send;
        let gathered = Gathered::of(conn.queue.iter().map(|frame| &**frame));
        let bytes = gathered.bytes();
        for (i, slice) in gathered.slices().iter().enumerate() {
            state.iov[i] = libc::iovec { iov_base: slice.as_ptr() as *mut libc::c_void, iov_len: slice.len() };
        }
        state.msg.msg_iov = state.iov.as_mut_ptr();
        state.msg.msg_iovlen = gathered.slices().len() as _;
        let fd = Fd(conn.fd.as_raw_fd());
        let zero_copy = (!conn.loopback || self.options.zero_copy_on_loopback)
            && self.options.zero_copy_threshold.is_some_and(|t| bytes >= t);
        if self.direct_send && !zero_copy && conn.zc_notifs == 0 {
            self.direct_send = false;
            // SAFETY: the msghdr points to iovecs of live queued frames; the call returns before
            // anything here changes.
            let sent = unsafe { libc::sendmsg(conn.fd.as_raw_fd(), &state.msg, flags) };
            if sent_directly(conn, sent) {
                return if conn.queue.is_empty() { Ok(()) } else { self.push_send(slot) };
            }
        }
        let msg = &conn.send.msg;
        let entry = if zero_copy {
            opcode::SendMsgZc::new(fd, msg).flags(libc::MSG_NOSIGNAL as u32).build()
        } else {
            // MSG_WAITALL: the kernel itself finishes a send the socket takes in parts (one
            // completion instead of one per part); it comes back short only on an error.
            opcode::SendMsg::new(fd, msg).flags(send_flags()).build()
        }
        .user_data(user_data(slot, OP_SEND));
        conn.sending = true;
        conn.in_flight += 1;
        // SAFETY: the msghdr and iovecs are boxed in the connection; the iovecs point into boxed
        // frames of its queue (a frame leaves the queue only when this send's completion says it
        // was sent, and then waits in `zc_hold` while zero-copy notifications are due); the
        // connection outlives every operation in flight.
        unsafe { self.push(&entry) }
    }

    /// Sends the first queued frame as a header `SENDMSG` linked to a zero-copy `SEND_ZC` of its
    /// output from a registered buffer, when it is a large output for a zero-copy peer that
    /// nothing of has left yet; returns whether it did. (The two cannot be one operation:
    /// `SENDMSG_ZC` takes no buffer index.) A short header send cancels the payload's; what is
    /// left then goes by the ordinary path.
    fn push_fixed_send(&mut self, slot: usize) -> io::Result<bool> {
        let Self { conns, fixed, ring, options, .. } = self;
        let conn = conns[slot].as_mut().expect("caller checked");
        let Some(threshold) = options.zero_copy_threshold else { return Ok(false) };
        if (conn.loopback && !options.zero_copy_on_loopback) || conn.zc_notifs > 0 {
            return Ok(false);
        }
        let Some((head, payload)) = conn.queue.front().and_then(|f| f.unsent_parts()) else { return Ok(false) };
        if payload.len() < threshold {
            return Ok(false);
        }
        // Past 4 GiB (which no registered buffer holds): the ordinary path.
        let Ok(payload_len) = u32::try_from(payload.len()) else { return Ok(false) };
        let Some(index) = fixed.index(ring, payload) else { return Ok(false) };
        let state = &mut *conn.send;
        for (i, part) in head.iter().enumerate() {
            state.iov[i] = libc::iovec { iov_base: part.as_ptr() as *mut libc::c_void, iov_len: part.len() };
        }
        state.msg.msg_iov = state.iov.as_mut_ptr();
        state.msg.msg_iovlen = 2;
        let fd = Fd(conn.fd.as_raw_fd());
        let entries = [
            opcode::SendMsg::new(fd, &state.msg)
                .flags(send_flags())
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(user_data(slot, OP_SEND_HEAD)),
            opcode::SendZc::new(fd, payload.as_ptr(), payload_len)
                .buf_index(Some(index))
                .flags(send_flags() as i32)
                .build()
                .user_data(user_data(slot, OP_SEND)),
        ];
        conn.sending = true;
        conn.in_flight += 2;
        self.shared.stats.fixed_sends.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the msghdr and iovecs are boxed in the connection and point into the first
        // queued frame, as does the payload send; the frame leaves the queue only when these
        // sends' completions say it was sent, and then waits in `zc_hold` while the payload
        // send's notification is due; `index` is the registration of this payload's memory
        // (found by its id), which the frame keeps alive.
        unsafe { self.push_all(&entries)? };
        Ok(true)
    }

    /// Closes a connection: cancels what is in flight, and frees it when nothing is.
    fn close(&mut self, slot: usize) -> io::Result<()> {
        let conn = self.conns[slot].as_mut().expect("caller checked");
        conn.closing = true;
        if conn.in_flight > 0 {
            if !conn.cancel_all_sent {
                conn.cancel_all_sent = true;
                conn.in_flight += 1;
                let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(conn.fd.as_raw_fd())).all())
                    .build()
                    .user_data(user_data(slot, OP_CANCEL_ALL));
                // SAFETY: a cancel points to no memory.
                unsafe { self.push(&entry)? };
            }
            return Ok(());
        }
        let mut conn = self.conns[slot].take().expect("caller checked");
        if let Some(bufs) = conn.bufs.as_mut() {
            bufs.unregister(&self.ring);
        }
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.free.push(slot);
        drop(conn);
        Ok(())
    }

    /// Stops: closes every connection and waits (boundedly) for their operations to end.
    fn shutdown(&mut self) -> io::Result<()> {
        let result = self.cancel_and_reap();
        if let Some(registered) = self.registered.take() {
            registered.unregister(&self.ring);
        }
        if result.is_err() {
            // Operations may still be in flight: leak what they point to rather than free it.
            self.leak();
        }
        result
    }

    /// Forgets every connection and the wake-up and sweep buffers (their memory stays allocated).
    fn leak(&mut self) {
        for conn in self.conns.iter_mut().filter_map(Option::take) {
            std::mem::forget(conn);
        }
        if self.wake_armed {
            std::mem::forget(std::mem::take(&mut self.wake_buf));
        }
        if self.sweep_armed {
            std::mem::forget(std::mem::take(&mut self.sweep_buf));
        }
    }

    fn cancel_and_reap(&mut self) -> io::Result<()> {
        for slot in 0..self.conns.len() {
            if let Some(conn) = self.conns[slot].as_mut() {
                conn.closing = true;
                self.close(slot)?;
            }
        }
        let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(self.listener.as_raw_fd())).all())
            .build()
            .user_data(user_data(NO_CONN, OP_CANCEL));
        // SAFETY: a cancel points to no memory.
        unsafe { self.push(&entry)? };
        if self.wake_armed {
            let entry =
                opcode::AsyncCancel::new(user_data(NO_CONN, OP_WAKE)).build().user_data(user_data(NO_CONN, OP_CANCEL));
            // SAFETY: a cancel points to no memory.
            unsafe { self.push(&entry)? };
        }
        if self.sweep_armed {
            let entry =
                opcode::AsyncCancel::new(user_data(NO_CONN, OP_SWEEP)).build().user_data(user_data(NO_CONN, OP_CANCEL));
            // SAFETY: a cancel points to no memory.
            unsafe { self.push(&entry)? };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut cqes = Vec::new();
        while self.conns.iter().any(Option::is_some) || self.accept_armed || self.wake_armed || self.sweep_armed {
            if Instant::now() > deadline {
                tracing::warn!("operations still in flight at shutdown: leaking their connections");
                self.leak();
                break;
            }
            self.retry = vec![(Instant::now() + Duration::from_millis(10), NO_CONN)];
            self.wait()?;
            self.collect(&mut cqes);
            for (data, result, flags) in cqes.drain(..) {
                let (slot, op) = split_user_data(data);
                if slot == NO_CONN {
                    if op == OP_ACCEPT && !cqueue::more(flags) {
                        self.accept_armed = false;
                    }
                    if op == OP_WAKE {
                        self.wake_armed = false;
                    }
                    if op == OP_SWEEP {
                        self.sweep_armed = false;
                    }
                    continue;
                }
                self.complete_conn(slot, op, result, flags);
            }
            for slot in std::mem::take(&mut self.dirty) {
                if self.conns.get(slot).is_some_and(Option::is_some) {
                    self.close(slot)?;
                }
            }
        }
        Ok(())
    }
}

/// Records `n` more bytes of the connection's queue sent; frames sent whole leave the queue (and
/// wait in `zc_hold` while zero-copy notifications are due).
fn advance_queue(conn: &mut Conn, mut n: usize) {
    while let Some(front) = conn.queue.front_mut() {
        n = front.advance(n);
        if !front.is_empty() {
            break;
        }
        let mut frame = conn.queue.pop_front().expect("front exists");
        conn.queued_bytes -= frame.len();
        if conn.zc_notifs > 0 {
            conn.zc_hold.push(frame);
        } else if conn.spare_frames.len() < SPARE_FRAMES {
            frame.release();
            conn.spare_frames.push(frame);
        }
    }
}

/// Accounts a plain send's result `sent`: whether it is settled (bytes went out, or the
/// connection failed); `false` when the socket was full and the queue must go through the ring.
fn sent_directly(conn: &mut Conn, sent: isize) -> bool {
    if sent >= 0 {
        advance_queue(conn, sent as usize);
        return true;
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock || err.kind() == io::ErrorKind::Interrupted {
        return false;
    }
    fail(conn, -err.raw_os_error().unwrap_or(libc::EIO));
    true
}

/// Receives what a connection without a buffer ring has (its poll said it is readable) into one
/// small pool buffer; false if the pool has none now.
fn read_small(conn: &mut Conn, pool: &praas_runtime::buffer::BufferPool, now: Instant) -> bool {
    let Some(mut buf) = pool.get(MIN_BUF) else { return false };
    let room = buf.spare_mut();
    // SAFETY: receives into the buffer's spare memory, of the given length, which lives for the
    // call; MSG_DONTWAIT: never blocks.
    let n = unsafe { libc::recv(conn.fd.as_raw_fd(), room.as_mut_ptr().cast(), room.len(), libc::MSG_DONTWAIT) };
    if n > 0 {
        buf.set_len(n as usize);
        conn.activity.received(now);
        conn.backlog.push_back((Arc::new(buf), 0));
    } else if n == 0 {
        peer_closed(conn);
    } else {
        let err = io::Error::last_os_error();
        if !matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
            fail(conn, -err.raw_os_error().unwrap_or(libc::EIO));
        }
    }
    true
}

/// Receives what a connection without a buffer ring has of its large frame (its poll said it is
/// readable) straight into the frame's buffer, grown with the bytes; false if the pool has no
/// bigger buffer now.
fn read_large_small(conn: &mut Conn, pool: &praas_runtime::buffer::BufferPool, now: Instant) -> bool {
    let Some(room) = conn.partial.large_room(pool) else { return false };
    // SAFETY: receives into the frame buffer's room, of the given length, which lives for the
    // call; MSG_DONTWAIT: never blocks.
    let n = unsafe { libc::recv(conn.fd.as_raw_fd(), room.as_mut_ptr().cast(), room.len(), libc::MSG_DONTWAIT) };
    if n > 0 {
        conn.partial.large_received(n as usize);
        conn.activity.received(now);
    } else if n == 0 {
        peer_closed(conn);
    } else {
        let err = io::Error::last_os_error();
        if let Some(large) = conn.partial.large.as_mut() {
            large.release_unused(pool);
        }
        if !matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
            fail(conn, -err.raw_os_error().unwrap_or(libc::EIO));
        }
    }
    true
}

fn peer_closed(conn: &mut Conn) {
    // Draining also ends lingering: the error response goes out, then the connection closes.
    conn.state = ReadState::Draining;
    // A frame cut short by the close is dropped with its buffer.
    conn.partial.clear();
}

fn fail(conn: &mut Conn, result: i32) {
    tracing::debug!("connection failed: {}", io::Error::from_raw_os_error(-result));
    conn.closing = true;
}

/// A connection with the process it serves: how the [receive path](recv) and the
/// [policy](praas_runtime::serve) see it.
struct Serving<'a> {
    conn: &'a mut Conn,
    process: &'a Process,
    /// Bytes of the connection's receive buffers once proven.
    buffer_size: usize,
}

/// How an io_uring connection moves bytes for the policy: everything joins its send queue, which
/// goes out in one operation when the connection is pumped; a last frame also shuts the sending
/// side once the queue is flushed.
impl Link for Serving<'_> {
    #[inline]
    fn respond(&mut self, response: Response) {
        self.conn.push_frame(OutFrame::from_response(response, self.process.config().max_frame));
    }

    #[inline]
    fn reply(&mut self, frame: OutFrame) {
        self.conn.push_frame(frame);
    }

    fn reply_last(&mut self, frame: OutFrame, _: End) {
        self.conn.push_frame(frame);
        self.conn.shutdown_after_flush = true;
    }

    fn discard_input(&mut self) {
        self.conn.partial.clear();
    }

    #[inline]
    fn state(&mut self) -> &mut ReadState {
        &mut self.conn.state
    }

    fn linger(&self) -> Duration {
        self.conn.limits.linger
    }
}

impl Frames for Serving<'_> {
    #[inline]
    fn partial(&mut self) -> &mut Partial {
        &mut self.conn.partial
    }

    #[inline]
    fn backlog(&mut self) -> &mut VecDeque<(Arc<PoolBuf>, usize)> {
        &mut self.conn.backlog
    }

    #[inline]
    fn give_back(&mut self, mut done: Arc<PoolBuf>) {
        // Small buffers (before the connection proved itself) go back to the pool.
        if self.conn.proven && Arc::get_mut(&mut done).is_some_and(|b| b.capacity() >= self.buffer_size) {
            self.conn.spare.push(done);
        }
    }

    #[inline]
    fn blocked(&self) -> bool {
        self.conn.blocked_by_peer()
    }

    #[inline]
    fn dispatch(&mut self, header: Header, body: Payload) {
        let conn = &mut *self.conn;
        let (meta, input) = body.split_meta(header.meta_len as usize);
        let action = serve_frame(self.process, &mut conn.peer, &conn.sink, header, meta, input);
        if !conn.proven && !matches!(action, FrameAction::ReplyAndClose(_)) {
            conn.proven = serve::proven(self.process, &conn.peer);
        }
        match action {
            FrameAction::Queued => conn.outstanding += 1,
            action => serve::act(self, action),
        }
    }
}

fn send_flags() -> u32 {
    (libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32
}

/// The socket's peer address.
fn peer_addr(fd: &OwnedFd) -> Option<std::net::SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is a valid value (family AF_UNSPEC).
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // The size of a sockaddr_storage (128 bytes): fits any socklen_t.
    #[allow(clippy::cast_possible_truncation)]
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `fd` is a socket we own; getpeername writes at most `len` bytes into the live
    // sockaddr_storage `addr`, and updates `len`.
    let rc = unsafe { libc::getpeername(fd.as_raw_fd(), (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 = unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(std::net::SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 = unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(std::net::SocketAddr::from((ip, u16::from_be(v6.sin6_port))))
        }
        _ => None,
    }
}

/// Whether the socket's peer is a loopback address.
fn is_loopback_peer(fd: &OwnedFd) -> bool {
    peer_addr(fd).is_some_and(|addr| match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    })
}
