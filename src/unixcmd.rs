//! `check unix:PATH|@NAME`, `wait unix:...` and `ports --unix`: the one-shot commands
//! for unix-domain sockets. The judgement is `unixbind`'s, its inputs `unixprobe`'s;
//! this module prints them (text or JSON) and maps them to exit codes:
//! 0 the bind would succeed, 1 EADDRINUSE, 2 usage or another errno, 3 cannot tell.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::{PortsArgs, SocketArgs, WaitArgs};
use crate::model::{Owner, UnixName, UnixSocket, UnixState, UnixType};
use crate::source::unix as unix_diag;
use crate::unixbind::{self, BindOutcome, PathFacts, PathState, UnixTarget};
use crate::unixprobe::{self, ProbeError, ProbeOptions, UnixPathReport};

pub const EXIT_CLEAR: i32 = 0;
pub const EXIT_BLOCKED: i32 = 1;
pub const EXIT_ERROR: i32 = 2;
pub const EXIT_UNKNOWN: i32 = 3;

/// Flags of `check` that only mean something for an IP socket.
///
/// # Errors
/// The first such flag given with a unix target, named.
pub fn reject_ip_flags(a: &SocketArgs) -> Result<(), String> {
    let given = [
        (a.restart, "--restart"),
        (a.reuseaddr, "--reuseaddr"),
        (a.reuseport, "--reuseport"),
        (a.v6only, "--v6only"),
        (a.uid.is_some(), "--uid"),
        (a.device.is_some(), "--device"),
        (
            !a.address.is_unspecified() || a.address.is_ipv6(),
            "--address",
        ),
    ];
    match given.iter().find(|(on, _)| *on) {
        Some((_, flag)) => Err(format!(
            "{flag} has no meaning for a unix: address (only --type, --json, --netns and the path flags do)"
        )),
        None => Ok(()),
    }
}

fn opts(a: &SocketArgs) -> ProbeOptions {
    ProbeOptions::new(&a.source.procfs, &a.source.rootfs)
}

/// The exit status of a judgement.
pub fn exit_code(r: &UnixPathReport) -> i32 {
    match r.judgement.bind {
        BindOutcome::Succeeds => EXIT_CLEAR,
        BindOutcome::AddrInUse => EXIT_BLOCKED,
        BindOutcome::Fails { .. } => EXIT_ERROR,
    }
}

fn owner_text(o: Option<&Owner>, s: &UnixSocket) -> String {
    match o {
        Some(o) => format!("{}[{}] (user {})", o.process, o.pid, o.user),
        None => format!("an unknown process (socket inode {})", s.inode),
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "listening, 3 connections waiting" / "bound (dgram), 120 bytes queued".
fn activity(s: &UnixSocket) -> String {
    match (s.state, s.kind) {
        (UnixState::Listen, _) => match s.rqueue {
            Some(n) => format!(
                "listening, {} waiting",
                plural(n, "connection", "connections")
            ),
            None => "listening".to_string(),
        },
        (UnixState::Unconnected, UnixType::Dgram) => "bound datagram socket".to_string(),
        (UnixState::Unconnected, t) => format!("bound {} socket, not listening", t.as_str()),
        (state, t) => format!("{} {} socket", state.as_str(), t.as_str()),
    }
}

fn holder_line(r: &UnixPathReport, s: &UnixSocket) -> String {
    let mut line = format!("{}, {}", owner_text(r.owners.get(&s.inode), s), activity(s));
    if let Some(ns) = r.holder_netns.get(&s.inode) {
        let _ = write!(line, " (network namespace {ns})");
    }
    line
}

/// The text report of `check unix:...`.
pub fn check_text(r: &UnixPathReport) -> String {
    let j = &r.judgement;
    let mut out = String::new();
    let verdict = match j.bind {
        BindOutcome::Succeeds => "bind() would succeed".to_string(),
        BindOutcome::AddrInUse => "bind() would FAIL with EADDRINUSE".to_string(),
        BindOutcome::Fails { errno } => format!(
            "bind() would FAIL with {} ({})",
            unixbind::errno_name(errno),
            unixbind::strerror(errno)
        ),
    };
    let why = match (j.state, j.holders.first()) {
        (PathState::Held, Some(h)) => format!("held by {}", holder_line(r, h)),
        (PathState::Free, _) => match r.target {
            UnixTarget::Path(_) => "nothing is at the path".to_string(),
            UnixTarget::Abstract(_) => "no socket of this type holds the name".to_string(),
        },
        (PathState::Unusable { errno }, _) => match (&r.target, errno) {
            (UnixTarget::Path(p), libc::ENOENT) => {
                format!("its directory {} does not exist", parent(p))
            }
            (UnixTarget::Path(p), libc::ENOTDIR) => {
                format!("a component of {} is not a directory", parent(p))
            }
            (UnixTarget::Path(p), _) => {
                format!("bindwatch cannot create a file in {}", parent(p))
            }
            _ => unixbind::describe(j.state),
        },
        (state, _) => unixbind::describe(state),
    };
    let _ = writeln!(out, "{}: {verdict}: {why}", r.target.display());
    for h in j.holders.iter().skip(1) {
        let _ = writeln!(out, "  also held by {}", holder_line(r, h));
    }
    for h in &j.other_types {
        let _ = writeln!(
            out,
            "  note: {} holds the same name as a {} socket, which does not block this bind (abstract names are per socket type; --type)",
            owner_text(r.owners.get(&h.inode), h),
            h.kind.as_str()
        );
    }
    if !r.netns_unread.is_empty() {
        let _ = writeln!(
            out,
            "  network namespaces not read: {}",
            r.netns_unread.join("; ")
        );
    }
    out
}

fn parent(p: &Path) -> String {
    p.parent()
        .map_or_else(|| "/".to_string(), |d| d.display().to_string())
}

fn socket_json(
    r: Option<&UnixPathReport>,
    s: &UnixSocket,
    owner: Option<&Owner>,
) -> serde_json::Value {
    let listener = s.state == UnixState::Listen;
    json!({
        "inode": s.inode,
        "type": s.kind,
        "state": s.state,
        "address": s.name,
        "owner": owner,
        "netns": r.and_then(|r| r.holder_netns.get(&s.inode)),
        "accept_queue": if listener { s.rqueue } else { None },
        "accept_queue_limit": if listener { s.wqueue } else { None },
        "peer_inode": s.peer,
    })
}

/// The `--json` document of `check unix:...`.
pub fn check_json(r: &UnixPathReport, kind: UnixType) -> serde_json::Value {
    let j = &r.judgement;
    let (bind, errno) = match j.bind {
        BindOutcome::Succeeds => ("succeeds", None),
        BindOutcome::AddrInUse => ("eaddrinuse", Some(libc::EADDRINUSE)),
        BindOutcome::Fails { errno } => ("fails", Some(errno)),
    };
    let state = match j.state {
        PathState::Free => "free",
        PathState::Held => "held",
        PathState::Stale => "stale",
        PathState::HolderUnknown => "holder_unknown",
        PathState::NotSocket(_) => "not_a_socket",
        PathState::Unusable { .. } => "unusable",
    };
    json!({
        "address": r.target.display(),
        "abstract": matches!(r.target, UnixTarget::Abstract(_)),
        "type": kind,
        "state": state,
        "file_type": match j.state { PathState::NotSocket(k) => Some(k), _ => None },
        "bind": bind,
        "errno": errno.map(unixbind::errno_name),
        "exit_code": exit_code(r),
        "safe_to_remove": j.safe_to_remove,
        "reason": unixbind::describe(j.state),
        "holders": j.holders.iter().map(|s| socket_json(Some(r), s, r.owners.get(&s.inode))).collect::<Vec<_>>(),
        "other_types": j.other_types.iter().map(|s| socket_json(Some(r), s, r.owners.get(&s.inode))).collect::<Vec<_>>(),
        "netns_read": r.netns_read,
        "netns_unread": r.netns_unread,
    })
}

fn print(r: &UnixPathReport, a: &SocketArgs, kind: UnixType) {
    if a.json {
        println!("{}", check_json(r, kind));
    } else if matches!(r.judgement.bind, BindOutcome::Fails { .. }) {
        eprint!("bindwatch check: {}", check_text(r));
    } else {
        print!("{}", check_text(r));
    }
}

fn probe_error_exit(cmd: &str, e: &ProbeError) -> i32 {
    eprintln!("bindwatch {cmd}: {e}");
    match e {
        ProbeError::Rootfs { .. } => EXIT_ERROR,
        // The namespace's unix table (an abstract name) or a path that kept changing.
        ProbeError::Diag(_) | ProbeError::Unsettled(_) => EXIT_UNKNOWN,
    }
}

/// `bindwatch check unix:...`.
pub fn check(a: &SocketArgs, t: &UnixTarget) -> i32 {
    if let Err(e) = reject_ip_flags(a) {
        eprintln!("bindwatch check: {e}");
        return EXIT_ERROR;
    }
    let kind = a.unix_type.unwrap_or(UnixType::Stream);
    match unixprobe::inspect(t, kind, &opts(a)) {
        Ok(r) => {
            print(&r, a, kind);
            exit_code(&r)
        }
        Err(e) => probe_error_exit("check", &e),
    }
}

/// `bindwatch wait unix:...`: until the bind would succeed. A missing or unusable
/// directory is waited for too (a daemon's runtime directory may come later).
pub fn wait(w: &WaitArgs, t: &UnixTarget) -> i32 {
    let a = &w.socket;
    if let Err(e) = reject_ip_flags(a) {
        eprintln!("bindwatch wait: {e}");
        return EXIT_ERROR;
    }
    let kind = a.unix_type.unwrap_or(UnixType::Stream);
    let deadline = Instant::now().checked_add(w.timeout);
    let time_left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut last: Option<PathState> = None;
    loop {
        match unixprobe::inspect(t, kind, &opts(a)) {
            Ok(r) if r.judgement.bind == BindOutcome::Succeeds => {
                print(&r, a, kind);
                return EXIT_CLEAR;
            }
            Ok(r) => {
                if last != Some(r.judgement.state) {
                    eprint!("{}", check_text(&r));
                }
                last = Some(r.judgement.state);
            }
            Err(e @ ProbeError::Rootfs { .. }) => return probe_error_exit("wait", &e),
            Err(e) => {
                eprintln!("bindwatch wait: {e}");
                last = None;
            }
        }
        let left = time_left();
        if left.is_some_and(|l| l.is_zero()) {
            eprintln!("bindwatch wait: gave up after {:?}", w.timeout);
            return EXIT_BLOCKED;
        }
        std::thread::sleep(
            w.interval
                .min(left.unwrap_or(w.interval))
                .max(Duration::from_millis(10)),
        );
    }
}

/// One unix listener of `ports --unix`.
#[derive(Debug, Clone)]
pub struct UnixListenerRow {
    pub socket: UnixSocket,
    pub owner: Option<Owner>,
    /// For a path: what is at the path now, when it is no longer this socket's file
    /// (removed or replaced: clients cannot reach the listener by name).
    pub file_note: Option<&'static str>,
}

/// The unix listeners of bindwatch's network namespace, sorted by address.
///
/// # Errors
/// The unix table cannot be read.
pub fn listeners(o: &ProbeOptions) -> Result<Vec<UnixListenerRow>, ProbeError> {
    let mut sockets: Vec<UnixSocket> = unix_diag::dump_all()?
        .into_iter()
        .filter(UnixSocket::is_listener)
        .collect();
    sockets.sort_by(|a, b| (&a.name, a.kind, a.inode).cmp(&(&b.name, b.kind, b.inode)));
    let owners = unixprobe::owners_of(o, &sockets);
    Ok(sockets
        .into_iter()
        .map(|s| {
            let file_note = match (&s.name, s.vfs) {
                (Some(UnixName::Path(p)), Some(vfs)) if p.first() == Some(&b'/') => {
                    let path = Path::new(std::ffi::OsStr::from_bytes(p));
                    match unixprobe::path_facts(&o.rootfs, path) {
                        Ok(PathFacts::Socket { vfs: now }) if now == vfs => None,
                        Ok(PathFacts::Absent | PathFacts::DirUnusable { .. }) => {
                            Some("file removed")
                        }
                        Ok(_) => Some("file replaced"),
                        Err(_) => None,
                    }
                }
                _ => None,
            };
            UnixListenerRow {
                owner: owners.get(&s.inode).cloned(),
                socket: s,
                file_note,
            }
        })
        .collect())
}

pub fn ports_text(rows: &[UnixListenerRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<40} {:<24} {:<10} {:>7} {:>7}  NOTE",
        "TYPE", "ADDRESS", "PROCESS", "USER", "QUEUE", "LIMIT"
    );
    for r in rows {
        let s = &r.socket;
        let (proc_, user) = match &r.owner {
            Some(o) => (format!("{}[{}]", o.process, o.pid), o.user.clone()),
            None => ("unknown".into(), "unknown".into()),
        };
        let listening = s.state == UnixState::Listen;
        let q = |v: Option<u32>| match (listening, v) {
            (true, Some(n)) => n.to_string(),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<9} {:<40} {:<24} {:<10} {:>7} {:>7}  {}",
            s.kind.as_str(),
            s.name.as_ref().map(|n| n.to_string()).unwrap_or_default(),
            proc_,
            user,
            q(s.rqueue),
            q(s.wqueue),
            r.file_note.unwrap_or(""),
        );
    }
    out.push_str("QUEUE: connections waiting to be accepted; LIMIT: the listen() backlog\n");
    out
}

pub fn ports_json(rows: &[UnixListenerRow]) -> serde_json::Value {
    json!({
        "unix_listeners": rows.iter().map(|r| {
            let mut v = socket_json(None, &r.socket, r.owner.as_ref());
            if let Some(m) = v.as_object_mut() {
                m.remove("netns");
                m.insert("file".into(), json!(r.file_note));
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// `bindwatch ports --unix`.
pub fn ports(a: &PortsArgs) -> i32 {
    let o = ProbeOptions::new(&a.source.procfs, &a.source.rootfs);
    match listeners(&o) {
        Ok(rows) => {
            if a.json {
                println!("{}", ports_json(&rows));
            } else {
                print!("{}", ports_text(&rows));
            }
            EXIT_CLEAR
        }
        Err(e) => {
            eprintln!("bindwatch ports: {e}");
            EXIT_ERROR
        }
    }
}
