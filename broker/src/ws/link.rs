//! A WebSocket connection's socket, with the outbox every outgoing byte waits in.
//!
//! The session never waits for the socket to take a write. Whatever it sends (answers,
//! events, pings) is appended to the [`Outbox`], and the outbox is written whenever the
//! socket has room, in the same turn as everything else the session does. tungstenite,
//! which reads the client's frames and answers its pings and closing handshake by itself,
//! is handed this [`Link`] as its socket: its writes land in the same outbox, always
//! whole frames, so its frames and the session's never interleave.
//!
//! ### Invariants
//!
//! - Bytes go out in the order they were appended, each frame whole and back to back.
//! - Writing to a `Link` never blocks and never fails; only [`Link::poll_send`] touches
//!   the socket. How much may wait unsent is the session's decision
//!   (`ws_max_unsent_bytes`): past it, it stops reading the connection.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Pieces handed to one vectored write, at most (Linux's `IOV_MAX` is 1024).
const MAX_SLICES: usize = 64;

/// Slots of the piece queue kept once it is empty (32 bytes each).
const KEPT_SLOTS: usize = 8;

/// Bytes waiting to be written, in order: shared pieces (events framed once for every
/// subscriber, see [`crate::engine::fanout`]) and small frames gathered in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pieces: VecDeque<Bytes>,
    /// Small frames appended since the last piece, written after every piece.
    tail: Vec<u8>,
    /// Unsent bytes in all.
    len: usize,
}

impl Outbox {
    /// Unsent bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends whatever `build` appends to the buffer it is given (whole frames).
    pub(crate) fn push_with(&mut self, build: impl FnOnce(&mut Vec<u8>)) {
        let before = self.tail.len();
        build(&mut self.tail);
        self.len += self.tail.len() - before;
    }

    /// Appends a copy of `bytes`.
    pub(crate) fn push_bytes(&mut self, bytes: &[u8]) {
        self.push_with(|out| out.extend_from_slice(bytes));
    }

    /// Appends shared bytes without copying them.
    pub(crate) fn push_shared(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.freeze_tail();
        self.len += bytes.len();
        self.pieces.push_back(bytes);
    }

    fn freeze_tail(&mut self) {
        if !self.tail.is_empty() {
            self.pieces
                .push_back(Bytes::from(std::mem::take(&mut self.tail)));
        }
    }

    /// Writes as much as `w` takes, with vectored writes of at most `max_bytes` each (but
    /// always at least one piece's worth); ready once everything is written.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
        max_bytes: usize,
    ) -> Poll<io::Result<()>> {
        self.freeze_tail();
        while !self.pieces.is_empty() {
            let n = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                let mut bytes = 0;
                for p in &self.pieces {
                    if count == MAX_SLICES || (count > 0 && bytes + p.len() > max_bytes) {
                        break;
                    }
                    slices[count] = IoSlice::new(p);
                    count += 1;
                    bytes += p.len();
                }
                ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..count]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.len -= n;
            let mut left = n;
            while left > 0 {
                let Some(front) = self.pieces.front_mut() else {
                    break;
                };
                if left < front.len() {
                    front.advance(left);
                    break;
                }
                left -= front.len();
                self.pieces.pop_front();
            }
        }
        // An idle connection keeps no more than a few slots: most connections write a
        // little, rarely, and one that delivers live events writes a piece or two per
        // event (not freeing and allocating the queue for each is issue 14's profile).
        if self.pieces.capacity() > KEPT_SLOTS {
            self.pieces = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// A connection's socket as tungstenite sees it: reads go to the socket, writes to the
/// outbox.
#[derive(Debug)]
pub(crate) struct Link<S> {
    io: S,
    /// What waits to be written.
    pub(crate) out: Outbox,
}

impl<S> Link<S> {
    /// A link over `io` with an empty outbox.
    pub(crate) fn new(io: S) -> Link<S> {
        Link {
            io,
            out: Outbox::default(),
        }
    }
}

impl<S: AsyncWrite + Unpin> Link<S> {
    /// Writes the outbox to the socket; ready once it is empty (or the socket failed).
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
    ) -> Poll<io::Result<()>> {
        self.out.poll_write(&mut self.io, cx, max_bytes)
    }

    /// Ends the socket's sending side (after [`Link::poll_send`] has emptied the outbox).
    pub(crate) fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Link<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: Unpin> AsyncWrite for Link<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().out.push_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rewind_protocol::wire;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    fn text(payload: &[u8]) -> Bytes {
        Bytes::from(wire::text(payload))
    }

    fn binary(payload: &[u8]) -> Bytes {
        Bytes::from(wire::binary(payload))
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn frames_arrive_whole_and_in_order(
            payloads in prop::collection::vec(
                (
                    prop_oneof![
                        prop::collection::vec(any::<u8>(), 0..300),
                        prop::collection::vec(any::<u8>(), 0..20_000),
                    ],
                    0u8..3,
                ),
                1..40,
            ),
            step in 1usize..5000,
            max_bytes in 1usize..100_000,
        ) {
            // Shared pieces, empty pieces and small frames copied in, mixed: every frame
            // must come out whole, in the order it went in.
            let mut out = Outbox::default();
            for (p, how) in &payloads {
                match how {
                    0 => out.push_shared(binary(p)),
                    1 => out.push_bytes(&binary(p)),
                    _ => {
                        out.push_shared(Bytes::new());
                        out.push_with(|buf| wire::push_binary(buf, p));
                    }
                }
            }
            let total = out.len();
            let mut sink = Trickle { out: Vec::new(), step, calls: 0 };
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            rt.block_on(std::future::poll_fn(|cx| out.poll_write(&mut sink, cx, max_bytes)))
                .expect("written");
            prop_assert_eq!(out.len(), 0);
            prop_assert_eq!(sink.out.len(), total);
            let back = parse(&sink.out);
            prop_assert_eq!(back.len(), payloads.len());
            for ((op, got), (want, _)) in back.iter().zip(&payloads) {
                prop_assert_eq!(*op, OpCode::Data(Data::Binary));
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn writes_to_a_link_wait_in_its_outbox_behind_what_is_there() {
        let mut link = Link::new(Trickle {
            out: Vec::new(),
            step: 3,
            calls: 0,
        });
        link.out.push_shared(text(b"first"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            // What tungstenite writes (a pong) is taken at once, never partly.
            let pong = binary(b"pong");
            assert_eq!(link.write(&pong).await.expect("taken"), pong.len());
            std::future::poll_fn(|cx| link.poll_send(cx, 1 << 16))
                .await
                .expect("sent");
        });
        assert_eq!(
            parse(&link.io.out),
            vec![
                (OpCode::Data(Data::Text), b"first".to_vec()),
                (OpCode::Data(Data::Binary), b"pong".to_vec()),
            ]
        );
    }
}
