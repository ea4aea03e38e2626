//! Owners and flags: real child processes listen with and without SO_REUSEADDR and
//! SO_REUSEPORT; bindwatch must name the process and user and read each flag.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A python3 child that binds (and for TCP listens) with the given flags, prints
/// `ready`, and then either holds the socket or, with `serve_one`, accepts one
/// connection after a pause, closes it first (server-side TIME_WAIT) and exits.
const CHILD: &str = r#"
import socket, sys, time
proto, addr, port, ra, rp, v6, serve_one = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1", sys.argv[6], sys.argv[7] == "1"
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1 if ra else 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1 if rp else 0)
if fam == socket.AF_INET6 and v6 != "-":
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6))
s.bind((addr, port))
if proto == "tcp":
    s.listen(16)
print("ready", flush=True)
if serve_one:
    time.sleep(1.5)
    c, _ = s.accept()
    c.close()
    time.sleep(0.3)
    sys.exit(0)
time.sleep(120)
"#;

struct Child_(Child);

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_child(
    as_nobody: bool,
    proto: &str,
    addr: &str,
    port: u16,
    ra: bool,
    rp: bool,
    v6: &str,
    serve_one: bool,
) -> Child_ {
    let args = [
        proto.to_string(),
        addr.to_string(),
        port.to_string(),
        (ra as u8).to_string(),
        (rp as u8).to_string(),
        v6.to_string(),
        (serve_one as u8).to_string(),
    ];
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        // Debian's python: a pyenv shim under /root is not reachable for uid 65534.
        c.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            CHILD,
        ]);
        c
    } else {
        let mut c = Command::new("python3");
        c.args(["-c", CHILD]);
        c
    };
    let mut child = cmd
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");
    assert_eq!(line.trim(), "ready", "child {args:?}");
    Child_(child)
}

fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.split(':').nth(2) == Some(&uid.to_string()))
                .and_then(|l| l.split(':').next().map(str::to_string))
        })
        .unwrap_or_else(|| uid.to_string())
}

#[test]
fn ports_and_metrics_name_owner_user_and_flags() {
    in_netns(|| {
        // (as nobody, proto, addr, port, reuseaddr, reuseport, v6only)
        let cases: [(bool, &str, &str, u16, bool, bool, &str); 8] = [
            (false, "tcp", "127.0.0.1", 18301, false, false, "-"),
            (false, "tcp", "127.0.0.1", 18302, true, false, "-"),
            (false, "tcp", "0.0.0.0", 18303, false, true, "-"),
            (false, "tcp", "::", 18304, true, true, "0"),
            (false, "tcp", "::1", 18305, false, false, "-"),
            (false, "udp", "127.0.0.1", 18306, true, false, "-"),
            (false, "udp", "::1", 18307, false, true, "-"),
            (true, "tcp", "127.0.0.1", 18308, true, false, "-"),
        ];
        let _children: Vec<Child_> = cases
            .iter()
            .map(|&(nobody, proto, addr, port, ra, rp, v6)| {
                spawn_child(nobody, proto, addr, port, ra, rp, v6, false)
            })
            .collect();
        let srv = Server::start(18380, &["--poll.interval", "300ms", "--state.file", ""]);
        // The agent's owner scan is time-sliced: on a busy machine the first polls may
        // publish listeners before their owners. Wait until every listener has one.
        let m = srv.metrics_until(Duration::from_secs(20), |m| {
            let got = m.matching("bindwatch_listener_info", &[]);
            cases.iter().all(|&(_, proto, addr, port, ..)| {
                let port = format!("port=\"{port}\"");
                let proto = format!("protocol=\"{proto}\"");
                let addr = format!("address=\"{addr}\"");
                got.iter().any(|(l, _)| {
                    l.contains(&port)
                        && l.contains(&proto)
                        && l.contains(&addr)
                        && !l.contains("process=\"unknown\"")
                })
            })
        });
        let (code, out, err) = bindwatch(&["ports", "--json", "--state.file", ""]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let listeners = v["listeners"].as_array().expect("listeners");
        for (nobody, proto, addr, port, ra, rp, _) in cases {
            let user = if nobody {
                user_name(65534)
            } else {
                user_name(0)
            };
            let (ra_s, rp_s) = (ra.to_string(), rp.to_string());
            let port_s = port.to_string();
            let got = m.matching(
                "bindwatch_listener_info",
                &[("protocol", proto), ("address", addr), ("port", &port_s)],
            );
            assert_eq!(got.len(), 1, "{proto} {addr}:{port}: {got:?}");
            for want in [
                "process=\"python3\"".to_string(),
                format!("user=\"{user}\""),
                format!("reuseaddr=\"{ra_s}\""),
                format!("reuseport=\"{rp_s}\""),
            ] {
                assert!(
                    got[0].0.contains(&want),
                    "{proto} {addr}:{port}: want {want} in {}",
                    got[0].0
                );
            }
            let j = listeners
                .iter()
                .find(|l| l["port"] == port && l["address"] == addr && l["protocol"] == proto)
                .unwrap_or_else(|| panic!("{proto} {addr}:{port} missing in ports --json: {out}"));
            assert_eq!(j["owner"]["process"], "python3");
            assert_eq!(j["owner"]["user"], user.as_str());
            assert!(
                j["owner"]["pid"].as_u64().unwrap_or(0) > 0,
                "pid shown in --json"
            );
            assert_eq!(j["reuseaddr"], ra_s.as_str());
            assert_eq!(j["reuseport"], rp_s.as_str());
        }
        assert!(!m.text.contains("pid="), "no pid label in metrics");
        assert_capabilities(&m, 1.0);
    });
}

/// The inherited-flag case: a listener's TIME_WAIT carries the listener's
/// SO_REUSEADDR. With the agent running (it remembers the listener's flags in its
/// state file) a later `check --reuseaddr` is exact; the kernel agrees.
fn inherited(ra: bool, port: u16, http: u16) {
    in_netns(move || {
        let state = std::env::temp_dir().join(format!(
            "bindwatch-owners-{}-{port}.json",
            std::process::id()
        ));
        let state_s = state.to_string_lossy().into_owned();
        let srv = Server::start(
            http,
            &["--poll.interval", "200ms", "--state.file", &state_s],
        );
        let mut child = spawn_child(false, "tcp", "127.0.0.1", port, ra, false, "-", true);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let client = TcpStream::connect(addr).expect("connect");
        // The child accepts after 1.5 s, closes first and exits.
        let status = child.0.wait().expect("child exit");
        assert!(status.success());
        drop(client);
        let tw = eventually(Duration::from_secs(3), || {
            let out = run_ok(
                "ss",
                &[
                    "-tanH",
                    "state",
                    "time-wait",
                    &format!("( sport = :{port} )"),
                ],
            );
            !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        });
        assert!(tw, "server-side TIME_WAIT exists");
        // Let the agent poll once more so the state file holds the (now gone) listener.
        std::thread::sleep(Duration::from_millis(500));
        let p = port.to_string();
        let (code, out, err) = bindwatch(&[
            "check",
            &p,
            "--address",
            "127.0.0.1",
            "--reuseaddr",
            "--state.file",
            &state_s,
        ]);
        let kernel = kernel_bind_listen(addr, true, false, None);
        if ra {
            assert_eq!(
                code, 0,
                "leftover of a SO_REUSEADDR listener: clear\n{out}{err}"
            );
            assert_eq!(kernel, Ok(()), "kernel agrees");
        } else {
            assert_eq!(
                code, 1,
                "leftover of a listener without SO_REUSEADDR: blocked\n{out}{err}"
            );
            assert_eq!(kernel, Err(libc::EADDRINUSE), "kernel agrees");
        }
        // Without the agent's memory, netlink cannot tell (contract: exit 3); the bpf
        // source reads the TIME_WAIT's own flags and answers as the kernel does.
        let one_shot = |source: &str| {
            bindwatch(&[
                "check",
                &p,
                "--address",
                "127.0.0.1",
                "--reuseaddr",
                "--state.file",
                "",
                "--source",
                source,
            ])
        };
        let (code, out, _) = one_shot("netlink");
        assert_eq!(code, 3, "{out}");
        let (code, out, _) = one_shot("bpf");
        assert_eq!(code, if ra { 0 } else { 1 }, "{out}");
        drop(srv);
        let _ = std::fs::remove_file(state);
    });
}

#[test]
fn inherited_flags_without_reuseaddr_block() {
    inherited(false, 18311, 18381);
}

#[test]
fn inherited_flags_with_reuseaddr_clear() {
    inherited(true, 18312, 18382);
}

#[test]
fn unprivileged_agent_degrades_to_unknown() {
    in_netns(|| {
        // A root-owned listener: its flags cannot be read by an unprivileged bindwatch.
        let _l = tcp_listener("127.0.0.1:18320".parse().expect("addr"), false, false, None)
            .expect("listener");
        let mut child = agent_with_caps("-all", 18390);
        let addr: SocketAddr = "127.0.0.1:18390".parse().expect("addr");
        // Several polls pass without a crash.
        std::thread::sleep(Duration::from_millis(1000));
        let (code, _, body) = http_get(addr, "/metrics", &[]).expect("scrape");
        assert_eq!(code, 200);
        let m = Metrics::parse(&String::from_utf8_lossy(&body));
        let l = m.matching("bindwatch_listener_info", &[("port", "18320")]);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(
            l[0].0.contains("reuseaddr=\"unknown\"") && l[0].0.contains("process=\"unknown\""),
            "{}",
            l[0].0
        );
        assert_capabilities(&m, 0.0);
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "still running"
        );
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("CAP_SYS_PTRACE") && log.contains("CAP_DAC_READ_SEARCH"),
            "one log line says how to grant: {log}"
        );
        assert_eq!(
            log.matches("CAP_SYS_PTRACE").count(),
            1,
            "logged once, not every poll: {log}"
        );
        assert!(!log.contains("panicked"), "{log}");
    });
}

/// A restarted agent picks its listener memory up from the state file, so the
/// leftovers of a daemon that died while bindwatch was down are still judged.
#[test]
fn restarted_agent_restores_listener_memory() {
    in_netns(|| {
        let state =
            std::env::temp_dir().join(format!("bindwatch-restore-{}.json", std::process::id()));
        let state_s = state.to_string_lossy().into_owned();
        let first = Server::start(
            18385,
            &["--poll.interval", "200ms", "--state.file", &state_s],
        );
        let mut child = spawn_child(false, "tcp", "127.0.0.1", 18313, false, false, "-", true);
        let client = TcpStream::connect("127.0.0.1:18313").expect("connect");
        assert!(child.0.wait().expect("child exit").success());
        drop(client);
        std::thread::sleep(Duration::from_millis(500));
        drop(first);
        let labels = [
            ("protocol", "tcp"),
            ("address", "127.0.0.1"),
            ("port", "18313"),
            ("reuseaddr", "true"),
        ];
        let second = Server::start(
            18386,
            &["--poll.interval", "200ms", "--state.file", &state_s],
        );
        assert_eq!(
            second.metrics().get("bindwatch_rebind_blocked", &labels),
            Some(1.0),
            "judged with the remembered flags"
        );
        let fresh = Server::start(18387, &["--poll.interval", "200ms"]);
        let m = fresh.metrics();
        assert_eq!(
            m.get("bindwatch_rebind_blocked", &labels),
            None,
            "without memory the port is not even of interest"
        );
        let _ = std::fs::remove_file(state);
    });
}

/// `bindwatch_capability` is `value` for both owners and socket flags.
fn assert_capabilities(m: &Metrics, value: f64) {
    for cap in ["owners", "socket_flags"] {
        assert_eq!(
            m.get("bindwatch_capability", &[("capability", cap)]),
            Some(value),
            "bindwatch_capability{{capability=\"{cap}\"}}"
        );
    }
}

/// bindwatch as uid 65534 with the given ambient capabilities (`+dac_read_search,...`),
/// polling every 300 ms; stderr is piped.
fn agent_with_caps(caps: &str, port: u16) -> Child {
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
        ])
        .arg(bin())
        .args([
            "serve",
            "--web.listen-address",
            &listen,
            "--poll.interval",
            "300ms",
            "--poll.cpu-budget",
            "0",
            "--state.file",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv bindwatch");
    let addr: SocketAddr = listen.parse().expect("addr");
    let up = eventually(Duration::from_secs(10), || {
        matches!(http_get(addr, "/healthz", &[]), Ok((200, _, _)))
    });
    assert!(up, "bindwatch with {caps} serves");
    child
}

/// What the kernel allows uid 65534 with `caps` on this process's fd `fd`: (listing
/// /proc/PID/fd works, reading the link works).
fn kernel_allows(caps: &str, fd: i32) -> (bool, bool) {
    let pid = std::process::id();
    let run = |script: String| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &format!("--inh-caps={caps}"),
                &format!("--ambient-caps={caps}"),
                "sh",
                "-c",
                &script,
            ])
            .output()
            .expect("setpriv sh")
            .status
            .success()
    };
    (
        run(format!("ls /proc/{pid}/fd >/dev/null")),
        run(format!("readlink /proc/{pid}/fd/{fd} >/dev/null")),
    )
}

/// `bindwatch_capability` says what bindwatch achieved: with CAP_DAC_READ_SEARCH alone
/// the fd tables of other users can be listed but their links not read (the ptrace
/// access check), so every other user's owner is unknown and `owners` must be 0, with
/// a warning naming CAP_SYS_PTRACE. With CAP_SYS_PTRACE too, owners are known and 1.
#[test]
fn dac_read_search_alone_does_not_give_owners() {
    in_netns(|| {
        // Held by this (root) test process.
        let l = tcp_listener("127.0.0.1:18322".parse().expect("addr"), false, false, None)
            .expect("listener");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        assert_eq!(
            kernel_allows("+dac_read_search", fd),
            (true, false),
            "the kernel lists the fd dir but refuses the link"
        );
        assert_eq!(
            kernel_allows("+dac_read_search,+sys_ptrace", fd),
            (true, true)
        );
        let listener = |m: &Metrics| {
            let l = m.matching("bindwatch_listener_info", &[("port", "18322")]);
            assert_eq!(l.len(), 1, "{l:?}");
            l[0].0.clone()
        };
        let mut agent = agent_with_caps("+dac_read_search", 18392);
        std::thread::sleep(Duration::from_millis(1000));
        let (code, _, body) =
            http_get("127.0.0.1:18392".parse().expect("addr"), "/metrics", &[]).expect("scrape");
        assert_eq!(code, 200);
        let m = Metrics::parse(&String::from_utf8_lossy(&body));
        assert!(
            listener(&m).contains("process=\"unknown\""),
            "{}",
            listener(&m)
        );
        assert_capabilities(&m, 0.0);
        let _ = agent.kill();
        let out = agent.wait_with_output().expect("wait");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("CAP_SYS_PTRACE") && log.contains("ptrace access check"),
            "the warning names the missing capability: {log}"
        );

        let _agent = Child_(agent_with_caps("+dac_read_search,+sys_ptrace", 18393));
        let addr: SocketAddr = "127.0.0.1:18393".parse().expect("addr");
        let mut last = String::new();
        let ok = eventually(Duration::from_secs(10), || {
            let Ok((200, _, body)) = http_get(addr, "/metrics", &[]) else {
                return false;
            };
            let m = Metrics::parse(&String::from_utf8_lossy(&body));
            last = listener(&m);
            !last.contains("process=\"unknown\"")
                && m.get("bindwatch_capability", &[("capability", "owners")]) == Some(1.0)
        });
        assert!(ok, "with CAP_SYS_PTRACE the owner is known: {last}");
        drop(l);
    });
}
