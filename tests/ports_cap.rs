//! `--ports.max` caps every per-port family, the restart-risk ones included, and a
//! port whose sockets a poll did not read is never exported as "a restart would
//! succeed": it is left out and counted in `bindwatch_ports_dropped_total`.
//!
//! The kernel is the oracle: the remembered port really refuses a bind.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{in_netns, server_time_wait, tcp_listener, tcp_socket, Metrics, Server};

fn port_series(m: &Metrics, port: &str) -> Vec<(String, f64)> {
    m.series
        .iter()
        .filter(|(k, _)| k.contains(&format!("port=\"{port}\"")))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[test]
fn a_remembered_port_past_the_cap_gets_no_series_not_a_wrong_zero() {
    in_netns(|| {
        let srv = Server::start(
            19290,
            &[
                "--poll.interval",
                "100ms",
                "--ports.max",
                "3",
                "--no-bind-events",
            ],
        );
        let high: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let l = tcp_listener(high, false, false, None).expect("listener on 40000");
        let blocked = |m: &Metrics| {
            m.get(
                "bindwatch_rebind_blocked",
                &[
                    ("protocol", "tcp"),
                    ("address", "127.0.0.1"),
                    ("port", "40000"),
                    ("reuseaddr", "false"),
                ],
            )
        };
        let m = srv.metrics_until(Duration::from_secs(20), |m| {
            m.get(
                "bindwatch_port_sockets",
                &[("protocol", "tcp"), ("port", "40000"), ("state", "listen")],
            ) == Some(1.0)
        });
        assert_eq!(
            m.get(
                "bindwatch_port_sockets",
                &[("protocol", "tcp"), ("port", "40000"), ("state", "listen")],
            ),
            Some(1.0),
            "the agent saw the listener: {}",
            m.text
        );
        server_time_wait(&l, high);
        drop(l);
        let m = srv.metrics_until(Duration::from_secs(20), |m| blocked(m) == Some(1.0));
        assert_eq!(
            blocked(&m),
            Some(1.0),
            "the dead listener's TIME_WAIT blocks a restart: {}",
            m.text
        );
        // The agent's own port and two lower ones listen: with --ports.max 3, port 40000
        // is past the cap.
        let _a = tcp_listener("127.0.0.1:30001".parse().unwrap(), true, false, None).unwrap();
        let _b = tcp_listener("127.0.0.1:30002".parse().unwrap(), true, false, None).unwrap();
        let m = srv.metrics_until(Duration::from_secs(20), |m| {
            ["30001", "30002"].iter().all(|p| {
                m.get(
                    "bindwatch_port_sockets",
                    &[("protocol", "tcp"), ("port", p), ("state", "listen")],
                ) == Some(1.0)
            })
        });
        // Still refused by the kernel: a 0 here would be a wrong answer.
        let err = tcp_socket(high, false, false, None)
            .err()
            .and_then(|e| e.raw_os_error());
        assert_eq!(
            err,
            Some(libc::EADDRINUSE),
            "the kernel still refuses 40000"
        );
        let dropped = m.get("bindwatch_ports_dropped_total", &[]).unwrap_or(0.0);
        assert!(
            dropped >= 1.0,
            "the port past the cap is counted: {dropped}"
        );
        let series = port_series(&m, "40000");
        assert!(
            series.is_empty(),
            "no series for the port past --ports.max, found {series:?}"
        );
        // Every per-port family together covers at most 3 ports.
        let ports: std::collections::BTreeSet<String> = m
            .series
            .keys()
            .filter_map(|k| {
                let i = k.find("port=\"")? + 6;
                Some(k[i..i + k[i..].find('"')?].to_string())
            })
            .collect();
        assert!(ports.len() <= 3, "ports exported: {ports:?}");
    });
}

/// A listener on port 0 cannot exist: from a crafted procfs it is dropped and counted
/// with the malformed lines, never exported.
#[test]
fn a_listener_on_port_0_is_dropped_and_counted_as_malformed() {
    in_netns(|| {
        let dir = common::Scratch::new("port-zero");
        let head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let line = |sl: u32, port: u16, inode: u32| {
            format!(
                "{sl:4}: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
            )
        };
        let tcp = format!("{head}{}{}", line(0, 0, 910_001), line(1, 8080, 910_002));
        dir.write("proc/net/tcp", &tcp);
        for f in ["tcp6", "udp", "udp6"] {
            dir.write(&format!("proc/net/{f}"), head);
        }
        let procfs = dir.str("proc");
        let srv = Server::start(
            19289,
            &[
                "--source",
                "procfs",
                "--path.procfs",
                &procfs,
                "--poll.interval",
                "100ms",
                "--no-bind-events",
            ],
        );
        let m = srv.metrics_until(Duration::from_secs(10), |m| {
            m.get("bindwatch_procfs_malformed_lines_total", &[])
                .unwrap_or(0.0)
                >= 1.0
        });
        assert!(
            m.get("bindwatch_procfs_malformed_lines_total", &[])
                .unwrap_or(0.0)
                >= 1.0,
            "the port-0 listener is counted as malformed: {}",
            m.text
        );
        assert_eq!(
            m.matching("bindwatch_listener_info", &[("port", "8080")])
                .len(),
            1,
            "the good line is used: {}",
            m.text
        );
        assert!(
            port_series(&m, "0").is_empty(),
            "no series for port 0: {:?}",
            port_series(&m, "0")
        );
    });
}
