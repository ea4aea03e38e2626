//! `--config.file`: the watched services, re-read on SIGHUP or `POST /-/reload`; a
//! bad file keeps the previous config active.

use std::path::PathBuf;

use crate::config::{self, Config};

/// The watched-services file and its last good contents.
pub struct ConfigSource {
    pub path: PathBuf,
    pub current: Config,
    pub last_ok: bool,
}

impl ConfigSource {
    /// Re-reads the file; a bad file keeps the old config active.
    fn reload(&mut self) -> Result<(), String> {
        match config::load(&self.path) {
            Ok(c) => {
                tracing::info!(path = %self.path.display(), services = c.services.len(), "config reloaded");
                self.current = c;
                self.last_ok = true;
                Ok(())
            }
            Err(e) => {
                tracing::error!("config reload failed, keeping the previous config: {e}");
                self.last_ok = false;
                Err(e.to_string())
            }
        }
    }
}

/// Re-reads `--config.file` (if any): its result, and whether the services or the
/// reload metric changed.
pub(super) fn reload(config: Option<&mut ConfigSource>) -> (Result<(), String>, bool) {
    match config {
        Some(c) => {
            let before = (c.current.clone(), c.last_ok);
            let r = c.reload();
            (r, before != (c.current.clone(), c.last_ok))
        }
        None => {
            tracing::info!("reload requested; no --config.file to re-read");
            (Ok(()), false)
        }
    }
}
