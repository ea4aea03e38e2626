//! What the poller hands the failure tracer after each poll, before it publishes
//! it: the snapshots the tracer judges events against, and their ports of interest,
//! which go into the BPF program's `ports` map (successful binds are reported only
//! there) at that moment. Once a poll is published, the tracer's ports match it.
//! Data flows one way: the tracer never reads what the server serves.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::model::Snapshot;

/// The snapshots of one poll, with their namespace name under `--netns all`.
pub type Snapshots = Arc<[(Option<String>, Arc<Snapshot>)]>;

/// Entries of the BPF `ports` map (`max_entries` in the program).
pub const PORTS_MAP_MAX: usize = 4096;

/// Where the ports of interest go: the program's `ports` map, once it is attached.
pub trait PortFilter: Send {
    /// Adds `port`; an error is logged by the caller, the port then goes unreported.
    fn insert(&mut self, port: u16) -> Result<(), String>;
    fn remove(&mut self, port: u16);
}

/// The handle the poller fills and the tracer reads (a std Mutex: held to swap an
/// Arc or to update the ports map, never across a poll or an event).
#[derive(Default)]
pub struct Inputs {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    snapshots: Option<Snapshots>,
    /// The ports of interest of `snapshots`, capped at [`PORTS_MAP_MAX`].
    wanted: BTreeSet<u16>,
    filter: Option<Box<dyn PortFilter>>,
    /// What `filter` holds now.
    synced: BTreeSet<u16>,
}

impl Inputs {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The poller, after each poll and before it publishes: what the tracer judges
    /// against from now on; the ports map follows before this returns.
    pub fn set(&self, snapshots: &[(Option<String>, Arc<Snapshot>)]) {
        let wanted = ports_of_interest(snapshots);
        let snapshots: Snapshots = snapshots.iter().cloned().collect();
        let mut st = self.lock();
        st.snapshots = Some(snapshots);
        st.wanted = wanted;
        st.sync();
    }

    /// The snapshots of the last poll; `None` before the first one.
    pub fn snapshots(&self) -> Option<Snapshots> {
        self.lock().snapshots.clone()
    }

    /// The tracer, once attached: its `ports` map, filled at once with the last
    /// poll's ports and kept in step by every later [`Inputs::set`].
    pub fn attach(&self, filter: Box<dyn PortFilter>) {
        let mut st = self.lock();
        st.filter = Some(filter);
        st.synced.clear();
        st.sync();
    }

    /// The tracer, when it stops: the map goes with it.
    pub fn detach(&self) {
        let mut st = self.lock();
        st.filter = None;
        st.synced.clear();
    }
}

impl State {
    /// Makes the filter hold `wanted`: only the differences cost a syscall.
    fn sync(&mut self) {
        let Some(filter) = self.filter.as_mut() else {
            return;
        };
        for gone in self.synced.difference(&self.wanted) {
            filter.remove(*gone);
        }
        for new in self.wanted.difference(&self.synced) {
            if let Err(e) = filter.insert(*new) {
                tracing::debug!(port = new, error = %e, "cannot add a port to the bind tracer");
            }
        }
        self.synced.clone_from(&self.wanted);
    }
}

/// The ports of interest of every snapshot, at most [`PORTS_MAP_MAX`].
fn ports_of_interest(snapshots: &[(Option<String>, Arc<Snapshot>)]) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for (_, s) in snapshots {
        for (_, port) in &s.ports {
            if out.len() >= PORTS_MAP_MAX && !out.contains(port) {
                return out;
            }
            out.insert(*port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, SourceKind};

    /// Records what the map would hold, shared with the test.
    struct Recorded(Arc<Mutex<BTreeSet<u16>>>, Arc<Mutex<u32>>);

    impl PortFilter for Recorded {
        fn insert(&mut self, port: u16) -> Result<(), String> {
            *self.1.lock().expect("calls") += 1;
            self.0.lock().expect("set").insert(port);
            Ok(())
        }
        fn remove(&mut self, port: u16) {
            *self.1.lock().expect("calls") += 1;
            self.0.lock().expect("set").remove(&port);
        }
    }

    fn snap(ports: &[u16]) -> (Option<String>, Arc<Snapshot>) {
        let mut s = Snapshot::empty(std::time::SystemTime::UNIX_EPOCH, SourceKind::Netlink);
        s.ports = ports.iter().map(|p| (Protocol::Tcp, *p)).collect();
        (None, Arc::new(s))
    }

    #[test]
    fn the_map_follows_each_poll_before_it_is_published() {
        let inputs = Inputs::default();
        assert!(inputs.snapshots().is_none());
        // A poll before the tracer attached: the map gets its ports on attach.
        inputs.set(&[snap(&[80, 443])]);
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let calls = Arc::new(Mutex::new(0));
        inputs.attach(Box::new(Recorded(held.clone(), calls.clone())));
        assert_eq!(*held.lock().expect("set"), BTreeSet::from([80, 443]));
        // Every later set leaves the map equal to its ports when it returns, with
        // one call per change only.
        *calls.lock().expect("calls") = 0;
        inputs.set(&[snap(&[443, 8080])]);
        assert_eq!(*held.lock().expect("set"), BTreeSet::from([443, 8080]));
        assert_eq!(*calls.lock().expect("calls"), 2, "remove 80, insert 8080");
        let s = inputs.snapshots().expect("a poll was set");
        assert_eq!(s.len(), 1);
        assert!(s[0].1.ports.contains(&(Protocol::Tcp, 8080)));
        inputs.detach();
        inputs.set(&[snap(&[1])]);
        assert_eq!(*held.lock().expect("set"), BTreeSet::from([443, 8080]));
    }

    #[test]
    fn the_ports_are_capped_at_the_map_size() {
        let many: Vec<u16> = (1..=5000).collect();
        let both = [snap(&many), snap(&[1, 2, 60000])];
        let got = ports_of_interest(&both);
        assert_eq!(got.len(), PORTS_MAP_MAX);
        assert!(got.contains(&1) && !got.contains(&60000));
    }
}
