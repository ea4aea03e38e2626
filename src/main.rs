//! Thin entry point: parse the command line, set up logging, run, map errors to
//! exit codes (2 for usage and runtime errors, as `check` documents).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use bindwatch::cli::{Cli, Command, LogFormat, ServeArgs};
use bindwatch::collect::{CollectOptions, Collector};
use bindwatch::netns::{NetnsCollectors, NetnsMode};
use bindwatch::{commands, poller, server};

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
            enter_netns(&a.socket.netns, &a.socket.source)
                .unwrap_or_else(|| commands::check(&a.socket))
        }
        Some(Command::Wait(a)) => {
            init_logging("warn");
            enter_netns(&a.socket.netns, &a.socket.source).unwrap_or_else(|| commands::wait(&a))
        }
        Some(Command::Ports(a)) => {
            init_logging("warn");
            enter_netns(&a.netns, &a.source).unwrap_or_else(|| commands::ports(&a))
        }
        Some(Command::Generate(a)) => bindwatch::generate::run(&a.what),
        Some(Command::Failures(a)) => {
            init_logging("warn");
            bindwatch::events::client::failures(&a)
        }
    };
    ExitCode::from(code as u8)
}

/// `--netns NAME` of the one-shot commands: move this (still single-threaded)
/// process into that namespace. `Some(2)` when it cannot.
fn enter_netns(netns: &Option<String>, src: &bindwatch::cli::SourceArgs) -> Option<i32> {
    let name = netns.as_deref()?;
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
    match run_serve(a) {
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

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: systemd leaves the soft limit
/// at 1024 (for `select()` users) and raises only the hard one, expecting programs that
/// need many descriptors (connections, netns handles, pidfds) to do this themselves.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "getrlimit(RLIMIT_NOFILE)");
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        tracing::debug!(
            soft = lim.rlim_cur,
            hard = lim.rlim_max,
            "RLIMIT_NOFILE already at its hard limit"
        );
        return;
    }
    let from = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: lim is a valid rlimit; raising the soft limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::debug!(
            from,
            to = lim.rlim_cur,
            "raised the soft RLIMIT_NOFILE to the hard limit"
        );
    } else {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot raise RLIMIT_NOFILE");
    }
}

fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    raise_nofile_limit();
    // Before any other thread exists: this also clears LISTEN_PID/LISTEN_FDS.
    let passed = if a.systemd_socket {
        let l = bindwatch::activation::take_listeners()?;
        tracing::info!(sockets = l.len(), "using the sockets systemd passed");
        Some(l)
    } else {
        None
    };
    let web = match &a.web_config_file {
        Some(path) => match bindwatch::web::WebState::load(path) {
            Ok(w) => {
                tracing::info!(path = %path.display(), tls = w.tls_enabled(), "web config loaded");
                Some(Arc::new(w))
            }
            Err(e) => anyhow::bail!("--web.config.file {e}"),
        },
        None => None,
    };
    let config = match &a.config_file {
        Some(path) => match bindwatch::config::load(path) {
            Ok(current) => {
                tracing::info!(path = %path.display(), services = current.services.len(), "config loaded");
                Some(poller::ConfigSource {
                    path: path.clone(),
                    current,
                    last_ok: true,
                })
            }
            Err(e) => anyhow::bail!("--config.file {e}"),
        },
        None => None,
    };
    let addrs = a
        .listen_address
        .iter()
        .map(|s| server::parse_listen_address(s).map(|v| (s.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let mut opts = CollectOptions::new(&a.source.procfs);
    opts.rootfs = a.source.rootfs.clone();
    opts.source = a.source.source;
    opts.ports_max = a.ports_max as usize;
    opts.remember = a.remember;
    opts.poll_interval = a.poll_interval;
    // The owner scan is part of the poller's CPU: give it no more per poll than
    // a quarter of what the budget allows per interval (within 5-150 ms).
    if a.cpu_budget > 0.0 {
        // checked: the interval is bounded and the budget is 0..=1, but a panic here
        // would be a crash loop under systemd.
        let share = std::time::Duration::try_from_secs_f64(
            a.poll_interval.as_secs_f64() * a.cpu_budget / 4.0,
        )
        .unwrap_or(bindwatch::source::owners::SCAN_SLICE);
        opts.scan_slice = Some(share.clamp(
            std::time::Duration::from_millis(5),
            bindwatch::source::owners::SCAN_SLICE,
        ));
    }
    let target = match a.netns {
        NetnsMode::Host => {
            let mut c = Collector::new(opts).context("opening the socket source (--source)")?;
            restore_memory(&mut c, &a);
            poller::Target::Host(Box::new(c))
        }
        NetnsMode::All => poller::Target::AllNetns(NetnsCollectors::new(opts, &a.run_netns)),
    };
    let source_kind = match &target {
        poller::Target::Host(c) => c.table().kind().as_str(),
        poller::Target::AllNetns(_) => "per namespace",
    };
    tracing::info!(
        version = bindwatch::metrics::VERSION,
        source = source_kind,
        netns = ?a.netns,
        poll_interval = ?a.poll_interval,
        "starting bindwatch"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .map(|rt| QuickShutdown(Some(rt)))?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        match passed {
            Some(passed) => {
                for l in passed {
                    listeners.push(
                        tokio::net::TcpListener::from_std(l)
                            .context("--web.systemd-socket: using a passed socket")?,
                    );
                }
            }
            None => {
                for (flag, addrs) in &addrs {
                    listeners.push(
                        server::bind(addrs).with_context(|| {
                            format!("--web.listen-address {flag}: cannot listen")
                        })?,
                    );
                }
            }
        }
        let listeners = server::Listeners::from(listeners);
        let local = listeners.local_addrs();
        let latest = Arc::new(poller::Latest::new());
        if web.is_some() {
            latest.http.set_web_config_ok(true);
        }
        let state_sink = if a.source.state_file.as_os_str().is_empty() {
            None
        } else {
            bindwatch::state::current_netns(&a.source.procfs).map(|ns| {
                poller::StateSink::new(
                    a.source.state_file.clone(),
                    ns,
                    &a.source.procfs,
                    a.poll_interval,
                )
            })
        };
        let events = Arc::new(bindwatch::events::Events::new(a.ports_max as usize));
        // Attached before the first poll, so the first published scrape already says
        // whether failures are observed.
        let tracer = start_tracer(&a, latest.clone(), events.clone());
        let handle = poller::spawn(
            target,
            a.poll_interval,
            latest.clone(),
            config,
            state_sink,
            poller::CpuBudget::new(a.cpu_budget),
            !a.disable_exporter_metrics,
            Some(events.clone()),
        );
        spawn_sighup(handle.control.clone());
        let state = Arc::new(server::AppState {
            latest,
            reloader: a
                .enable_lifecycle
                .then(|| bindwatch::lifecycle::Reloader::spawn(handle.control.clone())),
            telemetry_path: a.telemetry_path.clone(),
            stale_after: a
                .poll_interval
                .saturating_mul(3)
                .saturating_add(std::time::Duration::from_secs(1)),
            web,
            limits: server::Limits {
                max_requests: a.max_requests,
                read_header_timeout: a.read_header_timeout,
                write_timeout: a.write_timeout,
                max_connections: a.max_connections,
            },
            events: Some(events),
        });
        for address in local {
            tracing::info!(%address, path = %a.telemetry_path, "serving metrics");
        }
        server::run(listeners, state, shutdown_signal()).await;
        let stopped = tokio::task::spawn_blocking(move || {
            if let Some(t) = tracer {
                t.stop();
            }
            handle.stop(poller::STOP_TIMEOUT)
        })
        .await
        .unwrap_or(false);
        if !stopped {
            tracing::warn!(
                timeout = ?poller::STOP_TIMEOUT,
                "the poller did not stop in time (stuck in a poll); exiting without it"
            );
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// The runtime, dropped without waiting long for blocking tasks (a bcrypt check): by
/// then the drain is over, and shutdown must stay bounded.
struct QuickShutdown(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for QuickShutdown {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        // Some until drop.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for QuickShutdown {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_timeout(std::time::Duration::from_millis(500));
        }
    }
}

/// Starts the BPF failure tracer; without it (no privilege, no BTF, no tracefs) the
/// failure metrics are absent and one line says why.
fn start_tracer(
    a: &ServeArgs,
    latest: Arc<poller::Latest>,
    events: Arc<bindwatch::events::Events>,
) -> Option<bindwatch::events::loader::Tracer> {
    if a.no_bind_events {
        tracing::info!("bind failure tracer disabled (--no-bind-events)");
        return None;
    }
    let opts = bindwatch::events::loader::TracerOptions {
        procfs: a.source.procfs.clone(),
        run_netns: a.run_netns.clone(),
        all_netns: a.netns == NetnsMode::All,
    };
    match bindwatch::events::loader::start(opts, latest, events) {
        Ok(t) => {
            tracing::info!(
                "bind failure tracer attached (syscall tracepoints bind, listen, connect)"
            );
            Some(t)
        }
        Err(e) => {
            tracing::warn!(
                "bind failure events unavailable, bindwatch_bind_failures_total and friends are \
                 not exported: {e} (needs CAP_BPF and CAP_PERFMON, or root, and kernel BTF)"
            );
            None
        }
    }
}

/// Picks up the listener memory a previous run left in `--state.file`, so a
/// restart of bindwatch itself does not forget the flags of listeners that died
/// just before.
fn restore_memory(c: &mut Collector, a: &ServeArgs) {
    if a.source.state_file.as_os_str().is_empty() {
        return;
    }
    let netns = bindwatch::state::current_netns(&a.source.procfs);
    // The previous run is gone by definition; its generations still say when they
    // were seen, and rebind::memory trusts nothing past that (plus one interval).
    match bindwatch::state::load_file(&a.source.state_file, netns) {
        Ok(Some(file)) => {
            let interval = bindwatch::state::writer_interval(&file);
            let entries = bindwatch::state::recent(file, a.remember);
            if !entries.is_empty() {
                tracing::info!(listeners = entries.len(), path = %a.source.state_file.display(), "restored the memory of listeners");
                c.remember(&entries, interval);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("ignoring the state file: {e}"),
    }
}

/// SIGHUP re-reads `--config.file`, like `POST /-/reload`.
fn spawn_sighup(control: std::sync::mpsc::Sender<poller::Control>) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received, reloading the config");
                    if control.send(poller::Control::Reload(None)).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; use POST /-/reload (--web.enable-lifecycle)")
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when the future is first polled: a SIGTERM that arrives as the server starts
/// (before its accept loop looks at the future) still shuts down gracefully.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let mut term = match term {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGTERM handler");
                std::future::pending::<()>().await;
                return;
            }
        };
        let int_recv = async {
            match int {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            () = int_recv => tracing::info!("SIGINT received, shutting down"),
        }
    }
}
