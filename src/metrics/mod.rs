//! Every metric name and help text, and the rendering of a [`Snapshot`] into the
//! Prometheus text format 0.0.4 and OpenMetrics 1.0.0.
//!
//! Snapshot metrics are rendered here by a small writer rather than through
//! `prometheus` crate vectors: a `GaugeVec` keeps every label set it ever saw, so a
//! closed port would linger as a stale series; rendering from the immutable
//! snapshot makes series appear and disappear with the sockets. The `prometheus`
//! crate is used for what it does best: bindwatch's own counters and histogram.

//!
//! - this file: bindwatch's own instruments, the poller's extras, the entry points;
//! - `http`: the HTTP server's own instruments, rendered by the server at scrape time;
//! - `writer`: the exposition formats (headers, escaping, values, histograms);
//! - `snapshot`, `rebind`, `events`: the families of a snapshot, of its rebind
//!   verdicts and of the failure tracer;
//! - `tracking`: the bpf source's reuse of its bound-only dump.

use std::time::UNIX_EPOCH;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::model::{Snapshot, SourceKind};

mod events;
mod http;
mod rebind;
mod snapshot;
mod tracking;
mod unix;
mod writer;

pub use http::HttpMetrics;
use writer::Writer;

/// The line that ends an OpenMetrics exposition. The poll's exposition is published
/// without it: the server's own families follow at scrape time, then this line.
pub const OPENMETRICS_EOF: &str = "# EOF\n";

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
        // Every source starts at 0, so `increase()` sees the first error.
        for s in SourceKind::ALL {
            poll_errors.with_label_values(&[s.as_str()]);
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

/// One rendering of a poll, in both formats. Neither holds the server's own families
/// nor OpenMetrics' closing `# EOF`: a scrape appends them ([`HttpMetrics::tail`]).
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub text: String,
    pub openmetrics: String,
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
    /// The failure tracer: `None` when none runs here, `Some(None)` when it could not
    /// attach (capability 0, failure metrics absent), else its counters.
    pub bind_events: Option<Option<crate::model::Counters>>,
    /// Whether the agent stopped writing `--state.file`; `None` without one.
    pub state_file_stopped: Option<bool>,
    /// The bpf source's bound-only tracking; `None` where no table tracks.
    pub bound_tracking: Option<crate::model::BoundTracking>,
}

/// Renders the snapshots (one per watched network namespace; the name is `None`
/// without `--netns all`) and bindwatch's own metrics in the text format.
pub fn render(snaps: &[(Option<&str>, &Snapshot)], selfm: &SelfMetrics, extras: &Extras) -> String {
    let w = collect(snaps, selfm, extras);
    let mut out = String::with_capacity(16 * 1024);
    w.finish(Format::Text, &mut out);
    out
}

/// Renders a poll once in both formats (what the poller publishes): the sample lines
/// are built once, OpenMetrics only adds its own headers. Without `# EOF`, which the
/// server writes after its own families.
pub fn render_all(
    snaps: &[(Option<&str>, &Snapshot)],
    selfm: &SelfMetrics,
    extras: &Extras,
) -> Exposition {
    let w = collect(snaps, selfm, extras);
    let mut text = String::with_capacity(16 * 1024);
    w.finish(Format::Text, &mut text);
    let mut openmetrics = String::with_capacity(text.len() + 1024);
    w.families(Format::OpenMetrics, &mut openmetrics);
    Exposition { text, openmetrics }
}

/// Every family, in exposition order: bindwatch's own state, each snapshot (with
/// its `netns` label under `--netns all`), the failure tracer, the namespaces'
/// poll times, and the `prometheus` registry.
fn collect(snaps: &[(Option<&str>, &Snapshot)], selfm: &SelfMetrics, extras: &Extras) -> Writer {
    let mut w = Writer::default();
    render_own(&mut w, extras);
    for (netns, s) in snaps {
        w.netns = netns.map(str::to_string);
        snapshot::render_snapshot(&mut w, s);
    }
    w.netns = None;
    if let Some(ev) = &extras.bind_events {
        events::render_events(&mut w, ev.as_ref());
    }
    if let Some(t) = &extras.bound_tracking {
        tracking::render_tracking(&mut w, t);
    }
    render_netns_durations(&mut w, extras);
    w.gathered(&selfm.gather());
    w
}

/// Build info, the last poll, CPU and its budget, malformed lines, the config's
/// reload result and the state file.
fn render_own(w: &mut Writer, extras: &Extras) {
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
    if let Some(stopped) = extras.state_file_stopped {
        w.family(
            "bindwatch_state_file_stopped",
            "gauge",
            "1 when the agent stopped writing --state.file: something else than its own regular file appeared at the path, or another live agent writes it.",
        );
        w.sample("bindwatch_state_file_stopped", &[], b(stopped));
    }
}

/// `bindwatch_netns_poll_duration_seconds`, with `--netns all`.
fn render_netns_durations(w: &mut Writer, extras: &Extras) {
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
}

/// Seconds since the Unix epoch of a snapshot.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
