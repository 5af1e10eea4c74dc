//! The state store: per-process key-value state that survives between invocations.
//!
//! Keys are UTF-8 strings of at most [`MAX_KEY_LEN`] bytes; values are byte strings shared by
//! reference counting, so `get` lends a value without copying it. Every write records its time.
//! The store is sharded so that concurrent invocations on different keys do not contend. It holds
//! state only: messages between processes live in their own mailbox and never collide with it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
const SHARDS: usize = 16;

/// A value and the time of its last write.
#[derive(Debug, Clone)]
pub struct StateEntry {
    /// The value.
    pub value: Arc<Vec<u8>>,
    /// Time of the write, in nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
}

/// Why a state operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StateError {
    /// The key is not valid UTF-8.
    #[error("state key is not UTF-8")]
    KeyNotUtf8,
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("state key of {0} bytes exceeds {MAX_KEY_LEN} bytes")]
    KeyTooLong(usize),
}

/// Concurrent key-value state of one process.
#[derive(Debug)]
pub struct StateStore {
    shards: Vec<RwLock<HashMap<String, StateEntry>>>,
    hasher: RandomState,
}

impl Default for StateStore {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(), hasher: RandomState::new() }
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Checks a raw key and returns it as a string.
pub fn validate_key(key: &[u8]) -> Result<&str, StateError> {
    if key.len() > MAX_KEY_LEN {
        return Err(StateError::KeyTooLong(key.len()));
    }
    std::str::from_utf8(key).map_err(|_| StateError::KeyNotUtf8)
}

impl StateStore {
    fn shard(&self, key: &str) -> &RwLock<HashMap<String, StateEntry>> {
        // The hash's low bits pick the shard: dropping its high bits (32-bit targets) is meant.
        #[allow(clippy::cast_possible_truncation)]
        let hash = self.hasher.hash_one(key) as usize;
        &self.shards[hash % SHARDS]
    }

    /// Stores `value` under `key`, replacing any value; returns the write's timestamp.
    pub fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StateError> {
        validate_key(key.as_bytes())?;
        let timestamp_ns = now_ns();
        let entry = StateEntry { value: Arc::new(value), timestamp_ns };
        self.shard(key).write().unwrap_or_else(|p| p.into_inner()).insert(key.to_owned(), entry);
        Ok(timestamp_ns)
    }

    /// The value of `key` and its timestamp, without removing it.
    pub fn get(&self, key: &str) -> Option<StateEntry> {
        self.shard(key).read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Removes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        self.shard(key).write().unwrap_or_else(|p| p.into_inner()).remove(key).is_some()
    }

    /// All keys with their timestamps, sorted by key.
    pub fn keys(&self) -> Vec<(String, u64)> {
        let mut keys: Vec<(String, u64)> = self
            .shards
            .iter()
            .flat_map(|s| {
                let shard = s.read().unwrap_or_else(|p| p.into_inner());
                shard.iter().map(|(k, e)| (k.clone(), e.timestamp_ns)).collect::<Vec<_>>()
            })
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Calls `f` with every key and entry, shard by shard (each shard read-locked meanwhile).
    pub fn for_each(&self, mut f: impl FnMut(&str, &StateEntry)) {
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            for (key, entry) in shard.iter() {
                f(key, entry);
            }
        }
    }

    /// Puts back an entry as a snapshot recorded it, timestamp included.
    pub fn restore(&self, key: &str, entry: StateEntry) {
        self.shard(key).write().unwrap_or_else(|p| p.into_inner()).insert(key.to_owned(), entry);
    }

    /// Total bytes of all values.
    pub fn value_bytes(&self) -> u64 {
        let mut total = 0;
        self.for_each(|_, e| total += e.value.len() as u64);
        total
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_keys() {
        let store = StateStore::default();
        let t1 = store.put("a", b"one".to_vec()).unwrap();
        store.put("b", b"two".to_vec()).unwrap();
        let t2 = store.put("a", b"uno".to_vec()).unwrap();
        assert!(t2 >= t1);
        let entry = store.get("a").unwrap();
        assert_eq!(&**entry.value, b"uno");
        assert_eq!(entry.timestamp_ns, t2);
        assert_eq!(store.keys().iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(store.delete("a"));
        assert!(!store.delete("a"));
        assert!(store.get("a").is_none());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(validate_key(&[0xff, 0xfe]), Err(StateError::KeyNotUtf8));
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(StateStore::default().put(&long, vec![]), Err(StateError::KeyTooLong(MAX_KEY_LEN + 1)));
    }

    #[test]
    fn concurrent_writers_do_not_lose_keys() {
        let store = Arc::new(StateStore::default());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        store.put(&format!("{t}-{i}"), vec![t; i % 7]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.len(), 2000);
        assert_eq!(&**store.get("3-6").unwrap().value, &[3u8; 6]);
    }
}
