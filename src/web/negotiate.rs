//! Content negotiation of `/metrics`: which exposition format a scrape's `Accept`
//! header asks for (RFC 9110 section 12.5.1: media ranges, `q` weights, the most
//! specific range deciding). Pure: header values in, a [`Format`] out.

use crate::metrics::Format;

/// One media range of an `Accept` header.
#[derive(Debug, PartialEq)]
struct Range<'a> {
    kind: &'a str,
    subtype: &'a str,
    version: Option<&'a str>,
    /// Weight in thousandths (`q=0.5` is 500), as the RFC allows three decimals.
    q: u16,
}

/// Parses a `q` value: `0`, `1`, `0.5`, `1.000`; anything else is invalid.
fn parse_q(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The media ranges of all `Accept` values; malformed ranges are skipped.
fn ranges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Range<'a>> {
    let mut out = Vec::new();
    for v in values {
        for item in v.split(',') {
            let mut parts = item.split(';');
            let Some((kind, subtype)) = parts.next().and_then(|m| m.trim().split_once('/')) else {
                continue;
            };
            let (kind, subtype) = (kind.trim(), subtype.trim());
            if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
                continue;
            }
            let mut range = Range {
                kind,
                subtype,
                version: None,
                q: 1000,
            };
            let mut valid = true;
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => match parse_q(v) {
                        Some(q) => range.q = q,
                        None => valid = false,
                    },
                    "version" => range.version = Some(v),
                    _ => {}
                }
            }
            if valid {
                out.push(range);
            }
        }
    }
    out
}

/// How specifically `r` names `format` (3: type and version, 2: type, 1: `type/*`,
/// 0: `*/*`), or `None` when it does not match it.
fn specificity(r: &Range, format: Format) -> Option<u8> {
    let (kind, subtype, versions): (&str, &str, &[&str]) = match format {
        Format::Text => ("text", "plain", &["0.0.4"]),
        // 0.0.1 is the pre-1.0 name of the same format (Prometheus still asks for it
        // as a fallback); bindwatch answers with 1.0.0, which its parser reads.
        Format::OpenMetrics => ("application", "openmetrics-text", &["1.0.0", "0.0.1"]),
    };
    if r.kind == "*" {
        return Some(0);
    }
    if !r.kind.eq_ignore_ascii_case(kind) {
        return None;
    }
    if r.subtype == "*" {
        return Some(1);
    }
    if !r.subtype.eq_ignore_ascii_case(subtype) {
        return None;
    }
    match r.version {
        None => Some(2),
        Some(v) if versions.contains(&v) => Some(3),
        Some(_) => None,
    }
}

/// The format to answer with: the one with the highest weight, where each format's
/// weight is that of the most specific range matching it; on a tie the one named
/// more specifically, then the one named first. The text format when nothing
/// acceptable matches (as Go's promhttp does: a scrape always gets an answer).
pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Format {
    let ranges = ranges(accept);
    // (q, specificity, -position) of each format's deciding range.
    let best = |format: Format| -> Option<(u16, u8, isize)> {
        let mut pick: Option<(u8, u16, usize)> = None;
        for (i, r) in ranges.iter().enumerate() {
            if let Some(s) = specificity(r, format) {
                pick = match pick {
                    Some((ps, pq, pi)) if ps > s || (ps == s && pq >= r.q) => Some((ps, pq, pi)),
                    _ => Some((s, r.q, i)),
                };
            }
        }
        pick.filter(|(_, q, _)| *q > 0)
            .map(|(s, q, i)| (q, s, -(i as isize)))
    };
    match (best(Format::OpenMetrics), best(Format::Text)) {
        (Some(om), Some(text)) if om > text => Format::OpenMetrics,
        (Some(_), None) => Format::OpenMetrics,
        _ => Format::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Format::{OpenMetrics as Om, Text};

    #[test]
    fn q_values() {
        for (s, q) in [
            ("0", Some(0)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("0.75", Some(750)),
            ("1.000", Some(1000)),
            ("0.001", Some(1)),
            ("1.5", None),
            ("2", None),
            ("0.1234", None),
            ("-1", None),
            ("", None),
            ("0.x", None),
        ] {
            assert_eq!(parse_q(s), q, "q={s}");
        }
    }

    #[test]
    fn negotiation_table() {
        let table: &[(&[&str], Format)] = &[
            // No header, curl's default, a browser.
            (&[], Text),
            (&["*/*"], Text),
            (&["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"], Text),
            // Prometheus 2.x's default scrape header.
            (&["application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"], Om),
            // Prometheus 3.x's default (with its escaping parameter and text 1.0.0).
            (&["application/openmetrics-text;version=1.0.0;escaping=allow-utf-8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.5,*/*;q=0.1"], Om),
            // Prometheus with `scrape_protocols: [PrometheusText0.0.4]`.
            (&["text/plain;version=0.0.4;q=1,*/*;q=0.1"], Text),
            (&["application/openmetrics-text;version=1.0.0"], Om),
            (&["application/openmetrics-text; version=1.0.0; charset=utf-8"], Om),
            (&["application/openmetrics-text"], Om),
            (&["APPLICATION/OpenMetrics-Text;Version=1.0.0"], Om),
            (&["application/openmetrics-text;version=0.0.1"], Om),
            (&["application/*"], Om),
            // Weights decide, not order.
            (&["text/plain;q=0.3, application/openmetrics-text;q=0.9"], Om),
            (&["application/openmetrics-text;q=0.2, text/plain;q=0.9"], Text),
            (&["application/openmetrics-text;q=0.2", "text/plain;q=0.9"], Text),
            // A tie: the first named.
            (&["application/openmetrics-text;q=0.5, text/plain;q=0.5"], Om),
            (&["text/plain;q=0.5, application/openmetrics-text;q=0.5"], Text),
            // The most specific range decides a format's weight.
            (&["application/openmetrics-text;version=1.0.0;q=0, application/*;q=1, text/plain;q=0.5"], Text),
            // Refusing the text format leaves OpenMetrics through */*.
            (&["*/*;q=1, text/plain;q=0"], Om),
            // A version bindwatch does not speak does not match.
            (&["application/openmetrics-text;version=2.0.0"], Text),
            (&["application/openmetrics-text;version=2.0.0, */*;q=0.1"], Text),
            // Refused everything / unknown types / garbage: the text format anyway.
            (&["application/openmetrics-text;q=0"], Text),
            (&["application/json"], Text),
            (&["garbage, ;;;, /, */"], Text),
            (&["application/openmetrics-text;q=5"], Text),
        ];
        for (accept, want) in table {
            assert_eq!(
                negotiate(accept.iter().copied()),
                *want,
                "Accept: {accept:?}"
            );
        }
    }
}
