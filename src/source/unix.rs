//! `AF_UNIX` sockets from NETLINK_SOCK_DIAG (unix_diag): name, bound file, peer,
//! queues, uid of every unix socket of the calling thread's network namespace.
//!
//! The socket I/O is [`netlink::NetlinkDiag`]'s (one request, batches up to
//! NLMSG_DONE, the drain after an error); this module only encodes the request
//! ([`request`]) and decodes each `unix_diag_msg` ([`decode_unix_msg`], pure, tested
//! on byte arrays). The dump is per network namespace: the kernel walks the unix
//! table of the namespace the netlink socket was opened in.

use crate::model::{UnixName, UnixSocket, UnixState, UnixType, VfsId};

use super::netlink::{
    self, align4, u32_at, Batch, NetlinkDiag, NetlinkError, NLMSG_HDRLEN, NLM_F_DUMP,
    NLM_F_REQUEST, SOCK_DIAG_BY_FAMILY,
};

/// `udiag_show` bits (include/uapi/linux/unix_diag.h).
pub const UDIAG_SHOW_NAME: u32 = 0x01;
pub const UDIAG_SHOW_VFS: u32 = 0x02;
pub const UDIAG_SHOW_PEER: u32 = 0x04;
pub const UDIAG_SHOW_RQLEN: u32 = 0x10;
pub const UDIAG_SHOW_UID: u32 = 0x40;

/// Attribute types of a `unix_diag_msg`.
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_UID: u16 = 7;

/// `struct unix_diag_msg`: family, type, state, pad, ino, cookie[2].
const UNIX_MSG_LEN: usize = 16;
/// `struct unix_diag_req`: family, protocol, pad, states, ino, show, cookie[2].
const UNIX_REQ_LEN: usize = 24;
/// Longest name attribute: the whole of `sun_path`.
const SUN_PATH_MAX: usize = 108;

const WHAT: &str = "unix";

/// Every state (`udiag_states` is a bit mask of TCP state numbers).
pub const ALL_STATES: u32 = 0xffff_ffff;

/// The dump request: every socket whose state bit is in `states`, with what `show` asks.
pub fn request(seq: u32, states: u32, show: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + UNIX_REQ_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino: every socket
    b.extend_from_slice(&show.to_ne_bytes());
    b.extend_from_slice(&[0xff; 8]); // udiag_cookie: INET_DIAG_NOCOOKIE
    b
}

/// Decodes one `unix_diag_msg` with its attributes. `Ok(None)` for a message that is
/// not `AF_UNIX` or has a socket type bindwatch does not model.
///
/// # Errors
/// A message or attribute that runs past its end, or an attribute shorter than its
/// type needs.
pub fn decode_unix_msg(b: &[u8]) -> Result<Option<UnixSocket>, &'static str> {
    if b.len() < UNIX_MSG_LEN {
        return Err("unix_diag_msg shorter than 16 bytes");
    }
    if i32::from(b[0]) != libc::AF_UNIX {
        return Ok(None);
    }
    let Some(kind) = UnixType::from_kernel(b[1]) else {
        return Ok(None);
    };
    let mut s = UnixSocket {
        inode: u64::from(u32_at(b, 4)),
        kind,
        state: UnixState::from_kernel(b[2]),
        name: None,
        vfs: None,
        peer: None,
        rqueue: None,
        wqueue: None,
        uid: None,
        cookie: u64::from(u32_at(b, 8)) | u64::from(u32_at(b, 12)) << 32,
    };
    let mut off = UNIX_MSG_LEN;
    while off + 4 <= b.len() {
        let alen = usize::from(u16::from_ne_bytes([b[off], b[off + 1]]));
        let aty = u16::from_ne_bytes([b[off + 2], b[off + 3]]) & 0x3fff;
        if alen < 4 || off + alen > b.len() {
            return Err("attribute length out of bounds");
        }
        let v = &b[off + 4..off + alen];
        match aty {
            UNIX_DIAG_NAME => {
                if v.len() > SUN_PATH_MAX {
                    return Err("UNIX_DIAG_NAME longer than sun_path");
                }
                s.name = UnixName::from_sun_path(v);
            }
            UNIX_DIAG_VFS => {
                if v.len() < 8 {
                    return Err("UNIX_DIAG_VFS shorter than 8 bytes");
                }
                s.vfs = Some(VfsId::from_kernel(u32_at(v, 4), u32_at(v, 0)));
            }
            UNIX_DIAG_PEER => {
                if v.len() < 4 {
                    return Err("UNIX_DIAG_PEER shorter than 4 bytes");
                }
                s.peer = Some(u64::from(u32_at(v, 0)));
            }
            UNIX_DIAG_RQLEN => {
                if v.len() < 8 {
                    return Err("UNIX_DIAG_RQLEN shorter than 8 bytes");
                }
                s.rqueue = Some(u32_at(v, 0));
                s.wqueue = Some(u32_at(v, 4));
            }
            UNIX_DIAG_UID => {
                if v.len() < 4 {
                    return Err("UNIX_DIAG_UID shorter than 4 bytes");
                }
                s.uid = Some(u32_at(v, 0));
            }
            _ => {}
        }
        off += align4(alen);
    }
    Ok(Some(s))
}

/// Decodes one receive buffer of a unix dump, calling `sink` for each socket.
///
/// # Errors
/// As [`netlink::walk_batch`], and a malformed `unix_diag_msg`.
pub fn decode_unix_batch<F: FnMut(UnixSocket) + ?Sized>(
    buf: &[u8],
    sink: &mut F,
) -> Result<Batch, NetlinkError> {
    netlink::walk_batch(buf, WHAT, &mut |offset, body| {
        if let Some(s) = decode_unix_msg(body).map_err(|reason| NetlinkError::Malformed {
            what: WHAT,
            offset,
            reason,
        })? {
            sink(s);
        }
        Ok(())
    })
}

/// What every unix dump of bindwatch asks for: name, bound file, peer, queues, uid.
pub const SHOW_ALL: u32 =
    UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN | UDIAG_SHOW_UID;

/// Streams every unix socket of `nl`'s network namespace whose state bit is in
/// `states` to `sink`.
///
/// # Errors
/// See [`NetlinkError`]; `Interrupted` when the table changed during the dump.
pub fn dump<F: FnMut(UnixSocket) + ?Sized>(
    nl: &mut NetlinkDiag,
    states: u32,
    sink: &mut F,
) -> Result<(), NetlinkError> {
    dump_show(nl, states, SHOW_ALL, sink)
}

/// [`dump`] asking only for the attributes in `show` (0: type, state, inode and
/// cookie only, the cheapest dump, enough to count).
///
/// # Errors
/// As [`dump`].
pub fn dump_show<F: FnMut(UnixSocket) + ?Sized>(
    nl: &mut NetlinkDiag,
    states: u32,
    show: u32,
    sink: &mut F,
) -> Result<(), NetlinkError> {
    let msg = request(nl.next_seq(), states, show);
    nl.dump_with(&msg, WHAT, &mut |buf| decode_unix_batch(buf, sink))
}

/// Every unix socket of the calling thread's network namespace, in one Vec; a dump
/// that raced with the table (NLM_F_DUMP_INTR) is retried up to three times.
///
/// # Errors
/// Opening the netlink socket, or a dump that failed (or was interrupted three times).
pub fn dump_all() -> Result<Vec<UnixSocket>, NetlinkError> {
    dump_all_show(SHOW_ALL)
}

/// [`dump_all`] asking only for the attributes in `show` (see [`dump_show`]).
///
/// # Errors
/// As [`dump_all`].
pub fn dump_all_show(show: u32) -> Result<Vec<UnixSocket>, NetlinkError> {
    let mut nl = NetlinkDiag::open()?;
    let mut tries = 0;
    loop {
        let mut out = Vec::new();
        match dump_show(&mut nl, ALL_STATES, show, &mut |s| out.push(s)) {
            Ok(()) => return Ok(out),
            Err(NetlinkError::Interrupted { .. }) if tries < 2 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn msg(kind: u8, state: u8, ino: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![libc::AF_UNIX as u8, kind, state, 0];
        b.extend_from_slice(&ino.to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        for a in attrs {
            b.extend_from_slice(a);
        }
        b
    }

    fn pair(a: u32, b: u32) -> Vec<u8> {
        let mut v = a.to_ne_bytes().to_vec();
        v.extend_from_slice(&b.to_ne_bytes());
        v
    }

    fn nlmsg(ty: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&[0u8; 8]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn request_layout() {
        let r = request(9, 1 << 10, SHOW_ALL);
        assert_eq!(r.len(), 40);
        assert_eq!(u32_at(&r, 0), 40);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 20);
        assert_eq!(u32_at(&r, 8), 9);
        assert_eq!(r[16], 1, "AF_UNIX");
        assert_eq!(u32_at(&r, 20), 1 << 10, "states");
        assert_eq!(u32_at(&r, 28), 0x57, "show: name, vfs, peer, rqlen, uid");
        assert_eq!(&r[32..40], &[0xff; 8]);
    }

    #[test]
    fn listener_with_path_file_queue_and_uid() {
        // /run/app.sock: dev 8:25 as the kernel keeps it (MKDEV: major << 20 |
        // minor), inode 4242; 3 waiting of a backlog of 511; uid 33.
        let b = msg(
            1,
            10,
            1234,
            &[
                attr(0, b"/run/app.sock"),
                attr(1, &pair(4242, 8 << 20 | 25)),
                attr(4, &pair(3, 511)),
                attr(7, &33u32.to_ne_bytes()),
            ],
        );
        let s = decode_unix_msg(&b).unwrap().unwrap();
        assert_eq!(s.inode, 1234);
        assert_eq!(s.kind, UnixType::Stream);
        assert_eq!(s.state, UnixState::Listen);
        assert_eq!(s.name, Some(UnixName::Path(b"/run/app.sock".to_vec())));
        assert_eq!(
            s.vfs,
            Some(VfsId {
                dev_major: 8,
                dev_minor: 25,
                ino32: 4242
            })
        );
        assert_eq!((s.rqueue, s.wqueue, s.uid), (Some(3), Some(511), Some(33)));
        assert_eq!(s.cookie, 7 | 1 << 32);
        assert!(s.is_listener());
    }

    #[test]
    fn abstract_names_keep_every_byte_and_devices_decode() {
        let b = msg(2, 7, 5, &[attr(0, b"\0name\0\0")]);
        let s = decode_unix_msg(&b).unwrap().unwrap();
        assert_eq!(s.name, Some(UnixName::Abstract(b"name\0\0".to_vec())));
        assert_eq!(s.name.as_ref().unwrap().to_string(), "@name@@");
        assert!(
            s.is_listener(),
            "a bound unconnected datagram socket receives"
        );
        // The kernel's internal MKDEV(259, 70000), as UNIX_DIAG_VFS carries it.
        let v = VfsId::from_kernel(259 << 20 | 70000, 1);
        assert_eq!((v.dev_major, v.dev_minor), (259, 70000));
    }

    #[test]
    fn connected_peer_and_unknown_types() {
        let b = msg(5, 1, 6, &[attr(2, &99u32.to_ne_bytes())]);
        let s = decode_unix_msg(&b).unwrap().unwrap();
        assert_eq!(
            (s.kind, s.state, s.peer, s.name.clone()),
            (UnixType::Seqpacket, UnixState::Connected, Some(99), None)
        );
        assert!(!s.is_listener());
        // SOCK_RAW (3) is not a unix type bindwatch models; another family is skipped.
        assert_eq!(decode_unix_msg(&msg(3, 7, 1, &[])).unwrap(), None);
        let mut inet = msg(1, 10, 1, &[]);
        inet[0] = libc::AF_INET as u8;
        assert_eq!(decode_unix_msg(&inet).unwrap(), None);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(decode_unix_msg(&[1, 1, 10]).is_err());
        let mut b = msg(1, 10, 1, &[]);
        b.extend_from_slice(&[40, 0, 0, 0]); // attribute claims 40 bytes, has 4
        assert!(decode_unix_msg(&b).is_err());
        for (ty, short) in [(1u16, 4usize), (2, 2), (4, 4), (7, 0)] {
            let b = msg(1, 10, 1, &[attr(ty, &vec![0u8; short])]);
            assert!(decode_unix_msg(&b).is_err(), "attribute {ty}");
        }
        let b = msg(1, 10, 1, &[attr(0, &[b'a'; 109])]);
        assert!(decode_unix_msg(&b).is_err());
        // Every truncation of a valid message is an error or a socket, never a panic.
        let full = msg(1, 10, 1, &[attr(0, b"/x"), attr(1, &pair(1, 2))]);
        for n in 0..full.len() {
            let _ = decode_unix_msg(&full[..n]);
        }
    }

    #[test]
    fn batches_stream_sockets_then_done() {
        let mut buf = nlmsg(20, 2, &msg(1, 10, 1, &[attr(0, b"/a")]));
        buf.extend(nlmsg(20, 2, &msg(2, 7, 2, &[])));
        let mut got = Vec::new();
        assert_eq!(
            decode_unix_batch(&buf, &mut |s| got.push(s.inode)).unwrap(),
            Batch::More
        );
        assert_eq!(got, [1, 2]);
        let done = nlmsg(3, 2, &0i32.to_ne_bytes());
        assert_eq!(decode_unix_batch(&done, &mut |_| {}).unwrap(), Batch::Done);
        let err = nlmsg(2, 0, &(-libc::EPERM).to_ne_bytes());
        assert!(matches!(
            decode_unix_batch(&err, &mut |_| {}),
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::EPERM
        ));
        let bad = nlmsg(20, 2, &[1, 1, 10]);
        assert!(matches!(
            decode_unix_batch(&bad, &mut |_| {}),
            Err(NetlinkError::Malformed { what: "unix", .. })
        ));
    }
}
