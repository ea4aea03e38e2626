//! Rendering a poll once, in both formats, and publishing it; the failure tracer
//! gets the poll's snapshots first.

use bytes::Bytes;

use super::poll::LoopState;
use super::{Latest, Published, StateSink};
use crate::metrics::{self, Extras, SelfMetrics};
use crate::model::Snapshot;

/// What a scrape shows beside the snapshots: the last success, CPU and its budget,
/// the config's reload result, the tracer's counters (the server adds its own).
pub(super) fn extras(st: &LoopState, bad_lines: u64) -> Extras {
    Extras {
        last_success_unix: st
            .last
            .first()
            .map(|(_, s)| metrics::unix_seconds(s.taken_at)),
        procfs_bad_lines: bad_lines,
        config_reload_ok: st.config.as_ref().map(|c| c.last_ok),
        netns_poll_seconds: st.netns_poll_seconds.clone(),
        poll_cpu_seconds_total: st.poll_cpu_total,
        cpu_budget: st.budget.fraction,
        bind_events: st.events.as_ref().map(|e| e.counters()),
        state_file_stopped: st.state_sink.as_ref().map(StateSink::stopped),
        bound_tracking: crate::collect::bound_tracking(),
    }
}

/// Hands the last snapshots to the failure tracer (its ports map follows at once),
/// then renders them once (both formats; the server makes gzip and the landing page
/// when first asked for) and publishes them: once a poll is published, the tracer
/// already judges against it.
pub(super) fn publish(st: &LoopState, selfm: &SelfMetrics, latest: &Latest, extras: &Extras) {
    if let Some(events) = &st.events {
        events.inputs().set(&st.last);
    }
    let snaps: Vec<(Option<&str>, &Snapshot)> = st
        .last
        .iter()
        .map(|(n, s)| (n.as_deref(), s.as_ref()))
        .collect();
    let exp = metrics::render_all(&snaps, selfm, extras);
    latest.set(Published::new(
        Bytes::from(exp.text),
        Bytes::from(exp.openmetrics),
        st.last_success,
        st.last.clone(),
    ));
}
