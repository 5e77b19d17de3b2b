//! The write-ahead log that makes every change durable between checkpoints.
//!
//! Every change — append, namespace create, retention change, delete — is written here
//! first; a durable group commit is one `fdatasync` of the current segment. The event
//! segment files, the idempotency store and the `manifest` are synced only by checkpoints,
//! which run beside the writer (see [`super::log_store`]).
//!
//! The write-ahead log is a directory of segments named by a growing sequence number. A checkpoint
//! starts a new segment, syncs everything else, writes the manifest (which names the new
//! segment as where replay starts), and then deletes the segments before it. On open, the
//! segments from the manifest's on are read in order and replayed.
//!
//! Segment format: a sequence of frames `len: u32 LE | crc32(body): u32 LE | body`, where
//! `body` is one [`WalOp`] (see [`encode`]). A frame that fails its checks at the end of
//! the last segment, with no valid frame after it, is a torn tail: it was never
//! acknowledged, because its `fdatasync` had not returned, and it is cut off. A bad frame
//! anywhere else — before valid frames, or in an older segment — is damage
//! ([`StoreError::Damaged`]), never silently dropped.
//!
//! Preallocation: a checkpoint zero-fills and syncs the next segment ([`Wal::prepare_spare`],
//! outside the writer's lock) before it rotates into it, so a group commit's `fdatasync`
//! overwrites blocks that exist instead of growing the file, which needs no metadata
//! journal commit. A frame's length is never 0 (its body holds at least the operation's
//! byte), so a header with length 0 marks the end of a segment's frames. In an older
//! segment (synced whole before the next one was started) every byte after it must be 0:
//! anything else is damage. In the newest segment, what follows the last valid frame —
//! zeros and then other bytes included — is a torn tail unless valid frames follow it
//! (see [`valid_frames_after`]): the pages of one write persist in any order on a power
//! cut, so the page holding a frame's header can still be zeros while a later page of the
//! same, never acknowledged, write holds its body. A segment that outgrows its
//! preallocation keeps growing as before.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::fields::{put_retention, put_str, FieldDamage, Reader};
use super::Retention;
use super::{sync_dir, StoreError};

/// One logged change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalOp {
    /// Events appended to a namespace.
    Append {
        /// The namespace.
        ns: String,
        /// The incarnation the events belong to.
        epoch: String,
        /// Offset of the first event.
        first: u64,
        /// The idempotency key that went with the append, if any.
        idempotency_key: Option<String>,
        /// The digest of the events of the request the key came with (see
        /// [`rewind_protocol::idempotency::RequestDigest`]) and whether it was a batch;
        /// `None` in frames written before they were kept.
        request: Option<([u8; 32], bool)>,
        /// The append's timestamp.
        ts_ms: u64,
        /// The encoded events (see [`super::record`]), in offset order.
        records: Vec<Vec<u8>>,
    },
    /// A namespace created.
    Create {
        /// Sequence number of this namespace change (see [`WalOp::lsn`]).
        lsn: u64,
        /// The namespace.
        ns: String,
        /// Its new epoch.
        epoch: String,
        /// Its first offset.
        floor: u64,
        /// Its own retention limits.
        retention: Retention,
    },
    /// A namespace's retention limits replaced.
    SetRetention {
        /// Sequence number of this namespace change.
        lsn: u64,
        /// The namespace.
        ns: String,
        /// The incarnation it applies to.
        epoch: String,
        /// The new limits.
        retention: Retention,
    },
    /// Retention removed a namespace's events below `earliest`.
    Retain {
        /// The namespace.
        ns: String,
        /// The incarnation it applies to.
        epoch: String,
        /// The new oldest offset held.
        earliest: u64,
    },
    /// A namespace deleted.
    Delete {
        /// Sequence number of this namespace change.
        lsn: u64,
        /// The namespace.
        ns: String,
        /// The incarnation deleted.
        epoch: String,
    },
}

impl WalOp {
    /// The sequence number of a namespace change (0 for appends). sled keeps the number
    /// of the last change it applied to each namespace, so replay can tell which logged
    /// changes it already has.
    pub fn lsn(&self) -> u64 {
        match self {
            WalOp::Append { .. } | WalOp::Retain { .. } => 0,
            WalOp::Create { lsn, .. }
            | WalOp::SetRetention { lsn, .. }
            | WalOp::Delete { lsn, .. } => *lsn,
        }
    }
}

/// An append without a request digest: written by older versions, still read.
const APPEND: u8 = 1;
const CREATE: u8 = 2;
const SET_RETENTION: u8 = 3;
const DELETE: u8 = 4;
/// An append with a request digest after its idempotency key: a byte (0: none, 1: one
/// event, 2: a batch), then, unless 0, the 32-byte digest.
const APPEND_WITH_DIGEST: u8 = 5;
const RETAIN: u8 = 6;

/// Appends `op` to `out` as one checksummed frame.
pub fn encode(out: &mut Vec<u8>, op: &WalOp) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    match op {
        WalOp::Append {
            ns,
            epoch,
            first,
            idempotency_key,
            request,
            ts_ms,
            records,
        } => {
            out.push(APPEND_WITH_DIGEST);
            put_str(out, ns);
            put_str(out, epoch);
            out.extend_from_slice(&first.to_le_bytes());
            put_str(out, idempotency_key.as_deref().unwrap_or(""));
            match request {
                Some((digest, batch)) => {
                    out.push(if *batch { 2 } else { 1 });
                    out.extend_from_slice(digest);
                }
                None => out.push(0),
            }
            out.extend_from_slice(&ts_ms.to_le_bytes());
            out.extend_from_slice(&(records.len() as u32).to_le_bytes());
            for rec in records {
                out.extend_from_slice(&(rec.len() as u32).to_le_bytes());
                out.extend_from_slice(rec);
            }
        }
        WalOp::Create {
            lsn,
            ns,
            epoch,
            floor,
            retention,
        } => {
            out.push(CREATE);
            out.extend_from_slice(&lsn.to_le_bytes());
            put_str(out, ns);
            put_str(out, epoch);
            out.extend_from_slice(&floor.to_le_bytes());
            put_retention(out, retention);
        }
        WalOp::SetRetention {
            lsn,
            ns,
            epoch,
            retention,
        } => {
            out.push(SET_RETENTION);
            out.extend_from_slice(&lsn.to_le_bytes());
            put_str(out, ns);
            put_str(out, epoch);
            put_retention(out, retention);
        }
        WalOp::Retain {
            ns,
            epoch,
            earliest,
        } => {
            out.push(RETAIN);
            put_str(out, ns);
            put_str(out, epoch);
            out.extend_from_slice(&earliest.to_le_bytes());
        }
        WalOp::Delete { lsn, ns, epoch } => {
            out.push(DELETE);
            out.extend_from_slice(&lsn.to_le_bytes());
            put_str(out, ns);
            put_str(out, epoch);
        }
    }
    let body_len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a frame's body; `None` for anything that is not a whole operation.
fn decode_body(body: &[u8]) -> Option<WalOp> {
    decode_fields(body).ok()
}

fn decode_fields(body: &[u8]) -> Result<WalOp, FieldDamage> {
    let unknown = |what: &str| Err((0, what.to_owned()));
    let mut r = Reader::new(body);
    let op = match r.u8()? {
        kind @ (APPEND | APPEND_WITH_DIGEST) => {
            let ns = r.string()?;
            let epoch = r.string()?;
            let first = r.u64()?;
            let idem = r.string()?;
            let request = match kind {
                APPEND_WITH_DIGEST => match r.u8()? {
                    0 => None,
                    shape @ (1 | 2) => {
                        let digest = r.take(32)?.try_into().map_err(|_| (0, String::new()))?;
                        Some((digest, shape == 2))
                    }
                    _ => return unknown("request shape"),
                },
                _ => None,
            };
            let ts_ms = r.u64()?;
            let count = r.u32()? as usize;
            let mut records = Vec::with_capacity(count.min(body.len()));
            for _ in 0..count {
                let n = r.u32()? as usize;
                records.push(r.take(n)?.to_vec());
            }
            WalOp::Append {
                ns,
                epoch,
                first,
                idempotency_key: (!idem.is_empty()).then_some(idem),
                request,
                ts_ms,
                records,
            }
        }
        CREATE => WalOp::Create {
            lsn: r.u64()?,
            ns: r.string()?,
            epoch: r.string()?,
            floor: r.u64()?,
            retention: r.retention()?,
        },
        SET_RETENTION => WalOp::SetRetention {
            lsn: r.u64()?,
            ns: r.string()?,
            epoch: r.string()?,
            retention: r.retention()?,
        },
        DELETE => WalOp::Delete {
            lsn: r.u64()?,
            ns: r.string()?,
            epoch: r.string()?,
        },
        RETAIN => WalOp::Retain {
            ns: r.string()?,
            epoch: r.string()?,
            earliest: r.u64()?,
        },
        _ => return unknown("operation"),
    };
    if !r.at_end() {
        return unknown("bytes after the operation");
    }
    Ok(op)
}

/// The frame at `pos`, if one starts there whose checksum matches and whose body
/// decodes; with its length.
fn frame_at(bytes: &[u8], pos: usize) -> Option<(WalOp, usize)> {
    let head = bytes.get(pos..pos.checked_add(8)?)?;
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let (len, crc) = (word(0) as usize, word(4));
    let body = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    decode_body(body).map(|op| (op, 8 + len))
}

/// Decodes every whole, intact frame; returns them and the length of the good prefix.
#[cfg(test)]
pub(crate) fn decode_all(bytes: &[u8]) -> (Vec<WalOp>, usize) {
    let (ops, good) = decode_placed(bytes);
    (ops.into_iter().map(|(op, _)| op).collect(), good)
}

/// An operation and the byte position of its frame.
type Positioned = (WalOp, usize);

/// [`decode_all`] with each frame's byte position.
fn decode_placed(bytes: &[u8]) -> (Vec<Positioned>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((op, len)) = frame_at(bytes, pos) {
        out.push((op, pos));
        pos += len;
    }
    (out, pos)
}

/// The length of `bytes` without its trailing zeros: everything from there on is
/// preallocated (or never written) space, not data.
pub(crate) fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// The first byte position after `bad` (where a frame fails its checks) from which valid
/// frames follow each other up to the end of the data (only zeros after them, see
/// [`data_end`]). With one, the bad frame is damage, not a torn tail: a torn write only
/// ever loses the end of what was written. (A chain that must reach the end keeps a
/// payload that happens to hold a frame's bytes, inside a torn last frame, from passing
/// for one.)
///
/// Cost: frames cannot be followed across zeros or a torn frame, so every byte position
/// from `bad` to the end of the data is tried as a frame start. A position whose length
/// field points past the data is refused after reading 8 bytes, one inside zeros after
/// reading 8 zeros (length 0 never decodes), and only a length that fits costs a CRC over
/// that many bytes; the trailing zeros of a preallocated segment are never scanned. In
/// the newest segment the range is the bytes written since the last sync that persisted
/// (a torn write), so the scan is bounded by one group commit's bytes.
pub fn valid_frames_after(bytes: &[u8], bad: usize) -> Option<usize> {
    let end = data_end(bytes);
    (bad + 1..end).find(|&p| {
        let mut pos = p;
        while let Some((_, len)) = frame_at(bytes, pos) {
            pos += len;
        }
        pos > p && pos >= end
    })
}

/// The next position after `bad`, before `end`, where any valid frame starts (for salvage).
fn next_valid_frame(bytes: &[u8], bad: usize, end: usize) -> Option<usize> {
    (bad + 1..end).find(|&p| frame_at(bytes, p).is_some())
}

/// Whether a frame header with length 0 (the end of a preallocated segment's frames)
/// starts at `pos`.
fn end_marker_at(bytes: &[u8], pos: usize) -> bool {
    bytes.get(pos..pos + 4) == Some(&[0u8; 4][..])
}

/// Damage found, and stepped over, while salvaging a segment for `--recover`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The damaged file.
    pub file: PathBuf,
    /// Where the damage starts.
    pub position: u64,
    /// Bytes skipped (up to the next valid frame or the end of the file).
    pub bytes: u64,
}

/// Every valid frame of a segment with its byte position, stepping over damage byte by
/// byte; with the damaged ranges, the last of which may be a torn tail (it reaches the end
/// of the data). Trailing zeros (preallocated space) are not damage.
fn salvage(bytes: &[u8]) -> (Vec<Positioned>, Vec<(usize, usize)>) {
    let mut ops = Vec::new();
    let mut bad = Vec::new();
    let mut pos = 0;
    let end = data_end(bytes);
    while pos < end {
        if let Some((op, len)) = frame_at(bytes, pos) {
            ops.push((op, pos));
            pos += len;
            continue;
        }
        let resume = next_valid_frame(bytes, pos, end).unwrap_or(end);
        bad.push((pos, resume - pos));
        pos = resume;
    }
    (ops, bad)
}

/// The file in the write-ahead log's directory that a checkpoint zero-fills before it
/// rotates into it (see [`Wal::prepare_spare`]); not a segment. Open deletes a leftover.
pub(crate) const SPARE: &str = "next-segment.spare";

/// Zero-filled, synced space for the next segment, made by [`Wal::prepare_spare`].
#[derive(Debug)]
pub struct Spare {
    path: PathBuf,
    bytes: u64,
}

/// The file of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io_at(dir, e))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// A place in the write-ahead log: the segment and the length written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    seq: u64,
    len: u64,
}

/// Where a frame was read: its segment's number and the frame's byte position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The segment's number (its file: [`segment_path`]).
    pub seq: u64,
    /// Byte position of the frame's first byte.
    pub position: u64,
}

/// What [`Wal::open`] read.
#[derive(Debug, Default)]
pub struct Opened {
    /// Every intact operation, oldest first, with where it was read.
    pub ops: Vec<(WalOp, Place)>,
    /// With `recover`: the damage stepped over (a torn tail is not in it).
    pub damage: Vec<Damage>,
    /// Bytes of a torn tail cut off the last segment.
    pub torn_tail_bytes: u64,
    /// The segment file and byte position where a torn tail was cut off.
    pub torn_tail_at: Option<(PathBuf, u64)>,
    /// The newest segment file read that holds anything (else the oldest read) and the
    /// byte position where its valid frames end (`None` when there was none).
    pub end: Option<(PathBuf, u64)>,
}

/// The open write-ahead log: the segment being written, and the directory of them all.
pub struct Wal {
    dir: PathBuf,
    file: File,
    seq: u64,
    /// Bytes written to the current segment.
    len: u64,
    /// Bytes of the current segment that were zero-filled before it was used (0: none).
    prealloc: u64,
}

impl Wal {
    /// Opens the write-ahead log in `dir` (creating it) and returns every intact operation in the
    /// segments numbered `from` and up, oldest first; older segments (left by a checkpoint
    /// that stopped before deleting them) are deleted. Writing continues in a new segment.
    ///
    /// Zeros after the valid frames are preallocated space. In the last segment, whatever
    /// follows the valid frames (a frame that fails its checks, or zeros and then other
    /// bytes) is a torn tail, cut off, unless valid frames follow it to the end of the data
    /// ([`valid_frames_after`]). In an older segment anything but zeros after the valid
    /// frames is damage. Damage is [`StoreError::Damaged`] naming the segment and the byte
    /// where its valid frames end; with `recover`, it is stepped over and reported in
    /// [`Opened::damage`] instead.
    pub fn open(dir: &Path, from: u64, recover: bool) -> Result<(Wal, Opened), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io_at(dir, e))?;
        Self::remove_before(dir, from)?;
        let seqs = segments(dir)?;
        let mut opened = Opened::default();
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| StoreError::io_at(&path, e))?;
            let last = i + 1 == seqs.len();
            let (ops, good) = decode_placed(&bytes);
            let data = data_end(&bytes);
            // An empty segment (each start begins one; a preallocated one holds only
            // zeros) is named only when no segment before it holds anything.
            if data > 0 || opened.end.is_none() {
                opened.end = Some((path.clone(), good as u64));
            }
            let placed: Vec<(WalOp, Place)> = ops
                .into_iter()
                .map(|(op, position)| {
                    let position = position as u64;
                    (op, Place { seq, position })
                })
                .collect();
            if good >= data {
                opened.ops.extend(placed);
                continue;
            }
            // Main's torn-tail rule, also across zeros: the last segment may end in a
            // torn write whose header page was lost (zeros) while a later page of it
            // persisted. Only a valid frame after it makes it damage (that frame may have
            // been acknowledged). Older segments were synced whole before the next began.
            let torn = last && valid_frames_after(&bytes, good).is_none();
            if torn {
                opened.ops.extend(placed);
                tracing::warn!(
                    file = %path.display(),
                    position = good,
                    discarded = data - good,
                    "write-ahead log ends in a torn frame; cutting it off"
                );
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good as u64)?;
                f.sync_data()?;
                opened.torn_tail_bytes = (data - good) as u64;
                opened.torn_tail_at = Some((path.clone(), good as u64));
                continue;
            }
            if !recover {
                let what = if last {
                    "a write-ahead log frame fails its checksum, or zeros end the frames, and valid frames follow"
                } else if end_marker_at(&bytes, good) {
                    "non-zero bytes after the end of a write-ahead log segment's frames (a frame length of 0) before the newest segment"
                } else {
                    "a write-ahead log frame fails its checksum before the newest segment"
                };
                return Err(StoreError::damaged(&path, good as u64, what));
            }
            let (ops, bad) = salvage(&bytes);
            opened.ops.extend(ops.into_iter().map(|(op, position)| {
                let place = Place {
                    seq,
                    position: position as u64,
                };
                (op, place)
            }));
            for (position, len) in bad {
                tracing::warn!(
                    file = %path.display(),
                    position,
                    bytes = len,
                    "recover: stepped over damaged write-ahead log bytes"
                );
                opened.damage.push(Damage {
                    file: path.clone(),
                    position: position as u64,
                    bytes: len as u64,
                });
            }
        }
        let seq = seqs.last().map_or(from.max(1), |s| s + 1);
        let file = Self::create_segment(dir, seq)?;
        Ok((
            Wal {
                dir: dir.to_owned(),
                file,
                seq,
                len: 0,
                prealloc: 0,
            },
            opened,
        ))
    }

    fn create_segment(dir: &Path, seq: u64) -> Result<File, StoreError> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io_at(&path, e))?;
        sync_dir(dir)?;
        Ok(file)
    }

    /// Writes `bytes` zeros to the spare file in `dir` ([`SPARE`], replacing one left
    /// there) and `fdatasync`s it, so that the segment [`Wal::rotate`] makes of it has its
    /// blocks written and its size on disk. Blocks on the disk for as long as that takes:
    /// call it outside the writer's lock.
    pub fn prepare_spare(dir: &Path, bytes: u64) -> Result<Spare, StoreError> {
        const CHUNK: usize = 64 << 10;
        let path = dir.join(SPARE);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StoreError::io_at(&path, e))?;
        let zeros = vec![0u8; CHUNK];
        let mut left = bytes;
        let filled = (|| {
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                file.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            file.sync_data()
        })();
        if let Err(e) = filled {
            // A full disk: the half-filled spare would only take more of it.
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::io_at(&path, e));
        }
        Ok(Spare { path, bytes })
    }

    /// Bytes written to the current segment.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// Where the write-ahead log ends now.
    pub fn mark(&self) -> Mark {
        Mark {
            seq: self.seq,
            len: self.len,
        }
    }

    /// Writes frames to the current segment (into the page cache; [`Wal::sync`] makes them
    /// durable). On an error the segment is cut back to where it was, so a refused write
    /// leaves nothing.
    pub fn write(&mut self, frames: &[u8]) -> Result<(), StoreError> {
        if let Err(e) = self.file.write_all_at(frames, self.len) {
            let tried = self.len + frames.len() as u64;
            if let Err(cut) = self.clear_from(self.len, tried) {
                tracing::error!(error = %cut, "could not take back a failed write-ahead log write");
            }
            return Err(e.into());
        }
        self.len += frames.len() as u64;
        Ok(())
    }

    /// Cuts the current segment back to `mark` (which must be in it, or the wal was
    /// rotated since and nothing after the mark is in the current segment).
    pub fn cut_back(&mut self, mark: Mark) -> Result<(), StoreError> {
        let len = if mark.seq == self.seq { mark.len } else { 0 };
        self.clear_from(len, self.len)
    }

    /// Takes back the bytes `len..written` of the current segment: the file is cut to
    /// `len`, but not below its preallocation, whose part is overwritten with zeros (so
    /// that only zeros follow the end of the frames, see the module's format).
    fn clear_from(&mut self, len: u64, written: u64) -> Result<(), StoreError> {
        if self.prealloc == 0 || written > self.prealloc {
            self.file.set_len(len.max(self.prealloc))?;
        }
        let zero_to = written.min(self.prealloc);
        if len < zero_to {
            let zeros = vec![0u8; (zero_to - len) as usize];
            self.file.write_all_at(&zeros, len)?;
        }
        self.len = len;
        Ok(())
    }

    /// `fdatasync` of the current segment: everything written survives a power cut.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data()?;
        Ok(())
    }

    /// Syncs the current segment and starts a new one — the `spare` renamed, when there
    /// is one, else an empty file; returns the sequence number below which segments may be
    /// deleted once everything in them is checkpointed.
    pub fn rotate(&mut self, spare: Option<Spare>) -> Result<u64, StoreError> {
        self.file.sync_data()?;
        let next = self.seq + 1;
        let (file, prealloc) = match spare {
            Some(spare) => {
                let path = segment_path(&self.dir, next);
                std::fs::rename(&spare.path, &path).map_err(|e| StoreError::io_at(&path, e))?;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io_at(&path, e))?;
                sync_dir(&self.dir)?;
                (file, spare.bytes)
            }
            None => (Self::create_segment(&self.dir, next)?, 0),
        };
        self.file = file;
        self.seq = next;
        self.len = 0;
        self.prealloc = prealloc;
        Ok(next)
    }

    /// Deletes every segment numbered below `seq`.
    pub fn remove_before(dir: &Path, seq: u64) -> Result<(), StoreError> {
        let mut removed = false;
        for old in segments(dir)?.into_iter().filter(|s| *s < seq) {
            std::fs::remove_file(segment_path(dir, old))?;
            removed = true;
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn retention() -> impl Strategy<Value = Retention> {
        (
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(max_events, max_bytes, max_age_secs)| Retention {
                max_events,
                max_bytes,
                max_age_secs,
            })
    }

    fn op() -> impl Strategy<Value = WalOp> {
        let ns = "[a-z.]{1,20}";
        let epoch = "[0-9a-f]{16}";
        prop_oneof![
            (
                ns,
                epoch,
                any::<u64>(),
                prop::option::of("[ -~]{1,30}"),
                prop::option::of(any::<([u8; 32], bool)>()),
                any::<u64>(),
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..5)
            )
                .prop_map(
                    |(ns, epoch, first, idempotency_key, request, ts_ms, records)| {
                        WalOp::Append {
                            ns,
                            epoch,
                            first,
                            idempotency_key,
                            request,
                            ts_ms,
                            records,
                        }
                    }
                ),
            (any::<u64>(), ns, epoch, any::<u64>(), retention()).prop_map(
                |(lsn, ns, epoch, floor, retention)| WalOp::Create {
                    lsn,
                    ns,
                    epoch,
                    floor,
                    retention
                }
            ),
            (any::<u64>(), ns, epoch, retention()).prop_map(|(lsn, ns, epoch, retention)| {
                WalOp::SetRetention {
                    lsn,
                    ns,
                    epoch,
                    retention,
                }
            }),
            (any::<u64>(), ns, epoch).prop_map(|(lsn, ns, epoch)| WalOp::Delete { lsn, ns, epoch }),
            (ns, epoch, any::<u64>()).prop_map(|(ns, epoch, earliest)| WalOp::Retain {
                ns,
                epoch,
                earliest
            }),
        ]
    }

    fn ops_of(opened: &Opened) -> Vec<WalOp> {
        opened.ops.iter().map(|(op, _)| op.clone()).collect()
    }

    /// FIX9 item 4: each frame read keeps its segment and byte position, also when
    /// recovery steps over damage.
    #[test]
    fn frames_keep_their_byte_positions() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<Vec<u8>> = ["a", "bb", "ccc"]
            .iter()
            .map(|ns| encode_all(&[delete(ns)]))
            .collect();
        let mut bytes = frames.concat();
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(segment_path(dir.path(), 7), &bytes).unwrap();
        let (_, opened) = Wal::open(dir.path(), 0, false).unwrap();
        let places: Vec<Place> = opened.ops.iter().map(|(_, p)| *p).collect();
        let at = |i: usize| frames[..i].iter().map(Vec::len).sum::<usize>() as u64;
        assert_eq!(
            places,
            (0..3)
                .map(|i| Place {
                    seq: 7,
                    position: at(i)
                })
                .collect::<Vec<_>>()
        );
        // Damage in the second frame: recovery keeps the third at its own position.
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        bytes[at(1) as usize + 9] ^= 0x11;
        std::fs::write(segment_path(dir.path(), 7), &bytes).unwrap();
        let (_, opened) = Wal::open(dir.path(), 0, true).unwrap();
        let places: Vec<Place> = opened.ops.iter().map(|(_, p)| *p).collect();
        assert_eq!(
            places,
            [
                Place {
                    seq: 7,
                    position: 0
                },
                Place {
                    seq: 7,
                    position: at(2)
                }
            ]
        );
    }

    fn encode_all(ops: &[WalOp]) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            encode(&mut out, op);
        }
        out
    }

    proptest! {
        #[test]
        fn round_trip(ops in prop::collection::vec(op(), 0..6)) {
            let bytes = encode_all(&ops);
            let (back, good) = decode_all(&bytes);
            prop_assert_eq!(good, bytes.len());
            prop_assert_eq!(back, ops);
        }

        #[test]
        fn a_torn_tail_keeps_exactly_the_whole_frames(ops in prop::collection::vec(op(), 1..6), cut in any::<prop::sample::Index>()) {
            let bytes = encode_all(&ops);
            let cut = cut.index(bytes.len());
            let (back, good) = decode_all(&bytes[..cut]);
            prop_assert!(good <= cut);
            prop_assert_eq!(&back[..], &ops[..back.len()]);
            prop_assert_eq!(encode_all(&back).len(), good);
        }

        #[test]
        fn a_flipped_bit_is_never_read_as_a_different_op(ops in prop::collection::vec(op(), 1..4), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = encode_all(&ops);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let (back, _) = decode_all(&bytes);
            for (got, want) in back.iter().zip(&ops) {
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn an_append_written_before_digests_still_reads() {
        let mut body = vec![APPEND];
        put_str(&mut body, "a");
        put_str(&mut body, "e");
        body.extend_from_slice(&7u64.to_le_bytes());
        put_str(&mut body, "key");
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"hi");
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let (ops, good) = decode_all(&frame);
        assert_eq!(good, frame.len());
        assert_eq!(
            ops,
            [WalOp::Append {
                ns: "a".into(),
                epoch: "e".into(),
                first: 7,
                idempotency_key: Some("key".into()),
                request: None,
                ts_ms: 9,
                records: vec![b"hi".to_vec()],
            }]
        );
    }

    fn delete(ns: &str) -> WalOp {
        WalOp::Delete {
            lsn: 1,
            ns: ns.into(),
            epoch: "e".into(),
        }
    }

    #[test]
    fn segments_rotate_replay_in_order_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        {
            let (mut wal, opened) = Wal::open(&wal_dir, 0, false).unwrap();
            assert!(ops_of(&opened).is_empty());
            let mut frames = Vec::new();
            encode(&mut frames, &delete("a"));
            wal.write(&frames).unwrap();
            let cut = wal.rotate(None).unwrap();
            let mut frames = Vec::new();
            encode(&mut frames, &delete("b"));
            frames.extend_from_slice(&[9, 0, 0, 0, 1]);
            wal.write(&frames).unwrap();
            wal.sync().unwrap();
            assert_eq!(segments(&wal_dir).unwrap().len(), 2);
            let (_, opened) = Wal::open(&wal_dir, 0, false).unwrap();
            assert_eq!(ops_of(&opened), [delete("a"), delete("b")]);
            assert_eq!(opened.torn_tail_bytes, 5);
            Wal::remove_before(&wal_dir, cut).unwrap();
        }
        let (_, opened) = Wal::open(&wal_dir, 0, false).unwrap();
        assert_eq!(ops_of(&opened), [delete("b")]);
        // Replay starts where the manifest says: older segments are gone.
        let (_, opened) = Wal::open(&wal_dir, 100, false).unwrap();
        assert!(ops_of(&opened).is_empty());
        assert_eq!(segments(&wal_dir).unwrap(), [100]);
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        std::fs::write(segment_path(&wal_dir, 1), [1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        std::fs::write(segment_path(&wal_dir, 2), []).unwrap();
        match Wal::open(&wal_dir, 0, false) {
            Err(StoreError::Damaged { file, position, .. }) => {
                assert_eq!(file, segment_path(&wal_dir, 1));
                assert_eq!(position, 0);
            }
            other => panic!("expected Damaged, got {:?}", other.map(|_| ())),
        }
    }

    /// Writes `bytes` as the only (so the newest) segment and opens the write-ahead log.
    fn open_one(bytes: &[u8], recover: bool) -> (Result<Opened, StoreError>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        std::fs::write(segment_path(&wal_dir, 1), bytes).unwrap();
        let opened = Wal::open(&wal_dir, 0, recover).map(|(_, o)| o);
        let left = std::fs::read(segment_path(&wal_dir, 1)).unwrap();
        (opened, left)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// A cut anywhere is a torn tail: the whole frames before it are kept, the rest is
        /// cut off, and nothing is refused.
        #[test]
        fn a_cut_newest_segment_is_a_torn_tail(ops in prop::collection::vec(op(), 1..5), cut in any::<prop::sample::Index>()) {
            let bytes = encode_all(&ops);
            let cut = cut.index(bytes.len());
            let (opened, left) = open_one(&bytes[..cut], false);
            let opened = opened.unwrap();
            let kept = encode_all(&ops_of(&opened));
            prop_assert_eq!(&ops_of(&opened)[..], &ops[..opened.ops.len()]);
            // Zeros after the whole frames are the end of the log (a preallocated
            // segment's), not a torn frame: they are left, and not counted as torn.
            prop_assert_eq!(&left[..kept.len()], &kept[..]);
            prop_assert!(left[kept.len()..].iter().all(|&b| b == 0));
            let torn = data_end(&bytes[..cut]).saturating_sub(kept.len());
            prop_assert_eq!(opened.torn_tail_bytes as usize, torn);
            if torn > 0 {
                prop_assert_eq!(left, kept);
            }
        }

        /// A flipped byte in any frame but the last of the newest segment is damage, named
        /// by file and the frame's position, never a torn tail; `--recover` keeps every
        /// other frame.
        #[test]
        fn a_flipped_byte_before_valid_frames_is_damage(ops in prop::collection::vec(op(), 2..5), which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let frames: Vec<Vec<u8>> = ops.iter().map(|op| encode_all(std::slice::from_ref(op))).collect();
            let k = which.index(ops.len() - 1);
            let start: usize = frames[..k].iter().map(Vec::len).sum();
            let mut bytes = frames.concat();
            bytes[start + at.index(frames[k].len())] ^= flip;
            let (opened, left) = open_one(&bytes, false);
            match opened {
                Err(StoreError::Damaged { position, .. }) => prop_assert_eq!(position, start as u64),
                other => prop_assert!(false, "expected Damaged, got {:?}", other.map(|o| o.ops.len())),
            }
            prop_assert_eq!(&left, &bytes);
            let (recovered, _) = open_one(&bytes, true);
            let recovered = recovered.unwrap();
            let mut want = ops.clone();
            want.remove(k);
            for op in &want {
                prop_assert!(ops_of(&recovered).contains(op));
            }
            prop_assert_eq!(recovered.damage.first().map(|d| d.position), Some(start as u64));
        }
    }

    /// Frames for the preallocation tests: one of each kind, with zero bytes inside
    /// (offsets, retention limits), so cuts land in zero runs of a frame too.
    fn sample_ops() -> Vec<WalOp> {
        vec![
            WalOp::Create {
                lsn: 1,
                ns: "a".into(),
                epoch: "e".into(),
                floor: 0,
                retention: Retention::default(),
            },
            WalOp::Append {
                ns: "a".into(),
                epoch: "e".into(),
                first: 0,
                idempotency_key: None,
                request: None,
                ts_ms: 256,
                records: vec![vec![0, 0, 1, 0], vec![]],
            },
            delete("a"),
        ]
    }

    /// `bytes` followed by zeros up to `size`, as a preallocated segment holds them.
    fn preallocated(bytes: &[u8], size: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out.resize(size.max(bytes.len()), 0);
        out
    }

    /// Checks what opening a preallocated newest segment, whose writes stopped at `cut`
    /// of `frames` (the encoding of `ops`), read and left.
    fn check_cut_preallocated(ops: &[WalOp], frames: &[u8], cut: usize, size: usize) {
        let bytes = preallocated(&frames[..cut], size);
        let (opened, left) = open_one(&bytes, false);
        let opened = opened.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let back = ops_of(&opened);
        assert_eq!(&back[..], &ops[..back.len()], "cut at {cut}");
        let kept = encode_all(&back).len();
        // Every frame written whole is kept; one cut in its trailing zeros is whole too.
        let whole = (0..=ops.len())
            .filter(|&k| encode_all(&ops[..k]).len() <= cut)
            .max()
            .unwrap_or(0);
        assert!(back.len() >= whole, "cut at {cut}: kept {}", back.len());
        assert!(
            frames[cut..kept.max(cut)].iter().all(|&b| b == 0),
            "cut at {cut}: kept a frame whose written bytes differ"
        );
        let data = data_end(&bytes);
        assert_eq!(
            opened.torn_tail_bytes as usize,
            data.saturating_sub(kept),
            "cut at {cut}"
        );
        assert_eq!(&left[..kept], &frames[..kept], "cut at {cut}");
        assert!(left[kept..].iter().all(|&b| b == 0), "cut at {cut}");
        assert_eq!(
            opened.end,
            Some((opened.end.clone().unwrap().0, kept as u64)),
            "cut at {cut}"
        );
    }

    /// Issue 14: a write into a preallocated segment that stopped at any byte leaves the
    /// whole frames before it, and the rest — a torn frame followed by zeros — is cut.
    #[test]
    fn a_torn_write_into_a_preallocated_segment_at_every_byte_keeps_the_whole_frames() {
        let ops = sample_ops();
        let frames = encode_all(&ops);
        for cut in 0..=frames.len() {
            check_cut_preallocated(&ops, &frames, cut, frames.len() + 4096);
        }
    }

    /// Damage in a preallocated segment, named where the valid frames end.
    fn expect_damaged(bytes: &[u8], at: usize) {
        match open_one(bytes, false) {
            (Err(StoreError::Damaged { position, .. }), left) => {
                assert_eq!(position, at as u64);
                assert_eq!(left, bytes, "a refused open changes nothing");
            }
            (other, _) => panic!(
                "expected Damaged at {at}, got {:?}",
                other.map(|o| ops_of(&o))
            ),
        }
    }

    /// Issue 14: zeros followed by a valid frame are damage, never the end of the log: an
    /// acknowledged frame after them is never dropped, and `--recover` keeps it.
    #[test]
    fn zeros_between_frames_are_damage_and_recovery_keeps_every_frame() {
        let ops = sample_ops();
        let first = encode_all(&ops[..1]);
        let rest = encode_all(&ops[1..]);
        for zeros in 1..=12 {
            let mut bytes = first.clone();
            bytes.resize(first.len() + zeros, 0);
            bytes.extend_from_slice(&rest);
            let bytes = preallocated(&bytes, bytes.len() + 100);
            expect_damaged(&bytes, first.len());
            let (recovered, _) = open_one(&bytes, true);
            let recovered = recovered.unwrap();
            assert_eq!(ops_of(&recovered), ops, "{zeros} zeros");
            assert_eq!(
                recovered
                    .damage
                    .iter()
                    .map(|d| (d.position, d.bytes))
                    .collect::<Vec<_>>(),
                [(first.len() as u64, zeros as u64)]
            );
        }
    }

    /// `bytes` as an older segment (a preallocated, empty newest one after it): what
    /// opening the write-ahead log says, and the older segment's bytes after.
    fn open_older(bytes: &[u8]) -> (Result<Opened, StoreError>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segment_path(dir.path(), 1), bytes).unwrap();
        std::fs::write(segment_path(dir.path(), 2), preallocated(&[], 4096)).unwrap();
        let opened = Wal::open(dir.path(), 0, false).map(|(_, o)| o);
        (opened, std::fs::read(segment_path(dir.path(), 1)).unwrap())
    }

    /// Checks that `bytes`, whose valid frames (`ops`) end at `good`, opens as a torn tail
    /// when they are the newest segment — the frames kept, the rest (`data_end - good`
    /// bytes) cut — and is refused at `good` when they are an older one, where recovery
    /// keeps every frame.
    fn check_torn_newest_damaged_older(ops: &[WalOp], bytes: &[u8], good: usize) {
        let (opened, left) = open_one(bytes, false);
        let opened = opened.unwrap_or_else(|e| panic!("newest segment: {e}"));
        assert_eq!(ops_of(&opened), ops);
        assert_eq!(opened.torn_tail_bytes as usize, data_end(bytes) - good);
        assert_eq!(opened.torn_tail_at.map(|(_, at)| at), Some(good as u64));
        assert_eq!(left, &bytes[..good]);
        match open_older(bytes) {
            (Err(StoreError::Damaged { file, position, .. }), left) => {
                assert_eq!(file.file_name(), segment_path(Path::new(""), 1).file_name());
                assert_eq!(position, good as u64);
                assert_eq!(left, bytes, "a refused open changes nothing");
            }
            (other, _) => panic!(
                "older segment: expected Damaged, got {:?}",
                other.map(|o| ops_of(&o))
            ),
        }
        let (recovered, _) = open_one(bytes, true);
        assert_eq!(ops_of(&recovered.unwrap()), ops);
    }

    /// Issue 14: bytes other than zeros after the end marker (a frame length of 0) are a
    /// torn tail in the newest segment — a write that never finished, whatever page of it
    /// persisted — and damage in an older one, which was synced whole before the next
    /// segment began.
    #[test]
    fn non_zero_bytes_after_the_end_marker_are_a_torn_tail_only_in_the_newest_segment() {
        let ops = sample_ops();
        let frames = encode_all(&ops);
        for (gap, garbage) in [
            (4, &[1u8][..]),
            (8, &[0xff, 0xff, 0xff, 0xff][..]),
            (500, &[7, 0, 0, 0, 9][..]),
        ] {
            let mut bytes = frames.clone();
            bytes.resize(frames.len() + gap, 0);
            bytes.extend_from_slice(garbage);
            let bytes = preallocated(&bytes, bytes.len() + 64);
            check_torn_newest_damaged_older(&ops, &bytes, frames.len());
        }
    }

    /// Issue 14: a power cut during one write of a frame spanning pages, where the page
    /// holding its header (after the synced frames) kept its zeros and a later page
    /// persisted its body bytes, in the newest segment: a torn tail, cut, the synced
    /// frames kept; a write after the reopen continues after them. The same bytes in an
    /// older segment are damage.
    #[test]
    fn a_torn_multi_page_write_with_the_header_page_lost_is_a_torn_tail() {
        const PAGE: usize = 4096;
        let ops = sample_ops();
        let synced = encode_all(&ops);
        let torn_op = WalOp::Append {
            ns: "a".into(),
            epoch: "e".into(),
            first: 1,
            idempotency_key: None,
            request: None,
            ts_ms: 2,
            records: vec![(0..3 * PAGE).map(|i| (i % 251) as u8 + 1).collect()],
        };
        let torn = encode_all(std::slice::from_ref(&torn_op));
        let mut written = synced.clone();
        written.extend_from_slice(&torn);
        let size = 8 * PAGE;
        // Each page of the write that did not persist holds its old zeros.
        for lost in [vec![0], vec![0, 2], vec![0, 1, 3]] {
            let mut bytes = preallocated(&written, size);
            for page in &lost {
                let from = (page * PAGE).max(synced.len());
                let to = ((page + 1) * PAGE).min(written.len());
                bytes[from..to].fill(0);
            }
            assert!(
                data_end(&bytes) > PAGE,
                "pages {lost:?}: body bytes persisted"
            );
            check_torn_newest_damaged_older(&ops, &bytes, synced.len());
        }
        // Through `Wal`: the reopened log writes after the kept frames, in a new segment.
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = preallocated(&written, size);
        bytes[synced.len()..PAGE].fill(0);
        std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        let (mut wal, opened) = Wal::open(dir.path(), 0, false).unwrap();
        assert_eq!(ops_of(&opened), ops);
        wal.write(&torn).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, opened) = Wal::open(dir.path(), 0, false).unwrap();
        let mut want = ops.clone();
        want.push(torn_op);
        assert_eq!(ops_of(&opened), want);
        assert_eq!(opened.torn_tail_bytes, 0);
    }

    /// Issue 14: zeros and then a valid frame in the newest segment are damage, not a
    /// torn tail — that frame may have been acknowledged — named where the frames before
    /// the zeros end.
    #[test]
    fn a_valid_frame_after_zeros_in_the_newest_segment_is_damage() {
        let ops = sample_ops();
        let head = encode_all(&ops[..2]);
        let tail = encode_all(&ops[2..]);
        for zeros in [4, 100, 5000] {
            let mut bytes = head.clone();
            bytes.resize(head.len() + zeros, 0);
            bytes.extend_from_slice(&tail);
            let bytes = preallocated(&bytes, bytes.len() + 4096);
            expect_damaged(&bytes, head.len());
        }
    }

    /// Issue 14: older segments that end in preallocated zeros are read whole; the end
    /// of the log is the newest segment's last frame.
    #[test]
    fn zeros_ending_older_segments_are_not_damage() {
        let ops = sample_ops();
        let dir = tempfile::tempdir().unwrap();
        for (seq, op) in ops.iter().enumerate() {
            let bytes = preallocated(&encode_all(std::slice::from_ref(op)), 4096);
            std::fs::write(segment_path(dir.path(), seq as u64 + 1), bytes).unwrap();
        }
        std::fs::write(segment_path(dir.path(), 4), preallocated(&[], 4096)).unwrap();
        let (_, opened) = Wal::open(dir.path(), 0, false).unwrap();
        assert_eq!(ops_of(&opened), ops);
        assert_eq!(
            opened.end,
            Some((
                segment_path(dir.path(), 3),
                encode_all(&ops[2..]).len() as u64
            ))
        );
        assert_eq!(opened.torn_tail_bytes, 0);
    }

    /// Issue 14: the writer in a preallocated segment — the spare becomes the next
    /// segment at its full size; writes overwrite its zeros; a cut back puts zeros back
    /// (never shrinking it); writing past it grows the file; and what a reopen reads is
    /// exactly what was written, with later writes in a new segment after it.
    #[test]
    fn writes_into_a_preallocated_segment_read_back_and_cut_backs_leave_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let ops = sample_ops();
        let frames: Vec<Vec<u8>> = ops
            .iter()
            .map(|op| encode_all(std::slice::from_ref(op)))
            .collect();
        let size = 256u64;
        {
            let (mut wal, _) = Wal::open(&wal_dir, 0, false).unwrap();
            let spare = Wal::prepare_spare(&wal_dir, size).unwrap();
            assert_eq!(std::fs::metadata(wal_dir.join(SPARE)).unwrap().len(), size);
            let seq = wal.rotate(Some(spare)).unwrap();
            assert!(!wal_dir.join(SPARE).exists());
            let path = segment_path(&wal_dir, seq);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
            wal.write(&frames[0]).unwrap();
            let mark = wal.mark();
            wal.write(&frames[1]).unwrap();
            wal.cut_back(mark).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, size);
            assert_eq!(bytes, preallocated(&frames[0], size as usize));
            // Past the preallocation: the file grows, and a cut back below it shrinks
            // it to the preallocation, zeros after the mark.
            let big = WalOp::Append {
                ns: "a".into(),
                epoch: "e".into(),
                first: 0,
                idempotency_key: None,
                request: None,
                ts_ms: 1,
                records: vec![vec![5; 400]],
            };
            wal.write(&encode_all(&[big])).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() > size);
            wal.cut_back(mark).unwrap();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                preallocated(&frames[0], size as usize)
            );
            wal.write(&frames[1]).unwrap();
            wal.sync().unwrap();
        }
        let (mut wal, opened) = Wal::open(&wal_dir, 0, false).unwrap();
        assert_eq!(ops_of(&opened), ops[..2]);
        assert_eq!(opened.torn_tail_bytes, 0);
        // After a reopen, writing continues in a new segment, after the old one's frames.
        wal.write(&frames[2]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, opened) = Wal::open(&wal_dir, 0, false).unwrap();
        assert_eq!(ops_of(&opened), ops);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Issue 14: any frames, cut anywhere, in a preallocated segment of any size.
        #[test]
        fn a_cut_preallocated_segment_is_a_torn_tail(ops in prop::collection::vec(op(), 1..5), cut in any::<prop::sample::Index>(), pad in 0usize..300) {
            let frames = encode_all(&ops);
            let cut = cut.index(frames.len() + 1);
            check_cut_preallocated(&ops, &frames, cut, frames.len() + pad);
        }

        /// Issue 14: a zero run of any length between frames is refused at the end of the
        /// valid frames before it, and recovery keeps every frame; zeros and then other
        /// bytes after the valid frames are a torn tail in the newest segment (cut, the
        /// frames kept) and damage in an older one.
        #[test]
        fn zeros_then_a_frame_is_damage_and_zeros_then_other_bytes_a_torn_tail(ops in prop::collection::vec(op(), 2..5), split in any::<prop::sample::Index>(), zeros in 1usize..40, garbage in prop::collection::vec(any::<u8>(), 1..20), frame_after in any::<bool>(), pad in 0usize..100) {
            let k = 1 + split.index(ops.len() - 1);
            let head = encode_all(&ops[..k]);
            let mut bytes = head.clone();
            bytes.resize(head.len() + zeros, 0);
            if frame_after {
                bytes.extend_from_slice(&encode_all(&ops[k..]));
            } else {
                bytes.extend_from_slice(&garbage);
            }
            prop_assume!(data_end(&bytes) > head.len() + zeros);
            let bytes = preallocated(&bytes, bytes.len() + pad);
            if !frame_after {
                check_torn_newest_damaged_older(&ops[..k], &bytes, head.len());
                return Ok(());
            }
            let (opened, left) = open_one(&bytes, false);
            match opened {
                Err(StoreError::Damaged { position, .. }) => prop_assert_eq!(position, head.len() as u64),
                other => prop_assert!(false, "expected Damaged, got {:?}", other.map(|o| ops_of(&o))),
            }
            prop_assert_eq!(&left, &bytes);
            let (recovered, _) = open_one(&bytes, true);
            prop_assert_eq!(ops_of(&recovered.unwrap()), ops);
        }
    }
}
