//! What is wrong with a WebSocket frame's field, in the protocol's terms: which field,
//! what it must be (`protocol.md`, "Client → broker"), and what it was instead — never
//! the decoder's own wording ("invalid type: floating point `1.8e19`, expected u64").
//!
//! The same mistake reads the same in both encodings: a MessagePack field is held to what
//! its JSON equivalent can be (a string field must be a `str`, not `bin`).

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// What a known field must be.
#[derive(Clone, Copy)]
pub(crate) enum Want {
    /// A string (`t`, `ns`, `event`, `key`, `idempotency_key`, `epoch`).
    Str,
    /// An unsigned 64-bit integer (`id`, `credit`, `n`).
    U64,
    /// `true` or `false` (`bin`).
    Bool,
}

/// The frame fields a decoder reads with a fixed type (`from` and `data` take any type
/// and are checked on their own), in the order their mistakes are reported.
pub(crate) const TYPED_FIELDS: [(&str, Want); 10] = [
    ("id", Want::U64),
    ("ns", Want::Str),
    ("event", Want::Str),
    ("key", Want::Str),
    ("idempotency_key", Want::Str),
    ("epoch", Want::Str),
    ("credit", Want::U64),
    ("n", Want::U64),
    ("bin", Want::Bool),
    ("token", Want::Str),
];

/// The sentence for field `name` that should be `want` but is `got` (a short
/// description: `a string`, `-1`, `bytes`, …).
pub(crate) fn must_be(name: &str, want: Want, got: &str) -> String {
    match want {
        Want::Str => format!("{name} must be a string, not {got}"),
        Want::U64 => format!(
            "{name} must be an integer from 0 to {}, not {got}",
            u64::MAX
        ),
        Want::Bool => format!("{name} must be true or false, not {got}"),
    }
}

/// At most 40 characters of `text`, marked when cut.
fn short(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// What a JSON value is, from its text.
fn json_kind(raw: &str) -> String {
    match raw.trim_start().as_bytes().first() {
        Some(b'"') => "a string".into(),
        Some(b'[') => "an array".into(),
        Some(b'{') => "an object".into(),
        Some(b't' | b'f') => raw.trim().into(),
        Some(b'n') => "null".into(),
        _ => short(raw.trim()),
    }
}

/// Why `raw` is not a good value for field `name`, if it is not.
fn json_field(name: &str, want: Want, raw: &str) -> Option<String> {
    let fits = match want {
        Want::Str => serde_json::from_str::<Option<String>>(raw).is_ok(),
        Want::U64 => serde_json::from_str::<Option<u64>>(raw).is_ok(),
        Want::Bool => serde_json::from_str::<Option<bool>>(raw).is_ok(),
    };
    if fits {
        return None;
    }
    if matches!(want, Want::Str) && raw.trim_start().starts_with('"') {
        // A JSON string that does not decode: only a lone UTF-16 surrogate gets here (the
        // text has been parsed as JSON already).
        return Some(format!(
            "{name} cannot hold a lone UTF-16 surrogate ({}): it has no UTF-8 form",
            short(raw.trim())
        ));
    }
    Some(must_be(name, want, &json_kind(raw)))
}

/// A JSON object's fields as raw JSON text; `None` when `text` is not an object.
fn json_fields(text: &str) -> Option<BTreeMap<String, &RawValue>> {
    serde_json::from_str(text).ok()
}

/// The first known field of JSON frame `text` (an object) with a value of the wrong type,
/// described; `None` when every one fits.
pub(crate) fn explain_json(text: &str) -> Option<String> {
    let fields = json_fields(text)?;
    TYPED_FIELDS.iter().find_map(|(name, want)| {
        let raw = fields.get(*name)?;
        json_field(name, *want, raw.get())
    })
}

/// Why `text`, which is not a JSON object with a string `t`, is not a frame.
pub(crate) fn not_a_json_frame(text: &str) -> String {
    if let Err(syntax) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        if syntax.to_string().starts_with("recursion limit exceeded") {
            return "nested deeper than 128 levels".into();
        }
        return format!("not JSON ({syntax})");
    }
    let Some(fields) = json_fields(text) else {
        return format!(
            "a frame must be a JSON object with a string t, not {}",
            json_kind(text)
        );
    };
    match fields.get("t") {
        None => "a frame needs a string t".into(),
        Some(raw) => json_field("t", Want::Str, raw.get())
            .unwrap_or_else(|| "a frame needs a string t".into()),
    }
}

/// What a MessagePack value is, from its bytes.
pub(crate) fn msgpack_kind(v: &[u8]) -> String {
    match v.first() {
        Some(0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff) => rmp_serde::from_slice::<i64>(v)
            .map(|n| n.to_string())
            .or_else(|_| rmp_serde::from_slice::<u64>(v).map(|n| n.to_string()))
            .unwrap_or_else(|_| "an integer".into()),
        Some(0xca | 0xcb) => rmp_serde::from_slice::<f64>(v)
            .map(|f| format!("{f:?}"))
            .unwrap_or_else(|_| "a float".into()),
        Some(0xa0..=0xbf | 0xd9..=0xdb) => "a string".into(),
        Some(0xc4..=0xc6) => "bin (bytes)".into(),
        Some(0x90..=0x9f | 0xdc | 0xdd) => "an array".into(),
        Some(0x80..=0x8f | 0xde | 0xdf) => "a map".into(),
        Some(0xc2) => "false".into(),
        Some(0xc3) => "true".into(),
        Some(0xc0) => "nil".into(),
        Some(0xc7..=0xc9 | 0xd4..=0xd8) => "an extension type".into(),
        Some(0xc1) | None => "not MessagePack".into(),
    }
}

/// True for a MessagePack `str`.
pub(crate) fn msgpack_is_str(v: &[u8]) -> bool {
    matches!(v.first(), Some(0xa0..=0xbf | 0xd9..=0xdb))
}

/// A MessagePack field of a fixed type: `None` when absent or nil; otherwise its value,
/// or why it does not fit.
pub(crate) fn msgpack_field<T: serde::de::DeserializeOwned>(
    raw: Option<&[u8]>,
    name: &str,
    want: Want,
) -> Result<Option<T>, String> {
    let Some(v) = raw.filter(|v| v.first() != Some(&0xc0)) else {
        return Ok(None);
    };
    let fits_type = match want {
        Want::Str => msgpack_is_str(v),
        Want::U64 => matches!(v.first(), Some(0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff)),
        Want::Bool => matches!(v.first(), Some(0xc2 | 0xc3)),
    };
    if fits_type {
        if let Ok(x) = rmp_serde::from_slice::<T>(v) {
            return Ok(Some(x));
        }
        if matches!(want, Want::Str) {
            return Err(format!("{name} is not valid UTF-8"));
        }
    }
    Err(must_be(name, want, &msgpack_kind(v)))
}
