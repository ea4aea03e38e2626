//! Requests: the limits and the web config (auth, headers) around each, then the
//! routes (`/metrics`, `/healthz`, `/`, `/failures`, `/-/reload`), answered from the
//! published state.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE,
    RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use crate::lifecycle::Outcome;
use crate::publish::Published;
use crate::web::auth::Verdict;

use super::{AppState, Body, Payload};

/// One request through the limits and the web config, then [`route`].
pub(super) async fn serve_request(
    state: &AppState,
    in_flight: Option<Arc<Semaphore>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let active = state.web.as_ref().map(|w| {
        let a = w.current();
        state.http.set_web_config_ok(w.last_reload_ok());
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
    Response::from_parts(parts, Body::new(inner, slot))
}

fn text(status: StatusCode, body: &'static str) -> Response<Payload> {
    let mut r = Response::new(Payload::from(body));
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
pub async fn route(state: &AppState, req: Request<Incoming>) -> Response<Payload> {
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
                let mut r = Response::new(Payload::from(format!(
                    "config reload failed, the previous config stays active:\n{e}\n"
                )));
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

/// The landing page's live part: the published snapshots' tables, then the recent
/// failures.
fn landing_tables(p: &Published, events: Option<&crate::events::Events>) -> String {
    let snaps: Vec<(Option<&str>, &crate::model::Snapshot)> = p
        .snapshots
        .iter()
        .map(|(n, s)| (n.as_deref(), s.as_ref()))
        .collect();
    let recent = events.filter(|e| e.active()).map(|e| {
        e.with_log(|l| {
            l.recent
                .iter()
                .rev()
                .take(crate::landing::FAILURES_SHOWN)
                .cloned()
                .collect::<Vec<_>>()
        })
    });
    let mut out = crate::landing::tables(&snaps);
    out.push_str(&crate::landing::failures(recent.as_deref()));
    out
}

/// Routes one read-only request. Pure over the published state: never touches the kernel.
pub fn handle(state: &AppState, req: Request<Incoming>) -> Response<Payload> {
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
        // The poll's bytes, then the server's own families, gathered now.
        let tail = state.http.tail(format);
        let mut r = Response::new(Payload::new(p.served(format, gz, tail.as_bytes())));
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
            let p = state.latest.get();
            let tables = p.landing(|p| landing_tables(p, state.events.as_deref()));
            let page = crate::landing::page(&state.telemetry_path, &tables);
            let mut r = Response::new(Payload::from(page));
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
            let mut r = Response::new(Payload::from(body.to_string()));
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
