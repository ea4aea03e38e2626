//! Golden exposition: a hand-built `Snapshot` rendered in both formats, followed by
//! the HTTP server's own families as a scrape serves them, and compared
//! with the checked-in files under `tests/golden/` (node_exporter's `e2e-output.txt`
//! habit), and the text one passed through `promtool check metrics`. No root needed.
//!
//! After an intended change to what is rendered, regenerate and review the diff:
//!
//! ```sh
//! BINDWATCH_UPDATE_GOLDEN=1 cargo test --test golden_exposition
//! git diff tests/golden/
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use bindwatch::metrics::{self, Extras, Format, HttpMetrics, SelfMetrics};
use bindwatch::model::{
    Family, Listener, Owner, Protocol, ServiceStatus, Snapshot, Socket, SocketFlags, SourceKind,
    State, Status, Tri, UnixServiceStatus, UnixState, UnixType, UnixView,
};
use bindwatch::rebind;

const T0: u64 = 1_764_000_000;

fn sock(protocol: Protocol, state: State, local: &str, remote: &str, reuseaddr: Tri) -> Socket {
    Socket {
        protocol,
        state,
        local: local.parse::<SocketAddr>().expect("test address"),
        remote: remote.parse::<SocketAddr>().expect("test address"),
        uid: 33,
        inode: 0,
        ifindex: Some(0),
        expires_ms: None,
        v6only: Tri::False,
        flags: SocketFlags {
            reuseaddr,
            reuseport: Tri::False,
        },
        count: 1,
        cookie: 0,
    }
}

fn owner(pid: u32, process: &str, user: &str) -> Owner {
    Owner {
        pid,
        process: process.to_string(),
        uid: 33,
        user: user.to_string(),
        unit: Some(format!("{process}.service")),
    }
}

/// A node with a web server on :443 (SO_REUSEADDR, live connections), a daemon with an
/// awkward name on 127.0.0.1:8080 (no SO_REUSEADDR, TIME_WAIT leftovers), a listener on
/// an ephemeral port, a UDP DNS server, and two watched services.
fn snapshot() -> Snapshot {
    let t = UNIX_EPOCH + Duration::from_secs(T0);
    let mut s = Snapshot::empty(t, SourceKind::Netlink);
    s.table_taken_at = t - Duration::from_secs(30);
    let web = Socket {
        inode: 1001,
        ..sock(
            Protocol::Tcp,
            State::Listen,
            "0.0.0.0:443",
            "0.0.0.0:0",
            Tri::True,
        )
    };
    let odd = Socket {
        inode: 1002,
        ..sock(
            Protocol::Tcp,
            State::Listen,
            "127.0.0.1:8080",
            "0.0.0.0:0",
            Tri::False,
        )
    };
    let eph = Socket {
        inode: 1003,
        ..sock(
            Protocol::Tcp,
            State::Listen,
            "[::]:40000",
            "[::]:0",
            Tri::Unknown,
        )
    };
    let dns = Socket {
        inode: 1004,
        state: State::Close,
        ..sock(
            Protocol::Udp,
            State::Close,
            "0.0.0.0:53",
            "0.0.0.0:0",
            Tri::False,
        )
    };
    let mut port_sockets = vec![web.clone(), odd.clone(), eph.clone(), dns.clone()];
    port_sockets.push(Socket {
        inode: 2001,
        count: 5,
        ..sock(
            Protocol::Tcp,
            State::Established,
            "10.0.0.1:443",
            "10.0.0.9:50000",
            Tri::True,
        )
    });
    port_sockets.push(Socket {
        count: 4,
        expires_ms: Some(41_500),
        ..sock(
            Protocol::Tcp,
            State::TimeWait,
            "127.0.0.1:8080",
            "127.0.0.1:50100",
            Tri::False,
        )
    });
    let owners = [
        (1001, owner(100, "nginx", "www-data")),
        (1002, owner(200, "we\"ird\\name<x>", "33")),
        (1004, owner(300, "dnsmasq", "dnsmasq")),
    ];
    s.owners = owners.iter().cloned().collect::<HashMap<u64, Owner>>();
    for l in [&web, &odd, &eph, &dns] {
        s.listeners.push(Listener {
            socket: l.clone(),
            owner: s.owners.get(&l.inode).cloned(),
        });
        let r = rebind::judge_restart(l, &port_sockets);
        s.risks.push(bindwatch::model::EndpointRisk {
            endpoint: bindwatch::model::Endpoint {
                protocol: l.protocol,
                address: l.local.ip(),
                port: l.local.port(),
            },
            listener: l.clone(),
            owner: s.owners.get(&l.inode).cloned(),
            gone: false,
            holding: Default::default(),
            without_reuseaddr: r.without_reuseaddr,
            with_reuseaddr: r.with_reuseaddr,
            restart: r.own_flags,
        });
    }
    s.ports = port_sockets
        .iter()
        .map(|x| (x.protocol, x.local.port()))
        .collect::<BTreeSet<_>>();
    s.port_sockets = port_sockets;
    for (proto, fam, st, n) in [
        (Protocol::Tcp, Family::Ipv4, State::Listen, 2),
        (Protocol::Tcp, Family::Ipv6, State::Listen, 1),
        (Protocol::Tcp, Family::Ipv4, State::Established, 5),
        (Protocol::Tcp, Family::Ipv4, State::TimeWait, 4),
        (Protocol::Udp, Family::Ipv4, State::Close, 1),
    ] {
        s.counts.insert((proto, fam, st), n);
    }
    s.watched = vec![
        ServiceStatus {
            name: "web".into(),
            protocol: Protocol::Tcp,
            port: 443,
            status: Status::Ok,
            detail: "nginx listens".into(),
        },
        ServiceStatus {
            name: "api".into(),
            protocol: Protocol::Tcp,
            port: 8080,
            status: Status::ForeignOwner,
            detail: "another process listens".into(),
        },
    ];
    s.ephemeral_top = vec![(
        (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.9".parse().expect("ip"),
            5432,
        ),
        120,
    )];
    s.ports_dropped_total = 3;
    let mut unix_counts = std::collections::BTreeMap::new();
    for t in UnixType::ALL {
        for st in UnixState::ALL {
            unix_counts.insert((t, st), 0);
        }
    }
    unix_counts.insert((UnixType::Stream, UnixState::Listen), 12);
    unix_counts.insert((UnixType::Stream, UnixState::Connected), 140);
    unix_counts.insert((UnixType::Dgram, UnixState::Unconnected), 9);
    s.unix = UnixView {
        counts: Some(unix_counts),
        watched: vec![
            UnixServiceStatus {
                name: "app".into(),
                address: "/run/app.sock".into(),
                status: Status::Ok,
                path_state: "held",
                detail: "nginx[100] (user www-data) listens".into(),
                accept_queue: Some(3),
                accept_queue_limit: Some(511),
            },
            UnixServiceStatus {
                name: "worker".into(),
                address: "/run/worker.sock".into(),
                status: Status::Blocked,
                path_state: "stale",
                detail: "nothing listens and a bind would fail with EADDRINUSE".into(),
                accept_queue: None,
                accept_queue_limit: None,
            },
        ],
    };
    s
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The revision changes with every commit; the golden files carry a placeholder.
fn normalise(body: &str) -> String {
    body.replace(
        &format!("revision=\"{}\"", metrics::REVISION),
        "revision=\"REVISION\"",
    )
}

fn compare(name: &str, got: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("BINDWATCH_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).expect("create tests/golden");
        std::fs::write(&path, got).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with BINDWATCH_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    if want != got {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  want {a}\n  got  {b}", i + 1))
            .collect();
        panic!(
            "{} differs ({} vs {} lines):\n{}\nIf the change is intended: \
             BINDWATCH_UPDATE_GOLDEN=1 cargo test --test golden_exposition, then review git diff",
            path.display(),
            want.lines().count(),
            got.lines().count(),
            diff.join("\n")
        );
    }
}

fn rendered() -> metrics::Exposition {
    let snap = snapshot();
    let extras = Extras {
        last_success_unix: Some(T0 as f64),
        config_reload_ok: Some(true),
        poll_cpu_seconds_total: 1.25,
        cpu_budget: 0.01,
        state_file_stopped: Some(false),
        bind_events: Some(Some(bindwatch::model::Counters {
            lost: 12,
            ..Default::default()
        })),
        bound_tracking: Some(bindwatch::model::BoundTracking {
            fallbacks: [1, 40, 0, 2, 0],
            reconciliations: 3,
            missed: 1,
            extra: 0,
        }),
        ..Extras::default()
    };
    let poll = metrics::render_all(&[(None, &snap)], &SelfMetrics::new(), &extras);
    // What a scrape appends: the server's families, then OpenMetrics' `# EOF`.
    let http = HttpMetrics::new(false);
    metrics::Exposition {
        text: poll.text + &http.tail(Format::Text),
        openmetrics: poll.openmetrics + &http.tail(Format::OpenMetrics),
    }
}

#[test]
fn text_exposition_matches_the_golden_file_and_promtool_accepts_it() {
    let text = normalise(&rendered().text);
    // The hand-built node is really in there (a failing renderer cannot match by luck).
    assert!(text.contains("bindwatch_rebind_blocked{protocol=\"tcp\",address=\"127.0.0.1\",port=\"8080\",reuseaddr=\"true\"} 1"), "{text}");
    assert!(
        text.contains("process=\"we\\\"ird\\\\name<x>\""),
        "label escaping: {text}"
    );
    compare("exposition.prom", &text);

    let path = std::env::temp_dir().join(format!("bindwatch-golden-{}.prom", std::process::id()));
    std::fs::write(&path, &text).expect("write temp exposition");
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).expect("open temp exposition"))
        .output()
        .expect("promtool (installed by scripts/install-test-deps.sh)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn openmetrics_exposition_matches_the_golden_file() {
    let om = normalise(&rendered().openmetrics);
    assert!(om.ends_with("# EOF\n"), "{om}");
    compare("exposition.openmetrics", &om);
}

#[test]
fn rendering_is_deterministic() {
    let a = rendered();
    let b = rendered();
    assert_eq!(a.text, b.text);
    assert_eq!(a.openmetrics, b.openmetrics);
}
