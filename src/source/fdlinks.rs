//! One process's fd links, read a slice at a time: `/proc/PID/fd` is listed once and
//! kept open until the last link is read (a scan resumed at the next poll goes on where
//! it stopped instead of listing the directory again), and each link is read with
//! `readlinkat` relative to that directory. A `readlink` of the path
//! `/proc/PID/fd/N` walked the whole path for every link: about 60% of a link's cost
//! in the owner and holder scans (perf, a million sockets in 55 processes).

use std::fs::{self, File, OpenOptions, ReadDir};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What one fd's link names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `socket:[INODE]`.
    Socket(u64),
    /// Anything else (a file, a pipe, a link too long to be a socket's).
    Other,
}

/// The socket inode of a link text (`socket:[INODE]`). Pure.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The fd number an entry of `/proc/PID/fd` is named by. Pure.
pub fn fd_number(name: &[u8]) -> Option<i32> {
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// An open `/proc/PID/fd` whose links are read by fd number.
#[derive(Debug)]
pub struct FdDir {
    dir: File,
}

impl FdDir {
    /// Opens `PROCFS/PID/fd` (without listing it).
    ///
    /// # Errors
    /// When the directory cannot be opened (the process exited, or the ptrace check
    /// refused it: `PermissionDenied`).
    pub fn open(procfs: &Path, pid: u32) -> io::Result<Self> {
        let path = procfs.join(pid.to_string()).join("fd");
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        Ok(FdDir { dir })
    }

    /// What fd `fd` names now (`NotFound` once it is closed).
    ///
    /// # Errors
    /// As `readlinkat(2)`.
    pub fn link(&self, fd: i32) -> io::Result<Link> {
        let mut name = [0u8; 16];
        let digits = fd.to_string();
        name[..digits.len()].copy_from_slice(digits.as_bytes());
        self.read_link(&name[..digits.len()])
    }

    fn read_link(&self, name: &[u8]) -> io::Result<Link> {
        // An fd number has at most 10 digits; the NUL follows.
        let mut cname = [0u8; 16];
        if name.len() >= cname.len() {
            return Ok(Link::Other);
        }
        cname[..name.len()].copy_from_slice(name);
        // A socket's link is `socket:[INODE]`, at most 29 bytes: a longer one is
        // something else, and a buffer it fills is not read further.
        let mut buf = [0u8; 48];
        // SAFETY: `cname` is NUL-terminated and lives across the call; readlinkat
        // writes at most `buf.len()` bytes into `buf`, which lives here.
        let n = unsafe {
            libc::readlinkat(
                self.dir.as_raw_fd(),
                cname.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let Ok(n) = usize::try_from(n) else {
            return Err(io::Error::last_os_error());
        };
        if n >= buf.len() {
            return Ok(Link::Other);
        }
        Ok(socket_inode(&buf[..n]).map_or(Link::Other, Link::Socket))
    }
}

/// An open `/proc/PID/fd` whose links are read in order.
#[derive(Debug)]
pub struct FdLinks {
    pid: u32,
    entries: ReadDir,
    dir: FdDir,
    /// Links read so far.
    pub read: usize,
}

impl FdLinks {
    /// Opens `PROCFS/PID/fd`.
    ///
    /// # Errors
    /// When the directory cannot be listed (the process exited, or the ptrace check
    /// refused it: `PermissionDenied`).
    pub fn open(procfs: &Path, pid: u32) -> io::Result<Self> {
        let dir = FdDir::open(procfs, pid)?;
        let entries = fs::read_dir(procfs.join(pid.to_string()).join("fd"))?;
        Ok(FdLinks {
            pid,
            entries,
            dir,
            read: 0,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next fd and what its link names; `None` after the last. An fd closed
    /// since the listing is skipped; a link that cannot be read is `Err` (a
    /// `PermissionDenied` says the ptrace check refused it).
    pub fn next_link(&mut self) -> Option<io::Result<(i32, Link)>> {
        loop {
            let entry = match self.entries.next()? {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            self.read += 1;
            let name = entry.file_name();
            let Some(fd) = fd_number(name.as_bytes()) else {
                continue;
            };
            match self.dir.read_link(name.as_bytes()) {
                Ok(link) => return Some(Ok((fd, link))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_texts() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"socket:[12345]", Some(12345)),
            (b"socket:[18446744073709551615]", Some(u64::MAX)),
            (b"socket:[18446744073709551616]", None),
            (b"socket:[]", None),
            (b"socket:[12a]", None),
            (b"socket:12345", None),
            (b"pipe:[12345]", None),
            (b"/dev/null", None),
            (b"", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                socket_inode(text),
                *want,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(fd_number(b"17"), Some(17));
        assert_eq!(fd_number(b"."), None);
        assert_eq!(fd_number(b"99999999999"), None);
    }

    #[test]
    fn reads_this_process_links_in_slices() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let own = std::process::id();
        let mut links = FdLinks::open(Path::new("/proc"), own).expect("own fd dir");
        let mut seen = Vec::new();
        while let Some(r) = links.next_link() {
            seen.push(r.expect("own link"));
        }
        let fd = sock.as_raw_fd();
        assert!(
            seen.iter()
                .any(|(n, l)| *n == fd && matches!(l, Link::Socket(i) if *i > 0)),
            "{seen:?}"
        );
        assert!(links.read >= seen.len());
        assert!(FdLinks::open(Path::new("/proc"), u32::MAX).is_err());

        let dir = FdDir::open(Path::new("/proc"), own).expect("own fd dir");
        assert_eq!(
            seen.iter().find(|(n, _)| *n == fd).map(|x| x.1),
            Some(dir.link(fd).expect("own link"))
        );
        drop(sock);
        let closed = dir.link(fd).expect_err("a closed fd has no link");
        assert_eq!(closed.kind(), io::ErrorKind::NotFound, "{closed}");
    }
}
