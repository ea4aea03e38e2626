//! The one-shot commands an operator runs on the box: `check`, `wait`, `ports`.
//! They poll once (or repeatedly for `wait`) with the same collector as the agent,
//! judge with the rebind engine, and print text or JSON.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::cli::{PortsArgs, SocketArgs, SourceArgs, WaitArgs, WatchArgs};
use crate::collect::{CollectOptions, Collector};
use crate::config::{self, Service};
use crate::model::{Owner, Protocol, Snapshot, Socket, Tri};
use crate::rebind::{self, Candidate, Finding, Judgement, Verdict};
use crate::state;

/// Exit codes of `check` and `wait` (contract.md).
pub const EXIT_CLEAR: i32 = 0;
pub const EXIT_BLOCKED: i32 = 1;
pub const EXIT_ERROR: i32 = 2;
pub const EXIT_UNKNOWN: i32 = 3;

/// A failure that is the user's or the machine's, reported with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("--device {0:?}: no such network device")]
    NoSuchDevice(String),
    #[error("--restart: nothing listens on {0} port {1}; run check without --restart to test a fresh bind")]
    NoListener(Protocol, u16),
    #[error(transparent)]
    Collect(#[from] crate::collect::CollectError),
    #[error("--config.file {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The kernel refuses the address itself (EADDRNOTAVAIL), whatever the port.
    #[error("--address {0}: not an address of this host: bind() would fail with EADDRNOTAVAIL ({1}); \
             a daemon can bind it anyway with IP_FREEBIND, or every socket with net.{2}.ip_nonlocal_bind=1")]
    AddressNotAvailable(IpAddr, std::io::Error, &'static str),
}

/// Asks the kernel whether `addr` can be bound at all in this network namespace:
/// bind(`addr`:0) on a throw-away socket with `IP_BIND_ADDRESS_NO_PORT`, so no port
/// is taken. The kernel applies its own rules (local and broadcast addresses, the
/// whole of 127.0.0.0/8, `ip_nonlocal_bind`), which a list of interface addresses
/// would only imitate. Wildcards are always bindable.
///
/// # Errors
/// [`CommandError::AddressNotAvailable`] when the kernel answers EADDRNOTAVAIL;
/// other failures (no IPv6 on the host, out of fds) are not a verdict on the address
/// and are let through (the check goes on).
pub fn address_available(
    protocol: Protocol,
    addr: IpAddr,
    ifindex: u32,
) -> Result<(), CommandError> {
    use socket2::{Domain, SockAddr, Socket, Type};
    if addr.is_unspecified() {
        return Ok(());
    }
    let ty = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let Ok(sock) = Socket::new(
        Domain::for_address(std::net::SocketAddr::new(addr, 0)),
        ty,
        None,
    ) else {
        return Ok(());
    };
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int for the length given; the fd is open.
    let _ = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let sa = match addr {
        IpAddr::V4(v4) => SockAddr::from(std::net::SocketAddrV4::new(v4, 0)),
        // A link-local address needs its interface (--device).
        IpAddr::V6(v6) => SockAddr::from(std::net::SocketAddrV6::new(v6, 0, 0, ifindex)),
    };
    match sock.bind(&sa) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
            Err(CommandError::AddressNotAvailable(addr, e, family))
        }
        _ => Ok(()),
    }
}

pub fn services(w: &WatchArgs) -> Result<Vec<Service>, CommandError> {
    match &w.config_file {
        Some(p) => Ok(config::load(p)?.services),
        None => Ok(Vec::new()),
    }
}

pub fn exit_code(v: Verdict) -> i32 {
    match v {
        Verdict::Clear => EXIT_CLEAR,
        Verdict::Blocked => EXIT_BLOCKED,
        Verdict::Unknown => EXIT_UNKNOWN,
    }
}

pub fn collector(src: &SourceArgs) -> Result<Collector, CommandError> {
    let mut opts = CollectOptions::new(&src.procfs);
    opts.rootfs = src.rootfs.clone();
    opts.source = src.source;
    opts.probe_all = true;
    // One answer, so the owner scan runs to its end.
    opts.scan_slice = None;
    opts.fold = false;
    opts.probe_max = 8192;
    opts.ports_max = usize::MAX;
    let mut c = Collector::new(opts)?;
    seed_memory(&mut c, src, MemoryOf::RunningAgent);
    Ok(c)
}

/// Whose listener memory [`seed_memory`] reads from `--state.file`.
#[derive(Debug, Clone, Copy)]
pub enum MemoryOf {
    /// A serving agent's (`check`, `wait`, `ports`): ignored, with one line saying so,
    /// when its writer is gone or late, because it may then miss listeners that came
    /// and went since its last poll.
    RunningAgent,
    /// This agent's previous run (`serve` at start-up), gone by definition: entries
    /// seen within the given `--memory` window are taken, and `rebind::memory` trusts
    /// none of them past its last sighting plus one of the writer's intervals.
    PreviousRun(Duration),
}

/// How far back the one-shot commands take a running agent's memory.
const RUNNING_AGENT_MAX_AGE: Duration = Duration::from_secs(600);

/// Seeds the collector with the listeners remembered in `--state.file` (see
/// [`crate::state`]), for this network namespace; nothing with `--state.file=`.
/// A file that cannot be used is ignored with a warning: memory only ever adds
/// answers, its absence makes some "cannot tell".
pub fn seed_memory(c: &mut Collector, src: &SourceArgs, of: MemoryOf) {
    if src.state_file.as_os_str().is_empty() {
        return;
    }
    let path = &src.state_file;
    let netns = crate::netns::own_inode(&src.procfs);
    let loaded = match of {
        MemoryOf::RunningAgent => state::load_live(path, &src.procfs, netns, RUNNING_AGENT_MAX_AGE),
        MemoryOf::PreviousRun(max_age) => state::load_file(path, netns).map(|file| {
            file.map_or_else(state::Live::default, |file| state::Live {
                interval: state::writer_interval(&file),
                entries: state::recent(file, max_age),
                ignored: None,
            })
        }),
    };
    match loaded {
        Ok(state::Live {
            ignored: Some(why), ..
        }) => tracing::warn!("{why}"),
        Ok(live) if !live.entries.is_empty() => {
            tracing::info!(listeners = live.entries.len(), path = %path.display(), "restored the memory of listeners");
            c.remember(&live.entries, live.interval);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("ignoring the state file: {e}"),
    }
}

fn ifindex(dev: &str) -> Result<u32, CommandError> {
    let c = std::ffi::CString::new(dev).map_err(|_| CommandError::NoSuchDevice(dev.to_string()))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(CommandError::NoSuchDevice(dev.to_string()));
    }
    Ok(idx)
}

/// One judged new socket, with the listener it restarts (restart mode).
#[derive(Debug, Clone)]
pub struct Checked {
    pub candidate: Candidate,
    pub listener: Option<Socket>,
    pub judgement: Judgement,
    /// Who holds the listener and what a restart leaves of them (restart mode).
    pub holding: Option<crate::model::Holding>,
    /// The listener is gone: it was judged as the agent remembered it.
    pub remembered: bool,
}

/// The outcome of `check`.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    pub protocol: Protocol,
    pub port: u16,
    pub restart: bool,
    pub checked: Vec<Checked>,
    pub verdict: Verdict,
}

/// Judges the new socket (or restart) described by `a` against a snapshot.
///
/// # Errors
/// Unknown device, or `--restart` with nothing listening.
pub fn judge_snapshot(a: &SocketArgs, snap: &Snapshot) -> Result<CheckOutcome, CommandError> {
    let on_port: Vec<Socket> = snap
        .port_sockets
        .iter()
        .filter(|s| s.protocol == a.protocol && s.local.port() == a.port())
        .cloned()
        .collect();
    let mut checked = Vec::new();
    if a.restart {
        let mut seen = BTreeSet::new();
        // A listening socket stays open where a holder outlives the restart.
        let stays = |s: &Socket| {
            snap.holdings
                .get(&s.inode)
                .map_or(Tri::Unknown, rebind::holders::stays)
        };
        for l in on_port.iter().filter(|s| s.is_listener()) {
            if !seen.insert(l.local) {
                continue; // one verdict per endpoint (SO_REUSEPORT groups)
            }
            let judgement = rebind::holders::judge_restart_held(l, &on_port, &stays).own_flags;
            checked.push(Checked {
                candidate: rebind::restart_candidate(l, l.flags.reuseaddr == Tri::True),
                listener: Some(l.clone()),
                judgement,
                holding: snap.holdings.get(&l.inode).cloned(),
                remembered: false,
            });
        }
        // Right after a crash nothing listens, but the agent's memory (the state
        // file) knows the listener that just vanished: judge its restart as the
        // agent does, with its remembered flags.
        if checked.is_empty() {
            for r in snap.risks.iter().filter(|r| {
                r.gone && r.endpoint.protocol == a.protocol && r.endpoint.port == a.port()
            }) {
                checked.push(Checked {
                    candidate: rebind::restart_candidate(
                        &r.listener,
                        r.listener.flags.reuseaddr == Tri::True,
                    ),
                    listener: Some(r.listener.clone()),
                    judgement: r.restart.clone(),
                    holding: None,
                    remembered: true,
                });
            }
        }
        if checked.is_empty() {
            return Err(CommandError::NoListener(a.protocol, a.port()));
        }
    } else {
        let candidate = Candidate {
            protocol: a.protocol,
            address: a.address,
            port: a.port(),
            v6only: Candidate::effective_v6only(
                a.address,
                a.v6only.then_some(true),
                snap.bindv6only,
            ),
            reuseaddr: a.reuseaddr,
            reuseport: Tri::from_bool(a.reuseport),
            // SAFETY: geteuid cannot fail.
            uid: a.uid.unwrap_or_else(|| unsafe { libc::geteuid() }),
            ifindex: match &a.device {
                Some(d) => ifindex(d)?,
                None => 0,
            },
        };
        let judgement = rebind::judge(&candidate, &on_port);
        checked.push(Checked {
            candidate,
            listener: None,
            judgement,
            holding: None,
            remembered: false,
        });
    }
    let verdict = Verdict::worst(checked.iter().map(|c| c.judgement.verdict));
    Ok(CheckOutcome {
        protocol: a.protocol,
        port: a.port(),
        restart: a.restart,
        checked,
        verdict,
    })
}

/// Polls once and judges.
///
/// # Errors
/// See [`CommandError`].
pub fn check_once(
    a: &SocketArgs,
    c: &mut Collector,
) -> Result<(CheckOutcome, Snapshot), CommandError> {
    if !a.restart {
        let ifindex = match &a.device {
            Some(d) => ifindex(d)?,
            None => 0,
        };
        address_available(a.protocol, a.address, ifindex)?;
    }
    let services = services(&a.watch)?;
    let snap = c.poll(&services, &[(a.protocol, a.port())])?;
    Ok((judge_snapshot(a, &snap)?, snap))
}

/// `1.2.3.4:80`, `[::1]:80`: without the scope id a `SocketAddr` of a socket may carry.
pub fn endpoint_str(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

fn owner_str(o: Option<&Owner>) -> String {
    o.map_or_else(|| "owner unknown".to_string(), Owner::summary)
}

#[derive(Serialize)]
struct BlockerJson<'a> {
    state: &'static str,
    local: String,
    remote: String,
    uid: u32,
    inode: u64,
    owner: Option<&'a Owner>,
    timer_seconds: Option<f64>,
    blocks: Tri,
    rule: rebind::Rule,
    reason: &'static str,
    undecided_by: &'a [&'static str],
    reuseaddr: Tri,
    reuseport: Tri,
}

fn blocker_json<'a>(f: &'a Finding, snap: &'a Snapshot) -> BlockerJson<'a> {
    BlockerJson {
        state: f.socket.state_label(),
        local: endpoint_str(f.socket.local.ip(), f.socket.local.port()),
        remote: endpoint_str(f.socket.remote.ip(), f.socket.remote.port()),
        uid: f.socket.uid,
        inode: f.socket.inode,
        owner: snap.owners.get(&f.socket.inode),
        timer_seconds: f.socket.expires_ms.map(|ms| ms as f64 / 1000.0),
        blocks: f.blocks,
        rule: f.rule,
        reason: f.rule.describe(),
        undecided_by: &f.undecided_by,
        reuseaddr: f.socket.flags.reuseaddr,
        reuseport: f.socket.flags.reuseport,
    }
}

/// The `--json` document of `check`.
pub fn check_json(o: &CheckOutcome, snap: &Snapshot) -> serde_json::Value {
    json!({
        "protocol": o.protocol,
        "port": o.port,
        "mode": if o.restart { "restart" } else { "bind" },
        "verdict": o.verdict,
        "exit_code": exit_code(o.verdict),
        "source": snap.source,
        "watched": snap.watched.iter().filter(|w| w.protocol == o.protocol && w.port == o.port).collect::<Vec<_>>(),
        "checks": o.checked.iter().map(|c| json!({
            "address": c.candidate.address.to_string(),
            "v6only": c.candidate.v6only,
            "reuseaddr": c.candidate.reuseaddr,
            "reuseport": c.candidate.reuseport,
            "uid": c.candidate.uid,
            "ifindex": c.candidate.ifindex,
            "listener_owner": c.listener.as_ref().and_then(|l| snap.owners.get(&l.inode)),
            "listener_gone": c.remembered,
            "holding": c.holding.as_ref().map(crate::report::holding_json),
            "verdict": c.judgement.verdict,
            "clear_seconds": c.judgement.clear_seconds(),
            "blockers_total": c.judgement.findings.len(),
            "blockers": crate::report::by_time_left(&c.judgement.findings).into_iter().map(|f| blocker_json(f, snap)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The text report of `check`.
pub fn check_text(o: &CheckOutcome, snap: &Snapshot, all: bool) -> String {
    let mut out = String::new();
    for c in &o.checked {
        let _ = writeln!(
            out,
            "{}: {}",
            checked_what(o, c, snap),
            verdict_text(&c.judgement)
        );
        if let Some(h) = &c.holding {
            crate::report::holding_text(&mut out, h);
        }
        let sorted = crate::report::by_time_left(&c.judgement.findings);
        let shown = crate::report::shown(sorted.len(), all);
        let mut last_why = String::new();
        for f in &sorted[..shown] {
            finding_text(&mut out, f, snap, &mut last_why);
        }
        if sorted.len() > shown {
            out.push_str(&crate::report::more_line(sorted.len() - shown));
        }
    }
    out.push_str(&crate::report::watched_text(
        snap,
        Some((o.protocol, o.port)),
    ));
    let flags_decide = o.checked.iter().any(|c| {
        c.judgement.verdict == Verdict::Unknown
            && !crate::report::holders_decide(&c.judgement.findings)
    });
    if flags_decide {
        out.push_str(
            "hint: flags of sockets without a file (TIME_WAIT, orphans) cannot be read; the serving agent \
             remembers the flags of listeners that are gone. Run as root (CAP_SYS_PTRACE) to read live sockets' flags.\n",
        );
    }
    out
}

/// What was judged: the restart of a listener, or a bind with the given flags.
pub fn checked_what(o: &CheckOutcome, c: &Checked, snap: &Snapshot) -> String {
    match &c.listener {
        Some(l) if c.remembered => format!(
            "restart of the listener that was on {} {} (gone now; judged with its remembered flags: SO_REUSEADDR {}, SO_REUSEPORT {})",
            o.protocol,
            endpoint_str(l.local.ip(), l.local.port()),
            l.flags.reuseaddr.as_str(),
            l.flags.reuseport.as_str(),
        ),
        Some(l) => format!(
            "restart of {} listening on {} {}",
            match c.holding.as_ref() {
                Some(h) => match (&h.main, h.summary()) {
                    (Some(m), _) => format!("{} (pid {}, user {})", m.process, m.pid, m.user),
                    // No main holder: say who holds it, not one of them as "the daemon".
                    (None, Some(held)) => format!("the service holding it ({held})"),
                    (None, None) => owner_str(snap.owners.get(&l.inode)),
                },
                None => owner_str(snap.owners.get(&l.inode)),
            },
            o.protocol,
            endpoint_str(l.local.ip(), l.local.port())
        ),
        None => format!(
            "bind {} {}{}{}",
            o.protocol,
            endpoint_str(c.candidate.address, o.port),
            if c.candidate.reuseaddr {
                " with SO_REUSEADDR"
            } else {
                " without SO_REUSEADDR"
            },
            if c.candidate.reuseport == Tri::True {
                " and SO_REUSEPORT"
            } else {
                ""
            },
        ),
    }
}

pub fn verdict_text(j: &Judgement) -> String {
    match j.verdict {
        Verdict::Clear => "would succeed".to_string(),
        Verdict::Blocked => match j.clear_seconds() {
            Some(s) if j.blocking().all(|f| f.remaining().is_some()) => {
                format!("would FAIL with EADDRINUSE (clears in {s:.0} s)")
            }
            _ => "would FAIL with EADDRINUSE".to_string(),
        },
        Verdict::Unknown if crate::report::holders_decide(&j.findings) => {
            "CANNOT TELL: it depends on whether the listening socket's holders outlive the restart"
                .to_string()
        }
        Verdict::Unknown => {
            "CANNOT TELL: a deciding flag of an existing socket is unknown".to_string()
        }
    }
}

/// One existing socket that blocks (or may block): its lines of the report.
/// The `why` line is printed only where it differs from the line before (hundreds
/// of TIME_WAITs share one).
fn finding_text(out: &mut String, f: &Finding, snap: &Snapshot, last_why: &mut String) {
    let timer = match f.socket.expires_ms {
        Some(ms) if f.socket.state.is_expiring() => {
            format!(", {:.1} s left", ms as f64 / 1000.0)
        }
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "  {} {:<12} {} -> {}  {}{}",
        if f.blocks == Tri::True {
            "BLOCKS "
        } else {
            "MAYBE  "
        },
        f.socket.state_label(),
        endpoint_str(f.socket.local.ip(), f.socket.local.port()),
        endpoint_str(f.socket.remote.ip(), f.socket.remote.port()),
        match snap.holdings.get(&f.socket.inode).and_then(|h| h.summary()) {
            Some(held) => format!("held by {held}"),
            None => owner_str(snap.owners.get(&f.socket.inode)),
        },
        timer,
    );
    // The blocker's own flags, as read (bpf reads them for every socket).
    let mut why = format!(
        "          why: {} (this socket: SO_REUSEADDR {}, SO_REUSEPORT {})\n",
        f.rule.describe(),
        f.socket.flags.reuseaddr.as_str(),
        f.socket.flags.reuseport.as_str()
    );
    if !f.undecided_by.is_empty() {
        let _ = writeln!(why, "          unknown: {}", f.undecided_by.join(", "));
    }
    if why != *last_why {
        out.push_str(&why);
        *last_why = why;
    }
}

/// `bindwatch check`: prints the report and returns the exit status.
pub fn check(a: &SocketArgs) -> i32 {
    let result = collector(&a.source).and_then(|mut c| check_once(a, &mut c));
    match result {
        Ok((o, snap)) => {
            if a.json {
                println!("{}", check_json(&o, &snap));
            } else {
                print!("{}", check_text(&o, &snap, a.all));
            }
            exit_code(o.verdict)
        }
        Err(e) => {
            eprintln!("bindwatch check: {e}");
            EXIT_ERROR
        }
    }
}

/// `bindwatch wait`: checks every interval until the bind would succeed.
pub fn wait(a: &WaitArgs) -> i32 {
    // The flag is bounded (cli::bounds), but a deadline past what Instant can hold
    // must still mean "no deadline", not a panic.
    let deadline = Instant::now().checked_add(a.timeout);
    let time_left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut c = match collector(&a.socket.source) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bindwatch wait: {e}");
            return EXIT_ERROR;
        }
    };
    let mut last: Option<Verdict> = None;
    loop {
        match check_once(&a.socket, &mut c) {
            Ok((o, snap)) => {
                if o.verdict == Verdict::Clear {
                    if a.socket.json {
                        println!("{}", check_json(&o, &snap));
                    } else {
                        print!("{}", check_text(&o, &snap, a.socket.all));
                    }
                    return EXIT_CLEAR;
                }
                if last != Some(o.verdict) || time_left().is_some_and(|left| left <= a.interval) {
                    eprint!("{}", check_text(&o, &snap, a.socket.all));
                }
                last = Some(o.verdict);
            }
            // An address that is not (yet) on this host may come, e.g. a VIP that
            // keepalived adds: wait for it as for a port, say so once.
            Err(e @ CommandError::AddressNotAvailable(..)) => {
                if last != Some(Verdict::Blocked)
                    || time_left().is_some_and(|left| left <= a.interval)
                {
                    eprintln!("bindwatch wait: {e}");
                }
                last = Some(Verdict::Blocked);
            }
            Err(e) => {
                eprintln!("bindwatch wait: {e}");
                return EXIT_ERROR;
            }
        }
        let left = time_left();
        if left.is_some_and(|l| l.is_zero()) {
            eprintln!("bindwatch wait: gave up after {:?}", a.timeout);
            return EXIT_BLOCKED;
        }
        std::thread::sleep(
            a.interval
                .min(left.unwrap_or(a.interval))
                .max(Duration::from_millis(10)),
        );
    }
}

/// `bindwatch ports`: one poll, one line per listening endpoint.
pub fn ports(a: &PortsArgs) -> i32 {
    // The same collector as `check` (every socket's flags probed, the state file's
    // memory seeded), so `ports` and `check PORT --restart` give one answer.
    let snap = match services(&a.watch).and_then(|svcs| Ok(collector(&a.source)?.poll(&svcs, &[])?))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bindwatch ports: {e}");
            return EXIT_ERROR;
        }
    };
    if a.json {
        println!("{}", ports_json(&snap));
    } else {
        print!("{}", ports_text(&snap));
    }
    0
}

pub use crate::report::{ports_json, ports_text};
