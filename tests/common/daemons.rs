//! Real daemons for restart tests: nginx (master and workers), python's
//! `socketserver`, redis-server; their processes found through /proc, and killed by
//! pid on drop. Callers run inside their own network namespace ([`super::in_netns`]).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Scratch;

/// Pids this test started (directly or as a daemon's children), killed on drop.
#[derive(Default)]
pub struct Pids(pub Vec<i32>, pub Vec<Child>);

impl Pids {
    /// Keeps a child this test spawned: killed and reaped on drop.
    pub fn keep(&mut self, c: Child) {
        self.add(c.id() as i32);
        self.1.push(c);
    }

    pub fn add(&mut self, pid: i32) {
        if !self.0.contains(&pid) {
            self.0.push(pid);
        }
    }
}

impl Drop for Pids {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: kill with a pid this test started and a signal number.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        for c in &mut self.1 {
            let _ = c.wait();
        }
    }
}

/// Field 4 (ppid) and 3 (state) of /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, i32)> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &t[t.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Live (not zombie) children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((st, ppid)) = stat(p) {
            if ppid == pid && st != 'Z' {
                out.push(p);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Whether `pid` runs (a zombie holds no fds: it does not count).
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(st, _)| st != 'Z' && st != 'X')
}

/// Waits for `pred` (polled every 50 ms) up to `secs`; panics naming `what` and
/// what `last` says was seen last.
pub fn await_that(
    what: &str,
    secs: u64,
    mut pred: impl FnMut() -> bool,
    last: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last seen: {}",
            last()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn accepts(port: u16) -> bool {
    let a: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
}

/// An nginx configuration on 127.0.0.1:`port` with `workers` worker processes,
/// everything under `dir`.
pub fn nginx_conf(dir: &Scratch, name: &str, port: u16, workers: u32) -> PathBuf {
    let d = dir.path(name);
    std::fs::create_dir_all(&d).expect("mkdir nginx dir");
    let ds = d.to_str().expect("utf8").to_string();
    let conf = format!(
        "worker_processes {workers};\ndaemon on;\npid {ds}/nginx.pid;\nerror_log {ds}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {ds}; proxy_temp_path {ds}; fastcgi_temp_path {ds}; \
         uwsgi_temp_path {ds}; scgi_temp_path {ds}; server {{ listen 127.0.0.1:{port}; }} }}\n"
    );
    let p = d.join("nginx.conf");
    std::fs::write(&p, conf).expect("write nginx.conf");
    p
}

/// Runs `nginx -c conf` (it daemonizes): its output, whether it started or not.
pub fn nginx(conf: &Path, in_cgroup: Option<&Path>) -> Output {
    let c = conf.to_str().expect("utf8");
    let err = conf.with_file_name("startup.log");
    let e = err.to_str().expect("utf8");
    let mut cmd = match in_cgroup {
        // Like systemd: the service's first process is placed in the unit's cgroup,
        // and everything it forks stays there.
        Some(cg) => {
            let mut k = Command::new("sh");
            k.args([
                "-c",
                &format!(
                    "echo $$ > {}/cgroup.procs && exec nginx -c {c} -e {e}",
                    cg.display()
                ),
            ]);
            k
        }
        None => {
            let mut k = Command::new("nginx");
            k.args(["-c", c, "-e", e]);
            k
        }
    };
    cmd.output().expect("run nginx")
}

/// The nginx master started with `conf` and its workers, once all are up.
pub fn nginx_pids(conf: &Path, port: u16, workers: usize) -> (i32, Vec<i32>) {
    let pidfile = conf.with_file_name("nginx.pid");
    let master = || -> i32 {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    await_that(
        "nginx to listen with all its workers",
        15,
        || master() > 0 && accepts(port) && children(master()).len() == workers,
        || format!("master {}, children {:?}", master(), children(master())),
    );
    (master(), children(master()))
}

/// `python3 -c SCRIPT ARGS` with stdout piped (scripts print "ready").
pub fn python(script: &str, args: &[&str]) -> Child {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3")
}

/// A `socketserver.ForkingTCPServer` on 127.0.0.1:PORT whose children serve a client
/// until it closes; the stock `allow_reuse_address` (off).
pub const FORKING_SERVER: &str = r#"
import socketserver, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        while self.request.recv(1024):
            pass
srv = socketserver.ForkingTCPServer(("127.0.0.1", int(sys.argv[1])), H)
srv.serve_forever()
"#;

/// A listener without SO_REUSEADDR that closes each accepted connection first
/// (server-side TIME_WAITs once the client closes too).
pub const CLOSING_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// Waits for a child to exit within `secs`: its status and stderr.
pub fn exit_of(mut c: Child, secs: u64) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (st.code(), err);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return (None, String::new());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cgroup v2 root (`/sys/fs/cgroup`, or its `unified` mount on a hybrid host).
pub fn cgroup2_root() -> PathBuf {
    let base = PathBuf::from("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        base
    } else {
        base.join("unified")
    }
}

/// Kills every process of a cgroup (`cgroup.kill`, as `systemctl stop` does with
/// `KillMode=control-group`) and waits until it is empty.
pub fn stop_cgroup(cg: &Path) {
    std::fs::write(cg.join("cgroup.kill"), "1").expect("cgroup.kill");
    let procs = || std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    await_that(
        "the unit's cgroup to empty",
        15,
        || procs().trim().is_empty(),
        procs,
    );
}
