//! Every process that holds a socket open. The owner scan ([`super::owners`]) stops at
//! the first fd it finds for an inode, which is all a metric needs; telling an operator
//! what to stop needs them all (a forked worker keeps its parent's sockets).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use super::owners::socket_inode;

/// The pids (sorted) whose fd tables hold each of `inodes`. Processes that exit or
/// hide their fds (no privilege, another pid namespace) are skipped; an inode nobody
/// was seen holding is absent.
pub fn holders(procfs: &Path, inodes: &HashSet<u64>) -> BTreeMap<u64, BTreeSet<u32>> {
    let mut out: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(procs) = std::fs::read_dir(procfs) else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let inode = std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| socket_inode(&l));
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                out.entry(inode).or_default().insert(pid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn finds_this_process_holding_a_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = format!("/proc/self/fd/{}", l.as_raw_fd());
        let inode = std::fs::metadata(&link).unwrap().ino();
        let found = holders(Path::new("/proc"), &HashSet::from([inode, 1]));
        assert_eq!(
            found.get(&inode),
            Some(&BTreeSet::from([std::process::id()]))
        );
        assert!(!found.contains_key(&1), "{found:?}");
        assert!(holders(Path::new("/nonexistent"), &HashSet::from([inode])).is_empty());
    }
}
