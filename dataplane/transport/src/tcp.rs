//! The TCP transport over mio: one I/O thread, edge-triggered readiness, `TCP_NODELAY`.
//!
//! Reads land in a per-connection chunk from the buffer pool; every complete frame in it reaches
//! the process as a [`Payload`] slice of that chunk. A frame larger than the chunk gets a buffer
//! of its own from the pool and the rest of it is read straight into that buffer, so a payload is
//! never copied by the runtime (at most the bytes that arrived with its header move once).
//!
//! Responses go out as header, error text and output buffer in one vectored write; inline
//! responses of one read are gathered into one write. Workers write their responses from their
//! own thread under the connection's write lock; what the socket does not take waits in the
//! connection's queue and is flushed on the next writable event.
//!
//! Memory: a connection holds no read chunk while it has nothing pending, and a small one (4 KiB)
//! until it has proven itself ([`serve::proven`]); a large frame's buffer grows with its bytes.
//! Connections are counted against the process's [`ConnectionLimits`](serve::ConnectionLimits)
//! (refused with an error frame beyond them) and closed past their idle or frame timeout.
//!
//! Back-pressure: a connection stops being read while it has too many invocations at the workers,
//! too many response bytes queued, or the buffer pool is spent; it resumes when that clears (the
//! pool tells the loop when a buffer comes back).
//! A connection that breaks the protocol gets an error response, then its input is discarded
//! until the peer closes or a grace period passes (so the peer can read the error), then it closes.
//!
//! Peer connections (authenticated as another process of the application) are also read by the
//! gets waiting in this process's mailbox ([`praas_runtime::waiter`], leader/follower): once a
//! connection proved a process identity, the loop adopts it into the [`Inbox`]: every waiter of
//! the mailbox watches it and the loop's own registration moves behind theirs, all exclusive, so
//! a frame wakes a waiting get when there is one, else this loop. A connection's read state is
//! behind a [`Turn`]: one thread reads it at a time, frames are never split between readers. A
//! get reads and serves `Message` frames only (storing them and sending their acknowledgements);
//! at anything else (another kind of frame, back-pressure, the peer closing, an error) it stops
//! and posts the connection to this loop, which carries on from where the get left it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;

use super::handle::{accept_waiting, ServerHandle, Transport};
use super::sweep::{Reads, SweepTimer};
use praas_runtime::buffer::{Payload, PoolBuf, MIN_BUF};
use praas_runtime::invocation::{Response, ResponseSink};
use praas_runtime::process::Process;
use praas_runtime::serve::{
    self, Activity, Admitted, ConnectionOptions, Delivery, End, Expiry, Link, ReadState, Refusal,
};
use praas_runtime::serve::{flatten_frames, FlatBuf, Gathered, LargeFrame, OutFrame};
use praas_runtime::serve::{serve_frame, FrameAction};
use praas_runtime::session::PeerSession;
use praas_runtime::waiter::{self, Inbound, Turn, Waiter};
use praas_wire::protocol::{decode_frame, Decoded, FrameError, FrameLimits, Header, MessageKind, HEADER_LEN};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const SWEEP: Token = Token(usize::MAX - 2);

/// Tuning of the TCP transport.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// Size of each connection's read chunk; larger frames get a buffer of their own.
    pub read_chunk: usize,
    /// Back-pressure, and the linger of a connection that broke the protocol.
    pub connection: ConnectionOptions,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self { read_chunk: 256 << 10, connection: ConnectionOptions::default() }
    }
}

/// Wakes the I/O thread for a connection that asked for attention.
struct Notifier {
    tx: Sender<Token>,
    waker: Waker,
    /// A buffer came back to the pool that connections wait on.
    pool_freed: AtomicBool,
}

impl Notifier {
    fn post(&self, token: Token) {
        if self.tx.send(token).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

#[derive(Default)]
struct WriteQueue {
    frames: VecDeque<OutFrame>,
    bytes: usize,
    failed: bool,
}

impl WriteQueue {
    fn push(&mut self, frame: OutFrame) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Writes as much as the socket takes; an error marks the queue failed.
    fn flush(&mut self, stream: &TcpStream) {
        while !self.frames.is_empty() && !self.failed {
            let mut flat = FlatBuf::new();
            let written = match flatten_frames(&self.frames, &mut flat) {
                Some(bytes) => (&*stream).write(bytes),
                None => (&*stream).write_vectored(Gathered::of(&self.frames).slices()),
            };
            match written {
                Ok(0) => self.failed = true,
                Ok(mut n) => {
                    while n > 0 || self.frames.front().is_some_and(OutFrame::is_empty) {
                        let Some(frame) = self.frames.front_mut() else { break };
                        n = frame.advance(n);
                        if frame.is_empty() {
                            self.bytes -= frame.len();
                            self.frames.pop_front();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.failed = true,
            }
        }
    }
}

/// The half of a connection that workers use to answer.
struct Shared {
    stream: TcpStream,
    token: Token,
    out: Mutex<WriteQueue>,
    /// Invocations at the workers, not yet answered.
    outstanding: AtomicUsize,
    /// Set by the I/O thread while it waits for progress on this connection (paused, draining).
    attention: AtomicBool,
    closed: AtomicBool,
    notifier: Arc<Notifier>,
    /// The process's frame limit.
    max_frame: usize,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, WriteQueue> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ResponseSink for Shared {
    fn send(&self, response: Response) {
        if !self.closed.load(Ordering::Acquire) {
            let mut queue = self.queue();
            queue.push(OutFrame::from_response(response, self.max_frame));
            queue.flush(&self.stream);
        }
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        if self.attention.load(Ordering::Acquire) {
            self.notifier.post(self.token);
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    sink: Arc<dyn ResponseSink>,
    chunk: Arc<PoolBuf>,
    /// Start of the bytes in `chunk` not yet decoded.
    start: usize,
    large: Option<LargeFrame>,
    state: ReadState,
    /// Reading stopped for back-pressure.
    paused: bool,
    /// The peer has hung up (or the socket failed): read until end of stream.
    hup: bool,
    /// The peer-process handshake and identity of this connection (`Hello`, `Message` frames).
    peer: PeerSession,
    /// How long to keep reading (and discarding) after refusing the connection.
    linger: Duration,
    /// Counted against the process's connection limits while it lives.
    _admitted: Admitted,
    /// What the idle and frame timeouts look at.
    activity: Activity,
    /// It has proven itself ([`serve::proven`]): full-size read chunks from now on.
    proven: bool,
    /// The bytes of a header cut short, kept here instead of in a chunk while the connection
    /// has not proven itself (its first `.1` bytes).
    stash: ([u8; HEADER_LEN], usize),
    /// Adopted into the [`Inbox`]: waiting gets read it too.
    adopted: bool,
    /// A get's read failed: this loop closes it.
    broken: bool,
}

/// Who reads a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// The I/O thread: everything.
    Io,
    /// A get waiting in the mailbox: `Message` frames only.
    Get,
}

/// One connection of the loop, shared with the gets that read it once adopted.
struct Slot {
    turn: Turn<Connection>,
    token: Token,
    fd: RawFd,
}

/// What the loop does with a connection after reading it.
enum After {
    Keep,
    Remove,
    /// Look again then (lingering).
    Retry(Instant),
    /// Paused on the buffer pool.
    Starved,
    /// It proved a process identity: adopt it into the inbox.
    Adopt,
}

/// The peer connections of one transport that waiting gets read ([`Inbound`]).
struct Inbox {
    process: Weak<Process>,
    options: TcpOptions,
    notifier: Arc<Notifier>,
    /// The loop's epoll instance (its registration of an adopted connection comes last).
    epoll: RawFd,
    conns: Mutex<FxHashMap<u64, Arc<Slot>>>,
}

/// The loop's own registration of an adopted connection: behind every waiter's, exclusive.
const LOOP_EXCLUSIVE: u32 = waiter::EXCLUSIVE_INPUT | libc::EPOLLOUT as u32;

impl Inbox {
    fn conns(&self) -> MutexGuard<'_, FxHashMap<u64, Arc<Slot>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the loop's registration of `slot` behind every other (removed and added again: an
    /// addition goes to the end of the socket's wait queue, and reports input already there).
    fn requeue(&self, slot: &Slot) -> io::Result<()> {
        let token = slot.token.0 as u64;
        waiter::epoll_ctl(self.epoll, libc::EPOLL_CTL_DEL, slot.fd, 0, token)?;
        waiter::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, slot.fd, LOOP_EXCLUSIVE, token)
    }

    /// Lets the waiting gets read `slot` (a peer connection that just proved its identity).
    fn adopt(&self, process: &Process, slot: &Arc<Slot>) -> io::Result<()> {
        let token = slot.token.0 as u64;
        process.mailbox().with_waiters(|waiters| {
            for waiter in waiters {
                waiter.watch(slot.fd, token)?;
            }
            self.requeue(slot)?;
            self.conns().insert(token, Arc::clone(slot));
            Ok(())
        })
    }

    /// Stops the waiting gets reading `slot` (it closes).
    fn forget(&self, process: &Process, slot: &Slot) {
        process.mailbox().with_waiters(|waiters| {
            if self.conns().remove(&(slot.token.0 as u64)).is_some() {
                for waiter in waiters {
                    waiter.unwatch(slot.fd);
                }
            }
        });
    }
}

impl Inbound for Inbox {
    fn enlist(&self, waiter: &Waiter) -> io::Result<()> {
        let conns = self.conns();
        for slot in conns.values() {
            waiter.watch(slot.fd, slot.token.0 as u64)?;
        }
        for slot in conns.values() {
            self.requeue(slot)?;
        }
        Ok(())
    }

    fn serve(&self, token: u64) {
        let Some(process) = self.process.upgrade() else { return };
        let Some(slot) = self.conns().get(&token).cloned() else { return };
        let mut handoff = false;
        slot.turn.take(|conn| handoff |= conn.serve_for_get(&process, &self.options));
        if handoff {
            self.notifier.post(slot.token);
        }
    }
}

enum Decode {
    /// At least one frame went to the process.
    Dispatched,
    /// No complete frame.
    Nothing,
    /// A large frame needs a buffer the pool cannot give now.
    PoolSpent,
    /// A frame a get does not serve is next: the I/O thread takes over.
    Yield,
}

enum Step {
    /// Keep going.
    More,
    /// Nothing more to do until the next event.
    Idle,
    /// Close the connection now.
    Close,
    /// A get stops here: the I/O thread takes over.
    Yield,
}

/// The TCP transport of one process.
pub struct TcpTransport {
    listener: TcpListener,
    process: Arc<Process>,
    options: TcpOptions,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport").field("addr", &self.listener.local_addr().ok()).finish()
    }
}

impl TcpTransport {
    /// Binds `addr` for `process`.
    pub fn bind(addr: SocketAddr, process: Arc<Process>, options: TcpOptions) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        super::handle::deepen_backlog(&listener)?;
        Ok(Self { listener, process, options })
    }
}

impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    fn spawn(self: Box<Self>) -> io::Result<ServerHandle> {
        let addr = self.local_addr();
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (tx, rx) = channel::unbounded();
        let notifier = Arc::new(Notifier { tx, waker, pool_freed: AtomicBool::new(false) });
        let weak = Arc::downgrade(&notifier);
        self.process.pool().on_release(Box::new(move || {
            let Some(notifier) = weak.upgrade() else { return false };
            notifier.pool_freed.store(true, Ordering::Release);
            let _ = notifier.waker.wake();
            true
        }));
        let sweep = SweepTimer::periodic(self.process.config().connection_limits.sweep_interval(), Reads::NonBlocking)?;
        poll.registry().register(&mut SourceFd(&sweep.as_raw_fd()), SWEEP, Interest::READABLE)?;
        let stop = Arc::new(AtomicBool::new(false));
        let inbox = Arc::new(Inbox {
            process: Arc::downgrade(&self.process),
            options: self.options.clone(),
            notifier: Arc::clone(&notifier),
            epoll: poll.as_raw_fd(),
            conns: Mutex::new(FxHashMap::default()),
        });
        let inbox = self.process.mailbox().set_inbound(Some(inbox.clone() as Arc<dyn Inbound>)).then_some(inbox);
        let mut event_loop = EventLoop {
            inbox,
            poll,
            listener: self.listener,
            process: self.process,
            options: self.options,
            notifier: Arc::clone(&notifier),
            notices: rx,
            stop: Arc::clone(&stop),
            connections: FxHashMap::default(),
            next_token: 0,
            retry: Vec::new(),
            starved: Vec::new(),
            sweep_timer: sweep,
            accept_retry: None,
            now: Instant::now(),
        };
        let thread = std::thread::Builder::new().name(format!("praas-tcp-{addr}")).spawn(move || event_loop.run())?;
        let stopper = move || {
            stop.store(true, Ordering::Release);
            let _ = notifier.waker.wake();
        };
        Ok(ServerHandle::new(addr, Box::new(stopper), thread))
    }
}

struct EventLoop {
    /// The peer connections waiting gets read (`None`: another transport of the process has
    /// the mailbox's waiters).
    inbox: Option<Arc<Inbox>>,
    poll: Poll,
    listener: TcpListener,
    process: Arc<Process>,
    options: TcpOptions,
    notifier: Arc<Notifier>,
    notices: Receiver<Token>,
    stop: Arc<AtomicBool>,
    connections: FxHashMap<Token, Arc<Slot>>,
    next_token: usize,
    /// Connections to look at again at a time: lingering ones, and (as a fallback) those paused
    /// on the pool.
    retry: Vec<(Instant, Token)>,
    /// Connections paused on the buffer pool: driven again when it says a buffer came back.
    starved: Vec<Token>,
    /// Ticks when to look for connections past their timeouts (the loop's waits have no timeout
    /// of their own but for the rare retries).
    sweep_timer: SweepTimer,
    /// When to accept again after an accept failed (out of descriptors).
    accept_retry: Option<Instant>,
    /// When the last poll returned: the one clock reading per turn of the loop that the
    /// timeouts and activity stamps use (they count in seconds; a turn takes microseconds).
    now: Instant,
}

/// How long a connection paused on the pool waits at most for the pool's word.
const STARVED_FALLBACK: Duration = Duration::from_millis(100);

impl EventLoop {
    fn run(&mut self) -> io::Result<()> {
        let served = self.serve();
        if self.inbox.is_some() {
            self.process.mailbox().set_inbound(None);
        }
        for (_, slot) in std::mem::take(&mut self.connections) {
            self.close(&slot);
        }
        served
    }

    fn serve(&mut self) -> io::Result<()> {
        self.poll.registry().register(&mut self.listener, LISTENER, Interest::READABLE)?;
        let mut events = Events::with_capacity(1024);
        while !self.stop.load(Ordering::Acquire) {
            let now = self.now;
            let timeout = self
                .retry
                .iter()
                .map(|(at, _)| *at)
                .chain(self.accept_retry)
                .min()
                .map(|at| at.saturating_duration_since(now));
            let polled = self.poll.poll(&mut events, timeout);
            self.now = Instant::now();
            if let Err(e) = polled {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    SWEEP => {
                        if self.sweep_timer.take() > 0 {
                            self.sweep();
                        }
                    }
                    token => {
                        let Some(slot) = self.connections.get(&token).cloned() else { continue };
                        // The peer's FIN may come in the same event as its last bytes: then a
                        // short read does not mean "wait for the next event" (there is none).
                        let hup = event.is_read_closed() || event.is_error();
                        let writable = event.is_writable() || event.is_error();
                        let readable = event.is_readable() || hup;
                        let (process, options, now) = (&self.process, &self.options, self.now);
                        let after = slot.turn.take(|conn| {
                            conn.hup |= hup;
                            if writable {
                                conn.shared.queue().flush(&conn.shared.stream);
                            }
                            // A paused connection may resume once its queued responses went out.
                            if readable || conn.paused {
                                conn.drive(process, options, now)
                            } else if conn.finished() {
                                After::Remove
                            } else {
                                After::Keep
                            }
                        });
                        // `None`: a get reads it now, and posts it here if it needs this loop.
                        if let Some(after) = after {
                            self.after(&slot, after);
                        }
                    }
                }
            }
            while let Ok(token) = self.notices.try_recv() {
                self.drive(token);
            }
            if self.notifier.pool_freed.load(Ordering::Relaxed)
                && self.notifier.pool_freed.swap(false, Ordering::AcqRel)
            {
                for token in std::mem::take(&mut self.starved) {
                    self.drive(token);
                }
            }
            self.retry_due();
            if self.accept_retry.is_some_and(|at| self.now >= at) {
                self.accept();
            }
        }
        Ok(())
    }

    fn accept(&mut self) {
        let (accepted, failed) = accept_waiting(&self.listener);
        self.accept_retry = failed.then(|| Instant::now() + super::handle::ACCEPT_RETRY);
        for (stream, peer) in accepted {
            let admitted = match self.process.connections().admit(self.process.id(), peer.ip()) {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    tracing::debug!(%peer, "{}", refusal.text);
                    serve::turn_away(stream.as_fd(), refusal);
                    continue;
                }
            };
            if let Err(e) = self.add(stream, admitted) {
                tracing::warn!(%peer, "cannot serve a new connection: {e}");
            }
        }
    }

    fn add(&mut self, stream: TcpStream, admitted: Admitted) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let token = Token(self.next_token);
        self.next_token = (self.next_token + 1) % (usize::MAX - 3);
        let fd = stream.as_raw_fd();
        self.poll.registry().register(&mut SourceFd(&fd), token, Interest::READABLE | Interest::WRITABLE)?;
        // No memory until the peer sends something.
        let chunk = self.process.pool().empty();
        let shared = Arc::new(Shared {
            stream,
            token,
            out: Mutex::new(WriteQueue::default()),
            outstanding: AtomicUsize::new(0),
            attention: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            notifier: Arc::clone(&self.notifier),
            max_frame: self.process.config().max_frame,
        });
        let sink: Arc<dyn ResponseSink> = shared.clone();
        let conn = Connection {
            shared,
            sink,
            chunk: Arc::new(chunk),
            start: 0,
            large: None,
            state: ReadState::Open,
            paused: false,
            hup: false,
            peer: PeerSession::default(),
            linger: self.options.connection.linger,
            _admitted: admitted,
            activity: Activity::new(Instant::now()),
            proven: false,
            stash: ([0; HEADER_LEN], 0),
            adopted: false,
            broken: false,
        };
        self.connections.insert(token, Arc::new(Slot { turn: Turn::new(conn), token, fd }));
        Ok(())
    }

    fn retry_due(&mut self) {
        if self.retry.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.retry.drain(..).partition(|(at, _)| *at <= now);
        self.retry = later;
        for (_, token) in due {
            self.drive(token);
        }
    }

    /// Closes the connections past their idle or frame timeout.
    fn sweep(&mut self) {
        let now = self.now;
        let limits = self.process.config().connection_limits;
        let mut unread = Vec::new();
        let expired: Vec<(Token, Expiry)> = self
            .connections
            .iter()
            .filter_map(|(token, slot)| {
                let conn = slot.turn.lock();
                if conn.state != ReadState::Open {
                    return None;
                }
                if conn.adopted && conn.unread() {
                    unread.push(*token);
                }
                conn.activity.expired(now, &limits, conn.busy()).map(|e| (*token, e))
            })
            .collect();
        for token in unread {
            self.drive(token);
        }
        for (token, expiry) in expired {
            if let Some(refusal) = expiry.refusal(&limits) {
                if let Some(slot) = self.connections.get(&token) {
                    tracing::debug!("closing a connection: {}", refusal.text);
                    serve::turn_away(slot.turn.lock().shared.stream.as_fd(), refusal);
                }
            }
            self.remove(token);
        }
    }

    /// Reads, decodes and dispatches what the connection has, as far as back-pressure allows.
    fn drive(&mut self, token: Token) {
        let Some(slot) = self.connections.get(&token).cloned() else { return };
        let (process, options, now) = (&self.process, &self.options, self.now);
        if let Some(after) = slot.turn.take(|conn| conn.drive(process, options, now)) {
            self.after(&slot, after);
        }
    }

    /// Does what reading `slot` left to do: close it, look again later, or adopt it into the
    /// inbox once it proved a process identity.
    fn after(&mut self, slot: &Arc<Slot>, after: After) {
        let token = slot.token;
        match after {
            After::Remove => self.remove(token),
            After::Retry(at) => self.retry.push((at, token)),
            After::Starved => {
                // Paused on the buffer pool: it says when a buffer comes back (the fallback timer
                // covers a buffer that came back before it was asked to).
                self.process.pool().want();
                self.starved.push(token);
                self.retry.push((self.now + STARVED_FALLBACK, token));
            }
            After::Keep => {}
            After::Adopt => {
                let Some(inbox) = &self.inbox else { return };
                if let Err(err) = inbox.adopt(&self.process, slot) {
                    // Read by this loop alone, as any connection (a waiter may watch it, harmlessly).
                    tracing::warn!("waiting gets will not read a peer connection: {err}");
                }
            }
        }
    }

    fn remove(&mut self, token: Token) {
        if let Some(slot) = self.connections.remove(&token) {
            self.close(&slot);
        }
    }

    fn close(&self, slot: &Slot) {
        if let Some(inbox) = &self.inbox {
            inbox.forget(&self.process, slot);
        }
        let conn = slot.turn.lock();
        conn.shared.closed.store(true, Ordering::Release);
        let _ = self.poll.registry().deregister(&mut SourceFd(&slot.fd));
        let _ = conn.shared.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Connection {
    /// Steps until the connection has nothing more to do now (read all that arrived, or paused,
    /// or closing), then gives an idle chunk back and stamps its activity: what either reader
    /// does with its turn.
    fn read_all(&mut self, process: &Process, options: &TcpOptions, now: Instant, reader: Reader) -> Step {
        let mut step = Step::More;
        while let Step::More = step {
            step = self.step(process, options, now, reader);
        }
        self.release_idle_chunk(process);
        let mid_frame = self.mid_frame();
        self.activity.frame(now, mid_frame);
        step
    }

    /// Reads, decodes and dispatches what the connection has, as far as back-pressure allows
    /// (the I/O thread).
    fn drive(&mut self, process: &Process, options: &TcpOptions, now: Instant) -> After {
        if self.broken {
            return After::Remove;
        }
        let step = self.read_all(process, options, now, Reader::Io);
        self.shared.queue().flush(&self.shared.stream);
        if matches!(step, Step::Close) || self.finished() {
            return After::Remove;
        }
        if let ReadState::Lingering(until) = self.state {
            After::Retry(until)
        } else if self.paused && !self.blocked_by_peer(options) {
            After::Starved
        } else if !self.adopted && self.state == ReadState::Open && self.peer.identity().is_some() {
            self.adopted = true;
            After::Adopt
        } else {
            After::Keep
        }
    }

    /// Whether an adopted connection has input nobody was told of: the peer's FIN that came
    /// with its last bytes (an exclusive registration cannot ask for EPOLLRDHUP, so the short
    /// read of those bytes did not show it). One non-blocking peek, from the sweep.
    fn unread(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv writes at most one byte into the local it is given; MSG_PEEK leaves the
        // input where it is, MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.shared.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n >= 0
    }

    /// Reads and serves the `Message` frames that arrived, for a waiting get; returns whether
    /// the I/O thread must take over (another frame, back-pressure, the peer closed, an error).
    fn serve_for_get(&mut self, process: &Process, options: &TcpOptions) -> bool {
        if self.broken || self.state != ReadState::Open {
            return true;
        }
        let step = self.read_all(process, options, Instant::now(), Reader::Get);
        let failed = {
            let mut queue = self.shared.queue();
            queue.flush(&self.shared.stream);
            queue.failed
        };
        self.broken |= matches!(step, Step::Close);
        !matches!(step, Step::Idle) || self.paused || self.state != ReadState::Open || failed
    }

    /// Whether the connection can be closed: failed, or drained after the peer closed.
    fn finished(&self) -> bool {
        let queue = self.shared.queue();
        if queue.failed {
            return true;
        }
        let drained = || queue.frames.is_empty() && self.shared.outstanding.load(Ordering::Acquire) == 0;
        self.state.finished(Delivery::PeerClose, drained)
    }

    /// Whether it has invocations at the workers or answers to send (then it is not idle).
    fn busy(&self) -> bool {
        self.shared.outstanding.load(Ordering::Acquire) > 0 || !self.shared.queue().frames.is_empty()
    }

    /// Whether a frame is received in part.
    fn mid_frame(&self) -> bool {
        self.large.is_some() || self.start < self.chunk.len() || self.stash.1 > 0
    }

    /// Gives the read chunk back while nothing but part of a header is pending in it (kept in the
    /// stash), until the connection proved itself: an idle or half-open connection holds no
    /// buffer.
    fn release_idle_chunk(&mut self, process: &Process) {
        let pending = self.chunk.len() - self.start;
        if self.proven || self.chunk.capacity() == 0 || pending >= HEADER_LEN || self.large.is_some() {
            return;
        }
        if self.state != ReadState::Open && pending > 0 {
            return;
        }
        let start = self.start;
        if let Some(chunk) = Arc::get_mut(&mut self.chunk) {
            self.stash.0[..pending].copy_from_slice(&chunk[start..start + pending]);
            self.stash.1 = pending;
            *chunk = process.pool().empty();
            self.start = 0;
        }
    }

    /// Whether the peer is the reason to stop reading: too much work or output outstanding.
    fn blocked_by_peer(&self, options: &TcpOptions) -> bool {
        options.connection.blocked(self.shared.outstanding.load(Ordering::Acquire), || self.shared.queue().bytes)
    }

    /// Stops reading while the peer has too much outstanding; the workers' answers (which see
    /// `attention`) wake the I/O thread to look again.
    fn must_pause(&mut self, options: &TcpOptions) -> bool {
        if !self.blocked_by_peer(options) {
            self.paused = false;
            self.shared.attention.store(self.state == ReadState::Draining, Ordering::Release);
            return false;
        }
        self.shared.attention.store(true, Ordering::Release);
        // A worker may have answered between the check and the store: look once more.
        self.paused = self.blocked_by_peer(options);
        self.paused
    }

    fn step(&mut self, process: &Process, options: &TcpOptions, now: Instant, reader: Reader) -> Step {
        match self.state {
            ReadState::Draining => return Step::Idle,
            ReadState::Lingering(_) => return self.discard(process),
            ReadState::Open => {}
        }
        if self.must_pause(options) {
            return Step::Idle;
        }
        if self.large.is_some() {
            return self.read_large(process, now);
        }
        match self.decode_buffered(process, reader) {
            Ok(Decode::Dispatched) => {
                // Answer the inline invocations of this batch in one write before reading on.
                self.shared.queue().flush(&self.shared.stream);
                return Step::More;
            }
            Ok(Decode::Nothing) if self.large.is_some() => return Step::More,
            Ok(Decode::Nothing) => {}
            Ok(Decode::PoolSpent) => {
                self.paused = true;
                return Step::Idle;
            }
            Ok(Decode::Yield) => return Step::Yield,
            Err(err) => return self.refuse(err),
        }
        if !self.make_room(process, options) {
            self.paused = true;
            return Step::Idle;
        }
        let chunk = Arc::get_mut(&mut self.chunk).expect("make_room leaves the chunk unshared");
        let filled = chunk.len();
        let spare = chunk.spare_mut();
        let room = spare.len();
        match (&self.shared.stream).read(spare) {
            Ok(0) => self.peer_closed(),
            Ok(n) => {
                chunk.set_len(filled + n);
                self.activity.received(now);
                // A short read drained the socket (edge-triggered): decode, then wait for the
                // next event instead of paying a read that only says EAGAIN. (On an adopted
                // connection a FIN that came with the last bytes goes unseen by this read: the
                // sweep looks for it, [`Connection::unread`].)
                if n < room && !self.hup {
                    match self.decode_buffered(process, reader) {
                        Ok(Decode::PoolSpent) => {
                            self.paused = true;
                            Step::Idle
                        }
                        Ok(Decode::Yield) => Step::Yield,
                        Ok(_) => Step::Idle,
                        Err(err) => self.refuse(err),
                    }
                } else {
                    Step::More
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Idle,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::More,
            Err(_) => Step::Close,
        }
    }

    fn peer_closed(&mut self) -> Step {
        self.state = ReadState::Draining;
        self.shared.attention.store(true, Ordering::Release);
        Step::Idle
    }

    /// Dispatches every complete frame in the chunk. A frame too large for the chunk moves to a
    /// buffer of its own.
    fn decode_buffered(&mut self, process: &Process, reader: Reader) -> Result<Decode, FrameError> {
        let limits = FrameLimits { max_frame: process.config().max_frame };
        let mut any = Decode::Nothing;
        loop {
            let available = &self.chunk[self.start..];
            match decode_frame(available, limits)? {
                Decoded::Frame(frame, _) if reader == Reader::Get && frame.header.kind != MessageKind::Message => {
                    return Ok(Decode::Yield);
                }
                Decoded::Frame(frame, used) => {
                    let meta_at = self.start + HEADER_LEN;
                    let body = Payload::new(Arc::clone(&self.chunk), meta_at..self.start + used);
                    self.start += used;
                    self.dispatch(process, frame.header, body);
                    any = Decode::Dispatched;
                    if self.state != ReadState::Open {
                        // Refused (a peer that failed to authenticate): serve nothing more.
                        return Ok(any);
                    }
                }
                Decoded::Incomplete(_) if available.len() >= HEADER_LEN => {
                    let head = available.first_chunk::<HEADER_LEN>().expect("checked length");
                    let header = Header::decode(head, limits)?;
                    if reader == Reader::Get && header.kind != MessageKind::Message {
                        return Ok(Decode::Yield);
                    }
                    if HEADER_LEN + header.body_len() > self.chunk.capacity() {
                        let have = &available[HEADER_LEN..];
                        let Some(large) = LargeFrame::start(header, have, process.pool(), self.proven) else {
                            return Ok(Decode::PoolSpent);
                        };
                        self.start = self.chunk.len();
                        self.large = Some(large);
                    }
                    return Ok(any);
                }
                Decoded::Incomplete(_) => return Ok(any),
            }
        }
    }

    fn read_large(&mut self, process: &Process, now: Instant) -> Step {
        let large = self.large.as_mut().expect("called with a large frame");
        if !large.complete() {
            // The buffer grows with the bytes that arrived: a full one waits for the pool.
            let Some(room) = large.room(process.pool()) else {
                self.paused = true;
                return Step::Idle;
            };
            let want = room.len();
            match (&self.shared.stream).read(room) {
                Ok(0) => return self.peer_closed(),
                Ok(n) => {
                    large.received(n);
                    self.activity.received(now);
                    if n < want && !self.hup {
                        // A short read drained the socket: wait for the next event.
                        return Step::Idle;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    large.release_unused(process.pool());
                    return Step::Idle;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Step::More,
                Err(_) => return Step::Close,
            }
        }
        let large = self.large.as_mut().expect("still there");
        if large.complete() {
            let LargeFrame { header, body } = self.large.take().expect("checked above");
            self.dispatch(process, header, Payload::whole(body));
        }
        Step::More
    }

    /// Ensures the chunk is unshared, of the size the connection gets (small until it proved
    /// itself), and has room to read into; false if the pool is spent.
    fn make_room(&mut self, process: &Process, options: &TcpOptions) -> bool {
        let pending = self.chunk.len() - self.start;
        let room = self.chunk.capacity() - self.chunk.len();
        let min_room = self.chunk_min_room();
        let size = if self.proven { options.read_chunk } else { options.read_chunk.min(MIN_BUF) };
        if self.chunk.capacity() < size {
            let Some(mut fresh) = process.pool().get(size) else {
                return false;
            };
            // A header cut short comes back out of the stash first.
            let (stash, stashed) = std::mem::replace(&mut self.stash, ([0; HEADER_LEN], 0));
            assert!(fresh.try_extend(&stash[..stashed]), "a fresh chunk holds a stashed header");
            assert!(fresh.try_extend(&self.chunk[self.start..]), "a bigger chunk holds the undecoded tail");
            self.chunk = Arc::new(fresh);
            self.start = 0;
            return true;
        }
        if let Some(chunk) = Arc::get_mut(&mut self.chunk) {
            if pending == 0 {
                chunk.set_len(0);
                self.start = 0;
            } else if room < min_room {
                let start = self.start;
                chunk.memory_mut().copy_within(start..start + pending, 0);
                chunk.set_len(pending);
                self.start = 0;
            }
            return true;
        }
        // Workers still hold payloads in this chunk: continue in a fresh one, moving only the
        // undecoded tail (less than one frame's worth of bytes).
        let Some(mut fresh) = process.pool().get(self.chunk.capacity()) else {
            return false;
        };
        assert!(fresh.try_extend(&self.chunk[self.start..]), "a fresh chunk holds the undecoded tail");
        self.chunk = Arc::new(fresh);
        self.start = 0;
        true
    }

    fn chunk_min_room(&self) -> usize {
        (self.chunk.capacity() / 4).max(HEADER_LEN)
    }

    fn dispatch(&mut self, process: &Process, header: Header, body: Payload) {
        // Counted before the process sees it: a worker may answer before `dispatch` returns.
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        let (meta, input) = body.split_meta(header.meta_len as usize);
        let action = serve_frame(process, &mut self.peer, &self.sink, header, meta, input);
        if !self.proven && !matches!(action, FrameAction::ReplyAndClose(_)) {
            self.proven = serve::proven(process, &self.peer);
        }
        if matches!(action, FrameAction::Queued) {
            return;
        }
        self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
        serve::act(self, action);
    }

    /// Answers a protocol violation in the undecoded bytes as the policy says, and lingers.
    fn refuse(&mut self, err: FrameError) -> Step {
        let refusal = Refusal::frame(err, &self.chunk[self.start..]);
        serve::refuse(self, refusal);
        Step::More
    }

    /// Reads and drops input of a lingering connection.
    fn discard(&mut self, process: &Process) -> Step {
        if Arc::get_mut(&mut self.chunk).is_none() || self.chunk.capacity() == 0 {
            // Workers still hold payloads in the chunk (or there is none): discard into a fresh one.
            let Some(fresh) = process.pool().get(self.chunk.capacity().max(MIN_BUF)) else { return Step::Idle };
            self.chunk = Arc::new(fresh);
        }
        let chunk = Arc::get_mut(&mut self.chunk).expect("made unshared above");
        chunk.set_len(0);
        self.start = 0;
        match (&self.shared.stream).read(chunk.memory_mut()) {
            Ok(0) => Step::Close,
            Ok(_) => Step::More,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Idle,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::More,
            Err(_) => Step::Close,
        }
    }
}

/// How a mio connection moves bytes for the [policy](praas_runtime::serve): responses and replies join
/// its write queue (flushed after each batch of frames); a last frame is flushed at once and the
/// sending side shut behind it.
impl Link for Connection {
    #[inline]
    fn respond(&mut self, response: Response) {
        self.shared.queue().push(OutFrame::from_response(response, self.shared.max_frame));
    }

    #[inline]
    fn reply(&mut self, frame: OutFrame) {
        self.shared.queue().push(frame);
    }

    fn reply_last(&mut self, frame: OutFrame, _: End) {
        {
            let mut queue = self.shared.queue();
            queue.push(frame);
            queue.flush(&self.shared.stream);
        }
        let _ = self.shared.stream.shutdown(std::net::Shutdown::Write);
    }

    fn discard_input(&mut self) {
        self.start = self.chunk.len();
    }

    fn state(&mut self) -> &mut ReadState {
        &mut self.state
    }

    fn linger(&self) -> Duration {
        self.linger
    }
}
