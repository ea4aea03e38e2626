//! `bindwatch clear`: removes exactly what blocks a bind on a port (or a stale unix
//! socket file, `clear::unix`), and nothing else.
//!
//! One poll and the rebind engine's judgement, as `check` gives it, name every socket
//! that blocks; [`plan`] decides, without I/O, which of them are safe to destroy
//! (leftovers no process holds, waiting out a timer) and why the others stay (a
//! process holds them: stop it or wait). With `--yes` each safe one is destroyed by
//! its exact tuple and cookie (`source::destroy`, SOCK_DESTROY), one log line each,
//! and the port is judged again from a fresh poll: the exit status is that second
//! judgement's. The agent never calls this; it is an operator's command.
//!
//! `wait --clear-after` waits as `wait` does and clears once when the time is up.

pub mod plan;
mod report;
mod unix;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cli::{ClearArgs, ClearTarget, SocketArgs, WaitArgs};
use crate::collect::Collector;
use crate::commands::{self, CheckOutcome, CommandError, EXIT_ERROR};
use crate::model::{Owner, Snapshot, Socket, State, Verdict};
use crate::rebind;
use crate::source::destroy::{DestroyError, Destroyed, Destroyer};
use crate::source::holders;
use crate::source::owners::OwnerResolver;
use plan::{Blocker, Decision, Facts, Item, Target};

/// One judgement of the target, with the plan for its blockers.
#[derive(Debug, Clone)]
pub struct Judged {
    pub outcome: CheckOutcome,
    pub snap: Snapshot,
    pub items: Vec<Item>,
}

impl Judged {
    pub fn verdict(&self) -> Verdict {
        self.outcome.verdict
    }
}

/// What `--yes` did to one blocker (an index into the plan's items).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub item: usize,
    pub result: Destroyed,
}

/// Everything `clear` did: the plan, what was destroyed, the judgement after.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: Target,
    pub before: Judged,
    /// `--yes` was given.
    pub yes: bool,
    pub applied: Vec<Applied>,
    /// The error that stopped the destroying, with the kernel's words and a hint.
    pub error: Option<String>,
    /// The judgement from a fresh poll after destroying (with `--yes`).
    pub after: Option<Judged>,
    pub facts: Facts,
}

impl Report {
    /// 0 the bind would succeed, 1 it would fail, 3 cannot tell, 2 an error: the
    /// judgement after destroying with `--yes`, the one before without.
    pub fn exit_code(&self) -> i32 {
        if self.error.is_some() {
            return EXIT_ERROR;
        }
        commands::exit_code(self.after.as_ref().unwrap_or(&self.before).verdict())
    }
}

/// The facts the plan relies on: the running kernel, `--force`.
pub fn facts(force: bool) -> Facts {
    // SAFETY: utsname is plain bytes; uname fills it and NUL-terminates each field.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(u.release.as_ptr())
                .to_string_lossy()
                .into_owned()
        }
    };
    Facts {
        kernel: plan::kernel_version(&release),
        force,
    }
}

/// Polls, judges as `check` does, and plans. `--restart` with no live listener on
/// the port judges the restart of the listener the agent remembers there (its memory
/// in `--state.file`, as `check` does), as a unit's `ExecStartPre=` runs before the
/// daemon is back.
///
/// # Errors
/// See [`CommandError`].
pub fn judge(a: &SocketArgs, c: &mut Collector, facts: Facts) -> Result<Judged, CommandError> {
    let (outcome, snap) = commands::check_once(a, c)?;
    let findings: Vec<&rebind::Finding> = outcome
        .checked
        .iter()
        .flat_map(|c| c.judgement.findings.iter())
        .collect();
    let held = holders_by_inode(&findings, &snap, &a.source);
    let items = plan::plan_sockets(
        findings,
        |s| held.get(&s.inode).cloned().unwrap_or_default(),
        facts,
    );
    Ok(Judged {
        outcome,
        snap,
        items,
    })
}

/// Every process holding each blocker that has a file: a full scan of the fd
/// tables, since a forked worker holds its parent's sockets too; the snapshot's owner
/// where the scan saw none.
fn holders_by_inode(
    findings: &[&rebind::Finding],
    snap: &Snapshot,
    src: &crate::cli::SourceArgs,
) -> HashMap<u64, Vec<Owner>> {
    let inodes: HashSet<u64> = findings
        .iter()
        .map(|f| f.socket.inode)
        .filter(|&i| i != 0)
        .collect();
    // A one-shot scan to the end (no time slice): every holder, not the first.
    let found =
        holders::HolderScanner::new(&src.procfs, None).holders(&inodes, &|uid| uid.to_string());
    let mut resolver = OwnerResolver::with_rootfs(&src.procfs, &src.rootfs);
    let mut out = HashMap::new();
    for inode in inodes {
        let mut owners: Vec<Owner> = found
            .get(&inode)
            .into_iter()
            .flat_map(|h| h.list.iter())
            .filter_map(|h| resolver.owner(h.pid))
            .collect();
        if owners.is_empty() {
            owners.extend(snap.owners.get(&inode).cloned());
        }
        out.insert(inode, owners);
    }
    out
}

/// Destroys every blocker the plan says to destroy, one log line each; stops at
/// the first error that would repeat for every socket (privilege, kernel support).
pub fn apply(items: &[Item], facts: Facts) -> (Vec<Applied>, Option<String>) {
    let mut applied = Vec::new();
    if !items.iter().any(|i| i.decision == Decision::Destroy) {
        return (applied, None);
    }
    let mut d = match Destroyer::open() {
        Ok(d) => d,
        Err(e) => return (applied, Some(format!("cannot destroy sockets: {e}"))),
    };
    for (n, item) in items.iter().enumerate() {
        if item.decision != Decision::Destroy {
            continue;
        }
        let Blocker::Socket { finding, .. } = &item.blocker;
        let s = &finding.socket;
        match d.destroy(s) {
            Ok(result) => {
                log_destroyed(s, result, item.blocker.remaining());
                applied.push(Applied { item: n, result });
            }
            Err(e) => return (applied, Some(destroy_error(&e, s, facts))),
        }
    }
    (applied, None)
}

fn log_destroyed(s: &Socket, result: Destroyed, left: Option<Duration>) {
    let local = commands::endpoint_str(s.local.ip(), s.local.port());
    let remote = commands::endpoint_str(s.remote.ip(), s.remote.port());
    let left_seconds = left.map_or(0.0, |d| (d.as_secs_f64() * 10.0).round() / 10.0);
    let owner = format!("none (no file; uid {})", s.uid);
    match result {
        Destroyed::Done => tracing::info!(
            protocol = s.protocol.as_str(),
            local,
            remote,
            state = s.state_label(),
            owner,
            left_seconds,
            cookie = s.cookie,
            "destroyed socket"
        ),
        Destroyed::Gone => tracing::info!(
            protocol = s.protocol.as_str(),
            local,
            remote,
            state = s.state_label(),
            "socket already gone (its timer ran out)"
        ),
        Destroyed::Replaced => tracing::warn!(
            protocol = s.protocol.as_str(),
            local,
            remote,
            state = s.state_label(),
            cookie = s.cookie,
            "another socket has this tuple now (another cookie): left alone"
        ),
    }
}

/// The kernel's refusal with what it means for the operator.
fn destroy_error(e: &DestroyError, s: &Socket, facts: Facts) -> String {
    let what = format!(
        "destroying {} {} {} -> {}",
        s.state_label(),
        s.protocol,
        commands::endpoint_str(s.local.ip(), s.local.port()),
        commands::endpoint_str(s.remote.ip(), s.remote.port()),
    );
    let hint = match e.errno() {
        Some(libc::EPERM | libc::EACCES) => {
            "clear needs CAP_NET_ADMIN in the socket's network namespace (run it as root)".to_string()
        }
        Some(libc::EOPNOTSUPP) => match facts.kernel {
            Some(k) if s.state == State::TimeWait && k < plan::TIME_WAIT_DESTROY => format!(
                "Linux {}.{} cannot destroy TIME_WAIT sockets (6.0 and later can); wait for them instead",
                k.0, k.1
            ),
            _ => "this kernel cannot destroy sockets: it was built without CONFIG_INET_DIAG_DESTROY"
                .to_string(),
        },
        _ => String::new(),
    };
    if hint.is_empty() {
        format!("{what}: {e}")
    } else {
        format!("{what}: {e}: {hint}")
    }
}

/// The port `clear` judges, as check's arguments.
fn socket_args(a: &ClearArgs, port: u16) -> SocketArgs {
    SocketArgs {
        target: crate::cli::Target::Port(port),
        options: a.options.clone(),
    }
}

/// `bindwatch clear`: prints the plan (and with `--yes` what was done and the new
/// judgement), returns the exit status.
pub fn run(a: &ClearArgs) -> i32 {
    let port = match &a.target {
        ClearTarget::Port(p) => *p,
        ClearTarget::Unix(t) => return unix::run(a, t),
    };
    if a.options.unix_type.is_some() {
        eprintln!(
            "bindwatch clear: --type is for unix: addresses; a port's protocol is --protocol"
        );
        return EXIT_ERROR;
    }
    let sa = socket_args(a, port);
    let facts = facts(a.force);
    let mut c = match commands::collector(&sa.source) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bindwatch clear: {e}");
            return EXIT_ERROR;
        }
    };
    let before = match judge(&sa, &mut c, facts) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("bindwatch clear: {e}");
            return EXIT_ERROR;
        }
    };
    let mut report = Report {
        target: Target::Port {
            protocol: sa.protocol,
            port: sa.port(),
        },
        before,
        yes: a.yes,
        applied: Vec::new(),
        error: None,
        after: None,
        facts,
    };
    if a.yes && report.before.verdict() != Verdict::Clear {
        let (applied, error) = apply(&report.before.items, facts);
        report.applied = applied;
        report.error = error;
        match judge(&sa, &mut c, facts) {
            Ok(j) => report.after = Some(j),
            Err(e) => {
                let again = format!("judging again: {e}");
                report.error = Some(match report.error.take() {
                    Some(first) => format!("{first}; {again}"),
                    None => again,
                });
            }
        }
    }
    if sa.json {
        println!("{}", report::json(&report));
    } else {
        print!("{}", report::text(&report));
    }
    if let Some(e) = &report.error {
        eprintln!("bindwatch clear: {e}");
    }
    report.exit_code()
}

/// `bindwatch wait PORT --clear-after DURATION`: waits as `wait` does; once
/// DURATION has passed and the bind would still fail, destroys what is safe to
/// destroy (as `clear --yes`) and goes on waiting until `--timeout`.
pub fn wait_then_clear(a: &WaitArgs) -> i32 {
    let Some(clear_after) = a.clear_after else {
        return commands::wait(a);
    };
    let start = Instant::now();
    let facts = facts(false);
    let mut c = match commands::collector(&a.socket.source) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bindwatch wait: {e}");
            return EXIT_ERROR;
        }
    };
    let mut cleared = false;
    let mut last: Option<Verdict> = None;
    loop {
        let j = match judge(&a.socket, &mut c, facts) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("bindwatch wait: {e}");
                return EXIT_ERROR;
            }
        };
        if j.verdict() == Verdict::Clear {
            if a.socket.json {
                println!("{}", commands::check_json(&j.outcome, &j.snap));
            } else {
                print!(
                    "{}",
                    commands::check_text(&j.outcome, &j.snap, a.socket.all)
                );
            }
            return commands::EXIT_CLEAR;
        }
        if last != Some(j.verdict()) {
            eprint!(
                "{}",
                commands::check_text(&j.outcome, &j.snap, a.socket.all)
            );
            last = Some(j.verdict());
        }
        let elapsed = start.elapsed();
        if !cleared && elapsed >= clear_after {
            cleared = true;
            let (applied, error) = apply(&j.items, facts);
            eprintln!(
                "bindwatch wait: --clear-after {clear_after:?} passed: destroyed {} socket(s)",
                applied
                    .iter()
                    .filter(|x| x.result == Destroyed::Done)
                    .count()
            );
            if let Some(e) = error {
                eprintln!("bindwatch wait: {e}");
                return EXIT_ERROR;
            }
            continue;
        }
        if elapsed >= a.timeout {
            eprintln!("bindwatch wait: gave up after {:?}", a.timeout);
            return commands::EXIT_BLOCKED;
        }
        let next = if cleared {
            a.timeout
        } else {
            clear_after.min(a.timeout)
        };
        let until_next = next.saturating_sub(elapsed);
        std::thread::sleep(a.interval.min(until_next).max(Duration::from_millis(10)));
    }
}
