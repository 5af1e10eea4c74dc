//! Waiting for a condition with a deadline, in place of a sleep that hopes it holds by then.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Polls `condition` until it holds; panics, saying that `what` did not happen within `timeout`,
/// if it never does. The poll interval starts at 100 µs and doubles up to 10 ms, so a condition
/// that holds soon is seen soon.
#[track_caller]
pub fn wait_until(timeout: Duration, what: impl Display, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, what, || condition().then_some(()))
}

/// Polls `probe` until it returns a value, and returns that; panics, saying that `what` did not
/// happen within `timeout`, if it never does (polling as [`wait_until`] does).
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: impl Display, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        let waited = started.elapsed();
        assert!(waited < timeout, "waited {waited:?} (at most {timeout:?}) for {what}, in vain");
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}
