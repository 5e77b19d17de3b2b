//! Idempotency keys: the one rule every transport checks a key against (the HTTP
//! `Idempotency-Key` header and the WebSocket `publish` frame's `idempotency_key`), and the
//! digest that tells a retry of a request from another request under the same key.

use sha2::{Digest, Sha256};

use crate::{NewEvent, Payload, ProtocolError};

/// The longest idempotency key as a literal, so the constant and the refusal's message
/// (a `&'static str`) are written from one figure.
macro_rules! max_key_bytes {
    () => {
        256
    };
}

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = max_key_bytes!();

/// Checks an idempotency key: 1 to [`MAX_KEY_BYTES`] visible ASCII characters (`!` to `~`,
/// RFC 5234's `VCHAR`). No spaces: HTTP drops them at the ends of a header value, so a
/// key with spaces could not mean the same on every transport.
pub fn validate_key(key: &str) -> Result<(), ProtocolError> {
    if key.is_empty() {
        return Err(ProtocolError::BadIdempotencyKey("it is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ProtocolError::BadIdempotencyKey(concat!(
            "it is longer than ",
            max_key_bytes!(),
            " bytes"
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProtocolError::BadIdempotencyKey(
            "only visible ASCII characters (! to ~) are allowed, no spaces or control characters",
        ));
    }
    Ok(())
}

/// A SHA-256 digest of the events of a publish request: each event's name, key and
/// payload, in order. Requests with the same digest publish the same events. A JSON
/// payload counts as its value, not its text: the digest covers the value's MessagePack
/// form from [`crate::value::json_to_msgpack`], so whitespace, string escapes and the
/// encoding it arrived in (JSON, NDJSON, WebSocket JSON or MessagePack) do not count,
/// while map key order (kept for every reader), integer against float (`1` and `1.0`)
/// and the float itself (`1e2` and `100.0` are the same float) do. A bytes payload is
/// never the same as a JSON one. The shape (one event or a batch) is not part of it: a
/// retry of the same events is answered in the original's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestDigest(pub [u8; 32]);

impl RequestDigest {
    /// The digest of publishing `events` (version 2, over each JSON value's canonical
    /// MessagePack form).
    pub fn of(events: &[NewEvent]) -> RequestDigest {
        let mut canonical = Vec::new();
        Self::hash(b"rewind.publish.v2\0", events, |data| match data {
            Payload::Json(text) => {
                canonical.clear();
                match crate::value::json_to_msgpack(text, &mut canonical) {
                    Ok(()) => (b'm', canonical.clone()),
                    // Only text stored before the value rules existed breaks them; such
                    // a value is compared as its text.
                    Err(_) => (b'j', text.as_bytes().to_vec()),
                }
            }
            Payload::Bytes(bytes) => (b'b', bytes.clone()),
        })
    }

    /// The digest versions before 2 kept with a key (JSON payloads compared as their
    /// text). A record written by such a version still matches a retry of the same text,
    /// so upgrading the broker turns no retry into a conflict.
    pub fn of_v1(events: &[NewEvent]) -> RequestDigest {
        Self::hash(b"rewind.publish.v1\0", events, |data| match data {
            Payload::Json(text) => (b'j', text.as_bytes().to_vec()),
            Payload::Bytes(bytes) => (b'b', bytes.clone()),
        })
    }

    fn hash(
        version: &[u8],
        events: &[NewEvent],
        mut payload: impl FnMut(&Payload) -> (u8, Vec<u8>),
    ) -> RequestDigest {
        let mut h = Sha256::new();
        h.update(version);
        h.update((events.len() as u64).to_le_bytes());
        let field = |h: &mut Sha256, bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        for ev in events {
            field(&mut h, ev.event.as_bytes());
            match &ev.key {
                Some(k) => {
                    h.update([1]);
                    field(&mut h, k.as_bytes());
                }
                None => h.update([0]),
            }
            let (tag, bytes) = payload(&ev.data);
            h.update([tag]);
            field(&mut h, &bytes);
        }
        RequestDigest(h.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, key: Option<&str>, data: Payload) -> NewEvent {
        NewEvent {
            event: name.into(),
            key: key.map(str::to_owned),
            data,
        }
    }

    #[test]
    fn keys_are_visible_ascii_without_spaces() {
        for good in [
            "a",
            "n-7",
            "8e03978e-40d5-43e8-bc93-6894a57f9324",
            "!~",
            &"k".repeat(256),
        ] {
            assert!(validate_key(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            " ",
            "a b",
            " a",
            "a ",
            "\t",
            "a\tb",
            "é",
            "a\u{7f}",
            "\n",
            &"k".repeat(257),
        ] {
            let e = validate_key(bad).expect_err(bad);
            assert_eq!(e.code(), crate::ErrorCode::BadFrame);
        }
    }

    #[test]
    fn the_digest_tells_every_part_of_a_request_apart() {
        let a = ev("e", None, Payload::Json("1".into()));
        let base = RequestDigest::of(std::slice::from_ref(&a));
        assert_eq!(base, RequestDigest::of(std::slice::from_ref(&a)));
        let others = [
            RequestDigest::of(&[a.clone(), a.clone()]),
            RequestDigest::of(&[]),
            RequestDigest::of(&[ev("f", None, Payload::Json("1".into()))]),
            RequestDigest::of(&[ev("e", Some(""), Payload::Json("1".into()))]),
            RequestDigest::of(&[ev("e", None, Payload::Json("2".into()))]),
            RequestDigest::of(&[ev("e", None, Payload::Bytes(b"1".to_vec()))]),
            // Field boundaries count: the name's end is not the payload's start.
            RequestDigest::of(&[ev("e1", None, Payload::Json("".into()))]),
            RequestDigest::of_v1(std::slice::from_ref(&a)),
        ];
        for (i, d) in others.iter().enumerate() {
            assert_ne!(*d, base, "variant {i}");
        }
    }

    fn json(text: &str) -> RequestDigest {
        RequestDigest::of(&[ev("e", None, Payload::Json(text.into()))])
    }

    #[test]
    fn a_json_payload_counts_as_its_value() {
        let same = [
            (r#"{"z":1,"y":[1,2]}"#, r#"{ "z": 1, "y": [1, 2] }"#),
            (r#"{"x":[1,2]}"#, "{\n  \"x\": [\n    1,\n    2\n  ]\n}"),
            (r#""A""#, r#""\u0041""#),
            ("1e2", "100.0"),
            ("0.5", "5e-1"),
            ("-0", "0"),
        ];
        for (a, b) in same {
            assert_eq!(json(a), json(b), "{a} vs {b}");
        }
        let different = [
            (r#"{"z":1,"y":2}"#, r#"{"y":2,"z":1}"#),
            ("1", "1.0"),
            ("100", "1e2"),
            ("[1,2]", "[2,1]"),
            (r#""1""#, "1"),
        ];
        for (a, b) in different {
            assert_ne!(json(a), json(b), "{a} vs {b}");
        }
        assert_ne!(
            json("1"),
            RequestDigest::of(&[ev("e", None, Payload::Bytes(b"1".to_vec()))])
        );
    }

    #[test]
    fn version_1_digests_compare_json_text() {
        let of = |t: &str| RequestDigest::of_v1(&[ev("e", None, Payload::Json(t.into()))]);
        assert_eq!(of("[1,2]"), of("[1,2]"));
        assert_ne!(of("[1,2]"), of("[1, 2]"));
    }
}
