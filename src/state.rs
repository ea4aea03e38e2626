//! The agent's memory of listeners, shared with the one-shot commands through a
//! state file (`--state.file`): a `check` run right after a daemon died can judge its
//! TIME_WAIT leftovers with the flags the agent saw on its listener.
//!
//! The file names the network namespace it describes; a reader in another
//! namespace ignores it. Writes are atomic (temp file + rename).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::{Owner, Protocol, Socket, SocketFlags, State, Tri};

/// One remembered listener, as written to the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub protocol: String,
    pub address: IpAddr,
    pub port: u16,
    pub v6only: Option<bool>,
    pub reuseaddr: Option<bool>,
    pub reuseport: Option<bool>,
    pub uid: u32,
    pub ifindex: Option<u32>,
    pub process: Option<String>,
    pub user: Option<String>,
    /// Unix seconds when the listener was last seen alive.
    pub last_seen: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// Inode of the network namespace the listeners belong to.
    pub netns: u64,
    pub listeners: Vec<Entry>,
}

fn tri(v: Option<bool>) -> Tri {
    v.map_or(Tri::Unknown, Tri::from_bool)
}

impl Entry {
    pub fn from_socket(s: &Socket, owner: Option<&Owner>, seen: SystemTime) -> Entry {
        Entry {
            protocol: s.protocol.as_str().to_string(),
            address: s.local.ip(),
            port: s.local.port(),
            v6only: s.v6only.known(),
            reuseaddr: s.flags.reuseaddr.known(),
            reuseport: s.flags.reuseport.known(),
            uid: s.uid,
            ifindex: s.ifindex,
            process: owner.map(|o| o.process.clone()),
            user: owner.map(|o| o.user.clone()),
            last_seen: seen
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// The listener socket this entry describes, or `None` for a malformed entry.
    pub fn to_socket(&self) -> Option<Socket> {
        let protocol: Protocol = self.protocol.parse().ok()?;
        Some(Socket {
            protocol,
            state: if protocol == Protocol::Tcp {
                State::Listen
            } else {
                State::Close
            },
            local: SocketAddr::new(self.address, self.port),
            remote: SocketAddr::new(
                if self.address.is_ipv6() {
                    crate::model::V6_ANY
                } else {
                    crate::model::V4_ANY
                },
                0,
            ),
            uid: self.uid,
            inode: 0,
            ifindex: self.ifindex,
            expires_ms: None,
            v6only: tri(self.v6only),
            flags: SocketFlags {
                reuseaddr: tri(self.reuseaddr),
                reuseport: tri(self.reuseport),
            },
            count: 1,
        })
    }

    pub fn seen_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(self.last_seen.max(0.0))
    }
}

/// Inode of this process's network namespace (`/proc/self/ns/net`).
pub fn current_netns(procfs: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(procfs.join("thread-self/ns/net"))
        .or_else(|_| std::fs::metadata(procfs.join("self/ns/net")))
        .ok()
        .map(|m| m.ino())
}

/// Writes the state atomically.
///
/// # Errors
/// When the directory cannot be created or the file written.
pub fn save(path: &Path, state: &StateFile) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let body = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

/// Reads the listeners remembered for namespace `netns` and seen within `max_age`.
/// A missing, unreadable or foreign file gives an empty list (and a reason).
pub fn load(path: &Path, netns: Option<u64>, max_age: Duration) -> Result<Vec<Entry>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let state: StateFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if netns.is_some_and(|n| n != state.netns) {
        return Ok(Vec::new());
    }
    let now = SystemTime::now();
    Ok(state
        .listeners
        .into_iter()
        .filter(|e| {
            now.duration_since(e.seen_at())
                .map_or(true, |age| age <= max_age)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_filters() {
        let s = Socket {
            protocol: Protocol::Tcp,
            state: State::Listen,
            local: "[::1]:8080".parse().unwrap(),
            remote: "[::]:0".parse().unwrap(),
            uid: 33,
            inode: 9,
            ifindex: Some(0),
            expires_ms: None,
            v6only: Tri::True,
            flags: SocketFlags {
                reuseaddr: Tri::False,
                reuseport: Tri::Unknown,
            },
            count: 1,
        };
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3600);
        let state = StateFile {
            netns: 42,
            listeners: vec![
                Entry::from_socket(&s, None, now),
                Entry::from_socket(&s, None, old),
            ],
        };
        let path =
            std::env::temp_dir().join(format!("bindwatch-state-test-{}.json", std::process::id()));
        save(&path, &state).unwrap();
        let got = load(&path, Some(42), Duration::from_secs(600)).unwrap();
        assert_eq!(got.len(), 1, "the hour-old entry is too old");
        let back = got[0].to_socket().unwrap();
        assert_eq!(back.local, s.local);
        assert_eq!(back.flags, s.flags);
        assert_eq!(back.v6only, Tri::True);
        assert!(
            load(&path, Some(7), Duration::from_secs(600))
                .unwrap()
                .is_empty(),
            "other netns"
        );
        std::fs::write(&path, "{not json").unwrap();
        assert!(load(&path, Some(42), Duration::from_secs(600))
            .unwrap_err()
            .contains("bindwatch-state-test"));
        std::fs::remove_file(&path).unwrap();
        assert!(
            load(&path, Some(42), Duration::from_secs(600))
                .unwrap()
                .is_empty(),
            "missing file"
        );
    }
}
