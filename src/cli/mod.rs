//! Command line: flags and subcommands (serve, check, wait, clear, ports). Names follow
//! `docs/contract.md` and the Prometheus exporter conventions.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::model::{Protocol, UnixType};
use crate::netns::NetnsMode;
use crate::source::SourceChoice;
use crate::unixbind::UnixTarget;

#[derive(Debug, Parser)]
#[command(
    name = "bindwatch",
    version,
    about = "Prometheus exporter and port-conflict monitor: predicts whether restarting a daemon would fail with \"Address already in use\".",
    long_about = "bindwatch reads the socket table (netlink sock_diag, /proc/net as fallback), finds every \
listener and every socket that would block its restart, predicts per port whether a restart now \
would fail with EADDRINUSE (with and without SO_REUSEADDR) and when it will clear, and exports it \
for Prometheus.\n\nWithout a subcommand, bindwatch runs `serve` with the flags given.",
    after_help = "Examples:\n  bindwatch                                # serve metrics on :10033\n  bindwatch check 8080                     # would bind(0.0.0.0:8080) succeed now?\n  bindwatch check 443 --restart            # would restarting the daemon on :443 succeed?\n  bindwatch wait 8080 --reuseaddr --timeout 90s   # in ExecStartPre=\n  bindwatch clear 8080 --restart --yes     # destroy the leftovers that block it (TIME_WAIT, orphans)\n  bindwatch ports                          # listeners, owners, flags, restart risk\n  bindwatch check unix:/run/app.sock       # held by whom, stale (safe to remove), or not a socket?\n\nExit status of check/wait/clear: 0 bind would succeed (clear --yes: after destroying), 1 would fail (EADDRINUSE), 3 cannot tell, 2 usage or runtime error.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the polling agent and the HTTP server (the default).
    Serve(ServeArgs),
    /// Would a new socket bind (and, for TCP, listen) on ADDR:PORT now? Or on a unix
    /// socket path (unix:PATH: held, stale or not a socket) or abstract name (unix:@NAME)?
    Check(CheckArgs),
    /// Block until `check` would pass (for ExecStartPre and deploy scripts).
    Wait(WaitArgs),
    /// Destroy exactly the sockets that block a bind on PORT and are safe to destroy
    /// (TIME_WAIT, orphans); without --yes, only print the plan.
    Clear(ClearArgs),
    /// Table of listening endpoints: owner, flags, blockers, restart risk.
    Ports(PortsArgs),
    /// Write the man pages or a shell completion script (used by scripts/build-deb.sh).
    #[command(hide = true)]
    Generate(GenerateArgs),
    /// Recent real bind/listen/connect failures seen by the local agent, with their blockers.
    Failures(FailuresArgs),
}

/// Where and how to read the kernel.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Mount point of the proc filesystem (e.g. /host/proc in a container).
    #[arg(long = "path.procfs", value_name = "PATH", default_value = "/proc")]
    pub procfs: PathBuf,
    /// Root of the host's filesystem, under which host files such as /etc/passwd (for the
    /// `user` label) are read (e.g. /host/root in a container).
    #[arg(long = "path.rootfs", value_name = "PATH", default_value = "/")]
    pub rootfs: PathBuf,
    /// Socket table source: bpf (socket iterator), netlink sock_diag, /proc/net, or auto
    /// (netlink on Linux 5.15 and later, the bpf iterator before; else /proc/net).
    #[arg(long = "source", value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,
    /// Listener memory shared between the agent (writes it) and check/wait/ports (read it),
    /// so leftovers of a daemon that just died are judged with its flags. Empty disables.
    #[arg(long = "state.file", value_name = "FILE", default_value = "/run/bindwatch/state.json", value_parser = parse_path_or_empty)]
    pub state_file: PathBuf,
}

/// The watched-services file for the one-shot commands.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// YAML file declaring watched services; their status is shown too.
    #[arg(long = "config.file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
}

/// `--log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for HTTP (":PORT" means every address). Repeat it to
    /// serve on several addresses at once.
    #[arg(
        long = "web.listen-address",
        value_name = "ADDR",
        default_value = ":10033",
        action = clap::ArgAction::Append
    )]
    pub listen_address: Vec<String>,
    /// Serve on the listening sockets systemd passes (socket activation: LISTEN_FDS and
    /// LISTEN_PID, from a .socket unit) instead of binding --web.listen-address.
    #[arg(long = "web.systemd-socket", conflicts_with = "listen_address")]
    pub systemd_socket: bool,
    /// Leave out the exporter's metrics about itself as a process, as node_exporter's
    /// flag does: every process_* family (process_cpu_seconds_total,
    /// process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
    /// process_max_fds, process_start_time_seconds, process_threads). bindwatch has no
    /// go_* or promhttp_* metrics; every bindwatch_* family stays.
    #[arg(long = "web.disable-exporter-metrics")]
    pub disable_exporter_metrics: bool,
    /// Path under which metrics are served.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", value_parser = parse_telemetry_path)]
    pub telemetry_path: String,
    /// Exporter-toolkit web config: TLS, basic auth, headers (see docs/security.md).
    /// Certificates and users are re-read when their files change.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Serve `POST /-/reload` (re-read --config.file), as Prometheus does; off by default
    /// (403), since any client that can reach it could make the agent reload. SIGHUP
    /// always reloads.
    #[arg(long = "web.enable-lifecycle")]
    pub enable_lifecycle: bool,
    /// Requests served at once; more are answered 503. 0 means no limit.
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 40)]
    pub max_requests: usize,
    /// How long writing an answer may make no progress (a client that does not read)
    /// before the connection is closed.
    #[arg(long = "web.write-timeout", value_name = "DURATION", default_value = "30s", value_parser = parse_write_timeout)]
    pub write_timeout: Duration,
    /// Connections open at once; more are closed at once (a 503 on plain HTTP) and
    /// counted in bindwatch_http_connections_refused_total. 0 means no limit.
    #[arg(long = "web.max-connections", value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
    /// Time a client has to send its request headers (and to finish the TLS handshake).
    #[arg(long = "web.read-header-timeout", value_name = "DURATION", default_value = "10s", value_parser = parse_header_timeout)]
    pub read_header_timeout: Duration,
    /// How often the socket table is read.
    #[arg(long = "poll.interval", value_name = "DURATION", default_value = "5s", value_parser = parse_poll_interval)]
    pub poll_interval: Duration,
    /// Average CPU the poller may use, as a fraction of one core. Listeners are read
    /// every poll; walks of the whole socket table are spaced out to stay within it
    /// (bindwatch_view_timestamp_seconds shows how old each view is). 0 = walk every poll.
    #[arg(long = "poll.cpu-budget", value_name = "FRACTION", default_value_t = 0.01, value_parser = parse_fraction)]
    pub cpu_budget: f64,
    /// YAML file declaring watched services (see docs/config.md). Reloaded on SIGHUP and POST /-/reload.
    #[arg(long = "config.file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// At most this many ports get per-port series; the rest are counted in bindwatch_ports_dropped_total.
    #[arg(long = "ports.max", value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub ports_max: u32,
    /// How long the flags of a vanished listener are remembered to judge its leftovers.
    #[arg(long = "rebind.remember", value_name = "DURATION", default_value = "10m", value_parser = parse_remember)]
    pub remember: Duration,
    /// Network namespaces to watch: the one bindwatch runs in, or every one on the node
    /// (series then carry a `netns` label).
    #[arg(long = "netns", value_enum, default_value_t = NetnsMode::Host)]
    pub netns: NetnsMode,
    /// Where `ip netns` keeps named namespaces (their names become `netns` labels).
    #[arg(
        long = "path.run-netns",
        value_name = "PATH",
        default_value = "/run/netns"
    )]
    pub run_netns: PathBuf,
    /// Do not attach the BPF tracer of real bind/listen/connect failures (the
    /// failure metrics and GET /failures stay empty).
    #[arg(long = "no-bind-events")]
    pub no_bind_events: bool,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long = "log.level", value_name = "LEVEL", default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
    /// Log line format on stderr: logfmt (key=value) or json (one object per line).
    #[arg(long = "log.format", value_enum, default_value_t = LogFormat::Logfmt)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// What `check` and `wait` test: a port, or a unix-domain socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Port(u16),
    /// `unix:PATH` or `unix:@NAME`.
    Unix(UnixTarget),
}

fn parse_target(s: &str) -> Result<Target, String> {
    if let Some(unix) = crate::unixbind::parse_target(s) {
        return unix.map(Target::Unix);
    }
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(Target::Port(p)),
        _ => Err(format!(
            "{s:?} is neither a port from 1 to 65535 nor unix:PATH / unix:@NAME"
        )),
    }
}

fn parse_unix_type(s: &str) -> Result<UnixType, String> {
    UnixType::ALL
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not a unix socket type (stream, dgram, seqpacket)"))
}

/// The new socket to test.
#[derive(Debug, Clone, Args)]
pub struct SocketArgs {
    /// Port to test, or a unix-domain socket: `unix:/run/app.sock`, `unix:@name`.
    #[arg(value_name = "PORT|unix:PATH|unix:@NAME", value_parser = parse_target)]
    pub target: Target,
    #[command(flatten)]
    pub options: CheckOptions,
}

/// `a.protocol` for `a.options.protocol`: the options are check's, the target is one
/// kind among those `check`, `wait` and `clear` take, so they live apart.
impl std::ops::Deref for SocketArgs {
    type Target = CheckOptions;
    fn deref(&self) -> &CheckOptions {
        &self.options
    }
}

/// Everything `check` takes besides the target: the new socket's options, where to
/// answer, the output (shared by `check`, `wait` and `clear`).
#[derive(Debug, Clone, Args)]
pub struct CheckOptions {
    /// Type of the new unix socket (stream, dgram, seqpacket): an abstract name is
    /// held per type; for a path it changes nothing.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_unix_type)]
    pub unix_type: Option<UnixType>,
    #[arg(long, value_name = "PROTO", default_value = "tcp", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// Local address of the new socket (IPv4 or IPv6, no brackets).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// Set IPV6_V6ONLY on an IPv6 socket (default: net.ipv6.bindv6only).
    #[arg(long)]
    pub v6only: bool,
    /// Set SO_REUSEADDR on the new socket.
    #[arg(long)]
    pub reuseaddr: bool,
    /// Set SO_REUSEPORT on the new socket.
    #[arg(long)]
    pub reuseport: bool,
    /// uid the new socket is created by (matters for SO_REUSEPORT). Default: the caller's.
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,
    /// Bind the new socket to this network device (SO_BINDTODEVICE).
    #[arg(long, value_name = "DEV")]
    pub device: Option<String>,
    /// Answer inside this network namespace (`ip netns` name, `host`, `pod:UID`,
    /// `netns:[INODE]`, or a path such as /proc/PID/ns/net).
    #[arg(long = "netns", value_name = "NAME")]
    pub netns: Option<String>,
    /// Judge a restart of the process(es) now listening on PORT, with their own flags.
    #[arg(long, conflicts_with_all = ["address", "v6only", "reuseaddr", "reuseport", "uid", "device"])]
    pub restart: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// List every blocking socket in the text report (it shows the first 20 by
    /// default; --json always lists every one).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Give up (exit 1) after this long.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_wait_timeout)]
    pub timeout: Duration,
    /// How often to check again.
    #[arg(long = "poll.interval", value_name = "DURATION", default_value = "1s", value_parser = parse_poll_interval)]
    pub interval: Duration,
    /// After waiting this long, destroy what still blocks and is safe to destroy, as
    /// `clear PORT --yes` does (TIME_WAIT, orphans; never a socket a process holds).
    #[arg(long = "clear-after", value_name = "DURATION", value_parser = parse_wait_timeout)]
    pub clear_after: Option<Duration>,
}

/// `bindwatch clear`: what it clears, check's options, and the consent to act.
#[derive(Debug, Clone, Args)]
pub struct ClearArgs {
    /// The port (1-65535) whose blockers to clear, or `unix:PATH`, a stale socket file.
    #[arg(value_name = "PORT|unix:PATH", value_parser = parse_clear_target)]
    pub target: ClearTarget,
    #[command(flatten)]
    pub options: CheckOptions,
    /// Destroy the blockers that are safe to destroy, then judge again. Without it,
    /// clear changes nothing and prints the plan.
    #[arg(long)]
    pub yes: bool,
    /// Also destroy orphaned FIN_WAIT1 sockets on kernels before 6.11, where a
    /// destroyed FIN_WAIT1 orphan may stay in the table for good.
    #[arg(long, requires = "yes")]
    pub force: bool,
}

/// What `clear` clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearTarget {
    /// The sockets that block a bind on this port (of `--protocol`).
    Port(u16),
    /// A stale socket file at this path (`unix:PATH`).
    Unix(UnixTarget),
}

fn parse_clear_target(s: &str) -> Result<ClearTarget, String> {
    if let Some(unix) = crate::unixbind::parse_target(s) {
        return unix.map(ClearTarget::Unix);
    }
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(ClearTarget::Port(p as u16)),
        _ => Err(format!(
            "{s:?} is neither a port from 1 to 65535 nor unix:PATH"
        )),
    }
}

#[derive(Debug, Clone, Args)]
pub struct PortsArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// List unix-domain listeners (path or @name, type, owner, accept queue) instead.
    #[arg(long)]
    pub unix: bool,
    /// List the listeners of this network namespace instead of bindwatch's own (a
    /// name as for `check --netns`, or a path such as /proc/PID/ns/net).
    #[arg(long = "netns", value_name = "NAME")]
    pub netns: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// `bindwatch generate ...`: files generated from these definitions, so that the man
/// pages and completions always match the flags the binary takes.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generate,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Generate {
    /// Man pages: bindwatch.1 and bindwatch-SUBCOMMAND.1, written into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Completion script for SHELL, on stdout.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Args)]
pub struct FailuresArgs {
    /// Print the agent's JSON document (GET /failures) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where the agent serves HTTP (its own --web.listen-address; ":PORT" means this host).
    #[arg(
        long = "web.listen-address",
        value_name = "ADDR",
        default_value = "localhost:10033"
    )]
    pub listen_address: String,
}

/// A path, where the empty string (`--state.file=`) turns the feature off.
fn parse_path_or_empty(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
}

fn parse_http_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} must start with '/'"));
    }
    Ok(s.to_string())
}

/// Paths the server answers itself: a telemetry path there would hide one of them.
pub const RESERVED_PATHS: [&str; 4] = ["/", "/healthz", "/failures", "/-/reload"];

/// `--web.telemetry-path`: an HTTP path that is none of the server's own routes, and
/// one a request can match (no query, fragment, space or control character).
fn parse_telemetry_path(s: &str) -> Result<String, String> {
    let p = parse_http_path(s)?;
    if RESERVED_PATHS.contains(&p.as_str()) {
        return Err(format!(
            "{s:?} is one of bindwatch's own paths ({}); choose another, e.g. /metrics",
            RESERVED_PATHS.join(", ")
        ));
    }
    if let Some(c) = p
        .chars()
        .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{s:?} contains {c:?}, which no request path can match"
        ));
    }
    Ok(p)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a fraction of one core from 0 to 1 (e.g. 0.01 for 1%)"
        )),
    }
}

impl SocketArgs {
    /// The port of a port target; 0 for a unix target (never checked: `main`
    /// sends those to `unixcmd`).
    pub fn port(&self) -> u16 {
        match self.target {
            Target::Port(p) => p,
            Target::Unix(_) => 0,
        }
    }
}

/// Bounds of every duration flag: wide enough for any real use, narrow enough that no
/// arithmetic on them (deadlines, `interval * 3`, timers) can overflow. Listed in
/// docs/security.md.
pub mod bounds {
    use std::time::Duration;

    /// `--poll.interval` (serve and wait).
    pub const POLL_INTERVAL: (Duration, Duration) =
        (Duration::from_millis(10), Duration::from_secs(3600));
    /// `--web.read-header-timeout`.
    pub const READ_HEADER_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(600));
    /// `--web.write-timeout`.
    pub const WRITE_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(600));
    /// `--rebind.remember`.
    pub const REMEMBER: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(7 * 24 * 3600));
    /// `wait --timeout`.
    pub const WAIT_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(7 * 24 * 3600));
}

/// A duration within `[min, max]`; the error names both bounds (clap adds the flag).
fn parse_bounded(s: &str, (min, max): (Duration, Duration)) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < min || d > max {
        return Err(format!(
            "{s:?} is out of range: from {} to {}",
            humanize(min),
            humanize(max)
        ));
    }
    Ok(d)
}

/// A bound as the flag syntax writes it (`10ms`, `1h`, `168h`).
fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn parse_poll_interval(s: &str) -> Result<Duration, String> {
    parse_bounded(s, bounds::POLL_INTERVAL)
}

fn parse_header_timeout(s: &str) -> Result<Duration, String> {
    parse_bounded(s, bounds::READ_HEADER_TIMEOUT)
}

fn parse_write_timeout(s: &str) -> Result<Duration, String> {
    parse_bounded(s, bounds::WRITE_TIMEOUT)
}

fn parse_remember(s: &str) -> Result<Duration, String> {
    parse_bounded(s, bounds::REMEMBER)
}

fn parse_wait_timeout(s: &str) -> Result<Duration, String> {
    parse_bounded(s, bounds::WAIT_TIMEOUT)
}

/// Durations as Prometheus writes them: `500ms`, `5s`, `2m`, `1h`, or combined `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 500ms, 5s, 1m30s, 2h)");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(d);
    }
    if total.is_zero() {
        return Err(format!("{s:?} must be greater than zero"));
    }
    Ok(total)
}

/// Parses `--web.listen-address`: `:PORT` (every address), `HOST:PORT`, `[V6]:PORT`.
///
/// # Errors
/// A message naming the flag and the value.
pub fn parse_listen_address(s: &str) -> Result<Vec<SocketAddr>, String> {
    let bad = |why: &str| format!("--web.listen-address {s:?}: {why}");
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number from 0 to 65535"))?;
        return Ok(vec![
            SocketAddr::from(([0u8; 16], port)),
            SocketAddr::from(([0u8; 4], port)),
        ]);
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number from 0 to 65535"))?;
        if host == "localhost" {
            return Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
        }
        return Err(bad("host must be an IP address, \"localhost\" or empty"));
    }
    Err(bad("expected HOST:PORT or :PORT"))
}

#[cfg(test)]
mod tests;
