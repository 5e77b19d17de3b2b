//! What a publisher hands over: [`Data`] (a JSON value, checked JSON text, or bytes) and
//! [`Record`] (an event name, an optional key and the data), shared by
//! [`crate::Client`] and [`crate::Publisher`].
//!
//! JSON data is a [`serde_json::Value`] or a [`JsonText`], never unchecked text: text
//! becomes data only through [`Data::json_text`] (or `str::parse`), which applies the
//! broker's own check ([`rewind_protocol::value::check_json_text`]) and keeps the text
//! as written, so the broker never has to refuse it and the publisher's key order,
//! number spelling and big integers are not changed on the way. A [`Payload`] read from
//! a subscription converts with [`Data::try_from`], into the same checked text.

use std::str::FromStr;

use rewind_protocol::{ErrorCode, Payload, ProtocolError};

/// A payload to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// A JSON value, stored and delivered as JSON (MessagePack to MessagePack readers).
    /// Its keys go in the order the `Value` holds them: sorted, unless the application
    /// enables serde_json's `preserve_order` feature. For an exact order, use
    /// [`Data::JsonText`].
    Json(serde_json::Value),
    /// JSON text that passed the broker's value rules, sent as written.
    JsonText(JsonText),
    /// Raw bytes, delivered as bytes (`data_b64` to JSON readers over HTTP).
    Bytes(Vec<u8>),
}

/// JSON text checked by the broker's value rules ([`rewind_protocol::value`]): one JSON
/// value that every encoding carries, kept exactly as written (the whitespace around it
/// dropped, as the broker does). Made by [`JsonText::new`] or `str::parse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    /// Checks `text` as the broker would: one JSON value (whitespace around it allowed)
    /// within the value rules. The error is the broker's code (`bad_frame`) and message,
    /// e.g. `data: the key "a" appears twice in one map; …` or, for text that is not
    /// JSON, `malformed input: …` with the line and column within `text`.
    pub fn new(text: &str) -> Result<JsonText, BadJson> {
        rewind_protocol::value::check_json_text(text)
            .map(|checked| JsonText(checked.to_owned()))
            .map_err(BadJson)
    }

    /// The text, as it will be stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JsonText {
    type Err = BadJson;

    fn from_str(text: &str) -> Result<JsonText, BadJson> {
        JsonText::new(text)
    }
}

/// JSON text the broker would refuse: not one JSON value, or a value its rules refuse
/// (see `docs/http-api.md`, "Values every encoding carries"). Displays the broker's
/// message for the same text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadJson(pub ProtocolError);

impl BadJson {
    /// The code the broker answers the same text with (`bad_frame`).
    pub fn code(&self) -> ErrorCode {
        self.0.code()
    }
}

impl From<serde_json::Value> for Data {
    fn from(v: serde_json::Value) -> Data {
        Data::Json(v)
    }
}

impl From<&serde_json::Value> for Data {
    fn from(v: &serde_json::Value) -> Data {
        Data::Json(v.clone())
    }
}

impl From<JsonText> for Data {
    fn from(t: JsonText) -> Data {
        Data::JsonText(t)
    }
}

impl From<Vec<u8>> for Data {
    fn from(b: Vec<u8>) -> Data {
        Data::Bytes(b)
    }
}

impl From<&[u8]> for Data {
    fn from(b: &[u8]) -> Data {
        Data::Bytes(b.to_vec())
    }
}

impl From<bytes::Bytes> for Data {
    fn from(b: bytes::Bytes) -> Data {
        Data::Bytes(b.to_vec())
    }
}

impl FromStr for Data {
    type Err = BadJson;

    /// JSON text, as [`Data::json_text`].
    fn from_str(text: &str) -> Result<Data, BadJson> {
        Data::json_text(text)
    }
}

impl TryFrom<Payload> for Data {
    type Error = BadJson;

    /// A payload as read from a subscription, to publish it again: JSON text is checked
    /// and kept as it is ([`Data::JsonText`]); bytes convert as they are.
    fn try_from(p: Payload) -> Result<Data, BadJson> {
        match p {
            Payload::Json(text) => Data::json_text(&text),
            Payload::Bytes(b) => Ok(Data::Bytes(b)),
        }
    }
}

impl Data {
    /// JSON text given by a user (an argument, a file, a message from elsewhere),
    /// checked as the broker checks it and published exactly as written: see
    /// [`JsonText::new`] for what is refused.
    pub fn json_text(text: &str) -> Result<Data, BadJson> {
        JsonText::new(text).map(Data::JsonText)
    }

    /// The payload as the wire carries it (a value as compact text, checked text as is).
    pub(crate) fn to_payload(&self) -> Payload {
        match self {
            Data::Json(v) => Payload::Json(v.to_string()),
            Data::JsonText(t) => Payload::Json(t.0.clone()),
            Data::Bytes(b) => Payload::Bytes(b.clone()),
        }
    }

    /// JSON data as text; `None` for bytes.
    pub(crate) fn json_str(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Data::Json(v) => Some(v.to_string().into()),
            Data::JsonText(t) => Some(t.0.as_str().into()),
            Data::Bytes(_) => None,
        }
    }
}

/// One event to publish: its name, an optional key (at most 1,024 bytes, spec §2; the
/// broker stores it and hands it to readers, it does not route by it) and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The event's name.
    pub event: String,
    /// The event's key, if any.
    pub key: Option<String>,
    /// The payload.
    pub data: Data,
}

impl Record {
    /// A record without a key.
    pub fn new(event: impl Into<String>, data: impl Into<Data>) -> Record {
        Record {
            event: event.into(),
            key: None,
            data: data.into(),
        }
    }

    /// The same record with `key` set.
    pub fn key(mut self, key: impl Into<String>) -> Record {
        self.key = Some(key.into());
        self
    }
}

impl<E: Into<String>, D: Into<Data>> From<(E, D)> for Record {
    fn from((event, data): (E, D)) -> Record {
        Record::new(event, data)
    }
}

impl<E: Into<String> + Clone, D: Into<Data> + Clone> From<&(E, D)> for Record {
    fn from(pair: &(E, D)) -> Record {
        Record::new(pair.0.clone(), pair.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_becomes_data_only_as_the_broker_would_take_it() {
        let e = Data::try_from(Payload::Json("not json".into())).unwrap_err();
        assert!(e.to_string().starts_with("malformed input"), "{e}");
        assert_eq!(e.code(), ErrorCode::BadFrame);
        let text = r#"{"z":1,"a":[1e2,18446744073709551615]}"#;
        let data = Data::try_from(Payload::Json(text.into())).unwrap();
        assert_eq!(data.to_payload(), Payload::Json(text.into()));
        assert_eq!(format!(" {text}\n").parse::<Data>().unwrap(), data);
        let dup = Data::json_text(r#"{"b":1,"b":[1,2]}"#).unwrap_err();
        assert_eq!(
            dup.to_string(),
            "data: the key \"b\" appears twice in one map; readers would disagree on its value"
        );
        assert_eq!(
            Data::try_from(Payload::Bytes(vec![1])).unwrap(),
            Data::Bytes(vec![1])
        );
    }

    #[test]
    fn records_carry_keys_and_convert_from_pairs() {
        let r = Record::new("created", json!({"id": 1})).key("order-1");
        assert_eq!(r.key.as_deref(), Some("order-1"));
        let pairs = [("a", json!(1))];
        let from_ref: Record = (&pairs[0]).into();
        assert_eq!(from_ref, Record::new("a", json!(1)));
        let from_bytes: Record = ("b", vec![0u8]).into();
        assert_eq!(from_bytes.data, Data::Bytes(vec![0]));
    }
}
