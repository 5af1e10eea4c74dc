//! What travels on a praas RDMA connection besides the frames themselves, and the credits that
//! keep a receiver from being overrun.
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
}
