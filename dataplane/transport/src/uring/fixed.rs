//! Registered (fixed) buffers: pool buffers registered with one ring, so that a zero-copy send
//! of a large output pins no pages per send (`SEND_ZC` with a buffer index).
//!
//! The table is sparse and small ([`FixedBuffers::SLOTS`] entries, at most
//! [`FixedBuffers::MAX_BYTES`] registered). A buffer is found again by [`PoolBuf::id`], which
//! names its memory across trips through the pool and is never given to other memory; the least
//! recently used entry makes room for a new one. The kernel pins the pages of a registered range
//! and uses those pages, never the address, so an entry whose buffer the pool has since freed
//! only keeps its pages pinned until it is replaced; an index is only ever used for the buffer it
//! was registered for (looked up by id), while that buffer is alive.

use std::collections::HashMap;

use io_uring::IoUring;

use praas_runtime::buffer::PoolBuf;

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    bytes: usize,
    last_use: u64,
}

/// The registered-buffer table of one ring.
#[derive(Debug)]
pub(crate) struct FixedBuffers {
    entries: Vec<Option<Entry>>,
    max_bytes: usize,
    by_id: HashMap<u64, u16>,
    bytes: usize,
    tick: u64,
    /// The kernel refused the table, or a registration (memory-lock limit): no fixed buffers.
    disabled: bool,
}

impl FixedBuffers {
    /// Entries of the table.
    pub const SLOTS: u16 = 64;
    /// Bytes registered at most (pinned pages count against the memory-lock limit).
    pub const MAX_BYTES: usize = 256 << 20;

    /// Registers an empty table with `ring`; where the kernel refuses, a table that registers
    /// nothing (the sends then pin pages per send, as without it).
    pub fn new(ring: &IoUring) -> Self {
        Self::with_limits(ring, Self::SLOTS, Self::MAX_BYTES.min(memlock_budget()))
    }

    /// A table of `slots` entries holding at most `max_bytes`.
    pub fn with_limits(ring: &IoUring, slots: u16, max_bytes: usize) -> Self {
        let disabled = match ring.submitter().register_buffers_sparse(u32::from(slots)) {
            Ok(()) => false,
            Err(e) => {
                tracing::debug!("no registered buffers on this ring: {e}");
                true
            }
        };
        Self { entries: vec![None; usize::from(slots)], max_bytes, by_id: HashMap::new(), bytes: 0, tick: 0, disabled }
    }

    /// The index under which `buf`'s memory is registered with `ring`, registering it first if
    /// needed (replacing least recently used entries); `None` if it cannot be registered.
    pub fn index(&mut self, ring: &IoUring, buf: &PoolBuf) -> Option<u16> {
        if self.disabled {
            return None;
        }
        self.tick += 1;
        if let Some(&index) = self.by_id.get(&buf.id()) {
            if let Some(entry) = self.entries[usize::from(index)].as_mut() {
                entry.last_use = self.tick;
            }
            return Some(index);
        }
        let (addr, bytes) = buf.region();
        if bytes > self.max_bytes {
            return None;
        }
        // Room: a free entry, and the byte budget, by replacing the least recently used ones.
        let mut free = self.entries.iter().position(Option::is_none);
        while free.is_none() || self.bytes + bytes > self.max_bytes {
            let (victim, _) = self
                .entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.map(|e| (i, e.last_use)))
                .min_by_key(|&(_, last_use)| last_use)?;
            match free {
                // The entry that takes the new buffer: registering replaces it.
                // (Positions in a table of `u16` entries: the conversions never fail.)
                None => {
                    self.forget(u16::try_from(victim).ok()?);
                    free = Some(victim);
                }
                // Only the byte budget: release it.
                Some(_) => self.clear(ring, u16::try_from(victim).ok()?)?,
            }
        }
        let index = u16::try_from(free.expect("made room above")).ok()?;
        let iov = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: bytes };
        // SAFETY: `iov` describes the memory of `buf`, alive now; the kernel pins its pages at
        // registration and uses those pages for this index until it is replaced. The index is
        // used only for `buf` (found by its id), and only while the caller holds `buf`.
        if let Err(e) = unsafe { ring.submitter().register_buffers_update(u32::from(index), &[iov], None) } {
            tracing::debug!("registering a buffer of {bytes} bytes failed, no registered buffers from now on: {e}");
            self.disabled = true;
            return None;
        }
        self.entries[usize::from(index)] = Some(Entry { id: buf.id(), bytes, last_use: self.tick });
        self.by_id.insert(buf.id(), index);
        self.bytes += bytes;
        Some(index)
    }

    /// Unregisters entry `index` (its pages are unpinned once no operation uses them).
    fn clear(&mut self, ring: &IoUring, index: u16) -> Option<()> {
        self.forget(index);
        let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        // SAFETY: an empty iovec registers no memory; it only releases the entry.
        if let Err(e) = unsafe { ring.submitter().register_buffers_update(u32::from(index), &[empty], None) } {
            tracing::debug!("releasing a registered buffer failed, no registered buffers from now on: {e}");
            self.disabled = true;
            return None;
        }
        Some(())
    }

    /// Drops entry `index` from the table's books (the kernel's entry stays until replaced).
    fn forget(&mut self, index: u16) {
        if let Some(entry) = self.entries[usize::from(index)].take() {
            self.by_id.remove(&entry.id);
            self.bytes -= entry.bytes;
        }
    }

    /// Entries registered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Bytes this process may pin: unlimited for root (`CAP_IPC_LOCK`), else half the
/// `RLIMIT_MEMLOCK` soft limit (the rest for whatever else locks memory).
fn memlock_budget() -> usize {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return usize::MAX;
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit to write for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    usize::try_from(limit.rlim_cur / 2).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use io_uring::{opcode, types::Fd};

    use super::*;
    use praas_runtime::buffer::BufferPool;

    fn ring() -> Option<IoUring> {
        if !crate::kind::uring_available() {
            eprintln!("skipped: io_uring is unavailable on this kernel");
            return None;
        }
        Some(IoUring::new(8).expect("a ring"))
    }

    #[test]
    fn buffers_are_found_again_by_id_and_the_least_recently_used_make_room() {
        let Some(ring) = ring() else { return };
        const SLOTS: u16 = 8;
        const MAX: usize = 1 << 20;
        let mut table = FixedBuffers::with_limits(&ring, SLOTS, MAX);
        assert!(!table.disabled, "the kernel takes a sparse table");
        let pool = BufferPool::new(1 << 30);
        let a = pool.get(64 << 10).unwrap();
        let first = table.index(&ring, &a).unwrap();
        assert_eq!(table.index(&ring, &a), Some(first), "found again");
        // Fill the table, keeping `a` the most recently used.
        let mut held = Vec::new();
        for _ in 1..SLOTS {
            let b = pool.get(4 << 10).unwrap();
            table.index(&ring, &b).unwrap();
            held.push(b);
            table.index(&ring, &a).unwrap();
        }
        assert_eq!(table.len(), usize::from(SLOTS));
        let newcomer = pool.get(4 << 10).unwrap();
        let index = table.index(&ring, &newcomer).unwrap();
        assert_ne!(index, first, "the least recently used entry went, not `a`");
        assert_eq!(table.index(&ring, &a), Some(first));
        assert_eq!(table.len(), usize::from(SLOTS));
        // The byte budget: a buffer of half of it pushes others out, `a` last.
        let big = pool.get(MAX / 2).unwrap();
        table.index(&ring, &big).unwrap();
        assert!(table.bytes <= MAX);
        let bigger = pool.get(MAX).unwrap();
        table.index(&ring, &bigger).unwrap();
        assert_eq!((table.len(), table.bytes), (1, MAX), "only the newest fits");
        let too_big = pool.get(MAX + 1).unwrap();
        assert_eq!(table.index(&ring, &too_big), None, "larger than the budget: not registered");
    }

    #[test]
    fn a_zero_copy_send_from_a_registered_buffer_delivers_its_bytes() {
        let Some(mut ring) = ring() else { return };
        let mut table = FixedBuffers::new(&ring);
        let pool = BufferPool::new(1 << 30);
        let mut buf = pool.get(1 << 20).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        assert!(buf.try_extend(&data));
        let index = table.index(&ring, &buf).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).unwrap();
            got
        });
        let entry = opcode::SendZc::new(Fd(sender.as_raw_fd()), buf.as_ptr(), u32::try_from(buf.len()).unwrap())
            .buf_index(Some(index))
            .flags(libc::MSG_WAITALL)
            .build()
            .user_data(7);
        // SAFETY: `buf` outlives the send: both completions are reaped below before it drops.
        unsafe { ring.submission().push(&entry).unwrap() };
        let mut sent = 0usize;
        let mut notified = false;
        while !notified {
            ring.submit_and_wait(1).unwrap();
            for cqe in ring.completion() {
                if io_uring::cqueue::notif(cqe.flags()) {
                    notified = true;
                } else {
                    assert!(cqe.result() >= 0, "send failed: {}", cqe.result());
                    sent += cqe.result() as usize;
                    notified |= !io_uring::cqueue::more(cqe.flags());
                }
            }
        }
        assert_eq!(sent, data.len());
        drop(sender);
        assert!(reader.join().unwrap() == data, "the bytes sent from the registered buffer");
    }
}
