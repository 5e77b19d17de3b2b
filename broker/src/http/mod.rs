//! The HTTP API (spec §3.2, §3.3, §3.5): routing, and one module per group of routes.
//!
//! ### Invariants
//!
//! - A request waits only on things outside its connection: its body from the client, the
//!   writer's answer (queued with `try_send`, so never for room), a namespace's visible
//!   end, a timer, shutdown. hyper answers one request of a connection before it reads the
//!   next, so nothing a request waits for depends on that connection doing anything else.

mod admin;
mod publish;
mod read;
pub mod response;

use std::collections::HashMap;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rewind_protocol::{validate_namespace, ErrorCode};

use crate::log::Log;
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
pub async fn handle(req: Request<Incoming>, app: App) -> Response<Body> {
    match route(req, &app).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
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
    res
}

async fn route(req: Request<Incoming>, app: &App) -> Result<Response<Body>, ApiError> {
    let log = &app.log;
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    match segments.as_slice() {
        ["healthz"] => only(&method, &[Method::GET])
            .map(|()| response::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        ["readyz"] => {
            only(&method, &[Method::GET])?;
            Ok(admin::ready(log))
        }
        ["v1", "ws"] => {
            only(&method, &[Method::GET])?;
            ws::upgrade(req, &app.ws)
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

fn not_allowed(allowed: &[Method]) -> ApiError {
    let list = allowed
        .iter()
        .map(Method::as_str)
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

/// The query string as a map (last value wins), percent-decoded.
fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}
