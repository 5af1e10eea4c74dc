//! A transport as the process's start-up sees it: bound, spawned on its thread, stopped through
//! its [`ServerHandle`]; and accepting the connections a listener has waiting.

use std::fmt;
use std::net::SocketAddr;
use std::thread::JoinHandle;

/// A transport serving one process.
pub trait Transport: Send + 'static {
    /// Short name: `tcp`, `uring`, `rdma`.
    fn name(&self) -> &'static str;
    /// The address clients connect to.
    fn local_addr(&self) -> SocketAddr;
    /// Serves on a new thread until the returned handle stops it.
    fn spawn(self: Box<Self>) -> std::io::Result<ServerHandle>;
}

/// A running transport; stops it when told to (or when dropped).
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle").field("addr", &self.addr).finish()
    }
}

impl ServerHandle {
    /// Wraps a transport's thread and the closure that makes it stop.
    pub fn new(addr: SocketAddr, stop: Box<dyn FnOnce() + Send>, thread: JoinHandle<std::io::Result<()>>) -> Self {
        Self { addr, stop: Some(stop), thread: Some(thread) }
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the transport stops by itself (an error) or forever.
    pub fn join(mut self) -> std::io::Result<()> {
        self.stop = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("transport thread panicked")),
            None => Ok(()),
        }
    }

    /// Stops the transport and waits for its thread.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("transport thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.stop.is_some() {
            let _ = self.shutdown();
        }
    }
}

/// Accepts every connection waiting on a non-blocking listener (edge-triggered readiness: until
/// it would block), and says whether another error (out of descriptors, say) ended the round:
/// the connection stays queued, and no readiness event comes for it until another connection
/// arrives, so the caller tries again after a while.
pub(crate) fn accept_waiting(listener: &mio::net::TcpListener) -> (Vec<(mio::net::TcpStream, SocketAddr)>, bool) {
    let mut accepted = Vec::new();
    loop {
        match listener.accept() {
            Ok(connection) => accepted.push(connection),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (accepted, false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                return (accepted, true);
            }
        }
    }
}

/// How long a listener whose accept failed waits before it tries again.
pub(crate) const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Connections the kernel queues for a listener before it accepts them: a flood of connections
/// arriving faster than one loop accepts them fills a short queue, and the next clients' SYNs
/// are dropped (they retry after a second). The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Deepens the accept queue of a bound listener to [`LISTEN_BACKLOG`] (a second `listen` on a
/// listening socket only changes its backlog).
pub(crate) fn deepen_backlog(listener: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    // SAFETY: plain syscall on a listening socket the caller owns.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
