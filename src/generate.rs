//! `bindwatch generate man DIR | completions SHELL`: the man pages and shell completions,
//! rendered from the real clap definitions (`cli::Cli`) so they cannot drift from the flags.
//! Hidden from `--help`; scripts/build-deb.sh runs it to fill the package.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, Generate};

/// Runs one `generate` request; returns the exit status (2 on an I/O error, named).
pub fn run(what: &Generate) -> i32 {
    let r = match what {
        Generate::Man { dir } => man_pages(dir).map_err(|e| {
            format!(
                "bindwatch: generate man: writing into {}: {e}",
                dir.display()
            )
        }),
        Generate::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut completion_command(), "bindwatch", &mut out);
            std::io::stdout()
                .write_all(&out)
                .map_err(|e| format!("bindwatch: generate completions {shell}: stdout: {e}"))
        }
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// `Cli` without its hidden subcommands: clap_complete offers hidden subcommands too,
/// and nobody should be offered `generate` at a prompt.
fn completion_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("bindwatch")
        .version(env!("CARGO_PKG_VERSION"))
        .args_conflicts_with_subcommands(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// bindwatch.1 plus one page per visible subcommand (bindwatch-check.1, ...), each with
/// the version as its source and no date, so two builds of one version give equal pages.
fn man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let source = format!("bindwatch {}", env!("CARGO_PKG_VERSION"));
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for page in pages {
        clap_mangen::Man::new(page)
            .source(source.clone())
            .manual("User Commands")
            .generate_to(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_subcommand_and_flag() {
        let dir = std::env::temp_dir().join(format!("bindwatch-man-{}", std::process::id()));
        man_pages(&dir).unwrap();
        let main = std::fs::read_to_string(dir.join("bindwatch.1")).unwrap();
        assert!(
            main.starts_with(".ie") || main.contains(".TH bindwatch 1"),
            "{main}"
        );
        assert!(main.contains("path.rootfs"), "serve flags on the main page");
        for sub in ["serve", "check", "wait", "ports"] {
            let page = std::fs::read_to_string(dir.join(format!("bindwatch-{sub}.1"))).unwrap();
            assert!(
                page.contains(&format!("bindwatch\\-{sub}")),
                "{sub}: {page}"
            );
        }
        // the hidden subcommand gets no page
        assert!(!dir.join("bindwatch-generate.1").exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn completions_offer_the_subcommands_and_flags_but_not_generate() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut completion_command(), "bindwatch", &mut out);
            let text = String::from_utf8(out).unwrap();
            for word in [
                "check",
                "ports",
                "path.rootfs",
                "web.listen-address",
                "reuseaddr",
            ] {
                assert!(text.contains(word), "{shell}: {word} missing");
            }
            assert!(!text.contains("generate"), "{shell} offers generate");
        }
    }
}
