//! Which web pages may use the broker (spec §6, "an origin allow-list"), and CORS for
//! those that may.
//!
//! A browser names the page behind every WebSocket handshake, every cross-origin request
//! and every `POST` in the `Origin` header (the Fetch standard). [`check`] runs before
//! routing, for every route and the WebSocket upgrade alike (only the broker's own static
//! files are left alone, [`is_public_file`]): a request whose `Origin` is not allowed is
//! answered `403 origin_not_allowed` before anything is read, routed or created. A request without `Origin` is not a page's (curl, services, Node, the Rust
//! client) and passes; tokens guard those.
//!
//! Allowed are the broker's own origins ([`Origins::new`]: `http://127.0.0.1:PORT`,
//! `http://localhost:PORT`, `http://[::1]:PORT` for the bound port, and the bound address
//! itself when it is a specific one), so its dashboard works, and those of the
//! `allowed_origins` option. `*` there allows any origin but `null`; `null` (sandboxed
//! iframes, `file://` pages) is allowed only when listed itself.
//!
//! Origins are compared exactly once normalised ([`crate::origin`]): scheme and host in lower
//! case, the default port (80 for `http`, 443 for `https`) dropped. A request's `Origin`
//! must be a serialised origin (RFC 6454 §6.2: `scheme://host[:port]`, nothing else); one
//! with a path, userinfo, a query or a port that is not a number matches nothing.
//!
//! CORS is tower-http's [`CorsLayer`] behind the check, so it only sees allowed origins
//! or none: it echoes the origin (never `*`), answers preflights with the API's methods
//! and the request headers clients send, exposes the answer headers the JavaScript client
//! and pages read, and adds `Vary: Origin`. No credentials: rewind's auth is a bearer
//! token, never a cookie.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, AUTHORIZATION, CONTENT_TYPE, ETAG, ORIGIN, RETRY_AFTER, VARY,
    WWW_AUTHENTICATE,
};
use hyper::Method;
use rewind_protocol::ErrorCode;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::response::ApiError;
use crate::origin::normalise;

/// How long a browser may reuse a preflight's answer (Chromium caps it at 2 hours).
pub(crate) const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The answer header saying a publish was a retry of one already appended.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The answer headers a page on an allowed origin may read: `Retry-After` (503, 429),
/// `ETag` (long-poll reads), `Idempotent-Replayed` (publishes) and `WWW-Authenticate`
/// (401 and 403 with tokens on: `error="invalid_token"` or `"insufficient_scope"`).
const EXPOSED: &str = "retry-after,etag,idempotent-replayed,www-authenticate";

/// The longest part of a refused `Origin` repeated in the refusal's message.
const QUOTED_ORIGIN: usize = 200;

/// The origins allowed to use the broker, normalised ([`crate::origin::normalise`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origins {
    /// `*` was listed: any origin but `null`.
    any: bool,
    /// `null` was listed.
    null: bool,
    /// The broker's own origins and the listed ones.
    listed: Vec<String>,
}

impl Origins {
    /// The broker's own origins at `bound` (the listener's address, so a configured port
    /// 0 gives the port actually bound) and the `allowed_origins` entries `configured`
    /// (already normalised by the option's reading; any that is not is skipped).
    pub(crate) fn new(configured: &[String], bound: SocketAddr) -> Origins {
        let port = bound.port();
        let mut own = vec![
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
            format!("http://[::1]:{port}"),
        ];
        let ip = bound.ip();
        if !ip.is_unspecified() && !ip.is_loopback() {
            own.push(match ip {
                IpAddr::V4(v4) => format!("http://{v4}:{port}"),
                IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
            });
        }
        let mut origins = Origins {
            any: false,
            null: false,
            listed: Vec::new(),
        };
        for entry in own.iter().chain(configured) {
            match entry.as_str() {
                "*" => origins.any = true,
                "null" => origins.null = true,
                other => {
                    if let Some(o) = normalise(other) {
                        if !origins.listed.contains(&o) {
                            origins.listed.push(o);
                        }
                    }
                }
            }
        }
        origins
    }

    /// Whether a page of `origin` (an `Origin` header's value) may use the broker.
    pub(crate) fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(text) = origin.to_str() else {
            return false;
        };
        if text.eq_ignore_ascii_case("null") {
            return self.null;
        }
        match normalise(text) {
            Some(o) => self.any || self.listed.contains(&o),
            None => false,
        }
    }

    /// `None` when `headers` carry no `Origin` or an allowed one; else why not.
    fn refusal(&self, headers: &HeaderMap) -> Option<ApiError> {
        let mut values = headers.get_all(ORIGIN).iter();
        let origin = values.next()?;
        if values.next().is_some() {
            return Some(refused(
                "a request carries one Origin header; this one has more",
            ));
        }
        if self.allows(origin) {
            return None;
        }
        let shown: String = String::from_utf8_lossy(origin.as_bytes())
            .chars()
            .take(QUOTED_ORIGIN)
            .collect();
        Some(refused(&format!(
            "pages of origin {shown:?} may not use this broker: add the origin to \
             allowed_origins (--allowed-origins) to allow them"
        )))
    }
}

/// `403 origin_not_allowed` saying `why`.
fn refused(why: &str) -> ApiError {
    ApiError::of(ErrorCode::OriginNotAllowed, why)
}

/// The middleware in front of every route (the router's outermost layer): a request whose
/// `Origin` is not allowed is answered `403 origin_not_allowed` and goes no further.
pub(crate) async fn check(
    State(origins): State<Arc<Origins>>,
    req: Request,
    next: Next,
) -> Response {
    if is_public_file(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    match origins.refusal(req.headers()) {
        Some(refusal) => refusal.into_response(),
        None => next.run(req).await,
    }
}

/// A `GET` or `HEAD` of the broker's own files (the dashboard, the JavaScript client and
/// its declarations, `http::assets`): the same bytes for everyone, reading nothing of the
/// log and changing nothing, and the client's files are made to be imported by pages of
/// any origin (they carry `Access-Control-Allow-Origin: *`). So the origin check leaves
/// them alone; what the dashboard then does is checked.
fn is_public_file(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && (matches!(path, "/" | "/rewind.js" | "/rewind.d.ts") || path.starts_with("/dashboard/"))
}

/// tower-http's CORS layer for the allowed `origins`: the request's origin echoed; the
/// API's methods; the request headers its routes read; [`EXPOSED`] answer headers; a
/// preflight's answer cached for [`PREFLIGHT_MAX_AGE`]; `Vary: Origin` (and the preflight
/// request headers, tower-http's default); and Chromium's Private Network Access
/// permission (`Access-Control-Allow-Private-Network: true` when a preflight asks), so a
/// listed public origin's page may reach a broker on loopback.
pub(crate) fn layer(origins: Arc<Origins>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origins.allows(origin)
        }))
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
        ])
        .allow_headers([
            CONTENT_TYPE,
            ACCEPT,
            AUTHORIZATION,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([RETRY_AFTER, ETAG, IDEMPOTENT_REPLAYED, WWW_AUTHENTICATE])
        .max_age(PREFLIGHT_MAX_AGE)
        .allow_private_network(true)
}

/// What an answer given outside the router (while the broker drains) carries for a page
/// of an allowed origin, as the layer's answers do: `Access-Control-Allow-Origin` echoing
/// it, the exposed headers and `Vary: Origin`. Nothing for other requests.
pub(crate) fn decorate(origins: &Origins, request: &HeaderMap, headers: &mut HeaderMap) {
    headers.append(VARY, HeaderValue::from_static("origin"));
    let Some(origin) = request.get(ORIGIN) else {
        return;
    };
    if !origins.allows(origin) {
        return;
    }
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(configured: &[&str], bound: &str) -> Origins {
        let configured: Vec<String> = configured
            .iter()
            .map(|e| crate::origin::entry(e).unwrap())
            .collect();
        Origins::new(&configured, bound.parse().unwrap())
    }

    fn allows(o: &Origins, origin: &str) -> bool {
        o.allows(&HeaderValue::from_str(origin).unwrap())
    }

    #[test]
    fn the_own_origins_follow_the_bound_port_and_address() {
        let o = origins(&[], "127.0.0.1:41234");
        for own in [
            "http://127.0.0.1:41234",
            "http://localhost:41234",
            "HTTP://LOCALHOST:41234",
            "http://[::1]:41234",
        ] {
            assert!(allows(&o, own), "{own}");
        }
        for other in [
            "http://127.0.0.1:41235",
            "https://127.0.0.1:41234",
            "http://evil.example",
            "http://127.0.0.1:41234.evil.example",
            "http://127.0.0.1:41234/",
            "null",
        ] {
            assert!(!allows(&o, other), "{other}");
        }
        let o = origins(&[], "192.0.2.7:80");
        assert!(allows(&o, "http://192.0.2.7"));
        assert!(allows(&o, "http://localhost"));
        let o = origins(&[], "0.0.0.0:7070");
        assert!(!allows(&o, "http://0.0.0.0:7070"));
    }

    #[test]
    fn listed_origins_star_and_null() {
        let o = origins(
            &["https://dash.example/", "http://localhost:5173"],
            "127.0.0.1:7070",
        );
        assert!(allows(&o, "https://dash.example"));
        assert!(allows(&o, "https://DASH.example:443"));
        assert!(allows(&o, "http://localhost:5173"));
        assert!(!allows(&o, "http://dash.example"));
        assert!(!allows(&o, "null"));
        let any = origins(&["*"], "127.0.0.1:7070");
        assert!(allows(&any, "http://evil.example"));
        assert!(!allows(&any, "null"), "* does not allow null");
        assert!(!allows(&any, "not an origin"));
        let null = origins(&["null"], "127.0.0.1:7070");
        assert!(allows(&null, "null"));
        assert!(allows(&null, "NULL"));
        assert!(!allows(&null, "http://evil.example"));
    }

    #[test]
    fn a_refusal_is_403_origin_not_allowed_and_no_origin_passes() {
        let o = origins(&[], "127.0.0.1:7070");
        let mut headers = HeaderMap::new();
        assert!(o.refusal(&headers).is_none());
        headers.insert(ORIGIN, HeaderValue::from_static("http://localhost:7070"));
        assert!(o.refusal(&headers).is_none());
        headers.append(ORIGIN, HeaderValue::from_static("http://localhost:7070"));
        let twice = o.refusal(&headers).unwrap();
        assert_eq!(twice.code, ErrorCode::OriginNotAllowed);
        headers.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        let evil = o.refusal(&headers).unwrap();
        assert_eq!(evil.status, 403);
        assert!(
            evil.message.contains("http://evil.example"),
            "{}",
            evil.message
        );
        assert!(evil.message.contains("allowed_origins"), "{}", evil.message);
    }

    #[test]
    fn only_reads_of_the_brokers_own_files_skip_the_check() {
        for path in ["/", "/rewind.js", "/rewind.d.ts", "/dashboard/index.html"] {
            assert!(is_public_file(&Method::GET, path), "{path}");
            assert!(is_public_file(&Method::HEAD, path), "{path}");
            assert!(!is_public_file(&Method::POST, path), "{path}");
        }
        for path in [
            "/v1/ws",
            "/v1/namespaces",
            "/metrics",
            "/healthz",
            "/rewind.jsx",
        ] {
            assert!(!is_public_file(&Method::GET, path), "{path}");
        }
    }

    #[test]
    fn drain_answers_carry_cors_headers_for_allowed_origins_only() {
        let o = origins(&[], "127.0.0.1:7070");
        let mut request = HeaderMap::new();
        request.insert(ORIGIN, HeaderValue::from_static("http://localhost:7070"));
        let mut answer = HeaderMap::new();
        decorate(&o, &request, &mut answer);
        assert_eq!(answer[ACCESS_CONTROL_ALLOW_ORIGIN], "http://localhost:7070");
        assert_eq!(answer[ACCESS_CONTROL_EXPOSE_HEADERS], EXPOSED);
        assert_eq!(answer[VARY], "origin");
        request.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        let mut answer = HeaderMap::new();
        decorate(&o, &request, &mut answer);
        assert!(!answer.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    }
}
