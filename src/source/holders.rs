//! Every process that has a listening socket open: pid, parent, process group and
//! session, start time, user and systemd unit.
//!
//! [`super::owners`] finds *one* fd per socket and stops as soon as every wanted
//! socket has one. A restart's outcome needs *all* of them, so a scan looks at every
//! fd of every process for the listening sockets' inodes: in the kernel, by the BPF
//! fd iterator ([`super::fdscan`], tens of nanoseconds per fd), where it loads, else
//! by reading every fd link (some 4 µs per fd). Holders found by a complete scan are
//! kept and re-checked each call with one `readlinkat` per held fd and one `stat`
//! read per holder; a
//! socket is scanned for again when it is new, when one of its holders went away
//! or changed (the moment a master dies is when its workers matter), and at the
//! latest after [`HOLDERS_TTL`] (a process handed the fd over a unix socket is
//! found then). In the agent a scan may take several polls ([`HolderScanner::slice`]);
//! until it ends, a socket's holders are the ones still confirmed, marked
//! incomplete.
//!
//! Without CAP_SYS_PTRACE the kernel refuses other users' fd tables, and the
//! holders are incomplete (a restart is then "cannot tell" where they decide).
//! With it, a table still refused belongs to a process hidden on purpose (a
//! hardened init, an LSM rule): it is taken to hold none of the sockets, since
//! nothing about it can be read; the owner capability metric reports refusals.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::fdlinks::{FdDir, FdLinks, Link};
use super::fdscan::FdScan;
use crate::model::{Holder, Holders};
use crate::procstat::ProcStat;

/// How long the holders found by a complete scan are trusted without a new scan
/// (each one is still re-checked at every call).
pub const HOLDERS_TTL: Duration = Duration::from_secs(300);

/// One fd of one process that refers to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FdAt {
    pid: u32,
    fd: i32,
    start: u64,
}

/// What a complete scan found for one inode.
#[derive(Debug, Clone)]
struct Known {
    fds: Vec<FdAt>,
    at: Instant,
    /// No fd table was refused.
    complete: bool,
    /// The round it was last asked for in.
    used: u64,
}

/// One holder process as one call read it.
struct Seen {
    dir: Option<FdDir>,
    stat: Option<ProcStat>,
}

/// A scan in progress (resumed at the next call when it ran out of time).
#[derive(Debug)]
struct Scan {
    /// Pids not read yet (popped from the end).
    pids: Vec<u32>,
    /// A process whose fds were read in part, open where it stopped.
    current: Option<FdLinks>,
    targets: HashSet<u64>,
    found: HashMap<u64, Vec<FdAt>>,
    refused: bool,
    /// Some target is new or lost a holder: the scan takes whole slices. A pass that
    /// only refreshes holders older than [`HOLDERS_TTL`] takes a tenth
    /// ([`REFRESH_SHARE`]): at a million fds a pass is some 1.5 s of `readlink`s, and
    /// it repeats every [`HOLDERS_TTL`].
    urgent: bool,
}

/// The share of a slice a refresh-only scan takes (see [`Scan::urgent`]).
const REFRESH_SHARE: u32 = 10;

/// The effective uid of a `/proc/PID/status` text.
pub fn parse_euid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_ascii_whitespace().nth(2)?.parse().ok()
}

/// The systemd unit of a `/proc/PID/cgroup` text and its cgroup path (up to and
/// including the unit's directory): the deepest `.service`, else `.scope`.
pub fn unit_cgroup(text: &str) -> Option<(String, String)> {
    let mut scope = None;
    for path in super::owners::cgroup_paths(text) {
        let comps: Vec<&str> = path.split('/').collect();
        for i in (0..comps.len()).rev() {
            let c = comps[i];
            let whole = || comps[..=i].join("/");
            if c.ends_with(".service") {
                return Some((c.to_string(), whole()));
            }
            if c.ends_with(".scope") && scope.is_none() {
                scope = Some((c.to_string(), whole()));
            }
        }
    }
    scope
}

fn socket_inode(link: &Path) -> Option<u64> {
    super::owners::socket_inode(link)
}

fn proc_file(dir: &Path, name: &str) -> Option<String> {
    crate::fsread::read_to_string(
        &dir.join(name),
        crate::fsread::Symlinks::Follow,
        crate::fsread::PROC_FILE_MAX,
    )
    .ok()
}

/// Finds and re-checks the holders of listening sockets; keeps what complete scans
/// found between calls.
pub struct HolderScanner {
    procfs: PathBuf,
    known: HashMap<u64, Known>,
    scan: Option<Scan>,
    /// Time one call may spend scanning; `None` scans to the end (one-shot commands).
    pub slice: Option<Duration>,
    /// This process: its own duplicates (flag probes) are not holders.
    own_pid: u32,
    /// Whether a refused fd table leaves the holders unknown: without
    /// CAP_SYS_PTRACE most tables are refused; with it, a table that is still
    /// refused belongs to a process hidden on purpose (a hardened init, an LSM
    /// rule), which is taken to hold none of the sockets (see the module docs).
    refusal_unknown: bool,
    /// Pids the last complete scan (or sweep) covered: a process not among them is
    /// new, and if its parent holds a socket it may have inherited it.
    seen: HashSet<u32>,
    /// One round is one poll of every namespace (the owner resolver's rounds).
    round: u64,
    /// The BPF fd scanner, which makes a scan one pass in the kernel; `None` until
    /// the first scan tries it, `Some(None)` where it cannot be used.
    fast: Option<Option<FdScan>>,
}

/// Open files (the first field of `/proc/sys/fs/file-nr`) below which a one-shot
/// command reads fd links rather than load the fd iterator: loading it (the kernel's
/// BTF) takes some 70 ms, about what reading 20,000 links does.
const ONE_SHOT_MIN_FILES: u64 = 20_000;

/// Whether to load the BPF fd iterator: always for the agent, whose scans repeat;
/// for a one-shot command only where the system has enough open files to repay its
/// load. Pure.
fn worth_loading(one_shot: bool, open_files: Option<u64>) -> bool {
    !one_shot || open_files.is_some_and(|n| n >= ONE_SHOT_MIN_FILES)
}

/// Whether this process has CAP_SYS_PTRACE in its effective set.
fn can_ptrace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            let hex = t
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 19) != 0)
}

impl HolderScanner {
    pub fn new(procfs: &Path, slice: Option<Duration>) -> Self {
        HolderScanner {
            procfs: procfs.to_path_buf(),
            known: HashMap::new(),
            scan: None,
            slice,
            own_pid: std::process::id(),
            refusal_unknown: !can_ptrace(),
            seen: HashSet::new(),
            round: 0,
            fast: None,
        }
    }

    /// A scanner that reads `/proc` fd links only, never the BPF fd iterator (to
    /// compare the two).
    pub fn without_fd_iterator(mut self) -> Self {
        self.fast = Some(None);
        self
    }

    /// Whether scans run in the kernel ([`super::fdscan`]); tried at the first call.
    pub fn uses_fd_iterator(&mut self) -> bool {
        self.fast_scanner().is_some()
    }

    fn fast_scanner(&mut self) -> Option<&mut FdScan> {
        if self.fast.is_none() {
            // Without CAP_SYS_PTRACE the links of others' processes cannot be read, so
            // the holders the kernel names could not be re-checked at each call: the
            // link scan, whose refusals mark holders incomplete, stays in charge.
            let open_files = proc_file(&self.procfs, "sys/fs/file-nr")
                .and_then(|t| t.split_ascii_whitespace().next()?.parse().ok());
            let opened = if !worth_loading(self.slice.is_none(), open_files) {
                tracing::debug!(
                    open_files,
                    "holder scans read /proc fd links (too few open files to repay loading the fd iterator)"
                );
                None
            } else if self.refusal_unknown {
                tracing::debug!("holder scans read /proc fd links (no CAP_SYS_PTRACE)");
                None
            } else if !super::fdscan::usable(&self.procfs) {
                tracing::info!(
                    procfs = %self.procfs.display(),
                    "holder scans read /proc fd links: this process or --path.procfs is \
                     not in the initial pid namespace, whose process ids the fd iterator reports"
                );
                None
            } else {
                match FdScan::open() {
                    Ok(f) => {
                        tracing::debug!("holder scans run in the kernel (BPF task_file iterator)");
                        Some(f)
                    }
                    Err(e) => {
                        tracing::info!(
                            error = %e,
                            "holder scans read /proc fd links, some 4 µs of CPU per fd, \
                             instead of the BPF fd iterator"
                        );
                        None
                    }
                }
            };
            self.fast = Some(opened);
        }
        self.fast.as_mut().and_then(Option::as_mut)
    }

    /// A whole scan for `targets` by the BPF fd scanner; `None` when it is not in use,
    /// `targets` outgrow its map (the link scan does this one), or it failed (then it is
    /// not tried again, and the link scan takes over). Each fd
    /// it names is confirmed with the link the link scan would have read, so both
    /// scans find the same holders: a process whose links cannot be read (hidden on
    /// purpose, see the module docs) holds none.
    fn scan_in_kernel(&mut self, targets: HashSet<u64>) -> Option<Scan> {
        let pids = self.list_pids()?;
        let fits = targets.len() <= super::records::FDSCAN_MAX_WANTED;
        let recs = match self.fast_scanner().filter(|_| fits)?.scan(&targets) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the BPF fd scan failed; holder scans read /proc fd links from now on");
                self.fast = Some(None);
                return None;
            }
        };
        let mut found: HashMap<u64, Vec<FdAt>> = targets.iter().map(|i| (*i, Vec::new())).collect();
        let mut starts: HashMap<u32, Option<u64>> = HashMap::new();
        for r in recs {
            let Ok(fd) = i32::try_from(r.fd) else {
                continue;
            };
            if r.tgid == self.own_pid {
                continue;
            }
            let link = self
                .procfs
                .join(r.tgid.to_string())
                .join("fd")
                .join(fd.to_string());
            if fs::read_link(link).ok().as_deref().and_then(socket_inode) != Some(r.inode) {
                continue;
            }
            let Some(start) = *starts
                .entry(r.tgid)
                .or_insert_with(|| self.start_of(r.tgid))
            else {
                continue;
            };
            let f = FdAt {
                pid: r.tgid,
                fd,
                start,
            };
            let list = found.entry(r.inode).or_default();
            if !list.contains(&f) {
                list.push(f);
            }
        }
        self.seen = pids.into_iter().collect();
        Some(Scan {
            pids: Vec::new(),
            current: None,
            targets,
            found,
            refused: false,
            urgent: false,
        })
    }

    /// The process ids `/proc` lists now.
    fn list_pids(&self) -> Option<Vec<u32>> {
        let mut pids: Vec<u32> = fs::read_dir(&self.procfs)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        pids.sort_unstable();
        Some(pids)
    }

    /// Starts a new round: forgets the sockets no call of the last round asked for
    /// (namespaces share one scanner, each asks for its own sockets).
    pub fn next_round(&mut self) {
        let last = self.round;
        self.known.retain(|_, k| k.used >= last);
        self.round += 1;
    }

    fn start_of(&self, pid: u32) -> Option<u64> {
        self.stat_of(pid).map(|p| p.start_time)
    }

    fn stat_of(&self, pid: u32) -> Option<ProcStat> {
        crate::procstat::parse(&proc_file(&self.procfs.join(pid.to_string()), "stat")?)
    }

    /// Whether `f` still holds `inode` and its process is the one seen then. `seen`
    /// keeps each pid's open fd directory and `stat` for one call: a daemon holds many
    /// listeners, and neither need be read once per socket.
    fn still_holds(&self, f: &FdAt, inode: u64, seen: &mut HashMap<u32, Seen>) -> bool {
        let s = seen.entry(f.pid).or_insert_with(|| Seen {
            dir: FdDir::open(&self.procfs, f.pid).ok(),
            stat: self.stat_of(f.pid),
        });
        s.stat.as_ref().map(|p| p.start_time) == Some(f.start)
            && s.dir.as_ref().and_then(|d| d.link(f.fd).ok()) == Some(Link::Socket(inode))
    }

    /// The holders of each inode in `inodes`, with `user` naming uids.
    pub fn holders(
        &mut self,
        inodes: &HashSet<u64>,
        user: &dyn Fn(u32) -> String,
    ) -> HashMap<u64, Holders> {
        let mut fds: HashMap<u64, (Vec<FdAt>, bool)> = HashMap::new();
        let mut rescan: HashSet<u64> = HashSet::new();
        let mut seen: HashMap<u32, Seen> = HashMap::new();
        let mut urgent = false;
        for &inode in inodes.iter().filter(|i| **i != 0) {
            match self.known.get(&inode) {
                Some(k) => {
                    let valid: Vec<FdAt> = k
                        .fds
                        .iter()
                        .filter(|f| self.still_holds(f, inode, &mut seen))
                        .copied()
                        .collect();
                    let intact = valid.len() == k.fds.len();
                    if !intact {
                        urgent = true;
                    }
                    let fresh = intact && k.at.elapsed() < HOLDERS_TTL;
                    if !fresh {
                        rescan.insert(inode);
                    }
                    fds.insert(inode, (valid, fresh && k.complete));
                }
                None => {
                    urgent = true;
                    rescan.insert(inode);
                    fds.insert(inode, (Vec::new(), false));
                }
            }
        }
        let round = self.round;
        for i in inodes {
            if let Some(k) = self.known.get_mut(i) {
                k.used = round;
            }
        }
        if !rescan.is_empty() || self.scan.is_some() {
            if let Some(done) = self.scan_for(&rescan, urgent) {
                let now = Instant::now();
                // Every target of the scan is known now, also those another
                // namespace asked for.
                for (inode, found) in done.found {
                    self.known.insert(
                        inode,
                        Known {
                            fds: found.clone(),
                            at: now,
                            complete: !done.refused,
                            used: round,
                        },
                    );
                    if inodes.contains(&inode) {
                        fds.insert(inode, (found, !done.refused));
                    }
                }
            }
        }
        if rescan.is_empty() && self.scan.is_none() {
            self.sweep_new_children(&mut fds);
        }
        let mut by_pid: HashMap<u32, Option<Holder>> = HashMap::new();
        fds.into_iter()
            .map(|(inode, (list, complete))| {
                let mut holders: Vec<Holder> = Vec::new();
                for f in list {
                    if let Some(h) = by_pid
                        .entry(f.pid)
                        .or_insert_with(|| {
                            let stat = seen.remove(&f.pid).and_then(|s| s.stat);
                            self.holder(f.pid, stat, user)
                        })
                        .as_ref()
                    {
                        if h.start_time == f.start && !holders.iter().any(|x| x.pid == h.pid) {
                            holders.push(h.clone());
                        }
                    }
                }
                (
                    inode,
                    Holders {
                        list: holders,
                        complete,
                    },
                )
            })
            .collect()
    }

    /// Between full scans, a fork is the usual way a new holder appears (a forking
    /// server's child, a new worker): each process started since the last look
    /// whose parent holds (or descends from a holder of) a socket gets its fds read.
    fn sweep_new_children(&mut self, fds: &mut HashMap<u64, (Vec<FdAt>, bool)>) {
        if self.seen.is_empty() {
            return;
        }
        let Ok(dir) = fs::read_dir(&self.procfs) else {
            return;
        };
        let now: HashSet<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        let mut new: Vec<u32> = now.difference(&self.seen).copied().collect();
        new.sort_unstable();
        let mut parents: HashSet<u32> = fds
            .values()
            .flat_map(|(l, _)| l.iter().map(|f| f.pid))
            .collect();
        for pid in new {
            if pid == self.own_pid {
                continue;
            }
            let dir = self.procfs.join(pid.to_string());
            let Some(crate::procstat::ProcStat {
                ppid,
                start_time: start,
                ..
            }) = proc_file(&dir, "stat").and_then(|t| crate::procstat::parse(&t))
            else {
                continue;
            };
            if !parents.contains(&ppid) {
                continue;
            }
            parents.insert(pid);
            let Ok(entries) = fs::read_dir(dir.join("fd")) else {
                continue;
            };
            for e in entries.flatten() {
                let Some(inode) = fs::read_link(e.path())
                    .ok()
                    .as_deref()
                    .and_then(socket_inode)
                else {
                    continue;
                };
                let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if let Some((list, _)) = fds.get_mut(&inode) {
                    let f = FdAt { pid, fd, start };
                    if !list.contains(&f) {
                        list.push(f);
                        if let Some(k) = self.known.get_mut(&inode) {
                            k.fds.push(f);
                        }
                    }
                }
            }
        }
        self.seen = now;
    }

    /// Runs (or resumes) a scan for `wanted` (a new target restarts it); the
    /// finished scan when it reached its end.
    fn scan_for(&mut self, wanted: &HashSet<u64>, urgent: bool) -> Option<Scan> {
        let restart = match &self.scan {
            None => true,
            Some(s) => !wanted.is_subset(&s.targets),
        };
        if restart {
            let mut targets: HashSet<u64> = wanted.clone();
            // A scan restarted for a new socket keeps looking for the old ones
            // (another namespace's), so that alternating callers still finish one.
            if let Some(s) = &self.scan {
                targets.extend(s.targets.iter().copied());
            }
            if let Some(done) = self.scan_in_kernel(targets.clone()) {
                self.scan = None;
                return Some(done);
            }
            let pids = self.list_pids()?;
            self.seen = pids.iter().copied().collect();
            self.scan = Some(Scan {
                pids,
                current: None,
                found: targets.iter().map(|i| (*i, Vec::new())).collect(),
                targets,
                refused: false,
                urgent,
            });
        }
        if let Some(s) = self.scan.as_mut() {
            s.urgent |= urgent;
        }
        let share = match &self.scan {
            Some(s) if !s.urgent => REFRESH_SHARE,
            _ => 1,
        };
        let deadline = self
            .slice
            .and_then(|d| Instant::now().checked_add(d / share));
        let procfs = self.procfs.clone();
        let own = self.own_pid;
        let mut scan = self.scan.take()?;
        loop {
            let mut links = match scan.current.take() {
                Some(c) => c,
                None => match scan.pids.pop() {
                    Some(pid) if pid == own => continue,
                    Some(pid) => match FdLinks::open(&procfs, pid) {
                        Ok(l) => l,
                        Err(e) => {
                            if e.kind() == io::ErrorKind::PermissionDenied && self.refusal_unknown {
                                scan.refused = true;
                            }
                            continue;
                        }
                    },
                    None => return Some(scan),
                },
            };
            let pid = links.pid();
            let dir = procfs.join(pid.to_string());
            let mut start: Option<Option<u64>> = None;
            let mut read = 0usize;
            let mut out_of_time = false;
            while let Some(r) = links.next_link() {
                read += 1;
                match r {
                    Ok((fd, Link::Socket(inode))) if scan.targets.contains(&inode) => {
                        let st = *start.get_or_insert_with(|| {
                            proc_file(&dir, "stat")
                                .and_then(|t| crate::procstat::parse(&t).map(|p| p.start_time))
                        });
                        if let Some(st) = st {
                            scan.found
                                .entry(inode)
                                .or_default()
                                .push(FdAt { pid, fd, start: st });
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        if err.kind() == io::ErrorKind::PermissionDenied && self.refusal_unknown {
                            scan.refused = true;
                        }
                    }
                }
                if read % 256 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                    out_of_time = true;
                    break;
                }
            }
            if out_of_time {
                scan.current = Some(links);
            }
            if out_of_time || deadline.is_some_and(|d| Instant::now() >= d) {
                self.scan = Some(scan);
                return None;
            }
        }
    }

    /// What `/proc/PID` says of a holder (its `stat` as read this call, if it was);
    /// `None` when it exited meanwhile.
    fn holder(
        &self,
        pid: u32,
        stat: Option<ProcStat>,
        user: &dyn Fn(u32) -> String,
    ) -> Option<Holder> {
        let dir = self.procfs.join(pid.to_string());
        let ProcStat {
            comm: process,
            ppid,
            pgid,
            sid,
            start_time,
        } = match stat {
            Some(s) => s,
            None => self.stat_of(pid)?,
        };
        let uid = parse_euid(&proc_file(&dir, "status")?)?;
        let (unit, unit_cgroup) = match proc_file(&dir, "cgroup").and_then(|t| unit_cgroup(&t)) {
            Some((u, p)) => (Some(u), Some(p)),
            None => (None, None),
        };
        Some(Holder {
            pid,
            ppid,
            pgid,
            sid,
            process,
            uid,
            user: user(uid),
            start_time,
            unit,
            unit_cgroup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_iterator_is_loaded_where_it_repays_its_load() {
        let cases = [
            (false, None, true),
            (false, Some(10), true),
            (true, None, false),
            (true, Some(ONE_SHOT_MIN_FILES - 1), false),
            (true, Some(ONE_SHOT_MIN_FILES), true),
        ];
        for (one_shot, files, want) in cases {
            assert_eq!(worth_loading(one_shot, files), want, "{one_shot} {files:?}");
        }
    }

    #[test]
    fn euid_is_the_second_uid() {
        assert_eq!(parse_euid("Name:\tx\nUid:\t1000\t33\t33\t33\n"), Some(33));
        assert_eq!(parse_euid("Uid:\n"), None);
    }

    #[test]
    fn unit_and_its_cgroup() {
        let cases: [(&str, Option<(&str, &str)>); 5] = [
            (
                "0::/system.slice/nginx.service\n",
                Some(("nginx.service", "/system.slice/nginx.service")),
            ),
            (
                "0::/bw.slice/web.service/workers\n",
                Some(("web.service", "/bw.slice/web.service")),
            ),
            (
                "0::/user.slice/user-0.slice/session-1.scope\n",
                Some((
                    "session-1.scope",
                    "/user.slice/user-0.slice/session-1.scope",
                )),
            ),
            ("0::/\n", None),
            ("garbage", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                unit_cgroup(text),
                want.map(|(a, b)| (a.to_string(), b.to_string())),
                "{text}"
            );
        }
    }
}
