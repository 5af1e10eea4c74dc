//! Per-function statistics: invocations, errors by status, and a latency histogram, recorded on
//! the invocation path without a lock or an allocation and merged when read.
//!
//! Every [`Function`](crate::function::Function) carries its [`FunctionStats`]. The dispatcher
//! records each finished invocation once ([`FunctionStats::record`], from
//! `invocation::Dispatcher`), whatever the transport: a few relaxed atomic additions into one of
//! [`SHARDS`] shards, picked by the recording thread, so that the I/O thread and the workers do
//! not write the same cache lines. Readers ([`FunctionStats::snapshot`]) add the shards up.
//!
//! Latencies go into log-linear buckets: exact below 16 ns, then 16 buckets per power of two
//! (a bucket is at most 1/16 of its lower bound wide), up to 2^40 ns (18 minutes); longer
//! latencies land in the last bucket. [`Histogram::quantile`] answers with a bucket's midpoint.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use praas_wire::protocol::Status;

/// Shards of a function's counters (threads pick one by a per-thread index).
pub const SHARDS: usize = 4;
/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Latencies of 2^MAX_EXP ns and more land in the last bucket.
const MAX_EXP: u32 = 40;
/// Buckets of one histogram.
pub const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS) as usize * SUB;
/// Status codes counted apart (every code the wire defines fits).
const STATUSES: usize = 16;

/// The bucket of a latency of `ns` nanoseconds.
#[inline]
pub fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        // Below 16: the value's own bucket.
        #[allow(clippy::cast_possible_truncation)]
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    // Exponent below 40 and the sub-bucket below 16: the index fits.
    #[allow(clippy::cast_possible_truncation)]
    let sub = ((ns >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (exp - SUB_BITS) as usize * SUB + sub
}

/// The smallest latency (ns) bucket `index` holds, and the first the next one holds.
pub fn bucket_bounds(index: usize) -> (u64, u64) {
    if index < SUB {
        return (index as u64, index as u64 + 1);
    }
    let (octave, sub) = ((index - SUB) / SUB, (index - SUB) % SUB);
    // Below BUCKETS / SUB (37): fits.
    #[allow(clippy::cast_possible_truncation)]
    let exp = octave as u32 + SUB_BITS;
    let width = 1u64 << (exp - SUB_BITS);
    let low = (1u64 << exp) + sub as u64 * width;
    (low, low + width)
}

thread_local! {
    /// This thread's shard, picked round-robin at its first invocation.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

#[inline]
fn shard() -> usize {
    SHARD.with(|shard| {
        let index = shard.get();
        if index != usize::MAX {
            return index;
        }
        let index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
        shard.set(index);
        index
    })
}

/// One shard: what the threads that picked it recorded.
#[repr(align(64))]
struct Shard {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

/// The statistics of one function since its process started.
pub struct FunctionStats {
    shards: Box<[Shard; SHARDS]>,
    /// Invocations that failed, by status code (the last counts codes past the table).
    errors: [AtomicU64; STATUSES],
    max_ns: AtomicU64,
    /// The longest latency since [`FunctionStats::take_interval_max`] last ran.
    interval_max_ns: AtomicU64,
    /// Messages its invocations put (acknowledged) and got.
    messages_put: AtomicU64,
    messages_got: AtomicU64,
}

impl std::fmt::Debug for FunctionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionStats").field("max_ns", &self.max_ns.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Default for FunctionStats {
    fn default() -> Self {
        Self::new()
    }
}

impl FunctionStats {
    /// No invocation yet.
    pub fn new() -> Self {
        Self {
            shards: Box::new(std::array::from_fn(|_| Shard::new())),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            max_ns: AtomicU64::new(0),
            interval_max_ns: AtomicU64::new(0),
            messages_put: AtomicU64::new(0),
            messages_got: AtomicU64::new(0),
        }
    }

    /// Counts a message one of its invocations put (and the destination acknowledged).
    pub fn record_message_put(&self) {
        self.messages_put.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message one of its invocations got.
    pub fn record_message_got(&self) {
        self.messages_got.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one invocation that took `ns` nanoseconds and ended with `status`.
    #[inline]
    pub fn record(&self, ns: u64, status: Status) {
        let shard = &self.shards[shard()];
        shard.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
        if ns > self.interval_max_ns.load(Ordering::Relaxed) {
            self.interval_max_ns.fetch_max(ns, Ordering::Relaxed);
            if ns > self.max_ns.load(Ordering::Relaxed) {
                self.max_ns.fetch_max(ns, Ordering::Relaxed);
            }
        }
        if status != Status::Ok {
            self.record_error(status);
        }
    }

    /// Counts one invocation refused before it ran (no latency): `Overloaded`, a drain.
    #[cold]
    pub fn record_error(&self, status: Status) {
        let code = usize::from(status.code()).min(STATUSES - 1);
        self.errors[code].fetch_add(1, Ordering::Relaxed);
    }

    /// The longest latency since the previous call (or the start), and a new interval begun. One
    /// reader (the process's report to its control plane) takes it.
    pub fn take_interval_max(&self) -> u64 {
        self.interval_max_ns.swap(0, Ordering::Relaxed)
    }

    /// Everything recorded so far, the shards added up.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut buckets = vec![0u64; BUCKETS];
        let mut sum_ns = 0u64;
        for shard in self.shards.iter() {
            for (total, bucket) in buckets.iter_mut().zip(shard.buckets.iter()) {
                *total += bucket.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(shard.sum_ns.load(Ordering::Relaxed));
        }
        let errors = self
            .errors
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = n.load(Ordering::Relaxed);
                // At most 15: fits.
                #[allow(clippy::cast_possible_truncation)]
                (n > 0).then(|| (Status::from_code(code as u16), n))
            })
            .collect();
        let max_ns = self.max_ns.load(Ordering::Relaxed);
        StatsSnapshot {
            latency: Histogram::from_dense(&buckets, sum_ns, max_ns),
            errors,
            messages_put: self.messages_put.load(Ordering::Relaxed),
            messages_got: self.messages_got.load(Ordering::Relaxed),
        }
    }
}

/// A latency histogram with its non-empty buckets only (what the control channel carries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// (bucket index, invocations) of the non-empty buckets, by index.
    pub buckets: Vec<(u16, u64)>,
    /// Sum of the latencies, ns.
    pub sum_ns: u64,
    /// The longest latency, ns (over the histogram's span: since start, or one interval).
    pub max_ns: u64,
}

impl Histogram {
    fn from_dense(dense: &[u64], sum_ns: u64, max_ns: u64) -> Self {
        let buckets = dense
            .iter()
            .enumerate()
            // BUCKETS is below 2^16.
            .filter_map(|(index, &n)| {
                #[allow(clippy::cast_possible_truncation)]
                (n > 0).then_some((index as u16, n))
            })
            .collect();
        Self { buckets, sum_ns, max_ns }
    }

    /// Invocations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, n)| n).sum()
    }

    /// The latency (ns) below which a fraction `q` (0 to 1) of the invocations fell: the
    /// midpoint of the bucket it lies in (capped by the maximum; the maximum itself for the last
    /// invocation); 0 for an empty histogram.
    pub fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        // The rank of the quantile, 1-based: ceil(q * count), at least 1.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        if rank >= count && self.max_ns > 0 {
            // The last invocation's latency is known exactly.
            return self.max_ns;
        }
        let mut seen = 0;
        for &(index, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                let (low, high) = bucket_bounds(usize::from(index));
                let mid = low + (high - low) / 2;
                return if self.max_ns > 0 { mid.min(self.max_ns) } else { mid };
            }
        }
        self.max_ns
    }

    /// What `self` counted beyond `earlier` (an earlier reading of the same histogram); the
    /// maximum is `self`'s, which the caller replaces by an interval's own where it has one.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut before = earlier.buckets.iter().peekable();
        let mut buckets = Vec::new();
        for &(index, n) in &self.buckets {
            while before.next_if(|&&(i, _)| i < index).is_some() {}
            let old = before.next_if(|&&(i, _)| i == index).map_or(0, |&(_, n)| n);
            if n > old {
                buckets.push((index, n - old));
            }
        }
        Histogram { buckets, sum_ns: self.sum_ns.wrapping_sub(earlier.sum_ns), max_ns: self.max_ns }
    }

    /// Adds `other`'s counts into `self` (the maximum is the larger).
    pub fn add(&mut self, other: &Histogram) {
        let mut merged = Vec::with_capacity(self.buckets.len() + other.buckets.len());
        let (mut a, mut b) = (self.buckets.iter().peekable(), other.buckets.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(i, n)), Some(&&(j, m))) if i == j => {
                    merged.push((i, n + m));
                    a.next();
                    b.next();
                }
                (Some(&&(i, n)), Some(&&(j, _))) if i < j => {
                    merged.push((i, n));
                    a.next();
                }
                (_, Some(&&(j, m))) => {
                    merged.push((j, m));
                    b.next();
                }
                (Some(&&(i, n)), None) => {
                    merged.push((i, n));
                    a.next();
                }
                (None, None) => break,
            }
        }
        self.buckets = merged;
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }
}

/// A function's statistics at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Latencies of the invocations that ran (every invocation that ran, failed or not).
    pub latency: Histogram,
    /// Failed invocations by status, those refused before running included.
    pub errors: Vec<(Status, u64)>,
    /// Messages its invocations put (acknowledged).
    pub messages_put: u64,
    /// Messages its invocations got.
    pub messages_got: u64,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn buckets_are_exact_below_sixteen_and_sixteen_per_octave_above() {
        for index in 0..16usize {
            let ns = index as u64;
            assert_eq!(bucket(ns), index);
            assert_eq!(bucket_bounds(index), (ns, ns + 1));
        }
        assert_eq!(bucket(16), 16);
        assert_eq!(bucket(17), 17);
        assert_eq!(bucket(31), 31);
        assert_eq!(bucket(32), 32);
        assert_eq!(bucket(33), 32);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(1 << 40), BUCKETS - 1);
        assert_eq!(bucket((1 << 40) - 1), BUCKETS - 1);
    }

    proptest! {
        #[test]
        fn every_latency_lies_in_its_buckets_bounds(ns in 0u64..(1 << 40)) {
            let (low, high) = bucket_bounds(bucket(ns));
            prop_assert!(low <= ns && ns < high, "{ns} not in [{low}, {high})");
            // At most 1/16 of the bucket's floor wide, above the exact range.
            prop_assert!(high - low <= (low / 16).max(1));
        }

        #[test]
        fn since_undoes_add(a in proptest::collection::vec(0u64..1_000_000_000, 0..64),
                            b in proptest::collection::vec(0u64..1_000_000_000, 0..64)) {
            let stats = FunctionStats::new();
            for &ns in &a { stats.record(ns, Status::Ok); }
            let first = stats.snapshot().latency;
            for &ns in &b { stats.record(ns, Status::Ok); }
            let second = stats.snapshot().latency;
            let delta = second.since(&first);
            prop_assert_eq!(delta.count(), b.len() as u64);
            let mut sum = first.clone();
            sum.add(&delta);
            prop_assert_eq!(sum.buckets, second.buckets);
            prop_assert_eq!(sum.sum_ns, second.sum_ns);
        }
    }

    #[test]
    fn quantiles_order_and_errors_count() {
        let stats = FunctionStats::new();
        for _ in 0..90 {
            stats.record(1_000, Status::Ok);
        }
        for _ in 0..9 {
            stats.record(1_000_000, Status::Ok);
        }
        stats.record(50_000_000, Status::FunctionFailed);
        stats.record_error(Status::Overloaded);
        let snapshot = stats.snapshot();
        let latency = &snapshot.latency;
        assert_eq!(latency.count(), 100);
        let (p50, p99, max) = (latency.quantile(0.5), latency.quantile(0.99), latency.max_ns);
        assert!((960..=1_040).contains(&p50), "p50 {p50}");
        assert!((960_000..=1_040_000).contains(&p99), "p99 {p99}");
        assert_eq!(max, 50_000_000);
        assert_eq!(latency.quantile(1.0), 50_000_000);
        assert_eq!(snapshot.errors, vec![(Status::FunctionFailed, 1), (Status::Overloaded, 1)]);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn threads_record_into_their_shards_and_nothing_is_lost() {
        let stats = std::sync::Arc::new(FunctionStats::new());
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let stats = std::sync::Arc::clone(&stats);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        stats.record(i * (t + 1), Status::Ok);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.latency.count(), 60_000);
        assert_eq!(snapshot.latency.max_ns, 9_999 * 6);
        assert!(snapshot.errors.is_empty());
    }
}
