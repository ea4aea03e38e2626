//! Table tests of when a remembered listener generation decides a leftover's flags.

use super::*;
use crate::model::SocketFlags;
use Tri::{False as F, True as T, Unknown as U};

const NOW: f64 = 1_000_000.0;

fn clock() -> Clock {
    Clock {
        now: NOW,
        fin_timeout: 60.0,
        previous_poll: Some(NOW - 5.0),
    }
}

fn listener(local: &str, ra: Tri, rp: Tri, v6only: Tri, ifindex: Option<u32>) -> Socket {
    Socket {
        inode: 100,
        ifindex,
        v6only,
        flags: SocketFlags {
            reuseaddr: ra,
            reuseport: rp,
        },
        ..Socket::test(State::Listen, local, "0.0.0.0:0")
    }
}

fn generation(l: Socket, last_ago: f64, gone_ago: Option<f64>) -> Generation {
    Generation {
        listener: l,
        first_seen: NOW - 3600.0,
        last_seen: NOW - last_ago,
        gone_at: gone_ago.map(|g| NOW - g),
        interval: 5.0,
        children: Vec::new(),
    }
}

/// A TIME_WAIT created `age` seconds ago.
fn tw(local: &str, age: f64) -> Socket {
    Socket {
        inode: 0,
        expires_ms: Some(((TIME_WAIT_LEN - age) * 1000.0) as u64),
        ..Socket::test(State::TimeWait, local, "127.0.0.9:40000")
    }
}

fn v4(ra: Tri) -> Socket {
    listener("0.0.0.0:80", ra, F, F, Some(0))
}

fn inh(ra: Tri, rp: Tri, v6: Tri, basis: Basis) -> Outcome {
    Outcome::Inherited(Inherited {
        reuseaddr: ra,
        reuseport: rp,
        v6only: v6,
        basis,
    })
}

use Basis::{Coexisted as C, DeathWindow as D};

/// One row per case of the rule: (what it shows, generations as (listener,
/// last seen ago, gone ago), leftover, expected outcome).
// Long on purpose: one table, one row per case; split, the cases would hide.
#[allow(clippy::type_complexity)]
fn table() -> Vec<(
    &'static str,
    Vec<(Socket, f64, Option<f64>)>,
    Socket,
    Outcome,
)> {
    vec![
        (
            "live exclusive listener without SO_REUSEADDR: its TIME_WAIT is its child",
            vec![(v4(F), 0.0, None)],
            tw("127.0.0.1:80", 10.0),
            inh(F, F, U, C),
        ),
        (
            "live exclusive listener with SO_REUSEADDR: only SO_REUSEADDR is proven",
            vec![(v4(T), 0.0, None)],
            tw("127.0.0.1:80", 10.0),
            inh(T, U, U, C),
        ),
        (
            "created before the last sighting: proven although the listener is gone",
            vec![(v4(T), 8.0, Some(3.0))],
            tw("127.0.0.1:80", 20.0),
            inh(T, U, U, C),
        ),
        (
            "the daemon died between two polls: its leftovers are trusted to it",
            vec![(v4(T), 4.0, Some(0.5))],
            tw("127.0.0.1:80", 2.0),
            inh(T, U, U, D),
        ),
        (
            "case 2: created after the poll that saw the listener gone",
            vec![(v4(T), 6.0, Some(1.0))],
            tw("127.0.0.1:80", 0.5),
            Outcome::Unexplained,
        ),
        (
            "case 1: a dead agent's memory, leftover long after its last poll",
            vec![(v4(T), 30.0, None)],
            tw("127.0.0.1:80", 3.0),
            Outcome::Unexplained,
        ),
        (
            "no gone_at (the writer stopped): the capped window",
            vec![(v4(T), 7.0, None)],
            tw("127.0.0.1:80", 3.0),
            inh(T, U, U, D),
        ),
        (
            "a stalled poller does not stretch the window",
            vec![(v4(T), 20.0, Some(1.0))],
            tw("127.0.0.1:80", 5.0),
            Outcome::Unexplained,
        ),
        (
            "the poll that saw it gone came late (a slow poll): still its window",
            vec![(v4(T), 6.5, Some(0.2))],
            tw("127.0.0.1:80", 1.0),
            inh(T, U, U, D),
        ),
        (
            "a forked child closes long after the listener, cookie never read: cannot be linked",
            vec![(v4(F), 40.0, Some(35.0))],
            tw("127.0.0.1:80", 1.0),
            Outcome::Unexplained,
        ),
        (
            "restart: the new generation proves what the old one cannot",
            vec![(v4(T), 40.0, Some(35.0)), (v4(F), 0.0, None)],
            tw("127.0.0.1:80", 1.0),
            inh(F, F, U, C),
        ),
        (
            "restart: proofs beat the old generation's death window",
            vec![(v4(F), 4.0, Some(1.0)), (v4(T), 0.0, None)],
            tw("127.0.0.1:80", 2.0),
            inh(T, U, U, C),
        ),
        (
            "two death windows that disagree: unknown",
            vec![
                (listener("127.0.0.1:80", T, F, F, Some(0)), 4.0, Some(0.5)),
                (v4(F), 3.0, Some(0.5)),
            ],
            tw("127.0.0.1:80", 1.0),
            Outcome::Unexplained,
        ),
        (
            "SO_REUSEPORT group: an unseen member may differ in SO_REUSEADDR",
            vec![(listener("0.0.0.0:80", T, T, F, Some(0)), 0.0, None)],
            tw("127.0.0.1:80", 10.0),
            Outcome::Unexplained,
        ),
        (
            "SO_REUSEPORT without SO_REUSEADDR: only SO_REUSEPORT follows",
            vec![(listener("0.0.0.0:80", F, T, F, Some(0)), 0.0, None)],
            tw("127.0.0.1:80", 10.0),
            inh(U, T, U, C),
        ),
        (
            "unknown SO_REUSEPORT of the listener proves nothing",
            vec![(listener("0.0.0.0:80", F, U, F, Some(0)), 0.0, None)],
            tw("127.0.0.1:80", 10.0),
            Outcome::Unexplained,
        ),
        (
            "a device-bound (or unknown-device) listener proves nothing",
            vec![(listener("0.0.0.0:80", F, F, F, None), 0.0, None)],
            tw("127.0.0.1:80", 10.0),
            Outcome::Unexplained,
        ),
        (
            "another address of the port: not its parent",
            vec![(listener("127.0.0.2:80", F, F, F, Some(0)), 0.0, None)],
            tw("127.0.0.1:80", 10.0),
            Outcome::NoMemory,
        ),
        (
            "dual-stack [::]: a mapped child copies V6ONLY off",
            vec![(listener("[::]:80", F, F, F, Some(0)), 0.0, None)],
            tw("[::ffff:127.0.0.1]:80", 10.0),
            inh(F, F, F, C),
        ),
        (
            "[::] with unknown V6ONLY is not the parent of a mapped child",
            vec![(listener("[::]:80", F, F, U, Some(0)), 0.0, None)],
            tw("[::ffff:127.0.0.1]:80", 10.0),
            Outcome::NoMemory,
        ),
        (
            "IPv6 child of a V6ONLY listener without SO_REUSEADDR copies V6ONLY",
            vec![(listener("[::]:80", F, F, T, Some(0)), 0.0, None)],
            tw("[::1]:80", 10.0),
            inh(F, F, T, C),
        ),
    ]
}

#[test]
fn rule_table() {
    for (what, gens, leftover, want) in table() {
        let gens: Vec<Generation> = gens
            .into_iter()
            .map(|(l, last, gone)| generation(l, last, gone))
            .collect();
        assert_eq!(attribute(&leftover, &gens, &clock()), want, "{what}");
    }
}

#[test]
fn a_cookie_seen_while_it_listened_links_a_late_time_wait() {
    // Server closed first; the peer's FIN came after the listener was gone, so
    // the TIME_WAIT's timer is younger than the listener's death window.
    let mut g = generation(v4(T), 6.0, Some(1.0));
    let late = Socket {
        cookie: 77,
        ..tw("127.0.0.1:80", 0.5)
    };
    assert_eq!(
        attribute(&late, std::slice::from_ref(&g), &clock()),
        Outcome::Unexplained
    );
    g.children = vec![12, 77, 90];
    assert_eq!(
        attribute(&late, std::slice::from_ref(&g), &clock()),
        inh(T, U, U, C)
    );
    // Another cookie, or a folded entry standing for many sockets: no link.
    let other = Socket {
        cookie: 78,
        ..late.clone()
    };
    assert_eq!(
        attribute(&other, std::slice::from_ref(&g), &clock()),
        Outcome::Unexplained
    );
    let folded = Socket {
        count: 2,
        ..late.clone()
    };
    assert_eq!(
        attribute(&folded, std::slice::from_ref(&g), &clock()),
        Outcome::Unexplained
    );
    // A cookie proves coexistence only with an exclusive listener.
    g.listener.flags.reuseport = T;
    assert_eq!(attribute(&late, &[g], &clock()), Outcome::Unexplained);
}

#[test]
fn a_table_view_older_than_the_generation_proves_nothing() {
    // The CPU budget reuses a walk taken 20 s ago; the listener was first seen
    // 10 s ago: the TIME_WAIT read then may have expired before it came.
    let g = Generation {
        first_seen: NOW - 10.0,
        ..generation(v4(F), 0.0, None)
    };
    let stale = Clock {
        now: NOW - 20.0,
        ..clock()
    };
    let mut l = tw("127.0.0.1:80", 30.0);
    assert_eq!(
        attribute(&l, std::slice::from_ref(&g), &stale),
        Outcome::Unexplained
    );
    // Read after its first sighting, the same leftover is its child.
    l.expires_ms = Some(30_000);
    assert_eq!(attribute(&l, &[g], &clock()), inh(F, F, U, C));
}

#[test]
fn existence_estimates_are_never_earlier_than_the_kernel_allows() {
    let c = clock();
    let t = tw("127.0.0.1:80", 12.0);
    assert!((existed_at(&t, &c) - (NOW - 12.0 + TIMER_SLACK)).abs() < 1e-6);
    // An orphan without a usable timer only proves that it exists now.
    let orphan = Socket {
        inode: 0,
        expires_ms: Some(200),
        ..Socket::test(State::FinWait1, "127.0.0.1:80", "127.0.0.9:1")
    };
    assert_eq!(existed_at(&orphan, &c), NOW);
    // FIN_WAIT2 timewait sock: tcp_fin_timeout; above it (keepalive phase): now.
    let fw2 = |ms| Socket {
        inode: 0,
        expires_ms: Some(ms),
        ..Socket::test(State::FinWait2, "127.0.0.1:80", "127.0.0.9:1")
    };
    let short = Clock {
        fin_timeout: 30.0,
        ..c
    };
    assert!((existed_at(&fw2(20_000), &short) - (NOW - 10.0 + TIMER_SLACK)).abs() < 1e-6);
    assert_eq!(existed_at(&fw2(50_000), &short), NOW);
    // A FIN_WAIT2 with a file (half-closed by shutdown) has no timewait timer.
    let with_file = Socket {
        inode: 5,
        ..fw2(20_000)
    };
    assert_eq!(existed_at(&with_file, &short), NOW);
}

#[test]
fn known_flags_are_kept_and_unexplained_are_counted_once() {
    let gens = vec![generation(v4(T), 6.0, Some(1.0))];
    let mut own = tw("127.0.0.1:80", 0.5);
    own.flags.reuseaddr = F; // read from the kernel (BPF): memory is not asked
    own.flags.reuseport = F;
    let mut socks = vec![
        own,
        Socket {
            count: 3,
            ..tw("127.0.0.1:80", 0.5)
        },
        tw("127.0.0.1:80", 5.5),
        Socket {
            count: 2,
            ..tw("127.0.0.1:80", 20.0)
        },
    ];
    let t = inherit(&mut socks, &gens, &clock());
    assert_eq!(socks[0].flags.reuseaddr, F, "known flags win");
    assert_eq!(socks[1].flags.reuseaddr, U);
    assert_eq!(socks[2].flags.reuseaddr, T, "death window");
    assert_eq!(socks[3].flags.reuseaddr, T, "coexisted");
    assert_eq!(
        t,
        Tally {
            inherited: 3,
            unexplained: 3,
            unexplained_new: 3,
        }
    );
    // The same leftovers one poll later are no longer new.
    let later = Clock {
        previous_poll: Some(NOW),
        ..clock()
    };
    let mut again = vec![tw("127.0.0.1:80", 0.5)];
    assert_eq!(inherit(&mut again, &gens, &later).unexplained_new, 0);
}
