//! The receiving side of a connection's `Hello` and `Message` frames: its handshake
//! ([`praas_wire::handshake::Acceptance`]) and the messages it delivers into the process's mailbox.
//! Every transport keeps one [`PeerSession`] per connection.

use crate::mailbox::MailboxError;
use crate::process::Process;
use praas_wire::handshake::{Acceptance, Acceptor};
use praas_wire::protocol::{Header, MessageKind, Status};

/// What the receiving side answers to a `Hello` or `Message` frame.
#[derive(Debug)]
pub struct Reply {
    /// The header (lengths are filled in by [`OutFrame::from_reply`](crate::serve::OutFrame::from_reply)).
    pub header: Header,
    /// Metadata: an identity or an error text.
    pub meta: Vec<u8>,
    /// Payload: a nonce and a proof, or nothing.
    pub payload: Vec<u8>,
    /// Close the connection after sending this (authentication failed).
    pub close: bool,
}

impl Reply {
    pub(crate) fn answer(kind: MessageKind, id: u64, status: Status, meta: Vec<u8>, payload: Vec<u8>) -> Self {
        let header = Header { kind, meta_len: 0, status: status.code(), id, timeout_ms: 0, payload_len: 0 };
        Self { header, meta, payload, close: false }
    }

    fn refuse(kind: MessageKind, id: u64, status: Status, text: String) -> Self {
        Self { close: true, ..Self::answer(kind, id, status, text.into_bytes(), Vec::new()) }
    }
}

/// The receiving side of one connection: its handshake and the identity it proved. A transport
/// keeps one per connection and hands it every `Hello` and `Message` frame.
#[derive(Debug, Default)]
pub struct PeerSession {
    state: Acceptance,
}

impl PeerSession {
    /// The process this connection proved to be, once authenticated (`None` for a client).
    pub fn identity(&self) -> Option<&str> {
        self.state.peer()
    }

    /// Whether the connection proved it holds the application's secret or its client key.
    pub fn authenticated(&self) -> bool {
        self.state.authenticated()
    }

    /// Serves a `Hello` or `Message` frame of this connection.
    pub fn serve(&mut self, process: &Process, header: &Header, meta: &[u8], payload: &[u8]) -> Reply {
        match header.kind {
            MessageKind::Hello => self.hello(process, header.id, meta, payload),
            MessageKind::Message => self.message(process, header.id, meta, payload),
            kind => Reply::answer(
                MessageKind::Response,
                header.id,
                Status::Unsupported,
                format!("{kind:?} frames are not served by a peer session").into_bytes(),
                Vec::new(),
            ),
        }
    }

    fn hello(&mut self, process: &Process, id: u64, meta: &[u8], payload: &[u8]) -> Reply {
        let config = process.config();
        let me = Acceptor { app: &config.app, id: &config.id, secret: config.secret.as_ref() };
        match self.state.step(&me, meta, payload) {
            Ok((meta, payload)) => Reply::answer(MessageKind::Hello, id, Status::Ok, meta, payload),
            Err(refusal) => {
                tracing::debug!(process = %process.id(), "refusing a peer connection: {refusal}");
                Reply::refuse(MessageKind::Hello, id, Status::Unauthenticated, refusal.to_string())
            }
        }
    }

    fn message(&mut self, process: &Process, id: u64, meta: &[u8], payload: &[u8]) -> Reply {
        let Some(source) = self.state.peer() else {
            self.state = Acceptance::Refused;
            return Reply::refuse(
                MessageKind::MessageAck,
                id,
                Status::Unauthenticated,
                "messages are accepted only from processes of the same application, after a Hello handshake".into(),
            );
        };
        let Ok(key) = std::str::from_utf8(meta) else {
            return Reply::answer(
                MessageKind::MessageAck,
                id,
                Status::InvalidArgument,
                b"message key is not UTF-8".to_vec(),
                Vec::new(),
            );
        };
        match process.mailbox().put(source, key, payload.to_vec()) {
            Ok(()) => Reply::answer(MessageKind::MessageAck, id, Status::Ok, Vec::new(), Vec::new()),
            Err(err) => {
                let text = match &err {
                    MailboxError::Paused => format!("process {:?} is swapping out: retry later", process.id()),
                    other => format!("process {:?}: {other}", process.id()),
                };
                Reply::answer(MessageKind::MessageAck, id, err.status(), text.into_bytes(), Vec::new())
            }
        }
    }
}
