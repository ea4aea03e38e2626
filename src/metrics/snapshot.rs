//! The families of one snapshot: views, source, capabilities, socket counts,
//! listeners, sockets per port of interest, ephemeral ports and the cumulative
//! totals (the rebind families are in `rebind`). In exposition order.

use std::collections::{BTreeMap, BTreeSet};

use super::writer::Writer;
use super::{b, rebind::render_rebind, unix_seconds};
use crate::model::{Protocol, Snapshot, SourceKind, StateCounts};

/// Every family of one snapshot, in exposition order.
pub(super) fn render_snapshot(w: &mut Writer, s: &Snapshot) {
    render_views(w, s);
    render_socket_counts(w, s);
    render_listeners(w, s);
    render_port_sockets(w, s);
    render_rebind(w, s);
    render_ports(w, s);
    super::unix::render_unix(w, s);
    render_ephemeral(w, s);
    render_totals(w, s);
}

/// When each view was read, the source in use, and what bindwatch achieved.
fn render_views(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_view_timestamp_seconds",
        "gauge",
        "When each view was last read: listeners (every poll) and table (the walk of the whole TCP table: counts, sockets on ports of interest, ephemeral buckets; spaced out by --poll.cpu-budget).",
    );
    w.sample(
        "bindwatch_view_timestamp_seconds",
        &[("view", "listeners")],
        unix_seconds(s.taken_at),
    );
    w.sample(
        "bindwatch_view_timestamp_seconds",
        &[("view", "table")],
        unix_seconds(s.table_taken_at),
    );
    w.family(
        "bindwatch_source_active",
        "gauge",
        "1 for the socket source in use (the bpf socket iterator, netlink sock_diag, or the /proc/net fallback).",
    );
    for k in SourceKind::ALL {
        w.sample(
            "bindwatch_source_active",
            &[("source", k.as_str())],
            b(s.source == k),
        );
    }
    w.family(
        "bindwatch_capability",
        "gauge",
        "1 when bindwatch really achieved a feature: owners (no /proc/PID/fd listing or link was refused in the last scan), socket_flags (pidfd_getfd of owners' sockets), bpf (the socket iterator is the source in use), socket_timers (TIME_WAIT and orphan timers are known: the bpf source needs the kernel's HZ).",
    );
    w.sample(
        "bindwatch_capability",
        &[("capability", "owners")],
        b(s.capabilities.owners),
    );
    w.sample(
        "bindwatch_capability",
        &[("capability", "socket_flags")],
        b(s.capabilities.socket_flags),
    );
    w.sample(
        "bindwatch_capability",
        &[("capability", "bpf")],
        b(s.source == SourceKind::Bpf),
    );
    w.sample(
        "bindwatch_capability",
        &[("capability", "socket_timers")],
        b(s.capabilities.socket_timers),
    );
}

/// `bindwatch_sockets`: every (protocol, family, state), zeros included.
fn render_socket_counts(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_sockets",
        "gauge",
        "Sockets in the network namespace by protocol, family and state.",
    );
    for ((p, f, st), n) in socket_counts(&s.counts) {
        w.sample(
            "bindwatch_sockets",
            &[
                ("protocol", p.as_str()),
                ("family", f.as_str()),
                ("state", st),
            ],
            n as f64,
        );
    }
}

/// `bindwatch_listener_info`: one series per listening endpoint.
fn render_listeners(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_listener_info",
        "gauge",
        "One series per listening endpoint with its owner and flags (true, false or unknown).",
    );
    let mut seen = BTreeSet::new();
    for l in &s.listeners {
        let sock = &l.socket;
        let addr = sock.local.ip().to_string();
        let port = sock.local.port().to_string();
        let (process, user) = match &l.owner {
            Some(o) => (o.process.as_str(), o.user.as_str()),
            None => ("unknown", "unknown"),
        };
        let labels = [
            ("protocol", sock.protocol.as_str()),
            ("family", sock.family().as_str()),
            ("address", addr.as_str()),
            ("port", port.as_str()),
            ("process", process),
            ("user", user),
            ("reuseaddr", sock.flags.reuseaddr.as_str()),
            ("reuseport", sock.flags.reuseport.as_str()),
        ];
        // SO_REUSEPORT groups have several sockets per endpoint: one series.
        let key: Vec<String> = labels.iter().map(|(_, v)| v.to_string()).collect();
        if seen.insert(key) {
            w.sample("bindwatch_listener_info", &labels, 1.0);
        }
    }
}

/// `bindwatch_port_sockets`: sockets per port of interest and state.
fn render_port_sockets(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_port_sockets",
        "gauge",
        "Sockets whose local port is a port of interest (listening, recently listening or watched), by state.",
    );
    let mut per_port: BTreeMap<(Protocol, u16, &str), u64> = BTreeMap::new();
    for sock in &s.port_sockets {
        *per_port
            .entry((sock.protocol, sock.local.port(), sock.state_label()))
            .or_default() += u64::from(sock.count);
    }
    for ((p, port, st), n) in &per_port {
        let port = port.to_string();
        w.sample(
            "bindwatch_port_sockets",
            &[("protocol", p.as_str()), ("port", &port), ("state", st)],
            *n as f64,
        );
    }
}

/// Per port of interest: in the ephemeral range; per watched service: its status.
fn render_ports(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_port_in_ephemeral_range",
        "gauge",
        "1 when a listening or watched port lies inside net.ipv4.ip_local_port_range and is not reserved.",
    );
    for (p, port) in &s.ports {
        let ps = port.to_string();
        w.sample(
            "bindwatch_port_in_ephemeral_range",
            &[("protocol", p.as_str()), ("port", &ps)],
            b(s.allocation.is_ephemeral(*port)),
        );
    }
    w.family(
        "bindwatch_watched_port_status",
        "gauge",
        "State set per watched service (--config.file): 1 on the current status among ok, missing, foreign_owner, blocked, stolen.",
    );
    for ws in &s.watched {
        let port = ws.port.to_string();
        for st in crate::conflict::Status::ALL {
            w.sample(
                "bindwatch_watched_port_status",
                &[
                    ("name", &ws.name),
                    ("protocol", ws.protocol.as_str()),
                    ("port", &port),
                    ("status", st.as_str()),
                ],
                b(ws.status == st),
            );
        }
    }
}

/// The fullest ephemeral buckets and the size of the range.
fn render_ephemeral(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_ephemeral_ports_used_ratio",
        "gauge",
        "The fullest source-address -> destination buckets (rank 1 = fullest) as a fraction of the usable ephemeral port range.",
    );
    let size = f64::from(s.allocation.size().max(1));
    for (i, (_, n)) in s.ephemeral_top.iter().enumerate() {
        let rank = (i + 1).to_string();
        w.sample(
            "bindwatch_ephemeral_ports_used_ratio",
            &[("rank", &rank)],
            f64::from(*n) / size,
        );
    }
    w.family(
        "bindwatch_ephemeral_port_range_size",
        "gauge",
        "Ports in net.ipv4.ip_local_port_range minus ip_local_reserved_ports.",
    );
    w.sample("bindwatch_ephemeral_port_range_size", &[], size);
}

/// Cumulative counters of what a poll left out or could not explain.
fn render_totals(w: &mut Writer, s: &Snapshot) {
    w.family(
        "bindwatch_ports_dropped_total",
        "counter",
        "Ports of interest left out of per-port series by --ports.max.",
    );
    w.sample(
        "bindwatch_ports_dropped_total",
        &[],
        s.ports_dropped_total as f64,
    );
    w.family(
        "bindwatch_memory_unexplained_leftovers_total",
        "counter",
        "Leftovers (TIME_WAIT, FIN_WAIT2) on remembered ports that no remembered listener explains: a listener may have come and gone between polls. Their flags stay unknown.",
    );
    w.sample(
        "bindwatch_memory_unexplained_leftovers_total",
        &[],
        s.memory_unexplained_total as f64,
    );
}

/// Counts of one protocol and family, with every known state present (0 if none).
fn state_labels(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Tcp => &[
            "established",
            "syn_sent",
            "syn_recv",
            "fin_wait1",
            "fin_wait2",
            "time_wait",
            "close",
            "close_wait",
            "last_ack",
            "listen",
            "closing",
            "new_syn_recv",
            "bound_inactive",
        ],
        Protocol::Udp => &crate::model::UDP_STATE_LABELS,
    }
}

/// `bindwatch_sockets` values: (protocol, family, state label) -> count, with zeros.
fn socket_counts(
    counts: &StateCounts,
) -> BTreeMap<(Protocol, crate::model::Family, &'static str), u64> {
    let mut out = BTreeMap::new();
    for p in Protocol::ALL {
        for f in crate::model::Family::ALL {
            for l in state_labels(p) {
                out.insert((p, f, *l), 0);
            }
        }
    }
    for (&(p, f, s), &n) in counts {
        *out.entry((p, f, s.label(p))).or_default() += n;
    }
    out
}
