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

/// One announcement on the channel; each names the epoch of the incarnation it is about.
#[derive(Debug, PartialEq, Eq)]
enum Change<'a> {
    /// Offsets below `next` of incarnation `epoch` are in the store.
    Appended {
        ns: &'a str,
        epoch: &'a str,
        next: u64,
    },
    /// Incarnation `epoch` was deleted.
    Deleted { ns: &'a str, epoch: &'a str },
    /// The namespace was created or trimmed: refresh it.
    Other { ns: &'a str },
}

fn parse(text: &str) -> Option<Change<'_>> {
    let mut parts = text.splitn(4, ' ');
    let kind = parts.next()?;
    let n: u64 = parts.next()?.parse().ok()?;
    let epoch = parts.next().filter(|e| !e.is_empty())?;
    let ns = parts.next().filter(|n| !n.is_empty())?;
    match kind {
        "a" => Some(Change::Appended { ns, epoch, next: n }),
        "d" => Some(Change::Deleted { ns, epoch }),
        "c" | "r" => Some(Change::Other { ns }),
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
                    store.reset_connections();
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
        handle(store, namespaces, tx, &mut tails, &payload);
    }
    Ok(())
}

/// Handles one announcement: `tails` is the listener's, per connection.
fn handle(
    store: &RedisStore,
    namespaces: &Namespaces,
    tx: &mpsc::Sender<Command>,
    tails: &mut HashMap<String, (String, u64)>,
    payload: &str,
) {
    match parse(payload) {
        Some(Change::Appended { ns, epoch, next }) => match namespaces.get(ns) {
            Some(state) if state.epoch == epoch => {
                // Never the number in the message: whoever can `PUBLISH` chooses it. What
                // was read from the stream, or else the store's own `next` for the epoch.
                let known = feed(store, &state, next, tails).or_else(|| stored_next(store, &state));
                if let Some(known) = known {
                    state.publish_remote(known);
                }
                // Even when `visible` was already there (this node's writer moved it):
                // a subscriber parked on the ring reads the store.
                if state.has_subscribers() {
                    state.wake_live();
                }
            }
            // Another incarnation than the one this node serves: nothing of it is fed to
            // this one. The writer asks the store which is current (waited for, not
            // dropped when its queue is full).
            Some(_) => refresh(tx, ns),
            None => {
                tails.remove(ns);
            }
        },
        Some(Change::Deleted { ns, epoch }) => {
            // At once, here: every reader of that incarnation stops before anything of
            // the next one could reach it. An epoch is never reused, so a newer
            // incarnation this node already follows stays.
            tails.remove(ns);
            if namespaces.remove_epoch(ns, epoch).is_some() {
                tracing::info!(ns, epoch, "namespace deleted by another broker");
            }
        }
        Some(Change::Other { ns }) => refresh(tx, ns),
        None => tracing::debug!(payload, "cluster listener: unknown announcement"),
    }
}

/// Asks the writer to refresh `ns` from the store; waits while its queue is full.
fn refresh(tx: &mpsc::Sender<Command>, ns: &str) {
    let _ = tx.blocking_send(Command::Refresh {
        ns: ns.to_owned(),
        reply: None,
    });
}

/// Pushes the events from where the ring of `state` got to, up to `next` and whatever else
/// the stream already holds (at most [`TAIL_EVENTS`]), read from the store once for every
/// subscriber of this node. Returns the end of what is known to be in the store (from a
/// read, this one or an earlier one, or the visible end), or `None` when that is below
/// `next` and nothing was read. Reading past `next`
/// lets one read answer the announcements queued behind this one, which then read nothing:
/// under load the reads coalesce.
fn feed(
    store: &RedisStore,
    state: &Namespace,
    next: u64,
    tails: &mut HashMap<String, (String, u64)>,
) -> Option<u64> {
    let name: &str = &state.name;
    let from = match tails.get(name) {
        Some((epoch, tail)) if *epoch == state.epoch => *tail,
        // First seen (or a new incarnation): only what is new from here on.
        _ => state.visible(),
    };
    // Read before, or visible already: either is in the store.
    if from >= next {
        return Some(from);
    }
    if !state.has_subscribers() {
        return None;
    }
    let from = from.max(next.saturating_sub(TAIL_EVENTS));
    // Checked against the epoch in the same step: once the incarnation is gone (deleted,
    // perhaps re-created, under the same name) nothing is read, so nothing of the next one
    // reaches this one's ring or moves its visible end.
    let read = store.read_at_epoch(
        name,
        &state.epoch,
        from,
        u64::MAX,
        TAIL_EVENTS as usize,
        TAIL_BYTES,
    );
    match read {
        Ok(events) => {
            let tail = events.last()?.offset + 1;
            state.send_live(SharedRun::split(&state.name, events, state.live_budget()));
            tails.insert(name.to_owned(), (state.epoch.clone(), tail));
            Some(tail)
        }
        Err(e) => {
            tracing::debug!(ns = name, error = %e, "cluster listener: tail read failed");
            None
        }
    }
}

/// The store's `next` for the incarnation `state` is, when it still is the store's.
fn stored_next(store: &RedisStore, state: &Namespace) -> Option<u64> {
    match store.info(&state.name) {
        Ok(Some(info)) if info.epoch == state.epoch => Some(info.next),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(ns = %state.name, error = %e, "cluster listener: reading next failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::redis::{test_server, RedisOptions};
    use crate::storage::Retention;
    use rewind_protocol::{NewEvent, Payload};

    fn store(prefix: &str) -> Arc<RedisStore> {
        store_in(prefix, &test_server::url())
    }

    fn store_in(prefix: &str, url: &str) -> Arc<RedisStore> {
        RedisStore::open(RedisOptions {
            url: url.into(),
            prefix: prefix.into(),
            wait_replicas: 0,
            wait_timeout_ms: 100,
            timeout_ms: 5000,
        })
        .unwrap()
    }

    fn events(n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent {
                event: "n".into(),
                key: None,
                data: Payload::Json(format!("{i}")),
            })
            .collect()
    }

    /// Every announcement the store made since `pubsub` subscribed, in order.
    fn announcements(pubsub: &mut redis::PubSub<'_>, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                pubsub
                    .get_message()
                    .expect("an announcement")
                    .get_payload()
                    .expect("text")
            })
            .collect()
    }

    /// Review F1: CREATE keeps `next`, so the next incarnation's offsets follow the old
    /// one's; the listener fed them into the old incarnation and moved its visible end.
    /// The real announcements of a delete, a re-create and an append, handled in order
    /// while the old incarnation has a live subscriber.
    #[test]
    fn the_next_incarnations_events_never_reach_the_old_one() {
        let store = store("f1-incarnation");
        let mut con = store.connect(Some(Duration::from_secs(5))).unwrap();
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(store.channel()).unwrap();
        store.create("x", Retention::default()).unwrap();
        store.append("x", &events(5), 1, None).unwrap();
        let namespaces = Namespaces::new(16, u64::MAX);
        let old = namespaces.open(&store.info("x").unwrap().expect("x"));
        let _sub = old.subscribe_live();
        assert!(store.delete("x").unwrap());
        store.create("x", Retention::default()).unwrap();
        store.append("x", &events(3), 2, None).unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let mut tails = HashMap::new();
        // The announcements of the first create and append, then of the rest.
        for payload in announcements(&mut pubsub, 5) {
            handle(&store, &namespaces, &tx, &mut tails, &payload);
        }
        assert_eq!(
            old.visible(),
            5,
            "the old incarnation was fed the new one's"
        );
        assert!(old.is_deleted(), "the delete was not handled at once");
    }

    /// Tester finding 3: the old incarnation's state is opened before anything is
    /// appended, so its listener feed reads from offset 0 when it handles the first
    /// append's announcement. By then the namespace was deleted and re-created (offsets
    /// continue at 5): a read by name found the new incarnation's 5..8, pushed them into
    /// the old ring and moved the old visible end to 8. The epoch-checked read finds the
    /// incarnation gone and feeds nothing.
    #[test]
    fn a_feed_behind_a_delete_reads_nothing_of_the_next_incarnation() {
        let store = store("i13-feed-behind");
        let mut con = store.connect(Some(Duration::from_secs(5))).unwrap();
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(store.channel()).unwrap();
        store.create("x", Retention::default()).unwrap();
        let namespaces = Namespaces::new(16, u64::MAX);
        let old = namespaces.open(&store.info("x").unwrap().expect("x"));
        assert_eq!(old.visible(), 0);
        let sub = old.subscribe_live();
        store.append("x", &events(5), 1, None).unwrap();
        assert!(store.delete("x").unwrap());
        let again = store.create("x", Retention::default()).unwrap();
        assert_eq!(again.next, 5, "offsets continue after a delete");
        store.append("x", &events(3), 2, None).unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let mut tails = HashMap::new();
        // create, append, delete, create, append: handled in the order they were made.
        for payload in announcements(&mut pubsub, 5) {
            handle(&store, &namespaces, &tx, &mut tails, &payload);
            assert!(old.visible() <= 5, "old visible end {}", old.visible());
            let fed = sub.ring().runs_from(0, u64::MAX);
            let end = fed.iter().map(|r| r.end()).max().unwrap_or(0);
            assert!(end <= 5, "the old ring was fed up to {end}");
        }
        assert!(old.is_deleted(), "the delete was not handled at once");
    }

    /// Review F2: the listener moved the visible end to the number in the message, which
    /// anyone who can `PUBLISH` (or another database's deployment under the same prefix:
    /// Pub/Sub ignores database numbers) chooses: a false truncation, and offsets never
    /// visible. Now the visible end moves only to what the store holds for that epoch,
    /// and each database has a channel of its own.
    #[test]
    fn the_visible_end_moves_only_to_what_the_store_holds() {
        let store = store("f2-forged");
        store.create("y", Retention::default()).unwrap();
        store.append("y", &events(3), 1, None).unwrap();
        let namespaces = Namespaces::new(16, u64::MAX);
        let info = store.info("y").unwrap().expect("y");
        let state = namespaces.open(&info);
        let (tx, _rx) = mpsc::channel(16);
        let mut tails = HashMap::new();
        for sub in [None, Some(state.subscribe_live())] {
            let forged = format!("a {} {} y", u64::MAX, info.epoch);
            handle(&store, &namespaces, &tx, &mut tails, &forged);
            assert_eq!(state.visible(), 3, "moved by a forged announcement");
            drop(sub);
        }
        let db1 = store_in("f2-forged", &format!("{}/1", test_server::url()));
        assert_ne!(db1.channel(), store.channel());
    }

    #[test]
    fn announcements_parse_and_garbage_does_not() {
        assert_eq!(
            parse("a 17 e1 logs.api"),
            Some(Change::Appended {
                ns: "logs.api",
                epoch: "e1",
                next: 17
            })
        );
        assert_eq!(
            parse("d 0 e1 x"),
            Some(Change::Deleted {
                ns: "x",
                epoch: "e1"
            })
        );
        assert_eq!(parse("r 5 e1 x"), Some(Change::Other { ns: "x" }));
        assert_eq!(parse("c 0 e1 x"), Some(Change::Other { ns: "x" }));
        for bad in [
            "",
            "a",
            "a x y",
            "z 1 e ns",
            "a 1",
            "a 1 e",
            "a 17 logs.api",
            "a 1  x",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
