//! The receive path of an io_uring connection: the buffers its receives fill ([`BufRing`]), how
//! received buffers become frames ([`ingest`], [`decode_backlog`]), and which receive operation a
//! connection needs next ([`Receiving`]). All but the buffer ring is pure logic: the event loop
//! ([`server`](super::server)) submits the operations and feeds the buffers the kernel fills; the
//! tests below feed byte slices.
//!
//! A frame wholly inside a received buffer reaches the process as a slice of it. A frame cut off
//! at a buffer's end is assembled by copying, in a buffer of the receive buffers' size, if it fits
//! one; a larger one gets a pool buffer of its own, the multishot receive is cancelled, and one
//! direct receive reads the rest of the frame into that buffer (bytes the multishot receive
//! delivered meanwhile are copied in first).
//!
//! The receive buffers are a provided-buffer ring per connection ([`BufRing`]), filled with
//! buffers of the process's pool, that multishot receives fill in the order the kernel picks them.
//!
//! The ring memory (`entries` × 16-byte descriptors, page-aligned) is shared with the kernel: the
//! kernel consumes descriptors from the head, the transport publishes new ones at the tail. Each
//! descriptor names a buffer id (`bid`); the [`PoolBuf`] behind each id is owned here while the
//! kernel may write into it and handed out ([`BufRing::take`]) when a completion names it.
//!
//! Buffers travel in the `Arc` that payloads share them through: a buffer whose payloads are all
//! gone is provided again in the same `Arc`, so a receive allocates nothing.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use praas_runtime::buffer::{BufferPool, Payload, PoolBuf};
use praas_runtime::serve::LargeFrame;
use praas_runtime::serve::{self, Link, Refusal};
use praas_wire::protocol::{decode_frame, Decoded, FrameLimits, Header, HEADER_LEN};

/// A frame received in part: at most one of the three is set.
#[derive(Debug, Default)]
pub(super) struct Partial {
    /// A header cut short: its first `head.1` bytes, kept here (no buffer for it).
    pub(super) head: ([u8; HEADER_LEN], usize),
    /// A frame that straddles receive buffers and fits in one: its bytes so far (copied).
    pub(super) assembly: Option<PoolBuf>,
    /// A frame larger than a receive buffer, in a buffer of its own: its body so far.
    pub(super) large: Option<LargeFrame>,
}

impl Partial {
    /// Drops the frame in progress (the peer closed, or broke the protocol).
    #[inline]
    pub(super) fn clear(&mut self) {
        self.head.1 = 0;
        self.assembly = None;
        self.large = None;
    }

    /// Whether a large frame waits for the rest of its body.
    #[inline]
    pub(super) fn large_waiting(&self) -> bool {
        self.large.is_some()
    }

    /// Where the direct receive of a large frame's body goes: room for the next bytes, never
    /// past the frame's end, the buffer grown first when full (`None`: the pool is spent).
    #[inline]
    pub(super) fn large_room(&mut self, pool: &BufferPool) -> Option<&mut [u8]> {
        self.large.as_mut()?.room(pool)
    }

    /// The direct receive put `n` more bytes into the large frame's buffer.
    #[inline]
    pub(super) fn large_received(&mut self, n: usize) {
        if let Some(large) = self.large.as_mut() {
            large.received(n);
        }
    }

    /// Whether a frame is received in part.
    #[inline]
    pub(super) fn mid_frame(&self) -> bool {
        self.head.1 > 0 || self.assembly.is_some() || self.large.is_some()
    }
}

/// How the receive path sees one connection: its frame in progress, its received buffers not yet
/// decoded, back-pressure, and where its frames go.
pub(super) trait Frames: Link {
    /// The frame received in part.
    fn partial(&mut self) -> &mut Partial;
    /// Received buffers not yet decoded (back-pressure holds them here), and where to resume.
    fn backlog(&mut self) -> &mut VecDeque<(Arc<PoolBuf>, usize)>;
    /// A received buffer whose bytes were consumed: a spare for the ring once no payload holds it.
    fn give_back(&mut self, buf: Arc<PoolBuf>);
    /// Whether the peer has too much outstanding to read more of it.
    fn blocked(&self) -> bool;
    /// Serves one whole frame (`body`: metadata and payload).
    fn dispatch(&mut self, header: Header, body: Payload);
}

/// What decoding needs besides the connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Intake<'a> {
    /// Where assembly and large-frame buffers come from.
    pub(super) pool: &'a BufferPool,
    /// The process's frame limit.
    pub(super) limits: FrameLimits,
    /// Bytes of each receive buffer.
    pub(super) buffer_size: usize,
    /// The connection has proven itself ([`serve::proven`]): a large frame's first buffer is
    /// larger.
    pub(super) proven: bool,
}

/// Decodes and dispatches received bytes as far as back-pressure and the pool allow; a protocol
/// violation is refused as the [policy](praas_runtime::serve) says.
pub(super) fn decode_backlog<C: Frames>(conn: &mut C, intake: Intake<'_>) {
    let partial = conn.partial();
    if partial.large.as_ref().is_some_and(LargeFrame::complete) {
        let LargeFrame { header, body } = partial.large.take().expect("checked");
        conn.dispatch(header, Payload::whole(body));
    }
    // The buffer being decoded leaves the backlog meanwhile (and returns to its front if decoding
    // pauses): no reference is taken just to look at it.
    while let Some((buf, start)) = conn.backlog().pop_front() {
        if !conn.state().serves() {
            // Discarding: the bytes go nowhere, the buffers back to the ring.
            conn.give_back(buf);
            continue;
        }
        if conn.blocked() {
            conn.backlog().push_front((buf, start));
            return;
        }
        match ingest(conn, intake, &buf, start) {
            Ok(Some(next)) => {
                // Paused (pool spent or back-pressure): keep the rest for later.
                conn.backlog().push_front((buf, next));
                return;
            }
            Ok(None) => conn.give_back(buf),
            Err(refusal) => {
                serve::refuse(conn, refusal);
                conn.give_back(buf);
                while let Some((rest, _)) = conn.backlog().pop_front() {
                    conn.give_back(rest);
                }
            }
        }
    }
}

/// Consumes `buf[start..]`: completes a pending frame, dispatches every frame wholly inside the
/// buffer as a slice of it (no copy), and keeps a cut-off tail. Returns where it stopped (`None`
/// when everything was consumed), or the refusal of a protocol violation.
pub(super) fn ingest<C: Frames>(
    conn: &mut C,
    intake: Intake<'_>,
    buf: &Arc<PoolBuf>,
    start: usize,
) -> Result<Option<usize>, Refusal> {
    let Intake { pool, limits, buffer_size, proven } = intake;
    let end = buf.len();
    let mut pos = start;
    while pos < end {
        if !conn.state().serves() {
            // Refused mid-buffer (a peer that failed to authenticate): serve nothing more.
            return Ok(None);
        }
        if conn.blocked() {
            return Ok(Some(pos));
        }
        let partial = conn.partial();
        if partial.head.1 > 0 {
            // A header cut short: complete it here, then give the frame the buffer it needs.
            let (head, have) = &mut partial.head;
            let take = (HEADER_LEN - *have).min(end - pos);
            head[*have..*have + take].copy_from_slice(&buf[pos..pos + take]);
            *have += take;
            pos += take;
            if *have < HEADER_LEN {
                continue;
            }
            let head = *head;
            let header = Header::decode(&head, limits).map_err(|e| Refusal::frame(e, &head))?;
            let total = HEADER_LEN + header.body_len();
            if total > buffer_size {
                let Some(large) = LargeFrame::start(header, &[], pool, proven) else {
                    pos -= take;
                    partial.head.1 -= take;
                    return Ok(Some(pos));
                };
                partial.large = Some(large);
            } else {
                let Some(mut assembly) = pool.get(total) else {
                    pos -= take;
                    partial.head.1 -= take;
                    return Ok(Some(pos));
                };
                assembly.try_extend(&head);
                partial.assembly = Some(assembly);
            }
            partial.head.1 = 0;
            continue;
        }
        if let Some(large) = partial.large.as_mut() {
            // Bytes that arrived before the multishot receive stopped: copy them over (the
            // buffer grows with them).
            let take = large.missing().min(end - pos);
            let taken = large.extend(&buf[pos..pos + take], pool);
            pos += taken;
            if taken < take {
                return Ok(Some(pos));
            }
            if large.complete() {
                let LargeFrame { header, body } = partial.large.take().expect("checked");
                conn.dispatch(header, Payload::whole(body));
            }
            continue;
        }
        if let Some(assembly) = partial.assembly.as_mut() {
            let have = assembly.len();
            if have < HEADER_LEN {
                let take = (HEADER_LEN - have).min(end - pos);
                assembly.try_extend(&buf[pos..pos + take]);
                pos += take;
                if assembly.len() < HEADER_LEN {
                    continue;
                }
            }
            let head = *assembly.first_chunk::<HEADER_LEN>().expect("checked length");
            let header = Header::decode(&head, limits).map_err(|e| Refusal::frame(e, &head))?;
            let total = HEADER_LEN + header.body_len();
            if total > buffer_size {
                let Some(large) = LargeFrame::start(header, &assembly[HEADER_LEN..], pool, proven) else {
                    return Ok(Some(pos));
                };
                partial.assembly = None;
                partial.large = Some(large);
                continue;
            }
            if total > assembly.capacity() {
                // A header assembled in a small buffer announces more: room for the whole frame.
                let Some(mut bigger) = pool.get(total) else { return Ok(Some(pos)) };
                assert!(bigger.try_extend(assembly), "a bigger buffer holds the frame so far");
                *assembly = bigger;
            }
            let take = (total - assembly.len()).min(end - pos);
            assembly.try_extend(&buf[pos..pos + take]);
            pos += take;
            if assembly.len() == total {
                let assembly = Arc::new(partial.assembly.take().expect("checked"));
                conn.dispatch(header, Payload::new(assembly, HEADER_LEN..total));
            }
            continue;
        }
        let available = &buf[pos..end];
        match decode_frame(available, limits) {
            Ok(Decoded::Frame(frame, used)) => {
                let header = frame.header;
                conn.dispatch(header, Payload::new(Arc::clone(buf), pos + HEADER_LEN..pos + used));
                pos += used;
            }
            Ok(Decoded::Incomplete(_)) => {
                // A frame cut off at the end of this buffer.
                let body_len = match available.first_chunk::<HEADER_LEN>() {
                    Some(head) => Some(Header::decode(head, limits).map_err(|e| Refusal::frame(e, head))?),
                    None => None,
                };
                match body_len {
                    Some(header) if HEADER_LEN + header.body_len() > buffer_size => {
                        let have = &available[HEADER_LEN..];
                        let Some(large) = LargeFrame::start(header, have, pool, proven) else {
                            return Ok(Some(pos));
                        };
                        partial.large = Some(large);
                    }
                    Some(header) => {
                        let Some(mut assembly) = pool.get(HEADER_LEN + header.body_len()) else {
                            return Ok(Some(pos));
                        };
                        assembly.try_extend(available);
                        partial.assembly = Some(assembly);
                    }
                    None => {
                        // A header cut short: kept without a buffer.
                        partial.head.0[..available.len()].copy_from_slice(available);
                        partial.head.1 = available.len();
                    }
                }
                pos = end;
            }
            Err(e) => return Err(Refusal::frame(e, available)),
        }
    }
    Ok(None)
}

/// The receive operations a connection has in flight: one multishot receive into its provided
/// buffers, or (for the rest of a large frame) one direct receive into the frame's own buffer, and
/// the cancel of the multishot receive that comes between.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Receiving {
    /// A multishot receive is armed.
    armed: bool,
    /// A cancel of the multishot receive is in flight.
    cancelling: bool,
    /// A direct receive into the large frame's buffer is in flight.
    large: bool,
}

/// The receive operation a connection needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvStep {
    /// Cancel the multishot receive: the rest of a large frame must not land in two places.
    Cancel,
    /// Receive the rest of the large frame straight into its buffer.
    Large,
    /// Arm the multishot receive.
    Multishot,
    /// Nothing until an operation in flight completes.
    Wait,
}

impl Receiving {
    /// What to submit next, for a connection with a large frame waiting for its body or not.
    #[inline]
    pub(super) fn next(&self, large_waiting: bool) -> RecvStep {
        if large_waiting {
            if self.armed {
                if self.cancelling {
                    RecvStep::Wait
                } else {
                    RecvStep::Cancel
                }
            } else if self.large {
                RecvStep::Wait
            } else {
                RecvStep::Large
            }
        } else if !self.armed && !self.cancelling {
            RecvStep::Multishot
        } else {
            RecvStep::Wait
        }
    }

    /// `step` was submitted.
    #[inline]
    pub(super) fn submitted(&mut self, step: RecvStep) {
        match step {
            RecvStep::Cancel => self.cancelling = true,
            RecvStep::Large => self.large = true,
            RecvStep::Multishot => self.armed = true,
            RecvStep::Wait => {}
        }
    }

    /// The multishot receive completed for the last time (cancelled, failed, or the peer closed).
    #[inline]
    pub(super) fn multishot_ended(&mut self) {
        self.armed = false;
    }

    /// The cancel completed (whether it found the multishot receive or not).
    #[inline]
    pub(super) fn cancel_done(&mut self) {
        self.cancelling = false;
    }

    /// The direct receive completed.
    #[inline]
    pub(super) fn large_done(&mut self) {
        self.large = false;
    }

    /// Whether the direct receive into the large frame's buffer is in flight: the buffer must
    /// stay where it is until it completes.
    #[cfg(test)]
    pub(super) fn large_in_flight(&self) -> bool {
        self.large
    }
}

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use praas_runtime::invocation::Response;
    use praas_runtime::serve::OutFrame;
    use praas_runtime::serve::{End, ReadState};
    use praas_wire::protocol::{encode_frame, MessageKind, Status};

    const BUFFER: usize = 4096;

    /// A connection that records the frames it is given and what it answers.
    struct Conn {
        partial: Partial,
        backlog: VecDeque<(Arc<PoolBuf>, usize)>,
        state: ReadState,
        /// Frames (header, metadata and payload) in the order they were dispatched.
        frames: Vec<(Header, Vec<u8>)>,
        /// Dispatches after which the connection is blocked (back-pressure), if any.
        block_after: Option<usize>,
        given_back: usize,
        last: Vec<(Header, Vec<u8>, End)>,
    }

    impl Conn {
        fn new() -> Self {
            Self {
                partial: Partial::default(),
                backlog: VecDeque::new(),
                state: ReadState::Open,
                frames: Vec::new(),
                block_after: None,
                given_back: 0,
                last: Vec::new(),
            }
        }
    }

    impl Link for Conn {
        fn respond(&mut self, _: Response) {
            unreachable!("the receive path answers nothing itself")
        }
        fn reply(&mut self, _: OutFrame) {
            unreachable!("the receive path answers nothing itself")
        }
        fn reply_last(&mut self, frame: OutFrame, end: End) {
            let (header, meta, _) = frame.into_parts();
            self.last.push((header, meta, end));
        }
        fn discard_input(&mut self) {
            self.partial.clear();
        }
        fn state(&mut self) -> &mut ReadState {
            &mut self.state
        }
        fn linger(&self) -> Duration {
            Duration::from_secs(60)
        }
    }

    impl Frames for Conn {
        fn partial(&mut self) -> &mut Partial {
            &mut self.partial
        }
        fn backlog(&mut self) -> &mut VecDeque<(Arc<PoolBuf>, usize)> {
            &mut self.backlog
        }
        fn give_back(&mut self, _: Arc<PoolBuf>) {
            self.given_back += 1;
        }
        fn blocked(&self) -> bool {
            self.block_after.is_some_and(|n| self.frames.len() >= n)
        }
        fn dispatch(&mut self, header: Header, body: Payload) {
            assert_eq!(body.len(), header.body_len(), "a frame reaches the process whole");
            self.frames.push((header, body.to_vec()));
        }
    }

    fn intake(pool: &BufferPool) -> Intake<'_> {
        Intake { pool, limits: FrameLimits { max_frame: 1 << 20 }, buffer_size: BUFFER, proven: false }
    }

    /// The frames `(id, meta, payload)` encoded back to back.
    fn stream(frames: &[(u64, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, meta, payload) in frames {
            encode_frame(&mut out, Header::invoke(*id, 0, 0, 0), meta, payload).unwrap();
        }
        out
    }

    fn expected(frames: &[(u64, Vec<u8>, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
        frames.iter().map(|(id, meta, payload)| (*id, [&meta[..], payload].concat())).collect()
    }

    fn got(conn: &Conn) -> Vec<(u64, Vec<u8>)> {
        conn.frames.iter().map(|(h, body)| (h.id, body.clone())).collect()
    }

    /// A receive buffer the kernel filled with `bytes`.
    fn received(pool: &BufferPool, bytes: &[u8]) -> Arc<PoolBuf> {
        assert!(bytes.len() <= BUFFER);
        let mut buf = pool.get(BUFFER).expect("the pool has room");
        assert!(buf.try_extend(bytes));
        Arc::new(buf)
    }

    /// Feeds `bytes` to `conn` as the event loop and the kernel would: the armed multishot
    /// receive fills buffers of at most `chunks` bytes each (cycled); a large frame cancels it,
    /// after which it still delivers `late` buffers before it ends; then the rest of the large
    /// frame's body comes by the direct receive.
    fn feed(conn: &mut Conn, pool: &BufferPool, bytes: &[u8], chunks: &[usize], late: usize) {
        let mut receiving = Receiving::default();
        let mut pos = 0;
        let mut chunk = chunks.iter().copied().cycle();
        let mut late_left = 0;
        while pos < bytes.len() || !conn.backlog.is_empty() {
            decode_backlog(conn, intake(pool));
            if !conn.state.serves() {
                return;
            }
            let step = receiving.next(conn.partial.large_waiting());
            receiving.submitted(step);
            match step {
                RecvStep::Cancel => late_left = late,
                RecvStep::Large => {
                    if receiving.armed && pos < bytes.len() {
                        // A multishot receive still armed takes the next bytes first: they would
                        // land in two places (what the cancel is for).
                        let n = chunk.next().expect("cycled").min(bytes.len() - pos);
                        conn.backlog.push_back((received(pool, &bytes[pos..pos + n]), 0));
                        pos += n;
                    }
                    let room = conn.partial.large_room(pool).expect("a large frame waits, the pool has room");
                    let n = room.len().min(bytes.len() - pos);
                    room[..n].copy_from_slice(&bytes[pos..pos + n]);
                    pos += n;
                    conn.partial.large_received(n);
                    receiving.large_done();
                    continue;
                }
                RecvStep::Multishot | RecvStep::Wait => {}
            }
            if !receiving.armed {
                continue;
            }
            if receiving.cancelling && late_left == 0 {
                // The cancel took effect: the multishot receive ends, then the cancel completes.
                receiving.multishot_ended();
                receiving.cancel_done();
                continue;
            }
            late_left = late_left.saturating_sub(1);
            if pos < bytes.len() {
                let n = chunk.next().expect("cycled").min(bytes.len() - pos);
                conn.backlog.push_back((received(pool, &bytes[pos..pos + n]), 0));
                pos += n;
            }
        }
        decode_backlog(conn, intake(pool));
    }

    #[test]
    fn a_frame_straddling_two_buffers_is_assembled_at_every_cut() {
        let pool = BufferPool::new(64 << 20);
        let frames = vec![(1, b"echo".to_vec(), vec![7u8; 100]), (2, b"f".to_vec(), vec![9u8; 30])];
        let bytes = stream(&frames);
        for cut in 1..bytes.len() {
            let mut conn = Conn::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                let buf = received(&pool, part);
                assert_eq!(ingest(&mut conn, intake(&pool), &buf, 0), Ok(None), "cut at {cut}");
            }
            assert_eq!(got(&conn), expected(&frames), "cut at {cut}");
            assert!(conn.partial.assembly.is_none() && conn.partial.large.is_none());
        }
    }

    #[test]
    fn a_frame_in_one_buffer_is_a_slice_of_it() {
        let pool = BufferPool::new(64 << 20);
        let bytes = stream(&[(3, b"x".to_vec(), b"abc".to_vec())]);
        let buf = received(&pool, &bytes);
        let mut conn = Conn::new();
        assert_eq!(ingest(&mut conn, intake(&pool), &buf, 0), Ok(None));
        assert_eq!(got(&conn), [(3, b"xabc".to_vec())]);
        assert_eq!(pool.outstanding(), BUFFER, "nothing was copied into another buffer");
    }

    #[test]
    fn a_large_frame_gets_its_own_buffer_and_takes_the_bytes_already_received() {
        let pool = BufferPool::new(64 << 20);
        let payload: Vec<u8> = (0..=255u8).cycle().take(3 * BUFFER).collect();
        let frames = vec![(4, b"big".to_vec(), payload), (5, b"small".to_vec(), vec![1, 2])];
        let bytes = stream(&frames);
        let mut conn = Conn::new();
        assert_eq!(ingest(&mut conn, intake(&pool), &received(&pool, &bytes[..100]), 0), Ok(None));
        let large = conn.partial.large.as_ref().expect("a large frame waits");
        assert_eq!((large.header.id, large.body.len()), (4, 100 - HEADER_LEN));
        assert!(large.body.capacity() < large.header.body_len(), "memory comes with the bytes, not the header");
        // A buffer the multishot receive delivered before its cancel took effect: copied over.
        let late = received(&pool, &bytes[100..100 + BUFFER]);
        assert_eq!(ingest(&mut conn, intake(&pool), &late, 0), Ok(None));
        // The rest of the body by direct receives, never past the frame's end, the buffer
        // growing (at most doubling) as it fills.
        let end = HEADER_LEN + 3 + 3 * BUFFER;
        let mut at = 100 + BUFFER;
        while let Some(room) = conn.partial.large_room(&pool) {
            assert!(room.len() <= end - at);
            let n = room.len();
            room.copy_from_slice(&bytes[at..at + n]);
            conn.partial.large_received(n);
            at += n;
        }
        assert_eq!(at, end);
        assert!(conn.frames.is_empty(), "dispatched when the loop looks again");
        decode_backlog(&mut conn, intake(&pool));
        assert_eq!(got(&conn), expected(&frames[..1]));
        assert_eq!(ingest(&mut conn, intake(&pool), &received(&pool, &bytes[end..]), 0), Ok(None));
        assert_eq!(got(&conn), expected(&frames));
        // The same bytes fed as the event loop would, buffer after buffer.
        let mut again = Conn::new();
        feed(&mut again, &pool, &bytes, &[100, BUFFER], 1);
        assert_eq!(got(&again), expected(&frames));
    }

    #[test]
    fn a_spent_pool_pauses_where_it_stopped_and_resumes_there() {
        let pool = BufferPool::new(2 * BUFFER);
        let frames = vec![(6, b"a".to_vec(), vec![5u8; 50]), (7, b"b".to_vec(), vec![6u8; 50])];
        let bytes = stream(&frames);
        let cut = bytes.len() - 10;
        let mut conn = Conn::new();
        conn.backlog.push_back((received(&pool, &bytes[..cut]), 0));
        // Someone else holds the rest of the budget: no buffer to assemble the cut-off frame in.
        let hog = pool.get(BUFFER).expect("the budget has room for one more");
        decode_backlog(&mut conn, intake(&pool));
        assert_eq!(got(&conn), expected(&frames[..1]));
        assert_eq!(conn.backlog.len(), 1, "paused, the buffer kept");
        assert_eq!(conn.backlog[0].1, HEADER_LEN + 51, "where the cut-off frame starts");
        decode_backlog(&mut conn, intake(&pool));
        assert_eq!(conn.backlog.len(), 1, "still paused");
        drop(hog);
        decode_backlog(&mut conn, intake(&pool));
        assert!(conn.backlog.is_empty());
        assert!(conn.partial.assembly.is_some(), "the cut-off frame is being assembled");
        conn.backlog.push_back((received(&pool, &bytes[cut..]), 0));
        decode_backlog(&mut conn, intake(&pool));
        assert_eq!(got(&conn), expected(&frames));
    }

    #[test]
    fn back_pressure_stops_at_a_frame_boundary() {
        let pool = BufferPool::new(64 << 20);
        let frames: Vec<_> = (0..5u8).map(|i| (u64::from(i), b"e".to_vec(), vec![i; 10])).collect();
        let bytes = stream(&frames);
        let mut conn = Conn { block_after: Some(2), ..Conn::new() };
        conn.backlog.push_back((received(&pool, &bytes), 0));
        decode_backlog(&mut conn, intake(&pool));
        assert_eq!(got(&conn), expected(&frames[..2]));
        let (_, at) = conn.backlog[0];
        assert_eq!(at, 2 * (HEADER_LEN + 11));
        conn.block_after = None;
        decode_backlog(&mut conn, intake(&pool));
        assert_eq!(got(&conn), expected(&frames));
        assert!(conn.backlog.is_empty());
        assert_eq!(conn.given_back, 1);
    }

    #[test]
    fn a_bad_header_is_refused_in_its_id_and_the_rest_discarded() {
        let pool = BufferPool::new(64 << 20);
        let mut bytes = stream(&[(1, b"ok".to_vec(), vec![]), (0xabc, b"bad".to_vec(), vec![1; 20])]);
        bytes[HEADER_LEN + 2] = b'X';
        for cut in [HEADER_LEN + 2 + 10, bytes.len()] {
            let mut conn = Conn::new();
            conn.backlog.push_back((received(&pool, &bytes[..cut]), 0));
            conn.backlog.push_back((received(&pool, &bytes[cut..]), 0));
            conn.backlog.push_back((received(&pool, &stream(&[(9, b"later".to_vec(), vec![])])), 0));
            decode_backlog(&mut conn, intake(&pool));
            assert_eq!(got(&conn), [(1, b"ok".to_vec())]);
            let (header, text, end) = &conn.last[0];
            assert_eq!(
                (header.kind, header.id, header.status),
                (MessageKind::Response, 0xabc, Status::Malformed.code())
            );
            assert!(String::from_utf8_lossy(text).contains("magic"));
            assert_eq!(*end, End::Refused);
            assert!(!conn.state.serves());
            assert!(conn.backlog.is_empty() && conn.partial.assembly.is_none());
            assert_eq!(conn.given_back, 3, "every buffer goes back to the ring");
        }
    }

    #[test]
    fn a_frame_beyond_the_limit_is_refused_too_large_before_its_body_arrives() {
        let pool = BufferPool::new(64 << 20);
        let head = Header::invoke(77, 0, 0, 2 << 20).encode();
        let mut conn = Conn::new();
        let buf = received(&pool, &head[..10]);
        assert_eq!(ingest(&mut conn, intake(&pool), &buf, 0), Ok(None));
        let buf = received(&pool, &head[10..]);
        let refusal = ingest(&mut conn, intake(&pool), &buf, 0).unwrap_err();
        assert_eq!((refusal.id, refusal.status), (77, Status::TooLarge));
    }

    #[test]
    fn a_large_frame_cancels_the_multishot_receive_before_receiving_directly() {
        let mut r = Receiving::default();
        assert_eq!(r.next(false), RecvStep::Multishot);
        r.submitted(RecvStep::Multishot);
        assert_eq!(r.next(false), RecvStep::Wait, "one multishot receive at a time");
        // A large frame starts: cancel first, once.
        assert_eq!(r.next(true), RecvStep::Cancel);
        r.submitted(RecvStep::Cancel);
        assert_eq!(r.next(true), RecvStep::Wait, "no direct receive while the multishot may still deliver");
        // The multishot receive ends (its last completion): the direct receive may go, even
        // before the cancel's own completion.
        r.multishot_ended();
        assert_eq!(r.next(true), RecvStep::Large);
        r.submitted(RecvStep::Large);
        assert!(r.large_in_flight());
        assert_eq!(r.next(true), RecvStep::Wait, "one direct receive at a time");
        r.large_done();
        // The large frame is whole; the multishot receive is armed again only after the cancel
        // completed (it could otherwise cancel the new one).
        assert_eq!(r.next(false), RecvStep::Wait);
        r.cancel_done();
        assert_eq!(r.next(false), RecvStep::Multishot);
        // A multishot receive that ended by itself (out of buffers) needs no cancel.
        let mut r = Receiving::default();
        r.submitted(RecvStep::Multishot);
        r.multishot_ended();
        assert_eq!(r.next(true), RecvStep::Large);
    }

    fn frames() -> impl Strategy<Value = Vec<(u64, Vec<u8>, Vec<u8>)>> {
        let frame = (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            prop_oneof![
                4 => proptest::collection::vec(any::<u8>(), 0..600),
                1 => proptest::collection::vec(any::<u8>(), BUFFER - 50..3 * BUFFER),
            ],
        );
        proptest::collection::vec(frame, 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever buffers the kernel fills, and however many arrive after a cancel, the
        /// frames come out whole and in order.
        #[test]
        fn any_split_of_a_stream_reassembles_to_its_frames(
            frames in frames(),
            chunks in proptest::collection::vec(1usize..=BUFFER, 1..8),
            late in 0usize..3,
        ) {
            let pool = BufferPool::new(256 << 20);
            let bytes = stream(&frames);
            let mut conn = Conn::new();
            feed(&mut conn, &pool, &bytes, &chunks, late);
            prop_assert_eq!(got(&conn), expected(&frames));
            prop_assert!(conn.partial.assembly.is_none() && conn.partial.large.is_none());
            prop_assert!(conn.last.is_empty());
        }

        /// Any bytes at all: never a panic, and whatever is dispatched is a whole frame.
        #[test]
        fn arbitrary_bytes_never_break_the_receive_path(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            chunks in proptest::collection::vec(1usize..=BUFFER, 1..4),
        ) {
            let pool = BufferPool::new(256 << 20);
            let mut conn = Conn::new();
            feed(&mut conn, &pool, &bytes, &chunks, 0);
        }
    }
}
