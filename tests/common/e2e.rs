//! Shared by the end-to-end tests with a real Prometheus: the shipped alert rules with every
//! `for:` shortened (the `expr`s byte for byte), bounded waits for an alert to fire (with
//! its annotations expanded) and to resolve, and a progress log with the seconds elapsed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::prom::Prometheus;

pub fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn log(t0: Instant, msg: impl AsRef<str>) {
    println!("[e2e {:6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

/// The e2e test's waits on top of the shared harness.
pub trait Waits {
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

pub fn description(alert: &Value) -> String {
    alert["annotations"]["description"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The shipped rules with every `for:` shortened to 1 s. The shipped durations (1m to 15m)
/// would make this test wait minutes for an alert to fire; shortening `for:` changes only
/// how long an alert stays pending, never which series it fires on. The `expr`s (what this
/// test is about) are copied byte for byte.
pub fn rules_for_test() -> String {
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
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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
