//! The alert rules and the metric names of the deploy files: `promtool` checks and unit
//! tests of `deploy/prometheus/`, the PrometheusRule generated from them, and the
//! contract: the metric names that dashboards and alerts may use come from
//! `docs/contract.md`, plus `ADDED_METRICS`; every bindwatch name used must also be one
//! that the source (`src/`) really exports.
//!
//! Every tool is required: a missing one FAILS the test (it never skips). Install them with
//! `bash scripts/install-test-deps.sh` (`tests/common/deploy.rs` finds them).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::deploy::*;

// ---------------------------------------------------------------------------------------
// Prometheus rules

#[test]
fn rules_pass_promtool_check() {
    let out = run_ok(
        Command::new(tool("promtool"))
            .args(["check", "rules"])
            .arg(rules_file()),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let n = alerts().len();
    assert!(
        out.contains(&format!("{n} rules found")),
        "expected {n} rules:\n{out}"
    );
}

#[test]
fn rules_unit_tests_pass() {
    let test_file = repo().join("deploy/prometheus/bindwatch-rules.test.yml");
    let out = run_ok(
        Command::new(tool("promtool"))
            .args(["test", "rules"])
            .arg(&test_file),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// For every alert, the unit tests hold a case where it fires and one where it does not.
#[test]
fn every_alert_has_firing_and_silent_test_cases() {
    let alerts = alerts();
    let tests = yaml(&repo().join("deploy/prometheus/bindwatch-rules.test.yml"));
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in arr(&tests["tests"], "tests") {
        for t in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = s(&t["alertname"], "alertname").to_string();
            assert!(alerts.contains_key(&name), "test for unknown alert {name}");
            match t["exp_alerts"].as_array() {
                Some(exp) if !exp.is_empty() => fires.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    for name in alerts.keys() {
        assert!(fires.contains(name), "no test case where {name} fires");
        assert!(
            silent.contains(name),
            "no test case where {name} stays silent"
        );
    }
}

#[test]
fn every_alert_has_severity_annotations_and_a_runbook_section() {
    let runbook = read(&repo().join("docs/runbook.md"));
    let sections = anchors(&runbook);
    let alerts = alerts();
    for (name, rule) in &alerts {
        let sev = s(&rule["labels"]["severity"], &format!("{name} severity"));
        assert!(
            ["critical", "warning", "info"].contains(&sev),
            "{name}: severity {sev}"
        );
        for key in ["summary", "description"] {
            let v = s(&rule["annotations"][key], &format!("{name} {key}"));
            assert!(v.trim().len() > 20, "{name}: {key} too short: {v:?}");
        }
        let url = s(
            &rule["annotations"]["runbook_url"],
            &format!("{name} runbook_url"),
        );
        let (base, anchor) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: runbook_url without #anchor: {url}"));
        assert!(base.ends_with("docs/runbook.md"), "{name}: {url}");
        assert_eq!(anchor, name.to_lowercase(), "{name}: anchor of {url}");
        assert!(
            sections.contains(anchor),
            "{name}: docs/runbook.md has no section #{anchor}"
        );
    }
    // and no runbook section for an alert that no longer exists
    for line in runbook.lines().filter(|l| l.starts_with("## Bindwatch")) {
        let title = line.trim_start_matches('#').trim();
        assert!(
            alerts.contains_key(title),
            "runbook section for unknown alert {title}"
        );
    }
}

#[test]
fn prometheus_config_passes_promtool() {
    let cfg = repo().join("deploy/prometheus/prometheus.yml");
    let out = run_ok(
        Command::new(tool("promtool"))
            .args(["check", "config"])
            .arg(&cfg),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let v = yaml(&cfg);
    let rule_files = arr(&v["rule_files"], "rule_files");
    assert!(rule_files.iter().any(|f| f == "bindwatch-rules.yml"), "{v}");
    let job = arr(&v["scrape_configs"], "scrape_configs")
        .iter()
        .find(|j| j["job_name"] == "bindwatch")
        .expect("a scrape job named bindwatch (BindwatchDown selects up{job=\"bindwatch\"})");
    assert_eq!(job["scrape_interval"], "15s");
    let targets = arr(&job["static_configs"][0]["targets"], "targets");
    assert!(
        targets.iter().any(|t| s(t, "target").ends_with(":10033")),
        "{job}"
    );
}

// ---------------------------------------------------------------------------------------
// PrometheusRule generated from the rules file

#[test]
fn prometheusrule_is_generated_from_the_rules_file() {
    let committed_path = repo().join("deploy/kubernetes/prometheusrule.yaml");
    let dir = scratch("gen");
    let fresh_path = dir.join("prometheusrule.yaml");
    run_ok(
        Command::new("bash")
            .arg(repo().join("scripts/gen-prometheusrule.sh"))
            .arg(rules_file())
            .arg(&fresh_path),
    );
    let committed = read(&committed_path);
    let fresh = read(&fresh_path);
    assert!(
        committed == fresh,
        "deploy/kubernetes/prometheusrule.yaml is stale: run scripts/gen-prometheusrule.sh"
    );

    // and, parsed, its spec.groups are exactly the rules file's groups
    let pr = yaml(&committed_path);
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(pr["metadata"]["namespace"], "monitoring");
    let rules = yaml(&rules_file());
    assert!(
        pr["spec"]["groups"] == rules["groups"],
        "spec.groups differ from the groups of bindwatch-rules.yml"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn prometheusrule_groups_pass_promtool() {
    let pr = yaml(&repo().join("deploy/kubernetes/prometheusrule.yaml"));
    let groups = &pr["spec"]["groups"];
    assert!(!arr(groups, "spec.groups").is_empty());
    let dir = scratch("prgroups");
    // JSON is YAML, so promtool reads this as a rules file.
    let extracted = dir.join("groups.json");
    fs::write(
        &extracted,
        serde_json::json!({ "groups": groups }).to_string(),
    )
    .unwrap();
    let out = run_ok(
        Command::new(tool("promtool"))
            .args(["check", "rules"])
            .arg(&extracted),
    );
    let n = alerts().len();
    assert!(
        out.contains(&format!("{n} rules found")),
        "expected {n} rules:\n{out}"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn generator_rejects_a_rules_file_with_other_top_level_keys() {
    let dir = scratch("genbad");
    let bad = dir.join("rules.yml");
    fs::write(&bad, "groups: []\nextra: 1\n").unwrap();
    let out = run(Command::new("bash")
        .arg(repo().join("scripts/gen-prometheusrule.sh"))
        .arg(&bad)
        .arg("-"));
    assert!(
        !out.status.success(),
        "generator accepted {}:\n{}",
        bad.display(),
        text(&out)
    );
    let _ = fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------
// Metric names

/// Metric names of the contract's table: name -> type column.
fn contract_metrics() -> BTreeMap<String, String> {
    let path = repo().join("docs/contract.md");
    let contract = read(&path);
    let mut out = BTreeMap::new();
    for line in contract.lines().filter(|l| l.starts_with("| `bindwatch_")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cols[1].trim_matches('`').to_string();
        out.insert(name, cols[2].to_string());
    }
    assert!(
        out.len() >= 10,
        "{}: only {} metrics in the table",
        path.display(),
        out.len()
    );
    out
}

fn allowed_metric(name: &str, contract: &BTreeMap<String, String>) -> bool {
    if contract.contains_key(name)
        || ADDED_METRICS.contains(&name)
        || FOREIGN_METRICS.contains(&name)
    {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| contract.get(base))
            .is_some_and(|ty| ty.starts_with("histogram"))
    })
}

/// Index just past the bracket that closes the one at `start` (strings skipped).
fn skip_balanced(c: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => i = skip_string(c, i) - 1,
            x if x == open => depth += 1,
            x if x == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    c.len()
}

/// Index just past the string literal that starts at `start`.
fn skip_string(c: &[char], start: usize) -> usize {
    let quote = c[start];
    let mut i = start + 1;
    while i < c.len() && c[i] != quote {
        if c[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Metric names in a PromQL expression: identifiers that are not label matchers, grouping
/// labels, functions, keywords, numbers or durations.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // aggregation operators may be followed by `by (...)` before their `(`
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let c: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(&c, i);
        } else if ch == '{' {
            i = skip_balanced(&c, i, '{', '}');
        } else if ch == '[' {
            i = skip_balanced(&c, i, '[', ']');
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let ident: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let next = c.get(j).copied();
            let lower = ident.to_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if next == Some('(') {
                    i = skip_balanced(&c, j, '(', ')');
                }
            } else if next == Some('(')
                || KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
            {
                // function call, keyword or aggregation
            } else {
                out.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every bindwatch metric name that rules, annotations or dashboards use (and every name of
/// [`ADDED_METRICS`]) is exported by the source: it appears there as a string literal.
#[test]
fn metric_names_exist_in_the_source() {
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    let src: String = files.iter().map(|f| read(f)).collect();
    let mut names: BTreeSet<String> = used_metrics()
        .into_keys()
        .filter(|m| m.starts_with("bindwatch_"))
        .collect();
    names.extend(ADDED_METRICS.iter().map(|m| m.to_string()));
    let missing: Vec<&String> = names
        .iter()
        .filter(|m| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| m.strip_suffix(suffix))
                .filter(|b| src.contains(&format!("\"{b}\"")))
                .unwrap_or(m);
            !src.contains(&format!("\"{base}\""))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metric names used by rules/dashboards or listed in ADDED_METRICS that src/ does not export: {missing:?}"
    );
}

#[test]
fn promql_metric_extraction_works() {
    let got = promql_metrics(
        "histogram_quantile(0.99, sum by (instance, le) (rate(bindwatch_x_bucket{instance=~\"$instance\",a=\"b{c}\"}[5m]))) \
         and on(instance) up{job=\"bindwatch\"} == 1 or time() - foo_seconds > 60 \
         unless max without (a) (bar_total)",
    );
    let want: BTreeSet<String> = ["bindwatch_x_bucket", "up", "foo_seconds", "bar_total"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// Metric names used by alert expressions, annotation query templates, dashboard targets and
/// the dashboard's variable: name -> where.
fn used_metrics() -> BTreeMap<String, String> {
    let mut used: BTreeMap<String, String> = BTreeMap::new();

    // alert expressions, and metric names in annotation query templates
    for (name, rule) in alerts() {
        for m in promql_metrics(s(&rule["expr"], &name)) {
            used.insert(m, format!("alert {name}"));
        }
        let annotations = rule["annotations"].to_string();
        for word in annotations.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("bindwatch_") {
                used.insert(word.to_string(), format!("annotation of {name}"));
            }
        }
    }
    // dashboard targets and variable queries
    let dash = dashboard();
    for p in panels(&dash) {
        let title = s(&p["title"], "title").to_string();
        for t in arr(&p["targets"], &title) {
            for m in promql_metrics(s(&t["expr"], &title)) {
                used.insert(m, format!("panel {title}"));
            }
        }
    }
    used.insert("bindwatch_build_info".into(), "variable instance".into());
    used
}

#[test]
fn metric_names_are_in_the_contract() {
    let contract = contract_metrics();
    let used = used_metrics();
    assert!(used.len() >= 10, "suspiciously few metrics found: {used:?}");
    let unknown: Vec<String> = used
        .iter()
        .filter(|(m, _)| !allowed_metric(m, &contract))
        .map(|(m, w)| format!("{m} ({w})"))
        .collect();
    assert!(
        unknown.is_empty(),
        "metric names not in contract.md nor the additions: {unknown:?}"
    );
    // every contracted core metric shows up somewhere in rules or the dashboard
    for m in contract.keys() {
        let seen = used
            .keys()
            .any(|u| u == m || u.starts_with(&format!("{m}_")));
        assert!(
            seen,
            "{m} is in the contract but used by no dashboard panel or alert"
        );
    }
}
