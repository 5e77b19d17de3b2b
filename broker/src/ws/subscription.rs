//! One open namespace on one connection, as a stream the connection polls: catch up from
//! the log, then follow the live ring, never yielding more events than the credit allows.
//!
//! ### Invariants
//!
//! - Offsets yielded strictly increase by one; a jump is announced first with `truncated`.
//! - At zero credit nothing is read or held: the subscription is its cursor (and a weak
//!   reference to the run the credit ran out in, which keeps no events alive); the live
//!   ring it stops reading simply reports it lagged later, after which it reads the log.
//! - With credit again, it takes what the ring still holds before reading the log.
//! - Nothing beyond the namespace's visible end is yielded (the log read is bounded by it,
//!   and the ring only carries committed events).
//! - Once the namespace is deleted, the next thing yielded is `closed` with reason
//!   `deleted`, and the stream ends: every wait (credit, the ring) also waits on the
//!   deletion, and nothing read from the store after it is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::Stream;
use rewind_protocol::frame::ServerFrame;
use rewind_protocol::ErrorCode;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, Notify};

use crate::fanout::{self, Encoding, SharedRun};
use crate::log::{Log, LogError};
use crate::namespaces::NsState;

/// Events read from the log per catch-up step, at most.
const CATCH_UP_BATCH: u64 = 1000;

/// Once a step has taken this many live events it takes no further run from the ring,
/// so one busy namespace does not hold up the others on the connection.
const LIVE_BATCH: u64 = 256;

/// Highest credit a subscription can hold; more is ignored.
const MAX_CREDIT: u64 = u32::MAX as u64;

/// A subscription's credit, shared between the session (adds) and the stream (spends).
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

    /// Adds credit and wakes the stream.
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

    /// Spends `n`, which must be available (only the stream spends).
    fn spend(&self, n: u64) {
        self.n.fetch_sub(n, Ordering::AcqRel);
    }

    async fn wait(&self) {
        // `notify_one` keeps a permit when nobody waits, so no wake-up is lost between
        // the check and the wait.
        while self.available() == 0 {
            self.more.notified().await;
        }
    }
}

/// What a subscription hands its connection, in order.
#[derive(Debug)]
pub(super) enum Yield {
    /// Events as finished frames (see [`super::wire`]), in pieces written back to back.
    Events(Vec<Bytes>),
    /// A control frame (`truncated`, `closed`, `error`).
    Frame(ServerFrame),
}

/// The subscription's state.
pub(super) struct Subscription {
    log: Log,
    state: Arc<NsState>,
    /// Subscribed before the start position was computed from `visible`.
    live: broadcast::Receiver<Arc<SharedRun>>,
    /// The next offset to yield.
    cursor: u64,
    credit: Arc<Credit>,
    encoding: Encoding,
    /// Set once the subscription has said its last word.
    finished: bool,
    /// The run the credit ran out in, if any. Weak: it does not keep the run's events in
    /// memory; if the ring has let go of it by the time credit comes, the log has them.
    cut_short: Option<Weak<SharedRun>>,
    /// The last events came from the ring, so the next ones are most likely there too
    /// (a subscription catching up from the log leaves the ring alone).
    following: bool,
}

impl Subscription {
    /// A subscription yielding from `cursor` on; `live` must have been subscribed before
    /// the cursor was computed from the namespace's visible end.
    pub(super) fn new(
        log: Log,
        state: Arc<NsState>,
        live: broadcast::Receiver<Arc<SharedRun>>,
        cursor: u64,
        credit: Arc<Credit>,
        encoding: Encoding,
    ) -> Subscription {
        Subscription {
            log,
            state,
            live,
            cursor,
            credit,
            encoding,
            finished: false,
            cut_short: None,
            following: false,
        }
    }

    /// The subscription as a stream of things to send; it ends after telling the client
    /// the namespace was deleted (or that reading it failed).
    pub(super) fn into_stream(self) -> impl Stream<Item = Vec<Yield>> + Send {
        futures::stream::unfold(self, |mut sub| async move {
            if sub.finished {
                return None;
            }
            let out = sub.step().await;
            Some((out, sub))
        })
    }

    fn truncated(&mut self, to: u64) -> Yield {
        let f = ServerFrame::Truncated {
            ns: self.state.name.to_string(),
            requested: self.cursor,
            from: to,
            reason: "retention".into(),
        };
        self.cursor = to;
        Yield::Frame(f)
    }

    fn finish(&mut self, f: ServerFrame) -> Vec<Yield> {
        self.finished = true;
        vec![Yield::Frame(f)]
    }

    fn deleted(&mut self) -> Vec<Yield> {
        let ns = self.state.name.to_string();
        self.finish(ServerFrame::Closed {
            ns,
            reason: Some("deleted".into()),
        })
    }

    /// Waits for credit, then produces the next things to send; `closed` with reason
    /// `deleted` as soon as the namespace is deleted, whatever the credit.
    async fn step(&mut self) -> Vec<Yield> {
        loop {
            if self.state.is_deleted() {
                return self.deleted();
            }
            // Credit first: when it is there, the deletion wait is never even set up.
            tokio::select! {
                biased;
                () = self.credit.wait() => {}
                () = self.state.deleted() => return self.deleted(),
            }
            // What the ring still holds is cheaper than the log: first the rest of the
            // run the credit cut short, then whatever the receiver has not taken yet.
            if let Some(run) = self.cut_short.take().and_then(|w| w.upgrade()) {
                if self.covers(&run) {
                    return vec![Yield::Events(self.take_live(&run))];
                }
            }
            let visible = self.state.visible();
            if self.cursor < visible && self.following {
                match self.live.try_recv() {
                    Ok(run) if self.covers(&run) => {
                        return vec![Yield::Events(self.take_live(&run))]
                    }
                    Ok(run) if run.end() <= self.cursor => continue,
                    Err(TryRecvError::Closed) => return self.deleted(),
                    // A gap, a lag, or events made visible but not yet in the ring.
                    Ok(_) | Err(TryRecvError::Empty | TryRecvError::Lagged(_)) => {}
                }
            }
            if self.cursor < visible {
                self.following = false;
                // Boxed, so a waiting subscription is only as big as its live wait.
                return Box::pin(self.catch_up(visible)).await;
            }
            let received = tokio::select! {
                biased;
                received = self.live.recv() => received,
                () = self.state.deleted() => return self.deleted(),
            };
            // Committed before the delete, but the log they belong to is gone.
            if self.state.is_deleted() {
                return self.deleted();
            }
            match received {
                Ok(run) if self.covers(&run) => return vec![Yield::Events(self.take_live(&run))],
                // Older than the cursor: already sent from the log. Ahead of it: the log
                // has what is in between, and the next round reads it.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return self.deleted(),
            }
        }
    }

    /// From the cursor on: what `first` holds and whatever else is already in the ring,
    /// as far as the credit goes.
    fn take_live(&mut self, first: &Arc<SharedRun>) -> Vec<Bytes> {
        self.following = true;
        let start = self.cursor;
        let mut pieces = vec![self.take_from(first)];
        while self.credit.available() > 0 && self.cursor - start < LIVE_BATCH {
            match self.live.try_recv() {
                Ok(run) if self.covers(&run) => pieces.push(self.take_from(&run)),
                Ok(run) if run.end() <= self.cursor => {}
                // A jump, a lag or a closed ring: the next step sorts it out.
                Ok(_)
                | Err(TryRecvError::Empty | TryRecvError::Lagged(_) | TryRecvError::Closed) => {
                    break
                }
            }
        }
        pieces
    }

    /// True when the next event to yield is in `run`.
    fn covers(&self, run: &SharedRun) -> bool {
        run.first() <= self.cursor && self.cursor < run.end()
    }

    /// The events of `run` from the cursor, as far as the credit goes; a run cut short is
    /// remembered, weakly, for when credit comes.
    fn take_from(&mut self, run: &Arc<SharedRun>) -> Bytes {
        let n = (run.end() - self.cursor).min(self.credit.available());
        let piece = run.frames(self.encoding, self.cursor, self.cursor + n);
        self.cursor += n;
        self.credit.spend(n);
        if self.cursor < run.end() {
            self.cut_short = Some(Arc::downgrade(run));
        }
        piece
    }

    /// What the log holds from the cursor, up to `visible` and the credit.
    async fn catch_up(&mut self, visible: u64) -> Vec<Yield> {
        let mut out = Vec::new();
        let earliest = self.state.earliest();
        if self.cursor < earliest {
            out.push(self.truncated(earliest));
            if self.cursor >= visible {
                return out;
            }
        }
        let n = self.credit.available().min(CATCH_UP_BATCH) as usize;
        let events = match self
            .log
            .read_range(&self.state.name, self.cursor, visible, n)
            .await
        {
            // Deleted meanwhile: nothing of that log is sent (a re-created one may
            // already be in the store under the same name).
            _ if self.state.is_deleted() => return self.deleted(),
            Ok(events) => events,
            Err(LogError::NotFound(_) | LogError::Deleted(_)) => return self.deleted(),
            Err(e) => {
                tracing::warn!(ns = %self.state.name, error = %e, "catch-up read failed");
                let ns = Some(self.state.name.to_string());
                return self.finish(ServerFrame::error(
                    ErrorCode::Internal,
                    e.to_string(),
                    None,
                    ns,
                ));
            }
        };
        if events.is_empty() {
            // Retention removed them between the check above and the read.
            let to = self.state.earliest().clamp(self.cursor, visible);
            let to = if to == self.cursor { visible } else { to };
            out.push(self.truncated(to));
            return out;
        }
        let n_read = events.len() as u64;
        let mut piece = Vec::new();
        for ev in events {
            if ev.offset > self.cursor {
                if !piece.is_empty() {
                    out.push(Yield::Events(vec![Bytes::from(std::mem::take(&mut piece))]));
                }
                out.push(self.truncated(ev.offset));
            }
            fanout::encode_into(&mut piece, &self.state.name, &ev, self.encoding);
            self.cursor = ev.offset + 1;
        }
        self.credit.spend(n_read);
        out.push(Yield::Events(vec![Bytes::from(piece)]));
        out
    }
}
