//! The HTTP API (spec §3.2, §3.3, §3.5): routing, and one module per group of routes.
//!
//! ### Invariants
//!
//! - A request waits only on things outside its connection: its body from the client, the
//!   writer's answer (queued with `try_send`, so never for room), a namespace's visible
//!   end, a timer, shutdown. hyper answers one request of a connection before it reads the
//!   next, so nothing a request waits for depends on that connection doing anything else.

mod admin;
mod media;
mod params;
mod publish;
mod read;
pub mod response;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::{Method, Request, Response, StatusCode};
use rewind_protocol::{validate_namespace, ErrorCode};

use crate::engine::Log;
use crate::ws::{self, WsContext};
use response::{ApiError, Body};

/// What every request handler can reach.
#[derive(Clone)]
pub struct App {
    /// The log.
    pub log: Log,
    /// The WebSocket sessions' shared state.
    pub ws: WsContext,
}

/// Answers one request. Never fails: every error becomes a JSON error response.
///
/// `HEAD` is answered on every `GET` route as `GET` would be, status and headers alike
/// (`Content-Length` included), without the body.
pub async fn handle(req: Request<Incoming>, app: App) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let res = match route(req, &app).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    };
    if head {
        without_body(res)
    } else {
        res
    }
}

/// Answers a request that starts once shutdown has begun (the broker keeps accepting
/// while it drains): `/healthz` as usual, `/readyz` 503, everything else `503
/// shutting_down` with `Retry-After`, each with `Connection: close`. No new work is
/// taken, and a load balancer polling readiness sees the broker leave.
pub fn draining(req: &Request<Incoming>, log: &Log) -> Response<Body> {
    let mut res = match req.uri().path().trim_end_matches('/') {
        "/healthz" => response::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => admin::ready(log),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            "the broker is shutting down",
        )
        .into_response(),
    };
    res.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    if req.method() == Method::HEAD {
        without_body(res)
    } else {
        res
    }
}

/// A `HEAD` answer: the `GET` answer's status and headers, with the length its body had.
fn without_body(res: Response<Body>) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
        parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, Body::default())
}

async fn route(req: Request<Incoming>, app: &App) -> Result<Response<Body>, ApiError> {
    let log = &app.log;
    let path = req.uri().path().to_owned();
    // Each segment percent-decoded (`a%2Eb` is `a.b`) after the split, so `%2F` makes no
    // new segment; one that is not UTF-8 once decoded stays as sent, and a namespace
    // holding it is refused (`%` is not allowed in a name).
    let decoded: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(|raw| params::segment(raw).unwrap_or_else(|| raw.to_owned()))
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    // HEAD takes the GET route (see `handle`).
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    let head = req.method() == Method::HEAD;
    match segments.as_slice() {
        ["healthz"] => only(&method, &[Method::GET])
            .map(|()| response::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        ["readyz"] => {
            only(&method, &[Method::GET])?;
            Ok(admin::ready(log))
        }
        ["v1", "ws"] => {
            only(&method, &[Method::GET])?;
            if head {
                // A HEAD cannot switch protocols; it learns what a plain GET would.
                Ok(ws::upgrade_required())
            } else {
                Ok(ws::upgrade(req, &app.ws))
            }
        }
        ["v1", "namespaces"] => {
            only(&method, &[Method::GET])?;
            admin::list(log)
        }
        ["v1", "namespaces", ns] => {
            namespace(ns)?;
            match method {
                Method::GET => admin::info(log, ns),
                Method::PUT => admin::put(req, log, ns).await,
                Method::DELETE => admin::delete(log, ns).await,
                _ => Err(not_allowed(&[Method::GET, Method::PUT, Method::DELETE])),
            }
        }
        ["v1", "namespaces", ns, "events"] => {
            namespace(ns)?;
            match method {
                Method::POST => publish::publish(req, log, ns).await,
                Method::GET => read::read(req, log, ns).await,
                _ => Err(not_allowed(&[Method::GET, Method::POST])),
            }
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no route for {path}"),
        )),
    }
}

fn namespace(ns: &str) -> Result<(), ApiError> {
    validate_namespace(ns).map_err(ApiError::from)
}

fn only(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(not_allowed(allowed))
    }
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
fn query(req: &Request<Incoming>) -> params::Query<'_> {
    params::Query::parse(req.uri().query())
}
