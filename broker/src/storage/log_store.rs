//! The embedded store: each namespace incarnation's events in segment files
//! ([`super::segment`]), every change first in the write-ahead log ([`super::wal`]), the
//! metadata of every namespace in the `manifest` ([`super::manifest`]), and idempotency
//! records in sled ([`super::idem`]). Layout and formats: `docs/storage.md`.
//!
//! ### Invariants
//!
//! - An append writes its write-ahead log frame first, then its segment frames; a failure
//!   of either takes both back, so a refused publish leaves nothing.
//! - Everything changed since the last successful [`Storage::sync`] is remembered (the
//!   undo list); a failed sync takes it all back, so the store holds only what can be
//!   acknowledged and works again as soon as the disk does.
//! - Segment files, sled and the manifest are written only by checkpoints. A checkpoint
//!   that fails leaves the previous manifest and the write-ahead log segments it needs,
//!   so it never stops the next start.
//! - On open, each log is cut back to the manifest's `next` before the write-ahead log is
//!   replayed: whatever the log held beyond it was either in the wal (and is written again)
//!   or never acknowledged. So a batch is all there, with its idempotency key, or absent.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rewind_protocol::{Event, NewEvent};

use super::idem::{self, IdemRecord, IdemStore};
use super::manifest::{self, Manifest, NsEntry};
use super::segment::{SegmentConfig, SegmentLog};
use super::wal::{self, Wal, WalOp};
use super::Retention;
use super::{
    new_epoch, now_ms, record, sync_dir, Appended, IdempotencyKey, NsInfo, Storage, StoreError,
};

/// Where the store keeps what, under the data directory.
pub(crate) struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn wal(&self) -> PathBuf {
        self.dir.join("wal")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("log")
    }
    pub fn log(&self, ns: &str, epoch: &str) -> PathBuf {
        self.dir.join("log").join(ns).join(epoch)
    }
    pub fn trash(&self) -> PathBuf {
        self.dir.join("trash")
    }
    pub fn idem(&self) -> PathBuf {
        self.dir.join("idem")
    }
}

/// One live namespace incarnation.
#[derive(Clone)]
pub(crate) struct Live {
    pub epoch: String,
    pub created_ms: u64,
    pub retention: Retention,
    pub floor: u64,
    pub earliest: u64,
    pub next: u64,
    pub bytes: u64,
    /// The timestamp of the event at `earliest`, once known: retention by age then reads
    /// nothing while that event is young enough (10,000 idle namespaces would otherwise
    /// cost a read each per retention pass).
    pub first_ts: Option<u64>,
    pub log: Arc<SegmentLog>,
}

impl Live {
    fn info(&self, name: &str) -> NsInfo {
        NsInfo {
            name: name.to_owned(),
            epoch: self.epoch.clone(),
            retention: self.retention,
            earliest: self.earliest,
            next: self.next,
            bytes: self.bytes,
        }
    }

    pub(crate) fn entry(&self, name: &str) -> NsEntry {
        NsEntry {
            name: name.to_owned(),
            epoch: self.epoch.clone(),
            created_ms: self.created_ms,
            retention: self.retention,
            floor: self.floor,
            earliest: self.earliest,
            next: self.next,
            deleted: false,
        }
    }
}

/// What a failed sync takes back, newest first.
enum Undo {
    Append {
        ns: String,
        epoch: String,
        next: u64,
        bytes: u64,
        idem: Option<(Vec<u8>, Option<IdemRecord>)>,
    },
    Create {
        ns: String,
        tombstone: Option<NsEntry>,
        /// Where the write-ahead log ended before the create's frame.
        mark: wal::Mark,
    },
    SetRetention {
        ns: String,
        retention: Retention,
    },
    Retain {
        ns: String,
        epoch: String,
        earliest: u64,
        bytes: u64,
    },
    Delete {
        ns: String,
        live: Box<Live>,
        tombstone: Option<NsEntry>,
    },
}

/// State only mutations touch (under one lock, which also orders offsets).
pub(crate) struct Writing {
    pub wal: Wal,
    /// Where the write-ahead log was at the last successful sync.
    pub synced: wal::Mark,
    undo: Vec<Undo>,
    /// A sync failed where its changes could not be taken back at once (a checkpoint's
    /// rotation): the next sync fails and takes them back.
    poisoned: bool,
    /// Deleted namespaces: where a re-created one continues.
    pub tombstones: HashMap<String, NsEntry>,
    /// Idempotency records not yet in sled.
    pub pending: HashMap<Vec<u8>, IdemRecord>,
    /// Keys to remove from sled at the next checkpoint.
    pub removals: HashSet<Vec<u8>>,
    /// Logs written since the last checkpoint.
    pub written: HashMap<PathBuf, Arc<SegmentLog>>,
    /// Directories of deleted incarnations, moved to `trash/` after the next checkpoint.
    pub dead: Vec<PathBuf>,
    /// Something the manifest holds changed since it was written.
    pub changed: bool,
    /// Sequence number of namespace changes (kept in the wal's frames).
    pub lsn: u64,
}

/// The store.
pub struct LogStore {
    pub(crate) paths: Paths,
    pub(crate) seg: SegmentConfig,
    pub(crate) writing: Mutex<Writing>,
    pub(crate) live: RwLock<HashMap<String, Live>>,
    pub(crate) idem: IdemStore,
    pub(crate) checkpoint_lock: Mutex<()>,
    /// The generation of the manifest on disk.
    pub(crate) generation: AtomicU64,
    /// Relaxed mode: namespaces marked dirty, mirrored in the `dirty` file (which may hold
    /// more after a failed write: never fewer).
    pub(crate) dirty: Mutex<HashSet<String>>,
    /// Writes of the `dirty` file since open (each: a file created, `fsync`, `rename`,
    /// `fsync` of the directory).
    dirty_writes: AtomicU64,
    /// A write, sync or checkpoint failed, and no checkpoint has succeeded since.
    failing: AtomicBool,
    /// Relaxed durability: a failed sync keeps what was written (it was acknowledged).
    pub(crate) keep_unsynced: bool,
    /// Tests: the next sync fails with `ENOSPC` (what `fdatasync` on a full disk says).
    #[cfg(test)]
    pub(crate) fail_next_sync: AtomicBool,
    /// Storage failures since start.
    failures: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether an error is the disk's or the files' (and so makes the store "failing"), not the
/// request's.
fn is_storage_failure(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Io(_)
            | StoreError::IoAt { .. }
            | StoreError::Sled(_)
            | StoreError::Damaged { .. }
            | StoreError::Corrupt(_)
    )
}

impl LogStore {
    pub(crate) fn new(
        paths: Paths,
        seg: SegmentConfig,
        writing: Writing,
        idem: IdemStore,
        generation: u64,
    ) -> LogStore {
        LogStore {
            paths,
            seg,
            writing: Mutex::new(writing),
            live: RwLock::new(HashMap::new()),
            idem,
            checkpoint_lock: Mutex::new(()),
            generation: AtomicU64::new(generation),
            dirty: Mutex::new(HashSet::new()),
            dirty_writes: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            keep_unsynced: false,
            failures: AtomicU64::new(0),
            #[cfg(test)]
            fail_next_sync: AtomicBool::new(false),
        }
    }

    pub(crate) fn writing_state(wal: Wal, lsn: u64) -> Writing {
        let synced = wal.mark();
        Writing {
            wal,
            synced,
            undo: Vec::new(),
            poisoned: false,
            tombstones: HashMap::new(),
            pending: HashMap::new(),
            removals: HashSet::new(),
            written: HashMap::new(),
            dead: Vec::new(),
            changed: true,
            lsn,
        }
    }

    /// True from a failed write, sync or checkpoint until the next successful checkpoint
    /// (`/readyz` says `storage_failing`).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Storage failures since the store was opened.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn take_injected_sync_failure(&self) -> bool {
        self.fail_next_sync.swap(false, Ordering::Relaxed)
    }

    #[cfg(not(test))]
    fn take_injected_sync_failure(&self) -> bool {
        false
    }

    /// Notes how a write, sync or checkpoint went. Only a checkpoint clears `failing` (see
    /// [`LogStore::note_checkpoint`]): a small write or sync can succeed in a partly filled
    /// page while the disk is still full.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Ok(_) => {}
            Err(e) if is_storage_failure(e) => {
                self.failing.store(true, Ordering::Relaxed);
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        result
    }

    /// Notes how a checkpoint went: one that succeeded wrote and synced new files (while
    /// failing, a checkpoint always writes the manifest), so the disk takes data again.
    fn note_checkpoint(&self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        if result.is_ok() {
            self.failing.store(false, Ordering::Relaxed);
        }
        self.note(result)
    }

    pub(crate) fn read_live(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Live>> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_live(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Live>> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one frame to the write-ahead log (cut back on error).
    fn log(w: &mut Writing, op: &WalOp) -> Result<(), StoreError> {
        let mut frame = Vec::new();
        wal::encode(&mut frame, op);
        w.wal.write(&frame)
    }

    /// The idempotency record under `key`: pending ones first, then sled's.
    fn idem_record(&self, w: &Writing, key: &[u8]) -> Result<Option<IdemRecord>, StoreError> {
        if let Some(rec) = w.pending.get(key) {
            return Ok(Some(*rec));
        }
        if w.removals.contains(key) {
            return Ok(None);
        }
        self.idem.get(key)
    }

    /// Takes back everything since the last successful sync.
    fn roll_back(&self, w: &mut Writing) {
        if let Err(e) = w.wal.cut_back(w.synced) {
            tracing::error!(error = %e, "could not cut the write-ahead log back after a failed sync");
        }
        w.poisoned = false;
        while let Some(undo) = w.undo.pop() {
            match undo {
                Undo::Append {
                    ns,
                    epoch,
                    next,
                    bytes,
                    idem,
                } => {
                    let mut live = self.write_live();
                    if let Some(l) = live.get_mut(&ns).filter(|l| l.epoch == epoch) {
                        if let Err(e) = l.log.truncate(next) {
                            tracing::error!(ns, error = %e, "could not cut a log back after a failed sync");
                        }
                        l.next = next;
                        l.bytes = bytes;
                    }
                    if let Some((key, before)) = idem {
                        match before {
                            Some(rec) => w.pending.insert(key, rec),
                            None => w.pending.remove(&key),
                        };
                    }
                }
                Undo::Create { ns, tombstone, .. } => {
                    if let Some(l) = self.write_live().remove(&ns) {
                        let dir = self.paths.log(&ns, &l.epoch);
                        w.written.remove(&dir);
                        if let Err(e) = self.remove_created(&ns, &l.epoch) {
                            tracing::error!(dir = %dir.display(), error = %e, "could not remove the directory of a create taken back");
                        }
                    }
                    match tombstone {
                        Some(t) => w.tombstones.insert(ns, t),
                        None => w.tombstones.remove(&ns),
                    };
                }
                Undo::Retain {
                    ns,
                    epoch,
                    earliest,
                    bytes,
                } => {
                    if let Some(l) = self.write_live().get_mut(&ns).filter(|l| l.epoch == epoch) {
                        l.earliest = earliest;
                        l.bytes = bytes;
                        l.first_ts = None;
                    }
                }
                Undo::SetRetention { ns, retention } => {
                    if let Some(l) = self.write_live().get_mut(&ns) {
                        l.retention = retention;
                    }
                }
                Undo::Delete {
                    ns,
                    live,
                    tombstone,
                } => {
                    let dir = self.paths.log(&ns, &live.epoch);
                    w.dead.retain(|d| *d != dir);
                    self.write_live().insert(ns.clone(), *live);
                    match tombstone {
                        Some(t) => w.tombstones.insert(ns, t),
                        None => w.tombstones.remove(&ns),
                    };
                }
            }
        }
    }

    /// Makes a new incarnation (directory and state) of `ns`; returns it without
    /// logging it.
    pub(crate) fn incarnate(
        &self,
        ns: &str,
        epoch: String,
        first: u64,
        retention: Retention,
    ) -> Result<Live, StoreError> {
        let log = SegmentLog::create(&self.paths.log(ns, &epoch), ns, &epoch, first, self.seg)?;
        Ok(Live {
            epoch,
            created_ms: now_ms(),
            retention,
            floor: first,
            earliest: first,
            next: first,
            bytes: 0,
            first_ts: None,
            log: Arc::new(log),
        })
    }

    /// Removes the directory of an incarnation whose create was refused or taken back,
    /// and `log/<ns>/` with it when nothing else is in it (a refused request creates
    /// nothing). A missing directory is no error.
    fn remove_created(&self, ns: &str, epoch: &str) -> Result<(), StoreError> {
        let dir = self.paths.log(ns, epoch);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io_at(&dir, e)),
        }
        if let Some(parent) = dir.parent() {
            // Fails while another incarnation's directory is in it: then it stays.
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }

    fn create_locked(
        &self,
        w: &mut Writing,
        ns: &str,
        retention: Retention,
    ) -> Result<NsInfo, StoreError> {
        if self.read_live().contains_key(ns) {
            return Err(StoreError::Exists(ns.to_owned()));
        }
        let tombstone = w.tombstones.get(ns).cloned();
        let floor = tombstone.as_ref().map_or(0, |t| t.next.max(t.floor));
        let epoch = new_epoch()?;
        let live = match self.incarnate(ns, epoch.clone(), floor, retention) {
            Ok(live) => live,
            Err(e) => {
                let _ = self.remove_created(ns, &epoch);
                return Err(e);
            }
        };
        let mark = w.wal.mark();
        w.lsn += 1;
        let op = WalOp::Create {
            lsn: w.lsn,
            ns: ns.to_owned(),
            epoch: epoch.clone(),
            floor,
            retention,
        };
        if let Err(e) = Self::log(w, &op) {
            let _ = self.remove_created(ns, &epoch);
            return Err(e);
        }
        let info = live.info(ns);
        w.written
            .insert(self.paths.log(ns, &epoch), Arc::clone(&live.log));
        self.write_live().insert(ns.to_owned(), live);
        w.tombstones.remove(ns);
        w.undo.push(Undo::Create {
            ns: ns.to_owned(),
            tombstone,
            mark,
        });
        w.changed = true;
        Ok(info)
    }

    fn append_locked(
        &self,
        w: &mut Writing,
        ns: &str,
        events: &[NewEvent],
        ts_ms: u64,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Appended, StoreError> {
        let l = self
            .read_live()
            .get(ns)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?;
        let idem_key = idempotency.map(|i| idem::key(ns, &l.epoch, i.key));
        if let (Some(i), Some(key)) = (&idempotency, &idem_key) {
            if let Some(rec) = self.idem_record(w, key)? {
                if rec.written_ms >= i.not_before_ms {
                    // A record from before digests were kept cannot tell; it counts as a
                    // retry, as it did when it was written.
                    return match rec.request {
                        Some((digest, _)) if digest != i.request.0 && digest != i.request_v1.0 => {
                            Err(StoreError::IdempotencyConflict {
                                first: rec.first,
                                last: rec.last,
                            })
                        }
                        request => Ok(Appended::Duplicate {
                            first: rec.first,
                            last: rec.last,
                            batch: request.map(|(_, b)| b),
                        }),
                    };
                }
            }
        }
        let records: Vec<Vec<u8>> = events.iter().map(|ev| record::encode(ev, ts_ms)).collect();
        let first = l.next;
        let last = first + records.len() as u64 - 1;
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        let op = WalOp::Append {
            ns: ns.to_owned(),
            epoch: l.epoch.clone(),
            first,
            idempotency_key: idempotency.map(|i| i.key.to_owned()),
            request: idempotency.map(|i| (i.request.0, i.batch)),
            ts_ms,
            records,
        };
        let mark = w.wal.mark();
        Self::log(w, &op)?;
        let WalOp::Append { records, .. } = &op else {
            unreachable!("built above as an append")
        };
        if let Err(e) = l.log.append(records) {
            if let Err(cut) = w.wal.cut_back(mark) {
                tracing::error!(error = %cut, "could not take back a write-ahead log frame");
                w.poisoned = true;
            }
            return Err(e);
        }
        let idem = match (idempotency, idem_key) {
            (Some(i), Some(key)) => {
                let rec = IdemRecord {
                    first,
                    last,
                    written_ms: ts_ms,
                    request: Some((i.request.0, i.batch)),
                };
                w.removals.remove(&key);
                let before = w.pending.insert(key.clone(), rec);
                Some((key, before))
            }
            _ => None,
        };
        if let Some(live) = self.write_live().get_mut(ns) {
            if live.earliest == live.next {
                live.first_ts = Some(ts_ms);
            }
            live.next = last + 1;
            live.bytes += bytes;
        }
        w.written
            .insert(self.paths.log(ns, &l.epoch), Arc::clone(&l.log));
        w.undo.push(Undo::Append {
            ns: ns.to_owned(),
            epoch: l.epoch,
            next: first,
            bytes: l.bytes,
            idem,
        });
        w.changed = true;
        Ok(Appended::New { first, last })
    }

    /// Whether `policy` keeps every event of a non-empty log, told from the count, the
    /// bytes and the first event's timestamp alone (read once, then kept in memory).
    fn young_enough(
        &self,
        ns: &str,
        l: &Live,
        policy: &Retention,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let count_ok = policy
            .max_events
            .is_none_or(|max| l.next.saturating_sub(max) <= l.earliest);
        let bytes_ok = policy.max_bytes.is_none_or(|max| l.bytes <= max);
        if !(count_ok && bytes_ok) {
            return Ok(false);
        }
        let Some(secs) = policy.max_age_secs else {
            return Ok(true);
        };
        let first_ts = match l.first_ts {
            Some(ts) => ts,
            None => {
                let first = l.log.read(l.earliest, l.next, 1, 0)?;
                let Some((_, rec)) = first.first() else {
                    return Ok(true);
                };
                let ts = record::ts(rec)?;
                if let Some(live) = self.write_live().get_mut(ns).filter(|x| x.epoch == l.epoch) {
                    live.first_ts = Some(ts);
                }
                ts
            }
        };
        Ok(first_ts >= now_ms.saturating_sub(secs.saturating_mul(1000)))
    }

    /// Retention: the first offset to keep, and the bytes it removes.
    fn retention_cut(l: &Live, policy: &Retention, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let count_cut = policy
            .max_events
            .map_or(0, |max| l.next.saturating_sub(max));
        let age_cut_ms = policy
            .max_age_secs
            .map_or(0, |secs| now_ms.saturating_sub(secs.saturating_mul(1000)));
        let max_bytes = policy.max_bytes.unwrap_or(u64::MAX);
        let mut remaining = l.bytes;
        let mut cut = l.earliest;
        while cut < l.next {
            let chunk = l.log.read(cut, l.next, 1024, 4 << 20)?;
            if chunk.is_empty() {
                break;
            }
            for (offset, rec) in &chunk {
                let drop =
                    *offset < count_cut || remaining > max_bytes || record::ts(rec)? < age_cut_ms;
                if !drop {
                    return Ok((cut, l.bytes - remaining));
                }
                remaining -= rec.len() as u64;
                cut = offset + 1;
            }
        }
        Ok((cut, l.bytes - remaining))
    }

    /// Takes a checkpoint (see the module's invariants).
    fn checkpoint_inner(&self) -> Result<(), StoreError> {
        let _one = lock(&self.checkpoint_lock);
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let (cut, entries, pending, removals, written, dead) = {
            let mut w = lock(&self.writing);
            // While failing, a checkpoint writes the manifest anyway: only new files
            // written and synced tell that the disk takes data again.
            let nothing = !w.changed
                && !self.is_failing()
                && w.pending.is_empty()
                && w.removals.is_empty()
                && w.written.is_empty()
                && w.dead.is_empty();
            if nothing {
                return Ok(());
            }
            // The writer may have applied appends it has not synced yet: taking them back
            // here would let its next sync acknowledge what is gone. So a failure here
            // poisons the store and the writer's next sync takes everything back.
            if w.poisoned {
                return Err(StoreError::Io(std::io::Error::other(
                    "a write-ahead log write could not be taken back; the next sync takes back everything since the last one",
                )));
            }
            let synced = if self.take_injected_sync_failure() {
                Err(StoreError::Io(std::io::Error::from_raw_os_error(28)))
            } else {
                w.wal.sync()
            };
            if let Err(e) = synced {
                w.poisoned = !self.keep_unsynced;
                return Err(e);
            }
            w.undo.clear();
            let cut = w.wal.rotate();
            w.synced = w.wal.mark();
            let cut = cut?;
            let mut entries: Vec<NsEntry> = self
                .read_live()
                .iter()
                .map(|(name, l)| l.entry(name))
                .collect();
            entries.extend(w.tombstones.values().cloned());
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let pending: Vec<(Vec<u8>, IdemRecord)> =
                w.pending.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let removals: Vec<Vec<u8>> = w.removals.iter().cloned().collect();
            let written = std::mem::take(&mut w.written);
            let dead = std::mem::take(&mut w.dead);
            w.changed = false;
            (cut, entries, pending, removals, written, dead)
        };
        let result = (|| {
            for log in written.values() {
                log.sync()?;
            }
            let records = self.idem.apply(&pending, &removals, generation)?;
            manifest::write(
                &self.paths.dir,
                &Manifest {
                    generation,
                    wal_from: cut,
                    idempotency_records: records,
                    namespaces: entries.clone(),
                },
            )?;
            Ok::<_, StoreError>(())
        })();
        if let Err(e) = result {
            let mut w = lock(&self.writing);
            for (dir, log) in written {
                w.written.entry(dir).or_insert(log);
            }
            w.dead.extend(dead);
            w.changed = true;
            return Err(e);
        }
        self.generation.store(generation, Ordering::Relaxed);
        {
            let mut w = lock(&self.writing);
            for (k, v) in &pending {
                if w.pending.get(k) == Some(v) {
                    w.pending.remove(k);
                }
            }
            for k in &removals {
                w.removals.remove(k);
            }
        }
        Wal::remove_before(&self.paths.wal(), cut)?;
        // Whole segments below each log's earliest go now that the manifest says so.
        for e in entries.iter().filter(|e| !e.deleted) {
            let log = self
                .read_live()
                .get(&e.name)
                .filter(|l| l.epoch == e.epoch)
                .map(|l| Arc::clone(&l.log));
            if let Some(log) = log {
                if log.first() < e.earliest {
                    log.remove_before(e.earliest)?;
                }
            }
        }
        self.trash(dead)
    }

    /// Moves directories of deleted incarnations into `trash/` and empties it in the
    /// background.
    pub(crate) fn trash(&self, dead: Vec<PathBuf>) -> Result<(), StoreError> {
        if dead.is_empty() {
            return Ok(());
        }
        let trash = self.paths.trash();
        std::fs::create_dir_all(&trash)?;
        for dir in dead {
            if !dir.exists() {
                continue;
            }
            let mut bytes = [0u8; 8];
            getrandom::getrandom(&mut bytes)
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
            let to = trash.join(format!("{:016x}", u64::from_le_bytes(bytes)));
            std::fs::rename(&dir, &to)?;
            if let Some(parent) = dir.parent() {
                // The namespace's directory goes with its last incarnation.
                let _ = std::fs::remove_dir(parent);
            }
        }
        sync_dir(&self.paths.logs())?;
        std::thread::Builder::new()
            .name("rewind-trash".into())
            .spawn(move || empty_dir(&trash))?;
        Ok(())
    }

    /// Writes of the `dirty` file since open.
    #[cfg(test)]
    pub(crate) fn dirty_writes(&self) -> u64 {
        self.dirty_writes.load(Ordering::Relaxed)
    }

    /// Writes the relaxed-mode dirty set to its file, atomically and durably.
    fn write_dirty(&self, names: &HashSet<String>) -> Result<(), StoreError> {
        use std::io::Write;
        self.dirty_writes.fetch_add(1, Ordering::Relaxed);
        let tmp = self.paths.dir.join("dirty.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        for name in sorted {
            writeln!(f, "{name}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, self.paths.dir.join("dirty"))?;
        Ok(sync_dir(&self.paths.dir)?)
    }
}

/// Removes everything in `dir` (best effort: what is left goes at the next open).
pub(crate) fn empty_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "could not empty the trash");
            }
        }
    }
}

impl Storage for LogStore {
    fn namespaces(&self) -> Result<Vec<NsInfo>, StoreError> {
        let mut all: Vec<NsInfo> = self
            .read_live()
            .iter()
            .map(|(name, l)| l.info(name))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn info(&self, ns: &str) -> Result<Option<NsInfo>, StoreError> {
        Ok(self.read_live().get(ns).map(|l| l.info(ns)))
    }

    fn create(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
        let mut w = lock(&self.writing);
        let result = self.create_locked(&mut w, ns, retention);
        self.note(result)
    }

    fn undo_create(&self, ns: &str) -> Result<bool, StoreError> {
        let mut w = lock(&self.writing);
        let Some(Undo::Create { ns: created, .. }) = w.undo.last() else {
            return Ok(false);
        };
        if created != ns || self.read_live().get(ns).is_none_or(|l| l.next != l.floor) {
            return Ok(false);
        }
        let Some(Undo::Create {
            tombstone, mark, ..
        }) = w.undo.pop()
        else {
            return Ok(false);
        };
        if let Err(e) = w.wal.cut_back(mark) {
            // The frame stays: the next sync must not make it durable alone.
            tracing::error!(error = %e, "could not take back a create's write-ahead log frame");
            w.poisoned = true;
        }
        if let Some(l) = self.write_live().remove(ns) {
            let dir = self.paths.log(ns, &l.epoch);
            w.written.remove(&dir);
            if let Err(e) = self.remove_created(ns, &l.epoch) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the directory of a create taken back");
            }
        }
        match tombstone {
            Some(t) => w.tombstones.insert(ns.to_owned(), t),
            None => w.tombstones.remove(ns),
        };
        Ok(true)
    }

    fn set_retention(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
        let mut w = lock(&self.writing);
        let Some(l) = self.read_live().get(ns).cloned() else {
            return Err(StoreError::NotFound(ns.to_owned()));
        };
        w.lsn += 1;
        let op = WalOp::SetRetention {
            lsn: w.lsn,
            ns: ns.to_owned(),
            epoch: l.epoch.clone(),
            retention,
        };
        self.note(Self::log(&mut w, &op))?;
        let mut live = self.write_live();
        let Some(entry) = live.get_mut(ns) else {
            return Err(StoreError::NotFound(ns.to_owned()));
        };
        entry.retention = retention;
        w.undo.push(Undo::SetRetention {
            ns: ns.to_owned(),
            retention: l.retention,
        });
        w.changed = true;
        Ok(entry.info(ns))
    }

    fn delete(&self, ns: &str) -> Result<bool, StoreError> {
        let mut w = lock(&self.writing);
        let Some(l) = self.read_live().get(ns).cloned() else {
            return Ok(false);
        };
        w.lsn += 1;
        let op = WalOp::Delete {
            lsn: w.lsn,
            ns: ns.to_owned(),
            epoch: l.epoch.clone(),
        };
        self.note(Self::log(&mut w, &op))?;
        self.write_live().remove(ns);
        let mut tomb = l.entry(ns);
        tomb.deleted = true;
        tomb.floor = l.next;
        tomb.earliest = l.next;
        let before = w.tombstones.insert(ns.to_owned(), tomb);
        let dir = self.paths.log(ns, &l.epoch);
        w.written.remove(&dir);
        w.dead.push(dir);
        w.undo.push(Undo::Delete {
            ns: ns.to_owned(),
            live: Box::new(l),
            tombstone: before,
        });
        w.changed = true;
        Ok(true)
    }

    fn append(
        &self,
        ns: &str,
        events: &[NewEvent],
        ts_ms: u64,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Appended, StoreError> {
        if events.is_empty() {
            return Err(StoreError::Corrupt("an append of no events".into()));
        }
        let mut w = lock(&self.writing);
        let result = self.append_locked(&mut w, ns, events, ts_ms, idempotency);
        self.note(result)
    }

    fn read(
        &self,
        ns: &str,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let (log, earliest, next, epoch) = {
            let live = self.read_live();
            let l = live
                .get(ns)
                .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?;
            (Arc::clone(&l.log), l.earliest, l.next, l.epoch.clone())
        };
        let from = from.max(earliest);
        let until = until.min(next);
        if from >= until || max_events == 0 {
            return Ok(Vec::new());
        }
        let records = match log.read(from, until, max_events, max_bytes) {
            Ok(records) => records,
            Err(e) => {
                let now = self
                    .read_live()
                    .get(ns)
                    .filter(|l| l.epoch == epoch)
                    .map(|l| l.earliest);
                match now {
                    // Deleted (and its directory moved away) while this read ran.
                    None => return Err(StoreError::NotFound(ns.to_owned())),
                    // Retention removed the segment it was reading: the rest is still there.
                    Some(earliest) if earliest > from => {
                        return self.read(ns, earliest, until, max_events, max_bytes)
                    }
                    Some(_) => return Err(e),
                }
            }
        };
        records
            .into_iter()
            .map(|(offset, rec)| record::decode(offset, &rec))
            .collect()
    }

    fn enforce_retention(
        &self,
        ns: &str,
        policy: &Retention,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut w = lock(&self.writing);
        let l = self
            .read_live()
            .get(ns)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?;
        if l.earliest == l.next || self.young_enough(ns, &l, policy, now_ms)? {
            return Ok(None);
        }
        let (cut, removed) = Self::retention_cut(&l, policy, now_ms)?;
        if cut == l.earliest {
            return Ok(None);
        }
        let op = WalOp::Retain {
            ns: ns.to_owned(),
            epoch: l.epoch.clone(),
            earliest: cut,
        };
        self.note(Self::log(&mut w, &op))?;
        if let Some(entry) = self.write_live().get_mut(ns) {
            entry.earliest = cut;
            entry.bytes -= removed;
            entry.first_ts = None;
        }
        w.undo.push(Undo::Retain {
            ns: ns.to_owned(),
            epoch: l.epoch,
            earliest: l.earliest,
            bytes: l.bytes,
        });
        // Whole segments go at the next checkpoint, once the manifest has the new earliest.
        w.changed = true;
        Ok(Some(cut))
    }

    fn prune_idempotency(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut w = lock(&self.writing);
        let expired = self.idem.expired(before_ms)?;
        let mut n = 0;
        for key in expired {
            if !w.pending.contains_key(&key) && w.removals.insert(key) {
                n += 1;
            }
        }
        let before = w.pending.len();
        w.pending.retain(|_, rec| rec.written_ms >= before_ms);
        Ok(n + before - w.pending.len())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut w = lock(&self.writing);
        let result = if w.poisoned {
            Err(StoreError::Io(std::io::Error::other(
                "an earlier sync of the write-ahead log failed; its writes were taken back",
            )))
        } else if self.take_injected_sync_failure() {
            Err(StoreError::Io(std::io::Error::from_raw_os_error(28)))
        } else {
            w.wal.sync()
        };
        match result {
            Ok(()) => {
                w.undo.clear();
                w.synced = w.wal.mark();
                self.note(Ok(()))
            }
            Err(e) if self.keep_unsynced => self.note(Err(e)),
            Err(e) => {
                self.roll_back(&mut w);
                self.note(Err(e))
            }
        }
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        let result = self.checkpoint_inner();
        self.note_checkpoint(result)
    }

    fn mark_dirty(&self, ns: &str) -> Result<(), StoreError> {
        let mut dirty = lock(&self.dirty);
        if dirty.insert(ns.to_owned()) {
            if let Err(e) = self.write_dirty(&dirty) {
                dirty.remove(ns);
                return self.note(Err(e));
            }
        }
        Ok(())
    }

    fn clear_dirty(&self) -> Result<(), StoreError> {
        let mut dirty = lock(&self.dirty);
        let on_disk = self.paths.dir.join("dirty").exists();
        if !dirty.is_empty() || on_disk {
            dirty.clear();
            let result = self.write_dirty(&dirty);
            self.note(result)?;
        }
        Ok(())
    }

    fn retain_dirty(&self, keep: &HashSet<String>) -> Result<(), StoreError> {
        let mut dirty = lock(&self.dirty);
        let before = dirty.len();
        // Forgotten before the write: if it fails, the file holds these marks or not, and
        // either is safe (their writes are synced; a namespace's next append marks it
        // again, as the writer forgets them too).
        dirty.retain(|ns| keep.contains(ns));
        if dirty.len() == before {
            return Ok(());
        }
        let result = self.write_dirty(&dirty);
        self.note(result)
    }

    fn is_failing(&self) -> bool {
        LogStore::is_failing(self)
    }
}
