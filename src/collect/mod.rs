//! One poll: socket table -> [`Snapshot`]. Keeps what must survive between polls:
//! the owner cache and the memory of each endpoint's listener generations, so the
//! leftovers of a daemon that just died are judged with its flags where
//! [`rebind::memory`] says they may be (the rule lives there, not here).
//!
//! - this file: the [`Collector`] and the poll as named steps (listeners, ports of
//!   interest, table view, owners, generations, leftovers, risks, the snapshot);
//! - `walk`: the walk of the whole TCP table (the per-socket hot loop);
//! - `fold`: folding a busy port's sockets that differ only in their peer;
//! - `generations`: the memory of listener generations between polls.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::Service;
use crate::conflict;
use crate::fasthash::FxHashMap;
use crate::model::{
    Endpoint, EndpointRisk, Listener, Owner, Protocol, Snapshot, Socket, State, StateCounts,
};
use crate::rebind;
use crate::source::netlink::ALL_STATES;
use crate::source::owners::{Capabilities, OwnerResolver};
use crate::source::sysctl::{self, PortAllocation};
use crate::source::{listen_mask, Listened, Session, SocketTable, SourceChoice, SourceError};
use crate::state;

mod fold;
mod generations;
mod holders;
mod walk;

use generations::{Confirmed, Remembered};
use walk::TableView;

/// Limits and knobs of a poll.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    pub procfs: PathBuf,
    /// `--path.rootfs`: host files (/etc/passwd) are read under it.
    pub rootfs: PathBuf,
    pub source: SourceChoice,
    /// Cap on ports of interest (series are per port).
    pub ports_max: usize,
    /// How long a vanished listener's flags are remembered.
    pub remember: Duration,
    /// The agent's poll interval: a vanished listener's leftovers are trusted to
    /// it only within one interval of its last sighting (`rebind::memory`).
    pub poll_interval: Duration,
    /// Whether to resolve owners and flags (needs /proc/PID/fd access and pidfd).
    pub owners: bool,
    /// At most this many non-listener sockets are probed for flags per poll.
    pub probe_max: usize,
    /// Probe every socket on a port of interest, even children of a live listener
    /// (one-shot commands); the agent relies on inheritance instead.
    pub probe_all: bool,
    /// Counters of the ephemeral-bucket tally (bounded memory).
    pub ephemeral_counters: usize,
    /// How many of the fullest ephemeral buckets are exported.
    pub ephemeral_top_k: usize,
    /// Time a poll may spend scanning /proc/*/fd for owners before continuing at
    /// the next poll; `None` (one-shot commands) scans to the end.
    pub scan_slice: Option<std::time::Duration>,
    /// Fold connections that differ only in their peer (the agent); one-shot
    /// commands list every socket.
    pub fold: bool,
    /// Read /proc/net of the calling thread's namespace (`--netns all` enters
    /// namespaces per thread), not the process's.
    pub thread_netns: bool,
    /// The agent: with the bpf source, the last dump of the bound-only sockets is
    /// reused while the kernel counts no change to them, reconciled with a fresh dump
    /// this often (`source::boundpolicy`). `None` (one-shot commands): a dump every
    /// poll.
    pub bound_tracking: Option<Duration>,
}

impl CollectOptions {
    pub fn new(procfs: &Path) -> Self {
        CollectOptions {
            procfs: procfs.to_path_buf(),
            rootfs: PathBuf::from("/"),
            source: SourceChoice::Auto,
            ports_max: 1000,
            remember: Duration::from_secs(600),
            poll_interval: Duration::from_secs(5),
            owners: true,
            probe_max: 256,
            probe_all: false,
            ephemeral_counters: 4096,
            ephemeral_top_k: 3,
            thread_netns: false,
            fold: true,
            scan_slice: Some(crate::source::owners::SCAN_SLICE),
            bound_tracking: None,
        }
    }
}

/// The bpf source's bound-only tracking counters, process-wide; `None` where no
/// collector tracks (see [`CollectOptions::bound_tracking`]).
pub fn bound_tracking() -> Option<crate::model::BoundTracking> {
    crate::source::boundtrack::counters()
}

/// Polls the kernel and builds snapshots.
pub struct Collector {
    opts: CollectOptions,
    table: SocketTable,
    /// Shared by every namespace's collector under `--netns all`.
    owners: Arc<Mutex<OwnerResolver>>,
    /// Whether this collector starts the resolver's rounds (false when shared).
    owns_rounds: bool,
    memory: BTreeMap<Endpoint, Remembered>,
    ports_dropped_total: u64,
    /// The last walk of the whole TCP table.
    table_view: Option<TableView>,
    /// CPU seconds of the table walk of the last poll, if it walked (for the budget).
    pub last_walk_cpu: Option<f64>,
    /// Leftovers on remembered ports that no generation explains (cumulative).
    unexplained_total: u64,
    /// Whether the last poll found new unexplained leftovers (poll sooner).
    early_poll: bool,
    /// When the last poll read the table (Unix seconds).
    previous_poll: Option<f64>,
    /// The main holder first named for each live listening socket (by inode).
    mains: HashMap<u64, crate::rebind::holders::MainId>,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("reading the socket table: {0}")]
    Source(#[from] SourceError),
    #[error("no walk of the socket table yet")]
    NoTableView,
}

/// What step 1 of a poll read: the TCP listeners, the UDP table, and when.
struct FreshListeners {
    tcp: Vec<Socket>,
    udp: Vec<Socket>,
    at: f64,
}

/// The table view as this poll sees it: the (possibly older) walk with this
/// poll's listeners added.
struct PortView {
    counts: StateCounts,
    port_sockets: Vec<Socket>,
    table_taken_at: SystemTime,
    ephemeral_top: Vec<(crate::conflict::Bucket, u32)>,
}

/// The listeners among the sockets of interest, with their owners.
fn live_listeners(port_sockets: &[Socket], owner_of: &HashMap<u64, Owner>) -> Vec<Listener> {
    port_sockets
        .iter()
        .filter(|s| s.is_listener())
        .map(|s| Listener {
            socket: s.clone(),
            owner: owner_of.get(&s.inode).cloned(),
        })
        .collect()
}

/// The sockets of interest in (protocol, port) order, as the snapshot lists them.
fn sorted_by_port(by_port: FxHashMap<(Protocol, u16), Vec<Socket>>) -> Vec<Socket> {
    let mut ports_sorted: Vec<((Protocol, u16), Vec<Socket>)> = by_port.into_iter().collect();
    ports_sorted.sort_by_key(|(k, _)| *k);
    ports_sorted.into_iter().flat_map(|(_, v)| v).collect()
}

fn endpoint(s: &Socket) -> Endpoint {
    Endpoint {
        protocol: s.protocol,
        address: s.local.ip(),
        port: s.local.port(),
    }
}

impl Collector {
    /// # Errors
    /// When the chosen source cannot be opened at all.
    pub fn new(opts: CollectOptions) -> Result<Self, CollectError> {
        let mut resolver = OwnerResolver::with_rootfs(&opts.procfs, &opts.rootfs);
        resolver.scan_slice = opts.scan_slice;
        Self::build(opts, Arc::new(Mutex::new(resolver)), true)
    }

    fn build(
        opts: CollectOptions,
        owners: Arc<Mutex<OwnerResolver>>,
        owns_rounds: bool,
    ) -> Result<Self, CollectError> {
        let net_root = if opts.thread_netns {
            opts.procfs.join("thread-self")
        } else {
            opts.procfs.clone()
        };
        let mut table = SocketTable::open(opts.source, &net_root, &opts.procfs, &opts.rootfs)?;
        if let Some(every) = opts.bound_tracking {
            table.track_bound_only(every);
        }
        Ok(Collector {
            opts,
            table,
            owners,
            owns_rounds,
            memory: BTreeMap::new(),
            ports_dropped_total: 0,
            table_view: None,
            last_walk_cpu: None,
            unexplained_total: 0,
            early_poll: false,
            previous_poll: None,
            mains: HashMap::new(),
        })
    }

    pub fn table(&self) -> &SocketTable {
        &self.table
    }

    pub fn options(&self) -> &CollectOptions {
        &self.opts
    }

    /// A collector that shares `owners` with others; the caller starts the rounds.
    ///
    /// # Errors
    /// As [`Collector::new`].
    pub fn with_shared_owners(
        opts: CollectOptions,
        owners: Arc<Mutex<OwnerResolver>>,
    ) -> Result<Self, CollectError> {
        Self::build(opts, owners, false)
    }

    fn resolver(&self) -> std::sync::MutexGuard<'_, OwnerResolver> {
        // A panic while holding it cannot leave the cache inconsistent in a way that matters.
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn owner_stats(&self) -> crate::source::owners::ResolveStats {
        self.resolver().stats
    }

    /// The owner resolver this collector uses, for a step outside the poll that maps
    /// other sockets (unix ones) to processes with the same cache.
    pub fn owner_resolver(&self) -> Arc<Mutex<OwnerResolver>> {
        Arc::clone(&self.owners)
    }

    /// Leftovers on remembered ports that no remembered generation explains.
    pub fn unexplained_total(&self) -> u64 {
        self.unexplained_total
    }

    /// The last poll found leftovers memory cannot explain: a listener may have come
    /// and gone unseen, so the next poll should come sooner.
    pub fn wants_early_poll(&self) -> bool {
        self.early_poll
    }

    /// One poll. A dump that raced with table changes is retried (bounded).
    ///
    /// # Errors
    /// When the socket table cannot be read.
    pub fn poll(
        &mut self,
        services: &[Service],
        extra_ports: &[(Protocol, u16)],
    ) -> Result<Snapshot, CollectError> {
        self.poll_views(services, extra_ports, true)
    }

    /// A poll that walks the whole TCP table only when `walk_table` is set (or
    /// when it never has); otherwise the last walk's counts and port sockets are
    /// reused with fresh listeners. See `Snapshot::table_taken_at`.
    ///
    /// # Errors
    /// When the socket table cannot be read.
    pub fn poll_views(
        &mut self,
        services: &[Service],
        extra_ports: &[(Protocol, u16)],
        walk_table: bool,
    ) -> Result<Snapshot, CollectError> {
        let mut tries = 0;
        loop {
            match self.poll_once(services, extra_ports, walk_table) {
                Err(CollectError::Source(e)) if e.is_interrupted() && tries < 3 => {
                    tries += 1;
                    tracing::debug!(tries, "socket dump interrupted, retrying");
                }
                other => return other,
            }
        }
    }

    /// The poll's steps, in order; each names what it reads and what it decides.
    fn poll_once(
        &mut self,
        services: &[Service],
        extra_ports: &[(Protocol, u16)],
        walk_table: bool,
    ) -> Result<Snapshot, CollectError> {
        let allocation = match sysctl::read_port_allocation(&self.opts.procfs) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "using the default ephemeral port range");
                PortAllocation::default()
            }
        };
        let bindv6only = sysctl::read_bindv6only(&self.opts.procfs).unwrap_or(false);
        // 1. Listeners: a cheap in-kernel filtered dump, and the (small) UDP table. The
        //    session keeps the TCP walk's place for step 3.
        let (fresh, rest) = read_listeners(self.table.session())?;
        // 2. Ports of interest: listening, remembered, watched; capped.
        let (wanted, dropped) = ports_of_interest(
            &self.memory,
            self.opts.ports_max,
            &fresh,
            services,
            extra_ports,
        );
        self.ports_dropped_total += dropped;
        // 3. The TCP table (everything but listeners, which step 1 read fresh): walked
        //    when `walk_table` is set (or never was), else the last walk is kept, so a
        //    CPU budget can space out the expensive view while listeners stay fresh.
        let walked = walk_table || self.table_view.is_none();
        if walked {
            let cpu = thread_cpu_seconds();
            // Sized like the last walk's: growing it by doubling copied megabytes.
            let cookies_hint = self.table_view.as_ref().map_or(0, |v| v.cookies.len());
            let view = walk::walk_table(
                rest,
                &self.opts,
                cookies_hint,
                &wanted,
                &fresh.tcp,
                &allocation,
            )?;
            self.table_view = Some(view);
            self.last_walk_cpu = Some((thread_cpu_seconds() - cpu).max(0.0));
        } else {
            drop(rest);
        }
        let confirmed = self.listening_now()?;
        let view = self.port_view(&fresh, &wanted)?;
        let mut port_sockets = view.port_sockets;
        // 4. Owners and flags of the sockets that matter.
        let mut owner_of: HashMap<u64, Owner> = HashMap::new();
        if self.opts.owners {
            self.attribute(&mut port_sockets, &mut owner_of);
        }
        // 5. Listeners (live), then remember them.
        let listeners = live_listeners(&port_sockets, &owner_of);
        let holdings = self.holdings(&listeners);
        self.update_generations(&listeners, &port_sockets, fresh.at, walked, &confirmed);
        // 6. Leftovers get the flags memory may decide for them (rebind::memory).
        let known_listeners: Vec<Socket> = self
            .memory
            .values()
            .filter_map(|r| r.newest().map(|g| g.listener.clone()))
            .collect();
        let by_port = self.inherit_leftovers(port_sockets, view.table_taken_at);
        // 7. Rebind risk per endpoint; the watched services.
        let risks = self.risks(&listeners, &by_port, &holdings, &wanted);
        let port_sockets = sorted_by_port(by_port);
        let watched = conflict::evaluate(
            services,
            &port_sockets,
            &known_listeners,
            &owner_of,
            bindv6only,
        );
        Ok(Snapshot {
            taken_at: SystemTime::now(),
            bindv6only,
            source: self.table.kind(),
            counts: view.counts,
            listeners,
            port_sockets,
            risks,
            allocation,
            capabilities: self.capabilities(),
            ports_dropped_total: self.ports_dropped_total,
            memory_unexplained_total: self.unexplained_total,
            ports: wanted,
            owners: owner_of,
            holdings,
            watched,
            ephemeral_top: view.ephemeral_top,
            table_taken_at: view.table_taken_at,
            unix: Default::default(),
        })
    }

    /// A second look at the listeners: one seen before and after the walk was
    /// certainly listening while the walk read its children.
    fn listening_now(&mut self) -> Result<Confirmed, CollectError> {
        let mut inodes: HashSet<u64> = HashSet::new();
        self.table.dump(Protocol::Tcp, listen_mask(), &mut |s| {
            inodes.insert(s.inode);
        })?;
        Ok(Confirmed {
            inodes,
            at: state::unix(SystemTime::now()),
        })
    }

    /// The table view with this poll's listeners: counts of every socket, and the
    /// sockets on ports of interest (fresh listeners, then the walk's, then UDP).
    fn port_view(
        &self,
        fresh: &FreshListeners,
        wanted: &BTreeSet<(Protocol, u16)>,
    ) -> Result<PortView, CollectError> {
        let view = self.table_view.as_ref().ok_or(CollectError::NoTableView)?;
        let mut counts = view.counts.clone();
        for s in fresh.tcp.iter().chain(&fresh.udp) {
            counts.add(s);
        }
        let mut port_sockets: Vec<Socket> = fresh
            .tcp
            .iter()
            .filter(|s| wanted.contains(&(Protocol::Tcp, s.local.port())))
            .cloned()
            .collect();
        port_sockets.extend(
            view.port_sockets
                .iter()
                .filter(|s| wanted.contains(&(Protocol::Tcp, s.local.port())))
                .cloned(),
        );
        for s in &fresh.udp {
            if wanted.contains(&(Protocol::Udp, s.local.port())) {
                port_sockets.push(s.clone());
            }
        }
        Ok(PortView {
            counts: counts.into_map(),
            port_sockets,
            table_taken_at: view.taken_at,
            ephemeral_top: view.ephemeral_top.clone(),
        })
    }

    /// Step 7: the rebind risk of each remembered endpoint on a port of interest,
    /// judged with the newest listener's own flags against every socket on its port.
    /// A remembered endpoint past `--ports.max` (not in `wanted`) has no risk: its
    /// sockets were not read, and the cap counted it. A TCP port the last table walk
    /// did not cover (it became of interest since) had only its listeners read: a
    /// "clear" there is undecided (more sockets can only block more).
    fn risks(
        &self,
        listeners: &[Listener],
        by_port: &FxHashMap<(Protocol, u16), Vec<Socket>>,
        holdings: &HashMap<u64, crate::model::Holding>,
        wanted: &BTreeSet<(Protocol, u16)>,
    ) -> Vec<EndpointRisk> {
        // A live listening socket stays open after the restart while a holder
        // outside what the restart stops has it (`rebind::holders`).
        let stays = |s: &Socket| {
            holdings
                .get(&s.inode)
                .map_or(crate::model::Tri::Unknown, rebind::holders::stays)
        };
        let live: HashSet<Endpoint> = listeners.iter().map(|l| endpoint(&l.socket)).collect();
        let empty = Vec::new();
        self.memory
            .iter()
            .filter(|(ep, _)| wanted.contains(&(ep.protocol, ep.port)))
            .filter_map(|(ep, r)| {
                let listener = &r.newest()?.listener;
                let on_port = by_port.get(&(ep.protocol, ep.port)).unwrap_or(&empty);
                let mut restart = rebind::holders::judge_restart_held(listener, on_port, &stays);
                let unread = ep.protocol == Protocol::Tcp
                    && self
                        .table_view
                        .as_ref()
                        .is_none_or(|v| !v.covered.contains(ep.port));
                if unread {
                    for j in [
                        &mut restart.without_reuseaddr,
                        &mut restart.with_reuseaddr,
                        &mut restart.own_flags,
                    ] {
                        if j.verdict == rebind::Verdict::Clear {
                            j.verdict = rebind::Verdict::Unknown;
                        }
                    }
                }
                let gone = !live.contains(ep);
                Some(EndpointRisk {
                    endpoint: *ep,
                    listener: listener.clone(),
                    owner: r.owner.clone(),
                    gone,
                    holding: if gone {
                        crate::model::Holding::default()
                    } else {
                        holdings.get(&listener.inode).cloned().unwrap_or_default()
                    },
                    without_reuseaddr: restart.without_reuseaddr,
                    with_reuseaddr: restart.with_reuseaddr,
                    restart: restart.own_flags,
                })
            })
            .collect()
    }

    /// What this poll could read: flags are read through the fds attribution
    /// finds, so no owners means no flags.
    fn capabilities(&self) -> Capabilities {
        if self.opts.owners {
            let caps = self.resolver().caps;
            Capabilities {
                socket_flags: caps.owners && caps.socket_flags,
                socket_timers: self.table.timers_known(),
                ..caps
            }
        } else {
            Capabilities {
                owners: false,
                socket_flags: false,
                socket_timers: self.table.timers_known(),
                owners_denied: None,
            }
        }
    }

    /// Resolves owners of listeners and of sockets on ports of interest, and reads
    /// the flags of listeners (always) and of other sockets without a live parent
    /// listener (bounded by `probe_max`), since accepted children copy the
    /// listener's flags and probing thousands of connections each poll is waste.
    fn attribute(&mut self, sockets: &mut [Socket], owner_of: &mut HashMap<u64, Owner>) {
        let owners = self.owners.clone();
        let mut resolver = owners.lock().unwrap_or_else(|p| p.into_inner());
        if self.owns_rounds {
            resolver.next_round();
        }
        // `owners` is what the last full scan found (it persists while no scan is
        // needed); `socket_flags` is re-learnt by this poll's probes.
        resolver.caps.socket_flags = true;
        let listener_ports: HashSet<(Protocol, u16)> = sockets
            .iter()
            .filter(|s| s.state == State::Listen)
            .map(|s| (s.protocol, s.local.port()))
            .collect();
        let wanted: HashSet<u64> = sockets
            .iter()
            .filter(|s| s.inode != 0)
            .filter(|s| {
                self.opts.probe_all
                    || s.is_listener()
                    || !listener_ports.contains(&(s.protocol, s.local.port()))
            })
            .map(|s| s.inode)
            .collect();
        let fds = resolver.resolve(&wanted);
        let mut probes = 0;
        let mut by_pid: HashMap<u32, Option<Owner>> = HashMap::new();
        for s in sockets.iter_mut() {
            let Some(&r) = fds.get(&s.inode) else {
                continue;
            };
            let owner = by_pid
                .entry(r.pid)
                .or_insert_with(|| resolver.owner(r.pid))
                .clone();
            if let Some(o) = owner {
                owner_of.insert(s.inode, o);
            }
            if !s.is_listener() {
                if probes >= self.opts.probe_max {
                    continue;
                }
                probes += 1;
            }
            if let Some(p) = resolver.probe(r, s.local.ip().is_ipv6(), s.inode) {
                s.flags = p.flags;
                if s.ifindex.is_none() {
                    s.ifindex = Some(p.ifindex);
                }
                s.v6only = s.v6only.or(p.v6only);
            }
        }
    }
}

/// Step 1: the TCP listeners (an in-kernel filtered dump) and the UDP table. A
/// listener on port 0 cannot exist (listen() and a UDP bind pick a port): from any
/// source it is malformed, dropped and counted with the malformed lines.
fn read_listeners(session: Session<'_>) -> Result<(FreshListeners, Listened<'_>), CollectError> {
    let mut zero = 0u64;
    let mut tcp = Vec::new();
    let mut rest = session.listeners(&mut |s| {
        if s.local.port() == 0 {
            zero += 1;
        } else {
            tcp.push(s.clone());
        }
    })?;
    let at = state::unix(SystemTime::now());
    let mut udp = Vec::new();
    rest.udp(ALL_STATES, &mut |s| {
        if s.local.port() == 0 && s.is_listener() {
            zero += 1;
        } else {
            udp.push(s.clone());
        }
    })?;
    if zero > 0 {
        rest.count_malformed(zero);
        tracing::debug!(
            listeners = zero,
            "skipped listeners on port 0 (malformed socket table records)"
        );
    }
    Ok((FreshListeners { tcp, udp, at }, rest))
}

/// Step 2: the ports of interest (listening, remembered, watched), capped at
/// `ports_max`; the highest are left out and counted (the second value).
fn ports_of_interest(
    memory: &BTreeMap<Endpoint, Remembered>,
    ports_max: usize,
    fresh: &FreshListeners,
    services: &[Service],
    extra_ports: &[(Protocol, u16)],
) -> (BTreeSet<(Protocol, u16)>, u64) {
    let mut wanted: BTreeSet<(Protocol, u16)> = fresh
        .tcp
        .iter()
        .chain(fresh.udp.iter().filter(|s| s.is_listener()))
        .map(|s| (s.protocol, s.local.port()))
        .collect();
    wanted.extend(memory.keys().map(|e| (e.protocol, e.port)));
    wanted.extend(extra_ports.iter().copied());
    wanted.extend(services.iter().map(|s| (s.protocol, s.port)));
    if wanted.len() <= ports_max {
        return (wanted, 0);
    }
    let dropped = wanted.len() - ports_max;
    tracing::warn!(
        dropped,
        max = ports_max,
        "more ports of interest than --ports.max; the highest are left out (watched ones last)"
    );
    // Watched and asked-for ports first: their status is judged from these sockets.
    let mut kept: BTreeSet<(Protocol, u16)> = services
        .iter()
        .map(|s| (s.protocol, s.port))
        .chain(extra_ports.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(ports_max)
        .collect();
    for p in wanted {
        if kept.len() >= ports_max {
            break;
        }
        kept.insert(p);
    }
    (kept, dropped as u64)
}

/// `net.ipv4.tcp_fin_timeout` in seconds (the kernel's default, 60, if unreadable):
/// the timer of a FIN_WAIT2 timewait socket (`rebind::memory::existed_at`).
fn read_fin_timeout(procfs: &Path) -> f64 {
    std::fs::read_to_string(procfs.join("sys/net/ipv4/tcp_fin_timeout"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map_or(60.0, f64::from)
}

/// CPU time of the calling thread, in seconds.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
