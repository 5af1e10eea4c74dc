//! The client SDK's io_uring stream: blocking calls, each one `io_uring_enter` that submits the
//! operations and waits for their completions.
//!
//! [`UringStream::send_then_recv`] sends requests and receives the first bytes of the answers in
//! one system call (a blocking client pays two: `writev` and `read`): `Client` uses it for the
//! requests it batched. The send is submitted first and the receive right after it, not linked
//! (a linked receive is issued later, through task work); sends use `MSG_WAITALL`, so the kernel
//! itself finishes a send the socket takes in parts, and a send that still comes back short (a
//! peer reset, an interrupted wait) is finished by further sends. Every wait is bounded by a
//! deadline: an operation still in flight then is cancelled and reaped before the call returns,
//! so no buffer is borrowed by the kernel beyond the call.

use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::ThreadId;
use std::time::Instant;

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{opcode, squeue, IoUring};

use praas_transport::uring::probe::{build_ring, check, RingConfig};

/// `IORING_RECVSEND_POLL_FIRST` (include/uapi/linux/io_uring.h): wait for readiness before
/// the first attempt.
const IORING_RECVSEND_POLL_FIRST: u16 = 1;

/// Most iovecs of one send.
const MAX_IOV: usize = 8;

/// An io_uring ring driving one connected socket (which the caller keeps open).
pub struct UringStream {
    ring: IoUring,
    fd: RawFd,
    /// The thread that created `ring`: the only one that may submit to it (single issuer).
    owner: ThreadId,
    /// The `msghdr` and iovecs of sends, reused (boxed: the kernel reads them by address).
    iov: Box<Iovecs>,
}

impl std::fmt::Debug for UringStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStream").field("fd", &self.fd).finish()
    }
}

impl UringStream {
    /// A ring for `stream`; fails where io_uring is unavailable. The caller keeps `stream` open
    /// for as long as it uses this value.
    pub fn new(stream: &TcpStream) -> io::Result<Self> {
        check().map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        // SAFETY: all-zero iovecs and msghdr are valid (null pointers, zero lengths).
        let iov: Box<Iovecs> = Box::new(unsafe { std::mem::zeroed() });
        Ok(Self { ring: Self::ring()?, fd: stream.as_raw_fd(), owner: std::thread::current().id(), iov })
    }

    /// A single-issuer ring with deferred task work: completions are processed only when this
    /// thread waits for them, without interrupting it otherwise.
    fn ring() -> io::Result<IoUring> {
        build_ring(RingConfig { entries: 8, sqpoll_idle_ms: None, single_issuer: true, taskrun_flag: false })
    }

    /// A client may move to another thread between calls; its ring (idle then) is made anew there.
    fn adopt(&mut self) -> io::Result<()> {
        let me = std::thread::current().id();
        if self.owner != me {
            self.ring = Self::ring()?;
            self.owner = me;
        }
        Ok(())
    }

    /// Sends every byte of `bufs`.
    pub fn send_all(&mut self, bufs: &[IoSlice<'_>], deadline: Instant) -> io::Result<()> {
        let mut sent = 0;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        while sent < total {
            self.iov.fill(bufs, sent);
            let entry = self.iov.send_entry(self.fd);
            // SAFETY: the iovecs (boxed in `self`) and the slices they point to live until `run`
            // returns, and `run` returns only when the send has completed (or was cancelled and
            // reaped).
            let [result, _] = unsafe { self.run(&[entry], deadline)? };
            sent += check_sent(result)?;
        }
        Ok(())
    }

    /// Sends every byte of `bufs`, then receives at least one byte into `buf`, in one system call
    /// when the send completes whole. Returns the bytes received (0: the peer closed).
    pub fn send_then_recv(&mut self, bufs: &[IoSlice<'_>], buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.iov.fill(bufs, 0);
        // Not linked: the kernel takes entries in order, so the send has gone out (or is queued
        // on the socket) when the receive is issued, and a linked receive would be issued later,
        // through task work. The receive waits for readiness first: the answer cannot be there yet.
        let send = self.iov.send_entry(self.fd);
        let recv = recv_entry(self.fd, buf, false, true);
        // SAFETY: the iovecs, the slices they name and `buf` live until `run` returns, and `run`
        // returns only when both operations completed (or were cancelled and reaped).
        let [sent, received] = unsafe { self.run(&[send, recv], deadline)? };
        let sent = check_sent(sent)?;
        if sent < total {
            // A short send broke the link: the receive was cancelled. Finish both in turn.
            self.send_all(&bufs_from(bufs, sent), deadline)?;
            return self.recv(buf, false, deadline);
        }
        match received {
            Some(n) if n >= 0 => Ok(n as usize),
            Some(e) if e == -libc::ECANCELED => self.recv(buf, false, deadline),
            Some(e) => Err(io::Error::from_raw_os_error(-e)),
            None => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Receives into `buf`: at least one byte, or (with `all`) all of `buf` unless the peer
    /// closes first. Returns the bytes received (0: the peer closed).
    pub fn recv(&mut self, buf: &mut [u8], all: bool, deadline: Instant) -> io::Result<usize> {
        let entry = recv_entry(self.fd, buf, all, false);
        // SAFETY: `buf` lives until `run` returns, which is after the receive completed or was
        // cancelled and reaped.
        let [result, _] = unsafe { self.run(&[entry], deadline)? };
        match result {
            Some(n) if n >= 0 => Ok(n as usize),
            Some(e) => Err(io::Error::from_raw_os_error(-e)),
            None => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Receives `want` bytes (fewer if the peer closes first) into the spare capacity of `buf`
    /// and extends `buf` by the bytes received: no zeroing of memory the kernel fills anyway.
    pub fn recv_to_capacity(&mut self, buf: &mut Vec<u8>, want: usize, deadline: Instant) -> io::Result<usize> {
        let spare = buf.spare_capacity_mut();
        let len = u32::try_from(spare.len().min(want)).unwrap_or(u32::MAX);
        let entry =
            opcode::Recv::new(Fd(self.fd), spare.as_mut_ptr().cast::<u8>(), len).flags(libc::MSG_WAITALL).build();
        // SAFETY: the spare capacity is owned by `buf`, which `&mut` keeps alive and unmoved until
        // `run` returns, after the receive completed or was cancelled and reaped.
        let [result, _] = unsafe { self.run(&[entry], deadline)? };
        match result {
            Some(n) if n >= 0 => {
                let n = n as usize;
                // SAFETY: the kernel wrote `n` bytes (at most `len`, within the spare capacity)
                // right after the data.
                unsafe { buf.set_len(buf.len() + n) };
                Ok(n)
            }
            Some(e) => Err(io::Error::from_raw_os_error(-e)),
            None => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Submits `entries` (at most two; `user_data` is set here) and waits until all completed or
    /// the deadline passed; operations still in flight then are cancelled and reaped. Returns each
    /// operation's result, `None` for one that was still waiting at the deadline.
    ///
    /// # Safety
    /// Every buffer the entries point to must stay valid until this function returns.
    unsafe fn run(&mut self, entries: &[squeue::Entry], deadline: Instant) -> io::Result<[Option<i32>; 2]> {
        self.adopt()?;
        let mut results = [None, None];
        let mut waiting = entries.len();
        {
            let mut sq = self.ring.submission();
            for (index, entry) in entries.iter().enumerate() {
                let entry = entry.clone().user_data(index as u64);
                // SAFETY: forwarded from this function's contract; the ring is empty between
                // calls (every call reaps all it submitted), so the two entries fit.
                unsafe { sq.push(&entry) }.map_err(|_| io::Error::other("client ring full"))?;
            }
        }
        let mut timed_out = false;
        while waiting > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = if timed_out {
                self.ring.submit_and_wait(1)
            } else {
                let ts = Timespec::new().sec(left.as_secs()).nsec(left.subsec_nanos());
                self.ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts))
            };
            match outcome {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            let mut failed = false;
            for cqe in self.ring.completion() {
                let Ok(index) = usize::try_from(cqe.user_data()) else { continue };
                if let Some(slot) = results.get_mut(index) {
                    if slot.is_none() {
                        *slot = Some(cqe.result());
                        failed |= cqe.result() < 0;
                        waiting -= 1;
                    }
                }
            }
            // A failed send leaves its receive waiting for an answer that cannot come: end it.
            if waiting > 0 && !timed_out && (failed || Instant::now() >= deadline) {
                timed_out = true;
                let mut sq = self.ring.submission();
                for (index, result) in results.iter().enumerate().take(entries.len()) {
                    if result.is_none() {
                        let cancel = opcode::AsyncCancel::new(index as u64).build().user_data(u64::MAX);
                        // SAFETY: a cancel points to no memory.
                        let _ = unsafe { sq.push(&cancel) };
                    }
                }
            }
        }
        if timed_out {
            // A cancelled operation reports -ECANCELED: that is the timeout.
            for slot in &mut results {
                if *slot == Some(-libc::ECANCELED) {
                    *slot = None;
                }
            }
        }
        Ok(results)
    }
}

fn check_sent(result: Option<i32>) -> io::Result<usize> {
    match result {
        Some(n) if n > 0 => Ok(n as usize),
        Some(0) => Err(io::ErrorKind::WriteZero.into()),
        Some(e) => Err(io::Error::from_raw_os_error(-e)),
        None => Err(io::ErrorKind::TimedOut.into()),
    }
}

fn recv_entry(fd: RawFd, buf: &mut [u8], all: bool, poll_first: bool) -> squeue::Entry {
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    let ioprio = if poll_first { IORING_RECVSEND_POLL_FIRST } else { 0 };
    opcode::Recv::new(Fd(fd), buf.as_mut_ptr(), len)
        .flags(if all { libc::MSG_WAITALL } else { 0 })
        .ioprio(ioprio)
        .build()
}

/// `bufs` without its first `skip` bytes.
fn bufs_from<'a>(bufs: &[IoSlice<'a>], mut skip: usize) -> Vec<IoSlice<'a>> {
    let mut out = Vec::with_capacity(bufs.len());
    for buf in bufs {
        if skip >= buf.len() {
            skip -= buf.len();
            continue;
        }
        let bytes: &'a [u8] = slice_of(buf);
        out.push(IoSlice::new(&bytes[skip..]));
        skip = 0;
    }
    out
}

/// The bytes of an `IoSlice`, with its original lifetime.
fn slice_of<'a>(buf: &IoSlice<'a>) -> &'a [u8] {
    let ptr = buf.as_ptr();
    let len = buf.len();
    // SAFETY: an `IoSlice<'a>` is made from a `&'a [u8]`: `ptr..ptr+len` is valid for `'a`.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// A `msghdr` and its iovecs for one send.
struct Iovecs {
    iov: [libc::iovec; MAX_IOV],
    msg: libc::msghdr,
}

// SAFETY: the raw pointers inside point into the slices of the call that filled them and are
// used only by the kernel during that same call (`&mut UringStream`); between calls they are
// dead values, so moving them to another thread moves nothing shared.
unsafe impl Send for Iovecs {}
// SAFETY: as above; a shared reference gives no access to the pointers.
unsafe impl Sync for Iovecs {}

impl Iovecs {
    /// Points the iovecs at `bufs` without their first `skip` bytes (at most `MAX_IOV` of them).
    fn fill(&mut self, bufs: &[IoSlice<'_>], mut skip: usize) {
        let this = self;
        let mut count = 0;
        for buf in bufs {
            if skip >= buf.len() {
                skip -= buf.len();
                continue;
            }
            if count == MAX_IOV {
                break;
            }
            this.iov[count] =
                libc::iovec { iov_base: buf[skip..].as_ptr() as *mut libc::c_void, iov_len: buf.len() - skip };
            skip = 0;
            count += 1;
        }
        this.msg.msg_iov = this.iov.as_mut_ptr();
        this.msg.msg_iovlen = count as _;
    }

    fn send_entry(&mut self, fd: RawFd) -> squeue::Entry {
        opcode::SendMsg::new(Fd(fd), &self.msg).flags((libc::MSG_WAITALL | libc::MSG_NOSIGNAL) as u32).build()
    }
}
