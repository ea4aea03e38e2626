//! The table-read phase: every reader of the socket table (bindwatch's polls, the bpf
//! iterator, raw and decoded sock_diag dumps, `ss`, /proc/net) on the same population,
//! round-robin.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bindwatch::collect::Collector;
use bindwatch::model::{Protocol, State};
use bindwatch::source::bpf::SockIter;
use bindwatch::source::netlink::{NetlinkDiag, Request, ALL_STATES};
use bindwatch::source::{SocketTable, SourceChoice};

use crate::measure::{full_scan_opts, measure, measure_cmd, median, Sample};
use crate::rawdiag::{tcp_req, Census, RawDiag};
use crate::tw::TwKeeper;

/// Median wall / CPU of each method at one size.
#[derive(Default)]
pub struct TableRow {
    /// Smallest and largest census seen at the start of a round.
    pub census_min: Census,
    pub census_max: Census,
    pub methods: BTreeMap<&'static str, (Duration, Duration, u64)>,
    /// Per round (same table, back to back): `ss` CPU / poll CPU and poll CPU /
    /// raw 1-walk CPU, so the spread of each ratio shows, not only the medians'.
    pub round_ratios: Vec<(f64, f64)>,
    /// Per round: poll (bpf) CPU / raw 1-walk CPU, and poll (bpf) CPU / poll CPU.
    pub bpf_ratios: Vec<(f64, f64)>,
    pub first_poll: Option<Sample>,
    pub runs: usize,
}

impl TableRow {
    /// The median CPU seconds of `method` (NaN when it was not measured).
    pub fn cpu_secs(&self, method: &str) -> f64 {
        self.methods
            .get(method)
            .map_or(f64::NAN, |x| x.1.as_secs_f64())
    }
}

pub const METHODS: [&str; 13] = [
    "poll",
    "poll (bpf)",
    "poll (owners off)",
    "poll (bpf, owners off)",
    "bpf 1-walk",
    "bpf 1-walk, narrowed",
    "raw bound-only",
    "nl decode 1-walk",
    "raw 1-walk",
    "raw 1-walk, no NET_ADMIN",
    "raw 2-walk",
    "ss -tan",
    "procfs",
];

pub fn total_tcp(s: &bindwatch::model::Snapshot) -> u64 {
    s.counts
        .iter()
        .filter(|((p, _, _), _)| *p == Protocol::Tcp)
        .map(|(_, n)| *n)
        .sum()
}

pub fn table_phase(runs: usize, tw: &mut TwKeeper) -> TableRow {
    let mut row = TableRow {
        runs,
        ..Default::default()
    };
    let mut raw = RawDiag::open();
    let mut raw_nocap = RawDiag::open_as_bindwatch();
    let proc = Path::new("/proc");
    let mut on = Collector::new(full_scan_opts(proc)).expect("collector");
    let mut off_opts = full_scan_opts(proc);
    off_opts.owners = false;
    let mut off = Collector::new(off_opts).expect("collector");
    let mut bpf_opts = full_scan_opts(proc);
    bpf_opts.source = SourceChoice::Bpf;
    let mut on_bpf = Collector::new(bpf_opts.clone()).expect("bpf collector");
    bpf_opts.owners = false;
    let mut off_bpf = Collector::new(bpf_opts).expect("bpf collector");
    let mut sockiter =
        SockIter::open(Path::new("/proc"), Path::new("/")).expect("bpf socket iterator");
    let ephemeral = bindwatch::source::sysctl::read_port_allocation(proc)
        .map(|a| a.range)
        .unwrap_or((32768, 60999));
    let mut listening_bits = vec![0u64; 1024];
    sockiter
        .dump(Protocol::Tcp, 1 << State::Listen as u32, &mut |s| {
            let p = s.local.port();
            listening_bits[usize::from(p) / 64] |= 1 << (p % 64);
        })
        .expect("bpf listeners");
    let mut nl = NetlinkDiag::open().expect("netlink");
    let mut procfs = SocketTable::open(
        SourceChoice::Procfs,
        proc,
        Path::new("/proc"),
        Path::new("/"),
    )
    .expect("procfs source");
    // The first poll scans every fd of every process for owners; reported apart,
    // and done before the TIME_WAITs (which have no fd) start their 60 s.
    row.first_poll = Some(measure(&mut || {
        total_tcp(&on.poll(&[], &[]).expect("poll"))
    }));
    off.poll(&[], &[]).expect("poll");
    on_bpf.poll(&[], &[]).expect("poll");
    off_bpf.poll(&[], &[]).expect("poll");

    let mut samples: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
    let mut round = Duration::from_secs(5);
    // Round-robin, so any drift hits every method alike.
    for i in 0..runs {
        tw.ensure(&mut raw, round + round / 2);
        let c = raw.census();
        if i == 0 || c.total < row.census_min.total {
            row.census_min = c;
        }
        if i == 0 || c.total > row.census_max.total {
            row.census_max = c;
        }
        let t0 = Instant::now();
        for m in METHODS {
            let s = match m {
                "poll" => measure(&mut || total_tcp(&on.poll(&[], &[]).expect("poll"))),
                "poll (owners off)" => {
                    measure(&mut || total_tcp(&off.poll(&[], &[]).expect("poll")))
                }
                "poll (bpf)" => measure(&mut || total_tcp(&on_bpf.poll(&[], &[]).expect("poll"))),
                "poll (bpf, owners off)" => {
                    measure(&mut || total_tcp(&off_bpf.poll(&[], &[]).expect("poll")))
                }
                "bpf 1-walk" => measure(&mut || {
                    let mut n = 0u64;
                    sockiter
                        .dump(Protocol::Tcp, ALL_STATES, &mut |_| n += 1)
                        .expect("bpf dump");
                    n
                }),
                // What a bpf poll's table walk asks: whole sockets on the listening
                // ports, lite records elsewhere (src/source/bpf.rs, Narrow).
                "bpf 1-walk, narrowed" => measure(&mut || {
                    let mut n = 0u64;
                    sockiter
                        .dump_narrowed(
                            Protocol::Tcp,
                            ALL_STATES,
                            Some((&listening_bits, ephemeral)),
                            &mut |_| n += 1,
                        )
                        .expect("bpf dump");
                    n
                }),
                // The sock_diag dump a bpf poll adds for bound-only sockets: the kernel
                // walks the bind hash and then, finding nothing to report, the whole
                // established hash too (inet_diag_dump_icsk skips it only for a
                // listeners-only request).
                "raw bound-only" => measure(&mut || {
                    raw.dump(
                        Request {
                            states: 1 << State::BoundInactive as u32,
                            ..tcp_req(libc::AF_UNSPEC)
                        },
                        None,
                    )
                }),
                "nl decode 1-walk" => measure(&mut || {
                    let mut n = 0u64;
                    nl.dump(tcp_req(libc::AF_UNSPEC), &mut |_| n += 1)
                        .expect("dump");
                    n
                }),
                "raw 1-walk" => measure(&mut || raw.one_walk()),
                "raw 1-walk, no NET_ADMIN" => measure(&mut || raw_nocap.one_walk()),
                "raw 2-walk" => measure(&mut || raw.two_walk()),
                "ss -tan" => measure_cmd("ss", &["-tan"]),
                "procfs" => measure(&mut || {
                    let mut n = 0u64;
                    procfs
                        .dump(Protocol::Tcp, ALL_STATES, &mut |_| n += 1)
                        .expect("procfs dump");
                    n
                }),
                _ => unreachable!(),
            };
            samples.entry(m).or_default().push(s);
        }
        round = t0.elapsed();
    }
    let cpu = |m: &str, i: usize| samples[m][i].cpu.as_secs_f64();
    row.bpf_ratios = (0..runs)
        .map(|i| {
            (
                cpu("poll (bpf)", i) / cpu("raw 1-walk", i),
                cpu("poll (bpf)", i) / cpu("poll", i),
            )
        })
        .collect();
    row.round_ratios = (0..runs)
        .map(|i| {
            (
                cpu("ss -tan", i) / cpu("poll", i),
                cpu("poll", i) / cpu("raw 1-walk", i),
            )
        })
        .collect();
    for (m, v) in samples {
        let count = v.iter().map(|s| s.count).max().unwrap_or(0);
        row.methods.insert(
            m,
            (
                median(v.iter().map(|s| s.wall).collect()),
                median(v.iter().map(|s| s.cpu).collect()),
                count,
            ),
        );
    }
    row
}
