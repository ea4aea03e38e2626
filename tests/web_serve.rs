//! How `bindwatch serve` listens and logs, against the real binary: every
//! `--web.listen-address` is served (IPv4, IPv6, `:PORT` on both) and one that cannot be
//! bound fails start-up naming it; with `--web.systemd-socket` it serves on the socket
//! `systemd-socket-activate` passes and binds nothing of its own, and without one exits 2;
//! both `--log.format`s (logfmt, json) give lines a strict parser reads, with time, level
//! and message.
//!
//! `systemd-socket-activate` (Debian's systemd) comes from
//! `bash scripts/install-test-deps.sh`; a missing tool fails the test.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::{http_get, in_netns, Server};

#[test]
fn every_listen_address_is_served() {
    in_netns(|| {
        // Server::start adds 127.0.0.1:19340; the flag repeats.
        let srv = Server::start(
            19340,
            &[
                "--web.listen-address",
                "[::1]:19341",
                "--web.listen-address",
                ":19342",
            ],
        );
        for addr in [
            "127.0.0.1:19340",
            "[::1]:19341",
            "127.0.0.1:19342",
            "[::1]:19342",
        ] {
            let addr: std::net::SocketAddr = addr.parse().expect("addr");
            let (code, _, _) = http_get(addr, "/healthz", &[]).expect("connect");
            assert_eq!(code, 200, "{addr}");
        }
        // bindwatch sees its own three listeners.
        let m = srv.metrics_until(std::time::Duration::from_secs(10), |m| {
            m.matching("bindwatch_listener_info", &[("process", "bindwatch")])
                .len()
                >= 3
        });
        for (address, port) in [("127.0.0.1", "19340"), ("::1", "19341"), ("::", "19342")] {
            assert_eq!(
                m.matching(
                    "bindwatch_listener_info",
                    &[
                        ("address", address),
                        ("port", port),
                        ("process", "bindwatch")
                    ]
                )
                .len(),
                1,
                "{address}:{port}"
            );
        }
        // One bad address among good ones: exit 2 naming it.
        let (code, _, err) = common::bindwatch(&[
            "serve",
            "--state.file",
            "",
            "--web.listen-address",
            "127.0.0.1:19343",
            "--web.listen-address",
            "127.0.0.1:19340",
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("--web.listen-address 127.0.0.1:19340"),
            "{err}"
        );
    });
}

#[test]
fn systemd_socket_activation_serves_on_the_passed_socket() {
    in_netns(|| {
        let bin = common::bin();
        let mut child = Command::new("systemd-socket-activate")
            .args(["-l", "127.0.0.1:19350"])
            .arg(&bin)
            .args([
                "serve",
                "--web.systemd-socket",
                "--state.file",
                "",
                "--poll.interval",
                "300ms",
                "--poll.cpu-budget",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate (Debian's systemd, see install-test-deps.sh)");
        let addr: std::net::SocketAddr = "127.0.0.1:19350".parse().expect("addr");
        // systemd-socket-activate listens itself and execs bindwatch on the first
        // connection, which bindwatch then answers from the backlog.
        let mut served = None;
        for _ in 0..100 {
            if let Ok((code, _, body)) = http_get(addr, "/metrics", &[]) {
                served = Some((code, String::from_utf8_lossy(&body).into_owned()));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // The socket on 19350 is bindwatch's now (systemd-socket-activate exec'd
        // into it), and bindwatch bound nothing of its own (no default :10033).
        let owned = |text: &str| {
            common::Metrics::parse(text)
                .matching(
                    "bindwatch_listener_info",
                    &[("port", "19350"), ("process", "bindwatch")],
                )
                .len()
                == 1
        };
        let mut last = served.as_ref().map(|(_, t)| t.clone()).unwrap_or_default();
        for _ in 0..100 {
            if owned(&last) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            if let Ok((_, _, body)) = http_get(addr, "/metrics", &[]) {
                last = String::from_utf8_lossy(&body).into_owned();
            }
        }
        let alive = child.try_wait().expect("try_wait").is_none();
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        let (code, _) = served.unwrap_or_else(|| panic!("nothing served on {addr}:\n{err}"));
        assert_eq!(code, 200, "{err}");
        assert!(alive, "bindwatch exited:\n{err}");
        assert!(owned(&last), "{last}");
        let m = common::Metrics::parse(&last);
        assert!(m
            .matching("bindwatch_listener_info", &[("port", "10033")])
            .is_empty());
        assert!(err.contains("using the sockets systemd passed"), "{err}");

        // Without systemd: a clear error, exit 2.
        let (code, _, err) =
            common::bindwatch(&["serve", "--web.systemd-socket", "--state.file", ""]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("--web.systemd-socket: no sockets were passed"),
            "{err}"
        );
    });
}

/// Splits one logfmt line into pairs, strictly: bare values, or quoted ones with
/// `\"`, `\\`, `\n`, `\r`, `\t` and `\uXXXX` escapes; `None` on anything else.
fn parse_logfmt(line: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || key.contains([' ', '"']) {
            return None;
        }
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i + 1,
                    '\\' => match chars.next()?.1 {
                        '"' => v.push('"'),
                        '\\' => v.push('\\'),
                        'n' => v.push('\n'),
                        'r' => v.push('\r'),
                        't' => v.push('\t'),
                        'u' => {
                            let hex: String =
                                (0..4).filter_map(|_| chars.next().map(|c| c.1)).collect();
                            v.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        _ => return None,
                    },
                    c => v.push(c),
                }
            };
            (v, &q[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let v = &after[..end];
            if v.is_empty() || v.contains(['"', '=']) {
                return None;
            }
            (v.to_string(), &after[end..])
        };
        out.push((key.to_string(), value));
        rest = match after.strip_prefix(' ') {
            Some(r) if !r.is_empty() => r,
            None if after.is_empty() => "",
            _ => return None,
        };
    }
    Some(out)
}

#[test]
fn log_formats_logfmt_and_json_are_parseable() {
    in_netns(|| {
        for (format, port) in [("logfmt", 19360), ("json", 19361)] {
            // A watched-services file that does not exist: an error line with quotes
            // and a path in it, besides the usual start and stop lines.
            let mut srv = Server::start(port, &["--log.format", format, "--log.level", "debug"]);
            let _ = http_get(srv.addr, "/metrics", &[]);
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(srv.pid(), libc::SIGTERM) };
            let mut err = String::new();
            srv.child
                .stderr
                .take()
                .expect("stderr piped")
                .read_to_string(&mut err)
                .expect("read stderr");
            let lines: Vec<&str> = err.lines().collect();
            assert!(lines.len() >= 4, "{format}: too few lines:\n{err}");
            let mut msgs = Vec::new();
            for line in &lines {
                let pairs: Vec<(String, String)> = if format == "json" {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    let obj = v
                        .as_object()
                        .unwrap_or_else(|| panic!("not an object: {line}"));
                    obj.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_string)))
                        .collect()
                } else {
                    parse_logfmt(line).unwrap_or_else(|| panic!("not logfmt: {line}"))
                };
                let get = |k: &str| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
                let ts = get("ts").unwrap_or_else(|| panic!("no ts: {line}"));
                assert!(
                    ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                    "{ts}"
                );
                let level = get("level").unwrap_or_else(|| panic!("no level: {line}"));
                assert!(["error", "warn", "info", "debug", "trace"].contains(&level.as_str()));
                msgs.push(get("msg").unwrap_or_else(|| panic!("no msg: {line}")));
            }
            for want in [
                "starting bindwatch",
                "serving metrics",
                "SIGTERM received, shutting down",
                "stopped",
            ] {
                assert!(
                    msgs.iter().any(|m| m == want),
                    "{format}: no {want:?} in\n{err}"
                );
            }
        }
    });
}
