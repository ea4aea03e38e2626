//! The agent's self-score on real restarts, and `check`'s report at size. Routine
//! restarts that succeed (nginx `QUIT` then start, redis `kill -9` then start, a
//! start after `bindwatch wait`) add no `outcome="miss"`; a restart that really
//! fails is a failure and a `hit`, also when its listener lived less than a poll
//! interval. Each scenario in its own network namespace, real daemons, every
//! process killed by pid.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::daemons::{self, await_that, Pids};
use common::{bindwatch, in_netns, Metrics, Server};

fn outcome(m: &Metrics, o: &str) -> f64 {
    m.get("bindwatch_bind_predictions_total", &[("outcome", o)])
        .unwrap_or(0.0)
}

fn tracing_agent(port: u16, interval: &str) -> Server {
    let bw = Server::start(port, &["--poll.interval", interval]);
    let m = bw.metrics_until(Duration::from_secs(30), |m| {
        m.get("bindwatch_capability", &[("capability", "bind_events")]) == Some(1.0)
    });
    assert_eq!(
        m.get("bindwatch_capability", &[("capability", "bind_events")]),
        Some(1.0),
        "the bind tracer is attached: {}",
        m.text
    );
    bw
}

fn sees(bw: &Server, port: u16) {
    let m = bw.metrics_until(Duration::from_secs(20), |m| {
        m.text.contains(&format!("port=\"{port}\""))
    });
    assert!(
        m.text.contains(&format!("port=\"{port}\"")),
        "the agent watches {port}"
    );
    // The tracer learns the ports of interest from the published snapshots once a
    // second; a poll after this one (the interval is longer) comes after that.
    let poll = |m: &Metrics| {
        m.get("bindwatch_last_poll_timestamp_seconds", &[])
            .unwrap_or(0.0)
    };
    let t = poll(&m);
    let later = bw.metrics_until(Duration::from_secs(20), |m| poll(m) > t);
    assert!(poll(&later) > t, "a later poll");
}

#[test]
fn routine_restarts_that_succeed_count_no_miss() {
    in_netns(|| {
        let dir = common::Scratch::new("scores-routine");
        // Polls far apart: each restart binds while the last snapshot still holds
        // the listener that just went away.
        let bw = tracing_agent(19211, "3s");
        let mut pids = Pids::default();
        let before = bw.metrics();

        // nginx: QUIT (graceful), then start again.
        const NGINX: u16 = 18091;
        let conf = daemons::nginx_conf(&dir, "nginx", NGINX, 1);
        assert!(daemons::nginx(&conf, None).status.success());
        let (master, workers) = daemons::nginx_pids(&conf, NGINX, 1);
        pids.add(master);
        workers.iter().for_each(|w| pids.add(*w));
        sees(&bw, NGINX);
        // SAFETY: kill with the pid of the nginx master this test started.
        unsafe { libc::kill(master, libc::SIGQUIT) };
        await_that(
            "nginx to quit",
            15,
            || !daemons::alive(master) && !daemons::accepts(NGINX),
            String::new,
        );
        let again = daemons::nginx(&conf, None);
        assert!(
            again.status.success(),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        let (m2, w2) = daemons::nginx_pids(&conf, NGINX, 1);
        pids.add(m2);
        w2.iter().for_each(|w| pids.add(*w));

        // redis: kill -9 with a client connected, then start again.
        const REDIS: u16 = 18092;
        let redis = || {
            Command::new("redis-server")
                .args([
                    "--port",
                    &REDIS.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server")
        };
        let mut r = redis();
        pids.add(r.id() as i32);
        await_that(
            "redis to listen",
            15,
            || daemons::accepts(REDIS),
            String::new,
        );
        let mut client = TcpStream::connect(("127.0.0.1", REDIS)).expect("redis client");
        client.write_all(b"PING\r\n").expect("ping");
        let _ = client.read(&mut [0u8; 16]);
        sees(&bw, REDIS);
        r.kill().expect("kill -9 redis");
        r.wait().expect("reap redis");
        let r2 = redis();
        let r2_pid = r2.id() as i32;
        pids.keep(r2);
        await_that(
            "redis to listen again",
            15,
            || daemons::accepts(REDIS),
            || format!("redis {r2_pid} alive: {}", daemons::alive(r2_pid)),
        );

        // A listener that goes away while `bindwatch wait` waits; started after it.
        const WAITED: u16 = 18093;
        let mut py = daemons::python(LISTEN_ONLY, &[&WAITED.to_string()]);
        pids.add(py.id() as i32);
        await_that(
            "python to listen",
            15,
            || daemons::accepts(WAITED),
            String::new,
        );
        sees(&bw, WAITED);
        let waiter = std::thread::spawn(move || {
            bindwatch(&[
                "wait",
                &WAITED.to_string(),
                "--timeout",
                "30s",
                "--poll.interval",
                "200ms",
                "--state.file",
                "",
            ])
        });
        std::thread::sleep(Duration::from_millis(500));
        py.kill().expect("stop the listener");
        py.wait().expect("reap");
        let (code, out, err) = waiter.join().expect("wait thread");
        assert_eq!(code, 0, "wait: {out}{err}");
        let py2 = daemons::python(LISTEN_ONLY, &[&WAITED.to_string()]);
        let py2_pid = py2.id() as i32;
        pids.keep(py2);
        await_that(
            "python to listen again",
            15,
            || daemons::accepts(WAITED),
            || format!("python {py2_pid} alive: {}", daemons::alive(py2_pid)),
        );

        // Every restart bound and was scored; none was a miss.
        let base = outcome(&before, "hit");
        let m = bw.metrics_until(Duration::from_secs(20), |m| outcome(m, "hit") >= base + 3.0);
        assert!(
            outcome(&m, "hit") >= base + 3.0,
            "three restarts scored: {}",
            m.text
        );
        assert_eq!(
            outcome(&m, "miss"),
            outcome(&before, "miss"),
            "no miss: {}",
            m.text
        );
        eprintln!(
            "scores after routine restarts: hit {} miss {} undecided {}",
            outcome(&m, "hit"),
            outcome(&m, "miss"),
            outcome(&m, "undecided")
        );
        drop(client);
    });
}

/// Listens without SO_REUSEADDR and never accepts (a probe leaves no TIME_WAIT on
/// the port).
const LISTEN_ONLY: &str = r#"
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4)
time.sleep(600)
"#;

/// Listens without SO_REUSEADDR, closes one accepted connection first, and exits.
const SHORT_LIVED: &str = r#"
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4)
c, _ = s.accept()
c.close()
time.sleep(0.3)
"#;

#[test]
fn a_restart_that_fails_is_a_hit_even_after_a_listener_between_polls() {
    in_netns(|| {
        const PORT: u16 = 18094;
        let bw = tracing_agent(19212, "5s");
        let before = bw.metrics();
        let mut pids = Pids::default();
        let first = daemons::python(SHORT_LIVED, &[&PORT.to_string()]);
        pids.add(first.id() as i32);
        let mut client = None;
        await_that(
            "the short-lived listener",
            15,
            || {
                client = TcpStream::connect(("127.0.0.1", PORT)).ok();
                client.is_some()
            },
            String::new,
        );
        let mut c = client.take().expect("client");
        let _ = c.read(&mut [0u8; 1]); // the server's FIN
        let _ = c.shutdown(Shutdown::Both);
        drop(c);
        let tw_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let (status, err) = daemons::exit_of(first, 10);
        assert_eq!(status, Some(0), "the first run: {err}");
        // A table walk after the TIME_WAIT was made.
        bw.metrics_until(Duration::from_secs(20), |m| {
            m.get("bindwatch_last_poll_timestamp_seconds", &[])
                .is_some_and(|t| t > tw_at + 0.1)
        });

        let again = daemons::python(SHORT_LIVED, &[&PORT.to_string()]);
        pids.add(again.id() as i32);
        let (status, err) = daemons::exit_of(again, 10);
        assert!(
            status != Some(0) && err.contains("Address already in use"),
            "the real restart fails: {status:?} {err}"
        );
        let failures = |m: &Metrics| {
            m.matching(
                "bindwatch_bind_failures_total",
                &[("port", &PORT.to_string())],
            )
            .iter()
            .map(|(_, v)| *v)
            .sum::<f64>()
        };
        let base = outcome(&before, "hit");
        let m = bw.metrics_until(Duration::from_secs(20), |m| {
            failures(m) >= 1.0 && outcome(m, "hit") > base
        });
        assert!(failures(&m) >= 1.0, "the failure is counted: {}", m.text);
        assert!(outcome(&m, "hit") > base, "and scored a hit: {}", m.text);
        assert_eq!(outcome(&m, "miss"), outcome(&before, "miss"), "no miss");
        // The failure says what was predicted, not "nothing (port not watched)".
        let (_, _, body) = common::http_get(bw.addr, "/failures", &[]).expect("GET /failures");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("failures JSON");
        let f = v["failures"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["port"] == PORT))
            .unwrap_or_else(|| panic!("{v:#}"));
        assert_eq!(f["verdict_before"], "blocked", "{f:#}");
    });
}

/// 300 server-side TIME_WAITs on a port: `check` prints about 20 blockers and says
/// how many more there are; `--json` lists all 300 and its count equals its list.
#[test]
fn three_hundred_time_waits_stay_readable() {
    in_netns(|| {
        use common::{tcp_listener, Socket};
        const PORT: u16 = 18095;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{PORT}").parse().expect("addr");
        let l: Socket = tcp_listener(addr, false, false, None).expect("listener");
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..300 {
            clients.push(TcpStream::connect(addr).expect("connect"));
            servers.push(l.accept().expect("accept").0);
        }
        drop(servers); // the server closes first: its side goes to TIME_WAIT
        for c in &mut clients {
            let _ = c.read(&mut [0u8; 1]); // await the FIN
        }
        drop(clients);
        drop(l);
        let count = || {
            let (_, out, _) =
                bindwatch(&["check", &PORT.to_string(), "--json", "--state.file", ""]);
            serde_json::from_str::<serde_json::Value>(&out)
                .ok()
                .and_then(|v| v["checks"][0]["blockers"].as_array().map(Vec::len))
                .unwrap_or(0)
        };
        await_that(
            "300 TIME_WAITs",
            15,
            || count() == 300,
            || count().to_string(),
        );
        let (code, out, err) =
            bindwatch(&["check", &PORT.to_string(), "--json", "--state.file", ""]);
        assert_eq!(code, 1, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let blockers = v["checks"][0]["blockers"].as_array().expect("blockers");
        assert_eq!(blockers.len(), 300);
        assert_eq!(v["checks"][0]["blockers_total"], 300);
        let left: Vec<f64> = blockers
            .iter()
            .filter_map(|b| b["timer_seconds"].as_f64())
            .collect();
        assert!(left.windows(2).all(|w| w[0] >= w[1]), "longest first");

        let (code, text, err) = bindwatch(&["check", &PORT.to_string(), "--state.file", ""]);
        assert_eq!(code, 1, "{err}");
        let lines = text.lines().count();
        assert!(lines <= 25, "{lines} lines:\n{text}");
        assert!(
            text.contains("... and 280 more (--all lists every one)"),
            "{text}"
        );
        let (_, all, _) = bindwatch(&["check", &PORT.to_string(), "--all", "--state.file", ""]);
        assert_eq!(all.lines().filter(|l| l.contains("time_wait")).count(), 300);
    });
}

/// `ports` shows one row per member of a SO_REUSEPORT group, each with its holder.
#[test]
fn ports_shows_each_reuseport_member() {
    in_netns(|| {
        use common::tcp_listener;
        const PORT: u16 = 18096;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{PORT}").parse().expect("addr");
        let _a = tcp_listener(addr, true, true, None).expect("first member");
        let _b = tcp_listener(addr, true, true, None).expect("second member");
        let (code, out, err) = bindwatch(&["ports", "--state.file", ""]);
        assert_eq!(code, 0, "{err}");
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(&format!("127.0.0.1:{PORT} ")))
            .collect();
        assert_eq!(rows.len(), 2, "{out}");
        let me = format!("[{}] root", std::process::id());
        assert!(rows.iter().all(|r| r.contains(&me)), "{out}");
        let (_, json, _) = bindwatch(&["ports", "--json", "--state.file", ""]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        let l = v["listeners"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["port"] == PORT))
            .unwrap_or_else(|| panic!("{v:#}"));
        assert_eq!(l["members"].as_array().map(Vec::len), Some(2), "{l:#}");
        let listed = l["restart_blockers"]
            .as_array()
            .map_or(0, |b| b.iter().filter(|b| b["blocks"] == "true").count());
        assert_eq!(l["blockers"], listed, "the count equals its list: {l:#}");
    });
}
