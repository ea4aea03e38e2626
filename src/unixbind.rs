//! The rules of `bind()` on an `AF_UNIX` address, pure: what is at a path (and which
//! sockets are bound to that file) -> would a new socket's bind succeed, and if not,
//! is the file held by a live socket, stale, or not a socket at all.
//!
//! # The kernel's rules (`net/unix/af_unix.c`, docs/bind-rules.md)
//! - **A path**: `unix_bind_bsd()` creates the socket file with `mknod` and never
//!   reuses one, so `bind()` fails with EADDRINUSE whenever *anything* exists at the
//!   path (the final component is not followed: a symlink, even a dangling one,
//!   blocks too). What exists is one of: a socket file a live socket is bound to
//!   (*held*); a socket file no live socket is bound to, left by a daemon that died
//!   without `unlink()` (*stale*: removing it is safe); a file of another type (*not
//!   a socket*). A missing or unusable directory fails with another errno (ENOENT,
//!   ENOTDIR, EACCES, EROFS): not EADDRINUSE.
//! - **An abstract name** (`@name`, no file): fails with EADDRINUSE when a socket of
//!   the same network namespace *and the same type* is bound to exactly the same
//!   bytes: the kernel looks the name up in a hash bucket chosen by the name's
//!   checksum XOR the socket type (`unix_abstract_hash()`), so a stream and a
//!   datagram socket can hold the same abstract name at once.
//! - `SOCK_STREAM`, `SOCK_DGRAM` and `SOCK_SEQPACKET` change nothing for a path: a
//!   file held by a socket of one type (or by none) blocks every type.
//! - No socket option (SO_REUSEADDR, SO_REUSEPORT) changes any of this.
//!
//! # For callers that remove stale files
//! [`judge_unix_path`] is the one judgement; [`UnixJudgement::safe_to_remove`] is
//! true only for [`PathState::Stale`], which needs a socket file that no socket of
//! *any* network namespace read is bound to, with every namespace read. The inputs
//! come from `unixprobe::inspect_unix_path(path, &opts)`, the I/O function that
//! stats the path (under `--path.rootfs`, without following its last component),
//! dumps the unix sockets of every network namespace, re-stats the path to be sure
//! it did not change meanwhile, and returns a `unixprobe::UnixPathReport` with the
//! judgement and the holders' owners, and the `PathFacts` it judged (device and inode
//! of the socket file). Between that answer and an `unlink()` a daemon may start and
//! bind anew (after removing the file itself): compare a fresh `lstat()` of the path
//! with `report.facts` right before unlinking, and unlink only right before starting
//! the daemon that will bind the path:
//!
//! ```text
//! let opts = unixprobe::ProbeOptions::new(Path::new("/proc"), rootfs);
//! let report = unixprobe::inspect_unix_path(path, &opts)?;
//! if report.judgement.safe_to_remove
//!     && Some(unixprobe::path_facts(rootfs, path)?) == report.facts
//! {
//!     // unlink rootfs + path
//! }
//! ```

use std::path::PathBuf;

use serde::Serialize;

use crate::model::{UnixName, UnixSocket, UnixType, VfsId};

/// Longest `sun_path` Linux takes for a path (108 bytes, no terminating NUL needed).
pub const SUN_PATH_MAX: usize = 108;

/// The address `check unix:...` is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixTarget {
    /// An absolute path, in bindwatch's mount namespace (under `--path.rootfs`).
    Path(PathBuf),
    /// An abstract name without its leading NUL.
    Abstract(Vec<u8>),
}

impl UnixTarget {
    /// `unix:/run/app.sock` or `unix:@name`, as given.
    pub fn display(&self) -> String {
        match self {
            UnixTarget::Path(p) => format!("unix:{}", p.display()),
            UnixTarget::Abstract(n) => format!("unix:{}", UnixName::Abstract(n.clone())),
        }
    }
}

/// Parses `unix:PATH` or `unix:@NAME`; `None` when `s` does not start with `unix:`.
///
/// # Errors
/// An empty path or name, a relative path, a path ending in `/` or naming `.`/`..`,
/// a NUL byte, more than 108 bytes (107 for an abstract name after its NUL).
pub fn parse_target(s: &str) -> Option<Result<UnixTarget, String>> {
    let rest = s.strip_prefix("unix:")?;
    Some(parse_address(rest))
}

fn parse_address(rest: &str) -> Result<UnixTarget, String> {
    if rest.contains('\0') {
        return Err("unix: a socket address cannot contain a NUL byte".into());
    }
    if let Some(name) = rest.strip_prefix('@') {
        if name.is_empty() {
            return Err(
                "unix:@ needs a name after '@' (an empty abstract name is autobind's)".into(),
            );
        }
        if name.len() > SUN_PATH_MAX - 1 {
            return Err(format!(
                "unix:@{name}: an abstract name has at most {} bytes, this one has {}",
                SUN_PATH_MAX - 1,
                name.len()
            ));
        }
        return Ok(UnixTarget::Abstract(name.as_bytes().to_vec()));
    }
    if rest.is_empty() {
        return Err(
            "unix: needs a path (unix:/run/app.sock) or an abstract name (unix:@name)".into(),
        );
    }
    if !rest.starts_with('/') {
        return Err(format!(
            "unix:{rest}: the path must be absolute (a relative path depends on the daemon's working directory)"
        ));
    }
    if rest.len() > SUN_PATH_MAX {
        return Err(format!(
            "unix:{rest}: a socket path has at most {SUN_PATH_MAX} bytes (sun_path), this one has {}",
            rest.len()
        ));
    }
    let last = rest.rsplit('/').next().unwrap_or("");
    if matches!(last, "" | "." | "..") {
        return Err(format!(
            "unix:{rest}: the path must name a file, not a directory"
        ));
    }
    Ok(UnixTarget::Path(PathBuf::from(rest)))
}

/// The type of a file that is not a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// "a regular file", as the text says it.
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::Symlink => "a symbolic link",
            FileKind::Fifo => "a FIFO",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
        }
    }
}

/// What is at a path, as `lstat()` and the directory's permissions say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathFacts {
    /// Nothing; the directory exists and this process could create an entry in it.
    Absent,
    /// Nothing can be created there: the directory is missing (ENOENT), a path
    /// component is not a directory (ENOTDIR), or it is not writable (EACCES, EROFS).
    DirUnusable { errno: i32 },
    /// A socket file: device and the low 32 bits of its inode number.
    Socket { vfs: VfsId },
    /// Some other file.
    Other { kind: FileKind },
}

/// What the path is, for a bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathState {
    /// Nothing there: bind() would succeed.
    Free,
    /// A socket file a live socket is bound to.
    Held,
    /// A socket file no socket is bound to: left behind; removing it is safe.
    Stale,
    /// A socket file no socket read is bound to, but not every network namespace
    /// could be read: held or stale cannot be told.
    HolderUnknown,
    /// A file of another type.
    NotSocket(FileKind),
    /// bind() would fail with another errno than EADDRINUSE.
    Unusable { errno: i32 },
}

/// What `bind()` would answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindOutcome {
    Succeeds,
    AddrInUse,
    /// Another errno (the `PathState::Unusable` one).
    Fails {
        errno: i32,
    },
}

/// The judgement of one unix address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixJudgement {
    pub state: PathState,
    pub bind: BindOutcome,
    /// The live sockets bound to the file or name (listeners first).
    pub holders: Vec<UnixSocket>,
    /// Abstract names only: sockets of other types bound to the same name, which do
    /// not block this bind.
    pub other_types: Vec<UnixSocket>,
    /// Deleting the file is safe: nothing is bound to it (only for `Stale`).
    pub safe_to_remove: bool,
}

impl UnixJudgement {
    fn new(state: PathState, holders: Vec<UnixSocket>) -> UnixJudgement {
        let bind = match state {
            PathState::Free => BindOutcome::Succeeds,
            PathState::Unusable { errno } => BindOutcome::Fails { errno },
            _ => BindOutcome::AddrInUse,
        };
        UnixJudgement {
            state,
            bind,
            holders,
            other_types: Vec::new(),
            safe_to_remove: state == PathState::Stale,
        }
    }
}

/// Listeners first (they are whom a client reaches), then by inode: a stable order.
fn ordered(mut v: Vec<UnixSocket>) -> Vec<UnixSocket> {
    v.sort_by_key(|s| (!s.is_listener(), s.inode));
    v
}

/// Judges a bind on a path from what is there (`facts`) and the unix sockets of the
/// network namespaces read (`sockets`); `every_netns_read` says whether all of them
/// could be read (a file bound in an unread namespace would look stale).
pub fn judge_unix_path(
    facts: &PathFacts,
    sockets: &[UnixSocket],
    every_netns_read: bool,
) -> UnixJudgement {
    match *facts {
        PathFacts::Absent => UnixJudgement::new(PathState::Free, Vec::new()),
        PathFacts::DirUnusable { errno } => {
            UnixJudgement::new(PathState::Unusable { errno }, Vec::new())
        }
        PathFacts::Other { kind } => UnixJudgement::new(PathState::NotSocket(kind), Vec::new()),
        PathFacts::Socket { vfs } => {
            let holders: Vec<UnixSocket> = sockets
                .iter()
                .filter(|s| s.vfs == Some(vfs))
                .cloned()
                .collect();
            let state = if !holders.is_empty() {
                PathState::Held
            } else if every_netns_read {
                PathState::Stale
            } else {
                PathState::HolderUnknown
            };
            UnixJudgement::new(state, ordered(holders))
        }
    }
}

/// Judges a bind of a socket of type `kind` on the abstract name `name` (without its
/// leading NUL) from the unix sockets of the one network namespace the bind would
/// happen in.
pub fn judge_unix_abstract(name: &[u8], kind: UnixType, sockets: &[UnixSocket]) -> UnixJudgement {
    let (holders, other_types): (Vec<UnixSocket>, Vec<UnixSocket>) = sockets
        .iter()
        .filter(|s| matches!(&s.name, Some(UnixName::Abstract(n)) if n == name))
        .cloned()
        .partition(|s| s.kind == kind);
    let mut j = if holders.is_empty() {
        UnixJudgement::new(PathState::Free, holders)
    } else {
        UnixJudgement::new(PathState::Held, ordered(holders))
    };
    j.other_types = ordered(other_types);
    j
}

/// The one-line reason of a judgement, as `check` prints it after the holder.
pub fn describe(state: PathState) -> String {
    match state {
        PathState::Free => "nothing is there: bind() would succeed".into(),
        PathState::Held => "held by a live socket".into(),
        PathState::Stale => "stale socket file: no socket has been bound to it since its owner \
                             died; removing it is safe"
            .into(),
        PathState::HolderUnknown => "a socket file no socket of the network namespaces read is \
                                     bound to, but some namespaces could not be read: held or \
                                     stale cannot be told; do not remove it"
            .into(),
        PathState::NotSocket(kind) => format!("{}, not a socket", kind.describe()),
        PathState::Unusable { errno } => format!(
            "bind() would fail with {} ({}), not EADDRINUSE",
            errno_name(errno),
            strerror(errno)
        ),
    }
}

/// The C library's text of `errno` ("No such file or directory"), without the
/// "(os error N)" Rust adds.
pub fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The symbolic name of the errnos a unix bind's directory can give.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::ENOTDIR => "ENOTDIR",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EPERM => "EPERM",
        libc::EADDRINUSE => "EADDRINUSE",
        _ => "an error",
    }
}

#[cfg(test)]
mod tests;
