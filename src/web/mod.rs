//! `--web.config.file`: TLS, basic auth, extra headers and a rate limit, in the
//! Prometheus exporter-toolkit format (the YAML node_exporter reads).
//!
//! - [`config`]: the YAML, validated with file/line/key errors (pure).
//! - [`tls`]: rustls (`ring` provider) from the validated settings.
//! - [`auth`]: basic auth with a cache of verified credentials; the rate limiter.
//! - [`negotiate`]: which exposition format a scrape's `Accept` asks for (pure).
//!
//! [`WebState`] is the live configuration. It looks at the modification stamps of the
//! config file and of every certificate, key and CA file it names whenever a connection
//! or request asks for [`WebState::current`] (a few `stat` calls), and rebuilds when one
//! changed: rotated certificates and changed users apply to new connections without a
//! restart. A change that does not load keeps the previous configuration and logs why.

pub mod auth;
pub mod config;
pub mod negotiate;
mod suites;
pub mod tls;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderName, HeaderValue};
use rustls::ServerConfig;

use crate::yaml::{ConfigError, Problem};
pub use auth::{BasicAuth, RateLimiter};
pub use config::WebConfig;

/// One usable web configuration.
#[derive(Debug)]
pub struct Active {
    /// `None`: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// `None`: no authentication.
    pub auth: Option<BasicAuth>,
    pub auth_excluded_paths: Vec<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub rate_limit: Option<RateLimiter>,
}

impl Active {
    /// Whether `path` needs credentials.
    pub fn requires_auth(&self, path: &str) -> bool {
        self.auth.is_some() && !self.auth_excluded_paths.iter().any(|p| p == path)
    }
}

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    // Follows symlinks: a Kubernetes secret volume swaps a `..data` symlink.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    files.iter().map(|f| stamp(f)).collect()
}

/// Reads, validates and builds the web config at `path`: the parsed config, the usable
/// configuration, and the files it depends on (the config itself first).
///
/// # Errors
/// Every problem, each with the file's line and key.
pub fn load(path: &Path) -> Result<(WebConfig, Active, Vec<PathBuf>), ConfigError> {
    let err = |problems: Vec<Problem>| ConfigError {
        path: path.to_path_buf(),
        problems,
    };
    let text = crate::fsread::read_to_string(
        path,
        crate::fsread::Symlinks::Follow,
        crate::fsread::CONFIG_MAX,
    )
    .map_err(|e| ConfigError::unreadable(path, e.reason()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let cfg = config::parse(&text, base).map_err(err)?;
    let mut files = vec![path.to_path_buf()];
    let tls = match &cfg.tls {
        None => None,
        Some(t) => {
            files.extend(
                [Some(&t.cert), Some(&t.key), t.client_ca.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.path().map(Path::to_path_buf)),
            );
            Some(tls::build(t).map_err(err)?)
        }
    };
    let headers = cfg
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    let active = Active {
        tls,
        auth: (!cfg.users.is_empty()).then(|| BasicAuth::new(cfg.users.clone())),
        auth_excluded_paths: cfg.auth_excluded_paths.clone(),
        headers,
        rate_limit: cfg
            .rate_limit
            .map(|r| RateLimiter::new(r.interval, r.burst)),
    };
    Ok((cfg, active, files))
}

struct Live {
    files: Vec<PathBuf>,
    stamps: Vec<Option<Stamp>>,
    active: Arc<Active>,
}

/// The live web configuration behind `--web.config.file`.
pub struct WebState {
    path: PathBuf,
    tls: bool,
    /// Whether the last (re)load worked (`bindwatch_web_config_last_reload_successful`).
    last_ok: std::sync::atomic::AtomicBool,
    // A std Mutex: held for a few stats, or for a rebuild (milliseconds), never across
    // an await.
    live: Mutex<Live>,
}

impl std::fmt::Debug for WebState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebState")
            .field("path", &self.path)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl WebState {
    /// Loads the file; whether TLS is on is decided here, for the life of the process.
    ///
    /// # Errors
    /// As [`load`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (_, active, files) = load(path)?;
        Ok(WebState {
            path: path.to_path_buf(),
            tls: active.tls.is_some(),
            last_ok: std::sync::atomic::AtomicBool::new(true),
            live: Mutex::new(Live {
                stamps: stamps(&files),
                files,
                active: Arc::new(active),
            }),
        })
    }

    /// Whether the last load of the file (or of a file it names) worked.
    pub fn last_reload_ok(&self) -> bool {
        self.last_ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the listener speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls
    }

    /// The configuration to use now, rebuilt first if a file it depends on changed.
    pub fn current(&self) -> Arc<Active> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamps(&live.files);
        if now == live.stamps {
            return live.active.clone();
        }
        // Remember what was tried, so a broken file is reported once, not per request.
        live.stamps = now;
        match load(&self.path) {
            Ok((_, active, files)) if active.tls.is_some() == self.tls => {
                tracing::info!(path = %self.path.display(), tls = self.tls, "web config reloaded");
                live.stamps = stamps(&files);
                live.files = files;
                live.active = Arc::new(active);
                self.last_ok
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok((_, _, files)) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "web config changed whether TLS is on; that needs a restart, the previous web config stays active"
                );
                live.files = files;
                live.stamps = stamps(&live.files);
                self.last_ok
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!("web config reload failed, the previous one stays active: {e}");
                self.last_ok
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        live.active.clone()
    }
}
