//! The memory of listener generations between polls: which listener each endpoint
//! had, since when, with which flags and children. Tracking only: when a remembered
//! generation may decide a leftover's flags is [`crate::rebind::memory`]'s rule.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{endpoint, read_fin_timeout, Collector};
use crate::fasthash::FxHashMap;
use crate::model::{Endpoint, Listener, Owner, Protocol, Socket};
use crate::rebind::memory::{self, Generation};
use crate::state;

/// What is remembered of one endpoint: its listener generations (oldest first)
/// and the owner of the newest.
#[derive(Debug, Clone)]
pub(super) struct Remembered {
    pub(super) generations: Vec<Generation>,
    pub(super) owner: Option<Owner>,
}

/// Gone generations kept per endpoint beyond the live ones (restarts); older ones
/// are forgotten, which only makes answers unknown, never wrong.
/// Listeners the second listener dump of a poll saw (inodes), and when.
pub(super) struct Confirmed {
    pub(super) inodes: HashSet<u64>,
    pub(super) at: f64,
}

const GONE_GENERATIONS_KEPT: usize = 4;

impl Remembered {
    /// The newest generation (the one a restart would replace).
    pub(super) fn newest(&self) -> Option<&Generation> {
        self.generations
            .iter()
            .max_by(|a, b| a.last_seen.total_cmp(&b.last_seen))
    }
}

impl Collector {
    /// The remembered listener generations, for the state file.
    pub fn memory_entries(&self) -> Vec<state::Entry> {
        self.memory
            .values()
            .flat_map(|r| {
                r.generations.iter().map(|g| state::Entry {
                    children: g.children.clone(),
                    first_seen: Some(g.first_seen),
                    gone_at: g.gone_at,
                    last_seen: g.last_seen,
                    main_holder: self.main_holder(g.listener.inode),
                    ..state::Entry::from_socket(&g.listener, r.owner.as_ref(), UNIX_EPOCH)
                })
            })
            .collect()
    }

    /// Seeds the memory from a state file; `interval` is its writer's poll interval
    /// (which bounds how long after a sighting leftovers are trusted to a listener).
    /// Generations seen by the next poll are extended, the others marked gone.
    pub fn remember(&mut self, entries: &[state::Entry], interval: Duration) {
        for e in entries {
            let Some(socket) = e.to_socket() else {
                continue;
            };
            if let (Some(main), None) = (e.main_holder, e.gone_at) {
                self.remember_main(e.inode, main);
            }
            let owner = e.process.as_ref().map(|p| Owner {
                pid: 0,
                process: p.clone(),
                uid: e.uid,
                user: e.user.clone().unwrap_or_else(|| e.uid.to_string()),
                unit: None,
            });
            let r = self.memory.entry(endpoint(&socket)).or_insert(Remembered {
                generations: Vec::new(),
                owner: None,
            });
            if r.generations.len() >= GONE_GENERATIONS_KEPT * 4 {
                continue; // a file cannot make the memory grow without bound
            }
            r.owner = r.owner.take().or(owner);
            let mut children = e.children.clone();
            children.sort_unstable();
            children.dedup();
            children.truncate(memory::CHILDREN_MAX);
            r.generations.push(Generation {
                children,
                listener: socket,
                // An older file knows only the last sighting.
                first_seen: e.first_seen.unwrap_or(e.last_seen).min(e.last_seen),
                last_seen: e.last_seen,
                gone_at: e.gone_at,
                interval: interval.as_secs_f64(),
            });
        }
    }

    /// Extends the generation of each live listener (same inode) or starts a new
    /// one, and marks generations that this poll no longer sees as gone.
    fn track_generations(&mut self, listeners: &[Listener], at: f64) {
        let interval = self.opts.poll_interval.as_secs_f64();
        let mut seen: HashSet<(Endpoint, u64)> = HashSet::new();
        for l in listeners {
            let ep = endpoint(&l.socket);
            seen.insert((ep, l.socket.inode));
            let r = self.memory.entry(ep).or_insert(Remembered {
                generations: Vec::new(),
                owner: None,
            });
            if l.owner.is_some() || r.owner.is_none() {
                r.owner = l.owner.clone();
            }
            let same = r.generations.iter_mut().find(|g| {
                g.gone_at.is_none() && l.socket.inode != 0 && g.listener.inode == l.socket.inode
            });
            match same {
                Some(g) => {
                    // Flags learnt now (e.g. a probe that failed before) are kept.
                    let mut socket = l.socket.clone();
                    socket.flags.reuseaddr = socket.flags.reuseaddr.or(g.listener.flags.reuseaddr);
                    socket.flags.reuseport = socket.flags.reuseport.or(g.listener.flags.reuseport);
                    socket.v6only = socket.v6only.or(g.listener.v6only);
                    g.listener = socket;
                    g.last_seen = g.last_seen.max(at);
                    g.interval = interval;
                }
                None => r.generations.push(Generation {
                    children: Vec::new(),
                    listener: l.socket.clone(),
                    first_seen: at,
                    last_seen: at,
                    gone_at: None,
                    interval,
                }),
            }
        }
        for (ep, r) in self.memory.iter_mut() {
            for g in r.generations.iter_mut() {
                if g.gone_at.is_none() && !seen.contains(&(*ep, g.listener.inode)) {
                    g.gone_at = Some(at.max(g.last_seen));
                }
            }
            // Forget the oldest gone generations beyond the bound.
            let gone = r.generations.iter().filter(|g| g.gone_at.is_some()).count();
            if gone > GONE_GENERATIONS_KEPT {
                let mut drop = gone - GONE_GENERATIONS_KEPT;
                r.generations
                    .sort_by(|a, b| a.last_seen.total_cmp(&b.last_seen));
                r.generations.retain(|g| {
                    let forget = drop > 0 && g.gone_at.is_some();
                    if forget {
                        drop -= 1;
                    }
                    !forget
                });
            }
        }
    }
    /// Step 5: tracks this poll's listeners, confirms those the second dump still
    /// saw (with the children the walk read, if it walked), and forgets what is
    /// older than `--collector.remember` on a port nothing is on any more.
    pub(super) fn update_generations(
        &mut self,
        listeners: &[Listener],
        port_sockets: &[Socket],
        listeners_at: f64,
        walked: bool,
        confirmed: &Confirmed,
    ) {
        self.track_generations(listeners, listeners_at);
        let walk_cookies = if walked {
            self.table_view.as_ref().map(|v| v.cookies.as_slice())
        } else {
            None
        };
        confirm_generations(
            &mut self.memory,
            &confirmed.inodes,
            confirmed.at,
            walk_cookies,
        );
        let busy: HashSet<(Protocol, u16)> = port_sockets
            .iter()
            .map(|s| (s.protocol, s.local.port()))
            .collect();
        let remember = self.opts.remember.as_secs_f64();
        self.memory.retain(|e, r| {
            r.generations
                .retain(|g| g.gone_at.is_none() || listeners_at - g.last_seen < remember);
            !r.generations.is_empty()
                && (r
                    .newest()
                    .is_some_and(|g| listeners_at - g.last_seen < remember)
                    || busy.contains(&(e.protocol, e.port)))
        });
    }

    /// Step 6: groups the sockets by port and gives leftovers the flags a
    /// remembered generation may decide for them (`rebind::memory::inherit`);
    /// counts what no generation explains and asks for an early poll if any is new.
    pub(super) fn inherit_leftovers(
        &mut self,
        mut port_sockets: Vec<Socket>,
        table_taken_at: SystemTime,
    ) -> FxHashMap<(Protocol, u16), Vec<Socket>> {
        // Everything below is per port: group once instead of filtering per endpoint
        // (hundreds of listening ports times thousands of sockets at scale).
        let mut generations_by_port: FxHashMap<(Protocol, u16), Vec<&Generation>> =
            FxHashMap::default();
        for (ep, r) in &self.memory {
            generations_by_port
                .entry((ep.protocol, ep.port))
                .or_default()
                .extend(r.generations.iter());
        }
        let mut by_port: FxHashMap<(Protocol, u16), Vec<Socket>> = FxHashMap::default();
        for s in port_sockets.drain(..) {
            by_port
                .entry((s.protocol, s.local.port()))
                .or_default()
                .push(s);
        }
        let clock = memory::Clock {
            now: state::unix(table_taken_at),
            fin_timeout: read_fin_timeout(&self.opts.procfs),
            previous_poll: self.previous_poll,
        };
        let mut tally = memory::Tally::default();
        for (key, socks) in by_port.iter_mut() {
            if let Some(gens) = generations_by_port.get(key) {
                let t = memory::inherit(socks, gens, &clock);
                tally.inherited += t.inherited;
                tally.unexplained += t.unexplained;
                tally.unexplained_new += t.unexplained_new;
            }
        }
        if tally.unexplained_new > 0 {
            tracing::debug!(
                new = tally.unexplained_new,
                "leftovers no remembered listener explains; polling sooner"
            );
        }
        self.unexplained_total += tally.unexplained_new;
        self.early_poll = tally.unexplained_new > 0;
        self.previous_poll = Some(clock.now);
        by_port
    }
}

/// Generations whose listener the second dump still saw (same inode) were
/// listening throughout the poll: their last sighting moves to `at`, and, when the
/// poll walked the table, the cookies it read on their addresses become their
/// children.
fn confirm_generations(
    memory: &mut BTreeMap<Endpoint, Remembered>,
    still_listening: &HashSet<u64>,
    at: f64,
    cookies: Option<&[(u16, IpAddr, u64)]>,
) {
    let by_port = cookies.map(CookiesByPort::new);
    for (ep, r) in memory.iter_mut() {
        for g in r.generations.iter_mut() {
            let alive = g.gone_at.is_none()
                && g.listener.inode != 0
                && g.listener.protocol == Protocol::Tcp
                && still_listening.contains(&g.listener.inode);
            if !alive {
                continue;
            }
            g.last_seen = g.last_seen.max(at);
            let Some(by_port) = &by_port else {
                continue;
            };
            // Refilled in place: the allocation outlives the poll.
            let mut children = std::mem::take(&mut g.children);
            children.clear();
            children.extend(
                by_port
                    .on(ep.port)
                    .iter()
                    .filter(|(ip, _)| g.may_parent_at(Protocol::Tcp, *ip, ep.port))
                    .map(|&(_, c)| c)
                    .take(memory::CHILDREN_MAX),
            );
            // Sorted already: each port's cookies are (CookiesByPort::new).
            debug_assert!(children.is_sorted());
            g.children = children;
        }
    }
}

/// A walk's cookies grouped by port with a counting sort: two passes over them
/// and no hashing (a hash map grouping them was a tenth of a poll's user time at
/// 100k sockets).
struct CookiesByPort {
    /// After [`CookiesByPort::new`], `end[p]` is where port `p`'s entries end
    /// (and `p + 1`'s begin).
    end: Vec<u32>,
    entries: Vec<(IpAddr, u64)>,
}

impl CookiesByPort {
    fn new(cookies: &[(u16, IpAddr, u64)]) -> Self {
        // The walk keeps at most COOKIES_MAX (far below u32::MAX) cookies; more
        // are dropped here rather than overflow an offset.
        let cookies = &cookies[..cookies.len().min(u32::MAX as usize)];
        let mut end = vec![0u32; 1 << 16];
        for &(p, _, _) in cookies {
            end[usize::from(p)] += 1;
        }
        // Exclusive prefix sums: end[p] becomes where port p begins...
        let mut sum = 0u32;
        for e in end.iter_mut() {
            let n = *e;
            *e = sum;
            sum += n;
        }
        // ...and, once each entry is placed, where it ends.
        let mut entries = vec![(IpAddr::from([0u8; 4]), 0u64); cookies.len()];
        for &(p, ip, c) in cookies {
            let at = &mut end[usize::from(p)];
            entries[*at as usize] = (ip, c);
            *at += 1;
        }
        let mut g = CookiesByPort { end, entries };
        // Sorted by cookie once per port, so that every generation's children,
        // filtered from its port's, come out sorted (several listeners share a
        // port: SO_REUSEPORT groups, one per address). The kernel numbers sockets
        // when a dump first asks for their cookie and dumps its hash in a stable
        // order, so each port's run is mostly sorted already: the stable sort finds
        // the runs and merges them instead of sorting from scratch.
        let mut begin = 0;
        for &end in &g.end {
            let end = end as usize;
            if end - begin > 1 {
                g.entries[begin..end].sort_by_key(|&(_, c)| c);
            }
            begin = end;
        }
        g
    }

    /// The (address, cookie) pairs the walk read on `port`, by cookie.
    fn on(&self, port: u16) -> &[(IpAddr, u64)] {
        let begin = match port.checked_sub(1) {
            Some(prev) => self.end[usize::from(prev)],
            None => 0,
        };
        &self.entries[begin as usize..self.end[usize::from(port)] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::CookiesByPort;
    use std::net::IpAddr;

    #[test]
    fn cookies_group_by_port_sorted_by_cookie() {
        let a = IpAddr::from([127, 0, 0, 1]);
        let b: IpAddr = "::1".parse().expect("address");
        let cookies = [
            (80, a, 6),
            (0, a, 2),
            (65535, b, 7),
            (80, b, 4),
            (443, a, 5),
            (80, a, 1),
            (65535, a, 3),
        ];
        let g = CookiesByPort::new(&cookies);
        let cases: [(u16, &[(IpAddr, u64)]); 6] = [
            (0, &[(a, 2)]),
            (1, &[]),
            (80, &[(a, 1), (b, 4), (a, 6)]),
            (443, &[(a, 5)]),
            (444, &[]),
            (65535, &[(a, 3), (b, 7)]),
        ];
        for (port, want) in cases {
            assert_eq!(g.on(port), want, "port {port}");
        }
        let empty = CookiesByPort::new(&[]);
        assert!(empty.on(0).is_empty() && empty.on(65535).is_empty());
    }
}
