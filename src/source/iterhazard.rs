//! Whether `--source auto` may walk the TCP table with the BPF socket iterator on this
//! kernel.
//!
//! Kernels whose `iter/tcp` batches a hash bucket (`bpf_iter_tcp_established_batch`)
//! take a plain reference on every socket of the bucket before any program runs, also
//! on a request socket the kernel has hashed but not yet given its reference count: a
//! walk that reaches the bucket in between logs `refcount_t: addition on 0;
//! use-after-free`, leaks that socket, and panics a machine with `kernel.panic_on_warn`
//! (docs/deploy.md, "Soak test of the TCP iterator", has the trace and the cause).
//! sock_diag takes its references with `refcount_inc_not_zero` and skips such a socket.
//! So `auto` reads sock_diag on those kernels and on any whose symbols it cannot read;
//! `--source bpf` still chooses the iterator.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// The kernel function whose presence says the TCP iterator batches.
pub const BATCHING_SYMBOL: &str = "bpf_iter_tcp_established_batch";

/// Bytes of `/proc/kallsyms` read at most: a real one is some 10 MB (a few hundred
/// thousand lines); a file that goes on beyond this is not a kernel's symbol list.
const MAX_BYTES: u64 = 64 << 20;

/// Bytes of one line read at most (`ADDRESS TYPE NAME [MODULE]` is under 200): a
/// longer line is read in pieces, so a file without line ends costs no more memory.
const LINE_MAX: u64 = 512;

/// Whether a kallsyms text names [`BATCHING_SYMBOL`] (`ADDRESS TYPE NAME [MODULE]`
/// per line); `None` when it is not text, or too long to be one. Pure apart from the
/// reader.
pub fn names_batching<R: Read>(r: R) -> Option<bool> {
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(LINE_MAX as usize);
    let mut total = 0u64;
    while total < MAX_BYTES {
        line.clear();
        let n = (&mut r).take(LINE_MAX).read_until(b'\n', &mut line).ok()?;
        if n == 0 {
            return Some(false);
        }
        total += n as u64;
        let text = std::str::from_utf8(&line).ok()?;
        if text.split_whitespace().nth(2) == Some(BATCHING_SYMBOL) {
            return Some(true);
        }
    }
    None
}

/// [`iterator_hazard`], read once per process: every table of `--netns all` opens its
/// source, and the kernel does not change under a running agent (`--path.procfs` does
/// not change either).
pub fn iterator_hazard_once(procfs: &Path) -> Option<String> {
    static ONCE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| iterator_hazard(procfs)).clone()
}

/// Why `auto` leaves the iterator aside on this kernel (read from
/// `PROCFS/kallsyms`, some megabytes the kernel writes out at each read); `None` where
/// the iterator does not batch.
pub fn iterator_hazard(procfs: &Path) -> Option<String> {
    let path = procfs.join("kallsyms");
    let file = match crate::fsread::open(&path, crate::fsread::Symlinks::Follow) {
        Ok((f, _)) => f,
        Err(e) => {
            return Some(format!(
                "cannot tell whether the kernel's TCP iterator batches ({}): {}",
                path.display(),
                e.reason()
            ))
        }
    };
    match names_batching(file) {
        Some(false) => None,
        Some(true) => Some(format!(
            "the kernel's TCP iterator batches ({BATCHING_SYMBOL} in {}) and can take a \
             reference on a socket whose count is still 0",
            path.display()
        )),
        None => Some(format!(
            "cannot tell whether the kernel's TCP iterator batches ({} is not a symbol list)",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_batching_function_by_its_name_only() {
        let cases: &[(&str, Option<bool>)] = &[
            (
                "ffffffff81000000 T _stext\nffffffff820b5e10 t bpf_iter_tcp_established_batch\n",
                Some(true),
            ),
            // kptr_restrict zeroes the addresses, the names stay.
            (
                "0000000000000000 t bpf_iter_tcp_established_batch\n",
                Some(true),
            ),
            (
                "ffffffff820b5e10 t bpf_iter_tcp_established_batch_x\n",
                Some(false),
            ),
            ("ffffffff820b5e10 t bpf_iter_tcp_seq_next\n", Some(false)),
            ("bpf_iter_tcp_established_batch\n", Some(false)),
            ("", Some(false)),
        ];
        for (text, want) in cases {
            assert_eq!(names_batching(text.as_bytes()), *want, "{text:?}");
        }
        assert_eq!(names_batching(&[0xff, 0xfe, b'\n'][..]), None);
        // No line ends at all: read in pieces of LINE_MAX, never one huge line.
        assert_eq!(
            names_batching(std::io::repeat(b'a').take(1 << 20)),
            Some(false)
        );
        assert_eq!(names_batching(std::io::repeat(b'a')), None);
    }

    #[test]
    fn a_missing_or_odd_kallsyms_means_netlink() {
        let dir = std::env::temp_dir().join(format!("bw-iterhazard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(iterator_hazard(&dir)
            .unwrap()
            .contains("cannot tell whether the kernel's TCP iterator batches"));
        std::fs::write(dir.join("kallsyms"), "ffffffff81000000 T _stext\n").unwrap();
        assert_eq!(iterator_hazard(&dir), None);
        std::fs::write(
            dir.join("kallsyms"),
            "ffffffff81000000 t bpf_iter_tcp_established_batch\n",
        )
        .unwrap();
        assert!(iterator_hazard(&dir).unwrap().contains("batches"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
