//! One open namespace on one connection: catch up from the log, then follow the live ring,
//! never sending more than the credit allows.
//!
//! ### Invariants
//!
//! - Offsets sent strictly increase by one; a jump is announced first with `truncated`.
//! - At zero credit nothing is read or held: the subscription is its cursor, and the live
//!   ring it stops reading simply reports it lagged later, after which it reads the log.
//! - Nothing beyond the namespace's visible end is sent (the log read is bounded by it, and
//!   the ring only carries committed events).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rewind_protocol::frame::ServerFrame;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, Notify};

use super::session::Outgoing;
use crate::fanout::{self, Encoding, SharedEvent};
use crate::log::{Log, LogError};
use crate::namespaces::NsState;

/// Events read from the log per catch-up step, at most.
const CATCH_UP_BATCH: u64 = 1000;

/// Live events handed to the connection in one piece, at most.
const LIVE_BATCH: usize = 256;

/// Highest credit a subscription can hold; more is ignored.
const MAX_CREDIT: u64 = u32::MAX as u64;

/// A subscription's credit, shared between the session (adds) and the task (spends).
#[derive(Debug, Default)]
pub(super) struct Credit {
    n: AtomicU64,
    more: Notify,
}

impl Credit {
    /// Credit to start with.
    pub(super) fn new(n: u64) -> Credit {
        Credit {
            n: AtomicU64::new(n.min(MAX_CREDIT)),
            more: Notify::new(),
        }
    }

    /// Adds credit and wakes the task.
    pub(super) fn add(&self, n: u64) {
        let _ = self
            .n
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_add(n).min(MAX_CREDIT))
            });
        self.more.notify_one();
    }

    fn available(&self) -> u64 {
        self.n.load(Ordering::Acquire)
    }

    fn spend_one(&self) {
        self.n.fetch_sub(1, Ordering::AcqRel);
    }

    async fn wait(&self) {
        // `notify_one` keeps a permit when nobody waits, so no wake-up is lost between
        // the check and the wait.
        while self.available() == 0 {
            self.more.notified().await;
        }
    }
}

/// The task's state.
pub(super) struct Subscription {
    pub(super) log: Log,
    pub(super) state: Arc<NsState>,
    /// Subscribed before the start position was computed from `visible`.
    pub(super) live: broadcast::Receiver<Arc<SharedEvent>>,
    /// The next offset to send.
    pub(super) cursor: u64,
    pub(super) credit: Arc<Credit>,
    pub(super) out: mpsc::Sender<Outgoing>,
    pub(super) encoding: Encoding,
}

/// Why the task stopped.
enum Stop {
    /// The connection is gone.
    Disconnected,
    /// The namespace was deleted (the client has been told).
    Deleted,
}

impl Subscription {
    /// Runs until the connection goes, the namespace is deleted, or the session aborts it.
    pub(super) async fn run(mut self) {
        let stop = self.serve().await;
        tracing::trace!(ns = %self.state.name, deleted = matches!(stop, Stop::Deleted), "subscription ended");
    }

    async fn serve(&mut self) -> Stop {
        loop {
            self.credit.wait().await;
            let visible = self.state.visible();
            if self.cursor < visible {
                // Boxed, so an idle subscription's task is only as big as its live wait.
                if let Err(stop) = Box::pin(self.catch_up(visible)).await {
                    return stop;
                }
                continue;
            }
            match self.live.recv().await {
                // Older than the cursor: already sent from the log.
                Ok(ev) if ev.event.offset < self.cursor => {}
                // Ahead of the cursor: the log has what is in between; the next round
                // reads it.
                Ok(ev) if ev.event.offset > self.cursor => {}
                Ok(ev) => {
                    // Take whatever else is already in the ring, as far as the credit goes,
                    // and hand it over in one piece.
                    let mut batch = vec![ev.frames(self.encoding)];
                    self.cursor += 1;
                    self.credit.spend_one();
                    while self.credit.available() > 0 && batch.len() < LIVE_BATCH {
                        match self.live.try_recv() {
                            Ok(ev) if ev.event.offset == self.cursor => {
                                batch.push(ev.frames(self.encoding));
                                self.cursor += 1;
                                self.credit.spend_one();
                            }
                            Ok(ev) if ev.event.offset < self.cursor => {}
                            // A jump, a lag or a closed ring: the next round sorts it out.
                            _ => break,
                        }
                    }
                    if !self.send(Outgoing::Events(batch.into_boxed_slice())).await {
                        return Stop::Disconnected;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return self.deleted().await,
            }
        }
    }

    async fn send(&self, o: Outgoing) -> bool {
        self.out.send(o).await.is_ok()
    }

    async fn frame(&self, f: ServerFrame) -> bool {
        self.send(Outgoing::frame(&f, self.encoding)).await
    }

    async fn deleted(&self) -> Stop {
        let closed = ServerFrame::Closed {
            ns: self.state.name.to_string(),
            reason: Some("deleted".into()),
        };
        if self.frame(closed).await {
            Stop::Deleted
        } else {
            Stop::Disconnected
        }
    }

    async fn truncated(&mut self, to: u64) -> Result<(), Stop> {
        let f = ServerFrame::Truncated {
            ns: self.state.name.to_string(),
            requested: self.cursor,
            from: to,
            reason: "retention".into(),
        };
        if !self.frame(f).await {
            return Err(Stop::Disconnected);
        }
        self.cursor = to;
        Ok(())
    }

    /// Sends what the log holds from the cursor, up to `visible` and the credit.
    async fn catch_up(&mut self, visible: u64) -> Result<(), Stop> {
        let earliest = self.state.earliest();
        if self.cursor < earliest {
            self.truncated(earliest).await?;
            if self.cursor >= visible {
                return Ok(());
            }
        }
        let n = self.credit.available().min(CATCH_UP_BATCH) as usize;
        let events = match self
            .log
            .read_range(&self.state.name, self.cursor, visible, n)
            .await
        {
            Ok(events) => events,
            Err(LogError::NotFound(_)) => return Err(self.deleted().await),
            Err(e) => {
                tracing::warn!(ns = %self.state.name, error = %e, "catch-up read failed");
                let f = ServerFrame::error(
                    rewind_protocol::ErrorCode::Internal,
                    e.to_string(),
                    None,
                    Some(self.state.name.to_string()),
                );
                let _ = self.frame(f).await;
                return Err(Stop::Disconnected);
            }
        };
        if events.is_empty() {
            // Retention removed them between the check above and the read.
            let to = self.state.earliest().clamp(self.cursor, visible);
            let to = if to == self.cursor { visible } else { to };
            return self.truncated(to).await;
        }
        let mut batch = Vec::with_capacity(events.len());
        for ev in events {
            if ev.offset > self.cursor {
                if !batch.is_empty()
                    && !self
                        .send(Outgoing::Events(
                            std::mem::take(&mut batch).into_boxed_slice(),
                        ))
                        .await
                {
                    return Err(Stop::Disconnected);
                }
                self.truncated(ev.offset).await?;
            }
            batch.push(fanout::encode(&self.state.name, &ev, self.encoding));
            self.cursor = ev.offset + 1;
            self.credit.spend_one();
        }
        if !self.send(Outgoing::Events(batch.into_boxed_slice())).await {
            return Err(Stop::Disconnected);
        }
        Ok(())
    }
}
