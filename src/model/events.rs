//! What the bind-failure tracer counts, as plain data: the errno of a refused call,
//! how a prediction fared, and the bounded counters behind the failure metrics.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Protocol;

/// The errors the program reports (its `errno` label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Errno {
    Eaddrinuse,
    Eacces,
    Eaddrnotavail,
}

impl Errno {
    pub fn from_ret(ret: i32) -> Option<Errno> {
        match -ret {
            libc::EADDRINUSE => Some(Errno::Eaddrinuse),
            libc::EACCES => Some(Errno::Eacces),
            libc::EADDRNOTAVAIL => Some(Errno::Eaddrnotavail),
            _ => None,
        }
    }

    /// The `errno` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Errno::Eaddrinuse => "eaddrinuse",
            Errno::Eacces => "eacces",
            Errno::Eaddrnotavail => "eaddrnotavail",
        }
    }

    /// The C name, for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Errno::Eaddrinuse => "EADDRINUSE",
            Errno::Eacces => "EACCES",
            Errno::Eaddrnotavail => "EADDRNOTAVAIL",
        }
    }
}

/// `bindwatch_bind_predictions_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Hit,
    Miss,
    Undecided,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Hit, Outcome::Miss, Outcome::Undecided];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Undecided => "undecided",
        }
    }
}

/// Counter keys.
pub type BindKey = (Option<String>, Protocol, u16, Errno, String);
pub type ConnectKey = (Option<String>, Protocol, Errno, String);

/// The counters behind the failure metrics, bounded like every per-port series.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub bind: BTreeMap<BindKey, u64>,
    pub connect: BTreeMap<ConnectKey, u64>,
    /// Failed unix binds: (netns label, errno, process) -> count (no port, no path).
    pub unix_bind: BTreeMap<(Option<String>, Errno, String), u64>,
    pub predictions: [u64; 3],
    /// Failures not counted because their series would pass the cap.
    pub dropped: u64,
    /// Events the BPF program could not put into its full ring buffer (any
    /// namespace, any kind), summed over CPUs.
    pub lost: u64,
}
