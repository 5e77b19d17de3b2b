//! Opening the store: cleaning leftovers, verifying every file, replaying the write-ahead
//! log, and — only when asked (`rewind serve --recover`) — recovering what damage left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::idem::{self, IdemRecord, IdemStore};
use super::log_store::{empty_dir, lock, Live, LogStore, Paths};
use super::manifest::{self, NsEntry};
use super::segment::{Records, SegmentConfig, SegmentLog};
use super::wal::{self, Place, Wal, WalOp};
use super::Retention;
use super::{new_epoch, StoreError};

/// How to open.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// sled's page cache for idempotency records, in bytes.
    pub cache_bytes: u64,
    /// Size at which a log starts a new segment file.
    pub segment_bytes: u64,
    /// Keep every valid record of damaged files; namespaces that lost anything get a new
    /// epoch. Without it, damage refuses the open.
    pub recover: bool,
    /// Relaxed durability: writes are acknowledged before they are synced, so a failed
    /// sync must not take them back (readers may have seen their offsets); the dirty
    /// marks give those namespaces a new epoch if a crash loses them.
    pub relaxed: bool,
}

/// What open did that the operator should hear about.
#[derive(Debug, Default)]
pub struct Opened {
    /// Namespaces that got a new epoch: relaxed-mode marks, or recovery.
    pub new_epochs: Vec<String>,
    /// One line per repair `--recover` made.
    pub repairs: Vec<String>,
}

fn has_data(dir: &Path) -> Result<bool, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() || entry.metadata()?.len() > 0 {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io_at(dir, e)),
    }
}

/// Moves `path` (a file or directory under the data directory `dir`) to
/// `<dir>/lost+found/<unix ms>/<its path under dir>`, and returns where it went. Recovery
/// sets aside what it cannot place instead of deleting it or merging it into a log.
fn set_aside(dir: &Path, path: &Path, why: &str) -> Result<PathBuf, StoreError> {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    let to = dir
        .join("lost+found")
        .join(super::now_ms().to_string())
        .join(rel);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io_at(parent, e))?;
    }
    std::fs::rename(path, &to).map_err(|e| StoreError::io_at(path, e))?;
    tracing::warn!(
        "recover: {}: {why}; set aside as {}",
        path.display(),
        to.display()
    );
    Ok(to)
}

/// What open does with `path`, an entry that does not belong where it is (`what` says
/// why): refuses it as damage naming it, or with `recover` sets it aside (see
/// [`set_aside`]) and notes the repair.
fn misplaced(
    dir: &Path,
    recover: bool,
    path: &Path,
    what: &str,
    repairs: &mut Vec<String>,
) -> Result<(), StoreError> {
    if !recover {
        return Err(StoreError::damaged(path, 0, what));
    }
    let to = set_aside(dir, path, what)?;
    repairs.push(format!(
        "{}: {what}; set aside as {}",
        path.display(),
        to.display()
    ));
    Ok(())
}

/// Every `log/<ns>/<epoch>` directory. A file where `log/`, a namespace's directory or an
/// incarnation's directory belongs is damage; `recover` sets it aside (see [`set_aside`]).
fn incarnation_dirs(
    dir: &Path,
    logs: &Path,
    recover: bool,
    repairs: &mut Vec<String>,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    match std::fs::symlink_metadata(logs) {
        Ok(m) if !m.is_dir() => {
            misplaced(
                dir,
                recover,
                logs,
                "a file where the directory of namespace logs belongs",
                repairs,
            )?;
            return Ok(out);
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io_at(logs, e)),
    }
    let entries = std::fs::read_dir(logs).map_err(|e| StoreError::io_at(logs, e))?;
    for ns in entries {
        let ns = ns?;
        if !ns.file_type()?.is_dir() {
            misplaced(
                dir,
                recover,
                &ns.path(),
                "a file where a namespace's directory belongs",
                repairs,
            )?;
            continue;
        }
        let name = ns.file_name().to_string_lossy().into_owned();
        let mut any = false;
        for epoch in std::fs::read_dir(ns.path()).map_err(|e| StoreError::io_at(&ns.path(), e))? {
            let epoch = epoch?;
            if !epoch.file_type()?.is_dir() {
                misplaced(
                    dir,
                    recover,
                    &epoch.path(),
                    "a file where a namespace incarnation's directory belongs",
                    repairs,
                )?;
                continue;
            }
            out.push((
                name.clone(),
                epoch.file_name().to_string_lossy().into_owned(),
            ));
            any = true;
        }
        if !any {
            std::fs::remove_dir(ns.path()).map_err(|e| StoreError::io_at(&ns.path(), e))?;
        }
    }
    Ok(out)
}

/// `wal/` holds only segment files (`<20 digits>.wal`), numbered consecutively from the
/// first one replay reads (each start and each checkpoint begins the next number). Any
/// other entry, and a segment whose number does not follow the one before it, is damage:
/// refused naming it, or set aside by `recover` (see [`set_aside`]). Older segments (below
/// `from`, not yet deleted by the last checkpoint) are not checked: open deletes them.
fn check_wal_dir(
    dir: &Path,
    wal: &Path,
    from: u64,
    recover: bool,
    repairs: &mut Vec<String>,
) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(wal) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io_at(wal, e)),
    };
    let mut seqs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io_at(wal, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let seq = name
            .strip_suffix(".wal")
            .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        match seq {
            Some(seq) if entry.file_type()?.is_file() => seqs.push((seq, path)),
            _ => misplaced(
                dir,
                recover,
                &path,
                "not a segment file of the write-ahead log",
                repairs,
            )?,
        }
    }
    seqs.sort();
    let mut before: Option<u64> = None;
    for (seq, path) in seqs {
        if seq < from {
            continue;
        }
        match before {
            Some(b) if seq != b + 1 => misplaced(
                dir,
                recover,
                &path,
                &format!("a write-ahead log segment numbered {seq} after {b}; segments are numbered consecutively"),
                repairs,
            )?,
            _ => before = Some(seq),
        }
    }
    Ok(())
}

/// Whether a directory holds no segment data at all (a create whose wal frame never made
/// it, say).
fn holds_nothing(dir: &Path) -> Result<bool, StoreError> {
    for entry in std::fs::read_dir(dir)? {
        if entry?.metadata()?.len() > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `records` (strictly increasing offsets, as salvage returns them) hold every
/// offset of `earliest..next`.
fn covers(records: &[(u64, Vec<u8>)], earliest: u64, next: u64) -> bool {
    let within = records
        .iter()
        .filter(|(o, _)| (earliest..next).contains(o))
        .count() as u64;
    within == next.saturating_sub(earliest)
}

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

/// Events copied per step when a log is written again.
const CHUNK_EVENTS: usize = 4096;

/// The next events of `log` from `*from` (below `until`), at most [`CHUNK_EVENTS`] or
/// 16 MiB of them; `None` at the end.
fn next_chunk(log: &SegmentLog, from: &mut u64, until: u64) -> Result<Option<Records>, StoreError> {
    if *from >= until {
        return Ok(None);
    }
    let chunk = log.read(*from, until, CHUNK_EVENTS, 16 << 20)?;
    match chunk.last() {
        Some((last, _)) => {
            *from = last + 1;
            Ok(Some(chunk))
        }
        None => Ok(None),
    }
}

/// What recovery gathered for one namespace that lost something.
struct Salvaged {
    retention: Retention,
    created_ms: u64,
    /// The offset after the last one the namespace ever had (as far as anything says).
    next: u64,
    earliest: u64,
    records: BTreeMap<u64, Vec<u8>>,
    /// Idempotency records (publisher's key, record at the old offsets) of the incarnations
    /// salvaged; remapped to the offsets the events get.
    keys: Vec<(Vec<u8>, IdemRecord)>,
    why: String,
}

/// What a listed log held beyond the manifest's `next` before open cut it back.
struct Beyond {
    epoch: String,
    /// The log's own `next` before the cut.
    seen_next: u64,
    /// Its records from the manifest's `next` on (kept only when recovering).
    records: Records,
}

/// How far the write-ahead log takes each incarnation, to refuse a normal start whose
/// segments hold more before anything is cut back (the evidence stays for `--recover`).
struct LogEnds {
    /// `(ns, epoch)` → the offset after the last logged append of that incarnation.
    ends: HashMap<(String, String), u64>,
    /// The newest log segment file read and where its valid frames end.
    wal_end: (PathBuf, u64),
}

impl LogEnds {
    fn new(ops: &[(WalOp, Place)], wal_end: (PathBuf, u64)) -> LogEnds {
        let mut ends = HashMap::new();
        for (op, _) in ops {
            if let WalOp::Append {
                ns,
                epoch,
                first,
                records,
                ..
            } = op
            {
                let end = ends.entry((ns.clone(), epoch.clone())).or_insert(0);
                *end = (*end).max(first + records.len() as u64);
            }
        }
        LogEnds { ends, wal_end }
    }

    /// Refuses segments of `ns`'s incarnation `epoch` reaching `seen_next` when the wal
    /// (and the checkpoint, `known`) take it only to a lower offset. The wal frame is
    /// written before the segment frames, so that means the wal lost frames it had:
    /// damage (or a power cut that kept the segment's pages but not the wal's), never
    /// what a `kill -9` leaves.
    fn check(&self, ns: &str, epoch: &str, known: u64, seen_next: u64) -> Result<(), StoreError> {
        let end = self
            .ends
            .get(&(ns.to_owned(), epoch.to_owned()))
            .copied()
            .unwrap_or(0)
            .max(known);
        if seen_next <= end {
            return Ok(());
        }
        Err(StoreError::damaged(
            &self.wal_end.0,
            self.wal_end.1,
            format!(
                "the write-ahead log's valid frames end here, but the segments of {ns:?} hold offsets {end}..{seen_next} it does not"
            ),
        ))
    }
}

impl LogStore {
    /// Opens (or creates) the store in `dir`. See `docs/storage.md` for what is repaired
    /// silently (a torn tail), what is refused ([`StoreError::Damaged`]) and what
    /// `opts.recover` does.
    pub fn open(dir: &Path, opts: OpenOptions) -> Result<(LogStore, Opened), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io_at(dir, e))?;
        let paths = Paths {
            dir: dir.to_owned(),
        };
        let seg = SegmentConfig {
            segment_bytes: opts.segment_bytes,
        };
        let mut opened = Opened::default();
        // sled's lock on idem/ is the store's: one process at a time.
        let fresh =
            !manifest::path(dir).exists() && !has_data(&paths.wal())? && !has_data(&paths.logs())?;
        // A damaged idem/ moved aside by recovery: the fresh one holds nothing yet.
        let mut idem_refilled = false;
        let (idem_store, found) = match IdemStore::open(&paths.idem(), opts.cache_bytes) {
            // A first start that failed (a full disk) can leave sled's files half-written;
            // with no checkpoint ever taken they hold nothing, so they start again.
            Err(StoreError::Damaged { file, what, .. }) if fresh => {
                tracing::info!(dir = %file.display(), %what, "no checkpoint was ever taken: starting the idempotency store afresh");
                std::fs::remove_dir_all(&file)?;
                IdemStore::open(&paths.idem(), opts.cache_bytes)?
            }
            Err(StoreError::Damaged { file, what, .. }) if opts.recover => {
                let aside = dir.join(format!("idem.damaged-{}", super::now_ms()));
                std::fs::rename(&file, &aside)?;
                let line = format!(
                    "{}: {what}; moved aside to {}, a fresh one is refilled from the write-ahead log (keys of older publishes are forgotten)",
                    file.display(),
                    aside.display()
                );
                tracing::warn!("recover: {line}");
                opened.repairs.push(line);
                idem_refilled = true;
                IdemStore::open(&paths.idem(), opts.cache_bytes)?
            }
            other => other?,
        };
        let _ = std::fs::remove_file(dir.join(manifest::TMP));
        empty_dir(&paths.trash());
        let mut lost: HashMap<String, Salvaged> = HashMap::new();
        let manifest = match manifest::read(dir) {
            Ok(m) => m,
            Err(StoreError::Damaged {
                file,
                position,
                what,
            }) if opts.recover => {
                let line = format!(
                    "{} at byte {position}: {what}; rebuilt from the write-ahead log and the segment files: a namespace the write-ahead log creates keeps its epoch, every other one gets a new epoch",
                    file.display()
                );
                tracing::warn!("recover: {line}");
                opened.repairs.push(line);
                None
            }
            Err(e) => return Err(e),
        };
        if manifest.is_none() && dir.join("db").is_file() && dir.join("conf").is_file() {
            // sled's files at the top level: the store before segment files, events in sled.
            return Err(StoreError::Incompatible(dir.to_owned()));
        }
        let rebuild = manifest.is_none() && (has_data(&paths.wal())? || has_data(&paths.logs())?);
        if rebuild && !opts.recover {
            return Err(StoreError::damaged(
                &manifest::path(dir),
                0,
                "the manifest is missing while log/ or wal/ holds data",
            ));
        }
        let manifest = manifest.unwrap_or_default();
        // sled must hold what the manifest's checkpoint left, or the one after it (a
        // checkpoint that stopped between sled and the manifest).
        let idem_ok = found.generation == manifest.generation
            && found.records == manifest.idempotency_records
            || found.generation == manifest.generation + 1;
        if !idem_ok && !rebuild && !idem_refilled {
            let what = format!(
                "the idempotency store holds {} records of checkpoint {}, the manifest says {} of checkpoint {}",
                found.records, found.generation, manifest.idempotency_records, manifest.generation
            );
            if !opts.recover {
                return Err(StoreError::damaged(&paths.idem(), 0, what));
            }
            let line = format!("{}: {what}; kept as it is", paths.idem().display());
            tracing::warn!("recover: {line}");
            opened.repairs.push(line);
        }
        let wal_from = if rebuild { 0 } else { manifest.wal_from };
        check_wal_dir(
            dir,
            &paths.wal(),
            wal_from,
            opts.recover,
            &mut opened.repairs,
        )?;
        let (wal, wal_read) = Wal::open(&paths.wal(), wal_from, opts.recover)?;
        let wal_damaged = !wal_read.damage.is_empty();
        for d in &wal_read.damage {
            opened.repairs.push(format!(
                "{} at byte {}: {} damaged bytes stepped over; every namespace gets a new epoch",
                d.file.display(),
                d.position,
                d.bytes
            ));
        }
        let max_lsn = wal_read
            .ops
            .iter()
            .map(|(op, _)| op.lsn())
            .max()
            .unwrap_or(0);
        let torn_wal = wal_read.torn_tail_at.clone();
        let wal_end = wal_read.end.clone();
        let log_ends = (!opts.recover).then(|| {
            let end = wal_end.clone().unwrap_or_else(|| (paths.wal(), 0));
            LogEnds::new(&wal_read.ops, end)
        });
        let mut store = LogStore::new(
            paths,
            seg,
            LogStore::writing_state(wal, max_lsn),
            idem_store,
            manifest.generation,
        );
        store.keep_unsynced = opts.relaxed;
        // Misplaced files first: a file where `log/` belongs is named as such, not as the
        // logs missing under it.
        let dirs = incarnation_dirs(dir, &store.paths.logs(), opts.recover, &mut opened.repairs)?;
        let mut listed: HashSet<(String, String)> = HashSet::new();
        let mut beyond: HashMap<String, Beyond> = HashMap::new();
        {
            let mut w = lock(&store.writing);
            for e in &manifest.namespaces {
                listed.insert((e.name.clone(), e.epoch.clone()));
                if e.deleted {
                    w.tombstones.insert(e.name.clone(), e.clone());
                    w.dead.push(store.paths.log(&e.name, &e.epoch));
                    continue;
                }
                match store.open_listed(e, opts.recover, log_ends.as_ref()) {
                    Ok((live, b)) => {
                        store.write_live().insert(e.name.clone(), live);
                        if let Some(b) = b {
                            beyond.insert(e.name.clone(), b);
                        }
                    }
                    Err(StoreError::Damaged {
                        file,
                        position,
                        what,
                    }) if opts.recover => {
                        let records = store.salvage(&e.name, &e.epoch)?;
                        let line = format!("{} at byte {position}: {what}", file.display());
                        if covers(&records, e.earliest, e.next) {
                            // Nothing lost: the same epoch and offsets, files written anew.
                            let (live, b, repair) = store.rewrite_in_place(e, records, &line)?;
                            opened.repairs.push(repair);
                            store.write_live().insert(e.name.clone(), live);
                            if let Some(b) = b {
                                beyond.insert(e.name.clone(), b);
                            }
                            continue;
                        }
                        w.dead.push(store.paths.log(&e.name, &e.epoch));
                        let mut s = Salvaged::from_entry(e, records, line);
                        s.keys = store.keys_of(&w, &e.name, &e.epoch)?;
                        lost.insert(e.name.clone(), s);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Directories the manifest does not list: leftovers of deleted incarnations go,
        // a create whose wal frame never made it left an empty one, and anything else
        // is damage (or, recovering without a manifest, the data to rebuild from).
        let mut replay_created = HashSet::new();
        for (op, _) in &wal_read.ops {
            if let WalOp::Create { ns, epoch, .. } = op {
                replay_created.insert((ns.clone(), epoch.clone()));
            }
        }
        // A namespace the manifest or the wal has an incarnation of keeps that one as its
        // log: another directory is set aside by recovery, never merged into it.
        let known: HashSet<&String> = listed
            .iter()
            .chain(replay_created.iter())
            .map(|(ns, _)| ns)
            .collect();
        for (ns, epoch) in dirs {
            let key = (ns.clone(), epoch.clone());
            if listed.contains(&key) || replay_created.contains(&key) {
                continue;
            }
            let path = store.paths.log(&ns, &epoch);
            if holds_nothing(&path)? {
                std::fs::remove_dir_all(&path)?;
                continue;
            }
            if !opts.recover {
                return Err(StoreError::damaged(
                    &path,
                    0,
                    "a namespace log the manifest does not list",
                ));
            }
            if known.contains(&ns) {
                let what = format!("a log of {ns:?} under an epoch neither the manifest nor the write-ahead log has");
                let to = set_aside(dir, &path, &what)?;
                opened.repairs.push(format!(
                    "{}: {what}; set aside as {}",
                    path.display(),
                    to.display()
                ));
                continue;
            }
            let records = store.salvage(&ns, &epoch)?;
            let line = format!("{}: not listed in the manifest", path.display());
            let keys = store.keys_of(&lock(&store.writing), &ns, &epoch)?;
            let s = lost
                .entry(ns.clone())
                .or_insert_with(|| Salvaged::empty(line.clone()));
            s.absorb(records);
            s.keys.extend(keys);
            lock(&store.writing).dead.push(path);
        }
        // Replay.
        for (op, place) in wal_read.ops {
            store.replay(
                op,
                place,
                opts.recover,
                log_ends.as_ref(),
                &mut lost,
                &mut beyond,
            )?;
        }
        // A log whose segments held frames beyond where replay ends lost the wal frames
        // of acknowledged events (a damaged last frame looks like a torn one): its offsets
        // from there on may have been seen by readers, so it gets a new epoch.
        let mut same_offsets: BTreeMap<String, String> = BTreeMap::new();
        let names: Vec<String> = store.read_live().keys().cloned().collect();
        for ns in names {
            let Some(l) = store.read_live().get(&ns).cloned() else {
                continue;
            };
            if lost.contains_key(&ns) {
                continue;
            }
            let b = beyond.remove(&ns).filter(|b| b.epoch == l.epoch);
            let ahead = b.as_ref().filter(|b| b.seen_next > l.next);
            let why = match (ahead, &torn_wal) {
                (Some(b), Some((file, at))) => Some(format!(
                    "{} at byte {at}: the write-ahead log ended in a frame cut off as torn, but the segments of {ns:?} held offsets {}..{} it does not",
                    file.display(),
                    l.next,
                    b.seen_next
                )),
                (Some(b), None) => Some(match &wal_end {
                    Some((file, at)) => format!(
                        "{} at byte {at}: the write-ahead log's valid frames end here, but the segments of {ns:?} ({}) held offsets {}..{} it does not",
                        file.display(),
                        store.paths.log(&ns, &l.epoch).display(),
                        l.next,
                        b.seen_next
                    ),
                    None => format!(
                        "{}: the segments of {ns:?} held offsets {}..{} the write-ahead log does not",
                        store.paths.log(&ns, &l.epoch).display(),
                        l.next,
                        b.seen_next
                    ),
                }),
                (None, _) if wal_damaged => Some("write-ahead log damaged".to_owned()),
                (None, _) => None,
            };
            let Some(why) = why else {
                continue;
            };
            if let (Some(b), false) = (ahead, opts.recover) {
                // The wal frame is written before the segment frames, so segments ahead of
                // the wal mean the wal lost frames it had: damage (a power cut that kept
                // segment pages but not the wal's is the one innocent cause), never what a
                // kill -9 leaves. Named where the wal's valid frames end.
                let (file, position) = wal_end.clone().unwrap_or_else(|| (store.paths.wal(), 0));
                return Err(StoreError::damaged(
                    &file,
                    position,
                    format!(
                        "the write-ahead log's valid frames end here, but the segments of {ns:?} hold offsets {}..{} it does not",
                        l.next, b.seen_next
                    ),
                ));
            }
            let mut s = Salvaged::from_live(&l, why);
            let mut from = l.earliest;
            while let Some(chunk) = next_chunk(&l.log, &mut from, l.next)? {
                s.absorb(chunk);
            }
            if let Some(b) = b {
                s.absorb(b.records);
            }
            let mut w = lock(&store.writing);
            s.keys = store.keys_of(&w, &ns, &l.epoch)?;
            let dir = store.paths.log(&ns, &l.epoch);
            store.write_live().remove(&ns);
            w.written.remove(&dir);
            w.dead.push(dir);
            lost.insert(ns, s);
        }
        // Recovery: every namespace that lost anything starts a new epoch after its old
        // `next`, its surviving events written again densely.
        let mut names: Vec<String> = lost.keys().cloned().collect();
        names.sort();
        for ns in names {
            let mut s = lost
                .remove(&ns)
                .unwrap_or_else(|| Salvaged::empty(String::new()));
            let start = s
                .next
                .max(s.records.keys().next_back().map_or(0, |o| o + 1));
            let offsets: Vec<u64> = s.records.keys().copied().collect();
            let keys = std::mem::take(&mut s.keys);
            let mut survivors = s.records.into_values();
            let live = store.rewrite(&ns, start, s.retention, s.created_ms, &mut || {
                let chunk: Vec<Vec<u8>> = survivors.by_ref().take(CHUNK_EVENTS).collect();
                Ok((!chunk.is_empty()).then_some(chunk))
            })?;
            // A key whose events all survived answers a retry with the offsets they have
            // now; one whose batch lost events is dropped (a retry appends it whole).
            let (kept, dropped) = store.carry_keys(&ns, &live.epoch, keys, |first, last| {
                let i = offsets.binary_search(&first).ok()?;
                let j = offsets.binary_search(&last).ok()?;
                ((j - i) as u64 == last - first).then_some((start + i as u64, start + j as u64))
            });
            let line = format!(
                "{}; namespace {ns:?} gets epoch {} with {} surviving events at offsets {}..{} ({kept} idempotency keys moved to the new offsets, {dropped} of batches that lost events dropped)",
                s.why,
                live.epoch,
                live.next - start,
                start,
                live.next
            );
            tracing::warn!("recover: {line}");
            opened.repairs.push(line);
            opened.new_epochs.push(ns);
        }
        // Relaxed mode: namespaces with writes that may not have been synced; and logs
        // whose segments held more than the write-ahead log. A new epoch, the events kept
        // at their offsets, and so their idempotency keys too.
        for ns in read_dirty(dir)? {
            same_offsets
                .entry(ns)
                .or_insert_with(|| "relaxed mode: written since the last flush".into());
        }
        for ns in same_offsets.into_keys() {
            let l = store.read_live().get(&ns).cloned();
            if let Some(l) = l {
                let dir = store.paths.log(&ns, &l.epoch);
                let keys = store.keys_of(&lock(&store.writing), &ns, &l.epoch)?;
                let mut from = l.earliest;
                let mut live =
                    store.rewrite(&ns, l.earliest, l.retention, l.created_ms, &mut || {
                        Ok(next_chunk(&l.log, &mut from, l.next)?
                            .map(|chunk| chunk.into_iter().map(|(_, r)| r).collect()))
                    })?;
                live.floor = l.floor;
                store.carry_keys(&ns, &live.epoch, keys, |first, last| Some((first, last)));
                store.write_live().insert(ns.clone(), live);
                lock(&store.writing).dead.push(dir);
                opened.new_epochs.push(ns);
            }
        }
        super::Storage::checkpoint(&store)?;
        super::Storage::clear_dirty(&store)?;
        Ok((store, opened))
    }

    /// Opens a log the manifest lists, cut back to the manifest's `next`; with what it held
    /// beyond (its records only when `keep_beyond`).
    fn open_listed(
        &self,
        e: &NsEntry,
        keep_beyond: bool,
        log_ends: Option<&LogEnds>,
    ) -> Result<(Live, Option<Beyond>), StoreError> {
        let dir = self.paths.log(&e.name, &e.epoch);
        if !dir.is_dir() {
            return Err(StoreError::damaged(
                &dir,
                0,
                "the manifest lists this namespace log, but it is missing",
            ));
        }
        let (log, report) = SegmentLog::open(&dir, &e.name, &e.epoch, e.earliest, self.seg)?;
        if let Some(file) = &report.torn_tail_file {
            tracing::warn!(file = %file.display(), bytes = report.torn_tail_bytes, "a segment ended in a torn frame; cut off");
        }
        if log.next() < e.next {
            // Named at the end of its last segment file (the bytes that are missing were
            // after it), or the directory's start when no segment file is left.
            let (file, len) = log.last_file().unwrap_or_else(|| (dir.clone(), 0));
            return Err(StoreError::damaged(
                &file,
                len,
                format!(
                    "ends at offset {} but the checkpoint recorded {}",
                    log.next(),
                    e.next
                ),
            ));
        }
        if log.first() > e.earliest {
            return Err(StoreError::damaged(
                &dir,
                0,
                format!(
                    "the log starts at offset {}, the manifest says {}",
                    log.first(),
                    e.earliest
                ),
            ));
        }
        if let Some(ends) = log_ends {
            ends.check(&e.name, &e.epoch, e.next, log.next())?;
        }
        let mut beyond = None;
        if log.next() > e.next {
            // Written after the checkpoint: the write-ahead log has it if it was logged.
            let mut b = Beyond {
                epoch: e.epoch.clone(),
                seen_next: log.next(),
                records: Vec::new(),
            };
            if keep_beyond {
                let mut from = e.next;
                while let Some(chunk) = next_chunk(&log, &mut from, b.seen_next)? {
                    b.records.extend(chunk);
                }
            }
            log.truncate(e.next)?;
            beyond = Some(b);
        }
        let bytes = log.bytes_from(e.earliest)?;
        let live = Live {
            epoch: e.epoch.clone(),
            created_ms: e.created_ms,
            retention: e.retention,
            floor: e.floor,
            earliest: e.earliest,
            next: e.next,
            bytes,
            first_ts: None,
            log: Arc::new(log),
        };
        Ok((live, beyond))
    }

    /// Writes a listed log whose files were damaged but whose valid `records` hold every
    /// offset from its `earliest` to its `next` again, under the same epoch: the damaged
    /// directory is set aside (`lost+found/`), a new one holds the records. Records beyond
    /// `next` come back as [`Beyond`], as [`LogStore::open_listed`] would return them.
    fn rewrite_in_place(
        &self,
        e: &NsEntry,
        records: Records,
        why: &str,
    ) -> Result<(Live, Option<Beyond>, String), StoreError> {
        let dir = self.paths.log(&e.name, &e.epoch);
        let aside = if dir.exists() {
            Some(set_aside(&self.paths.dir, &dir, why)?)
        } else {
            None
        };
        let mut live = self.incarnate(&e.name, e.epoch.clone(), e.earliest, e.retention)?;
        live.created_ms = e.created_ms;
        live.floor = e.floor;
        let mut b = Beyond {
            epoch: e.epoch.clone(),
            seen_next: e.next,
            records: Vec::new(),
        };
        let mut chunk: Vec<Vec<u8>> = Vec::new();
        for (offset, record) in records {
            if offset < e.earliest {
                continue;
            }
            if offset >= e.next {
                b.seen_next = offset + 1;
                b.records.push((offset, record));
                continue;
            }
            live.bytes += record.len() as u64;
            chunk.push(record);
            if chunk.len() == CHUNK_EVENTS {
                live.log.append(&std::mem::take(&mut chunk))?;
            }
        }
        live.log.append(&chunk)?;
        live.log.sync()?;
        live.next = e.next;
        let line = format!(
            "{why}; every event of {:?} at offsets {}..{} survived: its log is written again under the same epoch {}{}",
            e.name,
            e.earliest,
            e.next,
            e.epoch,
            aside.map_or(String::new(), |a| format!(", the damaged files set aside as {}", a.display()))
        );
        tracing::warn!("recover: {line}");
        let beyond = (b.seen_next > e.next).then_some(b);
        Ok((live, beyond, line))
    }

    /// What the directory of an incarnation created since the checkpoint held, before
    /// replay writes it again: how far its segments reached and, when `recover`ing, their
    /// valid records (salvaged if damaged). Damage without `recover` is no reason to refuse:
    /// the log holds everything the directory should.
    fn created_beyond(
        &self,
        dir: &Path,
        ns: &str,
        epoch: &str,
        floor: u64,
        recover: bool,
        log_ends: Option<&LogEnds>,
    ) -> Result<Option<Beyond>, StoreError> {
        let mut b = Beyond {
            epoch: epoch.to_owned(),
            seen_next: floor,
            records: Vec::new(),
        };
        match SegmentLog::open(dir, ns, epoch, floor, self.seg) {
            Ok((log, _)) => {
                b.seen_next = log.next();
                if let Some(ends) = log_ends {
                    ends.check(ns, epoch, floor, b.seen_next)?;
                }
                if recover {
                    let mut from = log.first();
                    while let Some(chunk) = next_chunk(&log, &mut from, b.seen_next)? {
                        b.records.extend(chunk);
                    }
                }
            }
            Err(StoreError::Damaged { .. }) if recover => {
                b.records = self.salvage(ns, epoch)?;
                b.seen_next = b.records.last().map_or(floor, |(o, _)| o + 1);
            }
            Err(StoreError::Damaged {
                file,
                position,
                what,
            }) => {
                tracing::warn!(
                    "{} at byte {position}: {what}; the namespace's segments are written again from the write-ahead log, which holds every frame since its creation",
                    file.display()
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        Ok((b.seen_next > floor).then_some(b))
    }

    /// The idempotency records of `ns`'s incarnation `epoch` by the publisher's key:
    /// sled's, with the pending ones (newer) over them.
    fn keys_of(
        &self,
        w: &super::log_store::Writing,
        ns: &str,
        epoch: &str,
    ) -> Result<Vec<(Vec<u8>, IdemRecord)>, StoreError> {
        let prefix = idem::prefix(ns, epoch);
        let mut keys: BTreeMap<Vec<u8>, IdemRecord> = BTreeMap::new();
        for (k, rec) in self.idem.with_prefix(&prefix)? {
            if !w.removals.contains(&k) {
                keys.insert(k[prefix.len()..].to_vec(), rec);
            }
        }
        for (k, rec) in &w.pending {
            if let Some(user) = k.strip_prefix(prefix.as_slice()) {
                keys.insert(user.to_vec(), *rec);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Files `keys` (by the publisher's key, at their old offsets) under `ns`'s incarnation
    /// `epoch`, each record's `first..=last` mapped by `map`; one it maps to `None` is
    /// dropped. Returns how many were kept and dropped. They reach sled at the checkpoint
    /// that ends the open.
    fn carry_keys(
        &self,
        ns: &str,
        epoch: &str,
        keys: Vec<(Vec<u8>, IdemRecord)>,
        map: impl Fn(u64, u64) -> Option<(u64, u64)>,
    ) -> (usize, usize) {
        let prefix = idem::prefix(ns, epoch);
        let mut w = lock(&self.writing);
        let (mut kept, mut dropped) = (0, 0);
        for (user, rec) in keys {
            match map(rec.first, rec.last) {
                Some((first, last)) => {
                    let mut k = prefix.clone();
                    k.extend_from_slice(&user);
                    w.removals.remove(&k);
                    w.pending.insert(k, IdemRecord { first, last, ..rec });
                    kept += 1;
                }
                None => dropped += 1,
            }
        }
        (kept, dropped)
    }

    fn salvage(&self, ns: &str, epoch: &str) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let dir = self.paths.log(ns, epoch);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let (records, damage) = SegmentLog::salvage(&dir)?;
        for d in damage {
            tracing::warn!(file = %d.file.display(), position = d.position, what = %d.what, "recover: damage stepped over");
        }
        Ok(records)
    }

    /// A new incarnation of `ns` at a fresh epoch holding `records` from offset `first`,
    /// made durable; replaces any live one (whose directory goes to the trash).
    fn rewrite(
        &self,
        ns: &str,
        first: u64,
        retention: Retention,
        created_ms: u64,
        records: &mut dyn FnMut() -> Result<Option<Vec<Vec<u8>>>, StoreError>,
    ) -> Result<Live, StoreError> {
        let mut live = self.incarnate(ns, new_epoch()?, first, retention)?;
        live.created_ms = created_ms;
        while let Some(chunk) = records()? {
            live.log.append(&chunk)?;
            live.next += chunk.len() as u64;
            live.bytes += chunk.iter().map(|r| r.len() as u64).sum::<u64>();
        }
        live.log.sync()?;
        let mut w = lock(&self.writing);
        if let Some(old) = self.write_live().insert(ns.to_owned(), live.clone()) {
            w.dead.push(self.paths.log(ns, &old.epoch));
        }
        w.tombstones.remove(ns);
        w.changed = true;
        Ok(live)
    }

    /// Applies one logged change at open.
    fn replay(
        &self,
        op: WalOp,
        place: Place,
        recover: bool,
        log_ends: Option<&LogEnds>,
        lost: &mut HashMap<String, Salvaged>,
        beyond: &mut HashMap<String, Beyond>,
    ) -> Result<(), StoreError> {
        let mut w = lock(&self.writing);
        w.changed = true;
        match op {
            WalOp::Create {
                ns,
                epoch,
                floor,
                retention,
                ..
            } => {
                if let Some(old) = self.write_live().remove(&ns) {
                    w.dead.push(self.paths.log(&ns, &old.epoch));
                }
                let dir = self.paths.log(&ns, &epoch);
                if dir.exists() {
                    // Everything in it is in the wal, and is written again below; how far
                    // it reached is kept (see `Beyond`), and with `recover` its records.
                    if let Some(b) =
                        self.created_beyond(&dir, &ns, &epoch, floor, recover, log_ends)?
                    {
                        beyond.insert(ns.clone(), b);
                    }
                    std::fs::remove_dir_all(&dir)?;
                }
                drop(w);
                let live = self.incarnate(&ns, epoch, floor, retention)?;
                let mut w = lock(&self.writing);
                w.written.insert(dir, Arc::clone(&live.log));
                w.tombstones.remove(&ns);
                self.write_live().insert(ns, live);
            }
            WalOp::Retain {
                ns,
                epoch,
                earliest,
            } => {
                if let Some(s) = lost.get_mut(&ns) {
                    s.earliest = s.earliest.max(earliest);
                    s.records = s.records.split_off(&s.earliest);
                    return Ok(());
                }
                let log = self
                    .read_live()
                    .get(&ns)
                    .filter(|l| l.epoch == epoch)
                    .map(|l| Arc::clone(&l.log));
                if let Some(log) = log {
                    let mut live = self.write_live();
                    if let Some(l) = live.get_mut(&ns).filter(|l| earliest > l.earliest) {
                        l.earliest = earliest.min(l.next);
                        l.bytes = log.bytes_from(l.earliest)?;
                    }
                }
            }
            WalOp::SetRetention {
                ns,
                epoch,
                retention,
                ..
            } => {
                if let Some(l) = self.write_live().get_mut(&ns).filter(|l| l.epoch == epoch) {
                    l.retention = retention;
                }
            }
            WalOp::Delete { ns, epoch, .. } => {
                let mut live = self.write_live();
                if let Some(l) = live.get(&ns).filter(|l| l.epoch == epoch) {
                    let mut tomb = l.entry(&ns);
                    tomb.deleted = true;
                    tomb.floor = l.next;
                    tomb.earliest = l.next;
                    w.dead.push(self.paths.log(&ns, &epoch));
                    w.tombstones.insert(ns.clone(), tomb);
                    live.remove(&ns);
                }
                if lost.get(&ns).is_some() {
                    lost.remove(&ns);
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
                let n = records.len() as u64;
                let numbered = |records: Vec<Vec<u8>>| {
                    records
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| (first + i as u64, r))
                        .collect()
                };
                let key_of = |key: Option<String>| {
                    key.map(|k| {
                        let rec = IdemRecord {
                            first,
                            last: first + n - 1,
                            written_ms: ts_ms,
                            request,
                        };
                        (k.into_bytes(), rec)
                    })
                };
                if let Some(s) = lost.get_mut(&ns) {
                    // Recovering this one: the wal's records join what was salvaged.
                    s.absorb(numbered(records));
                    s.keys.extend(key_of(idempotency_key));
                    return Ok(());
                }
                let Some(l) = self
                    .read_live()
                    .get(&ns)
                    .filter(|l| l.epoch == epoch)
                    .cloned()
                else {
                    return Ok(());
                };
                if first != l.next {
                    let file = wal::segment_path(&self.paths.wal(), place.seq);
                    let what = format!(
                        "an append to {ns:?} at offset {first}, but its log ends at {}",
                        l.next
                    );
                    if !recover {
                        return Err(StoreError::damaged(&file, place.position, what));
                    }
                    // Damaged frames before it held appends: the namespace gets a new
                    // epoch with every valid record, its log's and the wal's.
                    let why = format!("{} at byte {}: {what}", file.display(), place.position);
                    tracing::warn!("recover: {why}");
                    let mut s = Salvaged::from_live(&l, why);
                    s.keys = self.keys_of(&w, &ns, &epoch)?;
                    let mut from = l.earliest;
                    while let Some(chunk) = next_chunk(&l.log, &mut from, l.next)? {
                        s.absorb(chunk);
                    }
                    s.absorb(numbered(records));
                    s.keys.extend(key_of(idempotency_key));
                    if let Some(b) = beyond.remove(&ns).filter(|b| b.epoch == epoch) {
                        s.absorb(b.records);
                    }
                    let dir = self.paths.log(&ns, &epoch);
                    self.write_live().remove(&ns);
                    w.written.remove(&dir);
                    w.dead.push(dir);
                    lost.insert(ns, s);
                    return Ok(());
                }
                l.log.append(&records)?;
                let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
                if let Some(live) = self.write_live().get_mut(&ns) {
                    live.next = first + n;
                    live.bytes += bytes;
                }
                w.written
                    .insert(self.paths.log(&ns, &epoch), Arc::clone(&l.log));
                if let Some(key) = idempotency_key {
                    w.pending.insert(
                        idem::key(&ns, &epoch, &key),
                        IdemRecord {
                            first,
                            last: first + n - 1,
                            written_ms: ts_ms,
                            request,
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

impl Salvaged {
    fn empty(why: String) -> Salvaged {
        Salvaged {
            retention: Retention::default(),
            created_ms: super::now_ms(),
            next: 0,
            earliest: 0,
            records: BTreeMap::new(),
            keys: Vec::new(),
            why,
        }
    }

    fn from_entry(e: &NsEntry, records: Vec<(u64, Vec<u8>)>, why: String) -> Salvaged {
        let mut s = Salvaged {
            retention: e.retention,
            created_ms: e.created_ms,
            next: e.next,
            earliest: e.earliest,
            records: BTreeMap::new(),
            keys: Vec::new(),
            why,
        };
        s.absorb(records);
        s
    }

    fn from_live(l: &Live, why: String) -> Salvaged {
        Salvaged {
            retention: l.retention,
            created_ms: l.created_ms,
            next: l.next,
            earliest: l.earliest,
            records: BTreeMap::new(),
            keys: Vec::new(),
            why,
        }
    }

    fn absorb(&mut self, records: Vec<(u64, Vec<u8>)>) {
        for (offset, rec) in records {
            if offset >= self.earliest {
                self.next = self.next.max(offset + 1);
                self.records.entry(offset).or_insert(rec);
            }
        }
    }
}
