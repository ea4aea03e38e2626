//! The kernel's HZ, which turns the bpf source's timer deadlines (jiffies) into
//! milliseconds. The kernel exports it nowhere user space can simply read, and aya does
//! not resolve libbpf's `__kconfig` externs, so the program gets it as a global set at
//! load. Parsers are pure; [`kernel_hz`] does the reading.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::fsread::{self, Symlinks};

/// The kernel's HZ, which turns timer deadlines (jiffies) into milliseconds. The
/// program gets it as a global set at load: aya does not resolve libbpf's `__kconfig`
/// externs, and the kernel exports HZ nowhere else.
///
/// Read from the kernel's config (`<procfs>/config.gz`, else
/// `<rootfs>/boot/config-RELEASE`), else measured from the kernel's own clocks in
/// `<procfs>/timer_list` (jiffies beside monotonic nanoseconds, at two jiffy edges).
/// `None` when none of them tells: the caller then loads the program without timers
/// and says so (`bindwatch_capability{capability="socket_timers"} 0`). Computed once
/// per process; HZ is the kernel's, whatever the namespace.
pub fn kernel_hz(procfs: &Path, rootfs: &Path) -> Option<u32> {
    static HZ: OnceLock<Option<u32>> = OnceLock::new();
    *HZ.get_or_init(|| {
        let from_gz = || -> Option<String> {
            let (f, _) = fsread::open(&procfs.join("config.gz"), Symlinks::Follow).ok()?;
            let mut s = String::new();
            // Bounded: a kernel config is some 200 KiB.
            flate2::read::GzDecoder::new(f)
                .take(16 << 20)
                .read_to_string(&mut s)
                .ok()?;
            Some(s)
        };
        let from_boot = || -> Option<String> {
            let rel = fsread::read_to_string(
                &procfs.join("sys/kernel/osrelease"),
                Symlinks::Follow,
                fsread::PROC_FILE_MAX,
            )
            .ok()?;
            let path = rootfs.join(format!("boot/config-{}", rel.trim()));
            fsread::read_to_string(&path, Symlinks::Follow, 16 << 20).ok()
        };
        from_gz()
            .and_then(|s| config_hz(&s))
            .or_else(|| from_boot().and_then(|s| config_hz(&s)))
            .or_else(|| measured_hz(&procfs.join("timer_list")))
    })
}

/// `CONFIG_HZ=` of a kernel config. Pure.
pub fn config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|hz| (24..=10_000).contains(hz))
}

/// The first `now at N nsecs` and `jiffies: J` of a `/proc/timer_list` text: the
/// monotonic clock and the jiffies counter, read together. Pure.
pub fn timer_list_clocks(text: &str) -> Option<(u64, u64)> {
    let now = text.lines().find_map(|l| {
        l.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .trim()
            .parse::<u64>()
            .ok()
    })?;
    let jiffies = text.lines().find_map(|l| {
        l.trim_start()
            .strip_prefix("jiffies:")?
            .trim()
            .parse::<u64>()
            .ok()
    })?;
    Some((now, jiffies))
}

/// HZ from two (nanoseconds, jiffies) samples: the nearest of the values kernels are
/// built with when within 2% of one, else `None` (too short a window or a clock that
/// jumped). Pure.
pub fn hz_between(a: (u64, u64), b: (u64, u64)) -> Option<u32> {
    const BUILT_WITH: [u32; 14] = [
        24, 32, 48, 64, 100, 128, 200, 250, 256, 300, 500, 512, 1000, 1024,
    ];
    let ns = b.0.checked_sub(a.0).filter(|&d| d >= 100_000_000)?;
    let ticks = b.1.checked_sub(a.1).filter(|&t| t > 0)?;
    let hz = ticks as f64 * 1e9 / ns as f64;
    BUILT_WITH
        .iter()
        .copied()
        .filter(|&v| (hz - f64::from(v)).abs() <= f64::from(v) * 0.02)
        .min_by(|x, y| {
            (hz - f64::from(*x))
                .abs()
                .total_cmp(&(hz - f64::from(*y)).abs())
        })
}

/// Measures HZ from `timer_list` (root-only, about 100 lines per CPU): samples taken
/// just after two jiffy increments some 500 ms apart, so the count of ticks between
/// them is exact and the time as precise as one read.
fn measured_hz(timer_list: &Path) -> Option<u32> {
    // The clocks are in the first CPU's block; the rest of a large machine's file is
    // not read. A read that took long (the reader was preempted between printing the
    // clock and the counter) could pair a stale clock with a fresh counter: such a
    // sample is dropped, so each one is as precise as a quick read.
    let read = || -> Option<(u64, u64)> {
        let started = Instant::now();
        let (f, _) = fsread::open(timer_list, Symlinks::Follow).ok()?;
        let mut buf = Vec::new();
        f.take(64 << 10).read_to_end(&mut buf).ok()?;
        let clocks = timer_list_clocks(&String::from_utf8_lossy(&buf))?;
        Some(clocks).filter(|_| started.elapsed() < Duration::from_millis(2))
    };
    // The first quick sample after the jiffies counter moves; bounded by reads, not
    // time, so a counter that never moves (or a machine too busy for a quick read)
    // gives up.
    let edge = || -> Option<(u64, u64)> {
        let first = (0..200).find_map(|_| read())?;
        (0..4000).find_map(|_| read().filter(|s| s.1 != first.1))
    };
    let a = edge()?;
    std::thread::sleep(Duration::from_millis(500));
    let b = edge()?;
    hz_between(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines() {
        for (text, want) in [
            ("CONFIG_HZ_1000=y\nCONFIG_HZ=1000\n", Some(1000)),
            ("# CONFIG_HZ_250 is not set\nCONFIG_HZ=250", Some(250)),
            ("CONFIG_HZ=0\n", None),
            ("CONFIG_HZ=99999999999\n", None),
            ("CONFIG_HZ=abc\n", None),
            ("CONFIG_HZ_PERIODIC=y\n", None),
            ("", None),
        ] {
            assert_eq!(config_hz(text), want, "{text:?}");
        }
    }

    #[test]
    fn timer_list_text() {
        // Linux 6.18, x86_64: the head of /proc/timer_list and the first CPU's tick block.
        let text = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\n\
                    now at 561865783717 nsecs\n\ncpu: 0\n clock 0:\n  .idle_jiffies   : 4295032676\n\
                    jiffies: 4295032860\n";
        assert_eq!(
            timer_list_clocks(text),
            Some((561_865_783_717, 4_295_032_860))
        );
        assert_eq!(timer_list_clocks("now at x nsecs\njiffies: 1\n"), None);
        assert_eq!(timer_list_clocks("now at 5 nsecs\n"), None);
        assert_eq!(timer_list_clocks("\u{0}\u{1}binary"), None);
    }

    #[test]
    fn samples_give_the_built_hz() {
        let s = |ms: u64, j: u64| (ms * 1_000_000, j);
        for (a, b, want) in [
            (s(0, 0), s(250, 250), Some(1000)),
            (s(0, 0), s(250, 62), Some(250)),
            (s(1000, 7), s(1250, 32), Some(100)),
            (s(0, 0), s(300, 90), Some(300)),
            (s(0, 0), s(250, 256), Some(1024)),
            // 1% off (a slow read): still the nearest.
            (s(0, 0), s(250, 252), Some(1000)),
            // No value kernels are built with is within 2%.
            (s(0, 0), s(250, 170), None),
            // Too short a window, no ticks, a clock that went back.
            (s(0, 0), s(50, 50), None),
            (s(0, 5), s(250, 5), None),
            (s(500, 0), s(250, 250), None),
            (s(0, 100), s(250, 50), None),
        ] {
            assert_eq!(hz_between(a, b), want, "{a:?} -> {b:?}");
        }
    }

    #[test]
    fn this_kernel_measured_agrees_with_its_config() {
        // Tests run as root, who can read timer_list; where the config is readable too,
        // the measurement must give the same HZ.
        let proc = Path::new("/proc");
        let measured = measured_hz(&proc.join("timer_list"))
            .expect("HZ measured from /proc/timer_list (tests run as root)");
        let from_config = fsread::open(&proc.join("config.gz"), Symlinks::Follow)
            .ok()
            .and_then(|(f, _)| {
                let mut s = String::new();
                flate2::read::GzDecoder::new(f)
                    .read_to_string(&mut s)
                    .ok()?;
                config_hz(&s)
            });
        if let Some(c) = from_config {
            assert_eq!(measured, c);
        }
    }
}
