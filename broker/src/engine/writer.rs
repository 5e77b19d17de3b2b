//! The write path: one thread that owns every mutation of the store and commits in groups.
//!
//! ### Invariants
//!
//! - Commands are applied in the order they were queued. The store assigns offsets
//!   ([`Storage::append`]) and this thread is its only writer, so offsets follow that order.
//! - In `durable` mode no publish is acknowledged, and no reader sees an event, before a
//!   [`Storage::sync`] that covers it has returned. Every command taken from the queue
//!   while the previous sync ran shares the next one (group commit).
//! - In `relaxed` mode a write to a namespace without a durable dirty mark is acknowledged
//!   only once its mark is durable, so a crash before the next flush gives it a new epoch.
//!   Marks go only at an interval flush, after its sync, and only those of namespaces not
//!   appended to since the flush before: a namespace published steadily keeps its mark
//!   and causes no write of the `dirty` file (issue 14: clearing and re-marking it at
//!   every flush cost 4 `fsync`s per flush interval).
//! - The queue is bounded; when it is full, callers are told so instead of waiting.
//! - The writer never waits for a transport or a reader: answers go out on oneshot
//!   channels and live events into bounded live rings, neither of which blocks. So a
//!   session or request may wait for the writer without ever waiting, through it, on
//!   itself.
//! - Namespaces are created here only, by a `Put` or by an `Append` when `auto_create` is
//!   on: a read, a subscription or a refused request never creates one.
//! - With a shared store, an `Append`, `Put` or `Delete` whose caller stopped waiting (its
//!   [`Deadline`] passed, or it went away) before this thread took it is never sent: it is
//!   answered `unavailable` "not sent", so nothing is written after its caller was told so.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rewind_protocol::idempotency::RequestDigest;
use rewind_protocol::{Event, NewEvent};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::engine::error::LogError;
use crate::engine::fanout::SharedRun;
use crate::engine::namespaces::{Namespace, Namespaces};
use crate::metrics::Metrics;
use crate::storage::{
    now_ms, AppendRequest, Appended, IdempotencyKey, NsInfo, Storage, StoreError,
};
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

/// With a shared store: until when a command's caller waits for its answer (its arrival
/// plus `redis_timeout_ms`, plus `redis_wait_timeout_ms` when `WAIT` runs), and which of
/// the caller and the writer came first. The writer sends a command only if it takes it
/// before the caller gives up; a caller that gives up first knows the command was never
/// sent ([`Deadline::give_up`]). Cheap to clone: the clones share the claim.
#[derive(Debug, Clone)]
pub struct Deadline {
    at: Instant,
    claim: Arc<AtomicU8>,
}

/// Neither the writer nor the caller has claimed the command yet.
const WAITING: u8 = 0;
/// The writer took it: it may have been sent.
const TAKEN: u8 = 1;
/// The caller gave up first, or the writer found the deadline passed: never sent.
const GIVEN_UP: u8 = 2;

impl Deadline {
    /// A deadline `after` from now.
    pub fn after(after: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + after,
            claim: Arc::new(AtomicU8::new(WAITING)),
        }
    }

    /// When the caller stops waiting.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// The writer's claim, before it sends anything of the command: false (do not send)
    /// when the caller gave up or the deadline has passed.
    fn take(&self) -> bool {
        if Instant::now() >= self.at {
            let _ =
                self.claim
                    .compare_exchange(WAITING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire);
        }
        match self
            .claim
            .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == TAKEN,
        }
    }

    /// The caller's: stops waiting. True when the writer had not taken the command, which
    /// then is never sent; false when it may have been.
    pub fn give_up(&self) -> bool {
        match self
            .claim
            .compare_exchange(WAITING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == GIVEN_UP,
        }
    }
}

/// Whether the writer may send a command whose caller waits on `reply` until `deadline`,
/// claiming it if so; always without a deadline (the embedded store). A caller that went
/// away has dropped its receiver: nobody would be told the outcome.
fn may_send<T>(deadline: Option<&Deadline>, reply: &Reply<T>) -> bool {
    let Some(deadline) = deadline else {
        return true;
    };
    if reply.is_closed() {
        deadline.give_up();
        return false;
    }
    deadline.take()
}

/// The answer to a command the writer did not send ([`may_send`]).
fn not_sent_late() -> LogError {
    LogError::Unavailable(
        "not sent: it waited in this node's write queue past its deadline (redis_timeout_ms) while Redis was slow or unreachable; nothing was written, retry".into(),
    )
}

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
        /// Set to false before the answer when the commit's replication (Redis `WAIT`,
        /// `redis_wait_replicas`) fell short; `None` when the caller does not ask.
        replicated: Option<Arc<AtomicBool>>,
        /// A shared store: when the caller stops waiting ([`Deadline`]).
        deadline: Option<Deadline>,
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
        /// A shared store: when the caller stops waiting ([`Deadline`]).
        deadline: Option<Deadline>,
    },
    /// Delete a namespace; the reply says whether it existed.
    Delete {
        /// The namespace.
        ns: String,
        /// Answered once the change is durable.
        reply: Reply<bool>,
        /// A shared store: when the caller stops waiting ([`Deadline`]).
        deadline: Option<Deadline>,
    },
    /// Enforce retention on every namespace (sent on a timer).
    Retention,
    /// Relaxed mode: flush everything written so far (sent on a timer).
    Flush,
    /// A shared store: make this broker's state of a namespace match the store's (another
    /// broker created, deleted or trimmed it). The reply, if asked for, is the state after.
    Refresh {
        /// The namespace.
        ns: String,
        /// Answered with the namespace's state once refreshed, or the store's error when
        /// it could not be asked (never "not found" for a store that did not answer).
        reply: Option<oneshot::Sender<Result<Option<Arc<Namespace>>, LogError>>>,
    },
    /// A shared store: refresh every namespace, and give a new epoch to those the store
    /// lost (sent on a timer and after the cluster listener reconnects).
    RefreshAll,
    /// Finish what is queued, sync, and stop.
    Shutdown,
}

/// An answer held back until the group's sync.
enum Ack {
    Append(Reply<Appended>, Appended, Option<Arc<AtomicBool>>),
    Put(Reply<(NsInfo, bool)>, (NsInfo, bool)),
    Delete(Reply<bool>, bool),
}

impl Ack {
    fn fail(self, err: LogError) {
        // A caller that gave up waiting has dropped its receiver; nothing to tell it.
        match self {
            Ack::Append(r, _, _) => drop(r.send(Err(err))),
            Ack::Put(r, _) => drop(r.send(Err(err))),
            Ack::Delete(r, _) => drop(r.send(Err(err))),
        }
    }

    /// Answers with success; `replicated` is false when the commit's replication fell
    /// short, which the appends that asked are told.
    fn succeed(self, replicated: bool) {
        match self {
            Ack::Append(r, v, flag) => {
                if let Some(flag) = flag {
                    flag.store(replicated, Ordering::Release);
                }
                drop(r.send(Ok(v)))
            }
            Ack::Put(r, v) => drop(r.send(Ok(v))),
            Ack::Delete(r, v) => drop(r.send(Ok(v))),
        }
    }
}

/// An append the store answered, or is about to: what the writer keeps of it.
struct Attempt {
    ns: String,
    events: Vec<NewEvent>,
    state: Arc<Namespace>,
    created: bool,
    now: u64,
}

/// An append held until the group's appends are sent together (a shared store).
struct Deferred {
    ns: String,
    events: Vec<NewEvent>,
    idempotency: Option<Idempotency>,
    reply: Reply<Appended>,
    replicated: Option<Arc<AtomicBool>>,
    deadline: Option<Deadline>,
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
    /// Relaxed mode: namespaces written to that have no durable dirty mark; their marks
    /// are made durable before anything in the group is acknowledged.
    newly_dirty: Vec<String>,
    /// Relaxed mode: a flush was asked for.
    flush: bool,
    /// A shared store: appends not sent yet, in the order they came
    /// ([`Writer::send_deferred`]).
    deferred: Vec<Deferred>,
    commands: usize,
}

/// The writer thread's state.
pub struct Writer {
    store: Arc<dyn Storage>,
    namespaces: Arc<Namespaces>,
    config: Arc<Config>,
    /// Relaxed mode: namespaces whose dirty mark is durable and not yet cleared.
    dirty: HashSet<String>,
    /// Relaxed mode: namespaces appended to since the last interval flush; the next flush
    /// keeps their marks ([`Storage::retain_dirty`]).
    appended_since_flush: HashSet<String>,
    /// Retention passes so far; idempotency records are pruned every 60th.
    retention_passes: u64,
    /// A shared store refuses this broker's default retention (another broker recorded
    /// different defaults): retention is not enforced, this is logged once, and `/readyz`
    /// says so ([`Writer::retention_refused`]).
    retention_refused: Arc<AtomicBool>,
    /// A shared store lost its data and the namespaces this broker knew are not all
    /// created again yet: kept until they are, whatever fails in between (the store says
    /// so only once, [`Storage::lost_data`]).
    lost_pending: bool,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// A writer over `store`, with the live state of every namespace the store holds
    /// (the writer is its one owner: it alone adds, removes and moves them).
    pub fn new(store: Arc<dyn Storage>, config: Arc<Config>) -> Result<Writer, StoreError> {
        let namespaces = Arc::new(Namespaces::new(
            config.fanout_buffer,
            config.fanout_memory_bytes,
        ));
        // Brokers sharing a store trim one log: they must agree on the default retention
        // (`docs/cluster.md`, "Retention"). A store that cannot be asked yet is asked
        // again before each retention pass, and nothing is trimmed until it answers.
        match store.claim_retention_defaults(&config.retention) {
            Ok(()) | Err(StoreError::Unavailable(_)) => {}
            Err(e) => return Err(e),
        }
        let infos = match store.namespaces() {
            Ok(infos) => infos,
            // A shared store that cannot serve yet: start with none; the heal takes them
            // once it answers (`docs/cluster.md`, "Starting").
            Err(StoreError::Unavailable(_)) if store.is_shared() => Vec::new(),
            Err(e) => return Err(e),
        };
        for info in infos {
            namespaces.open(&info);
        }
        Ok(Writer {
            store,
            namespaces,
            dirty: HashSet::new(),
            appended_since_flush: HashSet::new(),
            retention_passes: 0,
            retention_refused: Arc::new(AtomicBool::new(false)),
            lost_pending: false,
            metrics: Arc::new(Metrics::new(config.metrics_namespaces)),
            config,
        })
    }

    /// The namespaces as readers see them, moved by this writer only.
    pub fn namespaces(&self) -> Arc<Namespaces> {
        Arc::clone(&self.namespaces)
    }

    /// The broker's metrics, which this writer moves for appends and syncs.
    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// True while a shared store refuses this broker's default retention (see
    /// `docs/cluster.md`, "Retention"); set by the retention pass.
    pub(crate) fn retention_refused(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.retention_refused)
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
            self.send_deferred(&mut group);
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
        // With a shared store, appends wait to be sent together (one round trip for the
        // group); anything else goes after the appends before it.
        let cmd = match cmd {
            Command::Append {
                ns,
                events,
                idempotency,
                reply,
                replicated,
                deadline,
            } if self.store.is_shared() => {
                group.deferred.push(Deferred {
                    ns,
                    events,
                    idempotency,
                    reply,
                    replicated,
                    deadline,
                });
                return;
            }
            other => {
                self.send_deferred(group);
                other
            }
        };
        match cmd {
            Command::Append {
                ns,
                events,
                idempotency,
                reply,
                replicated,
                deadline,
            } if may_send(deadline.as_ref(), &reply) => self.append(
                ns,
                events,
                idempotency.as_ref(),
                (reply, replicated),
                group,
                false,
            ),
            Command::Append { reply, .. } => drop(reply.send(Err(not_sent_late()))),
            Command::Put {
                reply, deadline, ..
            } if !may_send(deadline.as_ref(), &reply) => drop(reply.send(Err(not_sent_late()))),
            Command::Delete {
                reply, deadline, ..
            } if !may_send(deadline.as_ref(), &reply) => drop(reply.send(Err(not_sent_late()))),
            Command::Put {
                ns,
                retention,
                reply,
                ..
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
            Command::Delete { ns, reply, .. } => match self.store.delete(&ns) {
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
            Command::Refresh { ns, reply } => {
                let state = self.refresh(&ns);
                if let Some(reply) = reply {
                    let _ = reply.send(state.map_err(|e| LogError::from(&e)));
                }
            }
            Command::RefreshAll => self.refresh_all(),
            Command::Shutdown => rx.close(),
        }
    }

    fn create(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
        let info = match self.store.create(ns, retention) {
            // Another broker of a shared store created it first: this one takes it as is.
            Err(StoreError::Exists(_)) if self.store.is_shared() => self
                .store
                .info(ns)?
                .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?,
            other => other?,
        };
        // Followed, not opened: a reader's lookup may have taken this very incarnation from
        // the store a moment ago (`Namespaces::adopt`), and its readers keep it (review:
        // opening replaced it, and they were told `closed` reason `epoch`).
        self.follow(&info);
        tracing::info!(ns, epoch = %info.epoch, next = info.next, "namespace created");
        Ok(info)
    }

    /// The namespace an append goes to: known here, found in a shared store, or created
    /// (auto-create; `true` then). An error is the caller's answer.
    fn append_target(
        &mut self,
        ns: &str,
        group: &mut Group,
    ) -> Result<(Arc<Namespace>, bool), LogError> {
        let known = match self.namespaces.get(ns) {
            Some(state) => Some(state),
            // Another broker may have created it.
            None if self.store.is_shared() => self.refresh(ns).map_err(|e| LogError::from(&e))?,
            None => None,
        };
        match known {
            Some(state) => Ok((state, false)),
            None if self.config.auto_create => match self.create(ns, Retention::default()) {
                Ok(_) => {
                    group.needs_sync = true;
                    self.namespaces
                        .get(ns)
                        .map(|state| (state, true))
                        .ok_or_else(|| LogError::NotFound(ns.to_owned()))
                }
                Err(e) => Err(LogError::from(&e)),
            },
            None => Err(LogError::NotFound(ns.to_owned())),
        }
    }

    /// The idempotency key of an append made at `now`, with its window.
    fn idempotency_key<'a>(
        &self,
        idempotency: Option<&'a Idempotency>,
        now: u64,
    ) -> Option<IdempotencyKey<'a>> {
        idempotency.map(|i| IdempotencyKey {
            key: &i.key,
            request: i.request,
            request_v1: i.request_v1,
            batch: i.batch,
            not_before_ms: now
                .saturating_sub(self.config.idempotency_window_secs.saturating_mul(1000)),
        })
    }

    fn append(
        &mut self,
        ns: String,
        events: Vec<NewEvent>,
        idempotency: Option<&Idempotency>,
        (reply, replicated): (Reply<Appended>, Option<Arc<AtomicBool>>),
        group: &mut Group,
        retried: bool,
    ) {
        let (state, created) = match self.append_target(&ns, group) {
            Ok(target) => target,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let now = now_ms();
        let key = self.idempotency_key(idempotency, now);
        // With a shared store, only to the incarnation this broker serves: another one's
        // offsets must never become this one's (`NotFound`, then once more below).
        let result =
            self.store
                .append_at_epoch(&ns, &state.epoch, state.visible(), &events, now, key);
        let appended = Attempt {
            ns,
            events,
            state,
            created,
            now,
        };
        self.appended(
            appended,
            result,
            idempotency,
            (reply, replicated),
            group,
            retried,
        );
    }

    /// Sends the appends held in `group` together ([`Storage::append_all`]: one round
    /// trip to Redis for all of them), then answers each as [`Writer::append`] does.
    fn send_deferred(&mut self, group: &mut Group) {
        // Claimed now, just before anything of theirs is sent (a lookup, a create, the
        // append): those whose callers gave up are answered and dropped.
        let deferred: Vec<Deferred> = std::mem::take(&mut group.deferred)
            .into_iter()
            .filter_map(|d| {
                if may_send(d.deadline.as_ref(), &d.reply) {
                    Some(d)
                } else {
                    let _ = d.reply.send(Err(not_sent_late()));
                    None
                }
            })
            .collect();
        if deferred.len() < 2 {
            for d in deferred {
                let idempotency = d.idempotency;
                self.append(
                    d.ns,
                    d.events,
                    idempotency.as_ref(),
                    (d.reply, d.replicated),
                    group,
                    false,
                );
            }
            return;
        }
        let now = now_ms();
        let mut ready = Vec::with_capacity(deferred.len());
        for d in deferred {
            match self.append_target(&d.ns, group) {
                Ok((state, created)) => ready.push((d, state, created)),
                Err(e) => {
                    let _ = d.reply.send(Err(e));
                }
            }
        }
        let results = {
            let requests: Vec<AppendRequest<'_>> = ready
                .iter()
                .map(|(d, state, _)| AppendRequest {
                    ns: &d.ns,
                    epoch: &state.epoch,
                    min_next: state.visible(),
                    events: &d.events,
                    ts_ms: now,
                    idempotency: self.idempotency_key(d.idempotency.as_ref(), now),
                })
                .collect();
            self.store.append_all(&requests)
        };
        for ((d, state, created), result) in ready.into_iter().zip(results) {
            let appended = Attempt {
                ns: d.ns,
                events: d.events,
                state,
                created,
                now,
            };
            let idempotency = d.idempotency;
            self.appended(
                appended,
                result,
                idempotency.as_ref(),
                (d.reply, d.replicated),
                group,
                false,
            );
        }
    }

    /// Takes the store's answer to an append: into the group on success; once more after
    /// a shared store's `NotFound` (its state is refreshed first); else answered with the
    /// error, and a namespace its first publish created goes again.
    fn appended(
        &mut self,
        a: Attempt,
        result: Result<Appended, StoreError>,
        idempotency: Option<&Idempotency>,
        (reply, replicated): (Reply<Appended>, Option<Arc<AtomicBool>>),
        group: &mut Group,
        retried: bool,
    ) {
        let Attempt {
            ns,
            events,
            state,
            created,
            now,
        } = a;
        match result {
            Ok(appended) => {
                if let Appended::New { first, last } = appended {
                    group.visible.push((Arc::clone(&state), last + 1));
                    group.live.push(PendingLive {
                        state,
                        first,
                        ts_ms: now,
                        events,
                    });
                    if self.config.durability == Durability::Relaxed {
                        if !self.appended_since_flush.contains(&ns) {
                            self.appended_since_flush.insert(ns.clone());
                        }
                        if !self.dirty.contains(&ns) {
                            group.newly_dirty.push(ns);
                        }
                    }
                }
                group.acks.push(Ack::Append(reply, appended, replicated));
            }
            // A shared store lost the namespace, or another broker deleted it, since this
            // broker last looked: once more with the store's state.
            Err(StoreError::NotFound(_)) if self.store.is_shared() && !created && !retried => {
                if let Err(e) = self.refresh(&ns) {
                    let _ = reply.send(Err(LogError::from(&e)));
                    return;
                }
                self.append(ns, events, idempotency, (reply, replicated), group, true);
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
                let since = std::time::Instant::now();
                self.store.sync()?;
                self.metrics.synced(since);
            }
            Ok::<_, StoreError>(())
        })();
        match result {
            Ok(()) => {
                self.dirty.extend(group.newly_dirty);
                let shared = self.store.is_shared();
                for (state, next) in group.visible {
                    state.publish_visible(next);
                    // The cluster listener may have read this namespace's announcement
                    // before `visible` moved, and pushed nothing: subscribers waiting on
                    // the ring read the store.
                    if shared {
                        state.wake_live();
                    }
                }
                // Publishers first: their answers would otherwise queue behind the
                // wake-ups of every subscriber.
                // Counted before anyone is answered, so a publisher that scrapes after its
                // answer sees its events.
                self.metrics.appended(
                    group
                        .live
                        .iter()
                        .flat_map(|l| &l.events)
                        .map(|e| e.data.len() as u64),
                );
                let replicated = self.store.last_sync_replicated();
                for ack in group.acks {
                    ack.succeed(replicated);
                }
                // After `visible` moved (see `Namespace::subscribe_live`), and only where
                // someone listens. With a shared store the cluster listener feeds the
                // rings, in the store's order (`engine::cluster`).
                if !self.store.is_shared() {
                    send_live(group.live);
                }
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
            self.flush();
        }
    }

    /// Relaxed mode's interval flush: syncs, then clears the dirty marks of the namespaces
    /// not appended to since the flush before (everything they hold is synced now; the
    /// writer is the only appender, so nothing lands between the sync and the clearing).
    /// The others keep theirs, so steady publishing writes no marks; a namespace that went
    /// quiet loses its mark at the second flush after its last append at the latest.
    fn flush(&mut self) {
        if let Err(e) = self.store.sync() {
            // Nothing cleared: its next flush tries again.
            tracing::error!(error = %e, "interval flush failed");
            return;
        }
        let keep = std::mem::take(&mut self.appended_since_flush);
        // Forgotten here whether or not the store manages to write the marks (it forgets
        // them either way), so a next append marks the namespace again.
        self.dirty.retain(|ns| keep.contains(ns));
        if let Err(e) = self.store.retain_dirty(&keep) {
            tracing::error!(error = %e, "clearing the dirty marks after a flush failed");
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

    /// Makes this broker's state of `ns` match the shared store's; returns it.
    /// The store's state of `ns`, taken as this broker's. A store that cannot be asked is
    /// an error, never "not found": a node that does not know a namespace yet (started
    /// while Redis was down) must answer `503 unavailable` for it, not `404`.
    fn refresh(&mut self, ns: &str) -> Result<Option<Arc<Namespace>>, StoreError> {
        match self.store.info(ns) {
            Ok(Some(info)) => Ok(Some(self.follow(&info))),
            Ok(None) if self.namespaces.get(ns).is_none() => Ok(None),
            // Gone from the store: deleted by another broker, unless the store lost its
            // data, and then it is created again with a new epoch (`refresh_all`).
            Ok(None) => match self.store_lost_data() {
                Ok(true) => {
                    self.refresh_all();
                    Ok(self.namespaces.get(ns))
                }
                Ok(false) => {
                    if self.namespaces.remove(ns).is_some() {
                        tracing::info!(ns, "namespace deleted by another broker");
                    }
                    Ok(None)
                }
                Err(e) => {
                    tracing::warn!(ns, error = %e, "checking the shared store failed");
                    Err(e)
                }
            },
            Err(e) => {
                tracing::warn!(ns, error = %e, "refreshing a namespace from the store failed");
                Err(e)
            }
        }
    }

    /// Takes the store's `info` of a namespace as this broker's: the same incarnation
    /// moves on, another one replaces it (its readers are told, as on a delete).
    fn follow(&self, info: &NsInfo) -> Arc<Namespace> {
        match self.namespaces.get(&info.name) {
            Some(state) if state.epoch == info.epoch => {
                state.set_earliest(info.earliest);
                state.publish_remote(info.next);
                state
            }
            Some(old) => {
                // Replaced before this broker heard why: deleted (and created again, by
                // any broker), so its readers are told `deleted`; or lost by the store,
                // and they are told `epoch` (`Namespaces::open`).
                match self.store.was_deleted(&info.name, &old.epoch) {
                    Ok(true) => {
                        self.namespaces.remove_epoch(&info.name, &old.epoch);
                        tracing::info!(ns = %info.name, epoch = %old.epoch, "namespace deleted by another broker");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(ns = %info.name, error = %e, "asking the store whether an incarnation was deleted failed")
                    }
                }
                self.namespaces.open(info)
            }
            None => self.namespaces.open(info),
        }
    }

    /// Refreshes every namespace from the shared store; when the store lost its data, the
    /// namespaces this broker knew are created again, with new epochs, so that clients
    /// resuming them are told (`truncated`, reason `epoch`).
    /// Whether the shared store lost its data and this broker has not recovered from it
    /// yet; sticky until [`Writer::refresh_all`] has created every namespace again.
    fn store_lost_data(&mut self) -> Result<bool, StoreError> {
        if !self.lost_pending {
            self.lost_pending = self.store.lost_data()?;
        }
        Ok(self.lost_pending)
    }

    fn refresh_all(&mut self) {
        let lost = match self.store_lost_data() {
            Ok(lost) => lost,
            Err(e) => {
                tracing::debug!(error = %e, "checking the shared store failed");
                return;
            }
        };
        let infos = match self.store.namespaces() {
            Ok(infos) => infos,
            Err(e) => {
                tracing::debug!(error = %e, "listing the shared store's namespaces failed");
                return;
            }
        };
        let names: HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
        let mut recovered = true;
        for (ns, state) in self.namespaces.all() {
            if names.contains(ns.as_str()) {
                continue;
            }
            if lost {
                match self.create(&ns, Retention::default()) {
                    Ok(info) => tracing::warn!(
                        ns,
                        old_epoch = %state.epoch,
                        epoch = %info.epoch,
                        "the shared store lost this namespace's data: new epoch"
                    ),
                    Err(e) => {
                        recovered = false;
                        tracing::error!(ns, error = %e, "re-creating a lost namespace failed")
                    }
                }
            } else {
                self.namespaces.remove(&ns);
                tracing::info!(ns, "namespace deleted by another broker");
            }
        }
        for info in &infos {
            self.follow(info);
        }
        if lost && recovered {
            self.lost_pending = false;
        }
    }

    fn enforce_retention(&mut self) {
        // With a shared store, only under the defaults every broker recorded there (its
        // record is made again by the first broker to look after Redis lost it).
        match self.store.claim_retention_defaults(&self.config.retention) {
            Ok(()) if self.retention_refused.load(Ordering::Acquire) => {
                self.retention_refused.store(false, Ordering::Release);
                tracing::info!("the shared store's default retention is this broker's again: retention enforced");
            }
            Ok(()) => {}
            Err(e @ StoreError::Unavailable(_)) => {
                tracing::warn!(error = %e, "retention pass stopped: the store is unavailable");
                return;
            }
            Err(e) => {
                if !self.retention_refused.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "retention not enforced");
                }
                return;
            }
        }
        let now = now_ms();
        // A store that cannot serve now fails every namespace alike, each after its own
        // timeout, while publishes wait behind this pass: the pass stops at the first.
        for (ns, state) in self.namespaces.all() {
            let own = match self.store.info(&ns) {
                Ok(Some(info)) => info.retention,
                Ok(None) => continue,
                Err(e @ StoreError::Unavailable(_)) => {
                    tracing::warn!(ns, error = %e, "retention pass stopped: the store is unavailable");
                    return;
                }
                Err(_) => continue,
            };
            let policy = self.config.retention.overlaid(&own);
            match self.store.enforce_retention(&ns, &policy, now) {
                Ok(Some(earliest)) => {
                    state.set_earliest(earliest);
                    tracing::debug!(ns, earliest, "retention");
                }
                Ok(None) => {}
                Err(e @ StoreError::Unavailable(_)) => {
                    tracing::warn!(ns, error = %e, "retention pass stopped: the store is unavailable");
                    return;
                }
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

#[cfg(test)]
mod tests {
    //! Group commit under concurrent submitters, over the real store with its syncs held by
    //! the test: each sync says it started and waits for the test's go-ahead (or for the
    //! test to drop its sender, which lets every later sync through).

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc as std_mpsc;
    use std::sync::Mutex;
    use std::time::Duration;

    use rewind_protocol::{Event, NewEvent, Payload};

    use super::*;
    use crate::engine::Log;
    use crate::storage::log_store::LogStore;
    use crate::storage::open::OpenOptions;

    /// Long enough for anything that should happen; a broken writer fails the test
    /// instead of hanging it.
    const BOUND: Duration = Duration::from_secs(10);

    /// The real store, with syncs the test holds.
    struct HeldSyncs {
        inner: LogStore,
        syncs: AtomicUsize,
        started: Mutex<std_mpsc::Sender<usize>>,
        go: Mutex<std_mpsc::Receiver<()>>,
    }

    impl HeldSyncs {
        /// The store under `dir`, its "sync n started" receiver and its go-ahead sender.
        fn open(
            dir: &std::path::Path,
        ) -> (
            Arc<HeldSyncs>,
            std_mpsc::Receiver<usize>,
            std_mpsc::Sender<()>,
        ) {
            let opts = OpenOptions {
                cache_bytes: 1 << 20,
                segment_bytes: 1 << 20,
                recover: false,
                relaxed: false,
            };
            let (inner, _) = LogStore::open(dir, opts).expect("open the store");
            let (started_tx, started) = std_mpsc::channel();
            let (go, go_rx) = std_mpsc::channel();
            let store = HeldSyncs {
                inner,
                syncs: AtomicUsize::new(0),
                started: Mutex::new(started_tx),
                go: Mutex::new(go_rx),
            };
            (Arc::new(store), started, go)
        }

        fn syncs(&self) -> usize {
            self.syncs.load(Ordering::SeqCst)
        }
    }

    impl Storage for HeldSyncs {
        fn namespaces(&self) -> Result<Vec<NsInfo>, StoreError> {
            self.inner.namespaces()
        }
        fn info(&self, ns: &str) -> Result<Option<NsInfo>, StoreError> {
            self.inner.info(ns)
        }
        fn create(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
            self.inner.create(ns, retention)
        }
        fn undo_create(&self, ns: &str) -> Result<bool, StoreError> {
            self.inner.undo_create(ns)
        }
        fn set_retention(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
            self.inner.set_retention(ns, retention)
        }
        fn delete(&self, ns: &str) -> Result<bool, StoreError> {
            self.inner.delete(ns)
        }
        fn append(
            &self,
            ns: &str,
            events: &[NewEvent],
            ts_ms: u64,
            idempotency: Option<IdempotencyKey<'_>>,
        ) -> Result<Appended, StoreError> {
            self.inner.append(ns, events, ts_ms, idempotency)
        }
        fn read(
            &self,
            ns: &str,
            from: u64,
            until: u64,
            max_events: usize,
            max_bytes: usize,
        ) -> Result<Vec<Event>, StoreError> {
            self.inner.read(ns, from, until, max_events, max_bytes)
        }
        fn enforce_retention(
            &self,
            ns: &str,
            policy: &Retention,
            now_ms: u64,
        ) -> Result<Option<u64>, StoreError> {
            self.inner.enforce_retention(ns, policy, now_ms)
        }
        fn prune_idempotency(&self, before_ms: u64) -> Result<usize, StoreError> {
            self.inner.prune_idempotency(before_ms)
        }
        /// Counts, says it started, waits for the go-ahead (at most `BOUND`, not at all
        /// once the test dropped its sender), then syncs.
        fn sync(&self) -> Result<(), StoreError> {
            let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = self
                .started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(n);
            let _ = self
                .go
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .recv_timeout(BOUND);
            self.inner.sync()
        }
        fn checkpoint(&self) -> Result<(), StoreError> {
            self.inner.checkpoint()
        }
        fn mark_dirty(&self, ns: &str) -> Result<(), StoreError> {
            self.inner.mark_dirty(ns)
        }
        fn clear_dirty(&self) -> Result<(), StoreError> {
            self.inner.clear_dirty()
        }
        fn retain_dirty(&self, keep: &HashSet<String>) -> Result<(), StoreError> {
            self.inner.retain_dirty(keep)
        }
    }

    fn event(name: &str, n: usize) -> Vec<NewEvent> {
        vec![NewEvent {
            event: name.to_owned(),
            key: None,
            data: Payload::Json(n.to_string()),
        }]
    }

    type Answer = oneshot::Receiver<Result<Appended, LogError>>;

    fn append(ns: &str, events: Vec<NewEvent>) -> (Command, Answer) {
        let (reply, answer) = oneshot::channel();
        let cmd = Command::Append {
            ns: ns.to_owned(),
            events,
            idempotency: None,
            reply,
            replicated: None,
            deadline: None,
        };
        (cmd, answer)
    }

    fn offsets(a: Result<Appended, LogError>) -> (u64, u64) {
        match a {
            Ok(Appended::New { first, last }) => (first, last),
            other => panic!("expected new offsets, got {other:?}"),
        }
    }

    /// While the writer is held in one sync, 8 threads queue 4 appends each. The writer
    /// then applies all 32 as one group and makes them durable with ONE sync; nobody is
    /// answered and nothing is visible before that sync returns; each submitter's appends
    /// get offsets in the order it queued them, and together the 32 cover `1..=32` once.
    #[test]
    fn one_sync_covers_every_append_queued_while_the_previous_one_ran() {
        const SUBMITTERS: usize = 8;
        const EACH: usize = 4;
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, started, go) = HeldSyncs::open(dir.path());
        let config = Arc::new(Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        });
        let (tx, rx) = mpsc::channel(config.write_queue);
        let writer = Writer::new(Arc::clone(&store) as Arc<dyn Storage>, Arc::clone(&config))
            .expect("a writer over the store");
        let namespaces = writer.namespaces();
        let writer = std::thread::spawn(move || writer.run(rx));

        // The first append (it auto-creates "g") holds the writer in sync 1.
        let (cmd, mut first) = append("g", event("first", 0));
        tx.blocking_send(cmd).expect("queue");
        assert_eq!(started.recv_timeout(BOUND), Ok(1), "sync 1 did not start");
        assert!(
            first.try_recv().is_err(),
            "answered before its sync returned"
        );
        let g = namespaces.get("g").expect("auto-created");
        assert_eq!(g.visible(), 0, "visible before its sync returned");

        // Concurrent submitters queue while sync 1 runs.
        let (queued_tx, queued) = std_mpsc::channel();
        let submitters: Vec<_> = (0..SUBMITTERS)
            .map(|s| {
                let tx = tx.clone();
                let queued_tx = queued_tx.clone();
                std::thread::spawn(move || {
                    let answers: Vec<Answer> = (0..EACH)
                        .map(|j| {
                            let (cmd, answer) = append("g", event(&format!("s{s}"), j));
                            tx.blocking_send(cmd).expect("queue");
                            answer
                        })
                        .collect();
                    queued_tx.send(()).expect("tell the test");
                    answers
                        .into_iter()
                        .map(|a| offsets(a.blocking_recv().expect("answered")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for _ in 0..SUBMITTERS {
            queued.recv_timeout(BOUND).expect("a submitter queued");
        }

        go.send(()).expect("release sync 1");
        assert_eq!(offsets(first.blocking_recv().expect("answered")), (0, 0));
        assert_eq!(started.recv_timeout(BOUND), Ok(2), "sync 2 did not start");
        // All 32 are applied and wait for sync 2: none answered, none visible.
        assert_eq!(g.visible(), 1, "visible before its sync returned");
        assert!(
            submitters.iter().all(|s| !s.is_finished()),
            "a submitter was answered before its sync returned"
        );
        // Releases sync 2 and lets any later one through at once.
        drop(go);

        let mut all = Vec::new();
        for (s, submitter) in submitters.into_iter().enumerate() {
            let got = submitter.join().expect("submitter");
            for pair in got.windows(2) {
                assert!(
                    pair[0].1 < pair[1].0,
                    "submitter {s}'s appends out of order: {got:?}"
                );
            }
            for (j, &(first, last)) in got.iter().enumerate() {
                assert_eq!(first, last);
                all.push((first, format!("s{s}"), j));
            }
        }
        assert_eq!(store.syncs(), 2, "the group of 32 took more than one sync");
        all.sort();
        let want: Vec<u64> = (1..=(SUBMITTERS * EACH) as u64).collect();
        assert_eq!(all.iter().map(|a| a.0).collect::<Vec<_>>(), want);
        assert_eq!(g.visible(), 1 + (SUBMITTERS * EACH) as u64);

        // Each offset holds the event its answer named.
        let stored = store
            .read(
                "g",
                1,
                1 + (SUBMITTERS * EACH) as u64,
                usize::MAX,
                usize::MAX,
            )
            .expect("read");
        assert_eq!(stored.len(), all.len());
        for (ev, (offset, name, j)) in stored.iter().zip(&all) {
            assert_eq!((ev.offset, &ev.event), (*offset, name));
            assert_eq!(ev.data, Payload::Json(j.to_string()));
        }

        tx.blocking_send(Command::Shutdown).expect("queue");
        writer.join().expect("writer");
        assert_eq!(store.syncs(), 2, "shutting down synced through `sync`");
    }

    /// Relaxed mode (issue 14): a namespace published across many flush intervals has its
    /// dirty mark written once, not once per interval; one that goes quiet loses its mark
    /// at the second flush after its last append; published again, it is marked again
    /// before its append is answered; a deleted one's mark goes too, and one created again
    /// under the same name is marked when it is written.
    #[test]
    fn steady_publishing_keeps_its_dirty_mark_and_a_quiet_namespace_loses_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = OpenOptions {
            cache_bytes: 1 << 20,
            segment_bytes: 1 << 20,
            recover: false,
            relaxed: true,
        };
        let (store, _) = LogStore::open(dir.path(), opts).expect("open the store");
        let store = Arc::new(store);
        let config = Arc::new(Config {
            data_dir: dir.path().to_owned(),
            durability: Durability::Relaxed,
            ..Config::default()
        });
        let mut writer = Writer::new(Arc::clone(&store) as Arc<dyn Storage>, config)
            .expect("a writer over the store");
        let (_tx, mut rx) = mpsc::channel(1);
        let marks = || -> Vec<String> {
            let text = std::fs::read_to_string(dir.path().join("dirty")).expect("dirty file");
            text.lines().map(str::to_owned).collect()
        };
        // One group commit, as `run` makes it; every append in it answered with offsets.
        let mut step = |writer: &mut Writer, appends: &[&str], then: Option<Command>| {
            let mut group = Group::default();
            let mut answers = Vec::new();
            for ns in appends {
                let (cmd, answer) = append(ns, event("e", 0));
                writer.apply(cmd, &mut group, &mut rx);
                answers.push(answer);
            }
            if let Some(cmd) = then {
                writer.apply(cmd, &mut group, &mut rx);
            }
            writer.commit(group);
            for mut answer in answers {
                offsets(answer.try_recv().expect("answered by the commit"));
            }
        };
        let base = store.dirty_writes();

        step(&mut writer, &["steady", "quiet"], None);
        assert_eq!(marks(), ["quiet", "steady"]);
        assert_eq!(store.dirty_writes(), base + 2, "one write per new mark");
        // The interval that held quiet's append keeps its mark; the next one clears it.
        step(&mut writer, &[], Some(Command::Flush));
        assert_eq!(marks(), ["quiet", "steady"]);
        step(&mut writer, &["steady"], None);
        step(&mut writer, &[], Some(Command::Flush));
        assert_eq!(marks(), ["steady"], "quiet kept its mark");
        assert_eq!(store.dirty_writes(), base + 3);
        // Ten intervals of steady appends (one shares its group with the flush): no write.
        for i in 0..10 {
            step(&mut writer, &["steady"], None);
            step(
                &mut writer,
                &["steady"],
                (i % 2 == 0).then_some(Command::Flush),
            );
            if i % 2 == 1 {
                step(&mut writer, &[], Some(Command::Flush));
            }
        }
        assert_eq!(marks(), ["steady"]);
        assert_eq!(
            store.dirty_writes(),
            base + 3,
            "steady appends wrote the dirty file again"
        );

        // Published again, quiet is marked again (with the commit that answers it).
        step(&mut writer, &["quiet"], None);
        assert_eq!(marks(), ["quiet", "steady"]);
        assert_eq!(store.dirty_writes(), base + 4);
        // Both go quiet: steady's mark goes at the next flush, quiet's at the one after.
        step(&mut writer, &[], Some(Command::Flush));
        assert_eq!(marks(), ["quiet"]);
        step(&mut writer, &[], Some(Command::Flush));
        assert!(marks().is_empty(), "{:?}", marks());
        step(&mut writer, &[], Some(Command::Flush));
        assert_eq!(store.dirty_writes(), base + 6, "an empty set written again");

        // A namespace deleted while marked: its mark goes like any quiet one's.
        let delete = |ns: &str| {
            let (reply, deleted) = oneshot::channel();
            let cmd = Command::Delete {
                ns: ns.to_owned(),
                reply,
                deadline: None,
            };
            (cmd, deleted)
        };
        step(&mut writer, &["gone"], None);
        let (cmd, mut deleted) = delete("gone");
        step(&mut writer, &[], Some(cmd));
        assert!(matches!(deleted.try_recv(), Ok(Ok(true))));
        step(&mut writer, &[], Some(Command::Flush));
        assert_eq!(marks(), ["gone"]);
        step(&mut writer, &[], Some(Command::Flush));
        assert!(marks().is_empty(), "{:?}", marks());

        // Deleted while marked and created again by its next append: the new incarnation
        // is written with the mark on disk, and loses it once quiet.
        step(&mut writer, &["again"], None);
        let (cmd, mut deleted) = delete("again");
        step(&mut writer, &[], Some(cmd));
        assert!(matches!(deleted.try_recv(), Ok(Ok(true))));
        step(&mut writer, &["again"], None);
        assert_eq!(marks(), ["again"]);
        step(&mut writer, &[], Some(Command::Flush));
        assert_eq!(marks(), ["again"]);
        step(&mut writer, &[], Some(Command::Flush));
        assert!(marks().is_empty(), "{:?}", marks());
    }

    /// With the writer held in a sync and `write_queue` commands queued behind it, one
    /// more is refused at once with `Overloaded` (not awaited) and creates nothing; the
    /// queued ones are all answered once the writer moves on, and then there is room again.
    #[tokio::test]
    async fn a_full_queue_is_answered_overloaded_at_once() {
        const QUEUE: usize = 4;
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, started, go) = HeldSyncs::open(dir.path());
        let config = Arc::new(Config {
            data_dir: dir.path().to_owned(),
            write_queue: QUEUE,
            // The timers' first ticks are due at once; this test's runtime has one thread
            // and runs no other task before the refusal below (nothing is awaited until
            // then), so no timer command takes a slot.
            retention_interval_ms: 3_600_000,
            checkpoint_interval_ms: 3_600_000,
            ..Config::default()
        });
        let log = Log::start(Arc::clone(&store) as Arc<dyn Storage>, config).expect("start");

        let slot = log.try_queue_slot().expect("room");
        let held = log.submit_append_in(slot, "q", event("held", 0), None);
        // Blocks this (the runtime's only) thread until the writer is in sync 1.
        assert_eq!(started.recv_timeout(BOUND), Ok(1), "sync 1 did not start");
        let queued: Vec<_> = (1..=QUEUE)
            .map(|n| {
                let slot = log.try_queue_slot().expect("room in the queue");
                log.submit_append_in(slot, "q", event("queued", n), None)
            })
            .collect();

        assert_eq!(log.try_queue_slot().err(), Some(LogError::Overloaded));
        let refused = futures::FutureExt::now_or_never(log.append("q", event("refused", 0), None));
        assert_eq!(
            refused,
            Some(Err(LogError::Overloaded)),
            "not refused at once"
        );

        // Releases sync 1 and lets every later one through at once.
        drop(go);
        let answered = tokio::time::timeout(BOUND, async {
            let mut out = vec![offsets(held.await)];
            for q in queued {
                out.push(offsets(q.await));
            }
            out
        })
        .await
        .expect("the queued appends were answered");
        let want: Vec<(u64, u64)> = (0..=QUEUE as u64).map(|o| (o, o)).collect();
        assert_eq!(answered, want);

        // Room again; the refused event was never appended.
        let after = tokio::time::timeout(BOUND, log.append("q", event("after", 0), None))
            .await
            .expect("answered");
        assert_eq!(offsets(after), (QUEUE as u64 + 1, QUEUE as u64 + 1));
        let names: Vec<String> = store
            .read("q", 0, u64::MAX, usize::MAX, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert!(!names.iter().any(|n| n == "refused"), "{names:?}");
        assert_eq!(names.len(), QUEUE + 2);
        tokio::time::timeout(BOUND, log.shutdown())
            .await
            .expect("shut down");
    }

    /// Review F5: with a shared store, an append that met a missing namespace took it as
    /// deleted by another broker (and, without auto-create, answered `not_found`), even
    /// when Redis had lost its data. Now it checks the instance marker first: the lost
    /// namespace gets a new epoch and the append goes to it. Redis losing this prefix's
    /// keys stands in for a restart without persistence (other tests share the server).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_namespace_redis_lost_gets_a_new_epoch_not_a_delete() {
        use crate::storage::redis::{test_server, RedisOptions, RedisStore};
        let prefix = "f5-missing";
        let store = RedisStore::open(RedisOptions {
            url: test_server::url(),
            prefix: prefix.into(),
            wait_replicas: 0,
            wait_timeout_ms: 100,
            timeout_ms: 5000,
        })
        .expect("redis");
        let config = Arc::new(Config {
            auto_create: false,
            retention_interval_ms: 3_600_000,
            checkpoint_interval_ms: 3_600_000,
            ..Config::default()
        });
        let log = Log::start(store as Arc<dyn Storage>, config).expect("start");
        log.put("m", Retention::default()).await.expect("create");
        let appended = log.append("m", event("before", 0), None).await;
        assert_eq!(offsets(appended), (0, 0));
        let old = log.namespace("m").expect("m").epoch.clone();

        let client = redis::Client::open(test_server::url()).expect("url");
        let mut con = client.get_connection().expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut con)
            .expect("keys");
        let _: () = redis::cmd("DEL").arg(&keys).query(&mut con).expect("del");

        let after = tokio::time::timeout(BOUND, log.append("m", event("after", 0), None))
            .await
            .expect("answered");
        assert_eq!(
            offsets(after),
            (0, 0),
            "the lost namespace was taken as deleted"
        );
        let now = log.namespace("m").expect("m");
        assert_ne!(now.epoch, old);
        log.shutdown().await;
    }

    /// A store whose every call after the first listing is `Unavailable`, counting calls.
    struct Down {
        names: Vec<NsInfo>,
        calls: AtomicUsize,
        /// Says it is shared (as Redis): commands then carry deadlines.
        shared: bool,
    }

    impl Down {
        fn down<T>(&self) -> Result<T, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Unavailable("down".into()))
        }
    }

    impl Storage for Down {
        fn namespaces(&self) -> Result<Vec<NsInfo>, StoreError> {
            Ok(self.names.clone())
        }
        fn info(&self, _: &str) -> Result<Option<NsInfo>, StoreError> {
            self.down()
        }
        fn create(&self, _: &str, _: Retention) -> Result<NsInfo, StoreError> {
            self.down()
        }
        fn undo_create(&self, _: &str) -> Result<bool, StoreError> {
            self.down()
        }
        fn set_retention(&self, _: &str, _: Retention) -> Result<NsInfo, StoreError> {
            self.down()
        }
        fn delete(&self, _: &str) -> Result<bool, StoreError> {
            self.down()
        }
        fn append(
            &self,
            _: &str,
            _: &[NewEvent],
            _: u64,
            _: Option<IdempotencyKey<'_>>,
        ) -> Result<Appended, StoreError> {
            self.down()
        }
        fn read(
            &self,
            _: &str,
            _: u64,
            _: u64,
            _: usize,
            _: usize,
        ) -> Result<Vec<Event>, StoreError> {
            self.down()
        }
        fn enforce_retention(
            &self,
            _: &str,
            _: &Retention,
            _: u64,
        ) -> Result<Option<u64>, StoreError> {
            self.down()
        }
        fn prune_idempotency(&self, _: u64) -> Result<usize, StoreError> {
            self.down()
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.down()
        }
        fn checkpoint(&self) -> Result<(), StoreError> {
            self.down()
        }
        fn mark_dirty(&self, _: &str) -> Result<(), StoreError> {
            self.down()
        }
        fn clear_dirty(&self) -> Result<(), StoreError> {
            self.down()
        }
        fn retain_dirty(&self, _: &HashSet<String>) -> Result<(), StoreError> {
            self.down()
        }
        fn is_shared(&self) -> bool {
            self.shared
        }
    }

    /// Review F11: with Redis down, the retention pass went on through every namespace,
    /// each call waiting out its own timeout while publishes queued behind the writer. It
    /// stops at the first `Unavailable`.
    #[test]
    fn the_retention_pass_stops_at_the_first_unavailable() {
        let names: Vec<NsInfo> = (0..5)
            .map(|i| NsInfo {
                name: format!("n{i}"),
                epoch: "e".into(),
                retention: Retention::default(),
                earliest: 0,
                next: 0,
                bytes: 0,
            })
            .collect();
        // The calls a writer makes for `commands`, then a shutdown.
        let calls = |names: &Vec<NsInfo>, commands: Vec<Command>| {
            let store = Arc::new(Down {
                names: names.clone(),
                calls: AtomicUsize::new(0),
                shared: false,
            });
            let writer = Writer::new(
                Arc::clone(&store) as Arc<dyn Storage>,
                Arc::new(Config::default()),
            )
            .expect("writer");
            let (tx, rx) = mpsc::channel(4);
            for c in commands {
                tx.try_send(c).expect("queue");
            }
            tx.try_send(Command::Shutdown).expect("queue");
            writer.run(rx);
            store.calls.load(Ordering::SeqCst)
        };
        let shutdown = calls(&names, Vec::new());
        assert_eq!(calls(&names, vec![Command::Retention]), shutdown + 1);
    }

    /// Tester finding (i13, a hung Redis): commands queued behind a slow one were sent
    /// long after their callers had been answered. With a shared store, an append, `PUT`
    /// or `DELETE` whose deadline passed before the writer took it, or whose caller went
    /// away, is answered "not sent" and never reaches the store; one still in time is
    /// sent (here answered the store's `Unavailable`).
    #[test]
    fn a_command_past_its_deadline_or_without_its_caller_is_never_sent() {
        let names = vec![NsInfo {
            name: "n".into(),
            epoch: "e".into(),
            retention: Retention::default(),
            earliest: 0,
            next: 0,
            bytes: 0,
        }];
        // The store calls a writer makes for `commands`, then a shutdown.
        let calls = |commands: Vec<Command>| {
            let store = Arc::new(Down {
                names: names.clone(),
                calls: AtomicUsize::new(0),
                shared: true,
            });
            let writer = Writer::new(
                Arc::clone(&store) as Arc<dyn Storage>,
                Arc::new(Config::default()),
            )
            .expect("writer");
            let (tx, rx) = mpsc::channel(8);
            for c in commands {
                tx.try_send(c).expect("queue");
            }
            tx.try_send(Command::Shutdown).expect("queue");
            writer.run(rx);
            store.calls.load(Ordering::SeqCst)
        };
        let shutdown = calls(Vec::new());
        let with = |deadline: Deadline| {
            let (reply, answer) = oneshot::channel();
            let cmd = Command::Append {
                ns: "n".into(),
                events: event("e", 0),
                idempotency: None,
                reply,
                replicated: None,
                deadline: Some(deadline),
            };
            (cmd, answer)
        };
        let (late, mut late_answer) = with(Deadline::after(Duration::ZERO));
        let (gone, gone_answer) = with(Deadline::after(BOUND));
        drop(gone_answer);
        let (put_reply, mut put_answer) = oneshot::channel();
        let put = Command::Put {
            ns: "p".into(),
            retention: Retention::default(),
            reply: put_reply,
            deadline: Some(Deadline::after(Duration::ZERO)),
        };
        assert_eq!(
            calls(vec![late, gone, put]),
            shutdown,
            "a late command was sent"
        );
        for answer in [
            late_answer.try_recv().map(drop),
            put_answer.try_recv().map(drop),
        ] {
            match answer {
                Ok(()) => {}
                Err(e) => panic!("not answered: {e}"),
            }
        }
        let (in_time, mut answer) = with(Deadline::after(BOUND));
        assert_eq!(calls(vec![in_time]), shutdown + 1, "sent once");
        assert_eq!(
            answer.try_recv().expect("answered"),
            Err(LogError::Unavailable("down".into()))
        );
        let (late, mut answer) = with(Deadline::after(Duration::ZERO));
        calls(vec![late]);
        match answer.try_recv().expect("answered") {
            Err(LogError::Unavailable(why)) => assert!(why.starts_with("not sent"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// The claim a caller and the writer race for: whoever comes first decides; a caller
    /// that gave up first knows the command was never sent.
    #[test]
    fn the_first_of_caller_and_writer_claims_a_command() {
        let d = Deadline::after(BOUND);
        assert!(d.take(), "in time, unclaimed");
        assert!(!d.give_up(), "taken: it may have been sent");
        let d = Deadline::after(BOUND);
        assert!(d.give_up());
        assert!(d.give_up(), "given up stays given up");
        assert!(!d.take(), "never sent once given up");
        let d = Deadline::after(Duration::ZERO);
        assert!(!d.take(), "past its deadline");
        assert!(d.give_up(), "and its caller knows it was not sent");
    }
}
