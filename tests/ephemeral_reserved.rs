//! Issue acceptance 5: `bindwatch_port_in_ephemeral_range` follows the netns's
//! `net.ipv4.ip_local_port_range` and `net.ipv4.ip_local_reserved_ports`.
//!
//! Both sysctls are per network namespace, and `/proc/sys/net` resolves to the namespace of
//! the thread that opens it, so the test sets them from inside its own netns and checks
//! that the host's values did not move. Needs root.

mod common;

use std::time::Duration;

use common::*;

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// The listener under test, inside the netns's range.
const P: u16 = 42000;
/// bindwatch's own web port, below the range: a listener too, never ephemeral here.
const WEB: u16 = 10033;

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_string()
}

fn write(path: &str, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| panic!("writing {value:?} to {path}: {e}"));
}

fn in_range_metric(m: &Metrics, port: u16) -> Option<f64> {
    let port = port.to_string();
    m.get(
        "bindwatch_port_in_ephemeral_range",
        &[("protocol", "tcp"), ("port", &port)],
    )
}

#[test]
fn port_in_ephemeral_range_follows_range_and_reserved_ports() {
    let host = (read(RANGE), read(RESERVED));

    in_netns(|| {
        write(RANGE, "40000 45000");
        assert_eq!(read(RANGE), "40000\t45000", "the netns range was not set");
        assert_eq!(read(RESERVED), "", "a fresh netns reserves nothing");

        let addr = format!("0.0.0.0:{P}").parse().expect("address");
        let listener = tcp_listener(addr, false, false, None).expect("listener");
        let server = Server::start(WEB, &["--poll.interval", "500ms"]);

        let m = server.metrics_until(Duration::from_secs(10), |m| {
            in_range_metric(m, P) == Some(1.0)
        });
        assert_eq!(
            in_range_metric(&m, P),
            Some(1.0),
            "port {P} inside 40000-45000 and not reserved:\n{}",
            m.text
        );
        assert_eq!(
            in_range_metric(&m, WEB),
            Some(0.0),
            "port {WEB} is outside the range:\n{}",
            m.text
        );

        write(RESERVED, &P.to_string());
        assert_eq!(read(RESERVED), P.to_string());
        let m = server.metrics_until(Duration::from_secs(10), |m| {
            in_range_metric(m, P) == Some(0.0)
        });
        assert_eq!(
            in_range_metric(&m, P),
            Some(0.0),
            "port {P} is reserved now:\n{}",
            m.text
        );

        drop(server);
        drop(listener);
    });

    assert_eq!(
        (read(RANGE), read(RESERVED)),
        host,
        "the host's sysctls changed"
    );
}
