//! What `clear` would do, decided without I/O: for each blocker the rebind engine
//! found, destroy it or keep it, and why. Tested with tables.
//!
//! Safe to destroy is a socket that certainly blocks, that no process holds (no file)
//! and whose state only waits out a timer: TIME_WAIT, and the orphans FIN_WAIT2,
//! LAST_ACK, CLOSING and FIN_WAIT1. The kernel destroys those as their timers would,
//! a little earlier; nobody can read or write them any more. A FIN_WAIT1 orphan is
//! left alone on kernels before 6.11 (unless forced): there, destroying one could
//! leave it orphaned in the table for good (fixed by bac76cf89816).
//!
//! The plan is shaped for more than one kind of target: a [`Blocker`] is one thing in
//! the way (today a socket on the port), a [`Decision`] what happens to it.

use std::time::Duration;

use serde::Serialize;

use crate::model::{Finding, Owner, Protocol, Socket, State, Tri, Verdict};

/// What is being cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// The sockets that block a bind (or a restart) on a port.
    Port { protocol: Protocol, port: u16 },
}

/// One thing in the way of the target.
#[derive(Debug, Clone)]
pub enum Blocker {
    /// A socket the rebind engine found, with every process that holds it open.
    Socket {
        finding: Finding,
        holders: Vec<Owner>,
    },
}

impl Blocker {
    /// Time until it goes away on its own, if it will.
    pub fn remaining(&self) -> Option<Duration> {
        match self {
            Blocker::Socket { finding, .. } => finding.remaining(),
        }
    }

    /// Whether it certainly blocks (`True`), may block (`Unknown`).
    pub fn blocks(&self) -> Tri {
        match self {
            Blocker::Socket { finding, .. } => finding.blocks,
        }
    }
}

/// Why a blocker is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// The engine says it blocks only for some value of a flag nobody could read.
    MayNotBlock,
    /// A process holds it open (the holders are in the blocker).
    Held,
    /// It has a file, but no process was seen holding it (another pid namespace, or
    /// no privilege to read other processes' fds).
    HeldUnseen,
    /// No file, but a state that is not just waiting out a timer (a connection in a
    /// listener's accept queue, a half-closed connection).
    Live(State),
    /// Only TCP leftovers are ever destroyed.
    NotTcp,
    /// A FIN_WAIT1 orphan on a kernel before 6.11, without `--force`.
    FinWait1OldKernel,
    /// The socket source gave no cookie (`--source procfs`), or the entry stands for
    /// several sockets: it cannot be named exactly.
    NotExact,
}

impl Keep {
    pub fn code(&self) -> &'static str {
        match self {
            Keep::MayNotBlock => "may_not_block",
            Keep::Held => "held",
            Keep::HeldUnseen => "held_unseen",
            Keep::Live(_) => "live",
            Keep::NotTcp => "not_tcp",
            Keep::FinWait1OldKernel => "fin_wait1_old_kernel",
            Keep::NotExact => "not_exact",
        }
    }
}

/// What `clear --yes` does with a blocker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Destroy,
    Keep(Keep),
}

/// One blocker and its decision.
#[derive(Debug, Clone)]
pub struct Item {
    pub blocker: Blocker,
    pub decision: Decision,
}

/// What the plan may rely on about the machine and the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// The running kernel's (major, minor), when its release could be parsed.
    pub kernel: Option<(u32, u32)>,
    /// `--force`: FIN_WAIT1 orphans also on kernels without the fix.
    pub force: bool,
}

/// The first kernel whose destroyed FIN_WAIT1 orphans really go.
pub const FIN_WAIT1_FIXED: (u32, u32) = (6, 11);
/// The first kernel that destroys TIME_WAIT sockets.
pub const TIME_WAIT_DESTROY: (u32, u32) = (6, 0);

/// `6.18.44-fc-v1272` -> (6, 18). Pure.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor_text: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor_text.parse().ok()?))
}

/// The decision for one socket the engine found. Pure.
pub fn decide_socket(f: &Finding, holders: &[Owner], facts: Facts) -> Decision {
    let s: &Socket = &f.socket;
    let keep = if f.blocks != Tri::True {
        Some(Keep::MayNotBlock)
    } else if s.inode != 0 {
        Some(if holders.is_empty() {
            Keep::HeldUnseen
        } else {
            Keep::Held
        })
    } else if s.protocol != Protocol::Tcp {
        Some(Keep::NotTcp)
    } else if !matches!(
        s.state,
        State::TimeWait | State::FinWait2 | State::LastAck | State::Closing | State::FinWait1
    ) {
        Some(Keep::Live(s.state))
    } else if s.state == State::FinWait1
        && !facts.force
        && facts.kernel.is_none_or(|k| k < FIN_WAIT1_FIXED)
    {
        Some(Keep::FinWait1OldKernel)
    } else if s.cookie == 0 || s.count != 1 {
        Some(Keep::NotExact)
    } else {
        None
    };
    keep.map_or(Decision::Destroy, Decision::Keep)
}

/// Every blocker with its decision; a socket found by several judgements (several
/// listeners restarted) is listed once. Pure.
pub fn plan_sockets<'a>(
    findings: impl IntoIterator<Item = &'a Finding>,
    holders_of: impl Fn(&Socket) -> Vec<Owner>,
    facts: Facts,
) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    for f in findings {
        let dup = items.iter_mut().find_map(|i| match &mut i.blocker {
            Blocker::Socket { finding, .. } if same_socket(&finding.socket, &f.socket) => {
                Some(finding)
            }
            _ => None,
        });
        if let Some(seen) = dup {
            // Blocking one of the judgements is blocking.
            if f.blocks == Tri::True && seen.blocks != Tri::True {
                *seen = f.clone();
            }
            continue;
        }
        let holders = holders_of(&f.socket);
        items.push(Item {
            blocker: Blocker::Socket {
                finding: f.clone(),
                holders,
            },
            decision: Decision::Keep(Keep::MayNotBlock),
        });
    }
    for i in &mut items {
        i.decision = match &i.blocker {
            Blocker::Socket { finding, holders } => decide_socket(finding, holders, facts),
        };
    }
    items
}

fn same_socket(a: &Socket, b: &Socket) -> bool {
    a.protocol == b.protocol
        && a.state == b.state
        && a.local == b.local
        && a.remote == b.remote
        && a.cookie == b.cookie
        && a.inode == b.inode
}

/// The verdict once every `Destroy` is done, if the rest stays as it is: what
/// `clear --yes` should reach. Pure.
pub fn verdict_after(items: &[Item]) -> Verdict {
    Verdict::worst(
        items
            .iter()
            .filter(|i| i.decision != Decision::Destroy)
            .map(|i| match i.blocker.blocks() {
                Tri::True => Verdict::Blocked,
                _ => Verdict::Unknown,
            }),
    )
}

#[cfg(test)]
mod tests;
