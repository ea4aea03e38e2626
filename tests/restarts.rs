//! Restarts as they really happen, judged against real daemons restarted for real:
//! bindwatch's `check --restart` (and the agent's `bindwatch_rebind_blocked`) must
//! agree with what the real restart attempt does right after. Each scenario runs in
//! its own network namespace; every process a test starts is killed by pid.

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::path::PathBuf;

use common::daemons::{self, await_that, Pids};
use common::{bindwatch, in_netns, Metrics, Scratch, Server};

/// The exit status bindwatch must give, from what the real restart did.
fn expected(real_restart_ok: bool) -> i32 {
    if real_restart_ok {
        0
    } else {
        1
    }
}

fn check_restart(port: u16, state: &str) -> (i32, String, String) {
    bindwatch(&[
        "check",
        &port.to_string(),
        "--restart",
        "--state.file",
        state,
    ])
}

/// One line of the scenario table: bindwatch's answer beside the real restart's.
fn note(scenario: &str, bindwatch: &str, real_ok: bool, real: &str) {
    let real_said = if real_ok { "succeeded" } else { "FAILED" };
    eprintln!("SCENARIO {scenario}: bindwatch {bindwatch}; the real restart {real_said} ({real})");
}

/// Every `bindwatch_rebind_blocked` series of `port` (both reuseaddr values).
fn blocked(m: &Metrics, port: u16) -> Vec<f64> {
    m.matching("bindwatch_rebind_blocked", &[("port", &port.to_string())])
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// A forking python server on `port` with one child serving a connected client.
struct Serving {
    server: std::process::Child,
    parent: i32,
    child: i32,
    client: TcpStream,
}

/// Starts `script` (a forking server) on `port`, connects a client and waits until
/// exactly one child serves it; parent and child are in `pids`.
fn serving_a_client(script: &str, port: u16, pids: &mut Pids) -> Serving {
    let server = daemons::python(script, &[&port.to_string()]);
    let parent = server.id() as i32;
    pids.add(parent);
    await_that(
        "the server to listen",
        15,
        || daemons::accepts(port),
        String::new,
    );
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("client");
    client.write_all(b"x").expect("send");
    // The accept of the probe in `accepts` forks a child that exits at once;
    // wait for the one serving our client to be the only one.
    await_that(
        "one child serving the client",
        15,
        || daemons::children(parent).len() == 1,
        || format!("{:?}", daemons::children(parent)),
    );
    let child = daemons::children(parent)[0];
    pids.add(child);
    Serving {
        server,
        parent,
        child,
        client,
    }
}

/// nginx, master_process on with 2 workers; `kill -9` of the master only. The
/// workers keep the listening socket: the restart fails, bindwatch says so and
/// names them, and so does the agent's metric.
#[test]
fn nginx_master_killed_workers_keep_the_socket() {
    in_netns(|| {
        const PORT: u16 = 18081;
        let dir = Scratch::new("restart-nginx-kill9");
        let state = dir.str("state.json");
        let bw = Server::start(19201, &["--poll.interval", "200ms", "--state.file", &state]);
        let conf = daemons::nginx_conf(&dir, "nginx", PORT, 2);
        let mut pids = Pids::default();
        let out = daemons::nginx(&conf, None);
        assert!(
            out.status.success(),
            "nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (master, workers) = daemons::nginx_pids(&conf, PORT, 2);
        pids.add(master);
        workers.iter().for_each(|w| pids.add(*w));
        // The agent names the master as the main holder before it dies.
        let seen = bw.metrics_until(std::time::Duration::from_secs(20), |m| {
            m.text.contains(&format!("port=\"{PORT}\""))
        });
        assert!(
            seen.text.contains(&format!("port=\"{PORT}\"")),
            "{}",
            seen.text
        );

        // `ports` names the master as the holder, with its workers.
        let (_, table, _) = bindwatch(&["ports", "--state.file", ""]);
        let row = format!("nginx[{master}] root +2 workers");
        assert!(table.contains(&row), "{row} in:\n{table}");

        // SAFETY: kill with the pid of the nginx master this test started.
        unsafe { libc::kill(master, libc::SIGKILL) };
        await_that(
            "the master to die",
            10,
            || !daemons::alive(master),
            || master.to_string(),
        );

        let (code, out, err) = check_restart(PORT, "");
        let m = bw.metrics_until(std::time::Duration::from_secs(20), |m| {
            let b = blocked(m, PORT);
            !b.is_empty() && b.iter().all(|v| *v == 1.0)
        });
        // The real restart, right after.
        let again = daemons::nginx(&conf, None);
        let real_ok = again.status.success();
        if real_ok {
            let (m2, w2) = daemons::nginx_pids(&conf, PORT, 2);
            pids.add(m2);
            w2.iter().for_each(|w| pids.add(*w));
        }
        let real_err = String::from_utf8_lossy(&again.stderr);
        assert!(
            !real_ok && real_err.contains("Address already in use"),
            "the real restart: {real_err}"
        );
        note(
            "nginx kill -9 master, 2 workers alive",
            &format!(
                "check --restart exit {code}, rebind_blocked {:?}",
                blocked(&m, PORT)
            ),
            real_ok,
            real_err.lines().last().unwrap_or(""),
        );
        assert_eq!(code, expected(real_ok), "check --restart: {out}{err}");
        for w in &workers {
            assert!(
                out.contains(&format!("nginx pid {w}")),
                "names worker {w}: {out}"
            );
        }
        let b = blocked(&m, PORT);
        assert!(
            !b.is_empty() && b.iter().all(|v| *v == 1.0),
            "rebind_blocked {b:?}: {}",
            m.text
        );
    });
}

/// python's stock `ForkingTCPServer`: the parent is killed while a child serves a
/// client; the child holds the inherited listening socket. Without memory bindwatch
/// may not decide (3), never "would succeed"; with the agent's state file (it saw
/// the parent as the main holder) it says 1, as the agent's metric does.
#[test]
fn forking_server_parent_killed_child_keeps_the_socket() {
    in_netns(|| {
        const PORT: u16 = 18082;
        let dir = Scratch::new("restart-forking");
        let state = dir.str("state.json");
        let bw = Server::start(19202, &["--poll.interval", "200ms", "--state.file", &state]);
        let mut pids = Pids::default();
        let Serving {
            mut server,
            parent,
            child,
            client,
        } = serving_a_client(daemons::FORKING_SERVER, PORT, &mut pids);
        // The agent finds the child (forked after it first looked at the socket)
        // among the holders: its landing page counts one more holder.
        let held = format!("python3[{parent}] +1");
        await_that(
            "the agent to count the child as a holder",
            20,
            || {
                common::http_get(bw.addr, "/", &[])
                    .is_ok_and(|(_, _, body)| String::from_utf8_lossy(&body).contains(&held))
            },
            String::new,
        );
        await_that(
            "the state file to name the main holder",
            20,
            || {
                std::fs::read_to_string(&state)
                    .is_ok_and(|t| t.contains(&format!("\"main_holder\":[{parent},")))
            },
            || std::fs::read_to_string(&state).unwrap_or_default(),
        );

        server.kill().expect("kill the parent");
        server.wait().expect("reap the parent");
        assert!(
            daemons::alive(child),
            "the child serving the client lives on"
        );

        let (bare, bare_out, _) = check_restart(PORT, "");
        let (with_memory, mem_out, mem_err) = check_restart(PORT, &state);
        let m = bw.metrics_until(std::time::Duration::from_secs(20), |m| {
            let b = blocked(m, PORT);
            !b.is_empty() && b.iter().all(|v| *v == 1.0)
        });
        let again = daemons::python(daemons::FORKING_SERVER, &[&PORT.to_string()]);
        pids.add(again.id() as i32);
        let (status, err) = daemons::exit_of(again, 15);
        let real_ok = status.is_none(); // still serving after 15 s: it bound
        assert!(
            !real_ok && err.contains("Address already in use"),
            "the real restart: {status:?} {err}"
        );
        note(
            "ForkingTCPServer parent kill -9, child serving a client",
            &format!(
                "check --restart exit {bare} without memory, {with_memory} with the agent's state file; rebind_blocked {:?}",
                blocked(&m, PORT)
            ),
            real_ok,
            err.lines().last().unwrap_or(""),
        );
        assert!(
            bare == 1 || bare == 3,
            "without memory: 1 or 3, never 0: {bare} {bare_out}"
        );
        assert_eq!(with_memory, expected(real_ok), "{mem_out}{mem_err}");
        assert!(
            mem_out.contains(&format!("pid {child}")),
            "names the child: {mem_out}"
        );
        let b = blocked(&m, PORT);
        assert!(
            !b.is_empty() && b.iter().all(|v| *v == 1.0),
            "rebind_blocked {b:?}"
        );
        drop(client);
    });
}

/// A listener without SO_REUSEADDR crashes with server-side TIME_WAITs on its port
/// while an agent watches: right after, `check --restart` with the agent's state
/// file judges the vanished listener (0, 1 or 3, never 2 "nothing listens"), and a
/// 0 or 1 agrees with an immediate real restart.
#[test]
fn a_listener_that_just_crashed_is_judged_from_the_agents_memory() {
    in_netns(|| {
        const PORT: u16 = 18083;
        let dir = Scratch::new("restart-crash");
        let state = dir.str("state.json");
        let _bw = Server::start(19203, &["--poll.interval", "200ms", "--state.file", &state]);
        let mut pids = Pids::default();
        let mut server = daemons::python(daemons::CLOSING_SERVER, &[&PORT.to_string()]);
        pids.add(server.id() as i32);
        await_that(
            "the server to listen",
            15,
            || daemons::accepts(PORT),
            String::new,
        );
        for _ in 0..3 {
            let mut c = TcpStream::connect(("127.0.0.1", PORT)).expect("client");
            // The server closes first; our read sees its FIN, then we close.
            let _ = std::io::Read::read(&mut c, &mut [0u8; 1]);
        }
        await_that(
            "the agent to remember the listener's flags",
            20,
            || {
                std::fs::read_to_string(&state).is_ok_and(|t| {
                    t.contains(&format!("\"port\":{PORT}")) && t.contains("\"reuseaddr\":false")
                })
            },
            || std::fs::read_to_string(&state).unwrap_or_default(),
        );
        server.kill().expect("crash the server");
        server.wait().expect("reap");
        await_that(
            "the port to be free of listeners",
            10,
            || !daemons::accepts(PORT),
            String::new,
        );

        let (code, out, err) = check_restart(PORT, &state);
        let again = daemons::python(daemons::CLOSING_SERVER, &[&PORT.to_string()]);
        pids.add(again.id() as i32);
        let (status, real_err) = daemons::exit_of(again, 3);
        let real_ok = status.is_none();
        note(
            "listener without SO_REUSEADDR crashed, server-side TIME_WAITs",
            &format!("check --restart --state.file exit {code}"),
            real_ok,
            real_err.lines().last().unwrap_or("it bound"),
        );
        assert_ne!(code, 2, "the remembered listener is judged: {out}{err}");
        assert!(out.contains("gone now"), "{out}");
        if code != 3 {
            assert_eq!(
                code,
                expected(real_ok),
                "{out}{err}; real restart: {status:?} {real_err}"
            );
        }
        // Without the agent's memory nothing listens: exit 2, as before.
        let (bare, _, bare_err) = check_restart(PORT, "");
        assert_eq!(bare, 2, "{bare_err}");
    });
}

/// A cgroup built like a systemd unit's (by hand: no systemd runs here).
struct Unit {
    slice: PathBuf,
    unit: PathBuf,
    other: PathBuf,
}

impl Unit {
    fn new(tag: &str) -> Unit {
        let slice =
            daemons::cgroup2_root().join(format!("bwtest-{tag}-{}.slice", std::process::id()));
        let unit = slice.join("web.service");
        let other = slice.join("other.service");
        for d in [&slice, &unit, &other] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        Unit { slice, unit, other }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        for d in [&self.unit, &self.other] {
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
        }
        for d in [&self.unit, &self.other, &self.slice] {
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Holders in a unit's cgroup count as stopped by a restart (the restart = stop the
/// cgroup, start again); a worker moved out of it keeps the socket and blocks.
#[test]
fn a_units_cgroup_is_stopped_whole_and_a_holder_outside_it_blocks() {
    in_netns(|| {
        const PORT: u16 = 18084;
        let dir = Scratch::new("restart-unit");
        let unit = Unit::new("unit");
        let conf = daemons::nginx_conf(&dir, "nginx", PORT, 2);
        let mut pids = Pids::default();
        let out = daemons::nginx(&conf, Some(&unit.unit));
        assert!(
            out.status.success(),
            "nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (master, workers) = daemons::nginx_pids(&conf, PORT, 2);
        pids.add(master);
        workers.iter().for_each(|w| pids.add(*w));

        // 1. Everything in the unit: the restart stops it all.
        let (code, text, err) = check_restart(PORT, "");
        daemons::stop_cgroup(&unit.unit);
        let again = daemons::nginx(&conf, Some(&unit.unit));
        let real_ok = again.status.success();
        assert!(
            real_ok,
            "the real restart: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        note(
            "nginx in a unit's cgroup: stop the cgroup, start",
            &format!("check --restart exit {code}"),
            real_ok,
            "nginx started",
        );
        assert_eq!(code, expected(real_ok), "in the unit: {text}{err}");
        assert!(text.contains("(web.service)"), "names the unit: {text}");
        let (master, workers) = daemons::nginx_pids(&conf, PORT, 2);
        pids.add(master);
        workers.iter().for_each(|w| pids.add(*w));

        // 2. A worker moved to another cgroup outside the unit.
        let moved = workers[0];
        std::fs::write(unit.other.join("cgroup.procs"), moved.to_string()).expect("move a worker");
        let (code, text, err) = check_restart(PORT, "");
        daemons::stop_cgroup(&unit.unit);
        assert!(
            daemons::alive(moved),
            "the worker outside the unit survives the stop"
        );
        let again = daemons::nginx(&conf, Some(&unit.unit));
        let real_ok = again.status.success();
        if real_ok {
            let (m, w) = daemons::nginx_pids(&conf, PORT, 2);
            pids.add(m);
            w.iter().for_each(|w| pids.add(*w));
        }
        note(
            "nginx in a unit, one worker moved out of the cgroup",
            &format!("check --restart exit {code}"),
            real_ok,
            String::from_utf8_lossy(&again.stderr)
                .lines()
                .last()
                .unwrap_or(""),
        );
        assert!(
            !real_ok,
            "the real restart fails while the moved worker holds the socket"
        );
        assert_eq!(
            code,
            expected(real_ok),
            "with a holder outside: {text}{err}"
        );
        assert!(
            text.contains(&format!("nginx pid {moved}")),
            "names the survivor: {text}"
        );
    });
}

/// A live forking server outside any unit whose child serves a client: the restart
/// succeeds only if the child exits with its parent, which user space cannot see.
/// bindwatch answers "cannot tell" (3) and names both outcomes, never "would
/// succeed"; the real restart (the parent stopped, the server started again)
/// shows the failing outcome here.
#[test]
fn a_live_forking_server_outside_a_unit_cannot_be_told() {
    in_netns(|| {
        const PORT: u16 = 18085;
        // SO_REUSEADDR on: the child's connection does not block a reusing socket,
        // so only the listening socket's holders decide.
        let script = daemons::FORKING_SERVER.replace(
            "srv = socketserver.ForkingTCPServer(",
            "socketserver.ForkingTCPServer.allow_reuse_address = True\nsrv = socketserver.ForkingTCPServer(",
        );
        let mut pids = Pids::default();
        let Serving {
            mut server,
            child,
            client,
            ..
        } = serving_a_client(&script, PORT, &mut pids);

        let (code, out, err) = check_restart(PORT, "");
        server.kill().expect("stop the parent");
        server.wait().expect("reap");
        let again = daemons::python(&script, &[&PORT.to_string()]);
        pids.add(again.id() as i32);
        let (status, real_err) = daemons::exit_of(again, 3);
        let real_ok = status.is_none();
        note(
            "live ForkingTCPServer (SO_REUSEADDR) outside a unit, child serving",
            &format!("check --restart exit {code}"),
            real_ok,
            real_err.lines().last().unwrap_or("it bound"),
        );
        assert_eq!(code, 3, "{out}{err}");
        assert!(
            out.contains("would succeed if") && out.contains("would FAIL"),
            "both outcomes named: {out}"
        );
        assert!(
            out.contains(&format!("pid {child}")),
            "names the child: {out}"
        );
        assert!(!real_ok, "the child kept the socket: {real_err}");
        drop(client);
    });
}
