//! The CPU budget: how often the whole socket table may be walked.

/// Spaces out walks of the whole socket table so bindwatch's average CPU stays
/// within `--poll.cpu-budget` (a fraction of one core). Listeners are read every
/// poll (a LISTEN-only dump costs about a millisecond even at a million sockets);
/// the table walk runs when the CPU saved up since the last one pays for it, and
/// at least every [`CpuBudget::MAX_TABLE_AGE`] so no view goes stale for good.
/// Pure: callers feed it wall time and CPU time.
#[derive(Debug, Clone)]
pub struct CpuBudget {
    /// Fraction of one core; 0 or less disables the budget (walk every poll).
    pub fraction: f64,
    /// CPU seconds saved up (may go negative after an expensive walk).
    tokens: f64,
    /// CPU seconds the last table walk itself cost.
    walk_cost: Option<f64>,
    /// Wall seconds since the last walk.
    since_walk: f64,
}

impl CpuBudget {
    /// The table is walked at least this often, budget or not (at a million
    /// sockets, one walk per 5 minutes is 0.4% of a core).
    pub const MAX_TABLE_AGE: f64 = 300.0;

    pub fn new(fraction: f64) -> Self {
        CpuBudget {
            fraction,
            tokens: 0.0,
            walk_cost: None,
            since_walk: 0.0,
        }
    }

    /// Adds the allowance for `elapsed` wall seconds; should the table be walked now?
    pub fn tick(&mut self, elapsed: f64) -> bool {
        self.since_walk += elapsed;
        if self.fraction <= 0.0 {
            return true;
        }
        let Some(cost) = self.walk_cost else {
            return true; // never walked: the first poll must
        };
        // Saving up beyond one walk (plus a minute of allowance) would allow bursts.
        let cap = cost + self.fraction * 60.0;
        self.tokens = (self.tokens + self.fraction * elapsed).min(cap);
        self.tokens >= cost || self.since_walk >= Self::MAX_TABLE_AGE
    }

    /// Charges the CPU one poll used in all; `walk_cpu` is what its table walk
    /// cost, when it walked.
    pub fn charge(&mut self, poll_cpu: f64, walk_cpu: Option<f64>) {
        if let Some(w) = walk_cpu {
            self.walk_cost = Some(w);
            self.since_walk = 0.0;
        }
        if self.fraction > 0.0 {
            self.tokens -= poll_cpu;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_spaces_out_expensive_walks() {
        // A walk costs 1.2 s CPU; 1% of a core; a poll every 5 s.
        let mut b = CpuBudget::new(0.01);
        assert!(b.tick(0.0), "the first poll walks");
        b.charge(1.2, Some(1.19));
        let mut walks = 0;
        let mut cpu = 1.2;
        for _ in 0..(3600 / 5) {
            let w = b.tick(5.0);
            let c = if w { 1.2 } else { 0.002 };
            b.charge(c, w.then_some(1.19));
            cpu += c;
            walks += usize::from(w);
        }
        // Over an hour: about one walk every 1.2 / 0.01 = 120 s, CPU within budget.
        assert!((25..=31).contains(&walks), "walks: {walks}");
        assert!(cpu / 3600.0 <= 0.0101, "average CPU {:.4}", cpu / 3600.0);
    }

    #[test]
    fn cheap_tables_walk_every_poll_and_zero_disables() {
        let mut b = CpuBudget::new(0.01);
        assert!(b.tick(0.0));
        b.charge(0.001, Some(0.0005));
        for _ in 0..100 {
            assert!(b.tick(5.0), "a 1 ms walk fits in 50 ms of allowance");
            b.charge(0.001, Some(0.0005));
        }
        let mut off = CpuBudget::new(0.0);
        for _ in 0..10 {
            assert!(off.tick(5.0));
            off.charge(9.0, Some(9.0));
        }
    }

    #[test]
    fn overhead_above_budget_still_walks_within_max_age() {
        // Each poll costs more than the budget allows even without a walk.
        let mut b = CpuBudget::new(0.001);
        assert!(b.tick(0.0));
        b.charge(0.05, Some(0.01));
        let mut since = 0.0;
        for _ in 0..1000 {
            let w = b.tick(1.0);
            since = if w { 0.0 } else { since + 1.0 };
            assert!(
                since < CpuBudget::MAX_TABLE_AGE,
                "the table never gets older than the bound"
            );
            b.charge(0.05, w.then_some(0.01));
        }
    }
}
