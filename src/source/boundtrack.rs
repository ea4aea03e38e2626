//! Bound-only TCP sockets beside the bpf source without a dump per poll:
//! `bpf/boundtrack.bpf.c`, built by `scripts/build-bpf.sh`, committed and embedded
//! here, loaded with aya.
//!
//! Bound-only TCP sockets (`TCP_CLOSE` with a local port) live in the bind hash only,
//! which the socket iterator never walks, so the bpf source reads them with a
//! sock_diag dump, and that dump walks the bind hash and then the whole established
//! hash. The programs here count, in the kernel, every event that can change the
//! bound-only set (a bind with a port, a TCP state change from or back to `TCP_CLOSE`
//! with the port kept, the destruction of a socket last seen bound-only, a bound
//! device set); each table reuses its last
//! dump while that count stands still, as [`super::boundpolicy`] decides, and
//! reconciles with a fresh dump every so often.
//!
//! One kernel side serves the whole process ([`shared`]); the count is kept per
//! network namespace (by cookie), and each table reads its own namespace's. Binds are
//! seen through the cgroup post-bind hooks at the cgroup v2 root, so every process's.
//! The newest kernel piece is `SO_NETNS_COOKIE` (Linux 5.14); loading the cgroup
//! programs takes `CAP_NET_ADMIN`. Where anything fails, every poll dumps, as without
//! tracking (docs/deploy.md).

use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockopt};
use aya::Ebpf;

use super::boundpolicy::{Policy, Reason};
use super::bpf::BpfError;
use super::bpfload::{self, Loaded};
use crate::model::{BoundTracking, Socket};

/// The compiled `bpf/boundtrack.bpf.c` (tests/bpf_objects.rs checks it is built from it).
pub static BOUNDTRACK_OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/boundtrack.bpf.o");

/// What this object is called in errors.
const OBJECT_NAME: &str = "the bound-only change counter";

/// The loaded and attached programs.
pub struct Tracker {
    ebpf: Ebpf,
    /// The cgroup the hooks are attached to.
    pub cgroup: PathBuf,
}

impl Tracker {
    /// Loads the object and attaches every program (all or none: the count is only
    /// complete with all of them).
    ///
    /// # Errors
    /// Every step that fails, named.
    pub fn open() -> Result<Self, BpfError> {
        let Loaded { mut ebpf, btf } = bpfload::load(BOUNDTRACK_OBJECT, OBJECT_NAME, &[])?;
        let failed =
            |step: String, e: &dyn std::error::Error| bpfload::failed(OBJECT_NAME, step, e);
        for (name, tp) in [
            ("boundtrack_state", "inet_sock_set_state"),
            ("boundtrack_destroy", "tcp_destroy_sock"),
        ] {
            let p = bpfload::program::<BtfTracePoint>(&mut ebpf, OBJECT_NAME, name)?;
            p.load(tp, &btf)
                .map_err(|e| failed(format!("program {name} (tp_btf/{tp})"), &e))?;
            p.attach()
                .map_err(|e| failed(format!("attaching {name} (tp_btf/{tp})"), &e))?;
        }
        bpfload::release_btf(btf);
        let cgroup = cgroup_root()?;
        let shown = cgroup.display().to_string();
        let fd =
            File::open(&cgroup).map_err(|e| failed(format!("opening the cgroup {shown}"), &e))?;
        for name in ["boundtrack_post_bind4", "boundtrack_post_bind6"] {
            let p = bpfload::program::<CgroupSock>(&mut ebpf, OBJECT_NAME, name)?;
            p.load()
                .map_err(|e| failed(format!("program {name}"), &e))?;
            // A bpf link (aya makes one from Linux 5.7 on, and the counter needs
            // 5.14), which the kernel always attaches in multi mode
            // (cgroup_bpf_link_attach()): it runs for every cgroup below, also those
            // with post-bind programs of their own. Link flags must be 0, so `Single`.
            p.attach(&fd, CgroupAttachMode::Single)
                .map_err(|e| failed(format!("attaching {name} to {shown}"), &e))?;
        }
        let name = "boundtrack_setsockopt";
        let p = bpfload::program::<CgroupSockopt>(&mut ebpf, OBJECT_NAME, name)?;
        p.load()
            .map_err(|e| failed(format!("program {name}"), &e))?;
        p.attach(&fd, CgroupAttachMode::Single)
            .map_err(|e| failed(format!("attaching {name} to {shown}"), &e))?;
        let t = Tracker { ebpf, cgroup };
        t.counts(0)?;
        Ok(t)
    }

    /// The change count of the namespace with cookie `netns` (its own events plus
    /// those of namespaces the kernel side had no room for) and the lost marks, in
    /// that order.
    ///
    /// # Errors
    /// When a counter cannot be read.
    pub fn counts(&self, netns: u64) -> Result<(u64, u64), BpfError> {
        let own = {
            let map = self.map("changes")?;
            let h: aya::maps::HashMap<_, u64, u64> =
                aya::maps::HashMap::try_from(map).map_err(|e| read_err("changes", &e))?;
            match h.get(&netns, 0) {
                Ok(n) => n,
                Err(aya::maps::MapError::KeyNotFound) => 0,
                Err(e) => return Err(read_err("changes", &e)),
            }
        };
        let overflow = self.array("overflow")?;
        Ok((own.wrapping_add(overflow), self.array("lost")?))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map, BpfError> {
        self.ebpf.map(name).ok_or_else(|| BpfError::Load {
            object: OBJECT_NAME,
            step: format!("the {name} map"),
            reason: "not in the embedded object".to_string(),
        })
    }

    fn array(&self, name: &str) -> Result<u64, BpfError> {
        let arr: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(self.map(name)?).map_err(|e| read_err(name, &e))?;
        arr.get(&0, 0).map_err(|e| read_err(name, &e))
    }
}

fn read_err(name: &str, e: &dyn std::error::Error) -> BpfError {
    bpfload::failed(OBJECT_NAME, format!("reading the {name} counter"), e)
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux
/// 5.14), which the kernel side keys its counts by.
///
/// # Errors
/// When no socket can be made or the kernel has no such option.
pub fn own_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt on a socket this function owns, writing at most `len` bytes
    // into a live u64.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::addr_of_mut!(cookie).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cgroup v2 root, whose hooks see every process's binds.
///
/// Inside a cgroup namespace (a container's, by default on cgroup v2) the mount that
/// mountinfo shows as the root is the namespace's own cgroup: hooks there would miss
/// every bind outside it, and a missed bind makes a reused dump wrong. The real root
/// is the only cgroup without a `cgroup.events` file (CFTYPE_NOT_ON_ROOT in
/// kernel/cgroup/cgroup.c), whatever namespace looks at it.
fn cgroup_root() -> Result<PathBuf, BpfError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| bpfload::failed(OBJECT_NAME, "reading /proc/self/mountinfo", &e))?;
    let refuse = |reason: String| BpfError::Load {
        object: OBJECT_NAME,
        step: "finding the cgroup v2 root".to_string(),
        reason,
    };
    let root = cgroup2_root(&mountinfo).ok_or_else(|| {
        refuse("no cgroup2 mount of the hierarchy's root in /proc/self/mountinfo".to_string())
    })?;
    match std::fs::symlink_metadata(root.join("cgroup.events")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(root),
        Ok(_) => Err(refuse(format!(
            "{} is a cgroup namespace's root, not the host's (it has cgroup.events): \
             binds outside it would go unseen",
            root.display()
        ))),
        Err(e) => Err(refuse(format!(
            "checking {}/cgroup.events: {e}",
            root.display()
        ))),
    }
}

/// The first `cgroup2` mount of the hierarchy's root in `mountinfo`
/// (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid layout).
pub fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut m = mount.split(' ');
        let root = m.nth(3)?;
        let point = m.next()?;
        (fs.split(' ').next() == Some("cgroup2") && root == "/")
            .then(|| PathBuf::from(unescape_octal(point)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The process's one kernel side, loaded at the first call; `Err` (the failing step)
/// when it could not load, then and at every later call.
pub fn shared() -> Result<Arc<Mutex<Tracker>>, String> {
    static TRACKER: OnceLock<Result<Arc<Mutex<Tracker>>, String>> = OnceLock::new();
    TRACKER
        .get_or_init(|| {
            Tracker::open()
                .map(|t| {
                    tracing::info!(
                        cgroup = %t.cgroup.display(),
                        "bound-only tracking: the last sock_diag dump of bound-only sockets \
                         is reused while no event changed them"
                    );
                    Arc::new(Mutex::new(t))
                })
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// The process-wide counters behind the `bindwatch_bound_tracking_*` metrics.
static ENABLED: AtomicBool = AtomicBool::new(false);
static FALLBACKS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static RECONCILIATIONS: AtomicU64 = AtomicU64::new(0);
static MISSED: AtomicU64 = AtomicU64::new(0);
static EXTRA: AtomicU64 = AtomicU64::new(0);

/// The tracking counters; `None` when no table of this process tracks bound-only
/// sockets (the one-shot commands, the other sources).
pub fn counters() -> Option<BoundTracking> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Some(BoundTracking {
        fallbacks: std::array::from_fn(|i| get(&FALLBACKS[i])),
        reconciliations: get(&RECONCILIATIONS),
        missed: get(&MISSED),
        extra: get(&EXTRA),
    })
}

/// What a comparison of two dumps holds a socket by: every field a dump reports.
type Key = (u64, SocketAddr, SocketAddr, u8, Option<u32>, u32, u64);

fn key(s: &Socket) -> Key {
    (
        s.cookie,
        s.local,
        s.remote,
        s.state as u8,
        s.ifindex,
        s.uid,
        s.inode,
    )
}

/// A sock_diag bound-only dump: streams its sockets to the sink it is given and says
/// whether it could dump at all.
pub type Dump<'a, E> = dyn FnMut(&mut dyn FnMut(&Socket)) -> Result<bool, E> + 'a;

/// One table's reuse of its bound-only dump.
pub struct TableTracking {
    tracker: Option<Arc<Mutex<Tracker>>>,
    /// The table's network namespace (its cookie).
    netns: u64,
    policy: Policy,
    /// The last dump, handed on while the policy reuses it.
    last: Vec<Socket>,
}

impl TableTracking {
    /// Tracking for a table of the calling thread's network namespace, with a
    /// reconciliation every `reconcile_every`. When the kernel side cannot load (or
    /// the namespace's cookie cannot be read), every poll dumps, counted as
    /// `unavailable`.
    pub fn open(reconcile_every: Duration) -> Self {
        ENABLED.store(true, Ordering::Relaxed);
        let (tracker, netns) = match (shared(), own_netns_cookie()) {
            (Ok(t), Ok(n)) => (Some(t), n),
            (Err(e), _) => {
                log_unavailable(&e);
                (None, 0)
            }
            (Ok(_), Err(e)) => {
                log_unavailable(&format!(
                    "reading the namespace's cookie (SO_NETNS_COOKIE): {e}"
                ));
                (None, 0)
            }
        };
        TableTracking {
            tracker,
            netns,
            policy: Policy::new(reconcile_every),
            last: Vec::new(),
        }
    }

    /// Whether the kernel side runs (else every poll dumps).
    pub fn available(&self) -> bool {
        self.tracker.is_some()
    }

    /// The set a poll that reuses hands on: the last dump.
    pub fn last(&self) -> &[Socket] {
        &self.last
    }

    fn counts(&mut self) -> Option<(u64, u64)> {
        let t = self.tracker.as_ref()?;
        let r = t
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counts(self.netns);
        match r {
            Ok(c) => Some(c),
            Err(e) => {
                // Given up: every later poll dumps.
                log_unavailable(&e.to_string());
                self.tracker = None;
                None
            }
        }
    }

    /// One poll's bound-only sockets, streamed to `sink`: the last dump, or a fresh
    /// one from `dump`, which streams a sock_diag bound-only dump and says whether it
    /// could (false: no sock_diag here, so no bound-only sockets are seen at all).
    ///
    /// # Errors
    /// The dump's.
    pub fn poll<F: FnMut(&Socket) + ?Sized, E>(
        &mut self,
        dump: &mut Dump<'_, E>,
        sink: &mut F,
    ) -> Result<(), E> {
        let now = Instant::now();
        let Some((before, lost)) = self.counts() else {
            count_fallback(Reason::Unavailable);
            dump(&mut |s| sink(s))?;
            return Ok(());
        };
        let plan = self.policy.plan(now, before, lost);
        if plan.dumps() {
            let mut fresh = Vec::new();
            if !dump(&mut |s| fresh.push(s.clone()))? {
                return Ok(());
            }
            // Unreadable after the dump: a count that moved, as far as we know.
            let after = self.counts().map_or(before.wrapping_add(1), |c| c.0);
            if let Some(r) = plan.fallback {
                count_fallback(r);
            }
            if plan.reconcile {
                RECONCILIATIONS.fetch_add(1, Ordering::Relaxed);
            }
            let keys = |v: &[Socket]| v.iter().map(key).collect::<HashSet<Key>>();
            let drift =
                self.policy
                    .settle(plan, now, before, after, &keys(&self.last), &keys(&fresh));
            MISSED.fetch_add(drift.missed, Ordering::Relaxed);
            EXTRA.fetch_add(drift.extra, Ordering::Relaxed);
            self.last = fresh;
        }
        for s in &self.last {
            sink(s);
        }
        Ok(())
    }
}

fn count_fallback(r: Reason) {
    FALLBACKS[r.index()].fetch_add(1, Ordering::Relaxed);
}

fn log_unavailable(why: &str) {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| {
        tracing::warn!(
            error = %why,
            "bound-only tracking unavailable: every poll of the bpf source dumps the \
             bound-only TCP sockets with sock_diag \
             (bindwatch_bound_tracking_fallbacks_total{{reason=\"unavailable\"}})"
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_root_is_found_in_mountinfo() {
        let hybrid = "\
35 26 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
44 35 0:39 /kube /sys/fs/cgroup/inner rw,relatime - cgroup2 cgroup2 rw
45 35 0:39 / /sys/fs/cgroup/uni\\040fied rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/uni fied"))
        );
        let v2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root(v2), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root("garbage\n1 2 3\n"), None);
        assert_eq!(cgroup2_root(""), None);
        // A backslash not followed by three octal digits is kept.
        assert_eq!(unescape_octal("a\\09b\\"), "a\\09b\\");
    }

    #[test]
    fn the_embedded_object_is_an_elf_bpf_object() {
        assert_eq!(&BOUNDTRACK_OBJECT[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([BOUNDTRACK_OBJECT[18], BOUNDTRACK_OBJECT[19]]),
            247
        );
    }
}
