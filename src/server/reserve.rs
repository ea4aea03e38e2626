//! The scrape reserve: connections that hold a `--web.max-connections` slot without a
//! request in progress (not yet through their headers, in a TLS handshake, or idle
//! between keep-alive requests) give way to new ones. When every slot is taken, the
//! oldest such connection is closed and the new one gets its slot; only when every
//! slot serves a request is a new connection refused. So one client holding idle or
//! slow-header connections cannot lock a scraper out, while the cap still bounds what
//! all of them hold.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The connections that may be closed to make room, oldest first.
#[derive(Default)]
pub(super) struct Waiting {
    /// By the order they started waiting: their wake-up to close.
    queue: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next: AtomicU64,
    /// New connections waiting for the slot of one closed for them.
    pub(super) handing_over: AtomicUsize,
}

impl Waiting {
    fn queue(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Notify>>> {
        // Held for a map operation only; a panic cannot leave it inconsistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection: waiting (for its first request) until it is busy.
    pub(super) fn enter(self: &Arc<Self>) -> Arc<Ticket> {
        let t = Arc::new(Ticket {
            waiting: self.clone(),
            key: Mutex::new(None),
            close: Arc::new(Notify::new()),
        });
        t.idle();
        t
    }

    /// Closes the connection that has been waiting longest; false when none waits.
    pub(super) fn close_oldest(&self) -> bool {
        match self.queue().pop_first() {
            Some((_, close)) => {
                close.notify_one();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue().len()
    }
}

/// One connection's place among the waiting ones.
pub(super) struct Ticket {
    waiting: Arc<Waiting>,
    /// Its key in the queue while it waits.
    key: Mutex<Option<u64>>,
    close: Arc<Notify>,
}

impl Ticket {
    fn key(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request is in progress: not to be closed for another connection.
    pub(super) fn busy(&self) {
        if let Some(k) = self.key().take() {
            self.waiting.queue().remove(&k);
        }
    }

    /// No request in progress: may be closed, after those waiting longer.
    pub(super) fn idle(&self) {
        let mut key = self.key();
        if key.is_some() {
            return;
        }
        let k = self.waiting.next.fetch_add(1, Ordering::Relaxed);
        self.waiting.queue().insert(k, self.close.clone());
        *key = Some(k);
    }

    /// Resolves when the connection is to be closed for a new one.
    pub(super) async fn closed(&self) {
        self.close.notified().await;
    }

    /// Marks the connection idle again when dropped (with the last byte of an answer).
    pub(super) fn idle_on_drop(self: &Arc<Self>) -> IdleOnDrop {
        IdleOnDrop(self.clone())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.busy();
    }
}

/// See [`Ticket::idle_on_drop`].
pub struct IdleOnDrop(Arc<Ticket>);

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        self.0.idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_goes_first_and_busy_ones_never() {
        let w = Arc::new(Waiting::default());
        let a = w.enter();
        let b = w.enter();
        let c = w.enter();
        b.busy();
        assert_eq!(w.len(), 2);
        // a waited longest: closed first.
        assert!(w.close_oldest());
        assert!(a.close.notified().now_or_never_ready());
        // c next; b serves a request and is never closed.
        assert!(w.close_oldest());
        assert!(c.close.notified().now_or_never_ready());
        assert!(!w.close_oldest(), "b is busy");
        // Its answer done, b waits again (as the newest).
        drop(b.idle_on_drop());
        assert!(w.close_oldest());
        drop((a, c));
        // Dropped tickets leave the queue.
        let d = w.enter();
        drop(d);
        assert_eq!(w.len(), 0);
    }

    trait NowOrNever {
        fn now_or_never_ready(self) -> bool;
    }

    impl<F: std::future::Future<Output = ()>> NowOrNever for F {
        fn now_or_never_ready(self) -> bool {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut f = std::pin::pin!(self);
            f.as_mut().poll(&mut cx).is_ready()
        }
    }
}
