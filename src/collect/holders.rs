//! Step 4b of a poll: every process holding each live listening socket, and what a
//! restart leaves of them (`rebind::holders` decides; this file only gathers). The
//! main holder first named for a socket is remembered while the socket lives, so
//! that its death is seen when its workers keep the socket.

use std::collections::{HashMap, HashSet};

use super::Collector;
use crate::model::{Holding, Listener};
use crate::rebind::holders::{self, MainId};

impl Collector {
    /// The holding of every live listener, by inode.
    pub(super) fn holdings(&mut self, listeners: &[Listener]) -> HashMap<u64, Holding> {
        let inodes: HashSet<u64> = listeners
            .iter()
            .map(|l| l.socket.inode)
            .filter(|i| *i != 0)
            .collect();
        let found = if self.opts.owners && !inodes.is_empty() {
            let slice = self.opts.scan_slice;
            self.resolver().holders(&inodes, slice)
        } else {
            HashMap::new()
        };
        self.mains.retain(|i, _| inodes.contains(i));
        let mut out = HashMap::with_capacity(inodes.len());
        for inode in inodes {
            let held = found.get(&inode).cloned().unwrap_or_default();
            let h = holders::holding(&held, self.mains.get(&inode).copied());
            // Only a complete set names the main holder for good: a scan in
            // progress may have found a worker before its master.
            if let (Some(m), true) = (&h.main, h.complete) {
                self.mains.entry(inode).or_insert((m.pid, m.start_time));
            }
            out.insert(inode, h);
        }
        out
    }

    /// The main holder remembered for a live listening socket, for the state file.
    pub fn main_holder(&self, inode: u64) -> Option<MainId> {
        self.mains.get(&inode).copied()
    }

    /// Seeds the main holder of a socket from a state file (a listener the agent saw).
    pub(super) fn remember_main(&mut self, inode: u64, main: MainId) {
        if inode != 0 {
            self.mains.entry(inode).or_insert(main);
        }
    }
}
