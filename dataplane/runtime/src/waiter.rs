//! Gets that receive their own frames (leader/follower): while a [`Mailbox::get`](crate::mailbox::Mailbox::get)
//! waits, it reads the process's peer connections itself, so that a message arriving for it
//! is stored, acknowledged and taken on the waiting thread, without the transport's I/O thread
//! waking and handing it over (two context switches and a `futex` per message).
//!
//! A [`Waiter`] is an epoll instance and an eventfd. A transport that takes part ([`Inbound`],
//! the mio transport) watches each peer connection with every waiter of the process *and* with
//! its own I/O thread, all with `EPOLLEXCLUSIVE`, the I/O thread's registration last: Linux wakes
//! the first of them that has a thread in `epoll_wait` and stops there (Linux 4.5 and later,
//! `ep_poll_callback`), so a frame wakes a waiting get when there is one and the I/O thread when
//! there is none. Correctness does not hang on who wakes: a connection's bytes are read by one
//! thread at a time ([`Turn`]), and every reader serves whatever frame arrives.
//!
//! The mailbox wakes a waiter with its eventfd when a message it may want is stored by another
//! thread (the I/O thread, another waiter, a put to this process itself).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

/// The token of a waiter's own eventfd in its epoll instance.
const WAKE: u64 = u64::MAX;
/// Events one `epoll_wait` returns at most.
const EVENTS: libc::c_int = 16;

/// One waiting get's epoll instance and wake-up eventfd; pooled by the mailbox, used by one
/// thread at a time.
#[derive(Debug)]
pub struct Waiter {
    epoll: OwnedFd,
    wake: OwnedFd,
}

/// A transport whose peer connections waiting gets read themselves.
pub trait Inbound: Send + Sync {
    /// Watches every peer connection the transport holds now with `waiter`, a new one (the
    /// mailbox calls it holding the lock that [`Mailbox::with_waiters`](crate::mailbox::Mailbox::with_waiters)
    /// takes, so that no connection is adopted meanwhile).
    fn enlist(&self, waiter: &Waiter) -> io::Result<()>;
    /// Reads and serves what arrived on the connection `token` names (an event of a waiter).
    fn serve(&self, token: u64);
}

impl std::fmt::Debug for dyn Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inbound")
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Waiter {
    /// A new epoll instance with its eventfd registered.
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes flags only; the descriptor it returns is ours to own.
        let epoll = unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        // SAFETY: eventfd takes an initial value and flags only; the descriptor is ours to own.
        let wake = unsafe { OwnedFd::from_raw_fd(check(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?) };
        let waiter = Self { epoll, wake };
        // Edge-triggered: every write to the eventfd is an event (the counter is never read
        // back: it cannot overflow in 2^64 wake-ups).
        waiter.ctl(libc::EPOLL_CTL_ADD, waiter.wake.as_raw_fd(), (libc::EPOLLIN | libc::EPOLLET) as u32, WAKE)?;
        Ok(waiter)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        epoll_ctl(self.epoll.as_raw_fd(), op, fd, events, token)
    }

    /// Watches `fd` for input, in the exclusive mode of the module docs, as `token`.
    pub fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, EXCLUSIVE_INPUT, token)
    }

    /// Stops watching `fd` (a connection that closes).
    pub fn unwatch(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// Wakes the thread waiting in [`Waiter::wait`] (or makes its next wait return at once).
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to the eventfd this waiter owns.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Waits up to `timeout` for a connection event or a wake-up; calls `ready` with the token of
    /// every connection that has input. Returns whether anything happened (false: the timeout).
    pub fn wait(&self, timeout: Duration, mut ready: impl FnMut(u64)) -> io::Result<bool> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS as usize];
        let millis = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: the kernel writes at most EVENTS entries into the local array it is given.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), EVENTS, millis) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted { Ok(true) } else { Err(err) };
        }
        for event in &events[..n as usize] {
            let token = event.u64;
            if token != WAKE {
                ready(token);
            }
        }
        Ok(n > 0)
    }
}

/// Input, edge-triggered, in the exclusive wake-up mode (the flags a waiter and the I/O thread
/// watch a peer connection with).
pub const EXCLUSIVE_INPUT: u32 = (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32;

/// `epoll_ctl(epoll, op, fd, {events, token})`.
pub fn epoll_ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: the kernel reads one epoll_event from the local it is given (ignored for DEL).
    check(unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) }).map(|_| ())
}

/// The reading turn of one connection that several threads may be woken for: one reads at a
/// time, and one woken while another reads leaves a note that the reader looks at before it
/// lets go, so that no arrival goes unread (with edge-triggered readiness, nobody would be woken
/// for it again).
#[derive(Debug, Default)]
pub struct Turn<T> {
    state: Mutex<T>,
    asked: AtomicBool,
}

impl<T> Turn<T> {
    /// A turn over `state`.
    pub fn new(state: T) -> Self {
        Self { state: Mutex::new(state), asked: AtomicBool::new(false) }
    }

    /// Runs `read` on the state if no other thread has it, again as long as another thread asked
    /// meanwhile; returns what the last run returned, `None` if another thread had the state
    /// (it reads for this caller).
    pub fn take<R>(&self, mut read: impl FnMut(&mut T) -> R) -> Option<R> {
        self.asked.store(true, Ordering::SeqCst);
        let mut last = None;
        loop {
            let mut state = match self.state.try_lock() {
                Ok(state) => state,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return last,
            };
            self.asked.store(false, Ordering::SeqCst);
            last = Some(read(&mut state));
            drop(state);
            if !self.asked.load(Ordering::SeqCst) {
                return last;
            }
        }
    }

    /// The state, waiting for the thread that has it (for what must happen now: closing, sweeping).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn a_turn_asked_while_taken_is_run_again_by_its_holder() {
        let turn = Turn::new(0u32);
        // Asked from inside the run (as another thread would be while this one reads): the
        // holder runs once more, and the asking caller does not run.
        let runs = turn.take(|n| {
            *n += 1;
            if *n == 1 {
                assert_eq!(turn.take(|_| unreachable!("the state is taken")), None);
            }
            *n
        });
        assert_eq!(runs, Some(2));
        assert_eq!(*turn.lock(), 2);
        assert_eq!(turn.take(|n| *n), Some(2), "nobody asked: one run");
    }

    #[test]
    fn every_ask_from_many_threads_is_served_by_some_run() {
        // Each thread bumps `asked` and takes the turn; every run sees all asks made before
        // it started: after all threads end, the last run has seen them all.
        let turn = Arc::new(Turn::new(0usize));
        let asked = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (turn, asked) = (Arc::clone(&turn), Arc::clone(&asked));
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        asked.fetch_add(1, Ordering::SeqCst);
                        turn.take(|seen| *seen = asked.load(Ordering::SeqCst));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*turn.lock(), 40_000, "the last ask was read by a run after it");
    }

    #[test]
    fn a_waiter_wakes_on_its_eventfd_and_reports_watched_input() {
        let waiter = Waiter::new().unwrap();
        assert!(!waiter.wait(Duration::ZERO, |_| panic!("nothing is watched")).unwrap());
        waiter.wake();
        assert!(waiter.wait(Duration::from_secs(5), |_| panic!("a wake-up is no input")).unwrap());
        // Edge-triggered: the wake-up was reported once.
        assert!(!waiter.wait(Duration::ZERO, |_| {}).unwrap());
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        waiter.watch(a.as_raw_fd(), 7).unwrap();
        std::io::Write::write_all(&mut b, b"x").unwrap();
        let mut tokens = Vec::new();
        assert!(waiter.wait(Duration::from_secs(5), |t| tokens.push(t)).unwrap());
        assert_eq!(tokens, [7]);
        waiter.unwatch(a.as_raw_fd());
        std::io::Write::write_all(&mut b, b"y").unwrap();
        assert!(!waiter.wait(Duration::ZERO, |_| panic!("unwatched")).unwrap());
    }

    #[test]
    fn input_wakes_a_waiting_waiter_and_not_the_registration_behind_it_else_that_one() {
        // The I/O thread's registration, added after the waiter's (as a transport requeues it).
        let waiter = Arc::new(Waiter::new().unwrap());
        let behind = Waiter::new().unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        waiter.watch(a.as_raw_fd(), 1).unwrap();
        behind.watch(a.as_raw_fd(), 2).unwrap();
        // Nobody waits: the input reaches the registration behind (the I/O thread).
        std::io::Write::write_all(&mut b, b"x").unwrap();
        let mut seen = Vec::new();
        assert!(behind.wait(Duration::from_secs(5), |t| seen.push(t)).unwrap());
        assert_eq!(seen, [2]);
        // Drain the waiter's stale event and the input.
        waiter.wait(Duration::ZERO, |_| {}).unwrap();
        let mut byte = [0u8; 8];
        assert_eq!(std::io::Read::read(&mut &a, &mut byte).unwrap(), 1);
        // A thread waits in the waiter: the next input wakes it, and nothing reaches behind.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = {
            let waiter = Arc::clone(&waiter);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                // SAFETY: gettid takes nothing and returns this thread's id.
                tx.send(unsafe { libc::gettid() }).unwrap();
                waiter.wait(Duration::from_secs(10), |t| seen.push(t)).unwrap();
                seen
            })
        };
        let tid = rx.recv().unwrap();
        // Until the thread is in epoll_wait: its wait-queue entry is what the kernel looks for.
        let started = std::time::Instant::now();
        while !in_epoll_wait(tid) {
            assert!(started.elapsed() < Duration::from_secs(10), "the thread never waited");
            std::thread::yield_now();
        }
        std::io::Write::write_all(&mut b, b"y").unwrap();
        assert_eq!(waiting.join().unwrap(), [1]);
        assert!(!behind.wait(Duration::ZERO, |_| panic!("the waiting waiter took it")).unwrap());
    }

    /// Whether thread `tid` of this process sleeps in epoll_wait (its kernel wait channel).
    fn in_epoll_wait(tid: libc::pid_t) -> bool {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).is_ok_and(|w| w.contains("epoll"))
    }
}
