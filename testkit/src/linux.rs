//! What Linux shows of sockets, threads and other processes' files, for tests that wait for a
//! condition no praas API reports: the other end of a connection has read every byte, a thread is
//! asleep, a stopped child's connection has been closed, an event is waiting on a child's file.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The state of a TCP socket (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// Connected.
    Established,
    /// The other end has closed its side (its FIN arrived); this end has not yet.
    CloseWait,
    /// Any other state, by its number.
    Other(u8),
}

/// One TCP socket of this network namespace, as `/proc/net/tcp` and `/proc/net/tcp6` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// Its local address.
    pub local: SocketAddr,
    /// Its remote address.
    pub remote: SocketAddr,
    /// Its state.
    pub state: TcpState,
    /// Bytes sent and not yet acknowledged by the other end.
    pub unacknowledged: usize,
    /// Bytes received and not yet read by the socket's owner.
    pub unread: usize,
}

/// Every TCP socket of this network namespace.
pub fn tcp_sockets() -> io::Result<Vec<TcpSocket>> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            // No IPv6 in this kernel.
            Err(e) if e.kind() == io::ErrorKind::NotFound && table.ends_with('6') => continue,
            Err(e) => return Err(e),
        };
        for line in text.lines().skip(1) {
            let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("{table}: unexpected line {line:?}"));
            sockets.push(parse_tcp_line(line).ok_or_else(bad)?);
        }
    }
    Ok(sockets)
}

/// The socket with addresses `local` and `remote`, if there is one.
pub fn tcp_socket(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpSocket>> {
    Ok(tcp_sockets()?.into_iter().find(|s| s.local == local && s.remote == remote))
}

/// Bytes `stream` sent that the process at its other end (a socket of this network namespace,
/// e.g. a process the test serves on loopback) has not read yet; `None` if that end is not (or no
/// longer) an open socket here.
pub fn unread_by_peer(stream: &TcpStream) -> io::Result<Option<usize>> {
    let far = tcp_socket(stream.peer_addr()?, stream.local_addr()?)?;
    Ok(far.filter(|s| s.state == TcpState::Established).map(|s| s.unread))
}

fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let mut fields = line.split_whitespace().skip(1);
    let local = parse_socket_addr(fields.next()?)?;
    let remote = parse_socket_addr(fields.next()?)?;
    let state = match u8::from_str_radix(fields.next()?, 16).ok()? {
        1 => TcpState::Established,
        8 => TcpState::CloseWait,
        other => TcpState::Other(other),
    };
    let (tx, rx) = fields.next()?.split_once(':')?;
    let unacknowledged = usize::from_str_radix(tx, 16).ok()?;
    let unread = usize::from_str_radix(rx, 16).ok()?;
    Some(TcpSocket { local, remote, state, unacknowledged, unread })
}

/// `ADDR:PORT` as the kernel prints it: the address as 32-bit words in the machine's byte order,
/// each in hex, and the port in hex.
fn parse_socket_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in addr.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The scheduler state of thread `tid` of process `pid` (`R` running, `S` asleep in a wait that
/// a signal interrupts, `D` in an uninterruptible one, `T` stopped, ...), or `None` if there is
/// no such thread.
pub fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // The name, in parentheses, may hold spaces and parentheses itself: the state follows the last `)`.
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// The kernel function thread `tid` of process `pid` sleeps in (`/proc/PID/task/TID/wchan`,
/// e.g. `do_epoll_wait`, `futex_wait_queue`; `0` while it runs), or `None` if there is no such
/// thread.
pub fn wait_channel(pid: u32, tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan")).ok()
}

/// The id of the calling thread.
pub fn current_tid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    tid as u32
}

/// Copies of the descriptors of process `pid` (a child of this one, or one this process may
/// trace) that `wanted` picks by what they link to (`/proc/PID/fd/N`, e.g.
/// `anon_inode:[infinibandevent]`). A copy shares the file with the child: polling it shows
/// whether an event waits there without taking it.
pub fn files_of(pid: u32, wanted: impl Fn(&str) -> bool) -> io::Result<Vec<OwnedFd>> {
    let pid_fd = syscall_fd(|| {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) }
    })?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if !wanted(&target.to_string_lossy()) {
            continue;
        }
        let Ok(number) = entry.file_name().to_string_lossy().parse::<RawFd>() else { continue };
        files.push(syscall_fd(|| {
            // SAFETY: pidfd_getfd takes a live pidfd, a descriptor number and flags, and returns a
            // new descriptor or -1.
            unsafe { libc::syscall(libc::SYS_pidfd_getfd, pid_fd.as_raw_fd(), number, 0) }
        })?);
    }
    Ok(files)
}

fn syscall_fd(call: impl FnOnce() -> libc::c_long) -> io::Result<OwnedFd> {
    let fd = call();
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the system call returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether `fd` is readable now (poll(2) without waiting).
pub fn readable(fd: &impl AsRawFd) -> io::Result<bool> {
    let mut pollfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pollfd, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pollfd.revents & libc::POLLIN != 0)
}

/// Closes `stream` with a reset instead of a FIN (`SO_LINGER` 0): a test that opens thousands of
/// connections leaves no `TIME_WAIT` socket holding a port after it.
pub fn close_with_reset(stream: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt(2) on a socket this function owns, reading a `linger` that lives here
    // and whose size is given.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_connection_shows_its_unread_bytes_and_its_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut client, b"twelve bytes").unwrap();
        // Loopback delivers at once, but through a softirq: wait for the bytes to be queued.
        crate::wait_until(std::time::Duration::from_secs(5), "the 12 bytes queued at the server", || {
            unread_by_peer(&client).unwrap() == Some(12)
        });
        let mut buf = [0u8; 12];
        std::io::Read::read_exact(&mut &server, &mut buf).unwrap();
        assert_eq!(unread_by_peer(&client).unwrap(), Some(0));
        drop(server);
        crate::wait_until(std::time::Duration::from_secs(5), "the server's close at the client", || {
            let me = tcp_socket(client.local_addr().unwrap(), client.peer_addr().unwrap()).unwrap();
            me.is_some_and(|s| s.state == TcpState::CloseWait)
        });
    }

    #[test]
    fn a_thread_asleep_is_seen_asleep() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (keep, wait) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            tx.send(current_tid()).unwrap();
            let _ = wait.recv();
        });
        let tid = rx.recv().unwrap();
        crate::wait_until(std::time::Duration::from_secs(5), "the thread asleep", || {
            thread_state(std::process::id(), tid) == Some('S')
        });
        drop(keep);
        sleeper.join().unwrap();
    }
}
