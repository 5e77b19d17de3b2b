//! Live events shared by every subscriber of a namespace: encoded once per encoding.
//!
//! After each commit the writer sends the new events of a namespace, as
//! `Arc<SharedEvent>`, into that namespace's bounded broadcast ring — only if someone is
//! subscribed. Subscribers that keep up take them from the ring; the first one to need an
//! encoding builds the frames, every other one clones the same bytes. A subscriber that
//! falls more than the ring behind (or has no credit) is told it lagged and reads the log
//! instead, at its own pace: the ring's memory is per namespace, never per subscriber.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rewind_protocol::frame::{encode_event_json, encode_event_msgpack};
use rewind_protocol::Event;
use tokio_tungstenite::tungstenite::Message;

/// The WebSocket encodings (spec §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `rewind.v1.json`: text frames; byte payloads follow as a binary frame.
    Json,
    /// `rewind.v1.msgpack`: binary frames, byte payloads native.
    Msgpack,
}

/// The frames that carry one event: one message, or a JSON header and its binary payload,
/// which must go out back to back.
#[derive(Debug, Clone)]
pub enum EventFrames {
    /// A single frame.
    One(Message),
    /// A text frame saying `bin: true`, then the payload as a binary frame.
    WithPayload(Message, Message),
}

/// Builds the frames of an event (used directly for catch-up reads).
pub fn encode(ns: &str, ev: &Event, encoding: Encoding) -> EventFrames {
    match encoding {
        Encoding::Json => {
            let (text, bin) = encode_event_json(ns, ev);
            let header = Message::Text(text.into());
            match bin {
                Some(payload) => {
                    EventFrames::WithPayload(header, Message::Binary(Bytes::from(payload)))
                }
                None => EventFrames::One(header),
            }
        }
        Encoding::Msgpack => {
            EventFrames::One(Message::Binary(Bytes::from(encode_event_msgpack(ns, ev))))
        }
    }
}

/// One committed event on its way to live subscribers.
#[derive(Debug)]
pub struct SharedEvent {
    /// The namespace's name.
    pub ns: Arc<str>,
    /// The event.
    pub event: Event,
    json: OnceLock<EventFrames>,
    msgpack: OnceLock<EventFrames>,
}

impl SharedEvent {
    /// Wraps an event; nothing is encoded until a subscriber asks.
    pub fn new(ns: Arc<str>, event: Event) -> SharedEvent {
        SharedEvent {
            ns,
            event,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        }
    }

    /// The event's frames in `encoding`, built by the first caller and shared after.
    pub fn frames(&self, encoding: Encoding) -> EventFrames {
        let cell = match encoding {
            Encoding::Json => &self.json,
            Encoding::Msgpack => &self.msgpack,
        };
        cell.get_or_init(|| encode(&self.ns, &self.event, encoding))
            .clone()
    }
}
