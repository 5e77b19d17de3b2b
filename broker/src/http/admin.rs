//! Namespace management and health (spec §3.5).

use std::time::Duration;

use axum::extract::{Request, State};
use hyper::{Response, StatusCode};
use serde::{Deserialize, Deserializer};

use super::publish::read_body;
use super::response::{self, ApiError, Body};
use super::Ns;
use crate::config::{Retention, NO_LIMIT};
use crate::engine::Log;
use crate::engine::NsInfo;

/// Largest `PUT /v1/namespaces/{ns}` body, in bytes.
const MAX_PUT_BODY: usize = 64 * 1024;

/// A namespace as the API shows it; `retention` is the policy in force (the namespace's
/// own limits over the configured defaults), `null` where there is no limit.
fn info_json(log: &Log, info: &NsInfo) -> serde_json::Value {
    serde_json::json!({
        "name": info.name,
        "epoch": info.epoch,
        "earliest": info.earliest,
        "next": info.next,
        "events": info.events(),
        "bytes": info.bytes,
        "retention": log.config().retention.overlaid(&info.retention).in_force(),
    })
}

/// `GET /v1/namespaces`. With tokens, only the namespaces the request's token may see are listed.
pub(super) async fn list(
    State(log): State<Log>,
    grant: Option<axum::Extension<crate::auth::Grant>>,
) -> Result<Response<Body>, ApiError> {
    let grant = super::auth::grant_of(grant)?;
    let all: Vec<serde_json::Value> = log
        .list()
        .await?
        .iter()
        .filter(|i| grant.may_see(&i.name))
        .map(|i| info_json(&log, i))
        .collect();
    Ok(response::json(
        StatusCode::OK,
        &serde_json::json!({ "namespaces": all }),
    ))
}

/// `GET /v1/namespaces/{ns}`.
pub(super) async fn info(State(log): State<Log>, Ns(ns): Ns) -> Result<Response<Body>, ApiError> {
    let info = log
        .info(&ns)
        .await?
        .ok_or_else(|| crate::engine::LogError::NotFound(ns.clone()))?;
    Ok(response::json(StatusCode::OK, &info_json(&log, &info)))
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = r#"an object {"retention": {"max_events"?, "max_bytes"?, "max_age_secs"?}}"#
)]
struct PutBody {
    #[serde(default)]
    retention: PutRetention,
}

/// A namespace's own limits as `PUT` takes them: each a number from 1 up, `null` for no
/// limit ([`NO_LIMIT`]), or left out for the configured default.
#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = r#"an object {"max_events"?, "max_bytes"?, "max_age_secs"?}"#
)]
struct PutRetention {
    #[serde(default, deserialize_with = "limit")]
    max_events: Option<u64>,
    #[serde(default, deserialize_with = "limit")]
    max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "limit")]
    max_age_secs: Option<u64>,
}

/// A limit that is present: `null` is [`NO_LIMIT`]; 0 is refused, as everywhere else
/// (it would remove every event at once).
fn limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(Some(NO_LIMIT)),
        v => match v.as_u64() {
            Some(0) => Err(serde::de::Error::custom(
                "a limit of 0 would remove every event at once; null means no limit",
            )),
            Some(n) => Ok(Some(n)),
            None => Err(serde::de::Error::custom(format!(
                "a limit is a whole number from 1 up, or null for no limit, not {v}"
            ))),
        },
    }
}

/// Reads a non-empty `PUT` body. The body and `retention` must be JSON objects: serde's
/// derive would also take an array, filling the limits by position (`[5]`).
fn put_body(body: &[u8]) -> Result<PutBody, ApiError> {
    let bad = |e: serde_json::Error| ApiError::bad_request(e.to_string());
    let value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    let shape = r#"{"retention": {"max_events"?, "max_bytes"?, "max_age_secs"?}}"#;
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body is an object, {shape}"
        )));
    }
    if value.get("retention").is_some_and(|r| !r.is_object()) {
        return Err(ApiError::bad_request(format!(
            "retention is an object, as in {shape}"
        )));
    }
    // From the text again, so a key given twice is still refused.
    serde_json::from_slice(body).map_err(bad)
}

/// `PUT /v1/namespaces/{ns}`: creates (201) or sets retention (200).
pub(super) async fn put(
    State(log): State<Log>,
    Ns(ns): Ns,
    req: Request,
) -> Result<Response<Body>, ApiError> {
    let timeout = Duration::from_secs(log.config().http_body_timeout_secs);
    let body = read_body(req, MAX_PUT_BODY, timeout).await?;
    let put: PutBody = if body.iter().all(u8::is_ascii_whitespace) {
        PutBody::default()
    } else {
        put_body(&body)?
    };
    let own = Retention {
        max_events: put.retention.max_events,
        max_bytes: put.retention.max_bytes,
        max_age_secs: put.retention.max_age_secs,
    };
    let (info, created) = log.put(&ns, own).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(response::json(status, &info_json(&log, &info)))
}

/// `DELETE /v1/namespaces/{ns}`.
pub(super) async fn delete(State(log): State<Log>, Ns(ns): Ns) -> Result<Response<Body>, ApiError> {
    if log.delete(&ns).await? {
        Ok(response::empty(StatusCode::NO_CONTENT))
    } else {
        Err(crate::engine::LogError::NotFound(ns).into())
    }
}

/// `GET /readyz`: 200 while serving; 503 `{"status": "storage_failing", ...}` while the
/// store's last write, sync or checkpoint failed (a full disk), 200 again after the next
/// success; with Redis, 503 `{"status": "storage_unavailable", ...}` (code `unavailable`)
/// while Redis cannot be reached or takes no writes (a read-only replica), found by a
/// probe each `/readyz` makes (bounded by one `redis_timeout_ms`; none while the store's
/// circuit is open, which answers at once); 503 `shutting_down` once shutdown has begun.
pub(super) fn ready(log: &Log) -> Response<Body> {
    ready_after_probe(log, true)
}

/// [`ready`] after the probe `/readyz` makes: `answered` false (Redis gave no answer within
/// `redis_timeout_ms`) is `storage_unavailable` whatever the store said before, so a hung
/// Redis never makes `/readyz` wait longer than that.
pub(super) fn ready_after_probe(log: &Log, answered: bool) -> Response<Body> {
    let unavailable = !answered || log.storage_failing();
    if log.is_ready() && unavailable && log.storage_shared() {
        response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({
                "status": "storage_unavailable",
                "error": {
                    "code": rewind_protocol::ErrorCode::Unavailable.as_str(),
                    "message": "Redis cannot be reached, does not answer within redis_timeout_ms, or takes no writes (a read-only replica); publishes are refused until it can (docs/cluster.md)",
                },
            }),
        )
    } else if log.is_ready() && log.retention_refused() {
        response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({
                "status": "retention_mismatch",
                "error": {
                    "code": rewind_protocol::ErrorCode::Unavailable.as_str(),
                    "message": "this node's default retention differs from the one recorded in Redis by the nodes sharing it; it enforces none until it is restarted with the recorded defaults (docs/cluster.md, Retention)",
                },
            }),
        )
    } else if log.is_ready() && log.storage_failing() {
        response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({
                "status": "storage_failing",
                "error": {
                    "code": rewind_protocol::ErrorCode::StorageFull.as_str(),
                    "message": "the store's last write, sync or checkpoint failed (a full disk or an I/O error); publishes are refused until one succeeds",
                },
            }),
        )
    } else if log.is_ready() {
        response::json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            rewind_protocol::ErrorCode::ShuttingDown,
            "shutting down",
        )
        .response()
    }
}
