//! NETLINK_SOCK_DIAG (INET_DIAG) dumps, decoded straight from the receive buffer.
//!
//! Why our own code and not `netstat2` or a netlink crate: we need fields those
//! crates drop (`idiag_expires`, `idiag_if`, the V6ONLY attribute), the in-kernel
//! state filter, the one-walk TCP request, and a decoder that streams each message to
//! a callback without allocating per socket (a million sockets per poll). The
//! decoding is pure ([`decode_batch`]) and tested on captured bytes; the socket I/O
//! is the thin [`NetlinkDiag`] wrapper.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::model::{Protocol, Socket, SocketFlags, State, Tri};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Legacy request type; its dump walks the TCP tables once for both families
/// (`inet_diag_dump_compat` sets the family to AF_UNSPEC).
const TCPDIAG_GETSOCK: u16 = 18;
pub(super) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const INET_DIAG_SKV6ONLY: u16 = 11;

pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;
/// Large enough for the kernel's biggest dump skb (32 KiB) so one recv is one batch.
const RECV_BUF: usize = 64 * 1024;

/// Every state bit, including TCPF_BOUND_INACTIVE (bit 13, Linux 6.8+).
pub const ALL_STATES: u32 = 0xffff_ffff;

pub fn state_bit(s: State) -> u32 {
    1 << (s as u32)
}

/// What went wrong talking to sock_diag.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening the NETLINK_SOCK_DIAG socket: {0}")]
    Open(#[source] io::Error),
    #[error("sending the {what} dump request: {source}")]
    Send {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("receiving the {what} dump: {source}")]
    Recv {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel answered the {what} dump with error {errno} ({})", io::Error::from_raw_os_error(*.errno))]
    Kernel { what: &'static str, errno: i32 },
    #[error("the {what} dump changed while it was read (NLM_F_DUMP_INTR)")]
    Interrupted { what: &'static str },
    #[error("malformed {what} dump message at byte {offset}: {reason}")]
    Malformed {
        what: &'static str,
        offset: usize,
        reason: &'static str,
    },
}

impl NetlinkError {
    /// Permission or support problems that make falling back to /proc sensible.
    pub fn is_unavailable(&self) -> bool {
        let errno = match self {
            NetlinkError::Open(e) | NetlinkError::Send { source: e, .. } => e.raw_os_error(),
            NetlinkError::Recv { source: e, .. } => e.raw_os_error(),
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        };
        matches!(
            errno,
            Some(libc::EPERM)
                | Some(libc::EACCES)
                | Some(libc::EPROTONOSUPPORT)
                | Some(libc::EAFNOSUPPORT)
                | Some(libc::ENOENT)
                | Some(libc::EOPNOTSUPP)
        )
    }
}

/// One dump request.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub protocol: Protocol,
    /// `AF_INET`, `AF_INET6`, or `AF_UNSPEC` for the one-walk TCP dump.
    pub family: u8,
    pub states: u32,
}

impl Request {
    fn what(&self) -> &'static str {
        match (self.protocol, self.family as i32) {
            (Protocol::Tcp, libc::AF_INET) => "tcp/ipv4",
            (Protocol::Tcp, libc::AF_INET6) => "tcp/ipv6",
            (Protocol::Tcp, _) => "tcp",
            (Protocol::Udp, libc::AF_INET) => "udp/ipv4",
            (Protocol::Udp, libc::AF_INET6) => "udp/ipv6",
            (Protocol::Udp, _) => "udp",
        }
    }

    /// The request message bytes (nlmsghdr + inet_diag_req_v2 or legacy inet_diag_req).
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let proto = match self.protocol {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        };
        let legacy = self.family == libc::AF_UNSPEC as u8;
        let body_len = if legacy { 60 } else { 56 };
        let len = NLMSG_HDRLEN + body_len;
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        let ty = if legacy {
            TCPDIAG_GETSOCK
        } else {
            SOCK_DIAG_BY_FAMILY
        };
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        if legacy {
            // struct inet_diag_req: family, src_len, dst_len, ext, id, states, dbs.
            b.extend_from_slice(&[0, 0, 0, 0]);
            b.extend_from_slice(&[0u8; 48]);
            b.extend_from_slice(&self.states.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
        } else {
            // struct inet_diag_req_v2: family, protocol, ext, pad, states, id.
            b.extend_from_slice(&[self.family, proto, 0, 0]);
            b.extend_from_slice(&self.states.to_ne_bytes());
            b.extend_from_slice(&[0u8; 48]);
        }
        b
    }
}

/// `INET_DIAG_REQ_BYTECODE`: a filter program run by the kernel on every socket.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_BC_S_EQ` (Linux 4.16+): local port equals the next op's `no`.
const INET_DIAG_BC_S_EQ: u8 = 11;

impl Request {
    /// [`Request::encode`] with a bytecode filter that keeps only sockets whose local
    /// port is `port`, so the dump costs nothing per socket of other ports (as
    /// `ss sport = :PORT` does). Needs a per-family request (`family` not AF_UNSPEC).
    pub fn encode_port(&self, seq: u32, port: u16) -> Vec<u8> {
        let mut b = self.encode(seq);
        // struct inet_diag_bc_op { code, yes, no }: S_EQ jumps 8 bytes (the end:
        // accept) when equal, 12 (past the end: reject) when not; the port rides in
        // the second op's `no`.
        let mut bc = Vec::with_capacity(8);
        bc.extend_from_slice(&[INET_DIAG_BC_S_EQ, 8]);
        bc.extend_from_slice(&12u16.to_ne_bytes());
        bc.extend_from_slice(&[0, 0]);
        bc.extend_from_slice(&port.to_ne_bytes());
        let attr_len = 4 + bc.len();
        b.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        b.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        b.extend_from_slice(&bc);
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b
    }
}

/// Progress of one dump after a batch was decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    More,
    Done,
}

/// Decodes one receive buffer of a dump, calling `sink` for each socket.
///
/// Pure: works on bytes, so tests feed it captured kernel output.
///
/// # Errors
/// NLMSG_ERROR, a negative NLMSG_DONE status, NLM_F_DUMP_INTR, or a truncated message.
// Generic over the sink (not `dyn`): the walk of a million sockets then inlines
// decoding into its closure, which measurably shortens a poll.
#[inline]
pub fn decode_batch<F: FnMut(&Socket) + ?Sized>(
    buf: &[u8],
    protocol: Protocol,
    what: &'static str,
    sink: &mut F,
) -> Result<Batch, NetlinkError> {
    walk_batch(buf, what, &mut |off, body| {
        if let Some(s) =
            decode_diag_msg(body, protocol).map_err(|reason| NetlinkError::Malformed {
                what,
                offset: off,
                reason,
            })?
        {
            sink(&s);
        }
        Ok(())
    })
}

/// Walks the netlink messages of one receive buffer of any sock_diag dump, handing
/// each data message's body (and its offset in `buf`) to `on_body`; the family's
/// own decoder reads the body (`decode_diag_msg` for inet, `source::unix` for unix).
///
/// Pure: works on bytes.
///
/// # Errors
/// NLMSG_ERROR, a negative NLMSG_DONE status, NLM_F_DUMP_INTR, a truncated message,
/// or whatever `on_body` returns.
#[inline]
pub fn walk_batch<F: FnMut(usize, &[u8]) -> Result<(), NetlinkError> + ?Sized>(
    buf: &[u8],
    what: &'static str,
    on_body: &mut F,
) -> Result<Batch, NetlinkError> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(NetlinkError::Malformed {
                what,
                offset: off,
                reason: "message length out of bounds",
            });
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(NetlinkError::Interrupted { what });
        }
        let body = &buf[off + NLMSG_HDRLEN..off + len];
        match ty {
            NLMSG_DONE => {
                // The payload is the dump's final status (0 or -errno).
                if body.len() >= 4 {
                    let status = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    if status < 0 {
                        return Err(NetlinkError::Kernel {
                            what,
                            errno: -status,
                        });
                    }
                }
                return Ok(Batch::Done);
            }
            NLMSG_ERROR => {
                let errno = if body.len() >= 4 {
                    -i32::from_ne_bytes([body[0], body[1], body[2], body[3]])
                } else {
                    libc::EIO
                };
                // An error of 0 is an ACK; a dump never asks for one, but it is harmless.
                if errno != 0 {
                    return Err(NetlinkError::Kernel { what, errno });
                }
            }
            _ => {
                on_body(off, body)?;
                if flags & NLM_F_MULTI == 0 {
                    return Ok(Batch::Done);
                }
            }
        }
        off += align4(len);
    }
    Ok(Batch::More)
}

/// Decodes one `inet_diag_msg` with its attributes. `Ok(None)` for families or states
/// we do not model (they are skipped rather than reported as garbage).
#[inline(always)]
pub fn decode_diag_msg(b: &[u8], protocol: Protocol) -> Result<Option<Socket>, &'static str> {
    if b.len() < DIAG_MSG_LEN {
        return Err("inet_diag_msg shorter than 72 bytes");
    }
    let family = b[0] as i32;
    let Some(state) = State::from_kernel(b[1]) else {
        return Ok(None);
    };
    let sport = u16::from_be_bytes([b[4], b[5]]);
    let dport = u16::from_be_bytes([b[6], b[7]]);
    let (src, dst) = match family {
        libc::AF_INET => (
            IpAddr::V4(Ipv4Addr::new(b[8], b[9], b[10], b[11])),
            IpAddr::V4(Ipv4Addr::new(b[24], b[25], b[26], b[27])),
        ),
        libc::AF_INET6 => (
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&b[8..24]).map_err(|_| "address")?,
            )),
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&b[24..40]).map_err(|_| "address")?,
            )),
        ),
        _ => return Ok(None),
    };
    let ifindex = u32_at(b, 40);
    let timer = b[2];
    let expires = u32_at(b, 52);
    let uid = u32_at(b, 64);
    let inode = u32_at(b, 68) as u64;
    // The kernel reports expires in ms for TIME_WAIT and for any running timer.
    let expires_ms = if timer != 0 || state == State::TimeWait {
        Some(expires as u64)
    } else {
        None
    };
    let mut v6only = Tri::Unknown;
    // The kernel reports V6ONLY only for IPv6 sockets in LISTEN or CLOSE (bound,
    // unconnected); other messages' attributes hold nothing we read, and skipping
    // them matters at a million messages per poll.
    let has_v6only = family == libc::AF_INET6
        && matches!(state, State::Listen | State::Close | State::BoundInactive);
    let mut off = if has_v6only { DIAG_MSG_LEN } else { b.len() };
    while off + 4 <= b.len() {
        let alen = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
        let aty = u16::from_ne_bytes([b[off + 2], b[off + 3]]) & 0x3fff;
        if alen < 4 || off + alen > b.len() {
            return Err("attribute length out of bounds");
        }
        if aty == INET_DIAG_SKV6ONLY && alen >= 5 {
            v6only = Tri::from_bool(b[off + 4] != 0);
        }
        off += align4(alen);
    }
    Ok(Some(Socket {
        protocol,
        state,
        local: SocketAddr::new(src, sport),
        remote: SocketAddr::new(dst, dport),
        uid,
        inode,
        ifindex: Some(ifindex),
        expires_ms,
        v6only,
        flags: SocketFlags::default(),
        count: 1,
        // inet_diag_sockid.idiag_cookie: two host-order u32, low word first
        // (sock_diag_save_cookie); a TIME_WAIT carries its connection's.
        cookie: u64::from(u32_at(b, 44)) | u64::from(u32_at(b, 48)) << 32,
    }))
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_NET_ADMIN: u32 = 12;

/// Runs `f` with CAP_NET_ADMIN out of the calling thread's effective set (when it
/// was in it), then puts it back. Capabilities are per thread, so no other thread
/// is affected. Any failure just runs `f` unchanged.
fn without_net_admin<T>(f: impl FnOnce() -> T) -> T {
    let hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut saved = [CapData::default(); 2];
    // SAFETY: capget with a v3 header and room for two data structs.
    let got = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &hdr as *const CapHeader,
            saved.as_mut_ptr(),
        )
    };
    let bit = 1u32 << CAP_NET_ADMIN;
    if got != 0 || saved[0].effective & bit == 0 {
        return f();
    }
    let mut lowered = saved;
    lowered[0].effective &= !bit;
    // SAFETY: capset reads two initialised `CapData` structs from `lowered`, which
    // lives here, and a header for this thread; it only lowers the effective set.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, lowered.as_ptr()) } != 0 {
        return f();
    }
    let r = f();
    // SAFETY: restores the effective set we had (a subset of the permitted set).
    unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, saved.as_ptr()) };
    r
}

/// Sends one request to the kernel (netlink port 0) on `fd`.
///
/// # Errors
/// The errno of `sendto`.
pub(crate) fn send_to_kernel(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_nl zeroed is the kernel's address (pid 0).
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and sa outlive the call; lengths are theirs.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A NETLINK_SOCK_DIAG socket as bindwatch dumps through it (also the floor the
/// benchmark compares against).
///
/// # Errors
/// When the kernel refuses the socket (no sock_diag, seccomp, netns limits).
pub fn open_socket() -> Result<OwnedFd, NetlinkError> {
    // The kernel adds attributes we never read (INET_DIAG_MARK, MD5 and ULP
    // info) to every socket's message when the requesting socket was opened with
    // CAP_NET_ADMIN; without it there is less to fill and copy (at 1M sockets the
    // saving is within run-to-run noise, docs/performance.md), and nothing
    // bindwatch reads needs it.
    let fd = without_net_admin(|| {
        // SAFETY: plain socket(2); the fd is owned immediately below.
        unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        }
    });
    if fd < 0 {
        return Err(NetlinkError::Open(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(fd)
}

/// An open NETLINK_SOCK_DIAG socket with its receive buffer, reused across dumps.
pub struct NetlinkDiag {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

impl NetlinkDiag {
    /// # Errors
    /// When the kernel refuses the socket (no sock_diag, seccomp, netns limits).
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(NetlinkDiag {
            fd: open_socket()?,
            buf: vec![0u8; RECV_BUF],
            seq: 0,
        })
    }

    /// Streams one dump to `sink`.
    ///
    /// # Errors
    /// See [`NetlinkError`]; `Interrupted` means the caller should restart its poll.
    pub fn dump<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        req: Request,
        sink: &mut F,
    ) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let msg = req.encode(self.seq);
        self.exchange(req, &msg, sink)
    }

    /// Streams the sockets of one protocol and family whose local port is `port`,
    /// filtered in the kernel ([`Request::encode_port`]).
    ///
    /// # Errors
    /// See [`NetlinkError`].
    pub fn dump_port<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        req: Request,
        port: u16,
        sink: &mut F,
    ) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let msg = req.encode_port(self.seq, port);
        self.exchange(req, &msg, sink)
    }

    /// Sends one request and decodes the answer up to NLMSG_DONE.
    fn exchange<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        req: Request,
        msg: &[u8],
        sink: &mut F,
    ) -> Result<(), NetlinkError> {
        let what = req.what();
        self.exchange_with(msg, what, &mut |buf| {
            decode_batch(buf, req.protocol, what, sink)
        })
    }

    /// Sends the request `msg` of any sock_diag family (its nlmsghdr sequence number
    /// from [`NetlinkDiag::next_seq`]) and hands each received buffer to `decode`
    /// (typically a [`walk_batch`] with the family's decoder) up to NLMSG_DONE.
    ///
    /// # Errors
    /// See [`NetlinkError`].
    pub fn dump_with<D: FnMut(&[u8]) -> Result<Batch, NetlinkError> + ?Sized>(
        &mut self,
        msg: &[u8],
        what: &'static str,
        decode: &mut D,
    ) -> Result<(), NetlinkError> {
        self.exchange_with(msg, what, decode)
    }

    /// The sequence number of the next request.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn exchange_with<D: FnMut(&[u8]) -> Result<Batch, NetlinkError> + ?Sized>(
        &mut self,
        msg: &[u8],
        what: &'static str,
        decode: &mut D,
    ) -> Result<(), NetlinkError> {
        send_to_kernel(&self.fd, msg).map_err(|source| NetlinkError::Send { what, source })?;
        loop {
            // SAFETY: buf is a valid writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Recv { what, source: e });
            }
            if n == 0 {
                return Err(NetlinkError::Malformed {
                    what,
                    offset: 0,
                    reason: "end of stream before NLMSG_DONE",
                });
            }
            match decode(&self.buf[..n as usize]) {
                Ok(Batch::More) => continue,
                Ok(Batch::Done) => return Ok(()),
                Err(e) => {
                    self.drain();
                    return Err(e);
                }
            }
        }
    }

    /// After an error mid-dump, the rest of that dump is still queued: read it away
    /// so the next request does not decode stale messages. Bounded by a non-blocking read.
    fn drain(&mut self) {
        loop {
            // SAFETY: as in dump().
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
