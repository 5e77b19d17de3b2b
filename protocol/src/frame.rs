//! WebSocket frames (spec §3.1), in both encodings: JSON text frames (`rewind.v1.json`)
//! and MessagePack binary frames (`rewind.v1.msgpack`). Every frame is a map with a type
//! field `t`.
//!
//! Decoding tells two failures apart, because the broker answers them differently:
//! [`FrameError::Unparsable`] (not a map with a string `t` at all: the connection is
//! closed) and [`FrameError::Invalid`] (a frame with a mistake in it: an `error` frame is
//! sent and the connection stays up).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::codec::write_json_str;
use crate::field::{explain_json, msgpack_field, not_a_json_frame, Want};
use crate::publish::MAX_KEY_BYTES;
use crate::value::{msgpack_to_json, msgpack_value_len, validate_json, write_len, write_str};
use crate::{
    validate_event_name, validate_namespace, ErrorCode, Event, Payload, Position, ProtocolError,
};

/// Credit a subscription starts with when `open` does not say.
pub const DEFAULT_CREDIT: u64 = 1000;

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Subscribe to a namespace.
    Open {
        /// The namespace.
        ns: String,
        /// Where to start.
        from: Position,
        /// The epoch the client last saw, if any.
        epoch: Option<String>,
        /// Events the broker may send before more credit.
        credit: u64,
    },
    /// Unsubscribe.
    Close {
        /// The namespace.
        ns: String,
    },
    /// More credit for a subscription.
    Credit {
        /// The namespace.
        ns: String,
        /// Events added to the credit.
        n: u64,
    },
    /// Publish one event.
    Publish {
        /// The client's id, echoed in the answer.
        id: u64,
        /// The namespace.
        ns: String,
        /// The event's name.
        event: String,
        /// The payload; `None` when `bin: true` in JSON encoding (the next binary frame
        /// is the payload).
        data: Option<Payload>,
        /// Optional key.
        key: Option<String>,
        /// Same meaning as the HTTP `Idempotency-Key`.
        idempotency_key: Option<String>,
    },
    /// Liveness probe; the broker answers `pong`.
    Ping,
    /// Answer to the broker's `ping`.
    Pong,
    /// A new token for this connection, in place of the one it was opened with
    /// (`docs/protocol.md`, "Tokens"); answered `auth_ok`, or `error` `unauthorized`.
    Auth {
        /// The JWT.
        token: String,
    },
}

/// Why a frame was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not a frame at all; the connection is closed with a reason.
    #[error("unparsable frame: {0}")]
    Unparsable(String),
    /// A frame with a mistake; answered with an `error` frame.
    #[error("{code}: {message}")]
    Invalid {
        /// The error code.
        code: ErrorCode,
        /// A sentence for people.
        message: String,
        /// The frame's `id`, if it had one.
        id: Option<u64>,
        /// The frame's `ns`, if it had one.
        ns: Option<String>,
        /// The frame was a `publish` (its `t` said so): its answer takes its turn among
        /// the publishes' answers, with or without an `id`.
        publish: bool,
    },
}

/// A decoded JSON text frame, and whether it announced a binary payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFrame {
    /// The frame, or why it was not accepted.
    pub frame: Result<ClientFrame, FrameError>,
    /// The frame is a JSON object with a string `t` and `"bin": true`, accepted or not:
    /// the next frame, if it is binary, is its payload (`protocol.md`, "Byte payloads
    /// over JSON"). Always false for an unparsable frame, which closes the connection.
    pub binary_follows: bool,
}

/// The fields any frame may have; which are required depends on `t`.
#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct Wire<D> {
    t: String,
    #[serde(default)]
    ns: Option<String>,
    #[serde(default)]
    from: Option<FromField>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    credit: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default = "Option::default", deserialize_with = "some")]
    data: Option<D>,
    #[serde(default)]
    bin: Option<bool>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// A present field is `Some`, even when its value is `null` (a JSON `null` payload is a
/// value, not a missing field).
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An `open` frame's `from`, of any type: a position, or why it is not one (answered with
/// `bad_position`, not `bad_frame`, as HTTP answers `?from=`).
struct FromField(Result<Position, String>);

impl<'de> Deserialize<'de> for FromField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

        struct AnyFrom;

        fn not(what: impl std::fmt::Display) -> FromField {
            FromField(Err(format!(
                "bad position {what}: expected an offset, \"earliest\" or \"latest\""
            )))
        }

        impl<'de> Visitor<'de> for AnyFrom {
            type Value = FromField;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a position")
            }
            fn visit_u64<E>(self, v: u64) -> Result<FromField, E> {
                Ok(FromField(Ok(Position::Offset(v))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<FromField, E> {
                Ok(
                    u64::try_from(v)
                        .map_or_else(|_| not(v), |n| FromField(Ok(Position::Offset(n)))),
                )
            }
            // JSON numbers past u64 arrive here too, rounded: say why rather than show
            // the rounded value as if it were the one sent.
            fn visit_f64<E>(self, v: f64) -> Result<FromField, E> {
                Ok(FromField(Err(if v.fract() == 0.0 && v >= 0.0 {
                    format!("bad position: an offset is at most {}", u64::MAX)
                } else {
                    format!("bad position {v}: an offset is a whole number from 0 up")
                })))
            }
            fn visit_bool<E>(self, v: bool) -> Result<FromField, E> {
                Ok(not(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<FromField, E> {
                Ok(match v {
                    "earliest" => FromField(Ok(Position::Earliest)),
                    "latest" => FromField(Ok(Position::Latest)),
                    _ => not(format!("{:?}", v.chars().take(64).collect::<String>())),
                })
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<FromField, E> {
                Ok(not("(bytes)"))
            }
            fn visit_unit<E>(self) -> Result<FromField, E> {
                Ok(not("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FromField, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(not("(an array)"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FromField, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(not("(a map)"))
            }
        }

        d.deserialize_any(AnyFrom)
    }
}

/// Just enough of a frame to call it one.
#[derive(Deserialize)]
struct Loose {
    t: String,
}

/// JSON `data`: the raw JSON text (a JSON `null` is a value, not a missing field).
struct JsonData(Box<RawValue>);

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(JsonData)
    }
}

/// Turns a wire frame's `data` into a payload.
trait IntoPayload: Sized {
    /// A publish's payload: checked against the value rules.
    fn into_payload(self) -> Result<Payload, String>;

    /// A payload the broker sent: taken as it is (a reader is not the place to refuse
    /// what was stored).
    fn into_received(self) -> Result<Payload, String> {
        self.into_payload()
    }
}

impl IntoPayload for JsonData {
    fn into_payload(self) -> Result<Payload, String> {
        let text = self.0.get();
        validate_json(text).map_err(|e| e.to_string())?;
        Ok(Payload::Json(text.to_owned()))
    }

    fn into_received(self) -> Result<Payload, String> {
        Ok(Payload::Json(self.0.get().to_owned()))
    }
}

/// Decodes a JSON text frame. `max_payload_bytes` limits a publish's payload.
pub fn decode_json(text: &str, max_payload_bytes: usize) -> Result<ClientFrame, FrameError> {
    decode_json_frame(text, max_payload_bytes).frame
}

/// Decodes a JSON text frame and tells whether it announced a binary payload (`"bin":
/// true`), which the next binary frame carries even when the frame itself is refused.
pub fn decode_json_frame(text: &str, max_payload_bytes: usize) -> JsonFrame {
    match serde_json::from_str::<Wire<JsonData>>(text) {
        Ok(wire) => {
            let binary_follows = wire.bin == Some(true);
            JsonFrame {
                frame: validate(wire, true, max_payload_bytes),
                binary_follows,
            }
        }
        Err(e) => match serde_json::from_str::<Loose>(text) {
            Ok(loose) => JsonFrame {
                frame: Err(invalid_shape(
                    &loose,
                    explain_json(text).unwrap_or_else(|| without_location(&e)),
                    || {
                        (
                            serde_json::from_str::<IdOnly>(text).ok().and_then(|x| x.id),
                            serde_json::from_str::<NsOnly>(text).ok().and_then(|x| x.ns),
                        )
                    },
                )),
                binary_follows: serde_json::from_str::<BinOnly>(text)
                    .is_ok_and(|x| x.bin == Some(true)),
            },
            Err(_) => JsonFrame {
                frame: Err(FrameError::Unparsable(not_a_json_frame(text))),
                binary_follows: false,
            },
        },
    }
}

/// A serde_json error without its "at line 1 column 30" (a frame is one line, and the
/// message names the field).
fn without_location(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// A MessagePack publish's `data`, as the bytes of its value: `bin` is a byte payload,
/// anything else goes through [`crate::value`] to become JSON text (keys in their order).
/// Also an event's `data` from the broker.
#[derive(Clone, Copy)]
struct MsgRaw<'a>(&'a [u8]);

impl IntoPayload for MsgRaw<'_> {
    fn into_payload(self) -> Result<Payload, String> {
        if matches!(self.0.first(), Some(0xc4..=0xc6)) {
            if let Ok(b) = rmp_serde::from_slice::<serde_bytes::ByteBuf>(self.0) {
                return Ok(Payload::Bytes(b.into_vec()));
            }
        }
        msgpack_to_json(self.0)
            .map(Payload::Json)
            .map_err(|e| e.to_string())
    }

    /// An event's data from the broker: its JSON text with keys in their order, or (for
    /// a value the rules refuse, which the broker does not send) serde_json's rendering.
    fn into_received(self) -> Result<Payload, String> {
        self.into_payload().or_else(|_| {
            rmp_serde::from_slice::<serde_json::Value>(self.0)
                .map(|v| Payload::Json(v.to_string()))
                .map_err(|e| e.to_string())
        })
    }
}

/// The entries of a MessagePack map with string keys, as (key, the bytes of the value).
/// Values are only measured, never decoded, so an unknown field of any depth costs
/// nothing (and cannot hide the frame's `t`, `id` and `ns`).
fn msgpack_fields(bytes: &[u8]) -> Result<Vec<(&str, &[u8])>, String> {
    let not_map = || "not a MessagePack map".to_owned();
    let m = *bytes.first().ok_or_else(not_map)?;
    let (len, mut rest) = match m {
        0x80..=0x8f => (usize::from(m & 0x0f), &bytes[1..]),
        0xde => {
            let n = bytes.get(1..3).ok_or_else(not_map)?;
            (usize::from(u16::from_be_bytes([n[0], n[1]])), &bytes[3..])
        }
        0xdf => {
            let n = bytes.get(1..5).ok_or_else(not_map)?;
            let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]);
            (usize::try_from(n).map_err(|_| not_map())?, &bytes[5..])
        }
        _ => return Err(not_map()),
    };
    let mut fields = Vec::with_capacity(len.min(16));
    for _ in 0..len {
        let k = msgpack_value_len(rest).map_err(|e| e.to_string())?;
        let key: &str = rmp_serde::from_slice(&rest[..k])
            .map_err(|_| "a frame's keys must be strings".to_owned())?;
        rest = &rest[k..];
        let v = msgpack_value_len(rest).map_err(|e| e.to_string())?;
        fields.push((key, &rest[..v]));
        rest = &rest[v..];
    }
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes after the frame's map: a frame is one MessagePack map",
            rest.len()
        ));
    }
    Ok(fields)
}

/// Decodes a MessagePack binary frame.
pub fn decode_msgpack(bytes: &[u8], max_payload_bytes: usize) -> Result<ClientFrame, FrameError> {
    let fields = msgpack_fields(bytes).map_err(FrameError::Unparsable)?;
    let raw = |name: &str| fields.iter().rev().find(|(k, _)| *k == name).map(|f| f.1);
    let t = msgpack_field::<String>(raw("t"), "t", Want::Str)
        .map_err(FrameError::Unparsable)?
        .ok_or_else(|| FrameError::Unparsable("a frame needs a string t".into()))?;
    let loose = Loose { t };
    fn get<T: serde::de::DeserializeOwned>(
        raw: Option<&[u8]>,
        name: &str,
    ) -> Result<Option<T>, String> {
        match raw {
            None => Ok(None),
            Some(v) => rmp_serde::from_slice::<Option<T>>(v).map_err(|e| format!("{name}: {e}")),
        }
    }
    // Fields in the order of `field::TYPED_FIELDS`, so the first mistake reported is the
    // one JSON reports.
    let wire = (|| -> Result<Wire<MsgRaw<'_>>, String> {
        let id = msgpack_field(raw("id"), "id", Want::U64)?;
        let ns = msgpack_field(raw("ns"), "ns", Want::Str)?;
        let event = msgpack_field(raw("event"), "event", Want::Str)?;
        let key = msgpack_field(raw("key"), "key", Want::Str)?;
        let idempotency_key = msgpack_field(raw("idempotency_key"), "idempotency_key", Want::Str)?;
        let epoch = msgpack_field(raw("epoch"), "epoch", Want::Str)?;
        let credit = msgpack_field(raw("credit"), "credit", Want::U64)?;
        let n = msgpack_field(raw("n"), "n", Want::U64)?;
        let bin = msgpack_field(raw("bin"), "bin", Want::Bool)?;
        let token = msgpack_field(raw("token"), "token", Want::Str)?;
        Ok(Wire {
            t: loose.t.clone(),
            ns,
            from: get(raw("from"), "from")?,
            epoch,
            credit,
            n,
            id,
            event,
            data: raw("data").map(MsgRaw),
            bin,
            key,
            idempotency_key,
            token,
        })
    })();
    match wire {
        Ok(wire) => validate(wire, false, max_payload_bytes),
        Err(message) => Err(invalid_shape(&loose, message, || {
            (
                msgpack_field::<u64>(raw("id"), "id", Want::U64)
                    .ok()
                    .flatten(),
                msgpack_field::<String>(raw("ns"), "ns", Want::Str)
                    .ok()
                    .flatten(),
            )
        })),
    }
}

/// A broken frame's `id`, read on its own so a bad `ns` does not hide it.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}

/// A broken frame's `bin`, read on its own: whatever else is wrong with the frame, its
/// payload may follow.
#[derive(Deserialize)]
struct BinOnly {
    #[serde(default)]
    bin: Option<bool>,
}

/// A broken frame's `ns`, read on its own.
#[derive(Deserialize)]
struct NsOnly {
    #[serde(default)]
    ns: Option<String>,
}

fn invalid_shape(
    loose: &Loose,
    message: String,
    id_ns: impl FnOnce() -> (Option<u64>, Option<String>),
) -> FrameError {
    let (id, ns) = id_ns();
    let code = if known_type(&loose.t) {
        ErrorCode::BadFrame
    } else {
        ErrorCode::UnknownType
    };
    FrameError::Invalid {
        code,
        message: format!(
            "{}: {message}",
            loose.t.chars().take(32).collect::<String>()
        ),
        id,
        ns,
        publish: loose.t == "publish",
    }
}

/// An epoch as the broker writes one: 16 lowercase hex digits (`decisions.md`, "epochs").
pub fn is_epoch(e: &str) -> bool {
    e.len() == 16 && e.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn known_type(t: &str) -> bool {
    matches!(
        t,
        "open" | "close" | "credit" | "publish" | "ping" | "pong" | "auth"
    )
}

fn validate<D: IntoPayload>(
    wire: Wire<D>,
    json: bool,
    max_payload_bytes: usize,
) -> Result<ClientFrame, FrameError> {
    let id = wire.id;
    let ns_for_err = wire.ns.clone();
    let publish = wire.t == "publish";
    let fail = |code: ErrorCode, message: String| FrameError::Invalid {
        code,
        message,
        id,
        ns: ns_for_err.clone(),
        publish,
    };
    let need_ns = |ns: Option<String>| -> Result<String, FrameError> {
        let ns = ns.ok_or_else(|| fail(ErrorCode::BadFrame, format!("{} needs ns", wire.t)))?;
        validate_namespace(&ns).map_err(|e| fail(e.code(), e.to_string()))?;
        Ok(ns)
    };
    match wire.t.as_str() {
        "open" => Ok(ClientFrame::Open {
            ns: need_ns(wire.ns.clone())?,
            from: match wire.from {
                None => Position::Latest,
                Some(FromField(Ok(p))) => p,
                // The same mistake as HTTP's `?from=soon`, so the same code.
                Some(FromField(Err(m))) => return Err(fail(ErrorCode::BadPosition, m)),
            },
            epoch: match wire.epoch {
                Some(e) if !is_epoch(&e) => {
                    return Err(fail(
                        ErrorCode::BadFrame,
                        format!(
                        "epoch must be the 16 lowercase hex digits an opened frame gave, not {:?}",
                        e.chars().take(40).collect::<String>()
                    ),
                    ))
                }
                e => e,
            },
            credit: wire.credit.unwrap_or(DEFAULT_CREDIT),
        }),
        "close" => Ok(ClientFrame::Close {
            ns: need_ns(wire.ns.clone())?,
        }),
        "credit" => Ok(ClientFrame::Credit {
            ns: need_ns(wire.ns.clone())?,
            n: wire
                .n
                .ok_or_else(|| fail(ErrorCode::BadFrame, "credit needs n".into()))?,
        }),
        "publish" => {
            let ns = need_ns(wire.ns.clone())?;
            let id = id.ok_or_else(|| fail(ErrorCode::BadFrame, "publish needs id".into()))?;
            let event = wire
                .event
                .ok_or_else(|| fail(ErrorCode::BadFrame, "publish needs event".into()))?;
            validate_event_name(&event).map_err(|e| fail(e.code(), e.to_string()))?;
            if wire.key.as_ref().is_some_and(|k| k.len() > MAX_KEY_BYTES) {
                return Err(fail(
                    ErrorCode::BadFrame,
                    format!("key is longer than {MAX_KEY_BYTES} bytes"),
                ));
            }
            if let Some(k) = &wire.idempotency_key {
                crate::idempotency::validate_key(k).map_err(|e| fail(e.code(), e.to_string()))?;
            }
            let bin = wire.bin.unwrap_or(false);
            let data = match (wire.data, bin) {
                (Some(_), true) => {
                    return Err(fail(
                        ErrorCode::BadFrame,
                        "bin: true and data exclude each other".into(),
                    ))
                }
                (None, true) if json => None,
                (None, true) => {
                    return Err(fail(
                        ErrorCode::BadFrame,
                        "bin: true is for JSON encoding; MessagePack carries bytes in data".into(),
                    ))
                }
                (Some(d), false) => {
                    Some(d.into_payload().map_err(|m| fail(ErrorCode::BadFrame, m))?)
                }
                (None, false) => Some(Payload::Json("null".into())),
            };
            if let Some(d) = &data {
                if d.len() > max_payload_bytes {
                    return Err(fail(
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "payload of {} bytes is over the limit of {max_payload_bytes}",
                            d.len()
                        ),
                    ));
                }
            }
            Ok(ClientFrame::Publish {
                id,
                ns,
                event,
                data,
                key: wire.key,
                idempotency_key: wire.idempotency_key,
            })
        }
        "ping" => Ok(ClientFrame::Ping),
        "pong" => Ok(ClientFrame::Pong),
        "auth" => match wire.token {
            // An empty token is the verifier's `unauthorized`, as an empty `?token=` is.
            Some(token) => Ok(ClientFrame::Auth { token }),
            None => Err(fail(ErrorCode::BadFrame, "auth needs token".into())),
        },
        other => Err(fail(
            ErrorCode::UnknownType,
            format!(
                "unknown frame type {:?}",
                other.chars().take(32).collect::<String>()
            ),
        )),
    }
}

/// A frame the broker sends, other than `event` (see [`encode_event_json`] and
/// [`encode_event_msgpack`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum ServerFrame {
    /// A subscription is open.
    Opened {
        /// The namespace.
        ns: String,
        /// Its current epoch.
        epoch: String,
        /// The first offset that will be sent.
        from: u64,
        /// The oldest offset held.
        earliest: u64,
        /// The offset the next append gets.
        next: u64,
    },
    /// Offsets were skipped: below retention, or from another epoch.
    Truncated {
        /// The namespace.
        ns: String,
        /// The offset the client asked for.
        requested: u64,
        /// The offset it gets instead.
        from: u64,
        /// `retention` or `epoch`.
        reason: String,
    },
    /// A subscription ended.
    Closed {
        /// The namespace.
        ns: String,
        /// Why, when the client did not ask for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A publish is durable.
    Published {
        /// The client's id.
        id: u64,
        /// The namespace.
        ns: String,
        /// The event's offset.
        offset: u64,
        /// `false` when the broker was asked to wait for Redis replicas
        /// (`redis_wait_replicas`) and `WAIT` fell short: the event is stored on the
        /// primary, not known to be on the replicas. Absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicated: Option<bool>,
    },
    /// Something went wrong; the connection stays up.
    Error {
        /// The error code.
        code: String,
        /// A sentence for people.
        message: String,
        /// The `id` of the frame it answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The namespace concerned, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ns: Option<String>,
        /// The offset of an event a subscription could not deliver; the subscription
        /// goes on after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Liveness probe.
    Ping,
    /// Answer to a client's `ping`.
    Pong,
    /// The connection's token expires in `in_ms` milliseconds (its `exp` plus the
    /// broker's leeway); send `auth` with a new one before then, or the connection is
    /// closed with 4001.
    #[serde(rename = "auth_expiring")]
    AuthExpiring {
        /// Milliseconds until the connection is closed.
        in_ms: u64,
    },
    /// An `auth` was taken: the new token is in force, and expires in `in_ms`
    /// milliseconds.
    #[serde(rename = "auth_ok")]
    AuthOk {
        /// Milliseconds until the new token expires.
        in_ms: u64,
    },
}

impl ServerFrame {
    /// JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// MessagePack bytes.
    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// An `error` frame.
    pub fn error(
        code: ErrorCode,
        message: impl Into<String>,
        id: Option<u64>,
        ns: Option<String>,
    ) -> ServerFrame {
        ServerFrame::Error {
            code: code.as_str().to_owned(),
            message: message.into(),
            id,
            ns,
            offset: None,
        }
    }

    /// The `error` (`internal`, with the offset) a subscriber gets in place of an event
    /// that cannot be encoded for it; delivery goes on after it.
    pub fn unencodable(ns: &str, offset: u64, why: &ProtocolError) -> ServerFrame {
        ServerFrame::Error {
            code: ErrorCode::Internal.as_str().to_owned(),
            message: format!(
                "event {offset} cannot be encoded in MessagePack ({why}); \
                 delivery goes on at {}",
                offset.saturating_add(1)
            ),
            id: None,
            ns: Some(ns.to_owned()),
            offset: Some(offset),
        }
    }
}

/// An `event` frame in JSON: the text frame, and for a byte payload the binary frame that
/// must follow it.
pub fn encode_event_json(ns: &str, ev: &Event) -> (String, Option<Vec<u8>>) {
    let mut out = Vec::with_capacity(96 + ev.data.len());
    out.extend_from_slice(b"{\"t\":\"event\",\"ns\":");
    write_json_str(&mut out, ns);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(ev.offset.to_string().as_bytes());
    out.extend_from_slice(b",\"event\":");
    write_json_str(&mut out, &ev.event);
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(ev.ts.to_string().as_bytes());
    if let Some(key) = &ev.key {
        out.extend_from_slice(b",\"key\":");
        write_json_str(&mut out, key);
    }
    let binary = match &ev.data {
        Payload::Json(text) => {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(text.as_bytes());
            None
        }
        Payload::Bytes(bytes) => {
            out.extend_from_slice(b",\"bin\":true");
            Some(bytes.clone())
        }
    };
    out.push(b'}');
    // Every part written above is valid UTF-8 (JSON text and escaped strings).
    (String::from_utf8(out).unwrap_or_default(), binary)
}

/// An `event` frame in MessagePack; fails when the event's JSON payload breaks a rule of
/// [`crate::value`] (only payloads stored before those rules can), and then the
/// subscriber gets [`ServerFrame::unencodable`] instead.
pub fn encode_event_msgpack(ns: &str, ev: &Event) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::with_capacity(64 + ns.len() + ev.event.len() + ev.data.len());
    write_len(&mut out, true, if ev.key.is_some() { 7 } else { 6 });
    write_str(&mut out, "t");
    write_str(&mut out, "event");
    write_str(&mut out, "ns");
    write_str(&mut out, ns);
    crate::codec::write_event_entries(&mut out, ev)?;
    Ok(out)
}

/// A decoded broker `event` frame (for clients and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFrame {
    /// The namespace.
    pub ns: String,
    /// The event; for JSON with `bin: true`, `data` is an empty byte payload until the
    /// following binary frame is attached.
    pub event: Event,
    /// True when a binary frame with the payload follows (JSON encoding).
    pub bin: bool,
}

/// Any frame the broker sends, decoded (for clients and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// An `event` frame.
    Event(EventFrame),
    /// Any other frame.
    Frame(ServerFrame),
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct EventWire<D> {
    ns: String,
    offset: u64,
    event: String,
    ts: u64,
    #[serde(default)]
    key: Option<String>,
    #[serde(default = "Option::default", deserialize_with = "some")]
    data: Option<D>,
    #[serde(default)]
    bin: bool,
}

#[derive(Deserialize)]
struct TypeOnly {
    t: String,
}

fn event_message<D: IntoPayload>(wire: EventWire<D>) -> Result<ServerMessage, FrameError> {
    let data = match wire.data {
        Some(d) => d.into_received().map_err(FrameError::Unparsable)?,
        None if wire.bin => Payload::Bytes(Vec::new()),
        None => return Err(FrameError::Unparsable("event without data".into())),
    };
    Ok(ServerMessage::Event(EventFrame {
        ns: wire.ns,
        event: Event {
            offset: wire.offset,
            event: wire.event,
            ts: wire.ts,
            key: wire.key,
            data,
        },
        bin: wire.bin,
    }))
}

/// Decodes a broker frame sent as JSON text.
pub fn decode_server_json(text: &str) -> Result<ServerMessage, FrameError> {
    let unparsable = |e: serde_json::Error| FrameError::Unparsable(e.to_string());
    let t: TypeOnly = serde_json::from_str(text).map_err(unparsable)?;
    if t.t == "event" {
        event_message(serde_json::from_str::<EventWire<JsonData>>(text).map_err(unparsable)?)
    } else {
        serde_json::from_str(text)
            .map(ServerMessage::Frame)
            .map_err(unparsable)
    }
}

/// Decodes a broker frame sent as MessagePack.
pub fn decode_server_msgpack(bytes: &[u8]) -> Result<ServerMessage, FrameError> {
    let unparsable = |e: rmp_serde::decode::Error| FrameError::Unparsable(e.to_string());
    let t: TypeOnly = rmp_serde::from_slice(bytes).map_err(unparsable)?;
    if t.t == "event" {
        event_message(msgpack_event_wire(bytes).map_err(FrameError::Unparsable)?)
    } else {
        rmp_serde::from_slice(bytes)
            .map(ServerMessage::Frame)
            .map_err(unparsable)
    }
}

/// The fields of a MessagePack `event` frame, `data` as the bytes of its value: decoding
/// it through `serde_json::Value` would sort its keys.
fn msgpack_event_wire(bytes: &[u8]) -> Result<EventWire<MsgRaw<'_>>, String> {
    let fields = msgpack_fields(bytes)?;
    let raw = |name: &str| fields.iter().rev().find(|(k, _)| *k == name).map(|f| f.1);
    fn get<T: serde::de::DeserializeOwned>(raw: Option<&[u8]>, name: &str) -> Result<T, String> {
        let raw = raw.ok_or_else(|| format!("event without {name}"))?;
        rmp_serde::from_slice(raw).map_err(|e| format!("{name}: {e}"))
    }
    Ok(EventWire {
        ns: get(raw("ns"), "ns")?,
        offset: get(raw("offset"), "offset")?,
        event: get(raw("event"), "event")?,
        ts: get(raw("ts"), "ts")?,
        key: raw("key").map(|k| get(Some(k), "key")).transpose()?,
        data: raw("data").map(MsgRaw),
        bin: raw("bin")
            .map(|b| get(Some(b), "bin"))
            .transpose()?
            .unwrap_or(false),
    })
}

/// A client frame encoded for the wire (for clients and tests): JSON text, or MessagePack.
pub fn encode_client_json(frame: &ClientFrame) -> String {
    let mut out = Vec::new();
    let field = |out: &mut Vec<u8>, name: &str| {
        out.push(b',');
        write_json_str(out, name);
        out.push(b':');
    };
    let (t, ns) = match frame {
        ClientFrame::Open { ns, .. } => ("open", Some(ns)),
        ClientFrame::Close { ns } => ("close", Some(ns)),
        ClientFrame::Credit { ns, .. } => ("credit", Some(ns)),
        ClientFrame::Publish { ns, .. } => ("publish", Some(ns)),
        ClientFrame::Ping => ("ping", None),
        ClientFrame::Pong => ("pong", None),
        ClientFrame::Auth { .. } => ("auth", None),
    };
    out.extend_from_slice(b"{\"t\":");
    write_json_str(&mut out, t);
    if let Some(ns) = ns {
        field(&mut out, "ns");
        write_json_str(&mut out, ns);
    }
    match frame {
        ClientFrame::Open {
            from,
            epoch,
            credit,
            ..
        } => {
            field(&mut out, "from");
            out.extend_from_slice(serde_json::to_string(from).unwrap_or_default().as_bytes());
            if let Some(e) = epoch {
                field(&mut out, "epoch");
                write_json_str(&mut out, e);
            }
            field(&mut out, "credit");
            out.extend_from_slice(credit.to_string().as_bytes());
        }
        ClientFrame::Credit { n, .. } => {
            field(&mut out, "n");
            out.extend_from_slice(n.to_string().as_bytes());
        }
        ClientFrame::Publish {
            id,
            event,
            data,
            key,
            idempotency_key,
            ..
        } => {
            field(&mut out, "id");
            out.extend_from_slice(id.to_string().as_bytes());
            field(&mut out, "event");
            write_json_str(&mut out, event);
            match data {
                Some(Payload::Json(text)) => {
                    field(&mut out, "data");
                    out.extend_from_slice(text.as_bytes());
                }
                Some(Payload::Bytes(_)) | None => {
                    field(&mut out, "bin");
                    out.extend_from_slice(b"true");
                }
            }
            if let Some(k) = key {
                field(&mut out, "key");
                write_json_str(&mut out, k);
            }
            if let Some(k) = idempotency_key {
                field(&mut out, "idempotency_key");
                write_json_str(&mut out, k);
            }
        }
        ClientFrame::Auth { token } => {
            field(&mut out, "token");
            write_json_str(&mut out, token);
        }
        _ => {}
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
}

/// A `publish` frame as MessagePack, JSON `data` transcoded by [`crate::value`] with
/// its keys in their order; `None` when the text breaks a value rule, which only a test
/// sending what the broker must refuse does (it then goes through `serde_json::Value`).
fn publish_msgpack(
    id: u64,
    ns: &str,
    event: &str,
    data: &Option<Payload>,
    key: &Option<String>,
    idempotency_key: &Option<String>,
) -> Option<Vec<u8>> {
    let mut out =
        Vec::with_capacity(64 + ns.len() + event.len() + data.as_ref().map_or(0, Payload::len));
    let fields = 4
        + usize::from(data.is_some())
        + usize::from(key.is_some())
        + usize::from(idempotency_key.is_some());
    write_len(&mut out, true, fields);
    for (name, value) in [("t", "publish"), ("ns", ns), ("event", event)] {
        write_str(&mut out, name);
        write_str(&mut out, value);
    }
    write_str(&mut out, "id");
    crate::value::write_u64(&mut out, id);
    match data {
        Some(Payload::Json(text)) => {
            write_str(&mut out, "data");
            crate::value::json_to_msgpack(text, &mut out).ok()?;
        }
        Some(Payload::Bytes(b)) => {
            write_str(&mut out, "data");
            crate::value::write_bin(&mut out, b);
        }
        None => {}
    }
    for (name, value) in [("key", key), ("idempotency_key", idempotency_key)] {
        if let Some(value) = value {
            write_str(&mut out, name);
            write_str(&mut out, value);
        }
    }
    Some(out)
}

/// A client frame as MessagePack (byte payloads native, JSON payloads with their keys in
/// their order).
pub fn encode_client_msgpack(frame: &ClientFrame) -> Vec<u8> {
    #[derive(Serialize)]
    struct Out<'a> {
        t: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        ns: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<&'a Position>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        credit: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        n: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<DataOut<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
    }
    struct DataOut<'a>(&'a Payload);
    impl Serialize for DataOut<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::Error;
            match self.0 {
                Payload::Bytes(b) => s.serialize_bytes(b),
                Payload::Json(text) => serde_json::from_str::<serde_json::Value>(text)
                    .map_err(S::Error::custom)?
                    .serialize(s),
            }
        }
    }
    if let ClientFrame::Publish {
        id,
        ns,
        event,
        data,
        key,
        idempotency_key,
    } = frame
    {
        if let Some(out) = publish_msgpack(*id, ns, event, data, key, idempotency_key) {
            return out;
        }
    }
    let mut out = Out {
        t: "ping",
        ns: None,
        from: None,
        epoch: None,
        credit: None,
        n: None,
        id: None,
        event: None,
        data: None,
        key: None,
        idempotency_key: None,
        token: None,
    };
    match frame {
        ClientFrame::Open {
            ns,
            from,
            epoch,
            credit,
        } => {
            out.t = "open";
            out.ns = Some(ns);
            out.from = Some(from);
            out.epoch = epoch.as_deref();
            out.credit = Some(*credit);
        }
        ClientFrame::Close { ns } => {
            out.t = "close";
            out.ns = Some(ns);
        }
        ClientFrame::Credit { ns, n } => {
            out.t = "credit";
            out.ns = Some(ns);
            out.n = Some(*n);
        }
        ClientFrame::Publish {
            id,
            ns,
            event,
            data,
            key,
            idempotency_key,
        } => {
            out.t = "publish";
            out.ns = Some(ns);
            out.id = Some(*id);
            out.event = Some(event);
            out.data = data.as_ref().map(DataOut);
            out.key = key.as_deref();
            out.idempotency_key = idempotency_key.as_deref();
        }
        ClientFrame::Ping => {}
        ClientFrame::Pong => out.t = "pong",
        ClientFrame::Auth { token } => {
            out.t = "auth";
            out.token = Some(token);
        }
    }
    rmp_serde::to_vec_named(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::MAX_DATA_DEPTH;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        let ns = "[a-z][a-z0-9_.-]{0,20}".prop_filter("valid", |n| !n.contains(".."));
        let pos = prop_oneof![
            any::<u64>().prop_map(Position::Offset),
            Just(Position::Earliest),
            Just(Position::Latest)
        ];
        let json = prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-z ]{0,10}".prop_map(|s| serde_json::Value::from(s).to_string()),
            Just(r#"{"a":[1,2,{"b":null}]}"#.to_owned()),
        ];
        prop_oneof![
            (
                ns.clone(),
                pos,
                prop::option::of("[0-9a-f]{16}"),
                any::<u64>()
            )
                .prop_map(|(ns, from, epoch, credit)| ClientFrame::Open {
                    ns,
                    from,
                    epoch,
                    credit
                }),
            ns.clone().prop_map(|ns| ClientFrame::Close { ns }),
            (ns.clone(), any::<u64>()).prop_map(|(ns, n)| ClientFrame::Credit { ns, n }),
            (
                any::<u64>(),
                ns,
                "\\PC{1,20}",
                json,
                prop::option::of("[a-z]{1,8}"),
                prop::option::of("[a-z0-9]{1,12}")
            )
                .prop_map(|(id, ns, event, data, key, idempotency_key)| {
                    ClientFrame::Publish {
                        id,
                        ns,
                        event,
                        data: Some(Payload::Json(data)),
                        key,
                        idempotency_key,
                    }
                }),
            Just(ClientFrame::Ping),
            Just(ClientFrame::Pong),
            "[A-Za-z0-9_.-]{1,40}".prop_map(|token| ClientFrame::Auth { token }),
        ]
    }

    proptest! {
        #[test]
        fn client_frames_round_trip_in_both_encodings(frame in client_frame()) {
            prop_assert_eq!(decode_json(&encode_client_json(&frame), MAX).unwrap(), frame.clone());
            prop_assert_eq!(decode_msgpack(&encode_client_msgpack(&frame), MAX).unwrap(), frame);
        }

        #[test]
        fn decoders_never_panic_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_msgpack(&bytes, MAX);
            let _ = decode_server_msgpack(&bytes);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = decode_json(text, MAX);
                let _ = decode_server_json(text);
            }
        }

        #[test]
        fn mutated_frames_are_rejected_or_decoded_never_panic(frame in client_frame(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut json = encode_client_json(&frame).into_bytes();
            let i = at.index(json.len());
            json[i] = byte;
            if let Ok(text) = std::str::from_utf8(&json) {
                let _ = decode_json(text, MAX);
            }
            let mut mp = encode_client_msgpack(&frame);
            let i = at.index(mp.len());
            mp[i] = byte;
            let _ = decode_msgpack(&mp, MAX);
        }
    }

    fn sample_event(data: Payload) -> Event {
        Event {
            offset: 7,
            event: "changed".into(),
            ts: 99,
            key: Some("k".into()),
            data,
        }
    }

    #[test]
    fn event_frames_round_trip() {
        let ev = sample_event(Payload::Json(r#"{"x":[1,true]}"#.into()));
        let (text, bin) = encode_event_json("a.b", &ev);
        assert!(bin.is_none());
        let ServerMessage::Event(got) = decode_server_json(&text).unwrap() else {
            panic!()
        };
        assert_eq!((got.ns.as_str(), &got.event, got.bin), ("a.b", &ev, false));
        let ServerMessage::Event(got) =
            decode_server_msgpack(&encode_event_msgpack("a.b", &ev).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(got.event, ev);

        let ev = sample_event(Payload::Bytes(vec![0, 1, 255]));
        let (text, bin) = encode_event_json("a", &ev);
        assert_eq!(bin.as_deref(), Some(&[0u8, 1, 255][..]));
        assert!(text.contains(r#""bin":true"#) && !text.contains("data"));
        let ServerMessage::Event(got) =
            decode_server_msgpack(&encode_event_msgpack("a", &ev).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(got.event.data, Payload::Bytes(vec![0, 1, 255]));
    }

    /// A JSON payload crosses MessagePack both ways with its keys in the publisher's
    /// order: the client's publish frame and the broker's event frame alike (both went
    /// through `serde_json::Value` once, which sorts keys).
    #[test]
    fn msgpack_frames_keep_key_order() {
        let text = r#"{"z":1,"a":[{"y":2,"b":3}],"m":null}"#;
        let publish = ClientFrame::Publish {
            id: 7,
            ns: "a.b".into(),
            event: "e".into(),
            data: Some(Payload::Json(text.into())),
            key: Some("k".into()),
            idempotency_key: Some("i-7".into()),
        };
        assert_eq!(
            decode_msgpack(&encode_client_msgpack(&publish), MAX).unwrap(),
            publish
        );
        let ev = sample_event(Payload::Json(text.into()));
        let ServerMessage::Event(got) =
            decode_server_msgpack(&encode_event_msgpack("a.b", &ev).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(got.event.data, Payload::Json(text.into()));
    }

    #[test]
    fn server_frames_round_trip() {
        let frames = [
            ServerFrame::Opened {
                ns: "n".into(),
                epoch: "e".into(),
                from: 1,
                earliest: 0,
                next: 5,
            },
            ServerFrame::Truncated {
                ns: "n".into(),
                requested: 0,
                from: 3,
                reason: "retention".into(),
            },
            ServerFrame::Closed {
                ns: "n".into(),
                reason: None,
            },
            ServerFrame::Published {
                id: 1,
                ns: "n".into(),
                offset: 9,
                replicated: None,
            },
            ServerFrame::Published {
                id: 2,
                ns: "n".into(),
                offset: 10,
                replicated: Some(false),
            },
            ServerFrame::error(ErrorCode::NotOpen, "no", Some(3), None),
            ServerFrame::Ping,
            ServerFrame::Pong,
        ];
        for f in frames {
            assert_eq!(
                decode_server_json(&f.to_json()).unwrap(),
                ServerMessage::Frame(f.clone())
            );
            assert_eq!(
                decode_server_msgpack(&f.to_msgpack()).unwrap(),
                ServerMessage::Frame(f)
            );
        }
        assert_eq!(ServerFrame::Ping.to_json(), r#"{"t":"ping"}"#);
    }

    fn invalid_code(r: Result<ClientFrame, FrameError>) -> ErrorCode {
        match r {
            Err(FrameError::Invalid { code, .. }) => code,
            other => panic!("expected an invalid frame, got {other:?}"),
        }
    }

    /// `{"t":"publish","id":5,"ns":"x","event":"e",<extra key>:<extra>}`.
    fn msgpack_publish_with(key: &str, extra: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_len(&mut out, true, 5);
        for s in ["t", "publish", "ns", "x", "event", "e"] {
            write_str(&mut out, s);
        }
        write_str(&mut out, "id");
        out.push(5);
        write_str(&mut out, key);
        out.extend_from_slice(extra);
        out
    }

    #[test]
    fn msgpack_values_of_any_depth_are_answered_never_closed() {
        let deep = [vec![0x91; 100_000], vec![0xc0]].concat();
        // An unknown field is never decoded: its depth does not matter.
        let f = decode_msgpack(&msgpack_publish_with("extra", &deep), MAX).unwrap();
        assert!(matches!(
            f,
            ClientFrame::Publish {
                id: 5,
                data: Some(_),
                ..
            }
        ));
        // Deep data is a mistake in a frame, answered with the publish's id and a path.
        match decode_msgpack(&msgpack_publish_with("data", &deep), MAX) {
            Err(FrameError::Invalid {
                code: ErrorCode::BadFrame,
                message,
                id: Some(5),
                ns: Some(ns),
                publish: true,
            }) => {
                assert_eq!(ns, "x");
                assert!(message.starts_with("data[0][0]"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let ok = [vec![0x91; MAX_DATA_DEPTH], vec![0xc0]].concat();
        match decode_msgpack(&msgpack_publish_with("data", &ok), MAX).unwrap() {
            ClientFrame::Publish {
                data: Some(Payload::Json(text)),
                ..
            } => assert_eq!(text.len(), 2 * MAX_DATA_DEPTH + 4),
            other => panic!("{other:?}"),
        }
        // A field of the wrong type still tells the id.
        let mut bad_ns = Vec::new();
        write_len(&mut bad_ns, true, 3);
        write_str(&mut bad_ns, "t");
        write_str(&mut bad_ns, "open");
        write_str(&mut bad_ns, "ns");
        bad_ns.push(7);
        write_str(&mut bad_ns, "id");
        bad_ns.push(9);
        assert!(matches!(
            decode_msgpack(&bad_ns, MAX),
            Err(FrameError::Invalid {
                code: ErrorCode::BadFrame,
                id: Some(9),
                ..
            })
        ));
    }

    #[test]
    fn bin_true_announces_a_payload_whether_the_frame_is_accepted_or_not() {
        for (text, accepted) in [
            (
                r#"{"t":"publish","id":1,"ns":"x","event":"e","bin":true}"#,
                true,
            ),
            (
                r#"{"t":"publish","id":1,"ns":"a..b","event":"e","bin":true}"#,
                false,
            ),
            (
                r#"{"t":"publish","id":"x","ns":"x","event":"e","bin":true}"#,
                false,
            ),
            (
                r#"{"t":"publish","id":1,"ns":"x","event":"","bin":true}"#,
                false,
            ),
            (
                r#"{"t":"publish","id":1,"ns":"x","event":"e","data":1,"bin":true}"#,
                false,
            ),
            (r#"{"t":"dance","bin":true}"#, false),
            (r#"{"t":"ping","bin":true}"#, true),
        ] {
            let d = decode_json_frame(text, MAX);
            assert!(d.binary_follows, "{text}");
            assert_eq!(d.frame.is_ok(), accepted, "{text}");
        }
        for text in [
            r#"{"t":"publish","id":1,"ns":"x","event":"e","bin":"yes"}"#,
            r#"{"t":"publish","id":1,"ns":"x","event":"e","bin":false}"#,
            r#"{"t":"publish","id":1,"ns":"x","event":"e"}"#,
            r#"{"bin":true}"#,
            r#"{"t":"publish","bin":true"#,
        ] {
            assert!(!decode_json_frame(text, MAX).binary_follows, "{text}");
        }
        // A refused publish says it is one, with or without an id.
        match decode_json(r#"{"t":"publish","id":"x","ns":"x","event":"e"}"#, MAX) {
            Err(FrameError::Invalid {
                id: None,
                publish: true,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mistakes_are_invalid_garbage_is_unparsable() {
        assert_eq!(
            invalid_code(decode_json(r#"{"t":"dance"}"#, MAX)),
            ErrorCode::UnknownType
        );
        assert_eq!(
            invalid_code(decode_json(r#"{"t":"open"}"#, MAX)),
            ErrorCode::BadFrame
        );
        assert_eq!(
            invalid_code(decode_json(r#"{"t":"open","ns":".x"}"#, MAX)),
            ErrorCode::BadNamespace
        );
        // A bad `from` is `bad_position`, as over HTTP, whatever its type.
        for from in [
            r#""soon""#,
            "-1",
            "1.5",
            "true",
            "[1]",
            r#"{"a":[1]}"#,
            r#""LATEST""#,
        ] {
            let text = format!(r#"{{"t":"open","ns":"x","from":{from}}}"#);
            assert_eq!(
                invalid_code(decode_json(&text, MAX)),
                ErrorCode::BadPosition,
                "{from}"
            );
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            let packed = rmp_serde::to_vec_named(&value).unwrap();
            assert_eq!(
                invalid_code(decode_msgpack(&packed, MAX)),
                ErrorCode::BadPosition,
                "{from}"
            );
        }
        // One rule for idempotency keys (the HTTP header's).
        for key in [r#""""#, r#"" ""#, r#""a b""#, r#""\t""#, r#""é""#] {
            let text =
                format!(r#"{{"t":"publish","id":3,"ns":"x","event":"e","idempotency_key":{key}}}"#);
            match decode_json(&text, MAX) {
                Err(FrameError::Invalid { code, id, .. }) => {
                    assert_eq!((code, id), (ErrorCode::BadFrame, Some(3)), "{key}")
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        assert_eq!(
            invalid_code(decode_json(r#"{"t":"publish","ns":"x","event":"e"}"#, MAX)),
            ErrorCode::BadFrame
        );
        let big = format!(
            r#"{{"t":"publish","id":1,"ns":"x","event":"e","data":"{}"}}"#,
            "x".repeat(100)
        );
        assert_eq!(
            invalid_code(decode_json(&big, 50)),
            ErrorCode::PayloadTooLarge
        );
        match decode_json(r#"{"t":"open","ns":5,"id":4}"#, MAX) {
            Err(FrameError::Invalid { id, .. }) => assert_eq!(id, Some(4)),
            other => panic!("{other:?}"),
        }
        let deep = format!(
            r#"{{"t":"publish","id":1,"ns":"x","event":"e","data":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(
            invalid_code(decode_json(&deep, usize::MAX)),
            ErrorCode::BadFrame
        );
        let deep_frame = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            decode_json(&deep_frame, MAX),
            Err(FrameError::Unparsable(_))
        ));
        for garbage in ["", "nope", "[]", "{}", r#"{"t":5}"#, "42"] {
            assert!(
                matches!(decode_json(garbage, MAX), Err(FrameError::Unparsable(_))),
                "{garbage}"
            );
        }
        assert!(matches!(
            decode_msgpack(&[0xc1, 0xff], MAX),
            Err(FrameError::Unparsable(_))
        ));
        // bin: true is how JSON says "the payload is the next binary frame".
        let f = decode_json(
            r#"{"t":"publish","id":2,"ns":"x","event":"e","bin":true}"#,
            MAX,
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Publish { data: None, .. }));
    }
}
