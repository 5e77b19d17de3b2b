//! Events, their payloads, and read positions (spec §2).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::ProtocolError;

/// What an event carries: a JSON value or raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A JSON value, kept as the validated JSON text it arrived as, so it is never parsed
    /// again on the way out.
    Json(String),
    /// Raw bytes, delivered as bytes (MessagePack `bin`, a WebSocket binary frame, or base64
    /// in JSON reads).
    Bytes(Vec<u8>),
}

impl Payload {
    /// Size of the payload in bytes, as counted against the payload limit.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(text) => text.len(),
            Payload::Bytes(bytes) => bytes.len(),
        }
    }

    /// True for an empty byte payload (a JSON payload is never empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An event as the publisher hands it over, before it has an offset and a timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event's name (validated).
    pub event: String,
    /// Optional key chosen by the publisher.
    pub key: Option<String>,
    /// The payload.
    pub data: Payload,
}

/// An event in a namespace's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the namespace's log: 0 for the first event, +1 per event.
    pub offset: u64,
    /// The event's name.
    pub event: String,
    /// Broker time of the append, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// Optional key chosen by the publisher.
    pub key: Option<String>,
    /// The payload.
    pub data: Payload,
}

/// Where a read starts (spec §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// Deliver offsets greater than or equal to this one.
    Offset(u64),
    /// Start at the oldest retained event.
    Earliest,
    /// Only events appended from now on.
    Latest,
}

/// A position past the end of a log: an offset that has not been handed out yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offset {offset} is beyond the end of the log (next is {next})")]
pub struct BeyondEnd {
    /// The offset asked for.
    pub offset: u64,
    /// The offset the log's next event gets.
    pub next: u64,
}

impl Position {
    /// The offset a read or a subscription starts at in a log holding `earliest..next`:
    /// `earliest`, `next` for `latest`, or the offset itself. An offset below `earliest`
    /// is returned as it is (each transport says how it continues past retention); one
    /// above `next` is [`BeyondEnd`] (spec §2: `bad_position`), the same on every
    /// transport.
    pub fn resolve(self, earliest: u64, next: u64) -> Result<u64, BeyondEnd> {
        match self {
            Position::Earliest => Ok(earliest),
            Position::Latest => Ok(next),
            Position::Offset(offset) if offset > next => Err(BeyondEnd { offset, next }),
            Position::Offset(offset) => Ok(offset),
        }
    }
}

impl FromStr for Position {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(Position::Earliest),
            "latest" => Ok(Position::Latest),
            _ if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<u64>()
                .map(Position::Offset)
                .map_err(|_| ProtocolError::BadPosition(s.to_owned())),
            _ => Err(ProtocolError::BadPosition(s.chars().take(64).collect())),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Offset(n) => write!(f, "{n}"),
            Position::Earliest => f.write_str("earliest"),
            Position::Latest => f.write_str("latest"),
        }
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Position::Offset(n) => serializer.serialize_u64(*n),
            Position::Earliest => serializer.serialize_str("earliest"),
            Position::Latest => serializer.serialize_str("latest"),
        }
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PositionVisitor;

        impl Visitor<'_> for PositionVisitor {
            type Value = Position;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an offset, \"earliest\" or \"latest\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Position, E> {
                Ok(Position::Offset(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Position, E> {
                u64::try_from(v)
                    .map(Position::Offset)
                    .map_err(|_| E::custom("an offset cannot be negative"))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Position, E> {
                match v {
                    "earliest" => Ok(Position::Earliest),
                    "latest" => Ok(Position::Latest),
                    _ => Err(E::custom(format!(
                        "bad position {:?}: expected an offset, \"earliest\" or \"latest\"",
                        v.chars().take(64).collect::<String>()
                    ))),
                }
            }
        }

        deserializer.deserialize_any(PositionVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_print() {
        for (text, pos) in [
            ("0", Position::Offset(0)),
            ("18446744073709551615", Position::Offset(u64::MAX)),
            ("earliest", Position::Earliest),
            ("latest", Position::Latest),
        ] {
            assert_eq!(text.parse::<Position>().unwrap(), pos);
            assert_eq!(pos.to_string(), text);
        }
        for bad in [
            "",
            "-1",
            "+1",
            "1.5",
            "18446744073709551616",
            "LATEST",
            " 1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn positions_in_json() {
        let p: Position = serde_json::from_str("42").unwrap();
        assert_eq!(p, Position::Offset(42));
        let p: Position = serde_json::from_str("\"earliest\"").unwrap();
        assert_eq!(p, Position::Earliest);
        assert!(serde_json::from_str::<Position>("-3").is_err());
        assert!(serde_json::from_str::<Position>("\"soon\"").is_err());
        assert_eq!(
            serde_json::to_string(&Position::Latest).unwrap(),
            "\"latest\""
        );
    }
}
