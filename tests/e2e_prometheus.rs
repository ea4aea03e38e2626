//! End to end with a real Prometheus: bindwatch is scraped by `prometheus` (2.42, installed by
//! scripts/install-test-deps.sh) that loads the shipped alert rules; a real blocked restart
//! makes `BindwatchRestartWouldFail` fire and then resolve once the blockers are removed, and
//! every query of every panel of the shipped Grafana dashboard is evaluated against that
//! Prometheus while the port is blocked.
//!
//! Everything runs in a private network namespace (bindwatch, prometheus, the sockets and `ss`),
//! every wait is bounded, and both child processes are killed on drop.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// bindwatch's HTTP port, Prometheus's, and the port whose restart gets blocked.
const BW: u16 = 19100;
const PROM: u16 = 19090;
const P: u16 = 19200;
const ALERT: &str = "BindwatchRestartWouldFail";
const ALERT_WARN: &str = "BindwatchRestartWouldFailWithoutReuseaddr";

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn log(t0: Instant, msg: impl AsRef<str>) {
    println!("[e2e {:6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("bindwatch-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `prometheus`, killed on drop; its log is printed when the test fails.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    // Dropped (removed) after the child is killed, see Drop.
    _dir: TempDir,
}

impl Prometheus {
    /// Writes the config and a copy of the rules, starts prometheus on 127.0.0.1:`port`
    /// scraping bindwatch at `target`, and waits for /-/ready.
    fn start(port: u16, target: SocketAddr) -> Prometheus {
        let dir = TempDir::new("e2e-prom");
        let rules = dir.0.join("bindwatch-rules.yml");
        std::fs::write(&rules, rules_for_test()).expect("write rules");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: bindwatch\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .expect("write config");
        let log = dir.0.join("prometheus.log");
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn prometheus (installed by scripts/install-test-deps.sh)");
        let mut p = Prometheus {
            child,
            addr: listen.parse().expect("addr"),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _, _)) = http_get(p.addr, "/-/ready", &[]) {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited early with {status}:\n{}", p.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// GET an API path; the `data` member, or the API's error.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (code, _, body) =
            http_get(self.addr, path, &[]).map_err(|e| format!("GET {path}: {e}"))?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "GET {path}: HTTP {code}, not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        if code != 200 || v["status"] != "success" {
            return Err(format!(
                "GET {path}: HTTP {code}: {} {}",
                v["errorType"], v["error"]
            ));
        }
        Ok(v["data"].clone())
    }

    /// An instant query: the result's elements (a scalar or string counts as one).
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", enc(q)))?;
        Ok(result_items(&data))
    }

    /// A range query over the last `secs` seconds with a 1 s step.
    fn query_range(&self, q: &str, secs: u64) -> Result<Vec<Value>, String> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let data = self.api(&format!(
            "/api/v1/query_range?query={}&start={}&end={end}&step=1",
            enc(q),
            end - secs
        ))?;
        Ok(result_items(&data))
    }

    /// Active (pending or firing) alerts named `name` on port `port`.
    fn alerts(&self, name: &str, port: u16) -> Vec<Value> {
        let data = self.api("/api/v1/alerts").unwrap_or_else(|e| panic!("{e}"));
        let port = port.to_string();
        data["alerts"]
            .as_array()
            .expect("alerts array")
            .iter()
            .filter(|a| {
                a["labels"]["alertname"] == name
                    && a["labels"]["port"].as_str() == Some(port.as_str())
            })
            .cloned()
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- prometheus log ----\n{}\n---- end of prometheus log ----",
                self.log_text()
            );
        }
    }
}

fn result_items(data: &Value) -> Vec<Value> {
    match &data["result"] {
        Value::Array(a) if matches!(data["resultType"].as_str(), Some("vector" | "matrix")) => {
            a.clone()
        }
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved characters).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The shipped rules with every `for:` shortened to 1 s. The shipped durations (1m to 15m)
/// would make this test wait minutes for an alert to fire; shortening `for:` changes only
/// how long an alert stays pending, never which series it fires on. The `expr`s (what this
/// test is about) are copied byte for byte.
fn rules_for_test() -> String {
    let src = std::fs::read_to_string(manifest("deploy/prometheus/bindwatch-rules.yml"))
        .expect("read rules");
    let mut replaced = 0;
    let out: Vec<String> = src
        .lines()
        .map(|l| {
            let t = l.trim_start();
            match t.strip_prefix("for: ") {
                Some(d) if !d.trim().is_empty() && !d.contains(' ') => {
                    replaced += 1;
                    let indent = &l[..l.len() - t.len()];
                    format!("{indent}for: 1s # e2e test: shipped value {d}, shortened so the test does not wait for it")
                }
                _ => l.to_string(),
            }
        })
        .collect();
    assert!(replaced > 0, "no `for:` found in the rules");
    let out = out.join("\n") + "\n";
    // Nothing but the `for:` lines differs.
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.trim_start().starts_with("for: "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(strip(&src), strip(&out));
    out
}

/// Polls `f` until it gives `Some`, at most `timeout`; panics naming `what` otherwise.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Server-side TIME_WAITs on local port `port` in this namespace, per `ss`.
fn time_waits(port: u16) -> usize {
    let out = run_ok(
        "ss",
        &[
            "-Htan",
            "state",
            "time-wait",
            &format!("( sport = :{port} )"),
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// One query of one dashboard panel.
#[derive(Debug)]
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
    range: bool,
    /// The target's own `bindwatch_e2e_expect_data`, if it has one.
    expect: Option<bool>,
}

/// Every panel (rows' nested panels included): (title, panel-level expect flag, its queries).
fn dashboard_panels() -> Vec<(String, bool, Vec<PanelQuery>)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, bool, Vec<PanelQuery>)>) {
        for p in panels {
            let title = format!("#{} {:?}", p["id"], p["title"].as_str().unwrap_or(""));
            let queries: Vec<PanelQuery> = p["targets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| {
                            Some(PanelQuery {
                                panel: title.clone(),
                                ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                                expr: t["expr"].as_str()?.to_string(),
                                range: t["range"].as_bool().unwrap_or(true),
                                expect: t["bindwatch_e2e_expect_data"].as_bool(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !queries.is_empty() {
                out.push((
                    title,
                    p["bindwatch_e2e_expect_data"].as_bool().unwrap_or(false),
                    queries,
                ));
            }
            if let Some(nested) = p["panels"].as_array() {
                walk(nested, out);
            }
        }
    }
    let text =
        std::fs::read_to_string(manifest("dashboards/bindwatch.json")).expect("read dashboard");
    let d: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    walk(d["panels"].as_array().expect("panels"), &mut out);
    out
}

/// Replaces Grafana's variables as Grafana would for `instance` = `instance_value`
/// (already escaped for a regex matcher) and a 1 m interval/range.
fn substitute(expr: &str, instance_value: &str) -> String {
    let mut e = expr.to_string();
    for (var, val) in [
        ("${instance:regex}", instance_value),
        ("${instance}", instance_value),
        ("[[instance]]", instance_value),
        ("$instance", instance_value),
        ("${__rate_interval}", "1m"),
        ("$__rate_interval", "1m"),
        ("${__interval_ms}", "1000"),
        ("$__interval_ms", "1000"),
        ("${__interval}", "1m"),
        ("$__interval", "1m"),
        ("${__range_ms}", "60000"),
        ("$__range_ms", "60000"),
        ("${__range_s}", "60"),
        ("$__range_s", "60"),
        ("${__range}", "1m"),
        ("$__range", "1m"),
    ] {
        e = e.replace(var, val);
    }
    let unknown = e.match_indices('$').any(|(i, _)| {
        e[i + 1..].starts_with(|c: char| c == '{' || c == '_' || c.is_ascii_alphabetic())
    });
    assert!(
        !unknown && !e.contains("[["),
        "a dashboard variable this test does not know: {expr}"
    );
    e
}

/// Runs every dashboard query for both instance selections (the single instance, escaped as
/// Grafana escapes a multi-value variable for `=~`, and "All" = `.*`). Fails on any query
/// error; panels/targets marked `bindwatch_e2e_expect_data` must return data (retried while
/// history builds up, bounded).
fn check_dashboard(prom: &Prometheus, instance: &str, t0: Instant) {
    let escaped = instance.replace('.', "\\\\.");
    let panels = dashboard_panels();
    assert!(!panels.is_empty(), "dashboard has no queries");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    for (title, panel_expect, queries) in &panels {
        for selection in [escaped.as_str(), ".*"] {
            let mut panel_has_data = false;
            for q in queries {
                let expr = substitute(&q.expr, selection);
                let must = q.expect.unwrap_or(false);
                let rows = loop {
                    let inst = prom.query(&expr).unwrap_or_else(|e| {
                        panic!("panel {} query {}: `{expr}` fails: {e}", q.panel, q.ref_id)
                    });
                    let rows = if q.range && inst.is_empty() {
                        // A time series panel draws the range even when the last instant is empty.
                        prom.query_range(&expr, 60).unwrap_or_else(|e| {
                            panic!(
                                "panel {} query {} (range): `{expr}` fails: {e}",
                                q.panel, q.ref_id
                            )
                        })
                    } else {
                        inst
                    };
                    if !rows.is_empty() || !must || Instant::now() > deadline {
                        break rows;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                };
                if q.range {
                    prom.query_range(&expr, 60).unwrap_or_else(|e| {
                        panic!(
                            "panel {} query {} (range): `{expr}` fails: {e}",
                            q.panel, q.ref_id
                        )
                    });
                }
                assert!(
                    !must || !rows.is_empty(),
                    "panel {} query {} is marked bindwatch_e2e_expect_data but returns nothing: `{expr}`",
                    q.panel,
                    q.ref_id
                );
                panel_has_data |= !rows.is_empty();
                n += 1;
                log(
                    t0,
                    format!(
                        "  {title} {} [{selection}]: {} series",
                        q.ref_id,
                        rows.len()
                    ),
                );
            }
            assert!(
                !panel_expect || panel_has_data,
                "panel {title} is marked bindwatch_e2e_expect_data but none of its queries returns data"
            );
        }
    }
    log(
        t0,
        format!(
            "dashboard: {n} queries of {} panels evaluated without error",
            panels.len()
        ),
    );
}

#[test]
fn prometheus_alerts_and_dashboard_on_a_real_blocked_restart() {
    in_netns(|| {
        let t0 = Instant::now();
        let srv = Server::start(BW, &["--poll.interval", "500ms"]);
        log(t0, format!("bindwatch serving on {}", srv.addr));
        let prom = Prometheus::start(PROM, srv.addr);
        let instance = srv.addr.to_string();
        log(t0, format!("prometheus ready on {}", prom.addr));
        wait_for(
            "prometheus scraped bindwatch (up == 1)",
            Duration::from_secs(20),
            || {
                let r = prom
                    .query(&format!(
                        "up{{job=\"bindwatch\",instance=\"{instance}\"}} == 1"
                    ))
                    .ok()?;
                (!r.is_empty()).then_some(())
            },
        );
        log(t0, "prometheus scrapes bindwatch");

        // A listener without SO_REUSEADDR that leaves server-side TIME_WAITs, alive for more
        // than one poll so bindwatch reads (and remembers) its flags, then closed.
        let addr: SocketAddr = format!("127.0.0.1:{P}").parse().expect("addr");
        let listener = tcp_listener(addr, false, false, None).expect("listener");
        for _ in 0..3 {
            server_time_wait(&listener, addr);
        }
        let port = P.to_string();
        let seen = srv.metrics_until(Duration::from_secs(10), |m| {
            !m.matching(
                "bindwatch_listener_info",
                &[("port", &port), ("reuseaddr", "false")],
            )
            .is_empty()
        });
        assert!(
            !seen
                .matching(
                    "bindwatch_listener_info",
                    &[("port", &port), ("reuseaddr", "false")]
                )
                .is_empty(),
            "bindwatch saw the listener with reuseaddr=\"false\": {:#?}",
            seen.matching("bindwatch_listener_info", &[("port", &port)])
        );
        std::thread::sleep(Duration::from_millis(1200));
        log(
            t0,
            format!(
                "while the listener lives: {:?}",
                srv.metrics()
                    .matching("bindwatch_rebind_blocked", &[("port", &port)])
            ),
        );
        drop(listener);
        assert_eq!(time_waits(P), 3, "three server-side TIME_WAITs on :{P}");
        log(
            t0,
            format!("listener on {addr} (no SO_REUSEADDR) closed, 3 TIME_WAITs left"),
        );

        let blocked = [
            ("protocol", "tcp"),
            ("address", "127.0.0.1"),
            ("port", port.as_str()),
            ("reuseaddr", "true"),
        ];
        let m = srv.metrics_until(Duration::from_secs(5), |m| {
            m.matching("bindwatch_listener_info", &[("port", &port)])
                .is_empty()
                && m.get("bindwatch_rebind_blocked", &blocked) == Some(1.0)
        });
        assert!(
            m.matching("bindwatch_listener_info", &[("port", &port)])
                .is_empty(),
            "listener series gone"
        );
        assert_eq!(
            m.get("bindwatch_rebind_blocked", &blocked),
            Some(1.0),
            "remembered listener: its TIME_WAITs block even SO_REUSEADDR; {:#?}",
            m.matching("bindwatch_rebind_blocked", &[("port", &port)])
        );
        assert_eq!(
            kernel_bind_listen(addr, true, false, None),
            Err(libc::EADDRINUSE),
            "the kernel agrees: a new socket with SO_REUSEADDR cannot bind {addr}"
        );
        log(t0, format!("bindwatch: bindwatch_rebind_blocked{{reuseaddr=\"true\",port=\"{P}\"}} 1 (kernel agrees)"));

        // The critical alert goes pending, then firing.
        let a = wait_for(
            &format!("{ALERT} pending/firing for port {P}"),
            Duration::from_secs(30),
            || prom.alerts(ALERT, P).into_iter().next(),
        );
        log(t0, format!("{ALERT} is {}", a["state"]));
        let a = wait_for(
            &format!("{ALERT} firing for port {P}"),
            Duration::from_secs(30),
            || {
                prom.alerts(ALERT, P)
                    .into_iter()
                    .find(|a| a["state"] == "firing")
            },
        );
        log(t0, format!("{ALERT} is firing: {}", a["labels"]));
        assert_eq!(a["labels"]["instance"], instance.as_str());
        assert_eq!(a["labels"]["address"], "127.0.0.1");
        assert_eq!(a["labels"]["protocol"], "tcp");
        let r = prom
            .query(&format!(
                "ALERTS{{alertname=\"{ALERT}\",port=\"{P}\",alertstate=\"firing\"}}"
            ))
            .expect("ALERTS query");
        assert_eq!(r.len(), 1, "ALERTS has the firing alert: {r:?}");
        for (k, v) in a["annotations"].as_object().expect("annotations") {
            let v = v.as_str().unwrap_or("");
            assert!(
                !v.contains("error expanding") && !v.contains("<no value>"),
                "annotation {k}: {v}"
            );
        }
        let description = a["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            description.contains("for the next "),
            "TIME_WAIT blockers expire, so the description gives the seconds (bindwatch_rebind_clear_seconds): {description}"
        );
        assert!(
            prom.alerts(ALERT_WARN, P).is_empty(),
            "{ALERT_WARN} stays silent while {ALERT} fires for the same endpoint"
        );

        // Every rule evaluates without error on real bindwatch data.
        let groups = wait_for("every rule evaluated once", Duration::from_secs(15), || {
            let g = prom.api("/api/v1/rules").ok()?;
            let all_seen = g["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .all(|r| r["health"] != "unknown");
            all_seen.then_some(g)
        });
        let rules: Vec<Value> = groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert!(
            rules.len() >= 10,
            "the shipped rules are loaded: {}",
            rules.len()
        );
        for r in &rules {
            assert_eq!(
                r["health"], "ok",
                "rule {} fails: {}",
                r["name"], r["lastError"]
            );
        }
        log(t0, format!("all {} rules healthy", rules.len()));

        // The dashboard, in the same (blocked) situation.
        check_dashboard(&prom, &instance, t0);
        assert_eq!(
            time_waits(P),
            3,
            "still blocked while the dashboard was checked"
        );
        assert!(
            !prom.alerts(ALERT, P).is_empty(),
            "still firing while the dashboard was checked"
        );

        // Remove the blockers; the alert resolves.
        let out = run_ok(
            "ss",
            &["-K", "state", "time-wait", &format!("( sport = :{P} )")],
        );
        let left = time_waits(P);
        if left == 0 {
            log(t0, "ss -K removed the TIME_WAITs");
        } else {
            log(
                t0,
                format!(
                    "NOTE: ss -K did not remove the TIME_WAITs on this kernel ({left} left; ss said {:?}); waiting for their expiry",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
            wait_for("TIME_WAIT expiry (60 s)", Duration::from_secs(75), || {
                (time_waits(P) == 0).then_some(())
            });
        }
        let m = srv.metrics_until(Duration::from_secs(5), |m| {
            m.get("bindwatch_rebind_blocked", &blocked) == Some(0.0)
        });
        assert_eq!(
            m.get("bindwatch_rebind_blocked", &blocked),
            Some(0.0),
            "no blockers left: {:#?}",
            m.matching("bindwatch_rebind_blocked", &[("port", &port)])
        );
        log(t0, "bindwatch: port no longer blocked");
        wait_for(
            &format!("{ALERT} resolved for port {P}"),
            Duration::from_secs(30),
            || {
                let gone = prom.alerts(ALERT, P).is_empty()
                    && prom
                        .query(&format!("ALERTS{{alertname=\"{ALERT}\",port=\"{P}\"}}"))
                        .expect("ALERTS query")
                        .is_empty();
                gone.then_some(())
            },
        );
        log(t0, format!("{ALERT} resolved"));
        // Last, since a successful probe is a (short-lived) listener bindwatch may see.
        assert_eq!(
            kernel_bind_listen(addr, true, false, None),
            Ok(()),
            "the kernel agrees: {addr} can be bound again"
        );
        log(t0, format!("done in {:.1} s", t0.elapsed().as_secs_f64()));
    });
}
