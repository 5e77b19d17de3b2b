//! The little-endian fields the write-ahead log's frames and the manifest are made of:
//! strings as `len u16 LE | bytes`, optional numbers as `present u8 | value u64 LE`, a
//! [`Retention`] as three of those. One writer and one [`Reader`] for both files.

use super::Retention;

/// What is wrong in a file's bytes: the byte position and what is there.
pub(crate) type FieldDamage = (u64, String);

/// Appends `len u16 LE | bytes` (names and epochs are far below 64 KiB).
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends `present u8 | value u64 LE` (0 when absent).
fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    out.push(u8::from(v.is_some()));
    out.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
}

/// Appends the three limits of `r`, each with [`put_opt`].
pub(crate) fn put_retention(out: &mut Vec<u8>, r: &Retention) {
    put_opt(out, r.max_events);
    put_opt(out, r.max_bytes);
    put_opt(out, r.max_age_secs);
}

/// Reads the fields back, failing with the position of what does not fit.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// Bytes read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Whether every byte has been read.
    pub(crate) fn at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FieldDamage> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err((self.pos as u64, "ends early".into()));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FieldDamage> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FieldDamage> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FieldDamage> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FieldDamage> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A string written by [`put_str`]; text that is not UTF-8 is damage.
    pub(crate) fn string(&mut self) -> Result<String, FieldDamage> {
        let n = self.u16()? as usize;
        let at = self.pos as u64;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| (at, "text is not UTF-8".into()))
    }

    /// A number written by [`put_opt`]; a presence byte other than 0 or 1 is damage.
    pub(crate) fn opt(&mut self) -> Result<Option<u64>, FieldDamage> {
        let at = self.pos as u64;
        let present = self.u8()?;
        let v = self.u64()?;
        match present {
            0 => Ok(None),
            1 => Ok(Some(v)),
            _ => Err((at, format!("presence byte {present}"))),
        }
    }

    /// Limits written by [`put_retention`].
    pub(crate) fn retention(&mut self) -> Result<Retention, FieldDamage> {
        Ok(Retention {
            max_events: self.opt()?,
            max_bytes: self.opt()?,
            max_age_secs: self.opt()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_as_written_and_short_input_is_damage_at_its_end() {
        let mut out = Vec::new();
        put_str(&mut out, "orders");
        put_opt(&mut out, Some(7));
        put_opt(&mut out, None);
        let retention = Retention {
            max_events: Some(1),
            max_bytes: None,
            max_age_secs: Some(3),
        };
        put_retention(&mut out, &retention);
        let mut r = Reader::new(&out);
        assert_eq!(r.string().unwrap(), "orders");
        assert_eq!(r.opt().unwrap(), Some(7));
        assert_eq!(r.opt().unwrap(), None);
        assert_eq!(r.retention().unwrap(), retention);
        assert!(r.at_end());
        let mut short = Reader::new(&out[..5]);
        assert_eq!(short.string(), Err((2, "ends early".into())));
        let mut bad = out.clone();
        bad[8] = 2;
        let mut r = Reader::new(&bad);
        r.string().unwrap();
        assert_eq!(r.opt(), Err((8, "presence byte 2".into())));
    }
}
