//! Table tests of the bind-conflict engine (the kernel checks them too: tests/rebind_oracle.rs).

use super::*;
use crate::model::SocketFlags;

fn sock(state: State, local: &str, reuseaddr: Tri, v6only: Tri) -> Socket {
    Socket {
        uid: 1000,
        v6only,
        flags: SocketFlags {
            reuseaddr,
            reuseport: Tri::False,
        },
        ..Socket::test(state, local, "0.0.0.0:0")
    }
}

fn cand(addr: &str, reuseaddr: bool, v6only: bool) -> Candidate {
    Candidate {
        protocol: Protocol::Tcp,
        address: addr.parse().unwrap(),
        port: 80,
        v6only: Tri::from_bool(v6only),
        reuseaddr,
        reuseport: Tri::False,
        uid: 1000,
        ifindex: 0,
    }
}

use State::*;
use Tri::{False as F, True as T, Unknown as U};

/// The one restart policy (`judge_restart` / `own_flags`): listener flag x leftovers.
#[test]
fn restart_with_the_listeners_own_flags() {
    let tw = |reuse: Tri, peer: &str| Socket {
        inode: 0,
        remote: peer.parse().unwrap(),
        expires_ms: Some(30_000),
        ..sock(TimeWait, "0.0.0.0:80", reuse, F)
    };
    let listener = |reuse: Tri| Socket {
        inode: 7,
        ..sock(Listen, "0.0.0.0:80", reuse, F)
    };
    // (listener's SO_REUSEADDR, leftovers, verdict, certain blockers, undecided blockers)
    let cases: [(Tri, Vec<Socket>, Verdict, usize, usize); 8] = [
        (T, vec![], Verdict::Clear, 0, 0),
        (F, vec![], Verdict::Clear, 0, 0),
        (U, vec![], Verdict::Clear, 0, 0),
        (T, vec![tw(T, "10.0.0.1:1")], Verdict::Clear, 0, 0),
        (F, vec![tw(F, "10.0.0.1:1")], Verdict::Blocked, 1, 0),
        // Both answers block on the reuse=0 leftover: certain; the reuse=1 one blocks
        // only a daemon without SO_REUSEADDR, which nobody could see.
        (
            U,
            vec![tw(F, "10.0.0.1:1"), tw(T, "10.0.0.2:1")],
            Verdict::Blocked,
            1,
            1,
        ),
        // Without: blocked, with: clear; the daemon's own flag decides.
        (U, vec![tw(T, "10.0.0.1:1")], Verdict::Unknown, 0, 1),
        // The leftover's own flag is unknown too: undecided either way.
        (U, vec![tw(U, "10.0.0.1:1")], Verdict::Unknown, 0, 1),
    ];
    for (i, (reuse, left, verdict, certain, undecided)) in cases.into_iter().enumerate() {
        let l = listener(reuse);
        let mut on_port = left.clone();
        on_port.push(l.clone());
        let r = judge_restart(&l, &on_port);
        let j = &r.own_flags;
        assert_eq!(j.verdict, verdict, "case {i}: {j:?}");
        assert_eq!(
            j.blocking().count(),
            certain,
            "case {i}: certain blockers {j:?}"
        );
        let open = j.findings.iter().filter(|f| f.blocks == Tri::Unknown);
        assert_eq!(
            open.count(),
            undecided,
            "case {i}: undecided blockers {j:?}"
        );
        match reuse {
            T => assert_eq!(j.verdict, r.with_reuseaddr.verdict, "case {i}"),
            F => assert_eq!(j.verdict, r.without_reuseaddr.verdict, "case {i}"),
            U => {
                for f in j.findings.iter().filter(|f| f.blocks == Tri::Unknown) {
                    assert!(!f.undecided_by.is_empty(), "case {i}: says what decides");
                }
            }
        }
    }
}

/// One row: (old state, old local, old reuseaddr, old v6only, new addr, new reuseaddr,
/// new v6only, verdict).
type Row = (
    State,
    &'static str,
    Tri,
    Tri,
    &'static str,
    bool,
    bool,
    Verdict,
);

#[rustfmt::skip]
    const TABLE: &[Row] = &[
        // Listeners: SO_REUSEADDR never helps.
        (Listen, "0.0.0.0:80", T, F, "0.0.0.0", true, false, Verdict::Blocked),
        (Listen, "0.0.0.0:80", T, F, "127.0.0.1", true, false, Verdict::Blocked),
        (Listen, "127.0.0.1:80", F, F, "127.0.0.2", false, false, Verdict::Clear),
        (Listen, "127.0.0.1:80", F, F, "0.0.0.0", false, false, Verdict::Blocked),
        (Listen, "127.0.0.1:80", F, F, "::", false, false, Verdict::Blocked),
        (Listen, "127.0.0.1:80", F, F, "::", false, true, Verdict::Clear),
        (Listen, "127.0.0.1:80", F, F, "::1", false, true, Verdict::Clear),
        (Listen, "[::]:80", F, F, "127.0.0.1", false, false, Verdict::Blocked),
        (Listen, "[::]:80", F, T, "127.0.0.1", false, false, Verdict::Clear),
        (Listen, "[::]:80", F, T, "0.0.0.0", false, false, Verdict::Clear),
        (Listen, "[::]:80", F, T, "::1", false, true, Verdict::Blocked),
        (Listen, "[::1]:80", F, T, "0.0.0.0", false, false, Verdict::Clear),
        (Listen, "[::1]:80", F, T, "::", false, true, Verdict::Blocked),
        (Listen, "[::1]:80", F, T, "::", false, false, Verdict::Blocked),
        // Leftovers: both need SO_REUSEADDR.
        (TimeWait, "127.0.0.1:80", T, F, "0.0.0.0", true, false, Verdict::Clear),
        (TimeWait, "127.0.0.1:80", T, F, "0.0.0.0", false, false, Verdict::Blocked),
        (TimeWait, "127.0.0.1:80", F, F, "0.0.0.0", true, false, Verdict::Blocked),
        (TimeWait, "127.0.0.1:80", U, F, "0.0.0.0", true, false, Verdict::Unknown),
        (TimeWait, "127.0.0.1:80", U, F, "0.0.0.0", false, false, Verdict::Blocked),
        (TimeWait, "127.0.0.1:80", U, F, "127.0.0.2", true, false, Verdict::Clear),
        // A dual-stack child on ::1 overlaps 0.0.0.0; a V6ONLY one does not.
        (TimeWait, "[::1]:80", F, F, "0.0.0.0", false, false, Verdict::Blocked),
        (TimeWait, "[::1]:80", F, T, "0.0.0.0", false, false, Verdict::Clear),
        (TimeWait, "[::1]:80", F, U, "0.0.0.0", false, false, Verdict::Unknown),
        (TimeWait, "[::1]:80", F, U, "127.0.0.1", false, false, Verdict::Clear),
        (Established, "[::1]:80", F, F, "127.0.0.6", false, false, Verdict::Clear),
        // Mapped children behave as IPv4.
        (Established, "[::ffff:127.0.0.1]:80", F, F, "127.0.0.1", false, false, Verdict::Blocked),
        (Established, "[::ffff:127.0.0.1]:80", F, F, "127.0.0.2", false, false, Verdict::Clear),
        (Established, "[::ffff:127.0.0.1]:80", F, F, "::", false, true, Verdict::Clear),
        (Established, "[::ffff:127.0.0.1]:80", F, F, "::", false, false, Verdict::Blocked),
    ];

#[test]
fn bind_rules_table() {
    for (i, &(st, local, ra, v6, addr, nra, nv6, want)) in TABLE.iter().enumerate() {
        let old = sock(st, local, ra, v6);
        let j = judge(&cand(addr, nra, nv6), [&old]);
        assert_eq!(
            j.verdict, want,
            "row {i}: {st:?} {local} ra={ra:?} v6={v6:?} vs new {addr} ra={nra} v6only={nv6}"
        );
    }
}

#[test]
fn unknown_names_the_deciding_flag_only() {
    let old = sock(TimeWait, "127.0.0.1:80", U, F);
    let j = judge(&cand("0.0.0.0", true, false), [&old]);
    assert_eq!(
        j.findings[0].undecided_by,
        vec!["SO_REUSEADDR of the existing socket"]
    );
}

#[test]
fn reuseport_same_uid_or_time_wait() {
    let mut old = sock(Listen, "0.0.0.0:80", F, F);
    old.flags.reuseport = T;
    let mut c = cand("0.0.0.0", false, false);
    c.reuseport = T;
    assert_eq!(judge(&c, [&old]).verdict, Verdict::Clear);
    c.uid = 0;
    assert_eq!(judge(&c, [&old]).verdict, Verdict::Blocked);
    old.state = TimeWait;
    assert_eq!(
        judge(&c, [&old]).verdict,
        Verdict::Clear,
        "TIME_WAIT ignores the uid"
    );
}

#[test]
fn devices() {
    let mut old = sock(Listen, "0.0.0.0:80", F, F);
    old.ifindex = Some(2);
    let mut c = cand("0.0.0.0", false, false);
    c.ifindex = 3;
    assert_eq!(judge(&c, [&old]).verdict, Verdict::Clear);
    c.ifindex = 2;
    assert_eq!(judge(&c, [&old]).verdict, Verdict::Blocked);
    old.ifindex = None;
    assert_eq!(judge(&c, [&old]).verdict, Verdict::Unknown);
    c.ifindex = 0;
    assert_eq!(judge(&c, [&old]).verdict, Verdict::Blocked);
}

/// V6ONLY nobody reported, decided by the kernel's invariants (`implied_v6only`):
/// (existing socket, new socket, verdict).
#[test]
fn invariants_decide_unreported_v6only() {
    let udp = |s: Socket| Socket {
        protocol: Protocol::Udp,
        ..s
    };
    let udp_cand = |c: Candidate| Candidate {
        protocol: Protocol::Udp,
        ..c
    };
    let cases: [(&str, Socket, Candidate, Verdict); 8] = [
        // A TIME_WAIT on a v4-mapped address is IPv4 traffic: never V6ONLY, so it
        // meets 0.0.0.0 (not "cannot tell").
        (
            "mapped TIME_WAIT vs 0.0.0.0",
            sock(TimeWait, "[::ffff:127.0.0.1]:80", F, U),
            cand("0.0.0.0", false, false),
            Verdict::Blocked,
        ),
        (
            "mapped ESTABLISHED vs 0.0.0.0 with SO_REUSEADDR on both",
            sock(Established, "[::ffff:127.0.0.1]:80", T, U),
            cand("0.0.0.0", true, false),
            Verdict::Clear,
        ),
        (
            "mapped TIME_WAIT vs another IPv4 address",
            sock(TimeWait, "[::ffff:127.0.0.1]:80", F, U),
            cand("127.0.0.2", false, false),
            Verdict::Clear,
        ),
        // A listener on a specific IPv6 address was bound there: V6ONLY forced.
        (
            "listener on ::1 vs 0.0.0.0",
            sock(Listen, "[::1]:80", F, U),
            cand("0.0.0.0", false, false),
            Verdict::Clear,
        ),
        (
            "bound-only socket on ::1 vs 0.0.0.0",
            sock(BoundInactive, "[::1]:80", F, U),
            cand("0.0.0.0", false, false),
            Verdict::Clear,
        ),
        (
            "unconnected UDP on ::1 vs 0.0.0.0",
            udp(sock(Close, "[::1]:80", F, U)),
            udp_cand(cand("0.0.0.0", false, false)),
            Verdict::Clear,
        ),
        // A connection on ::1 may be a dual-stack listener's child (V6ONLY 0): open.
        (
            "connection on ::1 vs 0.0.0.0",
            sock(Established, "[::1]:80", F, U),
            cand("0.0.0.0", false, false),
            Verdict::Unknown,
        ),
        // The wildcard is V6ONLY only if someone said so: still open.
        (
            "listener on :: vs 0.0.0.0",
            sock(Listen, "[::]:80", F, U),
            cand("0.0.0.0", false, false),
            Verdict::Unknown,
        ),
    ];
    for (name, old, c, verdict) in cases {
        let j = judge(&c, [&old]);
        assert_eq!(j.verdict, verdict, "{name}: {j:?}");
    }
}

#[test]
fn udp_rules() {
    let mut old = sock(Close, "0.0.0.0:80", T, F);
    old.protocol = Protocol::Udp;
    let mut c = cand("127.0.0.1", true, false);
    c.protocol = Protocol::Udp;
    assert_eq!(judge(&c, [&old]).verdict, Verdict::Clear);
    c.reuseaddr = false;
    assert_eq!(judge(&c, [&old]).verdict, Verdict::Blocked);
    old.flags.reuseport = T;
    c.reuseport = T;
    assert_eq!(judge(&c, [&old]).verdict, Verdict::Clear);
}

#[test]
fn request_sockets_and_other_ports_never_block() {
    let a = sock(SynRecv, "0.0.0.0:80", F, F);
    let b = sock(Listen, "0.0.0.0:81", F, F);
    assert_eq!(
        judge(&cand("0.0.0.0", false, false), [&a, &b]).verdict,
        Verdict::Clear
    );
}

#[test]
fn inheritance_and_restart() {
    let listener = sock(Listen, "[::]:80", F, F);
    let mut child = sock(Established, "[::1]:80", U, U);
    child.inode = 7;
    let mut tw = sock(TimeWait, "[::1]:80", U, U);
    tw.inode = 0;
    tw.expires_ms = Some(41_500);
    let queued = Socket {
        inode: 0,
        ..sock(Established, "[::1]:80", U, U)
    };
    let mut all = vec![listener.clone(), child, tw, queued];
    inherit_from_listeners(&mut all, std::slice::from_ref(&listener));
    assert_eq!(all[2].flags.reuseaddr, F);
    assert_eq!(all[2].v6only, F);
    let left: Vec<_> = after_restart(&listener, &all).collect();
    assert_eq!(left.len(), 2, "listener and the unaccepted child vanish");
    let j = judge(&restart_candidate(&listener, true), left);
    assert_eq!(j.verdict, Verdict::Blocked);
    assert_eq!(j.findings.len(), 2);
    assert!(j
        .findings
        .iter()
        .all(|f| f.rule == Rule::OldWithoutReuseaddr));
    assert_eq!(j.clear_seconds(), Some(41.5));
}

#[test]
fn effective_v6only() {
    let v = |a: &str, r, d| Candidate::effective_v6only(a.parse().unwrap(), r, d);
    assert_eq!(v("::1", Some(false), false), T);
    assert_eq!(v("::", None, true), T);
    assert_eq!(v("::", None, false), F);
    assert_eq!(v("::", Some(true), false), T);
    assert_eq!(v("0.0.0.0", Some(true), true), F);
}
