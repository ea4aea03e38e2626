//! Failed `AF_UNIX` binds seen by the tracer: the record `bpf/bindevents.bpf.c`
//! writes for them (`struct unix_event`: the common event, then the path), decoded
//! purely; what the path was a moment later (held by whom, stale, not a socket),
//! judged with `unixprobe`; and the bounded log and counters they go to. The path
//! goes to the log line and `GET /failures`, never to a label: the counter is
//! `bindwatch_bind_failures_total{protocol="unix",errno,process}`, without a port.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use serde::Serialize;

use super::decode::{comm_str, Errno};
use crate::model::{UnixName, UnixType};
use crate::source::records::{self, UnixEventRec, F_SOCKET_READ, KIND_BIND, SUN_PATH_MAX};
use crate::unixbind::{BindOutcome, PathState, UnixTarget};
use crate::unixprobe::{ProbeError, UnixPathReport};

/// Size of a `struct unix_event` record: the event, the path's length, `sun_path`.
pub const UNIX_EVENT_SIZE: usize = std::mem::size_of::<UnixEventRec>();
const AF_UNIX: u8 = 1;
/// Failed unix binds kept for `GET /failures`.
pub const UNIX_LOG_CAPACITY: usize = 256;

/// One failed unix bind as the program reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixEvent {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    /// Inode of the socket's network namespace; 0 when the socket was not read.
    pub netns: u32,
    pub errno: Errno,
    /// The socket's type; `None` when the socket could not be read.
    pub kind: Option<UnixType>,
    /// The address asked for: a path (relative to the caller's directory and mount
    /// namespace) or an abstract name.
    pub name: UnixName,
    pub comm: String,
}

/// Whether a ring-buffer record is a unix one (its size says so).
pub fn is_unix_record(b: &[u8]) -> bool {
    b.len() == UNIX_EVENT_SIZE
}

/// Decodes a `struct unix_event`.
///
/// # Errors
/// A record of another size or family, a return value other than EADDRINUSE, or a
/// path length past `sun_path`.
pub fn decode(b: &[u8]) -> Result<UnixEvent, String> {
    if b.len() != UNIX_EVENT_SIZE {
        return Err(format!(
            "unix bind event of {} bytes, expected {UNIX_EVENT_SIZE}",
            b.len()
        ));
    }
    let UnixEventRec { e, u } = records::read(b).ok_or("unix bind event too short")?;
    if e.family != AF_UNIX || e.kind != KIND_BIND {
        return Err(format!(
            "unix bind event with family {} and call kind {}",
            e.family, e.kind
        ));
    }
    let errno = match Errno::from_ret(e.ret) {
        Some(Errno::Eaddrinuse) => Errno::Eaddrinuse,
        _ => return Err(format!("unix bind event with return value {}", e.ret)),
    };
    let len = u.len as usize;
    if len == 0 || len > SUN_PATH_MAX {
        return Err(format!("unix bind event with a path of {len} bytes"));
    }
    let name =
        UnixName::from_sun_path(&u.path[..len]).ok_or("unix bind event with an empty path")?;
    let read = e.flags & F_SOCKET_READ != 0;
    Ok(UnixEvent {
        pid: e.pid,
        tgid: e.tgid,
        uid: e.uid,
        netns: e.netns,
        errno,
        kind: if read {
            UnixType::from_kernel(e.socktype as u8)
        } else {
            None
        },
        name,
        comm: comm_str(&e.comm),
    })
}

/// One failed unix bind, as `GET /failures` lists it (beside the IP ones).
#[derive(Debug, Clone, Serialize)]
pub struct UnixFailure {
    pub time: String,
    #[serde(skip)]
    pub at: SystemTime,
    pub netns: String,
    pub call: &'static str,
    pub protocol: &'static str,
    /// The path or `@name`.
    pub address: String,
    pub errno: Errno,
    pub pid: u32,
    pub process: String,
    pub uid: u32,
    #[serde(rename = "type")]
    pub kind: Option<UnixType>,
    /// What was at the address right after: `held`, `stale`, `not_a_socket`,
    /// `holder_unknown`, `free` (gone meanwhile), or `null` when not judged.
    pub state: Option<&'static str>,
    /// Who held it then: `nginx[2036] (user www-data), listening`.
    pub holders: Vec<String>,
    pub safe_to_remove: bool,
    /// Why it was not judged, or the judgement's reason.
    pub reason: String,
}

/// What the tracer could find out about the address right after the failure.
pub enum Looked {
    Judged(UnixPathReport),
    /// Not looked at, and why (relative path, another namespace's abstract name,
    /// the capture rate limit).
    Not(String),
    Failed(ProbeError),
}

/// The target a path or name is judged as, when it can be: an absolute path (in
/// bindwatch's mount namespace) or an abstract name.
pub fn target_of(name: &UnixName) -> Option<UnixTarget> {
    match name {
        UnixName::Path(p) if p.first() == Some(&b'/') => {
            Some(UnixTarget::Path(std::path::PathBuf::from(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(p),
            )))
        }
        UnixName::Path(_) => None,
        UnixName::Abstract(n) => Some(UnixTarget::Abstract(n.clone())),
    }
}

/// The failure record of `e` (pure apart from the clock value given).
pub fn explain(
    e: &UnixEvent,
    at: SystemTime,
    netns: &str,
    process: &str,
    looked: &Looked,
) -> UnixFailure {
    let mut f = UnixFailure {
        time: super::log::rfc3339(at),
        at,
        netns: netns.to_string(),
        call: "bind",
        protocol: "unix",
        address: e.name.to_string(),
        errno: e.errno,
        pid: e.tgid,
        process: process.to_string(),
        uid: e.uid,
        kind: e.kind,
        state: None,
        holders: Vec::new(),
        safe_to_remove: false,
        reason: String::new(),
    };
    match looked {
        Looked::Not(why) => f.reason = why.clone(),
        Looked::Failed(err) => f.reason = format!("could not look: {err}"),
        Looked::Judged(r) => {
            let j = &r.judgement;
            f.state = Some(crate::unixwatch::path_state_label(j.state));
            f.safe_to_remove = j.safe_to_remove;
            f.reason = match (j.state, j.bind) {
                (PathState::Free, BindOutcome::Succeeds) => {
                    "nothing is there any more (removed, or its holder closed)".into()
                }
                (state, _) => crate::unixbind::describe(state),
            };
            f.holders = j
                .holders
                .iter()
                .map(|s| {
                    let who = r.owners.get(&s.inode).map_or_else(
                        || format!("unknown process (socket inode {})", s.inode),
                        |o| format!("{}[{}] (user {})", o.process, o.pid, o.user),
                    );
                    format!("{who}, {} {}", s.kind.as_str(), s.state.as_str())
                })
                .collect();
        }
    }
    f
}

/// The warn log line of a failed unix bind.
pub fn log_line(f: &UnixFailure) -> String {
    let mut line = format!(
        "bind(unix:{}) by {}[{}] failed: EADDRINUSE",
        f.address, f.process, f.pid
    );
    match (f.state, f.holders.first()) {
        (Some("held"), Some(h)) => line.push_str(&format!("; held by {h}")),
        (Some(_), _) => line.push_str(&format!("; {}", f.reason)),
        (None, _) => line.push_str(&format!("; not judged: {}", f.reason)),
    }
    line
}

/// The failed unix binds: the recent ones and the bounded counter.
#[derive(Debug, Clone, Default)]
pub struct UnixLog {
    pub recent: VecDeque<UnixFailure>,
    /// (netns label, process) -> failures.
    pub counts: BTreeMap<(Option<String>, String), u64>,
    /// Failures not counted because a new series would pass the cap.
    pub dropped: u64,
}

impl UnixLog {
    /// Counts and keeps `f`; at most `max_series` counter series.
    pub fn record(&mut self, netns: Option<&str>, f: UnixFailure, max_series: usize) {
        let key = (netns.map(str::to_string), f.process.clone());
        if self.counts.contains_key(&key) || self.counts.len() < max_series {
            *self.counts.entry(key).or_default() += 1;
        } else {
            self.dropped += 1;
        }
        if self.recent.len() == UNIX_LOG_CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ret: i32, family: u8, path: &[u8], len: u32) -> Vec<u8> {
        let mut e = crate::source::records::EventRec {
            pid: 7,
            tgid: 6,
            uid: 33,
            netns: 4026531840,
            ret,
            socktype: 1,
            kind: 1,
            family,
            flags: 8,
            ..Default::default()
        };
        e.comm[..5].copy_from_slice(b"nginx");
        let mut u = crate::source::records::UnixPath {
            len,
            path: [0; 108],
        };
        u.path[..path.len()].copy_from_slice(path);
        records::to_bytes(&UnixEventRec { e, u })
    }

    #[test]
    fn decodes_paths_and_abstract_names() {
        let e = decode(&record(-libc::EADDRINUSE, 1, b"/run/app.sock\0", 14)).unwrap();
        assert_eq!(e.name, UnixName::Path(b"/run/app.sock".to_vec()));
        assert_eq!((e.pid, e.tgid, e.uid), (7, 6, 33));
        assert_eq!(e.kind, Some(UnixType::Stream));
        assert_eq!(e.comm, "nginx");
        let e = decode(&record(-libc::EADDRINUSE, 1, b"\0bus", 4)).unwrap();
        assert_eq!(e.name.to_string(), "@bus");
        // A path given without its NUL, all 108 bytes of it.
        let long = [b'a'; 108];
        let e = decode(&record(-libc::EADDRINUSE, 1, &long, 108)).unwrap();
        assert_eq!(e.name, UnixName::Path(long.to_vec()));
    }

    #[test]
    fn odd_records_are_errors() {
        assert!(decode(&[0u8; 72]).is_err());
        assert!(decode(&record(-libc::EACCES, 1, b"/a", 2)).is_err());
        assert!(decode(&record(-libc::EADDRINUSE, 2, b"/a", 2)).is_err());
        assert!(decode(&record(-libc::EADDRINUSE, 1, b"/a", 0)).is_err());
        assert!(decode(&record(-libc::EADDRINUSE, 1, b"/a", 109)).is_err());
        assert!(!is_unix_record(&[0u8; 72]));
    }

    #[test]
    fn log_is_bounded_and_lines_say_what_was_there() {
        let e = decode(&record(-libc::EADDRINUSE, 1, b"/run/app.sock", 13)).unwrap();
        let f = explain(
            &e,
            SystemTime::UNIX_EPOCH,
            "host",
            "nginx",
            &Looked::Not("a relative path".into()),
        );
        assert_eq!(
            log_line(&f),
            "bind(unix:/run/app.sock) by nginx[6] failed: EADDRINUSE; not judged: a relative path"
        );
        let mut l = UnixLog::default();
        for i in 0..(UNIX_LOG_CAPACITY + 3) {
            let mut g = f.clone();
            g.process = format!("p{}", i % 3);
            l.record(None, g, 2);
        }
        assert_eq!(l.recent.len(), UNIX_LOG_CAPACITY);
        assert_eq!(l.counts.len(), 2);
        assert_eq!(
            l.counts.values().sum::<u64>() + l.dropped,
            (UNIX_LOG_CAPACITY + 3) as u64
        );
    }
}
