//! The port-conflict monitor end to end: every watched-service status built for
//! real, config validation and reload, and ephemeral-port exhaustion.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const HTTP: u16 = 18280;

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// A python3 child listening on `addr` (its comm is `python3`); killed on drop.
struct PyListener(Child);

impl PyListener {
    fn start(port: u16) -> PyListener {
        let code = format!(
            "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\nprint('ready',flush=True)\ntime.sleep(120)\n"
        );
        let mut c = Command::new("python3")
            .args(["-c", &code])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(c.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("ready line");
        assert_eq!(line.trim(), "ready");
        PyListener(c)
    }
}

impl Drop for PyListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("bindwatch-{}-{name}.yml", std::process::id()));
    std::fs::write(&p, text).expect("write config");
    p
}

const CONFIG: &str = r#"
services:
  - name: ok-svc
    port: 18201
    owner: { process: python3 }
  - name: foreign-svc
    port: 18202
    owner: { process: nginx }
  - name: missing-svc
    port: 18203
  - name: blocked-svc
    port: 18204
    reuseaddr: false
  - name: stolen-svc
    port: 18205
"#;

#[test]
fn every_status_shows_in_a_real_scrape() {
    in_netns(|| {
        let _ok = PyListener::start(18201);
        let _foreign = PyListener::start(18202);
        // blocked: a listener without SO_REUSEADDR leaves server-side TIME_WAITs, then closes.
        {
            let l = tcp_listener(a("127.0.0.1:18204"), false, false, None).expect("l");
            server_time_wait(&l, a("127.0.0.1:18204"));
        }
        // stolen: a client bound to the port and connected elsewhere.
        let elsewhere = tcp_listener(a("127.0.0.1:18299"), false, false, None).expect("elsewhere");
        let thief = tcp_socket(a("127.0.0.1:18205"), false, false, None).expect("bind thief");
        thief
            .connect(&a("127.0.0.1:18299").into())
            .expect("connect thief");
        let _accepted = elsewhere.accept().expect("accept");

        let cfg = write_config("statuses", CONFIG);
        let srv = Server::start(
            HTTP,
            &[
                "--poll.interval",
                "500ms",
                "--config.file",
                cfg.to_str().expect("utf8"),
            ],
        );
        let want = [
            ("ok-svc", "18201", "ok"),
            ("foreign-svc", "18202", "foreign_owner"),
            ("missing-svc", "18203", "missing"),
            ("blocked-svc", "18204", "blocked"),
            ("stolen-svc", "18205", "stolen"),
        ];
        let m = srv.metrics_until(Duration::from_secs(5), |m| {
            want.iter().all(|(n, p, st)| {
                m.get(
                    "bindwatch_watched_port_status",
                    &[
                        ("name", n),
                        ("protocol", "tcp"),
                        ("port", p),
                        ("status", st),
                    ],
                ) == Some(1.0)
            })
        });
        for (name, port, status) in want {
            let series = m.matching("bindwatch_watched_port_status", &[("name", name)]);
            assert_eq!(series.len(), 5, "{name}: one series per status: {series:?}");
            let on: Vec<_> = series.iter().filter(|(_, v)| *v == 1.0).collect();
            assert_eq!(on.len(), 1, "{name}: exactly one status is 1: {series:?}");
            assert!(
                on[0].0.contains(&format!("status=\"{status}\""))
                    && on[0].0.contains(&format!("port=\"{port}\"")),
                "{name}: want {status}, got {series:?}"
            );
        }
        assert_eq!(
            m.get("bindwatch_config_last_reload_successful", &[]),
            Some(1.0)
        );

        // The CLI shows the same view.
        let (code, out, err) = bindwatch(&[
            "ports",
            "--json",
            "--config.file",
            cfg.to_str().expect("utf8"),
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let statuses: Vec<(String, String)> = v["watched"]
            .as_array()
            .expect("watched")
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap_or("").to_string(),
                    w["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        for (name, _, status) in want {
            assert!(
                statuses.contains(&(name.to_string(), status.to_string())),
                "{statuses:?}"
            );
        }
        drop(thief);
        let _ = std::fs::remove_file(cfg);
    });
}

const BAD: &str = "services:\n  - name: web\n    prot: tcp\n    port: 80\n  - name: big\n    port: 70000\n  - name: web\n    port: 81\n";

#[test]
fn bad_config_fails_start_and_reload_keeps_the_old_one() {
    let bad = write_config("bad", BAD);
    let (code, _, err) = bindwatch(&[
        "--config.file",
        bad.to_str().expect("utf8"),
        "--web.listen-address",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2, "{err}");
    let file = bad.display().to_string();
    for want in [
        format!("{file}:3: services[0].prot: unknown key"),
        format!("{file}:6: services[1].port: 70000 is not a port"),
        format!("{file}:7: services[2].name: duplicate service name \"web\""),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    in_netns(move || {
        let cfg = write_config("reload", "services:\n  - name: first\n    port: 18210\n");
        let srv = Server::start(
            HTTP + 1,
            &[
                "--poll.interval",
                "300ms",
                "--config.file",
                cfg.to_str().expect("utf8"),
                "--web.enable-lifecycle",
            ],
        );
        let m = srv.metrics();
        assert_eq!(
            m.get("bindwatch_config_last_reload_successful", &[]),
            Some(1.0)
        );
        assert_eq!(
            m.matching("bindwatch_watched_port_status", &[("name", "first")])
                .len(),
            5
        );

        // A good reload over HTTP swaps the services.
        std::fs::write(&cfg, "services:\n  - name: second\n    port: 18211\n").expect("write");
        let (code, _, _) = http_request(srv.addr, "POST", "/-/reload", &[]).expect("reload");
        assert_eq!(code, 200);
        let m = srv.metrics();
        assert_eq!(
            m.matching("bindwatch_watched_port_status", &[("name", "second")])
                .len(),
            5
        );
        assert!(m
            .matching("bindwatch_watched_port_status", &[("name", "first")])
            .is_empty());

        // A bad reload keeps the old config and says so.
        std::fs::write(&cfg, BAD).expect("write");
        let (code, _, body) = http_request(srv.addr, "POST", "/-/reload", &[]).expect("reload");
        assert_eq!(code, 500);
        assert!(String::from_utf8_lossy(&body).contains("70000 is not a port"));
        let m = srv.metrics();
        assert_eq!(
            m.get("bindwatch_config_last_reload_successful", &[]),
            Some(0.0)
        );
        assert_eq!(
            m.matching("bindwatch_watched_port_status", &[("name", "second")])
                .len(),
            5,
            "old config still active"
        );

        // SIGHUP takes the same path: fix the file, signal, success again.
        std::fs::write(&cfg, "services:\n  - name: third\n    port: 18212\n").expect("write");
        // SAFETY: signalling the child we spawned, by its pid.
        assert_eq!(unsafe { libc::kill(srv.pid(), libc::SIGHUP) }, 0);
        let m = srv.metrics_until(Duration::from_secs(3), |m| {
            m.get("bindwatch_config_last_reload_successful", &[]) == Some(1.0)
        });
        assert_eq!(
            m.get("bindwatch_config_last_reload_successful", &[]),
            Some(1.0)
        );
        assert_eq!(
            m.matching("bindwatch_watched_port_status", &[("name", "third")])
                .len(),
            5
        );
        assert_eq!(http_get(srv.addr, "/-/reload", &[]).expect("get").0, 405);
        let _ = std::fs::remove_file(cfg);
    });
    let _ = std::fs::remove_file(bad);
}

#[test]
fn ephemeral_bucket_ratio_matches_connections_over_range() {
    in_netns(|| {
        // /proc/sys/net follows the writer's netns: this changes only the test's namespace.
        run_ok(
            "sysctl",
            &["-q", "-w", "net.ipv4.ip_local_port_range=40000 40099"],
        );
        let range =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("read");
        let l = tcp_listener(a("127.0.0.1:18500"), false, false, None).expect("listener");
        const N: usize = 60;
        let mut held = Vec::new();
        for _ in 0..N {
            let c = TcpStream::connect("127.0.0.1:18500").expect("connect");
            let port = c.local_addr().expect("local").port();
            assert!(
                (40000..=40099).contains(&port),
                "ephemeral port {port} inside the narrowed range (host range {range:?})"
            );
            let s = l.accept().expect("accept");
            held.push((c, s));
        }
        let srv = Server::start(HTTP + 2, &["--poll.interval", "300ms"]);
        let m = srv.metrics();
        assert_eq!(
            m.get("bindwatch_ephemeral_port_range_size", &[]),
            Some(100.0)
        );
        let ratio = m.get("bindwatch_ephemeral_ports_used_ratio", &[("rank", "1")]);
        assert_eq!(
            ratio,
            Some(N as f64 / 100.0),
            "{:?}",
            m.matching("bindwatch_ephemeral_ports_used_ratio", &[])
        );
        drop(held);
    });
}
