//! The committed BPF objects are what `scripts/build-bpf.sh` builds from the committed C.
//!
//! Every `bpf/NAME.bpf.c` is rebuilt into a temporary directory. With the clang the
//! script pins (`PINNED_CLANG` there: Debian 12's "Debian clang version 14.0.6") the
//! rebuild must equal the committed `bpf/NAME.bpf.o` byte for byte: the build is
//! reproducible, so a difference means an object was not rebuilt after its source
//! changed. Any other clang gives other bytes for the same program, so there the
//! rebuild is compared by what the loader relies on: the same programs (name and
//! section) and the same maps. What the programs *do* is tested by the bpf source and
//! tracer tests, which run the committed objects in the kernel. Needs clang, llvm-strip
//! and llvm-readelf (scripts/install-test-deps.sh).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The clang the script pins, read from the script itself.
fn pinned_clang() -> String {
    let script = std::fs::read_to_string(root().join("scripts/build-bpf.sh")).expect("read script");
    script
        .lines()
        .find_map(|l| l.strip_prefix("PINNED_CLANG=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("scripts/build-bpf.sh sets PINNED_CLANG=\"...\"")
        .to_string()
}

fn installed_clang() -> String {
    let out = Command::new("clang")
        .arg("--version")
        .output()
        .expect("run clang --version (scripts/install-test-deps.sh installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Global functions (the programs) with their section, and global objects (maps).
fn symbols(object: &Path) -> BTreeSet<String> {
    let out = Command::new("llvm-readelf")
        .args(["-sSW"])
        .arg(object)
        .output()
        .expect("run llvm-readelf");
    assert!(out.status.success(), "llvm-readelf {}", object.display());
    let text = String::from_utf8_lossy(&out.stdout);
    // Section index -> name, from the section table ("[ 3] iter/tcp PROGBITS ...").
    let mut sections = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix('[') else {
            continue;
        };
        let Some((idx, after)) = rest.split_once(']') else {
            continue;
        };
        if let (Ok(i), Some(name)) = (idx.trim().parse::<u32>(), after.split_whitespace().next()) {
            sections.insert(i, name.to_string());
        }
    }
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Num: Value Size Type Bind Vis Ndx Name
        if cols.len() == 8 && (cols[3] == "FUNC" || cols[3] == "OBJECT") && cols[4] == "GLOBAL" {
            let section = cols[6]
                .parse::<u32>()
                .ok()
                .and_then(|i| sections.get(&i).cloned())
                .unwrap_or_else(|| cols[6].to_string());
            out.insert(format!("{} {} in {}", cols[3], cols[7], section));
        }
    }
    out
}

#[test]
fn committed_objects_match_a_rebuild() {
    let root = root();
    let out = std::env::temp_dir().join(format!("bindwatch-bpf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let pinned = pinned_clang();
    let exact = installed_clang() == pinned;
    let status = Command::new("bash")
        .arg(root.join("scripts/build-bpf.sh"))
        .arg(&out)
        .env("BPF_ANY_CLANG", if exact { "0" } else { "1" })
        .current_dir(root)
        .status()
        .expect("run scripts/build-bpf.sh");
    assert!(status.success(), "scripts/build-bpf.sh failed");
    let sources: Vec<PathBuf> = std::fs::read_dir(root.join("bpf"))
        .expect("bpf/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    for want in ["bindevents.bpf.c", "boundtrack.bpf.c", "sockiter.bpf.c"] {
        assert!(
            sources.iter().any(|p| p.ends_with(want)),
            "bpf/{want} is among the sources: {sources:?}"
        );
    }
    for src in sources {
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .replace(".bpf.c", ".bpf.o");
        let rebuilt = out.join(&name);
        let committed = root.join("bpf").join(&name);
        let want = symbols(&committed);
        assert!(
            want.iter().any(|s| s.starts_with("FUNC ")),
            "bpf/{name}: no program found in {want:?}"
        );
        assert_eq!(
            symbols(&rebuilt),
            want,
            "bpf/{name}: a rebuild of its source has other programs or maps"
        );
        if exact {
            let built = std::fs::read(&rebuilt).expect("rebuilt object");
            let committed = std::fs::read(&committed)
                .unwrap_or_else(|e| panic!("bpf/{name} is not committed: {e}"));
            assert!(
                built == committed,
                "bpf/{name} differs from a rebuild of its source with the pinned {pinned}: \
                 run `bash scripts/build-bpf.sh` and commit the object"
            );
        } else {
            eprintln!(
                "bpf/{name}: clang is not the pinned \"{pinned}\": compared programs and maps, not bytes"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}
