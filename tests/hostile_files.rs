//! Hostile files and flags: what an attacker can plant or a careless
//! operator can pass must give a clear error or a skipped entry, never a panic, a hang,
//! an overwritten file or an exhausted memory. Every situation is built for real: real
//! symlinks, FIFOs, /dev/zero, big files, the real binary.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::*;

fn state_entry(port: u16, last_seen: &str) -> String {
    format!(
        r#"{{"protocol":"tcp","address":"0.0.0.0","port":{port},"v6only":null,"reuseaddr":false,"reuseport":false,"uid":0,"ifindex":null,"process":"old","user":"root","last_seen":{last_seen}}}"#
    )
}

/// A `last_seen` too big for a `Duration` must not panic `check`, `wait` or `serve`
/// (under systemd that is a crash loop on one bad file): the entry is skipped with one
/// warning and the good entry next to it is still used.
#[test]
fn huge_last_seen_is_skipped_not_a_panic() {
    in_netns(|| {
        let dir = Scratch::new("hostile-last-seen");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let text = format!(
            r#"{{"netns":{},"listeners":[{},{},{}]}}"#,
            netns_inode(),
            state_entry(18211, "1e300"),
            state_entry(18212, "18446744073709551616"),
            state_entry(18213, &now.to_string()),
        );
        fs::write(dir.path("state.json"), text).expect("write state");
        let state = dir.str("state.json");
        for args in [
            vec!["check", "18211", "--state.file", &state],
            vec!["wait", "18211", "--timeout", "1s", "--state.file", &state],
        ] {
            let (code, out, err) = bindwatch(&args);
            assert_eq!(code, 0, "{args:?}: {out}{err}");
            assert!(
                err.contains("skipped bad entries") && err.contains("last_seen"),
                "one warning naming the field: {err}"
            );
            assert_eq!(err.matches("skipped bad entries").count(), 1, "{err}");
        }
        // serve restores its memory from the file at start (where it panicked): it
        // must start, answer a scrape and stay up.
        let mut srv = Server::start(18210, &["--state.file", &state, "--poll.interval", "200ms"]);
        srv.metrics();
        assert!(
            matches!(srv.child.try_wait(), Ok(None)),
            "serve still running"
        );
    });
}

/// Absurd durations must not panic the agent (or, for the header timeout, every
/// connection's worker). Each duration flag is bounded: exit 2 naming the flag.
#[test]
fn absurd_durations_are_usage_errors() {
    let huge = "18446744073709551615s";
    for args in [
        vec!["wait", "1", "--timeout", huge, "--state.file="],
        vec!["wait", "1", "--poll.interval", huge, "--state.file="],
        vec!["serve", "--poll.interval", huge, "--state.file="],
        vec!["serve", "--web.read-header-timeout", huge, "--state.file="],
        vec!["serve", "--rebind.remember", huge, "--state.file="],
    ] {
        let flag = args[args.len() - 3];
        let (code, out, err) = bindwatch(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains(flag) && err.contains("out of range"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `bindwatch serve` started by `sh -c SCRIPT` (which execs into it, keeping its pid),
/// stderr in `log`; killed on drop.
fn sh_agent(script: &str, log: PathBuf) -> Logged {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", script]);
    Logged::spawn(cmd, log)
}

/// A predictable temporary name opened with O_CREAT|O_TRUNC would let a symlink planted
/// under that name make root overwrite its target: the temporary name is unpredictable
/// and created exclusively without following links; the state file is 0644 even under
/// umask 077.
#[test]
fn planted_temp_symlink_is_not_followed() {
    in_netns(|| {
        let dir = Scratch::new("hostile-symlink");
        let victim = dir.path("victim");
        fs::write(&victim, "ORIG\n").expect("victim");
        let sd = dir.path("state");
        fs::create_dir(&sd).expect("mkdir");
        let state = sd.join("state.json");
        // As in the issue: the shell plants the link for its own pid, then execs into
        // bindwatch, which keeps that pid.
        let script = format!(
            "umask 077; ln -s {v} {sd}/state.tmp.$$; ln -s {v} {sd}/.state.json.tmp.$$; exec {b} serve --web.listen-address 127.0.0.1:18220 --state.file {st} --poll.interval 200ms --poll.cpu-budget 0",
            v = victim.display(),
            sd = sd.display(),
            b = bin().display(),
            st = state.display(),
        );
        let agent = sh_agent(&script, dir.path("log"));
        assert!(
            eventually(std::time::Duration::from_secs(20), || state.exists()),
            "no state file written: {}",
            agent.log()
        );
        // A change of listeners makes it write again: wait for that rewrite.
        let _l = tcp_listener("127.0.0.1:18221".parse().expect("addr"), false, false, None)
            .expect("listener");
        assert!(
            eventually(std::time::Duration::from_secs(20), || {
                fs::read_to_string(&state).is_ok_and(|t| t.contains("\"port\":18221"))
            }),
            "the state file was not rewritten with the new listener: {}",
            agent.log()
        );
        drop(agent);
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "ORIG\n");
        let meta = fs::symlink_metadata(&state).expect("state");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o7777, 0o644, "0644 whatever the umask");
        let text = fs::read_to_string(&state).expect("read state");
        assert!(text.contains("\"listeners\""), "{text}");
        let mut left: Vec<String> = fs::read_dir(&sd)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left.len(),
            3,
            "only state.json and the two planted links: {left:?}"
        );
    });
}

/// A state directory other users can write to (no sticky bit) is refused: they could
/// rename their own file over the agent's. The agent says so and keeps serving.
#[test]
fn world_writable_state_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    in_netns(|| {
        let dir = Scratch::new("hostile-worldw");
        let sd = dir.path("state");
        fs::create_dir(&sd).expect("mkdir");
        fs::set_permissions(&sd, fs::Permissions::from_mode(0o777)).expect("chmod");
        let state = sd.join("state.json");
        let script = format!(
            "exec {b} serve --web.listen-address 127.0.0.1:18222 --state.file {st} --poll.interval 200ms --poll.cpu-budget 0",
            b = bin().display(),
            st = state.display(),
        );
        let mut agent = sh_agent(&script, dir.path("log"));
        assert!(
            eventually(std::time::Duration::from_secs(20), || agent
                .log()
                .contains("refusing the directory")),
            "{}",
            agent.log()
        );
        assert!(
            agent.log().contains("without the sticky bit"),
            "{}",
            agent.log()
        );
        assert!(!state.exists());
        assert!(matches!(agent.child.try_wait(), Ok(None)), "still serving");
    });
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().expect("utf8")).expect("no NUL");
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Heap bindwatch may use in [`run_bounded`] (RLIMIT_DATA): a one-shot command or a
/// refused start-up needs a few MiB; reading a 50 MB config whole took 937 MB.
const DATA_LIMIT: u64 = 128 << 20;

/// Runs bindwatch with `args` under [`DATA_LIMIT`], killed after `limit` (a hang is a
/// test failure, not a stuck suite): (exit code or -1 for a signal, stderr).
///
/// Memory is bounded with RLIMIT_DATA rather than measured: `ru_maxrss` of a child
/// spawned with vfork includes the test process's own peak.
fn run_bounded(args: &[&str], limit: std::time::Duration) -> (i32, String) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(bin());
    // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: DATA_LIMIT,
                rlim_max: DATA_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bindwatch");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bindwatch {args:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let err = reader.join().expect("stderr reader");
    let code = status.code().unwrap_or(-1);
    (code, err)
}

const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A FIFO at `--state.file` must not hang `check` and `wait` (the ExecStartPre= path):
/// it is refused as not a regular file, with a warning naming it, and the command
/// answers.
#[test]
fn fifo_state_file_does_not_hang_check_or_wait() {
    in_netns(|| {
        let dir = Scratch::new("hostile-fifo-state");
        mkfifo(&dir.path("state.json"));
        let state = dir.str("state.json");
        for args in [
            vec!["check", "18230", "--state.file", &state],
            vec!["wait", "18230", "--timeout", "2s", "--state.file", &state],
        ] {
            let (code, err) = run_bounded(&args, LIMIT);
            assert_eq!(code, 0, "{args:?}: {err}");
            assert!(
                err.contains("FIFO") && err.contains(&state),
                "{args:?}: the warning names the file: {err}"
            );
        }
    });
}

/// `--config.file` (and `--web.config.file`) on a FIFO must not hang start-up, nor
/// /dev/zero be read until out of memory: both are exit 2 at once, naming the file.
#[test]
fn fifo_and_device_config_files_are_refused() {
    in_netns(|| {
        let dir = Scratch::new("hostile-fifo-config");
        mkfifo(&dir.path("cfg.yml"));
        let fifo = dir.str("cfg.yml");
        std::os::unix::fs::symlink("/dev/zero", dir.path("zero.yml")).expect("symlink");
        let zero = dir.str("zero.yml");
        for (args, what) in [
            (vec!["serve", "--config.file", &fifo], "FIFO"),
            (vec!["serve", "--web.config.file", &fifo], "FIFO"),
            (
                vec!["serve", "--config.file", "/dev/zero"],
                "character device",
            ),
            (vec!["serve", "--config.file", &zero], "character device"),
            (vec!["check", "80", "--config.file", &fifo], "FIFO"),
            (
                vec!["ports", "--config.file", "/dev/zero"],
                "character device",
            ),
        ] {
            let mut full = args.clone();
            full.extend_from_slice(&["--state.file=", "--web.listen-address", "127.0.0.1:18231"]);
            if args[0] != "serve" {
                full.truncate(full.len() - 2);
            }
            let (code, err) = run_bounded(&full, LIMIT);
            assert_eq!(code, 2, "{full:?}: {err}");
            assert!(
                err.contains(what) && err.contains(args[args.len() - 1]),
                "{full:?}: {err}"
            );
            assert!(!err.contains(":0:"), "no fake line 0: {err}");
        }
    });
}

/// A 50 MB config is refused by its size before it is read (reading it whole would
/// take about 20 times that in memory): exit 2 naming the file and the limit.
#[test]
fn huge_config_is_refused_in_bounded_memory() {
    use std::io::Write;
    let dir = Scratch::new("hostile-big-config");
    let path = dir.path("big.yml");
    let mut f = std::io::BufWriter::new(fs::File::create(&path).expect("create"));
    f.write_all(b"services:\n").expect("write");
    let mut i = 0u32;
    while f.get_ref().metadata().expect("stat").len() < 50_000_000 {
        for _ in 0..1000 {
            writeln!(f, "  - name: s{i}\n    port: {}", 1 + i % 65535).expect("write");
            i += 1;
        }
        f.flush().expect("flush");
    }
    drop(f);
    let p = path.to_str().expect("utf8");
    for args in [
        vec!["check", "80", "--config.file", p, "--state.file="],
        vec![
            "serve",
            "--config.file",
            p,
            "--state.file=",
            "--web.listen-address",
            "127.0.0.1:0",
        ],
    ] {
        let (code, err) = run_bounded(&args, LIMIT);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(p) && err.contains("larger than the 1048576-byte limit"),
            "{args:?}: {err}"
        );
    }
}

/// A copy of the `odd` fixture procfs (two tcp listeners 8080 and 8081, udp 53) where a
/// test may plant FIFOs and odd lines.
fn fake_procfs(name: &str) -> Scratch {
    let s = Scratch::new(&format!("hostile-{name}"));
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/procfs/odd/net");
    fs::create_dir_all(s.path("net")).expect("mkdir net");
    for e in fs::read_dir(&src).expect("fixture") {
        let e = e.expect("entry");
        fs::copy(e.path(), s.path("net").join(e.file_name())).expect("copy");
    }
    s
}

fn procfs_server(port: u16, procfs: &Scratch) -> Server {
    Server::start(
        port,
        &[
            "--source",
            "procfs",
            "--path.procfs",
            procfs.0.to_str().expect("utf8"),
            "--poll.interval",
            "200ms",
        ],
    )
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Fake procfs: a FIFO at net/udp must not hang the poller (open blocks without a
/// writer): each poll fails on it, counted and logged, and the poller goes on.
#[test]
fn fifo_in_fake_procfs_does_not_hang_the_poller() {
    in_netns(|| {
        let procfs = fake_procfs("procfs-fifo");
        let udp = procfs.path("net/udp");
        fs::remove_file(&udp).expect("rm udp");
        mkfifo(&udp);
        // Not Server::start: /healthz is 503 while every poll fails, as it should be.
        let script = format!(
            "exec {b} serve --web.listen-address 127.0.0.1:18232 --state.file= --source procfs --path.procfs {p} --poll.interval 200ms --poll.cpu-budget 0",
            b = bin().display(),
            p = procfs.0.display(),
        );
        let agent = sh_agent(&script, procfs.path("log"));
        let addr = "127.0.0.1:18232".parse().expect("addr");
        let errors = || {
            http_get(addr, "/metrics", &[])
                .ok()
                .filter(|(code, _, _)| *code == 200)
                .and_then(|(_, _, body)| {
                    Metrics::parse(&String::from_utf8_lossy(&body))
                        .get("bindwatch_poll_errors_total", &[("source", "procfs")])
                })
        };
        assert!(
            eventually(std::time::Duration::from_secs(20), || errors()
                .is_some_and(|n| n >= 3.0)),
            "polls go on failing, not hanging: {:?} {}",
            errors(),
            agent.log()
        );
        let log = agent.log();
        assert!(log.contains("net/udp") && log.contains("FIFO"), "{log}");
    });
}

/// Fake procfs: one line of 64 MiB (an "endless" line) must not be read whole into
/// memory, nor one invalid UTF-8 line cost the whole table. Each costs only its line:
/// the other listeners are reported, the bad lines counted, memory stays small.
#[test]
fn endless_and_non_utf8_lines_in_fake_procfs_cost_only_themselves() {
    in_netns(|| {
        let procfs = fake_procfs("procfs-lines");
        let tcp = procfs.path("net/tcp");
        let text = fs::read(&tcp).expect("tcp");
        let mut lines: Vec<Vec<u8>> = text
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        // After the header and the 8080 listener: an endless line, then a non-UTF-8 one.
        lines.insert(2, [vec![b'7'; 64 << 20], b"\n".to_vec()].concat());
        lines.insert(
            3,
            b"   9: 0100007F:1F99 \xff\xfe\xfd 0A 00000000:00000000\n".to_vec(),
        );
        fs::write(&tcp, lines.concat()).expect("write tcp");
        let srv = procfs_server(18233, &procfs);
        let m = srv.metrics_until(std::time::Duration::from_secs(20), |m| {
            m.get("bindwatch_procfs_malformed_lines_total", &[])
                .unwrap_or(0.0)
                >= 3.0
        });
        for port in ["8080", "8081"] {
            assert_eq!(
                m.matching(
                    "bindwatch_listener_info",
                    &[("port", port), ("protocol", "tcp")]
                )
                .len(),
                1,
                "listener {port} still read: {}",
                m.text
            );
        }
        assert!(
            m.get("bindwatch_procfs_malformed_lines_total", &[])
                .unwrap_or(0.0)
                >= 3.0,
            "{}",
            m.text
        );
        let hwm = vm_hwm_kib(srv.pid());
        assert!(
            hwm < 60 * 1024,
            "peak RSS {hwm} KiB: the 64 MiB line was held in memory"
        );
    });
}

/// Weak spot: an empty or whitespace-only `--config.file` on reload was accepted and
/// dropped every watched service; a second YAML document was silently ignored. Both
/// are refused now: the old services stay, bindwatch_config_last_reload_successful 0.
#[test]
fn empty_or_two_document_config_on_reload_keeps_the_old_one() {
    in_netns(|| {
        let dir = Scratch::new("hostile-reload");
        let cfg = dir.path("cfg.yml");
        let good = "services:\n  - name: kept\n    port: 18241\n";
        fs::write(&cfg, good).expect("write");
        let srv = Server::start(
            18240,
            &[
                "--config.file",
                &dir.str("cfg.yml"),
                "--poll.interval",
                "200ms",
            ],
        );
        let kept = |m: &Metrics| {
            m.matching("bindwatch_watched_port_status", &[("name", "kept")])
                .len()
                == 5
        };
        assert!(kept(
            &srv.metrics_until(std::time::Duration::from_secs(10), kept)
        ));
        let reload_ok = |m: &Metrics| m.get("bindwatch_config_last_reload_successful", &[]);
        for bad in [
            "",
            "  \n\t\n",
            "# emptied by a bad deploy\n",
            "services: []\n---\nservices: []\n",
        ] {
            fs::write(&cfg, good).expect("write");
            // SAFETY: kill only signals our own child.
            assert_eq!(unsafe { libc::kill(srv.pid(), libc::SIGHUP) }, 0);
            let m = srv.metrics_until(std::time::Duration::from_secs(10), |m| {
                reload_ok(m) == Some(1.0)
            });
            assert_eq!(reload_ok(&m), Some(1.0), "{}", m.text);
            fs::write(&cfg, bad).expect("write");
            // SAFETY: as above.
            assert_eq!(unsafe { libc::kill(srv.pid(), libc::SIGHUP) }, 0);
            let m = srv.metrics_until(std::time::Duration::from_secs(10), |m| {
                reload_ok(m) == Some(0.0)
            });
            assert_eq!(reload_ok(&m), Some(0.0), "{bad:?} refused: {}", m.text);
            assert!(kept(&m), "{bad:?}: the old services stay: {}", m.text);
        }
    });
}

/// Weak spot: start-up errors were printed twice (a log line and again on stderr), and
/// an unreadable file showed a fake line `:0:`.
#[test]
fn start_up_error_is_printed_once_without_fake_line() {
    let (code, _, err) = bindwatch(&[
        "serve",
        "--config.file",
        "/nonexistent/bindwatch.yml",
        "--state.file=",
        "--web.listen-address",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err.matches("/nonexistent/bindwatch.yml: 1 problem").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("/nonexistent/bindwatch.yml: cannot read the file"),
        "{err}"
    );
    assert!(!err.contains(":0:"), "{err}");
}

/// Weak spot: the soft RLIMIT_NOFILE stayed at 1024 under systemd (which raises only
/// the hard limit). serve raises the soft limit to the hard one at start.
#[test]
fn soft_nofile_limit_is_raised_to_the_hard_limit() {
    in_netns(|| {
        let dir = Scratch::new("hostile-nofile");
        let script = format!(
            "exec prlimit --nofile=1024:4096 {b} serve --web.listen-address 127.0.0.1:18242 --state.file= --log.level debug",
            b = bin().display(),
        );
        let agent = sh_agent(&script, dir.path("log"));
        let pid = agent.child.id();
        let limits = || fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
        let open_files = || {
            limits()
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
        };
        assert!(
            eventually(std::time::Duration::from_secs(20), || {
                open_files().as_deref() == Some("4096 4096")
            }),
            "{:?} {}",
            open_files(),
            agent.log()
        );
        assert!(
            eventually(std::time::Duration::from_secs(5), || agent
                .log()
                .contains("raised the soft RLIMIT_NOFILE")),
            "{}",
            agent.log()
        );
    });
}
