//! The `manifest`: every namespace's metadata as of the last checkpoint, in one
//! checksummed file.
//!
//! ```text
//! magic b"RWMANIF\x01" | version u32 LE | generation u64 LE | wal_from u64 LE
//! | idempotency_records u64 LE | count u32 LE | count × entry | crc32 u32 LE (of every byte before it)
//! entry: name_len u16 LE | name | epoch_len u16 LE | epoch | created_ms u64 LE
//!        | retention (3 × [present u8 | value u64 LE]) | floor u64 LE | earliest u64 LE
//!        | next u64 LE | deleted u8
//! ```
//!
//! `generation` counts the checkpoints that wrote a manifest; the idempotency store keeps
//! the generation and record count of the last checkpoint it took part in, so open can
//! tell a store that lost records from one a checkpoint got further with than the
//! manifest. `wal_from` is the write-ahead log segment replay starts from; every change in older
//! segments is in the segment files and this manifest. Written as `manifest.tmp`,
//! `fdatasync`ed, renamed over `manifest`, and the directory `fsync`ed, so a crash leaves
//! the old or the new manifest whole (and perhaps a `manifest.tmp`, removed at open).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::fields::{put_retention, put_str, Reader};
use super::Retention;
use super::StoreError;

const MAGIC: &[u8; 8] = b"RWMANIF\x01";
const VERSION: u32 = 1;

/// The file name of the manifest in the data directory.
pub(crate) const FILE: &str = "manifest";
/// The name it is written under before the rename.
pub(crate) const TMP: &str = "manifest.tmp";

/// One namespace's metadata, live or deleted (a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NsEntry {
    pub name: String,
    pub epoch: String,
    pub created_ms: u64,
    pub retention: Retention,
    /// No offset below this is handed out again.
    pub floor: u64,
    /// The oldest offset still held.
    pub earliest: u64,
    /// The offset the next append gets.
    pub next: u64,
    /// A tombstone: the namespace was deleted; `next` is where a re-created one starts.
    pub deleted: bool,
}

/// What a checkpoint wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Manifest {
    /// The number of this checkpoint.
    pub generation: u64,
    /// The write-ahead log segment replay starts from.
    pub wal_from: u64,
    /// How many idempotency records the idempotency store holds as of this checkpoint.
    pub idempotency_records: u64,
    /// Every namespace, sorted by name.
    pub namespaces: Vec<NsEntry>,
}

/// The manifest's bytes.
pub(crate) fn encode(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + m.namespaces.len() * 96);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&m.generation.to_le_bytes());
    out.extend_from_slice(&m.wal_from.to_le_bytes());
    out.extend_from_slice(&m.idempotency_records.to_le_bytes());
    out.extend_from_slice(&(m.namespaces.len() as u32).to_le_bytes());
    for e in &m.namespaces {
        put_str(&mut out, &e.name);
        put_str(&mut out, &e.epoch);
        out.extend_from_slice(&e.created_ms.to_le_bytes());
        put_retention(&mut out, &e.retention);
        out.extend_from_slice(&e.floor.to_le_bytes());
        out.extend_from_slice(&e.earliest.to_le_bytes());
        out.extend_from_slice(&e.next.to_le_bytes());
        out.push(u8::from(e.deleted));
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a manifest; an error is the byte position and what is wrong there.
pub(crate) fn decode(bytes: &[u8]) -> Result<Manifest, (u64, String)> {
    if bytes.len() < MAGIC.len() + 4 + 8 + 8 + 8 + 4 + 4 {
        return Err((
            bytes.len() as u64,
            "shorter than a manifest's header".into(),
        ));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != want {
        // One checksum covers the whole file, so the damaged byte can be anywhere: the
        // position given is the file's start, never one after the damage.
        return Err((
            0,
            "the checksum of the whole file does not match (the damage is somewhere in it)".into(),
        ));
    }
    let mut r = Reader::new(body);
    if r.take(MAGIC.len())? != MAGIC {
        return Err((0, "not a rewind manifest".into()));
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err((
            8,
            format!("manifest version {version}, this broker reads {VERSION}"),
        ));
    }
    let generation = r.u64()?;
    let wal_from = r.u64()?;
    let idempotency_records = r.u64()?;
    let count = r.u32()? as usize;
    let mut namespaces = Vec::with_capacity(count.min(body.len() / 64));
    for _ in 0..count {
        let name = r.string()?;
        let epoch = r.string()?;
        let created_ms = r.u64()?;
        let retention = r.retention()?;
        let floor = r.u64()?;
        let earliest = r.u64()?;
        let next = r.u64()?;
        let at = r.pos() as u64;
        let deleted = match r.u8()? {
            0 => false,
            1 => true,
            b => return Err((at, format!("deleted byte {b}"))),
        };
        namespaces.push(NsEntry {
            name,
            epoch,
            created_ms,
            retention,
            floor,
            earliest,
            next,
            deleted,
        });
    }
    if !r.at_end() {
        return Err((r.pos() as u64, "bytes after the last namespace".into()));
    }
    Ok(Manifest {
        generation,
        wal_from,
        idempotency_records,
        namespaces,
    })
}

/// The manifest's path in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the manifest in `dir`: `None` if there is none, [`StoreError::Damaged`] naming it
/// if it fails its checks.
pub(crate) fn read(dir: &Path) -> Result<Option<Manifest>, StoreError> {
    let file = path(dir);
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|(position, what)| StoreError::damaged(&file, position, what))
}

/// Writes `m` as the manifest of `dir`, durably and atomically.
pub(crate) fn write(dir: &Path, m: &Manifest) -> Result<(), StoreError> {
    let tmp = dir.join(TMP);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode(m))?;
        f.sync_data()?;
        std::fs::rename(&tmp, path(dir))?;
        File::open(dir)?.sync_all()?;
        Ok::<_, std::io::Error>(())
    })();
    if let Err(e) = result {
        // A half-written one must not take the space a retry needs.
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io_at(&tmp, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = NsEntry> {
        (
            "[A-Za-z0-9_.-]{1,20}",
            "[0-9a-f]{16}",
            any::<u64>(),
            prop::array::uniform3(prop::option::of(any::<u64>())),
            prop::array::uniform3(any::<u64>()),
            any::<bool>(),
        )
            .prop_map(
                |(name, epoch, created_ms, r, [floor, earliest, next], deleted)| NsEntry {
                    name,
                    epoch,
                    created_ms,
                    retention: Retention {
                        max_events: r[0],
                        max_bytes: r[1],
                        max_age_secs: r[2],
                    },
                    floor,
                    earliest,
                    next,
                    deleted,
                },
            )
    }

    fn manifest() -> impl Strategy<Value = Manifest> {
        (any::<[u64; 3]>(), prop::collection::vec(entry(), 0..6)).prop_map(
            |([generation, wal_from, idempotency_records], namespaces)| Manifest {
                generation,
                wal_from,
                idempotency_records,
                namespaces,
            },
        )
    }

    proptest! {
        #[test]
        fn round_trip(m in manifest()) {
            prop_assert_eq!(decode(&encode(&m)), Ok(m));
        }

        #[test]
        fn a_flipped_bit_is_always_detected(m in manifest(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = encode(&m);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(decode(&bytes).is_err());
        }

        #[test]
        fn a_cut_manifest_is_always_detected(m in manifest(), at in any::<prop::sample::Index>()) {
            let bytes = encode(&m);
            let cut = at.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn read_names_the_file_and_write_replaces_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let m = Manifest {
            generation: 1,
            wal_from: 3,
            idempotency_records: 1,
            namespaces: vec![],
        };
        write(dir.path(), &m).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(m));
        assert!(!dir.path().join(TMP).exists());
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        bytes[9] ^= 0x10;
        std::fs::write(path(dir.path()), &bytes).unwrap();
        match read(dir.path()) {
            Err(StoreError::Damaged { file, position, .. }) => {
                assert_eq!(file, path(dir.path()));
                // One checksum for the whole file: never a position after the damage.
                assert_eq!(position, 0);
            }
            other => panic!("expected Damaged, got {other:?}"),
        }
    }
}
