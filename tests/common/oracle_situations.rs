//! The socket situations the kernel-as-oracle suite (tests/rebind_oracle.rs) judges: each
//! builds, for real, what may hold the service port [`P`] (listeners, TIME_WAITs, orphans,
//! clients, SO_REUSEPORT groups of two users, sockets bound to a device, UDP), and keeps it
//! alive in a [`Held`] until dropped. Each runs in a network namespace of its own.

use std::net::TcpStream;
use std::time::Duration;

use super::oracle::*;
use super::*;

/// The extra dimension a situation is probed along.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Extra {
    None,
    /// New socket without SO_REUSEPORT, with it as uid 0, with it as [`OTHER_UID`].
    ReusePort,
    /// New socket without a device, bound to `lo`, bound to `d0`.
    Device,
}

/// What keeps a situation alive: sockets, streams, child processes (dropped at the end).
pub struct Held {
    pub keep: Vec<Box<dyn std::any::Any>>,
    /// The port the situation is about (may differ from the planned one for autobind).
    pub port: u16,
    /// Processes that hold the situation's sockets: this one and its child processes.
    pub holders: Vec<u32>,
}

impl Held {
    pub fn new(port: u16) -> Self {
        Held {
            keep: Vec::new(),
            port,
            holders: vec![std::process::id()],
        }
    }
    pub fn hold<T: 'static>(mut self, t: T) -> Self {
        self.keep.push(Box::new(t));
        self
    }
    pub fn hold_child(mut self, c: ChildGuard) -> Self {
        self.holders.push(c.0.id());
        self.hold(c)
    }
}

#[derive(Clone, Copy)]
pub struct Situation {
    pub name: &'static str,
    pub proto: Proto,
    pub extra: Extra,
    pub build: fn() -> Held,
}

// ---- the situations -------------------------------------------------------------------

pub fn s_empty() -> Held {
    Held::new(P)
}
pub fn s_listen_v4_any() -> Held {
    Held::new(P).hold(listener("0.0.0.0", P, false, None))
}
pub fn s_listen_v4_any_reuse() -> Held {
    Held::new(P).hold(listener("0.0.0.0", P, true, None))
}
pub fn s_listen_v4_lo() -> Held {
    Held::new(P).hold(listener("127.0.0.1", P, false, None))
}
pub fn s_listen_v4_lo_reuse() -> Held {
    Held::new(P).hold(listener("127.0.0.1", P, true, None))
}
pub fn s_listen_v6_dual() -> Held {
    Held::new(P).hold(listener("::", P, false, Some(false)))
}
pub fn s_listen_v6_dual_reuse() -> Held {
    Held::new(P).hold(listener("::", P, true, Some(false)))
}
pub fn s_listen_v6_v6only() -> Held {
    Held::new(P).hold(listener("::", P, false, Some(true)))
}
pub fn s_listen_v6_lo() -> Held {
    Held::new(P).hold(listener("::1", P, false, None))
}
pub fn s_listen_mapped() -> Held {
    Held::new(P).hold(listener("::ffff:127.0.0.1", P, false, Some(false)))
}

/// Server-side TIME_WAIT on `ip`:P made through a listener with `reuseaddr`; the
/// listener is kept (`keep_listener`) or closed.
pub fn time_wait(
    ip: &str,
    connect_to: &str,
    reuseaddr: bool,
    reuseport: bool,
    keep_listener: bool,
) -> Held {
    let l = tcp_listener(
        addr(ip, P),
        reuseaddr,
        reuseport,
        ip.contains(':').then_some(false),
    )
    .expect("listener");
    tw_server(&l, addr(connect_to, P));
    assert_state("time-wait", P);
    let h = Held::new(P);
    if keep_listener {
        h.hold(l)
    } else {
        close_now(l);
        h
    }
}
pub fn s_tw_listening() -> Held {
    time_wait("127.0.0.1", "127.0.0.1", false, false, true)
}
pub fn s_tw_closed() -> Held {
    time_wait("127.0.0.1", "127.0.0.1", false, false, false)
}
pub fn s_tw_closed_reuse() -> Held {
    time_wait("127.0.0.1", "127.0.0.1", true, false, false)
}
pub fn s_tw_any_closed_reuse() -> Held {
    time_wait("0.0.0.0", "127.0.0.1", true, false, false)
}
pub fn s_tw_v6_dual_closed() -> Held {
    time_wait("::", "::1", false, false, false)
}
pub fn s_tw_v6_dual_listening() -> Held {
    time_wait("::", "::1", false, false, true)
}
pub fn s_tw_mapped_dual_closed() -> Held {
    time_wait("::", "127.0.0.1", false, false, false)
}
pub fn s_tw_reuseport_listening() -> Held {
    time_wait("127.0.0.1", "127.0.0.1", false, true, true)
}
pub fn s_tw_reuseport_closed() -> Held {
    time_wait("127.0.0.1", "127.0.0.1", false, true, false)
}

/// Server closes first, the client never closes: the server side becomes an orphaned
/// FIN_WAIT2 once its socket is closed; the listener is closed too.
pub fn fin_wait2_orphan(reuseaddr: bool) -> Held {
    let l = listener("127.0.0.1", P, reuseaddr, None);
    let c = TcpStream::connect(addr("127.0.0.1", P)).expect("connect");
    let (s, _) = l.accept().expect("accept");
    close_now(s);
    close_now(l);
    assert_state("fin-wait-2", P);
    assert_eq!(ss_count("listening", P), 0);
    Held::new(P).hold(c)
}
pub fn s_fw2_orphan() -> Held {
    fin_wait2_orphan(false)
}
pub fn s_fw2_orphan_reuse() -> Held {
    fin_wait2_orphan(true)
}

/// The client closes first and the server keeps its accepted socket: CLOSE_WAIT on P.
pub fn close_wait(reuseaddr: bool) -> Held {
    let l = listener("127.0.0.1", P, reuseaddr, None);
    let c = TcpStream::connect(addr("127.0.0.1", P)).expect("connect");
    let (s, _) = l.accept().expect("accept");
    close_now(c);
    close_now(l);
    assert_state("close-wait", P);
    Held::new(P).hold(s)
}
pub fn s_close_wait() -> Held {
    close_wait(false)
}
pub fn s_close_wait_reuse() -> Held {
    close_wait(true)
}

/// Another process holds an accepted (ESTABLISHED) connection on P; its listener is closed.
pub fn established_other(reuseaddr: bool) -> Held {
    let code = format!(
        "import socket,time\n\
         l=socket.socket()\n\
         l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,{})\n\
         l.bind(('127.0.0.1',{P})); l.listen()\n\
         c=socket.create_connection(('127.0.0.1',{P})); s,_=l.accept(); l.close()\n\
         print('ready',flush=True); time.sleep(300)\n",
        u8::from(reuseaddr)
    );
    let child = python(&code, None);
    assert_state("established", P);
    assert_eq!(ss_count("listening", P), 0);
    Held::new(P).hold_child(child)
}
pub fn s_established_other() -> Held {
    established_other(false)
}
pub fn s_established_other_reuse() -> Held {
    established_other(true)
}

pub fn s_bound_only() -> Held {
    Held::new(P).hold(bound_only("127.0.0.1", P, false, None))
}
pub fn s_bound_only_reuse() -> Held {
    Held::new(P).hold(bound_only("0.0.0.0", P, true, None))
}
pub fn s_bound_only_v6only() -> Held {
    Held::new(P).hold(bound_only("::", P, false, Some(true)))
}

/// A client explicitly bound to 127.0.0.1:P, connected to a listener on another port.
pub fn client_bound(reuseaddr: bool) -> Held {
    let peer = listener("127.0.0.1", PEER_PORT, false, None);
    let c = bound_only("127.0.0.1", P, reuseaddr, None);
    c.connect(&addr("127.0.0.1", PEER_PORT).into())
        .expect("connect");
    let (s, _) = peer.accept().expect("accept");
    assert_state("established", P);
    Held::new(P).hold(peer).hold(c).hold(s)
}
pub fn s_client_bound() -> Held {
    client_bound(false)
}
pub fn s_client_bound_reuse() -> Held {
    client_bound(true)
}

/// A client bound to 127.0.0.1:P (with SO_REUSEADDR) that closes first: client-side
/// TIME_WAIT on P, no file, no listener to inherit from.
pub fn s_client_time_wait() -> Held {
    let peer = listener("127.0.0.1", PEER_PORT, false, None);
    let c = bound_only("127.0.0.1", P, true, None);
    c.connect(&addr("127.0.0.1", PEER_PORT).into())
        .expect("connect");
    let (s, _) = peer.accept().expect("accept");
    close_now(c);
    std::thread::sleep(Duration::from_millis(50));
    close_now(s);
    assert_state("time-wait", P);
    Held::new(P).hold(peer)
}

/// An outgoing client that got P as its ephemeral source port (no bind).
pub fn s_client_ephemeral() -> Held {
    let peer = listener("127.0.0.1", PEER_PORT, false, None);
    let c = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProto::TCP)).expect("socket");
    pin_local_port(&c, EPH_P);
    c.connect(&addr("127.0.0.1", PEER_PORT).into())
        .expect("connect");
    let (s, _) = peer.accept().expect("accept");
    let port = c
        .local_addr()
        .expect("local")
        .as_socket()
        .expect("inet")
        .port();
    assert_eq!(
        port, EPH_P,
        "IP_LOCAL_PORT_RANGE did not pin the source port"
    );
    assert_state("established", port);
    Held::new(port).hold(peer).hold(c).hold(s)
}

pub fn s_reuseport_same_uid() -> Held {
    Held::new(P).hold(tcp_listener(addr("0.0.0.0", P), false, true, None).expect("listener"))
}

/// A SO_REUSEPORT listener on 0.0.0.0:P owned by another uid (a child run via setpriv).
pub fn s_reuseport_other_uid() -> Held {
    let code = format!(
        "import socket,time\n\
         l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEPORT,1)\n\
         l.bind(('0.0.0.0',{P})); l.listen()\n\
         print('ready',flush=True); time.sleep(300)\n"
    );
    let child = python(&code, Some(OTHER_UID));
    let out = run("ss", &["-Htlne", "sport", "=", &format!(":{P}")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("uid:{OTHER_UID}")),
        "listener not owned by {OTHER_UID}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Held::new(P).hold_child(child)
}

/// `d0`: a second device (this kernel has no `dummy` module; a port-less bridge does).
pub fn make_d0() {
    run("ip", &["link", "add", "d0", "type", "bridge"]);
    run("ip", &["link", "set", "d0", "up"]);
}
pub fn s_device_lo_listener() -> Held {
    make_d0();
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProto::TCP)).expect("socket");
    s.bind_device(Some(b"lo")).expect("SO_BINDTODEVICE");
    s.bind(&addr("0.0.0.0", P).into()).expect("bind");
    s.listen(16).expect("listen");
    Held::new(P).hold(s)
}
pub fn s_device_d0_bound_reuse() -> Held {
    make_d0();
    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(SockProto::TCP)).expect("socket");
    s.bind_device(Some(b"d0")).expect("SO_BINDTODEVICE");
    s.set_reuse_address(true).expect("reuse");
    s.set_only_v6(false).expect("v6only");
    s.bind(&addr("::", P).into()).expect("bind");
    Held::new(P).hold(s)
}

pub fn udp(
    ip: &str,
    reuseaddr: bool,
    reuseport: bool,
    v6only: Option<bool>,
    device: Option<&str>,
) -> Socket {
    let a = addr(ip, P);
    let s = Socket::new(Domain::for_address(a), Type::DGRAM, Some(SockProto::UDP)).expect("socket");
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes())).expect("SO_BINDTODEVICE");
    }
    s.set_reuse_address(reuseaddr).expect("reuseaddr");
    s.set_reuse_port(reuseport).expect("reuseport");
    if let Some(v) = v6only {
        s.set_only_v6(v).expect("v6only");
    }
    s.bind(&a.into()).expect("bind udp");
    s
}
pub fn s_udp_open() -> Held {
    Held::new(P).hold(udp("0.0.0.0", false, false, None, None))
}
pub fn s_udp_open_lo() -> Held {
    Held::new(P).hold(udp("127.0.0.1", false, false, None, None))
}
pub fn s_udp_reuseaddr() -> Held {
    Held::new(P).hold(udp("0.0.0.0", true, false, None, None))
}
pub fn s_udp_reuseport() -> Held {
    Held::new(P).hold(udp("0.0.0.0", false, true, None, None))
}
pub fn s_udp_v6only() -> Held {
    Held::new(P).hold(udp("::", false, false, Some(true), None))
}
pub fn s_udp_dual_reuseaddr() -> Held {
    Held::new(P).hold(udp("::", true, false, Some(false), None))
}
pub fn s_udp_device_lo() -> Held {
    make_d0();
    Held::new(P).hold(udp("0.0.0.0", false, false, None, Some("lo")))
}
/// A UDP sender autobound by sendto() (no bind), pinned to EPH_P.
pub fn s_udp_autobound() -> Held {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(SockProto::UDP)).expect("socket");
    pin_local_port(&s, EPH_P);
    s.send_to(b"x", &addr("127.0.0.1", PEER_PORT).into())
        .expect("send_to");
    let port = s
        .local_addr()
        .expect("local")
        .as_socket()
        .expect("inet")
        .port();
    assert_eq!(
        port, EPH_P,
        "IP_LOCAL_PORT_RANGE did not pin the autobound port"
    );
    Held::new(port).hold(s)
}

/// Fills `s`'s peer's receive window: non-blocking sends until EAGAIN (bounded).
pub fn fill_peer_window(s: &Socket) {
    s.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![0u8; 65536];
    for _ in 0..10_000 {
        match s.send(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("send: {e}"),
        }
    }
    panic!("the peer's window never filled");
}

/// A client that never reads, with a small receive buffer.
pub fn slow_client() -> Socket {
    let c = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProto::TCP)).expect("socket");
    c.set_recv_buffer_size(4096).expect("rcvbuf");
    c.connect(&addr("127.0.0.1", P).into()).expect("connect");
    c
}

/// The server closes with unsent data queued before its FIN (the client never reads):
/// an orphaned FIN_WAIT1 on P; the listener is closed too.
pub fn s_fw1_orphan() -> Held {
    let l = listener("127.0.0.1", P, false, None);
    let c = slow_client();
    let (s, _) = l.accept().expect("accept");
    fill_peer_window(&s);
    close_now(s);
    close_now(l);
    assert_state("fin-wait-1", P);
    Held::new(P).hold(c)
}

/// The client half-closes first, the server fills its window and closes: an orphaned
/// LAST_ACK on P; the listener is closed too.
pub fn s_last_ack_orphan() -> Held {
    let l = listener("127.0.0.1", P, true, None);
    let c = slow_client();
    let (s, _) = l.accept().expect("accept");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_state("close-wait", P);
    fill_peer_window(&s);
    close_now(s);
    close_now(l);
    assert_state("last-ack", P);
    Held::new(P).hold(c)
}

/// A connection still in the accept queue of a live listener (ESTABLISHED, no file).
pub fn s_unaccepted_child() -> Held {
    let l = listener("::", P, false, Some(false));
    let c = TcpStream::connect(addr("::1", P)).expect("connect");
    assert_state("established", P);
    Held::new(P).hold(l).hold(c)
}

/// A client bound to 0.0.0.0:P whose SYN goes unanswered (SYN_SENT): connect() gave it
/// the source address 10.9.9.1.
pub fn s_syn_sent() -> Held {
    make_d0();
    run("ip", &["addr", "add", "10.9.9.1/24", "dev", "d0"]);
    run(
        "ip",
        &[
            "neigh",
            "replace",
            "10.9.9.2",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "d0",
            "nud",
            "permanent",
        ],
    );
    let c = bound_only("0.0.0.0", P, false, None);
    c.set_nonblocking(true).expect("nonblocking");
    match c.connect(&addr("10.9.9.2", 80).into()) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        other => panic!("connect: {other:?}"),
    }
    assert_state("syn-sent", P);
    Held::new(P).hold(c)
}

pub fn s_bound_only_reuseport() -> Held {
    Held::new(P).hold(tcp_socket(addr("0.0.0.0", P), false, true, None).expect("bind"))
}

/// `net.ipv6.bindv6only=1` in the netns, and a [::] listener that took that default.
pub fn s_bindv6only_listener() -> Held {
    std::fs::write("/proc/sys/net/ipv6/bindv6only", "1").expect("write bindv6only");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only")
            .expect("read")
            .trim(),
        "1"
    );
    Held::new(P).hold(listener("::", P, false, None))
}

pub fn s_udp_connected() -> Held {
    let s = udp("127.0.0.1", false, false, None, None);
    s.connect(&addr("127.0.0.1", PEER_PORT).into())
        .expect("connect udp");
    Held::new(P).hold(s)
}
pub fn s_udp_v6_lo() -> Held {
    Held::new(P).hold(udp("::1", false, false, None, None))
}

/// A UDP SO_REUSEPORT socket of another uid (a child run via setpriv).
pub fn s_udp_reuseport_other_uid() -> Held {
    let code = format!(
        "import socket,time\n\
         u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         u.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEPORT,1)\n\
         u.bind(('0.0.0.0',{P}))\n\
         print('ready',flush=True); time.sleep(300)\n"
    );
    Held::new(P).hold_child(python(&code, Some(OTHER_UID)))
}

/// An accepted [::1] connection of a dual-stack listener (so V6ONLY is 0), held by this
/// process; the listener is closed.
pub fn s_accepted_v6_dual() -> Held {
    let l = listener("::", P, false, Some(false));
    let c = TcpStream::connect(addr("::1", P)).expect("connect");
    let (s, _) = l.accept().expect("accept");
    close_now(l);
    Held::new(P).hold(c).hold(s)
}

/// A TIME_WAIT left by a listener bound to lo (the TIME_WAIT keeps the device).
pub fn s_tw_device_lo() -> Held {
    make_d0();
    let l = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProto::TCP)).expect("socket");
    l.bind_device(Some(b"lo")).expect("SO_BINDTODEVICE");
    l.set_reuse_address(true).expect("reuse");
    l.bind(&addr("0.0.0.0", P).into()).expect("bind");
    l.listen(16).expect("listen");
    tw_server(&l, addr("127.0.0.1", P));
    close_now(l);
    assert_state("time-wait", P);
    Held::new(P)
}

/// Two bound-only sockets: 127.0.0.1 with SO_REUSEADDR, 127.0.0.2 without.
pub fn s_two_bound() -> Held {
    Held::new(P)
        .hold(bound_only("127.0.0.1", P, true, None))
        .hold(bound_only("127.0.0.2", P, false, None))
}

/// Two SO_REUSEPORT listeners: 127.0.0.1 of uid 0 and 127.0.0.2 of uid 65534.
pub fn s_two_reuseport_uids() -> Held {
    let a = tcp_listener(addr("127.0.0.1", P), false, true, None).expect("listener");
    let b = socket_as(OTHER_UID, Domain::IPV4, Type::STREAM, SockProto::TCP).expect("socket");
    b.set_reuse_port(true).expect("reuseport");
    b.bind(&addr("127.0.0.2", P).into()).expect("bind");
    b.listen(16).expect("listen");
    Held::new(P).hold(a).hold(b)
}

/// The usual pair: LISTEN 0.0.0.0 and LISTEN [::] V6ONLY, both with SO_REUSEADDR.
pub fn s_listen_both_families() -> Held {
    Held::new(P)
        .hold(listener("0.0.0.0", P, true, None))
        .hold(listener("::", P, true, Some(true)))
}

#[rustfmt::skip]
pub const SITUATIONS: &[Situation] = &[
    Situation { name: "nothing on the port (tcp)", proto: Proto::Tcp, extra: Extra::None, build: s_empty },
    Situation { name: "LISTEN 0.0.0.0", proto: Proto::Tcp, extra: Extra::None, build: s_listen_v4_any },
    Situation { name: "LISTEN 0.0.0.0 +reuseaddr", proto: Proto::Tcp, extra: Extra::None, build: s_listen_v4_any_reuse },
    Situation { name: "LISTEN 127.0.0.1", proto: Proto::Tcp, extra: Extra::None, build: s_listen_v4_lo },
    Situation { name: "LISTEN 127.0.0.1 +reuseaddr", proto: Proto::Tcp, extra: Extra::None, build: s_listen_v4_lo_reuse },
    Situation { name: "LISTEN [::] dual-stack", proto: Proto::Tcp, extra: Extra::None, build: s_listen_v6_dual },
    Situation { name: "LISTEN [::] dual-stack +reuseaddr", proto: Proto::Tcp, extra: Extra::None, build: s_listen_v6_dual_reuse },
    Situation { name: "LISTEN [::] V6ONLY", proto: Proto::Tcp, extra: Extra::None, build: s_listen_v6_v6only },
    Situation { name: "LISTEN [::1]", proto: Proto::Tcp, extra: Extra::None, build: s_listen_v6_lo },
    Situation { name: "LISTEN [::ffff:127.0.0.1]", proto: Proto::Tcp, extra: Extra::None, build: s_listen_mapped },
    Situation { name: "server TIME_WAIT, listener (-reuseaddr) still listening", proto: Proto::Tcp, extra: Extra::None, build: s_tw_listening },
    Situation { name: "server TIME_WAIT, listener (-reuseaddr) closed", proto: Proto::Tcp, extra: Extra::None, build: s_tw_closed },
    Situation { name: "server TIME_WAIT, listener 127.0.0.1 (+reuseaddr) closed", proto: Proto::Tcp, extra: Extra::None, build: s_tw_closed_reuse },
    Situation { name: "server TIME_WAIT, listener 0.0.0.0 (+reuseaddr) closed", proto: Proto::Tcp, extra: Extra::None, build: s_tw_any_closed_reuse },
    Situation { name: "TIME_WAIT [::1] from dual-stack listener, closed", proto: Proto::Tcp, extra: Extra::None, build: s_tw_v6_dual_closed },
    Situation { name: "TIME_WAIT [::1] from dual-stack listener, still listening", proto: Proto::Tcp, extra: Extra::None, build: s_tw_v6_dual_listening },
    Situation { name: "TIME_WAIT [::ffff:127.0.0.1] from dual-stack listener, closed", proto: Proto::Tcp, extra: Extra::None, build: s_tw_mapped_dual_closed },
    Situation { name: "orphaned FIN_WAIT2 (-reuseaddr), listener closed", proto: Proto::Tcp, extra: Extra::None, build: s_fw2_orphan },
    Situation { name: "orphaned FIN_WAIT2 (+reuseaddr), listener closed", proto: Proto::Tcp, extra: Extra::None, build: s_fw2_orphan_reuse },
    Situation { name: "CLOSE_WAIT (-reuseaddr), listener closed", proto: Proto::Tcp, extra: Extra::None, build: s_close_wait },
    Situation { name: "CLOSE_WAIT (+reuseaddr), listener closed", proto: Proto::Tcp, extra: Extra::None, build: s_close_wait_reuse },
    Situation { name: "ESTABLISHED held by another process (-reuseaddr)", proto: Proto::Tcp, extra: Extra::None, build: s_established_other },
    Situation { name: "ESTABLISHED held by another process (+reuseaddr)", proto: Proto::Tcp, extra: Extra::None, build: s_established_other_reuse },
    Situation { name: "bound-only 127.0.0.1 (-reuseaddr)", proto: Proto::Tcp, extra: Extra::None, build: s_bound_only },
    Situation { name: "bound-only 0.0.0.0 (+reuseaddr)", proto: Proto::Tcp, extra: Extra::None, build: s_bound_only_reuse },
    Situation { name: "bound-only [::] V6ONLY", proto: Proto::Tcp, extra: Extra::None, build: s_bound_only_v6only },
    Situation { name: "outgoing client bound to 127.0.0.1:P (-reuseaddr)", proto: Proto::Tcp, extra: Extra::None, build: s_client_bound },
    Situation { name: "outgoing client bound to 127.0.0.1:P (+reuseaddr)", proto: Proto::Tcp, extra: Extra::None, build: s_client_bound_reuse },
    Situation { name: "client-side TIME_WAIT of a client bound to 127.0.0.1:P (+reuseaddr)", proto: Proto::Tcp, extra: Extra::None, build: s_client_time_wait },
    Situation { name: "outgoing client with P as ephemeral source port", proto: Proto::Tcp, extra: Extra::None, build: s_client_ephemeral },
    Situation { name: "LISTEN 0.0.0.0 +reuseport, same uid", proto: Proto::Tcp, extra: Extra::ReusePort, build: s_reuseport_same_uid },
    Situation { name: "LISTEN 0.0.0.0 +reuseport, uid 65534 (other process)", proto: Proto::Tcp, extra: Extra::ReusePort, build: s_reuseport_other_uid },
    Situation { name: "TIME_WAIT of a +reuseport listener, still listening", proto: Proto::Tcp, extra: Extra::ReusePort, build: s_tw_reuseport_listening },
    Situation { name: "TIME_WAIT of a +reuseport listener, closed", proto: Proto::Tcp, extra: Extra::ReusePort, build: s_tw_reuseport_closed },
    Situation { name: "LISTEN 0.0.0.0 bound to lo", proto: Proto::Tcp, extra: Extra::Device, build: s_device_lo_listener },
    Situation { name: "bound-only [::] dual-stack +reuseaddr bound to d0", proto: Proto::Tcp, extra: Extra::Device, build: s_device_d0_bound_reuse },
    Situation { name: "nothing on the port (udp)", proto: Proto::Udp, extra: Extra::None, build: s_empty },
    Situation { name: "UDP 0.0.0.0 open", proto: Proto::Udp, extra: Extra::None, build: s_udp_open },
    Situation { name: "UDP 127.0.0.1 open", proto: Proto::Udp, extra: Extra::None, build: s_udp_open_lo },
    Situation { name: "UDP 0.0.0.0 +reuseaddr", proto: Proto::Udp, extra: Extra::None, build: s_udp_reuseaddr },
    Situation { name: "UDP [::] V6ONLY", proto: Proto::Udp, extra: Extra::None, build: s_udp_v6only },
    Situation { name: "UDP [::] dual-stack +reuseaddr", proto: Proto::Udp, extra: Extra::None, build: s_udp_dual_reuseaddr },
    Situation { name: "UDP 0.0.0.0 +reuseport (uid 0)", proto: Proto::Udp, extra: Extra::ReusePort, build: s_udp_reuseport },
    Situation { name: "UDP 0.0.0.0 bound to lo", proto: Proto::Udp, extra: Extra::Device, build: s_udp_device_lo },
    Situation { name: "UDP sender autobound by sendto() to P", proto: Proto::Udp, extra: Extra::None, build: s_udp_autobound },
    Situation { name: "orphaned FIN_WAIT1 (unsent data), listener closed", proto: Proto::Tcp, extra: Extra::None, build: s_fw1_orphan },
    Situation { name: "orphaned LAST_ACK (+reuseaddr), listener closed", proto: Proto::Tcp, extra: Extra::None, build: s_last_ack_orphan },
    Situation { name: "unaccepted child [::1] of a live dual-stack listener", proto: Proto::Tcp, extra: Extra::None, build: s_unaccepted_child },
    Situation { name: "SYN_SENT client bound to 0.0.0.0:P (source 10.9.9.1)", proto: Proto::Tcp, extra: Extra::None, build: s_syn_sent },
    Situation { name: "bound-only 0.0.0.0 +reuseport (uid 0)", proto: Proto::Tcp, extra: Extra::ReusePort, build: s_bound_only_reuseport },
    Situation { name: "bindv6only=1: LISTEN [::] with the default", proto: Proto::Tcp, extra: Extra::None, build: s_bindv6only_listener },
    Situation { name: "UDP 127.0.0.1 connected", proto: Proto::Udp, extra: Extra::None, build: s_udp_connected },
    Situation { name: "UDP [::1]", proto: Proto::Udp, extra: Extra::None, build: s_udp_v6_lo },
    Situation { name: "UDP 0.0.0.0 +reuseport, uid 65534 (other process)", proto: Proto::Udp, extra: Extra::ReusePort, build: s_udp_reuseport_other_uid },
    Situation { name: "accepted [::1] child of a dual-stack listener, listener closed", proto: Proto::Tcp, extra: Extra::None, build: s_accepted_v6_dual },
    Situation { name: "TIME_WAIT of a listener bound to lo (+reuseaddr), closed", proto: Proto::Tcp, extra: Extra::Device, build: s_tw_device_lo },
    Situation { name: "bound-only 127.0.0.1 +reuseaddr and 127.0.0.2 -reuseaddr", proto: Proto::Tcp, extra: Extra::None, build: s_two_bound },
    Situation { name: "LISTEN +reuseport 127.0.0.1 (uid 0) and 127.0.0.2 (uid 65534)", proto: Proto::Tcp, extra: Extra::ReusePort, build: s_two_reuseport_uids },
    Situation { name: "LISTEN 0.0.0.0 and [::] V6ONLY, both +reuseaddr", proto: Proto::Tcp, extra: Extra::None, build: s_listen_both_families },
];
