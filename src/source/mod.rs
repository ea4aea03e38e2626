//! Reading the kernel: socket tables (netlink sock_diag, /proc/net fallback), socket
//! owners and their flags, and the sysctls that shape port allocation.

pub mod netlink;
pub mod owners;
pub mod procnet;
pub mod sysctl;

use std::path::{Path, PathBuf};

use crate::model::{Protocol, Socket, SourceKind, State};
use netlink::{NetlinkDiag, NetlinkError, Request};
use procnet::ProcNetError;

/// `--source`: which kernel interface to read sockets from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// netlink sock_diag, falling back to /proc/net when it is unavailable or denied.
    Auto,
    Netlink,
    Procfs,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    ProcNet(#[from] ProcNetError),
}

impl SourceError {
    /// The dump raced with table changes; restarting the poll gives a consistent view.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, SourceError::Netlink(NetlinkError::Interrupted { .. }))
    }
}

/// The socket table reader behind `--source`.
pub struct SocketTable {
    netlink: Option<NetlinkDiag>,
    procfs: PathBuf,
    choice: SourceChoice,
    /// Malformed /proc/net lines seen (each is skipped, never fatal).
    pub bad_lines: u64,
    /// Bad lines already logged: each is logged once, not at every read.
    logged: std::collections::HashSet<String>,
}

impl SocketTable {
    /// # Errors
    /// With `--source netlink` when the netlink socket cannot be opened.
    pub fn open(choice: SourceChoice, procfs: &Path) -> Result<Self, SourceError> {
        let mut t = SocketTable {
            netlink: None,
            procfs: procfs.to_path_buf(),
            choice,
            bad_lines: 0,
            logged: std::collections::HashSet::new(),
        };
        match choice {
            SourceChoice::Procfs => {}
            SourceChoice::Netlink => t.netlink = Some(NetlinkDiag::open()?),
            SourceChoice::Auto => match NetlinkDiag::open() {
                Ok(n) => t.netlink = Some(n),
                Err(e) => t.fall_back(&e),
            },
        }
        Ok(t)
    }

    pub fn kind(&self) -> SourceKind {
        if self.netlink.is_some() {
            SourceKind::Netlink
        } else {
            SourceKind::Procfs
        }
    }

    fn fall_back(&mut self, why: &NetlinkError) {
        let reason = why.to_string();
        tracing::warn!(
            error = %reason,
            "netlink sock_diag unavailable, falling back to {}/net (bound-only sockets, \
             bound devices and IPV6_V6ONLY are not visible there)",
            self.procfs.display()
        );
        self.netlink = None;
    }

    /// Streams every socket of `protocol` whose state bit is in `states`.
    ///
    /// # Errors
    /// Source errors; with `--source auto` a netlink permission or support error
    /// switches to /proc for this and every later dump instead.
    pub fn dump<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        protocol: Protocol,
        states: u32,
        sink: &mut F,
    ) -> Result<(), SourceError> {
        if let Some(nl) = self.netlink.as_mut() {
            match dump_netlink(nl, protocol, states, sink) {
                Ok(()) => return Ok(()),
                Err(e) if self.choice == SourceChoice::Auto && e.is_unavailable() => {
                    self.fall_back(&e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut filtered = |s: &Socket| {
            if states & netlink::state_bit(s.state) != 0 {
                sink(s)
            }
        };
        let mut bad = 0u64;
        let logged = &mut self.logged;
        for v6 in [false, true] {
            let r = procnet::read_table(&self.procfs, protocol, v6, &mut filtered, &mut |e| {
                bad += 1;
                let msg = e.to_string();
                // Bounded: a file full of garbage must not grow this set without limit.
                if logged.len() < 1000 && logged.insert(msg.clone()) {
                    tracing::warn!(error = %msg, "skipping malformed socket table line");
                }
            });
            match r {
                // No IPv6 stack: /proc/net/tcp6 is absent and its table is empty.
                Err(e) if v6 && e.is_not_found() => {}
                other => other?,
            }
        }
        self.bad_lines += bad;
        Ok(())
    }
}

fn dump_netlink<F: FnMut(&Socket) + ?Sized>(
    nl: &mut NetlinkDiag,
    protocol: Protocol,
    states: u32,
    sink: &mut F,
) -> Result<(), NetlinkError> {
    match protocol {
        // One walk of the TCP hash tables for both families.
        Protocol::Tcp => nl.dump(
            Request {
                protocol,
                family: libc::AF_UNSPEC as u8,
                states,
            },
            sink,
        ),
        Protocol::Udp => {
            for family in [libc::AF_INET, libc::AF_INET6] {
                let r = nl.dump(
                    Request {
                        protocol,
                        family: family as u8,
                        states,
                    },
                    sink,
                );
                match r {
                    // A kernel without IPv6 has no UDPv6 table to dump.
                    Err(NetlinkError::Kernel { errno, .. })
                        if family == libc::AF_INET6
                            && matches!(errno, libc::ENOENT | libc::EAFNOSUPPORT) => {}
                    other => other?,
                }
            }
            Ok(())
        }
    }
}

/// Every socket of every protocol, in one Vec: for one-shot commands and tests.
///
/// # Errors
/// As [`SocketTable::dump`].
pub fn dump_all(table: &mut SocketTable, states: u32) -> Result<Vec<Socket>, SourceError> {
    let mut out = Vec::new();
    for p in Protocol::ALL {
        table.dump(p, states, &mut |s| out.push(s.clone()))?;
    }
    Ok(out)
}

/// State mask that selects LISTEN sockets only.
pub fn listen_mask() -> u32 {
    netlink::state_bit(State::Listen)
}
