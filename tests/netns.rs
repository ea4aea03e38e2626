//! `--netns all`: listeners and leftovers on the same port in two namespaces are
//! reported and judged per namespace; `--netns host` does not see them; `check
//! --netns NAME|PATH` answers inside a namespace and agrees with a real bind there.
//!
//! The test keeps to namespaces of its own, so that tests running beside it cannot
//! change what it sees: its body runs in a private network namespace (the agent's
//! `host`), its two named namespaces are files in a scratch directory given as
//! `--path.run-netns`, and the agent runs in a private PID namespace with its own
//! `/proc`, where no other test's processes (and their namespaces) are visible.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const P: u16 = 18400;

/// A named namespace: a file in `dir` the new namespace is bind-mounted on (what `ip
/// netns add` does in /run/netns), unmounted and removed on drop.
struct NamedNetns(PathBuf);

impl NamedNetns {
    fn new(dir: &Path, name: &str) -> NamedNetns {
        let path = dir.join(name);
        File::create(&path).expect("create the namespace's file");
        let arg = format!("--net={}", path.display());
        run_ok("unshare", &[&arg, "true"]);
        let ns = NamedNetns(path);
        run_ok(
            "nsenter",
            &[
                &format!("--net={}", ns.path()),
                "ip",
                "link",
                "set",
                "lo",
                "up",
            ],
        );
        ns
    }

    fn path(&self) -> String {
        self.0.to_str().expect("utf-8 path").to_string()
    }

    fn name(&self) -> String {
        self.0
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string()
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = self.0.clone();
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            // SAFETY: setns takes an fd this thread holds open and only moves the
            // calling thread, which nothing else shares.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], P))
}

/// A listener without SO_REUSEADDR on [`P`], in the network namespace at `$1`, held by
/// a python process that leads its own session (a daemon), so that a restart of it
/// is judged from its holders.
const HOLDER: &str = "import socket, sys, time\n\
s = socket.socket()\ns.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen(8)\ntime.sleep(300)\n";

#[test]
fn namespaces_are_reported_and_judged_separately() {
    in_netns(judged_separately);
}

fn judged_separately() {
    let dir = Scratch::new("netns-run");
    let a = NamedNetns::new(&dir.0, "bw-a");
    let b = NamedNetns::new(&dir.0, "bw-b");
    let run_netns = dir.str("");
    // The agent runs in a PID namespace of its own with its own /proc: it discovers only
    // its own network namespace and the named ones under `--path.run-netns`. Namespace
    // A's listener (no SO_REUSEADDR, no leftovers: a restart is clear) is held by a
    // daemon started in that PID namespace, where the agent can see who holds it.
    let script = format!(
        "nsenter --net={} setsid python3 -c \"$HOLDER\" {P} & exec \"$0\" \"$@\"",
        a.path()
    );
    let wrapper = [
        "env",
        &format!("HOLDER={HOLDER}"),
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child=SIGKILL",
        "sh",
        "-c",
        &script,
    ];
    let srv = Server::start_wrapped(
        &wrapper,
        18490,
        // The bpf source reads B's TIME_WAITs' own flags: B's listener is held outside
        // the agent's PID namespace, so netlink's verdicts there would be undecided.
        &[
            "--source",
            "bpf",
            "--netns",
            "all",
            "--path.run-netns",
            &run_netns,
            "--poll.interval",
            "300ms",
            "--state.file",
            "",
        ],
    );
    let (na, nb) = (a.name(), b.name());
    srv.metrics_until(Duration::from_secs(20), |m| {
        !m.matching(
            "bindwatch_listener_info",
            &[("netns", &na), ("port", "18400")],
        )
        .is_empty()
    });
    // Namespace B: a listener without SO_REUSEADDR, seen by bindwatch, then closed after
    // leaving 3 TIME_WAITs: a restart there is blocked.
    let listener_b = b.run(|| tcp_listener(addr(), false, false, None).expect("listener in B"));
    let seen = srv.metrics_until(Duration::from_secs(20), |m| {
        !m.matching(
            "bindwatch_listener_info",
            &[("netns", &nb), ("port", "18400"), ("reuseaddr", "false")],
        )
        .is_empty()
    });
    assert!(
        !seen
            .matching(
                "bindwatch_listener_info",
                &[("netns", &nb), ("port", "18400")]
            )
            .is_empty(),
        "B's listener was never seen: {}",
        seen.text
    );
    b.run(move || {
        for _ in 0..3 {
            server_time_wait(&listener_b, addr());
        }
        drop(listener_b);
    });
    let m = srv.metrics_until(Duration::from_secs(20), |m| {
        m.get(
            "bindwatch_rebind_blocked",
            &[
                ("netns", &nb),
                ("protocol", "tcp"),
                ("address", "127.0.0.1"),
                ("port", "18400"),
                ("reuseaddr", "true"),
            ],
        ) == Some(1.0)
            && m.matching(
                "bindwatch_listener_info",
                &[("netns", &nb), ("port", "18400")],
            )
            .is_empty()
    });
    let p = P.to_string();
    assert_eq!(
        m.matching("bindwatch_listener_info", &[("netns", &na), ("port", &p)])
            .len(),
        1,
        "A's listener"
    );
    assert!(
        m.matching("bindwatch_listener_info", &[("netns", &nb), ("port", &p)])
            .is_empty(),
        "B's listener is gone"
    );
    assert_eq!(
        m.get(
            "bindwatch_port_sockets",
            &[
                ("netns", &nb),
                ("protocol", "tcp"),
                ("port", &p),
                ("state", "time_wait")
            ]
        ),
        Some(3.0)
    );
    assert!(
        m.matching(
            "bindwatch_port_sockets",
            &[("netns", &na), ("port", &p), ("state", "time_wait")]
        )
        .is_empty(),
        "B's leftovers do not leak into A"
    );
    for (ns, reuse, want) in [
        (&na, "false", 0.0),
        (&na, "true", 0.0),
        (&nb, "false", 1.0),
        (&nb, "true", 1.0),
    ] {
        let got = m.get(
            "bindwatch_rebind_blocked",
            &[
                ("netns", ns),
                ("protocol", "tcp"),
                ("address", "127.0.0.1"),
                ("port", &p),
                ("reuseaddr", reuse),
            ],
        );
        assert_eq!(got, Some(want), "{ns} reuseaddr={reuse}");
    }
    assert!(
        m.get(
            "bindwatch_sockets",
            &[
                ("netns", "host"),
                ("protocol", "tcp"),
                ("family", "ipv4"),
                ("state", "listen")
            ]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "the host namespace is labelled host"
    );
    assert!(m
        .get("bindwatch_netns_poll_duration_seconds", &[("netns", &na)])
        .is_some());

    // --netns host (the default) does not see either namespace.
    let host_only = Server::start(18491, &["--poll.interval", "300ms", "--state.file", ""]);
    let hm = host_only.metrics();
    assert!(hm
        .matching("bindwatch_listener_info", &[("port", &p)])
        .is_empty());
    assert!(hm
        .matching("bindwatch_port_sockets", &[("port", &p)])
        .is_empty());
    assert!(
        !hm.text.contains("netns=\""),
        "no netns label without --netns all"
    );

    // check --netns PATH answers inside the namespace; the kernel agrees there.
    let (pa, pb) = (a.path(), b.path());
    let (code, out, err) = bindwatch(&["check", &p, "--address", "127.0.0.1", "--netns", &pa]);
    assert_eq!(code, 1, "A has a listener: {out}{err}");
    assert_eq!(
        a.run(|| kernel_bind_listen(addr(), true, false, None)),
        Err(libc::EADDRINUSE)
    );
    let (code, out, err) = bindwatch(&["check", &p, "--address", "127.0.0.1", "--netns", &pb]);
    assert_eq!(
        code, 1,
        "B's TIME_WAITs block a bind without SO_REUSEADDR: {out}{err}"
    );
    assert_eq!(
        b.run(|| kernel_bind_listen(addr(), false, false, None)),
        Err(libc::EADDRINUSE)
    );
    let (code, out, err) = bindwatch(&["check", &p, "--address", "127.0.0.1", "--netns", "host"]);
    assert_eq!(
        code, 0,
        "nothing on the port in the host namespace: {out}{err}"
    );
    assert_eq!(kernel_bind_listen(addr(), false, false, None), Ok(()));
    let (code, _, err) = bindwatch(&["check", &p, "--netns", "no-such-netns"]);
    assert_eq!(code, 2);
    assert!(err.contains("--netns"), "{err}");
    // A path that is not a network namespace is refused, naming it.
    let not_ns = dir.write("not-a-netns", "x");
    let (code, _, err) = bindwatch(&["check", &p, "--netns", &not_ns]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--netns") && err.contains(&not_ns), "{err}");
}
