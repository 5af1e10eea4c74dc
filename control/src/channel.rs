//! The control plane's end of the control channel (see `praas_dataplane::control_channel` for the
//! conversation): authenticates each process by its application's secret, registers it, and
//! feeds its metrics and swap confirmations to the [`ControlPlane`].
//!
//! Every connection is a task on the control plane's tokio runtime (one event loop for all of
//! them, no thread per connection): an idle connection costs a task and its socket, about a
//! kilobyte. At most [`ChannelLimits::connections`] are open at once (one past it is closed at
//! once and counted); one that has not proved itself within [`ChannelLimits::handshake_timeout`]
//! is closed; before it has, its frames may be [`MAX_HANDSHAKE_FRAME`] bytes at most, and a
//! frame's buffer grows with the bytes that arrived, never with what its header announced. What
//! the control plane sends a registered process ([`LinkWriter`], from any thread) is queued and
//! written by the connection's own task, in order.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use praas_dataplane::auth;
use praas_dataplane::control_channel::{
    read_json, unhex, write_frame, HelloMessage, MetricsReport, RegistrationAnswer, SwapConfirmation,
    MAX_CONTROL_FRAME, MAX_HANDSHAKE_FRAME,
};
use praas_dataplane::protocol::{decode_frame, Decoded, FrameLimits, Header, MessageKind, OwnedFrame, Status};
use praas_dataplane::swap_in::SwapInRequest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::controller::ControlPlane;
use crate::link::{ControlLink, LinkWriter, Outbox};

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Most bytes read into a frame at once: a frame's buffer grows with the bytes that arrived.
const READ_CHUNK: usize = 64 << 10;
/// Longest a frame may take to be written to a process (one that reads nothing is closed).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many connections the control channel serves, and how long one may take to prove itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLimits {
    /// Connections open at once; one past it is closed at once (and counted).
    pub connections: usize,
    /// Longest a connection may take from its accept to its proof (`--handshake-timeout-ms`).
    pub handshake_timeout: Duration,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        Self { connections: 1024, handshake_timeout: Duration::from_secs(10) }
    }
}

/// Listens for processes on `addr` and serves them on `runtime`; returns the bound address.
pub fn listen(
    plane: ControlPlane,
    addr: SocketAddr,
    limits: ChannelLimits,
    runtime: &tokio::runtime::Handle,
) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(listener)?
    };
    runtime.spawn(accept(plane, listener, limits));
    Ok(local)
}

/// Accepts connections for as long as the runtime runs, each served by a task of its own. An
/// accept that fails (out of descriptors) is logged and retried after a pause.
async fn accept(plane: ControlPlane, listener: TcpListener, limits: ChannelLimits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control channel accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            plane.metrics().count_refused_connection("control");
            tracing::debug!("control connection refused: {} already open", limits.connections);
            continue;
        };
        let plane = plane.clone();
        tokio::spawn(async move {
            let open = plane.metrics().open_connection("control");
            serve(&plane, stream, limits).await;
            drop((open, slot));
            crate::reclaim::connection_closed();
        });
    }
}

/// One connection's socket and the bytes read from it that make no whole frame yet.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    /// Reads one frame of at most `max_frame` bytes after its header (a larger one is an
    /// `InvalidData` error before any of it is read). Nothing is allocated before bytes arrive;
    /// cancel-safe (what was read stays in the buffer).
    async fn recv(&mut self, max_frame: usize) -> io::Result<OwnedFrame> {
        let limits = FrameLimits { max_frame };
        loop {
            match decode_frame(&self.buf, limits).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
                Decoded::Frame(frame, used) => {
                    let owned =
                        OwnedFrame { header: frame.header, meta: frame.meta.to_vec(), payload: frame.payload.to_vec() };
                    self.buf.drain(..used);
                    if self.buf.is_empty() && self.buf.capacity() > 4096 {
                        self.buf = Vec::new();
                    }
                    return Ok(owned);
                }
                Decoded::Incomplete(missing) => {
                    self.stream.readable().await?;
                    let start = self.buf.len();
                    self.buf.resize(start + missing.clamp(4096, READ_CHUNK), 0);
                    let read = self.stream.try_read(&mut self.buf[start..]);
                    self.buf.truncate(start + *read.as_ref().unwrap_or(&0));
                    match read {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                        Err(e) => return Err(e),
                    }
                    if self.buf.is_empty() {
                        self.buf = Vec::new();
                    } else if self.buf.len() < 4096 {
                        // A few bytes of a frame (a half-open peer's part of a header) keep only
                        // what they take, not the 4 KiB read into.
                        self.buf.shrink_to_fit();
                    }
                }
            }
        }
    }

    /// Writes `bytes` whole, within [`WRITE_TIMEOUT`].
    async fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let written = async {
            let mut rest = bytes;
            while !rest.is_empty() {
                self.stream.writable().await?;
                match self.stream.try_write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        tokio::time::timeout(WRITE_TIMEOUT, written).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    async fn send(&self, header: Header, meta: &[u8], payload: &[u8]) -> io::Result<()> {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, header, meta, payload)?;
        self.write(&bytes).await
    }

    async fn respond(&self, status: Status, message: &str) -> io::Result<()> {
        self.send(Header::response(0, status, 0, 0), message.as_bytes(), &[]).await
    }

    /// Answers an accepted registration: `Ok`, the [`RegistrationAnswer`] as its JSON payload.
    async fn answer(&self, answer: &RegistrationAnswer) -> io::Result<()> {
        let payload = serde_json::to_vec(answer).map_err(io::Error::other)?;
        self.send(Header::response(0, Status::Ok, 0, 0), &[], &payload).await
    }
}

/// Runs `f` (which may block on the database or the control plane's lock) off the event loop.
async fn off_loop<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(format!("a control-plane call failed: {e}")))
}

async fn serve(plane: &ControlPlane, stream: TcpStream, limits: ChannelLimits) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut connection = Connection { stream, buf: Vec::new() };
    match handshake(plane, &mut connection, limits.handshake_timeout).await {
        Ok(Some(link)) => {
            let result = follow(plane, &mut connection, &link).await;
            link.outbox.close();
            let Registered { app, process, id, .. } = link;
            let closed = plane.clone();
            if let Err(e) = off_loop(move || closed.on_link_closed(&app, &process, id)).await {
                tracing::warn!("{e}");
            }
            if let Err(e) = result {
                tracing::debug!(%peer, "control connection ended: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, "control handshake failed: {e}"),
    }
}

/// A process that proved itself and was registered.
struct Registered {
    app: String,
    process: String,
    id: u64,
    outbox: Arc<Outbox>,
    /// What its registration is answered (`follow` sends it first).
    answer: RegistrationAnswer,
}

/// Challenges the peer, checks its proof (which must come within `timeout` of the accept) and
/// registers it; `None` if it was refused. The answer to a registration is the first thing
/// [`follow`] writes.
async fn handshake(
    plane: &ControlPlane,
    connection: &mut Connection,
    timeout: Duration,
) -> io::Result<Option<Registered>> {
    let nonce = auth::nonce();
    let challenge = async {
        let hello = Header { kind: MessageKind::Hello, meta_len: 0, status: 0, id: 0, timeout_ms: 0, payload_len: 0 };
        connection.send(hello, &[], &nonce).await?;
        // Before the peer proved who it is, a frame may be small only: nothing it announces
        // costs more than that.
        connection.recv(MAX_HANDSHAKE_FRAME).await
    };
    let frame = tokio::time::timeout(timeout, challenge)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no proof within the handshake timeout"))??;
    if frame.header.kind != MessageKind::Hello {
        connection.respond(Status::Malformed, "the first frame must be Hello").await?;
        return Ok(None);
    }
    let message: HelloMessage = read_json(&frame)?;
    let registration = message.registration;
    let proof = unhex(&message.proof).unwrap_or_default();
    let authentic = plane
        .app_secret(&registration.app)
        .is_some_and(|secret| auth::verify(&secret, &nonce, &registration.app, &registration.process, &proof));
    if !authentic {
        tracing::warn!(app = registration.app, process = registration.process, "refused: authentication failed");
        connection.respond(Status::InvalidArgument, "authentication failed: wrong application secret").await?;
        return Ok(None);
    }
    let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let outbox = Arc::new(Outbox::default());
    // Once registered, the link is visible to other threads' peer updates: they wait in its
    // outbox, which this task writes only after the answer, so the answer comes first.
    let link = ControlLink { id, writer: LinkWriter::new(Arc::clone(&outbox)) };
    let (registering, who) = (plane.clone(), registration.clone());
    let answer = match off_loop(move || registering.on_register(&who, link)).await? {
        Ok(answer) => answer,
        Err(refusal) => {
            connection.respond(Status::InvalidArgument, &refusal.to_string()).await?;
            return Ok(None);
        }
    };
    if answer.swap_committed {
        // Not registered: its swap is recorded, and the process exits once it read this.
        connection.answer(&answer).await?;
        return Ok(None);
    }
    Ok(Some(Registered { app: registration.app, process: registration.process, id, outbox, answer }))
}

/// Serves a registered process until its connection ends: answers its registration, tells its
/// peers, then dispatches what it sends and writes what is queued for it.
async fn follow(plane: &ControlPlane, connection: &mut Connection, link: &Registered) -> io::Result<()> {
    connection.answer(&link.answer).await?;
    let (announcing, app) = (plane.clone(), link.app.clone());
    off_loop(move || announcing.announce_peers(&app)).await?;
    loop {
        // What was queued meanwhile goes first (its wake-up may have come while a frame was
        // being dispatched).
        for (_, bytes) in link.outbox.take() {
            connection.write(&bytes).await?;
        }
        tokio::select! {
            frame = connection.recv(MAX_CONTROL_FRAME) => {
                let frame = frame?;
                let (plane, app, process) = (plane.clone(), link.app.clone(), link.process.clone());
                let writer = LinkWriter::new(Arc::clone(&link.outbox));
                off_loop(move || dispatch(&plane, &app, &process, &frame, &writer)).await??;
            }
            () = link.outbox.ready.notified() => {}
        }
    }
}

/// What the control plane does with each frame a registered process sends: the one place the
/// conversation's message kinds reach the [`ControlPlane`]. A `SwapInRequest` is answered later,
/// through `writer` (the swap-in runs on a thread of its own: the connection goes on meanwhile).
fn dispatch(plane: &ControlPlane, app: &str, process: &str, frame: &OwnedFrame, writer: &LinkWriter) -> io::Result<()> {
    match frame.header.kind {
        MessageKind::Metrics => plane.on_metrics(app, process, read_json::<MetricsReport>(frame)?),
        MessageKind::SwapConfirm => plane.on_swap_confirm(app, process, read_json::<SwapConfirmation>(frame)?),
        MessageKind::SwapInRequest => {
            let wait = Duration::from_millis(u64::from(frame.header.timeout_ms.max(1)));
            let request = read_json::<SwapInRequest>(frame)?;
            plane.on_swap_in_request(app, process, frame.header.id, wait, &request.process, writer.clone());
        }
        MessageKind::Pong => {}
        other => tracing::warn!(app, process, "unexpected {other:?} on the control channel"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_of_processes_that_predate_function_figures_still_parse() {
        let plain = r#"{"invocations":1,"local_invocations":0,"compute_ns":5,"last_invocation_ns":0,
            "in_flight":0,"state_keys":0,"state_bytes":0}"#;
        let report: MetricsReport = serde_json::from_str(plain).unwrap();
        assert_eq!(report.invocations, 1);
        assert!(report.functions.is_empty());
        let full = r#"{"invocations":1,"local_invocations":0,"compute_ns":5,"last_invocation_ns":0,
            "in_flight":0,"state_keys":0,"state_bytes":0,"mailbox_depth":3,
            "functions":[{"name":"echo","latency":{"buckets":[[40,2]],"sum_ns":9000,"max_ns":5000},"errors":[[1,1]]}]}"#;
        let report: MetricsReport = serde_json::from_str(full).unwrap();
        assert_eq!((report.mailbox_depth, report.functions[0].latency.count()), (3, 2));
    }
}
