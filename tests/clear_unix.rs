//! `bindwatch clear unix:PATH` against the kernel: a stale socket file left by a
//! daemon killed with SIGKILL is removed with `--yes` and a real `bind()` then
//! succeeds; a live listener's file, a regular file and a symlink are never removed
//! (exit 1, everything intact); bad input is a usage error. Each test in its own
//! network namespace and scratch directory.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::unix::kernel_bind;
use common::{bindwatch, in_netns, Scratch};

const PY_SERVER: &str = "import socketserver, sys\n\
class H(socketserver.BaseRequestHandler):\n    def handle(self): self.request.sendall(b'hi')\n\
s = socketserver.UnixStreamServer(sys.argv[1], H)\nprint('ready', flush=True)\ns.serve_forever()\n";

/// A python UnixStreamServer on `path`, started and ready.
fn python_server(path: &str) -> Child {
    let mut child = Command::new("python3")
        .args(["-c", PY_SERVER, path])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready", "python server did not start");
    child
}

fn kill9(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn is_socket_file(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn a_stale_file_is_listed_then_removed_and_a_real_bind_succeeds() {
    in_netns(|| {
        let dir = Scratch::new("clear-unix-stale");
        let sock = dir.str("app.sock");
        kill9(python_server(&sock));
        assert!(is_socket_file(&sock), "the killed server left its file");
        assert_eq!(kernel_bind(libc::SOCK_STREAM, &sock), Err(libc::EADDRINUSE));
        let target = format!("unix:{sock}");

        let (code, out, err) = bindwatch(&["clear", &target]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("stale") && out.contains("REMOVE"), "{out}");
        assert!(is_socket_file(&sock), "without --yes nothing changes");

        let (code, out, err) = bindwatch(&["clear", &target, "--yes"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("removed the stale socket file"), "{out}");
        assert!(
            err.contains("removed stale socket file"),
            "one log line: {err}"
        );
        assert!(
            std::fs::symlink_metadata(&sock).is_err(),
            "the file is gone"
        );
        // The kernel agrees: a new listener binds at once.
        assert_eq!(kernel_bind(libc::SOCK_STREAM, &sock), Ok(()));
        let daemon = python_server(&sock);
        kill9(daemon);
    });
}

#[test]
fn a_live_listeners_file_is_refused_and_still_serves() {
    in_netns(|| {
        let dir = Scratch::new("clear-unix-held");
        let sock = dir.str("live.sock");
        let server = python_server(&sock);
        let target = format!("unix:{sock}");
        let (code, out, err) = bindwatch(&["clear", &target, "--yes"]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.contains("held by") && out.contains("not removed"),
            "{out}"
        );
        assert!(is_socket_file(&sock));
        // The listener still answers on its file.
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
        let mut buf = [0u8; 2];
        std::io::Read::read_exact(&mut s, &mut buf).expect("read");
        assert_eq!(&buf, b"hi");
        assert_eq!(kernel_bind(libc::SOCK_STREAM, &sock), Err(libc::EADDRINUSE));
        kill9(server);
    });
}

#[test]
fn a_regular_file_and_a_symlink_are_never_removed() {
    in_netns(|| {
        let dir = Scratch::new("clear-unix-other");
        let file = dir.write("not-a.sock", "precious\n");
        let (code, out, err) = bindwatch(&["clear", &format!("unix:{file}"), "--yes"]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("not a socket"), "{out}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "precious\n");

        // A symlink at the path, to a stale socket file elsewhere: the link is not
        // followed, and neither it nor its target is removed.
        let stale = dir.str("elsewhere.sock");
        kill9(python_server(&stale));
        let link = dir.str("link.sock");
        std::os::unix::fs::symlink(&stale, &link).expect("symlink");
        let (code, out, err) = bindwatch(&["clear", &format!("unix:{link}"), "--yes"]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
            "the symlink stays"
        );
        assert!(is_socket_file(&stale), "its target stays");
        assert_eq!(kernel_bind(libc::SOCK_STREAM, &link), Err(libc::EADDRINUSE));
    });
}

#[test]
fn unix_bad_input_is_a_usage_error() {
    for (args, want) in [
        (vec!["clear", "unix:"], "unix:"),
        (vec!["clear", "unix:relative.sock"], "relative"),
        (vec!["clear", "unix:@name", "--yes"], "abstract"),
        (
            vec!["clear", "unix:/tmp/x.sock", "--reuseaddr"],
            "--reuseaddr",
        ),
        (
            vec!["clear", "unix:/tmp/x.sock", "--yes", "--force"],
            "--force",
        ),
    ] {
        let (code, out, err) = bindwatch(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
