//! The BPF socket-iterator source against the kernel's other views.
//!
//! - cross-check: on a quiescent population built for real in a private netns
//!   (listeners, established, TIME_WAIT, FIN_WAIT2 mini-sockets, a FIN_WAIT1 orphan,
//!   bound-only, UDP; IPv4, IPv6, v4-mapped), bpf and netlink sock_diag return the same
//!   (protocol, local, remote, state) set, the same uid/inode/device, timers within a
//!   tick of sock_diag's `idiag_expires`; bpf's flags equal what pidfd_getfd +
//!   getsockopt read for every socket with a file, and every TIME_WAIT carries the
//!   flags its socket was created with.
//! - a narrowed walk (as the agent asks for: listeners first, then the rest narrowed to the
//!   ports of interest) is whole on the wanted ports and leaves the next walk whole; a
//!   whole agent poll with bpf counts and keeps what a netlink poll does.
//!
//! What the binary does with the bpf source (seccomp fallback, flags in `check` and
//! `ports`) is in tests/bpf_commands.rs.
//!
//! Needs root (network namespaces, CAP_BPF/CAP_PERFMON) and a kernel with BTF.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use bindwatch::model::{Protocol, Socket as BwSocket, State, Tri};
use bindwatch::source::netlink::ALL_STATES;
use bindwatch::source::owners::{probe_flags, FdRef};
use bindwatch::source::{dump_all, SocketTable, SourceChoice};
use common::*;

fn a(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// v4-mapped addresses as their IPv4 address: the two ends of a mapped connection
/// name the same address in different families.
fn canon(s: SocketAddr) -> SocketAddr {
    SocketAddr::new(s.ip().to_canonical(), s.port())
}

/// Everything the population holds open, and what each TIME_WAIT must carry.
struct Population {
    fds: Vec<Box<dyn AsRawFd + Send>>,
    /// Local address of a TIME_WAIT / FIN_WAIT2 mini-socket -> (reuseaddr, reuseport,
    /// v6only where IPv6) of the socket it came from.
    tw_flags: BTreeMap<(SocketAddr, SocketAddr), (bool, bool, Option<bool>)>,
}

/// Accepts one connection on `l` from a client bound with the given flags, then
/// closes the side named by `server_first` first: that side ends in TIME_WAIT.
fn time_wait(
    l: &Socket,
    to: SocketAddr,
    client: &Socket,
    server_first: bool,
) -> (SocketAddr, SocketAddr) {
    client.connect(&to.into()).expect("connect");
    let (srv, _) = l.accept().expect("accept");
    let srv_local = srv.local_addr().expect("addr").as_socket().expect("inet");
    let cli_local = client
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    if server_first {
        drop(srv);
        std::thread::sleep(Duration::from_millis(50));
        let _ = client.shutdown(std::net::Shutdown::Both);
    } else {
        let _ = client.shutdown(std::net::Shutdown::Both);
        std::thread::sleep(Duration::from_millis(50));
        drop(srv);
    }
    std::thread::sleep(Duration::from_millis(50));
    (srv_local, cli_local)
}

fn client(addr: SocketAddr, reuseaddr: bool, reuseport: bool) -> Socket {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProto::TCP),
    )
    .expect("socket");
    s.set_reuse_address(reuseaddr).expect("SO_REUSEADDR");
    s.set_reuse_port(reuseport).expect("SO_REUSEPORT");
    if addr.is_ipv6() {
        s.set_only_v6(true).expect("IPV6_V6ONLY");
    }
    s.bind(&addr.into()).expect("bind client");
    s
}

fn build_population() -> Population {
    let mut fds: Vec<Box<dyn AsRawFd + Send>> = Vec::new();
    let mut tw_flags = BTreeMap::new();
    // Listeners: IPv4 with SO_REUSEADDR, IPv6-only with SO_REUSEPORT, a dual-stack
    // [::] (v4-mapped peers), one bound to lo.
    let l4 = tcp_listener(a("127.0.0.1:7001"), true, false, None).expect("l4");
    let l6 = tcp_listener(a("[::1]:7002"), false, true, Some(true)).expect("l6");
    let ld = tcp_listener(a("[::]:7003"), true, false, Some(false)).expect("ld");
    let ldev = tcp_socket(a("127.0.0.1:7004"), false, false, None).expect("ldev");
    ldev.bind_device(Some(b"lo")).expect("SO_BINDTODEVICE");
    ldev.listen(16).expect("listen");

    // Server-side TIME_WAITs carry the listener's flags (accepted sockets inherit them).
    let c = client(a("127.0.0.1:0"), false, false);
    let (s, cl) = time_wait(&l4, a("127.0.0.1:7001"), &c, true);
    tw_flags.insert((canon(s), canon(cl)), (true, false, None));
    fds.push(Box::new(c));
    let c = client(a("[::1]:0"), false, false);
    let (s, cl) = time_wait(&l6, a("[::1]:7002"), &c, true);
    tw_flags.insert((canon(s), canon(cl)), (false, true, Some(true)));
    fds.push(Box::new(c));
    // v4-mapped: an IPv4 client on the dual-stack listener.
    let c = client(a("127.0.0.2:0"), false, false);
    let (s, cl) = time_wait(&ld, a("127.0.0.1:7003"), &c, true);
    tw_flags.insert((canon(s), canon(cl)), (true, false, Some(false)));
    fds.push(Box::new(c));
    // Client-side TIME_WAITs with the client's own flags, one each way.
    let c = client(a("127.0.0.3:7101"), true, true);
    let (s, cl) = time_wait(&l4, a("127.0.0.1:7001"), &c, false);
    drop(c);
    tw_flags.insert((canon(cl), canon(s)), (true, true, None));
    let c = client(a("[::1]:7102"), false, false);
    let (s, cl) = time_wait(&l6, a("[::1]:7002"), &c, false);
    drop(c);
    tw_flags.insert((canon(cl), canon(s)), (false, false, Some(true)));
    std::thread::sleep(Duration::from_millis(100));

    // Established: v4, v6, v4-mapped, and one connection through the lo-bound listener.
    for (l, to) in [
        (&l4, "127.0.0.1:7001"),
        (&l6, "[::1]:7002"),
        (&ld, "127.0.0.1:7003"),
        (&ldev, "127.0.0.1:7004"),
    ] {
        let c = TcpStream::connect(to).expect("connect");
        let (s, _) = l.accept().expect("accept");
        fds.push(Box::new(c));
        fds.push(Box::new(s));
    }

    // A FIN_WAIT2 mini-socket: the server closes, the client never does (its FIN never
    // comes), so the orphan becomes a timewait socket in substate FIN_WAIT2.
    let c = TcpStream::connect("127.0.0.1:7001").expect("connect");
    let (s, _) = l4.accept().expect("accept");
    let inet = |a: socket2::SockAddr| a.as_socket().expect("inet");
    let fw2 = (
        canon(inet(s.local_addr().expect("addr"))),
        canon(inet(s.peer_addr().expect("addr"))),
    );
    drop(s);
    fds.push(Box::new(c));
    tw_flags.insert(fw2, (true, false, None));

    // A FIN_WAIT1 orphan: a full socket without a file, data stuck in its send queue
    // towards a peer that never reads (zero window), so its FIN cannot go out.
    let peer = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProto::TCP)).expect("socket");
    peer.set_recv_buffer_size(4096).expect("rcvbuf");
    peer.connect(&a("127.0.0.1:7003").into()).expect("connect");
    let (s, _) = ld.accept().expect("accept");
    s.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![0u8; 65536];
    let mut queued = 0usize;
    for _ in 0..200 {
        match (&s).write(&chunk) {
            Ok(n) => queued += n,
            Err(_) => break,
        }
    }
    assert!(queued > 0, "data queued towards the zero window");
    drop(s);
    fds.push(Box::new(peer));

    // Bound but not listening: only sock_diag's bind-hash walk sees it.
    let bound = tcp_socket(a("127.0.0.1:7005"), true, false, None).expect("bound");
    fds.push(Box::new(bound));

    // UDP: unconnected v4 with SO_REUSEADDR, v6-only with SO_REUSEPORT, connected v4,
    // connected v4-mapped on a dual-stack socket.
    let u = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("udp");
    u.set_reuse_address(true).expect("reuseaddr");
    u.bind(&a("127.0.0.1:7201").into()).expect("bind");
    fds.push(Box::new(u));
    let u = Socket::new(Domain::IPV6, Type::DGRAM, None).expect("udp");
    u.set_only_v6(true).expect("v6only");
    u.set_reuse_port(true).expect("reuseport");
    u.bind(&a("[::]:7202").into()).expect("bind");
    fds.push(Box::new(u));
    let u = UdpSocket::bind("127.0.0.1:7203").expect("udp");
    u.connect("127.0.0.1:7201").expect("connect");
    fds.push(Box::new(u));
    let u = UdpSocket::bind("[::]:7204").expect("udp");
    u.connect("127.0.0.1:7201").expect("connect");
    fds.push(Box::new(u));

    fds.push(Box::new(l4));
    fds.push(Box::new(l6));
    fds.push(Box::new(ld));
    fds.push(Box::new(ldev));
    // Let every FIN/ACK settle: the population must be quiescent when read.
    std::thread::sleep(Duration::from_millis(300));
    Population { fds, tw_flags }
}

type Key = (Protocol, SocketAddr, SocketAddr, State);

fn key(s: &BwSocket) -> Key {
    (s.protocol, s.local, s.remote, s.state)
}

fn read(choice: SourceChoice) -> BTreeMap<Key, BwSocket> {
    let mut t = SocketTable::open(
        choice,
        std::path::Path::new("/proc"),
        std::path::Path::new("/proc"),
        std::path::Path::new("/"),
    )
    .unwrap_or_else(|e| panic!("opening the {choice:?} source: {e}"));
    let socks = dump_all(&mut t, ALL_STATES).expect("dump");
    let mut m = BTreeMap::new();
    for s in socks {
        let k = key(&s);
        assert!(m.insert(k, s).is_none(), "{choice:?} listed {k:?} twice");
    }
    m
}

#[test]
fn bpf_and_netlink_agree_and_bpf_flags_are_the_sockets_own() {
    in_netns(|| {
        let pop = build_population();
        let t0 = std::time::Instant::now();
        let bpf = read(SourceChoice::Bpf);
        let nl = read(SourceChoice::Netlink);
        // Between the two reads (opening a source included): a timer that ran out
        // meanwhile was re-armed (an orphan's zero-window probe backs off).
        let gap_ms = t0.elapsed().as_millis() as u64;
        let nl_again = read(SourceChoice::Netlink);
        // Quiescent: two netlink reads around the bpf one agree with each other.
        assert_eq!(
            nl.keys().collect::<Vec<_>>(),
            nl_again.keys().collect::<Vec<_>>(),
            "the population moved while it was read"
        );
        let bk: BTreeSet<&Key> = bpf.keys().collect();
        let nk: BTreeSet<&Key> = nl.keys().collect();
        assert_eq!(
            bk,
            nk,
            "only bpf: {:#?}\nonly netlink: {:#?}",
            bk.difference(&nk).collect::<Vec<_>>(),
            nk.difference(&bk).collect::<Vec<_>>()
        );
        let count = |st: State| bpf.keys().filter(|k| k.3 == st).count();
        assert!(count(State::Listen) >= 4, "{bk:#?}");
        assert!(count(State::Established) >= 8);
        assert_eq!(count(State::TimeWait), 5, "{bk:#?}");
        assert_eq!(count(State::FinWait2), 1, "{bk:#?}");
        assert_eq!(count(State::FinWait1), 1, "{bk:#?}");
        // sock_diag reports bound-only sockets (its BOUND_INACTIVE walk) as CLOSE.
        assert_eq!(
            bk.iter()
                .filter(|k| k.0 == Protocol::Tcp && k.3 == State::Close)
                .count(),
            1,
            "{bk:#?}"
        );
        assert!(
            bk.iter()
                .any(|k| k.1.ip().to_string().starts_with("::ffff:127.")),
            "v4-mapped sockets present"
        );

        // Same socket, same facts.
        for (k, b) in &bpf {
            let n = &nl[k];
            assert_eq!((b.uid, b.inode), (n.uid, n.inode), "{k:?}");
            assert_eq!(b.cookie, n.cookie, "{k:?}: socket cookie");
            assert_ne!(b.cookie, 0, "{k:?}: socket cookie");
            assert_eq!(b.ifindex, n.ifindex, "{k:?}: bound device");
            if k.1.is_ipv6() && n.v6only != Tri::Unknown {
                assert_eq!(b.v6only, n.v6only, "{k:?}: IPV6_V6ONLY");
            }
            // Timers of TIME_WAIT and orphans, against sock_diag's idiag_expires.
            if b.inode == 0 && k.0 == Protocol::Tcp {
                let (Some(bt), Some(nt)) = (b.expires_ms, n.expires_ms) else {
                    panic!(
                        "{k:?}: timer bpf {:?} netlink {:?}",
                        b.expires_ms, n.expires_ms
                    );
                };
                // netlink was read after bpf: its timer is a little shorter, unless
                // bpf's ran out in between and an orphan's was armed again.
                let same_arming = bt + 50 >= nt && bt <= nt + 1000 + gap_ms;
                let rearmed = k.3 != State::TimeWait && bt <= gap_ms + 50;
                assert!(
                    same_arming || rearmed,
                    "{k:?}: bpf {bt} ms, sock_diag {nt} ms, {gap_ms} ms apart"
                );
                assert!(bt > 0, "{k:?}: a running timer");
            }
        }
        // Every fd we hold: bpf's flags are what pidfd_getfd + getsockopt read.
        let pid = std::process::id();
        let by_inode: BTreeMap<u64, &BwSocket> = bpf
            .values()
            .filter(|s| s.inode != 0)
            .map(|s| (s.inode, s))
            .collect();
        let mut probed = 0;
        for fd in &pop.fds {
            let ino = inode_of(fd.as_ref());
            let Some(s) = by_inode.get(&ino) else {
                // A client whose connection ended (CLOSE, port released) is in no table.
                assert!(
                    !nl.values().any(|n| n.inode == ino),
                    "fd {} (inode {ino}) seen by netlink, not by bpf",
                    fd.as_raw_fd()
                );
                continue;
            };
            let p = probe_flags(
                FdRef {
                    pid,
                    fd: fd.as_raw_fd(),
                },
                s.local.is_ipv6(),
                Some(ino),
            )
            .expect("pidfd_getfd");
            if s.protocol == Protocol::Tcp && s.state == State::Close {
                // Bound-only: from sock_diag beside the iterator; the collector reads
                // its flags through pidfd, as with netlink.
                continue;
            }
            assert_eq!(s.flags, p.flags, "{s:?}");
            if s.local.is_ipv6() {
                assert_eq!(s.v6only, p.v6only, "{s:?}");
            }
            assert_eq!(s.ifindex, Some(p.ifindex), "{s:?}");
            probed += 1;
        }
        assert!(probed >= 16, "{probed} sockets probed");
        // Sockets without a file: the TIME_WAITs carry their socket's flags; netlink
        // cannot tell them.
        let mut tws = 0;
        for (k, s) in bpf
            .iter()
            .filter(|(k, _)| matches!(k.3, State::TimeWait | State::FinWait2) && bpf[*k].inode == 0)
        {
            let Some(&(ra, rp, v6)) = pop.tw_flags.get(&(canon(k.1), canon(k.2))) else {
                panic!("unexpected mini-socket {k:?}");
            };
            assert_eq!(s.flags.reuseaddr, Tri::from_bool(ra), "{k:?}");
            assert_eq!(s.flags.reuseport, Tri::from_bool(rp), "{k:?}");
            if let Some(v) = v6 {
                assert_eq!(s.v6only, Tri::from_bool(v), "{k:?}");
            }
            assert_eq!(
                nl[k].flags.reuseaddr,
                Tri::Unknown,
                "sock_diag has no flags"
            );
            tws += 1;
        }
        assert_eq!(tws, pop.tw_flags.len());
        // The FIN_WAIT1 orphan is a full socket without a file: its flags are the
        // dual-stack listener's.
        let fw1 = bpf
            .values()
            .find(|s| s.state == State::FinWait1)
            .expect("orphan");
        assert_eq!(fw1.inode, 0);
        assert_eq!(fw1.flags.reuseaddr, Tri::True);
        assert_eq!(fw1.v6only, Tri::False);
        drop(pop);
    });
}

/// `n` loopback connections to a listener of their own on `port`, both ends held; the
/// clients' ports are ephemeral. Enough of them (a few hundred) make a walk go past the
/// first read of the iterator, where a narrowing set after the listeners takes effect.
fn connections(port: u16, n: usize) -> Vec<Box<dyn AsRawFd + Send>> {
    let l = tcp_listener(SocketAddr::from(([127, 0, 0, 1], port)), true, false, None)
        .expect("listener");
    let mut fds: Vec<Box<dyn AsRawFd + Send>> = Vec::new();
    for _ in 0..n {
        let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (s, _) = l.accept().expect("accept");
        fds.push(Box::new(c));
        fds.push(Box::new(s));
    }
    fds.push(Box::new(l));
    fds
}

fn ephemeral_range() -> (u16, u16) {
    bindwatch::source::sysctl::read_port_allocation(std::path::Path::new("/proc"))
        .expect("ip_local_port_range")
        .range
}

/// What the agent's table walk asks of the bpf source: whole sockets on the ports of
/// interest, elsewhere the state and, on ephemeral ports, the addresses (the tally's
/// key), and nothing else. Checked against an unnarrowed walk of the same table; the
/// walk after it is whole again.
#[test]
fn a_narrowed_walk_is_whole_on_wanted_ports_and_leaves_the_next_walk_whole() {
    in_netns(|| {
        let _pop = build_population();
        let _more = connections(7010, 400);
        std::thread::sleep(Duration::from_millis(200));
        let full = read(SourceChoice::Bpf);
        let range = ephemeral_range();
        let mut bits = vec![0u64; 1024];
        for p in [7001u16, 7002] {
            bits[usize::from(p) / 64] |= 1 << (p % 64);
        }
        let mut t = SocketTable::open(
            SourceChoice::Bpf,
            std::path::Path::new("/proc"),
            std::path::Path::new("/proc"),
            std::path::Path::new("/"),
        )
        .expect("bpf source");
        // As the collector does: listeners first, then the rest of the same walk.
        let mut got = Vec::new();
        let rest = t
            .session()
            .listeners(&mut |s| got.push(s.clone()))
            .expect("listeners");
        rest.table(Some((&bits, range)), &mut |s| got.push(s.clone()))
            .expect("narrowed walk");

        // Every TCP socket once, in the same state and family, on the same local port.
        let shape = |s: &BwSocket| (s.local.port(), s.family(), s.state);
        let mut want: Vec<_> = full
            .values()
            .filter(|s| s.protocol == Protocol::Tcp)
            .map(shape)
            .collect();
        let mut have: Vec<_> = got.iter().map(shape).collect();
        want.sort();
        have.sort();
        assert_eq!(
            have, want,
            "the same sockets by (local port, family, state)"
        );

        let mut lite = 0;
        for s in &got {
            // Bound-only sockets come from sock_diag's bind-hash walk, never narrowed.
            if matches!(s.state, State::Close | State::BoundInactive) {
                continue;
            }
            let wanted = matches!(s.local.port(), 7001 | 7002) || s.state == State::Listen;
            let ephemeral = (range.0..=range.1).contains(&s.local.port());
            let whole = full.get(&key(s));
            if wanted {
                let w = whole.unwrap_or_else(|| panic!("{s:?} is not whole"));
                assert_eq!(
                    (s.flags, s.v6only, s.inode, s.uid, s.cookie),
                    (w.flags, w.v6only, w.inode, w.uid, w.cookie),
                    "a socket on a wanted port is whole: {s:?}"
                );
            } else if s.flags.reuseaddr == Tri::Unknown {
                lite += 1;
                assert_eq!(s.inode, 0, "{s:?}");
                if ephemeral {
                    assert!(whole.is_some(), "the tally's key is exact: {s:?}");
                }
            }
        }
        // 400 clients on ephemeral ports, 400 servers on 7010: those past the listeners'
        // first read (the kernel hands over some 450 records per read) are lite.
        assert!(
            lite >= 200,
            "only {lite} lite records: the narrowing did not apply"
        );

        // The narrowing was for that walk only.
        let again = dump_all(&mut t, ALL_STATES).expect("dump");
        assert_eq!(again.len(), full.len());
        for s in &again {
            let w = full
                .get(&key(s))
                .unwrap_or_else(|| panic!("{s:?} not in the first walk"));
            assert_eq!((s.flags, s.inode), (w.flags, w.inode), "whole again: {s:?}");
        }
    });
}

/// One agent poll of this thread's namespace with `source`, owners off.
fn agent_poll(source: SourceChoice) -> bindwatch::model::Snapshot {
    let mut opts = bindwatch::collect::CollectOptions::new(std::path::Path::new("/proc"));
    opts.source = source;
    opts.owners = false;
    let mut c = bindwatch::collect::Collector::new(opts).expect("collector");
    c.poll(&[], &[]).expect("poll")
}

/// ESTABLISHED sockets a poll kept on `port`, folded or not.
fn established_on(snap: &bindwatch::model::Snapshot, port: u16) -> u32 {
    snap.port_sockets
        .iter()
        .filter(|s| s.local.port() == port && s.state == State::Established)
        .map(|s| s.count)
        .sum()
}

/// A whole agent poll (listeners, the narrowed table walk, folding, tally) with the bpf
/// source counts and keeps what the netlink source's poll does.
#[test]
fn a_bpf_poll_counts_and_keeps_what_a_netlink_poll_does() {
    in_netns(|| {
        let _pop = build_population();
        let _more = connections(7011, 400);
        std::thread::sleep(Duration::from_millis(200));
        let b = agent_poll(SourceChoice::Bpf);
        let n = agent_poll(SourceChoice::Netlink);
        assert_eq!(b.counts, n.counts, "state counts");
        assert_eq!(
            b.ephemeral_top, n.ephemeral_top,
            "the fullest ephemeral buckets"
        );
        let shape = |s: &BwSocket| (s.protocol, s.local, s.state, s.count);
        let mut bs: Vec<_> = b.port_sockets.iter().map(shape).collect();
        let mut ns: Vec<_> = n.port_sockets.iter().map(shape).collect();
        bs.sort();
        ns.sort();
        assert_eq!(bs, ns, "sockets on the ports of interest");
        assert_eq!(
            established_on(&b, 7011),
            400,
            "the 400 server sockets, folded or not"
        );
    });
}

/// A poll reads the UDP table between the TCP listeners and the rest of the TCP walk:
/// that read must not disturb the TCP records already read past the listeners. With
/// more UDP sockets than TCP listeners, a shared read buffer would hand UDP records to
/// the TCP walk as TCP sockets and lose as many TCP ones.
#[test]
fn a_udp_read_between_the_listeners_and_the_walk_leaves_the_walk_whole() {
    in_netns(|| {
        let mut udp = Vec::new();
        for i in 0..300u16 {
            udp.push(UdpSocket::bind(("127.0.0.1", 7100 + i)).expect("udp bind"));
        }
        let _conns = connections(7020, 300);
        let b = agent_poll(SourceChoice::Bpf);
        let n = agent_poll(SourceChoice::Netlink);
        assert_eq!(b.counts, n.counts, "state counts");
        assert_eq!(established_on(&b, 7020), 300, "the 300 server sockets");
        drop(udp);
    });
}
