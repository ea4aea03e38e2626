//! The landing page `/` of `bindwatch serve`, against the real binary: rendered by headless
//! Chromium, it lists the listeners with their owners and the watched services with their
//! status, keeps markup in a process name as text, needs the same credentials as /metrics,
//! and shows the last poll's snapshot, not a fresh read of the kernel.
//!
//! Chromium (Debian's) comes from `bash scripts/install-test-deps.sh`; a missing tool fails
//! the test.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{header, http_get, in_netns, Server};

/// A process (python3) whose comm is `comm`, listening on 127.0.0.1:`port` until
/// dropped.
struct NamedListener(std::process::Child);

impl NamedListener {
    fn start(port: u16, comm: &str) -> NamedListener {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import ctypes, socket, sys\n\
                 s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n\
                 ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)  # PR_SET_NAME\n\
                 print('ready', flush=True); sys.stdin.read()",
            ])
            .arg(port.to_string())
            .arg(comm)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = [0u8; 6];
        child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut line)
            .expect("the listener says ready");
        assert_eq!(&line, b"ready\n");
        let comm_now = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).expect("comm");
        assert_eq!(comm_now.trim_end(), comm, "prctl(PR_SET_NAME) took");
        NamedListener(child)
    }
}

impl Drop for NamedListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=F`), a fresh
/// profile and no network but the page, for at most 120 s: its stdout.
fn chromium(url: &str, mode: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "bindwatch-chromium-{}-{}",
        std::process::id(),
        mode.len()
    ));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).expect("profile dir");
    let mut child = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian's chromium, see install-test-deps.sh)");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = reader.join().expect("reader");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = std::fs::remove_dir_all(&profile);
    let status = status.unwrap_or_else(|| panic!("chromium {mode} took over 120 s:\n{err}"));
    assert!(status.success(), "chromium {mode}: {status}\n{err}");
    out
}

/// The `<tr>` of `dom` that holds `cell` as a whole cell.
fn row_with<'a>(dom: &'a str, cell: &str) -> Option<&'a str> {
    let needle = format!("<td>{cell}</td>");
    let at = dom.find(&needle)?;
    let start = dom[..at].rfind("<tr>")?;
    let end = at + dom[at..].find("</tr>")?;
    Some(&dom[start..end])
}

#[test]
fn landing_page_in_headless_chromium() {
    in_netns(|| {
        // The test's listener, a watched service on it and one nobody serves; and a
        // process whose name is markup.
        let _plain = std::net::TcpListener::bind("127.0.0.1:19372").expect("listener");
        let comm = "<b>bw&\"x'</b>";
        let named = NamedListener::start(19371, comm);
        let dir = std::env::temp_dir().join(format!("bindwatch-landing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cfg = dir.join("watched.yml");
        std::fs::write(
            &cfg,
            "services:\n  - name: landing-ok\n    port: 19372\n  - name: landing-missing\n    port: 19373\n",
        )
        .expect("config");
        let srv = Server::start(
            19370,
            &[
                "--poll.interval",
                "300ms",
                "--config.file",
                cfg.to_str().expect("path"),
            ],
        );
        // Wait until a poll has seen both listeners with their owners.
        let escaped = "&lt;b&gt;bw&amp;&quot;x&#39;&lt;/b&gt;";
        let mut page = String::new();
        for _ in 0..100 {
            let (code, h, body) = http_get(srv.addr, "/", &[]).expect("GET /");
            assert_eq!(code, 200);
            assert_eq!(header(&h, "content-type"), Some("text/html; charset=utf-8"));
            page = String::from_utf8_lossy(&body).into_owned();
            if page.contains(escaped) && page.contains("<td>19372</td>") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            page.contains(escaped),
            "the escaped name never showed:\n{page}"
        );
        assert!(!page.contains("<script"), "no JavaScript");

        let url = format!("http://{}/", srv.addr);
        let dom = chromium(&url, "--dump-dom");
        // The browser's DOM: the test's listener by port, with its owner (this test).
        let row = row_with(&dom, "19372").unwrap_or_else(|| panic!("no row for 19372:\n{dom}"));
        assert!(row.contains("<td>tcp</td><td>127.0.0.1</td>"), "{row}");
        let me = format!("[{}]", std::process::id());
        assert!(row.contains(&me), "owner is this test process {me}: {row}");
        // The markup in the process name stayed text: serialized back as &lt;b&gt;, no
        // <b> element came of it.
        let row = row_with(&dom, "19371").unwrap_or_else(|| panic!("no row for 19371:\n{dom}"));
        let want = format!("<td>&lt;b&gt;bw&amp;\"x'&lt;/b&gt;[{}]</td>", named.0.id());
        assert!(row.contains(&want), "want {want} in {row}");
        assert!(
            !dom.contains("<b>"),
            "a <b> element came from the process name:\n{dom}"
        );
        // Watched services with their status.
        let ok = row_with(&dom, "landing-ok").unwrap_or_else(|| panic!("{dom}"));
        assert!(ok.contains("<td class=\"ok\">ok</td>"), "{ok}");
        let missing = row_with(&dom, "landing-missing").unwrap_or_else(|| panic!("{dom}"));
        assert!(
            missing.contains("<td class=\"missing\">missing</td>"),
            "{missing}"
        );
        assert!(dom.contains("<a href=\"/metrics\">Metrics</a>"));

        // A screenshot, kept for people to look at.
        let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("landing.png");
        let _ = std::fs::remove_file(&png);
        chromium(&url, &format!("--screenshot={}", png.display()));
        let bytes = std::fs::read(&png).expect("screenshot written");
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
            "not a (non-trivial) PNG: {} bytes",
            bytes.len()
        );
        eprintln!("landing page screenshot: {}", png.display());
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn landing_page_needs_the_same_auth_as_metrics() {
    use base64::Engine as _;
    in_netns(|| {
        let dir =
            std::env::temp_dir().join(format!("bindwatch-landing-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let web = dir.join("web.yml");
        let hash = bcrypt::hash("pw", 4).expect("bcrypt");
        std::fs::write(
            &web,
            format!("basic_auth_users:\n  alice: {hash}\nauth_excluded_paths: [/healthz]\n"),
        )
        .expect("web config");
        let srv = Server::start(19380, &["--web.config.file", web.to_str().expect("path")]);
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pw")
        );
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:nope")
        );
        for path in ["/", "/metrics"] {
            let (code, h, body) = http_get(srv.addr, path, &[]).expect("GET");
            assert_eq!(code, 401, "{path} without credentials");
            assert_eq!(header(&h, "www-authenticate"), Some("Basic"));
            assert!(!String::from_utf8_lossy(&body).contains("<table"));
            let (code, _, _) = http_get(srv.addr, path, &[("Authorization", &bad)]).expect("GET");
            assert_eq!(code, 401, "{path} with a wrong password");
            let (code, _, body) =
                http_get(srv.addr, path, &[("Authorization", &good)]).expect("GET");
            assert_eq!(code, 200, "{path} with credentials");
            if path == "/" {
                let page = String::from_utf8_lossy(&body);
                assert!(page.contains("<td>19380</td>"), "{page}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn landing_page_is_the_last_snapshot_not_a_fresh_read() {
    in_netns(|| {
        // One poll at start, the next in an hour: what `/` shows is that poll's.
        let srv = Server::start(19385, &["--poll.interval", "1h"]);
        let _late = std::net::TcpListener::bind("127.0.0.1:19386").expect("listener");
        for _ in 0..3 {
            let (code, _, body) = http_get(srv.addr, "/", &[]).expect("GET /");
            assert_eq!(code, 200);
            let page = String::from_utf8_lossy(&body);
            assert!(page.contains("<td>19385</td>"), "{page}");
            assert!(
                !page.contains("<td>19386</td>"),
                "/ read the kernel:\n{page}"
            );
        }
    });
}
