//! What one WebSocket session reports: its line in the request log when it ends, and the
//! `rewind_ws_sessions` gauge while it runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::Log;
use crate::metrics::Open;

/// A session's figures, logged at `info` when it ends.
pub(super) struct Report {
    peer: Option<SocketAddr>,
    /// The `sub` of the session's token, when it has one (a refresh keeps it).
    sub: Option<String>,
    started: Instant,
    /// Subscriptions opened (`opened` answers sent).
    pub(super) opened: u64,
    /// Events the client published (taken, whether or not appended).
    pub(super) events_in: u64,
    /// Events handed to the client by its subscriptions (shared with them).
    pub(super) events_out: Arc<AtomicU64>,
    _open: Open,
}

impl Report {
    pub(super) fn new(log: &Log, peer: Option<SocketAddr>, sub: Option<String>) -> Report {
        Report {
            peer,
            sub,
            started: Instant::now(),
            opened: 0,
            events_in: 0,
            events_out: Arc::new(AtomicU64::new(0)),
            _open: log.metrics().ws_session(),
        }
    }

    /// The session's line: `close` is the close code sent, if any (none when the client
    /// went away or closed first).
    pub(super) fn ended(&self, close: Option<u16>) {
        let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
        tracing::info!(
            peer,
            sub = self.sub.as_deref(),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            subscriptions = self.opened,
            events_in = self.events_in,
            events_out = self.events_out.load(Ordering::Relaxed),
            close,
            "websocket session"
        );
    }
}
