//! The agent's signals, caught from the first instruction of `serve` on: a SIGHUP that
//! arrives while the agent starts (config, BPF, listen sockets take a moment) is
//! queued and applied once it runs, a SIGTERM or SIGINT during start-up makes it exit
//! cleanly, not die by the signal's default action (systemd counts a death by SIGHUP
//! as clean, so `Restart=on-failure` would leave the agent down).
//!
//! The handler only counts (atomics) and writes a byte to a pipe, both async-signal
//! safe; [`Dispatch`] turns them into reloads and a shutdown on the runtime.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use tokio::io::unix::AsyncFd;

/// SIGHUPs received and not yet applied.
static HUPS: AtomicU64 = AtomicU64::new(0);
/// The first SIGTERM or SIGINT received (0: none).
static TERM: AtomicI32 = AtomicI32::new(0);
/// The pipe's write end (-1 before [`install`]).
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// The pipe's read end, until [`Dispatch::take`] takes it.
static WAKE_READ: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno; saved and restored so the
    // interrupted code sees its own.
    let saved = unsafe { *libc::__errno_location() };
    if sig == libc::SIGHUP {
        HUPS.fetch_add(1, Ordering::SeqCst);
    } else {
        let _ = TERM.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    }
    let fd = WAKE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = 1u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a live local. A full
        // pipe (EAGAIN) is fine: the reader is woken already.
        unsafe { libc::write(fd, (&raw const b).cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Installs the handlers for SIGHUP, SIGTERM and SIGINT and unblocks them (a parent
/// may have left them blocked). Call first thing in `serve`, before any thread.
///
/// # Errors
/// When the pipe or a handler cannot be set up.
pub fn install() -> io::Result<()> {
    if WAKE_WRITE.load(Ordering::SeqCst) < 0 {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        WAKE_READ.store(fds[0], Ordering::SeqCst);
        WAKE_WRITE.store(fds[1], Ordering::SeqCst);
    }
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: sa.sa_mask is a valid sigset_t to empty.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: an all-zero sigset_t is valid to initialise with sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a valid sigaction for a catchable signal; no old action wanted.
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: set is a valid sigset_t and sig a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: a valid set; no old mask wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// The SIGTERM or SIGINT received, if one was: the agent should stop.
pub fn terminating() -> Option<&'static str> {
    match TERM.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        _ => Some("SIGTERM"),
    }
}

/// How many SIGHUPs arrived since the last call.
pub fn take_reloads() -> u64 {
    HUPS.swap(0, Ordering::SeqCst)
}

/// What the caught signals ask of the running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Re-read the config (one for any number of queued SIGHUPs).
    Reload,
    /// Shut down (the signal's name).
    Stop(&'static str),
}

/// Waits for caught signals on the runtime.
pub struct Dispatch {
    /// The pipe's read end; `None` when the runtime could not watch it (then the
    /// counters are looked at every [`POLL_FALLBACK`]).
    wake: Option<AsyncFd<OwnedFd>>,
}

/// How often the counters are checked when the pipe cannot be watched.
pub const POLL_FALLBACK: std::time::Duration = std::time::Duration::from_millis(250);

impl Dispatch {
    /// Takes the pipe's read end (only one `Dispatch` has it); without it (no
    /// [`install`], or the runtime cannot watch it) the counters are polled. Call on
    /// the runtime.
    pub fn take() -> Dispatch {
        let fd = WAKE_READ.swap(-1, Ordering::SeqCst);
        let wake = (fd >= 0).then(|| {
            // SAFETY: fd is the pipe's read end, owned by nothing else once swapped out.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the OwnedFd is a valid open fd, owned by the AsyncFd from here on;
            // nothing else closes or replaces it.
            unsafe { AsyncFd::register(owned) }
                .map_err(|e| tracing::warn!(error = %e, "cannot watch the signal pipe; checking for signals every 250 ms"))
                .ok()
        });
        Dispatch {
            wake: wake.flatten(),
        }
    }

    /// The next request: a stop first, then queued reloads (also those that arrived
    /// before the runtime ran), else waits for a signal.
    pub async fn next(&mut self) -> Request {
        loop {
            if let Some(sig) = terminating() {
                return Request::Stop(sig);
            }
            if take_reloads() > 0 {
                return Request::Reload;
            }
            let Some(wake) = self.wake.as_ref() else {
                tokio::time::sleep(POLL_FALLBACK).await;
                continue;
            };
            match wake.readable().await {
                Ok(mut guard) => {
                    let mut buf = [0u8; 64];
                    // Drain the pipe; the counters say what happened.
                    // SAFETY: a valid fd and a writable buffer of the length given.
                    while unsafe {
                        libc::read(
                            std::os::fd::AsRawFd::as_raw_fd(guard.get_inner()),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                        )
                    } > 0
                    {}
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait on the signal pipe; checking for signals every 250 ms");
                    self.wake = None;
                }
            }
        }
    }
}
