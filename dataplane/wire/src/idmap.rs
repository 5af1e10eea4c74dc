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
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.write_u64(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        self.write_u64(u64::from_le_bytes(tail));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_every_length_are_found_and_tell_apart() {
        let names: Vec<Box<[u8]>> =
            (0..40).map(|n| (0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>().into()).collect();
        let mut map = IdMap::default();
        for (i, name) in names.iter().enumerate() {
            map.insert(name.clone(), i);
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(map.get(&**name), Some(&i));
        }
        assert_eq!(map.get(&b"ab\0"[..]), None, "trailing NULs are not the shorter name");
        let hash = |bytes: &[u8]| std::hash::BuildHasher::hash_one(map.hasher(), bytes);
        assert_ne!(hash(b"echo"), hash(b"echo\0"));
        assert_ne!(hash(b"echo_worker"), hash(b"echo_workes"));
    }
}
