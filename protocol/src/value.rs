//! Event values: the one validation every way in uses, and the transcoders between the
//! two encodings rewind serves.
//!
//! rewind stores a JSON payload as the JSON text it arrived as (or, from a MessagePack
//! publisher, as the JSON text of the equivalent value) and hands it to JSON readers as
//! is and to MessagePack readers transcoded. So a value is accepted only if both
//! encodings carry it, which this module checks once for every transport (HTTP JSON,
//! NDJSON, WebSocket JSON, WebSocket MessagePack):
//!
//! - nesting at most [`MAX_DATA_DEPTH`] arrays and maps (a scalar is depth 0, `[]` is 1);
//! - map keys are strings, each at most once per map;
//! - strings are Unicode text: no lone UTF-16 surrogate (`"\ud800"`) in JSON, valid
//!   UTF-8 in MessagePack;
//! - integers fit 64 bits (−2⁶³ to 2⁶⁴−1), the range of MessagePack integers;
//! - other numbers are finite 64-bit floats (no `1e400`, no NaN or infinity, no nonzero
//!   number that rounds to zero);
//! - no MessagePack extension types, and bytes (`bin`) only as the whole payload, never
//!   inside a value (JSON has no bytes).
//!
//! A refusal is [`ProtocolError::BadValue`], which names where the value breaks a rule
//! as a path such as `data.k[3]` (code `bad_frame`, HTTP 400).
//!
//! Both walkers are iterative, so no input nests deep enough to exhaust the stack, and
//! they stop at the first level over the limit.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::ProtocolError;

/// Deepest nesting of arrays and maps in an event's `data`. Chosen below every decoder
/// that reads it back inside rewind's frames: serde_json stops at 128 levels for a whole
/// document and a read page wraps `data` in 3 more levels (page map, `events` array,
/// event map); rmp-serde stops at 1,024. 100 leaves room for the envelope and for
/// clients' own wrapping.
pub const MAX_DATA_DEPTH: usize = 100;

/// A piece of a value, in document order.
#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Null,
    Bool(bool),
    /// A MessagePack unsigned integer.
    UInt(u64),
    /// A MessagePack signed integer.
    Int(i64),
    /// A MessagePack float (a float32 widened).
    Float(f64),
    /// A JSON number, as written.
    Num(&'a str),
    /// A string, or why it is not Unicode text.
    Str(Result<Cow<'a, str>, String>),
    /// MessagePack `bin`.
    Bytes,
    /// A MessagePack extension, with its type.
    Ext(i8),
    /// An array or map starts; MessagePack knows its length up front.
    Begin {
        map: bool,
        len: Option<usize>,
    },
    /// The innermost open array or map ends.
    End,
}

/// One open array or map while checking.
struct Level<'a> {
    map: bool,
    /// Array: elements seen. Map: keys and values seen.
    seen: usize,
    /// Map: the current entry's key.
    key: Option<Cow<'a, str>>,
    keys: HashSet<Cow<'a, str>>,
    /// Where this level's element count goes in [`Check::counts`].
    count_at: usize,
}

/// The rules, applied to the pieces of one value in document order.
#[derive(Default)]
struct Check<'a> {
    levels: Vec<Level<'a>>,
    /// Elements (arrays) or entries (maps) of each container, in the order they open.
    counts: Vec<usize>,
    /// Complete values outside any container: one, once a whole value was read.
    top: usize,
}

/// The path of a key: `.name` for identifier-like keys, `["…"]` otherwise.
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        let shown: String = key.chars().take(64).collect();
        path.push('[');
        path.push_str(&serde_json::to_string(&shown).unwrap_or_default());
        if shown.len() < key.len() {
            path.push('…');
        }
        path.push(']');
    }
}

impl<'a> Check<'a> {
    /// Where the value being checked is, e.g. `data.k[3]`.
    fn path(&self) -> String {
        let mut path = String::from("data");
        for level in &self.levels {
            if level.map {
                if let Some(k) = &level.key {
                    push_key(&mut path, k);
                }
            } else {
                path.push_str(&format!("[{}]", level.seen));
            }
        }
        if path.len() > 200 {
            let mut head = 100;
            while !path.is_char_boundary(head) {
                head -= 1;
            }
            let mut tail = path.len() - 100;
            while !path.is_char_boundary(tail) {
                tail += 1;
            }
            path = format!("{}…{}", &path[..head], &path[tail..]);
        }
        path
    }

    fn fail(&self, reason: impl Into<String>) -> ProtocolError {
        ProtocolError::BadValue {
            path: self.path(),
            reason: reason.into(),
        }
    }

    /// After a complete value (scalar or container) inside the innermost level.
    fn done_value(&mut self) {
        let Some(level) = self.levels.last_mut() else {
            self.top += 1;
            return;
        };
        level.seen += 1;
        if level.map && level.seen % 2 == 0 {
            level.key = None;
        }
    }

    /// Takes a map key: a string, new in its map.
    fn take_key(&mut self, tok: Tok<'a>) -> Result<(), ProtocolError> {
        let key = match tok {
            Tok::Str(Ok(key)) => key,
            Tok::Str(Err(why)) => return Err(self.fail(format!("a map key {why}"))),
            Tok::End => return self.end(),
            _ => {
                return Err(self.fail("a map key that is not a string: JSON keys are strings only"))
            }
        };
        let Some(level) = self.levels.last_mut() else {
            return Ok(());
        };
        if level.keys.insert(key.clone()) {
            level.key = Some(key);
            level.seen += 1;
            return Ok(());
        }
        let shown: String = key.chars().take(64).collect();
        Err(self.fail(format!(
            "the key {} appears twice in one map; readers would disagree on its value",
            serde_json::to_string(&shown).unwrap_or_default()
        )))
    }

    fn take(&mut self, tok: Tok<'a>) -> Result<(), ProtocolError> {
        if self.levels.last().is_some_and(|l| l.map && l.seen % 2 == 0) {
            return self.take_key(tok);
        }
        match tok {
            Tok::Null | Tok::Bool(_) | Tok::UInt(_) | Tok::Int(_) => {}
            Tok::Float(f) if !f.is_finite() => {
                return Err(self.fail(format!("{f} has no JSON equivalent")))
            }
            Tok::Float(_) => {}
            Tok::Num(text) => check_number(text).map_err(|why| self.fail(why))?,
            Tok::Str(Ok(_)) => {}
            Tok::Str(Err(why)) => return Err(self.fail(format!("a string {why}"))),
            Tok::Bytes => {
                return Err(self.fail(
                    "bytes (MessagePack bin) inside a value: JSON has no bytes; only a whole \
                     payload may be bytes",
                ))
            }
            Tok::Ext(t) => {
                return Err(self.fail(format!(
                    "MessagePack extension type {t} has no JSON equivalent"
                )))
            }
            Tok::Begin { map, .. } => {
                if self.levels.len() == MAX_DATA_DEPTH {
                    return Err(self.fail(format!(
                        "nests deeper than {MAX_DATA_DEPTH} levels of arrays and maps"
                    )));
                }
                self.counts.push(0);
                self.levels.push(Level {
                    map,
                    seen: 0,
                    key: None,
                    keys: HashSet::new(),
                    count_at: self.counts.len() - 1,
                });
                return Ok(());
            }
            Tok::End => return self.end(),
        }
        self.done_value();
        Ok(())
    }

    /// Fails unless exactly one whole value was read.
    fn finish(&self) -> Result<(), ProtocolError> {
        if self.levels.is_empty() && self.top == 1 {
            Ok(())
        } else {
            Err(ProtocolError::Malformed(
                "the payload is not one complete JSON value".into(),
            ))
        }
    }

    fn end(&mut self) -> Result<(), ProtocolError> {
        if let Some(level) = self.levels.pop() {
            if let Some(count) = self.counts.get_mut(level.count_at) {
                *count = if level.map {
                    level.seen / 2
                } else {
                    level.seen
                };
            }
        }
        self.done_value();
        Ok(())
    }
}

/// Whether a JSON number is carried by MessagePack: integers in 64 bits, other numbers
/// finite as 64-bit floats.
fn check_number(text: &str) -> Result<(), String> {
    if is_integer_literal(text) {
        let fits = if text.starts_with('-') {
            text.parse::<i64>().is_ok()
        } else {
            text.parse::<u64>().is_ok()
        };
        if !fits {
            return Err(format!(
                "the integer {} is outside the 64-bit range MessagePack carries \
                 (-9223372036854775808 to 18446744073709551615)",
                short(text)
            ));
        }
        return Ok(());
    }
    match text.parse::<f64>() {
        Ok(f) if !f.is_finite() => Err(format!(
            "the number {} is too large for a 64-bit float",
            short(text)
        )),
        Ok(f) if f == 0.0 && mantissa_nonzero(text) => Err(format!(
            "the number {} is too small for a 64-bit float (it would read back as 0)",
            short(text)
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("{} is not a number", short(text))),
    }
}

/// True when the digits before any exponent are not all zero.
fn mantissa_nonzero(text: &str) -> bool {
    text.split(['e', 'E'])
        .next()
        .is_some_and(|m| m.bytes().any(|b| (b'1'..=b'9').contains(&b)))
}

fn is_integer_literal(text: &str) -> bool {
    !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

fn short(text: &str) -> String {
    if text.len() <= 40 {
        text.to_owned()
    } else {
        format!("{}…", &text[..40])
    }
}

/// Reads the pieces of valid JSON text in document order (the caller has parsed it with
/// serde_json already; this only walks it). Other text gets an error or an unspecified
/// verdict, never a panic.
fn json_tokens<'a>(
    text: &'a str,
    mut f: impl FnMut(Tok<'a>) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                f(Tok::Begin {
                    map: bytes[i] == b'{',
                    len: None,
                })?;
                i += 1;
            }
            b'}' | b']' => {
                f(Tok::End)?;
                i += 1;
            }
            b'"' => {
                let (s, end) = json_string(text, i);
                f(Tok::Str(s))?;
                i = end;
            }
            b'n' => {
                f(Tok::Null)?;
                i += 4;
            }
            b't' => {
                f(Tok::Bool(true))?;
                i += 4;
            }
            b'f' => {
                f(Tok::Bool(false))?;
                i += 5;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                f(Tok::Num(text.get(start..i).unwrap_or_default()))?;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The string starting at `text[start] == '"'`, decoded, and the index after its closing
/// quote.
fn json_string(text: &str, start: usize) -> (Result<Cow<'_, str>, String>, usize) {
    let bytes = text.as_bytes();
    let mut i = start + 1;
    let mut plain = true;
    while i < bytes.len() && bytes[i] != b'"' {
        if bytes[i] == b'\\' {
            plain = false;
            i += 1;
        }
        i += 1;
    }
    let end = (i + 1).min(bytes.len());
    let inner = text.get(start + 1..i.min(bytes.len())).unwrap_or_default();
    if plain {
        return (Ok(Cow::Borrowed(inner)), end);
    }
    (unescape(inner).map(Cow::Owned), end)
}

fn hex4(s: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(s.get(..4)?).ok()?;
    u16::from_str_radix(s, 16).ok()
}

/// Decodes the escapes of a JSON string's inside.
fn unescape(inner: &str) -> Result<String, String> {
    let b = inner.as_bytes();
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    let mut run = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(inner.get(run..i).unwrap_or_default());
        let c = b.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        match c {
            b'n' => out.push('\n'),
            b't' => out.push('\t'),
            b'r' => out.push('\r'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'u' => {
                let unit = hex4(b.get(i..).unwrap_or_default()).ok_or("has a bad \\u escape")?;
                i += 4;
                let lone = |u: u16| {
                    format!(
                        "holds a lone UTF-16 surrogate \\u{u:04x}, which has no UTF-8 form, so \
                         MessagePack cannot carry it"
                    )
                };
                match unit {
                    0xd800..=0xdbff => {
                        let low = (b.get(i..i + 2) == Some(b"\\u"))
                            .then(|| hex4(&b[i + 2..]))
                            .flatten()
                            .filter(|l| (0xdc00..=0xdfff).contains(l))
                            .ok_or_else(|| lone(unit))?;
                        i += 6;
                        let c = 0x10000
                            + ((u32::from(unit) - 0xd800) << 10)
                            + (u32::from(low) - 0xdc00);
                        out.push(char::from_u32(c).ok_or_else(|| lone(unit))?);
                    }
                    0xdc00..=0xdfff => return Err(lone(unit)),
                    u => out.push(char::from_u32(u32::from(u)).ok_or_else(|| lone(u))?),
                }
            }
            other => out.push(char::from(other)),
        }
        run = i;
    }
    out.push_str(inner.get(run..).unwrap_or_default());
    Ok(out)
}

/// Checks JSON text given by a user (a CLI argument, a file, a client's `&str`): one JSON
/// value, whitespace around it allowed, that every rule of this module accepts. Returns
/// the value's text without the whitespace around it, which is what the broker stores
/// when the same text arrives as an event's `data`. Syntax errors are
/// [`ProtocolError::Malformed`] with serde_json's message (line and column within
/// `text`); rule breaks are the same [`ProtocolError::BadValue`] the broker answers. Any
/// depth is read without recursion, so a value nested too deep gets the depth rule's
/// message and path rather than a parser's recursion limit.
pub fn check_json_text(text: &str) -> Result<&str, ProtocolError> {
    let raw: &serde_json::value::RawValue =
        serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    validate_json(raw.get())?;
    Ok(raw.get())
}

/// Checks a JSON payload against every rule of this module. `text` must be valid JSON
/// (as serde_json's `RawValue` leaves it): syntax is serde_json's job, not this one's.
pub fn validate_json(text: &str) -> Result<(), ProtocolError> {
    let mut check = Check::default();
    json_tokens(text, |t| check.take(t))?;
    check.finish()
}

/// The MessagePack form of a JSON payload, appended to `out`, for MessagePack readers.
/// Keys keep their order; integers stay integers, other numbers become float64. Fails,
/// leaving `out` as it was, when the text breaks a rule (only text stored before the
/// rules existed can).
pub fn json_to_msgpack(text: &str, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let mut check = Check::default();
    json_tokens(text, |t| check.take(t))?;
    check.finish()?;
    let mut counts = check.counts.into_iter();
    json_tokens(text, |t| {
        match t {
            Tok::Null => out.push(0xc0),
            Tok::Bool(b) => out.push(if b { 0xc3 } else { 0xc2 }),
            Tok::Num(n) if is_integer_literal(n) => match n.parse::<u64>() {
                Ok(u) => write_uint(out, u),
                Err(_) => write_int(out, n.parse::<i64>().unwrap_or_default()),
            },
            Tok::Num(n) => write_f64(out, n.parse::<f64>().unwrap_or_default()),
            Tok::Str(s) => write_str(out, &s.unwrap_or_default()),
            Tok::Begin { map, .. } => {
                write_len(out, map, counts.next().unwrap_or_default());
            }
            Tok::End | Tok::UInt(_) | Tok::Int(_) | Tok::Float(_) | Tok::Bytes | Tok::Ext(_) => {}
        }
        Ok(())
    })
}

fn write_uint(out: &mut Vec<u8>, u: u64) {
    match u {
        0..=0x7f => out.push(u as u8),
        0x80..=0xff => out.extend_from_slice(&[0xcc, u as u8]),
        0x100..=0xffff => {
            out.push(0xcd);
            out.extend_from_slice(&(u as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend_from_slice(&(u as u32).to_be_bytes());
        }
        _ => {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
    }
}

fn write_int(out: &mut Vec<u8>, i: i64) {
    if i >= 0 {
        return write_uint(out, i as u64);
    }
    match i {
        -32..=-1 => out.push(i as i8 as u8),
        -128..=-33 => out.extend_from_slice(&[0xd0, i as i8 as u8]),
        -32768..=-129 => {
            out.push(0xd1);
            out.extend_from_slice(&(i as i16).to_be_bytes());
        }
        -2_147_483_648..=-32769 => {
            out.push(0xd2);
            out.extend_from_slice(&(i as i32).to_be_bytes());
        }
        _ => {
            out.push(0xd3);
            out.extend_from_slice(&i.to_be_bytes());
        }
    }
}

fn write_f64(out: &mut Vec<u8>, f: f64) {
    out.push(0xcb);
    out.extend_from_slice(&f.to_be_bytes());
}

/// A MessagePack `str`.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    match n {
        0..=31 => out.push(0xa0 | n as u8),
        32..=0xff => out.extend_from_slice(&[0xd9, n as u8]),
        0x100..=0xffff => {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s.as_bytes());
}

/// A MessagePack `bin`.
pub(crate) fn write_bin(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    match n {
        0..=0xff => out.extend_from_slice(&[0xc4, n as u8]),
        0x100..=0xffff => {
            out.push(0xc5);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xc6);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(b);
}

/// A MessagePack array or map header.
pub(crate) fn write_len(out: &mut Vec<u8>, map: bool, n: usize) {
    let (fix, b16, b32) = if map {
        (0x80, 0xde, 0xdf)
    } else {
        (0x90, 0xdc, 0xdd)
    };
    match n {
        0..=15 => out.push(fix | n as u8),
        16..=0xffff => {
            out.push(b16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(b32);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

/// Writes a MessagePack unsigned integer (for frames built by hand).
pub(crate) fn write_u64(out: &mut Vec<u8>, u: u64) {
    write_uint(out, u);
}

/// Reads one MessagePack value from the front of `bytes`, handing its pieces to `f`;
/// returns the bytes it took. Iterative: nesting costs heap, not stack.
fn msgpack_tokens<'a>(
    bytes: &'a [u8],
    mut f: impl FnMut(Tok<'a>) -> Result<(), ProtocolError>,
) -> Result<usize, ProtocolError> {
    let truncated = || ProtocolError::Malformed("truncated MessagePack value".into());
    let mut i = 0;
    // Values still to read in each open container.
    let mut left: Vec<usize> = Vec::new();
    let take = |i: &mut usize, n: usize| -> Result<&'a [u8], ProtocolError> {
        let s = bytes.get(*i..*i + n).ok_or_else(truncated)?;
        *i += n;
        Ok(s)
    };
    let be = |s: &[u8]| s.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    loop {
        let m = *bytes.get(i).ok_or_else(truncated)?;
        i += 1;
        let tok = match m {
            0x00..=0x7f => Tok::UInt(u64::from(m)),
            0xe0..=0xff => Tok::Int(i64::from(m as i8)),
            0xc0 => Tok::Null,
            0xc2 => Tok::Bool(false),
            0xc3 => Tok::Bool(true),
            0xcc..=0xcf => Tok::UInt(be(take(&mut i, 1 << (m - 0xcc))?)),
            0xd0..=0xd3 => {
                let n = 1usize << (m - 0xd0);
                let raw = be(take(&mut i, n)?);
                let shift = 64 - 8 * n as u32;
                Tok::Int(((raw << shift) as i64) >> shift)
            }
            0xca => {
                let raw = be(take(&mut i, 4)?) as u32;
                Tok::Float(f64::from(f32::from_bits(raw)))
            }
            0xcb => Tok::Float(f64::from_bits(be(take(&mut i, 8)?))),
            0xa0..=0xbf | 0xd9..=0xdb => {
                let n = if m <= 0xbf {
                    usize::from(m & 0x1f)
                } else {
                    be(take(&mut i, 1 << (m - 0xd9))?) as usize
                };
                let raw = take(&mut i, n)?;
                Tok::Str(
                    std::str::from_utf8(raw)
                        .map(Cow::Borrowed)
                        .map_err(|_| "is not valid UTF-8".to_owned()),
                )
            }
            0xc4..=0xc6 => {
                let n = be(take(&mut i, 1 << (m - 0xc4))?) as usize;
                take(&mut i, n)?;
                Tok::Bytes
            }
            0xc7..=0xc9 => {
                let n = be(take(&mut i, 1 << (m - 0xc7))?) as usize;
                let t = take(&mut i, 1)?[0] as i8;
                take(&mut i, n)?;
                Tok::Ext(t)
            }
            0xd4..=0xd8 => {
                let t = take(&mut i, 1)?[0] as i8;
                take(&mut i, 1 << (m - 0xd4))?;
                Tok::Ext(t)
            }
            0x80..=0x9f | 0xdc..=0xdf => {
                let map = matches!(m, 0x80..=0x8f | 0xde | 0xdf);
                let n = match m {
                    0x80..=0x9f => usize::from(m & 0x0f),
                    0xdc | 0xde => be(take(&mut i, 2)?) as usize,
                    _ => be(take(&mut i, 4)?) as usize,
                };
                f(Tok::Begin { map, len: Some(n) })?;
                left.push(if map { n.saturating_mul(2) } else { n });
                // An empty container is complete at once.
                while left.last() == Some(&0) {
                    left.pop();
                    f(Tok::End)?;
                    match left.last_mut() {
                        Some(l) => *l -= 1,
                        None => return Ok(i),
                    }
                }
                continue;
            }
            _ => return Err(ProtocolError::Malformed("0xc1 is not MessagePack".into())),
        };
        f(tok)?;
        loop {
            match left.last_mut() {
                None => return Ok(i),
                Some(l) => {
                    *l -= 1;
                    if *l > 0 {
                        break;
                    }
                }
            }
            left.pop();
            f(Tok::End)?;
        }
    }
}

/// How many bytes the MessagePack value at the front of `bytes` takes, without any check
/// of its content (for skipping fields).
pub(crate) fn msgpack_value_len(bytes: &[u8]) -> Result<usize, ProtocolError> {
    msgpack_tokens(bytes, |_| Ok(()))
}

/// The JSON text of a MessagePack payload (the whole of `bytes`), checked against every
/// rule of this module. Keys keep their order.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<String, ProtocolError> {
    let mut check = Check::default();
    let mut out = Vec::with_capacity(bytes.len() + 16);
    // Per open container: (is a map, elements written).
    let mut open: Vec<(bool, usize)> = Vec::new();
    let used = msgpack_tokens(bytes, |t| {
        check.take(t.clone())?;
        if !matches!(t, Tok::End) {
            if let Some((map, n)) = open.last_mut() {
                if *n > 0 {
                    out.push(if *map && *n % 2 == 1 { b':' } else { b',' });
                }
                *n += 1;
            }
        }
        match t {
            Tok::Null => out.extend_from_slice(b"null"),
            Tok::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Tok::UInt(u) => out.extend_from_slice(u.to_string().as_bytes()),
            Tok::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Tok::Float(f) => {
                let _ = serde_json::to_writer(&mut out, &f);
            }
            Tok::Str(Ok(s)) => crate::codec::write_json_str(&mut out, &s),
            Tok::Begin { map, .. } => {
                out.push(if map { b'{' } else { b'[' });
                open.push((map, 0));
            }
            Tok::End => {
                if let Some((map, _)) = open.pop() {
                    out.push(if map { b'}' } else { b']' });
                }
            }
            Tok::Num(_) | Tok::Str(Err(_)) | Tok::Bytes | Tok::Ext(_) => {}
        }
        Ok(())
    })?;
    check.finish()?;
    if used != bytes.len() {
        return Err(ProtocolError::Malformed(
            "bytes after the MessagePack value".into(),
        ));
    }
    // Only valid UTF-8 was written: checked strings, numbers and punctuation.
    String::from_utf8(out).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

#[cfg(test)]
#[path = "value_tests.rs"]
mod tests;
