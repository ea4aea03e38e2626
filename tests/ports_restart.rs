//! `ports --json` and `check PORT --restart` give one answer per listener, as root and
//! as an unprivileged user, and root's answer is what the kernel's bind() then says.
//!
//! Needs root (a private network namespace; setpriv for the unprivileged run).

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A listener of the scenario and how it was made.
struct Case {
    port: u16,
    reuseaddr: bool,
    /// Server-side TIME_WAITs left on the port.
    time_waits: usize,
    /// An accepted connection kept open (a forked child's, as far as the kernel knows).
    held_child: bool,
}

const CASES: [Case; 4] = [
    // SO_REUSEADDR daemon with TIME_WAIT leftovers: a restart with its own flag works.
    Case {
        port: 21001,
        reuseaddr: true,
        time_waits: 3,
        held_child: false,
    },
    // The same without SO_REUSEADDR: the leftovers block it.
    Case {
        port: 21002,
        reuseaddr: false,
        time_waits: 3,
        held_child: false,
    },
    // SO_REUSEADDR daemon whose accepted connection lives on in another holder.
    Case {
        port: 21003,
        reuseaddr: true,
        time_waits: 0,
        held_child: true,
    },
    // Nothing left behind.
    Case {
        port: 21004,
        reuseaddr: false,
        time_waits: 0,
        held_child: false,
    },
];

fn exit_of(verdict: &str) -> i32 {
    match verdict {
        "clear" => 0,
        "blocked" => 1,
        "unknown" => 3,
        other => panic!("unexpected restart.verdict {other:?}"),
    }
}

/// Runs bindwatch, as root or as nobody without any capability.
fn run(unprivileged: bool, args: &[&str]) -> (i32, String, String) {
    let mut cmd = if unprivileged {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ]);
        c.arg(bin());
        c
    } else {
        Command::new(bin())
    };
    let out = cmd.args(args).output().expect("run bindwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// restart.verdict per port from `ports --json`.
fn ports_verdicts(unprivileged: bool) -> BTreeMap<u16, String> {
    let (code, out, err) = run(
        unprivileged,
        &["ports", "--json", "--source", "netlink", "--state.file", ""],
    );
    assert_eq!(code, 0, "ports --json: {err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("ports --json is JSON");
    let mut v = BTreeMap::new();
    for l in doc["listeners"].as_array().expect("listeners") {
        let port = l["port"].as_u64().expect("port") as u16;
        let verdict = l["restart"]["verdict"]
            .as_str()
            .unwrap_or_else(|| panic!("restart.verdict of {l}"))
            .to_string();
        v.insert(port, verdict);
    }
    v
}

#[test]
fn ports_and_check_restart_agree_and_root_matches_the_kernel() {
    in_netns(|| {
        let mut listeners = Vec::new();
        let mut held = Vec::new();
        for c in &CASES {
            let addr: SocketAddr = format!("127.0.0.1:{}", c.port).parse().unwrap();
            let l = tcp_listener(addr, c.reuseaddr, false, None).expect("listener");
            for _ in 0..c.time_waits {
                server_time_wait(&l, addr);
            }
            if c.held_child {
                let client = TcpStream::connect(addr).expect("connect");
                let (child, _) = l.accept().expect("accept");
                held.push((client, child));
            }
            listeners.push(l);
        }
        std::thread::sleep(Duration::from_millis(100));

        let mut root_verdicts = BTreeMap::new();
        for unprivileged in [false, true] {
            let who = if unprivileged { "nobody" } else { "root" };
            let ports = ports_verdicts(unprivileged);
            for c in &CASES {
                let verdict = ports
                    .get(&c.port)
                    .unwrap_or_else(|| panic!("{who}: port {} missing from ports --json", c.port));
                let p = c.port.to_string();
                let (code, out, err) = run(
                    unprivileged,
                    &[
                        "check",
                        &p,
                        "--restart",
                        "--source",
                        "netlink",
                        "--state.file",
                        "",
                    ],
                );
                assert_eq!(
                    code,
                    exit_of(verdict),
                    "{who}: port {p}: ports says {verdict}, check --restart exits {code}\n{out}{err}"
                );
                if !unprivileged {
                    root_verdicts.insert(c.port, verdict.clone());
                }
            }
            if unprivileged {
                // Without privileges the daemon's SO_REUSEADDR is unknown, and on 21001 it
                // decides (its TIME_WAITs block a new socket without it): cannot tell.
                assert_eq!(ports[&21001], "unknown", "nobody: {ports:?}");
                // Nothing else is on 21004, but nobody cannot read who holds the
                // listener: whether a restart closes it is unknown, never "clear".
                assert_eq!(
                    ports[&21004], "unknown",
                    "nobody: the listener's holders are unreadable: {ports:?}"
                );
            }
        }

        // Root sees every flag: each verdict is decided, and the kernel agrees once the
        // daemon is really gone and comes back with its own flags.
        for (c, l) in CASES.iter().zip(listeners) {
            drop(l);
            let addr: SocketAddr = format!("127.0.0.1:{}", c.port).parse().unwrap();
            let kernel = match kernel_bind_listen(addr, c.reuseaddr, false, None) {
                Ok(()) => "clear",
                Err(libc::EADDRINUSE) => "blocked",
                Err(e) => panic!("port {}: bind failed with errno {e}", c.port),
            };
            assert_eq!(
                root_verdicts[&c.port], kernel,
                "port {}: bindwatch (root) said {}, the kernel answered {kernel}",
                c.port, root_verdicts[&c.port]
            );
        }
        let expected = [
            (21001u16, "clear"),
            (21002, "blocked"),
            (21003, "clear"),
            (21004, "clear"),
        ];
        for (port, v) in expected {
            assert_eq!(
                root_verdicts[&port], v,
                "port {port}: the scenario's premise"
            );
        }
        drop(held);
    });
}
