//! How events are written out to readers, in JSON and in MessagePack (spec §3.3).
//!
//! A page of events read over HTTP is
//! `{"events": [...], "next": N, "earliest": E, "truncated": bool, "epoch": "..."}`. In
//! JSON an event's payload is `data` (the JSON value as published) or `data_b64` (bytes,
//! standard base64). In MessagePack bytes are native `bin` and `data` is always present.
//!
//! A JSON payload is written to JSON readers as stored and transcoded for MessagePack
//! readers by [`crate::value`]. Should a stored payload ever break the value rules (one
//! stored before they existed), a MessagePack page stops before that event and says so
//! in `error` (`internal`, with the event's offset), and `next` points past it: the
//! reader learns exactly which event it did not get, and the events around it still
//! arrive.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::value::{json_to_msgpack, write_bin, write_len, write_str, write_u64};
use crate::{ErrorCode, Event, Payload, ProtocolError};

/// An event a page could not carry, in place of the events from it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventError {
    /// The event's offset.
    pub offset: u64,
    /// `internal`.
    pub code: String,
    /// What failed, for people.
    pub message: String,
}

/// A page of events, as answered to an HTTP read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPage {
    /// The events, with strictly increasing offsets.
    pub events: Vec<Event>,
    /// The offset to ask for next.
    pub next: u64,
    /// The oldest offset the namespace still holds.
    pub earliest: u64,
    /// True when the requested offset was below `earliest`, so the page starts later.
    pub truncated: bool,
    /// The namespace's epoch.
    pub epoch: String,
    /// Set when the event at `error.offset` could not be encoded: the page's events stop
    /// before it and `next` is the offset after it.
    pub error: Option<EventError>,
}

/// Appends `s` as a JSON string (quoted and escaped).
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends one event as a JSON object to `out`.
pub fn write_event_json(out: &mut Vec<u8>, ev: &Event) {
    out.extend_from_slice(b"{\"offset\":");
    out.extend_from_slice(ev.offset.to_string().as_bytes());
    out.extend_from_slice(b",\"event\":");
    write_json_str(out, &ev.event);
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(ev.ts.to_string().as_bytes());
    if let Some(key) = &ev.key {
        out.extend_from_slice(b",\"key\":");
        write_json_str(out, key);
    }
    match &ev.data {
        Payload::Json(text) => {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(text.as_bytes());
        }
        Payload::Bytes(bytes) => {
            out.extend_from_slice(b",\"data_b64\":\"");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .as_bytes(),
            );
            out.push(b'"');
        }
    }
    out.push(b'}');
}

impl ReadPage {
    /// The page as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.events.len() * 128);
        out.extend_from_slice(b"{\"events\":[");
        for (i, ev) in self.events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_event_json(&mut out, ev);
        }
        out.extend_from_slice(
            format!(
                "],\"next\":{},\"earliest\":{},\"truncated\":{},\"epoch\":",
                self.next, self.earliest, self.truncated
            )
            .as_bytes(),
        );
        write_json_str(&mut out, &self.epoch);
        if let Some(e) = &self.error {
            out.extend_from_slice(b",\"error\":");
            // A plain struct of strings and a number serializes without failing.
            let _ = serde_json::to_writer(&mut out, e);
        }
        out.push(b'}');
        out
    }

    /// The page as MessagePack (a map with the same field names as the JSON form). An
    /// event whose payload cannot be encoded ends the page there: `error` names it and
    /// `next` is the offset after it; that error is returned too, for the log.
    pub fn to_msgpack(&self) -> (Vec<u8>, Option<EventError>) {
        let mut events = Vec::with_capacity(64 + self.events.len() * 128);
        let mut count = 0;
        let mut next = self.next;
        let mut error = self.error.clone();
        for ev in &self.events {
            let mark = events.len();
            if let Err(e) = write_event(&mut events, ev) {
                events.truncate(mark);
                next = ev.offset.saturating_add(1);
                error = Some(EventError {
                    offset: ev.offset,
                    code: ErrorCode::Internal.as_str().to_owned(),
                    message: format!(
                        "event {} cannot be encoded in MessagePack ({e}); ask from {next} for the events after it",
                        ev.offset
                    ),
                });
                break;
            }
            count += 1;
        }
        let mut out = Vec::with_capacity(events.len() + 96);
        write_len(&mut out, true, if error.is_some() { 6 } else { 5 });
        write_str(&mut out, "events");
        write_len(&mut out, false, count);
        out.extend_from_slice(&events);
        write_str(&mut out, "next");
        write_u64(&mut out, next);
        write_str(&mut out, "earliest");
        write_u64(&mut out, self.earliest);
        write_str(&mut out, "truncated");
        out.push(if self.truncated { 0xc3 } else { 0xc2 });
        write_str(&mut out, "epoch");
        write_str(&mut out, &self.epoch);
        if let Some(e) = &error {
            write_str(&mut out, "error");
            write_len(&mut out, true, 3);
            write_str(&mut out, "offset");
            write_u64(&mut out, e.offset);
            write_str(&mut out, "code");
            write_str(&mut out, &e.code);
            write_str(&mut out, "message");
            write_str(&mut out, &e.message);
        }
        (out, error)
    }

    /// Parses the JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<ReadPage, ProtocolError> {
        let wire: PageIn<JsonEventIn> =
            serde_json::from_slice(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        let events = wire
            .events
            .into_iter()
            .map(JsonEventIn::into_event)
            .collect::<Result<_, _>>()?;
        Ok(ReadPage {
            events,
            next: wire.next,
            earliest: wire.earliest,
            truncated: wire.truncated,
            epoch: wire.epoch,
            error: wire.error,
        })
    }

    /// Parses the MessagePack form. JSON payloads come back as compact JSON text.
    pub fn from_msgpack(bytes: &[u8]) -> Result<ReadPage, ProtocolError> {
        let wire: PageIn<MsgEventIn> =
            rmp_serde::from_slice(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        Ok(ReadPage {
            events: wire
                .events
                .into_iter()
                .map(MsgEventIn::into_event)
                .collect(),
            next: wire.next,
            earliest: wire.earliest,
            truncated: wire.truncated,
            epoch: wire.epoch,
            error: wire.error,
        })
    }
}

/// One event as a MessagePack map.
fn write_event(out: &mut Vec<u8>, ev: &Event) -> Result<(), ProtocolError> {
    write_len(out, true, if ev.key.is_some() { 5 } else { 4 });
    write_event_entries(out, ev)
}

/// Writes an event's map entries (`offset`, `event`, `ts`, `key`?, `data`) as
/// MessagePack; `data` is native bytes or the JSON value transcoded. On failure `out`
/// holds a partial entry: callers drop what they wrote.
pub(crate) fn write_event_entries(out: &mut Vec<u8>, ev: &Event) -> Result<(), ProtocolError> {
    write_str(out, "offset");
    write_u64(out, ev.offset);
    write_str(out, "event");
    write_str(out, &ev.event);
    write_str(out, "ts");
    write_u64(out, ev.ts);
    if let Some(key) = &ev.key {
        write_str(out, "key");
        write_str(out, key);
    }
    write_str(out, "data");
    match &ev.data {
        Payload::Json(text) => json_to_msgpack(text, out),
        Payload::Bytes(bytes) => {
            write_bin(out, bytes);
            Ok(())
        }
    }
}

#[derive(Deserialize)]
struct PageIn<E> {
    events: Vec<E>,
    next: u64,
    earliest: u64,
    truncated: bool,
    epoch: String,
    #[serde(default)]
    error: Option<EventError>,
}

fn some_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct JsonEventIn {
    offset: u64,
    event: String,
    ts: u64,
    #[serde(default)]
    key: Option<String>,
    #[serde(default, deserialize_with = "some_raw")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    data_b64: Option<String>,
}

impl JsonEventIn {
    fn into_event(self) -> Result<Event, ProtocolError> {
        let data = match (self.data, self.data_b64) {
            (Some(raw), None) => Payload::Json(raw.get().to_owned()),
            (None, Some(b64)) => Payload::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| ProtocolError::Malformed(format!("data_b64: {e}")))?,
            ),
            _ => {
                return Err(ProtocolError::Malformed(
                    "an event needs exactly one of data and data_b64".into(),
                ))
            }
        };
        Ok(Event {
            offset: self.offset,
            event: self.event,
            ts: self.ts,
            key: self.key,
            data,
        })
    }
}

#[derive(Deserialize)]
struct MsgEventIn {
    offset: u64,
    event: String,
    ts: u64,
    #[serde(default)]
    key: Option<String>,
    data: MsgData,
}

/// A MessagePack payload: `bin` is bytes, anything else a JSON value as compact text with
/// its keys in their order.
pub(crate) enum MsgData {
    Bytes(Vec<u8>),
    Json(String),
}

/// A MessagePack value written out as JSON text while it is read, so map keys keep their
/// order (a `serde_json::Value` would sort them). Numbers are written as
/// [`crate::value::msgpack_to_json`] writes them.
struct JsonText(String);

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut out = Vec::new();
        d.deserialize_any(JsonWriter(&mut out))?;
        String::from_utf8(out)
            .map(JsonText)
            .map_err(D::Error::custom)
    }
}

/// Writes the value it visits as JSON into its buffer.
struct JsonWriter<'a>(&'a mut Vec<u8>);

impl<'de> serde::de::DeserializeSeed<'de> for JsonWriter<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonWriter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a value JSON can carry")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.0
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.0.extend_from_slice(v.to_string().as_bytes());
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.0.extend_from_slice(v.to_string().as_bytes());
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if !v.is_finite() {
            return Err(E::custom(format!("{v} has no JSON equivalent")));
        }
        serde_json::to_writer(&mut *self.0, &v).map_err(E::custom)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        write_json_str(self.0, v);
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push(b'[');
        let mut first = true;
        loop {
            // The comma goes before every element but the first; taken back at the end.
            let mark = self.0.len();
            if !first {
                self.0.push(b',');
            }
            if seq.next_element_seed(JsonWriter(self.0))?.is_none() {
                self.0.truncate(mark);
                break;
            }
            first = false;
        }
        self.0.push(b']');
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push(b'{');
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if !first {
                self.0.push(b',');
            }
            first = false;
            write_json_str(self.0, &key);
            self.0.push(b':');
            map.next_value_seed(JsonWriter(self.0))?;
        }
        self.0.push(b'}');
        Ok(())
    }
}

impl<'de> Deserialize<'de> for MsgData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Accepts MessagePack `bin` only (serde_bytes would also take an array).
        struct OnlyBytes(Vec<u8>);

        impl<'de> Deserialize<'de> for OnlyBytes {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = OnlyBytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<OnlyBytes, E> {
                        Ok(OnlyBytes(v.to_vec()))
                    }
                    fn visit_byte_buf<E: serde::de::Error>(
                        self,
                        v: Vec<u8>,
                    ) -> Result<OnlyBytes, E> {
                        Ok(OnlyBytes(v))
                    }
                }
                d.deserialize_bytes(V)
            }
        }

        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bytes(OnlyBytes),
            Json(JsonText),
        }
        Ok(match Either::deserialize(d)? {
            Either::Bytes(b) => MsgData::Bytes(b.0),
            Either::Json(v) => MsgData::Json(v.0),
        })
    }
}

impl MsgEventIn {
    fn into_event(self) -> Event {
        Event {
            offset: self.offset,
            event: self.event,
            ts: self.ts,
            key: self.key,
            data: match self.data {
                MsgData::Bytes(b) => Payload::Bytes(b),
                MsgData::Json(text) => Payload::Json(text),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn payload() -> impl Strategy<Value = Payload> {
        prop_oneof![
            json_value().prop_map(|v| Payload::Json(v.to_string())),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Bytes),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        (
            any::<u64>(),
            "\\PC{1,20}",
            any::<u64>(),
            prop::option::of(".{0,10}"),
            payload(),
        )
            .prop_map(|(offset, event, ts, key, data)| Event {
                offset,
                event,
                ts,
                key,
                data,
            })
    }

    fn page() -> impl Strategy<Value = ReadPage> {
        (
            prop::collection::vec(event(), 0..8),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            "[0-9a-f]{16}",
        )
            .prop_map(|(events, next, earliest, truncated, epoch)| ReadPage {
                events,
                next,
                earliest,
                truncated,
                epoch,
                error: None,
            })
    }

    proptest! {
        #[test]
        fn json_round_trip(page in page()) {
            let bytes = page.to_json();
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_ok());
            prop_assert_eq!(ReadPage::from_json(&bytes).unwrap(), page);
        }

        #[test]
        fn msgpack_round_trip(page in page()) {
            let (bytes, error) = page.to_msgpack();
            prop_assert_eq!(error, None);
            // JSON payloads come back as compact text; `page()` builds them compact already.
            prop_assert_eq!(ReadPage::from_msgpack(&bytes).unwrap(), page);
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = ReadPage::from_json(&bytes);
            let _ = ReadPage::from_msgpack(&bytes);
        }
    }

    /// A MessagePack page's JSON payloads come back with their keys in their order.
    #[test]
    fn msgpack_pages_keep_key_order() {
        let text = r#"{"z":[1,-2,0.5,"s",null,true,{}],"a":{"y":[],"b":"é"}}"#;
        let page = ReadPage {
            events: vec![Event {
                offset: 0,
                event: "e".into(),
                ts: 1,
                key: None,
                data: Payload::Json(text.into()),
            }],
            next: 1,
            earliest: 0,
            truncated: false,
            epoch: "0123456789abcdef".into(),
            error: None,
        };
        let (bytes, _) = page.to_msgpack();
        assert_eq!(ReadPage::from_msgpack(&bytes).unwrap(), page);
    }

    #[test]
    fn json_shape() {
        let page = ReadPage {
            events: vec![Event {
                offset: 3,
                event: "e\"x".into(),
                ts: 9,
                key: None,
                data: Payload::Bytes(vec![1, 2, 3]),
            }],
            next: 4,
            earliest: 0,
            truncated: false,
            epoch: "ab".into(),
            error: None,
        };
        assert_eq!(
            String::from_utf8(page.to_json()).unwrap(),
            r#"{"events":[{"offset":3,"event":"e\"x","ts":9,"data_b64":"AQID"}],"next":4,"earliest":0,"truncated":false,"epoch":"ab"}"#
        );
    }
}
