//! HTTP: `/metrics` (or `--web.telemetry-path`), `/healthz`, `/`, with gzip; TLS, basic
//! auth and extra headers from `--web.config.file` ([`crate::web`]); limits on header
//! time, header size and concurrent requests; a graceful, time-bounded drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE,
    RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::cli::parse_listen_address;
use crate::lifecycle::{Outcome, Reloader};
use crate::publish::Latest;
use crate::web::auth::Verdict;
use crate::web::WebState;

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
                // snapshot's bytes: their number is capped, the excess refused at once.
                let slot = match &open {
                    None => None,
                    Some(sem) => match sem.clone().try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => {
                            refuse(stream, &state);
                            continue;
                        }
                    },
                };
                let state = state.clone();
                let in_flight = in_flight.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    serve_connection(stream, peer, state, in_flight, watcher).await;
                    drop(slot);
                });
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

/// The answer to a connection beyond `--web.max-connections` (plain HTTP only: on a TLS
/// port the connection is just closed).
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 50\r\n\r\ntoo many open connections (--web.max-connections)\n";

/// Refuses a connection over the cap: counted, answered if that can be done without
/// waiting, closed.
fn refuse(stream: TcpStream, state: &AppState) {
    state
        .latest
        .http
        .connections_refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !state.web.as_ref().is_some_and(|w| w.tls_enabled()) {
        let _ = stream.try_write(TOO_MANY_CONNECTIONS);
    }
    tracing::debug!("connection refused: --web.max-connections reached");
}

/// A stream whose writes fail with `TimedOut` once they made no progress for the
/// timeout: hyper (and rustls above it) then drop the connection, and with it the
/// answer it held. Reads pass through (hyper bounds them with the header timeout).
pub struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// `Pending` from the inner stream: starts or checks the stall timer.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let timeout = self.timeout;
        let t = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match t.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for --web.write-timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        r: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stall(cx),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(r, cx)
    }
}

/// Go's answer to plain HTTP on a TLS port, so that `curl http://` says what is wrong.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    in_flight: Option<Arc<Semaphore>>,
    watcher: Watcher,
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
        async move { Ok::<_, Infallible>(serve_request(&state, in_flight, req).await) }
    });
    let result = match tls {
        None => {
            watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await
        }
        Some(cfg) => {
            let stream = match tokio::time::timeout(timeout, handshake(stream, cfg)).await {
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

/// A response body that holds its `--web.max-requests` slot until hyper has taken the
/// last byte. It hands the bytes out in [`BODY_CHUNK`] pieces (slices of the same
/// buffer, no copy): hyper takes a piece only when its write buffer has room, so a
/// client that does not read keeps its slot until the write timeout, instead of hyper
/// queueing the whole body at once and the slot going free at once.
pub struct Body {
    inner: Full<Bytes>,
    rest: Bytes,
    _slot: Option<OwnedSemaphorePermit>,
}

/// Piece of a response body handed to hyper at a time.
const BODY_CHUNK: usize = 64 * 1024;

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => this.rest = d,
                    Err(f) => return Poll::Ready(Some(Ok(f))),
                },
                other => return other,
            }
        }
        let n = this.rest.len().min(BODY_CHUNK);
        Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut h = SizeHint::new();
        h.set_lower(inner.lower().saturating_add(rest));
        if let Some(u) = inner.upper() {
            h.set_upper(u.saturating_add(rest));
        }
        h
    }
}

/// One request through the limits and the web config, then [`route`].
async fn serve_request(
    state: &AppState,
    in_flight: Option<Arc<Semaphore>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let active = state.web.as_ref().map(|w| {
        let a = w.current();
        state.latest.http.set_web_config_ok(w.last_reload_ok());
        a
    });
    let mut slot = None;
    // Reload requests wait for a coalesced reload (seconds at worst) and cost nothing
    // meanwhile: they must not take the slots scrapes need.
    let in_flight =
        in_flight.filter(|_| req.uri().path() != "/-/reload" || state.reloader.is_none());
    let resp = 'resp: {
        if let Some(a) = &active {
            if a.rate_limit.as_ref().is_some_and(|r| !r.allow()) {
                break 'resp text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n");
            }
            // Before taking a --web.max-requests slot: a bcrypt check is bounded by its
            // own pool (web::auth), and guesses waiting for it must not hold the slots
            // that scrapes with verified credentials need.
            if let (Some(auth), true) = (&a.auth, a.requires_auth(req.uri().path())) {
                let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
                match auth.check(header).await {
                    Verdict::Allowed => {}
                    Verdict::Denied => {
                        let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                        r.headers_mut()
                            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
                        break 'resp r;
                    }
                    Verdict::Busy => {
                        let mut r = text(
                            StatusCode::TOO_MANY_REQUESTS,
                            "too many unverified logins at once; retry later\n",
                        );
                        r.headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                        break 'resp r;
                    }
                }
            }
        }
        if let Some(sem) = in_flight {
            match sem.try_acquire_owned() {
                Ok(p) => slot = Some(p),
                Err(_) => {
                    break 'resp text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many concurrent requests (--web.max-requests)\n",
                    )
                }
            }
        }
        route(state, req).await
    };
    let (mut parts, inner) = resp.into_parts();
    if let Some(a) = &active {
        for (k, v) in &a.headers {
            parts.headers.insert(k.clone(), v.clone());
        }
    }
    Response::from_parts(
        parts,
        Body {
            inner,
            rest: Bytes::new(),
            _slot: slot,
        },
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn accepts_gzip(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.trim().split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !q_zero
        })
}

/// Routes one request: the reload endpoint talks to the poller, everything else is
/// served from the published state.
pub async fn route(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/-/reload" {
        if req.method() != Method::POST && req.method() != Method::PUT {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST to reload\n");
            r.headers_mut()
                .insert("allow", HeaderValue::from_static("POST, PUT"));
            return r;
        }
        let Some(reloader) = &state.reloader else {
            return text(
                StatusCode::FORBIDDEN,
                "Lifecycle API is not enabled: start bindwatch with --web.enable-lifecycle, or send it SIGHUP\n",
            );
        };
        return match reloader.reload().await {
            Outcome::Reloaded => text(StatusCode::OK, "config reloaded\n"),
            Outcome::Failed(e) => {
                let mut r = Response::new(Full::new(Bytes::from(format!(
                    "config reload failed, the previous config stays active:\n{e}\n"
                ))));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
            Outcome::PollerGone => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the poller is not running\n",
            ),
            Outcome::TimedOut => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the reload did not finish in time\n",
            ),
        };
    }
    handle(state, req)
}

/// Routes one read-only request. Pure over the published state: never touches the kernel.
pub fn handle(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    if path == state.telemetry_path {
        if !read_only {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are allowed here\n",
            );
            r.headers_mut()
                .insert("allow", HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let p = state.latest.get();
        let gz = accepts_gzip(&req);
        let format = crate::web::negotiate::negotiate(
            req.headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        tracing::trace!(format = format.as_str(), gzip = gz, "scrape");
        let mut r = Response::new(Full::new(p.bytes(format, gz)));
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        h.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
        if gz {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        return r;
    }
    match path {
        "/healthz" if read_only => {
            let fresh = state
                .latest
                .get()
                .last_success
                .is_some_and(|t| t.elapsed() <= state.stale_after);
            if fresh {
                text(StatusCode::OK, "ok\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the last successful poll is too old\n",
                )
            }
        }
        "/" if read_only => {
            let page = crate::landing::page(&state.telemetry_path, &state.latest.get().landing);
            let mut r = Response::new(Full::new(Bytes::from(page)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/failures" if read_only => {
            let body = match &state.events {
                Some(ev) => ev.failures_json(),
                None => serde_json::json!({"active": false, "failures": []}),
            };
            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        "/healthz" | "/" | "/failures" => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed here\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
