//! The benchmarks' HTTP: the client crate's one HTTP client setup
//! ([`rewind_client::http_client_builder`], reqwest), one keep-alive HTTP/1.1 connection
//! per [`Http`], opened before the first timed request.

use std::net::SocketAddr;

use bytes::Bytes;
use rewind_client::reqwest::{Client, Method, StatusCode};

use super::{err, BenchError};

/// One keep-alive connection's worth of client to a broker on loopback.
pub(super) struct Http {
    client: Client,
    base: String,
}

impl Http {
    /// A client for the broker at `addr`, its connection opened by a `GET /healthz`
    /// (which must answer 2xx), so the first timed request does not pay for the connect.
    pub(super) async fn connect(addr: SocketAddr) -> Result<Http, BenchError> {
        let client = rewind_client::http_client_builder(&[])
            .map_err(err)?
            .no_proxy()
            .pool_max_idle_per_host(1)
            .build()
            .map_err(err)?;
        let http = Http {
            client,
            base: format!("http://{addr}"),
        };
        http.send(Method::GET, "/healthz", None, Bytes::new(), |s| {
            s.is_success()
        })
        .await?;
        Ok(http)
    }

    /// Sends a request and reads its whole answer; an answer `wanted` refuses is an error
    /// naming the request, the status and the body.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        wanted: fn(StatusCode) -> bool,
    ) -> Result<Bytes, BenchError> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let res = req.send().await.map_err(err)?;
        let status = res.status();
        let answer = res.bytes().await.map_err(err)?;
        if !wanted(status) {
            return Err(err(format!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&answer)
            )));
        }
        Ok(answer)
    }

    /// `POST`s a JSON publish body to `ns`; anything but 201 is an error.
    pub(super) async fn publish(&self, ns: &str, body: Bytes) -> Result<(), BenchError> {
        self.send(
            Method::POST,
            &format!("/v1/namespaces/{ns}/events"),
            Some("application/json"),
            body,
            |s| s == StatusCode::CREATED,
        )
        .await
        .map(drop)
    }
}
