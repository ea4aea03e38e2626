//! Unix-domain sockets as plain data: one socket as sock_diag reports it
//! ([`UnixSocket`]), its name (a path or an abstract name), and the identity of the
//! file a path socket is bound to ([`VfsId`]).

use std::fmt;

use serde::Serialize;

/// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`: the types an `AF_UNIX` socket has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnixType {
    Stream,
    Dgram,
    Seqpacket,
}

impl UnixType {
    pub const ALL: [UnixType; 3] = [UnixType::Stream, UnixType::Dgram, UnixType::Seqpacket];

    /// From the kernel's `udiag_type` (`SOCK_*`); `None` for anything else.
    pub fn from_kernel(v: u8) -> Option<UnixType> {
        match v {
            1 => Some(UnixType::Stream),
            2 => Some(UnixType::Dgram),
            5 => Some(UnixType::Seqpacket),
            _ => None,
        }
    }

    /// The `SOCK_*` value for socket(2).
    pub fn to_kernel(self) -> i32 {
        match self {
            UnixType::Stream => 1,
            UnixType::Dgram => 2,
            UnixType::Seqpacket => 5,
        }
    }

    /// The `type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UnixType::Stream => "stream",
            UnixType::Dgram => "dgram",
            UnixType::Seqpacket => "seqpacket",
        }
    }
}

/// What a unix socket is doing, from the kernel's `udiag_state` (TCP state numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnixState {
    /// `TCP_LISTEN`: a stream or seqpacket socket after listen().
    Listen,
    /// `TCP_ESTABLISHED`: connected to a peer.
    Connected,
    /// `TCP_SYN_SENT`: a connect() in progress (an embryo waiting in a listener's queue).
    Connecting,
    /// `TCP_CLOSE`: neither listening nor connected (a bound datagram receiver, a
    /// socket before listen(), or one whose peer closed).
    Unconnected,
}

impl UnixState {
    pub const ALL: [UnixState; 4] = [
        UnixState::Listen,
        UnixState::Connected,
        UnixState::Connecting,
        UnixState::Unconnected,
    ];

    pub fn from_kernel(v: u8) -> UnixState {
        match v {
            10 => UnixState::Listen,
            1 => UnixState::Connected,
            2 => UnixState::Connecting,
            _ => UnixState::Unconnected,
        }
    }

    /// The `state` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UnixState::Listen => "listen",
            UnixState::Connected => "connected",
            UnixState::Connecting => "connecting",
            UnixState::Unconnected => "unconnected",
        }
    }
}

/// The address a unix socket is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnixName {
    /// A filesystem path (`sun_path` up to its first NUL), as the binding process
    /// wrote it: relative to that process's directory and mount namespace.
    Path(Vec<u8>),
    /// An abstract name: `sun_path` after its leading NUL, every byte of the address
    /// length (trailing NULs included: they are part of the name).
    Abstract(Vec<u8>),
}

impl UnixName {
    /// From `UNIX_DIAG_NAME` (the bytes of `sun_path` the kernel stored).
    pub fn from_sun_path(b: &[u8]) -> Option<UnixName> {
        match b.split_first() {
            None => None,
            Some((0, rest)) => Some(UnixName::Abstract(rest.to_vec())),
            Some(_) => {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                Some(UnixName::Path(b[..end].to_vec()))
            }
        }
    }
}

impl fmt::Display for UnixName {
    /// A path as is; an abstract name as `@name` with NUL bytes as `@` (as `ss` shows
    /// them). Bytes that are not UTF-8 are replaced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixName::Path(p) => f.write_str(&String::from_utf8_lossy(p)),
            UnixName::Abstract(n) => {
                let shown: Vec<u8> = n.iter().map(|&c| if c == 0 { b'@' } else { c }).collect();
                write!(f, "@{}", String::from_utf8_lossy(&shown))
            }
        }
    }
}

impl Serialize for UnixName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The file a path socket is bound to: its device and inode number as
/// `UNIX_DIAG_VFS` reports them. The kernel gives only the low 32 bits of the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct VfsId {
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Low 32 bits of the inode number.
    pub ino32: u32,
}

impl VfsId {
    /// From `UNIX_DIAG_VFS`: the superblock's `s_dev` as the kernel keeps it
    /// internally (`MKDEV`: major in the top 12 bits, minor in the low 20; not the
    /// `new_encode_dev()` form `stat()` uses) and the inode's low 32 bits.
    pub fn from_kernel(dev: u32, ino: u32) -> VfsId {
        VfsId {
            dev_major: dev >> 20,
            dev_minor: dev & 0xf_ffff,
            ino32: ino,
        }
    }
}

/// One `AF_UNIX` socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnixSocket {
    /// The socket's inode (what `/proc/PID/fd` links name).
    pub inode: u64,
    #[serde(rename = "type")]
    pub kind: UnixType,
    pub state: UnixState,
    /// `None` for an unbound socket (most clients, accepted connections).
    pub name: Option<UnixName>,
    /// The file a path socket is bound to; `None` for abstract and unbound ones.
    pub vfs: Option<VfsId>,
    /// Inode of the peer socket, for a connected one.
    pub peer: Option<u64>,
    /// A listener: connections waiting in its accept queue; others: bytes queued to read.
    pub rqueue: Option<u32>,
    /// A listener: the accept queue's limit (listen() backlog); others: bytes queued to send.
    pub wqueue: Option<u32>,
    /// The socket's owner uid (`UNIX_DIAG_UID`, Linux 5.3+).
    pub uid: Option<u32>,
    pub cookie: u64,
}

impl UnixSocket {
    /// A socket that receives on its name: a listener, or a bound datagram socket
    /// that is not connected.
    pub fn is_listener(&self) -> bool {
        self.name.is_some()
            && (self.state == UnixState::Listen
                || (self.kind == UnixType::Dgram && self.state == UnixState::Unconnected))
    }

    /// A plain socket for unit tests: unbound stream, unconnected, nothing queued.
    pub fn test(inode: u64) -> UnixSocket {
        UnixSocket {
            inode,
            kind: UnixType::Stream,
            state: UnixState::Unconnected,
            name: None,
            vfs: None,
            peer: None,
            rqueue: None,
            wqueue: None,
            uid: None,
            cookie: 0,
        }
    }
}

/// A watched unix service from `--config.file` (`unix:` instead of protocol/port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixService {
    pub name: String,
    /// An absolute path, or an abstract name.
    pub address: UnixName,
    /// The daemon's socket type (matters for an abstract name only).
    pub kind: UnixType,
    pub owner: super::OwnerMatch,
}

/// The status of one watched unix service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnixServiceStatus {
    pub name: String,
    /// `/run/app.sock` or `@name`: the `address` label.
    pub address: String,
    pub status: super::Status,
    /// What is at the path: `free`, `held`, `stale`, `holder_unknown`,
    /// `not_a_socket`, `unusable`.
    pub path_state: &'static str,
    /// One line for humans: who holds it, what blocks it.
    pub detail: String,
    /// The expected listener's accept queue and its limit, when one listens.
    pub accept_queue: Option<u32>,
    pub accept_queue_limit: Option<u32>,
}

/// What a poll saw of unix sockets: counts for the whole namespace, and the
/// watched services. Empty (not read) where bindwatch did not look.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixView {
    /// Every unix socket of the namespace by (type, state); `None` when the unix
    /// table was not read.
    pub counts: Option<std::collections::BTreeMap<(UnixType, UnixState), u64>>,
    pub watched: Vec<UnixServiceStatus>,
}
