//! End to end with a real Prometheus: bindwatch is scraped by `prometheus` (2.42, installed by
//! scripts/install-test-deps.sh) that loads the shipped alert rules; a real blocked restart
//! makes `BindwatchRestartWouldFail` fire (first while the listener without SO_REUSEADDR still
//! lives, when its description names the lasting fix, then after it closed) and then resolve
//! once the blockers are removed. bindwatch watches two services from a `--config.file`: one
//! nobody listens on (`BindwatchWatchedPortMissing`) and one on the blocked port
//! (`BindwatchWatchedPortBlocked`); a broken config reloaded with `POST /-/reload` raises
//! `BindwatchConfigReloadFailed`. Every query of every panel of the shipped Grafana dashboard
//! is evaluated against that Prometheus while the port is blocked.
//!
//! Everything runs in a private network namespace (bindwatch, prometheus, the sockets and `ss`),
//! every wait is bounded, and both child processes are killed on drop.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::prom::Prometheus;
use common::*;
use serde_json::Value;

/// bindwatch's HTTP port, Prometheus's, the port whose restart gets blocked, and the port of
/// a watched service nobody listens on.
const BW: u16 = 19100;
const PROM: u16 = 19090;
const P: u16 = 19200;
const M: u16 = 19201;
const ALERT: &str = "BindwatchRestartWouldFail";
const ALERT_WARN: &str = "BindwatchRestartWouldFailWithoutReuseaddr";
const ALERT_MISSING: &str = "BindwatchWatchedPortMissing";
const ALERT_BLOCKED: &str = "BindwatchWatchedPortBlocked";
const ALERT_RELOAD: &str = "BindwatchConfigReloadFailed";
/// The sentence the critical alert adds while the listener lacks SO_REUSEADDR.
const NO_REUSEADDR_HINT: &str = "The listener does not set SO_REUSEADDR";

/// Watched services: `e2e-missing` on M (nobody listens), `e2e-blocked` on 127.0.0.1:P with
/// SO_REUSEADDR, which the TIME_WAITs of a listener without it block.
fn watched_config() -> String {
    format!(
        "services:\n\
         \x20 - name: e2e-missing\n\
         \x20   protocol: tcp\n\
         \x20   port: {M}\n\
         \x20 - name: e2e-blocked\n\
         \x20   protocol: tcp\n\
         \x20   port: {P}\n\
         \x20   addresses: [\"127.0.0.1\"]\n\
         \x20   reuseaddr: true\n"
    )
}

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

/// The e2e test's waits on top of the shared harness.
trait Waits {
    fn alerts(&self, name: &str, port: u16) -> Vec<Value>;
    fn wait_firing(&self, name: &str, labels: &[(&str, &str)], t0: Instant) -> Value;
    fn wait_resolved(&self, name: &str, labels: &[(&str, &str)], t0: Instant);
}

impl Waits for Prometheus {
    /// Active (pending or firing) alerts named `name` on port `port`.
    fn alerts(&self, name: &str, port: u16) -> Vec<Value> {
        let port = port.to_string();
        self.alerts_where(name, &[("port", &port)])
    }

    /// Waits (bounded) until the alert goes pending or firing, then until it fires; logs both
    /// and checks that no annotation failed to expand. Returns the firing alert.
    fn wait_firing(&self, name: &str, labels: &[(&str, &str)], t0: Instant) -> Value {
        let what = format!("{name} {labels:?}");
        let a = wait_for(
            &format!("{what} pending or firing"),
            Duration::from_secs(30),
            || self.alerts_where(name, labels).into_iter().next(),
        );
        log(t0, format!("{what} is {}", a["state"]));
        let a = wait_for(&format!("{what} firing"), Duration::from_secs(30), || {
            self.alerts_where(name, labels)
                .into_iter()
                .find(|a| a["state"] == "firing")
        });
        log(t0, format!("{what} is firing: {}", a["labels"]));
        for (k, v) in a["annotations"].as_object().expect("annotations") {
            let v = v.as_str().unwrap_or("");
            assert!(
                !v.contains("error expanding") && !v.contains("<no value>"),
                "{what}: annotation {k}: {v}"
            );
        }
        a
    }

    /// Waits (bounded) until no alert `name` with `labels` is active and ALERTS has none.
    fn wait_resolved(&self, name: &str, labels: &[(&str, &str)], t0: Instant) {
        let what = format!("{name} {labels:?}");
        let sel: String = labels
            .iter()
            .map(|(k, v)| format!(",{k}=\"{v}\""))
            .collect();
        wait_for(&format!("{what} resolved"), Duration::from_secs(30), || {
            let gone = self.alerts_where(name, labels).is_empty()
                && self
                    .query(&format!("ALERTS{{alertname=\"{name}\"{sel}}}"))
                    .expect("ALERTS query")
                    .is_empty();
            gone.then_some(())
        });
        log(t0, format!("{what} resolved"));
    }
}

fn description(alert: &Value) -> String {
    alert["annotations"]["description"]
        .as_str()
        .unwrap_or("")
        .to_string()
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
        // bindwatch's own files: the watched services and the state file (never the host's
        // /run/bindwatch, which a real agent may own).
        let bwdir = TempDir::new("e2e-bw");
        let config = bwdir.0.join("bindwatch.yml");
        std::fs::write(&config, watched_config()).expect("write config");
        let state = bwdir.0.join("state.json");
        let (config_s, state_s) = (config.display().to_string(), state.display().to_string());
        let srv = Server::start(
            BW,
            &[
                "--poll.interval",
                "500ms",
                "--config.file",
                &config_s,
                "--state.file",
                &state_s,
                "--web.enable-lifecycle",
            ],
        );
        log(t0, format!("bindwatch serving on {}", srv.addr));
        let prom = Prometheus::start(PROM, srv.addr, &rules_for_test());
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

        // The scrape negotiated OpenMetrics: `# UNIT` exists only there, and Prometheus
        // keeps it in the target's metadata (the text format leaves the unit empty).
        let unit = wait_for(
            "prometheus has bindwatch's metadata",
            Duration::from_secs(20),
            || {
                let data = prom
                    .api("/api/v1/targets/metadata?metric=bindwatch_poll_duration_seconds")
                    .ok()?;
                let entry = data.as_array()?.first()?.clone();
                Some((entry["type"].clone(), entry["unit"].clone()))
            },
        );
        assert_eq!(
            unit,
            (Value::from("histogram"), Value::from("seconds")),
            "Prometheus scraped bindwatch without OpenMetrics (no unit in its metadata):\n{}",
            prom.log_text()
        );
        log(
            t0,
            "prometheus negotiated OpenMetrics (unit seconds in its metadata)",
        );

        // A watched service nobody listens on: missing.
        let (m_port, p_port) = (M.to_string(), P.to_string());
        let status = |name: &'static str, port: &str, st: &str| {
            [
                ("name", name),
                ("protocol", "tcp"),
                ("port", port),
                ("status", st),
            ]
            .map(|(k, v)| (k, v.to_string()))
        };
        let get_status = |m: &Metrics, labels: &[(&str, String); 4]| {
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            m.get("bindwatch_watched_port_status", &l)
        };
        let missing = status("e2e-missing", &m_port, "missing");
        let m = srv.metrics_until(Duration::from_secs(5), |m| {
            get_status(m, &missing) == Some(1.0)
        });
        assert_eq!(
            get_status(&m, &missing),
            Some(1.0),
            "{:#?}",
            m.matching("bindwatch_watched_port_status", &[])
        );
        assert_eq!(
            m.get("bindwatch_config_last_reload_successful", &[]),
            Some(1.0)
        );
        let a = prom.wait_firing(ALERT_MISSING, &[("name", "e2e-missing")], t0);
        assert_eq!(a["labels"]["port"], m_port.as_str());
        assert_eq!(a["labels"]["status"], "missing");

        // A listener without SO_REUSEADDR that leaves server-side TIME_WAITs, alive for more
        // than one poll so bindwatch reads (and remembers) its flags.
        let addr: SocketAddr = format!("127.0.0.1:{P}").parse().expect("addr");
        let listener = tcp_listener(addr, false, false, None).expect("listener");
        for _ in 0..3 {
            server_time_wait(&listener, addr);
        }
        let port = p_port.clone();
        let seen = srv.metrics_until(Duration::from_secs(20), |m| {
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
        let blocked = [
            ("protocol", "tcp"),
            ("address", "127.0.0.1"),
            ("port", port.as_str()),
            ("reuseaddr", "true"),
        ];
        // The live listener's own TIME_WAITs lack SO_REUSEADDR: its restart is blocked even
        // with SO_REUSEADDR, and the watched service on the port is fine (it listens).
        let ok = status("e2e-blocked", &p_port, "ok");
        let m = srv.metrics_until(Duration::from_secs(5), |m| {
            m.get("bindwatch_rebind_blocked", &blocked) == Some(1.0)
                && get_status(m, &ok) == Some(1.0)
        });
        log(
            t0,
            format!(
                "while the listener lives: {:?}",
                m.matching("bindwatch_rebind_blocked", &[("port", &port)])
            ),
        );
        assert_eq!(m.get("bindwatch_rebind_blocked", &blocked), Some(1.0));
        assert_eq!(get_status(&m, &ok), Some(1.0), "e2e-blocked listens: ok");

        // The critical alert fires and, since the listener lacks SO_REUSEADDR, names the
        // lasting fix; the warning cannot fire (the critical one covers the endpoint).
        let a = wait_for(
            &format!("{ALERT} firing for port {P} with the SO_REUSEADDR hint"),
            Duration::from_secs(30),
            || {
                prom.alerts(ALERT, P)
                    .into_iter()
                    .find(|a| a["state"] == "firing" && description(a).contains(NO_REUSEADDR_HINT))
            },
        );
        let d = description(&a);
        log(t0, format!("{ALERT} firing while the listener lives: {d}"));
        assert!(
            d.ends_with("enable it in the daemon's configuration."),
            "{d}"
        );
        assert!(
            !d.contains("error expanding") && !d.contains("<no value>"),
            "{d}"
        );
        assert!(
            prom.alerts(ALERT_WARN, P).is_empty(),
            "{ALERT_WARN} stays silent while {ALERT} fires for the same endpoint"
        );
        // The agent shares the listener's flags through the state file.
        let st: Value = serde_json::from_str(&std::fs::read_to_string(&state).expect("state file"))
            .expect("state file is JSON");
        assert!(
            st["listeners"]
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["port"] == P && e["reuseaddr"] == false)),
            "state file names the listener on {P} without SO_REUSEADDR: {st}"
        );

        // Close the listener; its TIME_WAITs stay.
        drop(listener);
        assert_eq!(time_waits(P), 3, "three server-side TIME_WAITs on :{P}");
        log(
            t0,
            format!("listener on {addr} (no SO_REUSEADDR) closed, 3 TIME_WAITs left"),
        );
        let watched_blocked = status("e2e-blocked", &p_port, "blocked");
        let m = srv.metrics_until(Duration::from_secs(5), |m| {
            m.matching("bindwatch_listener_info", &[("port", &port)])
                .is_empty()
                && m.get("bindwatch_rebind_blocked", &blocked) == Some(1.0)
                && get_status(m, &watched_blocked) == Some(1.0)
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
            get_status(&m, &watched_blocked),
            Some(1.0),
            "e2e-blocked (SO_REUSEADDR) is blocked by TIME_WAITs without it: {:#?}",
            m.matching("bindwatch_watched_port_status", &[("name", "e2e-blocked")])
        );
        assert_eq!(
            kernel_bind_listen(addr, true, false, None),
            Err(libc::EADDRINUSE),
            "the kernel agrees: a new socket with SO_REUSEADDR cannot bind {addr}"
        );
        log(t0, format!("bindwatch: bindwatch_rebind_blocked{{reuseaddr=\"true\",port=\"{P}\"}} 1 and e2e-blocked blocked (kernel agrees)"));

        // The critical alert keeps firing; without a listener there are no flags to show,
        // so the hint goes.
        let a = wait_for(
            &format!("{ALERT} firing for port {P} without the hint"),
            Duration::from_secs(30),
            || {
                prom.alerts(ALERT, P)
                    .into_iter()
                    .find(|a| a["state"] == "firing" && !description(a).contains(NO_REUSEADDR_HINT))
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
        let d = description(&a);
        assert!(
            d.contains("for the next "),
            "TIME_WAIT blockers expire, so the description gives the seconds (bindwatch_rebind_clear_seconds): {d}"
        );
        assert!(
            prom.alerts(ALERT_WARN, P).is_empty(),
            "{ALERT_WARN} stays silent while {ALERT} fires for the same endpoint"
        );

        // The watched service on the blocked port.
        let a = prom.wait_firing(ALERT_BLOCKED, &[("name", "e2e-blocked")], t0);
        assert_eq!(a["labels"]["port"], p_port.as_str());
        assert_eq!(a["labels"]["status"], "blocked");
        assert!(
            prom.alerts_where(ALERT_MISSING, &[("name", "e2e-blocked")])
                .is_empty(),
            "e2e-blocked is blocked, not missing"
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

        // A broken config: the reload fails, the previous services stay, the alert fires;
        // the good file reloads again.
        std::fs::write(&config, "services:\n  - name: broken\n    port: 70000\n")
            .expect("write broken config");
        let (code, _, body) =
            http_request(srv.addr, "POST", "/-/reload", &[]).expect("POST /-/reload");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 500, "a broken config fails to reload: {body}");
        assert!(
            body.contains("70000"),
            "the answer names the problem: {body}"
        );
        let m = srv.metrics();
        assert_eq!(
            m.get("bindwatch_config_last_reload_successful", &[]),
            Some(0.0)
        );
        assert_eq!(
            get_status(&m, &watched_blocked),
            Some(1.0),
            "the previous services stay watched"
        );
        prom.wait_firing(ALERT_RELOAD, &[("instance", &instance)], t0);
        std::fs::write(&config, watched_config()).expect("restore config");
        let (code, _, body) =
            http_request(srv.addr, "POST", "/-/reload", &[]).expect("POST /-/reload");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            srv.metrics()
                .get("bindwatch_config_last_reload_successful", &[]),
            Some(1.0)
        );
        prom.wait_resolved(ALERT_RELOAD, &[("instance", &instance)], t0);

        // Remove the blockers; the alerts resolve.
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
        let now_missing = status("e2e-blocked", &p_port, "missing");
        let m = srv.metrics_until(Duration::from_secs(5), |m| {
            get_status(m, &now_missing) == Some(1.0)
        });
        assert_eq!(
            get_status(&m, &now_missing),
            Some(1.0),
            "nothing blocks e2e-blocked any more: {:#?}",
            m.matching("bindwatch_watched_port_status", &[("name", "e2e-blocked")])
        );
        log(t0, "bindwatch: port no longer blocked");
        prom.wait_resolved(ALERT, &[("port", &p_port)], t0);
        prom.wait_resolved(ALERT_BLOCKED, &[("name", "e2e-blocked")], t0);
        // Last, since a successful probe is a (short-lived) listener bindwatch may see.
        assert_eq!(
            kernel_bind_listen(addr, true, false, None),
            Ok(()),
            "the kernel agrees: {addr} can be bound again"
        );
        log(t0, format!("done in {:.1} s", t0.elapsed().as_secs_f64()));
    });
}
