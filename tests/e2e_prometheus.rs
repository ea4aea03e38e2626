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
//!
//! The waits on alerts and the shortened rules are in tests/common/e2e.rs, the dashboard's
//! queries in tests/common/dashboard.rs.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::dashboard::check_dashboard;
use common::e2e::*;
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
