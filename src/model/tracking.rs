//! The bound-only tracking counters, as the metrics show them.

/// Counters of the bpf source's bound-only tracking, process-wide (one change counter
/// in the kernel serves every namespace's table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoundTracking {
    /// Polls that dumped the bound-only sockets instead of reusing the last dump, by
    /// reason, in the order of [`BoundTracking::REASONS`].
    pub fallbacks: [u64; 5],
    /// Scheduled dumps beside a reused set, compared with it.
    pub reconciliations: u64,
    /// Sockets a reconciliation's dump found that the reused set did not have.
    pub missed: u64,
    /// Sockets of the reused set a reconciliation's dump did not find.
    pub extra: u64,
}

impl BoundTracking {
    /// The `reason` labels of [`BoundTracking::fallbacks`], in order.
    pub const REASONS: [&'static str; 5] = ["start", "changed", "lost", "untracked", "unavailable"];
}
