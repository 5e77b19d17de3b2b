//! The accept loop: one port, a cap on connections, and graceful shutdown.
//!
//! Each connection is served by hyper's HTTP/1 connection (with upgrades) running the axum
//! `http::router`; the server adds the WebSocket route to it, so `http` and `ws` never
//! use each other. Shutdown is one signal, the [`Log`]'s cancellation token
//! ([`Log::begin_shutdown`]), and three [`TaskTracker`]s: the requests being answered, the
//! connections and the WebSocket sessions, each waited for within `shutdown_timeout_secs`.
//! Connections stay open (answering `503 shutting_down`) until the requests in flight at
//! the signal are done; only then are idle ones closed.
//!
//! Limits (`docs/operations.md`, "Limits"; [`crate::limits`]): each accepted connection is
//! checked against its address's limits first (refused ones are answered and closed
//! without a slot), then takes a slot; with none free, an idle connection is closed to make
//! room (one its client closed first, never one with a request waiting unread in its
//! socket: [`IdleConnections::take_slot`]). hyper enforces the head's deadline, size and
//! header count; the service refuses transfer codings other than `chunked` before routing,
//! and hands each request its connection's [`PublishRate`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
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
use crate::limits::{
    IdleConnections, IdleState, PeerGuard, PeerLimits, PublishRate, Refusal, Slot,
};
use crate::metrics::{Peer, Transport};
use crate::ws::{self, WsContext};

/// How long a refused connection (`max_connections_per_ip`,
/// `new_connections_per_sec_per_ip`) is kept to read what the client sends after its
/// answer, so that closing it does not reset the connection before the answer is read.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// On shutdown, how long a connection that has not sent its first request yet gets to
/// send it (it is then answered as in [`http::draining`]).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown` completes. Then it reports not ready, wakes waiting
/// readers, closes WebSockets with 1001, gives in-flight requests up to
/// `shutdown_timeout_secs` to finish (answering new requests meanwhile with 503, and
/// `/readyz` with 503), lets the writer commit everything queued, and returns.
///
/// With tokens configured (`crate::auth`), their keys are read first; keys that cannot be
/// read are logged and nothing is served (the binary checks them before it listens).
pub async fn run(listener: TcpListener, log: Log, shutdown: impl Future<Output = ()>) {
    let auth = match crate::auth::Auth::from_config(log.config()) {
        Ok(auth) => auth,
        Err(e) => {
            tracing::error!(error = %e, "not serving");
            return;
        }
    };
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
    let origins = Arc::new(http::cors::Origins::new(
        &log.config().allowed_origins.0,
        bound_address(&listener),
    ));
    let router = http::router(log.clone(), upgrade, Arc::clone(&origins), auth);
    let slots = Arc::new(Semaphore::new(log.config().max_connections));
    let peers = PeerLimits::new(
        log.config().max_connections_per_ip,
        log.config().new_connections_per_sec_per_ip,
    );
    let builder = http1_builder(&log);
    let idle = IdleConnections::default();
    // A connection accepted but still waiting for a slot when shutdown begins: answered
    // by the draining server, never dropped unanswered.
    let mut waiting = None;
    tokio::pin!(shutdown);
    loop {
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
        let admitted = match peers.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                // A refused connection takes no slot: its answer is written at once.
                tokio::spawn(refused(&log, stream, peer, refusal));
                continue;
            }
        };
        // With every slot taken, an idle connection (a slowloris still sending its head,
        // one that never sent a byte, an idle keep-alive, or one whose peer has closed it)
        // is closed to make room; with none, this one waits for a slot, and further ones
        // in the kernel's backlog.
        let permit = tokio::select! {
            permit = free_slot(&idle, &slots) => permit,
            () = &mut shutdown => None,
        };
        let Some(permit) = permit else {
            waiting = Some((stream, peer, admitted));
            break;
        };
        let _ = stream.set_nodelay(true);
        let open = log.metrics().http_connection();
        let evicted = CancellationToken::new();
        let stream = idle.track(evicted.clone(), stream);
        let idle_state = stream.idle_state();
        let conn_idle = idle_state.clone();
        let publish_rate = PublishRate::new(log.config().publish_rate);
        let conn_router = router.clone();
        let conn_log = log.clone();
        let conn_requests = requests.clone();
        let conn_origins = Arc::clone(&origins);
        let served = Arc::new(AtomicBool::new(false));
        let conn_served = Arc::clone(&served);
        let service = service_fn(move |mut req: Request<Incoming>| {
            conn_served.store(true, Ordering::Relaxed);
            conn_idle.busy();
            let idle_after = conn_idle.clone();
            let publish_rate = publish_rate.clone();
            let router = conn_router.clone();
            let log = conn_log.clone();
            let in_flight = conn_requests.token();
            let origins = Arc::clone(&conn_origins);
            async move {
                let line = RequestLine::of(&req, peer);
                req.extensions_mut().insert(Peer(peer));
                req.extensions_mut().insert(publish_rate.clone());
                // A request that starts once shutdown has begun is no new work.
                let res = if let Some(refused) = unsupported_transfer_coding(&req) {
                    refused
                } else if log.is_ready() {
                    http::serve(router, req).await
                } else {
                    http::draining(&req, &log, &origins)
                };
                line.answered(&log, &res);
                drop(in_flight);
                Ok::<_, Infallible>(idle_once_sent(res, idle_after))
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = log.shutdown_signal();
        let drained = drained.clone();
        let running = idle_state.clone();
        connections.spawn(async move {
            running
                .run(async move {
                    tokio::pin!(conn);
                    let ended = tokio::select! {
                        ended = conn.as_mut() => ended,
                        // Chosen to make room while idle (no request being answered, its last
                        // answer sent whole): closed at once, as an idle keep-alive may be.
                        () = evicted.cancelled() => Ok(()),
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
                    drop(admitted);
                    idle_state.close(permit);
                })
                .await;
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
    serve_draining(&listener, waiting, &log, &peers, &origins, drain, deadline).await;
    drop(listener);
    log.shutdown().await;
    tracing::info!("shutdown complete");
}

/// How long the draining server goes on once the drain is over with nothing being
/// answered and no connection coming: connections queued in the backlog are accepted well
/// within it, so it ends only when there are none.
const DRAINED_QUIET: Duration = Duration::from_millis(20);

/// A connection the accept loop took (and admitted for its address) but had no slot for
/// when shutdown began.
type Waiting = (tokio::net::TcpStream, std::net::SocketAddr, PeerGuard);

/// Accepts connections while in-flight work drains and answers each one's request with
/// [`http::draining`], one request per connection, starting with `waiting`.
///
/// - Limits: the connections accepted here take none of the `max_connections` slots,
///   which the in-flight work being drained may hold all of, but one of a second pool of
///   as many (`waiting` takes none: its socket was open already); the per-address limits
///   apply as before the signal; a connection has [`FIRST_REQUEST_GRACE`] to send its
///   request's head.
/// - End: once `drain` completes, it goes on accepting — the connections already queued
///   in the backlog included — until nothing is being answered and none has come for
///   [`DRAINED_QUIET`], for at most [`FIRST_REQUEST_GRACE`] more; those accepted last then
///   get up to [`FIRST_REQUEST_GRACE`] to be answered. Neither goes past `deadline`, the
///   shutdown timeout's; the connections still open then end with this function.
async fn serve_draining(
    listener: &TcpListener,
    mut waiting: Option<Waiting>,
    log: &Log,
    peers: &PeerLimits,
    origins: &Arc<http::cors::Origins>,
    drain: impl Future<Output = ()>,
    deadline: tokio::time::Instant,
) {
    tokio::pin!(drain);
    let slots = Arc::new(Semaphore::new(log.config().max_connections));
    // Cancelled on return: the connections still being answered are dropped with it.
    let done = CancellationToken::new();
    let _cancel_on_return = done.clone().drop_guard();
    // The connections being answered; refusals (per-address limits) apart, so that one
    // address's refusals do not hold the end off.
    let answering = TaskTracker::new();
    let mut builder = http1_builder(log);
    builder
        .keep_alive(false)
        .header_read_timeout(FIRST_REQUEST_GRACE);
    // Set when the drain is over: until when connections are accepted.
    let mut ends: Option<tokio::time::Instant> = None;
    let over = |ends: Option<tokio::time::Instant>| async move {
        match ends {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let grace = || (tokio::time::Instant::now() + FIRST_REQUEST_GRACE).min(deadline);
    loop {
        let (permit, admitted, (stream, peer)) = match waiting.take() {
            // First, even if the drain is over.
            Some((stream, peer, admitted)) => (None, admitted, (stream, peer)),
            None => {
                // A place in the pool, then a connection (`accept` is cancel-safe, and a
                // permit taken before a branch below wins goes back with the future).
                let next = async {
                    let permit = Arc::clone(&slots).acquire_owned().await;
                    (permit, listener.accept().await)
                };
                let (permit, accepted) = tokio::select! {
                    biased;
                    () = over(ends) => break,
                    () = &mut drain, if ends.is_none() => {
                        ends = Some(grace());
                        continue;
                    }
                    next = next => next,
                    () = quiet(&answering), if ends.is_some() => break,
                };
                let Ok(permit) = permit else { break };
                let accepted = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                match peers.admit(accepted.1.ip()) {
                    Ok(admitted) => (Some(permit), admitted, accepted),
                    Err(refusal) => {
                        let answer = refused(log, accepted.0, accepted.1, refusal);
                        let done = done.clone();
                        tokio::spawn(async move { done.run_until_cancelled(answer).await });
                        continue;
                    }
                }
            }
        };
        let log = log.clone();
        let origins = Arc::clone(origins);
        let service = service_fn(move |req: Request<Incoming>| {
            let line = RequestLine::of(&req, peer);
            let res = http::draining(&req, &log, &origins);
            line.answered(&log, &res);
            async move { Ok::<_, Infallible>(res) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let done = done.clone();
        answering.spawn(async move {
            let _ = done.run_until_cancelled(conn).await;
            drop(admitted);
            drop(permit);
        });
    }
    answering.close();
    let _ = tokio::time::timeout_at(grace(), answering.wait()).await;
}

/// Completes once nothing in `answering` is running after [`DRAINED_QUIET`] with no
/// connection accepted (the caller starts it afresh after each one).
async fn quiet(answering: &TaskTracker) {
    loop {
        tokio::time::sleep(DRAINED_QUIET).await;
        if answering.is_empty() {
            return;
        }
    }
}

/// A connection slot for a new connection: a free one, or the one an idle connection
/// closed to make room gives back ([`IdleConnections::take_slot`]). With none idle, it
/// waits for a slot, and looks again whenever a connection may have become closable.
/// `None` once the semaphore is closed.
async fn free_slot(
    idle: &IdleConnections,
    slots: &Arc<Semaphore>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    // A connection passed over for its running task is waited for once, not again.
    let mut wait_for_running = true;
    // Said once per connection that waits (at debug, as an eviction is).
    let mut told = false;
    loop {
        match idle.take_slot(slots, wait_for_running) {
            Slot::Taken(permit) => return Some(permit),
            Slot::Evicted => {
                tracing::debug!("every connection slot taken: closing an idle connection");
                return Arc::clone(slots).acquire_owned().await.ok();
            }
            waiting @ (Slot::NoneIdle | Slot::Running) => {
                if !told {
                    tracing::debug!(
                        "every connection slot taken, none closable now: a new connection waits for one"
                    );
                    told = true;
                }
                if matches!(waiting, Slot::Running) {
                    wait_for_running = false;
                }
                tokio::select! {
                    permit = Arc::clone(slots).acquire_owned() => return permit.ok(),
                    () = idle.changed() => {}
                }
            }
        }
    }
}

/// The listener's address, for the broker's own origins (the port actually bound when
/// the configured one is 0); if the socket cannot say, `127.0.0.1:0`, whose origins no
/// page has.
fn bound_address(listener: &TcpListener) -> std::net::SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// `res`, whose connection counts as idle again (one that may be closed to make room)
/// once hyper has written all of it and dropped its body; never after a `101`, whose
/// connection becomes a WebSocket session.
fn idle_once_sent(res: axum::response::Response, idle: IdleState) -> axum::response::Response {
    if res.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
        return res;
    }
    res.map(|inner| axum::body::Body::new(IdleWhenSent { inner, idle }))
}

/// A body that marks its connection idle when hyper drops it (all of it written, or the
/// connection gone); its size and end are the inner body's, so `Content-Length` stays.
struct IdleWhenSent {
    inner: axum::body::Body,
    idle: IdleState,
}

impl Drop for IdleWhenSent {
    fn drop(&mut self) {
        self.idle.idle();
    }
}

impl hyper::body::Body for IdleWhenSent {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// hyper's HTTP/1 settings from the options: the head's deadline (which is the idle
/// keep-alive timeout too: hyper starts it when it waits for a request's head), its size
/// and its number of header lines (both answered `431` by hyper).
fn http1_builder(log: &Log) -> http1::Builder {
    let cfg = log.config();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(crate::config::seconds(cfg.http_header_timeout_secs))
        .max_header_size(cfg.http_max_header_bytes)
        .max_headers(cfg.http_max_headers);
    builder
}

/// `501 not_implemented` (with `Connection: close`: the body is not read) for a request
/// whose `Transfer-Encoding` is anything but `chunked` alone. hyper reads a body whose
/// last coding is `chunked` as plain chunked, so `gzip, chunked` would otherwise be
/// taken as the still-compressed bytes (RFC 9112 §6.1: a server that does not understand
/// a transfer coding answers 501).
fn unsupported_transfer_coding<B>(req: &Request<B>) -> Option<axum::response::Response> {
    let mut codings = req
        .headers()
        .get_all(hyper::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| c.trim_ascii())
        .filter(|c| !c.is_empty());
    let first = codings.next()?;
    if first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none() {
        return None;
    }
    let mut res = http::response::ApiError::of(
        rewind_protocol::ErrorCode::NotImplemented,
        "only Transfer-Encoding: chunked is supported; send the body unencoded",
    )
    .into_response();
    res.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    Some(res)
}

/// Counts and logs a connection the per-address limits refuse; what answers and closes it.
fn refused(
    log: &Log,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    refusal: Refusal,
) -> impl Future<Output = ()> {
    let (code, message) = refusal.answer();
    log.metrics().refused(Transport::Http, code.as_str());
    tracing::debug!(%peer, code = code.as_str(), "connection refused");
    refuse(stream, code, message)
}

/// Answers a refused connection with `code` and closes it: the JSON error in an HTTP/1.1
/// response written at once, whatever the client sent, then up to [`REFUSAL_LINGER`] of
/// reading (and dropping) what it sends, so the close does not reset the connection
/// before the client has read the answer.
async fn refuse(
    mut stream: tokio::net::TcpStream,
    code: rewind_protocol::ErrorCode,
    message: String,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = code.http_body(&message);
    let status = hyper::StatusCode::from_u16(code.http_status())
        .unwrap_or(hyper::StatusCode::SERVICE_UNAVAILABLE);
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let linger = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// One request as the request log writes it: `info` for every request but the scrapes
/// and probes (`/metrics`, `/healthz`, `/readyz`: `debug`), and the WebSocket upgrade
/// (`debug`: its session has a line of its own when it ends). The path is logged without
/// its query, which may carry a token. Its duration runs until the answer's head is
/// ready (bodies are whole by then).
struct RequestLine {
    method: hyper::Method,
    /// The request's URI, whose path is logged: a clone shares hyper's bytes, so keeping
    /// it costs no allocation per request.
    uri: hyper::Uri,
    peer: std::net::SocketAddr,
    started: std::time::Instant,
}

impl RequestLine {
    fn of<B>(req: &Request<B>, peer: std::net::SocketAddr) -> RequestLine {
        RequestLine {
            method: req.method().clone(),
            uri: req.uri().clone(),
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
        let (method, path, peer) = (self.method.as_str(), self.uri.path(), self.peer);
        // The token's `sub`, when a token was taken (never the token).
        let sub = res
            .extensions()
            .get::<crate::auth::Subject>()
            .map(|s| s.0.as_str());
        let quiet = matches!(path, "/metrics" | "/healthz" | "/readyz") || status == 101;
        if quiet {
            tracing::debug!(method, path, status, duration_ms, %peer, sub, "request");
        } else {
            tracing::info!(method, path, status, duration_ms, %peer, sub, "request");
        }
    }
}
