//! The failure tracer on `AF_UNIX`: a real failed bind() on a stale socket file, a
//! held path, an abstract name and a relative path, each recorded with its path and
//! what was there a moment later (`GET /failures`), and counted in
//! `bindwatch_bind_failures_total{protocol="unix"}` without a port or path label.
//! In a private network namespace and scratch directory. Needs root (BPF).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::unix::{bind, sun_path};
use common::{http_get, in_netns, Scratch, Server};

fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("read /proc/self/comm")
        .trim_end()
        .to_string()
}

fn unix_failures(s: &Server) -> Vec<serde_json::Value> {
    let (code, _, body) = http_get(s.addr, "/failures", &[]).expect("GET /failures");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("/failures is JSON");
    v["failures"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f["protocol"] == "unix")
        .collect()
}

/// Waits until the agent lists a unix failure on `address`; fails with what it lists.
fn failure_on(s: &Server, address: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = unix_failures(s);
        if let Some(f) = all.iter().find(|f| f["address"] == address) {
            return f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no unix failure on {address} recorded: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failed_unix_binds_are_recorded_with_their_path() {
    in_netns(|| {
        let dir = Scratch::new("unix-events");
        let srv = Server::start(19391, &["--poll.interval", "200ms"]);
        let m = srv.metrics();
        assert_eq!(
            m.get("bindwatch_capability", &[("capability", "bind_events")]),
            Some(1.0),
            "the tracer attaches as root"
        );
        let comm = own_comm();

        // A stale file: bound, closed without unlink, bound again.
        let stale = dir.str("stale.sock");
        drop(bind(libc::SOCK_STREAM, &sun_path(&stale), true).expect("first bind"));
        assert_eq!(
            bind(libc::SOCK_STREAM, &sun_path(&stale), false).err(),
            Some(libc::EADDRINUSE),
            "the kernel refuses the stale path"
        );
        let f = failure_on(&srv, &stale);
        assert_eq!(f["errno"], "eaddrinuse");
        assert_eq!(f["process"], comm.as_str());
        assert_eq!(f["state"], "stale", "{f}");
        assert_eq!(f["safe_to_remove"], true, "{f}");

        // A held path: this process listens there.
        let held = dir.str("held.sock");
        let _l = bind(libc::SOCK_SEQPACKET, &sun_path(&held), true).expect("listener");
        assert_eq!(
            bind(libc::SOCK_DGRAM, &sun_path(&held), false).err(),
            Some(libc::EADDRINUSE)
        );
        let f = failure_on(&srv, &held);
        assert_eq!(f["state"], "held", "{f}");
        assert_eq!(f["type"], "dgram", "the failing socket's type: {f}");
        let holder = f["holders"][0].as_str().unwrap_or_default();
        assert!(
            holder.starts_with(&format!("{comm}[{}]", std::process::id()))
                && holder.ends_with("seqpacket listen"),
            "{f}"
        );

        // An abstract name held in this namespace.
        let name = format!("@bindwatch-events-{}", std::process::id());
        let _a = bind(libc::SOCK_STREAM, &sun_path(&name), true).expect("abstract");
        assert_eq!(
            bind(libc::SOCK_STREAM, &sun_path(&name), false).err(),
            Some(libc::EADDRINUSE)
        );
        let f = failure_on(&srv, &name);
        assert_eq!(f["state"], "held", "{f}");

        // A relative path, from a python child in the scratch directory.
        let out = Command::new("python3")
            .args([
                "-c",
                "import socket\na=socket.socket(socket.AF_UNIX)\na.bind('rel.sock')\n\
                 b=socket.socket(socket.AF_UNIX)\ntry:\n    b.bind('rel.sock')\nexcept OSError as e:\n    print(e.errno)\n",
            ])
            .current_dir(&dir.0)
            .output()
            .expect("python3");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "98");
        let f = failure_on(&srv, "rel.sock");
        assert_eq!(f["state"], serde_json::Value::Null, "{f}");
        assert!(
            f["reason"].as_str().unwrap_or("").contains("relative"),
            "{f}"
        );

        // A bind that succeeds is not a failure.
        let fine = dir.str("fine.sock");
        drop(bind(libc::SOCK_STREAM, &sun_path(&fine), false).expect("free path"));

        // Counted with protocol="unix", no port, no path, per process.
        let m = srv.metrics_until(Duration::from_secs(15), |m| {
            m.get(
                "bindwatch_bind_failures_total",
                &[
                    ("protocol", "unix"),
                    ("errno", "eaddrinuse"),
                    ("process", &comm),
                ],
            ) == Some(3.0)
        });
        assert_eq!(
            m.get(
                "bindwatch_bind_failures_total",
                &[
                    ("protocol", "unix"),
                    ("errno", "eaddrinuse"),
                    ("process", &comm)
                ],
            ),
            Some(3.0),
            "{:?}",
            m.matching("bindwatch_bind_failures_total", &[("protocol", "unix")])
        );
        for (series, _) in m.matching("bindwatch_bind_failures_total", &[("protocol", "unix")]) {
            assert!(
                !series.contains("port=") && !series.contains("path=") && !series.contains(".sock"),
                "{series}"
            );
        }
        assert!(
            unix_failures(&srv)
                .iter()
                .all(|f| f["address"] != fine.as_str()),
            "a successful bind was recorded"
        );
    });
}
