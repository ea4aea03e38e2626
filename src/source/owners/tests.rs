//! Tests of owner attribution: cgroup units, the sliced fd scan, stat and passwd parsing, socket links, and flag probes of real sockets.

use super::*;

#[test]
fn cgroup_units() {
    let cases = [
        ("0::/system.slice/nginx.service\n", Some("nginx.service")),
        (
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            Some("session-3.scope"),
        ),
        (
            "0::/system.slice/docker-abc.scope/init.service\n",
            Some("init.service"),
        ),
        ("0::/\n", None),
        ("garbage", None),
        ("", None),
    ];
    for (text, want) in cases {
        assert_eq!(unit_from_cgroup(text).as_deref(), want, "{text:?}");
    }
}

#[test]
fn a_sliced_scan_resumes_inside_a_big_process() {
    let socks: Vec<std::net::UdpSocket> = (0..700)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let last = socks.last().unwrap().as_raw_fd();
    let inode = fs::metadata(format!("/proc/self/fd/{last}"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let mut r = OwnerResolver::new(Path::new("/proc"));
    r.scan_slice = Some(Duration::ZERO);
    let wanted: HashSet<u64> = [inode].into();
    let mut calls = 0;
    let found = loop {
        r.next_round();
        calls += 1;
        let got = r.resolve(&wanted);
        if let Some(f) = got.get(&inode) {
            break *f;
        }
        assert!(calls < 100_000, "the scan never finished");
    };
    assert_eq!(
        found,
        FdRef {
            pid: std::process::id(),
            fd: last
        }
    );
    assert!(
        calls >= 3,
        "700 fds at 256 per slice need several calls, took {calls}"
    );
    assert_eq!(r.stats.full_scans, 1, "one scan, resumed, not restarted");
}

#[test]
fn passwd_lines() {
    let m = parse_passwd(
        "root:x:0:0:root:/root:/bin/bash\nbad line\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n",
    );
    assert_eq!(m.get(&0).map(String::as_str), Some("root"));
    assert_eq!(m.get(&33).map(String::as_str), Some("www-data"));
    assert_eq!(m.len(), 2);
}

#[test]
fn socket_links() {
    assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
    assert_eq!(socket_inode(Path::new("pipe:[12345]")), None);
    assert_eq!(socket_inode(Path::new("socket:[x]")), None);
}

#[test]
fn probes_own_socket_flags_for_real() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fd = l.as_raw_fd();
    // Rust's std sets SO_REUSEADDR on listeners (on Unix).
    let p = probe_flags(
        FdRef {
            pid: std::process::id(),
            fd,
        },
        false,
        None,
    )
    .unwrap();
    assert_eq!(p.flags.reuseaddr, Tri::True);
    assert_eq!(p.flags.reuseport, Tri::False);
    assert_eq!(p.ifindex, 0);
    let mut r = OwnerResolver::new(Path::new("/proc"));
    r.next_round();
    let inode = fs::metadata(format!("/proc/self/fd/{fd}"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let me = FdRef {
        pid: std::process::id(),
        fd,
    };
    assert!(
        probe_flags(me, false, Some(inode)).is_ok(),
        "the right socket"
    );
    let wrong = probe_flags(me, false, Some(inode + 1)).unwrap_err();
    assert_eq!(
        wrong.raw_os_error(),
        Some(libc::ESTALE),
        "a reused fd number is refused"
    );
    let wanted: HashSet<u64> = [inode].into();
    let got = r.resolve(&wanted);
    assert_eq!(got.get(&inode).map(|f| f.pid), Some(std::process::id()));
    assert_eq!(r.stats.full_scans, 1);
    let again = r.resolve(&wanted);
    assert_eq!(again, got);
    assert_eq!(
        r.stats.full_scans, 1,
        "the second lookup is served from the cache"
    );
    // An inode nobody holds is looked for once, not at every poll.
    let ghost: HashSet<u64> = [inode, u64::MAX - 1].into();
    r.next_round();
    r.resolve(&ghost);
    r.next_round();
    r.resolve(&ghost);
    assert_eq!(
        r.stats.full_scans, 2,
        "one scan for the new inode, none for the repeat"
    );
    assert_eq!(
        r.stats.cache_hits, 3,
        "the real inode: once before, twice now"
    );
    let me = r.owner(std::process::id()).expect("own process");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(me.uid, euid);
    assert!(!me.process.is_empty());
}
