//! When may the agent's memory of a listener decide a leftover's flags? Pure: the
//! remembered listener generations, one leftover and the clock in; the flags it
//! provably (or, in one named case, presumably) has out, or why it cannot tell.
//!
//! Without BPF nobody can read the SO_REUSEADDR, SO_REUSEPORT or IPV6_V6ONLY of a
//! socket that has no file (TIME_WAIT, orphans). Copying them from "the listener last
//! seen on that endpoint" is wrong whenever the leftover came from another listener:
//! one that lived and died between two polls, one that a dead agent's state file never
//! heard of, an older generation. A wrong "would succeed" is the worst answer bindwatch
//! can give, so memory decides only where a rule below says so, and the flag stays
//! unknown otherwise.
//!
//! # Generations
//! A [`Generation`] is one listening socket (its inode) on one endpoint, with the
//! first and last time a poll saw it and the first poll that saw it gone. A restart
//! makes a new generation; an SO_REUSEPORT group is several at once.
//!
//! # When a leftover existed
//! [`existed_at`] gives a moment at which the leftover `L` certainly existed (it
//! exists now, and has existed without a break since it was created):
//! - TIME_WAIT: the kernel arms its timer at `TCP_TIMEWAIT_LEN` (60 s, a constant of
//!   the kernel, `include/net/tcp.h`) when the socket enters TIME_WAIT, so it was
//!   created at `now - (60 s - remaining)`. A timer re-armed by a retransmitted FIN
//!   only makes it look younger, which is still a moment it existed.
//! - FIN_WAIT2 without a file: the timewait socket's timer is `tcp_fin_timeout`,
//!   raised to 3.5 RTO on slow paths (`tcp_fin_time()`); the sysctl is the lower
//!   bound, so `now - (tcp_fin_timeout - remaining)` is a moment it existed unless
//!   the daemon lowered it per socket with `TCP_LINGER2` (not modelled). A
//!   remaining time above the sysctl (the orphan's keepalive phase) gives `now`.
//! - Everything else (orphans in FIN_WAIT1, CLOSING, LAST_ACK; sockets with a
//!   file): only `now`.
//!
//! A small allowance ([`TIMER_SLACK`]) moves the estimate later, never earlier:
//! the timer is kept in jiffies and reported in milliseconds.
//!
//! A connection that the server closed first and the peer later sits in FIN_WAIT2
//! and enters TIME_WAIT (its timer restarting) only when the peer's FIN comes, maybe
//! long after the listener closed. Its timer then says nothing useful; its socket
//! cookie does: sock_diag reports the same cookie for a connection, its FIN_WAIT2
//! and its TIME_WAIT (`inet_twsk_alloc` copies it), so a leftover whose cookie was
//! read while the listener was certainly listening existed then.
//!
//! # The rule
//! A generation `G` is a possible parent of `L` when it is on `L`'s port and on
//! `L`'s address or its family's wildcard (a v4-mapped `L` never belongs to a
//! `[::]` listener that is, or may be, V6ONLY). `G` is **exclusive** when it
//! certainly lacks SO_REUSEPORT and is bound to no device: then no other socket can
//! bind an overlapping address while `G` is bound (`inet_csk_get_port`): everything
//! that shares the port with `G` either was there before `G`'s bind, which the
//! kernel allowed only if both had SO_REUSEADDR, or is `G`'s own accepted child,
//! which copies `G`'s flags (`sk_clone_lock`); connect() never autobinds to a port
//! with a listener's bind bucket (`__inet_hash_connect`).
//!
//! 1. **Coexisted (proof).** `existed_at(L) <= G.last_seen` for an exclusive `G`
//!    (first seen no later than the sockets were read), or `L`'s cookie is among
//!    `G`'s children (a single socket, not a folded entry):
//!    `L` and `G` were bound at the same time, so `L.reuseaddr == G.reuseaddr`.
//!    If `G` lacks SO_REUSEADDR nothing could have been there before it, so `L` is
//!    its child and also has `G`'s SO_REUSEPORT and V6ONLY; if `G` has it, `L` may
//!    be an older socket that also had it, and its other flags stay unknown.
//! 2. **Death window (trust).** `G.last_seen < existed_at(L) <= end`, where `end`
//!    is the first poll that saw `G` gone (the next poll: one interval plus the
//!    poll's own time; capped at two intervals plus a second, and at that cap when
//!    no poll saw it gone, e.g. the writer stopped): the usual leftovers of a
//!    daemon that died between two polls. `L` is
//!    taken for `G`'s (exclusive `G` only; flags as in rule 1). This is the one
//!    place memory trusts rather than proves: a listener that came *and went*
//!    within that same interval would go unseen. Its size is the poll interval.
//! 3. **Anything later** cannot be trusted to `G`: another listener may have come
//!    and gone unseen after `G`'s last sighting. A child of `G` kept alive by a
//!    forked process after `G` closed is linked to `G` only by its cookie (rule 1:
//!    a table walk read the connection while `G` was certainly listening); a timer
//!    alone cannot link it (a TIME_WAIT names no process), so it stays unknown.
//! 4. **Shared or unknown generations** (SO_REUSEPORT set or unknown, a bound or
//!    unknown device, unknown SO_REUSEADDR) prove nothing: an unseen member of the
//!    group may have had other flags. One exception follows from the bind rules: a
//!    SO_REUSEPORT `G` without SO_REUSEADDR that coexisted with `L` means `L` had
//!    SO_REUSEPORT (it can only have joined the group, or be a child).
//! 5. Several generations may claim `L` (restarts, groups): a flag is decided only
//!    when every claim that decides it agrees; proofs beat trust.
//!
//! A leftover on a remembered port that no generation explains is a sign of a
//! listener the agent missed ([`Outcome::Unexplained`]): the agent counts it and
//! polls sooner.

use std::borrow::Borrow;
use std::net::IpAddr;

use crate::model::{Protocol, Socket, State, Tri};

/// `TCP_TIMEWAIT_LEN` in seconds (`include/net/tcp.h`), not a sysctl.
pub const TIME_WAIT_LEN: f64 = 60.0;

/// Bound of the death window in poll intervals (see [`Generation::window_end`]).
pub const DEATH_WINDOW_INTERVALS: f64 = 2.0;

/// Seconds added to a timer-based creation estimate: jiffies, millisecond rounding
/// and the time between the kernel's dump and our clock reading.
pub const TIMER_SLACK: f64 = 0.05;

/// One listening socket as remembered: the listener (with its flags as seen) and
/// when it was seen. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub listener: Socket,
    pub first_seen: f64,
    pub last_seen: f64,
    /// The first poll that no longer saw it, once one has.
    pub gone_at: Option<f64>,
    /// The poll interval of whoever saw it last (bounds the death window).
    pub interval: f64,
    /// Cookies of sockets on addresses it may parent, read by a table walk during
    /// which it was certainly listening (seen by a listener dump before and after
    /// the walk). Sorted; capped at [`CHILDREN_MAX`].
    pub children: Vec<u64>,
}

/// Cookies remembered per generation; beyond that, leftovers are judged by their
/// timers alone (fewer proofs, never a wrong one).
pub const CHILDREN_MAX: usize = 4096;

impl Generation {
    /// No other listener can share its addresses while it is bound.
    pub fn exclusive(&self) -> bool {
        self.listener.flags.reuseport == Tri::False && self.listener.ifindex == Some(0)
    }

    /// The end of the death window (rule 2): the first poll that saw it gone, but
    /// never later than [`DEATH_WINDOW_INTERVALS`] intervals plus a second after its
    /// last sighting (a poll takes time; a stalled poller must not stretch it).
    pub fn window_end(&self) -> f64 {
        let cap = self.last_seen + DEATH_WINDOW_INTERVALS * self.interval.max(0.0) + 1.0;
        self.gone_at.map_or(cap, |g| g.min(cap))
    }

    /// Whether `l` may have been accepted from this listener (same port, its
    /// address or the wildcard of its family).
    pub fn may_parent(&self, l: &Socket) -> bool {
        self.may_parent_at(l.protocol, l.local.ip(), l.local.port())
    }

    /// [`Generation::may_parent`] for a socket on `la`:`port`.
    pub fn may_parent_at(&self, protocol: Protocol, la: IpAddr, port: u16) -> bool {
        let g = &self.listener;
        if g.protocol != protocol || g.local.port() != port {
            return false;
        }
        let ga = g.local.ip();
        if ga == la {
            return true;
        }
        if !ga.is_unspecified() || ga.is_ipv6() != la.is_ipv6() {
            return false;
        }
        // A v4-mapped child only comes from a dual-stack [::] listener.
        !(is_mapped(la) && g.v6only != Tri::False)
    }
}

fn is_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some())
}

/// What the reader knows about time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    /// When the sockets were read (Unix seconds).
    pub now: f64,
    /// `net.ipv4.tcp_fin_timeout` in seconds.
    pub fin_timeout: f64,
    /// The previous poll (Unix seconds), to tell leftovers created since.
    pub previous_poll: Option<f64>,
}

/// A moment (Unix seconds) at which `l` certainly existed; see the module docs.
pub fn existed_at(l: &Socket, clock: &Clock) -> f64 {
    let remaining = l.expires_ms.map(|ms| ms as f64 / 1000.0);
    let created = match (l.state, remaining) {
        (State::TimeWait, Some(r)) => clock.now - (TIME_WAIT_LEN - r),
        (State::FinWait2, Some(r)) if l.inode == 0 && r <= clock.fin_timeout => {
            clock.now - (clock.fin_timeout - r)
        }
        _ => clock.now,
    };
    (created + TIMER_SLACK).min(clock.now)
}

/// When the creation of `l` is known from its timer: whether it was created after
/// the previous poll (a new leftover), for counting each leftover once.
pub fn created_since_previous_poll(l: &Socket, clock: &Clock) -> bool {
    let timed = matches!(l.state, State::TimeWait | State::FinWait2)
        && l.inode == 0
        && l.expires_ms.is_some();
    timed
        && clock
            .previous_poll
            .is_some_and(|p| existed_at(l, clock) - TIMER_SLACK > p)
}

/// How a generation vouches for a leftover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Rule 1: they were bound at the same time.
    Coexisted,
    /// Rule 2: created in the poll interval in which the listener vanished.
    DeathWindow,
}

/// The flags a leftover gets from memory (`Unknown` where nothing decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inherited {
    pub reuseaddr: Tri,
    pub reuseport: Tri,
    pub v6only: Tri,
    /// The strongest basis among the claims that decided something.
    pub basis: Basis,
}

/// What memory says about one leftover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not a leftover memory is asked about (a listener, UDP, every flag known).
    NotAsked,
    /// No generation is a possible parent: nothing is remembered for it.
    NoMemory,
    /// Memory decides at least one flag.
    Inherited(Inherited),
    /// Generations could have been its parent but none may vouch for it (rule 3
    /// or 4), or they disagree: the flags stay unknown.
    Unexplained,
}

/// The flags one generation vouches for, per the table in the module docs.
fn claim(g: &Generation, l: &Socket, at: f64, clock_now: f64) -> Option<(Basis, Tri, Tri, Tri)> {
    let gl = &g.listener;
    // Coexistence also needs the leftover to have been there once the generation
    // was: a table view older than its first sighting proves nothing.
    // The times first: they decide most live listeners' children without the
    // search (per leftover and per possible parent, at 100k sockets a few
    // million instructions a poll).
    let coexisted = (at <= g.last_seen && g.first_seen <= clock_now)
        || (l.cookie != 0 && l.count == 1 && g.children.binary_search(&l.cookie).is_ok());
    let basis = if coexisted {
        Basis::Coexisted
    } else if at > g.last_seen && at <= g.window_end() {
        Basis::DeathWindow
    } else {
        return None;
    };
    let v6only = |child: bool| {
        if !child || !l.local.ip().is_ipv6() {
            Tri::Unknown
        } else if is_mapped(l.local.ip()) {
            // A mapped address cannot be bound V6ONLY.
            Tri::False
        } else {
            gl.v6only
        }
    };
    if g.exclusive() {
        return match gl.flags.reuseaddr {
            // Nothing could share the port before it: L is its child.
            Tri::False => Some((basis, Tri::False, Tri::False, v6only(true))),
            Tri::True => Some((basis, Tri::True, Tri::Unknown, Tri::Unknown)),
            Tri::Unknown => None,
        };
    }
    let unbound = gl.ifindex == Some(0);
    if unbound && gl.flags.reuseport == Tri::True && gl.flags.reuseaddr == Tri::False {
        // Only group members (SO_REUSEPORT) or children could share it.
        return Some((basis, Tri::Unknown, Tri::True, Tri::Unknown));
    }
    None
}

/// Merges two claims on one flag: `Unknown` decides nothing; a disagreement
/// between two deciding claims leaves it unknown (`None`).
fn merge(a: Tri, b: Tri) -> Option<Tri> {
    match (a, b) {
        (Tri::Unknown, x) | (x, Tri::Unknown) => Some(x),
        (x, y) if x == y => Some(x),
        _ => None,
    }
}

/// What memory says about `l`, given every remembered generation of its port.
/// Generations may be given owned or borrowed (`&[&Generation]`): the collector
/// groups its memory per port without copying it.
pub fn attribute<G: Borrow<Generation>>(l: &Socket, generations: &[G], clock: &Clock) -> Outcome {
    if l.protocol != Protocol::Tcp || l.state == State::Listen {
        return Outcome::NotAsked;
    }
    let wants = l.flags.reuseaddr == Tri::Unknown
        || l.flags.reuseport == Tri::Unknown
        || (l.local.ip().is_ipv6() && l.v6only == Tri::Unknown);
    if !wants {
        return Outcome::NotAsked;
    }
    let mut parents = generations
        .iter()
        .map(Borrow::borrow)
        .filter(|g| g.may_parent(l))
        .peekable();
    if parents.peek().is_none() {
        return Outcome::NoMemory;
    }
    let at = existed_at(l, clock);
    let claims: Vec<_> = parents.filter_map(|g| claim(g, l, at, clock.now)).collect();
    // Proofs beat trust: with any proof, the death-window claims are not needed.
    let proven = claims.iter().any(|c| c.0 == Basis::Coexisted);
    let used = claims.iter().filter(|c| !proven || c.0 == Basis::Coexisted);
    let (mut ra, mut rp, mut v6) = (Tri::Unknown, Tri::Unknown, Tri::Unknown);
    let mut conflict = false;
    for &(_, a, p, v) in used {
        match (merge(ra, a), merge(rp, p), merge(v6, v)) {
            (Some(a), Some(p), Some(v)) => (ra, rp, v6) = (a, p, v),
            _ => conflict = true,
        }
    }
    if conflict || (ra, rp, v6) == (Tri::Unknown, Tri::Unknown, Tri::Unknown) {
        return Outcome::Unexplained;
    }
    Outcome::Inherited(Inherited {
        reuseaddr: ra,
        reuseport: rp,
        v6only: v6,
        basis: if proven {
            Basis::Coexisted
        } else {
            Basis::DeathWindow
        },
    })
}

/// How many leftovers [`inherit`] explained, and how many it could not although
/// their port is remembered (each counted with its folded count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub inherited: u64,
    pub unexplained: u64,
    /// Unexplained leftovers created since the previous poll (counted once).
    pub unexplained_new: u64,
}

/// Fills in the flags memory may decide for `sockets` (leftovers keep flags they
/// already know); `generations` are the remembered listeners of their port.
pub fn inherit<G: Borrow<Generation>>(
    sockets: &mut [Socket],
    generations: &[G],
    clock: &Clock,
) -> Tally {
    let mut t = Tally::default();
    for s in sockets.iter_mut() {
        match attribute(s, generations, clock) {
            Outcome::Inherited(i) => {
                s.flags.reuseaddr = s.flags.reuseaddr.or(i.reuseaddr);
                s.flags.reuseport = s.flags.reuseport.or(i.reuseport);
                if s.local.ip().is_ipv6() {
                    s.v6only = s.v6only.or(i.v6only);
                }
                t.inherited += u64::from(s.count);
            }
            Outcome::Unexplained if s.flags.reuseaddr == Tri::Unknown => {
                t.unexplained += u64::from(s.count);
                if created_since_previous_poll(s, clock) {
                    t.unexplained_new += u64::from(s.count);
                }
            }
            _ => {}
        }
    }
    t
}

#[cfg(test)]
mod tests;
