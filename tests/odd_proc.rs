//! Odd kernels and odd /proc: the agent keeps serving and says what it lacks.
//! Fixture procfs trees under tests/fixtures/procfs/ (via `--path.procfs` and
//! `--source procfs`), an unreadable /proc/PID/fd (running as `nobody`), and a real
//! netlink EPERM (a seccomp filter on the child makes `socket(AF_NETLINK, ...)` fail).

mod common;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const PORT: u16 = 18090;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/procfs")
        .join(name)
}

/// `bindwatch serve` with stderr in a file, killed on drop.
struct Agent {
    run: Logged,
    addr: SocketAddr,
}

impl Agent {
    fn spawn(mut cmd: Command, name: &str, extra: &[&str]) -> Agent {
        let listen = format!("127.0.0.1:{PORT}");
        let log =
            std::env::temp_dir().join(format!("bindwatch-odd-{}-{name}.log", std::process::id()));
        cmd.args([
            "serve",
            "--web.listen-address",
            &listen,
            "--state.file=",
            "--poll.interval",
            "300ms",
        ])
        .args(extra);
        let mut run = Logged::spawn(cmd, log);
        let addr: SocketAddr = listen.parse().expect("addr");
        run.wait_until("served /metrics", || {
            http_get(addr, "/metrics", &[]).map(|r| r.0).ok() == Some(200)
        });
        Agent { run, addr }
    }

    fn scrape(&self) -> Metrics {
        let (code, _, body) = http_get(self.addr, "/metrics", &[]).expect("scrape");
        assert_eq!(code, 200);
        Metrics::parse(&String::from_utf8_lossy(&body))
    }

    /// Metrics published after two more polls than had finished when it was called,
    /// so they reflect what the agent read after the caller's changes.
    fn metrics(&self) -> Metrics {
        let start = polls_done(&self.scrape());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.scrape();
            if polls_done(&m) >= start + 2.0 {
                return m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than two polls in 20 s: {}",
                m.text
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        self.run.log()
    }
}

/// The agent reading `procfs` as its /proc, with `--source procfs`.
fn procfs_agent(cmd: Command, name: &str, procfs: &Path) -> Agent {
    let root = procfs.to_str().expect("utf8");
    Agent::spawn(cmd, name, &["--source", "procfs", "--path.procfs", root])
}

/// Copies a fixture tree into a scratch directory (world-readable) so a test can add
/// what git cannot hold, such as an unreadable directory.
fn scratch_copy(name: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("bindwatch-odd-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dst);
    fn copy(src: &Path, dst: &Path) {
        fs::create_dir_all(dst).expect("mkdir");
        fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).expect("chmod");
        for e in fs::read_dir(src).expect("read fixture") {
            let e = e.expect("entry");
            let to = dst.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy(&e.path(), &to);
            } else {
                fs::copy(e.path(), &to).expect("copy");
                fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).expect("chmod");
            }
        }
    }
    copy(&fixture(name), &dst);
    dst
}

/// No /proc/net/tcp6 (a kernel without IPv6), a truncated last line: the table is read,
/// the bad line counted and logged with file and line, nothing else lost.
#[test]
fn missing_tcp6_and_truncated_line() {
    in_netns(|| {
        let procfs = fixture("odd");
        assert!(!procfs.join("net/tcp6").exists());
        let agent = procfs_agent(Command::new(bin()), "odd", &procfs);
        let m = agent.metrics();
        assert_eq!(
            m.get("bindwatch_source_active", &[("source", "procfs")]),
            Some(1.0)
        );
        for port in ["8080", "8081"] {
            assert_eq!(
                m.matching(
                    "bindwatch_listener_info",
                    &[("port", port), ("protocol", "tcp")]
                )
                .len(),
                1,
                "listener {port}: {}",
                m.text
            );
        }
        assert_eq!(
            m.matching(
                "bindwatch_listener_info",
                &[("port", "53"), ("protocol", "udp")]
            )
            .len(),
            1
        );
        assert_eq!(
            m.get(
                "bindwatch_sockets",
                &[("protocol", "tcp"), ("family", "ipv6"), ("state", "listen")]
            ),
            Some(0.0),
            "no tcp6 file: an empty IPv6 table"
        );
        assert!(
            m.get("bindwatch_procfs_malformed_lines_total", &[])
                .unwrap_or(0.0)
                >= 1.0
        );
        assert_eq!(
            m.get("bindwatch_poll_errors_total", &[("source", "procfs")]),
            Some(0.0)
        );
        assert!(agent.log().contains("net/tcp:4"), "{}", agent.log());
    });
}

/// /proc/net/udp missing altogether: each poll fails, is counted, and the agent goes on
/// serving (with /healthz telling the truth).
#[test]
fn missing_ipv4_table_fails_polls_not_the_agent() {
    in_netns(|| {
        let procfs = fixture("no-udp");
        let mut agent = procfs_agent(Command::new(bin()), "noudp", &procfs);
        let m = agent.metrics();
        assert!(
            m.get("bindwatch_poll_errors_total", &[("source", "procfs")])
                .unwrap_or(0.0)
                >= 1.0,
            "{}",
            m.text
        );
        assert_eq!(
            http_get(agent.addr, "/healthz", &[]).expect("healthz").0,
            503
        );
        assert!(agent.run.alive(), "still running");
        assert!(
            agent.log().contains("net/udp"),
            "the missing file is named: {}",
            agent.log()
        );
    });
}

/// An unreadable /proc/PID/fd (another user's process, bindwatch unprivileged): owners
/// are reported unavailable, the socket table is not.
#[test]
fn unreadable_fd_dir_degrades_owners_capability() {
    in_netns(|| {
        let procfs = scratch_copy("odd");
        let fd = procfs.join("4242/fd");
        fs::create_dir_all(&fd).expect("mkdir");
        fs::set_permissions(procfs.join("4242"), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(&fd, fs::Permissions::from_mode(0o000)).expect("chmod");
        let mut cmd = Command::new(bin());
        cmd.uid(65534).gid(65534); // nobody: root would read the directory anyway
        let agent = procfs_agent(cmd, "fd", &procfs);
        let m = agent.metrics();
        assert_eq!(
            m.get("bindwatch_capability", &[("capability", "owners")]),
            Some(0.0),
            "{}",
            m.text
        );
        assert_eq!(
            m.get("bindwatch_capability", &[("capability", "socket_flags")]),
            Some(0.0)
        );
        assert_eq!(
            m.matching(
                "bindwatch_listener_info",
                &[("port", "8080"), ("process", "unknown")]
            )
            .len(),
            1,
            "listeners still listed, owner unknown"
        );
        drop(agent);
        let _ = fs::set_permissions(&fd, fs::Permissions::from_mode(0o755));
        let _ = fs::remove_dir_all(&procfs);
    });
}

/// A seccomp filter: `socket(AF_NETLINK, ...)` and bpf(2) fail with EPERM, everything
/// else is allowed. What a locked-down container runtime or LSM does to sock_diag (and
/// to the bpf source, which `--source auto` would otherwise prefer).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn deny_netlink(cmd: &mut Command) {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; } (little endian)
    let filter = [
        ins(LD_W_ABS, 0, 0, 4),                    // arch
        ins(JEQ_K, 0, 6, AUDIT_ARCH),              // other ABI: allow
        ins(LD_W_ABS, 0, 0, 0),                    // syscall number
        ins(JEQ_K, 3, 0, libc::SYS_bpf as u32),    // bpf(): deny
        ins(JEQ_K, 0, 3, libc::SYS_socket as u32), // not socket(): allow
        ins(LD_W_ABS, 0, 0, 16),                   // args[0], low half
        ins(JEQ_K, 0, 1, libc::AF_NETLINK as u32), // not netlink: allow
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    seccomp_in_child(cmd, filter.to_vec());
}

/// netlink sock_diag denied (EPERM): `--source auto` falls back to /proc/net, says so in
/// the log and in `bindwatch_source_active`, and still sees the sockets.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn netlink_eperm_falls_back_to_procfs() {
    in_netns(|| {
        let _l = tcp_listener("127.0.0.1:18555".parse().expect("addr"), false, false, None)
            .expect("listener");
        let mut cmd = Command::new(bin());
        deny_netlink(&mut cmd);
        let agent = Agent::spawn(cmd, "eperm", &["--source", "auto"]);
        let m = agent.metrics();
        assert_eq!(
            m.get("bindwatch_source_active", &[("source", "procfs")]),
            Some(1.0),
            "{}",
            m.text
        );
        assert_eq!(
            m.get("bindwatch_source_active", &[("source", "netlink")]),
            Some(0.0)
        );
        assert_eq!(
            m.matching("bindwatch_listener_info", &[("port", "18555")])
                .len(),
            1,
            "sockets seen through /proc/net"
        );
        let log = agent.log();
        assert!(
            log.contains("falling back to") && log.contains("Operation not permitted"),
            "{log}"
        );
        // The same filter makes `--source netlink` a clear start-up error.
        let mut cmd = Command::new(bin());
        deny_netlink(&mut cmd);
        let out = cmd
            .args([
                "serve",
                "--source",
                "netlink",
                "--web.listen-address",
                "127.0.0.1:0",
                "--state.file=",
            ])
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("--source"));
    });
}
