//! The praas cloud process runtime.
//!
//! A [`Process`](process::Process) loads functions from shared libraries
//! ([`function`]), keeps per-process state ([`state`]) and serves invocations that arrive through a
//! [`Transport`](transport::Transport) speaking the wire [`protocol`]. Payloads live in buffers of
//! the process's [`buffer`] pool from the socket to the function and back. [`client`] is the SDK.
//!
//! `docs/architecture.md` follows one invocation through these modules end to end.

pub use praas_wire::{auth, flat, handshake, idmap, lifecycle, protocol};

pub mod buffer;
pub mod client;
pub mod clock;
pub mod control_channel;
pub mod dispatch;
pub mod frame;
pub mod function;
pub mod invocation;
pub mod mailbox;
pub mod peer;
pub mod process;
pub mod process_core;
pub mod session;
pub mod state;
pub mod swap;
pub mod transport;

pub use auth::{Credentials, Secret};
pub use client::{Client, ClientError, ClientOptions, Completion};
pub use function::{FunctionRegistry, Manifest};
pub use process::{Process, ProcessConfig};
pub use protocol::Status;
pub use state::StateStore;
#[cfg(feature = "rdma")]
pub use transport::rdma::{RdmaClient, RdmaClientOptions, RdmaOptions, RdmaTransport};
pub use transport::tcp::{TcpOptions, TcpTransport};
pub use transport::{ServerHandle, Transport, TransportKind};

// The SDK's client must move between threads (the control plane pools clients across its
// request threads; users hand connections to worker threads): a raw pointer held by a
// transport's state needs a justified `unsafe impl Send` there, not a !Send client.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Client>();
};
