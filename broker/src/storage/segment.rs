//! A namespace incarnation's events in checksummed, append-only segment files
//! (`log/<namespace>/<epoch>/<first offset, 20 digits>.seg`). API skeleton: the bodies
//! follow in the next commits. The store (`log_store`) uses it; until it is wired in,
//! nothing outside the tests calls it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use super::StoreError;

/// Segment sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentConfig {
    /// A new segment starts when the active one would pass this many bytes.
    pub segment_bytes: u64,
}

/// What [`SegmentLog::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OpenReport {
    /// Bytes cut off the end of the last segment (a torn tail).
    pub torn_tail_bytes: u64,
    /// The file they were cut from.
    pub torn_tail_file: Option<PathBuf>,
}

/// Damage [`SegmentLog::salvage`] scanned past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// The file.
    pub file: PathBuf,
    /// Where the damage starts.
    pub position: u64,
    /// What is wrong there.
    pub what: String,
    /// It is a torn tail: nothing valid follows it in the last segment.
    pub torn_tail: bool,
}

/// The segments of one namespace incarnation.
pub(crate) struct SegmentLog {
    dir: PathBuf,
}

impl SegmentLog {
    /// Creates the directory of a new, empty log whose first offset is `first`.
    pub(crate) fn create(
        dir: &Path,
        ns: &str,
        epoch: &str,
        first: u64,
        cfg: SegmentConfig,
    ) -> Result<SegmentLog, StoreError> {
        let _ = (ns, epoch, first, cfg);
        todo!("segment log: create {}", dir.display())
    }

    /// Opens and verifies an existing log; `first_expected` is its first offset when the
    /// directory holds no segment yet.
    pub(crate) fn open(
        dir: &Path,
        ns: &str,
        epoch: &str,
        first_expected: u64,
        cfg: SegmentConfig,
    ) -> Result<(SegmentLog, OpenReport), StoreError> {
        let _ = (ns, epoch, first_expected, cfg);
        todo!("segment log: open {}", dir.display())
    }

    /// The offset after the last frame written.
    pub(crate) fn next(&self) -> u64 {
        todo!()
    }

    /// The base offset of the oldest segment kept.
    pub(crate) fn first(&self) -> u64 {
        todo!()
    }

    /// Appends records at offsets `next()..`; all or nothing.
    pub(crate) fn append(&self, records: &[Vec<u8>]) -> Result<(), StoreError> {
        let _ = records;
        todo!()
    }

    /// Drops every offset >= `next`.
    pub(crate) fn truncate(&self, next: u64) -> Result<(), StoreError> {
        let _ = next;
        todo!()
    }

    /// Makes everything appended durable and closes the active file.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// Records of offsets `from..until`.
    pub(crate) fn read(
        &self,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let _ = (from, until, max_events, max_bytes);
        todo!()
    }

    /// Record bytes of offsets >= `from`.
    pub(crate) fn bytes_from(&self, from: u64) -> Result<u64, StoreError> {
        let _ = from;
        todo!()
    }

    /// Deletes whole segments all of whose offsets are < `earliest`.
    pub(crate) fn remove_before(&self, earliest: u64) -> Result<(), StoreError> {
        let _ = earliest;
        todo!()
    }

    /// Every frame whose checksum holds, in offset order, and the damage scanned past.
    pub(crate) fn salvage(dir: &Path) -> Result<(Vec<(u64, Vec<u8>)>, Vec<Damage>), StoreError> {
        todo!("segment log: salvage {}", dir.display())
    }
}
