//! Every metric name and help text, and the rendering of a [`Snapshot`] into the
//! Prometheus text format 0.0.4 and OpenMetrics 1.0.0.
//!
//! Snapshot metrics are rendered here by a small writer rather than through
//! `prometheus` crate vectors: a `GaugeVec` keeps every label set it ever saw, so a
//! closed port would linger as a stale series; rendering from the immutable
//! snapshot makes series appear and disappear with the sockets. The `prometheus`
//! crate is used for what it does best: bindwatch's own counters and histogram.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::model::{Protocol, Snapshot, SourceKind, StateCounts, Verdict};

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

    /// Adds the `process_*` families of bindwatch itself (CPU seconds, resident and
    /// virtual memory, open and max fds, start time, threads), unless
    /// `--web.disable-exporter-metrics`.
    ///
    /// The `prometheus` crate's collector is used rather than a reader of our own: it
    /// reads exactly this process's `/proc/<pid>/{stat,fd,limits}` through `procfs`
    /// (already a dependency), with the names and meanings client_golang gives every
    /// Go exporter, so the usual exporter dashboards work unchanged. It is read when
    /// the poller gathers (once per poll), never by a scrape.
    pub fn with_process_metrics(self) -> Self {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = self.registry.register(Box::new(pc)) {
            tracing::warn!(error = %e, "cannot register the process_* metrics");
        }
        self
    }

    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The exposition formats a scrape can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4, the default.
    Text,
    /// OpenMetrics 1.0.0 (what Prometheus asks for first).
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` a response in this format carries.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::OpenMetrics => "openmetrics",
        }
    }
}

/// One rendering of everything, in both formats.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub text: String,
    pub openmetrics: String,
}

/// The base unit a family's name ends in, following the Prometheus naming guide
/// (`_seconds`, `_bytes`, `_ratio`, before a counter's `_total`); OpenMetrics
/// declares it in `# UNIT`, which must then be the name's suffix.
fn unit_of(family: &str) -> Option<&'static str> {
    ["seconds", "bytes", "ratio"].into_iter().find(|u| {
        family.len() > u.len() + 1
            && family.ends_with(u)
            && family[..family.len() - u.len()].ends_with('_')
    })
}

/// A family's name, type and help, and its sample lines.
struct Family {
    name: String,
    kind: &'static str,
    help: String,
    /// Sample lines, the same in both formats.
    body: String,
    /// Sample lines where OpenMetrics differs (a histogram's `le` values).
    body_om: Option<String>,
}

impl Family {
    fn write(&self, format: Format, out: &mut String) {
        let name = self.name.as_str();
        match format {
            Format::Text => {
                let _ = write!(out, "# HELP {name} ");
                escape_help(&self.help, false, out);
                let _ = write!(out, "\n# TYPE {name} {}\n", self.kind);
                out.push_str(&self.body);
            }
            Format::OpenMetrics => {
                // A counter family is named without `_total`; its samples keep it. A
                // counter whose samples lack `_total` cannot be one in OpenMetrics:
                // it is declared `unknown` rather than mislabelled.
                let (family, kind) = match (self.kind, name.strip_suffix("_total")) {
                    ("counter", Some(base)) => (base, "counter"),
                    ("counter", None) | ("untyped", _) => (name, "unknown"),
                    (kind, _) => (name, kind),
                };
                let _ = write!(out, "# HELP {family} ");
                escape_help(&self.help, true, out);
                let _ = write!(out, "\n# TYPE {family} {kind}\n");
                if kind != "unknown" {
                    if let Some(unit) = unit_of(family) {
                        let _ = writeln!(out, "# UNIT {family} {unit}");
                    }
                }
                out.push_str(self.body_om.as_ref().unwrap_or(&self.body));
            }
        }
    }
}

/// HELP text: the text format escapes backslash and newline, OpenMetrics also `"`.
fn escape_help(help: &str, quote: bool, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// A sample value as both formats spell it (`+Inf`, `-Inf`, `NaN`).
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A histogram bound as `le`: OpenMetrics wants canonical floats (`1.0`, as Go's
/// client writes them), the text format has always had `1`.
fn write_le(out: &mut String, v: f64, format: Format) {
    if format == Format::OpenMetrics && v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{v:.1}");
    } else {
        write_value(out, v);
    }
}

fn write_labels<'a>(out: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut first = true;
    for (k, v) in labels {
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
}

/// Collects families for both exposition formats, escaping label values.
///
/// Samples are grouped per family whatever order they are written in (the formats
/// want each family in one block), so snapshots of several network namespaces can
/// be rendered one after the other, each with its `netns` label. Sample lines are
/// written once and shared by both formats; only the headers differ.
#[derive(Default)]
struct Writer {
    order: Vec<String>,
    families: std::collections::HashMap<String, Family>,
    current: String,
    /// `netns` label value added first to every sample (`--netns all`).
    netns: Option<String>,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &'static str, help: &str) {
        self.current.clear();
        self.current.push_str(name);
        if !self.families.contains_key(name) {
            self.order.push(name.to_string());
            self.families.insert(
                name.to_string(),
                Family {
                    name: name.to_string(),
                    kind,
                    help: help.to_string(),
                    body: String::new(),
                    body_om: None,
                },
            );
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let netns = self.netns.as_deref();
        let Some(f) = self.families.get_mut(&self.current) else {
            return;
        };
        let out = &mut f.body;
        out.push_str(name);
        let all = netns
            .map(|n| ("netns", n))
            .into_iter()
            .chain(labels.iter().copied());
        write_labels(out, all);
        out.push(' ');
        write_value(out, value);
        out.push('\n');
    }

    /// Adds what a `prometheus` registry gathered (bindwatch's own instruments).
    fn gathered(&mut self, families: &[prometheus::proto::MetricFamily]) {
        use prometheus::proto::MetricType;
        for mf in families {
            let name = mf.name();
            let kind = match mf.get_field_type() {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                // bindwatch registers no summaries or untyped metrics.
                MetricType::SUMMARY | MetricType::UNTYPED => continue,
            };
            self.family(name, kind, mf.help());
            for m in mf.get_metric() {
                let labels: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                match kind {
                    "counter" => self.sample(name, &labels, m.get_counter().get_value()),
                    "gauge" => self.sample(name, &labels, m.get_gauge().get_value()),
                    _ => self.histogram(name, &labels, m.get_histogram()),
                }
            }
        }
    }

    /// A histogram's `_bucket` (with `+Inf`), `_sum` and `_count` lines, per format.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &prometheus::proto::Histogram) {
        let netns = self.netns.clone();
        let Some(f) = self.families.get_mut(&self.current) else {
            return;
        };
        let count = h.get_sample_count();
        let mut om = f.body_om.take().unwrap_or_default();
        for (format, out) in [(Format::Text, &mut f.body), (Format::OpenMetrics, &mut om)] {
            let base = || {
                netns
                    .as_deref()
                    .map(|n| ("netns", n))
                    .into_iter()
                    .chain(labels.iter().copied())
            };
            let mut bounds: Vec<(f64, u64)> = h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect();
            if bounds.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
                bounds.push((f64::INFINITY, count));
            }
            for (le, n) in bounds {
                let mut le_s = String::new();
                write_le(&mut le_s, le, format);
                let _ = write!(out, "{name}_bucket");
                write_labels(out, base().chain(std::iter::once(("le", le_s.as_str()))));
                let _ = writeln!(out, " {n}");
            }
            let _ = write!(out, "{name}_sum");
            write_labels(out, base());
            out.push(' ');
            write_value(out, h.get_sample_sum());
            let _ = write!(out, "\n{name}_count");
            write_labels(out, base());
            let _ = writeln!(out, " {count}");
        }
        f.body_om = Some(om);
    }

    fn finish(&self, format: Format, out: &mut String) {
        for name in &self.order {
            if let Some(f) = self.families.get(name) {
                f.write(format, out);
            }
        }
        if format == Format::OpenMetrics {
            out.push_str("# EOF\n");
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
    /// Connections refused by `--web.max-connections` since start.
    pub http_connections_refused_total: u64,
    /// Whether the last (re)load of `--web.config.file` worked; `None` without a file.
    pub web_config_reload_ok: Option<bool>,
    /// The failure tracer: `None` when none runs here, `Some(None)` when it could not
    /// attach (capability 0, failure metrics absent), else its counters.
    pub bind_events: Option<Option<crate::model::Counters>>,
}

/// What the HTTP server counts, for the poller to render (it renders every poll; the
/// server only bumps atomics).
#[derive(Debug, Default)]
pub struct HttpStats {
    pub connections_refused: std::sync::atomic::AtomicU64,
    /// 0: no `--web.config.file`; 1: its last (re)load failed; 2: it worked.
    web_config: std::sync::atomic::AtomicU8,
}

impl HttpStats {
    pub fn set_web_config_ok(&self, ok: bool) {
        self.web_config
            .store(if ok { 2 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn web_config_ok(&self) -> Option<bool> {
        match self.web_config.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            v => Some(v == 2),
        }
    }
}

/// Renders the snapshots (one per watched network namespace; the name is `None`
/// without `--netns all`) and bindwatch's own metrics in the text format.
pub fn render(snaps: &[(Option<&str>, &Snapshot)], selfm: &SelfMetrics, extras: &Extras) -> String {
    let w = collect(snaps, selfm, extras);
    let mut out = String::with_capacity(16 * 1024);
    w.finish(Format::Text, &mut out);
    out
}

/// Renders everything once in both formats (what the poller publishes): the sample
/// lines are built once, OpenMetrics only adds its own headers and `# EOF`.
pub fn render_all(
    snaps: &[(Option<&str>, &Snapshot)],
    selfm: &SelfMetrics,
    extras: &Extras,
) -> Exposition {
    let w = collect(snaps, selfm, extras);
    let mut text = String::with_capacity(16 * 1024);
    w.finish(Format::Text, &mut text);
    let mut openmetrics = String::with_capacity(text.len() + 1024);
    w.finish(Format::OpenMetrics, &mut openmetrics);
    Exposition { text, openmetrics }
}

fn collect(snaps: &[(Option<&str>, &Snapshot)], selfm: &SelfMetrics, extras: &Extras) -> Writer {
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
    if let Some(ok) = extras.web_config_reload_ok {
        w.family(
            "bindwatch_web_config_last_reload_successful",
            "gauge",
            "1 when the last load of --web.config.file (or of a file it names) succeeded; 0 while an older web config stays active after a failed reload.",
        );
        w.sample("bindwatch_web_config_last_reload_successful", &[], b(ok));
    }
    w.family(
        "bindwatch_http_connections_refused_total",
        "counter",
        "HTTP connections closed at once because --web.max-connections were open.",
    );
    w.sample(
        "bindwatch_http_connections_refused_total",
        &[],
        extras.http_connections_refused_total as f64,
    );
    for (netns, s) in snaps {
        w.netns = netns.map(str::to_string);
        render_snapshot(&mut w, s);
    }
    w.netns = None;
    if let Some(ev) = &extras.bind_events {
        render_events(&mut w, ev.as_ref());
    }
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
    w.gathered(&selfm.gather());
    w
}

/// Counts of one protocol and family, with every known state present (0 if none).
fn state_labels(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Tcp => &[
            "established",
            "syn_sent",
            "syn_recv",
            "fin_wait1",
            "fin_wait2",
            "time_wait",
            "close",
            "close_wait",
            "last_ack",
            "listen",
            "closing",
            "new_syn_recv",
            "bound_inactive",
        ],
        Protocol::Udp => &crate::model::UDP_STATE_LABELS,
    }
}

/// `bindwatch_sockets` values: (protocol, family, state label) -> count, with zeros.
fn socket_counts(
    counts: &StateCounts,
) -> BTreeMap<(Protocol, crate::model::Family, &'static str), u64> {
    let mut out = BTreeMap::new();
    for p in Protocol::ALL {
        for f in crate::model::Family::ALL {
            for l in state_labels(p) {
                out.insert((p, f, *l), 0);
            }
        }
    }
    for (&(p, f, s), &n) in counts {
        *out.entry((p, f, s.label(p))).or_default() += n;
    }
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
        "1 for the socket source in use (the bpf socket iterator, netlink sock_diag, or the /proc/net fallback).",
    );
    for k in ["bpf", "netlink", "procfs"] {
        w.sample(
            "bindwatch_source_active",
            &[("source", k)],
            b(s.source.as_str() == k),
        );
    }
    w.family(
        "bindwatch_capability",
        "gauge",
        "1 when bindwatch really achieved a feature: owners (no /proc/PID/fd listing or link was refused in the last scan), socket_flags (pidfd_getfd of owners' sockets), bpf (the socket iterator is the source in use).",
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
    w.sample(
        "bindwatch_capability",
        &[("capability", "bpf")],
        b(s.source == SourceKind::Bpf),
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
    w.family(
        "bindwatch_memory_unexplained_leftovers_total",
        "counter",
        "Leftovers (TIME_WAIT, FIN_WAIT2) on remembered ports that no remembered listener explains: a listener may have come and gone between polls. Their flags stay unknown.",
    );
    w.sample(
        "bindwatch_memory_unexplained_leftovers_total",
        &[],
        s.memory_unexplained_total as f64,
    );
}

/// The failure tracer's capability and, when it runs, its counters. Series carry a
/// `netns` label under `--netns all` (in the key), none otherwise.
fn render_events(w: &mut Writer, ev: Option<&crate::model::Counters>) {
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
        if let Some(secs) = r.restart.clear_seconds() {
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
        for f in r.restart.blocking() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_from_name_suffixes() {
        for (name, unit) in [
            ("bindwatch_poll_duration_seconds", Some("seconds")),
            ("bindwatch_poll_cpu_seconds", Some("seconds")),
            ("process_resident_memory_bytes", Some("bytes")),
            ("bindwatch_ephemeral_ports_used_ratio", Some("ratio")),
            ("bindwatch_sockets", None),
            ("seconds", None),
            ("bindwatch_xseconds", None),
            ("process_open_fds", None),
        ] {
            assert_eq!(unit_of(name), unit, "{name}");
        }
    }

    fn two_formats(w: &Writer) -> (String, String) {
        let (mut t, mut o) = (String::new(), String::new());
        w.finish(Format::Text, &mut t);
        w.finish(Format::OpenMetrics, &mut o);
        (t, o)
    }

    #[test]
    fn headers_per_format_samples_shared() {
        let mut w = Writer::default();
        w.family(
            "x_errors_total",
            "counter",
            "Errors \"quoted\", a \\ and\na newline.",
        );
        w.sample("x_errors_total", &[("k", "a\"b\\c\nd")], 3.0);
        w.family("x_age_seconds", "gauge", "Age.");
        w.sample("x_age_seconds", &[], f64::INFINITY);
        w.sample("x_age_seconds", &[("k", "n")], f64::NAN);
        w.family("x_odd", "counter", "A counter without _total.");
        w.sample("x_odd", &[], 1.0);
        let (t, o) = two_formats(&w);
        assert_eq!(
            t,
            "# HELP x_errors_total Errors \"quoted\", a \\\\ and\\na newline.\n\
             # TYPE x_errors_total counter\n\
             x_errors_total{k=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP x_age_seconds Age.\n# TYPE x_age_seconds gauge\n\
             x_age_seconds +Inf\nx_age_seconds{k=\"n\"} NaN\n\
             # HELP x_odd A counter without _total.\n# TYPE x_odd counter\nx_odd 1\n"
        );
        assert_eq!(
            o,
            "# HELP x_errors Errors \\\"quoted\\\", a \\\\ and\\na newline.\n\
             # TYPE x_errors counter\n\
             x_errors_total{k=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP x_age_seconds Age.\n# TYPE x_age_seconds gauge\n# UNIT x_age_seconds seconds\n\
             x_age_seconds +Inf\nx_age_seconds{k=\"n\"} NaN\n\
             # HELP x_odd A counter without _total.\n# TYPE x_odd unknown\nx_odd 1\n\
             # EOF\n"
        );
    }

    #[test]
    fn histograms_in_both_formats() {
        let selfm = SelfMetrics::new();
        let h = selfm.poll_duration.with_label_values(&["netlink"]);
        h.observe(0.003);
        h.observe(2.0);
        let mut w = Writer::default();
        w.gathered(&selfm.gather());
        let (t, o) = two_formats(&w);
        let name = "bindwatch_poll_duration_seconds";
        for (text, one, inf) in [
            (&t, "le=\"1\"", "le=\"+Inf\""),
            (&o, "le=\"1.0\"", "le=\"+Inf\""),
        ] {
            assert!(
                text.contains(&format!("{name}_bucket{{source=\"netlink\",{one}}} 1\n")),
                "{text}"
            );
            assert!(text.contains(&format!("{name}_bucket{{source=\"netlink\",{inf}}} 2\n")));
            assert!(text.contains(&format!("{name}_sum{{source=\"netlink\"}} 2.003\n")));
            assert!(text.contains(&format!("{name}_count{{source=\"netlink\"}} 2\n")));
        }
        assert!(o.contains(&format!("# TYPE {name} histogram\n# UNIT {name} seconds\n")));
        assert!(o.contains("# TYPE bindwatch_poll_errors counter\n"));
        assert!(o.contains("bindwatch_poll_errors_total{source=\"netlink\"} 0\n"));
        assert!(t.contains("# TYPE bindwatch_poll_errors_total counter\n"));
    }
}
