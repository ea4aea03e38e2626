//! Decoding the ring-buffer records of `bpf/bindevents.bpf.c`. Pure: bytes in,
//! [`Event`] out; the layout is the C `struct event` (native byte order, 72 bytes),
//! [`EventRec`] here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::model::Protocol;
pub use crate::model::{Call, Errno};
use crate::source::records::{
    self, EventRec, F_REUSEADDR, F_REUSEPORT, F_SOCKET_READ, F_V6ONLY, KIND_BIND, KIND_CONNECT,
    KIND_LISTEN,
};

/// Size of one record (`sizeof(struct event)`).
pub const EVENT_SIZE: usize = std::mem::size_of::<EventRec>();

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
/// An MPTCP socket's conflicts are its TCP subflows': bindwatch sees them as TCP.
const IPPROTO_MPTCP: u16 = 262;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;

/// The calling socket's own options, read in the kernel during the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CallFlags {
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// IPV6_V6ONLY; always false for an AF_INET socket.
    pub v6only: bool,
    /// SO_BINDTODEVICE ifindex, 0 for none.
    pub ifindex: u32,
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub call: Call,
    /// Thread id of the caller.
    pub pid: u32,
    /// Process id (thread group) of the caller.
    pub tgid: u32,
    pub uid: u32,
    /// Inode of the socket's network namespace; 0 when the socket could not be read.
    pub netns: u32,
    /// `None`: the call succeeded (a bind on a port of interest).
    pub errno: Option<Errno>,
    /// `None` when the socket could not be read or is neither TCP nor UDP.
    pub protocol: Option<Protocol>,
    /// The requested address (bind), the destination (connect), the bound one (listen).
    pub address: IpAddr,
    pub port: u16,
    /// `None` when the socket could not be found through the fd table.
    pub flags: Option<CallFlags>,
    /// The caller's comm.
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bind event of {0} bytes, expected {EVENT_SIZE}")]
    Size(usize),
    #[error("bind event with unknown call kind {0}")]
    Kind(u8),
    #[error("bind event with unknown address family {0}")]
    Family(u8),
    #[error("bind event with unexpected return value {0}")]
    Ret(i32),
}

/// Decodes one ring-buffer record.
///
/// # Errors
/// A record of the wrong size or with a field the program never writes.
pub fn decode(b: &[u8]) -> Result<Event, DecodeError> {
    if b.len() != EVENT_SIZE {
        return Err(DecodeError::Size(b.len()));
    }
    let r: EventRec = records::read(b).ok_or(DecodeError::Size(b.len()))?;
    let call = match r.kind {
        KIND_BIND => Call::Bind,
        KIND_LISTEN => Call::Listen,
        KIND_CONNECT => Call::Connect,
        k => return Err(DecodeError::Kind(k)),
    };
    let a = &r.addr;
    let address = match r.family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(*a)),
        f => return Err(DecodeError::Family(f)),
    };
    let errno = match r.ret {
        0 => None,
        ret => Some(Errno::from_ret(ret).ok_or(DecodeError::Ret(ret))?),
    };
    let fl = r.flags;
    let read = fl & F_SOCKET_READ != 0;
    let protocol = match (read, r.protocol, r.socktype) {
        (true, IPPROTO_TCP | IPPROTO_MPTCP, SOCK_STREAM) => Some(Protocol::Tcp),
        (true, IPPROTO_UDP, SOCK_DGRAM) => Some(Protocol::Udp),
        _ => None,
    };
    let flags = read.then_some(CallFlags {
        reuseaddr: fl & F_REUSEADDR != 0,
        reuseport: fl & F_REUSEPORT != 0,
        v6only: address.is_ipv6() && fl & F_V6ONLY != 0,
        ifindex: r.ifindex,
    });
    Ok(Event {
        call,
        pid: r.pid,
        tgid: r.tgid,
        uid: r.uid,
        netns: r.netns,
        errno,
        protocol,
        address,
        port: r.port,
        flags,
        comm: comm_str(&r.comm),
    })
}

/// A kernel `comm`: up to the first NUL, lossily UTF-8.
pub(super) fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a record field by field as the C program lays it out.
    #[allow(clippy::too_many_arguments)]
    fn record(
        pid: u32,
        ret: i32,
        port: u16,
        proto: u16,
        socktype: u16,
        kind: u8,
        family: u8,
        flags: u8,
        addr: &[u8],
        comm: &[u8],
    ) -> Vec<u8> {
        let mut r = EventRec {
            pid,
            tgid: pid + 1,
            uid: 1000,
            netns: 4026531840,
            ret,
            ifindex: 3,
            port,
            protocol: proto,
            socktype,
            kind,
            family,
            flags,
            ..EventRec::default()
        };
        r.addr[..addr.len()].copy_from_slice(addr);
        r.comm[..comm.len()].copy_from_slice(comm);
        records::to_bytes(&r)
    }

    // One case per record kind, read top to bottom: split up, the cases would only be
    // harder to compare with each other.
    #[test]
    fn decodes_each_kind_of_record() {
        let v6 = {
            let mut a = [0u8; 16];
            a[15] = 1;
            a
        };
        // (record, call, errno, protocol, address, port, flags(reuseaddr, reuseport, v6only), comm)
        type Want = (
            Call,
            Option<Errno>,
            Option<Protocol>,
            &'static str,
            u16,
            Option<(bool, bool, bool)>,
            &'static str,
        );
        let cases: Vec<(Vec<u8>, Want)> = vec![
            (
                record(7, -98, 443, 6, 1, 1, 2, 8, &[0, 0, 0, 0], b"nginx"),
                (
                    Call::Bind,
                    Some(Errno::Eaddrinuse),
                    Some(Protocol::Tcp),
                    "0.0.0.0",
                    443,
                    Some((false, false, false)),
                    "nginx",
                ),
            ),
            (
                record(7, -98, 53, 17, 2, 1, 2, 8 | 1 | 2, &[127, 0, 0, 1], b"dnsd"),
                (
                    Call::Bind,
                    Some(Errno::Eaddrinuse),
                    Some(Protocol::Udp),
                    "127.0.0.1",
                    53,
                    Some((true, true, false)),
                    "dnsd",
                ),
            ),
            (
                record(7, -13, 80, 6, 1, 1, 10, 8 | 4, &v6, b"web"),
                (
                    Call::Bind,
                    Some(Errno::Eacces),
                    Some(Protocol::Tcp),
                    "::1",
                    80,
                    Some((false, false, true)),
                    "web",
                ),
            ),
            (
                // V6ONLY is meaningless on an AF_INET socket (and never reported).
                record(
                    7,
                    0,
                    8080,
                    6,
                    1,
                    1,
                    2,
                    8 | 4,
                    &[10, 0, 0, 1],
                    b"sixteen-chars-xx",
                ),
                (
                    Call::Bind,
                    None,
                    Some(Protocol::Tcp),
                    "10.0.0.1",
                    8080,
                    Some((false, false, false)),
                    "sixteen-chars-xx",
                ),
            ),
            (
                record(7, -99, 5432, 6, 1, 3, 2, 8, &[127, 0, 0, 2], b"psql"),
                (
                    Call::Connect,
                    Some(Errno::Eaddrnotavail),
                    Some(Protocol::Tcp),
                    "127.0.0.2",
                    5432,
                    Some((false, false, false)),
                    "psql",
                ),
            ),
            (
                record(7, -98, 443, 262, 1, 2, 2, 8 | 1, &[0, 0, 0, 0], b"mptcpd"),
                (
                    Call::Listen,
                    Some(Errno::Eaddrinuse),
                    Some(Protocol::Tcp),
                    "0.0.0.0",
                    443,
                    Some((true, false, false)),
                    "mptcpd",
                ),
            ),
            (
                // The fd table could not be read: no flags, no protocol.
                record(7, -98, 443, 0, 0, 1, 2, 0, &[0, 0, 0, 0], b"x"),
                (
                    Call::Bind,
                    Some(Errno::Eaddrinuse),
                    None,
                    "0.0.0.0",
                    443,
                    None,
                    "x",
                ),
            ),
            (
                // An ICMP ping socket is neither TCP nor UDP.
                record(7, -98, 1, 1, 2, 1, 2, 8, &[0, 0, 0, 0], b"ping"),
                (
                    Call::Bind,
                    Some(Errno::Eaddrinuse),
                    None,
                    "0.0.0.0",
                    1,
                    Some((false, false, false)),
                    "ping",
                ),
            ),
        ];
        for (b, (call, errno, protocol, addr, port, flags, comm)) in cases {
            let e = decode(&b).unwrap();
            assert_eq!(e.call, call);
            assert_eq!(e.errno, errno);
            assert_eq!(e.protocol, protocol);
            assert_eq!(e.address.to_string(), addr);
            assert_eq!(e.port, port);
            assert_eq!(e.flags.map(|f| (f.reuseaddr, f.reuseport, f.v6only)), flags);
            assert_eq!(e.comm, comm);
            assert_eq!((e.pid, e.tgid, e.uid, e.netns), (7, 8, 1000, 4026531840));
            if let Some(f) = e.flags {
                assert_eq!(f.ifindex, 3);
            }
        }
    }

    #[test]
    fn rejects_what_the_program_never_writes() {
        let ok = record(1, -98, 1, 6, 1, 1, 2, 8, &[0; 4], b"a");
        assert_eq!(decode(&ok[..71]), Err(DecodeError::Size(71)));
        let mut bad = ok.clone();
        bad[30] = 9;
        assert_eq!(decode(&bad), Err(DecodeError::Kind(9)));
        let mut bad = ok.clone();
        bad[31] = 1;
        assert_eq!(decode(&bad), Err(DecodeError::Family(1)));
        let mut bad = ok;
        bad[16..20].copy_from_slice(&(-22i32).to_ne_bytes());
        assert_eq!(decode(&bad), Err(DecodeError::Ret(-22)));
    }
}
