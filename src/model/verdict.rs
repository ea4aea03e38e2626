//! The bind-conflict engine's answers as plain data: a [`Judgement`] is a [`Verdict`]
//! and the [`Finding`]s behind it. The engine that produces them is `rebind`.

use std::time::Duration;

use serde::Serialize;

use super::{Socket, Tri};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clear,
    Blocked,
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clear => "clear",
            Verdict::Blocked => "blocked",
            Verdict::Unknown => "unknown",
        }
    }

    /// The verdict of several answers together: one block blocks, else one "cannot
    /// tell" leaves it open, else (also for none at all) clear.
    pub fn worst(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut out = Verdict::Clear;
        for v in verdicts {
            match v {
                Verdict::Blocked => return Verdict::Blocked,
                Verdict::Unknown => out = Verdict::Unknown,
                Verdict::Clear => {}
            }
        }
        out
    }
}

/// Why an existing socket blocks the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A LISTEN socket on an overlapping address: SO_REUSEADDR never helps.
    Listening,
    /// The new socket lacks SO_REUSEADDR, so any socket on an overlapping address blocks.
    NewWithoutReuseaddr,
    /// The new socket has SO_REUSEADDR but the old one does not: both need it.
    OldWithoutReuseaddr,
    /// UDP: not both sockets have SO_REUSEADDR (nor SO_REUSEPORT with the same uid).
    UdpInUse,
}

impl Rule {
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Listening => "a listening socket on an overlapping address (SO_REUSEADDR never helps against LISTEN)",
            Rule::NewWithoutReuseaddr => "the new socket lacks SO_REUSEADDR, so any socket on an overlapping address blocks",
            Rule::OldWithoutReuseaddr => "this socket lacks SO_REUSEADDR (both old and new must set it)",
            Rule::UdpInUse => "UDP port in use on an overlapping address (exempt only if both set SO_REUSEADDR, or both SO_REUSEPORT with the same uid)",
        }
    }
}

/// One existing socket that blocks (or may block) the candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(skip)]
    pub socket: Socket,
    /// `True`: blocks; `Unknown`: blocks for some value of a flag nobody could see.
    pub blocks: Tri,
    pub rule: Rule,
    /// Names of the flags whose value decides, when `blocks` is unknown.
    pub undecided_by: Vec<&'static str>,
}

impl Finding {
    /// Time until this blocker goes away on its own (TIME_WAIT, orphans), if it will.
    pub fn remaining(&self) -> Option<Duration> {
        if self.socket.state.is_expiring() {
            self.socket.expires_ms.map(Duration::from_millis)
        } else {
            None
        }
    }
}

/// The engine's answer for one candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
}

impl Judgement {
    /// Seconds until every expiring blocker is gone; `None` when none blocks.
    pub fn clear_seconds(&self) -> Option<f64> {
        self.findings
            .iter()
            .filter_map(Finding::remaining)
            .map(|d| d.as_secs_f64())
            .reduce(f64::max)
    }

    /// The findings that certainly block.
    pub fn blocking(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.blocks == Tri::True)
    }

    /// Number of sockets that certainly block (folded entries count as many).
    pub fn blocking_count(&self) -> u64 {
        self.blocking().map(|f| u64::from(f.socket.count)).sum()
    }
}
