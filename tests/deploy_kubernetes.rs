//! The Kubernetes manifests (`deploy/kubernetes/`): validated with `kubernetes-validate`
//! against the Kubernetes version pinned in `tests/common/deploy.rs`, the kustomization
//! complete, the DaemonSet, Service and ServiceMonitor consistent with each other.
//!
//! Every tool is required: a missing one FAILS the test (it never skips). Install them with
//! `bash scripts/install-test-deps.sh` (`tests/common/deploy.rs` finds them).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::deploy::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Kubernetes

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
