//! What a publisher hands over: [`Data`] (a JSON value or bytes) and [`Record`] (an event
//! name, an optional key and the data), shared by [`crate::Client`] and
//! [`crate::Publisher`].
//!
//! JSON data is a [`serde_json::Value`], never text: text that is not JSON cannot be
//! expressed, so the broker never has to refuse it. A [`Payload`] read from a subscription
//! converts with [`Data::try_from`], which parses its JSON text.

use rewind_protocol::Payload;

/// A payload to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// A JSON value, stored and delivered as JSON (MessagePack to MessagePack readers).
    Json(serde_json::Value),
    /// Raw bytes, delivered as bytes (`data_b64` to JSON readers over HTTP).
    Bytes(Vec<u8>),
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

/// A [`Payload`] whose JSON text does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the payload is not JSON: {0}")]
pub struct NotJson(pub String);

impl TryFrom<Payload> for Data {
    type Error = NotJson;

    /// Parses a JSON payload's text (as read from a subscription, to publish it again);
    /// bytes convert as they are.
    fn try_from(p: Payload) -> Result<Data, NotJson> {
        match p {
            Payload::Json(text) => serde_json::from_str(&text)
                .map(Data::Json)
                .map_err(|e| NotJson(e.to_string())),
            Payload::Bytes(b) => Ok(Data::Bytes(b)),
        }
    }
}

impl Data {
    /// The payload as the wire carries it (JSON as compact text).
    pub(crate) fn to_payload(&self) -> Payload {
        match self {
            Data::Json(v) => Payload::Json(v.to_string()),
            Data::Bytes(b) => Payload::Bytes(b.clone()),
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
    fn text_that_is_not_json_does_not_become_data() {
        let e = Data::try_from(Payload::Json("not json".into())).unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        assert_eq!(
            Data::try_from(Payload::Json(r#"{"a":[1]}"#.into())).unwrap(),
            Data::Json(json!({"a": [1]}))
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
