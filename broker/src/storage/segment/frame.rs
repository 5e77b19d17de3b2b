//! The byte layout of segment files: the header, frames, and a reader of both that
//! fetches a file in large preads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The first 8 bytes of every segment file.
pub(super) const MAGIC: &[u8; 8] = b"RWSEG\x00\x01\n";
/// Bytes of a frame before its record: len, crc, offset.
pub(super) const FRAME_HEADER: u64 = 16;
/// Header bytes besides the name: magic, base, epoch, name_len, crc.
pub(super) const HEADER_FIXED: u64 = 8 + 8 + 16 + 2 + 4;

/// Encodes one frame onto `out`.
pub(super) fn encode_frame(out: &mut Vec<u8>, offset: u64, record: &[u8]) {
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame_crc(offset, record).to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(record);
}

pub(super) fn frame_crc(offset: u64, record: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&offset.to_le_bytes());
    h.update(record);
    h.finalize()
}

/// A frame read from the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded<'a> {
    /// A whole frame whose checksum holds; it takes `FRAME_HEADER + record.len()` bytes.
    Frame { offset: u64, record: &'a [u8] },
    /// The buffer ends before the frame does.
    Incomplete,
    /// The checksum does not hold.
    Bad,
}

/// Decodes the frame at the start of `buf`.
pub(super) fn decode_frame(buf: &[u8]) -> Decoded<'_> {
    let Some(head) = buf.get(..FRAME_HEADER as usize) else {
        return Decoded::Incomplete;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let offset = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
    let Some(record) = buf.get(FRAME_HEADER as usize..FRAME_HEADER as usize + len) else {
        return Decoded::Incomplete;
    };
    if frame_crc(offset, record) != crc {
        return Decoded::Bad;
    }
    Decoded::Frame { offset, record }
}

pub(super) fn header_len(ns: &str) -> u64 {
    HEADER_FIXED + ns.len() as u64
}

pub(super) fn encode_header(base: u64, epoch: &str, ns: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(header_len(ns) as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&base.to_le_bytes());
    h.extend_from_slice(epoch.as_bytes());
    h.extend_from_slice(&(ns.len() as u16).to_le_bytes());
    h.extend_from_slice(ns.as_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// A segment header read back.
pub(super) struct Header<'a> {
    pub(super) base: u64,
    pub(super) epoch: &'a [u8],
    pub(super) ns: &'a [u8],
    /// Its length in bytes.
    pub(super) len: u64,
}

/// The header at the start of `buf`, or why it is not one (`Err(None)`: the bytes end
/// before it does).
pub(super) fn decode_header(buf: &[u8]) -> Result<Header<'_>, Option<String>> {
    let fixed = buf.get(..34).ok_or(None)?;
    if &fixed[..8] != MAGIC {
        return Err(Some("not a segment header (magic)".into()));
    }
    let name_len = u16::from_le_bytes([fixed[32], fixed[33]]) as usize;
    let end = 34 + name_len;
    let body = buf.get(..end + 4).ok_or(None)?;
    let crc = u32::from_le_bytes(body[end..].try_into().unwrap_or_default());
    if crc32fast::hash(&body[..end]) != crc {
        return Err(Some("segment header checksum mismatch".into()));
    }
    let base = u64::from_le_bytes(fixed[8..16].try_into().unwrap_or_default());
    Ok(Header {
        base,
        epoch: &fixed[16..32],
        ns: &body[34..end],
        len: end as u64 + 4,
    })
}

/// Reads a file in large preads: `at(pos, want)` is the file's bytes from `pos`, at least
/// `want` of them unless the end (`end`) comes first.
pub(super) struct Window<'f> {
    pub(super) file: &'f File,
    pub(super) end: u64,
    pub(super) chunk: usize,
    pub(super) start: u64,
    pub(super) buf: Vec<u8>,
}

impl<'f> Window<'f> {
    pub(super) fn new(file: &'f File, end: u64, chunk: usize) -> Window<'f> {
        Window {
            file,
            end,
            chunk,
            start: 0,
            buf: Vec::new(),
        }
    }

    pub(super) fn at(&mut self, pos: u64, want: usize) -> io::Result<&[u8]> {
        let have_end = self.start + self.buf.len() as u64;
        let want_end = pos.saturating_add(want as u64).min(self.end);
        if pos < self.start || want_end > have_end {
            let n = (want.max(self.chunk) as u64).min(self.end.saturating_sub(pos)) as usize;
            // Every byte is overwritten by the read: only a longer buffer is zeroed first.
            if self.buf.len() > n {
                self.buf.truncate(n);
            } else {
                self.buf.resize(n, 0);
            }
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
        }
        let from = ((pos - self.start) as usize).min(self.buf.len());
        Ok(&self.buf[from..])
    }

    /// The segment header at the start of the file, as far as the file has it.
    pub(super) fn header(&mut self) -> io::Result<&[u8]> {
        let fixed = self.at(0, 34)?;
        let name_len = match fixed.get(32..34) {
            Some(n) => u16::from_le_bytes([n[0], n[1]]) as usize,
            None => 0,
        };
        self.at(0, 38 + name_len)
    }

    /// The frame at `pos`.
    pub(super) fn frame(&mut self, pos: u64) -> io::Result<Decoded<'_>> {
        let head = self.at(pos, FRAME_HEADER as usize)?;
        if head.len() < FRAME_HEADER as usize {
            return Ok(Decoded::Incomplete);
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        Ok(decode_frame(self.at(pos, FRAME_HEADER as usize + len)?))
    }

    /// The first position after `pos` holding a frame whose checksum holds and whose
    /// offset is one a frame there could have, from `lower` on (a cheap test first, so a
    /// scan over garbage stays linear).
    pub(super) fn next_valid(&mut self, pos: u64, lower: u64) -> io::Result<Option<(u64, u64)>> {
        let mut at = pos + 1;
        while at + FRAME_HEADER <= self.end {
            let head = self.at(at, FRAME_HEADER as usize)?;
            let offset = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
            let most = lower.saturating_add((self.end - at) / FRAME_HEADER);
            if (lower..=most).contains(&offset) {
                if let Decoded::Frame { offset, .. } = self.frame(at)? {
                    return Ok(Some((at, offset)));
                }
            }
            at += 1;
        }
        Ok(None)
    }
}
