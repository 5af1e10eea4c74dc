//! The flow of a praas RDMA connection as pure logic, the same at both ends: what travels on it
//! besides the frames themselves, the credits that keep a receiver from being overrun, and the
//! send window of each end.
//!
//! Every message carries a 32-bit immediate value: `op` (4 bits) | `credits` (12 bits) |
//! `token` (16 bits).
//!
//! | op | verb | payload | meaning |
//! |---:|------|---------|---------|
//! | 1 `Frame` | SEND | one whole protocol frame (header, metadata, payload) | a small frame |
//! | 2 `Rts` | SEND | a frame's header and metadata, without its payload | "ready to send" `payload_len` bytes as `token` |
//! | 3 `Cts` | SEND | [`Grant`]: address, rkey, length | "clear to send": write the payload of `token` here |
//! | 4 `Data` | WRITE WITH IMMEDIATE | the payload, into the granted buffer | the payload of `token` is in place |
//!
//! Credits: the process grants a client `credits` messages at connection set-up (it sizes the
//! shared receive queue for every connection's credits). Every message a client sends, of any op,
//! consumes one; the process returns them in the `credits` field of the messages it sends, once
//! the message's receive buffer is free again. A client that sends with no credit left broke the
//! protocol and loses its connection. In the other direction the client posts enough receive
//! buffers for every message its outstanding requests can cause (at most three each), so the
//! process needs no credits from it.
//!
//! The sending side, the same at both ends (the process's [`server`](super::server) and the
//! SDK's `RdmaClient`, in `praas-client`): no verbs call in here.
//!
//! - [`SendWindow`]: the registered send slots and the send queue's room, which sends are
//!   signaled, and what a completion retires (a signaled completion retires everything posted
//!   before it too: unsignaled sends have no completion of their own).
//! - [`wr_id`] / [`wr_parts`]: what a work request id holds.
//! - [`Sends`] and [`Receives`]: the large transfers of one connection (`Rts`, `Cts`, `Data` in
//!   this module), those this end sends and those the peer sends it.

use std::collections::VecDeque;

pub use praas_wire::idmap::{IdHasher, IdMap};

/// Message kinds, the top 4 bits of the immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// A whole small frame in the SEND.
    Frame = 1,
    /// The header and metadata of a large frame; its payload follows by RDMA WRITE.
    Rts = 2,
    /// A grant of a registered buffer for a large payload.
    Cts = 3,
    /// A large payload, written into the granted buffer.
    Data = 4,
}

impl Op {
    fn from_bits(bits: u32) -> Option<Self> {
        Some(match bits {
            1 => Self::Frame,
            2 => Self::Rts,
            3 => Self::Cts,
            4 => Self::Data,
            _ => return None,
        })
    }
}

/// Largest number of credits one immediate returns.
pub const MAX_CREDITS_PER_MESSAGE: u32 = (1 << 12) - 1;

/// The decoded immediate value of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imm {
    /// What the message is.
    pub op: Op,
    /// Credits returned to the receiver of this message.
    pub credits: u32,
    /// The large transfer the message belongs to (`Rts`, `Cts`, `Data`).
    pub token: u16,
}

impl Imm {
    /// An immediate; `credits` is capped by the caller to [`MAX_CREDITS_PER_MESSAGE`].
    pub fn new(op: Op, credits: u32, token: u16) -> Self {
        debug_assert!(credits <= MAX_CREDITS_PER_MESSAGE);
        Self { op, credits, token }
    }

    /// The 32-bit wire value.
    pub fn encode(self) -> u32 {
        (self.op as u32) << 28 | (self.credits & MAX_CREDITS_PER_MESSAGE) << 16 | u32::from(self.token)
    }

    /// Parses a wire value; `None` for an unknown op.
    pub fn decode(value: u32) -> Option<Self> {
        let op = Op::from_bits(value >> 28)?;
        Some(Self { op, credits: (value >> 16) & MAX_CREDITS_PER_MESSAGE, token: (value & 0xffff) as u16 })
    }
}

/// A registered buffer advertised to the peer for one large payload (the `Cts` payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Address of the buffer in the granting side's memory.
    pub addr: u64,
    /// Remote key of the buffer's registration (for this connection and this transfer only).
    pub rkey: u32,
    /// Bytes granted: exactly the payload announced.
    pub len: u32,
}

/// Bytes of an encoded [`Grant`].
pub const GRANT_LEN: usize = 16;

impl Grant {
    /// Little-endian wire form.
    pub fn encode(&self) -> [u8; GRANT_LEN] {
        let mut out = [0u8; GRANT_LEN];
        out[0..8].copy_from_slice(&self.addr.to_le_bytes());
        out[8..12].copy_from_slice(&self.rkey.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Parses a grant; `None` unless `bytes` is exactly one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; GRANT_LEN] = bytes.try_into().ok()?;
        let le32 = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&bytes[0..8]);
        Some(Self { addr: u64::from_le_bytes(addr), rkey: le32(8), len: le32(12) })
    }
}

/// The credit account a process keeps for one connection.
#[derive(Debug, Clone, Copy)]
pub struct CreditLedger {
    granted: u32,
    received: u64,
    returned: u64,
    returnable: u32,
}

impl CreditLedger {
    /// An account for a peer allowed `granted` messages in flight.
    pub fn new(granted: u32) -> Self {
        Self { granted, received: 0, returned: 0, returnable: 0 }
    }

    /// Counts one message from the peer; false if the peer had no credit for it.
    pub fn receive(&mut self) -> bool {
        self.received += 1;
        self.received - self.returned <= u64::from(self.granted)
    }

    /// One received message's buffer is free again: its credit goes back with the next message.
    pub fn release(&mut self) {
        self.returnable += 1;
    }

    /// Credits to put in the next outgoing message (and count as returned).
    pub fn take_returnable(&mut self) -> u32 {
        let n = self.returnable.min(MAX_CREDITS_PER_MESSAGE);
        self.returnable -= n;
        self.returned += u64::from(n);
        n
    }
}

/// Work request kind of a receive (bits 24..32 of a work request id).
pub const WR_RECV: u64 = 1;
/// Work request kind of a SEND from a send slot.
pub const WR_SLOT: u64 = 2;
/// Work request kind of the RDMA WRITE of a large payload.
pub const WR_WRITE: u64 = 3;

/// A work request id: connection `conn` (bits 32..64; 0 at the client), `kind` (bits 24..32) and
/// `index` (a slot, a receive buffer or a transfer's token; its low 24 bits).
#[inline]
pub fn wr_id(conn: u32, kind: u64, index: u32) -> u64 {
    u64::from(conn) << 32 | kind << 24 | u64::from(index & 0x00ff_ffff)
}

/// The connection, kind and index of a work request id ([`wr_id`]).
#[inline]
pub fn wr_parts(id: u64) -> (u32, u64, u32) {
    ((id >> 32) as u32, (id >> 24) & 0xff, (id & 0x00ff_ffff) as u32)
}

/// Every this many sends one is signaled, whatever else.
const SIGNAL_EVERY: u32 = 8;
/// Fewer free slots than this after a send: signal it (something may soon wait for a slot).
const LOW_SLOTS: usize = 2;
/// At most this much send-queue room before a send: signal it.
const LOW_ROOM: u32 = 4;

/// A send about to be posted: its work request id, and whether it asks for a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a send is accounted only once posted"]
pub struct Post {
    /// The work request id to post it with.
    pub id: u64,
    /// Whether to post it signaled.
    pub signaled: bool,
}

/// The send slots and send-queue room of one connection, and its sends in flight.
#[derive(Debug)]
pub struct SendWindow {
    /// The connection id in the work request ids (0 at the client).
    conn: u32,
    free_slots: Vec<u32>,
    slot_count: u32,
    /// Send work requests that may still be posted.
    sq_room: u32,
    /// Send work requests posted and not yet known complete, in post order (only some are
    /// signaled: a signaled completion retires everything posted before it too).
    posted: VecDeque<u64>,
    /// Unsignaled requests posted since the last signaled one.
    unsignaled_run: u32,
    /// Signal the next send from a slot (an error before closing: its completion says it went
    /// out).
    signal_next: bool,
}

impl SendWindow {
    /// A window of `slots` send slots and `depth` send work requests, for connection `conn`.
    pub fn new(conn: u32, slots: u32, depth: u32) -> Self {
        Self {
            conn,
            free_slots: (0..slots).rev().collect(),
            slot_count: slots,
            sq_room: depth,
            posted: VecDeque::with_capacity(depth as usize),
            unsignaled_run: 0,
            signal_next: false,
        }
    }

    /// Whether the send queue has room for one more send.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.sq_room > 0
    }

    /// Whether a send from a slot can be posted: room and a free slot.
    #[inline]
    pub fn can_send(&self) -> bool {
        self.sq_room > 0 && !self.free_slots.is_empty()
    }

    /// A free slot to lay a send out in, if the send queue has room for the send.
    #[inline]
    pub fn take_slot(&mut self) -> Option<u32> {
        if self.sq_room == 0 {
            return None;
        }
        self.free_slots.pop()
    }

    /// Gives back a slot taken and not posted after all.
    #[inline]
    pub fn give_back(&mut self, slot: u32) {
        self.free_slots.push(slot);
    }

    /// The send of `slot` (just taken): signaled every [`SIGNAL_EVERY`]th send, and every send
    /// while slots or queue room run low, so that a completion is always on its way when
    /// something waits for one; and the one after [`SendWindow::signal_next`].
    #[inline]
    pub fn slot_send(&self, slot: u32) -> Post {
        let signaled = self.signal_next
            || self.unsignaled_run >= SIGNAL_EVERY - 1
            || self.free_slots.len() < LOW_SLOTS
            || self.sq_room <= LOW_ROOM;
        Post { id: wr_id(self.conn, WR_SLOT, slot), signaled }
    }

    /// The write of the large payload of transfer `token`: always signaled (its completion
    /// releases the payload's buffer).
    #[inline]
    pub fn write_send(&self, token: u16) -> Post {
        Post { id: wr_id(self.conn, WR_WRITE, u32::from(token)), signaled: true }
    }

    /// `post`, a [`SendWindow::slot_send`], was posted.
    #[inline]
    pub fn slot_posted(&mut self, post: Post) {
        self.sq_room -= 1;
        self.posted.push_back(post.id);
        self.unsignaled_run = if post.signaled { 0 } else { self.unsignaled_run + 1 };
        self.signal_next = false;
    }

    /// `post`, a [`SendWindow::write_send`], was posted.
    #[inline]
    pub fn write_posted(&mut self, post: Post) {
        self.sq_room -= 1;
        self.posted.push_back(post.id);
        self.unsignaled_run = 0;
    }

    /// Signals the next send from a slot.
    #[inline]
    pub fn signal_next(&mut self) {
        self.signal_next = true;
    }

    /// The signaled send `done` completed: it and every send posted before it are done. Their
    /// slots are free again; `written` hears the token of each write among them.
    #[inline]
    pub fn retire(&mut self, done: u64, mut written: impl FnMut(u16)) {
        while let Some(id) = self.posted.pop_front() {
            let (_, kind, index) = wr_parts(id);
            match kind {
                WR_SLOT => self.free_slots.push(index),
                // A write's index is the u16 token it was posted with (`write_send`).
                #[allow(clippy::cast_possible_truncation)]
                WR_WRITE => written(index as u16),
                _ => {}
            }
            self.sq_room += 1;
            if id == done {
                return;
            }
        }
    }

    /// Whether every slot is free: no send from a slot is in flight.
    #[inline]
    pub fn slots_idle(&self) -> bool {
        self.free_slots.len() == self.slot_count as usize
    }

    /// Free slots (for diagnostics).
    pub fn free_slots(&self) -> usize {
        self.free_slots.len()
    }

    /// Send work requests that may still be posted (for diagnostics).
    pub fn room(&self) -> u32 {
        self.sq_room
    }
}

/// What a peer did wrong in a large transfer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// An announcement whose token is in use.
    #[error("announcement {0} while one is pending")]
    Pending(u16),
    /// A grant for a token that announces nothing (or was granted already).
    #[error("a grant for nothing")]
    NotAnnounced(u16),
    /// A grant of another size than the payload announced.
    #[error("a grant of the wrong size")]
    WrongGrant {
        /// The transfer.
        token: u16,
        /// Bytes announced.
        announced: u32,
        /// Bytes granted.
        granted: u32,
    },
    /// A write into no granted buffer.
    #[error("a write into no granted buffer")]
    NotGranted(u16),
    /// A write of another size than granted.
    #[error("a write of another size than granted")]
    WrongWrite {
        /// The transfer.
        token: u16,
        /// Bytes granted.
        granted: usize,
        /// Bytes written.
        written: usize,
    },
}

/// Where a large transfer this end sends is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Announced (`Rts`): waiting for the peer's grant.
    Announced,
    /// Granted a buffer by the peer (`Cts`): to be written there.
    Granted(Grant),
    /// The write (`Data`) is posted: until its completion.
    Writing,
}

#[derive(Debug)]
struct Outgoing<T> {
    /// What the transfer sends from (kept alive, and registered, until the write completes).
    item: T,
    len: u32,
    stage: Stage,
}

/// The large transfers this end sends on one connection, by token: announced, granted a buffer
/// by the peer, written until the write's completion.
#[derive(Debug)]
pub struct Sends<T> {
    transfers: IdMap<u16, Outgoing<T>>,
    next_token: u16,
}

impl<T> Default for Sends<T> {
    fn default() -> Self {
        Self { transfers: IdMap::default(), next_token: 0 }
    }
}

impl<T> Sends<T> {
    /// A new transfer of `len` bytes from `item`, to announce: its token (one no transfer in
    /// progress has).
    pub fn announce(&mut self, item: T, len: u32) -> u16 {
        let token = loop {
            let token = self.next_token;
            self.next_token = self.next_token.wrapping_add(1);
            if !self.transfers.contains_key(&token) {
                break token;
            }
        };
        self.transfers.insert(token, Outgoing { item, len, stage: Stage::Announced });
        token
    }

    /// The peer granted `grant` for transfer `token`. A grant for nothing announced, or of
    /// another size than announced, is the peer's error (and ends the transfer).
    pub fn grant(&mut self, token: u16, grant: Grant) -> Result<(), TransferError> {
        let transfer = match self.transfers.get_mut(&token) {
            Some(transfer) if transfer.stage == Stage::Announced => transfer,
            _ => return Err(TransferError::NotAnnounced(token)),
        };
        if grant.len != transfer.len {
            let announced = transfer.len;
            self.transfers.remove(&token);
            return Err(TransferError::WrongGrant { token, announced, granted: grant.len });
        }
        transfer.stage = Stage::Granted(grant);
        Ok(())
    }

    /// The item and grant of transfer `token`, if it is granted and not yet written.
    #[inline]
    pub fn granted(&self, token: u16) -> Option<(&T, Grant)> {
        match self.transfers.get(&token) {
            Some(Outgoing { item, stage: Stage::Granted(grant), .. }) => Some((item, *grant)),
            _ => None,
        }
    }

    /// The write of granted transfer `token` was posted.
    #[inline]
    pub fn writing(&mut self, token: u16) {
        if let Some(transfer) = self.transfers.get_mut(&token) {
            debug_assert!(matches!(transfer.stage, Stage::Granted(_)), "a write of a transfer not granted");
            transfer.stage = Stage::Writing;
        }
    }

    /// Whether transfer `token`'s write is posted and not yet complete.
    #[inline]
    pub fn is_writing(&self, token: u16) -> bool {
        self.transfers.get(&token).is_some_and(|t| t.stage == Stage::Writing)
    }

    /// Transfer `token`'s write completed: the transfer ends, and its item is given back.
    #[inline]
    pub fn written(&mut self, token: u16) -> Option<T> {
        if !self.is_writing(token) {
            return None;
        }
        self.transfers.remove(&token).map(|t| t.item)
    }

    /// Ends transfer `token` whatever its stage (its write could not be posted).
    pub fn remove(&mut self, token: u16) -> Option<T> {
        self.transfers.remove(&token).map(|t| t.item)
    }

    /// Transfers in progress.
    pub fn len(&self) -> usize {
        self.transfers.len()
    }

    /// Whether no transfer is in progress.
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
    }

    /// Ends every transfer (the connection is gone).
    pub fn clear(&mut self) {
        self.transfers.clear();
    }
}

/// The large transfers the peer sends this end on one connection: announced and waiting for a
/// buffer (`A`, in the order they came), then granted one (`G`, the `Cts` is sent), until the
/// peer's write fills it.
#[derive(Debug)]
pub struct Receives<A, G> {
    waiting: VecDeque<(u16, A)>,
    granted: IdMap<u16, G>,
}

impl<A, G> Default for Receives<A, G> {
    fn default() -> Self {
        Self { waiting: VecDeque::new(), granted: IdMap::default() }
    }
}

impl<A, G> Receives<A, G> {
    fn check_free(&self, token: u16) -> Result<(), TransferError> {
        if self.granted.contains_key(&token) || self.waiting.iter().any(|(t, _)| *t == token) {
            return Err(TransferError::Pending(token));
        }
        Ok(())
    }

    /// The peer announced transfer `token`: it waits for a buffer. A token in use is the peer's
    /// error.
    pub fn announce(&mut self, token: u16, announced: A) -> Result<(), TransferError> {
        self.check_free(token)?;
        self.waiting.push_back((token, announced));
        Ok(())
    }

    /// The peer announced transfer `token`, granted `grant` at once. A token in use is the peer's
    /// error.
    pub fn announce_granted(&mut self, token: u16, grant: G) -> Result<(), TransferError> {
        self.check_free(token)?;
        self.granted.insert(token, grant);
        Ok(())
    }

    /// The first announcement waiting for a buffer.
    #[inline]
    pub fn next_waiting(&self) -> Option<&A> {
        self.waiting.front().map(|(_, a)| a)
    }

    /// Whether announcements wait for a buffer.
    #[inline]
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Grants the first waiting announcement the buffer `grant` makes of it: its token and grant.
    pub fn grant_next(&mut self, grant: impl FnOnce(A) -> G) -> Option<(u16, &G)> {
        let (token, announced) = self.waiting.pop_front()?;
        let granted = self.granted.entry(token).or_insert(grant(announced));
        Some((token, granted))
    }

    /// The peer wrote `len` bytes into the buffer granted to transfer `token`, which `size`
    /// says holds: the transfer ends. A write into no granted buffer, or of another size, is the
    /// peer's error (and ends the transfer).
    #[inline]
    pub fn written(&mut self, token: u16, len: usize, size: impl FnOnce(&G) -> usize) -> Result<G, TransferError> {
        let granted = self.granted.remove(&token).ok_or(TransferError::NotGranted(token))?;
        let expected = size(&granted);
        if len != expected {
            return Err(TransferError::WrongWrite { token, granted: expected, written: len });
        }
        Ok(granted)
    }

    /// Ends every transfer (the connection is gone).
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.granted.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediates_round_trip() {
        for op in [Op::Frame, Op::Rts, Op::Cts, Op::Data] {
            let imm = Imm::new(op, 4095, 0xbeef);
            assert_eq!(Imm::decode(imm.encode()), Some(imm));
        }
        assert_eq!(Imm::decode(0), None);
        assert_eq!(Imm::decode(0xf000_0000), None);
    }

    #[test]
    fn grants_round_trip() {
        let grant = Grant { addr: 0x7f00_dead_beef, rkey: 42, len: 1 << 24 };
        assert_eq!(Grant::decode(&grant.encode()), Some(grant));
        assert_eq!(Grant::decode(&[0; 15]), None);
    }

    #[test]
    fn a_peer_over_its_credits_is_caught() {
        let mut ledger = CreditLedger::new(2);
        assert!(ledger.receive());
        assert!(ledger.receive());
        assert!(!ledger.receive(), "third message with two credits");
        let mut ledger = CreditLedger::new(2);
        assert!(ledger.receive());
        assert!(ledger.receive());
        ledger.release();
        assert_eq!(ledger.take_returnable(), 1);
        assert_eq!(ledger.take_returnable(), 0);
        assert!(ledger.receive(), "a returned credit may be used again");
        assert!(!ledger.receive());
    }

    use proptest::prelude::*;

    use crate::rdma::flow::{CreditLedger, Imm, Op, MAX_CREDITS_PER_MESSAGE};

    fn grant(len: u32) -> Grant {
        Grant { addr: 0x1000, rkey: 7, len }
    }

    #[test]
    fn work_request_ids_round_trip() {
        for (conn, kind, index) in [(0, WR_RECV, 0), (1, WR_SLOT, 0x00ff_ffff), (u32::MAX, WR_WRITE, 65535)] {
            assert_eq!(wr_parts(wr_id(conn, kind, index)), (conn, kind, index));
        }
        assert_eq!(wr_id(0, WR_SLOT, 5), 2 << 24 | 5, "the client's ids carry no connection");
        assert_eq!(wr_parts(wr_id(3, WR_SLOT, 0x0100_0001)).2, 1, "an index keeps its low 24 bits");
    }

    #[test]
    fn sends_are_signaled_every_eighth_and_when_slots_or_room_run_low() {
        let mut window = SendWindow::new(9, 64, 64);
        let mut pattern = Vec::new();
        for _ in 0..16 {
            let slot = window.take_slot().unwrap();
            let post = window.slot_send(slot);
            assert_eq!(wr_parts(post.id), (9, WR_SLOT, slot));
            pattern.push(post.signaled);
            window.slot_posted(post);
        }
        let every_eighth: Vec<bool> = (0..16).map(|i| i % 8 == 7).collect();
        assert_eq!(pattern, every_eighth);
        // Fewer than two slots left after a send: it is signaled.
        let mut low = SendWindow::new(0, 3, 64);
        let slot = low.take_slot().unwrap();
        let post = low.slot_send(slot);
        assert!(!post.signaled, "two slots left");
        low.slot_posted(post);
        let slot = low.take_slot().unwrap();
        assert!(low.slot_send(slot).signaled, "one slot left");
        let mut shallow = SendWindow::new(0, 64, 4);
        let slot = shallow.take_slot().unwrap();
        assert!(shallow.slot_send(slot).signaled, "the send queue runs low");
        // An error before closing is signaled, and only it.
        let mut window = SendWindow::new(0, 64, 64);
        window.signal_next();
        let write = window.write_send(3);
        assert!(write.signaled, "writes are always signaled");
        window.write_posted(write);
        let slot = window.take_slot().unwrap();
        let post = window.slot_send(slot);
        assert!(post.signaled, "a write in between does not use up the signal of the next slot send");
        window.slot_posted(post);
        let slot = window.take_slot().unwrap();
        assert!(!window.slot_send(slot).signaled);
    }

    #[test]
    fn a_completion_retires_everything_posted_up_to_it() {
        let mut window = SendWindow::new(1, 4, 6);
        let mut posts = Vec::new();
        for _ in 0..3 {
            let slot = window.take_slot().unwrap();
            let post = window.slot_send(slot);
            window.slot_posted(post);
            posts.push(post.id);
        }
        let write = window.write_send(42);
        window.write_posted(write);
        let slot = window.take_slot().unwrap();
        let last = window.slot_send(slot);
        window.slot_posted(last);
        assert_eq!((window.free_slots(), window.room()), (0, 1));
        assert!(!window.can_send() && window.has_room());
        assert_eq!(window.take_slot(), None);
        // The second send's completion retires the first two.
        let mut written = Vec::new();
        window.retire(posts[1], |t| written.push(t));
        assert_eq!((window.free_slots(), window.room(), written.len()), (2, 3, 0));
        // The write's retires the third and the write.
        window.retire(write.id, |t| written.push(t));
        assert_eq!((window.free_slots(), window.room(), &written[..]), (3, 5, &[42][..]));
        assert!(!window.slots_idle());
        window.retire(last.id, |t| written.push(t));
        assert!(window.slots_idle());
        assert_eq!(window.room(), 6);
        // A slot taken and not posted goes back.
        let slot = window.take_slot().unwrap();
        window.give_back(slot);
        assert!(window.slots_idle());
    }

    #[test]
    fn a_full_send_queue_gives_no_slot() {
        let mut window = SendWindow::new(0, 8, 1);
        let slot = window.take_slot().unwrap();
        let post = window.slot_send(slot);
        window.slot_posted(post);
        assert!(!window.has_room());
        assert_eq!(window.take_slot(), None, "free slots, but no room to post");
        window.retire(post.id, |_| {});
        assert!(window.take_slot().is_some());
    }

    #[test]
    fn a_large_send_goes_announced_granted_writing_written() {
        let mut sends: Sends<&str> = Sends::default();
        let token = sends.announce("output", 1000);
        assert_eq!(sends.granted(token), None, "not granted yet");
        assert_eq!(sends.grant(token, grant(1000)), Ok(()));
        assert_eq!(sends.granted(token), Some((&"output", grant(1000))));
        assert_eq!(sends.grant(token, grant(1000)), Err(TransferError::NotAnnounced(token)), "granted twice");
        sends.writing(token);
        assert!(sends.is_writing(token));
        assert_eq!(sends.granted(token), None, "written once");
        assert_eq!(sends.written(token), Some("output"));
        assert!(sends.is_empty());
        assert_eq!(sends.written(token), None);
        assert_eq!(sends.grant(99, grant(1)), Err(TransferError::NotAnnounced(99)));
        // The wrong size ends the transfer.
        let token = sends.announce("other", 10);
        let wrong = sends.grant(token, grant(11));
        assert_eq!(wrong, Err(TransferError::WrongGrant { token, announced: 10, granted: 11 }));
        assert_eq!(wrong.unwrap_err().to_string(), "a grant of the wrong size");
        assert!(sends.is_empty());
        // A transfer that never completed is not written.
        let token = sends.announce("x", 1);
        assert_eq!(sends.written(token), None, "announced, not written");
        assert_eq!(sends.remove(token), Some("x"));
    }

    #[test]
    fn tokens_in_use_are_skipped() {
        let mut sends: Sends<()> = Sends { transfers: IdMap::default(), next_token: u16::MAX };
        let first = sends.announce((), 1);
        let second = sends.announce((), 1);
        assert_eq!((first, second), (u16::MAX, 0), "tokens wrap");
        sends.next_token = u16::MAX;
        assert_eq!(sends.announce((), 1), 1, "both in use: the next free one");
        assert_eq!(sends.len(), 3);
        sends.clear();
        assert!(sends.is_empty());
    }

    #[test]
    fn a_large_receive_goes_announced_granted_written() {
        let mut receives: Receives<u32, Vec<u8>> = Receives::default();
        assert_eq!(receives.announce(5, 100), Ok(()));
        assert_eq!(receives.announce(6, 200), Ok(()));
        assert_eq!(receives.announce(5, 1), Err(TransferError::Pending(5)));
        assert_eq!(receives.next_waiting(), Some(&100), "in the order announced");
        let (token, buf) = receives.grant_next(|len| vec![0; len as usize]).unwrap();
        assert_eq!((token, buf.len()), (5, 100));
        assert_eq!(receives.announce(5, 1), Err(TransferError::Pending(5)), "granted is in use too");
        assert!(receives.has_waiting());
        assert_eq!(receives.written(6, 200, Vec::len), Err(TransferError::NotGranted(6)), "not granted yet");
        let wrong = receives.written(5, 99, Vec::len);
        assert_eq!(wrong, Err(TransferError::WrongWrite { token: 5, granted: 100, written: 99 }));
        assert_eq!(receives.written(5, 100, Vec::len), Err(TransferError::NotGranted(5)), "a wrong write ends it");
        let (token, _) = receives.grant_next(|len| vec![1; len as usize]).unwrap();
        assert_eq!(token, 6);
        assert!(!receives.has_waiting() && receives.grant_next(|_| Vec::new()).is_none());
        assert_eq!(receives.written(6, 200, Vec::len).map(|b| b[0]), Ok(1));
        assert_eq!(receives.announce(6, 1), Ok(()), "a finished transfer's token is free again");
        receives.clear();
        assert_eq!(receives.next_waiting(), None);
        // The client grants at once.
        assert_eq!(receives.announce_granted(8, vec![0; 3]), Ok(()));
        assert_eq!(receives.announce_granted(8, vec![]), Err(TransferError::Pending(8)));
        assert_eq!(receives.written(8, 3, Vec::len).map(|b| b.len()), Ok(3));
    }

    #[test]
    fn credits_go_back_in_the_messages_the_process_sends() {
        // The process's ledger of a client granted 3 credits, and the client's count of them.
        let mut ledger = CreditLedger::new(3);
        let mut client = 3u32;
        for _ in 0..3 {
            client -= 1;
            assert!(ledger.receive());
        }
        assert_eq!(client, 0);
        // Two requests answered: their credits ride on the next message.
        ledger.release();
        ledger.release();
        let imm = Imm::decode(Imm::new(Op::Frame, ledger.take_returnable(), 0).encode()).unwrap();
        client += imm.credits;
        assert_eq!(client, 2);
        assert_eq!(ledger.take_returnable(), 0, "returned once");
        assert!(ledger.receive() && ledger.receive());
        assert!(!ledger.receive(), "a client over what it was given back");
        // More than one immediate holds go back over several messages.
        let mut ledger = CreditLedger::new(10_000);
        for _ in 0..5000 {
            assert!(ledger.receive());
            ledger.release();
        }
        assert_eq!(ledger.take_returnable(), MAX_CREDITS_PER_MESSAGE);
        assert_eq!(ledger.take_returnable(), 5000 - MAX_CREDITS_PER_MESSAGE);
    }

    /// What a test does to a window next.
    #[derive(Debug, Clone)]
    enum Action {
        /// Posts a send from a slot, if one can be posted.
        Slot,
        /// Posts a write, if the queue has room.
        Write,
        /// The first signaled send in flight completes (completions come in post order).
        Complete,
        /// The next slot send is signaled.
        SignalNext,
    }

    fn actions() -> impl Strategy<Value = Vec<Action>> {
        proptest::collection::vec(
            prop_oneof![
                4 => Just(Action::Slot),
                1 => Just(Action::Write),
                3 => Just(Action::Complete),
                1 => Just(Action::SignalNext),
            ],
            0..300,
        )
    }

    proptest! {
        /// Whatever is posted and completes, no slot or room is lost or counted twice, a
        /// completion is always on its way when the window is full, and every write is heard
        /// complete exactly once.
        #[test]
        fn the_window_never_loses_a_slot(slots in 1u32..12, depth in 1u32..20, actions in actions()) {
            let mut window = SendWindow::new(4, slots, depth);
            // In flight, in post order: (id, signaled).
            let mut flight: VecDeque<(u64, bool)> = VecDeque::new();
            let mut next_token = 0u16;
            let mut writes_done = Vec::new();
            let mut writes_posted = Vec::new();
            for action in actions {
                match action {
                    Action::Slot => {
                        if let Some(slot) = window.take_slot() {
                            let post = window.slot_send(slot);
                            window.slot_posted(post);
                            flight.push_back((post.id, post.signaled));
                        }
                    }
                    Action::Write if window.has_room() => {
                        let post = window.write_send(next_token);
                        writes_posted.push(next_token);
                        next_token += 1;
                        window.write_posted(post);
                        flight.push_back((post.id, post.signaled));
                    }
                    Action::Write => {}
                    Action::Complete => {
                        if let Some(at) = flight.iter().position(|(_, signaled)| *signaled) {
                            let (id, _) = flight[at];
                            window.retire(id, |t| writes_done.push(t));
                            flight.drain(..=at);
                        }
                    }
                    Action::SignalNext => window.signal_next(),
                }
                let slots_in_flight = flight.iter().filter(|(id, _)| wr_parts(*id).1 == WR_SLOT).count();
                prop_assert_eq!(window.free_slots() + slots_in_flight, slots as usize);
                prop_assert_eq!(window.room() as usize + flight.len(), depth as usize);
                if !window.can_send() && !flight.is_empty() {
                    prop_assert!(flight.iter().any(|(_, s)| *s), "a full window waits for a completion that comes");
                }
            }
            // Everything completes in the end.
            while let Some(&(id, _)) = flight.iter().rev().find(|(_, s)| *s) {
                window.retire(id, |t| writes_done.push(t));
                let at = flight.iter().position(|(i, _)| *i == id).unwrap();
                flight.drain(..=at);
            }
            let unsignaled_writes = flight.iter().any(|(id, _)| wr_parts(*id).1 == WR_WRITE);
            prop_assert!(!unsignaled_writes, "writes are signaled");
            if flight.is_empty() {
                prop_assert!(window.slots_idle());
                prop_assert_eq!(window.room(), depth);
            }
            prop_assert_eq!(writes_done, writes_posted);
        }
    }
}
