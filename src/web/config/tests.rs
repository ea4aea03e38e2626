//! Table tests of the web config parser.
use super::*;

const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";

fn base() -> &'static Path {
    Path::new("/etc/bindwatch")
}

#[test]
fn full_file() {
    let text = format!(
        r#"
tls_server_config:
  cert_file: server.crt
  key_file: /abs/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  curve_preferences: [X25519, CurveP256]
  prefer_server_cipher_suites: false
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    x-content-type-options: nosniff
    Strict-Transport-Security: max-age=31536000; includeSubDomains
    X-XSS-Protection: ""
basic_auth_users:
  alice: {HASH}
  "bob": '{HASH}'
auth_excluded_paths: [/healthz]
rate_limit:
  interval: 1s
  burst: 10
"#
    );
    let c = parse(&text, base()).unwrap();
    let t = c.tls.unwrap();
    assert_eq!(
        t.cert.source,
        PemSource::File("/etc/bindwatch/server.crt".into())
    );
    assert_eq!(t.cert.line, 3);
    assert_eq!(t.key.source, PemSource::File("/abs/server.key".into()));
    assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
    assert_eq!(t.min_version, TlsVersion::Tls13);
    assert_eq!(t.max_version, TlsVersion::Tls13);
    assert_eq!(
        t.cipher_suites.len(),
        1,
        "TLS 1.3 names are accepted and always on"
    );
    assert_eq!(t.curves.len(), 2);
    assert!(!t.prefer_server_cipher_suites);
    assert_eq!(
        c.headers,
        vec![
            ("X-Frame-Options".to_string(), "deny".to_string()),
            ("X-Content-Type-Options".to_string(), "nosniff".to_string()),
            (
                "Strict-Transport-Security".to_string(),
                "max-age=31536000; includeSubDomains".to_string()
            ),
        ]
    );
    assert_eq!(c.users.len(), 2);
    assert_eq!(c.auth_excluded_paths, vec!["/healthz".to_string()]);
    assert_eq!(
        c.rate_limit,
        Some(RateLimit {
            interval: Duration::from_secs(1),
            burst: 10
        })
    );
}

#[test]
fn empty_and_tls_less_files_mean_plain_http() {
    for text in [
        "",
        "tls_server_config:\n",
        "tls_server_config:\n  min_version: TLS13\n",
        "basic_auth_users:\n",
    ] {
        let c = parse(text, base()).unwrap();
        assert!(c.tls.is_none(), "{text:?}");
        assert!(c.users.is_empty());
    }
}

#[test]
fn problems_name_line_and_key() {
    let text = "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, NOPE]\nhttp_server_config:\n  headers:\n    Authorization: x\n    X-Frame-Options: allow\nbasic_auth_users:\n  alice: hunter2\nextra: 1\n";
    let p = parse(text, base()).unwrap_err();
    let got: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (4, "tls_server_config.min_version"),
            (5, "tls_server_config.cipher_suites[0]"),
            (5, "tls_server_config.cipher_suites[1]"),
            (8, "http_server_config.headers.Authorization"),
            (9, "http_server_config.headers.X-Frame-Options"),
            (11, "basic_auth_users.alice"),
            (12, "extra"),
        ],
        "{p:#?}"
    );
    assert!(
        p[0].message.contains("TLS10 is not supported"),
        "{}",
        p[0].message
    );
    assert!(
        p[1].message.contains("not supported by rustls"),
        "{}",
        p[1].message
    );
    assert!(
        p[2].message.contains("unknown cipher suite"),
        "{}",
        p[2].message
    );
    assert!(p[3].message.contains("can not be configured"));
    assert!(p[4].message.contains("deny, sameorigin"));
    assert!(p[5].message.contains("not the password"));
    assert!(p[6].message.contains("unknown key"));
}

#[test]
fn value_errors_table() {
    let cases = [
            ("tls_server_config:\n  cert_file: a\n", "needs a private key"),
            ("tls_server_config:\n  key_file: a\n", "needs a certificate"),
            ("tls_server_config:\n  cert_file: a\n  cert: x\n  key_file: b\n", "not both"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Maybe\n", "is not one of NoClientCert"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n", "client_auth_type is NoClientCert"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n", "above max_version"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]\n", "not supported by rustls"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [Curve25519x]\n", "unknown curve"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n", "not supported by bindwatch"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  prefer_server_cipher_suites: yes\n", "expected true or false"),
            ("tls_server_config:\n  cert_file: a\n  cert_file: b\n", "given twice"),
            ("tls_server_config: [a]\n", "expected a mapping"),
            ("http_server_config:\n  http2: 1\n", "expected true or false"),
            ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n", "is not one of nosniff"),
            ("http_server_config:\n  headers:\n    Content-Security-Policy: \"a\\nb\"\n", "not a valid HTTP header value"),
            ("http_server_config:\n  headers:\n    Set-Cookie: a=b\n", "can not be configured"),
            ("http_server_config:\n  tls: 1\n", "unknown key"),
            ("basic_auth_users:\n  \"a:b\": x\n", "cannot contain ':'"),
            ("basic_auth_users:\n  a: $2y$99$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG\n", "bcrypt cost"),
            ("basic_auth_users:\n  a: [1]\n", "expected a single value"),
            ("basic_auth_users: [a]\n", "expected a mapping"),
            ("auth_excluded_paths: [healthz]\n", "must start with '/'"),
            ("rate_limit:\n  interval: fast\n", "not a duration"),
            ("rate_limit:\n  interval: 1s\n", "at least 1"),
            ("rate_limit:\n  interval: 1s\n  burst: -1\n", "whole number"),
            ("tls_server_config: &a\n  cert_file: x\nhttp_server_config: *a\n", "YAML aliases are not supported here"),
            ("- 1\n", "expected a mapping"),
            ("a: [\n", "YAML syntax error"),
        ];
    for (text, want) in cases {
        let p = parse(text, base()).unwrap_err();
        assert!(
            p.iter().any(|p| p.message.contains(want)),
            "{text:?}: want {want:?}: {p:#?}"
        );
        assert!(p.iter().all(|p| p.line >= 1), "{text:?}: {p:#?}");
    }
}

#[test]
fn bcrypt_shapes() {
    assert!(check_bcrypt_hash(HASH).is_ok());
    for bad in [
        "",
        "$2y$10$",
        "2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG",
        "$1$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG",
        "$2y$3$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG",
        "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7z!",
        "$2y$10$é0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7z",
    ] {
        assert!(check_bcrypt_hash(bad).is_err(), "{bad:?}");
    }
}
