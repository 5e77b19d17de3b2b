//! Fan-out across the broker nodes that share one Redis (`docs/cluster.md`).
//!
//! Every mutation script announces itself on the store's Pub/Sub channel
//! ([`RedisStore::channel`]). Each node keeps ONE Pub/Sub connection, on a thread of its
//! own, and handles announcements in batches (what is pending once one came; appends to one
//! incarnation coalesced into one, with the highest `NEXT`; see [`Listener::handle_batch`]).
//! For each:
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
//! - `c`, `r` (create, retention): the writer refreshes the namespace from the store
//!   ([`Command::Refresh`]) and the listener waits for it, so the announcements after it
//!   find the namespace as the store has it.
//! - `d` (delete): the incarnation it names ends here at once, on the listener.
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
/// Announcements received and not handled yet, at most: past it the reader waits, and
/// Redis holds them (up to its `client-output-buffer-limit pubsub`).
const QUEUE: usize = 65_536;
/// Most announcements handled together (review F13: coalesced per namespace).
const BATCH: usize = 4096;

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
    let (queue, queued) = std::sync::mpsc::sync_channel::<String>(QUEUE);
    std::thread::scope(|scope| {
        // Reads the connection as fast as Redis sends, whatever the handling costs, so
        // Redis does not hold announcements for it (and cut it at its
        // `client-output-buffer-limit pubsub`) while one batch is handled.
        let reader = scope.spawn(move || -> redis::RedisResult<()> {
            let mut pubsub = con.as_pubsub();
            pubsub.subscribe(store.channel())?;
            pubsub.set_read_timeout(Some(POLL))?;
            // Whatever happened while this node was not listening.
            let _ = tx.try_send(Command::RefreshAll);
            while !shutdown.is_cancelled() {
                match pubsub.get_message() {
                    Ok(msg) => {
                        if let Ok(payload) = msg.get_payload() {
                            if queue.send(payload).is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let mut listener = Listener::new(store, namespaces, tx);
        // Ends once the reader stopped (shutdown, or the connection failed).
        while let Some(batch) = next_batch(&queued) {
            listener.handle_batch(&batch);
        }
        match reader.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err("the cluster listener's reader panicked".into()),
        }
    })
}

/// The next announcement (waiting for it) and every one already received behind it, at
/// most [`BATCH`]; `None` once the reader stopped. It never waits for more.
fn next_batch(queued: &std::sync::mpsc::Receiver<String>) -> Option<Vec<String>> {
    let mut batch = vec![queued.recv().ok()?];
    while batch.len() < BATCH {
        match queued.try_recv() {
            Ok(payload) => batch.push(payload),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// What the listener keeps over one connection's life.
struct Listener<'a> {
    store: &'a RedisStore,
    namespaces: &'a Namespaces,
    tx: &'a mpsc::Sender<Command>,
    /// Per namespace: the epoch and the offset up to which its ring has been fed.
    tails: HashMap<String, (String, u64)>,
    /// How many times it asked the store (a tail read, or a namespace's `next`).
    reads: u64,
    /// How many refreshes it asked the writer for.
    refreshes: u64,
}

impl<'a> Listener<'a> {
    fn new(
        store: &'a RedisStore,
        namespaces: &'a Namespaces,
        tx: &'a mpsc::Sender<Command>,
    ) -> Listener<'a> {
        Listener {
            store,
            namespaces,
            tx,
            tails: HashMap::new(),
            reads: 0,
            refreshes: 0,
        }
    }

    /// Handles a batch of announcements, coalesced (review F13): of the appends to one
    /// incarnation only the highest `next` counts, so each namespace is read once per
    /// batch, after the others' announcements before it; a delete, a create or a trim of a
    /// namespace first handles the appends announced for it before, then itself, in the
    /// order they were made; a create or a trim is refreshed once per namespace after the
    /// batch (a refresh reads the store as it is then; the writer is asked for them all
    /// before the listener waits), and an append of an incarnation this node does not
    /// follow once per (namespace, epoch), when it comes.
    fn handle_batch(&mut self, batch: &[String]) {
        // Appends not handled yet, in the order first announced: (namespace, epoch,
        // highest next); `None` once handled. `pending` finds a namespace's entry.
        let mut appends: Vec<Option<(&str, &str, u64)>> = Vec::new();
        let mut pending: HashMap<&str, usize> = HashMap::new();
        // The (namespace, epoch) pairs of appends to an incarnation this node did not
        // follow, refreshed once in this batch.
        let mut refreshed: Vec<(&str, &str)> = Vec::new();
        // Namespaces created or trimmed in this batch, each refreshed once after it (a
        // retention pass announces a trim per 64 events: a large first trim is thousands).
        let mut others: Vec<&str> = Vec::new();
        for payload in batch {
            match parse(payload) {
                Some(Change::Appended { ns, epoch, next }) => {
                    if let Some(&i) = pending.get(ns) {
                        match &mut appends[i] {
                            Some((_, e, n)) if *e == epoch => {
                                *n = (*n).max(next);
                                continue;
                            }
                            slot => {
                                if let Some((ns, e, n)) = slot.take() {
                                    self.appended(ns, e, n, &mut refreshed);
                                }
                            }
                        }
                    }
                    pending.insert(ns, appends.len());
                    appends.push(Some((ns, epoch, next)));
                }
                Some(Change::Deleted { ns, epoch }) => {
                    self.flush(ns, &mut appends, &mut pending, &mut refreshed);
                    self.deleted(ns, epoch);
                }
                Some(Change::Other { ns }) => {
                    self.flush(ns, &mut appends, &mut pending, &mut refreshed);
                    if !others.contains(&ns) {
                        others.push(ns);
                    }
                }
                None => tracing::debug!(payload, "cluster listener: unknown announcement"),
            }
        }
        for (ns, epoch, next) in appends.into_iter().flatten() {
            self.appended(ns, epoch, next, &mut refreshed);
        }
        self.refresh_all(&others);
    }

    /// Has the writer refresh each of `names` from the store (all asked first, then
    /// waited for), and waits until it has.
    fn refresh_all(&mut self, names: &[&str]) {
        let mut answers = Vec::with_capacity(names.len());
        for ns in names {
            self.refreshes += 1;
            let (reply, answer) = tokio::sync::oneshot::channel();
            let asked = self.tx.blocking_send(Command::Refresh {
                ns: (*ns).to_owned(),
                reply: Some(reply),
            });
            if asked.is_err() {
                return;
            }
            answers.push(answer);
        }
        for answer in answers {
            let _ = answer.blocking_recv();
        }
    }

    /// Has the writer refresh `ns` from the store, and waits until it has: the
    /// announcements after this one then find the namespace as the store has it.
    fn refresh(&mut self, ns: &str) {
        self.refreshes += 1;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = self.tx.blocking_send(Command::Refresh {
            ns: ns.to_owned(),
            reply: Some(reply),
        });
        if asked.is_ok() {
            let _ = answer.blocking_recv();
        }
    }

    /// Handles the appends announced for `ns` so far in this batch, if any.
    fn flush<'b>(
        &mut self,
        ns: &str,
        appends: &mut [Option<(&'b str, &'b str, u64)>],
        pending: &mut HashMap<&'b str, usize>,
        refreshed: &mut Vec<(&'b str, &'b str)>,
    ) {
        if let Some(i) = pending.remove(ns) {
            if let Some((ns, epoch, next)) = appends[i].take() {
                self.appended(ns, epoch, next, refreshed);
            }
        }
    }

    /// Offsets below `next` of incarnation `epoch` of `ns` are in the store.
    fn appended<'b>(
        &mut self,
        ns: &'b str,
        epoch: &'b str,
        next: u64,
        refreshed: &mut Vec<(&'b str, &'b str)>,
    ) {
        let mut state = self.namespaces.get(ns);
        // Another incarnation than the one this node serves: nothing of it is fed to this
        // one. The writer asks the store which is current (once per batch), and the
        // append counts for the incarnation it then follows, if it is that one.
        if matches!(&state, Some(s) if s.epoch != epoch) && !refreshed.contains(&(ns, epoch)) {
            refreshed.push((ns, epoch));
            self.refresh(ns);
            state = self.namespaces.get(ns);
        }
        match state {
            Some(state) if state.epoch == epoch => {
                // Never the number in the message: whoever can `PUBLISH` chooses it. What
                // was read from the stream, or else the store's own `next` for the epoch.
                let known = match self.feed(&state, next) {
                    Some(known) => Some(known),
                    None => self.stored_next(&state),
                };
                if let Some(known) = known {
                    state.publish_remote(known);
                }
                // Even when `visible` was already there (this node's writer moved it):
                // a subscriber parked on the ring reads the store.
                if state.has_subscribers() {
                    state.wake_live();
                }
            }
            Some(_) => {}
            None => {
                self.tails.remove(ns);
            }
        }
    }

    fn feed(&mut self, state: &Namespace, next: u64) -> Option<u64> {
        feed(self.store, state, next, &mut self.tails, &mut self.reads)
    }

    fn stored_next(&mut self, state: &Namespace) -> Option<u64> {
        self.reads += 1;
        stored_next(self.store, state)
    }

    /// Incarnation `epoch` of `ns` was deleted.
    fn deleted(&mut self, ns: &str, epoch: &str) {
        // At once, here: every reader of that incarnation stops before anything of the
        // next one could reach it. An epoch is never reused, so a newer incarnation this
        // node already follows stays.
        self.tails.remove(ns);
        if self.namespaces.remove_epoch(ns, epoch).is_some() {
            tracing::info!(ns, epoch, "namespace deleted by another broker");
        }
    }
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
    reads: &mut u64,
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
    *reads += 1;
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

    /// A writer that answers every refresh at once (with nothing) and, once every sender
    /// is gone, the namespaces it was asked to refresh, in order.
    fn answering_writer() -> (mpsc::Sender<Command>, std::thread::JoinHandle<Vec<String>>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let writer = std::thread::spawn(move || {
            let mut asked = Vec::new();
            while let Some(command) = rx.blocking_recv() {
                if let Command::Refresh { ns, reply } = command {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(None));
                    }
                    asked.push(ns);
                }
            }
            asked
        });
        (tx, writer)
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
        let (tx, _writer) = answering_writer();
        let mut listener = Listener::new(&store, &namespaces, &tx);
        // The announcements of the first create and append, then of the rest: one by one,
        // then all in one batch, coalesced.
        let all = announcements(&mut pubsub, 5);
        for payload in &all {
            listener.handle_batch(std::slice::from_ref(payload));
        }
        Listener::new(&store, &namespaces, &tx).handle_batch(&all);
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
        let (tx, _writer) = answering_writer();
        let mut listener = Listener::new(&store, &namespaces, &tx);
        // create, append, delete, create, append: handled in the order they were made.
        for payload in announcements(&mut pubsub, 5) {
            listener.handle_batch(&[payload]);
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
        let (tx, _writer) = answering_writer();
        let mut listener = Listener::new(&store, &namespaces, &tx);
        for sub in [None, Some(state.subscribe_live())] {
            let forged = format!("a {} {} y", u64::MAX, info.epoch);
            listener.handle_batch(&[forged]);
            assert_eq!(state.visible(), 3, "moved by a forged announcement");
            drop(sub);
        }
        let db1 = store_in("f2-forged", &format!("{}/1", test_server::url()));
        assert_ne!(db1.channel(), store.channel());
    }

    /// The offsets of the events in `state`'s ring, in ring order.
    fn ring_offsets(sub: &crate::engine::live::LiveSubscriber) -> Vec<u64> {
        sub.ring()
            .runs_from(0, u64::MAX)
            .iter()
            .flat_map(|run| run.first()..run.end())
            .collect()
    }

    /// Review F13: the listener handled one announcement at a time, each with its own
    /// look at Redis: at high rates it fell behind its Pub/Sub connection until Redis cut
    /// it. Announcements queued while it was not reading (Redis keeps them for the
    /// connection) are now drained and handled together: one read per namespace with
    /// subscribers, one refresh per namespace whose epoch this node does not follow, and
    /// the subscribers' rings get every offset once, in order.
    #[test]
    fn queued_announcements_are_handled_with_one_read_per_namespace() {
        let store = store("f13-coalesce");
        for ns in ["x", "y", "z"] {
            store.create(ns, Retention::default()).unwrap();
        }
        let namespaces = Namespaces::new(64, u64::MAX);
        let x = namespaces.open(&store.info("x").unwrap().expect("x"));
        let y = namespaces.open(&store.info("y").unwrap().expect("y"));
        let (sx, sy) = (x.subscribe_live(), y.subscribe_live());
        // `z` as a node follows it whose listener is behind an epoch change.
        let mut z = store.info("z").unwrap().expect("z");
        z.epoch = "0123456789abcdef".into();
        let z = namespaces.open(&z);
        let _sz = z.subscribe_live();
        let mut con = store.connect(Some(Duration::from_secs(5))).unwrap();
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(store.channel()).unwrap();
        for i in 0..40 {
            store.append("x", &events(1), i, None).unwrap();
            store.append("y", &events(2), i, None).unwrap();
            store.append("z", &events(1), i, None).unwrap();
        }
        // All 120 announcements received while the listener was busy, then a batch.
        let (queue, queued) = std::sync::mpsc::sync_channel(QUEUE);
        for payload in announcements(&mut pubsub, 120) {
            queue.send(payload).unwrap();
        }
        let batch = next_batch(&queued).unwrap();
        assert_eq!(batch.len(), 120, "{batch:?}");
        let (tx, writer) = answering_writer();
        let mut listener = Listener::new(&store, &namespaces, &tx);
        listener.handle_batch(&batch);
        assert_eq!(listener.reads, 2, "one read for x, one for y");
        assert_eq!(listener.refreshes, 1, "one refresh, for z");
        assert_eq!(ring_offsets(&sx), (0..40).collect::<Vec<_>>());
        assert_eq!(ring_offsets(&sy), (0..80).collect::<Vec<_>>());
        assert_eq!((x.visible(), y.visible(), z.visible()), (40, 80, 0));
        // Announced again (a duplicate, a forged one): nothing read twice.
        listener.handle_batch(&batch);
        assert_eq!(ring_offsets(&sx), (0..40).collect::<Vec<_>>());
        assert_eq!(listener.reads, 2);
        drop(listener);
        drop(tx);
        assert_eq!(writer.join().expect("the writer"), ["z", "z"]);
    }

    /// Review (i13): each create or trim announcement had the listener wait for its own
    /// writer refresh; a retention pass announces a trim per 64 events, so a first trim of
    /// a million events cost some 15,600 writer round trips, one after another, with no
    /// live event delivered meanwhile. Now one refresh per namespace per batch.
    #[test]
    fn creates_and_trims_are_refreshed_once_per_namespace_per_batch() {
        let store = store("coalesce-trims");
        let namespaces = Namespaces::new(64, u64::MAX);
        let mut batch: Vec<String> = (0..1000).map(|i| format!("r {} e1 x", i * 64)).collect();
        batch.push("c 0 e2 y".to_owned());
        batch.extend((0..500).map(|i| format!("r {} e1 x", 64_000 + i * 64)));
        batch.push("r 64 e2 y".to_owned());
        let (tx, writer) = answering_writer();
        let mut listener = Listener::new(&store, &namespaces, &tx);
        listener.handle_batch(&batch);
        assert_eq!(listener.refreshes, 2, "one refresh for x, one for y");
        drop(listener);
        drop(tx);
        assert_eq!(writer.join().expect("the writer"), ["x", "y"]);
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
