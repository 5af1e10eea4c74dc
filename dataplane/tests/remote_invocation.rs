//! Remote invocations between real processes over real sockets (both transports): a function of
//! one process invoking a function of another through `Context::invoke_remote` / `submit` /
//! `wait_any` (Rust) and `praas_remote_*` (C), over the authenticated peer connections. The cases
//! are in `remote/mod.rs`, which `rdma.rs` runs over RDMA.

#[macro_use]
mod support;
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

over_tcp!(
    remote_invocation_is_byte_exact_from_0_b_to_16_mib,
    every_error_reaches_the_caller_with_its_status,
    the_callers_deadline_travels_and_a_late_answer_is_dropped,
    a_calls_b_which_calls_a_with_one_worker_each,
    fan_out_gathers_from_16_processes_in_about_one_round_trip,
    wait_any_returns_the_first_answer_to_arrive,
    impostor_peers_are_refused,
    a_version_1_c_library_still_loads_and_runs,
);
