//! HTTP: `/metrics` (or `--web.telemetry-path`), `/healthz`, `/`, with gzip; TLS, basic
//! auth and extra headers from `--web.config.file` ([`crate::web`]); limits on header
//! time, header size and concurrent requests; a graceful, time-bounded drain on shutdown.
//!
//! - this file: listeners, the accept loop, connections, TLS handshakes, the drain;
//! - `io`: the write timeout of a connection and the response body holding its slot;
//! - `routes`: each request through the limits and the web config, and the routes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

pub use crate::cli::parse_listen_address;
use crate::lifecycle::Reloader;
use crate::publish::Latest;
use crate::web::WebState;

mod io;
mod reserve;
mod routes;

pub use io::{Body, Payload, WriteTimeout};
use routes::serve_request;
pub use routes::{handle, route};

/// Default of `--web.read-header-timeout`: how long a client may take to send its
/// request headers (and, with TLS, to finish the handshake).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--web.max-requests` (exporter-toolkit's).
pub const MAX_REQUESTS: usize = 40;
/// Request headers larger than this are refused (431) before any handler runs.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);
/// Default of `--web.write-timeout`: how long writing an answer may make no progress.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `--web.max-connections`.
pub const MAX_CONNECTIONS: usize = 256;
/// A TLS handshake may take at most this long (or half the header timeout, if that
/// is shorter): stalled handshakes give their slot back well before a slow header would.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a new connection waits for the slot of an idle one closed for it.
const HANDOVER_WAIT: Duration = Duration::from_secs(1);

/// The TLS handshake timeout for a header timeout.
pub fn handshake_timeout(read_header_timeout: Duration) -> Duration {
    HANDSHAKE_TIMEOUT.min(read_header_timeout / 2)
}

/// Limits on what one client can hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests served at once; more get 503. 0: no limit.
    pub max_requests: usize,
    /// Time to send the request headers (and to finish a TLS handshake); also how long
    /// a keep-alive connection may sit idle between requests.
    pub read_header_timeout: Duration,
    /// How long a write to the client may make no progress before the connection is
    /// closed (a client that does not read its answer).
    pub write_timeout: Duration,
    /// Connections open at once; more are refused at once. 0: no limit.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_requests: MAX_REQUESTS,
            read_header_timeout: HEADER_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// What the handlers need.
pub struct AppState {
    pub latest: Arc<Latest>,
    /// `POST /-/reload`, with `--web.enable-lifecycle`; `None` answers it 403.
    pub reloader: Option<Arc<Reloader>>,
    pub telemetry_path: String,
    /// `/healthz` fails when the last successful poll is older than this.
    pub stale_after: Duration,
    /// TLS, basic auth, headers and rate limit from `--web.config.file`; `None` serves
    /// plain HTTP to everyone.
    pub web: Option<Arc<WebState>>,
    pub limits: Limits,
    /// The failure tracer's log (`GET /failures`); `None` when none was started.
    pub events: Option<Arc<crate::events::Events>>,
    /// The server's own counters, rendered after the poll's exposition by each scrape.
    pub http: crate::metrics::HttpMetrics,
}

/// Binds the listen address. For `:PORT` this is a dual-stack `[::]` socket, or
/// `0.0.0.0` where the host has no IPv6.
///
/// # Errors
/// When no candidate address can be bound (e.g. EADDRINUSE).
pub fn bind(addrs: &[SocketAddr]) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in addrs {
        match bind_one(*a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to bind")))
}

fn bind_one(a: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(a), Type::STREAM, None)?;
    if a.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    // bindwatch itself restarts cleanly: its leftovers never block it.
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&a.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// The sockets [`run`] accepts on: one per `--web.listen-address`, or those systemd
/// passed (`--web.systemd-socket`).
pub struct Listeners {
    all: Vec<TcpListener>,
    /// Where the next accept starts looking, so a busy socket cannot starve the others.
    next: usize,
}

impl Listeners {
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.all
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The next connection on any of the sockets (never resolves when there are none).
    async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| {
            let n = self.all.len();
            for i in 0..n {
                let idx = (self.next + i) % n;
                if let Poll::Ready(r) = self.all[idx].poll_accept(cx) {
                    self.next = idx + 1;
                    return Poll::Ready(r);
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl From<TcpListener> for Listeners {
    fn from(l: TcpListener) -> Self {
        Listeners {
            all: vec![l],
            next: 0,
        }
    }
}

impl From<Vec<TcpListener>> for Listeners {
    fn from(all: Vec<TcpListener>) -> Self {
        Listeners { all, next: 0 }
    }
}

/// Serves on every socket of `listeners` until `shutdown` resolves, then drains
/// in-flight requests for at most [`DRAIN_TIMEOUT`].
pub async fn run(
    listeners: impl Into<Listeners>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let mut listener = listeners.into();
    let graceful = GracefulShutdown::new();
    let in_flight = (state.limits.max_requests > 0)
        .then(|| Arc::new(Semaphore::new(state.limits.max_requests)));
    let open = (state.limits.max_connections > 0)
        .then(|| Arc::new(Semaphore::new(state.limits.max_connections)));
    let waiting = Arc::new(reserve::Waiting::default());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // With Nagle, a response written in several pieces (TLS records, a body
                // larger than the socket buffer) can hold its last small segment until
                // the client's delayed ACK, up to 40 ms. Go's net/http (Prometheus,
                // node_exporter) sets TCP_NODELAY on every connection too. On plain
                // HTTP over loopback it made no measurable difference here.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, %peer, "setting TCP_NODELAY failed");
                }
                // Each open connection holds kernel buffers and, while it writes, a
                // snapshot's bytes: their number is capped. At the cap, the connection
                // waiting longest without a request in progress is closed for the new
                // one (the scrape reserve); with every slot serving, it is refused.
                let slot = match &open {
                    None => None,
                    Some(sem) => match sem.clone().try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => {
                            hand_over(stream, peer, sem, &waiting, &state, &in_flight, &graceful);
                            continue;
                        }
                    },
                };
                spawn_connection(stream, peer, slot, &waiting, &state, &in_flight, &graceful);
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("drain timed out; closing remaining connections"),
    }
}

/// Serves one connection on its own task; it is closed early when it is the idle one
/// chosen to make room for a new connection.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    waiting: &Arc<reserve::Waiting>,
    state: &Arc<AppState>,
    in_flight: &Option<Arc<Semaphore>>,
    graceful: &GracefulShutdown,
) {
    let state = state.clone();
    let in_flight = in_flight.clone();
    let watcher = graceful.watcher();
    let ticket = waiting.enter();
    tokio::spawn(async move {
        tokio::select! {
            () = serve_connection(stream, peer, state, in_flight, watcher, ticket.clone()) => {}
            () = ticket.closed() => {
                tracing::debug!(%peer, "closed a connection without a request in progress to make room (--web.max-connections)");
            }
        }
        drop(slot);
    });
}

/// A connection at the cap: closes the connection waiting longest without a request
/// in progress (again as others start waiting, within [`HANDOVER_WAIT`]) and serves
/// this one in the first slot that frees; refuses it when every slot keeps serving a
/// request, or when as many new connections already wait for a slot as there are slots.
fn hand_over(
    stream: TcpStream,
    peer: SocketAddr,
    open: &Arc<Semaphore>,
    waiting: &Arc<reserve::Waiting>,
    state: &Arc<AppState>,
    in_flight: &Option<Arc<Semaphore>>,
    graceful: &GracefulShutdown,
) {
    use std::sync::atomic::Ordering::SeqCst;
    if waiting.handing_over.fetch_add(1, SeqCst) >= state.limits.max_connections {
        waiting.handing_over.fetch_sub(1, SeqCst);
        refuse(stream, state);
        return;
    }
    let (open, waiting, state, in_flight) = (
        open.clone(),
        waiting.clone(),
        state.clone(),
        in_flight.clone(),
    );
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
        let slot = loop {
            if waiting.close_oldest() {
                count_closed(&state);
            }
            let step = tokio::time::timeout(HANDOVER_STEP, open.clone().acquire_owned()).await;
            match step {
                Ok(Ok(p)) => break Some(p),
                Ok(Err(_)) => break None,
                Err(_) if tokio::time::Instant::now() >= deadline => break None,
                Err(_) => {}
            }
        };
        waiting.handing_over.fetch_sub(1, SeqCst);
        let Some(slot) = slot else {
            refuse(stream, &state);
            return;
        };
        let ticket = waiting.enter();
        tokio::select! {
            () = serve_connection(stream, peer, state, in_flight, watcher, ticket.clone()) => {}
            () = ticket.closed() => {}
        }
        drop(slot);
    });
}

/// How long a new connection at the cap waits for a slot before it closes the next
/// waiting connection (the one it closed may still be letting go of its slot).
const HANDOVER_STEP: Duration = Duration::from_millis(25);

/// Counts a connection closed to make room (with the refused ones: both are what
/// `--web.max-connections` cost a client).
fn count_closed(state: &AppState) {
    state.http.connection_refused();
}

/// The answer to a connection beyond `--web.max-connections` (plain HTTP only: on a TLS
/// port the connection is just closed).
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 50\r\n\r\ntoo many open connections (--web.max-connections)\n";

/// Refuses a connection over the cap: counted, answered if that can be done without
/// waiting, closed.
fn refuse(stream: TcpStream, state: &AppState) {
    count_closed(state);
    if !state.web.as_ref().is_some_and(|w| w.tls_enabled()) {
        let _ = stream.try_write(TOO_MANY_CONNECTIONS);
    }
    // Take what the client sent already: closing with unread input sends a reset,
    // which can destroy the answer before the client reads it.
    let mut sink = [0u8; 4096];
    let mut taken = 0;
    while taken < MAX_HEADER_BYTES {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => taken += n,
            _ => break,
        }
    }
    tracing::debug!("connection refused: --web.max-connections reached");
}

/// Go's answer to plain HTTP on a TLS port, so that `curl http://` says what is wrong.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    in_flight: Option<Arc<Semaphore>>,
    watcher: Watcher,
    ticket: Arc<reserve::Ticket>,
) {
    let timeout = state.limits.read_header_timeout;
    let stream = WriteTimeout::new(stream, state.limits.write_timeout);
    // Decided per connection, so a rotated certificate applies to the next handshake.
    let tls = match &state.web {
        Some(w) if w.tls_enabled() => w.current().tls.clone(),
        _ => None,
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES + 8 * 1024);
    let service = service_fn(move |req| {
        let state = state.clone();
        let in_flight = in_flight.clone();
        // Busy from the complete headers to the last byte of the answer.
        ticket.busy();
        let busy = ticket.idle_on_drop();
        async move {
            let mut r = serve_request(&state, in_flight, req).await;
            r.body_mut().hold(busy);
            Ok::<_, Infallible>(r)
        }
    });
    let result =
        match tls {
            None => {
                watcher
                    .watch(builder.serve_connection(TokioIo::new(stream), service))
                    .await
            }
            Some(cfg) => {
                let stream =
                    match tokio::time::timeout(handshake_timeout(timeout), handshake(stream, cfg))
                        .await
                    {
                        Ok(Ok(Some(s))) => s,
                        Ok(Ok(None)) => {
                            tracing::debug!(%peer, "plain HTTP request on the TLS port refused");
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                watcher
                    .watch(builder.serve_connection(TokioIo::new(stream), service))
                    .await
            }
        };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// TLS handshake; `Ok(None)` when the client spoke plain HTTP (answered with a 400).
async fn handshake(
    mut stream: WriteTimeout<TcpStream>,
    cfg: Arc<rustls::ServerConfig>,
) -> std::io::Result<Option<tokio_rustls::server::TlsStream<WriteTimeout<TcpStream>>>> {
    let mut first = [0u8; 1];
    let n = stream.get_ref().peek(&mut first).await?;
    // A TLS connection starts with a handshake record (22); HTTP with a method name.
    if n == 1 && first[0].is_ascii_uppercase() {
        let _ = stream.write_all(PLAIN_HTTP_ON_TLS).await;
        let _ = stream.shutdown().await;
        // Read what the client sent until it closes (bounded in size here, in time by
        // the caller): closing with unread input would send a reset, which can destroy
        // the answer before the client reads it.
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < MAX_HEADER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        return Ok(None);
    }
    tokio_rustls::TlsAcceptor::from(cfg)
        .accept(stream)
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_content_length_is_its_body() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_address(":10033").unwrap().len(), 2);
        assert_eq!(
            parse_listen_address("127.0.0.1:9").unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        assert_eq!(
            parse_listen_address("[::1]:9").unwrap(),
            vec!["[::1]:9".parse().unwrap()]
        );
        assert_eq!(
            parse_listen_address("localhost:9").unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        for bad in [":x", "host.example:9", "9", ":70000"] {
            let e = parse_listen_address(bad).unwrap_err();
            assert!(e.starts_with("--web.listen-address"), "{e}");
        }
    }
}
