//! HTTP: `/metrics` (or `--web.telemetry-path`), `/healthz`, `/`, with gzip, header
//! timeouts and a graceful, time-bounded drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::poller::{Control, Latest};

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// What the handlers need.
pub struct AppState {
    pub latest: Arc<Latest>,
    /// To ask the poller for a config reload (`POST /-/reload`).
    pub control: std::sync::mpsc::Sender<Control>,
    pub telemetry_path: String,
    /// `/healthz` fails when the last successful poll is older than this.
    pub stale_after: Duration,
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

/// Serves until `shutdown` resolves, then drains in-flight requests for at most
/// [`DRAIN_TIMEOUT`].
pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
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
                let state = state.clone();
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(64 * 1024)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(route(&state, req).await) }
                        }),
                    );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        if state.control.send(Control::Reload(Some(tx))).is_err() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the poller is not running\n",
            );
        }
        return match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(Ok(()))) => text(StatusCode::OK, "config reloaded\n"),
            Ok(Ok(Err(e))) => {
                let mut r = Response::new(Full::new(Bytes::from(format!(
                    "config reload failed, the previous config stays active:\n{e}\n"
                ))));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
            _ => text(
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
        let mut r = Response::new(Full::new(if gz { p.gzip.clone() } else { p.body.clone() }));
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
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
            let page = format!(
                "<!doctype html><html><head><title>bindwatch</title></head><body>\
                 <h1>bindwatch</h1><p>Prometheus exporter and port-conflict monitor.</p>\
                 <ul><li><a href=\"{p}\">{p}</a> metrics</li><li><a href=\"/healthz\">/healthz</a> health</li></ul>\
                 <p>On the host: <code>bindwatch ports</code>, <code>bindwatch check PORT --restart</code>.</p>\
                 </body></html>\n",
                p = state.telemetry_path
            );
            let mut r = Response::new(Full::new(Bytes::from(page)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/healthz" | "/" => text(
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
