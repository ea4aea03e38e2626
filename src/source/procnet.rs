//! The /proc/net/{tcp,tcp6,udp,udp6} fallback source.
//!
//! Why not `procfs::net::tcp()`: its `TcpNetEntry` drops the `tr` and `tm->when`
//! columns, and without them a TIME_WAIT's remaining time is unknown; it also
//! collects the whole table into a Vec. This parser reads one line at a time from any
//! `BufRead` (tests use captured kernel text) and streams sockets to a callback.
//! /proc cannot show: SO_BINDTODEVICE, V6ONLY, bound-only sockets.

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

/// Longest line kept: a real line is about 150 bytes (180 for tcp6); longer ones are
/// skipped as malformed without being held in memory.
pub const MAX_LINE: usize = 4096;

/// Most bytes read from one table (about 7 million sockets): a table file that does
/// not end (a fake procfs) stops here with an error instead of reading forever.
pub const MAX_TABLE_BYTES: u64 = 1 << 30;

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
    // Regular files only: a FIFO in a fake procfs would block the poller for good.
    let (file, _) = crate::fsread::open(&path, crate::fsread::Symlinks::Follow).map_err(|e| {
        ProcNetError::Io {
            path: path.clone(),
            source: match e {
                crate::fsread::ReadError::Open { source, .. } => source,
                other => io::Error::new(io::ErrorKind::InvalidInput, other.reason()),
            },
        }
    })?;
    parse_table(
        BufReader::with_capacity(256 * 1024, file),
        &path,
        protocol,
        sink,
        on_bad_line,
    )
}

/// Reads one line of at most `max` bytes into `buf` (cleared first). Returns the bytes
/// consumed (0 at the end) and whether the line was longer than `max`, in which case
/// `buf` is left empty and the rest of the line is consumed without being kept.
///
/// # Errors
/// Read errors of `r`.
pub fn read_line_capped<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<(u64, bool)> {
    buf.clear();
    let mut consumed = 0u64;
    let mut overlong = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok((consumed, overlong));
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if !overlong {
            if buf.len().saturating_add(take) > max {
                overlong = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&avail[..take]);
            }
        }
        r.consume(take);
        consumed = consumed.saturating_add(take as u64);
        if done {
            return Ok((consumed, overlong));
        }
    }
}

/// Parses a /proc/net table from any reader. Pure apart from the reader.
///
/// A line that is too long ([`MAX_LINE`]) or not UTF-8 is a bad line, skipped: it costs
/// only itself.
///
/// # Errors
/// On read errors, and beyond [`MAX_TABLE_BYTES`]; bad lines go to `on_bad_line`.
pub fn parse_table<R: BufRead>(
    mut r: R,
    path: &Path,
    protocol: Protocol,
    sink: &mut dyn FnMut(&Socket),
    on_bad_line: &mut dyn FnMut(ProcNetError),
) -> Result<(), ProcNetError> {
    let mut raw = Vec::with_capacity(256);
    let mut n = 0usize;
    let mut total = 0u64;
    loop {
        let (got, overlong) =
            read_line_capped(&mut r, &mut raw, MAX_LINE).map_err(|source| ProcNetError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if got == 0 {
            return Ok(());
        }
        total = total.saturating_add(got);
        if total > MAX_TABLE_BYTES {
            return Err(ProcNetError::Io {
                path: path.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_TABLE_BYTES} bytes: not a socket table"),
                ),
            });
        }
        n += 1;
        if n == 1 {
            continue; // header
        }
        let bad = |reason: String| ProcNetError::Parse {
            path: path.to_path_buf(),
            line: n,
            reason,
        };
        if overlong {
            on_bad_line(bad(format!("longer than {MAX_LINE} bytes")));
            continue;
        }
        let line = match std::str::from_utf8(&raw) {
            Ok(l) => l,
            Err(e) => {
                on_bad_line(bad(format!("not UTF-8 (byte {})", e.valid_up_to())));
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, protocol) {
            Ok(s) => sink(&s),
            Err(reason) => on_bad_line(bad(reason)),
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

    #[test]
    fn overlong_and_non_utf8_lines_cost_only_themselves() {
        let mut lines: Vec<Vec<u8>> = TCP.lines().map(|l| format!("{l}\n").into_bytes()).collect();
        let good = lines.len() - 1;
        lines.insert(2, [vec![b'7'; 100_000], b"\n".to_vec()].concat());
        lines.insert(3, b"   9: 0100007F:1F91 \xff\xfe 0A\n".to_vec());
        let text = lines.concat();
        let (mut got, mut bad) = (0, Vec::new());
        parse_table(
            &text[..],
            Path::new("/proc/net/tcp"),
            Protocol::Tcp,
            &mut |_| got += 1,
            &mut |e| bad.push(e.to_string()),
        )
        .unwrap();
        assert_eq!(got, good, "{bad:?}");
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("tcp:3: longer than 4096 bytes"), "{bad:?}");
        assert!(bad[1].contains("tcp:4: not UTF-8"), "{bad:?}");
    }

    #[test]
    fn capped_line_reader() {
        use std::io::Read;
        let mut r = &b"ab\ncdefg\nh"[..];
        let mut buf = Vec::new();
        assert_eq!(read_line_capped(&mut r, &mut buf, 4).unwrap(), (3, false));
        assert_eq!(buf, b"ab\n");
        assert_eq!(read_line_capped(&mut r, &mut buf, 4).unwrap(), (6, true));
        assert!(buf.is_empty());
        assert_eq!(read_line_capped(&mut r, &mut buf, 4).unwrap(), (1, false));
        assert_eq!(buf, b"h");
        assert_eq!(read_line_capped(&mut r, &mut buf, 4).unwrap(), (0, false));
        // An endless line is consumed, not kept.
        let mut endless = BufReader::new(io::repeat(b'x').take(10 << 20));
        assert_eq!(
            read_line_capped(&mut endless, &mut buf, MAX_LINE).unwrap(),
            (10 << 20, true)
        );
        assert!(buf.capacity() <= 2 * MAX_LINE);
    }

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
