//! The polling loop: every `--poll.interval` it reads the kernel into a snapshot,
//! renders it once, and publishes the bytes atomically. A scrape only copies the
//! last published bytes, so it never waits on the kernel and its cost does not
//! grow with the socket table.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use std::path::PathBuf;

use crate::collect::Collector;
use crate::config::{self, Config};
use crate::metrics::{self, Extras, SelfMetrics};
use crate::model::{Snapshot, SourceKind};
use crate::netns::NetnsCollectors;
pub use crate::publish::{Control, Latest, Published, ReloadReply};

mod sink;
pub use sink::StateSink;

/// The watched-services file and its last good contents.
pub struct ConfigSource {
    pub path: PathBuf,
    pub current: Config,
    pub last_ok: bool,
}

impl ConfigSource {
    /// Re-reads the file; a bad file keeps the old config active.
    fn reload(&mut self) -> Result<(), String> {
        match config::load(&self.path) {
            Ok(c) => {
                tracing::info!(path = %self.path.display(), services = c.services.len(), "config reloaded");
                self.current = c;
                self.last_ok = true;
                Ok(())
            }
            Err(e) => {
                tracing::error!("config reload failed, keeping the previous config: {e}");
                self.last_ok = false;
                Err(e.to_string())
            }
        }
    }
}

pub struct PollerHandle {
    pub control: mpsc::Sender<Control>,
    thread: Option<JoinHandle<()>>,
}

/// How long shutdown waits for the poller thread after the HTTP drain.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);

impl PollerHandle {
    /// Stops the thread and waits for it, at most `within` (a poll in progress finishes
    /// first). A poller stuck in the kernel (a read that never returns) is left behind:
    /// returns false, and the process exits without it, so shutdown is bounded whatever
    /// the poller does.
    pub fn stop(mut self, within: Duration) -> bool {
        let _ = self.control.send(Control::Stop);
        let Some(t) = self.thread.take() else {
            return true;
        };
        let deadline = Instant::now() + within;
        while !t.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = t.join();
        true
    }
}

/// Spaces out walks of the whole socket table so bindwatch's average CPU stays
/// within `--poll.cpu-budget` (a fraction of one core). Listeners are read every
/// poll (a LISTEN-only dump costs about a millisecond even at a million sockets);
/// the table walk runs when the CPU saved up since the last one pays for it, and
/// at least every [`CpuBudget::MAX_TABLE_AGE`] so no view goes stale for good.
/// Pure: callers feed it wall time and CPU time.
#[derive(Debug, Clone)]
pub struct CpuBudget {
    /// Fraction of one core; 0 or less disables the budget (walk every poll).
    pub fraction: f64,
    /// CPU seconds saved up (may go negative after an expensive walk).
    tokens: f64,
    /// CPU seconds the last table walk itself cost.
    walk_cost: Option<f64>,
    /// Wall seconds since the last walk.
    since_walk: f64,
}

impl CpuBudget {
    /// The table is walked at least this often, budget or not (at a million
    /// sockets, one walk per 5 minutes is 0.4% of a core).
    pub const MAX_TABLE_AGE: f64 = 300.0;

    pub fn new(fraction: f64) -> Self {
        CpuBudget {
            fraction,
            tokens: 0.0,
            walk_cost: None,
            since_walk: 0.0,
        }
    }

    /// Adds the allowance for `elapsed` wall seconds; should the table be walked now?
    pub fn tick(&mut self, elapsed: f64) -> bool {
        self.since_walk += elapsed;
        if self.fraction <= 0.0 {
            return true;
        }
        let Some(cost) = self.walk_cost else {
            return true; // never walked: the first poll must
        };
        // Saving up beyond one walk (plus a minute of allowance) would allow bursts.
        let cap = cost + self.fraction * 60.0;
        self.tokens = (self.tokens + self.fraction * elapsed).min(cap);
        self.tokens >= cost || self.since_walk >= Self::MAX_TABLE_AGE
    }

    /// Charges the CPU one poll used in all; `walk_cpu` is what its table walk
    /// cost, when it walked.
    pub fn charge(&mut self, poll_cpu: f64, walk_cpu: Option<f64>) {
        if let Some(w) = walk_cpu {
            self.walk_cost = Some(w);
            self.since_walk = 0.0;
        }
        if self.fraction > 0.0 {
            self.tokens -= poll_cpu;
        }
    }
}

/// What the poller reads: the namespace bindwatch runs in, or every namespace.
pub enum Target {
    Host(Box<Collector>),
    AllNetns(NetnsCollectors),
}

/// Starts the poller on its own thread (polls are blocking syscalls). The first
/// poll runs before this returns, so the first scrape already has data.
/// `exporter_metrics`: include the `process_*` families (see
/// [`SelfMetrics::with_process_metrics`]).
pub fn spawn(
    mut target: Target,
    interval: Duration,
    latest: Arc<Latest>,
    config: Option<ConfigSource>,
    state_sink: Option<StateSink>,
    budget: CpuBudget,
    exporter_metrics: bool,
    events: Option<Arc<crate::events::Events>>,
) -> PollerHandle {
    let (tx, rx) = mpsc::channel();
    let mut selfm = SelfMetrics::new();
    if exporter_metrics {
        selfm = selfm.with_process_metrics();
    }
    let mut state = LoopState {
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
    };
    poll_and_publish(&mut target, &selfm, &latest, &mut state);
    let thread = std::thread::Builder::new()
        .name("bindwatch-poller".into())
        .spawn(move || poll_loop(target, interval, &latest, &selfm, state, &rx))
        .ok();
    if thread.is_none() {
        tracing::error!("could not start the poller thread; metrics will not update");
    }
    PollerHandle {
        control: tx,
        thread,
    }
}

/// The poller thread: polls at the interval (sooner after unexplained leftovers),
/// reloads when asked, and returns on `Stop` or when the server side is gone.
fn poll_loop(
    mut target: Target,
    interval: Duration,
    latest: &Latest,
    selfm: &SelfMetrics,
    mut state: LoopState,
    rx: &mpsc::Receiver<Control>,
) {
    // Polls keep their rhythm whatever messages arrive in between; a poll
    // that found leftovers memory cannot explain brings the next one forward.
    let mut next = Instant::now() + state.early.next_wait(interval, wants_early_poll(&target));
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Control::Reload(reply)) => {
                let (r, changed) = reload(state.config.as_mut());
                // Poll at once only when the services (or the reload metric)
                // changed: a reload of the same file forces no walk.
                if changed {
                    poll_and_publish(&mut target, selfm, latest, &mut state);
                    next =
                        Instant::now() + state.early.next_wait(interval, wants_early_poll(&target));
                }
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                poll_and_publish(&mut target, selfm, latest, &mut state);
                next = Instant::now() + state.early.next_wait(interval, wants_early_poll(&target));
            }
        }
    }
}

/// Re-reads `--config.file` (if any): its result, and whether the services or the
/// reload metric changed.
fn reload(config: Option<&mut ConfigSource>) -> (Result<(), String>, bool) {
    match config {
        Some(c) => {
            let before = (c.current.clone(), c.last_ok);
            let r = c.reload();
            (r, before != (c.current.clone(), c.last_ok))
        }
        None => {
            tracing::info!("reload requested; no --config.file to re-read");
            (Ok(()), false)
        }
    }
}

/// Whether any collector found leftovers its memory cannot explain.
fn wants_early_poll(target: &Target) -> bool {
    match target {
        Target::Host(c) => c.wants_early_poll(),
        Target::AllNetns(all) => all.wants_early_poll(),
    }
}

/// Spacing of polls: a poll that found leftovers no remembered listener explains
/// (a listener may have come and gone unseen) is followed by a sooner one, so the
/// next short-lived listener is more likely seen. Bounded: at most
/// [`EarlyPolls::MAX_STREAK`] early polls in a row, each at a quarter of the
/// interval (at least [`EarlyPolls::MIN_WAIT`]); the table walk of an early poll
/// still waits for the CPU budget ([`CpuBudget`]), only listeners are read at once.
/// Pure.
#[derive(Debug, Clone, Default)]
pub struct EarlyPolls {
    streak: u32,
}

impl EarlyPolls {
    pub const MAX_STREAK: u32 = 4;
    pub const MIN_WAIT: Duration = Duration::from_millis(250);

    /// How long to wait before the next poll.
    pub fn next_wait(&mut self, interval: Duration, wanted: bool) -> Duration {
        if wanted && self.streak < Self::MAX_STREAK {
            self.streak += 1;
            (interval / 4).max(Self::MIN_WAIT).min(interval)
        } else {
            self.streak = 0;
            interval
        }
    }
}

struct LoopState {
    early: EarlyPolls,
    last_success: Option<Instant>,
    /// The last good snapshots, with their namespace name under `--netns all`.
    last: Vec<(Option<String>, Arc<Snapshot>)>,
    last_error: Option<String>,
    config: Option<ConfigSource>,
    /// The missing capability last logged.
    missing_caps_logged: Option<&'static str>,
    state_sink: Option<StateSink>,
    netns_poll_seconds: Vec<(String, f64)>,
    budget: CpuBudget,
    last_poll: Option<Instant>,
    poll_cpu_total: f64,
    /// The failure tracer, when one was started (its metrics are rendered here).
    events: Option<Arc<crate::events::Events>>,
}

impl LoopState {
    /// One warning naming what is missing, again only when that changes (not every poll).
    fn log_missing_caps(&mut self, snap: &Snapshot) {
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

    fn failed(&mut self, msg: String) {
        // Log a failure when it starts or changes, not every interval.
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::error!(error = %msg, "poll failed; serving the last good snapshot");
        }
        self.last_error = Some(msg);
    }

    fn succeeded(&mut self) {
        if self.last_error.take().is_some() {
            tracing::info!("polling recovered");
        }
        self.last_success = Some(Instant::now());
    }
}

/// One poll of the target, charged to the CPU budget, rendered once and published.
fn poll_and_publish(target: &mut Target, selfm: &SelfMetrics, latest: &Latest, st: &mut LoopState) {
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
    let extras = extras(st, bad_lines);
    publish(st, selfm, latest, &extras);
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

/// What a scrape shows beside the snapshots: the last success, CPU and its budget,
/// the config's reload result, the tracer's counters (the server adds its own).
fn extras(st: &LoopState, bad_lines: u64) -> Extras {
    Extras {
        last_success_unix: st
            .last
            .first()
            .map(|(_, s)| metrics::unix_seconds(s.taken_at)),
        procfs_bad_lines: bad_lines,
        config_reload_ok: st.config.as_ref().map(|c| c.last_ok),
        netns_poll_seconds: st.netns_poll_seconds.clone(),
        poll_cpu_seconds_total: st.poll_cpu_total,
        cpu_budget: st.budget.fraction,
        bind_events: st.events.as_ref().map(|e| e.counters()),
        state_file_stopped: st.state_sink.as_ref().map(StateSink::stopped),
    }
}

/// Hands the last snapshots to the failure tracer (its ports map follows at once),
/// then renders them once (both formats; the server makes gzip and the landing page
/// when first asked for) and publishes them: once a poll is published, the tracer
/// already judges against it.
fn publish(st: &LoopState, selfm: &SelfMetrics, latest: &Latest, extras: &Extras) {
    if let Some(events) = &st.events {
        events.inputs().set(&st.last);
    }
    let snaps: Vec<(Option<&str>, &Snapshot)> = st
        .last
        .iter()
        .map(|(n, s)| (n.as_deref(), s.as_ref()))
        .collect();
    let exp = metrics::render_all(&snaps, selfm, extras);
    latest.set(Published::new(
        Bytes::from(exp.text),
        Bytes::from(exp.openmetrics),
        st.last_success,
        st.last.clone(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_polls_are_sooner_and_bounded() {
        let five = Duration::from_secs(5);
        let mut e = EarlyPolls::default();
        assert_eq!(e.next_wait(five, false), five);
        let waits: Vec<Duration> = (0..6).map(|_| e.next_wait(five, true)).collect();
        let quarter = Duration::from_millis(1250);
        assert_eq!(waits, [quarter, quarter, quarter, quarter, five, quarter]);
        assert_eq!(e.next_wait(five, false), five);
        // Short intervals: never below the floor, never above the interval.
        let mut e = EarlyPolls::default();
        assert_eq!(
            e.next_wait(Duration::from_millis(500), true),
            EarlyPolls::MIN_WAIT
        );
        assert_eq!(
            e.next_wait(Duration::from_millis(100), true),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn budget_spaces_out_expensive_walks() {
        // A walk costs 1.2 s CPU; 1% of a core; a poll every 5 s.
        let mut b = CpuBudget::new(0.01);
        assert!(b.tick(0.0), "the first poll walks");
        b.charge(1.2, Some(1.19));
        let mut walks = 0;
        let mut cpu = 1.2;
        for _ in 0..(3600 / 5) {
            let w = b.tick(5.0);
            let c = if w { 1.2 } else { 0.002 };
            b.charge(c, w.then_some(1.19));
            cpu += c;
            walks += usize::from(w);
        }
        // Over an hour: about one walk every 1.2 / 0.01 = 120 s, CPU within budget.
        assert!((25..=31).contains(&walks), "walks: {walks}");
        assert!(cpu / 3600.0 <= 0.0101, "average CPU {:.4}", cpu / 3600.0);
    }

    #[test]
    fn cheap_tables_walk_every_poll_and_zero_disables() {
        let mut b = CpuBudget::new(0.01);
        assert!(b.tick(0.0));
        b.charge(0.001, Some(0.0005));
        for _ in 0..100 {
            assert!(b.tick(5.0), "a 1 ms walk fits in 50 ms of allowance");
            b.charge(0.001, Some(0.0005));
        }
        let mut off = CpuBudget::new(0.0);
        for _ in 0..10 {
            assert!(off.tick(5.0));
            off.charge(9.0, Some(9.0));
        }
    }

    #[test]
    fn overhead_above_budget_still_walks_within_max_age() {
        // Each poll costs more than the budget allows even without a walk.
        let mut b = CpuBudget::new(0.001);
        assert!(b.tick(0.0));
        b.charge(0.05, Some(0.01));
        let mut since = 0.0;
        for _ in 0..1000 {
            let w = b.tick(1.0);
            since = if w { 0.0 } else { since + 1.0 };
            assert!(
                since < CpuBudget::MAX_TABLE_AGE,
                "the table never gets older than the bound"
            );
            b.charge(0.05, w.then_some(0.01));
        }
    }
}
