//! Checks of the deploy files (`deploy/`, `dashboards/`, `docs/runbook.md`) with the real tools:
//! `promtool`, `systemd-analyze` and `kubernetes-validate`.
//!
//! Every tool is required: a missing one FAILS the test (it never skips). Install them with
//! `bash scripts/install-test-deps.sh`, which puts `kubernetes-validate` and a Python with
//! PyYAML into a venv (`$BINDWATCH_VENV`, default `$HOME/.cache/bindwatch-venv`); this file
//! looks there as well as on `PATH`.
//!
//! There is no YAML crate among the dependencies, so YAML files are turned into JSON by the
//! venv's Python (`yaml.safe_load_all`) and compared / inspected as `serde_json::Value`.
//!
//! The metric names that dashboards and alerts may use come from the contract,
//! `docs/contract.md`, plus [`ADDED_METRICS`]; every
//! bindwatch name used must also be one that the source (`src/`) really exports.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Kubernetes version the manifests are validated against; must be one the pinned
/// `kubernetes-validate` (see `scripts/install-test-deps.sh`) ships schemas for.
const K8S_VERSION: &str = "1.34.0";

/// Metric names that rules and dashboards may use but the contract's table does not list
/// (each must be exported by `src/`, see `metric_names_exist_in_the_source`).
const ADDED_METRICS: &[&str] = &[
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
const FOREIGN_METRICS: &[&str] = &["up"];

/// Custom-resource kinds that `kubernetes-validate` has no schema for; they are checked
/// structurally by the tests below instead.
const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule", "Kustomization"];

/// Dashboard panels that must show data in the end-to-end situation (others may be marked
/// too, e.g. "Seconds since last poll").
const E2E_PANELS: &[&str] = &[
    "Sockets by state",
    "Listeners",
    "Restart risk",
    "Leftovers per port",
    "Watched services",
    "Poll duration",
];

// ---------------------------------------------------------------------------------------
// helpers

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("BINDWATCH_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/bindwatch-venv")
}

/// Finds an executable on `PATH` or in the venv's `bin`; panics (test failure) if absent.
fn tool(name: &str) -> PathBuf {
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
fn python() -> PathBuf {
    let py = venv().join("bin/python");
    assert!(
        py.is_file(),
        "{} missing: run `bash scripts/install-test-deps.sh`",
        py.display()
    );
    py
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command that must succeed; returns stdout + stderr.
fn run_ok(cmd: &mut Command) -> String {
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
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bindwatch-deploy-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// All YAML documents of a file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let script = "import sys, json, yaml\n\
                  with open(sys.argv[1]) as f:\n    \
                  json.dump(list(yaml.safe_load_all(f)), sys.stdout, default=str)\n";
    let out = run_ok(Command::new(python()).arg("-c").arg(script).arg(path));
    let docs: Vec<Value> = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("YAML->JSON of {}: {e}\n{out}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The single YAML document of a file.
fn yaml(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(
        docs.len(),
        1,
        "{}: expected one YAML document",
        path.display()
    );
    docs.remove(0)
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v}"))
}

fn rules_file() -> PathBuf {
    repo().join("deploy/prometheus/bindwatch-rules.yml")
}

/// Every alerting rule of the rules file (name -> rule).
fn alerts() -> BTreeMap<String, Value> {
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
fn anchors(markdown: &str) -> BTreeSet<String> {
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
// Kubernetes

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Validates every manifest of a built-in kind with `kubernetes-validate --strict`. The CRD
/// kinds (ServiceMonitor, PrometheusRule, Kustomization) have no schema there; they get the
/// structural checks of the other tests.
#[test]
fn kubernetes_builtin_manifests_validate() {
    let kv = tool("kubernetes-validate");
    let mut validated = 0;
    for file in k8s_files() {
        for doc in yaml_docs(&file) {
            let kind = s(&doc["kind"], "kind");
            if CRD_KINDS.contains(&kind) {
                continue;
            }
            let api = s(&doc["apiVersion"], "apiVersion");
            let group = api.rsplit_once('/').map_or("", |(g, _)| g);
            assert!(
                !group.contains('.'),
                "{}: unexpected custom kind {api} {kind}",
                file.display()
            );
            let out = run_ok(
                Command::new(&kv)
                    .args(["--strict", "-k", K8S_VERSION])
                    .arg(&file),
            );
            assert!(
                out.contains("passed") && !out.contains("Couldn't find schema"),
                "{}:\n{out}",
                file.display()
            );
            validated += 1;
        }
    }
    assert!(
        validated >= 3,
        "expected DaemonSet, Service, ConfigMap; validated {validated}"
    );

    // The validator really checks with this version: an unknown field must fail.
    let dir = scratch("kv");
    let bad = dir.join("bad.yaml");
    let ds = read(&k8s_dir().join("daemonset.yaml"))
        .replace("hostPID: true", "hostPID: true\n      hostPIDS: true");
    fs::write(&bad, ds).unwrap();
    let out = run(Command::new(&kv)
        .args(["--strict", "-k", K8S_VERSION])
        .arg(&bad));
    assert!(
        !out.status.success(),
        "kubernetes-validate accepted a bogus field:\n{}",
        text(&out)
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = yaml(&k8s_dir().join("kustomization.yaml"));
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(k["namespace"], "monitoring");
    let listed: BTreeSet<String> = arr(&k["resources"], "resources")
        .iter()
        .map(|r| s(r, "resource").to_string())
        .collect();
    let present: BTreeSet<String> = k8s_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization resources vs files in deploy/kubernetes"
    );
    for f in [
        "daemonset.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
    ] {
        assert!(listed.contains(f), "{f} not listed");
    }
}

#[test]
fn daemonset_service_and_monitor_fit_together() {
    let ds = yaml(&k8s_dir().join("daemonset.yaml"));
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], "monitoring");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "10%"
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(
        arr(&pod["tolerations"], "tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "needs a toleration for every taint"
    );
    let containers = arr(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    // The name scripts/build-image.sh tags (bindwatch:<version>).
    assert_eq!(
        c["image"],
        format!("bindwatch:{}", env!("CARGO_PKG_VERSION")).as_str()
    );
    assert!(read(&repo().join("scripts/build-image.sh")).contains(r#"tag="bindwatch:$version""#));
    let args: Vec<&str> = arr(&c["args"], "args")
        .iter()
        .map(|a| s(a, "arg"))
        .collect();
    assert!(args.contains(&"--path.procfs=/host/proc"), "{args:?}");
    assert!(args.contains(&"--path.rootfs=/host/root"), "{args:?}");
    assert!(args.contains(&"--netns=all"), "{args:?}");
    assert!(args.contains(&"--web.listen-address=:10033"), "{args:?}");
    assert!(
        args.contains(&"--config.file=/etc/bindwatch/bindwatch.yml"),
        "{args:?}"
    );
    assert!(
        args.contains(&"--state.file=/run/bindwatch/state.json"),
        "{args:?}"
    );

    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<&str> = arr(&sc["capabilities"]["add"], "add")
        .iter()
        .map(|a| s(a, "cap"))
        .collect();
    // SYS_ADMIN: setns() into the pods' namespaces for --netns=all; BPF + PERFMON: the
    // socket-iterator source.
    assert_eq!(
        added,
        BTreeSet::from([
            "DAC_READ_SEARCH",
            "SYS_PTRACE",
            "SYS_ADMIN",
            "BPF",
            "PERFMON"
        ])
    );

    // /proc of the host, read-only, at /host/proc
    let proc_vol = arr(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v["hostPath"]["path"] == "/proc")
        .expect("hostPath volume /proc");
    let mount = arr(&c["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"] == proc_vol["name"])
        .expect("mount of the /proc volume");
    assert_eq!(mount["mountPath"], "/host/proc");
    assert_eq!(mount["readOnly"], true);

    // --path.rootfs=/host/root: the host's /etc/passwd (that file only) under it, read-only
    let passwd_vol = arr(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v["hostPath"]["path"] == "/etc/passwd")
        .expect("hostPath volume /etc/passwd");
    assert_eq!(passwd_vol["hostPath"]["type"], "File");
    let mount = arr(&c["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"] == passwd_vol["name"])
        .expect("mount of the /etc/passwd volume");
    assert_eq!(mount["mountPath"], "/host/root/etc/passwd");
    assert_eq!(mount["readOnly"], true);
    assert!(
        !arr(&pod["volumes"], "volumes")
            .iter()
            .any(|v| v["hostPath"]["path"] == "/"),
        "the host's whole root is not mounted"
    );

    // --config.file: the ConfigMap's bindwatch.yml, mounted as a directory (not subPath, so
    // the kubelet updates it after an edit)
    let volumes = arr(&pod["volumes"], "volumes");
    let mounts = arr(&c["volumeMounts"], "volumeMounts");
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no volume mounted at {path}"))
    };
    let volume_of = |m: &Value| {
        volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {}", m["name"]))
    };
    let cfg_mount = mount_of("/etc/bindwatch");
    assert!(cfg_mount.get("subPath").is_none(), "{cfg_mount}");
    let cm_name = s(
        &volume_of(cfg_mount)["configMap"]["name"],
        "config volume configMap.name",
    );
    let cm = yaml(&k8s_dir().join("configmap.yaml"));
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], cm_name);
    assert!(cm["data"]["bindwatch.yml"].is_string(), "{cm}");

    // --state.file: a writable /run/bindwatch on the node, so a host-side `bindwatch check`
    // reads the agent's listener memory
    let state_mount = mount_of("/run/bindwatch");
    assert_ne!(state_mount["readOnly"], true, "{state_mount}");
    let state_vol = volume_of(state_mount);
    assert_eq!(
        state_vol["hostPath"]["path"], "/run/bindwatch",
        "{state_vol}"
    );
    assert_eq!(
        state_vol["hostPath"]["type"], "DirectoryOrCreate",
        "{state_vol}"
    );

    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], 10033, "{probe}");
    }
    let res = &c["resources"];
    assert_eq!(res["requests"]["cpu"], "10m");
    assert_eq!(res["requests"]["memory"], "32Mi");
    assert_eq!(res["limits"]["cpu"], "200m");
    assert_eq!(res["limits"]["memory"], "128Mi");
    let ports = arr(&c["ports"], "ports");
    assert!(ports
        .iter()
        .any(|p| p["name"] == "metrics" && p["containerPort"] == 10033));

    // Service selects the pods and names the port; the ServiceMonitor selects the Service.
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let svc = yaml(&k8s_dir().join("service.yaml"));
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    for (k, v) in svc["spec"]["selector"]
        .as_object()
        .expect("service selector")
    {
        assert_eq!(&pod_labels[k], v, "service selector {k}");
    }
    let sp = &arr(&svc["spec"]["ports"], "service ports")[0];
    assert_eq!(sp["name"], "metrics");
    assert_eq!(sp["port"], 10033);

    let sm = yaml(&k8s_dir().join("servicemonitor.yaml"));
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["kind"], "ServiceMonitor");
    assert_eq!(sm["metadata"]["namespace"], "monitoring");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "servicemonitor selector {k}"
        );
    }
    let ep = &arr(&sm["spec"]["endpoints"], "endpoints")[0];
    assert_eq!(ep["port"], "metrics");
    // The job label defaults to the Service name, which BindwatchDown relies on.
    assert_eq!(svc["metadata"]["name"], "bindwatch");
    assert!(sm["spec"].get("jobLabel").is_none());
}

// ---------------------------------------------------------------------------------------
// systemd

fn unit_path() -> PathBuf {
    repo().join("deploy/systemd/bindwatch.service")
}

/// `systemd-analyze verify` insists that the ExecStart= binary exists, and
/// /usr/local/bin/bindwatch is not installed where the tests run. So the unit is copied with
/// only the ExecStart= binary replaced by /bin/true; every other line is verified as is.
fn unit_copy_with_existing_binary(dir: &Path) -> PathBuf {
    let unit = read(&unit_path());
    let orig = "ExecStart=/usr/local/bin/bindwatch ";
    assert_eq!(
        unit.matches(orig).count(),
        1,
        "one ExecStart=/usr/local/bin/bindwatch"
    );
    let copy = dir.join("bindwatch.service");
    fs::write(&copy, unit.replace(orig, "ExecStart=/bin/true ")).unwrap();
    copy
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let dir = scratch("systemd");
    let unit = unit_copy_with_existing_binary(&dir);
    let sa = tool("systemd-analyze");
    let out = run(Command::new(&sa).arg("verify").arg(&unit));
    let t = text(&out);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{t}");
    // verify exits 0 on unknown keys and bad values, only printing them: treat any line
    // about our unit as an error.
    let complaints: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("bindwatch.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify:\n{}",
        complaints.join("\n")
    );

    // Overall exposure (0 best .. 10 worst; threshold is x10). The unit scores about 2.5.
    let out = run(Command::new(&sa)
        .args(["security", "--offline=yes", "--threshold=30", "--no-pager"])
        .arg(&unit));
    assert!(out.status.success(), "exposure above 3.0:\n{}", text(&out));
    let _ = fs::remove_dir_all(dir);
}

/// `Key=value` settings of the unit (last one wins, as for most keys).
fn unit_settings() -> BTreeMap<String, String> {
    read(&unit_path())
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn systemd_unit_has_the_contracted_settings() {
    let u = unit_settings();
    let expect = [
        (
            "ExecStart",
            "/usr/local/bin/bindwatch serve $BINDWATCH_ARGS",
        ),
        ("EnvironmentFile", "-/etc/default/bindwatch"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        // READY=1 once the first poll is served (sd_notify)
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        // the default --state.file is /run/bindwatch/state.json
        ("RuntimeDirectory", "bindwatch"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_NETLINK AF_UNIX AF_INET AF_INET6",
        ),
    ];
    for (k, v) in expect {
        assert_eq!(u.get(k).map(String::as_str), Some(v), "{k}=");
    }
    for k in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let caps: BTreeSet<&str> = u[k].split_whitespace().collect();
        assert_eq!(
            caps,
            BTreeSet::from([
                "CAP_DAC_READ_SEARCH",
                "CAP_SYS_PTRACE",
                "CAP_BPF",
                "CAP_PERFMON"
            ]),
            "{k}="
        );
    }
    // pidfd_getfd is in @debug, not @system-service: it must be allowed by name.
    let filter = u.get("SystemCallFilter").expect("SystemCallFilter=");
    assert!(
        filter.split_whitespace().any(|w| w == "pidfd_getfd"),
        "{filter}"
    );
    // The bpf source's bpf(2) is in no set @system-service includes.
    assert!(filter.split_whitespace().any(|w| w == "bpf"), "{filter}");
    // The bind-failure tracer attaches its tracepoints with perf_event_open(2).
    assert!(
        filter.split_whitespace().any(|w| w == "perf_event_open"),
        "{filter}"
    );
    // settings that would hide the host's sockets or processes from bindwatch
    for k in [
        "PrivateNetwork",
        "PrivateUsers",
        "ProtectProc",
        "ProcSubset",
    ] {
        assert!(!u.contains_key(k), "{k}= would blind bindwatch");
    }
}

/// Non-comment, non-empty lines of a unit file, trimmed.
fn unit_lines(path: &Path) -> Vec<String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// bindwatch.socket (socket activation) starts bindwatch-socket.service, which must stay
/// bindwatch.service line for line but for what binds it to the socket: a hardening
/// change to one unit and not the other fails here.
#[test]
fn socket_unit_and_its_service_verify_and_match_the_plain_service() {
    let dir = scratch("systemd-socket");
    let sys = repo().join("deploy/systemd");
    for unit in ["bindwatch.socket", "bindwatch-socket.service"] {
        let u = read(&sys.join(unit));
        fs::write(
            dir.join(unit),
            u.replace(
                "ExecStart=/usr/local/bin/bindwatch ",
                "ExecStart=/bin/true ",
            ),
        )
        .unwrap();
    }
    let out = run(Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(dir.join("bindwatch.socket"))
        .arg(dir.join("bindwatch-socket.service")));
    let t = text(&out);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{t}");
    let complaints: Vec<&str> = t.lines().filter(|l| l.contains("bindwatch")).collect();
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));

    let socket = unit_lines(&sys.join("bindwatch.socket"));
    for want in [
        "ListenStream=10033",
        "Service=bindwatch-socket.service",
        "Conflicts=bindwatch.service",
        "WantedBy=sockets.target",
    ] {
        assert!(
            socket.iter().any(|l| l == want),
            "bindwatch.socket lacks {want}"
        );
    }

    let variant = unit_lines(&sys.join("bindwatch-socket.service"));
    assert!(
        variant.iter().any(|l| l
            == "ExecStart=/usr/local/bin/bindwatch serve --web.systemd-socket $BINDWATCH_ARGS"),
        "{variant:?}"
    );
    for want in ["Requires=bindwatch.socket", "After=bindwatch.socket"] {
        assert!(variant.iter().any(|l| l == want), "lacks {want}");
    }
    assert!(
        !variant.iter().any(|l| l == "[Install]"),
        "started by the socket only"
    );
    let plain: Vec<String> = unit_lines(&unit_path())
        .into_iter()
        .take_while(|l| l != "[Install]")
        .filter(|l| !l.starts_with("Description="))
        .collect();
    let variant: Vec<String> = variant
        .into_iter()
        .filter(|l| !l.starts_with("Description="))
        .filter(|l| l != "Requires=bindwatch.socket" && l != "After=bindwatch.socket")
        .map(|l| l.replace(" serve --web.systemd-socket ", " serve "))
        .collect();
    assert_eq!(
        plain, variant,
        "bindwatch-socket.service drifted from bindwatch.service"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn systemd_env_file_and_sysctl_dropin() {
    let env = read(&repo().join("deploy/systemd/bindwatch.default"));
    for line in env.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            line.starts_with("BINDWATCH_ARGS="),
            "unexpected line in bindwatch.default: {line}"
        );
    }
    for flag in [
        "--web.listen-address=:10033",
        "--poll.interval=5s",
        "--config.file=/etc/bindwatch/bindwatch.yml",
        "--state.file=/run/bindwatch/state.json",
        "--web.config.file=",
    ] {
        assert!(
            env.contains(flag),
            "bindwatch.default lacks an example of {flag}"
        );
    }
    // The active setting watches the services of the shipped config file.
    let active: Vec<&str> = env
        .lines()
        .filter(|l| l.starts_with("BINDWATCH_ARGS="))
        .collect();
    assert_eq!(
        active,
        vec!["BINDWATCH_ARGS=\"--config.file=/etc/bindwatch/bindwatch.yml\""]
    );

    let sysctl = read(&repo().join("deploy/systemd/60-bindwatch.conf"));
    let settings: Vec<(&str, &str)> = sysctl
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad sysctl line {l}"));
            (k.trim(), v.trim())
        })
        .collect();
    assert_eq!(
        settings,
        vec![("net.ipv4.ip_local_reserved_ports", "10033")]
    );
}

/// The config files shipped (systemd example, ConfigMap) and the examples in their comments
/// load with the real binary.
#[test]
fn shipped_config_files_load() {
    let dir = scratch("configs");
    let cm = yaml(&k8s_dir().join("configmap.yaml"));
    let mut files = vec![
        (
            "deploy/systemd/bindwatch.yml".to_string(),
            read(&repo().join("deploy/systemd/bindwatch.yml")),
        ),
        (
            "configmap.yaml data bindwatch.yml".to_string(),
            s(&cm["data"]["bindwatch.yml"], "bindwatch.yml").to_string(),
        ),
    ];
    // The commented example after "# services:" in each, uncommented.
    for (name, body) in files.clone() {
        let lines: Vec<&str> = body.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim_start() == "# services:")
            .unwrap_or_else(|| panic!("{name}: no commented example"));
        let example: Vec<String> = lines[start..]
            .iter()
            .take_while(|l| l.trim_start().starts_with('#'))
            .map(|l| {
                let t = l.trim_start().trim_start_matches('#');
                t.strip_prefix(' ').unwrap_or(t).to_string()
            })
            .collect();
        files.push((format!("{name} (example)"), example.join("\n") + "\n"));
    }
    for (i, (name, body)) in files.iter().enumerate() {
        let path = dir.join(format!("config-{i}.yml"));
        fs::write(&path, body).unwrap();
        let out = run(Command::new(env!("CARGO_BIN_EXE_bindwatch"))
            .args(["ports", "--json", "--state.file=", "--config.file"])
            .arg(&path));
        assert!(
            out.status.success(),
            "{name} does not load:\n{body}\n{}",
            text(&out)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).expect("ports --json");
        let declared: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("- name:"))
            .map(str::trim)
            .collect();
        let watched: Vec<&str> = arr(&doc["watched"], "watched")
            .iter()
            .map(|w| s(&w["name"], "watched name"))
            .collect();
        assert_eq!(watched, declared, "{name}: services watched");
        assert!(
            !name.ends_with("(example)") || !declared.is_empty(),
            "{name}: the example declares no service"
        );
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn scripts_are_valid_bash() {
    // Every shell script of the repository, found rather than listed, so a new one is
    // checked too; `.ci/run` has no suffix.
    let mut scripts = vec![repo().join(".ci/run")];
    for dir in ["scripts", "deploy"] {
        let mut stack = vec![repo().join(dir)];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
                let p = e.expect("dir entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "sh") {
                    scripts.push(p);
                }
            }
        }
    }
    assert!(
        scripts.len() >= 11,
        "only {} scripts found: {scripts:?}",
        scripts.len()
    );
    for script in &scripts {
        run_ok(Command::new("bash").arg("-n").arg(script));
    }
}

// ---------------------------------------------------------------------------------------
// Grafana dashboard

fn dashboard() -> Value {
    let path = repo().join("dashboards/bindwatch.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Panels, including those nested in collapsed rows; row panels themselves are skipped.
fn panels(dash: &Value) -> Vec<Value> {
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

#[test]
fn dashboard_variables_and_datasources() {
    let dash = dashboard();
    let version = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&version), "schemaVersion {version}");
    let vars = arr(&dash["templating"]["list"], "templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let inst = var("instance");
    assert_eq!(inst["type"], "query");
    assert_eq!(inst["datasource"]["uid"], "${datasource}");
    let q = inst["query"]["query"].as_str().or(inst["query"].as_str());
    assert_eq!(q, Some("label_values(bindwatch_build_info, instance)"));

    let panels = panels(&dash);
    assert!(panels.len() >= 8, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = s(&p["title"], "panel title");
        assert!(
            ids.insert(p["id"].to_string()),
            "duplicate panel id in {title}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = arr(&p["targets"], title);
        assert!(!targets.is_empty(), "panel {title} has no targets");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "target of {title}");
            let expr = s(&t["expr"], title);
            assert!(
                expr.contains("instance=~\"$instance\""),
                "panel {title}: query not filtered by instance=~\"$instance\": {expr}"
            );
        }
    }
}

/// `bindwatch_e2e_expect_data` marks, on each panel and each target, whether it must show data
/// in the end-to-end test (a live bindwatch scraped by Prometheus). Grafana ignores the field.
#[test]
fn dashboard_marks_what_the_e2e_test_expects() {
    let dash = dashboard();
    let panels = panels(&dash);
    for p in &panels {
        let title = s(&p["title"], "panel title");
        let want = p["bindwatch_e2e_expect_data"]
            .as_bool()
            .unwrap_or_else(|| panic!("panel {title}: bindwatch_e2e_expect_data must be a bool"));
        let mut any_target = false;
        for t in arr(&p["targets"], title) {
            any_target |= t["bindwatch_e2e_expect_data"].as_bool().unwrap_or_else(|| {
                panic!("target of {title}: bindwatch_e2e_expect_data must be a bool")
            });
        }
        assert_eq!(
            want, any_target,
            "panel {title}: expects data iff one of its targets does"
        );
        if E2E_PANELS.contains(&title) {
            assert!(
                want,
                "panel {title} must be marked bindwatch_e2e_expect_data: true"
            );
        }
    }
    for title in E2E_PANELS {
        assert!(
            panels.iter().any(|p| p["title"] == *title),
            "no panel {title}"
        );
    }
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
