//! Loading and running the failure tracer (`bpf/bindevents.bpf.c`): attach to the
//! syscall tracepoints, read the ring buffer on a thread of its own, capture the
//! port's sockets after each failure (a port-filtered sock_diag dump), judge them
//! with the engine against the poller's last snapshots, and hand the `ports` map
//! (successful binds worth reporting) to [`super::inputs::Inputs`], which the
//! poller keeps in step with its ports of interest.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::Ebpf;

use super::decode::{self, Call, Errno, Event};
use super::inputs::PortFilter;
use super::log::{self, Observed, Outcome};
use super::ratelimit::{self, CaptureBudget, Held, LogLimiter};
use super::Events;
use crate::model::{Protocol, Snapshot, Socket};
use crate::netns::{self, Netns};
use crate::source::bpf::BpfError;
use crate::source::bpfload::{self, Loaded};
use crate::source::netlink::{NetlinkDiag, Request, ALL_STATES};

/// The compiled program (built by scripts/build-bpf.sh, committed).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/bindevents.bpf.o");
/// What the object is called in errors.
const OBJECT_NAME: &str = "the bind tracer (bpf/bindevents.bpf.o)";

/// (program, tracepoint) pairs, all under the `syscalls` category.
const PROGRAMS: [(&str, &str); 6] = [
    ("enter_bind", "sys_enter_bind"),
    ("exit_bind", "sys_exit_bind"),
    ("enter_listen", "sys_enter_listen"),
    ("exit_listen", "sys_exit_listen"),
    ("enter_connect", "sys_enter_connect"),
    ("exit_connect", "sys_exit_connect"),
];

/// Port captures after failures per second; a crash loop beyond it is still counted,
/// its blockers are not captured again.
const CAPTURES_PER_SECOND: u32 = 50;

/// The share of the tracer thread's time captures may take over a flood (the rest
/// drains the ring), and the capture time a burst of failures may use at once.
const CAPTURE_SHARE: f64 = 0.25;
const CAPTURE_BURST: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    Tracefs(std::io::Error),
    #[error("tracefs at {path} is mounted but not readable: {source}")]
    TracefsUnreadable {
        path: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] BpfError),
    #[error("attaching to tracepoint syscalls/{name}: {source}")]
    Attach {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("the object has no map {0}")]
    NoMap(&'static str),
    #[error("opening map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("starting the tracer thread: {0}")]
    Thread(std::io::Error),
}

/// What the tracer needs to know about the agent.
#[derive(Debug, Clone)]
pub struct TracerOptions {
    pub procfs: PathBuf,
    pub run_netns: PathBuf,
    /// `--path.rootfs`: where a failed unix bind's path is looked at when the caller's
    /// own root (`/proc/PID/root`) is gone.
    pub rootfs: PathBuf,
    /// `--netns all`: report every namespace with its name; else only bindwatch's own.
    pub all_netns: bool,
    /// At most one log line per port and call in this time (the poll interval).
    pub log_interval: Duration,
}

/// A running tracer; dropping the handle detaches nothing, [`Tracer::stop`] does.
pub struct Tracer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    events: Arc<Events>,
}

impl Tracer {
    /// Stops the thread (within one ring-buffer poll timeout) and detaches the programs.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.events.inputs().detach();
    }
}

/// The program's `ports` map, kept by the poller through [`super::inputs::Inputs`].
struct PortsMap(BpfHashMap<MapData, u16, u8>);

impl PortFilter for PortsMap {
    fn insert(&mut self, port: u16) -> Result<(), String> {
        self.0.insert(port, 1, 0).map_err(|e| e.to_string())
    }

    fn remove(&mut self, port: u16) {
        let _ = self.0.remove(&port);
    }
}

/// aya finds tracefs at /sys/kernel/tracing or /sys/kernel/debug/tracing; where
/// neither is mounted (a minimal host), mount it: attaching needs the tracepoint ids.
fn ensure_tracefs() -> Result<(), LoadError> {
    let mut unreadable = None;
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        match std::fs::metadata(Path::new(p).join("events")) {
            Ok(m) if m.is_dir() => return Ok(()),
            // Mounted (or behind a directory) this process may not read: mounting
            // again would not help, and "not mounted" would send the reader astray.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                unreadable.get_or_insert((p, e));
            }
            _ => {}
        }
    }
    if let Some((path, source)) = unreadable {
        return Err(LoadError::TracefsUnreadable { path, source });
    }
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (src, target, fstype) = (c("tracefs"), c("/sys/kernel/tracing"), c("tracefs"));
    // SAFETY: plain mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(LoadError::Tracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at /sys/kernel/tracing to attach the bind tracer");
    Ok(())
}

/// Loads and attaches the programs and starts the reader thread.
///
/// # Errors
/// Whatever keeps the tracer from running (no BPF privilege, no BTF, no tracefs):
/// the caller logs it once and exports `bindwatch_capability{capability="bind_events"} 0`.
pub fn start(opts: TracerOptions, events: Arc<Events>) -> Result<Tracer, LoadError> {
    ensure_tracefs()?;
    let Loaded { ebpf: mut bpf, btf } = bpfload::load(OBJECT, OBJECT_NAME, &[])?;
    for (name, _) in PROGRAMS {
        bpfload::program::<TracePoint>(&mut bpf, OBJECT_NAME, name)?
            .load()
            .map_err(|e| bpfload::failed(OBJECT_NAME, format!("program {name}"), &e))?;
    }
    bpfload::release_btf(btf);
    for (name, tp) in PROGRAMS {
        bpfload::program::<TracePoint>(&mut bpf, OBJECT_NAME, name)?
            .attach("syscalls", tp)
            .map_err(|source| LoadError::Attach { name: tp, source })?;
    }
    let ring = RingBuf::try_from(bpf.take_map("events").ok_or(LoadError::NoMap("events"))?)
        .map_err(|source| LoadError::Map {
            name: "events",
            source,
        })?;
    let ports: BpfHashMap<MapData, u16, u8> = BpfHashMap::try_from(
        bpf.take_map("ports").ok_or(LoadError::NoMap("ports"))?,
    )
    .map_err(|source| LoadError::Map {
        name: "ports",
        source,
    })?;
    let lost: PerCpuArray<MapData, u64> = PerCpuArray::try_from(
        bpf.take_map("lost").ok_or(LoadError::NoMap("lost"))?,
    )
    .map_err(|source| LoadError::Map {
        name: "lost",
        source,
    })?;
    let own_netns = netns::own_inode(&opts.procfs);
    let opts_interval = opts.log_interval;
    let stop = Arc::new(AtomicBool::new(false));
    let mut reader = Reader {
        _bpf: bpf,
        ring,
        lost,
        opts,
        events: events.clone(),
        own_netns,
        diag: None,
        namespaces: HashMap::new(),
        discovered: None,
        captures: CaptureBudget::new(CAPTURES_PER_SECOND, CAPTURE_SHARE, CAPTURE_BURST),
        limiter: LogLimiter::new(opts_interval),
    };
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("bindwatch-events".into())
        .spawn(move || reader.run(&stop2))
        .map_err(LoadError::Thread)?;
    events.inputs().attach(Box::new(PortsMap(ports)));
    events.set_active(true);
    Ok(Tracer {
        stop,
        thread: Some(thread),
        events,
    })
}

struct Reader {
    /// Owns the loaded programs: dropping it detaches them.
    _bpf: Ebpf,
    ring: RingBuf<MapData>,
    /// Ring-buffer reserve failures, per CPU.
    lost: PerCpuArray<MapData, u64>,
    opts: TracerOptions,
    events: Arc<Events>,
    own_netns: Option<u64>,
    /// sock_diag socket of bindwatch's own namespace, opened on first use.
    diag: Option<NetlinkDiag>,
    /// Namespaces by inode (`--netns all`), refreshed when an unknown one shows up.
    namespaces: HashMap<u64, Netns>,
    discovered: Option<Instant>,
    /// Port captures after failures: bounded in count and in time.
    captures: CaptureBudget,
    /// Failure and miss lines: at most one per port and call per interval.
    limiter: LogLimiter,
}

impl Reader {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 200) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "polling the bind tracer's ring buffer failed; stopping it");
                    self.events.set_active(false);
                    return;
                }
            }
            // Copy each record out first: the item borrows the ring.
            let mut batch = Vec::new();
            while let Some(item) = self.ring.next() {
                batch.push(item.to_vec());
                if batch.len() >= 1024 {
                    break;
                }
            }
            for raw in batch {
                if super::unix::is_unix_record(&raw) {
                    match super::unix::decode(&raw) {
                        Ok(e) => self.handle_unix(&e),
                        Err(err) => tracing::debug!(error = %err, "skipping a bind tracer record"),
                    }
                    continue;
                }
                match decode::decode(&raw) {
                    Ok(e) => self.handle(&e),
                    Err(err) => tracing::debug!(error = %err, "skipping a bind tracer record"),
                }
            }
            self.read_lost();
            for (netns, line) in self.limiter.flush(Instant::now()) {
                tracing::warn!(netns, "{line}");
            }
        }
    }

    /// The program's count of events lost to a full ring buffer, summed over CPUs.
    fn read_lost(&self) {
        match self.lost.get(&0, 0) {
            Ok(per_cpu) => self
                .events
                .set_lost(per_cpu.iter().fold(0u64, |a, n| a.saturating_add(*n))),
            Err(e) => tracing::debug!(error = %e, "cannot read the bind tracer's lost counter"),
        }
    }

    /// The namespace of an event: `None` when it is not one bindwatch watches.
    fn namespace(&mut self, inode: u64) -> Option<Netns> {
        if !self.opts.all_netns {
            return (Some(inode) == self.own_netns).then(|| Netns {
                inode,
                name: "host".into(),
                path: PathBuf::new(),
            });
        }
        if let Some(ns) = self.namespaces.get(&inode) {
            return Some(ns.clone());
        }
        if self
            .discovered
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.discovered = Some(Instant::now());
            self.namespaces = netns::discover(&self.opts.procfs, &self.opts.run_netns)
                .into_iter()
                .map(|n| (n.inode, n))
                .collect();
        }
        Some(self.namespaces.get(&inode).cloned().unwrap_or(Netns {
            inode,
            name: format!("netns:[{inode}]"),
            path: PathBuf::new(),
        }))
    }

    fn process_name(&self, e: &Event) -> String {
        let path = self.opts.procfs.join(e.tgid.to_string()).join("comm");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim_end().is_empty() => s.trim_end().to_string(),
            // The process is gone already: the calling thread's comm is what is left.
            _ => e.comm.clone(),
        }
    }

    fn handle(&mut self, e: &Event) {
        let Some(protocol) = e.protocol else {
            return;
        };
        let Some(ns) = self.namespace(u64::from(e.netns)) else {
            return;
        };
        let polled = self.events.inputs().snapshots();
        let label = self.opts.all_netns.then(|| ns.name.clone());
        let snapshot: Option<&Snapshot> = polled
            .iter()
            .flat_map(|s| s.iter())
            .find(|(n, _)| *n == label)
            .map(|(_, s)| s.as_ref());
        let process = self.process_name(e);
        let Some(errno) = e.errno else {
            // A successful bind on a port of interest: only the prediction is scored,
            // against the port's sockets as a dump right after it shows them.
            if let Some(snap) = snapshot {
                let at = SystemTime::now();
                let after = self
                    .captured(|r| r.capture(&ns, protocol, e.port).ok())
                    .ok()
                    .flatten();
                self.score(e, protocol, snap, &process, &ns.name, at, after.as_deref());
            }
            return;
        };
        let at = SystemTime::now();
        let mut sockets = Vec::new();
        let mut captured = false;
        if errno == Errno::Eaddrinuse && e.call != Call::Connect {
            match self
                .captured(|r| r.capture(&ns, protocol, e.port))
                .unwrap_or_else(|held| Err(held.to_string()))
            {
                Ok(s) => {
                    sockets = s;
                    captured = true;
                }
                Err(err) => {
                    tracing::debug!(netns = %ns.name, port = e.port, error = %err, "cannot capture the sockets of a failed bind")
                }
            }
        }
        log::enrich(&mut sockets, snapshot);
        // Scored first: on a port the agent kept no sockets of, the score's judgement
        // (against the sockets that existed at the last walk) is the prediction.
        let scored = match (e.call, snapshot) {
            (Call::Bind, Some(snap)) => {
                let after = captured.then_some(sockets.as_slice());
                self.score(e, protocol, snap, &process, &ns.name, at, after)
            }
            _ => None,
        };
        let Some(mut failure) = log::explain(&Observed {
            event: e,
            protocol,
            at: SystemTime::now(),
            netns: ns.name.clone(),
            process: process.clone(),
            sockets: &sockets,
            snapshot,
        }) else {
            return;
        };
        failure.verdict_before = failure.verdict_before.or(scored);
        let key = (ns.name.clone(), e.call.as_str(), protocol, e.port);
        let line = self.limiter.event(
            &key,
            Instant::now(),
            || {
                format!(
                    "{}\n{} by {process}[{}]",
                    std::net::SocketAddr::new(e.address, e.port),
                    errno.name(),
                    e.tgid
                )
            },
            || log::log_line(&failure),
        );
        if let Some(line) = line {
            tracing::warn!(netns = %ns.name, "{line}");
        }
        self.events.with_log(|l| {
            l.count(label.as_deref(), e.call, protocol, e.port, errno, &process);
            l.push(failure);
        });
    }

    /// A failed unix bind: what was at the path (or name) a moment later, logged,
    /// counted (no path label) and kept for `GET /failures`.
    fn handle_unix(&mut self, e: &super::unix::UnixEvent) {
        let Some(ns) = self.namespace(u64::from(e.netns)) else {
            return;
        };
        let label = self.opts.all_netns.then(|| ns.name.clone());
        let comm = self.opts.procfs.join(e.tgid.to_string()).join("comm");
        let process = match std::fs::read_to_string(&comm) {
            Ok(s) if !s.trim_end().is_empty() => s.trim_end().to_string(),
            _ => e.comm.clone(),
        };
        let looked = self.look_unix(e, &ns);
        let f = super::unix::explain(e, SystemTime::now(), &ns.name, &process, &looked);
        tracing::warn!(netns = %ns.name, "{}", super::unix::log_line(&f));
        self.events.record_unix(label.as_deref(), f);
    }

    /// Judges a failed unix bind's address: a path under the caller's own root
    /// (`/proc/PID/root`: its mount namespace) while it lives, else under
    /// `--path.rootfs`; an abstract name inside the caller's network namespace.
    fn look_unix(&mut self, e: &super::unix::UnixEvent, ns: &Netns) -> super::unix::Looked {
        use super::unix::Looked;
        let Some(target) = super::unix::target_of(&e.name) else {
            return Looked::Not("a relative path (the caller's working directory decides)".into());
        };
        self.captured(|r| r.probe_unix(e, ns, &target))
            .unwrap_or_else(|held| Looked::Not(held.to_string()))
    }

    fn probe_unix(
        &self,
        e: &super::unix::UnixEvent,
        ns: &Netns,
        target: &crate::unixbind::UnixTarget,
    ) -> super::unix::Looked {
        use super::unix::Looked;
        use crate::unixbind::UnixTarget;
        let own_root = self.opts.procfs.join(e.tgid.to_string()).join("root");
        let rootfs = if std::fs::read_dir(&own_root).is_ok() {
            own_root
        } else {
            self.opts.rootfs.clone()
        };
        let mut opts = crate::unixprobe::ProbeOptions::new(&self.opts.procfs, &rootfs);
        opts.run_netns = self.opts.run_netns.clone();
        let kind = e.kind.unwrap_or(crate::model::UnixType::Stream);
        let judged = match target {
            UnixTarget::Abstract(_) if Some(ns.inode) != self.own_netns => {
                if ns.path.as_os_str().is_empty() {
                    return Looked::Not(format!("no path to enter {}", ns.name));
                }
                match netns::enter(&ns.path, &self.opts.procfs) {
                    Ok(_inside) => crate::unixprobe::inspect(target, kind, &opts),
                    Err(err) => {
                        return Looked::Not(format!("entering {}: {err}", ns.path.display()))
                    }
                }
            }
            _ => crate::unixprobe::inspect(target, kind, &opts),
        };
        match judged {
            Ok(r) => Looked::Judged(r),
            Err(err) => Looked::Failed(err),
        }
    }

    /// Scores a bind against the verdict held before it; a miss is logged with
    /// everything needed to report it.
    /// `after`: the port's sockets dumped right after the call, when taken
    /// (`events::score` says what hit, miss and undecided mean).
    #[allow(clippy::too_many_arguments)]
    fn score(
        &mut self,
        e: &Event,
        protocol: Protocol,
        snap: &Snapshot,
        process: &str,
        netns: &str,
        at: SystemTime,
        after: Option<&[Socket]>,
    ) -> Option<crate::model::Verdict> {
        let super::score::Scored {
            outcome,
            judgement: j,
        } = super::score::score_bind(e, protocol, snap, at, after)?;
        self.events.with_log(|l| l.predicted(outcome));
        if outcome == Outcome::Miss {
            let key = (netns.to_string(), ratelimit::MISS, protocol, e.port);
            let line = self.limiter.event(
                &key,
                Instant::now(),
                || {
                    format!(
                        "{} {}\nthe kernel answered {}, bindwatch had predicted {}",
                        e.call.as_str(),
                        std::net::SocketAddr::new(e.address, e.port),
                        e.errno.map_or("success", Errno::name),
                        j.verdict.as_str()
                    )
                },
                || log::miss_report(e, protocol, process, snap, &j),
            );
            if let Some(line) = line {
                tracing::warn!(netns, "{line}");
            }
        }
        Some(j.verdict)
    }

    /// Runs `f` (a capture) when the budget allows, and charges its time.
    fn captured<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Result<T, Held> {
        let started = Instant::now();
        self.captures.start(started)?;
        let out = f(self);
        self.captures.spent(started.elapsed());
        Ok(out)
    }

    /// The sockets on `port` in `ns` right now, both families.
    fn capture(
        &mut self,
        ns: &Netns,
        protocol: Protocol,
        port: u16,
    ) -> Result<Vec<Socket>, String> {
        let mut out = Vec::new();
        let mut dump = |d: &mut NetlinkDiag| -> Result<(), String> {
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                let req = Request {
                    protocol,
                    family,
                    states: ALL_STATES,
                };
                d.dump_port(req, port, &mut |s: &Socket| {
                    if s.local.port() == port {
                        out.push(s.clone());
                    }
                })
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        };
        if Some(ns.inode) == self.own_netns || ns.path.as_os_str().is_empty() {
            if Some(ns.inode) != self.own_netns {
                return Err(format!("no path to enter {}", ns.name));
            }
            if self.diag.is_none() {
                self.diag = Some(NetlinkDiag::open().map_err(|e| e.to_string())?);
            }
            if let Some(d) = self.diag.as_mut() {
                dump(d)?;
            }
        } else {
            // A sock_diag socket dumps the namespace it was opened in.
            let _inside = netns::enter(&ns.path, &self.opts.procfs)
                .map_err(|e| format!("entering {}: {e}", ns.path.display()))?;
            let mut d = NetlinkDiag::open().map_err(|e| e.to_string())?;
            dump(&mut d)?;
        }
        Ok(out)
    }
}
