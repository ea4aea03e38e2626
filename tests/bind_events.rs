//! The BPF failure tracer against the real kernel: every test builds the socket
//! situation for real in a private network namespace, asks the kernel with bind(),
//! listen() or connect(), and checks that the agent counted exactly what the kernel
//! answered, with the right blockers and prediction score. The agent only reports
//! its own namespace's events, so tests running in parallel do not see each other.
//!
//! Needs root (BPF, tracepoints, namespaces), like the other real-kernel tests.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_get, in_netns, server_time_wait, tcp_listener, tcp_socket, Server};

/// `/proc/self/comm`: what the agent must name this process.
fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("read /proc/self/comm")
        .trim_end()
        .to_string()
}

fn failures(s: &Server) -> Vec<serde_json::Value> {
    let (code, _, body) = http_get(s.addr, "/failures", &[]).expect("GET /failures");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("/failures is JSON");
    v["failures"].as_array().cloned().unwrap_or_default()
}

fn sum(m: &common::Metrics, name: &str, subset: &[(&str, &str)]) -> f64 {
    m.matching(name, subset).iter().map(|(_, v)| v).sum()
}

fn errno_of(r: std::io::Result<common::Socket>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

#[test]
fn time_wait_failures_are_counted_explained_and_scored() {
    in_netns(|| {
        let srv = Server::start(19301, &["--poll.interval", "200ms"]);
        let m = srv.metrics();
        assert_eq!(
            m.get("bindwatch_capability", &[("capability", "bind_events")]),
            Some(1.0),
            "the tracer attaches as root"
        );
        let port = 7443u16;
        let addr: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
        let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // A listener without SO_REUSEADDR leaves TIME_WAITs and closes.
        let l = tcp_listener(addr, false, false, None).expect("listener");
        // The agent sees the listener (and learns its flags) before it goes.
        let m = srv.metrics_until(Duration::from_secs(30), |m| {
            m.get(
                "bindwatch_port_sockets",
                &[("protocol", "tcp"), ("port", "7443"), ("state", "listen")],
            ) == Some(1.0)
        });
        assert_eq!(
            m.get(
                "bindwatch_port_sockets",
                &[("protocol", "tcp"), ("port", "7443"), ("state", "listen")]
            ),
            Some(1.0),
            "the agent saw the listener: {}",
            m.text
        );
        for _ in 0..4 {
            server_time_wait(&l, local);
        }
        drop(l);
        let m = srv.metrics_until(Duration::from_secs(30), |m| {
            m.get(
                "bindwatch_rebind_blocked",
                &[
                    ("protocol", "tcp"),
                    ("address", "0.0.0.0"),
                    ("port", "7443"),
                    ("reuseaddr", "false"),
                ],
            ) == Some(1.0)
                && m.get(
                    "bindwatch_port_sockets",
                    &[
                        ("protocol", "tcp"),
                        ("port", "7443"),
                        ("state", "time_wait"),
                    ],
                ) == Some(4.0)
                && m.get(
                    "bindwatch_port_sockets",
                    &[("protocol", "tcp"), ("port", "7443"), ("state", "listen")],
                )
                .is_none()
        });
        assert_eq!(
            m.get(
                "bindwatch_rebind_blocked",
                &[
                    ("protocol", "tcp"),
                    ("address", "0.0.0.0"),
                    ("port", "7443"),
                    ("reuseaddr", "false")
                ]
            ),
            Some(1.0),
            "the agent predicts the failure: {}",
            m.text
        );
        // Three binds the kernel refuses.
        for _ in 0..3 {
            assert_eq!(
                errno_of(tcp_socket(addr, false, false, None)),
                Some(libc::EADDRINUSE),
                "the kernel refuses bind(0.0.0.0:{port}) next to TIME_WAITs"
            );
        }
        let comm = own_comm();
        let sel = [
            ("protocol", "tcp"),
            ("port", "7443"),
            ("errno", "eaddrinuse"),
        ];
        let m = srv.metrics_until(Duration::from_secs(30), |m| {
            sum(m, "bindwatch_bind_failures_total", &sel) >= 3.0
        });
        assert_eq!(
            sum(&m, "bindwatch_bind_failures_total", &sel),
            3.0,
            "{}",
            m.text
        );
        assert_eq!(
            m.get(
                "bindwatch_bind_failures_total",
                &[
                    ("protocol", "tcp"),
                    ("port", "7443"),
                    ("errno", "eaddrinuse"),
                    ("process", &comm)
                ]
            ),
            Some(3.0),
            "the failures name this process ({comm}): {}",
            m.text
        );
        assert_eq!(
            m.get("bindwatch_bind_predictions_total", &[("outcome", "hit")]),
            Some(3.0),
            "{}",
            m.text
        );
        assert_eq!(
            m.get("bindwatch_bind_predictions_total", &[("outcome", "miss")]),
            Some(0.0)
        );

        let fs = failures(&srv);
        let mine: Vec<&serde_json::Value> = fs.iter().filter(|f| f["port"] == 7443).collect();
        assert_eq!(mine.len(), 3, "{fs:?}");
        for f in mine {
            assert_eq!(f["protocol"], "tcp");
            assert_eq!(f["address"], "0.0.0.0");
            assert_eq!(f["errno"], "eaddrinuse");
            assert_eq!(f["process"], comm.as_str());
            assert_eq!(f["pid"], std::process::id());
            assert_eq!(f["verdict_before"], "blocked");
            assert_eq!(f["flags"]["reuseaddr"], "false");
            let blockers = f["blockers"].as_array().expect("blockers");
            assert_eq!(blockers.len(), 4, "{f}");
            for b in blockers {
                assert_eq!(b["state"], "time_wait");
                assert_eq!(b["local"], "127.0.0.1:7443");
                assert_eq!(
                    b["flags"]["reuseaddr"], "false",
                    "inherited from the listener: {b}"
                );
                let t = b["timer_seconds"]
                    .as_f64()
                    .expect("a TIME_WAIT has a timer");
                assert!(t > 0.0 && t <= 60.0, "{t}");
            }
        }
        // The landing page lists them too (rendered at the next poll).
        let row = "<td>bind</td><td>tcp</td><td>0.0.0.0</td><td>7443</td><td>EADDRINUSE</td>";
        let mut page = String::new();
        let listed = common::eventually(Duration::from_secs(10), || {
            let (_, _, body) = http_get(srv.addr, "/", &[]).expect("GET /");
            page = String::from_utf8_lossy(&body).into_owned();
            page.matches(row).count() == 3
        });
        assert!(listed, "three failure rows on /: {page}");
        // The host command reads the same from the agent.
        let listen = srv.addr.to_string();
        let (code, out, err) = common::bindwatch(&["failures", "--web.listen-address", &listen]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.matches("bind(0.0.0.0:7443)").count(), 3, "{out}");
        assert!(
            out.contains("failed: EADDRINUSE; predicted blocked"),
            "{out}"
        );
        assert_eq!(
            out.matches("    time_wait 127.0.0.1:7443 -> ").count(),
            12,
            "{out}"
        );
        let (code, out, err) =
            common::bindwatch(&["failures", "--json", "--web.listen-address", &listen]);
        assert_eq!(code, 0, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).expect("--json is JSON");
        assert_eq!(doc["failures"].as_array().map(Vec::len), Some(3));
        // Nobody listens on 19399 in this namespace: a clear error, exit 2.
        let (code, _, err) =
            common::bindwatch(&["failures", "--web.listen-address", "127.0.0.1:19399"]);
        assert_eq!(code, 2);
        assert!(
            err.contains("no agent answers") && err.contains("127.0.0.1:19399"),
            "{err}"
        );
    });
}

#[test]
fn udp_binds_refused_by_a_bound_udp_socket_count_as_udp() {
    in_netns(|| {
        let srv = Server::start(19302, &["--poll.interval", "200ms"]);
        let addr: SocketAddr = "127.0.0.1:7453".parse().unwrap();
        let udp = |reuse: bool| -> std::io::Result<common::Socket> {
            let s = common::Socket::new(common::Domain::IPV4, common::Type::DGRAM, None)?;
            s.set_reuse_address(reuse)?;
            s.bind(&addr.into())?;
            Ok(s)
        };
        let _held = udp(false).expect("first UDP bind");
        srv.metrics_until(Duration::from_secs(30), |m| {
            m.get(
                "bindwatch_port_sockets",
                &[
                    ("protocol", "udp"),
                    ("port", "7453"),
                    ("state", "unconnected"),
                ],
            ) == Some(1.0)
        });
        for _ in 0..2 {
            assert_eq!(errno_of(udp(false)), Some(libc::EADDRINUSE));
        }
        let sel = [
            ("protocol", "udp"),
            ("port", "7453"),
            ("errno", "eaddrinuse"),
        ];
        let m = srv.metrics_until(Duration::from_secs(30), |m| {
            sum(m, "bindwatch_bind_failures_total", &sel) >= 2.0
        });
        assert_eq!(
            sum(&m, "bindwatch_bind_failures_total", &sel),
            2.0,
            "{}",
            m.text
        );
        assert_eq!(
            sum(
                &m,
                "bindwatch_bind_failures_total",
                &[("protocol", "tcp"), ("port", "7453")]
            ),
            0.0
        );
        let fs = failures(&srv);
        assert_eq!(
            fs.iter()
                .filter(|f| f["port"] == 7453 && f["protocol"] == "udp")
                .count(),
            2
        );
    });
}

#[test]
fn connect_eaddrnotavail_counts_exactly_what_the_kernel_answered() {
    in_netns(|| {
        // Eight ephemeral ports in this namespace only (the sysctl is per namespace).
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40007\n")
            .expect("narrow ip_local_port_range");
        let srv = Server::start(19303, &["--poll.interval", "200ms"]);
        let target: SocketAddr = "127.0.0.1:7463".parse().unwrap();
        let l = std::net::TcpListener::bind(target).expect("listener");
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..12 {
            match std::net::TcpStream::connect(target) {
                Ok(c) => held.push((c, l.accept().expect("accept"))),
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => refused += 1,
                Err(e) => panic!("connect: {e}"),
            }
        }
        assert!(
            refused > 0,
            "8 ports cannot carry 12 connections: {} held",
            held.len()
        );
        let comm = own_comm();
        let sel = [
            ("protocol", "tcp"),
            ("errno", "eaddrnotavail"),
            ("process", comm.as_str()),
        ];
        let m = srv.metrics_until(Duration::from_secs(30), |m| {
            m.get("bindwatch_connect_failures_total", &sel) >= Some(f64::from(refused))
        });
        assert_eq!(
            m.get("bindwatch_connect_failures_total", &sel),
            Some(f64::from(refused)),
            "{}",
            m.text
        );
        assert_eq!(
            sum(&m, "bindwatch_bind_failures_total", &[]),
            0.0,
            "a connect is no bind"
        );
        let fs = failures(&srv);
        let connects = fs.iter().filter(|f| f["call"] == "connect").count();
        assert_eq!(connects, refused as usize);
    });
}

#[test]
fn successful_bind_on_a_port_judged_clear_is_a_hit() {
    in_netns(|| {
        let srv = Server::start(19304, &["--poll.interval", "200ms"]);
        let addr: SocketAddr = "0.0.0.0:7473".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7473".parse().unwrap();
        // A listener WITH SO_REUSEADDR leaves TIME_WAITs that carry the flag: a new socket
        // with SO_REUSEADDR binds through them.
        let l = tcp_listener(addr, true, false, None).expect("listener");
        srv.metrics_until(Duration::from_secs(30), |m| {
            m.get(
                "bindwatch_listener_info",
                &[
                    ("protocol", "tcp"),
                    ("family", "ipv4"),
                    ("address", "0.0.0.0"),
                    ("port", "7473"),
                    ("process", &own_comm()),
                    ("user", "root"),
                    ("reuseaddr", "true"),
                    ("reuseport", "false"),
                ],
            ) == Some(1.0)
        });
        for _ in 0..2 {
            server_time_wait(&l, local);
        }
        drop(l);
        let clear = [
            ("protocol", "tcp"),
            ("address", "0.0.0.0"),
            ("port", "7473"),
            ("reuseaddr", "true"),
        ];
        // The tracer reports successful binds only on ports of interest. A published
        // poll with per-port series of 7473 has it among its ports of interest, and the
        // poller syncs the tracer's ports map before it publishes: once this is seen,
        // the tracer reports a bind on 7473.
        let m = srv.metrics_until(Duration::from_secs(30), |m| {
            m.get("bindwatch_rebind_blocked", &clear) == Some(0.0)
                && m.get(
                    "bindwatch_port_sockets",
                    &[
                        ("protocol", "tcp"),
                        ("port", "7473"),
                        ("state", "time_wait"),
                    ],
                ) == Some(2.0)
        });
        assert_eq!(
            m.get("bindwatch_rebind_blocked", &clear),
            Some(0.0),
            "{}",
            m.text
        );
        assert_eq!(
            m.get("bindwatch_bind_predictions_total", &[("outcome", "hit")]),
            Some(0.0)
        );
        let s = tcp_socket(addr, true, false, None).expect("the kernel lets it bind");
        let m = srv.metrics_until(Duration::from_secs(30), |m| {
            m.get("bindwatch_bind_predictions_total", &[("outcome", "hit")]) >= Some(1.0)
        });
        assert_eq!(
            m.get("bindwatch_bind_predictions_total", &[("outcome", "hit")]),
            Some(1.0),
            "{}",
            m.text
        );
        assert_eq!(
            m.get("bindwatch_bind_predictions_total", &[("outcome", "miss")]),
            Some(0.0)
        );
        assert_eq!(sum(&m, "bindwatch_bind_failures_total", &[]), 0.0);
        assert!(failures(&srv).is_empty(), "a success is no failure");
        drop(s);
    });
}

#[test]
fn without_bpf_privilege_the_failure_metrics_are_absent() {
    in_netns(|| {
        let log =
            std::env::temp_dir().join(format!("bindwatch-noevents-{}.log", std::process::id()));
        // Root without any capability: sock_diag still works, BPF does not.
        let mut child = std::process::Command::new("setpriv")
            .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
            .arg(common::bin())
            .args([
                "serve",
                "--web.listen-address",
                "127.0.0.1:19305",
                "--state.file",
                "",
                "--poll.interval",
                "200ms",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn setpriv (util-linux)");
        let addr: SocketAddr = "127.0.0.1:19305".parse().unwrap();
        let up = common::eventually(Duration::from_secs(15), || {
            matches!(http_get(addr, "/healthz", &[]), Ok((200, _, _)))
        });
        let scrape = http_get(addr, "/metrics", &[]);
        let fs = http_get(addr, "/failures", &[]);
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        assert!(up, "agent without capabilities did not come up: {text}");
        let (_, _, body) = scrape.expect("scrape");
        let m = common::Metrics::parse(&String::from_utf8_lossy(&body));
        assert_eq!(
            m.get("bindwatch_capability", &[("capability", "bind_events")]),
            Some(0.0)
        );
        for family in [
            "bindwatch_bind_failures_total",
            "bindwatch_connect_failures_total",
            "bindwatch_bind_predictions_total",
        ] {
            assert!(!m.text.contains(family), "{family} must be absent, not 0");
        }
        assert_eq!(
            text.matches("bind failure events unavailable").count(),
            1,
            "one log line says why: {text}"
        );
        let (code, _, body) = fs.expect("GET /failures");
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["active"], false);
    });
}

#[test]
fn netns_all_labels_events_with_their_namespace() {
    in_netns(|| {
        let name = format!("bwev-{}", std::process::id());
        common::run_ok("ip", &["netns", "add", &name]);
        struct Del(String);
        impl Drop for Del {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let _del = Del(name.clone());
        let srv = Server::start(19306, &["--netns", "all", "--poll.interval", "1s"]);
        // Two UDP binds the kernel refuses inside the named namespace.
        let script = "import socket\n\
                      s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                      s.bind(('0.0.0.0', 7483))\n\
                      for _ in range(2):\n\
                      \x20   t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                      \x20   try:\n\
                      \x20       t.bind(('0.0.0.0', 7483))\n\
                      \x20   except OSError as e:\n\
                      \x20       assert e.errno == 98, e\n\
                      \x20   else:\n\
                      \x20       raise SystemExit('the second bind succeeded')\n";
        common::run_ok("ip", &["netns", "exec", &name, "python3", "-c", script]);
        let sel = [
            ("netns", name.as_str()),
            ("protocol", "udp"),
            ("port", "7483"),
            ("errno", "eaddrinuse"),
            ("process", "python3"),
        ];
        let m = srv.metrics_until(Duration::from_secs(30), |m| {
            m.get("bindwatch_bind_failures_total", &sel) >= Some(2.0)
        });
        assert_eq!(
            m.get("bindwatch_bind_failures_total", &sel),
            Some(2.0),
            "{}",
            m.text
        );
        assert_eq!(
            sum(
                &m,
                "bindwatch_bind_failures_total",
                &[("netns", "host"), ("port", "7483")]
            ),
            0.0
        );
        let fs = failures(&srv);
        assert_eq!(
            fs.iter()
                .filter(|f| f["netns"] == name.as_str() && f["port"] == 7483)
                .count(),
            2,
            "{fs:?}"
        );
    });
}
