//! The live state of every namespace that readers look at without touching the store:
//! its epoch, how far it is durable, and where it starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, watch};

use crate::fanout::SharedRun;
use crate::storage::NsInfo;

/// One live namespace as readers see it.
#[derive(Debug)]
pub struct NsState {
    /// The epoch of this incarnation; a delete and re-create makes a new `NsState`.
    pub epoch: String,
    /// The offset after the last event readers may see. Only the writer moves it, and only
    /// once the events below it are durable (or, in relaxed mode, written). Waiting readers
    /// watch it to be woken by appends.
    visible: watch::Sender<u64>,
    /// The oldest offset still held; moved by retention.
    earliest: AtomicU64,
    /// Live events for subscribers (see [`crate::fanout`]); dropping it tells them the
    /// namespace is gone.
    fanout: broadcast::Sender<Arc<SharedRun>>,
    /// The name, shared by every event sent to subscribers.
    pub name: Arc<str>,
}

impl NsState {
    /// State for a namespace the store reports, with a live ring of `fanout_buffer` runs
    /// of events.
    pub fn new(info: &NsInfo, fanout_buffer: usize) -> NsState {
        NsState {
            epoch: info.epoch.clone(),
            visible: watch::Sender::new(info.next),
            earliest: AtomicU64::new(info.earliest),
            fanout: broadcast::Sender::new(fanout_buffer.max(1)),
            name: Arc::from(info.name.as_str()),
        }
    }

    /// A receiver of live events. Subscribe *before* reading `visible`: every event is
    /// then either below the `visible` read after, or arrives here.
    pub fn subscribe_live(&self) -> broadcast::Receiver<Arc<SharedRun>> {
        self.fanout.subscribe()
    }

    /// True when someone listens for live events.
    pub fn has_subscribers(&self) -> bool {
        self.fanout.receiver_count() > 0
    }

    /// Hands committed events to live subscribers. Call after [`NsState::publish_visible`].
    pub fn send_live(&self, run: SharedRun) {
        // An error only means nobody listens any more.
        let _ = self.fanout.send(Arc::new(run));
    }

    /// The offset after the last visible event.
    pub fn visible(&self) -> u64 {
        *self.visible.borrow()
    }

    /// A receiver that changes whenever `visible` moves, and errs when the namespace goes.
    pub fn watch_visible(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// Makes events below `next` visible and wakes waiting readers.
    pub fn publish_visible(&self, next: u64) {
        self.visible.send_if_modified(|v| {
            let moved = next > *v;
            if moved {
                *v = next;
            }
            moved
        });
    }

    /// The oldest offset held.
    pub fn earliest(&self) -> u64 {
        self.earliest.load(Ordering::Acquire)
    }

    /// Records that retention moved the oldest offset.
    pub fn set_earliest(&self, earliest: u64) {
        self.earliest.fetch_max(earliest, Ordering::AcqRel);
    }
}

/// All live namespaces. The writer inserts and removes; everyone reads.
#[derive(Debug, Default)]
pub struct Namespaces {
    map: RwLock<HashMap<String, Arc<NsState>>>,
}

impl Namespaces {
    /// The namespace's state, if it exists.
    pub fn get(&self, ns: &str) -> Option<Arc<NsState>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ns)
            .cloned()
    }

    /// Adds (or replaces) a namespace.
    pub fn insert(&self, ns: &str, state: Arc<NsState>) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.to_owned(), state);
    }

    /// Removes a namespace; its waiting readers are woken with an error.
    pub fn remove(&self, ns: &str) -> Option<Arc<NsState>> {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ns)
    }

    /// Every namespace's name and state.
    pub fn all(&self) -> Vec<(String, Arc<NsState>)> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }
}
