//! The failure tracer's families: its capability and, when it runs, the bind and
//! connect failures it saw and how the predictions fared.

use super::b;
use super::writer::Writer;

/// The failure tracer's capability and, when it runs, its counters. Series carry a
/// `netns` label under `--netns all` (in the key), none otherwise.
pub(super) fn render_events(w: &mut Writer, ev: Option<&crate::model::Counters>) {
    w.family(
        "bindwatch_capability",
        "gauge",
        "1 when bindwatch has the privilege for a feature: owners (read /proc/PID/fd), socket_flags (pidfd_getfd).",
    );
    w.sample(
        "bindwatch_capability",
        &[("capability", "bind_events")],
        b(ev.is_some()),
    );
    let Some(c) = ev else {
        return;
    };
    let with_ns =
        |ns: &Option<String>, rest: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            ns.iter()
                .map(|n| ("netns", n.clone()))
                .chain(rest.iter().map(|(k, v)| (*k, v.to_string())))
                .collect()
        };
    w.family(
        "bindwatch_bind_failures_total",
        "counter",
        "bind() and listen() calls the kernel refused (EADDRINUSE, EACCES, EADDRNOTAVAIL), seen by the BPF tracer.",
    );
    for ((ns, p, port, errno, process), n) in &c.bind {
        let port = port.to_string();
        let labels = with_ns(
            ns,
            &[
                ("protocol", p.as_str()),
                ("port", &port),
                ("errno", errno.as_str()),
                ("process", process),
            ],
        );
        let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.sample("bindwatch_bind_failures_total", &refs, *n as f64);
    }
    // Failed unix binds: no port, and the path never in a label (`GET /failures`).
    for ((ns, errno, process), n) in &c.unix_bind {
        let labels = with_ns(
            ns,
            &[
                ("protocol", "unix"),
                ("errno", errno.as_str()),
                ("process", process),
            ],
        );
        let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.sample("bindwatch_bind_failures_total", &refs, *n as f64);
    }
    w.family(
        "bindwatch_connect_failures_total",
        "counter",
        "connect() calls refused for want of a source port (EADDRNOTAVAIL), seen by the BPF tracer.",
    );
    for ((ns, p, errno, process), n) in &c.connect {
        let labels = with_ns(
            ns,
            &[
                ("protocol", p.as_str()),
                ("errno", errno.as_str()),
                ("process", process),
            ],
        );
        let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.sample("bindwatch_connect_failures_total", &refs, *n as f64);
    }
    w.family(
        "bindwatch_bind_predictions_total",
        "counter",
        "Observed binds on ports of interest against the verdict held just before for the socket's own flags: hit (the kernel agreed), miss (it did not), undecided.",
    );
    for (o, n) in crate::model::Outcome::ALL.iter().zip(c.predictions) {
        w.sample(
            "bindwatch_bind_predictions_total",
            &[("outcome", o.as_str())],
            n as f64,
        );
    }
    w.family(
        "bindwatch_bind_failures_dropped_total",
        "counter",
        "Failures left out of bindwatch_bind_failures_total and bindwatch_connect_failures_total because their series would pass --ports.max.",
    );
    w.sample(
        "bindwatch_bind_failures_dropped_total",
        &[],
        c.dropped as f64,
    );
    w.family(
        "bindwatch_bind_events_lost_total",
        "counter",
        "Events the BPF tracer dropped in the kernel because its ring buffer was full (failures and binds of any namespace): the failure counters miss at most this many.",
    );
    w.sample("bindwatch_bind_events_lost_total", &[], c.lost as f64);
}
