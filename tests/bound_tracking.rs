//! The bpf source's reuse of its bound-only dump against the kernel: in a private
//! network namespace, TCP sockets of both families go through bind (explicit port and
//! port 0, with and without SO_REUSEADDR, on a loopback and the unspecified address),
//! listen, shutdown of a listener, connect (accepted and refused), connect(AF_UNSPEC),
//! close (also with SO_LINGER 0), SO_BINDTODEVICE, and accepted sockets disconnected
//! by connect(AF_UNSPEC) or reset by their peer.
//!
//! One step at a time, the kernel's bound-only set (a sock_diag dump) before and after
//! the step is compared: where it changed, the next poll must not reuse its last dump
//! (a counted fallback), and what it hands on must equal the kernel's set; where it did
//! not and nothing counted (a UDP bind, an unrelated option), the poll reuses. Then
//! thousands of sockets churn in bursts; after each, the polls settle, and the set a
//! reusing poll hands on must equal the kernel's. Needs root (namespaces, BPF, the
//! cgroup v2 root).

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bindwatch::model::{BoundTracking, Protocol, Socket as BwSocket, State};
use bindwatch::source::boundtrack;
use bindwatch::source::netlink::{self, NetlinkDiag, Request};
use bindwatch::source::{SocketTable, SourceChoice};
use socket2::{Domain, SockAddr, Socket, Type};

type Key = (SocketAddr, u8, Option<u32>, u64, u64);

fn key(s: &BwSocket) -> Key {
    (s.local, s.state as u8, s.ifindex, s.inode, s.cookie)
}

fn keys(v: &[BwSocket]) -> BTreeSet<Key> {
    v.iter().map(key).collect()
}

/// The kernel's view: a sock_diag dump of the bound-only TCP sockets.
fn dump(nl: &mut NetlinkDiag) -> BTreeSet<Key> {
    let mut out = Vec::new();
    nl.dump(
        Request {
            protocol: Protocol::Tcp,
            family: libc::AF_UNSPEC as u8,
            states: netlink::state_bit(State::BoundInactive),
        },
        &mut |s| out.push(s.clone()),
    )
    .expect("sock_diag bound-only dump");
    keys(&out)
}

fn counters() -> BoundTracking {
    boundtrack::counters().expect("tracking counters")
}

/// One agent poll of the table: its bound-only sockets, and whether it reused the
/// last dump (no fallback, no reconciliation counted).
fn poll(t: &mut SocketTable) -> (BTreeSet<Key>, bool) {
    let before = counters();
    let mut out = Vec::new();
    let listened = t.session().listeners(&mut |_| {}).expect("listeners");
    listened
        .table(None, &mut |s| {
            if matches!(s.state, State::Close | State::BoundInactive) {
                out.push(s.clone())
            }
        })
        .expect("table");
    let after = counters();
    let reused =
        after.fallbacks == before.fallbacks && after.reconciliations == before.reconciliations;
    (keys(&out), reused)
}

/// Polls until one reuses (no activity meanwhile: two dumps at most); that poll's set.
fn settle(t: &mut SocketTable) -> BTreeSet<Key> {
    for _ in 0..4 {
        let (set, reused) = poll(t);
        if reused {
            return set;
        }
    }
    panic!(
        "no poll reused its dump in 4 polls without activity: {:?}",
        counters()
    );
}

fn tcp(v6: bool) -> Socket {
    let d = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    Socket::new(d, Type::STREAM, None).expect("socket")
}

fn lo(v6: bool, port: u16) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    SocketAddr::new(ip, port)
}

/// connect(AF_UNSPEC): disconnects the socket (tcp_disconnect).
fn disconnect(s: &Socket) {
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC, of its own size.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_UNSPEC as u16;
    // SAFETY: a valid socket fd and a pointer to a live sockaddr of that length.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            &sa,
            std::mem::size_of::<libc::sockaddr>() as u32,
        )
    };
    assert_eq!(
        r,
        0,
        "connect(AF_UNSPEC): {}",
        std::io::Error::last_os_error()
    );
}

/// A small deterministic generator: every run churns the same way.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn any(v6: bool, port: u16) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    SocketAddr::new(ip, port)
}

/// Kinds of [`churn_step`].
const KINDS: u64 = 17;

/// One step of churn of kind `pick` (below [`KINDS`]); returns what it did. Sockets
/// are pushed to `live` (kept open for later steps) or dropped at once; ports from
/// `next_port` are unique here.
fn churn_step(
    rng: &mut Lcg,
    pick: u64,
    v6: bool,
    live: &mut Vec<Socket>,
    next_port: &mut u16,
    refused_port: u16,
) -> &'static str {
    let reuse = rng.next(2) == 1;
    let mut port = || {
        *next_port += 1;
        *next_port
    };
    let s = tcp(v6);
    s.set_reuse_address(reuse).expect("SO_REUSEADDR");
    match pick {
        0 => {
            s.bind(&lo(v6, port()).into()).expect("bind");
            live.push(s);
            "bind, explicit port"
        }
        1 => {
            s.bind(&lo(v6, 0).into()).expect("bind 0");
            live.push(s);
            "bind, port 0"
        }
        2 | 3 => {
            let p = if pick == 2 { port() } else { 0 };
            s.bind(&lo(v6, p).into()).expect("bind");
            s.listen(16).expect("listen");
            s.shutdown(std::net::Shutdown::Both)
                .expect("shutdown listener");
            live.push(s);
            if pick == 2 {
                "listen, shutdown (explicit port: kept)"
            } else {
                "listen, shutdown (port 0: released)"
            }
        }
        4 => {
            s.bind(&lo(v6, port()).into()).expect("bind");
            s.listen(16).expect("listen");
            live.push(s);
            "listen"
        }
        5..=7 | 16 => {
            // On the unspecified address the refused connect gives the socket a
            // source address that connect(AF_UNSPEC) takes back.
            let on_any = pick == 6 || pick == 16;
            let a = if on_any {
                any(v6, port())
            } else {
                lo(v6, port())
            };
            s.bind(&a.into()).expect("bind");
            let e = s
                .connect(&SockAddr::from(lo(v6, refused_port)))
                .expect_err("connect to a closed port");
            assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
            let what = match pick {
                5 => "bind, refused connect",
                16 => "bind the unspecified address, refused connect",
                6 => {
                    disconnect(&s);
                    "bind the unspecified address, refused connect, connect(AF_UNSPEC)"
                }
                _ => {
                    disconnect(&s);
                    "bind, refused connect, connect(AF_UNSPEC)"
                }
            };
            live.push(s);
            what
        }
        8..=11 => {
            let l = tcp(v6);
            l.bind(&lo(v6, port()).into()).expect("bind listener");
            l.listen(16).expect("listen");
            let addr = l.local_addr().expect("addr");
            if rng.next(2) == 0 {
                s.bind(&lo(v6, port()).into()).expect("bind client");
            }
            s.connect(&addr).expect("connect");
            let (child, _) = l.accept().expect("accept");
            let keep_listener = rng.next(2) == 0;
            let what = match pick {
                8 => {
                    disconnect(&s);
                    live.push(s);
                    live.push(child);
                    "connect, the client disconnects (the child is reset)"
                }
                9 => {
                    disconnect(&child);
                    live.push(s);
                    live.push(child);
                    "connect, the accepted child disconnects"
                }
                10 => {
                    s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
                    drop(s);
                    live.push(child);
                    "connect, the client resets (linger 0, close)"
                }
                _ => {
                    drop(child);
                    drop(s);
                    "connect, both ends close"
                }
            };
            if keep_listener {
                live.push(l);
            }
            what
        }
        12 => {
            s.bind(&lo(v6, port()).into()).expect("bind");
            "bind, close"
        }
        13 => {
            s.bind(&lo(v6, 0).into()).expect("bind 0");
            s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
            "bind, close with linger 0"
        }
        14 => {
            s.bind(&any(v6, port()).into()).expect("bind");
            s.bind_device(Some(b"lo")).expect("SO_BINDTODEVICE");
            live.push(s);
            "bind, SO_BINDTODEVICE"
        }
        _ => {
            if live.is_empty() {
                "nothing to close"
            } else {
                let i = rng.next(live.len() as u64) as usize;
                live.swap_remove(i);
                "close an older socket"
            }
        }
    }
}

#[test]
fn each_change_of_the_bound_only_set_is_counted_and_a_reused_set_is_the_kernels() {
    common::in_netns(|| {
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "0").expect("tcp_tw_reuse");
        let mut nl = NetlinkDiag::open().expect("sock_diag");
        if let Err(e) = boundtrack::shared() {
            panic!("the bound-only change counter did not load: {e}");
        }
        let mut t = SocketTable::open(
            SourceChoice::Bpf,
            std::path::Path::new("/proc/thread-self"),
            std::path::Path::new("/proc"),
            std::path::Path::new("/"),
        )
        .expect("the bpf source");
        // No reconciliation here: every dump a poll makes is a counted fallback.
        t.track_bound_only(Duration::from_secs(3600));
        let c0 = counters();
        let (first, reused) = poll(&mut t);
        assert!(!reused, "the first poll dumps");
        assert_eq!(counters().fallbacks[0] - c0.fallbacks[0], 1, "start");
        assert_eq!(first, dump(&mut nl));
        assert_eq!(settle(&mut t), dump(&mut nl));

        let mut rng = Lcg(0x5eed);
        let mut live: Vec<Socket> = Vec::new();
        let mut next_port = 21000u16;
        let refused_port = 20999;
        let started = Instant::now();
        let (mut changed_steps, mut quiet_steps) = (0usize, 0usize);

        // One step at a time: every kind, in both families.
        let mut kernel = dump(&mut nl);
        for step in 0..KINDS * 2 {
            let v6 = (step / KINDS) % 2 == 1;
            let what = churn_step(
                &mut rng,
                step % KINDS,
                v6,
                &mut live,
                &mut next_port,
                refused_port,
            );
            let after = dump(&mut nl);
            let (polled, reused) = poll(&mut t);
            if kernel != after {
                changed_steps += 1;
                assert!(
                    !reused,
                    "step {step} ({what}, v6 {v6}) changed the kernel's bound-only set but \
                     the poll reused its last dump: before {kernel:?}, after {after:?}"
                );
            }
            if reused {
                quiet_steps += 1;
            }
            assert_eq!(
                polled, after,
                "step {step} ({what}, v6 {v6}): the poll's set"
            );
            assert_eq!(
                settle(&mut t),
                after,
                "step {step} ({what}, v6 {v6}): the reused set"
            );
            kernel = after;
        }
        assert!(
            changed_steps >= 20,
            "steps that changed the set: {changed_steps}"
        );
        eprintln!("{changed_steps} steps changed the set, {quiet_steps} polls reused");

        // Quiet steps the counter must not see: a UDP bind and an unrelated option on a
        // bound-only socket. (The check can fail: a counter that moved for nothing would
        // make these polls dump.)
        let bound = tcp(false);
        bound.bind(&lo(false, 20998).into()).expect("bind");
        settle(&mut t);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        bound.set_keepalive(true).expect("SO_KEEPALIVE");
        let (set, reused) = poll(&mut t);
        assert!(reused, "a UDP bind or SO_KEEPALIVE counted as a change");
        assert_eq!(set, dump(&mut nl));
        // A bound device set on a settled bound-only socket changes what the dump
        // reports of it, with no bind or state change: counted all the same.
        bound.bind_device(Some(b"lo")).expect("SO_BINDTODEVICE");
        let after = dump(&mut nl);
        assert_ne!(set, after, "the device shows in the dump");
        let (polled, reused) = poll(&mut t);
        assert!(!reused, "SO_BINDTODEVICE was not counted");
        assert_eq!(polled, after);
        assert_eq!(settle(&mut t), after);
        drop((udp, bound));

        // Bursts: thousands of sockets.
        let mut made = 0usize;
        for burst in 0..6 {
            for _ in 0..500 {
                let (pick, v6) = (rng.next(KINDS), rng.next(2) == 1);
                churn_step(&mut rng, pick, v6, &mut live, &mut next_port, refused_port);
                made += 1;
            }
            // Bounded: keep this process's fds far below its hard limit.
            while live.len() > 1500 {
                let i = rng.next(live.len() as u64) as usize;
                live.swap_remove(i);
            }
            let (_, reused) = poll(&mut t);
            assert!(!reused, "burst {burst}: a burst's first poll dumps");
            assert_eq!(settle(&mut t), dump(&mut nl), "burst {burst}: reused set");
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "churn bounded in time"
            );
        }
        assert!(made >= 3000, "churned {made} sockets");
        let end = counters();
        assert_eq!(end.fallbacks[2], c0.fallbacks[2], "lost marks: {end:?}");
        assert_eq!(end.fallbacks[4], c0.fallbacks[4], "unavailable: {end:?}");
        drop(live);

        // A table that reconciles at every poll that could reuse: no drift.
        let mut r = SocketTable::open(
            SourceChoice::Bpf,
            std::path::Path::new("/proc/thread-self"),
            std::path::Path::new("/proc"),
            std::path::Path::new("/"),
        )
        .expect("the bpf source");
        r.track_bound_only(Duration::ZERO);
        let held = tcp(true);
        held.bind(&lo(true, 20997).into()).expect("bind");
        let c1 = counters();
        for _ in 0..5 {
            let (set, _) = poll(&mut r);
            assert_eq!(set, dump(&mut nl));
        }
        let c2 = counters();
        assert!(
            c2.reconciliations > c1.reconciliations,
            "reconciled: {c2:?}"
        );
        assert_eq!(
            (c2.missed, c2.extra),
            (c1.missed, c1.extra),
            "drift: {c2:?}"
        );
        drop(held);
    });
}

/// The agent (`serve --source bpf`) in its own namespace: its bound-only count follows
/// a bind and a close, the fallbacks are counted, and polls with nothing changed reuse
/// the last dump (the fallback counters stand still while polls go on).
#[test]
fn the_agent_counts_fallbacks_and_reuses_its_dump_while_nothing_changes() {
    common::in_netns(|| {
        let srv = common::Server::start(9411, &["--source", "bpf", "--poll.interval", "200ms"]);
        let close = |m: &common::Metrics| {
            m.get(
                "bindwatch_sockets",
                &[("protocol", "tcp"), ("family", "ipv4"), ("state", "close")],
            )
        };
        let fallback = |m: &common::Metrics, reason: &str| {
            m.get(
                "bindwatch_bound_tracking_fallbacks_total",
                &[("reason", reason)],
            )
            .unwrap_or(-1.0)
        };
        let m = srv.metrics_after_polls(3);
        assert_eq!(fallback(&m, "start"), 1.0, "{}", m.text);
        assert_eq!(fallback(&m, "unavailable"), 0.0, "{}", m.text);
        assert_eq!(close(&m), Some(0.0), "no bound-only socket yet");

        let s = tcp(false);
        s.bind(&lo(false, 20996).into()).expect("bind");
        let m = srv.metrics_until(Duration::from_secs(20), |m| close(m) == Some(1.0));
        assert_eq!(
            close(&m),
            Some(1.0),
            "the bound-only socket counted: {}",
            m.text
        );
        assert!(fallback(&m, "changed") >= 1.0, "{}", m.text);

        // Nothing changes: after the settling dump, polls reuse it.
        let settled = srv.metrics_after_polls(3);
        let later = srv.metrics_after_polls(5);
        assert_eq!(close(&later), Some(1.0));
        for reason in BoundTracking::REASONS {
            assert_eq!(
                fallback(&later, reason),
                fallback(&settled, reason),
                "{reason}: polls without a change dumped"
            );
        }

        drop(s);
        let m = srv.metrics_until(Duration::from_secs(20), |m| close(m) == Some(0.0));
        assert_eq!(
            close(&m),
            Some(0.0),
            "the closed socket is gone: {}",
            m.text
        );
        assert!(fallback(&m, "changed") > fallback(&later, "changed"));
        drop(srv);
    });
}
