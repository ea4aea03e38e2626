//! The committed BPF objects are what `scripts/build-bpf.sh` builds from the sources:
//! every `bpf/NAME.bpf.c` is rebuilt into a temporary directory and compared byte for
//! byte with the committed `bpf/NAME.bpf.o` (the build is reproducible; see the
//! script). Needs clang and llvm-strip (scripts/install-test-deps.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn committed_objects_match_a_rebuild() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("bindwatch-bpf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new("bash")
        .arg(root.join("scripts/build-bpf.sh"))
        .arg(&out)
        .current_dir(root)
        .status()
        .expect("run scripts/build-bpf.sh");
    assert!(status.success(), "scripts/build-bpf.sh failed");
    let sources: Vec<PathBuf> = std::fs::read_dir(root.join("bpf"))
        .expect("bpf/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    for want in ["bindevents.bpf.c", "sockiter.bpf.c"] {
        assert!(
            sources.iter().any(|p| p.ends_with(want)),
            "bpf/{want} is among the sources: {sources:?}"
        );
    }
    for src in sources {
        let name = src
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".bpf.c", ".bpf.o");
        let built = std::fs::read(out.join(&name)).expect("rebuilt object");
        let committed = std::fs::read(root.join("bpf").join(&name))
            .unwrap_or_else(|e| panic!("bpf/{name} is not committed: {e}"));
        assert!(
            built == committed,
            "bpf/{name} differs from a rebuild of its source: run `bash scripts/build-bpf.sh` and commit the object"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
