//! Tests of the failure log: prediction scores, blockers of a failure, log lines, caps, dates.

use super::*;
use crate::model::{SocketFlags, State};
use std::time::Duration;

fn event(call: Call, errno: Option<Errno>, addr: &str, port: u16, reuseaddr: bool) -> Event {
    Event {
        call,
        pid: 10,
        tgid: 9,
        uid: 0,
        netns: 1,
        errno,
        protocol: Some(Protocol::Tcp),
        address: addr.parse().unwrap(),
        port,
        flags: Some(CallFlags {
            reuseaddr,
            reuseport: false,
            v6only: false,
            ifindex: 0,
        }),
        comm: "t".into(),
    }
}

#[test]
fn scores_every_combination() {
    use Errno::*;
    use Outcome::*;
    use Verdict::*;
    let cases = [
        (None, Some(Eaddrinuse), Protocol::Tcp, false, None),
        (
            Some(Blocked),
            Some(Eaddrinuse),
            Protocol::Tcp,
            false,
            Some(Hit),
        ),
        (Some(Blocked), None, Protocol::Tcp, false, Some(Miss)),
        (Some(Blocked), None, Protocol::Tcp, true, Some(Undecided)),
        (Some(Blocked), None, Protocol::Udp, true, Some(Miss)),
        (Some(Clear), None, Protocol::Udp, false, Some(Hit)),
        (
            Some(Clear),
            Some(Eaddrinuse),
            Protocol::Tcp,
            false,
            Some(Miss),
        ),
        (
            Some(Unknown),
            Some(Eaddrinuse),
            Protocol::Tcp,
            false,
            Some(Undecided),
        ),
        (Some(Unknown), None, Protocol::Tcp, false, Some(Undecided)),
        (
            Some(Clear),
            Some(Eacces),
            Protocol::Tcp,
            false,
            Some(Undecided),
        ),
        (
            Some(Blocked),
            Some(Eaddrnotavail),
            Protocol::Tcp,
            false,
            Some(Undecided),
        ),
    ];
    for (before, errno, p, bound, want) in cases {
        assert_eq!(
            score(before, errno, p, bound),
            want,
            "{before:?} {errno:?} {p} {bound}"
        );
    }
}

fn empty_snapshot() -> Snapshot {
    Snapshot {
        taken_at: SystemTime::now(),
        source: crate::model::SourceKind::Netlink,
        counts: Default::default(),
        listeners: Vec::new(),
        port_sockets: Vec::new(),
        risks: Vec::new(),
        allocation: Default::default(),
        capabilities: Default::default(),
        ports_dropped_total: 0,
        ports: Default::default(),
        owners: Default::default(),
        holdings: Default::default(),
        watched: Vec::new(),
        ephemeral_top: Vec::new(),
        bindv6only: false,
        table_taken_at: SystemTime::now(),
        memory_unexplained_total: 0,
        unix: Default::default(),
    }
}

fn tw(local: &str, remote: &str, ms: u64) -> Socket {
    Socket {
        inode: 0,
        expires_ms: Some(ms),
        ..Socket::test(State::TimeWait, local, remote)
    }
}

// Long on purpose: one scenario (snapshot, failure, every field of its record) read top to bottom.
#[test]
fn time_waits_of_a_listener_without_reuseaddr_explain_the_failure() {
    let mut socks: Vec<Socket> = (0..12)
        .map(|i| {
            tw(
                "10.0.0.1:443",
                &format!("10.0.0.2:{}", 40000 + i),
                41_000 - i * 100,
            )
        })
        .collect();
    let listener = Socket {
        flags: SocketFlags {
            reuseaddr: Tri::False,
            reuseport: Tri::False,
        },
        ..Socket::test(State::Listen, "0.0.0.0:443", "0.0.0.0:0")
    };
    let mut snap = empty_snapshot();
    snap.ports.insert((Protocol::Tcp, 443));
    snap.port_sockets = socks.clone();
    let restart = rebind::judge_restart(&listener, &socks);
    snap.risks.push(crate::model::EndpointRisk {
        endpoint: crate::model::Endpoint {
            protocol: Protocol::Tcp,
            address: crate::model::V4_ANY,
            port: 443,
        },
        listener: listener.clone(),
        owner: Some(Owner {
            pid: 1234,
            process: "nginx".into(),
            uid: 0,
            user: "root".into(),
            unit: None,
        }),
        gone: true,
        holding: Default::default(),
        without_reuseaddr: restart.without_reuseaddr,
        with_reuseaddr: restart.with_reuseaddr,
        restart: restart.own_flags,
    });
    enrich(&mut socks, Some(&snap));
    assert!(socks.iter().all(|s| s.flags.reuseaddr == Tri::False));
    let e = Event {
        comm: "nginx".into(),
        tgid: 1234,
        ..event(Call::Bind, Some(Errno::Eaddrinuse), "0.0.0.0", 443, false)
    };
    let f = explain(&Observed {
        event: &e,
        protocol: Protocol::Tcp,
        at: std::time::UNIX_EPOCH + Duration::from_secs(1_764_633_600),
        netns: "host".into(),
        process: "nginx".into(),
        sockets: &socks,
        snapshot: Some(&snap),
    })
    .unwrap();
    assert_eq!(f.verdict_before, Some(Verdict::Blocked));
    assert_eq!(f.blockers.len(), 12);
    assert_eq!(f.blockers[0].state, "time_wait");
    assert_eq!(f.blockers[0].owner.as_deref(), Some("nginx"));
    assert_eq!(f.time, "2025-12-02T00:00:00.000Z");
    assert_eq!(
        log_line(&f),
        "bind(0.0.0.0:443) by nginx[1234] failed: EADDRINUSE; 12 time_wait from nginx \
             (SO_REUSEADDR off) blocked it; clear in 41 s; predicted blocked"
    );
    // With SO_REUSEADDR on both sides, TIME_WAIT does not block: clear before.
    let mut reuse = socks.clone();
    for s in &mut reuse {
        s.flags.reuseaddr = Tri::True;
    }
    snap.port_sockets = reuse;
    let e2 = event(Call::Bind, None, "0.0.0.0", 443, true);
    assert_eq!(
        verdict_before(&e2, Protocol::Tcp, &snap),
        Some(Verdict::Clear)
    );
    // A port the agent does not watch has no verdict.
    let e3 = event(Call::Bind, None, "0.0.0.0", 444, true);
    assert_eq!(verdict_before(&e3, Protocol::Tcp, &snap), None);
}

#[test]
fn log_lines_of_other_errors() {
    let mut snap = empty_snapshot();
    snap.ports.insert((Protocol::Tcp, 80));
    let cases = [
            (Call::Bind, Errno::Eacces, "0.0.0.0", 80, "bind(0.0.0.0:80) by web[9] failed: EACCES; a port below net.ipv4.ip_unprivileged_port_start needs CAP_NET_BIND_SERVICE; predicted clear"),
            (Call::Connect, Errno::Eaddrnotavail, "127.0.0.1", 5432, "connect(127.0.0.1:5432) by web[9] failed: EADDRNOTAVAIL; no free source port for this destination (net.ipv4.ip_local_port_range); port not watched"),
            (Call::Bind, Errno::Eaddrinuse, "::1", 80, "bind([::1]:80) by web[9] failed: EADDRINUSE; no blocking socket was left a moment later; predicted clear"),
        ];
    for (call, errno, addr, port, want) in cases {
        let e = event(call, Some(errno), addr, port, false);
        let f = explain(&Observed {
            event: &e,
            protocol: Protocol::Tcp,
            at: SystemTime::now(),
            netns: "host".into(),
            process: "web".into(),
            sockets: &[],
            snapshot: Some(&snap),
        })
        .unwrap();
        assert_eq!(log_line(&f), want);
    }
}

#[test]
fn counters_are_capped_by_port() {
    let mut log = FailureLog::new(2);
    for port in [1, 2, 3, 1, 2, 3] {
        log.count(
            None,
            Call::Bind,
            Protocol::Tcp,
            port,
            Errno::Eaddrinuse,
            "a",
        );
    }
    log.count(None, Call::Listen, Protocol::Tcp, 1, Errno::Eaddrinuse, "b");
    assert_eq!(
        log.counters.bind.len(),
        3,
        "ports 1 and 2, two processes on 1"
    );
    assert_eq!(log.counters.dropped, 2);
    assert_eq!(
        log.counters.bind[&(None, Protocol::Tcp, 1, Errno::Eaddrinuse, "a".to_string())],
        2
    );
    for p in ["x", "y", "z", "x"] {
        log.count(
            Some("host"),
            Call::Connect,
            Protocol::Tcp,
            0,
            Errno::Eaddrnotavail,
            p,
        );
    }
    assert_eq!(log.counters.connect.len(), 2);
    assert_eq!(log.counters.dropped, 3);
    for _ in 0..LOG_CAPACITY + 5 {
        let e = event(Call::Bind, Some(Errno::Eaddrinuse), "0.0.0.0", 1, false);
        let f = explain(&Observed {
            event: &e,
            protocol: Protocol::Tcp,
            at: SystemTime::now(),
            netns: "host".into(),
            process: "a".into(),
            sockets: &[],
            snapshot: None,
        })
        .unwrap();
        log.push(f);
    }
    assert_eq!(log.recent.len(), LOG_CAPACITY);
}

#[test]
fn rfc3339_dates() {
    let cases = [
        (0u64, "1970-01-01T00:00:00.000Z"),
        (951_782_400, "2000-02-29T00:00:00.000Z"),
        (1_798_761_599, "2026-12-31T23:59:59.000Z"),
    ];
    for (s, want) in cases {
        assert_eq!(
            rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(s)),
            want
        );
    }
}

#[test]
fn a_blocking_listener_names_every_holder() {
    let listener = Socket {
        inode: 777,
        ..Socket::test(State::Listen, "0.0.0.0:8080", "0.0.0.0:0")
    };
    let holder = |pid: u32, ppid: u32| crate::model::Holder {
        pid,
        ppid,
        pgid: 100,
        sid: 100,
        process: "nginx".into(),
        uid: 0,
        user: "root".into(),
        start_time: u64::from(pid),
        unit: None,
        unit_cgroup: None,
    };
    let mut snap = empty_snapshot();
    snap.holdings.insert(
        777,
        crate::model::Holding {
            holders: vec![holder(100, 1), holder(101, 100), holder(102, 100)],
            main: Some(holder(100, 1)),
            complete: true,
            survival: Default::default(),
        },
    );
    let e = event(Call::Bind, Some(Errno::Eaddrinuse), "0.0.0.0", 8080, true);
    let observe = |snapshot| {
        explain(&Observed {
            event: &e,
            protocol: Protocol::Tcp,
            at: SystemTime::now(),
            netns: "host".into(),
            process: "nginx".into(),
            sockets: std::slice::from_ref(&listener),
            snapshot,
        })
        .unwrap()
    };
    let f = observe(Some(&snap));
    assert_eq!(f.blockers.len(), 1, "{f:?}");
    assert_eq!(
        f.blockers[0].held_by.as_deref(),
        Some("nginx[100] root +2 workers")
    );
    // Without a poll that kept holders there is nothing to name.
    assert_eq!(observe(None).blockers[0].held_by, None);
}
