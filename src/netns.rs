//! Network namespaces: discovery (`/proc/*/ns/net`, `/run/netns`), readable names,
//! and entering one from the calling thread with `setns`.
//!
//! Sockets belong to the namespace they were created in: a netlink sock_diag
//! socket opened inside a namespace dumps that namespace, and `/proc/thread-self/net`
//! shows the calling thread's. So each namespace gets its own collector, created
//! and polled while the poller thread is inside it ([`Entered`] brings it back).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::collect::{CollectOptions, Collector};
use crate::config::Service;
use crate::model::{Snapshot, SourceKind};
use crate::source::owners::OwnerResolver;
use std::sync::{Arc, Mutex};

/// `--netns`: which namespaces to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetnsMode {
    /// Only the namespace bindwatch runs in (the host's, for a host deployment).
    Host,
    /// Every network namespace on the node (containers, pods, `ip netns`).
    All,
}

/// A discovered namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub inode: u64,
    /// The `netns` label: `host`, the `/run/netns` name, `pod:UID`, `container:ID`,
    /// or `netns:[INODE]`.
    pub name: String,
    /// A path that opens the namespace (`/proc/PID/ns/net` or `/run/netns/NAME`).
    pub path: PathBuf,
}

/// A readable name from a process's cgroup file: the pod or the container.
pub fn name_from_cgroup(text: &str) -> Option<String> {
    for path in crate::source::owners::cgroup_paths(text) {
        for comp in path.split('/') {
            // kubepods.slice/kubepods-besteffort-pod<uid>.slice or kubepods/besteffort/pod<uid>
            if let Some(i) = comp.rfind("pod") {
                let rest = comp[i + 3..].trim_end_matches(".slice");
                if rest.len() >= 32
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_')
                {
                    return Some(format!("pod:{}", rest.replace('_', "-")));
                }
            }
            for prefix in ["docker-", "cri-containerd-", "crio-", "libpod-"] {
                if let Some(id) = comp
                    .strip_prefix(prefix)
                    .and_then(|c| c.strip_suffix(".scope"))
                {
                    if id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Some(format!("container:{}", &id[..12]));
                    }
                }
            }
        }
    }
    None
}

fn inode_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The namespace of the calling thread.
pub fn own_inode(procfs: &Path) -> Option<u64> {
    inode_of(&procfs.join("thread-self/ns/net")).or_else(|| inode_of(&procfs.join("self/ns/net")))
}

/// Every network namespace reachable through `procfs` and `run_netns`, deduplicated
/// by inode. Processes that exit during the walk are skipped.
pub fn discover(procfs: &Path, run_netns: &Path) -> Vec<Netns> {
    let own = own_inode(procfs);
    let mut found: BTreeMap<u64, Netns> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(run_netns) {
        for e in dir.flatten() {
            let path = e.path();
            if let (Some(ino), Some(name)) = (inode_of(&path), e.file_name().to_str()) {
                found.entry(ino).or_insert(Netns {
                    inode: ino,
                    name: name.to_string(),
                    path,
                });
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(procfs) {
        for e in dir.flatten() {
            if !e
                .file_name()
                .to_str()
                .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let path = e.path().join("ns/net");
            let Some(ino) = inode_of(&path) else { continue };
            if found.contains_key(&ino) {
                continue;
            }
            let name = if Some(ino) == own {
                "host".to_string()
            } else {
                crate::fsread::read_to_string(
                    &e.path().join("cgroup"),
                    crate::fsread::Symlinks::Follow,
                    crate::fsread::PROC_FILE_MAX,
                )
                .ok()
                .and_then(|t| name_from_cgroup(&t))
                .unwrap_or_else(|| format!("netns:[{ino}]"))
            };
            found.insert(
                ino,
                Netns {
                    inode: ino,
                    name,
                    path,
                },
            );
        }
    }
    if let Some(o) = own {
        // bindwatch's own namespace is always "host", even if /run/netns names it.
        if let Some(n) = found.get_mut(&o) {
            n.name = "host".to_string();
        }
    }
    // Two pods could share a readable name; keep labels unique.
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for n in found.values_mut() {
        let c = seen.entry(n.name.clone()).or_default();
        *c += 1;
        if *c > 1 {
            n.name = format!("{}#netns:[{}]", n.name, n.inode);
        }
    }
    found.into_values().collect()
}

/// Finds a namespace by `/run/netns` name, label, `netns:[INODE]`, or inode.
pub fn find(all: &[Netns], wanted: &str) -> Option<Netns> {
    all.iter()
        .find(|n| {
            n.name == wanted
                || n.inode.to_string() == wanted
                || format!("netns:[{}]", n.inode) == wanted
        })
        .cloned()
}

/// While alive, the calling thread is inside another namespace; dropping it returns.
pub struct Entered {
    home: File,
}

/// Moves the calling thread into the namespace at `path`.
///
/// # Errors
/// When the namespace is gone (ENOENT) or entering it is not permitted (EPERM).
pub fn enter(path: &Path, procfs: &Path) -> io::Result<Entered> {
    let home = File::open(procfs.join("thread-self/ns/net"))?;
    let target = File::open(path)?;
    setns(&target)?;
    Ok(Entered { home })
}

/// Moves the calling thread into the namespace at `path` for good (one-shot CLI).
///
/// # Errors
/// As [`enter`].
pub fn enter_for_good(path: &Path) -> io::Result<()> {
    // Non-blocking: a FIFO named by a user must fail in setns, not hang the open.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    setns(&f)
}

fn setns(f: &File) -> io::Result<()> {
    // SAFETY: setns on a valid fd; affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home) {
            // Staying in a foreign namespace would make every later poll wrong.
            tracing::error!(error = %e, "cannot return to bindwatch's own network namespace; aborting");
            std::process::abort();
        }
    }
}

/// One collector per network namespace, polled from the calling thread.
pub struct NetnsCollectors {
    opts: CollectOptions,
    run_netns: PathBuf,
    collectors: BTreeMap<u64, (Netns, Collector)>,
    owners: Arc<Mutex<OwnerResolver>>,
}

/// The outcome of polling every namespace.
pub struct NetnsPoll {
    pub snapshots: Vec<(String, Snapshot)>,
    pub durations: Vec<(String, f64)>,
    /// (namespace, the source its poll used: `None` when none could be opened, error).
    pub errors: Vec<(String, Option<SourceKind>, String)>,
}

impl NetnsCollectors {
    pub fn new(opts: CollectOptions, run_netns: &Path) -> Self {
        NetnsCollectors {
            owners: Arc::new(Mutex::new(OwnerResolver::with_rootfs(
                &opts.procfs,
                &opts.rootfs,
            ))),
            opts,
            run_netns: run_netns.to_path_buf(),
            collectors: BTreeMap::new(),
        }
    }

    pub fn options(&self) -> &CollectOptions {
        &self.opts
    }

    /// The namespaces polled last, with their names and paths.
    pub fn namespaces(&self) -> Vec<Netns> {
        self.collectors.values().map(|(n, _)| n.clone()).collect()
    }

    /// The owner resolver every namespace's collector shares.
    pub fn owner_resolver(&self) -> Arc<Mutex<OwnerResolver>> {
        Arc::clone(&self.owners)
    }

    /// Whether any namespace's collector found leftovers its memory cannot explain.
    pub fn wants_early_poll(&self) -> bool {
        self.collectors.values().any(|(_, c)| c.wants_early_poll())
    }

    /// Polls every namespace found now. A namespace that vanishes between discovery
    /// and entering is skipped quietly (its series disappear with it).
    pub fn poll(&mut self, services: &[Service]) -> NetnsPoll {
        let found = discover(&self.opts.procfs, &self.run_netns);
        let mut out = NetnsPoll {
            snapshots: Vec::new(),
            durations: Vec::new(),
            errors: Vec::new(),
        };
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_round();
        let live: std::collections::BTreeSet<u64> = found.iter().map(|n| n.inode).collect();
        self.collectors.retain(|ino, _| live.contains(ino));
        for ns in found {
            let start = std::time::Instant::now();
            let _inside = match enter(&ns.path, &self.opts.procfs) {
                Ok(g) => g,
                Err(e) => {
                    tracing::debug!(netns = %ns.name, error = %e, "namespace gone before it could be entered");
                    continue;
                }
            };
            if !self.collectors.contains_key(&ns.inode) {
                let mut opts = self.opts.clone();
                // /proc/net follows the process's main thread; this thread's view is thread-self.
                opts.thread_netns = true;
                match Collector::with_shared_owners(opts, self.owners.clone()) {
                    Ok(c) => {
                        self.collectors.insert(ns.inode, (ns.clone(), c));
                    }
                    Err(e) => {
                        out.errors.push((ns.name.clone(), None, e.to_string()));
                        continue;
                    }
                }
            }
            let Some((known, c)) = self.collectors.get_mut(&ns.inode) else {
                continue;
            };
            *known = ns.clone();
            // Watched services describe the host's daemons.
            let svcs = if ns.name == "host" { services } else { &[] };
            // The source before the poll: a failing bpf dump may switch it to netlink.
            let kind = c.table().kind();
            match c.poll(svcs, &[]) {
                Ok(snap) => {
                    out.durations
                        .push((ns.name.clone(), start.elapsed().as_secs_f64()));
                    out.snapshots.push((ns.name.clone(), snap));
                }
                Err(e) => out
                    .errors
                    .push((ns.name.clone(), Some(kind), e.to_string())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names() {
        let cases = [
            ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8f1d2c3b_4a5e_6f70_8192_a3b4c5d6e7f8.slice/cri-containerd-abc.scope\n",
             Some("pod:8f1d2c3b-4a5e-6f70-8192-a3b4c5d6e7f8")),
            ("12:pids:/kubepods/burstable/pod8f1d2c3b-4a5e-6f70-8192-a3b4c5d6e7f8/0123456789ab\n", Some("pod:8f1d2c3b-4a5e-6f70-8192-a3b4c5d6e7f8")),
            ("0::/system.slice/docker-0123456789abcdef0123.scope\n", Some("container:0123456789ab")),
            ("0::/system.slice/nginx.service\n", None),
            ("0::/\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(name_from_cgroup(text).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn discovers_own_namespace_as_host() {
        let all = discover(Path::new("/proc"), Path::new("/nonexistent"));
        let own = own_inode(Path::new("/proc")).unwrap();
        let host = all.iter().find(|n| n.inode == own).unwrap();
        assert_eq!(host.name, "host");
        assert_eq!(find(&all, "host").unwrap().inode, own);
        assert_eq!(find(&all, &format!("netns:[{own}]")).unwrap().inode, own);
    }
}
