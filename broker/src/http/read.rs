//! `GET /v1/namespaces/{ns}/events?from=&limit=&wait=` (spec §3.3).

use std::time::Duration;

use axum::extract::{Request, State};
use hyper::header::{ACCEPT, VARY};
use hyper::{Response, StatusCode};
use rewind_protocol::{ErrorCode, Position};

use super::response::{self, ApiError, Body};
use super::{media, query, Ns};
use crate::engine::{Log, ReadRequest};

/// Events per page when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;

/// The media types a page can be answered in, the preferred first.
const ANSWERS: [&str; 3] = [
    "application/json",
    "application/msgpack",
    "application/x-msgpack",
];

fn bad_position(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadPosition, message)
}

/// Reads a page of events, waiting up to `wait` seconds for the first one, and with
/// tokens no longer than the request's token has left.
pub(super) async fn read(
    State(log): State<Log>,
    Ns(ns): Ns,
    req: Request,
) -> Result<Response<Body>, ApiError> {
    let cfg = log.config();
    let params = query(&req);
    let from = match params.get("from", ErrorCode::BadPosition)? {
        Some(text) => text.parse::<Position>()?,
        None => Position::Earliest,
    };
    let limit = match params.get("limit", ErrorCode::BadPosition)? {
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                bad_position(format!("limit must be a whole number ≥ 1, not {text:?}"))
            })?,
        None => DEFAULT_LIMIT,
    };
    let wait = match params.get("wait", ErrorCode::BadPosition)? {
        Some(text) => {
            let secs = text
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0);
            match secs {
                // `max_wait_secs as f64` may round up past any `Duration` (u64::MAX is
                // 2^64 as f64): a wait that long is taken as the longest deadline.
                Some(s) if s <= cfg.max_wait_secs as f64 => Duration::try_from_secs_f64(s)
                    .unwrap_or(Duration::MAX)
                    .min(crate::config::seconds(cfg.max_wait_secs)),
                _ => {
                    return Err(bad_position(format!(
                        "wait must be a number of seconds from 0 to {}, not {text:?}",
                        cfg.max_wait_secs
                    )))
                }
            }
        }
        None => Duration::ZERO,
    };
    // Never past the token's life: what is published after it expires is not this
    // request's to deliver (`docs/security.md`, "SSE and long-poll").
    let wait = match req
        .extensions()
        .get::<crate::auth::Grant>()
        .and_then(crate::auth::Grant::remaining)
    {
        Some(left) => wait.min(left),
        None => wait,
    };
    let accept: Vec<&str> = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let msgpack = match media::negotiate(&accept, &ANSWERS).map_err(ApiError::bad_request)? {
        Some(m) => m != "application/json",
        None => {
            return Err(ApiError::of(
                ErrorCode::NotAcceptable,
                "events are served as application/json or application/msgpack; \
                 the Accept header rules out both",
            ))
        }
    };
    let page = log.read(&ns, ReadRequest { from, limit, wait }).await?;
    if msgpack {
        // A page stops at an event it cannot encode and names it in `error`.
        let (bytes, error) = page.to_msgpack();
        if let Some(e) = error {
            tracing::error!(ns = %ns, offset = e.offset, error = %e.message, "event cannot be encoded in MessagePack");
        }
        Ok(varies(response::with_body(
            StatusCode::OK,
            "application/msgpack",
            bytes,
        )))
    } else {
        Ok(varies(response::with_body(
            StatusCode::OK,
            "application/json",
            page.to_json(),
        )))
    }
}

/// Marks an answer as chosen by `Accept`, for caches.
fn varies(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(VARY, hyper::header::HeaderValue::from_static("accept"));
    res
}
