//! Watched unix services (`unix:` in `--config.file`): what `unixbind` found at the
//! address -> the same statuses as for ports. Pure.
//!
//! - **ok**: a listener (a listening stream/seqpacket socket, or a bound datagram
//!   socket) holds it, and its owner is the expected one (an owner bindwatch cannot
//!   see is given the benefit of the doubt, as for ports).
//! - **foreign_owner**: a listener of another process holds it.
//! - **missing**: nothing is there; the daemon's bind would succeed (or fail for
//!   want of its directory: the detail says so).
//! - **blocked**: nobody listens and the daemon's bind would fail with EADDRINUSE:
//!   a stale socket file, a file that is not a socket, or a socket file whose holder
//!   cannot be told.
//! - **stolen**: only sockets that do not listen (bound but never listen()ed, or
//!   connected) hold it.

use std::collections::BTreeMap;

use crate::conflict::owner_matches;
use crate::model::{Owner, Status, UnixService, UnixServiceStatus, UnixSocket, UnixState};
use crate::unixbind::{self, PathState, UnixJudgement};

fn who(s: &UnixSocket, owners: &BTreeMap<u64, Owner>) -> String {
    match owners.get(&s.inode) {
        Some(o) => format!("{}[{}] (user {})", o.process, o.pid, o.user),
        None => format!("an unknown process (socket inode {})", s.inode),
    }
}

/// The label value of a path state.
pub fn path_state_label(s: PathState) -> &'static str {
    match s {
        PathState::Free => "free",
        PathState::Held => "held",
        PathState::Stale => "stale",
        PathState::HolderUnknown => "holder_unknown",
        PathState::NotSocket(_) => "not_a_socket",
        PathState::Unusable { .. } => "unusable",
    }
}

/// The status of `svc` given the judgement of its address and the holders' owners.
pub fn service_status(
    svc: &UnixService,
    j: &UnixJudgement,
    owners: &BTreeMap<u64, Owner>,
) -> UnixServiceStatus {
    let mut out = UnixServiceStatus {
        name: svc.name.clone(),
        address: svc.address.to_string(),
        status: Status::Missing,
        path_state: path_state_label(j.state),
        detail: String::new(),
        accept_queue: None,
        accept_queue_limit: None,
    };
    let listeners: Vec<&UnixSocket> = j.holders.iter().filter(|s| s.is_listener()).collect();
    let (status, detail) = match j.state {
        PathState::Held if listeners.is_empty() => (
            Status::Stolen,
            format!(
                "held by {} that does not listen",
                j.holders
                    .first()
                    .map_or_else(String::new, |s| who(s, owners))
            ),
        ),
        PathState::Held => {
            let expected = listeners
                .iter()
                .find(|s| owner_matches(&svc.owner, owners.get(&s.inode)));
            let shown = expected.copied().unwrap_or(listeners[0]);
            if shown.state == UnixState::Listen {
                out.accept_queue = shown.rqueue;
                out.accept_queue_limit = shown.wqueue;
            }
            match expected {
                Some(s) => (Status::Ok, format!("{} listens", who(s, owners))),
                None => (
                    Status::ForeignOwner,
                    format!("{} listens, not the expected owner", who(shown, owners)),
                ),
            }
        }
        PathState::Free => (
            Status::Missing,
            "nothing listens; a bind would succeed".into(),
        ),
        PathState::Unusable { .. } => (
            Status::Missing,
            format!("nothing listens; {}", unixbind::describe(j.state)),
        ),
        PathState::Stale | PathState::NotSocket(_) | PathState::HolderUnknown => (
            Status::Blocked,
            format!(
                "nothing listens and a bind would fail with EADDRINUSE: {}",
                unixbind::describe(j.state)
            ),
        ),
    };
    out.status = status;
    out.detail = detail;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OwnerMatch, UnixName, UnixType, VfsId};
    use crate::unixbind::{judge_unix_abstract, judge_unix_path, FileKind, PathFacts};

    const FILE: VfsId = VfsId {
        dev_major: 0,
        dev_minor: 1,
        ino32: 2,
    };

    fn svc(process: Option<&str>) -> UnixService {
        UnixService {
            name: "app".into(),
            address: UnixName::Path(b"/run/app.sock".to_vec()),
            kind: UnixType::Stream,
            owner: OwnerMatch {
                process: process.map(str::to_string),
                ..OwnerMatch::default()
            },
        }
    }

    fn holder(inode: u64, state: UnixState) -> UnixSocket {
        UnixSocket {
            state,
            vfs: Some(FILE),
            name: Some(UnixName::Path(b"/run/app.sock".to_vec())),
            rqueue: Some(2),
            wqueue: Some(128),
            ..UnixSocket::test(inode)
        }
    }

    fn owner(pid: u32, process: &str) -> Owner {
        Owner {
            pid,
            process: process.into(),
            uid: 0,
            user: "root".into(),
            unit: None,
        }
    }

    #[test]
    fn status_table() {
        let socket = PathFacts::Socket { vfs: FILE };
        let nginx: BTreeMap<u64, Owner> = [(1, owner(10, "nginx"))].into();
        // (case, what is at the path, unix sockets, every namespace read, expected
        // owner, status)
        type Row = (
            &'static str,
            PathFacts,
            Vec<UnixSocket>,
            bool,
            Option<&'static str>,
            Status,
        );
        let rows: Vec<Row> = vec![
            (
                "nothing there",
                PathFacts::Absent,
                vec![],
                true,
                Some("nginx"),
                Status::Missing,
            ),
            (
                "directory missing",
                PathFacts::DirUnusable {
                    errno: libc::ENOENT,
                },
                vec![],
                true,
                None,
                Status::Missing,
            ),
            (
                "expected listener",
                socket,
                vec![holder(1, UnixState::Listen)],
                true,
                Some("nginx"),
                Status::Ok,
            ),
            (
                "any listener, no owner asked",
                socket,
                vec![holder(1, UnixState::Listen)],
                true,
                None,
                Status::Ok,
            ),
            (
                "another process listens",
                socket,
                vec![holder(1, UnixState::Listen)],
                true,
                Some("haproxy"),
                Status::ForeignOwner,
            ),
            (
                "owner unseen: benefit of the doubt",
                socket,
                vec![holder(2, UnixState::Listen)],
                true,
                Some("haproxy"),
                Status::Ok,
            ),
            (
                "bound, never listened",
                socket,
                vec![holder(1, UnixState::Unconnected)],
                true,
                Some("nginx"),
                Status::Stolen,
            ),
            (
                "stale file",
                socket,
                vec![],
                true,
                Some("nginx"),
                Status::Blocked,
            ),
            (
                "holder unknown",
                socket,
                vec![],
                false,
                Some("nginx"),
                Status::Blocked,
            ),
            (
                "a regular file",
                PathFacts::Other {
                    kind: FileKind::Regular,
                },
                vec![],
                true,
                None,
                Status::Blocked,
            ),
        ];
        for (case, facts, sockets, all, process, want) in rows {
            let j = judge_unix_path(&facts, &sockets, all);
            let st = service_status(&svc(process), &j, &nginx);
            assert_eq!(st.status, want, "{case}: {}", st.detail);
            assert_eq!(st.address, "/run/app.sock");
            let listening = want == Status::Ok || want == Status::ForeignOwner;
            assert_eq!(st.accept_queue.is_some(), listening, "{case}");
        }
        let j = judge_unix_path(&socket, &[], true);
        let st = service_status(&svc(None), &j, &nginx);
        assert_eq!(st.path_state, "stale");
        assert!(st.detail.contains("removing it is safe"), "{}", st.detail);
    }

    #[test]
    fn abstract_services_follow_their_type() {
        let bus = UnixService {
            address: UnixName::Abstract(b"bus".to_vec()),
            kind: UnixType::Dgram,
            ..svc(None)
        };
        let stream = UnixSocket {
            state: UnixState::Listen,
            name: Some(UnixName::Abstract(b"bus".to_vec())),
            ..UnixSocket::test(1)
        };
        let j = judge_unix_abstract(b"bus", bus.kind, std::slice::from_ref(&stream));
        assert_eq!(
            service_status(&bus, &j, &BTreeMap::new()).status,
            Status::Missing
        );
        let dgram = UnixSocket {
            kind: UnixType::Dgram,
            state: UnixState::Unconnected,
            ..stream
        };
        let j = judge_unix_abstract(b"bus", bus.kind, &[dgram]);
        let st = service_status(&bus, &j, &BTreeMap::new());
        assert_eq!((st.status, st.address.as_str()), (Status::Ok, "@bus"));
    }
}
