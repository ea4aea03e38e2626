//! Cost of `--netns all` per namespace: creates 50 network namespaces (each with a
//! few listeners, connections and TIME_WAITs on loopback), then times
//! `NetnsCollectors::poll` over all of them, side by side with one host-only poll.
//!
//! Run (root): `cargo bench --bench netns`. Prints a table; asserts nothing.
//! Each namespace is held by a child process (`unshare -n sleep`), as a container
//! would be (bindwatch discovers namespaces through /proc/PID/ns/net); a thread of
//! the bench enters it to build the sockets. Children are killed at the end.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bindwatch::collect::{CollectOptions, Collector};
use bindwatch::netns::NetnsCollectors;

const NAMESPACES: usize = 50;
const LISTENERS: u16 = 4;
const CONNS: usize = 20;
const ROUNDS: usize = 7;

/// Builds one namespace's population on a thread that stays inside it.
fn populate(holder: u32, ready: mpsc::Sender<()>, stop: mpsc::Receiver<()>) {
    let ns = std::fs::File::open(format!("/proc/{holder}/ns/net")).expect("holder netns");
    // SAFETY: setns on a valid fd; affects only this thread.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
        eprintln!("setns: {} (run as root)", std::io::Error::last_os_error());
        std::process::exit(2);
    }
    let _ = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let mut held = Vec::new();
    let mut listeners = Vec::new();
    for i in 0..LISTENERS {
        let l = TcpListener::bind(("127.0.0.1", 20000 + i)).expect("bind");
        for _ in 0..CONNS / LISTENERS as usize {
            let c = TcpStream::connect(("127.0.0.1", 20000 + i)).expect("connect");
            let (s, _) = l.accept().expect("accept");
            held.push((c, s));
        }
        // A couple of server-side TIME_WAITs per listener.
        for _ in 0..2 {
            let c = TcpStream::connect(("127.0.0.1", 20000 + i)).expect("connect");
            let (s, _) = l.accept().expect("accept");
            drop(s);
            std::thread::sleep(Duration::from_millis(5));
            drop(c);
        }
        listeners.push(l);
    }
    let _ = ready.send(());
    let _ = stop.recv_timeout(Duration::from_secs(300));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too; this one builds 50
    // namespaces and belongs to `cargo bench` only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/netns.rs: run with `cargo bench --bench netns`");
        return;
    }
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    let mut holders = Vec::new();
    let (ready_tx, ready_rx) = mpsc::channel();
    for _ in 0..NAMESPACES {
        let child = std::process::Command::new("unshare")
            .args(["-n", "sleep", "300"])
            .spawn()
            .expect("unshare -n sleep");
        let pid = child.id();
        holders.push(child);
        // unshare execs sleep after creating the namespace: wait until it differs.
        let own = std::fs::read_link("/proc/self/ns/net").ok();
        for _ in 0..100 {
            if std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() != own {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (stop_tx, stop_rx) = mpsc::channel();
        let r = ready_tx.clone();
        threads.push(std::thread::spawn(move || populate(pid, r, stop_rx)));
        stops.push(stop_tx);
    }
    for _ in 0..NAMESPACES {
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("namespace ready");
    }
    // The first poll scans every fd to the end (as one-shot commands do), so the
    // timed polls after it are steady state.
    let mut opts = CollectOptions::new(Path::new("/proc"));
    opts.scan_slice = None;
    let mut all = NetnsCollectors::new(opts.clone(), Path::new("/run/netns"));
    let mut host = Collector::new(opts).expect("host collector");
    // Warm-up: creates the per-namespace collectors and owner caches.
    let first = Instant::now();
    let warm = all.poll(&[]);
    let first_s = first.elapsed().as_secs_f64();
    let mut total = Vec::new();
    let mut per_ns = Vec::new();
    let mut host_t = Vec::new();
    let mut seen = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = all.poll(&[]);
        total.push(t.elapsed().as_secs_f64());
        seen = r.snapshots.len();
        per_ns.push(median(r.durations.iter().map(|(_, d)| *d).collect()));
        let t = Instant::now();
        host.poll(&[], &[]).expect("host poll");
        host_t.push(t.elapsed().as_secs_f64());
    }
    println!("namespaces polled: {seen} (created {NAMESPACES}, plus the host and any others on the machine)");
    println!("errors in warm-up: {}", warm.errors.len());
    let mut wd: Vec<f64> = warm.durations.iter().map(|(_, d)| *d).collect();
    wd.sort_by(|a, b| a.total_cmp(b));
    println!(
        "first poll per namespace: median {:.1} ms, max {:.1} ms, sum {:.1} ms",
        median(wd.clone()) * 1e3,
        wd.last().copied().unwrap_or(0.0) * 1e3,
        wd.iter().sum::<f64>() * 1e3
    );
    println!("| poll | median ms |");
    println!("|---|---|");
    println!(
        "| first --netns all poll (opens a collector per namespace) | {:.1} |",
        first_s * 1e3
    );
    println!(
        "| --netns all, whole poll | {:.1} |",
        median(total.clone()) * 1e3
    );
    println!(
        "| --netns all, per namespace (median of medians) | {:.2} |",
        median(per_ns) * 1e3
    );
    println!(
        "| --netns all, whole poll / namespaces | {:.2} |",
        median(total) * 1e3 / seen.max(1) as f64
    );
    println!("| host only, one namespace | {:.2} |", median(host_t) * 1e3);
    for s in stops {
        let _ = s.send(());
    }
    for t in threads {
        let _ = t.join();
    }
    for mut h in holders {
        let _ = h.kill();
        let _ = h.wait();
    }
}
