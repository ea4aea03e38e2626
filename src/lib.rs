//! bindwatch: a Prometheus exporter and port-conflict monitor that predicts whether
//! restarting a daemon would fail with EADDRINUSE.
//!
//! # Layout
//! - [`cli`]: flags and subcommands (serve, check, wait, clear, ports).
//! - [`model`]: plain data: `Socket`, `Listener`, `Owner`, `Snapshot`, the engine's
//!   `Judgement`s, watched `Service`s and their statuses, host facts. Imports nothing
//!   else of the crate.
//! - [`source`]: reading the kernel: [`source::netlink`] (sock_diag, what
//!   `--source auto` reads where the kernel's TCP iterator batches:
//!   [`source::iterhazard`]), [`source::bpf`] (the BPF socket iterator: every socket's
//!   flags; the loader all BPF objects share is [`source::bpfload`]), beside it the
//!   in-kernel count of bound-only changes ([`source::boundtrack`], when to reuse the
//!   last bound-only dump: [`source::boundpolicy`]), [`source::procnet`] (/proc/net
//!   fallback), [`source::owners`] (pids, flags via pidfd), [`source::holders`] (every
//!   process holding a listening socket), both reading fd links through
//!   [`source::fdlinks`] (holder scans run in the kernel where a BPF `task_file`
//!   iterator loads: [`source::fdscan`]), [`source::sysctl`] (ephemeral port range), [`source::hz`] (the
//!   kernel's HZ for the bpf source's timers), and for `clear` only
//!   [`source::destroy`] (SOCK_DESTROY of one socket).
//! - [`config`]: the watched-services file, validated with file/line errors.
//! - [`rebind`]: the pure bind-conflict engine: sockets + new socket -> verdict;
//!   [`rebind::memory`]: when a remembered listener generation may decide a
//!   leftover's flags (pure, tested by a table of cases).
//! - [`conflict`]: the pure port-conflict monitor (watched services).
//! - [`tally`]: the ephemeral-port exhaustion tally, fed by the table walk.
//! - [`timefmt`]: UTC dates of Unix times for logs, the failure log and the landing page
//!   (humantime, clamped to the range it can write).
//! - [`collect`]: one poll: sources -> `Snapshot`, as named steps; the table walk
//!   (`collect::walk`, the per-socket hot loop), the folding of busy ports
//!   (`collect::fold`) and the memory of listener generations
//!   (`collect::generations`: tracking only; the rule is `rebind::memory`).
//! - [`events`]: real bind/listen/connect failures from a BPF tracer: blockers,
//!   prediction scores, the failure log behind `GET /failures`; `events::inputs`:
//!   what the poller hands the tracer before it publishes (never a publication).
//! - [`netns`]: network namespace discovery, names, `setns`, one collector each.
//! - [`poller`]: the polling loop; renders each snapshot once and publishes it
//!   (one file per job: `poll`, `budget`, `early`, `reload`, `render`, `sink`).
//! - [`publish`]: what the poller publishes and a scrape serves, and the requests the
//!   server may send the poller (reload, stop): the server never imports the poller.
//! - [`fsread`]: reading files bindwatch did not write: regular files only (checked
//!   on the opened fd, opened non-blocking), size caps, errors naming the file.
//! - [`procstat`]: the fields of a `/proc/PID/stat` line bindwatch reads (pure; never
//!   panics on a truncated or crafted line).
//! - [`state`]: the state file sharing the agent's listener memory with `check`,
//!   with the writer's heartbeat (pid, start time, poll interval); [`state::target`]:
//!   the write replaces only a regular file bindwatch may own, checked before each
//!   rename.
//! - [`fasthash`]: what the per-socket hot loop of a walk touches: the hasher, the
//!   tally's flat counter table, a prefetch.
//! - [`metrics`]: every metric name and help text; renders a `Snapshot` (the
//!   exposition writer in `metrics::writer`, the families per group in
//!   `metrics::{snapshot, rebind, events}`; the HTTP server's own instruments in
//!   `metrics::http`).
//! - [`landing`]: the landing page `/`: links and the live listener table (pure).
//! - [`logging`]: `--log.format` logfmt and JSON log lines.
//! - [`activation`]: listening sockets passed by systemd (`--web.systemd-socket`), and
//!   `READY=1` to `$NOTIFY_SOCKET` (sd_notify).
//! - [`signals`]: SIGHUP, SIGTERM and SIGINT caught from the first instruction of
//!   `serve`, queued during start-up and applied once the agent runs.
//! - [`server`]: hyper HTTP server: /metrics (the published poll, then its own
//!   counters), /healthz, /, limits, graceful drain
//!   (connections; `server::reserve`: idle connections give way to new ones at the
//!   cap; `server::io`: write timeout, body; `server::routes`: the routes).
//! - [`lifecycle`]: `POST /-/reload` (`--web.enable-lifecycle`): coalesced, spaced reloads.
//! - [`web`]: `--web.config.file` (exporter-toolkit format): TLS, basic auth, headers;
//!   cipher-suite names in the private `web::suites`, shared by validation and TLS.
//! - `yaml` (private): the YAML tree with line numbers both config files are read into,
//!   and the one set of checking helpers both validate with (`Problem`, `ConfigError`).
//! - [`report`]: pieces of the one-shot commands' output: holders of a listening
//!   socket and what a restart leaves of them, blockers sorted and capped, `ports`.
//! - [`commands`]: the one-shot commands `check`, `wait`, `ports`, and seeding a
//!   collector with the state file's listener memory (also for [`serve`]).
//! - [`clear`]: `bindwatch clear` and `wait --clear-after`: of what blocks a bind,
//!   destroys exactly the sockets no process holds (TIME_WAIT, orphans) and judges
//!   again; the plan is pure ([`clear::plan`]), destroying is `source::destroy`.
//! - [`serve`]: the agent's start-up and shutdown in named steps (files, collector,
//!   listen sockets, tracer, poller, HTTP server); `main` only dispatches.
//! - [`unixbind`]: the pure rules of `bind()` on a unix path or abstract name (held,
//!   stale, not a socket, free); [`unixprobe`]: the I/O that gathers their inputs
//!   (`lstat` under `--path.rootfs`, sock_diag of every network namespace, owners);
//!   [`unixcmd`]: `check`/`wait unix:...` and `ports --unix`; [`unixwatch`]: watched
//!   unix services' statuses (pure).
//! - [`generate`]: the hidden `generate` command: man pages and shell completions from
//!   the clap definitions (for scripts/build-deb.sh).

pub mod activation;
pub mod clear;
pub mod cli;
pub mod collect;
pub mod commands;
pub mod config;
pub mod conflict;
pub mod events;
pub mod fasthash;
pub mod fsread;
pub mod generate;
pub mod landing;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod poller;
pub mod procstat;
pub mod publish;
pub mod rebind;
pub mod report;
pub mod serve;
pub mod server;
pub mod signals;
pub mod source;
pub mod state;
pub mod tally;
pub mod timefmt;
pub mod unixbind;
pub mod unixcmd;
pub mod unixprobe;
pub mod unixwatch;
pub mod web;
mod yaml;
