//! The polling loop: every `--poll.interval` it reads the kernel into a snapshot,
//! renders it once, and publishes the bytes atomically. A scrape only copies the
//! last published bytes, so it never waits on the kernel and its cost does not
//! grow with the socket table.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::collect::Collector;
use crate::metrics::{self, Extras, SelfMetrics};
use crate::model::Snapshot;

/// What a scrape serves.
#[derive(Debug, Clone)]
pub struct Published {
    pub snapshot: Option<Arc<Snapshot>>,
    pub body: Bytes,
    pub gzip: Bytes,
    pub last_success: Option<Instant>,
}

/// The latest [`Published`], swapped whole by the poller.
pub struct Latest {
    // A std Mutex: it is held only to clone an Arc, never across an await.
    inner: Mutex<Arc<Published>>,
}

impl Latest {
    pub fn new() -> Self {
        Latest {
            inner: Mutex::new(Arc::new(Published {
                snapshot: None,
                body: Bytes::new(),
                gzip: Bytes::new(),
                last_success: None,
            })),
        }
    }

    pub fn get(&self) -> Arc<Published> {
        match self.inner.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, p: Published) {
        let p = Arc::new(p);
        match self.inner.lock() {
            Ok(mut g) => *g = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }
}

impl Default for Latest {
    fn default() -> Self {
        Self::new()
    }
}

/// Messages to the poller thread.
pub enum Control {
    Stop,
    /// Poll now (e.g. after a config reload).
    PollNow,
}

pub struct PollerHandle {
    pub control: mpsc::Sender<Control>,
    thread: Option<JoinHandle<()>>,
}

impl PollerHandle {
    /// Stops the thread and waits for it (a poll in progress finishes first).
    pub fn stop(mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn gzip(body: &[u8]) -> Bytes {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// Starts the poller on its own thread (polls are blocking syscalls). The first
/// poll runs before this returns, so the first scrape already has data.
pub fn spawn(mut collector: Collector, interval: Duration, latest: Arc<Latest>) -> PollerHandle {
    let (tx, rx) = mpsc::channel();
    let selfm = SelfMetrics::new();
    let mut state = LoopState {
        last_success: None,
        last_snapshot: None,
        last_error: None,
    };
    poll_and_publish(&mut collector, &selfm, &latest, &mut state);
    let thread = std::thread::Builder::new()
        .name("bindwatch-poller".into())
        .spawn(move || loop {
            match rx.recv_timeout(interval) {
                Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Control::PollNow) | Err(RecvTimeoutError::Timeout) => {
                    poll_and_publish(&mut collector, &selfm, &latest, &mut state)
                }
            }
        })
        .ok();
    if thread.is_none() {
        tracing::error!("could not start the poller thread; metrics will not update");
    }
    PollerHandle {
        control: tx,
        thread,
    }
}

struct LoopState {
    last_success: Option<Instant>,
    last_snapshot: Option<Arc<Snapshot>>,
    last_error: Option<String>,
}

fn poll_and_publish(c: &mut Collector, selfm: &SelfMetrics, latest: &Latest, st: &mut LoopState) {
    let span = tracing::debug_span!("poll");
    let _g = span.enter();
    let source = c.table().kind().as_str();
    let start = Instant::now();
    match c.poll(&BTreeSet::new()) {
        Ok(snap) => {
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
            if st.last_error.take().is_some() {
                tracing::info!("polling recovered");
            }
            st.last_success = Some(Instant::now());
            st.last_snapshot = Some(Arc::new(snap));
        }
        Err(e) => {
            selfm.poll_errors.with_label_values(&[source]).inc();
            let msg = e.to_string();
            // Log a failure when it starts or changes, not every interval.
            if st.last_error.as_deref() != Some(msg.as_str()) {
                tracing::error!(error = %msg, "poll failed; serving the last good snapshot");
            }
            st.last_error = Some(msg);
        }
    }
    let extras = Extras {
        last_success_unix: st
            .last_snapshot
            .as_ref()
            .map(|s| metrics::unix_seconds(s.taken_at)),
        procfs_bad_lines: c.table().bad_lines,
        ..Extras::default()
    };
    let body = metrics::render(st.last_snapshot.as_deref(), selfm, &extras);
    let gz = gzip(body.as_bytes());
    latest.set(Published {
        snapshot: st.last_snapshot.clone(),
        body: Bytes::from(body),
        gzip: gz,
        last_success: st.last_success,
    });
}
