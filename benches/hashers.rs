//! The walk's hashing, `bindwatch::fasthash` against the `rustc-hash` crate, counted
//! in instructions (repeatable, unlike time on a shared machine): one case per run,
//! under callgrind, minus the `keys-*` case, which makes the same keys and hashes
//! nothing.
//!
//! ```text
//! cargo bench --bench hashers --no-run
//! for c in keys-{v4,v6,addr,fold,port} {v4,v6,addr,fold,port}-{own,rustc}; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/hashers-* $c
//! done
//! ```
//!
//! Cases: `v4`/`v6` bump a `CounterTable` as the ephemeral tally does (200,000
//! connections over 800 buckets, the tally's key types); `addr` fills and probes a hash
//! map keyed by local `SocketAddr`; `fold` one keyed as the fold index is; `port` one
//! keyed by (protocol, port, address).

use std::hash::{BuildHasher, Hash, Hasher};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bindwatch::fasthash::{CounterTable, FxBuild, Slots};
use bindwatch::model::{Protocol, State, Tri};

/// rustc-hash's slots: its `finish` rotates the product's best (high) bits down to
/// the low ones, so the home is the low bits.
struct RustcSlots;

impl Slots for RustcSlots {
    #[inline]
    fn home<K: Hash>(k: &K, bits: u32) -> usize {
        (rustc_hash::FxBuildHasher.hash_one(k) as usize) & ((1usize << bits) - 1)
    }
}

/// The tally's IPv4 key, hashed as it hashes it (src/tally.rs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct V4Bucket([u32; 3]);

impl Hash for V4Bucket {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(u64::from(self.0[0]) << 32 | u64::from(self.0[1]));
        h.write_u32(self.0[2]);
    }
}

/// The tally's IPv6 key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct V6Bucket(u128, u128, u16);

const CONNECTIONS: u32 = 200_000;
const COUNTERS: usize = 4096;

/// 4 sources x 50 destinations x 4 ports, connection by connection.
fn v4_keys() -> impl Iterator<Item = V4Bucket> {
    (0..CONNECTIONS).map(|i| {
        let src = u32::from(Ipv4Addr::new(10, 0, 0, 1 + (i % 4) as u8));
        let dst = u32::from(Ipv4Addr::new(10, 1, (i / 4 % 50) as u8, 7));
        let port = [80, 443, 5432, 6379][(i / 200 % 4) as usize];
        V4Bucket([src, dst, port])
    })
}

fn v6_keys() -> impl Iterator<Item = V6Bucket> {
    v4_keys().map(|V4Bucket([s, d, p])| {
        let six = |a: u32| {
            u128::from(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                (a >> 16) as u16,
                a as u16,
            ))
        };
        V6Bucket(six(s), six(d), p as u16)
    })
}

/// 50,000 local addresses (a busy port's peers folded away leave these), each
/// looked up ten times.
fn addrs() -> impl Iterator<Item = SocketAddr> {
    (0..500_000u32).map(|i| {
        let n = i % 50_000;
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250) as u8)),
            10_000 + (n % 7) as u16,
        )
    })
}

/// The fold index's key (src/collect/fold.rs): a local address with what a folded
/// socket must share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FoldKey {
    state: State,
    local: SocketAddr,
    uid: u32,
    ifindex: Option<u32>,
    v6only: Tri,
    has_file: bool,
}

fn folds() -> impl Iterator<Item = FoldKey> {
    addrs().map(|local| FoldKey {
        state: State::Established,
        local,
        uid: 1000,
        ifindex: Some(1),
        v6only: Tri::Unknown,
        has_file: true,
    })
}

/// 2,000 (protocol, port, address) keys, each looked up 250 times.
fn ports() -> impl Iterator<Item = (Protocol, u16, IpAddr)> {
    (0..500_000u32).map(|i| {
        let n = i % 2000;
        let proto = if n % 2 == 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        (
            proto,
            1024 + n as u16,
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (n % 3) as u8)),
        )
    })
}

fn table<K: Copy + Default + Eq + Hash, S: Slots>(keys: impl Iterator<Item = K>) -> usize {
    let mut t: CounterTable<K, S> = CounterTable::new(COUNTERS);
    for k in keys {
        black_box(t.bump(black_box(k), COUNTERS));
    }
    t.len()
}

fn map<K: Copy + Eq + Hash, B: BuildHasher + Default>(keys: impl Iterator<Item = K>) -> usize {
    let mut m: std::collections::HashMap<K, usize, B> = Default::default();
    let mut hits = 0;
    for (i, k) in keys.enumerate() {
        match m.get(&black_box(k)) {
            Some(v) => hits += v,
            None => {
                m.insert(k, i);
            }
        }
    }
    black_box(hits);
    m.len()
}

fn main() {
    let case = std::env::args().nth(1).unwrap_or_default();
    let n = match case.as_str() {
        "keys-v4" => v4_keys().map(black_box).count(),
        "keys-v6" => v6_keys().map(black_box).count(),
        "keys-addr" => addrs().map(black_box).count(),
        "keys-fold" => folds().map(black_box).count(),
        "keys-port" => ports().map(black_box).count(),
        "v4-own" => table::<_, bindwatch::fasthash::FxSlots>(v4_keys()),
        "v4-rustc" => table::<_, RustcSlots>(v4_keys()),
        "v6-own" => table::<_, bindwatch::fasthash::FxSlots>(v6_keys()),
        "v6-rustc" => table::<_, RustcSlots>(v6_keys()),
        "addr-own" => map::<_, FxBuild>(addrs()),
        "addr-rustc" => map::<_, rustc_hash::FxBuildHasher>(addrs()),
        "fold-own" => map::<_, FxBuild>(folds()),
        "fold-rustc" => map::<_, rustc_hash::FxBuildHasher>(folds()),
        "port-own" => map::<_, FxBuild>(ports()),
        "port-rustc" => map::<_, rustc_hash::FxBuildHasher>(ports()),
        other => {
            eprintln!("hashers: unknown case {other:?} (see the file's doc)");
            std::process::exit(2);
        }
    };
    println!("{case}: {n}");
}
