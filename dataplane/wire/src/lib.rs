//! The praas wire: what crosses a connection, and nothing that owns one.
//!
//! - [`protocol`]: frames (a 24-byte header, metadata, payload), their kinds and statuses,
//!   encoding and decoding (`docs/protocol.md`);
//! - [`auth`]: application secrets, the client key derived from one, proofs and their check;
//! - [`handshake`]: the handshake that authenticates every connection between processes and
//!   between a data-plane client and a process, both sides as pure state machines;
//! - [`lifecycle`]: the statuses of a cloud process;
//! - [`idmap`]: hash tables keyed by small identifiers, for the hot lookups of both ends.
//!
//! Every other crate of the data plane builds on this one; it depends on none of them.

#![warn(clippy::cast_possible_truncation)]

pub mod auth;
pub mod handshake;
pub mod idmap;
pub mod lifecycle;
pub mod protocol;
