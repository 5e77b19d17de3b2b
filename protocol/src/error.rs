//! Error codes shared by every transport, and the protocol layer's error type.

use std::fmt;

/// A machine-readable error code, as listed in the spec (§3.1) plus the codes the spec
/// leaves out (documented in `docs/http-api.md` and `docs/protocol.md`).
///
/// The same mistake gets the same code on every transport: the table of mistakes ×
/// transports is in `docs/protocol.md` ("Errors"). A code's HTTP status is
/// [`ErrorCode::http_status`], so the two never drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The input could not be parsed or has the wrong shape.
    BadFrame,
    /// A frame type the broker does not know.
    UnknownType,
    /// The namespace name breaks the naming rules.
    BadNamespace,
    /// The read position (`from`, `limit`, `wait`) is not valid.
    BadPosition,
    /// The namespace is not open on this connection.
    NotOpen,
    /// The namespace is already open on this connection.
    AlreadyOpen,
    /// The connection has reached its namespace limit.
    TooManyNamespaces,
    /// A payload, frame or body is over its configured limit.
    PayloadTooLarge,
    /// No valid credentials.
    Unauthorized,
    /// Credentials do not allow this.
    Forbidden,
    /// The write queue is full; retry later.
    Overloaded,
    /// Something failed inside the broker.
    Internal,
    /// The namespace (or, over HTTP, the route) does not exist.
    NotFound,
    /// HTTP only: the method is not allowed on this route.
    MethodNotAllowed,
    /// HTTP only: the content type cannot be published.
    UnsupportedMediaType,
    /// The disk is full.
    StorageFull,
    /// The broker is shutting down.
    ShuttingDown,
    /// An idempotency key was used before, inside the window, for a different request.
    IdempotencyConflict,
    /// HTTP only: a plain request to the WebSocket endpoint.
    UpgradeRequired,
    /// HTTP only: `Accept` rules out every media type the route can answer with.
    NotAcceptable,
    /// HTTP only: the request body did not arrive within `http_body_timeout_secs`.
    RequestTimeout,
    /// Too many publishes on one connection (`publish_rate`), or new connections from one
    /// address (`new_connections_per_sec_per_ip`); retry after a moment. HTTP 429.
    RateLimited,
    /// HTTP only: the peer's address holds `max_connections_per_ip` connections already.
    /// HTTP 503, and the connection is closed.
    TooManyConnections,
    /// HTTP only: a `Transfer-Encoding` other than `chunked` alone (RFC 9112 §6.1). HTTP 501.
    NotImplemented,
    /// The shared store (Redis, `docs/cluster.md`) cannot be reached: nothing was
    /// acknowledged; retry (HTTP 503 with `Retry-After`).
    Unavailable,
    /// HTTP only: the request's `Origin` (a page in a browser) is not in the broker's
    /// `allowed_origins`; nothing was done. HTTP 403, on every route and the WebSocket
    /// handshake alike.
    OriginNotAllowed,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadNamespace => "bad_namespace",
            ErrorCode::BadPosition => "bad_position",
            ErrorCode::NotOpen => "not_open",
            ErrorCode::AlreadyOpen => "already_open",
            ErrorCode::TooManyNamespaces => "too_many_namespaces",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::NotAcceptable => "not_acceptable",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
        }
    }

    /// The HTTP status this code is answered with (the table in `docs/http-api.md`).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadFrame
            | ErrorCode::UnknownType
            | ErrorCode::BadNamespace
            | ErrorCode::BadPosition
            | ErrorCode::NotOpen
            | ErrorCode::AlreadyOpen
            | ErrorCode::TooManyNamespaces => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::OriginNotAllowed => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::NotAcceptable => 406,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::IdempotencyConflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::UpgradeRequired => 426,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::NotImplemented => 501,
            ErrorCode::Overloaded
            | ErrorCode::ShuttingDown
            | ErrorCode::TooManyConnections
            | ErrorCode::Unavailable => 503,
            ErrorCode::StorageFull => 507,
        }
    }

    /// The JSON body of an HTTP error answer, `{"error": {"code": …, "message": …}}`
    /// (spec §3.2), the same from every HTTP route and the WebSocket handshake.
    pub fn http_body(self, message: &str) -> String {
        serde_json::json!({ "error": { "code": self.as_str(), "message": message } }).to_string()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a piece of input was rejected. Each variant maps to one [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The namespace name breaks the rules of spec §2.
    #[error("bad namespace {name:?}: {reason}")]
    BadNamespace {
        /// The rejected name (truncated to 200 bytes for the message).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The event name breaks the rules of spec §2.
    #[error("bad event name: {0}")]
    BadEventName(&'static str),
    /// The input is not valid JSON or has the wrong shape.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// An event's value has no equivalent in one of the encodings rewind serves (see
    /// [`crate::value`]).
    #[error("{path}: {reason}")]
    BadValue {
        /// Where, e.g. `data.k[3]` (prefixed with the batch item or NDJSON line).
        path: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// A position string is neither a number, `earliest` nor `latest`.
    #[error("bad position {0:?}: expected an offset, \"earliest\" or \"latest\"")]
    BadPosition(String),
    /// An idempotency key breaks the rule of [`crate::idempotency::validate_key`].
    #[error("bad idempotency key: {0}")]
    BadIdempotencyKey(&'static str),
    /// A payload is larger than the configured limit.
    #[error("payload of {size} bytes is over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// A batch has more events than the configured limit, or none.
    #[error("a batch must hold 1 to {limit} events, this one holds {size}")]
    BatchSize {
        /// Events in the batch.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl ProtocolError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::BadNamespace { .. } => ErrorCode::BadNamespace,
            ProtocolError::BadEventName(_)
            | ProtocolError::Malformed(_)
            | ProtocolError::BadValue { .. }
            | ProtocolError::BatchSize { .. }
            | ProtocolError::BadIdempotencyKey(_) => ErrorCode::BadFrame,
            ProtocolError::BadPosition(_) => ErrorCode::BadPosition,
            ProtocolError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn an_http_error_body_names_the_code_and_the_message() {
        let body: serde_json::Value =
            serde_json::from_str(&ErrorCode::NotFound.http_body("no \"n\"")).expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "not_found", "message": "no \"n\""}})
        );
    }
}
