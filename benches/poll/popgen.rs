//! Socket-population generator for the poll benchmark: listeners, ESTABLISHED
//! connections and TIME_WAIT sockets on loopback, held by child processes.
//!
//! Why children: the hard RLIMIT_NOFILE on the bench machines is 20,000, and a
//! million sockets need a million fds (both ends of every connection are held), so
//! the population is spread over processes of at most [`FDS_PER_CHILD`] fds each.
//! A child is this same bench binary re-executed with [`CHILD_ENV`] set; it reads
//! one command per line on stdin and answers one line on stdout:
//!
//! ```text
//! build L=v4:10000,v6:10001 conns=9800 tw=0 src=7 close=0 park=0  ->  ready LISTEN EST TW
//! tw N                                                     ->  ok N     (N more TIME_WAITs)
//! listen v4:PORT                                           ->  ok 1     (one more listener)
//! <EOF>                                                    ->  exits
//! ```
//!
//! Connections go from 127.0.S.T (held) or 127.1.S.T (TIME_WAIT) sources, bound with
//! IP_BIND_ADDRESS_NO_PORT so the ephemeral port is picked per 4-tuple, to
//! 127.0.0.1:PORT; IPv6 ones from ::1 to ::1. Separate source ranges keep a new
//! connection from recycling a TIME_WAIT (tcp_tw_reuse=2 applies on loopback).
//! TIME_WAITs are made server side (the server closes first), so they sit on the
//! listener's port like the leftovers of a busy daemon. The client end of every held
//! connection has SO_LINGER 0, so tearing the population down sends RSTs and leaves
//! no TIME_WAIT behind.
//!
//! `park=1` moves a child's connections out of its fd table once they are built
//! (see `ChildState::park`): the same sockets, but no process holds their fds, so
//! whatever walks the machine's open files does not grow with the population.

use std::io::{self, BufRead, BufReader, Write};
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Set in a child's environment: run [`child_main`] instead of the benchmark.
pub const CHILD_ENV: &str = "BINDWATCH_POPGEN_CHILD";
/// Fds a child may hold: under the 20,000 hard limit, with room for stdio and slack.
pub const FDS_PER_CHILD: usize = 19_800;
/// Distinct source addresses (127.0.S.T for held connections, 127.1.S.T for TIME_WAITs).
const SOURCES: u32 = 1024;
/// No single build may run longer than this (a stuck connect would hang the bench).
const BUILD_DEADLINE: Duration = Duration::from_secs(600);

const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// One listening port of a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSpec {
    pub v6: bool,
    pub port: u16,
}

impl ListenSpec {
    fn encode(&self) -> String {
        format!("{}:{}", if self.v6 { "v6" } else { "v4" }, self.port)
    }
    fn parse(s: &str) -> Option<Self> {
        let (fam, port) = s.split_once(':')?;
        Some(ListenSpec {
            v6: fam == "v6",
            port: port.parse().ok()?,
        })
    }
}

/// What one child builds.
#[derive(Debug, Clone)]
pub struct ChildPlan {
    pub listeners: Vec<ListenSpec>,
    /// Held connections (two sockets each), round-robin over `listeners`.
    pub conns: usize,
    /// TIME_WAIT sockets made at build time.
    pub tw: usize,
    /// Offset into the source addresses, so children spread over all of them.
    pub src: u32,
    /// Close the listeners once the connections are accepted (a draining daemon).
    pub close_listeners: bool,
    /// Park the connections' fds in flight (`ChildState::park`) once they are built.
    pub park: bool,
}

/// A population plan: what each child holds.
#[derive(Debug, Clone)]
pub struct Plan {
    pub children: Vec<ChildPlan>,
}

impl Plan {
    /// About `total` sockets: `listeners` listening ports (one in 20 IPv6), room for
    /// `tw` TIME_WAITs (made later with [`Population::add_time_wait`], so they are
    /// fresh when measured), the rest ESTABLISHED (both ends), over as few children
    /// as the fd limit allows. Ports start at `first_port` (below the ephemeral range).
    /// Child processes a population needs: each holds both ends of its connections
    /// and at most [`FDS_PER_CHILD`] fds. Each child owns at least one listener, so a
    /// population needs at least this many listening ports.
    pub fn children_needed(total: usize, listeners: usize, tw: usize) -> usize {
        let conns = total.saturating_sub(listeners + tw) / 2;
        let per_child = (FDS_PER_CHILD - listeners.min(1000)) / 2;
        conns.div_ceil(per_child).max(1)
    }

    pub fn sized(total: usize, listeners: usize, tw: usize, first_port: u16) -> Plan {
        let conns = total.saturating_sub(listeners + tw) / 2;
        let n = Self::children_needed(total, listeners, tw).min(listeners.max(1));
        let mut children: Vec<ChildPlan> = (0..n)
            .map(|i| ChildPlan {
                listeners: Vec::new(),
                conns: conns / n + usize::from(i < conns % n),
                tw: 0,
                src: (i as u32 * 37) % SOURCES,
                close_listeners: false,
                park: false,
            })
            .collect();
        for j in 0..listeners {
            children[j % n].listeners.push(ListenSpec {
                v6: j % 20 == 19,
                port: first_port + j as u16,
            });
        }
        Plan { children }
    }

    /// The same plan with every child's connections parked in flight.
    pub fn parked(mut self, park: bool) -> Plan {
        for c in &mut self.children {
            c.park = park;
        }
        self
    }
}

struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// A running population; dropping it ends the children (their sockets close with RST).
pub struct Population {
    children: Vec<ChildProc>,
    pub listeners: usize,
    pub established: usize,
    pub time_wait: usize,
    pub build_time: Duration,
}

impl ChildProc {
    fn send(&mut self, line: &str) -> io::Result<()> {
        let w = self.stdin.as_mut().expect("stdin open");
        writeln!(w, "{line}")?;
        w.flush()
    }
    fn answer(&mut self) -> io::Result<String> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            return Err(io::Error::other(
                "popgen child exited early (see its stderr)",
            ));
        }
        Ok(s.trim().to_string())
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn spawn_child() -> io::Result<ChildProc> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    Ok(ChildProc {
        child,
        stdin,
        stdout,
    })
}

impl Population {
    /// Spawns the children, lets them build in parallel, waits for all.
    ///
    /// # Errors
    /// When a child cannot be spawned or fails to build (it prints why on stderr).
    pub fn build(plan: &Plan) -> io::Result<Population> {
        let t0 = Instant::now();
        let mut children = Vec::with_capacity(plan.children.len());
        for c in &plan.children {
            let mut p = spawn_child()?;
            let ls: Vec<String> = c.listeners.iter().map(ListenSpec::encode).collect();
            p.send(&format!(
                "build L={} conns={} tw={} src={} close={} park={}",
                ls.join(","),
                c.conns,
                c.tw,
                c.src,
                u8::from(c.close_listeners),
                u8::from(c.park)
            ))?;
            children.push(p);
        }
        let mut pop = Population {
            children,
            listeners: 0,
            established: 0,
            time_wait: 0,
            build_time: Duration::ZERO,
        };
        for c in &mut pop.children {
            let a = c.answer()?;
            let n: Vec<usize> = a
                .strip_prefix("ready ")
                .ok_or_else(|| io::Error::other(format!("popgen child said {a:?}")))?
                .split(' ')
                .filter_map(|x| x.parse().ok())
                .collect();
            pop.listeners += n[0];
            pop.established += n[1];
            pop.time_wait += n[2];
        }
        pop.build_time = t0.elapsed();
        Ok(pop)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(ChildProc::pid).collect()
    }

    /// Asks every child for `total / children` more TIME_WAITs (in parallel).
    ///
    /// # Errors
    /// When a child fails.
    pub fn add_time_wait(&mut self, total: usize) -> io::Result<usize> {
        let n = self.children.len();
        for (i, c) in self.children.iter_mut().enumerate() {
            c.send(&format!("tw {}", total / n + usize::from(i < total % n)))?;
        }
        let mut made = 0;
        for c in &mut self.children {
            made += c
                .answer()?
                .trim_start_matches("ok ")
                .parse::<usize>()
                .unwrap_or(0);
        }
        self.time_wait += made;
        Ok(made)
    }

    /// One more listener in child `i` (a new inode of interest for owner attribution).
    ///
    /// # Errors
    /// When the child fails.
    pub fn add_listener(&mut self, i: usize, l: ListenSpec) -> io::Result<()> {
        let c = &mut self.children[i];
        c.send(&format!("listen {}", l.encode()))?;
        c.answer()?;
        self.listeners += 1;
        Ok(())
    }
}

impl Drop for Population {
    fn drop(&mut self) {
        for c in &mut self.children {
            c.stdin.take(); // EOF: the child exits
        }
        for c in &mut self.children {
            let _ = c.child.wait();
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}

// ---------------------------------------------------------------- the child side

fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

fn setopt(fd: i32, level: i32, name: i32, v: &impl Sized, what: &str) -> io::Result<()> {
    // SAFETY: v is a valid value of its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const _) as *const libc::c_void,
            mem::size_of_val(v) as libc::socklen_t,
        )
    };
    check(r, what).map(|_| ())
}

fn sockaddr4(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from(ip).to_be();
    sa
}

fn sockaddr6(ip: Ipv6Addr, port: u16) -> libc::sockaddr_in6 {
    // SAFETY: an all-zero sockaddr_in6 is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = ip.octets();
    sa
}

fn tcp_socket(v6: bool) -> io::Result<i32> {
    let fam = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2).
    check(
        unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )
}

/// Binds `fd` to the IPv4 or IPv6 `port` (wildcard for a listener).
fn bind_any(fd: i32, v6: bool, ip4: Ipv4Addr, port: u16) -> io::Result<()> {
    // SAFETY: the sockaddr outlives the call; lengths are its size.
    let r = unsafe {
        if v6 {
            let sa = sockaddr6(Ipv6Addr::UNSPECIFIED, port);
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in6).cast(),
                mem::size_of_val(&sa) as u32,
            )
        } else {
            let sa = sockaddr4(ip4, port);
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                mem::size_of_val(&sa) as u32,
            )
        }
    };
    check(r, "bind").map(|_| ())
}

fn listener(l: ListenSpec) -> io::Result<i32> {
    let fd = tcp_socket(l.v6)?;
    setopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &1i32,
        "SO_REUSEADDR",
    )?;
    if l.v6 {
        setopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &1i32,
            "IPV6_V6ONLY",
        )?;
    }
    bind_any(fd, l.v6, Ipv4Addr::UNSPECIFIED, l.port)?;
    // SAFETY: plain listen(2).
    check(unsafe { libc::listen(fd, 4096) }, "listen")?;
    Ok(fd)
}

fn source(range: u8, i: u32) -> Ipv4Addr {
    let i = i % SOURCES;
    Ipv4Addr::new(127, range, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// One loopback connection to `l` from source `src` (IPv4); returns (client, server).
fn connect_pair(lfd: i32, l: ListenSpec, src: Ipv4Addr) -> io::Result<(i32, i32)> {
    let c = tcp_socket(l.v6)?;
    // SAFETY: sockaddrs outlive the calls.
    unsafe {
        if l.v6 {
            let sa = sockaddr6(Ipv6Addr::LOCALHOST, l.port);
            check(
                libc::connect(
                    c,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    mem::size_of_val(&sa) as u32,
                ),
                "connect6",
            )?;
        } else {
            setopt(
                c,
                libc::IPPROTO_IP,
                IP_BIND_ADDRESS_NO_PORT,
                &1i32,
                "IP_BIND_ADDRESS_NO_PORT",
            )?;
            bind_any(c, false, src, 0)?;
            let sa = sockaddr4(Ipv4Addr::LOCALHOST, l.port);
            check(
                libc::connect(
                    c,
                    (&sa as *const libc::sockaddr_in).cast(),
                    mem::size_of_val(&sa) as u32,
                ),
                "connect",
            )?;
        }
    }
    // SAFETY: accept4 without an address.
    let s = check(
        unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        },
        "accept",
    )?;
    Ok((c, s))
}

struct ChildState {
    listeners: Vec<(i32, ListenSpec)>,
    held: Vec<i32>,
    /// Sockets held in flight by `park` (their fds are closed).
    parked: usize,
    /// The sending end of the parking socket pair (the receiving end never reads).
    park_tx: Option<(i32, i32)>,
    next_src: u32,
    next_tw_src: u32,
    rr: usize,
}

impl ChildState {
    fn held_conn(&mut self) -> io::Result<()> {
        let (lfd, l) = self.listeners[self.rr % self.listeners.len()];
        self.rr += 1;
        let (c, s) = connect_pair(lfd, l, source(0, self.next_src))?;
        self.next_src += 1;
        // Abortive close at teardown: RST, no TIME_WAIT left for the next size.
        let lin = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setopt(c, libc::SOL_SOCKET, libc::SO_LINGER, &lin, "SO_LINGER")?;
        self.held.push(c);
        self.held.push(s);
        Ok(())
    }

    /// Moves every held connection out of the fd table: the fds travel over a unix
    /// socket pair that nobody reads, in SCM_RIGHTS messages, and are closed here.
    /// The in-flight messages keep the sockets open until the child exits, and no
    /// process has them in /proc/PID/fd. Why: a process that walks every fd on the
    /// machine (the owner scan, or a supervisor like this sandbox's PID 1) costs in
    /// proportion to the open fds, and a parked population shows what the socket
    /// table alone does. Root may keep more fds in flight than RLIMIT_NOFILE.
    fn park(&mut self) -> io::Result<()> {
        let (tx, _) = match self.park_tx {
            Some(p) => p,
            None => {
                let mut sv = [0i32; 2];
                // SAFETY: socketpair writes two fds into the two-element array it is given.
                let rc = unsafe {
                    libc::socketpair(
                        libc::AF_UNIX,
                        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                        0,
                        sv.as_mut_ptr(),
                    )
                };
                check(rc, "socketpair")?;
                self.park_tx = Some((sv[0], sv[1]));
                (sv[0], sv[1])
            }
        };
        // SCM_MAX_FD is 253 per message.
        for chunk in self.held.chunks(250) {
            send_fds(tx, chunk)?;
        }
        self.parked += self.held.len();
        for fd in self.held.drain(..) {
            // SAFETY: closing an fd we own; its socket lives on in flight.
            unsafe { libc::close(fd) };
        }
        Ok(())
    }

    fn time_wait(&mut self) -> io::Result<()> {
        let (lfd, l) = self.listeners[self.rr % self.listeners.len()];
        self.rr += 1;
        let (c, s) = connect_pair(lfd, l, source(1, self.next_tw_src))?;
        self.next_tw_src += 1;
        // Server closes first: FIN_WAIT2 -> TIME_WAIT on the listener's port once the
        // client (now CLOSE_WAIT) closes too.
        // SAFETY: closing fds we own.
        unsafe {
            libc::close(s);
            libc::close(c);
        }
        Ok(())
    }
}

/// Sends `fds` in one SCM_RIGHTS message (with one byte of data) on `sock`.
fn send_fds(sock: i32, fds: &[i32]) -> io::Result<()> {
    let data_len = mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(data_len as u32) as usize,
            libc::CMSG_LEN(data_len as u32) as usize,
        )
    };
    // u64 words: the control buffer must be aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: msg points at iov and control, both alive for the sendmsg call; the
    // first cmsghdr fits in `space` bytes, and so do the fds copied after it.
    let r = unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        libc::sendmsg(sock, &msg, 0)
    };
    check(r as libc::c_int, "sendmsg SCM_RIGHTS (parking fds)").map(|_| ())
}

/// The child's main loop (see the module comment for the protocol).
pub fn child_main() -> ! {
    raise_nofile();
    let code = match child_loop() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("popgen child {}: {e}", std::process::id());
            1
        }
    };
    std::process::exit(code)
}

fn child_loop() -> io::Result<()> {
    let stdin = io::stdin();
    let mut out = io::stdout();
    let mut st = ChildState {
        listeners: Vec::new(),
        held: Vec::new(),
        next_src: 0,
        next_tw_src: 0,
        rr: 0,
        parked: 0,
        park_tx: None,
    };
    let deadline = Instant::now() + BUILD_DEADLINE;
    for line in stdin.lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("build") => {
                let mut conns = 0;
                let mut tw = 0;
                let mut close = false;
                let mut park = false;
                for w in words {
                    let (k, v) = w.split_once('=').unwrap_or((w, ""));
                    match k {
                        "L" => {
                            for l in v.split(',').filter_map(ListenSpec::parse) {
                                st.listeners.push((listener(l)?, l));
                            }
                        }
                        "conns" => conns = v.parse().unwrap_or(0),
                        "tw" => tw = v.parse().unwrap_or(0),
                        "src" => {
                            st.next_src = v.parse().unwrap_or(0);
                            st.next_tw_src = st.next_src;
                        }
                        "close" => close = v == "1",
                        "park" => park = v == "1",
                        _ => {}
                    }
                }
                if st.listeners.is_empty() {
                    return Err(io::Error::other("build without listeners"));
                }
                for i in 0..conns {
                    st.held_conn()?;
                    if i % 1024 == 0 && Instant::now() > deadline {
                        return Err(io::Error::other("build deadline passed"));
                    }
                }
                for _ in 0..tw {
                    st.time_wait()?;
                }
                if park {
                    st.park()?;
                }
                let nl = st.listeners.len();
                if close {
                    for (fd, _) in st.listeners.drain(..) {
                        // SAFETY: closing an fd we own.
                        unsafe { libc::close(fd) };
                    }
                }
                writeln!(
                    out,
                    "ready {} {} {}",
                    if close { 0 } else { nl },
                    st.held.len() + st.parked,
                    tw
                )?;
            }
            Some("tw") => {
                let n: usize = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                for _ in 0..n {
                    st.time_wait()?;
                }
                writeln!(out, "ok {n}")?;
            }
            Some("listen") => {
                let l = words
                    .next()
                    .and_then(ListenSpec::parse)
                    .ok_or_else(|| io::Error::other("listen needs v4:PORT"))?;
                st.listeners.push((listener(l)?, l));
                writeln!(out, "ok 1")?;
            }
            _ => return Err(io::Error::other(format!("unknown command {line:?}"))),
        }
        out.flush()?;
    }
    Ok(())
}
