//! `bindwatch serve` (the agent), from parsed flags to a drained shutdown, in named
//! steps: load the files, build the collector, bind the listen sockets, start the
//! tracer, the poller and the HTTP server, and stop them within bounded time.
//!
//! Every file and flag is checked before the first socket is bound, so a bad config
//! exits 2 without ever serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cli::ServeArgs;
use crate::collect::{CollectOptions, Collector};
use crate::commands;
use crate::netns::{NetnsCollectors, NetnsMode};
use crate::poller;
use crate::server;
use crate::web::WebState;

/// Runs the agent until SIGTERM or SIGINT.
///
/// # Errors
/// A bad `--config.file` or `--web.config.file`, a listen address that cannot be
/// parsed or bound, a socket source that cannot be opened; each names its flag.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    // First: a SIGHUP or SIGTERM during start-up must not kill the agent.
    if let Err(e) = crate::signals::install() {
        tracing::error!(error = %e, "cannot install the signal handlers; SIGHUP and SIGTERM keep their default action");
    }
    raise_nofile_limit();
    // Before any other thread exists: this also clears LISTEN_PID/LISTEN_FDS.
    let passed = systemd_listeners(&a)?;
    let web = web_config(&a)?;
    let config = services_config(&a)?;
    // Under --netns all there is no state file (it describes one namespace).
    if !a.source.state_file.as_os_str().is_empty() && a.netns == NetnsMode::Host {
        crate::state::target::check_at_start(&a.source.state_file, &a.source.procfs)
            .map_err(anyhow::Error::msg)?;
    }
    let addrs = listen_addresses(&a)?;
    let target = poll_target(&a)?;
    if let Some(sig) = crate::signals::terminating() {
        tracing::info!("{sig} received during start-up, exiting");
        return Ok(());
    }
    tracing::info!(
        version = crate::metrics::VERSION,
        source = match &target {
            poller::Target::Host(c) => c.table().kind().as_str(),
            poller::Target::AllNetns(_) => "per namespace",
        },
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
        let listeners = bind_listeners(passed, &addrs)?;
        let local = listeners.local_addrs();
        let latest = Arc::new(poller::Latest::new());
        let events = Arc::new(crate::events::Events::new(a.ports_max as usize));
        // Attached before the first poll, so the first published scrape already says
        // whether failures are observed.
        let tracer = start_tracer(&a, events.clone());
        let handle = poller::spawn(poller::Setup {
            target,
            interval: a.poll_interval,
            latest: latest.clone(),
            config,
            state_sink: state_sink(&a),
            budget: poller::CpuBudget::new(a.cpu_budget),
            exporter_metrics: !a.disable_exporter_metrics,
            events: Some(events.clone()),
        });
        let shutdown = spawn_signals(handle.control.clone());
        let state = app_state(&a, latest, web, &handle, events);
        for address in local {
            tracing::info!(%address, path = %a.telemetry_path, "serving metrics");
        }
        if let Err(e) = crate::activation::notify("READY=1") {
            tracing::warn!(error = %e, "cannot tell the service manager the agent is ready (NOTIFY_SOCKET)");
        }
        server::run(listeners, state, shutdown).await;
        stop(handle, tracer).await;
        Ok(())
    })
}

/// `--web.systemd-socket`: the listening sockets systemd passed.
fn systemd_listeners(a: &ServeArgs) -> anyhow::Result<Option<Vec<std::net::TcpListener>>> {
    if !a.systemd_socket {
        return Ok(None);
    }
    let l = crate::activation::take_listeners()?;
    tracing::info!(sockets = l.len(), "using the sockets systemd passed");
    Ok(Some(l))
}

/// `--web.config.file`, loaded once here; [`WebState`] reloads it when it changes.
fn web_config(a: &ServeArgs) -> anyhow::Result<Option<Arc<WebState>>> {
    let Some(path) = &a.web_config_file else {
        return Ok(None);
    };
    match WebState::load(path) {
        Ok(w) => {
            tracing::info!(path = %path.display(), tls = w.tls_enabled(), "web config loaded");
            Ok(Some(Arc::new(w)))
        }
        Err(e) => anyhow::bail!("--web.config.file {e}"),
    }
}

/// `--config.file`: the watched services; the poller reloads it on SIGHUP.
fn services_config(a: &ServeArgs) -> anyhow::Result<Option<poller::ConfigSource>> {
    let Some(path) = &a.config_file else {
        return Ok(None);
    };
    match crate::config::load(path) {
        Ok(current) => {
            tracing::info!(path = %path.display(), services = current.services.len(), "config loaded");
            Ok(Some(poller::ConfigSource {
                path: path.clone(),
                current,
                last_ok: true,
            }))
        }
        Err(e) => anyhow::bail!("--config.file {e}"),
    }
}

/// Every `--web.listen-address`, parsed (and resolved) before anything is bound.
fn listen_addresses(a: &ServeArgs) -> anyhow::Result<Vec<(String, Vec<SocketAddr>)>> {
    a.listen_address
        .iter()
        .map(|s| server::parse_listen_address(s).map(|v| (s.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)
}

/// What the poller polls: this namespace (with the memory a previous run left in
/// `--state.file`), or every namespace (`--netns all`).
fn poll_target(a: &ServeArgs) -> anyhow::Result<poller::Target> {
    let opts = collect_options(a);
    Ok(match a.netns {
        NetnsMode::Host => {
            let mut c = Collector::new(opts).context("opening the socket source (--source)")?;
            commands::seed_memory(
                &mut c,
                &a.source,
                commands::MemoryOf::PreviousRun(a.remember),
            );
            poller::Target::Host(Box::new(c))
        }
        NetnsMode::All => poller::Target::AllNetns(NetnsCollectors::new(opts, &a.run_netns)),
    })
}

fn collect_options(a: &ServeArgs) -> CollectOptions {
    let mut opts = CollectOptions::new(&a.source.procfs);
    opts.rootfs = a.source.rootfs.clone();
    opts.source = a.source.source;
    opts.ports_max = a.ports_max as usize;
    opts.remember = a.remember;
    opts.poll_interval = a.poll_interval;
    opts.bound_tracking = Some(crate::source::boundpolicy::RECONCILE_EVERY);
    // The owner scan is part of the poller's CPU: give it no more per poll than
    // a quarter of what the budget allows per interval (within 5-150 ms).
    if a.cpu_budget > 0.0 {
        // checked: the interval is bounded and the budget is 0..=1, but a panic here
        // would be a crash loop under systemd.
        let share = Duration::try_from_secs_f64(a.poll_interval.as_secs_f64() * a.cpu_budget / 4.0)
            .unwrap_or(crate::source::owners::SCAN_SLICE);
        opts.scan_slice =
            Some(share.clamp(Duration::from_millis(5), crate::source::owners::SCAN_SLICE));
    }
    opts
}

/// The sockets systemd passed, or one bound per `--web.listen-address`.
fn bind_listeners(
    passed: Option<Vec<std::net::TcpListener>>,
    addrs: &[(String, Vec<SocketAddr>)],
) -> anyhow::Result<server::Listeners> {
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
            for (flag, addrs) in addrs {
                listeners.push(
                    server::bind(addrs)
                        .with_context(|| format!("--web.listen-address {flag}: cannot listen"))?,
                );
            }
        }
    }
    Ok(server::Listeners::from(listeners))
}

/// Where the poller writes the listener memory for `check`/`wait`/`ports`; none with
/// `--state.file=`, `--netns all` (nothing writes it then), or when this process's
/// namespace cannot be named.
fn state_sink(a: &ServeArgs) -> Option<poller::StateSink> {
    if a.source.state_file.as_os_str().is_empty() || a.netns == NetnsMode::All {
        return None;
    }
    crate::netns::own_inode(&a.source.procfs).map(|ns| {
        poller::StateSink::new(
            a.source.state_file.clone(),
            ns,
            &a.source.procfs,
            a.poll_interval,
        )
    })
}

fn app_state(
    a: &ServeArgs,
    latest: Arc<poller::Latest>,
    web: Option<Arc<WebState>>,
    handle: &poller::PollerHandle,
    events: Arc<crate::events::Events>,
) -> Arc<server::AppState> {
    Arc::new(server::AppState {
        http: crate::metrics::HttpMetrics::new(web.is_some()),
        latest,
        reloader: a
            .enable_lifecycle
            .then(|| crate::lifecycle::Reloader::spawn(handle.control.clone())),
        telemetry_path: a.telemetry_path.clone(),
        stale_after: a
            .poll_interval
            .saturating_mul(3)
            .saturating_add(Duration::from_secs(1)),
        web,
        limits: server::Limits {
            max_requests: a.max_requests,
            read_header_timeout: a.read_header_timeout,
            write_timeout: a.write_timeout,
            max_connections: a.max_connections,
        },
        events: Some(events),
    })
}

/// Stops the tracer and the poller after the HTTP drain, giving up on a poller stuck
/// in a poll after [`poller::STOP_TIMEOUT`]: shutdown stays bounded.
async fn stop(handle: poller::PollerHandle, tracer: Option<crate::events::loader::Tracer>) {
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
            rt.shutdown_timeout(Duration::from_millis(500));
        }
    }
}

/// Starts the BPF failure tracer; without it (no privilege, no BTF, no tracefs) the
/// failure metrics are absent and one line says why.
fn start_tracer(
    a: &ServeArgs,
    events: Arc<crate::events::Events>,
) -> Option<crate::events::loader::Tracer> {
    if a.no_bind_events {
        tracing::info!("bind failure tracer disabled (--no-bind-events)");
        return None;
    }
    let opts = crate::events::loader::TracerOptions {
        procfs: a.source.procfs.clone(),
        run_netns: a.run_netns.clone(),
        rootfs: a.source.rootfs.clone(),
        all_netns: a.netns == NetnsMode::All,
        // Whatever the poll interval, never more than a line a second per port and call.
        log_interval: a.poll_interval.max(Duration::from_secs(1)),
    };
    match crate::events::loader::start(opts, events) {
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

/// Applies the caught signals: SIGHUP re-reads `--config.file` (like `POST /-/reload`;
/// those queued during start-up once), SIGTERM and SIGINT resolve the returned future,
/// which drains the server (also when they came during start-up).
fn spawn_signals(
    control: std::sync::mpsc::Sender<poller::Control>,
) -> impl std::future::Future<Output = ()> {
    use crate::signals::{Dispatch, Request};
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut dispatch = Dispatch::take();
    tokio::spawn(async move {
        loop {
            match dispatch.next().await {
                Request::Reload => {
                    tracing::info!("SIGHUP received, reloading the config");
                    // A gone poller is shutting down: the stop still comes.
                    let _ = control.send(poller::Control::Reload(None));
                }
                Request::Stop(sig) => {
                    tracing::info!("{sig} received, shutting down");
                    let _ = tx.send(());
                    return;
                }
            }
        }
    });
    async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
