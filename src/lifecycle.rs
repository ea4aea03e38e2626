//! `POST /-/reload`, the HTTP lifecycle endpoint (only with `--web.enable-lifecycle`, as
//! in Prometheus): reloads asked for over HTTP are coalesced. At most one reload is in
//! flight; every request that arrives meanwhile shares the next one, which starts no
//! sooner than [`MIN_INTERVAL`] after the last. A request is answered only when a
//! reload that started after it arrived has finished, so it never reports a result
//! that predates its own request. However many clients loop on the endpoint, the
//! poller re-reads the file at most once per interval and each client gets at most
//! one answer per interval (the flood costs almost nothing). SIGHUP goes to the poller
//! directly and is not affected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};

use crate::publish::Control;

/// Reloads asked for over HTTP start at most this often.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a request waits for its reload (the poller may be busy with a slow poll).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reloaded,
    /// The file was refused; the previous config stays active.
    Failed(String),
    PollerGone,
    TimedOut,
}

#[derive(Debug, Clone)]
struct Done {
    /// Requests up to this number are answered by `outcome`.
    generation: u64,
    outcome: Outcome,
}

/// The coalescing gate between HTTP requests and the poller.
pub struct Reloader {
    control: Sender<Control>,
    /// Number of requests so far; a request's number is its generation.
    requested: AtomicU64,
    wake: Notify,
    done: watch::Sender<Done>,
}

impl Reloader {
    /// Starts the task that runs the reloads (needs a tokio runtime).
    pub fn spawn(control: Sender<Control>) -> Arc<Reloader> {
        let (done, _) = watch::channel(Done {
            generation: 0,
            outcome: Outcome::Reloaded,
        });
        let r = Arc::new(Reloader {
            control,
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            done,
        });
        tokio::spawn(r.clone().run());
        r
    }

    async fn run(self: Arc<Self>) {
        let mut served = 0u64;
        let mut last_start: Option<tokio::time::Instant> = None;
        loop {
            if self.requested.load(Ordering::SeqCst) == served {
                // A notify_one before this await leaves a permit: no request is missed.
                self.wake.notified().await;
                continue;
            }
            if let Some(t) = last_start {
                tokio::time::sleep_until(t + MIN_INTERVAL).await;
            }
            // Every request counted here arrived before this reload starts.
            let target = self.requested.load(Ordering::SeqCst);
            last_start = Some(tokio::time::Instant::now());
            let outcome = self.reload_once().await;
            served = target;
            self.done.send_replace(Done {
                generation: target,
                outcome,
            });
        }
    }

    async fn reload_once(&self) -> Outcome {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Reload(Some(tx))).is_err() {
            return Outcome::PollerGone;
        }
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Outcome::Reloaded,
            Ok(Ok(Err(e))) => Outcome::Failed(e),
            Ok(Err(_)) => Outcome::PollerGone,
            Err(_) => Outcome::TimedOut,
        }
    }

    /// Asks for a reload and waits for one that started after this call.
    pub async fn reload(&self) -> Outcome {
        let mut rx = self.done.subscribe();
        let me = self
            .requested
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        self.wake.notify_one();
        let wait = async {
            rx.wait_for(|d| d.generation >= me)
                .await
                .map(|d| d.outcome.clone())
        };
        // The reload task's own timeout answers first; this one only guards against
        // a task that is gone.
        match tokio::time::timeout(REPLY_TIMEOUT + MIN_INTERVAL * 2, wait).await {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => Outcome::PollerGone,
            Err(_) => Outcome::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake poller thread: answers each reload after `work`, counting them.
    fn poller(work: Duration) -> (Sender<Control>, Arc<AtomicU64>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        std::thread::spawn(move || {
            while let Ok(Control::Reload(reply)) = rx.recv() {
                std::thread::sleep(work);
                n2.fetch_add(1, Ordering::SeqCst);
                if let Some(r) = reply {
                    let _ = r.send(Ok(()));
                }
            }
        });
        (tx, n)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_reloads() {
        let (tx, n) = poller(Duration::from_millis(50));
        let r = Reloader::spawn(tx);
        let t0 = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move { r.reload().await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Outcome::Reloaded);
        }
        let reloads = n.load(Ordering::SeqCst);
        // The first request starts a reload; the other 49 arrive during it (or just
        // before it) and share at most one more.
        assert!(
            (1..=2).contains(&reloads),
            "{reloads} reloads for 50 requests"
        );
        // A request after those waits for a fresh reload, spaced by MIN_INTERVAL.
        assert_eq!(r.reload().await, Outcome::Reloaded);
        assert_eq!(n.load(Ordering::SeqCst), reloads + 1);
        assert!(t0.elapsed() >= MIN_INTERVAL, "reloads are spaced");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_gone_poller_is_reported() {
        let (tx, rx) = std::sync::mpsc::channel::<Control>();
        drop(rx);
        let r = Reloader::spawn(tx);
        assert_eq!(r.reload().await, Outcome::PollerGone);
    }
}
