//! The port-conflict monitor: declared services against the sockets that exist.
//! Pure: config + sockets + owners in, one status per service out. Also the
//! ephemeral-port exhaustion tally, fed socket by socket during the poll.

use std::collections::HashMap;
use std::net::IpAddr;

pub use crate::model::{Bucket, ServiceStatus, Status};
use crate::model::{Owner, OwnerMatch, Protocol, Service, Socket, State, Tri, V4_ANY, V6_ANY};
use crate::rebind::{self, Candidate, Verdict};

/// Does `owner` satisfy the expectation? An unknown owner (no privilege) is given
/// the benefit of the doubt: bindwatch never reports a foreign owner it cannot see.
pub fn owner_matches(expect: &OwnerMatch, owner: Option<&Owner>) -> bool {
    let Some(o) = owner else { return true };
    expect.process.as_ref().is_none_or(|p| *p == o.process)
        && expect
            .unit
            .as_ref()
            .is_none_or(|u| o.unit.as_ref() == Some(u))
        && expect
            .user
            .as_ref()
            .is_none_or(|u| *u == o.user || *u == o.uid.to_string())
}

fn covers(service_addrs: &[IpAddr], listener: IpAddr) -> bool {
    service_addrs.is_empty()
        || service_addrs.iter().any(|a| {
            *a == listener || listener.is_unspecified() && a.is_ipv6() == listener.is_ipv6()
        })
}

/// A live socket that holds the port without being a listener or the leftover of
/// one: an outgoing connection that got the port, or a client bound to it.
fn is_stolen_by(s: &Socket, listeners: &[Socket]) -> bool {
    let live = match s.protocol {
        Protocol::Tcp => matches!(
            s.state,
            State::Established | State::SynSent | State::BoundInactive | State::CloseWait
        ),
        Protocol::Udp => s.state == State::Established,
    };
    live && s.inode != 0 && rebind::parent_listener(s, listeners).is_none()
}

/// Judges every service. `sockets` are the sockets on the services' ports (with
/// inherited flags), `listeners` the live and remembered listeners (for telling
/// leftovers from thieves), `owners` by inode.
pub fn evaluate(
    services: &[Service],
    sockets: &[Socket],
    listeners: &[Socket],
    owners: &HashMap<u64, Owner>,
    bindv6only: bool,
) -> Vec<ServiceStatus> {
    services
        .iter()
        .map(|svc| {
            let on_port: Vec<&Socket> = sockets
                .iter()
                .filter(|s| s.protocol == svc.protocol && s.local.port() == svc.port)
                .collect();
            let (status, detail) = judge_service(svc, &on_port, listeners, owners, bindv6only);
            ServiceStatus {
                name: svc.name.clone(),
                protocol: svc.protocol,
                port: svc.port,
                status,
                detail,
            }
        })
        .collect()
}

fn judge_service(
    svc: &Service,
    on_port: &[&Socket],
    listeners: &[Socket],
    owners: &HashMap<u64, Owner>,
    bindv6only: bool,
) -> (Status, String) {
    if let Some(verdict) = who_listens(svc, on_port, owners) {
        return verdict;
    }
    if let Some(t) = on_port.iter().find(|s| is_stolen_by(s, listeners)) {
        let who = owners
            .get(&t.inode)
            .map_or("an unknown process".to_string(), |o| {
                format!("{} (pid {})", o.process, o.pid)
            });
        return (
            Status::Stolen,
            format!(
                "{who} holds {} in a {} socket to {}",
                t.local,
                t.state_label(),
                t.remote
            ),
        );
    }
    would_bind(svc, on_port, bindv6only)
}

/// Ok or ForeignOwner when something listens on the service's addresses.
fn who_listens(
    svc: &Service,
    on_port: &[&Socket],
    owners: &HashMap<u64, Owner>,
) -> Option<(Status, String)> {
    let live: Vec<&&Socket> = on_port
        .iter()
        .filter(|s| s.is_listener() && covers(&svc.addresses, s.local.ip()))
        .collect();
    let first = live.first()?;
    let describe = |s: &Socket| match owners.get(&s.inode) {
        Some(o) => o.summary(),
        None => "an unknown process".to_string(),
    };
    Some(
        match live
            .iter()
            .find(|s| owner_matches(&svc.owner, owners.get(&s.inode)))
        {
            Some(l) => (
                Status::Ok,
                format!("{} listens on {}", describe(l), l.local),
            ),
            None => (
                Status::ForeignOwner,
                format!("{} listens on {}", describe(first), first.local),
            ),
        },
    )
}

/// Nobody listens: Blocked when the daemon's bind (with its declared flags) would
/// fail on one of its addresses, else Missing.
fn would_bind(svc: &Service, on_port: &[&Socket], bindv6only: bool) -> (Status, String) {
    let addrs: Vec<IpAddr> = if svc.addresses.is_empty() {
        vec![V4_ANY, V6_ANY]
    } else {
        svc.addresses.clone()
    };
    let mut undecided = false;
    for a in addrs {
        let v6only = if svc.addresses.is_empty() && a.is_ipv6() {
            // One socket per family: the IPv6 wildcard does not also claim IPv4.
            Tri::True
        } else {
            Candidate::effective_v6only(a, None, bindv6only)
        };
        let c = Candidate {
            protocol: svc.protocol,
            address: a,
            port: svc.port,
            v6only,
            reuseaddr: svc.reuseaddr,
            reuseport: Tri::from_bool(svc.reuseport),
            // The daemon's uid is not declared; reuseport exemptions need the same uid.
            uid: u32::MAX,
            ifindex: 0,
        };
        let j = rebind::judge(&c, on_port.iter().copied());
        match j.verdict {
            Verdict::Blocked => {
                let n = j.blocking_count();
                let clear = j
                    .clear_seconds()
                    .map_or(String::new(), |s| format!(", clears in {s:.0} s"));
                return (
                    Status::Blocked,
                    format!("{n} socket(s) block a bind on {a}{clear}"),
                );
            }
            Verdict::Unknown => undecided = true,
            Verdict::Clear => {}
        }
    }
    let detail = if undecided {
        "nobody listens; whether a bind would fail depends on a flag nobody could read"
    } else {
        "nobody listens; a bind would succeed"
    };
    (Status::Missing, detail.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SocketFlags;

    fn sock(state: State, local: &str, remote: &str, inode: u64) -> Socket {
        Socket {
            inode,
            expires_ms: Some(30_000),
            v6only: Tri::False,
            flags: SocketFlags {
                reuseaddr: Tri::False,
                reuseport: Tri::False,
            },
            ..Socket::test(state, local, remote)
        }
    }

    fn owner(process: &str, pid: u32) -> Owner {
        Owner {
            pid,
            process: process.into(),
            uid: 33,
            user: "www-data".into(),
            unit: Some(format!("{process}.service")),
        }
    }

    fn web(reuseaddr: bool) -> Service {
        Service {
            name: "web".into(),
            protocol: Protocol::Tcp,
            port: 8080,
            addresses: vec![],
            owner: OwnerMatch {
                process: Some("nginx".into()),
                ..OwnerMatch::default()
            },
            reuseaddr,
            reuseport: false,
        }
    }

    #[test]
    fn status_table() {
        let owners: HashMap<u64, Owner> = [
            (1, owner("nginx", 10)),
            (2, owner("apache2", 20)),
            (3, owner("curl", 30)),
        ]
        .into();
        let listener_nginx = sock(State::Listen, "0.0.0.0:8080", "0.0.0.0:0", 1);
        let listener_apache = sock(State::Listen, "0.0.0.0:8080", "0.0.0.0:0", 2);
        let client = sock(State::Established, "10.0.0.1:8080", "10.0.0.2:443", 3);
        let tw = sock(State::TimeWait, "10.0.0.1:8080", "10.0.0.9:5555", 0);
        let listener_unknown = sock(State::Listen, "0.0.0.0:8080", "0.0.0.0:0", 99);
        // (case, sockets, remembered listeners, the service reuses, status)
        type Case = (&'static str, Vec<Socket>, Vec<Socket>, bool, Status);
        let cases: Vec<Case> = vec![
            (
                "expected owner",
                vec![listener_nginx.clone()],
                vec![],
                false,
                Status::Ok,
            ),
            (
                "owner unknown is not foreign",
                vec![listener_unknown],
                vec![],
                false,
                Status::Ok,
            ),
            (
                "other owner",
                vec![listener_apache],
                vec![],
                false,
                Status::ForeignOwner,
            ),
            ("nothing", vec![], vec![], false, Status::Missing),
            (
                "client took the port",
                vec![client.clone()],
                vec![],
                false,
                Status::Stolen,
            ),
            (
                "leftover TIME_WAIT",
                vec![tw.clone()],
                vec![],
                false,
                Status::Blocked,
            ),
            (
                "leftover TIME_WAIT, both reuse",
                vec![{
                    let mut t = tw.clone();
                    t.flags.reuseaddr = Tri::True;
                    t
                }],
                vec![],
                true,
                Status::Missing,
            ),
            (
                "child of a remembered listener is a leftover, not a thief",
                vec![sock(State::Established, "0.0.0.0:8080", "10.0.0.2:1", 3)],
                vec![listener_nginx],
                false,
                Status::Blocked,
            ),
        ];
        for (what, sockets, listeners, reuse, want) in cases {
            let got = evaluate(&[web(reuse)], &sockets, &listeners, &owners, false);
            assert_eq!(got[0].status, want, "{what}: {}", got[0].detail);
        }
    }

    #[test]
    fn owner_matching() {
        let o = owner("nginx", 1);
        let m = |p: Option<&str>, u: Option<&str>, usr: Option<&str>| OwnerMatch {
            process: p.map(Into::into),
            unit: u.map(Into::into),
            user: usr.map(Into::into),
        };
        assert!(owner_matches(&m(Some("nginx"), None, None), Some(&o)));
        assert!(owner_matches(
            &m(None, Some("nginx.service"), Some("33")),
            Some(&o)
        ));
        assert!(!owner_matches(
            &m(Some("nginx"), None, Some("root")),
            Some(&o)
        ));
        assert!(!owner_matches(
            &m(None, Some("other.service"), None),
            Some(&o)
        ));
        assert!(owner_matches(&m(Some("x"), None, None), None));
    }
}
