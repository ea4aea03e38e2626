//! `bindwatch clear` against the real kernel: each test builds its sockets in a network
//! namespace of its own, runs the real binary there, and asks the kernel afterwards
//! (`ss`, a real `bind()` + `listen()` without SO_REUSEADDR, data over the connections
//! that must survive) what was destroyed and what was not.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Every TCP socket of this thread's namespace as `ss` reports it: (state, local, peer).
fn sockets() -> BTreeSet<(String, String, String)> {
    let out = run_ok("ss", &["-Htan"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[0].to_string(), f[3].to_string(), f[4].to_string()))
        })
        .collect()
}

fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':')?.1.parse().ok()
}

/// Sockets in `state` (ss's spelling) whose local port is `port`.
fn count(state: &str, port: u16) -> usize {
    sockets()
        .iter()
        .filter(|(s, l, _)| s == state && port_of(l) == Some(port))
        .count()
}

/// The namespace's TCP counters that are not zero (`nstat -asz`: absolute, history
/// file untouched): how sockets left.
fn tcp_counters() -> String {
    let out = run_ok("nstat", &["-asz"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 2 && f[0].starts_with("Tcp") && f[1] != "0"
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for `pred`, failing with what `ss` shows last.
fn await_ss(what: &str, pred: impl Fn() -> bool) {
    assert!(
        eventually(Duration::from_secs(10), &pred),
        "never {what}: {:#?}\nthe namespace's TCP counters:\n{}",
        sockets(),
        tcp_counters()
    );
}

fn v4(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("address")
}

/// `n` server-side TIME_WAITs on `addr`: `n` connections, the server closes each
/// first, the clients close once they saw its FIN. Leaves `listener` open. The kernel
/// may keep fewer TIME_WAITs than connections (rarely, under load, for reasons the
/// setup cannot see); the missing ones are made again, with a note, so that every
/// test starts from exactly `n`.
fn server_time_waits(listener: &Socket, addr: SocketAddr, n: usize) {
    let want = count("TIME-WAIT", addr.port()) + n;
    let mut missing = n;
    for round in 0..3 {
        time_wait_round(listener, addr, missing);
        let have = count("TIME-WAIT", addr.port());
        assert!(
            have <= want,
            "{have} TIME_WAITs on port {}, {want} expected",
            addr.port()
        );
        missing = want - have;
        if missing == 0 {
            return;
        }
        eprintln!(
            "NOTE: round {round} on {addr} left {missing} TIME_WAIT(s) fewer than connections; \
             making them again. TCP counters:\n{}",
            tcp_counters()
        );
    }
    panic!(
        "{missing} TIME_WAIT(s) on {addr} missing after 3 rounds: {:#?}",
        sockets()
    );
}

/// One round of [`server_time_waits`]: returns once the clients are gone and every
/// server socket on the port is a listener or a TIME_WAIT.
fn time_wait_round(listener: &Socket, addr: SocketAddr, n: usize) {
    let mut clients = Vec::new();
    for _ in 0..n {
        let c = TcpStream::connect(addr).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        drop(s);
        clients.push(c);
    }
    await_ss("saw the clients in CLOSE-WAIT", || {
        sockets()
            .iter()
            .filter(|(s, _, p)| s == "CLOSE-WAIT" && p == &addr.to_string())
            .count()
            == n
    });
    drop(clients);
    await_ss(
        "saw the clients gone and the server sockets in TIME-WAIT",
        || {
            sockets().iter().all(|(s, l, p)| {
                p != &addr.to_string()
                    && (port_of(l) != Some(addr.port()) || s == "LISTEN" || s == "TIME-WAIT")
            })
        },
    );
}

/// `bindwatch ARGS` without the host's state file.
fn clear(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["clear"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--state.file", ""]);
    bindwatch(&all)
}

/// The kernel's answer to a new listener on 0.0.0.0:`port` without SO_REUSEADDR.
fn fresh_bind(port: u16) -> Result<(), i32> {
    kernel_bind_listen(v4("0.0.0.0", port), false, false, None)
}

/// Data goes both ways over a connection whose far end echoes.
fn echoes(c: &mut TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(b"ping").expect("write after clear");
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).expect("read after clear");
    assert_eq!(&buf, b"ping");
}

/// Both directions of a plain connection between two sockets this test holds.
fn carries_data(a: &mut TcpStream, b: &mut TcpStream) {
    fn one_way(from: &mut TcpStream, to: &mut TcpStream) {
        to.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        from.write_all(b"data").expect("write");
        let mut buf = [0u8; 4];
        to.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"data");
    }
    one_way(a, b);
    one_way(b, a);
}

#[test]
fn fifty_server_time_waits_are_listed_then_destroyed_and_a_real_bind_succeeds() {
    in_netns(|| {
        const P: u16 = 19270;
        let addr = v4("127.0.0.1", P);
        let l = tcp_listener(addr, false, false, None).expect("listener");
        server_time_waits(&l, addr, 50);
        drop(l);
        assert_eq!(fresh_bind(P), Err(libc::EADDRINUSE), "the kernel: blocked");

        // Without --yes: the plan, nothing changed.
        let (code, out, err) = clear(&[&P.to_string()]);
        assert_eq!(code, 1, "{out}{err}");
        assert_eq!(out.matches("DESTROY time_wait").count(), 50, "{out}");
        assert!(out.contains("run again with --yes"), "{out}");
        assert!(!err.contains("destroyed socket"), "{err}");
        assert_eq!(count("TIME-WAIT", P), 50);
        assert_eq!(fresh_bind(P), Err(libc::EADDRINUSE));

        // The same as JSON.
        let (code, out, _) = clear(&[&P.to_string(), "--json"]);
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let blockers = v["plan"]["blockers"].as_array().expect("blockers");
        assert_eq!(blockers.len(), 50, "{v}");
        assert!(blockers
            .iter()
            .all(|b| b["action"] == "destroy" && b["state"] == "time_wait"));
        assert_eq!(v["plan"]["verdict_after_destroying"], "clear");
        assert!(v["result"].is_null(), "{v}");
        assert_eq!(count("TIME-WAIT", P), 50);

        // With --yes: every one destroyed, one log line each; the kernel agrees.
        let (code, out, err) = clear(&[&P.to_string(), "--yes", "--json"]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let destroyed = v["result"]["destroyed"].as_array().expect("destroyed");
        assert_eq!(destroyed.len(), 50, "{v}");
        assert_eq!(v["result"]["after"]["verdict"], "clear", "{v}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("msg=\"destroyed socket\""))
            .collect();
        assert_eq!(lines.len(), 50, "{err}");
        for l in &lines {
            for field in [
                "local=127.0.0.1:19270",
                "remote=127.0.0.1:",
                "state=time_wait",
                "owner=",
                "left_seconds=",
            ] {
                assert!(l.contains(field), "{field} missing: {l}");
            }
        }
        assert_eq!(count("TIME-WAIT", P), 0, "{:#?}", sockets());
        assert_eq!(fresh_bind(P), Ok(()), "a real bind right after clear");
    });
}

/// Server-side FIN_WAIT2 orphans whose peer never closes: with the default
/// tcp_fin_timeout the kernel keeps them as timewait sockets, with a longer one as
/// full sockets on the keepalive timer; both kinds are destroyed.
#[test]
fn orphaned_fin_wait2_are_destroyed_and_a_real_bind_succeeds() {
    for (fin_timeout, port) in [("60", 19280u16), ("120", 19281)] {
        in_netns(move || {
            run_ok(
                "sysctl",
                &["-qw", &format!("net.ipv4.tcp_fin_timeout={fin_timeout}")],
            );
            let addr = v4("127.0.0.1", port);
            let l = tcp_listener(addr, false, false, None).expect("listener");
            let mut peers = Vec::new();
            for _ in 0..5 {
                let c = TcpStream::connect(addr).expect("connect");
                let (s, _) = l.accept().expect("accept");
                drop(s);
                peers.push(c); // never closed: the server side waits for its FIN
            }
            drop(l);
            await_ss("saw 5 FIN-WAIT-2 orphans", || {
                count("FIN-WAIT-2", port) == 5
            });
            assert_eq!(fresh_bind(port), Err(libc::EADDRINUSE));
            let (code, out, err) = clear(&[&port.to_string()]);
            assert_eq!(code, 1, "{out}{err}");
            assert_eq!(out.matches("DESTROY fin_wait2").count(), 5, "{out}");
            let (code, out, err) = clear(&[&port.to_string(), "--yes"]);
            assert_eq!(code, 0, "tcp_fin_timeout {fin_timeout}: {out}{err}");
            assert_eq!(err.matches("state=fin_wait2").count(), 5, "{err}");
            assert_eq!(count("FIN-WAIT-2", port), 0, "{:#?}", sockets());
            assert_eq!(fresh_bind(port), Ok(()));
            drop(peers);
        });
    }
}

#[test]
fn a_connection_held_by_a_forked_child_is_kept_and_named_beside_destroyed_time_waits() {
    in_netns(|| {
        const P: u16 = 19290;
        let addr = v4("127.0.0.1", P);
        let l = tcp_listener(addr, false, false, None).expect("listener");
        server_time_waits(&l, addr, 10);
        let mut client = TcpStream::connect(addr).expect("connect");
        let (served, _) = l.accept().expect("accept");
        drop(l);
        // A child gets the served connection as fd 3 and echoes on it; this process
        // then closes its own copy, so the child is the only holder.
        let fd = served.as_raw_fd();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args([
            "-c",
            "import socket\ns = socket.socket(fileno=3)\nwhile True:\n    d = s.recv(100)\n    if not d:\n        break\n    s.sendall(d)\n",
        ])
        .stdin(Stdio::null());
        // SAFETY: between fork and exec only dup2 runs (async-signal-safe); `fd`
        // stays open in the parent until after spawn returns.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = Logged::spawn(
            cmd,
            std::env::temp_dir().join(format!("bw-clear-child-{}", std::process::id())),
        );
        drop(served);
        echoes(&mut client);

        let (code, out, err) = clear(&[&P.to_string(), "--yes"]);
        assert_eq!(code, 1, "the connection still blocks: {out}{err}");
        let pid = format!("pid {}", child.child.id());
        assert!(
            out.contains(&format!("stop {pid} (python3) or wait")),
            "{out}"
        );
        assert_eq!(err.matches("state=time_wait").count(), 10, "{err}");
        assert!(!err.contains("state=established"), "{err}");
        assert_eq!(count("TIME-WAIT", P), 0, "{:#?}", sockets());
        assert_eq!(count("ESTAB", P), 1, "{:#?}", sockets());
        echoes(&mut client);
        assert!(child.alive(), "{}", child.log());
        // The kernel agrees that the connection still blocks.
        assert_eq!(fresh_bind(P), Err(libc::EADDRINUSE));
        // Judged again, only the connection remains, listed with its holder.
        let after = out.split("judged again:").nth(1).expect("judged again");
        assert!(after.contains("BLOCKS  established"), "{after}");
        assert!(!after.contains("time_wait"), "{after}");
    });
}

#[test]
fn neighbours_and_other_connections_are_untouched() {
    in_netns(|| {
        const P: u16 = 19300;
        run_ok("ip", &["addr", "add", "127.0.0.2/8", "dev", "lo"]);
        // To clear: TIME_WAITs on 127.0.0.1:P.
        let a = tcp_listener(v4("127.0.0.1", P), false, false, None).expect("listener");
        server_time_waits(&a, v4("127.0.0.1", P), 10);
        drop(a);
        // Not to touch: TIME_WAITs on the neighbouring port, a live listener on
        // 127.0.0.2:P with TIME_WAITs and a connection, a connection on another port.
        let n = tcp_listener(v4("127.0.0.1", P + 1), false, false, None).expect("listener");
        server_time_waits(&n, v4("127.0.0.1", P + 1), 10);
        drop(n);
        let b = tcp_listener(v4("127.0.0.2", P), false, false, None).expect("listener");
        server_time_waits(&b, v4("127.0.0.2", P), 5);
        let mut to_b = TcpStream::connect(v4("127.0.0.2", P)).expect("connect");
        let mut at_b: TcpStream = b.accept().expect("accept").0.into();
        let c = tcp_listener(v4("127.0.0.1", P + 2), false, false, None).expect("listener");
        let mut to_c = TcpStream::connect(v4("127.0.0.1", P + 2)).expect("connect");
        let mut at_c: TcpStream = c.accept().expect("accept").0.into();
        let others: BTreeSet<_> = sockets()
            .into_iter()
            .filter(|(_, l, _)| l != &v4("127.0.0.1", P).to_string())
            .collect();
        assert_eq!(others.len(), 10 + 5 + 1 + 1 + 1 + 2 + 1, "{others:#?}");

        let (code, out, err) = clear(&[&P.to_string(), "--address", "127.0.0.1", "--yes"]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(err.matches("msg=\"destroyed socket\"").count(), 10, "{err}");
        assert_eq!(
            sockets(),
            others,
            "only the 10 TIME_WAITs on 127.0.0.1:{P} went"
        );
        carries_data(&mut to_b, &mut at_b);
        carries_data(&mut to_c, &mut at_c);
        assert_eq!(
            kernel_bind_listen(v4("127.0.0.1", P), false, false, None),
            Ok(())
        );
    });
}

#[test]
fn without_cap_net_admin_it_fails_with_the_kernels_error_and_changes_nothing() {
    in_netns(|| {
        const P: u16 = 19310;
        let addr = v4("127.0.0.1", P);
        let l = tcp_listener(addr, false, false, None).expect("listener");
        server_time_waits(&l, addr, 10);
        drop(l);
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(bin())
            .args(["clear", &P.to_string(), "--yes", "--state.file", ""])
            .output()
            .expect("setpriv");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
        assert!(
            stderr.contains("CAP_NET_ADMIN") && stderr.contains("Operation not permitted"),
            "{stderr}"
        );
        assert!(!stderr.contains("msg=\"destroyed socket\""), "{stderr}");
        assert_eq!(count("TIME-WAIT", P), 10, "{:#?}", sockets());
        assert_eq!(fresh_bind(P), Err(libc::EADDRINUSE));
    });
}

#[test]
fn restart_clears_the_listeners_own_leftovers() {
    in_netns(|| {
        const P: u16 = 19320;
        let addr = v4("127.0.0.1", P);
        let l = tcp_listener(addr, false, false, None).expect("listener");
        server_time_waits(&l, addr, 5);
        let (code, out, err) = clear(&[&P.to_string(), "--restart"]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("restart of"), "{out}");
        let (code, out, err) = clear(&[&P.to_string(), "--restart", "--yes"]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(count("TIME-WAIT", P), 0);
        assert_eq!(
            count("LISTEN", P),
            1,
            "the listener itself is never touched"
        );
        drop(l);
        assert_eq!(fresh_bind(P), Ok(()), "the restart the kernel allows");
    });
}

#[test]
fn wait_clear_after_destroys_what_still_blocks() {
    in_netns(|| {
        const P: u16 = 19330;
        let addr = v4("127.0.0.1", P);
        let l = tcp_listener(addr, false, false, None).expect("listener");
        server_time_waits(&l, addr, 5);
        drop(l);
        let (code, out, err) = bindwatch(&[
            "wait",
            &P.to_string(),
            "--clear-after",
            "200ms",
            "--timeout",
            "30s",
            "--poll.interval",
            "50ms",
            "--state.file",
            "",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(err.matches("msg=\"destroyed socket\"").count(), 5, "{err}");
        assert!(out.contains("would succeed"), "{out}");
        assert_eq!(count("TIME-WAIT", P), 0);
        assert_eq!(fresh_bind(P), Ok(()));
    });
}

#[test]
fn bad_input_is_a_clear_error() {
    for (args, code, want) in [
        (vec!["clear", "0"], 2, "a port from 1 to 65535"),
        (vec!["clear", "70000"], 2, "a port from 1 to 65535"),
        (vec!["clear", "http"], 2, "a port from 1 to 65535"),
        (vec!["clear", "80", "--type", "dgram"], 2, "--type"),
        (vec!["clear", "80", "--force"], 2, "--yes"),
        (
            vec!["clear", "80", "--restart", "--reuseaddr"],
            2,
            "--reuseaddr",
        ),
        (
            vec![
                "clear",
                "80",
                "--netns",
                "bindwatch-no-such-ns",
                "--state.file",
                "",
            ],
            2,
            "no such network namespace",
        ),
        (
            vec!["wait", "80", "--clear-after", "0s"],
            2,
            "--clear-after",
        ),
    ] {
        let (got, out, err) = bindwatch(&args);
        assert_eq!(got, code, "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    in_netns(|| {
        // --yes with nothing in the way: nothing to do, and it says so.
        let (code, out, err) = clear(&["19340", "--yes"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("nothing to clear"), "{out}");
        assert!(!err.contains("destroyed"), "{err}");
        // --restart with nothing listening and nothing remembered.
        let (code, _, err) = clear(&["19340", "--restart", "--yes"]);
        assert_eq!(code, 2);
        assert!(err.contains("nothing listens"), "{err}");
    });
}

/// A python `socketserver.TCPServer` (no SO_REUSEADDR, as its default), on `port`.
/// Returns the child once it listens, or the errno its bind failed with.
fn start_daemon(port: u16) -> Result<Logged, i32> {
    let script = "import socketserver, sys\n\
class H(socketserver.BaseRequestHandler):\n    def handle(self):\n        self.request.sendall(self.request.recv(100))\n\
try:\n    srv = socketserver.TCPServer(('127.0.0.1', int(sys.argv[1])), H)\n\
except OSError as e:\n    sys.exit(3 if e.errno == 98 else 4)\n\
srv.serve_forever()\n";
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script, &port.to_string()]);
    let log = std::env::temp_dir().join(format!("bw-clear-daemon-{}-{port}", std::process::id()));
    let mut d = Logged::spawn(cmd, log);
    // Readiness from the socket table, a failed bind from the exit status.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if count("LISTEN", port) == 1 {
            return Ok(d);
        }
        if let Ok(Some(st)) = d.child.try_wait() {
            assert_eq!(st.code(), Some(3), "daemon died: {}", d.log());
            return Err(libc::EADDRINUSE);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "daemon never listened: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Requests the daemon serves and closes first: each leaves a server-side TIME_WAIT.
fn serve_requests(port: u16, n: usize) {
    for _ in 0..n {
        let mut c = TcpStream::connect(v4("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(b"x").expect("request");
        let mut all = Vec::new();
        c.read_to_end(&mut all)
            .expect("answer, then the daemon's close");
        assert_eq!(all, b"x");
    }
    await_ss("saw the daemon's TIME_WAITs", || {
        count("TIME-WAIT", port) == n
    });
}

#[test]
fn a_real_daemon_restarts_right_after_clear() {
    in_netns(|| {
        const P: u16 = 19350;
        let mut d = start_daemon(P).expect("first start");
        serve_requests(P, 5);
        // Stopped now, the daemon cannot start again: its own TIME_WAITs block it.
        let _ = d.child.kill();
        let _ = d.child.wait();
        assert_eq!(start_daemon(P).err(), Some(libc::EADDRINUSE));
        let (code, out, err) = clear(&[&P.to_string(), "--address", "127.0.0.1", "--yes"]);
        assert_eq!(code, 0, "{out}{err}");
        let mut d = start_daemon(P).expect("starts right after clear");
        // And once more, judged as a restart while it runs: clear, stop, start.
        serve_requests(P, 3);
        let (code, out, err) = clear(&[&P.to_string(), "--restart", "--yes"]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(err.matches("msg=\"destroyed socket\"").count(), 3, "{err}");
        let _ = d.child.kill();
        let _ = d.child.wait();
        let _d = start_daemon(P).expect("restarts after clear --restart");
    });
}

/// `--netns NAME`: judged and destroyed inside a named namespace, from outside it.
#[test]
fn clears_inside_a_named_namespace() {
    let name = format!("bw-clear-{}", std::process::id());
    run_ok("ip", &["netns", "add", &name]);
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(name.clone());
    let path = format!("/run/netns/{name}");
    const P: u16 = 19360;
    let inside = move |f: Box<dyn FnOnce() + Send>| {
        let path = path.clone();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns with an fd this thread holds; it moves only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    };
    inside(Box::new(|| {
        run_ok("ip", &["link", "set", "lo", "up"]);
        let l = tcp_listener(v4("127.0.0.1", P), false, false, None).expect("listener");
        server_time_waits(&l, v4("127.0.0.1", P), 5);
    }));
    // From the test's own thread (another namespace).
    let (code, out, err) = clear(&[&P.to_string(), "--netns", &name, "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err.matches("msg=\"destroyed socket\"").count(), 5, "{err}");
    inside(Box::new(|| {
        assert_eq!(count("TIME-WAIT", P), 0, "{:#?}", sockets());
        assert_eq!(fresh_bind(P), Ok(()));
    }));
}

/// The unit's `ExecStartPre=bindwatch clear PORT --restart --yes`: the daemon has
/// stopped, so nothing listens; the agent's memory (its state file) names the
/// listener whose restart is judged, and the daemon starts right after.
#[test]
fn restart_of_a_stopped_daemon_uses_the_agents_memory() {
    in_netns(|| {
        const P: u16 = 19370;
        let dir = Scratch::new("clear-memory");
        let state = dir.str("state.json");
        let srv = Server::start(19371, &["--state.file", &state, "--poll.interval", "100ms"]);
        let mut d = start_daemon(P).expect("first start");
        serve_requests(P, 3);
        let seen = |m: &Metrics| {
            m.get(
                "bindwatch_port_sockets",
                &[
                    ("protocol", "tcp"),
                    ("port", "19370"),
                    ("state", "time_wait"),
                ],
            ) == Some(3.0)
        };
        let m = srv.metrics_until(Duration::from_secs(15), seen);
        assert!(seen(&m), "the agent never saw the TIME_WAITs: {}", m.text);
        let _ = d.child.kill();
        let _ = d.child.wait();
        // Without the agent's memory nothing says whose restart this is.
        let (code, _, err) = clear(&[&P.to_string(), "--restart", "--yes"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("nothing listens"), "{err}");
        let (code, out, err) = bindwatch(&[
            "clear",
            &P.to_string(),
            "--restart",
            "--yes",
            "--state.file",
            &state,
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("(gone; remembered by the agent)"), "{out}");
        assert_eq!(err.matches("msg=\"destroyed socket\"").count(), 3, "{err}");
        let _d = start_daemon(P).expect("starts right after clear");
        drop(srv);
    });
}

/// IPv6 and v4-mapped leftovers of a dual-stack listener are named exactly too.
#[test]
fn ipv6_and_mapped_time_waits_are_destroyed() {
    in_netns(|| {
        const P: u16 = 19380;
        let any6: SocketAddr = format!("[::]:{P}").parse().expect("address");
        let l = tcp_listener(any6, false, false, Some(false)).expect("dual-stack listener");
        server_time_waits(&l, format!("[::1]:{P}").parse().expect("address"), 3);
        server_time_waits(&l, v4("127.0.0.1", P), 3);
        drop(l);
        let v6 = |prefix: &str| {
            sockets()
                .iter()
                .filter(|(s, l, _)| s == "TIME-WAIT" && l.starts_with(prefix))
                .count()
        };
        assert_eq!(
            (v6("[::1]"), v6("[::ffff:127.0.0.1]")),
            (3, 3),
            "{:#?}",
            sockets()
        );
        assert_eq!(
            kernel_bind_listen(any6, false, false, Some(false)),
            Err(libc::EADDRINUSE)
        );
        let (code, out, err) = clear(&[&P.to_string(), "--address", "::", "--yes"]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(err.matches("msg=\"destroyed socket\"").count(), 6, "{err}");
        assert_eq!(count("TIME-WAIT", P), 0, "{:#?}", sockets());
        assert_eq!(kernel_bind_listen(any6, false, false, Some(false)), Ok(()));
    });
}

/// A FIN_WAIT1 orphan: the server wrote more than the peer (which never reads) can
/// take, then closed; its FIN waits behind the data. Destroyed on Linux 6.11 and
/// later, kept before unless `--force`.
#[test]
fn an_orphaned_fin_wait1_is_destroyed_where_the_kernel_allows_it() {
    in_netns(|| {
        const P: u16 = 19390;
        let addr = v4("127.0.0.1", P);
        let l = tcp_listener(addr, false, false, None).expect("listener");
        let peer = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        peer.set_recv_buffer_size(4096).expect("rcvbuf");
        peer.connect(&addr.into()).expect("connect");
        let (s, _) = l.accept().expect("accept");
        drop(l);
        s.set_nonblocking(true).expect("nonblocking");
        let chunk = [0u8; 65536];
        let mut sent = 0usize;
        // Bounded: the peer's window and our send buffer fill within a few MB.
        while sent < 64 << 20 {
            match s.send(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        drop(s);
        await_ss("saw the FIN_WAIT1 orphan", || count("FIN-WAIT-1", P) == 1);
        let release = run_ok("uname", &["-r"]);
        let release = String::from_utf8_lossy(&release.stdout);
        let mut v = release.trim().split(['.', '-']);
        let major: u32 = v.next().and_then(|x| x.parse().ok()).expect("major");
        let minor: u32 = v.next().and_then(|x| x.parse().ok()).expect("minor");
        let (code, out, err) = clear(&[&P.to_string(), "--yes"]);
        if (major, minor) < (6, 11) {
            assert_eq!(code, 1, "{out}{err}");
            assert!(out.contains("--force destroys it anyway"), "{out}");
            assert_eq!(count("FIN-WAIT-1", P), 1);
        } else {
            assert_eq!(code, 0, "{out}{err}");
            assert_eq!(err.matches("state=fin_wait1").count(), 1, "{err}");
            assert_eq!(count("FIN-WAIT-1", P), 0, "{:#?}", sockets());
            assert_eq!(fresh_bind(P), Ok(()));
        }
        drop(peer);
    });
}
