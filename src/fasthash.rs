//! Fast structures for what the table walk touches once per socket (the fold
//! index and the ephemeral tally): hash maps, a flat counter table, a prefetch.
//! SipHash, std's default, costs tens of nanoseconds per small key, which at a
//! million sockets is tens of milliseconds per poll.
//!
//! Hash maps ([`FxHashMap`]) use the `rustc-hash` crate. The [`CounterTable`] keeps
//! a hasher of its own ([`FxHasher`], the older multiply-rotate FxHash), indexed by
//! its high bits. Measured with `benches/hashers.rs` under callgrind (instructions
//! beyond making the keys, 200,000 bumps or 500,000 look-ups):
//!
//! | case | here | rustc-hash |
//! |---|---|---|
//! | counter table, the tally's IPv4 key | 9.15 M | 9.41 M (+2.9 %) |
//! | counter table, the tally's IPv6 key | 13.35 M | 12.83 M (-3.9 %) |
//! | hash map, the fold index's key | 84.1 M | 75.4 M (-10 %) |
//! | hash map, a bare `SocketAddr` | 727 M | 38.5 M (-95 %) |
//! | hash map, (protocol, port, address) | 31.9 M | 32.9 M (+3.0 %) |
//!
//! In std's hash map, which takes a bucket from the hash's low bits, this hasher's
//! final multiply leaves those bits weak (a `SocketAddr` key collides in long
//! runs); rustc-hash's `finish` rotates the product's strong high bits down to
//! them. The counter table takes the high bits, where this hasher is strong, and
//! there it is the cheaper of the two for IPv4, most of a tally's keys.
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

/// [`FxHasher`] as a `BuildHasher` (the measurement above compares it in maps).
pub type FxBuild = BuildHasherDefault<FxHasher>;
/// The hash maps of the walk and the poll: rustc-hash's (see the module doc).
pub type FxHashMap<K, V> = rustc_hash::FxHashMap<K, V>;

fn fx_hash<K: std::hash::Hash>(k: &K) -> u64 {
    let mut h = FxHasher::default();
    k.hash(&mut h);
    h.finish()
}

/// Asks the CPU to start loading `p`'s cache line. The walk decodes a socket a
/// few messages before it folds and tallies it, and prefetches what that will
/// touch: the kernel's walk between two receive buffers evicts our tables from
/// the caches, so without this every socket waits for memory.
#[inline(always)]
pub fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults and has no visible effect.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (p as *const T).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Counters keyed by `K` in one flat open-addressed array (no tombstones): what a
/// heavy-hitter tally needs, with a slot address that can be prefetched before
/// the count. Grows by doubling, from a small start, up to room for `max` keys at
/// a load of at most one half, so an unused table costs next to nothing.
#[derive(Debug, Clone)]
pub struct CounterTable<K, S = FxSlots> {
    /// (key, count); count 0 marks a free slot.
    slots: Vec<(K, u32)>,
    len: usize,
    shift: u32,
    /// Slots needed for `max` keys.
    cap_max: usize,
    slotting: std::marker::PhantomData<S>,
}

/// Where a [`CounterTable`] puts a key: its home among `1 << bits` slots (`bits` is
/// 1 to 63), from the hash bits that spread best.
pub trait Slots {
    fn home<K: std::hash::Hash>(k: &K, bits: u32) -> usize;
}

/// [`FxHasher`]'s slots: a multiplicative hash's best bits are its high ones.
#[derive(Debug, Clone, Copy)]
pub struct FxSlots;

impl Slots for FxSlots {
    #[inline]
    fn home<K: std::hash::Hash>(k: &K, bits: u32) -> usize {
        (fx_hash(k) >> (64 - bits)) as usize
    }
}

const START_SLOTS: usize = 64;

impl<K: Copy + Default + Eq + std::hash::Hash, S: Slots> CounterTable<K, S> {
    pub fn new(max: usize) -> Self {
        let cap_max = (max.max(1) * 2).next_power_of_two();
        let mut t = CounterTable {
            slots: Vec::new(),
            len: 0,
            shift: 0,
            cap_max,
            slotting: std::marker::PhantomData,
        };
        t.resize(START_SLOTS.min(cap_max));
        t
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn home(&self, k: &K) -> usize {
        S::home(k, 64 - self.shift)
    }

    #[inline]
    pub fn prefetch(&self, k: &K) {
        prefetch(&self.slots[self.home(k)]);
    }

    /// Re-lays the table out in `cap` slots (a power of two, more than `len`).
    fn resize(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, vec![(K::default(), 0); cap]);
        self.shift = 64 - cap.trailing_zeros();
        let mask = cap - 1;
        for (k, c) in old.into_iter().filter(|(_, c)| *c > 0) {
            let mut i = self.home(&k);
            while self.slots[i].1 != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = (k, c);
        }
    }

    /// Adds one to `k`; a new key takes a slot only while fewer than `max` are
    /// used. False when `k` has no counter and `max` are used.
    #[inline]
    pub fn bump(&mut self, k: K, max: usize) -> bool {
        loop {
            let mask = self.slots.len() - 1;
            let mut i = self.home(&k);
            loop {
                let slot = &mut self.slots[i];
                if slot.0 == k && slot.1 != 0 {
                    slot.1 += 1;
                    return true;
                }
                if slot.1 == 0 {
                    break;
                }
                i = (i + 1) & mask;
            }
            if self.len >= max {
                return false;
            }
            // Keep the load at one half: grow first, then place the key.
            if (self.len + 1) * 2 > self.slots.len() {
                if self.slots.len() >= self.cap_max {
                    return false;
                }
                self.resize(self.slots.len() * 2);
                continue;
            }
            self.slots[i] = (k, 1);
            self.len += 1;
            return true;
        }
    }

    /// Every count drops by one; keys reaching zero free their slots.
    pub fn decrement_all(&mut self) {
        for s in &mut self.slots {
            s.1 = s.1.saturating_sub(1);
        }
        self.len = self.slots.iter().filter(|(_, c)| *c > 0).count();
        // Re-lay the survivors out: freed slots in the middle of a probe run
        // would otherwise hide the keys after them.
        self.resize(self.slots.len());
    }

    pub fn iter(&self) -> impl Iterator<Item = (K, u32)> + '_ {
        self.slots.iter().filter(|(_, c)| *c > 0).copied()
    }
}

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

    #[test]
    fn counter_table_counts_bounds_and_decrements() {
        let mut t: CounterTable<u32> = CounterTable::new(4);
        for (k, n) in [(7u32, 3), (9, 1), (11, 2), (13, 5)] {
            for _ in 0..n {
                assert!(t.bump(k, 4));
            }
        }
        assert_eq!(t.len(), 4);
        assert!(!t.bump(15, 4), "no fifth key while four are counted");
        assert!(t.bump(7, 4), "a counted key still counts");
        let mut v: Vec<(u32, u32)> = t.iter().collect();
        v.sort();
        assert_eq!(v, vec![(7, 4), (9, 1), (11, 2), (13, 5)]);
        t.decrement_all();
        let mut v: Vec<(u32, u32)> = t.iter().collect();
        v.sort();
        assert_eq!(v, vec![(7, 3), (11, 1), (13, 4)]);
        assert_eq!(t.len(), 3);
        assert!(t.bump(15, 4), "the freed slot takes a new key");
        // Keys that collide in the high bits, in a table that grows from its
        // small start, each keep their own count.
        let mut t: CounterTable<u64> = CounterTable::new(300);
        for round in 0..3u32 {
            for k in 0..300u64 {
                assert!(t.bump(k << 40, 300));
            }
            assert_eq!(t.len(), 300);
            assert!(t.iter().all(|(_, c)| c == round + 1));
        }
    }
}
