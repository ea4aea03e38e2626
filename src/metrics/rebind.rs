//! The rebind families: per remembered endpoint, whether a restart now would fail
//! (by the new socket's SO_REUSEADDR), whether that is undecided, when it clears,
//! and the sockets that block it.

use std::collections::{BTreeMap, BTreeSet};

use super::b;
use super::writer::Writer;
use crate::model::{Protocol, Snapshot, Verdict};

/// (address, port) label values of each risk, in `s.risks` order.
type LabelSets = [(String, String)];

/// Every rebind family of one snapshot, in exposition order.
pub(super) fn render_rebind(w: &mut Writer, s: &Snapshot) {
    let label_sets: Vec<(String, String)> = s
        .risks
        .iter()
        .map(|r| (r.endpoint.address.to_string(), r.endpoint.port.to_string()))
        .collect();
    render_blocked(w, s, &label_sets);
    render_undecided(w, s, &label_sets);
    render_clear_seconds(w, s, &label_sets);
    render_blocking_sockets(w, s);
}

/// `bindwatch_rebind_blocked`, absent where undecided.
fn render_blocked(w: &mut Writer, s: &Snapshot, label_sets: &LabelSets) {
    w.family(
        "bindwatch_rebind_blocked",
        "gauge",
        "1 when a restart of the listener on address:port now would fail with EADDRINUSE, 0 when it would succeed; by whether the new socket sets SO_REUSEADDR. Absent when undecided.",
    );
    for (r, (addr, port)) in s.risks.iter().zip(label_sets) {
        for (reuse, j) in [("false", &r.without_reuseaddr), ("true", &r.with_reuseaddr)] {
            if j.verdict != Verdict::Unknown {
                w.sample(
                    "bindwatch_rebind_blocked",
                    &[
                        ("protocol", r.endpoint.protocol.as_str()),
                        ("address", addr),
                        ("port", port),
                        ("reuseaddr", reuse),
                    ],
                    b(j.verdict == Verdict::Blocked),
                );
            }
        }
    }
}

/// `bindwatch_rebind_undecided`.
fn render_undecided(w: &mut Writer, s: &Snapshot, label_sets: &LabelSets) {
    w.family(
        "bindwatch_rebind_undecided",
        "gauge",
        "1 when whether a restart would fail depends on a socket flag nobody could read, or on whether the listening socket's other holders outlive the restart (see bindwatch check).",
    );
    for (r, (addr, port)) in s.risks.iter().zip(label_sets) {
        for (reuse, j) in [("false", &r.without_reuseaddr), ("true", &r.with_reuseaddr)] {
            w.sample(
                "bindwatch_rebind_undecided",
                &[
                    ("protocol", r.endpoint.protocol.as_str()),
                    ("address", addr),
                    ("port", port),
                    ("reuseaddr", reuse),
                ],
                b(j.verdict == Verdict::Unknown),
            );
        }
    }
}

/// `bindwatch_rebind_clear_seconds`, for the listener's own SO_REUSEADDR.
fn render_clear_seconds(w: &mut Writer, s: &Snapshot, label_sets: &LabelSets) {
    w.family(
        "bindwatch_rebind_clear_seconds",
        "gauge",
        "Seconds until every expiring socket (TIME_WAIT, orphans) that blocks a restart with the listener's own SO_REUSEADDR is gone.",
    );
    for (r, (addr, port)) in s.risks.iter().zip(label_sets) {
        if let Some(secs) = r.restart.clear_seconds() {
            w.sample(
                "bindwatch_rebind_clear_seconds",
                &[
                    ("protocol", r.endpoint.protocol.as_str()),
                    ("address", addr),
                    ("port", port),
                ],
                secs,
            );
        }
    }
}

/// `bindwatch_rebind_blocking_sockets`, each socket counted once per port.
fn render_blocking_sockets(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_rebind_blocking_sockets",
        "gauge",
        "Sockets that would block a restart of the port's listener with its own SO_REUSEADDR, by state.",
    );
    // A socket can block the restarts of several endpoints on one port: count it once.
    type Blocker = (
        std::net::SocketAddr,
        std::net::SocketAddr,
        &'static str,
        u64,
        u32,
    );
    let mut blockers: BTreeMap<(Protocol, u16), BTreeSet<Blocker>> = BTreeMap::new();
    for r in &s.risks {
        let set = blockers
            .entry((r.endpoint.protocol, r.endpoint.port))
            .or_default();
        for f in r.restart.blocking() {
            let sk = &f.socket;
            set.insert((sk.local, sk.remote, sk.state_label(), sk.inode, sk.count));
        }
    }
    for ((p, port), set) in &blockers {
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, _, st, _, count) in set {
            *by_state.entry(st).or_default() += u64::from(*count);
        }
        let ps = port.to_string();
        for (st, n) in by_state {
            w.sample(
                "bindwatch_rebind_blocking_sockets",
                &[("protocol", p.as_str()), ("port", &ps), ("state", st)],
                n as f64,
            );
        }
    }
}
