//! Shared by the packaging tests (tests/package.rs, tests/container_image.rs): the
//! repository's root, and commands run with their output kept for the failure message.

use std::path::PathBuf;
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub use super::deploy::{run, text};

pub fn run_ok_cmd(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
