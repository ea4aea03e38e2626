//! Facts about the host a poll read besides sockets: how ports are allocated and what
//! bindwatch's privileges let it see.

/// `net.ipv4.ip_local_port_range` and `net.ipv4.ip_local_reserved_ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortAllocation {
    pub range: (u16, u16),
    /// Inclusive ranges, as written by the kernel (`8080,10000-10005`).
    pub reserved: Vec<(u16, u16)>,
}

impl Default for PortAllocation {
    /// The kernel defaults, used when the files cannot be read.
    fn default() -> Self {
        PortAllocation {
            range: (32768, 60999),
            reserved: Vec::new(),
        }
    }
}

impl PortAllocation {
    pub fn in_range(&self, port: u16) -> bool {
        port >= self.range.0 && port <= self.range.1
    }

    pub fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|&(a, b)| port >= a && port <= b)
    }

    /// A port the kernel may hand out as an ephemeral source port.
    pub fn is_ephemeral(&self, port: u16) -> bool {
        self.in_range(port) && !self.is_reserved(port)
    }

    /// Number of ports `connect()` can choose from.
    pub fn size(&self) -> u32 {
        let total = u32::from(self.range.1.saturating_sub(self.range.0)) + 1;
        let reserved: u32 = (self.range.0..=self.range.1)
            .filter(|p| self.is_reserved(*p))
            .count() as u32;
        total - reserved
    }
}

/// What the last resolution could and could not do.
///
/// `owners` is what the scans achieved, not what the process's capability sets
/// promise: it is false as soon as the kernel refused a listing of `/proc/PID/fd` or a
/// `readlink` of one of its links in the last scan that reached its end (or in the
/// scan in progress), and true again after a whole scan without a refusal. A scan
/// that is never needed (every socket of interest already attributed) changes
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// No fd table or fd link was refused.
    pub owners: bool,
    /// Socket fds could be duplicated to read their flags.
    pub socket_flags: bool,
    /// TIME_WAIT and orphan timers are known (the bpf source needs the kernel's HZ).
    pub socket_timers: bool,
    /// Which refusal made `owners` false.
    pub owners_denied: Option<Denied>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            owners: true,
            socket_flags: true,
            socket_timers: true,
            owners_denied: None,
        }
    }
}

/// The kernel check that refused attribution. Listing another user's `/proc/PID/fd`
/// (mode 0500) is a permission check that `CAP_DAC_READ_SEARCH` passes; reading a link
/// in it is a ptrace access check (`PTRACE_MODE_READ`: same uid or `CAP_SYS_PTRACE`)
/// that no DAC capability passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// `/proc/PID/fd` could not be listed.
    FdDir,
    /// `/proc/PID/fd` was listed but its links could not be read.
    FdLink,
}

impl Denied {
    /// What to grant, for the log line.
    pub fn missing(self) -> &'static str {
        match self {
            Denied::FdDir => "CAP_DAC_READ_SEARCH (to list other users' /proc/PID/fd) and CAP_SYS_PTRACE (to read the links in it)",
            Denied::FdLink => "CAP_SYS_PTRACE (reading /proc/PID/fd links is a ptrace access check that CAP_DAC_READ_SEARCH does not pass)",
        }
    }
}
