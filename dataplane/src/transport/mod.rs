//! Transports: how invocations reach a process and how its responses leave.
//!
//! Every transport does the same three things, and nothing else:
//! 1. receives frames into buffers of the process's [`BufferPool`](crate::buffer::BufferPool)
//!    (which io_uring and RDMA transports register with the kernel or the NIC once per buffer),
//! 2. decodes them with [`decode_frame`](crate::protocol::decode_frame) and hands each invocation,
//!    with its payload still in the receive buffer, to [`Process::dispatch`](crate::process::Process::dispatch),
//! 3. sends each [`Response`](crate::process::Response) as header, error text and the function's
//!    output buffer, without copying the output, either at once (inline functions) or when a worker
//!    hands it to the connection's [`ResponseSink`](crate::process::ResponseSink).
//!
//! [`tcp`] is the portable implementation over mio; [`uring`] is the Linux one over io_uring, the
//! default where the kernel allows it ([`TransportKind::Auto`], `docs/uring.md`). A transport runs
//! on its own thread ([`Transport::spawn`]) and stops through the [`ServerHandle`] it returns.

pub mod policy;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod tcp;
#[cfg(target_os = "linux")]
pub mod uring;

use std::fmt;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use std::sync::Arc;

use crate::buffer::Payload;
use crate::invocation::Outcome;
use crate::process::{Dispatched, Process, Response, ResponseSink};
use crate::protocol::{Header, MessageKind, Status, HEADER_LEN};
use crate::session::PeerSession;

pub use policy::ConnectionOptions;

/// Which TCP data-plane transport a process serves with, or a client connects with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// io_uring where the kernel allows it (probed once), else mio with one log line saying why.
    #[default]
    Auto,
    /// io_uring; fails where the kernel does not allow it.
    Uring,
    /// mio (epoll).
    Mio,
}

impl TransportKind {
    /// Resolves `Auto` to what this kernel supports; `Uring` and `Mio` stay as they are.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if uring_available() => Self::Uring,
            Self::Auto => Self::Mio,
            kind => kind,
        }
    }

    /// The name used on command lines and in benchmark output: `auto`, `uring`, `mio`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Mio => "mio",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TransportKind {
    type Err = UnknownTransport;
    fn from_str(s: &str) -> Result<Self, UnknownTransport> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "mio" | "tcp" | "epoll" => Ok(Self::Mio),
            other => Err(UnknownTransport(other.to_owned())),
        }
    }
}

/// A transport name [`TransportKind`] does not know (the name given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}: expected uring, mio or auto")]
pub struct UnknownTransport(pub String);

/// Whether io_uring serves here: probed once per process; the first negative answer logs why.
pub fn uring_available() -> bool {
    #[cfg(target_os = "linux")]
    {
        uring::probe::available()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Binds the transport of `kind` (resolving `Auto`) for `process` on `addr`.
pub fn bind(
    kind: TransportKind,
    addr: SocketAddr,
    process: std::sync::Arc<crate::process::Process>,
) -> std::io::Result<Box<dyn Transport>> {
    match kind.resolve() {
        #[cfg(target_os = "linux")]
        TransportKind::Uring => {
            Ok(Box::new(uring::UringTransport::bind(addr, process, uring::UringOptions::default())?))
        }
        _ => Ok(Box::new(tcp::TcpTransport::bind(addr, process, tcp::TcpOptions::default())?)),
    }
}

/// A transport serving one process.
pub trait Transport: Send + 'static {
    /// Short name: `tcp`, `uring`, `rdma`.
    fn name(&self) -> &'static str;
    /// The address clients connect to.
    fn local_addr(&self) -> SocketAddr;
    /// Serves on a new thread until the returned handle stops it.
    fn spawn(self: Box<Self>) -> std::io::Result<ServerHandle>;
}

/// A running transport; stops it when told to (or when dropped).
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle").field("addr", &self.addr).finish()
    }
}

impl ServerHandle {
    /// Wraps a transport's thread and the closure that makes it stop.
    pub fn new(addr: SocketAddr, stop: Box<dyn FnOnce() + Send>, thread: JoinHandle<std::io::Result<()>>) -> Self {
        Self { addr, stop: Some(stop), thread: Some(thread) }
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the transport stops by itself (an error) or forever.
    pub fn join(mut self) -> std::io::Result<()> {
        self.stop = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("transport thread panicked")),
            None => Ok(()),
        }
    }

    /// Stops the transport and waits for its thread.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("transport thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.stop.is_some() {
            let _ = self.shutdown();
        }
    }
}

/// A response laid out for sending: the encoded header and error text, then the output buffer
/// as the function left it. `sent` counts bytes already on the wire.
#[derive(Debug)]
pub struct OutFrame {
    header: Header,
    head: [u8; HEADER_LEN],
    meta: Vec<u8>,
    payload: Option<crate::buffer::PoolBuf>,
    sent: usize,
}

impl OutFrame {
    /// Lays out `response`; an error text longer than the 16-bit length field is cut. A large
    /// output gets NUL padding after the text, so that it leaves aligned like its memory
    /// ([`alignment_padding`](crate::protocol::alignment_padding)), unless the padding would
    /// take the frame past `max_frame` (the process's frame limit, which its clients share).
    pub fn from_response(response: Response, max_frame: usize) -> Self {
        let outcome = response.outcome;
        let mut meta = outcome.message.into_bytes();
        meta.truncate(u16::MAX as usize);
        let payload_len = outcome.output.as_ref().map_or(0, |b| b.len());
        if let Some(output) = &outcome.output {
            let pad = crate::protocol::alignment_padding(meta.len(), payload_len, output.as_ptr() as usize);
            if meta.len() + pad + payload_len <= max_frame {
                meta.resize(meta.len() + pad, 0);
            }
        }
        let header = Header::response(response.id, outcome.status, meta.len() as u16, payload_len as u32);
        Self { header, head: header.encode(), meta, payload: outcome.output, sent: 0 }
    }

    /// A frame of any kind with an owned payload (pings, control messages).
    pub fn raw(header: Header, meta: Vec<u8>, payload: Option<crate::buffer::PoolBuf>) -> Self {
        Self { header, head: header.encode(), meta, payload, sent: 0 }
    }

    /// Header and metadata, and the payload, of a frame nothing of which is sent yet: for a
    /// transport that sends the payload by another operation than the head.
    pub(crate) fn unsent_parts(&self) -> Option<([&[u8]; 2], &crate::buffer::PoolBuf)> {
        let payload = self.payload.as_ref().filter(|_| self.sent == 0)?;
        Some(([&self.head, &self.meta], payload))
    }

    /// The frame's parts, for transports that lay frames out themselves (RDMA).
    pub fn into_parts(self) -> (Header, Vec<u8>, Option<crate::buffer::PoolBuf>) {
        (self.header, self.meta, self.payload)
    }

    /// Gives back the frame's text and payload buffer (once it is sent): what is left holds no
    /// memory, so its box can carry the next frame.
    pub(crate) fn release(&mut self) {
        self.meta = Vec::new();
        self.payload = None;
    }

    /// Bytes of the whole frame.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.meta.len() + self.payload.as_ref().map_or(0, |p| p.len())
    }

    /// Whether nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.sent >= self.len()
    }

    /// The unsent parts of this frame (at most three: header, metadata, payload).
    fn unsent(&self) -> impl Iterator<Item = &[u8]> {
        let mut skip = self.sent;
        let parts: [&[u8]; 3] = [&self.head, &self.meta, self.payload.as_deref().unwrap_or(&[])];
        parts.into_iter().filter_map(move |part| {
            if skip >= part.len() {
                skip -= part.len();
                return None;
            }
            let rest = &part[skip..];
            skip = 0;
            Some(rest)
        })
    }

    /// Records `n` more bytes sent; returns the bytes of `n` beyond this frame's end.
    pub fn advance(&mut self, n: usize) -> usize {
        let left = self.len() - self.sent;
        let used = n.min(left);
        self.sent += used;
        n - used
    }
}

/// Most slices one send gathers.
pub(crate) const MAX_GATHER: usize = 64;
/// Sends of at most this many bytes are copied into one buffer and written whole: the kernel
/// then imports no iovecs (measured: about a tenth of a small round trip's system time).
pub(crate) const SMALL_SEND: usize = 2048;

/// The unsent bytes at the front of a send queue, as slices for one vectored send.
pub(crate) struct Gathered<'a> {
    /// The first `count` are initialised (the rest is never read: a send of one small frame
    /// writes three slices, not sixty-four).
    slices: [std::mem::MaybeUninit<std::io::IoSlice<'a>>; MAX_GATHER],
    count: usize,
    bytes: usize,
}

impl<'a> Gathered<'a> {
    /// The unsent parts of `frames`, in order, as many as [`MAX_GATHER`] slices hold.
    pub(crate) fn of(frames: impl IntoIterator<Item = &'a OutFrame>) -> Self {
        let mut gathered = Self { slices: [std::mem::MaybeUninit::uninit(); MAX_GATHER], count: 0, bytes: 0 };
        'frames: for frame in frames {
            for part in frame.unsent() {
                if gathered.count == MAX_GATHER {
                    break 'frames;
                }
                gathered.slices[gathered.count].write(std::io::IoSlice::new(part));
                gathered.count += 1;
                gathered.bytes += part.len();
            }
        }
        gathered
    }

    /// The slices.
    pub(crate) fn slices(&self) -> &[std::io::IoSlice<'a>] {
        // SAFETY: the first `count` slices were written in `of`; MaybeUninit<T> has T's layout.
        unsafe { std::slice::from_raw_parts(self.slices.as_ptr().cast::<std::io::IoSlice<'a>>(), self.count) }
    }

    /// Bytes in all the slices.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The unsent bytes of `frames` in one buffer, when they are at most [`SMALL_SEND`]: a small send
/// without gathering slices first.
pub(crate) fn flatten_frames<'a, 'b>(
    frames: impl IntoIterator<Item = &'a OutFrame>,
    buf: &'b mut FlatBuf,
) -> Option<&'b [u8]> {
    buf.fill_parts(frames.into_iter().flat_map(OutFrame::unsent))
}

/// The stack buffer a small send is copied into: not zeroed first (only the bytes copied in are
/// ever read), which saves a 2 KiB memset per send.
pub(crate) struct FlatBuf([std::mem::MaybeUninit<u8>; SMALL_SEND]);

impl FlatBuf {
    /// An empty buffer.
    pub(crate) fn new() -> Self {
        Self([std::mem::MaybeUninit::uninit(); SMALL_SEND])
    }

    /// `slices` copied into this buffer, when they hold at most [`SMALL_SEND`] bytes: what a
    /// small send writes.
    pub(crate) fn fill<'b>(&'b mut self, slices: &[std::io::IoSlice<'_>]) -> Option<&'b [u8]> {
        self.fill_parts(slices.iter().map(|slice| &**slice))
    }

    /// `parts` copied into this buffer, when they hold at most [`SMALL_SEND`] bytes.
    pub(crate) fn fill_parts<'p, 'b>(&'b mut self, parts: impl IntoIterator<Item = &'p [u8]>) -> Option<&'b [u8]> {
        let mut at = 0;
        for part in parts {
            self.0.get_mut(at..at + part.len())?.write_copy_of_slice(part);
            at += part.len();
        }
        // SAFETY: the first `at` bytes were just written (initialised) by the copies above.
        Some(unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), at) })
    }
}

/// A frame too large for a transport's receive buffers, received into a pool buffer of its own
/// (metadata and payload; the header is decoded already).
#[derive(Debug)]
pub(crate) struct LargeFrame {
    pub(crate) header: Header,
    pub(crate) body: crate::buffer::PoolBuf,
}

/// Accepts every connection waiting on a non-blocking listener (edge-triggered readiness: until
/// it would block). Another error (out of descriptors, say) is logged and ends the round: the
/// connection stays queued and comes with the next readiness event.
pub(crate) fn accept_waiting(listener: &mio::net::TcpListener) -> Vec<(mio::net::TcpStream, SocketAddr)> {
    let mut accepted = Vec::new();
    loop {
        match listener.accept() {
            Ok(connection) => accepted.push(connection),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return accepted,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                return accepted;
            }
        }
    }
}

/// What a transport does after [`serve_frame`].
#[derive(Debug)]
pub enum FrameAction {
    /// An invocation went to a worker: its response will reach the connection's sink.
    Queued,
    /// Send this response (each transport lays it out its own way).
    Respond(Response),
    /// Send this frame.
    Reply(OutFrame),
    /// Send this frame, then shut the connection (a peer that failed to authenticate).
    ReplyAndClose(OutFrame),
}

/// Serves one decoded frame the same way on every transport: an `Invoke` goes to the process, a
/// `Ping` is answered with a `Pong`, `Hello` and `Message` go to the connection's peer session,
/// and every other kind is answered `Unsupported` (the connection stays).
///
/// `meta` is the frame's metadata and `input` its payload, still in the buffer it arrived in.
pub fn serve_frame(
    process: &Process,
    peer: &mut PeerSession,
    sink: &Arc<dyn ResponseSink>,
    header: Header,
    meta: &[u8],
    input: Payload,
) -> FrameAction {
    if process.config().client_auth
        && matches!(header.kind, MessageKind::Invoke | MessageKind::Ping)
        && !peer.authenticated()
    {
        let text = format!(
            "process {:?} serves authenticated clients only: connect with the client key of application {:?}",
            process.config().id,
            process.config().app
        );
        let refusal = Response { id: header.id, outcome: Outcome::error(Status::Unauthenticated, text) };
        return FrameAction::ReplyAndClose(OutFrame::from_response(refusal, usize::MAX));
    }
    match header.kind {
        MessageKind::Invoke => match process.dispatch(header.id, meta, input, header.timeout_ms, sink) {
            Dispatched::Queued => FrameAction::Queued,
            Dispatched::Done(response) => FrameAction::Respond(response),
        },
        MessageKind::Ping => {
            let payload = &input[..];
            let pong = Header { kind: MessageKind::Pong, meta_len: 0, status: 0, ..header };
            FrameAction::Reply(match process.pool().get(payload.len()) {
                Some(mut copy) => {
                    copy.try_extend(payload);
                    OutFrame::raw(pong, Vec::new(), Some(copy))
                }
                None => OutFrame::raw(Header { payload_len: 0, ..pong }, Vec::new(), None),
            })
        }
        MessageKind::Hello | MessageKind::Message => {
            // A refused session refuses every later frame of the connection too.
            let reply = peer.serve(process, &header, meta, &input);
            let close = reply.close;
            let frame = reply.into_frame(process.pool());
            if close {
                FrameAction::ReplyAndClose(frame)
            } else {
                FrameAction::Reply(frame)
            }
        }
        kind => FrameAction::Respond(Response {
            id: header.id,
            outcome: Outcome::error(Status::Unsupported, format!("{kind:?} frames are not served on this port")),
        }),
    }
}
