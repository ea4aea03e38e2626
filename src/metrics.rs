//! Every metric name and help text, and the rendering of a [`Snapshot`] into the
//! Prometheus text format.
//!
//! Snapshot metrics are rendered here by a small writer rather than through
//! `prometheus` crate vectors: a `GaugeVec` keeps every label set it ever saw, so a
//! closed port would linger as a stale series; rendering from the immutable
//! snapshot makes series appear and disappear with the sockets. The `prometheus`
//! crate is used for what it does best: bindwatch's own counters and histogram.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::collect::socket_counts;
use crate::model::{EndpointRisk, Protocol, Snapshot, Tri};
use crate::rebind::{Judgement, Verdict};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = match option_env!("BINDWATCH_REVISION") {
    Some(r) => r,
    None => "unknown",
};

/// bindwatch's own instruments, updated by the poller.
pub struct SelfMetrics {
    pub registry: Registry,
    pub poll_duration: HistogramVec,
    pub poll_errors: IntCounterVec,
}

impl SelfMetrics {
    /// # Panics
    /// Never in practice: the names below are valid and registered once.
    pub fn new() -> Self {
        let registry = Registry::new();
        let poll_duration = HistogramVec::new(
            HistogramOpts::new(
                "bindwatch_poll_duration_seconds",
                "Time of one poll of the socket table.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["source"],
        )
        .expect("valid histogram");
        let poll_errors = IntCounterVec::new(
            Opts::new(
                "bindwatch_poll_errors_total",
                "Polls that failed, by source.",
            ),
            &["source"],
        )
        .expect("valid counter");
        registry
            .register(Box::new(poll_duration.clone()))
            .expect("registered once");
        registry
            .register(Box::new(poll_errors.clone()))
            .expect("registered once");
        for s in ["netlink", "procfs"] {
            poll_errors.with_label_values(&[s]);
        }
        SelfMetrics {
            registry,
            poll_duration,
            poll_errors,
        }
    }

    fn render(&self, out: &mut String) {
        let mut buf = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_ok()
        {
            out.push_str(&String::from_utf8_lossy(&buf));
        }
    }
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes families in the text exposition format, escaping label values.
///
/// Samples are grouped per family whatever order they are written in (the format
/// wants each family in one block), so snapshots of several network namespaces can
/// be rendered one after the other, each with its `netns` label.
#[derive(Default)]
struct Writer {
    order: Vec<&'static str>,
    families: std::collections::HashMap<&'static str, String>,
    current: &'static str,
    /// `netns` label value added first to every sample (`--netns all`).
    netns: Option<String>,
}

impl Writer {
    fn family(&mut self, name: &'static str, kind: &str, help: &str) {
        self.current = name;
        if !self.families.contains_key(name) {
            self.order.push(name);
            self.families.insert(
                name,
                format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"),
            );
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let netns = self.netns.as_deref();
        let Some(out) = self.families.get_mut(self.current) else {
            return;
        };
        out.push_str(name);
        let all = netns
            .map(|n| ("netns", n))
            .into_iter()
            .chain(labels.iter().copied());
        let mut first = true;
        for (k, v) in all {
            out.push(if first { '{' } else { ',' });
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        if !first {
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }

    fn finish(self, out: &mut String) {
        for name in &self.order {
            if let Some(text) = self.families.get(name) {
                out.push_str(text);
            }
        }
    }
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// The judgement of the restart that will really happen: with the listener's own
/// SO_REUSEADDR, or without it where that flag is unknown (what surely blocks).
pub fn realistic(r: &EndpointRisk) -> &Judgement {
    if r.listener.flags.reuseaddr == Tri::True {
        &r.with_reuseaddr
    } else {
        &r.without_reuseaddr
    }
}

/// Extra state the poller adds to a scrape (not part of the snapshot).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    pub last_success_unix: Option<f64>,
    /// Whether the last (re)load of `--config.file` worked; `None` without a file.
    pub config_reload_ok: Option<bool>,
    pub procfs_bad_lines: u64,
    /// Seconds of the last poll per namespace, with `--netns all`.
    pub netns_poll_seconds: Vec<(String, f64)>,
    /// CPU seconds spent polling since start.
    pub poll_cpu_seconds_total: f64,
    /// `--poll.cpu-budget`.
    pub cpu_budget: f64,
}

/// Renders the snapshots (one per watched network namespace; the name is `None`
/// without `--netns all`) and bindwatch's own metrics.
pub fn render(snaps: &[(Option<&str>, &Snapshot)], selfm: &SelfMetrics, extras: &Extras) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let mut w = Writer::default();

    w.family(
        "bindwatch_build_info",
        "gauge",
        "A metric with a constant 1 labelled by version and git revision.",
    );
    w.sample(
        "bindwatch_build_info",
        &[("version", VERSION), ("revision", REVISION)],
        1.0,
    );

    if let Some(t) = extras.last_success_unix {
        w.family(
            "bindwatch_last_poll_timestamp_seconds",
            "gauge",
            "Unix time at the end of the last successful poll.",
        );
        w.sample("bindwatch_last_poll_timestamp_seconds", &[], t);
    }
    w.family(
        "bindwatch_poll_cpu_seconds_total",
        "counter",
        "CPU time the poller spent reading and judging the socket table.",
    );
    w.sample(
        "bindwatch_poll_cpu_seconds_total",
        &[],
        extras.poll_cpu_seconds_total,
    );
    w.family(
        "bindwatch_poll_cpu_budget_ratio",
        "gauge",
        "--poll.cpu-budget: the fraction of one core the poller may use on average (0: no budget).",
    );
    w.sample("bindwatch_poll_cpu_budget_ratio", &[], extras.cpu_budget);
    w.family(
        "bindwatch_procfs_malformed_lines_total",
        "counter",
        "Malformed /proc/net lines skipped by the procfs source.",
    );
    w.sample(
        "bindwatch_procfs_malformed_lines_total",
        &[],
        extras.procfs_bad_lines as f64,
    );

    if let Some(ok) = extras.config_reload_ok {
        w.family(
            "bindwatch_config_last_reload_successful",
            "gauge",
            "1 when the last load of --config.file succeeded; 0 while an older config stays active after a failed reload.",
        );
        w.sample("bindwatch_config_last_reload_successful", &[], b(ok));
    }
    for (netns, s) in snaps {
        w.netns = netns.map(str::to_string);
        render_snapshot(&mut w, s);
    }
    w.netns = None;
    if !extras.netns_poll_seconds.is_empty() {
        w.family(
            "bindwatch_netns_poll_duration_seconds",
            "gauge",
            "Time of the last poll of each network namespace (--netns all).",
        );
        for (name, secs) in &extras.netns_poll_seconds {
            w.sample(
                "bindwatch_netns_poll_duration_seconds",
                &[("netns", name)],
                *secs,
            );
        }
    }
    w.finish(&mut out);
    selfm.render(&mut out);
    out
}

fn render_snapshot(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_view_timestamp_seconds",
        "gauge",
        "When each view was last read: listeners (every poll) and table (the walk of the whole TCP table: counts, sockets on ports of interest, ephemeral buckets; spaced out by --poll.cpu-budget).",
    );
    w.sample(
        "bindwatch_view_timestamp_seconds",
        &[("view", "listeners")],
        unix_seconds(s.taken_at),
    );
    w.sample(
        "bindwatch_view_timestamp_seconds",
        &[("view", "table")],
        unix_seconds(s.table_taken_at),
    );
    w.family(
        "bindwatch_source_active",
        "gauge",
        "1 for the socket source in use (netlink sock_diag, or the /proc/net fallback).",
    );
    for k in ["netlink", "procfs"] {
        w.sample(
            "bindwatch_source_active",
            &[("source", k)],
            b(s.source.as_str() == k),
        );
    }
    w.family(
        "bindwatch_capability",
        "gauge",
        "1 when bindwatch really achieved a feature: owners (no /proc/PID/fd listing or link was refused in the last scan), socket_flags (pidfd_getfd of owners' sockets).",
    );
    w.sample(
        "bindwatch_capability",
        &[("capability", "owners")],
        b(s.capabilities.owners),
    );
    w.sample(
        "bindwatch_capability",
        &[("capability", "socket_flags")],
        b(s.capabilities.socket_flags),
    );

    w.family(
        "bindwatch_sockets",
        "gauge",
        "Sockets in the network namespace by protocol, family and state.",
    );
    for ((p, f, st), n) in socket_counts(&s.counts) {
        w.sample(
            "bindwatch_sockets",
            &[
                ("protocol", p.as_str()),
                ("family", f.as_str()),
                ("state", st),
            ],
            n as f64,
        );
    }

    w.family(
        "bindwatch_listener_info",
        "gauge",
        "One series per listening endpoint with its owner and flags (true, false or unknown).",
    );
    let mut seen = BTreeSet::new();
    for l in &s.listeners {
        let sock = &l.socket;
        let addr = sock.local.ip().to_string();
        let port = sock.local.port().to_string();
        let (process, user) = match &l.owner {
            Some(o) => (o.process.as_str(), o.user.as_str()),
            None => ("unknown", "unknown"),
        };
        let labels = [
            ("protocol", sock.protocol.as_str()),
            ("family", sock.family().as_str()),
            ("address", addr.as_str()),
            ("port", port.as_str()),
            ("process", process),
            ("user", user),
            ("reuseaddr", sock.flags.reuseaddr.as_str()),
            ("reuseport", sock.flags.reuseport.as_str()),
        ];
        // SO_REUSEPORT groups have several sockets per endpoint: one series.
        let key: Vec<String> = labels.iter().map(|(_, v)| v.to_string()).collect();
        if seen.insert(key) {
            w.sample("bindwatch_listener_info", &labels, 1.0);
        }
    }

    w.family(
        "bindwatch_port_sockets",
        "gauge",
        "Sockets whose local port is a port of interest (listening, recently listening or watched), by state.",
    );
    let mut per_port: BTreeMap<(Protocol, u16, &str), u64> = BTreeMap::new();
    for sock in &s.port_sockets {
        *per_port
            .entry((sock.protocol, sock.local.port(), sock.state_label()))
            .or_default() += u64::from(sock.count);
    }
    for ((p, port, st), n) in &per_port {
        let port = port.to_string();
        w.sample(
            "bindwatch_port_sockets",
            &[("protocol", p.as_str()), ("port", &port), ("state", st)],
            *n as f64,
        );
    }

    render_rebind(w, s);

    w.family(
        "bindwatch_port_in_ephemeral_range",
        "gauge",
        "1 when a listening or watched port lies inside net.ipv4.ip_local_port_range and is not reserved.",
    );
    for (p, port) in &s.ports {
        let ps = port.to_string();
        w.sample(
            "bindwatch_port_in_ephemeral_range",
            &[("protocol", p.as_str()), ("port", &ps)],
            b(s.allocation.is_ephemeral(*port)),
        );
    }
    w.family(
        "bindwatch_watched_port_status",
        "gauge",
        "State set per watched service (--config.file): 1 on the current status among ok, missing, foreign_owner, blocked, stolen.",
    );
    for ws in &s.watched {
        let port = ws.port.to_string();
        for st in crate::conflict::Status::ALL {
            w.sample(
                "bindwatch_watched_port_status",
                &[
                    ("name", &ws.name),
                    ("protocol", ws.protocol.as_str()),
                    ("port", &port),
                    ("status", st.as_str()),
                ],
                b(ws.status == st),
            );
        }
    }
    w.family(
        "bindwatch_ephemeral_ports_used_ratio",
        "gauge",
        "The fullest source-address -> destination buckets (rank 1 = fullest) as a fraction of the usable ephemeral port range.",
    );
    let size = f64::from(s.allocation.size().max(1));
    for (i, (_, n)) in s.ephemeral_top.iter().enumerate() {
        let rank = (i + 1).to_string();
        w.sample(
            "bindwatch_ephemeral_ports_used_ratio",
            &[("rank", &rank)],
            f64::from(*n) / size,
        );
    }
    w.family(
        "bindwatch_ephemeral_port_range_size",
        "gauge",
        "Ports in net.ipv4.ip_local_port_range minus ip_local_reserved_ports.",
    );
    w.sample("bindwatch_ephemeral_port_range_size", &[], size);
    w.family(
        "bindwatch_ports_dropped_total",
        "counter",
        "Ports of interest left out of per-port series by --ports.max.",
    );
    w.sample(
        "bindwatch_ports_dropped_total",
        &[],
        s.ports_dropped_total as f64,
    );
}

fn render_rebind(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_rebind_blocked",
        "gauge",
        "1 when a restart of the listener on address:port now would fail with EADDRINUSE, 0 when it would succeed; by whether the new socket sets SO_REUSEADDR. Absent when undecided.",
    );
    let label_sets: Vec<(String, String)> = s
        .risks
        .iter()
        .map(|r| (r.endpoint.address.to_string(), r.endpoint.port.to_string()))
        .collect();
    for (r, (addr, port)) in s.risks.iter().zip(&label_sets) {
        for (reuse, j) in [("false", &r.without_reuseaddr), ("true", &r.with_reuseaddr)] {
            if j.verdict != Verdict::Unknown {
                w.sample(
                    "bindwatch_rebind_blocked",
                    &[
                        ("protocol", r.endpoint.protocol.as_str()),
                        ("address", addr),
                        ("port", port),
                        ("reuseaddr", reuse),
                    ],
                    b(j.verdict == Verdict::Blocked),
                );
            }
        }
    }
    w.family(
        "bindwatch_rebind_undecided",
        "gauge",
        "1 when whether a restart would fail depends on a socket flag nobody could read (see bindwatch check).",
    );
    for (r, (addr, port)) in s.risks.iter().zip(&label_sets) {
        for (reuse, j) in [("false", &r.without_reuseaddr), ("true", &r.with_reuseaddr)] {
            w.sample(
                "bindwatch_rebind_undecided",
                &[
                    ("protocol", r.endpoint.protocol.as_str()),
                    ("address", addr),
                    ("port", port),
                    ("reuseaddr", reuse),
                ],
                b(j.verdict == Verdict::Unknown),
            );
        }
    }
    w.family(
        "bindwatch_rebind_clear_seconds",
        "gauge",
        "Seconds until every expiring socket (TIME_WAIT, orphans) that blocks a restart with the listener's own SO_REUSEADDR is gone.",
    );
    for (r, (addr, port)) in s.risks.iter().zip(&label_sets) {
        if let Some(secs) = realistic(r).clear_seconds() {
            w.sample(
                "bindwatch_rebind_clear_seconds",
                &[
                    ("protocol", r.endpoint.protocol.as_str()),
                    ("address", addr),
                    ("port", port),
                ],
                secs,
            );
        }
    }
    w.family(
        "bindwatch_rebind_blocking_sockets",
        "gauge",
        "Sockets that would block a restart of the port's listener with its own SO_REUSEADDR, by state.",
    );
    // A socket can block the restarts of several endpoints on one port: count it once.
    type Blocker = (
        std::net::SocketAddr,
        std::net::SocketAddr,
        &'static str,
        u64,
        u32,
    );
    let mut blockers: BTreeMap<(Protocol, u16), BTreeSet<Blocker>> = BTreeMap::new();
    for r in &s.risks {
        let set = blockers
            .entry((r.endpoint.protocol, r.endpoint.port))
            .or_default();
        for f in realistic(r).blocking() {
            let sk = &f.socket;
            set.insert((sk.local, sk.remote, sk.state_label(), sk.inode, sk.count));
        }
    }
    for ((p, port), set) in &blockers {
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, _, st, _, count) in set {
            *by_state.entry(st).or_default() += u64::from(*count);
        }
        let ps = port.to_string();
        for (st, n) in by_state {
            w.sample(
                "bindwatch_rebind_blocking_sockets",
                &[("protocol", p.as_str()), ("port", &ps), ("state", st)],
                n as f64,
            );
        }
    }
}

/// Seconds since the Unix epoch of a snapshot.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
