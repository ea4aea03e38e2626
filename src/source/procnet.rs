//! The /proc/net/{tcp,tcp6,udp,udp6} fallback source.
//!
//! Why not `procfs::net::tcp()`: its `TcpNetEntry` drops the `tr` and `tm->when`
//! columns, and without them a TIME_WAIT's remaining time is unknown; it also
//! collects the whole table into a Vec. This parser reads one line at a time from any
//! `BufRead` (tests use captured kernel text) and streams sockets to a callback.
//! /proc cannot show: SO_BINDTODEVICE, V6ONLY, bound-only sockets.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::model::{Protocol, Socket, SocketFlags, State, Tri};

/// `USER_HZ`: /proc/net prints timers as clock ticks (`jiffies_delta_to_clock_t`),
/// and USER_HZ is 100 on every Linux architecture we run on.
const USER_HZ: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ProcNetError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl ProcNetError {
    /// True when the file does not exist (e.g. no IPv6 stack): the table is empty.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ProcNetError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Table file name under `<procfs>/net/`.
pub fn table_file(protocol: Protocol, v6: bool) -> &'static str {
    match (protocol, v6) {
        (Protocol::Tcp, false) => "tcp",
        (Protocol::Tcp, true) => "tcp6",
        (Protocol::Udp, false) => "udp",
        (Protocol::Udp, true) => "udp6",
    }
}

/// Reads one table file, streaming each socket to `sink`.
///
/// A malformed line is reported through `on_bad_line` (path, line, reason) and
/// skipped: one odd line must not cost the whole table.
///
/// # Errors
/// When the file cannot be opened or read.
pub fn read_table(
    procfs: &Path,
    protocol: Protocol,
    v6: bool,
    sink: &mut dyn FnMut(&Socket),
    on_bad_line: &mut dyn FnMut(ProcNetError),
) -> Result<(), ProcNetError> {
    let path = procfs.join("net").join(table_file(protocol, v6));
    let file = File::open(&path).map_err(|source| ProcNetError::Io {
        path: path.clone(),
        source,
    })?;
    parse_table(
        BufReader::with_capacity(256 * 1024, file),
        &path,
        protocol,
        sink,
        on_bad_line,
    )
}

/// Parses a /proc/net table from any reader. Pure apart from the reader.
///
/// # Errors
/// Only on read errors; bad lines go to `on_bad_line`.
pub fn parse_table<R: BufRead>(
    mut r: R,
    path: &Path,
    protocol: Protocol,
    sink: &mut dyn FnMut(&Socket),
    on_bad_line: &mut dyn FnMut(ProcNetError),
) -> Result<(), ProcNetError> {
    let mut line = String::with_capacity(256);
    let mut n = 0usize;
    loop {
        line.clear();
        let got = r.read_line(&mut line).map_err(|source| ProcNetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        if n == 1 {
            continue; // header
        }
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line, protocol) {
            Ok(s) => sink(&s),
            Err(reason) => on_bad_line(ProcNetError::Parse {
                path: path.to_path_buf(),
                line: n,
                reason,
            }),
        }
    }
}

/// Parses one data line, e.g.
/// `0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 12345 ...`
///
/// # Errors
/// A description of the first field that is missing or malformed.
pub fn parse_line(line: &str, protocol: Protocol) -> Result<Socket, String> {
    let mut f = line.split_ascii_whitespace();
    let mut next = |name: &str| f.next().ok_or_else(|| format!("missing field {name}"));
    let _sl = next("sl")?;
    let local = parse_addr(next("local_address")?).map_err(|e| format!("local_address: {e}"))?;
    let remote = parse_addr(next("rem_address")?).map_err(|e| format!("rem_address: {e}"))?;
    let st = u8::from_str_radix(next("st")?, 16).map_err(|_| "st: not hex".to_string())?;
    let state = State::from_kernel(st).ok_or_else(|| format!("st: unknown state {st:#x}"))?;
    let _queues = next("tx_queue:rx_queue")?;
    let timer = next("tr:tm->when")?;
    let (tr, when) = timer
        .split_once(':')
        .ok_or_else(|| "tr:tm->when: no colon".to_string())?;
    let tr = u8::from_str_radix(tr, 16).map_err(|_| "tr: not hex".to_string())?;
    let when = u64::from_str_radix(when, 16).map_err(|_| "tm->when: not hex".to_string())?;
    let _retrnsmt = next("retrnsmt")?;
    let uid: u32 = next("uid")?
        .parse()
        .map_err(|_| "uid: not a number".to_string())?;
    let _timeout = next("timeout")?;
    let inode: u64 = next("inode")?
        .parse()
        .map_err(|_| "inode: not a number".to_string())?;
    let expires_ms = if tr != 0 {
        Some(when.saturating_mul(1000) / USER_HZ)
    } else {
        None
    };
    Ok(Socket {
        protocol,
        state,
        local,
        remote,
        uid,
        inode,
        ifindex: None,
        expires_ms,
        v6only: Tri::Unknown,
        flags: SocketFlags::default(),
        count: 1,
        cookie: 0,
    })
}

/// `0100007F:1F90` or a 32-hex-digit IPv6 address. The kernel prints each 32-bit word
/// of the address in host byte order.
fn parse_addr(s: &str) -> Result<SocketAddr, &'static str> {
    let (addr, port) = s.split_once(':').ok_or("no colon")?;
    let port = u16::from_str_radix(port, 16).map_err(|_| "port not hex")?;
    let word = |i: usize| -> Result<[u8; 4], &'static str> {
        let w = addr.get(i * 8..i * 8 + 8).ok_or("address too short")?;
        Ok(u32::from_str_radix(w, 16)
            .map_err(|_| "address not hex")?
            .to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return Err("address neither 8 nor 32 hex digits"),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from Linux 6.18 x86_64 (little endian): a listener on 127.0.0.1:8080,
    // a TIME_WAIT with 59.91 s left, and an IPv6 listener on [::1]:9090.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 55123 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D3A2 06 00000000:00000000 03:0000176F 00000000     0        0 0 3 0000000000000000
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
";

    fn parse(text: &str, proto: Protocol) -> (Vec<Socket>, Vec<String>) {
        let mut socks = Vec::new();
        let mut bad = Vec::new();
        parse_table(
            text.as_bytes(),
            Path::new("/proc/net/tcp"),
            proto,
            &mut |s| socks.push(s.clone()),
            &mut |e| bad.push(e.to_string()),
        )
        .unwrap();
        (socks, bad)
    }

    #[test]
    fn parses_listener_and_time_wait() {
        let (s, bad) = parse(TCP, Protocol::Tcp);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s[0].state, State::Listen);
        assert_eq!(s[0].uid, 1000);
        assert_eq!(s[0].inode, 55123);
        assert_eq!(s[0].expires_ms, None);
        assert_eq!(s[1].state, State::TimeWait);
        assert_eq!(s[1].remote, "127.0.0.1:54178".parse().unwrap());
        assert_eq!(s[1].expires_ms, Some(59_990));
    }

    #[test]
    fn parses_ipv6() {
        let (s, bad) = parse(TCP6, Protocol::Tcp);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(s[0].local, "[::1]:9090".parse().unwrap());
    }

    #[test]
    fn odd_lines_are_reported_with_line_numbers_and_skipped() {
        let cases = [
            ("   0: 0100007F:1F90", "missing field rem_address"),
            ("   0: 0100007F 00000000:0000 0A", "local_address: no colon"),
            (
                "   0: 0100ZZ7F:1F90 00000000:0000 0A 0:0 00:0 0 0 0 1",
                "local_address: address not hex",
            ),
            (
                "   0: 0100007F:1F90 00000000:0000 FF 0:0 00:0 0 0 0 1",
                "st: unknown state",
            ),
            (
                "   0: 0100007F:1F90 00000000:0000 0A 0:0 00:0 0 x 0 1",
                "uid: not a number",
            ),
            (
                "   0: 01007F:1F90 00000000:0000 0A 0:0 00:0 0 0 0 1",
                "neither 8 nor 32",
            ),
        ];
        for (line, want) in cases {
            let text =
                format!("header\n{line}\n   1: 0100007F:0050 00000000:0000 0A 0:0 00:0 0 0 0 9\n");
            let (s, bad) = parse(&text, Protocol::Tcp);
            assert_eq!(s.len(), 1, "the good line survives {line:?}");
            assert_eq!(bad.len(), 1);
            assert!(
                bad[0].contains(want),
                "{:?} should contain {want:?}",
                bad[0]
            );
            assert!(bad[0].starts_with("/proc/net/tcp:2:"), "{}", bad[0]);
        }
    }

    #[test]
    fn empty_and_header_only_tables() {
        assert!(parse("", Protocol::Udp).0.is_empty());
        assert!(parse("header only\n", Protocol::Udp).0.is_empty());
    }
}
