//! `GET /v1/namespaces/{ns}/sse?from=&epoch=` (spec §3.4): a namespace as Server-Sent
//! Events (the WHATWG HTML standard, §9.2), for the browser's own `EventSource`.
//!
//! ### The stream
//!
//! - First `retry: 1000` (a reconnecting `EventSource` waits 1 s) and `event:
//!   rewind.opened` with `{"ns", "epoch", "from", "earliest", "next"}`, as the WebSocket's
//!   `opened`: every connection, first or resumed, says which log it follows.
//! - Each event: `id: <offset>`, `event: <name>`, `data: <the event as a JSON object>`,
//!   the object a long-poll page holds (`offset`, `event`, `ts`, `key`?, and `data` or,
//!   for a byte payload, `data_b64`). A JSON payload stored with line breaks between its
//!   tokens is sent as several `data:` lines, which `EventSource` joins with `\n`: the
//!   same JSON value. Nothing else can hold a line break: JSON escapes every control
//!   character in strings, and event names have none (spec §2).
//! - `event: rewind.truncated` with `{"requested", "from", "reason"}` (`retention`, or
//!   `epoch` with the new `epoch` added) before a jump.
//! - `event: rewind.closed` with `{"ns", "reason": "deleted"}` once the namespace is
//!   deleted, then the stream ends. Its empty `id:` clears the browser's last event id, so
//!   the automatic reconnect that follows carries no `Last-Event-ID`: it gets `404` (an
//!   `EventSource` does not retry a failed answer: it reports `error` and stays closed)
//!   or, if the namespace was created again meanwhile, starts anew at the URL's `from`
//!   under a new `rewind.opened`, never at an offset of the deleted log.
//! - A comment (`: heartbeat`) after every `sse_heartbeat_secs` without anything to send,
//!   so proxies keep the connection open and a dead client is found by the write.
//! - On shutdown the stream ends; the browser reconnects with `Last-Event-ID`. A request
//!   that comes while the broker drains gets an empty stream with `retry:` (see
//!   [`draining`]), so the browser keeps trying until a broker answers.
//!
//! ### Where it starts
//!
//! `Last-Event-ID: K` (sent by a reconnecting `EventSource`) resumes at `K + 1` and wins
//! over `from`; else `from` (`earliest`, `latest`, or an offset; `latest` when absent, as
//! a WebSocket `open`). A bad value of either is `400 bad_position`, as a long-poll's bad
//! `from` is. `epoch=E`, checked when the start is an offset and no `Last-Event-ID` was
//! sent (the page's own resume): another epoch starts at the new log's `earliest` after a
//! `rewind.truncated` with reason `epoch`; an `epoch` that is not 16 lowercase hex digits
//! is `400 bad_frame`, as in a WebSocket `open`. A namespace that does not exist is `404
//! not_found` (as a long-poll read), and nothing is created.
//!
//! ### Flow control
//!
//! The body is a stream hyper polls only when the connection can take more; each poll
//! reads at most one batch ([`SSE_BATCH`] events, [`SSE_READ_BYTES`] past the first) from
//! the log at the stream's cursor. A client that stops reading costs its cursor, one
//! batch and hyper's write buffer, whatever the publish rate.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::StatusCode;
use rewind_protocol::codec::write_event_json;
use rewind_protocol::frame::is_epoch;
use rewind_protocol::{ErrorCode, Position};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::response::ApiError;
use super::{query, Ns};
use crate::engine::namespaces::Namespace;
use crate::engine::{Log, LogError};

/// Events read from the log per poll of the stream, at most.
pub(crate) const SSE_BATCH: usize = 256;

/// Bytes of records past the first event one poll reads, at most (also capped by
/// `max_read_bytes`): what a stalled client holds beyond its cursor.
pub(crate) const SSE_READ_BYTES: usize = 64 << 10;

/// The reconnection delay a browser is told, in milliseconds (`retry:`).
pub(crate) const RETRY_MS: u64 = 1000;

/// The header a reconnecting `EventSource` names its last event id in.
const LAST_EVENT_ID: &str = "last-event-id";

fn bad_position(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadPosition, message)
}

/// Where a resumed stream starts: `Last-Event-ID: K` → `K + 1`. `None` without the header
/// (or with it empty: a browser whose id was cleared sends none).
fn resume_from(req: &Request) -> Result<Option<u64>, ApiError> {
    let mut values = req.headers().get_all(LAST_EVENT_ID).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad_position(
            "Last-Event-ID is given more than once; give it once",
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| bad_position("Last-Event-ID must be the offset of the last event received"))?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>()
        .ok()
        .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|k| k.checked_add(1))
        .map(Some)
        .ok_or_else(|| {
            let shown: String = text.chars().take(64).collect();
            bad_position(format!(
                "Last-Event-ID must be the offset of the last event received (a whole \
                 number below 18446744073709551615), not {shown:?}"
            ))
        })
}

/// Answers the SSE route (see the module docs).
pub(super) async fn sse(
    State(log): State<Log>,
    Ns(ns): Ns,
    req: Request,
) -> Result<Response, ApiError> {
    let params = query(&req);
    let resumed = resume_from(&req)?;
    let from = match params.get("from", ErrorCode::BadPosition)? {
        Some(text) => text.parse::<Position>()?,
        None => Position::Latest,
    };
    let epoch = params.get("epoch", ErrorCode::BadFrame)?;
    if let Some(e) = epoch.as_deref().filter(|e| !is_epoch(e)) {
        let shown: String = e.chars().take(64).collect();
        return Err(ApiError::bad_request(format!(
            "epoch must be the 16 lowercase hex digits rewind.opened gave, not {shown:?}"
        )));
    }
    let from = resumed.map_or(from, Position::Offset);
    // With a shared store (Redis) another broker may have created it, or appended past
    // what this one has heard of.
    // The epoch is judged only without a `Last-Event-ID` (below): only then is it looked up.
    let judged = epoch.as_deref().filter(|_| resumed.is_none());
    let state = log
        .namespace_reaching(&ns, &from, judged)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::from(LogError::NotFound(ns.clone())))?;
    let visible = state.visible();
    let earliest = state.earliest();
    let epoch_changed = resumed.is_none() && epoch.is_some_and(|e| e != state.epoch);
    let (cursor, truncated) = match from {
        Position::Offset(n) if epoch_changed => (earliest, Some((n, "epoch"))),
        from => match from.resolve(earliest, visible) {
            Err(e) => return Err(bad_position(e.to_string())),
            Ok(n) if n < earliest => (earliest, Some((n, "retention"))),
            Ok(n) => (n, None),
        },
    };
    let mut opening = format!("retry: {RETRY_MS}\n\n").into_bytes();
    let opened = json!({
        "ns": ns,
        "epoch": state.epoch,
        "from": cursor,
        "earliest": earliest,
        "next": visible,
    });
    // `id: from - 1` sets the browser's last event id before any event came, so a stream
    // that breaks first resumes at `from` and not at the URL's start again (`latest` would
    // skip what was published meanwhile). From offset 0 there is no id to give.
    message(
        &mut opening,
        cursor.checked_sub(1).map(Some),
        "rewind.opened",
        opened.to_string().as_bytes(),
    );
    if let Some((requested, reason)) = truncated {
        let mut data = json!({"requested": requested, "from": cursor, "reason": reason});
        if reason == "epoch" {
            data["epoch"] = json!(state.epoch);
        }
        message(
            &mut opening,
            None,
            "rewind.truncated",
            data.to_string().as_bytes(),
        );
    }
    let tail = Tail {
        heartbeat: crate::config::seconds(log.config().sse_heartbeat_secs),
        stop: log.shutdown_signal(),
        log,
        state,
        cursor,
        opening: Some(opening),
        finished: false,
    };
    let mut res = Response::new(AxumBody::from_stream(tail.into_stream()));
    let headers = res.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(res)
}

/// True for `/v1/namespaces/{ns}/sse` (trailing `/`s dropped), the path as sent.
pub(super) fn is_sse_path(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    let mut parts = path.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(""), Some("v1"), Some("namespaces"), Some(ns), Some("sse"), None) if !ns.is_empty()
    )
}

/// The answer to an SSE request that starts while the broker shuts down: `200`, an event
/// stream holding only `retry:` and a comment, ended at once. The browser's `EventSource`
/// then reconnects after `retry` with its `Last-Event-ID` (to the broker that replaces
/// this one), where a `503` would make it give up for good (HTML §9.2.3: any answer but
/// `200 text/event-stream` fails the connection).
pub(super) fn draining() -> hyper::Response<super::response::Body> {
    let mut res = super::response::with_body(
        StatusCode::OK,
        "text/event-stream; charset=utf-8",
        format!("retry: {RETRY_MS}\n\n: the broker is shutting down\n\n"),
    );
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// Appends one SSE message: `id:` (when given; `Some(None)` writes an empty one, which
/// clears the browser's last event id), `event:`, and `data` as one `data:` line per line
/// of it (split at CR LF, CR and LF, the line ends of SSE).
fn message(out: &mut Vec<u8>, id: Option<Option<u64>>, event: &str, data: &[u8]) {
    match id {
        Some(Some(offset)) => out.extend_from_slice(format!("id: {offset}\n").as_bytes()),
        Some(None) => out.extend_from_slice(b"id:\n"),
        None => {}
    }
    out.extend_from_slice(b"event: ");
    // Event names hold no control characters (spec §2); a name stored before that rule
    // could, and a line break must never end the field early.
    for c in event.chars() {
        let c = if matches!(c, '\r' | '\n' | '\0') {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    out.push(b'\n');
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.push(b'\n');
}

/// One SSE reader's state: its cursor in one incarnation of the namespace.
struct Tail {
    log: Log,
    state: Arc<Namespace>,
    /// The next offset to send.
    cursor: u64,
    heartbeat: Duration,
    stop: CancellationToken,
    /// `retry:`, `rewind.opened` and any `rewind.truncated`, sent first.
    opening: Option<Vec<u8>>,
    /// Set once the last message (`rewind.closed`, an error) is sent.
    finished: bool,
}

impl Tail {
    fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
        futures::stream::unfold(self, |mut tail| async move {
            let chunk = tail.step().await?;
            Some((Ok(chunk), tail))
        })
    }

    /// The next chunk to send, once there is one; `None` ends the stream.
    async fn step(&mut self) -> Option<Bytes> {
        if let Some(opening) = self.opening.take() {
            return Some(opening.into());
        }
        if self.finished {
            return None;
        }
        let mut visible_rx = self.state.watch_visible();
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            if self.state.is_deleted() {
                return Some(self.closed());
            }
            let visible = *visible_rx.borrow_and_update();
            if self.cursor < visible {
                return Some(self.read(visible).await);
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return None,
                () = self.state.deleted() => return Some(self.closed()),
                changed = visible_rx.changed() => {
                    // The sender lives as long as the namespace's state, which we hold.
                    if changed.is_err() {
                        return Some(self.closed());
                    }
                }
                () = tokio::time::sleep(self.heartbeat) => {
                    return Some(Bytes::from_static(b": heartbeat\n\n"));
                }
            }
        }
    }

    /// `rewind.closed`, the last message.
    fn closed(&mut self) -> Bytes {
        self.finished = true;
        let mut out = Vec::new();
        let data = json!({"ns": &*self.state.name, "reason": self.state.end_reason()});
        message(
            &mut out,
            Some(None),
            "rewind.closed",
            data.to_string().as_bytes(),
        );
        out.into()
    }

    fn truncated(&mut self, out: &mut Vec<u8>, to: u64) {
        let data = json!({"requested": self.cursor, "from": to, "reason": "retention"});
        message(out, None, "rewind.truncated", data.to_string().as_bytes());
        self.cursor = to;
    }

    /// One batch of what the log holds from the cursor up to `visible`, as messages.
    async fn read(&mut self, visible: u64) -> Bytes {
        let mut out = Vec::new();
        let earliest = self.state.earliest();
        if self.cursor < earliest {
            self.truncated(&mut out, earliest.min(visible));
            if self.cursor >= visible {
                return out.into();
            }
        }
        let read = self
            .log
            .read_range_within(
                &self.state.name,
                &self.state.epoch,
                self.cursor,
                visible,
                SSE_BATCH,
                SSE_READ_BYTES,
            )
            .await;
        let events = match read {
            // Deleted meanwhile: nothing of that log is sent.
            _ if self.state.is_deleted() => return self.closed(),
            Ok(events) => events,
            // A shared store no longer has this incarnation, and this node has not yet
            // heard: nothing is sent until it has (as for a WebSocket catch-up).
            Err(LogError::NotFound(_) | LogError::Deleted(_)) => {
                if self.log.storage_shared() {
                    self.state.deleted().await;
                }
                return self.closed();
            }
            Err(e) => {
                tracing::warn!(ns = %self.state.name, error = %e, "SSE read failed");
                self.finished = true;
                let data = json!({"code": e.code().as_str(), "message": e.to_string()});
                message(&mut out, None, "rewind.error", data.to_string().as_bytes());
                return out.into();
            }
        };
        if events.is_empty() {
            // Retention removed them between the check above and the read.
            let to = self.state.earliest().clamp(self.cursor, visible);
            let to = if to == self.cursor { visible } else { to };
            self.truncated(&mut out, to);
            return out.into();
        }
        let mut data = Vec::new();
        for ev in events {
            if ev.offset > self.cursor {
                self.truncated(&mut out, ev.offset);
            }
            data.clear();
            write_event_json(&mut data, &ev);
            message(&mut out, Some(Some(ev.offset)), &ev.event, &data);
            self.cursor = ev.offset + 1;
        }
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(event: &str, data: &[u8]) -> String {
        let mut out = Vec::new();
        message(&mut out, Some(Some(7)), event, data);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_line_end_in_data_starts_a_new_data_line() {
        assert_eq!(
            framed("e", b"{\"a\":\r\n1,\r\"b\":\n2}"),
            "id: 7\nevent: e\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
        assert_eq!(framed("e", b"1"), "id: 7\nevent: e\ndata: 1\n\n");
        assert_eq!(framed("e", b"\n"), "id: 7\nevent: e\ndata: \ndata: \n\n");
    }

    #[test]
    fn an_event_name_never_ends_its_line() {
        assert_eq!(
            framed("a\r\nb\0c\rd\ne", b"1"),
            "id: 7\nevent: a\u{FFFD}\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}e\ndata: 1\n\n"
        );
        assert_eq!(
            framed(" x\u{2028}", b"1"),
            "id: 7\nevent:  x\u{2028}\ndata: 1\n\n"
        );
    }

    #[test]
    fn sse_paths_are_told_apart() {
        for yes in [
            "/v1/namespaces/a/sse",
            "/v1/namespaces/a.b/sse/",
            "/v1/namespaces/%2F/sse",
        ] {
            assert!(is_sse_path(yes), "{yes}");
        }
        for no in [
            "/v1/namespaces//sse",
            "/v1/namespaces/a/events",
            "/v1/namespaces/a/sse/x",
            "/v1/namespaces/sse",
            "/v2/namespaces/a/sse",
        ] {
            assert!(!is_sse_path(no), "{no}");
        }
    }

    #[test]
    fn an_empty_id_clears_the_last_event_id() {
        let mut out = Vec::new();
        message(&mut out, Some(None), "rewind.closed", b"{}");
        assert_eq!(out, b"id:\nevent: rewind.closed\ndata: {}\n\n");
    }
}
