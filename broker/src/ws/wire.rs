//! Outgoing WebSocket frames as finished wire bytes, and the write that sends them.
//!
//! A server's frames are never masked (RFC 6455 §5.1), so a frame's bytes are the same
//! for every connection. An event is framed once per encoding ([`crate::fanout`]) and
//! every subscriber's socket write points at those same bytes (a vectored write): no
//! per-connection encoding, copy or buffer.
//!
//! ### Invariants
//!
//! - tungstenite writes only what it sends by itself (pongs, the closing handshake). The
//!   session flushes tungstenite before a write of its own and finishes that write before
//!   it lets tungstenite read again, so frames from the two never interleave.
//! - An event with a binary payload (JSON encoding) has both its frames in one piece, so
//!   the header and its payload always go out back to back.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;
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
pub fn text(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    push_text(&mut out, payload);
    Bytes::from(out)
}

/// A binary frame's wire bytes.
pub fn binary(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    push_binary(&mut out, payload);
    Bytes::from(out)
}

/// Pieces handed to one vectored write, at most (Linux's `IOV_MAX` is 1024).
const MAX_SLICES: usize = 64;

/// Writes every piece, in order, with vectored writes of at most `max_bytes` each (but
/// always at least one piece's worth).
pub async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    pieces: &mut [Bytes],
    max_bytes: usize,
) -> io::Result<()> {
    let mut next = 0;
    loop {
        // An empty piece has nothing to write (and alone would look like a closed socket).
        while pieces.get(next).is_some_and(Bytes::is_empty) {
            next += 1;
        }
        if next == pieces.len() {
            return Ok(());
        }
        let pending = &pieces[next..];
        let n = poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            let mut bytes = 0;
            for p in pending {
                if count == MAX_SLICES || (count > 0 && bytes + p.len() > max_bytes) {
                    break;
                }
                slices[count] = IoSlice::new(p);
                count += 1;
                bytes += p.len();
            }
            Pin::new(&mut *w).poll_write_vectored(cx, &slices[..count])
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        for p in pieces[next..].iter_mut() {
            if left < p.len() {
                p.advance(left);
                break;
            }
            left -= p.len();
            next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::task::{Context, Poll};

    /// A socket that takes at most `step` bytes per write, and says "not now" every other
    /// call, the way a full socket buffer does.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut room = self.step;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                self.out.extend_from_slice(&b[..take]);
                room -= take;
                n += take;
                if room == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Parses frames back with tungstenite's own header parser.
    fn parse(mut wire: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn frames_arrive_whole_and_in_order(
            payloads in prop::collection::vec(
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..300),
                    prop::collection::vec(any::<u8>(), 0..20_000),
                ],
                1..40,
            ),
            step in 1usize..5000,
            max_bytes in 1usize..100_000,
        ) {
            // Empty pieces among the frames must be skipped, not end the write.
            let mut frames: Vec<Bytes> = payloads
                .iter()
                .flat_map(|p| [binary(p), Bytes::new()])
                .collect();
            let mut sink = Trickle { out: Vec::new(), step, calls: 0 };
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            rt.block_on(write_all(&mut sink, &mut frames, max_bytes)).expect("written");
            let back = parse(&sink.out);
            prop_assert_eq!(back.len(), payloads.len());
            for ((op, got), want) in back.iter().zip(&payloads) {
                prop_assert_eq!(*op, OpCode::Data(Data::Binary));
                prop_assert_eq!(got, want);
            }
        }
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
