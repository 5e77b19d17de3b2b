//! The [`Storage`] trait on Redis Streams, for many brokers sharing one log (spec §5,
//! `docs/cluster.md`).
//!
//! Every mutation of a namespace is one Lua script ([`scripts`]), so it is atomic inside
//! Redis whichever node runs it: the append script checks the idempotency key, takes the
//! namespace's `next`, `XADD`s each event under an id derived from its offset (never `*`,
//! never a clock) and moves `next`, so offsets are dense and the same on every node.
//!
//! Connections are synchronous: the trait is synchronous and every call already runs off
//! the async workers (the writer thread, the blocking pool), so an async client would only
//! add a `block_on` per call. Idle connections are kept in a small pool; one that failed is
//! dropped, and the next call opens a new one, which is how the store recovers when Redis
//! comes back.
//!
//! A circuit keeps a hung Redis (connections accepted, nothing answered) from costing each
//! command its own `redis_timeout_ms`: the first command that times out opens it, and from
//! then on every call is refused at once, "not sent", without touching the network, until
//! the store's prober thread gets an answer: a fresh connection and `ROLE` within one
//! `redis_timeout_ms` in total, tried at most once per `redis_timeout_ms`
//! (`docs/decisions.md`, "A hung Redis").
//!
//! ### Exceptions to the trait's invariants (docs/storage.md)
//!
//! - Durability is Redis's: [`Storage::sync`] runs `WAIT` when replicas are asked for, and
//!   otherwise does nothing; what survives a crash of Redis is what its persistence
//!   settings keep (`docs/cluster.md`).
//! - Dirty marks ([`Storage::mark_dirty`]) are not kept: a broker node keeps no unwritten
//!   events, so its crash loses nothing, and `durability = "relaxed"` is refused with
//!   Redis.
//! - If Redis loses a namespace's data (a restart without persistence, `FLUSHALL`, a
//!   failover to a replica without the tail), its offsets start again at 0 under a new
//!   epoch: the epoch is what tells clients, as spec §2 says.

/// Most events one RETAIN script call looks at and removes: the store calls it again until
/// the policy holds, so Redis serves other clients between pages (review F9: a script that
/// read until done blocked Redis past `lua-time-limit` on a large first pass).
const RETAIN_PAGE: u64 = 64;

/// How many deleted incarnations' epochs a namespace's `deleted` list keeps: a node that
/// missed more deletes of one namespace than this (between two of its heals) tells its
/// readers `epoch` instead of `deleted`.
pub(crate) const DELETED_EPOCHS: u64 = 64;

mod scripts;
#[cfg(test)]
pub(crate) mod test_server;
mod witness;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, Script};
use rewind_protocol::{Event, NewEvent};

use super::record;
use super::{
    new_epoch, now_ms, AppendRequest, Appended, IdempotencyKey, NsInfo, Retention, Storage,
    StoreError,
};

/// Idle connections kept for reuse.
const POOL_IDLE: usize = 16;
/// The longest socket timeout used, a day in milliseconds.
const DAY_MS: u64 = 24 * 3600 * 1000;

/// How to reach Redis and where to keep the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis://HOST:PORT[/DB]` or `rediss://` for TLS (with `user:password@` if needed).
    pub url: String,
    /// Every key starts with this and a colon (`rewind` by default): brokers that share a
    /// prefix share the namespaces.
    pub prefix: String,
    /// Replicas `WAIT` must reach before a publish is acknowledged; 0 runs no `WAIT`.
    pub wait_replicas: u64,
    /// How long `WAIT` waits, in milliseconds.
    pub wait_timeout_ms: u64,
    /// Connect, read and write timeout of every command, in milliseconds.
    pub timeout_ms: u64,
}

/// The Redis store. Cheap to share: every call takes a pooled connection.
pub struct RedisStore {
    client: redis::Client,
    opts: RedisOptions,
    pool: Mutex<Vec<Connection>>,
    /// The connection every mutation and `WAIT` goes through: `WAIT` counts the writes
    /// of its own connection only. Mutations come from the broker's one writer thread.
    writer: Mutex<Option<Connection>>,
    /// True from a call that could not reach Redis until the next one that did.
    failing: Arc<AtomicBool>,
    /// The circuit: true from a command or connect that timed out until the prober gets
    /// an answer; meanwhile every call is refused at once, nothing sent (module docs).
    circuit_open: AtomicBool,
    /// The prober thread, woken when the circuit opens.
    prober: Mutex<Option<std::thread::Thread>>,
    /// True while Redis answers that it takes no writes (a read-only replica: `ROLE` says
    /// so, or a script was refused `READONLY`), until a probe finds a primary or a write
    /// succeeds. Reads that succeed do not clear it (review F12: `/readyz` flapped).
    read_only: AtomicBool,
    /// Set when a connection failed: Redis went away, so the writer's connection, idle
    /// meanwhile, is dropped before its next use rather than failing a publish with
    /// "outcome unknown" (`reset_connections`).
    writer_stale: AtomicBool,
    /// Which writer connection this is: counted up each time one is opened (`WAIT`
    /// counts only its own connection's writes).
    writer_generation: std::sync::atomic::AtomicU64,
    /// The writer connection that made the first write since the last `sync`, if any: a
    /// `WAIT` on a later connection cannot vouch for it (review F6).
    unsynced_since: Mutex<Option<u64>>,
    /// True when the last `WAIT` reached fewer replicas than asked for.
    under_replicated: AtomicBool,
    /// The value of the instance marker (`P:instance`) this broker last saw: a Redis that
    /// lost its data has lost the marker too.
    instance: Mutex<Option<String>>,
    /// What this node saw of each namespace's incarnations ([`witness`]).
    witness: Mutex<witness::Witness>,
    append: Script,
    create: Script,
    delete: Script,
    retain: Script,
    prune: Script,
    rotate: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.opts.prefix)
            .finish_non_exhaustive()
    }
}

/// Whether a Redis error means Redis cannot serve now (it may later), rather than a
/// refused command: a connection that failed or timed out, a server still loading its
/// data, a read-only replica, a primary that is down.
fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.code(),
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN")
        )
}

fn store_error(e: RedisError) -> StoreError {
    if is_unavailable(&e) && e.is_timeout() {
        StoreError::Unavailable(format!(
            "Redis did not answer within redis_timeout_ms ({e})"
        ))
    } else if is_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Redis(e.to_string())
    }
}

/// [`store_error`] for a request sent on an open connection that may have changed Redis:
/// when the connection failed or timed out after the request went out, Redis may have run
/// it, so the error says the outcome is unknown (`docs/cluster.md`). An error answer
/// (`LOADING`, `READONLY`, `BUSY`, ...) means it did not run.
fn write_error(e: RedisError) -> StoreError {
    if is_unavailable(&e) && e.code().is_none() {
        StoreError::Unavailable(format!(
            "outcome unknown: the request was sent and Redis did not answer ({e}); it may have been applied, retry with the same Idempotency-Key"
        ))
    } else {
        store_error(e)
    }
}

/// [`store_error`] for a connection that could not be opened: nothing was sent.
fn not_sent(e: StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(why) => {
            StoreError::Unavailable(format!("not sent: no connection to Redis ({why})"))
        }
        other => other,
    }
}

/// `e` again, for each append of a pipeline that failed as a whole.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
        StoreError::NotFound(ns) => StoreError::NotFound(ns.clone()),
        other => StoreError::Redis(other.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn limit_arg(v: Option<u64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

fn parse_u64(fields: &HashMap<String, String>, name: &str) -> Result<u64, StoreError> {
    fields
        .get(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("namespace metadata without {name}")))
}

fn parse_limit(fields: &HashMap<String, String>, name: &str) -> Option<u64> {
    fields.get(name).and_then(|v| v.parse().ok())
}

fn parse_offset(s: &str) -> Result<u64, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("{s:?} is not an offset")))
}

/// The offset of stream entry id `n-1`.
/// One stream entry as `XRANGE` answers it: the id and the fields, name then value.
type StreamEntry = (String, Vec<Vec<u8>>);

/// The events of `entries` (in offset order), and past the first at most `max_bytes` of
/// records.
fn decode_entries(entries: Vec<StreamEntry>, max_bytes: usize) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::with_capacity(entries.len());
    let mut bytes = 0usize;
    for (id, fields) in entries {
        let offset = id_offset(&id)?;
        let rec = fields
            .chunks(2)
            .find(|f| f.first().map(Vec::as_slice) == Some(b"r"))
            .and_then(|f| f.get(1))
            .ok_or_else(|| StoreError::Corrupt(format!("entry {id} without a record")))?;
        if !out.is_empty() && bytes.saturating_add(rec.len()) > max_bytes {
            break;
        }
        bytes += rec.len();
        out.push(record::decode(offset, rec)?);
    }
    Ok(out)
}

fn id_offset(id: &str) -> Result<u64, StoreError> {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("stream id {id:?} is not an offset's")))
}

impl RedisStore {
    /// Connects to Redis (one `ROLE`); a Redis that cannot be reached or takes no writes
    /// is logged and the store starts failing (it recovers by itself once Redis answers).
    /// Errors: [`StoreError::Redis`] for a bad URL.
    pub fn open(opts: RedisOptions) -> Result<Arc<RedisStore>, StoreError> {
        let client =
            redis::Client::open(opts.url.as_str()).map_err(|e| StoreError::Redis(e.to_string()))?;
        let store = Arc::new(RedisStore {
            client,
            opts,
            pool: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
            failing: Arc::new(AtomicBool::new(false)),
            circuit_open: AtomicBool::new(false),
            prober: Mutex::new(None),
            writer_stale: AtomicBool::new(false),
            read_only: AtomicBool::new(false),
            writer_generation: std::sync::atomic::AtomicU64::new(0),
            unsynced_since: Mutex::new(None),
            under_replicated: AtomicBool::new(false),
            instance: Mutex::new(None),
            witness: Mutex::new(witness::Witness::default()),
            append: Script::new(scripts::APPEND),
            create: Script::new(scripts::CREATE),
            delete: Script::new(scripts::DELETE),
            retain: Script::new(scripts::RETAIN),
            prune: Script::new(scripts::PRUNE),
            rotate: Script::new(scripts::ROTATE),
        });
        store.spawn_prober()?;
        // Redis not there (yet), or a replica: the node starts all the same, not ready,
        // and follows Redis once it answers (`docs/cluster.md`, "Starting").
        let first = store.probe().and_then(|()| store.lost_data().map(drop));
        match first {
            Ok(()) => {}
            Err(StoreError::Unavailable(why)) => tracing::warn!(
                error = %why,
                "Redis cannot take writes at startup: starting not ready (/readyz 503), retrying"
            ),
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    /// Probes Redis ([`Storage::probe`]) every `every` from a thread of its own, for as
    /// long as the store lives.
    pub fn watch_health(self: &Arc<Self>, every: Duration) -> Result<(), StoreError> {
        let weak: Weak<RedisStore> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("rewind-redis-health".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                match weak.upgrade() {
                    Some(store) => {
                        if let Err(e) = store.probe() {
                            tracing::debug!(error = %e, "redis health check failed");
                        }
                    }
                    None => break,
                }
            })?;
        Ok(())
    }

    /// Starts the thread that closes the circuit: parked while it is closed, it tries
    /// [`RedisStore::probe_fresh`] at most once per `redis_timeout_ms` while it is open.
    /// It ends once the store is dropped.
    fn spawn_prober(self: &Arc<Self>) -> Result<(), StoreError> {
        let weak: Weak<RedisStore> = Arc::downgrade(self);
        let period = Duration::from_millis(self.opts.timeout_ms.max(1));
        let handle = std::thread::Builder::new()
            .name("rewind-redis-probe".into())
            .spawn(move || loop {
                let open = match weak.upgrade() {
                    Some(store) => store.circuit_open.load(Ordering::Acquire),
                    None => break,
                };
                if !open {
                    // Woken by `open_circuit`; the timeout only notices a dropped store.
                    std::thread::park_timeout(Duration::from_secs(1));
                    continue;
                }
                let started = Instant::now();
                let still_open = match weak.upgrade() {
                    Some(store) => {
                        if let Err(e) = store.probe_fresh() {
                            tracing::debug!(error = %e, "Redis probe: no answer yet");
                        }
                        store.circuit_open.load(Ordering::Acquire)
                    }
                    None => break,
                };
                if still_open {
                    std::thread::sleep(period.saturating_sub(started.elapsed()));
                }
            })?;
        *self.prober.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.thread().clone());
        Ok(())
    }

    /// Opens the circuit (a command or a connect timed out): until the prober gets an
    /// answer, every call is refused at once, nothing sent.
    fn open_circuit(&self) {
        self.failing.store(true, Ordering::Release);
        if !self.circuit_open.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                timeout_ms = self.opts.timeout_ms,
                "Redis did not answer within redis_timeout_ms: commands are refused (503 unavailable, not sent) until a probe gets an answer"
            );
            if let Some(prober) = &*self.prober.lock().unwrap_or_else(|p| p.into_inner()) {
                prober.unpark();
            }
        }
    }

    /// `Err` "not sent" while the circuit is open.
    fn circuit_closed(&self) -> Result<(), StoreError> {
        if self.circuit_open.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(format!(
                "not sent: Redis did not answer within redis_timeout_ms ({} ms) and has not answered a probe since",
                self.opts.timeout_ms
            )));
        }
        Ok(())
    }

    /// The prober's question: a new connection and `ROLE`, within one `redis_timeout_ms`
    /// in total. An answer closes the circuit; the connections opened before are dropped
    /// (they may be dead), this one is kept.
    fn probe_fresh(&self) -> Result<(), StoreError> {
        let mut con = self.connect_counted(false)?;
        let role = self.role_within(&mut con, Instant::now() + self.timeout());
        let answered = match &role {
            Ok(_) => true,
            Err(e) => e.code().is_some(),
        };
        if !answered {
            return role.map(drop).map_err(store_error);
        }
        self.reset_connections();
        self.circuit_open.store(false, Ordering::Release);
        tracing::info!("Redis answers again: commands are sent again");
        let primary = self.take_role(role.map_err(store_error)?);
        self.failing.store(false, Ordering::Release);
        self.give_back(con);
        primary
    }

    /// `ROLE` on `con`, its reply read before `deadline` at the latest; the connection's
    /// read timeout is `redis_timeout_ms` again afterwards.
    fn role_within(
        &self,
        con: &mut Connection,
        deadline: Instant,
    ) -> Result<Vec<redis::Value>, RedisError> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no time left for ROLE within redis_timeout_ms",
                ))
            })?;
        con.set_read_timeout(Some(left))?;
        let role = redis::cmd("ROLE").query(con);
        con.set_read_timeout(Some(self.timeout()))?;
        role
    }

    /// Records what `ROLE` answered; `Err` for a replica.
    fn take_role(&self, role: Vec<redis::Value>) -> Result<(), StoreError> {
        let primary = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
        self.read_only.store(!primary, Ordering::Release);
        if primary {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "Redis is a read-only replica (ROLE): point --redis at the primary".into(),
            ))
        }
    }

    /// `redis_timeout_ms`.
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.opts.timeout_ms.clamp(1, DAY_MS))
    }

    /// One `PING`.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.with(|con| redis::cmd("PING").query::<String>(con))
            .map(drop)
    }

    /// A new connection of the store's own (for Pub/Sub), with its timeouts set; `read`
    /// sets the read timeout (`None`: block).
    pub fn connect(&self, read: Option<Duration>) -> Result<Connection, StoreError> {
        // A socket timeout is a `timeval`: a day is as good as forever here.
        let timeout = Duration::from_millis(self.opts.timeout_ms.clamp(1, DAY_MS));
        let read = read.map(|r| r.min(Duration::from_millis(DAY_MS)));
        let con = self
            .client
            .get_connection_with_timeout(timeout)
            .inspect_err(|e| {
                if e.is_timeout() {
                    self.open_circuit();
                }
            })
            .map_err(store_error)?;
        con.set_write_timeout(Some(timeout)).map_err(store_error)?;
        con.set_read_timeout(read).map_err(store_error)?;
        Ok(con)
    }

    /// The Pub/Sub channel every change of a namespace is announced on (`engine::cluster`):
    /// `PREFIX:changes:DB`. Pub/Sub ignores database numbers, so the number is in the name:
    /// deployments on two databases of one Redis never hear each other.
    pub fn channel(&self) -> String {
        let db = self.client.get_connection_info().redis_settings().db();
        format!("{}:changes:{db}", self.opts.prefix)
    }

    fn key(&self, ns: &str, part: &str) -> String {
        format!("{}:{{{ns}}}:{part}", self.opts.prefix)
    }

    fn namespaces_key(&self) -> String {
        format!("{}:namespaces", self.opts.prefix)
    }

    /// Runs `f` on a pooled connection. A connection whose call could not reach Redis is
    /// dropped and the store reports failing until a call succeeds.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        self.circuit_closed()?;
        let idle = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut con = match idle {
            Some(con) => con,
            None => self.connect_counted(false)?,
        };
        let result = f(&mut con);
        let keep = self.note(&result);
        if keep {
            self.give_back(con);
        } else {
            self.reset_connections();
        }
        result.map_err(store_error)
    }

    /// Drops the idle connections and, before its next use, the writer's: one connection
    /// failing (Redis restarted, a network cut) means the others, opened before, are most
    /// likely dead too, and a publish sent on a dead one would be answered 503 "outcome
    /// unknown" when nothing was run.
    pub(crate) fn reset_connections(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.writer_stale.store(true, Ordering::Release);
    }

    /// Runs `f` on the writer's connection (see `writer`), opening it if need be.
    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        self.circuit_closed()?;
        let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.writer_stale.swap(false, Ordering::AcqRel) {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(self.connect_counted(true)?);
            self.writer_generation.fetch_add(1, Ordering::AcqRel);
        }
        let Some(con) = slot.as_mut() else {
            return Err(StoreError::Unavailable("no connection".into()));
        };
        let generation = self.writer_generation.load(Ordering::Acquire);
        let result = f(con);
        if !self.note(&result) {
            *slot = None;
        }
        // Whatever was sent may have changed Redis: the first such connection since the
        // last sync is the one a `WAIT` must run on to vouch for it.
        self.unsynced_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(generation);
        match &result {
            Ok(_) => self.read_only.store(false, Ordering::Release),
            Err(e) if e.code() == Some("READONLY") => self.read_only.store(true, Ordering::Release),
            Err(_) => {}
        }
        result.map_err(write_error)
    }

    /// A new connection whose reads wait `redis_timeout_ms`, plus `WAIT`'s own timeout on
    /// the writer's connection (`writer`), so a `WAIT` is not cut short by the socket.
    fn connect_counted(&self, writer: bool) -> Result<Connection, StoreError> {
        let mut read = self.opts.timeout_ms.max(1);
        if writer && self.opts.wait_replicas > 0 {
            read = read.saturating_add(self.opts.wait_timeout_ms);
        }
        self.connect(Some(Duration::from_millis(read)))
            .inspect_err(|_| {
                self.failing.store(true, Ordering::Release);
            })
            .map_err(not_sent)
    }

    /// Records whether Redis answered; returns whether the connection is still good.
    fn note<T>(&self, result: &Result<T, RedisError>) -> bool {
        match result {
            Err(e) if is_unavailable(e) => {
                self.failing.store(true, Ordering::Release);
                if e.is_timeout() {
                    self.open_circuit();
                }
                false
            }
            _ => {
                self.failing.store(false, Ordering::Release);
                true
            }
        }
    }

    fn give_back(&self, con: Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_IDLE {
            pool.push(con);
        }
    }

    fn info_from(ns: &str, fields: &HashMap<String, String>) -> Result<Option<NsInfo>, StoreError> {
        if fields.get("live").map(String::as_str) != Some("1") {
            return Ok(None);
        }
        Ok(Some(NsInfo {
            name: ns.to_owned(),
            epoch: fields.get("epoch").cloned().unwrap_or_default(),
            retention: Retention {
                max_events: parse_limit(fields, "max_events"),
                max_bytes: parse_limit(fields, "max_bytes"),
                max_age_secs: parse_limit(fields, "max_age_secs"),
            },
            earliest: parse_u64(fields, "earliest")?,
            next: parse_u64(fields, "next")?,
            bytes: parse_u64(fields, "bytes")?,
        }))
    }

    fn info_unwitnessed(&self, ns: &str) -> Result<Option<NsInfo>, StoreError> {
        let fields: HashMap<String, String> =
            self.with(|con| redis::cmd("HGETALL").arg(self.key(ns, "meta")).query(con))?;
        let info = Self::info_from(ns, &fields)?;
        // Metadata kept with `live` 0: deleted (by any node), not lost.
        if info.is_none() && !fields.is_empty() {
            self.witness
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .gone(ns);
        }
        Ok(info)
    }

    /// Records `info` as seen ([`witness`]); when Redis went back in time (a lower `next`
    /// under the epoch followed, or an epoch seen replaced), gives the namespace a fresh
    /// epoch first and answers the namespace as it is then.
    fn witnessed(&self, info: NsInfo) -> Result<NsInfo, StoreError> {
        let verdict = self
            .witness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(&info.name, &info.epoch, info.next);
        let witness::Verdict::Regressed { epoch, min_next } = verdict else {
            return Ok(info);
        };
        let fresh = new_epoch()?;
        let mut inv = self.rotate.prepare_invoke();
        inv.key(self.key(&info.name, "meta"))
            .key(self.key(&info.name, "idem"))
            .key(self.key(&info.name, "idemts"))
            .arg(&epoch)
            .arg(min_next)
            .arg(&fresh)
            .arg(self.channel())
            .arg(&info.name);
        let rotated: i64 = self.with_writer(|con| inv.invoke(con))?;
        if rotated == 1 {
            tracing::warn!(
                ns = %info.name,
                old_epoch = %epoch,
                epoch = %fresh,
                next = info.next,
                seen_next = min_next,
                "Redis went back in time (a snapshot restored, a failover to a replica without the tail): new epoch"
            );
        }
        let now = self
            .info_unwitnessed(&info.name)?
            .ok_or_else(|| StoreError::NotFound(info.name.clone()))?;
        // The fresh epoch (or whatever replaced the judged one meanwhile) is news: seen
        // once more, it retires the one that went back. Never judged as a regression
        // again, unless Redis went back again in between.
        self.witness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(&now.name, &now.epoch, now.next);
        Ok(now)
    }

    /// The APPEND script's invocation for `r`.
    fn append_invocation<'s>(
        &'s self,
        r: &AppendRequest<'_>,
    ) -> Result<redis::ScriptInvocation<'s>, StoreError> {
        if r.events.is_empty() {
            return Err(StoreError::Corrupt("an append of no events".into()));
        }
        let mut inv = self.append.prepare_invoke();
        inv.key(self.key(r.ns, "meta"))
            .key(self.key(r.ns, "log"))
            .key(self.key(r.ns, "idem"))
            .key(self.key(r.ns, "idemts"))
            .arg(r.ts_ms);
        match &r.idempotency {
            Some(k) => inv
                .arg(k.key)
                .arg(hex(&k.request.0))
                .arg(hex(&k.request_v1.0))
                .arg(if k.batch { "true" } else { "false" })
                .arg(k.not_before_ms),
            None => inv.arg("").arg("").arg("").arg("false").arg(0),
        };
        // A fresh epoch for the script to take if the namespace's `next` went back.
        let fresh = if r.epoch.is_empty() {
            String::new()
        } else {
            new_epoch()?
        };
        inv.arg(self.channel())
            .arg(r.ns)
            .arg(r.epoch)
            .arg(r.min_next)
            .arg(fresh);
        for ev in r.events {
            inv.arg(record::encode(ev, r.ts_ms));
        }
        Ok(inv)
    }

    /// What the APPEND script's `answer` to `r` means.
    fn append_answer(
        &self,
        r: &AppendRequest<'_>,
        answer: &[String],
    ) -> Result<Appended, StoreError> {
        match answer {
            [new, first, last] if new == "new" => {
                let (first, last) = (parse_offset(first)?, parse_offset(last)?);
                if !r.epoch.is_empty() {
                    self.witness
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .observe(r.ns, r.epoch, last + 1);
                }
                Ok(Appended::New { first, last })
            }
            [dup, first, last, batch] if dup == "dup" => Ok(Appended::Duplicate {
                first: parse_offset(first)?,
                last: parse_offset(last)?,
                batch: Some(batch == "true"),
            }),
            [conflict, first, last] if conflict == "conflict" => {
                Err(StoreError::IdempotencyConflict {
                    first: parse_offset(first)?,
                    last: parse_offset(last)?,
                })
            }
            [missing] if missing == "missing" => Err(StoreError::NotFound(r.ns.to_owned())),
            other => Err(StoreError::Corrupt(format!("append answered {other:?}"))),
        }
    }

    fn run_delete(&self, ns: &str, only_empty: bool) -> Result<bool, StoreError> {
        let mut inv = self.delete.prepare_invoke();
        inv.key(self.key(ns, "meta"))
            .key(self.key(ns, "log"))
            .key(self.key(ns, "idem"))
            .key(self.key(ns, "idemts"))
            .key(self.namespaces_key())
            .key(self.key(ns, "deleted"))
            .arg(self.channel())
            .arg(ns)
            .arg(if only_empty { "empty" } else { "" })
            .arg(DELETED_EPOCHS);
        let n: i64 = self.with_writer(|con| inv.invoke(con))?;
        Ok(n == 1)
    }
}

impl Storage for RedisStore {
    fn namespaces(&self) -> Result<Vec<NsInfo>, StoreError> {
        let mut names: Vec<String> =
            self.with(|con| redis::cmd("SMEMBERS").arg(self.namespaces_key()).query(con))?;
        names.sort();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for ns in &names {
            pipe.cmd("HGETALL").arg(self.key(ns, "meta"));
        }
        let metas: Vec<HashMap<String, String>> = self.with(|con| pipe.query(con))?;
        let mut out = Vec::with_capacity(names.len());
        for (ns, fields) in names.iter().zip(&metas) {
            if let Some(info) = Self::info_from(ns, fields)? {
                out.push(self.witnessed(info)?);
            }
        }
        Ok(out)
    }

    fn info(&self, ns: &str) -> Result<Option<NsInfo>, StoreError> {
        match self.info_unwitnessed(ns)? {
            Some(info) => self.witnessed(info).map(Some),
            None => Ok(None),
        }
    }

    fn create(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
        let epoch = new_epoch()?;
        let mut inv = self.create.prepare_invoke();
        inv.key(self.key(ns, "meta"))
            .key(self.namespaces_key())
            .key(self.key(ns, "log"))
            .key(self.key(ns, "idem"))
            .key(self.key(ns, "idemts"))
            .arg(&epoch)
            .arg(now_ms())
            .arg(limit_arg(retention.max_events))
            .arg(limit_arg(retention.max_bytes))
            .arg(limit_arg(retention.max_age_secs))
            .arg(self.channel())
            .arg(ns);
        let answer: Vec<String> = self.with_writer(|con| inv.invoke(con))?;
        match answer.as_slice() {
            [ok, next] if ok == "ok" => {
                let next = parse_offset(next)?;
                // Retires the incarnation this one replaces: were it to come back (a
                // snapshot restored), it would be given a fresh epoch.
                self.witness
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .observe(ns, &epoch, next);
                Ok(NsInfo {
                    name: ns.to_owned(),
                    epoch,
                    retention,
                    earliest: next,
                    next,
                    bytes: 0,
                })
            }
            [exists] if exists == "exists" => Err(StoreError::Exists(ns.to_owned())),
            other => Err(StoreError::Corrupt(format!("create answered {other:?}"))),
        }
    }

    fn undo_create(&self, ns: &str) -> Result<bool, StoreError> {
        self.run_delete(ns, true)
    }

    fn set_retention(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
        let meta = self.key(ns, "meta");
        // One transaction: the check that the namespace is live and the change together.
        let (live,): (Option<String>,) = self.with_writer(|con| {
            redis::pipe()
                .atomic()
                .cmd("HGET")
                .arg(&meta)
                .arg("live")
                .cmd("HSET")
                .arg(&meta)
                .arg("max_events")
                .arg(limit_arg(retention.max_events))
                .arg("max_bytes")
                .arg(limit_arg(retention.max_bytes))
                .arg("max_age_secs")
                .arg(limit_arg(retention.max_age_secs))
                .ignore()
                .query(con)
        })?;
        if live.as_deref() != Some("1") {
            // The fields written to a deleted namespace's metadata are replaced by its
            // next create; nothing else reads them.
            return Err(StoreError::NotFound(ns.to_owned()));
        }
        self.info(ns)?
            .ok_or_else(|| StoreError::NotFound(ns.to_owned()))
    }

    fn delete(&self, ns: &str) -> Result<bool, StoreError> {
        let existed = self.run_delete(ns, false)?;
        self.witness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gone(ns);
        Ok(existed)
    }

    fn append(
        &self,
        ns: &str,
        events: &[NewEvent],
        ts_ms: u64,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Appended, StoreError> {
        self.append_at_epoch(ns, "", 0, events, ts_ms, idempotency)
    }

    fn append_at_epoch(
        &self,
        ns: &str,
        epoch: &str,
        min_next: u64,
        events: &[NewEvent],
        ts_ms: u64,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Appended, StoreError> {
        let request = AppendRequest {
            ns,
            epoch,
            min_next,
            events,
            ts_ms,
            idempotency,
        };
        let inv = self.append_invocation(&request)?;
        let answer: Vec<String> = self.with_writer(|con| inv.invoke(con))?;
        self.append_answer(&request, &answer)
    }

    fn append_all(&self, requests: &[AppendRequest<'_>]) -> Vec<Result<Appended, StoreError>> {
        if requests.len() < 2 {
            return requests
                .iter()
                .map(|r| {
                    self.append_at_epoch(
                        r.ns,
                        r.epoch,
                        r.min_next,
                        r.events,
                        r.ts_ms,
                        r.idempotency,
                    )
                })
                .collect();
        }
        let invocations: Result<Vec<_>, StoreError> =
            requests.iter().map(|r| self.append_invocation(r)).collect();
        let invocations = match invocations {
            Ok(invocations) => invocations,
            Err(e) => return requests.iter().map(|_| Err(same_error(&e))).collect(),
        };
        // One round trip: the script loaded (a no-op when it is, and Redis forgets
        // scripts on a restart), then every append in order. Each script is atomic on its
        // own, so each batch is still all or nothing.
        let mut pipe = redis::pipe();
        pipe.load_script(&self.append).ignore();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        match self.with_writer(|con| pipe.query::<Vec<Vec<String>>>(con)) {
            Ok(answers) if answers.len() == requests.len() => requests
                .iter()
                .zip(&answers)
                .map(|(r, a)| self.append_answer(r, a))
                .collect(),
            Ok(answers) => requests
                .iter()
                .map(|_| {
                    Err(StoreError::Corrupt(format!(
                        "{} answers to {} appends",
                        answers.len(),
                        requests.len()
                    )))
                })
                .collect(),
            Err(e) => requests.iter().map(|_| Err(same_error(&e))).collect(),
        }
    }

    fn read(
        &self,
        ns: &str,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if from >= until || max_events == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<StreamEntry> = self.with(|con| {
            redis::cmd("XRANGE")
                .arg(self.key(ns, "log"))
                .arg(format!("{from}-1"))
                .arg(format!("{}-1", until - 1))
                .arg("COUNT")
                .arg(max_events)
                .query(con)
        })?;
        decode_entries(entries, max_bytes)
    }

    fn read_at_epoch(
        &self,
        ns: &str,
        epoch: &str,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        // One transaction (`MULTI`/`EXEC`; both keys carry the `{ns}` hash tag): the
        // incarnation checked and its entries read with nothing run between them, so a
        // delete and a re-create under the same name cannot slip in between. Not a script:
        // an `EVALSHA` waits out a write pause (`CLIENT PAUSE WRITE`, a failover) when Redis
        // does not know it reads only, which a transaction of reads never does. The cost: on
        // a Redis that hangs, the client waits out `redis_timeout_ms` once per reply (four)
        // before the circuit opens (`docs/cluster.md`, "A hung Redis").
        let (meta, entries): ((Option<String>, Option<String>), Vec<StreamEntry>) =
            self.with(|con| {
                redis::pipe()
                    .atomic()
                    .cmd("HMGET")
                    .arg(self.key(ns, "meta"))
                    .arg("live")
                    .arg("epoch")
                    .cmd("XRANGE")
                    .arg(self.key(ns, "log"))
                    .arg(format!("{from}-1"))
                    .arg(format!("{}-1", until.max(1) - 1))
                    .arg("COUNT")
                    .arg(max_events.max(1))
                    .query(con)
            })?;
        let (live, stored) = meta;
        if live.as_deref() != Some("1") || (!epoch.is_empty() && stored.as_deref() != Some(epoch)) {
            return Err(StoreError::NotFound(ns.to_owned()));
        }
        if from >= until || max_events == 0 {
            return Ok(Vec::new());
        }
        decode_entries(entries, max_bytes)
    }

    fn enforce_retention(
        &self,
        ns: &str,
        policy: &Retention,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let policy = policy.in_force();
        let info = self
            .info(ns)?
            .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?;
        let count_cut = policy
            .max_events
            .map_or(0, |max| info.next.saturating_sub(max));
        let age_cut = policy
            .max_age_secs
            .map_or(0, |secs| now_ms.saturating_sub(secs.saturating_mul(1000)));
        let max_bytes = policy.max_bytes.unwrap_or(u64::MAX);
        if count_cut <= info.earliest && info.bytes <= max_bytes && policy.max_age_secs.is_none() {
            return Ok(None);
        }
        // One page per call; each call that answers moves `earliest` up, so this ends.
        let mut earliest = None;
        loop {
            let mut inv = self.retain.prepare_invoke();
            inv.key(self.key(ns, "meta"))
                .key(self.key(ns, "log"))
                .arg(count_cut)
                .arg(max_bytes)
                .arg(age_cut)
                .arg(self.channel())
                .arg(ns)
                .arg(RETAIN_PAGE);
            let cut: i64 = self.with_writer(|con| inv.invoke(con))?;
            match u64::try_from(cut) {
                Ok(cut) => earliest = Some(cut),
                Err(_) => return Ok(earliest),
            }
        }
    }

    fn prune_idempotency(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0usize;
        for info in self.namespaces()? {
            let mut inv = self.prune.prepare_invoke();
            inv.key(self.key(&info.name, "idem"))
                .key(self.key(&info.name, "idemts"))
                .arg(before_ms);
            let pruned: usize = self.with_writer(|con| inv.invoke(con))?;
            n += pruned;
        }
        Ok(n)
    }

    fn sync(&self) -> Result<(), StoreError> {
        if self.opts.wait_replicas == 0 {
            return Ok(());
        }
        let first = self
            .unsynced_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let reached: u64 = self.with_writer(|con| {
            redis::cmd("WAIT")
                .arg(self.opts.wait_replicas)
                .arg(self.opts.wait_timeout_ms)
                .query(con)
        })?;
        // The `WAIT` itself went through `with_writer`: what it recorded is not a write.
        self.unsynced_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Writes made on a connection that has since been replaced: this `WAIT` counted
        // none of them, so it cannot say they reached the replicas.
        let reconnected =
            first.is_some_and(|g| g != self.writer_generation.load(Ordering::Acquire));
        if reconnected {
            tracing::warn!("the writer's connection to Redis was replaced since the group's first write: not claimed replicated");
        }
        let short = reached < self.opts.wait_replicas || reconnected;
        if short {
            tracing::warn!(
                reached,
                wanted = self.opts.wait_replicas,
                "WAIT timed out: writes acknowledged before reaching every replica asked for"
            );
        }
        self.under_replicated.store(short, Ordering::Release);
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        self.ping()
    }

    fn mark_dirty(&self, _ns: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn clear_dirty(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn retain_dirty(&self, _keep: &std::collections::HashSet<String>) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
            || self.read_only.load(Ordering::Acquire)
            || self.circuit_open.load(Ordering::Acquire)
    }

    /// `ROLE` on a pooled connection, or a new one, within one `redis_timeout_ms` in
    /// total (connect and reply); at once `Err` while the circuit is open (the prober
    /// asks then).
    fn probe(&self) -> Result<(), StoreError> {
        self.circuit_closed()?;
        let deadline = Instant::now() + self.timeout();
        let idle = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut con = match idle {
            Some(con) => con,
            None => self.connect_counted(false)?,
        };
        let role = self.role_within(&mut con, deadline);
        if self.note(&role) {
            self.give_back(con);
        } else {
            self.reset_connections();
        }
        self.take_role(role.map_err(store_error)?)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn last_sync_replicated(&self) -> bool {
        !self.under_replicated.load(Ordering::Acquire)
    }

    fn lost_data(&self) -> Result<bool, StoreError> {
        let key = format!("{}:instance", self.opts.prefix);
        let fresh = new_epoch()?;
        // A namespace whose metadata is gone entirely was not deleted (a delete keeps it,
        // `live` 0, and `next` with it): Redis lost it, e.g. a snapshot from before it
        // was created was restored, which the marker (restored too) cannot tell.
        let known = self
            .witness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .names();
        // Sets a marker when there is none, and answers the one in force either way.
        let (now, exists): (String, Vec<bool>) = self.with_writer(|con| {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&fresh)
                .arg("NX")
                .ignore()
                .cmd("GET")
                .arg(&key);
            for ns in &known {
                pipe.cmd("EXISTS").arg(self.key(ns, "meta"));
            }
            let mut answers: Vec<redis::Value> = pipe.query(con)?;
            let exists = answers
                .split_off(1.min(answers.len()))
                .iter()
                .map(|v| matches!(v, redis::Value::Int(1)))
                .collect();
            let now = match answers.pop() {
                Some(v) => redis::from_redis_value(v)?,
                None => String::new(),
            };
            Ok((now, exists))
        })?;
        let vanished: Vec<&String> = known
            .iter()
            .zip(&exists)
            .filter(|(_, e)| !**e)
            .map(|(ns, _)| ns)
            .collect();
        let mut seen = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        let mut lost = seen.as_ref().is_some_and(|old| *old != now);
        *seen = Some(now);
        if !vanished.is_empty() {
            tracing::warn!(
                namespaces = ?vanished,
                "Redis lost namespaces this broker knew (their metadata is gone, which no delete does): a snapshot from before they were created restored?"
            );
            // Reported once: the heal creates them again (seen live, they count again).
            let mut witness = self.witness.lock().unwrap_or_else(|p| p.into_inner());
            for ns in &vanished {
                witness.gone(ns);
            }
            lost = true;
        }
        Ok(lost)
    }

    fn claim_retention_defaults(&self, defaults: &Retention) -> Result<(), StoreError> {
        let key = format!("{}:retention", self.opts.prefix);
        let mine = defaults.in_force();
        let text = serde_json::to_string(&mine).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Sets the record when there is none, then reads the one in force. Two commands,
        // not a transaction: a replica refuses the `SET` itself (`READONLY`, unavailable),
        // where it would abort a `MULTI` with an error that is not.
        self.with_writer(|con| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&text)
                .arg("NX")
                .query::<Option<String>>(con)
        })?;
        let recorded: Option<String> = self.with(|con| redis::cmd("GET").arg(&key).query(con))?;
        let Some(recorded) = recorded else {
            return Err(StoreError::Unavailable(format!(
                "not sent: the record {key} was deleted while it was read; asked again at the next retention pass"
            )));
        };
        let theirs: Retention = serde_json::from_str(&recorded).map_err(|e| {
            StoreError::Corrupt(format!(
                "the cluster's default retention recorded in Redis under {key} is not readable ({e}): {recorded:?}"
            ))
        })?;
        if theirs.in_force() == mine {
            return Ok(());
        }
        Err(StoreError::Redis(format!(
            "this node's default retention ({}) differs from the one the brokers sharing this Redis and prefix recorded under the key {key} ({}); every node trims the same shared log, so they must agree: start this node with the recorded defaults (retention_max_events, retention_max_bytes, retention_max_age_secs), or, to change the cluster's defaults, stop every node, delete the key (redis-cli DEL {key}) and start the nodes with the new ones (docs/cluster.md, \"Retention\")",
            show_retention(&mine),
            show_retention(&theirs.in_force()),
        )))
    }

    fn was_deleted(&self, ns: &str, epoch: &str) -> Result<bool, StoreError> {
        let deleted: Vec<String> = self.with(|con| {
            redis::cmd("LRANGE")
                .arg(self.key(ns, "deleted"))
                .arg(0)
                .arg(-1)
                .query(con)
        })?;
        Ok(deleted.iter().any(|e| e == epoch))
    }
}

/// `max_events N|none, max_bytes N|none, max_age_secs N|none`, as the options are written.
fn show_retention(r: &Retention) -> String {
    let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |n| n.to_string());
    format!(
        "max_events {}, max_bytes {}, max_age_secs {}",
        show(r.max_events),
        show(r.max_bytes),
        show(r.max_age_secs)
    )
}

#[cfg(test)]
mod tests {
    //! How a node learns of an append: Pub/Sub (what `engine::cluster` uses) against a
    //! blocking `XREAD` per stream, measured on the test process's `redis-server`.

    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::test_server;

    /// A store on the test process's `redis-server` under its own key `prefix`, with no
    /// `WAIT` and a 5 s command timeout.
    fn test_store(prefix: impl Into<String>) -> std::sync::Arc<super::RedisStore> {
        super::RedisStore::open(super::RedisOptions {
            url: test_server::url(),
            prefix: prefix.into(),
            wait_replicas: 0,
            wait_timeout_ms: 100,
            timeout_ms: 5000,
        })
        .unwrap()
    }

    /// Sorted latencies' `p` quantile, in microseconds.
    fn quantile(sorted: &[Duration], p: f64) -> u128 {
        let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
        sorted[i].as_micros()
    }

    /// `n` appends, each timed from before its `XADD` to the moment a second connection
    /// is told, one at a time: through a `PUBLISH` in the same script, or a blocked
    /// `XREAD` waking.
    fn measure(n: usize, pubsub: bool) -> Vec<Duration> {
        let client = redis::Client::open(test_server::url()).unwrap();
        static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A stream of its own: XREAD below starts from its beginning.
        let key = format!("lat:{}:{run}", std::process::id());
        let (tx, rx) = mpsc::channel::<Instant>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let mut listener = client.get_connection().unwrap();
        let stream = key.clone();
        let reader = std::thread::spawn(move || {
            if pubsub {
                let mut ps = listener.as_pubsub();
                ps.subscribe(&stream).unwrap();
                ready_tx.send(()).unwrap();
                for _ in 0..n {
                    ps.get_message().unwrap();
                    tx.send(Instant::now()).unwrap();
                }
            } else {
                ready_tx.send(()).unwrap();
                let mut last = "0-0".to_owned();
                let mut got = 0;
                while got < n {
                    type Reply = Vec<(String, Vec<(String, Vec<Vec<u8>>)>)>;
                    let reply: Reply = redis::cmd("XREAD")
                        .arg("BLOCK")
                        .arg(0)
                        .arg("STREAMS")
                        .arg(&stream)
                        .arg(&last)
                        .query(&mut listener)
                        .unwrap();
                    let now = Instant::now();
                    for (_, entries) in reply {
                        for (id, _) in entries {
                            last = id;
                            got += 1;
                            tx.send(now).unwrap();
                        }
                    }
                }
            }
        });
        ready_rx.recv().unwrap();
        let mut con = client.get_connection().unwrap();
        let script = redis::Script::new(
            "redis.call('XADD', KEYS[1], '*', 'r', ARGV[1]) \
             if ARGV[2] == '1' then redis.call('PUBLISH', KEYS[1], ARGV[1]) end return 1",
        );
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let start = Instant::now();
            let _: i64 = script
                .key(&key)
                .arg(i)
                .arg(if pubsub { "1" } else { "0" })
                .invoke(&mut con)
                .unwrap();
            let told = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            out.push(told.saturating_duration_since(start));
        }
        reader.join().unwrap();
        out.sort_unstable();
        out
    }

    #[test]
    #[ignore = "a measurement: cargo test -p rewind-broker --lib storage::redis::tests -- --ignored --nocapture"]
    fn append_to_notification_latency_pubsub_vs_blocking_xread() {
        let n = 2000;
        for (name, pubsub) in [("Pub/Sub", true), ("XREAD BLOCK", false)] {
            measure(200, pubsub);
            let lat = measure(n, pubsub);
            assert_eq!(lat.len(), n);
            println!(
                "{name}: {n} appends, append → told p50 {} µs, p99 {} µs, max {} µs",
                quantile(&lat, 0.5),
                quantile(&lat, 0.99),
                quantile(&lat, 1.0)
            );
        }
    }

    /// Review F8: a namespace whose `meta` is gone while its stream and idempotency records
    /// survived (eviction under an `allkeys-*` policy, an operator deleting the key) is
    /// created again over clean keys: before, reads from 0 returned the old incarnation's
    /// entries and every `XADD` failed with an id below the stream's top.
    #[test]
    fn create_clears_what_an_earlier_incarnation_left_behind() {
        use super::{Appended, Retention, Storage};
        use rewind_protocol::{NewEvent, Payload};
        let store = test_store("f8-leftovers");
        let ev = |n: usize| NewEvent {
            event: "n".into(),
            key: None,
            data: Payload::Json(n.to_string()),
        };
        store.create("z", Retention::default()).unwrap();
        store.append("z", &[ev(0), ev(1), ev(2)], 1, None).unwrap();
        let client = redis::Client::open(test_server::url()).unwrap();
        let mut con = client.get_connection().unwrap();
        let _: () = redis::cmd("DEL")
            .arg(store.key("z", "meta"))
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("SREM")
            .arg(store.namespaces_key())
            .arg("z")
            .query(&mut con)
            .unwrap();
        let info = store.create("z", Retention::default()).unwrap();
        assert_eq!(info.next, 0);
        let old = store.read("z", 0, u64::MAX, 10, 1 << 20).unwrap();
        assert!(old.is_empty(), "the old incarnation's events: {old:?}");
        match store.append("z", &[ev(9)], 2, None) {
            Ok(Appended::New { first, last }) => assert_eq!((first, last), (0, 0)),
            other => panic!("{other:?}"),
        }
    }

    /// Tester finding 3: a read names the incarnation it is for. Once that one is
    /// deleted, re-created (offsets continue) or lost, the read answers `NotFound`, never
    /// the next incarnation's events or an empty page; the current epoch, or none, reads.
    #[test]
    fn a_read_at_an_epoch_never_answers_for_another_incarnation() {
        use super::{Retention, Storage, StoreError};
        use rewind_protocol::{NewEvent, Payload};
        let store = test_store(format!("i13-read-at-epoch-{}", std::process::id()));
        let ev = |n: usize| NewEvent {
            event: "n".into(),
            key: None,
            data: Payload::Json(n.to_string()),
        };
        let old = store.create("x", Retention::default()).unwrap().epoch;
        store.append("x", &[ev(0), ev(1)], 1, None).unwrap();
        let read = |epoch: &str| store.read_at_epoch("x", epoch, 0, u64::MAX, 10, 1 << 20);
        let got: Vec<u64> = read(&old).unwrap().iter().map(|e| e.offset).collect();
        assert_eq!(got, vec![0, 1]);
        assert!(store.delete("x").unwrap());
        assert!(
            matches!(read(&old), Err(StoreError::NotFound(_))),
            "deleted"
        );
        let new = store.create("x", Retention::default()).unwrap().epoch;
        store.append("x", &[ev(2)], 2, None).unwrap();
        match read(&old) {
            Err(StoreError::NotFound(_)) => {}
            other => panic!("the old epoch read {other:?}"),
        }
        for epoch in [new.as_str(), ""] {
            let got: Vec<u64> = read(epoch).unwrap().iter().map(|e| e.offset).collect();
            assert_eq!(got, vec![2], "{epoch:?}");
        }
        assert!(matches!(
            store.read_at_epoch("never", "", 0, u64::MAX, 10, 1 << 20),
            Err(StoreError::NotFound(_))
        ));
    }

    /// Tester finding 4 (i13-fix2): after Redis lost its data, namespaces deleted before
    /// the loss were reported lost again at every heal, forever (nothing re-creates a
    /// deleted namespace). A deleted one is not owed a re-creation, and a loss is told
    /// once: once the lost one is created again, Redis has lost nothing.
    #[test]
    fn a_loss_is_told_once_and_never_for_a_namespace_deleted_before_it() {
        use super::{RedisOptions, RedisStore, Retention, Storage};
        let prefix = format!("f4-once-{}", std::process::id());
        let store = RedisStore::open(RedisOptions {
            url: test_server::url(),
            prefix: prefix.clone(),
            wait_replicas: 0,
            wait_timeout_ms: 100,
            timeout_ms: 2000,
        })
        .unwrap();
        store.create("kept", Retention::default()).unwrap();
        store.create("dropped", Retention::default()).unwrap();
        assert!(store.delete("dropped").unwrap());
        assert!(!store.lost_data().unwrap());
        // What a FLUSHALL does to this prefix (the test server is shared by other tests).
        let client = redis::Client::open(test_server::url()).unwrap();
        let mut con = client.get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("DEL").arg(&keys).query(&mut con).unwrap();
        assert!(store.lost_data().unwrap());
        assert!(store.witness.lock().unwrap().names().is_empty());
        store.create("kept", Retention::default()).unwrap();
        for _ in 0..3 {
            assert!(!store.lost_data().unwrap(), "a loss told again");
        }
        assert_eq!(
            store.witness.lock().unwrap().names(),
            vec!["kept".to_owned()]
        );
    }

    /// Review F7: a 503 whose outcome is unknown (the script went out, no answer came)
    /// said the same as one where nothing was sent. Redis pauses writes (`CLIENT PAUSE`)
    /// past the store's reply timeout: the append is answered "outcome unknown"; a Redis
    /// that is not there gives "not sent".
    #[test]
    fn an_append_without_an_answer_says_its_outcome_is_unknown() {
        use super::{RedisOptions, RedisStore, Retention, Storage, StoreError};
        use rewind_protocol::{NewEvent, Payload};
        let opts = |url: String| RedisOptions {
            url,
            prefix: "f7-unknown".into(),
            wait_replicas: 0,
            wait_timeout_ms: 100,
            timeout_ms: 200,
        };
        let store = RedisStore::open(opts(test_server::url())).unwrap();
        store.create("u", Retention::default()).unwrap();
        let client = redis::Client::open(test_server::url()).unwrap();
        let mut con = client.get_connection().unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1000)
            .arg("WRITE")
            .query(&mut con)
            .unwrap();
        let ev = NewEvent {
            event: "n".into(),
            key: None,
            data: Payload::Json("1".into()),
        };
        match store.append("u", &[ev], 1, None) {
            Err(StoreError::Unavailable(why)) => assert!(why.contains("outcome unknown"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Whether it ran is what the store cannot know: here Redis drops the paused
        // command with the closed connection; over a slow network it would have run.
        let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut con).unwrap();
        // Nobody listens on port 1: the store opens (a node starts not ready) and fails.
        let nowhere = RedisStore::open(opts("redis://127.0.0.1:1".into())).unwrap();
        assert!(nowhere.is_failing());
        let ev = NewEvent {
            event: "n".into(),
            key: None,
            data: Payload::Json("1".into()),
        };
        match nowhere.append("u", &[ev], 1, None) {
            Err(StoreError::Unavailable(why)) => assert!(why.contains("not sent"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// Review F9: one RETAIN call looped over pages of 256 full records until the policy
    /// held, so a first pass over a large namespace blocked Redis past `lua-time-limit`.
    /// One call now removes at most one page of `RETAIN_PAGE` events; the store calls it
    /// until the policy holds.
    #[test]
    fn one_retain_call_removes_one_page_at_most() {
        use super::{Retention, Storage, RETAIN_PAGE};
        use rewind_protocol::{NewEvent, Payload};
        let store = test_store("f9-page");
        let events: Vec<NewEvent> = (0..200)
            .map(|i| NewEvent {
                event: "n".into(),
                key: None,
                data: Payload::Json(i.to_string()),
            })
            .collect();
        for ns in ["one", "all"] {
            store.create(ns, Retention::default()).unwrap();
            store.append(ns, &events, 1, None).unwrap();
        }
        let mut inv = store.retain.prepare_invoke();
        inv.key(store.key("one", "meta"))
            .key(store.key("one", "log"))
            .arg(190)
            .arg(u64::MAX)
            .arg(0)
            .arg(store.channel())
            .arg("one")
            .arg(RETAIN_PAGE);
        let cut: i64 = store.with_writer(|con| inv.invoke(con)).unwrap();
        assert_eq!(cut, RETAIN_PAGE as i64, "one call went past one page");
        let policy = Retention {
            max_events: Some(10),
            ..Retention::default()
        };
        assert_eq!(
            store.enforce_retention("all", &policy, 2).unwrap(),
            Some(190)
        );
        assert_eq!(store.info("all").unwrap().expect("all").earliest, 190);
    }

    /// Review F4: Redis came back with an older `next` under the same epoch (a failover
    /// to a replica without the tail, a crash under RDB or `appendfsync everysec`), and
    /// the offsets readers had already seen were handed out again under that epoch. The
    /// appending node is a witness: it had made offsets up to 10 visible, so the append
    /// rotates the epoch and writes nothing.
    #[test]
    fn an_append_that_meets_a_regressed_next_rotates_the_epoch() {
        use super::{Retention, Storage, StoreError};
        use rewind_protocol::{NewEvent, Payload};
        let store = test_store("f4-regressed");
        let events: Vec<NewEvent> = (0..10)
            .map(|i| NewEvent {
                event: "n".into(),
                key: None,
                data: Payload::Json(i.to_string()),
            })
            .collect();
        let info = store.create("r", Retention::default()).unwrap();
        store.append("r", &events, 1, None).unwrap();
        let client = redis::Client::open(test_server::url()).unwrap();
        let mut con = client.get_connection().unwrap();
        let _: () = redis::cmd("HSET")
            .arg(store.key("r", "meta"))
            .arg("next")
            .arg(5)
            .query(&mut con)
            .unwrap();
        // The stream as a replica that lacked the tail has it: offsets 0..=4.
        let _: () = redis::cmd("DEL")
            .arg(store.key("r", "log"))
            .query(&mut con)
            .unwrap();
        for o in 0..5 {
            let _: String = redis::cmd("XADD")
                .arg(store.key("r", "log"))
                .arg(format!("{o}-1"))
                .arg("r")
                .arg("x")
                .arg("t")
                .arg(1)
                .query(&mut con)
                .unwrap();
        }
        match store.append_at_epoch("r", &info.epoch, 10, &events[..1], 2, None) {
            Err(StoreError::NotFound(_)) => {}
            other => panic!("offsets handed out again under the same epoch: {other:?}"),
        }
        let now = store.info("r").unwrap().expect("r");
        assert_ne!(now.epoch, info.epoch);
        assert_eq!(now.next, 5);
    }

    /// Review F6: an append on the writer's connection, then that connection lost (here
    /// killed by Redis), then `WAIT` on a new connection, which wrote nothing, so it
    /// returned at once with every replica: the group was claimed replicated. A real
    /// replica is attached, so `WAIT` does answer 1 on a connection that wrote nothing.
    #[test]
    fn a_wait_on_a_new_connection_does_not_vouch_for_the_old_ones_writes() {
        use super::{RedisOptions, RedisStore, Retention, Storage};
        use rewind_protocol::{NewEvent, Payload};
        let replica = redis::Client::open(test_server::replica_url()).unwrap();
        let mut rcon = replica.get_connection().unwrap();
        let store = RedisStore::open(RedisOptions {
            url: test_server::url(),
            prefix: "f6-generation".into(),
            wait_replicas: 1,
            wait_timeout_ms: 5000,
            timeout_ms: 5000,
        })
        .unwrap();
        let ev = NewEvent {
            event: "n".into(),
            key: None,
            data: Payload::Json("1".into()),
        };
        store.create("g", Retention::default()).unwrap();
        // The replica is in sync: a WAIT reaches it.
        loop {
            store
                .append("g", std::slice::from_ref(&ev), 1, None)
                .unwrap();
            store.sync().unwrap();
            if store.last_sync_replicated() {
                break;
            }
            let _: () = redis::cmd("PING").query(&mut rcon).unwrap();
        }
        store
            .append("g", std::slice::from_ref(&ev), 1, None)
            .unwrap();
        let id: i64 = store
            .with_writer(|con| redis::cmd("CLIENT").arg("ID").query(con))
            .unwrap();
        let client = redis::Client::open(test_server::url()).unwrap();
        let mut admin = client.get_connection().unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query(&mut admin)
            .unwrap();
        assert_eq!(killed, 1);
        // The next call finds the connection dead, and the one after opens a new one.
        assert!(store
            .append("g", std::slice::from_ref(&ev), 1, None)
            .is_err());
        store.sync().unwrap();
        assert!(
            !store.last_sync_replicated(),
            "a WAIT on a new connection vouched for the old one's writes"
        );
        store
            .append("g", std::slice::from_ref(&ev), 1, None)
            .unwrap();
        store.sync().unwrap();
        assert!(store.last_sync_replicated());
    }

    /// Appends sent together (one pipeline) answer as they would one by one: in order,
    /// each all or nothing, an idempotency key recorded by an earlier append of the same
    /// pipeline answered as a duplicate, one to a stale incarnation refused without
    /// touching the others.
    #[test]
    fn appends_sent_together_answer_as_one_by_one() {
        use super::{AppendRequest, Appended, IdempotencyKey};
        use super::{Retention, Storage, StoreError};
        use rewind_protocol::idempotency::RequestDigest;
        use rewind_protocol::{NewEvent, Payload};
        let store = test_store("pipelined");
        let ev = |n: usize| NewEvent {
            event: "n".into(),
            key: None,
            data: Payload::Json(n.to_string()),
        };
        let x = store.create("x", Retention::default()).unwrap();
        let y = store.create("y", Retention::default()).unwrap();
        let two = [ev(0), ev(1)];
        let one = [ev(2)];
        let key = IdempotencyKey {
            key: "k",
            request: RequestDigest([1; 32]),
            request_v1: RequestDigest([2; 32]),
            batch: false,
            not_before_ms: 0,
        };
        let req = |ns, epoch, events, idempotency| AppendRequest {
            ns,
            epoch,
            min_next: 0,
            events,
            ts_ms: 1,
            idempotency,
        };
        let answers = store.append_all(&[
            req("x", &x.epoch, &two[..], None),
            req("y", &y.epoch, &one[..], None),
            req("x", "stale", &one[..], None),
            req("x", &x.epoch, &one[..], Some(key)),
            req("x", &x.epoch, &one[..], Some(key)),
            req("y", &y.epoch, &two[..], None),
        ]);
        let got: Vec<String> = answers.iter().map(|a| format!("{a:?}")).collect();
        assert!(
            matches!(answers[0], Ok(Appended::New { first: 0, last: 1 })),
            "{got:?}"
        );
        assert!(
            matches!(answers[1], Ok(Appended::New { first: 0, last: 0 })),
            "{got:?}"
        );
        assert!(
            matches!(answers[2], Err(StoreError::NotFound(_))),
            "{got:?}"
        );
        assert!(
            matches!(answers[3], Ok(Appended::New { first: 2, last: 2 })),
            "{got:?}"
        );
        assert!(
            matches!(
                answers[4],
                Ok(Appended::Duplicate {
                    first: 2,
                    last: 2,
                    ..
                })
            ),
            "{got:?}"
        );
        assert!(
            matches!(answers[5], Ok(Appended::New { first: 1, last: 2 })),
            "{got:?}"
        );
        let xs = store.read("x", 0, u64::MAX, 10, 1 << 20).unwrap();
        assert_eq!(xs.iter().map(|e| e.offset).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(store.info("x").unwrap().expect("x").epoch, x.epoch);
    }

    /// Tester finding (i13, a hung Redis): each command waited out its own timeout, one
    /// behind another. A "Redis" that accepts connections and never answers (a listener
    /// nobody reads, as a `SIGSTOP`ped server): the open's probe times out and opens the
    /// circuit; from then on every call, the readiness probe too, is refused "not sent" by
    /// the circuit, without a connection of its own.
    #[test]
    fn a_redis_that_never_answers_opens_the_circuit() {
        use super::{RedisOptions, RedisStore, Storage, StoreError};
        use rewind_protocol::{NewEvent, Payload};
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = hung.local_addr().unwrap().port();
        let store = RedisStore::open(RedisOptions {
            url: format!("redis://127.0.0.1:{port}"),
            prefix: "i13-circuit".into(),
            wait_replicas: 0,
            wait_timeout_ms: 100,
            timeout_ms: 200,
        })
        .unwrap();
        assert!(store.is_failing());
        let ev = NewEvent {
            event: "n".into(),
            key: None,
            data: Payload::Json("1".into()),
        };
        let circuit = |r: Result<(), StoreError>| match r {
            Err(StoreError::Unavailable(why)) => {
                assert!(why.starts_with("not sent: Redis did not answer"), "{why}")
            }
            other => panic!("{other:?}"),
        };
        circuit(store.append("u", &[ev], 1, None).map(drop));
        circuit(store.info("u").map(drop));
        circuit(store.probe());
        drop(hung);
    }

    /// Tester finding 13B: a node that found its incarnation replaced took it as lost
    /// data (`closed` reason `epoch`) when it had been deleted. Redis keeps the epochs of
    /// the last [`super::DELETED_EPOCHS`] deleted incarnations; a live one and one of
    /// another namespace are not among them.
    #[test]
    fn the_epochs_of_deleted_incarnations_are_kept_and_no_others() {
        use super::{Retention, Storage, DELETED_EPOCHS};
        let store = test_store("i13-deleted-epochs");
        let first = store.create("x", Retention::default()).unwrap();
        assert!(!store.was_deleted("x", &first.epoch).unwrap());
        assert!(store.delete("x").unwrap());
        let second = store.create("x", Retention::default()).unwrap();
        assert!(store.was_deleted("x", &first.epoch).unwrap());
        assert!(!store.was_deleted("x", &second.epoch).unwrap());
        assert!(!store.was_deleted("y", &first.epoch).unwrap());
        // An auto-create taken back is a delete too.
        assert!(store.undo_create("x").unwrap());
        assert!(store.was_deleted("x", &second.epoch).unwrap());
        for _ in 0..DELETED_EPOCHS - 1 {
            store.create("x", Retention::default()).unwrap();
            assert!(store.delete("x").unwrap());
        }
        assert!(store.was_deleted("x", &second.epoch).unwrap());
        assert!(
            !store.was_deleted("x", &first.epoch).unwrap(),
            "more than kept"
        );
    }

    /// Tester finding 13A: a node with other default retention than the running ones
    /// trimmed the shared log for all of them. The first node's defaults are recorded;
    /// the same ones (however written) are taken, others refused with both named.
    #[test]
    fn the_first_brokers_default_retention_is_the_one_every_broker_must_have() {
        use super::{Retention, Storage, StoreError};
        use crate::storage::NO_LIMIT;
        let store = test_store("i13-defaults");
        let none = Retention::default();
        let week = Retention {
            max_age_secs: Some(7 * 24 * 3600),
            ..none
        };
        store.claim_retention_defaults(&none).unwrap();
        store
            .claim_retention_defaults(&Retention {
                max_events: Some(NO_LIMIT),
                ..none
            })
            .unwrap();
        match store.claim_retention_defaults(&week) {
            Err(StoreError::Redis(why)) => {
                for said in [
                    "(max_events none, max_bytes none, max_age_secs 604800)",
                    "(max_events none, max_bytes none, max_age_secs none)",
                    "redis-cli DEL i13-defaults:retention",
                ] {
                    assert!(why.contains(said), "no {said:?} in {why}");
                }
            }
            other => panic!("other defaults taken: {other:?}"),
        }
        // Another prefix is another cluster.
        test_store("i13-defaults-other")
            .claim_retention_defaults(&week)
            .unwrap();
        let mut con = store.connect(None).unwrap();
        redis::cmd("SET")
            .arg("i13-defaults:retention")
            .arg("7 days")
            .query::<()>(&mut con)
            .unwrap();
        match store.claim_retention_defaults(&none) {
            Err(StoreError::Corrupt(why)) => assert!(why.contains("\"7 days\""), "{why}"),
            other => panic!("an unreadable record taken: {other:?}"),
        }
    }
}
