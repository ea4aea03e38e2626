use super::*;
use crate::model::Rule;

fn finding(state: State, inode: u64, blocks: Tri) -> Finding {
    Finding {
        socket: Socket {
            inode,
            cookie: 42,
            expires_ms: Some(30_000),
            ..Socket::test(state, "127.0.0.1:8080", "127.0.0.1:40000")
        },
        blocks,
        rule: Rule::NewWithoutReuseaddr,
        undecided_by: Vec::new(),
    }
}

fn owner(pid: u32) -> Owner {
    Owner {
        pid,
        process: "php-fpm".into(),
        uid: 33,
        user: "www-data".into(),
        unit: None,
    }
}

const NEW: Facts = Facts {
    kernel: Some((6, 18)),
    force: false,
};
const OLD: Facts = Facts {
    kernel: Some((6, 1)),
    force: false,
};

#[test]
fn what_is_destroyed_and_what_is_kept() {
    use Decision::*;
    let held = [owner(4242)];
    let cases: Vec<(&str, Finding, &[Owner], Facts, Decision)> = vec![
        (
            "time_wait",
            finding(State::TimeWait, 0, Tri::True),
            &[],
            NEW,
            Destroy,
        ),
        (
            "time_wait, old kernel: the kernel answers",
            finding(State::TimeWait, 0, Tri::True),
            &[],
            OLD,
            Destroy,
        ),
        (
            "fin_wait2 orphan",
            finding(State::FinWait2, 0, Tri::True),
            &[],
            NEW,
            Destroy,
        ),
        (
            "last_ack orphan",
            finding(State::LastAck, 0, Tri::True),
            &[],
            NEW,
            Destroy,
        ),
        (
            "closing orphan",
            finding(State::Closing, 0, Tri::True),
            &[],
            NEW,
            Destroy,
        ),
        (
            "fin_wait1 orphan, fixed kernel",
            finding(State::FinWait1, 0, Tri::True),
            &[],
            NEW,
            Destroy,
        ),
        (
            "fin_wait1 orphan, 6.10",
            finding(State::FinWait1, 0, Tri::True),
            &[],
            Facts {
                kernel: Some((6, 10)),
                force: false,
            },
            Keep(super::Keep::FinWait1OldKernel),
        ),
        (
            "fin_wait1 orphan, unknown kernel",
            finding(State::FinWait1, 0, Tri::True),
            &[],
            Facts {
                kernel: None,
                force: false,
            },
            Keep(super::Keep::FinWait1OldKernel),
        ),
        (
            "fin_wait1 orphan, old kernel, --force",
            finding(State::FinWait1, 0, Tri::True),
            &[],
            Facts {
                kernel: Some((5, 15)),
                force: true,
            },
            Destroy,
        ),
        (
            "fin_wait1 with a file (shutdown)",
            finding(State::FinWait1, 7, Tri::True),
            &held,
            NEW,
            Keep(super::Keep::Held),
        ),
        (
            "established held by a child",
            finding(State::Established, 7, Tri::True),
            &held,
            NEW,
            Keep(super::Keep::Held),
        ),
        (
            "listener, holder not seen",
            finding(State::Listen, 7, Tri::True),
            &[],
            NEW,
            Keep(super::Keep::HeldUnseen),
        ),
        (
            "fin_wait2 of a process (not an orphan)",
            finding(State::FinWait2, 7, Tri::True),
            &held,
            NEW,
            Keep(super::Keep::Held),
        ),
        (
            "established in an accept queue",
            finding(State::Established, 0, Tri::True),
            &[],
            NEW,
            Keep(super::Keep::Live(State::Established)),
        ),
        (
            "close_wait without a file",
            finding(State::CloseWait, 0, Tri::True),
            &[],
            NEW,
            Keep(super::Keep::Live(State::CloseWait)),
        ),
        (
            "time_wait that may not block",
            finding(State::TimeWait, 0, Tri::Unknown),
            &[],
            NEW,
            Keep(super::Keep::MayNotBlock),
        ),
        (
            "time_wait without a cookie (/proc)",
            Finding {
                socket: Socket {
                    cookie: 0,
                    ..finding(State::TimeWait, 0, Tri::True).socket
                },
                ..finding(State::TimeWait, 0, Tri::True)
            },
            &[],
            NEW,
            Keep(super::Keep::NotExact),
        ),
        (
            "folded entry",
            Finding {
                socket: Socket {
                    count: 3,
                    ..finding(State::TimeWait, 0, Tri::True).socket
                },
                ..finding(State::TimeWait, 0, Tri::True)
            },
            &[],
            NEW,
            Keep(super::Keep::NotExact),
        ),
        (
            "udp",
            Finding {
                socket: Socket {
                    protocol: Protocol::Udp,
                    ..finding(State::Close, 0, Tri::True).socket
                },
                ..finding(State::Close, 0, Tri::True)
            },
            &[],
            NEW,
            Keep(super::Keep::NotTcp),
        ),
    ];
    for (what, f, holders, facts, want) in cases {
        assert_eq!(decide_socket(&f, holders, facts), want, "{what}");
    }
}

#[test]
fn kernel_releases_parse() {
    for (r, want) in [
        ("6.18.44-fc-v1272", Some((6, 18))),
        ("6.11.0", Some((6, 11))),
        ("5.15.0-91-generic", Some((5, 15))),
        ("6.0", Some((6, 0))),
        ("6.12-rc3", Some((6, 12))),
        ("6.1+", Some((6, 1))),
        ("", None),
        ("six.one", None),
        ("6", None),
    ] {
        assert_eq!(kernel_version(r), want, "{r:?}");
    }
}

#[test]
fn plan_lists_each_socket_once_and_predicts_the_verdict_after() {
    let tw = finding(State::TimeWait, 0, Tri::True);
    let tw_maybe = finding(State::TimeWait, 0, Tri::Unknown);
    let est = Finding {
        socket: Socket {
            remote: "127.0.0.1:40001".parse().unwrap(),
            cookie: 43,
            ..finding(State::Established, 7, Tri::True).socket
        },
        ..finding(State::Established, 7, Tri::True)
    };
    // The same TIME_WAIT from two judgements (one may-block, one blocks): once, blocking.
    let items = plan_sockets(
        [&tw_maybe, &tw, &est],
        |s| {
            if s.inode == 7 {
                vec![owner(4242), owner(4243)]
            } else {
                Vec::new()
            }
        },
        NEW,
    );
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].decision, Decision::Destroy);
    assert_eq!(items[0].blocker.blocks(), Tri::True);
    assert_eq!(items[1].decision, Decision::Keep(Keep::Held));
    let Blocker::Socket { holders, .. } = &items[1].blocker;
    assert_eq!(
        holders.iter().map(|o| o.pid).collect::<Vec<_>>(),
        [4242, 4243]
    );
    assert_eq!(verdict_after(&items), Verdict::Blocked);
    assert_eq!(verdict_after(&items[..1]), Verdict::Clear);
    assert_eq!(verdict_after(&[]), Verdict::Clear);
    let maybe = plan_sockets([&tw_maybe], |_| Vec::new(), NEW);
    assert_eq!(verdict_after(&maybe), Verdict::Unknown);
}
