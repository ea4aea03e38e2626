//! The owner-attribution phase: the steady-state cost of finding which process holds each
//! socket, ~100k sockets in 200 processes.

use std::path::Path;
use std::time::Duration;

use bindwatch::collect::Collector;
use bindwatch::model::Protocol;

use crate::host::fresh_netns;
use crate::measure::{full_scan_opts, measure, median, Sample};
use crate::popgen::{self, ListenSpec, Plan, Population};
use crate::rawdiag::{Census, RawDiag};

pub type Stats = bindwatch::source::owners::ResolveStats;

pub struct OwnersResult {
    pub census: Census,
    pub procs: usize,
    pub first: Sample,
    pub first_stats: Stats,
    pub on: Sample,
    pub off: Sample,
    pub per_poll: Stats,
    pub after_new: Sample,
    pub after_new_stats: Stats,
    pub settled: Sample,
    pub settled_stats: Stats,
    /// The steady-state attribution work, step by step (median ms of CPU):
    /// cache re-validation (one readlink per inode), owner look-ups (per pid), flag probes.
    pub parts: [(String, Duration); 3],
}

pub fn stats_delta(a: Stats, b: Stats) -> Stats {
    Stats {
        cache_hits: b.cache_hits - a.cache_hits,
        full_scans: b.full_scans - a.full_scans,
        fds_read: b.fds_read - a.fds_read,
    }
}

/// ~100k sockets in 200 processes, each a daemon with one listener and 248
/// connections; every 4th daemon is draining (its listener closed, its port watched),
/// so its accepted connections have no live parent listener and are attributed.
pub fn owners_phase(runs: usize) -> OwnersResult {
    fresh_netns();
    let procs = 200;
    let conns = 248;
    let mut plan = Plan {
        children: Vec::new(),
    };
    let mut watched = Vec::new();
    for i in 0..procs {
        let port = 20_000 + i as u16;
        let draining = i % 4 == 3;
        if draining {
            watched.push((Protocol::Tcp, port));
        }
        plan.children.push(popgen::ChildPlan {
            listeners: vec![ListenSpec { v6: false, port }],
            conns,
            tw: 0,
            src: (i as u32 * 37) % 1024,
            close_listeners: draining,
            park: false,
        });
    }
    let mut pop = Population::build(&plan).expect("owners population");
    let mut raw = RawDiag::open();
    let census = raw.census();
    let proc = Path::new("/proc");
    let mut on = Collector::new(full_scan_opts(proc)).expect("collector");
    let mut off_opts = full_scan_opts(proc);
    off_opts.owners = false;
    let mut off = Collector::new(off_opts).expect("collector");
    let attributed = |c: &mut Collector| {
        c.poll(&[], &watched)
            .map(|s| s.owners.len() as u64)
            .expect("poll")
    };
    let sa = on.owner_stats();
    let first = measure(&mut || attributed(&mut on));
    let first_stats = stats_delta(sa, on.owner_stats());
    off.poll(&[], &watched).expect("poll");
    let mut son = Vec::new();
    let mut soff = Vec::new();
    let s0 = on.owner_stats();
    for _ in 0..runs {
        son.push(measure(&mut || attributed(&mut on)));
        soff.push(measure(&mut || attributed(&mut off)));
    }
    let s1 = on.owner_stats();
    let mut per_poll = stats_delta(s0, s1);
    per_poll.cache_hits /= runs as u64;
    per_poll.fds_read /= runs as u64;
    let med = |v: &[Sample]| Sample {
        wall: median(v.iter().map(|s| s.wall).collect()),
        cpu: median(v.iter().map(|s| s.cpu).collect()),
        count: v[0].count,
    };
    // A new inode of interest (a new daemon's listener) forces one full scan ...
    pop.add_listener(
        0,
        ListenSpec {
            v6: false,
            port: 21_000,
        },
    )
    .expect("listen");
    let s2 = on.owner_stats();
    let after_new = measure(&mut || attributed(&mut on));
    let s3 = on.owner_stats();
    // ... and the next poll is served from the cache again.
    let settled = measure(&mut || attributed(&mut on));
    let s4 = on.owner_stats();
    let parts = attribution_parts(&mut on, &watched, runs);
    OwnersResult {
        census,
        procs,
        first,
        first_stats,
        on: med(&son),
        off: med(&soff),
        per_poll,
        after_new,
        after_new_stats: stats_delta(s2, s3),
        settled,
        settled_stats: stats_delta(s3, s4),
        parts,
    }
}

/// Replays the three steps of a steady-state attribution with the public
/// [`OwnerResolver`] on the inodes the collector attributed: re-validating the cache,
/// reading each owning process, probing each socket's flags.
pub fn attribution_parts(
    c: &mut Collector,
    watched: &[(Protocol, u16)],
    runs: usize,
) -> [(String, Duration); 3] {
    use bindwatch::source::owners::{FdRef, OwnerResolver};
    use std::collections::{HashMap, HashSet};
    let snap = c.poll(&[], watched).expect("poll");
    let wanted: HashSet<u64> = snap.owners.keys().copied().collect();
    let v6: HashMap<u64, bool> = snap
        .port_sockets
        .iter()
        .map(|s| (s.inode, s.local.is_ipv6()))
        .collect();
    let mut r = OwnerResolver::new(Path::new("/proc"));
    r.resolve(&wanted); // cold: fills the cache
    let fds: HashMap<u64, FdRef> = r.resolve(&wanted);
    let pids: HashSet<u32> = fds.values().map(|f| f.pid).collect();
    let (mut a, mut b, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(measure(&mut || r.resolve(&wanted).len() as u64).cpu);
        b.push(
            measure(&mut || pids.iter().filter(|&&pid| r.owner(pid).is_some()).count() as u64).cpu,
        );
        p.push(
            measure(&mut || {
                fds.iter()
                    .filter(|(i, f)| {
                        r.probe(**f, v6.get(i).copied().unwrap_or(false), **i)
                            .is_some()
                    })
                    .count() as u64
            })
            .cpu,
        );
    }
    [
        (
            format!("cache re-validation, {} readlinks", wanted.len()),
            median(a),
        ),
        (
            format!("owner look-ups, {} pids (stat, status, cgroup)", pids.len()),
            median(b),
        ),
        (
            format!(
                "flag probes, {} sockets (pidfd_getfd + getsockopt)",
                fds.len()
            ),
            median(p),
        ),
    ]
}
