//! The landing page `/`: name, version and links (as exporter-toolkit's landing page
//! has them), then the live listener table and the watched services of the last
//! snapshot, the HTML twin of `bindwatch ports`. Pure: snapshots in, HTML out. The
//! poller renders the tables once per poll (see [`tables`]); a request to `/` only
//! wraps them in [`page`], so it never touches the kernel. Every value is escaped
//! ([`escape`]): a process name (comm) is whatever the process chose, `<` included.
//! No JavaScript: reload the page for a newer snapshot.

use std::fmt::Write as _;

use crate::metrics::{unix_seconds, REVISION, VERSION};
use crate::model::{Failure, Snapshot, Verdict};

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn verdict_cell(v: Verdict) -> String {
    format!("<td class=\"{0}\">{0}</td>", v.as_str())
}

/// The UTC date of a Unix time, to the second (for "as of").
fn utc(secs: f64) -> String {
    crate::timefmt::utc_seconds(secs)
}

/// The live part of the page: one section per snapshot (one per network namespace
/// with `--netns all`), listeners and watched services.
pub fn tables(snaps: &[(Option<&str>, &Snapshot)]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    if snaps.is_empty() {
        out.push_str("<p class=\"note\">No poll has succeeded yet.</p>\n");
        return out;
    }
    for (netns, s) in snaps {
        listeners_table(&mut out, *netns, s);
        if !s.capabilities.owners || !s.capabilities.socket_flags {
            out.push_str(
                "<p class=\"note\">Some owners or flags are unknown: bindwatch lacks \
                 CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH.</p>\n",
            );
        }
        watched_table(&mut out, s);
        out.push_str("</section>\n");
    }
    out
}

/// A section's heading and its table of live listeners with their restart verdicts.
fn listeners_table(out: &mut String, netns: Option<&str>, s: &Snapshot) {
    let _ = write!(out, "<section>\n<h2>Listeners");
    if let Some(n) = netns {
        let _ = write!(out, " in network namespace <code>{}</code>", escape(n));
    }
    let _ = writeln!(
        out,
        "</h2>\n<p class=\"note\">As of {} (source {}).</p>",
        utc(unix_seconds(s.taken_at)),
        escape(s.source.as_str())
    );
    out.push_str(
        "<table class=\"listeners\">\n<thead><tr><th>Protocol</th><th>Address</th><th>Port</th>\
         <th>Process</th><th>User</th><th>SO_REUSEADDR</th><th>SO_REUSEPORT</th>\
         <th>Restart</th><th>New socket without SO_REUSEADDR</th><th>New socket with SO_REUSEADDR</th>\
         <th>Blockers</th><th>Clears in</th></tr></thead>\n<tbody>\n",
    );
    let mut rows = 0;
    for r in s.risks.iter().filter(|r| !r.gone) {
        rows += 1;
        // The main holder (else the first), and how many more hold the socket.
        let held = &r.holding;
        let (process, user) = match (held.main.as_ref().or(held.holders.first()), &r.owner) {
            (Some(h), _) => {
                let more = match held.holders.len() {
                    0 | 1 => String::new(),
                    n => format!(" +{}", n - 1),
                };
                (format!("{}[{}]{more}", h.process, h.pid), h.user.clone())
            }
            (None, Some(o)) => (format!("{}[{}]", o.process, o.pid), o.user.clone()),
            (None, None) => ("unknown".to_string(), "unknown".to_string()),
        };
        // What `check PORT --restart` answers: a restart with the daemon's own flags.
        let j = &r.restart;
        let clears = j
            .clear_seconds()
            .map_or(String::new(), |s| format!("{s:.0} s"));
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}{}{}<td>{}</td><td>{}</td></tr>",
            escape(r.endpoint.protocol.as_str()),
            escape(&r.endpoint.address.to_string()),
            r.endpoint.port,
            escape(&process),
            escape(&user),
            escape(r.listener.flags.reuseaddr.as_str()),
            escape(r.listener.flags.reuseport.as_str()),
            verdict_cell(r.restart.verdict),
            verdict_cell(r.without_reuseaddr.verdict),
            verdict_cell(r.with_reuseaddr.verdict),
            j.blocking_count(),
            escape(&clears),
        );
    }
    if rows == 0 {
        out.push_str("<tr><td colspan=\"12\">no listening sockets</td></tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out.push_str(
        "<p class=\"note\">Restart: a restart with the daemon's own SO_REUSEADDR (what \
         <code>bindwatch check PORT --restart</code> answers); the next two: a new socket \
         without / with SO_REUSEADDR. Blockers and clears in belong to the restart.</p>\n",
    );
}

/// The watched services (`--config.file`) and their status, if any.
fn watched_table(out: &mut String, s: &Snapshot) {
    if !s.watched.is_empty() {
        out.push_str(
            "<h3>Watched services</h3>\n<table class=\"watched\">\n<thead><tr><th>Name</th>\
             <th>Protocol</th><th>Port</th><th>Status</th><th>Detail</th></tr></thead>\n<tbody>\n",
        );
        for w in &s.watched {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                escape(&w.name),
                escape(w.protocol.as_str()),
                w.port,
                escape(w.status.as_str()),
                escape(w.status.as_str()),
                escape(&w.detail),
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:0}header{background:#e6522c;color:#fff;padding:.6em 1em}\
header h1{margin:0;font-size:1.5em}main{padding:0 1em 1em}table{border-collapse:collapse;margin:.5em 0}\
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;font-size:.9em}th{background:#f3f3f3}\
td.blocked,td.stolen,td.foreign_owner{background:#f8d0c8}td.unknown,td.missing{background:#fbeec1}\
td.clear,td.ok{background:#d5efd5}.note{color:#555;font-size:.9em}code{background:#f3f3f3}";

/// How many recent failures the page shows (the JSON at `/failures` has them all).
pub const FAILURES_SHOWN: usize = 20;

/// The recent real bind/listen/connect failures the tracer saw, newest first;
/// `None` when the tracer is not running here.
pub fn failures(recent: Option<&[Failure]>) -> String {
    let mut out = String::from("<section>\n<h2>Recent bind failures</h2>\n");
    let Some(recent) = recent else {
        out.push_str("<p class=\"note\">Real failures are not observed here (the bind-failure tracer is not running: see <code>bindwatch_capability{capability=\"bind_events\"}</code>).</p>\n</section>\n");
        return out;
    };
    if recent.is_empty() {
        out.push_str("<p class=\"note\">None seen since the agent started.</p>\n</section>\n");
        return out;
    }
    out.push_str("<table>\n<tr><th>time</th><th>netns</th><th>call</th><th>protocol</th><th>address</th><th>port</th><th>errno</th><th>process</th><th>uid</th><th>predicted</th><th>blockers</th><th>clears in</th></tr>\n");
    for f in recent.iter().take(FAILURES_SHOWN) {
        let blockers = if f.blockers_total == 0 {
            "none found".to_string()
        } else {
            let states: Vec<&str> = f.blockers.iter().map(|b| b.state).collect();
            format!("{} ({})", f.blockers_total, states.join(", "))
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}[{}]</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.time),
            escape(&f.netns),
            f.call.as_str(),
            f.protocol.as_str(),
            escape(&f.address),
            f.port,
            f.errno.name(),
            escape(&f.process),
            f.pid,
            f.uid,
            f.verdict_before.map_or("not watched", |v| v.as_str()),
            escape(&blockers),
            f.clear_seconds.map_or(String::new(), |s| format!("{s:.0} s")),
        );
    }
    out.push_str("</table>\n</section>\n");
    out
}

/// The whole page around the `tables` the poller rendered.
pub fn page(telemetry_path: &str, tables: &str) -> String {
    let p = escape(telemetry_path);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>bindwatch</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<header><h1>bindwatch</h1></header>\n<main>\n\
         <h2>Prometheus exporter and port-conflict monitor: would a restart fail with EADDRINUSE?</h2>\n\
         <div>Version: {version} (revision {revision})</div>\n<div><ul>\n\
         <li><a href=\"{p}\">Metrics</a></li>\n<li><a href=\"/healthz\">Health</a></li>\n<li><a href=\"/failures\">Recent real bind failures</a> (JSON)</li>\n\
         </ul></div>\n<p class=\"note\">On the host: <code>bindwatch ports</code>, \
         <code>bindwatch check PORT --restart</code>.</p>\n{tables}</main>\n</body>\n</html>\n",
        version = escape(VERSION),
        revision = escape(REVISION),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_section() {
        assert!(failures(None).contains("not observed here"));
        assert!(failures(Some(&[])).contains("None seen"));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<b>a&b</b> \"q\" 'x'"),
            "&lt;b&gt;a&amp;b&lt;/b&gt; &quot;q&quot; &#39;x&#39;"
        );
        assert_eq!(escape("nginx"), "nginx");
    }

    #[test]
    fn page_escapes_the_path_and_wraps_the_tables() {
        let p = page("/m\"<x>", "<section>T</section>\n");
        assert!(p.contains("<a href=\"/m&quot;&lt;x&gt;\">Metrics</a>"));
        assert!(p.contains("<section>T</section>\n</main>"));
        assert!(!p.contains("<script"));
        assert_eq!(
            tables(&[]),
            "<p class=\"note\">No poll has succeeded yet.</p>\n"
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400.5), "2000-02-29 00:00:00 UTC");
    }
}
