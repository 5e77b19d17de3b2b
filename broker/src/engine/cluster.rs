//! Fan-out across the broker nodes that share one Redis (`docs/cluster.md`).
//!
//! Every mutation script announces itself on the store's Pub/Sub channel
//! ([`RedisStore::channel`]). Each node keeps ONE Pub/Sub connection, on a thread of its
//! own, and for each announcement:
//!
//! - `a NEXT NS` (an append, by any node, this one included): if this node has the
//!   namespace and it has live subscribers, the events from where this listener last got
//!   to, up to `NEXT` and beyond if the stream holds more, are read once (at most
//!   [`TAIL_EVENTS`]) and pushed into the live ring, in offset order; then the visible end
//!   moves past them and readers wake. Announcements whose events were already read read
//!   nothing, so under load one read serves many. The writer pushes nothing into the ring
//!   with a shared store, so runs never interleave out of order; it wakes the ring after it
//!   moves `visible`, and so does every announcement for a namespace with subscribers, so a
//!   subscriber on the publishing node never waits for the next append. Whatever is not in the ring (a first announcement, a long
//!   burst, a missed one) readers take from the store, from their own offsets, so no
//!   reader skips an offset. Namespaces this node has no state for cost one map lookup.
//! - `c`, `d`, `r` (create, delete, retention): the writer refreshes the namespace from
//!   the store ([`Command::Refresh`]), so deletes reach every node's readers at once.
//!
//! A missed announcement (the connection dropped, the writer's queue was full) is healed by
//! [`Command::RefreshAll`]: after every (re)connect, and every `redis_heal_interval_ms`.
//! Visible ends only move up to what the store holds, and the store's offsets are dense, so
//! whatever a node makes visible is there to read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::fanout::SharedRun;
use crate::engine::namespaces::{Namespace, Namespaces};
use crate::engine::writer::Command;
use crate::storage::redis::RedisStore;
use crate::storage::Storage;

/// Most events one announcement reads into the live ring; past it readers read the store.
const TAIL_EVENTS: u64 = 4096;
/// Most bytes of records one announcement reads into the live ring.
const TAIL_BYTES: usize = 4 << 20;

/// How long the listener waits for a message before it looks at the shutdown token.
const POLL: Duration = Duration::from_millis(250);
/// The wait before reconnecting after the connection failed.
const BACKOFF: Duration = Duration::from_millis(200);

/// One announcement on the channel.
#[derive(Debug, PartialEq, Eq)]
enum Change<'a> {
    /// Offsets below `next` are in the store.
    Appended { ns: &'a str, next: u64 },
    /// The namespace was created, deleted or trimmed: refresh it.
    Other { ns: &'a str },
}

fn parse(text: &str) -> Option<Change<'_>> {
    let mut parts = text.splitn(3, ' ');
    let kind = parts.next()?;
    let n: u64 = parts.next()?.parse().ok()?;
    let ns = parts.next()?;
    match kind {
        "a" => Some(Change::Appended { ns, next: n }),
        "c" | "d" | "r" => Some(Change::Other { ns }),
        _ => None,
    }
}

/// Starts the listener thread; it stops once `shutdown` is cancelled.
pub(crate) fn spawn_listener(
    store: Arc<RedisStore>,
    namespaces: Arc<Namespaces>,
    tx: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("rewind-cluster".into())
        .spawn(move || {
            while !shutdown.is_cancelled() {
                if let Err(e) = listen(&store, &namespaces, &tx, &shutdown) {
                    tracing::warn!(error = %e, "cluster listener: reconnecting");
                    std::thread::sleep(BACKOFF);
                }
            }
        })?;
    Ok(())
}

/// One connection's life: subscribe, heal what was missed, then follow announcements.
fn listen(
    store: &RedisStore,
    namespaces: &Namespaces,
    tx: &mpsc::Sender<Command>,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut con = store.connect(Some(POLL))?;
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe(store.channel())?;
    pubsub.set_read_timeout(Some(POLL))?;
    // Whatever happened while this node was not listening.
    let _ = tx.try_send(Command::RefreshAll);
    // Per namespace: the epoch and the offset up to which its ring has been fed.
    let mut tails: HashMap<String, (String, u64)> = HashMap::new();
    while !shutdown.is_cancelled() {
        let msg = match pubsub.get_message() {
            Ok(msg) => msg,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e.into()),
        };
        let payload: String = match msg.get_payload() {
            Ok(p) => p,
            Err(_) => continue,
        };
        match parse(&payload) {
            Some(Change::Appended { ns, next }) => match namespaces.get(ns) {
                Some(state) => {
                    let known = feed(store, &state, next, &mut tails);
                    state.publish_remote(known);
                    // Even when `visible` was already there (this node's writer moved it):
                    // a subscriber parked on the ring reads the store.
                    if state.has_subscribers() {
                        state.wake_live();
                    }
                }
                None => {
                    tails.remove(ns);
                }
            },
            Some(Change::Other { ns }) => {
                // A full queue: the next heal catches up.
                let _ = tx.try_send(Command::Refresh {
                    ns: ns.to_owned(),
                    reply: None,
                });
            }
            None => tracing::debug!(payload, "cluster listener: unknown announcement"),
        }
    }
    Ok(())
}

/// Pushes the events from where the ring of `state` got to, up to `next` and whatever else
/// the stream already holds (at most [`TAIL_EVENTS`]), read from the store once for every
/// subscriber of this node; returns the end of what is known to be in the store. Reading
/// past `next` lets one read answer the announcements queued behind this one, which then
/// read nothing: under load the reads coalesce.
fn feed(
    store: &RedisStore,
    state: &Namespace,
    next: u64,
    tails: &mut HashMap<String, (String, u64)>,
) -> u64 {
    let name: &str = &state.name;
    let from = match tails.get(name) {
        Some((epoch, tail)) if *epoch == state.epoch => *tail,
        // First seen (or a new incarnation): only what is new from here on.
        _ => state.visible(),
    };
    let mut tail = from.max(next);
    if from < next && state.has_subscribers() {
        let from = from.max(next.saturating_sub(TAIL_EVENTS));
        match store.read(name, from, u64::MAX, TAIL_EVENTS as usize, TAIL_BYTES) {
            Ok(events) => {
                if let Some(last) = events.last() {
                    tail = tail.max(last.offset + 1);
                    state.send_live(SharedRun::split(&state.name, events, state.live_budget()));
                }
            }
            Err(e) => tracing::debug!(ns = name, error = %e, "cluster listener: tail read failed"),
        }
    }
    tails.insert(name.to_owned(), (state.epoch.clone(), tail));
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse_and_garbage_does_not() {
        assert_eq!(
            parse("a 17 logs.api"),
            Some(Change::Appended {
                ns: "logs.api",
                next: 17
            })
        );
        assert_eq!(parse("d 0 x"), Some(Change::Other { ns: "x" }));
        assert_eq!(parse("r 5 x"), Some(Change::Other { ns: "x" }));
        for bad in ["", "a", "a x y", "z 1 ns", "a 1"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
