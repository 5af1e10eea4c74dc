//! The praas data plane at one set of paths: the crates it is made of, re-exported.
//!
//! The layers, each using only those below it (`docs/architecture.md`):
//! - `praas-wire` ([`protocol`], [`auth`], [`handshake`], [`lifecycle`], [`idmap`]):
//!   what crosses a connection;
//! - `praas-runtime` ([`process`], [`invocation`], [`function`], [`state`], [`mailbox`],
//!   [`swap`], [`peer`], [`serve`], ...): the cloud process, below every transport;
//! - `praas-transport` ([`transport`]): TCP over mio and io_uring, RDMA verbs;
//! - `praas-client` ([`client`]): the SDK.
//!
//! A [`Process`](process::Process) loads functions from shared libraries ([`function`]), keeps
//! per-process state ([`state`]) and serves invocations that arrive through a
//! [`Transport`](transport::Transport) speaking the wire [`protocol`].

pub use praas_client as client;
pub use praas_runtime::{
    buffer, clock, connection, control_channel, function, invocation, mailbox, peer, process, process_core, serve,
    session, state, stats, swap, swap_in,
};
pub use praas_wire::{auth, handshake, idmap, lifecycle, protocol};

/// The transports, and the client ends of io_uring and RDMA beside them.
pub mod transport {
    pub use praas_transport::*;

    /// The io_uring transport, and the client's io_uring stream (`client`).
    #[cfg(target_os = "linux")]
    pub mod uring {
        pub use praas_client::uring as client;
        pub use praas_transport::uring::*;
    }

    /// The RDMA verbs transport, and the client's end of it (`client`, [`RdmaClient`]).
    #[cfg(feature = "rdma")]
    pub mod rdma {
        pub use praas_client::rdma as client;
        pub use praas_client::rdma::{bind_with_peers, PeerDialer, RdmaClient, RdmaClientOptions};
        pub use praas_transport::rdma::*;
    }
}

pub use auth::{Credentials, Secret};
pub use client::{connect_invoker, Client, ClientError, ClientOptions, Completion, Invoker};
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
