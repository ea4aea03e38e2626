//! The real binary with a `--web.config.file`, for the security tests: certificates made by
//! the `openssl` CLI in a scratch directory, `bindwatch serve` on 127.0.0.1:[`PORT`] (in the
//! test's private network namespace) with its log in a file, and `curl` as the client.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::*;

pub const PORT: u16 = 19443;

pub fn openssl(dir: &Scratch, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `NAME.key` (RSA 2048 or EC P-256) and a request `NAME.csr` for CN=NAME.
pub fn key_and_request(dir: &Scratch, name: &str, rsa: bool) -> (String, String) {
    let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
    let alg: &[&str] = if rsa {
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    } else {
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    let mut genpkey = vec!["genpkey"];
    genpkey.extend_from_slice(alg);
    genpkey.extend_from_slice(&["-out", &key]);
    openssl(dir, &genpkey);
    let subj = format!("/CN={name}");
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-subj", &subj, "-out", &csr],
    );
    (key, csr)
}

/// A CA: `NAME.key`, `NAME.crt`.
pub fn make_ca(dir: &Scratch, name: &str) {
    dir.write(
        "ca.ext",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
    );
    let (key, csr) = key_and_request(dir, name, false);
    let crt = format!("{name}.crt");
    openssl(
        dir,
        &[
            "x509", "-req", "-in", &csr, "-signkey", &key, "-days", "2", "-extfile", "ca.ext",
            "-out", &crt,
        ],
    );
}

/// A leaf certificate `NAME.crt` / `NAME.key` signed by `ca`; `server` decides the
/// extended key usage (and the 127.0.0.1 SAN). `rsa` picks the key type.
pub fn make_leaf(dir: &Scratch, name: &str, ca: &str, server: bool, rsa: bool) {
    let ext = if server {
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    } else {
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:scraper.example\n"
    };
    let ext_file = format!("{name}.ext");
    dir.write(&ext_file, ext);
    let (_, csr) = key_and_request(dir, name, rsa);
    let crt = format!("{name}.crt");
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let serial = format!("{}", std::process::id() + name.len() as u32);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &crt,
        ],
    );
}

pub fn hash(password: &str, cost: u32) -> String {
    bcrypt::hash(password, cost).expect("bcrypt")
}

/// `bindwatch serve` with a web config, killed on drop; stderr goes to a file.
pub struct Agent {
    pub run: Logged,
    pub addr: SocketAddr,
}

impl Agent {
    pub fn start(dir: &Scratch, extra: &[&str]) -> Agent {
        let listen = format!("127.0.0.1:{PORT}");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--web.listen-address", &listen, "--state.file="])
            .args(extra);
        let mut run = Logged::spawn(cmd, dir.path("bindwatch.log"));
        let addr: SocketAddr = listen.parse().expect("addr");
        // The listener is bound only after the web config loaded.
        run.wait_until("listened", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        Agent { run, addr }
    }

    pub fn alive(&mut self) -> bool {
        self.run.alive()
    }

    pub fn log(&self) -> String {
        self.run.log()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

/// What curl saw: exit code, HTTP status (0 when there was none), headers (lower
/// case), body.
#[derive(Debug)]
pub struct Curl {
    pub exit: i32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub stderr: String,
}

impl Curl {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn curl(args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status,
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect(),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Retries `f` until it returns true, for at most `secs`.
pub fn within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    eventually(Duration::from_secs(secs), &mut f)
}
