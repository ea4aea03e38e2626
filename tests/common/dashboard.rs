//! The shipped Grafana dashboard against a real Prometheus: every query of every panel
//! (rows' nested panels included), with Grafana's variables substituted as Grafana does,
//! is evaluated for the single instance and for "All"; panels and targets marked
//! `bindwatch_e2e_expect_data` must return data.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::e2e::{log, manifest};
use super::prom::Prometheus;

/// One query of one dashboard panel.
#[derive(Debug)]
pub struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
    range: bool,
    /// The target's own `bindwatch_e2e_expect_data`, if it has one.
    expect: Option<bool>,
}

/// Every panel (rows' nested panels included): (title, panel-level expect flag, its queries).
pub fn dashboard_panels() -> Vec<(String, bool, Vec<PanelQuery>)> {
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
pub fn substitute(expr: &str, instance_value: &str) -> String {
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
pub fn check_dashboard(prom: &Prometheus, instance: &str, t0: Instant) {
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
