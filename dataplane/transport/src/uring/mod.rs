//! The io_uring TCP transport: the data plane's default on Linux (`docs/uring.md`).
//!
//! One ring per I/O thread ([`server`]); each thread arms a multishot accept on the shared
//! listener. Each connection has a provided-buffer ring of pool buffers (`recv::BufRing`) that one
//! multishot receive fills; every frame wholly inside a received buffer reaches the function as a
//! slice of it, without a copy. A frame larger than a receive buffer gets a pool buffer of its own:
//! the multishot receive is cancelled and one `MSG_WAITALL` receive reads the rest of the frame
//! straight into that buffer. A small frame that straddles two receive buffers is assembled by
//! copying (at most one receive buffer's worth).
//!
//! Responses go out as `sendmsg` (header, error text, output buffer: no copy), all those queued on
//! a connection in one operation, all connections' operations of one batch of completions in one
//! `io_uring_enter`; above [`UringOptions::zero_copy_threshold`] as `SENDMSG_ZC`. Workers hand
//! their responses to the I/O thread through a lock-free queue and an eventfd the ring reads.
//!
//! [`client`] is the SDK side: blocking calls over a ring, which `Client` uses where the ring saves
//! system calls (batched requests sent with the next receive, one receive of a large answer).

mod fixed;
pub mod probe;
mod recv;
pub mod server;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::handle::{ServerHandle, Transport};
use praas_runtime::process::Process;

/// Tuning of the io_uring transport.
#[derive(Debug, Clone)]
pub struct UringOptions {
    /// I/O threads, each with its own ring (at least 1).
    pub threads: usize,
    /// Submission queue entries of each ring (the completion queue has four times as many).
    pub ring_entries: u32,
    /// Kernel-side submission polling with this idle time in ms; `None`: the thread submits.
    pub sqpoll_idle_ms: Option<u32>,
    /// Receive buffers per connection (a power of two).
    pub recv_buffers: u16,
    /// Bytes of each receive buffer; larger frames get a buffer of their own.
    pub recv_buffer_size: usize,
    /// Sends of at least this many bytes to a peer on another host use `SENDMSG_ZC`; `None`:
    /// never. Loopback peers get plain sends: local delivery copies zero-copy pages anyway, and
    /// measured slower (`docs/uring.md`).
    pub zero_copy_threshold: Option<usize>,
    /// Use `SENDMSG_ZC` for loopback peers too (for tests of that path).
    pub zero_copy_on_loopback: bool,
    /// Back-pressure, and the linger of a connection that broke the protocol.
    pub connection: praas_runtime::serve::ConnectionOptions,
    /// How long an I/O thread with nothing to do polls its ring (yielding the CPU between looks)
    /// before it blocks; zero blocks at once. Polling spares the wake-up of a blocked thread when
    /// the next request comes, at the price of a CPU while it polls. Default: `PRAAS_URING_SPIN_US`
    /// (microseconds), else zero.
    pub spin: Duration,
}

impl Default for UringOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            ring_entries: 256,
            sqpoll_idle_ms: None,
            recv_buffers: 4,
            recv_buffer_size: 128 << 10,
            zero_copy_threshold: DEFAULT_ZERO_COPY_THRESHOLD,
            zero_copy_on_loopback: false,
            connection: praas_runtime::serve::ConnectionOptions::default(),
            spin: spin_from_env(),
        }
    }
}

/// The I/O threads' polling time that `PRAAS_URING_SPIN_US` names (zero if unset or not a number).
fn spin_from_env() -> Duration {
    std::env::var("PRAAS_URING_SPIN_US")
        .ok()
        .and_then(|us| us.parse().ok())
        .map_or(Duration::ZERO, Duration::from_micros)
}

/// Default zero-copy threshold, chosen by measurement (`docs/uring.md`).
pub const DEFAULT_ZERO_COPY_THRESHOLD: Option<usize> = Some(64 << 10);

/// The io_uring transport of one process.
pub struct UringTransport {
    listener: TcpListener,
    process: Arc<Process>,
    options: UringOptions,
    stats: Arc<UringStats>,
}

/// Counters of one io_uring transport ([`UringTransport::stats`]).
#[derive(Debug, Default)]
pub struct UringStats {
    fixed_sends: std::sync::atomic::AtomicU64,
}

impl UringStats {
    /// Zero-copy sends made from registered (fixed) buffers so far (the other large outputs
    /// pinned their pages for each send).
    pub fn fixed_sends(&self) -> u64 {
        self.fixed_sends.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for UringTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringTransport").field("addr", &self.listener.local_addr().ok()).finish()
    }
}

impl UringTransport {
    /// Binds `addr` for `process`; fails if the kernel does not allow io_uring.
    pub fn bind(addr: SocketAddr, process: Arc<Process>, options: UringOptions) -> io::Result<Self> {
        probe::check().map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        let listener = TcpListener::bind(addr)?;
        super::handle::deepen_backlog(&listener)?;
        Ok(Self { listener, process, options, stats: Arc::default() })
    }

    /// The transport's counters, which stay readable after [`Transport::spawn`].
    pub fn stats(&self) -> Arc<UringStats> {
        Arc::clone(&self.stats)
    }
}

impl Transport for UringTransport {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    fn spawn(self: Box<Self>) -> io::Result<ServerHandle> {
        let addr = self.local_addr();
        let listener = Arc::new(self.listener);
        let threads = self.options.threads.max(1);
        let shared: Vec<Arc<server::LoopShared>> = (0..threads)
            .map(|_| server::LoopShared::new(Arc::clone(&self.stats)).map(Arc::new))
            .collect::<io::Result<_>>()?;
        // Each loop builds its ring on its own thread (a single-issuer ring belongs to its
        // creator); the first error of any of them is the transport's.
        let mut handles: Vec<std::thread::JoinHandle<io::Result<()>>> = Vec::with_capacity(threads);
        for (index, mine) in shared.iter().enumerate() {
            let (listener, process, options, mine) =
                (Arc::clone(&listener), Arc::clone(&self.process), self.options.clone(), Arc::clone(mine));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let handle = std::thread::Builder::new().name(format!("praas-uring-{index}")).spawn(move || {
                let mut event_loop = match server::EventLoop::new(listener, process, options, mine) {
                    Ok(event_loop) => {
                        let _ = ready_tx.send(Ok(()));
                        event_loop
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                };
                event_loop.run()
            })?;
            let started = ready_rx.recv().unwrap_or_else(|_| Err(io::Error::other("an I/O thread died at start")));
            if let Err(e) = started {
                // Stop the threads already serving before reporting the failure.
                for started in &shared[..index] {
                    started.stop.store(true, Ordering::Release);
                    started.wake_always();
                }
                for handle in handles {
                    let _ = handle.join();
                }
                let _ = handle.join();
                return Err(e);
            }
            handles.push(handle);
        }
        let supervisor = std::thread::Builder::new().name(format!("praas-uring-{addr}")).spawn(move || {
            let mut result = Ok(());
            for handle in handles {
                let outcome = handle.join().unwrap_or_else(|_| Err(io::Error::other("an I/O thread panicked")));
                if result.is_ok() {
                    result = outcome;
                }
            }
            result
        })?;
        let stopper = move || {
            for shared in &shared {
                shared.stop.store(true, Ordering::Release);
                shared.wake_always();
            }
        };
        Ok(ServerHandle::new(addr, Box::new(stopper), supervisor))
    }
}
