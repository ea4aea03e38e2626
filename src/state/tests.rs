//! Tests of the state file: directory policy, round trips, bad numbers, old files, the writer's liveness.

use super::*;

#[test]
fn directory_policy() {
    let table = [
        (0o40755, 0, 0, true),
        (0o40700, 1000, 1000, true),
        (0o41777, 0, 0, true),     // /tmp: sticky
        (0o40777, 0, 0, false),    // world-writable, not sticky
        (0o40775, 0, 0, false),    // group-writable
        (0o40755, 1000, 0, false), // someone else's
        (0o40755, 0, 1000, true),  // root's, we are not root
    ];
    for (mode, owner, me, ok) in table {
        assert_eq!(
            dir_policy(mode, owner, me).is_ok(),
            ok,
            "{mode:o} {owner} {me}"
        );
    }
    assert!(dir_policy(0o40777, 0, 0).unwrap_err().contains("777"));
}

fn entry_json(port: &str, last_seen: &str) -> String {
    format!(
        r#"{{"protocol":"tcp","address":"127.0.0.1","port":{port},"v6only":null,"reuseaddr":true,"reuseport":null,"uid":0,"ifindex":null,"process":null,"user":null,"last_seen":{last_seen}}}"#
    )
}

#[test]
fn numbers_out_of_range_skip_their_entry_only() {
    let good = entry_json("8080", "1700000000.5");
    let table = [
        (entry_json("8081", "1e300"), "last_seen"),
        (entry_json("8082", "-5"), "last_seen"),
        (entry_json("8083", "18446744073709551615"), "last_seen"),
        (entry_json("70000", "1700000000"), "70000"),
        (entry_json("0", "1700000000"), "port 0"),
        (entry_json("-1", "1700000000"), "-1"),
        (entry_json("8084", "\"soon\""), "soon"),
        (
            r#"{"protocol":"sctp","address":"::","port":1,"uid":0,"last_seen":1}"#.to_string(),
            "sctp",
        ),
        (r#"[1,2]"#.to_string(), "listeners[1]"),
    ];
    for (bad, why) in table {
        let text = format!(r#"{{"netns":7,"listeners":[{good},{bad}]}}"#);
        let (state, skipped) = parse(text.as_bytes()).unwrap();
        assert_eq!(state.listeners.len(), 1, "{bad}");
        assert_eq!(state.listeners[0].port, 8080);
        let (n, first) = skipped.unwrap();
        assert_eq!(n, 1);
        assert!(
            first.contains(why) || first.contains("listeners[1]"),
            "{bad}: {first}"
        );
        // What must not panic: the age of every entry, as load() and the memory compute it.
        for e in &state.listeners {
            let _ = SystemTime::now().duration_since(e.seen_at());
        }
    }
    let huge = Entry {
        last_seen: 1e300,
        ..parse(format!(r#"{{"netns":7,"listeners":[{good}]}}"#).as_bytes())
            .unwrap()
            .0
            .listeners[0]
            .clone()
    };
    assert_eq!(
        huge.seen_at(),
        UNIX_EPOCH,
        "out of range reads as long forgotten"
    );
    assert!(parse(br#"{"netns":-1,"listeners":[]}"#).is_err());
    assert!(parse(br#"{"netns":1,"listeners":5}"#).is_err());
}

#[test]
fn round_trip_and_filters() {
    let s = Socket {
        protocol: Protocol::Tcp,
        state: State::Listen,
        local: "[::1]:8080".parse().unwrap(),
        remote: "[::]:0".parse().unwrap(),
        uid: 33,
        inode: 9,
        ifindex: Some(0),
        expires_ms: None,
        v6only: Tri::True,
        flags: SocketFlags {
            reuseaddr: Tri::False,
            reuseport: Tri::Unknown,
        },
        count: 1,
        cookie: 0,
    };
    let now = SystemTime::now();
    let old = now - Duration::from_secs(3600);
    let state = StateFile {
        netns: 42,
        writer: None,
        listeners: vec![
            Entry::from_socket(&s, None, now),
            Entry::from_socket(&s, None, old),
        ],
    };
    let path =
        std::env::temp_dir().join(format!("bindwatch-state-test-{}.json", std::process::id()));
    save(&path, &state).unwrap();
    let got = load(&path, Some(42), Duration::from_secs(600)).unwrap();
    assert_eq!(got.len(), 1, "the hour-old entry is too old");
    let back = got[0].to_socket().unwrap();
    assert_eq!(back.local, s.local);
    assert_eq!(back.flags, s.flags);
    assert_eq!(back.v6only, Tri::True);
    assert!(
        load(&path, Some(7), Duration::from_secs(600))
            .unwrap()
            .is_empty(),
        "other netns"
    );
    std::fs::write(&path, "{not json").unwrap();
    assert!(load(&path, Some(42), Duration::from_secs(600))
        .unwrap_err()
        .contains("bindwatch-state-test"));
    std::fs::remove_file(&path).unwrap();
    assert!(
        load(&path, Some(42), Duration::from_secs(600))
            .unwrap()
            .is_empty(),
        "missing file"
    );
}

#[test]
fn files_without_generations_or_writer_still_parse() {
    let old = r#"{"netns":1,"listeners":[{"protocol":"tcp","address":"127.0.0.1","port":80,
            "v6only":null,"reuseaddr":true,"reuseport":false,"uid":0,"ifindex":0,
            "process":null,"user":null,"last_seen":5.0}]}"#;
    let s: StateFile = serde_json::from_str(old).unwrap();
    assert_eq!(s.writer, None);
    assert_eq!(s.listeners[0].inode, 0);
    assert_eq!(s.listeners[0].gone_at, None);
}

#[test]
fn writer_liveness() {
    let w = Writer {
        pid: 7,
        start_time: 1234,
        poll_interval_seconds: 5.0,
        heartbeat: 1000.0,
    };
    use WriterStatus::*;
    let rows: &[(Option<&Writer>, f64, Option<u64>, WriterStatus)] = &[
        (Some(&w), 1004.0, Some(1234), Alive),
        (Some(&w), 1016.0, Some(1234), Alive),
        (
            Some(&w),
            1016.5,
            Some(1234),
            Late {
                pid: 7,
                age: 16.5,
                interval: 5.0,
            },
        ),
        (Some(&w), 1001.0, None, Gone { pid: 7 }),
        // The pid now belongs to a process started later: not the writer.
        (Some(&w), 1001.0, Some(9999), Gone { pid: 7 }),
        (None, 1001.0, Some(1234), Unknown),
    ];
    for (i, (w, now, start, want)) in rows.iter().enumerate() {
        assert_eq!(&writer_status(*w, *now, *start), want, "row {i}");
    }
    // A heartbeat that is no number, or far in the future, is no heartbeat.
    for heartbeat in [f64::NAN, 2000.0] {
        let forged = Writer {
            heartbeat,
            ..w.clone()
        };
        assert!(
            matches!(
                writer_status(Some(&forged), 1001.0, Some(1234)),
                Late { .. }
            ),
            "heartbeat {heartbeat}"
        );
    }
    assert!(Gone { pid: 7 }
        .reason(Path::new("/x/state.json"))
        .unwrap()
        .contains("/x/state.json"));
    assert_eq!(Alive.reason(Path::new("/x")), None);
}

#[test]
fn start_time_of_a_comm_with_spaces_and_parens() {
    let me = process_start_time(Path::new("/proc"), std::process::id());
    assert!(me.is_some_and(|t| t > 0), "this process has a start time");
}
