//! Hostile files and flags (issue 15, part A): what an attacker can plant or a careless
//! operator can pass must give a clear error or a skipped entry, never a panic, a hang,
//! an overwritten file or an exhausted memory. Every situation is built for real: real
//! symlinks, FIFOs, /dev/zero, big files, the real binary.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::*;

/// A scratch directory of this test process, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d =
            std::env::temp_dir().join(format!("bindwatch-hostile-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("mkdir scratch");
        Scratch(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn str(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf8 path").to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Inode of the calling thread's network namespace: what bindwatch, started from
/// this thread, writes into and expects in the state file.
fn netns_inode() -> u64 {
    fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

fn state_entry(port: u16, last_seen: &str) -> String {
    format!(
        r#"{{"protocol":"tcp","address":"0.0.0.0","port":{port},"v6only":null,"reuseaddr":false,"reuseport":false,"uid":0,"ifindex":null,"process":"old","user":"root","last_seen":{last_seen}}}"#
    )
}

/// Bug 2: a `last_seen` too big for a `Duration` panicked `check`, `wait` and `serve`
/// (exit 101; under systemd a crash loop on one bad file). Now the entry is skipped with
/// one warning and the good entry next to it is still used.
#[test]
fn huge_last_seen_is_skipped_not_a_panic() {
    in_netns(|| {
        let dir = Scratch::new("last-seen");
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

/// Bug 3: absurd durations panicked (exit 101) or, for the header timeout, made every
/// connection panic in a worker. Each duration flag is bounded: exit 2 naming the flag.
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
/// stderr in a file; killed on drop.
struct ShAgent {
    child: std::process::Child,
    log: PathBuf,
}

impl ShAgent {
    fn spawn(script: &str, log: PathBuf) -> ShAgent {
        let child = std::process::Command::new("sh")
            .args(["-c", script])
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn sh");
        ShAgent { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ShAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bug 1: the temporary state file was `state.tmp.<pid>`, opened with O_CREAT|O_TRUNC:
/// a symlink planted under that name made root overwrite its target. Now the temporary
/// name is unpredictable and created exclusively without following links; the state
/// file is 0644 even under umask 077.
#[test]
fn planted_temp_symlink_is_not_followed() {
    in_netns(|| {
        let dir = Scratch::new("symlink");
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
        let agent = ShAgent::spawn(&script, dir.path("log"));
        assert!(
            eventually(std::time::Duration::from_secs(20), || state.exists()),
            "no state file written: {}",
            agent.log()
        );
        // Let it rewrite a few times (every change of listeners, at least every 30 s).
        let _l = tcp_listener("127.0.0.1:18221".parse().expect("addr"), false, false, None)
            .expect("listener");
        std::thread::sleep(std::time::Duration::from_millis(800));
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
        let dir = Scratch::new("worldw");
        let sd = dir.path("state");
        fs::create_dir(&sd).expect("mkdir");
        fs::set_permissions(&sd, fs::Permissions::from_mode(0o777)).expect("chmod");
        let state = sd.join("state.json");
        let script = format!(
            "exec {b} serve --web.listen-address 127.0.0.1:18222 --state.file {st} --poll.interval 200ms --poll.cpu-budget 0",
            b = bin().display(),
            st = state.display(),
        );
        let mut agent = ShAgent::spawn(&script, dir.path("log"));
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
