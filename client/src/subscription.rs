//! [`Subscription`]: one namespace's events as a `Stream`, with credit granted to the
//! broker as the application consumes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use rewind_protocol::Event;
use tokio::sync::{mpsc, Notify};

use crate::offsets::Resume;

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The namespace's epoch, when first learned and whenever it changes.
    Epoch(String),
    /// The next event: offsets strictly increase by one, except after `Truncated` or
    /// `Gap`.
    Event(Event),
    /// Offsets were skipped, never silently: below retention (`reason` `retention`), or
    /// the log is another one now (`epoch`). Delivery continues at `from`.
    Truncated {
        /// The offset asked for.
        requested: u64,
        /// The offset delivery continues at.
        from: u64,
        /// `retention` or `epoch`.
        reason: String,
    },
    /// Offsets `from..to` were not delivered, and no `Truncated` announced it: the broker
    /// could not encode an event for this client (`reason` says why), or offsets were
    /// missing from the stream. An error the application should see; delivery goes on
    /// at `to`.
    Gap {
        /// The first offset missing.
        from: u64,
        /// The offset delivery goes on at.
        to: u64,
        /// Why, as far as the client knows.
        reason: String,
    },
    /// The broker ended the subscription (the namespace was deleted, or `open` was
    /// refused); nothing follows.
    Ended {
        /// Why.
        reason: String,
    },
}

/// Credit bookkeeping shared with the connection driver.
#[derive(Debug)]
pub(crate) struct Grants {
    /// Events consumed and not yet granted back to the broker.
    pub(crate) consumed: AtomicU64,
    /// Wakes the driver to send a `credit` frame.
    pub(crate) wake: Arc<Notify>,
    /// Grant once this many are consumed.
    pub(crate) batch: u64,
}

/// One namespace's stream. Dropping it unsubscribes.
pub struct Subscription {
    pub(crate) ns: String,
    pub(crate) rx: mpsc::Receiver<Item>,
    pub(crate) grants: Arc<Grants>,
    pub(crate) epoch: Option<String>,
    pub(crate) next: Option<u64>,
    pub(crate) unsubscribe: Option<Box<dyn FnOnce() + Send>>,
}

impl Subscription {
    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Where to resume after the last item taken from this stream, for an
    /// [`crate::OffsetStore`]: the next offset and its epoch (once both are known).
    pub fn resume(&self) -> Option<Resume> {
        Some(Resume {
            next: self.next?,
            epoch: self.epoch.clone()?,
        })
    }

    /// Items received but not yet taken: never more than the buffer the client was
    /// configured with, however fast the namespace grows.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

impl Stream for Subscription {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(item)) = &polled {
            match item {
                Item::Event(ev) => {
                    self.next = Some(ev.offset + 1);
                    self.grants.consumed.fetch_add(1, Ordering::AcqRel);
                }
                Item::Epoch(e) => self.epoch = Some(e.clone()),
                Item::Truncated { from, .. } => self.next = Some(*from),
                Item::Gap { to, .. } => self.next = Some(*to),
                Item::Ended { .. } => {}
            }
            // Room was made: the driver may move held-back items in and grant credit.
            self.grants.wake.notify_one();
        }
        polled
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(unsubscribe) = self.unsubscribe.take() {
            unsubscribe();
        }
    }
}
