//! The command line: the population sizes (`1k` .. `1m`, with `-<N>l` and `-p`), the
//! number of rounds, and which phases and modes run.

use crate::popgen::Plan;

#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub name: &'static str,
    pub total: usize,
    pub listeners: usize,
    pub tw: usize,
    /// `-p`: the connections' fds are parked in flight (popgen's `park`).
    pub parked: bool,
}

/// The base sizes; `-<N>l` after a name sets its number of listening ports instead.
pub const SIZES: [Size; 4] = [
    Size {
        name: "1k",
        total: 1_000,
        listeners: 10,
        tw: 100,
        parked: false,
    },
    Size {
        name: "10k",
        total: 10_000,
        listeners: 50,
        tw: 1_000,
        parked: false,
    },
    Size {
        name: "100k",
        total: 100_000,
        listeners: 200,
        tw: 10_000,
        parked: false,
    },
    // TIME_WAIT stays under tcp_max_tw_buckets (131,072).
    Size {
        name: "1m",
        total: 1_000_000,
        listeners: 500,
        tw: 100_000,
        parked: false,
    },
];

/// `1k-500l` is 1k sockets on the 1M table's 500 listening ports: the /metrics body
/// is made of per-port series, so it isolates what the socket count does to a
/// scrape from what the number of ports does (`1m-50l` and `1k-50l` likewise).
pub const DEFAULT_SIZES: &str = "1k,1k-500l,10k,100k,1m";

/// `1m`, `1m-50l` for the 1m table with 50 listening ports, and `-p` after either
/// for the same table with its connections parked in flight: the sockets exist, no
/// process holds their fds (`1m-p`, `1m-50l-p`).
pub fn parse_size(spec: &str) -> Result<Size, String> {
    let spec = spec.trim().to_ascii_lowercase();
    let (rest, parked) = match spec.strip_suffix("-p") {
        Some(r) => (r, true),
        None => (spec.as_str(), false),
    };
    let (base, ports) = match rest.split_once('-') {
        Some((b, p)) => {
            let n = p
                .strip_suffix('l')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    format!("size {spec}: expected -<N>l with N listening ports, 1 to 10000, then an optional -p")
                })?;
            (b, Some(n))
        }
        None => (rest, None),
    };
    let mut size = SIZES
        .iter()
        .copied()
        .find(|s| s.name == base)
        .ok_or_else(|| {
            format!("unknown size {spec} (1k, 10k, 100k, 1m, each with an optional -<N>l and -p)")
        })?;
    if let Some(n) = ports {
        let needed = Plan::children_needed(size.total, n, size.tw);
        if n < needed || n + size.tw >= size.total {
            return Err(format!(
                "size {spec}: {} sockets need {needed} to {} listening ports (one per child process)",
                size.total,
                size.total - size.tw - 1
            ));
        }
        size.listeners = n;
    }
    size.parked = parked;
    if ports.is_some() || parked {
        // A bench run lives as long as its sizes: leaking the few names is simplest.
        size.name = Box::leak(spec.clone().into_boxed_str());
    }
    Ok(size)
}

pub struct Args {
    pub sizes: Vec<Size>,
    pub runs: usize,
    pub serve: bool,
    pub owners: bool,
    pub hold: Option<Size>,
    /// Build SIZE, then only poll (for `perf record -i`); with the number of polls.
    pub profile: Option<(Size, usize)>,
    /// An older `bindwatch` binary whose poll CPU is measured beside this build's.
    pub baseline_bin: Option<std::path::PathBuf>,
    /// The table-read phase (`--no-table` skips it).
    pub table: bool,
    /// The whole agents (bpf, netlink; the baseline build's too with `--baseline-bin`)
    /// against the one-walk dump.
    pub agents: bool,
}

pub fn parse_args() -> Args {
    let find = |n: &str| parse_size(n).unwrap_or_else(|e| panic!("{e}"));
    let mut a = Args {
        sizes: DEFAULT_SIZES.split(',').map(find).collect(),
        runs: 5,
        serve: true,
        owners: true,
        hold: None,
        profile: None,
        baseline_bin: None,
        table: true,
        agents: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--sizes" => {
                a.sizes = it
                    .next()
                    .expect("--sizes LIST")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(find)
                    .collect()
            }
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--no-serve" => a.serve = false,
            "--no-owners" => a.owners = false,
            "--no-table" => a.table = false,
            "--agents" => a.agents = true,
            "--baseline-bin" => {
                let p = std::path::PathBuf::from(it.next().expect("--baseline-bin PATH"));
                assert!(p.is_file(), "--baseline-bin {}: no such file", p.display());
                a.baseline_bin = Some(p);
            }
            "--hold" => a.hold = Some(find(&it.next().expect("--hold SIZE"))),
            "--profile" => {
                let size = find(&it.next().expect("--profile SIZE POLLS"));
                let n = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--profile SIZE POLLS");
                a.profile = Some((size, n));
            }
            _ => {} // cargo passes --bench
        }
    }
    a
}
