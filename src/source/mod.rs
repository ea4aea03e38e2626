//! Reading the kernel: socket tables (the BPF socket iterator, netlink sock_diag,
//! /proc/net fallback), socket owners and their flags, and the sysctls that shape port
//! allocation.

pub mod bpf;
pub mod holders;
pub mod netlink;
pub mod owners;
pub mod procnet;
pub mod sysctl;

use std::path::{Path, PathBuf};

use crate::model::{Protocol, Socket, SourceKind, State};
use bpf::{BpfError, SockIter};
use netlink::{NetlinkDiag, NetlinkError, Request};
use procnet::ProcNetError;

/// `--source`: which kernel interface to read sockets from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// The BPF socket iterator, else netlink sock_diag, else /proc/net.
    Auto,
    /// The BPF socket iterator (every socket's flags), bound-only TCP sockets from sock_diag.
    Bpf,
    Netlink,
    Procfs,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    ProcNet(#[from] ProcNetError),
    /// `--source auto` left the bpf source mid-dump: what was streamed so far is
    /// incomplete, the poll starts again with netlink.
    #[error("the bpf socket iterator failed mid-dump ({0}); switched to netlink sock_diag")]
    SourceChanged(String),
}

impl SourceError {
    /// The dump raced with table changes; restarting the poll gives a consistent view.
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            SourceError::Netlink(NetlinkError::Interrupted { .. }) | SourceError::SourceChanged(_)
        )
    }
}

/// The socket table reader behind `--source`.
pub struct SocketTable {
    bpf: Option<SockIter>,
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
    /// With `--source bpf` or `--source netlink` when that source cannot be opened.
    pub fn open(choice: SourceChoice, procfs: &Path) -> Result<Self, SourceError> {
        let mut t = SocketTable {
            bpf: None,
            netlink: None,
            procfs: procfs.to_path_buf(),
            choice,
            bad_lines: 0,
            logged: std::collections::HashSet::new(),
        };
        match choice {
            SourceChoice::Procfs => {}
            SourceChoice::Netlink => t.netlink = Some(NetlinkDiag::open()?),
            SourceChoice::Bpf => {
                t.bpf = Some(SockIter::open()?);
                // Bound-only TCP sockets are not in the iterator's hashes.
                match NetlinkDiag::open() {
                    Ok(n) => t.netlink = Some(n),
                    Err(e) => log_once(&BOUND_ONLY_LOGGED, || {
                        tracing::warn!(
                            error = %e,
                            "netlink sock_diag unavailable: bound-only (BOUND_INACTIVE) TCP \
                             sockets are not visible beside the bpf source"
                        )
                    }),
                }
            }
            SourceChoice::Auto => {
                match SockIter::open() {
                    Ok(b) => t.bpf = Some(b),
                    Err(e) => log_bpf_fallback(&e),
                }
                match NetlinkDiag::open() {
                    Ok(n) => t.netlink = Some(n),
                    Err(e) if t.bpf.is_none() => t.fall_back(&e),
                    Err(e) => log_once(&BOUND_ONLY_LOGGED, || {
                        tracing::warn!(
                            error = %e,
                            "netlink sock_diag unavailable: bound-only (BOUND_INACTIVE) TCP \
                             sockets are not visible beside the bpf source"
                        )
                    }),
                }
            }
        }
        if t.bpf.is_some() {
            log_once(&BPF_LOGGED, || {
                tracing::info!(
                    "socket source: bpf (socket iterator; flags of every socket, also without a file)"
                )
            });
        }
        Ok(t)
    }

    pub fn kind(&self) -> SourceKind {
        if self.bpf.is_some() {
            SourceKind::Bpf
        } else if self.netlink.is_some() {
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

    /// `--source auto`: a bpf source that stopped working mid-run gives way to netlink.
    fn bpf_failed(&mut self, why: &BpfError) {
        log_bpf_fallback(why);
        self.bpf = None;
        if self.netlink.is_none() {
            match NetlinkDiag::open() {
                Ok(n) => self.netlink = Some(n),
                Err(e) => self.fall_back(&e),
            }
        }
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
        self.dump_narrowed(protocol, states, None, sink)
    }

    /// [`SocketTable::dump`] for a caller that needs the full socket only on the ports
    /// in `narrow`'s bitmap (65,536 bits in 1,024 words) and, elsewhere, only the state
    /// counts and the ephemeral tally's key (addresses and remote port where the local
    /// port is in `narrow`'s inclusive range): the bpf source then reads no more of
    /// those sockets (see [`bpf::SockIter::dump_narrowed`]); the other sources, which
    /// have every field anyway, stream full sockets. Sockets outside the ports come with
    /// unknown flags and inode 0.
    ///
    /// # Errors
    /// As [`SocketTable::dump`].
    pub fn dump_narrowed<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        protocol: Protocol,
        states: u32,
        narrow: Option<(&[u64], (u16, u16))>,
        sink: &mut F,
    ) -> Result<(), SourceError> {
        if let Some(b) = self.bpf.as_mut() {
            match b.dump_narrowed(protocol, states, narrow, sink) {
                Ok(()) => return self.dump_bound_only(protocol, states, sink),
                Err(e) if self.choice == SourceChoice::Auto => {
                    self.bpf_failed(&e);
                    // Part of the table may have reached `sink` already: the caller
                    // retries the whole poll (SourceError::is_interrupted).
                    return Err(SourceError::SourceChanged(e.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        }
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

impl SocketTable {
    /// Beside the bpf source: bound-but-not-listening TCP sockets, which are in the bind
    /// hash only (the iterator walks the listening and established hashes). They always
    /// have a file, so their flags come from pidfd as with netlink.
    fn dump_bound_only<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        protocol: Protocol,
        states: u32,
        sink: &mut F,
    ) -> Result<(), SourceError> {
        let bound = netlink::state_bit(State::BoundInactive);
        if protocol != Protocol::Tcp || states & bound == 0 {
            return Ok(());
        }
        let Some(nl) = self.netlink.as_mut() else {
            return Ok(());
        };
        let r = nl.dump(
            Request {
                protocol,
                family: libc::AF_UNSPEC as u8,
                states: bound,
            },
            sink,
        );
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.is_unavailable() => {
                log_once(&BOUND_ONLY_LOGGED, || {
                    tracing::warn!(
                        error = %e,
                        "netlink sock_diag denied: bound-only (BOUND_INACTIVE) TCP sockets are \
                         not visible beside the bpf source"
                    )
                });
                self.netlink = None;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

static BPF_LOGGED: std::sync::Once = std::sync::Once::new();
static BPF_FALLBACK_LOGGED: std::sync::Once = std::sync::Once::new();
static BOUND_ONLY_LOGGED: std::sync::Once = std::sync::Once::new();

/// The source choice is logged once per process, not once per network namespace.
fn log_once(once: &std::sync::Once, f: impl FnOnce()) {
    once.call_once(f);
}

fn log_bpf_fallback(why: &BpfError) {
    let reason = why.to_string();
    log_once(&BPF_FALLBACK_LOGGED, || {
        tracing::warn!(
            error = %reason,
            "bpf socket iterator unavailable, using netlink sock_diag (flags of sockets \
             without a file, TIME_WAIT and orphans, are not visible there)"
        )
    });
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
