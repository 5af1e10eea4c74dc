//! The serving policy of a connection, written once for every transport: when a connection stops
//! being read (back-pressure), what a connection that broke the protocol is answered, what a
//! connection whose frame ends it sends last, and when a connection closes.
//!
//! A transport implements [`Link`] (how it moves the bytes of one connection) and calls [`act`]
//! with what [`serve_frame`](praas_runtime::dispatch::serve_frame) decided and [`refuse`] with a protocol violation;
//! the decisions are made here. Everything is generic (no dynamic dispatch) and inlined into the
//! transports' receive paths.

use std::time::{Duration, Instant};

use praas_runtime::dispatch::FrameAction;
use praas_runtime::frame::OutFrame;
use praas_runtime::invocation::Outcome;
use praas_runtime::process::Response;
use praas_wire::protocol::{header_id, FrameError, Status};

/// Back-pressure and the end of a connection that broke the protocol: the options the byte-stream
/// transports ([`TcpOptions`](super::tcp::TcpOptions), `UringOptions`) embed.
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
pub(crate) enum ReadState {
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
pub(crate) enum Delivery {
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
    pub(crate) fn finished(&self, delivery: Delivery, drained: impl FnOnce() -> bool) -> bool {
        match *self {
            Self::Open => false,
            Self::Draining => drained(),
            Self::Lingering(until) => (delivery == Delivery::Completion && drained()) || Instant::now() >= until,
        }
    }

    /// Whether frames of the peer are still served.
    #[inline]
    pub(crate) fn serves(&self) -> bool {
        !matches!(self, Self::Lingering(_))
    }
}

/// Why a connection sends its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// It broke the protocol: the frame is the refusal.
    Refused,
    /// Its request is answered, and the connection ends with the answer (a peer that failed to
    /// authenticate).
    Answered,
}

/// How one connection of a transport moves bytes: everything the policy needs of it.
pub(crate) trait Link {
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

/// Carries out what [`serve_frame`](praas_runtime::dispatch::serve_frame) decided for one frame; `Queued` needs
/// nothing (the transport counts it).
#[inline]
pub(crate) fn act<L: Link>(link: &mut L, action: FrameAction) {
    match action {
        FrameAction::Queued => {}
        FrameAction::Respond(response) => link.respond(response),
        FrameAction::Reply(frame) => link.reply(frame),
        FrameAction::ReplyAndClose(frame) => end(link, frame, End::Answered),
    }
}

/// Answers a protocol violation, shuts the sending side once the answer is out, and lingers.
#[cold]
pub(crate) fn refuse<L: Link>(link: &mut L, refusal: Refusal) {
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

/// What a connection that broke the protocol is answered before it closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The id of the request the answer names (0 where there is none).
    pub(crate) id: u64,
    /// `Malformed`, or `TooLarge`.
    pub(crate) status: Status,
    /// What was wrong.
    pub(crate) text: String,
}

impl Refusal {
    /// A frame that failed to decode, whose header starts `bytes`: the answer names its id.
    #[cold]
    pub(crate) fn frame(err: FrameError, bytes: &[u8]) -> Self {
        Self { id: header_id(bytes), status: err.status(), text: err.to_string() }
    }

    /// A violation of a transport's rules, in no request's name.
    #[cfg(any(feature = "rdma", test))]
    #[cold]
    pub(crate) fn malformed(text: impl Into<String>) -> Self {
        Self { id: 0, status: Status::Malformed, text: text.into() }
    }

    /// The refusal as a response frame.
    pub(crate) fn into_frame(self) -> OutFrame {
        // An error carries no output, so no padding: no limit to respect.
        OutFrame::from_response(Response { id: self.id, outcome: Outcome::error(self.status, self.text) }, usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use praas_wire::protocol::{Header, MessageKind, HEADER_LEN};

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
    fn a_frame_too_large_is_refused_too_large() {
        let head = Header::invoke(9, 0, 0, u32::MAX).encode();
        let err = Header::decode(&head, praas_wire::protocol::FrameLimits { max_frame: 100 }).unwrap_err();
        let refusal = Refusal::frame(err, &head);
        assert_eq!((refusal.id, refusal.status), (9, Status::TooLarge));
        // Too few bytes for an id: the answer names none.
        assert_eq!(Refusal::frame(FrameError::BadKind(0), &head[..HEADER_LEN / 2]).id, 0);
        assert_eq!(Refusal::malformed("x"), Refusal { id: 0, status: Status::Malformed, text: "x".into() });
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
    fn back_pressure_looks_at_queued_bytes_only_when_it_must() {
        let options = ConnectionOptions { max_outstanding: 2, max_queued_bytes: 100, linger: Duration::ZERO };
        assert!(options.blocked(2, || panic!("not looked at")));
        assert!(!options.blocked(1, || 99));
        assert!(options.blocked(0, || 100));
    }
}
