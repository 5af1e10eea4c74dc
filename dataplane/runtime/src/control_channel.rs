//! The control channel: one authenticated TCP connection from each process to the control plane.
//!
//! Frames are those of `docs/protocol.md`; their payloads here are JSON (the channel is off the
//! invocation path, so readability wins). The conversation:
//!
//! 1. control plane → process: `Hello`, payload = a fresh nonce;
//! 2. process → control plane: `Hello`, meta = `APP/PROCESS`, payload = [`HelloMessage`] with the
//!    proof of the application's secret ([`praas_wire::auth`]) and the process's [`Registration`];
//! 3. control plane → process: `Response`, status `Ok` (registered) or an error (refused);
//! 4. then, any time: process → control plane `Metrics` ([`MetricsReport`]) every interval;
//!    control plane → process `PeerUpdate` ([`PeerList`]) and `SwapRequest` ([`SwapOrder`]),
//!    answered by `SwapConfirm` ([`SwapConfirmation`]); the control plane records SWAPPED_OUT and
//!    answers `SwapCommit` ([`SwapDecision`]), after which a swapped-out process exits;
//!    process → control plane `SwapInRequest` ([`crate::swap_in::SwapInRequest`]: a remote
//!    invocation's swapped-out callee), answered by `SwapInAnswer` of the same id once the callee
//!    is ALLOCATED again (after the `PeerUpdate` that says so), or with the reason.
//!
//! A process whose channel breaks keeps serving and reconnects with back-off: a control plane
//! that restarts finds its processes registering again.
//!
//! A swap-out is a transaction between the process, the swap store and the control plane's
//! database: the process exits only once the control plane said SWAPPED_OUT is recorded. Until
//! then it stays drained (invocations refused with a retryable status, the mailbox paused),
//! whatever happens to the connection; if the connection breaks it reconnects and registers
//! with the swap it still waits for ([`Registration::pending_swap`]), and the control plane's
//! answer ([`RegistrationAnswer`]) says whether that swap was recorded (exit) or not (serve on
//! with the state it kept).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use crate::peer::PeerList;
use crate::process::Process;
use crate::stats::{Histogram, StatsSnapshot};
use crate::swap::{SwapReport, SwapStore};
use praas_wire::auth;
use praas_wire::protocol::{
    decode_frame, encode_frame, Decoded, FrameError, FrameLimits, Header, MessageKind, OwnedFrame, Status,
};

/// Largest control frame (after the handshake).
pub const MAX_CONTROL_FRAME: usize = 16 << 20;
/// Largest frame of the handshake, before the peer has proved who it is: a nonce, or a proof with
/// a registration (a few hundred bytes). A peer announcing more is refused before anything is
/// allocated for it.
pub const MAX_HANDSHAKE_FRAME: usize = 64 << 10;
/// Most bytes read into a frame at once: a frame's buffer grows with the bytes that arrived,
/// never with what its header announced.
const READ_CHUNK: usize = 64 << 10;

/// Who a process is and where clients reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Application.
    pub app: String,
    /// Process id.
    pub process: String,
    /// Data-plane address (`HOST:PORT`).
    pub data_addr: String,
    /// RDMA address (`HOST:PORT` of the RDMA transport's set-up port), if it serves RDMA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_addr: Option<String>,
    /// The transport its data-plane address is served with (`uring`, `mio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// OS process id on its host.
    pub pid: u32,
    /// Whether it started from a swapped-out snapshot.
    pub restored: bool,
    /// The swap-out whose snapshot it wrote and confirmed without hearing whether the control
    /// plane recorded it (the connection broke first); it is drained meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_swap: Option<String>,
}

/// The payload of the control plane's `Ok` to a registration (empty from older control planes:
/// the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationAnswer {
    /// The registration's pending swap is recorded as SWAPPED_OUT: the process exits.
    #[serde(default)]
    pub swap_committed: bool,
}

/// The payload of a `SwapRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapOrder {
    /// The swap-out's id, written into the snapshot's manifest and echoed by the confirmation.
    #[serde(default)]
    pub swap_id: String,
}

/// The payload of a `SwapCommit`: what the control plane made of a confirmed swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapDecision {
    /// The swap-out it is about.
    pub swap_id: String,
    /// `true`: SWAPPED_OUT is recorded, the process exits; `false`: the swap is abandoned (the
    /// control plane gave up on it, or could not record it), the process serves on.
    pub committed: bool,
}

/// The process's half of the handshake.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloMessage {
    /// Hex of the HMAC proof.
    pub proof: String,
    /// The registration.
    pub registration: Registration,
}

/// Counters a process reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// Client invocations completed.
    pub invocations: u64,
    /// Local invocations completed.
    pub local_invocations: u64,
    /// Nanoseconds spent in functions.
    pub compute_ns: u64,
    /// Last invocation end, ns since the epoch (0: none).
    pub last_invocation_ns: u64,
    /// Invocations running now.
    pub in_flight: u64,
    /// State keys.
    pub state_keys: u64,
    /// Bytes of state values.
    pub state_bytes: u64,
    /// Messages this process delivered to its peers, by wire.
    #[serde(default)]
    pub messages_sent: crate::peer::DeliveryCounts,
    /// Remote invocations this process made that their callees answered, by wire.
    #[serde(default)]
    pub remote_calls: crate::peer::DeliveryCounts,
    /// Messages put into its mailbox since it started.
    #[serde(default)]
    pub messages_received: u64,
    /// Messages its functions got from its mailbox since it started.
    #[serde(default)]
    pub messages_got: u64,
    /// Messages waiting in its mailbox.
    #[serde(default)]
    pub mailbox_depth: u64,
    /// Bytes of its buffer pool handed out now.
    #[serde(default)]
    pub pool_bytes: u64,
    /// The pool's budget, bytes.
    #[serde(default)]
    pub pool_budget: u64,
    /// Per function, what happened since the previous report (only functions with something new).
    #[serde(default)]
    pub functions: Vec<FunctionReport>,
}

/// One function's invocations since the previous report of its process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionReport {
    /// The function's name.
    pub name: String,
    /// Latencies of the invocations that ran since the previous report; `max_ns` is the longest
    /// of them.
    pub latency: Histogram,
    /// Invocations that failed since the previous report, by status code.
    pub errors: Vec<(u16, u64)>,
    /// Messages its invocations put (acknowledged) since the previous report.
    #[serde(default)]
    pub messages_put: u64,
    /// Messages its invocations got since the previous report.
    #[serde(default)]
    pub messages_got: u64,
}

/// What a process has reported so far: the next report carries what came since.
#[derive(Debug, Default)]
pub struct Reporter {
    last: HashMap<Arc<str>, StatsSnapshot>,
}

impl Reporter {
    /// The process's counters now, with the per-function figures since the previous report.
    pub fn report(&mut self, process: &Process) -> MetricsReport {
        let mut functions = Vec::new();
        for function in process.functions().iter() {
            let now = function.stats.snapshot();
            let interval_max = function.stats.take_interval_max();
            let before = self.last.get(&function.name);
            let mut latency = before.map_or_else(|| now.latency.clone(), |before| now.latency.since(&before.latency));
            latency.max_ns = interval_max;
            let errors: Vec<(u16, u64)> = now
                .errors
                .iter()
                .filter_map(|&(status, n)| {
                    let old = before.and_then(|b| b.errors.iter().find(|(s, _)| *s == status)).map_or(0, |&(_, n)| n);
                    (n > old).then(|| (status.code(), n - old))
                })
                .collect();
            let messages_put = now.messages_put - before.map_or(0, |b| b.messages_put);
            let messages_got = now.messages_got - before.map_or(0, |b| b.messages_got);
            if latency.count() > 0 || !errors.is_empty() || messages_put > 0 || messages_got > 0 {
                let name = function.name.to_string();
                functions.push(FunctionReport { name, latency, errors, messages_put, messages_got });
            }
            self.last.insert(Arc::clone(&function.name), now);
        }
        counters(process, functions)
    }
}

/// The process's counters since it started, with each function's figures since it started (the
/// longest latency since start included): what a scrape of the process alone reports. Reads
/// nothing a [`Reporter`] takes.
pub fn totals(process: &Process) -> MetricsReport {
    let functions = process
        .functions()
        .iter()
        .into_iter()
        .filter_map(|function| {
            let now = function.stats.snapshot();
            let errors: Vec<(u16, u64)> = now.errors.iter().map(|&(status, n)| (status.code(), n)).collect();
            let (messages_put, messages_got) = (now.messages_put, now.messages_got);
            let active = now.latency.count() > 0 || !errors.is_empty() || messages_put > 0 || messages_got > 0;
            active.then(|| FunctionReport {
                name: function.name.to_string(),
                latency: now.latency,
                errors,
                messages_put,
                messages_got,
            })
        })
        .collect();
    counters(process, functions)
}

/// The process's counters now, with `functions`.
fn counters(process: &Process, functions: Vec<FunctionReport>) -> MetricsReport {
    let m = process.metrics();
    let (messages_received, messages_got) = process.mailbox().counts();
    MetricsReport {
        invocations: m.invocations(),
        local_invocations: m.local_invocations(),
        compute_ns: m.compute_ns(),
        last_invocation_ns: m.last_invocation_ns(),
        in_flight: process.in_flight() as u64,
        state_keys: process.state().len() as u64,
        state_bytes: process.state().value_bytes(),
        messages_sent: process.peers().delivered(),
        remote_calls: process.peers().remote_calls(),
        messages_received,
        messages_got,
        mailbox_depth: process.mailbox().len() as u64,
        pool_bytes: process.pool().outstanding() as u64,
        pool_budget: process.pool().budget() as u64,
        functions,
    }
}

/// The answer to a swap request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapConfirmation {
    /// What was written, or why nothing was.
    pub result: Result<SwapReport, String>,
    /// The [`SwapOrder::swap_id`] it answers (empty from older processes).
    #[serde(default)]
    pub swap_id: String,
}

/// Decodes the JSON payload of a control-channel frame.
pub fn read_json<T: for<'de> Deserialize<'de>>(frame: &OwnedFrame) -> io::Result<T> {
    serde_json::from_slice(&frame.payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Blocking frame I/O over a TCP stream, for the control channel (both ends).
#[derive(Debug)]
pub struct FrameStream {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl FrameStream {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        Self { stream, buf: Vec::new() }
    }

    /// The underlying stream (to clone a writer or shut it down).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes one frame.
    pub fn send(&mut self, header: Header, meta: &[u8], payload: &[u8]) -> io::Result<()> {
        write_frame(&mut self.stream, header, meta, payload)
    }

    /// Reads one frame, waiting at most `timeout`; `Ok(None)` when it passes with no whole frame.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Option<OwnedFrame>> {
        self.recv_within(timeout, MAX_CONTROL_FRAME)
    }

    /// Reads one frame of at most `max_frame` bytes after its header (a larger one is an
    /// `InvalidData` error, before any of it is read), waiting at most `timeout`. The buffer grows
    /// by what arrives, at most 64 KiB a read, so a header announcing a large frame
    /// costs nothing until its bytes come.
    pub fn recv_within(&mut self, timeout: Duration, max_frame: usize) -> io::Result<Option<OwnedFrame>> {
        let deadline = Instant::now() + timeout;
        let limits = FrameLimits { max_frame };
        loop {
            match decode_frame(&self.buf, limits).map_err(invalid)? {
                Decoded::Frame(frame, used) => {
                    let owned =
                        OwnedFrame { header: frame.header, meta: frame.meta.to_vec(), payload: frame.payload.to_vec() };
                    self.buf.drain(..used);
                    return Ok(Some(owned));
                }
                Decoded::Incomplete(missing) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    self.stream.set_read_timeout(Some(left))?;
                    let start = self.buf.len();
                    self.buf.resize(start + missing.clamp(4096, READ_CHUNK), 0);
                    match self.stream.read(&mut self.buf[start..]) {
                        Ok(0) => {
                            self.buf.truncate(start);
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        Ok(n) => self.buf.truncate(start + n),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(start),
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                            self.buf.truncate(start);
                            return Ok(None);
                        }
                        Err(e) => {
                            self.buf.truncate(start);
                            return Err(e);
                        }
                    }
                }
            }
        }
    }
}

fn invalid(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Writes a frame with a JSON payload.
pub fn write_json<T: Serialize>(out: &mut impl Write, kind: MessageKind, meta: &[u8], value: &T) -> io::Result<()> {
    let payload = serde_json::to_vec(value).map_err(io::Error::other)?;
    let header = Header { kind, meta_len: 0, status: 0, id: 0, timeout_ms: 0, payload_len: 0 };
    write_frame(out, header, meta, &payload)
}

/// Writes one whole frame.
pub fn write_frame(out: &mut impl Write, header: Header, meta: &[u8], payload: &[u8]) -> io::Result<()> {
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, header, meta, payload).map_err(invalid)?;
    out.write_all(&bytes)
}

/// Hex text of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of hex text; `None` if it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// How a process reaches its control plane.
#[derive(Debug, Clone)]
pub struct ControlLinkOptions {
    /// The control plane's control-channel address.
    pub control_addr: SocketAddr,
    /// This process's data-plane address, announced at registration.
    pub data_addr: String,
    /// This process's RDMA address, announced at registration, if it serves RDMA.
    pub rdma_addr: Option<String>,
    /// The transport of its data-plane address (`uring`, `mio`), announced at registration.
    pub transport: Option<String>,
    /// Where swaps are written.
    pub swap_store: SwapStore,
    /// The process's state files (its working folder), swapped with it.
    pub files_dir: Option<PathBuf>,
    /// How often metrics are sent.
    pub metrics_interval: Duration,
    /// Longest wait for invocations in flight before a swap gives up.
    pub drain_timeout: Duration,
    /// Whether the process started from a snapshot.
    pub restored: bool,
    /// Longest wait, after a confirmed swap, for the control plane's decision on one connection
    /// before the process reconnects to ask again (it stays drained meanwhile).
    pub commit_timeout: Duration,
}

/// Why the control link ended.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEnd {
    /// The process swapped out: it should exit.
    SwappedOut(SwapReport),
    /// The control plane refused the process (wrong secret, unknown process): it should exit.
    Refused(String),
}

/// Runs the process's side of the control channel until the process swaps out or is refused;
/// reconnects with back-off whenever the connection breaks. A process without an application
/// secret cannot prove who it is: it is refused at once, without connecting.
pub fn run_control_link(process: &Arc<Process>, options: &ControlLinkOptions) -> LinkEnd {
    if process.config().secret.is_none() {
        return LinkEnd::Refused(
            "this process has no application secret: it cannot register with the control plane".to_owned(),
        );
    }
    let mut backoff = Duration::from_millis(50);
    // Kept across reconnections: a report a broken connection did not deliver is not sent again,
    // and none is counted twice.
    let mut reporter = Reporter::default();
    // A confirmed swap whose outcome the process has not heard yet, kept across reconnections.
    let mut pending: Option<Pending> = None;
    loop {
        match TcpStream::connect_timeout(&options.control_addr, Duration::from_secs(5)) {
            Ok(stream) => {
                backoff = Duration::from_millis(50);
                match session(process, options, &mut reporter, &mut pending, FrameStream::new(stream)) {
                    Ok(end) => return end,
                    Err(e) => tracing::warn!("control channel to {} broke: {e}; reconnecting", options.control_addr),
                }
            }
            Err(e) => tracing::debug!("control plane {} unreachable: {e}", options.control_addr),
        }
        thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A swap the process wrote and confirmed, waiting for the control plane's decision.
#[derive(Debug)]
struct Pending {
    swap_id: String,
    report: SwapReport,
}

/// Resumes a process after a swap that did not happen: invocations and messages again.
fn resume(process: &Process) {
    process.mailbox().resume();
    process.resume();
}

fn session(
    process: &Arc<Process>,
    options: &ControlLinkOptions,
    reporter: &mut Reporter,
    pending: &mut Option<Pending>,
    mut channel: FrameStream,
) -> io::Result<LinkEnd> {
    let config = process.config();
    let secret = config.secret.as_ref().ok_or_else(|| io::Error::other("this process has no application secret"))?;
    let challenge =
        channel.recv_within(Duration::from_secs(10), MAX_HANDSHAKE_FRAME)?.ok_or(io::ErrorKind::TimedOut)?;
    if challenge.header.kind != MessageKind::Hello {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the control plane did not start with Hello"));
    }
    let hello = HelloMessage {
        proof: hex(&auth::proof(secret.expose(), &challenge.payload, &config.app, &config.id)),
        registration: Registration {
            app: config.app.clone(),
            process: config.id.clone(),
            data_addr: options.data_addr.clone(),
            rdma_addr: options.rdma_addr.clone(),
            transport: options.transport.clone(),
            pid: std::process::id(),
            restored: options.restored,
            pending_swap: pending.as_ref().map(|p| p.swap_id.clone()),
        },
    };
    let who = format!("{}/{}", config.app, config.id);
    write_json(&mut channel.stream, MessageKind::Hello, who.as_bytes(), &hello)?;
    let answer = channel.recv(Duration::from_secs(10))?.ok_or(io::ErrorKind::TimedOut)?;
    if answer.header.kind != MessageKind::Response {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the control plane did not answer the registration"));
    }
    if answer.header.status != Status::Ok.code() {
        return Ok(LinkEnd::Refused(String::from_utf8_lossy(&answer.meta).into_owned()));
    }
    tracing::info!(control = %options.control_addr, "registered with the control plane");
    // From here on every frame the process sends goes through its swap-in requests' writer (one
    // lock for the workers' `SwapInRequest`s and this thread's frames); requests waiting when the
    // connection ends fail then.
    process.swap_ins().connected(channel.stream.try_clone()?);
    let _connected = Connected(process.swap_ins());
    if let Some(swap) = pending.take() {
        let verdict: RegistrationAnswer =
            if answer.payload.is_empty() { RegistrationAnswer::default() } else { read_json(&answer)? };
        if verdict.swap_committed {
            tracing::info!(swap = swap.swap_id, "the control plane recorded the swap");
            return Ok(LinkEnd::SwappedOut(swap.report));
        }
        tracing::warn!(swap = swap.swap_id, "the control plane did not record the swap: serving on");
        resume(process);
    }
    let mut next_metrics = Instant::now();
    loop {
        if Instant::now() >= next_metrics {
            send_json(process, MessageKind::Metrics, &reporter.report(process))?;
            next_metrics = Instant::now() + options.metrics_interval;
        }
        let wait = next_metrics.saturating_duration_since(Instant::now());
        let Some(frame) = channel.recv(wait)? else { continue };
        match frame.header.kind {
            MessageKind::SwapRequest => {
                // Older control planes send no order (`null`): a swap without an id.
                let order: SwapOrder = read_json(&frame).unwrap_or_default();
                let confirmation = swap_out(process, options, &order.swap_id);
                if let Ok(report) = &confirmation.result {
                    *pending = Some(Pending { swap_id: order.swap_id.clone(), report: report.clone() });
                }
                // What ran since the last report goes before the confirmation: a process that
                // swaps out reports no more, and its figures would be lost.
                send_json(process, MessageKind::Metrics, &reporter.report(process))?;
                next_metrics = Instant::now() + options.metrics_interval;
                send_json(process, MessageKind::SwapConfirm, &confirmation)?;
                if let Some(swap) = pending.take() {
                    match await_decision(process, &mut channel, &swap.swap_id, options.commit_timeout) {
                        Ok(true) => return Ok(LinkEnd::SwappedOut(swap.report)),
                        Ok(false) => {
                            tracing::warn!(swap = swap.swap_id, "the control plane abandoned the swap: serving on");
                            resume(process);
                        }
                        Err(e) => {
                            // Still drained: the next registration asks what became of it.
                            *pending = Some(swap);
                            return Err(e);
                        }
                    }
                }
            }
            MessageKind::PeerUpdate => {
                let peers: PeerList = read_json(&frame)?;
                process.set_peers(peers);
            }
            MessageKind::Ping => {
                let pong = Header { kind: MessageKind::Pong, ..frame.header };
                process.swap_ins().send(pong, &[], &frame.payload)?;
            }
            MessageKind::SwapInAnswer => process.swap_ins().answered(&frame),
            other => tracing::warn!("unexpected {other:?} frame on the control channel"),
        }
    }
}

/// Marks the control connection of a session gone when the session ends, however it ends.
struct Connected<'a>(&'a crate::swap_in::SwapIns);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.disconnected();
    }
}

/// Sends a frame of `kind` with `value` as its JSON payload on the process's control connection.
fn send_json<T: Serialize>(process: &Process, kind: MessageKind, value: &T) -> io::Result<()> {
    let payload = serde_json::to_vec(value).map_err(io::Error::other)?;
    let header = Header { kind, meta_len: 0, status: 0, id: 0, timeout_ms: 0, payload_len: 0 };
    process.swap_ins().send(header, &[], &payload)
}

/// Waits for the control plane's decision on swap `swap_id`: `true` once SWAPPED_OUT is
/// recorded, `false` when it abandoned the swap; an error when the connection breaks or no
/// decision comes within `timeout`.
fn await_decision(process: &Process, channel: &mut FrameStream, swap_id: &str, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = channel.recv(left)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::TimedOut, format!("no decision on swap {swap_id} within {timeout:?}"))
        })?;
        match frame.header.kind {
            MessageKind::SwapCommit => {
                let decision: SwapDecision = read_json(&frame)?;
                if decision.swap_id == swap_id {
                    return Ok(decision.committed);
                }
                tracing::warn!("a decision on swap {} while waiting for {swap_id}: ignored", decision.swap_id);
            }
            MessageKind::Ping => {
                let pong = Header { kind: MessageKind::Pong, ..frame.header };
                process.swap_ins().send(pong, &[], &frame.payload)?;
            }
            MessageKind::SwapInAnswer => process.swap_ins().answered(&frame),
            // Peer updates and the like wait: the process serves nobody while it waits.
            _ => {}
        }
    }
}

/// Drains the process and writes its snapshot; on failure the process serves on.
///
/// Order matters: the mailbox stops taking messages (senders get a clear "swapping out" error
/// instead of a message that would be lost), the invocations in flight finish (they may still
/// get messages), and only then are state and messages written.
fn swap_out(process: &Process, options: &ControlLinkOptions, swap_id: &str) -> SwapConfirmation {
    let config = process.config();
    process.mailbox().pause();
    let swap_id_owned = swap_id.to_owned();
    if !process.drain(options.drain_timeout) {
        resume(process);
        let busy = process.in_flight();
        return SwapConfirmation {
            result: Err(format!("{busy} invocations still running after {:?}", options.drain_timeout)),
            swap_id: swap_id_owned,
        };
    }
    crate::swap::test_pause("drained");
    let mailbox = process.mailbox().snapshot();
    let result = options
        .swap_store
        .write_swap(swap_id, &config.app, &config.id, process.state(), &mailbox, options.files_dir.as_deref())
        .map_err(|e| e.to_string());
    match &result {
        Ok(_) => crate::swap::test_pause("renamed"),
        Err(_) => resume(process),
    }
    SwapConfirmation { result, swap_id: swap_id_owned }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_messages_of_older_peers_still_parse() {
        // An older control plane's request carries no order, its registration answer nothing.
        let order: SwapOrder = serde_json::from_str("null").unwrap_or_default();
        assert_eq!(order.swap_id, "");
        let answer: RegistrationAnswer = serde_json::from_str("{}").unwrap();
        assert!(!answer.swap_committed);
        // An older process's confirmation and registration have no swap id.
        let old = r#"{"result":{"Ok":{"bytes":5,"secs":0.5,"files":2}}}"#;
        let confirmation: SwapConfirmation = serde_json::from_str(old).unwrap();
        assert_eq!((confirmation.swap_id.as_str(), confirmation.result.unwrap().bytes), ("", 5));
        let old = r#"{"app":"a","process":"p","data_addr":"h:1","pid":7,"restored":false}"#;
        let registration: Registration = serde_json::from_str(old).unwrap();
        assert_eq!(registration.pending_swap, None);
        let text = serde_json::to_string(&registration).unwrap();
        assert!(!text.contains("pending_swap"), "{text}");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(unhex("000fff"), Some(vec![0, 15, 255]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }
}
