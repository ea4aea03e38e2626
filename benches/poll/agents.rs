//! `--agents`: the whole agent process's CPU per poll, run as a user runs it (`serve`
//! with a state file and the bind-failure tracer on), against the kernel's one-walk
//! sock_diag dump of the same table in the same round: the bpf agent, the netlink
//! agent and, with `--baseline-bin PATH`, both sources of an older build too.
//!
//! Every agent runs for the whole phase, measured in turn while the others are stopped
//! (the windows of `baseline`: whole polls, process CPU of all threads, no scrape
//! inside a window), after one window each that is not counted (the first polls
//! finish the agent's time-sliced scans). The order rotates per round, so a drift of the machine's other
//! load reaches every agent alike. The dump's CPU is the median of [`DUMPS`] dumps
//! made on this thread before the round's windows and as many after them, so each
//! round's ratios compare figures taken minutes apart at most.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::baseline::{signal, start, window, Agent, Window};
use crate::host::status_kb;
use crate::measure::{measure, median, min_median_max, ms};
use crate::rawdiag::{Census, RawDiag};
use crate::tw::{TwKeeper, TW_LIFE};

/// Ports of the agents (clear of the other phases' and the population's).
const PORTS: [u16; 4] = [10_040, 10_041, 10_042, 10_043];
/// One-walk dumps timed before and after each round's windows.
const DUMPS: usize = 5;

/// One round: the dump's CPU and each agent's window, in the order of
/// [`Outcome::labels`].
pub struct Round {
    pub census: Census,
    pub dump: Duration,
    pub windows: Vec<Window>,
}

pub struct Outcome {
    pub labels: Vec<&'static str>,
    pub rounds: Vec<Round>,
    /// Each agent's VmRSS after its first window and at the end, kB.
    pub rss: Vec<(u64, u64)>,
}

fn dumps(raw: &mut RawDiag, into: &mut Vec<Duration>) {
    for _ in 0..DUMPS {
        into.push(measure(&mut || raw.one_walk()).cpu);
    }
}

/// A scratch directory for the agents' state files, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn phase(tw: &mut TwKeeper, runs: usize, baseline: Option<&Path>) -> Outcome {
    let mut raw = RawDiag::open();
    let scratch = Scratch(
        std::env::temp_dir().join(format!("bindwatch-agents-bench-{}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0).expect("scratch directory for the state files");
    let current = Path::new(env!("CARGO_BIN_EXE_bindwatch"));
    let mut specs: Vec<(&'static str, &Path, &'static str)> =
        vec![("bpf", current, "bpf"), ("netlink", current, "netlink")];
    if let Some(b) = baseline {
        specs.push(("baseline bpf", b, "bpf"));
        specs.push(("baseline netlink", b, "netlink"));
    }
    let agents: Vec<Agent> = specs
        .iter()
        .zip(PORTS)
        .map(|(&(label, bin, source), port)| {
            let state = scratch.0.join(format!("{port}.json"));
            let state = state.to_str().expect("a UTF-8 temporary directory");
            let a = start(
                label,
                bin,
                port,
                &["--source", source, "--state.file", state],
            );
            signal(a.pid, libc::SIGSTOP);
            a
        })
        .collect();
    let n = agents.len();
    // One window each, not counted: an agent's first polls finish its time-sliced
    // owner and holder scans, which a steady poll does not repeat.
    for a in &agents {
        tw.ensure(&mut raw, Duration::from_secs(45));
        let w = window(a, raw.census());
        log!(
            "   warm-up: {} agent {:.1} ms process CPU/poll",
            a.label,
            ms(w.proc)
        );
    }
    let mut rss = vec![(0, 0); n];
    let mut rounds = Vec::new();
    let mut single = Duration::from_secs(20);
    for r in 0..runs {
        // TIME_WAITs live 60 s: made for the whole round when it fits in their life.
        let all = single * n as u32 + Duration::from_secs(10);
        if all < TW_LIFE {
            tw.ensure(&mut raw, all);
        }
        let mut cpu = Vec::new();
        tw.ensure(&mut raw, Duration::from_secs(5));
        dumps(&mut raw, &mut cpu);
        let census = raw.census();
        let mut windows = vec![Window::default(); n];
        for k in 0..n {
            let i = (r + k) % n;
            let a = &agents[i];
            tw.ensure(&mut raw, single);
            let t0 = Instant::now();
            let w = window(a, census);
            single = single.max(t0.elapsed() + Duration::from_secs(5));
            if r == 0 {
                rss[i].0 = status_kb(a.pid, "VmRSS:");
            }
            rss[i].1 = status_kb(a.pid, "VmRSS:");
            log!(
                "   round {}: {} agent {:.1} ms process CPU/poll, {:.1} in its polls ({} polls in {:.0} s)",
                r + 1,
                a.label,
                ms(w.proc),
                ms(w.self_cpu),
                w.polls,
                w.secs
            );
            windows[i] = w;
        }
        tw.ensure(&mut raw, Duration::from_secs(5));
        dumps(&mut raw, &mut cpu);
        let dump = median(cpu);
        log!("   round {}: one-walk dump {:.1} ms CPU", r + 1, ms(dump));
        rounds.push(Round {
            census,
            dump,
            windows,
        });
    }
    Outcome {
        labels: specs.iter().map(|s| s.0).collect(),
        rounds,
        rss,
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

pub fn report(results: &[(String, Outcome)]) {
    let Some((_, first)) = results.first() else {
        return;
    };
    println!("\n## The whole agent against the one-walk dump\n");
    println!(
        "`serve --poll.interval 1s --poll.cpu-budget 0` with a state file and the bind-failure \
         tracer on, one agent per row, measured in turn (the others stopped), order rotating per \
         round; process CPU per poll (all threads) over whole polls, no scrape inside a window. \
         `dump` is the median CPU of {} one-walk sock_diag dumps (every TCP state) before and as \
         many after the round's windows. Ratio = agent / dump.\n",
        2 * DUMPS
    );
    let head: Vec<String> = first
        .labels
        .iter()
        .map(|l| format!("{l} ms (ratio)"))
        .collect();
    println!(
        "| table | round | sockets | dump ms | {} | bpf / netlink |",
        head.join(" | ")
    );
    println!("|---|---|---|---|{}---|", "---|".repeat(first.labels.len()));
    for (name, res) in results {
        for (i, r) in res.rounds.iter().enumerate() {
            let cells: Vec<String> = r
                .windows
                .iter()
                .map(|w| format!("{:.1} ({:.3})", ms(w.proc), ratio(w.proc, r.dump)))
                .collect();
            println!(
                "| {name} | {} | {} | {:.1} | {} | {:.3} |",
                i + 1,
                r.census.total,
                ms(r.dump),
                cells.join(" | "),
                ratio(r.windows[0].proc, r.windows[1].proc)
            );
        }
    }
    println!("\nOver the rounds, min / median / max:\n");
    for (name, res) in results {
        let rs = &res.rounds;
        for (i, label) in res.labels.iter().enumerate() {
            println!(
                "- {name}, {label}: agent / dump {}; outside its polls (process CPU less the \
                 agent's own `bindwatch_poll_cpu_seconds_total`) {} ms per poll; VmRSS {} kB \
                 after the first window, {} kB at the end",
                min_median_max(rs.iter().map(|r| ratio(r.windows[i].proc, r.dump)), 3),
                min_median_max(
                    rs.iter()
                        .map(|r| ms(r.windows[i].proc.saturating_sub(r.windows[i].self_cpu))),
                    1
                ),
                res.rss[i].0,
                res.rss[i].1,
            );
        }
        println!(
            "- {name}: bpf / netlink {}",
            min_median_max(
                rs.iter()
                    .map(|r| ratio(r.windows[0].proc, r.windows[1].proc)),
                3
            )
        );
        if res.labels.len() == 4 {
            for (cur, base) in [(0, 2), (1, 3)] {
                println!(
                    "- {name}: {} / {} {}",
                    res.labels[cur],
                    res.labels[base],
                    min_median_max(
                        rs.iter()
                            .map(|r| ratio(r.windows[cur].proc, r.windows[base].proc)),
                        3
                    )
                );
            }
        }
    }
}
