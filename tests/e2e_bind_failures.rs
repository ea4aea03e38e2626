//! End to end with a real Prometheus loading the shipped rules: a real bind the kernel
//! refuses (EADDRINUSE: a second UDP socket on a bound port) makes `BindwatchBindFailures`
//! fire with the port, protocol, errno and the process that failed, with its annotations
//! expanded; `BindwatchPredictionMiss` stays silent. In a private network namespace, every
//! wait bounded, both child processes killed on drop.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::prom::Prometheus;
use common::{in_netns, Server};

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn bind_failures_alert_fires_on_a_real_failed_bind() {
    in_netns(|| {
        let bw = Server::start(19110, &["--poll.interval", "1s"]);
        let rules = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/prometheus/bindwatch-rules.yml"),
        )
        .expect("read the shipped rules");
        let prom = Prometheus::start(19091, bw.addr, &rules);
        wait_for(
            "Prometheus to see the tracer attached",
            Duration::from_secs(30),
            || {
                let r = prom
                    .query("bindwatch_capability{capability=\"bind_events\"} == 1")
                    .unwrap_or_default();
                (!r.is_empty()).then_some(())
            },
        );
        let comm = std::fs::read_to_string("/proc/self/comm")
            .expect("comm")
            .trim_end()
            .to_string();
        let addr: SocketAddr = "127.0.0.1:7493".parse().unwrap();
        let first = std::net::UdpSocket::bind(addr).expect("first UDP bind");
        let second = std::net::UdpSocket::bind(addr);
        assert_eq!(
            second.err().and_then(|e| e.raw_os_error()),
            Some(libc::EADDRINUSE),
            "the kernel refuses the second bind"
        );
        let labels = [
            ("protocol", "udp"),
            ("port", "7493"),
            ("errno", "eaddrinuse"),
            ("process", comm.as_str()),
        ];
        let alert = wait_for(
            "BindwatchBindFailures firing",
            Duration::from_secs(60),
            || {
                prom.alerts_where("BindwatchBindFailures", &labels)
                    .into_iter()
                    .find(|a| a["state"] == "firing")
            },
        );
        assert_eq!(alert["labels"]["severity"], "warning");
        for (k, v) in alert["annotations"].as_object().expect("annotations") {
            let v = v.as_str().unwrap_or("");
            assert!(
                !v.contains("error expanding") && !v.contains("<no value>"),
                "{k}: {v}"
            );
        }
        let summary = alert["annotations"]["summary"].as_str().unwrap_or("");
        assert!(
            summary.contains(&comm)
                && summary.contains("udp port 7493")
                && summary.contains("eaddrinuse"),
            "{summary}"
        );
        let description = alert["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            description.contains("failures in the last 10 minutes: 1"),
            "{description}"
        );
        assert!(prom.alerts_where("BindwatchPredictionMiss", &[]).is_empty());
        drop(first);
    });
}
