//! Log lines on stderr in the exporter conventions' two formats (`--log.format`):
//! logfmt (`ts=... level=info msg="..." key=value`, what Prometheus and node_exporter
//! write) and JSON (one object per line with the same keys). A `tracing-subscriber`
//! event formatter; tracing-subscriber has no logfmt and its JSON needs another
//! crate, and one formatter for both keeps their keys identical.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

/// A field's value: a string, or a number/bool written bare in both formats.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bare(String),
}

/// The fields of one event, `message` apart.
#[derive(Default)]
struct Fields {
    msg: String,
    pairs: Vec<(&'static str, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, v: Value) {
        if field.name() == "message" {
            self.msg = match v {
                Value::Str(s) | Value::Bare(s) => s,
            };
        } else {
            self.pairs.push((field.name(), v));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::Str(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::Bare(value.to_string()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::Bare(value.to_string()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bare(value.to_string()));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities: those are strings there.
        if value.is_finite() {
            self.put(field, Value::Bare(value.to_string()));
        } else {
            self.put(field, Value::Str(value.to_string()));
        }
    }
}

/// The event formatter for [`LogFormat`].
pub struct LineFormat(pub LogFormat);

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let line = line(self.0, &timestamp(SystemTime::now()), &level, &fields);
        writer.write_str(&line)
    }
}

fn line(format: LogFormat, ts: &str, level: &str, f: &Fields) -> String {
    let mut out = String::with_capacity(128);
    let head = [
        ("ts", Value::Str(ts.to_string())),
        ("level", Value::Str(level.to_string())),
        ("msg", Value::Str(f.msg.clone())),
    ];
    let all = head
        .iter()
        .map(|(k, v)| (*k, v))
        .chain(f.pairs.iter().map(|(k, v)| (*k, v)));
    match format {
        LogFormat::Logfmt => {
            for (i, (k, v)) in all.enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push('=');
                match v {
                    Value::Bare(s) => out.push_str(s),
                    Value::Str(s) => logfmt_value(s, &mut out),
                }
            }
        }
        LogFormat::Json => {
            let mut map = serde_json::Map::new();
            for (k, v) in all {
                let v = match v {
                    Value::Str(s) => serde_json::Value::String(s.clone()),
                    Value::Bare(s) => serde_json::from_str(s)
                        .unwrap_or_else(|_| serde_json::Value::String(s.clone())),
                };
                map.entry(k.to_string()).or_insert(v);
            }
            out.push_str(&serde_json::Value::Object(map).to_string());
        }
    }
    out.push('\n');
    out
}

/// A logfmt value: bare when it has no space, `=`, quote or control character,
/// else quoted with Go-style escapes (what go-logfmt writes and reads).
fn logfmt_value(s: &str, out: &mut String) {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c > ' ' && c != '=' && c != '"' && c != '\\' && !c.is_control());
    if plain {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 in UTC with milliseconds, as Go's logfmt loggers write `ts`.
fn timestamp(t: SystemTime) -> String {
    crate::timefmt::rfc3339_millis(t)
}

/// Installs the global subscriber: `BINDWATCH_LOG` (an `EnvFilter`) or `level`.
pub fn init(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BINDWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("bindwatch={level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(LineFormat(format))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats() {
        let f = Fields {
            msg: "poll failed; \"x\"".into(),
            pairs: vec![
                ("error", Value::Str("a=b\nc".into())),
                ("ms", Value::Bare("12".into())),
                ("ok", Value::Bare("true".into())),
                ("path", Value::Str("/proc".into())),
                ("empty", Value::Str(String::new())),
            ],
        };
        assert_eq!(
            line(LogFormat::Logfmt, "T", "warn", &f),
            "ts=T level=warn msg=\"poll failed; \\\"x\\\"\" error=\"a=b\\nc\" ms=12 ok=true path=/proc empty=\"\"\n"
        );
        let j: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, "T", "warn", &f)).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"ts": "T", "level": "warn", "msg": "poll failed; \"x\"",
                "error": "a=b\nc", "ms": 12, "ok": true, "path": "/proc", "empty": ""})
        );
    }
}
