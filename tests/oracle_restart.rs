//! `bindwatch check --restart` against the restart of a real daemon: a python3 daemon on
//! 0.0.0.0:P (with and without SO_REUSEADDR) leaves server-side TIME_WAITs and holds an
//! ESTABLISHED connection; bindwatch's prediction must be certain and match what a fresh
//! socket with the daemon's flags gets from bind() once the daemon is killed.
//!
//! Needs root (network namespaces) and `python3`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::oracle::*;
use serde_json::Value;

/// A python3 daemon on 0.0.0.0:P that closes served connections itself and keeps those
/// that say `hold`.
fn daemon(reuseaddr: bool) -> ChildGuard {
    let code = format!(
        "import socket\n\
         l=socket.socket()\n\
         l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,{})\n\
         l.bind(('0.0.0.0',{P})); l.listen(16)\n\
         print('ready',flush=True)\n\
         held=[]\n\
         for _ in range(20):\n\
         \x20   c,_=l.accept(); d=c.recv(100)\n\
         \x20   if d==b'hold':\n\
         \x20       held.append(c); c.sendall(b'held')\n\
         \x20   else:\n\
         \x20       c.sendall(b'ok'); c.close()\n\
         import time; time.sleep(300)\n",
        u8::from(reuseaddr)
    );
    python(&code, None)
}

fn request(msg: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut c = TcpStream::connect(addr("127.0.0.1", P)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(msg).expect("write");
    let mut buf = vec![0u8; 16];
    let n = c.read(&mut buf).expect("read");
    buf.truncate(n);
    (c, buf)
}

fn restart_case(reuseaddr: bool) -> (i32, Value, Result<(), i32>) {
    netns(move || {
        let mut d = daemon(reuseaddr);
        for _ in 0..2 {
            let (mut c, r) = request(b"hi");
            assert_eq!(r, b"ok");
            // The server closed first; read EOF, then close: server-side TIME_WAIT.
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
            close_now(c);
        }
        let (held, r) = request(b"hold");
        assert_eq!(r, b"held");
        assert_state("time-wait", P);
        assert_state("established", P);

        let (code, out, err) = bw(&["check", &P.to_string(), "--restart", "--json"]);
        let json: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
        d.0.kill().expect("kill");
        d.0.wait().expect("reap");
        // The real restart: a fresh socket with the daemon's flags.
        let real = kernel_probe(
            Proto::Tcp,
            P,
            &NewSock {
                addr: "0.0.0.0",
                v6only: false,
                reuseaddr,
                reuseport_uid: None,
                device: None,
            },
        );
        eprintln!(
            "restart (reuseaddr={reuseaddr}): bindwatch {code} {}; real restart {real:?}; left: {}",
            json["verdict"],
            String::from_utf8_lossy(&run("ss", &["-tano", "sport", "=", &format!(":{P}")]).stdout)
        );
        assert!(!json.is_null(), "{out}{err}");
        close_now(held);
        (code, json, real)
    })
}

#[test]
fn restart_prediction_matches_the_real_restart() {
    for reuseaddr in [false, true] {
        let (code, json, real) = restart_case(reuseaddr);
        assert!(
            code == 0 || code == 1,
            "restart verdict must be certain here: {json}"
        );
        let predicted_ok = code == 0;
        assert_eq!(
            predicted_ok,
            real.is_ok(),
            "reuseaddr={reuseaddr}: bindwatch predicted {json}, the real restart gave {real:?}"
        );
        if let Err(e) = real {
            assert_eq!(e, libc::EADDRINUSE);
        }
        assert_eq!(
            real.is_ok(),
            reuseaddr,
            "the kernel itself: reuseaddr={reuseaddr} gave {real:?}"
        );
    }
}
