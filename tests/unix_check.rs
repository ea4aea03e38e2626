//! `bindwatch check unix:...`, `wait unix:...` and `ports --unix` against real
//! daemons (nginx with `listen unix:`, python's socketserver.UnixStreamServer), each
//! in its own network namespace and scratch directory. Every answer of `check` is
//! compared with a real `bind()` made right after it. Needs root, nginx, python3.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::unix::{bind, kernel_bind, sun_path};
use common::{bindwatch, in_netns, Logged, Scratch};

/// `bindwatch check ADDR ARGS`, then a real bind() on the same address with a socket
/// of the `--type` given (stream by default): the
/// exit code must say what the kernel answered (0 bound, 1 EADDRINUSE, 2 another
/// errno). Returns (exit code, stdout + stderr).
fn check_agrees(addr: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["check", addr];
    args.extend_from_slice(extra);
    let (code, out, err) = bindwatch(&args);
    let target = addr.strip_prefix("unix:").expect("a unix: address");
    let kind = match extra
        .iter()
        .position(|a| *a == "--type")
        .map(|i| extra[i + 1])
    {
        Some("dgram") => libc::SOCK_DGRAM,
        Some("seqpacket") => libc::SOCK_SEQPACKET,
        _ => libc::SOCK_STREAM,
    };
    let kernel = kernel_bind(kind, target);
    let expected = match kernel {
        Ok(()) => 0,
        Err(libc::EADDRINUSE) => 1,
        Err(_) => 2,
    };
    assert_eq!(
        code, expected,
        "check {addr} exited {code} but bind() answered {kernel:?}: {out}{err}"
    );
    (code, format!("{out}{err}"))
}

/// Polls `check` until its text contains `want` (the situation may take a moment to
/// settle: a killed process closes its sockets as it exits); fails with the last text.
fn check_until(addr: &str, want: &str) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, text) = check_agrees(addr, &[]);
        if text.contains(want) {
            return (code, text);
        }
        assert!(
            Instant::now() < deadline,
            "check {addr} never said {want:?}; last: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids whose parent is `ppid` (nginx's workers).
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The field after the comm's closing parenthesis: state, then ppid.
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let ppid_field = after.split_whitespace().nth(1);
        if ppid_field == Some(&ppid.to_string()) {
            out.push(pid);
        }
    }
    out
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) of a pid this test started (nginx master or its worker).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

fn nginx_conf(dir: &Scratch, sock: &str) -> String {
    let d = dir.0.display();
    dir.write(
        "nginx.conf",
        &format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{ listen unix:{sock}; return 200 ok; }}\n}}\n"
        ),
    )
}

fn start_nginx(dir: &Scratch, conf: &str, log: &str) -> Logged {
    let mut cmd = Command::new("nginx");
    cmd.args(["-c", conf, "-p", &dir.str("")]);
    Logged::spawn(cmd, dir.path(log))
}

#[test]
fn nginx_held_then_stale_after_kill_9_then_free() {
    in_netns(|| {
        let dir = Scratch::new("unix-nginx");
        let sock = dir.str("nginx.sock");
        let addr = format!("unix:{sock}");
        let conf = nginx_conf(&dir, &sock);

        let mut nginx = start_nginx(&dir, &conf, "nginx-1.log");
        nginx.wait_until("listened on its unix socket", || {
            dir.path("nginx.sock").exists()
        });
        let (code, text) = check_until(&addr, "held by nginx[");
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("listening"), "{text}");
        let (code, json) = check_agrees(&addr, &["--json"]);
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("check --json");
        assert_eq!(v["state"], "held", "{json}");
        assert_eq!(v["holders"][0]["owner"]["process"], "nginx", "{json}");
        assert_eq!(v["holders"][0]["state"], "listen", "{json}");
        assert_eq!(v["safe_to_remove"], false);

        // kill -9 of every nginx process: nobody unlinks the socket file. The master
        // first, so that it cannot start new workers for the ones killed.
        let master = nginx.child.id();
        let workers = children_of(master);
        assert!(!workers.is_empty(), "nginx has no workers");
        kill9(master);
        let _ = nginx.child.wait();
        for w in &workers {
            kill9(*w);
        }
        assert!(
            dir.path("nginx.sock").exists(),
            "nginx removed its socket file"
        );
        let (code, text) = check_until(&addr, "stale socket file");
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("removing it is safe"), "{text}");

        // A real nginx start fails with 98 on the stale file.
        let out = Command::new("nginx")
            .args(["-c", &conf, "-p", &dir.str("")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run nginx");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "nginx started on a stale file: {err}"
        );
        assert!(
            err.contains("failed (98: Address already in use)"),
            "nginx: {err}"
        );
        let (code, text) = check_agrees(&addr, &[]);
        assert_eq!(code, 1, "still stale after nginx's failed start: {text}");

        // Removed: free, and nginx starts.
        std::fs::remove_file(&sock).unwrap();
        let (code, text) = check_agrees(&addr, &[]);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("would succeed"), "{text}");
        let mut nginx = start_nginx(&dir, &conf, "nginx-2.log");
        nginx.wait_until("listened again", || dir.path("nginx.sock").exists());
        let (code, _) = check_until(&addr, "held by nginx[");
        assert_eq!(code, 1);
        let master = nginx.child.id();
        let workers = children_of(master);
        kill9(master);
        let _ = nginx.child.wait();
        for w in workers {
            kill9(w);
        }
    });
}

const PY_SERVER: &str = "import socketserver, sys\n\
class H(socketserver.BaseRequestHandler):\n    def handle(self): pass\n\
s = socketserver.UnixStreamServer(sys.argv[1], H)\nprint('ready', flush=True)\ns.serve_forever()\n";

/// A python listener that never accepts: its backlog is `backlog`.
const PY_NO_ACCEPT: &str = "import socket, sys, time\n\
s = socket.socket(socket.AF_UNIX)\nname = sys.argv[1]\n\
s.bind('\\0' + name[1:] if name.startswith('@') else name)\ns.listen(int(sys.argv[2]))\n\
print('ready', file=sys.stderr, flush=True)\ntime.sleep(600)\n";

fn python(dir: &Scratch, script: &str, args: &[&str], log: &str) -> Logged {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    Logged::spawn(cmd, dir.path(log))
}

#[test]
fn python_unix_stream_server_killed_leaves_a_stale_file() {
    in_netns(|| {
        let dir = Scratch::new("unix-python");
        let sock = dir.str("py.sock");
        let addr = format!("unix:{sock}");
        let (code, _) = check_agrees(&addr, &[]);
        assert_eq!(code, 0, "nothing there yet");

        let mut py = python(&dir, PY_SERVER, &[&sock], "py.log");
        py.wait_until("bound its socket", || dir.path("py.sock").exists());
        let (code, text) = check_until(&addr, "held by python");
        assert_eq!(code, 1, "{text}");

        kill9(py.child.id());
        let _ = py.child.wait();
        let (code, text) = check_until(&addr, "stale socket file");
        assert_eq!(code, 1, "{text}");
        let (_, json) = check_agrees(&addr, &["--json"]);
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(
            (v["state"].clone(), v["safe_to_remove"].clone()),
            ("stale".into(), true.into())
        );

        // A regular file at the path.
        std::fs::remove_file(&sock).unwrap();
        std::fs::write(&sock, "not a socket").unwrap();
        let (code, text) = check_agrees(&addr, &[]);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("a regular file, not a socket"), "{text}");
        let (_, json) = check_agrees(&addr, &["--json"]);
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["state"], "not_a_socket");
        assert_eq!(v["file_type"], "regular");
        assert_eq!(v["safe_to_remove"], false);
    });
}

#[test]
fn accept_queue_is_shown_by_check_and_ports() {
    in_netns(|| {
        let dir = Scratch::new("unix-queue");
        let sock = dir.str("q.sock");
        let addr = format!("unix:{sock}");
        let mut py = python(&dir, PY_NO_ACCEPT, &[&sock, "7"], "q.log");
        py.wait_until("listened", || dir.path("q.sock").exists());
        let clients: Vec<_> = (0..3)
            .map(|_| std::os::unix::net::UnixStream::connect(&sock).expect("connect"))
            .collect();
        let (code, text) = check_until(&addr, "3 connections waiting");
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("held by python"), "{text}");

        let (code, out, err) = bindwatch(&["ports", "--unix"]);
        assert_eq!(code, 0, "{err}");
        let row = out
            .lines()
            .find(|l| l.contains(&sock))
            .unwrap_or_else(|| panic!("no row for {sock}: {out}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], "stream", "{row}");
        assert!(cols[2].starts_with("python"), "{row}");
        assert_eq!((cols[4], cols[5]), ("3", "7"), "queue and limit: {row}");

        let (code, out, err) = bindwatch(&["ports", "--unix", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let l = v["unix_listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["address"] == sock.as_str())
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(
            (l["accept_queue"].clone(), l["accept_queue_limit"].clone()),
            (3.into(), 7.into())
        );
        // Its file removed: the listener is unreachable by name, and `ports` says so.
        std::fs::remove_file(&sock).unwrap();
        let (_, out, _) = bindwatch(&["ports", "--unix"]);
        let row = out.lines().find(|l| l.contains(&sock)).unwrap_or("");
        assert!(row.ends_with("file removed"), "{out}");
        drop(clients);
    });
}

#[test]
fn abstract_name_is_held_only_in_its_network_namespace() {
    let name = format!("@bindwatch-check-{}", std::process::id());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let held = name.clone();
    let holder = std::thread::spawn(move || {
        in_netns(move || {
            let dir = Scratch::new("unix-abstract");
            let addr = format!("unix:{held}");
            let (code, _) = check_agrees(&addr, &[]);
            assert_eq!(code, 0, "nothing holds it yet");
            let mut py = python(&dir, PY_NO_ACCEPT, &[&held, "5"], "a.log");
            let log = dir.path("a.log");
            py.wait_until("listened", || {
                std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready"))
            });
            let (code, text) = check_agrees(&addr, &[]);
            assert_eq!(code, 1, "{text}");
            assert!(text.contains("held by python"), "{text}");
            // A datagram socket may take the same abstract name: per type.
            let (code, text) = check_agrees(&addr, &["--type", "dgram"]);
            let dgram = bind(libc::SOCK_DGRAM, &sun_path(&held), false);
            assert!(dgram.is_ok(), "dgram bind: {dgram:?}");
            assert_eq!(code, 0, "{text}");
            assert!(text.contains("per socket type"), "{text}");
            ready_tx.send(()).unwrap();
            let _ = rx.recv();
            drop(py);
        })
    });
    ready_rx.recv().expect("the holder thread failed");
    let other = name.clone();
    let (code, text) = in_netns(move || check_agrees(&format!("unix:{other}"), &[]));
    tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(code, 0, "another namespace: {text}");
}

#[test]
fn wait_returns_once_the_stale_file_is_removed() {
    in_netns(|| {
        let dir = Scratch::new("unix-wait");
        let sock = dir.str("w.sock");
        drop(bind(libc::SOCK_STREAM, &sun_path(&sock), true).unwrap());
        let mut cmd = Command::new(common::bin());
        cmd.args([
            "wait",
            &format!("unix:{sock}"),
            "--timeout",
            "60s",
            "--poll.interval",
            "50ms",
        ]);
        let mut w = Logged::spawn(cmd, dir.path("wait.log"));
        let log = dir.path("wait.log");
        w.wait_until("reported the stale file", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("stale socket file"))
        });
        assert!(
            w.alive(),
            "wait returned while the file was there: {}",
            w.log()
        );
        std::fs::remove_file(&sock).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = w.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "wait never returned: {}",
                w.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "{}", w.log());
        // Gave up: exit 1 at the timeout.
        std::fs::write(&sock, "x").unwrap();
        let (code, _, err) = bindwatch(&["wait", &format!("unix:{sock}"), "--timeout", "200ms"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("not a socket"), "{err}");
    });
}

#[test]
fn bad_unix_addresses_are_usage_errors() {
    let long = format!("unix:/{}", "a".repeat(108));
    let long_abstract = format!("unix:@{}", "a".repeat(108));
    for (args, says) in [
        (vec!["check", "unix:"], "needs a path"),
        (vec!["check", "unix:@"], "needs a name"),
        (vec!["check", long.as_str()], "at most 108 bytes"),
        (vec!["check", long_abstract.as_str()], "at most 107 bytes"),
        (vec!["check", "unix:run/app.sock"], "absolute"),
        (vec!["check", "unix:/run/"], "not a directory"),
        (vec!["wait", "unix:"], "needs a path"),
        (
            vec!["check", "unix:/run/x.sock", "--reuseaddr"],
            "--reuseaddr has no meaning",
        ),
        (
            vec!["check", "unix:/run/x.sock", "--restart"],
            "--restart has no meaning",
        ),
        (vec!["check", "unix:/run/x.sock", "--type", "raw"], "--type"),
        (
            vec!["check", "8080", "--type", "dgram"],
            "--type is for unix",
        ),
    ] {
        let (code, out, err) = bindwatch(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A NUL byte cannot travel in argv; in the services file it is a problem naming
    // file, line and key.
    let dir = Scratch::new("unix-bad");
    let cfg = dir.write(
        "nul.yml",
        "services:\n  - name: app\n    unix: \"/run/a\\0b.sock\"\n",
    );
    let (code, out, err) = bindwatch(&["check", "8080", "--config.file", &cfg]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("{cfg}:3: services[0].unix")) && err.contains("NUL"),
        "{err}"
    );
    // A directory that does not exist is an error other than EADDRINUSE: exit 2
    // naming it (checked against bind() by check_agrees).
    let (code, text) = check_agrees(&format!("unix:{}", dir.str("missing/app.sock")), &[]);
    assert_eq!(code, 2);
    assert!(
        text.contains("ENOENT") && text.contains("missing"),
        "{text}"
    );
}

#[test]
fn paths_resolve_under_path_rootfs_and_stay_there() {
    in_netns(|| {
        let dir = Scratch::new("unix-rootfs");
        let root = dir.str("root");
        std::fs::create_dir_all(dir.path("root/run")).unwrap();
        let real = dir.str("root/run/app.sock");
        drop(bind(libc::SOCK_STREAM, &sun_path(&real), true).unwrap());
        let (code, out, err) = bindwatch(&["check", "unix:/run/app.sock", "--path.rootfs", &root]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("stale socket file"), "{out}");
        assert_eq!(kernel_bind(libc::SOCK_STREAM, &real), Err(libc::EADDRINUSE));
        // The host's own /run/app.sock is not what was judged.
        assert!(out.starts_with("unix:/run/app.sock:"), "{out}");

        // An absolute symlink inside the root points inside the root, not at the host's
        // /tmp: /tmp/x.sock under the root's /tmp, whose directory does not exist.
        std::os::unix::fs::symlink("/tmp", dir.path("root/run2")).unwrap();
        let host_side = std::path::Path::new("/tmp").join(format!(
            "bindwatch-rootfs-escape-{}.sock",
            std::process::id()
        ));
        drop(
            bind(
                libc::SOCK_STREAM,
                &sun_path(host_side.to_str().unwrap()),
                false,
            )
            .unwrap(),
        );
        let escaped = format!(
            "unix:/run2/{}",
            host_side.file_name().unwrap().to_str().unwrap()
        );
        let (code, out, err) = bindwatch(&["check", &escaped, "--path.rootfs", &root]);
        std::fs::remove_file(&host_side).unwrap();
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains("ENOENT"), "{err}");
        // An unusable --path.rootfs is a runtime error naming it.
        let (code, _, err) = bindwatch(&[
            "check",
            "unix:/run/app.sock",
            "--path.rootfs",
            &dir.str("nowhere"),
        ]);
        assert_eq!(code, 2);
        assert!(err.contains("--path.rootfs"), "{err}");
    });
}
