//! One poll of the target: the listener dump (and, when the CPU budget allows, the
//! table walk) of each namespace, unix sockets, charged to the budget, into the
//! loop's state; then rendered and published (`render`).

use std::sync::Arc;
use std::time::Instant;

use super::render;
use super::{ConfigSource, CpuBudget, EarlyPolls, Latest, StateSink, Target};
use crate::collect::Collector;
use crate::metrics::SelfMetrics;
use crate::model::{Snapshot, SourceKind};
use crate::netns::NetnsCollectors;

/// What the loop keeps from one poll to the next.
pub(super) struct LoopState {
    pub(super) early: EarlyPolls,
    pub(super) last_success: Option<Instant>,
    /// The last good snapshots, with their namespace name under `--netns all`.
    pub(super) last: Vec<(Option<String>, Arc<Snapshot>)>,
    pub(super) last_error: Option<String>,
    pub(super) config: Option<ConfigSource>,
    /// The missing capability last logged.
    pub(super) missing_caps_logged: Option<&'static str>,
    pub(super) state_sink: Option<StateSink>,
    pub(super) netns_poll_seconds: Vec<(String, f64)>,
    pub(super) budget: CpuBudget,
    pub(super) last_poll: Option<Instant>,
    pub(super) poll_cpu_total: f64,
    /// The failure tracer, when one was started: each poll is handed to it before
    /// publishing, its metrics are rendered with the poll.
    pub(super) events: Option<Arc<crate::events::Events>>,
}

impl LoopState {
    pub(super) fn new(
        config: Option<ConfigSource>,
        state_sink: Option<StateSink>,
        budget: CpuBudget,
        events: Option<Arc<crate::events::Events>>,
    ) -> Self {
        LoopState {
            early: EarlyPolls::default(),
            last_success: None,
            last: Vec::new(),
            last_error: None,
            config,
            missing_caps_logged: None,
            state_sink,
            netns_poll_seconds: Vec::new(),
            budget,
            last_poll: None,
            poll_cpu_total: 0.0,
            events,
        }
    }

    /// One warning naming what is missing, again only when that changes (not every poll).
    pub(super) fn log_missing_caps(&mut self, snap: &Snapshot) {
        let caps = snap.capabilities;
        if caps.owners && caps.socket_flags {
            return;
        }
        let missing = match caps.owners_denied {
            Some(d) if !caps.owners => d.missing(),
            _ if !caps.owners => "CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE",
            _ => {
                "CAP_SYS_PTRACE (pidfd_getfd of another process's socket needs PTRACE_MODE_ATTACH)"
            }
        };
        if self.missing_caps_logged == Some(missing) {
            return;
        }
        self.missing_caps_logged = Some(missing);
        tracing::warn!(
            owners = caps.owners,
            socket_flags = caps.socket_flags,
            "cannot read every socket's owner or flags; they are reported as unknown. Grant \
             {missing}: AmbientCapabilities= in the systemd unit, securityContext.capabilities.add in Kubernetes"
        );
    }

    pub(super) fn failed(&mut self, msg: String) {
        // Log a failure when it starts or changes, not every interval.
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::error!(error = %msg, "poll failed; serving the last good snapshot");
        }
        self.last_error = Some(msg);
    }

    pub(super) fn succeeded(&mut self) {
        if self.last_error.take().is_some() {
            tracing::info!("polling recovered");
        }
        self.last_success = Some(Instant::now());
    }
}

/// One poll of the target, charged to the CPU budget, rendered once and published.
pub(super) fn poll_and_publish(
    target: &mut Target,
    selfm: &SelfMetrics,
    latest: &Latest,
    st: &mut LoopState,
) {
    let span = tracing::debug_span!("poll");
    let _g = span.enter();
    let start = Instant::now();
    let services: Vec<crate::config::Service> = st
        .config
        .as_ref()
        .map_or(Vec::new(), |c| c.current.services.clone());
    let cpu_start = crate::collect::thread_cpu_seconds();
    let elapsed = st.last_poll.map_or(0.0, |t| t.elapsed().as_secs_f64());
    st.last_poll = Some(start);
    let walk = st.budget.tick(elapsed);
    let bad_lines = match target {
        Target::Host(c) => poll_host(c, &services, walk, start, selfm, st),
        Target::AllNetns(all) => {
            poll_all_netns(all, &services, start, selfm, st);
            0
        }
    };
    // Unix sockets: counts and watched unix services, into the host snapshot.
    let (o, resolver, others) = match target {
        Target::Host(c) => (c.options(), c.owner_resolver(), Vec::new()),
        Target::AllNetns(all) => (all.options(), all.owner_resolver(), all.namespaces()),
    };
    let unix_services = st
        .config
        .as_ref()
        .map_or(&[][..], |c| &c.current.unix_services[..]);
    crate::unixprobe::fill_snapshots(
        &crate::unixprobe::ProbeOptions::new(&o.procfs, &o.rootfs),
        &resolver,
        unix_services,
        &mut st.last,
        &others,
    );
    let cpu = (crate::collect::thread_cpu_seconds() - cpu_start).max(0.0);
    let walk_cpu = match target {
        Target::Host(c) => c.last_walk_cpu.take(),
        Target::AllNetns(_) => walk.then_some(cpu),
    };
    st.budget.charge(cpu, walk_cpu);
    st.poll_cpu_total += cpu;
    let extras = render::extras(st, bad_lines);
    render::publish(st, selfm, latest, &extras);
}

/// Polls the namespace bindwatch runs in; returns the procfs source's malformed lines.
fn poll_host(
    c: &mut Collector,
    services: &[crate::config::Service],
    walk: bool,
    start: Instant,
    selfm: &SelfMetrics,
    st: &mut LoopState,
) -> u64 {
    let source = c.table().kind().as_str();
    match c.poll_views(services, &[], walk) {
        Ok(snap) => {
            st.log_missing_caps(&snap);
            selfm
                .poll_duration
                .with_label_values(&[snap.source.as_str()])
                .observe(start.elapsed().as_secs_f64());
            tracing::debug!(
                sockets = snap.counts.values().sum::<u64>(),
                listeners = snap.listeners.len(),
                ms = start.elapsed().as_millis() as u64,
                "poll done"
            );
            st.succeeded();
            st.last = vec![(None, Arc::new(snap))];
            if let Some(sink) = st.state_sink.as_mut() {
                sink.write(c.memory_entries());
            }
        }
        Err(e) => {
            selfm.poll_errors.with_label_values(&[source]).inc();
            st.failed(e.to_string());
        }
    }
    c.table().bad_lines
}

/// Polls every namespace (`--netns all`); a namespace that fails is logged and left out.
fn poll_all_netns(
    all: &mut NetnsCollectors,
    services: &[crate::config::Service],
    start: Instant,
    selfm: &SelfMetrics,
    st: &mut LoopState,
) {
    let r = all.poll(services);
    for (name, kind, e) in &r.errors {
        // A namespace where no source could be opened counts as netlink, the source
        // every other one falls back to.
        let kind = kind.unwrap_or(SourceKind::Netlink);
        selfm.poll_errors.with_label_values(&[kind.as_str()]).inc();
        tracing::warn!(netns = %name, error = %e, "polling a network namespace failed");
    }
    if let Some((_, snap)) = r.snapshots.iter().find(|(n, _)| n == "host") {
        st.log_missing_caps(snap);
    }
    if r.snapshots.is_empty() {
        st.failed("no network namespace could be polled".to_string());
    } else {
        selfm
            .poll_duration
            .with_label_values(&[r.snapshots[0].1.source.as_str()])
            .observe(start.elapsed().as_secs_f64());
        st.succeeded();
        st.last = r
            .snapshots
            .into_iter()
            .map(|(n, s)| (Some(n), Arc::new(s)))
            .collect();
        st.netns_poll_seconds = r.durations;
    }
}
