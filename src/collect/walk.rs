//! The walk of the whole TCP table (listeners excepted): counts, the sockets on
//! ports of interest (folded), the cookies of listeners' children and the
//! ephemeral-bucket tally. Per socket this must stay a few array and bitmap
//! look-ups: at a million sockets every nanosecond here is a millisecond of poll.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::fold::Folder;
use super::{CollectError, CollectOptions};
use crate::model::{Family, Protocol, Socket, State, StateCounts};
use crate::source::sysctl::PortAllocation;
use crate::source::Listened;
use crate::tally::EphemeralTally;

/// What one walk of the whole TCP table yields.
pub(super) struct TableView {
    /// (port, local address, cookie) of the sockets on ports of interest that are
    /// not TIME_WAIT, bounded by [`COOKIES_MAX`]: the children listeners had.
    pub(super) cookies: Vec<(u16, std::net::IpAddr, u64)>,
    pub(super) counts: FastCounts,
    pub(super) port_sockets: Vec<Socket>,
    pub(super) ephemeral_top: Vec<(crate::conflict::Bucket, u32)>,
    pub(super) taken_at: SystemTime,
    /// The TCP ports whose sockets this walk kept: a port that became of interest
    /// since was not read, and its verdicts must not say "clear".
    pub(super) covered: PortSet,
}

/// One walk of the whole TCP table (listeners excepted), the rest of the walk whose
/// listeners `rest` read: counts, the sockets on ports of interest, and the
/// ephemeral-bucket tally. Per socket this must stay a few array and bitmap look-ups:
/// at a million sockets every nanosecond here is a millisecond of poll.
pub(super) fn walk_table(
    rest: Listened<'_>,
    opts: &CollectOptions,
    cookies_hint: usize,
    wanted: &BTreeSet<(Protocol, u16)>,
    tcp_listeners: &[Socket],
    allocation: &PortAllocation,
) -> Result<TableView, CollectError> {
    let wanted_set = PortSet::from_iter(
        wanted
            .iter()
            .filter(|(p, _)| *p == Protocol::Tcp)
            .map(|(_, n)| *n),
    );
    let mut walk = Walk {
        cookies: Vec::with_capacity(cookies_hint),
        listener_ports: PortSet::from_iter(tcp_listeners.iter().map(|s| s.local.port())),
        wanted: &wanted_set,
        allocation,
        counts: FastCounts::default(),
        port_sockets: Vec::new(),
        folder: Folder::new(opts.fold, opts.probe_max),
        tally: EphemeralTally::new(opts.ephemeral_counters),
    };
    // Each socket is taken AHEAD messages after it was decoded and its slot
    // and counter prefetched, so their loads overlap instead of stalling.
    const AHEAD: usize = 8;
    let mut ring: [Option<Socket>; AHEAD] = Default::default();
    let mut head = 0;
    // Only the ports of interest need whole sockets; elsewhere the counts and the
    // tally's key do (the bpf source then reads less of each socket).
    let narrow = (wanted_set.0.as_slice(), allocation.range);
    rest.table(Some(narrow), &mut |s| {
        if s.state == State::Listen {
            return;
        }
        walk.prefetch(s);
        if let Some(old) = ring[head].replace(s.clone()) {
            walk.take(&old);
        }
        head = (head + 1) % AHEAD;
    })?;
    for i in 0..AHEAD {
        if let Some(s) = ring[(head + i) % AHEAD].take() {
            walk.take(&s);
        }
    }
    let Walk {
        counts,
        cookies,
        mut port_sockets,
        mut folder,
        tally,
        ..
    } = walk;
    folder.finish(&mut port_sockets);
    Ok(TableView {
        cookies,
        counts,
        port_sockets,
        ephemeral_top: tally.top(opts.ephemeral_top_k),
        taken_at: SystemTime::now(),
        covered: wanted_set,
    })
}

/// Socket cookies a walk keeps at most (8 MB): beyond, fewer leftovers can be
/// linked to their listener, none wrongly.
const COOKIES_MAX: usize = 262_144;

/// What one walk of the TCP table gathers, socket by socket.
struct Walk<'a> {
    cookies: Vec<(u16, std::net::IpAddr, u64)>,
    wanted: &'a PortSet,
    listener_ports: PortSet,
    allocation: &'a PortAllocation,
    counts: FastCounts,
    port_sockets: Vec<Socket>,
    folder: Folder,
    tally: EphemeralTally,
}

impl Walk<'_> {
    #[inline]
    fn prefetch(&self, s: &Socket) {
        let port = s.local.port();
        if self.wanted.contains(port) {
            self.folder.prefetch(s);
        }
        if self.allocation.in_range(port) {
            self.tally.prefetch(s);
        }
    }

    #[inline]
    fn take(&mut self, s: &Socket) {
        self.counts.add(s);
        let port = s.local.port();
        if self.wanted.contains(port) {
            let listened = self.listener_ports.contains(port);
            // Only a live listener can have children; a TIME_WAIT already dates
            // itself by its timer.
            if listened
                && s.cookie != 0
                && s.state != State::TimeWait
                && self.cookies.len() < COOKIES_MAX
            {
                self.cookies.push((port, s.local.ip(), s.cookie));
            }
            self.folder.push(s, listened, &mut self.port_sockets);
        }
        if self.allocation.in_range(port) {
            self.tally.add(s);
        }
    }
}

/// Ports as a 65,536-bit set: one bit test per socket in the hot loop.
pub(super) struct PortSet(Vec<u64>);

impl PortSet {
    fn from_iter(ports: impl Iterator<Item = u16>) -> Self {
        let mut bits = vec![0u64; 1024];
        for p in ports {
            bits[usize::from(p) / 64] |= 1 << (p % 64);
        }
        PortSet(bits)
    }

    #[inline]
    pub(super) fn contains(&self, p: u16) -> bool {
        self.0[usize::from(p) / 64] & (1 << (p % 64)) != 0
    }
}

/// Socket counts by (protocol, family, state) in a flat array.
#[derive(Default, Clone)]
pub(super) struct FastCounts([[[u64; 14]; 2]; 2]);

impl FastCounts {
    #[inline]
    pub(super) fn add(&mut self, s: &Socket) {
        let p = (s.protocol == Protocol::Udp) as usize;
        let f = (s.family() == Family::Ipv6) as usize;
        self.0[p][f][s.state as usize] += 1;
    }

    pub(super) fn into_map(self) -> StateCounts {
        let mut m = StateCounts::new();
        for (pi, p) in Protocol::ALL.iter().enumerate() {
            for (fi, f) in Family::ALL.iter().enumerate() {
                for st in State::ALL {
                    let n = self.0[pi][fi][st as usize];
                    if n > 0 {
                        m.insert((*p, *f, st), n);
                    }
                }
            }
        }
        m
    }
}
