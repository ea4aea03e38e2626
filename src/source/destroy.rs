//! `SOCK_DESTROY` over NETLINK_SOCK_DIAG: destroys one socket named by its exact
//! 4-tuple, bound device and cookie, as `ss -K` does for each socket it matches.
//!
//! The kernel (`inet_diag_find_one_icsk`) looks the socket up by the tuple and then
//! compares the cookie; a socket that took the same tuple since it was read has
//! another cookie and is answered `ESTALE`, untouched. A lookup that misses the
//! connection tables falls through to the listeners (a listener matches any remote),
//! which only the cookie tells apart: a request therefore always carries the socket's
//! own cookie, never the "any cookie" wildcard. Needs CAP_NET_ADMIN in the socket's
//! network namespace and `CONFIG_INET_DIAG_DESTROY`; TIME_WAIT sockets Linux 6.0+.
//!
//! The request encoder and the answer decoder are pure and tested on bytes; the I/O is
//! the thin [`Destroyer`] on the socket [`super::netlink::open_socket`] opens.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use super::netlink::{self, NetlinkError, NLMSG_ERROR, NLMSG_HDRLEN, NLM_F_REQUEST};
use crate::model::{Protocol, Socket};

/// `SOCK_DESTROY` (include/uapi/linux/sock_diag.h).
const SOCK_DESTROY: u16 = 21;
const NLM_F_ACK: u16 = 0x4;
/// `struct inet_diag_req_v2`.
const REQ_V2_LEN: usize = 56;
/// How long to wait for the kernel's answer: it is queued before `sendto` returns,
/// so this only bounds a kernel that never answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the kernel did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// The socket was destroyed.
    Done,
    /// No socket has this tuple any more (its timer ran out meanwhile): `ENOENT`.
    Gone,
    /// Another socket has this tuple now (another cookie): it was left alone, `ESTALE`.
    Replaced,
}

#[derive(Debug, thiserror::Error)]
pub enum DestroyError {
    #[error("{0}")]
    Open(#[from] NetlinkError),
    #[error(
        "the socket has no cookie (the socket source gave none), so it cannot be named exactly"
    )]
    NoCookie,
    #[error("sending the SOCK_DESTROY request: {0}")]
    Send(#[source] io::Error),
    #[error("reading the kernel's answer to SOCK_DESTROY: {0}")]
    Recv(#[source] io::Error),
    #[error("the kernel answered SOCK_DESTROY with {}", io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
    #[error("malformed answer to SOCK_DESTROY: {0}")]
    Malformed(&'static str),
}

impl DestroyError {
    /// The kernel's errno, when the kernel answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DestroyError::Kernel(e) => Some(*e),
            _ => None,
        }
    }
}

/// The request that destroys `s`: nlmsghdr + `inet_diag_req_v2` naming the socket by
/// family, protocol, ports, addresses, bound device and cookie. Pure.
pub fn encode_destroy(seq: u32, s: &Socket) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_V2_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    let family = match s.local.ip() {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    } as u8;
    let proto = match s.protocol {
        Protocol::Tcp => libc::IPPROTO_TCP,
        Protocol::Udp => libc::IPPROTO_UDP,
    } as u8;
    // family, protocol, ext, pad; states (unused by the exact lookup: the state's bit).
    b.extend_from_slice(&[family, proto, 0, 0]);
    b.extend_from_slice(&netlink::state_bit(s.state).to_ne_bytes());
    // struct inet_diag_sockid: sport, dport (network order), src[4], dst[4], if, cookie[2].
    b.extend_from_slice(&s.local.port().to_be_bytes());
    b.extend_from_slice(&s.remote.port().to_be_bytes());
    for ip in [s.local.ip(), s.remote.ip()] {
        let mut a = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => a.copy_from_slice(&v6.octets()),
        }
        b.extend_from_slice(&a);
    }
    b.extend_from_slice(&s.ifindex.unwrap_or(0).to_ne_bytes());
    // Two host-order u32, low word first, as sock_diag reports it.
    b.extend_from_slice(&(s.cookie as u32).to_ne_bytes());
    b.extend_from_slice(&((s.cookie >> 32) as u32).to_ne_bytes());
    b
}

/// The errno in the kernel's answer to request `seq` (0: done). Pure.
///
/// # Errors
/// When the answer is not an `NLMSG_ERROR` for `seq`.
pub fn decode_answer(buf: &[u8], seq: u32) -> Result<i32, &'static str> {
    if buf.len() < NLMSG_HDRLEN + 4 {
        return Err("shorter than a netlink error message");
    }
    let u32_at = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let len = u32_at(0) as usize;
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if len < NLMSG_HDRLEN + 4 || len > buf.len() {
        return Err("message length out of bounds");
    }
    if ty != NLMSG_ERROR {
        return Err("not an NLMSG_ERROR message");
    }
    if u32_at(8) != seq {
        return Err("answer to another request (sequence number)");
    }
    let error = u32_at(NLMSG_HDRLEN) as i32;
    if error > 0 {
        return Err("positive error code");
    }
    Ok(-error)
}

/// A sock_diag socket that destroys sockets one request at a time.
pub struct Destroyer {
    fd: OwnedFd,
    seq: u32,
}

impl Destroyer {
    /// # Errors
    /// When the kernel refuses a NETLINK_SOCK_DIAG socket.
    pub fn open() -> Result<Self, DestroyError> {
        let fd = netlink::open_socket()?;
        let tv = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads a timeval of the given size from `tv`, which lives
        // for the call; the fd is open.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(DestroyError::Recv(io::Error::last_os_error()));
        }
        Ok(Destroyer { fd, seq: 0 })
    }

    /// Destroys `s` if it still is the socket that was read (same tuple, same cookie).
    ///
    /// # Errors
    /// A socket without a cookie; the kernel's refusal (EPERM without CAP_NET_ADMIN,
    /// EOPNOTSUPP without `CONFIG_INET_DIAG_DESTROY` or for TIME_WAIT before 6.0).
    pub fn destroy(&mut self, s: &Socket) -> Result<Destroyed, DestroyError> {
        if s.cookie == 0 {
            return Err(DestroyError::NoCookie);
        }
        self.seq = self.seq.wrapping_add(1);
        let msg = encode_destroy(self.seq, s);
        netlink::send_to_kernel(&self.fd, &msg).map_err(DestroyError::Send)?;
        // An error answer echoes the request (88 bytes) after its code.
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: buf is a valid writable buffer of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DestroyError::Recv(e));
            }
            return match decode_answer(&buf[..n as usize], self.seq) {
                Ok(0) => Ok(Destroyed::Done),
                Ok(libc::ENOENT) => Ok(Destroyed::Gone),
                Ok(libc::ESTALE) => Ok(Destroyed::Replaced),
                Ok(errno) => Err(DestroyError::Kernel(errno)),
                Err(why) => Err(DestroyError::Malformed(why)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SocketFlags, State, Tri};

    fn sock(local: &str, remote: &str, cookie: u64, ifindex: u32) -> Socket {
        Socket {
            protocol: Protocol::Tcp,
            state: State::TimeWait,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: 0,
            inode: 0,
            ifindex: Some(ifindex),
            expires_ms: Some(1000),
            v6only: Tri::Unknown,
            flags: SocketFlags::default(),
            count: 1,
            cookie,
        }
    }

    #[test]
    fn ipv4_request_bytes() {
        let s = sock(
            "127.0.0.1:8080",
            "127.0.0.2:40000",
            0x1122_3344_5566_7788,
            3,
        );
        let b = encode_destroy(7, &s);
        let mut want = Vec::new();
        want.extend_from_slice(&72u32.to_ne_bytes());
        want.extend_from_slice(&21u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_ACK
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 6, 0, 0]); // AF_INET, IPPROTO_TCP
        want.extend_from_slice(&(1u32 << 6).to_ne_bytes()); // TCPF_TIME_WAIT
        want.extend_from_slice(&[0x1f, 0x90, 0x9c, 0x40]); // 8080, 40000 big-endian
        want.extend_from_slice(&[127, 0, 0, 1]);
        want.extend_from_slice(&[0; 12]);
        want.extend_from_slice(&[127, 0, 0, 2]);
        want.extend_from_slice(&[0; 12]);
        want.extend_from_slice(&3u32.to_ne_bytes());
        want.extend_from_slice(&0x5566_7788u32.to_ne_bytes());
        want.extend_from_slice(&0x1122_3344u32.to_ne_bytes());
        assert_eq!(b, want);
    }

    #[test]
    fn ipv6_and_mapped_requests_carry_all_16_bytes() {
        let s = sock("[::ffff:10.0.0.1]:443", "[::ffff:10.0.0.9]:5555", 9, 0);
        let b = encode_destroy(1, &s);
        assert_eq!(b.len(), 72);
        assert_eq!(&b[16..18], &[10, 6]); // AF_INET6, TCP
        assert_eq!(&b[24..28], &[0x01, 0xbb, 0x15, 0xb3]);
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(&b[28..44], &mapped);
        mapped[15] = 9;
        assert_eq!(&b[44..60], &mapped);
        assert_eq!(&b[60..64], &0u32.to_ne_bytes());
        assert_eq!(&b[64..68], &9u32.to_ne_bytes());
        assert_eq!(&b[68..72], &0u32.to_ne_bytes());
        let s = sock("[2001:db8::1]:443", "[2001:db8::2]:5555", 1, 0);
        let b = encode_destroy(1, &s);
        assert_eq!(
            &b[28..44],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    fn answer(seq: u32, error: i32, ty: u16, len: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&len.to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&error.to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]); // the echoed request header
        b
    }

    #[test]
    fn answers_decode_to_errno_or_an_error() {
        assert_eq!(decode_answer(&answer(3, 0, 2, 36), 3), Ok(0));
        assert_eq!(decode_answer(&answer(3, -1, 2, 36), 3), Ok(libc::EPERM));
        assert_eq!(
            decode_answer(&answer(3, -95, 2, 36), 3),
            Ok(libc::EOPNOTSUPP)
        );
        assert!(decode_answer(&answer(4, 0, 2, 36), 3).is_err(), "other seq");
        assert!(
            decode_answer(&answer(3, 0, 3, 36), 3).is_err(),
            "NLMSG_DONE"
        );
        assert!(decode_answer(&answer(3, 0, 2, 400), 3).is_err(), "length");
        assert!(decode_answer(&answer(3, 5, 2, 36), 3).is_err(), "positive");
        assert!(decode_answer(&[0u8; 8], 3).is_err(), "short");
    }
}
