//! Shared test support: private network namespaces, the real bindwatch binary,
//! scraping and parsing its metrics, and raw sockets with exact flags.
//!
//! Tests run in parallel and share the host's socket table; a test that needs exact
//! counts or fixed ports runs its body in [`in_netns`], a fresh network namespace
//! with only `lo` up, so no other test (or host daemon) can disturb it.

#![allow(dead_code)]

pub mod daemons;
pub mod dashboard;
pub mod deploy;
pub mod e2e;
pub mod oracle;
pub mod oracle_situations;
pub mod package;
pub mod prom;
pub mod unix;
pub mod web_config;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use socket2::{Domain, Protocol as SockProto, Socket, Type};

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bindwatch"))
}

/// Runs `f` on a new thread that has its own network namespace (loopback up).
/// Sockets and child processes created by `f` live in that namespace.
///
/// # Panics
/// When the namespace cannot be created (tests need root) or `f` panics.
pub fn in_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread's namespaces.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {} (tests must run as root)",
            std::io::Error::last_os_error()
        );
        run_ok("ip", &["link", "set", "lo", "up"]);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs a command and panics with its output when it fails.
pub fn run_ok(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"));
    succeeded(cmd, args, out)
}

/// `out` of `cmd args`, or a panic with its stdout and stderr when it failed.
pub fn succeeded(cmd: &str, args: &[&str], out: Output) -> Output {
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `bindwatch ARGS` to completion: (exit code, stdout, stderr).
pub fn bindwatch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running bindwatch {args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `bindwatch serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `bindwatch serve` on 127.0.0.1:`port` with extra flags and waits until
    /// it answers /healthz 200.
    pub fn start(port: u16, extra: &[&str]) -> Server {
        Server::start_wrapped(&[], port, extra)
    }

    /// [`Server::start`] with `bindwatch` run by `wrapper` (e.g. `unshare ...`), which
    /// must exec it and pass its exit on; the wrapper is what drop kills.
    pub fn start_wrapped(wrapper: &[&str], port: u16, extra: &[&str]) -> Server {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--web.listen-address", &listen];
        // Never touch the host's /run/bindwatch/state.json from a test.
        if !extra.contains(&"--state.file") {
            args.extend_from_slice(&["--state.file", ""]);
        }
        // Tests poll a debug build several times a second and want every poll to
        // walk the table; the budget itself has its own test.
        if !extra.contains(&"--poll.cpu-budget") {
            args.extend_from_slice(&["--poll.cpu-budget", "0"]);
        }
        args.extend_from_slice(extra);
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bindwatch serve");
        let mut s = Server {
            child,
            addr: listen.parse().expect("addr"),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _, _)) = http_get(s.addr, "/healthz", &[]) {
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                let mut err = String::new();
                if let Some(e) = s.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("bindwatch exited early with {status}: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "bindwatch did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics(&self) -> Metrics {
        let (code, _, body) = http_get(self.addr, "/metrics", &[]).expect("scrape");
        assert_eq!(code, 200);
        Metrics::parse(&String::from_utf8_lossy(&body))
    }

    /// Scrapes until `pred` holds (the poller publishes asynchronously).
    pub fn metrics_until(&self, timeout: Duration, pred: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if pred(&m) || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Metrics published after `n` more polls than had finished when it was called
    /// (for "this did not change anything": wait for polls, not for a time).
    pub fn metrics_after_polls(&self, n: u32) -> Metrics {
        let start = polls_done(&self.metrics());
        let m = self.metrics_until(Duration::from_secs(20), |m| {
            polls_done(m) >= start + f64::from(n)
        });
        assert!(
            polls_done(&m) >= start + f64::from(n),
            "fewer than {n} polls in 20 s: {}",
            m.text
        );
        m
    }
}

/// Polls an agent finished, successful or not (every source's histogram count and
/// every failed poll).
pub fn polls_done(m: &Metrics) -> f64 {
    m.matching("bindwatch_poll_duration_seconds_count", &[])
        .iter()
        .chain(m.matching("bindwatch_poll_errors_total", &[]).iter())
        .map(|(_, v)| v)
        .sum()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer: (status, headers lowercased, body).
pub type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// A minimal HTTP/1.1 GET.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    http_request(addr, "GET", path, headers)
}

/// The value of header `name` (lower case) among [`http_get`]'s headers.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let hdrs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if hdrs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok((status, hdrs, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// Parsed exposition text: series "name{labels}" (labels sorted) -> value.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub series: BTreeMap<String, f64>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (key, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            let mut pairs: Vec<&str> = split_labels(labels);
            pairs.sort();
            let k = format!("{name}{{{}}}", pairs.join(","));
            series.insert(k, value.parse().expect("value"));
        }
        Metrics {
            series,
            text: text.to_string(),
        }
    }

    /// Value of the series `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        pairs.sort();
        self.series
            .get(&format!("{name}{{{}}}", pairs.join(",")))
            .copied()
    }

    /// All series of `name` whose labels include `subset`.
    pub fn matching(&self, name: &str, subset: &[(&str, &str)]) -> Vec<(String, f64)> {
        let prefix = format!("{name}{{");
        self.series
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| {
                subset
                    .iter()
                    .all(|(lk, lv)| k.contains(&format!("{lk}=\"{lv}\"")))
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

fn split_labels(s: &str) -> Vec<&str> {
    // Label values in our output never contain ',' inside quotes except escaped text; split on '",'.
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = s.as_bytes();
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// A TCP socket with the given flags, bound to `addr`.
pub fn tcp_socket(
    addr: SocketAddr,
    reuseaddr: bool,
    reuseport: bool,
    v6only: Option<bool>,
) -> std::io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProto::TCP),
    )?;
    s.set_reuse_address(reuseaddr)?;
    s.set_reuse_port(reuseport)?;
    if let (Some(v), true) = (v6only, addr.is_ipv6()) {
        s.set_only_v6(v)?;
    }
    s.bind(&addr.into())?;
    Ok(s)
}

/// A listener with the given flags.
pub fn tcp_listener(
    addr: SocketAddr,
    reuseaddr: bool,
    reuseport: bool,
    v6only: Option<bool>,
) -> std::io::Result<Socket> {
    let s = tcp_socket(addr, reuseaddr, reuseport, v6only)?;
    s.listen(128)?;
    Ok(s)
}

/// What the kernel answers to bind()+listen() of a fresh TCP socket: Ok or the errno.
pub fn kernel_bind_listen(
    addr: SocketAddr,
    reuseaddr: bool,
    reuseport: bool,
    v6only: Option<bool>,
) -> Result<(), i32> {
    let r = tcp_listener(addr, reuseaddr, reuseport, v6only);
    r.map(drop).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Waits until `pred` holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes a server-side TIME_WAIT on `listener`'s port: connect, accept, close the
/// server side first, then the client.
pub fn server_time_wait(listener: &Socket, addr: SocketAddr) {
    let c = TcpStream::connect(addr).expect("connect");
    let (s, _) = listener.accept().expect("accept");
    drop(s);
    // Let the FIN arrive so the client answers and the server side reaches TIME_WAIT.
    std::thread::sleep(Duration::from_millis(50));
    drop(c);
    std::thread::sleep(Duration::from_millis(50));
}

/// Installs a seccomp `filter` (classic BPF over `struct seccomp_data`) in the child
/// `cmd` starts, between fork and exec, with no_new_privs.
pub fn seccomp_in_child(cmd: &mut Command, filter: Vec<libc::sock_filter>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only the two prctl calls run; the filter was moved
    // into the closure before the fork, and nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const _,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A scratch directory of this test process (`bindwatch-TAG-PID`), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("bindwatch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir scratch");
        Scratch(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// [`Scratch::path`] as a flag value.
    pub fn str(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf8 path").to_string()
    }

    /// Writes `name` (creating its directories), returns its path as a flag value.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        self.str(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake procfs (`--path.procfs`, `--source procfs`) in `dir` with `n` TCP listeners on
/// 127.0.0.1, ports 20000.., so that /metrics is large (about 490 bytes per listener
/// with `--ports.max` above `n`). Loopback autotunes send buffers up to 4 MB: callers
/// cap them (`net.ipv4.tcp_wmem`) to make such a body more than the kernel takes.
pub fn big_procfs(dir: &Scratch, n: u16) -> String {
    let head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    let mut tcp = head.to_string();
    for i in 0..n {
        tcp.push_str(&format!(
            "{i:4}: 0100007F:{:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 {} 1 0000000000000000 100 0 0 10 0\n",
            20000 + i,
            900_000 + u32::from(i)
        ));
    }
    dir.write("proc/net/tcp", &tcp);
    for f in ["tcp6", "udp", "udp6"] {
        dir.write(&format!("proc/net/{f}"), head);
    }
    dir.str("proc")
}

/// Inode of the calling thread's network namespace: what bindwatch, started from
/// this thread, writes into and expects in the state file.
pub fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

/// A child process with its stderr in a file, killed (and its log removed) on drop.
pub struct Logged {
    pub child: Child,
    pub log: PathBuf,
}

impl Logged {
    /// Spawns `cmd` with stdout to /dev/null and stderr to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Logged {
        let err = std::fs::File::create(&log).expect("create log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn");
        Logged { child, log }
    }

    /// What the child wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `ready` holds; panics with the log when the child exits first or
    /// `ready` still fails after 15 s.
    pub fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("exited with {st} before it {what}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "it never {what}: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The inode number of the file behind `fd` (a socket's is the one sock_diag reports).
pub fn inode_of(fd: &(impl std::os::fd::AsRawFd + ?Sized)) -> u64 {
    // SAFETY: st is a valid out-pointer for fstat on an fd we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    assert_eq!(r, 0, "fstat: {}", std::io::Error::last_os_error());
    st.st_ino
}
