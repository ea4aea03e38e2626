//! A fast hasher for the maps touched once per socket in the table walk (the
//! fold index and the ephemeral tally). SipHash, std's default, costs tens of
//! nanoseconds per small key, which at a million sockets is tens of
//! milliseconds per poll. This is the multiply-rotate hash rustc uses (FxHash).
//!
//! Not collision-resistant: use it only where keys are not chosen by remote
//! peers. The fold index keys on local addresses; the tally keys on outgoing
//! connections' destinations, chosen by local clients, and holds at most a few
//! thousand entries.

use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// `HashMap<K, V, FxBuild>`.
pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, SocketAddr};

    #[test]
    fn distinct_keys_spread() {
        let mut seen = std::collections::HashSet::new();
        for port in 0..4096u16 {
            let k = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
            let mut h = FxHasher::default();
            std::hash::Hash::hash(&k, &mut h);
            seen.insert(h.finish());
        }
        assert_eq!(
            seen.len(),
            4096,
            "no collisions among 4096 ports of one address"
        );
        let mut m: FxHashMap<u32, u32> = FxHashMap::default();
        m.insert(1, 2);
        assert_eq!(m.get(&1), Some(&2));
    }
}
