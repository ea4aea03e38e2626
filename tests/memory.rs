//! Remembered flags that lie, built for real on loopback in a private
//! network namespace and checked against the kernel: memory decides a leftover's
//! SO_REUSEADDR only when it provably (or, within one poll interval of the
//! listener's death, presumably) belongs to the listener it remembers; otherwise
//! `check` says it cannot tell (exit 3), never "would succeed" where bind() fails.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A state file of this test's own (never the host's /run/bindwatch/state.json).
fn state_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "bindwatch-memory-{name}-{}.json",
        std::process::id()
    ))
}

fn read_state(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The generations the state file remembers on `port`.
fn generations(path: &Path, port: u16) -> Vec<Value> {
    read_state(path)
        .and_then(|v| v["listeners"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["port"].as_u64() == Some(u64::from(port)))
        .collect()
}

/// `check PORT --address 127.0.0.1 --reuseaddr --source netlink --state.file F`,
/// and what the kernel answers to the same bind right after.
fn check_and_kernel(port: u16, state: &Path) -> (i32, String, Result<(), i32>) {
    let p = port.to_string();
    let st = state.to_string_lossy().into_owned();
    let (code, out, err) = bindwatch(&[
        "check",
        &p,
        "--address",
        "127.0.0.1",
        "--reuseaddr",
        "--source",
        "netlink",
        "--state.file",
        &st,
    ]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let kernel = kernel_bind_listen(addr, true, false, None);
    (code, format!("{out}{err}"), kernel)
}

/// A daemon without SO_REUSEADDR that lives briefly on `port` and leaves a
/// server-side TIME_WAIT.
fn short_lived_daemon_without_reuseaddr(port: u16) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let l = tcp_listener(addr, false, false, None).expect("listener without SO_REUSEADDR");
    server_time_wait(&l, addr);
    drop(l);
}

/// The kernel and bindwatch never disagree in a decided answer.
fn assert_never_wrong(code: i32, kernel: Result<(), i32>, out: &str) {
    match code {
        0 => assert_eq!(
            kernel,
            Ok(()),
            "bindwatch says clear, the kernel refuses:\n{out}"
        ),
        1 => assert_eq!(
            kernel,
            Err(libc::EADDRINUSE),
            "bindwatch says blocked, the kernel accepts:\n{out}"
        ),
        3 => {}
        other => panic!("exit {other}:\n{out}"),
    }
}

/// Case 1: a dead agent's state file says the listener on P had SO_REUSEADDR. A
/// new daemon without it then lives and dies on P, leaving TIME_WAIT. `check`
/// must not take the dead agent's word for it.
#[test]
fn dead_agents_memory_is_ignored() {
    in_netns(|| {
        const P: u16 = 18601;
        let state = state_path("dead");
        let addr: SocketAddr = format!("127.0.0.1:{P}").parse().expect("addr");
        let remembered = tcp_listener(addr, true, false, None).expect("listener");
        let agent = Server::start(
            18611,
            &[
                // Memory is the fallback where flags cannot be read: with the bpf
                // source they are read, not remembered, so the agent runs netlink.
                "--source",
                "netlink",
                "--poll.interval",
                "200ms",
                "--state.file",
                &state.to_string_lossy(),
            ],
        );
        let seen = eventually(Duration::from_secs(10), || {
            generations(&state, P)
                .iter()
                .any(|g| g["reuseaddr"] == Value::Bool(true))
        });
        assert!(
            seen,
            "the agent remembers P with SO_REUSEADDR: {:?}",
            read_state(&state)
        );
        drop(agent); // killed: its file stays behind, never refreshed
        drop(remembered);
        short_lived_daemon_without_reuseaddr(P);

        let (code, out, kernel) = check_and_kernel(P, &state);
        assert_eq!(
            kernel,
            Err(libc::EADDRINUSE),
            "the TIME_WAIT without SO_REUSEADDR blocks"
        );
        assert_never_wrong(code, kernel, &out);
        assert_eq!(code, 3, "memory cannot decide, so cannot tell:\n{out}");
        assert_eq!(
            out.matches("ignoring the listener memory").count(),
            1,
            "one line says why the file is ignored:\n{out}"
        );
        assert!(out.contains("is gone"), "{out}");
        let _ = std::fs::remove_file(&state);
    });
}

/// A state file whose writer's pid is alive but belongs to another process (the
/// pid was reused) is as dead as one whose pid is gone; so is an old file
/// without a writer section.
#[test]
fn reused_pid_and_old_files_are_not_a_live_writer() {
    in_netns(|| {
        const P: u16 = 18602;
        let state = state_path("reused");
        let me = std::process::id();
        let entry = serde_json::json!({
            "protocol": "tcp", "address": "127.0.0.1", "port": P, "v6only": null,
            "reuseaddr": true, "reuseport": false, "uid": 0, "ifindex": 0,
            "process": "daemon", "user": "root", "last_seen": now(), "inode": 1,
        });
        // Our own pid, with a start time that is not ours.
        let netns = netns_inode();
        let file = serde_json::json!({
            "netns": netns,
            "writer": {"pid": me, "start_time": 1, "poll_interval_seconds": 5.0, "heartbeat": now()},
            "listeners": [entry.clone()],
        });
        std::fs::write(&state, file.to_string()).expect("write state");
        short_lived_daemon_without_reuseaddr(P);
        let (code, out, kernel) = check_and_kernel(P, &state);
        assert_never_wrong(code, kernel, &out);
        assert_eq!(code, 3, "{out}");
        assert!(out.contains(&format!("pid {me}")), "{out}");

        let old = serde_json::json!({"netns": netns, "listeners": [entry]});
        std::fs::write(&state, old.to_string()).expect("write state");
        let (code, out, kernel) = check_and_kernel(P, &state);
        assert_never_wrong(code, kernel, &out);
        assert_eq!(code, 3, "{out}");
        assert!(out.contains("older bindwatch"), "{out}");
        let _ = std::fs::remove_file(&state);
    });
}

/// Case 2: a live agent (5 s polls) saw a listener with SO_REUSEADDR on Q, then saw
/// it gone. A listener without SO_REUSEADDR lives 0.3 s on Q between two polls and
/// leaves TIME_WAIT. `check` with the live agent's state file must not take it for
/// the remembered listener's; the agent counts it as unexplained.
#[test]
fn listener_missed_between_polls_is_not_taken_for_the_remembered_one() {
    in_netns(|| {
        const Q: u16 = 18603;
        let state = state_path("missed");
        let addr: SocketAddr = format!("127.0.0.1:{Q}").parse().expect("addr");
        let agent = Server::start(
            18613,
            &[
                // Memory is the fallback where flags cannot be read: with the bpf
                // source they are read, not remembered, so the agent runs netlink.
                "--source",
                "netlink",
                "--poll.interval",
                "5s",
                "--state.file",
                &state.to_string_lossy(),
            ],
        );
        let remembered = tcp_listener(addr, true, false, None).expect("listener");
        let seen = eventually(Duration::from_secs(12), || {
            generations(&state, Q)
                .iter()
                .any(|g| g["reuseaddr"] == Value::Bool(true) && g["gone_at"].is_null())
        });
        assert!(
            seen,
            "the agent saw Q with SO_REUSEADDR: {:?}",
            read_state(&state)
        );
        drop(remembered);
        let gone = eventually(Duration::from_secs(12), || {
            let g = generations(&state, Q);
            !g.is_empty() && g.iter().all(|g| g["gone_at"].is_number())
        });
        assert!(gone, "the agent saw Q gone: {:?}", read_state(&state));
        // Start right after a poll, so the short-lived listener falls between two polls
        // (5 s apart) and the agent never sees it; under load a poll could otherwise
        // land inside its 0.3 s and explain the leftover.
        let beat = |p: &Path| read_state(p).and_then(|v| v["writer"]["heartbeat"].as_f64());
        let before = beat(&state);
        let polled = eventually(Duration::from_secs(12), || beat(&state) != before);
        assert!(
            polled,
            "the agent's heartbeat moves: {:?}",
            read_state(&state)
        );
        let addr_s = addr;
        let l = tcp_listener(addr_s, false, false, None).expect("listener without SO_REUSEADDR");
        server_time_wait(&l, addr_s);
        std::thread::sleep(Duration::from_millis(200));
        drop(l); // lived about 0.3 s, between two polls

        let (code, out, kernel) = check_and_kernel(Q, &state);
        assert_eq!(
            kernel,
            Err(libc::EADDRINUSE),
            "the TIME_WAIT blocks:\n{out}"
        );
        assert_never_wrong(code, kernel, &out);
        assert_eq!(code, 3, "memory cannot decide, so cannot tell:\n{out}");
        assert!(
            !out.contains("ignoring the listener memory"),
            "the writer is alive:\n{out}"
        );

        // The agent itself notices a leftover its memory cannot explain.
        let m = agent.metrics_until(Duration::from_secs(12), |m| {
            m.get("bindwatch_memory_unexplained_leftovers_total", &[])
                .is_some_and(|v| v >= 1.0)
        });
        assert_eq!(
            m.get("bindwatch_memory_unexplained_leftovers_total", &[]),
            Some(1.0),
            "one leftover, counted once"
        );
        let labels = [
            ("protocol", "tcp"),
            ("address", "127.0.0.1"),
            ("port", "18603"),
            ("reuseaddr", "true"),
        ];
        assert_eq!(
            m.get("bindwatch_rebind_blocked", &labels),
            None,
            "not decided"
        );
        assert_eq!(m.get("bindwatch_rebind_undecided", &labels), Some(1.0));
        let _ = std::fs::remove_file(&state);
    });
}

/// Where memory is right (the agent saw the listener, the leftover is its own,
/// made while it listened) `check` decides, and the kernel agrees.
fn own_leftover_is_judged_with_the_listeners_flags(reuseaddr: bool, port: u16, http: u16) {
    in_netns(move || {
        let state = state_path(&format!("own-{port}"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let _agent = Server::start(
            http,
            &[
                // Memory is the fallback where flags cannot be read: with the bpf
                // source they are read, not remembered, so the agent runs netlink.
                "--source",
                "netlink",
                "--poll.interval",
                "200ms",
                "--state.file",
                &state.to_string_lossy(),
            ],
        );
        let l = tcp_listener(addr, reuseaddr, false, None).expect("listener");
        server_time_wait(&l, addr);
        let made = now();
        let seen = eventually(Duration::from_secs(10), || {
            generations(&state, port).iter().any(|g| {
                g["reuseaddr"] == Value::Bool(reuseaddr)
                    && g["last_seen"].as_f64().is_some_and(|t| t > made + 0.1)
            })
        });
        assert!(
            seen,
            "seen after its TIME_WAIT was made: {:?}",
            read_state(&state)
        );
        drop(l);
        let (code, out, kernel) = check_and_kernel(port, &state);
        assert_never_wrong(code, kernel, &out);
        assert_eq!(code, if reuseaddr { 0 } else { 1 }, "{out}");
        let _ = std::fs::remove_file(&state);
    });
}

#[test]
fn own_leftover_with_reuseaddr_is_clear() {
    own_leftover_is_judged_with_the_listeners_flags(true, 18604, 18614);
}

#[test]
fn own_leftover_without_reuseaddr_is_blocked() {
    own_leftover_is_judged_with_the_listeners_flags(false, 18605, 18615);
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
