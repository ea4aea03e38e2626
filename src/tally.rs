//! The ephemeral-port exhaustion tally: outgoing connections counted per
//! (source address, destination, port) bucket during the table walk, in bounded memory.
//! Pure; fed socket by socket from the walk's hot loop.

use std::net::IpAddr;

use crate::fasthash::CounterTable;
use crate::model::{Bucket, Socket, State};

/// An IPv4 [`Bucket`] as plain integers: (source, destination, port). The tally
/// counts one per outgoing connection (hundreds of thousands per walk): a
/// 16-byte slot keeps its table small, and hashing it is two rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct V4Bucket([u32; 3]);

impl std::hash::Hash for V4Bucket {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(u64::from(self.0[0]) << 32 | u64::from(self.0[1]));
        h.write_u32(self.0[2]);
    }
}

/// An IPv6 [`Bucket`]: addresses as integers, port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct V6Bucket(u128, u128, u16);

enum Key {
    V4(V4Bucket),
    V6(V6Bucket),
}

/// Heavy-hitter tally of ephemeral-port buckets in bounded memory (Misra-Gries with
/// `k` counters over both families): exact while there are at most `k` distinct
/// buckets; beyond that every count is low by at most N/k, so the fullest buckets
/// are still found.
#[derive(Debug, Clone)]
pub struct EphemeralTally {
    v4: CounterTable<V4Bucket>,
    v6: CounterTable<V6Bucket>,
    k: usize,
}

impl EphemeralTally {
    pub fn new(k: usize) -> Self {
        let k = k.max(1);
        EphemeralTally {
            v4: CounterTable::new(k),
            v6: CounterTable::new(k),
            k,
        }
    }

    #[inline]
    fn key(s: &Socket) -> Option<Key> {
        if s.state == State::Listen || s.remote.port() == 0 {
            return None;
        }
        Some(match (s.local.ip(), s.remote.ip()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                Key::V4(V4Bucket([a.into(), b.into(), u32::from(s.remote.port())]))
            }
            (a, b) => {
                let bits = |ip: IpAddr| match ip {
                    IpAddr::V4(v) => u128::from(v.to_ipv6_mapped()),
                    IpAddr::V6(v) => u128::from(v),
                };
                Key::V6(V6Bucket(bits(a), bits(b), s.remote.port()))
            }
        })
    }

    /// Starts loading the counter `add(s)` will touch.
    #[inline]
    pub fn prefetch(&self, s: &Socket) {
        match Self::key(s) {
            Some(Key::V4(k)) => self.v4.prefetch(&k),
            Some(Key::V6(k)) => self.v6.prefetch(&k),
            None => {}
        }
    }

    /// Counts a client socket (local port inside the ephemeral range).
    #[inline]
    pub fn add(&mut self, s: &Socket) {
        // Both families share the k counters.
        let room = self.k.saturating_sub(self.v4.len() + self.v6.len());
        let counted = match Self::key(s) {
            Some(Key::V4(k)) => self.v4.bump(k, self.v4.len() + room),
            Some(Key::V6(k)) => self.v6.bump(k, self.v6.len() + room),
            None => true,
        };
        if !counted {
            // Misra-Gries: an item without a counter when none is free lowers all.
            self.v4.decrement_all();
            self.v6.decrement_all();
        }
    }

    /// The `n` fullest buckets, fullest first.
    pub fn top(&self, n: usize) -> Vec<(Bucket, u32)> {
        let v4 = self.v4.iter().map(|(k, c)| {
            let [a, b, p] = k.0;
            ((IpAddr::V4(a.into()), IpAddr::V4(b.into()), p as u16), c)
        });
        let v6 = self
            .v6
            .iter()
            .map(|(k, c)| ((IpAddr::V6(k.0.into()), IpAddr::V6(k.1.into()), k.2), c));
        let mut v: Vec<(Bucket, u32)> = v4.chain(v6).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(state: State, local: &str, remote: &str, inode: u64) -> Socket {
        Socket {
            inode,
            ..Socket::test(state, local, remote)
        }
    }

    #[test]
    fn tally_is_exact_below_k_and_finds_heavy_hitters_above() {
        let mut t = EphemeralTally::new(4);
        for i in 0..50u16 {
            t.add(&sock(
                State::Established,
                &format!("127.0.0.1:{}", 40000 + i),
                "127.0.0.2:80",
                1,
            ));
        }
        t.add(&sock(
            State::Established,
            "127.0.0.1:41000",
            "127.0.0.3:80",
            1,
        ));
        t.add(&sock(State::Listen, "127.0.0.1:41001", "0.0.0.0:0", 1));
        let top = t.top(3);
        assert_eq!(
            top[0],
            (
                (
                    "127.0.0.1".parse().unwrap(),
                    "127.0.0.2".parse().unwrap(),
                    80
                ),
                50
            )
        );
        assert_eq!(top[1].1, 1);
        assert_eq!(top.len(), 2);
        // Many distinct small buckets cannot hide the heavy one.
        let mut t = EphemeralTally::new(4);
        for i in 0..1000u32 {
            let dst = format!("10.{}.{}.1:80", i / 256, i % 256);
            t.add(&sock(State::Established, "127.0.0.1:40000", &dst, 1));
            t.add(&sock(
                State::Established,
                "127.0.0.1:40001",
                "127.0.0.2:80",
                1,
            ));
        }
        assert_eq!(t.top(1)[0].0 .1, "127.0.0.2".parse::<IpAddr>().unwrap());
        // Both families share the k counters; IPv6 buckets keep their addresses,
        // and the heavy IPv6 bucket survives IPv4 churn.
        let mut t = EphemeralTally::new(8);
        for i in 0..2000u32 {
            let dst = format!("10.{}.{}.1:443", i / 256, i % 256);
            t.add(&sock(State::Established, "127.0.0.1:40000", &dst, 1));
            if i % 2 == 0 {
                t.add(&sock(
                    State::Established,
                    "[::1]:40001",
                    "[2001:db8::7]:443",
                    1,
                ));
            }
        }
        let top = t.top(1);
        assert_eq!(
            top[0].0,
            ("::1".parse().unwrap(), "2001:db8::7".parse().unwrap(), 443)
        );
        assert!(top[0].1 > 500, "{top:?}");
    }
}
