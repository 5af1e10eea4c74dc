//! The control plane's sending side of a registered process's control connection
//! ([`ControlLink`]): frames queued from any thread (the controller's peer updates, swap
//! requests and answers to swap-in requests) and written in order by the connection's task in
//! [`crate::channel`].

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use praas_dataplane::control_channel::{write_frame, write_json};
use praas_dataplane::protocol::{Header, MessageKind};
use tokio::sync::Notify;

/// Most frames waiting to be written to one process; a send past it fails.
const MAX_QUEUED: usize = 1024;

/// The control channel of a registered process, for sending it requests.
#[derive(Debug, Clone)]
pub struct ControlLink {
    /// Distinguishes connections of the same process.
    pub id: u64,
    /// The write half: frames queued for the connection's task ([`crate::channel`]).
    pub writer: LinkWriter,
}

impl ControlLink {
    /// Queues a frame of `kind` with `value` as its JSON payload ([`LinkWriter::send_json`]).
    pub(crate) fn send<T: serde::Serialize>(&self, kind: MessageKind, value: &T) -> std::io::Result<()> {
        self.writer.send_json(kind, value)
    }
}

/// The queue of frames to one registered process, written by its connection's task.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    frames: Mutex<Queued>,
    /// Woken when a frame is queued.
    pub(crate) ready: Notify,
}

#[derive(Debug, Default)]
struct Queued {
    frames: VecDeque<(MessageKind, Vec<u8>)>,
    closed: bool,
}

impl Outbox {
    fn queued(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses further frames (the connection ended).
    pub(crate) fn close(&self) {
        self.queued().closed = true;
    }

    /// The frames queued so far, in order.
    pub(crate) fn take(&self) -> VecDeque<(MessageKind, Vec<u8>)> {
        std::mem::take(&mut self.queued().frames)
    }
}

/// The sending side of a registered process's control connection, usable from any thread:
/// frames are queued and written, in order, by the connection's task. A peer list supersedes one
/// still queued (each is the whole list).
#[derive(Debug, Clone)]
pub struct LinkWriter {
    outbox: Arc<Outbox>,
}

impl LinkWriter {
    /// The writer of the connection whose task drains `outbox`.
    pub(crate) fn new(outbox: Arc<Outbox>) -> Self {
        Self { outbox }
    }

    /// Queues a frame of `kind` with `value` as its JSON payload. Fails if the connection is
    /// closed, or if [`MAX_QUEUED`] frames already wait (the process reads nothing).
    pub fn send_json<T: serde::Serialize>(&self, kind: MessageKind, value: &T) -> io::Result<()> {
        let mut bytes = Vec::new();
        write_json(&mut bytes, kind, b"", value)?;
        self.queue(kind, bytes)
    }

    /// Queues one frame (`header`'s lengths are set from `meta` and `payload`): an answer that
    /// carries an id and a status, as a `SwapInAnswer` does. Fails as [`LinkWriter::send_json`].
    pub fn send_frame(&self, header: Header, meta: &[u8], payload: &[u8]) -> io::Result<()> {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, header, meta, payload)?;
        self.queue(header.kind, bytes)
    }

    fn queue(&self, kind: MessageKind, bytes: Vec<u8>) -> io::Result<()> {
        let mut queued = self.outbox.queued();
        if queued.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the control connection is closed"));
        }
        if kind == MessageKind::PeerUpdate {
            queued.frames.retain(|(k, _)| *k != MessageKind::PeerUpdate);
        }
        if queued.frames.len() >= MAX_QUEUED {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{MAX_QUEUED} frames already wait for the process to read them"),
            ));
        }
        queued.frames.push_back((kind, bytes));
        drop(queued);
        self.outbox.ready.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_list_supersedes_the_queued_one_and_a_closed_link_refuses() {
        let writer = LinkWriter { outbox: Arc::new(Outbox::default()) };
        writer.send_json(MessageKind::PeerUpdate, &1).unwrap();
        writer.send_json(MessageKind::SwapRequest, &()).unwrap();
        writer.send_json(MessageKind::PeerUpdate, &2).unwrap();
        let queued: Vec<(MessageKind, Vec<u8>)> = writer.outbox.take().into_iter().collect();
        assert_eq!(
            queued.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [MessageKind::SwapRequest, MessageKind::PeerUpdate]
        );
        assert!(queued[1].1.ends_with(b"2"), "the newer list is the one kept");
        for _ in 0..MAX_QUEUED {
            writer.send_json(MessageKind::SwapRequest, &()).unwrap();
        }
        let full = writer.send_json(MessageKind::SwapRequest, &()).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock);
        writer.outbox.close();
        let closed = writer.send_json(MessageKind::PeerUpdate, &3).unwrap_err();
        assert_eq!(closed.kind(), io::ErrorKind::BrokenPipe);
    }
}
