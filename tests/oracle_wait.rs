//! `bindwatch wait` against real blockers, in a network namespace of its own: it returns 0
//! soon (within 1.5 s) after the last blocker is gone, whether a TIME_WAIT destroyed with
//! `ss -K` (CONFIG_INET_DIAG_DESTROY) or a bound socket that is closed, and gives up with 1
//! at `--timeout` while a listener holds the port.
//!
//! Needs root (network namespaces, `ss -K`) and `ss`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin;
use common::oracle::*;

/// Spawns `bindwatch wait` (in the current netns).
fn spawn_wait(args: &[&str]) -> ChildGuard {
    ChildGuard(spawn(
        Command::new(bin())
            .arg("wait")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    ))
}

/// Waits (bounded) for the child to exit: (exit code, when).
fn exit_of(c: &mut ChildGuard, timeout: Duration) -> Option<(i32, Instant)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(st) = c.0.try_wait().expect("try_wait") {
            return Some((st.code().unwrap_or(-1), Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn wait_returns_soon_after_the_last_blocker_is_gone() {
    netns(|| {
        let p = P.to_string();
        // 1. A TIME_WAIT (listener closed), destroyed with `ss -K` (CONFIG_INET_DIAG_DESTROY).
        let l = listener("127.0.0.1", P, false, None);
        tw_server(&l, addr("127.0.0.1", P));
        close_now(l);
        assert_state("time-wait", P);
        let mut w = spawn_wait(&[&p, "--timeout", "30s", "--poll.interval", "500ms"]);
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            w.0.try_wait().expect("try_wait").is_none(),
            "wait returned while TIME_WAIT blocks"
        );
        let filter = format!("( sport = :{P} )");
        let _ = output(Command::new("ss").args(["-K", "state", "time-wait", &filter]));
        let gone = Instant::now();
        assert_eq!(
            ss_count("time-wait", P),
            0,
            "ss -K could not destroy the TIME_WAIT"
        );
        let (code, at) = exit_of(&mut w, Duration::from_secs(10)).expect("wait did not exit");
        let after = at.duration_since(gone);
        eprintln!(
            "wait exited {code} {:.3} s after the TIME_WAIT was destroyed",
            after.as_secs_f64()
        );
        assert_eq!(code, 0);
        assert!(after < Duration::from_millis(1500), "wait took {after:?}");

        // 2. A bound-only socket that is closed (a blocker that goes away without ss -K).
        let b = bound_only("0.0.0.0", P, false, None);
        let mut w = spawn_wait(&[&p, "--timeout", "30s", "--poll.interval", "500ms"]);
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            w.0.try_wait().expect("try_wait").is_none(),
            "wait returned while bound socket blocks"
        );
        close_now(b);
        let gone = Instant::now();
        let (code, at) = exit_of(&mut w, Duration::from_secs(10)).expect("wait did not exit");
        let after = at.duration_since(gone);
        eprintln!(
            "wait exited {code} {:.3} s after the bound socket was closed",
            after.as_secs_f64()
        );
        assert_eq!(code, 0);
        assert!(after < Duration::from_millis(1500), "wait took {after:?}");

        // 3. A listener holds P: wait gives up with 1 at --timeout.
        let l = listener("0.0.0.0", P, true, None);
        let t = Instant::now();
        let mut w = spawn_wait(&[&p, "--timeout", "2s", "--poll.interval", "500ms"]);
        let (code, at) = exit_of(&mut w, Duration::from_secs(10)).expect("wait did not give up");
        let took = at.duration_since(t);
        eprintln!("wait gave up with {code} after {:.3} s", took.as_secs_f64());
        assert_eq!(code, 1);
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
            "{took:?}"
        );
        close_now(l);
    });
}
