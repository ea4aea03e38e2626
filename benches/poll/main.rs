//! "A million sockets": what one bindwatch poll costs next to the raw socket-table
//! dump it is built on (one-walk and two-walk sock_diag), `ss -tan`, the /proc/net
//! source and node_exporter's tcpstat, at 1k / 10k / 100k / 1M loopback sockets;
//! the real `bindwatch serve` (memory, CPU per poll and per scrape, `/metrics`
//! latency under 10 concurrent scrapers with wrk); and the steady-state cost of
//! owner attribution (~100k sockets in 200 processes). docs/performance.md has the
//! figures and how to read them.
//!
//! Needs root: every population lives in a network namespace of its own (so counts
//! are exact and the host's table is untouched), which this process enters with
//! unshare(CLONE_NEWNET) before spawning anything. Needs `ss`; the serve phase uses
//! `wrk` and `prometheus-node-exporter` when installed (Debian packages).
//!
//! ```text
//! cargo bench --bench poll                          # everything, about 10 minutes
//! cargo bench --bench poll -- --sizes 10k,100k --runs 5 --no-serve --no-owners
//! cargo bench --bench poll -- --profile 1m 10       # build 1M, then only poll (for perf -p)
//! cargo bench --bench poll -- --hold 100k           # build, print pids, wait for Enter
//! cargo bench --bench poll -- --sizes 100k --no-table --no-serve --no-owners \
//!     --baseline-bin target/baseline-ec412dd/bindwatch   # poll CPU against an older build
//! cargo bench --bench poll -- --sizes 100k,1m --runs 5 --no-table --no-serve --no-owners \
//!     --agents [--baseline-bin PATH]                 # whole agents against the dump
//! ```
//!
//! One module per job: `popgen` builds the populations and `tw` keeps their TIME_WAITs
//! alive; the phases are `table` (every reader of the socket table), `serve` (the real
//! agent, and node_exporter), `owners` (owner attribution), `baseline` (an older
//! build's poll CPU) and `agents` (whole agents of both sources against the dump);
//! `modes` holds `--profile` and `--hold`; `report` prints the Markdown tables;
//! `args`, `measure`, `rawdiag`, `host` and `http` are what they share.

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Progress on stderr, stamped with seconds since the start.
macro_rules! log {
    ($($t:tt)*) => {
        eprintln!("[{:6.1}s] {}", $crate::START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64(), format!($($t)*))
    };
}

mod agents;
mod args;
mod baseline;
mod host;
mod http;
mod measure;
mod modes;
mod owners;
mod popgen;
mod rawdiag;
mod report;
mod serve;
mod table;
mod tw;

use std::time::{Duration, Instant};

use args::parse_args;
use host::{fresh_netns, have, sysctl};
use modes::{hold, profile};
use owners::owners_phase;
use popgen::{Plan, Population};
use rawdiag::RawDiag;
use serve::{node_exporter_phase, serve_phase, NodeExporterRow, ServeRow, FIRST_PORT};
use table::table_phase;
use tw::TwKeeper;

fn main() {
    if std::env::var_os(popgen::CHILD_ENV).is_some() {
        popgen::child_main();
    }
    // `cargo test --all-targets` runs bench binaries too; building a million
    // sockets belongs to `cargo bench` only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/poll/main.rs: run with `cargo bench --bench poll`");
        return;
    }
    START.get_or_init(Instant::now);
    let args = parse_args();
    let nofile = popgen::raise_nofile();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the benchmark needs root (network namespaces)");
    if let Some((size, polls)) = args.profile {
        return profile(size, polls);
    }
    if let Some(size) = args.hold {
        return hold(size);
    }

    println!(
        "# bindwatch poll benchmark\n\nkernel {}, {} CPUs, RLIMIT_NOFILE {}, tcp_max_tw_buckets {}, runs {}, loadavg at start {}",
        sysctl("kernel.osrelease"),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        nofile,
        sysctl("net.ipv4.tcp_max_tw_buckets"),
        args.runs,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let mut serve_rows: Vec<(String, ServeRow)> = Vec::new();
    let mut ne_rows: Vec<(String, Option<NodeExporterRow>)> = Vec::new();
    let mut table_rows: Vec<report::TableReport> = Vec::new();
    let mut baseline_rows: Vec<(String, baseline::Outcome)> = Vec::new();
    let mut agent_rows: Vec<(String, agents::Outcome)> = Vec::new();
    if args.serve {
        // Baseline: `bindwatch serve` with an empty table.
        fresh_netns();
        log!("== empty table: serve phase");
        let mut nobody = Population::build(&Plan { children: vec![] }).expect("empty");
        let mut tw = TwKeeper {
            pop: &mut nobody,
            count: 0,
            made: None,
            batches: 0,
        };
        serve_rows.push((
            "empty".into(),
            serve_phase(&mut tw, "netlink", "0.01", true, true, 5),
        ));
        serve_rows.push((
            "empty".into(),
            serve_phase(&mut tw, "netlink", "0", true, false, 5),
        ));
        serve_rows.push((
            "empty".into(),
            serve_phase(&mut tw, "bpf", "0", true, false, 5),
        ));
        serve_rows.push((
            "empty".into(),
            serve_phase(&mut tw, "netlink", "0.01", false, true, 5),
        ));
        if have("prometheus-node-exporter") {
            let mut raw = RawDiag::open();
            ne_rows.push(("empty".into(), node_exporter_phase(&mut tw, &mut raw)));
        }
    }

    for size in &args.sizes {
        fresh_netns();
        log!("== {}: building", size.name);
        let plan = Plan::sized(size.total, size.listeners, size.tw, FIRST_PORT).parked(size.parked);
        let mut pop = Population::build(&plan).expect("population");
        let build = pop.build_time;
        log!(
            "== {}: {} processes, {} listeners and {} established sockets in {:.1}s",
            size.name,
            plan.children.len(),
            pop.listeners,
            pop.established,
            build.as_secs_f64(),
        );
        let mut tw = TwKeeper {
            pop: &mut pop,
            count: size.tw,
            made: None,
            batches: 0,
        };
        let runs = args.runs;
        let t0 = Instant::now();
        let mut raw = RawDiag::open();
        tw.ensure(&mut raw, Duration::ZERO);
        let tw_time = t0.elapsed();
        let row = args.table.then(|| table_phase(runs, &mut tw));
        if let Some(row) = &row {
            log!(
                "== {}: table phase done ({} .. {})",
                size.name,
                row.census_min,
                row.census_max
            );
        }
        if args.agents {
            log!("== {}: whole agents against the dump", size.name);
            agent_rows.push((
                size.name.to_string(),
                agents::phase(&mut tw, runs, args.baseline_bin.as_deref()),
            ));
            log!("== {}: agents phase done", size.name);
        } else if let Some(bin) = &args.baseline_bin {
            log!(
                "== {}: against the baseline build {}",
                size.name,
                bin.display()
            );
            baseline_rows.push((size.name.to_string(), baseline::phase(&mut tw, bin, runs)));
            log!("== {}: baseline phase done", size.name);
        }
        if args.serve {
            // As deployed (default CPU budget: the table is walked when the budget
            // allows), then the worst case: a full walk every poll.
            serve_rows.push((
                size.name.to_string(),
                serve_phase(&mut tw, "netlink", "0.01", true, true, 5),
            ));
            serve_rows.push((
                size.name.to_string(),
                serve_phase(&mut tw, "netlink", "0", true, false, 5),
            ));
            serve_rows.push((
                size.name.to_string(),
                serve_phase(&mut tw, "bpf", "0", true, false, 5),
            ));
            serve_rows.push((
                size.name.to_string(),
                serve_phase(&mut tw, "netlink", "0.01", false, true, 5),
            ));
            log!("== {}: serve phases done", size.name);
            if have("prometheus-node-exporter") {
                ne_rows.push((
                    size.name.to_string(),
                    node_exporter_phase(&mut tw, &mut raw),
                ));
                log!("== {}: node_exporter done", size.name);
            }
        }
        if let Some(row) = row {
            table_rows.push((size.name.to_string(), row, build, tw_time, tw.batches));
        }
        drop(pop);
    }

    report::tables(&table_rows);
    baseline::report(&baseline_rows);
    agents::report(&agent_rows);
    report::serve(&serve_rows);
    report::node_exporter(&ne_rows, &serve_rows);

    if args.owners {
        log!("== owners: building 200 processes");
        let o = owners_phase(args.runs);
        report::owners(&o);
    }
}
