//! Shutdown is bounded whatever the poller does. The hang is real and independent of
//! any file: the test ptrace-stops the agent's poller thread alone (PTRACE_SEIZE +
//! PTRACE_INTERRUPT on its thread id), which is what a poll stuck in the kernel looks
//! like to the rest of the process (a thread that never comes back), while the HTTP
//! threads and the signal handling run on. A FIFO in a fake procfs would do the same
//! on a build that reads it blocking, but file reads are being made non-blocking, and
//! such a test would then pass without exercising a hang at all.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The thread id of the agent's poller thread (named `bindwatch-poller`; the kernel
/// keeps 15 bytes of it).
fn poller_tid(pid: i32) -> i32 {
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let e = e.expect("entry");
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "bindwatch-polle" {
            return e.file_name().to_string_lossy().parse().expect("tid");
        }
    }
    panic!("no poller thread in /proc/{pid}/task");
}

fn thread_state(pid: i32, tid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .unwrap_or('?')
}

#[test]
fn sigterm_exits_in_bounded_time_with_the_poller_stuck() {
    in_netns(|| {
        let mut srv = Server::start(18701, &["--poll.interval", "1h"]);
        let pid = srv.pid();
        let tid = poller_tid(pid);
        // SAFETY: ptrace on a thread of our own child; arguments are plain integers.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0);
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
            assert!(libc::WIFSTOPPED(status), "the poller thread stopped");
        }
        assert_eq!(
            thread_state(pid, tid),
            't',
            "the poller is in a tracing stop"
        );
        // The rest of the agent still serves.
        assert_eq!(http_get(srv.addr, "/metrics", &[]).expect("scrape").0, 200);

        let t0 = Instant::now();
        // SAFETY: signalling the child we spawned, by its pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = t0 + Duration::from_secs(15);
        let status = loop {
            // The stuck thread is ours to reap (we trace it) once the process exits.
            let mut st = 0;
            // SAFETY: non-blocking waitpid on the traced thread.
            unsafe { libc::waitpid(tid, &mut st, libc::__WALL | libc::WNOHANG) };
            if let Some(s) = srv.child.try_wait().expect("try_wait") {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t0.elapsed();
        let Some(status) = status else {
            // SAFETY: detaching lets the thread run; the child is then killed on drop.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
            panic!("SIGTERM: still running after {took:?} with the poller stuck");
        };
        assert!(
            took < Duration::from_secs(10),
            "exited only after {took:?} (bound: 4 s drain + 2 s for the poller)"
        );
        assert_eq!(status.code(), Some(0), "a clean exit: {status:?}");
        assert!(
            TcpStream::connect(srv.addr).is_err(),
            "the listener is closed"
        );
        let mut log = String::new();
        if let Some(e) = srv.child.stderr.as_mut() {
            let _ = std::io::Read::read_to_string(e, &mut log);
        }
        assert!(
            log.contains("poller did not stop in time"),
            "the log says why: {log}"
        );
    });
}
