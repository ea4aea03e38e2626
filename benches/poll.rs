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
//! ```

#[path = "support/popgen.rs"]
mod popgen;

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bindwatch::collect::{CollectOptions, Collector};
use bindwatch::model::{Protocol, State};
use bindwatch::source::bpf::SockIter;
use bindwatch::source::netlink::{NetlinkDiag, Request, ALL_STATES};
use bindwatch::source::{SocketTable, SourceChoice};

use popgen::{ListenSpec, Plan, Population};

// ------------------------------------------------------------------ measurement

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Progress on stderr, stamped with seconds since the start.
macro_rules! log {
    ($($t:tt)*) => {
        eprintln!("[{:6.1}s] {}", $crate::START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64(), format!($($t)*))
    };
}

#[path = "support/baseline.rs"]
mod baseline;

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into the struct it is given, which lives here.
    unsafe { libc::getrusage(who, &mut r) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// User CPU time of the calling thread (tick-sampled: for splits, not totals).
fn user_cpu() -> Duration {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into the struct it is given, which lives here.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) };
    Duration::new(r.ru_utime.tv_sec as u64, r.ru_utime.tv_usec as u32 * 1000)
}

/// Wall time, CPU time (user + system) and what the method counted.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    count: u64,
}

/// CPU time (user + system) of the calling thread. CLOCK_THREAD_CPUTIME_ID rather
/// than getrusage(RUSAGE_THREAD): the latter lags by up to a scheduler tick (4 ms).
fn thread_cpu() -> Duration {
    // SAFETY: timespec is plain integers, for which all zeroes is a valid value.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes only into the struct it is given, which lives here.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `f` on this thread; CPU is this thread's user + system time.
fn measure(f: &mut dyn FnMut() -> u64) -> Sample {
    let c0 = thread_cpu();
    let t0 = Instant::now();
    let count = f();
    Sample {
        wall: t0.elapsed(),
        cpu: thread_cpu() - c0,
        count,
    }
}

/// Runs a command to completion with stdout to /dev/null; CPU from RUSAGE_CHILDREN.
fn measure_cmd(cmd: &str, args: &[&str]) -> Sample {
    let c0 = rusage(libc::RUSAGE_CHILDREN);
    let t0 = Instant::now();
    let st = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?}: {st}");
    Sample {
        wall: t0.elapsed(),
        cpu: rusage(libc::RUSAGE_CHILDREN) - c0,
        count: 0,
    }
}

/// Collector options for timed polls: the first poll scans every fd to the end
/// (timed apart, as "first poll"), so the polls measured after it are steady
/// state. The agent spreads that first scan over polls instead (`scan_slice`),
/// which would charge slices of it to the polls measured here.
fn full_scan_opts(procfs: &Path) -> CollectOptions {
    let mut o = CollectOptions::new(procfs);
    o.scan_slice = None;
    // "poll" rows measure the netlink source as they always have; bpf rows say so.
    o.source = SourceChoice::Netlink;
    o
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[v.len() / 2]
}

/// "min / median / max" of `values` to `decimals` places, "-" when there are none.
fn min_median_max(values: impl Iterator<Item = f64>, decimals: usize) -> String {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(a), Some(m), Some(b)) => format!("{a:.decimals$} / {m:.decimals$} / {b:.decimals$}"),
        _ => "-".into(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ------------------------------------------------------------------ raw netlink

/// The floor: a dump loop that only counts messages (no decoding into sockets).
struct RawDiag {
    fd: std::os::fd::OwnedFd,
    buf: Vec<u8>,
}

impl RawDiag {
    /// A plain socket as root opens it (what `ss` and node_exporter use).
    fn open() -> RawDiag {
        // SAFETY: socket(2); the fd lives as long as RawDiag.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 4) };
        assert!(fd >= 0, "netlink socket: {}", io::Error::last_os_error());
        RawDiag {
            // SAFETY: a fresh descriptor nothing else owns.
            fd: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
            buf: vec![0u8; 64 * 1024],
        }
    }

    /// The socket as bindwatch opens it (without CAP_NET_ADMIN, so the kernel
    /// leaves out attributes): the floor of bindwatch's own dump.
    fn open_as_bindwatch() -> RawDiag {
        RawDiag {
            fd: bindwatch::source::netlink::open_socket().expect("netlink socket"),
            buf: vec![0u8; 64 * 1024],
        }
    }

    /// One dump; `states` gets a count per TCP state byte when given.
    fn dump(&mut self, req: Request, mut states: Option<&mut [u64; 16]>) -> u64 {
        let msg = req.encode(1);
        // SAFETY: a zeroed sockaddr_nl is the kernel's address.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and sa outlive the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        assert!(n >= 0, "sendto: {}", io::Error::last_os_error());
        let mut count = 0;
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            assert!(n > 0, "recv: {}", io::Error::last_os_error());
            let b = &self.buf[..n as usize];
            let mut off = 0;
            while off + 16 <= b.len() {
                let len = u32::from_ne_bytes(b[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes([b[off + 4], b[off + 5]]);
                match ty {
                    3 => return count, // NLMSG_DONE
                    2 => panic!("netlink error in dump"),
                    _ => {
                        count += 1;
                        if let Some(st) = states.as_deref_mut() {
                            st[(b[off + 17] & 15) as usize] += 1;
                        }
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }

    fn one_walk(&mut self) -> u64 {
        self.dump(tcp_req(libc::AF_UNSPEC), None)
    }

    fn two_walk(&mut self) -> u64 {
        self.dump(tcp_req(libc::AF_INET), None) + self.dump(tcp_req(libc::AF_INET6), None)
    }

    /// Sockets by state (one-walk), for reporting the population actually measured.
    fn census(&mut self) -> Census {
        let mut st = [0u64; 16];
        let total = self.dump(tcp_req(libc::AF_UNSPEC), Some(&mut st));
        Census {
            total,
            listen: st[State::Listen as usize],
            established: st[State::Established as usize],
            time_wait: st[State::TimeWait as usize],
        }
    }
}

fn tcp_req(family: i32) -> Request {
    Request {
        protocol: Protocol::Tcp,
        family: family as u8,
        states: ALL_STATES,
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Census {
    total: u64,
    listen: u64,
    established: u64,
    time_wait: u64,
}

impl std::fmt::Display for Census {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} TCP sockets ({} listen, {} established, {} time_wait)",
            self.total, self.listen, self.established, self.time_wait
        )
    }
}

// ------------------------------------------------------------------ environment

/// Moves this (single-threaded) process into a fresh network namespace with `lo` up.
/// Children spawned afterwards (population, ss, bindwatch serve, node_exporter)
/// inherit it; the previous one, with its leftovers, goes away with its last user.
fn fresh_netns() {
    // SAFETY: unshare(2); the bench runs no other threads.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {} (run as root)",
        io::Error::last_os_error()
    );
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip");
    assert!(st.success(), "ip link set lo up");
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/")))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// CPU time of a process, all threads, in ns (schedstat: precise, unlike /proc/PID/stat ticks).
fn proc_cpu(pid: u32) -> Duration {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

/// CPU time and name of every process on the machine (utime + stime, in ticks of
/// 10 ms: enough for the seconds-long windows this is used over).
fn all_proc_cpu() -> BTreeMap<u32, (String, Duration)> {
    let mut m = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return m;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may hold spaces: fields count from the last ')'.
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let f: Vec<&str> = stat[r + 1..].split_whitespace().collect();
        let tick = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        // After ')': state is field 0, utime 11, stime 12.
        let cpu = Duration::from_millis((tick(11) + tick(12)) * 10);
        m.insert(pid, (stat[l + 1..r].to_string(), cpu));
    }
    m
}

/// The process outside the benchmark that used the most CPU between two
/// [`all_proc_cpu`] snapshots: "name (pid): N% of a core".
fn busiest_other(
    before: &BTreeMap<u32, (String, Duration)>,
    after: &BTreeMap<u32, (String, Duration)>,
    window: Duration,
    ours: &[u32],
) -> String {
    after
        .iter()
        .filter(|(pid, _)| !ours.contains(pid))
        .filter_map(|(pid, (name, c1))| {
            let (_, c0) = before.get(pid)?;
            Some((c1.saturating_sub(*c0), *pid, name))
        })
        .max()
        .map(|(d, pid, name)| {
            format!(
                "{name} ({pid}): {:.1}% of a core",
                100.0 * d.as_secs_f64() / window.as_secs_f64().max(1e-9)
            )
        })
        .unwrap_or_else(|| "-".into())
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// GET over a fresh connection; the body.
fn http_get(port: u16, path: &str) -> io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default())
}

fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_http(port: u16, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if http_get(port, "/metrics").is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A child process killed (by its pid) and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------------ sizes

#[derive(Debug, Clone, Copy)]
struct Size {
    name: &'static str,
    total: usize,
    listeners: usize,
    tw: usize,
    /// `-p`: the connections' fds are parked in flight (popgen's `park`).
    parked: bool,
}

/// The base sizes; `-<N>l` after a name sets its number of listening ports instead.
const SIZES: [Size; 4] = [
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
const DEFAULT_SIZES: &str = "1k,1k-500l,10k,100k,1m";

/// `1m`, `1m-50l` for the 1m table with 50 listening ports, and `-p` after either
/// for the same table with its connections parked in flight: the sockets exist, no
/// process holds their fds (`1m-p`, `1m-50l-p`).
fn parse_size(spec: &str) -> Result<Size, String> {
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

/// Seconds a TIME_WAIT lives (TCP_TIMEWAIT_LEN).
const TW_LIFE: Duration = Duration::from_secs(60);

struct Args {
    sizes: Vec<Size>,
    runs: usize,
    serve: bool,
    owners: bool,
    hold: Option<Size>,
    /// Build SIZE, then only poll (for `perf record -i`); with the number of polls.
    profile: Option<(Size, usize)>,
    /// An older `bindwatch` binary whose poll CPU is measured beside this build's.
    baseline_bin: Option<std::path::PathBuf>,
    /// The table-read phase (`--no-table` skips it).
    table: bool,
}

fn parse_args() -> Args {
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

// ------------------------------------------------------------------ TIME_WAIT upkeep

/// The TIME_WAIT part of a population. TIME_WAITs live 60 s, so they are made just
/// before a phase measures, and remade (after the old ones are gone, so the count
/// stays exact under tcp_max_tw_buckets) when a phase would outlive them.
struct TwKeeper<'a> {
    pop: &'a mut Population,
    count: usize,
    made: Option<Instant>,
    /// How often the TIME_WAITs were made.
    pub batches: u32,
}

impl TwKeeper<'_> {
    /// Makes sure the TIME_WAITs exist and live at least `need` longer.
    fn ensure(&mut self, raw: &mut RawDiag, need: Duration) {
        if self.count == 0 {
            return;
        }
        if let Some(t) = self.made {
            if t.elapsed() + need < TW_LIFE {
                return;
            }
            log!("   TIME_WAITs would expire mid-phase: waiting for them to go, then remaking");
            let t0 = Instant::now();
            while raw.census().time_wait > (self.count as u64) / 100
                && t0.elapsed() < Duration::from_secs(90)
            {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let made = self.pop.add_time_wait(self.count).expect("time_wait");
        self.made = Some(Instant::now());
        self.batches += 1;
        log!("   made {made} TIME_WAIT");
    }
}

// ------------------------------------------------------------------ table reads

/// Median wall / CPU of each method at one size.
#[derive(Default)]
struct TableRow {
    /// Smallest and largest census seen at the start of a round.
    census_min: Census,
    census_max: Census,
    methods: BTreeMap<&'static str, (Duration, Duration, u64)>,
    /// Per round (same table, back to back): `ss` CPU / poll CPU and poll CPU /
    /// raw 1-walk CPU, so the spread of each ratio shows, not only the medians'.
    round_ratios: Vec<(f64, f64)>,
    /// Per round: poll (bpf) CPU / raw 1-walk CPU, and poll (bpf) CPU / poll CPU.
    bpf_ratios: Vec<(f64, f64)>,
    first_poll: Option<Sample>,
    runs: usize,
}

impl TableRow {
    /// The median CPU seconds of `method` (NaN when it was not measured).
    fn cpu_secs(&self, method: &str) -> f64 {
        self.methods
            .get(method)
            .map_or(f64::NAN, |x| x.1.as_secs_f64())
    }
}

const METHODS: [&str; 13] = [
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

fn total_tcp(s: &bindwatch::model::Snapshot) -> u64 {
    s.counts
        .iter()
        .filter(|((p, _, _), _)| *p == Protocol::Tcp)
        .map(|(_, n)| *n)
        .sum()
}

fn table_phase(runs: usize, tw: &mut TwKeeper) -> TableRow {
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

// ------------------------------------------------------------------ serve

#[derive(Default)]
struct ServeRow {
    /// `--source`.
    source: String,
    /// `--poll.cpu-budget`: "0" walks the table every poll.
    cpu_budget: String,
    /// False: `--poll.interval 1h`, no poll after the first: the control for what
    /// the polls do to scrape latency.
    polling: bool,
    census: Census,
    first_poll: Duration,
    hwm_kb: u64,
    rss_kb: u64,
    polls: f64,
    poll_wall: Duration,
    cpu_per_poll: Duration,
    cpu_per_scrape: Duration,
    body_bytes: usize,
    wrk: Option<WrkResult>,
    wrk_gzip: Option<WrkResult>,
    /// Scrapes at a Prometheus-like pace: (plain, gzip).
    paced: Option<(Paced, Paced)>,
    /// The busiest process outside the benchmark while wrk and the paced scrapes ran:
    /// what else competed for the CPUs.
    busiest_other: String,
}

/// Latencies of paced scrapes, ms.
#[derive(Debug, Clone, Default)]
struct Paced {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Scrapers per paced run, their pace, and how long a run lasts.
const PACED_SCRAPERS: usize = 10;
const PACED_PERIOD: Duration = Duration::from_millis(50);
const PACED_RUN: Duration = Duration::from_secs(5);

/// Ten scrapers, each on its own keep-alive connection like a Prometheus target's,
/// each sending a request every 50 ms: 200 scrapes/s, far from saturating the agent,
/// so the latency is the scrape's own and not a queue's (wrk's closed loop measures the
/// queue). Open loop: a latency runs from the scheduled send time, so a stall also
/// counts against the requests it delays.
fn paced_scrapes(port: u16, gzip: bool) -> Option<Paced> {
    let start = Instant::now() + Duration::from_millis(100);
    let workers: Vec<_> = (0..PACED_SCRAPERS)
        .map(|i| {
            std::thread::spawn(move || -> io::Result<Vec<f64>> {
                let mut conn = TcpStream::connect(("127.0.0.1", port))?;
                conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                let req = format!(
                    "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
                    if gzip {
                        "Accept-Encoding: gzip\r\n"
                    } else {
                        ""
                    }
                );
                let mut lat = Vec::new();
                let mut buf = vec![0u8; 1 << 16];
                // Staggered like independent scrapers.
                let mut due = start + PACED_PERIOD.mul_f64(i as f64 / PACED_SCRAPERS as f64);
                while due < start + PACED_RUN {
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    conn.write_all(req.as_bytes())?;
                    read_response(&mut conn, &mut buf)?;
                    lat.push(due.elapsed().as_secs_f64() * 1e3);
                    due += PACED_PERIOD;
                }
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.join().ok()?.ok()?);
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    Some(Paced {
        n: all.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: *all.last()?,
    })
}

/// Reads one HTTP/1.1 response with a Content-Length body from a keep-alive connection.
fn read_response(conn: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut head = Vec::new();
    let body_start = loop {
        let n = conn.read(buf)?;
        if n == 0 {
            return Err(io::Error::other("connection closed mid-response"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let headers = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
    let len: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("response without content-length"))?;
    let mut have = head.len() - body_start;
    while have < len {
        let n = conn.read(buf)?;
        if n == 0 {
            return Err(io::Error::other("connection closed mid-body"));
        }
        have += n;
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
struct WrkResult {
    p50: String,
    p99: String,
    max: String,
    rps: String,
    requests: u64,
    /// p99 of every repeat, when the run is the median of several.
    p99_runs: Vec<String>,
}

/// wrk's "419.00us" / "5.71ms" / "1.20s" in microseconds.
fn wrk_us(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map(|x| x * scale).unwrap_or(f64::NAN)
}

/// wrk `times` times; the run with the median p99, with every run's p99. A tail
/// percentile of one 10 s run on 2 shared CPUs moves by several times between
/// runs (scheduler slices), so one run is not a measurement.
fn budget_label(r: &ServeRow) -> String {
    if r.polling {
        format!("{} ({})", r.cpu_budget, r.source)
    } else {
        format!("{}, no polls ({})", r.cpu_budget, r.source)
    }
}

fn run_wrk_median(port: u16, secs: u32, gzip: bool, times: usize) -> Option<WrkResult> {
    let mut runs: Vec<WrkResult> = (0..times)
        .filter_map(|_| run_wrk(port, secs, gzip))
        .collect();
    runs.sort_by(|a, b| wrk_us(&a.p99).total_cmp(&wrk_us(&b.p99)));
    let all: Vec<String> = runs.iter().map(|r| r.p99.clone()).collect();
    let mid = runs.len().checked_sub(1)? / 2;
    let mut m = runs.swap_remove(mid);
    m.p99_runs = all;
    Some(m)
}

#[derive(Debug, Clone, Default)]
struct NodeExporterRow {
    census: Census,
    cpu_per_scrape: Duration,
    wall_per_scrape: Duration,
    hwm_kb: u64,
}

const SERVE_PORT: u16 = 10033;
/// First listener port of a population (clear of SERVE_PORT and NE_PORT).
const FIRST_PORT: u16 = 11_000;
const NE_PORT: u16 = 19100;

/// (polls finished, their summed duration in seconds) from bindwatch's own histogram.
fn polls_done(port: u16) -> (f64, f64) {
    http_get(port, "/metrics")
        .map(|b| {
            (
                metric_sum(&b, "bindwatch_poll_duration_seconds_count"),
                metric_sum(&b, "bindwatch_poll_duration_seconds_sum"),
            )
        })
        .unwrap_or((0.0, 0.0))
}

/// Waits until `n` more polls than `from` have finished (bounded).
fn wait_polls(port: u16, from: f64, n: f64, limit: Duration) -> (f64, f64) {
    let t0 = Instant::now();
    loop {
        let p = polls_done(port);
        if p.0 >= from + n || t0.elapsed() > limit {
            return p;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `wrk` with 10 connections on 2 threads for `secs` (bounded by wrk itself).
fn run_wrk(port: u16, secs: u32, gzip: bool) -> Option<WrkResult> {
    let mut args = vec![
        "-t2".to_string(),
        "-c10".into(),
        format!("-d{secs}s"),
        "--timeout".into(),
        "10s".into(),
        "--latency".into(),
    ];
    if gzip {
        // What Prometheus sends.
        args.extend(["-H".into(), "Accept-Encoding: gzip".into()]);
    }
    args.push(format!("http://127.0.0.1:{port}/metrics"));
    // Not pinned: with bindwatch confined to one CPU and wrk to the other, the
    // 1M p99 rose to 25-35 ms, node_exporter's too (scripts/bench-pinned.sh); as
    // deployed, bindwatch shares every CPU of the node.
    let out = Command::new("wrk").args(&args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |prefix: &str, n: usize| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(n))
            .unwrap_or("?")
            .to_string()
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(WrkResult {
        p50: field("50%", 1),
        p99: field("99%", 1),
        max: field("Latency ", 3),
        rps: field("Requests/sec", 1),
        requests,
        p99_runs: Vec::new(),
    })
}

/// The real `bindwatch serve` against the population: memory, CPU per poll and per
/// scrape, scrape latency with wrk; then node_exporter's tcpstat on the same table.
fn serve_phase(
    tw: &mut TwKeeper,
    source: &str,
    cpu_budget: &str,
    polling: bool,
    plain_wrk: bool,
    wrk_secs: u32,
) -> ServeRow {
    let mut raw = RawDiag::open();
    let mut row = ServeRow {
        source: source.to_string(),
        cpu_budget: cpu_budget.to_string(),
        polling,
        ..Default::default()
    };
    let bin = env!("CARGO_BIN_EXE_bindwatch");
    let t0 = Instant::now();
    let child = Command::new(bin)
        .args([
            "serve",
            "--web.listen-address",
            &format!("127.0.0.1:{SERVE_PORT}"),
            "--poll.interval",
            if polling { "1s" } else { "1h" },
            "--poll.cpu-budget",
            cpu_budget,
            "--source",
            source,
            "--log.level",
            "warn",
            // Never the host's /run/bindwatch/state.json.
            "--state.file",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("bindwatch serve");
    let pid = child.id();
    let serve = Guard(child);
    // The first poll (with the cold owner scan) runs before the server answers.
    assert!(
        wait_http(SERVE_PORT, Duration::from_secs(120)),
        "bindwatch serve did not answer"
    );
    row.first_poll = t0.elapsed();
    // wrk runs 3 times per encoding on the default-budget row (once otherwise).
    let times: u32 = if plain_wrk { 3 } else { 1 };
    let paced = if plain_wrk {
        2 * PACED_RUN
    } else {
        Duration::ZERO
    };
    // Within a TIME_WAIT's 60 s even on the default-budget row (30 s of wrk, 10 s paced).
    let need = Duration::from_secs(2 * u64::from(times * wrk_secs) + 15) + paced;
    tw.ensure(&mut raw, need);
    row.census = raw.census();
    if polling {
        // Several polls of this table, then the high-water mark.
        let p0 = wait_polls(
            SERVE_PORT,
            polls_done(SERVE_PORT).0,
            1.0,
            Duration::from_secs(60),
        );
        let c0 = proc_cpu(pid);
        let p1 = wait_polls(SERVE_PORT, p0.0, 5.0, Duration::from_secs(120));
        let c1 = proc_cpu(pid);
        // The scrapes that count polls cost a little CPU too; negligible beside a poll.
        row.polls = p1.0 - p0.0;
        row.poll_wall = Duration::from_secs_f64((p1.1 - p0.1) / row.polls.max(1.0));
        row.cpu_per_poll = (c1 - c0).div_f64(row.polls.max(1.0));
    }
    // CPU per scrape: back-to-back scrapes, minus the polls that ran meanwhile.
    let n = 200;
    let p2 = polls_done(SERVE_PORT);
    let c2 = proc_cpu(pid);
    for _ in 0..n {
        row.body_bytes = http_get(SERVE_PORT, "/metrics")
            .map(|b| b.len())
            .unwrap_or(0);
    }
    let c3 = proc_cpu(pid);
    if let Some(dir) = std::env::var_os("BENCH_SAVE_BODY") {
        let body = http_get(SERVE_PORT, "/metrics").unwrap_or_default();
        let f = Path::new(&dir).join(format!("metrics-{}-{}.prom", row.census.total, cpu_budget));
        let _ = std::fs::write(f, body);
    }
    let p3 = polls_done(SERVE_PORT);
    let scrape_cpu = (c3 - c2).saturating_sub(row.cpu_per_poll.mul_f64(p3.0 - p2.0));
    row.cpu_per_scrape = scrape_cpu / n;
    let mut ours = tw.pop.pids();
    ours.extend([pid, std::process::id()]);
    let (others0, w0) = (all_proc_cpu(), Instant::now());
    if have("wrk") {
        // The default-budget row is the one the latency targets are read from.
        if plain_wrk {
            row.wrk = run_wrk_median(SERVE_PORT, wrk_secs, false, times as usize);
        }
        row.wrk_gzip = run_wrk_median(SERVE_PORT, wrk_secs, true, times as usize);
    }
    if plain_wrk {
        row.paced = paced_scrapes(SERVE_PORT, false).zip(paced_scrapes(SERVE_PORT, true));
        match &row.paced {
            Some((p, g)) => log!(
                "   paced scrapes: p99 {:.2} ms plain, {:.2} ms gzip",
                p.p99,
                g.p99
            ),
            None => log!("   paced scrapes failed"),
        }
    }
    row.busiest_other = busiest_other(&others0, &all_proc_cpu(), w0.elapsed(), &ours);
    log!("   busiest other process meanwhile: {}", row.busiest_other);
    row.hwm_kb = status_kb(pid, "VmHWM:");
    row.rss_kb = status_kb(pid, "VmRSS:");
    drop(serve);
    row
}

fn node_exporter_phase(tw: &mut TwKeeper, raw: &mut RawDiag) -> Option<NodeExporterRow> {
    let child = Command::new("prometheus-node-exporter")
        .args([
            "--collector.disable-defaults",
            "--collector.tcpstat",
            &format!("--web.listen-address=127.0.0.1:{NE_PORT}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    let _g = Guard(child);
    if !wait_http(NE_PORT, Duration::from_secs(60)) {
        return None;
    }
    tw.ensure(raw, Duration::from_secs(25));
    let census = raw.census();
    let mut walls = Vec::new();
    let c0 = proc_cpu(pid);
    let scrapes = 5;
    for _ in 0..scrapes {
        let t0 = Instant::now();
        let body = http_get(NE_PORT, "/metrics").unwrap_or_default();
        assert!(
            body.contains("node_tcp_connection_states"),
            "node_exporter answered without tcpstat"
        );
        walls.push(t0.elapsed());
    }
    let c1 = proc_cpu(pid);
    Some(NodeExporterRow {
        census,
        cpu_per_scrape: (c1 - c0) / scrapes,
        wall_per_scrape: median(walls),
        hwm_kb: status_kb(pid, "VmHWM:"),
    })
}

// ------------------------------------------------------------------ owners

type Stats = bindwatch::source::owners::ResolveStats;

struct OwnersResult {
    census: Census,
    procs: usize,
    first: Sample,
    first_stats: Stats,
    on: Sample,
    off: Sample,
    per_poll: Stats,
    after_new: Sample,
    after_new_stats: Stats,
    settled: Sample,
    settled_stats: Stats,
    /// The steady-state attribution work, step by step (median ms of CPU):
    /// cache re-validation (one readlink per inode), owner look-ups (per pid), flag probes.
    parts: [(String, Duration); 3],
}

fn stats_delta(a: Stats, b: Stats) -> Stats {
    Stats {
        cache_hits: b.cache_hits - a.cache_hits,
        full_scans: b.full_scans - a.full_scans,
        fds_read: b.fds_read - a.fds_read,
    }
}

/// ~100k sockets in 200 processes, each a daemon with one listener and 248
/// connections; every 4th daemon is draining (its listener closed, its port watched),
/// so its accepted connections have no live parent listener and are attributed.
fn owners_phase(runs: usize) -> OwnersResult {
    fresh_netns();
    let procs = 200;
    let conns = 248;
    let mut plan = Plan {
        children: Vec::new(),
    };
    let mut watched = Vec::new();
    for i in 0..procs {
        let port = 20_000 + i as u16;
        let draining = i % 4 == 3;
        if draining {
            watched.push((Protocol::Tcp, port));
        }
        plan.children.push(popgen::ChildPlan {
            listeners: vec![ListenSpec { v6: false, port }],
            conns,
            tw: 0,
            src: (i as u32 * 37) % 1024,
            close_listeners: draining,
            park: false,
        });
    }
    let mut pop = Population::build(&plan).expect("owners population");
    let mut raw = RawDiag::open();
    let census = raw.census();
    let proc = Path::new("/proc");
    let mut on = Collector::new(full_scan_opts(proc)).expect("collector");
    let mut off_opts = full_scan_opts(proc);
    off_opts.owners = false;
    let mut off = Collector::new(off_opts).expect("collector");
    let attributed = |c: &mut Collector| {
        c.poll(&[], &watched)
            .map(|s| s.owners.len() as u64)
            .expect("poll")
    };
    let sa = on.owner_stats();
    let first = measure(&mut || attributed(&mut on));
    let first_stats = stats_delta(sa, on.owner_stats());
    off.poll(&[], &watched).expect("poll");
    let mut son = Vec::new();
    let mut soff = Vec::new();
    let s0 = on.owner_stats();
    for _ in 0..runs {
        son.push(measure(&mut || attributed(&mut on)));
        soff.push(measure(&mut || attributed(&mut off)));
    }
    let s1 = on.owner_stats();
    let mut per_poll = stats_delta(s0, s1);
    per_poll.cache_hits /= runs as u64;
    per_poll.fds_read /= runs as u64;
    let med = |v: &[Sample]| Sample {
        wall: median(v.iter().map(|s| s.wall).collect()),
        cpu: median(v.iter().map(|s| s.cpu).collect()),
        count: v[0].count,
    };
    // A new inode of interest (a new daemon's listener) forces one full scan ...
    pop.add_listener(
        0,
        ListenSpec {
            v6: false,
            port: 21_000,
        },
    )
    .expect("listen");
    let s2 = on.owner_stats();
    let after_new = measure(&mut || attributed(&mut on));
    let s3 = on.owner_stats();
    // ... and the next poll is served from the cache again.
    let settled = measure(&mut || attributed(&mut on));
    let s4 = on.owner_stats();
    let parts = attribution_parts(&mut on, &watched, runs);
    OwnersResult {
        census,
        procs,
        first,
        first_stats,
        on: med(&son),
        off: med(&soff),
        per_poll,
        after_new,
        after_new_stats: stats_delta(s2, s3),
        settled,
        settled_stats: stats_delta(s3, s4),
        parts,
    }
}

/// Replays the three steps of a steady-state attribution with the public
/// [`OwnerResolver`] on the inodes the collector attributed: re-validating the cache,
/// reading each owning process, probing each socket's flags.
fn attribution_parts(
    c: &mut Collector,
    watched: &[(Protocol, u16)],
    runs: usize,
) -> [(String, Duration); 3] {
    use bindwatch::source::owners::{FdRef, OwnerResolver};
    use std::collections::{HashMap, HashSet};
    let snap = c.poll(&[], watched).expect("poll");
    let wanted: HashSet<u64> = snap.owners.keys().copied().collect();
    let v6: HashMap<u64, bool> = snap
        .port_sockets
        .iter()
        .map(|s| (s.inode, s.local.is_ipv6()))
        .collect();
    let mut r = OwnerResolver::new(Path::new("/proc"));
    r.resolve(&wanted); // cold: fills the cache
    let fds: HashMap<u64, FdRef> = r.resolve(&wanted);
    let pids: HashSet<u32> = fds.values().map(|f| f.pid).collect();
    let (mut a, mut b, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(measure(&mut || r.resolve(&wanted).len() as u64).cpu);
        b.push(
            measure(&mut || pids.iter().filter(|&&pid| r.owner(pid).is_some()).count() as u64).cpu,
        );
        p.push(
            measure(&mut || {
                fds.iter()
                    .filter(|(i, f)| {
                        r.probe(**f, v6.get(i).copied().unwrap_or(false), **i)
                            .is_some()
                    })
                    .count() as u64
            })
            .cpu,
        );
    }
    [
        (
            format!("cache re-validation, {} readlinks", wanted.len()),
            median(a),
        ),
        (
            format!("owner look-ups, {} pids (stat, status, cgroup)", pids.len()),
            median(b),
        ),
        (
            format!(
                "flag probes, {} sockets (pidfd_getfd + getsockopt)",
                fds.len()
            ),
            median(p),
        ),
    ]
}

// ------------------------------------------------------------------ modes

fn profile(size: Size, polls: usize) {
    fresh_netns();
    let plan = Plan::sized(size.total, size.listeners, size.tw, FIRST_PORT).parked(size.parked);
    let mut pop = Population::build(&plan).expect("population");
    let mut c = Collector::new(full_scan_opts(Path::new("/proc"))).expect("collector");
    c.poll(&[], &[]).expect("poll");
    pop.add_time_wait(size.tw).expect("time_wait");
    let mut raw = RawDiag::open();
    let mut raw_nocap = RawDiag::open_as_bindwatch();
    let mut nl = NetlinkDiag::open().expect("netlink");
    log!("profiling {} polls of {}", polls, raw.census());
    let (mut ps, mut ds, mut rs, mut ns) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..polls {
        let u0 = user_cpu();
        let s = measure(&mut || c.poll(&[], &[]).map(|_| 0).expect("poll"));
        let su = user_cpu() - u0;
        let u0 = user_cpu();
        let d = measure(&mut || {
            let mut n = 0u64;
            nl.dump(tcp_req(libc::AF_UNSPEC), &mut |_| n += 1)
                .expect("dump");
            n
        });
        let du = user_cpu() - u0;
        let u0 = user_cpu();
        let r = measure(&mut || raw.one_walk());
        let ru = user_cpu() - u0;
        let n = measure(&mut || raw_nocap.one_walk());
        log!(
            "poll {:.1} ms CPU ({:.0} user), nl decode 1-walk {:.1} ({:.0} user), raw 1-walk {:.1} ({:.0} user), raw 1-walk no NET_ADMIN {:.1}",
            ms(s.cpu),
            ms(su),
            ms(d.cpu),
            ms(du),
            ms(r.cpu),
            ms(ru),
            ms(n.cpu)
        );
        ps.push(s.cpu);
        ds.push(d.cpu);
        rs.push(r.cpu);
        ns.push(n.cpu);
    }
    // What a poll without the table walk costs (the agent's default between walks),
    // and what every poll publishes: both exposition formats, the landing page's
    // tables, and gzip of both bodies.
    let (mut lv, mut rv, mut gz, mut lo) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut off_opts = CollectOptions::new(Path::new("/proc"));
    off_opts.owners = false;
    let mut off = Collector::new(off_opts).expect("collector");
    off.poll(&[], &[]).expect("poll");
    let selfm = bindwatch::metrics::SelfMetrics::new();
    let (mut body, mut om) = (String::new(), String::new());
    for _ in 0..polls {
        let mut snap = None;
        lv.push(
            measure(&mut || {
                snap = Some(c.poll_views(&[], &[], false).expect("poll"));
                0
            })
            .cpu,
        );
        let snap = snap.expect("snapshot");
        lo.push(
            measure(&mut || {
                off.poll_views(&[], &[], false).expect("poll");
                0
            })
            .cpu,
        );
        rv.push(
            measure(&mut || {
                let exp = bindwatch::metrics::render_all(
                    &[(None, &snap)],
                    &selfm,
                    &bindwatch::metrics::Extras::default(),
                );
                let tables = bindwatch::landing::tables(&[(None, &snap)]);
                body = exp.text;
                om = exp.openmetrics;
                (body.len() + om.len() + tables.len()) as u64
            })
            .cpu,
        );
        gz.push(
            measure(&mut || {
                use flate2::{write::GzEncoder, Compression};
                let mut n = 0;
                for b in [&body, &om] {
                    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
                    e.write_all(b.as_bytes()).expect("gzip");
                    n += e.finish().expect("gzip").len() as u64;
                }
                n
            })
            .cpu,
        );
    }
    println!(
        "median CPU: poll without the table walk {:.1} ms ({:.1} ms with owners off); render (text, OpenMetrics, landing tables) {:.1} ms and gzip of both {:.1} ms, a {:.0} KiB text body",
        ms(median(lv)),
        ms(median(lo)),
        ms(median(rv)),
        ms(median(gz)),
        body.len() as f64 / 1024.0
    );
    let (p, d, r, n) = (median(ps), median(ds), median(rs), median(ns));
    println!(
        "median CPU: poll {:.1} ms, nl decode {:.1} ms, raw {:.1} ms, raw no NET_ADMIN {:.1} ms; \
         poll/raw {:.3}, decode/raw {:.3}, poll/raw no NET_ADMIN {:.3}",
        ms(p),
        ms(d),
        ms(r),
        ms(n),
        p.as_secs_f64() / r.as_secs_f64(),
        d.as_secs_f64() / r.as_secs_f64(),
        p.as_secs_f64() / n.as_secs_f64()
    );
}

fn hold(size: Size) {
    fresh_netns();
    let plan = Plan::sized(size.total, size.listeners, size.tw, FIRST_PORT).parked(size.parked);
    let mut pop = Population::build(&plan).expect("population");
    pop.add_time_wait(size.tw).expect("time_wait");
    println!(
        "holding {} ({} listen, {} established, {} time_wait for 60 s) in {} processes: {:?}",
        size.name,
        pop.listeners,
        pop.established,
        pop.time_wait,
        pop.pids().len(),
        pop.pids()
    );
    println!(
        "enter the namespace with: nsenter -t {} -n; press Enter to tear down",
        pop.pids()[0]
    );
    let _ = io::stdin().lock().lines().next();
}

// ------------------------------------------------------------------ main

fn main() {
    if std::env::var_os(popgen::CHILD_ENV).is_some() {
        popgen::child_main();
    }
    // `cargo test --all-targets` runs bench binaries too; building a million
    // sockets belongs to `cargo bench` only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/poll.rs: run with `cargo bench --bench poll`");
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
    let mut table_rows: Vec<(String, TableRow, Duration, Duration, u32)> = Vec::new();
    let mut baseline_rows: Vec<(String, baseline::Outcome)> = Vec::new();
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
        if let Some(bin) = &args.baseline_bin {
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

    // ---- report
    if !table_rows.is_empty() {
        println!("\n## Table read: median wall / CPU per read, ms\n");
        print!("| sockets |");
        for m in METHODS {
            print!(" {m} |");
        }
        println!(" poll CPU / raw 1-walk CPU | poll CPU / nl decode CPU | ss CPU / poll CPU |");
        print!("|---|");
        for _ in 0..METHODS.len() + 3 {
            print!("---|");
        }
        println!();
        for (name, row, _, _, _) in &table_rows {
            print!("| {name} |");
            for m in METHODS {
                let (w, c, _) = row.methods.get(m).copied().unwrap_or_default();
                print!(" {:.1} / {:.1} |", ms(w), ms(c));
            }
            let cpu = |m: &str| row.cpu_secs(m);
            println!(
                " {:.2} | {:.2} | {:.2} |",
                cpu("poll") / cpu("raw 1-walk"),
                cpu("poll") / cpu("nl decode 1-walk"),
                cpu("ss -tan") / cpu("poll")
            );
        }
        println!("\nThe same ratios round by round (min / median / max):\n");
        for (name, row, _, _, _) in &table_rows {
            let spread =
                |f: &dyn Fn(&(f64, f64)) -> f64| min_median_max(row.round_ratios.iter().map(f), 2);
            println!(
                "- {name}: `ss` CPU / poll CPU {}; poll CPU / raw 1-walk CPU {} ({} rounds)",
                spread(&|r| r.0),
                spread(&|r| r.1),
                row.round_ratios.len()
            );
        }
        println!(
        "\nThe bpf source, round by round (min / median / max): a full poll with `--source bpf` \
         against the raw one-walk sock_diag dump, and against the netlink poll:\n"
    );
        for (name, row, _, _, _) in &table_rows {
            let spread =
                |f: &dyn Fn(&(f64, f64)) -> f64| min_median_max(row.bpf_ratios.iter().map(f), 2);
            let cpu = |m: &str| row.cpu_secs(m);
            println!(
            "- {name}: poll (bpf) CPU / raw 1-walk CPU {} (medians {:.2}); poll (bpf) CPU / poll CPU {}; \
             bpf 1-walk CPU / raw 1-walk CPU {:.2}, narrowed {:.2}; raw bound-only CPU / raw 1-walk CPU {:.2} \
             ({} rounds)",
            spread(&|r| r.0),
            cpu("poll (bpf)") / cpu("raw 1-walk"),
            spread(&|r| r.1),
            cpu("bpf 1-walk") / cpu("raw 1-walk"),
            cpu("bpf 1-walk, narrowed") / cpu("raw 1-walk"),
            cpu("raw bound-only") / cpu("raw 1-walk"),
            row.bpf_ratios.len()
        );
        }
        println!("\nPopulations (census at the start of each round) and first polls:\n");
        for (name, row, build, tw, batches) in &table_rows {
            let fp = row.first_poll.unwrap();
            println!(
            "- {name}: {} .. {}; {} runs; built in {:.1}s + {:.1}s for TIME_WAITs (made {} times); \
             first poll (cold owner scan) {:.0} ms wall / {:.0} ms CPU; sockets counted per method: {}",
            row.census_min,
            row.census_max,
            row.runs,
            build.as_secs_f64(),
            tw.as_secs_f64(),
            batches,
            ms(fp.wall),
            ms(fp.cpu),
            row.methods
                .iter()
                .filter(|(_, v)| v.2 > 0)
                .map(|(k, v)| format!("{k}={}", v.2))
                .collect::<Vec<_>>()
                .join(", ")
        );
        }
    }
    baseline::report(&baseline_rows);

    if !serve_rows.is_empty() {
        println!("\n## bindwatch serve (poll interval 1s)\n");
        println!(
            "budget 0.01 is the default `--poll.cpu-budget` (the table is walked when the saved-up CPU pays \
             for it, listeners every poll); budget 0 walks the whole table every poll; \"no polls\" is the \
             control: `--poll.interval 1h`, so nothing runs after the first poll but the scrapes.\n"
        );
        println!(
            "| table | --poll.cpu-budget | first poll s | VmHWM MiB | VmRSS MiB | poll wall ms | CPU/poll ms | \
             CPU/scrape ms | body KiB | wrk p50 / p99 / max | wrk gzip p50 / p99 / max |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (name, r) in &serve_rows {
            let w = |x: &Option<WrkResult>| {
                x.as_ref()
                    .map(|w| {
                        let runs = if w.p99_runs.len() > 1 {
                            format!(
                                " (p99 of {} runs: {})",
                                w.p99_runs.len(),
                                w.p99_runs.join(", ")
                            )
                        } else {
                            String::new()
                        };
                        format!("{} / {} / {}{runs}", w.p50, w.p99, w.max)
                    })
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "| {name}: {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.3} | {:.1} | {} | {} |",
                r.census.total,
                budget_label(r),
                r.first_poll.as_secs_f64(),
                r.hwm_kb as f64 / 1024.0,
                r.rss_kb as f64 / 1024.0,
                ms(r.poll_wall),
                ms(r.cpu_per_poll),
                ms(r.cpu_per_scrape),
                r.body_bytes as f64 / 1024.0,
                w(&r.wrk),
                w(&r.wrk_gzip),
            );
        }
        println!();
        for (n, r) in &serve_rows {
            println!(
                "- {n}, budget {}: {} polls timed; wrk {} + {} (gzip) requests at {} + {} req/s; \
                 busiest other process meanwhile: {}",
                budget_label(r),
                r.polls,
                r.wrk.as_ref().map(|w| w.requests).unwrap_or(0),
                r.wrk_gzip.as_ref().map(|w| w.requests).unwrap_or(0),
                r.wrk.as_ref().map(|w| w.rps.as_str()).unwrap_or("-"),
                r.wrk_gzip.as_ref().map(|w| w.rps.as_str()).unwrap_or("-"),
                r.busiest_other,
            );
        }
        println!(
            "\n### Paced scrapes: {PACED_SCRAPERS} keep-alive scrapers, one request each every {} ms, {} s, open loop\n",
            PACED_PERIOD.as_millis(),
            PACED_RUN.as_secs()
        );
        println!("| table | --poll.cpu-budget | scrapes | plain p50 / p99 / max ms | gzip p50 / p99 / max ms |");
        println!("|---|---|---|---|---|");
        for (n, r) in &serve_rows {
            if let Some((p, g)) = &r.paced {
                println!(
                    "| {n} | {} | {} + {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} |",
                    budget_label(r),
                    p.n,
                    g.n,
                    p.p50,
                    p.p99,
                    p.max,
                    g.p50,
                    g.p99,
                    g.max
                );
            }
        }
    }
    if !ne_rows.is_empty() {
        println!(
            "\n## node_exporter --collector.disable-defaults --collector.tcpstat, same tables\n"
        );
        println!(
            "| table | ne CPU/scrape ms | ne wall/scrape ms | ne VmHWM MiB | bindwatch CPU per full-walk poll + scrape ms | \
             ratio ne / bindwatch (walk every poll) | bindwatch CPU per 15 s at the default budget, ms (at most) |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (name, n) in &ne_rows {
            let Some(n) = n else {
                println!("| {name} | (did not start) | | | | | |");
                continue;
            };
            let full = serve_rows
                .iter()
                .find(|(x, r)| x == name && r.polling && r.cpu_budget == "0")
                .map(|(_, r)| r.cpu_per_poll + r.cpu_per_scrape)
                .unwrap_or_default();
            let dflt = serve_rows
                .iter()
                .find(|(x, r)| x == name && r.polling && r.cpu_budget == "0.01")
                .map(|(_, r)| {
                    // Every poll is charged to the budget: 1% of a core, unless even the
                    // listener-only polls cost more than that.
                    (r.cpu_per_poll.as_secs_f64() * 15.0).max(0.01 * 15.0) * 1e3
                })
                .unwrap_or(f64::NAN);
            println!(
                "| {name}: {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} |",
                n.census.total,
                ms(n.cpu_per_scrape),
                ms(n.wall_per_scrape),
                n.hwm_kb as f64 / 1024.0,
                ms(full),
                n.cpu_per_scrape.as_secs_f64() / full.as_secs_f64(),
                dflt,
            );
        }
    }

    if args.owners {
        log!("== owners: building 200 processes");
        let o = owners_phase(args.runs);
        println!(
            "\n## Owner attribution: {} in {} processes\n",
            o.census, o.procs
        );
        println!("| poll | wall ms | CPU ms | full_scans | cache_hits | fds_read |");
        println!("|---|---|---|---|---|---|");
        let line = |name: &str, s: &Sample, st: Option<&Stats>| {
            let (a, b, c) = st
                .map(|x| {
                    (
                        x.full_scans.to_string(),
                        x.cache_hits.to_string(),
                        x.fds_read.to_string(),
                    )
                })
                .unwrap_or(("-".into(), "-".into(), "-".into()));
            println!(
                "| {name} | {:.1} | {:.1} | {a} | {b} | {c} |",
                ms(s.wall),
                ms(s.cpu)
            );
        };
        line("first (cold cache)", &o.first, Some(&o.first_stats));
        line(
            "steady, owners on (median; stats per poll)",
            &o.on,
            Some(&o.per_poll),
        );
        line("steady, owners off (median)", &o.off, None);
        line(
            "after one new listener appeared",
            &o.after_new,
            Some(&o.after_new_stats),
        );
        line("the poll after that", &o.settled, Some(&o.settled_stats));
        let share = (o.on.cpu.as_secs_f64() - o.off.cpu.as_secs_f64()) / o.on.cpu.as_secs_f64();
        println!(
            "\nSteady-state attribution: {:.1} ms CPU of a {:.1} ms poll = {:.0}% ({} sockets attributed per poll)",
            ms(o.on.cpu.saturating_sub(o.off.cpu)),
            ms(o.on.cpu),
            share * 100.0,
            o.on.count,
        );
        println!("\nThe same steps replayed one by one (median CPU per poll; the collector probes listeners and at most --probe_max others):\n");
        for (what, d) in &o.parts {
            println!("- {what}: {:.1} ms", ms(*d));
        }
    }
}
