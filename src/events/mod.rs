//! Real bind()/listen()/connect() failures, seen in the kernel: who failed, what
//! blocked it, and whether the agent's prediction just before was right.
//!
//! - [`decode`] (pure): the BPF program's ring-buffer records -> [`decode::Event`].
//! - [`log`] (pure): blockers, verdicts, prediction scores, the bounded failure log
//!   and the counters behind `bindwatch_bind_failures_total` and friends.
//! - [`loader`] (I/O): loads `bpf/bindevents.bpf.o`, attaches it to the syscall
//!   tracepoints, reads the ring buffer, captures the port's sockets after each
//!   failure.
//! - [`inputs`]: what the poller hands the tracer after each poll, before it
//!   publishes (the snapshots to judge against; the ports-of-interest map follows).
//! - [`ratelimit`] (pure): at most one log line per port, call and interval, with
//!   the count since the last one; the count and time budget of port captures.
//! - [`client`]: `bindwatch failures`: the local agent's `GET /failures`, as text.
//!
//! [`Events`] is what the loader, the poller (metrics, [`inputs::Inputs`]) and the
//! HTTP server (`GET /failures`) share.

pub mod client;
pub mod decode;
pub mod inputs;
pub mod loader;
pub mod log;
pub mod ratelimit;
pub mod score;
pub mod unix;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use self::log::{Counters, FailureLog};

/// State shared between the tracer thread and its readers.
pub struct Events {
    log: Mutex<FailureLog>,
    /// Failed unix binds (their own records: a path, no port).
    unix: Mutex<unix::UnixLog>,
    ports_max: usize,
    /// True once the programs are attached; the failure metrics exist only then.
    active: AtomicBool,
    /// The BPF program's ring-buffer reserve failures, as last read.
    lost: AtomicU64,
    /// The poller's last snapshots and ports of interest, for the tracer.
    inputs: inputs::Inputs,
}

impl Events {
    pub fn new(ports_max: usize) -> Self {
        Events {
            log: Mutex::new(FailureLog::new(ports_max)),
            unix: Mutex::new(unix::UnixLog::default()),
            ports_max,
            active: AtomicBool::new(false),
            lost: AtomicU64::new(0),
            inputs: inputs::Inputs::default(),
        }
    }

    /// What the poller hands the tracer (set after each poll, before publishing).
    pub fn inputs(&self) -> &inputs::Inputs {
        &self.inputs
    }

    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::Relaxed);
    }

    /// Records the BPF program's count of events lost to a full ring buffer.
    pub fn set_lost(&self, n: u64) {
        self.lost.fetch_max(n, Ordering::Relaxed);
    }

    /// Whether failures are being observed (`bindwatch_capability{capability="bind_events"}`).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Runs `f` on the log (a std Mutex: held for a copy or an insert, never across I/O).
    pub fn with_log<T>(&self, f: impl FnOnce(&mut FailureLog) -> T) -> T {
        let mut g = self.log.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Counts and keeps a failed unix bind (`netns`: the label under `--netns all`).
    pub fn record_unix(&self, netns: Option<&str>, f: unix::UnixFailure) {
        let mut g = self.unix.lock().unwrap_or_else(|p| p.into_inner());
        g.record(netns, f, self.ports_max);
    }

    /// The counters for rendering, `None` while failures are not observed (the
    /// metrics are then absent, not zero).
    pub fn counters(&self) -> Option<Counters> {
        if !self.active() {
            return None;
        }
        let mut c = self.with_log(|l| l.counters.clone());
        let u = self.unix.lock().unwrap_or_else(|p| p.into_inner());
        c.unix_bind = u
            .counts
            .iter()
            .map(|((ns, process), n)| {
                (
                    (ns.clone(), crate::model::Errno::Eaddrinuse, process.clone()),
                    *n,
                )
            })
            .collect();
        c.dropped += u.dropped;
        c.lost = self.lost.load(Ordering::Relaxed);
        Some(c)
    }

    /// The body of `GET /failures`: the recent failures (IP and unix), oldest first.
    pub fn failures_json(&self) -> serde_json::Value {
        let mut failures: Vec<(std::time::SystemTime, serde_json::Value)> = self.with_log(|l| {
            l.recent
                .iter()
                .map(|f| (f.at, serde_json::to_value(f).unwrap_or_default()))
                .collect()
        });
        {
            let u = self.unix.lock().unwrap_or_else(|p| p.into_inner());
            failures.extend(
                u.recent
                    .iter()
                    .map(|f| (f.at, serde_json::to_value(f).unwrap_or_default())),
            );
        }
        failures.sort_by_key(|(at, _)| *at);
        serde_json::json!({
            "active": self.active(),
            "failures": failures.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        })
    }
}
