//! When a poll of the bpf source may reuse its last sock_diag dump of the bound-only
//! TCP sockets, and when it must dump again (pure: no I/O, time and counters are
//! passed in).
//!
//! The kernel side (`source::boundtrack`) counts every event that can change the
//! bound-only set or what a dump reports of one of its sockets. A dump is reused while
//! that count stands still and the dump is *settled*: the count did not move between
//! the dump before it and it, so every event it reflects was counted at least one poll
//! before it was taken (the tracepoints fire just before the change they report, which
//! has landed by then). Otherwise the poll dumps, counted by reason:
//! - `start`: the first poll;
//! - `changed`: the count moved since the last dump, or that dump is not settled;
//! - `lost`: a socket mark could not be created in the kernel, so a destruction may
//!   go uncounted: every poll dumps from then on;
//! - `untracked`: a reconciliation found the reused set differing from the kernel's
//!   (a change no event reported): every poll dumps until two quiet dumps in a row
//!   agree;
//! - `unavailable`: the kernel side did not load (decided by the caller).
//!
//! Every `reconcile_every` a poll that could reuse the set dumps too and compares: the
//! dump's sockets the set did not have are `missed`, the set's the dump did not find
//! `extra` (both drift, counted, and either makes the set untrusted).

use std::collections::HashSet;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How often a poll that could reuse the last dump dumps anyway, by default.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// Why a poll dumped instead of reusing the last dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Start,
    Changed,
    Lost,
    Untracked,
    Unavailable,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Start,
        Reason::Changed,
        Reason::Lost,
        Reason::Untracked,
        Reason::Unavailable,
    ];

    /// The `reason` label (docs/contract.md).
    pub fn label(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Changed => "changed",
            Reason::Lost => "lost",
            Reason::Untracked => "untracked",
            Reason::Unavailable => "unavailable",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What one poll does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The poll dumps and hands the dump on, for this reason.
    pub fallback: Option<Reason>,
    /// A scheduled reconciliation: the poll dumps, compares, and hands the dump on.
    pub reconcile: bool,
}

impl Plan {
    /// Whether this poll dumps (else it reuses the last dump).
    pub fn dumps(&self) -> bool {
        self.fallback.is_some() || self.reconcile
    }
}

/// The drift a dump's comparison found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drift {
    pub missed: u64,
    pub extra: u64,
}

/// The trust state of one table's last dump.
#[derive(Debug, Clone)]
pub struct Policy {
    reconcile_every: Duration,
    started: bool,
    /// The change count read just before the last dump.
    dumped_at: Option<u64>,
    /// The last dump was settled (see the module docs).
    settled: bool,
    untracked: bool,
    last_reconcile: Option<Instant>,
}

impl Policy {
    pub fn new(reconcile_every: Duration) -> Self {
        Policy {
            reconcile_every,
            started: false,
            dumped_at: None,
            settled: false,
            untracked: false,
            last_reconcile: None,
        }
    }

    /// Decides a poll at `now`, the kernel's change count being `changes` and its
    /// lost marks `lost`.
    pub fn plan(&mut self, now: Instant, changes: u64, lost: u64) -> Plan {
        let fallback = if !self.started {
            self.started = true;
            self.last_reconcile = Some(now);
            Some(Reason::Start)
        } else if lost > 0 {
            Some(Reason::Lost)
        } else if self.untracked {
            Some(Reason::Untracked)
        } else if self.dumped_at != Some(changes) || !self.settled {
            Some(Reason::Changed)
        } else {
            None
        };
        let due = self
            .last_reconcile
            .is_none_or(|t| now.saturating_duration_since(t) >= self.reconcile_every);
        let reconcile = fallback.is_none() && due;
        Plan {
            fallback,
            reconcile,
        }
    }

    /// Records the dump of a poll planned as `plan`: the change count read just
    /// before it (`before`) and just after it (`after`), the set it replaces
    /// (`reused`) and its own (`dumped`), as comparable keys.
    pub fn settle<K: Eq + Hash>(
        &mut self,
        plan: Plan,
        now: Instant,
        before: u64,
        after: u64,
        reused: &HashSet<K>,
        dumped: &HashSet<K>,
    ) -> Drift {
        // Nothing counted since the last dump's read, nor during this dump: the two
        // sets should be the same.
        let quiet = self.dumped_at == Some(before) && before == after;
        let mut drift = Drift::default();
        if plan.reconcile {
            self.last_reconcile = Some(now);
            if quiet {
                drift.missed = dumped.difference(reused).count() as u64;
                drift.extra = reused.difference(dumped).count() as u64;
                self.untracked = drift != Drift::default();
            }
        } else if plan.fallback == Some(Reason::Untracked) && quiet && self.settled {
            self.untracked = reused != dumped;
        }
        self.settled = self.dumped_at == Some(before);
        self.dumped_at = Some(before);
        drift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(c: &[u64]) -> HashSet<u64> {
        c.iter().copied().collect()
    }

    const P: Duration = Duration::from_secs(60);

    /// Runs `plan` and, when it dumps, `settle` with the count unchanged during the
    /// dump and equal sets.
    fn step(p: &mut Policy, at: Instant, changes: u64, lost: u64) -> Plan {
        let plan = p.plan(at, changes, lost);
        if plan.dumps() {
            p.settle(plan, at, changes, changes, &set(&[1]), &set(&[1]));
        }
        plan
    }

    #[test]
    fn reuses_only_a_settled_dump_with_the_count_unchanged() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut p = Policy::new(P);
        // (seconds, change count, lost, expected fallback, expected reconcile)
        let table: &[(u64, u64, u64, Option<Reason>, bool)] = &[
            (0, 5, 0, Some(Reason::Start), false),
            // The start dump is not settled yet: the next poll dumps again.
            (1, 5, 0, Some(Reason::Changed), false),
            (2, 5, 0, None, false),
            (3, 5, 0, None, false),
            (4, 6, 0, Some(Reason::Changed), false),
            (5, 6, 0, Some(Reason::Changed), false),
            (6, 6, 0, None, false),
            // Moving again before the settling dump: two more dumps.
            (7, 7, 0, Some(Reason::Changed), false),
            (8, 8, 0, Some(Reason::Changed), false),
            (9, 8, 0, Some(Reason::Changed), false),
            (10, 8, 0, None, false),
            (59, 8, 0, None, false),
            (60, 8, 0, None, true),
            (61, 8, 0, None, false),
            // A changed poll when the reconciliation is due takes its place; the
            // reconciliation runs at the first poll that could reuse.
            (120, 9, 0, Some(Reason::Changed), false),
            (121, 9, 0, Some(Reason::Changed), false),
            (122, 9, 0, None, true),
            (123, 9, 0, None, false),
            // A lost mark: every poll dumps from then on.
            (124, 9, 1, Some(Reason::Lost), false),
            (125, 9, 1, Some(Reason::Lost), false),
        ];
        for &(at, changes, lost, fallback, reconcile) in table {
            let plan = step(&mut p, s(at), changes, lost);
            assert_eq!(
                plan,
                Plan {
                    fallback,
                    reconcile
                },
                "at {at}s, count {changes}, lost {lost}"
            );
        }
    }

    #[test]
    fn a_count_that_moves_during_a_dump_leaves_it_unsettled() {
        let t0 = Instant::now();
        let mut p = Policy::new(P);
        step(&mut p, t0, 1, 0);
        step(&mut p, t0, 1, 0);
        assert_eq!(p.plan(t0, 1, 0).fallback, None);
        let plan = p.plan(t0, 2, 0);
        assert_eq!(plan.fallback, Some(Reason::Changed));
        p.settle(plan, t0, 2, 3, &set(&[]), &set(&[]));
        assert_eq!(p.plan(t0, 3, 0).fallback, Some(Reason::Changed));
    }

    #[test]
    fn a_reconciliation_counts_drift_and_distrusts_until_two_quiet_dumps_agree() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        // (reused, dumped, missed, extra)
        let table: &[(&[u64], &[u64], u64, u64)] = &[
            (&[1, 2], &[1, 2], 0, 0),
            (&[1], &[1, 2], 1, 0),
            (&[1, 2], &[1], 0, 1),
            (&[5, 6], &[7], 1, 2),
        ];
        for &(reused, dumped, missed, extra) in table {
            let mut p = Policy::new(P);
            step(&mut p, s(0), 4, 0);
            step(&mut p, s(1), 4, 0);
            let plan = p.plan(s(61), 4, 0);
            assert!(plan.reconcile);
            let d = p.settle(plan, s(61), 4, 4, &set(reused), &set(dumped));
            assert_eq!(d, Drift { missed, extra }, "{reused:?} {dumped:?}");
            let next = p.plan(s(62), 4, 0);
            if d == Drift::default() {
                assert_eq!(next.fallback, None);
                continue;
            }
            assert_eq!(next.fallback, Some(Reason::Untracked));
            // Quiet dumps that still differ keep it untrusted ...
            p.settle(next, s(62), 4, 4, &set(&[1]), &set(&[2]));
            assert_eq!(p.plan(s(63), 4, 0).fallback, Some(Reason::Untracked));
            // ... as does a dump the count moved during, even if equal ...
            let plan = p.plan(s(63), 4, 0);
            p.settle(plan, s(63), 4, 5, &set(&[2]), &set(&[2]));
            assert_eq!(p.plan(s(64), 5, 0).fallback, Some(Reason::Untracked));
            // ... until a quiet dump after a settled one agrees with it: the dump at
            // 64 follows the raced one (not quiet), the one at 65 is quiet but its
            // predecessor unsettled, the one at 66 agrees.
            for at in 64..=66 {
                let plan = p.plan(s(at), 5, 0);
                assert_eq!(plan.fallback, Some(Reason::Untracked), "at {at}");
                p.settle(plan, s(at), 5, 5, &set(&[2]), &set(&[2]));
            }
            assert_eq!(p.plan(s(67), 5, 0).fallback, None);
        }
    }

    #[test]
    fn a_reconciliation_raced_by_a_change_counts_no_drift() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut p = Policy::new(P);
        step(&mut p, s(0), 1, 0);
        step(&mut p, s(1), 1, 0);
        let plan = p.plan(s(61), 1, 0);
        assert!(plan.reconcile);
        let d = p.settle(plan, s(61), 1, 2, &set(&[1]), &set(&[2]));
        assert_eq!(d, Drift::default());
        assert_eq!(p.plan(s(62), 2, 0).fallback, Some(Reason::Changed));
    }

    #[test]
    fn labels_are_the_contracts() {
        let labels: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            crate::model::BoundTracking::REASONS,
            "the model's label order"
        );
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
