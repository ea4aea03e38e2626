//! The container image, for real: `scripts/build-image.sh` builds the static release binary,
//! the build context and the image (once per test run); the tests run the static binary
//! alone in an empty root, and the image under podman, each with the DaemonSet's flags and
//! mounts, and scrape it for a pod-like listener in a namespace of its own.
//!
//! Needs root (private network namespaces, mounts) and what scripts/install-test-deps.sh
//! installs (podman, runc, python3, util-linux).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::package::*;
use common::*;

struct Image {
    /// `target/image/context`: every file the image holds, as the Containerfile copies them.
    context: PathBuf,
    /// The tag scripts/build-image.sh built.
    tag: String,
}

/// `scripts/build-image.sh`: the static release binary, the context, the image. Once.
fn image() -> &'static Image {
    static I: OnceLock<Image> = OnceLock::new();
    I.get_or_init(|| {
        let out = run(Command::new("bash")
            .arg(repo().join("scripts/build-image.sh"))
            .current_dir(repo()));
        let t = text(&out);
        assert!(out.status.success(), "build-image.sh failed:\n{t}");
        let find = |what: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix(&format!("build-image: {what} ")))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| panic!("build-image.sh named no {what}:\n{t}"))
        };
        let tag = find("image");
        assert_eq!(tag, format!("bindwatch:{}", env!("CARGO_PKG_VERSION")));
        assert!(repo().join(find("archive")).is_file());
        Image {
            context: repo().join(find("context")),
            tag,
        }
    })
}

/// The DaemonSet's container: (args, volume mounts as (mountPath, hostPath or configMap)).
fn daemonset_container() -> (Vec<String>, Vec<(String, String)>) {
    let y = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&y).expect("daemonset.yaml");
    let pod = &docs[0]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args = c["args"]
        .as_vec()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg").to_string())
        .collect();
    let volumes = pod["volumes"].as_vec().expect("volumes");
    let mounts = c["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().expect("mount name");
            let v = volumes
                .iter()
                .find(|v| v["name"].as_str() == Some(name))
                .expect("volume of mount");
            let source = v["hostPath"]["path"]
                .as_str()
                .map(|p| format!("host:{p}"))
                .or_else(|| {
                    v["configMap"]["name"]
                        .as_str()
                        .map(|n| format!("configMap:{n}"))
                })
                .expect("hostPath or configMap");
            (
                m["mountPath"].as_str().expect("mountPath").to_string(),
                source,
            )
        })
        .collect();
    (args, mounts)
}

/// Where a test run takes each DaemonSet volume from: the host's /proc, the fixture root's
/// passwd for the host's (it names uid 4242), the ConfigMap's bindwatch.yml, and a private
/// directory for the node's /run/bindwatch.
fn volume_sources(
    dir: &std::path::Path,
    mounts: &[(String, String)],
) -> Vec<(PathBuf, String, bool)> {
    mounts
        .iter()
        .map(|(path, source)| {
            let (src, ro) = match source.as_str() {
                "host:/proc" => (PathBuf::from("/proc"), true),
                "host:/etc/passwd" => (repo().join("tests/fixtures/rootfs/etc/passwd"), true),
                "host:/run/bindwatch" => {
                    let d = dir.join("state");
                    std::fs::create_dir_all(&d).unwrap();
                    (d, false)
                }
                "configMap:bindwatch-config" => {
                    let cm =
                        std::fs::read_to_string(repo().join("deploy/kubernetes/configmap.yaml"))
                            .unwrap();
                    let docs = yaml_rust2::YamlLoader::load_from_str(&cm).expect("configmap.yaml");
                    let d = dir.join("config");
                    std::fs::create_dir_all(&d).unwrap();
                    let yml = docs[0]["data"]["bindwatch.yml"]
                        .as_str()
                        .expect("bindwatch.yml");
                    std::fs::write(d.join("bindwatch.yml"), yml).unwrap();
                    (d, true)
                }
                other => panic!("the test does not know the DaemonSet volume {other} at {path}"),
            };
            (src, path.clone(), ro)
        })
        .collect()
}

/// A process of uid 4242 listening on 0.0.0.0:`port` in a network namespace of its own
/// (as a pod's container would), killed on drop.
struct PodListener(std::process::Child);

impl Drop for PodListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod_listener(port: u16) -> PodListener {
    use std::io::BufRead;
    let script = format!(
        "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', {port}))\n\
         s.listen(8)\nprint('ready', flush=True)\ntime.sleep(300)\n"
    );
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "setpriv",
            "--reuid",
            "4242",
            "--regid",
            "4242",
            "--clear-groups",
        ])
        .args(["/usr/bin/python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the pod-like listener");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert_eq!(line.trim(), "ready");
    PodListener(child)
}

/// Scrapes 127.0.0.1:10033 (the DaemonSet's port) until the pod-like listener on `port`
/// shows up in its own namespace, owned by uid 4242 named through --path.rootfs.
fn scrape_sees_pod_listener(port: u16, exited: &mut dyn FnMut() -> Option<String>) -> String {
    let addr = "127.0.0.1:10033".parse().unwrap();
    let port_s = format!("port=\"{port}\"");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok((200, _, body)) = http_get(addr, "/metrics", &[]) {
            last = String::from_utf8_lossy(&body).into_owned();
            let hit = last
                .lines()
                .find(|l| l.starts_with("bindwatch_listener_info{") && l.contains(&port_s));
            if let Some(l) = hit {
                if l.contains("user=\"rootfs-fixture\"") {
                    assert!(!l.contains("netns=\"host\""), "{l}");
                    assert!(l.contains("netns=\""), "{l}");
                    return last;
                }
            }
        }
        if let Some(why) = exited() {
            panic!("bindwatch exited: {why}");
        }
        assert!(
            Instant::now() < deadline,
            "no scrape showed the listener on {port} with user rootfs-fixture in its own netns:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The static binary runs alone in an empty root: a directory holding only the image's
/// files (and the DaemonSet's mount points), entered with unshare + chroot, started with
/// the DaemonSet's flags and mounts, and scraped.
#[test]
fn static_binary_serves_from_an_empty_root_with_the_daemonset_flags() {
    let img = image();
    let dir = std::env::temp_dir().join(format!("bindwatch-emptyroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("root");
    // What the Containerfile copies, where it copies it.
    for (from, to) in [
        ("bindwatch", "usr/bin/bindwatch"),
        ("copyright", "usr/share/doc/bindwatch/copyright"),
    ] {
        let dst = root.join(to);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(img.context.join(from), &dst).unwrap();
    }
    let context_files: BTreeSet<String> = std::fs::read_dir(&img.context)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        context_files,
        BTreeSet::from(["bindwatch".into(), "copyright".into()])
    );
    let (args, mounts) = daemonset_container();
    let mut sh = String::new();
    for (src, path, ro) in volume_sources(&dir, &mounts) {
        let target = root.join(path.trim_start_matches('/'));
        if src.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, "").unwrap();
        }
        sh.push_str(&format!(
            "mount --bind '{}' '{}' && ",
            src.display(),
            target.display()
        ));
        if ro {
            sh.push_str(&format!(
                "mount -o remount,bind,ro '{}' && ",
                target.display()
            ));
        }
    }
    // /proc, as every container runtime mounts it (bindwatch's own process_* metrics read
    // /proc/self); the host's processes are read under /host/proc as in the DaemonSet.
    std::fs::create_dir_all(root.join("proc")).unwrap();
    sh.push_str(&format!("mount -t proc proc '{}/proc' && ", root.display()));
    sh.push_str(&format!(
        "exec chroot '{}' /usr/bin/bindwatch",
        root.display()
    ));
    for a in &args {
        sh.push_str(&format!(" '{a}'"));
    }
    in_netns(move || {
        let _pod = pod_listener(18821);
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &sh])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare + chroot");
        let mut exited = || child.try_wait().ok().flatten().map(|st| st.to_string());
        let body = scrape_sees_pod_listener(18821, &mut exited);
        assert!(body.contains("bindwatch_build_info{"), "{body}");
        let _ = child.kill();
        let _ = child.wait();
    });
    let _ = std::fs::remove_dir_all(dir);
}

/// A podman container removed on drop (also when the test fails).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "2", &self.0])
            .output();
    }
}

/// The image, run by podman with the DaemonSet's flags, mounts, capabilities and read-only
/// root, serves metrics that see a pod-like namespace with --netns=all.
#[test]
fn image_runs_with_the_daemonset_flags_and_serves_metrics() {
    let img = image();
    let dir = std::env::temp_dir().join(format!("bindwatch-podman-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (args, mounts) = daemonset_container();
    let y = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&y).unwrap();
    let sc = &docs[0]["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_vec()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    let name = format!("bindwatch-test-{}", std::process::id());
    let mut podman: Vec<String> = [
        // crun refuses this machine's cgroup layout and rlimits (docs/deploy.md); runc runs.
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--name",
        &name,
        // hostNetwork: here the test's private namespace; hostPID
        "--network",
        "host",
        "--pid",
        "host",
        "--read-only",
        "--security-opt",
        "no-new-privileges",
        "--cap-drop",
        "ALL",
        "--ulimit",
        "nofile=1024:20000",
        "--ulimit",
        "nproc=1024:1024",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    podman.push("--cap-add".into());
    podman.push(caps.join(","));
    for (src, path, ro) in volume_sources(&dir, &mounts) {
        podman.push("-v".into());
        podman.push(format!(
            "{}:{}{}",
            src.display(),
            path,
            if ro { ":ro" } else { "" }
        ));
    }
    podman.push(img.tag.clone());
    podman.extend(args);
    in_netns(move || {
        let _pod = pod_listener(18822);
        let _container = Container(name);
        let mut child = Command::new("podman")
            .args(&podman)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podman run");
        let mut exited = || {
            child.try_wait().ok().flatten().map(|st| {
                let mut err = String::new();
                if let Some(e) = child.stderr.as_mut() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                format!("podman run {st}: {err}")
            })
        };
        let body = scrape_sees_pod_listener(18822, &mut exited);
        assert!(body.contains("bindwatch_build_info{"), "{body}");
        drop(_container);
        let _ = child.wait();
    });
    let _ = std::fs::remove_dir_all(dir);
}
