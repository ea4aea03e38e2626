//! The meeting point of the poller and the HTTP server: what a scrape serves
//! ([`Published`], swapped whole in [`Latest`]) and what a request may ask of the
//! poller ([`Control`]). Neither side knows the other; both know this room.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::metrics;

/// What a scrape serves: the text format and OpenMetrics, rendered by the poll,
/// each gzipped by the first request that asks for it (most polls are scraped in
/// one format only, by one Prometheus, or not at all; compressing both every poll
/// cost as much as rendering them). A scrape never touches the kernel: at most it
/// compresses an exposition the size of the series count, once per poll.
#[derive(Debug)]
pub struct Published {
    pub body: Bytes,
    pub openmetrics: Bytes,
    gzip: OnceLock<Bytes>,
    openmetrics_gzip: OnceLock<Bytes>,
    /// The live tables of the landing page, made by the first `GET /` after the
    /// poll (see [`Published::landing`]).
    landing: OnceLock<Arc<str>>,
    pub last_success: Option<Instant>,
    /// The snapshots the body was rendered from, with their namespace name under
    /// `--netns all` (the failure tracer judges events against them).
    pub snapshots: Vec<(Option<String>, Arc<crate::model::Snapshot>)>,
}

impl Published {
    pub fn new(
        body: Bytes,
        openmetrics: Bytes,
        last_success: Option<Instant>,
        snapshots: Vec<(Option<String>, Arc<crate::model::Snapshot>)>,
    ) -> Self {
        Published {
            body,
            openmetrics,
            gzip: OnceLock::new(),
            openmetrics_gzip: OnceLock::new(),
            landing: OnceLock::new(),
            last_success,
            snapshots,
        }
    }

    /// The landing page's live tables: `render` makes them from this
    /// publication on the first request after a poll (most polls publish a page
    /// nobody opens), later and concurrent requests get the same text.
    pub fn landing(&self, render: impl FnOnce(&Self) -> String) -> Arc<str> {
        self.landing.get_or_init(|| Arc::from(render(self))).clone()
    }

    /// The bytes of `format`, gzipped or not; concurrent first requests for a
    /// gzipped format compress it once.
    pub fn bytes(&self, format: metrics::Format, gzip: bool) -> Bytes {
        match (format, gzip) {
            (metrics::Format::Text, false) => self.body.clone(),
            (metrics::Format::Text, true) => self.gzip.get_or_init(|| compress(&self.body)).clone(),
            (metrics::Format::OpenMetrics, false) => self.openmetrics.clone(),
            (metrics::Format::OpenMetrics, true) => self
                .openmetrics_gzip
                .get_or_init(|| compress(&self.openmetrics))
                .clone(),
        }
    }
}

fn compress(body: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    Bytes::from(enc.finish().unwrap_or_default())
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
            inner: Mutex::new(Arc::new(Published::new(
                Bytes::new(),
                Bytes::new(),
                None,
                Vec::new(),
            ))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn each_format_is_compressed_on_first_request_and_kept() {
        let text = Bytes::from("# TYPE a gauge\na 1\n".repeat(50));
        let om = Bytes::from("# TYPE b gauge\nb 2\n# EOF\n".repeat(50));
        let p = Published::new(text.clone(), om.clone(), None, Vec::new());
        for (format, plain) in [
            (metrics::Format::Text, &text),
            (metrics::Format::OpenMetrics, &om),
        ] {
            assert_eq!(&p.bytes(format, false), plain, "{format:?} plain");
            let first = p.bytes(format, true);
            assert_eq!(gunzip(&first), plain.to_vec(), "{format:?} gzipped");
            assert!(first.len() < plain.len(), "{format:?}: compressed");
            // The same bytes, not a second compression.
            assert_eq!(p.bytes(format, true).as_ptr(), first.as_ptr(), "{format:?}");
        }
    }

    #[test]
    fn the_landing_page_renders_once_when_first_asked() {
        let p = Published::new(Bytes::new(), Bytes::new(), None, Vec::new());
        let renders = AtomicUsize::new(0);
        let pages: Vec<Arc<str>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        p.landing(|_| {
                            renders.fetch_add(1, Ordering::SeqCst);
                            "<p>tables</p>".to_string()
                        })
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(pages.iter().all(|p| &**p == "<p>tables</p>"));
        assert_eq!(
            renders.load(Ordering::SeqCst),
            1,
            "concurrent first requests render once"
        );
        let again = p.landing(|_| unreachable!("rendered already"));
        assert_eq!(&*again, "<p>tables</p>");
    }
}
