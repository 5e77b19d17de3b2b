//! The embedded store: one sled tree per namespace, keyed by big-endian offset.
//!
//! Trees:
//!
//! - `ns.<name>`: the namespace's events, `offset (u64 BE) → record` (see [`super::record`]).
//! - `meta`: `name → NsMeta` (MessagePack): epoch, retention, and the offset floor that
//!   keeps offsets from being reused once a log is emptied by retention or deleted. A
//!   deleted namespace keeps its `meta` entry as a tombstone.
//! - `idem`: `name \0 key → first u64 BE | last u64 BE | written_ms u64 BE`, written in the
//!   same transaction as the events it describes.
//! - `dirty`: relaxed mode's marks of namespaces with unflushed writes.
//!
//! Durability: sled's own `flush()` ends in `sync_file_range`, which does not make the
//! data survive a power cut, and sled never syncs the files it writes large values to
//! (`blobs/`). [`SledStore::sync`] therefore follows the flush with `fdatasync` of the log
//! file and of every blob file not yet synced, and an `fsync` of the blob directory.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use ::sled::transaction::{ConflictableTransactionError, TransactionError};
use ::sled::{Batch, Transactional};
use rewind_protocol::{Event, NewEvent};
use serde::{Deserialize, Serialize};

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
    dirty: ::sled::Tree,
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
        let blob_dir = dir.join("blobs");
        let store = SledStore {
            meta: db.open_tree("meta")?,
            idem: db.open_tree("idem")?,
            dirty: db.open_tree("dirty")?,
            db,
            log_file,
            blob_dir,
            synced_blobs: Mutex::new(HashSet::new()),
            namespaces: RwLock::new(HashMap::new()),
            write_lock: Mutex::new(()),
        };
        let mut loaded = HashMap::new();
        for item in store.meta.iter() {
            let (name, value) = item?;
            let meta = decode_meta(&value)?;
            if meta.deleted {
                continue;
            }
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| StoreError::Corrupt("namespace name is not UTF-8".into()))?;
            let tree = store.db.open_tree(tree_name(&name))?;
            let handle = Self::load_handle(tree, meta)?;
            loaded.insert(name, handle);
        }
        let mut reepoched = Vec::new();
        for item in store.dirty.iter() {
            let (name, _) = item?;
            let name = String::from_utf8_lossy(&name).into_owned();
            if let Some(handle) = loaded.get_mut(&name) {
                handle.meta.epoch = new_epoch()?;
                store
                    .meta
                    .insert(name.as_bytes(), encode_meta(&handle.meta)?)?;
                reepoched.push(name);
            }
        }
        store.dirty.clear()?;
        *store
            .namespaces
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        store.sync()?;
        sync_dir(dir)?;
        Ok((store, reepoched))
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
        let mut floor = match self.meta.get(ns.as_bytes())? {
            Some(old) => decode_meta(&old)?.floor,
            None => 0,
        };
        let tree = self.db.open_tree(tree_name(ns))?;
        // A delete whose tree drop did not reach the disk before a crash leaves old
        // events behind; they belong to the old epoch.
        if let Some((last, _)) = tree.last()? {
            floor = floor.max(offset_of(&last)? + 1);
            tree.clear()?;
        }
        let meta = NsMeta {
            epoch: new_epoch()?,
            created_ms: now_ms(),
            retention,
            floor,
            deleted: false,
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

    fn set_retention(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError> {
        let _w = lock(&self.write_lock);
        let mut map = self.write_map();
        let handle = map
            .get_mut(ns)
            .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?;
        let mut meta = handle.meta.clone();
        meta.retention = retention;
        self.meta.insert(ns.as_bytes(), encode_meta(&meta)?)?;
        handle.meta = meta;
        Ok(handle.info(ns))
    }

    fn delete(&self, ns: &str) -> Result<bool, StoreError> {
        let _w = lock(&self.write_lock);
        let Some(handle) = self.read_map().get(ns).map(|h| (h.meta.clone(), h.next)) else {
            return Ok(false);
        };
        let (mut meta, next) = handle;
        meta.deleted = true;
        meta.floor = next;
        self.meta.insert(ns.as_bytes(), encode_meta(&meta)?)?;
        self.write_map().remove(ns);
        self.db.drop_tree(tree_name(ns))?;
        let mut prefix = ns.as_bytes().to_vec();
        prefix.push(0);
        let mut batch = Batch::default();
        for k in self.idem.scan_prefix(&prefix).keys() {
            batch.remove(k?);
        }
        self.idem.apply_batch(batch)?;
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
        let (tree, first) = {
            let map = self.read_map();
            let h = map
                .get(ns)
                .ok_or_else(|| StoreError::NotFound(ns.to_owned()))?;
            (h.tree.clone(), h.next)
        };
        if let Some(idem) = &idempotency {
            if let Some(rec) = self.idem.get(idem_key(ns, idem.key))? {
                if rec.len() == 24 {
                    let field =
                        |i: usize| u64::from_be_bytes(rec[i..i + 8].try_into().unwrap_or([0; 8]));
                    if field(16) >= idem.not_before_ms {
                        return Ok(Appended::Duplicate {
                            first: field(0),
                            last: field(8),
                        });
                    }
                }
            }
        }
        let mut batch = Batch::default();
        let mut bytes = 0u64;
        for (i, ev) in events.iter().enumerate() {
            let rec = record::encode(ev, ts_ms);
            bytes += rec.len() as u64;
            batch.insert(&key(first + i as u64), rec);
        }
        let last = first + events.len() as u64 - 1;
        match idempotency {
            None => tree.apply_batch(batch)?,
            Some(idem) => {
                let mut rec = Vec::with_capacity(24);
                rec.extend_from_slice(&first.to_be_bytes());
                rec.extend_from_slice(&last.to_be_bytes());
                rec.extend_from_slice(&ts_ms.to_be_bytes());
                let ik = idem_key(ns, idem.key);
                (&tree, &self.idem)
                    .transaction(|(t, i)| {
                        t.apply_batch(&batch)?;
                        i.insert(ik.as_slice(), rec.as_slice())?;
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| match e {
                        TransactionError::Storage(e) => StoreError::Sled(e),
                        TransactionError::Abort(()) => StoreError::Corrupt("append aborted".into()),
                    })?;
            }
        }
        let mut map = self.write_map();
        if let Some(h) = map.get_mut(ns) {
            h.next = last + 1;
            h.bytes += bytes;
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
            let (k, v) = item?;
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
        let mut batch = Batch::default();
        for item in tree.range(key(earliest)..) {
            let (k, v) = item?;
            let offset = offset_of(&k)?;
            let drop = offset < count_cut || remaining > max_bytes || record::ts(&v)? < age_cut_ms;
            if !drop {
                break;
            }
            remaining -= v.len() as u64;
            cut = offset + 1;
            batch.remove(k);
        }
        if cut == earliest {
            return Ok(None);
        }
        if cut > meta.floor {
            meta.floor = cut;
            self.meta.insert(ns.as_bytes(), encode_meta(&meta)?)?;
        }
        tree.apply_batch(batch)?;
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
        let mut batch = Batch::default();
        let mut n = 0;
        for item in self.idem.iter() {
            let (k, v) = item?;
            let written = v
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            if written.is_none_or(|t| t < before_ms) {
                batch.remove(k);
                n += 1;
            }
        }
        self.idem.apply_batch(batch)?;
        Ok(n)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log_file.sync_data()?;
        self.sync_new_blobs()
    }

    fn mark_dirty(&self, ns: &str) -> Result<(), StoreError> {
        self.dirty.insert(ns.as_bytes(), &[])?;
        Ok(())
    }

    fn clear_dirty(&self) -> Result<(), StoreError> {
        self.dirty.clear()?;
        Ok(())
    }
}
