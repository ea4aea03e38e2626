//! Thin entry point: parse the command line, set up logging, run the command
//! ([`bindwatch::serve`] for the agent, [`bindwatch::commands`] for the one-shot ones),
//! map errors to exit codes (2 for usage and runtime errors, as `check` documents).

use std::process::ExitCode;

use clap::Parser;

use bindwatch::cli::{Cli, Command, LogFormat, ServeArgs, SocketArgs, Target};
use bindwatch::{commands, unixcmd};

fn init_logging(level: &str) {
    bindwatch::logging::init(level, LogFormat::Logfmt);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(a)) => serve(a),
        Some(Command::Check(a)) => {
            init_logging("warn");
            enter_netns(&a.socket.netns, &a.socket.source).unwrap_or_else(|| {
                match &a.socket.target {
                    Target::Unix(t) => unixcmd::check(&a.socket, t),
                    Target::Port(_) => {
                        no_type(&a.socket).unwrap_or_else(|| commands::check(&a.socket))
                    }
                }
            })
        }
        Some(Command::Wait(a)) => {
            match a.clear_after {
                Some(_) => init_clear_logging(),
                None => init_logging("warn"),
            }
            enter_netns(&a.socket.netns, &a.socket.source).unwrap_or_else(|| {
                match (&a.socket.target, a.clear_after) {
                    (Target::Unix(t), None) => unixcmd::wait(&a, t),
                    (Target::Unix(_), Some(_)) => {
                        eprintln!(
                            "bindwatch wait: --clear-after is for ports; a stale unix socket \
                             file is removed by hand once `check` says it is safe"
                        );
                        2
                    }
                    (Target::Port(_), Some(_)) => {
                        no_type(&a.socket).unwrap_or_else(|| bindwatch::clear::wait_then_clear(&a))
                    }
                    (Target::Port(_), None) => {
                        no_type(&a.socket).unwrap_or_else(|| commands::wait(&a))
                    }
                }
            })
        }
        Some(Command::Clear(a)) => {
            init_clear_logging();
            enter_netns(&a.options.netns, &a.options.source)
                .unwrap_or_else(|| bindwatch::clear::run(&a))
        }
        Some(Command::Ports(a)) => {
            init_logging("warn");
            enter_netns(&a.netns, &a.source).unwrap_or_else(|| {
                if a.unix {
                    unixcmd::ports(&a)
                } else {
                    commands::ports(&a)
                }
            })
        }
        Some(Command::Generate(a)) => bindwatch::generate::run(&a.what),
        Some(Command::Failures(a)) => {
            init_logging("warn");
            bindwatch::events::client::failures(&a)
        }
    };
    ExitCode::from(code as u8)
}

/// `clear` logs each socket it destroys (info) and otherwise only warnings, as
/// the other one-shot commands do.
fn init_clear_logging() {
    init_logging("warn,bindwatch::clear=info");
}

/// `--type` is for unix: addresses; with a port it is a usage error (exit 2).
fn no_type(a: &SocketArgs) -> Option<i32> {
    a.unix_type?;
    eprintln!("bindwatch: --type is for unix: addresses; a port's protocol is --protocol");
    Some(2)
}

/// `--netns NAME` of the one-shot commands: move this (still single-threaded)
/// process into that namespace. `Some(2)` when it cannot.
fn enter_netns(netns: &Option<String>, src: &bindwatch::cli::SourceArgs) -> Option<i32> {
    let name = netns.as_deref()?;
    // A path (`/run/netns/NAME`, `/proc/PID/ns/net`, a bind mount elsewhere) is
    // entered as it is; setns refuses a file that is not a network namespace.
    if name.starts_with('/') {
        return match bindwatch::netns::enter_for_good(std::path::Path::new(name)) {
            Ok(()) => None,
            Err(e) => {
                eprintln!("bindwatch: --netns {name:?}: cannot enter it: {e}");
                Some(2)
            }
        };
    }
    let all = bindwatch::netns::discover(&src.procfs, std::path::Path::new("/run/netns"));
    let Some(ns) = bindwatch::netns::find(&all, name) else {
        let known: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
        eprintln!(
            "bindwatch: --netns {name:?}: no such network namespace (known: {})",
            known.join(", ")
        );
        return Some(2);
    };
    if let Err(e) = bindwatch::netns::enter_for_good(&ns.path) {
        eprintln!(
            "bindwatch: --netns {name:?}: cannot enter {}: {e}",
            ns.path.display()
        );
        return Some(2);
    }
    None
}

fn serve(a: ServeArgs) -> i32 {
    bindwatch::logging::init(&a.log_level, a.log_format);
    match bindwatch::serve::run(a) {
        Ok(()) => 0,
        Err(e) => {
            // Once, as plain text on stderr: a config error lists one problem per line,
            // which a logfmt/JSON log line would escape into one. (It was also logged,
            // so every start-up error showed twice.)
            eprintln!("bindwatch: {e:#}");
            2
        }
    }
}
