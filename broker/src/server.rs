//! The accept loop: one port, a cap on connections, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use crate::http::{self, App};
use crate::log::Log;
use crate::ws::WsContext;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `listener` until `shutdown` completes. Then it stops accepting, wakes waiting
/// readers, closes WebSockets with 1001, gives in-flight requests up to
/// `shutdown_timeout_secs` to finish, lets the writer commit everything queued, and
/// returns.
pub async fn run(listener: TcpListener, log: Log, shutdown: impl Future<Output = ()>) {
    // A drop guard: every connection task holds a clone; the channel closes when the
    // last one ends.
    let (conns_guard, mut conns_done) = mpsc::channel::<()>(1);
    let (ws, mut sessions_done) = WsContext::new(log.clone());
    let app = App {
        log: log.clone(),
        ws,
    };
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
        let conn_app = app.clone();
        let service = service_fn(move |req| {
            let app = conn_app.clone();
            async move { Ok::<_, Infallible>(http::handle(req, app).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = log.shutdown_signal();
        let guard = conns_guard.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    // Finish the request in flight, then close; idle keep-alives close now.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
            drop(guard);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections");
    log.begin_shutdown();
    let grace = Duration::from_secs(log.config().shutdown_timeout_secs);
    let deadline = tokio::time::Instant::now() + grace;
    drop(conns_guard);
    if tokio::time::timeout_at(deadline, conns_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown timeout");
    }
    // WebSocket sessions saw `begin_shutdown` and are sending 1001; each holds a clone of
    // the context, so the channel closes when the last one is done.
    drop(app);
    if tokio::time::timeout_at(deadline, sessions_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("WebSocket sessions still open after the shutdown timeout");
    }
    log.shutdown().await;
    tracing::info!("shutdown complete");
}
