//! The spacing of polls: sooner after leftovers no remembered listener explains.

use std::time::Duration;

/// Spacing of polls: a poll that found leftovers no remembered listener explains
/// (a listener may have come and gone unseen) is followed by a sooner one, so the
/// next short-lived listener is more likely seen. Bounded: at most
/// [`EarlyPolls::MAX_STREAK`] early polls in a row, each at a quarter of the
/// interval (at least [`EarlyPolls::MIN_WAIT`]); the table walk of an early poll
/// still waits for the CPU budget ([`super::budget::CpuBudget`]), only listeners are read at once.
/// Pure.
#[derive(Debug, Clone, Default)]
pub struct EarlyPolls {
    streak: u32,
}

impl EarlyPolls {
    pub const MAX_STREAK: u32 = 4;
    pub const MIN_WAIT: Duration = Duration::from_millis(250);

    /// How long to wait before the next poll.
    pub fn next_wait(&mut self, interval: Duration, wanted: bool) -> Duration {
        if wanted && self.streak < Self::MAX_STREAK {
            self.streak += 1;
            (interval / 4).max(Self::MIN_WAIT).min(interval)
        } else {
            self.streak = 0;
            interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_polls_are_sooner_and_bounded() {
        let five = Duration::from_secs(5);
        let mut e = EarlyPolls::default();
        assert_eq!(e.next_wait(five, false), five);
        let waits: Vec<Duration> = (0..6).map(|_| e.next_wait(five, true)).collect();
        let quarter = Duration::from_millis(1250);
        assert_eq!(waits, [quarter, quarter, quarter, quarter, five, quarter]);
        assert_eq!(e.next_wait(five, false), five);
        // Short intervals: never below the floor, never above the interval.
        let mut e = EarlyPolls::default();
        assert_eq!(
            e.next_wait(Duration::from_millis(500), true),
            EarlyPolls::MIN_WAIT
        );
        assert_eq!(
            e.next_wait(Duration::from_millis(100), true),
            Duration::from_millis(100)
        );
    }
}
