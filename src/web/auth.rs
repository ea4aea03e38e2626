//! Basic authentication against bcrypt hashes, and the `rate_limit` token bucket.
//!
//! bcrypt is slow on purpose (about 70 ms at cost 10), so, like exporter-toolkit,
//! successful checks are cached: the cache holds HMAC-SHA256 tags of
//! (user, hash, password) under a key drawn at start-up, never the password, and is
//! compared in constant time. Failed checks are not cached, so a wrong password costs
//! a bcrypt every time. bcrypt work has its own small pool: one check runs at a time
//! (off the async threads, so at most one core however many clients guess), at most
//! [`BCRYPT_PENDING`] wait for it, and a request beyond that is answered 429 at once.
//! Requests with cached credentials never wait for that pool, and none of this holds a
//! `--web.max-requests` slot, so guessing clients cannot starve verified scrapers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use ring::hmac;

/// How many verified credentials are remembered (a handful of scrapers is the norm).
const CACHE_SIZE: usize = 64;

/// bcrypt checks running or waiting at once; more are refused ([`Verdict::Busy`]).
/// One runs at a time, so this is one in progress and three queued: a scraper whose
/// credentials are not cached yet (first scrape after start or a change) still gets
/// through a moderate burst of guesses, and retries at its next scrape otherwise.
pub const BCRYPT_PENDING: usize = 4;

/// The answer of [`BasicAuth::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Not checked: the bcrypt pool is full (too many unverified attempts at once).
    Busy,
}

/// The `basic_auth_users` of the active web config.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// A hash of a random password, checked for unknown users so that their answer
    /// takes as long as a wrong password of a known user (no user enumeration).
    dummy: Arc<OnceLock<String>>,
    dummy_cost: u32,
    key: hmac::Key,
    verified: Mutex<VecDeque<[u8; 32]>>,
    /// One bcrypt at a time: it is CPU-bound, and a burst of bad passwords must not
    /// take every core from the poller.
    bcrypt: tokio::sync::Mutex<()>,
    /// Checks running or waiting for `bcrypt`, at most [`BCRYPT_PENDING`].
    pending: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Splits an `Authorization: Basic ...` header into user and password.
pub fn parse_basic(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let s = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
    Some((user, raw[colon + 1..].to_vec()))
}

/// Equality whose time does not depend on where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl BasicAuth {
    /// `users`: name -> bcrypt hash (already checked for shape by the parser).
    pub fn new(users: BTreeMap<String, String>) -> Self {
        let dummy_cost = users
            .values()
            .filter_map(|h| h.get(4..6)?.parse::<u32>().ok())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST)
            .clamp(4, 31);
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            // The OS random source failing is not something to serve on; a fixed key
            // only weakens the in-memory cache tags, never the check itself.
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, b"bindwatch"));
        BasicAuth {
            users,
            dummy: Arc::new(OnceLock::new()),
            dummy_cost,
            key,
            verified: Mutex::new(VecDeque::with_capacity(CACHE_SIZE)),
            bcrypt: tokio::sync::Mutex::new(()),
            pending: Arc::new(tokio::sync::Semaphore::new(BCRYPT_PENDING)),
        }
    }

    fn tag(&self, user: &str, hash: &str, pass: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in [user.as_bytes(), b"\0", hash.as_bytes(), b"\0", pass] {
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn cached(&self, tag: &[u8; 32]) -> bool {
        let v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        // Look at every entry: no early exit that would time the position.
        v.iter().fold(false, |hit, t| hit | ct_eq(t, tag))
    }

    fn remember(&self, tag: [u8; 32]) {
        let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= CACHE_SIZE {
            v.pop_front();
        }
        v.push_back(tag);
    }

    /// Whether the `Authorization` header carries valid credentials.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Verdict {
        let Some((user, pass)) = authorization.and_then(parse_basic) else {
            return Verdict::Denied;
        };
        let known = self.users.get(&user).cloned();
        if let Some(hash) = &known {
            let tag = self.tag(&user, hash, &pass);
            if self.cached(&tag) {
                return Verdict::Allowed;
            }
        }
        let Ok(_pending) = self.pending.clone().try_acquire_owned() else {
            return Verdict::Busy;
        };
        let _one_at_a_time = self.bcrypt.lock().await;
        if let Some(hash) = &known {
            // Another request may have verified the same credentials while we waited.
            if self.cached(&self.tag(&user, hash, &pass)) {
                return Verdict::Allowed;
            }
        }
        let dummy = self.dummy.clone();
        let cost = self.dummy_cost;
        let hash = known.clone();
        let pass_ = pass.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let hash = match &hash {
                Some(h) => h.as_str(),
                None => dummy.get_or_init(|| {
                    bcrypt::hash(b"bindwatch: no such user", cost).unwrap_or_default()
                }),
            };
            bcrypt::verify(&pass_, hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        match known {
            Some(hash) if ok => {
                self.remember(self.tag(&user, &hash, &pass));
                Verdict::Allowed
            }
            _ => Verdict::Denied,
        }
    }
}

/// `rate_limit`: a token bucket shared by all requests; `burst` tokens, one more per
/// `interval`.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(interval: Duration, burst: u32) -> Self {
        RateLimiter {
            interval,
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gained = now.saturating_duration_since(s.1).as_secs_f64() / self.interval.as_secs_f64();
        s.0 = (s.0 + gained).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
        .into_bytes()
    }

    #[test]
    fn parses_basic_headers() {
        assert_eq!(
            parse_basic(&header("alice", "pa:ss")),
            Some(("alice".to_string(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            parse_basic(b"basic YWxpY2U6"),
            Some(("alice".to_string(), Vec::new()))
        );
        for bad in [
            &b"Bearer abc"[..],
            b"Basic",
            b"Basic !!!",
            b"Basic YWxpY2U=",
            b"\xff",
        ] {
            assert_eq!(parse_basic(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn checks_and_caches_only_successes() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("alice".to_string(), hash)]));
        assert_eq!(Verdict::Denied, auth.check(None).await);
        assert_eq!(
            Verdict::Denied,
            auth.check(Some(&header("alice", "wrong"))).await
        );
        assert_eq!(
            Verdict::Denied,
            auth.check(Some(&header("bob", "secret"))).await
        );
        assert!(
            auth.verified.lock().unwrap().is_empty(),
            "failures are not cached"
        );
        assert_eq!(
            Verdict::Allowed,
            auth.check(Some(&header("alice", "secret"))).await
        );
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
        assert_eq!(
            Verdict::Allowed,
            auth.check(Some(&header("alice", "secret"))).await
        );
        assert_eq!(
            auth.verified.lock().unwrap().len(),
            1,
            "the second check was a cache hit"
        );
        assert_eq!(
            Verdict::Denied,
            auth.check(Some(&header("alice", "secret2"))).await
        );
        assert_eq!(auth.dummy_cost, 4, "unknown users cost what known ones do");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn guesses_beyond_the_pool_are_refused_and_verified_users_never_wait() {
        let hash = bcrypt::hash("secret", 6).unwrap();
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([(
            "alice".to_string(),
            hash,
        )])));
        let good = header("alice", "secret");
        assert_eq!(auth.check(Some(&good)).await, Verdict::Allowed);
        let n = BCRYPT_PENDING + 12;
        let guesses: Vec<_> = (0..n)
            .map(|i| {
                let a = auth.clone();
                tokio::spawn(async move { a.check(Some(&header("alice", &format!("w{i}")))).await })
            })
            .collect();
        // While the pool is full, the cached credentials are still accepted.
        assert_eq!(auth.check(Some(&good)).await, Verdict::Allowed);
        let mut verdicts = Vec::new();
        for g in guesses {
            verdicts.push(g.await.unwrap());
        }
        let busy = verdicts.iter().filter(|v| **v == Verdict::Busy).count();
        let denied = verdicts.iter().filter(|v| **v == Verdict::Denied).count();
        assert_eq!(busy + denied, n, "no guess is allowed: {verdicts:?}");
        assert!(denied >= 1, "some guesses are checked: {verdicts:?}");
        assert!(
            busy >= 1,
            "guesses beyond the pool are refused: {verdicts:?}"
        );
    }

    #[test]
    fn cache_is_bounded() {
        let auth = BasicAuth::new(BTreeMap::new());
        for i in 0..(CACHE_SIZE as u8 + 10) {
            auth.remember([i; 32]);
        }
        assert_eq!(auth.verified.lock().unwrap().len(), CACHE_SIZE);
        assert!(!auth.cached(&[0; 32]), "oldest evicted");
        assert!(auth.cached(&[CACHE_SIZE as u8 + 9; 32]));
    }

    #[test]
    fn token_bucket() {
        let l = RateLimiter::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert!(l.allow_at(t0));
        assert!(l.allow_at(t0));
        assert!(!l.allow_at(t0));
        assert!(!l.allow_at(t0 + Duration::from_millis(500)));
        assert!(l.allow_at(t0 + Duration::from_millis(1000)));
        assert!(l.allow_at(t0 + Duration::from_secs(60)));
        assert!(l.allow_at(t0 + Duration::from_secs(60)));
        assert!(
            !l.allow_at(t0 + Duration::from_secs(60)),
            "burst caps the bucket"
        );
    }
}
