//! Who holds a socket, and with which SO_REUSEADDR / SO_REUSEPORT / device.
//!
//! Attribution maps socket inodes to `(pid, fd)` by reading `/proc/PID/fd` links.
//! Scanning every fd of every process costs about 2 ms per 1,000 fds, so the
//! resolver keeps a cache, re-validates a cached entry with one `readlink`, and
//! scans only when an inode of interest is not in the cache. Flags come from a
//! duplicate of the socket's fd (`pidfd_open` + `pidfd_getfd` + `getsockopt`),
//! closed at once. Both need privileges; without them the answers are `unknown`
//! and [`Capabilities`] says what is missing.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::fdlinks::{FdLinks, Link};
pub use crate::model::{Capabilities, Denied};
use crate::model::{Owner, SocketFlags, Tri};

/// Where a socket's file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdRef {
    pub pid: u32,
    pub fd: i32,
}

/// Flags read from a live socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbedFlags {
    pub flags: SocketFlags,
    pub ifindex: u32,
    pub v6only: Tri,
}

/// Counters of the resolver's work, for benchmarks and debugging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolveStats {
    pub cache_hits: u64,
    pub full_scans: u64,
    pub fds_read: u64,
}

/// Inode -> owner resolution with a cache that survives between polls.
pub struct OwnerResolver {
    procfs: PathBuf,
    /// inode -> (fd, round it was last wanted in).
    cache: HashMap<u64, (FdRef, u64)>,
    /// Inodes a full scan could not find (held by a process in another pid
    /// namespace, or closed meanwhile): not worth another scan until new ones
    /// appear. Value: round last wanted in.
    not_found: HashMap<u64, u64>,
    round: u64,
    /// pid -> (its start time, owner, round last used): re-reading comm, status
    /// and cgroup of every owner at every poll cost more than the rest of the
    /// attribution together; the start time (one read of /proc/PID/stat) tells a
    /// reused pid apart.
    owners: HashMap<u32, (u64, Owner, u64)>,
    /// inode -> (flags, when read, round last used): flags are re-read at most
    /// every [`FLAGS_TTL`], they practically never change after listen().
    flags: HashMap<u64, (ProbedFlags, Instant, u64)>,
    /// A scan that ran out of its time slice, to continue at the next poll.
    scan_state: Option<Scan>,
    /// Time one call may spend scanning; `None` scans to the end (one-shot commands).
    pub scan_slice: Option<Duration>,
    users: HashMap<u32, String>,
    /// Every holder of each listening socket (a restart's outcome needs them all).
    holder_scan: super::holders::HolderScanner,
    pub caps: Capabilities,
    pub stats: ResolveStats,
}

/// Reads the fd links of the process `links` lists from where it stopped, moving the
/// targets it finds from `remaining` to `found`; stops at the deadline (checked every
/// 256 links). Returns how many links it read and whether the deadline stopped it.
fn scan_fds(
    links: &mut FdLinks,
    remaining: &mut HashSet<u64>,
    found: &mut HashMap<u64, FdRef>,
    deadline: Option<Instant>,
    denied: &mut Option<Denied>,
) -> (usize, bool) {
    let pid = links.pid();
    let mut read = 0usize;
    while let Some(r) = links.next_link() {
        read += 1;
        match r {
            Ok((fd, Link::Socket(inode))) => {
                if remaining.remove(&inode) {
                    found.insert(inode, FdRef { pid, fd });
                }
            }
            Ok((_, Link::Other)) => {}
            // The listing passed (CAP_DAC_READ_SEARCH) but the link did not
            // (the ptrace check): this fd's owner stays unknown, and says so.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                denied.get_or_insert(Denied::FdLink);
            }
            Err(_) => {}
        }
        if read % 256 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return (read, true);
        }
    }
    (read, false)
}

pub(super) fn socket_inode(link: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    super::fdlinks::socket_inode(link.as_os_str().as_bytes())
}

/// The systemd unit in a `/proc/PID/cgroup` text: the last `.service` (else
/// `.scope`) path component.
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let mut scope = None;
    for path in cgroup_paths(text) {
        for comp in path.split('/').rev() {
            if comp.ends_with(".service") {
                return Some(comp.to_string());
            }
            if comp.ends_with(".scope") && scope.is_none() {
                scope = Some(comp.to_string());
            }
        }
    }
    scope
}

/// The cgroup paths of a `/proc/PID/cgroup` text (`ID:CONTROLLERS:PATH` per line; the
/// path may itself hold colons).
pub fn cgroup_paths(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.splitn(3, ':').nth(2).unwrap_or(""))
}

/// A scan in progress.
struct Scan {
    /// Pids not read yet, ascending (popped from the end: newest first).
    pids: Vec<u32>,
    /// A process whose fd table was read only in part, open where it stopped.
    current: Option<FdLinks>,
    targets: HashSet<u64>,
    denied: Option<Denied>,
}

/// How long one poll of the agent may spend scanning `/proc/*/fd` (about 50,000
/// fds); the rest of a scan continues at the next poll.
pub const SCAN_SLICE: Duration = Duration::from_millis(150);

/// How long flags read from a live socket are trusted.
pub const FLAGS_TTL: Duration = Duration::from_secs(60);

/// `name:x:uid:...` lines of /etc/passwd.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// `/etc/passwd` beyond this (a directory of ~500,000 users) is not read: owners are
/// then shown by uid.
const PASSWD_MAX: u64 = 64 << 20;

/// A small file of `/proc/PID/`, read safely (regular files only, capped).
fn proc_file(dir: &Path, name: &str) -> Option<String> {
    crate::fsread::read_to_string(
        &dir.join(name),
        crate::fsread::Symlinks::Follow,
        crate::fsread::PROC_FILE_MAX,
    )
    .ok()
}

impl OwnerResolver {
    pub fn new(procfs: &Path) -> Self {
        Self::with_rootfs(procfs, Path::new("/"))
    }

    /// User names come from `<rootfs>/etc/passwd` (`--path.rootfs`: in a container the
    /// host's root is mounted elsewhere). Unreadable, the `user` label shows uids.
    pub fn with_rootfs(procfs: &Path, rootfs: &Path) -> Self {
        let passwd = rootfs.join("etc/passwd");
        let users = match crate::fsread::read_to_string(
            &passwd,
            crate::fsread::Symlinks::Follow,
            PASSWD_MAX,
        ) {
            Ok(t) => parse_passwd(&t),
            Err(e) => {
                tracing::warn!(
                    "reading {} (--path.rootfs) for user names: {}; the user label shows uids",
                    passwd.display(),
                    e.reason()
                );
                HashMap::new()
            }
        };
        OwnerResolver {
            procfs: procfs.to_path_buf(),
            cache: HashMap::new(),
            not_found: HashMap::new(),
            round: 0,
            owners: HashMap::new(),
            flags: HashMap::new(),
            scan_state: None,
            scan_slice: Some(SCAN_SLICE),
            users,
            holder_scan: super::holders::HolderScanner::new(procfs, Some(SCAN_SLICE)),
            caps: Capabilities::default(),
            stats: ResolveStats::default(),
        }
    }

    fn fd_path(&self, r: FdRef) -> PathBuf {
        self.procfs
            .join(r.pid.to_string())
            .join("fd")
            .join(r.fd.to_string())
    }

    /// Starts a new round: forgets cache entries no poll of the last round wanted.
    /// One round is one poll, or one pass over every namespace with `--netns all`
    /// (namespaces share one resolver: inodes are global, and one cache means one
    /// scan finds the sockets of every namespace).
    pub fn next_round(&mut self) {
        let last = self.round;
        self.cache.retain(|_, (_, r)| *r >= last);
        self.not_found.retain(|_, r| *r >= last);
        self.owners.retain(|_, (_, _, r)| *r >= last);
        self.flags.retain(|_, (_, _, r)| *r >= last);
        self.holder_scan.next_round();
        self.round += 1;
    }

    /// Maps each inode in `wanted` to the fd that holds it, where one can be found.
    /// Cached entries are re-checked with one readlink; a full scan runs only if a
    /// wanted inode is neither cached nor known to be unfindable.
    pub fn resolve(&mut self, wanted: &HashSet<u64>) -> HashMap<u64, FdRef> {
        let round = self.round;
        let mut found = HashMap::with_capacity(wanted.len());
        let mut missing = false;
        for &inode in wanted {
            if inode == 0 {
                continue;
            }
            match self.cache.get(&inode).map(|(r, _)| *r) {
                Some(r)
                    if fs::read_link(self.fd_path(r))
                        .ok()
                        .as_deref()
                        .and_then(socket_inode)
                        == Some(inode) =>
                {
                    self.stats.cache_hits += 1;
                    found.insert(inode, r);
                }
                // A cached fd that moved or closed, or an inode never seen: scan,
                // unless a scan already looked for it in vain.
                Some(_) => missing = true,
                None => match self.not_found.get_mut(&inode) {
                    Some(r) => *r = round,
                    None => missing = true,
                },
            }
        }
        // A scan that did not finish last poll goes on for what is still wanted.
        let mut targets: HashSet<u64> = wanted
            .iter()
            .filter(|i| **i != 0 && !found.contains_key(i) && !self.not_found.contains_key(i))
            .copied()
            .collect();
        if let Some(st) = &self.scan_state {
            targets.extend(
                st.targets
                    .iter()
                    .filter(|i| wanted.contains(i) && !found.contains_key(i)),
            );
        }
        if missing || self.scan_state.is_some() {
            let complete = self.scan(&targets, &mut found);
            if complete {
                for &i in &targets {
                    if !found.contains_key(&i) {
                        self.not_found.insert(i, round);
                    }
                }
            }
        }
        for (&i, &r) in &found {
            self.cache.insert(i, (r, round));
            self.not_found.remove(&i);
        }
        found
    }

    /// Reads `/proc/PID/fd` links looking for `targets`, newest process first (a
    /// new listener usually belongs to a process that just started), and stops as
    /// soon as every target is found. At most [`SCAN_SLICE`] per call: a scan of a
    /// million fds takes seconds, so it continues at the next poll instead of
    /// holding this one back. Returns whether the scan is complete.
    fn scan(&mut self, targets: &HashSet<u64>, found: &mut HashMap<u64, FdRef>) -> bool {
        let restart = match &self.scan_state {
            None => true,
            Some(st) => !targets.is_subset(&st.targets),
        };
        if restart && !self.start_scan(targets) {
            return true;
        }
        let deadline = self.scan_slice.and_then(|d| Instant::now().checked_add(d));
        let Some(st) = self.scan_state.as_mut() else {
            return true;
        };
        let mut remaining: HashSet<u64> = st
            .targets
            .iter()
            .filter(|i| !found.contains_key(i))
            .copied()
            .collect();
        let mut complete = remaining.is_empty();
        while !complete {
            // Resume inside a big process where the last slice stopped.
            let mut links = match st.current.take() {
                Some(c) => c,
                None => match st.pids.pop() {
                    Some(pid) => match FdLinks::open(&self.procfs, pid) {
                        Ok(l) => l,
                        // Kernel threads and exited processes have nothing to show.
                        Err(e) => {
                            if e.kind() == io::ErrorKind::PermissionDenied {
                                st.denied = Some(Denied::FdDir);
                            }
                            continue;
                        }
                    },
                    None => {
                        complete = true;
                        break;
                    }
                },
            };
            let (read, out_of_time) =
                scan_fds(&mut links, &mut remaining, found, deadline, &mut st.denied);
            self.stats.fds_read += read as u64;
            if remaining.is_empty() {
                complete = true;
            } else if out_of_time {
                st.current = Some(links);
                break;
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        self.end_slice(complete);
        complete
    }

    /// Starts a new pass over every process, newest first. `false` when the
    /// process list itself cannot be read (owners are then unknown).
    fn start_scan(&mut self, targets: &HashSet<u64>) -> bool {
        self.stats.full_scans += 1;
        let Ok(dir) = fs::read_dir(&self.procfs) else {
            self.caps.owners = false;
            self.caps.owners_denied = Some(Denied::FdDir);
            return false;
        };
        let mut pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        // Popped from the end: highest pid first.
        pids.sort_unstable();
        self.scan_state = Some(Scan {
            pids,
            current: None,
            targets: targets.clone(),
            denied: None,
        });
        true
    }

    /// After a slice: what the scan learnt about the privileges it has, and the end
    /// of the pass when it is complete.
    fn end_slice(&mut self, complete: bool) {
        let Some(st) = self.scan_state.as_ref() else {
            return;
        };
        if complete {
            if st.denied.is_some() || (st.pids.is_empty() && st.current.is_none()) {
                // A whole pass tells whether every process was readable.
                self.caps.owners = st.denied.is_none();
                self.caps.owners_denied = st.denied;
            }
            self.scan_state = None;
        } else if st.denied.is_some() {
            self.caps.owners = false;
            self.caps.owners_denied = st.denied;
        }
    }

    /// Every process holding each of `inodes` (listening sockets); `slice` bounds
    /// the time a scan may take per call (`None`: to its end).
    pub fn holders(
        &mut self,
        inodes: &HashSet<u64>,
        slice: Option<Duration>,
    ) -> HashMap<u64, crate::model::Holders> {
        let users = &self.users;
        let name = |uid: u32| users.get(&uid).cloned().unwrap_or_else(|| uid.to_string());
        self.holder_scan.slice = slice;
        self.holder_scan.holders(inodes, &name)
    }

    pub fn user_name(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    /// Process name, user and unit of `pid`. `None` when it exited meanwhile.
    /// The `procfs` crate parses `/proc/PID/{stat,status}` (comm and effective uid).
    pub fn owner(&mut self, pid: u32) -> Option<Owner> {
        let dir = self.procfs.join(pid.to_string());
        // Through fsread: in a fake procfs (--path.procfs) these could be FIFOs, and
        // the procfs crate below reads `status` with a plain open.
        let start = proc_file(&dir, "stat")
            .and_then(|t| crate::procstat::parse(&t))?
            .start_time;
        crate::fsread::open(&dir.join("status"), crate::fsread::Symlinks::Follow).ok()?;
        let round = self.round;
        if let Some((t, o, r)) = self.owners.get_mut(&pid) {
            if *t == start {
                *r = round;
                return Some(o.clone());
            }
        }
        let proc_ = procfs::process::Process::new_with_root(dir.clone()).ok()?;
        let comm = proc_.stat().ok()?.comm;
        let uid = proc_.status().ok()?.euid;
        let unit = proc_file(&dir, "cgroup").and_then(|t| unit_from_cgroup(&t));
        let o = Owner {
            pid,
            process: comm,
            uid,
            user: self.user_name(uid),
            unit,
        };
        self.owners.insert(pid, (start, o.clone(), round));
        Some(o)
    }

    /// Reads the flags of socket `inode` through a duplicate of its fd. Records a
    /// missing privilege in `caps`; a stale cache entry is dropped.
    pub fn probe(&mut self, r: FdRef, ipv6: bool, inode: u64) -> Option<ProbedFlags> {
        let round = self.round;
        if let Some((p, at, used)) = self.flags.get_mut(&inode) {
            if at.elapsed() < FLAGS_TTL {
                *used = round;
                return Some(*p);
            }
        }
        match probe_flags(r, ipv6, Some(inode)) {
            Ok(p) => {
                self.flags.insert(inode, (p, Instant::now(), round));
                Some(p)
            }
            Err(e) => {
                match e.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => self.caps.socket_flags = false,
                    _ => {
                        self.cache.remove(&inode);
                    }
                }
                None
            }
        }
    }
}

fn getsockopt_int(fd: &OwnedFd, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of their sizes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// A duplicate of another process's fd (`pidfd_open` + `pidfd_getfd`), closed on drop.
///
/// # Errors
/// EPERM without PTRACE_MODE_ATTACH on the target, ESRCH/EBADF when it went away.
pub fn duplicate_fd(r: FdRef) -> io::Result<OwnedFd> {
    // SAFETY: raw syscalls with integer arguments; results are checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, r.pid as libc::c_int, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: a raw syscall with integer arguments (an fd we own and a number);
    // the result is checked before use.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), r.fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

/// `pidfd_open` + `pidfd_getfd` + `getsockopt`. Both duplicated fds are closed when
/// this returns (OwnedFd).
///
/// # Errors
/// EPERM without PTRACE_MODE_ATTACH on the target, ESRCH/EBADF when it went away.
pub fn probe_flags(r: FdRef, ipv6: bool, expected_inode: Option<u64>) -> io::Result<ProbedFlags> {
    let sock = duplicate_fd(r)?;
    // The fd number may have been reused since the scan (or a just-forked child
    // holds a copy that is about to close): read flags only from the right socket.
    if let Some(want) = expected_inode {
        // SAFETY: st is a valid out-pointer for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: sock is a valid fd.
        if unsafe { libc::fstat(sock.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_ino != want {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
    }
    let reuseaddr = getsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR)? != 0;
    let reuseport = getsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_REUSEPORT)? != 0;
    // SO_BINDTOIFINDEX (62) can be read since Linux 5.0.
    let ifindex = getsockopt_int(&sock, libc::SOL_SOCKET, 62).unwrap_or(0) as u32;
    let v6only = if ipv6 {
        getsockopt_int(&sock, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
            .map(|v| Tri::from_bool(v != 0))
            .unwrap_or(Tri::Unknown)
    } else {
        Tri::False
    };
    Ok(ProbedFlags {
        flags: SocketFlags {
            reuseaddr: Tri::from_bool(reuseaddr),
            reuseport: Tri::from_bool(reuseport),
        },
        ifindex,
        v6only,
    })
}

#[cfg(test)]
mod tests;
