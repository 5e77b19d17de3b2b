//! Tokens on HTTP (`docs/security.md`, "Tokens"): one middleware over every route, which
//! finds what a request needs from its method and path, verifies its token, and hands
//! the handler the [`Grant`] (the WebSocket upgrade passes it on to its session).
//!
//! - The token: `Authorization: Bearer <jwt>`, else the query parameter `token` (browsers
//!   cannot set headers on a WebSocket or an `EventSource`). A second `Authorization`
//!   header is `400 bad_frame`, on every route and the WebSocket upgrade. The request log and the
//!   trace print the path without its query, so never a token.
//! - No token, or one not taken: `401 unauthorized` with `WWW-Authenticate: Bearer` (RFC
//!   6750 §3) and the reason. A good token that does not allow the request: `403
//!   forbidden`. Both before the handler runs, so a refused request creates nothing.
//! - Deny by default: open to all are only the paths of [`OPEN`] (`/healthz`, `/readyz`,
//!   the browser files `/`, `/rewind.js`, `/rewind.d.ts`, `/dashboard/*`) and `OPTIONS`
//!   preflights (answered by the CORS layer before this). Every other path, unknown ones
//!   and unknown methods included, needs a taken token before its `404` or `405`.
//! - An SSE stream ends when its token expires, after `event: rewind.closed` with
//!   `{"reason": "token_expired"}`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::Method;
use rewind_protocol::{validate_namespace, ErrorCode};

use super::params;
use super::response::ApiError;
use crate::auth::{Auth, Grant, Refusal, Subject};

/// What a route needs of a token.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    /// Nothing: open to all.
    Nothing,
    /// A token that is taken, whatever it allows.
    Token,
    /// `admin: true`.
    Admin,
    /// A `publish` pattern matching the namespace.
    Publish(String),
    /// A `subscribe` pattern matching the namespace.
    Subscribe(String),
    /// A `subscribe` pattern matching the namespace, for an SSE stream.
    Stream(String),
    /// Either pattern matching the namespace, or `admin`.
    See(String),
}

/// The paths open to all, whatever the method: health, readiness and the browser files
/// (`/dashboard/` and every file under it). Everything else needs a token.
const OPEN: &[&str] = &["/", "/healthz", "/readyz", "/rewind.js", "/rewind.d.ts"];

/// Whether `path` is on the open list ([`OPEN`], or a file under `/dashboard/`).
fn is_open(path: &str) -> bool {
    OPEN.contains(&path)
        || path
            .strip_prefix("/dashboard/")
            .is_some_and(|file| !file.is_empty() && !file.contains('/'))
}

impl Need {
    /// What `method path` needs: its declared requirement, else a token (deny by
    /// default: a route nobody classified, an unknown path or method, is never open).
    fn of(method: &Method, path: &str) -> Need {
        Need::declared(method, path).unwrap_or(Need::Token)
    }

    /// The requirement declared for `method path`; `None` when none is.
    fn declared(method: &Method, path: &str) -> Option<Need> {
        if is_open(path) {
            return Some(Need::Nothing);
        }
        let read = matches!(*method, Method::GET | Method::HEAD);
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["", "metrics"] if read => Some(Need::Admin),
            ["", "v1", "ws"] if read => Some(Need::Token),
            ["", "v1", "namespaces"] if read => Some(Need::Token),
            ["", "v1", "namespaces", ns, rest @ ..] => {
                // A name that breaks the rules is the handler's `400 bad_namespace`,
                // once the token is known to be good.
                let Some(ns) = params::segment(ns).filter(|n| validate_namespace(n).is_ok()) else {
                    return Some(Need::Token);
                };
                match (rest, method) {
                    ([], _) if read => Some(Need::See(ns)),
                    ([], &Method::PUT | &Method::DELETE) => Some(Need::Admin),
                    (["events"], &Method::POST) => Some(Need::Publish(ns)),
                    (["events"], _) if read => Some(Need::Subscribe(ns)),
                    (["sse"], _) if read => Some(Need::Stream(ns)),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Whether `method path` has a declared requirement (the route walk of `http` checks
/// every route of the table has one for `GET`).
#[cfg(test)]
pub(super) fn declared(method: &Method, path: &str) -> bool {
    Need::declared(method, path).is_some()
}

/// The request's token: the `Authorization: Bearer` header's, else `?token=`'s; `Err`
/// with the reason when the header is not a bearer token or `token` is unreadable. No
/// reason quotes what was sent, so a refusal never echoes a token.
fn token_of(req: &Request) -> Result<Option<String>, String> {
    if let Some(value) = req.headers().get(AUTHORIZATION) {
        let text = value.to_str().unwrap_or_default();
        return match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Ok(Some(token.trim().to_owned()))
            }
            _ => Err("Authorization must be Bearer <token>".into()),
        };
    }
    // A fixed message: the parameter's own (which quotes the value) would echo the token.
    params::Query::parse(req.uri().query())
        .get("token", ErrorCode::Unauthorized)
        .map_err(|_| {
            "the token query parameter must be given once, UTF-8 once percent-decoded".into()
        })
}

/// `401 unauthorized` with its `WWW-Authenticate` (`error="invalid_token"` when a token
/// was sent, RFC 6750 §3.1).
fn unauthorized(message: String, sent: bool) -> Response {
    let mut res = ApiError::of(ErrorCode::Unauthorized, message).response();
    let challenge = if sent {
        "Bearer realm=\"rewind\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"rewind\""
    };
    res.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    res.into_response()
}

/// `403 forbidden` (`error="insufficient_scope"`, RFC 6750 §3.1).
fn forbidden(refusal: Refusal) -> Response {
    let mut res = ApiError::of(refusal.code, refusal.message).response();
    res.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"rewind\", error=\"insufficient_scope\""),
    );
    res.into_response()
}

/// The middleware, over every route and the fallback: with authentication off, every
/// request goes on with the open grant; with it on, a request goes on with its token's
/// grant, or with none on an open path (a handler finding no grant refuses, [`grant_of`]).
pub(super) async fn guard(
    State(auth): State<Option<Arc<Auth>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(auth) = auth else {
        req.extensions_mut().insert(Grant::open());
        return next.run(req).await;
    };
    let need = Need::of(req.method(), req.uri().path());
    if need == Need::Nothing {
        return next.run(req).await;
    }
    // No copy silently wins, as with every header read once (`http-api.md`).
    if req.headers().get_all(AUTHORIZATION).iter().nth(1).is_some() {
        return ApiError::bad_request(
            "the Authorization header appears more than once; send it once",
        )
        .into_response();
    }
    let token = match token_of(&req) {
        Ok(Some(token)) => token,
        Ok(None) => {
            return unauthorized(
                "this broker needs a token: Authorization: Bearer <token>, or ?token=".into(),
                false,
            )
        }
        Err(why) => return unauthorized(why, true),
    };
    let grant = match auth.verify(&token) {
        Ok(grant) => grant,
        Err(e) => return unauthorized(e.to_string(), true),
    };
    let allowed = match &need {
        Need::Nothing | Need::Token => Ok(()),
        Need::Admin => grant.may_admin(),
        Need::Publish(ns) => grant.may_publish(ns),
        Need::Subscribe(ns) | Need::Stream(ns) => grant.may_subscribe(ns),
        Need::See(ns) if grant.may_see(ns) => Ok(()),
        Need::See(ns) => Err(Refusal {
            code: ErrorCode::Forbidden,
            message: format!("the token allows nothing on {ns}"),
        }),
    };
    // The request log names the token's `sub` on a `403` too.
    let subject = grant.subject().map(|s| Subject(s.to_owned()));
    if let Err(refusal) = allowed {
        let mut res = forbidden(refusal);
        if let Some(subject) = subject {
            res.extensions_mut().insert(subject);
        }
        return res;
    }
    let remaining = grant.remaining();
    req.extensions_mut().insert(grant);
    let mut res = next.run(req).await;
    if let Some(subject) = subject {
        res.extensions_mut().insert(subject);
    }
    match (need, remaining) {
        (Need::Stream(_), Some(left)) if res.status().is_success() => {
            res.map(|body| AxumBody::new(UntilExpiry::new(body, left)))
        }
        _ => res,
    }
}

/// The grant [`guard`] gave the request (the open one when authentication is off); a
/// request without one is refused `401`, never let through.
pub(super) fn grant_of(grant: Option<axum::Extension<Grant>>) -> Result<Grant, ApiError> {
    grant.map(|g| g.0).ok_or_else(|| {
        ApiError::of(
            ErrorCode::Unauthorized,
            "this route was reached without a checked token",
        )
    })
}

/// An SSE body that ends when its token expires, with a last `rewind.closed`.
struct UntilExpiry {
    inner: AxumBody,
    expiry: Pin<Box<tokio::time::Sleep>>,
    /// The last message has been sent: the stream is over.
    done: bool,
}

/// The message an SSE stream ends with when its token expires. Its `id` is left alone,
/// so a reconnect with a new token resumes after the last event.
const EXPIRED: &[u8] = b"event: rewind.closed\ndata: {\"reason\":\"token_expired\"}\n\n";

impl UntilExpiry {
    fn new(inner: AxumBody, left: Duration) -> UntilExpiry {
        UntilExpiry {
            inner,
            expiry: Box::pin(tokio::time::sleep(left)),
            done: false,
        }
    }
}

impl HttpBody for UntilExpiry {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.expiry.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(EXPIRED)))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_what_it_touches() {
        let need = |m: Method, p: &str| Need::of(&m, p);
        assert_eq!(need(Method::GET, "/healthz"), Need::Nothing);
        assert_eq!(need(Method::GET, "/readyz"), Need::Nothing);
        assert_eq!(need(Method::GET, "/rewind.js"), Need::Nothing);
        assert_eq!(need(Method::GET, "/metrics"), Need::Admin);
        assert_eq!(need(Method::GET, "/v1/ws"), Need::Token);
        assert_eq!(need(Method::GET, "/v1/namespaces"), Need::Token);
        assert_eq!(
            need(Method::GET, "/v1/namespaces/a.b"),
            Need::See("a.b".into())
        );
        assert_eq!(need(Method::PUT, "/v1/namespaces/a"), Need::Admin);
        assert_eq!(need(Method::DELETE, "/v1/namespaces/a"), Need::Admin);
        assert_eq!(
            need(Method::POST, "/v1/namespaces/l%6Fgs.a/events"),
            Need::Publish("logs.a".into())
        );
        assert_eq!(
            need(Method::HEAD, "/v1/namespaces/a/events"),
            Need::Subscribe("a".into())
        );
        assert_eq!(
            need(Method::GET, "/v1/namespaces/a/sse"),
            Need::Stream("a".into())
        );
        assert_eq!(need(Method::GET, "/v1/namespaces/a%FF/events"), Need::Token);
        assert_eq!(need(Method::PATCH, "/v1/namespaces/a/events"), Need::Token);
        assert_eq!(need(Method::POST, "/metrics"), Need::Token);
        assert_eq!(need(Method::GET, "/v2/unknown"), Need::Token);
        assert_eq!(need(Method::GET, "/dashboard/app.js"), Need::Nothing);
        assert_eq!(need(Method::GET, "/dashboard/a/b"), Need::Token);
    }
}
