//! The unix-socket families of a snapshot: counts by type and state (the whole
//! namespace, never one series per socket), and per watched unix service its status
//! and, while its listener listens, the accept queue and its limit.

use super::b;
use super::writer::Writer;
use crate::model::{Snapshot, Status};

pub(super) fn render_unix(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_unix_sockets",
        "gauge",
        "Unix-domain sockets in the network namespace by type (stream, dgram, seqpacket) and state (listen, connected, connecting, unconnected).",
    );
    if let Some(counts) = &s.unix.counts {
        for ((t, st), n) in counts {
            w.sample(
                "bindwatch_unix_sockets",
                &[("type", t.as_str()), ("state", st.as_str())],
                *n as f64,
            );
        }
    }
    w.family(
        "bindwatch_watched_unix_status",
        "gauge",
        "State set per watched unix service (unix: in --config.file): 1 on the current status among ok, missing, foreign_owner, blocked (a stale socket file or a file that is not a socket would fail the daemon's bind), stolen.",
    );
    for ws in &s.unix.watched {
        for st in Status::ALL {
            w.sample(
                "bindwatch_watched_unix_status",
                &[
                    ("name", &ws.name),
                    ("address", &ws.address),
                    ("status", st.as_str()),
                ],
                b(ws.status == st),
            );
        }
    }
    w.family(
        "bindwatch_watched_unix_accept_queue",
        "gauge",
        "Connections waiting in the accept queue of a watched unix service's listener.",
    );
    for ws in &s.unix.watched {
        if let Some(q) = ws.accept_queue {
            w.sample(
                "bindwatch_watched_unix_accept_queue",
                &[("name", &ws.name), ("address", &ws.address)],
                f64::from(q),
            );
        }
    }
    w.family(
        "bindwatch_watched_unix_accept_queue_limit",
        "gauge",
        "The accept queue's limit (the listen() backlog) of a watched unix service's listener.",
    );
    for ws in &s.unix.watched {
        if let Some(q) = ws.accept_queue_limit {
            w.sample(
                "bindwatch_watched_unix_accept_queue_limit",
                &[("name", &ws.name), ("address", &ws.address)],
                f64::from(q),
            );
        }
    }
}
