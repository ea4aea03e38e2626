//! `--path.rootfs`: host files are read under it. A process of uid 4242 listens; the
//! fixture root's /etc/passwd names that uid `rootfs-fixture` (the host's does not), so the
//! `user` label shows whose passwd was read.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::*;

const UID: &str = "4242";
const NAME: &str = "rootfs-fixture";

fn fixture_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rootfs")
}

struct Listener(Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's python3 as uid/gid 4242, listening on 127.0.0.1:`port`.
fn listen_as_4242(port: u16) -> Listener {
    let script = format!(
        "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\n\
         s.listen(8)\nprint('ready', flush=True)\ntime.sleep(120)\n"
    );
    let mut child = Command::new("setpriv")
        .args(["--reuid", UID, "--regid", UID, "--clear-groups"])
        .args(["/usr/bin/python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3 as uid 4242");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert_eq!(line.trim(), "ready");
    Listener(child)
}

fn user_label(srv: &Server, port: u16) -> String {
    let port_s = port.to_string();
    let m = srv.metrics_until(std::time::Duration::from_secs(10), |m| {
        m.matching("bindwatch_listener_info", &[("port", &port_s)])
            .iter()
            .any(|(s, _)| !s.contains("user=\"unknown\""))
    });
    let got = m.matching("bindwatch_listener_info", &[("port", &port_s)]);
    assert_eq!(got.len(), 1, "{got:?}");
    let series = &got[0].0;
    let start = series.find("user=\"").expect("user label") + 6;
    series[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn user_names_come_from_the_rootfs_passwd() {
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    assert!(
        !host_passwd
            .lines()
            .any(|l| l.starts_with(&format!("{NAME}:"))),
        "the host must not know {NAME}"
    );
    in_netns(|| {
        let _l = listen_as_4242(18801);
        let root = fixture_root();
        let root_s = root.to_string_lossy().into_owned();

        let srv = Server::start(
            18802,
            &["--poll.interval", "200ms", "--path.rootfs", &root_s],
        );
        assert_eq!(user_label(&srv, 18801), NAME);
        drop(srv);

        // The one-shot commands take the flag too.
        let (code, out, err) = bindwatch(&[
            "ports",
            "--json",
            "--state.file",
            "",
            "--path.rootfs",
            &root_s,
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("ports --json");
        let l = v["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .find(|l| l["port"] == 18801)
            .unwrap_or_else(|| panic!("18801 missing: {out}"));
        assert_eq!(l["owner"]["user"], NAME, "{l}");

        // Control: the default root (the host's passwd) does not name uid 4242 so.
        let srv = Server::start(18803, &["--poll.interval", "200ms"]);
        assert_ne!(user_label(&srv, 18801), NAME);
        drop(srv);

        // A root without etc/passwd degrades to uids; bindwatch still serves.
        let srv = Server::start(
            18804,
            &[
                "--poll.interval",
                "200ms",
                "--path.rootfs",
                "/nonexistent-rootfs",
            ],
        );
        assert_eq!(user_label(&srv, 18801), UID);
    });
}
