//! One failed call the bind-failure tracer saw, with what blocked it: the record the
//! tracer logs, `GET /failures` serves and the landing page shows.

use std::time::SystemTime;

use serde::Serialize;

use super::{Errno, Protocol, Tri, Verdict};

/// The system call an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Call {
    Bind,
    Listen,
    Connect,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Bind => "bind",
            Call::Listen => "listen",
            Call::Connect => "connect",
        }
    }
}

/// The socket options of a blocker or of the failing socket, as label-like strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlagsOut {
    pub reuseaddr: Tri,
    pub reuseport: Tri,
    pub v6only: Tri,
}

/// One socket that blocked the failing call, as captured right after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocker {
    pub state: &'static str,
    pub local: String,
    pub remote: String,
    /// The process holding it (or, for a socket without a file, the listener it came from).
    pub owner: Option<String>,
    /// Every process holding a blocking listener, as the agent's last poll saw them
    /// (`nginx[20367] root +2 workers`); `None` where the poll kept no holders.
    pub held_by: Option<String>,
    pub flags: FlagsOut,
    /// Seconds until it goes away on its own (TIME_WAIT, orphans).
    pub timer_seconds: Option<f64>,
    pub why: &'static str,
}

/// One failed call, with what blocked it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(skip)]
    pub at: SystemTime,
    pub netns: String,
    pub call: Call,
    pub protocol: Protocol,
    pub address: String,
    pub port: u16,
    pub errno: Errno,
    pub pid: u32,
    pub process: String,
    pub uid: u32,
    /// The caller's socket options at the time of the call; `None` when unreadable.
    pub flags: Option<FlagsOut>,
    /// What the agent predicted just before for a socket with these options:
    /// `clear`, `blocked`, `unknown`; `None` on a port it was not watching.
    pub verdict_before: Option<Verdict>,
    /// Certain blockers found a moment after the failure (at most `events::log::BLOCKERS_MAX`).
    pub blockers: Vec<Blocker>,
    pub blockers_total: u64,
    /// Seconds until every blocker has gone on its own; `None` when one never will.
    pub clear_seconds: Option<f64>,
}
