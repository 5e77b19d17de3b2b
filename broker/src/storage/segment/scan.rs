//! Reading segment files whole: verifying them at open, and salvaging what a damaged
//! log still holds.

use std::fs::File;
use std::path::Path;

use super::frame::{decode_header, Decoded, Header, Window, FRAME_HEADER};
use super::{list_dir, Damage, Records, Seg, SegmentLog, MAX_READ, STRAY};
use crate::storage::StoreError;

impl SegmentLog {
    /// Salvage for recovery: every frame whose checksum holds, in order of strictly
    /// increasing offset, from every segment of `dir` (scanning byte by byte past damage:
    /// a bad header, a bad or incomplete frame, offsets that are not dense), and the
    /// damage found. Header namespace and epoch are not checked. Changes nothing.
    pub(crate) fn salvage(dir: &Path) -> Result<(Records, Vec<Damage>), StoreError> {
        let (files, strays) = list_dir(dir)?;
        let mut frames: Records = Vec::new();
        let mut damage: Vec<Damage> = strays
            .into_iter()
            .map(|file| Damage {
                file,
                position: 0,
                what: STRAY.into(),
                torn_tail: false,
            })
            .collect();
        // Damage noted before the last frame kept: a gap in offsets after more is explained.
        let mut noted = 0;
        for (i, (base, path)) in files.iter().enumerate() {
            let last = i + 1 == files.len();
            let file = File::open(path)?;
            let file_len = file.metadata()?.len();
            let mut w = Window::new(&file, file_len, MAX_READ);
            let mut lower = frames.last().map_or(*base, |(o, _)| o + 1);
            let note = |damage: &mut Vec<Damage>, position: u64, what: String, torn_tail: bool| {
                damage.push(Damage {
                    file: path.clone(),
                    position,
                    what,
                    torn_tail,
                })
            };
            // Where the frames start, or None when they must be scanned for.
            let mut pos = match decode_header(w.header()?) {
                Ok(h) if h.base == *base => Some(h.len),
                Ok(Header { base: b, .. }) => {
                    note(
                        &mut damage,
                        0,
                        format!("header says base offset {b}"),
                        false,
                    );
                    None
                }
                Err(what) => {
                    let what = what.unwrap_or_else(|| "incomplete segment header".into());
                    let torn = last && w.next_valid(0, lower)?.is_none();
                    note(&mut damage, 0, what, torn);
                    None
                }
            };
            let mut at = 0;
            loop {
                if let Some(p) = pos {
                    if p >= file_len {
                        break;
                    }
                    let fault = match w.frame(p)? {
                        Decoded::Frame { offset, record } if offset >= lower => {
                            if offset != lower && damage.len() == noted {
                                let what = format!("offset {offset} where {lower} belongs");
                                note(&mut damage, p, what, false);
                            }
                            noted = damage.len();
                            pos = Some(p + FRAME_HEADER + record.len() as u64);
                            frames.push((offset, record.to_vec()));
                            lower = offset + 1;
                            continue;
                        }
                        Decoded::Frame { offset, .. } => {
                            (format!("offset {offset} where {lower} belongs"), false)
                        }
                        Decoded::Incomplete => ("incomplete frame".into(), true),
                        Decoded::Bad => ("frame checksum mismatch".into(), true),
                    };
                    let found = w.next_valid(p, lower)?;
                    note(&mut damage, p, fault.0, last && fault.1 && found.is_none());
                    at = p;
                    pos = found.map(|(q, _)| q);
                } else {
                    pos = w.next_valid(at, lower)?.map(|(q, _)| q);
                }
                if pos.is_none() {
                    break;
                }
            }
        }
        Ok((frames, damage))
    }
}

/// The first thing wrong in a segment file.
pub(super) struct Fault {
    pub(super) position: u64,
    pub(super) what: String,
    /// It may be a torn tail: an incomplete or bad frame or header, as opposed to bytes
    /// whose checksums hold but say the wrong thing.
    pub(super) repairable: bool,
}

fn fault(position: u64, what: impl Into<String>, repairable: bool) -> Option<Fault> {
    Some(Fault {
        position,
        what: what.into(),
        repairable,
    })
}

/// Verifies one segment file from its start: the segment as far as it is whole (`None` if
/// its header is not), and the first fault.
pub(super) fn verify(
    w: &mut Window<'_>,
    base: u64,
    ns: &str,
    epoch: &str,
    hlen: u64,
) -> Result<(Option<Seg>, Option<Fault>), StoreError> {
    match decode_header(w.header()?) {
        Err(None) => return Ok((None, fault(0, "incomplete segment header", true))),
        Err(Some(what)) => return Ok((None, fault(0, what, true))),
        Ok(h) => {
            let what = if h.base != base {
                format!("header says base offset {}, the file name {base}", h.base)
            } else if h.epoch != epoch.as_bytes() || h.ns != ns.as_bytes() || h.len != hlen {
                let other = String::from_utf8_lossy(h.ns);
                format!("header belongs to another log ({other})")
            } else {
                String::new()
            };
            if !what.is_empty() {
                return Ok((None, fault(0, what, false)));
            }
        }
    }
    let mut seg = Seg::empty(base, hlen);
    loop {
        let pos = seg.len;
        if pos == w.end {
            return Ok((Some(seg), None));
        }
        let found = match w.frame(pos)? {
            Decoded::Frame { offset, record } if offset == seg.next => {
                let frame_len = FRAME_HEADER + record.len() as u64;
                seg.add_frame(offset, pos, frame_len);
                continue;
            }
            Decoded::Frame { offset, .. } => {
                let what = format!("offset {offset} where {} belongs", seg.next);
                fault(pos, what, false)
            }
            Decoded::Incomplete => fault(pos, "incomplete frame", true),
            Decoded::Bad => fault(pos, "frame checksum mismatch", true),
        };
        return Ok((Some(seg), found));
    }
}
