//! The raw sock_diag dump: the floor every reader is compared with, and the census of the
//! socket table a phase measures.

use std::io;
use std::os::fd::AsRawFd;

use bindwatch::model::{Protocol, State};
use bindwatch::source::netlink::{Request, ALL_STATES};

/// The floor: a dump loop that only counts messages (no decoding into sockets).
pub struct RawDiag {
    pub fd: std::os::fd::OwnedFd,
    pub buf: Vec<u8>,
}

impl RawDiag {
    /// A plain socket as root opens it (what `ss` and node_exporter use).
    pub fn open() -> RawDiag {
        // SAFETY: socket(2); the fd lives as long as RawDiag.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 4) };
        assert!(fd >= 0, "netlink socket: {}", io::Error::last_os_error());
        RawDiag {
            // SAFETY: a fresh descriptor nothing else owns.
            fd: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
            buf: vec![0u8; 64 * 1024],
        }
    }

    /// The socket as bindwatch opens it (without CAP_NET_ADMIN, so the kernel
    /// leaves out attributes): the floor of bindwatch's own dump.
    pub fn open_as_bindwatch() -> RawDiag {
        RawDiag {
            fd: bindwatch::source::netlink::open_socket().expect("netlink socket"),
            buf: vec![0u8; 64 * 1024],
        }
    }

    /// One dump; `states` gets a count per TCP state byte when given.
    pub fn dump(&mut self, req: Request, mut states: Option<&mut [u64; 16]>) -> u64 {
        let msg = req.encode(1);
        // SAFETY: a zeroed sockaddr_nl is the kernel's address.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and sa outlive the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        assert!(n >= 0, "sendto: {}", io::Error::last_os_error());
        let mut count = 0;
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            assert!(n > 0, "recv: {}", io::Error::last_os_error());
            let b = &self.buf[..n as usize];
            let mut off = 0;
            while off + 16 <= b.len() {
                let len = u32::from_ne_bytes(b[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes([b[off + 4], b[off + 5]]);
                match ty {
                    3 => return count, // NLMSG_DONE
                    2 => panic!("netlink error in dump"),
                    _ => {
                        count += 1;
                        if let Some(st) = states.as_deref_mut() {
                            st[(b[off + 17] & 15) as usize] += 1;
                        }
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }

    pub fn one_walk(&mut self) -> u64 {
        self.dump(tcp_req(libc::AF_UNSPEC), None)
    }

    pub fn two_walk(&mut self) -> u64 {
        self.dump(tcp_req(libc::AF_INET), None) + self.dump(tcp_req(libc::AF_INET6), None)
    }

    /// Sockets by state (one-walk), for reporting the population actually measured.
    pub fn census(&mut self) -> Census {
        let mut st = [0u64; 16];
        let total = self.dump(tcp_req(libc::AF_UNSPEC), Some(&mut st));
        Census {
            total,
            listen: st[State::Listen as usize],
            established: st[State::Established as usize],
            time_wait: st[State::TimeWait as usize],
        }
    }
}

pub fn tcp_req(family: i32) -> Request {
    Request {
        protocol: Protocol::Tcp,
        family: family as u8,
        states: ALL_STATES,
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Census {
    pub total: u64,
    pub listen: u64,
    pub established: u64,
    pub time_wait: u64,
}

impl std::fmt::Display for Census {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} TCP sockets ({} listen, {} established, {} time_wait)",
            self.total, self.listen, self.established, self.time_wait
        )
    }
}
