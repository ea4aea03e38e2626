//! Watched services as plain data: what the operator declared ([`Service`]) and what the
//! port-conflict monitor (`conflict`) found ([`ServiceStatus`]); the ephemeral-port
//! [`Bucket`] key.

use std::net::IpAddr;

use serde::Serialize;

use super::Protocol;

/// Who is expected to own a watched port. Every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerMatch {
    /// `comm` of the process.
    pub process: Option<String>,
    /// systemd unit, e.g. `nginx.service`.
    pub unit: Option<String>,
    /// user name (or uid as text).
    pub user: Option<String>,
}

impl OwnerMatch {
    pub fn is_empty(&self) -> bool {
        self.process.is_none() && self.unit.is_none() && self.user.is_none()
    }
}

/// One declared service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Empty: the wildcard of each family.
    pub addresses: Vec<IpAddr>,
    pub owner: OwnerMatch,
    pub reuseaddr: bool,
    pub reuseport: bool,
}

/// The state set of `bindwatch_watched_port_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The expected owner listens.
    Ok,
    /// Nobody listens and a bind would succeed.
    Missing,
    /// Another process listens.
    ForeignOwner,
    /// Nobody listens and a bind would fail: leftovers block the daemon.
    Blocked,
    /// A live client socket (outgoing connection, bound client) holds the port.
    Stolen,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Ok,
        Status::Missing,
        Status::ForeignOwner,
        Status::Blocked,
        Status::Stolen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::ForeignOwner => "foreign_owner",
            Status::Blocked => "blocked",
            Status::Stolen => "stolen",
        }
    }
}

/// The verdict for one watched service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub status: Status,
    /// One line for humans: who listens, what blocks, what is unknown.
    pub detail: String,
}

/// Key of an ephemeral-port bucket: connections from one source address to one
/// destination compete for the same ephemeral ports.
pub type Bucket = (IpAddr, IpAddr, u16);
