//! The live state of every namespace that readers look at without touching the store:
//! its epoch, how far it is durable, where it starts, its ring of live events, and
//! whether it was deleted. One struct ([`Namespace`]) per incarnation, and one owner: the
//! writer creates, moves and removes them (the mutators are `pub(super)`), but for a name a
//! reader looked up in a shared store itself ([`Namespaces::adopt`]); everyone else
//! reads. The store's own description ([`NsInfo`]) is turned into what readers see in one
//! place, [`Namespace::as_read`].
//!
//! ### Invariants
//!
//! - One [`Namespace`] is one incarnation of a namespace: a delete and re-create makes a new
//!   one, with a new epoch. Readers hold an `Arc` of the incarnation they read.
//! - Every reader that waits on a namespace (a WebSocket subscription at any credit, a
//!   long-poll, any reader added later) also waits on [`Namespace::deleted`] — or, waiting
//!   for its live ring, on the ring alone, which a delete clears (and so wakes) after
//!   marking the namespace deleted — and checks [`Namespace::is_deleted`] after each
//!   wake-up and each read of the store: the moment the writer deletes the namespace, each
//!   reader stops serving that incarnation and says so.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{watch, Notify};

use crate::engine::fanout::SharedRun;
use crate::engine::live::{LiveBudget, LiveRing, LiveSubscriber};
use crate::storage::NsInfo;

/// One live namespace as readers see it.
#[derive(Debug)]
pub struct Namespace {
    /// The epoch of this incarnation; a delete and re-create makes a new `Namespace`.
    pub epoch: String,
    /// The offset after the last event readers may see. Only the writer moves it, and only
    /// once the events below it are durable (or, in relaxed mode, written). Waiting readers
    /// watch it to be woken by appends.
    visible: watch::Sender<u64>,
    /// The oldest offset still held; moved by retention.
    earliest: AtomicU64,
    /// Live events for subscribers (see [`crate::engine::live`]); empty while nobody subscribes
    /// and once deleted.
    live: Arc<LiveRing>,
    /// The name, shared by every event sent to subscribers.
    pub name: Arc<str>,
    /// Turns true, once, when this incarnation is deleted.
    deleted: AtomicBool,
    /// True when it ended because another incarnation replaced it (the store showed a new
    /// epoch: Redis lost data, or went back in time), rather than by a delete.
    replaced: AtomicBool,
    /// Wakes everyone waiting in [`Namespace::deleted`]. A `Notify` rather than a `watch`:
    /// its wait is less than half the size, and every waiting subscription holds one.
    on_delete: Notify,
}

impl Namespace {
    /// State for a namespace the store reports, with a live ring of at most
    /// `fanout_buffer` runs of events under the broker's `budget`.
    fn new(info: &NsInfo, fanout_buffer: usize, budget: &Arc<LiveBudget>) -> Namespace {
        Namespace {
            epoch: info.epoch.clone(),
            visible: watch::Sender::new(info.next),
            earliest: AtomicU64::new(info.earliest),
            live: LiveRing::new(fanout_buffer, Arc::clone(budget)),
            name: Arc::from(info.name.as_str()),
            deleted: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            on_delete: Notify::new(),
        }
    }

    /// True once this incarnation has been deleted: nothing more is served from it.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Why this incarnation ended, for the `closed` frame's `reason`: `epoch` when
    /// another incarnation replaced it (resubscribing with the epoch gets `truncated`
    /// reason `epoch`), `deleted` otherwise.
    pub fn end_reason(&self) -> &'static str {
        if self.replaced.load(Ordering::Acquire) {
            "epoch"
        } else {
            "deleted"
        }
    }

    /// Completes once this incarnation has been deleted (at once if it already was).
    /// Every reader that waits on the namespace selects on this too.
    pub async fn deleted(&self) {
        // A `Notified` receives every `notify_waiters` made after it was created, polled
        // or not: made before the check, it cannot miss a delete that comes after.
        let woken = self.on_delete.notified();
        if self.is_deleted() {
            return;
        }
        woken.await;
    }

    /// Marks this incarnation deleted and wakes everyone waiting in [`Namespace::deleted`],
    /// then everyone waiting on the live ring (its `clear` wakes them): a WebSocket
    /// subscription waiting for live events waits on the ring only, and finds the mark
    /// once woken (`ws::subscription`). The mark must come first.
    fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.on_delete.notify_waiters();
        self.live.clear();
    }

    /// Registers a live subscriber for as long as the returned value lives. Subscribe
    /// *before* reading `visible`: every event is then either below the `visible` read
    /// after, or pushed to the ring.
    pub fn subscribe_live(&self) -> LiveSubscriber {
        self.live.subscribe()
    }

    /// True when someone listens for live events.
    pub fn has_subscribers(&self) -> bool {
        self.live.has_subscribers()
    }

    /// The budget this namespace's live runs count against.
    pub fn live_budget(&self) -> &Arc<LiveBudget> {
        self.live.budget()
    }

    /// Hands committed events to live subscribers. Call after [`Namespace::publish_visible`].
    pub(super) fn send_live(&self, runs: Vec<SharedRun>) {
        self.live.push(runs);
    }

    /// The offset after the last visible event.
    pub fn visible(&self) -> u64 {
        *self.visible.borrow()
    }

    /// A receiver that changes whenever `visible` moves. It does not end when the
    /// namespace is deleted (the reader's `Arc` keeps its sender alive): wait on
    /// [`Namespace::deleted`] as well.
    pub fn watch_visible(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// Makes events below `next` visible and wakes waiting readers.
    pub(super) fn publish_visible(&self, next: u64) {
        self.visible.send_if_modified(|v| {
            let moved = next > *v;
            if moved {
                *v = next;
            }
            moved
        });
    }

    /// Makes events below `next` visible that another node of a cluster appended, and wakes
    /// every reader: waiting readers, and subscribers waiting for a live run (the events
    /// are not in the ring, so they read them from the store).
    pub(super) fn publish_remote(&self, next: u64) {
        if next > self.visible() {
            self.publish_visible(next);
            self.live.wake();
        }
    }

    /// Wakes subscribers waiting for a live run. With a shared store nothing is pushed to
    /// the ring by the writer: they read what became visible from the store.
    pub(super) fn wake_live(&self) {
        self.live.wake();
    }

    /// The oldest offset held.
    pub fn earliest(&self) -> u64 {
        self.earliest.load(Ordering::Acquire)
    }

    /// The store's description of this namespace with `earliest` and `next` as readers
    /// see them: `next` is the visible end (what is durable, not merely written), and
    /// `earliest` what retention has reported, never above `next`.
    pub fn as_read(&self, mut info: NsInfo) -> NsInfo {
        info.next = self.visible();
        info.earliest = self.earliest().min(info.next);
        info
    }

    /// Records that retention moved the oldest offset.
    pub(super) fn set_earliest(&self, earliest: u64) {
        self.earliest.fetch_max(earliest, Ordering::AcqRel);
    }
}

/// All live namespaces. The writer inserts and removes (readers only [`Namespaces::adopt`]);
/// everyone reads.
#[derive(Debug)]
pub struct Namespaces {
    map: RwLock<HashMap<String, Arc<Namespace>>>,
    /// Counts every [`Namespaces::open`], [`Namespaces::remove`] and
    /// [`Namespaces::remove_epoch`] call (changed under the map's write lock), so that a
    /// lookup made off the writer can tell whether anything was opened or removed while it
    /// asked the store ([`Namespaces::adopt`]).
    changes: AtomicU64,
    /// Runs per namespace ring, at most (`fanout_buffer`).
    fanout_buffer: usize,
    /// What every ring's runs may hold together (`fanout_memory_bytes`).
    budget: Arc<LiveBudget>,
}

impl Namespaces {
    /// No namespaces yet; each will hold at most `fanout_buffer` runs of live events, and
    /// all of them together at most `fanout_memory_bytes` bytes.
    pub fn new(fanout_buffer: usize, fanout_memory_bytes: u64) -> Namespaces {
        Namespaces {
            map: RwLock::default(),
            changes: AtomicU64::new(0),
            fanout_buffer,
            budget: LiveBudget::new(fanout_memory_bytes),
        }
    }

    /// The namespace's state, if it exists.
    pub fn get(&self, ns: &str) -> Option<Arc<Namespace>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ns)
            .cloned()
    }

    /// How many times the map was changed so far; taken before a lookup in the store that
    /// [`Namespaces::adopt`] then takes as this broker's.
    pub(super) fn generation(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Takes `info`, which the store gave for a name this broker did not know, as this
    /// broker's, without the writer (review F11): only when nothing was opened or removed
    /// since [`Namespaces::generation`] answered `seen` (the writer's own delete of the
    /// name, or the cluster listener's for another broker's, may have come between the
    /// lookup and now). Answers the state, or `None` when the caller must ask the writer.
    pub(super) fn adopt(&self, info: &NsInfo, seen: u64) -> Option<Arc<Namespace>> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = map.get(&info.name) {
            return (state.epoch == info.epoch).then(|| Arc::clone(state));
        }
        if self.changes.load(Ordering::Acquire) != seen {
            return None;
        }
        self.changes.fetch_add(1, Ordering::AcqRel);
        let state = Arc::new(Namespace::new(info, self.fanout_buffer, &self.budget));
        map.insert(info.name.clone(), Arc::clone(&state));
        Some(state)
    }

    /// Adds the incarnation the store reports in `info` and returns it; an incarnation it
    /// replaces counts as deleted. The writer's alone.
    pub(super) fn open(&self, info: &NsInfo) -> Arc<Namespace> {
        let state = Arc::new(Namespace::new(info, self.fanout_buffer, &self.budget));
        let old = {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            self.changes.fetch_add(1, Ordering::AcqRel);
            map.insert(info.name.clone(), Arc::clone(&state))
        };
        if let Some(old) = old {
            old.replaced.store(true, Ordering::Release);
            old.mark_deleted();
        }
        state
    }

    /// Removes a namespace and marks it deleted: every reader waiting on it in
    /// [`Namespace::deleted`] is woken at once. The writer's alone.
    pub(super) fn remove(&self, ns: &str) -> Option<Arc<Namespace>> {
        let old = {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            self.changes.fetch_add(1, Ordering::AcqRel);
            map.remove(ns)
        };
        if let Some(old) = &old {
            old.mark_deleted();
        }
        old
    }

    /// Removes the incarnation of `ns` whose epoch is `epoch`, if it is the one held, and
    /// marks it deleted. The cluster listener's, for a delete another broker announced:
    /// an epoch is never reused, so a later incarnation is never removed by mistake.
    pub(super) fn remove_epoch(&self, ns: &str, epoch: &str) -> Option<Arc<Namespace>> {
        let old = {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            self.changes.fetch_add(1, Ordering::AcqRel);
            match map.get(ns) {
                Some(state) if state.epoch == epoch => map.remove(ns),
                _ => None,
            }
        };
        if let Some(old) = &old {
            old.mark_deleted();
        }
        old
    }

    /// Every namespace's name and state.
    pub fn all(&self) -> Vec<(String, Arc<Namespace>)> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::Retention;

    fn info(name: &str, epoch: &str) -> NsInfo {
        NsInfo {
            name: name.into(),
            epoch: epoch.into(),
            retention: Retention::default(),
            earliest: 0,
            next: 0,
            bytes: 0,
        }
    }

    /// A waiter that is not woken fails the test instead of hanging it.
    async fn woken(state: &Namespace) {
        tokio::time::timeout(Duration::from_secs(10), state.deleted())
            .await
            .expect("deleted() was not woken");
    }

    #[tokio::test]
    async fn remove_wakes_every_waiter_of_that_incarnation_only() {
        let map = Namespaces::new(4, u64::MAX);
        let old = map.open(&info("n", "e1"));
        assert!(!old.is_deleted());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = Arc::clone(&old);
                tokio::spawn(async move { woken(&s).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let removed = map.remove("n").expect("it was there");
        assert!(Arc::ptr_eq(&removed, &old));
        assert!(old.is_deleted());
        for w in waiters {
            w.await.expect("waiter");
        }
        // A waiter that comes after the delete completes at once.
        woken(&old).await;
        // The next incarnation starts alive; removing a missing name marks nothing.
        let new = map.open(&info("n", "e2"));
        assert!(!new.is_deleted());
        assert!(map.remove("other").is_none());
        assert!(!new.is_deleted());
    }

    #[tokio::test]
    async fn an_incarnation_replaced_by_open_counts_as_deleted() {
        let map = Namespaces::new(4, u64::MAX);
        let old = map.open(&info("n", "e1"));
        map.open(&info("n", "e2"));
        assert!(old.is_deleted());
        assert_eq!(old.end_reason(), "epoch");
        woken(&old).await;
        assert_eq!(map.get("n").expect("the new one").epoch, "e2");
        let gone = map.remove("n").expect("e2");
        assert_eq!(gone.end_reason(), "deleted");
    }

    /// Review F11: a reader adopts what it looked up in the store for a name the broker
    /// did not know only if nothing was opened or removed since it asked: a delete that
    /// came in between (the writer's, or the listener's for another broker) must not be
    /// undone by the lookup's older answer.
    #[test]
    fn a_lookup_is_adopted_only_when_nothing_changed_meanwhile() {
        let map = Namespaces::new(4, u64::MAX);
        let seen = map.generation();
        let adopted = map.adopt(&info("n", "e1"), seen).expect("nothing changed");
        assert!(Arc::ptr_eq(&adopted, &map.get("n").expect("adopted")));
        // The same incarnation again: the one held.
        let again = map.adopt(&info("n", "e1"), seen).expect("the same epoch");
        assert!(Arc::ptr_eq(&again, &adopted));
        // Another incarnation than the one held: for the writer to decide.
        assert!(map.adopt(&info("n", "e2"), map.generation()).is_none());
        // Looked up, then deleted (even a name not held), then adopted: refused.
        let seen = map.generation();
        map.remove_epoch("m", "e1");
        assert!(map.adopt(&info("m", "e1"), seen).is_none());
        assert!(map.get("m").is_none());
        let seen = map.generation();
        map.remove("m");
        assert!(map.adopt(&info("m", "e1"), seen).is_none());
        assert!(map.adopt(&info("m", "e1"), map.generation()).is_some());
    }

    #[test]
    fn readers_see_the_visible_end_not_what_the_store_has_written() {
        let map = Namespaces::new(4, u64::MAX);
        let ns = map.open(&NsInfo {
            earliest: 2,
            next: 5,
            ..info("n", "e1")
        });
        // The store has written up to 9 and its retention reached 7: readers see only
        // what the writer made visible and reported, and an `earliest` never above `next`.
        let written = NsInfo {
            earliest: 7,
            next: 9,
            ..info("n", "e1")
        };
        let seen = ns.as_read(written.clone());
        assert_eq!((seen.earliest, seen.next), (2, 5));
        ns.set_earliest(7);
        let seen = ns.as_read(written.clone());
        assert_eq!((seen.earliest, seen.next), (5, 5));
        ns.publish_visible(9);
        let seen = ns.as_read(written);
        assert_eq!((seen.earliest, seen.next), (7, 9));
    }
}
