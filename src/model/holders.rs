//! Who has a listening socket open, and what a restart does to them, as plain data.
//! The rule that decides which holders a restart stops is `rebind::holders`.

use serde::Serialize;

/// One process that has a socket open (one of its fds refers to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub ppid: u32,
    /// Process group and session (`/proc/PID/stat`): a forked worker shares its
    /// master's, a daemon that called `setsid()` leads its own.
    pub pgid: u32,
    pub sid: u32,
    /// `/proc/PID/comm`.
    pub process: String,
    pub uid: u32,
    pub user: String,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): tells a reused pid apart.
    pub start_time: u64,
    /// The systemd unit (a `.service` or `.scope` cgroup), when there is one.
    pub unit: Option<String>,
    /// The unit's cgroup path (up to and including the unit's own directory): what
    /// stopping the unit kills.
    #[serde(skip)]
    pub unit_cgroup: Option<String>,
}

impl Holder {
    /// `nginx[2036] nobody`.
    pub fn short(&self) -> String {
        format!("{}[{}] {}", self.process, self.pid, self.user)
    }

    /// Leads its own session or process group: a daemon after `setsid()`, a job
    /// started by a shell; a forked worker or child does neither.
    pub fn leads(&self) -> bool {
        self.pid == self.sid || self.pid == self.pgid
    }
}

/// The holders of one socket, as far as the scan got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Holders {
    /// Oldest first.
    pub list: Vec<Holder>,
    /// Every process's fd table was read (none refused, the scan ran to its end).
    pub complete: bool,
}

/// What a restart of the service leaves of one listening socket's holders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Survival {
    /// Nothing holds it any more (the listener is gone), or the restart stops every
    /// holder: the socket closes.
    #[default]
    Closed,
    /// These holders are outside what the restart stops: they keep the socket open.
    Survivors { holders: Vec<Holder>, why: String },
    /// It depends on something user space cannot see (whether children exit with
    /// their parent; whether a lone orphan is the daemon itself).
    Undecided {
        /// The holders that keep the socket open in the failing outcome.
        holders: Vec<Holder>,
        /// Both outcomes, named.
        why: String,
    },
}

/// The restart's view of one listener's holders: who holds it, which one is the
/// main holder, what stopping the service stops, and what survives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Holding {
    pub holders: Vec<Holder>,
    /// The holder whose parent is not a holder (the restarted daemon), when one
    /// can be named.
    pub main: Option<Holder>,
    /// Whether every process's fd table was read.
    pub complete: bool,
    pub survival: Survival,
}

impl Holding {
    /// `nginx[20367] root +2 workers`: the main holder and how many more hold it.
    pub fn summary(&self) -> Option<String> {
        let first = self.main.as_ref().or(self.holders.first())?;
        let more = self.holders.len().saturating_sub(1);
        let plural = |n: usize, one: &str, many: &str| {
            if n == 1 {
                one.to_string()
            } else {
                many.to_string()
            }
        };
        Some(match (more, &self.main) {
            (0, _) => first.short(),
            (n, Some(_)) => format!("{} +{n} {}", first.short(), plural(n, "worker", "workers")),
            (n, None) => format!("{} +{n} {}", first.short(), plural(n, "other", "others")),
        })
    }
}
