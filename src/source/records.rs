//! The records bindwatch's BPF programs share with user space, one Rust twin of each
//! struct of `bpf/include/records.h`: what the socket iterator writes ([`SockRec`])
//! and reads ([`Narrow`]), what the bind tracer writes to its ring buffer
//! ([`EventRec`], [`UnixEventRec`]), what the fd scanner writes ([`FdRec`]).
//!
//! Each type's size and field offsets are asserted at compile time here, and
//! `tests/bpf_records.rs` asserts the same numbers (and the flag constants) against
//! the C header with the BPF target's compiler: a change on either side alone fails
//! the build or that test. Records are read from byte buffers with [`read`], which
//! copies one record out whatever the buffer's alignment.

/// A type made only of integers and arrays of integers, `repr(C)`, without implicit
/// padding: every byte pattern of its size is a valid value, and every byte of a
/// value is initialised.
///
/// # Safety
/// Implement only for such types.
pub unsafe trait Plain: Copy + 'static {}

/// The record at the start of `bytes`; `None` when `bytes` is shorter than one.
#[inline]
pub fn read<T: Plain>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<T>() readable bytes; T: Plain, so any
    // bytes are a valid T; read_unaligned copies without an alignment requirement.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The bytes of a record, as the C program would write them (for tests and tools).
pub fn to_bytes<T: Plain>(t: &T) -> Vec<u8> {
    let mut out = vec![0u8; std::mem::size_of::<T>()];
    // SAFETY: `out` has size_of::<T>() bytes; T: Plain has no padding, so every byte
    // read from `t` is initialised; write_unaligned needs no alignment.
    unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast::<T>(), *t) };
    out
}

/// A layout as this crate compiled it: the C struct's name and size, and each
/// field's C name and offset. `tests/bpf_records.rs` checks them against the header.
#[derive(Debug)]
pub struct Layout {
    pub c_struct: &'static str,
    pub size: usize,
    pub fields: &'static [(&'static str, usize)],
}

/// Asserts a record's size and field offsets at compile time (the numbers are the
/// C header's, so a Rust-side change fails the build) and yields its [`Layout`].
macro_rules! layout {
    ($ty:ty, $c:literal, $size:literal, { $($field:ident @ $off:literal),* $(,)? }) => {{
        const _: () = {
            assert!(std::mem::size_of::<$ty>() == $size);
            $(assert!(std::mem::offset_of!($ty, $field) == $off);)*
        };
        Layout {
            c_struct: $c,
            size: std::mem::size_of::<$ty>(),
            fields: &[$((stringify!($field), std::mem::offset_of!($ty, $field))),*],
        }
    }};
}

/// `struct sockrec`: one socket, as the iterator writes it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockRec {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// The kernel's `TCP_*` state.
    pub state: u8,
    /// `REC_*` bits.
    pub flags: u8,
    pub pad0: u8,
    pub lport: u16,
    pub rport: u16,
    pub ifindex: u32,
    pub uid: u32,
    pub inode: u64,
    pub expires_ms: u32,
    pub pad1: u32,
    /// Network byte order; IPv4 in the first four bytes.
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub cookie: u64,
}

pub const REC_REUSEADDR: u8 = 1 << 0;
pub const REC_REUSEPORT: u8 = 1 << 1;
pub const REC_V6ONLY: u8 = 1 << 2;
/// The three flag bits above are the socket's own (not a request socket's).
pub const REC_FLAGS_KNOWN: u8 = 1 << 3;
/// `expires_ms` holds a running timer.
pub const REC_TIMER: u8 = 1 << 4;
/// A narrowed walk's record of a socket on a port of no interest (see [`Narrow`]).
pub const REC_LITE: u8 = 1 << 5;

/// `struct narrow`: which TCP sockets get a full record.
///
/// A walk narrowed this way reads, of a socket on a port of no interest, only what the
/// state counts and the ephemeral tally need (family, state, local port, and the two
/// addresses and remote port where the local port is ephemeral): no inode, cookie,
/// timer or flags, each of which is another cache line of a socket the kernel's walk
/// otherwise never touches.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Narrow {
    pub narrow: u32,
    pub eph_lo: u16,
    pub eph_hi: u16,
    /// A 65,536-bit set of local ports.
    pub wanted: [u64; 1024],
}

/// `struct fdrec`: one fd of one process that refers to a wanted socket.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdRec {
    pub inode: u64,
    /// The process id in the initial pid namespace.
    pub tgid: u32,
    pub fd: u32,
}

/// How many socket inodes one fd scan looks for at most (the `wanted` map's size).
pub const FDSCAN_MAX_WANTED: usize = 65_536;

/// `struct event`: one traced call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventRec {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub netns: u32,
    pub ret: i32,
    pub ifindex: u32,
    pub port: u16,
    pub protocol: u16,
    pub socktype: u16,
    /// `KIND_*`.
    pub kind: u8,
    pub family: u8,
    /// `F_*` bits.
    pub flags: u8,
    pub reserved: [u8; 3],
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    pub reserved2: u32,
}

pub const KIND_BIND: u8 = 1;
pub const KIND_LISTEN: u8 = 2;
pub const KIND_CONNECT: u8 = 3;
pub const F_REUSEADDR: u8 = 1;
pub const F_REUSEPORT: u8 = 2;
pub const F_V6ONLY: u8 = 4;
/// The socket was found through the fd table.
pub const F_SOCKET_READ: u8 = 8;

/// `SUN_PATH_MAX`: the bytes of `sun_path`.
pub const SUN_PATH_MAX: usize = 108;

/// `struct unix_path`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixPath {
    /// Bytes of `sun_path` given (addrlen minus the family).
    pub len: u32,
    pub path: [u8; SUN_PATH_MAX],
}

/// `struct unix_event`: a failed `AF_UNIX` bind, the common event and the path.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixEventRec {
    pub e: EventRec,
    pub u: UnixPath,
}

// The layouts below pin every field's offset and the size of each of these.
// SAFETY: repr(C), integers and integer arrays only, no implicit padding.
unsafe impl Plain for SockRec {}
// SAFETY: as above.
unsafe impl Plain for Narrow {}
// SAFETY: as above.
unsafe impl Plain for EventRec {}
// SAFETY: as above.
unsafe impl Plain for FdRec {}
// SAFETY: as above.
unsafe impl Plain for UnixPath {}
// SAFETY: as above; its two members are Plain and end on 4-byte boundaries.
unsafe impl Plain for UnixEventRec {}
// SAFETY: plain integers in a repr(C) struct without padding, so every byte pattern
// is a valid value (aya writes it to the `narrowing` map).
unsafe impl aya::Pod for Narrow {}

/// Every shared record's layout, as compiled.
pub static LAYOUTS: &[Layout] = &[
    layout!(SockRec, "sockrec", 72, {
        family @ 0, state @ 1, flags @ 2, pad0 @ 3, lport @ 4, rport @ 6, ifindex @ 8,
        uid @ 12, inode @ 16, expires_ms @ 24, pad1 @ 28, laddr @ 32, raddr @ 48,
        cookie @ 64,
    }),
    layout!(Narrow, "narrow", 8200, {
        narrow @ 0, eph_lo @ 4, eph_hi @ 6, wanted @ 8,
    }),
    layout!(FdRec, "fdrec", 16, {
        inode @ 0, tgid @ 8, fd @ 12,
    }),
    layout!(EventRec, "event", 72, {
        pid @ 0, tgid @ 4, uid @ 8, netns @ 12, ret @ 16, ifindex @ 20, port @ 24,
        protocol @ 26, socktype @ 28, kind @ 30, family @ 31, flags @ 32,
        reserved @ 33, addr @ 36, comm @ 52, reserved2 @ 68,
    }),
    layout!(UnixPath, "unix_path", 112, { len @ 0, path @ 4 }),
    layout!(UnixEventRec, "unix_event", 184, { e @ 0, u @ 72 }),
];

/// The header's constants, as this crate has them.
pub static CONSTANTS: &[(&str, u64)] = &[
    ("REC_REUSEADDR", REC_REUSEADDR as u64),
    ("REC_REUSEPORT", REC_REUSEPORT as u64),
    ("REC_V6ONLY", REC_V6ONLY as u64),
    ("REC_FLAGS_KNOWN", REC_FLAGS_KNOWN as u64),
    ("REC_TIMER", REC_TIMER as u64),
    ("REC_LITE", REC_LITE as u64),
    ("FDSCAN_MAX_WANTED", FDSCAN_MAX_WANTED as u64),
    ("KIND_BIND", KIND_BIND as u64),
    ("KIND_LISTEN", KIND_LISTEN as u64),
    ("KIND_CONNECT", KIND_CONNECT as u64),
    ("F_REUSEADDR", F_REUSEADDR as u64),
    ("F_REUSEPORT", F_REUSEPORT as u64),
    ("F_V6ONLY", F_V6ONLY as u64),
    ("F_SOCKET_READ", F_SOCKET_READ as u64),
    ("SUN_PATH_MAX", SUN_PATH_MAX as u64),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_from_any_offset_and_a_short_buffer_is_none() {
        let r = SockRec {
            family: 10,
            state: 6,
            lport: 443,
            inode: 0x0102_0304_0506_0708,
            laddr: [1; 16],
            cookie: u64::MAX,
            ..SockRec::default()
        };
        let bytes = to_bytes(&r);
        assert_eq!(bytes.len(), 72);
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&bytes);
        assert_eq!(read::<SockRec>(&shifted[1..]), Some(r));
        assert_eq!(read::<SockRec>(&bytes[..71]), None);
    }
}
