use super::*;
use crate::model::{UnixState, UnixType};

const FILE: VfsId = VfsId {
    dev_major: 0,
    dev_minor: 25,
    ino32: 4242,
};
const OTHER_FILE: VfsId = VfsId {
    dev_major: 0,
    dev_minor: 25,
    ino32: 4243,
};

fn bound(inode: u64, kind: UnixType, state: UnixState, vfs: VfsId) -> UnixSocket {
    UnixSocket {
        kind,
        state,
        name: Some(UnixName::Path(b"/run/app.sock".to_vec())),
        vfs: Some(vfs),
        ..UnixSocket::test(inode)
    }
}

fn named(inode: u64, kind: UnixType, state: UnixState, name: &[u8]) -> UnixSocket {
    UnixSocket {
        kind,
        state,
        name: Some(UnixName::Abstract(name.to_vec())),
        ..UnixSocket::test(inode)
    }
}

#[test]
fn path_rules_table() {
    use PathState::*;
    let socket = PathFacts::Socket { vfs: FILE };
    // (case, what is at the path, sockets of the namespaces, all read, state, holders)
    let mut rows: Vec<(String, PathFacts, Vec<UnixSocket>, bool, PathState, usize)> = vec![
        (
            "nothing there".into(),
            PathFacts::Absent,
            vec![],
            true,
            Free,
            0,
        ),
        (
            "nothing there, sockets bound elsewhere".into(),
            PathFacts::Absent,
            vec![bound(1, UnixType::Stream, UnixState::Listen, OTHER_FILE)],
            true,
            Free,
            0,
        ),
        (
            "missing directory".into(),
            PathFacts::DirUnusable {
                errno: libc::ENOENT,
            },
            vec![],
            true,
            Unusable {
                errno: libc::ENOENT,
            },
            0,
        ),
        (
            "read-only directory".into(),
            PathFacts::DirUnusable { errno: libc::EROFS },
            vec![],
            true,
            Unusable { errno: libc::EROFS },
            0,
        ),
        (
            "socket file, nothing bound to it".into(),
            socket,
            vec![],
            true,
            Stale,
            0,
        ),
        (
            "socket file, a socket bound to another file of the same name".into(),
            socket,
            vec![bound(1, UnixType::Stream, UnixState::Listen, OTHER_FILE)],
            true,
            Stale,
            0,
        ),
        (
            "socket file, a namespace unread".into(),
            socket,
            vec![],
            false,
            HolderUnknown,
            0,
        ),
        (
            "socket file, held though a namespace is unread".into(),
            socket,
            vec![bound(1, UnixType::Stream, UnixState::Listen, FILE)],
            false,
            Held,
            1,
        ),
    ];
    // Every type of holder, listening or not, holds the file alike.
    for kind in UnixType::ALL {
        for state in [UnixState::Listen, UnixState::Unconnected] {
            if kind == UnixType::Dgram && state == UnixState::Listen {
                continue;
            }
            rows.push((
                format!("socket file held by a {} {}", kind.as_str(), state.as_str()),
                socket,
                vec![bound(7, kind, state, FILE)],
                true,
                Held,
                1,
            ));
        }
    }
    for kind in [
        FileKind::Regular,
        FileKind::Directory,
        FileKind::Symlink,
        FileKind::Fifo,
        FileKind::CharDevice,
        FileKind::BlockDevice,
    ] {
        rows.push((
            format!("{} at the path", kind.describe()),
            PathFacts::Other { kind },
            vec![bound(1, UnixType::Stream, UnixState::Listen, FILE)],
            true,
            NotSocket(kind),
            0,
        ));
    }
    for (case, facts, sockets, all, state, holders) in rows {
        let j = judge_unix_path(&facts, &sockets, all);
        assert_eq!(j.state, state, "{case}");
        assert_eq!(j.holders.len(), holders, "{case}");
        assert_eq!(j.safe_to_remove, state == Stale, "{case}");
        let bind = match state {
            Free => BindOutcome::Succeeds,
            Unusable { errno } => BindOutcome::Fails { errno },
            _ => BindOutcome::AddrInUse,
        };
        assert_eq!(j.bind, bind, "{case}");
    }
}

#[test]
fn abstract_rules_table() {
    // Held by a socket of each type, judged for a bind of each type: only the same
    // type conflicts (the kernel's hash bucket is chosen by name XOR type).
    for holder in UnixType::ALL {
        for state in [
            UnixState::Listen,
            UnixState::Unconnected,
            UnixState::Connected,
        ] {
            let sockets = vec![named(3, holder, state, b"app")];
            for kind in UnixType::ALL {
                let j = judge_unix_abstract(b"app", kind, &sockets);
                let (want, holders, others) = if kind == holder {
                    (BindOutcome::AddrInUse, 1, 0)
                } else {
                    (BindOutcome::Succeeds, 0, 1)
                };
                let case = format!("{holder:?} {state:?} holds, {kind:?} binds");
                assert_eq!(j.bind, want, "{case}");
                assert_eq!(j.holders.len(), holders, "{case}");
                assert_eq!(j.other_types.len(), others, "{case}");
            }
        }
    }
    // Exactly the same bytes: a trailing NUL or a prefix is another name.
    let held = vec![named(3, UnixType::Stream, UnixState::Listen, b"app")];
    for other in [&b"app\0"[..], b"ap", b"apps", b"APP"] {
        let j = judge_unix_abstract(other, UnixType::Stream, &held);
        assert_eq!(j.state, PathState::Free, "{other:?}");
    }
    // A path socket of the same text is not an abstract name.
    let path = vec![UnixSocket {
        name: Some(UnixName::Path(b"app".to_vec())),
        ..UnixSocket::test(1)
    }];
    assert_eq!(
        judge_unix_abstract(b"app", UnixType::Stream, &path).bind,
        BindOutcome::Succeeds
    );
    // Listeners come first among several holders.
    let j = judge_unix_abstract(
        b"app",
        UnixType::Stream,
        &[
            named(1, UnixType::Stream, UnixState::Connected, b"app"),
            named(9, UnixType::Stream, UnixState::Listen, b"app"),
        ],
    );
    assert_eq!(j.holders[0].inode, 9);
    assert!(!j.safe_to_remove, "an abstract name has no file to remove");
}

#[test]
fn targets_parse_and_bad_ones_say_why() {
    assert_eq!(parse_target("8080"), None);
    assert_eq!(
        parse_target("unix:/run/app.sock"),
        Some(Ok(UnixTarget::Path("/run/app.sock".into())))
    );
    assert_eq!(
        parse_target("unix:@app"),
        Some(Ok(UnixTarget::Abstract(b"app".to_vec())))
    );
    let longest = format!("unix:/{}", "a".repeat(107));
    assert!(matches!(parse_target(&longest), Some(Ok(_))));
    let longest_abstract = format!("unix:@{}", "a".repeat(107));
    assert!(matches!(parse_target(&longest_abstract), Some(Ok(_))));
    for (bad, says) in [
        ("unix:".to_string(), "needs a path"),
        ("unix:@".to_string(), "needs a name"),
        ("unix:run/app.sock".to_string(), "absolute"),
        ("unix:/run/\0x".to_string(), "NUL"),
        (format!("unix:/{}", "a".repeat(108)), "at most 108 bytes"),
        (format!("unix:@{}", "a".repeat(108)), "at most 107 bytes"),
        ("unix:/run/".to_string(), "not a directory"),
        ("unix:/run/..".to_string(), "not a directory"),
    ] {
        let e = parse_target(&bad).expect("a unix target").unwrap_err();
        assert!(e.contains(says), "{bad:?}: {e}");
    }
}

#[test]
fn descriptions_name_the_case() {
    assert!(describe(PathState::Stale).contains("removing it is safe"));
    assert_eq!(
        describe(PathState::NotSocket(FileKind::Regular)),
        "a regular file, not a socket"
    );
    assert_eq!(strerror(libc::ENOENT), "No such file or directory");
    assert!(describe(PathState::Unusable {
        errno: libc::ENOENT
    })
    .starts_with("bind() would fail with ENOENT"));
}
