//! Gathers what [`crate::unixbind`] judges a unix address by: what is at a path
//! (`lstat` under `--path.rootfs`, the directory's permissions), the unix sockets of
//! every network namespace (sock_diag), and who holds them (the owner scan).
//!
//! [`inspect_unix_path`] is the call for anyone about to remove a socket file: its
//! [`UnixPathReport::judgement`] says `safe_to_remove` only for a socket file that no
//! socket of any network namespace is bound to, with every namespace read and the
//! file unchanged from the first look to the last.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::model::{
    Owner, Status, UnixName, UnixService, UnixSocket, UnixState, UnixType, UnixView, VfsId,
};
use crate::netns;
use crate::source::netlink::NetlinkError;
use crate::source::owners::OwnerResolver;
use crate::source::unix as unix_diag;
use crate::unixbind::{self, FileKind, PathFacts, UnixJudgement, UnixTarget};

/// Where to look.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// `--path.procfs`.
    pub procfs: PathBuf,
    /// `--path.rootfs`: paths are resolved under it, as if it were `/`.
    pub rootfs: PathBuf,
    /// Where `ip netns` keeps named namespaces.
    pub run_netns: PathBuf,
}

impl ProbeOptions {
    pub fn new(procfs: &Path, rootfs: &Path) -> ProbeOptions {
        ProbeOptions {
            procfs: procfs.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            run_netns: PathBuf::from("/run/netns"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("opening --path.rootfs {path}: {source}")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the unix sockets of this network namespace (sock_diag): {0}")]
    Diag(#[from] NetlinkError),
    #[error("{0} changed three times while it was read; try again")]
    Unsettled(String),
}

/// What bindwatch found about one unix address, with the judgement.
#[derive(Debug, Clone)]
pub struct UnixPathReport {
    pub target: UnixTarget,
    /// What was at the path (the same at the first and the last look); `None` for an
    /// abstract name. A caller about to `unlink()` a stale file compares its device
    /// and inode with a fresh `lstat()` right before, so that a file replaced since
    /// (a daemon that started and bound anew) is never removed.
    pub facts: Option<PathFacts>,
    pub judgement: UnixJudgement,
    /// Owners of the holders, by socket inode (a holder whose owner cannot be seen
    /// has no entry).
    pub owners: BTreeMap<u64, Owner>,
    /// The network namespace of each holder found outside bindwatch's own, by inode.
    pub holder_netns: BTreeMap<u64, String>,
    /// Network namespaces whose unix table was read (bindwatch's own included).
    pub netns_read: usize,
    /// Namespaces that could not be read, with why.
    pub netns_unread: Vec<String>,
}

/// What is at `path` (absolute), resolved under `rootfs` as its root (symlinks on the
/// way stay inside it; the last component is not followed, as `bind()` does not).
///
/// # Errors
/// Only when `rootfs` cannot be opened; everything about the path is a [`PathFacts`].
pub fn path_facts(rootfs: &Path, path: &Path) -> Result<PathFacts, ProbeError> {
    let (dir, cname) = match parent_and_name(rootfs, path)? {
        Ok(found) => found,
        Err(facts) => return Ok(facts),
    };
    let st = match stat_at(&dir, &cname) {
        Ok(st) => st,
        Err(e) => {
            return Ok(match e.raw_os_error() {
                Some(libc::ENOENT) => match dir_writable(&dir) {
                    Ok(()) => PathFacts::Absent,
                    Err(errno) => PathFacts::DirUnusable { errno },
                },
                errno => PathFacts::DirUnusable {
                    errno: errno.unwrap_or(libc::EIO),
                },
            })
        }
    };
    Ok(facts_of(&st))
}

/// The directory of `path` (absolute, resolved under `rootfs`) as an `O_PATH` fd, and
/// the last component; `Err(facts)` where there is no such pair (`/` itself, or a
/// directory that cannot be reached).
///
/// # Errors
/// Only when `rootfs` cannot be opened or the name holds a NUL byte.
fn parent_and_name(
    rootfs: &Path,
    path: &Path,
) -> Result<Result<(OwnedFd, CString), PathFacts>, ProbeError> {
    let root = open_path(None, rootfs, false).map_err(|source| ProbeError::Rootfs {
        path: rootfs.to_path_buf(),
        source,
    })?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        // "/" itself.
        _ => {
            return Ok(Err(PathFacts::Other {
                kind: FileKind::Directory,
            }))
        }
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = match open_path(Some(&root), parent, true) {
        Ok(d) => d,
        Err(e) => {
            return Ok(Err(PathFacts::DirUnusable {
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            }))
        }
    };
    let cname = CString::new(name.as_bytes()).map_err(|_| ProbeError::Rootfs {
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    Ok(Ok((dir, cname)))
}

/// `fstatat(dir, name)` without following a symlink.
fn stat_at(dir: &OwnedFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: zeroed `stat` is a valid out-buffer for fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: dir is an open fd, name NUL-terminated, st a valid out-pointer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Removes the socket file at `path` (under `rootfs`) only while it is still the very
/// file `expected` names (a socket file with that device and inode), as seen through
/// the same directory fd the removal uses: a symlink, another type, or a socket file
/// made since (a daemon that started and bound anew) is left alone. The last
/// component is never followed (`unlinkat` removes a name, not what it points at).
/// `Ok(false)` when the path no longer holds that file.
///
/// # Errors
/// When `rootfs` cannot be opened, or the kernel refuses the removal (EACCES, EROFS,
/// EBUSY ...), with its errno.
pub fn unlink_stale(rootfs: &Path, path: &Path, expected: &PathFacts) -> Result<bool, ProbeError> {
    let PathFacts::Socket { .. } = expected else {
        return Ok(false);
    };
    let (dir, cname) = match parent_and_name(rootfs, path)? {
        Ok(found) => found,
        Err(_) => return Ok(false),
    };
    match stat_at(&dir, &cname) {
        Ok(st) if facts_of(&st) == *expected => {}
        _ => return Ok(false),
    }
    // SAFETY: dir is an open fd (O_PATH is accepted as a dirfd), cname NUL-terminated.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), cname.as_ptr(), 0) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(false);
        }
        return Err(ProbeError::Rootfs {
            path: path.to_path_buf(),
            source: e,
        });
    }
    Ok(true)
}

/// What a `stat` of the path's last component says.
fn facts_of(st: &libc::stat) -> PathFacts {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => {
            return PathFacts::Socket {
                vfs: VfsId {
                    dev_major: libc::major(st.st_dev),
                    dev_minor: libc::minor(st.st_dev),
                    // UNIX_DIAG_VFS carries only the low 32 bits.
                    ino32: st.st_ino as u32,
                },
            };
        }
        libc::S_IFREG => FileKind::Regular,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFCHR => FileKind::CharDevice,
        _ => FileKind::BlockDevice,
    };
    PathFacts::Other { kind }
}

/// Opens `path` as an `O_PATH` fd; relative to `root` with `RESOLVE_IN_ROOT` (every
/// `..` and absolute symlink stays under it) when given.
fn open_path(root: Option<&OwnedFd>, path: &Path, dir: bool) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = libc::O_PATH | libc::O_CLOEXEC | if dir { libc::O_DIRECTORY } else { 0 };
    for _ in 0..8 {
        let fd = match root {
            None => {
                // SAFETY: c is NUL-terminated; the fd is owned below.
                unsafe { libc::open(c.as_ptr(), flags | libc::O_DIRECTORY) }
            }
            Some(root) => {
                // SAFETY: zeroed open_how is valid (all fields integers).
                let mut how: libc::open_how = unsafe { std::mem::zeroed() };
                how.flags = flags as u64;
                how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
                // SAFETY: openat2 with a valid dirfd, a NUL-terminated path and an
                // open_how of the size given.
                unsafe {
                    libc::syscall(
                        libc::SYS_openat2,
                        root.as_raw_fd(),
                        c.as_ptr(),
                        &how as *const libc::open_how,
                        std::mem::size_of::<libc::open_how>(),
                    ) as libc::c_int
                }
            }
        };
        if fd >= 0 {
            // SAFETY: a fresh fd nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        // openat2 asks for a retry when a rename raced with RESOLVE_IN_ROOT.
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// Could this process create an entry in `dir`: `faccessat2(W_OK|X_OK)` with the
/// effective ids, on the fd itself. A kernel without faccessat2 is given the benefit
/// (the bind itself will say).
fn dir_writable(dir: &OwnedFd) -> Result<(), i32> {
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH on an open fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            dir.as_raw_fd(),
            c"".as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        return Ok(());
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(e @ (libc::EACCES | libc::EROFS | libc::EPERM)) => Err(e),
        _ => Ok(()),
    }
}

/// The unix sockets of every network namespace but bindwatch's own, each dumped from
/// a thread that entered it (the caller's thread never changes namespace). Returns
/// (the sockets `keep` accepts, with their namespace name; namespaces read;
/// namespaces not read, with why).
pub fn other_netns_sockets(
    opts: &ProbeOptions,
    keep: &(dyn Fn(&UnixSocket) -> bool + Sync),
) -> (Vec<(UnixSocket, String)>, usize, Vec<String>) {
    let own = netns::own_inode(&opts.procfs);
    let all = every_netns(opts);
    let others: Vec<netns::Netns> = all.into_iter().filter(|n| Some(n.inode) != own).collect();
    if others.is_empty() {
        return (Vec::new(), 0, Vec::new());
    }
    let procfs = opts.procfs.clone();
    let joined = std::thread::scope(|s| {
        s.spawn(|| {
            let mut sockets = Vec::new();
            let mut read = 0;
            let mut unread = Vec::new();
            for n in &others {
                let got = netns::enter(&n.path, &procfs)
                    .map_err(|e| e.to_string())
                    .and_then(|_entered| unix_diag::dump_all().map_err(|e| e.to_string()));
                match got {
                    Ok(v) => {
                        read += 1;
                        sockets.extend(
                            v.into_iter()
                                .filter(|s| keep(s))
                                .map(|s| (s, n.name.clone())),
                        );
                    }
                    // A namespace whose last process exited meanwhile holds nothing.
                    Err(_) if !n.path.exists() => {}
                    Err(e) => unread.push(format!("{}: {e}", n.name)),
                }
            }
            (sockets, read, unread)
        })
        .join()
    });
    joined.unwrap_or_else(|_| {
        (
            Vec::new(),
            0,
            vec!["the namespace reader thread panicked".into()],
        )
    })
}

/// Every network namespace [`netns::discover`] finds (named ones, those of
/// processes), and those only a thread has entered (`/proc/PID/task/TID/ns/net`):
/// a socket file may be bound from any of them. A namespace kept alive by nothing
/// but a socket or an open fd has no path to enter and is not found.
fn every_netns(opts: &ProbeOptions) -> Vec<netns::Netns> {
    use std::os::unix::fs::MetadataExt;
    let mut all = netns::discover(&opts.procfs, &opts.run_netns);
    let mut seen: HashSet<u64> = all.iter().map(|n| n.inode).collect();
    let Ok(procs) = std::fs::read_dir(&opts.procfs) else {
        return all;
    };
    for p in procs.flatten() {
        if !p.file_name().as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("ns/net");
            if let Ok(m) = std::fs::metadata(&path) {
                if seen.insert(m.ino()) {
                    all.push(netns::Netns {
                        inode: m.ino(),
                        name: format!("netns:[{}]", m.ino()),
                        path,
                    });
                }
            }
        }
    }
    all
}

/// Stats `path`, reads the unix sockets (bindwatch's own namespace, then every other
/// one when no holder was found there), stats again, and judges. A path that changed
/// between the two looks is read again, up to three times.
///
/// # Errors
/// `--path.rootfs` cannot be opened, or the path kept changing.
pub fn inspect_unix_path(path: &Path, opts: &ProbeOptions) -> Result<UnixPathReport, ProbeError> {
    let mut report = judge_path(path, opts, None)?;
    let mut r = OwnerResolver::with_rootfs(&opts.procfs, &opts.rootfs);
    r.scan_slice = None;
    report.owners = owners_with(&mut r, &report.judgement.holders);
    Ok(report)
}

/// [`inspect_unix_path`] without the owners. With `own`, a dump of bindwatch's
/// namespace taken just before, that dump decides when it shows a holder of the
/// file; any other answer is made from fresh dumps (the file may be newer than `own`).
fn judge_path(
    path: &Path,
    opts: &ProbeOptions,
    own: Option<&[UnixSocket]>,
) -> Result<UnixPathReport, ProbeError> {
    if let Some(own) = own {
        let facts = path_facts(&opts.rootfs, path)?;
        if let PathFacts::Socket { vfs } = facts {
            if own.iter().any(|s| s.vfs == Some(vfs)) {
                return Ok(report(
                    UnixTarget::Path(path.to_path_buf()),
                    Some(facts),
                    unixbind::judge_unix_path(&facts, own, true),
                    BTreeMap::new(),
                    1,
                    Vec::new(),
                ));
            }
        }
    }
    for _ in 0..3 {
        let before = path_facts(&opts.rootfs, path)?;
        let mut netns_read = 0;
        let mut netns_unread = Vec::new();
        let mut holder_netns = BTreeMap::new();
        let mut sockets = Vec::new();
        if let PathFacts::Socket { vfs } = before {
            // Bindwatch's own table unreadable: the file still blocks the bind; only
            // held or stale is left open (unless another namespace shows a holder).
            match unix_diag::dump_all() {
                Ok(v) => {
                    sockets = v;
                    netns_read = 1;
                }
                Err(e) => netns_unread.push(format!("bindwatch's own: {e}")),
            }
            if !sockets.iter().any(|s| s.vfs == Some(vfs)) {
                let (others, read, unread) =
                    other_netns_sockets(opts, &|s: &UnixSocket| s.vfs == Some(vfs));
                netns_read += read;
                netns_unread.extend(unread);
                for (s, name) in others {
                    if s.vfs == Some(vfs) {
                        holder_netns.insert(s.inode, name);
                        sockets.push(s);
                    }
                }
            }
        }
        if path_facts(&opts.rootfs, path)? != before {
            continue;
        }
        let judgement = unixbind::judge_unix_path(&before, &sockets, netns_unread.is_empty());
        return Ok(report(
            UnixTarget::Path(path.to_path_buf()),
            Some(before),
            judgement,
            holder_netns,
            netns_read,
            netns_unread,
        ));
    }
    Err(ProbeError::Unsettled(path.display().to_string()))
}

fn report(
    target: UnixTarget,
    facts: Option<PathFacts>,
    judgement: UnixJudgement,
    holder_netns: BTreeMap<u64, String>,
    netns_read: usize,
    netns_unread: Vec<String>,
) -> UnixPathReport {
    UnixPathReport {
        target,
        facts,
        judgement,
        owners: BTreeMap::new(),
        holder_netns,
        netns_read,
        netns_unread,
    }
}

/// One poll of the agent's unix view: every unix socket of bindwatch's namespace
/// counted by type and state, and each watched unix service judged (paths with the
/// rules of [`inspect_unix_path`], abstract names in this namespace). Owners come
/// from `resolver` (the agent's, with its cache). A table that cannot be read leaves
/// the counts out and says so in each service's detail.
pub fn poll_watched(
    services: &[UnixService],
    opts: &ProbeOptions,
    resolver: &mut OwnerResolver,
) -> UnixView {
    // Without watched services only counts are needed: the cheapest dump.
    let show = if services.is_empty() {
        0
    } else {
        unix_diag::SHOW_ALL
    };
    let own = match unix_diag::dump_all_show(show) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "reading the unix socket table failed");
            None
        }
    };
    let counts = own.as_deref().map(count);
    let mut watched = Vec::with_capacity(services.len());
    for svc in services {
        let judged = match &svc.address {
            UnixName::Path(p) => judge_path(Path::new(OsStr::from_bytes(p)), opts, own.as_deref()),
            UnixName::Abstract(n) => match &own {
                Some(v) => Ok(report(
                    UnixTarget::Abstract(n.clone()),
                    None,
                    unixbind::judge_unix_abstract(n, svc.kind, v),
                    BTreeMap::new(),
                    1,
                    Vec::new(),
                )),
                None => Err(ProbeError::Unsettled(svc.address.to_string())),
            },
        };
        let status = match judged {
            Ok(r) => {
                let owners = owners_with(resolver, &r.judgement.holders);
                crate::unixwatch::service_status(svc, &r.judgement, &owners)
            }
            Err(e) => {
                tracing::warn!(service = %svc.name, error = %e, "judging a watched unix service failed");
                let j = unixbind::judge_unix_path(&PathFacts::Absent, &[], false);
                let mut st = crate::unixwatch::service_status(svc, &j, &BTreeMap::new());
                st.detail = format!("cannot tell: {e}");
                st.status = Status::Missing;
                st
            }
        };
        watched.push(status);
    }
    UnixView { counts, watched }
}

/// Judges a bind of a `kind` socket on the abstract name `name` in bindwatch's own network namespace (the one a
/// bind from here would use; `--netns` moves bindwatch first).
///
/// # Errors
/// The namespace's unix sockets cannot be read.
pub fn inspect_unix_abstract(
    name: &[u8],
    kind: UnixType,
    opts: &ProbeOptions,
) -> Result<UnixPathReport, ProbeError> {
    let sockets = unix_diag::dump_all()?;
    let judgement = unixbind::judge_unix_abstract(name, kind, &sockets);
    let both: Vec<UnixSocket> = judgement
        .holders
        .iter()
        .chain(&judgement.other_types)
        .cloned()
        .collect();
    let mut r = report(
        UnixTarget::Abstract(name.to_vec()),
        None,
        judgement,
        BTreeMap::new(),
        1,
        Vec::new(),
    );
    r.owners = owners_of(opts, &both);
    Ok(r)
}

/// [`inspect_unix_path`] or [`inspect_unix_abstract`] (the only one `kind` matters to).
///
/// # Errors
/// As those.
pub fn inspect(
    target: &UnixTarget,
    kind: UnixType,
    opts: &ProbeOptions,
) -> Result<UnixPathReport, ProbeError> {
    match target {
        UnixTarget::Path(p) => inspect_unix_path(p, opts),
        UnixTarget::Abstract(n) => inspect_unix_abstract(n, kind, opts),
    }
}

/// Who holds each socket, by the owner scan of `/proc/PID/fd`.
pub fn owners_of(opts: &ProbeOptions, sockets: &[UnixSocket]) -> BTreeMap<u64, Owner> {
    if sockets.is_empty() {
        return BTreeMap::new();
    }
    let mut r = OwnerResolver::with_rootfs(&opts.procfs, &opts.rootfs);
    r.scan_slice = None;
    owners_with(&mut r, sockets)
}

/// [`owners_of`] with a given resolver (the agent's, whose cache makes it cheap).
pub fn owners_with(r: &mut OwnerResolver, sockets: &[UnixSocket]) -> BTreeMap<u64, Owner> {
    let wanted: HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    let found: HashMap<u64, _> = r.resolve(&wanted);
    found
        .into_iter()
        .filter_map(|(inode, fd)| Some((inode, r.owner(fd.pid)?)))
        .collect()
}

/// The agent's unix step after a successful poll: [`poll_watched`] into the `unix`
/// view of the host snapshot in `last` (the one without a netns name, or `host`);
/// under `--netns all`, the unix socket counts of every other polled namespace
/// (`others`: name and path) into its snapshot, each dumped from a thread that
/// entered it. Watched services are judged once, in the host's view (a path's
/// holders are looked for in every namespace anyway; an abstract name in the
/// host's). Snapshots are read-only once published: one already shared (this poll
/// failed and `last` is the previous one) is left as it is.
pub fn fill_snapshots(
    opts: &ProbeOptions,
    resolver: &std::sync::Mutex<OwnerResolver>,
    services: &[UnixService],
    last: &mut [(Option<String>, std::sync::Arc<crate::model::Snapshot>)],
    others: &[netns::Netns],
) {
    let mut wanted: Vec<(usize, &netns::Netns)> = Vec::new();
    for (i, (name, snap)) in last.iter_mut().enumerate() {
        let Some(snap) = std::sync::Arc::get_mut(snap) else {
            continue;
        };
        match name.as_deref() {
            None | Some("host") => {
                let mut r = resolver.lock().unwrap_or_else(|p| p.into_inner());
                snap.unix = poll_watched(services, opts, &mut r);
            }
            Some(n) => {
                if let Some(ns) = others.iter().find(|ns| ns.name == n) {
                    wanted.push((i, ns));
                }
            }
        }
    }
    if wanted.is_empty() {
        return;
    }
    let procfs = opts.procfs.clone();
    let counted: Vec<(usize, Option<UnixCounts>)> = std::thread::scope(|s| {
        s.spawn(|| {
            wanted
                .iter()
                .map(|(i, ns)| {
                    let counts = netns::enter(&ns.path, &procfs)
                        .ok()
                        .and_then(|_inside| unix_diag::dump_all_show(0).ok())
                        .map(|v| count(&v));
                    (*i, counts)
                })
                .collect()
        })
        .join()
        .unwrap_or_default()
    });
    for (i, counts) in counted {
        if let Some(snap) = last
            .get_mut(i)
            .and_then(|(_, s)| std::sync::Arc::get_mut(s))
        {
            snap.unix.counts = counts;
        }
    }
}

type UnixCounts = BTreeMap<(UnixType, UnixState), u64>;

/// Every socket counted by (type, state), every combination present.
fn count(sockets: &[UnixSocket]) -> UnixCounts {
    let mut c: UnixCounts = UnixType::ALL
        .into_iter()
        .flat_map(|t| UnixState::ALL.into_iter().map(move |s| ((t, s), 0)))
        .collect();
    for s in sockets {
        *c.entry((s.kind, s.state)).or_default() += 1;
    }
    c
}
