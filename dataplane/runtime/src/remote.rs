//! Remote invocations: a function invoking a function of *another* process of its application
//! (the PraaS paper's fourth invocation path), over the same authenticated peer connections that
//! carry messages ([`crate::peer`]).
//!
//! A call is an `Invoke` frame on a peer connection (TCP, or RDMA when both ends serve it) whose
//! `timeout_ms` is what is left of the caller's deadline, answered by the callee's `Response`
//! frame. The callee serves it like any invocation, on a connection that proved with the
//! application's secret that it comes from a process of the application. A call is started by
//! [`PeerDirectory::submit`] and finished by [`RemoteCall::wait`] or [`wait_any`]: several calls
//! submitted before waiting are in flight at once, so gathering from N processes costs about one
//! round trip. A call that is not answered by the deadline fails with [`Status::Timeout`] and its
//! connection is closed, so that its late answer is dropped, never taken for another's.
//!
//! `docs/remote-invocation.md` has the contract.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::peer::{Peer, PeerConnection, PeerDirectory, PeerError};
use crate::swap_in::{SwapInError, SwapIns};
use praas_wire::lifecycle::ProcessStatus;
use praas_wire::protocol::{response_result, FrameLimits, Header, RemoteFailure, Status};
use std::sync::Arc;

/// How long a remote invocation may take when the caller has no deadline of its own.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a remote invocation failed. [`RemoteError::status`] gives the code a function sees.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The control plane never announced a process of that id.
    #[error("unknown process {dest:?}: this application's processes are {known:?}")]
    UnknownProcess {
        /// The id asked for.
        dest: String,
        /// The ids known.
        known: Vec<String>,
    },
    /// The callee is swapped out and the call does not ask the control plane to swap it in (a
    /// process with no [`SwapIns`] given).
    #[error("process {dest:?} is swapped out: invoke it through the control plane to swap it in")]
    SwappedOut {
        /// The callee.
        dest: String,
    },
    /// The callee is swapped out and was not swapped in for the call (the application does not
    /// swap in on call, the control plane refused or failed, the caller's deadline passed).
    #[error("invoking {function:?} on process {dest:?}: {source}")]
    NotSwappedIn {
        /// The callee.
        dest: String,
        /// The function.
        function: String,
        /// Why.
        source: SwapInError,
    },
    /// The callee is not running (allocating, swapping, closing, closed, failed).
    #[error("process {dest:?} is {status}: it cannot be invoked now")]
    NotRunning {
        /// The callee.
        dest: String,
        /// Its status.
        status: ProcessStatus,
    },
    /// No authenticated connection to the callee, or it broke before the answer came.
    #[error("invoking {function:?} on process {dest:?}: {source}")]
    Connection {
        /// The callee.
        dest: String,
        /// The function.
        function: String,
        /// What failed.
        source: Box<PeerError>,
    },
    /// The callee answered with an error: no such function, the function failed or panicked, it
    /// ran past the deadline, ...
    #[error("{function:?} on process {dest:?}: {message}")]
    Failed {
        /// The callee.
        dest: String,
        /// The function.
        function: String,
        /// Its status.
        status: Status,
        /// Its explanation.
        message: String,
    },
    /// The caller's deadline passed before the answer came (the answer, if it comes, is dropped).
    #[error("{function:?} on process {dest:?} did not answer within {timeout:?}, the caller's deadline")]
    Timeout {
        /// The callee.
        dest: String,
        /// The function.
        function: String,
        /// The time the call had.
        timeout: Duration,
    },
    /// Function name or input too large for a frame.
    #[error("an invocation of {size} bytes (name and input) exceeds the frame limit of {limit} bytes")]
    TooLarge {
        /// Name plus input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A remote invocation from a function that runs on an I/O thread, which must not block.
    #[error("remote invocations wait for their answer, which would block the I/O thread: declare function {function:?} with mode = \"worker\"")]
    Inline {
        /// The calling function.
        function: String,
    },
    /// A handle that names no call in flight (never submitted, or already waited for).
    #[error("no remote invocation in flight has handle {0}")]
    UnknownHandle(u64),
    /// Too many calls of one invocation in flight.
    #[error("{0} remote invocations are already in flight from this invocation")]
    TooMany(usize),
}

impl RemoteError {
    /// The status a function sees for this error.
    pub fn status(&self) -> Status {
        match self {
            Self::UnknownProcess { .. } => Status::NotFound,
            Self::SwappedOut { .. } | Self::NotRunning { .. } => Status::Unavailable,
            Self::NotSwappedIn { source, .. } => source.status(),
            Self::Connection { source, .. } => match source.status() {
                // The callee went away mid-call, or cannot be reached.
                Status::Timeout => Status::Timeout,
                status => status,
            },
            Self::Failed { status, .. } => *status,
            Self::Timeout { .. } => Status::Timeout,
            Self::TooLarge { .. } => Status::TooLarge,
            Self::Inline { .. } => Status::Unsupported,
            Self::UnknownHandle(_) => Status::InvalidArgument,
            Self::TooMany(_) => Status::Overloaded,
        }
    }
}

/// A remote invocation in flight: its request is sent, its answer not read yet.
pub struct RemoteCall {
    dest: String,
    function: String,
    peer: Arc<Peer>,
    conn: PeerConnection,
    id: u64,
    started: Instant,
    deadline: Instant,
    max_frame: usize,
}

impl std::fmt::Debug for RemoteCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCall").field("dest", &self.dest).field("function", &self.function).finish()
    }
}

/// The `timeout_ms` a call carries: what is left until `deadline`, rounded up, at least 1 ms
/// (0 would mean "the callee's default").
fn timeout_ms(deadline: Instant) -> u32 {
    let left = deadline.saturating_duration_since(Instant::now());
    u32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX).max(1)
}

impl PeerDirectory {
    /// Starts invoking `function` of process `dest` with `input`, to be answered by `deadline`
    /// (which travels with the call); returns once the request is sent. Finish it with
    /// [`RemoteCall::wait`] or [`wait_any`]. A callee announced as swapped out is first swapped
    /// in through `swap_ins` (the process's requests to its control plane), within `deadline`;
    /// without `swap_ins` such a call fails at once ([`RemoteError::SwappedOut`]).
    pub fn submit(
        &self,
        dest: &str,
        function: &str,
        input: &[u8],
        deadline: Instant,
        swap_ins: Option<&SwapIns>,
    ) -> Result<RemoteCall, RemoteError> {
        let size = function.len() + input.len();
        let limit = self.max_frame();
        if size > limit || function.len() > u16::MAX as usize || input.len() > u32::MAX as usize {
            return Err(RemoteError::TooLarge { size, limit });
        }
        let started = Instant::now();
        let connection = |source: PeerError| match source {
            PeerError::UnknownPeer { dest, known } => RemoteError::UnknownProcess { dest, known },
            PeerError::SwappedOut { dest } => RemoteError::SwappedOut { dest },
            PeerError::NotRunning { dest, status } => RemoteError::NotRunning { dest, status },
            PeerError::Timeout { dest, .. } => {
                RemoteError::Timeout { dest, function: function.to_owned(), timeout: deadline - started }
            }
            source => RemoteError::Connection {
                dest: dest.to_owned(),
                function: function.to_owned(),
                source: Box::new(source),
            },
        };
        // Swapped out, or on its way out or back in as last announced (the control plane waits
        // for the transition to end): swapped in through the control plane first.
        let ask = match (self.running_peer(dest), swap_ins) {
            (Err(PeerError::SwappedOut { .. }), Some(swap_ins)) => Ok(swap_ins),
            (
                Err(PeerError::NotRunning { status: ProcessStatus::SwappingOut | ProcessStatus::SwappingIn, .. }),
                Some(swap_ins),
            ) if swap_ins.enabled() => Ok(swap_ins),
            (found, _) => Err(found),
        };
        let peer = match ask {
            Ok(swap_ins) => {
                let not_swapped_in =
                    |source| RemoteError::NotSwappedIn { dest: dest.to_owned(), function: function.to_owned(), source };
                let info = swap_ins.swap_in(dest, deadline).map_err(not_swapped_in)?;
                self.swapped_in(info);
                self.running_peer(dest)
            }
            Err(found) => found,
        };
        let peer = peer.map_err(connection)?;
        let mut conn = self.connection(dest, &peer, deadline).map_err(connection)?;
        let id = conn.next_id;
        conn.next_id += 1;
        let header = Header::invoke(id, 0, timeout_ms(deadline), 0);
        let sent = conn.wire.send(header, function.as_bytes(), input, deadline);
        let call = RemoteCall {
            dest: dest.to_owned(),
            function: function.to_owned(),
            peer,
            conn,
            id,
            started,
            deadline,
            max_frame: limit,
        };
        match sent {
            Ok(()) => Ok(call),
            Err(err) => Err(call.wire_error(err)),
        }
    }

    /// Invokes `function` of process `dest` with `input` and waits for its output, by `deadline`
    /// (a swapped-out callee swapped in first through `swap_ins`, as [`PeerDirectory::submit`]).
    pub fn invoke_remote(
        &self,
        dest: &str,
        function: &str,
        input: &[u8],
        deadline: Instant,
        swap_ins: Option<&SwapIns>,
    ) -> Result<Vec<u8>, RemoteError> {
        self.submit(dest, function, input, deadline, swap_ins)?.wait(self)
    }
}

impl RemoteCall {
    /// The process it invokes.
    pub fn dest(&self) -> &str {
        &self.dest
    }

    /// Whether the call goes over RDMA (else TCP).
    fn is_rdma(&self) -> bool {
        self.conn.wire.kind() == crate::peer::PeerWire::Rdma
    }

    /// Reads the answer (by the call's deadline) and returns the output; the connection is kept
    /// for the next exchange if it is in step, closed otherwise.
    pub fn wait(mut self, peers: &PeerDirectory) -> Result<Vec<u8>, RemoteError> {
        let limits = FrameLimits { max_frame: self.max_frame.saturating_add(u16::MAX as usize) };
        let frame = match self.conn.wire.recv(limits, self.deadline) {
            Ok(frame) => frame,
            Err(err) => return Err(self.wire_error(err)),
        };
        let header = frame.header;
        let answer = response_result(&header, &frame.meta);
        let Some(answer) = answer.filter(|_| header.id == self.id) else {
            let err = crate::peer::WireError::UnexpectedAnswer { kind: header.kind, id: header.id, message: self.id };
            return Err(self.wire_error(err));
        };
        let RemoteCall { dest, function, peer, conn, .. } = self;
        peers.count_remote_call(conn.wire.kind());
        peers.keep(&peer, conn);
        match answer {
            Ok(()) => Ok(frame.payload),
            Err(RemoteFailure { status, message, .. }) => Err(RemoteError::Failed { dest, function, status, message }),
        }
    }

    /// The error for `err` on the call's connection (which is dropped: closed).
    fn wire_error(self, err: crate::peer::WireError) -> RemoteError {
        let RemoteCall { dest, function, peer, conn, started, deadline, .. } = self;
        match err {
            crate::peer::WireError::Timeout => RemoteError::Timeout { dest, function, timeout: deadline - started },
            source => {
                let addr = peer.addr_of(conn.wire.kind());
                let source = PeerError::Unreachable { dest: dest.clone(), addr, source };
                RemoteError::Connection { dest, function, source: Box::new(source) }
            }
        }
    }
}

/// Waits until one of `calls` has its answer (or fails), removes it from `calls` and returns its
/// index there and its result; `None` if `calls` is empty. The calls are waited for together,
/// whatever their wire: one `poll` over the TCP sockets and the RDMA links' completion channels
/// and set-up sockets, so the first answer to arrive is the first returned.
pub fn wait_any(calls: &mut Vec<RemoteCall>, peers: &PeerDirectory) -> Option<(usize, Result<Vec<u8>, RemoteError>)> {
    if calls.is_empty() {
        return None;
    }
    let mut fds: Vec<std::os::fd::RawFd> = Vec::with_capacity(2 * calls.len());
    // The call each descriptor in `fds` is of.
    let mut owners: Vec<usize> = Vec::with_capacity(2 * calls.len());
    let ready = 'ready: loop {
        // An RDMA call whose answer arrived (or whose link broke) is taken first.
        if let Some(index) = calls.iter_mut().position(|c| c.conn.wire.frame_ready()) {
            break index;
        }
        let now = Instant::now();
        let earliest = calls.iter().map(|c| c.deadline).min().unwrap_or(now);
        if earliest <= now {
            // The first call past its deadline: its wait says Timeout at once.
            break calls.iter().position(|c| c.deadline <= now).unwrap_or(0);
        }
        fds.clear();
        owners.clear();
        for (index, call) in calls.iter_mut().enumerate() {
            if !call.conn.wire.wait_fds(&mut fds) {
                // Something arrived on that RDMA link as it was armed: look again.
                continue 'ready;
            }
            owners.resize(fds.len(), index);
        }
        let mut polled: Vec<libc::pollfd> =
            fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
        let wait_ms = earliest.saturating_duration_since(now).as_nanos().div_ceil(1_000_000);
        let wait_ms = i32::try_from(wait_ms).unwrap_or(i32::MAX);
        let nfds = libc::nfds_t::try_from(polled.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `polled` is a live, writable array of `nfds` pollfd structs for the whole call.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), nfds, wait_ms) };
        if n > 0 {
            // A TCP call with bytes (or a close) is read now; an RDMA link that woke up is
            // looked at by `frame_ready` at the top (it may have been a grant, not the answer).
            let tcp = polled.iter().zip(&owners).find(|(p, index)| p.revents != 0 && !calls[**index].is_rdma());
            if let Some((_, index)) = tcp {
                break *index;
            }
        }
        // n == 0 (a deadline came: looked at above), an RDMA wake-up, EINTR, or spurious: look again.
    };
    let call = calls.remove(ready);
    Some((ready, call.wait(peers)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Mailbox;
    use crate::peer::PeerInfo;
    use praas_wire::auth::Secret;

    #[test]
    fn every_error_maps_to_the_status_a_function_sees() {
        let d = || "p1".to_owned();
        let f = || "echo".to_owned();
        let cases = [
            (RemoteError::UnknownProcess { dest: d(), known: vec![] }, Status::NotFound),
            (RemoteError::SwappedOut { dest: d() }, Status::Unavailable),
            (
                RemoteError::NotSwappedIn {
                    dest: d(),
                    function: f(),
                    source: SwapInError::Timeout { dest: d(), timeout: Duration::ZERO },
                },
                Status::Timeout,
            ),
            (RemoteError::NotRunning { dest: d(), status: ProcessStatus::Closing }, Status::Unavailable),
            (
                RemoteError::Failed { dest: d(), function: f(), status: Status::UnknownFunction, message: "m".into() },
                Status::UnknownFunction,
            ),
            (RemoteError::Timeout { dest: d(), function: f(), timeout: Duration::ZERO }, Status::Timeout),
            (RemoteError::TooLarge { size: 2, limit: 1 }, Status::TooLarge),
            (RemoteError::Inline { function: f() }, Status::Unsupported),
            (RemoteError::UnknownHandle(3), Status::InvalidArgument),
            (RemoteError::TooMany(3), Status::Overloaded),
            (
                RemoteError::Connection {
                    dest: d(),
                    function: f(),
                    source: Box::new(PeerError::Unauthenticated { dest: d(), reason: "r".into() }),
                },
                Status::Unauthenticated,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status, "{err}");
        }
    }

    #[test]
    fn the_deadline_travels_rounded_up_and_never_as_zero() {
        let now = Instant::now();
        assert_eq!(timeout_ms(now), 1);
        let ms = timeout_ms(now + Duration::from_millis(250));
        assert!((240..=250).contains(&ms), "{ms}");
    }

    #[test]
    fn unknown_swapped_out_and_oversized_calls_fail_before_connecting() {
        let peers = PeerDirectory::new("app", "me", Secret::new("s").ok(), 64, Arc::new(Mailbox::new()));
        peers.update(vec![PeerInfo {
            id: "stored".into(),
            addr: "127.0.0.1:1".into(),
            rdma: None,
            status: ProcessStatus::SwappedOut,
        }]);
        let deadline = Instant::now() + Duration::from_secs(1);
        let err = peers.invoke_remote("nobody", "echo", b"x", deadline, None).unwrap_err();
        assert!(matches!(&err, RemoteError::UnknownProcess { known, .. } if known == &["stored"]), "{err}");
        let err = peers.invoke_remote("stored", "echo", b"x", deadline, None).unwrap_err();
        assert_eq!(err.status(), Status::Unavailable, "{err}");
        assert!(err.to_string().contains("swapped out"), "{err}");
        // Asked to swap in with no control channel: UNAVAILABLE at once, saying why.
        let swap_ins = SwapIns::new(true);
        let err = peers.invoke_remote("stored", "echo", b"x", deadline, Some(&swap_ins)).unwrap_err();
        assert!(
            matches!(&err, RemoteError::NotSwappedIn { source: SwapInError::NoControlChannel { .. }, .. }),
            "{err}"
        );
        assert_eq!(err.status(), Status::Unavailable, "{err}");
        let err = peers.invoke_remote("stored", "echo", &[0; 64], deadline, None).unwrap_err();
        assert!(matches!(err, RemoteError::TooLarge { size: 68, limit: 64 }), "{err}");
        assert!(wait_any(&mut Vec::new(), &peers).is_none());
    }
}
