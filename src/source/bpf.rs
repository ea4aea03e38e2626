//! The BPF socket-iterator source: `bpf/sockiter.bpf.c` (`iter/tcp`, `iter/udp`), built
//! by `scripts/build-bpf.sh`, committed and embedded here, loaded with aya.
//!
//! Each socket of the namespace the iterator is created in comes back as one 72-byte
//! record (`struct sockrec`), read in large chunks and decoded in place. Unlike
//! sock_diag, the record carries SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY for every
//! socket, also TIME_WAIT and orphans that have no file for pidfd_getfd to reach.
//!
//! Loading is [`bpfload::load`], shared with the bind tracer.

use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use aya::programs::Iter;
use aya::Ebpf;

use super::bpfload::{self, Loaded};

use super::records::{
    self, Narrow, SockRec, REC_FLAGS_KNOWN, REC_LITE, REC_REUSEADDR, REC_REUSEPORT, REC_TIMER,
    REC_V6ONLY,
};
use crate::model::{Protocol, Socket, SocketFlags, State, Tri};

/// The compiled `bpf/sockiter.bpf.c` (tests/bpf_objects.rs checks it is built from it).
pub static SOCKITER_OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/sockiter.bpf.o");

/// Size of `struct sockrec`.
pub const RECORD_LEN: usize = std::mem::size_of::<SockRec>();

/// One read(2) of the iterator. The kernel fills at most its seq_file buffer (8 pages)
/// per read; a larger buffer lets it hand over several of those when it can.
const CHUNK: usize = 256 * 1024;

/// The UDP walk's buffer: one read(2) returns at most the kernel's seq_file buffer
/// (8 pages), so a larger one would only sit idle.
const UDP_CHUNK: usize = 32 * 1024;

/// A listeners-only walk kept for the rest of the table this long at most.
const PENDING_MAX_AGE: Duration = Duration::from_secs(2);

/// What this object is called in errors.
const OBJECT_NAME: &str = "the BPF socket iterator";

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// A step of loading a BPF object (see [`bpfload::load`]).
    #[error("loading {object} ({step}): {reason}")]
    Load {
        object: &'static str,
        step: String,
        reason: String,
    },
    #[error("reading the {protocol} socket iterator: {source}")]
    Read {
        protocol: Protocol,
        #[source]
        source: io::Error,
    },
    #[error("the {protocol} socket iterator ended inside a record ({left} bytes left over)")]
    Truncated { protocol: Protocol, left: usize },
}

/// Decodes one `struct sockrec`; `None` for a family or state this crate does not know.
#[inline]
pub fn decode_record(r: &SockRec, protocol: Protocol) -> Option<Socket> {
    let family = i32::from(r.family);
    let state = State::from_kernel(r.state)?;
    let f = r.flags;
    let addr = |a: &[u8; 16]| -> Option<IpAddr> {
        match family {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
            _ => None,
        }
    };
    let local = addr(&r.laddr)?;
    let remote = addr(&r.raddr)?;
    // A lite record's flags are unknown (REC_FLAGS_KNOWN unset), its inode 0.
    let known = f & REC_FLAGS_KNOWN != 0 && f & REC_LITE == 0;
    let bit = |b: u8| {
        if known {
            Tri::from_bool(f & b != 0)
        } else {
            Tri::Unknown
        }
    };
    Some(Socket {
        protocol,
        state,
        local: SocketAddr::new(local, r.lport),
        remote: SocketAddr::new(remote, r.rport),
        uid: r.uid,
        inode: r.inode,
        ifindex: Some(r.ifindex),
        expires_ms: (f & REC_TIMER != 0).then_some(u64::from(r.expires_ms)),
        // As sock_diag: IPV6_V6ONLY is a property of IPv6 sockets only.
        v6only: if family == libc::AF_INET6 {
            bit(REC_V6ONLY)
        } else {
            Tri::Unknown
        },
        flags: SocketFlags {
            reuseaddr: bit(REC_REUSEADDR),
            reuseport: bit(REC_REUSEPORT),
        },
        count: 1,
        cookie: r.cookie,
    })
}

/// A TCP walk stopped after the listeners (see [`SockIter::listeners`]): the iterator
/// walks the listening hash first, so the rest of the table follows from here in the
/// same poll. Its undecoded bytes are `buf[start..end]` of the TCP buffer, which no other
/// dump touches (UDP dumps read into a buffer of their own), and the value that holds a
/// `Parked` (`source::Listened`) borrows the source exclusively, so nothing else can
/// walk TCP before it resumes or drops it.
pub(super) struct Parked {
    file: File,
    start: usize,
    end: usize,
    at: Instant,
}

/// The loaded iterator programs of one network namespace's source.
pub struct SockIter {
    ebpf: Ebpf,
    /// The TCP walk's read buffer.
    buf: Vec<u8>,
    /// The UDP walk's: a poll reads the UDP table while a TCP walk is parked.
    udp_buf: Vec<u8>,
    /// Whether listeners always came first so far (see [`Parked`]); when a walk shows
    /// otherwise, listener dumps walk the whole table.
    listeners_first: bool,
    /// The program's `narrowing` map is set (see [`SockIter::narrow`]); every new TCP
    /// iterator resets it first, so a narrowing only ever applies to the walk it was
    /// set for.
    narrowed: bool,
    /// The kernel's HZ was known at load, so records carry timers.
    timers: bool,
}

/// Where a walk starts: a fresh iterator, or the rest of a parked TCP walk.
enum Start {
    Fresh,
    Parked(Parked),
}

impl SockIter {
    /// Loads both programs and walks the UDP table once, so anything that stops the
    /// source (seccomp, capabilities, BTF, verifier) shows here, not at the first poll.
    ///
    /// # Errors
    /// Every reason the programs cannot load or run.
    pub fn open(procfs: &Path, rootfs: &Path) -> Result<Self, BpfError> {
        let hz = super::hz::kernel_hz(procfs, rootfs);
        if hz.is_none() {
            static NO_HZ_LOGGED: std::sync::Once = std::sync::Once::new();
            NO_HZ_LOGGED.call_once(|| {
                tracing::warn!(
                    procfs = %procfs.display(),
                    rootfs = %rootfs.display(),
                    "the kernel's HZ is unknown (no config.gz, no /boot/config-RELEASE, \
                     no readable timer_list): the bpf source reports no TIME_WAIT or orphan \
                     timers, so no clear times (bindwatch_capability{{capability=\"socket_timers\"}} 0)"
                )
            });
        }
        let timers = hz.is_some();
        let Loaded { mut ebpf, btf } =
            bpfload::load(SOCKITER_OBJECT, OBJECT_NAME, &[("hz", hz.unwrap_or(0))])?;
        for (name, kind) in [("sockiter_tcp", "tcp"), ("sockiter_udp", "udp")] {
            bpfload::program::<Iter>(&mut ebpf, OBJECT_NAME, name)?
                .load(kind, &btf)
                .map_err(|e| bpfload::failed(OBJECT_NAME, format!("program {name}"), &e))?;
        }
        bpfload::release_btf(btf);
        let mut it = SockIter {
            ebpf,
            buf: vec![0; CHUNK],
            udp_buf: vec![0; UDP_CHUNK],
            listeners_first: true,
            narrowed: false,
            timers,
        };
        it.dump(Protocol::Udp, u32::MAX, &mut |_| {})?;
        Ok(it)
    }

    /// Whether the records carry TIME_WAIT and orphan timers (the kernel's HZ was
    /// known at load).
    pub fn timers_known(&self) -> bool {
        self.timers
    }

    fn set_narrow(&mut self, n: &Narrow) -> Result<(), BpfError> {
        let err = |e: &dyn std::error::Error| {
            bpfload::failed(OBJECT_NAME, "setting the narrowing map", e)
        };
        let map = self
            .ebpf
            .map_mut("narrowing")
            .ok_or_else(|| BpfError::Load {
                object: OBJECT_NAME,
                step: "the narrowing map".to_string(),
                reason: "not in the embedded object".to_string(),
            })?;
        let mut arr: aya::maps::Array<_, Narrow> =
            aya::maps::Array::try_from(map).map_err(|e| err(&e))?;
        arr.set(0, *n, 0).map_err(|e| err(&e))
    }

    /// Narrows the rest of the current TCP walk (a fresh one, or the one
    /// [`SockIter::listeners`] parked): from the next socket the kernel visits, only listeners and sockets whose
    /// local port has its bit in `wanted` (a 65,536-bit set, 1,024 words) get a full
    /// record; every other socket comes back with its family, state and local port, and
    /// its addresses and remote port when the local port is in `ephemeral` (inclusive).
    /// Records made before this call are full, which is never less. A no-op when
    /// `wanted` is not 1,024 words.
    ///
    /// # Errors
    /// When the map cannot be written.
    fn narrow(&mut self, wanted: &[u64], ephemeral: (u16, u16)) -> Result<(), BpfError> {
        let Ok(words) = <[u64; 1024]>::try_from(wanted) else {
            return Ok(());
        };
        // Marked first: a failed write may still have reached the map.
        self.narrowed = true;
        self.set_narrow(&Narrow {
            narrow: 1,
            eph_lo: ephemeral.0,
            eph_hi: ephemeral.1,
            wanted: words,
        })
    }

    /// Every socket gets a full record again.
    fn widen(&mut self) -> Result<(), BpfError> {
        if self.narrowed {
            self.set_narrow(&Narrow {
                narrow: 0,
                eph_lo: 0,
                eph_hi: 0,
                wanted: [0; 1024],
            })?;
            self.narrowed = false;
        }
        Ok(())
    }

    /// A fresh iterator over the calling thread's network namespace.
    fn iterator(&mut self, protocol: Protocol) -> Result<File, BpfError> {
        if protocol == Protocol::Tcp {
            // A narrowing set for an earlier walk must not thin this one.
            self.widen()?;
        }
        let name = match protocol {
            Protocol::Tcp => "sockiter_tcp",
            Protocol::Udp => "sockiter_udp",
        };
        let load = |e: &dyn std::error::Error| {
            bpfload::failed(OBJECT_NAME, format!("attaching {name}"), e)
        };
        let prog = bpfload::program::<Iter>(&mut self.ebpf, OBJECT_NAME, name)?;
        let id = prog.attach().map_err(|e| load(&e))?;
        let link = prog.take_link(id).map_err(|e| load(&e))?;
        link.into_file().map_err(|e| load(&e))
    }

    /// Streams every socket of `protocol` whose state bit (`1 << state`) is in `states`,
    /// from a fresh iterator. A TCP dump of listeners only stops once the walk has left
    /// the listening hash (while listeners come first).
    ///
    /// # Errors
    /// When the iterator cannot be created or read.
    pub fn dump<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        protocol: Protocol,
        states: u32,
        sink: &mut F,
    ) -> Result<(), BpfError> {
        self.dump_narrowed(protocol, states, None, sink)
    }

    /// [`SockIter::dump`], with the TCP walk narrowed (see `SockIter::narrow`) from its
    /// first read on when `narrow` is given: its sockets on ports outside `wanted` come
    /// as lite records (family, state, local port; addresses where the port is in the
    /// ephemeral range) with unknown flags and no inode.
    ///
    /// # Errors
    /// As [`SockIter::dump`].
    pub fn dump_narrowed<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        protocol: Protocol,
        states: u32,
        narrow: Option<(&[u64], (u16, u16))>,
        sink: &mut F,
    ) -> Result<(), BpfError> {
        let listen = 1u32 << State::Listen as u32;
        let stop_early = protocol == Protocol::Tcp && states == listen;
        // A walk stopped after the listeners is simply closed here.
        self.walk(protocol, states, Start::Fresh, narrow, stop_early, sink)
            .map(drop)
    }

    /// The first half of one TCP walk: its listeners. The walk stops once it has left
    /// the listening hash and is handed back parked, for [`SockIter::rest`] to finish,
    /// so one poll walks the table once; `None` when it read to the end (listeners did
    /// not come first, or nothing followed them).
    ///
    /// # Errors
    /// As [`SockIter::dump`].
    pub(super) fn listeners<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        sink: &mut F,
    ) -> Result<Option<Parked>, BpfError> {
        let listen = 1u32 << State::Listen as u32;
        self.walk(Protocol::Tcp, listen, Start::Fresh, None, true, sink)
    }

    /// The second half of the TCP walk [`SockIter::listeners`] parked: every socket but
    /// the listeners, narrowed from here on when `narrow` is given (records already read
    /// are whole, which is never less). A fresh walk when nothing is parked or it is
    /// older than [`PENDING_MAX_AGE`].
    ///
    /// # Errors
    /// As [`SockIter::dump`].
    pub(super) fn rest<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        parked: Option<Parked>,
        narrow: Option<(&[u64], (u16, u16))>,
        sink: &mut F,
    ) -> Result<(), BpfError> {
        let states = !(1u32 << State::Listen as u32);
        let from = match parked {
            Some(p) if p.at.elapsed() < PENDING_MAX_AGE => Start::Parked(p),
            _ => Start::Fresh,
        };
        self.walk(Protocol::Tcp, states, from, narrow, false, sink)
            .map(drop)
    }

    /// One walk: decodes whole records in place and streams those whose state is in
    /// `states`; with `stop_early` (TCP listeners only, while they come first), stops at
    /// the first other record and returns the walk parked there.
    fn walk<F: FnMut(&Socket) + ?Sized>(
        &mut self,
        protocol: Protocol,
        states: u32,
        from: Start,
        narrow: Option<(&[u64], (u16, u16))>,
        stop_early: bool,
        sink: &mut F,
    ) -> Result<Option<Parked>, BpfError> {
        let (mut file, mut start, mut end, mut seen_other) = match from {
            Start::Parked(p) => (p.file, p.start, p.end, true),
            Start::Fresh => (self.iterator(protocol)?, 0, 0, false),
        };
        if let (Protocol::Tcp, Some((wanted, ephemeral))) = (protocol, narrow) {
            // After the iterator exists (a new one resets any narrowing).
            self.narrow(wanted, ephemeral)?;
        }
        let stop_early = stop_early && self.listeners_first;
        let buf = match protocol {
            Protocol::Tcp => &mut self.buf,
            Protocol::Udp => &mut self.udp_buf,
        };
        loop {
            // Decode whole records in place.
            while let Some(rec) = records::read::<SockRec>(&buf[start..end]) {
                let is_listen = rec.state == State::Listen as u8;
                if stop_early && !is_listen {
                    return Ok(Some(Parked {
                        file,
                        start,
                        end,
                        at: Instant::now(),
                    }));
                }
                if !is_listen {
                    seen_other = true;
                } else if seen_other && protocol == Protocol::Tcp && self.listeners_first {
                    tracing::warn!(
                        "the TCP socket iterator returned a listener after other sockets; \
                         listener dumps walk the whole table from now on"
                    );
                    self.listeners_first = false;
                }
                start += RECORD_LEN;
                if states & (1u32 << (u32::from(rec.state) & 31)) == 0 {
                    continue;
                }
                if let Some(s) = decode_record(&rec, protocol) {
                    sink(&s);
                }
            }
            // Keep a partial record (never seen: the kernel writes whole records).
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            let n = read_retrying(&mut file, &mut buf[end..], protocol)?;
            if n == 0 {
                return if end == 0 {
                    Ok(None)
                } else {
                    Err(BpfError::Truncated {
                        protocol,
                        left: end,
                    })
                };
            }
            end += n;
        }
    }
}

/// One read(2) of an iterator, retried when a signal interrupts it.
fn read_retrying(file: &mut File, buf: &mut [u8], protocol: Protocol) -> Result<usize, BpfError> {
    loop {
        match file.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(BpfError::Read {
                    protocol,
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(family: u8, state: u8, flags: u8) -> SockRec {
        SockRec {
            family,
            state,
            flags,
            lport: 5000,
            rport: 40000,
            ifindex: 3,
            uid: 1000,
            inode: 4242,
            expires_ms: 59_000,
            cookie: 77,
            ..SockRec::default()
        }
    }

    #[test]
    fn decodes_v4_time_wait_with_flags_and_timer() {
        let mut r = rec(
            2,
            6,
            REC_FLAGS_KNOWN | REC_REUSEADDR | REC_TIMER | REC_V6ONLY,
        );
        r.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.raddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        let s = decode_record(&r, Protocol::Tcp).expect("decodes");
        assert_eq!(s.state, State::TimeWait);
        assert_eq!(s.local, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(s.remote, "127.0.0.2:40000".parse().unwrap());
        assert_eq!(s.flags.reuseaddr, Tri::True);
        assert_eq!(s.flags.reuseport, Tri::False);
        // IPv4: V6ONLY is not a property of the socket.
        assert_eq!(s.v6only, Tri::Unknown);
        assert_eq!(s.expires_ms, Some(59_000));
        assert_eq!((s.uid, s.inode, s.ifindex), (1000, 4242, Some(3)));
        assert_eq!(s.cookie, 77);
    }

    #[test]
    fn decodes_v6_and_unknown_flags_of_request_sockets() {
        let mut r = rec(10, 10, REC_FLAGS_KNOWN | REC_V6ONLY | REC_REUSEPORT);
        r.laddr = Ipv6Addr::LOCALHOST.octets();
        let s = decode_record(&r, Protocol::Tcp).expect("decodes");
        assert_eq!(s.local, "[::1]:5000".parse().unwrap());
        assert_eq!(s.v6only, Tri::True);
        assert_eq!(s.flags.reuseport, Tri::True);
        assert_eq!(s.expires_ms, None);
        let s = decode_record(&rec(10, 3, REC_V6ONLY), Protocol::Tcp).expect("decodes");
        assert_eq!(s.flags, SocketFlags::default());
        assert_eq!(s.v6only, Tri::Unknown);
    }

    #[test]
    fn unknown_family_or_state_is_skipped() {
        assert!(decode_record(&rec(1, 6, 0), Protocol::Tcp).is_none());
        assert!(decode_record(&rec(2, 0, 0), Protocol::Tcp).is_none());
        assert!(decode_record(&rec(2, 200, 0), Protocol::Tcp).is_none());
    }

    #[test]
    fn the_embedded_object_is_an_elf_bpf_object() {
        // EM_BPF = 247 at e_machine (offset 18).
        assert_eq!(&SOCKITER_OBJECT[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([SOCKITER_OBJECT[18], SOCKITER_OBJECT[19]]),
            247
        );
    }
}
