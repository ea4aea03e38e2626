//! The state file is written only over a regular file bindwatch may own, or a missing
//! path: a device node, FIFO, socket, directory or symlink at `--state.file` is refused
//! at start (exit 2, naming the path and what is there) and, when one appears while the
//! agent runs, the agent stops writing the state file (a log line and a metric) and
//! keeps serving. A second agent on a state file that a live agent writes is refused.
//!
//! Each scenario runs in its own network namespace and scratch directory.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, http_get, in_netns, Logged, Scratch};

/// What is at `path`, as `stat -c %F` would say (without following a symlink).
fn kind(path: &std::path::Path) -> String {
    match std::fs::symlink_metadata(path) {
        Err(e) => format!("nothing ({e})"),
        Ok(m) => {
            let t = m.file_type();
            if t.is_char_device() {
                "character device"
            } else if t.is_block_device() {
                "block device"
            } else if t.is_fifo() {
                "fifo"
            } else if t.is_socket() {
                "socket"
            } else if t.is_symlink() {
                "symbolic link"
            } else if t.is_dir() {
                "directory"
            } else {
                "regular file"
            }
            .to_string()
        }
    }
}

fn mknod(path: &std::path::Path, mode: libc::mode_t, dev: libc::dev_t) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn serve_cmd(port: u16, state: &str) -> Command {
    let mut c = Command::new(bin());
    c.args([
        "serve",
        "--web.listen-address",
        &format!("127.0.0.1:{port}"),
        "--state.file",
        state,
        "--poll.interval",
        "100ms",
        "--poll.cpu-budget",
        "0",
        "--no-bind-events",
    ]);
    c
}

/// Waits for the child to exit (at most 15 s); `None` when it still runs.
fn exit_code(l: &mut Logged) -> Option<Option<i32>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(st)) = l.child.try_wait() {
            return Some(st.code());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Puts one kind of file at a path.
type Maker = Box<dyn Fn(&std::path::Path)>;

#[test]
fn a_state_file_path_holding_no_regular_file_is_refused_at_start() {
    in_netns(|| {
        let dir = Scratch::new("state-target-start");
        let cases: Vec<(&str, &str, Maker)> = vec![
            (
                "null",
                "character device",
                Box::new(|p| mknod(p, libc::S_IFCHR | 0o666, libc::makedev(1, 3))),
            ),
            (
                "fifo",
                "fifo",
                Box::new(|p| mknod(p, libc::S_IFIFO | 0o644, 0)),
            ),
            (
                "sock",
                "socket",
                Box::new(|p| {
                    std::mem::forget(std::os::unix::net::UnixListener::bind(p).expect("bind"))
                }),
            ),
            (
                "dir",
                "directory",
                Box::new(|p| std::fs::create_dir(p).expect("mkdir")),
            ),
            (
                "link",
                "symbolic link",
                Box::new(|p| {
                    std::os::unix::fs::symlink("/dev/null", p).expect("symlink");
                }),
            ),
            // A mistyped path: a regular file that is no state file (say /etc/hostname).
            (
                "hostname",
                "regular file",
                Box::new(|p| std::fs::write(p, "myhost\n").expect("write")),
            ),
        ];
        for (i, (name, what, make)) in cases.iter().enumerate() {
            let path = dir.path(name);
            make(&path);
            assert_eq!(&kind(&path), what);
            let mut l = Logged::spawn(
                serve_cmd(19291 + i as u16, &dir.str(name)),
                dir.path(&format!("{name}.log")),
            );
            let code = exit_code(&mut l);
            let log = l.log();
            assert_eq!(
                code,
                Some(Some(2)),
                "--state.file on a {what}: exit 2 at start, got {code:?} (None: still running), log: {log}; the path now holds a {}",
                kind(&path)
            );
            let named = if *what == "regular file" {
                "not a bindwatch state file"
            } else {
                what
            };
            assert!(
                log.contains(&dir.str(name)) && log.contains(named),
                "the error names the path and what is there: {log}"
            );
            assert_eq!(&kind(&path), what, "the {what} is left as it was");
            if *what == "regular file" {
                assert_eq!(std::fs::read_to_string(&path).unwrap(), "myhost\n");
            }
        }
    });
}

#[test]
fn a_path_swapped_at_run_time_stops_the_state_file_and_the_agent_serves_on() {
    in_netns(|| {
        let dir = Scratch::new("state-target-swap");
        let state = dir.path("state.json");
        let port = 19297;
        let mut l = Logged::spawn(serve_cmd(port, &dir.str("state.json")), dir.path("a.log"));
        l.wait_until("wrote its state file", || kind(&state) == "regular file");
        std::fs::remove_file(&state).expect("rm");
        mknod(&state, libc::S_IFIFO | 0o644, 0);
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut last = String::new();
        let stopped = common::eventually(Duration::from_secs(15), || {
            let Ok((200, _, body)) = http_get(addr, "/metrics", &[]) else {
                return false;
            };
            last = String::from_utf8_lossy(&body).into_owned();
            last.lines().any(|x| x == "bindwatch_state_file_stopped 1")
        });
        assert_eq!(kind(&state), "fifo", "the FIFO is never replaced");
        assert!(
            stopped,
            "bindwatch_state_file_stopped 1 once a FIFO is at the path; last scrape: {last}"
        );
        assert!(
            l.log().contains("fifo") && l.log().contains(&dir.str("state.json")),
            "one error line names the path and what is there: {}",
            l.log()
        );
        assert!(l.alive(), "the agent keeps serving");
        let (code, _, _) = http_get(addr, "/healthz", &[]).expect("healthz");
        assert_eq!(code, 200);
    });
}

#[test]
fn a_second_agent_on_a_live_agents_state_file_is_refused() {
    in_netns(|| {
        let dir = Scratch::new("state-target-second");
        let state = dir.path("state.json");
        let mut a = Logged::spawn(serve_cmd(19298, &dir.str("state.json")), dir.path("a.log"));
        a.wait_until("wrote its state file", || {
            std::fs::read_to_string(&state).is_ok_and(|t| t.contains("heartbeat"))
        });
        let mut b = Logged::spawn(serve_cmd(19299, &dir.str("state.json")), dir.path("b.log"));
        let code = exit_code(&mut b);
        let log = b.log();
        assert_eq!(
            code,
            Some(Some(2)),
            "the second agent exits 2 (None: still running): {log}"
        );
        assert!(
            log.contains(&format!("pid {}", a.child.id())) && log.contains(&dir.str("state.json")),
            "the error names the path and the live writer: {log}"
        );
        assert!(a.alive(), "the first agent runs on");
    });
}
