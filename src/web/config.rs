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
use crate::yaml::{join, parse_tree, Node, Problem, Problems};

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
    p.finish(cfg)
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
    let entries = p.mapping(n, TLS_AT)?;
    let before = p.len();
    let f = p.fields(
        entries,
        &TLS_KEYS,
        &[(
            "client_allowed_sans",
            "restrict clients with client_ca and RequireAndVerifyClientCert instead",
        )],
        TLS_AT,
    );
    let cert = pem(&f, "cert_file", "cert", base, p);
    let private_key = pem(&f, "key_file", "key", base, p);
    let client_ca = pem(&f, "client_ca_file", "client_ca", base, p);
    let (client_auth, auth_set) = client_auth_type(&f, p);
    // exporter-toolkit: TLS is on when any certificate, key, CA or client auth is given.
    let enabled = cert.is_some() || private_key.is_some() || client_ca.is_some() || auth_set;
    let min_version = tls_version(&f, "min_version", TlsVersion::Tls12, p);
    let max_version = tls_version(&f, "max_version", TlsVersion::Tls13, p);
    if let (Some(lo), Some(hi), Some(n)) = (min_version, max_version, f.get("min_version")) {
        if lo > hi {
            p.add(n, &tls_key("min_version"), "is above max_version");
        }
    }
    // A TLS 1.3 suite (`Ok(None)`) is always on, so it is not listed.
    let cipher_suites = named_list(&f, "cipher_suites", p, |name| {
        suites::cipher_suite_by_name(name)
    });
    let curves = named_list(&f, "curve_preferences", p, |name| {
        suites::kx_group_by_name(name).map(Some)
    });
    let prefer_server_cipher_suites = match f.get("prefer_server_cipher_suites") {
        None => true,
        Some(n) => p
            .boolean(n, &tls_key("prefer_server_cipher_suites"))
            .unwrap_or(true),
    };
    if !enabled {
        // Versions or suites alone do not turn TLS on (as in exporter-toolkit).
        return None;
    }
    if cert.is_none() {
        p.add(
            n,
            TLS_AT,
            "TLS needs a certificate: give cert_file (or cert)",
        );
    }
    if private_key.is_none() {
        p.add(n, TLS_AT, "TLS needs a private key: give key_file (or key)");
    }
    check_client_ca(&f, n, client_ca.as_ref(), client_auth, p);
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

const TLS_AT: &str = "tls_server_config";

fn tls_key(k: &str) -> String {
    join(TLS_AT, k)
}

/// `client_auth_type`, and whether it was given at all (which turns TLS on).
fn client_auth_type(f: &BTreeMap<&str, &Node>, p: &mut Problems) -> (ClientAuth, bool) {
    let Some(n) = f.get("client_auth_type") else {
        return (ClientAuth::NoClientCert, false);
    };
    let s = p.optional_string(n, &tls_key("client_auth_type"));
    let set = s.is_some();
    match ClientAuth::from_name(s.as_deref().unwrap_or("")) {
        Some(a) => (a, set),
        None => {
            p.add(
                n,
                &tls_key("client_auth_type"),
                format!(
                    "{:?} is not one of {}",
                    s.unwrap_or_default(),
                    ClientAuth::NAMES.join(", ")
                ),
            );
            (ClientAuth::NoClientCert, set)
        }
    }
}

/// `min_version` / `max_version`: `None` after a problem.
fn tls_version(
    f: &BTreeMap<&str, &Node>,
    name: &str,
    default: TlsVersion,
    p: &mut Problems,
) -> Option<TlsVersion> {
    let Some(n) = f.get(name) else {
        return Some(default);
    };
    match p.optional_string(n, &tls_key(name)).as_deref() {
        None => Some(default),
        Some("TLS12") => Some(TlsVersion::Tls12),
        Some("TLS13") => Some(TlsVersion::Tls13),
        Some(v @ ("TLS10" | "TLS11")) => {
            p.add(
                n,
                &tls_key(name),
                format!("{v} is not supported (rustls, bindwatch's TLS library, speaks TLS12 and TLS13)"),
            );
            None
        }
        Some(v) => {
            p.add(
                n,
                &tls_key(name),
                format!("{v:?} is not one of TLS12, TLS13"),
            );
            None
        }
    }
}

/// A list of Go names (`cipher_suites`, `curve_preferences`) looked up one by one;
/// each unknown name is a problem on its own line, duplicates are dropped.
fn named_list<T: Named>(
    f: &BTreeMap<&str, &Node>,
    field: &str,
    p: &mut Problems,
    lookup: impl Fn(&str) -> Result<Option<T>, String>,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    let Some(n) = f.get(field) else {
        return out;
    };
    let items = p.list(n, &tls_key(field)).unwrap_or(&[]);
    for (i, item) in items.iter().enumerate() {
        let k = format!("{}[{i}]", tls_key(field));
        let Some(name) = p.scalar(item, &k) else {
            continue;
        };
        match lookup(name) {
            Ok(Some(v)) => {
                if !out.iter().any(|o| o.same(&v)) {
                    out.push(v)
                }
            }
            Ok(None) => {}
            Err(why) => p.add(item, &k, why),
        }
    }
    out
}

/// What [`named_list`] needs to drop a duplicate.
trait Named {
    fn same(&self, other: &Self) -> bool;
}

impl Named for SupportedCipherSuite {
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

impl Named for &'static dyn SupportedKxGroup {
    fn same(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

/// A client CA without verification, or verification without a CA.
fn check_client_ca(
    f: &BTreeMap<&str, &Node>,
    n: &Node,
    client_ca: Option<&Pem>,
    client_auth: ClientAuth,
    p: &mut Problems,
) {
    match (client_ca, client_auth) {
        (Some(ca), ClientAuth::NoClientCert) => p.add_line(
            ca.line,
            &tls_key(ca.key),
            "a client CA is given but client_auth_type is NoClientCert; \
             use RequireAndVerifyClientCert to check client certificates",
        ),
        (None, a) if a.verifies() => {
            let line = f.get("client_auth_type").map_or(n.line, |n| n.line);
            p.add_line(
                line,
                &tls_key("client_auth_type"),
                format!("{a:?} needs client_ca_file (or client_ca): the CA that signs client certificates"),
            );
        }
        _ => {}
    }
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
mod tests;
