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
        srv.metrics_until(Duration::from_secs(10), |m| {
            m.get(
                "bindwatch_port_sockets",
                &[("protocol", "tcp"), ("port", "7443"), ("state", "listen")],
            ) == Some(1.0)
        });
        for _ in 0..4 {
            server_time_wait(&l, local);
        }
        drop(l);
        let m = srv.metrics_until(Duration::from_secs(10), |m| {
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
        let m = srv.metrics_until(Duration::from_secs(10), |m| {
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
        srv.metrics_until(Duration::from_secs(10), |m| {
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
        let m = srv.metrics_until(Duration::from_secs(10), |m| {
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
