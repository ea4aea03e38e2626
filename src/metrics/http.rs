//! The HTTP server's own instruments. The server owns them and renders them at
//! scrape time, after the poll's published exposition (promhttp's way: the
//! handler's counters are gathered with each scrape), so the poller never reads
//! what the server counts. A handful of lines: gathering them costs nothing next to
//! serving the poll's bytes.

use prometheus::{IntCounter, IntGauge, Opts, Registry};

use super::writer::Writer;
use super::Format;

/// What the server counts: connections `--web.max-connections` refused or closed,
/// and, with `--web.config.file`, whether its last (re)load worked.
pub struct HttpMetrics {
    registry: Registry,
    refused: IntCounter,
    /// `None` without `--web.config.file` (the family is then absent).
    web_config: Option<IntGauge>,
}

impl HttpMetrics {
    /// `web_config_file`: whether `--web.config.file` was given (it loaded: the
    /// agent does not start otherwise).
    ///
    /// # Panics
    /// Never in practice: the names below are valid and registered once.
    pub fn new(web_config_file: bool) -> Self {
        let registry = Registry::new();
        let refused = IntCounter::with_opts(Opts::new(
            "bindwatch_http_connections_refused_total",
            "HTTP connections closed because --web.max-connections were open: refused at once, or idle ones without a request in progress closed to make room for a new one.",
        ))
        .expect("valid counter");
        registry
            .register(Box::new(refused.clone()))
            .expect("registered once");
        let web_config = web_config_file.then(|| {
            let g = IntGauge::with_opts(Opts::new(
                "bindwatch_web_config_last_reload_successful",
                "1 when the last load of --web.config.file (or of a file it names) succeeded; 0 while an older web config stays active after a failed reload.",
            ))
            .expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g.set(1);
            g
        });
        HttpMetrics {
            registry,
            refused,
            web_config,
        }
    }

    /// One connection refused or closed to make room.
    pub fn connection_refused(&self) {
        self.refused.inc();
    }

    /// The result of the last (re)load of `--web.config.file`.
    pub fn set_web_config_ok(&self, ok: bool) {
        if let Some(g) = &self.web_config {
            g.set(i64::from(ok));
        }
    }

    /// What a scrape in `format` appends to the poll's exposition: these families,
    /// gathered now, then (OpenMetrics) `# EOF`, which must end the exposition.
    pub fn tail(&self, format: Format) -> String {
        let mut w = Writer::default();
        w.gathered(&self.registry.gather());
        let mut out = String::with_capacity(512);
        w.finish(format, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_counts_and_ends_openmetrics() {
        let m = HttpMetrics::new(false);
        m.connection_refused();
        m.connection_refused();
        let text = m.tail(Format::Text);
        assert!(
            text.contains("\nbindwatch_http_connections_refused_total 2\n"),
            "{text}"
        );
        assert!(!text.contains("web_config"), "no file, no family: {text}");
        assert!(!text.contains("# EOF"), "{text}");
        let om = m.tail(Format::OpenMetrics);
        assert!(
            om.contains("# TYPE bindwatch_http_connections_refused counter\n"),
            "{om}"
        );
        assert!(om.ends_with("\n# EOF\n"), "{om}");
        assert_eq!(om.matches("# EOF").count(), 1, "{om}");
    }

    #[test]
    fn the_web_config_gauge_follows_its_reloads() {
        let m = HttpMetrics::new(true);
        let line = |m: &HttpMetrics| {
            m.tail(Format::Text)
                .lines()
                .find(|l| l.starts_with("bindwatch_web_config_last_reload_successful "))
                .map(str::to_string)
        };
        assert_eq!(
            line(&m).as_deref(),
            Some("bindwatch_web_config_last_reload_successful 1")
        );
        m.set_web_config_ok(false);
        assert_eq!(
            line(&m).as_deref(),
            Some("bindwatch_web_config_last_reload_successful 0")
        );
        let none = HttpMetrics::new(false);
        none.set_web_config_ok(true);
        assert_eq!(line(&none), None);
    }
}
