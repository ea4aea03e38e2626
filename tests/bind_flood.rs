//! Floods of failing bind() calls are counted, not obeyed: every failure the kernel
//! saw is either counted by the agent or counted as lost (the BPF program counts
//! ring-buffer reserve failures), and the log gets at most one line per port and call
//! per poll interval, with the count since the last line.
//!
//! Each flood runs in its own network namespace, bounded in calls and time. The BPF
//! tracer sees the whole host, so its lost counter may include the odd event of
//! another namespace during the flood: the sums are checked within that slack, and the
//! floods of this file run one at a time.

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{in_netns, tcp_listener, Metrics, Server};

/// Failing binds of `addr` from `threads` threads, at most `per_thread` calls each
/// and for at most `limit`: the number the kernel refused with EADDRINUSE.
fn flood(addr: SocketAddr, threads: usize, per_thread: usize, limit: Duration) -> u64 {
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                // One socket per thread: a failed bind leaves it unbound, so it binds again.
                let s = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )
                .expect("socket");
                let sa: socket2::SockAddr = addr.into();
                let mut refused = 0u64;
                for i in 0..per_thread {
                    if i % 1024 == 0 && started.elapsed() > limit {
                        break;
                    }
                    // SAFETY: a valid fd and a sockaddr of the length given.
                    let r = unsafe { libc::bind(s.as_raw_fd(), sa.as_ptr(), sa.len()) };
                    if r != 0
                        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EADDRINUSE)
                    {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("flood")).sum()
}

/// The floods of this file, one at a time (each agent's tracer sees the other's).
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_flood() -> std::sync::MutexGuard<'static, ()> {
    ONE_FLOOD.lock().unwrap_or_else(|p| p.into_inner())
}

fn counted(m: &Metrics, port: &str) -> f64 {
    m.matching("bindwatch_bind_failures_total", &[("port", port)])
        .iter()
        .map(|(_, v)| v)
        .sum::<f64>()
        + m.get("bindwatch_bind_failures_dropped_total", &[])
            .unwrap_or(0.0)
}

fn lost(m: &Metrics) -> f64 {
    m.get("bindwatch_bind_events_lost_total", &[])
        .unwrap_or(0.0)
}

#[test]
fn every_failure_of_a_flood_is_counted_or_counted_as_lost() {
    let _one = one_flood();
    in_netns(|| {
        let srv = Server::start(19284, &["--poll.interval", "200ms"]);
        let m = srv.metrics();
        assert_eq!(
            m.get("bindwatch_capability", &[("capability", "bind_events")]),
            Some(1.0),
            "the tracer attaches as root"
        );
        let addr: SocketAddr = "127.0.0.1:7601".parse().unwrap();
        let _l = tcp_listener(addr, false, false, None).expect("listener");
        let made = flood(addr, 4, 100_000, Duration::from_secs(10)) as f64;
        assert!(made > 0.0);
        // Wait until the agent has read everything and the sums stop moving.
        let mut last = (-1.0, -1.0);
        let deadline = Instant::now() + Duration::from_secs(60);
        let m = loop {
            let m = srv.metrics();
            let now = (counted(&m, "7601"), lost(&m));
            if now == last && now.0 + now.1 >= made {
                break m;
            }
            assert!(
                Instant::now() < deadline,
                "made {made}, counted {} + lost {} after 60 s: {}",
                now.0,
                now.1,
                m.text
                    .lines()
                    .filter(|l| l.contains("bind_"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            last = now;
            std::thread::sleep(Duration::from_millis(500));
        };
        let (c, l) = (counted(&m, "7601"), lost(&m));
        eprintln!("flood: made {made}, counted {c}, lost {l}");
        assert!(c <= made, "counted {c} more than the {made} made");
        assert!(
            c + l >= made,
            "made {made}, counted {c} + lost {l}: failures vanished"
        );
        assert!(
            c + l <= made * 1.01 + 100.0,
            "made {made}, counted {c} + lost {l}: far more than the kernel saw here"
        );
    });
}

/// The count a failure log line stands for: "failed N times" (1 for a single one).
fn line_count(line: &str) -> u64 {
    let Some(i) = line.find("failed ") else {
        return 1;
    };
    let rest = &line[i + 7..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if rest[digits.len()..].starts_with(" time") {
        digits.parse().unwrap_or(1)
    } else {
        1
    }
}

#[test]
fn failure_log_lines_are_bounded_per_port_and_interval_and_keep_the_count() {
    let _one = one_flood();
    in_netns(|| {
        let dir = common::Scratch::new("bind-flood-log");
        let port = 19285;
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args([
            "serve",
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--state.file",
            "",
            "--poll.cpu-budget",
            "0",
            "--poll.interval",
            "1s",
        ]);
        let mut agent = common::Logged::spawn(cmd, dir.path("agent.log"));
        let web: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        agent.wait_until("attached the tracer", || {
            common::http_get(web, "/metrics", &[]).is_ok_and(|(c, _, b)| {
                c == 200
                    && String::from_utf8_lossy(&b)
                        .contains("bindwatch_capability{capability=\"bind_events\"} 1")
            })
        });
        let addr: SocketAddr = "127.0.0.1:7602".parse().unwrap();
        let _l = tcp_listener(addr, false, false, None).expect("listener");
        let started = Instant::now();
        // About 3 s of failures, paced so that the ring buffer keeps up.
        let mut made = 0u64;
        while started.elapsed() < Duration::from_secs(3) && made < 30_000 {
            made += flood(addr, 1, 100, Duration::from_secs(1));
            std::thread::sleep(Duration::from_millis(10));
        }
        let flood_secs = started.elapsed().as_secs_f64();
        let needle = format!("({addr})");
        let lines = |log: &str| -> Vec<String> {
            log.lines()
                .filter(|l| l.contains(&needle) && l.contains("failed"))
                .map(str::to_string)
                .collect()
        };
        // Wait until the lines account for every counted failure (the last line comes
        // within an interval of the last failure).
        let mut seen = (0u64, 0.0);
        let ok = common::eventually(Duration::from_secs(20), || {
            let Ok((200, _, body)) = common::http_get(web, "/metrics", &[]) else {
                return false;
            };
            let c = counted(&Metrics::parse(&String::from_utf8_lossy(&body)), "7602");
            let sum: u64 = lines(&agent.log()).iter().map(|l| line_count(l)).sum();
            seen = (sum, c);
            c > 0.0 && sum as f64 == c
        });
        let log = agent.log();
        let got = lines(&log);
        assert!(
            ok,
            "the lines' counts add up to the counted failures (lines {}, counted {}); made {made}: {:?}",
            seen.0,
            seen.1,
            got.iter().take(5).collect::<Vec<_>>()
        );
        // Spaced by the interval: no two lines closer than it, bar the first pair
        // (the first failure is logged at once).
        assert!(
            got.len() <= (flood_secs.ceil() as usize) + 3,
            "at most one line per second of flood (+ the first and the last): {} lines in {flood_secs:.1} s",
            got.len()
        );
    });
}
