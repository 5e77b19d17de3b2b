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

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
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

/// The first byte position after `bad` (where a frame fails its checks) from which valid
/// frames follow each other to the end of the file. With one, the bad frame is damage,
/// not a torn tail: a torn write only ever loses the end of a file. (A chain that must
/// reach the end exactly keeps a payload that happens to hold a frame's bytes, inside a
/// torn last frame, from passing for one.)
pub fn valid_frames_after(bytes: &[u8], bad: usize) -> Option<usize> {
    (bad + 1..bytes.len()).find(|&p| {
        let mut pos = p;
        while let Some((_, len)) = frame_at(bytes, pos) {
            pos += len;
        }
        pos > p && pos == bytes.len()
    })
}

/// The next position after `bad` where any valid frame starts (for salvage).
fn next_valid_frame(bytes: &[u8], bad: usize) -> Option<usize> {
    (bad + 1..bytes.len()).find(|&p| frame_at(bytes, p).is_some())
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
/// of the file).
fn salvage(bytes: &[u8]) -> (Vec<Positioned>, Vec<(usize, usize)>) {
    let mut ops = Vec::new();
    let mut bad = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        if let Some((op, len)) = frame_at(bytes, pos) {
            ops.push((op, pos));
            pos += len;
            continue;
        }
        let resume = next_valid_frame(bytes, pos).unwrap_or(bytes.len());
        bad.push((pos, resume - pos));
        pos = resume;
    }
    (ops, bad)
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
}

impl Wal {
    /// Opens the write-ahead log in `dir` (creating it) and returns every intact operation in the
    /// segments numbered `from` and up, oldest first; older segments (left by a checkpoint
    /// that stopped before deleting them) are deleted. Writing continues in a new segment.
    ///
    /// A frame that fails its checks at the end of the last segment with no valid frame
    /// after it is a torn tail, cut off. Any other bad frame is [`StoreError::Damaged`]
    /// naming the segment and byte; with `recover`, it is stepped over and reported in
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
            // An empty segment (each start begins one) is named only when no segment
            // before it holds anything.
            if !bytes.is_empty() || opened.end.is_none() {
                opened.end = Some((path.clone(), good as u64));
            }
            let placed: Vec<(WalOp, Place)> = ops
                .into_iter()
                .map(|(op, position)| {
                    let position = position as u64;
                    (op, Place { seq, position })
                })
                .collect();
            if good == bytes.len() {
                opened.ops.extend(placed);
                continue;
            }
            let torn = last && valid_frames_after(&bytes, good).is_none();
            if torn {
                opened.ops.extend(placed);
                tracing::warn!(
                    file = %path.display(),
                    position = good,
                    discarded = bytes.len() - good,
                    "write-ahead log ends in a torn frame; cutting it off"
                );
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good as u64)?;
                f.sync_data()?;
                opened.torn_tail_bytes = (bytes.len() - good) as u64;
                opened.torn_tail_at = Some((path.clone(), good as u64));
                continue;
            }
            if !recover {
                let what = if last {
                    "a write-ahead log frame fails its checksum and valid frames follow it"
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
            },
            opened,
        ))
    }

    fn create_segment(dir: &Path, seq: u64) -> Result<File, StoreError> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io_at(&path, e))?;
        sync_dir(dir)?;
        Ok(file)
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
        if let Err(e) = self.file.write_all(frames) {
            if let Err(cut) = self.cut_back(self.mark()) {
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
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    /// `fdatasync` of the current segment: everything written survives a power cut.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data()?;
        Ok(())
    }

    /// Syncs the current segment and starts a new one; returns the sequence number below
    /// which segments may be deleted once everything in them is checkpointed.
    pub fn rotate(&mut self) -> Result<u64, StoreError> {
        self.file.sync_data()?;
        let next = self.seq + 1;
        self.file = Self::create_segment(&self.dir, next)?;
        self.seq = next;
        self.len = 0;
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
            let cut = wal.rotate().unwrap();
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
            prop_assert_eq!(left, kept.clone());
            prop_assert_eq!(opened.torn_tail_bytes as usize, cut - kept.len());
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
}
