//! [`Publisher`]: publishing over plain HTTP, for services that never subscribe.
//!
//! Every request carries an `Idempotency-Key`. When a request fails in a way that may have
//! left it appended (the connection broke before the answer, or the broker said 503 or
//! 429), it is sent again with the same key, so it is appended exactly once.
//!
//! Requests go through `reqwest` (connection pooling, HTTP/1.1, rustls for `https://`
//! with the roots described in [`crate::tls`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;

use crate::backoff::Backoff;
use crate::record::{Data, Record};
use crate::tls::{Certificate, TlsError};

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The URL is not `http://host:port` or `https://host:port`.
    #[error("bad broker URL {0:?}: expected http://host:port or https://host:port")]
    BadUrl(String),
    /// A root certificate in the options was refused.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The request was refused and nothing was appended; retrying the same request will
    /// not help. `status` is the broker's HTTP status, or the one it would have answered
    /// when the client refused the request before sending it (a namespace name that
    /// breaks the rules: 400 `bad_namespace`; bytes in a batch: 400 `bad_frame`).
    #[error("rejected with {status} {code}: {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The error code from the body.
        code: String,
        /// The message from the body.
        message: String,
    },
    /// The broker could not be reached or kept failing, after every retry.
    #[error("broker unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// How a [`Publisher`] retries, and whom it trusts. Its `Debug` shows whether a token is
/// set, never the token.
#[derive(Clone)]
pub struct PublisherOptions {
    /// Attempts per publish, the first included. Default 5.
    pub attempts: u32,
    /// Wait before the first retry; it doubles each time. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest wait between retries. Default 5 s.
    pub backoff_max: Duration,
    /// Longest time one attempt may take. Default 30 s.
    pub timeout: Duration,
    /// Root certificates trusted for `https://` besides the bundled Mozilla roots.
    /// Default none.
    pub root_certificates: Vec<Certificate>,
    /// A token for a broker that checks them (a JWT), sent as `Authorization: Bearer`
    /// with every publish. Default none.
    pub token: Option<String>,
}

impl std::fmt::Debug for PublisherOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherOptions")
            .field("attempts", &self.attempts)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("timeout", &self.timeout)
            .field("root_certificates", &self.root_certificates)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            attempts: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            root_certificates: Vec::new(),
            token: None,
        }
    }
}

/// The one way this project talks HTTP to a broker: a `reqwest` client builder for
/// HTTP/1.1 over TCP with `TCP_NODELAY`, or over rustls for `https://`, trusting the
/// bundled Mozilla roots plus `roots` ([`crate::tls`]), and following no redirect (a
/// 301/302 turns a POST into a GET). The [`Publisher`], the `rewind` command, its
/// benchmarks and the end-to-end tests all start from it and add what they need
/// (timeouts, pooling, no proxy). [`TlsError::Invalid`] when a root is refused.
pub fn http_client_builder(roots: &[Certificate]) -> Result<reqwest::ClientBuilder, TlsError> {
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .use_rustls_tls();
    for cert in roots {
        let cert = reqwest::Certificate::from_der(cert.der())
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

/// Offsets a publish got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The first event's offset.
    pub first: u64,
    /// The last event's offset (equal to `first` for one event).
    pub last: u64,
}

/// Publishes over HTTP. Requests may be sent from many tasks at once through one
/// `Publisher` (share it with an `Arc`); connections are pooled and kept alive.
pub struct Publisher {
    base: String,
    http: reqwest::Client,
    options: PublisherOptions,
    keys: AtomicU64,
    key_prefix: String,
}

/// One request, as sent on every attempt.
struct Outgoing<'a> {
    ns: &'a str,
    content_type: &'static str,
    query: String,
    body: Bytes,
    /// The `Idempotency-Key`, the same on every attempt.
    key: String,
}

/// What one attempt came to.
enum Attempt {
    Done(Published),
    Rejected(PublishError),
    Retry(String, Option<Duration>),
}

/// A refusal made before sending, with the status and code the broker would answer.
fn refuse(code: rewind_protocol::ErrorCode, message: impl Into<String>) -> PublishError {
    PublishError::Rejected {
        status: 400,
        code: code.as_str().to_owned(),
        message: message.into(),
    }
}

impl Publisher {
    /// A publisher for the broker at `url` (`http://host:port` or `https://host:port`).
    pub fn new(url: &str, options: PublisherOptions) -> Result<Publisher, PublishError> {
        let bad = || PublishError::BadUrl(url.to_owned());
        let (scheme, rest) = [("http", "http://"), ("https", "https://")]
            .iter()
            .find_map(|(scheme, prefix)| url.strip_prefix(prefix).map(|rest| (scheme, rest)))
            .ok_or_else(bad)?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        let http = http_client_builder(&options.root_certificates)
            .map_err(|e| PublishError::Tls(e.to_string()))?
            .build()
            .map_err(|e| PublishError::Tls(e.to_string()))?;
        let mut nonce = [0u8; 8];
        if getrandom::getrandom(&mut nonce).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nonce = nanos.to_be_bytes();
        }
        Ok(Publisher {
            base: format!("{scheme}://{authority}"),
            http,
            options,
            keys: AtomicU64::new(0),
            key_prefix: format!("{:016x}", u64::from_be_bytes(nonce)),
        })
    }

    /// Publishes one event without a key; returns its offset once durable. `data` is a
    /// JSON value (`&json!(...)` or owned), bytes (`Vec<u8>`, sent as
    /// `application/octet-stream`), or a [`Data`].
    pub async fn publish(
        &self,
        ns: &str,
        event: &str,
        data: impl Into<Data>,
    ) -> Result<u64, PublishError> {
        self.publish_record(ns, Record::new(event, data)).await
    }

    /// Publishes one event with a byte payload; returns its offset once durable.
    pub async fn publish_bytes(
        &self,
        ns: &str,
        event: &str,
        data: Vec<u8>,
    ) -> Result<u64, PublishError> {
        self.publish_record(ns, Record::new(event, data)).await
    }

    /// Publishes one event, with its key if the record has one; returns its offset once
    /// durable.
    pub async fn publish_record(&self, ns: &str, record: Record) -> Result<u64, PublishError> {
        let key = record.key.as_deref();
        let req = match record.data {
            Data::Json(v) => self.json(ns, json_item(&record.event, &v.to_string(), key)),
            Data::JsonText(t) => self.json(ns, json_item(&record.event, t.as_str(), key)),
            Data::Bytes(data) => {
                let mut query = form_query("event", &record.event);
                if let Some(key) = key {
                    query.push('&');
                    query.push_str(&form_query("key", key)[1..]);
                }
                Outgoing {
                    ns,
                    content_type: "application/octet-stream",
                    query,
                    body: data.into(),
                    key: self.next_key(),
                }
            }
        };
        Ok(self.send(req).await?.first)
    }

    /// Publishes events as one batch (consecutive offsets, all or nothing). Each item is
    /// a [`Record`] (keys allowed) or an `(event, value)` pair. A batch over HTTP is JSON,
    /// so every payload must be JSON: bytes are refused (400 `bad_frame`) before sending.
    pub async fn publish_batch<R: Into<Record>>(
        &self,
        ns: &str,
        records: impl IntoIterator<Item = R>,
    ) -> Result<Published, PublishError> {
        let mut body = String::from("[");
        for r in records {
            let r: Record = r.into();
            let Some(text) = r.data.json_str() else {
                return Err(refuse(
                    rewind_protocol::ErrorCode::BadFrame,
                    "a batch over HTTP carries JSON payloads only; publish bytes one by one",
                ));
            };
            if body.len() > 1 {
                body.push(',');
            }
            body.push_str(&json_item(&r.event, &text, r.key.as_deref()));
        }
        body.push(']');
        self.send(self.json(ns, body)).await
    }

    fn json<'a>(&self, ns: &'a str, body: String) -> Outgoing<'a> {
        Outgoing {
            ns,
            content_type: "application/json",
            query: String::new(),
            body: body.into(),
            key: self.next_key(),
        }
    }

    fn next_key(&self) -> String {
        format!(
            "{}-{}",
            self.key_prefix,
            self.keys.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Sends a request, retrying what may be retried.
    async fn send(&self, req: Outgoing<'_>) -> Result<Published, PublishError> {
        // The name goes into the URL path: one that breaks the rules could change the
        // path (`..`), so it is refused here with the broker's code.
        rewind_protocol::validate_namespace(req.ns).map_err(|e| refuse(e.code(), e.to_string()))?;
        let mut backoff = Backoff::new(self.options.backoff_min, self.options.backoff_max);
        let mut last = String::new();
        for attempt in 1..=self.options.attempts.max(1) {
            match self.attempt(&req).await {
                Attempt::Done(p) => return Ok(p),
                Attempt::Rejected(e) => return Err(e),
                Attempt::Retry(why, retry_after) => {
                    last = why;
                    if attempt < self.options.attempts {
                        let wait = backoff.next_wait();
                        tokio::time::sleep(retry_after.unwrap_or(wait).min(backoff.max())).await;
                    }
                }
            }
        }
        Err(PublishError::Unavailable {
            attempts: self.options.attempts.max(1),
            last,
        })
    }

    async fn attempt(&self, out: &Outgoing<'_>) -> Attempt {
        let url = format!("{}/v1/namespaces/{}/events{}", self.base, out.ns, out.query);
        let mut req = self
            .http
            .post(url)
            .header("content-type", out.content_type)
            .header("idempotency-key", &out.key)
            .timeout(self.options.timeout)
            .body(out.body.clone());
        if let Some(token) = &self.options.token {
            req = req.bearer_auth(token);
        }
        let sent = req.send().await;
        let res = match sent {
            Ok(res) => res,
            Err(e) if e.is_builder() => {
                return Attempt::Rejected(PublishError::BadUrl(e.to_string()))
            }
            // Connecting failed, the connection broke, or the attempt timed out: the
            // outcome is unknown.
            Err(e) => return Attempt::Retry(error_chain(&e), None),
        };
        let status = res.status();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        if status.is_redirection() {
            let to = res
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere")
                .to_owned();
            return Attempt::Rejected(PublishError::Rejected {
                status: status.as_u16(),
                code: "redirect".into(),
                message: format!("redirected to {to}; redirects are not followed: use that URL"),
            });
        }
        let body = match res.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::Retry(error_chain(&e), None),
        };
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if status == StatusCode::CREATED {
            let first = json["offset"].as_u64().or_else(|| json["first"].as_u64());
            let last = json["offset"].as_u64().or_else(|| json["last"].as_u64());
            return match (first, last) {
                (Some(first), Some(last)) => Attempt::Done(Published { first, last }),
                _ => Attempt::Retry(format!("unexpected answer {json}"), None),
            };
        }
        let code = json["error"]["code"].as_str().unwrap_or("").to_owned();
        let message = json["error"]["message"].as_str().unwrap_or("").to_owned();
        let transient = matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) || (status.is_server_error()
            && status != StatusCode::INSUFFICIENT_STORAGE);
        if transient {
            return Attempt::Retry(format!("{status} {code}: {message}"), retry_after);
        }
        Attempt::Rejected(PublishError::Rejected {
            status: status.as_u16(),
            code,
            message,
        })
    }
}

/// An error with its causes, which say what actually failed (reqwest's own message is
/// only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// One event as the JSON object of a publish body, `data` as the given JSON text (not
/// parsed again, so checked text goes out exactly as written).
fn json_item(event: &str, data: &str, key: Option<&str>) -> String {
    let quoted = |s: &str| serde_json::Value::from(s).to_string();
    let mut item = format!("{{\"event\":{},\"data\":{data}", quoted(event));
    if let Some(key) = key {
        item.push_str(",\"key\":");
        item.push_str(&quoted(key));
    }
    item.push('}');
    item
}

/// `?NAME=VALUE` with the value percent-encoded.
fn form_query(name: &str, value: &str) -> String {
    let mut out = format!("?{name}=");
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let options = PublisherOptions {
            token: Some("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl".into()),
            ..PublisherOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("c2lnbmF0dXJl"), "{shown}");
        assert!(shown.contains("token: Some(\"<redacted>\")"), "{shown}");
        assert!(format!("{:?}", PublisherOptions::default()).contains("token: None"));
    }

    #[test]
    fn urls_must_be_http_or_https_host_port() {
        assert!(Publisher::new("http://127.0.0.1:7070", PublisherOptions::default()).is_ok());
        assert!(Publisher::new("http://127.0.0.1:7070/", PublisherOptions::default()).is_ok());
        assert!(Publisher::new("https://broker.example:443", PublisherOptions::default()).is_ok());
        for bad in [
            "ftp://x:1",
            "127.0.0.1:7070",
            "http://x:1/v1",
            "https://",
            "nope",
        ] {
            assert!(
                Publisher::new(bad, PublisherOptions::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn event_names_are_percent_encoded() {
        assert_eq!(form_query("event", "a b/ü"), "?event=a%20b%2F%C3%BC");
    }

    #[test]
    fn keys_are_unique_per_publisher() {
        let p = Publisher::new("http://127.0.0.1:1", PublisherOptions::default()).unwrap();
        assert_ne!(p.next_key(), p.next_key());
    }
}
