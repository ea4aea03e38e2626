//! Socket activation (`--web.systemd-socket`): serving on the listening sockets a
//! systemd `.socket` unit passes, as sd_listen_fds(3) describes: `LISTEN_PID` names
//! the process they are meant for, `LISTEN_FDS` how many there are, starting at fd 3.
//! The variables are removed once read, so nothing bindwatch starts inherits them.
//!
//! Hand-written rather than the `listenfd` crate, which takes fds 3.. when `LISTEN_PID`
//! is missing or empty (sd_listen_fds(3) requires it to name this process, else the fds
//! belong to someone else), trusts any `LISTEN_FDS` count, says nothing when the pid
//! does not match, does not check that a socket is listening, and leaves
//! `LISTEN_FDNAMES` behind: each of these is a check here with an error naming the flag.
//!
//! Also the other half of systemd's protocol, sd_notify(3) ([`notify`]): `READY=1` on
//! `$NOTIFY_SOCKET` once the agent serves its first poll (`Type=notify`).

use std::ops::Range;
use std::os::fd::{FromRawFd, RawFd};

/// The first passed fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Why the passed sockets cannot be used; each message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("--web.systemd-socket: no sockets were passed ({0}); start bindwatch from a systemd .socket unit or systemd-socket-activate")]
    NotPassed(String),
    #[error("--web.systemd-socket: {var}={value:?} is not {what}")]
    Malformed {
        var: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("--web.systemd-socket: fd {fd}: {why}")]
    BadFd { fd: RawFd, why: String },
}

/// Which fds were passed to process `pid`, from the values of `LISTEN_PID` and
/// `LISTEN_FDS`. Pure.
///
/// # Errors
/// When nothing was passed to this process or a value is malformed.
pub fn passed_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    pid: u32,
) -> Result<Range<RawFd>, ActivationError> {
    let Some(for_pid) = listen_pid else {
        return Err(ActivationError::NotPassed("LISTEN_PID is not set".into()));
    };
    let for_pid: u32 = for_pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::Malformed {
            var: "LISTEN_PID",
            value: for_pid.into(),
            what: "a process id",
        })?;
    if for_pid != pid {
        return Err(ActivationError::NotPassed(format!(
            "LISTEN_PID={for_pid} is another process, this is {pid}"
        )));
    }
    let Some(n) = listen_fds else {
        return Err(ActivationError::NotPassed("LISTEN_FDS is not set".into()));
    };
    let count: RawFd = n
        .trim()
        .parse()
        .ok()
        .filter(|c| (0..=4096).contains(c))
        .ok_or_else(|| ActivationError::Malformed {
            var: "LISTEN_FDS",
            value: n.into(),
            what: "a count of sockets from 0 to 4096",
        })?;
    if count == 0 {
        return Err(ActivationError::NotPassed("LISTEN_FDS=0".into()));
    }
    Ok(LISTEN_FDS_START..LISTEN_FDS_START + count)
}

/// Takes the listening TCP sockets systemd passed to this process (close-on-exec,
/// non-blocking). Call it before other threads start: it removes `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment.
///
/// # Errors
/// When none were passed, or a passed fd is not a listening TCP socket (a
/// `ListenStream=` path or a datagram socket in the `.socket` unit).
pub fn take_listeners() -> Result<Vec<std::net::TcpListener>, ActivationError> {
    let pid_var = std::env::var("LISTEN_PID").ok();
    let fds_var = std::env::var("LISTEN_FDS").ok();
    let fds = passed_fds(pid_var.as_deref(), fds_var.as_deref(), std::process::id());
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let mut out = Vec::new();
    for fd in fds? {
        let bad = |why: String| ActivationError::BadFd { fd, why };
        // SAFETY: F_GETFD only reads the descriptor flags; it fails on a closed fd.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(bad(format!(
                "not open: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: the fd is open and, per sd_listen_fds(3), passed to this process to
        // own; nothing else in bindwatch refers to it.
        let sock = unsafe { socket2::Socket::from_raw_fd(fd) };
        let domain = sock
            .domain()
            .map_err(|e| bad(format!("not a socket: {e}")))?;
        if domain != socket2::Domain::IPV4 && domain != socket2::Domain::IPV6 {
            return Err(bad("not an IPv4 or IPv6 socket (a ListenStream= path?); bindwatch serves HTTP over TCP".into()));
        }
        if sock.r#type().map_err(|e| bad(e.to_string()))? != socket2::Type::STREAM {
            return Err(bad("not a stream socket (ListenDatagram=?)".into()));
        }
        if !sock.is_listener().map_err(|e| bad(e.to_string()))? {
            return Err(bad("not listening".into()));
        }
        sock.set_cloexec(true).map_err(|e| bad(e.to_string()))?;
        sock.set_nonblocking(true).map_err(|e| bad(e.to_string()))?;
        out.push(sock.into());
    }
    Ok(out)
}

/// Sends `state` (e.g. `READY=1`) to the service manager's `$NOTIFY_SOCKET`, a path
/// or, starting with `@`, an abstract socket name. `Ok(false)` when it is not set.
///
/// # Errors
/// When the datagram cannot be sent.
pub fn notify(state: &str) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_fds_table() {
        let ok = |p: Option<&str>, n: Option<&str>| passed_fds(p, n, 42);
        assert_eq!(ok(Some("42"), Some("1")).unwrap(), 3..4);
        assert_eq!(ok(Some("42"), Some("3")).unwrap(), 3..6);
        for (p, n, want) in [
            (None, Some("1"), "LISTEN_PID is not set"),
            (Some("41"), Some("1"), "another process"),
            (Some("42"), None, "LISTEN_FDS is not set"),
            (Some("42"), Some("0"), "LISTEN_FDS=0"),
            (Some("x"), Some("1"), "LISTEN_PID=\"x\""),
            (Some("42"), Some("-1"), "LISTEN_FDS=\"-1\""),
            (Some("42"), Some("99999"), "LISTEN_FDS=\"99999\""),
        ] {
            let e = ok(p, n).unwrap_err().to_string();
            assert!(
                e.starts_with("--web.systemd-socket") && e.contains(want),
                "{p:?} {n:?}: {e}"
            );
        }
    }
}
