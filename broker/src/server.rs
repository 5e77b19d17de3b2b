//! The accept loop: one port, a cap on connections, and graceful shutdown.
//!
//! Each connection is served by hyper's HTTP/1 connection (with upgrades) running the axum
//! `http::router`; the server adds the WebSocket route to it, so `http` and `ws` never
//! use each other. Shutdown is one signal, the [`Log`]'s cancellation token
//! ([`Log::begin_shutdown`]), and three [`TaskTracker`]s: the requests being answered, the
//! connections and the WebSocket sessions, each waited for within `shutdown_timeout_secs`.
//! Connections stay open (answering `503 shutting_down`) until the requests in flight at
//! the signal are done; only then are idle ones closed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Log;
use crate::http;
use crate::metrics::{Peer, Transport};
use crate::ws::{self, WsContext};

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// On shutdown, how long a connection that has not sent its first request yet gets to
/// send it (it is then answered as in [`http::draining`]).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown` completes. Then it reports not ready, wakes waiting
/// readers, closes WebSockets with 1001, gives in-flight requests up to
/// `shutdown_timeout_secs` to finish (answering new requests meanwhile with 503, and
/// `/readyz` with 503), lets the writer commit everything queued, and returns.
pub async fn run(listener: TcpListener, log: Log, shutdown: impl Future<Output = ()>) {
    let connections = TaskTracker::new();
    let sessions = TaskTracker::new();
    // The requests being answered (not the idle connections), and the signal that they
    // and the sessions are done once shutdown has begun.
    let requests = TaskTracker::new();
    let drained = CancellationToken::new();
    let ws = WsContext::new(log.clone(), sessions.clone());
    let upgrade = get(move |req: Request| {
        let res = ws::upgrade(req, &ws);
        async move { res }
    });
    let router = http::router(log.clone(), upgrade);
    let slots = Arc::new(Semaphore::new(log.config().max_connections));
    tokio::pin!(shutdown);
    loop {
        // Waiting for a slot before accepting leaves further connections in the kernel's
        // backlog instead of taking memory here.
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let open = log.metrics().http_connection();
        let conn_router = router.clone();
        let conn_log = log.clone();
        let conn_requests = requests.clone();
        let served = Arc::new(AtomicBool::new(false));
        let conn_served = Arc::clone(&served);
        let service = service_fn(move |mut req: Request<Incoming>| {
            conn_served.store(true, Ordering::Relaxed);
            let router = conn_router.clone();
            let log = conn_log.clone();
            let in_flight = conn_requests.token();
            async move {
                let line = RequestLine::of(&req, peer);
                req.extensions_mut().insert(Peer(peer));
                // A request that starts once shutdown has begun is no new work.
                let res = if log.is_ready() {
                    http::serve(router, req).await
                } else {
                    http::draining(&req, &log)
                };
                line.answered(&log, &res);
                drop(in_flight);
                Ok::<_, Infallible>(res)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = log.shutdown_signal();
        let drained = drained.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stop.cancelled() => {
                    // While in-flight work drains, the connection stays open: a request
                    // sent on it meanwhile is answered `503 shutting_down` (and the
                    // connection closed after that answer), not met by a closed socket.
                    let during = tokio::select! {
                        ended = conn.as_mut() => Some(ended),
                        () = drained.cancelled() => None,
                    };
                    // Accepted just before the signal and its first request not read yet
                    // (often a health check): closing it now would leave that client with
                    // no answer at all, so it gets a moment to be answered under the
                    // draining rules (which close the connection).
                    let early = if during.is_some() {
                        during
                    } else if served.load(Ordering::Relaxed) {
                        None
                    } else {
                        tokio::time::timeout(FIRST_REQUEST_GRACE, conn.as_mut()).await.ok()
                    };
                    match early {
                        Some(ended) => ended,
                        None => {
                            // Finish the request in flight, then close; idle keep-alives
                            // close now.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        });
    }
    // Ready no more from here; the listener stays open while in-flight work drains, so
    // health checks get 503 instead of a refused connection (see `http::draining`).
    log.begin_shutdown();
    tracing::info!("shutting down: new requests get 503");
    // At most a century, so the deadline can be computed however large the option.
    let grace = crate::config::seconds(log.config().shutdown_timeout_secs);
    let deadline = tokio::time::Instant::now() + grace;
    // No task is added to either tracker from here (the accept loop is over, and a
    // session starts only from a connection's request), so each wait ends when its last
    // task does.
    connections.close();
    sessions.close();
    requests.close();
    let drain = async {
        // In-flight requests first, while every connection still answers `503`; then
        // the idle connections close. (A request sent on an idle connection as it closes
        // meets a closed socket, as on any HTTP server: clients retry those on a new one.)
        let in_flight = tokio::time::timeout_at(deadline, requests.wait()).await;
        drained.cancel();
        if in_flight.is_err()
            || tokio::time::timeout_at(deadline, connections.wait())
                .await
                .is_err()
        {
            tracing::warn!("connections still open after the shutdown timeout");
        }
        // WebSocket sessions saw `begin_shutdown` and are sending 1001.
        if tokio::time::timeout_at(deadline, sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = sessions.len(),
                "WebSocket sessions still open after the shutdown timeout"
            );
        }
    };
    serve_draining(&listener, &log, &slots, drain).await;
    drop(listener);
    log.shutdown().await;
    tracing::info!("shutdown complete");
}

/// Accepts connections until `drain` completes and answers each one's requests with
/// [`http::draining`], one request per connection. Those connections end with this
/// function.
async fn serve_draining(
    listener: &TcpListener,
    log: &Log,
    slots: &Arc<Semaphore>,
    drain: impl Future<Output = ()>,
) {
    tokio::pin!(drain);
    // Cancelled on return: the connections still being answered are dropped with it.
    let done = CancellationToken::new();
    let _cancel_on_return = done.clone().drop_guard();
    loop {
        let permit = tokio::select! {
            () = &mut drain => return,
            permit = Arc::clone(slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut drain => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let log = log.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let line = RequestLine::of(&req, peer);
            let res = http::draining(&req, &log);
            line.answered(&log, &res);
            async move { Ok::<_, Infallible>(res) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service);
        let done = done.clone();
        tokio::spawn(async move {
            let _ = done.run_until_cancelled(conn).await;
            drop(permit);
        });
    }
}

/// One request as the request log writes it: `info` for every request but the scrapes
/// and probes (`/metrics`, `/healthz`, `/readyz`: `debug`), and the WebSocket upgrade
/// (`debug`: its session has a line of its own when it ends). The path is logged without
/// its query, which may carry a token. Its duration runs until the answer's head is
/// ready (bodies are whole by then).
struct RequestLine {
    method: hyper::Method,
    path: String,
    peer: std::net::SocketAddr,
    started: std::time::Instant,
}

impl RequestLine {
    fn of<B>(req: &Request<B>, peer: std::net::SocketAddr) -> RequestLine {
        RequestLine {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            peer,
            started: std::time::Instant::now(),
        }
    }

    /// Logs the answer `res`, and counts it if it is an error with a code.
    fn answered<B>(self, log: &Log, res: &hyper::Response<B>) {
        if let Some(code) = res.extensions().get::<rewind_protocol::ErrorCode>() {
            log.metrics().refused(Transport::Http, code.as_str());
        }
        let status = res.status().as_u16();
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let (method, path, peer) = (self.method.as_str(), self.path.as_str(), self.peer);
        let quiet = matches!(path, "/metrics" | "/healthz" | "/readyz") || status == 101;
        if quiet {
            tracing::debug!(method, path, status, duration_ms, %peer, "request");
        } else {
            tracing::info!(method, path, status, duration_ms, %peer, "request");
        }
    }
}
