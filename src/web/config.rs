//! `--web.config.file`: the Prometheus exporter-toolkit web configuration (the same YAML
//! node_exporter reads), parsed into a validated [`WebConfig`].
//!
//! Pure: [`parse`] reads no files. Certificates and keys are loaded by
//! [`super::tls::build`], which reports its problems on the line of the key that named
//! the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::crypto::SupportedKxGroup;
use rustls::SupportedCipherSuite;

use super::suites;
use crate::config::Problem;
use crate::yaml::{join, parse_tree, Node, Problems};

/// Where a PEM document comes from: a file (re-read when it changes) or the YAML itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    Inline(String),
}

/// A PEM source with the line and key that named it, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pem {
    pub source: PemSource,
    pub line: usize,
    pub key: &'static str,
}

impl Pem {
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            PemSource::File(p) => Some(p),
            PemSource::Inline(_) => None,
        }
    }
}

/// `client_auth_type`, with Go's `crypto/tls` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    #[default]
    NoClientCert,
    /// Ask for a certificate, accept any or none without verifying it.
    RequestClientCert,
    /// Require a certificate, do not verify it.
    RequireAnyClientCert,
    /// Verify a certificate against `client_ca` when one is sent.
    VerifyClientCertIfGiven,
    /// Require a certificate signed by `client_ca`.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    pub const NAMES: [&'static str; 5] = [
        "NoClientCert",
        "RequestClientCert",
        "RequireAnyClientCert",
        "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert",
    ];

    fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            // "RequireClientCert" is exporter-toolkit's older spelling.
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    /// Whether this mode checks client certificates against `client_ca`.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// `min_version` / `max_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `tls_server_config`, present when TLS is on.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub client_ca: Option<Pem>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in the configured order; empty means rustls's defaults. TLS 1.3
    /// suites are always enabled, as in Go.
    pub cipher_suites: Vec<SupportedCipherSuite>,
    /// Key exchange groups in preference order; empty means rustls's defaults.
    pub curves: Vec<&'static dyn SupportedKxGroup>,
    pub prefer_server_cipher_suites: bool,
}

/// `rate_limit`: a token bucket over all requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// One token per interval.
    pub interval: Duration,
    pub burst: u32,
}

/// A validated web configuration.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// User name -> bcrypt hash. Empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Paths served without basic auth (exact match), e.g. `/healthz` for probes.
    pub auth_excluded_paths: Vec<String>,
    /// Extra response headers, canonical names.
    pub headers: Vec<(String, String)>,
    pub rate_limit: Option<RateLimit>,
}

/// The headers exporter-toolkit lets a config add, with the values it accepts (`None`: any).
pub const ALLOWED_HEADERS: [(&str, Option<&[&str]>); 5] = [
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

const TOP_KEYS: [&str; 5] = [
    "tls_server_config",
    "http_server_config",
    "basic_auth_users",
    "rate_limit",
    "auth_excluded_paths",
];

const TLS_KEYS: [&str; 12] = [
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
];

/// Parses and validates web config text. Relative file names are taken relative to
/// `base_dir` (the directory of the config file), as exporter-toolkit does.
///
/// # Errors
/// Every problem found, sorted by line.
pub fn parse(text: &str, base_dir: &Path) -> Result<WebConfig, Vec<Problem>> {
    let root = match parse_tree(text) {
        Ok(Some(root)) => root,
        // An empty file configures nothing: plain HTTP without auth.
        Ok(None) => return Ok(WebConfig::default()),
        Err(p) => return Err(vec![p]),
    };
    let mut p = Problems::default();
    let cfg = validate(&root, base_dir, &mut p);
    if p.0.is_empty() {
        Ok(cfg)
    } else {
        p.0.sort_by_key(|p| p.line);
        Err(p.0)
    }
}

fn validate(root: &Node, base: &Path, p: &mut Problems) -> WebConfig {
    let mut cfg = WebConfig::default();
    let Some(top) = p.mapping(root, "") else {
        return cfg;
    };
    let f = p.fields(top, &TOP_KEYS, &[], "");
    if let Some(n) = f.get("tls_server_config") {
        cfg.tls = tls_settings(n, base, p);
    }
    if let Some(n) = f.get("http_server_config") {
        cfg.headers = http_settings(n, p);
    }
    if let Some(n) = f.get("basic_auth_users") {
        cfg.users = users(n, p);
    }
    if let Some(n) = f.get("auth_excluded_paths") {
        if let Some(items) = p.list(n, "auth_excluded_paths") {
            for (i, item) in items.iter().enumerate() {
                let key = format!("auth_excluded_paths[{i}]");
                if let Some(s) = p.scalar(item, &key) {
                    if s.starts_with('/') {
                        cfg.auth_excluded_paths.push(s.to_string());
                    } else {
                        p.add(
                            item,
                            &key,
                            format!("{s:?} is not a path (must start with '/')"),
                        );
                    }
                }
            }
        }
    }
    if let Some(n) = f.get("rate_limit") {
        cfg.rate_limit = rate_limit(n, p);
    }
    cfg
}

fn pem(
    f: &BTreeMap<&str, &Node>,
    file_key: &'static str,
    inline_key: &'static str,
    base: &Path,
    p: &mut Problems,
) -> Option<Pem> {
    let file = f.get(file_key).and_then(|n| {
        p.optional_string(n, &join("tls_server_config", file_key))
            .map(|s| (n, s))
    });
    let inline = f.get(inline_key).and_then(|n| {
        p.optional_string(n, &join("tls_server_config", inline_key))
            .map(|s| (n, s))
    });
    match (file, inline) {
        (Some((n, path)), None) => Some(Pem {
            source: PemSource::File(base.join(path)),
            line: n.line,
            key: file_key,
        }),
        (None, Some((n, text))) => Some(Pem {
            source: PemSource::Inline(text),
            line: n.line,
            key: inline_key,
        }),
        (Some(_), Some((n, _))) => {
            p.add(
                n,
                &join("tls_server_config", inline_key),
                format!("give either {file_key} or {inline_key}, not both"),
            );
            None
        }
        (None, None) => None,
    }
}

fn tls_settings(n: &Node, base: &Path, p: &mut Problems) -> Option<TlsSettings> {
    const AT: &str = "tls_server_config";
    let entries = p.mapping(n, AT)?;
    let before = p.len();
    let f = p.fields(
        entries,
        &TLS_KEYS,
        &[(
            "client_allowed_sans",
            "restrict clients with client_ca and RequireAndVerifyClientCert instead",
        )],
        AT,
    );
    let key = |k: &str| join(AT, k);
    let cert = pem(&f, "cert_file", "cert", base, p);
    let private_key = pem(&f, "key_file", "key", base, p);
    let client_ca = pem(&f, "client_ca_file", "client_ca", base, p);
    let mut auth_set = false;
    let client_auth = match f.get("client_auth_type") {
        None => ClientAuth::NoClientCert,
        Some(n) => {
            let s = p.optional_string(n, &key("client_auth_type"));
            auth_set = s.is_some();
            match ClientAuth::from_name(s.as_deref().unwrap_or("")) {
                Some(a) => a,
                None => {
                    p.add(
                        n,
                        &key("client_auth_type"),
                        format!(
                            "{:?} is not one of {}",
                            s.unwrap_or_default(),
                            ClientAuth::NAMES.join(", ")
                        ),
                    );
                    ClientAuth::NoClientCert
                }
            }
        }
    };
    // exporter-toolkit: TLS is on when any certificate, key, CA or client auth is given.
    let enabled = cert.is_some() || private_key.is_some() || client_ca.is_some() || auth_set;
    let version = |name: &str, default: TlsVersion, p: &mut Problems| match f.get(name) {
        None => Some(default),
        Some(n) => match p.optional_string(n, &key(name)).as_deref() {
            None => Some(default),
            Some("TLS12") => Some(TlsVersion::Tls12),
            Some("TLS13") => Some(TlsVersion::Tls13),
            Some(v @ ("TLS10" | "TLS11")) => {
                p.add(
                    n,
                    &key(name),
                    format!("{v} is not supported (rustls, bindwatch's TLS library, speaks TLS12 and TLS13)"),
                );
                None
            }
            Some(v) => {
                p.add(n, &key(name), format!("{v:?} is not one of TLS12, TLS13"));
                None
            }
        },
    };
    let min_version = version("min_version", TlsVersion::Tls12, p);
    let max_version = version("max_version", TlsVersion::Tls13, p);
    if let (Some(lo), Some(hi), Some(n)) = (min_version, max_version, f.get("min_version")) {
        if lo > hi {
            p.add(n, &key("min_version"), "is above max_version");
        }
    }
    let mut cipher_suites = Vec::new();
    if let Some(n) = f.get("cipher_suites") {
        for (i, item) in p
            .list(n, &key("cipher_suites"))
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let k = format!("{}[{i}]", key("cipher_suites"));
            let Some(name) = p.scalar(item, &k) else {
                continue;
            };
            match suites::cipher_suite_by_name(name) {
                Ok(Some(s)) => {
                    if !cipher_suites.contains(&s) {
                        cipher_suites.push(s)
                    }
                }
                Ok(None) => {} // a TLS 1.3 suite: always on
                Err(why) => p.add(item, &k, why),
            }
        }
    }
    let mut curves: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    if let Some(n) = f.get("curve_preferences") {
        for (i, item) in p
            .list(n, &key("curve_preferences"))
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let k = format!("{}[{i}]", key("curve_preferences"));
            let Some(name) = p.scalar(item, &k) else {
                continue;
            };
            match suites::kx_group_by_name(name) {
                Ok(g) => {
                    if !curves.iter().any(|c| c.name() == g.name()) {
                        curves.push(g)
                    }
                }
                Err(why) => p.add(item, &k, why),
            }
        }
    }
    let prefer_server_cipher_suites = match f.get("prefer_server_cipher_suites") {
        None => true,
        Some(n) => p
            .boolean(n, &key("prefer_server_cipher_suites"))
            .unwrap_or(true),
    };
    if !enabled {
        // Versions or suites alone do not turn TLS on (as in exporter-toolkit).
        return None;
    }
    if cert.is_none() {
        p.add(n, AT, "TLS needs a certificate: give cert_file (or cert)");
    }
    if private_key.is_none() {
        p.add(n, AT, "TLS needs a private key: give key_file (or key)");
    }
    match (&client_ca, client_auth) {
        (Some(ca), ClientAuth::NoClientCert) => p.add_line(
            ca.line,
            &key(ca.key),
            "a client CA is given but client_auth_type is NoClientCert; \
             use RequireAndVerifyClientCert to check client certificates",
        ),
        (None, a) if a.verifies() => {
            let line = f.get("client_auth_type").map_or(n.line, |n| n.line);
            p.add_line(
                line,
                &key("client_auth_type"),
                format!("{a:?} needs client_ca_file (or client_ca): the CA that signs client certificates"),
            );
        }
        _ => {}
    }
    if p.len() > before {
        return None;
    }
    Some(TlsSettings {
        cert: cert?,
        key: private_key?,
        client_auth,
        client_ca,
        min_version: min_version?,
        max_version: max_version?,
        cipher_suites,
        curves,
        prefer_server_cipher_suites,
    })
}

fn http_settings(n: &Node, p: &mut Problems) -> Vec<(String, String)> {
    const AT: &str = "http_server_config";
    let mut headers = Vec::new();
    let Some(entries) = p.mapping(n, AT) else {
        return headers;
    };
    let f = p.fields(entries, &["http2", "headers"], &[], AT);
    if let Some(n) = f.get("http2") {
        // bindwatch speaks HTTP/1.1 only; both values are accepted for compatibility.
        p.boolean(n, &join(AT, "http2"));
    }
    let Some(hn) = f.get("headers") else {
        return headers;
    };
    let Some(entries) = p.mapping(hn, &join(AT, "headers")) else {
        return headers;
    };
    for (name, k, v) in p.entries(entries, &join(AT, "headers")) {
        let key = format!("{AT}.headers.{name}");
        let Some((canonical, allowed)) = ALLOWED_HEADERS
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(name))
        else {
            let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(h, _)| *h).collect();
            p.add(
                k,
                &key,
                format!(
                    "HTTP header {name:?} can not be configured (allowed: {})",
                    names.join(", ")
                ),
            );
            continue;
        };
        let Some(value) = (if v.is_null() {
            Some("")
        } else {
            p.scalar(v, &key)
        }) else {
            continue;
        };
        if value.is_empty() {
            continue; // "unset if blank"
        }
        if let Some(ok) = allowed {
            if !ok.contains(&value) {
                p.add(
                    v,
                    &key,
                    format!("{value:?} is not one of {}", ok.join(", ")),
                );
                continue;
            }
        }
        if hyper::header::HeaderValue::from_str(value).is_err() {
            p.add(v, &key, "not a valid HTTP header value");
            continue;
        }
        headers.push((canonical.to_string(), value.to_string()));
    }
    headers
}

/// Checks the shape of a bcrypt hash (`$2y$10$` + 53 characters) without the cost of
/// verifying anything.
pub fn check_bcrypt_hash(h: &str) -> Result<(), String> {
    let parts: Vec<&str> = h.split('$').collect();
    let [empty, prefix, cost, rest] = parts.as_slice() else {
        return Err("is not a bcrypt hash (expected $2y$COST$ followed by 53 characters)".into());
    };
    if !empty.is_empty() || !matches!(*prefix, "2a" | "2b" | "2x" | "2y") {
        return Err("is not a bcrypt hash (it must start with $2a$, $2b$ or $2y$)".into());
    }
    match cost.parse::<u32>() {
        Ok(c) if (4..=31).contains(&c) && cost.len() == 2 => {}
        _ => {
            return Err(format!(
                "bcrypt cost {cost:?} is not a number from 04 to 31"
            ))
        }
    }
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    if rest.len() != 53 || !rest.chars().all(b64) {
        return Err(
            "is not a bcrypt hash (salt and hash must be 53 characters of [./A-Za-z0-9])".into(),
        );
    }
    Ok(())
}

fn users(n: &Node, p: &mut Problems) -> BTreeMap<String, String> {
    const AT: &str = "basic_auth_users";
    let mut out = BTreeMap::new();
    let Some(entries) = p.mapping(n, AT) else {
        return out;
    };
    for (name, k, v) in p.entries(entries, AT) {
        let key = join(AT, name);
        if name.contains(':') {
            p.add(
                k,
                &key,
                "a user name cannot contain ':' (basic auth splits on it)",
            );
            continue;
        }
        let Some(hash) = p.scalar(v, &key) else {
            continue;
        };
        match check_bcrypt_hash(hash) {
            Ok(()) => {
                out.insert(name.to_string(), hash.to_string());
            }
            Err(why) => p.add(
                v,
                &key,
                format!("{why}; the value is a bcrypt hash of the password, not the password"),
            ),
        }
    }
    out
}

fn rate_limit(n: &Node, p: &mut Problems) -> Option<RateLimit> {
    const AT: &str = "rate_limit";
    let entries = p.mapping(n, AT)?;
    let f = p.fields(entries, &["interval", "burst"], &[], AT);
    let interval = match f.get("interval") {
        None => Duration::ZERO,
        Some(n) => match p.scalar(n, &join(AT, "interval"))? {
            "0" | "0s" | "" => Duration::ZERO,
            s => match crate::cli::parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    p.add(n, &join(AT, "interval"), e);
                    return None;
                }
            },
        },
    };
    let burst = match f.get("burst") {
        None => 0,
        Some(n) => match p.scalar(n, &join(AT, "burst"))?.parse::<u32>() {
            Ok(b) => b,
            Err(_) => {
                p.add(n, &join(AT, "burst"), "expected a whole number of requests");
                return None;
            }
        },
    };
    if interval.is_zero() {
        return None; // 0 disables the limiter
    }
    if burst == 0 {
        let line = f.get("burst").map_or(n.line, |b| b.line);
        p.add_line(
            line,
            &join(AT, "burst"),
            "must be at least 1 when interval is set (0 would refuse every request)",
        );
        return None;
    }
    Some(RateLimit { interval, burst })
}

#[cfg(test)]
mod tests {
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
            ("tls_server_config: &a\n  cert_file: x\nhttp_server_config: *a\n", "expected a mapping"),
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
}
