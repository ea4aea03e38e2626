//! The families of the bpf source's bound-only tracking (the reuse of its last
//! bound-only dump while the kernel counts no change).

use super::writer::Writer;
use crate::model::BoundTracking;

pub(super) fn render_tracking(w: &mut Writer, t: &BoundTracking) {
    w.family(
        "bindwatch_bound_tracking_fallbacks_total",
        "counter",
        "Polls of the bpf source that dumped the bound-only TCP sockets with sock_diag instead of reusing the last dump, by reason: start, changed (the kernel counted a change), lost (a socket mark could not be created), untracked (a reconciliation found drift), unavailable (the kernel side did not load).",
    );
    for (reason, n) in BoundTracking::REASONS.iter().zip(t.fallbacks) {
        w.sample(
            "bindwatch_bound_tracking_fallbacks_total",
            &[("reason", reason)],
            n as f64,
        );
    }
    w.family(
        "bindwatch_bound_tracking_reconciliations_total",
        "counter",
        "Polls of the bpf source that could reuse the last bound-only dump but dumped to compare (every 60 s).",
    );
    w.sample(
        "bindwatch_bound_tracking_reconciliations_total",
        &[],
        t.reconciliations as f64,
    );
    w.family(
        "bindwatch_bound_tracking_drift_total",
        "counter",
        "Bound-only sockets a reconciliation found differing from the reused set: missed (the kernel had them, the set did not), extra (the reverse).",
    );
    w.sample(
        "bindwatch_bound_tracking_drift_total",
        &[("direction", "missed")],
        t.missed as f64,
    );
    w.sample(
        "bindwatch_bound_tracking_drift_total",
        &[("direction", "extra")],
        t.extra as f64,
    );
}
