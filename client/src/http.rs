//! [`Publisher`]: publishing over plain HTTP, for services that never subscribe.
//!
//! Every request carries an `Idempotency-Key`. When a request fails in a way that may have
//! left it appended (the connection broke before the answer, or the broker said 503 or
//! 429), it is sent again with the same key, so it is appended exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The URL is not `http://host:port`.
    #[error("bad broker URL {0:?}: expected http://host:port")]
    BadUrl(String),
    /// The broker refused the request; retrying the same request will not help.
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

/// How a [`Publisher`] retries.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Attempts per publish, the first included. Default 5.
    pub attempts: u32,
    /// Wait before the first retry; it doubles each time. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest wait between retries. Default 5 s.
    pub backoff_max: Duration,
    /// Longest time one attempt may take. Default 30 s.
    pub timeout: Duration,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            attempts: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Offsets a publish got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The first event's offset.
    pub first: u64,
    /// The last event's offset (equal to `first` for one event).
    pub last: u64,
}

/// Publishes over HTTP with one keep-alive connection. One request is in flight at a time;
/// make one `Publisher` per concurrent task for more.
pub struct Publisher {
    authority: String,
    options: PublisherOptions,
    conn: Mutex<Option<SendRequest<Full<Bytes>>>>,
    keys: AtomicU64,
    key_prefix: String,
}

/// One request, as sent on every attempt.
struct Outgoing<'a> {
    ns: &'a str,
    content_type: &'a str,
    query: &'a str,
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

impl Publisher {
    /// A publisher for the broker at `url` (`http://host:port`).
    pub fn new(url: &str, options: PublisherOptions) -> Result<Publisher, PublishError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| PublishError::BadUrl(url.to_owned()))?;
        if uri.scheme_str() != Some("http") || !uri.path().trim_end_matches('/').is_empty() {
            return Err(PublishError::BadUrl(url.to_owned()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| PublishError::BadUrl(url.to_owned()))?
            .to_string();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Publisher {
            authority,
            options,
            conn: Mutex::new(None),
            keys: AtomicU64::new(0),
            key_prefix: format!("{:x}-{:x}", std::process::id(), nanos),
        })
    }

    /// Publishes one event with a JSON payload; returns its offset once durable.
    pub async fn publish(
        &self,
        ns: &str,
        event: &str,
        data: &serde_json::Value,
    ) -> Result<u64, PublishError> {
        let body = serde_json::json!({ "event": event, "data": data }).to_string();
        Ok(self.send(self.json(ns, body)).await?.first)
    }

    /// Publishes one event with a byte payload; returns its offset once durable.
    pub async fn publish_bytes(
        &self,
        ns: &str,
        event: &str,
        data: Vec<u8>,
    ) -> Result<u64, PublishError> {
        let query = form_query(event);
        let req = Outgoing {
            ns,
            content_type: "application/octet-stream",
            query: &query,
            body: data.into(),
            key: self.next_key(),
        };
        Ok(self.send(req).await?.first)
    }

    /// Publishes events as one batch (consecutive offsets, all or nothing).
    pub async fn publish_batch(
        &self,
        ns: &str,
        events: &[(&str, serde_json::Value)],
    ) -> Result<Published, PublishError> {
        let items: Vec<serde_json::Value> = events
            .iter()
            .map(|(event, data)| serde_json::json!({ "event": event, "data": data }))
            .collect();
        let body = serde_json::Value::Array(items).to_string();
        self.send(self.json(ns, body)).await
    }

    fn json<'a>(&self, ns: &'a str, body: String) -> Outgoing<'a> {
        Outgoing {
            ns,
            content_type: "application/json",
            query: "",
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
        let mut backoff = self.options.backoff_min;
        let mut last = String::new();
        for attempt in 1..=self.options.attempts.max(1) {
            let outcome = tokio::time::timeout(self.options.timeout, self.attempt(&req))
                .await
                .unwrap_or_else(|_| Attempt::Retry("timed out".into(), None));
            match outcome {
                Attempt::Done(p) => return Ok(p),
                Attempt::Rejected(e) => return Err(e),
                Attempt::Retry(why, retry_after) => {
                    last = why;
                    *self.conn.lock().await = None;
                    if attempt < self.options.attempts {
                        tokio::time::sleep(
                            retry_after.unwrap_or(backoff).min(self.options.backoff_max),
                        )
                        .await;
                        backoff = (backoff * 2).min(self.options.backoff_max);
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
        let mut conn = self.conn.lock().await;
        let usable = match conn.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            match self.connect().await {
                Ok(s) => *conn = Some(s),
                Err(e) => return Attempt::Retry(e, None),
            }
        }
        let Some(sender) = conn.as_mut() else {
            return Attempt::Retry("no connection".into(), None);
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/namespaces/{}/events{}", out.ns, out.query))
            .header("host", &self.authority)
            .header("content-type", out.content_type)
            .header("idempotency-key", &out.key)
            .body(Full::new(out.body.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Attempt::Rejected(PublishError::BadUrl(e.to_string())),
        };
        let res = match sender.send_request(req).await {
            Ok(res) => res,
            Err(e) => return Attempt::Retry(e.to_string(), None),
        };
        let status = res.status();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match res.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Attempt::Retry(e.to_string(), None),
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

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// `?event=NAME` with the name percent-encoded.
fn form_query(event: &str) -> String {
    let mut out = String::from("?event=");
    for b in event.bytes() {
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
    fn urls_must_be_plain_http_host_port() {
        assert!(Publisher::new("http://127.0.0.1:7070", PublisherOptions::default()).is_ok());
        assert!(Publisher::new("http://127.0.0.1:7070/", PublisherOptions::default()).is_ok());
        for bad in ["https://x:1", "127.0.0.1:7070", "http://x:1/v1", "nope"] {
            assert!(
                Publisher::new(bad, PublisherOptions::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn event_names_are_percent_encoded() {
        assert_eq!(form_query("a b/ü"), "?event=a%20b%2F%C3%BC");
    }

    #[test]
    fn keys_are_unique_per_publisher() {
        let p = Publisher::new("http://127.0.0.1:1", PublisherOptions::default()).unwrap();
        assert_ne!(p.next_key(), p.next_key());
    }
}
