//! The agent end to end: the real binary, a real socket population in a private
//! network namespace, scraped over HTTP.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use bindwatch::model::{Protocol, State};
use bindwatch::source::{dump_all, netlink::ALL_STATES, SocketTable, SourceChoice};
use common::*;

const P1: u16 = 18001;
const P2: u16 = 18002;
const P3: u16 = 18003;
const P6: u16 = 18006;
const PU: u16 = 18053;
const HTTP: u16 = 18080;

/// The population of the acceptance test; everything is held by the returned values.
struct Population {
    _listeners: Vec<Socket>,
    _conns: Vec<(TcpStream, Socket)>,
    _udp: UdpSocket,
}

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// 3 IPv4 listeners, 5 ESTABLISHED connections to P1, 4 server-side TIME_WAITs on
/// P1, one IPv6 listener, one UDP socket.
fn build_population() -> Population {
    let l1 = tcp_listener(a("127.0.0.1:18001"), false, false, None).expect("l1");
    let l2 = tcp_listener(a("127.0.0.1:18002"), false, false, None).expect("l2");
    let l3 = tcp_listener(a("0.0.0.0:18003"), true, false, None).expect("l3");
    let l6 = tcp_listener(a("[::1]:18006"), false, false, Some(true)).expect("l6");
    for _ in 0..4 {
        server_time_wait(&l1, a("127.0.0.1:18001"));
    }
    let mut conns = Vec::new();
    for _ in 0..5 {
        let c = TcpStream::connect("127.0.0.1:18001").expect("connect");
        let (s, _) = l1.accept().expect("accept");
        conns.push((c, s));
    }
    let udp = UdpSocket::bind("127.0.0.1:18053").expect("udp");
    Population {
        _listeners: vec![l1, l2, l3, l6],
        _conns: conns,
        _udp: udp,
    }
}

fn exact_counts(source: &'static str) {
    in_netns(move || {
        let _pop = build_population();
        let srv = Server::start(HTTP, &["--source", source, "--poll.interval", "500ms"]);
        let m = srv.metrics_until(Duration::from_secs(5), |m| {
            m.get(
                "bindwatch_port_sockets",
                &[
                    ("protocol", "tcp"),
                    ("port", "18001"),
                    ("state", "time_wait"),
                ],
            ) == Some(4.0)
        });
        let port = |p: u16, proto: &str, st: &str| {
            m.get(
                "bindwatch_port_sockets",
                &[("protocol", proto), ("port", &p.to_string()), ("state", st)],
            )
        };
        assert_eq!(port(P1, "tcp", "listen"), Some(1.0), "{source}");
        assert_eq!(port(P1, "tcp", "established"), Some(5.0), "{source}");
        assert_eq!(port(P1, "tcp", "time_wait"), Some(4.0), "{source}");
        assert_eq!(
            m.matching("bindwatch_port_sockets", &[("port", "18001")])
                .len(),
            3,
            "{source}: no other states on P1"
        );
        assert_eq!(port(P2, "tcp", "listen"), Some(1.0));
        assert_eq!(port(P3, "tcp", "listen"), Some(1.0));
        assert_eq!(port(P6, "tcp", "listen"), Some(1.0));
        assert_eq!(port(PU, "udp", "unconnected"), Some(1.0));
        assert_eq!(
            m.get("bindwatch_source_active", &[("source", source)]),
            Some(1.0),
            "the requested source is the active one"
        );

        let info = m.matching("bindwatch_listener_info", &[]);
        // Our 4 TCP listeners, the UDP socket, and bindwatch's own HTTP listener.
        assert_eq!(info.len(), 6, "{source}: {info:#?}");
        for (p, addr, fam, proto) in [
            (P1, "127.0.0.1", "ipv4", "tcp"),
            (P2, "127.0.0.1", "ipv4", "tcp"),
            (P3, "0.0.0.0", "ipv4", "tcp"),
            (P6, "::1", "ipv6", "tcp"),
            (PU, "127.0.0.1", "ipv4", "udp"),
        ] {
            let got = m.matching(
                "bindwatch_listener_info",
                &[
                    ("port", &p.to_string()),
                    ("address", addr),
                    ("family", fam),
                    ("protocol", proto),
                ],
            );
            assert_eq!(got.len(), 1, "{source}: listener {addr}:{p}");
            assert_eq!(got[0].1, 1.0);
        }
        // Whole-namespace counts: 5 client + 5 server ESTABLISHED, 4 TIME_WAIT.
        let sockets = |st: &str| {
            m.get(
                "bindwatch_sockets",
                &[("protocol", "tcp"), ("family", "ipv4"), ("state", st)],
            )
        };
        assert_eq!(sockets("time_wait"), Some(4.0));
        assert!(sockets("established").unwrap_or(0.0) >= 10.0, "{source}");
        assert_eq!(
            sockets("syn_sent"),
            Some(0.0),
            "known states with none are exported as 0"
        );
        let out = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(m.text.as_bytes())?;
                c.wait_with_output()
            })
            .expect("promtool (installed by scripts/install-test-deps.sh)");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn exact_counts_netlink() {
    exact_counts("netlink");
}

#[test]
fn exact_counts_bpf() {
    exact_counts("bpf");
}

#[test]
fn exact_counts_procfs() {
    exact_counts("procfs");
}

type Key = (Protocol, SocketAddr, SocketAddr, State);

fn keys(choice: SourceChoice) -> BTreeSet<Key> {
    // /proc/net follows the netns of the process's main thread; this test's thread
    // has its own netns, which /proc/thread-self/net shows.
    let mut t = SocketTable::open(
        choice,
        Path::new("/proc/thread-self"),
        Path::new("/proc"),
        Path::new("/"),
    )
    .expect("open source");
    dump_all(&mut t, ALL_STATES)
        .expect("dump")
        .into_iter()
        // /proc cannot show bound-only sockets (none here anyway).
        .filter(|s| s.state != State::BoundInactive)
        .map(|s| (s.protocol, s.local, s.remote, s.state))
        .collect()
}

/// Both sources, and netstat2 as an independent reader, see the same sockets.
#[test]
fn sources_agree_on_a_quiescent_population() {
    in_netns(|| {
        let _pop = build_population();
        let nl = keys(SourceChoice::Netlink);
        let pf = keys(SourceChoice::Procfs);
        // 4 listeners + 5x2 ESTABLISHED + 4 TIME_WAIT + 1 UDP.
        assert_eq!(nl.len(), 19, "population visible: {nl:#?}");
        assert_eq!(nl, pf, "netlink vs /proc/net");

        use netstat2::{AddressFamilyFlags, ProtocolFlags, ProtocolSocketInfo, TcpState};
        let ns2: BTreeSet<(SocketAddr, SocketAddr, &str)> =
            netstat2::iterate_sockets_info_without_pids(
                AddressFamilyFlags::IPV4 | AddressFamilyFlags::IPV6,
                ProtocolFlags::TCP,
            )
            .expect("netstat2")
            .filter_map(Result::ok)
            .filter_map(|si| match si.protocol_socket_info {
                ProtocolSocketInfo::Tcp(t) => Some((
                    SocketAddr::new(t.local_addr, t.local_port),
                    SocketAddr::new(t.remote_addr, t.remote_port),
                    match t.state {
                        TcpState::Listen => "listen",
                        TcpState::Established => "established",
                        TcpState::TimeWait => "time_wait",
                        _ => "other",
                    },
                )),
                ProtocolSocketInfo::Udp(_) => None,
            })
            .collect();
        let ours: BTreeSet<(SocketAddr, SocketAddr, &str)> = nl
            .iter()
            .filter(|k| k.0 == Protocol::Tcp)
            .map(|k| {
                (
                    k.1,
                    k.2,
                    match k.3 {
                        State::Listen => "listen",
                        State::Established => "established",
                        State::TimeWait => "time_wait",
                        _ => "other",
                    },
                )
            })
            .collect();
        assert_eq!(ours, ns2, "bindwatch's netlink decoder vs netstat2");
    });
}

#[test]
fn closed_listener_series_disappear_after_next_poll() {
    in_netns(|| {
        let keep = tcp_listener(a("127.0.0.1:18101"), false, false, None).expect("keep");
        let gone = tcp_listener(a("127.0.0.1:18102"), false, false, None).expect("gone");
        let srv = Server::start(HTTP, &["--poll.interval", "300ms"]);
        let m = srv.metrics();
        assert_eq!(
            m.matching("bindwatch_listener_info", &[("port", "18102")])
                .len(),
            1
        );
        assert_eq!(
            m.get(
                "bindwatch_port_sockets",
                &[("protocol", "tcp"), ("port", "18102"), ("state", "listen")]
            ),
            Some(1.0)
        );
        drop(gone);
        let m = srv.metrics_until(Duration::from_secs(3), |m| {
            m.matching("bindwatch_listener_info", &[("port", "18102")])
                .is_empty()
        });
        assert!(
            m.matching("bindwatch_listener_info", &[("port", "18102")])
                .is_empty(),
            "listener series gone"
        );
        assert!(
            m.matching("bindwatch_port_sockets", &[("port", "18102")])
                .is_empty(),
            "port series gone"
        );
        assert_eq!(
            m.matching("bindwatch_listener_info", &[("port", "18101")])
                .len(),
            1,
            "the other stays"
        );
        drop(keep);
    });
}

#[test]
fn http_gzip_healthz_landing_and_404() {
    in_netns(|| {
        let srv = Server::start(HTTP, &[]);
        let (code, hdrs, body) =
            http_get(srv.addr, "/metrics", &[("Accept-Encoding", "gzip")]).expect("gzip scrape");
        assert_eq!(code, 200);
        assert!(
            hdrs.iter()
                .any(|(k, v)| k == "content-encoding" && v == "gzip"),
            "{hdrs:?}"
        );
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
            .expect("valid gzip");
        assert!(
            text.contains("bindwatch_build_info{"),
            "decompressed body is the exposition"
        );
        let (code, hdrs, body) = http_get(srv.addr, "/metrics", &[]).expect("plain scrape");
        assert_eq!(code, 200);
        assert!(!hdrs.iter().any(|(k, _)| k == "content-encoding"));
        assert!(String::from_utf8_lossy(&body).contains("bindwatch_sockets{"));
        assert_eq!(http_get(srv.addr, "/healthz", &[]).expect("healthz").0, 200);
        let (code, _, body) = http_get(srv.addr, "/", &[]).expect("landing");
        assert_eq!(code, 200);
        assert!(String::from_utf8_lossy(&body).contains("href=\"/metrics\""));
        assert_eq!(http_get(srv.addr, "/nope", &[]).expect("404").0, 404);
        assert_eq!(
            http_request(srv.addr, "POST", "/metrics", &[])
                .expect("405")
                .0,
            405
        );
    });
}

#[test]
fn custom_telemetry_path() {
    in_netns(|| {
        let srv = Server::start(HTTP, &["--web.telemetry-path", "/x/metrics"]);
        assert_eq!(
            http_get(srv.addr, "/x/metrics", &[]).expect("scrape").0,
            200
        );
        assert_eq!(
            http_get(srv.addr, "/metrics", &[]).expect("old path").0,
            404
        );
    });
}

#[test]
fn sigterm_during_scrape_completes_and_exits_zero() {
    in_netns(|| {
        let mut srv = Server::start(HTTP, &[]);
        // An idle keep-alive connection must not hold shutdown beyond the drain bound.
        let _idle = TcpStream::connect(srv.addr).expect("idle conn");
        // A scrape whose request is sent but whose response is not read yet.
        let mut s = TcpStream::connect(srv.addr).expect("conn");
        std::io::Write::write_all(
            &mut s,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        // SAFETY: signalling the child we spawned, by its pid.
        assert_eq!(unsafe { libc::kill(srv.pid(), libc::SIGTERM) }, 0);
        let mut raw = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        std::io::Read::read_to_end(&mut s, &mut raw).expect("read response");
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:.200}");
        assert!(
            text.contains("bindwatch_poll_errors_total{source=\"procfs\"}"),
            "complete body (last family present)"
        );
        let status = loop {
            if let Some(st) = srv.child.try_wait().expect("wait") {
                break st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "bindwatch did not exit within 5 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0), "clean exit");
        assert!(t0.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for (args, flag) in [
        (
            vec!["--web.listen-address", "nonsense"],
            "--web.listen-address",
        ),
        (vec!["--poll.interval", "soon"], "--poll.interval"),
        (vec!["--source", "magic"], "--source"),
        (vec!["check", "80", "--device", "nosuchdev0"], "--device"),
    ] {
        let (code, _, err) = bindwatch(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn procfs_root_is_a_flag() {
    // A fixture procfs with one listener proves --path.procfs is honoured end to end.
    let dir = std::env::temp_dir().join(format!("bindwatch-procfs-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("net")).expect("mkdir");
    std::fs::write(
        dir.join("net/tcp"),
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 55123 1 0000000000000000 100 0 0 10 0\n   1: garbage line\n",
    )
    .expect("write");
    for f in ["udp", "udp6"] {
        std::fs::write(dir.join("net").join(f), "  sl  local_address\n").expect("write");
    }
    let procfs = dir.to_string_lossy().into_owned();
    let (code, out, err) = bindwatch(&[
        "ports",
        "--source",
        "procfs",
        "--path.procfs",
        &procfs,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let ls = v["listeners"].as_array().expect("listeners");
    assert_eq!(ls.len(), 1, "{out}");
    assert_eq!(ls[0]["port"], 8080);
    assert_eq!(ls[0]["address"], "127.0.0.1");
    assert!(
        err.contains("net/tcp:3"),
        "the odd line is reported with file and line: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a CPU budget too small for another table walk, listeners still show
/// within a poll, and the table view's timestamp says how old the rest is.
#[test]
fn cpu_budget_keeps_listeners_fresh_and_says_how_old_the_table_is() {
    in_netns(|| {
        let srv = Server::start(
            HTTP,
            &["--poll.interval", "300ms", "--poll.cpu-budget", "0.0000001"],
        );
        let m0 = srv.metrics();
        let table0 = m0
            .get("bindwatch_view_timestamp_seconds", &[("view", "table")])
            .expect("table view");
        let lst0 = m0
            .get("bindwatch_view_timestamp_seconds", &[("view", "listeners")])
            .expect("listener view");
        assert_eq!(
            m0.get("bindwatch_poll_cpu_budget_ratio", &[]),
            Some(0.0000001)
        );
        let _l = tcp_listener(a("127.0.0.1:18150"), false, false, None).expect("listener");
        let m = srv.metrics_until(Duration::from_secs(3), |m| {
            !m.matching("bindwatch_listener_info", &[("port", "18150")])
                .is_empty()
        });
        assert_eq!(
            m.matching("bindwatch_listener_info", &[("port", "18150")])
                .len(),
            1,
            "a new listener shows within a poll"
        );
        let lst = m
            .get("bindwatch_view_timestamp_seconds", &[("view", "listeners")])
            .expect("listener view");
        let table = m
            .get("bindwatch_view_timestamp_seconds", &[("view", "table")])
            .expect("table view");
        assert!(lst > lst0, "the listener view is fresh");
        assert_eq!(
            table, table0,
            "the table was not walked again within the budget"
        );
        // Its port's other sockets were not read: a restart is undecided, never "clear".
        for reuse in ["false", "true"] {
            let labels = [
                ("protocol", "tcp"),
                ("address", "127.0.0.1"),
                ("port", "18150"),
                ("reuseaddr", reuse),
            ];
            assert_eq!(
                m.get("bindwatch_rebind_undecided", &labels),
                Some(1.0),
                "undecided on a port the walk did not read: {}",
                m.text
            );
            assert_eq!(m.get("bindwatch_rebind_blocked", &labels), None);
        }
        assert!(
            m.get("bindwatch_poll_cpu_seconds_total", &[])
                .unwrap_or(0.0)
                > 0.0
        );
    });
}

/// The peer and TCP_NODELAY of a socket held by process `pid` as fd `fd`, read
/// through a duplicate of the fd, as the owner probe reads flags.
fn nodelay_of(pid: u32, fd: i32) -> std::io::Result<(SocketAddr, bool)> {
    use bindwatch::source::owners::{duplicate_fd, FdRef};
    let sock = socket2::Socket::from(duplicate_fd(FdRef { pid, fd })?);
    let peer = sock
        .peer_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an inet socket"))?;
    Ok((peer, sock.nodelay()?))
}

#[test]
fn accepted_connections_have_tcp_nodelay() {
    in_netns(|| {
        use std::io::{Read, Write};
        let srv = Server::start(HTTP, &[]);
        let mut client = TcpStream::connect(srv.addr).expect("connect");
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("request");
        let mut buf = [0u8; 512];
        let n = client.read(&mut buf).expect("response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        // The connection stays open (keep-alive): find the agent's end of it.
        let me = client.local_addr().expect("local addr");
        let agent = srv.child.id();
        let mut found = None;
        for e in std::fs::read_dir(format!("/proc/{agent}/fd")).expect("agent's fds") {
            let fd: i32 = e
                .expect("fd entry")
                .file_name()
                .to_string_lossy()
                .parse()
                .expect("fd");
            if let Ok((peer, nodelay)) = nodelay_of(agent, fd) {
                if peer == me {
                    found = Some(nodelay);
                }
            }
        }
        assert_eq!(found, Some(true), "the agent's end of {me} has TCP_NODELAY");
        // The same read on the test's own end, which never set it, says false: the
        // check can fail.
        let own = nodelay_of(std::process::id(), std::os::fd::AsRawFd::as_raw_fd(&client))
            .expect("own socket");
        assert_eq!(own, (srv.addr, false));
    });
}
