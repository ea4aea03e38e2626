//! `--netns all`: listeners and leftovers on the same port in two namespaces are
//! reported and judged per namespace; `--netns host` does not see them; `check
//! --netns NAME` answers inside a namespace and agrees with a real bind there.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;

const P: u16 = 18400;

/// A named namespace (`ip netns add`), deleted on drop.
struct NamedNetns(String);

impl NamedNetns {
    fn new(suffix: &str) -> NamedNetns {
        let name = format!("bw-{}-{suffix}", std::process::id());
        run_ok("ip", &["netns", "add", &name]);
        run_ok(
            "ip",
            &["netns", "exec", &name, "ip", "link", "set", "lo", "up"],
        );
        NamedNetns(name)
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.0);
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
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], P))
}

#[test]
fn namespaces_are_reported_and_judged_separately() {
    let a = NamedNetns::new("a");
    let b = NamedNetns::new("b");
    // Namespace A: a live listener without SO_REUSEADDR and no leftovers: a restart is clear.
    let (tx_a, rx_a) = std::sync::mpsc::channel::<()>();
    let holder_a = {
        let path = format!("/run/netns/{}", a.0);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            // SAFETY: setns takes an fd this thread holds open and only moves the
            // calling thread, which nothing else shares.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let _l = tcp_listener(addr(), false, false, None).expect("listener in A");
            let _ = rx_a.recv_timeout(Duration::from_secs(60));
        })
    };
    let srv = Server::start(
        18490,
        &[
            "--netns",
            "all",
            "--poll.interval",
            "300ms",
            "--state.file",
            "",
        ],
    );
    // Namespace B: a listener without SO_REUSEADDR, seen by bindwatch, then closed after
    // leaving 3 TIME_WAITs: a restart there is blocked.
    b.run(|| {
        let l = tcp_listener(addr(), false, false, None).expect("listener in B");
        for _ in 0..3 {
            server_time_wait(&l, addr());
        }
        std::thread::sleep(Duration::from_millis(900));
    });
    let (na, nb) = (a.0.clone(), b.0.clone());
    // `--netns all` polls every namespace of the host, also those that tests running
    // beside this one create (each new one costs a BPF load): 5 s was too short on a
    // loaded machine; the condition, not the time, is what this test checks.
    let m = srv.metrics_until(Duration::from_secs(30), |m| {
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

    // check --netns NAME answers inside the namespace; the kernel agrees there.
    let (code, out, err) = bindwatch(&["check", &p, "--address", "127.0.0.1", "--netns", &na]);
    assert_eq!(code, 1, "A has a listener: {out}{err}");
    assert_eq!(
        a.run(|| kernel_bind_listen(addr(), true, false, None)),
        Err(libc::EADDRINUSE)
    );
    let (code, out, err) = bindwatch(&["check", &p, "--address", "127.0.0.1", "--netns", &nb]);
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

    let _ = tx_a.send(());
    let _ = holder_a.join();
}
