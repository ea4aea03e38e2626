//! The sysctls that shape port allocation, read under `--path.procfs`.
//! Parsers are pure; `read` is the only I/O.

use std::path::{Path, PathBuf};

pub use crate::model::PortAllocation;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SysctlError {
    pub path: PathBuf,
    pub reason: String,
}

/// `"32768\t60999\n"`.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let mut it = s.split_ascii_whitespace();
    let lo = it.next().ok_or("empty")?;
    let hi = it.next().ok_or("one number, expected two")?;
    let lo: u16 = lo.parse().map_err(|_| format!("{lo:?} is not a port"))?;
    let hi: u16 = hi.parse().map_err(|_| format!("{hi:?} is not a port"))?;
    if lo > hi {
        return Err(format!("range {lo}-{hi} is reversed"));
    }
    Ok((lo, hi))
}

/// `"8080,10000-10005\n"` or `"\n"`.
pub fn parse_reserved_ports(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u16 = a
                .trim()
                .parse()
                .map_err(|_| format!("{part:?} is not a port"))?;
            let b: u16 = b
                .trim()
                .parse()
                .map_err(|_| format!("{part:?} is not a port"))?;
            Ok((a.min(b), a.max(b)))
        })
        .collect()
}

fn read_file(procfs: &Path, rel: &str) -> Result<(PathBuf, String), SysctlError> {
    let path = procfs.join(rel);
    match crate::fsread::read_to_string(
        &path,
        crate::fsread::Symlinks::Follow,
        crate::fsread::SYSCTL_MAX,
    ) {
        Ok(s) => Ok((path, s)),
        Err(e) => Err(SysctlError {
            reason: e.reason(),
            path,
        }),
    }
}

/// Reads both sysctls.
///
/// # Errors
/// When a file is unreadable or malformed; callers fall back to the defaults.
pub fn read_port_allocation(procfs: &Path) -> Result<PortAllocation, SysctlError> {
    let (p, s) = read_file(procfs, "sys/net/ipv4/ip_local_port_range")?;
    let range = parse_port_range(&s).map_err(|reason| SysctlError { path: p, reason })?;
    let (p, s) = read_file(procfs, "sys/net/ipv4/ip_local_reserved_ports")?;
    let reserved = parse_reserved_ports(&s).map_err(|reason| SysctlError { path: p, reason })?;
    Ok(PortAllocation { range, reserved })
}

/// `net.ipv6.bindv6only`: the V6ONLY default of a new IPv6 socket.
///
/// # Errors
/// When the file is unreadable (e.g. no IPv6) or not 0/1.
pub fn read_bindv6only(procfs: &Path) -> Result<bool, SysctlError> {
    let (path, s) = read_file(procfs, "sys/net/ipv6/bindv6only")?;
    match s.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(SysctlError {
            path,
            reason: format!("{other:?} is neither 0 nor 1"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_table() {
        // (file text, the range or a word of the error)
        type Case = (&'static str, Result<(u16, u16), &'static str>);
        let cases: [Case; 6] = [
            ("32768\t60999\n", Ok((32768, 60999))),
            ("1024 65535", Ok((1024, 65535))),
            ("", Err("empty")),
            ("5", Err("one number")),
            ("9 x", Err("not a port")),
            ("9 5", Err("reversed")),
        ];
        for (input, want) in cases {
            match (parse_port_range(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{input:?}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{input:?}: {e}"),
                (got, w) => panic!("{input:?}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn reserved_ports_table() {
        assert_eq!(parse_reserved_ports("\n").unwrap(), vec![]);
        assert_eq!(
            parse_reserved_ports("8080,10000-10005\n").unwrap(),
            vec![(8080, 8080), (10000, 10005)]
        );
        assert!(parse_reserved_ports("80,x").unwrap_err().contains("\"x\""));
    }

    #[test]
    fn ephemeral_membership_and_size() {
        let a = PortAllocation {
            range: (40000, 40009),
            reserved: vec![(40005, 40006), (10033, 10033)],
        };
        assert!(a.is_ephemeral(40000));
        assert!(!a.is_ephemeral(40005));
        assert!(!a.is_ephemeral(39999));
        assert!(!a.is_ephemeral(10033));
        assert_eq!(a.size(), 8);
    }
}
