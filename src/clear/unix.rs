//! `bindwatch clear unix:PATH`: removes a stale socket file, and nothing else.
//!
//! The judgement is `check unix:PATH`'s (`unixprobe::inspect_unix_path`): a socket
//! file that no socket of any network namespace read is bound to is *stale*, and only
//! then safe to remove. A file held by a live socket, a file of another type, a
//! symlink, or a path where bindwatch could not read every namespace is never
//! removed. With `--yes` the file is removed through the directory fd that is checked
//! right before (`unixprobe::unlink_stale`), and only while it is still the socket
//! file the judgement was about; then the path is judged again.

use serde_json::json;

use crate::cli::{ClearArgs, SocketArgs, Target};
use crate::model::UnixType;
use crate::unixbind::{PathState, UnixTarget};
use crate::unixcmd::{self, EXIT_ERROR};
use crate::unixprobe::{self, ProbeOptions, UnixPathReport};

/// What `--yes` did to the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// Nothing asked (`--yes` not given) or nothing to remove.
    Nothing,
    /// The stale file was removed.
    Removed,
    /// Not removed: the path is held, not a socket, or could not be judged.
    Refused,
    /// The file changed between the judgement and the removal; left alone.
    Changed,
}

fn why_kept(state: PathState) -> &'static str {
    match state {
        PathState::Held => "a live socket holds it: stop the process that holds it first",
        PathState::NotSocket(_) => {
            "it is not a socket file: bindwatch removes only stale socket files"
        }
        PathState::HolderUnknown => {
            "whether a socket holds it could not be told (a network namespace was not read)"
        }
        PathState::Unusable { .. } => "the directory cannot be used: removing nothing helps",
        PathState::Free | PathState::Stale => "",
    }
}

/// `bindwatch clear unix:PATH [--yes]`.
pub fn run(a: &ClearArgs, t: &UnixTarget) -> i32 {
    let path = match t {
        UnixTarget::Path(p) => p,
        UnixTarget::Abstract(_) => {
            eprintln!(
                "bindwatch clear: {}: an abstract name has no file to remove; it is free once \
                 the socket holding it closes (`check` names it)",
                t.display()
            );
            return EXIT_ERROR;
        }
    };
    let sa = SocketArgs {
        target: Target::Unix(t.clone()),
        options: a.options.clone(),
    };
    if let Err(e) = unixcmd::reject_ip_flags(&sa) {
        eprintln!("bindwatch clear: {e}");
        return EXIT_ERROR;
    }
    if a.force {
        eprintln!("bindwatch clear: --force is for FIN_WAIT1 orphans on a port; it has no meaning for a unix: path");
        return EXIT_ERROR;
    }
    let opts = ProbeOptions::new(&sa.source.procfs, &sa.source.rootfs);
    let before = match unixprobe::inspect_unix_path(path, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bindwatch clear: {e}");
            return EXIT_ERROR;
        }
    };
    let mut done = Done::Nothing;
    let mut after: Option<UnixPathReport> = None;
    if a.yes && before.judgement.state != PathState::Free {
        done = if !before.judgement.safe_to_remove {
            Done::Refused
        } else {
            match before
                .facts
                .map(|f| unixprobe::unlink_stale(&opts.rootfs, path, &f))
            {
                Some(Ok(true)) => {
                    tracing::info!(
                        target: "bindwatch::clear",
                        path = %path.display(),
                        state = "stale",
                        "removed stale socket file"
                    );
                    Done::Removed
                }
                Some(Ok(false)) | None => Done::Changed,
                Some(Err(e)) => {
                    eprintln!("bindwatch clear: removing {}: {e}", path.display());
                    return EXIT_ERROR;
                }
            }
        };
        after = match unixprobe::inspect_unix_path(path, &opts) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("bindwatch clear: judging again: {e}");
                return EXIT_ERROR;
            }
        };
    }
    let last = after.as_ref().unwrap_or(&before);
    if sa.json {
        println!("{}", json_report(&before, a.yes, done, after.as_ref()));
    } else {
        print!("{}", text_report(&before, a.yes, done, after.as_ref()));
    }
    unixcmd::exit_code(last)
}

fn text_report(
    before: &UnixPathReport,
    yes: bool,
    done: Done,
    after: Option<&UnixPathReport>,
) -> String {
    let mut out = unixcmd::check_text(before);
    let state = before.judgement.state;
    let plan = match (state, before.judgement.safe_to_remove) {
        (PathState::Free, _) => "nothing to clear".to_string(),
        (_, true) => "plan: REMOVE the stale socket file".to_string(),
        (s, false) => format!("plan: keep it: {}", why_kept(s)),
    };
    out.push_str(&format!("  {plan}\n"));
    if !yes {
        if state != PathState::Free {
            out.push_str("  nothing changed (give --yes to act)\n");
        }
        return out;
    }
    match done {
        Done::Removed => out.push_str("  removed the stale socket file\n"),
        Done::Refused => out.push_str("  not removed\n"),
        Done::Changed => out.push_str(
            "  not removed: the file changed after it was judged (a daemon may have bound it anew)\n",
        ),
        Done::Nothing => {}
    }
    if let Some(a) = after {
        out.push_str("after:\n");
        out.push_str(&unixcmd::check_text(a));
    }
    out
}

fn json_report(
    before: &UnixPathReport,
    yes: bool,
    done: Done,
    after: Option<&UnixPathReport>,
) -> serde_json::Value {
    let last = after.unwrap_or(before);
    json!({
        "target": before.target.display(),
        "yes": yes,
        "plan": {
            "judgement": unixcmd::check_json(before, UnixType::Stream),
            "remove": before.judgement.safe_to_remove,
            "why_kept": why_kept(before.judgement.state),
        },
        "result": {
            "removed": done == Done::Removed,
            "changed_meanwhile": done == Done::Changed,
            "after": after.map(|a| unixcmd::check_json(a, UnixType::Stream)),
        },
        "exit_code": unixcmd::exit_code(last),
    })
}
