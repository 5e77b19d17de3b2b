//! A session's open subscriptions as one stream of what they yield.
//!
//! Most connections hold one subscription: that one is polled directly, with the session
//! task's own waker. Only a second subscription brings in a [`SelectAll`], whose
//! `FuturesUnordered` allocates a task for each item a stream yields and registers the
//! session's waker on every poll (2–5 % of a paced delivery's CPU in the profile of
//! `docs/benchmarks.md`, issue 14 part B).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::SelectAll;
use futures::{Stream, StreamExt};

/// Every open subscription's stream; an ended stream is dropped.
#[derive(Default)]
pub(super) enum Streams<S> {
    /// No subscription is open.
    #[default]
    Empty,
    /// One subscription, polled directly.
    One(S),
    /// Two or more (or what is left of them).
    Many(SelectAll<S>),
}

impl<S: Stream + Unpin> Streams<S> {
    /// True when no stream is held.
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Streams::Empty => true,
            Streams::One(_) => false,
            Streams::Many(all) => all.is_empty(),
        }
    }

    /// Adds a stream; it is polled from the next poll on.
    pub(super) fn push(&mut self, stream: S) {
        *self = match std::mem::take(self) {
            Streams::Empty => Streams::One(stream),
            Streams::One(first) => {
                let mut all = SelectAll::new();
                all.push(first);
                all.push(stream);
                Streams::Many(all)
            }
            Streams::Many(mut all) => {
                all.push(stream);
                Streams::Many(all)
            }
        };
    }
}

impl<S: Stream + Unpin> Stream for Streams<S> {
    type Item = S::Item;

    /// The next item of any stream; `Ready(None)` when none is held (at once, as
    /// [`SelectAll`] does), `Pending` with the task registered with every stream that
    /// may yield.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        match this {
            Streams::Empty => Poll::Ready(None),
            Streams::Many(all) => all.poll_next_unpin(cx),
            Streams::One(one) => match one.poll_next_unpin(cx) {
                Poll::Ready(None) => {
                    *this = Streams::Empty;
                    Poll::Ready(None)
                }
                other => other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use futures::channel::mpsc;
    use futures::stream::{AbortHandle, Abortable};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<S: Stream + Unpin>(s: &mut Streams<S>, count: &Arc<Count>) -> Poll<Option<S::Item>> {
        let waker = Arc::clone(count).into();
        s.poll_next_unpin(&mut Context::from_waker(&waker))
    }

    #[test]
    fn one_stream_yields_wakes_and_ends_then_more_streams_are_merged() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let mut s: Streams<mpsc::UnboundedReceiver<u32>> = Streams::default();
        assert!(s.is_empty());
        assert_eq!(poll(&mut s, &count), Poll::Ready(None));

        let (tx, rx) = mpsc::unbounded();
        s.push(rx);
        assert!(matches!(s, Streams::One(_)));
        assert_eq!(poll(&mut s, &count), Poll::Pending);
        tx.unbounded_send(1).expect("send");
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the one stream wakes the task"
        );
        assert_eq!(poll(&mut s, &count), Poll::Ready(Some(1)));
        drop(tx);
        assert_eq!(poll(&mut s, &count), Poll::Ready(None));
        assert!(s.is_empty(), "an ended stream is dropped");

        let (a_tx, a) = mpsc::unbounded();
        let (b_tx, b) = mpsc::unbounded();
        let (c_tx, c) = mpsc::unbounded();
        s.push(a);
        s.push(b);
        assert!(matches!(s, Streams::Many(_)));
        s.push(c);
        assert_eq!(poll(&mut s, &count), Poll::Pending);
        for (i, tx) in [&a_tx, &b_tx, &c_tx].into_iter().enumerate() {
            tx.unbounded_send(i as u32 * 10).expect("send");
        }
        assert!(
            count.0.load(Ordering::SeqCst) > 1,
            "any stream wakes the task"
        );
        let mut got: Vec<u32> = (0..3)
            .map(|_| match poll(&mut s, &count) {
                Poll::Ready(Some(v)) => v,
                other => panic!("expected an item, got {other:?}"),
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, [0, 10, 20]);
        drop((a_tx, b_tx));
        assert_eq!(poll(&mut s, &count), Poll::Pending, "c is still open");
        assert!(!s.is_empty());
        drop(c_tx);
        assert_eq!(poll(&mut s, &count), Poll::Ready(None));
        assert!(s.is_empty());
    }

    #[test]
    fn an_aborted_single_stream_ends_and_is_dropped() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let (tx, rx) = mpsc::unbounded::<u32>();
        let (abort, registration) = AbortHandle::new_pair();
        let mut s = Streams::default();
        s.push(Abortable::new(rx, registration));
        assert_eq!(poll(&mut s, &count), Poll::Pending);
        abort.abort();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the abort wakes the task"
        );
        tx.unbounded_send(7).expect("send");
        assert_eq!(poll(&mut s, &count), Poll::Ready(None));
        assert!(s.is_empty());
    }
}
