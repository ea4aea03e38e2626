//! The holders of listening sockets as the kernel's fd iterator finds them are the
//! ones the `/proc` fd-link scan finds: a child that inherited one listener at its
//! own number and another dup'd to fd 100, a process handed a listener over a unix
//! socket (no child of any holder), and nobody for a listener only this process holds
//! (its own fds are never holders). After a holder exits, the next call finds the
//! rest again.
//!
//! Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE) and a kernel with BTF.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bindwatch::model::Holders;
use bindwatch::source::fdscan;
use bindwatch::source::holders::HolderScanner;
use common::inode_of;

/// Children killed and reaped on drop, by pid.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Clears FD_CLOEXEC on `fd` in a child between fork and exec.
fn keep_open(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd number; only flags change.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `fd` over `via` (SCM_RIGHTS) with one byte of data.
fn send_fd(via: &UnixStream, fd: RawFd) {
    let mut byte = [b'x'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr zeroed is valid; every pointer set below outlives sendmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control holds CMSG_SPACE(sizeof(int)) bytes, room for one header
    // and one fd, so CMSG_FIRSTHDR is not null and CMSG_DATA has room for the fd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    }
    // SAFETY: a valid msghdr on a connected unix socket we hold.
    let n = unsafe { libc::sendmsg(via.as_raw_fd(), &msg, 0) };
    assert_eq!(n, 1, "sendmsg: {}", std::io::Error::last_os_error());
}

fn pids(h: &HashMap<u64, Holders>, inode: u64) -> BTreeSet<u32> {
    h.get(&inode)
        .map(|x| x.list.iter().map(|p| p.pid).collect())
        .unwrap_or_default()
}

/// Both scanners' holders of each inode, asserted equal and complete.
fn both(
    fast: &mut HolderScanner,
    slow: &mut HolderScanner,
    inodes: &HashSet<u64>,
) -> HashMap<u64, BTreeSet<u32>> {
    let user = |uid: u32| uid.to_string();
    let f = fast.holders(inodes, &user);
    let s = slow.holders(inodes, &user);
    let mut out = HashMap::new();
    for &i in inodes {
        assert_eq!(
            pids(&f, i),
            pids(&s, i),
            "inode {i}: iterator against links"
        );
        assert!(
            f[&i].complete,
            "inode {i}: the iterator's holders are complete"
        );
        assert!(
            s[&i].complete,
            "inode {i}: the link scan's holders are complete"
        );
        out.insert(i, pids(&f, i));
    }
    out
}

#[test]
fn the_fd_iterator_finds_the_holders_the_link_scan_finds() {
    let a = TcpListener::bind("127.0.0.1:0").expect("listener a");
    let b = TcpListener::bind("127.0.0.1:0").expect("listener b");
    let c = TcpListener::bind("127.0.0.1:0").expect("listener c");
    let (a_fd, b_fd) = (a.as_raw_fd(), b.as_raw_fd());

    let mut inheritor = Command::new("sleep");
    inheritor.arg("300").stdin(Stdio::null());
    // SAFETY: the closure only calls fcntl and dup2, both async-signal-safe.
    unsafe {
        inheritor.pre_exec(move || {
            keep_open(a_fd)?;
            if libc::dup2(b_fd, 100) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let inheritor = inheritor.spawn().expect("sleep");

    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let theirs_fd = theirs.as_raw_fd();
    let mut receiver = Command::new("python3");
    receiver
        .args([
            "-c",
            "import socket, sys, time\n\
             s = socket.socket(fileno=int(sys.argv[1]))\n\
             _, fds, _, _ = socket.recv_fds(s, 1, 1)\n\
             print('got', fds[0], flush=True)\n\
             time.sleep(300)\n",
            &theirs_fd.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: the closure only calls fcntl.
    unsafe {
        receiver.pre_exec(move || keep_open(theirs_fd));
    }
    let mut receiver = receiver.spawn().expect("python3");
    let out = receiver.stdout.take().expect("python's stdout");
    let mut kids = Kids(vec![inheritor, receiver]);
    drop(theirs);
    send_fd(&ours, a_fd);
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("python's line");
    assert!(line.starts_with("got "), "python received no fd: {line:?}");

    let (ia, ib, ic) = (inode_of(&a), inode_of(&b), inode_of(&c));
    let inodes: HashSet<u64> = [ia, ib, ic].into();
    // As the agent makes it (a one-shot command loads the iterator only on a system
    // with many open files); a slice long enough for any scan here to end in a call.
    let mut fast = HolderScanner::new(Path::new("/proc"), Some(Duration::from_secs(60)));
    assert!(
        fast.uses_fd_iterator(),
        "as root in the initial pid namespace the fd iterator loads"
    );
    let mut slow =
        HolderScanner::new(Path::new("/proc"), Some(Duration::from_secs(60))).without_fd_iterator();
    assert!(!slow.uses_fd_iterator());

    let (inh, rec) = (kids.0[0].id(), kids.0[1].id());
    let found = both(&mut fast, &mut slow, &inodes);
    assert_eq!(found[&ia], BTreeSet::from([inh, rec]), "listener a");
    assert_eq!(found[&ib], BTreeSet::from([inh]), "listener b (fd 100)");
    assert!(
        found[&ic].is_empty(),
        "listener c: only this process holds it"
    );

    // The inheritor exits: the next call (a re-check, then a scan) names the rest.
    let mut gone = kids.0.remove(0);
    gone.kill().expect("kill sleep");
    gone.wait().expect("reap sleep");
    let found = both(&mut fast, &mut slow, &inodes);
    assert_eq!(
        found[&ia],
        BTreeSet::from([rec]),
        "listener a after the exit"
    );
    assert!(found[&ib].is_empty(), "listener b after the exit");
}

#[test]
fn the_fd_iterator_is_used_only_where_procfs_numbers_processes_as_it_does() {
    assert!(fdscan::usable(Path::new("/proc")));
    let dir = std::env::temp_dir().join(format!("bindwatch-fdscan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch procfs");
    // A procfs whose `self` names another process.
    std::os::unix::fs::symlink("1", dir.join("self")).expect("self link");
    let usable = fdscan::usable(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!usable, "a procfs whose self is not this process");
    assert!(!fdscan::usable(Path::new("/nonexistent-procfs")));
}
