//! Dates of Unix times in UTC, for logs, the failure log and the landing page, written
//! by `humantime`. Its formatter panics on a time before 1970 or after 9999 (a clock set
//! wrong, a hostile timestamp); these wrappers clamp into that range first. Pure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second humantime can write (9999-12-31T23:59:59Z).
const LAST: Duration = Duration::from_secs(253_402_300_799);

fn clamped(t: SystemTime) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + since.min(LAST)
}

/// RFC 3339 in UTC with milliseconds (`2026-12-01T21:22:41.123Z`), as Go's logfmt
/// loggers write `ts`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(clamped(t)).to_string()
}

/// `2026-12-01 21:22:41 UTC` of `secs` after the epoch, to the second.
pub fn utc_seconds(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    let t = clamped(UNIX_EPOCH + Duration::from_secs(secs.min(LAST.as_secs_f64()) as u64));
    let iso = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-12-01T21:22:41Z -> 2026-12-01 21:22:41 UTC
    format!("{} UTC", iso.trim_end_matches('Z').replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (1_764_633_761, "2025-12-02T00:02:41.000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000Z"),
            (u64::MAX / 4, "9999-12-31T23:59:59.000Z"),
        ] {
            assert_eq!(rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs)), want);
        }
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_millis(1_500)),
            "1970-01-01T00:00:01.500Z"
        );
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn seconds() {
        for (secs, want) in [
            (0.0, "1970-01-01 00:00:00 UTC"),
            (951_782_400.5, "2000-02-29 00:00:00 UTC"),
            (-3.0, "1970-01-01 00:00:00 UTC"),
            (f64::NAN, "1970-01-01 00:00:00 UTC"),
            (f64::INFINITY, "1970-01-01 00:00:00 UTC"),
            (1e300, "9999-12-31 23:59:59 UTC"),
        ] {
            assert_eq!(utc_seconds(secs), want, "{secs}");
        }
    }
}
