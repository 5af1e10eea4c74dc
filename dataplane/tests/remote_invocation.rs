//! Remote invocations between real processes over real sockets (both transports): a function of
//! one process invoking a function of another through `Context::invoke_remote` / `submit` /
//! `wait_any` (Rust) and `praas_remote_*` (C), over the authenticated peer connections. The cases
//! are in `remote/mod.rs`, which `rdma.rs` runs over RDMA.

#[macro_use]
mod support;
#[macro_use]
mod remote;

use praas_dataplane::transport::TransportKind;
use remote::Fabric;

/// Each case over TCP, on both transports (`mio::name`, `uring::name`).
macro_rules! over_tcp {
    ($($name:ident),* $(,)?) => {
        $(fn $name(kind: TransportKind) {
            remote::$name(Fabric::Tcp(kind));
        })*
        on_both_transports!($($name),*);
    };
}

every_case!(over_tcp);
