//! One poll: socket table -> [`Snapshot`]. Keeps what must survive between polls:
//! the owner cache and the memory of each endpoint's listener generations, so the
//! leftovers of a daemon that just died are judged with its flags where
//! [`rebind::memory`] says they may be (the rule lives there, not here).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Service;
use crate::conflict;
use crate::model::{
    Endpoint, EndpointRisk, Family, Listener, Owner, Protocol, Snapshot, Socket, State, StateCounts,
};
use crate::rebind;
use crate::rebind::memory::{self, Generation};
use crate::source::netlink::ALL_STATES;
use crate::source::owners::{Capabilities, OwnerResolver};
use crate::source::sysctl::{self, PortAllocation};
use crate::source::{listen_mask, SocketTable, SourceChoice, SourceError};
use crate::state;
use crate::tally::EphemeralTally;

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
        }
    }
}

/// What is remembered of one endpoint: its listener generations (oldest first)
/// and the owner of the newest.
#[derive(Debug, Clone)]
struct Remembered {
    generations: Vec<Generation>,
    owner: Option<Owner>,
}

/// Gone generations kept per endpoint beyond the live ones (restarts); older ones
/// are forgotten, which only makes answers unknown, never wrong.
const GONE_GENERATIONS_KEPT: usize = 4;

impl Remembered {
    /// The newest generation (the one a restart would replace).
    fn newest(&self) -> Option<&Generation> {
        self.generations
            .iter()
            .max_by(|a, b| a.last_seen.total_cmp(&b.last_seen))
    }
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
}

/// What one walk of the whole TCP table yields.
struct TableView {
    /// (port, local address, cookie) of the sockets on ports of interest that are
    /// not TIME_WAIT, bounded by [`COOKIES_MAX`]: the children listeners had.
    cookies: Vec<(u16, std::net::IpAddr, u64)>,
    counts: FastCounts,
    port_sockets: Vec<Socket>,
    ephemeral_top: Vec<(crate::conflict::Bucket, u32)>,
    taken_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("reading the socket table: {0}")]
    Source(#[from] SourceError),
    #[error("no walk of the socket table yet")]
    NoTableView,
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
        let table = SocketTable::open(opts.source, &net_root)?;
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
        })
    }

    pub fn table(&self) -> &SocketTable {
        &self.table
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
                    ..state::Entry::from_socket(&g.listener, r.owner.as_ref(), UNIX_EPOCH)
                })
            })
            .collect()
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

    /// Seeds the memory from a state file; `interval` is its writer's poll interval
    /// (which bounds how long after a sighting leftovers are trusted to a listener).
    /// Generations seen by the next poll are extended, the others marked gone.
    pub fn remember(&mut self, entries: &[state::Entry], interval: Duration) {
        for e in entries {
            let Some(socket) = e.to_socket() else {
                continue;
            };
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

    /// One walk of the whole TCP table (listeners excepted): counts, the sockets on
    /// ports of interest, and the ephemeral-bucket tally. Per socket this must stay
    /// a few array and bitmap look-ups: at a million sockets every nanosecond here
    /// is a millisecond of poll.
    fn walk_table(
        &mut self,
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
            cookies: Vec::new(),
            listener_ports: PortSet::from_iter(tcp_listeners.iter().map(|s| s.local.port())),
            wanted: wanted_set,
            allocation,
            counts: FastCounts::default(),
            port_sockets: Vec::new(),
            folder: Folder::new(self.opts.fold, self.opts.probe_max),
            tally: EphemeralTally::new(self.opts.ephemeral_counters),
        };
        // Each socket is taken AHEAD messages after it was decoded and its slot
        // and counter prefetched, so their loads overlap instead of stalling.
        const AHEAD: usize = 8;
        let mut ring: [Option<Socket>; AHEAD] = Default::default();
        let mut head = 0;
        let states = ALL_STATES & !listen_mask();
        self.table.dump(Protocol::Tcp, states, &mut |s| {
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
            ephemeral_top: tally.top(self.opts.ephemeral_top_k),
            taken_at: SystemTime::now(),
        })
    }

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
        // 1. Listeners: a cheap in-kernel filtered dump, and the (small) UDP table.
        let mut tcp_listeners = Vec::new();
        self.table.dump(Protocol::Tcp, listen_mask(), &mut |s| {
            tcp_listeners.push(s.clone())
        })?;
        let listeners_at = state::unix(SystemTime::now());
        let mut udp = Vec::new();
        self.table
            .dump(Protocol::Udp, ALL_STATES, &mut |s| udp.push(s.clone()))?;

        // 2. Ports of interest: listening, remembered, watched; capped.
        let mut wanted: BTreeSet<(Protocol, u16)> = tcp_listeners
            .iter()
            .chain(udp.iter().filter(|s| s.is_listener()))
            .map(|s| (s.protocol, s.local.port()))
            .collect();
        wanted.extend(self.memory.keys().map(|e| (e.protocol, e.port)));
        wanted.extend(extra_ports.iter().copied());
        wanted.extend(services.iter().map(|s| (s.protocol, s.port)));
        if wanted.len() > self.opts.ports_max {
            let dropped = wanted.len() - self.opts.ports_max;
            self.ports_dropped_total += dropped as u64;
            tracing::warn!(
                dropped,
                max = self.opts.ports_max,
                "more ports of interest than --ports.max; the highest are left out"
            );
            wanted = wanted.into_iter().take(self.opts.ports_max).collect();
        }

        // 3. The TCP table (everything but listeners, which step 1 read fresh):
        // walked in full when `walk_table` is set, else the last walk is reused, so a
        // CPU budget can space out the expensive view while listeners stay fresh.
        let walked = walk_table || self.table_view.is_none();
        if walked {
            let cpu = thread_cpu_seconds();
            self.table_view = Some(self.walk_table(&wanted, &tcp_listeners, &allocation)?);
            self.last_walk_cpu = Some((thread_cpu_seconds() - cpu).max(0.0));
        }
        // A second look at the listeners: one seen before and after the walk was
        // certainly listening while the walk read its children.
        let mut still_listening: HashSet<u64> = HashSet::new();
        self.table.dump(Protocol::Tcp, listen_mask(), &mut |s| {
            still_listening.insert(s.inode);
        })?;
        let confirmed_at = state::unix(SystemTime::now());
        let view = self.table_view.as_ref().ok_or(CollectError::NoTableView)?;
        let mut counts = view.counts.clone();
        for s in tcp_listeners.iter().chain(&udp) {
            counts.add(s);
        }
        let mut port_sockets: Vec<Socket> = tcp_listeners
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
        for s in &udp {
            if wanted.contains(&(Protocol::Udp, s.local.port())) {
                port_sockets.push(s.clone());
            }
        }
        let counts = counts.into_map();
        let table_taken_at = view.taken_at;
        let ephemeral_top = view.ephemeral_top.clone();

        // 4. Owners and flags of the sockets that matter.
        let mut owner_of: HashMap<u64, Owner> = HashMap::new();
        if self.opts.owners {
            self.attribute(&mut port_sockets, &mut owner_of);
        }

        // 5. Listeners (live), then remember them.
        let listeners: Vec<Listener> = port_sockets
            .iter()
            .filter(|s| s.is_listener())
            .map(|s| Listener {
                socket: s.clone(),
                owner: owner_of.get(&s.inode).cloned(),
            })
            .collect();
        self.track_generations(&listeners, listeners_at);
        let walk_cookies = if walked {
            self.table_view.as_ref().map(|v| v.cookies.as_slice())
        } else {
            None
        };
        confirm_generations(
            &mut self.memory,
            &still_listening,
            confirmed_at,
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

        // 6. Leftovers get the flags memory may decide for them (rebind::memory).
        let known_listeners: Vec<Socket> = self
            .memory
            .values()
            .filter_map(|r| r.newest().map(|g| g.listener.clone()))
            .collect();
        // Everything below is per port: group once instead of filtering per endpoint
        // (hundreds of listening ports times thousands of sockets at scale).
        let mut generations_by_port: HashMap<(Protocol, u16), Vec<Generation>> = HashMap::new();
        for (ep, r) in &self.memory {
            generations_by_port
                .entry((ep.protocol, ep.port))
                .or_default()
                .extend(r.generations.iter().cloned());
        }
        let mut by_port: HashMap<(Protocol, u16), Vec<Socket>> = HashMap::new();
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

        // 7. Rebind risk per endpoint.
        let live: HashSet<Endpoint> = listeners.iter().map(|l| endpoint(&l.socket)).collect();
        let empty = Vec::new();
        let risks = self
            .memory
            .iter()
            .filter_map(|(ep, r)| {
                let listener = &r.newest()?.listener;
                let on_port = by_port.get(&(ep.protocol, ep.port)).unwrap_or(&empty);
                let restart = rebind::judge_restart(listener, on_port);
                Some(EndpointRisk {
                    endpoint: *ep,
                    listener: listener.clone(),
                    owner: r.owner.clone(),
                    gone: !live.contains(ep),
                    without_reuseaddr: restart.without_reuseaddr,
                    with_reuseaddr: restart.with_reuseaddr,
                    restart: restart.own_flags,
                })
            })
            .collect();
        let mut ports_sorted: Vec<((Protocol, u16), Vec<Socket>)> = by_port.into_iter().collect();
        ports_sorted.sort_by_key(|(k, _)| *k);
        let port_sockets: Vec<Socket> = ports_sorted.into_iter().flat_map(|(_, v)| v).collect();

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
            counts,
            listeners,
            port_sockets,
            risks,
            allocation,
            capabilities: if self.opts.owners {
                // Flags are read through the fds attribution finds: no owners, no flags.
                let caps = self.resolver().caps;
                Capabilities {
                    socket_flags: caps.owners && caps.socket_flags,
                    ..caps
                }
            } else {
                Capabilities {
                    owners: false,
                    socket_flags: false,
                    owners_denied: None,
                }
            },
            ports_dropped_total: self.ports_dropped_total,
            memory_unexplained_total: self.unexplained_total,
            ports: wanted,
            owners: owner_of,
            watched,
            ephemeral_top,
            table_taken_at,
        })
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

/// Generations whose listener the second dump still saw (same inode) were
/// listening throughout the poll: their last sighting moves to `at`, and, when the
/// poll walked the table, the cookies it read on their addresses become their
/// children.
fn confirm_generations(
    memory: &mut BTreeMap<Endpoint, Remembered>,
    still_listening: &HashSet<u64>,
    at: f64,
    cookies: Option<&[(u16, std::net::IpAddr, u64)]>,
) {
    let mut by_port: HashMap<u16, Vec<(std::net::IpAddr, u64)>> = HashMap::new();
    for &(port, ip, cookie) in cookies.unwrap_or_default() {
        by_port.entry(port).or_default().push((ip, cookie));
    }
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
            if cookies.is_none() {
                continue;
            }
            let mut children: Vec<u64> = by_port
                .get(&ep.port)
                .into_iter()
                .flatten()
                .filter(|(ip, _)| g.may_parent_at(Protocol::Tcp, *ip, ep.port))
                .map(|&(_, c)| c)
                .take(memory::CHILDREN_MAX)
                .collect();
            children.sort_unstable();
            g.children = children;
        }
    }
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

/// Socket cookies a walk keeps at most (8 MB): beyond, fewer leftovers can be
/// linked to their listener, none wrongly.
const COOKIES_MAX: usize = 262_144;

/// What one walk of the TCP table gathers, socket by socket.
struct Walk<'a> {
    cookies: Vec<(u16, std::net::IpAddr, u64)>,
    wanted: PortSet,
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
            // A TIME_WAIT already dates itself by its timer.
            if s.cookie != 0 && s.state != State::TimeWait && self.cookies.len() < COOKIES_MAX {
                self.cookies.push((port, s.local.ip(), s.cookie));
            }
            self.folder.push(
                s,
                self.listener_ports.contains(port),
                &mut self.port_sockets,
            );
        }
        if self.allocation.in_range(port) {
            self.tally.add(s);
        }
    }
}

/// Ports as a 65,536-bit set: one bit test per socket in the hot loop.
struct PortSet(Vec<u64>);

impl PortSet {
    fn from_iter(ports: impl Iterator<Item = u16>) -> Self {
        let mut bits = vec![0u64; 1024];
        for p in ports {
            bits[usize::from(p) / 64] |= 1 << (p % 64);
        }
        PortSet(bits)
    }

    fn contains(&self, p: u16) -> bool {
        self.0[usize::from(p) / 64] & (1 << (p % 64)) != 0
    }
}

/// Socket counts by (protocol, family, state) in a flat array.
#[derive(Default, Clone)]
struct FastCounts([[[u64; 14]; 2]; 2]);

impl FastCounts {
    fn add(&mut self, s: &Socket) {
        let p = (s.protocol == Protocol::Udp) as usize;
        let f = (s.family() == Family::Ipv6) as usize;
        self.0[p][f][s.state as usize] += 1;
    }

    fn into_map(self) -> StateCounts {
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

/// Folds the sockets of a busy port that differ only in their peer (and so are
/// judged alike by the bind rules) into one entry with a count, so the agent's
/// memory stays flat however many connections a port has. Listeners, and sockets
/// with a file on ports without a live listener (possible thieves, forked
/// children), stay individual up to `individual_max` so their owners can be read.
///
/// Call [`Folder::finish`] after the last push: counts gather in the slots first.
struct Folder {
    enabled: bool,
    individual_left: usize,
    index: crate::fasthash::FxHashMap<FoldKey, usize>,
    /// Per local port, its row in `slots` (0: none yet).
    rows: Vec<u16>,
    /// Per (row, common state): the class and entry the last such socket folded
    /// into, and the sockets gathered for it since. Most sockets of a busy port in
    /// one state share a class, so a compare here replaces the hash look-up; keyed
    /// by state because a busy port's ESTABLISHED and TIME_WAIT sockets interleave
    /// in the kernel's hash. One cache line per slot, prefetched by the walk; the
    /// rare states go to the hash directly, which keeps a row at 256 bytes.
    slots: Vec<[Slot; SLOTTED]>,
}

/// States with a slot: where a busy port's sockets pile up.
const SLOTTED: usize = 4;

fn slot_of(state: State) -> Option<usize> {
    match state {
        State::Established => Some(0),
        State::TimeWait => Some(1),
        State::CloseWait => Some(2),
        State::FinWait2 => Some(3),
        _ => None,
    }
}

/// What makes two sockets of one port and state fold together, packed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SlotClass {
    /// The local address; IPv4 in the first word.
    ip: [u32; 4],
    uid: u32,
    /// `u32::MAX` where the source cannot tell.
    ifindex: u32,
    /// Bit 0: IPv6; bits 1-2: V6ONLY as `Tri`; bit 3: has a file.
    flags: u8,
}

impl SlotClass {
    fn of(s: &Socket) -> SlotClass {
        let (ip, v6) = match s.local.ip() {
            std::net::IpAddr::V4(a) => ([u32::from(a), 0, 0, 0], 0),
            std::net::IpAddr::V6(a) => {
                let o = a.octets();
                let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                ([w(0), w(4), w(8), w(12)], 1)
            }
        };
        let v6only = match s.v6only {
            crate::model::Tri::True => 1,
            crate::model::Tri::False => 2,
            crate::model::Tri::Unknown => 3,
        };
        SlotClass {
            ip,
            uid: s.uid,
            ifindex: s.ifindex.unwrap_or(u32::MAX),
            flags: v6 | v6only << 1 | u8::from(s.inode != 0) << 3,
        }
    }
}

#[derive(Clone, Copy)]
#[repr(align(64))]
struct Slot {
    class: SlotClass,
    /// 1 + the index of the entry (0: empty slot).
    entry: u32,
    /// Sockets folded here and not yet added to the entry, and their longest timer.
    pending: u32,
    pending_expires: Option<u64>,
}

const EMPTY_SLOT: Slot = Slot {
    class: SlotClass {
        ip: [0; 4],
        uid: 0,
        ifindex: 0,
        flags: 0,
    },
    entry: 0,
    pending: 0,
    pending_expires: None,
};

#[derive(Hash, PartialEq, Eq)]
struct FoldKey {
    state: State,
    local: std::net::SocketAddr,
    uid: u32,
    ifindex: Option<u32>,
    v6only: crate::model::Tri,
    has_file: bool,
}

impl Folder {
    fn new(enabled: bool, individual_max: usize) -> Self {
        Folder {
            enabled,
            individual_left: individual_max,
            index: Default::default(),
            rows: if enabled { vec![0; 65536] } else { Vec::new() },
            // Row 0 is the "none yet" sentinel.
            slots: vec![[EMPTY_SLOT; SLOTTED]],
        }
    }

    /// Starts loading the slot `push(s)` will touch.
    #[inline]
    fn prefetch(&self, s: &Socket) {
        let row = self.rows.get(usize::from(s.local.port())).copied();
        if let (Some(row @ 1..), Some(st)) = (row, slot_of(s.state)) {
            crate::fasthash::prefetch(&self.slots[usize::from(row)][st]);
        }
    }

    fn flush(slot: &mut Slot, out: &mut [Socket]) {
        if slot.entry != 0 && slot.pending != 0 {
            let e = &mut out[slot.entry as usize - 1];
            e.count += slot.pending;
            e.expires_ms = e.expires_ms.max(slot.pending_expires);
        }
        slot.pending = 0;
        slot.pending_expires = None;
    }

    fn push(&mut self, s: &Socket, port_has_listener: bool, out: &mut Vec<Socket>) {
        if !self.enabled || s.state == State::Listen {
            out.push(s.clone());
            return;
        }
        if s.inode != 0 && !port_has_listener && self.individual_left > 0 {
            self.individual_left -= 1;
            out.push(s.clone());
            return;
        }
        let port = usize::from(s.local.port());
        let mut row = usize::from(self.rows[port]);
        if row == 0 {
            // One row per port; past 65,535 rows the rest go without slots.
            if let Ok(r) = u16::try_from(self.slots.len()) {
                row = usize::from(r);
                self.rows[port] = r;
                self.slots.push([EMPTY_SLOT; SLOTTED]);
            }
        }
        let st = slot_of(s.state).filter(|_| row != 0);
        let class = SlotClass::of(s);
        if let Some(st) = st {
            let slot = &mut self.slots[row][st];
            if slot.entry != 0 && slot.class == class {
                slot.pending += s.count;
                slot.pending_expires = slot.pending_expires.max(s.expires_ms);
                return;
            }
            Self::flush(slot, out);
        }
        let key = FoldKey {
            state: s.state,
            local: s.local,
            uid: s.uid,
            ifindex: s.ifindex,
            v6only: s.v6only,
            has_file: s.inode != 0,
        };
        let i = match self.index.get(&key) {
            Some(&i) => {
                let e = &mut out[i];
                e.count += s.count;
                e.expires_ms = e.expires_ms.max(s.expires_ms);
                i
            }
            None => {
                self.index.insert(key, out.len());
                out.push(s.clone());
                out.len() - 1
            }
        };
        if let Some(st) = st {
            self.slots[row][st] = Slot {
                class,
                entry: u32::try_from(i + 1).unwrap_or(0),
                ..EMPTY_SLOT
            };
        }
    }

    /// Adds what the slots gathered to their entries.
    fn finish(&mut self, out: &mut [Socket]) {
        for row in &mut self.slots {
            for slot in row.iter_mut() {
                Self::flush(slot, out);
            }
        }
    }
}

/// Counts of one protocol and family, with every known state present (0 if none).
pub fn state_labels(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Tcp => &[
            "established",
            "syn_sent",
            "syn_recv",
            "fin_wait1",
            "fin_wait2",
            "time_wait",
            "close",
            "close_wait",
            "last_ack",
            "listen",
            "closing",
            "new_syn_recv",
            "bound_inactive",
        ],
        Protocol::Udp => &crate::model::UDP_STATE_LABELS,
    }
}

/// `bindwatch_sockets` values: (protocol, family, state label) -> count, with zeros.
pub fn socket_counts(counts: &StateCounts) -> BTreeMap<(Protocol, Family, &'static str), u64> {
    let mut out = BTreeMap::new();
    for p in Protocol::ALL {
        for f in Family::ALL {
            for l in state_labels(p) {
                out.insert((p, f, *l), 0);
            }
        }
    }
    for (&(p, f, s), &n) in counts {
        *out.entry((p, f, s.label(p))).or_default() += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(state: State, local: &str, remote: &str, inode: u64, expires: u64) -> Socket {
        Socket {
            inode,
            expires_ms: Some(expires),
            ..Socket::test(state, local, remote)
        }
    }

    #[test]
    fn folding_keeps_counts_classes_and_the_longest_timer() {
        let mut out = Vec::new();
        let mut f = Folder::new(true, 1);
        let input = [
            sock(State::Established, "10.0.0.1:443", "10.0.0.9:1", 11, 0),
            sock(State::TimeWait, "10.0.0.1:443", "10.0.0.9:2", 0, 30_000),
            sock(State::Established, "10.0.0.1:443", "10.0.0.9:3", 12, 0),
            sock(State::TimeWait, "10.0.0.1:443", "10.0.0.9:4", 0, 59_000),
            sock(State::Established, "10.0.0.2:443", "10.0.0.9:5", 13, 0),
            sock(State::Established, "10.0.0.1:443", "10.0.0.9:6", 14, 0),
        ];
        for s in &input {
            f.push(s, true, &mut out);
        }
        // On a port without a listener, the first socket with a file stays individual.
        f.push(
            &sock(State::Established, "10.0.0.1:8080", "10.0.0.9:7", 15, 0),
            false,
            &mut out,
        );
        f.push(
            &sock(State::Established, "10.0.0.1:8080", "10.0.0.9:8", 16, 0),
            false,
            &mut out,
        );
        f.finish(&mut out);
        let summary: Vec<(State, String, u32, Option<u64>)> = out
            .iter()
            .map(|s| (s.state, s.local.to_string(), s.count, s.expires_ms))
            .collect();
        assert_eq!(
            summary,
            vec![
                (State::Established, "10.0.0.1:443".into(), 3, Some(0)),
                (State::TimeWait, "10.0.0.1:443".into(), 2, Some(59_000)),
                (State::Established, "10.0.0.2:443".into(), 1, Some(0)),
                (State::Established, "10.0.0.1:8080".into(), 1, Some(0)),
                (State::Established, "10.0.0.1:8080".into(), 1, Some(0)),
            ]
        );
        assert_eq!(
            out.iter().map(|s| s.count).sum::<u32>(),
            8,
            "no socket lost"
        );
        let mut plain = Vec::new();
        let mut off = Folder::new(false, 0);
        for s in &input {
            off.push(s, true, &mut plain);
        }
        assert_eq!(
            plain.len(),
            input.len(),
            "one-shot commands see every socket"
        );
    }

    #[test]
    fn folding_matches_a_plain_grouping_on_interleaved_sockets() {
        // Ports, states, addresses and timers interleaved as a kernel hash walk
        // would hand them over; the fold must agree with a naive group-by.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::new();
        let mut f = Folder::new(true, 0);
        let mut naive: BTreeMap<(State, String, bool), (u32, Option<u64>)> = BTreeMap::new();
        for i in 0..5000u64 {
            let r = next();
            // Every state but LISTEN (listeners stay individual by design).
            let state = match State::ALL[(r % 13) as usize] {
                State::Listen => State::Established,
                st => st,
            };
            let local = format!("10.0.0.{}:{}", 1 + (r >> 8) % 2, 440 + (r >> 16) % 4);
            let has_file = state != State::TimeWait && (r >> 24) % 5 != 0;
            let s = sock(
                state,
                &local,
                &format!("10.1.0.1:{}", 1000 + i),
                if has_file { 100 + i } else { 0 },
                (r >> 32) % 60_000,
            );
            f.push(&s, true, &mut out);
            let e = naive.entry((state, local, has_file)).or_default();
            e.0 += 1;
            e.1 = e.1.max(s.expires_ms);
        }
        f.finish(&mut out);
        let folded: BTreeMap<(State, String, bool), (u32, Option<u64>)> = out
            .iter()
            .map(|s| {
                (
                    (s.state, s.local.to_string(), s.inode != 0),
                    (s.count, s.expires_ms),
                )
            })
            .collect();
        assert_eq!(folded.len(), out.len(), "one entry per class");
        assert_eq!(folded, naive);
    }
}
