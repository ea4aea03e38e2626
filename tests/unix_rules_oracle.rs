//! The unix bind rules (`unixbind`) with their inputs gathered for real
//! (`unixprobe`), checked against the kernel: every situation is built for real in a
//! scratch directory and a private network namespace, judged, and then `bind()` of
//! a fresh socket of each type (stream, dgram, seqpacket) must answer what the
//! judgement says. Needs root (network namespaces).

mod common;

use std::path::Path;

use bindwatch::model::{UnixState, UnixType};
use bindwatch::unixbind::{BindOutcome, FileKind, PathState, UnixTarget};
use bindwatch::unixprobe::{self, ProbeOptions};
use common::unix::{bind, kernel_bind, sun_path, TYPES};
use common::{in_netns, Scratch};

fn opts() -> ProbeOptions {
    ProbeOptions::new(Path::new("/proc"), Path::new("/"))
}

fn target(s: &str) -> UnixTarget {
    match s.strip_prefix('@') {
        Some(n) => UnixTarget::Abstract(n.as_bytes().to_vec()),
        None => UnixTarget::Path(s.into()),
    }
}

fn unix_type(kind: i32) -> UnixType {
    match kind {
        libc::SOCK_STREAM => UnixType::Stream,
        libc::SOCK_DGRAM => UnixType::Dgram,
        _ => UnixType::Seqpacket,
    }
}

/// Judges a bind on `addr` of each socket type, then asks the kernel with a fresh
/// socket of that type; both must agree. The judgement of a stream bind is returned.
fn judged_as_kernel_answers(case: &str, addr: &str) -> PathState {
    let mut stream = None;
    for (kind, kname) in TYPES {
        let report = unixprobe::inspect(&target(addr), unix_type(kind), &opts()).expect("inspect");
        let j = &report.judgement;
        let kernel = kernel_bind(kind, addr);
        let expected = match j.bind {
            BindOutcome::Succeeds => Ok(()),
            BindOutcome::AddrInUse => Err(libc::EADDRINUSE),
            BindOutcome::Fails { errno } => Err(errno),
        };
        assert_eq!(
            kernel, expected,
            "{case}: {kname} bind() answered {kernel:?}, the judgement was {:?} (namespaces not read: {:?})",
            j.state, report.netns_unread
        );
        stream.get_or_insert(j.state);
    }
    stream.expect("three types")
}

/// [`judged_as_kernel_answers`] until the judgement is `want`: a socket closed a
/// moment ago keeps its name until its last file reference is dropped, and a
/// concurrent reader of `/proc/PID/fd` (another test's agent) may hold one for a
/// moment. Every judgement on the way is still checked against the kernel.
fn judged_until(case: &str, addr: &str, want: PathState) -> PathState {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = judged_as_kernel_answers(case, addr);
        if got == want || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn inspect(addr: &str) -> bindwatch::unixprobe::UnixPathReport {
    unixprobe::inspect(&target(addr), UnixType::Stream, &opts()).expect("inspect")
}

#[test]
fn path_situations_agree_with_bind() {
    in_netns(|| {
        let dir = Scratch::new("unix-oracle-path");
        let p = |n: &str| dir.str(n);

        assert_eq!(
            judged_as_kernel_answers("nothing there", &p("free.sock")),
            PathState::Free
        );

        for (kind, kname) in TYPES {
            for listen in [true, false] {
                let path = p(&format!("held-{kname}-{listen}.sock"));
                let s = bind(kind, &sun_path(&path), listen).expect("bind the holder");
                let report = inspect(&path);
                assert_eq!(report.judgement.holders.len(), 1, "{kname} {listen}");
                let h = &report.judgement.holders[0];
                let want = if listen && kind != libc::SOCK_DGRAM {
                    UnixState::Listen
                } else {
                    UnixState::Unconnected
                };
                assert_eq!(h.state, want, "{kname} {listen}");
                assert_eq!(h.kind.as_str(), kname);
                let me = report.owners.get(&h.inode).expect("the holder's owner");
                assert_eq!(me.pid, std::process::id(), "{kname}: held by this test");
                assert_eq!(
                    judged_as_kernel_answers(&format!("held by a {kname} socket"), &path),
                    PathState::Held
                );
                // Closed without unlink: the file stays, nothing is bound to it.
                drop(s);
                let state = judged_until(&format!("{kname} closed"), &path, PathState::Stale);
                assert_eq!(state, PathState::Stale, "{kname} {listen}");
                let r = inspect(&path);
                assert!(r.judgement.safe_to_remove && r.judgement.holders.is_empty());
                // Removed: free again.
                std::fs::remove_file(&path).unwrap();
                assert_eq!(
                    judged_as_kernel_answers("stale file removed", &path),
                    PathState::Free
                );
            }
        }

        // A listener whose file was renamed holds the new name; the old one is free.
        let a = p("renamed-from.sock");
        let b = p("renamed-to.sock");
        let l = bind(libc::SOCK_STREAM, &sun_path(&a), true).unwrap();
        std::fs::rename(&a, &b).unwrap();
        assert_eq!(judged_as_kernel_answers("renamed to", &b), PathState::Held);
        assert_eq!(
            judged_as_kernel_answers("renamed from", &a),
            PathState::Free
        );
        // A new file at the old name is not the listener's: it is stale.
        let c = bind(libc::SOCK_STREAM, &sun_path(&a), false).unwrap();
        drop(c);
        assert_eq!(
            judged_until("new file at the old name", &a, PathState::Stale),
            PathState::Stale
        );
        drop(l);

        std::fs::write(p("regular"), "x").unwrap();
        assert_eq!(
            judged_as_kernel_answers("a regular file", &p("regular")),
            PathState::NotSocket(FileKind::Regular)
        );
        std::fs::create_dir(p("a-dir")).unwrap();
        assert_eq!(
            judged_as_kernel_answers("a directory", &p("a-dir")),
            PathState::NotSocket(FileKind::Directory)
        );
        std::os::unix::fs::symlink(p("nowhere"), p("dangling")).unwrap();
        assert_eq!(
            judged_as_kernel_answers("a dangling symlink", &p("dangling")),
            PathState::NotSocket(FileKind::Symlink)
        );
        let fifo = std::ffi::CString::new(p("fifo")).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(
            judged_as_kernel_answers("a FIFO", &p("fifo")),
            PathState::NotSocket(FileKind::Fifo)
        );
        assert_eq!(
            judged_as_kernel_answers("missing directory", &p("no-dir/app.sock")),
            PathState::Unusable {
                errno: libc::ENOENT
            }
        );
        assert_eq!(
            judged_as_kernel_answers("a file as directory", &p("regular/app.sock")),
            PathState::Unusable {
                errno: libc::ENOTDIR
            }
        );
    });
}

#[test]
fn a_file_bound_in_another_network_namespace_is_held_not_stale() {
    let dir = Scratch::new("unix-oracle-netns");
    let path = dir.str("other-netns.sock");
    // The holder lives in one namespace, the judge in another: same file, different
    // unix tables.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let holder_path = path.clone();
    let holder = std::thread::spawn(move || {
        in_netns(move || {
            let _l = bind(libc::SOCK_STREAM, &sun_path(&holder_path), true).unwrap();
            ready_tx.send(()).unwrap();
            let _ = rx.recv();
        })
    });
    ready_rx.recv().unwrap();
    let judged = path.clone();
    let (state, netns_of_holder) = in_netns(move || {
        let r = inspect(&judged);
        let state = judged_as_kernel_answers("held from another namespace", &judged);
        (state, r.holder_netns.into_values().collect::<Vec<_>>())
    });
    tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(state, PathState::Held);
    assert_eq!(netns_of_holder.len(), 1, "{netns_of_holder:?}");
    let stale = in_netns(move || judged_until("holder gone", &path, PathState::Stale));
    assert_eq!(stale, PathState::Stale);
}

#[test]
fn abstract_names_are_per_network_namespace() {
    let name = format!("@bindwatch-oracle-{}", std::process::id());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let held = name.clone();
    let holder = std::thread::spawn(move || {
        in_netns(move || {
            for (kind, kname) in TYPES {
                let s = bind(kind, &sun_path(&held), kind != libc::SOCK_DGRAM).unwrap();
                // judged_as_kernel_answers checks every type: only this one is held.
                let stream = judged_as_kernel_answers(&format!("held by {kname}"), &held);
                let want = if kind == libc::SOCK_STREAM {
                    PathState::Held
                } else {
                    PathState::Free
                };
                assert_eq!(stream, want, "held by {kname}, judged for stream");
                let r = unixprobe::inspect(&target(&held), unix_type(kind), &opts()).unwrap();
                assert_eq!(r.judgement.holders.len(), 1, "{kname}");
                // Exactly the bytes: a longer name is another name.
                assert_eq!(
                    judged_as_kernel_answers("a longer name", &format!("{held}x")),
                    PathState::Free
                );
                drop(s);
                // No file: the name is free as soon as the socket is gone.
                assert_eq!(
                    judged_until(&format!("{kname} closed"), &held, PathState::Free),
                    PathState::Free
                );
            }
            let _l = bind(libc::SOCK_STREAM, &sun_path(&held), true).unwrap();
            ready_tx.send(()).unwrap();
            let _ = rx.recv();
        })
    });
    ready_rx.recv().unwrap();
    let other = name.clone();
    let state = in_netns(move || judged_as_kernel_answers("another namespace", &other));
    tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(state, PathState::Free);
}
