//! The HTTP API (spec §3.2, §3.3, §3.4, §3.5) on axum: the route table, and one module per
//! group of routes. [`crate::server`] serves [`router`] on each connection and hands it the
//! WebSocket route, so this module never sees a WebSocket.
//!
//! ### Where our answers replace axum's
//!
//! - Origins: before anything else, a request carrying an `Origin` the broker does not
//!   allow is answered `403 origin_not_allowed` ([`cors::check`], the outermost layer),
//!   the WebSocket upgrade included; CORS ([`cors::layer`]) answers only allowed origins.
//! - Paths: before routing, [`serve`] decodes `%XX` escapes of unreserved characters
//!   (RFC 3986 §6.2.2.2: `/v1/n%61mespaces` is `/v1/namespaces`) and drops trailing `/`s.
//!   A namespace segment is then decoded whole by [`Ns`] (`%2F` stays inside it, so it
//!   makes no new segment), not by axum's `Path`, whose rejections are plain text.
//! - An unknown path is `404 not_found`, a known path with another method `405
//!   method_not_allowed` with our `Allow` list (`HEAD` beside `GET`), both in the JSON
//!   error shape (axum's own are empty).
//! - `HEAD` is axum's: every `GET` route answers it as `GET` would, status and headers
//!   alike (`Content-Length` included), without the body.
//! - Body limits and the body deadline are the handlers' ([`publish::read_body`]): the
//!   `413` and `408` answers are JSON, and a request's headers are checked before its body.
//!
//! ### Invariants
//!
//! - A request waits only on things outside its connection: its body from the client, the
//!   writer's answer (queued with `try_send`, so never for room), a namespace's visible
//!   end, a timer, shutdown. hyper answers one request of a connection before it reads the
//!   next, so nothing a request waits for depends on that connection doing anything else.

mod admin;
mod assets;
mod auth;
pub(crate) mod cors;
mod media;
mod params;
mod publish;
mod read;
pub(crate) mod response;
mod sse;

use std::sync::Arc;

use axum::extract::{FromRequestParts, OriginalUri, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Method, StatusCode, Uri};
use rewind_protocol::{validate_namespace, ErrorCode};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tower_service::Service;

use crate::engine::Log;
use response::{ApiError, Body};

/// The route table. `ws` answers `GET /v1/ws` (and its `HEAD`); the server builds it.
/// Pages of origins not in `origins` are refused before routing ([`cors::check`]); with
/// `auth`, every route checks its request's token next ([`auth::guard`]).
pub(crate) fn router(
    log: Log,
    ws: MethodRouter<Log>,
    origins: Arc<cors::Origins>,
    auth: Option<Arc<crate::auth::Auth>>,
) -> Router {
    Router::new()
        .route("/", get(assets::index).fallback(only_get))
        .route("/rewind.js", get(assets::client).fallback(only_get))
        .route("/rewind.d.ts", get(assets::declarations).fallback(only_get))
        .route(
            "/dashboard/{file}",
            get(assets::dashboard).fallback(only_get),
        )
        .route("/healthz", get(healthz).fallback(only_get))
        .route("/readyz", get(readyz).fallback(only_get))
        .route("/metrics", get(metrics).fallback(only_get))
        .route("/v1/ws", ws.fallback(only_get))
        .route("/v1/namespaces", get(admin::list).fallback(only_get))
        .route(
            "/v1/namespaces/{ns}",
            get(admin::info)
                .put(admin::put)
                .delete(admin::delete)
                .fallback(|| async { not_allowed(&[Method::GET, Method::PUT, Method::DELETE]) }),
        )
        .route(
            "/v1/namespaces/{ns}/events",
            get(read::read)
                .post(publish::publish)
                .fallback(|| async { not_allowed(&[Method::GET, Method::POST]) }),
        )
        .route("/v1/namespaces/{ns}/sse", get(sse::sse).fallback(only_get))
        .fallback(no_route)
        // Over every route and the fallback (a `route_layer` would miss routes added
        // after it and unknown paths): deny by default.
        .layer(axum::middleware::from_fn_with_state(auth, auth::guard))
        // 5xx answers (503 while shutting down, 507 while storage fails) are expected
        // states, logged where they arise: the trace records them at debug level.
        .layer(
            TraceLayer::new_for_http()
                // The path without the query, which may carry a token.
                .make_span_with(|req: &Request| {
                    tracing::debug_span!("request", method = %req.method(), path = req.uri().path())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        // Outside the routes, so a preflight is answered before routing and every answer,
        // errors included, can be read by a page of an allowed origin.
        .layer(cors::layer(Arc::clone(&origins)))
        // Outermost: a page of another origin gets no further, preflights included.
        .layer(axum::middleware::from_fn_with_state(origins, cors::check))
        .with_state(log)
}

/// Answers one request with `router`, after normalising its path (see the module docs).
pub(crate) async fn serve<B>(mut router: Router, mut req: Request<B>) -> Response
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let original = req.uri().clone();
    if let Some(uri) = normalized(&original) {
        req.extensions_mut().insert(OriginalUri(original));
        *req.uri_mut() = uri;
    }
    match router.call(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// `uri` with unreserved characters decoded in its path and trailing `/`s dropped; `None`
/// when that changes nothing. The query is kept as sent.
fn normalized(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let decoded = params::decode_unreserved(path);
    let trimmed = decoded.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    if trimmed == path {
        return None;
    }
    let path_and_query = match uri.query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).ok()
}

/// A route's namespace segment, percent-decoded and checked (`400 bad_namespace`). A
/// segment that is not UTF-8 once decoded is checked as sent, so the refusal names the
/// bytes the client sent rather than U+FFFD.
pub(super) struct Ns(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Ns {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Ns, ApiError> {
        // `/v1/namespaces/{ns}…`: the fourth piece of the (normalised) path.
        let raw = parts.uri.path().split('/').nth(3).unwrap_or_default();
        let ns = params::segment(raw).unwrap_or_else(|| raw.to_owned());
        validate_namespace(&ns)?;
        Ok(Ns(ns))
    }
}

async fn healthz() -> Response<Body> {
    response::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn readyz(axum::extract::State(log): axum::extract::State<Log>) -> impl IntoResponse {
    let answered = log.probe_storage().await;
    admin::ready_after_probe(&log, answered)
}

/// `GET /metrics`: the OpenMetrics text of [`crate::metrics`].
async fn metrics(axum::extract::State(log): axum::extract::State<Log>) -> Response<Body> {
    let text = log.metrics_text().await;
    response::with_body(StatusCode::OK, crate::metrics::CONTENT_TYPE, text)
}

/// 405 for a route that takes only `GET` (and `HEAD`).
async fn only_get() -> ApiError {
    not_allowed(&[Method::GET])
}

/// 404 naming the path as the client sent it.
async fn no_route(uri: Uri, original: Option<axum::Extension<OriginalUri>>) -> ApiError {
    let path = match &original {
        Some(axum::Extension(OriginalUri(o))) => o.path(),
        None => uri.path(),
    };
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no route for {path}"),
    )
}

/// Answers a request that starts once shutdown has begun (the broker keeps accepting
/// while it drains): `/healthz` as usual, `/readyz` 503, everything else `503
/// shutting_down` with `Retry-After`, each with `Connection: close`. No new work is
/// taken, and a load balancer polling readiness sees the broker leave. An SSE request
/// gets an empty event stream instead ([`sse::draining`]): an `EventSource` gives up for
/// good on any answer but `200 text/event-stream`, and this one makes it retry. A page of
/// an allowed origin (`origins`) can read the answer.
pub(crate) fn draining<B>(req: &Request<B>, log: &Log, origins: &cors::Origins) -> Response {
    let mut res = match req.uri().path().trim_end_matches('/') {
        "/healthz" => response::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => admin::ready(log),
        path if sse::is_sse_path(path) && matches!(*req.method(), Method::GET | Method::HEAD) => {
            sse::draining()
        }
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            "the broker is shutting down",
        )
        .response(),
    };
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    cors::decorate(origins, req.headers(), res.headers_mut());
    if req.method() == Method::HEAD {
        without_body(res)
    } else {
        res.into_response()
    }
}

/// A `HEAD` answer: the `GET` answer's status and headers, with the length its body had.
fn without_body(res: Response<Body>) -> Response {
    let (mut parts, body) = res.into_parts();
    if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
        parts
            .headers
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, axum::body::Body::empty())
}

/// 405 with an `Allow` header; every route with `GET` also takes `HEAD`.
fn not_allowed(allowed: &[Method]) -> ApiError {
    let list = allowed
        .iter()
        .flat_map(|m| {
            let head = (m == Method::GET).then_some("HEAD");
            std::iter::once(m.as_str()).chain(head)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("allowed methods: {list}"),
    );
    err.allow = Some(list);
    err
}

/// The request's query parameters, decoded strictly when asked for (see [`params`]).
fn query<B>(req: &Request<B>) -> params::Query<'_> {
    params::Query::parse(req.uri().query())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;

    use super::*;
    use crate::config::Config;

    /// `method path` through [`serve`]: status, `Allow`, and the error code of the body.
    async fn ask(
        router: &Router,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let res = serve(router.clone(), req).await;
        let status = res.status();
        let allow = res
            .headers()
            .get(hyper::header::ALLOW)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, allow, json)
    }

    /// A log opened on `config` and the route table over it (origins: the defaults for
    /// 127.0.0.1:7070; `/v1/ws` answers 418), with `auth` when given.
    async fn test_router(
        config: Arc<Config>,
        auth: Option<Arc<crate::auth::Auth>>,
    ) -> (Log, Router) {
        let log = tokio::task::spawn_blocking(move || Log::open(config))
            .await
            .unwrap()
            .unwrap();
        let origins = Arc::new(cors::Origins::new(&[], "127.0.0.1:7070".parse().unwrap()));
        let router = router(
            log.clone(),
            get(|| async { StatusCode::IM_A_TEAPOT }),
            origins,
            auth,
        );
        (log, router)
    }

    #[tokio::test]
    async fn our_404_and_405_replace_axums_and_paths_route_once_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        });
        let (log, router) = test_router(config, None).await;

        let (status, _, body) = ask(&router, Method::GET, "/healthz/").await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("ok"))
        );
        let (status, _, _) = ask(&router, Method::GET, "/v1/w%73").await;
        assert_eq!(status, StatusCode::IM_A_TEAPOT);

        let (status, _, body) = ask(&router, Method::GET, "/v2/nothing/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(body["error"]["message"], "no route for /v2/nothing/");

        for (path, allow) in [
            ("/v1/ws", "GET, HEAD"),
            ("/readyz", "GET, HEAD"),
            ("/v1/namespaces", "GET, HEAD"),
            ("/v1/namespaces/bad%2Fname", "GET, HEAD, PUT, DELETE"),
            ("/v1/namespaces/n/events/", "GET, HEAD, POST"),
        ] {
            let (status, got, body) = ask(&router, Method::PATCH, path).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(got.as_deref(), Some(allow), "{path}");
            assert_eq!(body["error"]["code"], "method_not_allowed", "{path}");
        }

        let (status, _, body) = ask(&router, Method::GET, "/v1/namespaces/x%FFy").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "bad_namespace");
        log.shutdown().await;
    }

    /// Every path the route table names (read from this file, so a new route is walked
    /// without anyone listing it here), with sample segments.
    fn routed_paths() -> Vec<String> {
        let source = include_str!("mod.rs");
        let table = source.split("#[cfg(test)]").next().unwrap_or_default();
        table
            .split(".route(")
            .skip(1)
            .filter_map(|after| after.trim_start().strip_prefix('"')?.split('"').next())
            .map(|p| p.replace("{ns}", "a").replace("{file}", "dashboard.js"))
            .collect()
    }

    #[tokio::test]
    async fn with_tokens_every_route_but_the_open_ones_refuses_a_request_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, [7u8; 32]).unwrap();
        let config = Arc::new(Config {
            data_dir: dir.path().join("data"),
            auth_secret_file: Some(secret),
            ..Config::default()
        });
        let auth = crate::auth::Auth::from_config(&config).unwrap();
        assert!(auth.is_some());
        let (log, router) = test_router(config, auth).await;

        let paths = routed_paths();
        assert!(paths.len() >= 12, "{paths:?}");
        for path in &paths {
            assert!(
                auth::declared(&Method::GET, path),
                "{path} has no declared need"
            );
        }
        let open = ["/", "/rewind.js", "/rewind.d.ts", "/dashboard/dashboard.js"];
        let open = |p: &str| open.contains(&p) || p == "/healthz" || p == "/readyz";
        for path in paths
            .iter()
            .map(String::as_str)
            .chain(["/v2/unknown", "/v1/ws/x"])
        {
            for method in [
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
            ] {
                let (status, _, _) = ask(&router, method.clone(), path).await;
                if open(path) {
                    assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                } else {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
                }
            }
        }
        log.shutdown().await;
    }

    #[test]
    fn paths_are_normalised_before_routing_and_queries_kept() {
        let n = |uri: &str| normalized(&uri.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(n("/healthz/").as_deref(), Some("/healthz"));
        assert_eq!(
            n("/v1/n%61mespaces/a%2eb//?from=%61&x=1").as_deref(),
            Some("/v1/namespaces/a.b?from=%61&x=1")
        );
        assert_eq!(n("///").as_deref(), Some("/"));
        for unchanged in ["/", "/healthz", "/v1/namespaces/a%2Fb/events?event=%FF"] {
            assert_eq!(n(unchanged), None, "{unchanged}");
        }
    }
}
