//! The exposition and HTTP conventions of `bindwatch serve`, against the real binary:
//! content negotiation between the text format and OpenMetrics, checked by third-party
//! parsers (`promtool`, Python `prometheus_client`), and gzip for both.
//!
//! Tools come from `bash scripts/install-test-deps.sh` (promtool on PATH, prometheus_client
//! in the venv `$BINDWATCH_VENV`, default `$HOME/.cache/bindwatch-venv`); a missing tool
//! fails the test.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{http_get, in_netns, Server};

const OM_ACCEPT: &str = "application/openmetrics-text;version=1.0.0";
const OM_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// What Prometheus 2.x sends on every scrape.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("BINDWATCH_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/bindwatch-venv")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Runs `cmd` with `input` on stdin: (success, stdout + stderr).
fn pipe(cmd: &mut Command, input: &[u8]) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("running {cmd:?}: {e} (install it with scripts/install-test-deps.sh)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn check_openmetrics(body: &[u8], required: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/check_openmetrics.py");
    let (ok, out) = pipe(
        Command::new(venv().join("bin/python"))
            .arg(script)
            .args(required),
        body,
    );
    assert!(
        ok,
        "prometheus_client's OpenMetrics parser refused the exposition:\n{out}\n---\n{}",
        String::from_utf8_lossy(body)
    );
    out
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("a valid gzip body");
    out
}

#[test]
fn openmetrics_when_asked_text_otherwise_both_valid_and_gzipped() {
    in_netns(|| {
        // A listener, so the per-endpoint families have samples.
        let _l = std::net::TcpListener::bind("127.0.0.1:19310").expect("listener");
        let srv = Server::start(19300, &["--poll.interval", "200ms"]);
        srv.metrics_until(std::time::Duration::from_secs(10), |m| {
            !m.matching("bindwatch_listener_info", &[("port", "19310")])
                .is_empty()
        });

        // OpenMetrics, as curl -H 'Accept: ...' and as Prometheus ask for it.
        for accept in [OM_ACCEPT, PROMETHEUS_ACCEPT] {
            let (code, h, body) =
                http_get(srv.addr, "/metrics", &[("Accept", accept)]).expect("scrape");
            assert_eq!(code, 200);
            assert_eq!(
                header(&h, "content-type"),
                Some(OM_TYPE),
                "Accept: {accept}"
            );
            let text = String::from_utf8_lossy(&body);
            assert!(text.ends_with("\n# EOF\n"), "no # EOF at the end:\n{text}");
            assert!(
                text.contains("# TYPE bindwatch_poll_errors counter\n")
                    && text.contains("\nbindwatch_poll_errors_total{"),
                "counter family without _total, samples with it:\n{text}"
            );
            assert!(text.contains("# UNIT bindwatch_poll_duration_seconds seconds\n"));
            assert!(text.contains("port=\"19310\""), "{text}");
            let summary = check_openmetrics(
                &body,
                &[
                    "bindwatch_build_info",
                    "bindwatch_listener_info",
                    "bindwatch_poll_duration_seconds",
                    "bindwatch_poll_errors",
                    "bindwatch_poll_cpu_seconds",
                ],
            );
            eprintln!("prometheus_client: {summary}");
        }

        // No Accept, curl's */*, a browser's: the text format, which promtool accepts.
        for accept in [None, Some("*/*"), Some("text/html,*/*;q=0.8")] {
            let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
            let (code, h, body) = http_get(srv.addr, "/metrics", &headers).expect("scrape");
            assert_eq!(code, 200);
            assert_eq!(
                header(&h, "content-type"),
                Some(TEXT_TYPE),
                "Accept: {accept:?}"
            );
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains("# EOF") && !text.contains("# UNIT"),
                "{text}"
            );
            assert!(text.contains("# TYPE bindwatch_poll_errors_total counter\n"));
            let (ok, out) = pipe(Command::new("promtool").args(["check", "metrics"]), &body);
            assert!(ok, "promtool check metrics failed:\n{out}\n---\n{text}");
        }

        // gzip for both formats; the decompressed bodies are the formats themselves.
        for (accept, ctype) in [(OM_ACCEPT, OM_TYPE), ("text/plain", TEXT_TYPE)] {
            let (code, h, body) = http_get(
                srv.addr,
                "/metrics",
                &[("Accept", accept), ("Accept-Encoding", "gzip")],
            )
            .expect("scrape");
            assert_eq!(code, 200);
            assert_eq!(header(&h, "content-type"), Some(ctype));
            assert_eq!(header(&h, "content-encoding"), Some("gzip"));
            let plain = gunzip(&body);
            let text = String::from_utf8_lossy(&plain);
            assert_eq!(
                text.ends_with("# EOF\n"),
                ctype == OM_TYPE,
                "{ctype}:\n{text}"
            );
            if ctype == OM_TYPE {
                check_openmetrics(&plain, &["bindwatch_poll_errors"]);
            } else {
                let (ok, out) = pipe(Command::new("promtool").args(["check", "metrics"]), &plain);
                assert!(ok, "promtool on the gunzipped text: {out}");
            }
        }
    });
}

/// The value of an unlabelled sample in the text format.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn scrape_text(addr: std::net::SocketAddr) -> String {
    let (code, _, body) = http_get(addr, "/metrics", &[]).expect("scrape");
    assert_eq!(code, 200);
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn process_metrics_are_the_agents_own_and_the_flag_drops_them() {
    in_netns(|| {
        // The agent runs with fd limits of its own (prlimit execs it, so the pid is the
        // agent's): its process_max_fds must be what /proc says of it, not of this test.
        let child = Command::new("prlimit")
            .args(["--nofile=1234:5678", "--"])
            .arg(common::bin())
            .args([
                "serve",
                "--web.listen-address",
                "127.0.0.1:19330",
                "--state.file",
                "",
            ])
            .args(["--poll.interval", "300ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prlimit (util-linux)");
        let srv = Server {
            child,
            addr: "127.0.0.1:19330".parse().expect("addr"),
        };
        assert!(
            common::eventually(std::time::Duration::from_secs(15), || {
                matches!(http_get(srv.addr, "/healthz", &[]), Ok((200, _, _)))
            }),
            "bindwatch under prlimit did not become healthy"
        );
        let pid = srv.pid();
        let text = scrape_text(srv.addr);
        for f in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(sample(&text, f).is_some(), "{f} missing:\n{text}");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let start = sample(&text, "process_start_time_seconds").expect("start");
        assert!(
            start <= now + 1.0 && start >= now - 60.0,
            "started at {start}, now {now}: not this agent"
        );
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let soft: f64 = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .expect("Max open files");
        assert_eq!(sample(&text, "process_max_fds"), Some(soft));
        let mine = std::fs::read_to_string("/proc/self/limits").expect("own limits");
        assert!(
            soft == 1234.0 || soft == 5678.0,
            "the agent's soft limit is prlimit's (or raised to its hard limit): {soft}"
        );
        assert!(
            !mine.contains(&format!(" {soft} ")),
            "the test's own limit differs"
        );
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .count() as f64;
        let open = sample(&text, "process_open_fds").expect("open fds");
        assert!(
            (open - fds).abs() <= 4.0 && open >= 3.0,
            "process_open_fds {open}, /proc/{pid}/fd has {fds}"
        );
        let rss_kib: f64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS");
        let rss = sample(&text, "process_resident_memory_bytes").expect("rss");
        assert!(
            rss > 1e6 && (rss / (rss_kib * 1024.0) - 1.0).abs() < 0.5,
            "process_resident_memory_bytes {rss}, VmRSS {rss_kib} KiB"
        );
        drop(srv);

        let srv = Server::start(19331, &["--web.disable-exporter-metrics"]);
        let text = scrape_text(srv.addr);
        assert!(
            !text.lines().any(|l| l.contains("process_")),
            "process_* with --web.disable-exporter-metrics:\n{text}"
        );
        assert!(sample(&text, "bindwatch_ephemeral_port_range_size").is_some());
        assert!(text.contains("bindwatch_poll_duration_seconds_bucket"));
    });
}

#[test]
fn every_listen_address_is_served() {
    in_netns(|| {
        // Server::start adds 127.0.0.1:19340; the flag repeats.
        let srv = Server::start(
            19340,
            &[
                "--web.listen-address",
                "[::1]:19341",
                "--web.listen-address",
                ":19342",
            ],
        );
        for addr in [
            "127.0.0.1:19340",
            "[::1]:19341",
            "127.0.0.1:19342",
            "[::1]:19342",
        ] {
            let addr: std::net::SocketAddr = addr.parse().expect("addr");
            let (code, _, _) = http_get(addr, "/healthz", &[]).expect("connect");
            assert_eq!(code, 200, "{addr}");
        }
        // bindwatch sees its own three listeners.
        let m = srv.metrics_until(std::time::Duration::from_secs(10), |m| {
            m.matching("bindwatch_listener_info", &[("process", "bindwatch")])
                .len()
                >= 3
        });
        for (address, port) in [("127.0.0.1", "19340"), ("::1", "19341"), ("::", "19342")] {
            assert_eq!(
                m.matching(
                    "bindwatch_listener_info",
                    &[
                        ("address", address),
                        ("port", port),
                        ("process", "bindwatch")
                    ]
                )
                .len(),
                1,
                "{address}:{port}"
            );
        }
        // One bad address among good ones: exit 2 naming it.
        let (code, _, err) = common::bindwatch(&[
            "serve",
            "--state.file",
            "",
            "--web.listen-address",
            "127.0.0.1:19343",
            "--web.listen-address",
            "127.0.0.1:19340",
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("--web.listen-address 127.0.0.1:19340"),
            "{err}"
        );
    });
}

#[test]
fn systemd_socket_activation_serves_on_the_passed_socket() {
    in_netns(|| {
        let bin = common::bin();
        let mut child = Command::new("systemd-socket-activate")
            .args(["-l", "127.0.0.1:19350"])
            .arg(&bin)
            .args([
                "serve",
                "--web.systemd-socket",
                "--state.file",
                "",
                "--poll.interval",
                "300ms",
                "--poll.cpu-budget",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate (Debian's systemd, see install-test-deps.sh)");
        let addr: std::net::SocketAddr = "127.0.0.1:19350".parse().expect("addr");
        // systemd-socket-activate listens itself and execs bindwatch on the first
        // connection, which bindwatch then answers from the backlog.
        let mut served = None;
        for _ in 0..100 {
            if let Ok((code, _, body)) = http_get(addr, "/metrics", &[]) {
                served = Some((code, String::from_utf8_lossy(&body).into_owned()));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // The socket on 19350 is bindwatch's now (systemd-socket-activate exec'd
        // into it), and bindwatch bound nothing of its own (no default :10033).
        let owned = |text: &str| {
            common::Metrics::parse(text)
                .matching(
                    "bindwatch_listener_info",
                    &[("port", "19350"), ("process", "bindwatch")],
                )
                .len()
                == 1
        };
        let mut last = served.as_ref().map(|(_, t)| t.clone()).unwrap_or_default();
        for _ in 0..100 {
            if owned(&last) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            if let Ok((_, _, body)) = http_get(addr, "/metrics", &[]) {
                last = String::from_utf8_lossy(&body).into_owned();
            }
        }
        let alive = child.try_wait().expect("try_wait").is_none();
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        let (code, _) = served.unwrap_or_else(|| panic!("nothing served on {addr}:\n{err}"));
        assert_eq!(code, 200, "{err}");
        assert!(alive, "bindwatch exited:\n{err}");
        assert!(owned(&last), "{last}");
        let m = common::Metrics::parse(&last);
        assert!(m
            .matching("bindwatch_listener_info", &[("port", "10033")])
            .is_empty());
        assert!(err.contains("using the sockets systemd passed"), "{err}");

        // Without systemd: a clear error, exit 2.
        let (code, _, err) =
            common::bindwatch(&["serve", "--web.systemd-socket", "--state.file", ""]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("--web.systemd-socket: no sockets were passed"),
            "{err}"
        );
    });
}

/// Splits one logfmt line into pairs, strictly: bare values, or quoted ones with
/// `\"`, `\\`, `\n`, `\r`, `\t` and `\uXXXX` escapes; `None` on anything else.
fn parse_logfmt(line: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || key.contains([' ', '"']) {
            return None;
        }
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i + 1,
                    '\\' => match chars.next()?.1 {
                        '"' => v.push('"'),
                        '\\' => v.push('\\'),
                        'n' => v.push('\n'),
                        'r' => v.push('\r'),
                        't' => v.push('\t'),
                        'u' => {
                            let hex: String =
                                (0..4).filter_map(|_| chars.next().map(|c| c.1)).collect();
                            v.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        _ => return None,
                    },
                    c => v.push(c),
                }
            };
            (v, &q[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let v = &after[..end];
            if v.is_empty() || v.contains(['"', '=']) {
                return None;
            }
            (v.to_string(), &after[end..])
        };
        out.push((key.to_string(), value));
        rest = match after.strip_prefix(' ') {
            Some(r) if !r.is_empty() => r,
            None if after.is_empty() => "",
            _ => return None,
        };
    }
    Some(out)
}

#[test]
fn log_formats_logfmt_and_json_are_parseable() {
    in_netns(|| {
        for (format, port) in [("logfmt", 19360), ("json", 19361)] {
            // A watched-services file that does not exist: an error line with quotes
            // and a path in it, besides the usual start and stop lines.
            let mut srv = Server::start(port, &["--log.format", format, "--log.level", "debug"]);
            let _ = http_get(srv.addr, "/metrics", &[]);
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(srv.pid(), libc::SIGTERM) };
            let mut err = String::new();
            srv.child
                .stderr
                .take()
                .expect("stderr piped")
                .read_to_string(&mut err)
                .expect("read stderr");
            let lines: Vec<&str> = err.lines().collect();
            assert!(lines.len() >= 4, "{format}: too few lines:\n{err}");
            let mut msgs = Vec::new();
            for line in &lines {
                let pairs: Vec<(String, String)> = if format == "json" {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    let obj = v
                        .as_object()
                        .unwrap_or_else(|| panic!("not an object: {line}"));
                    obj.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_string)))
                        .collect()
                } else {
                    parse_logfmt(line).unwrap_or_else(|| panic!("not logfmt: {line}"))
                };
                let get = |k: &str| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
                let ts = get("ts").unwrap_or_else(|| panic!("no ts: {line}"));
                assert!(
                    ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                    "{ts}"
                );
                let level = get("level").unwrap_or_else(|| panic!("no level: {line}"));
                assert!(["error", "warn", "info", "debug", "trace"].contains(&level.as_str()));
                msgs.push(get("msg").unwrap_or_else(|| panic!("no msg: {line}")));
            }
            for want in [
                "starting bindwatch",
                "serving metrics",
                "SIGTERM received, shutting down",
                "stopped",
            ] {
                assert!(
                    msgs.iter().any(|m| m == want),
                    "{format}: no {want:?} in\n{err}"
                );
            }
        }
    });
}

/// A process (python3) whose comm is `comm`, listening on 127.0.0.1:`port` until
/// dropped.
struct NamedListener(std::process::Child);

impl NamedListener {
    fn start(port: u16, comm: &str) -> NamedListener {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import ctypes, socket, sys\n\
                 s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n\
                 ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)  # PR_SET_NAME\n\
                 print('ready', flush=True); sys.stdin.read()",
            ])
            .arg(port.to_string())
            .arg(comm)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = [0u8; 6];
        child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut line)
            .expect("the listener says ready");
        assert_eq!(&line, b"ready\n");
        let comm_now = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).expect("comm");
        assert_eq!(comm_now.trim_end(), comm, "prctl(PR_SET_NAME) took");
        NamedListener(child)
    }
}

impl Drop for NamedListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=F`), a fresh
/// profile and no network but the page, for at most 120 s: its stdout.
fn chromium(url: &str, mode: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "bindwatch-chromium-{}-{}",
        std::process::id(),
        mode.len()
    ));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).expect("profile dir");
    let mut child = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian's chromium, see install-test-deps.sh)");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = reader.join().expect("reader");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = std::fs::remove_dir_all(&profile);
    let status = status.unwrap_or_else(|| panic!("chromium {mode} took over 120 s:\n{err}"));
    assert!(status.success(), "chromium {mode}: {status}\n{err}");
    out
}

/// The `<tr>` of `dom` that holds `cell` as a whole cell.
fn row_with<'a>(dom: &'a str, cell: &str) -> Option<&'a str> {
    let needle = format!("<td>{cell}</td>");
    let at = dom.find(&needle)?;
    let start = dom[..at].rfind("<tr>")?;
    let end = at + dom[at..].find("</tr>")?;
    Some(&dom[start..end])
}

#[test]
fn landing_page_in_headless_chromium() {
    in_netns(|| {
        // The test's listener, a watched service on it and one nobody serves; and a
        // process whose name is markup.
        let _plain = std::net::TcpListener::bind("127.0.0.1:19372").expect("listener");
        let comm = "<b>bw&\"x'</b>";
        let named = NamedListener::start(19371, comm);
        let dir = std::env::temp_dir().join(format!("bindwatch-landing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cfg = dir.join("watched.yml");
        std::fs::write(
            &cfg,
            "services:\n  - name: landing-ok\n    port: 19372\n  - name: landing-missing\n    port: 19373\n",
        )
        .expect("config");
        let srv = Server::start(
            19370,
            &[
                "--poll.interval",
                "300ms",
                "--config.file",
                cfg.to_str().expect("path"),
            ],
        );
        // Wait until a poll has seen both listeners with their owners.
        let escaped = "&lt;b&gt;bw&amp;&quot;x&#39;&lt;/b&gt;";
        let mut page = String::new();
        for _ in 0..100 {
            let (code, h, body) = http_get(srv.addr, "/", &[]).expect("GET /");
            assert_eq!(code, 200);
            assert_eq!(header(&h, "content-type"), Some("text/html; charset=utf-8"));
            page = String::from_utf8_lossy(&body).into_owned();
            if page.contains(escaped) && page.contains("<td>19372</td>") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            page.contains(escaped),
            "the escaped name never showed:\n{page}"
        );
        assert!(!page.contains("<script"), "no JavaScript");

        let url = format!("http://{}/", srv.addr);
        let dom = chromium(&url, "--dump-dom");
        // The browser's DOM: the test's listener by port, with its owner (this test).
        let row = row_with(&dom, "19372").unwrap_or_else(|| panic!("no row for 19372:\n{dom}"));
        assert!(row.contains("<td>tcp</td><td>127.0.0.1</td>"), "{row}");
        let me = format!("[{}]", std::process::id());
        assert!(row.contains(&me), "owner is this test process {me}: {row}");
        // The markup in the process name stayed text: serialized back as &lt;b&gt;, no
        // <b> element came of it.
        let row = row_with(&dom, "19371").unwrap_or_else(|| panic!("no row for 19371:\n{dom}"));
        let want = format!("<td>&lt;b&gt;bw&amp;\"x'&lt;/b&gt;[{}]</td>", named.0.id());
        assert!(row.contains(&want), "want {want} in {row}");
        assert!(
            !dom.contains("<b>"),
            "a <b> element came from the process name:\n{dom}"
        );
        // Watched services with their status.
        let ok = row_with(&dom, "landing-ok").unwrap_or_else(|| panic!("{dom}"));
        assert!(ok.contains("<td class=\"ok\">ok</td>"), "{ok}");
        let missing = row_with(&dom, "landing-missing").unwrap_or_else(|| panic!("{dom}"));
        assert!(
            missing.contains("<td class=\"missing\">missing</td>"),
            "{missing}"
        );
        assert!(dom.contains("<a href=\"/metrics\">Metrics</a>"));

        // A screenshot, kept for people to look at.
        let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("landing.png");
        let _ = std::fs::remove_file(&png);
        chromium(&url, &format!("--screenshot={}", png.display()));
        let bytes = std::fs::read(&png).expect("screenshot written");
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
            "not a (non-trivial) PNG: {} bytes",
            bytes.len()
        );
        eprintln!("landing page screenshot: {}", png.display());
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn landing_page_needs_the_same_auth_as_metrics() {
    use base64::Engine as _;
    in_netns(|| {
        let dir =
            std::env::temp_dir().join(format!("bindwatch-landing-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let web = dir.join("web.yml");
        let hash = bcrypt::hash("pw", 4).expect("bcrypt");
        std::fs::write(
            &web,
            format!("basic_auth_users:\n  alice: {hash}\nauth_excluded_paths: [/healthz]\n"),
        )
        .expect("web config");
        let srv = Server::start(19380, &["--web.config.file", web.to_str().expect("path")]);
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pw")
        );
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:nope")
        );
        for path in ["/", "/metrics"] {
            let (code, h, body) = http_get(srv.addr, path, &[]).expect("GET");
            assert_eq!(code, 401, "{path} without credentials");
            assert_eq!(header(&h, "www-authenticate"), Some("Basic"));
            assert!(!String::from_utf8_lossy(&body).contains("<table"));
            let (code, _, _) = http_get(srv.addr, path, &[("Authorization", &bad)]).expect("GET");
            assert_eq!(code, 401, "{path} with a wrong password");
            let (code, _, body) =
                http_get(srv.addr, path, &[("Authorization", &good)]).expect("GET");
            assert_eq!(code, 200, "{path} with credentials");
            if path == "/" {
                let page = String::from_utf8_lossy(&body);
                assert!(page.contains("<td>19380</td>"), "{page}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn landing_page_is_the_last_snapshot_not_a_fresh_read() {
    in_netns(|| {
        // One poll at start, the next in an hour: what `/` shows is that poll's.
        let srv = Server::start(19385, &["--poll.interval", "1h"]);
        let _late = std::net::TcpListener::bind("127.0.0.1:19386").expect("listener");
        for _ in 0..3 {
            let (code, _, body) = http_get(srv.addr, "/", &[]).expect("GET /");
            assert_eq!(code, 200);
            let page = String::from_utf8_lossy(&body);
            assert!(page.contains("<td>19385</td>"), "{page}");
            assert!(
                !page.contains("<td>19386</td>"),
                "/ read the kernel:\n{page}"
            );
        }
    });
}
