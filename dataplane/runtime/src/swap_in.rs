//! A remote invocation's callee swapped in on the caller's behalf: the caller's side of the
//! `SwapInRequest` / `SwapInAnswer` exchange on the control channel (`docs/remote-invocation.md`).
//!
//! A worker whose call finds its callee SWAPPED_OUT asks its control plane, over its own
//! (authenticated) control channel, to swap the callee in: [`SwapIns::swap_in`] writes a
//! `SwapInRequest` (id n, payload [`SwapInRequest`], `timeout_ms` what is left of its deadline)
//! and waits, by its deadline, for the `SwapInAnswer` of id n, which the control channel's thread
//! hands over ([`SwapIns::answered`]): status `Ok` with the callee's [`PeerInfo`] once it is
//! ALLOCATED again (the control plane sent the new peer list before), or a status and a reason.
//! The control plane swaps a callee in once however many callers ask at the same time.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::peer::PeerInfo;
use praas_wire::protocol::{encode_frame, Header, MessageKind, OwnedFrame, Status};

/// Most swap-in requests of one process waiting for their answers at once; one more fails with
/// [`SwapInError::TooMany`].
pub const MAX_WAITING: usize = 1024;
/// Longest a frame may take to be written on the control connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The payload of a `SwapInRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapInRequest {
    /// The process of the caller's application to swap in.
    pub process: String,
}

/// Why a callee was not swapped in for a call. [`SwapInError::status`] gives the code a function
/// sees.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SwapInError {
    /// The application's manifest says `swap_in_on_call = false`.
    #[error("process {dest:?} is swapped out and this application does not swap in on call (swap_in_on_call = false): invoke it through the control plane to swap it in")]
    Disabled {
        /// The callee.
        dest: String,
    },
    /// This process has no control channel now (it serves alone, or the channel is reconnecting).
    #[error("process {dest:?} is swapped out and this process has no control channel to ask for it to be swapped in")]
    NoControlChannel {
        /// The callee.
        dest: String,
    },
    /// The request could not be written, or the channel broke before the answer came.
    #[error("asking the control plane to swap in process {dest:?}: {reason}")]
    Channel {
        /// The callee.
        dest: String,
        /// What failed.
        reason: String,
    },
    /// The control plane did not swap the callee in (no such process, the swap-in failed, ...).
    #[error("the control plane did not swap in process {dest:?}: {message}")]
    Refused {
        /// The callee.
        dest: String,
        /// The control plane's status.
        status: Status,
        /// Its reason.
        message: String,
    },
    /// The caller's deadline passed before the callee was swapped in (the swap-in goes on).
    #[error("process {dest:?} was not swapped in within {timeout:?}, the caller's deadline")]
    Timeout {
        /// The callee.
        dest: String,
        /// The time the call had.
        timeout: Duration,
    },
    /// [`MAX_WAITING`] requests already wait.
    #[error("{0} swap-in requests of this process already wait for the control plane")]
    TooMany(usize),
}

impl SwapInError {
    /// The status a function sees for this error.
    pub fn status(&self) -> Status {
        match self {
            Self::Disabled { .. } | Self::NoControlChannel { .. } | Self::Channel { .. } => Status::Unavailable,
            Self::Refused { status, .. } => *status,
            Self::Timeout { .. } => Status::Timeout,
            Self::TooMany(_) => Status::Overloaded,
        }
    }
}

/// What became of a request.
#[derive(Debug)]
enum Reply {
    /// The callee's entry, or the control plane's status and reason.
    Answer(Result<PeerInfo, (Status, String)>),
    /// The connection it went out on ended first.
    Broke,
}

#[derive(Debug, Default)]
struct Waiting {
    next_id: u64,
    /// Requests sent and not answered yet, by id; `Some` once answered.
    answers: HashMap<u64, Option<Reply>>,
    /// The write half of the current control connection (a clone of its socket); `None`
    /// between connections.
    writer: Option<TcpStream>,
}

/// This process's swap-in requests to its control plane, and the control connection's write
/// half, which every frame the process sends on it goes through (one lock: frames never
/// interleave).
#[derive(Debug)]
pub struct SwapIns {
    enabled: bool,
    waiting: Mutex<Waiting>,
    changed: Condvar,
}

impl SwapIns {
    /// Requests for a process whose application does (`enabled`) or does not swap in on call.
    pub fn new(enabled: bool) -> Self {
        Self { enabled, waiting: Mutex::new(Waiting { next_id: 1, ..Waiting::default() }), changed: Condvar::new() }
    }

    /// Whether a swapped-out callee is swapped in on call (else the call fails at once).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A control connection is registered: frames go out on `writer` (a clone of its socket),
    /// each within [`WRITE_TIMEOUT`] (a control plane that reads nothing breaks the connection,
    /// never blocks a worker for good).
    pub fn connected(&self, writer: TcpStream) {
        if let Err(e) = writer.set_write_timeout(Some(WRITE_TIMEOUT)) {
            tracing::warn!("the control connection takes no write timeout: {e}");
        }
        self.waiting().writer = Some(writer);
    }

    /// The control connection ended: requests sent on it fail (their answers cannot come).
    pub fn disconnected(&self) {
        let mut waiting = self.waiting();
        waiting.writer = None;
        for slot in waiting.answers.values_mut().filter(|slot| slot.is_none()) {
            *slot = Some(Reply::Broke);
        }
        drop(waiting);
        self.changed.notify_all();
    }

    /// Writes one frame on the control connection, if there is one (`NotConnected` otherwise).
    pub fn send(&self, header: Header, meta: &[u8], payload: &[u8]) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, header, meta, payload)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut waiting = self.waiting();
        let writer = waiting.writer.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
        writer.write_all(&bytes)
    }

    /// Hands over a `SwapInAnswer` the control channel read. An answer nobody waits for (its
    /// caller's deadline passed) is dropped.
    pub fn answered(&self, frame: &OwnedFrame) {
        let status = Status::from_code(frame.header.status);
        let answer = if status == Status::Ok {
            serde_json::from_slice::<PeerInfo>(&frame.payload)
                .map_err(|e| (Status::Unavailable, format!("an answer that is not a peer entry: {e}")))
        } else {
            Err((status, String::from_utf8_lossy(&frame.meta).into_owned()))
        };
        let mut waiting = self.waiting();
        if let Some(slot @ None) = waiting.answers.get_mut(&frame.header.id) {
            *slot = Some(Reply::Answer(answer));
            drop(waiting);
            self.changed.notify_all();
        }
    }

    /// Asks the control plane to swap in process `dest` of this application and waits, by
    /// `deadline`, until it is ALLOCATED again: its peer entry then.
    pub fn swap_in(&self, dest: &str, deadline: Instant) -> Result<PeerInfo, SwapInError> {
        if !self.enabled {
            return Err(SwapInError::Disabled { dest: dest.to_owned() });
        }
        let started = Instant::now();
        let payload = serde_json::to_vec(&SwapInRequest { process: dest.to_owned() })
            .map_err(|e| SwapInError::Channel { dest: dest.to_owned(), reason: e.to_string() })?;
        let mut waiting = self.waiting();
        if waiting.writer.is_none() {
            return Err(SwapInError::NoControlChannel { dest: dest.to_owned() });
        }
        if waiting.answers.len() >= MAX_WAITING {
            return Err(SwapInError::TooMany(waiting.answers.len()));
        }
        let id = waiting.next_id;
        waiting.next_id += 1;
        let left = deadline.saturating_duration_since(started);
        let timeout_ms = u32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX).max(1);
        let header = Header {
            kind: MessageKind::SwapInRequest,
            meta_len: 0,
            status: 0,
            id,
            timeout_ms,
            payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        };
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, header, &[], &payload)
            .map_err(|e| SwapInError::Channel { dest: dest.to_owned(), reason: e.to_string() })?;
        let written = match waiting.writer.as_mut() {
            Some(writer) => writer.write_all(&bytes),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        if let Err(e) = written {
            return Err(SwapInError::Channel { dest: dest.to_owned(), reason: format!("sending the request: {e}") });
        }
        waiting.answers.insert(id, None);
        let answer = loop {
            if let Some(Some(_)) = waiting.answers.get(&id) {
                break waiting.answers.remove(&id).flatten();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                waiting.answers.remove(&id);
                break None;
            }
            waiting = self.changed.wait_timeout(waiting, left).unwrap_or_else(|p| p.into_inner()).0;
        };
        drop(waiting);
        match answer {
            Some(Reply::Answer(Ok(info))) => Ok(info),
            Some(Reply::Answer(Err((status, message)))) => {
                Err(SwapInError::Refused { dest: dest.to_owned(), status, message })
            }
            Some(Reply::Broke) => Err(SwapInError::Channel {
                dest: dest.to_owned(),
                reason: "the control channel broke before the answer came".to_owned(),
            }),
            None => Err(SwapInError::Timeout { dest: dest.to_owned(), timeout: deadline - started }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use praas_wire::lifecycle::ProcessStatus;
    use praas_wire::protocol::{decode_frame, Decoded, FrameLimits};
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::Arc;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        (near, far)
    }

    fn read_frame(stream: &mut TcpStream) -> OwnedFrame {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Decoded::Frame(frame, _) = decode_frame(&buf, FrameLimits::default()).unwrap() {
                return OwnedFrame { header: frame.header, meta: frame.meta.to_vec(), payload: frame.payload.to_vec() };
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the stream closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn a_request_is_answered_refused_timed_out_or_failed_with_its_channel() {
        let ins = Arc::new(SwapIns::new(true));
        let far_future = Instant::now() + Duration::from_secs(10);
        // No channel: at once.
        assert!(matches!(ins.swap_in("p", far_future), Err(SwapInError::NoControlChannel { .. })));
        let (near, mut far) = pair();
        ins.connected(near);

        // Answered with the peer entry.
        let asking = {
            let ins = Arc::clone(&ins);
            std::thread::spawn(move || ins.swap_in("p", far_future))
        };
        let request = read_frame(&mut far);
        assert_eq!(request.header.kind, MessageKind::SwapInRequest);
        assert!(request.header.timeout_ms > 9_000, "{}", request.header.timeout_ms);
        let asked: SwapInRequest = serde_json::from_slice(&request.payload).unwrap();
        assert_eq!(asked.process, "p");
        let info =
            PeerInfo { id: "p".into(), addr: "127.0.0.1:9".into(), rdma: None, status: ProcessStatus::Allocated };
        let mut answer = OwnedFrame {
            header: Header::response(request.header.id, Status::Ok, 0, 0),
            meta: Vec::new(),
            payload: serde_json::to_vec(&info).unwrap(),
        };
        answer.header.kind = MessageKind::SwapInAnswer;
        // An answer for another id is dropped.
        ins.answered(&OwnedFrame { header: Header { id: 999, ..answer.header }, ..answer.clone() });
        ins.answered(&answer);
        assert_eq!(asking.join().unwrap().unwrap(), info);

        // Refused with the control plane's status.
        let asking = {
            let ins = Arc::clone(&ins);
            std::thread::spawn(move || ins.swap_in("q", far_future))
        };
        let request = read_frame(&mut far);
        let refusal = OwnedFrame {
            header: Header {
                kind: MessageKind::SwapInAnswer,
                ..Header::response(request.header.id, Status::NotFound, 4, 0)
            },
            meta: b"no q".to_vec(),
            payload: Vec::new(),
        };
        ins.answered(&refusal);
        let err = asking.join().unwrap().unwrap_err();
        assert_eq!(err.status(), Status::NotFound, "{err}");
        assert!(err.to_string().contains("no q"), "{err}");

        // Not answered by the deadline: TIMEOUT, and the slot is gone.
        let err = ins.swap_in("r", Instant::now() + Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.status(), Status::Timeout, "{err}");
        assert!(ins.waiting().answers.is_empty());
        assert_eq!(read_frame(&mut far).header.kind, MessageKind::SwapInRequest, "it was asked all the same");

        // The channel breaks while one waits: UNAVAILABLE before its deadline.
        let asking = {
            let ins = Arc::clone(&ins);
            std::thread::spawn(move || ins.swap_in("s", far_future))
        };
        let _ = read_frame(&mut far);
        let began = Instant::now();
        ins.disconnected();
        let err = asking.join().unwrap().unwrap_err();
        assert_eq!(err.status(), Status::Unavailable, "{err}");
        assert!(began.elapsed() < Duration::from_secs(1));
        assert!(err.to_string().contains("broke"), "{err}");
    }

    #[test]
    fn a_disabled_process_fails_at_once_without_asking() {
        let ins = SwapIns::new(false);
        let (near, _far) = pair();
        ins.connected(near);
        let err = ins.swap_in("p", Instant::now() + Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, SwapInError::Disabled { .. }), "{err}");
        assert_eq!(err.status(), Status::Unavailable);
        assert!(err.to_string().contains("swap_in_on_call = false"), "{err}");
    }
}
