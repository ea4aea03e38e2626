//! Loading a BPF object, one way for every program of the crate (the socket iterator,
//! the bind tracer): the memlock limit raised, bpf(2) probed, the kernel's BTF read
//! once, the object loaded, and every error naming the object and the step that
//! failed, with aya's whole source chain (the errno, the verifier's log).

use std::io;

use aya::programs::{Program, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader};

use super::bpf::BpfError;

/// A BPF object loaded: its maps created and relocated, its programs ready for
/// [`program`] to load, and the kernel's BTF, which some program kinds load with.
/// Give the BTF back to [`release_btf`] once the programs are loaded.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub btf: Btf,
}

/// Loads `bytes`, the object called `object` in errors ("the bind tracer"), with the
/// read-only globals in `globals` set (each must exist in the object).
///
/// # Errors
/// Each step's: the bpf(2) probe (seccomp, capabilities), the kernel's BTF, the
/// object (maps, relocations, globals).
pub fn load(
    bytes: &[u8],
    object: &'static str,
    globals: &[(&'static str, u32)],
) -> Result<Loaded, BpfError> {
    raise_memlock();
    probe(object)?;
    let btf = kernel_btf(object)?;
    let mut loader = EbpfLoader::new();
    loader.btf(Some(&btf));
    for (name, value) in globals {
        loader.override_global(name, value, true);
    }
    let ebpf = loader
        .load(bytes)
        .map_err(|e| failed(object, "the object", &e))?;
    Ok(Loaded { ebpf, btf })
}

/// The program `name` of a loaded object, as the kind `T` its caller loads it as.
///
/// # Errors
/// When the object has no such program, or one of another kind.
pub fn program<'a, T>(
    ebpf: &'a mut Ebpf,
    object: &'static str,
    name: &str,
) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or_else(|| BpfError::Load {
        object,
        step: format!("program {name}"),
        reason: "not in the embedded object".to_string(),
    })?;
    prog.try_into()
        .map_err(|e| failed(object, format!("program {name}"), &e))
}

/// The error of a step of loading `object`.
pub fn failed(
    object: &'static str,
    step: impl Into<String>,
    e: &dyn std::error::Error,
) -> BpfError {
    BpfError::Load {
        object,
        step: step.into(),
        reason: error_chain(e),
    }
}

/// Drops the kernel's BTF once every program is loaded. Parsed, it is some 35 MB of
/// small allocations: the freed pages go back to the system, so an agent's RSS does
/// not keep them.
pub fn release_btf(btf: Btf) {
    drop(btf);
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An error and its sources, one line: aya's errors keep the errno and the verifier
/// log in their source chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    // A verifier log can be long; the first lines say enough in one log line.
    if s.len() > 2000 {
        let mut end = 2000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" ...");
    }
    s
}

/// The running kernel's BTF, which CO-RE relocations and the iterator attach need.
///
/// # Errors
/// When `/sys/kernel/btf/vmlinux` is missing (a kernel without CONFIG_DEBUG_INFO_BTF)
/// or unreadable.
pub fn kernel_btf(object: &'static str) -> Result<Btf, BpfError> {
    Btf::from_sys_fs().map_err(|e| {
        failed(
            object,
            "reading the kernel's BTF (/sys/kernel/btf/vmlinux)",
            &e,
        )
    })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (64 KiB by default in many
/// setups); later ones to the memory cgroup. Raising the soft limit to the hard one is
/// harmless either way; failure only matters on those old kernels, whose load error
/// then says so.
pub fn raise_memlock() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
        }
    }
}

/// Whether this process may use bpf(2) at all: creates and closes a one-entry array
/// map. Denied by seccomp, by a missing CAP_BPF (or CAP_SYS_ADMIN), or by a kernel
/// without the syscall, the errno says which; aya's own errors can hide it (a denied
/// global-data probe surfaces as a relocation error).
///
/// # Errors
/// The syscall's error, with what was tried.
pub fn probe(object: &'static str) -> Result<(), BpfError> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries,
    // then zeros (the kernel checks the unused tail is zero).
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: bpf(BPF_MAP_CREATE = 0) reads `size` bytes of attr, which is that long.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                " (seccomp, or CAP_BPF and CAP_PERFMON not granted)"
            }
            Some(libc::ENOSYS) => " (kernel without bpf(2))",
            _ => "",
        };
        return Err(BpfError::Load {
            object,
            step: "bpf(BPF_MAP_CREATE) probe".to_string(),
            reason: format!("{e}{hint}"),
        });
    }
    // SAFETY: a fresh fd this function owns.
    unsafe { libc::close(fd as i32) };
    Ok(())
}
