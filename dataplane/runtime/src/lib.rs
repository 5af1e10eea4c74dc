//! The praas cloud process runtime, below every transport.
//!
//! A [`Process`](process::Process) loads functions from shared libraries, or Python modules with
//! the cargo feature `python` ([`function`]; `docs/python.md`), keeps
//! per-process state ([`state`]) and a [`mailbox`], runs invocations inline or on its workers
//! ([`invocation`], over its [`process_core`]), swaps out and in ([`swap`]), talks to its control
//! plane ([`control_channel`]) and puts messages to its peers ([`peer`]). Every transport hands
//! each decoded frame to the one seam, [`serve::serve_frame`], carries out what it decides through
//! the one connection policy ([`serve::act`]) and sends [`serve::OutFrame`]s; payloads live in buffers of the process's [`buffer`] pool from the
//! socket to the function and back.

#![warn(clippy::cast_possible_truncation)]

pub mod buffer;
pub mod clock;
pub mod connection;
pub mod control_channel;
pub mod function;
pub mod invocation;
pub mod mailbox;
pub mod peer;
pub mod process;
pub mod process_core;
#[cfg(feature = "python")]
mod python;
pub mod remote;
pub mod serve;
pub mod session;
pub mod state;
pub mod stats;
pub mod swap;
pub mod swap_in;
pub mod waiter;
