//! Idempotency keys: the one rule every transport checks a key against (the HTTP
//! `Idempotency-Key` header and the WebSocket `publish` frame's `idempotency_key`), and the
//! digest that tells a retry of a request from another request under the same key.

use sha2::{Digest, Sha256};

use crate::{NewEvent, Payload, ProtocolError};

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Checks an idempotency key: 1 to [`MAX_KEY_BYTES`] visible ASCII characters (`!` to `~`,
/// RFC 5234's `VCHAR`). No spaces: HTTP drops them at the ends of a header value, so a
/// key with spaces could not mean the same on every transport.
pub fn validate_key(key: &str) -> Result<(), ProtocolError> {
    if key.is_empty() {
        return Err(ProtocolError::BadIdempotencyKey("it is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ProtocolError::BadIdempotencyKey(
            "it is longer than 256 bytes",
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProtocolError::BadIdempotencyKey(
            "only visible ASCII characters (! to ~) are allowed, no spaces or control characters",
        ));
    }
    Ok(())
}

/// A SHA-256 digest of the events of a publish request: each event's name, key and
/// payload, in order. Requests with the same digest publish the same events; a JSON
/// payload counts as the JSON text the broker stores. The shape (one event or a batch) is
/// not part of it: a retry of the same events is answered in the original's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestDigest(pub [u8; 32]);

impl RequestDigest {
    /// The digest of publishing `events`.
    pub fn of(events: &[NewEvent]) -> RequestDigest {
        let mut h = Sha256::new();
        h.update(b"rewind.publish.v1\0");
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
            match &ev.data {
                Payload::Json(text) => {
                    h.update([b'j']);
                    field(&mut h, text.as_bytes());
                }
                Payload::Bytes(bytes) => {
                    h.update([b'b']);
                    field(&mut h, bytes);
                }
            }
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
        ];
        for (i, d) in others.iter().enumerate() {
            assert_ne!(*d, base, "variant {i}");
        }
    }
}
