//! Timing one read: wall and CPU time of a closure on this thread or of a command run to
//! completion, the collector options of a timed poll, and the medians and spreads the
//! report prints.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bindwatch::collect::CollectOptions;
use bindwatch::source::SourceChoice;

pub fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into the struct it is given, which lives here.
    unsafe { libc::getrusage(who, &mut r) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// User CPU time of the calling thread (tick-sampled: for splits, not totals).
pub fn user_cpu() -> Duration {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into the struct it is given, which lives here.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) };
    Duration::new(r.ru_utime.tv_sec as u64, r.ru_utime.tv_usec as u32 * 1000)
}

/// Wall time, CPU time (user + system) and what the method counted.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    pub cpu: Duration,
    pub count: u64,
}

/// CPU time (user + system) of the calling thread. CLOCK_THREAD_CPUTIME_ID rather
/// than getrusage(RUSAGE_THREAD): the latter lags by up to a scheduler tick (4 ms).
pub fn thread_cpu() -> Duration {
    // SAFETY: timespec is plain integers, for which all zeroes is a valid value.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes only into the struct it is given, which lives here.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `f` on this thread; CPU is this thread's user + system time.
pub fn measure(f: &mut dyn FnMut() -> u64) -> Sample {
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
pub fn measure_cmd(cmd: &str, args: &[&str]) -> Sample {
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
pub fn full_scan_opts(procfs: &Path) -> CollectOptions {
    let mut o = CollectOptions::new(procfs);
    o.scan_slice = None;
    // "poll" rows measure the netlink source as they always have; bpf rows say so.
    o.source = SourceChoice::Netlink;
    o
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[v.len() / 2]
}

/// "min / median / max" of `values` to `decimals` places, "-" when there are none.
pub fn min_median_max(values: impl Iterator<Item = f64>, decimals: usize) -> String {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(a), Some(m), Some(b)) => format!("{a:.decimals$} / {m:.decimals$} / {b:.decimals$}"),
        _ => "-".into(),
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
