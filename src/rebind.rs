//! The bind-conflict engine: would a new socket's `bind()` (+ `listen()`) fail with
//! EADDRINUSE against the sockets that exist now? Pure: sockets in, verdict out.
//!
//! It models the kernel functions named in `docs/bind-rules.md`
//! (`inet_bind_conflict`, `inet_rcv_saddr_equal`, `udp_lib_lport_inuse`) on the data
//! user space can see. A flag that user space could not see is `Tri::Unknown`; the
//! engine then evaluates the rule for every value of every unknown flag and answers
//! `Unknown` only when the outcome really depends on one. It never guesses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

pub use crate::model::{Finding, Judgement, Rule, Verdict};
use crate::model::{Protocol, Socket, State, Tri};

pub mod holders;
pub mod memory;

/// The new socket whose bind we predict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub protocol: Protocol,
    /// An IPv4 address makes an AF_INET socket, an IPv6 one (mapped too) an AF_INET6.
    pub address: IpAddr,
    pub port: u16,
    /// IPV6_V6ONLY for an AF_INET6 candidate (ignored for AF_INET).
    pub v6only: Tri,
    pub reuseaddr: bool,
    pub reuseport: Tri,
    pub uid: u32,
    /// SO_BINDTODEVICE ifindex; 0 = not bound to a device.
    pub ifindex: u32,
}

impl Candidate {
    /// The V6ONLY a fresh socket gets: an explicit bind to a specific, non-mapped IPv6
    /// address forces it; otherwise `net.ipv6.bindv6only` (or the caller's option).
    pub fn effective_v6only(address: IpAddr, requested: Option<bool>, bindv6only: bool) -> Tri {
        match address {
            IpAddr::V4(_) => Tri::False,
            IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
                Tri::from_bool(requested.unwrap_or(false))
            }
            IpAddr::V6(a) if !a.is_unspecified() => Tri::True,
            IpAddr::V6(_) => Tri::from_bool(requested.unwrap_or(bindv6only)),
        }
    }
}

/// Judges `candidate` against `sockets` (any sockets: other ports and protocols are
/// ignored).
pub fn judge<'a>(
    candidate: &Candidate,
    sockets: impl IntoIterator<Item = &'a Socket>,
) -> Judgement {
    let mut findings = Vec::new();
    for old in sockets {
        if old.protocol != candidate.protocol || old.local.port() != candidate.port {
            continue;
        }
        if !in_bind_table(old) {
            continue;
        }
        if let Some(f) = judge_pair(candidate, old) {
            findings.push(f);
        }
    }
    // A finding blocks for certain or "cannot tell"; findings never say "clear".
    let verdict = Verdict::worst(findings.iter().map(|f| match f.blocks {
        Tri::True => Verdict::Blocked,
        _ => Verdict::Unknown,
    }));
    Judgement { verdict, findings }
}

/// Request sockets never block; everything else bound to the port does.
fn in_bind_table(s: &Socket) -> bool {
    match s.protocol {
        Protocol::Tcp => !matches!(s.state, State::SynRecv | State::NewSynRecv),
        Protocol::Udp => s.local.port() != 0,
    }
}

/// The flags of one (candidate, old socket) pair, all known.
#[derive(Clone, Copy)]
struct Concrete {
    new_v6only: bool,
    new_reuseport: bool,
    old_v6only: bool,
    old_reuseaddr: bool,
    old_reuseport: bool,
    devices_compatible: bool,
}

/// The flags `judge_pair` reasons about: a name (for "undecided by") and the value,
/// `None` where nobody could read it.
type FlagSlots = [(&'static str, Option<bool>); 6];

fn judge_pair(c: &Candidate, old: &Socket) -> Option<Finding> {
    let slots = flag_slots(c, old);
    // Every flag that is unknown gets enumerated.
    let unknown: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].1.is_none()).collect();
    let outcomes = outcomes(c, old, &slots, &unknown);
    let first_rule = outcomes.iter().find_map(|(_, r)| *r)?;
    let all_block = outcomes.iter().all(|(_, r)| r.is_some());
    if all_block {
        return Some(Finding {
            socket: old.clone(),
            blocks: Tri::True,
            rule: first_rule,
            undecided_by: Vec::new(),
        });
    }
    // Which unknown flags change the outcome? Flip each bit and compare.
    let mut deciding = Vec::new();
    for (bit, &i) in unknown.iter().enumerate() {
        let flips = outcomes.iter().any(|(m, r)| {
            let other = outcomes[(m ^ (1 << bit)) as usize].1;
            r.is_some() != other.is_some()
        });
        if flips {
            deciding.push(slots[i].0);
        }
    }
    Some(Finding {
        socket: old.clone(),
        blocks: Tri::Unknown,
        rule: first_rule,
        undecided_by: deciding,
    })
}

/// The six flags that can decide a conflict, as far as they are known (an AF_INET
/// side has no V6ONLY; the kernel's invariants fill in what they fix).
fn flag_slots(c: &Candidate, old: &Socket) -> FlagSlots {
    let new_v6 = c.address.is_ipv6();
    let old_v6 = old.local.ip().is_ipv6();
    [
        (
            "IPV6_V6ONLY of the new socket",
            if new_v6 {
                c.v6only.known()
            } else {
                Some(false)
            },
        ),
        ("SO_REUSEPORT of the new socket", c.reuseport.known()),
        (
            "IPV6_V6ONLY of the existing socket",
            if old_v6 {
                old.v6only.known().or_else(|| implied_v6only(old))
            } else {
                Some(false)
            },
        ),
        (
            "SO_REUSEADDR of the existing socket",
            old.flags.reuseaddr.known(),
        ),
        (
            "SO_REUSEPORT of the existing socket",
            old.flags.reuseport.known(),
        ),
        (
            "bound device of the existing socket",
            match (c.ifindex, old.ifindex) {
                (0, _) | (_, Some(0)) => Some(true),
                (n, Some(o)) => Some(n == o),
                (_, None) => None,
            },
        ),
    ]
}

/// The conflict rule (if any) for every assignment of the unknown flags: bit `b` of
/// the mask is the value of flag `unknown[b]`, so the outcome of mask `m` is at `m`.
fn outcomes(
    c: &Candidate,
    old: &Socket,
    slots: &FlagSlots,
    unknown: &[usize],
) -> Vec<(u32, Option<Rule>)> {
    let mut outcomes = Vec::with_capacity(1 << unknown.len());
    for mask in 0u32..(1 << unknown.len()) {
        let mut v = [false; 6];
        for (i, (_, known)) in slots.iter().enumerate() {
            v[i] = known.unwrap_or(false);
        }
        for (bit, &i) in unknown.iter().enumerate() {
            v[i] = mask & (1 << bit) != 0;
        }
        let k = Concrete {
            new_v6only: v[0],
            new_reuseport: v[1],
            old_v6only: v[2],
            old_reuseaddr: v[3],
            old_reuseport: v[4],
            devices_compatible: v[5],
        };
        outcomes.push((mask, conflict(c, old, k)));
    }
    outcomes
}

/// The IPV6_V6ONLY of an AF_INET6 socket that the kernel's own invariants fix when no
/// source reported it:
/// - a v4-mapped local address (`::ffff:a.b.c.d`) cannot carry V6ONLY: a V6ONLY socket's
///   bind to a mapped address fails (EINVAL), and accepted children and TIME_WAITs on a
///   mapped address come from IPv4 traffic through a dual-stack listener;
/// - a socket whose specific, non-mapped IPv6 address came from `bind()` has V6ONLY
///   forced to 1 (`__inet6_bind`). Only a TCP LISTEN or bound-only socket, or an
///   unconnected UDP socket, is sure to hold an address from `bind()` (`listen()`
///   autobinds the wildcard, a UDP disconnect resets an address `connect()` chose);
///   connected sockets and TIME_WAITs may carry a child's address, which inherits the
///   listener's V6ONLY instead.
fn implied_v6only(old: &Socket) -> Option<bool> {
    let IpAddr::V6(a) = old.local.ip() else {
        return Some(false);
    };
    if a.to_ipv4_mapped().is_some() {
        return Some(false);
    }
    if a.is_unspecified() {
        return None;
    }
    let from_bind = match old.protocol {
        Protocol::Tcp => matches!(old.state, State::Listen | State::BoundInactive),
        Protocol::Udp => old.state != State::Established,
    };
    from_bind.then_some(true)
}

/// `inet_bind_conflict` / `udp_lib_lport_inuse` for one pair with every flag known.
fn conflict(c: &Candidate, old: &Socket, k: Concrete) -> Option<Rule> {
    if !k.devices_compatible {
        return None;
    }
    let new_addr = KernelAddr::of(c.address);
    let old_addr = KernelAddr::of(old.local.ip());
    if !rcv_saddr_equal(&new_addr, k.new_v6only, &old_addr, k.old_v6only) {
        return None;
    }
    let reuseport_exempt = k.new_reuseport
        && k.old_reuseport
        && match c.protocol {
            Protocol::Tcp => old.state == State::TimeWait || c.uid == old.uid,
            Protocol::Udp => c.uid == old.uid,
        };
    match c.protocol {
        Protocol::Tcp => {
            if c.reuseaddr && k.old_reuseaddr && old.state != State::Listen {
                return None;
            }
            if reuseport_exempt {
                return None;
            }
            Some(if old.state == State::Listen {
                Rule::Listening
            } else if !c.reuseaddr {
                Rule::NewWithoutReuseaddr
            } else {
                Rule::OldWithoutReuseaddr
            })
        }
        Protocol::Udp => {
            if (c.reuseaddr && k.old_reuseaddr) || reuseport_exempt {
                None
            } else {
                Some(Rule::UdpInUse)
            }
        }
    }
}

/// A socket's bound address as the kernel stores it: the family of the socket, its
/// IPv6 address, and `sk_rcv_saddr`, the IPv4 address an IPv6 socket carries for
/// IPv4 matching (0 for `::`, the mapped address, or LOOPBACK4_IPV6 127.0.0.6 for a
/// specific IPv6 address; see `__inet6_bind` and `tcp_v6_syn_recv_sock`).
struct KernelAddr {
    inet6: bool,
    v6: Ipv6Addr,
    rcv4: Ipv4Addr,
}

const LOOPBACK4_IPV6: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

impl KernelAddr {
    fn of(ip: IpAddr) -> KernelAddr {
        match ip {
            IpAddr::V4(a) => KernelAddr {
                inet6: false,
                v6: a.to_ipv6_mapped(),
                rcv4: a,
            },
            IpAddr::V6(a) => KernelAddr {
                inet6: true,
                v6: a,
                rcv4: match a.to_ipv4_mapped() {
                    Some(m) => m,
                    None if a.is_unspecified() => Ipv4Addr::UNSPECIFIED,
                    None => LOOPBACK4_IPV6,
                },
            },
        }
    }
}

#[derive(PartialEq, Eq)]
enum V6Type {
    Any,
    Mapped,
    Other,
}

fn v6_type(a: &Ipv6Addr) -> V6Type {
    if a.is_unspecified() {
        V6Type::Any
    } else if a.to_ipv4_mapped().is_some() {
        V6Type::Mapped
    } else {
        V6Type::Other
    }
}

/// `inet_rcv_saddr_equal(new, old, match_wildcard = true)`.
fn rcv_saddr_equal(new: &KernelAddr, new_v6only: bool, old: &KernelAddr, old_v6only: bool) -> bool {
    let old_v6only = old.inet6 && old_v6only;
    if new.inet6 {
        ipv6_rcv_saddr_equal(new, new_v6only, old, old_v6only)
    } else if old.inet6 && v6_type(&old.v6) == V6Type::Other {
        // Linux >= 6.1 checks a specific bind against its own address's bucket and
        // the wildcards only, so a socket on a specific IPv6 address (even a
        // dual-stack child, whose rcv_saddr is LOOPBACK4_IPV6) meets IPv4 only at
        // 0.0.0.0. Found by the kernel-oracle suite with a new bind on 127.0.0.6.
        new.rcv4.is_unspecified() && !old_v6only
    } else {
        ipv4_rcv_saddr_equal(new.rcv4, old.rcv4, old_v6only)
    }
}

fn ipv4_rcv_saddr_equal(a: Ipv4Addr, b: Ipv4Addr, b_v6only: bool) -> bool {
    if b_v6only {
        return false;
    }
    a == b || a.is_unspecified() || b.is_unspecified()
}

fn ipv6_rcv_saddr_equal(
    new: &KernelAddr,
    new_v6only: bool,
    old: &KernelAddr,
    old_v6only: bool,
) -> bool {
    let t1 = v6_type(&new.v6);
    // An AF_INET socket counts as mapped (`inet6_rcv_saddr()` returns NULL for it).
    let t2 = if old.inet6 {
        v6_type(&old.v6)
    } else {
        V6Type::Mapped
    };
    if t1 == V6Type::Mapped && t2 == V6Type::Mapped {
        return ipv4_rcv_saddr_equal(new.rcv4, old.rcv4, old_v6only);
    }
    if t1 == V6Type::Any && t2 == V6Type::Any {
        return true;
    }
    if t2 == V6Type::Any && !(old_v6only && t1 == V6Type::Mapped) {
        return true;
    }
    if t1 == V6Type::Any && !(new_v6only && t2 == V6Type::Mapped) {
        return true;
    }
    old.inet6 && new.v6 == old.v6
}

/// Fills in flags of sockets that could not be read from their owner, from the
/// listener they came from: accepted children and their TIME_WAITs copy the
/// listener's SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY (bind-rules.md,
/// "Inheritance"). `listeners` are live or remembered listeners of the port.
pub fn inherit_from_listeners(sockets: &mut [Socket], listeners: &[Socket]) {
    for s in sockets.iter_mut() {
        if s.state == State::Listen || s.protocol != Protocol::Tcp {
            continue;
        }
        let Some(l) = parent_listener(s, listeners) else {
            continue;
        };
        s.flags.reuseaddr = s.flags.reuseaddr.or(l.flags.reuseaddr);
        s.flags.reuseport = s.flags.reuseport.or(l.flags.reuseport);
        if s.local.ip().is_ipv6() {
            s.v6only = s.v6only.or(l.v6only);
        }
    }
}

/// The listener a server-side socket was accepted from: same port, and the same
/// address or the wildcard of the socket's family; the exact address wins.
pub fn parent_listener<'a>(s: &Socket, listeners: &'a [Socket]) -> Option<&'a Socket> {
    let same_port = |l: &&Socket| {
        l.protocol == s.protocol && l.local.port() == s.local.port() && l.state == State::Listen
    };
    listeners
        .iter()
        .filter(same_port)
        .find(|l| l.local.ip() == s.local.ip())
        .or_else(|| {
            listeners.iter().filter(same_port).find(|l| {
                l.local.ip().is_unspecified() && l.local.ip().is_ipv6() == s.local.ip().is_ipv6()
            })
        })
}

/// What a restart of the listener(s) at `listener`'s endpoint leaves: the listeners
/// at that exact endpoint vanish, and so do children still in the accept queue
/// (ESTABLISHED without a file). Every other socket stays (the daemon's accepted
/// connections turn into FIN_WAIT/TIME_WAIT, which blocks exactly like before).
pub fn after_restart<'a>(
    listener: &'a Socket,
    sockets: &'a [Socket],
) -> impl Iterator<Item = &'a Socket> {
    sockets.iter().filter(move |s| {
        let restarted = s.state == State::Listen
            && s.protocol == listener.protocol
            && s.local == listener.local;
        let unaccepted =
            s.protocol == Protocol::Tcp && s.state == State::Established && s.inode == 0;
        let same_udp =
            s.protocol == Protocol::Udp && s.inode == listener.inode && s.local == listener.local;
        !(restarted || unaccepted || same_udp)
    })
}

/// The three judgements of a restart of one listener.
#[derive(Debug, Clone)]
pub struct Restart {
    /// A new socket without SO_REUSEADDR.
    pub without_reuseaddr: Judgement,
    /// A new socket with SO_REUSEADDR.
    pub with_reuseaddr: Judgement,
    /// The restart that will really happen: with the listener's own SO_REUSEADDR
    /// (see [`own_flags`]). Metrics, `ports`, `check --restart` and the landing page all
    /// read this one.
    pub own_flags: Judgement,
}

/// Would restarting `listener` fail now, given the sockets on its port? The daemon is
/// assumed to set the flags its listener has now.
pub fn judge_restart(listener: &Socket, on_port: &[Socket]) -> Restart {
    let judge = |reuse: bool| {
        judge(
            &restart_candidate(listener, reuse),
            after_restart(listener, on_port),
        )
    };
    let without_reuseaddr = judge(false);
    let with_reuseaddr = judge(true);
    let own_flags = own_flags(
        listener.flags.reuseaddr,
        &without_reuseaddr,
        &with_reuseaddr,
    );
    Restart {
        without_reuseaddr,
        with_reuseaddr,
        own_flags,
    }
}

/// The one restart policy: the judgement for a daemon whose own SO_REUSEADDR is
/// `reuseaddr`. Known: that judgement. Unknown: both are evaluated, as for any unknown
/// flag: a socket that blocks in both cases certainly blocks, one that blocks only
/// without SO_REUSEADDR blocks `Unknown` (decided by the daemon's flag), and the
/// verdict is the common one or `Unknown` when the two differ. Adding SO_REUSEADDR to
/// the new socket only adds exemptions, so `with` blocks a subset of `without`.
pub fn own_flags(reuseaddr: Tri, without: &Judgement, with: &Judgement) -> Judgement {
    match reuseaddr {
        Tri::True => return with.clone(),
        Tri::False => return without.clone(),
        Tri::Unknown => {}
    }
    const DAEMON_FLAG: &str = "SO_REUSEADDR of the restarted daemon";
    let findings = without
        .findings
        .iter()
        .map(|f| {
            let in_with = with.findings.iter().find(|g| g.socket == f.socket);
            let mut merged = f.clone();
            match in_with {
                Some(g) if g.blocks == Tri::True && f.blocks == Tri::True => {}
                Some(g) => {
                    merged.blocks = Tri::Unknown;
                    for name in &g.undecided_by {
                        if !merged.undecided_by.contains(name) {
                            merged.undecided_by.push(name);
                        }
                    }
                    if g.blocks != f.blocks {
                        merged.undecided_by.push(DAEMON_FLAG);
                    }
                }
                None => {
                    merged.blocks = Tri::Unknown;
                    merged.undecided_by.push(DAEMON_FLAG);
                }
            }
            merged
        })
        .collect();
    let verdict = if without.verdict == with.verdict {
        with.verdict
    } else {
        Verdict::Unknown
    };
    Judgement { verdict, findings }
}

/// The candidate that restarts `listener` with its own flags, but `reuseaddr` as given.
pub fn restart_candidate(listener: &Socket, reuseaddr: bool) -> Candidate {
    Candidate {
        protocol: listener.protocol,
        address: listener.local.ip(),
        port: listener.local.port(),
        v6only: if listener.local.ip().is_ipv6() {
            listener.v6only
        } else {
            Tri::False
        },
        reuseaddr,
        reuseport: listener.flags.reuseport,
        uid: listener.uid,
        // /proc cannot tell a listener's device; judging as unbound is the common case.
        ifindex: listener.ifindex.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests;
