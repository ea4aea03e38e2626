//! Pieces of the one-shot commands' reports that stay readable at any size: the
//! holders of a listening socket and what a restart leaves of them, and blockers
//! in the order an operator reads them (the ones that never clear on their own
//! first, then by time left, longest first), capped in text, all in JSON.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use crate::model::{
    EndpointRisk, Finding, Holder, Holding, Protocol, Snapshot, Socket, Survival, Tri,
};
use crate::rebind::holders::HOLDERS_DECIDE;

/// Blockers a text report shows unless `--all` is given.
pub const SHOWN_MAX: usize = 20;

/// `findings` in report order: sockets without a running timer (they stay until
/// their process closes them) first, then by time left, longest first; so the
/// clear time in a verdict's header is the first line's.
pub fn by_time_left(findings: &[Finding]) -> Vec<&Finding> {
    let mut v: Vec<&Finding> = findings.iter().collect();
    v.sort_by(|a, b| {
        let key = |f: &Finding| f.remaining().map_or(f64::INFINITY, |d| d.as_secs_f64());
        key(b).total_cmp(&key(a))
    });
    v
}

/// How many of `total` findings a text report shows.
pub fn shown(total: usize, all: bool) -> usize {
    if all {
        total
    } else {
        total.min(SHOWN_MAX)
    }
}

/// The line that stands for the findings a text report leaves out.
pub fn more_line(hidden: usize) -> String {
    format!("  ... and {hidden} more (--all lists every one)\n")
}

/// Whether a judgement's "cannot tell" comes from the holders.
pub fn holders_decide(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| f.undecided_by.contains(&HOLDERS_DECIDE))
}

/// The lines under a restart verdict: who holds the listening socket, and which
/// holders the restart leaves behind.
pub fn holding_text(out: &mut String, h: &Holding) {
    if h.holders.is_empty() && h.survival == Survival::Closed {
        return;
    }
    let names: Vec<String> = h
        .holders
        .iter()
        .take(SHOWN_MAX)
        .map(|x| {
            let main = h.main.as_ref().is_some_and(|m| m.pid == x.pid);
            let unit = x
                .unit
                .as_deref()
                .map_or(String::new(), |u| format!(" ({u})"));
            format!("{}{}{}", x.short(), unit, if main { " main" } else { "" })
        })
        .collect();
    if !names.is_empty() {
        let more = h.holders.len().saturating_sub(SHOWN_MAX);
        let _ = write!(out, "  held by: {}", names.join(", "));
        if more > 0 {
            let _ = write!(out, " and {more} more");
        }
        out.push('\n');
    }
    match &h.survival {
        Survival::Closed => {}
        Survival::Survivors { why, .. } => {
            let _ = writeln!(out, "  STAYS OPEN: {why}");
        }
        Survival::Undecided { why, .. } => {
            let _ = writeln!(out, "  DEPENDS: {why}");
        }
    }
}

pub fn holder_json(h: &Holder) -> Value {
    json!({
        "pid": h.pid,
        "ppid": h.ppid,
        "process": h.process,
        "uid": h.uid,
        "user": h.user,
        "start_time": h.start_time,
        "unit": h.unit,
    })
}

/// Every holder, the main one, and what a restart leaves (`closed`, `survivors`,
/// `undecided`, with the holders that keep the socket and why).
pub fn holding_json(h: &Holding) -> Value {
    let (outcome, left, why) = match &h.survival {
        Survival::Closed => ("closed", &[][..], None),
        Survival::Survivors { holders, why } => ("survivors", &holders[..], Some(why)),
        Survival::Undecided { holders, why } => ("undecided", &holders[..], Some(why)),
    };
    json!({
        "holders": h.holders.iter().map(holder_json).collect::<Vec<_>>(),
        "holders_total": h.holders.len(),
        "main_pid": h.main.as_ref().map(|m| m.pid),
        "complete": h.complete,
        "after_restart": {
            "outcome": outcome,
            "holders": left.iter().map(holder_json).collect::<Vec<_>>(),
            "why": why,
        },
    })
}

/// The live listening sockets of an endpoint: one, or each member of a
/// SO_REUSEPORT group.
pub fn members<'a>(snap: &'a Snapshot, r: &EndpointRisk) -> Vec<&'a Socket> {
    snap.listeners
        .iter()
        .map(|l| &l.socket)
        .filter(|s| {
            s.protocol == r.endpoint.protocol
                && s.local.ip() == r.endpoint.address
                && s.local.port() == r.endpoint.port
        })
        .collect()
}

/// `nginx[20367] root +2 workers` for a listening socket, else its owner.
pub fn held_by(snap: &Snapshot, s: &Socket) -> String {
    if let Some(text) = snap.holdings.get(&s.inode).and_then(Holding::summary) {
        return text;
    }
    snap.owners.get(&s.inode).map_or_else(
        || "unknown".to_string(),
        |o| format!("{}[{}] {}", o.process, o.pid, o.user),
    )
}

/// Each member socket of an endpoint with its flags and holders.
pub fn members_json(snap: &Snapshot, r: &EndpointRisk) -> Value {
    Value::Array(
        members(snap, r)
            .into_iter()
            .map(|s| {
                json!({
                    "inode": s.inode,
                    "reuseaddr": s.flags.reuseaddr,
                    "reuseport": s.flags.reuseport,
                    "held_by": held_by(snap, s),
                    "holding": snap.holdings.get(&s.inode).map(holding_json),
                })
            })
            .collect(),
    )
}

/// The watched services (`--config.file`) of one port, or of all.
pub fn watched_text(snap: &Snapshot, port: Option<(Protocol, u16)>) -> String {
    let mut out = String::new();
    let rows: Vec<_> = snap
        .watched
        .iter()
        .filter(|w| port.is_none_or(|(p, n)| w.protocol == p && w.port == n))
        .collect();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nwatched services:");
    for w in rows {
        let _ = writeln!(
            out,
            "  {:<16} {}/{:<5} {:<13} {}",
            w.name,
            w.protocol,
            w.port,
            w.status.as_str(),
            w.detail
        );
    }
    out
}

pub fn ports_json(snap: &Snapshot) -> serde_json::Value {
    json!({
        "source": snap.source,
        "capabilities": { "owners": snap.capabilities.owners, "socket_flags": snap.capabilities.socket_flags },
        "watched": snap.watched,
        "ephemeral_buckets": snap.ephemeral_top.iter().map(|((src, dst, dport), n)| json!({
            "source": src.to_string(), "destination": endpoint_str(*dst, *dport), "ports": n,
            "ratio": f64::from(*n) / f64::from(snap.allocation.size().max(1)),
        })).collect::<Vec<_>>(),
        "listeners": snap.risks.iter().filter(|r| !r.gone).map(|r| {
            let j = &r.restart;
            json!({
                "protocol": r.endpoint.protocol,
                "family": r.listener.family(),
                "address": r.endpoint.address.to_string(),
                "port": r.endpoint.port,
                "owner": r.owner,
                "holding": holding_json(&r.holding),
                "members": members_json(snap, r),
                "reuseaddr": r.listener.flags.reuseaddr,
                "reuseport": r.listener.flags.reuseport,
                "v6only": r.listener.v6only,
                "in_ephemeral_range": snap.allocation.is_ephemeral(r.endpoint.port),
                // Certain blockers among `restart_blockers` (the same list).
                "blockers": j.findings.iter().filter(|f| f.blocks == Tri::True).count(),
                // `verdict` is what `check PORT --restart` answers (the listener's own
                // SO_REUSEADDR); the other two are the new socket without / with it.
                "restart": { "verdict": r.restart.verdict, "without_reuseaddr": r.without_reuseaddr.verdict, "with_reuseaddr": r.with_reuseaddr.verdict },
                // What the restart (`verdict`) would meet, with each socket's flags.
                "restart_blockers": by_time_left(&j.findings).into_iter().map(|f| json!({
                    "state": f.socket.state_label(),
                    "local": endpoint_str(f.socket.local.ip(), f.socket.local.port()),
                    "remote": endpoint_str(f.socket.remote.ip(), f.socket.remote.port()),
                    "blocks": f.blocks,
                    "timer_seconds": f.remaining().map(|d| d.as_secs_f64()),
                    "reuseaddr": f.socket.flags.reuseaddr,
                    "reuseport": f.socket.flags.reuseport,
                })).collect::<Vec<_>>(),
                // What a new socket without SO_REUSEADDR (the -REUSE column) would meet.
                "without_reuseaddr_blockers": by_time_left(&r.without_reuseaddr.findings).into_iter().map(|f| json!({
                    "state": f.socket.state_label(),
                    "local": endpoint_str(f.socket.local.ip(), f.socket.local.port()),
                    "remote": endpoint_str(f.socket.remote.ip(), f.socket.remote.port()),
                    "blocks": f.blocks,
                    "timer_seconds": f.remaining().map(|d| d.as_secs_f64()),
                    "reuseaddr": f.socket.flags.reuseaddr,
                    "reuseport": f.socket.flags.reuseport,
                })).collect::<Vec<_>>(),
                "clear_seconds": j.clear_seconds(),
            })
        }).collect::<Vec<_>>(),
    })
}

pub fn ports_text(snap: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<28} {:<34} {:<9} {:<9} {:>8}  {:<8} {:<8} {:<8} NOTE",
        "PROTO",
        "ADDRESS",
        "HELD BY",
        "REUSEADDR",
        "REUSEPORT",
        "BLOCKERS",
        "RESTART",
        "-REUSE",
        "+REUSE",
    );
    for r in snap.risks.iter().filter(|r| !r.gone) {
        let j = &r.restart;
        let mut note = Vec::new();
        if let Some(s) = j.clear_seconds() {
            note.push(format!("clears in {s:.0} s"));
        }
        if snap.allocation.is_ephemeral(r.endpoint.port) {
            note.push("port inside ip_local_port_range".to_string());
        }
        // One row per listening socket: a SO_REUSEPORT group shows each member.
        let members = members(snap, r);
        let rows: Vec<&Socket> = if members.is_empty() {
            vec![&r.listener]
        } else {
            members
        };
        for s in rows {
            let _ = writeln!(
                out,
                "{:<5} {:<28} {:<34} {:<9} {:<9} {:>8}  {:<8} {:<8} {:<8} {}",
                r.endpoint.protocol.as_str(),
                endpoint_str(r.endpoint.address, r.endpoint.port),
                held_by(snap, s),
                s.flags.reuseaddr.as_str(),
                s.flags.reuseport.as_str(),
                j.blocking_count(),
                r.restart.verdict.as_str(),
                r.without_reuseaddr.verdict.as_str(),
                r.with_reuseaddr.verdict.as_str(),
                note.join("; "),
            );
        }
    }
    if !snap.risks.is_empty() {
        out.push_str("RESTART: a restart with the daemon's own SO_REUSEADDR (what `check PORT --restart` answers); -REUSE / +REUSE: a new socket without / with SO_REUSEADDR\n");
    }
    out.push_str(&watched_text(snap, None));
    if !snap.capabilities.owners || !snap.capabilities.socket_flags {
        out.push_str("note: some owners or flags are unknown: run as root (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH)\n");
    }
    out
}

/// `1.2.3.4:80`, `[::1]:80`.
fn endpoint_str(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Rule, Socket, State, Tri};

    fn finding(state: State, ms: Option<u64>) -> Finding {
        Finding {
            socket: Socket {
                expires_ms: ms,
                ..Socket::test(state, "127.0.0.1:80", "127.0.0.1:5000")
            },
            blocks: Tri::True,
            rule: Rule::NewWithoutReuseaddr,
            undecided_by: Vec::new(),
        }
    }

    #[test]
    fn blockers_come_longest_first_and_the_permanent_ones_before() {
        let fs = vec![
            finding(State::TimeWait, Some(47_000)),
            finding(State::Established, None),
            finding(State::FinWait2, Some(60_000)),
            finding(State::TimeWait, Some(3_000)),
        ];
        let order: Vec<Option<u64>> = by_time_left(&fs)
            .iter()
            .map(|f| f.socket.expires_ms)
            .collect();
        assert_eq!(order, vec![None, Some(60_000), Some(47_000), Some(3_000)]);
        assert_eq!(shown(300, false), SHOWN_MAX);
        assert_eq!(shown(300, true), 300);
        assert_eq!(shown(3, false), 3);
    }
}
