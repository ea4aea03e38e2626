//! Bounded logging of traced failures: any local user can make bind() fail in a loop,
//! and one warn line per failure would fill a disk or trip journald's rate limit,
//! hiding the lines that matter. Per (namespace, kind, protocol, port) at most one line
//! per interval: the first failure is logged at once with its details, later ones are
//! counted and summed up in one line ("bind(0.0.0.0:8080) failed 9412 times in 5.0 s")
//! when the interval has passed. The failure log and the metrics keep every count;
//! only the log lines are thinned. Likewise the port captures after failures
//! ([`CaptureBudget`]). Pure: the caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::Protocol;

/// What the lines are about: the namespace's name, what happened (`bind`, `listen`,
/// `connect`, `prediction miss`), protocol and port.
pub type Key = (String, &'static str, Protocol, u16);

/// The kind of a key for prediction misses.
pub const MISS: &str = "prediction miss";

/// Keys tracked at most; failures on further keys share one summary line.
pub const MAX_KEYS: usize = 4096;

#[derive(Debug)]
struct Slot {
    /// When the last line for this key was logged.
    last_line: Instant,
    /// Events since then that got no line.
    pending: u64,
    /// What the last of them was: the address, a newline, then details (errno,
    /// caller) for the summary.
    last_what: String,
}

/// The per-key windows.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    slots: HashMap<Key, Slot>,
    /// Events on keys beyond [`MAX_KEYS`] since the last overflow line.
    overflow: u64,
    overflow_line: Option<Instant>,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            slots: HashMap::new(),
            overflow: 0,
            overflow_line: None,
        }
    }

    /// One event for `key` at `now`: the line to log now, if any. `full` makes the
    /// detailed line of a first event (called only then); `what` describes this event
    /// for a later summary: its address, a newline, details (errno, caller).
    pub fn event(
        &mut self,
        key: &Key,
        now: Instant,
        what: impl FnOnce() -> String,
        full: impl FnOnce() -> String,
    ) -> Option<String> {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.pending += 1;
            slot.last_what = what();
            if now.saturating_duration_since(slot.last_line) >= self.interval {
                return Some(summarise(key, slot, now));
            }
            return None;
        }
        if self.slots.len() >= MAX_KEYS {
            self.overflow += 1;
            return self.overflow_due(now);
        }
        self.slots.insert(
            key.clone(),
            Slot {
                last_line: now,
                pending: 0,
                last_what: String::new(),
            },
        );
        Some(full())
    }

    /// The summary lines that are due at `now` (events counted, no line for an
    /// interval), with their namespace's name (empty for the overflow line); forgets
    /// keys quiet for two intervals.
    pub fn flush(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let interval = self.interval;
        self.slots.retain(|key, slot| {
            let quiet = now.saturating_duration_since(slot.last_line);
            if slot.pending > 0 && quiet >= interval {
                out.push((key.0.clone(), summarise(key, slot, now)));
                return true;
            }
            slot.pending > 0 || quiet < interval * 2
        });
        if self.overflow > 0 {
            out.extend(self.overflow_due(now).map(|l| (String::new(), l)));
        }
        out.sort();
        out
    }

    fn overflow_due(&mut self, now: Instant) -> Option<String> {
        if self
            .overflow_line
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval)
        {
            return None;
        }
        self.overflow_line = Some(now);
        let n = std::mem::take(&mut self.overflow);
        Some(format!(
            "{n} more failure{} on other ports (more than {MAX_KEYS} ports and calls failing at once)",
            plural(n)
        ))
    }
}

/// Why a capture was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// As many captures as allowed in this second were made already.
    Count(u32),
    /// Captures took their share of the reader's time: the next waits until it is paid back.
    Time,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Count(n) => write!(f, "more than {n} captures this second"),
            Held::Time => write!(f, "captures used their share of the tracer's time"),
        }
    }
}

/// Bounds the captures of a port's sockets after failures (a sock_diag dump, or a unix
/// path probe): they run on the thread that drains the ring buffer, and a dump walks the
/// kernel's whole socket hash, shared by every namespace (some 30 ms per family at 100k
/// sockets on the host). A count per second alone let a flood spend all of the thread's
/// time in dumps while events waited in the ring (and were lost once it was full). So at
/// most `per_second` captures in a second, and a bucket of capture time: it fills at
/// `share` of the wall clock up to `burst`, each capture takes what it took, and none
/// starts while it is empty. A burst of failures is captured in full; a flood gets
/// `share` of the thread.
#[derive(Debug)]
pub struct CaptureBudget {
    per_second: u32,
    share: f64,
    burst: Duration,
    window: Option<(Instant, u32)>,
    /// Capture time left (negative: owed), as of `filled`.
    left: f64,
    filled: Option<Instant>,
}

impl CaptureBudget {
    /// `share` is clamped to [0.01, 1]; the bucket starts full.
    pub fn new(per_second: u32, share: f64, burst: Duration) -> Self {
        CaptureBudget {
            per_second,
            share: share.clamp(0.01, 1.0),
            burst,
            window: None,
            left: burst.as_secs_f64(),
            filled: None,
        }
    }

    /// Whether a capture may start at `now`; counts it when it may.
    pub fn start(&mut self, now: Instant) -> Result<(), Held> {
        if let Some(t) = self.filled {
            let gained = now.saturating_duration_since(t).as_secs_f64() * self.share;
            self.left = (self.left + gained).min(self.burst.as_secs_f64());
        }
        self.filled = Some(now);
        if self.left <= 0.0 {
            return Err(Held::Time);
        }
        let (since, n) = match self.window {
            Some((since, n)) if now.saturating_duration_since(since) < Duration::from_secs(1) => {
                (since, n)
            }
            _ => (now, 0),
        };
        if n >= self.per_second {
            self.window = Some((since, n));
            return Err(Held::Count(self.per_second));
        }
        self.window = Some((since, n + 1));
        Ok(())
    }

    /// A capture allowed by [`Self::start`] took `took`.
    pub fn spent(&mut self, took: Duration) {
        self.left -= took.as_secs_f64();
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The line for the events counted on `key`, and a new window.
fn summarise(key: &Key, slot: &mut Slot, now: Instant) -> String {
    let secs = now.saturating_duration_since(slot.last_line).as_secs_f64();
    let n = std::mem::take(&mut slot.pending);
    slot.last_line = now;
    let (_, kind, _, _) = key;
    let (addr, detail) = slot
        .last_what
        .split_once('\n')
        .unwrap_or((slot.last_what.as_str(), ""));
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" (last: {detail})")
    };
    if *kind == MISS {
        return format!(
            "prediction missed {n} time{} for {addr} in {secs:.1} s since the last line{detail}",
            plural(n),
        );
    }
    format!(
        "{kind}({addr}) failed {n} time{} in {secs:.1} s since the last line{detail}; the failure log and metrics count each",
        plural(n),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> Key {
        ("host".into(), "bind", Protocol::Tcp, port)
    }

    #[test]
    fn one_line_per_interval_with_the_count_since_the_last() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let mut l = LogLimiter::new(s(5));
        let what = || "0.0.0.0:8080".to_string();
        let mut lines = Vec::new();
        // 9,412 failures in the first 5 s, then 10 more at 7 s.
        for i in 0..9412u64 {
            let at = t0 + ms(i * 5000 / 9412);
            lines.extend(l.event(&key(8080), at, what, || "first, in full".into()));
            lines.extend(l.flush(at).into_iter().map(|(_, x)| x));
        }
        assert_eq!(lines, ["first, in full"]);
        let line = l.event(&key(8080), t0 + s(5), what, || unreachable!());
        let line = line.expect("a summary once the interval passed");
        assert!(
            line.starts_with("bind(0.0.0.0:8080) failed 9412 times in 5.0 s"),
            "{line}"
        );
        for _ in 0..10 {
            assert_eq!(
                l.event(&key(8080), t0 + s(7), what, || unreachable!()),
                None
            );
        }
        assert!(l.flush(t0 + s(9)).is_empty(), "not due before the interval");
        let due = l.flush(t0 + s(10));
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].0, "host");
        assert!(due[0].1.contains("failed 10 times in 5.0 s"), "{due:?}");
        // Quiet for two intervals: forgotten, the next failure is logged in full.
        assert!(l.flush(t0 + s(21)).is_empty());
        assert_eq!(
            l.event(&key(8080), t0 + s(22), what, || "full again".into()),
            Some("full again".into())
        );
    }

    #[test]
    fn keys_are_separate_and_bounded() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(1));
        let what = String::new;
        for port in 1..=u16::try_from(MAX_KEYS).unwrap() {
            assert!(l.event(&key(port), t0, what, || "full".into()).is_some());
        }
        // Past the cap: one overflow line per interval with the count.
        let first = l.event(&key(9999), t0, what, || unreachable!());
        assert!(first.is_some_and(|x| x.starts_with("1 more failure on other ports")));
        for _ in 0..99 {
            assert_eq!(l.event(&key(9998), t0, what, || unreachable!()), None);
        }
        let due = l.flush(t0 + Duration::from_secs(1));
        assert!(
            due.iter().any(|(_, x)| x.starts_with("99 more failures")),
            "{due:?}"
        );
        assert!(l.slots.len() <= MAX_KEYS);
    }

    #[test]
    fn captures_are_bounded_in_count_and_in_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // (share, per second, burst ms, [(start at ms, took ms if it ran, expected)])
        type Step = (u64, u64, Result<(), Held>);
        let cases: &[(&str, f64, u32, u64, &[Step])] = &[
            (
                "quick captures: only the count per second holds them",
                0.25,
                3,
                500,
                &[
                    (0, 1, Ok(())),
                    (1, 1, Ok(())),
                    (2, 1, Ok(())),
                    (3, 0, Err(Held::Count(3))),
                    (999, 0, Err(Held::Count(3))),
                    (1000, 1, Ok(())),
                ],
            ),
            (
                "60 ms captures: nine from the full bucket, then one per 240 ms",
                0.25,
                50,
                500,
                &[
                    (0, 60, Ok(())),
                    (60, 60, Ok(())),
                    (120, 60, Ok(())),
                    (180, 60, Ok(())),
                    (240, 60, Ok(())),
                    (300, 60, Ok(())),
                    (360, 60, Ok(())),
                    (420, 60, Ok(())),
                    // 500 - 8 * 60 + 0.25 * 480 = 140 ms left; this one takes 200.
                    (480, 200, Ok(())),
                    // -60 + 0.25 * 200 = -10 ms: still owed.
                    (680, 0, Err(Held::Time)),
                    (719, 0, Err(Held::Time)),
                    (721, 60, Ok(())),
                    (781, 0, Err(Held::Time)),
                ],
            ),
            (
                "a capture longer than the bucket: held until it is paid back",
                0.25,
                50,
                500,
                &[
                    (0, 1500, Ok(())),
                    // 500 - 1500 = -1000, back to 0 after 4 s.
                    (3999, 0, Err(Held::Time)),
                    (4001, 1, Ok(())),
                ],
            ),
            (
                "the bucket does not fill past its size",
                0.25,
                50,
                100,
                &[
                    (0, 1, Ok(())),
                    // Full at 100 ms, not 25 s: a 200 ms capture leaves it owing.
                    (100_000, 200, Ok(())),
                    (100_200, 0, Err(Held::Time)),
                ],
            ),
        ];
        for (name, share, per_second, burst, steps) in cases {
            let mut b = CaptureBudget::new(*per_second, *share, ms(*burst));
            for (at, took, want) in *steps {
                let got = b.start(t0 + ms(*at));
                assert_eq!(got, *want, "{name}: at {at} ms");
                if got.is_ok() {
                    b.spent(ms(*took));
                }
            }
        }
    }
}
