//! The embedded store: one sled tree per namespace, keyed by big-endian offset.
//!
//! Trees:
//!
//! - `ns.<name>`: the namespace's events, `offset (u64 BE) → record` (see [`super::record`]).
//! - `meta`: `name → NsMeta` (MessagePack): epoch, retention, and the offset floor that
//!   keeps offsets from being reused once a log is emptied by retention or deleted. A
//!   deleted namespace keeps its `meta` entry as a tombstone.
//! - `idem`: `name \0 key → first u64 BE | last u64 BE | written_ms u64 BE | digest | shape`,
//!   where `digest` is the 32-byte SHA-256 of the request's events and `shape` is 1 for a
//!   batch, 0 for one event (both absent in records written before they were kept),
//!   written after the events it describes (and logged with them, so a crash cannot split
//!   the two).
//!
//! Files beside sled's own:
//!
//! - `wal/`: the write-ahead log (see [`super::wal`]). Every change is written to it after
//!   being applied to sled; a durable commit is one `fdatasync` of its current segment.
//! - `dirty`: relaxed mode's list of namespaces with writes not yet synced.
//!
//! Durability: sled's own `flush()` ends in `sync_file_range`, which does not make the
//! data survive a power cut, and sled never syncs the files it writes large values to
//! (`blobs/`). A checkpoint therefore starts a new write-ahead log segment, flushes sled,
//! `fdatasync`s its log file and every blob file not yet synced, `fsync`s the blob
//! directory, and only then deletes the older segments. Checkpoints run on a timer beside
//! the writer (and once on open and on shutdown), never inside a commit.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use rewind_protocol::{Event, NewEvent};
use serde::{Deserialize, Serialize};

use super::wal::{self, Wal, WalOp};
use super::{new_epoch, now_ms, record, Appended, IdempotencyKey, NsInfo, Storage, StoreError};

use crate::config::Retention;

/// What the `meta` tree keeps per namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NsMeta {
    epoch: String,
    created_ms: u64,
    retention: Retention,
    /// No offset below this is ever handed out again.
    floor: u64,
    deleted: bool,
    /// Sequence number of the last logged change applied to this entry.
    #[serde(default)]
    lsn: u64,
}

/// In-memory view of one live namespace.
struct NsHandle {
    tree: ::sled::Tree,
    meta: NsMeta,
    earliest: u64,
    next: u64,
    bytes: u64,
}

impl NsHandle {
    fn info(&self, name: &str) -> NsInfo {
        NsInfo {
            name: name.to_owned(),
            epoch: self.meta.epoch.clone(),
            retention: self.meta.retention,
            earliest: self.earliest,
            next: self.next,
            bytes: self.bytes,
        }
    }
}

/// The sled-backed [`Storage`].
pub struct SledStore {
    db: ::sled::Db,
    meta: ::sled::Tree,
    idem: ::sled::Tree,
    /// The write-ahead log.
    wal: Mutex<Wal>,
    /// Its directory.
    wal_dir: PathBuf,
    /// Lets one checkpoint run at a time.
    checkpoint_lock: Mutex<()>,
    /// The next namespace-change sequence number (see [`WalOp::lsn`]).
    lsn: std::sync::atomic::AtomicU64,
    /// The data directory (for the `dirty` file).
    dir: PathBuf,
    /// Relaxed mode: namespaces marked dirty, mirrored in the `dirty` file.
    dirty: Mutex<HashSet<String>>,
    /// A handle on sled's log file, kept to `fdatasync` it after each flush.
    log_file: File,
    /// sled's directory of large values.
    blob_dir: PathBuf,
    /// Blob files already synced, so each sync only touches new ones.
    synced_blobs: Mutex<HashSet<OsString>>,
    /// Live namespaces. Readers take the read lock only to clone a tree handle.
    namespaces: RwLock<HashMap<String, NsHandle>>,
    /// Serializes every mutation, so offsets are assigned in one order.
    write_lock: Mutex<()>,
}

fn key(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

fn offset_of(key: &[u8]) -> Result<u64, StoreError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("event key of {} bytes", key.len())))
}

fn tree_name(ns: &str) -> String {
    format!("ns.{ns}")
}

fn idem_key(ns: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 1 + key.len());
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn encode_meta(meta: &NsMeta) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(meta).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode_meta(bytes: &[u8]) -> Result<NsMeta, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("namespace meta: {e}")))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens sled, waiting up to a second for its file lock: a store closed a moment ago in the
/// same process lets go of the lock only when sled's background threads have finished, and
/// sled offers nothing to wait on. A lock still held after that is another process's.
fn open_db(dir: &Path, cache_bytes: u64) -> Result<::sled::Db, StoreError> {
    let config = ::sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .mode(::sled::Mode::HighThroughput)
        .flush_every_ms(None);
    let mut attempts = 0;
    loop {
        match config.open() {
            Err(::sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                attempts += 1;
                if attempts == 50 {
                    return Err(StoreError::Locked(dir.to_owned()));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

fn idem_value(first: u64, last: u64, ts_ms: u64, request: Option<&([u8; 32], bool)>) -> Vec<u8> {
    let mut rec = Vec::with_capacity(57);
    rec.extend_from_slice(&first.to_be_bytes());
    rec.extend_from_slice(&last.to_be_bytes());
    rec.extend_from_slice(&ts_ms.to_be_bytes());
    if let Some((digest, batch)) = request {
        rec.extend_from_slice(digest);
        rec.push(u8::from(*batch));
    }
    rec
}

/// The names in the `dirty` file (none if it does not exist).
fn read_dirty(dir: &Path) -> Result<Vec<String>, StoreError> {
    match std::fs::read_to_string(dir.join("dirty")) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)?.sync_all()?;
    Ok(())
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Namespaces that were marked dirty by a
    /// relaxed-mode run that did not shut down cleanly get a new epoch; their names are
    /// returned.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<(SledStore, Vec<String>), StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = open_db(dir, cache_bytes)?;
        let log_file = File::open(dir.join("db"))?;
        let wal_dir = dir.join("wal");
        let (wal, opened) = Wal::open(&wal_dir, 0, false)?;
        let ops = opened.ops;
        let store = SledStore {
            meta: db.open_tree("meta")?,
            idem: db.open_tree("idem")?,
            wal: Mutex::new(wal),
            wal_dir,
            checkpoint_lock: Mutex::new(()),
            lsn: std::sync::atomic::AtomicU64::new(0),
            dir: dir.to_owned(),
            dirty: Mutex::new(HashSet::new()),
            db,
            log_file,
            blob_dir: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
            namespaces: RwLock::new(HashMap::new()),
            write_lock: Mutex::new(()),
        };
        let mut loaded = HashMap::new();
        let mut max_lsn = ops.iter().map(WalOp::lsn).max().unwrap_or(0);
        for item in store.meta.iter() {
            let (name, value) = item?;
            let meta = decode_meta(&value)?;
            max_lsn = max_lsn.max(meta.lsn);
            if meta.deleted {
                continue;
            }
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| StoreError::Corrupt("namespace name is not UTF-8".into()))?;
            let tree = store.db.open_tree(tree_name(&name))?;
            let handle = Self::load_handle(tree, meta)?;
            loaded.insert(name, handle);
        }
        *store.write_map() = loaded;
        store
            .lsn
            .store(max_lsn + 1, std::sync::atomic::Ordering::Relaxed);
        let replayed = ops.len();
        for op in ops {
            store.replay(op)?;
        }
        let mut reepoched = Vec::new();
        for name in read_dirty(dir)? {
            let mut map = store.write_map();
            if let Some(handle) = map.get_mut(&name) {
                handle.meta.epoch = new_epoch()?;
                store
                    .meta
                    .insert(name.as_bytes(), encode_meta(&handle.meta)?)?;
                reepoched.push(name);
            }
        }
        store.checkpoint()?;
        store.clear_dirty()?;
        sync_dir(dir)?;
        if replayed > 0 {
            tracing::info!(operations = replayed, "write-ahead log replayed");
        }
        Ok((store, reepoched))
    }

    /// The sequence number of the last change sled has for `ns` (live or deleted).
    fn applied_lsn(&self, ns: &str) -> Result<u64, StoreError> {
        Ok(match self.meta.get(ns.as_bytes())? {
            Some(bytes) => decode_meta(&bytes)?.lsn,
            None => 0,
        })
    }

    fn next_lsn(&self) -> u64 {
        self.lsn.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies one logged operation that sled may have lost.
    fn replay(&self, op: WalOp) -> Result<(), StoreError> {
        let live_epoch = |ns: &str| self.read_map().get(ns).map(|h| h.meta.epoch.clone());
        match op {
            WalOp::Create {
                lsn,
                ns,
                epoch,
                floor,
                retention,
            } => {
                if self.applied_lsn(&ns)? >= lsn {
                    return Ok(());
                }
                if live_epoch(&ns).is_some() {
                    self.apply_delete(&ns, lsn)?;
                }
                self.apply_create(&ns, epoch, floor, retention, lsn)?;
            }
            WalOp::SetRetention {
                lsn,
                ns,
                epoch,
                retention,
            } => {
                if self.applied_lsn(&ns)? < lsn
                    && live_epoch(&ns).as_deref() == Some(epoch.as_str())
                {
                    self.apply_set_retention(&ns, retention, lsn)?;
                }
            }
            WalOp::Delete { lsn, ns, epoch } => {
                if self.applied_lsn(&ns)? < lsn
                    && live_epoch(&ns).as_deref() == Some(epoch.as_str())
                {
                    self.apply_delete(&ns, lsn)?;
                }
            }
            WalOp::Append {
                ns,
                epoch,
                first,
                idempotency_key,
                request,
                ts_ms,
                records,
            } => {
                let (tree, earliest, next) = {
                    let map = self.read_map();
                    let Some(h) = map.get(&ns).filter(|h| h.meta.epoch == epoch) else {
                        return Ok(());
                    };
                    (h.tree.clone(), h.earliest, h.next)
                };
                let n = records.len() as u64;
                if first > next {
                    return Err(StoreError::Corrupt(format!(
                        "write-ahead log: {ns} resumes at offset {first} but its log ends at {next}"
                    )));
                }
                if first + n <= earliest {
                    return Ok(());
                }
                // sled may hold all, part or none of it. Take out what it holds from the
                // byte count (it is counted again below), then write it all again (same
                // keys, same bytes), except what retention has removed since.
                let idem = idempotency_key.map(|k| {
                    let value = idem_value(first, first + n - 1, ts_ms, request.as_ref());
                    (idem_key(&ns, &k), value)
                });
                let skip = earliest.saturating_sub(first) as usize;
                let from = first + skip as u64;
                let records = &records[skip..];
                for (i, rec) in records.iter().enumerate() {
                    if tree.contains_key(key(from + i as u64))? {
                        if let Some(h) = self.write_map().get_mut(&ns) {
                            h.bytes = h.bytes.saturating_sub(rec.len() as u64);
                        }
                    }
                }
                self.apply_append(&ns, &tree, from, records, idem.as_ref())?;
            }
        }
        Ok(())
    }

    /// Writes one operation to the write-ahead log.
    fn log(&self, op: &WalOp) -> Result<(), StoreError> {
        let mut frame = Vec::new();
        wal::encode(&mut frame, op);
        lock(&self.wal).write(&frame)
    }

    /// Creates a namespace's state in sled with the given epoch.
    fn apply_create(
        &self,
        ns: &str,
        epoch: String,
        floor: u64,
        retention: Retention,
        lsn: u64,
    ) -> Result<NsInfo, StoreError> {
        let mut floor = match self.meta.get(ns.as_bytes())? {
            Some(old) => decode_meta(&old)?.floor.max(floor),
            None => floor,
        };
        let tree = self.db.open_tree(tree_name(ns))?;
        // A delete whose tree drop did not reach the disk before a crash leaves old
        // events behind; they belong to the old epoch.
        if let Some((last, _)) = tree.last()? {
            floor = floor.max(offset_of(&last)? + 1);
            tree.clear()?;
        }
        let meta = NsMeta {
            epoch,
            created_ms: now_ms(),
            retention,
            floor,
            deleted: false,
            lsn,
        };
        self.meta.insert(ns.as_bytes(), encode_meta(&meta)?)?;
        let handle = NsHandle {
            tree,
            meta,
            earliest: floor,
            next: floor,
            bytes: 0,
        };
        let info = handle.info(ns);
        self.write_map().insert(ns.to_owned(), handle);
        Ok(info)
    }

    fn apply_set_retention(
        &self,
        ns: &str,
        retention: Retention,
        lsn: u64,
    ) -> Result<NsInfo, StoreError> {
        let mut map = self.write_map();
        let handle = map
            .get_mut(ns)
            .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?;
        let mut meta = handle.meta.clone();
        meta.retention = retention;
        meta.lsn = lsn;
        self.meta.insert(ns.as_bytes(), encode_meta(&meta)?)?;
        handle.meta = meta;
        Ok(handle.info(ns))
    }

    fn apply_delete(&self, ns: &str, lsn: u64) -> Result<(), StoreError> {
        let Some((mut meta, next)) = self.read_map().get(ns).map(|h| (h.meta.clone(), h.next))
        else {
            return Ok(());
        };
        meta.deleted = true;
        meta.floor = next;
        meta.lsn = lsn;
        self.meta.insert(ns.as_bytes(), encode_meta(&meta)?)?;
        self.write_map().remove(ns);
        self.db.drop_tree(tree_name(ns))?;
        let mut prefix = ns.as_bytes().to_vec();
        prefix.push(0);
        let keys: Vec<_> = self
            .idem
            .scan_prefix(&prefix)
            .keys()
            .collect::<Result<_, _>>()?;
        for k in keys {
            self.idem.remove(k)?;
        }
        Ok(())
    }

    /// Stores encoded events at `first..`, then their idempotency record.
    ///
    /// Plain inserts, not a sled batch or transaction: those take sled's global write
    /// lock, which waits for a concurrent flush (measured: stalls of seconds). All-or-
    /// nothing holds without them: readers see nothing of an append before its commit,
    /// and after a crash the write-ahead log puts back whatever part sled lost.
    fn apply_append(
        &self,
        ns: &str,
        tree: &::sled::Tree,
        first: u64,
        records: &[Vec<u8>],
        idem: Option<&(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let mut bytes = 0u64;
        for (i, rec) in records.iter().enumerate() {
            bytes += rec.len() as u64;
            tree.insert(key(first + i as u64), rec.as_slice())?;
        }
        if let Some((ik, value)) = idem {
            self.idem.insert(ik.as_slice(), value.as_slice())?;
        }
        if let Some(h) = self.write_map().get_mut(ns) {
            h.next = h.next.max(first + records.len() as u64);
            h.bytes += bytes;
        }
        Ok(())
    }

    /// Writes the relaxed-mode dirty set to its file, atomically and durably.
    fn write_dirty(&self, names: &HashSet<String>) -> Result<(), StoreError> {
        let tmp = self.dir.join("dirty.tmp");
        let mut f = File::create(&tmp)?;
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        for name in sorted {
            writeln!(f, "{name}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("dirty"))?;
        sync_dir(&self.dir)
    }

    fn load_handle(tree: ::sled::Tree, meta: NsMeta) -> Result<NsHandle, StoreError> {
        let first = tree.first()?.map(|(k, _)| offset_of(&k)).transpose()?;
        let last = tree.last()?.map(|(k, _)| offset_of(&k)).transpose()?;
        let next = last.map_or(meta.floor, |l| (l + 1).max(meta.floor));
        let earliest = first.unwrap_or(next);
        let mut bytes = 0u64;
        for value in tree.iter().values() {
            bytes += value?.len() as u64;
        }
        Ok(NsHandle {
            tree,
            meta,
            earliest,
            next,
            bytes,
        })
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, NsHandle>> {
        self.namespaces
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, NsHandle>> {
        self.namespaces
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tree_of(&self, ns: &str) -> Result<::sled::Tree, StoreError> {
        self.read_map()
            .get(ns)
            .map(|h| h.tree.clone())
            .ok_or_else(|| StoreError::NotFound(ns.to_owned()))
    }

    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let entries = match std::fs::read_dir(&self.blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut synced = lock(&self.synced_blobs);
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled removes blobs it no longer needs; one may go between the
                    // listing and the open.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            sync_dir(&self.blob_dir)?;
        }
        *synced = present;
        Ok(())
    }
}

impl Storage for SledStore {
    fn namespaces(&self) -> Result<Vec<NsInfo>, StoreError> {
        let map = self.read_map();
        let mut all: Vec<NsInfo> = map.iter().map(|(name, h)| h.info(name)).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn info(&self, ns: &str) -> Result<Option<NsInfo>, StoreError> {
        Ok(self.read_map().get(ns).map(|h| h.info(ns)))
    }

    fn create(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
        let _w = lock(&self.write_lock);
        if self.read_map().contains_key(ns) {
            return Err(StoreError::Exists(ns.to_owned()));
        }
        let lsn = self.next_lsn();
        let info = self.apply_create(ns, new_epoch()?, 0, retention, lsn)?;
        self.log(&WalOp::Create {
            lsn,
            ns: ns.to_owned(),
            epoch: info.epoch.clone(),
            floor: info.next,
            retention,
        })?;
        Ok(info)
    }

    fn set_retention(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
        let _w = lock(&self.write_lock);
        let lsn = self.next_lsn();
        let info = self.apply_set_retention(ns, retention, lsn)?;
        self.log(&WalOp::SetRetention {
            lsn,
            ns: ns.to_owned(),
            epoch: info.epoch.clone(),
            retention,
        })?;
        Ok(info)
    }

    fn delete(&self, ns: &str) -> Result<bool, StoreError> {
        let _w = lock(&self.write_lock);
        let Some(epoch) = self.read_map().get(ns).map(|h| h.meta.epoch.clone()) else {
            return Ok(false);
        };
        let lsn = self.next_lsn();
        self.apply_delete(ns, lsn)?;
        self.log(&WalOp::Delete {
            lsn,
            ns: ns.to_owned(),
            epoch,
        })?;
        Ok(true)
    }

    fn append(
        &self,
        ns: &str,
        events: &[NewEvent],
        ts_ms: u64,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Appended, StoreError> {
        let _w = lock(&self.write_lock);
        let (tree, first, epoch) = {
            let map = self.read_map();
            let h = map
                .get(ns)
                .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?;
            (h.tree.clone(), h.next, h.meta.epoch.clone())
        };
        if let Some(idem) = &idempotency {
            if let Some(rec) = self.idem.get(idem_key(ns, idem.key))? {
                let field = |i: usize| {
                    rec.get(i..i + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                };
                if let (Some(first), Some(last), Some(written)) = (field(0), field(8), field(16)) {
                    if written >= idem.not_before_ms {
                        // A record from before digests were kept cannot tell; it counts
                        // as a retry, as it did when it was written.
                        return match (rec.get(24..56), rec.get(56)) {
                            (Some(digest), _)
                                if digest != idem.request.0 && digest != idem.request_v1.0 =>
                            {
                                Err(StoreError::IdempotencyConflict { first, last })
                            }
                            (_, shape) => Ok(Appended::Duplicate {
                                first,
                                last,
                                batch: shape.map(|b| *b == 1),
                            }),
                        };
                    }
                }
            }
        }
        let records: Vec<Vec<u8>> = events.iter().map(|ev| record::encode(ev, ts_ms)).collect();
        let last = first + records.len() as u64 - 1;
        let idem = idempotency.map(|i| {
            let value = idem_value(first, last, ts_ms, Some(&(i.request.0, i.batch)));
            (idem_key(ns, i.key), value)
        });
        self.apply_append(ns, &tree, first, &records, idem.as_ref())?;
        let op = WalOp::Append {
            ns: ns.to_owned(),
            epoch,
            first,
            idempotency_key: idempotency.map(|i| i.key.to_owned()),
            request: idempotency.map(|i| (i.request.0, i.batch)),
            ts_ms,
            records,
        };
        if let Err(e) = self.log(&op) {
            // Not logged, so not appended: take it back out of sled, so the offsets are
            // free for the next append and the idempotency key does not point at them.
            for i in first..=last {
                let _ = tree.remove(key(i));
            }
            if let Some((ik, _)) = &idem {
                let _ = self.idem.remove(ik.as_slice());
            }
            if let Some(h) = self.write_map().get_mut(ns) {
                h.next = first;
            }
            return Err(e);
        }
        Ok(Appended::New { first, last })
    }

    fn read(
        &self,
        ns: &str,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let tree = self.tree_of(ns)?;
        let mut out = Vec::new();
        if from >= until {
            return Ok(out);
        }
        let mut bytes = 0usize;
        for item in tree.range(key(from)..key(until)) {
            let (k, v) = item.map_err(|e| match e {
                // Deleted while this read ran: to the reader, it no longer exists.
                ::sled::Error::CollectionNotFound(_) => StoreError::NotFound(ns.to_owned()),
                e => StoreError::Sled(e),
            })?;
            bytes += v.len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(record::decode(offset_of(&k)?, &v)?);
            if out.len() >= max_events {
                break;
            }
        }
        Ok(out)
    }

    fn enforce_retention(
        &self,
        ns: &str,
        policy: &Retention,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let _w = lock(&self.write_lock);
        let (tree, earliest, next, total_bytes, mut meta) = {
            let map = self.read_map();
            let h = map
                .get(ns)
                .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?;
            (h.tree.clone(), h.earliest, h.next, h.bytes, h.meta.clone())
        };
        let count_cut = policy.max_events.map_or(0, |max| next.saturating_sub(max));
        let age_cut_ms = policy
            .max_age_secs
            .map_or(0, |secs| now_ms.saturating_sub(secs.saturating_mul(1000)));
        let max_bytes = policy.max_bytes.unwrap_or(u64::MAX);
        let mut remaining = total_bytes;
        let mut cut = earliest;
        let mut doomed = Vec::new();
        for item in tree.range(key(earliest)..) {
            let (k, v) = item?;
            let offset = offset_of(&k)?;
            let drop = offset < count_cut || remaining > max_bytes || record::ts(&v)? < age_cut_ms;
            if !drop {
                break;
            }
            remaining -= v.len() as u64;
            cut = offset + 1;
            doomed.push(k);
        }
        if cut == earliest {
            return Ok(None);
        }
        if cut > meta.floor {
            meta.floor = cut;
            self.meta.insert(ns.as_bytes(), encode_meta(&meta)?)?;
        }
        // Oldest first, so a crash part-way leaves the log dense.
        for k in doomed {
            tree.remove(k)?;
        }
        let mut map = self.write_map();
        if let Some(h) = map.get_mut(ns) {
            h.earliest = cut;
            h.bytes = remaining;
            h.meta.floor = meta.floor;
        }
        Ok(Some(cut))
    }

    fn prune_idempotency(&self, before_ms: u64) -> Result<usize, StoreError> {
        let _w = lock(&self.write_lock);
        let mut doomed = Vec::new();
        for item in self.idem.iter() {
            let (k, v) = item?;
            let written = v
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            if written.is_none_or(|t| t < before_ms) {
                doomed.push(k);
            }
        }
        let n = doomed.len();
        for k in doomed {
            self.idem.remove(k)?;
        }
        Ok(n)
    }

    fn sync(&self) -> Result<(), StoreError> {
        lock(&self.wal).sync()
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        let _one = lock(&self.checkpoint_lock);
        // Every operation in the segments before `cut` was applied to sled before the
        // rotation (appends hold the write lock across sled and the log), so the flush
        // below covers them all.
        let cut = {
            let _w = lock(&self.write_lock);
            lock(&self.wal).rotate()?
        };
        self.db.flush()?;
        self.log_file.sync_data()?;
        self.sync_new_blobs()?;
        Wal::remove_before(&self.wal_dir, cut)
    }

    fn mark_dirty(&self, ns: &str) -> Result<(), StoreError> {
        let mut dirty = lock(&self.dirty);
        if dirty.insert(ns.to_owned()) {
            if let Err(e) = self.write_dirty(&dirty) {
                dirty.remove(ns);
                return Err(e);
            }
        }
        Ok(())
    }

    fn clear_dirty(&self) -> Result<(), StoreError> {
        let mut dirty = lock(&self.dirty);
        let on_disk = self.dir.join("dirty").exists();
        if !dirty.is_empty() || on_disk {
            dirty.clear();
            self.write_dirty(&dirty)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_protocol::Payload;

    fn ev(data: &str) -> NewEvent {
        NewEvent {
            event: "e".into(),
            key: None,
            data: Payload::Json(data.into()),
        }
    }

    /// Writes an append to the write-ahead log as a crash would leave it: logged, but not
    /// in sled.
    fn log_behind_sleds_back(dir: &Path, ns: &str, first: u64, idem: Option<&str>, data: &[&str]) {
        let (store, _) = SledStore::open(dir, 8 << 20).unwrap();
        let epoch = store.info(ns).unwrap().unwrap().epoch;
        drop(store);
        let op = WalOp::Append {
            ns: ns.into(),
            epoch,
            first,
            idempotency_key: idem.map(str::to_owned),
            // As written before digests were kept: such a record takes any retry.
            request: None,
            ts_ms: 7,
            records: data.iter().map(|d| record::encode(&ev(d), 7)).collect(),
        };
        let mut bytes = Vec::new();
        wal::encode(&mut bytes, &op);
        let segment = dir.join("wal").join(format!("{:020}.wal", 999_999 + first));
        std::fs::write(segment, bytes).unwrap();
    }

    #[test]
    fn open_replays_what_only_the_write_ahead_log_has() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = SledStore::open(dir.path(), 8 << 20).unwrap();
            store.create("a", Retention::default()).unwrap();
            store.append("a", &[ev("0")], 5, None).unwrap();
        }
        // Record 0 is in sled already (skipped); 1..=2 are only in the log.
        log_behind_sleds_back(dir.path(), "a", 0, None, &["0"]);
        log_behind_sleds_back(dir.path(), "a", 1, Some("key"), &["1", "2"]);
        let (store, _) = SledStore::open(dir.path(), 8 << 20).unwrap();
        let got = store.read("a", 0, 10, 10, 1 << 20).unwrap();
        let data: Vec<_> = got.iter().map(|e| e.data.clone()).collect();
        assert_eq!(data, ["0", "1", "2"].map(|d| Payload::Json(d.into())));
        assert_eq!(store.info("a").unwrap().unwrap().next, 3);
        let retry = store
            .append(
                "a",
                &[ev("x")],
                8,
                Some(IdempotencyKey {
                    key: "key",
                    request: rewind_protocol::idempotency::RequestDigest([0; 32]),
                    request_v1: rewind_protocol::idempotency::RequestDigest([0; 32]),
                    batch: false,
                    not_before_ms: 0,
                }),
            )
            .unwrap();
        assert_eq!(
            retry,
            Appended::Duplicate {
                first: 1,
                last: 2,
                batch: None
            }
        );
        // The replay was checkpointed: only the fresh, empty segment is left.
        let segments: Vec<_> = std::fs::read_dir(dir.path().join("wal")).unwrap().collect();
        assert_eq!(segments.len(), 1);
    }

    #[test]
    fn a_gap_between_sled_and_the_log_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = SledStore::open(dir.path(), 8 << 20).unwrap();
            store.create("a", Retention::default()).unwrap();
        }
        log_behind_sleds_back(dir.path(), "a", 5, None, &["5"]);
        match SledStore::open(dir.path(), 8 << 20) {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains("offset 5"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened a store with a gap"),
        }
    }
}
