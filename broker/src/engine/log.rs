//! The handle every transport uses: publish, read (with long-poll), and manage namespaces.
//!
//! Writes go through the bounded queue to the [`crate::engine::writer`] thread; reads go straight
//! to the store on the blocking pool, bounded by what the writer has made visible.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use rewind_protocol::codec::ReadPage;
use rewind_protocol::{NewEvent, Position};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::error::LogError;
use crate::engine::namespaces::{Namespace, Namespaces};
use crate::engine::writer::{Command, Deadline, Idempotency, Reply, Writer};
use crate::metrics::{Metrics, Snapshot, Timer};
use crate::storage::log_store::LogStore;
use crate::storage::open::OpenOptions;
use crate::storage::redis::{RedisOptions, RedisStore};
use crate::storage::{Appended, NsInfo, Storage, StoreError};
use crate::storage::{Durability, Retention};

/// A read request.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest {
    /// Where to start.
    pub from: Position,
    /// Most events to return (capped by `max_read_events`).
    pub limit: usize,
    /// How long to wait for an event when there is none at `from` (capped by
    /// `max_wait_secs`).
    pub wait: Duration,
}

/// How one attempt of [`Log::read`] failed.
enum ReadOf {
    /// The store no longer has the incarnation with this epoch.
    Gone(String),
    Log(LogError),
}

impl From<LogError> for ReadOf {
    fn from(e: LogError) -> Self {
        ReadOf::Log(e)
    }
}

struct Inner {
    store: Arc<dyn Storage>,
    namespaces: Arc<Namespaces>,
    config: Arc<Config>,
    /// The writer's queue.
    tx: mpsc::Sender<Command>,
    /// Cancelled once shutdown begins; wakes waiting readers and stops the timers.
    shutdown: CancellationToken,
    /// The writer thread, joined on shutdown.
    writer: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    /// Set while a shared store refuses this broker's default retention: not ready.
    retention_refused: Arc<std::sync::atomic::AtomicBool>,
}

/// Room for one command in the writer's queue.
pub type QueueSlot = mpsc::OwnedPermit<Command>;

/// The writer's answer to a queued command, to be awaited; a publish's carries the timer
/// of its latency, observed when the answer is dropped. With a shared store it waits until
/// the command's [`Deadline`] (and [`GIVE_UP_MARGIN`]) at most, then answers `unavailable`
/// itself: "not sent" when the writer had not taken the command (it never will),
/// "outcome unknown" when it had. Dropped unanswered, it gives up the same way.
pub struct Pending<T>(
    oneshot::Receiver<Result<T, LogError>>,
    Option<Timer>,
    Option<Arc<std::sync::atomic::AtomicBool>>,
    Option<Patience>,
);

/// How long past a command's deadline its caller still waits for the writer's own answer
/// (the writer answers "not sent" at once when it finds a deadline passed).
pub const GIVE_UP_MARGIN: Duration = Duration::from_millis(50);

/// A caller's deadline, and its timer once polled.
struct Patience {
    deadline: Deadline,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        if let Some(p) = &self.3 {
            p.deadline.give_up();
        }
    }
}

impl<T> Pending<T> {
    /// Waits for the answer.
    pub async fn wait(self) -> Result<T, LogError> {
        self.await
    }

    /// Once answered: `Some(false)` when the commit that made an append durable did not
    /// reach the replicas `redis_wait_replicas` asks for (Redis `WAIT` fell short);
    /// `None` when no replicas are asked for, or they were reached.
    pub fn not_replicated(&self) -> Option<bool> {
        let flag = self.2.as_ref()?;
        (!flag.load(std::sync::atomic::Ordering::Acquire)).then_some(false)
    }
}

/// Polled by a session that waits for many answers at once without a task each.
impl<T> Future for Pending<T> {
    type Output = Result<T, LogError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(answer) = Pin::new(&mut self.0).poll(cx) {
            return Poll::Ready(answer.map_err(|_| LogError::ShuttingDown)?);
        }
        let Some(patience) = self.3.as_mut() else {
            return Poll::Pending;
        };
        let at = patience.deadline.at() + GIVE_UP_MARGIN;
        let timer = patience
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let never_sent = patience.deadline.give_up();
        // The writer may have answered between the two polls.
        if let Ok(answer) = self.0.try_recv() {
            return Poll::Ready(answer);
        }
        Poll::Ready(Err(LogError::Unavailable(if never_sent {
            "not sent: the broker's writer did not take it within redis_timeout_ms (Redis slow or unreachable); nothing was written, retry".to_owned()
        } else {
            "outcome unknown: sent to Redis and no answer within redis_timeout_ms; it may have been applied, retry with the same Idempotency-Key".to_owned()
        })))
    }
}

/// A cheap, cloneable handle on the log.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl Log {
    /// Opens the store under `config.data_dir` and starts the writer thread and the
    /// retention (and, in relaxed mode, flush) timers. Damaged files refuse the open
    /// ([`StoreError::Damaged`]). Blocks on disk; must be called inside a Tokio runtime,
    /// from a thread that may block.
    pub fn open(config: Arc<Config>) -> Result<Log, StoreError> {
        Log::open_with(config, false)
    }

    /// [`Log::open`], and with `recover` (`rewind serve --recover`) damaged files are
    /// recovered instead of refused: every valid record is kept and each namespace that
    /// lost anything gets a new epoch (docs/storage.md).
    pub fn open_with(config: Arc<Config>, recover: bool) -> Result<Log, StoreError> {
        if let Some(url) = &config.redis.0 {
            return Log::open_redis(url, config.clone());
        }
        let opts = OpenOptions {
            cache_bytes: config.store_cache_bytes,
            segment_bytes: config.segment_bytes,
            recover,
            relaxed: config.durability == Durability::Relaxed,
        };
        let (store, opened) = LogStore::open(&config.data_dir, opts)?;
        if !recover {
            // Without --recover only relaxed mode's dirty marks give new epochs (a durable
            // log whose segments know more than the log is refused, docs/storage.md).
            for ns in &opened.new_epochs {
                if opts.relaxed {
                    tracing::warn!(
                        ns,
                        "unclean relaxed-mode shutdown: namespace has a new epoch"
                    );
                } else {
                    tracing::warn!(ns, "namespace has a new epoch");
                }
            }
        }
        if recover {
            tracing::warn!(
                repairs = opened.repairs.len(),
                new_epochs = opened.new_epochs.len(),
                "recover: done"
            );
        }
        Log::start(Arc::new(store), config)
    }

    /// Opens the log in Redis (`--redis`) and joins the cluster of brokers that share it:
    /// the listener that follows the other nodes' changes, and the heal timer. `data_dir`
    /// is not used. `durability = "relaxed"` is refused: with Redis, what a publish
    /// survives is Redis's persistence (`docs/cluster.md`).
    fn open_redis(url: &str, config: Arc<Config>) -> Result<Log, StoreError> {
        if config.durability == Durability::Relaxed {
            return Err(StoreError::Redis(
                "durability = \"relaxed\" has no meaning with --redis: what a publish survives is Redis's persistence (docs/cluster.md)".into(),
            ));
        }
        let opts = RedisOptions {
            url: url.to_owned(),
            prefix: config.redis_prefix.0.clone(),
            wait_replicas: config.redis_wait_replicas,
            wait_timeout_ms: config.redis_wait_timeout_ms,
            timeout_ms: config.redis_timeout_ms,
        };
        let store = RedisStore::open(opts)?;
        store.watch_health(Duration::from_millis(config.redis_heal_interval_ms))?;
        let log = Log::start(Arc::clone(&store) as Arc<dyn Storage>, Arc::clone(&config))?;
        crate::engine::cluster::spawn_listener(
            store,
            Arc::clone(&log.inner.namespaces),
            log.inner.tx.clone(),
            log.inner.shutdown.clone(),
        )?;
        log.spawn_timer(Duration::from_millis(config.redis_heal_interval_ms), || {
            Command::RefreshAll
        });
        tracing::info!(url = %redacted(url), "log in redis");
        Ok(log)
    }

    /// Starts the writer and timers over any store.
    pub fn start(store: Arc<dyn Storage>, config: Arc<Config>) -> Result<Log, StoreError> {
        let writer = Writer::new(Arc::clone(&store), Arc::clone(&config))?;
        let namespaces = writer.namespaces();
        let metrics = writer.metrics();
        let retention_refused = writer.retention_refused();
        let (tx, rx) = mpsc::channel(config.write_queue);
        let handle = std::thread::Builder::new()
            .name("rewind-writer".into())
            .spawn(move || writer.run(rx))?;
        let log = Log {
            inner: Arc::new(Inner {
                store,
                namespaces,
                config: Arc::clone(&config),
                tx,
                shutdown: CancellationToken::new(),
                writer: Mutex::new(Some(handle)),
                metrics,
                retention_refused,
            }),
        };
        log.spawn_timer(Duration::from_millis(config.retention_interval_ms), || {
            Command::Retention
        });
        log.spawn_checkpoints(Duration::from_millis(config.checkpoint_interval_ms));
        if config.durability == Durability::Relaxed {
            log.spawn_timer(Duration::from_millis(config.flush_interval_ms), || {
                Command::Flush
            });
        }
        Ok(log)
    }

    fn spawn_timer(&self, period: Duration, cmd: fn() -> Command) {
        let tx = self.inner.tx.clone();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        // A full queue means the writer is busy; the next tick will do.
                        let _ = tx.try_send(cmd());
                    }
                    () = shutdown.cancelled() => break,
                }
            }
        });
    }

    /// Runs the store's checkpoints on the blocking pool every `period`, beside the
    /// writer, so no commit waits for one.
    fn spawn_checkpoints(&self, period: Duration) {
        let store = Arc::clone(&self.inner.store);
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                let stop = tokio::select! {
                    _ = ticks.tick() => false,
                    () = shutdown.cancelled() => true,
                };
                if stop {
                    break;
                }
                let store = Arc::clone(&store);
                let started = std::time::Instant::now();
                match tokio::task::spawn_blocking(move || store.checkpoint()).await {
                    Ok(Ok(())) => {
                        tracing::debug!(ms = started.elapsed().as_millis() as u64, "checkpoint")
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "checkpoint failed"),
                    Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
                }
            }
        });
    }

    /// The configuration the log runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Queues a command now; the returned future waits for its answer. Splitting the two
    /// keeps the order in which one caller's commands are queued.
    fn submit<T>(
        &self,
        make: impl FnOnce(Reply<T>, Option<Deadline>) -> Command,
    ) -> Result<Pending<T>, LogError> {
        let (reply, answer) = oneshot::channel();
        let deadline = self.deadline();
        self.inner
            .tx
            .try_send(make(reply, deadline.clone()))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LogError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => LogError::ShuttingDown,
            })?;
        Ok(Pending(answer, None, None, patience(deadline)))
    }

    /// With a shared store, the deadline of a command queued now: `redis_timeout_ms`, and
    /// `redis_wait_timeout_ms` more when `WAIT` runs (`docs/decisions.md`, "A hung Redis").
    fn deadline(&self) -> Option<Deadline> {
        if !self.inner.store.is_shared() {
            return None;
        }
        let cfg = &self.inner.config;
        let mut ms = cfg.redis_timeout_ms;
        if cfg.redis_wait_replicas > 0 {
            ms = ms.saturating_add(cfg.redis_wait_timeout_ms);
        }
        Some(Deadline::after(Duration::from_millis(ms)))
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(Reply<T>, Option<Deadline>) -> Command,
    ) -> Result<T, LogError> {
        self.submit(make)?.wait().await
    }

    /// Room for one command in the writer's queue now, if there is any: `Overloaded` when
    /// the queue is full.
    pub fn try_queue_slot(&self) -> Result<QueueSlot, LogError> {
        self.inner
            .tx
            .clone()
            .try_reserve_owned()
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LogError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => LogError::ShuttingDown,
            })
    }

    /// Room for one command in the writer's queue, once there is some. The writer takes
    /// commands whatever any session or request does, so waiting for this never waits,
    /// through the writer, on the caller itself.
    pub fn queue_slot(&self) -> impl Future<Output = Result<QueueSlot, LogError>> + Send + 'static {
        let tx = self.inner.tx.clone();
        async move { tx.reserve_owned().await.map_err(|_| LogError::ShuttingDown) }
    }

    /// Queues an append in a slot of the writer's queue ([`Log::try_queue_slot`],
    /// [`Log::queue_slot`]); the returned future resolves once it is durable.
    pub fn submit_append_in(
        &self,
        slot: QueueSlot,
        ns: &str,
        events: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Pending<Appended> {
        let (reply, answer) = oneshot::channel();
        // Only when replicas are asked for: the answer then says when `WAIT` fell short.
        let replicated = (self.inner.config.redis_wait_replicas > 0)
            .then(|| Arc::new(std::sync::atomic::AtomicBool::new(true)));
        let deadline = self.deadline();
        slot.send(Command::Append {
            ns: ns.to_owned(),
            events,
            idempotency,
            reply,
            replicated: replicated.clone(),
            deadline: deadline.clone(),
        });
        Pending(
            answer,
            Some(self.inner.metrics.publish_timer()),
            replicated,
            patience(deadline),
        )
    }

    /// Events of `ns` with offsets in `from..until`, at most `max_events` (and
    /// `max_read_bytes`), read on the blocking pool.
    pub async fn read_range(
        &self,
        ns: &str,
        from: u64,
        until: u64,
        max_events: usize,
    ) -> Result<Vec<rewind_protocol::Event>, LogError> {
        let max_bytes = self.inner.config.max_read_bytes;
        self.read_range_within(ns, "", from, until, max_events, max_bytes)
            .await
    }

    /// As [`Log::read_range`], of the incarnation whose epoch is `epoch` (empty:
    /// whichever), with at most `max_bytes` of records past the first event
    /// (`max_read_bytes` still applies). [`LogError::NotFound`] when the store no longer
    /// has that incarnation ([`Storage::read_at_epoch`]): nothing of another one is read.
    pub async fn read_range_within(
        &self,
        ns: &str,
        epoch: &str,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<rewind_protocol::Event>, LogError> {
        let store = Arc::clone(&self.inner.store);
        let name = ns.to_owned();
        let epoch = epoch.to_owned();
        let max_bytes = max_bytes.min(self.inner.config.max_read_bytes);
        tokio::task::spawn_blocking(move || {
            store.read_at_epoch(&name, &epoch, from, until, max_events, max_bytes)
        })
        .await
        .map_err(|e| LogError::Storage(e.to_string()))?
        .map_err(|e| LogError::from(&e))
    }

    /// A token cancelled when shutdown begins (a child: cancelling it stops nothing else).
    pub(crate) fn shutdown_signal(&self) -> CancellationToken {
        self.inner.shutdown.child_token()
    }

    /// Appends events (all or nothing); returns once they are durable (in relaxed mode:
    /// written).
    pub async fn append(
        &self,
        ns: &str,
        events: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, LogError> {
        let mut pending = self.submit(|reply, deadline| Command::Append {
            ns: ns.to_owned(),
            events,
            idempotency,
            reply,
            replicated: None,
            deadline,
        })?;
        pending.1 = Some(self.inner.metrics.publish_timer());
        pending.wait().await
    }

    /// [`Log::append`], and whether the commit that made it durable reached the replicas
    /// `redis_wait_replicas` asks for (always true without `WAIT`): false when Redis
    /// `WAIT` timed out first. The events are stored either way.
    pub async fn append_replicated(
        &self,
        ns: &str,
        events: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<(Appended, bool), LogError> {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let replicated = Some(Arc::clone(&flag));
        let mut pending = self.submit(|reply, deadline| Command::Append {
            ns: ns.to_owned(),
            events,
            idempotency,
            reply,
            replicated,
            deadline,
        })?;
        pending.1 = Some(self.inner.metrics.publish_timer());
        let appended = pending.wait().await?;
        Ok((appended, flag.load(std::sync::atomic::Ordering::Acquire)))
    }

    /// Creates a namespace or replaces its retention; true if it was created.
    pub async fn put(&self, ns: &str, retention: Retention) -> Result<(NsInfo, bool), LogError> {
        self.request(|reply, deadline| Command::Put {
            ns: ns.to_owned(),
            retention,
            reply,
            deadline,
        })
        .await
    }

    /// Deletes a namespace; false if it did not exist.
    pub async fn delete(&self, ns: &str) -> Result<bool, LogError> {
        self.request(|reply, deadline| Command::Delete {
            ns: ns.to_owned(),
            reply,
            deadline,
        })
        .await
    }

    /// The live state of a namespace, if it exists.
    pub fn namespace(&self, ns: &str) -> Option<Arc<Namespace>> {
        self.inner.namespaces.get(ns)
    }

    /// The live state of a namespace; with a shared store, a namespace this broker does
    /// not know yet is looked up there (another broker may have created it). The lookup
    /// runs on the blocking pool, not through the writer (review F11): names a client
    /// chooses, existing or not, never wait behind publishes. It creates nothing; a store
    /// that cannot be asked is [`LogError::Unavailable`], never "not found".
    pub async fn namespace_fresh(&self, ns: &str) -> Result<Option<Arc<Namespace>>, LogError> {
        if let Some(state) = self.namespace(ns) {
            return Ok(Some(state));
        }
        if !self.inner.store.is_shared() {
            return Ok(None);
        }
        let seen = self.inner.namespaces.generation();
        match self.look_up(ns).await? {
            None => Ok(None),
            Some(info) => match self.inner.namespaces.adopt(&info, seen) {
                Some(state) => Ok(Some(state)),
                // Something was opened or removed meanwhile: the writer, which orders
                // them, decides.
                None => self.refresh(ns).await,
            },
        }
    }

    /// [`Log::namespace_fresh`] for a reader starting at `from` with the epoch `epoch`
    /// the client was given (by any node), if any. With a shared store, this broker may
    /// not have heard yet of what another one did a moment ago:
    ///
    /// - a start beyond this broker's visible end may already be in the store (another
    ///   broker appended it), so a client resuming on another node with the `next` it was
    ///   told is not refused `bad_position`;
    /// - an epoch other than the one this broker follows may be the store's current one
    ///   (the namespace was deleted and created again, or Redis lost its data and another
    ///   broker created it anew), so a client that already knows it is served, not told
    ///   `truncated` reason `epoch` by a node that is behind (review F1).
    ///
    /// Either way the store is asked (on the blocking pool); only when it shows another
    /// incarnation than this broker follows does the writer take it as this broker's.
    pub async fn namespace_reaching(
        &self,
        ns: &str,
        from: &Position,
        epoch: Option<&str>,
    ) -> Result<Option<Arc<Namespace>>, LogError> {
        let Some(state) = self.namespace_fresh(ns).await? else {
            return Ok(None);
        };
        let beyond = matches!(from, Position::Offset(n) if *n > state.visible());
        let other_epoch = epoch.is_some_and(|e| e != state.epoch);
        if !self.inner.store.is_shared() || !(beyond || other_epoch) {
            return Ok(Some(state));
        }
        match self.look_up(ns).await? {
            // The same incarnation: the end the store holds for it is readable.
            Some(info) if info.epoch == state.epoch => {
                state.publish_remote(info.next);
                Ok(Some(state))
            }
            // Deleted, or another incarnation: the writer follows the store.
            _ => self.refresh(ns).await,
        }
    }

    /// The store's description of `ns`, asked on the blocking pool.
    async fn look_up(&self, ns: &str) -> Result<Option<NsInfo>, LogError> {
        let store = Arc::clone(&self.inner.store);
        let name = ns.to_owned();
        tokio::task::spawn_blocking(move || store.info(&name))
            .await
            .map_err(|e| LogError::Storage(e.to_string()))?
            .map_err(|e| LogError::from(&e))
    }

    /// Has the writer take the store's view of `ns` as this broker's.
    async fn refresh(&self, ns: &str) -> Result<Option<Arc<Namespace>>, LogError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Command::Refresh {
                ns: ns.to_owned(),
                reply: Some(reply),
            })
            .await
            .map_err(|_| LogError::ShuttingDown)?;
        answer.await.map_err(|_| LogError::ShuttingDown)?
    }

    /// True when the store is shared with other brokers (Redis).
    pub fn storage_shared(&self) -> bool {
        self.inner.store.is_shared()
    }

    /// One namespace, with `earliest` and `next` as readers see them; with a shared store,
    /// one another broker created is found too. The store is asked on the blocking pool.
    pub async fn info(&self, ns: &str) -> Result<Option<NsInfo>, LogError> {
        let Some(state) = self.namespace_fresh(ns).await? else {
            return Ok(None);
        };
        let store = Arc::clone(&self.inner.store);
        let name = ns.to_owned();
        let info = tokio::task::spawn_blocking(move || store.info(&name))
            .await
            .map_err(|e| LogError::Storage(e.to_string()))?
            .map_err(|e| LogError::from(&e))?;
        match info {
            // Another incarnation than this broker follows yet (another node re-created
            // it, Redis lost data): never its epoch with this one's ends. Followed first.
            // With a shared store (the only one whose epoch can differ), what the store
            // holds is acknowledged: its ends are the namespace's, on every node, whether
            // or not this one has heard yet.
            Some(i) if i.epoch != state.epoch => {
                self.refresh(ns).await?;
                Ok(Some(i))
            }
            other if self.inner.store.is_shared() => Ok(other),
            other => Ok(other.map(|i| state.as_read(i))),
        }
    }

    /// Every namespace, sorted by name, with `earliest` and `next` as readers see them.
    /// The store is asked on the blocking pool.
    pub async fn list(&self) -> Result<Vec<NsInfo>, LogError> {
        let store = Arc::clone(&self.inner.store);
        let all = tokio::task::spawn_blocking(move || store.namespaces())
            .await
            .map_err(|e| LogError::Storage(e.to_string()))?
            .map_err(|e| LogError::from(&e))?;
        if self.inner.store.is_shared() {
            return Ok(all);
        }
        Ok(all
            .into_iter()
            .map(|info| match self.inner.namespaces.get(&info.name) {
                Some(state) => state.as_read(info),
                None => info,
            })
            .collect())
    }

    /// Reads a page of events. With a `wait` and nothing at `from`, waits for an append,
    /// the end of the wait, or shutdown. [`LogError::NotFound`] when the namespace does
    /// not exist, or is deleted while waiting or reading (at once, not at the wait's end).
    pub async fn read(&self, ns: &str, req: ReadRequest) -> Result<ReadPage, LogError> {
        let state = self
            .namespace_reaching(ns, &req.from, None)
            .await?
            .ok_or_else(|| LogError::NotFound(ns.to_owned()))?;
        match self.read_of(ns, state, &req).await {
            // With a shared store, the incarnation this broker follows was gone when read:
            // another broker deleted it, and perhaps created the namespace again, and this
            // one has not heard yet (review F1). Once the writer has followed the store,
            // the read is made of the current incarnation, if there is one.
            Err(ReadOf::Gone(old)) if self.inner.store.is_shared() => {
                match self.refresh(ns).await? {
                    Some(state) if state.epoch != old => {
                        match self.read_of(ns, state, &req).await {
                            Ok(page) => Ok(page),
                            Err(ReadOf::Gone(_)) => Err(LogError::Deleted(ns.to_owned())),
                            Err(ReadOf::Log(e)) => Err(e),
                        }
                    }
                    _ => Err(LogError::Deleted(ns.to_owned())),
                }
            }
            Ok(page) => Ok(page),
            Err(ReadOf::Gone(_)) => Err(LogError::Deleted(ns.to_owned())),
            Err(ReadOf::Log(e)) => Err(e),
        }
    }

    /// [`Log::read`] of the incarnation `state`.
    async fn read_of(
        &self,
        ns: &str,
        state: Arc<Namespace>,
        req: &ReadRequest,
    ) -> Result<ReadPage, ReadOf> {
        let cfg = &self.inner.config;
        let mut visible_rx = state.watch_visible();
        let visible = *visible_rx.borrow_and_update();
        let start = req
            .from
            .resolve(state.earliest(), visible)
            .map_err(|e| LogError::BadPosition(e.to_string()))?;
        let wait = req.wait.min(Duration::from_secs(cfg.max_wait_secs));
        if start >= visible && !wait.is_zero() {
            let _waiting = self.inner.metrics.long_poll();
            let shutdown = self.inner.shutdown.clone();
            tokio::select! {
                moved = visible_rx.wait_for(|v| *v > start) => {
                    if moved.is_err() {
                        return Err(LogError::NotFound(ns.to_owned()).into());
                    }
                }
                () = state.deleted() => return Err(LogError::Deleted(ns.to_owned()).into()),
                _ = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => {}
            }
        }
        // With a shared store, what the store holds is acknowledged (offsets are assigned
        // and the events written in one script), so a read takes all of it: a page read on
        // one node right after a publish answered by another holds that event, although
        // this node may not have heard of it yet. The embedded store's visible end is
        // where its acknowledged events end.
        let until = if self.inner.store.is_shared() {
            u64::MAX
        } else {
            state.visible()
        };
        // Taken before the read, so a page never reports an `earliest` above its own events
        // when retention runs meanwhile (the read then simply starts later, and `earliest`
        // is raised to its first event below).
        let earliest = state.earliest();
        let read_from = start.max(earliest);
        let limit = req.limit.clamp(1, cfg.max_read_events);
        let store = Arc::clone(&self.inner.store);
        let name = ns.to_owned();
        let max_bytes = cfg.max_read_bytes;
        let epoch = state.epoch.clone();
        let events = tokio::task::spawn_blocking(move || {
            store.read_at_epoch(&name, &epoch, read_from, until, limit, max_bytes)
        })
        .await
        .map_err(|e| LogError::Storage(e.to_string()))?
        .map_err(|e| match e {
            // The incarnation this node serves is gone from the store (deleted, re-created
            // or lost), whether or not this node has heard of it yet.
            StoreError::NotFound(_) => ReadOf::Gone(state.epoch.clone()),
            e => ReadOf::Log(LogError::from(&e)),
        })?;
        // Deleted meanwhile: what was read belongs to a log that is gone.
        if state.is_deleted() {
            return Err(LogError::Deleted(ns.to_owned()).into());
        }
        let first = events.first().map_or(read_from, |e| e.offset);
        let truncated = matches!(req.from, Position::Offset(n) if n < first);
        // Retention ran between taking `earliest` and the read: the page starts later
        // than `earliest` said, and a page is `truncated` only below `earliest`, so the
        // oldest event held is now at least its first.
        let earliest = if first > read_from {
            earliest.max(first)
        } else {
            earliest
        };
        let next = events.last().map_or(first.max(start), |e| e.offset + 1);
        Ok(ReadPage {
            events,
            next,
            earliest,
            truncated,
            epoch: state.epoch.clone(),
            error: None,
        })
    }

    /// The broker's metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The text of `GET /metrics`: the counters as they stand, and what is read now (the
    /// writer's queue, the namespaces' heads and lag, the data directory's size, walked on
    /// the blocking pool).
    pub(crate) async fn metrics_text(&self) -> String {
        let dir = self.inner.config.data_dir.clone();
        let disk_bytes = tokio::task::spawn_blocking(move || crate::metrics::disk_bytes(&dir))
            .await
            .unwrap_or(0);
        let snapshot = Snapshot {
            write_queue_depth: (self.inner.tx.max_capacity() - self.inner.tx.capacity()) as u64,
            namespaces: self.inner.namespaces.all().len() as u64,
            disk_bytes,
        };
        let namespaces = &self.inner.namespaces;
        self.inner
            .metrics
            .render(&snapshot, |ns| namespaces.get(ns).map(|s| s.visible()))
    }

    /// True while the shared store's recorded default retention differs from this
    /// broker's (`docs/cluster.md`, "Retention"): it enforces none, and is not ready.
    pub fn retention_refused(&self) -> bool {
        self.inner
            .retention_refused
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// False once shutdown has begun.
    pub fn is_ready(&self) -> bool {
        !self.inner.shutdown.is_cancelled()
    }

    /// True while the store's last write, sync or checkpoint failed (a full disk, an I/O
    /// error); false after the next one succeeds.
    pub fn storage_failing(&self) -> bool {
        self.inner.store.is_failing()
    }

    /// With a shared store, asks it now whether it takes writes (Redis: `ROLE`, within
    /// one `redis_timeout_ms` for connect and reply, and not at all while its circuit is
    /// open), so [`Log::storage_failing`] is fresh for `/readyz`; on the blocking pool.
    /// False when no answer came within `redis_timeout_ms` (and [`GIVE_UP_MARGIN`]): the
    /// store is not ready. Nothing for the embedded store, whose failures are its own
    /// writes'.
    pub async fn probe_storage(&self) -> bool {
        if !self.inner.store.is_shared() {
            return true;
        }
        let store = Arc::clone(&self.inner.store);
        let within = Duration::from_millis(self.inner.config.redis_timeout_ms) + GIVE_UP_MARGIN;
        let probe = tokio::task::spawn_blocking(move || store.probe());
        match tokio::time::timeout(within, probe).await {
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %e, "readiness probe");
                true
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Wakes waiting readers, stops the timers and reports not ready. Writes are still
    /// taken until [`Log::shutdown`], so in-flight publishes can finish.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Lets the writer finish what is queued, sync, and stop; waits for it.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        // `send` waits for room; the writer keeps draining until it sees this.
        if self.inner.tx.send(Command::Shutdown).await.is_err() {
            tracing::debug!("writer already stopped");
        }
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            if tokio::task::spawn_blocking(move || handle.join())
                .await
                .is_err()
            {
                tracing::error!("writer thread panicked");
            }
        }
    }
}

fn patience(deadline: Option<Deadline>) -> Option<Patience> {
    deadline.map(|deadline| Patience {
        deadline,
        timer: None,
    })
}

/// A Redis URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}
