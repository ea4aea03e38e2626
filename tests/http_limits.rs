//! What one client can hold: a write timeout for clients that never read their answer,
//! a cap on open connections (with a counter of the refused ones), and the metric of a
//! failed live reload of `--web.config.file`. The real binary, each test in its own
//! network namespace, clients on loopback, every wait bounded.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// `bindwatch serve` on `port`, killed on drop.
struct Agent {
    /// Kept for its drop, which kills the agent.
    _run: Logged,
    addr: SocketAddr,
}

impl Agent {
    fn start(port: u16, extra: &[&str]) -> Agent {
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin());
        cmd.args([
            "serve",
            "--web.listen-address",
            &listen,
            "--state.file",
            "",
            "--poll.interval",
            "300ms",
        ])
        .args(extra);
        let log =
            std::env::temp_dir().join(format!("bindwatch-lim-{}-{port}.log", std::process::id()));
        let mut run = Logged::spawn(cmd, log);
        let addr: SocketAddr = listen.parse().expect("addr");
        run.wait_until("listened", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        Agent { _run: run, addr }
    }
}

/// A client that asks for /metrics and does not read (a 4 KiB receive buffer).
fn stalled_reader(addr: SocketAddr) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    (&s).write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    s
}

/// Whether the server has started answering on `s` (bytes wait to be read).
fn answered(s: &Socket) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: a valid fd and a one-byte buffer; MSG_PEEK leaves the byte in place.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// A client that never reads its answer (over 1 MB) is cut off after `--web.write-timeout`
/// (the whole body would otherwise wait for it forever, and with it the snapshot).
#[test]
fn a_client_that_never_reads_is_cut_off_after_the_write_timeout() {
    in_netns(|| {
        // Loopback autotunes send buffers to 4 MB, which would take the whole body.
        run_ok("sysctl", &["-qw", "net.ipv4.tcp_wmem=4096 16384 65536"]);
        let dir = Scratch::new("lim-wto");
        let procfs = big_procfs(&dir, 3000);
        let agent = Agent::start(
            18801,
            &[
                "--path.procfs",
                &procfs,
                "--source",
                "procfs",
                "--ports.max",
                "5000",
                "--web.write-timeout",
                "2s",
            ],
        );
        let full = eventually(Duration::from_secs(20), || {
            // Far more than the send buffer (64 KB at most here) and a client's
            // receive buffer hold.
            http_get(agent.addr, "/metrics", &[])
                .is_ok_and(|(c, _, b)| c == 200 && b.len() > 1_000_000)
        });
        assert!(full, "a large body");
        let body_len = http_get(agent.addr, "/metrics", &[])
            .expect("scrape")
            .2
            .len();
        let s = stalled_reader(agent.addr);
        // Well past the timeout, then read what the server wrote before it gave up.
        std::thread::sleep(Duration::from_secs(5));
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = 0usize;
        let mut buf = [0u8; 65536];
        let t = Instant::now();
        let ended = loop {
            match (&s).read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    break false
                }
                Err(e) => panic!("reading: {e}"),
            }
            assert!(t.elapsed() < Duration::from_secs(20), "bounded");
        };
        assert!(ended, "the server closed the connection");
        assert!(
            got < body_len,
            "cut off: read {got} of {body_len} bytes after the server gave up"
        );
        // Scrapes go on.
        assert_eq!(
            http_get(agent.addr, "/metrics", &[]).expect("scrape").0,
            200
        );
    });
}

/// Connections beyond `--web.max-connections` while every slot serves a request (here:
/// clients that never read a large answer) are refused at once with a 503 naming the
/// flag, and counted in `bindwatch_http_connections_refused_total`.
#[test]
fn connections_beyond_the_cap_are_refused_and_counted() {
    in_netns(|| {
        // Loopback autotunes send buffers to 4 MB, which would take the whole body.
        run_ok("sysctl", &["-qw", "net.ipv4.tcp_wmem=4096 16384 65536"]);
        let dir = Scratch::new("lim-cap");
        let procfs = big_procfs(&dir, 3000);
        let agent = Agent::start(
            18802,
            &[
                "--web.max-connections",
                "2",
                "--path.procfs",
                &procfs,
                "--source",
                "procfs",
                "--ports.max",
                "5000",
            ],
        );
        // Serving a large body (first poll done, accepting) before the cap is filled.
        assert!(eventually(Duration::from_secs(20), || {
            // Far more than the send buffer (64 KB at most here) and a client's
            // receive buffer hold.
            http_get(agent.addr, "/metrics", &[])
                .is_ok_and(|(c, _, b)| c == 200 && b.len() > 1_000_000)
        }));
        // One at a time, each being answered before the next: a connection whose
        // request the agent has not read yet may give way to a newer one.
        let busy: Vec<Socket> = (0..2)
            .map(|_| {
                let s = stalled_reader(agent.addr);
                assert!(
                    eventually(Duration::from_secs(10), || answered(&s)),
                    "the stalled reader is being answered"
                );
                s
            })
            .collect();
        // Until the agent has noticed the connections of earlier scrapes are gone, a
        // probe may still get in (and, with `Connection: close`, leave again): count
        // the refusals actually seen.
        let probe = || {
            let mut s = TcpStream::connect(agent.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        };
        let mut refused = 0u32;
        let t0 = Instant::now();
        while refused < 3 {
            assert!(t0.elapsed() < Duration::from_secs(8), "never refused");
            let answer = probe();
            if answer.starts_with("HTTP/1.1 503") {
                assert!(answer.contains("--web.max-connections"), "{answer:?}");
                assert!(
                    answer.ends_with("(--web.max-connections)\n"),
                    "whole body: {answer:?}"
                );
                refused += 1;
            } else {
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        drop(busy);
        // Our own scrapes below may be refused too while the server notices the busy
        // ones are gone: at least the refusals seen are counted.
        let mut last = None;
        let counted = eventually(Duration::from_secs(10), || {
            let Ok((200, _, body)) = http_get(agent.addr, "/metrics", &[]) else {
                return false;
            };
            last = Metrics::parse(&String::from_utf8_lossy(&body))
                .get("bindwatch_http_connections_refused_total", &[]);
            last.is_some_and(|v| v >= f64::from(refused))
        });
        assert!(
            counted,
            "bindwatch_http_connections_refused_total: {last:?}"
        );
    });
}

/// The scrape reserve: one client holding more idle and slow-header connections than
/// `--web.max-connections` (and stalled TLS handshakes alike) cannot make scrapes
/// answer 503: the connection waiting longest without a request gives way to a new
/// one, and is counted.
#[test]
fn idle_and_slow_header_connections_do_not_lock_scrapes_out() {
    in_netns(|| {
        let agent = Agent::start(18803, &["--web.max-connections", "8"]);
        assert!(eventually(Duration::from_secs(20), || {
            matches!(http_get(agent.addr, "/healthz", &[]), Ok((200, _, _)))
        }));
        // 40 connections held open: idle ones, and ones that started a request line.
        let held: Vec<TcpStream> = (0..40)
            .map(|i| {
                let mut s = TcpStream::connect(agent.addr).expect("connect");
                if i % 2 == 0 {
                    let _ = s.write_all(b"GET / HTTP/1.1\r\n");
                }
                s
            })
            .collect();
        // The burst settles within moments (its connections take the slots of older
        // ones or are refused), long before the held ones time out.
        let t0 = Instant::now();
        let mut last = None;
        let settled = eventually(Duration::from_secs(3), || {
            last = http_get(agent.addr, "/healthz", &[]).ok().map(|r| r.0);
            last == Some(200)
        });
        assert!(
            settled,
            "scrapes answered 503 while 40 idle connections are held: last {last:?}"
        );
        // Held, not flooding: every scrape gets in.
        for i in 0..20 {
            let (code, _, body) = http_get(agent.addr, "/metrics", &[]).expect("scrape");
            assert_eq!(
                code,
                200,
                "scrape {i} while 40 idle connections are held: {}",
                String::from_utf8_lossy(&body)
            );
        }
        // Each connection over the cap closed an idle one or was refused: all counted
        // (the metric is rendered at the next poll).
        let mut closed = None;
        let counted = eventually(Duration::from_secs(10), || {
            let Ok((200, _, body)) = http_get(agent.addr, "/metrics", &[]) else {
                return false;
            };
            closed = Metrics::parse(&String::from_utf8_lossy(&body))
                .get("bindwatch_http_connections_refused_total", &[]);
            closed.is_some_and(|v| v >= 32.0)
        });
        assert!(
            counted,
            "the connections over the cap are counted: {closed:?}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(50),
            "all within the held connections' header timeout"
        );
        drop(held);
    });
}

/// A live reload of `--web.config.file` that fails keeps the old config and says so in
/// `bindwatch_web_config_last_reload_successful`; a good file sets it back to 1.
#[test]
fn a_failed_web_config_reload_shows_in_a_metric() {
    in_netns(|| {
        let dir = Scratch::new("lim-webreload");
        let hash = bcrypt::hash("pw", 4).expect("bcrypt");
        let good = format!("basic_auth_users:\n  alice: {hash}\n");
        let cfg = dir.write("web.yml", &good);
        let agent = Agent::start(18803, &["--web.config.file", &cfg]);
        // "alice:pw"
        let auth = [("Authorization", "Basic YWxpY2U6cHc=")];
        let metric = |want: f64| {
            let mut last = None;
            let ok = eventually(Duration::from_secs(10), || {
                let Ok((200, _, body)) = http_get(agent.addr, "/metrics", &auth) else {
                    return false;
                };
                last = Metrics::parse(&String::from_utf8_lossy(&body))
                    .get("bindwatch_web_config_last_reload_successful", &[]);
                last == Some(want)
            });
            assert!(
                ok,
                "bindwatch_web_config_last_reload_successful: {last:?}, want {want}"
            );
        };
        metric(1.0);
        // Another size, so the change is seen even within one mtime tick.
        fs::write(
            &cfg,
            "basic_auth_users:\n  alice: [not, a, hash]\n# broken\n",
        )
        .expect("write");
        metric(0.0);
        fs::write(&cfg, &good).expect("write");
        metric(1.0);
    });
}
