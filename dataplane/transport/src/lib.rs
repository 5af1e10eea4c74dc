//! Transports: how invocations reach a process and how its responses leave.
//!
//! Every transport does the same three things, and nothing else:
//! 1. receives frames into buffers of the process's [`BufferPool`](praas_runtime::buffer::BufferPool)
//!    (which io_uring and RDMA transports register with the kernel or the NIC once per buffer),
//! 2. decodes them with [`decode_frame`](praas_wire::protocol::decode_frame) and hands each frame,
//!    with its payload still in the receive buffer, to [`serve_frame`], whose decision it carries
//!    out through the one connection policy ([`praas_runtime::serve::act`]),
//! 3. sends each [`Response`](praas_runtime::invocation::Response) as header, error text and the function's
//!    output buffer, without copying the output, either at once (inline functions) or when a worker
//!    hands it to the connection's [`ResponseSink`](praas_runtime::invocation::ResponseSink).
//!
//! [`tcp`] is the portable implementation over mio; [`uring`] is the Linux one over io_uring, the
//! default where the kernel allows it ([`TransportKind::Auto`], `docs/uring.md`). A transport runs
//! on its own thread ([`Transport::spawn`]) and stops through the [`ServerHandle`] it returns.

#![warn(clippy::cast_possible_truncation)]

#[cfg(feature = "rdma")]
pub mod rdma;
pub mod tcp;
#[cfg(target_os = "linux")]
pub mod uring;

pub mod handle;
pub mod kind;
pub mod sweep;

use std::net::SocketAddr;

pub use handle::{ServerHandle, Transport};
pub use kind::{uring_available, TransportKind, UnknownTransport};
pub use praas_runtime::serve::{serve_frame, ConnectionOptions, FrameAction, OutFrame};

/// Binds the transport of `kind` (resolving `Auto`) for `process` on `addr`.
pub fn bind(
    kind: TransportKind,
    addr: SocketAddr,
    process: std::sync::Arc<praas_runtime::process::Process>,
) -> std::io::Result<Box<dyn Transport>> {
    match kind.resolve() {
        #[cfg(target_os = "linux")]
        TransportKind::Uring => {
            Ok(Box::new(uring::UringTransport::bind(addr, process, uring::UringOptions::default())?))
        }
        _ => Ok(Box::new(tcp::TcpTransport::bind(addr, process, tcp::TcpOptions::default())?)),
    }
}
