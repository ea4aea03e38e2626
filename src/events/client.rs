//! `bindwatch failures [--json]`: asks the local agent (`GET /failures` at its
//! `--web.listen-address`) and prints the recent failures with their blockers.
//! The formatting is pure ([`failures_text`]) over the agent's JSON document.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::cli::FailuresArgs;

/// The answer of one agent, or why there was none.
fn fetch(addrs: &[SocketAddr]) -> Result<Value, String> {
    let mut why = Vec::new();
    for addr in addrs {
        match fetch_one(*addr) {
            Ok(v) => return Ok(v),
            Err(e) => why.push(format!("{addr}: {e}")),
        }
    }
    Err(why.join("; "))
}

fn fetch_one(addr: SocketAddr) -> Result<Value, String> {
    // `:PORT` names every address of the agent; ask it on loopback.
    let addr = if addr.ip().is_unspecified() {
        let lo = if addr.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        SocketAddr::new(lo, addr.port())
    } else {
        addr
    };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("no agent answers: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "GET /failures HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    s.take(64 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer: {e}"))?;
    parse_response(&raw)
}

/// Status line and body of an HTTP/1.x answer -> the JSON document.
fn parse_response(raw: &[u8]) -> Result<Value, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("not an HTTP answer (does the agent serve TLS? this command speaks plain HTTP)")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    match status {
        "200" => {}
        "401" => return Err("the agent requires basic auth (--web.config.file); use curl -u USER with GET /failures".into()),
        "404" => return Err("the agent has no /failures (an older bindwatch?)".into()),
        s => return Err(format!("the agent answered HTTP {s}")),
    }
    serde_json::from_slice(&raw[split + 4..]).map_err(|e| format!("the answer is not JSON: {e}"))
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("?")
}

/// The failures of the agent's document as text, newest last.
pub fn failures_text(doc: &Value) -> String {
    let mut out = String::new();
    if doc["active"] == Value::Bool(false) {
        out.push_str(
            "the agent's bind tracer is not running (bindwatch_capability{capability=\"bind_events\"} 0; its log says why)\n",
        );
    }
    let list = doc["failures"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if list.is_empty() {
        out.push_str("no failures seen\n");
        return out;
    }
    for f in list {
        if f["protocol"] == "unix" {
            unix_lines(&mut out, f);
            continue;
        }
        failure_line(&mut out, f);
        blocker_lines(&mut out, f);
    }
    out
}

/// A failed unix bind: the path, who failed, and what was there a moment later.
fn unix_lines(out: &mut String, f: &Value) {
    out.push_str(&format!(
        "{} {} unix bind({}) by {}[{}] uid {} failed: {}\n",
        str_of(f, "time"),
        str_of(f, "netns"),
        str_of(f, "address"),
        str_of(f, "process"),
        f["pid"].as_u64().unwrap_or(0),
        f["uid"].as_u64().unwrap_or(0),
        str_of(f, "errno").to_uppercase(),
    ));
    let holders = f["holders"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    match f["state"].as_str() {
        Some("held") => {
            for h in holders {
                out.push_str(&format!("    held by {}\n", h.as_str().unwrap_or("?")));
            }
        }
        Some(_) => out.push_str(&format!("    {}\n", str_of(f, "reason"))),
        None => out.push_str(&format!("    not judged: {}\n", str_of(f, "reason"))),
    }
}

/// One failure: when, where, who, with which flags, and what was predicted.
fn failure_line(out: &mut String, f: &Value) {
    let addr = str_of(f, "address");
    let port = f["port"].as_u64().unwrap_or(0);
    let target = if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    };
    let flags = &f["flags"];
    let flag_text = if flags.is_object() {
        format!(
            "reuseaddr={} reuseport={} v6only={}",
            str_of(flags, "reuseaddr"),
            str_of(flags, "reuseport"),
            str_of(flags, "v6only")
        )
    } else {
        "flags unreadable".to_string()
    };
    out.push_str(&format!(
        "{} {} {} {}({}) by {}[{}] uid {} ({}) failed: {}; predicted {}\n",
        str_of(f, "time"),
        str_of(f, "netns"),
        str_of(f, "protocol"),
        str_of(f, "call"),
        target,
        str_of(f, "process"),
        f["pid"].as_u64().unwrap_or(0),
        f["uid"].as_u64().unwrap_or(0),
        flag_text,
        str_of(f, "errno").to_uppercase(),
        f["verdict_before"]
            .as_str()
            .unwrap_or("nothing (port not watched)"),
    ));
}

/// A failure's blockers (each once), how many more there were, why, and when the
/// port clears.
fn blocker_lines(out: &mut String, f: &Value) {
    let blockers = f["blockers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut whys: Vec<&str> = Vec::new();
    for b in blockers {
        let timer = b["timer_seconds"]
            .as_f64()
            .map(|t| format!(", gone in {} s", t.ceil() as u64))
            .unwrap_or_default();
        let reuse = match str_of(&b["flags"], "reuseaddr") {
            "true" => "on",
            "false" => "off",
            _ => "unknown",
        };
        let held = b["held_by"]
            .as_str()
            .map(|h| format!(" held by {h}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "    {} {} -> {} owner {}{held} SO_REUSEADDR {reuse}{timer}\n",
            str_of(b, "state"),
            str_of(b, "local"),
            str_of(b, "remote"),
            b["owner"].as_str().unwrap_or("unknown"),
        ));
        let why = str_of(b, "why");
        if !whys.contains(&why) {
            whys.push(why);
        }
    }
    let total = f["blockers_total"].as_u64().unwrap_or(0);
    if total > blockers.len() as u64 {
        out.push_str(&format!(
            "    ... and {} more\n",
            total - blockers.len() as u64
        ));
    }
    for why in whys {
        out.push_str(&format!("    why: {why}\n"));
    }
    if let Some(c) = f["clear_seconds"].as_f64() {
        out.push_str(&format!("    clear in {} s\n", c.ceil() as u64));
    }
}

/// Runs `bindwatch failures`; the exit status (0, or 2 when no agent answers).
pub fn failures(a: &FailuresArgs) -> i32 {
    let addrs = match crate::cli::parse_listen_address(&a.listen_address) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bindwatch failures: {e}");
            return 2;
        }
    };
    match fetch(&addrs) {
        Ok(doc) => {
            if a.json {
                println!("{doc:#}");
            } else {
                print!("{}", failures_text(&doc));
            }
            0
        }
        Err(e) => {
            eprintln!(
                "bindwatch failures: cannot read the agent at --web.listen-address {}: {e}",
                a.listen_address
            );
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"failures\":[]}";
        assert_eq!(
            parse_response(ok).unwrap()["failures"],
            serde_json::json!([])
        );
        let cases: [(&[u8], &str); 4] = [
            (
                b"HTTP/1.1 401 Unauthorized\r\n\r\nUnauthorized\n",
                "basic auth",
            ),
            (b"HTTP/1.1 404 Not Found\r\n\r\n", "no /failures"),
            (b"\x16\x03\x01garbage", "TLS"),
            (b"HTTP/1.1 200 OK\r\n\r\nnot json", "not JSON"),
        ];
        for (raw, want) in cases {
            let e = parse_response(raw).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn text_of_a_failure_with_blockers() {
        let doc = serde_json::json!({"active": true, "failures": [{
            "time": "2026-12-01T21:41:16.615Z", "netns": "host", "call": "bind", "protocol": "tcp",
            "address": "0.0.0.0", "port": 443, "errno": "eaddrinuse", "pid": 1234, "process": "nginx",
            "uid": 0, "flags": {"reuseaddr": "false", "reuseport": "false", "v6only": "false"},
            "verdict_before": "blocked", "blockers_total": 2, "clear_seconds": 40.2,
            "blockers": [{"state": "time_wait", "local": "10.0.0.1:443", "remote": "10.0.0.2:5000",
                "owner": "nginx", "flags": {"reuseaddr": "false"}, "timer_seconds": 40.2, "why": "w"}]
        }]});
        assert_eq!(
            failures_text(&doc),
            "2026-12-01T21:41:16.615Z host tcp bind(0.0.0.0:443) by nginx[1234] uid 0 (reuseaddr=false reuseport=false v6only=false) failed: EADDRINUSE; predicted blocked\n\
             \x20   time_wait 10.0.0.1:443 -> 10.0.0.2:5000 owner nginx SO_REUSEADDR off, gone in 41 s\n\
             \x20   ... and 1 more\n\
             \x20   why: w\n\
             \x20   clear in 41 s\n"
        );
        let unix = serde_json::json!({"active": true, "failures": [
            {"time": "t1", "netns": "host", "call": "bind", "protocol": "unix", "address": "/run/a.sock",
             "errno": "eaddrinuse", "pid": 9, "process": "nginx", "uid": 0, "state": "stale",
             "holders": [], "safe_to_remove": true, "reason": "stale socket file: removing it is safe"},
            {"time": "t2", "netns": "host", "call": "bind", "protocol": "unix", "address": "@bus",
             "errno": "eaddrinuse", "pid": 9, "process": "app", "uid": 0, "state": "held",
             "holders": ["bus[3] (user root), stream listen"], "safe_to_remove": false, "reason": ""}
        ]});
        assert_eq!(
            failures_text(&unix),
            "t1 host unix bind(/run/a.sock) by nginx[9] uid 0 failed: EADDRINUSE\n\
             \x20   stale socket file: removing it is safe\n\
             t2 host unix bind(@bus) by app[9] uid 0 failed: EADDRINUSE\n\
             \x20   held by bus[3] (user root), stream listen\n"
        );
        let none = serde_json::json!({"active": false, "failures": []});
        assert!(failures_text(&none).contains("not running"));
        assert!(failures_text(&none).ends_with("no failures seen\n"));
    }
}
