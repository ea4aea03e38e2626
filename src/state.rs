//! The agent's memory of listeners, shared with the one-shot commands through a
//! state file (`--state.file`): a `check` run right after a daemon died can judge its
//! TIME_WAIT leftovers with the flags the agent saw on its listener.
//!
//! The file names the network namespace it describes; a reader in another
//! namespace ignores it. Writes are atomic (temp file + rename).
//!
//! It also says whether its writer is alive: the writer's pid and process start
//! time (so a reused pid is not mistaken for it), its poll interval, and a
//! heartbeat refreshed every poll. A reader decides with [`writer_status`]; memory
//! from a writer that is gone or late describes a past that may have moved on
//! (a listener that came and went since is in no file), so `check` ignores it.
//! Each entry is one listener generation (its inode, first and last sighting,
//! the first poll that saw it gone); `rebind::memory` says what they may decide.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::{Owner, Protocol, Socket, SocketFlags, State, Tri};

/// One remembered listener, as written to the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub protocol: String,
    pub address: IpAddr,
    pub port: u16,
    pub v6only: Option<bool>,
    pub reuseaddr: Option<bool>,
    pub reuseport: Option<bool>,
    pub uid: u32,
    pub ifindex: Option<u32>,
    pub process: Option<String>,
    pub user: Option<String>,
    /// Unix seconds when the listener was last seen alive.
    pub last_seen: f64,
    /// The listening socket's inode (0 in files written before generations).
    #[serde(default)]
    pub inode: u64,
    /// Unix seconds of its first sighting (absent in older files).
    #[serde(default)]
    pub first_seen: Option<f64>,
    /// Unix seconds of the first poll that no longer saw it.
    #[serde(default)]
    pub gone_at: Option<f64>,
    /// Socket cookies of connections seen on its port while it was certainly
    /// listening (sorted, capped): their leftovers are provably its children's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<u64>,
    /// The main holder first named for the live listening socket: pid and start
    /// time (`/proc/PID/stat` field 22). A restart judged later sees whether it
    /// died while other holders keep the socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_holder: Option<(u32, u64)>,
}

/// Who wrote the file, to tell whether it is still being refreshed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Writer {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): a reused pid has
    /// another.
    pub start_time: u64,
    pub poll_interval_seconds: f64,
    /// Unix seconds of the writer's last poll.
    pub heartbeat: f64,
}

/// Whether a state file's writer is alive, as [`writer_status`] judges it.
#[derive(Debug, Clone, PartialEq)]
pub enum WriterStatus {
    Alive,
    /// A file without a writer section (an older bindwatch): liveness unknown.
    Unknown,
    /// The writer's process is gone (or its pid belongs to another process now).
    Gone {
        pid: u32,
    },
    /// Alive but its heartbeat is older than [`LATE_AFTER_INTERVALS`] polls.
    Late {
        pid: u32,
        age: f64,
        interval: f64,
    },
}

/// A heartbeat older than this many poll intervals (plus a second for scheduling)
/// means the writer is late: its memory may miss what happened since.
pub const LATE_AFTER_INTERVALS: f64 = 3.0;

impl WriterStatus {
    /// One line for the log saying why the memory is ignored, or `None` if alive.
    pub fn reason(&self, path: &Path) -> Option<String> {
        let p = path.display();
        match self {
            WriterStatus::Alive => None,
            WriterStatus::Unknown => Some(format!(
                "ignoring the listener memory in {p}: the file does not say whether its writer is alive (written by an older bindwatch)"
            )),
            WriterStatus::Gone { pid } => Some(format!(
                "ignoring the listener memory in {p}: its writer (pid {pid}) is gone, so it may miss listeners that came and went since"
            )),
            WriterStatus::Late { pid, age, interval } => Some(format!(
                "ignoring the listener memory in {p}: its writer (pid {pid}) last polled {age:.1}s ago, polls every {interval:.1}s"
            )),
        }
    }
}

/// Is the writer alive? `start_time_now` is the start time of the process that
/// has the writer's pid now (`None`: no such process). Pure.
pub fn writer_status(w: Option<&Writer>, now: f64, start_time_now: Option<u64>) -> WriterStatus {
    let Some(w) = w else {
        return WriterStatus::Unknown;
    };
    if start_time_now != Some(w.start_time) {
        return WriterStatus::Gone { pid: w.pid };
    }
    let age = now - w.heartbeat;
    let interval = if w.poll_interval_seconds.is_finite() {
        w.poll_interval_seconds.max(0.0)
    } else {
        0.0
    };
    let limit = interval * LATE_AFTER_INTERVALS + 1.0;
    // A heartbeat that is no number, or far in the future, proves nothing.
    if !age.is_finite() || age > limit || age < -limit {
        return WriterStatus::Late {
            pid: w.pid,
            age,
            interval,
        };
    }
    WriterStatus::Alive
}

/// Start time of process `pid` (field 22 of `procfs/PID/stat`), `None` if there is
/// no such process or the line is malformed.
pub fn process_start_time(procfs: &Path, pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(procfs.join(pid.to_string()).join("stat")).ok()?;
    crate::procstat::parse(&text).map(|p| p.start_time)
}

/// This process as a state file's writer.
pub fn this_writer(procfs: &Path, poll_interval: Duration, heartbeat: SystemTime) -> Writer {
    let pid = std::process::id();
    Writer {
        pid,
        start_time: process_start_time(procfs, pid).unwrap_or(0),
        poll_interval_seconds: poll_interval.as_secs_f64(),
        heartbeat: unix(heartbeat),
    }
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// Inode of the network namespace the listeners belong to.
    pub netns: u64,
    /// Absent in files written before writers were recorded.
    #[serde(default)]
    pub writer: Option<Writer>,
    pub listeners: Vec<Entry>,
}

fn tri(v: Option<bool>) -> Tri {
    v.map_or(Tri::Unknown, Tri::from_bool)
}

impl Entry {
    pub fn from_socket(s: &Socket, owner: Option<&Owner>, seen: SystemTime) -> Entry {
        Entry {
            protocol: s.protocol.as_str().to_string(),
            address: s.local.ip(),
            port: s.local.port(),
            v6only: s.v6only.known(),
            reuseaddr: s.flags.reuseaddr.known(),
            reuseport: s.flags.reuseport.known(),
            uid: s.uid,
            ifindex: s.ifindex,
            process: owner.map(|o| o.process.clone()),
            user: owner.map(|o| o.user.clone()),
            last_seen: unix(seen),
            inode: s.inode,
            first_seen: None,
            gone_at: None,
            children: Vec::new(),
            main_holder: None,
        }
    }

    /// The listener socket this entry describes, or `None` for a malformed entry.
    pub fn to_socket(&self) -> Option<Socket> {
        let protocol: Protocol = self.protocol.parse().ok()?;
        Some(Socket {
            protocol,
            state: if protocol == Protocol::Tcp {
                State::Listen
            } else {
                State::Close
            },
            local: SocketAddr::new(self.address, self.port),
            remote: SocketAddr::new(
                if self.address.is_ipv6() {
                    crate::model::V6_ANY
                } else {
                    crate::model::V4_ANY
                },
                0,
            ),
            uid: self.uid,
            inode: self.inode,
            ifindex: self.ifindex,
            expires_ms: None,
            v6only: tri(self.v6only),
            flags: SocketFlags {
                reuseaddr: tri(self.reuseaddr),
                reuseport: tri(self.reuseport),
            },
            count: 1,
            cookie: 0,
        })
    }

    /// When the listener was last seen; a `last_seen` out of range (which [`load`]
    /// skips) reads as the epoch, i.e. long forgotten, never as a panic.
    pub fn seen_at(&self) -> SystemTime {
        Duration::try_from_secs_f64(self.last_seen)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .unwrap_or(UNIX_EPOCH)
    }

    /// Range checks on the numbers of an entry read from the file (serde already
    /// checked the integer types).
    ///
    /// # Errors
    /// What is wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.last_seen.is_finite() && (0.0..=MAX_LAST_SEEN).contains(&self.last_seen)) {
            return Err(format!(
                "last_seen {} is not a Unix time between 1970 and 2500",
                self.last_seen
            ));
        }
        if self.port == 0 {
            return Err("port 0 is not a listener's port".to_string());
        }
        for (name, t) in [("first_seen", self.first_seen), ("gone_at", self.gone_at)] {
            if let Some(t) = t.filter(|t| !(t.is_finite() && (0.0..=MAX_LAST_SEEN).contains(t))) {
                return Err(format!(
                    "{name} {t} is not a Unix time between 1970 and 2500"
                ));
            }
        }
        if self.children.len() > MAX_CHILDREN {
            return Err(format!(
                "{} children, more than the {MAX_CHILDREN} a writer records",
                self.children.len()
            ));
        }
        if self.protocol.parse::<Protocol>().is_err() {
            return Err(format!("unknown protocol {:?}", self.protocol));
        }
        Ok(())
    }
}

/// Children cookies accepted per entry (a writer records at most
/// `rebind::memory::CHILDREN_MAX`).
const MAX_CHILDREN: usize = 65_536;

/// The latest `last_seen` accepted (2500-01-01): anything later is a broken file.
const MAX_LAST_SEEN: f64 = 16_725_225_600.0;

/// The cap on the state file, see [`crate::fsread::STATE_MAX`].
pub const MAX_BYTES: u64 = crate::fsread::STATE_MAX;

/// Writes the state atomically and durably, safe in a directory an attacker may have
/// prepared: the temporary file gets an unpredictable name and is created with
/// `O_EXCL|O_NOFOLLOW` (a planted file or symlink makes the create fail, it is never
/// followed or truncated), mode 0644 whatever the umask, is fsynced before the rename,
/// and the directory is fsynced after it. A directory that other users can write to
/// without the sticky bit is refused (they could swap the file under a reader). The
/// rename replaces only a regular file bindwatch may own, or nothing ([`target`]).
///
/// # Errors
/// When the directory is refused or cannot be created, the path holds something else
/// than such a file, or the file cannot be written.
pub fn save(path: &Path, state: &StateFile) -> io::Result<()> {
    target::save_checked(
        path,
        state,
        Path::new("/proc"),
        &mut target::Guard::default(),
    )
    .map_err(|e| match e {
        target::SaveError::Io(e) => e,
        target::SaveError::Refused(why) => io::Error::new(io::ErrorKind::AlreadyExists, why),
    })
}

/// The file's bytes: compact, and sized up front (the agent writes this every poll,
/// and the children cookies, up to hundreds of thousands, made a pretty-printed file
/// cost more user time than the rest of the poll's bookkeeping).
fn encode(state: &StateFile) -> io::Result<Vec<u8>> {
    let hint = 512
        + state
            .listeners
            .iter()
            .map(|e| 256 + 21 * e.children.len())
            .sum::<usize>();
    let mut body = Vec::with_capacity(hint);
    serde_json::to_writer(&mut body, state).map_err(io::Error::other)?;
    Ok(body)
}

/// 64 random bits from the kernel (getrandom(2)).
fn random_u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    // SAFETY: b is a valid, writable 8-byte buffer for the length given.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(b))
}

/// Whether the state may be written into a directory of this `mode` owned by `owner`,
/// as effective uid `me`. Pure.
///
/// Refused: a directory group- or world-writable without the sticky bit (another user
/// could rename their own file over ours), or owned by another user than root or us
/// (they can change its mode at will). Allowed: a sticky world-writable directory like
/// `/tmp` (only the owner of a file may replace it there, and the temporary name is
/// created exclusively), although a private directory is better (docs/security.md).
///
/// # Errors
/// Why the directory is refused.
pub fn dir_policy(mode: u32, owner: u32, me: u32) -> Result<(), String> {
    const STICKY: u32 = 0o1000;
    if owner != 0 && owner != me {
        return Err(format!(
            "owned by uid {owner}, neither root nor this process (uid {me})"
        ));
    }
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Err(format!(
            "writable by other users (mode {:o}) without the sticky bit",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Reads the state file of namespace `netns`: `None` when it is missing or
/// describes another namespace. An entry that is malformed or out of range is
/// skipped, with one warning for the file.
///
/// # Errors
/// A file that cannot be read or parsed, with its path.
pub fn load_file(path: &Path, netns: Option<u64>) -> Result<Option<StateFile>, String> {
    // Never a symlink, never a FIFO (check in ExecStartPre= would hang), never more
    // than the cap.
    let text = match crate::fsread::read(
        path,
        crate::fsread::Symlinks::Refuse,
        crate::fsread::STATE_MAX,
    ) {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let (state, skipped) = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some((n, first)) = skipped {
        tracing::warn!(path = %path.display(), skipped = n, "skipped bad entries of the state file (first: {first})");
    }
    if netns.is_some_and(|n| n != state.netns) {
        return Ok(None);
    }
    Ok(Some(state))
}

/// The entries of `state` seen within `max_age`.
pub fn recent(state: StateFile, max_age: Duration) -> Vec<Entry> {
    let now = SystemTime::now();
    state
        .listeners
        .into_iter()
        .filter(|e| {
            now.duration_since(e.seen_at())
                .map_or(true, |age| age <= max_age)
        })
        .collect()
}

/// Reads the listeners remembered for namespace `netns` and seen within `max_age`,
/// whoever wrote them. A missing or foreign file gives an empty list.
///
/// # Errors
/// As [`load_file`].
pub fn load(path: &Path, netns: Option<u64>, max_age: Duration) -> Result<Vec<Entry>, String> {
    Ok(load_file(path, netns)?.map_or(Vec::new(), |s| recent(s, max_age)))
}

/// What [`load_live`] found.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub entries: Vec<Entry>,
    /// The writer's poll interval.
    pub interval: Duration,
    /// Why the memory was ignored (one line), if it was.
    pub ignored: Option<String>,
}

/// Like [`load`], but only from a writer that is alive (`procfs` tells); otherwise
/// empty, with the one line saying why.
///
/// # Errors
/// As [`load_file`].
pub fn load_live(
    path: &Path,
    procfs: &Path,
    netns: Option<u64>,
    max_age: Duration,
) -> Result<Live, String> {
    let Some(state) = load_file(path, netns)? else {
        return Ok(Live::default());
    };
    let start = state
        .writer
        .as_ref()
        .and_then(|w| process_start_time(procfs, w.pid));
    let status = writer_status(state.writer.as_ref(), unix(SystemTime::now()), start);
    if let Some(why) = status.reason(path) {
        return Ok(Live {
            ignored: Some(why),
            ..Live::default()
        });
    }
    Ok(Live {
        interval: writer_interval(&state),
        entries: recent(state, max_age),
        ignored: None,
    })
}

/// The poll interval of the file's writer (0 when the file does not say: then
/// memory trusts nothing past a listener's last sighting).
pub fn writer_interval(state: &StateFile) -> Duration {
    state
        .writer
        .as_ref()
        .map(|w| w.poll_interval_seconds)
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
        .map_or(Duration::ZERO, Duration::from_secs_f64)
}

/// Parses the file's text: entries are taken one by one, so that one bad entry costs
/// only itself. Returns the state and, when entries were skipped, how many and the
/// first reason.
///
/// # Errors
/// When the text is not JSON or its top level is not a state file.
pub fn parse(text: &[u8]) -> Result<(StateFile, Option<(usize, String)>), String> {
    let mut doc: serde_json::Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let raw = match doc.get_mut("listeners").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(items)) => items,
        Some(serde_json::Value::Null) | None => Vec::new(),
        Some(_) => return Err("listeners: expected a list".to_string()),
    };
    if let Some(slot) = doc.get_mut("listeners") {
        *slot = serde_json::Value::Array(Vec::new());
    }
    let mut state: StateFile = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    let mut skipped = 0usize;
    let mut first = None;
    for (i, item) in raw.into_iter().enumerate() {
        let entry = serde_json::from_value::<Entry>(item)
            .map_err(|e| e.to_string())
            .and_then(|e| e.validate().map(|()| e));
        match entry {
            Ok(e) => state.listeners.push(e),
            Err(reason) => {
                skipped += 1;
                first.get_or_insert_with(|| format!("listeners[{i}]: {reason}"));
            }
        }
    }
    Ok((state, first.map(|f| (skipped, f))))
}

pub mod target;

#[cfg(test)]
mod tests;
