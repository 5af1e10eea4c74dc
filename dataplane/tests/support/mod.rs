//! What the data-plane integration tests share: running one test body on every transport.

/// Runs each named test function once per transport: `mio::name` and `uring::name` (the io_uring ones skip,
/// saying so, where the kernel does not allow io_uring). The client SDK uses the same transport.
macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {
        mod mio {
            $(#[test]
            fn $name() {
                super::$name(super::TransportKind::Mio);
            })*
        }
        mod uring {
            $(#[test]
            fn $name() {
                if !praas_dataplane::transport::uring_available() {
                    eprintln!("skipped: io_uring is unavailable on this kernel");
                    return;
                }
                super::$name(super::TransportKind::Uring);
            })*
        }
    };
}
