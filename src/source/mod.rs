//! Reading the kernel: socket tables (the BPF socket iterator, netlink sock_diag,
//! /proc/net fallback), socket owners and their flags, and the sysctls that shape port
//! allocation.

pub mod boundpolicy;
pub mod boundtrack;
pub mod bpf;
pub mod bpfload;
pub mod destroy;
pub mod fdlinks;
pub mod fdscan;
pub mod holders;
pub mod hz;
pub mod iterhazard;
pub mod netlink;
pub mod owners;
pub mod procnet;
pub mod records;
mod session;
pub mod sysctl;
pub mod unix;

use std::path::{Path, PathBuf};

use crate::model::{Protocol, Socket, SourceKind, State};
use bpf::{BpfError, SockIter};
use netlink::{NetlinkDiag, NetlinkError, Request};
use procnet::ProcNetError;
pub use session::{Listened, Session};

/// `--source`: which kernel interface to read sockets from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// Netlink sock_diag where the kernel's TCP iterator batches (Linux 5.15 and later;
    /// docs/deploy.md, "Soak test of the TCP iterator"), else the BPF socket iterator;
    /// then /proc/net.
    Auto,
    /// The BPF socket iterator (every socket's flags), bound-only TCP sockets from sock_diag.
    Bpf,
    /// Netlink sock_diag: every socket; SO_REUSEADDR / SO_REUSEPORT only of sockets with
    /// a file, read through their owner (pidfd), none of TIME_WAITs.
    Netlink,
    /// /proc/net/{tcp,tcp6,udp,udp6}: the last resort (no bound-only sockets, bound
    /// devices or IPV6_V6ONLY).
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

/// Which kernel interface a [`SocketTable`] reads, with what it needs beside it.
enum Reader {
    /// The BPF socket iterator; bound-only TCP sockets, which are in the bind hash
    /// only, from sock_diag where it opened.
    Bpf {
        iter: SockIter,
        bound_only: Option<NetlinkDiag>,
    },
    Netlink(NetlinkDiag),
    /// `/proc/net` (always there).
    Procfs,
}

/// The socket table reader behind `--source`.
///
/// [`SocketTable::dump`] reads one protocol's table with a fresh walk. A poll reads
/// the TCP listeners and then the rest of the TCP table through a [`Session`], which
/// walks the table once and orders the two in its types.
pub struct SocketTable {
    reader: Reader,
    procfs: PathBuf,
    choice: SourceChoice,
    /// Malformed /proc/net lines seen (each is skipped, never fatal).
    pub bad_lines: u64,
    /// Bad lines already logged: each is logged once, not at every read.
    logged: std::collections::HashSet<String>,
    /// Bound-only sockets from the last dump while nothing changed them (see
    /// [`SocketTable::track_bound_only`]).
    tracking: Option<boundtrack::TableTracking>,
}

impl SocketTable {
    /// # Errors
    /// With `--source bpf` or `--source netlink` when that source cannot be opened.
    /// `procfs` is where this table's `net/` is read (`/proc/thread-self` for a thread
    /// in another namespace); `host_procfs` and `rootfs` (`--path.procfs`,
    /// `--path.rootfs`) are where the bpf source looks for the kernel's HZ.
    pub fn open(
        choice: SourceChoice,
        procfs: &Path,
        host_procfs: &Path,
        rootfs: &Path,
    ) -> Result<Self, SourceError> {
        let reader = match choice {
            SourceChoice::Procfs => Reader::Procfs,
            SourceChoice::Netlink => Reader::Netlink(NetlinkDiag::open()?),
            SourceChoice::Bpf => Reader::Bpf {
                iter: SockIter::open(host_procfs, rootfs)?,
                bound_only: bound_only_diag(),
            },
            SourceChoice::Auto => {
                let iter = match iterhazard::iterator_hazard_once(host_procfs) {
                    Some(why) => {
                        log_once(&HAZARD_LOGGED, || {
                            tracing::info!(
                                reason = %why,
                                "--source auto reads netlink sock_diag, not the bpf socket \
                                 iterator, on this kernel (docs/deploy.md, \"Soak test of the TCP \
                                 iterator\"); --source bpf chooses the iterator anyway"
                            )
                        });
                        None
                    }
                    None => SockIter::open(host_procfs, rootfs)
                        .inspect_err(log_bpf_fallback)
                        .ok(),
                };
                match iter {
                    Some(iter) => Reader::Bpf {
                        iter,
                        bound_only: bound_only_diag(),
                    },
                    None => match NetlinkDiag::open() {
                        Ok(n) => Reader::Netlink(n),
                        Err(e) => {
                            log_procfs_fallback(&e, procfs);
                            Reader::Procfs
                        }
                    },
                }
            }
        };
        if matches!(reader, Reader::Bpf { .. }) {
            log_once(&BPF_LOGGED, || {
                tracing::info!(
                    "socket source: bpf (socket iterator; flags of every socket, also without a file)"
                )
            });
        }
        Ok(SocketTable {
            reader,
            procfs: procfs.to_path_buf(),
            choice,
            bad_lines: 0,
            logged: std::collections::HashSet::new(),
            tracking: None,
        })
    }

    /// With the bpf source, reuses the last sock_diag dump of the bound-only TCP
    /// sockets while the kernel counts no event that could change them
    /// (`source::boundtrack`), instead of a dump per poll; [`boundpolicy`] decides,
    /// with a reconciling dump every `reconcile_every`. The agent's tables only:
    /// reuse needs the history of the polls before.
    pub fn track_bound_only(&mut self, reconcile_every: std::time::Duration) {
        if matches!(self.reader, Reader::Bpf { .. }) {
            self.tracking = Some(boundtrack::TableTracking::open(reconcile_every));
        }
    }

    /// Whether TIME_WAIT and orphan timers are known: always from sock_diag and
    /// /proc/net (the kernel converts them), from the bpf source only when it knew
    /// the kernel's HZ.
    pub fn timers_known(&self) -> bool {
        match &self.reader {
            Reader::Bpf { iter, .. } => iter.timers_known(),
            Reader::Netlink(_) | Reader::Procfs => true,
        }
    }

    pub fn kind(&self) -> SourceKind {
        match self.reader {
            Reader::Bpf { .. } => SourceKind::Bpf,
            Reader::Netlink(_) => SourceKind::Netlink,
            Reader::Procfs => SourceKind::Procfs,
        }
    }

    /// `--source auto`: netlink that stopped working gives way to /proc/net.
    fn fall_back(&mut self, why: &NetlinkError) {
        log_procfs_fallback(why, &self.procfs);
        self.reader = Reader::Procfs;
    }

    /// `--source auto`: a bpf source that stopped working mid-run gives way to netlink.
    fn bpf_failed(&mut self, why: &BpfError) {
        log_bpf_fallback(why);
        let reader = std::mem::replace(&mut self.reader, Reader::Procfs);
        let netlink = match reader {
            Reader::Bpf {
                bound_only: Some(n),
                ..
            } => Ok(n),
            _ => NetlinkDiag::open(),
        };
        match netlink {
            Ok(n) => self.reader = Reader::Netlink(n),
            Err(e) => self.fall_back(&e),
        }
    }

    /// Runs `step` on the bpf source, if that is the reader: `None` when it is not.
    /// With `--source auto` a failure switches to netlink, and the caller hears that
    /// the dump is incomplete (part of it may have reached its sink already).
    fn with_bpf<T>(
        &mut self,
        step: impl FnOnce(&mut SockIter) -> Result<T, BpfError>,
    ) -> Result<Option<T>, SourceError> {
        let Reader::Bpf { iter, .. } = &mut self.reader else {
            return Ok(None);
        };
        match step(iter) {
            Ok(t) => Ok(Some(t)),
            Err(e) if self.choice == SourceChoice::Auto => {
                self.bpf_failed(&e);
                // The caller retries the whole poll (SourceError::is_interrupted).
                Err(SourceError::SourceChanged(e.to_string()))
            }
            Err(e) => Err(e.into()),
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
        if self
            .with_bpf(|b| b.dump(protocol, states, &mut *sink))?
            .is_some()
        {
            return self.dump_bound_only(protocol, states, sink);
        }
        self.dump_kernel_view(protocol, states, sink)
    }

    /// The listeners-first walk of one poll: see [`Session`].
    pub fn session(&mut self) -> Session<'_> {
        Session { table: self }
    }

    /// A dump from netlink or, failing that, /proc/net (the bpf source is not the
    /// reader): both have every field of every socket, so nothing is narrowed.
    fn dump_kernel_view<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        protocol: Protocol,
        states: u32,
        sink: &mut F,
    ) -> Result<(), SourceError> {
        if let Reader::Netlink(nl) = &mut self.reader {
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

    /// Beside the bpf source: bound-but-not-listening TCP sockets, which are in the bind
    /// hash only (the iterator walks the listening and established hashes), from a
    /// sock_diag dump, reused while nothing changed them where the table tracks them.
    /// They always have a file, so their flags come from pidfd as with netlink.
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
        let Reader::Bpf { bound_only, .. } = &mut self.reader else {
            return Ok(());
        };
        match self.tracking.as_mut() {
            Some(t) => t.poll(&mut |sink| dump_bound_diag(bound_only, sink), sink),
            None => dump_bound_diag(bound_only, &mut |s| sink(s)).map(drop),
        }
    }
}

/// The bound-only TCP sockets of a sock_diag dump beside the bpf source; `false`
/// when there is no sock_diag (it could not open, or was denied: logged once, then
/// not tried again).
fn dump_bound_diag(
    bound_only: &mut Option<NetlinkDiag>,
    sink: &mut dyn FnMut(&Socket),
) -> Result<bool, SourceError> {
    let Some(nl) = bound_only.as_mut() else {
        return Ok(false);
    };
    let r = nl.dump(
        Request {
            protocol: Protocol::Tcp,
            family: libc::AF_UNSPEC as u8,
            states: netlink::state_bit(State::BoundInactive),
        },
        sink,
    );
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_unavailable() => {
            log_once(&BOUND_ONLY_LOGGED, || {
                tracing::warn!(
                    error = %e,
                    "netlink sock_diag denied: bound-only (BOUND_INACTIVE) TCP sockets are \
                     not visible beside the bpf source"
                )
            });
            *bound_only = None;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// sock_diag beside the bpf source, for bound-only TCP sockets; `None`, logged once,
/// where it cannot open.
fn bound_only_diag() -> Option<NetlinkDiag> {
    match NetlinkDiag::open() {
        Ok(n) => Some(n),
        Err(e) => {
            log_once(&BOUND_ONLY_LOGGED, || {
                tracing::warn!(
                    error = %e,
                    "netlink sock_diag unavailable: bound-only (BOUND_INACTIVE) TCP \
                     sockets are not visible beside the bpf source"
                )
            });
            None
        }
    }
}

fn log_procfs_fallback(why: &NetlinkError, procfs: &Path) {
    tracing::warn!(
        error = %why,
        "netlink sock_diag unavailable, falling back to {}/net (bound-only sockets, \
         bound devices and IPV6_V6ONLY are not visible there)",
        procfs.display()
    );
}

static BPF_LOGGED: std::sync::Once = std::sync::Once::new();
static HAZARD_LOGGED: std::sync::Once = std::sync::Once::new();
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
