//! The records shared with the BPF programs have one definition on each side, and they
//! agree: every size, field offset and flag constant of `bindwatch::source::records`
//! (as compiled, read with `size_of`/`offset_of`) is asserted against
//! `bpf/include/records.h` by the BPF target's compiler (`clang -target bpf`,
//! `_Static_assert`), once with each program's types header in front, as each program
//! includes it. Each field must also end where the next begins (the last at the size),
//! so a C member Rust does not know, or padding, fails too. Needs clang
//! (scripts/install-test-deps.sh).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use bindwatch::source::records::{CONSTANTS, LAYOUTS};

/// `_Static_assert`s of every layout and constant as this crate compiled them.
fn assertions() -> String {
    let mut c = String::new();
    c.push_str("#define OFF(s, f) __builtin_offsetof(struct s, f)\n");
    c.push_str("#define SZ(s, f) sizeof(((struct s *)0)->f)\n");
    for l in LAYOUTS {
        let s = l.c_struct;
        c.push_str(&format!(
            "_Static_assert(sizeof(struct {s}) == {}, \"struct {s} is {} bytes in Rust\");\n",
            l.size, l.size
        ));
        let mut fields = l.fields.to_vec();
        fields.sort_by_key(|(_, off)| *off);
        for (i, (f, off)) in fields.iter().enumerate() {
            let next = fields.get(i + 1).map_or(l.size, |(_, o)| *o);
            c.push_str(&format!(
                "_Static_assert(OFF({s}, {f}) == {off}, \"{s}.{f} is at {off} in Rust\");\n\
                 _Static_assert(OFF({s}, {f}) + SZ({s}, {f}) == {next}, \
                 \"{s}.{f} ends at {next} in Rust (the next field or the end)\");\n"
            ));
        }
    }
    for (name, value) in CONSTANTS {
        c.push_str(&format!(
            "_Static_assert({name} == {value}, \"{name} is {value} in Rust\");\n"
        ));
    }
    c
}

/// Compiles `body` after `#include "<types>"` and `#include "records.h"` for the BPF
/// target: (success, clang's messages).
fn compile(types: &str, body: &str) -> (bool, String) {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/include");
    let mut child = Command::new("clang")
        .args([
            "-target",
            "bpf",
            "-fsyntax-only",
            "-Wall",
            "-Werror",
            "-x",
            "c",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run clang (scripts/install-test-deps.sh installs it)");
    let src = format!("#include \"{types}\"\n#include \"records.h\"\n{body}");
    child
        .stdin
        .take()
        .expect("clang's stdin")
        .write_all(src.as_bytes())
        .expect("write to clang");
    let out = child.wait_with_output().expect("wait for clang");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_shared_record_has_the_c_headers_layout_and_constants() {
    let body = assertions();
    for types in ["sockiter.h", "bindevents_types.h", "fdscan.h"] {
        let (ok, msg) = compile(types, &body);
        assert!(ok, "with {types}, records.h and Rust disagree:\n{msg}");
    }
}

/// The check can fail: one offset off by one (as a field added on one side only
/// would make it) is an error naming the field.
#[test]
fn a_layout_that_differs_from_the_header_fails_to_compile() {
    let body = assertions().replace("OFF(sockrec, cookie) == 64,", "OFF(sockrec, cookie) == 65,");
    assert!(
        body.contains("== 65,"),
        "the assertion to break is generated"
    );
    let (ok, msg) = compile("sockiter.h", &body);
    assert!(!ok, "a wrong offset compiled");
    assert!(msg.contains("sockrec.cookie is at 64"), "{msg}");
}
