//! `--web.config.file` and the HTTP limits end to end: the real binary in a private
//! network namespace, certificates made by the `openssl` CLI for each test, `curl` as the
//! client (both installed by scripts/install-test-deps.sh or present on Debian).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const PORT: u16 = 19443;

fn openssl(dir: &Scratch, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `NAME.key` (RSA 2048 or EC P-256) and a request `NAME.csr` for CN=NAME.
fn key_and_request(dir: &Scratch, name: &str, rsa: bool) -> (String, String) {
    let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
    let alg: &[&str] = if rsa {
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    } else {
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    let mut genpkey = vec!["genpkey"];
    genpkey.extend_from_slice(alg);
    genpkey.extend_from_slice(&["-out", &key]);
    openssl(dir, &genpkey);
    let subj = format!("/CN={name}");
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-subj", &subj, "-out", &csr],
    );
    (key, csr)
}

/// A CA: `NAME.key`, `NAME.crt`.
fn make_ca(dir: &Scratch, name: &str) {
    dir.write(
        "ca.ext",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
    );
    let (key, csr) = key_and_request(dir, name, false);
    let crt = format!("{name}.crt");
    openssl(
        dir,
        &[
            "x509", "-req", "-in", &csr, "-signkey", &key, "-days", "2", "-extfile", "ca.ext",
            "-out", &crt,
        ],
    );
}

/// A leaf certificate `NAME.crt` / `NAME.key` signed by `ca`; `server` decides the
/// extended key usage (and the 127.0.0.1 SAN). `rsa` picks the key type.
fn make_leaf(dir: &Scratch, name: &str, ca: &str, server: bool, rsa: bool) {
    let ext = if server {
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    } else {
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:scraper.example\n"
    };
    let ext_file = format!("{name}.ext");
    dir.write(&ext_file, ext);
    let (_, csr) = key_and_request(dir, name, rsa);
    let crt = format!("{name}.crt");
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let serial = format!("{}", std::process::id() + name.len() as u32);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &crt,
        ],
    );
}

fn hash(password: &str, cost: u32) -> String {
    bcrypt::hash(password, cost).expect("bcrypt")
}

/// `bindwatch serve` with a web config, killed on drop; stderr goes to a file.
struct Agent {
    run: Logged,
    addr: SocketAddr,
}

impl Agent {
    fn start(dir: &Scratch, extra: &[&str]) -> Agent {
        let listen = format!("127.0.0.1:{PORT}");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--web.listen-address", &listen, "--state.file="])
            .args(extra);
        let mut run = Logged::spawn(cmd, dir.path("bindwatch.log"));
        let addr: SocketAddr = listen.parse().expect("addr");
        // The listener is bound only after the web config loaded.
        run.wait_until("listened", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        Agent { run, addr }
    }

    fn alive(&mut self) -> bool {
        self.run.alive()
    }

    fn log(&self) -> String {
        self.run.log()
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

/// What curl saw: exit code, HTTP status (0 when there was none), headers (lower
/// case), body.
#[derive(Debug)]
struct Curl {
    exit: i32,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    stderr: String,
}

impl Curl {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn curl(args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status,
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect(),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn tls_with_basic_auth() {
    in_netns(|| {
        let dir = Scratch::new("sec-basic");
        make_ca(&dir, "ca");
        make_leaf(&dir, "server", "ca", true, false);
        let cfg = dir.write(
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
                 http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n\
                 basic_auth_users:\n  alice: {}\n",
                hash("s3cret", 4)
            ),
        );
        let mut agent = Agent::start(&dir, &["--web.config.file", &cfg]);
        let ca = dir.str("ca.crt");
        let url = agent.url("/metrics");

        let ok = curl(&["--cacert", &ca, "-u", "alice:s3cret", &url]);
        assert_eq!(ok.status, 200, "{ok:?}");
        assert!(ok.body.contains("bindwatch_build_info{"), "{}", ok.body);
        assert_eq!(ok.header("x-frame-options"), Some("deny"));
        assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
        // Again: the cached check gives the same answer.
        assert_eq!(
            curl(&["--cacert", &ca, "-u", "alice:s3cret", &url]).status,
            200
        );
        // TLS 1.2 and 1.3 both work by default.
        for v in [
            ["--tlsv1.2", "--tls-max", "1.2"],
            ["--tlsv1.3", "--tls-max", "1.3"],
        ] {
            let r = curl(&[
                "--cacert",
                &ca,
                "-u",
                "alice:s3cret",
                v[0],
                v[1],
                v[2],
                &url,
            ]);
            assert_eq!(r.status, 200, "{v:?}: {r:?}");
        }

        for creds in [
            Some("alice:wrong"),
            Some("bob:s3cret"),
            Some("alice:"),
            None,
        ] {
            let mut args = vec!["--cacert", ca.as_str()];
            if let Some(c) = creds {
                args.extend(["-u", c]);
            }
            args.push(&url);
            let r = curl(&args);
            assert_eq!(r.status, 401, "{creds:?}: {r:?}");
            assert_eq!(r.header("www-authenticate"), Some("Basic"), "{creds:?}");
            assert_eq!(
                r.header("x-frame-options"),
                Some("deny"),
                "headers on errors too"
            );
            assert!(!r.body.contains("bindwatch_"), "no metrics without auth");
        }
        // Every path needs credentials.
        assert_eq!(curl(&["--cacert", &ca, &agent.url("/healthz")]).status, 401);

        // Plain HTTP to the TLS port: a clear 400, as Go answers, and the server lives on.
        let (code, _, body) = http_get(agent.addr, "/metrics", &[]).expect("plain http");
        assert_eq!(code, 400);
        assert!(String::from_utf8_lossy(&body).contains("HTTP request to an HTTPS server"));
        let r = curl(&[&format!("http://{}/metrics", agent.addr)]);
        assert_eq!(r.status, 400, "{r:?}");
        // A broken TLS record: the connection ends, nothing else.
        let mut s = TcpStream::connect(agent.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
            .expect("send");
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        // A client that does not trust the certificate fails the handshake.
        let r = curl(&["-u", "alice:s3cret", &url]);
        assert_ne!(r.exit, 0, "{r:?}");
        assert!(agent.alive(), "{}", agent.log());
        assert_eq!(
            curl(&["--cacert", &ca, "-u", "alice:s3cret", &url]).status,
            200
        );
    });
}

#[test]
fn mutual_tls_require_and_verify() {
    in_netns(|| {
        let dir = Scratch::new("sec-mtls");
        make_ca(&dir, "ca");
        make_ca(&dir, "clientca");
        make_ca(&dir, "otherca");
        make_leaf(&dir, "server", "ca", true, true);
        make_leaf(&dir, "scraper", "clientca", false, false);
        make_leaf(&dir, "intruder", "otherca", false, false);
        let cfg = dir.write(
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clientca.crt\n  min_version: TLS12\n",
                dir.str("server.crt"),
                dir.str("server.key")
            ),
        );
        let mut agent = Agent::start(&dir, &["--web.config.file", &cfg]);
        let ca = dir.str("ca.crt");
        let url = agent.url("/metrics");

        let none = curl(&["--cacert", &ca, &url]);
        assert_eq!(none.status, 0, "no client certificate: refused: {none:?}");
        assert_ne!(none.exit, 0);
        assert!(!none.stderr.is_empty(), "curl says why");
        let foreign = curl(&[
            "--cacert",
            &ca,
            "--cert",
            &dir.str("intruder.crt"),
            "--key",
            &dir.str("intruder.key"),
            &url,
        ]);
        assert_eq!(
            foreign.status, 0,
            "a certificate from another CA: refused: {foreign:?}"
        );
        for tls12 in [false, true] {
            let mut args = vec![
                "--cacert".to_string(),
                ca.clone(),
                "--cert".into(),
                dir.str("scraper.crt"),
                "--key".into(),
                dir.str("scraper.key"),
            ];
            if tls12 {
                args.extend(["--tls-max".into(), "1.2".into()]);
            }
            args.push(url.clone());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let ok = curl(&args);
            assert_eq!(ok.status, 200, "tls12={tls12}: {ok:?}");
            assert!(ok.body.contains("bindwatch_build_info{"));
        }
        assert!(agent.alive());
    });
}

/// Retries `f` until it returns true, for at most `secs`.
fn within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    eventually(Duration::from_secs(secs), &mut f)
}

#[test]
fn rotated_certificates_and_users_are_picked_up() {
    in_netns(|| {
        let dir = Scratch::new("sec-rotate");
        make_ca(&dir, "ca1");
        make_ca(&dir, "ca2");
        make_leaf(&dir, "one", "ca1", true, false);
        make_leaf(&dir, "two", "ca2", true, true);
        fs::copy(dir.str("one.crt"), dir.str("server.crt")).expect("cp");
        fs::copy(dir.str("one.key"), dir.str("server.key")).expect("cp");
        let users = |u: &str| format!("basic_auth_users:\n  {u}: {}\n", hash("pw", 4));
        let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
        let cfg = dir.write("web.yml", &format!("{tls}{}", users("alice")));
        let agent = Agent::start(&dir, &["--web.config.file", &cfg]);
        let url = agent.url("/metrics");
        let (ca1, ca2) = (dir.str("ca1.crt"), dir.str("ca2.crt"));
        assert_eq!(
            curl(&["--cacert", &ca1, "-u", "alice:pw", &url]).status,
            200
        );
        assert_ne!(curl(&["--cacert", &ca2, "-u", "alice:pw", &url]).exit, 0);

        // Rotate as cert-manager or a script would: the certificate first, then the key.
        // In between the pair does not match; the old one stays in use meanwhile.
        fs::copy(dir.str("two.crt"), dir.str("server.crt")).expect("cp");
        assert_eq!(
            curl(&["--cacert", &ca1, "-u", "alice:pw", &url]).status,
            200,
            "half-rotated: the previous certificate is still served"
        );
        fs::copy(dir.str("two.key"), dir.str("server.key")).expect("cp");
        assert!(
            within(5, || curl(&["--cacert", &ca2, "-u", "alice:pw", &url])
                .status
                == 200),
            "the new certificate is served: {}",
            agent.log()
        );
        assert_ne!(curl(&["--cacert", &ca1, "-u", "alice:pw", &url]).exit, 0);
        assert!(
            agent.log().contains("web config reload failed"),
            "{}",
            agent.log()
        );

        // Changed users apply too, and a broken edit keeps the last good config.
        fs::write(&cfg, format!("{tls}{}", users("bob"))).expect("write");
        assert!(within(5, || curl(&[
            "--cacert", &ca2, "-u", "bob:pw", &url
        ])
        .status
            == 200));
        assert_eq!(
            curl(&["--cacert", &ca2, "-u", "alice:pw", &url]).status,
            401
        );
        fs::write(&cfg, format!("{tls}basic_auth_users:\n  bob: plaintext\n")).expect("write");
        assert_eq!(curl(&["--cacert", &ca2, "-u", "bob:pw", &url]).status, 200);
        assert!(
            agent.log().contains("web.yml:5: basic_auth_users.bob"),
            "the broken edit is logged with file, line and key: {}",
            agent.log()
        );
    });
}

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
            &["--web.config.file", &cfg, "--web.read-header-timeout", "2s"],
        );
        let mut idle = TcpStream::connect(agent.addr).expect("connect");
        idle.set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        let r = idle.read(&mut buf);
        let waited = t0.elapsed();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_millis(1900),
            "closed after {waited:?} (handshake timeout 1s, header timeout 2s)"
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
                .is_ok_and(|(c, _, b)| c == 200 && b.len() > 1_500_000)),
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

/// Issue 15, bug 7: wrong passwords must not starve scrapes. 50 clients guessing for 8 s
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

#[test]
fn bad_web_configs_fail_start_up_naming_file_line_and_key() {
    let dir = Scratch::new("sec-bad");
    let cases: [(&str, &str, &str); 6] = [
        ("unknown.yml", "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  ciphers: []\n", "unknown.yml:4: tls_server_config.ciphers: unknown key"),
        ("missing.yml", "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n", "missing.yml:2: tls_server_config.cert_file: cannot read"),
        ("header.yml", "http_server_config:\n  headers:\n    Authorization: Basic x\n", "header.yml:3: http_server_config.headers.Authorization: HTTP header \"Authorization\" can not be configured"),
        ("hash.yml", "basic_auth_users:\n  alice: hunter2\n", "hash.yml:2: basic_auth_users.alice: is not a bcrypt hash"),
        ("suite.yml", "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n", "suite.yml:4: tls_server_config.cipher_suites[0]: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA is not supported by rustls"),
        ("auth.yml", "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_auth_type: RequireAndVerifyClientCert\n", "auth.yml:4: tls_server_config.client_auth_type: RequireAndVerifyClientCert needs client_ca_file"),
    ];
    for (file, text, want) in cases {
        let p = dir.write(file, text);
        let (code, _, err) = bindwatch(&[
            "serve",
            "--web.listen-address",
            "127.0.0.1:0",
            "--state.file=",
            "--web.config.file",
            &p,
        ]);
        assert_eq!(code, 2, "{file}: {err}");
        assert!(err.contains("--web.config.file"), "{file}: {err}");
        assert!(err.contains(want), "{file}: want {want:?} in {err}");
    }
    let (code, _, err) = bindwatch(&[
        "serve",
        "--web.listen-address",
        "127.0.0.1:0",
        "--web.config.file",
        &dir.str("absent.yml"),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("absent.yml") && err.contains("cannot read the file"),
        "{err}"
    );
    // A key that does not belong to the certificate.
    make_ca(&dir, "ca");
    make_leaf(&dir, "a", "ca", true, false);
    make_leaf(&dir, "b", "ca", true, false);
    let p = dir.write(
        "mismatch.yml",
        "tls_server_config:\n  cert_file: a.crt\n  key_file: b.key\n",
    );
    let (code, _, err) = bindwatch(&[
        "serve",
        "--web.listen-address",
        "127.0.0.1:0",
        "--state.file=",
        "--web.config.file",
        &p,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mismatch.yml:3: tls_server_config.key_file")
            && err.contains("does not belong to the certificate"),
        "{err}"
    );
}

#[test]
fn excluded_paths_and_plain_http_with_auth() {
    in_netns(|| {
        let dir = Scratch::new("sec-plainauth");
        let cfg = dir.write(
            "web.yml",
            &format!(
                "basic_auth_users:\n  alice: {}\nauth_excluded_paths: [/healthz]\n",
                hash("pw", 4)
            ),
        );
        let agent = Agent::start(&dir, &["--web.config.file", &cfg]);
        let base = format!("http://{}", agent.addr);
        assert_eq!(curl(&[&format!("{base}/metrics")]).status, 401);
        assert_eq!(
            curl(&["-u", "alice:pw", &format!("{base}/metrics")]).status,
            200
        );
        let h = curl(&[&format!("{base}/healthz")]);
        assert!(
            h.status == 200 || h.status == 503,
            "probes need no credentials: {h:?}"
        );
    });
}
