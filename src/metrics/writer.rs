//! The exposition writer: families with their HELP, TYPE (and OpenMetrics UNIT)
//! headers, escaped labels and values, in both formats from one set of sample lines.

use std::fmt::Write as _;

use super::Format;

/// The base unit a family's name ends in, following the Prometheus naming guide
/// (`_seconds`, `_bytes`, `_ratio`, before a counter's `_total`); OpenMetrics
/// declares it in `# UNIT`, which must then be the name's suffix.
fn unit_of(family: &str) -> Option<&'static str> {
    ["seconds", "bytes", "ratio"].into_iter().find(|u| {
        family.len() > u.len() + 1
            && family.ends_with(u)
            && family[..family.len() - u.len()].ends_with('_')
    })
}

/// A family's name, type and help, and its sample lines.
struct Family {
    name: String,
    kind: &'static str,
    help: String,
    /// Sample lines, the same in both formats.
    body: String,
    /// Sample lines where OpenMetrics differs (a histogram's `le` values).
    body_om: Option<String>,
}

impl Family {
    fn write(&self, format: Format, out: &mut String) {
        let name = self.name.as_str();
        match format {
            Format::Text => {
                let _ = write!(out, "# HELP {name} ");
                escape_help(&self.help, false, out);
                let _ = write!(out, "\n# TYPE {name} {}\n", self.kind);
                out.push_str(&self.body);
            }
            Format::OpenMetrics => {
                // A counter family is named without `_total`; its samples keep it. A
                // counter whose samples lack `_total` cannot be one in OpenMetrics:
                // it is declared `unknown` rather than mislabelled.
                let (family, kind) = match (self.kind, name.strip_suffix("_total")) {
                    ("counter", Some(base)) => (base, "counter"),
                    ("counter", None) | ("untyped", _) => (name, "unknown"),
                    (kind, _) => (name, kind),
                };
                let _ = write!(out, "# HELP {family} ");
                escape_help(&self.help, true, out);
                let _ = write!(out, "\n# TYPE {family} {kind}\n");
                if kind != "unknown" {
                    if let Some(unit) = unit_of(family) {
                        let _ = writeln!(out, "# UNIT {family} {unit}");
                    }
                }
                out.push_str(self.body_om.as_ref().unwrap_or(&self.body));
            }
        }
    }
}

/// HELP text: the text format escapes backslash and newline, OpenMetrics also `"`.
fn escape_help(help: &str, quote: bool, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// A sample value as both formats spell it (`+Inf`, `-Inf`, `NaN`).
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A histogram bound as `le`: OpenMetrics wants canonical floats (`1.0`, as Go's
/// client writes them), the text format has always had `1`.
fn write_le(out: &mut String, v: f64, format: Format) {
    if format == Format::OpenMetrics && v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{v:.1}");
    } else {
        write_value(out, v);
    }
}

fn write_labels<'a>(out: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut first = true;
    for (k, v) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// Collects families for both exposition formats, escaping label values.
///
/// Samples are grouped per family whatever order they are written in (the formats
/// want each family in one block), so snapshots of several network namespaces can
/// be rendered one after the other, each with its `netns` label. Sample lines are
/// written once and shared by both formats; only the headers differ.
#[derive(Default)]
pub(super) struct Writer {
    order: Vec<String>,
    families: std::collections::HashMap<String, Family>,
    current: String,
    /// `netns` label value added first to every sample (`--netns all`).
    pub(super) netns: Option<String>,
}

impl Writer {
    pub(super) fn family(&mut self, name: &str, kind: &'static str, help: &str) {
        self.current.clear();
        self.current.push_str(name);
        if !self.families.contains_key(name) {
            self.order.push(name.to_string());
            self.families.insert(
                name.to_string(),
                Family {
                    name: name.to_string(),
                    kind,
                    help: help.to_string(),
                    body: String::new(),
                    body_om: None,
                },
            );
        }
    }

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let netns = self.netns.as_deref();
        let Some(f) = self.families.get_mut(&self.current) else {
            return;
        };
        let out = &mut f.body;
        out.push_str(name);
        let all = netns
            .map(|n| ("netns", n))
            .into_iter()
            .chain(labels.iter().copied());
        write_labels(out, all);
        out.push(' ');
        write_value(out, value);
        out.push('\n');
    }

    /// Adds what a `prometheus` registry gathered (bindwatch's own instruments).
    pub(super) fn gathered(&mut self, families: &[prometheus::proto::MetricFamily]) {
        use prometheus::proto::MetricType;
        for mf in families {
            let name = mf.name();
            let kind = match mf.get_field_type() {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                // bindwatch registers no summaries or untyped metrics.
                MetricType::SUMMARY | MetricType::UNTYPED => continue,
            };
            self.family(name, kind, mf.help());
            for m in mf.get_metric() {
                let labels: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                match kind {
                    "counter" => self.sample(name, &labels, m.get_counter().get_value()),
                    "gauge" => self.sample(name, &labels, m.get_gauge().get_value()),
                    _ => self.histogram(name, &labels, m.get_histogram()),
                }
            }
        }
    }

    /// A histogram's `_bucket` (with `+Inf`), `_sum` and `_count` lines, per format.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &prometheus::proto::Histogram) {
        let netns = self.netns.clone();
        let Some(f) = self.families.get_mut(&self.current) else {
            return;
        };
        let count = h.get_sample_count();
        let mut om = f.body_om.take().unwrap_or_default();
        for (format, out) in [(Format::Text, &mut f.body), (Format::OpenMetrics, &mut om)] {
            let base = || {
                netns
                    .as_deref()
                    .map(|n| ("netns", n))
                    .into_iter()
                    .chain(labels.iter().copied())
            };
            let mut bounds: Vec<(f64, u64)> = h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect();
            if bounds.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
                bounds.push((f64::INFINITY, count));
            }
            for (le, n) in bounds {
                let mut le_s = String::new();
                write_le(&mut le_s, le, format);
                let _ = write!(out, "{name}_bucket");
                write_labels(out, base().chain(std::iter::once(("le", le_s.as_str()))));
                let _ = writeln!(out, " {n}");
            }
            let _ = write!(out, "{name}_sum");
            write_labels(out, base());
            out.push(' ');
            write_value(out, h.get_sample_sum());
            let _ = write!(out, "\n{name}_count");
            write_labels(out, base());
            let _ = writeln!(out, " {count}");
        }
        f.body_om = Some(om);
    }

    /// Every family in `format`, without OpenMetrics' closing `# EOF`: more families
    /// may follow (the server's own, appended at scrape time).
    pub(super) fn families(&self, format: Format, out: &mut String) {
        for name in &self.order {
            if let Some(f) = self.families.get(name) {
                f.write(format, out);
            }
        }
    }

    /// Every family in `format`, then (OpenMetrics) `# EOF`: a whole exposition.
    pub(super) fn finish(&self, format: Format, out: &mut String) {
        self.families(format, out);
        if format == Format::OpenMetrics {
            out.push_str(super::OPENMETRICS_EOF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::SelfMetrics;

    #[test]
    fn units_from_name_suffixes() {
        for (name, unit) in [
            ("bindwatch_poll_duration_seconds", Some("seconds")),
            ("bindwatch_poll_cpu_seconds", Some("seconds")),
            ("process_resident_memory_bytes", Some("bytes")),
            ("bindwatch_ephemeral_ports_used_ratio", Some("ratio")),
            ("bindwatch_sockets", None),
            ("seconds", None),
            ("bindwatch_xseconds", None),
            ("process_open_fds", None),
        ] {
            assert_eq!(unit_of(name), unit, "{name}");
        }
    }

    fn two_formats(w: &Writer) -> (String, String) {
        let (mut t, mut o) = (String::new(), String::new());
        w.finish(Format::Text, &mut t);
        w.finish(Format::OpenMetrics, &mut o);
        (t, o)
    }

    #[test]
    fn headers_per_format_samples_shared() {
        let mut w = Writer::default();
        w.family(
            "x_errors_total",
            "counter",
            "Errors \"quoted\", a \\ and\na newline.",
        );
        w.sample("x_errors_total", &[("k", "a\"b\\c\nd")], 3.0);
        w.family("x_age_seconds", "gauge", "Age.");
        w.sample("x_age_seconds", &[], f64::INFINITY);
        w.sample("x_age_seconds", &[("k", "n")], f64::NAN);
        w.family("x_odd", "counter", "A counter without _total.");
        w.sample("x_odd", &[], 1.0);
        let (t, o) = two_formats(&w);
        assert_eq!(
            t,
            "# HELP x_errors_total Errors \"quoted\", a \\\\ and\\na newline.\n\
             # TYPE x_errors_total counter\n\
             x_errors_total{k=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP x_age_seconds Age.\n# TYPE x_age_seconds gauge\n\
             x_age_seconds +Inf\nx_age_seconds{k=\"n\"} NaN\n\
             # HELP x_odd A counter without _total.\n# TYPE x_odd counter\nx_odd 1\n"
        );
        assert_eq!(
            o,
            "# HELP x_errors Errors \\\"quoted\\\", a \\\\ and\\na newline.\n\
             # TYPE x_errors counter\n\
             x_errors_total{k=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP x_age_seconds Age.\n# TYPE x_age_seconds gauge\n# UNIT x_age_seconds seconds\n\
             x_age_seconds +Inf\nx_age_seconds{k=\"n\"} NaN\n\
             # HELP x_odd A counter without _total.\n# TYPE x_odd unknown\nx_odd 1\n\
             # EOF\n"
        );
    }

    #[test]
    fn histograms_in_both_formats() {
        let selfm = SelfMetrics::new();
        let h = selfm.poll_duration.with_label_values(&["netlink"]);
        h.observe(0.003);
        h.observe(2.0);
        let mut w = Writer::default();
        w.gathered(&selfm.gather());
        let (t, o) = two_formats(&w);
        let name = "bindwatch_poll_duration_seconds";
        for (text, one, inf) in [
            (&t, "le=\"1\"", "le=\"+Inf\""),
            (&o, "le=\"1.0\"", "le=\"+Inf\""),
        ] {
            assert!(
                text.contains(&format!("{name}_bucket{{source=\"netlink\",{one}}} 1\n")),
                "{text}"
            );
            assert!(text.contains(&format!("{name}_bucket{{source=\"netlink\",{inf}}} 2\n")));
            assert!(text.contains(&format!("{name}_sum{{source=\"netlink\"}} 2.003\n")));
            assert!(text.contains(&format!("{name}_count{{source=\"netlink\"}} 2\n")));
        }
        assert!(o.contains(&format!("# TYPE {name} histogram\n# UNIT {name} seconds\n")));
        assert!(o.contains("# TYPE bindwatch_poll_errors counter\n"));
        assert!(o.contains("bindwatch_poll_errors_total{source=\"netlink\"} 0\n"));
        assert!(t.contains("# TYPE bindwatch_poll_errors_total counter\n"));
    }
}
