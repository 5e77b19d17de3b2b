//! Outgoing WebSocket frames as finished wire bytes.
//!
//! A server's frames are never masked (RFC 6455 §5.1), so a frame's bytes are the same
//! for every connection. An event is framed once per encoding ([`crate::engine::fanout`]) and
//! every subscriber's socket write points at those same bytes (a vectored write from the
//! connection's [`super::link::Outbox`]): no per-connection encoding, copy or buffer.
//!
//! ### Invariants
//!
//! - An event with a binary payload (JSON encoding) has both its frames in one piece, so
//!   the header and its payload always go out back to back.

use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Appends one complete, final, unmasked frame to `out`.
fn push_frame(out: &mut Vec<u8>, data: Data, payload: &[u8]) {
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(data),
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Appends a text frame to `out`.
pub fn push_text(out: &mut Vec<u8>, payload: &[u8]) {
    push_frame(out, Data::Text, payload);
}

/// Appends a binary frame to `out`.
pub fn push_binary(out: &mut Vec<u8>, payload: &[u8]) {
    push_frame(out, Data::Binary, payload);
}

/// A text frame's wire bytes.
#[cfg(test)]
pub fn text(payload: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    push_text(&mut out, payload);
    bytes::Bytes::from(out)
}

/// A binary frame's wire bytes.
#[cfg(test)]
pub fn binary(payload: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    push_binary(&mut out, payload);
    bytes::Bytes::from(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io;

    /// Parses frames back with tungstenite's own header parser.
    pub(in crate::ws) fn parse(mut wire: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let mut cursor = io::Cursor::new(wire);
            let (header, len) = FrameHeader::parse(&mut cursor)
                .expect("a header")
                .expect("a whole header");
            assert!(header.is_final && header.mask.is_none());
            let start = cursor.position() as usize;
            let end = start + len as usize;
            frames.push((header.opcode, wire[start..end].to_vec()));
            wire = &wire[end..];
        }
        frames
    }

    #[test]
    fn a_header_and_its_payload_are_two_frames_in_one_piece() {
        let mut both = Vec::new();
        push_text(&mut both, br#"{"bin":true}"#);
        push_binary(&mut both, &[0, 1, 2]);
        let back = parse(&both);
        assert_eq!(
            back,
            vec![
                (OpCode::Data(Data::Text), br#"{"bin":true}"#.to_vec()),
                (OpCode::Data(Data::Binary), vec![0, 1, 2]),
            ]
        );
        assert_eq!(
            parse(&text(b"hi")),
            vec![(OpCode::Data(Data::Text), b"hi".to_vec())]
        );
    }
}
