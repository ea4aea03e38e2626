//! `--web.config.file` end to end: the real binary in a private network namespace,
//! certificates made by the `openssl` CLI for each test, `curl` as the client (both
//! installed by scripts/install-test-deps.sh or present on Debian): TLS with basic auth and
//! custom headers, mutual TLS, certificates and users rotated at run time, excluded paths,
//! and bad configs failing start-up naming file, line and key.
//!
//! The HTTP limits against hostile clients are in tests/security_limits.rs.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::web_config::*;
use common::*;

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
