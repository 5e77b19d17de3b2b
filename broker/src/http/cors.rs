//! Cross-origin reads and publishes from browsers (the Fetch standard's CORS protocol),
//! one tower-http [`CorsLayer`] over the whole route table.
//!
//! Any origin may read (long-poll, SSE, `GET /v1/namespaces`) and publish, as any origin
//! may open a WebSocket today: rewind has no origin allow-list yet (spec §6; issue 12
//! brings it and replaces this layer). So every answer carries
//! `Access-Control-Allow-Origin: *`, and every `OPTIONS` request is answered as a
//! preflight: `200`, the methods and request headers below, cached by the browser for
//! [`PREFLIGHT_MAX_AGE`]. No credentials: `*` cannot carry them, and rewind's auth (issue
//! 12) is a bearer token, not a cookie.
//!
//! Answers do not vary by origin (the same `*` for all), so the layer adds no `Vary`:
//! a long-poll read keeps its own `Vary: accept`.

use std::time::Duration;

use hyper::header::{HeaderName, ACCEPT, AUTHORIZATION, CONTENT_TYPE, ETAG, RETRY_AFTER};
use hyper::Method;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight's answer (Chromium caps it at 2 hours).
pub(crate) const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The answer header saying a publish was a retry of one already appended.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What every answer given outside the router carries (while the broker drains), so a
/// page on another origin can read it too: the layer's `Access-Control-Allow-Origin` and
/// `Access-Control-Expose-Headers`.
pub(crate) fn decorate(headers: &mut hyper::HeaderMap) {
    use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS};
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after,etag,idempotent-replayed"),
    );
}

/// The layer: any origin; the API's methods; the request headers its routes read.
pub(crate) fn layer() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
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
        .expose_headers([RETRY_AFTER, ETAG, IDEMPOTENT_REPLAYED])
        .max_age(PREFLIGHT_MAX_AGE)
        .vary([])
}
