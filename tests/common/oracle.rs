//! The harness of the kernel-as-oracle tests: real sockets with exact flags, the
//! kernel's own answer (a real bind() + listen() of a fresh socket, closed at once), and
//! bindwatch, `ss`, `ip` and python children run in the current network namespace.
//!
//! Tests using it run situations in parallel threads of one process, which shares one fd
//! table. A fork/clone for a child process (bindwatch, ss, ip, python) copies that table,
//! and the copies live until the child's exec has closed them: a socket another thread
//! closes meanwhile lives on (a closed probe listener was seen by the next `check`). So
//! every spawn here holds one lock ([`FORK`]) until the child has dropped its copies, and
//! every close that must take effect at once takes the same lock.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// The service port of every situation (each runs in its own netns).
pub const P: u16 = 5000;
/// A port inside the default ephemeral range, for clients that get it by autobind.
pub const EPH_P: u16 = 40000;
/// A second port to connect to from clients on P.
pub const PEER_PORT: u16 = 6000;
/// The other user (nobody).
pub const OTHER_UID: u32 = 65534;
/// `IP_LOCAL_PORT_RANGE` (Linux 6.3+), not in every libc crate version.
pub const IP_LOCAL_PORT_RANGE: libc::c_int = 51;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The new socket whose bind is predicted and then tried.
#[derive(Clone, Copy, Debug)]
pub struct NewSock {
    pub addr: &'static str,
    pub v6only: bool,
    pub reuseaddr: bool,
    /// `Some(uid)`: SO_REUSEPORT, created as `uid`.
    pub reuseport_uid: Option<u32>,
    pub device: Option<&'static str>,
}

impl NewSock {
    pub fn describe(&self) -> String {
        let mut s = match self.addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => format!("[{a}]"),
            _ => self.addr.to_string(),
        };
        if self.v6only {
            s.push_str(" v6only");
        }
        if self.addr == "::" && !self.v6only {
            s.push_str(" (bindv6only default)");
        }
        s.push_str(if self.reuseaddr {
            " +reuseaddr"
        } else {
            " -reuseaddr"
        });
        if let Some(u) = self.reuseport_uid {
            s.push_str(&format!(" +reuseport(uid {u})"));
        }
        if let Some(d) = self.device {
            s.push_str(&format!(" device={d}"));
        }
        s
    }
}

/// Excludes process spawns (fork .. exec) from closes of sockets that must be gone at once.
/// A flag and a condvar rather than a guard, so one thread can take it and another
/// release it (see [`netns`]).
pub struct ForkLock {
    busy: Mutex<bool>,
    cv: Condvar,
}

static FORK: ForkLock = ForkLock {
    busy: Mutex::new(false),
    cv: Condvar::new(),
};

impl ForkLock {
    pub fn acquire(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = self.cv.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
    }

    pub fn release(&self) {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.cv.notify_one();
    }

    pub fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        self.acquire();
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        self.release();
        r.unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// Closes `t` (a socket, stream, ...) while no child process holds a copy of it.
pub fn close_now<T>(t: T) {
    FORK.with(|| drop(t));
}

/// Spawns `cmd` under [`FORK`], and keeps the lock until the child has dropped its copies
/// of our sockets: spawn returns once the exec has begun, but the close-on-exec files are
/// closed a little later in the child, and a woken parent can preempt it before that.
pub fn spawn(cmd: &mut Command) -> Child {
    FORK.with(|| {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(2);
        while inherited_sockets(child.id()) > 0 {
            assert!(
                Instant::now() < deadline,
                "child {} kept our sockets",
                child.id()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        child
    })
}

/// Sockets the process `pid` holds under the same fd number and inode as this process:
/// copies inherited at fork that exec has not closed yet (0 once it exited).
pub fn inherited_sockets(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                return false;
            };
            let Ok(theirs) = std::fs::read_link(e.path()) else {
                return false;
            };
            n > 2
                && theirs.to_string_lossy().starts_with("socket:")
                && std::fs::read_link(format!("/proc/self/fd/{n}")).ok() == Some(theirs)
        })
        .count()
}

/// Runs `cmd` to completion, capturing its output.
pub fn output(cmd: &mut Command) -> std::process::Output {
    let child = spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    child.wait_with_output().expect("wait for child")
}

/// `run_ok` (tests/common) with the spawn under [`FORK`].
pub fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    succeeded(cmd, args, output(Command::new(cmd).args(args)))
}

/// `bindwatch` (tests/common) with the spawn under [`FORK`]: (exit code, stdout, stderr).
pub fn bw(args: &[&str]) -> (i32, String, String) {
    let out = output(Command::new(bin()).args(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `in_netns` (tests/common), with its `ip link set lo up` spawn covered by [`FORK`]: the
/// lock is taken here and released by the namespace thread once `f` starts.
pub fn netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    FORK.acquire();
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        in_netns(move || {
            if !flag.swap(true, Ordering::SeqCst) {
                FORK.release();
            }
            f()
        })
    }));
    if !released.swap(true, Ordering::SeqCst) {
        FORK.release();
    }
    r.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `server_time_wait` (tests/common) with immediate closes: the server side closes
/// first, then the client, so the server side (on the service port) ends in TIME_WAIT.
pub fn tw_server(listener: &Socket, to: SocketAddr) {
    let c = TcpStream::connect(to).expect("connect");
    let (s, _) = listener.accept().expect("accept");
    close_now(s);
    std::thread::sleep(Duration::from_millis(50));
    close_now(c);
    std::thread::sleep(Duration::from_millis(50));
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a python3 program (optionally as another user via setpriv) in the current netns
/// and waits until it prints `ready`.
pub fn python(code: &str, uid: Option<u32>) -> ChildGuard {
    let mut cmd = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            let u = u.to_string();
            // The system python: a pyenv shim under /root is not readable by another uid.
            c.args([
                "--reuid",
                &u,
                "--regid",
                &u,
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                code,
            ]);
            c
        }
        None => {
            let mut c = Command::new("python3");
            c.args(["-c", code]);
            c
        }
    };
    let mut child = ChildGuard(spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    ));
    let mut line = String::new();
    // The program prints `ready` or dies (then read_line returns 0): bounded.
    BufReader::new(child.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read child stdout");
    if line.trim() != "ready" {
        let mut err = String::new();
        let _ = child.0.stderr.as_mut().map(|e| e.read_to_string(&mut err));
        panic!("python child failed: {line:?} {err}");
    }
    child
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

pub fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Restricts the ports a socket may be autobound to (`IP_LOCAL_PORT_RANGE`).
pub fn pin_local_port(s: &Socket, port: u16) {
    let range: u32 = (u32::from(port) << 16) | u32::from(port);
    // SAFETY: a valid fd and a u32 option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_LOCAL_PORT_RANGE,
            (&range as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "IP_LOCAL_PORT_RANGE: {}",
        std::io::Error::last_os_error()
    );
}

/// Creates a socket as `uid` (the socket's owner is the fsuid at creation; setfsuid is
/// per thread).
pub fn socket_as(uid: u32, domain: Domain, ty: Type, proto: SockProto) -> std::io::Result<Socket> {
    if uid == 0 {
        return Socket::new(domain, ty, Some(proto));
    }
    // SAFETY: setfsuid changes only this thread's fs credentials; restored below.
    unsafe { libc::setfsuid(uid) };
    let s = Socket::new(domain, ty, Some(proto));
    // SAFETY: setfsuid changes only this thread's fs credentials, back to root.
    unsafe { libc::setfsuid(0) };
    s
}

/// The kernel's answer for `n` on `port`: a real bind() (+ listen() for TCP) of a fresh
/// socket, closed at once.
pub fn kernel_probe(proto: Proto, port: u16, n: &NewSock) -> Result<(), i32> {
    let a = addr(n.addr, port);
    let (ty, p) = match proto {
        Proto::Tcp => (Type::STREAM, SockProto::TCP),
        Proto::Udp => (Type::DGRAM, SockProto::UDP),
    };
    let s =
        socket_as(n.reuseport_uid.unwrap_or(0), Domain::for_address(a), ty, p).map_err(errno)?;
    let r = probe_on(&s, proto, a, n);
    close_now(s);
    r
}

/// Sets `n`'s options on `s`, binds, and listens (TCP).
pub fn probe_on(s: &Socket, proto: Proto, a: SocketAddr, n: &NewSock) -> Result<(), i32> {
    if let Some(d) = n.device {
        s.bind_device(Some(d.as_bytes())).map_err(errno)?;
        // ::1 lives on lo: a socket bound to d0 gets EADDRNOTAVAIL before the port is
        // looked at. IPV6_FREEBIND skips only that address check, so the bind reaches
        // the port conflict check, which is the question here.
        if a.is_ipv6() && !a.ip().is_unspecified() {
            s.set_freebind_ipv6(true).map_err(errno)?;
        }
    }
    s.set_reuse_address(n.reuseaddr).map_err(errno)?;
    s.set_reuse_port(n.reuseport_uid.is_some()).map_err(errno)?;
    // Without --v6only bindwatch assumes net.ipv6.bindv6only, as a fresh socket gets.
    if n.v6only {
        s.set_only_v6(true).map_err(errno)?;
    }
    s.bind(&a.into()).map_err(errno)?;
    if proto == Proto::Tcp {
        s.listen(16).map_err(errno)?;
    }
    Ok(())
}

/// Number of TCP sockets in `state` (ss state name) with local port `port`.
pub fn ss_count(state: &str, port: u16) -> usize {
    let filter = format!("( sport = :{port} )");
    let out = run("ss", &["-Htan", "state", state, &filter]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

pub fn assert_state(state: &str, port: u16) {
    assert!(
        eventually(Duration::from_secs(3), || ss_count(state, port) > 0),
        "no {state} socket on port {port}: {}",
        String::from_utf8_lossy(&run("ss", &["-tanoe"]).stdout)
    );
}

pub fn listener(ip: &str, port: u16, reuseaddr: bool, v6only: Option<bool>) -> Socket {
    tcp_listener(addr(ip, port), reuseaddr, false, v6only).expect("listener")
}

pub fn bound_only(ip: &str, port: u16, reuseaddr: bool, v6only: Option<bool>) -> Socket {
    tcp_socket(addr(ip, port), reuseaddr, false, v6only).expect("bind")
}
