//! The machine around the bench: its own network namespace, sysctls, commands on the PATH,
//! the CPU and memory of processes, and the children it starts.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Moves this (single-threaded) process into a fresh network namespace with `lo` up.
/// Children spawned afterwards (population, ss, bindwatch serve, node_exporter)
/// inherit it; the previous one, with its leftovers, goes away with its last user.
pub fn fresh_netns() {
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

pub fn sysctl(name: &str) -> String {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/")))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// CPU time of a process, all threads, in ns (schedstat: precise, unlike /proc/PID/stat ticks).
pub fn proc_cpu(pid: u32) -> Duration {
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
pub fn all_proc_cpu() -> BTreeMap<u32, (String, Duration)> {
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
pub fn busiest_other(
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

pub fn status_kb(pid: u32, key: &str) -> u64 {
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

/// A child process killed (by its pid) and reaped on drop.
pub struct Guard(pub Child);

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
