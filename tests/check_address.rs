//! `check --address` against the real kernel: an address no interface holds cannot be
//! bound (EADDRNOTAVAIL) whatever the port, unless `ip_nonlocal_bind` allows it. Each
//! test runs in its own network namespace (only `lo`), where it can add addresses and
//! set the namespace's own `ip_nonlocal_bind` without touching the host.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// What the kernel itself answers to bind(addr:port) for a fresh TCP socket.
fn kernel_binds(addr: &str, port: u16) -> Result<(), i32> {
    let a: SocketAddr = format!("{addr}:{port}")
        .parse()
        .or_else(|_| format!("[{addr}]:{port}").parse())
        .expect("address");
    TcpListener::bind(a)
        .map(drop)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn check(addr: &str) -> (i32, String, String) {
    bindwatch(&[
        "check",
        "18877",
        "--address",
        addr,
        "--state.file",
        "",
        "--source",
        "procfs",
    ])
}

#[test]
fn an_address_on_no_interface_is_eaddrnotavail_unless_nonlocal_bind() {
    in_netns(|| {
        // 10.77.0.1 is put on lo; 192.0.2.77 and 2001:db8::77 are on nothing.
        run_ok("ip", &["addr", "add", "10.77.0.1/32", "dev", "lo"]);
        for (addr, family) in [("192.0.2.77", "ipv4"), ("2001:db8::77", "ipv6")] {
            assert_eq!(
                kernel_binds(addr, 18877),
                Err(libc::EADDRNOTAVAIL),
                "the kernel refuses {addr}"
            );
            let (code, out, err) = check(addr);
            assert_eq!(code, 2, "{addr}: {out}{err}");
            assert!(!out.contains("would succeed"), "{addr}: {out}");
            assert!(err.contains(addr), "names the address: {err}");
            assert!(err.contains("EADDRNOTAVAIL"), "{err}");
            assert!(
                err.contains(&format!("net.{family}.ip_nonlocal_bind"))
                    && err.contains("IP_FREEBIND"),
                "{err}"
            );
        }
        // Addresses the kernel accepts: one added to lo, any of 127/8, ::1.
        for addr in ["10.77.0.1", "127.0.0.5", "::1"] {
            assert_eq!(kernel_binds(addr, 18877), Ok(()), "the kernel binds {addr}");
            let (code, out, err) = check(addr);
            assert_eq!(code, 0, "{addr}: {out}{err}");
            assert!(out.contains("would succeed"), "{addr}: {out}");
        }
        // With ip_nonlocal_bind on (this namespace only), the kernel binds anything.
        run_ok(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_nonlocal_bind=1",
                "net.ipv6.ip_nonlocal_bind=1",
            ],
        );
        for addr in ["192.0.2.77", "2001:db8::77"] {
            assert_eq!(
                kernel_binds(addr, 18877),
                Ok(()),
                "nonlocal: kernel binds {addr}"
            );
            let (code, out, err) = check(addr);
            assert_eq!(code, 0, "{addr} with ip_nonlocal_bind=1: {out}{err}");
            assert!(out.contains("would succeed"), "{out}");
        }
    });
}

#[test]
fn wait_waits_for_an_address_to_appear() {
    in_netns(|| {
        let wait = |addr: &str, timeout: &str| {
            Command::new(bin())
                .args([
                    "wait",
                    "18878",
                    "--address",
                    addr,
                    "--timeout",
                    timeout,
                    "--poll.interval",
                    "200ms",
                    "--state.file",
                    "",
                    "--source",
                    "procfs",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn bindwatch wait")
        };
        // Gives up at --timeout (exit 1), naming the address.
        let out = wait("10.78.0.2", "1s").wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("10.78.0.2") && err.contains("EADDRNOTAVAIL"),
            "{err}"
        );
        // A VIP added while waiting (as keepalived would) ends the wait with 0.
        let mut child = wait("10.78.0.1", "20s");
        // `wait` says once, on stderr, that the address is not there yet: after that
        // line it has checked at least once and must still be waiting.
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !seen.iter().any(|l: &String| l.contains("10.78.0.1")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("wait never said the address is missing; stderr: {seen:?}");
                }
            }
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "wait must not pass before the address exists: {seen:?}"
        );
        run_ok("ip", &["addr", "add", "10.78.0.1/32", "dev", "lo"]);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("wait did not notice the new address");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0));
    });
}
