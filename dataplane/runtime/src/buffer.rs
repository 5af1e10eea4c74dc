//! The buffer pool: every payload the runtime receives or produces lives in a [`PoolBuf`].
//!
//! Buffers come in power-of-two size classes from 4 KiB up. A dropped buffer goes back to its
//! class's free list, so a steady stream of invocations allocates nothing and the same memory is
//! reused: a transport that must register memory with the kernel or a NIC (io_uring fixed buffers,
//! RDMA memory regions) registers a buffer once, keyed by [`PoolBuf::id`], and finds it
//! registered again when the buffer comes back. The id, unlike the address, is never reused: memory
//! the pool gave back to the allocator and a later allocation at the same address have different
//! ids, so a cached registration can never describe pages that are gone.
//!
//! The pool has a byte budget: [`BufferPool::get`] refuses (returns `None`) when the bytes handed
//! out would exceed it, and the transports answer that with back-pressure (they stop reading) rather
//! than by failing or growing without bound. A transport that waits for buffers asks to be told
//! when one comes back ([`BufferPool::on_release`], [`BufferPool::want`]) instead of polling.
//!
//! After a burst (a flood of connections that ended), [`BufferPool::trim`] gives the free buffers
//! beyond a small floor back to the allocator, and the allocator's free memory back to the system.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam::queue::ArrayQueue;

/// Smallest buffer handed out: 4 KiB.
pub const MIN_BUF: usize = 4 << 10;
/// Number of size classes: 4 KiB .. 4 GiB.
const CLASSES: usize = 21;
/// Free buffers kept per class before dropped ones are given back to the allocator.
const KEEP_PER_CLASS: usize = 256;
/// Bytes of free buffers kept per class: large classes keep fewer buffers.
const KEEP_BYTES_PER_CLASS: usize = 256 << 20;
/// Source of [`PoolBuf::id`]s: every allocation of buffer memory takes the next one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Default budget of bytes handed out at once.
pub const DEFAULT_BUDGET: usize = 4 << 30;

struct Inner {
    /// Free buffers per class, as many as [`kept_per_class`] allows (a full list refuses more).
    free: [ArrayQueue<(Box<[u8]>, u64)>; CLASSES],
    outstanding: AtomicUsize,
    budget: usize,
    /// Someone waits for a buffer to come back ([`BufferPool::want`]).
    wanted: std::sync::atomic::AtomicBool,
    /// Who to tell when one does; a waiter that answers false is gone and forgotten.
    waiters: Mutex<Vec<Waiter>>,
}

/// Told when a buffer comes back to a pool someone waits on; answers whether it still listens.
pub type Waiter = Box<dyn Fn() -> bool + Send + Sync>;

/// Free bytes each class keeps after [`BufferPool::trim`].
const TRIM_FLOOR_PER_CLASS: usize = 1 << 20;

/// A pool of reusable, registrable byte buffers; cheap to clone (shared).
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("outstanding", &self.inner.outstanding.load(Ordering::Relaxed))
            .field("budget", &self.inner.budget)
            .finish()
    }
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new(DEFAULT_BUDGET)
    }
}

/// The size class of `size` bytes; `CLASSES` or more for sizes no class holds.
fn class_of(size: usize) -> usize {
    match size.max(MIN_BUF).checked_next_power_of_two() {
        Some(rounded) => (rounded.trailing_zeros() - MIN_BUF.trailing_zeros()) as usize,
        None => usize::MAX,
    }
}

fn class_size(class: usize) -> usize {
    MIN_BUF << class
}

/// Free buffers kept in `class`: [`KEEP_PER_CLASS`], fewer where they would hold more than
/// [`KEEP_BYTES_PER_CLASS`], at least one.
fn kept_per_class(class: usize) -> usize {
    (KEEP_BYTES_PER_CLASS / class_size(class)).clamp(1, KEEP_PER_CLASS)
}

impl BufferPool {
    /// A pool that hands out at most `budget` bytes at once.
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                free: std::array::from_fn(|class| ArrayQueue::new(kept_per_class(class))),
                outstanding: AtomicUsize::new(0),
                budget,
                wanted: std::sync::atomic::AtomicBool::new(false),
                waiters: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A buffer with room for at least `capacity` bytes and length 0, or `None` when handing it
    /// out would exceed the budget (the caller applies back-pressure and retries later).
    pub fn get(&self, capacity: usize) -> Option<PoolBuf> {
        let class = class_of(capacity);
        if class >= CLASSES {
            return None;
        }
        let size = class_size(class);
        let mut current = self.inner.outstanding.load(Ordering::Relaxed);
        loop {
            if current + size > self.inner.budget {
                return None;
            }
            match self.inner.outstanding.compare_exchange_weak(
                current,
                current + size,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        let (memory, id) = self.inner.free[class]
            .pop()
            .unwrap_or_else(|| (vec![0u8; size].into_boxed_slice(), NEXT_ID.fetch_add(1, Ordering::Relaxed)));
        Some(PoolBuf { memory, id, len: 0, pool: Arc::clone(&self.inner) })
    }

    /// A buffer of no memory (capacity 0) that costs nothing: what a connection holds while it
    /// has nothing to read into yet.
    pub fn empty(&self) -> PoolBuf {
        PoolBuf { memory: Box::default(), id: 0, len: 0, pool: Arc::clone(&self.inner) }
    }

    /// Registers `waiter`, told (from the thread that drops it) when a buffer comes back after a
    /// [`BufferPool::want`]; it answers false once it no longer listens.
    pub fn on_release(&self, waiter: Waiter) {
        self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()).push(waiter);
    }

    /// Asks that the waiters be told when the next buffer comes back (a `get` came back `None`).
    pub fn want(&self) {
        self.inner.wanted.store(true, Ordering::Release);
    }

    /// Gives the free buffers beyond a floor (1 MiB per size class) back to the allocator, and the
    /// allocator's free memory back to the system; returns the bytes of buffers freed.
    pub fn trim(&self) -> usize {
        let mut freed = 0;
        for (class, queue) in self.inner.free.iter().enumerate() {
            let keep = (TRIM_FLOOR_PER_CLASS / class_size(class)).max(1);
            while queue.len() > keep {
                match queue.pop() {
                    Some((memory, _)) => freed += memory.len(),
                    None => break,
                }
            }
        }
        release_free_memory();
        freed
    }

    /// Bytes currently handed out.
    pub fn outstanding(&self) -> usize {
        self.inner.outstanding.load(Ordering::Relaxed)
    }

    /// The budget this pool was made with.
    pub fn budget(&self) -> usize {
        self.inner.budget
    }
}

/// A buffer from a [`BufferPool`]: `capacity()` bytes of memory of which the first `len()` hold
/// data. Returns to the pool when dropped.
pub struct PoolBuf {
    memory: Box<[u8]>,
    id: u64,
    len: usize,
    pool: Arc<Inner>,
}

impl fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuf").field("len", &self.len).field("capacity", &self.memory.len()).finish()
    }
}

impl PoolBuf {
    /// Bytes of data.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory.
    pub fn capacity(&self) -> usize {
        self.memory.len()
    }

    /// Sets the length of the data; panics if beyond the capacity (a runtime bug).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.memory.len(), "PoolBuf::set_len({len}) beyond capacity {}", self.memory.len());
        self.len = len;
    }

    /// All of the memory, for filling (the data is the first `len()` bytes).
    pub fn memory_mut(&mut self) -> &mut [u8] {
        &mut self.memory
    }

    /// The memory after the data, for appending; follow with [`PoolBuf::set_len`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        &mut self.memory[self.len..]
    }

    /// Appends `bytes`; returns false (and appends nothing) if they do not fit.
    pub fn try_extend(&mut self, bytes: &[u8]) -> bool {
        let Some(dest) = self.memory.get_mut(self.len..self.len + bytes.len()) else {
            return false;
        };
        dest.copy_from_slice(bytes);
        self.len += bytes.len();
        true
    }

    /// The data, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.memory[..self.len]
    }

    /// Start address and length of the buffer's memory (what a registration covers).
    pub fn region(&self) -> (usize, usize) {
        (self.memory.as_ptr() as usize, self.memory.len())
    }

    /// The identity of the buffer's memory: the same across its trips through the pool, never
    /// given to other memory (not even at the same address after the pool freed it). The key
    /// under which a transport caches the registration of this memory.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Deref for PoolBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.memory[..self.len]
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        let size = self.memory.len();
        if size == 0 {
            // An empty buffer ([`BufferPool::empty`]): nothing was handed out.
            return;
        }
        self.pool.outstanding.fetch_sub(size, Ordering::AcqRel);
        let class = class_of(size);
        let queue = &self.pool.free[class];
        // A full free list refuses the buffer, which then goes back to the allocator.
        let _ = queue.push((std::mem::take(&mut self.memory), self.id));
        if self.pool.wanted.load(Ordering::Relaxed) && self.pool.wanted.swap(false, Ordering::AcqRel) {
            let mut waiters = self.pool.waiters.lock().unwrap_or_else(|p| p.into_inner());
            waiters.retain(|waiter| waiter());
        }
    }
}

/// Gives the allocator's free memory back to the system (glibc keeps freed small blocks, and
/// the pages between them, until told).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists (under its locks) and
    // returns unused pages to the kernel; it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes of a shared [`PoolBuf`]: how a frame received into a transport's read buffer reaches a
/// function on another thread without being copied. Cheap to clone.
#[derive(Clone)]
pub struct Payload {
    buf: Arc<PoolBuf>,
    range: Range<usize>,
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload").field("len", &self.range.len()).finish()
    }
}

impl Payload {
    /// The bytes `range` of `buf` (within its data).
    pub fn new(buf: Arc<PoolBuf>, range: Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= buf.len(), "payload range outside the buffer's data");
        Self { buf, range }
    }

    /// All the data of `buf`.
    pub fn whole(buf: PoolBuf) -> Self {
        let range = 0..buf.len();
        Self { buf: Arc::new(buf), range }
    }

    /// A sub-range of this payload.
    pub fn slice(&self, range: Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= self.range.len(), "slice outside the payload");
        Self { buf: Arc::clone(&self.buf), range: self.range.start + range.start..self.range.start + range.end }
    }

    /// A frame body's two parts: its first `meta_len` bytes (the metadata) and the rest, as a
    /// payload of its own sharing the buffer.
    pub fn split_meta(&self, meta_len: usize) -> (&[u8], Payload) {
        (&self[..meta_len], self.slice(meta_len..self.len()))
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_accounted() {
        let pool = BufferPool::new(64 << 10);
        let mut a = pool.get(100).unwrap();
        assert_eq!(a.capacity(), MIN_BUF);
        assert!(a.try_extend(b"hello"));
        let region = a.region();
        assert_eq!(pool.outstanding(), MIN_BUF);
        drop(a);
        assert_eq!(pool.outstanding(), 0);
        let b = pool.get(MIN_BUF).unwrap();
        assert_eq!(b.region(), region, "a freed buffer is handed out again");
        assert!(b.is_empty());
        let id = b.id();
        drop(b);
        assert_eq!(pool.get(1).unwrap().id(), id, "with the same id");
    }

    #[test]
    fn memory_given_back_to_the_allocator_never_shares_an_id() {
        let pool = BufferPool::new(1 << 30);
        // More buffers of one class than the pool keeps: the surplus goes back to the allocator,
        // and new allocations (possibly at the same addresses) must not inherit their ids.
        let held: Vec<PoolBuf> = (0..KEEP_PER_CLASS + 8).map(|_| pool.get(1).unwrap()).collect();
        let ids: std::collections::HashSet<u64> = held.iter().map(PoolBuf::id).collect();
        assert_eq!(ids.len(), held.len(), "ids are unique");
        drop(held);
        let fresh: Vec<PoolBuf> = (0..KEEP_PER_CLASS + 8).map(|_| pool.get(1).unwrap()).collect();
        let reused = fresh.iter().filter(|b| ids.contains(&b.id())).count();
        assert_eq!(reused, KEEP_PER_CLASS, "only the kept buffers come back with their ids");
    }

    #[test]
    fn large_classes_keep_fewer_buffers_but_at_least_one() {
        assert_eq!(kept_per_class(class_of(MIN_BUF)), KEEP_PER_CLASS);
        assert_eq!(kept_per_class(class_of(1 << 20)), KEEP_PER_CLASS);
        assert_eq!(kept_per_class(class_of(64 << 20)), 4);
        assert_eq!(kept_per_class(class_of(256 << 20)), 1);
        assert_eq!(kept_per_class(CLASSES - 1), 1);
        // A kept 64 MiB buffer comes back; the fifth of five dropped at once does not.
        let pool = BufferPool::new(1 << 30);
        let held: Vec<PoolBuf> = (0..5).map(|_| pool.get(64 << 20).unwrap()).collect();
        let ids: Vec<u64> = held.iter().map(PoolBuf::id).collect();
        drop(held);
        let again: Vec<PoolBuf> = (0..5).map(|_| pool.get(64 << 20).unwrap()).collect();
        assert_eq!(again.iter().filter(|b| ids.contains(&b.id())).count(), 4);
    }

    #[test]
    fn budget_gives_back_pressure() {
        let pool = BufferPool::new(3 * MIN_BUF);
        let a = pool.get(MIN_BUF + 1).unwrap();
        assert_eq!(a.capacity(), 2 * MIN_BUF);
        let b = pool.get(1).unwrap();
        assert!(pool.get(1).is_none(), "over budget");
        drop(b);
        assert!(pool.get(1).is_some());
        drop(a);
        assert!(pool.get(usize::MAX).is_none(), "beyond the largest class");
    }

    #[test]
    fn an_empty_buffer_costs_nothing_and_trim_keeps_a_floor() {
        let pool = BufferPool::new(1 << 30);
        let empty = pool.empty();
        assert_eq!((empty.capacity(), pool.outstanding()), (0, 0));
        drop(empty);
        assert_eq!(pool.outstanding(), 0);
        assert!(pool.get(1).is_some_and(|b| b.capacity() == MIN_BUF), "no empty buffer was kept");
        // A burst of 4 KiB buffers: the free list keeps 256 of them, the trim 1 MiB's worth.
        let burst: Vec<PoolBuf> = (0..300).map(|_| pool.get(1).unwrap()).collect();
        drop(burst);
        assert_eq!(pool.inner.free[0].len(), KEEP_PER_CLASS);
        assert_eq!(pool.trim(), (KEEP_PER_CLASS - (1 << 20) / MIN_BUF) * MIN_BUF);
        assert_eq!(pool.inner.free[0].len(), (1 << 20) / MIN_BUF);
    }

    #[test]
    fn a_waiter_is_told_once_when_a_buffer_comes_back_after_it_asked() {
        let pool = BufferPool::new(MIN_BUF);
        let told = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&told);
        pool.on_release(Box::new(move || {
            seen.fetch_add(1, Ordering::Relaxed);
            true
        }));
        let held = pool.get(1).unwrap();
        assert_eq!(told.load(Ordering::Relaxed), 0, "nobody asked yet");
        assert!(pool.get(1).is_none());
        pool.want();
        drop(held);
        assert_eq!(told.load(Ordering::Relaxed), 1);
        drop(pool.get(1).unwrap());
        assert_eq!(told.load(Ordering::Relaxed), 1, "told once per want");
        // A waiter that answers false is forgotten.
        let gone = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&gone);
        pool.on_release(Box::new(move || count.fetch_add(1, Ordering::Relaxed) > 100));
        pool.want();
        drop(pool.get(1).unwrap());
        pool.want();
        drop(pool.get(1).unwrap());
        assert_eq!(gone.load(Ordering::Relaxed), 1);
        assert_eq!(told.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn payload_slices_share_the_buffer() {
        let pool = BufferPool::new(1 << 20);
        let mut buf = pool.get(16).unwrap();
        assert!(buf.try_extend(b"0123456789"));
        assert!(!buf.try_extend(&vec![0; MIN_BUF]));
        let payload = Payload::new(Arc::new(buf), 2..8);
        assert_eq!(&*payload, b"234567");
        assert_eq!(&*payload.slice(1..3), b"34");
        drop(payload);
        assert_eq!(pool.outstanding(), 0);
    }
}
