//! The state file sink: the poller writes the listener memory there every poll (the
//! heartbeat in it tells readers the agent is alive), and stops for good when the path
//! holds what it must not replace or another live agent writes it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::state::{self, target};

/// Where the listener memory is shared (see [`crate::state`]).
pub struct StateSink {
    pub path: PathBuf,
    pub netns: u64,
    procfs: PathBuf,
    writer: state::Writer,
    /// The last write failed (logged once until one works again).
    failed: bool,
    guard: target::Guard,
    /// Writing stopped for good (`bindwatch_state_file_stopped`).
    stopped: bool,
}

impl StateSink {
    /// `procfs` gives this process's start time and tells whether another writer
    /// lives; `interval` is the poll interval.
    pub fn new(path: PathBuf, netns: u64, procfs: &Path, interval: Duration) -> Self {
        StateSink {
            path,
            netns,
            procfs: procfs.to_path_buf(),
            writer: state::this_writer(procfs, interval, SystemTime::now()),
            failed: false,
            guard: target::Guard::default(),
            stopped: false,
        }
    }

    /// Whether writing stopped for good.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    pub(super) fn write(&mut self, entries: Vec<state::Entry>) {
        if self.stopped {
            return;
        }
        self.writer.heartbeat = state::unix(SystemTime::now());
        let file = state::StateFile {
            netns: self.netns,
            writer: Some(self.writer.clone()),
            listeners: entries,
        };
        match target::save_checked(&self.path, &file, &self.procfs, &mut self.guard) {
            Ok(()) => self.failed = false,
            Err(target::SaveError::Refused(why)) => {
                self.stopped = true;
                tracing::error!(
                    path = %self.path.display(),
                    "stopped writing the state file: {why}; the agent serves on, and `bindwatch check` ignores the file once its heartbeat is late"
                );
            }
            Err(target::SaveError::Io(e)) => {
                if !self.failed {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write the state file; `bindwatch check` will not know listeners that are gone");
                }
                self.failed = true;
            }
        }
    }
}
