//! What the bind failure tracer adds to the calls it watches: one socket()+bind()+close()
//! (a successful bind on a port that is not of interest: the programs' fast path) and one
//! successful connect() (+ the accept and the two closes that make it repeatable), timed
//! with the programs attached and without them, in the same run, rounds alternating so
//! drift hits both sides alike.
//!
//! Run (root): `cargo bench --bench bindevents`. Prints a table; asserts nothing.
//! The process moves into a fresh network namespace first (loopback only), so no other
//! traffic and no other bindwatch's events are in it. Other tracers attached to the same
//! tracepoints on the machine (another bindwatch) add to both sides equally.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use bindwatch::events::loader::{self, TracerOptions};
use bindwatch::events::Events;
use socket2::{Domain, SockAddr, Socket, Type};

const ITERS: usize = 20_000;
const ROUNDS: usize = 7;

/// ns per socket()+bind(127.0.0.1:port)+close().
fn bind_loop(port: u16) -> f64 {
    let addr: SockAddr = SocketAddr::from(([127, 0, 0, 1], port)).into();
    let t = Instant::now();
    for _ in 0..ITERS {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.bind(&addr).expect("bind");
        drop(s);
    }
    t.elapsed().as_nanos() as f64 / ITERS as f64
}

/// ns per connect() to a loopback listener, with its accept() and both closes; the
/// client resets (SO_LINGER 0) so no TIME_WAIT piles up over the ephemeral range.
fn connect_loop(l: &TcpListener) -> f64 {
    let target: SockAddr = l.local_addr().expect("listener address").into();
    let t = Instant::now();
    for _ in 0..ITERS {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        c.set_linger(Some(std::time::Duration::ZERO))
            .expect("linger");
        c.connect(&target).expect("connect");
        let (s, _) = l.accept().expect("accept");
        drop(c);
        drop(s);
    }
    t.elapsed().as_nanos() as f64 / ITERS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // SAFETY: unshare on this (still single-threaded) process: a private network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        );
        std::process::exit(2);
    }
    let _ = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let l = TcpListener::bind("127.0.0.1:0").expect("listener");
    let _ = l.as_raw_fd();
    let opts = TracerOptions {
        procfs: "/proc".into(),
        run_netns: "/run/netns".into(),
        rootfs: "/".into(),
        all_netns: false,
        log_interval: std::time::Duration::from_secs(5),
    };
    // Warm up caches, the allocator and the listener's accept queue.
    bind_loop(47000);
    connect_loop(&l);
    let (mut b0, mut b1, mut c0, mut c1) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        b0.push(bind_loop(47000));
        c0.push(connect_loop(&l));
        let events = Arc::new(Events::new(1000));
        let tracer = match loader::start(opts.clone(), events) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot attach the tracer: {e}");
                std::process::exit(2);
            }
        };
        b1.push(bind_loop(47000));
        c1.push(connect_loop(&l));
        tracer.stop();
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "bind tracer overhead: {ROUNDS} rounds of {ITERS} iterations each side, medians (kernel {})",
        kernel.trim()
    );
    println!(
        "{:<42} {:>10} {:>10} {:>10}",
        "loop", "without", "with", "added"
    );
    for (name, a, b) in [
        ("socket()+bind()+close() [ns/iter]", median(b0), median(b1)),
        (
            "connect()+accept()+2x close() [ns/iter]",
            median(c0),
            median(c1),
        ),
    ] {
        println!("{name:<42} {a:>10.0} {b:>10.0} {:>10.0}", b - a);
    }
}
