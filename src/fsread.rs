//! Reading files bindwatch did not write, safely: every file it reads (the state file,
//! `--config.file`, `--web.config.file` and the PEM files it names, sysctls, the
//! /proc/net fallback tables) goes through here.
//!
//! A FIFO would block `open` or `read` forever, a device such as `/dev/zero` never ends,
//! and a huge file would be read whole into memory. So a file is opened with
//! `O_NONBLOCK|O_CLOEXEC` (and `O_NOFOLLOW` where a symlink is never legitimate: config
//! files often are symlinks, e.g. Kubernetes ConfigMaps, so those are followed), the
//! *opened* descriptor is `fstat`ed and must be a regular file, and reads are capped in
//! bytes. procfs files are regular files of size 0 whose length is only known by reading
//! them: for those the byte cap is what bounds the read.
//!
//! The checks on metadata and the capped reading are pure over their inputs
//! ([`kind_of`], [`read_capped`]) and tested with tables; [`open`] is the thin I/O part.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `--config.file` and `--web.config.file`: far beyond any real config (a thousand
/// services take about 150 KiB), small enough that parsing cannot exhaust memory.
pub const CONFIG_MAX: u64 = 1 << 20;
/// PEM files named by the web config (a CA bundle of every public root is ~250 KiB).
pub const PEM_MAX: u64 = 1 << 20;
/// The state file: ~300 bytes per remembered listener, so ~200,000 listeners.
pub const STATE_MAX: u64 = 64 << 20;
/// One sysctl file (`ip_local_reserved_ports` listing every port is under 400 KiB).
pub const SYSCTL_MAX: u64 = 1 << 20;
/// Small files of `/proc/PID/` (`stat`, `status`, `cgroup`).
pub const PROC_FILE_MAX: u64 = 1 << 20;

/// Whether the last path component may be a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    /// Followed (config files: ConfigMaps and secrets are symlinks); the file it
    /// leads to must still be regular.
    Follow,
    /// Refused with `O_NOFOLLOW` (the state file: a link there is an attack).
    Refuse,
}

/// Why a file was not read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: is a symbolic link, which is refused here")]
    Symlink { path: PathBuf },
    #[error("{path}: is a {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: larger than the {cap}-byte limit")]
    TooBig { path: PathBuf, cap: u64 },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not UTF-8 text (byte {at})")]
    NotUtf8 { path: PathBuf, at: usize },
}

impl ReadError {
    /// The reason without the path, for messages that name the file already
    /// (`cannot read FILE: ...`).
    pub fn reason(&self) -> String {
        match self {
            ReadError::Open { source, .. } => source.to_string(),
            ReadError::Symlink { .. } => "is a symbolic link, which is refused here".to_string(),
            ReadError::NotRegular { kind, .. } => format!("is a {kind}, not a regular file"),
            ReadError::TooBig { cap, .. } => format!("larger than the {cap}-byte limit"),
            ReadError::Read { source, .. } => source.to_string(),
            ReadError::NotUtf8 { at, .. } => format!("not UTF-8 text (byte {at})"),
        }
    }

    /// True when the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// What a file of mode `mode` (`st_mode`) is, or `None` for a regular file. Pure.
pub fn kind_of(mode: u32) -> Option<&'static str> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFIFO => Some("FIFO (named pipe)"),
        libc::S_IFCHR => Some("character device"),
        libc::S_IFBLK => Some("block device"),
        libc::S_IFDIR => Some("directory"),
        libc::S_IFSOCK => Some("socket"),
        libc::S_IFLNK => Some("symbolic link"),
        _ => Some("special file"),
    }
}

/// Opens `path` for reading without blocking and checks, on the opened descriptor, that
/// it is a regular file. Returns the file and its size as `fstat` gave it (0 for procfs).
///
/// A cheap `stat` first refuses FIFOs and devices before they are even opened (opening
/// some devices has side effects); the `fstat` after opening is what decides, so a file
/// swapped in between is still caught.
///
/// # Errors
/// When the file cannot be opened, is a refused symlink, or is not a regular file.
pub fn open(path: &Path, links: Symlinks) -> Result<(File, u64), ReadError> {
    let pre = match links {
        Symlinks::Follow => std::fs::metadata(path),
        Symlinks::Refuse => std::fs::symlink_metadata(path),
    };
    match pre {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(ReadError::Symlink {
                path: path.to_path_buf(),
            })
        }
        Ok(m) => {
            if let Some(kind) = kind_of(m.mode()) {
                return Err(ReadError::NotRegular {
                    path: path.to_path_buf(),
                    kind,
                });
            }
        }
        Err(source) => {
            return Err(ReadError::Open {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if links == Symlinks::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::ELOOP) && links == Symlinks::Refuse {
                ReadError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                ReadError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let meta = file.metadata().map_err(|source| ReadError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(kind) = kind_of(meta.mode()) {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok((file, meta.size()))
}

/// Reads all of `r`, at most `cap` bytes: `Ok(None)` when there is more. Pure apart
/// from the reader.
///
/// # Errors
/// Read errors of `r`.
pub fn read_capped<R: Read>(r: R, cap: u64) -> io::Result<Option<Vec<u8>>> {
    read_capped_sized(r, cap, 0)
}

/// What one `read(2)` asks for first when a file's size says nothing (files under
/// /proc say 0): a `/proc/PID/stat` or `status` arrives whole in one read instead of
/// five growing ones.
const FIRST_READ: u64 = 4096;

/// [`read_capped`] of a file `size` bytes long by its `stat`.
fn read_capped_sized<R: Read>(r: R, cap: u64, size: u64) -> io::Result<Option<Vec<u8>>> {
    let first = size.max(FIRST_READ).min(cap).saturating_add(1);
    let mut buf = Vec::with_capacity(usize::try_from(first).unwrap_or(usize::MAX));
    r.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Ok(None);
    }
    Ok(Some(buf))
}

/// Reads a whole regular file of at most `cap` bytes.
///
/// # Errors
/// See [`open`]; also a file over `cap` (by its size or by what reading it gives).
pub fn read(path: &Path, links: Symlinks, cap: u64) -> Result<Vec<u8>, ReadError> {
    let (file, size) = open(path, links)?;
    let too_big = || ReadError::TooBig {
        path: path.to_path_buf(),
        cap,
    };
    if size > cap {
        return Err(too_big());
    }
    read_capped_sized(file, cap, size)
        .map_err(|source| ReadError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(too_big)
}

/// [`read`], as UTF-8 text.
///
/// # Errors
/// See [`read`]; also text that is not UTF-8.
pub fn read_to_string(path: &Path, links: Symlinks, cap: u64) -> Result<String, ReadError> {
    let bytes = read(path, links, cap)?;
    String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 {
        path: path.to_path_buf(),
        at: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let table = [
            (libc::S_IFREG | 0o644, None),
            (libc::S_IFIFO | 0o644, Some("FIFO (named pipe)")),
            (libc::S_IFCHR | 0o666, Some("character device")),
            (libc::S_IFBLK | 0o660, Some("block device")),
            (libc::S_IFDIR | 0o755, Some("directory")),
            (libc::S_IFSOCK | 0o777, Some("socket")),
        ];
        for (mode, want) in table {
            assert_eq!(kind_of(mode), want, "{mode:o}");
        }
    }

    #[test]
    fn capped_reads() {
        assert_eq!(read_capped(&b"abc"[..], 3).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(read_capped(&b"abcd"[..], 3).unwrap(), None);
        assert_eq!(read_capped(&b""[..], 0).unwrap(), Some(Vec::new()));
        // An endless reader stops at the cap.
        assert_eq!(read_capped(io::repeat(0), 1 << 16).unwrap(), None);
    }

    #[test]
    fn real_files_fifos_devices_and_links() {
        let dir = std::env::temp_dir().join(format!("bindwatch-fsread-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_to_string(&f, Symlinks::Refuse, 5).unwrap(), "hello");
        assert!(matches!(
            read(&f, Symlinks::Refuse, 4),
            Err(ReadError::TooBig { cap: 4, .. })
        ));
        let link = dir.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(read(&link, Symlinks::Follow, 5).unwrap(), b"hello");
        let e = read(&link, Symlinks::Refuse, 5).unwrap_err();
        assert!(matches!(e, ReadError::Symlink { .. }), "{e}");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = read(&fifo, Symlinks::Follow, 5).unwrap_err();
        assert!(
            e.to_string().contains("FIFO") && e.to_string().contains("fifo"),
            "{e}"
        );
        let e = read(Path::new("/dev/zero"), Symlinks::Follow, 5).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let zlink = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zlink).unwrap();
        assert!(read(&zlink, Symlinks::Follow, 5).is_err());
        assert!(read(&dir, Symlinks::Follow, 5)
            .unwrap_err()
            .to_string()
            .contains("directory"));
        assert!(read(&dir.join("missing"), Symlinks::Follow, 5)
            .unwrap_err()
            .is_not_found());
        std::fs::write(&f, b"a\xffb").unwrap();
        let e = read_to_string(&f, Symlinks::Refuse, 5).unwrap_err();
        assert!(e.to_string().contains("byte 1"), "{e}");
        // procfs: size 0 in fstat, content when read.
        let (_, size) = open(Path::new("/proc/self/status"), Symlinks::Follow).unwrap();
        assert_eq!(size, 0);
        assert!(
            !read(Path::new("/proc/self/status"), Symlinks::Follow, 1 << 20)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            read(Path::new("/proc/self/status"), Symlinks::Follow, 10),
            Err(ReadError::TooBig { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
