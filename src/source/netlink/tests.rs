//! Tests of the sock_diag request encoding and of the pure decoder on hand-built messages (errors, truncation, unknown values).

use super::*;

#[test]
fn port_filter_request_carries_the_bytecode() {
    let req = Request {
        protocol: Protocol::Udp,
        family: libc::AF_INET6 as u8,
        states: ALL_STATES,
    };
    let plain = req.encode(7);
    let b = req.encode_port(7, 7443);
    assert_eq!(b.len(), plain.len() + 12, "one nlattr of 4 + 8 bytes");
    assert_eq!(
        u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
        b.len()
    );
    assert_eq!(&b[4..plain.len()], &plain[4..], "same request otherwise");
    let attr = &b[plain.len()..];
    assert_eq!(u16::from_ne_bytes([attr[0], attr[1]]), 12, "nla_len");
    assert_eq!(
        u16::from_ne_bytes([attr[2], attr[3]]),
        1,
        "INET_DIAG_REQ_BYTECODE"
    );
    // op 1: S_EQ, yes = 8 (accept), no = 12 (reject); op 2: the port in `no`.
    assert_eq!(&attr[4..6], &[11, 8]);
    assert_eq!(u16::from_ne_bytes([attr[6], attr[7]]), 12);
    assert_eq!(&attr[8..10], &[0, 0]);
    assert_eq!(u16::from_ne_bytes([attr[10], attr[11]]), 7443);
}

/// Builds an nlmsghdr + inet_diag_msg as Linux 6.18 sends it for a TCP socket, one
/// of a dump (`NLM_F_MULTI`; [`with_flags`] sets others).
fn diag_msg(
    family: u8,
    state: u8,
    sport: u16,
    src: &[u8],
    expires: u32,
    timer: u8,
    attrs: &[u8],
) -> Vec<u8> {
    let mut body = vec![family, state, timer, 0];
    body.extend_from_slice(&sport.to_be_bytes()); // idiag_sport
    body.extend_from_slice(&443u16.to_be_bytes()); // idiag_dport
    let mut s = [0u8; 16];
    s[..src.len()].copy_from_slice(src);
    body.extend_from_slice(&s); // idiag_src
    body.extend_from_slice(&[0u8; 16]); // idiag_dst
    body.extend_from_slice(&3u32.to_ne_bytes()); // idiag_if
    body.extend_from_slice(&[0u8; 8]); // idiag_cookie
    body.extend_from_slice(&expires.to_ne_bytes()); // idiag_expires
    body.extend_from_slice(&0u32.to_ne_bytes()); // idiag_rqueue
    body.extend_from_slice(&0u32.to_ne_bytes()); // idiag_wqueue
    body.extend_from_slice(&1000u32.to_ne_bytes()); // idiag_uid
    body.extend_from_slice(&4242u32.to_ne_bytes()); // idiag_inode
    body.extend_from_slice(attrs);
    let mut m = Vec::new();
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
    m.extend_from_slice(&[0u8; 8]);
    m.extend_from_slice(&body);
    m
}

/// `msg` (one nlmsghdr) with `flags` instead of its own.
fn with_flags(mut msg: Vec<u8>, flags: u16) -> Vec<u8> {
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg
}

fn done(status: i32) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&20u32.to_ne_bytes());
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    m.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
    m.extend_from_slice(&[0u8; 8]);
    m.extend_from_slice(&status.to_ne_bytes());
    m
}

fn collect(buf: &[u8]) -> (Result<Batch, NetlinkError>, Vec<Socket>) {
    let mut out = Vec::new();
    let r = decode_batch(buf, Protocol::Tcp, "test", &mut |s| out.push(s.clone()));
    (r, out)
}

#[test]
fn decodes_v4_time_wait_and_v6_listener_with_v6only() {
    let mut buf = diag_msg(2, 6, 8080, &[127, 0, 0, 1], 59_000, 3, &[]);
    // INET_DIAG_SKV6ONLY attribute: len 5, type 11, value 1, 3 bytes padding.
    let attr = [5, 0, 11, 0, 1, 0, 0, 0];
    let mut v6 = [0u8; 16];
    v6[15] = 1;
    buf.extend(diag_msg(10, 10, 9090, &v6, 0, 0, &attr));
    buf.extend(done(0));
    let (r, socks) = collect(&buf);
    assert_eq!(r.unwrap(), Batch::Done);
    assert_eq!(socks.len(), 2);
    assert_eq!(socks[0].state, State::TimeWait);
    assert_eq!(socks[0].local, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(socks[0].expires_ms, Some(59_000));
    assert_eq!(socks[0].uid, 1000);
    assert_eq!(socks[0].inode, 4242);
    assert_eq!(socks[0].ifindex, Some(3));
    assert_eq!(socks[0].v6only, Tri::Unknown);
    assert_eq!(socks[1].state, State::Listen);
    assert_eq!(socks[1].local, "[::1]:9090".parse().unwrap());
    assert_eq!(socks[1].v6only, Tri::True);
    assert_eq!(socks[1].expires_ms, None);
}

#[test]
fn batch_without_done_asks_for_more() {
    let buf = diag_msg(2, 1, 1, &[10, 0, 0, 1], 0, 0, &[]);
    assert_eq!(collect(&buf).0.unwrap(), Batch::More);
}

#[test]
fn error_and_interrupt_and_truncation_are_errors() {
    let (r, _) = collect(&done(-libc::EPERM));
    assert!(matches!(r, Err(NetlinkError::Kernel { errno, .. }) if errno == libc::EPERM));
    assert!(r.unwrap_err().is_unavailable());

    let mut err = Vec::new();
    err.extend_from_slice(&36u32.to_ne_bytes());
    err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    err.extend_from_slice(&0u16.to_ne_bytes());
    err.extend_from_slice(&[0u8; 8]);
    err.extend_from_slice(&(-libc::EINVAL).to_ne_bytes());
    err.extend_from_slice(&[0u8; 16]);
    assert!(
        matches!(collect(&err).0, Err(NetlinkError::Kernel { errno, .. }) if errno == libc::EINVAL)
    );

    let intr = with_flags(
        diag_msg(2, 1, 1, &[10, 0, 0, 1], 0, 0, &[]),
        NLM_F_MULTI | NLM_F_DUMP_INTR,
    );
    assert!(matches!(
        collect(&intr).0,
        Err(NetlinkError::Interrupted { .. })
    ));

    let full = diag_msg(2, 1, 1, &[10, 0, 0, 1], 0, 0, &[]);
    for cut in [17, 40, full.len() - 1] {
        assert!(
            matches!(collect(&full[..cut]).0, Err(NetlinkError::Malformed { .. })),
            "cut at {cut}"
        );
    }
}

#[test]
fn bad_attribute_length_is_malformed_not_a_panic() {
    let attr = [200, 0, 11, 0, 1, 0, 0, 0];
    let buf = diag_msg(10, 10, 1, &[0; 16], 0, 0, &attr);
    assert!(matches!(
        collect(&buf).0,
        Err(NetlinkError::Malformed { .. })
    ));
}

#[test]
fn unknown_family_and_state_are_skipped() {
    let mut buf = diag_msg(99, 1, 1, &[0; 4], 0, 0, &[]);
    buf.extend(diag_msg(2, 77, 1, &[0; 4], 0, 0, &[]));
    buf.extend(done(0));
    let (r, socks) = collect(&buf);
    assert_eq!(r.unwrap(), Batch::Done);
    assert!(socks.is_empty());
}

#[test]
fn request_encoding_v2_and_legacy() {
    let r = Request {
        protocol: Protocol::Udp,
        family: libc::AF_INET6 as u8,
        states: state_bit(State::Listen),
    }
    .encode(7);
    assert_eq!(r.len(), 72);
    assert_eq!(u32_at(&r, 0), 72);
    assert_eq!(u16::from_ne_bytes([r[4], r[5]]), SOCK_DIAG_BY_FAMILY);
    assert_eq!(u32_at(&r, 8), 7);
    assert_eq!(&r[16..18], &[libc::AF_INET6 as u8, libc::IPPROTO_UDP as u8]);
    assert_eq!(u32_at(&r, 20), 1 << 10);

    let l = Request {
        protocol: Protocol::Tcp,
        family: libc::AF_UNSPEC as u8,
        states: ALL_STATES,
    }
    .encode(1);
    assert_eq!(l.len(), 76);
    assert_eq!(u16::from_ne_bytes([l[4], l[5]]), TCPDIAG_GETSOCK);
    assert_eq!(u32_at(&l, 16 + 52), ALL_STATES);
}
