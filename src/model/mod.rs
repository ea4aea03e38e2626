//! Plain data shared by every layer: sockets as the kernel reports them, and the
//! immutable [`Snapshot`] a poll publishes. No I/O here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

mod events;
mod failure;
mod holders;
mod host;
mod tracking;
mod unix;
mod verdict;
mod watch;

pub use events::{BindKey, ConnectKey, Counters, Errno, Outcome};
pub use failure::{Blocker, Call, Failure, FlagsOut};
pub use holders::{Holder, Holders, Holding, Survival};
pub use host::{Capabilities, Denied, PortAllocation};
pub use tracking::BoundTracking;
pub use unix::{
    UnixName, UnixService, UnixServiceStatus, UnixSocket, UnixState, UnixType, UnixView, VfsId,
};
pub use verdict::{Finding, Judgement, Rule, Verdict};
pub use watch::{Bucket, OwnerMatch, Service, ServiceStatus, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!("unknown protocol {other:?} (expected tcp or udp)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// Socket state, numbered as the kernel's `enum tcp_states` (include/net/tcp_states.h).
/// UDP sockets use `Established` (connected) and `Close` (unconnected) like the kernel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum State {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
    /// Bound but neither listening nor connected (Linux 6.8+, sock_diag only).
    BoundInactive = 13,
}

impl State {
    pub const ALL: [State; 13] = [
        State::Established,
        State::SynSent,
        State::SynRecv,
        State::FinWait1,
        State::FinWait2,
        State::TimeWait,
        State::Close,
        State::CloseWait,
        State::LastAck,
        State::Listen,
        State::Closing,
        State::NewSynRecv,
        State::BoundInactive,
    ];

    pub fn from_kernel(v: u8) -> Option<State> {
        State::ALL.get((v as usize).checked_sub(1)?).copied()
    }

    /// The `state` label value for a TCP socket (contract.md).
    pub fn tcp_label(self) -> &'static str {
        match self {
            State::Established => "established",
            State::SynSent => "syn_sent",
            State::SynRecv => "syn_recv",
            State::FinWait1 => "fin_wait1",
            State::FinWait2 => "fin_wait2",
            State::TimeWait => "time_wait",
            State::Close => "close",
            State::CloseWait => "close_wait",
            State::LastAck => "last_ack",
            State::Listen => "listen",
            State::Closing => "closing",
            State::NewSynRecv => "new_syn_recv",
            State::BoundInactive => "bound_inactive",
        }
    }

    /// The `state` label for a socket of `protocol`: UDP only knows connected or not.
    pub fn label(self, protocol: Protocol) -> &'static str {
        match (protocol, self) {
            (Protocol::Tcp, s) => s.tcp_label(),
            (Protocol::Udp, State::Established) => "established",
            (Protocol::Udp, _) => "unconnected",
        }
    }

    /// States a dying connection passes through on its own timer.
    pub fn is_expiring(self) -> bool {
        matches!(
            self,
            State::TimeWait | State::FinWait1 | State::FinWait2 | State::Closing | State::LastAck
        )
    }
}

/// Label values for UDP states, in the order they are exported.
pub const UDP_STATE_LABELS: [&str; 2] = ["established", "unconnected"];

/// A flag of a socket that user space may or may not be able to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tri {
    True,
    False,
    #[default]
    Unknown,
}

impl Tri {
    pub fn from_bool(b: bool) -> Tri {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Tri::True => "true",
            Tri::False => "false",
            Tri::Unknown => "unknown",
        }
    }
    pub fn known(self) -> Option<bool> {
        match self {
            Tri::True => Some(true),
            Tri::False => Some(false),
            Tri::Unknown => None,
        }
    }
    /// Keeps what is known: `self` if known, else `other`.
    pub fn or(self, other: Tri) -> Tri {
        if self == Tri::Unknown {
            other
        } else {
            self
        }
    }
}

/// The socket flags that decide bind conflicts and that sock_diag does not report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SocketFlags {
    pub reuseaddr: Tri,
    pub reuseport: Tri,
}

/// One socket as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub protocol: Protocol,
    pub state: State,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub uid: u32,
    /// 0 for sockets without a file (TIME_WAIT, orphans, unaccepted children).
    pub inode: u64,
    /// Bound device (SO_BINDTODEVICE); `None` where the source cannot tell (/proc).
    pub ifindex: Option<u32>,
    /// Milliseconds until the socket's pending timer fires, when one runs.
    pub expires_ms: Option<u64>,
    /// `IPV6_V6ONLY` of an IPv6 socket where the source reports it.
    pub v6only: Tri,
    /// Flags learnt from the owning process (pidfd) or inherited from the listener.
    pub flags: SocketFlags,
    /// How many sockets this entry stands for. 1 for a socket as read; the agent
    /// folds the connections of a busy port that differ only in their peer into one
    /// entry, so memory does not grow with the connection count.
    pub count: u32,
    /// The kernel's socket cookie (sock_diag); 0 where the source has none (/proc).
    /// A TIME_WAIT keeps the cookie of the connection it came from, which links it
    /// to sightings of that connection (`rebind::memory`).
    pub cookie: u64,
}

impl Socket {
    /// Address family of the local address as the kernel sees it: a v4-mapped IPv6
    /// address behaves as its IPv4 address in bind conflicts.
    pub fn family(&self) -> Family {
        Family::of(&self.local.ip())
    }

    /// The effective local IPv4 address of a mapped IPv6 socket.
    pub fn local_ip(&self) -> IpAddr {
        unmap(self.local.ip())
    }

    pub fn state_label(&self) -> &'static str {
        self.state.label(self.protocol)
    }

    /// A socket that is a listening endpoint: TCP LISTEN or an unconnected bound UDP socket.
    pub fn is_listener(&self) -> bool {
        match self.protocol {
            Protocol::Tcp => self.state == State::Listen,
            Protocol::Udp => self.state != State::Established && self.local.port() != 0,
        }
    }
}

#[cfg(test)]
impl Socket {
    /// A TCP socket for unit tests: uid 0, a file (inode 1), no device, no timer,
    /// flags unknown. Tests override fields with struct update syntax.
    pub(crate) fn test(state: State, local: &str, remote: &str) -> Socket {
        Socket {
            protocol: Protocol::Tcp,
            state,
            local: local.parse().expect("test address"),
            remote: remote.parse().expect("test address"),
            uid: 0,
            inode: 1,
            ifindex: Some(0),
            expires_ms: None,
            v6only: Tri::Unknown,
            flags: SocketFlags::default(),
            count: 1,
            cookie: 0,
        }
    }
}

/// `::ffff:a.b.c.d` -> `a.b.c.d`; everything else unchanged.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

pub const V4_ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
pub const V6_ANY: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Who holds a socket's file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub process: String,
    pub uid: u32,
    pub user: String,
    /// systemd unit from `/proc/PID/cgroup`, when there is one.
    pub unit: Option<String>,
}

impl Owner {
    /// `nginx (pid 123, user www-data)`, as `check` and the watched-service details say it.
    pub fn summary(&self) -> String {
        format!("{} (pid {}, user {})", self.process, self.pid, self.user)
    }
}

/// Key of a listening endpoint: protocol, local address (unmapped) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub protocol: Protocol,
    pub address: IpAddr,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V6(a) => write!(f, "{}/[{}]:{}", self.protocol, a, self.port),
            IpAddr::V4(a) => write!(f, "{}/{}:{}", self.protocol, a, self.port),
        }
    }
}

/// Socket counts keyed by (protocol, family, state).
pub type StateCounts = BTreeMap<(Protocol, Family, State), u64>;

/// Which kernel interface produced a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Bpf,
    Netlink,
    Procfs,
}

impl SourceKind {
    /// Every source, in the order `bindwatch_source_active` lists them.
    pub const ALL: [SourceKind; 3] = [SourceKind::Bpf, SourceKind::Netlink, SourceKind::Procfs];

    /// The name used in `source` labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Bpf => "bpf",
            SourceKind::Netlink => "netlink",
            SourceKind::Procfs => "procfs",
        }
    }
}

/// A listening endpoint with whoever holds it.
#[derive(Debug, Clone)]
pub struct Listener {
    pub socket: Socket,
    pub owner: Option<Owner>,
}

/// Rebind risk of one endpoint: a live listener, or one that vanished recently and
/// whose last-seen flags are remembered.
#[derive(Debug, Clone)]
pub struct EndpointRisk {
    pub endpoint: Endpoint,
    /// The listener (live, or as last seen).
    pub listener: Socket,
    pub owner: Option<Owner>,
    /// True when no process listens there any more.
    pub gone: bool,
    /// Who holds the listener and what a restart leaves of them (empty and
    /// `Closed` for a listener that is gone).
    pub holding: Holding,
    /// A restart with a new socket without SO_REUSEADDR.
    pub without_reuseaddr: Judgement,
    /// The same with SO_REUSEADDR.
    pub with_reuseaddr: Judgement,
    /// The restart that will really happen, with the listener's own SO_REUSEADDR
    /// (unknown where that flag is unknown and decides): the one answer metrics,
    /// `ports` and `check --restart` give.
    pub restart: Judgement,
}

/// Everything one poll learnt. Immutable once published; scrapes render it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: std::time::SystemTime,
    pub source: SourceKind,
    /// Every socket of the netns, counted by (protocol, family, state).
    pub counts: StateCounts,
    pub listeners: Vec<Listener>,
    /// Sockets whose local port is a port of interest (listening, remembered, watched).
    pub port_sockets: Vec<Socket>,
    pub risks: Vec<EndpointRisk>,
    pub allocation: PortAllocation,
    pub capabilities: Capabilities,
    /// Ports of interest left out by `--ports.max` (cumulative).
    pub ports_dropped_total: u64,
    /// Leftovers on remembered ports that no remembered listener generation
    /// explains (cumulative, each counted once): signs of a missed listener.
    pub memory_unexplained_total: u64,
    /// Ports of interest, after the cap.
    pub ports: std::collections::BTreeSet<(Protocol, u16)>,
    /// Owners of the sockets that were attributed, by inode (pids stay out of metrics).
    pub owners: std::collections::HashMap<u64, Owner>,
    /// Every holder of each live listening socket and what a restart leaves of
    /// them, by inode.
    pub holdings: std::collections::HashMap<u64, Holding>,
    /// Status of each watched service (`--config.file`).
    pub watched: Vec<ServiceStatus>,
    /// The fullest ephemeral-port buckets, fullest first.
    pub ephemeral_top: Vec<(Bucket, u32)>,
    /// `net.ipv6.bindv6only` as read by this poll: the V6ONLY a new `[::]` socket gets.
    pub bindv6only: bool,
    /// When the whole TCP table was last walked (counts, sockets on ports of
    /// interest, ephemeral buckets); listeners are read fresh at `taken_at`.
    pub table_taken_at: std::time::SystemTime,
    /// Unix sockets: counts by type and state, watched unix services (the agent
    /// fills it for its own namespace).
    pub unix: UnixView,
}

impl Snapshot {
    /// A snapshot that saw nothing: no sockets, the kernel's default port range, every
    /// capability. For tests and for building one up field by field.
    pub fn empty(taken_at: std::time::SystemTime, source: SourceKind) -> Snapshot {
        Snapshot {
            taken_at,
            source,
            counts: StateCounts::new(),
            listeners: Vec::new(),
            port_sockets: Vec::new(),
            risks: Vec::new(),
            allocation: PortAllocation::default(),
            capabilities: Capabilities::default(),
            ports_dropped_total: 0,
            memory_unexplained_total: 0,
            ports: std::collections::BTreeSet::new(),
            owners: std::collections::HashMap::new(),
            holdings: std::collections::HashMap::new(),
            watched: Vec::new(),
            ephemeral_top: Vec::new(),
            bindv6only: false,
            table_taken_at: taken_at,
            unix: UnixView::default(),
        }
    }
}
