//! `GET /v1/namespaces/{ns}/events?from=&limit=&wait=` (spec §3.3).

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::ACCEPT;
use hyper::{Request, Response, StatusCode};
use rewind_protocol::{ErrorCode, Position};

use super::query;
use super::response::{self, ApiError, Body};
use crate::log::{Log, ReadRequest};

/// Events per page when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;

fn bad_position(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadPosition, message)
}

/// Reads a page of events, waiting up to `wait` seconds for the first one.
pub(super) async fn read(
    req: Request<Incoming>,
    log: &Log,
    ns: &str,
) -> Result<Response<Body>, ApiError> {
    let cfg = log.config();
    let params = query(&req);
    let from = match params.get("from") {
        Some(text) => text.parse::<Position>()?,
        None => Position::Earliest,
    };
    let limit = match params.get("limit") {
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                bad_position(format!("limit must be a whole number ≥ 1, not {text:?}"))
            })?,
        None => DEFAULT_LIMIT,
    };
    let wait = match params.get("wait") {
        Some(text) => {
            let secs = text
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0);
            match secs {
                Some(s) if s <= cfg.max_wait_secs as f64 => Duration::from_secs_f64(s),
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
    let msgpack = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/msgpack") || v.contains("application/x-msgpack"));
    let page = log.read(ns, ReadRequest { from, limit, wait }).await?;
    if msgpack {
        // A page stops at an event it cannot encode and names it in `error`.
        let (bytes, error) = page.to_msgpack();
        if let Some(e) = error {
            tracing::error!(ns, offset = e.offset, error = %e.message, "event cannot be encoded in MessagePack");
        }
        Ok(response::with_body(
            StatusCode::OK,
            "application/msgpack",
            bytes,
        ))
    } else {
        Ok(response::with_body(
            StatusCode::OK,
            "application/json",
            page.to_json(),
        ))
    }
}
