//! The bpf source needs the kernel's HZ to turn TIME_WAIT and orphan deadlines into
//! seconds. Where it can be found (the kernel's config, or measured from
//! `/proc/timer_list`) the agent exports the timers; where it cannot, the agent says so
//! (a log line and `bindwatch_capability{capability="socket_timers"} 0`) and keeps
//! serving, instead of dropping every timer without a word.
//!
//! The "cannot" case is built with `--path.procfs` pointing at a copy of /proc made of
//! symlinks to every entry but `config.gz` and `timer_list`, and `--path.rootfs` at an
//! empty directory (no `/boot`). Each agent runs in its own network namespace.

mod common;

use std::time::Duration;

use common::*;

/// /proc as symlinks, without the entries named in `hide`.
fn proc_without(dir: &Scratch, hide: &[&str]) -> String {
    let root = dir.path("proc");
    std::fs::create_dir_all(&root).expect("mkdir");
    for e in std::fs::read_dir("/proc").expect("read /proc") {
        let name = e.expect("entry").file_name();
        let Some(n) = name.to_str() else { continue };
        if hide.contains(&n) {
            continue;
        }
        std::os::unix::fs::symlink(format!("/proc/{n}"), root.join(n)).expect("symlink");
    }
    root.to_str().expect("utf-8").to_string()
}

const TIMERS: &[(&str, &str)] = &[("capability", "socket_timers")];

#[test]
fn hz_known_gives_timers() {
    in_netns(|| {
        let srv = Server::start(19411, &["--source", "bpf", "--poll.interval", "300ms"]);
        let m = srv.metrics();
        assert_eq!(
            m.get("bindwatch_source_active", &[("source", "bpf")]),
            Some(1.0)
        );
        assert_eq!(
            m.get("bindwatch_capability", TIMERS),
            Some(1.0),
            "{}",
            m.text
        );
        // A TIME_WAIT left by a listener without SO_REUSEADDR has a clear time.
        let addr = "127.0.0.1:19412".parse().expect("addr");
        let l = tcp_listener(addr, false, false, None).expect("listener");
        srv.metrics_until(Duration::from_secs(20), |m| {
            !m.matching("bindwatch_listener_info", &[("port", "19412")])
                .is_empty()
        });
        server_time_wait(&l, addr);
        drop(l);
        let m = srv.metrics_until(Duration::from_secs(20), |m| {
            m.get(
                "bindwatch_rebind_clear_seconds",
                &[
                    ("protocol", "tcp"),
                    ("address", "127.0.0.1"),
                    ("port", "19412"),
                ],
            )
            .is_some()
        });
        let left = m
            .get(
                "bindwatch_rebind_clear_seconds",
                &[
                    ("protocol", "tcp"),
                    ("address", "127.0.0.1"),
                    ("port", "19412"),
                ],
            )
            .unwrap_or_else(|| panic!("no clear time for the TIME_WAIT: {}", m.text));
        assert!(left > 0.0 && left <= 60.0, "{left}");
    });
}

#[test]
fn hz_unknown_is_said_not_hidden() {
    in_netns(|| {
        let dir = Scratch::new("hz-unknown");
        let procfs = proc_without(&dir, &["config.gz", "timer_list"]);
        std::fs::create_dir_all(dir.path("rootfs")).expect("mkdir");
        let rootfs = dir.str("rootfs");
        let log = dir.path("log");
        let mut cmd = std::process::Command::new(bin());
        cmd.args([
            "serve",
            "--web.listen-address",
            "127.0.0.1:19413",
            "--state.file",
            "",
            "--poll.cpu-budget",
            "0",
            "--source",
            "bpf",
            "--poll.interval",
            "300ms",
            "--path.procfs",
            &procfs,
            "--path.rootfs",
            &rootfs,
        ]);
        let mut agent = Logged::spawn(cmd, log);
        let addr = "127.0.0.1:19413".parse().expect("addr");
        agent.wait_until("served /metrics", || {
            http_get(addr, "/metrics", &[]).map(|r| r.0).ok() == Some(200)
        });
        let (_, _, body) = http_get(addr, "/metrics", &[]).expect("scrape");
        let m = Metrics::parse(&String::from_utf8_lossy(&body));
        assert_eq!(
            m.get("bindwatch_source_active", &[("source", "bpf")]),
            Some(1.0),
            "{}",
            agent.log()
        );
        assert_eq!(
            m.get("bindwatch_capability", TIMERS),
            Some(0.0),
            "{}",
            m.text
        );
        assert!(
            agent.log().contains("HZ is unknown"),
            "no log line says why: {}",
            agent.log()
        );
        assert!(agent.alive(), "the agent keeps serving");
    });
}
