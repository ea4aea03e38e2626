//! `--baseline-bin PATH`: the poll CPU of an older bindwatch build beside the current
//! one, on the same socket population in the same run (scripts/bench-baseline.sh
//! builds the older one).
//!
//! Two agents, `serve --source netlink --poll.cpu-budget 0 --poll.interval 1s`
//! (`BASELINE_SOURCE=bpf`: `--source bpf`; flags both eras accept; budget 0 walks the
//! whole table every poll; the current one also `--no-bind-events`, a tracer the
//! baseline does not have), run in the population's namespace for the whole phase. They are measured in turn, never at
//! once: while one is measured the other is stopped (SIGSTOP), so neither competes
//! with the other for the two CPUs, the memory bus or the kernel's hash-bucket locks
//! during its window. The order alternates per round (current first, then baseline
//! first), so a drift of the machine's other load hits both alike, and the ratio is
//! taken per round from two adjacent windows.
//!
//! CPU per poll is the agent process's own counter (all threads, schedstat run time,
//! ns) over a window of whole polls, divided by the polls its /metrics counted
//! (`bindwatch_poll_duration_seconds_count`, exported by both eras). The window opens
//! and closes only while the agent is idle (its `bindwatch-poller` thread asleep and
//! the process using no CPU for 50 ms), and the scrape that reads the count is kept
//! outside: the window starts after the opening scrape and ends before the closing
//! one, and no scrape is made in between. Two further figures come from the same
//! windows: the poller thread's own run time, and the agent's own
//! `bindwatch_poll_cpu_seconds_total` (the poller's thread CPU around each poll).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::{proc_cpu, Guard};
use crate::http::{http_get, metric_sum, wait_http};
use crate::measure::{median, min_median_max, ms};
use crate::rawdiag::{Census, RawDiag};
use crate::tw::{TwKeeper, TW_LIFE};

/// Ports of the two agents (clear of the serve rows' and the population's).
const CURRENT_PORT: u16 = 10_035;
const BASELINE_PORT: u16 = 10_036;
const INTERVAL: &str = "1s";
const INTERVAL_D: Duration = Duration::from_secs(1);
/// Whole polls aimed at per window (the window is sized from the warm poll's wall).
const POLLS_PER_WINDOW: f64 = 8.0;
/// Quiet time that counts as "between polls".
const QUIET: Duration = Duration::from_millis(50);
/// CPU a quiet process may still use per 5 ms sample (timer wake-ups of idle threads).
const QUIET_SLACK: Duration = Duration::from_micros(100);

/// One agent, stopped or running; resumed and stopped (SIGTERM) on drop.
pub struct Agent {
    pub label: &'static str,
    pub port: u16,
    pub pid: u32,
    poller_tid: u32,
    _guard: Guard,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A stopped process keeps SIGTERM pending: resume it first so the guard's
        // SIGTERM ends it at once. Runs before the guard's drop.
        signal(self.pid, libc::SIGCONT);
    }
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this bench spawned and has not reaped.
    unsafe { libc::kill(pid as i32, sig) };
}

/// The id of the thread named `name` in process `pid` (comm keeps 15 bytes of it).
fn find_thread(pid: u32, name: &str) -> Option<u32> {
    let name = &name[..name.len().min(15)];
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// Run time of one thread (schedstat, ns).
fn thread_cpu(pid: u32, tid: u32) -> Duration {
    let ns = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// The state letter of a thread (R running or runnable, S asleep, ...).
fn thread_state(pid: u32, tid: u32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            s[s.rfind(')')? + 1..]
                .split_whitespace()
                .next()?
                .chars()
                .next()
        })
        .unwrap_or('?')
}

/// The socket source both agents poll with: `BASELINE_SOURCE` (`netlink`, the default,
/// or `bpf`).
fn source() -> String {
    std::env::var("BASELINE_SOURCE").unwrap_or_else(|_| "netlink".to_string())
}

/// `serve --poll.interval 1s --poll.cpu-budget 0` of `bin` with `extra` (which names the
/// source and the state file), answering on `port`; stopped and resumed by the caller.
pub fn start(label: &'static str, bin: &Path, port: u16, extra: &[&str]) -> Agent {
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--web.listen-address",
        &format!("127.0.0.1:{port}"),
        "--poll.interval",
        INTERVAL,
        "--poll.cpu-budget",
        "0",
        "--log.level",
        "warn",
    ])
    .args(extra)
    .stdout(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // A bench killed on its time limit takes its agents along, stopped or not
            // (SIGKILL: a stopped process would keep a SIGTERM pending).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let pid = child.id();
    let guard = Guard(child);
    assert!(
        wait_http(port, Duration::from_secs(300)),
        "{label} agent ({}) did not answer on {port}",
        bin.display()
    );
    // The server may answer before the first poll is done and the poller thread starts.
    let t0 = Instant::now();
    let poller_tid = loop {
        match find_thread(pid, "bindwatch-poller") {
            Some(tid) => break tid,
            None if t0.elapsed() < Duration::from_secs(300) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            None => panic!("{label} agent: no bindwatch-poller thread after 300 s"),
        }
    };
    Agent {
        label,
        port,
        pid,
        poller_tid,
        _guard: guard,
    }
}

/// (polls finished, their summed wall seconds, the agent's own poll CPU seconds).
fn counters(port: u16) -> Option<(f64, f64, f64)> {
    let b = http_get(port, "/metrics").ok()?;
    let count = metric_sum(&b, "bindwatch_poll_duration_seconds_count");
    (count > 0.0).then(|| {
        (
            count,
            metric_sum(&b, "bindwatch_poll_duration_seconds_sum"),
            metric_sum(&b, "bindwatch_poll_cpu_seconds_total"),
        )
    })
}

/// Waits until the agent is between polls: poller asleep, process CPU flat for [`QUIET`].
fn wait_idle(a: &Agent, limit: Duration) -> bool {
    let t0 = Instant::now();
    let mut last = proc_cpu(a.pid);
    let mut quiet_since = Instant::now();
    while t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
        let c = proc_cpu(a.pid);
        let asleep = thread_state(a.pid, a.poller_tid) == 'S';
        if c.saturating_sub(last) > QUIET_SLACK || !asleep {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET {
            return true;
        }
        last = c;
    }
    false
}

/// A window edge, read while the agent is idle.
#[derive(Clone, Copy)]
struct Mark {
    polls: f64,
    wall_sum: f64,
    self_cpu: f64,
    /// Process CPU just before the scrape that read the counters, and once it settled.
    proc_before: Duration,
    proc_after: Duration,
    poller: Duration,
    /// Threads of the process: schedstat covers living ones only, so a thread that
    /// ended inside a window would take its run time along.
    threads: usize,
}

/// Reads the counters between two polls; retried when a poll began meanwhile.
fn mark(a: &Agent) -> Mark {
    for _ in 0..50 {
        if !wait_idle(a, Duration::from_secs(60)) {
            continue;
        }
        let proc_before = proc_cpu(a.pid);
        let poller_before = thread_cpu(a.pid, a.poller_tid);
        let Some((polls, wall_sum, self_cpu)) = counters(a.port) else {
            continue;
        };
        // The scrape's own tail (closing the connection) settles within this.
        std::thread::sleep(Duration::from_millis(20));
        let proc_after = proc_cpu(a.pid);
        let poller = thread_cpu(a.pid, a.poller_tid);
        if poller.saturating_sub(poller_before) > QUIET_SLACK
            || thread_state(a.pid, a.poller_tid) != 'S'
        {
            continue; // a poll started around the scrape: its count is ambiguous
        }
        let threads = std::fs::read_dir(format!("/proc/{}/task", a.pid)).map_or(0, |d| d.count());
        return Mark {
            threads,
            polls,
            wall_sum,
            self_cpu,
            proc_before,
            proc_after,
            poller,
        };
    }
    panic!("{} agent: never idle between polls", a.label);
}

/// One agent's window: whole polls, their CPU three ways.
#[derive(Clone, Copy, Default)]
pub struct Window {
    pub census: Census,
    pub polls: f64,
    pub wall: Duration,
    /// Per poll: process CPU, poller thread CPU, the agent's own counter.
    pub proc: Duration,
    pub poller: Duration,
    pub self_cpu: Duration,
    pub secs: f64,
}

/// Resumes `a`, lets one poll pass, measures a window of about
/// [`POLLS_PER_WINDOW`] polls, stops it again.
pub fn window(a: &Agent, census: Census) -> Window {
    signal(a.pid, libc::SIGCONT);
    // The poll due while it was stopped runs at once; the window starts after it.
    let (p0, wall0, _) = counters(a.port).expect("counters");
    let mut warm = mark(a);
    while warm.polls < p0 + 1.0 {
        std::thread::sleep(Duration::from_millis(100));
        warm = mark(a);
    }
    // Size the window from the polls just seen: a poll plus the interval after it.
    let last_wall = (warm.wall_sum - wall0) / (warm.polls - p0);
    let secs = (POLLS_PER_WINDOW * (last_wall + INTERVAL_D.as_secs_f64())).clamp(5.0, 40.0);
    let m0 = warm;
    std::thread::sleep(Duration::from_secs_f64(secs));
    let m1 = mark(a);
    signal(a.pid, libc::SIGSTOP);
    if m1.threads != m0.threads {
        log!(
            "   {} agent: {} threads at the start of the window, {} at its end: the process CPU misses any that ended",
            a.label,
            m0.threads,
            m1.threads
        );
    }
    let n = m1.polls - m0.polls;
    assert!(n >= 1.0, "{} agent: no poll in {secs:.0} s", a.label);
    let per = |d: Duration| d.div_f64(n);
    Window {
        census,
        polls: n,
        wall: Duration::from_secs_f64((m1.wall_sum - m0.wall_sum) / n),
        // From after the opening scrape to before the closing one.
        proc: per(m1.proc_before.saturating_sub(m0.proc_after)),
        poller: per(m1.poller.saturating_sub(m0.poller)),
        self_cpu: Duration::from_secs_f64((m1.self_cpu - m0.self_cpu).max(0.0) / n),
        secs,
    }
}

/// Rounds of (current, baseline) windows on one population.
pub struct Outcome {
    pub baseline: PathBuf,
    pub rounds: Vec<(Window, Window)>,
}

pub fn phase(tw: &mut TwKeeper, baseline: &Path, runs: usize) -> Outcome {
    let mut raw = RawDiag::open();
    // Both start together; their first polls (the cold owner scan) run before they answer.
    // The failure tracer (newer than the baseline, not part of a poll) stays off: its
    // reader wakes for every failed bind on the machine, which this bench does not control.
    let current = Path::new(env!("CARGO_BIN_EXE_bindwatch"));
    let source = source();
    // Never the host's /run/bindwatch/state.json.
    let common = ["--source", source.as_str(), "--state.file", ""];
    let cur = start(
        "current",
        current,
        CURRENT_PORT,
        &[&common[..], &["--no-bind-events"]].concat(),
    );
    let base = start("baseline", baseline, BASELINE_PORT, &common);
    signal(cur.pid, libc::SIGSTOP);
    signal(base.pid, libc::SIGSTOP);
    let mut rounds = Vec::new();
    // How long one window takes (the warm poll included): a first guess, then the longest seen.
    let mut single = Duration::from_secs(20);
    for r in 0..runs {
        let mut pair = [Window::default(); 2];
        // Even rounds measure the current build first, odd rounds the baseline.
        let order: [(usize, &Agent); 2] = if r % 2 == 0 {
            [(0, &cur), (1, &base)]
        } else {
            [(1, &base), (0, &cur)]
        };
        // TIME_WAITs live 60 s: made for both windows of the round when both fit in
        // their life (the two windows then see the same sockets), else for each one.
        let both = 2 * single + Duration::from_secs(5);
        if both < TW_LIFE {
            tw.ensure(&mut raw, both);
        }
        for (slot, a) in order {
            tw.ensure(&mut raw, single);
            let census = raw.census();
            let t0 = Instant::now();
            let w = window(a, census);
            single = single.max(t0.elapsed() + Duration::from_secs(5));
            log!(
                "   round {}: {} agent {:.1} ms process CPU/poll ({:.1} poller, {:.1} own counter), {} polls in {:.0} s",
                r + 1,
                a.label,
                ms(w.proc),
                ms(w.poller),
                ms(w.self_cpu),
                w.polls,
                w.secs
            );
            pair[slot] = w;
        }
        rounds.push((pair[0], pair[1]));
    }
    Outcome {
        baseline: baseline.to_path_buf(),
        rounds,
    }
}

/// min / median / max of `f` over the rounds.
fn spread(rounds: &[(Window, Window)], f: impl Fn(&(Window, Window)) -> f64) -> String {
    min_median_max(rounds.iter().map(f), 3)
}

pub fn report(results: &[(String, Outcome)]) {
    let Some((_, first)) = results.first() else {
        return;
    };
    println!(
        "\n## Poll CPU against a baseline build ({})\n",
        first.baseline.display()
    );
    println!(
        "`serve --source {} --poll.cpu-budget 0 --poll.interval {INTERVAL}` for both (current also \
         `--no-bind-events`), measured in turn (the other stopped), order alternating per round; CPU per poll over whole polls, \
         no scrape inside a window. Ratio = current / baseline.\n",
        source()
    );
    println!(
        "| table | round | census | current ms process / poller / own counter (polls) | \
         baseline ms process / poller / own counter (polls) | ratio process | ratio poller | ratio own counter |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let r3 = |c: Duration, b: Duration| c.as_secs_f64() / b.as_secs_f64().max(1e-12);
    for (name, res) in results {
        for (i, (c, b)) in res.rounds.iter().enumerate() {
            println!(
                "| {name} | {} | {} / {} | {:.2} / {:.2} / {:.2} ({}) | {:.2} / {:.2} / {:.2} ({}) | {:.3} | {:.3} | {:.3} |",
                i + 1,
                c.census.total,
                b.census.total,
                ms(c.proc),
                ms(c.poller),
                ms(c.self_cpu),
                c.polls,
                ms(b.proc),
                ms(b.poller),
                ms(b.self_cpu),
                b.polls,
                r3(c.proc, b.proc),
                r3(c.poller, b.poller),
                r3(c.self_cpu, b.self_cpu),
            );
        }
    }
    println!("\nRatio current / baseline over the rounds, min / median / max:\n");
    for (name, res) in results {
        let rs = &res.rounds;
        println!(
            "- {name}: process CPU {}; poller thread {}; own counter {} ({} rounds; median poll wall {:.1} ms current, {:.1} ms baseline)",
            spread(rs, |(c, b)| r3(c.proc, b.proc)),
            spread(rs, |(c, b)| r3(c.poller, b.poller)),
            spread(rs, |(c, b)| r3(c.self_cpu, b.self_cpu)),
            rs.len(),
            ms(median(rs.iter().map(|x| x.0.wall).collect())),
            ms(median(rs.iter().map(|x| x.1.wall).collect())),
        );
    }
}
