//! Scoring the agent's prediction against a real bind (pure). The tracer sees the
//! bind (and its errno); the prediction was made from the last snapshot, up to a
//! poll older. Sockets die in between (the daemon being restarted closed its
//! listener a moment before binding again; TIME_WAITs run out), so a bind is judged
//! against the sockets that still existed at that moment:
//!
//! - A socket of the snapshot is **proven gone** when a dump of the port taken right
//!   after the bind does not have it (same local and remote address and the same
//!   cookie, else inode, else state; a folded entry: no socket left in its state on
//!   its address), or, with no dump, when it is a TIME_WAIT or orphan whose own
//!   timer ran out before the bind. Proven-gone sockets are dropped and the bind's
//!   socket is judged against the rest.
//! - **hit**: that judgement is what the kernel answered (blocked and EADDRINUSE,
//!   clear and success).
//! - **miss**: it is not, on evidence that was still there: a "blocked" whose every
//!   certain blocker the dump after the bind still shows, yet the bind succeeded;
//!   or a "clear" and EADDRINUSE where some socket the failure was blocked by was
//!   in the snapshot (or no dump could be taken).
//! - **undecided**: the judgement was "cannot tell"; the call failed with another
//!   errno (EACCES, EADDRNOTAVAIL: not the engine's question); a "blocked" whose
//!   blockers could be neither confirmed nor proven gone (no dump); a "blocked"
//!   that rested only on bound, non-listening sockets (TCP refuses those at
//!   `listen()`, not `bind()`); a "clear" and EADDRINUSE where every socket the
//!   failure was blocked by appeared after the snapshot.
//!
//! A bind on a port that was not a port of interest (a listener that lived and
//! died between two polls, TIME_WAITs on a port nobody listens on) fails against
//! sockets the agent did not keep; it is judged against the sockets of the
//! failure's dump that provably existed when the last table walk ran (a TIME_WAIT
//! is created 60 s before its timer ends), and scored a hit when those block. A
//! success there, or blockers younger than the walk, is not scored.

use std::time::{SystemTime, UNIX_EPOCH};

use super::decode::{Errno, Event};
use super::log::{blockers_only_bound, judge_event};
use crate::model::{Judgement, Outcome, Protocol, Snapshot, Socket, Verdict};
use crate::rebind::memory::{existed_at, Clock, TIMER_SLACK};

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whether the dump `after` still has `s`.
pub fn present(s: &Socket, after: &[Socket]) -> bool {
    after.iter().any(|d| {
        if d.protocol != s.protocol || d.local != s.local {
            return false;
        }
        if s.count > 1 {
            return d.state == s.state;
        }
        if d.remote != s.remote {
            return false;
        }
        if s.cookie != 0 && d.cookie != 0 {
            s.cookie == d.cookie
        } else if s.inode != 0 && d.inode != 0 {
            s.inode == d.inode
        } else {
            d.state == s.state
        }
    })
}

/// Whether `s`, read at `read_at`, certainly no longer existed at `at`.
pub fn gone_at(s: &Socket, read_at: SystemTime, at: SystemTime, after: Option<&[Socket]>) -> bool {
    if let Some(after) = after {
        return !present(s, after);
    }
    match (s.state.is_expiring(), s.expires_ms) {
        (true, Some(ms)) => unix(read_at) + ms as f64 / 1000.0 + TIMER_SLACK < unix(at),
        _ => false,
    }
}

/// A scored bind: the outcome and the judgement it rests on.
#[derive(Debug, Clone)]
pub struct Scored {
    pub outcome: Outcome,
    pub judgement: Judgement,
}

/// Scores the bind `e` (at `at`) against the agent's snapshot; `after` is a dump
/// of the port taken right after it, when one could be taken. `None`: not scored.
pub fn score_bind(
    e: &Event,
    protocol: Protocol,
    snap: &Snapshot,
    at: SystemTime,
    after: Option<&[Socket]>,
) -> Option<Scored> {
    if !snap.ports.contains(&(protocol, e.port)) {
        return score_unwatched(e, protocol, snap, after);
    }
    let kept: Vec<Socket> = snap
        .port_sockets
        .iter()
        .filter(|s| s.protocol == protocol && s.local.port() == e.port)
        .filter(|s| {
            let read_at = if s.is_listener() {
                snap.taken_at
            } else {
                snap.table_taken_at
            };
            !gone_at(s, read_at, at, after)
        })
        .cloned()
        .collect();
    let j = judge_event(e, protocol, &kept);
    let outcome = match (j.verdict, e.errno) {
        (_, Some(Errno::Eacces | Errno::Eaddrnotavail)) => Outcome::Undecided,
        (Verdict::Unknown, _) => Outcome::Undecided,
        (Verdict::Blocked, Some(Errno::Eaddrinuse)) | (Verdict::Clear, None) => Outcome::Hit,
        (Verdict::Blocked, None) => {
            let confirmed = after.is_some_and(|a| j.blocking().all(|f| present(&f.socket, a)));
            if protocol == Protocol::Tcp && blockers_only_bound(&j) || !confirmed {
                Outcome::Undecided
            } else {
                Outcome::Miss
            }
        }
        (Verdict::Clear, Some(Errno::Eaddrinuse)) => match after {
            // The failure's blockers: were any of them in the snapshot?
            Some(a) => {
                let failure = judge_event(e, protocol, a);
                let known = failure.findings.iter().any(|f| {
                    kept.iter()
                        .any(|k| present(&f.socket, std::slice::from_ref(k)))
                });
                if known || failure.findings.is_empty() {
                    Outcome::Miss
                } else {
                    Outcome::Undecided
                }
            }
            None => Outcome::Miss,
        },
    };
    Some(Scored {
        outcome,
        judgement: j,
    })
}

/// A failed bind on a port the agent did not keep sockets of: a hit when the
/// failure's dump has blockers that provably existed at the last table walk.
fn score_unwatched(
    e: &Event,
    protocol: Protocol,
    snap: &Snapshot,
    after: Option<&[Socket]>,
) -> Option<Scored> {
    if e.errno != Some(Errno::Eaddrinuse) {
        return None;
    }
    let after = after?;
    let clock = Clock {
        now: unix(SystemTime::now()),
        // 0: a FIN_WAIT2's timer proves nothing here (the sysctl may be lower than
        // its default); TIME_WAIT's 60 s is the kernel's constant.
        fin_timeout: 0.0,
        previous_poll: None,
    };
    let walked = unix(snap.table_taken_at);
    let old: Vec<Socket> = after
        .iter()
        .filter(|s| s.protocol == protocol && s.local.port() == e.port)
        .filter(|s| existed_at(s, &clock) <= walked)
        .cloned()
        .collect();
    let j = judge_event(e, protocol, &old);
    (j.verdict == Verdict::Blocked).then_some(Scored {
        outcome: Outcome::Hit,
        judgement: j,
    })
}

#[cfg(test)]
mod tests;
