//! The write-ahead log that makes every change durable between sled checkpoints.
//!
//! sled's own `flush()` costs about 140 µs of CPU on its I/O thread pool, still needs an
//! `fdatasync` after it, and after a burst of writes can take seconds (see
//! `docs/storage.md`). So every change — append, namespace create, retention change,
//! delete — is also written here, a durable group commit is one `fdatasync` of the current
//! segment, and sled is flushed only by checkpoints, which run beside the writer.
//!
//! The log is a directory of segments named by a growing sequence number. A checkpoint
//! starts a new segment, flushes sled, and then deletes the segments before the new one:
//! everything in them is in sled by then. On open, the segments are read in order and
//! every operation sled does not have yet is applied again.
//!
//! Segment format: a sequence of frames `len: u32 LE | crc32(body): u32 LE | body`, where
//! `body` is one [`WalOp`] (see [`encode`]). A torn or corrupt frame at the end of the last
//! segment ends the log: it was never acknowledged, because its `fdatasync` had not
//! returned. The same in an earlier segment is corruption.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::config::Retention;

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
            WalOp::Append { .. } => 0,
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

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    out.push(v.is_some() as u8);
    out.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
}

fn put_retention(out: &mut Vec<u8>, r: &Retention) {
    put_opt(out, r.max_events);
    put_opt(out, r.max_bytes);
    put_opt(out, r.max_age_secs);
}

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

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<usize> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_le_bytes(b) as usize)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn string(&mut self) -> Option<String> {
        let n = self
            .take(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)?;
        self.take(n)
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
    }
    fn opt(&mut self) -> Option<Option<u64>> {
        let present = self.u8()?;
        let v = self.u64()?;
        match present {
            0 => Some(None),
            1 => Some(Some(v)),
            _ => None,
        }
    }
    fn retention(&mut self) -> Option<Retention> {
        Some(Retention {
            max_events: self.opt()?,
            max_bytes: self.opt()?,
            max_age_secs: self.opt()?,
        })
    }
}

fn decode_body(body: &[u8]) -> Option<WalOp> {
    let mut r = Reader(body);
    let op = match r.u8()? {
        kind @ (APPEND | APPEND_WITH_DIGEST) => {
            let ns = r.string()?;
            let epoch = r.string()?;
            let first = r.u64()?;
            let idem = r.string()?;
            let request = match kind {
                APPEND_WITH_DIGEST => match r.u8()? {
                    0 => None,
                    shape @ (1 | 2) => Some((r.take(32)?.try_into().ok()?, shape == 2)),
                    _ => return None,
                },
                _ => None,
            };
            let ts_ms = r.u64()?;
            let count = r.u32()?;
            let mut records = Vec::with_capacity(count.min(body.len()));
            for _ in 0..count {
                let n = r.u32()?;
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
        _ => return None,
    };
    r.0.is_empty().then_some(op)
}

/// Decodes every whole, intact frame; returns them and the length of the good prefix.
pub fn decode_all(bytes: &[u8]) -> (Vec<WalOp>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= 8 {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (len, crc) = (word(pos) as usize, word(pos + 4));
        let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(op) = decode_body(body) else {
            break;
        };
        out.push(op);
        pos += 8 + len;
    }
    (out, pos)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
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

/// The open log: the segment being written, and the directory of them all.
pub struct Wal {
    dir: PathBuf,
    file: File,
    seq: u64,
}

impl Wal {
    /// Opens the log in `dir` (creating it) and returns every intact operation it holds,
    /// oldest first. Writing continues in a new segment.
    pub fn open(dir: &Path) -> Result<(Wal, Vec<WalOp>), StoreError> {
        std::fs::create_dir_all(dir)?;
        let seqs = segments(dir)?;
        let mut ops = Vec::new();
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            let (seg_ops, good) = decode_all(&bytes);
            ops.extend(seg_ops);
            if good < bytes.len() {
                if i + 1 < seqs.len() {
                    return Err(StoreError::Corrupt(format!(
                        "write-ahead log segment {} is damaged at byte {good}",
                        path.display()
                    )));
                }
                tracing::warn!(
                    discarded = bytes.len() - good,
                    "write-ahead log ends in a torn frame; discarding it"
                );
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good as u64)?;
                f.sync_data()?;
            }
        }
        let seq = seqs.last().map_or(1, |s| s + 1);
        let file = Self::create_segment(dir, seq)?;
        Ok((
            Wal {
                dir: dir.to_owned(),
                file,
                seq,
            },
            ops,
        ))
    }

    fn create_segment(dir: &Path, seq: u64) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(segment_path(dir, seq))?;
        sync_dir(dir)?;
        Ok(file)
    }

    /// Writes frames to the current segment (into the page cache; [`Wal::sync`] makes them
    /// durable).
    pub fn write(&mut self, frames: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(frames)?;
        Ok(())
    }

    /// `fdatasync` of the current segment: everything written survives a power cut.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data()?;
        Ok(())
    }

    /// Syncs the current segment and starts a new one; returns the sequence number below
    /// which segments may be deleted once sled has been flushed.
    pub fn rotate(&mut self) -> Result<u64, StoreError> {
        self.file.sync_data()?;
        let next = self.seq + 1;
        self.file = Self::create_segment(&self.dir, next)?;
        self.seq = next;
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
        ]
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
            let (mut wal, ops) = Wal::open(&wal_dir).unwrap();
            assert!(ops.is_empty());
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
            let (_, ops) = Wal::open(&wal_dir).unwrap();
            assert_eq!(ops, [delete("a"), delete("b")]);
            Wal::remove_before(&wal_dir, cut).unwrap();
        }
        let (_, ops) = Wal::open(&wal_dir).unwrap();
        assert_eq!(ops, [delete("b")]);
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        std::fs::write(segment_path(&wal_dir, 1), [1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        std::fs::write(segment_path(&wal_dir, 2), []).unwrap();
        assert!(matches!(Wal::open(&wal_dir), Err(StoreError::Corrupt(_))));
    }
}
