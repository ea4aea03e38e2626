//! The meeting point of the poller and the HTTP server: what a scrape serves
//! ([`Published`], swapped whole in [`Latest`]) and what a request may ask of the
//! poller ([`Control`]). Neither side knows the other; both know this room.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::metrics;

mod gzip;

/// What a scrape serves: the text format and OpenMetrics, rendered by the poll,
/// each gzipped by the first request that asks for it (most polls are scraped in
/// one format only, by one Prometheus, or not at all; compressing both every poll
/// cost as much as rendering them). A scrape never touches the kernel: at most it
/// compresses an exposition the size of the series count, once per poll. Each
/// scrape appends the server's own families to these bytes ([`Published::served`]).
#[derive(Debug)]
pub struct Published {
    /// The poll's families in the text format.
    pub body: Bytes,
    /// The poll's families in OpenMetrics, without `# EOF` (the server's tail ends it).
    pub openmetrics: Bytes,
    gzip: OnceLock<gzip::Head>,
    openmetrics_gzip: OnceLock<gzip::Head>,
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

    /// The response body in `format`: the poll's bytes, then `tail` (what the server
    /// renders at scrape time, ending the exposition), as two pieces sent one after
    /// the other. Gzipped, it is one gzip stream: the poll's part is compressed by
    /// the first request that asks for it after a poll (concurrent first requests
    /// compress it once); each scrape only appends its small tail, stored.
    pub fn served(&self, format: metrics::Format, gzip: bool, tail: &[u8]) -> [Bytes; 2] {
        let (plain, head) = match format {
            metrics::Format::Text => (&self.body, &self.gzip),
            metrics::Format::OpenMetrics => (&self.openmetrics, &self.openmetrics_gzip),
        };
        if gzip {
            let head = head.get_or_init(|| gzip::Head::new(plain));
            [head.bytes.clone(), head.finish(tail)]
        } else {
            [plain.clone(), Bytes::copy_from_slice(tail)]
        }
    }
}

/// The latest [`Published`], swapped whole by the poller.
pub struct Latest {
    // A std Mutex: it is held only to clone an Arc, never across an await.
    inner: Mutex<Arc<Published>>,
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::gzip::tests::gunzip_one_member as gunzip;

    #[test]
    fn each_format_is_compressed_on_first_request_and_kept() {
        let text = Bytes::from("# TYPE a gauge\na 1\n".repeat(50));
        let om = Bytes::from("# TYPE b gauge\nb 2\n".repeat(50));
        let p = Published::new(text.clone(), om.clone(), None, Vec::new());
        for (format, plain, tail) in [
            (metrics::Format::Text, &text, "c 3\n"),
            (metrics::Format::OpenMetrics, &om, "c 3\n# EOF\n"),
        ] {
            let whole = [&plain[..], tail.as_bytes()].concat();
            let [a, b] = p.served(format, false, tail.as_bytes());
            assert_eq!(&a, plain, "{format:?}: the poll's bytes, not a copy");
            assert_eq!(a.as_ptr(), plain.as_ptr(), "{format:?}");
            assert_eq!([&a[..], &b[..]].concat(), whole, "{format:?} plain");
            let [head, end] = p.served(format, true, tail.as_bytes());
            let gz = [&head[..], &end[..]].concat();
            // One gzip member: a reader that stops after the first one sees it all.
            assert_eq!(gunzip(&gz), whole, "{format:?} gzipped");
            assert!(gz.len() < whole.len(), "{format:?}: compressed");
            // The same head, not a second compression; a new tail each time.
            let [again, end2] = p.served(format, true, b"d 4\n");
            assert_eq!(again.as_ptr(), head.as_ptr(), "{format:?}");
            let gz2 = [&again[..], &end2[..]].concat();
            assert_eq!(gunzip(&gz2), [&plain[..], b"d 4\n"].concat(), "{format:?}");
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
