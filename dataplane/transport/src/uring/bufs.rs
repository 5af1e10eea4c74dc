//! Receive buffers: a provided-buffer ring per connection, filled with buffers of the process's
//! pool, that multishot receives fill in the order the kernel picks them.
//!
//! The ring memory (`entries` × 16-byte descriptors, page-aligned) is shared with the kernel: the
//! kernel consumes descriptors from the head, the transport publishes new ones at the tail. Each
//! descriptor names a buffer id (`bid`); the [`PoolBuf`] behind each id is owned here while the
//! kernel may write into it and handed out ([`BufRing::take`]) when a completion names it.
//!
//! Buffers travel in the `Arc` that payloads share them through: a buffer whose payloads are all
//! gone is provided again in the same `Arc`, so a receive allocates nothing.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use praas_runtime::buffer::PoolBuf;

/// Alignment the kernel requires of a buffer ring's memory.
const PAGE: usize = 4096;

/// A provided-buffer ring and the pool buffers currently provided through it.
pub struct BufRing {
    ring: NonNull<BufRingEntry>,
    layout: Layout,
    entries: u16,
    /// Our copy of the tail: descriptors published so far (wrapping).
    tail: u16,
    /// The buffer behind each id while the kernel may fill it (never shared meanwhile).
    slots: Vec<Option<Arc<PoolBuf>>>,
    /// The buffer group id while registered.
    bgid: Option<u16>,
}

// SAFETY: the ring memory is owned by this value (allocated in `new`, freed in `drop`) and only
// accessed through `&mut self`; the kernel side synchronises through the tail's atomic store.
unsafe impl Send for BufRing {}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing").field("entries", &self.entries).field("provided", &self.provided()).finish()
    }
}

impl BufRing {
    /// Ring memory for `entries` buffers (a power of two, at most 32768); nothing provided yet.
    pub fn new(entries: u16) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 1 << 15 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "buffer ring entries: a power of two <= 32768"));
        }
        let size = (entries as usize * std::mem::size_of::<BufRingEntry>()).max(PAGE);
        let layout = Layout::from_size_align(size, PAGE).map_err(io::Error::other)?;
        // SAFETY: `layout` has a non-zero size.
        let memory = unsafe { alloc::alloc_zeroed(layout) };
        let ring =
            NonNull::new(memory.cast::<BufRingEntry>()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Self { ring, layout, entries, tail: 0, slots: (0..entries).map(|_| None).collect(), bgid: None })
    }

    /// Registers the ring with `ring` as buffer group `bgid`.
    pub fn register(&mut self, ring: &IoUring, bgid: u16) -> io::Result<()> {
        // SAFETY: the memory holds `entries` descriptors and stays allocated until `drop`, which
        // the owner calls only after `unregister` (the connection keeps both until its last
        // operation completed, and unregisters before dropping).
        unsafe { ring.submitter().register_buf_ring_with_flags(self.ring.as_ptr() as u64, self.entries, bgid, 0)? };
        self.bgid = Some(bgid);
        Ok(())
    }

    /// Unregisters the ring; the buffers still provided are released by `drop`.
    pub fn unregister(&mut self, ring: &IoUring) {
        if let Some(bgid) = self.bgid.take() {
            let _ = ring.submitter().unregister_buf_ring(bgid);
        }
    }

    /// Buffers currently provided to the kernel.
    pub fn provided(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// An id with no buffer behind it, if any.
    pub fn empty_slot(&self) -> Option<u16> {
        // One slot per entry, at most 32768 of them: the conversion never fails.
        self.slots.iter().position(Option::is_none).and_then(|i| u16::try_from(i).ok())
    }

    /// Provides `buf` (its whole capacity) under the empty id `bid`; `buf` must not be shared.
    pub fn provide(&mut self, bid: u16, mut buf: Arc<PoolBuf>) {
        let slot = &mut self.slots[bid as usize];
        assert!(slot.is_none(), "buffer id {bid} provided twice");
        let unshared = Arc::get_mut(&mut buf).expect("a provided buffer is not shared");
        unshared.set_len(0);
        let (addr, len) = unshared.region();
        let index = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: `index < entries`, inside the ring memory. The kernel does not read this
        // descriptor before the tail store below publishes it, and it consumed the descriptor
        // that was here before (at most `entries` ids exist, each provided at most once).
        let entry = unsafe { &mut *self.ring.as_ptr().add(index) };
        entry.set_addr(addr as u64);
        entry.set_len(u32::try_from(len).unwrap_or(u32::MAX));
        entry.set_bid(bid);
        *slot = Some(buf);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail lives in the reserved field of the first descriptor, inside the ring
        // memory, 2-byte aligned; the kernel reads it with acquire ordering.
        let tail = unsafe { &*BufRingEntry::tail(self.ring.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// The buffer the kernel filled under `bid`, with `len` bytes of data.
    pub fn take(&mut self, bid: u16, len: usize) -> Option<Arc<PoolBuf>> {
        let mut buf = self.slots.get_mut(bid as usize)?.take()?;
        let unshared = Arc::get_mut(&mut buf).expect("a provided buffer is not shared");
        unshared.set_len(len.min(unshared.capacity()));
        Some(buf)
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.bgid.is_some() {
            // Still registered (an error path that lost the ring): the kernel may write into the
            // buffers, so leak them and the ring memory rather than free memory it can reach.
            tracing::error!("a provided-buffer ring dropped while registered: leaking its memory");
            for slot in &mut self.slots {
                std::mem::forget(slot.take());
            }
            return;
        }
        // SAFETY: allocated in `new` with this layout; no longer registered with a kernel ring.
        unsafe { alloc::dealloc(self.ring.as_ptr().cast(), self.layout) };
    }
}
