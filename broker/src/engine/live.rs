//! Where live runs wait for subscribers: one ring per namespace, one memory budget for the
//! whole broker.
//!
//! ### Invariants
//!
//! - A ring holds runs only while its namespace has a subscriber: the last subscriber to
//!   go (or a delete) empties it, and nothing is added to a ring nobody reads.
//! - A ring holds at most `fanout_buffer` runs, in offset order.
//! - The runs that exist (in rings, or being written by a subscriber) hold at most
//!   `fanout_memory_bytes` together, as [`SharedRun`] counts them, after every
//!   [`LiveRing::push`]: past it, the oldest runs of the broker, whatever their namespace,
//!   leave their rings. A subscriber whose cursor is in a run that left reads the log.
//! - A subscriber is a cursor: it finds the run holding its next offset by that offset,
//!   and holds nothing between steps.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::engine::fanout::SharedRun;

/// The memory every namespace's live runs may hold together (`fanout_memory_bytes`), and
/// the order in which they arrived, so the oldest can be let go first.
#[derive(Debug)]
pub struct LiveBudget {
    limit: usize,
    /// Bytes held by the runs that exist (see [`SharedRun`] for what is counted).
    held: AtomicUsize,
    /// How many runs exist.
    runs: AtomicUsize,
    /// Bytes held by catch-up reads between the log and a connection's outbox (see
    /// [`CatchUpCharge`]); bounded by `limit` on its own, apart from the live runs.
    catch_up: AtomicUsize,
    /// Every run handed to a ring, oldest first, with its ring; entries of runs already
    /// gone are skipped and compacted away.
    order: Mutex<VecDeque<(Weak<LiveRing>, Weak<SharedRun>)>>,
}

impl LiveBudget {
    /// A budget of `limit` bytes for the whole broker.
    pub fn new(limit: u64) -> Arc<LiveBudget> {
        Arc::new(LiveBudget {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            held: AtomicUsize::new(0),
            runs: AtomicUsize::new(0),
            catch_up: AtomicUsize::new(0),
            order: Mutex::new(VecDeque::new()),
        })
    }

    /// Bytes held by live runs now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Counts a new run of `bytes`.
    pub(crate) fn charge_run(&self, bytes: usize) {
        self.runs.fetch_add(1, Ordering::AcqRel);
        self.charge(bytes);
    }

    /// Counts `bytes` more for a run that exists (its frames, once built).
    pub(crate) fn charge(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::AcqRel);
    }

    /// A run of `bytes` in all is gone.
    pub(crate) fn release_run(&self, bytes: usize) {
        self.runs.fetch_sub(1, Ordering::AcqRel);
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes held by catch-up reads now.
    pub fn catch_up_held(&self) -> usize {
        self.catch_up.load(Ordering::Acquire)
    }

    /// The most one catch-up read may ask for: an eighth of the budget, so a few stalled
    /// subscriptions cannot take all of it at once.
    pub(crate) fn catch_up_share(&self) -> usize {
        self.limit / CATCH_UP_SHARE
    }

    /// Charges `bytes` of a catch-up read if the budget has room for them; never waits.
    pub(crate) fn try_charge_catch_up(self: &Arc<Self>, bytes: usize) -> Option<CatchUpCharge> {
        self.catch_up
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .ok()?;
        Some(CatchUpCharge {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Charges `bytes` of a catch-up read whatever the budget holds: the one-event read
    /// of a subscription that found no room (see [`LiveBudget::try_charge_catch_up`]).
    pub(crate) fn charge_catch_up_over(self: &Arc<Self>, bytes: usize) -> CatchUpCharge {
        self.catch_up.fetch_add(bytes, Ordering::AcqRel);
        CatchUpCharge {
            budget: Arc::clone(self),
            bytes,
        }
    }

    fn order(&self) -> MutexGuard<'_, VecDeque<(Weak<LiveRing>, Weak<SharedRun>)>> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records runs just added to `ring`, then lets the oldest runs go until the budget
    /// holds.
    fn admit(&self, ring: &Arc<LiveRing>, runs: &[Arc<SharedRun>]) {
        let mut order = self.order();
        for run in runs {
            order.push_back((Arc::downgrade(ring), Arc::downgrade(run)));
        }
        // Entries of runs that left by other ways (the ring's own cap, the last
        // subscriber leaving): dropped in bulk once they are half the queue.
        if order.len() > 64 && order.len() > 2 * self.runs.load(Ordering::Acquire) {
            order.retain(|(_, run)| run.strong_count() > 0);
        }
        while self.held() > self.limit {
            let Some((ring, run)) = order.pop_front() else {
                break;
            };
            if let (Some(ring), Some(run)) = (ring.upgrade(), run.upgrade()) {
                ring.drop_through(&run);
            }
        }
    }
}

/// How many catch-up reads at their largest the budget holds at once (see
/// [`LiveBudget::catch_up_share`]).
const CATCH_UP_SHARE: usize = 8;

/// Bytes of one catch-up read counted against the broker's budget, from before the read
/// until what it read is in a connection's outbox (or dropped with the connection).
#[derive(Debug)]
pub(crate) struct CatchUpCharge {
    budget: Arc<LiveBudget>,
    bytes: usize,
}

impl CatchUpCharge {
    /// Makes the charge `bytes`: gives back what was charged beyond them, or counts the
    /// excess (a read or its frames may exceed the estimate by up to one event and the
    /// framing), which the budget takes back when this is dropped.
    pub(crate) fn resize(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget
                .catch_up
                .fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        } else {
            self.budget
                .catch_up
                .fetch_add(bytes - self.bytes, Ordering::AcqRel);
        }
        self.bytes = bytes;
    }
}

impl Drop for CatchUpCharge {
    fn drop(&mut self) {
        self.budget.catch_up.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A namespace's runs for its subscribers, and their count.
#[derive(Debug, Default)]
struct Ring {
    runs: VecDeque<Arc<SharedRun>>,
    subscribers: usize,
}

/// The live ring of one namespace (incarnation).
#[derive(Debug)]
pub struct LiveRing {
    ring: Mutex<Ring>,
    /// Woken after each push.
    arrived: Notify,
    max_runs: usize,
    budget: Arc<LiveBudget>,
}

impl LiveRing {
    /// An empty ring of at most `max_runs` runs under `budget`; it allocates nothing until
    /// a run arrives for a subscriber.
    pub fn new(max_runs: usize, budget: Arc<LiveBudget>) -> Arc<LiveRing> {
        Arc::new(LiveRing {
            ring: Mutex::new(Ring::default()),
            arrived: Notify::new(),
            max_runs: max_runs.max(1),
            budget,
        })
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The budget runs for this ring are counted against.
    pub fn budget(&self) -> &Arc<LiveBudget> {
        &self.budget
    }

    /// Registers a subscriber for as long as the returned value lives.
    pub fn subscribe(self: &Arc<Self>) -> LiveSubscriber {
        self.ring().subscribers += 1;
        LiveSubscriber {
            ring: Arc::clone(self),
        }
    }

    /// True when someone subscribes.
    pub fn has_subscribers(&self) -> bool {
        self.ring().subscribers > 0
    }

    /// Adds committed runs (in offset order, after any already held) if anyone
    /// subscribes, keeps the ring and the budget within bounds, and wakes the waiting
    /// subscribers.
    pub fn push(self: &Arc<Self>, runs: Vec<SharedRun>) {
        let runs: Vec<Arc<SharedRun>> = runs.into_iter().map(Arc::new).collect();
        let mut left = Vec::new();
        {
            let mut ring = self.ring();
            if ring.subscribers == 0 {
                return;
            }
            ring.runs.extend(runs.iter().cloned());
            while ring.runs.len() > self.max_runs {
                left.extend(ring.runs.pop_front());
            }
        }
        drop(left);
        self.budget.admit(self, &runs);
        self.arrived.notify_waiters();
    }

    /// Lets go of every run up to and including `run`.
    fn drop_through(&self, run: &Arc<SharedRun>) {
        let mut left = Vec::new();
        {
            let mut ring = self.ring();
            while ring.runs.front().is_some_and(|r| r.first() <= run.first()) {
                left.extend(ring.runs.pop_front());
            }
        }
        drop(left);
    }

    /// Wakes every subscriber waiting for a push without pushing: events that are only in
    /// the store became visible (appended by another node of a cluster), and the
    /// subscribers read them from there.
    pub fn wake(&self) {
        self.arrived.notify_waiters();
    }

    /// Lets go of every run (the namespace was deleted).
    pub fn clear(&self) {
        let left = std::mem::take(&mut self.ring().runs);
        drop(left);
        self.arrived.notify_waiters();
    }

    /// The run holding offset `from` and the runs right after it, as long as they follow
    /// each other, up to about `max_events` events; empty when the ring does not hold
    /// `from`.
    pub fn runs_from(&self, from: u64, max_events: u64) -> Vec<Arc<SharedRun>> {
        let ring = self.ring();
        let i = ring.runs.partition_point(|r| r.end() <= from);
        let mut out = Vec::new();
        let mut next = from;
        for run in ring.runs.range(i..) {
            if run.first() > next || next - from >= max_events {
                break;
            }
            next = run.end();
            out.push(Arc::clone(run));
        }
        out
    }

    /// Completes after the next push (or clear). Create it before checking for what you
    /// wait for: it sees every push made after it was created, polled or not.
    pub fn arrived(&self) -> Notified<'_> {
        self.arrived.notified()
    }

    /// How many runs the ring holds.
    pub fn len(&self) -> usize {
        self.ring().runs.len()
    }

    /// True when the ring holds no run.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One subscriber of a [`LiveRing`]; the last one to drop empties the ring.
#[derive(Debug)]
pub struct LiveSubscriber {
    ring: Arc<LiveRing>,
}

impl LiveSubscriber {
    /// The ring subscribed to.
    pub fn ring(&self) -> &Arc<LiveRing> {
        &self.ring
    }
}

impl Drop for LiveSubscriber {
    fn drop(&mut self) {
        let left = {
            let mut ring = self.ring.ring();
            ring.subscribers -= 1;
            if ring.subscribers == 0 {
                std::mem::take(&mut ring.runs)
            } else {
                VecDeque::new()
            }
        };
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use rewind_protocol::{Event, Payload};

    use super::*;

    #[test]
    fn catch_up_charges_stay_within_the_budget_and_are_given_back_when_dropped() {
        let budget = LiveBudget::new(1000);
        assert_eq!(budget.catch_up_share(), 125);
        let mut a = budget.try_charge_catch_up(600).expect("room for 600");
        assert!(budget.try_charge_catch_up(401).is_none());
        let b = budget.try_charge_catch_up(400).expect("room for the rest");
        assert_eq!(budget.catch_up_held(), 1000);
        // Resized to what the frames took: the difference is given back.
        a.resize(100);
        assert_eq!(budget.catch_up_held(), 500);
        // The one-event read beyond the budget is counted, and then given back too.
        let mut over = budget.charge_catch_up_over(0);
        over.resize(700);
        assert_eq!(budget.catch_up_held(), 1200);
        assert!(budget.try_charge_catch_up(1).is_none());
        drop((a, b, over));
        assert_eq!(budget.catch_up_held(), 0);
        // Live runs are counted apart.
        assert_eq!(budget.held(), 0);
    }

    fn events(from: u64, n: u64, data_len: usize) -> Vec<Event> {
        (from..from + n)
            .map(|offset| Event {
                offset,
                event: "e".into(),
                ts: 1,
                key: None,
                data: Payload::Json(format!("\"{}\"", "x".repeat(data_len))),
            })
            .collect()
    }

    fn runs(budget: &Arc<LiveBudget>, from: u64, n: u64) -> Vec<SharedRun> {
        SharedRun::split(&Arc::from("n"), events(from, n, 1100), budget)
    }

    #[test]
    fn nothing_is_held_without_a_subscriber_and_the_last_one_lets_go() {
        let budget = LiveBudget::new(u64::MAX);
        let ring = LiveRing::new(16, Arc::clone(&budget));
        ring.push(runs(&budget, 0, 10));
        assert!(ring.is_empty());
        assert_eq!(budget.held(), 0);
        let a = ring.subscribe();
        let b = ring.subscribe();
        ring.push(runs(&budget, 10, 10));
        assert_eq!(ring.len(), 3);
        assert!(budget.held() > 10_000);
        drop(a);
        assert_eq!(ring.len(), 3);
        drop(b);
        assert!(ring.is_empty());
        assert_eq!(budget.held(), 0);
        assert!(!ring.has_subscribers());
    }

    #[test]
    fn a_ring_keeps_its_newest_runs_and_finds_them_by_offset() {
        let budget = LiveBudget::new(u64::MAX);
        let ring = LiveRing::new(3, Arc::clone(&budget));
        let _sub = ring.subscribe();
        // 1.1 KB events: four to a run.
        ring.push(runs(&budget, 0, 20));
        assert_eq!(ring.len(), 3);
        assert!(ring.runs_from(7, 1000).is_empty(), "offset 7 left the ring");
        let got: Vec<(u64, u64)> = ring
            .runs_from(9, 1000)
            .iter()
            .map(|r| (r.first(), r.end()))
            .collect();
        assert_eq!(got, [(8, 12), (12, 16), (16, 20)]);
        assert_eq!(ring.runs_from(13, 4).len(), 2, "stops once it has enough");
        assert!(ring.runs_from(20, 1000).is_empty());
        // A gap (events committed while nobody listened) ends what follows.
        ring.push(runs(&budget, 30, 4));
        assert_eq!(ring.runs_from(16, 1000).len(), 1);
        assert_eq!(ring.runs_from(31, 1000)[0].first(), 30);
    }

    #[test]
    fn past_the_budget_the_oldest_runs_of_any_namespace_go_first() {
        let budget = LiveBudget::new(u64::MAX);
        let one_run: usize = {
            let r = runs(&budget, 0, 4);
            assert_eq!(r.len(), 1);
            budget.held()
        };
        assert_eq!(budget.held(), 0);
        // Room for about ten runs in all.
        let budget = LiveBudget::new(10 * one_run as u64 + one_run as u64 / 2);
        let a = LiveRing::new(512, Arc::clone(&budget));
        let b = LiveRing::new(512, Arc::clone(&budget));
        let (_sa, _sb) = (a.subscribe(), b.subscribe());
        a.push(runs(&budget, 0, 24));
        b.push(runs(&budget, 0, 24));
        assert_eq!(a.len() + b.len(), 10);
        assert!(budget.held() <= 10 * one_run + one_run / 2);
        // `a` went first: it is the older.
        assert_eq!((a.len(), b.len()), (4, 6));
        assert!(a.runs_from(0, 1000).is_empty());
        assert_eq!(a.runs_from(8, 1000)[0].first(), 8);
        // Many more runs later, the bookkeeping stays about as large as what is held.
        for i in 0..100 {
            b.push(runs(&budget, 24 + 4 * i, 4));
        }
        assert!(budget.order().len() < 100);
        assert!(budget.held() <= 10 * one_run + one_run / 2);
        // A zero budget holds nothing: subscribers read the log.
        let none = LiveBudget::new(0);
        let ring = LiveRing::new(512, Arc::clone(&none));
        let _s = ring.subscribe();
        ring.push(runs(&none, 0, 8));
        assert!(ring.is_empty());
        assert_eq!(none.held(), 0);
    }
}
