//! Folding a busy port's sockets that differ only in their peer into one entry
//! with a count, so the agent's memory stays flat however many connections a port
//! has. Called once per socket on a port of interest by the table walk: the
//! functions the walk calls are `#[inline]` so they inline across the module.

use crate::model::{Socket, State};

/// Folds the sockets of a busy port that differ only in their peer (and so are
/// judged alike by the bind rules) into one entry with a count, so the agent's
/// memory stays flat however many connections a port has. Listeners, and sockets
/// with a file on ports without a live listener (possible thieves, forked
/// children), stay individual up to `individual_max` so their owners can be read.
///
/// Call [`Folder::finish`] after the last push: counts gather in the slots first.
pub(super) struct Folder {
    enabled: bool,
    individual_left: usize,
    index: crate::fasthash::FxHashMap<FoldKey, usize>,
    /// Per local port, its row in `slots` (0: none yet).
    rows: Vec<u16>,
    /// Per (row, common state): the class and entry the last such socket folded
    /// into, and the sockets gathered for it since. Most sockets of a busy port in
    /// one state share a class, so a compare here replaces the hash look-up; keyed
    /// by state because a busy port's ESTABLISHED and TIME_WAIT sockets interleave
    /// in the kernel's hash. One cache line per slot, prefetched by the walk; the
    /// rare states go to the hash directly, which keeps a row at 256 bytes.
    slots: Vec<[Slot; SLOTTED]>,
}

/// States with a slot: where a busy port's sockets pile up.
const SLOTTED: usize = 4;

#[inline]
fn slot_of(state: State) -> Option<usize> {
    match state {
        State::Established => Some(0),
        State::TimeWait => Some(1),
        State::CloseWait => Some(2),
        State::FinWait2 => Some(3),
        _ => None,
    }
}

/// What makes two sockets of one port and state fold together, packed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SlotClass {
    /// The local address; IPv4 in the first word.
    ip: [u32; 4],
    uid: u32,
    /// `u32::MAX` where the source cannot tell.
    ifindex: u32,
    /// Bit 0: IPv6; bits 1-2: V6ONLY as `Tri`; bit 3: has a file.
    flags: u8,
}

impl SlotClass {
    #[inline]
    fn of(s: &Socket) -> SlotClass {
        let (ip, v6) = match s.local.ip() {
            std::net::IpAddr::V4(a) => ([u32::from(a), 0, 0, 0], 0),
            std::net::IpAddr::V6(a) => {
                let o = a.octets();
                let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                ([w(0), w(4), w(8), w(12)], 1)
            }
        };
        let v6only = match s.v6only {
            crate::model::Tri::True => 1,
            crate::model::Tri::False => 2,
            crate::model::Tri::Unknown => 3,
        };
        SlotClass {
            ip,
            uid: s.uid,
            ifindex: s.ifindex.unwrap_or(u32::MAX),
            flags: v6 | v6only << 1 | u8::from(s.inode != 0) << 3,
        }
    }
}

#[derive(Clone, Copy)]
#[repr(align(64))]
struct Slot {
    class: SlotClass,
    /// 1 + the index of the entry (0: empty slot).
    entry: u32,
    /// Sockets folded here and not yet added to the entry, and their longest timer.
    pending: u32,
    pending_expires: Option<u64>,
}

const EMPTY_SLOT: Slot = Slot {
    class: SlotClass {
        ip: [0; 4],
        uid: 0,
        ifindex: 0,
        flags: 0,
    },
    entry: 0,
    pending: 0,
    pending_expires: None,
};

#[derive(Hash, PartialEq, Eq)]
struct FoldKey {
    state: State,
    local: std::net::SocketAddr,
    uid: u32,
    ifindex: Option<u32>,
    v6only: crate::model::Tri,
    has_file: bool,
}

impl Folder {
    pub(super) fn new(enabled: bool, individual_max: usize) -> Self {
        Folder {
            enabled,
            individual_left: individual_max,
            index: Default::default(),
            rows: if enabled { vec![0; 65536] } else { Vec::new() },
            // Row 0 is the "none yet" sentinel.
            slots: vec![[EMPTY_SLOT; SLOTTED]],
        }
    }

    /// Starts loading the slot `push(s)` will touch.
    #[inline]
    pub(super) fn prefetch(&self, s: &Socket) {
        let row = self.rows.get(usize::from(s.local.port())).copied();
        if let (Some(row @ 1..), Some(st)) = (row, slot_of(s.state)) {
            crate::fasthash::prefetch(&self.slots[usize::from(row)][st]);
        }
    }

    #[inline]
    fn flush(slot: &mut Slot, out: &mut [Socket]) {
        if slot.entry != 0 && slot.pending != 0 {
            let e = &mut out[slot.entry as usize - 1];
            e.count += slot.pending;
            e.expires_ms = e.expires_ms.max(slot.pending_expires);
        }
        slot.pending = 0;
        slot.pending_expires = None;
    }

    #[inline]
    pub(super) fn push(&mut self, s: &Socket, port_has_listener: bool, out: &mut Vec<Socket>) {
        if !self.enabled || s.state == State::Listen {
            out.push(s.clone());
            return;
        }
        if s.inode != 0 && !port_has_listener && self.individual_left > 0 {
            self.individual_left -= 1;
            out.push(s.clone());
            return;
        }
        let port = usize::from(s.local.port());
        let mut row = usize::from(self.rows[port]);
        if row == 0 {
            // One row per port; past 65,535 rows the rest go without slots.
            if let Ok(r) = u16::try_from(self.slots.len()) {
                row = usize::from(r);
                self.rows[port] = r;
                self.slots.push([EMPTY_SLOT; SLOTTED]);
            }
        }
        let st = slot_of(s.state).filter(|_| row != 0);
        let class = SlotClass::of(s);
        if let Some(st) = st {
            let slot = &mut self.slots[row][st];
            if slot.entry != 0 && slot.class == class {
                slot.pending += s.count;
                slot.pending_expires = slot.pending_expires.max(s.expires_ms);
                return;
            }
            Self::flush(slot, out);
        }
        let key = FoldKey {
            state: s.state,
            local: s.local,
            uid: s.uid,
            ifindex: s.ifindex,
            v6only: s.v6only,
            has_file: s.inode != 0,
        };
        let i = match self.index.get(&key) {
            Some(&i) => {
                let e = &mut out[i];
                e.count += s.count;
                e.expires_ms = e.expires_ms.max(s.expires_ms);
                i
            }
            None => {
                self.index.insert(key, out.len());
                out.push(s.clone());
                out.len() - 1
            }
        };
        if let Some(st) = st {
            self.slots[row][st] = Slot {
                class,
                entry: u32::try_from(i + 1).unwrap_or(0),
                ..EMPTY_SLOT
            };
        }
    }

    /// Adds what the slots gathered to their entries.
    pub(super) fn finish(&mut self, out: &mut [Socket]) {
        for row in &mut self.slots {
            for slot in row.iter_mut() {
                Self::flush(slot, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sock(state: State, local: &str, remote: &str, inode: u64, expires: u64) -> Socket {
        Socket {
            inode,
            expires_ms: Some(expires),
            ..Socket::test(state, local, remote)
        }
    }

    #[test]
    fn folding_keeps_counts_classes_and_the_longest_timer() {
        let mut out = Vec::new();
        let mut f = Folder::new(true, 1);
        let input = [
            sock(State::Established, "10.0.0.1:443", "10.0.0.9:1", 11, 0),
            sock(State::TimeWait, "10.0.0.1:443", "10.0.0.9:2", 0, 30_000),
            sock(State::Established, "10.0.0.1:443", "10.0.0.9:3", 12, 0),
            sock(State::TimeWait, "10.0.0.1:443", "10.0.0.9:4", 0, 59_000),
            sock(State::Established, "10.0.0.2:443", "10.0.0.9:5", 13, 0),
            sock(State::Established, "10.0.0.1:443", "10.0.0.9:6", 14, 0),
        ];
        for s in &input {
            f.push(s, true, &mut out);
        }
        // On a port without a listener, the first socket with a file stays individual.
        f.push(
            &sock(State::Established, "10.0.0.1:8080", "10.0.0.9:7", 15, 0),
            false,
            &mut out,
        );
        f.push(
            &sock(State::Established, "10.0.0.1:8080", "10.0.0.9:8", 16, 0),
            false,
            &mut out,
        );
        f.finish(&mut out);
        let summary: Vec<(State, String, u32, Option<u64>)> = out
            .iter()
            .map(|s| (s.state, s.local.to_string(), s.count, s.expires_ms))
            .collect();
        assert_eq!(
            summary,
            vec![
                (State::Established, "10.0.0.1:443".into(), 3, Some(0)),
                (State::TimeWait, "10.0.0.1:443".into(), 2, Some(59_000)),
                (State::Established, "10.0.0.2:443".into(), 1, Some(0)),
                (State::Established, "10.0.0.1:8080".into(), 1, Some(0)),
                (State::Established, "10.0.0.1:8080".into(), 1, Some(0)),
            ]
        );
        assert_eq!(
            out.iter().map(|s| s.count).sum::<u32>(),
            8,
            "no socket lost"
        );
        let mut plain = Vec::new();
        let mut off = Folder::new(false, 0);
        for s in &input {
            off.push(s, true, &mut plain);
        }
        assert_eq!(
            plain.len(),
            input.len(),
            "one-shot commands see every socket"
        );
    }

    #[test]
    fn folding_matches_a_plain_grouping_on_interleaved_sockets() {
        // Ports, states, addresses and timers interleaved as a kernel hash walk
        // would hand them over; the fold must agree with a naive group-by.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::new();
        let mut f = Folder::new(true, 0);
        let mut naive: BTreeMap<(State, String, bool), (u32, Option<u64>)> = BTreeMap::new();
        for i in 0..5000u64 {
            let r = next();
            // Every state but LISTEN (listeners stay individual by design).
            let state = match State::ALL[(r % 13) as usize] {
                State::Listen => State::Established,
                st => st,
            };
            let local = format!("10.0.0.{}:{}", 1 + (r >> 8) % 2, 440 + (r >> 16) % 4);
            let has_file = state != State::TimeWait && (r >> 24) % 5 != 0;
            let s = sock(
                state,
                &local,
                &format!("10.1.0.1:{}", 1000 + i),
                if has_file { 100 + i } else { 0 },
                (r >> 32) % 60_000,
            );
            f.push(&s, true, &mut out);
            let e = naive.entry((state, local, has_file)).or_default();
            e.0 += 1;
            e.1 = e.1.max(s.expires_ms);
        }
        f.finish(&mut out);
        let folded: BTreeMap<(State, String, bool), (u32, Option<u64>)> = out
            .iter()
            .map(|s| {
                (
                    (s.state, s.local.to_string(), s.inode != 0),
                    (s.count, s.expires_ms),
                )
            })
            .collect();
        assert_eq!(folded.len(), out.len(), "one entry per class");
        assert_eq!(folded, naive);
    }
}
