//! Hash tables for the runtime's hot lookups: [`IdMap`], keyed by small identifiers.

/// A hasher for the small keys of the runtime's hot tables (connection ids, QP numbers, tokens,
/// invocation ids; function names): one multiply per word instead of SipHash, which costs more
/// than the rest of a lookup on the fast path. Keys a peer chooses (tokens, invocation ids) live
/// only in that peer's own tables, bounded by its credits, so colliding them slows only its
/// connection; function names come from the manifest (a client only looks them up).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A hash map with [`IdHasher`].
pub type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
