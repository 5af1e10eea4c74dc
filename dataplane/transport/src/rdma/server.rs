//! The process side of the RDMA transport: one I/O thread that owns the shared receive queue,
//! polls the one completion queue of every connection, and accepts connections.
//!
//! Receive buffers are buffers of the process's pool, registered once at start and owned by the
//! transport for its whole life (so a registration never outlives its memory). A small frame's
//! input reaches the function as a [`Payload`] slice of the receive buffer it arrived in; the
//! buffer goes back to the shared receive queue when the function has let go of it. A large
//! payload is written by the client straight into a pool buffer registered for that one transfer
//! and advertised to that one connection; the registration is revoked before the function sees
//! the bytes, so no peer can write into memory the program is reading.
//!
//! Responses are posted by whichever thread has them (the I/O thread for inline functions, the
//! worker for the others), under the connection's lock: small ones are copied into one of the
//! connection's registered send slots, large outputs are registered and written into a buffer
//! the client advertises (`Rts`, `Cts`, `Data` in [`flow`](super::flow)).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::connect::{self, Endpoint, LocalPort, ENDPOINT_LEN, STATUS_FULL, STATUS_INTERNAL, STATUS_OK};
use super::flow::{
    wr_id, wr_parts, CreditLedger, Grant, IdMap, Imm, Op, Receives, SendWindow, Sends, GRANT_LEN, WR_RECV, WR_SLOT,
    WR_WRITE,
};
use super::verbs::{
    CompletionChannel, CompletionQueue, MemoryRegion, ProtectionDomain, QueuePair, RecvBuffer, Registered, SendOp,
    SharedReceiveQueue, VerbsContext, ACCESS_LOCAL_READ, ACCESS_LOCAL_WRITE, ACCESS_REMOTE_WRITE, MAX_RECV_BATCH,
};
use super::PollPolicy;
use crate::handle::{ServerHandle, Transport};
use praas_runtime::buffer::{Payload, PoolBuf};
use praas_runtime::invocation::Outcome;
use praas_runtime::invocation::{Response, ResponseSink};
use praas_runtime::process::Process;
use praas_runtime::serve::serve_frame;
use praas_runtime::serve::OutFrame;
use praas_runtime::serve::{self, Admitted, Delivery, End, Link, ReadState, Refusal};
use praas_runtime::session::PeerSession;
use praas_wire::protocol::{decode_frame, Decoded, FrameLimits, Header, Status, HEADER_LEN};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const CQ: Token = Token(usize::MAX - 2);
/// Tokens of set-ups in progress start here (a connection's token is its u32 id).
const HANDSHAKE_BASE: usize = 1 << 40;

/// A connection whose set-up message (the client's endpoint) has not all arrived: read without
/// blocking the loop, into a fixed 44 bytes, closed at the header timeout, and counted against the
/// process's connection limits from its accept.
struct Handshake {
    stream: TcpStream,
    bytes: [u8; ENDPOINT_LEN],
    filled: usize,
    deadline: Instant,
    admitted: Admitted,
}
/// Longest sleep of an idle I/O thread: it also looks around (stop, lent buffers) this often.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// How often a busy-polling I/O thread looks at its sockets (new connections, closed ones).
const SOCKET_INTERVAL: Duration = Duration::from_micros(500);

/// Tuning of the RDMA transport.
#[derive(Debug, Clone)]
pub struct RdmaOptions {
    /// The RDMA device; `None`: the device that has a GID for the bound address.
    pub device: Option<String>,
    /// Bytes of each receive buffer: frames up to this size travel by SEND, larger ones by RDMA
    /// WRITE into a granted buffer.
    pub recv_size: usize,
    /// Messages each client may have in flight.
    pub credits: u32,
    /// Connections served at once (the shared receive queue holds `credits` for each).
    pub max_connections: usize,
    /// How the I/O thread waits for completions.
    pub poll: PollPolicy,
    /// How long a connection that broke the protocol may take to receive its error before it is
    /// closed.
    pub linger: Duration,
}

impl Default for RdmaOptions {
    fn default() -> Self {
        Self {
            device: std::env::var("PRAAS_RDMA_DEVICE").ok().filter(|d| !d.is_empty()),
            recv_size: 8 << 10,
            credits: 16,
            max_connections: 32,
            poll: PollPolicy::from_env().unwrap_or_default(),
            linger: praas_runtime::serve::ConnectionOptions::default().linger,
        }
    }
}

/// The RDMA transport of one process.
pub struct RdmaTransport {
    listener: TcpListener,
    process: Arc<Process>,
    options: RdmaOptions,
    context: Arc<VerbsContext>,
    port: LocalPort,
    stats: Arc<RdmaStats>,
}

impl std::fmt::Debug for RdmaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaTransport")
            .field("addr", &self.listener.local_addr().ok())
            .field("device", &self.context.name())
            .finish()
    }
}

impl RdmaTransport {
    /// Binds `addr` (the TCP address of the connection set-up) for `process`, on the RDMA device
    /// that carries that address (or `options.device`).
    pub fn bind(addr: SocketAddr, process: Arc<Process>, options: RdmaOptions) -> io::Result<Self> {
        let (context, port) = connect::device_for(addr.ip(), options.device.as_deref())?;
        let listener = TcpListener::bind(addr)?;
        Ok(Self { listener, process, options, context, port, stats: Arc::default() })
    }

    /// The RDMA device it serves on.
    pub fn device(&self) -> &str {
        self.context.name()
    }

    /// The transport's counters, which stay readable after [`Transport::spawn`].
    pub fn stats(&self) -> Arc<RdmaStats> {
        Arc::clone(&self.stats)
    }
}

impl Transport for RdmaTransport {
    fn name(&self) -> &'static str {
        "rdma"
    }

    fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    fn spawn(self: Box<Self>) -> io::Result<ServerHandle> {
        let addr = self.local_addr();
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut event_loop = EventLoop::new(*self, poll, Arc::clone(&stop))?;
        let thread =
            std::thread::Builder::new().name(format!("rdma-io-{}", addr.port())).spawn(move || event_loop.run())?;
        let stopper = move || {
            stop.store(true, Ordering::Release);
            if let Err(e) = waker.wake() {
                tracing::warn!("waking the RDMA I/O thread to stop failed: {e}");
            }
        };
        Ok(ServerHandle::new(addr, Box::new(stopper), thread))
    }
}

/// A frame waiting for a send slot or room in the send queue (a `Write` is that of a granted
/// large output, which waits in the connection's [`Sends`]).
enum Out {
    Frame { header: Header, meta: Vec<u8>, payload: Option<PoolBuf>, release: bool },
    Cts { token: u16, grant: Grant },
    Write { token: u16 },
}

/// A large output and the registration it is sent from (the buffer is kept alive, and so
/// readable, until its write completes).
struct OutputBuf {
    buf: PoolBuf,
    mr: Arc<MemoryRegion>,
}

/// Counters of one RDMA transport ([`RdmaTransport::stats`]).
#[derive(Debug, Default)]
pub struct RdmaStats {
    output_registrations: std::sync::atomic::AtomicU64,
}

impl RdmaStats {
    /// Large outputs registered so far (the others were sent from a cached registration).
    pub fn output_registrations(&self) -> u64 {
        self.output_registrations.load(Ordering::Relaxed)
    }
}

/// Registrations of output buffers, by [`PoolBuf::id`], for every connection of the process: a
/// buffer that comes back from the pool is sent without registering it again. Least recently
/// used entries go when [`OutputRegions::MAX_ENTRIES`] or [`OutputRegions::MAX_BYTES`] is
/// reached (a write in flight keeps its own reference).
struct OutputRegions {
    entries: IdMap<u64, (Arc<MemoryRegion>, usize, u64)>,
    bytes: usize,
    tick: u64,
    stats: Arc<RdmaStats>,
}

impl OutputRegions {
    const MAX_ENTRIES: usize = 64;
    const MAX_BYTES: usize = 256 << 20;

    fn new(stats: Arc<RdmaStats>) -> Self {
        Self { entries: IdMap::default(), bytes: 0, tick: 0, stats }
    }

    /// The registration of `buf`'s memory, made now if there is none.
    fn get(&mut self, pd: &Arc<ProtectionDomain>, buf: &PoolBuf) -> io::Result<Arc<MemoryRegion>> {
        self.tick += 1;
        if let Some((mr, _, last_use)) = self.entries.get_mut(&buf.id()) {
            *last_use = self.tick;
            return Ok(Arc::clone(mr));
        }
        let (addr, len) = buf.region();
        self.stats.output_registrations.fetch_add(1, Ordering::Relaxed);
        // SAFETY: local read only; the transport posts this region's key only in the write of
        // an `OutputBuf` holding the buffer of this id, alive until the write completes.
        let mr = Arc::new(unsafe { MemoryRegion::new_for_sends(pd, addr as *const u8, len)? });
        if len <= Self::MAX_BYTES {
            while self.entries.len() >= Self::MAX_ENTRIES || self.bytes + len > Self::MAX_BYTES {
                let Some(oldest) = self.entries.iter().min_by_key(|(_, (_, _, used))| *used).map(|(id, _)| *id) else {
                    break;
                };
                if let Some((_, bytes, _)) = self.entries.remove(&oldest) {
                    self.bytes -= bytes;
                }
            }
            self.entries.insert(buf.id(), (Arc::clone(&mr), len, self.tick));
            self.bytes += len;
        }
        Ok(mr)
    }
}

/// The sending half of a connection, under its lock.
struct Tx {
    /// `None` once the connection is closed: nothing more is posted.
    qp: Option<QueuePair>,
    /// The send slots, the send queue's room, and the sends in flight.
    window: SendWindow,
    queue: VecDeque<Out>,
    ledger: CreditLedger,
    /// Large outputs: announced by `Rts`, granted by the client's `Cts`, written until the write
    /// completes.
    sends: Sends<OutputBuf>,
}

/// One client connection; workers answer through it ([`ResponseSink`]).
struct Conn {
    id: u32,
    // Field order is drop order: the lock (with the QP) before the slot memory it names.
    tx: Mutex<Tx>,
    slots: Registered<Box<[u8]>>,
    slot_size: usize,
    inline_max: usize,
    /// The registrations of large outputs, shared by the process's connections.
    outputs: Arc<Mutex<OutputRegions>>,
    pd: Arc<ProtectionDomain>,
}

impl Conn {
    fn tx(&self) -> MutexGuard<'_, Tx> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `response`, returning the credit of the request it answers.
    fn respond(&self, tx: &mut Tx, response: Response, release: bool) {
        let Outcome { status, message, output } = response.outcome;
        let body: &[u8] = output.as_deref().unwrap_or(&[]);
        let Ok(body_len) = u32::try_from(body.len()) else {
            // Only an output grown to the pool's largest class (4 GiB) under a frame limit that
            // large: refused rather than sent with a wrapped length.
            let text = format!("output of {} bytes exceeds the 32-bit payload length field", body.len());
            let header = Header::response(response.id, Status::TooLarge, 0, 0);
            self.send_reply(tx, header, text.into_bytes(), None, release);
            return;
        };
        // A longer text takes `send_reply`, which cuts it and sets its length again.
        let meta_len = u16::try_from(message.len()).unwrap_or(u16::MAX);
        let header = Header::response(response.id, status, meta_len, body_len);
        // The common case, an answer that fits a slot with nothing queued before it, is laid
        // out and posted here, from where it is (the output returns to the pool after the post).
        if tx.qp.is_some()
            && tx.queue.is_empty()
            && HEADER_LEN + message.len() + body.len() <= self.slot_size
            && message.len() <= usize::from(u16::MAX)
        {
            if let Some(slot) = tx.window.take_slot() {
                if release {
                    tx.ledger.release();
                }
                let len = self.write_frame(slot, &header, message.as_bytes(), body);
                self.post_slot(tx, slot, Op::Frame, 0, len);
                return;
            }
        }
        self.send_reply(tx, header, message.into_bytes(), output, release);
    }

    /// Sends a frame of `header`, `meta` (cut to what fits a send slot beside the header) and
    /// `payload`; `release` returns the credit of the request it answers.
    fn send_reply(&self, tx: &mut Tx, header: Header, mut meta: Vec<u8>, payload: Option<PoolBuf>, release: bool) {
        meta.truncate((self.slot_size - HEADER_LEN).min(usize::from(u16::MAX)));
        // Cut to the 16-bit length field just above: never saturates.
        let header = Header { meta_len: u16::try_from(meta.len()).unwrap_or(u16::MAX), ..header };
        self.send_frame(tx, Out::Frame { header, meta, payload, release });
    }

    /// Posts `out` now if there is room, else queues it behind what is already waiting.
    fn send_frame(&self, tx: &mut Tx, out: Out) {
        if tx.qp.is_none() {
            return;
        }
        if tx.queue.is_empty() {
            if let Err(out) = self.try_post(tx, out) {
                tx.queue.push_back(out);
            }
        } else {
            tx.queue.push_back(out);
        }
    }

    /// Posts what waits, in order, as long as there is room.
    fn flush(&self, tx: &mut Tx) {
        while let Some(out) = tx.queue.pop_front() {
            if let Err(out) = self.try_post(tx, out) {
                tx.queue.push_front(out);
                return;
            }
        }
    }

    /// Posts one item; gives it back if there is no room yet.
    fn try_post(&self, tx: &mut Tx, out: Out) -> Result<(), Out> {
        if !tx.window.has_room() {
            return Err(out);
        }
        match out {
            Out::Write { token } => {
                let credits = tx.ledger.take_returnable();
                let imm = Imm::new(Op::Data, credits, token).encode();
                let Some(qp) = tx.qp.as_ref() else { return Ok(()) };
                let Some((buf, grant)) = tx.sends.granted(token) else { return Ok(()) };
                let post = tx.window.write_send(token);
                // SAFETY: `buf` is registered on this connection's PD and stays in `sends`
                // (alive, registered) until the write's completion or the QP's destruction.
                let posted = unsafe {
                    qp.post_send(
                        post.id,
                        SendOp::WriteImm { remote_addr: grant.addr, rkey: grant.rkey },
                        imm,
                        buf.buf.as_ptr() as u64,
                        grant.len,
                        buf.mr.lkey(),
                        false,
                        post.signaled,
                    )
                };
                if let Err(e) = posted {
                    tracing::debug!(conn = self.id, "posting a write failed: {e}");
                    tx.sends.remove(token);
                    return Ok(());
                }
                tx.window.write_posted(post);
                tx.sends.writing(token);
                Ok(())
            }
            out => {
                let Some(slot) = tx.window.take_slot() else { return Err(out) };
                self.post_in_slot(tx, slot, out);
                Ok(())
            }
        }
    }

    /// Lays `out` (a frame, an announcement or a grant) out in `slot` and posts it as a SEND.
    fn post_in_slot(&self, tx: &mut Tx, slot: u32, out: Out) {
        // A small frame's output, copied into the slot: given back to the pool only after the
        // send is posted, so that the answer leaves first.
        let mut copied = None;
        let (op, token, len) = match out {
            Out::Frame { header, meta, payload, release } => {
                if release {
                    tx.ledger.release();
                }
                let payload_len = payload.as_ref().map_or(0, |p| p.len());
                if HEADER_LEN + meta.len() + payload_len <= self.slot_size {
                    let len = self.write_frame(slot, &header, &meta, payload.as_deref().unwrap_or(&[]));
                    copied = payload;
                    (Op::Frame, 0, len)
                } else {
                    // Large: announce it; the output is written when the client grants a buffer.
                    let payload = payload.expect("a frame larger than a slot has a payload");
                    // Every payload here had its length in a 32-bit header field (`respond`
                    // refuses larger outputs): the conversion does not fail.
                    let registered = u32::try_from(payload_len)
                        .map_err(|_| io::Error::other("larger than the 32-bit payload length field"))
                        .and_then(|announced| {
                            let mr = self.outputs.lock().unwrap_or_else(|p| p.into_inner()).get(&self.pd, &payload)?;
                            Ok((mr, announced))
                        });
                    let (registered, announced) = match registered {
                        Ok((mr, announced)) => (OutputBuf { buf: payload, mr }, announced),
                        Err(e) => {
                            tracing::warn!(conn = self.id, "cannot register a response of {payload_len} bytes: {e}");
                            tx.window.give_back(slot);
                            let error = Header { status: Status::Internal.code(), payload_len: 0, ..header };
                            let text = format!("the transport could not register the output: {e}");
                            self.send_reply(tx, error, text.into_bytes(), None, false);
                            return;
                        }
                    };
                    let token = tx.sends.announce(registered, announced);
                    let len = self.write_frame(slot, &header, &meta, &[]);
                    (Op::Rts, token, len)
                }
            }
            Out::Cts { token, grant } => {
                // SAFETY: a free slot is named by no posted work request.
                let len = unsafe { self.slots.write(slot as usize * self.slot_size, &[&grant.encode()]) };
                (Op::Cts, token, len)
            }
            Out::Write { .. } => unreachable!("writes use no slot"),
        };
        self.post_slot(tx, slot, op, token, len);
        drop(copied);
    }

    /// Lays a frame (or, with an empty `body`, an announcement) out in `slot`, which the caller
    /// has just taken from the free slots; returns its length.
    fn write_frame(&self, slot: u32, header: &Header, meta: &[u8], body: &[u8]) -> usize {
        // SAFETY: a slot taken from the free list is named by no posted work request.
        unsafe { self.slots.write(slot as usize * self.slot_size, &[&header.encode(), meta, body]) }
    }

    /// Posts the `len` bytes laid out in `slot` as a SEND of `op` (returning the credits due);
    /// on failure the slot is free again.
    fn post_slot(&self, tx: &mut Tx, slot: u32, op: Op, token: u16, len: usize) {
        let offset = slot as usize * self.slot_size;
        let credits = tx.ledger.take_returnable();
        let imm = Imm::new(op, credits, token).encode();
        let Some(qp) = tx.qp.as_ref() else {
            tx.window.give_back(slot);
            return;
        };
        let addr = self.slots.mr().addr() + offset as u64;
        // At most a slot, and slots are at most 1 MiB (`create`).
        #[allow(clippy::cast_possible_truncation)]
        let slot_len = len as u32;
        let post = tx.window.slot_send(slot);
        // SAFETY: the slot lies in `slots`, registered on this PD, and is not reused before the
        // completion of this send or a later one frees it (or the QP is destroyed, before
        // `slots` is dropped).
        let posted = unsafe {
            qp.post_send(
                post.id,
                SendOp::SendImm,
                imm,
                addr,
                slot_len,
                self.slots.mr().lkey(),
                len <= self.inline_max,
                post.signaled,
            )
        };
        match posted {
            Ok(()) => tx.window.slot_posted(post),
            Err(e) => {
                tracing::debug!(conn = self.id, "posting a send failed: {e}");
                tx.window.give_back(slot);
            }
        }
    }
}

/// A send completed: it and every send posted before it on the connection are done (the large
/// outputs written among them go back to the pool).
fn retire(tx: &mut Tx, done: u64) {
    let Tx { window, sends, .. } = tx;
    window.retire(done, |token| drop(sends.written(token)));
}

impl ResponseSink for Conn {
    fn send(&self, response: Response) {
        let mut tx = self.tx();
        self.respond(&mut tx, response, true);
    }
}

/// A large payload the process granted a buffer for, waiting for the client's write.
struct InGrant {
    header: Header,
    meta: Vec<u8>,
    buf: Registered<PoolBuf>,
}

/// An `Rts` the pool had no buffer for yet.
struct Deferred {
    header: Header,
    meta: Vec<u8>,
}

/// The I/O thread's half of a connection.
struct ConnIo {
    conn: Arc<Conn>,
    sink: Arc<dyn ResponseSink>,
    qpn: u32,
    stream: TcpStream,
    /// Large payloads of the client: announced, waiting for a buffer, then granted one.
    receives: Receives<Deferred, InGrant>,
    /// `Lingering` once its last frame is on the way (it broke the protocol, or failed to
    /// authenticate): closed when that is sent, or at the deadline.
    state: ReadState,
    /// The connection's peer handshake (messages from other processes).
    peer: PeerSession,
    /// Counted against the process's connection limits while it lives.
    _admitted: Admitted,
}

/// One receive buffer of the shared receive queue.
struct RecvSlot {
    buf: Registered<Arc<PoolBuf>>,
    posted: bool,
}

struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    process: Arc<Process>,
    options: RdmaOptions,
    context: Arc<VerbsContext>,
    port: LocalPort,
    stop: Arc<AtomicBool>,
    // Field order is drop order: connections (and their QPs) first, then the receive buffers,
    // the SRQ, the CQ and the PD they need.
    conns: IdMap<u32, ConnIo>,
    by_qpn: IdMap<u32, u32>,
    next_conn: u32,
    slots: Vec<RecvSlot>,
    free_slots: Vec<u32>,
    /// Receive slots lent to functions (their payload is still in use).
    lent: Vec<u32>,
    srq_target: usize,
    srq_posted: usize,
    srq: Arc<SharedReceiveQueue>,
    cq: Arc<CompletionQueue>,
    channel: Arc<CompletionChannel>,
    outputs: Arc<Mutex<OutputRegions>>,
    pd: Arc<ProtectionDomain>,
    completions: Vec<super::verbs::WorkCompletion>,
    /// Set-ups whose endpoint is still arriving, by token.
    handshakes: HashMap<usize, Handshake>,
    next_handshake: usize,
    /// The last accept failed (out of descriptors): housekeeping accepts again.
    accept_again: bool,
}

impl EventLoop {
    fn new(transport: RdmaTransport, poll: Poll, stop: Arc<AtomicBool>) -> io::Result<Self> {
        let RdmaTransport { listener, process, options, context, port, stats } = transport;
        let pd = ProtectionDomain::new(&context)?;
        let channel = CompletionChannel::new(&context)?;
        // The verbs and the connection set-up count and size in 32 bits.
        let too_large = |what| io::Error::new(io::ErrorKind::InvalidInput, format!("RDMA {what} beyond 32 bits"));
        u32::try_from(options.recv_size).map_err(|_| too_large("receive size"))?;
        let srq_capacity = options.max_connections * options.credits as usize;
        let sq_depth = send_depth(options.credits);
        let cq_entries = srq_capacity + MAX_RECV_BATCH + options.max_connections * sq_depth as usize + 64;
        let cq = CompletionQueue::new(&context, cq_entries, Some(&channel))?;
        let srq_len = u32::try_from(srq_capacity + MAX_RECV_BATCH).map_err(|_| too_large("receive queue"))?;
        let srq = SharedReceiveQueue::new(&pd, srq_len)?;
        let mut slots = Vec::with_capacity(2 * srq_capacity);
        for _ in 0..2 * srq_capacity {
            let buf = process
                .pool()
                .get(options.recv_size)
                .ok_or_else(|| io::Error::other("the buffer pool cannot hold the RDMA receive buffers"))?;
            let buf = Registered::new(&pd, Arc::new(buf), ACCESS_LOCAL_WRITE)?;
            slots.push(RecvSlot { buf, posted: false });
        }
        let recv_slots = u32::try_from(slots.len()).map_err(|_| too_large("receive buffer count"))?;
        let free_slots = (0..recv_slots).rev().collect();
        let mut event_loop = Self {
            poll,
            listener,
            process,
            options,
            context,
            port,
            stop,
            conns: IdMap::default(),
            by_qpn: IdMap::default(),
            next_conn: 1,
            slots,
            free_slots,
            lent: Vec::new(),
            srq_target: 0,
            srq_posted: 0,
            srq,
            cq,
            channel,
            pd,
            completions: Vec::with_capacity(super::verbs::POLL_BATCH),
            outputs: Arc::new(Mutex::new(OutputRegions::new(stats))),
            handshakes: HashMap::new(),
            next_handshake: 0,
            accept_again: false,
        };
        event_loop.refill_srq();
        Ok(event_loop)
    }

    fn run(&mut self) -> io::Result<()> {
        self.poll.registry().register(&mut self.listener, LISTENER, Interest::READABLE)?;
        let fd = self.channel.fd();
        self.poll.registry().register(&mut SourceFd(&fd), CQ, Interest::READABLE)?;
        let mut events = Events::with_capacity(256);
        // When the queue was first seen empty after the last work (read lazily: no clock reads
        // while there is work).
        let mut idle_since: Option<Instant> = None;
        let mut sockets_seen = Instant::now();
        let mut spins = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            if self.drain_cq()? {
                idle_since = None;
                spins = 0;
                continue;
            }
            // An empty poll costs little; the clock and housekeeping are looked at every 256th,
            // the sockets (a system call, which would delay the next completion) at most every
            // SOCKET_INTERVAL while busy polling.
            spins += 1;
            if !spins.is_multiple_of(256) && self.options.poll != PollPolicy::Events {
                continue;
            }
            self.housekeeping();
            let now = Instant::now();
            let idle = now.saturating_duration_since(*idle_since.get_or_insert(now));
            let sleep = self.options.poll.should_sleep(idle);
            if !sleep && self.options.poll != PollPolicy::Events {
                if now.saturating_duration_since(sockets_seen) < SOCKET_INTERVAL {
                    continue;
                }
                sockets_seen = now;
            }
            let timeout = if sleep {
                // Arm, then look once more: a completion between the last poll and the arm
                // would otherwise wait for the next one.
                self.cq.arm()?;
                if self.drain_cq()? {
                    idle_since = None;
                    continue;
                }
                self.next_timeout()
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    CQ => {
                        self.cq.take_events();
                        idle_since = None;
                    }
                    Token(t) if t >= HANDSHAKE_BASE => self.handshake_event(t),
                    // A connection's token is its u32 id: never fails.
                    Token(t) => {
                        if let Ok(id) = u32::try_from(t) {
                            self.socket_event(id);
                        }
                    }
                }
            }
        }
        let ids: Vec<u32> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
        Ok(())
    }

    /// Sleep no longer than the next piece of timed work.
    fn next_timeout(&self) -> Option<Duration> {
        let waiting = !self.lent.is_empty() || self.conns.values().any(|c| c.receives.has_waiting());
        let closing = self
            .conns
            .values()
            .filter_map(|c| match c.state {
                ReadState::Lingering(at) => Some(at.saturating_duration_since(Instant::now())),
                _ => None,
            })
            .min();
        let handshake = self.handshakes.values().map(|h| h.deadline.saturating_duration_since(Instant::now())).min();
        let closing = match (closing, handshake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let retry = waiting.then_some(Duration::from_millis(1));
        let wait = match (retry, closing) {
            (Some(a), Some(b)) => a.min(b).max(Duration::from_millis(1)),
            (a, b) => a.or(b.map(|b| b.max(Duration::from_millis(1)))).unwrap_or(MAX_SLEEP),
        };
        Some(wait.min(MAX_SLEEP))
    }

    /// Work that no completion announces: receive buffers that functions let go of, grants the
    /// pool could not give before, connections whose error went out.
    fn housekeeping(&mut self) {
        if self.accept_again {
            self.accept();
        }
        if !self.handshakes.is_empty() {
            // Set-ups past their deadline: closed (their 44 bytes never came).
            let now = Instant::now();
            let late: Vec<usize> =
                self.handshakes.iter().filter(|(_, h)| h.deadline <= now).map(|(token, _)| *token).collect();
            for token in late {
                if let Some(mut handshake) = self.handshakes.remove(&token) {
                    let _ = self.poll.registry().deregister(&mut handshake.stream);
                    tracing::debug!("an RDMA connection set-up did not arrive within the header timeout: closed");
                }
            }
        }
        if !self.lent.is_empty() {
            let slots = &self.slots;
            let (free, lent): (Vec<u32>, Vec<u32>) =
                self.lent.drain(..).partition(|&s| slots[s as usize].buf.is_unshared());
            self.lent = lent;
            self.free_slots.extend(free);
            self.refill_srq();
        }
        let ids: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.receives.has_waiting() || c.state != ReadState::Open)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.retry_deferred(id);
            let Some(io) = self.conns.get(&id) else { continue };
            // Its last frame is out once the send queue is empty and every slot is free.
            let drained = || {
                let tx = io.conn.tx();
                tx.queue.is_empty() && tx.window.slots_idle()
            };
            if io.state.finished(Delivery::Completion, drained) {
                self.close(id);
            }
        }
    }

    /// Posts free receive buffers, a batch at a time ([`MAX_RECV_BATCH`]: one lock and one
    /// doorbell), while the shared receive queue is a batch short of its target: the credits of
    /// the connections there are plus one batch, so those are always covered. Only that many:
    /// the queue is consumed in order, and the fewer buffers it cycles through, the warmer they
    /// stay in caches.
    fn refill_srq(&mut self) {
        let capacity = self.srq_target + MAX_RECV_BATCH;
        while capacity.saturating_sub(self.srq_posted) >= MAX_RECV_BATCH {
            let mut batch = [RecvBuffer { wr_id: 0, addr: 0, len: 0, lkey: 0 }; MAX_RECV_BATCH];
            let mut indices = [0u32; MAX_RECV_BATCH];
            let mut n = 0;
            while n < MAX_RECV_BATCH && self.srq_posted + n < capacity {
                let Some(index) = self.free_slots.pop() else { break };
                let slot = &self.slots[index as usize];
                debug_assert!(slot.buf.is_unshared() && !slot.posted);
                let mr = slot.buf.mr();
                batch[n] = RecvBuffer {
                    wr_id: wr_id(0, WR_RECV, index),
                    addr: mr.addr(),
                    // A receive may be shorter than its buffer (of at least `recv_size` bytes,
                    // which fits 32 bits: checked in `new`).
                    len: u32::try_from(mr.len()).unwrap_or(u32::MAX),
                    lkey: mr.lkey(),
                };
                indices[n] = index;
                n += 1;
            }
            if n == 0 {
                return;
            }
            // SAFETY: each slot's buffer is registered for local write on this PD and unshared:
            // nothing reads it until its completion, and it lives as long as the SRQ's users
            // (the slots drop after the connections' QPs).
            let posted = match unsafe { self.srq.post_recvs(&batch[..n]) } {
                Ok(posted) => posted,
                Err(e) => {
                    tracing::warn!("cannot post receive buffers: {e}");
                    0
                }
            };
            for &index in &indices[..posted] {
                self.slots[index as usize].posted = true;
            }
            self.srq_posted += posted;
            self.free_slots.extend_from_slice(&indices[posted..n]);
            if posted < n {
                return;
            }
        }
    }

    /// Polls and handles every completion there is; returns whether there was any.
    fn drain_cq(&mut self) -> io::Result<bool> {
        let mut any = false;
        loop {
            let mut batch = std::mem::take(&mut self.completions);
            batch.clear();
            let n = self.cq.poll(&mut batch)?;
            for wc in &batch {
                self.completion(wc);
            }
            self.completions = batch;
            if n == 0 {
                return Ok(any);
            }
            any = true;
        }
    }

    fn completion(&mut self, wc: &super::verbs::WorkCompletion) {
        let (conn, kind, index) = wr_parts(wc.wr_id);
        match kind {
            WR_RECV => self.received(index, wc),
            WR_SLOT | WR_WRITE => {
                let Some(io) = self.conns.get(&conn) else { return };
                let c = Arc::clone(&io.conn);
                let mut tx = c.tx();
                retire(&mut tx, wc.wr_id);
                if wc.ok() {
                    c.flush(&mut tx);
                    return;
                }
                drop(tx);
                if !wc.flushed() {
                    tracing::info!(conn, "a send to the client failed ({}): closing the connection", wc.status_text());
                }
                self.close(conn);
            }
            _ => tracing::warn!(wr_id = wc.wr_id, "completion of an unknown work request"),
        }
    }

    fn received(&mut self, index: u32, wc: &super::verbs::WorkCompletion) {
        let slot = &mut self.slots[index as usize];
        slot.posted = false;
        self.srq_posted -= 1;
        let conn_id = self.by_qpn.get(&wc.qp_num).copied();
        let outcome = match conn_id {
            Some(id) if wc.ok() => self.message(id, index, wc),
            Some(id) => {
                if !wc.flushed() {
                    tracing::info!(conn = id, "receive failed ({}): closing the connection", wc.status_text());
                }
                self.close(id);
                Ok(())
            }
            None => Ok(()),
        };
        if let (Err(refusal), Some(conn)) = (outcome, conn_id) {
            self.refuse(conn, refusal);
        }
        if self.slots[index as usize].buf.is_unshared() {
            self.free_slots.push(index);
        } else {
            self.lent.push(index);
        }
        self.refill_srq();
    }

    /// Handles one message from connection `id` in receive slot `index`. A protocol violation
    /// comes back as the refusal to answer it with.
    fn message(&mut self, id: u32, index: u32, wc: &super::verbs::WorkCompletion) -> Result<(), Refusal> {
        let Some(io) = self.conns.get_mut(&id) else { return Ok(()) };
        if !io.state.serves() {
            return Ok(());
        }
        if !io.conn.tx().ledger.receive() {
            return Err(Refusal::malformed(format!("message beyond the {} credits granted", self.options.credits)));
        }
        let imm = wc.imm.and_then(Imm::decode).ok_or_else(|| Refusal::malformed("message without a valid header"))?;
        let limits = FrameLimits { max_frame: self.process.config().max_frame };
        let len = wc.byte_len as usize;
        match imm.op {
            Op::Frame if !wc.is_write_imm() => {
                let slot = &mut self.slots[index as usize];
                slot.buf.set_len(len);
                let buf = slot.buf.share();
                let decoded = decode_frame(&buf, limits).map_err(|e| Refusal::frame(e, &buf))?;
                let (header, used) = match decoded {
                    Decoded::Frame(frame, used) => (frame.header, used),
                    Decoded::Incomplete(_) => return Err(Refusal::malformed("a SEND that holds part of a frame")),
                };
                if used != len {
                    return Err(Refusal::malformed("a SEND that holds more than one frame"));
                }
                let meta_end = HEADER_LEN + header.meta_len as usize;
                let input = Payload::new(Arc::clone(&buf), meta_end..len);
                Self::dispatch(io, &self.process, self.options.linger, header, &buf[HEADER_LEN..meta_end], input);
            }
            Op::Rts if !wc.is_write_imm() => {
                let slot = &mut self.slots[index as usize];
                slot.buf.set_len(len);
                let buf = slot.buf.share();
                let head = buf.first_chunk::<HEADER_LEN>().ok_or_else(|| Refusal::malformed("a short announcement"))?;
                let header = Header::decode(head, limits).map_err(|e| Refusal::frame(e, head))?;
                if len != HEADER_LEN + header.meta_len as usize || header.payload_len == 0 {
                    return Err(Refusal::malformed("an announcement that is not a header and metadata"));
                }
                let io = self.conns.get_mut(&id).expect("looked up above");
                let deferred = Deferred { header, meta: buf[HEADER_LEN..].to_vec() };
                io.receives.announce(imm.token, deferred).map_err(|e| Refusal::malformed(e.to_string()))?;
                io.conn.tx().ledger.release();
                self.retry_deferred(id);
            }
            Op::Cts if !wc.is_write_imm() => {
                let slot = &mut self.slots[index as usize];
                slot.buf.set_len(len);
                let grant = Grant::decode(&slot.buf.owner()[..len.min(GRANT_LEN + 1)])
                    .ok_or_else(|| Refusal::malformed("a malformed grant"))?;
                let conn = Arc::clone(&self.conns.get(&id).expect("looked up above").conn);
                let mut tx = conn.tx();
                tx.ledger.release();
                tx.sends.grant(imm.token, grant).map_err(|e| Refusal::malformed(e.to_string()))?;
                conn.send_frame(&mut tx, Out::Write { token: imm.token });
            }
            Op::Data if wc.is_write_imm() => {
                let io = self.conns.get_mut(&id).expect("looked up above");
                let grant = io
                    .receives
                    .written(imm.token, len, |grant| grant.buf.owner().len())
                    .map_err(|e| Refusal::malformed(e.to_string()))?;
                // Revoke the peer's access before the function sees the bytes.
                let payload = Payload::whole(grant.buf.into_inner());
                Self::dispatch(io, &self.process, self.options.linger, grant.header, &grant.meta, payload);
            }
            op => return Err(Refusal::malformed(format!("{op:?} by the wrong verb"))),
        }
        Ok(())
    }

    /// Grants buffers to the announcements of `id` that the pool can now hold.
    fn retry_deferred(&mut self, id: u32) {
        let Some(io) = self.conns.get_mut(&id) else { return };
        while let Some(d) = io.receives.next_waiting() {
            let Some(mut buf) = self.process.pool().get(d.header.payload_len as usize) else { return };
            buf.set_len(d.header.payload_len as usize);
            let buf = match Registered::new(&self.pd, buf, ACCESS_REMOTE_WRITE) {
                Ok(buf) => buf,
                Err(e) => {
                    tracing::warn!(conn = id, "cannot register a buffer for a large payload: {e}");
                    return;
                }
            };
            let (token, granted) = io
                .receives
                .grant_next(|d| InGrant { header: d.header, meta: d.meta, buf })
                .expect("an announcement seen above");
            let grant =
                Grant { addr: granted.buf.mr().addr(), rkey: granted.buf.mr().rkey(), len: granted.header.payload_len };
            let conn = Arc::clone(&io.conn);
            let mut tx = conn.tx();
            conn.send_frame(&mut tx, Out::Cts { token, grant });
        }
    }

    /// Serves one frame of connection `io` as every transport does ([`serve_frame`]); its
    /// answer returns the request's credit.
    fn dispatch(io: &mut ConnIo, process: &Process, linger: Duration, header: Header, meta: &[u8], input: Payload) {
        let action = serve_frame(process, &mut io.peer, &io.sink, header, meta, input);
        serve::act(&mut Serving { io, linger }, action);
    }

    /// Answers a protocol violation as the policy says; the connection closes once it is sent.
    fn refuse(&mut self, id: u32, refusal: Refusal) {
        let linger = self.options.linger;
        let Some(io) = self.conns.get_mut(&id) else { return };
        serve::refuse(&mut Serving { io, linger }, refusal);
    }

    fn socket_event(&mut self, id: u32) {
        let Some(io) = self.conns.get_mut(&id) else { return };
        let mut byte = [0u8; 64];
        match (&io.stream).read(&mut byte) {
            Ok(0) => {
                tracing::debug!(conn = id, "the client closed its connection");
                self.close(id);
            }
            Ok(_) => self.refuse(id, Refusal::malformed("bytes on the set-up connection after set-up")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(conn = id, "the set-up connection failed: {e}");
                self.close(id);
            }
        }
    }

    /// Tears a connection down: its QP first (so the device stops touching its memory), then
    /// the registrations of its transfers, then the socket.
    fn close(&mut self, id: u32) {
        let Some(mut io) = self.conns.remove(&id) else { return };
        self.by_qpn.remove(&io.qpn);
        // Its receives are no longer needed: those posted for it are used by the others or
        // stay posted until they are.
        self.srq_target -= self.options.credits as usize;
        {
            let mut tx = io.conn.tx();
            if let Some(qp) = tx.qp.take() {
                let _ = qp.set_error();
                drop(qp);
            }
            tx.queue.clear();
            tx.sends.clear();
        }
        io.receives.clear();
        let fd = io.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        tracing::debug!(conn = id, "connection closed");
    }

    /// Accepts the waiting connections: each is counted against the process's connection limits
    /// (refused at once beyond them) and waits for its endpoint without blocking the loop.
    fn accept(&mut self) {
        // A failed round (out of descriptors) is tried again by the next housekeeping.
        let (accepted, failed) = crate::handle::accept_waiting(&self.listener);
        self.accept_again = failed;
        for (mut stream, peer) in accepted {
            let admitted = match self.process.connections().admit(self.process.id(), peer.ip()) {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    tracing::debug!(%peer, "{}", refusal.text);
                    let _ = std::io::Write::write(&mut stream, &refusal_endpoint(STATUS_FULL).encode());
                    continue;
                }
            };
            let token = HANDSHAKE_BASE + self.next_handshake;
            self.next_handshake = (self.next_handshake + 1) % (usize::MAX - HANDSHAKE_BASE - 3);
            if let Err(e) = self.poll.registry().register(&mut stream, Token(token), Interest::READABLE) {
                tracing::warn!(%peer, "RDMA connection set-up failed: {e}");
                continue;
            }
            let deadline = Instant::now() + self.process.config().connection_limits.header_timeout;
            let handshake = Handshake { stream, bytes: [0; ENDPOINT_LEN], filled: 0, deadline, admitted };
            self.handshakes.insert(token, handshake);
            // Its endpoint may be here already.
            self.handshake_event(token);
        }
    }

    /// Reads what arrived of a set-up's endpoint; once whole, sets up the connection.
    fn handshake_event(&mut self, token: usize) {
        let Some(handshake) = self.handshakes.get_mut(&token) else { return };
        loop {
            match handshake.stream.read(&mut handshake.bytes[handshake.filled..]) {
                Ok(0) => {
                    // The peer closed before its endpoint was whole.
                    self.drop_handshake(token);
                    return;
                }
                Ok(n) => {
                    handshake.filled += n;
                    if handshake.filled == ENDPOINT_LEN {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_handshake(token);
                    return;
                }
            }
        }
        let Some(mut handshake) = self.handshakes.remove(&token) else { return };
        let _ = self.poll.registry().deregister(&mut handshake.stream);
        let peer = handshake.stream.peer_addr().ok();
        if let Err(e) = self.add(handshake) {
            tracing::warn!(?peer, "RDMA connection set-up failed: {e}");
        }
    }

    fn drop_handshake(&mut self, token: usize) {
        if let Some(mut handshake) = self.handshakes.remove(&token) {
            let _ = self.poll.registry().deregister(&mut handshake.stream);
        }
    }

    /// The set-up exchange once the client's endpoint is here, and the new connection's QP.
    fn add(&mut self, handshake: Handshake) -> io::Result<()> {
        let Handshake { stream, bytes, admitted, .. } = handshake;
        let mut std_stream = std::net::TcpStream::from(stream);
        std_stream.set_nonblocking(false)?;
        std_stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        std_stream.set_nodelay(true)?;
        let remote = Endpoint::decode(&bytes)?;
        let refuse = |stream: &mut std::net::TcpStream, status| {
            let _ = refusal_endpoint(status).write_to(stream);
        };
        if self.conns.len() >= self.options.max_connections {
            refuse(&mut std_stream, STATUS_FULL);
            return Err(io::Error::other("connection limit reached"));
        }
        let result = self.create(&mut std_stream, &remote, admitted);
        if result.is_err() {
            refuse(&mut std_stream, STATUS_INTERNAL);
        }
        result
    }

    fn create(
        &mut self,
        std_stream: &mut std::net::TcpStream,
        remote: &Endpoint,
        admitted: Admitted,
    ) -> io::Result<()> {
        let ip: IpAddr = std_stream.local_addr()?.ip();
        let port = if self.port.gid == [0; 16] { connect::local_port(&self.context, ip)? } else { self.port };
        let credits = self.options.credits;
        let slot_size = (remote.recv_size as usize).clamp(HEADER_LEN + GRANT_LEN, 1 << 20);
        let slot_count = 2 * credits + 4;
        let sq_depth = send_depth(credits);
        let (qp, inline_max) = match QueuePair::new(&self.pd, &self.cq, Some(&self.srq), sq_depth, 0, 64) {
            Ok(qp) => (qp, 64),
            Err(_) => (QueuePair::new(&self.pd, &self.cq, Some(&self.srq), sq_depth, 0, 0)?, 0),
        };
        let psn = connect::random_psn();
        connect::bring_up(&qp, &port, psn, remote)?;
        let slots = Registered::new(
            &self.pd,
            vec![0u8; slot_size * slot_count as usize].into_boxed_slice(),
            ACCESS_LOCAL_READ,
        )?;
        let id = self.next_conn;
        self.next_conn = self.next_conn.checked_add(1).unwrap_or(1);
        let qpn = qp.qp_num();
        let conn = Arc::new(Conn {
            id,
            tx: Mutex::new(Tx {
                qp: Some(qp),
                window: SendWindow::new(id, slot_count, sq_depth),
                queue: VecDeque::new(),
                ledger: CreditLedger::new(credits),
                sends: Sends::default(),
            }),
            slots,
            slot_size,
            inline_max,
            outputs: Arc::clone(&self.outputs),
            pd: Arc::clone(&self.pd),
        });
        let local = Endpoint {
            mtu: port.mtu,
            lid: port.lid,
            qpn,
            psn,
            gid: port.gid,
            credits,
            // Checked to fit in `EventLoop::new`: never saturates.
            recv_size: u32::try_from(self.options.recv_size).unwrap_or(u32::MAX),
            status: STATUS_OK,
        };
        // Registered before the answer: the client sends only after reading it.
        self.by_qpn.insert(qpn, id);
        let sink: Arc<dyn ResponseSink> = conn.clone();
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream.try_clone()?);
        self.poll.registry().register(&mut stream, Token(id as usize), Interest::READABLE)?;
        self.conns.insert(
            id,
            ConnIo {
                conn,
                sink,
                qpn,
                stream,
                receives: Receives::default(),
                state: ReadState::Open,
                peer: PeerSession::default(),
                _admitted: admitted,
            },
        );
        // Its credits' receives are posted before the answer too. (Should functions hold so
        // many receive buffers that not all can be posted, its messages wait in the device's
        // RNR retries until they are, never lost.)
        self.srq_target += credits as usize;
        self.refill_srq();
        std_stream.set_nonblocking(false)?;
        let answered = local.write_to(std_stream);
        let _ = std_stream.set_nonblocking(true);
        if let Err(e) = answered {
            self.close(id);
            return Err(e);
        }
        tracing::debug!(conn = id, qpn, "RDMA connection open");
        Ok(())
    }
}

/// The answer to a set-up that is refused with `status` (no queue pair).
fn refusal_endpoint(status: u32) -> Endpoint {
    Endpoint { mtu: 0, lid: 0, qpn: 0, psn: 0, gid: [0; 16], credits: 0, recv_size: 0, status }
}

/// Send work requests of one connection: its slots, plus one write per credit.
fn send_depth(credits: u32) -> u32 {
    3 * credits + 4
}

/// A connection of the I/O thread, as the [policy](praas_runtime::serve) sees it.
struct Serving<'a> {
    io: &'a mut ConnIo,
    linger: Duration,
}

/// How an RDMA connection moves bytes for the policy: a frame is posted from a send slot at once,
/// or queued behind what waits for room; its answer returns the credit of the request it answers.
/// A last frame's send is signaled: its completion frees the last slot, and the connection closes.
impl Link for Serving<'_> {
    #[inline]
    fn respond(&mut self, response: Response) {
        // An invocation's answer goes out as the process left it: no layout in between.
        let conn = &self.io.conn;
        conn.respond(&mut conn.tx(), response, true);
    }

    fn reply(&mut self, frame: OutFrame) {
        let (header, meta, payload) = frame.into_parts();
        let conn = &self.io.conn;
        conn.send_reply(&mut conn.tx(), header, meta, payload, true);
    }

    fn reply_last(&mut self, frame: OutFrame, end: End) {
        let (header, meta, payload) = frame.into_parts();
        let conn = &self.io.conn;
        let mut tx = conn.tx();
        tx.window.signal_next();
        // A refused message's credit is not returned: the connection closes.
        conn.send_reply(&mut tx, header, meta, payload, end == End::Answered);
    }

    fn discard_input(&mut self) {
        // Nothing waits: the messages of a connection that does not serve are dropped as they come.
    }

    #[inline]
    fn state(&mut self) -> &mut ReadState {
        &mut self.io.state
    }

    fn linger(&self) -> Duration {
        self.linger
    }
}
