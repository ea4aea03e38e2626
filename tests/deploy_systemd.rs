//! The systemd units and the shipped files (`deploy/systemd/`): `systemd-analyze verify`,
//! the hardening and contracted settings, the socket unit, the env file and sysctl
//! drop-in, the shipped configs loading in the real binary, and every shell script of the
//! repository valid for `bash -n`.
//!
//! Every tool is required: a missing one FAILS the test (it never skips). Install them with
//! `bash scripts/install-test-deps.sh` (`tests/common/deploy.rs` finds them).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::deploy::*;
use serde_json::Value;

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
