//! The connection policy's bounds, written once for every transport (mio, io_uring, and RDMA's
//! set-up channel): how many connections a process and one source address hold
//! ([`ConnectionLimits`], counted by [`Connections::admit`]), how long one may stay idle and how
//! long a frame begun may stall ([`Activity`], [`Expiry`]), and what a connection is answered
//! when it is turned away ([`Refusal`]; laid out as a frame by
//! [`Refusal::into_frame`](crate::serve) in the serving seam).
//!
//! A leaf below [`serve`](crate::serve) and [`process_core`](crate::process_core): it knows
//! buffers and statuses, nothing of invocations.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::buffer::BufferPool;
use praas_wire::protocol::{header_id, FrameError, Status};

/// How many connections a process serves and how long they may take: the limits every transport
/// applies (its connections, and for RDMA the TCP side channel that sets up queue pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections of the process at once, across its transports (`--max-connections`).
    pub max_connections: usize,
    /// Connections from one source address at once (`--max-connections-per-source`).
    pub max_per_source: usize,
    /// A connection with nothing in flight that sends nothing for this long is closed
    /// (`--idle-timeout-ms`).
    pub idle_timeout: Duration,
    /// A frame begun must not stall: when none of its bytes arrived for this long, the
    /// connection is refused and closed (`--header-timeout-ms`). A frame that keeps arriving is
    /// never cut (a 1 GiB upload on a slow link); a trickle costs only the bytes it sent, within
    /// the connection limits.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_per_source: 4096,
            idle_timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionLimits {
    /// How often a transport looks for connections past a timeout: a quarter of the shorter one,
    /// between 10 ms and 1 s.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle_timeout.min(self.header_timeout) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// The connections a process holds, counted for [`ConnectionLimits`]; shared by its transports.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    pool: BufferPool,
    open: AtomicUsize,
    /// Most connections open at once since memory was last given back.
    peak: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// Connections a burst must have reached for its end to give memory back.
const RECLAIM_AFTER: usize = 256;

impl Connections {
    /// No connections yet, limited by `limits`; `pool` is trimmed after a burst of them ends.
    pub fn new(limits: ConnectionLimits, pool: BufferPool) -> Self {
        Self { limits, pool, open: AtomicUsize::new(0), peak: AtomicUsize::new(0), per_source: Mutex::default() }
    }

    /// The limits.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Counts a new connection from `source`, or refuses it (`Overloaded`, naming the limit) when
    /// the process or that source holds as many as allowed. The connection is counted until the
    /// [`Admitted`] is dropped.
    pub fn admit(self: &Arc<Self>, process: &str, source: IpAddr) -> Result<Admitted, Refusal> {
        let mut per_source = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.open.load(Ordering::Acquire);
        if open >= self.limits.max_connections {
            return Err(Refusal::overloaded(format!(
                "process {process:?} serves {} connections at most (--max-connections): connection refused",
                self.limits.max_connections
            )));
        }
        let from_source = per_source.entry(source).or_insert(0);
        if *from_source >= self.limits.max_per_source {
            return Err(Refusal::overloaded(format!(
                "process {process:?} serves {} connections at most from one address (--max-connections-per-source), \
                 and {source} holds as many: connection refused",
                self.limits.max_per_source
            )));
        }
        *from_source += 1;
        let now = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(now, Ordering::AcqRel);
        Ok(Admitted { connections: Arc::clone(self), source })
    }

    fn release(&self, source: IpAddr) {
        {
            let mut per_source = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_source.get_mut(&source) {
                *count -= 1;
                if *count == 0 {
                    per_source.remove(&source);
                }
            }
        }
        let now = self.open.fetch_sub(1, Ordering::AcqRel) - 1;
        // A burst ended (most of the connections it reached are gone): give its memory back.
        let peak = self.peak.load(Ordering::Acquire);
        if peak >= RECLAIM_AFTER
            && now <= peak / 4
            && self.peak.compare_exchange(peak, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            let freed = self.pool.trim();
            tracing::debug!(peak, open = now, freed, "a burst of connections ended: memory given back");
        }
    }
}

/// One connection counted by [`Connections`]; dropping it uncounts it.
#[derive(Debug)]
pub struct Admitted {
    connections: Arc<Connections>,
    source: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.release(self.source);
    }
}

/// When a connection last received bytes and since when a frame is in part received: what its
/// [`ConnectionLimits`] timeouts look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    last: Instant,
    frame_since: Option<Instant>,
}

/// A timeout a connection ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing in flight and nothing received for the idle timeout: closed without a word.
    Idle,
    /// A frame begun whose bytes stopped arriving for the header timeout: refused, then closed.
    Frame,
}

impl Activity {
    /// A connection that opened at `now`.
    pub fn new(now: Instant) -> Self {
        Self { last: now, frame_since: None }
    }

    /// Bytes arrived at `now`.
    #[inline]
    pub fn received(&mut self, now: Instant) {
        self.last = now;
    }

    /// Whether a frame is received in part at `now` (told after decoding what arrived): its
    /// clock starts with the first such look and stops when none is.
    #[inline]
    pub fn frame(&mut self, now: Instant, mid_frame: bool) {
        match (mid_frame, self.frame_since) {
            (true, None) => self.frame_since = Some(now),
            (false, Some(_)) => self.frame_since = None,
            _ => {}
        }
    }

    /// The timeout the connection ran into by `now`, if any; `busy`: it has invocations in flight
    /// or answers to send (never idle then).
    pub fn expired(&self, now: Instant, limits: &ConnectionLimits, busy: bool) -> Option<Expiry> {
        if let Some(since) = self.frame_since {
            let quiet_since = since.max(self.last);
            return (now.saturating_duration_since(quiet_since) >= limits.header_timeout).then_some(Expiry::Frame);
        }
        (!busy && now.saturating_duration_since(self.last) >= limits.idle_timeout).then_some(Expiry::Idle)
    }
}

impl Expiry {
    /// The refusal a connection that ran into a frame timeout is sent.
    pub fn refusal(self, limits: &ConnectionLimits) -> Option<Refusal> {
        match self {
            Self::Idle => None,
            Self::Frame => Some(Refusal::malformed(format!(
                "a frame stalled: none of its bytes arrived for {} ms (--header-timeout-ms): connection closed",
                limits.header_timeout.as_millis()
            ))),
        }
    }
}

/// What a connection that broke the protocol is answered before it closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The id of the request the answer names (0 where there is none).
    pub id: u64,
    /// `Malformed`, `TooLarge`, or `Overloaded` (a connection limit).
    pub status: Status,
    /// What was wrong.
    pub text: String,
}

impl Refusal {
    /// A frame that failed to decode, whose header starts `bytes`: the answer names its id.
    #[cold]
    pub fn frame(err: FrameError, bytes: &[u8]) -> Self {
        Self { id: header_id(bytes), status: err.status(), text: err.to_string() }
    }

    /// A violation of a transport's rules, in no request's name.
    #[cold]
    pub fn malformed(text: impl Into<String>) -> Self {
        Self { id: 0, status: Status::Malformed, text: text.into() }
    }

    /// A connection the process cannot take now (a limit): retryable, in no request's name.
    #[cold]
    pub fn overloaded(text: impl Into<String>) -> Self {
        Self { id: 0, status: Status::Overloaded, text: text.into() }
    }
}

/// Raises this process's soft limit of open descriptors (`RLIMIT_NOFILE`) towards `wanted`
/// (`None`: as far as it goes), never past the hard limit nor `/proc/sys/fs/nr_open`; returns the
/// soft limit it has then. Every connection holds a descriptor: at the usual soft limit of 1,024
/// a server runs out long before its connection limits. Processes started after inherit it.
pub fn raise_descriptor_limit(wanted: Option<u64>) -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit into the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    let ceiling = limit.rlim_max.min(nr_open);
    let target = wanted.map_or(ceiling, |wanted| ceiling.min(wanted as libc::rlim_t));
    if target > limit.rlim_cur {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit(2) only reads the rlimit it is given, which lives here; a soft limit
        // at most the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = target;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use praas_wire::protocol::{FrameLimits, Header, HEADER_LEN};

    #[test]
    fn a_frame_too_large_is_refused_too_large() {
        let head = Header::invoke(9, 0, 0, u32::MAX).encode();
        let err = Header::decode(&head, FrameLimits { max_frame: 100 }).unwrap_err();
        let refusal = Refusal::frame(err, &head);
        assert_eq!((refusal.id, refusal.status), (9, Status::TooLarge));
        // Too few bytes for an id: the answer names none.
        assert_eq!(Refusal::frame(FrameError::BadKind(0), &head[..HEADER_LEN / 2]).id, 0);
        assert_eq!(Refusal::malformed("x"), Refusal { id: 0, status: Status::Malformed, text: "x".into() });
    }

    #[test]
    fn connections_are_counted_per_process_and_per_source() {
        let limits = ConnectionLimits { max_connections: 3, max_per_source: 2, ..ConnectionLimits::default() };
        let connections = Arc::new(Connections::new(limits, BufferPool::new(1 << 20)));
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = connections.admit("p", a).unwrap();
        let _second = connections.admit("p", a).unwrap();
        let refusal = connections.admit("p", a).unwrap_err();
        assert_eq!(refusal.status, Status::Overloaded);
        assert!(refusal.text.contains("--max-connections-per-source") && refusal.text.contains("127.0.0.1"));
        let _third = connections.admit("p", b).unwrap();
        let refusal = connections.admit("p", b).unwrap_err();
        assert!(refusal.text.contains("3 connections at most (--max-connections)"), "{}", refusal.text);
        assert_eq!(connections.open(), 3);
        drop(first);
        assert_eq!(connections.open(), 2);
        assert!(connections.admit("p", a).is_ok(), "a place came free");
    }

    #[test]
    fn timeouts_look_at_idleness_and_frames_in_part() {
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(2),
            ..ConnectionLimits::default()
        };
        let t0 = Instant::now();
        let mut activity = Activity::new(t0);
        assert_eq!(activity.expired(t0 + Duration::from_secs(9), &limits, false), None);
        assert_eq!(activity.expired(t0 + Duration::from_secs(10), &limits, false), Some(Expiry::Idle));
        assert_eq!(activity.expired(t0 + Duration::from_secs(60), &limits, true), None, "busy is not idle");
        // A frame in part: it expires once its bytes stop arriving for the header timeout, and
        // each arrival restarts that clock (a slow but steady upload is not cut).
        activity.received(t0 + Duration::from_secs(1));
        activity.frame(t0 + Duration::from_secs(1), true);
        assert_eq!(activity.expired(t0 + Duration::from_millis(2900), &limits, false), None);
        activity.received(t0 + Duration::from_secs(2));
        activity.frame(t0 + Duration::from_secs(2), true);
        assert_eq!(activity.expired(t0 + Duration::from_millis(3900), &limits, true), None, "bytes arrived at 2 s");
        assert_eq!(activity.expired(t0 + Duration::from_secs(4), &limits, true), Some(Expiry::Frame));
        assert!(Expiry::Frame.refusal(&limits).unwrap().text.contains("--header-timeout-ms"));
        assert_eq!(Expiry::Idle.refusal(&limits), None);
        // The frame done: idle counts from its last bytes.
        activity.frame(t0 + Duration::from_secs(2), false);
        assert_eq!(activity.expired(t0 + Duration::from_secs(11), &limits, false), None);
        assert_eq!(activity.expired(t0 + Duration::from_secs(12), &limits, false), Some(Expiry::Idle));
        assert_eq!(limits.sweep_interval(), Duration::from_millis(500));
    }
}
