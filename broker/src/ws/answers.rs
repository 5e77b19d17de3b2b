//! The answers a connection owes its publishes, handed out in the order the publishes
//! were sent (spec §3.1): a client can match the n-th answer to its n-th publish without
//! a map, as a Kafka producer does per partition.
//!
//! ### Invariants
//!
//! - Answers leave in the order their publishes arrived, `published` and `error` alike.
//! - Nothing here waits on the session: a publish's answer comes from the writer, which
//!   never waits for a session. Only the oldest answer is waited on; the writer answers a
//!   connection's appends in the order they were queued, so the others are ready by then.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rewind_protocol::frame::ServerFrame;

use crate::engine::{Appended, Pending};

/// One publish's place in line.
enum Slot {
    /// Queued to the writer; answered once durable.
    Waiting {
        id: u64,
        ns: String,
        pending: Pending<Appended>,
    },
    /// Already answered (refused before it reached the writer), waiting for its turn.
    Answered(Box<ServerFrame>),
}

/// The publishes of one connection that have not been answered yet, oldest first.
#[derive(Default)]
pub(super) struct Answers {
    queue: VecDeque<Slot>,
}

impl Answers {
    /// Publishes not answered yet (counted against `ws_max_inflight_publishes`).
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when every publish has been answered.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A publish queued to the writer.
    pub(super) fn push_waiting(&mut self, id: u64, ns: String, pending: Pending<Appended>) {
        self.queue.push_back(Slot::Waiting { id, ns, pending });
    }

    /// A publish answered at once (an `error` with its `id`), sent after those before it.
    pub(super) fn push_answered(&mut self, answer: ServerFrame) {
        self.queue.push_back(Slot::Answered(Box::new(answer)));
    }

    /// Hands `send` every answer whose turn has come, in order; wakes the task when the
    /// oldest one waiting is answered.
    pub(super) fn poll_ready(&mut self, cx: &mut Context<'_>, mut send: impl FnMut(ServerFrame)) {
        while let Some(front) = self.queue.front_mut() {
            let (result, replicated) = match front {
                Slot::Answered(_) => (None, None),
                Slot::Waiting { pending, .. } => match Pin::new(&mut *pending).poll(cx) {
                    Poll::Pending => return,
                    Poll::Ready(result) => (Some(result), pending.not_replicated()),
                },
            };
            let answer = match (self.queue.pop_front(), result) {
                (Some(Slot::Answered(f)), _) => *f,
                (Some(Slot::Waiting { id, ns, .. }), Some(Ok(appended))) => {
                    ServerFrame::Published {
                        id,
                        ns,
                        offset: appended.first(),
                        replicated,
                    }
                }
                (Some(Slot::Waiting { id, ns, .. }), Some(Err(e))) => {
                    ServerFrame::error(e.code(), e.to_string(), Some(id), Some(ns))
                }
                // A waiting slot always has a result here, and the queue was not empty.
                (Some(Slot::Waiting { .. }), None) | (None, _) => return,
            };
            send(answer);
        }
    }
}
