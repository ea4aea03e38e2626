//! Signals are handled from the first instruction of `serve`: a SIGHUP during
//! start-up is queued and applied once the agent runs, a SIGTERM during start-up
//! exits cleanly (0). Start-up here includes loading the BPF tracer (a few hundred
//! milliseconds as root), so the signal is sent while the agent is provably still
//! starting: as soon as the kernel shows it catches the signal, and before its listen
//! socket accepts connections.
//!
//! Also: with `NOTIFY_SOCKET` set, the agent says READY=1 once the first poll is
//! published (systemd `Type=notify`).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, http_get, in_netns, Logged, Scratch};

/// Whether `pid` catches signal `sig` (its bit in SigCgt of /proc/PID/status).
fn catches(pid: u32, sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

fn serve(port: u16, dir: &Scratch, name: &str) -> Logged {
    let mut c = Command::new(bin());
    c.args([
        "serve",
        "--web.listen-address",
        &format!("127.0.0.1:{port}"),
        "--state.file",
        "",
        "--poll.interval",
        "200ms",
    ]);
    Logged::spawn(c, dir.path(&format!("{name}.log")))
}

/// Waits until the agent catches `sig`, and asserts it did before it listened.
fn caught_before_listening(l: &mut Logged, addr: SocketAddr, sig: i32) {
    let pid = l.child.id();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if catches(pid, sig) {
            return;
        }
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err(),
            "the agent listened on {addr} before it handled signal {sig}: {}",
            l.log()
        );
        assert!(l.alive(), "the agent exited during start-up: {}", l.log());
        assert!(
            Instant::now() < deadline,
            "the agent never caught signal {sig}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[test]
fn sighup_during_start_up_is_applied_once_running() {
    in_netns(|| {
        let dir = Scratch::new("startup-hup");
        let port = 19281;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut l = serve(port, &dir, "agent");
        caught_before_listening(&mut l, addr, libc::SIGHUP);
        kill(l.child.id(), libc::SIGHUP);
        l.wait_until("answered /healthz", || {
            matches!(http_get(addr, "/healthz", &[]), Ok((200, _, _)))
        });
        let log = l.log.clone();
        l.wait_until("applied the queued reload", || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("reload requested"))
        });
        assert!(l.alive(), "SIGHUP did not kill the agent: {}", l.log());
    });
}

#[test]
fn sigterm_during_start_up_exits_cleanly() {
    in_netns(|| {
        let dir = Scratch::new("startup-term");
        let port = 19282;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut l = serve(port, &dir, "agent");
        caught_before_listening(&mut l, addr, libc::SIGTERM);
        kill(l.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Ok(Some(st)) = l.child.try_wait() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "still running 15 s after SIGTERM: {}",
                l.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "a SIGTERM during start-up exits 0 ({status}): {}",
            l.log()
        );
    });
}

#[test]
fn ready_is_notified_once_the_first_poll_is_published() {
    in_netns(|| {
        let dir = Scratch::new("startup-notify");
        let sock_path = dir.path("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify");
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let port = 19283;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut c = Command::new(bin());
        c.args([
            "serve",
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--state.file",
            "",
            "--no-bind-events",
        ])
        .env("NOTIFY_SOCKET", &sock_path);
        let mut l = Logged::spawn(c, dir.path("agent.log"));
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!("no notification within 15 s ({e}): {}", l.log());
        });
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            msg.lines().any(|x| x == "READY=1"),
            "READY=1 expected: {msg:?}"
        );
        // Ready means serving with a published poll.
        let (code, _, body) = http_get(addr, "/metrics", &[]).expect("scrape when ready");
        assert_eq!(code, 200);
        assert!(String::from_utf8_lossy(&body).contains("bindwatch_last_poll_timestamp_seconds"));
        assert!(l.alive());
    });
}
