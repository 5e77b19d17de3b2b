//! Building responses: JSON bodies and the `{"error": {"code", "message"}}` shape.

use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use rewind_protocol::{ErrorCode, ProtocolError};

use crate::engine::LogError;

/// The body type of every response the handlers build (axum boxes it on the way out).
pub(crate) type Body = Full<Bytes>;

/// A response with a body of `content_type`.
pub(crate) fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    with_body(status, "application/json", value.to_string())
}

/// An empty response.
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = status;
    res
}

/// An HTTP error: its status, code and message.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error code.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// For 405: the `Allow` header.
    pub allow: Option<String>,
}

impl ApiError {
    /// An error with the given parts.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// An error with `code` and the status that code is answered with
    /// ([`ErrorCode::http_status`]).
    pub fn of(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, code, message)
    }

    /// 400 with `bad_frame`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, message)
    }

    /// The response (body: [`ErrorCode::http_body`]). A 503 or 429 carries
    /// `Retry-After: 1`; a 408 carries `Connection: close`: the rest of that body may
    /// still come, and is not read.
    pub fn response(self) -> Response<Body> {
        let mut res = with_body(
            self.status,
            "application/json",
            self.code.http_body(&self.message),
        );
        res.extensions_mut().insert(self.code);
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            res.headers_mut().insert(ALLOW, allow);
        }
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            res.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        self.response().into_response()
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        ApiError::of(e.code(), e.to_string())
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        ApiError::of(e.code(), e.to_string())
    }
}
