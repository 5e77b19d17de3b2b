//! `POST /v1/namespaces/{ns}/events` (spec §3.2).

use std::time::Duration;

use axum::extract::{Request, State};
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::{Response, StatusCode};
use rewind_protocol::idempotency;
use rewind_protocol::publish::{self, PublishLimits};
use rewind_protocol::ErrorCode;

use super::media::MediaType;
use super::response::{self, ApiError, Body};
use super::{query, Ns};
use crate::engine::Appended;
use crate::engine::{Idempotency, Log};
use crate::limits::PublishRate;

/// How the body is to be read.
enum BodyKind {
    Json,
    Ndjson,
    Raw,
}

fn unsupported(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::UnsupportedMediaType,
        message,
    )
}

fn body_kind(content_type: Option<&HeaderValue>) -> Result<BodyKind, ApiError> {
    let Some(value) = content_type else {
        return Err(unsupported(
            "a Content-Type is required: application/json, application/x-ndjson, \
             or the media type of a raw payload",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported("the Content-Type header is not readable"))?;
    let Some(media) = MediaType::parse(value) else {
        return Err(unsupported(format!("{value:?} is not a media type")));
    };
    let charset_ok = media
        .param("charset")
        .is_none_or(|c| c.eq_ignore_ascii_case("utf-8") || c.eq_ignore_ascii_case("utf8"));
    match media.essence.as_str() {
        "application/json" | "application/x-ndjson" | "application/ndjson" if !charset_ok => {
            Err(unsupported("JSON bodies must be UTF-8"))
        }
        "application/json" => Ok(BodyKind::Json),
        // The registered-looking spelling some tools send is taken as the same thing.
        "application/x-ndjson" | "application/ndjson" => Ok(BodyKind::Ndjson),
        "application/x-www-form-urlencoded" => Err(unsupported(
            "form bodies are not published; send application/json (curl: -H 'Content-Type: application/json')",
        )),
        m if m.starts_with("multipart/") => Err(unsupported("multipart bodies are not published")),
        _ => Ok(BodyKind::Raw),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("the body is over the limit of {limit} bytes"),
    )
}

fn body_timed_out(timeout: Duration) -> ApiError {
    ApiError::of(
        ErrorCode::RequestTimeout,
        format!(
            "the body did not arrive within {} s (http_body_timeout_secs)",
            timeout.as_secs()
        ),
    )
}

/// Reads the whole body, refusing more than `limit` bytes, within `timeout` counted from
/// now (the end of the headers). The deadline covers the whole body, so one that trickles
/// in a byte at a time is cut off as surely as one that stalls: `408 request_timeout`,
/// answered with `Connection: close` (see [`ApiError::response`]).
pub(super) async fn read_body(
    req: Request,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let read = tokio::time::timeout(timeout, copy_body(req.into_body(), limit));
    read.await.map_err(|_| body_timed_out(timeout))?
}

/// The body's bytes, copied out of each frame as it arrives. Collecting the frames
/// themselves would keep, for each, the whole read buffer it was cut from: a body sent a
/// byte at a time held kilobytes per byte (issue 12 measured about 4.3 KB).
async fn copy_body(mut body: axum::body::Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len().saturating_add(data.len()) > limit {
                return Err(too_large(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    out.shrink_to_fit();
    Ok(out)
}

/// The one value of a header that may appear once (`name` as the docs spell it); a
/// second copy is `400 bad_frame` naming the header, so no copy silently wins.
fn single_header<'r>(req: &'r Request, name: &str) -> Result<Option<&'r HeaderValue>, ApiError> {
    let mut values = req.headers().get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "the {name} header appears more than once; send it once"
        )));
    }
    Ok(first)
}

/// The `Idempotency-Key` header, checked by the rule every transport uses.
fn idempotency_key(req: &Request) -> Result<Option<String>, ApiError> {
    let Some(value) = single_header(req, "Idempotency-Key")? else {
        return Ok(None);
    };
    let key = std::str::from_utf8(value.as_bytes()).map_err(|_| {
        ApiError::from(rewind_protocol::ProtocolError::BadIdempotencyKey(
            "only visible ASCII characters (! to ~) are allowed",
        ))
    })?;
    idempotency::validate_key(key)?;
    Ok(Some(key.to_owned()))
}

/// Publishes the body's events and answers with their offsets once they are durable.
pub(super) async fn publish(
    State(log): State<Log>,
    Ns(ns): Ns,
    req: Request,
) -> Result<Response<Body>, ApiError> {
    let cfg = log.config();
    let limits = PublishLimits {
        max_payload_bytes: cfg.max_payload_bytes,
        max_batch_events: cfg.max_batch_events,
    };
    let kind = body_kind(single_header(&req, "Content-Type")?)?;
    let idempotency = idempotency_key(&req)?;
    // Raw publishes are named by the query; every parameter is decoded strictly (an
    // event name or key that is not UTF-8 is refused, never patched with U+FFFD).
    let (event, key) = {
        let params = query(&req);
        (
            params.get("event", ErrorCode::BadFrame)?,
            params.get("key", ErrorCode::BadFrame)?,
        )
    };
    let rate = req.extensions().get::<PublishRate>().cloned();
    let body = read_body(
        req,
        cfg.max_body_bytes,
        Duration::from_secs(cfg.http_body_timeout_secs),
    )
    .await?;
    // Checked once the body is read, so a refused publish leaves the connection (and
    // its rate) usable for the next.
    if let Some(rate) = rate {
        rate.admit()
            .map_err(|(code, message)| ApiError::of(code, message))?;
    }
    let parsed = match kind {
        BodyKind::Json => publish::parse_json(&body, &limits)?,
        BodyKind::Ndjson => publish::parse_ndjson(&body, &limits)?,
        BodyKind::Raw => {
            let event = event.ok_or_else(|| {
                ApiError::bad_request("a raw payload needs its event name as ?event=NAME")
            })?;
            let ev = publish::raw_event(&event, key.as_deref(), body, &limits)?;
            publish::PublishBody {
                events: vec![ev],
                batch: false,
            }
        }
    };
    let idempotency = Idempotency::of(idempotency, &parsed.events, parsed.batch);
    let (appended, replicated) = log
        .append_replicated(&ns, parsed.events, idempotency)
        .await?;
    // A replay answers in the original's shape (a record from before shapes were kept
    // cannot tell, and takes the retry's).
    let (first, last, replayed, batch) = match appended {
        Appended::New { first, last } => (first, last, false, parsed.batch),
        Appended::Duplicate { first, last, batch } => {
            (first, last, true, batch.unwrap_or(parsed.batch))
        }
    };
    let mut body = if batch {
        serde_json::json!({ "first": first, "last": last })
    } else {
        serde_json::json!({ "offset": first })
    };
    // `redis_wait_replicas`: Redis `WAIT` timed out before the replicas had the events
    // (they are stored on the primary either way; docs/cluster.md).
    if !replicated {
        body["replicated"] = serde_json::Value::Bool(false);
    }
    let mut res = response::json(StatusCode::CREATED, &body);
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}
