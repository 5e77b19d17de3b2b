//! The WebSocket encodings, and server frames as finished wire bytes.
//!
//! A server's frames are never masked (RFC 6455 §5.1), so a frame's bytes are the same
//! for every connection: the broker frames an event once per encoding and every
//! subscriber's socket write points at those same bytes.
//!
//! ### Invariants
//!
//! - Every frame written here is final (FIN set), unmasked, with the shortest length
//!   form RFC 6455 §5.2 allows.
//! - An event with a binary payload (JSON encoding) has both its frames written back to
//!   back, so the header and its payload always go out together.

use crate::frame::{encode_event_json, encode_event_msgpack, ServerFrame};
use crate::{Event, ProtocolError};

/// The subprotocol of the JSON encoding (spec §3.1).
pub const JSON_SUBPROTOCOL: &str = "rewind.v1.json";

/// The subprotocol of the MessagePack encoding (spec §3.1).
pub const MSGPACK_SUBPROTOCOL: &str = "rewind.v1.msgpack";

/// The WebSocket encodings (spec §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `rewind.v1.json`: text frames; byte payloads follow as a binary frame.
    Json,
    /// `rewind.v1.msgpack`: binary frames, byte payloads native.
    Msgpack,
}

impl Encoding {
    /// The encoding a `Sec-WebSocket-Protocol` token names, if rewind speaks it.
    pub fn from_subprotocol(token: &str) -> Option<Encoding> {
        match token {
            JSON_SUBPROTOCOL => Some(Encoding::Json),
            MSGPACK_SUBPROTOCOL => Some(Encoding::Msgpack),
            _ => None,
        }
    }

    /// The `Sec-WebSocket-Protocol` token of this encoding.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => JSON_SUBPROTOCOL,
            Encoding::Msgpack => MSGPACK_SUBPROTOCOL,
        }
    }
}

/// Opcodes of data frames (RFC 6455 §5.2).
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
/// The FIN bit of a frame's first byte.
const FIN: u8 = 0x80;

/// Appends one complete, final, unmasked frame with `opcode` to `out`: a 2-byte header,
/// then a 16-bit length for payloads of 126..=65535 bytes or a 64-bit one above
/// (RFC 6455 §5.2), then the payload.
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.push(FIN | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a text frame to `out`.
pub fn push_text(out: &mut Vec<u8>, payload: &[u8]) {
    push_frame(out, OP_TEXT, payload);
}

/// Appends a binary frame to `out`.
pub fn push_binary(out: &mut Vec<u8>, payload: &[u8]) {
    push_frame(out, OP_BINARY, payload);
}

/// A text frame's wire bytes.
pub fn text(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    push_text(&mut out, payload);
    out
}

/// A binary frame's wire bytes.
pub fn binary(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    push_binary(&mut out, payload);
    out
}

/// Appends `frame` in `encoding`: a text frame of JSON, or a binary frame of MessagePack.
pub fn push_server_frame(out: &mut Vec<u8>, encoding: Encoding, frame: &ServerFrame) {
    match encoding {
        Encoding::Json => push_text(out, frame.to_json().as_bytes()),
        Encoding::Msgpack => push_binary(out, &frame.to_msgpack()),
    }
}

/// Appends the finished frames of an event of namespace `ns` to `out`: one frame, or in
/// JSON a `bin: true` header frame and its binary payload frame, back to back.
///
/// An event that cannot be encoded in MessagePack (a payload stored before the value
/// rules of [`crate::value`]) becomes an `error` frame (`internal`, with its offset) in
/// its place, never an empty frame, so the subscriber knows what it missed and goes on;
/// the error is returned for the caller to log.
pub fn push_event(
    out: &mut Vec<u8>,
    ns: &str,
    ev: &Event,
    encoding: Encoding,
) -> Result<(), ProtocolError> {
    match encoding {
        Encoding::Json => {
            let (text, payload) = encode_event_json(ns, ev);
            push_text(out, text.as_bytes());
            if let Some(payload) = payload {
                push_binary(out, &payload);
            }
            Ok(())
        }
        Encoding::Msgpack => match encode_event_msgpack(ns, ev) {
            Ok(frame) => {
                push_binary(out, &frame);
                Ok(())
            }
            Err(e) => {
                push_binary(
                    out,
                    &ServerFrame::unencodable(ns, ev.offset, &e).to_msgpack(),
                );
                Err(e)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Reads frames back: (FIN set, masked, opcode, payload) each, by RFC 6455 §5.2.
    fn parse(mut wire: &[u8]) -> Vec<(bool, bool, u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let (b0, b1) = (wire[0], wire[1]);
            let (len, header) = match b1 & 0x7f {
                126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
                127 => {
                    let mut n = [0; 8];
                    n.copy_from_slice(&wire[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                n => (n as usize, 2),
            };
            let body = wire[header..header + len].to_vec();
            frames.push((b0 & FIN != 0, b1 & 0x80 != 0, b0 & 0x0f, body));
            wire = &wire[header + len..];
        }
        frames
    }

    #[test]
    fn frames_match_the_examples_of_rfc_6455() {
        // §5.7: a single-frame unmasked text message, "Hello".
        assert_eq!(text(b"Hello"), [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // §5.7: 256 bytes and 64 KiB in a single unmasked binary frame.
        assert_eq!(binary(&[7; 256])[..4], [0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(
            binary(&vec![7; 65536])[..10],
            [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        // The edges of each length form.
        assert_eq!(binary(&[0; 125])[..2], [0x82, 125]);
        assert_eq!(binary(&[0; 126])[..4], [0x82, 126, 0, 126]);
        assert_eq!(binary(&vec![0; 65535])[..4], [0x82, 126, 0xff, 0xff]);
    }

    #[test]
    fn subprotocols_name_their_encoding_and_nothing_else() {
        for e in [Encoding::Json, Encoding::Msgpack] {
            assert_eq!(Encoding::from_subprotocol(e.subprotocol()), Some(e));
        }
        assert_eq!(Encoding::from_subprotocol("rewind.v2.json"), None);
        assert_eq!(Encoding::from_subprotocol(""), None);
    }

    #[test]
    fn an_event_with_bytes_is_a_header_and_its_payload_back_to_back() {
        let ev = Event {
            offset: 3,
            event: "e".into(),
            ts: 1,
            key: None,
            data: crate::Payload::Bytes(vec![0, 1, 2]),
        };
        let mut out = Vec::new();
        push_event(&mut out, "n", &ev, Encoding::Json).expect("JSON carries bytes");
        let frames = parse(&out);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].2, OP_TEXT);
        assert!(std::str::from_utf8(&frames[0].3)
            .expect("UTF-8")
            .contains("\"bin\":true"));
        assert_eq!(frames[1], (true, false, OP_BINARY, vec![0, 1, 2]));
    }

    proptest! {
        #[test]
        fn any_payload_reads_back_as_one_final_unmasked_frame(
            payload in prop::collection::vec(any::<u8>(), 0..70_000),
            binary_frame in any::<bool>(),
        ) {
            let mut out = Vec::new();
            if binary_frame {
                push_binary(&mut out, &payload);
            } else {
                push_text(&mut out, &payload);
            }
            let op = if binary_frame { OP_BINARY } else { OP_TEXT };
            prop_assert_eq!(parse(&out), vec![(true, false, op, payload)]);
        }
    }
}
