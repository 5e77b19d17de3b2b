//! The write path: one thread that owns every mutation of the store and commits in groups.
//!
//! ### Invariants
//!
//! - Commands are applied in the order they were queued. The store assigns offsets
//!   ([`Storage::append`]) and this thread is its only writer, so offsets follow that order.
//! - In `durable` mode no publish is acknowledged, and no reader sees an event, before a
//!   [`Storage::sync`] that covers it has returned. Every command taken from the queue
//!   while the previous sync ran shares the next one (group commit).
//! - In `relaxed` mode a namespace's first write after a flush is acknowledged only once
//!   its dirty mark is durable, so a crash before the next flush gives it a new epoch.
//! - The queue is bounded; when it is full, callers are told so instead of waiting.
//! - The writer never waits for a transport or a reader: answers go out on oneshot
//!   channels and live events into bounded live rings, neither of which blocks. So a
//!   session or request may wait for the writer without ever waiting, through it, on
//!   itself.
//! - Namespaces are created here only, by a `Put` or by an `Append` when `auto_create` is
//!   on: a read, a subscription or a refused request never creates one.

use std::collections::HashSet;
use std::sync::Arc;

use rewind_protocol::idempotency::RequestDigest;
use rewind_protocol::{Event, NewEvent};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::engine::error::LogError;
use crate::engine::fanout::SharedRun;
use crate::engine::namespaces::{Namespace, Namespaces};
use crate::storage::{now_ms, Appended, IdempotencyKey, NsInfo, Storage, StoreError};
use crate::storage::{Durability, Retention};

/// An idempotency key with what the request it came with asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The key, checked by [`rewind_protocol::idempotency::validate_key`].
    pub key: String,
    /// The digest of the request's events; a retry must publish the same events.
    pub request: RequestDigest,
    /// The digest older versions kept ([`RequestDigest::of_v1`]), which a record they
    /// wrote is compared with.
    pub request_v1: RequestDigest,
    /// The request was a batch (HTTP answers `{"first","last"}`), not one event.
    pub batch: bool,
}

impl Idempotency {
    /// The key (if any) for publishing `events` as one event (`batch` false) or a batch.
    pub fn of(key: Option<String>, events: &[NewEvent], batch: bool) -> Option<Idempotency> {
        key.map(|key| Idempotency {
            key,
            request: RequestDigest::of(events),
            request_v1: RequestDigest::of_v1(events),
            batch,
        })
    }
}

/// The reply channel of a command.
pub type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// What the writer can be asked to do.
pub enum Command {
    /// Append events to a namespace (all or nothing).
    Append {
        /// The namespace.
        ns: String,
        /// The events, validated.
        events: Vec<NewEvent>,
        /// The publisher's idempotency key and the digest of its request, if any.
        idempotency: Option<Idempotency>,
        /// Answered once the events are durable.
        reply: Reply<Appended>,
    },
    /// Create a namespace, or set the retention of an existing one. The reply says
    /// whether it was created.
    Put {
        /// The namespace.
        ns: String,
        /// Its own retention limits.
        retention: Retention,
        /// Answered once the change is durable.
        reply: Reply<(NsInfo, bool)>,
    },
    /// Delete a namespace; the reply says whether it existed.
    Delete {
        /// The namespace.
        ns: String,
        /// Answered once the change is durable.
        reply: Reply<bool>,
    },
    /// Enforce retention on every namespace (sent on a timer).
    Retention,
    /// Relaxed mode: flush everything written so far (sent on a timer).
    Flush,
    /// Finish what is queued, sync, and stop.
    Shutdown,
}

/// An answer held back until the group's sync.
enum Ack {
    Append(Reply<Appended>, Appended),
    Put(Reply<(NsInfo, bool)>, (NsInfo, bool)),
    Delete(Reply<bool>, bool),
}

impl Ack {
    fn fail(self, err: LogError) {
        // A caller that gave up waiting has dropped its receiver; nothing to tell it.
        match self {
            Ack::Append(r, _) => drop(r.send(Err(err))),
            Ack::Put(r, _) => drop(r.send(Err(err))),
            Ack::Delete(r, _) => drop(r.send(Err(err))),
        }
    }

    fn succeed(self) {
        match self {
            Ack::Append(r, v) => drop(r.send(Ok(v))),
            Ack::Put(r, v) => drop(r.send(Ok(v))),
            Ack::Delete(r, v) => drop(r.send(Ok(v))),
        }
    }
}

/// Events appended in this group, kept until the commit for live subscribers.
struct PendingLive {
    state: Arc<Namespace>,
    first: u64,
    ts_ms: u64,
    events: Vec<NewEvent>,
}

/// Everything applied since the last sync.
#[derive(Default)]
struct Group {
    acks: Vec<Ack>,
    visible: Vec<(Arc<Namespace>, u64)>,
    live: Vec<PendingLive>,
    /// Something other than an append (a namespace change) must be made durable.
    needs_sync: bool,
    /// Relaxed mode: namespaces written for the first time since the last flush; their
    /// marks are made durable before anything in the group is acknowledged.
    newly_dirty: Vec<String>,
    /// Relaxed mode: a flush was asked for.
    flush: bool,
    commands: usize,
}

/// The writer thread's state.
pub struct Writer {
    store: Arc<dyn Storage>,
    namespaces: Arc<Namespaces>,
    config: Arc<Config>,
    /// Relaxed mode: namespaces whose dirty mark is durable and not yet cleared.
    dirty: HashSet<String>,
    /// Retention passes so far; idempotency records are pruned every 60th.
    retention_passes: u64,
}

impl Writer {
    /// A writer over `store`, with the live state of every namespace the store holds
    /// (the writer is its one owner: it alone adds, removes and moves them).
    pub fn new(store: Arc<dyn Storage>, config: Arc<Config>) -> Result<Writer, StoreError> {
        let namespaces = Arc::new(Namespaces::new(
            config.fanout_buffer,
            config.fanout_memory_bytes,
        ));
        for info in store.namespaces()? {
            namespaces.open(&info);
        }
        Ok(Writer {
            store,
            namespaces,
            config,
            dirty: HashSet::new(),
            retention_passes: 0,
        })
    }

    /// The namespaces as readers see them, moved by this writer only.
    pub fn namespaces(&self) -> Arc<Namespaces> {
        Arc::clone(&self.namespaces)
    }

    /// Runs until a [`Command::Shutdown`] has been applied and the queue is drained, then
    /// syncs a last time. Blocks: run it on its own thread.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = Group::default();
            self.apply(first, &mut group, &mut rx);
            while group.commands < self.config.max_group_commit {
                match rx.try_recv() {
                    Ok(cmd) => self.apply(cmd, &mut group, &mut rx),
                    Err(_) => break,
                }
            }
            self.commit(group);
        }
        // Everything is on disk after the checkpoint, so the dirty marks can go: a clean
        // shutdown never changes an epoch.
        let last = self
            .store
            .checkpoint()
            .and_then(|()| self.store.clear_dirty());
        if let Err(e) = last {
            tracing::error!(error = %e, "final sync failed");
        }
        tracing::info!("writer stopped");
    }

    fn apply(&mut self, cmd: Command, group: &mut Group, rx: &mut mpsc::Receiver<Command>) {
        group.commands += 1;
        match cmd {
            Command::Append {
                ns,
                events,
                idempotency,
                reply,
            } => self.append(ns, events, idempotency.as_ref(), reply, group),
            Command::Put {
                ns,
                retention,
                reply,
            } => {
                let result = match self.store.info(&ns) {
                    Ok(Some(_)) => self.store.set_retention(&ns, retention).map(|i| (i, false)),
                    Ok(None) => self.create(&ns, retention).map(|i| (i, true)),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(v) => {
                        group.needs_sync = true;
                        group.acks.push(Ack::Put(reply, v));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(LogError::from(&e)));
                    }
                }
            }
            Command::Delete { ns, reply } => match self.store.delete(&ns) {
                Ok(existed) => {
                    // Tells every reader of this incarnation now, not after the sync: the
                    // store no longer has it, so there is nothing left to serve them.
                    self.namespaces.remove(&ns);
                    self.dirty.remove(&ns);
                    group.needs_sync = true;
                    group.acks.push(Ack::Delete(reply, existed));
                }
                Err(e) => {
                    let _ = reply.send(Err(LogError::from(&e)));
                }
            },
            Command::Retention => self.enforce_retention(),
            Command::Flush => group.flush = true,
            Command::Shutdown => rx.close(),
        }
    }

    fn create(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
        let info = self.store.create(ns, retention)?;
        self.namespaces.open(&info);
        tracing::info!(ns, epoch = %info.epoch, next = info.next, "namespace created");
        Ok(info)
    }

    fn append(
        &mut self,
        ns: String,
        events: Vec<NewEvent>,
        idempotency: Option<&Idempotency>,
        reply: Reply<Appended>,
        group: &mut Group,
    ) {
        let mut created = false;
        let state = match self.namespaces.get(&ns) {
            Some(state) => state,
            None if self.config.auto_create => match self.create(&ns, Retention::default()) {
                Ok(_) => {
                    created = true;
                    group.needs_sync = true;
                    match self.namespaces.get(&ns) {
                        Some(state) => state,
                        None => return,
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(LogError::from(&e)));
                    return;
                }
            },
            None => {
                let _ = reply.send(Err(LogError::NotFound(ns)));
                return;
            }
        };
        let now = now_ms();
        let idempotency = idempotency.map(|i| IdempotencyKey {
            key: &i.key,
            request: i.request,
            request_v1: i.request_v1,
            batch: i.batch,
            not_before_ms: now
                .saturating_sub(self.config.idempotency_window_secs.saturating_mul(1000)),
        });
        match self.store.append(&ns, &events, now, idempotency) {
            Ok(appended) => {
                if let Appended::New { first, last } = appended {
                    group.visible.push((Arc::clone(&state), last + 1));
                    group.live.push(PendingLive {
                        state,
                        first,
                        ts_ms: now,
                        events,
                    });
                    if self.config.durability == Durability::Relaxed && !self.dirty.contains(&ns) {
                        group.newly_dirty.push(ns);
                    }
                }
                group.acks.push(Ack::Append(reply, appended));
            }
            Err(e) => {
                // A refused request creates nothing: the namespace its first publish
                // created goes again.
                if created {
                    match self.store.undo_create(&ns) {
                        Ok(true) => {
                            self.namespaces.remove(&ns);
                            tracing::info!(
                                ns,
                                "namespace creation taken back: its first publish was refused"
                            );
                        }
                        Ok(false) => {}
                        Err(undo) => {
                            tracing::error!(ns, error = %undo, "could not take back a namespace's creation")
                        }
                    }
                }
                let _ = reply.send(Err(LogError::from(&e)));
            }
        }
    }

    fn commit(&mut self, mut group: Group) {
        let durable = self.config.durability == Durability::Durable;
        group.newly_dirty.sort();
        group.newly_dirty.dedup();
        let result = (|| {
            for ns in &group.newly_dirty {
                self.store.mark_dirty(ns)?;
            }
            let sync = group.needs_sync || (durable && !group.acks.is_empty());
            if sync {
                self.store.sync()?;
            }
            Ok::<_, StoreError>(())
        })();
        match result {
            Ok(()) => {
                self.dirty.extend(group.newly_dirty);
                for (state, next) in group.visible {
                    state.publish_visible(next);
                }
                // Publishers first: their answers would otherwise queue behind the
                // wake-ups of every subscriber.
                for ack in group.acks {
                    ack.succeed();
                }
                // After `visible` moved (see `Namespace::subscribe_live`), and only where
                // someone listens.
                send_live(group.live);
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                let err = LogError::from(&e);
                for ack in group.acks {
                    ack.fail(err.clone());
                }
                // The store took back everything since its last sync (creates and deletes
                // too): the namespaces readers see follow it, so a create that failed
                // leaves nothing behind.
                self.reconcile();
            }
        }
        if group.flush {
            let flushed = self.store.sync().and_then(|()| self.store.clear_dirty());
            match flushed {
                Ok(()) => self.dirty.clear(),
                Err(e) => tracing::error!(error = %e, "interval flush failed"),
            }
        }
    }

    /// Makes the live namespace states match the store's namespaces.
    fn reconcile(&mut self) {
        let infos = match self.store.namespaces() {
            Ok(infos) => infos,
            Err(e) => {
                tracing::error!(error = %e, "listing namespaces after a failed commit");
                return;
            }
        };
        let names: HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
        for (ns, _) in self.namespaces.all() {
            if !names.contains(ns.as_str()) {
                self.namespaces.remove(&ns);
                self.dirty.remove(&ns);
            }
        }
        for info in &infos {
            let same = self
                .namespaces
                .get(&info.name)
                .is_some_and(|s| s.epoch == info.epoch);
            if !same {
                self.namespaces.open(info);
            }
        }
    }

    fn enforce_retention(&mut self) {
        let now = now_ms();
        for (ns, state) in self.namespaces.all() {
            let own = match self.store.info(&ns) {
                Ok(Some(info)) => info.retention,
                _ => continue,
            };
            let policy = self.config.retention.overlaid(&own);
            match self.store.enforce_retention(&ns, &policy, now) {
                Ok(Some(earliest)) => {
                    state.set_earliest(earliest);
                    tracing::debug!(ns, earliest, "retention");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(ns, error = %e, "retention failed"),
            }
        }
        self.retention_passes += 1;
        if self.retention_passes % 60 == 1 {
            let before =
                now.saturating_sub(self.config.idempotency_window_secs.saturating_mul(1000));
            match self.store.prune_idempotency(before) {
                Ok(n) if n > 0 => tracing::debug!(pruned = n, "idempotency records"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning idempotency records failed"),
            }
        }
    }
}

/// Hands a group's new events to the live subscribers of their namespaces; appends to one
/// namespace that follow each other in the group travel as one run of events.
fn send_live(live: Vec<PendingLive>) {
    let mut current: Option<(Arc<Namespace>, Vec<Event>)> = None;
    for append in live {
        if !append.state.has_subscribers() {
            continue;
        }
        let events = append.events.into_iter().enumerate().map(|(i, ev)| Event {
            offset: append.first + i as u64,
            event: ev.event,
            ts: append.ts_ms,
            key: ev.key,
            data: ev.data,
        });
        match &mut current {
            Some((state, run))
                if Arc::ptr_eq(state, &append.state)
                    && run.last().map(|e| e.offset + 1) == Some(append.first) =>
            {
                run.extend(events);
            }
            _ => {
                if let Some((state, run)) = current.take() {
                    send_runs(&state, run);
                }
                current = Some((append.state, events.collect()));
            }
        }
    }
    if let Some((state, run)) = current {
        send_runs(&state, run);
    }
}

fn send_runs(state: &Namespace, events: Vec<Event>) {
    state.send_live(SharedRun::split(&state.name, events, state.live_budget()));
}
