//! `bindwatch check` names what blocks a port as the kernel shows it: a TIME_WAIT and an
//! orphaned FIN_WAIT2 built for real on one port, in a network namespace of their own, are
//! both reported with their state, local and remote addresses, a reason and a timer within
//! 2 s of what `ss -o` shows, in the JSON and in the text report.
//!
//! Needs root (network namespaces) and `ss`.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::oracle::*;
use serde_json::Value;

/// Parses an `ss -o` timer value: `59sec`, `1min`, `1min5sec`, `9.500ms`, `500ms`.
fn parse_ss_timer(v: &str) -> Option<f64> {
    let (mins, rest) = match v.split_once("min") {
        Some((m, r)) => (m.parse::<f64>().ok()?, r),
        None => (0.0, v),
    };
    let secs = if rest.is_empty() {
        0.0
    } else if let Some(s) = rest.strip_suffix("sec") {
        s.parse::<f64>().ok()?
    } else if let Some(ms) = rest.strip_suffix("ms") {
        match ms.split_once('.') {
            Some((s, frac)) => s.parse::<f64>().ok()? + frac.parse::<f64>().ok()? / 1000.0,
            None => ms.parse::<f64>().ok()? / 1000.0,
        }
    } else {
        return None;
    };
    Some(mins * 60.0 + secs)
}

/// (local, remote, seconds left) of every socket `ss -tano state STATE` shows on `port`.
fn ss_timers(state: &str, port: u16) -> Vec<(String, String, f64)> {
    let filter = format!("( sport = :{port} )");
    let out = run("ss", &["-Htano", "state", state, &filter]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let timer = l.split("timer:(").nth(1)?;
            let value = timer.split(',').nth(1)?;
            Some((
                f.get(2)?.to_string(),
                f.get(3)?.to_string(),
                parse_ss_timer(value)?,
            ))
        })
        .collect()
}

#[test]
fn ss_timer_parser() {
    assert_eq!(parse_ss_timer("59sec"), Some(59.0));
    assert_eq!(parse_ss_timer("1min"), Some(60.0));
    assert_eq!(parse_ss_timer("1min5sec"), Some(65.0));
    assert_eq!(parse_ss_timer("9.500ms"), Some(9.5));
    assert_eq!(parse_ss_timer("500ms"), Some(0.5));
}

#[test]
fn check_names_blockers_with_state_addresses_and_timer() {
    netns(|| {
        // A TIME_WAIT (listener closed) and an orphaned FIN_WAIT2 on the same port.
        let l = listener("127.0.0.1", P, false, None);
        tw_server(&l, addr("127.0.0.1", P));
        let c = TcpStream::connect(addr("127.0.0.1", P)).expect("connect");
        let (s, _) = l.accept().expect("accept");
        close_now(s);
        close_now(l);
        assert_state("time-wait", P);
        assert_state("fin-wait-2", P);
        std::thread::sleep(Duration::from_millis(1500)); // let the timers run a little

        let (code, out, err) = bw(&["check", &P.to_string(), "--json"]);
        let ss_tw = ss_timers("time-wait", P);
        let ss_fw2 = ss_timers("fin-wait-2", P);
        assert_eq!(code, 1, "{out}{err}");
        let j: Value = serde_json::from_str(out.trim()).expect("json");
        let blockers = j["checks"][0]["blockers"]
            .as_array()
            .expect("blockers")
            .clone();
        assert_eq!(blockers.len(), 2, "{j}");
        for (state, ss) in [("time_wait", &ss_tw), ("fin_wait2", &ss_fw2)] {
            assert_eq!(ss.len(), 1, "ss {state}: {ss:?}");
            let (local, remote, left) = &ss[0];
            let b = blockers
                .iter()
                .find(|b| b["state"] == state)
                .unwrap_or_else(|| panic!("no {state} blocker in {j}"));
            assert_eq!(b["local"].as_str(), Some(local.as_str()), "{b}");
            assert_eq!(b["remote"].as_str(), Some(remote.as_str()), "{b}");
            assert_eq!(b["blocks"], "true", "{b}");
            assert!(b["rule"].is_string() && b["reason"].is_string(), "{b}");
            let t = b["timer_seconds"]
                .as_f64()
                .unwrap_or_else(|| panic!("no timer: {b}"));
            eprintln!("{state}: bindwatch {t:.3} s, ss {left:.3} s");
            assert!(
                (t - left).abs() <= 2.0,
                "{state}: bindwatch timer {t} vs ss {left}"
            );
        }

        // The text report names the same.
        let (code, text, _) = bw(&["check", &P.to_string()]);
        assert_eq!(code, 1, "{text}");
        for (state, ss) in [("time_wait", &ss_tw), ("fin_wait2", &ss_fw2)] {
            let (local, remote, _) = &ss[0];
            let line = text
                .lines()
                .find(|l| l.contains(state))
                .unwrap_or_else(|| panic!("no {state} line in {text}"));
            assert!(
                line.contains(local.as_str()) && line.contains(remote.as_str()),
                "{line}"
            );
            assert!(line.contains(" s left"), "no timer in {line}");
        }
        assert!(text.contains("why:"), "{text}");
        close_now(c);
    });
}
