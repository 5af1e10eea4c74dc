//! The mailbox: messages other processes (or this one) put for this process, waiting to be got.
//!
//! One FIFO per (source process, key): a second message with the same key from the same source
//! queues behind the first, it never replaces it. [`Mailbox::get`] takes the oldest message of one
//! source, or of any source ([`Mailbox::get`] with `None`), for a key, waiting at most its timeout.
//! The mailbox is apart from the [`StateStore`](crate::state::StateStore): state and messages never
//! collide.
//!
//! Swapping: [`Mailbox::pause`] makes new puts fail with [`MailboxError::Paused`] (the sender is
//! told the process is swapping out), after which [`Mailbox::snapshot`] encodes every undelivered
//! message; swap-in decodes them with [`Mailbox::restore`] or [`Mailbox::load`]. The encoding
//! (version 1, all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `PRMB` |
//! | 4 | `u32` version = 1 |
//! | 8 | `u64` number of records |
//!
//! then that many records, oldest first:
//!
//! | bytes | field |
//! |---|---|
//! | 2 | `u16` source length, then the source process id (UTF-8) |
//! | 2 | `u16` key length, then the key (UTF-8) |
//! | 8 | `u64` message length, then the message bytes |
//!
//! Decoding checks every length against the bytes left before using it, and accepts nothing after
//! the last record: an encoding decodes to exactly one mailbox and encodes back to the same bytes.

use std::cell::Cell;
use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::waiter::{Inbound, Waiter};

use thiserror::Error;

/// First bytes of a snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"PRMB";
/// Version of the snapshot encoding.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Bytes of messages a mailbox holds before puts fail with [`MailboxError::Full`], by default.
pub const DEFAULT_CAPACITY: usize = 1 << 30;
/// Longest source id or key, in bytes.
pub const MAX_NAME_LEN: usize = u16::MAX as usize;
const SNAPSHOT_HEADER: usize = 16;

/// Why a mailbox operation did not deliver or store a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MailboxError {
    /// No matching message arrived within the timeout.
    #[error("no message with key {key:?} from {source_name} within {timeout:?}")]
    Timeout {
        /// The key waited for.
        key: String,
        /// `process "id"` or `any process`.
        source_name: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The mailbox is paused for a swap: nothing new is stored.
    #[error("the mailbox is paused: the process is swapping out")]
    Paused,
    /// Storing the message would pass the mailbox's capacity.
    #[error("mailbox full: {queued} bytes in {messages} messages wait to be got, limit {capacity} bytes")]
    Full {
        /// Bytes waiting.
        queued: usize,
        /// Messages waiting.
        messages: usize,
        /// The capacity.
        capacity: usize,
    },
    /// A source id or key longer than [`MAX_NAME_LEN`] bytes.
    #[error("{what} of {len} bytes exceeds {MAX_NAME_LEN} bytes")]
    NameTooLong {
        /// `source` or `key`.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

impl MailboxError {
    /// The status a function (or a peer's sender) sees for this error.
    pub fn status(&self) -> praas_wire::protocol::Status {
        use praas_wire::protocol::Status;
        match self {
            MailboxError::Timeout { .. } => Status::Timeout,
            MailboxError::Paused | MailboxError::Full { .. } => Status::Overloaded,
            MailboxError::NameTooLong { .. } => Status::InvalidArgument,
        }
    }
}

/// Why a snapshot did not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The first bytes are not `PRMB`.
    #[error("not a mailbox snapshot (bad magic)")]
    BadMagic,
    /// A version this runtime does not read.
    #[error("mailbox snapshot version {0} is not supported (this runtime reads {SNAPSHOT_VERSION})")]
    BadVersion(u32),
    /// The bytes end inside a record, or more records were announced than present.
    #[error("mailbox snapshot truncated in record {0}")]
    Truncated(u64),
    /// A source or key is not UTF-8.
    #[error("mailbox snapshot record {0} has a name that is not UTF-8")]
    NotUtf8(u64),
    /// Bytes after the last announced record.
    #[error("mailbox snapshot has {0} bytes after its last record")]
    Trailing(usize),
}

/// One stored message.
#[derive(Debug, Clone)]
struct Stored {
    /// Arrival order across the whole mailbox (for gets from any source, and snapshots).
    seq: u64,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Inner {
    /// key -> source -> FIFO. A FIFO a take emptied stays, with its names and its buffer, for
    /// the next message of that key and source (a ping-pong reuses them instead of allocating
    /// four times and hashing nine times per message), up to [`EMPTY_KEPT`] of them.
    queues: FxHashMap<String, FxHashMap<String, VecDeque<Stored>>>,
    /// Empty FIFOs kept in `queues`.
    empty: usize,
    next_seq: u64,
    messages: usize,
    bytes: usize,
    paused: bool,
    /// Messages put and got since the process started (restored ones are not put again).
    put: u64,
    got: u64,
    /// Gets waiting for a message now: a put wakes them only when there is one (a wake-up
    /// nobody waits for is still a `futex` system call on the receiving I/O thread).
    waiting: usize,
    /// Gets waiting now that read the transport's peer connections themselves ([`crate::waiter`]):
    /// a put by another thread wakes them with their eventfd.
    leading: Vec<Arc<Waiter>>,
}

impl Inner {
    fn push(&mut self, source: &str, key: &str, data: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.messages += 1;
        self.bytes += data.len();
        let sources = match self.queues.get_mut(key) {
            Some(sources) => sources,
            None => self.queues.entry(key.to_owned()).or_default(),
        };
        let fifo = match sources.get_mut(source) {
            Some(fifo) => {
                if fifo.is_empty() {
                    self.empty -= 1;
                }
                fifo
            }
            None => sources.entry(source.to_owned()).or_default(),
        };
        fifo.push_back(Stored { seq, data });
    }

    /// Takes the oldest message for `key` from `source` (or from any source).
    fn take(&mut self, source: Option<&str>, key: &str) -> Option<(String, Vec<u8>)> {
        let sources = self.queues.get_mut(key)?;
        let (from, message, emptied) = match source {
            Some(source) => {
                let fifo = sources.get_mut(source)?;
                let message = fifo.pop_front()?;
                (source.to_owned(), message, fifo.is_empty())
            }
            None => {
                let (from, fifo) = sources.iter_mut().filter(|(_, q)| !q.is_empty()).min_by_key(|(_, q)| q[0].seq)?;
                let message = fifo.pop_front().expect("non-empty, chosen so");
                (from.clone(), message, fifo.is_empty())
            }
        };
        if emptied {
            self.empty += 1;
            if self.empty > EMPTY_KEPT {
                self.forget_empty();
            }
        }
        self.messages -= 1;
        self.bytes -= message.data.len();
        Some((from, message.data))
    }

    /// Drops every empty FIFO, and every key left without one.
    fn forget_empty(&mut self) {
        self.queues.retain(|_, sources| {
            sources.retain(|_, fifo| !fifo.is_empty());
            !sources.is_empty()
        });
        self.empty = 0;
    }
}

/// Empty FIFOs (a key and a source whose messages were all taken) a mailbox keeps for their
/// next message before it drops them all.
const EMPTY_KEPT: usize = 256;

/// The messages waiting for one process.
#[derive(Debug)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    arrived: Condvar,
    capacity: usize,
    /// The transport whose peer connections waiting gets read themselves, if one takes part.
    inbound: RwLock<Option<Arc<dyn Inbound>>>,
    /// Every waiter made (each watches every adopted peer connection); held while a connection
    /// is adopted or a waiter enlisted, so that none misses the other.
    waiters: Mutex<Vec<Arc<Waiter>>>,
    /// Waiters not in use by a get.
    idle: Mutex<Vec<Arc<Waiter>>>,
    /// Messages stored by a get that read their frame itself.
    received_by_gets: AtomicU64,
}

thread_local! {
    /// The waiter this thread serves connections for now (its own puts need not wake it).
    static SERVING: Cell<usize> = const { Cell::new(0) };
}

/// Marks this thread as serving for `waiter` until dropped.
struct Serving;

impl Serving {
    fn enter(waiter: &Arc<Waiter>) -> Self {
        SERVING.with(|s| s.set(Arc::as_ptr(waiter) as usize));
        Serving
    }

    fn current() -> usize {
        SERVING.with(Cell::get)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.with(|s| s.set(0));
    }
}

/// Wakes the waiters of `woken` (after the mailbox lock is let go: a woken thread that takes the
/// CPU at once must not find the lock held).
fn wake_all(woken: Vec<Arc<Waiter>>) {
    for waiter in woken {
        waiter.wake();
    }
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new()
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), MailboxError> {
    if name.len() > MAX_NAME_LEN {
        return Err(MailboxError::NameTooLong { what, len: name.len() });
    }
    Ok(())
}

fn source_name(source: Option<&str>) -> String {
    source.map_or_else(|| "any process".to_owned(), |s| format!("process {s:?}"))
}

impl Mailbox {
    /// An empty mailbox holding up to [`DEFAULT_CAPACITY`] bytes of messages.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// An empty mailbox holding up to `capacity` bytes of messages.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            arrived: Condvar::new(),
            capacity,
            inbound: RwLock::new(None),
            waiters: Mutex::new(Vec::new()),
            idle: Mutex::new(Vec::new()),
            received_by_gets: AtomicU64::new(0),
        }
    }

    /// Lets waiting gets read the peer connections of `inbound` themselves (a transport calls
    /// it when it starts; `None` when it stops). A mailbox takes one transport: a second is
    /// refused (returns false) and its connections are read by its I/O thread alone.
    pub fn set_inbound(&self, inbound: Option<Arc<dyn Inbound>>) -> bool {
        let mut slot = self.inbound.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() && inbound.is_some() {
            return false;
        }
        *slot = inbound;
        true
    }

    /// Runs `f` with every waiter made so far, holding the lock under which new waiters enlist:
    /// a transport adopts a peer connection in it (watching it with each of them).
    pub fn with_waiters<R>(&self, f: impl FnOnce(&[Arc<Waiter>]) -> R) -> R {
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        f(&waiters)
    }

    /// Messages stored by a waiting get that received their frame itself (not by the I/O thread).
    pub fn received_by_gets(&self) -> u64 {
        self.received_by_gets.load(Ordering::Relaxed)
    }

    /// Whether the calling thread is a waiting get serving connections (the transport reads
    /// differently for it).
    pub fn serving_get() -> bool {
        Serving::current() != 0
    }

    /// The waiters to wake for a message stored now (all leading gets but the calling thread's).
    fn to_wake(inner: &Inner) -> Vec<Arc<Waiter>> {
        if inner.leading.is_empty() {
            return Vec::new();
        }
        let me = Serving::current();
        inner.leading.iter().filter(|w| Arc::as_ptr(w) as usize != me).cloned().collect()
    }

    /// A waiter for a get, from the pool or new (enlisted with `inbound`); `None` if none can be
    /// made (out of descriptors): the get waits on the condition variable then.
    fn waiter(&self, inbound: &dyn Inbound) -> Option<Arc<Waiter>> {
        if let Some(waiter) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Some(waiter);
        }
        let waiter = match Waiter::new() {
            Ok(waiter) => Arc::new(waiter),
            Err(err) => {
                tracing::debug!("a get waits without reading its frames: {err}");
                return None;
            }
        };
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = inbound.enlist(&waiter) {
            tracing::debug!("a get waits without reading its frames: {err}");
            return None;
        }
        waiters.push(Arc::clone(&waiter));
        Some(waiter)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a message from `source` under `key`, behind any earlier one with the same source
    /// and key. When this returns `Ok`, the message is stored: a later [`Mailbox::snapshot`]
    /// includes it until a `get` takes it.
    pub fn put(&self, source: &str, key: &str, data: Vec<u8>) -> Result<(), MailboxError> {
        check_name("source", source)?;
        check_name("key", key)?;
        let mut inner = self.lock();
        if inner.paused {
            return Err(MailboxError::Paused);
        }
        if inner.bytes.saturating_add(data.len()) > self.capacity {
            return Err(MailboxError::Full { queued: inner.bytes, messages: inner.messages, capacity: self.capacity });
        }
        inner.push(source, key, data);
        inner.put += 1;
        let waiting = inner.waiting > 0;
        let woken = Self::to_wake(&inner);
        drop(inner);
        if Serving::current() != 0 {
            self.received_by_gets.fetch_add(1, Ordering::Relaxed);
        }
        if waiting {
            self.arrived.notify_all();
        }
        wake_all(woken);
        Ok(())
    }

    /// Takes the oldest message under `key` from `source` (`None`: from any source, the oldest
    /// of all), waiting up to `timeout` for one to arrive (`Duration::ZERO`: only look). Returns
    /// the source and the bytes.
    pub fn get(&self, source: Option<&str>, key: &str, timeout: Duration) -> Result<(String, Vec<u8>), MailboxError> {
        let started = Instant::now();
        // A timeout too large for the clock waits as long as the clock can say (centuries).
        let deadline = started.checked_add(timeout);
        let mut inner = self.lock();
        if let Some(found) = inner.take(source, key) {
            inner.got += 1;
            return Ok(found);
        }
        if !timeout.is_zero() {
            let inbound = self.inbound.read().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(inbound) = inbound {
                drop(inner);
                if let Some(result) = self.lead(&*inbound, source, key, deadline, timeout) {
                    return result;
                }
                inner = self.lock();
            }
        }
        loop {
            if let Some(found) = inner.take(source, key) {
                inner.got += 1;
                return Ok(found);
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(u32::MAX.into()),
            };
            if left.is_zero() {
                return Err(MailboxError::Timeout { key: key.to_owned(), source_name: source_name(source), timeout });
            }
            inner.waiting += 1;
            inner = self.arrived.wait_timeout(inner, left).unwrap_or_else(|p| p.into_inner()).0;
            inner.waiting -= 1;
        }
    }

    /// Waits as a leader ([`crate::waiter`]): reads the peer connections of `inbound` until the
    /// message is here or the deadline passed. `None`: no waiter could be had (wait as before).
    fn lead(
        &self,
        inbound: &dyn Inbound,
        source: Option<&str>,
        key: &str,
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> Option<Result<(String, Vec<u8>), MailboxError>> {
        let waiter = self.waiter(inbound)?;
        let mut inner = self.lock();
        inner.leading.push(Arc::clone(&waiter));
        let result = loop {
            if let Some(found) = inner.take(source, key) {
                inner.got += 1;
                break Some(Ok(found));
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(u32::MAX.into()),
            };
            if left.is_zero() {
                break Some(Err(MailboxError::Timeout {
                    key: key.to_owned(),
                    source_name: source_name(source),
                    timeout,
                }));
            }
            drop(inner);
            let waited = {
                let _serving = Serving::enter(&waiter);
                waiter.wait(left, |token| inbound.serve(token))
            };
            inner = self.lock();
            if let Err(err) = waited {
                tracing::warn!("a get stops reading its frames: {err}");
                break None;
            }
        };
        inner.leading.retain(|w| !Arc::ptr_eq(w, &waiter));
        drop(inner);
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(waiter);
        result
    }

    /// Messages put into it and got from it since the process started.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.put, inner.got)
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.lock().messages
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of messages waiting.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refuses new puts with [`MailboxError::Paused`] until [`Mailbox::resume`]; gets keep
    /// working. Every put that returned `Ok` before this call is in the next snapshot.
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Accepts puts again after [`Mailbox::pause`] (a swap-out that failed).
    pub fn resume(&self) {
        self.lock().paused = false;
    }

    /// Whether puts are refused for a swap.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Encodes every waiting message, oldest first, in the versioned format of the module docs.
    /// The mailbox is unchanged (a failed swap loses nothing); take the snapshot after
    /// [`Mailbox::pause`] so that no put is stored after it.
    pub fn snapshot(&self) -> Vec<u8> {
        let inner = self.lock();
        let mut records: Vec<(u64, &str, &str, &[u8])> = Vec::with_capacity(inner.messages);
        for (key, sources) in &inner.queues {
            for (source, fifo) in sources {
                records.extend(fifo.iter().map(|m| (m.seq, source.as_str(), key.as_str(), m.data.as_slice())));
            }
        }
        records.sort_unstable_by_key(|r| r.0);
        let size = records.iter().map(|r| 12 + r.1.len() + r.2.len() + r.3.len()).sum::<usize>();
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER + size);
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&(records.len() as u64).to_le_bytes());
        for (_, source, key, data) in records {
            // `put` refused names longer than u16::MAX bytes, and a restored snapshot holds none
            // (its lengths are 16-bit).
            #[allow(clippy::cast_possible_truncation)]
            let (source_len, key_len) = (source.len() as u16, key.len() as u16);
            out.extend_from_slice(&source_len.to_le_bytes());
            out.extend_from_slice(source.as_bytes());
            out.extend_from_slice(&key_len.to_le_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    /// Decodes a snapshot into a new mailbox of [`DEFAULT_CAPACITY`] (or more, if the snapshot
    /// holds more: swap-in never loses a message).
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let records = decode(bytes)?;
        let total: usize = records.iter().map(|r| r.2.len()).sum();
        let mailbox = Self::with_capacity(DEFAULT_CAPACITY.max(total));
        {
            let mut inner = mailbox.lock();
            for (source, key, data) in records {
                inner.push(source, key, data.to_vec());
            }
        }
        Ok(mailbox)
    }

    /// Decodes a snapshot into this mailbox, after the messages it already holds (also when
    /// paused, and beyond its capacity: swap-in never loses a message); returns how many
    /// messages it added. Swap-in calls it before the process serves anyone. Nothing is added
    /// if the snapshot does not decode.
    pub fn load(&self, bytes: &[u8]) -> Result<usize, SnapshotError> {
        let records = decode(bytes)?;
        let count = records.len();
        let mut inner = self.lock();
        for (source, key, data) in records {
            inner.push(source, key, data.to_vec());
        }
        let waiting = inner.waiting > 0;
        let woken = Self::to_wake(&inner);
        drop(inner);
        if waiting {
            self.arrived.notify_all();
        }
        wake_all(woken);
        Ok(count)
    }
}

/// Reads `len` bytes at `*at`, advancing it; `None` if fewer remain.
fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(len).filter(|&end| end <= bytes.len())?;
    let out = &bytes[*at..end];
    *at = end;
    Some(out)
}

fn take_u16(bytes: &[u8], at: &mut usize) -> Option<usize> {
    take(bytes, at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
}

fn take_u64(bytes: &[u8], at: &mut usize) -> Option<u64> {
    take(bytes, at, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// One decoded record: source, key, data.
type Record<'a> = (&'a str, &'a str, &'a [u8]);

/// Decodes a snapshot into borrowed records, checking everything first.
fn decode(bytes: &[u8]) -> Result<Vec<Record<'_>>, SnapshotError> {
    if bytes.len() < 4 || bytes[..4] != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let mut at = 4;
    let version = take(bytes, &mut at, 4).ok_or(SnapshotError::Truncated(0))?;
    let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::BadVersion(version));
    }
    let count = take_u64(bytes, &mut at).ok_or(SnapshotError::Truncated(0))?;
    // Each record takes at least 12 bytes: never reserve more than the input can hold.
    let mut records = Vec::with_capacity(usize::try_from(count).unwrap_or(usize::MAX).min((bytes.len() - at) / 12));
    for index in 0..count {
        let truncated = SnapshotError::Truncated(index);
        let source_len = take_u16(bytes, &mut at).ok_or(truncated.clone())?;
        let source = take(bytes, &mut at, source_len).ok_or(truncated.clone())?;
        let key_len = take_u16(bytes, &mut at).ok_or(truncated.clone())?;
        let key = take(bytes, &mut at, key_len).ok_or(truncated.clone())?;
        let data_len = take_u64(bytes, &mut at).ok_or(truncated.clone())?;
        let data = usize::try_from(data_len).ok().and_then(|len| take(bytes, &mut at, len)).ok_or(truncated)?;
        let source = std::str::from_utf8(source).map_err(|_| SnapshotError::NotUtf8(index))?;
        let key = std::str::from_utf8(key).map_err(|_| SnapshotError::NotUtf8(index))?;
        records.push((source, key, data));
    }
    if at != bytes.len() {
        return Err(SnapshotError::Trailing(bytes.len() - at));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    const NOW: Duration = Duration::ZERO;

    /// The empty FIFOs `queues` holds, counted.
    fn empty_fifos(mailbox: &Mailbox) -> usize {
        let inner = mailbox.lock();
        let counted = inner.queues.values().flat_map(|s| s.values()).filter(|f| f.is_empty()).count();
        assert_eq!(counted, inner.empty, "the count of empty FIFOs is what queues holds");
        counted
    }

    #[test]
    fn emptied_fifos_are_reused_in_order_and_dropped_past_the_bound() {
        let mailbox = Mailbox::new();
        for round in 0..3u8 {
            mailbox.put("a", "k", vec![round]).unwrap();
            assert_eq!(mailbox.get(Some("a"), "k", NOW).unwrap(), ("a".into(), vec![round]));
            assert_eq!(empty_fifos(&mailbox), 1, "one FIFO, kept and reused");
        }
        // The oldest of any source, across a reused FIFO and a new one.
        mailbox.put("b", "k", b"first".to_vec()).unwrap();
        mailbox.put("a", "k", b"second".to_vec()).unwrap();
        mailbox.put("b", "k", b"third".to_vec()).unwrap();
        assert_eq!(empty_fifos(&mailbox), 0);
        for (source, data) in [("b", &b"first"[..]), ("a", b"second"), ("b", b"third")] {
            assert_eq!(mailbox.get(None, "k", NOW).unwrap(), (source.into(), data.to_vec()));
        }
        assert_eq!(empty_fifos(&mailbox), 2);
        assert!(mailbox.get(None, "k", NOW).is_err(), "empty FIFOs hold nothing");
        // Many keys used once: the empty FIFOs are dropped once there are more than the bound.
        for i in 0..EMPTY_KEPT {
            let key = format!("once-{i}");
            mailbox.put("a", &key, vec![1]).unwrap();
            mailbox.get(Some("a"), &key, NOW).unwrap();
        }
        let left = empty_fifos(&mailbox);
        assert!(left < 3, "{left} empty FIFOs after the bound was passed");
        assert!(mailbox.lock().queues.len() <= left, "keys without a FIFO are dropped too");
        // And the snapshot carries only messages.
        mailbox.put("a", "k", b"kept".to_vec()).unwrap();
        let restored = Mailbox::restore(&mailbox.snapshot()).unwrap();
        assert_eq!(restored.len(), 1);
    }

    #[test]
    fn same_key_queues_in_order_per_source() {
        let mailbox = Mailbox::new();
        mailbox.put("a", "k", b"1".to_vec()).unwrap();
        mailbox.put("a", "k", b"2".to_vec()).unwrap();
        mailbox.put("b", "k", b"x".to_vec()).unwrap();
        mailbox.put("a", "other", b"o".to_vec()).unwrap();
        assert_eq!(mailbox.len(), 4);
        assert_eq!(mailbox.get(Some("a"), "k", NOW).unwrap(), ("a".into(), b"1".to_vec()));
        assert_eq!(mailbox.get(Some("b"), "k", NOW).unwrap(), ("b".into(), b"x".to_vec()));
        assert_eq!(mailbox.get(None, "k", NOW).unwrap(), ("a".into(), b"2".to_vec()));
        assert!(matches!(mailbox.get(None, "k", NOW), Err(MailboxError::Timeout { .. })));
        assert_eq!(mailbox.get(None, "other", NOW).unwrap().1, b"o");
        assert!(mailbox.is_empty());
        assert_eq!(mailbox.bytes(), 0);
    }

    #[test]
    fn any_source_takes_the_oldest() {
        let mailbox = Mailbox::new();
        for (source, data) in [("b", "1"), ("a", "2"), ("b", "3"), ("c", "4")] {
            mailbox.put(source, "k", data.into()).unwrap();
        }
        let order: Vec<_> = (0..4).map(|_| mailbox.get(None, "k", NOW).unwrap()).collect();
        let expected: Vec<(String, Vec<u8>)> = [("b", "1"), ("a", "2"), ("b", "3"), ("c", "4")]
            .iter()
            .map(|(s, d)| ((*s).into(), d.as_bytes().to_vec()))
            .collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn get_waits_for_a_put_and_times_out_without_one() {
        let mailbox = Arc::new(Mailbox::new());
        let started = Instant::now();
        let err = mailbox.get(Some("a"), "k", Duration::from_millis(50)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(err.to_string(), "no message with key \"k\" from process \"a\" within 50ms");
        let putter = {
            let mailbox = Arc::clone(&mailbox);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                mailbox.put("a", "k", b"late".to_vec()).unwrap();
            })
        };
        assert_eq!(mailbox.get(Some("a"), "k", Duration::from_secs(10)).unwrap().1, b"late");
        putter.join().unwrap();
        // A timeout the clock cannot add still works (it waits, bounded by the clock).
        mailbox.put("a", "k", b"now".to_vec()).unwrap();
        assert_eq!(mailbox.get(None, "k", Duration::MAX).unwrap().1, b"now");
    }

    #[test]
    fn puts_wake_every_waiting_get_and_count_no_waiter_after_they_return() {
        let mailbox = Arc::new(Mailbox::new());
        let getters: Vec<_> = ["k1", "k2"]
            .into_iter()
            .map(|key| {
                let mailbox = Arc::clone(&mailbox);
                std::thread::spawn(move || mailbox.get(Some("a"), key, Duration::from_secs(10)).unwrap().1)
            })
            .collect();
        // Both are waiting before the puts (polled with a deadline): each put must wake its own.
        let deadline = Instant::now() + Duration::from_secs(10);
        while mailbox.lock().waiting < 2 {
            assert!(Instant::now() < deadline, "the gets never waited");
            std::thread::yield_now();
        }
        mailbox.put("a", "k2", b"two".to_vec()).unwrap();
        mailbox.put("a", "k1", b"one".to_vec()).unwrap();
        let got: Vec<_> = getters.into_iter().map(|g| g.join().unwrap()).collect();
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(mailbox.lock().waiting, 0);
        // A get that times out leaves no waiter counted either.
        assert!(mailbox.get(None, "k", Duration::from_millis(1)).is_err());
        assert_eq!(mailbox.lock().waiting, 0);
    }

    #[test]
    fn pause_refuses_puts_and_snapshot_keeps_everything_stored() {
        let mailbox = Mailbox::new();
        mailbox.put("a", "k", b"kept".to_vec()).unwrap();
        mailbox.pause();
        assert_eq!(mailbox.put("a", "k", b"refused".to_vec()), Err(MailboxError::Paused));
        let snapshot = mailbox.snapshot();
        let restored = Mailbox::restore(&snapshot).unwrap();
        assert_eq!(restored.len(), 1);
        assert_eq!(restored.get(None, "k", NOW).unwrap(), ("a".into(), b"kept".to_vec()));
        mailbox.resume();
        mailbox.put("a", "k", b"again".to_vec()).unwrap();
        assert_eq!(mailbox.len(), 2);
        // `load` appends after what is there.
        assert_eq!(mailbox.load(&snapshot), Ok(1));
        let got: Vec<_> = (0..3).map(|_| mailbox.get(Some("a"), "k", NOW).unwrap().1).collect();
        assert_eq!(got, [b"kept".to_vec(), b"again".to_vec(), b"kept".to_vec()]);
    }

    #[test]
    fn capacity_refuses_rather_than_drops() {
        let mailbox = Mailbox::with_capacity(10);
        mailbox.put("a", "k", vec![0; 6]).unwrap();
        let err = mailbox.put("a", "k", vec![0; 6]).unwrap_err();
        assert_eq!(err, MailboxError::Full { queued: 6, messages: 1, capacity: 10 });
        mailbox.get(None, "k", NOW).unwrap();
        mailbox.put("a", "k", vec![0; 10]).unwrap();
    }

    #[test]
    fn long_names_are_refused() {
        let mailbox = Mailbox::new();
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(mailbox.put("a", &long, vec![]), Err(MailboxError::NameTooLong { what: "key", .. })));
        assert!(matches!(mailbox.put(&long, "k", vec![]), Err(MailboxError::NameTooLong { what: "source", .. })));
    }

    #[test]
    fn snapshot_layout_is_as_documented() {
        let mailbox = Mailbox::new();
        mailbox.put("p", "k", b"hi".to_vec()).unwrap();
        let bytes = mailbox.snapshot();
        let expected: Vec<u8> = [
            &b"PRMB"[..],
            &1u32.to_le_bytes(),
            &1u64.to_le_bytes(),
            &1u16.to_le_bytes(),
            b"p",
            &1u16.to_le_bytes(),
            b"k",
            &2u64.to_le_bytes(),
            b"hi",
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(Mailbox::new().snapshot().len(), SNAPSHOT_HEADER);
    }

    #[test]
    fn damaged_snapshots_are_named() {
        let mailbox = Mailbox::new();
        mailbox.put("p", "k", b"hi".to_vec()).unwrap();
        let good = mailbox.snapshot();
        assert_eq!(Mailbox::restore(b"XXXX").unwrap_err(), SnapshotError::BadMagic);
        let mut bad = good.clone();
        bad[4] = 2;
        assert_eq!(Mailbox::restore(&bad).unwrap_err(), SnapshotError::BadVersion(2));
        assert_eq!(Mailbox::restore(&good[..good.len() - 1]).unwrap_err(), SnapshotError::Truncated(0));
        let mut bad = good.clone();
        bad.push(0);
        assert_eq!(Mailbox::restore(&bad).unwrap_err(), SnapshotError::Trailing(1));
        let mut bad = good.clone();
        bad[18] = 0xff;
        assert_eq!(Mailbox::restore(&bad).unwrap_err(), SnapshotError::NotUtf8(0));
        let mut bad = good.clone();
        bad[8] = 0xff; // announces 255 records
        assert_eq!(Mailbox::restore(&bad).unwrap_err(), SnapshotError::Truncated(1));
        let mut huge = good[..16].to_vec();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Mailbox::restore(&huge).unwrap_err(), SnapshotError::Truncated(0));
    }

    fn messages() -> impl Strategy<Value = Vec<(String, String, Vec<u8>)>> {
        let name = prop_oneof![Just(String::new()), "[a-c]", "\\PC{0,12}"];
        proptest::collection::vec((name.clone(), name, proptest::collection::vec(any::<u8>(), 0..64)), 0..40)
    }

    proptest! {
        #[test]
        fn snapshot_round_trips(messages in messages(), taken in 0usize..10) {
            let mailbox = Mailbox::new();
            for (source, key, data) in &messages {
                mailbox.put(source, key, data.clone()).unwrap();
            }
            // Take a few out first, so the snapshot sees queues with holes.
            let mut remaining = messages.clone();
            for (source, key, _) in messages.iter().take(taken) {
                let got = mailbox.get(Some(source), key, NOW).unwrap();
                let at = remaining.iter().position(|(s, k, _)| s == source && k == key).unwrap();
                prop_assert_eq!(&got.1, &remaining.remove(at).2);
            }
            let bytes = mailbox.snapshot();
            let restored = Mailbox::restore(&bytes).unwrap();
            prop_assert_eq!(restored.snapshot(), bytes.clone());
            prop_assert_eq!(restored.len(), remaining.len());
            // Every message comes back, in arrival order.
            for (source, key, data) in &remaining {
                let (from, got) = restored.get(None, key, NOW).unwrap();
                prop_assert_eq!(&from, source);
                prop_assert_eq!(&got, data);
            }
            prop_assert!(restored.is_empty());
            // Every strict prefix fails to decode, and never panics.
            for cut in 0..bytes.len() {
                prop_assert!(Mailbox::restore(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), header in any::<bool>()) {
            let mut input = if header { [&b"PRMB"[..], &1u32.to_le_bytes()].concat() } else { Vec::new() };
            input.extend_from_slice(&bytes);
            if let Ok(mailbox) = Mailbox::restore(&input) {
                prop_assert_eq!(mailbox.snapshot(), input);
            }
        }
    }
}
