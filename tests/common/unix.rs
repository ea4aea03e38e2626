//! Unix-domain sockets with exact types and addresses, for tests that ask the kernel.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`.
pub const TYPES: [(i32, &str); 3] = [
    (libc::SOCK_STREAM, "stream"),
    (libc::SOCK_DGRAM, "dgram"),
    (libc::SOCK_SEQPACKET, "seqpacket"),
];

/// `sun_path` bytes of a `unix:` target: the path, or NUL + name for `@name`.
pub fn sun_path(target: &str) -> Vec<u8> {
    match target.strip_prefix('@') {
        Some(name) => [&[0u8][..], name.as_bytes()].concat(),
        None => target.as_bytes().to_vec(),
    }
}

/// A fresh `AF_UNIX` socket of `kind` bound to `sun` (`listen()`ed when `listen`):
/// the socket, or the errno of socket/bind/listen.
pub fn bind(kind: i32, sun: &[u8], listen: bool) -> Result<OwnedFd, i32> {
    // SAFETY: plain socket(2); owned right below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a fresh fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_un is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    assert!(sun.len() <= sa.sun_path.len(), "address too long");
    for (d, s) in sa.sun_path.iter_mut().zip(sun) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + sun.len();
    // SAFETY: sa is a valid sockaddr_un of at least `len` bytes.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(errno());
    }
    // SAFETY: listen on an open fd.
    if listen && kind != libc::SOCK_DGRAM && unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(errno());
    }
    Ok(fd)
}

/// What the kernel answers to bind() of a fresh socket of `kind` on `target` (a path
/// or `@name`) right now: Ok or the errno. A socket file the bind created is removed
/// again, so the situation is as before.
pub fn kernel_bind(kind: i32, target: &str) -> Result<(), i32> {
    let r = bind(kind, &sun_path(target), false);
    if r.is_ok() && !target.starts_with('@') {
        std::fs::remove_file(target).expect("remove the socket file the probe bind made");
    }
    r.map(drop)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}
