//! What a restart stops, and what keeps the listening socket open. Pure: the
//! processes that hold one listening socket in, the [`Holding`] out.
//!
//! A listening socket lives as long as any process has it open. Daemons are process
//! trees (a master and its workers, prefork children, fds passed over unix
//! sockets), so "the daemon restarts" is not "the socket closes". bindwatch models a
//! restart as: stop the service's processes, then start one that binds with the
//! listener's own flags. Which processes are the service's:
//!
//! - **The main holder** is a holder whose parent is not a holder. Where several
//!   qualify, the one remembered as main for this socket (an earlier poll saw it),
//!   else the oldest one in a systemd unit, else the oldest that is *anchored*: it
//!   leads its own session or process group (a daemon after `setsid()`, a shell's
//!   job), or its parent is a live process other than pid 1 (it was started by its
//!   parent, a supervisor or a shell). A holder re-parented to pid 1 that leads
//!   nothing is not anchored: it is either a daemon that forked twice or a child
//!   left behind by a parent that died, and user space cannot tell which.
//! - **With a systemd unit** (the main holder's cgroup has a `.service` or `.scope`
//!   directory): a restart stops every process in the unit's cgroup, descendants
//!   cgroups included (`systemctl restart`, `KillMode=control-group`).
//! - **Without one**: the main holder and its descendants among the holders.
//!
//! Every holder outside that set keeps the socket open and **blocks** the restart
//! ([`Survival::Survivors`]): workers orphaned by a dead master, a child moved to
//! another cgroup, a process that received the fd over a unix socket. Outside a
//! unit, so do all holders when the main holder this socket was remembered with
//! died and the socket lives on (orphaned workers, a forking server's child),
//! unless one anchored process holds it alone with its descendants (a successor
//! that was handed the socket: it is the main holder now); one re-parented
//! process with children of its own is undecided (a binary upgrade's new master,
//! or a subtree left behind). Two or more holders none of which is anchored
//! (orphans of one dead parent) block too: whichever the restart stops, another
//! keeps the socket.
//!
//! The answer is **cannot tell** ([`Survival::Undecided`]) where it hangs on what
//! user space cannot see: a live main holder outside any unit whose children hold
//! the socket too (the restart succeeds if they exit with their parent, as nginx's
//! workers do on `QUIT`, and fails while they live on, as a forking server's
//! children serving a client do); a lone holder that is not anchored; no holder
//! found at all (another pid namespace, owners unreadable); a scan that did not
//! read every process's fds and found no survivor. It is never "would succeed".
//!
//! Limits, stated: a child subreaper (`PR_SET_CHILD_SUBREAPER`) adopts orphans
//! instead of pid 1, so an orphan under one looks anchored; the agent's memory of
//! the main holder (see [`holding`]'s `remembered_main`) still catches the death of
//! the main holder it saw.

use std::collections::HashSet;

use super::{after_restart, judge, own_flags, restart_candidate, Judgement, Restart, Verdict};
use crate::model::{Holder, Holders, Holding, Socket, Survival, Tri};

/// The main holder remembered for a socket: pid and start time.
pub type MainId = (u32, u64);

/// Whether `h` was started by something that still runs, or leads its own group.
pub fn anchored(h: &Holder) -> bool {
    h.leads() || h.ppid > 1
}

fn names(hs: &[Holder]) -> String {
    let mut v: Vec<String> = hs
        .iter()
        .take(8)
        .map(|h| format!("{} pid {}", h.process, h.pid))
        .collect();
    if hs.len() > 8 {
        v.push(format!("{} more", hs.len() - 8));
    }
    v.join(", ")
}

/// Whether cgroup `path` is `unit` or below it.
fn within(path: Option<&str>, unit: &str) -> bool {
    path.is_some_and(|p| p == unit || p.strip_prefix(unit).is_some_and(|r| r.starts_with('/')))
}

/// The holders that descend from `main` through holders (not `main` itself).
fn descendants<'a>(main: &Holder, list: &'a [Holder]) -> Vec<&'a Holder> {
    let mut tree: HashSet<u32> = HashSet::from([main.pid]);
    // A parent chain among holders is at most as long as the list.
    for _ in 0..list.len() {
        let before = tree.len();
        for h in list {
            if tree.contains(&h.ppid) {
                tree.insert(h.pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    list.iter()
        .filter(|h| h.pid != main.pid && tree.contains(&h.pid))
        .collect()
}

/// What a restart leaves of a listening socket held by `holders`.
/// `remembered_main` is the main holder an earlier look at this socket named.
pub fn holding(holders: &Holders, remembered_main: Option<MainId>) -> Holding {
    let mut list = holders.list.clone();
    list.sort_by_key(|h| (h.start_time, h.pid));
    list.dedup_by_key(|h| h.pid);
    let mut out = Holding {
        holders: list.clone(),
        main: None,
        complete: holders.complete,
        survival: Survival::Closed,
    };
    if list.is_empty() && !holders.complete {
        out.survival = incomplete();
        return out;
    }
    if list.is_empty() {
        out.survival = Survival::Undecided {
            holders: Vec::new(),
            why: "no process holding the listening socket could be found (owners unreadable, \
                  or a process in another pid namespace): whether a restart closes it is unknown"
                .to_string(),
        };
        return out;
    }
    let pids: HashSet<u32> = list.iter().map(|h| h.pid).collect();
    let roots: Vec<&Holder> = list.iter().filter(|h| !pids.contains(&h.ppid)).collect();
    let remembered = remembered_main.and_then(|(pid, start)| {
        roots
            .iter()
            .find(|h| h.pid == pid && h.start_time == start)
            .copied()
    });
    let main_died = remembered_main
        .is_some_and(|(pid, start)| !list.iter().any(|h| h.pid == pid && h.start_time == start));
    let in_unit = roots.iter().any(|h| h.unit_cgroup.is_some());
    // The main holder this socket was seen with died and the socket lives on:
    // outside a unit (which a restart stops whole, whoever in it died) the rest
    // survive the restart, unless one of them was started to take over.
    if let (true, false, Some((dead, _))) = (main_died, in_unit, remembered_main) {
        match roots.as_slice() {
            // Started by a live parent or leading its own session: a successor
            // that was handed the socket; judged as the main holder below.
            [one] if anchored(one) => {}
            [one] if list.len() > 1 => {
                out.survival = Survival::Undecided {
                    why: format!(
                        "the main holder (pid {dead}) died; {} pid {} holds the listening socket \
                         with its children, re-parented: if it is the daemon's successor (a binary \
                         upgrade), a restart stops it and would succeed; if it was left behind, it \
                         keeps the socket and the restart would FAIL",
                        one.process, one.pid
                    ),
                    holders: list.clone(),
                };
                return out;
            }
            _ => {
                out.survival = Survival::Survivors {
                    why: format!(
                        "the listening socket stays open in {} (its main holder, pid {dead}, died)",
                        names(&list)
                    ),
                    holders: list,
                };
                return out;
            }
        }
    }
    let main = remembered
        .or_else(|| roots.iter().find(|h| h.unit_cgroup.is_some()).copied())
        .or_else(|| roots.iter().find(|h| anchored(h)).copied());
    let Some(main) = main else {
        let why = if roots.len() >= 2 {
            format!(
                "the listening socket stays open in {} (their parent died: none of them leads \
                 its own session, and a restart stops at most one of them)",
                names(&list)
            )
        } else {
            format!(
                "{} holds the listening socket without its parent (re-parented to pid 1) and \
                 leads no session: if it is the daemon itself (forked twice), a restart stops it \
                 and would succeed; if it is a child left behind by a daemon that died, it keeps \
                 the socket and the restart would FAIL",
                names(&list)
            )
        };
        out.survival = if roots.len() >= 2 {
            Survival::Survivors {
                holders: list.clone(),
                why,
            }
        } else {
            Survival::Undecided {
                holders: list.clone(),
                why,
            }
        };
        return out;
    };
    out.main = Some(main.clone());
    if let Some(unit) = main.unit_cgroup.as_deref() {
        let outside: Vec<Holder> = list
            .iter()
            .filter(|h| !within(h.unit_cgroup.as_deref(), unit))
            .cloned()
            .collect();
        out.survival = if !outside.is_empty() {
            Survival::Survivors {
                why: format!(
                    "the listening socket stays open in {} (outside unit {}, which a restart stops)",
                    names(&outside),
                    main.unit.as_deref().unwrap_or(unit)
                ),
                holders: outside,
            }
        } else if !holders.complete {
            incomplete()
        } else {
            Survival::Closed
        };
        return out;
    }
    let tree = descendants(main, &list);
    let outside: Vec<Holder> = list
        .iter()
        .filter(|h| h.pid != main.pid && !tree.iter().any(|t| t.pid == h.pid))
        .cloned()
        .collect();
    out.survival = if !outside.is_empty() {
        Survival::Survivors {
            why: format!(
                "the listening socket stays open in {} (not descendants of the main holder {} pid {}: \
                 their parent died, or they were passed the socket)",
                names(&outside),
                main.process,
                main.pid
            ),
            holders: outside,
        }
    } else if !tree.is_empty() {
        let children: Vec<Holder> = tree.into_iter().cloned().collect();
        Survival::Undecided {
            why: format!(
                "{} pid {} runs outside any systemd unit and its children {} hold the listening \
                 socket too: a restart would succeed if they exit with it, and would FAIL while \
                 they live on",
                main.process,
                main.pid,
                names(&children)
            ),
            holders: children,
        }
    } else if !holders.complete {
        incomplete()
    } else {
        Survival::Closed
    };
    out
}

/// Whether a listening socket stays open after the restart, from its [`Holding`]:
/// `True` when a holder survives, `False` when every holder is stopped, `Unknown`
/// when it depends.
pub fn stays(h: &Holding) -> Tri {
    match h.survival {
        Survival::Closed => Tri::False,
        Survival::Survivors { .. } => Tri::True,
        Survival::Undecided { .. } => Tri::Unknown,
    }
}

/// The deciding "flag" of a finding that depends on the holders.
pub const HOLDERS_DECIDE: &str = "whether the listening socket's other holders outlive the restart";

/// [`crate::rebind::judge_restart`] where listening sockets at the endpoint may stay open: `stays`
/// says, for each listening socket a restart would replace, whether it stays open
/// (`True`: a holder survives), closes (`False`) or may do either (`Unknown`). A
/// socket that stays blocks like any other (a new socket joins it only through
/// SO_REUSEPORT with the same uid, as the kernel allows); where one may stay, both
/// outcomes are judged and the verdict is theirs when they agree, else unknown.
pub fn judge_restart_held(
    listener: &Socket,
    on_port: &[Socket],
    stays: &dyn Fn(&Socket) -> Tri,
) -> Restart {
    let mut low: Vec<Socket> = Vec::with_capacity(on_port.len());
    let mut maybe: Vec<Socket> = Vec::new();
    for s in on_port {
        let replaced = after_restart(listener, std::slice::from_ref(s))
            .next()
            .is_none();
        if !replaced {
            low.push(s.clone());
            continue;
        }
        if !s.is_listener() {
            continue;
        }
        match stays(s) {
            Tri::True => low.push(s.clone()),
            Tri::Unknown => maybe.push(s.clone()),
            Tri::False => {}
        }
    }
    let judge_all = |sockets: &[Socket]| {
        let j = |reuse: bool| judge(&restart_candidate(listener, reuse), sockets);
        let without_reuseaddr = j(false);
        let with_reuseaddr = j(true);
        let own_flags = own_flags(
            listener.flags.reuseaddr,
            &without_reuseaddr,
            &with_reuseaddr,
        );
        Restart {
            without_reuseaddr,
            with_reuseaddr,
            own_flags,
        }
    };
    let closed = judge_all(&low);
    if maybe.is_empty() {
        return closed;
    }
    low.extend(maybe);
    let open = judge_all(&low);
    Restart {
        without_reuseaddr: either(&closed.without_reuseaddr, &open.without_reuseaddr),
        with_reuseaddr: either(&closed.with_reuseaddr, &open.with_reuseaddr),
        own_flags: either(&closed.own_flags, &open.own_flags),
    }
}

/// Two judgements of which one will hold: `closed` finds a subset of `open`'s
/// blockers. A finding certain in both stays certain; the rest depend on the holders.
fn either(closed: &Judgement, open: &Judgement) -> Judgement {
    let findings = open
        .findings
        .iter()
        .map(|f| {
            let mut merged = f.clone();
            let same = closed
                .findings
                .iter()
                .any(|g| g.socket == f.socket && g.blocks == f.blocks);
            if !same {
                merged.blocks = Tri::Unknown;
                if !merged.undecided_by.contains(&HOLDERS_DECIDE) {
                    merged.undecided_by.push(HOLDERS_DECIDE);
                }
            }
            merged
        })
        .collect();
    let verdict = if closed.verdict == open.verdict {
        closed.verdict
    } else {
        Verdict::Unknown
    };
    Judgement { verdict, findings }
}

fn incomplete() -> Survival {
    Survival::Undecided {
        holders: Vec::new(),
        why: "not every process's fds could be read: another process may hold the listening socket"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pid: u32, ppid: u32, pgid: u32, sid: u32, start: u64, cg: Option<&str>) -> Holder {
        Holder {
            pid,
            ppid,
            pgid,
            sid,
            process: "d".into(),
            uid: 0,
            user: "root".into(),
            start_time: start,
            unit: cg.map(|c| c.rsplit('/').next().unwrap_or(c).to_string()),
            unit_cgroup: cg.map(str::to_string),
        }
    }

    fn all(list: Vec<Holder>) -> Holders {
        Holders {
            list,
            complete: true,
        }
    }

    /// (holders, remembered main) -> outcome ("closed", "survivors:PIDS", "undecided").
    #[test]
    fn what_a_restart_stops() {
        let u = Some("/sys.slice/web.service");
        let other = Some("/sys.slice/other.service");
        let cases: Vec<(&str, Holders, Option<MainId>, &str)> = vec![
            (
                "one daemon, session leader",
                all(vec![h(10, 1, 10, 10, 5, None)]),
                None,
                "closed",
            ),
            (
                "one process started by a shell",
                all(vec![h(10, 9, 9, 9, 5, None)]),
                None,
                "closed",
            ),
            (
                "nginx, master alive, workers, no unit",
                all(vec![
                    h(10, 1, 10, 10, 5, None),
                    h(11, 10, 10, 10, 6, None),
                    h(12, 10, 10, 10, 6, None),
                ]),
                None,
                "undecided:11,12",
            ),
            (
                "nginx master kill -9: two orphaned workers",
                all(vec![h(11, 1, 10, 10, 6, None), h(12, 1, 10, 10, 6, None)]),
                None,
                "survivors:11,12",
            ),
            (
                "one orphaned worker, nothing remembered",
                all(vec![h(11, 1, 10, 10, 6, None)]),
                None,
                "undecided:11",
            ),
            (
                "one orphaned worker, master remembered",
                all(vec![h(11, 1, 10, 10, 6, None)]),
                Some((10, 5)),
                "survivors:11",
            ),
            (
                "a successor master with its worker, the old master remembered",
                all(vec![h(20, 1, 10, 10, 7, None), h(21, 20, 10, 10, 8, None)]),
                Some((10, 5)),
                "undecided:20,21",
            ),
            (
                "a successor started by a live parent, the old master remembered",
                all(vec![h(20, 9, 9, 9, 7, None)]),
                Some((10, 5)),
                "closed",
            ),
            (
                "unit: the remembered master died, workers still in the unit",
                all(vec![
                    h(11, 1, 10, 10, 6, Some("/s.slice/web.service")),
                    h(12, 1, 10, 10, 6, Some("/s.slice/web.service")),
                ]),
                Some((10, 5)),
                "closed",
            ),
            (
                "remembered main alive",
                all(vec![h(10, 9, 9, 9, 5, None)]),
                Some((10, 5)),
                "closed",
            ),
            (
                "a reused pid is not the remembered main",
                all(vec![h(10, 1, 8, 8, 7, None)]),
                Some((10, 5)),
                "survivors:10",
            ),
            (
                "forking server: parent alive, child serving",
                all(vec![h(20, 9, 9, 9, 5, None), h(21, 20, 9, 9, 8, None)]),
                None,
                "undecided:21",
            ),
            (
                "a process handed the fd over a unix socket",
                all(vec![h(10, 1, 10, 10, 5, None), h(30, 29, 29, 29, 9, None)]),
                None,
                "survivors:30",
            ),
            (
                "unit: master and workers in the cgroup",
                all(vec![h(10, 1, 10, 10, 5, u), h(11, 10, 10, 10, 6, u)]),
                None,
                "closed",
            ),
            (
                "unit: workers orphaned but still in the cgroup",
                all(vec![h(11, 1, 10, 10, 6, u), h(12, 1, 10, 10, 6, u)]),
                None,
                "closed",
            ),
            (
                "unit: a child in a sub-cgroup of the unit",
                all(vec![
                    h(10, 1, 10, 10, 5, u),
                    h(11, 10, 10, 10, 6, Some("/sys.slice/web.service/x")),
                ]),
                None,
                "closed",
            ),
            (
                "unit: an orphan outside the cgroup",
                all(vec![h(10, 1, 10, 10, 5, u), h(40, 1, 10, 10, 6, None)]),
                None,
                "survivors:40",
            ),
            (
                "unit: a child moved to another unit",
                all(vec![h(10, 1, 10, 10, 5, u), h(11, 10, 10, 10, 6, other)]),
                None,
                "survivors:11",
            ),
            (
                "a cgroup that only shares a prefix is outside",
                all(vec![
                    h(10, 1, 10, 10, 5, u),
                    h(11, 10, 10, 10, 6, Some("/sys.slice/web.service2")),
                ]),
                None,
                "survivors:11",
            ),
            ("nobody found", all(vec![]), None, "undecided:"),
            (
                "incomplete scan, nothing outside",
                Holders {
                    list: vec![h(10, 1, 10, 10, 5, None)],
                    complete: false,
                },
                None,
                "undecided:",
            ),
            (
                "incomplete scan, a survivor found",
                Holders {
                    list: vec![h(11, 1, 10, 10, 6, None), h(12, 1, 10, 10, 6, None)],
                    complete: false,
                },
                None,
                "survivors:11,12",
            ),
        ];
        for (name, holders, main, want) in cases {
            let got = holding(&holders, main);
            let pids = |hs: &[Holder]| {
                hs.iter()
                    .map(|h| h.pid.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let out = match &got.survival {
                Survival::Closed => "closed".to_string(),
                Survival::Survivors { holders, why } => {
                    assert!(!why.is_empty(), "{name}");
                    format!("survivors:{}", pids(holders))
                }
                Survival::Undecided { holders, why } => {
                    assert!(!why.is_empty(), "{name}");
                    format!("undecided:{}", pids(holders))
                }
            };
            assert_eq!(out, want, "{name}: {got:?}");
        }
    }

    /// A listening socket that stays open blocks like any listener (unless the new
    /// socket joins its SO_REUSEPORT group with the same uid); one that may stay
    /// makes the answer unknown exactly when it would decide.
    #[test]
    fn a_surviving_listener_blocks_the_restart() {
        use crate::model::{Socket, SocketFlags, State, Verdict};
        let listener = |reuseport: Tri| Socket {
            flags: SocketFlags {
                reuseaddr: Tri::True,
                reuseport,
            },
            ..Socket::test(State::Listen, "0.0.0.0:80", "0.0.0.0:0")
        };
        let cases = [
            (Tri::False, Tri::False, Verdict::Clear),
            (Tri::False, Tri::True, Verdict::Blocked),
            (Tri::False, Tri::Unknown, Verdict::Unknown),
            (Tri::True, Tri::True, Verdict::Clear),
            (Tri::True, Tri::Unknown, Verdict::Clear),
        ];
        for (reuseport, stays, want) in cases {
            let l = listener(reuseport);
            let on_port = vec![l.clone()];
            let got = judge_restart_held(&l, &on_port, &|_| stays).own_flags;
            assert_eq!(got.verdict, want, "reuseport {reuseport:?} stays {stays:?}");
            if want == Verdict::Unknown {
                assert!(got.findings[0].undecided_by.contains(&HOLDERS_DECIDE));
            }
        }
    }

    #[test]
    fn summary_names_the_main_holder_and_counts_the_rest() {
        let mut m = h(10, 1, 10, 10, 5, None);
        m.process = "nginx".into();
        let w = h(11, 10, 10, 10, 6, None);
        let got = holding(&all(vec![w.clone(), m, h(12, 10, 10, 10, 6, None)]), None);
        assert_eq!(got.summary().as_deref(), Some("nginx[10] root +2 workers"));
        let one = holding(&all(vec![w]), None);
        assert_eq!(one.summary().as_deref(), Some("d[11] root"));
    }
}
