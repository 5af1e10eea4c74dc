//! The one dispatch seam every transport calls with each decoded frame ([`serve_frame`]): the
//! authentication gate, `Ping`, `Hello` and `Message` (through the connection's
//! [`PeerSession`]), and invocations (to [`Process::dispatch`]).

use std::sync::Arc;

use crate::buffer::Payload;
use crate::frame::OutFrame;
use crate::invocation::Outcome;
use crate::process::{Dispatched, Process, Response, ResponseSink};
use crate::session::PeerSession;
use praas_wire::protocol::{Header, MessageKind, Status};

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
