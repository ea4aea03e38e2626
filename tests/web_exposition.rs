//! The exposition of `bindwatch serve`, against the real binary: content negotiation
//! between the text format and OpenMetrics, checked by third-party parsers (`promtool`,
//! Python `prometheus_client`), and gzip for both; the `process_*` metrics are the agent's
//! own (checked against its /proc entries) and `--web.disable-exporter-metrics` drops them.
//!
//! Tools come from `bash scripts/install-test-deps.sh` (promtool on PATH, prometheus_client
//! in the venv `$BINDWATCH_VENV`, default `$HOME/.cache/bindwatch-venv`; `prlimit` from
//! util-linux); a missing tool fails the test.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{header, http_get, in_netns, Server};

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
