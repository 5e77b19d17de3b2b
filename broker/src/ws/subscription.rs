//! One open namespace on one connection, as a stream the connection polls: catch up from
//! the log, then follow the live ring, never yielding more events than the credit allows.
//!
//! ### Invariants
//!
//! - Offsets yielded strictly increase by one; a jump is announced first with `truncated`.
//! - At zero credit nothing is read or held: the subscription is its cursor. The ring
//!   goes on without it (within `fanout_buffer` runs and the broker's
//!   `fanout_memory_bytes`); what left the ring meanwhile, it reads from the log.
//! - With credit, it takes the runs the ring holds from its cursor on, and reads the log
//!   when the ring does not hold its cursor.
//! - Nothing beyond the namespace's visible end is yielded (the log read is bounded by it,
//!   and the ring only carries committed events).
//! - What a catch-up read holds between the log and the connection's outbox is charged to
//!   the broker's budget (`fanout_memory_bytes`, counted apart from the live runs) before
//!   the read and until the session has pushed it into the outbox or dropped it. A read
//!   asks for at most an eighth of the budget; when the budget has no room it reads at
//!   most `OVER_BUDGET_READ_BYTES` (at least one event), charged beyond the budget, so a
//!   subscription never waits for memory others hold, and a stalled one holds at most one
//!   step's worth.
//! - Once the namespace is deleted, the next thing yielded is `closed` with reason
//!   `deleted`, and the stream ends: the wait for credit also waits on the deletion, the
//!   wait for the ring is woken by it (a delete clears the ring after marking the
//!   namespace deleted), and nothing read from the store after it is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use rewind_protocol::frame::ServerFrame;
use rewind_protocol::wire::Encoding;
use tokio::sync::Notify;

use crate::engine::fanout::{self, SharedRun};
use crate::engine::live::{CatchUpCharge, LiveSubscriber};
use crate::engine::namespaces::Namespace;
use crate::engine::{Log, LogError};
use crate::metrics::Subscribed;

/// Events read from the log per catch-up step, at most.
const CATCH_UP_BATCH: u64 = 1000;

/// Bytes (past its first event) of a catch-up read made beyond the budget because the
/// budget had no room: several events per read rather than one, while what a stalled
/// subscription holds beyond the budget stays one such read.
const OVER_BUDGET_READ_BYTES: usize = 16 << 10;

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
    /// Events as finished frames (see [`rewind_protocol::wire`]), in pieces written back to back,
    /// with the budget charge for them when they came from the log (dropped once they
    /// are in the outbox).
    Events(Vec<Bytes>, Option<CatchUpCharge>),
    /// A control frame (`truncated`, `closed`, `error`).
    Frame(ServerFrame),
}

/// The subscription's state.
pub(super) struct Subscription {
    log: Log,
    state: Arc<Namespace>,
    /// Subscribed before the start position was computed from `visible`.
    live: LiveSubscriber,
    /// The next offset to yield.
    cursor: u64,
    credit: Arc<Credit>,
    encoding: Encoding,
    /// Set once the subscription has said its last word.
    finished: bool,
    /// Its cursor as the lag metrics see it; counted in `rewind_subscriptions`.
    mark: Subscribed,
    /// Events handed out, for the session's log line.
    delivered: Arc<AtomicU64>,
}

impl Subscription {
    /// A subscription yielding from `cursor` on; `live` must have been subscribed before
    /// the cursor was computed from the namespace's visible end.
    pub(super) fn new(
        log: Log,
        state: Arc<Namespace>,
        live: LiveSubscriber,
        cursor: u64,
        credit: Arc<Credit>,
        encoding: Encoding,
        delivered: Arc<AtomicU64>,
    ) -> Subscription {
        Subscription {
            mark: log.metrics().subscribed(&state.name, cursor),
            delivered,
            log,
            state,
            live,
            cursor,
            credit,
            encoding,
            finished: false,
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
            sub.mark.at(sub.cursor);
            Some((out, sub))
        })
    }

    /// `n` events handed to the session, counted once for the lot.
    fn handed_out(&self, n: u64) {
        self.log.metrics().delivered(n);
        self.delivered.fetch_add(n, Ordering::Relaxed);
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
            reason: Some(self.state.end_reason().into()),
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
            // What the ring holds is cheaper than the log.
            let visible = self.state.visible();
            if self.cursor < visible {
                let max = self.credit.available().min(LIVE_BATCH);
                let runs = self.live.ring().runs_from(self.cursor, max);
                if !runs.is_empty() {
                    return vec![Yield::Events(self.take_live(&runs), None)];
                }
                // Boxed, so a waiting subscription is only as big as its live wait.
                return Box::pin(self.catch_up(visible)).await;
            }
            // Nothing to send: wait for the next push. Created before the checks, the wait
            // sees a push made after `visible` was read, and a delete made after
            // `is_deleted` was read: a delete marks the namespace deleted, then clears the
            // ring, which wakes this wait like a push (`Namespace::mark_deleted`). So the
            // wait for a push is the only one, not a second one on the namespace's
            // deletion that every subscriber would register and drop for every event.
            let ring = Arc::clone(self.live.ring());
            let arrived = ring.arrived();
            if self.state.is_deleted() {
                return self.deleted();
            }
            if self.state.visible() > self.cursor {
                continue;
            }
            arrived.await;
        }
    }

    /// From the cursor on: what `runs` (consecutive, the first holding the cursor) hold,
    /// as far as the credit goes.
    fn take_live(&mut self, runs: &[Arc<SharedRun>]) -> Vec<Bytes> {
        let mut pieces = Vec::with_capacity(runs.len());
        for run in runs {
            if self.credit.available() == 0 || !self.covers(run) {
                break;
            }
            pieces.push(self.take_from(run));
        }
        pieces
    }

    /// True when the next event to yield is in `run`.
    fn covers(&self, run: &SharedRun) -> bool {
        run.first() <= self.cursor && self.cursor < run.end()
    }

    /// The events of `run` from the cursor, as far as the credit goes.
    fn take_from(&mut self, run: &SharedRun) -> Bytes {
        let n = (run.end() - self.cursor).min(self.credit.available());
        let piece = run.frames(self.encoding, self.cursor, self.cursor + n);
        self.cursor += n;
        self.credit.spend(n);
        self.handed_out(n);
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
        // Charged before the read: a share of the budget, or (no room) a small read beyond it.
        let budget = self.state.live_budget();
        let want = self
            .log
            .config()
            .max_read_bytes
            .min(budget.catch_up_share());
        let (mut charge, n, max_bytes) = match budget.try_charge_catch_up(want) {
            Some(charge) if want > 0 => (charge, n, want),
            _ => (
                budget.charge_catch_up_over(0),
                n,
                OVER_BUDGET_READ_BYTES.min(self.log.config().max_read_bytes),
            ),
        };
        let events = match self
            .log
            .read_range_within(
                &self.state.name,
                &self.state.epoch,
                self.cursor,
                visible,
                n,
                max_bytes,
            )
            .await
        {
            // Deleted meanwhile: nothing of that log is sent (a re-created one may
            // already be in the store under the same name).
            _ if self.state.is_deleted() => return self.deleted(),
            Ok(events) => events,
            // A shared store no longer has this incarnation, and this node has not yet
            // heard (its listener is behind): nothing is sent until it has, so the reason
            // in `closed` is the one the node learns (`deleted`, or `epoch` when Redis
            // lost it), and no `truncated` stands in for it. The node hears at the latest
            // at its next heal (`redis_heal_interval_ms`).
            Err(LogError::NotFound(_) | LogError::Deleted(_)) => {
                drop(charge);
                if self.log.storage_shared() {
                    self.state.deleted().await;
                }
                return self.deleted();
            }
            Err(e) => {
                tracing::warn!(ns = %self.state.name, error = %e, "catch-up read failed");
                let ns = Some(self.state.name.to_string());
                return self.finish(ServerFrame::error(e.code(), e.to_string(), None, ns));
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
        let mut pieces = Vec::new();
        let mut piece = Vec::new();
        for ev in events {
            if ev.offset > self.cursor {
                if !piece.is_empty() {
                    pieces.push(Bytes::from(std::mem::take(&mut piece)));
                    out.push(Yield::Events(std::mem::take(&mut pieces), None));
                }
                out.push(self.truncated(ev.offset));
            }
            fanout::encode_into(&mut piece, &self.state.name, &ev, self.encoding);
            self.cursor = ev.offset + 1;
        }
        self.credit.spend(n_read);
        self.handed_out(n_read);
        pieces.push(Bytes::from(piece));
        // What is held now is the frames (the records are gone); pieces before a
        // `truncated` are counted with them.
        let held = out
            .iter()
            .filter_map(|y| match y {
                Yield::Events(p, _) => Some(p.iter().map(Bytes::len).sum::<usize>()),
                Yield::Frame(_) => None,
            })
            .sum::<usize>()
            + pieces.iter().map(Bytes::len).sum::<usize>();
        charge.resize(held);
        out.push(Yield::Events(pieces, Some(charge)));
        out
    }
}
