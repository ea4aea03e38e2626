//! What hit, miss and undecided mean, case by case: the snapshot, the dump after
//! the bind, the kernel's answer.

use std::time::{Duration, SystemTime};

use super::*;
use crate::events::decode::{Call, CallFlags};
use crate::model::{SourceKind, State};

const PORT: u16 = 8080;

fn bind(errno: Option<Errno>, reuseaddr: bool) -> Event {
    Event {
        call: Call::Bind,
        pid: 10,
        tgid: 10,
        uid: 0,
        netns: 1,
        errno,
        protocol: Some(Protocol::Tcp),
        address: "127.0.0.1".parse().expect("address"),
        port: PORT,
        flags: Some(CallFlags {
            reuseaddr,
            reuseport: false,
            v6only: false,
            ifindex: 0,
        }),
        comm: "d".into(),
    }
}

fn listener(inode: u64) -> Socket {
    Socket {
        inode,
        cookie: inode,
        ..Socket::test(State::Listen, "127.0.0.1:8080", "0.0.0.0:0")
    }
}

fn time_wait(cookie: u64, left_ms: u64) -> Socket {
    Socket {
        inode: 0,
        cookie,
        expires_ms: Some(left_ms),
        ..Socket::test(State::TimeWait, "127.0.0.1:8080", "127.0.0.1:40000")
    }
}

fn reusing(s: Socket) -> Socket {
    Socket {
        flags: crate::model::SocketFlags {
            reuseaddr: crate::model::Tri::True,
            reuseport: crate::model::Tri::False,
        },
        ..s
    }
}

fn snap(at: SystemTime, sockets: Vec<Socket>, watched: bool) -> Snapshot {
    let mut s = Snapshot::empty(at, SourceKind::Netlink);
    s.port_sockets = sockets;
    if watched {
        s.ports.insert((Protocol::Tcp, PORT));
    }
    s
}

#[test]
fn hit_miss_undecided() {
    let t0 = SystemTime::now() - Duration::from_secs(2);
    let at = SystemTime::now();
    let none: &[Socket] = &[];
    let new_bound = Socket {
        inode: 99,
        cookie: 99,
        ..Socket::test(State::Close, "127.0.0.1:8080", "0.0.0.0:0")
    };
    type Case<'a> = (
        &'a str,
        Vec<Socket>,
        Option<Vec<Socket>>,
        Event,
        Option<Outcome>,
    );
    let cases: Vec<Case> = vec![
        // The restarted daemon closed its listener after the poll: gone by the bind.
        (
            "listener closed before the bind",
            vec![listener(1)],
            Some(vec![new_bound.clone()]),
            bind(None, true),
            Some(Outcome::Hit),
        ),
        // Still there after the bind and yet the bind succeeded: a real miss.
        (
            "listener still there",
            vec![listener(1)],
            Some(vec![listener(1), new_bound.clone()]),
            bind(None, true),
            Some(Outcome::Miss),
        ),
        // No dump: the blocker can be neither confirmed nor proven gone.
        (
            "no dump after a success",
            vec![listener(1)],
            None,
            bind(None, true),
            Some(Outcome::Undecided),
        ),
        // A TIME_WAIT whose timer ran out before the bind is gone without a dump.
        (
            "time-wait expired",
            vec![time_wait(5, 500)],
            None,
            bind(None, false),
            Some(Outcome::Hit),
        ),
        (
            "time-wait alive, no dump",
            vec![time_wait(5, 30_000)],
            None,
            bind(None, false),
            Some(Outcome::Undecided),
        ),
        (
            "time-wait alive, failure",
            vec![time_wait(5, 30_000)],
            Some(vec![time_wait(5, 28_000)]),
            bind(Some(Errno::Eaddrinuse), false),
            Some(Outcome::Hit),
        ),
        // Clear, and a failure blocked by a socket that came after the snapshot.
        (
            "clear, blocker is new",
            vec![],
            Some(vec![listener(7)]),
            bind(Some(Errno::Eaddrinuse), true),
            Some(Outcome::Undecided),
        ),
        // Clear, and a failure blocked by a socket the snapshot had: a miss.
        (
            "clear, blocker was known",
            vec![reusing(time_wait(5, 30_000))],
            Some(vec![time_wait(5, 29_000)]),
            bind(Some(Errno::Eaddrinuse), true),
            Some(Outcome::Miss),
        ),
        (
            "other errno",
            vec![],
            Some(vec![]),
            bind(Some(Errno::Eacces), true),
            Some(Outcome::Undecided),
        ),
    ];
    for (name, before, after, e, want) in cases {
        let s = snap(t0, before, true);
        let got = score_bind(&e, Protocol::Tcp, &s, at, after.as_deref()).map(|x| x.outcome);
        assert_eq!(got, want, "{name}");
    }
    // A port the agent kept nothing of: a hit when the failure's blockers are
    // older than the last walk, else not scored.
    let old_tw = time_wait(5, 10_000); // created 50 s ago
    let young_tw = time_wait(6, 59_900); // created 0.1 s ago
    let e = bind(Some(Errno::Eaddrinuse), false);
    let s = snap(t0, vec![], false);
    let hit = score_bind(&e, Protocol::Tcp, &s, at, Some(&[old_tw])).map(|x| x.outcome);
    assert_eq!(hit, Some(Outcome::Hit));
    assert!(score_bind(&e, Protocol::Tcp, &s, at, Some(&[young_tw])).is_none());
    assert!(score_bind(&bind(None, false), Protocol::Tcp, &s, at, Some(none)).is_none());
}
