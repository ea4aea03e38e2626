//! The HTTP limits end to end, against hostile clients: the real binary in a private
//! network namespace (certificates made by the `openssl` CLI, `curl` as the client, both
//! installed by scripts/install-test-deps.sh or present on Debian): headers sent one byte a
//! second and stalled TLS handshakes are cut off while scrapes go on, requests beyond
//! `--web.max-requests` get 503 at once, and 50 clients guessing passwords do not starve
//! scrapes with verified credentials.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::web_config::*;
use common::*;

#[test]
fn slow_headers_are_cut_off_while_scrapes_go_on() {
    in_netns(|| {
        let srv = Server::start(18080, &["--web.read-header-timeout", "2s"]);
        let addr = srv.addr;
        let slow = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            let t0 = Instant::now();
            let request =
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for b in request {
                if s.write_all(&[*b]).is_err() {
                    return t0.elapsed();
                }
                let mut buf = [0u8; 256];
                match s.read(&mut buf) {
                    // Closed (EOF or an error status before closing).
                    Ok(_) => return t0.elapsed(),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return t0.elapsed(),
                }
            }
            panic!("a client sending one byte per second was never cut off");
        });
        let t0 = Instant::now();
        let mut scrapes = 0;
        while t0.elapsed() < Duration::from_secs(4) {
            let t = Instant::now();
            let (code, _, _) = http_get(addr, "/metrics", &[]).expect("scrape");
            assert_eq!(code, 200);
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "scrape took {:?}",
                t.elapsed()
            );
            scrapes += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        let cut = slow.join().expect("slow client");
        assert!(
            cut >= Duration::from_millis(1500) && cut < Duration::from_millis(4500),
            "cut off after {cut:?} (timeout 2s)"
        );
        assert!(scrapes >= 10, "{scrapes}");

        // Oversized headers are refused before any handler runs.
        let big = "a".repeat(100 * 1024);
        // 431, or a reset when the server closes before this client has read the answer
        // (the unread rest of the request turns its FIN into an RST).
        match http_get(addr, "/metrics", &[("X-Big", &big)]) {
            Ok((code, _, _)) => assert_eq!(code, 431),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        assert_eq!(http_get(addr, "/metrics", &[]).expect("scrape").0, 200);
    });
}

#[test]
fn stalled_tls_handshake_is_cut_off() {
    in_netns(|| {
        let dir = Scratch::new("sec-stall");
        make_ca(&dir, "ca");
        make_leaf(&dir, "server", "ca", true, false);
        let cfg = dir.write(
            "web.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        );
        let mut agent = Agent::start(
            &dir,
            &[
                "--web.config.file",
                &cfg,
                "--web.read-header-timeout",
                "10s",
            ],
        );
        let mut idle = TcpStream::connect(agent.addr).expect("connect");
        idle.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        let r = idle.read(&mut buf);
        let waited = t0.elapsed();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        // The handshake gets half the header timeout, at most 3 s: closed well before
        // the 10 s a slow header would get (wide margins: a loaded machine is slow).
        assert!(
            waited >= Duration::from_millis(2500) && waited < Duration::from_secs(8),
            "closed after {waited:?} (handshake timeout 3 s, header timeout 10 s)"
        );
        let ok = curl(&["--cacert", &dir.str("ca.crt"), &agent.url("/metrics")]);
        assert_eq!(ok.status, 200, "{ok:?}");
        assert!(agent.alive());
    });
}

/// The cheapest bcrypt cost whose check takes at least `min` here (in this build's
/// profile, the binary's too), and a hash of `password` at that cost.
fn slow_hash(password: &str, min: Duration) -> (u32, String) {
    let mut cost = 6;
    loop {
        let h = hash(password, cost);
        let t = Instant::now();
        assert!(bcrypt::verify(password, &h).expect("verify"));
        if t.elapsed() >= min || cost >= 16 {
            return (cost, h);
        }
        cost += 1;
    }
}

/// Caps TCP send buffers at 64 KiB in the current (private) network namespace.
fn small_send_buffers() {
    run_ok("sysctl", &["-qw", "net.ipv4.tcp_wmem=4096 16384 65536"]);
}

/// A client that asks for `path` and never reads the answer (a 4 KiB receive buffer,
/// set before connecting, keeps the window small).
fn stalled_reader(addr: SocketAddr, path: &str, auth: Option<&str>) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    (&s).write_all(req.as_bytes()).expect("send");
    s
}

fn basic(user: &str, pw: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// `--web.max-requests`: requests whose answer is still being written (here: two
/// clients that never read a 2 MB /metrics) hold their slots; one more gets 503 at once.
#[test]
fn requests_beyond_max_requests_get_503() {
    in_netns(|| {
        small_send_buffers();
        let dir = Scratch::new("sec-maxreq");
        let procfs = big_procfs(&dir, 3000);
        let agent = Agent::start(
            &dir,
            &[
                "--web.max-requests",
                "2",
                "--path.procfs",
                &procfs,
                "--source",
                "procfs",
                "--ports.max",
                "5000",
            ],
        );
        let addr = agent.addr;
        assert!(
            within(20, || http_get(addr, "/metrics", &[])
                .is_ok_and(|(c, _, b)| c == 200 && b.len() > 1_000_000)),
            "a large body"
        );
        let _busy: Vec<Socket> = (0..2)
            .map(|_| stalled_reader(addr, "/metrics", None))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let (code, _, body) = http_get(addr, "/healthz", &[]).expect("third request");
        assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("--web.max-requests"));
        assert!(t.elapsed() < Duration::from_millis(500), "503 is immediate");
        drop(_busy);
        // The slots are free again.
        assert!(within(5, || http_get(addr, "/healthz", &[])
            .is_ok_and(|(c, _, _)| c == 200)));
    });
}

/// Wrong passwords must not starve scrapes. 50 clients guessing for 8 s
/// (each guess a bcrypt of about 100 ms in this build): every scrape with the good,
/// already verified credentials answers 200. Guesses beyond the bcrypt pool get 429.
#[test]
fn wrong_passwords_do_not_starve_verified_scrapes() {
    in_netns(|| {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let dir = Scratch::new("sec-guess");
        let (_, h) = slow_hash("right", Duration::from_millis(100));
        let cfg = dir.write("web.yml", &format!("basic_auth_users:\n  alice: {h}\n"));
        let agent = Agent::start(&dir, &["--web.config.file", &cfg]);
        let addr = agent.addr;
        let good = basic("alice", "right");
        let (code, _, _) = http_get(addr, "/metrics", &[("Authorization", &good)]).expect("first");
        assert_eq!(
            code, 200,
            "verified (and cached) before the guessing starts"
        );
        let flood = Duration::from_secs(8);
        let t0 = Instant::now();
        let (denied, busy) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let guessers: Vec<_> = (0..50)
            .map(|i| {
                let (denied, busy) = (denied.clone(), busy.clone());
                std::thread::spawn(move || {
                    let wrong = basic("alice", &format!("guess{i}"));
                    while t0.elapsed() < flood {
                        match http_get(addr, "/metrics", &[("Authorization", &wrong)]) {
                            Ok((401, _, _)) => denied.fetch_add(1, Ordering::Relaxed),
                            Ok((429, _, _)) => busy.fetch_add(1, Ordering::Relaxed),
                            Ok((c, _, _)) => panic!("a wrong password got {c}"),
                            Err(_) => 0,
                        };
                    }
                })
            })
            .collect();
        let mut scrapes = Vec::new();
        std::thread::sleep(Duration::from_millis(300));
        while t0.elapsed() < flood {
            let r = http_get(addr, "/metrics", &[("Authorization", &good)]);
            scrapes.push(r.map(|r| r.0).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(200));
        }
        for g in guessers {
            g.join().expect("guesser");
        }
        let (denied, busy) = (denied.load(Ordering::Relaxed), busy.load(Ordering::Relaxed));
        eprintln!("guesses: {denied} checked (401), {busy} refused (429); scrapes {scrapes:?}");
        assert!(scrapes.len() >= 25, "{} scrapes", scrapes.len());
        assert!(
            scrapes.iter().all(|&c| c == 200),
            "every verified scrape answers 200: {scrapes:?}"
        );
        assert!(denied > 0, "wrong passwords were checked");
        assert!(
            busy > 0,
            "guesses beyond the bcrypt pool are refused with 429"
        );
        assert!(agent.log().is_empty() || !agent.log().contains("panicked"));
    });
}
