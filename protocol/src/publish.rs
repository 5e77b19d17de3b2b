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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    event: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    key: Option<String>,
}

fn malformed(err: serde_json::Error) -> ProtocolError {
    ProtocolError::Malformed(err.to_string())
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
    validate_event_name(&wire.event)?;
    check_key(&wire.key)?;
    let text = wire.data.map_or("null", RawValue::get);
    crate::value::validate_json(text)?;
    let data = Payload::Json(text.to_owned());
    check_payload(&data, limits)?;
    Ok(NewEvent {
        event: wire.event,
        key: wire.key,
        data,
    })
}

/// Parses an `application/json` body: one object, or an array of objects (a batch).
pub fn parse_json(body: &[u8], limits: &PublishLimits) -> Result<PublishBody, ProtocolError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let wire: Vec<WireEvent<'_>> = serde_json::from_slice(body).map_err(malformed)?;
            check_batch(wire.len(), limits)?;
            let events = wire
                .into_iter()
                .enumerate()
                .map(|(i, w)| into_new_event(w, limits).map_err(|e| at_item("item", i, e)))
                .collect::<Result<_, _>>()?;
            Ok(PublishBody {
                events,
                batch: true,
            })
        }
        Some(b'{') => {
            let wire: WireEvent<'_> = serde_json::from_slice(body).map_err(malformed)?;
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
/// skipped. The result is always a batch.
pub fn parse_ndjson(body: &[u8], limits: &PublishLimits) -> Result<PublishBody, ProtocolError> {
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
        let wire: WireEvent<'_> =
            serde_json::from_slice(line).map_err(|e| at_item("line", i + 1, malformed(e)))?;
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
