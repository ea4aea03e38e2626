//! The BPF socket-iterator source through the bindwatch binary, in a private netns:
//!
//! - seccomp denies bpf(): `--source auto` falls back to netlink (metric, one log line),
//!   `--source bpf` exits 2 naming the reason.
//! - `check` and `ports` show real flags for TIME_WAIT blockers, and `why:` names them.
//!
//! Needs root (network namespaces, CAP_BPF/CAP_PERFMON) and a kernel with BTF.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn a(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A seccomp filter on the child: bpf(2) fails with EPERM, everything else is allowed.
#[cfg(target_arch = "x86_64")]
fn deny_bpf(cmd: &mut Command) {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // struct seccomp_data { int nr; u32 arch; ... }
    let filter = [
        ins(LD_W_ABS, 0, 0, 4),
        ins(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        ins(LD_W_ABS, 0, 0, 0),
        ins(JEQ_K, 0, 1, libc::SYS_bpf as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    seccomp_in_child(cmd, filter.to_vec());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn bpf_denied_by_seccomp_falls_back_to_netlink() {
    in_netns(|| {
        let _l = tcp_listener(a("127.0.0.1:7301"), false, false, None).expect("listener");
        let port = 7390;
        let mut cmd = Command::new(bin());
        deny_bpf(&mut cmd);
        let mut child = cmd
            .args([
                "serve",
                "--source",
                "auto",
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
                "--state.file=",
                "--poll.interval",
                "500ms",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let addr = a(&format!("127.0.0.1:{port}"));
        let ok = eventually(Duration::from_secs(15), || {
            matches!(http_get(addr, "/healthz", &[]), Ok((200, _, _)))
        });
        let m = ok.then(|| {
            let (_, _, body) = http_get(addr, "/metrics", &[]).expect("scrape");
            Metrics::parse(&String::from_utf8_lossy(&body))
        });
        let _ = child.kill();
        let _ = child.wait();
        let mut log = String::new();
        if let Some(e) = child.stderr.as_mut() {
            let _ = e.read_to_string(&mut log);
        }
        let m = m.unwrap_or_else(|| panic!("agent did not serve: {log}"));
        assert_eq!(
            m.get("bindwatch_source_active", &[("source", "netlink")]),
            Some(1.0),
            "{}",
            m.text
        );
        assert_eq!(
            m.get("bindwatch_source_active", &[("source", "bpf")]),
            Some(0.0)
        );
        assert_eq!(
            m.get("bindwatch_capability", &[("capability", "bpf")]),
            Some(0.0)
        );
        assert_eq!(
            m.matching("bindwatch_listener_info", &[("port", "7301")])
                .len(),
            1,
            "sockets seen through netlink"
        );
        // Where the kernel's TCP iterator batches, auto does not try it at all and says
        // why; elsewhere it tries, is refused, and says that.
        let hazard = bindwatch::source::iterhazard::iterator_hazard(std::path::Path::new("/proc"));
        let (wanted, reason) = match &hazard {
            Some(_) => (
                "--source auto reads netlink sock_diag, not the bpf socket iterator",
                "bpf_iter_tcp_established_batch",
            ),
            None => ("bpf socket iterator unavailable", "Operation not permitted"),
        };
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(wanted)).collect();
        assert_eq!(lines.len(), 1, "one log line ({hazard:?}): {log}");
        assert!(lines[0].contains(reason), "{log}");
        // The bind tracer loads the same way: its line names it, the step and the errno.
        let tracer: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("bind failure events unavailable"))
            .collect();
        assert_eq!(tracer.len(), 1, "one tracer line: {log}");
        assert!(
            tracer[0].contains("the bind tracer")
                && tracer[0].contains("bpf(BPF_MAP_CREATE) probe")
                && tracer[0].contains("Operation not permitted"),
            "{log}"
        );

        // Forced, the same filter is a clear error (exit 2) with the reason, for the
        // agent and for the one-shot commands.
        for args in [
            &[
                "serve",
                "--source",
                "bpf",
                "--web.listen-address",
                "127.0.0.1:0",
                "--state.file=",
            ][..],
            &["ports", "--source", "bpf", "--state.file="][..],
            &["check", "7301", "--source", "bpf", "--state.file="][..],
        ] {
            let mut cmd = Command::new(bin());
            deny_bpf(&mut cmd);
            let out = cmd.args(args).output().expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains("BPF socket iterator") && err.contains("Operation not permitted"),
                "{args:?}: {err}"
            );
        }
    });
}

/// A TIME_WAIT blocker's flags are facts with bpf: `check` names them in `why:` and
/// decides where netlink cannot tell; `ports` lists them.
#[test]
fn check_and_ports_show_time_wait_flags() {
    in_netns(|| {
        // The daemon ran with SO_REUSEADDR and is gone; its connection is in TIME_WAIT.
        let l = tcp_listener(a("127.0.0.1:7401"), true, false, None).expect("listener");
        server_time_wait(&l, a("127.0.0.1:7401"));
        drop(l);
        // Another one without it, on its own port.
        let l = tcp_listener(a("127.0.0.1:7402"), false, false, None).expect("listener");
        server_time_wait(&l, a("127.0.0.1:7402"));
        drop(l);

        let check = |port: &str, source: &str| {
            bindwatch(&[
                "check",
                port,
                "--address",
                "127.0.0.1",
                "--reuseaddr",
                "--source",
                source,
                "--state.file=",
                "--json",
            ])
        };
        // The kernel: SO_REUSEADDR on both sides passes a TIME_WAIT; one side without fails.
        let kernel =
            |port: u16| kernel_bind_listen(a(&format!("127.0.0.1:{port}")), true, false, None);
        assert_eq!(kernel(7401), Ok(()));
        assert_eq!(kernel(7402), Err(libc::EADDRINUSE));

        let (code, out, err) = check("7401", "bpf");
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, err) = check("7402", "bpf");
        assert_eq!(code, 1, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        let blockers = v["checks"][0]["blockers"]
            .as_array()
            .unwrap_or_else(|| panic!("{v:#}"));
        let tw = blockers
            .iter()
            .find(|b| b["state"] == "time_wait")
            .unwrap_or_else(|| panic!("{v:#}"));
        assert_eq!(tw["reuseaddr"], "false", "{tw:#}");
        // netlink cannot see the TIME_WAIT's flags: cannot tell (exit 3).
        let (code, out, err) = check("7402", "netlink");
        assert_eq!(code, 3, "{out}{err}");

        // Text output: the why line names the blocker's flag.
        let (code, text, err) = bindwatch(&[
            "check",
            "7402",
            "--address",
            "127.0.0.1",
            "--reuseaddr",
            "--source",
            "bpf",
            "--state.file=",
        ]);
        assert_eq!(code, 1, "{text}{err}");
        let why = text
            .lines()
            .find(|l| l.trim_start().starts_with("why:"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            why.contains("lacks SO_REUSEADDR") && why.contains("SO_REUSEADDR false"),
            "{text}"
        );
        // With netlink the same blocker's flag is unknown, and said so.
        let (code, text, err) = bindwatch(&[
            "check",
            "7402",
            "--address",
            "127.0.0.1",
            "--reuseaddr",
            "--source",
            "netlink",
            "--state.file=",
        ]);
        assert_eq!(code, 3, "{text}{err}");
        assert!(text.contains("SO_REUSEADDR unknown"), "{text}");

        // ports: the old daemon on 7403 had SO_REUSEADDR and SO_REUSEPORT and left a
        // TIME_WAIT; the new one has SO_REUSEADDR only. With bpf the TIME_WAIT's own flags
        // are listed; netlink cannot know its SO_REUSEPORT.
        let old = tcp_listener(a("127.0.0.1:7403"), true, true, None).expect("old daemon");
        server_time_wait(&old, a("127.0.0.1:7403"));
        drop(old);
        let _new = tcp_listener(a("127.0.0.1:7403"), true, false, None).expect("new daemon");
        let tw_of = |source: &str| {
            let (code, out, err) =
                bindwatch(&["ports", "--source", source, "--state.file=", "--json"]);
            assert_eq!(code, 0, "{err}");
            let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
            let l = v["listeners"]
                .as_array()
                .and_then(|ls| ls.iter().find(|l| l["port"] == 7403))
                .cloned()
                .unwrap_or_else(|| panic!("{v:#}"));
            // A new socket without SO_REUSEADDR meets the TIME_WAIT (the daemon's own
            // SO_REUSEADDR passes it, so the restart's own list does not have it).
            l["without_reuseaddr_blockers"]
                .as_array()
                .and_then(|b| b.iter().find(|b| b["state"] == "time_wait"))
                .cloned()
                .unwrap_or_else(|| panic!("{l:#}"))
        };
        let tw = tw_of("bpf");
        assert_eq!(
            (tw["reuseaddr"].as_str(), tw["reuseport"].as_str()),
            (Some("true"), Some("true")),
            "{tw:#}"
        );
        // netlink has no flags of its own for it: lent by a listener, or unknown.
        let tw = tw_of("netlink");
        assert_ne!(tw["reuseport"], "true", "{tw:#}");
    });
}
