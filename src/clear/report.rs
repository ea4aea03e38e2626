//! The text and JSON of `clear`: the plan (every blocker: state, addresses, owner,
//! time left, destroyed or kept and why), what `--yes` did and the judgement after.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::plan::{self, Blocker, Decision, Item, Keep};
use super::{Judged, Report};
use crate::commands::{self, endpoint_str, Checked};
use crate::model::{Owner, State, Tri, Verdict};
use crate::source::destroy::Destroyed;

/// `stop pid 4242 (php-fpm), pid 4243 (php-fpm) or wait`; a listener or a bound
/// socket does not go away by waiting.
fn stop_hint(holders: &[Owner], state: State) -> String {
    let pids: Vec<String> = holders
        .iter()
        .map(|o| format!("pid {} ({})", o.pid, o.process))
        .collect();
    let wait = if matches!(state, State::Listen | State::Close | State::BoundInactive) {
        ""
    } else {
        " or wait"
    };
    format!("stop {}{wait}", pids.join(", "))
}

/// Why a blocker is kept, in the operator's words.
fn keep_text(k: &Keep, b: &Blocker, r: &Report) -> String {
    let Blocker::Socket { finding, holders } = b;
    match k {
        Keep::MayNotBlock => format!(
            "may block (decided by {}); only sockets that certainly block are destroyed",
            finding.undecided_by.join(", ")
        ),
        Keep::Held => format!(
            "held by {}: {}",
            holders
                .iter()
                .map(Owner::summary)
                .collect::<Vec<_>>()
                .join(", "),
            stop_hint(holders, finding.socket.state)
        ),
        Keep::HeldUnseen => format!(
            "held by a process bindwatch cannot see (socket inode {}; run as root, or it is in another pid namespace)",
            finding.socket.inode
        ),
        Keep::Live(_) => format!(
            "a {} socket without a file (a connection in a listener's accept queue, or not yet closed): not a leftover",
            finding.socket.state_label()
        ),
        Keep::NotTcp => "only TCP leftovers are destroyed".to_string(),
        Keep::FinWait1OldKernel => format!(
            "a FIN_WAIT1 orphan on {}: before Linux 6.11 a destroyed FIN_WAIT1 orphan may stay in the table for good; --force destroys it anyway",
            r.facts
                .kernel
                .map_or_else(|| "a kernel of unknown version".to_string(), |(a, b)| format!("Linux {a}.{b}"))
        ),
        Keep::NotExact => "no socket cookie (--source procfs): it cannot be named exactly; use --source netlink or bpf".to_string(),
    }
}

fn owner_text(b: &Blocker) -> String {
    let Blocker::Socket { finding, holders } = b;
    match holders.first() {
        Some(o) if holders.len() == 1 => o.summary(),
        Some(_) => format!("{} processes", holders.len()),
        None if finding.socket.inode == 0 => format!("no process (uid {})", finding.socket.uid),
        None => "owner unknown".to_string(),
    }
}

fn left_text(b: &Blocker) -> String {
    b.remaining()
        .map(|d| format!(", {:.1} s left", d.as_secs_f64()))
        .unwrap_or_default()
}

/// One blocker: a line with its state, tuple, owner and timer, one with the decision.
fn item_text(out: &mut String, i: &Item, r: &Report, before: bool) {
    let Blocker::Socket { finding, .. } = &i.blocker;
    let s = &finding.socket;
    let tag = match (&i.decision, before, finding.blocks) {
        (Decision::Destroy, true, _) => "DESTROY",
        (Decision::Destroy, false, _) | (Decision::Keep(_), _, Tri::True) => "BLOCKS ",
        _ => "MAYBE  ",
    };
    let _ = writeln!(
        out,
        "  {tag} {:<12} {} -> {}  {}{}",
        s.state_label(),
        endpoint_str(s.local.ip(), s.local.port()),
        endpoint_str(s.remote.ip(), s.remote.port()),
        owner_text(&i.blocker),
        left_text(&i.blocker),
    );
    // A socket to destroy needs no second line: no process holds it.
    if let Decision::Keep(k) = &i.decision {
        let _ = writeln!(out, "          kept: {}", keep_text(k, &i.blocker, r));
    } else if !before && r.error.is_some() {
        out.push_str("          no process holds it; not destroyed: see the error\n");
    } else if !before {
        out.push_str("          no process holds it: `clear --yes` again destroys it\n");
    }
}

fn judged_text(out: &mut String, j: &Judged, r: &Report, before: bool) {
    for c in &j.outcome.checked {
        let _ = writeln!(
            out,
            "{}: {}",
            what_text(j, c),
            commands::verdict_text(&c.judgement)
        );
    }
    for i in &j.items {
        item_text(out, i, r, before);
    }
}

/// What was judged, as `check` says it; a listener that is gone (judged from the
/// agent's memory) is named as remembered.
fn what_text(j: &Judged, c: &Checked) -> String {
    let remembered = c.listener.as_ref().and_then(|l| {
        let live = j.snap.listeners.iter().any(|x| x.socket.inode == l.inode);
        let risk = j.snap.risks.iter().find(|r| r.gone && r.listener == *l);
        risk.filter(|_| !live)
    });
    match remembered {
        Some(r) => format!(
            "restart of {} that listened on {} {} (gone; remembered by the agent)",
            r.owner
                .as_ref()
                .map_or_else(|| "the daemon".to_string(), Owner::summary),
            j.outcome.protocol,
            endpoint_str(r.listener.local.ip(), r.listener.local.port())
        ),
        None => commands::checked_what(&j.outcome, c, &j.snap),
    }
}

fn count(items: &[Item], destroy: bool) -> usize {
    items
        .iter()
        .filter(|i| (i.decision == Decision::Destroy) == destroy)
        .count()
}

/// The text report.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let before = &r.before;
    if before.verdict() == Verdict::Clear {
        judged_text(&mut out, before, r, true);
        out.push_str("nothing blocks: nothing to clear\n");
        return out;
    }
    judged_text(&mut out, before, r, true);
    let (destroy, keep) = (count(&before.items, true), count(&before.items, false));
    let then = match plan::verdict_after(&before.items) {
        Verdict::Clear => "the bind would then succeed",
        Verdict::Blocked => "the bind would still fail",
        Verdict::Unknown => "whether the bind would then succeed cannot be told",
    };
    let _ = writeln!(
        out,
        "plan: destroy {destroy} socket(s) no process holds, keep {keep}: {then}"
    );
    if !r.yes {
        if destroy > 0 {
            out.push_str("nothing changed: run again with --yes to destroy them\n");
        }
        return out;
    }
    let n = |want: Destroyed| r.applied.iter().filter(|a| a.result == want).count();
    let _ = write!(out, "destroyed {} socket(s)", n(Destroyed::Done));
    if n(Destroyed::Gone) > 0 {
        let _ = write!(out, ", {} were gone already", n(Destroyed::Gone));
    }
    if n(Destroyed::Replaced) > 0 {
        let _ = write!(
            out,
            ", {} left alone: another socket has taken their tuple",
            n(Destroyed::Replaced)
        );
    }
    if r.error.is_some() {
        out.push_str(" before an error stopped it");
    }
    out.push('\n');
    if let Some(after) = &r.after {
        out.push_str("judged again:\n");
        judged_text(&mut out, after, r, false);
    }
    out
}

fn item_json(i: &Item, r: &Report) -> Value {
    let Blocker::Socket {
        finding: f,
        holders,
    } = &i.blocker;
    let s = &f.socket;
    let (action, keep) = match &i.decision {
        Decision::Destroy => ("destroy", None),
        Decision::Keep(k) => ("keep", Some(k)),
    };
    json!({
        "kind": "socket",
        "protocol": s.protocol,
        "state": s.state_label(),
        "local": endpoint_str(s.local.ip(), s.local.port()),
        "remote": endpoint_str(s.remote.ip(), s.remote.port()),
        "uid": s.uid,
        "inode": s.inode,
        "cookie": s.cookie,
        "timer_seconds": i.blocker.remaining().map(|d| d.as_secs_f64()),
        "blocks": f.blocks,
        "rule": f.rule,
        "reason": f.rule.describe(),
        "holders": holders,
        "action": action,
        "keep_reason": keep.map(Keep::code),
        "why": keep.map(|k| keep_text(k, &i.blocker, r)),
    })
}

fn judged_json(j: &Judged, r: &Report) -> Value {
    json!({
        "verdict": j.verdict(),
        "checks": j.outcome.checked.iter().map(|c| json!({
            "address": c.candidate.address.to_string(),
            "reuseaddr": c.candidate.reuseaddr,
            "reuseport": c.candidate.reuseport,
            "listener": c.listener.as_ref().map(|l| endpoint_str(l.local.ip(), l.local.port())),
            "verdict": c.judgement.verdict,
            "clear_seconds": c.judgement.clear_seconds(),
        })).collect::<Vec<_>>(),
        "blockers": j.items.iter().map(|i| item_json(i, r)).collect::<Vec<_>>(),
    })
}

/// The `--json` document: the plan, and with `--yes` the result.
pub fn json(r: &Report) -> Value {
    let mut plan = judged_json(&r.before, r);
    plan["verdict_after_destroying"] = json!(plan::verdict_after(&r.before.items));
    let result = r.yes.then(|| {
        json!({
            "destroyed": r.applied.iter().map(|a| {
                let mut v = item_json(&r.before.items[a.item], r);
                v["result"] = json!(match a.result {
                    Destroyed::Done => "destroyed",
                    Destroyed::Gone => "gone",
                    Destroyed::Replaced => "replaced",
                });
                v
            }).collect::<Vec<_>>(),
            "error": r.error,
            "after": r.after.as_ref().map(|a| judged_json(a, r)),
        })
    });
    json!({
        "target": r.target,
        "mode": if r.before.outcome.restart { "restart" } else { "bind" },
        "kernel": r.facts.kernel.map(|(a, b)| format!("{a}.{b}")),
        "yes": r.yes,
        "plan": plan,
        "result": result,
        "exit_code": r.exit_code(),
    })
}
