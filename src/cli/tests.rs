use super::*;
use clap::CommandFactory;

#[test]
fn telemetry_path_is_none_of_the_own_routes() {
    for ok in ["/metrics", "/x/metrics", "/healthz/x", "/-/metrics"] {
        assert_eq!(parse_telemetry_path(ok).as_deref(), Ok(ok));
    }
    for bad in [
        "/",
        "/healthz",
        "/failures",
        "/-/reload",
        "metrics",
        "/m?x=1",
        "/m#a",
        "/m x",
    ] {
        assert!(parse_telemetry_path(bad).is_err(), "{bad:?} accepted");
    }
    let e = Cli::try_parse_from(["bindwatch", "serve", "--web.telemetry-path", "/-/reload"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--web.telemetry-path") && e.contains("own paths"),
        "{e}"
    );
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn durations() {
    let ok = [
        ("5s", 5_000),
        ("500ms", 500),
        ("1m30s", 90_000),
        ("2h", 7_200_000),
    ];
    for (s, ms) in ok {
        assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
    }
    for s in ["", "5", "s", "5x", "-1s", "0s", "1.5s"] {
        assert!(parse_duration(s).is_err(), "{s:?} should be rejected");
    }
}

#[test]
fn absurd_durations_are_usage_errors_naming_the_flag() {
    let huge = "18446744073709551615s";
    for args in [
        vec!["bindwatch", "wait", "1", "--timeout", huge],
        vec!["bindwatch", "wait", "1", "--poll.interval", huge],
        vec!["bindwatch", "serve", "--poll.interval", huge],
        vec!["bindwatch", "--poll.interval", "1ms"],
        vec!["bindwatch", "serve", "--web.read-header-timeout", huge],
        vec!["bindwatch", "serve", "--rebind.remember", "9999h"],
    ] {
        let flag = args[args.len() - 2];
        let e = Cli::try_parse_from(&args).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{args:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(flag) && msg.contains("out of range"),
            "{args:?}: {msg}"
        );
    }
    // The bounds themselves are accepted.
    for (flag, v) in [
        ("--poll.interval", "10ms"),
        ("--poll.interval", "1h"),
        ("--web.read-header-timeout", "10m"),
        ("--web.write-timeout", "10m"),
        ("--rebind.remember", "168h"),
    ] {
        assert!(
            Cli::try_parse_from(["bindwatch", flag, v]).is_ok(),
            "{flag} {v}"
        );
    }
    assert_eq!(humanize(bounds::REMEMBER.1), "168h");
    assert_eq!(humanize(bounds::POLL_INTERVAL.0), "10ms");
}

#[test]
fn bare_invocation_is_serve_with_defaults() {
    let c = Cli::try_parse_from(["bindwatch"]).unwrap();
    assert!(c.command.is_none());
    assert_eq!(c.serve.listen_address, [":10033"]);
    assert!(!c.serve.systemd_socket && !c.serve.disable_exporter_metrics);
    assert_eq!(c.serve.log_format, LogFormat::Logfmt);
    let c = Cli::try_parse_from([
        "bindwatch",
        "--web.listen-address",
        "127.0.0.1:1",
        "--web.listen-address",
        "[::1]:2",
        "--log.format",
        "json",
    ])
    .unwrap();
    assert_eq!(c.serve.listen_address, ["127.0.0.1:1", "[::1]:2"]);
    assert_eq!(c.serve.log_format, LogFormat::Json);
    assert_eq!(c.serve.poll_interval, Duration::from_secs(5));
    assert_eq!(c.serve.source.procfs, PathBuf::from("/proc"));
}

#[test]
fn check_defaults_and_errors_name_the_flag() {
    let c = Cli::try_parse_from(["bindwatch", "check", "8080"]).unwrap();
    let Some(Command::Check(a)) = c.command else {
        panic!("not check")
    };
    assert_eq!(a.socket.protocol, Protocol::Tcp);
    assert_eq!(a.socket.address.to_string(), "0.0.0.0");
    assert!(!a.socket.reuseaddr);
    for (args, flag) in [
        (vec!["bindwatch", "check", "70000"], "PORT"),
        (vec!["bindwatch", "check", "unix:"], "needs a path"),
        (vec!["bindwatch", "check", "unix:@"], "needs a name"),
        (vec!["bindwatch", "check", "unix:a.sock"], "absolute"),
        (
            vec!["bindwatch", "check", "unix:/a", "--type", "raw"],
            "--type",
        ),
        (
            vec!["bindwatch", "check", "80", "--protocol", "sctp"],
            "--protocol",
        ),
        (
            vec!["bindwatch", "check", "80", "--address", "localhost"],
            "--address",
        ),
        (
            vec!["bindwatch", "--poll.interval", "fast"],
            "--poll.interval",
        ),
        (
            vec!["bindwatch", "wait", "80", "--timeout", "0s"],
            "--timeout",
        ),
        (
            vec!["bindwatch", "check", "80", "--restart", "--reuseaddr"],
            "--reuseaddr",
        ),
        (
            vec![
                "bindwatch",
                "--web.systemd-socket",
                "--web.listen-address",
                ":1",
            ],
            "--web.systemd-socket",
        ),
        (vec!["bindwatch", "--log.format", "text"], "--log.format"),
    ] {
        let e = Cli::try_parse_from(&args).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains(flag), "{args:?}: {e}");
    }
}
