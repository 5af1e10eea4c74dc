//! The clock of the connection sweep (idle and frame timeouts, [`ConnectionLimits`]): a periodic
//! `timerfd`, armed once, that the event loops wait on beside their sockets.
//!
//! A loop that instead blocks with a timeout of its own (`epoll_wait` with a finite timeout,
//! `io_uring_enter` with a timespec) arms and cancels a kernel timer every time it blocks, twice
//! per worker-mode invocation; on a virtual machine that is a timer reprogramming each time, and
//! it made a worker-mode round trip with client and server on one CPU 3-6 % slower. With the
//! timer armed once, the loops block without a timeout (as before the sweep existed) and wake
//! once per [`ConnectionLimits::sweep_interval`].
//!
//! [`ConnectionLimits`]: praas_runtime::connection::ConnectionLimits
//! [`ConnectionLimits::sweep_interval`]: praas_runtime::connection::ConnectionLimits::sweep_interval

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A periodic timer whose descriptor turns readable at every period.
#[derive(Debug)]
pub struct SweepTimer {
    fd: OwnedFd,
}

/// How the timer's descriptor is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Non-blocking: a read with no period elapsed fails with `WouldBlock` (readiness loops).
    NonBlocking,
    /// Blocking: a read waits for the next period (io_uring, which then waits in the kernel; it
    /// would complete a read of a non-blocking descriptor at once with `EAGAIN`).
    Blocking,
}

impl SweepTimer {
    /// A timer that fires every `period` (at least 1 ms), the first time one period from now.
    pub fn periodic(period: Duration, reads: Reads) -> io::Result<Self> {
        let mut flags = libc::TFD_CLOEXEC;
        if reads == Reads::NonBlocking {
            flags |= libc::TFD_NONBLOCK;
        }
        // SAFETY: timerfd_create takes no pointers; the result is checked before use.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor timerfd_create just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let period = timespec(period.max(Duration::from_millis(1)));
        let spec = libc::itimerspec { it_interval: period, it_value: period };
        // SAFETY: `fd` is a live timerfd; `spec` is a valid itimerspec read during the call, and
        // a null old value is allowed.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Takes the periods elapsed since the last call (0 if none, on a non-blocking timer),
    /// making the descriptor unreadable until the next one.
    pub fn take(&self) -> u64 {
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into a live local u64.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut expirations as *mut u64).cast(), 8) };
        if n == 8 {
            expirations
        } else {
            0
        }
    }
}

impl AsFd for SweepTimer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SweepTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn timespec(d: Duration) -> libc::timespec {
    // Seconds of a sweep period (at most a second) and nanoseconds below 10^9 fit both fields.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_non_blocking_timer_has_nothing_before_its_period_and_counts_the_periods_after() {
        let timer = SweepTimer::periodic(Duration::from_millis(20), Reads::NonBlocking).unwrap();
        let started = Instant::now();
        assert_eq!(timer.take(), 0, "no period has elapsed yet");
        let mut fds = [libc::pollfd { fd: timer.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: polls one live pollfd of a live local array for at most 5 s.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) };
        assert_eq!(ready, 1, "the descriptor turns readable at the first period");
        assert!(started.elapsed() >= Duration::from_millis(19), "not before its period");
        assert!(timer.take() >= 1);
        assert_eq!(timer.take(), 0, "taking the periods makes it unreadable again");
    }

    #[test]
    fn a_blocking_timer_waits_for_its_period() {
        let timer = SweepTimer::periodic(Duration::from_millis(10), Reads::Blocking).unwrap();
        let started = Instant::now();
        assert!(timer.take() >= 1);
        assert!(started.elapsed() >= Duration::from_millis(9));
    }
}
