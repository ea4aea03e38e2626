//! Which processes have an fd open on given socket inodes, read by a BPF `task_file`
//! iterator (`bpf/fdscan.bpf.c`): the kernel walks every fd table and writes a
//! record only for the sockets asked for.
//!
//! Reading `/proc/PID/fd/N` costs some 4 µs per fd (a proc inode is made for each
//! link, then its path is formatted); the iterator costs tens of nanoseconds per fd
//! and one `read(2)` per 8 pages of matches. At 100,000 fds a scan of the links is
//! some 0.4 s of CPU, the iterator's a few milliseconds. Where it cannot load (no
//! CAP_BPF and CAP_PERFMON, a kernel before 5.8 or without BTF) the caller reads the
//! links ([`super::fdlinks`]).
//!
//! The records carry process ids of the initial pid namespace: [`usable`]
//! says whether `--path.procfs` numbers processes the same way, and only then may the
//! ids be used with it.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::programs::Iter;
use aya::Ebpf;

use super::bpf::BpfError;
use super::bpfload::{self, Loaded};
use super::records::{self, FdRec, FDSCAN_MAX_WANTED};

static FDSCAN_OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/fdscan.bpf.o");
const OBJECT_NAME: &str = "the fd scanner";
const PROGRAM: &str = "fdscan";
/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`, a constant of the
/// kernel's ABI).
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// The loaded scanner and the inodes its `wanted` map holds now.
pub struct FdScan {
    ebpf: Ebpf,
    in_map: HashSet<u64>,
    buf: Vec<u8>,
}

/// Whether process ids of the initial pid namespace are the ids `procfs` uses: this
/// process lives in that namespace and `procfs/self` names it by its own id.
pub fn usable(procfs: &Path) -> bool {
    let ours = std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino());
    if ours.ok() != Some(INIT_PID_NS_INO) {
        return false;
    }
    std::fs::read_link(procfs.join("self"))
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        == Some(std::process::id())
}

impl FdScan {
    /// Loads the program and runs it once with nothing wanted, so a kernel that
    /// refuses the iterator shows here.
    ///
    /// # Errors
    /// Every reason the program cannot load, attach or be read.
    pub fn open() -> Result<Self, BpfError> {
        let Loaded { mut ebpf, btf } = bpfload::load(FDSCAN_OBJECT, OBJECT_NAME, &[])?;
        bpfload::program::<Iter>(&mut ebpf, OBJECT_NAME, PROGRAM)?
            .load("task_file", &btf)
            .map_err(|e| bpfload::failed(OBJECT_NAME, format!("program {PROGRAM}"), &e))?;
        bpfload::release_btf(btf);
        let mut s = FdScan {
            ebpf,
            in_map: HashSet::new(),
            buf: vec![0; 64 * 1024],
        };
        s.scan(&HashSet::new())?;
        Ok(s)
    }

    /// Every fd, of any process, open on one of `inodes`. Threads that share their
    /// leader's fd table are not repeated; a process that opens or closes fds during
    /// the walk may show either way for those fds.
    ///
    /// # Errors
    /// More than [`FDSCAN_MAX_WANTED`] inodes, a map that cannot be written, an
    /// iterator that cannot be made or read.
    pub fn scan(&mut self, inodes: &HashSet<u64>) -> Result<Vec<FdRec>, BpfError> {
        if inodes.len() > FDSCAN_MAX_WANTED {
            return Err(BpfError::Load {
                object: OBJECT_NAME,
                step: "the wanted map".to_string(),
                reason: format!(
                    "{} sockets asked for, room for {FDSCAN_MAX_WANTED}",
                    inodes.len()
                ),
            });
        }
        self.want(inodes)?;
        let err = |step: &str, e: &dyn std::error::Error| bpfload::failed(OBJECT_NAME, step, e);
        let prog = bpfload::program::<Iter>(&mut self.ebpf, OBJECT_NAME, PROGRAM)?;
        let id = prog
            .attach()
            .map_err(|e| err("attaching the iterator", &e))?;
        let link = prog
            .take_link(id)
            .map_err(|e| err("attaching the iterator", &e))?;
        let mut file: File = link
            .into_file()
            .map_err(|e| err("opening the iterator", &e))?;
        let size = std::mem::size_of::<FdRec>();
        let mut out = Vec::new();
        let mut end = 0;
        loop {
            let n = loop {
                match file.read(&mut self.buf[end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(err("reading the iterator", &e)),
                }
            };
            end += n;
            let whole = end - end % size;
            out.extend(
                self.buf[..whole]
                    .chunks_exact(size)
                    .filter_map(records::read::<FdRec>)
                    .filter(|r| inodes.contains(&r.inode)),
            );
            self.buf.copy_within(whole..end, 0);
            end -= whole;
            if n == 0 {
                break;
            }
        }
        if end != 0 {
            return Err(err(
                "reading the iterator",
                &io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("it ended inside a record ({end} bytes left over)"),
                ),
            ));
        }
        Ok(out)
    }

    /// Makes the `wanted` map hold exactly `inodes`.
    fn want(&mut self, inodes: &HashSet<u64>) -> Result<(), BpfError> {
        if *inodes == self.in_map {
            return Ok(());
        }
        let err = |e: &dyn std::error::Error| bpfload::failed(OBJECT_NAME, "the wanted map", e);
        let map = self.ebpf.map_mut("wanted").ok_or_else(|| BpfError::Load {
            object: OBJECT_NAME,
            step: "the wanted map".to_string(),
            reason: "not in the embedded object".to_string(),
        })?;
        let mut h: aya::maps::HashMap<_, u64, u8> =
            aya::maps::HashMap::try_from(map).map_err(|e| err(&e))?;
        // Forgotten first, so a failed update leaves the set smaller, never stale.
        for gone in self.in_map.difference(inodes).copied().collect::<Vec<_>>() {
            match h.remove(&gone) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {
                    self.in_map.remove(&gone);
                }
                Err(e) => return Err(err(&e)),
            }
        }
        for &new in inodes.difference(&self.in_map.clone()) {
            h.insert(new, 1, 0).map_err(|e| err(&e))?;
            self.in_map.insert(new);
        }
        Ok(())
    }
}
