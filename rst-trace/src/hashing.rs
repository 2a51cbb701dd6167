//! The hashing of userspace's per-event maps (the link history, the failing-call joins): one
//! keyed multiply-xorshift round per word instead of std's SipHash, and removals that look a
//! key up once. In a reset storm these maps are read and written for every event, and their
//! entries are mostly cold (tens of thousands of them): each extra look-up is a cache miss.

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::{BuildHasher, Hash, Hasher},
};

/// A map keyed by [`KeyedHash`].
pub type FastMap<K, V> = HashMap<K, V, KeyedHash>;

/// Hashes a key in 64-bit words with a per-run random key: std's SipHash over `SocketAddr`'s
/// many small writes showed in a storm's profile (README, Reset storms). The key keeps peers
/// from choosing colliding tuples on purpose.
#[derive(Clone, Copy)]
pub struct KeyedHash(u64);

impl Default for KeyedHash {
    fn default() -> Self {
        Self(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1)
    }
}

impl BuildHasher for KeyedHash {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher(self.0)
    }
}

pub struct KeyedHasher(u64);

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, v: u64) {
        // A multiply-xorshift round (as in wyhash/foldhash) per word, keyed by the seed.
        let m = u128::from(self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Removes `k`'s value if `wanted` says it is the one, with one look-up.
pub fn take_if<K: Eq + Hash, V, S: BuildHasher>(
    map: &mut HashMap<K, V, S>,
    k: K,
    wanted: impl FnOnce(&V) -> bool,
) -> Option<V> {
    match map.entry(k) {
        Entry::Occupied(o) if wanted(o.get()) => Some(o.remove()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_if_removes_only_the_wanted_value() {
        let mut m: FastMap<(u64, u64), u32> = FastMap::default();
        m.insert((1, 2), 7);
        assert_eq!(take_if(&mut m, (1, 2), |v| *v == 8), None);
        assert_eq!(m.get(&(1, 2)), Some(&7));
        assert_eq!(take_if(&mut m, (9, 9), |_| true), None);
        assert_eq!(take_if(&mut m, (1, 2), |v| *v == 7), Some(7));
        assert!(m.is_empty());
    }

    #[test]
    fn keys_that_differ_in_one_word_hash_apart() {
        let h = KeyedHash::default();
        let a = h.hash_one((1u64, 2u64));
        assert_ne!(a, h.hash_one((1u64, 3u64)));
        assert_ne!(a, h.hash_one((2u64, 1u64)));
        assert_eq!(a, h.hash_one((1u64, 2u64)));
    }
}
