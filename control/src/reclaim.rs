//! Memory given back after bursts of connections, for every listener of the control plane (the
//! HTTP API and the control channel): each closed connection is counted, and once many have
//! closed the heap's free pages go back to the OS (the data plane's
//! [`release_free_memory`](praas_dataplane::buffer::release_free_memory)), so the resident memory
//! a burst of idle connections raised does not stay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Connections closed since the heap was last trimmed ([`release_freed_memory`]).
static CLOSED_SINCE_TRIM: AtomicUsize = AtomicUsize::new(0);
/// Closed connections after which the heap is trimmed.
const TRIM_AFTER_CLOSES: usize = 256;

/// Notes that a connection (HTTP or control channel) closed: once many have, the memory their
/// tasks held is given back to the OS.
pub(crate) fn connection_closed() {
    CLOSED_SINCE_TRIM.fetch_add(1, Ordering::Relaxed);
}

/// Once a second, if [`TRIM_AFTER_CLOSES`] connections closed since the last time, gives the
/// heap's free pages back to the OS: the allocator keeps what thousands of closed connections'
/// tasks freed (scattered among live allocations) otherwise, and the resident memory a burst of
/// idle connections raised would stay.
pub(crate) async fn release_freed_memory() {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if CLOSED_SINCE_TRIM.load(Ordering::Relaxed) < TRIM_AFTER_CLOSES {
            continue;
        }
        CLOSED_SINCE_TRIM.store(0, Ordering::Relaxed);
        if tokio::task::spawn_blocking(praas_dataplane::buffer::release_free_memory).await.is_err() {
            tracing::debug!("trimming the heap failed");
        }
    }
}
