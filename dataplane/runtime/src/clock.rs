//! The invocation path's clock: the CPU's time-stamp counter where the kernel itself keeps time
//! with it, else the monotonic clock.
//!
//! An inline invocation reads the clock twice (when it arrives and when its function returns:
//! its deadline and the process's metrics). Through the vDSO a read costs 20-30 ns natively and
//! 280 ns in the SoftRoCE test VM; `rdtsc` costs 7 and 16 ns. The counter is used only where the
//! kernel's clocksource is `tsc`: the kernel has then checked that it runs at a constant rate and
//! is synchronised across CPUs (its own `CLOCK_MONOTONIC` is derived from it). Elsewhere, and off
//! x86-64, a [`Tick`] is a monotonic-clock reading.
//!
//! The counter's rate is calibrated once per OS process against the monotonic clock (5 ms, on
//! the first call, which [`calibrate`] makes early): its error, about 1e-4, is what a duration
//! measured here may be off by.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the counter is calibrated against the monotonic clock.
const CALIBRATION: Duration = Duration::from_millis(5);

/// A point in time on the invocation path's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u64);

#[derive(Debug)]
struct Clock {
    /// Nanoseconds per counter tick; `None`: ticks are nanoseconds since `anchor`.
    ns_per_tick: Option<f64>,
    anchor: Instant,
}

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let anchor = Instant::now();
        Clock { ns_per_tick: counter::usable().then(|| counter::calibrate(CALIBRATION)).flatten(), anchor }
    })
}

/// Sets the clock up now (a process does at its start), not at the first invocation.
pub fn calibrate() {
    clock();
}

impl Tick {
    /// The current time.
    #[inline]
    pub fn now() -> Tick {
        let clock = clock();
        match clock.ns_per_tick {
            Some(_) => Tick(counter::read()),
            // Saturates after 584 years of the process: never, and free (one compare).
            None => Tick(u64::try_from(clock.anchor.elapsed().as_nanos()).unwrap_or(u64::MAX)),
        }
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    #[inline]
    pub fn duration_since(self, earlier: Tick) -> Duration {
        let ticks = self.0.saturating_sub(earlier.0);
        match clock().ns_per_tick {
            Some(ns) => {
                // A float-to-integer `as` saturates (it cannot wrap): the product of a tick count
                // and a rate of 0.01 to 100 ns is a finite non-negative number of nanoseconds.
                #[allow(clippy::cast_possible_truncation)]
                let nanos = (ticks as f64 * ns) as u64;
                Duration::from_nanos(nanos)
            }
            None => Duration::from_nanos(ticks),
        }
    }

    /// Time since `self`.
    pub fn elapsed(self) -> Duration {
        Tick::now().duration_since(self)
    }

    /// `self` on the monotonic clock (reads it once).
    pub fn to_instant(self) -> Instant {
        let now = Instant::now();
        now.checked_sub(self.elapsed()).unwrap_or(now)
    }

    /// The raw value, for storing in an atomic; [`Tick::from_raw`] turns it back.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The tick whose [`Tick::raw`] is `raw`.
    pub fn from_raw(raw: u64) -> Tick {
        Tick(raw)
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod counter {
    use std::time::{Duration, Instant};

    /// Whether the kernel keeps time with the time-stamp counter.
    pub fn usable() -> bool {
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .is_ok_and(|source| source.trim() == "tsc")
    }

    #[inline]
    pub fn read() -> u64 {
        // SAFETY: `rdtsc` has no preconditions; it is part of x86-64's baseline.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// One counter reading and the monotonic time it was taken at: the reading bracketed by two
    /// clock reads, the tightest bracket of a few tries (a thread preempted between the two reads
    /// of a pair would otherwise skew the rate by the time it was away: 50 us over the 5 ms
    /// window is 1%, seen on a loaded 2-core host).
    fn sample() -> (Instant, u64) {
        let mut best: Option<(Duration, Instant, u64)> = None;
        for _ in 0..16 {
            let before = Instant::now();
            let ticks = read();
            let after = Instant::now();
            let gap = after.duration_since(before);
            match best {
                Some((tightest, _, _)) if tightest <= gap => {}
                _ => best = Some((gap, before + gap / 2, ticks)),
            }
        }
        let (_, at, ticks) = best.expect("sixteen tries");
        (at, ticks)
    }

    /// Nanoseconds per tick over `window`, if the counter ran at a plausible rate (10 MHz to
    /// 100 GHz).
    pub fn calibrate(window: Duration) -> Option<f64> {
        let (start, start_ticks) = sample();
        while start.elapsed() < window {
            std::hint::spin_loop();
        }
        let (end, end_ticks) = sample();
        let ticks = end_ticks.checked_sub(start_ticks)?;
        let ns_per_tick = end.duration_since(start).as_nanos() as f64 / ticks as f64;
        (0.01..100.0).contains(&ns_per_tick).then_some(ns_per_tick)
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod counter {
    use std::time::Duration;

    pub fn usable() -> bool {
        false
    }

    pub fn read() -> u64 {
        0
    }

    pub fn calibrate(_window: Duration) -> Option<f64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_measure_what_the_monotonic_clock_measures() {
        calibrate();
        let (start, tick) = (Instant::now(), Tick::now());
        std::thread::sleep(Duration::from_millis(50));
        let (by_tick, by_instant) = (tick.elapsed(), start.elapsed());
        // The tick is read after the instant and its elapsed time before: it can only be shorter,
        // by the calibration's error (1e-4) and the reads in between.
        assert!(by_tick <= by_instant + Duration::from_micros(50), "{by_tick:?} vs {by_instant:?}");
        assert!(by_tick + Duration::from_millis(2) >= by_instant, "{by_tick:?} vs {by_instant:?}");
        assert!(by_tick >= Duration::from_millis(49));
    }

    #[test]
    fn ticks_are_ordered_and_round_trip_through_raw() {
        let a = Tick::now();
        let b = Tick::now();
        assert!(b >= a);
        assert_eq!(a.duration_since(b), Duration::ZERO, "a later start gives zero, not a wrap");
        assert_eq!(Tick::from_raw(a.raw()), a);
        let instant = a.to_instant();
        assert!(instant <= Instant::now());
    }
}
