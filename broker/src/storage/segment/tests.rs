use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::frame::*;
use super::*;

const NS: &str = "orders";
const EPOCH: &str = "00112233aabbccdd";

fn cfg(segment_bytes: u64) -> SegmentConfig {
    SegmentConfig { segment_bytes }
}

/// A record whose bytes say which offset it was written at.
fn record(offset: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (offset as usize * 31 + i * 7) as u8)
        .collect()
}

fn everything(log: &SegmentLog) -> Vec<(u64, Vec<u8>)> {
    log.read(0, u64::MAX, usize::MAX, usize::MAX).unwrap()
}

fn open(dir: &Path, first: u64, seg: u64) -> Result<(SegmentLog, OpenReport), StoreError> {
    SegmentLog::open(dir, NS, EPOCH, first, cfg(seg))
}

/// The segment files of `dir`, in order.
fn files(dir: &Path) -> Vec<PathBuf> {
    list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// A synced log in `dir` of `n` records of 20 to 59 bytes at offsets `base..`, several
/// segments of about `seg` bytes; returns the records.
fn written(dir: &Path, base: u64, n: u64, seg: u64) -> Vec<(u64, Vec<u8>)> {
    let log = SegmentLog::create(dir, NS, EPOCH, base, cfg(seg)).unwrap();
    let recs: Vec<(u64, Vec<u8>)> = (base..base + n)
        .map(|o| (o, record(o, 20 + (o as usize * 13) % 40)))
        .collect();
    for chunk in recs.chunks(3) {
        let batch: Vec<Vec<u8>> = chunk.iter().map(|(_, r)| r.clone()).collect();
        log.append(&batch).unwrap();
    }
    log.sync().unwrap();
    recs
}

proptest! {
    #[test]
    fn a_frame_round_trips_and_no_prefix_or_flipped_bit_is_a_frame(
        offset in any::<u64>(),
        rec in prop::collection::vec(any::<u8>(), 0..300),
        trailing in prop::collection::vec(any::<u8>(), 0..20),
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut buf = Vec::new();
        encode_frame(&mut buf, offset, &rec);
        let frame_len = buf.len();
        prop_assert_eq!(frame_len as u64, FRAME_HEADER + rec.len() as u64);
        buf.extend_from_slice(&trailing);
        prop_assert_eq!(decode_frame(&buf), Decoded::Frame { offset, record: &rec });
        prop_assert_eq!(decode_frame(&buf[..cut.index(frame_len)]), Decoded::Incomplete);
        buf[at.index(frame_len)] ^= 1 << bit;
        let is_frame = matches!(decode_frame(&buf), Decoded::Frame { .. });
        prop_assert!(!is_frame);
    }

    #[test]
    fn a_header_round_trips_and_no_flipped_bit_is_a_header(
        base in any::<u64>(),
        ns in "[A-Za-z0-9_.-]{1,128}",
        epoch in "[0-9a-f]{16}",
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut h = encode_header(base, &epoch, &ns);
        prop_assert_eq!(h.len() as u64, header_len(&ns));
        let back = decode_header(&h).unwrap();
        prop_assert_eq!(
            (back.base, back.epoch, back.ns, back.len),
            (base, epoch.as_bytes(), ns.as_bytes(), h.len() as u64)
        );
        prop_assert!(matches!(decode_header(&h[..h.len() - 1]), Err(None)));
        let i = at.index(h.len());
        h[i] ^= 1 << bit;
        prop_assert!(decode_header(&h).is_err());
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Truncate(u64),
    Sync,
    Reopen,
    RemoveBefore(u64),
    Read(u64, usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0usize..120, 1..6).prop_map(Op::Append),
        1 => (0u64..8).prop_map(Op::Truncate),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => (0u64..40).prop_map(Op::RemoveBefore),
        2 => (0u64..40, 0usize..12, 0usize..400).prop_map(|(f, e, b)| Op::Read(f, e, b)),
    ]
}

/// What `read` must answer, from the model: the records of `first..`.
fn expected(
    model: &[Vec<u8>],
    first: u64,
    from: u64,
    max_events: usize,
    max_bytes: usize,
) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for o in from.max(first)..model.len() as u64 {
        let rec = &model[o as usize];
        if out.len() == max_events || (!out.is_empty() && bytes + rec.len() > max_bytes) {
            break;
        }
        bytes += rec.len();
        out.push((o, rec.clone()));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn the_log_behaves_as_a_vec_of_records(
        base in 0u64..5,
        seg in 40u64..400,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log").join(NS).join(EPOCH);
        let mut log = SegmentLog::create(&dir, NS, EPOCH, base, cfg(seg)).unwrap();
        // model[o] is the record at offset o; offsets below `base` hold nothing.
        let mut model: Vec<Vec<u8>> = vec![Vec::new(); base as usize];
        for op in ops {
            match op {
                Op::Append(lens) => {
                    let next = model.len() as u64;
                    let recs: Vec<Vec<u8>> =
                        lens.iter().enumerate().map(|(i, &l)| record(next + i as u64, l)).collect();
                    log.append(&recs).unwrap();
                    model.extend(recs);
                }
                Op::Truncate(back) => {
                    let to = (model.len() as u64).saturating_sub(back).max(log.first());
                    log.truncate(to).unwrap();
                    model.truncate(to as usize);
                }
                Op::Sync => log.sync().unwrap(),
                Op::Reopen => {
                    let first = log.first();
                    drop(log);
                    let (again, report) = open(&dir, first, seg).unwrap();
                    prop_assert_eq!(report, OpenReport::default());
                    prop_assert_eq!(again.first(), first);
                    log = again;
                }
                Op::RemoveBefore(earliest) => {
                    let before = log.first();
                    log.remove_before(earliest).unwrap();
                    let next = model.len() as u64;
                    prop_assert!(log.first() >= before);
                    prop_assert!(log.first() <= earliest.max(before).min(next));
                    if earliest >= next {
                        prop_assert_eq!(log.first(), next);
                    }
                }
                Op::Read(from, max_events, max_bytes) => {
                    let got = log.read(from, u64::MAX, max_events, max_bytes).unwrap();
                    prop_assert_eq!(got, expected(&model, log.first(), from, max_events, max_bytes));
                }
            }
            prop_assert_eq!(log.next(), model.len() as u64);
            prop_assert_eq!(everything(&log), expected(&model, log.first(), 0, usize::MAX, usize::MAX));
            let from = (model.len() as u64 / 2).max(log.first());
            let bytes: usize = model[from as usize..].iter().map(Vec::len).sum();
            prop_assert_eq!(log.bytes_from(from).unwrap(), bytes as u64);
            let until = (model.len() as u64).saturating_sub(2);
            let capped = log.read(0, until, usize::MAX, usize::MAX).unwrap();
            prop_assert!(capped.iter().all(|(o, _)| *o < until));
        }
        drop(log);
        let (log, report) = open(&dir, base, seg).unwrap();
        prop_assert_eq!(report, OpenReport::default());
        prop_assert_eq!(log.next(), model.len() as u64);
    }
}

#[test]
fn reads_truncates_and_byte_counts_start_from_the_sparse_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let log = SegmentLog::create(&dir, NS, EPOCH, 0, cfg(1 << 20)).unwrap();
    let recs: Vec<(u64, Vec<u8>)> = (0..300)
        .map(|o| (o, record(o, 700 + (o as usize * 37) % 600)))
        .collect();
    for chunk in recs.chunks(7) {
        let batch: Vec<Vec<u8>> = chunk.iter().map(|(_, r)| r.clone()).collect();
        log.append(&batch).unwrap();
    }
    let index = lock(&log.state).segs[0].index.clone();
    assert!(index.len() > 10, "{index:?}");
    log.sync().unwrap();
    drop(log);
    let (log, _) = open(&dir, 0, 1 << 20).unwrap();
    assert_eq!(
        lock(&log.state).segs[0].index,
        index,
        "open builds the index appends do"
    );
    for k in 0..=300u64 {
        let want: Vec<_> = recs[k as usize..].iter().take(3).cloned().collect();
        assert_eq!(log.read(k, 300, 3, usize::MAX).unwrap(), want, "from {k}");
        let bytes: usize = recs[k as usize..].iter().map(|(_, r)| r.len()).sum();
        assert_eq!(log.bytes_from(k).unwrap(), bytes as u64, "from {k}");
    }
    for cut in [290, 200, 133, 17, 0] {
        log.truncate(cut).unwrap();
        assert_eq!(everything(&log), recs[..cut as usize]);
        log.append(&[record(cut, 5)]).unwrap();
        log.truncate(cut).unwrap();
        let cut_index: Vec<_> = index.iter().filter(|(o, _)| *o < cut).cloned().collect();
        assert_eq!(lock(&log.state).segs[0].index, cut_index);
    }
}

#[test]
fn a_torn_tail_at_every_cut_of_the_last_segment_is_cut_and_the_rest_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let recs = written(&dir, 10, 12, 200);
    let paths = files(&dir);
    assert!(paths.len() >= 3, "{paths:?}");
    let last = paths.last().unwrap().clone();
    let whole = std::fs::read(&last).unwrap();
    let last_base: u64 = list_segments(&dir).unwrap().last().unwrap().0;
    let hlen = header_len(NS);
    // The end of each frame of the last segment, in order.
    let mut ends = Vec::new();
    let mut pos = hlen;
    for (o, r) in recs.iter().filter(|(o, _)| *o >= last_base) {
        pos += FRAME_HEADER + r.len() as u64;
        ends.push((*o, pos));
    }
    assert_eq!(pos, whole.len() as u64);
    for cut in 0..whole.len() as u64 {
        std::fs::write(&last, &whole[..cut as usize]).unwrap();
        let (log, report) = open(&dir, 10, 200).unwrap();
        let (next, kept_len) = if cut < hlen {
            (last_base, None)
        } else {
            let mut whole_frames = ends.iter().filter(|(_, end)| *end <= cut);
            whole_frames
                .next_back()
                .map_or((last_base, Some(hlen)), |(o, end)| (o + 1, Some(*end)))
        };
        assert_eq!(log.next(), next, "cut at {cut}");
        assert_eq!(
            everything(&log),
            recs[..(next - 10) as usize],
            "cut at {cut}"
        );
        match kept_len {
            None => {
                assert!(!last.exists(), "cut at {cut}");
                assert_eq!(report.torn_tail_bytes, cut);
                assert_eq!(report.torn_tail_file.as_ref(), Some(&last));
            }
            Some(len) => {
                assert_eq!(std::fs::metadata(&last).unwrap().len(), len, "cut at {cut}");
                assert_eq!(report.torn_tail_bytes, cut - len, "cut at {cut}");
                assert_eq!(report.torn_tail_file.is_some(), cut > len, "cut at {cut}");
            }
        }
        // The log goes on from there, and opens again without a repair.
        log.append(&[record(next, 30)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let (log, report) = open(&dir, 10, 200).unwrap();
        assert_eq!(report, OpenReport::default(), "cut at {cut}");
        assert_eq!(log.next(), next + 1);
        assert_eq!(
            log.read(next, u64::MAX, 1, 0).unwrap(),
            [(next, record(next, 30))]
        );
        drop(log);
        // Back to the whole file (the appended segment, if any, goes).
        for p in files(&dir).into_iter().filter(|p| *p > last) {
            std::fs::remove_file(p).unwrap();
        }
        std::fs::write(&last, &whole).unwrap();
    }
}

#[test]
fn a_torn_header_of_the_only_segment_leaves_the_log_where_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    written(&dir, 7, 1, 1 << 20);
    let path = files(&dir).remove(0);
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..20]).unwrap();
    let (log, report) = open(&dir, 7, 1 << 20).unwrap();
    assert_eq!((log.first(), log.next()), (7, 7));
    assert_eq!(report.torn_tail_bytes, 20);
    assert!(files(&dir).is_empty());
}

/// Which frame of `recs` (written by [`written`]) holds byte `pos` of the segment with
/// base `base`: `None` for the header.
fn frame_at(recs: &[(u64, Vec<u8>)], base: u64, pos: u64) -> Option<u64> {
    let mut at = header_len(NS);
    for (o, r) in recs.iter().filter(|(o, _)| *o >= base) {
        let end = at + FRAME_HEADER + r.len() as u64;
        if pos < at {
            return None;
        }
        if pos < end {
            return Some(*o);
        }
        at = end;
    }
    None
}

#[test]
fn a_flipped_byte_anywhere_is_never_read_as_another_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let recs = written(&dir, 0, 10, 220);
    let segs = list_segments(&dir).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    let originals: Vec<Vec<u8>> = segs
        .iter()
        .map(|(_, p)| std::fs::read(p).unwrap())
        .collect();
    for (k, (base, path)) in segs.iter().enumerate() {
        let last = k + 1 == segs.len();
        for pos in 0..originals[k].len() {
            let mut bytes = originals[k].clone();
            bytes[pos] ^= 0xff;
            std::fs::write(path, &bytes).unwrap();
            let at = format!("{} byte {pos}", path.display());
            // Salvage keeps every frame but the one the byte is in.
            let (frames, damage) = SegmentLog::salvage(&dir).unwrap();
            let hit = frame_at(&recs, *base, pos as u64);
            let kept: Vec<_> = recs
                .iter()
                .filter(|(o, _)| Some(*o) != hit)
                .cloned()
                .collect();
            assert_eq!(frames, kept, "{at}");
            assert_eq!(damage.len(), 1, "{at}: {damage:?}");
            assert_eq!(&damage[0].file, path, "{at}");
            assert!(damage[0].position <= pos as u64, "{at}: {damage:?}");
            match open(&dir, 0, 220) {
                Err(StoreError::Damaged { file, position, .. }) => {
                    assert_eq!(&file, path, "{at}");
                    assert!(position <= pos as u64, "{at}: reported {position}");
                    assert!(!damage[0].torn_tail, "{at}");
                }
                Ok((log, report)) => {
                    // Only a torn tail: the last segment, cut at or before the byte, with
                    // every record before the cut kept unchanged.
                    assert!(last, "{at}: damage before the last segment opened");
                    assert!(damage[0].torn_tail, "{at}");
                    assert_eq!(report.torn_tail_file.as_ref(), Some(path), "{at}");
                    let cut = bytes.len() as u64 - report.torn_tail_bytes;
                    assert!(cut <= pos as u64, "{at}: cut at {cut}");
                    assert_eq!(Some(log.next()), hit, "{at}");
                    assert_eq!(everything(&log), recs[..log.next() as usize], "{at}");
                }
                Err(e) => panic!("{at}: {e}"),
            }
            std::fs::write(path, &originals[k]).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Several changed bytes anywhere: open refuses, or keeps a prefix of what was
    /// written; reads never return an event that was not written at its offset, and
    /// salvage returns only such events.
    #[test]
    fn damage_anywhere_never_changes_an_event(
        n in 1u64..30,
        seg in 60u64..400,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let recs = written(&dir, 0, n, seg);
        let paths = files(&dir);
        for (file, at, xor) in flips {
            let path = &paths[file.index(paths.len())];
            let mut bytes = std::fs::read(path).unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
            std::fs::write(path, &bytes).unwrap();
        }
        let (salvaged, _) = SegmentLog::salvage(&dir).unwrap();
        for (o, r) in &salvaged {
            prop_assert_eq!(r, &recs[*o as usize].1);
        }
        match open(&dir, 0, seg) {
            Ok((log, _)) => {
                let got = everything(&log);
                prop_assert_eq!(&got[..], &recs[..got.len()]);
            }
            Err(StoreError::Damaged { .. }) => {}
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}

#[test]
fn other_damage_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    written(&dir, 0, 10, 220);
    let paths = files(&dir);
    // A segment missing in the middle: the next one does not start where the one before
    // it ends.
    let middle = std::fs::read(&paths[1]).unwrap();
    std::fs::remove_file(&paths[1]).unwrap();
    match open(&dir, 0, 220) {
        Err(StoreError::Damaged {
            file, position: 0, ..
        }) => assert_eq!(file, paths[2]),
        other => panic!("{other:?}"),
    }
    std::fs::write(&paths[1], &middle).unwrap();
    // A segment of another log.
    let other = tmp.path().join("other");
    let log = SegmentLog::create(&other, "payments", EPOCH, 0, cfg(220)).unwrap();
    log.append(&[record(0, 5)]).unwrap();
    let foreign = dir.join(format!("{:020}.seg", 1000));
    std::fs::copy(files(&other).remove(0), &foreign).unwrap();
    let err = open(&dir, 0, 220).unwrap_err();
    assert!(
        matches!(&err, StoreError::Damaged { file, .. } if *file == foreign),
        "{err}"
    );
    std::fs::remove_file(&foreign).unwrap();
    // No directory at all.
    let missing = tmp.path().join("gone");
    match open(&missing, 0, 220) {
        Err(StoreError::Damaged { file, .. }) => assert_eq!(file, missing),
        other => panic!("{other:?}"),
    }
    // A stray file.
    let stray = dir.join("notes.txt");
    std::fs::write(&stray, "x").unwrap();
    let (frames, damage) = SegmentLog::salvage(&dir).unwrap();
    assert_eq!(frames.len(), 10, "salvage steps over a stray file");
    assert_eq!(damage.iter().map(|d| &d.file).collect::<Vec<_>>(), [&stray]);
    let err = open(&dir, 0, 220).unwrap_err();
    assert!(
        matches!(&err, StoreError::Damaged { file, .. } if *file == stray),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "damaged file {} at byte 0: not a segment file of this log; start with --recover \
             to keep every valid record (namespaces that lost events get a new epoch)",
            stray.display()
        )
    );
}

#[test]
fn damage_found_by_a_read_names_the_file_and_position() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let recs = written(&dir, 0, 10, 1 << 20);
    let (log, _) = open(&dir, 0, 1 << 20).unwrap();
    let path = files(&dir).remove(0);
    let mut bytes = std::fs::read(&path).unwrap();
    let third = header_len(NS)
        + recs[..2]
            .iter()
            .map(|(_, r)| FRAME_HEADER + r.len() as u64)
            .sum::<u64>();
    bytes[third as usize + 20] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(log.read(0, 2, 10, usize::MAX).unwrap(), recs[..2]);
    match log.read(0, 10, 10, usize::MAX) {
        Err(StoreError::Damaged { file, position, .. }) => {
            assert_eq!((file, position), (path, third));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn retention_removes_whole_segments_and_an_emptied_log_keeps_its_next() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let recs = written(&dir, 0, 12, 200);
    let segs = list_segments(&dir).unwrap();
    let (log, _) = open(&dir, 0, 200).unwrap();
    // Inside the second segment: only the first goes.
    log.remove_before(segs[1].0 + 1).unwrap();
    assert_eq!(log.first(), segs[1].0);
    assert!(!segs[0].1.exists() && segs[1].1.exists());
    assert_eq!(everything(&log), recs[segs[1].0 as usize..]);
    log.remove_before(12).unwrap();
    assert_eq!((log.first(), log.next()), (12, 12));
    assert_eq!(files(&dir), [dir.join(format!("{:020}.seg", 12))]);
    drop(log);
    let (log, report) = open(&dir, 0, 200).unwrap();
    assert_eq!(report, OpenReport::default());
    assert_eq!((log.first(), log.next()), (12, 12));
    log.append(&[record(12, 3)]).unwrap();
    assert_eq!(everything(&log), [(12, record(12, 3))]);
}

/// The descriptors this process holds open on files under `dir`.
fn fds_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir))
        .count()
}

#[test]
fn an_idle_log_holds_no_file_descriptor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let log = SegmentLog::create(&dir, NS, EPOCH, 0, cfg(100)).unwrap();
    for o in 0..6 {
        log.append(&[record(o, 40)]).unwrap();
    }
    assert!(fds_under(&dir) >= 1);
    log.sync().unwrap();
    assert_eq!(fds_under(&dir), 0);
    assert_eq!(log.read(0, 6, 6, usize::MAX).unwrap().len(), 6);
    assert_eq!(fds_under(&dir), 0);
}

#[test]
fn reads_run_beside_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    // Small segments, removed by retention as often as they fill: reads race removals.
    let log = std::sync::Arc::new(SegmentLog::create(&dir, NS, EPOCH, 0, cfg(512)).unwrap());
    let total = 6000u64;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for o in (0..total).step_by(3) {
                let recs: Vec<Vec<u8>> = (o..o + 3).map(|o| record(o, 50)).collect();
                log.append(&recs).unwrap();
                if o % 30 == 0 {
                    log.remove_before(o.saturating_sub(40)).unwrap();
                }
                if o % 300 == 0 {
                    log.sync().unwrap();
                }
            }
        })
    };
    let mut at = 0;
    while at < total {
        let until = log.next();
        for (o, r) in log.read(at, until, 100, usize::MAX).unwrap() {
            assert!(o >= at && o < until);
            assert_eq!(r, record(o, 50));
            at = o + 1;
        }
        at = at.max(log.first());
    }
    writer.join().unwrap();
}

/// A size-limited tmpfs at `dir`, unmounted when dropped. CI runs as root, where `mount`
/// works; anywhere else this test cannot run and says so by failing.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn an_append_on_a_full_disk_leaves_the_log_unchanged_and_works_once_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "64k");
    // A segment per event (the failure falls while creating files), batches crossing
    // segments, and one large segment (the failure falls inside the active one).
    for segment_bytes in [1, 10_000, 1 << 20] {
        let dir = disk.0.join("log");
        let log = SegmentLog::create(&dir, NS, EPOCH, 0, cfg(segment_bytes)).unwrap();
        // Something to free later.
        let filler = disk.0.join("filler");
        std::fs::write(&filler, vec![1u8; 16 << 10]).unwrap();
        let sizes = |dir: &Path| -> Vec<(PathBuf, u64)> {
            files(dir)
                .into_iter()
                .map(|p| (p.clone(), std::fs::metadata(&p).unwrap().len()))
                .collect()
        };
        let mut next = 0;
        let err = loop {
            let recs: Vec<Vec<u8>> = (next..next + 7).map(|o| record(o, 900)).collect();
            let before = sizes(&dir);
            match log.append(&recs) {
                Ok(()) => next += 7,
                Err(e) => {
                    assert_eq!(sizes(&dir), before, "{segment_bytes}: bytes left behind");
                    break e;
                }
            }
            assert!(next < 1000, "the disk never filled");
        };
        assert!(err.is_disk_full(), "{segment_bytes}: {err}");
        assert_eq!(log.next(), next);
        let want: Vec<(u64, Vec<u8>)> = (0..next).map(|o| (o, record(o, 900))).collect();
        assert_eq!(everything(&log), want);
        log.sync().unwrap();
        std::fs::remove_file(&filler).unwrap();
        let recs: Vec<Vec<u8>> = (next..next + 7).map(|o| record(o, 900)).collect();
        log.append(&recs).unwrap();
        log.sync().unwrap();
        drop(log);
        let (log, report) = open(&dir, 0, segment_bytes).unwrap();
        assert_eq!(report, OpenReport::default(), "{segment_bytes}");
        let want: Vec<(u64, Vec<u8>)> = (0..next + 7).map(|o| (o, record(o, 900))).collect();
        assert_eq!(everything(&log), want, "{segment_bytes}");
        drop(log);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Catch-up speed from the page cache, 1 KB records, and the time open takes to verify
/// them; a measurement, not a test of speed:
/// `cargo test --release -p rewind-broker --lib segment::tests::read_throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn read_throughput() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let log = SegmentLog::create(&dir, NS, EPOCH, 0, cfg(16 << 20)).unwrap();
    let n = 500_000u64;
    for o in (0..n).step_by(1000) {
        let recs: Vec<Vec<u8>> = (o..o + 1000).map(|o| record(o, 1000)).collect();
        log.append(&recs).unwrap();
    }
    log.sync().unwrap();
    // Nanoseconds this thread has run on a CPU: on a shared machine the wall clock
    // also counts the time other work had the CPU.
    let on_cpu = || -> f64 {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        text.split_whitespace()
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1e9
    };
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let cpu = on_cpu();
        let mut at = 0;
        let mut bytes = 0;
        while at < n {
            let page = log.read(at, n, 1000, 4 << 20).unwrap();
            bytes += page.iter().map(|(_, r)| r.len()).sum::<usize>();
            at = page.last().unwrap().0 + 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = on_cpu() - cpu;
        println!(
            "read {n} records of 1000 bytes ({} MB) in {secs:.3} s ({cpu:.3} s on a CPU): \
             {:.0} events/s, {:.0} per CPU-second",
            bytes >> 20,
            n as f64 / secs,
            n as f64 / cpu
        );
    }
    drop(log);
    let start = std::time::Instant::now();
    let (log, _) = open(&dir, 0, 16 << 20).unwrap();
    println!(
        "open verified {} segments in {:.3} s",
        files(&dir).len(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(log.next(), n);
}

/// FIX9 item 7: no argument of `read` overflows (a debug build panicked on `max_events`
/// near `usize::MAX` with `from` past the first offset).
#[test]
fn read_with_extreme_arguments_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let recs = written(tmp.path(), 5, 40, 512);
    let (log, _) = open(tmp.path(), 5, 512).unwrap();
    for from in [0, 5, 6, 30, 44, 45, u64::MAX - 1, u64::MAX] {
        for until in [0, 6, 45, u64::MAX] {
            for max_events in [0, 1, usize::MAX - 1, usize::MAX] {
                for max_bytes in [0, 1, usize::MAX] {
                    let got = log.read(from, until, max_events, max_bytes).unwrap();
                    let want: Vec<_> = recs
                        .iter()
                        .filter(|(o, _)| *o >= from && *o < until)
                        .take(max_events)
                        .collect();
                    assert!(got.len() <= want.len());
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(g, *w);
                    }
                    if max_bytes == usize::MAX {
                        assert_eq!(got.len(), want.len(), "{from} {until} {max_events}");
                    }
                }
            }
        }
    }
}
