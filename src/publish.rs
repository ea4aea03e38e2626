//! The meeting point of the poller and the HTTP server: what a scrape serves
//! ([`Published`], swapped whole in [`Latest`]) and what a request may ask of the
//! poller ([`Control`]). Neither side knows the other; both know this room.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::metrics;

/// What a scrape serves: the text format and OpenMetrics, each plain and gzipped,
/// all rendered by the poll (a scrape only picks one and copies it).
#[derive(Debug, Clone)]
pub struct Published {
    pub body: Bytes,
    pub gzip: Bytes,
    pub openmetrics: Bytes,
    pub openmetrics_gzip: Bytes,
    /// The live tables of the landing page (see [`crate::landing`]).
    pub landing: Arc<str>,
    pub last_success: Option<Instant>,
    /// The snapshots the body was rendered from, with their namespace name under
    /// `--netns all` (the failure tracer judges events against them).
    pub snapshots: Vec<(Option<String>, Arc<crate::model::Snapshot>)>,
}

impl Published {
    /// The bytes of `format`, gzipped or not.
    pub fn bytes(&self, format: metrics::Format, gzip: bool) -> Bytes {
        match (format, gzip) {
            (metrics::Format::Text, false) => self.body.clone(),
            (metrics::Format::Text, true) => self.gzip.clone(),
            (metrics::Format::OpenMetrics, false) => self.openmetrics.clone(),
            (metrics::Format::OpenMetrics, true) => self.openmetrics_gzip.clone(),
        }
    }
}

/// The latest [`Published`], swapped whole by the poller.
pub struct Latest {
    // A std Mutex: it is held only to clone an Arc, never across an await.
    inner: Mutex<Arc<Published>>,
    /// Counted by the HTTP server, rendered by the poller.
    pub http: metrics::HttpStats,
}

impl Latest {
    pub fn new() -> Self {
        Latest {
            inner: Mutex::new(Arc::new(Published {
                body: Bytes::new(),
                gzip: Bytes::new(),
                openmetrics: Bytes::new(),
                openmetrics_gzip: Bytes::new(),
                landing: Arc::from(""),
                last_success: None,
                snapshots: Vec::new(),
            })),
            http: metrics::HttpStats::default(),
        }
    }

    pub fn get(&self) -> Arc<Published> {
        match self.inner.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces what scrapes serve (the poller, once per poll).
    pub fn set(&self, p: Published) {
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

/// Result of a reload, sent back to whoever asked (HTTP `POST /-/reload`).
pub type ReloadReply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Messages to the poller thread.
pub enum Control {
    Stop,
    /// Re-read `--config.file` (SIGHUP, `POST /-/reload`), then poll at once if the
    /// services changed.
    Reload(Option<ReloadReply>),
}
