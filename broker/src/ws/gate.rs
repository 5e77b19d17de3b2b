//! A wake-up gate: polls a group of futures only after one of them woke the task.
//!
//! A session is one task woken by many things: its socket, its subscriptions, the
//! publishes' answers, its timers, shutdown. Polling all of them on every wake-up costs
//! each delivery of a live event the polling of everything else (issue 14's profile of
//! the paced path: the shutdown token's two shared locks, the ping timer, a read attempt
//! on the socket with tungstenite's buffer zero-filled). A [`Gate`] is a waker of its own
//! for one group: the futures of the group are polled with it, and the session polls the
//! group again only when it was woken — or when it asks to ([`Gate::open`]), because it
//! stopped polling the group for a reason of its own rather than because the group had
//! nothing ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use futures::task::AtomicWaker;

#[derive(Debug, Default)]
struct Signal {
    /// Woken (or opened) since the group was last polled.
    open: AtomicBool,
    /// The task to wake.
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.open.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A group's waker, and whether the group is due a poll.
#[derive(Debug)]
pub(super) struct Gate {
    signal: Arc<Signal>,
    waker: Waker,
}

impl Gate {
    /// A gate that is open: the group is polled on the first pass.
    pub(super) fn new() -> Gate {
        let signal = Arc::new(Signal::default());
        signal.open.store(true, Ordering::Release);
        Gate {
            waker: Waker::from(Arc::clone(&signal)),
            signal,
        }
    }

    /// Makes the task of `cx` the one a wake-up of the group wakes, and says whether the
    /// group is due a poll (closing the gate: poll the group now, with [`Gate::waker`]).
    pub(super) fn enter(&self, cx: &Context<'_>) -> bool {
        // Registered before the flag is read: a wake-up after the read wakes this task.
        self.signal.task.register(cx.waker());
        self.signal.open.swap(false, Ordering::AcqRel)
    }

    /// Has the group polled on the next pass, woken or not.
    pub(super) fn open(&self) {
        self.signal.open.store(true, Ordering::Release);
    }

    /// The waker to poll the group with.
    pub(super) fn waker(&self) -> &Waker {
        &self.waker
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_group_is_polled_first_then_only_once_woken_or_opened() {
        let task = Arc::new(Count::default());
        let task_waker = Waker::from(Arc::clone(&task));
        let cx = Context::from_waker(&task_waker);
        let gate = Gate::new();
        assert!(gate.enter(&cx), "due on the first pass");
        assert!(!gate.enter(&cx), "not again until woken");
        // A future of the group, polled with the gate's waker, wakes it later.
        let notify = tokio::sync::Notify::new();
        let mut wait = pin!(notify.notified());
        let mut gcx = Context::from_waker(gate.waker());
        assert_eq!(wait.as_mut().poll(&mut gcx), Poll::Pending);
        assert!(!gate.enter(&cx));
        notify.notify_waiters();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(gate.enter(&cx), "and the group is due");
        assert!(!gate.enter(&cx));
        gate.open();
        assert!(gate.enter(&cx), "opened by the session");
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "opening wakes nothing");
    }
}
