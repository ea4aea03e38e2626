//! The polling loop: every `--poll.interval` it reads the kernel into a snapshot,
//! renders it once, and publishes the bytes atomically. A scrape only copies the
//! last published bytes, so it never waits on the kernel and its cost does not
//! grow with the socket table.
//!
//! - this file: the poller thread, its loop and its handle;
//! - `poll`: one poll of the target into the loop's state;
//! - `render`: rendering a poll and publishing it (the failure tracer gets it first);
//! - `budget`: the CPU budget that spaces out table walks ([`CpuBudget`]);
//! - `early`: sooner polls after unexplained leftovers ([`EarlyPolls`]);
//! - `reload`: `--config.file` and its reloads ([`ConfigSource`]);
//! - `sink`: the state file ([`StateSink`]).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::collect::Collector;
use crate::metrics::SelfMetrics;
use crate::netns::NetnsCollectors;
pub use crate::publish::{Control, Latest, Published, ReloadReply};

mod budget;
mod early;
mod poll;
mod reload;
mod render;
mod sink;

pub use budget::CpuBudget;
pub use early::EarlyPolls;
use poll::{poll_and_publish, LoopState};
use reload::reload;
pub use reload::ConfigSource;
pub use sink::StateSink;

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

/// What the poller reads: the namespace bindwatch runs in, or every namespace.
pub enum Target {
    Host(Box<Collector>),
    AllNetns(NetnsCollectors),
}

/// Everything the poller starts with.
pub struct Setup {
    /// What it reads.
    pub target: Target,
    /// `--poll.interval`.
    pub interval: Duration,
    /// Where each poll is published.
    pub latest: Arc<Latest>,
    /// `--config.file`, when given.
    pub config: Option<ConfigSource>,
    /// `--state.file`, when the agent writes one.
    pub state_sink: Option<StateSink>,
    /// `--poll.cpu-budget`.
    pub budget: CpuBudget,
    /// Include the `process_*` families (see [`SelfMetrics::with_process_metrics`]).
    pub exporter_metrics: bool,
    /// The failure tracer's shared state, when one was started: each poll is handed
    /// to it before it is published, and its counters are rendered with the poll.
    pub events: Option<Arc<crate::events::Events>>,
}

/// Starts the poller on its own thread (polls are blocking syscalls). The first
/// poll runs before this returns, so the first scrape already has data.
pub fn spawn(setup: Setup) -> PollerHandle {
    let Setup {
        mut target,
        interval,
        latest,
        config,
        state_sink,
        budget,
        exporter_metrics,
        events,
    } = setup;
    let (tx, rx) = mpsc::channel();
    let mut selfm = SelfMetrics::new();
    if exporter_metrics {
        selfm = selfm.with_process_metrics();
    }
    let mut state = LoopState::new(config, state_sink, budget, events);
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

/// Whether any collector found leftovers its memory cannot explain.
fn wants_early_poll(target: &Target) -> bool {
    match target {
        Target::Host(c) => c.wants_early_poll(),
        Target::AllNetns(all) => all.wants_early_poll(),
    }
}
