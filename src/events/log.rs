//! The pure half of the failure tracer: what a failure was blocked by, whether the
//! agent's prediction was right, the bounded log of recent failures and the
//! counters behind the metrics. No I/O: the loader feeds it events, sockets and
//! snapshots.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use super::decode::{Call, CallFlags, Errno, Event};
pub use crate::model::{BindKey, Blocker, ConnectKey, Counters, Failure, FlagsOut, Outcome};
use crate::model::{Owner, Protocol, Snapshot, Socket, Tri};
use crate::rebind::{self, Candidate, Judgement, Verdict};

/// Failures kept for `GET /failures`.
pub const LOG_CAPACITY: usize = 256;
/// Blockers listed per failure (the count says how many there were).
pub const BLOCKERS_MAX: usize = 64;

fn flags_out(f: &CallFlags) -> FlagsOut {
    FlagsOut {
        reuseaddr: Tri::from_bool(f.reuseaddr),
        reuseport: Tri::from_bool(f.reuseport),
        v6only: Tri::from_bool(f.v6only),
    }
}

/// The new socket the event describes, for the engine. `reuseaddr` is separate
/// because an unreadable socket leaves it unknown (the caller judges both).
fn candidate(e: &Event, protocol: Protocol, reuseaddr: bool) -> Candidate {
    let f = e.flags;
    Candidate {
        protocol,
        address: e.address,
        port: e.port,
        v6only: match (e.address, f) {
            (IpAddr::V4(_), _) => Tri::False,
            (_, Some(f)) => Tri::from_bool(f.v6only),
            (_, None) => Tri::Unknown,
        },
        reuseaddr,
        reuseport: f.map_or(Tri::Unknown, |f| Tri::from_bool(f.reuseport)),
        uid: e.uid,
        ifindex: f.map_or(0, |f| f.ifindex),
    }
}

/// Judges the event's socket against `sockets`: with its own SO_REUSEADDR, or, when
/// that could not be read, `Unknown` unless both values agree.
pub fn judge_event(e: &Event, protocol: Protocol, sockets: &[Socket]) -> Judgement {
    match e.flags {
        Some(f) => rebind::judge(&candidate(e, protocol, f.reuseaddr), sockets),
        None => {
            let off = rebind::judge(&candidate(e, protocol, false), sockets);
            let on = rebind::judge(&candidate(e, protocol, true), sockets);
            if off.verdict == on.verdict {
                off
            } else {
                Judgement {
                    verdict: Verdict::Unknown,
                    findings: off.findings,
                }
            }
        }
    }
}

/// The judgement the agent held in `snap` for the event's socket, or `None` when the
/// port was not one it watched (it then has no view of the port's sockets).
pub fn judgement_before(e: &Event, protocol: Protocol, snap: &Snapshot) -> Option<Judgement> {
    if !snap.ports.contains(&(protocol, e.port)) {
        return None;
    }
    let on_port: Vec<Socket> = snap
        .port_sockets
        .iter()
        .filter(|s| s.protocol == protocol && s.local.port() == e.port)
        .cloned()
        .collect();
    Some(judge_event(e, protocol, &on_port))
}

/// The verdict of [`judgement_before`].
pub fn verdict_before(e: &Event, protocol: Protocol, snap: &Snapshot) -> Option<Verdict> {
    judgement_before(e, protocol, snap).map(|j| j.verdict)
}

/// The warn line of a prediction miss: the call, the socket's options, the kernel's
/// answer, the verdict, and the sockets the verdict was made from.
pub fn miss_report(
    e: &Event,
    protocol: Protocol,
    process: &str,
    snap: &Snapshot,
    j: &Judgement,
) -> String {
    let flags = match e.flags {
        Some(f) => format!(
            "SO_REUSEADDR {}, SO_REUSEPORT {}, IPV6_V6ONLY {}, ifindex {}",
            on_off(Tri::from_bool(f.reuseaddr)),
            on_off(Tri::from_bool(f.reuseport)),
            on_off(Tri::from_bool(f.v6only)),
            f.ifindex
        ),
        None => "socket options unreadable".to_string(),
    };
    let answer = e.errno.map_or("success", Errno::name);
    let held: Vec<String> = snap
        .port_sockets
        .iter()
        .filter(|s| s.protocol == protocol && s.local.port() == e.port)
        .take(16)
        .map(|s| {
            format!(
                "{} {} -> {} uid {} reuseaddr {} reuseport {} v6only {} ifindex {:?} x{}",
                s.state_label(),
                s.local,
                s.remote,
                s.uid,
                s.flags.reuseaddr.as_str(),
                s.flags.reuseport.as_str(),
                s.v6only.as_str(),
                s.ifindex,
                s.count
            )
        })
        .collect();
    format!(
        "prediction miss (please report it with this line): {protocol} {}({}) by {process}[{}] uid {} with {flags}: the kernel answered {answer}, bindwatch {} had predicted {}; the sockets it judged ({} of them, table read at {}): [{}]",
        e.call.as_str(),
        SocketAddr::new(e.address, e.port),
        e.tgid,
        e.uid,
        env!("CARGO_PKG_VERSION"),
        j.verdict.as_str(),
        held.len(),
        rfc3339(snap.table_taken_at),
        held.join("; ")
    )
}

/// Scores a bind on a watched port against the verdict held before it.
/// `before` is what [`verdict_before`] gave; `blockers_only_bound` says the engine's
/// certain blockers were all bound but neither listening nor connected: for TCP the
/// kernel then refuses at listen(), so a successful bind() does not settle it.
pub fn score(
    before: Option<Verdict>,
    errno: Option<Errno>,
    protocol: Protocol,
    blockers_only_bound: bool,
) -> Option<Outcome> {
    let before = before?;
    Some(match (before, errno) {
        // The engine predicts EADDRINUSE only: other refusals do not test it.
        (_, Some(Errno::Eacces | Errno::Eaddrnotavail)) => Outcome::Undecided,
        (Verdict::Unknown, _) => Outcome::Undecided,
        (Verdict::Blocked, Some(Errno::Eaddrinuse)) => Outcome::Hit,
        (Verdict::Clear, None) => Outcome::Hit,
        (Verdict::Clear, Some(Errno::Eaddrinuse)) => Outcome::Miss,
        (Verdict::Blocked, None) if protocol == Protocol::Tcp && blockers_only_bound => {
            Outcome::Undecided
        }
        (Verdict::Blocked, None) => Outcome::Miss,
    })
}

/// Whether every certain blocker is a bound, non-listening, unconnected TCP socket.
pub fn blockers_only_bound(j: &Judgement) -> bool {
    let mut any = false;
    for f in j.blocking() {
        any = true;
        if !matches!(
            f.socket.state,
            crate::model::State::Close | crate::model::State::BoundInactive
        ) {
            return false;
        }
    }
    any
}

/// Gives sockets of a fresh dump what the agent knew of them: flags probed from their
/// owners (same inode in the last snapshot), else those of the listener they came from.
pub fn enrich(dumped: &mut [Socket], snap: Option<&Snapshot>) {
    let Some(snap) = snap else {
        return;
    };
    for s in dumped.iter_mut() {
        if s.inode == 0 {
            continue;
        }
        if let Some(known) = snap
            .port_sockets
            .iter()
            .find(|k| k.inode == s.inode && k.protocol == s.protocol)
        {
            s.flags.reuseaddr = s.flags.reuseaddr.or(known.flags.reuseaddr);
            s.flags.reuseport = s.flags.reuseport.or(known.flags.reuseport);
            s.v6only = s.v6only.or(known.v6only);
        }
    }
    let listeners: Vec<Socket> = snap.risks.iter().map(|r| r.listener.clone()).collect();
    rebind::inherit_from_listeners(dumped, &listeners);
}

/// Who holds `s`: its owner by inode, else (TIME_WAIT, orphans, children) the owner
/// of the listener it came from.
fn owner_of<'a>(s: &Socket, snap: Option<&'a Snapshot>) -> Option<&'a Owner> {
    let snap = snap?;
    if s.inode != 0 {
        if let Some(o) = snap.owners.get(&s.inode) {
            return Some(o);
        }
    }
    let listeners: Vec<Socket> = snap.risks.iter().map(|r| r.listener.clone()).collect();
    let parent = rebind::parent_listener(s, &listeners)?;
    snap.risks
        .iter()
        .find(|r| r.listener.local == parent.local && r.listener.protocol == parent.protocol)
        .and_then(|r| r.owner.as_ref())
}

/// Everything the loader learnt about one failed call.
pub struct Observed<'a> {
    pub event: &'a Event,
    pub protocol: Protocol,
    pub at: SystemTime,
    pub netns: String,
    /// `/proc/TGID/comm`, or the thread's comm when the process is gone.
    pub process: String,
    /// The port's sockets, dumped right after the event and enriched.
    pub sockets: &'a [Socket],
    /// The agent's last snapshot of the event's namespace.
    pub snapshot: Option<&'a Snapshot>,
}

/// Builds the failure record of a failed call (`errno` must be set).
pub fn explain(o: &Observed<'_>) -> Option<Failure> {
    let e = o.event;
    let errno = e.errno?;
    let verdict_before = o.snapshot.and_then(|s| verdict_before(e, o.protocol, s));
    let mut blockers = Vec::new();
    let mut total = 0u64;
    let mut clear_seconds = None;
    if errno == Errno::Eaddrinuse && e.call != Call::Connect {
        let j = judge_event(e, o.protocol, o.sockets);
        let certain: Vec<&rebind::Finding> = j.blocking().collect();
        total = j.blocking_count();
        if certain.iter().all(|f| f.remaining().is_some()) {
            clear_seconds = certain
                .iter()
                .filter_map(|f| f.remaining())
                .map(|d| d.as_secs_f64())
                .reduce(f64::max);
        }
        for f in certain.into_iter().take(BLOCKERS_MAX) {
            let s = &f.socket;
            blockers.push(Blocker {
                state: s.state_label(),
                local: s.local.to_string(),
                remote: s.remote.to_string(),
                owner: owner_of(s, o.snapshot).map(|o| o.process.clone()),
                held_by: o
                    .snapshot
                    .filter(|_| s.inode != 0)
                    .and_then(|snap| snap.holdings.get(&s.inode))
                    .and_then(crate::model::Holding::summary),
                flags: FlagsOut {
                    reuseaddr: s.flags.reuseaddr,
                    reuseport: s.flags.reuseport,
                    v6only: if s.local.is_ipv6() {
                        s.v6only
                    } else {
                        Tri::False
                    },
                },
                timer_seconds: f.remaining().map(|d| d.as_secs_f64()),
                why: f.rule.describe(),
            });
        }
    }
    Some(Failure {
        time: rfc3339(o.at),
        at: o.at,
        netns: o.netns.clone(),
        call: e.call,
        protocol: o.protocol,
        address: e.address.to_string(),
        port: e.port,
        errno,
        pid: e.tgid,
        process: o.process.clone(),
        uid: e.uid,
        flags: e.flags.as_ref().map(flags_out),
        verdict_before,
        blockers,
        blockers_total: total,
        clear_seconds,
    })
}

fn on_off(t: Tri) -> &'static str {
    match t {
        Tri::True => "on",
        Tri::False => "off",
        Tri::Unknown => "unknown",
    }
}

/// The warn log line of a failure, e.g. `bind(0.0.0.0:443) by nginx[1234] failed:
/// EADDRINUSE; 12 time_wait from nginx (SO_REUSEADDR off) blocked it; clear in 41 s`.
pub fn log_line(f: &Failure) -> String {
    let ip: IpAddr = f.address.parse().unwrap_or(crate::model::V4_ANY);
    let mut line = format!(
        "{}({}) by {}[{}] failed: {}",
        f.call.as_str(),
        SocketAddr::new(ip, f.port),
        f.process,
        f.pid,
        f.errno.name()
    );
    match (f.call, f.errno) {
        (Call::Connect, _) => line
            .push_str("; no free source port for this destination (net.ipv4.ip_local_port_range)"),
        (_, Errno::Eacces) => line.push_str(
            "; a port below net.ipv4.ip_unprivileged_port_start needs CAP_NET_BIND_SERVICE",
        ),
        (_, Errno::Eaddrnotavail) => {
            line.push_str("; the address is not one of this namespace's (or no free port)")
        }
        (_, Errno::Eaddrinuse) if f.blockers.is_empty() => {
            line.push_str("; no blocking socket was left a moment later")
        }
        (_, Errno::Eaddrinuse) => {
            // Group as "N state from owner (SO_REUSEADDR x)", most numerous first.
            let mut groups: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
            for b in &f.blockers {
                let owner = b.owner.as_deref().unwrap_or("unknown owner");
                *groups
                    .entry((b.state, owner, on_off(b.flags.reuseaddr)))
                    .or_default() += 1;
            }
            let listed = f.blockers.len() as u64;
            let mut parts: Vec<((&str, &str, &str), u64)> = groups.into_iter().collect();
            parts.sort_by_key(|p| std::cmp::Reverse(p.1));
            let text: Vec<String> = parts
                .iter()
                .map(|((state, owner, reuse), n)| {
                    format!("{n} {state} from {owner} (SO_REUSEADDR {reuse})")
                })
                .collect();
            line.push_str("; ");
            line.push_str(&text.join(", "));
            if f.blockers_total > listed {
                line.push_str(&format!(" and {} more", f.blockers_total - listed));
            }
            line.push_str(" blocked it");
            if let Some(s) = f.clear_seconds {
                line.push_str(&format!("; clear in {} s", s.ceil() as u64));
            }
        }
    }
    match f.verdict_before {
        Some(v) => line.push_str(&format!("; predicted {}", v.as_str())),
        None => line.push_str("; port not watched"),
    }
    line
}

/// Counters, the recent failures, and the caps.
#[derive(Debug, Clone)]
pub struct FailureLog {
    pub counters: Counters,
    pub recent: VecDeque<Failure>,
    /// `--ports.max`: distinct ports in the bind counter, and connect series.
    pub ports_max: usize,
    ports: BTreeSet<(Option<String>, Protocol, u16)>,
}

impl FailureLog {
    pub fn new(ports_max: usize) -> Self {
        FailureLog {
            counters: Counters::default(),
            recent: VecDeque::with_capacity(LOG_CAPACITY),
            ports_max,
            ports: BTreeSet::new(),
        }
    }

    /// Counts a failed call. `netns` is the label (`None` without `--netns all`).
    pub fn count(
        &mut self,
        netns: Option<&str>,
        call: Call,
        protocol: Protocol,
        port: u16,
        errno: Errno,
        process: &str,
    ) {
        let ns = netns.map(str::to_string);
        if call == Call::Connect {
            let key = (ns, protocol, errno, process.to_string());
            if self.counters.connect.contains_key(&key)
                || self.counters.connect.len() < self.ports_max
            {
                *self.counters.connect.entry(key).or_default() += 1;
            } else {
                self.counters.dropped += 1;
            }
            return;
        }
        let port_key = (ns.clone(), protocol, port);
        if !self.ports.contains(&port_key) {
            if self.ports.len() >= self.ports_max {
                self.counters.dropped += 1;
                return;
            }
            self.ports.insert(port_key);
        }
        *self
            .counters
            .bind
            .entry((ns, protocol, port, errno, process.to_string()))
            .or_default() += 1;
    }

    pub fn predicted(&mut self, o: Outcome) {
        let i = Outcome::ALL.iter().position(|x| *x == o).unwrap_or(2);
        self.counters.predictions[i] += 1;
    }

    /// Keeps `f`, forgetting the oldest beyond [`LOG_CAPACITY`].
    pub fn push(&mut self, f: Failure) {
        if self.recent.len() == LOG_CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(f);
    }
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    crate::timefmt::rfc3339_millis(t)
}

#[cfg(test)]
mod tests;
