//! Messages between the processes of one application, the sending side: the [`PeerDirectory`]
//! of the application's other processes and the connections to them. The receiving side of a
//! connection is [`crate::session::PeerSession`]; the handshake of both is [`praas_wire::handshake`].
//!
//! A process learns its peers (id, data-plane address, status) from the control plane and keeps
//! them in its [`PeerDirectory`]. [`PeerDirectory::put`] connects to a peer lazily, on the first
//! message for it, straight to the peer's data-plane port; connections are kept (several per
//! peer, so that concurrent puts do not queue behind each other) and reopened after a failure.
//!
//! Every connection between processes is authenticated by the application's secret, in both
//! directions, without sending it (challenge and response, [`praas_wire::auth`]):
//!
//! ```text
//! connecting process A                                  accepting process B
//!   Hello  meta "APP/A"  payload nonce_a (32 B)  ──▶
//!                                                ◀──  Hello  meta "APP/B"  payload nonce_b (32 B) ‖ proof_b (32 B)
//!   checks proof_b = HMAC(secret, "praas-server" ‖ nonce_a ‖ "APP/B")
//!   Hello  meta "APP/A"  payload proof_a (32 B)  ──▶   checks proof_a = HMAC(secret, "praas-client" ‖ nonce_b ‖ "APP/A")
//!                                                ◀──  Hello  status Ok
//!   Message     id n  meta key  payload bytes    ──▶   stores the message from A (the connection's identity)
//!                                                ◀──  MessageAck  id n  status Ok (or an error, text in meta)
//! ```
//!
//! The role labels keep a process's answer as a server from being replayed as its answer as a
//! client. A refused handshake, or a `Message` on a connection that has not completed one, gets a
//! frame with status [`Status::Unauthenticated`] and the connection closes. `docs/messages.md` has
//! the whole protocol and the semantics.

use rustc_hash::FxHashMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::mailbox::{Mailbox, MailboxError};
use praas_wire::auth::{Secret, NONCE_LEN, PROOF_LEN};
use praas_wire::handshake::{introduce, HandshakeWire, Introduction};
use praas_wire::lifecycle::ProcessStatus;
use praas_wire::protocol::{FlatBuf, FrameError, FrameLimits, Header, MessageKind, OwnedFrame, Status, HEADER_LEN};

/// Idle connections kept per peer; more concurrent puts open more, closed after use.
const MAX_IDLE_PER_PEER: usize = 8;
/// Largest frame accepted from a peer on the sending side: handshake answers and
/// acknowledgements carry at most an error text (or a nonce and a proof), never a payload, so a
/// peer (authenticated or not yet) cannot make us allocate more than this.
const ANSWER_LIMITS: FrameLimits = FrameLimits { max_frame: u16::MAX as usize + NONCE_LEN + PROOF_LEN };
/// How long a put may take when the caller gives no deadline of its own.
pub const DEFAULT_PUT_TIMEOUT: Duration = Duration::from_secs(30);

/// The peers of the application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerList {
    /// Every other process of the application the control plane knows.
    pub peers: Vec<PeerInfo>,
}

/// One process of the application, as the control plane last announced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its process id.
    pub id: String,
    /// Its data-plane address, `host:port`.
    pub addr: String,
    /// Its RDMA address (`host:port` of the RDMA transport's set-up port), if it serves RDMA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<String>,
    /// Its status.
    pub status: ProcessStatus,
}

/// Why a message was not delivered. [`PeerError::status`] gives the code a function sees.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The control plane never announced a process of that id.
    #[error("unknown process {dest:?}: this application's processes are {known:?}")]
    UnknownPeer {
        /// The id asked for.
        dest: String,
        /// The ids known.
        known: Vec<String>,
    },
    /// The destination is swapped out: messages to it are refused, not kept.
    #[error("process {dest:?} is swapped out: messages to it are refused until it is swapped in")]
    SwappedOut {
        /// The destination.
        dest: String,
    },
    /// The destination is not running (allocating, swapping, closing, closed, failed).
    #[error("process {dest:?} is {status}: it cannot receive messages now")]
    NotRunning {
        /// The destination.
        dest: String,
        /// Its status.
        status: ProcessStatus,
    },
    /// No connection to the destination could be opened, or it broke.
    #[error("process {dest:?} at {addr} is unreachable: {source}")]
    Unreachable {
        /// The destination.
        dest: String,
        /// Its address.
        addr: String,
        /// What failed.
        source: WireError,
    },
    /// The destination and this process could not prove to each other that they belong to the
    /// same application.
    #[error("authentication with process {dest:?} failed: {reason}")]
    Unauthenticated {
        /// The destination.
        dest: String,
        /// What failed.
        reason: String,
    },
    /// The destination did not confirm in time; the message may or may not have been stored.
    #[error("process {dest:?} did not confirm the message within {timeout:?}")]
    Timeout {
        /// The destination.
        dest: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The destination answered with an error (mailbox full, swapping out, ...).
    #[error("process {dest:?} refused the message: {status}: {message}")]
    Refused {
        /// The destination.
        dest: String,
        /// Its status.
        status: Status,
        /// Its explanation.
        message: String,
    },
    /// Key and message together exceed the frame limit.
    #[error("message of {size} bytes (key and data) exceeds the frame limit of {limit} bytes")]
    TooLarge {
        /// Bytes of key plus data.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A put to this process itself failed.
    #[error("put to this process: {0}")]
    Local(#[from] MailboxError),
    /// This process has no application secret, so it cannot prove to another process that it
    /// belongs to the application: it puts messages to itself only.
    #[error("cannot put a message to process {dest:?}: this process has no application secret")]
    NoSecret {
        /// The destination.
        dest: String,
    },
}

impl PeerError {
    /// The status a function sees for this error.
    pub fn status(&self) -> Status {
        match self {
            Self::UnknownPeer { .. } => Status::NotFound,
            Self::SwappedOut { .. } | Self::NotRunning { .. } | Self::Unreachable { .. } => Status::Unavailable,
            Self::Unauthenticated { .. } | Self::NoSecret { .. } => Status::Unauthenticated,
            Self::Timeout { .. } => Status::Timeout,
            Self::Refused { status, .. } => *status,
            Self::TooLarge { .. } => Status::TooLarge,
            Self::Local(err) => err.status(),
        }
    }
}

/// How recently a kept connection must have carried a put to be used again without looking
/// whether the peer closed it (the `MSG_PEEK` of [`Wire::alive`], one system call per put): a
/// peer closes a connection that works only after its idle timeout (300 s by default) or when it
/// stops, swaps out or moves, which the control plane announces ([`PeerDirectory::update`] drops
/// the kept connections then). A put on a connection the peer closed in between fails as one
/// that the peer closed during the put does.
const FRESH: Duration = Duration::from_secs(1);

/// An open, authenticated connection to a peer.
pub(crate) struct PeerConnection {
    pub(crate) wire: Wire,
    pub(crate) next_id: u64,
    /// When its last put was acknowledged with `Ok` (or its handshake completed); `None` after
    /// a refusal, which the peer may have closed the connection after.
    pub(crate) used: Option<Instant>,
}

/// How a connection reaches its peer.
pub(crate) enum Wire {
    /// A blocking TCP stream to the peer's data-plane port.
    Tcp(TcpWire),
    /// A queue pair to the peer's RDMA transport.
    Rdma(Box<dyn RdmaLink>),
}

/// A connection to a peer's RDMA transport, as the peer directory uses one. The data-plane
/// client's `RdmaClient` is one; an [`RdmaDialer`] opens them. (The directory lives below the
/// client and the RDMA transport, so it reaches RDMA through this seam, given to it by the
/// process's start-up: [`PeerDirectory::enable_rdma`].)
pub trait RdmaLink: Send {
    /// Bounds the next send or receive.
    fn set_timeout(&mut self, timeout: Duration);
    /// Sends one frame (the lengths in `header` are those of `meta` and `payload`).
    fn send_frame(&mut self, header: Header, meta: &[u8], payload: &[u8]) -> Result<(), LinkError>;
    /// Receives the next frame.
    fn recv_frame(&mut self) -> Result<OwnedFrame, LinkError>;
    /// Whether the connection still looks usable.
    fn alive(&mut self) -> bool;
    /// Handles what has arrived without waiting (a large answer's grant goes out here too);
    /// whether [`RdmaLink::recv_frame`] would return at once: a frame is there, or the
    /// connection broke.
    fn frame_ready(&mut self) -> bool;
    /// Arms the link's wake-up and returns the descriptors that become readable when something
    /// arrives for it (its completion channel and its set-up socket), to wait on together with
    /// others (`remote::wait_any`); `None` if something arrived meanwhile: ask
    /// [`RdmaLink::frame_ready`] again.
    fn wait_fds(&mut self) -> Option<[std::os::fd::RawFd; 2]>;
}

/// Why an RDMA link failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Its timeout passed.
    #[error("timed out")]
    Timeout,
    /// It failed otherwise.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// Opens RDMA links to the peers that serve RDMA.
pub trait RdmaDialer: Send + Sync + std::fmt::Debug {
    /// Connects from the RDMA device `device` to the RDMA transport at `addr` within `timeout`,
    /// for frames of at most `max_frame` bytes.
    fn dial(
        &self,
        addr: &str,
        device: &str,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<Box<dyn RdmaLink>, LinkError>;
}

/// A blocking TCP stream and the socket timeouts last set on it.
pub(crate) struct TcpWire {
    stream: TcpStream,
    /// A blocking call returns at the latest then, and the loop looks at its deadline again;
    /// they are set again only when a deadline is nearer than what is set, or much farther
    /// (most puts set none: two system calls saved).
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

/// Which wire a put went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerWire {
    /// TCP, to the peer's data-plane port.
    Tcp,
    /// RDMA verbs, to the peer's RDMA transport.
    Rdma,
}

/// Exchanges with peers by wire: the messages this process's puts delivered
/// ([`PeerDirectory::delivered`]), or the remote invocations its callees answered
/// ([`PeerDirectory::remote_calls`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCounts {
    /// Over TCP.
    pub tcp: u64,
    /// Over RDMA.
    pub rdma: u64,
}

/// A [`DeliveryCounts`] being counted.
#[derive(Debug, Default)]
struct WireCounters {
    tcp: AtomicU64,
    rdma: AtomicU64,
}

impl WireCounters {
    fn add(&self, wire: PeerWire) {
        match wire {
            PeerWire::Tcp => self.tcp.fetch_add(1, Ordering::Relaxed),
            PeerWire::Rdma => self.rdma.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn get(&self) -> DeliveryCounts {
        DeliveryCounts { tcp: self.tcp.load(Ordering::Relaxed), rdma: self.rdma.load(Ordering::Relaxed) }
    }
}

pub(crate) struct Peer {
    addr: String,
    rdma: Option<String>,
    /// Authenticated connections not in use.
    idle: Mutex<Vec<PeerConnection>>,
}

impl Peer {
    /// Its address on `wire`, as errors name it: `host:port`, or `rdma://host:port`.
    pub(crate) fn addr_of(&self, wire: PeerWire) -> String {
        match (wire, &self.rdma) {
            (PeerWire::Rdma, Some(rdma)) => format!("rdma://{rdma}"),
            _ => self.addr.clone(),
        }
    }
}

struct Entry {
    status: ProcessStatus,
    peer: Arc<Peer>,
}

/// The other processes of this process's application, and the connections to them.
pub struct PeerDirectory {
    app: String,
    id: String,
    /// `None`: no put leaves this process.
    secret: Option<Secret>,
    limits: FrameLimits,
    mailbox: Arc<Mailbox>,
    peers: RwLock<FxHashMap<String, Entry>>,
    /// The RDMA device this process serves on: set, puts to peers that serve RDMA use it.
    /// The RDMA device and the dialer puts to peers that serve RDMA use, once enabled.
    rdma: std::sync::OnceLock<(String, Arc<dyn RdmaDialer>)>,
    delivered: WireCounters,
    /// Remote invocations answered (successfully or not) by the callee (`crate::remote`).
    remote_calls: WireCounters,
}

impl std::fmt::Debug for PeerDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDirectory")
            .field("app", &self.app)
            .field("id", &self.id)
            .field("peers", &self.known())
            .finish()
    }
}

/// Whether an error of a blocking socket call means its timeout passed.
fn timed_out(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Time left until `deadline`, or `None` if it passed.
fn left(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
}

/// Whether a socket timeout of `set` must be set again to wait `left`: it would outlast the
/// deadline, or wake the caller many times before it.
fn rearm(set: Option<Duration>, left: Duration) -> bool {
    !matches!(set, Some(set) if set <= left && set >= left / 2)
}

/// Why a connection to a peer could not be opened, or a frame did not cross it: the source of
/// [`PeerError::Unreachable`] (the I/O error stays its source in turn).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// The socket failed.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// The socket failed while `doing` this.
    #[error("{doing}: {source}")]
    While {
        /// `sending`, `receiving`.
        doing: &'static str,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The peer sent what is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    /// The peer's answer is larger than an answer may be.
    #[error("protocol error: an answer of {0} bytes")]
    AnswerTooLarge(usize),
    /// A frame to send has more metadata or payload than its length fields can say (bytes of both).
    #[error("a frame of {0} bytes does not fit its length fields")]
    FrameTooLarge(usize),
    /// The RDMA connection failed.
    #[error(transparent)]
    Rdma(Box<dyn std::error::Error + Send + Sync>),
    /// The peer's address did not resolve.
    #[error("cannot resolve: {0}")]
    Resolve(#[source] io::Error),
    /// The peer's address resolved to no address.
    #[error("no address to connect to")]
    NoAddress,
    /// No address of the peer took the connection (the last one's failure).
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// The peer answered a message with another frame than its acknowledgement.
    #[error("unexpected {kind:?} frame (id {id}) in answer to message {message}")]
    UnexpectedAnswer {
        /// The frame's kind.
        kind: MessageKind,
        /// The frame's id.
        id: u64,
        /// The message's id.
        message: u64,
    },
}

impl Wire {
    /// Sends one frame (the lengths in `header` are set from `meta` and `payload`) by `deadline`.
    pub(crate) fn send(
        &mut self,
        header: Header,
        meta: &[u8],
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(), WireError> {
        let too_large = |_| WireError::FrameTooLarge(meta.len() + payload.len());
        let header = Header {
            meta_len: u16::try_from(meta.len()).map_err(too_large)?,
            payload_len: u32::try_from(payload.len()).map_err(too_large)?,
            ..header
        };
        match self {
            Self::Tcp(tcp) => tcp.send(header, meta, payload, deadline),
            Self::Rdma(client) => {
                client.set_timeout(left(deadline).ok_or(WireError::Timeout)?);
                client.send_frame(header, meta, payload).map_err(WireError::from)
            }
        }
    }

    /// Reads one frame by `deadline`.
    pub(crate) fn recv(&mut self, limits: FrameLimits, deadline: Instant) -> Result<OwnedFrame, WireError> {
        match self {
            Self::Tcp(tcp) => tcp.recv(limits, deadline),
            Self::Rdma(client) => {
                client.set_timeout(left(deadline).ok_or(WireError::Timeout)?);
                let frame = client.recv_frame().map_err(WireError::from)?;
                if frame.meta.len() + frame.payload.len() > limits.max_frame {
                    return Err(WireError::AnswerTooLarge(frame.payload.len()));
                }
                Ok(frame)
            }
        }
    }

    /// Whether the connection still looks usable.
    pub(crate) fn alive(&mut self) -> bool {
        match self {
            Self::Tcp(tcp) => tcp.alive(),
            Self::Rdma(client) => client.alive(),
        }
    }

    pub(crate) fn kind(&self) -> PeerWire {
        match self {
            Self::Tcp(_) => PeerWire::Tcp,
            Self::Rdma(_) => PeerWire::Rdma,
        }
    }

    /// Whether an RDMA link's next frame (or its failure) is there already, after handling what
    /// arrived without waiting; `false` for TCP, whose socket [`Wire::wait_fds`] gives to wait on.
    pub(crate) fn frame_ready(&mut self) -> bool {
        match self {
            Self::Tcp(_) => false,
            Self::Rdma(link) => link.frame_ready(),
        }
    }

    /// Adds to `fds` the descriptors that become readable when the next frame arrives, for
    /// waiting on several wires at once: a TCP socket, or an RDMA link's completion channel and
    /// set-up socket (its wake-up armed). `false` (nothing added) if something arrived on the
    /// RDMA link meanwhile: look at [`Wire::frame_ready`] again.
    pub(crate) fn wait_fds(&mut self, fds: &mut Vec<std::os::fd::RawFd>) -> bool {
        match self {
            Self::Tcp(tcp) => {
                fds.push(tcp.stream.as_raw_fd());
                true
            }
            Self::Rdma(link) => match link.wait_fds() {
                Some(link_fds) => {
                    fds.extend(link_fds);
                    true
                }
                None => false,
            },
        }
    }
}

impl From<LinkError> for WireError {
    fn from(err: LinkError) -> Self {
        match err {
            LinkError::Timeout => Self::Timeout,
            LinkError::Failed(source) => Self::Rdma(source),
        }
    }
}

impl TcpWire {
    /// Sends one frame (header, metadata, payload) with vectored writes, by `deadline`.
    fn send(&mut self, header: Header, meta: &[u8], payload: &[u8], deadline: Instant) -> Result<(), WireError> {
        let head = header.encode();
        let mut flat = FlatBuf::new();
        // A small frame leaves copied into one buffer by one `send` (cheaper than a `writev` of
        // its three parts), as the SDK and the transports send theirs.
        let flat_parts: [&[u8]; 1];
        let parts: &[&[u8]] = match flat.fill_parts([&head[..], meta, payload]) {
            Some(whole) => {
                flat_parts = [whole];
                &flat_parts
            }
            None => &[&head, meta, payload],
        };
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut sent = 0usize;
        while sent < total {
            let left = left(deadline).ok_or(WireError::Timeout)?;
            if rearm(self.write_timeout, left) {
                self.stream.set_write_timeout(Some(left)).map_err(WireError::Io)?;
                self.write_timeout = Some(left);
            }
            let mut skip = sent;
            let mut iov = Vec::with_capacity(parts.len());
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                iov.push(IoSlice::new(&part[skip..]));
                skip = 0;
            }
            let written = match iov.as_slice() {
                [one] => self.stream.write(one),
                several => self.stream.write_vectored(several),
            };
            match written {
                Ok(0) => {
                    let source = io::Error::new(io::ErrorKind::WriteZero, "the connection takes no more bytes");
                    return Err(WireError::While { doing: "sending", source });
                }
                Ok(n) => sent += n,
                // The socket's timeout passed: look at the deadline again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted || timed_out(&e) => {}
                Err(source) => return Err(WireError::While { doing: "sending", source }),
            }
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), WireError> {
        let mut filled = 0;
        while filled < buf.len() {
            let left = left(deadline).ok_or(WireError::Timeout)?;
            if rearm(self.read_timeout, left) {
                self.stream.set_read_timeout(Some(left)).map_err(WireError::Io)?;
                self.read_timeout = Some(left);
            }
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => {
                    let closed = io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection");
                    return Err(WireError::Io(closed));
                }
                Ok(n) => filled += n,
                // The socket's timeout passed: look at the deadline again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted || timed_out(&e) => {}
                Err(source) => return Err(WireError::While { doing: "receiving", source }),
            }
        }
        Ok(())
    }

    fn recv(&mut self, limits: FrameLimits, deadline: Instant) -> Result<OwnedFrame, WireError> {
        let mut head = [0u8; HEADER_LEN];
        self.read_exact(&mut head, deadline)?;
        let header = Header::decode(&head, limits)?;
        let mut body = vec![0u8; header.body_len()];
        self.read_exact(&mut body, deadline)?;
        let payload = body.split_off(header.meta_len as usize);
        Ok(OwnedFrame { header, meta: body, payload })
    }

    /// Whether the connection still looks usable: the peer has not closed it and sent nothing
    /// unasked. One non-blocking `recv(MSG_PEEK)`.
    fn alive(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: `byte` is one writable byte that outlives the call; the fd is our open socket.
        let n = unsafe {
            libc::recv(self.stream.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        };
        n < 0 && matches!(io::Error::last_os_error().kind(), io::ErrorKind::WouldBlock)
    }
}

/// A peer connection with the deadline of its handshake.
struct TimedWire<'a> {
    conn: &'a mut PeerConnection,
    deadline: Instant,
}

impl HandshakeWire for TimedWire<'_> {
    type Error = WireError;

    fn send_frame(&mut self, header: Header, meta: &[u8], payload: &[u8]) -> Result<(), WireError> {
        self.conn.wire.send(header, meta, payload, self.deadline)
    }

    fn recv_frame(&mut self) -> Result<OwnedFrame, WireError> {
        self.conn.wire.recv(ANSWER_LIMITS, self.deadline)
    }
}

impl PeerDirectory {
    /// The directory of process `id` of `app`, which authenticates with `secret` and delivers
    /// messages to itself into `mailbox`. It knows no peer until [`PeerDirectory::update`].
    /// Without a secret, every put to another process fails with [`PeerError::NoSecret`].
    pub fn new(app: &str, id: &str, secret: Option<Secret>, max_frame: usize, mailbox: Arc<Mailbox>) -> Self {
        Self {
            app: app.to_owned(),
            id: id.to_owned(),
            secret,
            limits: FrameLimits { max_frame },
            mailbox,
            peers: RwLock::new(FxHashMap::default()),
            rdma: std::sync::OnceLock::new(),
            delivered: WireCounters::default(),
            remote_calls: WireCounters::default(),
        }
    }

    /// Says that this process serves RDMA on `device`: from now on, puts to peers that serve RDMA
    /// too go over RDMA links `dialer` opens (over TCP if one cannot be opened, with a log line).
    /// The process's start-up calls it with the RDMA transport; the first device named stays.
    pub fn enable_rdma(&self, device: &str, dialer: Arc<dyn RdmaDialer>) {
        let _ = self.rdma.set((device.to_owned(), dialer));
    }

    /// The RDMA device puts use, if this process serves RDMA.
    pub fn rdma_device(&self) -> Option<&str> {
        self.rdma.get().map(|(device, _)| device.as_str())
    }

    /// Messages this process's puts delivered to peers so far, by wire.
    pub fn delivered(&self) -> DeliveryCounts {
        self.delivered.get()
    }

    /// Remote invocations this process made that their callees answered so far (with an
    /// output or an error), by wire; calls that timed out or whose connection failed are not
    /// counted.
    pub fn remote_calls(&self) -> DeliveryCounts {
        self.remote_calls.get()
    }

    /// Counts a remote invocation answered over `wire` (`crate::remote`).
    pub(crate) fn count_remote_call(&self, wire: PeerWire) {
        self.remote_calls.add(wire);
    }

    /// Replaces the peers with those the control plane announced. Connections to a peer whose
    /// address is unchanged are kept; the others close.
    pub fn update(&self, peers: Vec<PeerInfo>) {
        let mut map = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let mut next = FxHashMap::with_capacity_and_hasher(peers.len(), Default::default());
        for info in peers {
            let peer = match map.remove(&info.id) {
                Some(old) if old.peer.addr == info.addr && old.peer.rdma == info.rdma => old.peer,
                _ => Arc::new(Peer { addr: info.addr, rdma: info.rdma, idle: Mutex::new(Vec::new()) }),
            };
            if info.status != ProcessStatus::Allocated {
                peer.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            next.insert(info.id, Entry { status: info.status, peer });
        }
        *map = next;
    }

    /// Takes `info`, a peer's entry the control plane sent in answer to a swap-in request,
    /// if the directory still says that peer is swapped out or swapping (a peer list that came
    /// since is newer and stays).
    pub fn swapped_in(&self, info: PeerInfo) {
        let mut map = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = map.get_mut(&info.id) else { return };
        if !matches!(entry.status, ProcessStatus::SwappedOut | ProcessStatus::SwappingOut | ProcessStatus::SwappingIn) {
            return;
        }
        entry.status = info.status;
        if entry.peer.addr != info.addr || entry.peer.rdma != info.rdma {
            entry.peer = Arc::new(Peer { addr: info.addr, rdma: info.rdma, idle: Mutex::new(Vec::new()) });
        }
    }

    /// The peers as last announced, sorted by id.
    pub fn list(&self) -> Vec<PeerInfo> {
        let map = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<PeerInfo> = map
            .iter()
            .map(|(id, e)| PeerInfo {
                id: id.clone(),
                addr: e.peer.addr.clone(),
                rdma: e.peer.rdma.clone(),
                status: e.status,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// The ids of the known peers, sorted.
    pub fn known(&self) -> Vec<String> {
        self.list().into_iter().map(|p| p.id).collect()
    }

    /// Closes every idle connection (swap-out; connections in use close when their put ends).
    pub fn disconnect_all(&self) {
        let map = self.peers.read().unwrap_or_else(|p| p.into_inner());
        for entry in map.values() {
            entry.peer.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// Delivers `data` under `key` to process `dest` (this process's own id: its own mailbox)
    /// and returns once the destination has stored it, or with why not, within `timeout`.
    pub fn put(&self, dest: &str, key: &str, data: &[u8], timeout: Duration) -> Result<(), PeerError> {
        if dest == self.id {
            return Ok(self.mailbox.put(&self.id, key, data.to_vec())?);
        }
        let Some(secret) = &self.secret else {
            return Err(PeerError::NoSecret { dest: dest.to_owned() });
        };
        let size = key.len() + data.len();
        if size > self.limits.max_frame || key.len() > u16::MAX as usize || data.len() > u32::MAX as usize {
            return Err(PeerError::TooLarge { size, limit: self.limits.max_frame });
        }
        let peer = {
            let map = self.peers.read().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = map.get(dest) else {
                drop(map);
                return Err(PeerError::UnknownPeer { dest: dest.to_owned(), known: self.known() });
            };
            match entry.status {
                ProcessStatus::Allocated => Arc::clone(&entry.peer),
                ProcessStatus::SwappedOut => return Err(PeerError::SwappedOut { dest: dest.to_owned() }),
                status => return Err(PeerError::NotRunning { dest: dest.to_owned(), status }),
            }
        };
        let started = Instant::now();
        let deadline = started.checked_add(timeout).unwrap_or_else(|| started + DEFAULT_PUT_TIMEOUT);
        let timeout_error = || PeerError::Timeout { dest: dest.to_owned(), timeout };
        let reused = loop {
            let candidate = peer.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match candidate {
                Some(mut conn) => {
                    if conn.used.is_some_and(|used| used.elapsed() < FRESH) || conn.wire.alive() {
                        break Some(conn);
                    }
                }
                None => break None,
            }
        };
        let mut conn = match reused {
            Some(conn) => conn,
            None => self.open(dest, &peer, secret, deadline)?,
        };
        let kind = conn.wire.kind();
        let unreachable =
            |source: WireError| PeerError::Unreachable { dest: dest.to_owned(), addr: peer.addr_of(kind), source };
        let id = conn.next_id;
        conn.next_id += 1;
        let header = Header { kind: MessageKind::Message, meta_len: 0, status: 0, id, timeout_ms: 0, payload_len: 0 };
        let wire = |err: WireError| match err {
            WireError::Timeout => timeout_error(),
            err => unreachable(err),
        };
        conn.wire.send(header, key.as_bytes(), data, deadline).map_err(wire)?;
        let ack = conn.wire.recv(ANSWER_LIMITS, deadline).map_err(wire)?;
        let status = Status::from_code(ack.header.status);
        let answered = matches!(ack.header.kind, MessageKind::MessageAck | MessageKind::Response);
        if !answered || (ack.header.kind == MessageKind::MessageAck && ack.header.id != id) {
            return Err(unreachable(WireError::UnexpectedAnswer {
                kind: ack.header.kind,
                id: ack.header.id,
                message: id,
            }));
        }
        // The connection is in step with the peer either way: keep it for the next put (a
        // refusal that closes the connection is noticed by `alive` then).
        let wire = conn.wire.kind();
        conn.used = (status == Status::Ok).then(Instant::now);
        {
            let mut idle = peer.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_PER_PEER {
                idle.push(conn);
            }
        }
        if status != Status::Ok {
            let message = String::from_utf8_lossy(&ack.meta).into_owned();
            return Err(PeerError::Refused { dest: dest.to_owned(), status, message });
        }
        self.delivered.add(wire);
        Ok(())
    }

    /// The peer `dest` if it is announced and running (remote invocations, `crate::remote`):
    /// [`PeerError::UnknownPeer`], [`PeerError::SwappedOut`] or [`PeerError::NotRunning`] if not.
    pub(crate) fn running_peer(&self, dest: &str) -> Result<Arc<Peer>, PeerError> {
        let map = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = map.get(dest) else {
            drop(map);
            return Err(PeerError::UnknownPeer { dest: dest.to_owned(), known: self.known() });
        };
        match entry.status {
            ProcessStatus::Allocated => Ok(Arc::clone(&entry.peer)),
            ProcessStatus::SwappedOut => Err(PeerError::SwappedOut { dest: dest.to_owned() }),
            status => Err(PeerError::NotRunning { dest: dest.to_owned(), status }),
        }
    }

    /// An authenticated connection to `dest` (`peer`) for one exchange: a kept one that is still
    /// alive, else a new one opened by `deadline`. Hand it back with [`PeerDirectory::keep`].
    pub(crate) fn connection(&self, dest: &str, peer: &Peer, deadline: Instant) -> Result<PeerConnection, PeerError> {
        let Some(secret) = &self.secret else {
            return Err(PeerError::NoSecret { dest: dest.to_owned() });
        };
        loop {
            let candidate = peer.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match candidate {
                Some(mut conn) => {
                    if conn.wire.alive() {
                        return Ok(conn);
                    }
                }
                None => return self.open(dest, peer, secret, deadline),
            }
        }
    }

    /// Keeps `conn`, in step with `peer` (every answer it was sent read), for the next exchange.
    pub(crate) fn keep(&self, peer: &Peer, conn: PeerConnection) {
        let mut idle = peer.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_PER_PEER {
            idle.push(conn);
        }
    }

    /// The largest frame this process takes (a remote invocation's answer too).
    pub(crate) fn max_frame(&self) -> usize {
        self.limits.max_frame
    }

    /// Opens and authenticates a connection to `dest`: over RDMA when both ends serve it (over
    /// TCP if that fails for another reason than the peer's refusal), else over TCP.
    fn open(&self, dest: &str, peer: &Peer, secret: &Secret, deadline: Instant) -> Result<PeerConnection, PeerError> {
        if let (Some((device, dialer)), Some(rdma)) = (self.rdma.get(), &peer.rdma) {
            match self.connect_rdma(dest, rdma, device, dialer.as_ref(), secret, deadline) {
                Ok(conn) => return Ok(conn),
                Err(err @ (PeerError::Unauthenticated { .. } | PeerError::Timeout { .. })) => return Err(err),
                Err(err) => tracing::warn!(dest, "messages go over TCP: {err}"),
            }
        }
        let wire = self.connect_tcp(dest, &peer.addr, deadline)?;
        self.authenticate(dest, &peer.addr, wire, secret, deadline)
    }

    /// Opens an RDMA connection to `dest`'s RDMA transport at `addr`, on `device`.
    fn connect_rdma(
        &self,
        dest: &str,
        addr: &str,
        device: &str,
        dialer: &dyn RdmaDialer,
        secret: &Secret,
        deadline: Instant,
    ) -> Result<PeerConnection, PeerError> {
        let timeout =
            left(deadline).ok_or_else(|| PeerError::Timeout { dest: dest.to_owned(), timeout: Duration::ZERO })?;
        let url = format!("rdma://{addr}");
        let link = dialer.dial(addr, device, timeout, self.limits.max_frame).map_err(|e| PeerError::Unreachable {
            dest: dest.to_owned(),
            addr: url.clone(),
            source: WireError::from(e),
        })?;
        self.authenticate(dest, &url, Wire::Rdma(link), secret, deadline)
    }

    /// Opens a TCP connection to `dest` at `addr`.
    fn connect_tcp(&self, dest: &str, addr: &str, deadline: Instant) -> Result<Wire, PeerError> {
        let unreachable =
            |source: WireError| PeerError::Unreachable { dest: dest.to_owned(), addr: addr.to_owned(), source };
        let timeout_error =
            |started: Instant| PeerError::Timeout { dest: dest.to_owned(), timeout: deadline - started };
        let started = Instant::now();
        let addrs: Vec<_> = addr.to_socket_addrs().map_err(|e| unreachable(WireError::Resolve(e)))?.collect();
        let mut last = WireError::NoAddress;
        let mut stream = None;
        for sock in addrs {
            let Some(left) = left(deadline) else { return Err(timeout_error(started)) };
            match TcpStream::connect_timeout(&sock, left) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) if timed_out(&e) => return Err(timeout_error(started)),
                Err(e) => last = WireError::Connect(e),
            }
        }
        let stream = stream.ok_or_else(|| unreachable(last))?;
        stream.set_nodelay(true).map_err(|e| unreachable(WireError::Io(e)))?;
        Ok(Wire::Tcp(TcpWire { stream, read_timeout: None, write_timeout: None }))
    }

    /// Runs the handshake with `dest` (at `addr`) over `wire`: both sides prove they hold the
    /// application's `secret`.
    fn authenticate(
        &self,
        dest: &str,
        addr: &str,
        wire: Wire,
        secret: &Secret,
        deadline: Instant,
    ) -> Result<PeerConnection, PeerError> {
        let started = Instant::now();
        let mut conn = PeerConnection { wire, next_id: 1, used: Some(Instant::now()) };
        let introduction =
            Introduction { app: &self.app, me: &self.id, key: secret.expose(), client: false, to: Some(dest) };
        let failed = match introduce(&mut TimedWire { conn: &mut conn, deadline }, &introduction) {
            Ok(()) => return Ok(conn),
            Err(failed) => failed,
        };
        Err(match failed.wire_or_refusal() {
            Err(reason) => PeerError::Unauthenticated { dest: dest.to_owned(), reason: format!("at {addr}: {reason}") },
            Ok(WireError::Timeout) => PeerError::Timeout { dest: dest.to_owned(), timeout: deadline - started },
            Ok(err) => PeerError::Unreachable { dest: dest.to_owned(), addr: addr.to_owned(), source: err },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_the_status_a_function_sees() {
        let dest = || "p1".to_owned();
        let cases = [
            (PeerError::UnknownPeer { dest: dest(), known: vec![] }, Status::NotFound),
            (PeerError::SwappedOut { dest: dest() }, Status::Unavailable),
            (PeerError::NotRunning { dest: dest(), status: ProcessStatus::Closing }, Status::Unavailable),
            (
                PeerError::Unreachable { dest: dest(), addr: "a".into(), source: WireError::NoAddress },
                Status::Unavailable,
            ),
            (PeerError::Unauthenticated { dest: dest(), reason: "r".into() }, Status::Unauthenticated),
            (PeerError::Timeout { dest: dest(), timeout: Duration::from_secs(1) }, Status::Timeout),
            (PeerError::Refused { dest: dest(), status: Status::Overloaded, message: "m".into() }, Status::Overloaded),
            (PeerError::TooLarge { size: 2, limit: 1 }, Status::TooLarge),
            (PeerError::Local(MailboxError::Paused), Status::Overloaded),
            (PeerError::NoSecret { dest: dest() }, Status::Unauthenticated),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status, "{err}");
        }
    }

    #[test]
    fn a_put_to_itself_needs_no_peer_and_large_messages_are_refused_before_sending() {
        let mailbox = Arc::new(Mailbox::new());
        let peers = PeerDirectory::new("app", "me", Secret::new("secret").ok(), 16, Arc::clone(&mailbox));
        peers.put("me", "k", b"local", Duration::ZERO).unwrap();
        assert_eq!(mailbox.get(Some("me"), "k", Duration::ZERO).unwrap().1, b"local");
        peers.update(vec![PeerInfo {
            id: "far".into(),
            addr: "127.0.0.1:1".into(),
            rdma: None,
            status: ProcessStatus::Allocated,
        }]);
        let err = peers.put("far", "k", &[0; 16], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, PeerError::TooLarge { size: 17, limit: 16 }), "{err}");
        assert_eq!(peers.known(), ["far"]);
    }

    #[test]
    fn without_a_secret_puts_to_other_processes_fail_before_connecting() {
        let mailbox = Arc::new(Mailbox::new());
        let peers = PeerDirectory::new("app", "me", None, 1 << 20, Arc::clone(&mailbox));
        // A listener that would see a connection if the put tried one.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        peers.update(vec![PeerInfo {
            id: "far".into(),
            addr: listener.local_addr().unwrap().to_string(),
            rdma: None,
            status: ProcessStatus::Allocated,
        }]);
        let err = peers.put("far", "k", b"x", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(&err, PeerError::NoSecret { dest } if dest == "far"), "{err}");
        assert_eq!(err.status(), Status::Unauthenticated);
        assert!(err.to_string().contains("no application secret"), "{err}");
        assert_eq!(listener.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock, "no connection was opened");
        // Its own mailbox needs no secret.
        peers.put("me", "k", b"local", Duration::ZERO).unwrap();
        assert_eq!(mailbox.len(), 1);
    }

    #[test]
    fn wire_errors_keep_the_io_error_and_read_as_they_did() {
        use std::error::Error as _;
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let err = WireError::While { doing: "sending", source: reset };
        assert_eq!(err.to_string(), format!("sending: {}", io::Error::from(io::ErrorKind::ConnectionReset)));
        let source = err.source().and_then(|s| s.downcast_ref::<io::Error>()).expect("the io::Error is the source");
        assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
        let closed = WireError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection"));
        assert_eq!(closed.to_string(), "the peer closed the connection");
        let bad = WireError::from(FrameError::BadVersion(9));
        assert_eq!(bad.to_string(), format!("protocol error: {}", FrameError::BadVersion(9)));
    }
}
