//! Shared by the deploy-file tests (`tests/deploy*.rs`): the real tools (`promtool`,
//! `systemd-analyze`, `kubernetes-validate` from the venv of
//! `scripts/install-test-deps.sh`, `$BINDWATCH_VENV`), YAML read through the venv's
//! Python as `serde_json::Value` (there is no YAML crate among the dependencies), the
//! alert rules and the dashboard.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Kubernetes version the manifests are validated against; must be one the pinned
/// `kubernetes-validate` (see `scripts/install-test-deps.sh`) ships schemas for.
pub const K8S_VERSION: &str = "1.34.0";

/// Metric names that rules and dashboards may use but the contract's table does not list
/// (each must be exported by `src/`, see `metric_names_exist_in_the_source`).
pub const ADDED_METRICS: &[&str] = &[
    "bindwatch_rebind_undecided",
    "bindwatch_capability",
    "bindwatch_source_active",
    "bindwatch_config_last_reload_successful",
    "bindwatch_web_config_last_reload_successful",
    "bindwatch_ports_dropped_total",
    "bindwatch_ephemeral_port_range_size",
    "bindwatch_procfs_malformed_lines_total",
    "bindwatch_view_timestamp_seconds",
    "bindwatch_poll_cpu_seconds_total",
    "bindwatch_poll_cpu_budget_ratio",
    "bindwatch_netns_poll_duration_seconds",
];

/// Non-bindwatch metrics that rules and dashboards may use.
pub const FOREIGN_METRICS: &[&str] = &["up"];

/// Custom-resource kinds that `kubernetes-validate` has no schema for; they are checked
/// structurally by the tests below instead.
pub const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule", "Kustomization"];

/// Dashboard panels that must show data in the end-to-end situation (others may be marked
/// too, e.g. "Seconds since last poll").
pub const E2E_PANELS: &[&str] = &[
    "Sockets by state",
    "Listeners",
    "Restart risk",
    "Leftovers per port",
    "Watched services",
    "Poll duration",
];

// ---------------------------------------------------------------------------------------
// helpers

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("BINDWATCH_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/bindwatch-venv")
}

/// Finds an executable on `PATH` or in the venv's `bin`; panics (test failure) if absent.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(std::iter::once(venv().join("bin")));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "required tool `{name}` not found on PATH nor in {}: run `bash scripts/install-test-deps.sh`",
        venv().join("bin").display()
    );
}

/// The venv's Python, which has PyYAML; the system one may not.
pub fn python() -> PathBuf {
    let py = venv().join("bin/python");
    assert!(
        py.is_file(),
        "{} missing: run `bash scripts/install-test-deps.sh`",
        py.display()
    );
    py
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command that must succeed; returns stdout + stderr.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let t = text(&out);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{t}",
        out.status
    );
    t
}

/// A fresh, empty scratch directory for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bindwatch-deploy-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// All YAML documents of a file, as JSON values.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let script = "import sys, json, yaml\n\
                  with open(sys.argv[1]) as f:\n    \
                  json.dump(list(yaml.safe_load_all(f)), sys.stdout, default=str)\n";
    let out = run_ok(Command::new(python()).arg("-c").arg(script).arg(path));
    let docs: Vec<Value> = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("YAML->JSON of {}: {e}\n{out}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The single YAML document of a file.
pub fn yaml(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(
        docs.len(),
        1,
        "{}: expected one YAML document",
        path.display()
    );
    docs.remove(0)
}

pub fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

pub fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v}"))
}

pub fn rules_file() -> PathBuf {
    repo().join("deploy/prometheus/bindwatch-rules.yml")
}

/// Every alerting rule of the rules file (name -> rule).
pub fn alerts() -> BTreeMap<String, Value> {
    let rules = yaml(&rules_file());
    let mut out = BTreeMap::new();
    for group in arr(&rules["groups"], "groups") {
        for rule in arr(&group["rules"], "rules") {
            if let Some(name) = rule["alert"].as_str() {
                assert!(
                    out.insert(name.to_string(), rule.clone()).is_none(),
                    "duplicate alert {name}"
                );
            }
        }
    }
    assert!(!out.is_empty(), "no alerts in {}", rules_file().display());
    out
}

/// GitHub-style anchors of the markdown headings in a file.
pub fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Grafana dashboard

pub fn dashboard() -> Value {
    let path = repo().join("dashboards/bindwatch.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Panels, including those nested in collapsed rows; row panels themselves are skipped.
pub fn panels(dash: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in arr(&dash["panels"], "panels") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten().cloned());
        } else {
            out.push(p.clone());
        }
    }
    out
}

pub fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}
