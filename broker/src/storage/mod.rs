//! The log store behind a trait: what the write path and the readers need from storage.
//!
//! ### Invariants every implementation keeps
//!
//! - Offsets in a namespace start at 0, go up by one per event, and are never handed out
//!   twice — not after a restart, and not after the namespace is deleted and created again
//!   (that gets a new epoch and continues after the last offset it ever had).
//! - [`Storage::append`] is atomic: all events of a batch, and the idempotency record that
//!   goes with them (the offsets and the digest of the request), are stored together or
//!   not at all.
//! - Retention only ever removes a prefix of the log, so what is left stays dense.
//! - After [`Storage::sync`] returns, everything appended before it survives `kill -9` and a
//!   power cut.
//!
//! Mutations are serialized inside each implementation; reads may run concurrently with
//! them from any thread. Every call may block on disk and must not run on an async worker.

pub(crate) mod fields;
pub(crate) mod idem;
pub mod log_store;
pub(crate) mod manifest;
pub mod open;
mod policy;
pub mod record;
pub mod redis;
pub(crate) mod segment;
pub mod wal;

use rewind_protocol::idempotency::RequestDigest;
use rewind_protocol::{Event, NewEvent};

pub use policy::{Durability, Retention, NO_LIMIT};

/// Makes the entries of directory `dir` durable (a file created, renamed or removed in it
/// survives a power cut once this returns): `fsync` of the directory itself, as POSIX
/// requires after `rename`/`unlink` (fsync(2)).
pub(crate) fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// What a namespace keeps about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsInfo {
    /// The namespace's name.
    pub name: String,
    /// Random id of this incarnation of the namespace's log (spec §2).
    pub epoch: String,
    /// Retention limits set on this namespace; unset limits fall back to the config.
    pub retention: Retention,
    /// The oldest offset still held (equal to `next` when the log is empty).
    pub earliest: u64,
    /// The offset the next append gets.
    pub next: u64,
    /// Bytes of stored records, as counted by `max_bytes` retention.
    pub bytes: u64,
}

impl NsInfo {
    /// Number of events held.
    pub fn events(&self) -> u64 {
        self.next - self.earliest
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The events were stored at `first..=last`.
    New {
        /// Offset of the first event.
        first: u64,
        /// Offset of the last event.
        last: u64,
    },
    /// The idempotency key was seen inside the window: nothing was stored, and these are
    /// the offsets the original request got.
    Duplicate {
        /// Offset of the first event of the original request.
        first: u64,
        /// Offset of the last event of the original request.
        last: u64,
        /// Whether the original was a batch (`None` for records written before shapes
        /// were kept).
        batch: Option<bool>,
    },
}

impl Appended {
    /// The offset of the first event, new or original.
    pub fn first(&self) -> u64 {
        match self {
            Appended::New { first, .. } | Appended::Duplicate { first, .. } => *first,
        }
    }
}

/// One append of [`Storage::append_all`]: the arguments of [`Storage::append_at_epoch`].
#[derive(Debug, Clone, Copy)]
pub struct AppendRequest<'a> {
    /// The namespace.
    pub ns: &'a str,
    /// The incarnation appended to (empty: whichever).
    pub epoch: &'a str,
    /// The end the appending broker has shown readers of that incarnation.
    pub min_next: u64,
    /// The events, all or nothing.
    pub events: &'a [NewEvent],
    /// Their timestamp, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The idempotency key, if any.
    pub idempotency: Option<IdempotencyKey<'a>>,
}

/// An idempotency key together with the oldest record time that still counts.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey<'a> {
    /// The key the publisher sent.
    pub key: &'a str,
    /// The digest of the request's events: a record of the key with another digest is
    /// a conflict ([`StoreError::IdempotencyConflict`]), not a retry.
    pub request: RequestDigest,
    /// The digest of the same events as versions before 2 computed it: a record with it
    /// is a retry too, so a retry across an upgrade is not a conflict.
    pub request_v1: RequestDigest,
    /// The request was a batch; kept so a retry is answered in the original's shape.
    pub batch: bool,
    /// Records written before this time (ms since the Unix epoch) are ignored.
    pub not_before_ms: u64,
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded store failed. Its message is in this one's, so it is not also given
    /// as the `source` (a chain printed with `{:#}` would say it twice).
    #[error("store: {0}")]
    Sled(::sled::Error),
    /// A file operation failed (its message is in this one's, as for `Sled`).
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// A file operation on a named file or directory failed (its message is in this one's,
    /// as for `Io`).
    #[error("i/o on {}: {err}", file.display())]
    IoAt {
        /// The file or directory.
        file: std::path::PathBuf,
        /// What the operating system said.
        err: std::io::Error,
    },
    /// Stored bytes do not decode.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A stored file fails its checks (a checksum, a header, offsets that are not dense)
    /// somewhere other than a torn tail. The broker refuses to start on it unless told to
    /// recover (`docs/storage.md`).
    #[error(
        "damaged file {} at byte {position}: {what}; start with --recover to keep every valid record (namespaces that lost events get a new epoch)",
        file.display()
    )]
    Damaged {
        /// The file.
        file: std::path::PathBuf,
        /// Byte position in it where the damage starts (at or before the damaged byte).
        position: u64,
        /// What is wrong there.
        what: String,
    },
    /// The directory holds a store in the format before segment files (events in sled),
    /// which this version does not read.
    #[error(
        "{} holds events in sled, as rewind stored them before segment files; this version \
         does not read that format: start on a new --data-dir",
        .0.display()
    )]
    Incompatible(std::path::PathBuf),
    /// Another process has the store open.
    #[error("the store in {0} is in use by another process")]
    Locked(std::path::PathBuf),
    /// The shared store (Redis) cannot be reached or cannot serve now (a connection
    /// refused, dropped or timed out; a server still loading, a read-only replica).
    /// Nothing was acknowledged; the same call may succeed later. The message starts
    /// with `not sent:` when no connection could be opened, and with `outcome unknown:`
    /// when a write was sent and no answer came (Redis may have applied it).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis refused a command (a script error, a wrong type under one of our keys).
    #[error("redis: {0}")]
    Redis(String),
    /// The namespace does not exist.
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
    /// The namespace exists already.
    #[error("namespace {0:?} exists already")]
    Exists(String),
    /// The idempotency key was used inside the window for a different request; nothing
    /// was stored.
    #[error("idempotency key used for a different request (offsets {first}..={last})")]
    IdempotencyConflict {
        /// Offset of the first event of the original request.
        first: u64,
        /// Offset of the last event of the original request.
        last: u64,
    },
}

impl From<::sled::Error> for StoreError {
    fn from(e: ::sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

impl StoreError {
    /// True when the error is the disk being full (`ENOSPC`, or a quota's `EDQUOT`), which
    /// every transport answers with `storage_full` (HTTP 507). sled re-creates I/O errors
    /// from their kind, losing the OS code, so the kind counts too.
    pub fn is_disk_full(&self) -> bool {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        let io = match self {
            StoreError::Io(e) | StoreError::IoAt { err: e, .. } => Some(e),
            StoreError::Sled(::sled::Error::Io(e)) => Some(e),
            _ => None,
        };
        // By name: `ErrorKind::StorageFull` is newer than the workspace's rust-version.
        io.is_some_and(|e| {
            matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
                || matches!(
                    format!("{:?}", e.kind()).as_str(),
                    "StorageFull" | "QuotaExceeded"
                )
        })
    }

    /// A [`StoreError::IoAt`]: `err` met on `file`.
    pub fn io_at(file: &std::path::Path, err: std::io::Error) -> StoreError {
        StoreError::IoAt {
            file: file.to_owned(),
            err,
        }
    }

    /// A [`StoreError::Damaged`] for `file` at `position`.
    pub fn damaged(file: &std::path::Path, position: u64, what: impl Into<String>) -> StoreError {
        StoreError::Damaged {
            file: file.to_owned(),
            position,
            what: what.into(),
        }
    }
}

/// The operations the broker needs from a log store.
pub trait Storage: Send + Sync + 'static {
    /// Every live namespace, sorted by name.
    fn namespaces(&self) -> Result<Vec<NsInfo>, StoreError>;

    /// One namespace, if it exists.
    fn info(&self, ns: &str) -> Result<Option<NsInfo>, StoreError>;

    /// Creates a namespace with a fresh epoch. Its offsets continue after any earlier
    /// incarnation. Fails with [`StoreError::Exists`] if it exists.
    fn create(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError>;

    /// Takes back the create of `ns` if it is the last change since the last sync and the
    /// namespace holds nothing (an auto-create whose first publish was refused: a refused
    /// request creates nothing). Returns whether it did.
    fn undo_create(&self, ns: &str) -> Result<bool, StoreError>;

    /// Replaces a namespace's own retention limits.
    fn set_retention(&self, ns: &str, retention: Retention) -> Result<NsInfo, StoreError>;

    /// Deletes a namespace and its events; false if it did not exist.
    fn delete(&self, ns: &str) -> Result<bool, StoreError>;

    /// Appends events with consecutive offsets, all or nothing, stamped with `ts_ms`. With
    /// an idempotency key seen inside its window: nothing is stored, and the answer is
    /// [`Appended::Duplicate`] when the request digests match (or the record predates
    /// digests), [`StoreError::IdempotencyConflict`] when they differ.
    fn append(
        &self,
        ns: &str,
        events: &[NewEvent],
        ts_ms: u64,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Appended, StoreError>;

    /// [`Storage::append`] to the incarnation of `ns` whose epoch is `epoch`, by a broker
    /// that has already made offsets below `min_next` visible in it: a shared store answers
    /// [`StoreError::NotFound`] and writes nothing when the namespace has another epoch
    /// there (another broker deleted and re-created it), or when its `next` went back below
    /// `min_next` under the same epoch (it lost a tail readers had seen), and then it gives
    /// the namespace a new epoch first, so those offsets never mean other events under the
    /// old one. A store only this broker writes has no other incarnation to meet.
    fn append_at_epoch(
        &self,
        ns: &str,
        epoch: &str,
        min_next: u64,
        events: &[NewEvent],
        ts_ms: u64,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Appended, StoreError> {
        let _ = (epoch, min_next);
        self.append(ns, events, ts_ms, idempotency)
    }

    /// Several [`Storage::append_at_epoch`]s, applied in order, each all or nothing on its
    /// own; answers one result per request, in order. A store that pays a round trip per
    /// call sends them together (Redis: one pipeline); the others apply them one by one.
    fn append_all(&self, requests: &[AppendRequest<'_>]) -> Vec<Result<Appended, StoreError>> {
        requests
            .iter()
            .map(|r| {
                self.append_at_epoch(r.ns, r.epoch, r.min_next, r.events, r.ts_ms, r.idempotency)
            })
            .collect()
    }

    /// Events with offsets in `from..until`, at most `max_events` of them and, past the
    /// first, at most `max_bytes` of records. Offsets below `earliest` are skipped.
    fn read(
        &self,
        ns: &str,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// [`Storage::read`] of the incarnation of `ns` whose epoch is `epoch` (empty:
    /// whichever): a shared store checks, in the same atomic step as the read, that the
    /// namespace is live under that epoch, and answers [`StoreError::NotFound`] when it is
    /// not (deleted, re-created with another epoch, or lost), so a reader never gets
    /// another incarnation's events, or an empty answer for a log that is gone, under the
    /// epoch it serves. A store only this broker writes has no other incarnation to meet:
    /// the broker marks its own deletes before anything else can be stored under the name.
    fn read_at_epoch(
        &self,
        ns: &str,
        epoch: &str,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let _ = epoch;
        self.read(ns, from, until, max_events, max_bytes)
    }

    /// Removes the oldest events that break `policy` at time `now_ms`; returns the new
    /// `earliest` if anything was removed.
    fn enforce_retention(
        &self,
        ns: &str,
        policy: &Retention,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// Forgets idempotency records written before `before_ms`; returns how many.
    fn prune_idempotency(&self, before_ms: u64) -> Result<usize, StoreError>;

    /// Makes everything appended so far survive a crash and a power cut. Cheap: this is
    /// the group commit.
    fn sync(&self) -> Result<(), StoreError>;

    /// Like [`Storage::sync`], and also folds whatever the implementation keeps on the
    /// side (a write-ahead log) into its main structures. Costlier; run it now and then.
    fn checkpoint(&self) -> Result<(), StoreError>;

    /// Relaxed mode: records durably, before it returns, that `ns` has writes that are
    /// not synced yet, so that a crash before they are gives it a new epoch on open.
    fn mark_dirty(&self, ns: &str) -> Result<(), StoreError>;

    /// Relaxed mode: forgets every dirty mark once a sync has made their writes durable
    /// (at open and at a clean shutdown).
    fn clear_dirty(&self) -> Result<(), StoreError>;

    /// Relaxed mode: forgets the dirty marks of the namespaces not in `keep`, once a sync
    /// has made their writes durable (the interval flush: `keep` holds the namespaces
    /// appended to since the flush before). Writes the marks only when one goes, so a
    /// namespace published steadily keeps its mark and costs no write. After an error a
    /// mark may or may not still be on disk; it is forgotten either way, so the next
    /// [`Storage::mark_dirty`] of that namespace writes it again.
    fn retain_dirty(&self, keep: &std::collections::HashSet<String>) -> Result<(), StoreError>;

    /// True from a failed write, sync or checkpoint (a full disk, an I/O error) until the
    /// next successful checkpoint, which writes and syncs new files (a small write can
    /// succeed in a partly filled page while the disk is still full). `/readyz` reports it.
    fn is_failing(&self) -> bool {
        false
    }

    /// Asks the store now whether it can take writes, for `/readyz`: afterwards
    /// [`Storage::is_failing`] says so. Redis: `ROLE` on a pooled connection (a read-only
    /// replica cannot). Blocking: call it off the async workers.
    fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the last [`Storage::sync`] reached the replicas it was asked to (Redis
    /// `WAIT`); true for a store without replicas.
    fn last_sync_replicated(&self) -> bool {
        true
    }

    /// True when other brokers write the same store (Redis): namespaces may appear, move
    /// and go without this broker's writer, which then asks the store (`docs/cluster.md`).
    fn is_shared(&self) -> bool {
        false
    }

    /// A shared store: true, once per broker, when the store is found to have lost its
    /// data since this broker last looked (a Redis restart without persistence, a
    /// `FLUSHALL`, a failover to a replica without the tail). The namespaces this broker
    /// knew then get a new epoch.
    fn lost_data(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// A shared store: records `defaults` (the broker's configured default retention) as
    /// the one every broker of the store applies, unless one is recorded already, and
    /// refuses defaults that differ from the recorded ones ([`StoreError::Redis`], naming
    /// both and how to change them): brokers that trim one shared log must agree on the
    /// policy (`docs/cluster.md`, "Retention"). A store of one broker records nothing.
    fn claim_retention_defaults(&self, _defaults: &Retention) -> Result<(), StoreError> {
        Ok(())
    }

    /// A shared store: true when incarnation `epoch` of `ns` was deleted (by any broker),
    /// false when it is live, was replaced without a delete (the store lost its data or
    /// went back in time), or is not known. A broker that finds its incarnation replaced
    /// asks, so its readers are told `deleted` rather than `epoch`.
    fn was_deleted(&self, _ns: &str, _epoch: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// A fresh random epoch: 16 hex digits.
pub fn new_epoch() -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
    Ok(format!("{:016x}", u64::from_be_bytes(bytes)))
}

/// Milliseconds since the Unix epoch, by the broker's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod contract;
#[cfg(test)]
mod store_tests;

#[cfg(test)]
mod tests {
    use super::StoreError;

    /// `ENOSPC` is a full disk whichever way it arrives: with the OS code, or re-created
    /// from its kind alone (as sled does), so every transport answers `storage_full`
    /// (the mapping is tested in `engine::error`).
    #[test]
    fn a_full_disk_is_recognised_with_or_without_its_os_code() {
        let raw = || std::io::Error::from_raw_os_error(28);
        assert!(StoreError::Io(raw()).is_disk_full());
        let kind_only = std::io::Error::new(raw().kind(), "no space");
        assert!(kind_only.raw_os_error().is_none());
        assert!(StoreError::Sled(::sled::Error::Io(kind_only)).is_disk_full());
        assert!(StoreError::Io(std::io::Error::from_raw_os_error(122)).is_disk_full());
        assert!(!StoreError::Io(std::io::Error::from_raw_os_error(5)).is_disk_full());
    }
}
