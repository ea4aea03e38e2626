//! The bind tracer's start-up message says what is wrong with tracefs: where it is
//! mounted but this process may not read it (bindwatch as `nobody`, tracefs mode 0700),
//! "not readable", never "not mounted".

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{bin, in_netns, Logged, Scratch};

#[test]
fn tracefs_mounted_but_unreadable_is_named_so() {
    let meta = std::fs::metadata("/sys/kernel/tracing").expect("tracefs at /sys/kernel/tracing");
    let readable_by_nobody = meta.mode() & 0o005 == 0o005;
    in_netns(move || {
        let dir = Scratch::new("tracefs-message");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let mut cmd = Command::new(bin());
        cmd.args([
            "serve",
            "--web.listen-address",
            "127.0.0.1:19286",
            "--state.file",
            "",
        ])
        .uid(65534)
        .gid(65534);
        let mut agent = Logged::spawn(cmd, dir.path("agent.log"));
        agent.wait_until("said why the tracer is unavailable", || {
            agent_log(&dir).contains("bind failure events unavailable")
        });
        let log = agent_log(&dir);
        let line = log
            .lines()
            .find(|l| l.contains("bind failure events unavailable"))
            .unwrap_or_default();
        assert!(!line.contains("not mounted"), "tracefs is mounted: {line}");
        if !readable_by_nobody {
            assert!(
                line.contains("/sys/kernel/tracing") && line.contains("not readable"),
                "{line}"
            );
        }
    });
}

fn agent_log(dir: &Scratch) -> String {
    std::fs::read_to_string(dir.path("agent.log")).unwrap_or_default()
}
