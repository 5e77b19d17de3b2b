//! A namespace incarnation's events in checksummed, append-only segment files.
//!
//! One [`SegmentLog`] per incarnation, in `log/<namespace>/<epoch>/`; each segment is
//! named by its first offset in 20 digits (`00000000000000001000.seg`). Format (all
//! integers little-endian; `docs/storage.md`):
//!
//! ```text
//! header: magic "RWSEG\0\x01\n" | base offset u64 | epoch (16 ASCII hex) | name_len u16 | name | crc u32
//! frame:  len u32 | crc u32 | offset u64 | record (len bytes)
//! ```
//!
//! The header's crc covers every header byte before it; a frame's covers `offset ‖ record`.
//! Offsets are dense: a segment's frames hold `base, base + 1, …`, and each segment starts
//! where the one before it ends. `record` is a [`super::record`] encoding. The checksum is
//! CRC-32 (IEEE) from `crc32fast`, the one the write-ahead log uses, so the store has one
//! checksum everywhere (see `docs/decisions.md`).
//!
//! A new segment starts when the active one would pass [`SegmentConfig::segment_bytes`]
//! (every segment holds at least one frame, however large). Retention deletes whole
//! segments. An idle log holds no file descriptor: the active segment is opened by the
//! first write after a [`SegmentLog::sync`] and closed by the next one; reads open the file
//! they need and drop it.
//!
//! Damage: [`SegmentLog::open`] verifies every byte. A bad or incomplete frame (or header)
//! at the end of the last segment, with no frame whose checksum holds anywhere after it,
//! is a torn tail — a write that never finished, so never acknowledged — and is cut.
//! Anything else is [`StoreError::Damaged`]; [`SegmentLog::salvage`] is the way past it.
//!
//! The store (`log_store`) is built on this module; until it is wired in, only the tests
//! call it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{sync_dir, StoreError};

mod frame;
mod scan;
#[cfg(test)]
mod tests;

use frame::{encode_frame, encode_header, header_len, Decoded, Window, FRAME_HEADER};
use scan::{verify, Fault};

/// The sparse index keeps one (offset, position) per this many bytes of frames.
const INDEX_EVERY: u64 = 16 << 10;
/// Reads fetch at least this much at once (and verification at open this much).
const MIN_READ: usize = 64 << 10;
/// Reads fetch at most this much at once, unless one frame is larger.
const MAX_READ: usize = 1 << 20;
const EXTENSION: &str = "seg";

/// Records with their offsets, in offset order.
pub(crate) type Records = Vec<(u64, Vec<u8>)>;

/// Segment sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentConfig {
    /// A new segment starts when the active one would pass this many bytes (the
    /// `segment_bytes` option, default 16 MiB).
    pub segment_bytes: u64,
}

/// What [`SegmentLog::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OpenReport {
    /// Bytes cut off the end of the last segment (a torn tail); 0 if none.
    pub torn_tail_bytes: u64,
    /// The file they were cut from (removed, if not even its header was whole).
    pub torn_tail_file: Option<PathBuf>,
}

/// Damage [`SegmentLog::salvage`] scanned past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// The file.
    pub file: PathBuf,
    /// Byte position where the damage starts (at or before the damaged byte).
    pub position: u64,
    /// What is wrong there.
    pub what: String,
    /// A torn tail: nothing valid follows it in the last segment, so it held nothing that
    /// was acknowledged.
    pub torn_tail: bool,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{EXTENSION}"))
}

fn damaged(file: PathBuf, position: u64, what: impl Into<String>) -> StoreError {
    StoreError::Damaged {
        file,
        position,
        what: what.into(),
    }
}

/// Segment files with their base offsets, and other entries.
type Listing = (Vec<(u64, PathBuf)>, Vec<PathBuf>);

/// The segment files of `dir`, sorted by base offset, and any other entries; no `dir` is
/// damage.
fn list_dir(dir: &Path) -> Result<Listing, StoreError> {
    let mut found = Vec::new();
    let mut strays = Vec::new();
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(damaged(dir.to_owned(), 0, "the log's directory is missing"));
        }
        entries => entries?,
    };
    for entry in entries {
        let path = entry?.path();
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok());
        match base {
            Some(base) => found.push((base, path)),
            None => strays.push(path),
        }
    }
    found.sort_unstable();
    strays.sort_unstable();
    Ok((found, strays))
}

const STRAY: &str = "not a segment file of this log";

/// The segment files of `dir`, sorted by base offset; any other entry is damage.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    match list_dir(dir)? {
        (_, strays) if !strays.is_empty() => Err(damaged(strays[0].clone(), 0, STRAY)),
        (found, _) => Ok(found),
    }
}

/// One segment as the log keeps it in memory.
#[derive(Debug, Clone)]
struct Seg {
    base: u64,
    /// Bytes of header and whole frames.
    len: u64,
    /// The offset after its last frame (`base` if it has none).
    next: u64,
    /// (offset, position) of a frame about every [`INDEX_EVERY`] bytes, past the first.
    index: Vec<(u64, u64)>,
    /// Position of the last index point (the first frame's, if none).
    indexed_to: u64,
}

/// A segment's extent and the index point for one offset, copied out from under the lock.
#[derive(Debug, Clone, Copy)]
struct Span {
    base: u64,
    len: u64,
    next: u64,
    /// (offset, position) of a frame at or before the offset asked for.
    point: (u64, u64),
}

impl Seg {
    /// A segment with its header alone.
    fn empty(base: u64, header_len: u64) -> Seg {
        Seg {
            base,
            len: header_len,
            next: base,
            index: Vec::new(),
            indexed_to: header_len,
        }
    }

    fn span(&self, offset: u64, header_len: u64) -> Span {
        Span {
            base: self.base,
            len: self.len,
            next: self.next,
            point: self.point(offset, header_len),
        }
    }

    /// The last indexed frame at or before `offset`, or the first frame.
    fn point(&self, offset: u64, header_len: u64) -> (u64, u64) {
        let i = self.index.partition_point(|&(o, _)| o <= offset);
        i.checked_sub(1)
            .map_or((self.base, header_len), |i| self.index[i])
    }

    fn add_frame(&mut self, offset: u64, pos: u64, frame_len: u64) {
        if pos >= self.indexed_to + INDEX_EVERY {
            self.index.push((offset, pos));
            self.indexed_to = pos;
        }
        self.len = pos + frame_len;
        self.next = offset + 1;
    }
}

/// What readers see: short critical sections only, never held across I/O.
#[derive(Debug)]
struct State {
    segs: Vec<Seg>,
    /// First and next offset when there is no segment.
    empty_at: u64,
    /// Bumped whenever bytes a reader may be reading go away (truncate, removal), so a
    /// read that fails can tell a race from damage.
    generation: u64,
}

impl State {
    fn next(&self) -> u64 {
        self.segs.last().map_or(self.empty_at, |s| s.next)
    }
    fn first(&self) -> u64 {
        self.segs.first().map_or(self.empty_at, |s| s.base)
    }
    /// The index of the segment holding `offset`.
    fn find(&self, offset: u64) -> Option<usize> {
        let i = self
            .segs
            .partition_point(|s| s.base <= offset)
            .checked_sub(1)?;
        (offset < self.segs[i].next).then_some(i)
    }
}

/// The writer's side: open files and what the next sync owes.
#[derive(Debug, Default)]
struct Writer {
    /// The last segment, open since the first write after the last sync.
    active: Option<File>,
    /// Segment files were created or removed since the last sync.
    dir_dirty: bool,
    /// A segment could not be cut back (a failed append's, a truncate's): (base, length).
    pending_cut: Option<(u64, u64)>,
    /// Files of a failed append, a truncate or a removal that could not be removed yet.
    pending_remove: Vec<PathBuf>,
}

/// The segments of one namespace incarnation. Every method may block on disk. Writes
/// (`append`, `truncate`, `sync`, `remove_before`) are serialized by an internal lock;
/// `read`, `bytes_from`, `next` and `first` run beside them from any thread.
#[derive(Debug)]
pub(crate) struct SegmentLog {
    dir: PathBuf,
    ns: String,
    epoch: String,
    header_len: u64,
    cfg: SegmentConfig,
    state: Mutex<State>,
    writer: Mutex<Writer>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_names(ns: &str, epoch: &str) -> Result<(), StoreError> {
    if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::Corrupt(format!(
            "epoch {epoch:?} is not 16 hex digits"
        )));
    }
    if ns.is_empty() || ns.len() > u16::MAX as usize {
        return Err(StoreError::Corrupt(format!(
            "namespace name of {} bytes",
            ns.len()
        )));
    }
    Ok(())
}

impl SegmentLog {
    fn new(dir: &Path, ns: &str, epoch: &str, cfg: SegmentConfig, state: State) -> SegmentLog {
        SegmentLog {
            dir: dir.to_owned(),
            ns: ns.to_owned(),
            epoch: epoch.to_owned(),
            header_len: header_len(ns),
            cfg,
            state: Mutex::new(state),
            writer: Mutex::new(Writer::default()),
        }
    }

    /// Creates the directory of a new, empty log whose first offset is `first` (`mkdir -p`,
    /// each new directory's entry fsynced). The first segment is written by the first
    /// append. `epoch` is 16 hex digits. Fails if `dir` holds anything.
    pub(crate) fn create(
        dir: &Path,
        ns: &str,
        epoch: &str,
        first: u64,
        cfg: SegmentConfig,
    ) -> Result<SegmentLog, StoreError> {
        check_names(ns, epoch)?;
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .collect();
        fs::create_dir_all(dir)?;
        for d in missing.iter().rev() {
            let parent = d.parent().filter(|p| !p.as_os_str().is_empty());
            sync_dir(parent.unwrap_or(Path::new(".")))?;
        }
        if fs::read_dir(dir)?.next().is_some() {
            return Err(StoreError::Corrupt(format!(
                "{} holds files already",
                dir.display()
            )));
        }
        let state = State {
            segs: Vec::new(),
            empty_at: first,
            generation: 0,
        };
        Ok(SegmentLog::new(dir, ns, epoch, cfg, state))
    }

    /// Opens an existing log, reading and verifying every frame of every segment: header
    /// (magic, checksum, base equal to the file name, namespace, epoch), each frame's
    /// checksum, dense offsets within and across segments. A torn tail is cut (and
    /// reported); any other damage is [`StoreError::Damaged`] naming the file and the
    /// position. `first_expected` is the log's first offset when `dir` holds no segment
    /// (a log never written to); otherwise the segments say where the log starts.
    pub(crate) fn open(
        dir: &Path,
        ns: &str,
        epoch: &str,
        first_expected: u64,
        cfg: SegmentConfig,
    ) -> Result<(SegmentLog, OpenReport), StoreError> {
        check_names(ns, epoch)?;
        let files = list_segments(dir)?;
        let mut segs: Vec<Seg> = Vec::with_capacity(files.len());
        let mut report = OpenReport::default();
        let hlen = header_len(ns);
        for (i, (base, path)) in files.iter().enumerate() {
            let last = i + 1 == files.len();
            let file = File::open(path)?;
            let file_len = file.metadata()?.len();
            let mut w = Window::new(&file, file_len, MAX_READ);
            let (seg, fault) = verify(&mut w, *base, ns, epoch, hlen)?;
            if let (Some(prev), Some(seg)) = (segs.last(), &seg) {
                if prev.next != seg.base {
                    let what = format!(
                        "segment starts at offset {} but the one before it ends at {}",
                        seg.base, prev.next
                    );
                    return Err(damaged(path.clone(), 0, what));
                }
            }
            if let Some(Fault {
                position: pos,
                what,
                repairable,
            }) = fault
            {
                let lower = seg.as_ref().map_or(*base, |s| s.next);
                if !last || !repairable || w.next_valid(pos, lower)?.is_some() {
                    return Err(damaged(path.clone(), pos, what));
                }
                drop(file);
                report.torn_tail_bytes = file_len - pos;
                report.torn_tail_file = Some(path.clone());
                if seg.is_some() {
                    let f = OpenOptions::new().write(true).open(path)?;
                    f.set_len(pos)?;
                    f.sync_data()?;
                } else {
                    fs::remove_file(path)?;
                    sync_dir(dir)?;
                }
            }
            segs.extend(seg);
        }
        let state = State {
            empty_at: first_expected,
            segs,
            generation: 0,
        };
        Ok((SegmentLog::new(dir, ns, epoch, cfg, state), report))
    }

    /// The offset after the last frame written.
    pub(crate) fn next(&self) -> u64 {
        lock(&self.state).next()
    }

    /// The base offset of the oldest segment kept (`next()` when there is none).
    pub(crate) fn first(&self) -> u64 {
        lock(&self.state).first()
    }

    fn path(&self, base: u64) -> PathBuf {
        segment_path(&self.dir, base)
    }

    /// The newest segment file and its length in bytes (header and whole frames); `None`
    /// while the log has no segment file. For damage reports naming a file and a byte.
    pub(crate) fn last_file(&self) -> Option<(PathBuf, u64)> {
        let st = lock(&self.state);
        st.segs.last().map(|s| (self.path(s.base), s.len))
    }

    /// Removes a segment file the state no longer lists; if that fails, the next write
    /// tries again first.
    fn remove_segment(&self, w: &mut Writer, path: PathBuf) -> Result<(), StoreError> {
        w.dir_dirty = true;
        fs::remove_file(&path).map_err(|e| {
            w.pending_remove.push(path);
            e.into()
        })
    }

    /// Repeats the cleanup an earlier write could not finish.
    fn finish_pending(&self, w: &mut Writer) -> Result<(), StoreError> {
        if let Some((base, len)) = w.pending_cut {
            OpenOptions::new()
                .write(true)
                .open(self.path(base))?
                .set_len(len)?;
            w.pending_cut = None;
        }
        while let Some(path) = w.pending_remove.last() {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            w.pending_remove.pop();
            w.dir_dirty = true;
        }
        Ok(())
    }

    /// Writes frames for offsets `next()..` (not synced). Records are at most `u32::MAX`
    /// bytes. All or nothing: on any error (`ENOSPC` included) the files are cut back to
    /// what they were and the log is unchanged.
    pub(crate) fn append(&self, records: &[Vec<u8>]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(r) = records.iter().find(|r| r.len() > u32::MAX as usize) {
            return Err(StoreError::Corrupt(format!("record of {} bytes", r.len())));
        }
        let mut w = lock(&self.writer);
        self.finish_pending(&mut w)?;
        // The last segment without its index: new index points are added to it at the end.
        let last = lock(&self.state).segs.last().map(|s| Seg {
            index: Vec::new(),
            ..*s
        });
        // Plan: the frames of each segment written to, the first maybe the last one's.
        let mut parts: Vec<(Seg, Vec<u8>)> = Vec::new();
        let start = last.as_ref().map_or_else(|| self.next(), |s| s.next);
        let mut cur = last.map(|s| (s, Vec::new()));
        for (next, rec) in (start..).zip(records) {
            let frame_len = FRAME_HEADER + rec.len() as u64;
            let roll = match &cur {
                None => true,
                Some((s, _)) => s.next > s.base && s.len + frame_len > self.cfg.segment_bytes,
            };
            if roll {
                parts.extend(cur.take());
                let seg = Seg::empty(next, self.header_len);
                cur = Some((seg, encode_header(next, &self.epoch, &self.ns)));
            }
            let (seg, buf) = cur.as_mut().expect("a segment to write to");
            let pos = seg.len;
            encode_frame(buf, next, rec);
            seg.add_frame(next, pos, frame_len);
        }
        parts.extend(cur);
        parts.retain(|(_, buf)| !buf.is_empty());
        let old = lock(&self.state).segs.last().map(|s| (s.base, s.len));
        let mut created: Vec<(PathBuf, File)> = Vec::new();
        let written = self.write_parts(&mut w, &parts, old, &mut created);
        if let Err(e) = written {
            if let (Some((base, len)), Some(f)) = (old, &w.active) {
                if f.set_len(len).is_err() {
                    w.pending_cut = Some((base, len));
                }
            }
            for (path, file) in created {
                drop(file);
                if fs::remove_file(&path).is_err() {
                    w.pending_remove.push(path);
                }
            }
            return Err(e.into());
        }
        if let Some((_, file)) = created.pop() {
            // The segments before it, this file's predecessors, were synced as it was made.
            w.active = Some(file);
            w.dir_dirty = true;
        }
        let mut st = lock(&self.state);
        for (seg, _) in parts {
            match st.segs.last_mut() {
                Some(s) if s.base == seg.base => {
                    s.index.extend(seg.index);
                    (s.len, s.next, s.indexed_to) = (seg.len, seg.next, seg.indexed_to);
                }
                _ => st.segs.push(seg),
            }
        }
        Ok(())
    }

    /// Writes the planned parts: into the last segment (`old`: its base and length) and
    /// new files, which go into `created` as they are made.
    fn write_parts(
        &self,
        w: &mut Writer,
        parts: &[(Seg, Vec<u8>)],
        old: Option<(u64, u64)>,
        created: &mut Vec<(PathBuf, File)>,
    ) -> io::Result<()> {
        for (seg, buf) in parts {
            match old {
                Some((base, len)) if base == seg.base => {
                    if w.active.is_none() {
                        w.active = Some(OpenOptions::new().write(true).open(self.path(base))?);
                    }
                    let f = w.active.as_ref().expect("opened above");
                    f.write_all_at(buf, len)?;
                }
                _ => {
                    // The segment before is made durable first: then, after a power cut,
                    // only the last segment can end in a torn frame (the torn-tail rule).
                    match created.last() {
                        Some((_, f)) => f.sync_data()?,
                        None => w.active.as_ref().map_or(Ok(()), File::sync_data)?,
                    }
                    let path = self.path(seg.base);
                    let f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&path)?;
                    created.push((path, f));
                    created.last().expect("pushed").1.write_all_at(buf, 0)?;
                }
            }
        }
        Ok(())
    }

    /// Drops every offset >= `next` (rolling back unsynced writes, or cutting what the
    /// manifest does not cover at open). Segments left without a frame are removed, except
    /// the first, kept with its header alone so the directory still says where the log
    /// ends. `next` must be within `first()..=next()`.
    pub(crate) fn truncate(&self, next: u64) -> Result<(), StoreError> {
        let mut w = lock(&self.writer);
        self.finish_pending(&mut w)?;
        let (first, end) = {
            let st = lock(&self.state);
            (st.first(), st.next())
        };
        if next == end {
            return Ok(());
        }
        if next < first || next > end {
            return Err(StoreError::Corrupt(format!(
                "truncate to offset {next} outside the log's {first}..={end}"
            )));
        }
        loop {
            let last = lock(&self.state)
                .segs
                .last()
                .map(|s| s.span(next, self.header_len));
            let Some(seg) = last else {
                return Ok(());
            };
            if seg.next <= next {
                return Ok(());
            }
            let path = self.path(seg.base);
            let is_first = lock(&self.state).segs.len() == 1;
            // Readers learn of a change (the generation) before the bytes go, so a read
            // that meets missing bytes can tell a race from damage.
            if seg.base >= next && !is_first {
                {
                    let mut st = lock(&self.state);
                    st.segs.pop();
                    st.generation += 1;
                }
                w.active = None;
                self.remove_segment(&mut w, path)?;
                continue;
            }
            let pos = self.position_of(&seg, next)?;
            {
                let mut st = lock(&self.state);
                let s = st.segs.last_mut().expect("the segment cut");
                s.len = pos;
                s.next = next;
                s.index.retain(|&(o, _)| o < next);
                s.indexed_to = s.index.last().map_or(self.header_len, |&(_, p)| p);
                st.generation += 1;
            }
            let cut = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(pos).map(|()| f));
            return match cut {
                Ok(f) => {
                    w.active = Some(f);
                    Ok(())
                }
                Err(e) => {
                    w.pending_cut = Some((seg.base, pos));
                    Err(e.into())
                }
            };
        }
    }

    /// The position of `offset`'s frame in `seg` (or its end, for `seg.next`), found by
    /// walking frame headers from `seg.point`, which must be at or before it.
    fn position_of(&self, seg: &Span, offset: u64) -> Result<u64, StoreError> {
        let (mut at, mut pos) = seg.point;
        if at == offset {
            return Ok(pos);
        }
        let path = self.path(seg.base);
        let file = File::open(&path)?;
        let mut w = Window::new(&file, seg.len, MIN_READ);
        while at < offset {
            let head = w.at(pos, FRAME_HEADER as usize)?;
            if head.len() < FRAME_HEADER as usize {
                return Err(damaged(path, pos, "segment ends inside a frame header"));
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
            let found = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
            if found != at {
                return Err(damaged(
                    path,
                    pos,
                    format!("offset {found} where {at} belongs"),
                ));
            }
            pos += FRAME_HEADER + len;
            at += 1;
        }
        Ok(pos)
    }

    /// `fdatasync` of every segment written since the last call (and of the directory if
    /// segments were created or removed), then closes the active segment. Only the active
    /// one can need it: an append that starts a segment syncs the one before first. On
    /// error nothing is forgotten: the next call syncs the same files again.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let mut w = lock(&self.writer);
        self.finish_pending(&mut w)?;
        if let Some(f) = &w.active {
            f.sync_data()?;
        }
        if w.dir_dirty {
            sync_dir(&self.dir)?;
        }
        w.active = None;
        w.dir_dirty = false;
        Ok(())
    }

    /// Records of offsets `from..until`, in order: at most `max_events` of them and, past
    /// the first, at most `max_bytes` of record bytes. Offsets below `first()` are skipped;
    /// `until` is capped at `next()`. Each frame's checksum is verified (a mismatch is
    /// [`StoreError::Damaged`] naming file and position). Runs beside the writer: the
    /// segment list is looked up under a short lock, the file read without it.
    pub(crate) fn read(
        &self,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Records, StoreError> {
        let mut out: Records = Vec::new();
        let mut bytes = 0usize;
        let mut at = from;
        let mut races = 0;
        while out.len() < max_events {
            let (seg, generation) = {
                let st = lock(&self.state);
                at = at.max(st.first());
                if at >= until.min(st.next()) {
                    break;
                }
                let Some(i) = st.find(at) else {
                    return Err(StoreError::Corrupt(format!("offset {at} in no segment")));
                };
                (st.segs[i].span(at, self.header_len), st.generation)
            };
            match self.read_segment(&seg, at, until, max_events, max_bytes, &mut bytes, &mut out) {
                Ok(end) if end < seg.next => break,
                Ok(end) => at = end,
                Err(e) => {
                    let raced = lock(&self.state).generation != generation;
                    if !raced || races > 8 {
                        return Err(e);
                    }
                    races += 1;
                    at = out.last().map_or(at, |(o, _)| o + 1);
                }
            }
        }
        Ok(out)
    }

    /// Reads `seg`'s records from `at` into `out`; returns the offset to go on from.
    #[allow(clippy::too_many_arguments)]
    fn read_segment(
        &self,
        seg: &Span,
        at: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
        bytes: &mut usize,
        out: &mut Records,
    ) -> Result<u64, StoreError> {
        let path = self.path(seg.base);
        let file = File::open(&path)?;
        let (mut offset, mut pos) = seg.point;
        // Each pread fetches about what the rest of the read needs, by the segment's mean
        // frame size and an eighth more, within MIN_READ..=MAX_READ.
        let frames = (seg.next - seg.base).max(1);
        let mean = (seg.len - self.header_len) / frames;
        let chunk = |events: u64| {
            let need = events.saturating_mul(mean + mean / 8 + 1);
            need.clamp(MIN_READ as u64, MAX_READ as u64) as usize
        };
        let mut w = Window::new(&file, seg.len, MIN_READ);
        let end = seg.next.min(until);
        while offset < end && out.len() < max_events {
            let ahead = (at.max(offset) - offset).saturating_add((max_events - out.len()) as u64);
            w.chunk = chunk(ahead.min(end - offset));
            let (found, record) = match w.frame(pos)? {
                Decoded::Frame { offset, record } => (offset, record),
                Decoded::Incomplete => return Err(damaged(path, pos, "incomplete frame")),
                Decoded::Bad => return Err(damaged(path, pos, "frame checksum mismatch")),
            };
            if found != offset {
                let what = format!("offset {found} where {offset} belongs");
                return Err(damaged(path, pos, what));
            }
            if offset >= at {
                if !out.is_empty() && bytes.saturating_add(record.len()) > max_bytes {
                    return Ok(offset);
                }
                *bytes += record.len();
                out.push((offset, record.to_vec()));
            }
            pos += FRAME_HEADER + record.len() as u64;
            offset += 1;
        }
        Ok(offset)
    }

    /// Record bytes (as `NsInfo::bytes` counts them: records, not frames or headers) of
    /// the offsets from `from` (or `first()`, if later) to `next()`.
    pub(crate) fn bytes_from(&self, from: u64) -> Result<u64, StoreError> {
        let records = |s: &Seg| s.len - self.header_len - FRAME_HEADER * (s.next - s.base);
        loop {
            // The segment `from` falls in, if inside one, and the bytes of those after it.
            let (inside, after, generation) = {
                let st = lock(&self.state);
                let i = st.segs.partition_point(|s| s.next <= from);
                let inside = st.segs.get(i).filter(|s| s.base < from);
                let rest = &st.segs[i + usize::from(inside.is_some())..];
                let after: u64 = rest.iter().map(records).sum();
                let inside = inside.map(|s| s.span(from, self.header_len));
                (inside, after, st.generation)
            };
            let Some(seg) = inside else {
                return Ok(after);
            };
            match self.position_of(&seg, from) {
                Ok(pos) => return Ok(after + (seg.len - pos) - FRAME_HEADER * (seg.next - from)),
                Err(e) if lock(&self.state).generation == generation => return Err(e),
                Err(_) => continue,
            }
        }
    }

    /// Deletes the segment files all of whose offsets are below `earliest` (retention;
    /// `earliest` is capped at `next()`). When that is every segment, an empty one (a
    /// header alone) is written and synced at `next()` first, so the directory still says
    /// where the log ends.
    pub(crate) fn remove_before(&self, earliest: u64) -> Result<(), StoreError> {
        let mut w = lock(&self.writer);
        self.finish_pending(&mut w)?;
        let (bases, next) = {
            let st = lock(&self.state);
            let earliest = earliest.min(st.next());
            let n = st.segs.partition_point(|s| s.next <= earliest);
            let bases: Vec<u64> = st.segs[..n].iter().map(|s| s.base).collect();
            (bases, st.next())
        };
        if bases.is_empty() {
            return Ok(());
        }
        let all = bases.len() == lock(&self.state).segs.len();
        let bases = if all && bases.last() == Some(&next) {
            // The last is already an empty segment at `next`: it stays.
            &bases[..bases.len() - 1]
        } else {
            if all {
                let path = self.path(next);
                let f = File::create(&path)?;
                let written = f
                    .write_all_at(&encode_header(next, &self.epoch, &self.ns), 0)
                    .and_then(|()| f.sync_data())
                    .and_then(|()| sync_dir(&self.dir));
                if let Err(e) = written {
                    drop(f);
                    let _ = fs::remove_file(&path);
                    return Err(e.into());
                }
                w.active = None;
                let mut st = lock(&self.state);
                st.segs.push(Seg::empty(next, self.header_len));
            }
            &bases[..]
        };
        for &base in bases {
            {
                let mut st = lock(&self.state);
                st.segs.remove(0);
                st.generation += 1;
            }
            self.remove_segment(&mut w, self.path(base))?;
        }
        Ok(())
    }
}
