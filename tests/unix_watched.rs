//! A watched unix service (`unix:` in `--config.file`) through a real agent: a python
//! UnixStreamServer goes ok -> blocked (its stale socket file, after kill -9) -> ok
//! (file removed, server started again), in the scraped metrics; the accept queue of
//! a listener that does not accept, and the namespace's unix socket counts. Each in
//! its own network namespace and scratch directory. Needs root and python3.

mod common;

use std::process::Command;
use std::time::Duration;

use common::unix::kernel_bind;
use common::{in_netns, Logged, Metrics, Scratch, Server};

const PY_SERVER: &str = "import socketserver, sys\n\
class H(socketserver.BaseRequestHandler):\n    def handle(self): pass\n\
s = socketserver.UnixStreamServer(sys.argv[1], H)\ns.serve_forever()\n";

const PY_NO_ACCEPT: &str = "import socket, sys, time\n\
s = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(int(sys.argv[2]))\ntime.sleep(600)\n";

fn python(dir: &Scratch, script: &str, args: &[&str], log: &str) -> Logged {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    Logged::spawn(cmd, dir.path(log))
}

fn status_is(m: &Metrics, name: &str, address: &str, status: &str) -> bool {
    m.get(
        "bindwatch_watched_unix_status",
        &[("name", name), ("address", address), ("status", status)],
    ) == Some(1.0)
}

/// Scrapes until `name` has `status`; fails with what the last scrape said.
fn wait_status(srv: &Server, name: &str, address: &str, status: &str) -> Metrics {
    let m = srv.metrics_until(Duration::from_secs(15), |m| {
        status_is(m, name, address, status)
    });
    assert!(
        status_is(&m, name, address, status),
        "{name} never became {status}: {:?}",
        m.matching("bindwatch_watched_unix_status", &[("name", name)])
    );
    m
}

#[test]
fn watched_path_ok_then_blocked_by_its_stale_file_then_ok() {
    in_netns(|| {
        let dir = Scratch::new("unix-watched");
        let sock = dir.str("app.sock");
        let cfg = dir.write(
            "bindwatch.yml",
            &format!(
                "services:\n  - name: app\n    unix: {sock}\n    owner: {{process: python3}}\n"
            ),
        );
        let mut py = python(&dir, PY_SERVER, &[&sock], "py1.log");
        py.wait_until("bound its socket", || dir.path("app.sock").exists());
        let srv = Server::start(
            18291,
            &[
                "--poll.interval",
                "200ms",
                "--no-bind-events",
                "--config.file",
                &cfg,
            ],
        );
        let m = wait_status(&srv, "app", &sock, "ok");
        assert_eq!(
            m.get(
                "bindwatch_watched_unix_accept_queue_limit",
                &[("name", "app"), ("address", &sock)]
            ),
            Some(5.0),
            "socketserver listens with a backlog of 5"
        );
        assert_eq!(
            m.get(
                "bindwatch_unix_sockets",
                &[("type", "stream"), ("state", "listen")]
            ),
            Some(1.0),
            "the namespace holds one listening unix socket"
        );
        // The kernel agrees: the path is taken.
        assert_eq!(kernel_bind(libc::SOCK_STREAM, &sock), Err(libc::EADDRINUSE));

        // Crash: kill -9 leaves the socket file.
        // SAFETY: kill(2) of the python this test started.
        unsafe { libc::kill(py.child.id() as i32, libc::SIGKILL) };
        let _ = py.child.wait();
        let m = wait_status(&srv, "app", &sock, "blocked");
        assert_eq!(
            m.get(
                "bindwatch_watched_unix_accept_queue",
                &[("name", "app"), ("address", &sock)]
            ),
            None,
            "no listener, no accept queue"
        );
        assert_eq!(kernel_bind(libc::SOCK_STREAM, &sock), Err(libc::EADDRINUSE));

        // Cleanup: the stale file removed, the server started again.
        std::fs::remove_file(&sock).unwrap();
        wait_status(&srv, "app", &sock, "missing");
        assert_eq!(kernel_bind(libc::SOCK_STREAM, &sock), Ok(()));
        let mut py = python(&dir, PY_SERVER, &[&sock], "py2.log");
        py.wait_until("bound its socket again", || dir.path("app.sock").exists());
        wait_status(&srv, "app", &sock, "ok");
    });
}

#[test]
fn accept_queue_and_foreign_owner_of_a_watched_listener() {
    in_netns(|| {
        let dir = Scratch::new("unix-watched-queue");
        let sock = dir.str("q.sock");
        let cfg = dir.write(
            "bindwatch.yml",
            &format!(
                "services:\n  - name: q\n    unix: {sock}\n    owner: {{process: nginx}}\n\
                 \x20 - name: gone\n    unix: \"@bindwatch-watched-absent\"\n"
            ),
        );
        let mut py = python(&dir, PY_NO_ACCEPT, &[&sock, "9"], "q.log");
        py.wait_until("listened", || dir.path("q.sock").exists());
        let clients: Vec<_> = (0..4)
            .map(|_| std::os::unix::net::UnixStream::connect(&sock).expect("connect"))
            .collect();
        let srv = Server::start(
            18292,
            &[
                "--poll.interval",
                "200ms",
                "--no-bind-events",
                "--config.file",
                &cfg,
            ],
        );
        let m = wait_status(&srv, "q", &sock, "foreign_owner");
        let labels = [("name", "q"), ("address", sock.as_str())];
        assert_eq!(
            m.get("bindwatch_watched_unix_accept_queue", &labels),
            Some(4.0)
        );
        assert_eq!(
            m.get("bindwatch_watched_unix_accept_queue_limit", &labels),
            Some(9.0)
        );
        wait_status(&srv, "gone", "@bindwatch-watched-absent", "missing");
        drop(clients);
    });
}

/// `ip netns add NAME`, deleted on drop.
struct NamedNetns(String);

impl NamedNetns {
    fn add(name: &str) -> NamedNetns {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        common::run_ok("ip", &["netns", "add", name]);
        NamedNetns(name.to_string())
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn netns_all_counts_unix_sockets_of_every_namespace() {
    in_netns(|| {
        let dir = Scratch::new("unix-netns-all");
        let name = format!("bw-unix-{}", std::process::id());
        let ns = NamedNetns::add(&name);
        // A listener inside the named namespace only (its file is in the scratch
        // directory; the socket belongs to the namespace it was made in).
        let sock = dir.str("ns.sock");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0, "python3", "-c", PY_NO_ACCEPT])
            .args([sock.as_str(), "3"]);
        let _py = Logged::spawn(cmd, dir.path("py.log"));
        let srv = Server::start(
            18293,
            &[
                "--poll.interval",
                "200ms",
                "--no-bind-events",
                "--netns",
                "all",
            ],
        );
        let labels = [
            ("netns", name.as_str()),
            ("type", "stream"),
            ("state", "listen"),
        ];
        let m = srv.metrics_until(Duration::from_secs(20), |m| {
            m.get("bindwatch_unix_sockets", &labels) == Some(1.0)
        });
        assert_eq!(
            m.get("bindwatch_unix_sockets", &labels),
            Some(1.0),
            "{:?}",
            m.matching("bindwatch_unix_sockets", &[("netns", name.as_str())])
        );
        assert!(
            m.get(
                "bindwatch_unix_sockets",
                &[("netns", "host"), ("type", "stream"), ("state", "listen")]
            )
            .is_some(),
            "the host's counts are there too"
        );
    });
}
