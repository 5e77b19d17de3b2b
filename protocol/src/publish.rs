//! Parsing of publish requests into validated [`NewEvent`]s (spec §3.2).
//!
//! Three body shapes are accepted: one JSON object `{"event", "data", "key"?}`, a JSON
//! array of such objects (a batch), and NDJSON (one object per line, also a batch). A raw
//! byte body becomes one event through [`raw_event`]. Every event is checked against the
//! naming rules, the payload limit and the value rules of [`crate::value`] here, so the
//! broker never stores anything a reader could not read back.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{validate_event_name, NewEvent, Payload, ProtocolError};

/// Longest event key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Limits that parsing enforces; the broker fills them from its configuration.
#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    /// Largest payload of one event, in bytes (for JSON: the length of its JSON text).
    pub max_payload_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
}

/// A parsed publish body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishBody {
    /// The events, in order.
    pub events: Vec<NewEvent>,
    /// True when the body was an array or NDJSON, whose answer is `{"first", "last"}`.
    pub batch: bool,
}

/// One event object as it arrives. `event` and `key` are kept raw so that a value of the
/// wrong type is refused with a message naming the field ("event must be a string, not
/// a number"), not in serde's words.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an event object")]
struct WireEvent<'a> {
    #[serde(borrow)]
    event: &'a RawValue,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
}

/// What the event object of a publish looks like, for messages.
const EVENT_OBJECT: &str = r#"{"event": NAME, "data"?: ANY, "key"?: STRING}"#;

/// serde_json's message, with its position only where it helps: none for a field that is
/// missing, unknown or twice (the field is named), the column alone on a one-line text
/// (an NDJSON line, which `at_item` names).
fn malformed(err: serde_json::Error) -> ProtocolError {
    let text = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    let message = text.strip_suffix(&position).unwrap_or(&text);
    ProtocolError::Malformed(match err.classify() {
        serde_json::error::Category::Data => message.to_owned(),
        _ if err.line() == 1 => format!("{message} at column {}", err.column()),
        _ => text.clone(),
    })
}

/// The kind of JSON value `raw` is, for messages ("a number").
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A field that must be a JSON string.
fn string_field(raw: &RawValue, field: &str) -> Result<String, ProtocolError> {
    serde_json::from_str(raw.get()).map_err(|_| {
        ProtocolError::Malformed(format!("{field} must be a string, not {}", kind(raw)))
    })
}

/// Reads one event object from `text`, which must be a JSON object; `what` names the
/// thing that was not one ("the body", "each line", "each item").
fn wire_event<'a>(text: &'a [u8], what: &str) -> Result<WireEvent<'a>, ProtocolError> {
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ProtocolError::Malformed(format!(
            "{what} is one event object, {EVENT_OBJECT}"
        )));
    }
    serde_json::from_slice(text).map_err(malformed)
}

fn check_key(key: &Option<String>) -> Result<(), ProtocolError> {
    match key {
        Some(k) if k.len() > MAX_KEY_BYTES => Err(ProtocolError::Malformed(format!(
            "key is {} bytes, the limit is {MAX_KEY_BYTES}",
            k.len()
        ))),
        _ => Ok(()),
    }
}

fn check_payload(data: &Payload, limits: &PublishLimits) -> Result<(), ProtocolError> {
    if data.len() > limits.max_payload_bytes {
        return Err(ProtocolError::PayloadTooLarge {
            size: data.len(),
            limit: limits.max_payload_bytes,
        });
    }
    Ok(())
}

fn check_batch(len: usize, limits: &PublishLimits) -> Result<(), ProtocolError> {
    if len == 0 || len > limits.max_batch_events {
        return Err(ProtocolError::BatchSize {
            size: len,
            limit: limits.max_batch_events,
        });
    }
    Ok(())
}

fn into_new_event(wire: WireEvent<'_>, limits: &PublishLimits) -> Result<NewEvent, ProtocolError> {
    let event = string_field(wire.event, "event")?;
    validate_event_name(&event)?;
    let key = match wire.key {
        Some(raw) => Some(string_field(raw, "key")?),
        None => None,
    };
    check_key(&key)?;
    let text = wire.data.map_or("null", RawValue::get);
    crate::value::validate_json(text)?;
    let data = Payload::Json(text.to_owned());
    check_payload(&data, limits)?;
    Ok(NewEvent { event, key, data })
}

/// A body without the UTF-8 byte order mark some editors and tools put first: RFC 8259
/// §8.1 lets a JSON parser ignore it, and a user cannot see it.
fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// Parses an `application/json` body: one object, or an array of objects (a batch). A
/// leading byte order mark is ignored.
pub fn parse_json(body: &[u8], limits: &PublishLimits) -> Result<PublishBody, ProtocolError> {
    let body = without_bom(body);
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(malformed)?;
            check_batch(items.len(), limits)?;
            let events = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    wire_event(item.get().as_bytes(), "each item")
                        .and_then(|w| into_new_event(w, limits))
                        .map_err(|e| at_item("item", i, e))
                })
                .collect::<Result<_, _>>()?;
            Ok(PublishBody {
                events,
                batch: true,
            })
        }
        Some(b'{') => {
            let wire = wire_event(body, "the body")?;
            Ok(PublishBody {
                events: vec![into_new_event(wire, limits)?],
                batch: false,
            })
        }
        Some(_) => Err(ProtocolError::Malformed(
            "expected a JSON object or an array of objects".into(),
        )),
        None => Err(ProtocolError::Malformed("the body is empty".into())),
    }
}

/// Parses an `application/x-ndjson` body: one event object per line; blank lines are
/// skipped, and so is a byte order mark before the first line. The result is always a
/// batch.
pub fn parse_ndjson(body: &[u8], limits: &PublishLimits) -> Result<PublishBody, ProtocolError> {
    let body = without_bom(body);
    let mut events = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if events.len() == limits.max_batch_events {
            return Err(ProtocolError::BatchSize {
                size: events.len() + 1,
                limit: limits.max_batch_events,
            });
        }
        let wire = wire_event(line, "each line").map_err(|e| at_item("line", i + 1, e))?;
        events.push(into_new_event(wire, limits).map_err(|e| at_item("line", i + 1, e))?);
    }
    check_batch(events.len(), limits)?;
    Ok(PublishBody {
        events,
        batch: true,
    })
}

/// Builds the one event of a raw byte body, named by the `?event=` query parameter.
pub fn raw_event(
    event: &str,
    key: Option<&str>,
    body: Vec<u8>,
    limits: &PublishLimits,
) -> Result<NewEvent, ProtocolError> {
    validate_event_name(event)?;
    let key = key.map(str::to_owned);
    check_key(&key)?;
    let data = Payload::Bytes(body);
    check_payload(&data, limits)?;
    Ok(NewEvent {
        event: event.to_owned(),
        key,
        data,
    })
}

fn at_item(what: &str, index: usize, err: ProtocolError) -> ProtocolError {
    match err {
        ProtocolError::Malformed(m) => ProtocolError::Malformed(format!("{what} {index}: {m}")),
        ProtocolError::BadValue { path, reason } => ProtocolError::BadValue {
            path: format!("{what} {index}: {path}"),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PublishLimits = PublishLimits {
        max_payload_bytes: 64,
        max_batch_events: 3,
    };

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let one = parse_json(b"\xEF\xBB\xBF{\"event\":\"a\"}", &LIMITS).unwrap();
        assert_eq!(one.events[0].event, "a");
        let batch = parse_json(b"\xEF\xBB\xBF[{\"event\":\"a\"}]", &LIMITS).unwrap();
        assert!(batch.batch);
        let lines =
            parse_ndjson(b"\xEF\xBB\xBF{\"event\":\"a\"}\n{\"event\":\"b\"}", &LIMITS).unwrap();
        assert_eq!(lines.events.len(), 2);
        // Only before the first byte: elsewhere it is not JSON.
        assert!(
            parse_ndjson(b"{\"event\":\"a\"}\n\xEF\xBB\xBF{\"event\":\"b\"}", &LIMITS).is_err()
        );
    }

    #[test]
    fn one_object() {
        let body = parse_json(br#"{"event":"e","data":{"a": [1, 2]},"key":"k"}"#, &LIMITS).unwrap();
        assert!(!body.batch);
        assert_eq!(body.events[0].event, "e");
        assert_eq!(body.events[0].key.as_deref(), Some("k"));
        assert_eq!(
            body.events[0].data,
            Payload::Json(r#"{"a": [1, 2]}"#.into())
        );
    }

    #[test]
    fn missing_data_is_null() {
        let body = parse_json(br#" {"event":"e"}"#, &LIMITS).unwrap();
        assert_eq!(body.events[0].data, Payload::Json("null".into()));
    }

    #[test]
    fn arrays_and_ndjson_are_batches() {
        let body = parse_json(
            br#"[{"event":"a","data":1},{"event":"b","data":2}]"#,
            &LIMITS,
        )
        .unwrap();
        assert!(body.batch);
        assert_eq!(body.events.len(), 2);
        let nd = parse_ndjson(
            b"{\"event\":\"a\",\"data\":1}\n\n{\"event\":\"b\",\"data\":2}\n",
            &LIMITS,
        )
        .unwrap();
        assert_eq!(nd, body);
    }

    #[test]
    fn rejects_bad_input() {
        let cases: &[&[u8]] = &[
            b"",
            b"   ",
            b"42",
            b"{",
            br#"{"event":5}"#,
            br#"{"data":1}"#,
            br#"{"event":"e","extra":1}"#,
            br#"{"event":""}"#,
            br#"{"event":"a\u0001b"}"#,
            br#"{"event":"e","key":7}"#,
            b"[]",
            br#"[{"event":"a"},{"event":"b"},{"event":"c"},{"event":"d"}]"#,
            br#"[{"event":"a"},{"event":""}]"#,
        ];
        for case in cases {
            let err = parse_json(case, &LIMITS).unwrap_err();
            assert_eq!(
                err.code(),
                crate::ErrorCode::BadFrame,
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        let big = format!(r#"{{"event":"e","data":"{}"}}"#, "x".repeat(80));
        assert_eq!(
            parse_json(big.as_bytes(), &LIMITS).unwrap_err().code(),
            crate::ErrorCode::PayloadTooLarge
        );
        let deep = format!(
            "{{\"event\":\"e\",\"data\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(parse_json(
            deep.as_bytes(),
            &PublishLimits {
                max_payload_bytes: 1 << 20,
                max_batch_events: 1
            }
        )
        .is_err());
        assert!(parse_ndjson(b"\n\n", &LIMITS).is_err());
        assert!(parse_ndjson(b"{\"event\":\"a\"}\nnot json\n", &LIMITS)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }

    #[test]
    fn messages_name_the_mistake_not_serde_types() {
        let json = |body: &str| {
            parse_json(body.as_bytes(), &LIMITS)
                .unwrap_err()
                .to_string()
        };
        let nd = |body: &str| {
            parse_ndjson(body.as_bytes(), &LIMITS)
                .unwrap_err()
                .to_string()
        };
        let cases = [
            (
                nd("{\"event\":\"a\"}\n[{\"event\":\"a\"}]\n"),
                "line 2: each line is one event object",
            ),
            (nd("\"a\"\n"), "line 1: each line is one event object"),
            (
                nd("{\"event\":\"a\",}\n"),
                "line 1: trailing comma at column 14",
            ),
            (json("[1]"), "item 0: each item is one event object"),
            (
                json("[{\"event\":\"a\"},[]]"),
                "item 1: each item is one event object",
            ),
            (
                json(r#"{"event":{}}"#),
                "event must be a string, not an object",
            ),
            (
                json(r#"{"event":5}"#),
                "event must be a string, not a number",
            ),
            (
                json(r#"[{"event":"a","key":7}]"#),
                "item 0: key must be a string, not a number",
            ),
            (
                json(r#"[{"event":"a","extra":1}]"#),
                "item 0: unknown field `extra`",
            ),
            (json(r#"{"data":1}"#), "missing field `event`"),
        ];
        for (got, want) in cases {
            assert!(got.contains(want), "{got:?} lacks {want:?}");
            for serde_words in [
                "invalid type",
                "struct",
                "expected a string",
                "line 1 column",
            ] {
                assert!(!got.contains(serde_words), "{got:?}");
            }
        }
        // A null key is no key, as before.
        let body = parse_json(br#"{"event":"a","key":null}"#, &LIMITS).unwrap();
        assert_eq!(body.events[0].key, None);
    }

    #[test]
    fn raw_events() {
        let ev = raw_event("blob", Some("k"), vec![0, 255, 1], &LIMITS).unwrap();
        assert_eq!(ev.data, Payload::Bytes(vec![0, 255, 1]));
        assert!(raw_event("", None, vec![], &LIMITS).is_err());
        assert_eq!(
            raw_event("b", None, vec![0; 65], &LIMITS)
                .unwrap_err()
                .code(),
            crate::ErrorCode::PayloadTooLarge
        );
    }
}
