//! `GET /v1/ws`: the WebSocket transport (spec §3.1).
//!
//! - [`upgrade`] checks the handshake, picks the encoding from `Sec-WebSocket-Protocol`,
//!   takes a connection slot and hands the upgraded socket to a session.
//! - [`session`] runs one connection: it reads client frames, multiplexes subscriptions,
//!   publishes, keeps the link alive, and writes every outgoing frame; [`answers`] keeps
//!   the publishes' answers in the order the publishes came; [`streams`] holds its open
//!   subscriptions as one stream.
//! - [`link`] is the connection's socket with its outbox: nothing the session sends ever
//!   waits for the socket.
//! - [`subscription`] runs one open namespace: catch-up from the log, then live events
//!   from the namespace's ring, never more than the credit allows.
//!
//! Outgoing frames are finished wire bytes ([`rewind_protocol::wire`]), built once and
//! written with vectored writes.

mod answers;
mod gate;
mod link;
mod report;
mod session;
mod streams;
mod subscription;
mod token;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rewind_protocol::wire::Encoding;
use rewind_protocol::ErrorCode;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;

use crate::engine::Log;

/// Most bytes tungstenite may hold unwritten (control frames are at most 127 bytes, and
/// its socket, a [`link::Link`], takes every write at once).
const TUNGSTENITE_WRITE_CAP: usize = 64 << 10;

/// The body of the handshake's answers (the same type as every HTTP answer's).
pub(crate) type Body = Full<Bytes>;

/// A refused handshake: `code`'s HTTP status ([`ErrorCode::http_status`]) with the JSON
/// error body ([`ErrorCode::http_body`]); a 503 says `Retry-After: 1`, as every HTTP 503
/// of the broker does.
fn refusal(code: ErrorCode, message: &str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(code.http_body(message))));
    res.extensions_mut().insert(code);
    *res.status_mut() =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry = res.status() == StatusCode::SERVICE_UNAVAILABLE;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if retry {
        h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

/// What every WebSocket session shares.
#[derive(Clone)]
pub struct WsContext {
    /// The log.
    pub log: Log,
    /// Connection slots (`max_connections`); a session holds one for its life.
    slots: Arc<Semaphore>,
    /// The running sessions, each spawned on it, so shutdown can wait for them.
    sessions: TaskTracker,
}

impl WsContext {
    /// A context whose sessions run on `sessions`.
    pub(crate) fn new(log: Log, sessions: TaskTracker) -> WsContext {
        let slots = Arc::new(Semaphore::new(log.config().max_connections));
        WsContext {
            log,
            slots,
            sessions,
        }
    }

    fn socket_config(&self) -> WebSocketConfig {
        let cfg = self.log.config();
        // tungstenite itself only writes pongs and the closing handshake (every other
        // frame goes out through `wire`): no buffering, and a cap far above a control
        // frame.
        WebSocketConfig::default()
            .read_buffer_size(cfg.ws_read_buffer_bytes)
            .write_buffer_size(0)
            .max_write_buffer_size(TUNGSTENITE_WRITE_CAP)
            .max_message_size(Some(cfg.ws_max_frame_bytes))
            .max_frame_size(Some(cfg.ws_max_frame_bytes))
    }
}

fn header_has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A `Sec-WebSocket-Key` as RFC 6455 §4.1 has it: 16 bytes in base64 (RFC 4648 §4), that
/// is 22 characters of the alphabet, the last of them carrying only 2 bits (so one of
/// `A`, `Q`, `g`, `w`), and `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..22].iter().all(alphabet)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

/// The encoding for the offered subprotocols: the first one rewind speaks, in the client's
/// order; JSON when none is offered or none is known (and then no protocol is echoed).
fn negotiate(headers: &HeaderMap) -> (Encoding, Option<&'static str>) {
    let offered = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for p in offered {
        if let Some(encoding) = Encoding::from_subprotocol(p) {
            return (encoding, Some(encoding.subprotocol()));
        }
    }
    (Encoding::Json, None)
}

/// The answer to a plain (not upgrading) request to `/v1/ws`: `426 Upgrade Required`,
/// `Upgrade: websocket`, and a JSON error `upgrade_required`.
fn upgrade_required() -> Response<Body> {
    let mut res = refusal(
        ErrorCode::UpgradeRequired,
        "this is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket",
    );
    let h = res.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    res
}

/// Answers `GET /v1/ws`: the handshake with `101 Switching Protocols`, starting the
/// session on the upgraded connection (hyper's own upgrade: the session writes to the
/// socket itself); a plain request or a `HEAD` (which cannot switch protocols) with
/// `426`; a bad handshake with `400`; no free slot with `503 overloaded`.
pub(crate) fn upgrade<B>(mut req: Request<B>, ctx: &WsContext) -> Response<Body> {
    let headers = req.headers();
    let is_ws = header_has_token(headers, CONNECTION, "upgrade")
        && header_has_token(headers, UPGRADE, "websocket");
    if !is_ws || req.method() == Method::HEAD {
        return upgrade_required();
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        // RFC 6455 §4.2.2: refuse, and say which version the broker speaks.
        let mut res = refusal(
            ErrorCode::UpgradeRequired,
            "Sec-WebSocket-Version must be 13",
        );
        // RFC 9110 §15.5.22: every 426 names the protocol to upgrade to.
        let h = res.headers_mut();
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        return res;
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return refusal(ErrorCode::BadFrame, "Sec-WebSocket-Key is missing");
    };
    if !is_websocket_key(key.as_bytes()) {
        return refusal(
            ErrorCode::BadFrame,
            "Sec-WebSocket-Key must be 16 bytes in base64: 24 characters ending in == (RFC 6455 §4.1)",
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let (encoding, protocol) = negotiate(headers);
    let Ok(permit) = Arc::clone(&ctx.slots).try_acquire_owned() else {
        return refusal(ErrorCode::Overloaded, "too many connections");
    };
    let peer = req.extensions().get::<crate::metrics::Peer>().copied();
    // Put there by `http::auth` (the open grant without tokens); none is a refusal.
    let Some(grant) = req.extensions().get::<crate::auth::Grant>().cloned() else {
        return refusal(ErrorCode::Unauthorized, "no checked token for this upgrade");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_ctx = ctx.clone();
    let config = ctx.socket_config();
    // Tracked before the 101 goes out, so shutdown never misses a session starting.
    ctx.sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    link::Link::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(config),
                )
                .await;
                session::run(ws, encoding, session_ctx, peer, grant).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
        drop(permit);
    });
    let mut res = Response::new(Body::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::{is_websocket_key, refusal};
    use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
    use rewind_protocol::ErrorCode;

    #[test]
    fn a_refused_handshake_has_its_codes_status_and_the_json_error_body() {
        let busy = refusal(ErrorCode::Overloaded, "too many connections");
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        assert_eq!(busy.headers()[CONTENT_TYPE], "application/json");
        let bad = refusal(ErrorCode::BadFrame, "no key");
        assert_eq!(bad.status(), 400);
        assert!(!bad.headers().contains_key(RETRY_AFTER));
    }

    #[test]
    fn a_key_is_16_bytes_in_base64() {
        // RFC 6455 §1.3's example, and keys as browsers make them.
        for ok in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/+/+/+/+/+/+/+/+/+/+/w==",
        ] {
            assert!(is_websocket_key(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "short",
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZQ===",
            "dGhlIHNhbXBsZSBub25j!Q==",
            "dGhlIHNhbXBsZSBub25jZQ==dGhl",
            "ZGVhZGJlZWZkZWFkYmVlZg",
        ] {
            assert!(!is_websocket_key(bad.as_bytes()), "{bad}");
        }
    }
}
