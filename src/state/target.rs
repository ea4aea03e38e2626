//! What the state file's write may replace: only a regular file owned by root or by
//! this process's user, or nothing. The write is a rename of a temporary file over the
//! path, which replaces whatever is there (a device node, a FIFO, a socket, a symlink),
//! so the path is checked at start ([`check_at_start`]) and again, on the opened
//! directory, right before every rename ([`save_checked`]). A path that holds anything
//! else at run time, or a file another live agent wrote, stops the writes
//! ([`SaveError::Refused`]): the caller logs it once and exports it.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

use super::{dir_policy, load_file, process_start_time, unix, writer_status, StateFile};
use super::{WriterStatus, MAX_BYTES};

/// Why a write did not happen.
#[derive(Debug)]
pub enum SaveError {
    /// Writing would replace what bindwatch must not (named in the text), or another
    /// live agent writes the file: stop writing it.
    Refused(String),
    /// A failure that may pass (a full disk, a directory refused for its mode).
    Io(io::Error),
}

impl std::fmt::Display for SaveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaveError::Refused(why) => f.write_str(why),
            SaveError::Io(e) => e.fmt(f),
        }
    }
}

impl From<io::Error> for SaveError {
    fn from(e: io::Error) -> Self {
        SaveError::Io(e)
    }
}

/// What a writer remembers between writes: the file it put at the path last, to tell
/// when another process replaced it.
#[derive(Debug, Default, Clone)]
pub struct Guard {
    /// (device, inode, mtime seconds, mtime nanoseconds) of the file this writer
    /// renamed into place last (the mtime because a freed inode number is reused).
    last: Option<(u64, u64, i64, i64)>,
}

/// What a file of this `mode` (`st_mode`) owned by `owner` is, when the state file must
/// not replace it, as effective uid `me`. Pure.
///
/// # Errors
/// What is there ("a character device", "a fifo", ...), for the message.
pub fn replaceable(mode: u32, owner: u32, me: u32) -> Result<(), String> {
    let what = match mode & libc::S_IFMT {
        libc::S_IFREG if owner == 0 || owner == me => return Ok(()),
        libc::S_IFREG => return Err(format!("a regular file owned by uid {owner}")),
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFIFO => "a fifo",
        libc::S_IFSOCK => "a socket",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        _ => "a file of unknown type",
    };
    Err(what.to_string())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The start-up check of `--state.file`: the path is missing or holds a regular file
/// bindwatch may replace, and no other live agent writes it (`procfs` tells whether
/// the file's writer runs).
///
/// # Errors
/// The flag, the path and what is there, or the other writer's pid.
pub fn check_at_start(path: &Path, procfs: &Path) -> Result<(), String> {
    let p = path.display();
    if path.file_name().is_none() {
        return Err(format!("--state.file {p}: names no file"));
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        // Missing, or not even looked at (a directory this user may not search): the
        // writes will say what fails, and the agent serves without the file.
        Err(_) => return Ok(()),
    };
    replaceable(meta.mode(), meta.uid(), euid()).map_err(|what| {
        format!(
            "--state.file {p}: {what} is there; bindwatch writes its state file only over a \
             regular file it may own or a missing path (the write replaces what is at the path)"
        )
    })?;
    if let Some(what) = not_a_state_file(path) {
        return Err(format!(
            "--state.file {p}: {what} is there; bindwatch replaces only its own state file (or an empty file)"
        ));
    }
    if let Some(pid) = other_live_writer(path, procfs) {
        return Err(format!(
            "--state.file {p}: another bindwatch (pid {pid}) is writing it; give each agent its own state file"
        ));
    }
    Ok(())
}

/// What the regular file at `path` is when it is neither empty nor a bindwatch state
/// file (a JSON object with `netns` and `listeners`), so that a mistyped path
/// (`/etc/hostname`) is never replaced. `None` when it may be replaced or is gone.
fn not_a_state_file(path: &Path) -> Option<String> {
    let bytes = match crate::fsread::read(path, crate::fsread::Symlinks::Refuse, MAX_BYTES) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return None,
        Err(e) => return Some(format!("a file bindwatch cannot read back ({e})")),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let ours = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .is_some_and(|o| {
            o.get("netns").is_some_and(serde_json::Value::is_u64) && o.contains_key("listeners")
        });
    (!ours).then(|| "a regular file that is not a bindwatch state file".to_string())
}

/// The pid of another live process whose heartbeat is in the file at `path`.
fn other_live_writer(path: &Path, procfs: &Path) -> Option<u32> {
    let state = load_file(path, None).ok()??;
    let w = state.writer.as_ref()?;
    if w.pid == std::process::id() {
        return None;
    }
    let start = process_start_time(procfs, w.pid);
    (writer_status(Some(w), unix(SystemTime::now()), start) == WriterStatus::Alive).then_some(w.pid)
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: `None` when nothing is there.
fn stat_at(dir: &OwnedFd, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: an all-zero stat is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory fd, a NUL-terminated name and a writable stat.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(Some(st));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Writes `state` to `path` atomically and durably (see [`super::save`]), renaming
/// only over a regular file bindwatch may replace or nothing, checked with `fstatat`
/// on the opened directory right before the rename. A regular file that is not the one
/// this writer put there last (`guard`) and names another live writer (`procfs`) is
/// left alone too.
///
/// # Errors
/// [`SaveError::Refused`] when the path must not be replaced, else the I/O error.
pub fn save_checked(
    path: &Path,
    state: &StateFile,
    procfs: &Path,
    guard: &mut Guard,
) -> Result<(), SaveError> {
    let p = path.display();
    let dir_path = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| SaveError::Refused(format!("{p} names no file")))?;
    let name_c = cstring(name.as_bytes())?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir_path)?;
    let dir_file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir_path)?;
    let meta = dir_file.metadata()?;
    let me = euid();
    dir_policy(meta.mode(), meta.uid(), me).map_err(|why| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing the directory {}: {why}", dir_path.display()),
        )
    })?;
    let dir: OwnedFd = dir_file.into();
    let body = super::encode(state)?;
    let (tmp_c, mut file) = create_temp(&dir, &name.to_string_lossy())?;
    let result = (|| -> Result<(), SaveError> {
        file.write_all(&body)?;
        file.sync_all()?;
        let ours = file.metadata()?;
        if let Some(st) = stat_at(&dir, &name_c)? {
            replaceable(st.st_mode, st.st_uid, me).map_err(|what| {
                SaveError::Refused(format!("{what} is at {p} now; bindwatch never replaces it"))
            })?;
            if guard.last.is_some()
                && guard.last != Some((st.st_dev, st.st_ino, st.st_mtime, st.st_mtime_nsec))
            {
                if let Some(what) = not_a_state_file(path) {
                    return Err(SaveError::Refused(format!(
                        "{what} is at {p} now; bindwatch never replaces it"
                    )));
                }
                if let Some(pid) = other_live_writer(path, procfs) {
                    return Err(SaveError::Refused(format!(
                        "another bindwatch (pid {pid}) is writing {p}"
                    )));
                }
            }
        }
        // SAFETY: a valid directory fd and NUL-terminated names that outlive the call.
        let r = unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                tmp_c.as_ptr(),
                dir.as_raw_fd(),
                name_c.as_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error().into());
        }
        guard.last = Some((ours.dev(), ours.ino(), ours.mtime(), ours.mtime_nsec()));
        Ok(())
    })();
    if result.is_err() {
        // SAFETY: a valid directory fd and a NUL-terminated name.
        unsafe { libc::unlinkat(dir.as_raw_fd(), tmp_c.as_ptr(), 0) };
        return result;
    }
    // The rename is durable only once the directory is.
    // SAFETY: a valid fd.
    if unsafe { libc::fsync(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

/// Creates the temporary file in `dir` with an unpredictable name, `O_EXCL|O_NOFOLLOW`
/// (a planted file or symlink makes the create fail; it is never followed), mode 0644
/// whatever the umask (readers run as anyone).
fn create_temp(dir: &OwnedFd, name: &str) -> io::Result<(CString, std::fs::File)> {
    let mut attempt = 0;
    loop {
        let tmp = cstring(format!(".{name}.tmp.{:016x}", super::random_u64()?).as_bytes())?;
        // SAFETY: a valid directory fd and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: fd was just opened and is owned by nothing else.
            let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            // SAFETY: a valid fd; the umask may have cleared bits.
            if unsafe { libc::fchmod(file.as_raw_fd(), 0o644) } != 0 {
                let e = io::Error::last_os_error();
                // SAFETY: as above.
                unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
                return Err(e);
            }
            return Ok((tmp, file));
        }
        let e = io::Error::last_os_error();
        // Someone guessed a 64-bit random name: try another, a few times.
        if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 {
            attempt += 1;
            continue;
        }
        return Err(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_root_or_this_user_are_replaceable() {
        let me = 1000;
        let cases: [(u32, u32, Result<(), &str>); 9] = [
            (libc::S_IFREG | 0o644, 0, Ok(())),
            (libc::S_IFREG | 0o644, me, Ok(())),
            (
                libc::S_IFREG | 0o644,
                1001,
                Err("a regular file owned by uid 1001"),
            ),
            (libc::S_IFCHR | 0o666, 0, Err("a character device")),
            (libc::S_IFBLK | 0o660, 0, Err("a block device")),
            (libc::S_IFIFO | 0o644, me, Err("a fifo")),
            (libc::S_IFSOCK | 0o755, me, Err("a socket")),
            (libc::S_IFDIR | 0o755, 0, Err("a directory")),
            (libc::S_IFLNK | 0o777, me, Err("a symbolic link")),
        ];
        for (mode, owner, want) in cases {
            assert_eq!(
                replaceable(mode, owner, me),
                want.map_err(str::to_string),
                "mode {mode:o} owner {owner}"
            );
        }
    }

    #[test]
    fn only_state_files_and_empty_files_are_replaced() {
        let d = scratch("content");
        let path = d.join("f");
        let proc = Path::new("/proc");
        for (text, ok) in [
            ("", true),
            (" \n", true),
            (r#"{"netns":1,"listeners":[]}"#, true),
            ("localhost\n", false),
            (r#"{"listeners":[]}"#, false),
            ("[1,2]", false),
        ] {
            std::fs::write(&path, text).unwrap();
            let r = check_at_start(&path, proc);
            assert_eq!(r.is_ok(), ok, "{text:?}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains("not a bindwatch state file"), "{e}");
                assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
            }
        }
        // Swapped in between two writes: left alone, the writes stop.
        let mut guard = Guard::default();
        std::fs::remove_file(&path).unwrap();
        save_checked(&path, &empty(), proc, &mut guard).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "precious\n").unwrap();
        let e = save_checked(&path, &empty(), proc, &mut guard).unwrap_err();
        assert!(
            matches!(&e, SaveError::Refused(t) if t.contains("not a bindwatch state file")),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("bindwatch-target-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn empty() -> StateFile {
        StateFile {
            netns: 1,
            writer: None,
            listeners: Vec::new(),
        }
    }

    #[test]
    fn a_symlink_swapped_in_between_writes_is_left_alone() {
        let d = scratch("swap");
        let path = d.join("state.json");
        let mut guard = Guard::default();
        save_checked(&path, &empty(), Path::new("/proc"), &mut guard).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere"), &path).unwrap();
        let e = save_checked(&path, &empty(), Path::new("/proc"), &mut guard).unwrap_err();
        assert!(
            matches!(&e, SaveError::Refused(t) if t.contains("a symbolic link")),
            "{e}"
        );
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!d.join("elsewhere").exists(), "the link was not followed");
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left: {left:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_replaced_by_a_live_writer_stops_the_writes() {
        let d = scratch("live");
        let path = d.join("state.json");
        let mut guard = Guard::default();
        save_checked(&path, &empty(), Path::new("/proc"), &mut guard).unwrap();
        // Another writer (pid 1, alive; its start time read from /proc) renames its file in.
        let other = StateFile {
            writer: Some(super::super::this_writer(
                Path::new("/proc"),
                std::time::Duration::from_secs(5),
                SystemTime::now(),
            )),
            ..empty()
        };
        let mut other = other;
        if let Some(w) = other.writer.as_mut() {
            w.pid = 1;
            w.start_time = process_start_time(Path::new("/proc"), 1).unwrap_or(0);
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        let e = save_checked(&path, &empty(), Path::new("/proc"), &mut guard).unwrap_err();
        assert!(
            matches!(&e, SaveError::Refused(t) if t.contains("pid 1")),
            "{e}"
        );
        // A file from a writer that is gone is simply replaced.
        if let Some(w) = other.writer.as_mut() {
            w.start_time = w.start_time.wrapping_add(1);
        }
        std::fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        save_checked(&path, &empty(), Path::new("/proc"), &mut guard).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
