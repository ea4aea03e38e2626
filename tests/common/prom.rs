//! A real `prometheus` for end-to-end tests: writes its config, starts it on a loopback
//! port scraping one target every second with the given rules, waits for /-/ready,
//! queries its HTTP API, and is killed on drop (its log printed when a test fails).

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http_get;

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts prometheus on 127.0.0.1:`port`, scraping `target`, with `rules` as its rule file.
    pub fn start(port: u16, target: SocketAddr, rules: &str) -> Prometheus {
        let dir =
            std::env::temp_dir().join(format!("bindwatch-prom-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create prometheus dir");
        let rules_path = dir.join("rules.yml");
        std::fs::write(&rules_path, rules).expect("write rules");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: bindwatch\n    static_configs:\n      - targets: ['{target}']\n",
                rules_path.display()
            ),
        )
        .expect("write config");
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("prometheus.log")).expect("log file"))
            .spawn()
            .expect("spawn prometheus (installed by scripts/install-test-deps.sh)");
        let mut p = Prometheus {
            child,
            addr: listen.parse().expect("addr"),
            dir,
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// GET an API path: its `data` member, or the API's error.
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let (code, _, body) =
            http_get(self.addr, path, &[]).map_err(|e| format!("GET {path}: {e}"))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("GET {path}: HTTP {code}, not JSON ({e})"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!(
                "GET {path}: HTTP {code}: {} {}",
                v["errorType"], v["error"]
            ));
        }
        Ok(v["data"].clone())
    }

    /// An instant query: the result's elements (a scalar or string counts as one).
    pub fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", enc(q)))?;
        Ok(result_items(&data))
    }

    /// A range query over the last `secs` seconds with a 1 s step.
    pub fn query_range(&self, q: &str, secs: u64) -> Result<Vec<Value>, String> {
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

    /// Active (pending or firing) alerts named `name` whose labels include `labels`.
    pub fn alerts_where(&self, name: &str, labels: &[(&str, &str)]) -> Vec<Value> {
        let data = self.api("/api/v1/alerts").unwrap_or_else(|e| panic!("{e}"));
        data["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| {
                a["labels"]["alertname"] == name
                    && labels
                        .iter()
                        .all(|(k, v)| a["labels"][*k].as_str() == Some(*v))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- prometheus log ----\n{}\n---- end ----",
                self.log_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A query result's elements: a vector's or matrix's samples, or the scalar or string.
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
