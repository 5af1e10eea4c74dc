//! The serving seam every transport shares, in the order a frame meets it:
//!
//! 1. [`serve_frame`]: each decoded frame, handed over by a transport with its payload still in
//!    the buffer it arrived in, is served the same way on every transport (the authentication
//!    gate, `Ping`, `Hello` and `Message` through the connection's [`PeerSession`], invocations
//!    through the process's [`Dispatcher`](crate::invocation::Dispatcher)); what it decides is a [`FrameAction`];
//! 2. the connection policy, written once: [`act`] carries out a [`FrameAction`] over the
//!    transport's [`Link`], [`refuse`] answers a protocol violation, [`ReadState`] says when a
//!    connection stops being read and when it closes, [`ConnectionOptions`] bounds back-pressure;
//!    [`ConnectionLimits`] bound how many connections a process and one source address hold
//!    ([`Connections::admit`], refused by [`turn_away`]), how long one may stay idle and how long a
//!    frame may take to arrive ([`Activity`]);
//! 3. [`OutFrame`]: a response or reply laid out for sending as its encoded header, its error text
//!    and the function's output buffer, gathered into vectored sends ([`Gathered`]) or copied into
//!    one small buffer ([`flatten_frames`]); and a large incoming frame received into a buffer of
//!    its own ([`LargeFrame`]), which, until the connection has proven itself, grows with the
//!    bytes that arrived, not with what the header announced.
//!
//! Memory a connection holds: nothing while it is idle, one small buffer
//! ([`MIN_BUF`](crate::buffer::MIN_BUF)) until it has sent a whole frame (and, under client
//! authentication, authenticated: [`proven`]), and until then a large frame's buffer only as its
//! bytes arrive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::{BufferPool, Payload, PoolBuf, MIN_BUF};
use crate::invocation::{Dispatched, Outcome, Response, ResponseSink};
use crate::process::Process;
use crate::session::{PeerSession, Reply};
pub use praas_wire::protocol::FlatBuf;
use praas_wire::protocol::{Header, MessageKind, Status, HEADER_LEN};

pub use crate::connection::{Activity, Admitted, ConnectionLimits, Connections, Expiry, Refusal};

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
        MessageKind::Invoke if peer.identity().is_some() => {
            // From another process of the application (a remote invocation): never waits for a
            // worker its own caller may hold.
            match process.dispatch_from_peer(header.id, meta, input, header.timeout_ms, sink) {
                Dispatched::Queued => FrameAction::Queued,
                Dispatched::Done(response) => FrameAction::Respond(response),
            }
        }
        MessageKind::Invoke => {
            match process.dispatcher().dispatch(process.core(), header.id, meta, input, header.timeout_ms, sink) {
                Dispatched::Queued => FrameAction::Queued,
                Dispatched::Done(response) => FrameAction::Respond(response),
            }
        }
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
            let frame = OutFrame::from_reply(reply, process.pool());
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

/// A response laid out for sending: the encoded header and error text, then the output buffer
/// as the function left it. `sent` counts bytes already on the wire.
#[derive(Debug)]
pub struct OutFrame {
    header: Header,
    head: [u8; HEADER_LEN],
    meta: Vec<u8>,
    payload: Option<PoolBuf>,
    sent: usize,
}

impl OutFrame {
    /// Lays out `response`; an error text longer than the 16-bit length field is cut. A large
    /// output gets NUL padding after the text, so that it leaves aligned like its memory
    /// ([`alignment_padding`](praas_wire::protocol::alignment_padding)), unless the padding would
    /// take the frame past `max_frame` (the process's frame limit, which its clients share).
    pub fn from_response(response: Response, max_frame: usize) -> Self {
        let outcome = response.outcome;
        let mut meta = outcome.message.into_bytes();
        meta.truncate(u16::MAX as usize);
        let payload_len = outcome.output.as_ref().map_or(0, |b| b.len());
        let Ok(payload_field) = u32::try_from(payload_len) else {
            // Only an output grown to the pool's largest class (4 GiB) under a frame limit that
            // large: refused rather than sent with a wrapped length.
            let text = format!("output of {payload_len} bytes exceeds the 32-bit payload length field");
            let outcome = crate::invocation::Outcome::error(praas_wire::protocol::Status::TooLarge, text);
            return Self::from_response(Response { id: response.id, outcome }, max_frame);
        };
        if let Some(output) = &outcome.output {
            let pad = praas_wire::protocol::alignment_padding(meta.len(), payload_len, output.as_ptr() as usize);
            if meta.len() + pad + payload_len <= max_frame {
                meta.resize(meta.len() + pad, 0);
            }
        }
        // Cut to u16::MAX above, and `alignment_padding` adds no padding past it.
        #[allow(clippy::cast_possible_truncation)]
        let meta_field = meta.len() as u16;
        let header = Header::response(response.id, outcome.status, meta_field, payload_field);
        Self { header, head: header.encode(), meta, payload: outcome.output, sent: 0 }
    }

    /// A frame of any kind with an owned payload (pings, control messages).
    pub fn raw(header: Header, meta: Vec<u8>, payload: Option<PoolBuf>) -> Self {
        Self { header, head: header.encode(), meta, payload, sent: 0 }
    }

    /// A peer session's `reply` laid out for a transport, its payload in a buffer of `pool` (an
    /// `Overloaded` answer if the pool is spent).
    pub fn from_reply(reply: Reply, pool: &BufferPool) -> Self {
        let mut meta = reply.meta;
        meta.truncate(u16::MAX as usize);
        // Cut to the 16-bit length field just above: never saturates.
        let meta_len = u16::try_from(meta.len()).unwrap_or(u16::MAX);
        let mut header = Header { meta_len, payload_len: 0, ..reply.header };
        if reply.payload.is_empty() {
            return Self::raw(header, meta, None);
        }
        let (kind, id) = (header.kind, header.id);
        // A reply's payload is a nonce and a proof: one its 32-bit length field cannot say is a bug.
        let Ok(payload_len) = u32::try_from(reply.payload.len()) else {
            let text = format!("an answer of {} bytes does not fit a frame", reply.payload.len());
            return Self::from_reply(Reply::answer(kind, id, Status::Internal, text.into_bytes(), Vec::new()), pool);
        };
        match pool.get(reply.payload.len()) {
            Some(mut buf) => {
                buf.try_extend(&reply.payload);
                header.payload_len = payload_len;
                Self::raw(header, meta, Some(buf))
            }
            None => {
                let text = b"no buffer for the answer: the process's buffer budget is spent".to_vec();
                Self::from_reply(Reply::answer(kind, id, Status::Overloaded, text, Vec::new()), pool)
            }
        }
    }

    /// Header and metadata, and the payload, of a frame nothing of which is sent yet: for a
    /// transport that sends the payload by another operation than the head.
    pub fn unsent_parts(&self) -> Option<([&[u8]; 2], &PoolBuf)> {
        let payload = self.payload.as_ref().filter(|_| self.sent == 0)?;
        Some(([&self.head, &self.meta], payload))
    }

    /// The frame's parts, for transports that lay frames out themselves (RDMA).
    pub fn into_parts(self) -> (Header, Vec<u8>, Option<PoolBuf>) {
        (self.header, self.meta, self.payload)
    }

    /// Gives back the frame's text and payload buffer (once it is sent): what is left holds no
    /// memory, so its box can carry the next frame.
    pub fn release(&mut self) {
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
pub const MAX_GATHER: usize = 64;

/// The unsent bytes at the front of a send queue, as slices for one vectored send.
pub struct Gathered<'a> {
    /// The first `count` are initialised (the rest is never read: a send of one small frame
    /// writes three slices, not sixty-four).
    slices: [std::mem::MaybeUninit<std::io::IoSlice<'a>>; MAX_GATHER],
    count: usize,
    bytes: usize,
}

impl std::fmt::Debug for Gathered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gathered").field("slices", &self.count).field("bytes", &self.bytes).finish()
    }
}

impl<'a> Gathered<'a> {
    /// The unsent parts of `frames`, in order, as many as [`MAX_GATHER`] slices hold.
    pub fn of(frames: impl IntoIterator<Item = &'a OutFrame>) -> Self {
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
    pub fn slices(&self) -> &[std::io::IoSlice<'a>] {
        // SAFETY: the first `count` slices were written in `of`; MaybeUninit<T> has T's layout.
        unsafe { std::slice::from_raw_parts(self.slices.as_ptr().cast::<std::io::IoSlice<'a>>(), self.count) }
    }

    /// Bytes in all the slices.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The unsent bytes of `frames` in one buffer, when they are at most [`SMALL_SEND`]: a small send
/// without gathering slices first.
pub fn flatten_frames<'a, 'b>(
    frames: impl IntoIterator<Item = &'a OutFrame>,
    buf: &'b mut FlatBuf,
) -> Option<&'b [u8]> {
    buf.fill_parts(frames.into_iter().flat_map(OutFrame::unsent))
}

/// A frame too large for a transport's receive buffers, received into a pool buffer of its own
/// (metadata and payload; the header is decoded already). On a connection that has not
/// [`proven`] itself the buffer grows with the bytes that arrived (each step at most doubles it),
/// never at the header: a peer that announces 64 MiB and sends nothing holds no buffer. A proven
/// connection's frame gets its whole buffer at the header, from the process's budget: received in
/// place, never copied (growing a 16 MiB frame from 1 MiB cost its round trip 12-25 %).
#[derive(Debug)]
pub struct LargeFrame {
    /// Its header.
    pub header: Header,
    /// Its metadata and payload so far.
    pub body: PoolBuf,
}

impl LargeFrame {
    /// A large frame whose body starts with `have`, its buffer from `pool`: the whole body's for a
    /// connection that has [`proven`] itself, else none until the body's first bytes and then one
    /// that grows with them; `None` when the pool is spent.
    pub fn start(header: Header, have: &[u8], pool: &BufferPool, proven: bool) -> Option<Self> {
        if !proven && have.is_empty() {
            return Some(Self { header, body: pool.empty() });
        }
        let first = if proven { header.body_len() } else { MIN_BUF.max(have.len()) };
        let mut body = pool.get(header.body_len().min(first))?;
        assert!(body.try_extend(have), "a large frame's first buffer holds what arrived with its header");
        Some(Self { header, body })
    }

    /// Bytes of the body still to come.
    #[inline]
    pub fn missing(&self) -> usize {
        self.header.body_len() - self.body.len()
    }

    /// Whether the whole body is here.
    #[inline]
    pub fn complete(&self) -> bool {
        self.missing() == 0
    }

    /// Room for the next bytes of the body (never past its end), the buffer grown first when it is
    /// full; `None` when the pool has no bigger buffer now (back-pressure), or nothing is missing.
    pub fn room(&mut self, pool: &BufferPool) -> Option<&mut [u8]> {
        let missing = self.missing();
        if missing == 0 {
            return None;
        }
        if self.body.len() == self.body.capacity() {
            let grown = self.header.body_len().min(self.body.capacity().saturating_mul(2).max(MIN_BUF));
            let mut bigger = pool.get(grown)?;
            assert!(bigger.try_extend(&self.body), "a grown buffer holds what the smaller one held");
            self.body = bigger;
        }
        let spare = self.body.spare_mut();
        let n = spare.len().min(missing);
        Some(&mut spare[..n])
    }

    /// Gives back a buffer that holds none of the body yet (a receive came back empty): a peer
    /// that announced a frame and sends nothing holds no memory.
    pub fn release_unused(&mut self, pool: &BufferPool) {
        if self.body.is_empty() && self.body.capacity() > 0 {
            self.body = pool.empty();
        }
    }

    /// `n` more bytes were written into [`LargeFrame::room`].
    #[inline]
    pub fn received(&mut self, n: usize) {
        let filled = self.body.len() + n;
        self.body.set_len(filled);
    }

    /// Copies what of `bytes` belongs to the body (growing the buffer as needed); returns how many
    /// it took, fewer than it could when the pool is spent.
    pub fn extend(&mut self, bytes: &[u8], pool: &BufferPool) -> usize {
        let mut taken = 0;
        while taken < bytes.len() {
            let Some(room) = self.room(pool) else { break };
            let n = room.len().min(bytes.len() - taken);
            room[..n].copy_from_slice(&bytes[taken..taken + n]);
            self.received(n);
            taken += n;
        }
        taken
    }
}

/// Whether a connection has proven itself (it gets full-size receive buffers from now on): it
/// has had a whole frame served and, where clients must authenticate, it has authenticated.
#[inline]
pub fn proven(process: &Process, peer: &PeerSession) -> bool {
    !process.config().client_auth || peer.authenticated()
}

/// Sends a connection's last frame straight from the calling thread (it must fit the socket's
/// send buffer, as any error response does), shuts the sending side, and drops what the peer sent
/// that is already here, so that closing does not reset the connection and lose the frame. For a
/// connection turned away at accept, or closed for a timeout; never blocks.
pub fn turn_away(socket: std::os::fd::BorrowedFd<'_>, refusal: Refusal) {
    use std::os::fd::AsRawFd;
    let frame = refusal.into_frame();
    let mut flat = FlatBuf::new();
    let fd = socket.as_raw_fd();
    if let Some(bytes) = flatten_frames([&frame], &mut flat) {
        // SAFETY: sends from initialised memory that lives for the call, on a socket the caller
        // owns; MSG_DONTWAIT: never blocks, MSG_NOSIGNAL: a closed peer is an error, not a signal.
        unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    }
    // SAFETY: plain syscall on a socket the caller owns.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        // SAFETY: receives into a live local buffer of the given length; never blocks.
        let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
    }
}

/// Back-pressure and the end of a connection that broke the protocol: the options the byte-stream
/// transports (`TcpOptions`, `UringOptions`) embed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// Invocations of one connection at the workers before it stops being read.
    pub max_outstanding: usize,
    /// Response bytes queued for one connection before it stops being read.
    pub max_queued_bytes: usize,
    /// How long a connection that broke the protocol may keep sending before it is closed.
    pub linger: Duration,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self { max_outstanding: 4096, max_queued_bytes: 64 << 20, linger: Duration::from_secs(2) }
    }
}

impl ConnectionOptions {
    /// Whether the peer is the reason to stop reading a connection that has `outstanding`
    /// invocations at the workers and `queued_bytes()` response bytes not yet sent (looked at
    /// only when `outstanding` is not too many already).
    #[inline]
    pub fn blocked(&self, outstanding: usize, queued_bytes: impl FnOnce() -> usize) -> bool {
        outstanding >= self.max_outstanding || queued_bytes() >= self.max_queued_bytes
    }
}

/// Where a connection is in reading its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    /// Reading frames.
    Open,
    /// The peer closed its side; answer what is pending, then close.
    Draining,
    /// The connection's last frame is sent (a refusal, or the answer to a peer that failed to
    /// authenticate): its input is discarded until the peer closes, the last frame is known
    /// delivered, or the deadline passes.
    Lingering(Instant),
}

/// How a transport learns that a lingering connection's last frame reached the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Only from the peer's close: a byte stream closed with unread input resets the connection,
    /// and the peer may lose the answer.
    PeerClose,
    /// From the transport's send completions (reliable-connected RDMA): it closes as soon as
    /// everything is sent.
    Completion,
}

impl ReadState {
    /// Whether the connection can close now. `drained()` says that nothing is left to send and no
    /// answer is due (looked at only where it matters).
    #[inline]
    pub fn finished(&self, delivery: Delivery, drained: impl FnOnce() -> bool) -> bool {
        match *self {
            Self::Open => false,
            Self::Draining => drained(),
            Self::Lingering(until) => (delivery == Delivery::Completion && drained()) || Instant::now() >= until,
        }
    }

    /// Whether frames of the peer are still served.
    #[inline]
    pub fn serves(&self) -> bool {
        !matches!(self, Self::Lingering(_))
    }
}

/// Why a connection sends its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It broke the protocol: the frame is the refusal.
    Refused,
    /// Its request is answered, and the connection ends with the answer (a peer that failed to
    /// authenticate).
    Answered,
}

/// How one connection of a transport moves bytes: everything the policy needs of it.
pub trait Link {
    /// Queues the process's answer to a request, laid out the transport's way.
    fn respond(&mut self, response: Response);
    /// Queues a frame.
    fn reply(&mut self, frame: OutFrame);
    /// Queues the connection's last frame, and shuts its sending side once the frame has left.
    fn reply_last(&mut self, frame: OutFrame, end: End);
    /// Drops what was received and not yet served.
    fn discard_input(&mut self);
    /// Where the connection is.
    fn state(&mut self) -> &mut ReadState;
    /// How long the connection lingers after its last frame.
    fn linger(&self) -> Duration;
}

/// Carries out what [`serve_frame`] decided for one frame; `Queued` needs
/// nothing (the transport counts it).
#[inline]
pub fn act<L: Link>(link: &mut L, action: FrameAction) {
    match action {
        FrameAction::Queued => {}
        FrameAction::Respond(response) => link.respond(response),
        FrameAction::Reply(frame) => link.reply(frame),
        FrameAction::ReplyAndClose(frame) => end(link, frame, End::Answered),
    }
}

/// Answers a protocol violation, shuts the sending side once the answer is out, and lingers.
#[cold]
pub fn refuse<L: Link>(link: &mut L, refusal: Refusal) {
    if link.state().serves() {
        tracing::debug!(id = refusal.id, "closing a connection that broke the protocol: {}", refusal.text);
        end(link, refusal.into_frame(), End::Refused)
    }
}

/// Sends a connection's last frame and starts lingering; a connection that lingers already sends
/// nothing more.
fn end<L: Link>(link: &mut L, frame: OutFrame, why: End) {
    if !link.state().serves() {
        return;
    }
    if why == End::Answered {
        tracing::debug!("closing a connection after its last answer (a peer that failed to authenticate)");
    }
    *link.state() = ReadState::Lingering(Instant::now() + link.linger());
    link.reply_last(frame, why);
    link.discard_input();
}

impl Refusal {
    /// The refusal as a response frame.
    pub fn into_frame(self) -> OutFrame {
        // An error carries no output, so no padding: no limit to respect.
        OutFrame::from_response(Response { id: self.id, outcome: Outcome::error(self.status, self.text) }, usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use praas_wire::protocol::MessageKind;

    /// A connection that records what the policy made it do.
    #[derive(Default)]
    struct Recorder {
        sent: Vec<(Header, Vec<u8>, Option<End>)>,
        responses: Vec<u64>,
        discarded: usize,
        state: Option<ReadState>,
    }

    impl Link for Recorder {
        fn respond(&mut self, response: Response) {
            self.responses.push(response.id);
        }
        fn reply(&mut self, frame: OutFrame) {
            let (header, meta, _) = frame.into_parts();
            self.sent.push((header, meta, None));
        }
        fn reply_last(&mut self, frame: OutFrame, end: End) {
            let (header, meta, _) = frame.into_parts();
            self.sent.push((header, meta, Some(end)));
        }
        fn discard_input(&mut self) {
            self.discarded += 1;
        }
        fn state(&mut self) -> &mut ReadState {
            self.state.get_or_insert(ReadState::Open)
        }
        fn linger(&self) -> Duration {
            Duration::from_secs(60)
        }
    }

    #[test]
    fn a_bad_header_is_answered_in_its_own_name_and_the_connection_lingers() {
        let mut head = Header::invoke(0x1234_5678_9abc, 4, 0, 10).encode();
        head[0] = b'X';
        let err = Header::decode(&head, Default::default()).unwrap_err();
        let mut conn = Recorder::default();
        let before = Instant::now();
        refuse(&mut conn, Refusal::frame(err, &head));
        let (header, meta, end) = &conn.sent[0];
        assert_eq!((header.kind, header.id, header.status), (MessageKind::Response, 0x1234_5678_9abc, 6));
        assert!(String::from_utf8_lossy(meta).contains("magic"), "{meta:?}");
        assert_eq!(*end, Some(End::Refused));
        assert_eq!(conn.discarded, 1);
        match conn.state {
            Some(ReadState::Lingering(until)) => assert!(until >= before + Duration::from_secs(60)),
            other => panic!("not lingering: {other:?}"),
        }
        // A lingering connection is not refused again, nor does it answer a last frame.
        refuse(&mut conn, Refusal::malformed("again"));
        act(&mut conn, FrameAction::ReplyAndClose(Refusal::malformed("late").into_frame()));
        assert_eq!(conn.sent.len(), 1);
    }

    #[test]
    fn actions_go_where_they_belong() {
        let mut conn = Recorder::default();
        act(&mut conn, FrameAction::Queued);
        let response = Response { id: 5, outcome: Outcome::error(Status::Unsupported, "no") };
        act(&mut conn, FrameAction::Respond(response));
        act(&mut conn, FrameAction::Reply(Refusal::malformed("a").into_frame()));
        assert_eq!(conn.responses, [5]);
        assert_eq!(conn.sent.len(), 1);
        assert_eq!(conn.sent[0].2, None);
        assert_eq!(*conn.state(), ReadState::Open);
        act(&mut conn, FrameAction::ReplyAndClose(Refusal::malformed("b").into_frame()));
        assert_eq!(conn.sent[1].2, Some(End::Answered));
        assert!(!conn.state().serves());
        // A connection whose peer closed is still answered last when a frame it sent before ends it.
        let mut drained = Recorder { state: Some(ReadState::Draining), ..Recorder::default() };
        refuse(&mut drained, Refusal::malformed("c"));
        assert_eq!(drained.sent.len(), 1);
        assert!(matches!(drained.state, Some(ReadState::Lingering(_))));
    }

    #[test]
    fn connections_close_when_the_policy_says() {
        let never = || -> bool { panic!("an open connection's queue is not looked at") };
        assert!(!ReadState::Open.finished(Delivery::PeerClose, never));
        assert!(ReadState::Draining.finished(Delivery::PeerClose, || true));
        assert!(!ReadState::Draining.finished(Delivery::PeerClose, || false));
        let soon = ReadState::Lingering(Instant::now() + Duration::from_secs(60));
        assert!(!soon.finished(Delivery::PeerClose, || true), "a byte stream waits for the peer to read");
        assert!(soon.finished(Delivery::Completion, || true), "a completion proves delivery");
        assert!(!soon.finished(Delivery::Completion, || false));
        let past = ReadState::Lingering(Instant::now() - Duration::from_millis(1));
        assert!(past.finished(Delivery::PeerClose, || false));
        assert!(past.finished(Delivery::Completion, || false));
    }

    #[test]
    fn a_large_frame_gets_memory_as_its_bytes_arrive() {
        let pool = BufferPool::new(64 << 20);
        let header = Header::invoke(1, 0, 0, 1 << 20);
        // Announced and nothing more: no memory.
        let mut frame = LargeFrame::start(header, &[], &pool, false).unwrap();
        assert_eq!((frame.body.capacity(), pool.outstanding()), (0, 0));
        assert_eq!(frame.missing(), 1 << 20);
        // Each step at most doubles the buffer, never past the frame.
        let mut capacities = Vec::new();
        let bytes = vec![7u8; 1 << 20];
        let mut at = 0;
        while !frame.complete() {
            at += frame.extend(&bytes[at..(at + 3000).min(bytes.len())], &pool);
            capacities.push(frame.body.capacity());
        }
        assert!(frame.room(&pool).is_none(), "no room past the frame's end");
        assert!(frame.complete() && at == 1 << 20);
        assert_eq!(capacities[0], MIN_BUF);
        assert!(capacities.windows(2).all(|w| w[1] == w[0] || w[1] == 2 * w[0]), "{capacities:?}");
        assert_eq!(frame.body.capacity(), 1 << 20);
        assert!(frame.body.iter().all(|&b| b == 7));
        // A proven connection's frame gets its whole buffer at once; a spent pool stops the growth.
        let whole = LargeFrame::start(header, &[], &pool, true).unwrap();
        assert_eq!(whole.body.capacity(), 1 << 20);
        let small = BufferPool::new(MIN_BUF);
        let mut frame = LargeFrame::start(header, &[1; 100], &small, false).unwrap();
        assert_eq!(frame.extend(&bytes[..5000], &small), MIN_BUF - 100);
        assert!(LargeFrame::start(header, &[], &small, true).is_none());
        frame.release_unused(&small);
        assert_eq!(frame.body.len(), MIN_BUF, "a buffer with bytes is kept");
    }

    #[test]
    fn back_pressure_looks_at_queued_bytes_only_when_it_must() {
        let options = ConnectionOptions { max_outstanding: 2, max_queued_bytes: 100, linger: Duration::ZERO };
        assert!(options.blocked(2, || panic!("not looked at")));
        assert!(!options.blocked(1, || 99));
        assert!(options.blocked(0, || 100));
    }
}
