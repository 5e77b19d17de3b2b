//! One WebSocket connection, served by one task: it reads client frames, polls every open
//! subscription, queues what they yield and the answers of publishes (once durable, in
//! the order the publishes came) in the connection's outbox, and writes the outbox.
//!
//! ### Invariants
//!
//! - Nothing in a session waits for something only that same session can release. The
//!   session makes progress in passes ([`Session::poll_pass`]) that read, answer, take
//!   from subscriptions and write, each without waiting on the others; what it waits for
//!   between passes is outside it: the client (a frame, room in the socket), the writer
//!   (an answer, which the writer never withholds for a session), a subscription's ring or
//!   the log, a timer, shutdown. The one `.await` inside a turn is [`Session::open`]
//!   asking the writer to create a namespace.
//! - Backpressure only ever stops reading: past `ws_max_inflight_publishes` publishes not
//!   yet answered, `ws_max_unsent_bytes` not yet written, or while a publish waits for
//!   room in the writer's queue, the session stops reading the connection. It never
//!   stops writing answers, events, pings or pongs.
//! - Memory per connection is bounded: at most `ws_max_inflight_publishes` publishes,
//!   `ws_max_unsent_bytes` (plus one pass's worth) of outgoing bytes, and subscriptions
//!   are polled only while fewer than `ws_write_buffer_bytes` wait, so the events a slow
//!   client has not taken stay in the namespace's ring.
//! - `published` and the `error`s of publishes leave in the order the publishes arrived
//!   ([`super::answers`]); other frames are answered as they are handled.
//! - Every publish taken is answered before the connection closes, also when it closes
//!   because the client broke the protocol; only a connection that is gone (read or
//!   write failed, the client's close) or silent past the ping timeout ends without them.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::stream::{AbortHandle, Abortable};
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rewind_protocol::frame::{
    decode_json_frame, decode_msgpack, ClientFrame, FrameError, ServerFrame,
};
use rewind_protocol::wire::{self, Encoding};
use rewind_protocol::{ErrorCode, NewEvent, Payload, Position};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::answers::Answers;
use super::gate::Gate;
use super::link::Link;
use super::report::Report;
use super::streams::Streams;
use super::subscription::{Credit, Subscription, Yield};
use super::WsContext;
use crate::auth::Grant;
use crate::config::seconds;
use crate::engine::{Idempotency, LogError, QueueSlot};
use crate::limits::PublishRate;
use crate::metrics::{Peer, Transport};

type Socket = WebSocketStream<Link<TokioIo<Upgraded>>>;

/// An open subscription's stream, abortable when the client closes it.
type SubStream = Abortable<Pin<Box<dyn Stream<Item = Vec<Yield>> + Send>>>;

/// Client frames handled in one pass before the session attends to its answers,
/// subscriptions and socket again.
const FRAMES_PER_PASS: usize = 64;

/// Subscription yields taken in one pass, likewise.
const YIELDS_PER_PASS: usize = 64;

/// What the next binary frame is, after a JSON frame that said `bin: true`.
enum PayloadDue {
    /// The payload of an accepted publish.
    Publish(Box<PendingBinary>),
    /// The payload of a frame that was refused (and answered already), or of a frame
    /// other than a publish: read and discarded.
    Discard,
}

/// A publish whose payload is the next binary frame (JSON encoding, `bin: true`).
struct PendingBinary {
    id: u64,
    ns: String,
    event: String,
    key: Option<String>,
    idempotency_key: Option<String>,
}

/// A publish waiting for room in the writer's queue. Nothing more is read from the
/// connection meanwhile, so its publishes keep their order.
struct HeldPublish {
    id: u64,
    ns: String,
    events: Vec<NewEvent>,
    idempotency_key: Option<String>,
    slot: Pin<Box<dyn Future<Output = Result<QueueSlot, LogError>> + Send>>,
}

/// An `open` to serve; it may have to wait for the writer to create the namespace.
struct OpenRequest {
    ns: String,
    from: Position,
    epoch: Option<String>,
    credit: u64,
}

/// A close frame to send before the connection ends.
type CloseWith = Option<(CloseCode, String)>;

/// What a pass of the session found for the session loop to do.
enum Turn {
    /// Time to send a `ping`.
    Ping,
    /// The `ping` deadline passed.
    Deadline,
    /// The broker began shutting down.
    Shutdown,
    /// Shutting down, and every publish has been answered.
    Settled,
    /// The token's expiry warning is due, or its expiry, or the token changed.
    Token,
    /// An `open` to serve.
    Open(Box<OpenRequest>),
    /// The connection is over.
    End(CloseWith),
}

/// What handling one client frame asks for.
enum Step {
    Go,
    /// The token changed: its deadlines are taken again ([`Turn::Token`]).
    Token,
    Open(Box<OpenRequest>),
    End(CloseWith),
}

/// Why a pass stopped reading, or polling subscriptions.
#[derive(PartialEq)]
enum Stopped {
    /// Nothing more is there; the task is woken when there is.
    Waiting,
    /// A limit held it back; it may go on once the limit is lifted in the same pass.
    Held,
}

struct OpenSub {
    credit: Arc<Credit>,
    abort: AbortHandle,
}

struct Session {
    ctx: WsContext,
    encoding: Encoding,
    ws: Socket,
    subs: HashMap<String, OpenSub>,
    streams: Streams<SubStream>,
    /// Publishes not answered yet, oldest first.
    answers: Answers,
    /// Set by a JSON frame with `bin: true`: the next binary frame is its payload.
    payload_due: Option<PayloadDue>,
    /// A publish read while the writer's queue was full.
    held: Option<Box<HeldPublish>>,
    /// When the client must have sent something by, after a `ping`.
    deadline: Option<Instant>,
    /// Reading stopped for good — the broker is shutting down, or the client broke the
    /// protocol: the publishes taken are answered, then the connection closes with this.
    closing: CloseWith,
    report: Report,
    /// `publish_rate`: publishes past it are answered `rate_limited`.
    publish_rate: PublishRate,
    /// What the connection's token allows, and until when ([`super::token`]).
    token: super::token::TokenState,
    /// The reading of the connection (the socket, a publish held for the writer's queue):
    /// polled only once woken, or after a pass stopped reading for a limit of its own.
    reading: Gate,
    /// A read failed (a frame too big, text not UTF-8, a broken frame): tungstenite reads
    /// nothing more, so the lingering close drops the client's bytes below the framing.
    read_failed: bool,
}

/// Close reasons must fit in a control frame (123 bytes).
fn reason(text: &str) -> String {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Serves one upgraded connection until it ends.
pub(super) async fn run(
    ws: Socket,
    encoding: Encoding,
    ctx: WsContext,
    peer: Option<Peer>,
    grant: Grant,
) {
    let report = Report::new(
        &ctx.log,
        peer.map(|p| p.0),
        grant.subject().map(str::to_owned),
    );
    let publish_rate = PublishRate::new(ctx.log.config().publish_rate);
    let session = Session {
        token: super::token::TokenState::new(grant),
        report,
        publish_rate,
        ctx,
        encoding,
        ws,
        subs: HashMap::new(),
        streams: Streams::default(),
        answers: Answers::default(),
        payload_due: None,
        held: None,
        deadline: None,
        closing: None,
        reading: Gate::new(),
        read_failed: false,
    };
    session.serve().await;
}

impl Session {
    async fn serve(mut self) {
        let cfg = self.ctx.log.config();
        // Each at most a century, so the next tick and the deadline can be computed
        // however large the option (tokio's interval adds its period to the last tick).
        let mut ping = tokio::time::interval(seconds(cfg.ws_ping_interval_secs));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let ping_timeout = seconds(cfg.ws_ping_timeout_secs);
        let shutdown = self.ctx.log.shutdown_signal();
        // Shutdown, the ping deadline and the ping tick are polled only once one of them
        // woke the session (or its turn created them anew), not on every delivery.
        let rare = Gate::new();
        let close = loop {
            let turn = {
                let closing = self.closing.is_some();
                let stop = shutdown.cancelled();
                tokio::pin!(stop);
                let silence = sleep_until(self.deadline);
                tokio::pin!(silence);
                let token_due = sleep_until(self.token.due());
                tokio::pin!(token_due);
                rare.open();
                poll_fn(|cx| {
                    if rare.enter(cx) {
                        let mut rcx = Context::from_waker(rare.waker());
                        if !closing && stop.as_mut().poll(&mut rcx).is_ready() {
                            return Poll::Ready(Turn::Shutdown);
                        }
                        if silence.as_mut().poll(&mut rcx).is_ready() {
                            return Poll::Ready(Turn::Deadline);
                        }
                        if !closing && token_due.as_mut().poll(&mut rcx).is_ready() {
                            return Poll::Ready(Turn::Token);
                        }
                        if ping.poll_tick(&mut rcx).is_ready() {
                            return Poll::Ready(Turn::Ping);
                        }
                    }
                    self.poll_pass(cx)
                })
                .await
            };
            match turn {
                Turn::Ping => {
                    self.deadline
                        .get_or_insert_with(|| Instant::now() + ping_timeout);
                    self.send_frame(&ServerFrame::Ping);
                }
                Turn::Deadline => match self.deadline {
                    // Not reading because the disk is slow is no fault of the client's.
                    Some(_) if self.held_by_writer() => {
                        self.deadline = Some(Instant::now() + ping_timeout);
                    }
                    Some(d) if d <= Instant::now() => {
                        break Some((
                            CloseCode::Policy,
                            "no frame within ping_timeout after a ping".to_owned(),
                        ));
                    }
                    _ => {}
                },
                Turn::Shutdown => {
                    self.begin_closing(CloseCode::Away, "broker shutting down".to_owned());
                }
                Turn::Settled => break self.closing.take(),
                Turn::Token => match self.token.on_due() {
                    Ok(Some(warning)) => self.send_frame(&warning),
                    Ok(None) => {}
                    Err(close) => self.begin_closing(close.0, close.1),
                },
                Turn::Open(req) => Box::pin(self.open(*req)).await,
                // A client that broke the protocol still gets the answers of the publishes
                // taken before: they may be appended already, and an unanswered one would
                // be sent again.
                Turn::End(Some((code, why))) if self.closing.is_none() => {
                    self.begin_closing(code, why);
                }
                Turn::End(close) => break close,
            }
        };
        self.report
            .ended(close.as_ref().map(|(code, _)| u16::from(*code)));
        // Boxed: an idle connection's future should only be as big as its waiting.
        Box::pin(self.finish(close, ping_timeout)).await;
    }

    /// One pass over everything the connection does, none of it waiting on another:
    /// read client frames (while the limits allow), hand out the publishes' answers in
    /// order, take what subscriptions yield (while the outbox is low), and write the
    /// outbox. Ready when the session loop has something to do.
    fn poll_pass(&mut self, cx: &mut Context<'_>) -> Poll<Turn> {
        loop {
            let read = match self.poll_reading(cx) {
                Ok(stopped) => stopped,
                Err(turn) => return Poll::Ready(turn),
            };
            self.take_answers(cx);
            let yields = self.take_yields(cx);
            let max_write = self.ctx.log.config().ws_write_buffer_bytes;
            if let Poll::Ready(Err(e)) = self.ws.get_mut().poll_send(cx, max_write) {
                tracing::debug!(error = %e, "WebSocket write failed");
                return Poll::Ready(Turn::End(None));
            }
            if self.closing.is_some() && self.answers.is_empty() && self.held.is_none() {
                return Poll::Ready(Turn::Settled);
            }
            // Answers or a write may have lifted a limit this pass: go round again rather
            // than wait for a wake-up that nothing has registered.
            if (read == Stopped::Held && self.may_read())
                || (yields == Stopped::Held && self.may_take_yields())
            {
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Reads client frames if the connection or a held publish woke the session since the
    /// last read came to wait, or the last read stopped for a limit or a turn; otherwise
    /// there is nothing to read. Read with the reading's own waker, so a delivery does not
    /// poll the socket.
    fn poll_reading(&mut self, cx: &Context<'_>) -> Result<Stopped, Turn> {
        if !self.reading.enter(cx) {
            return Ok(Stopped::Waiting);
        }
        let waker = self.reading.waker().clone();
        let read = self.read_frames(&mut Context::from_waker(&waker));
        if !matches!(read, Ok(Stopped::Waiting)) {
            self.reading.open();
        }
        read
    }

    fn outbox_len(&self) -> usize {
        self.ws.get_ref().out.len()
    }

    /// Reading stops past `ws_max_inflight_publishes` unanswered publishes or
    /// `ws_max_unsent_bytes` unwritten bytes; writing never stops.
    fn may_read(&self) -> bool {
        let cfg = self.ctx.log.config();
        self.closing.is_none()
            && self.held.is_none()
            && self.answers.len() < cfg.ws_max_inflight_publishes
            && self.outbox_len() < cfg.ws_max_unsent_bytes
    }

    /// Not reading only because publishes wait for the writer.
    fn held_by_writer(&self) -> bool {
        let cfg = self.ctx.log.config();
        (self.held.is_some() || self.answers.len() >= cfg.ws_max_inflight_publishes)
            && self.outbox_len() < cfg.ws_max_unsent_bytes
    }

    /// Subscriptions are polled only while the outbox is low, so events a slow client
    /// has not taken stay in the namespace's ring, not in this connection.
    fn may_take_yields(&self) -> bool {
        !self.streams.is_empty() && self.outbox_len() < self.ctx.log.config().ws_write_buffer_bytes
    }

    fn read_frames(&mut self, cx: &mut Context<'_>) -> Result<Stopped, Turn> {
        let mut frames = 0;
        loop {
            // A publish held for room in the writer's queue goes first, and until it has
            // gone nothing else is read.
            if let Some(held) = self.held.as_mut() {
                let slot = match held.slot.as_mut().poll(cx) {
                    Poll::Pending => return Ok(Stopped::Waiting),
                    Poll::Ready(slot) => slot,
                };
                if let Some(h) = self.held.take() {
                    let h = *h;
                    self.submit(slot, h.id, h.ns, h.events, h.idempotency_key);
                }
            }
            if frames == FRAMES_PER_PASS || !self.may_read() {
                return Ok(Stopped::Held);
            }
            frames += 1;
            let m = match self.ws.poll_next_unpin(cx) {
                Poll::Pending => return Ok(Stopped::Waiting),
                Poll::Ready(None) => return Err(Turn::End(None)),
                Poll::Ready(Some(Err(e))) => {
                    self.read_failed = true;
                    return Err(Turn::End(socket_error(e)));
                }
                Poll::Ready(Some(Ok(m))) => m,
            };
            self.deadline = None;
            match self.handle(m) {
                Step::Go => {}
                Step::Token => return Err(Turn::Token),
                Step::Open(req) => return Err(Turn::Open(req)),
                Step::End(close) => return Err(Turn::End(close)),
            }
        }
    }

    fn take_answers(&mut self, cx: &mut Context<'_>) {
        let encoding = self.encoding;
        let out = &mut self.ws.get_mut().out;
        let log = &self.ctx.log;
        self.answers.poll_ready(cx, |answer| {
            count_refusal(log, &answer);
            out.push_with(|buf| wire::push_server_frame(buf, encoding, &answer))
        });
    }

    fn take_yields(&mut self, cx: &mut Context<'_>) -> Stopped {
        for _ in 0..YIELDS_PER_PASS {
            if !self.may_take_yields() {
                return if self.streams.is_empty() {
                    Stopped::Waiting
                } else {
                    Stopped::Held
                };
            }
            match self.streams.poll_next_unpin(cx) {
                Poll::Ready(Some(yields)) => self.push_yields(yields),
                Poll::Ready(None) | Poll::Pending => return Stopped::Waiting,
            }
        }
        Stopped::Held
    }

    /// Queues what a subscription yielded; forgets the subscription when it ended.
    fn push_yields(&mut self, yields: Vec<Yield>) {
        for y in yields {
            match y {
                Yield::Events(pieces, charge) => {
                    let out = &mut self.ws.get_mut().out;
                    for piece in pieces {
                        out.push_shared(piece);
                    }
                    // In the outbox now, which `ws_max_unsent_bytes` bounds.
                    drop(charge);
                }
                Yield::Frame(f) => {
                    if let ServerFrame::Closed { ns, .. }
                    | ServerFrame::Error { ns: Some(ns), .. } = &f
                    {
                        self.subs.remove(ns);
                    }
                    self.send_frame(&f);
                }
            }
        }
    }

    /// Stops reading and serving subscriptions; the session ends with `code` once every
    /// publish taken has been answered.
    fn begin_closing(&mut self, code: CloseCode, why: String) {
        self.closing = Some((code, why));
        self.payload_due = None;
        self.forget_subscriptions();
    }

    fn forget_subscriptions(&mut self) {
        for (_, sub) in self.subs.drain() {
            sub.abort.abort();
        }
        self.streams = Streams::default();
    }

    /// Sends the close frame if any, writes what is still owed, and ends the socket; a
    /// client that does not read gets `ws_ping_timeout` for it.
    async fn finish(mut self, close: CloseWith, patience: Duration) {
        self.forget_subscriptions();
        if let Some((code, why)) = close {
            let frame = CloseFrame {
                code,
                reason: reason(&why).into(),
            };
            // The link takes every write at once, so this completes on its first poll.
            let _ = self.ws.send(Message::Close(Some(frame))).now_or_never();
        }
        let deadline = Instant::now() + patience;
        let max_write = self.ctx.log.config().ws_write_buffer_bytes;
        let link = self.ws.get_mut();
        let flushed = tokio::time::timeout_at(
            deadline,
            poll_fn(|cx| {
                ready!(link.poll_send(cx, max_write))?;
                link.poll_close(cx)
            }),
        )
        .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket ended with an error");
                return;
            }
            Err(_) => return,
        }
        // A lingering close: read and drop what the client still sends, until its close
        // (or the end of the stream, or the deadline). A socket closed with unread bytes
        // is answered by the kernel with a reset, and a reset can make the client's
        // kernel drop what it has not read yet: the close frame and the last answers.
        // After a refused frame (too big, malformed) tungstenite gives up on the stream at
        // once, while the client may still be sending the rest of it: the bytes are then
        // read and dropped as they are, below the WebSocket framing.
        // (Once a read has failed, tungstenite's stream only ends: straight to the bytes.)
        let read_failed = self.read_failed;
        let _ = tokio::time::timeout_at(deadline, async {
            if !read_failed {
                loop {
                    match self.ws.next().await {
                        Some(Ok(_)) => {}
                        Some(Err(_)) => break,
                        None => return,
                    }
                }
            }
            let mut dropped = [0u8; 8 << 10];
            while let Ok(1..) = self.ws.get_mut().read(&mut dropped).await {}
        })
        .await;
    }

    /// Has tungstenite hand over what it queued by itself (a pong, the closing handshake's
    /// reply); the link takes it at once.
    fn flush_tungstenite(&mut self) {
        let _ = self.ws.flush().now_or_never();
    }

    fn send_frame(&mut self, f: &ServerFrame) {
        count_refusal(&self.ctx.log, f);
        let encoding = self.encoding;
        self.ws
            .get_mut()
            .out
            .push_with(|buf| wire::push_server_frame(buf, encoding, f));
    }

    fn error(&mut self, code: ErrorCode, message: impl Into<String>, ns: Option<String>) {
        self.send_frame(&ServerFrame::error(code, message, None, ns));
    }

    /// Answers publish `id` with an error, in its turn among the publishes before it.
    fn refuse_publish(&mut self, id: u64, ns: String, code: ErrorCode, message: String) {
        self.answers
            .push_answered(ServerFrame::error(code, message, Some(id), Some(ns)));
    }

    /// Handles one incoming message without waiting for anything.
    fn handle(&mut self, m: Message) -> Step {
        let max_payload = self.ctx.log.config().max_payload_bytes;
        match (m, self.encoding) {
            (Message::Text(text), Encoding::Json) => {
                if let Some(PayloadDue::Publish(p)) = self.payload_due.take() {
                    let msg = format!(
                        "publish {} said bin: true; its payload must be the next frame, in binary",
                        p.id
                    );
                    self.refuse_publish(p.id, p.ns, ErrorCode::BadFrame, msg);
                }
                let decoded = decode_json_frame(&text, max_payload);
                let step = self.decoded(decoded.frame);
                // Set after the frame is handled: an accepted publish has set its own.
                if decoded.binary_follows && self.payload_due.is_none() {
                    self.payload_due = Some(PayloadDue::Discard);
                }
                step
            }
            (Message::Binary(bytes), Encoding::Json) => match self.payload_due.take() {
                Some(PayloadDue::Discard) => Step::Go,
                Some(PayloadDue::Publish(p)) if bytes.len() > max_payload => {
                    let msg = format!(
                        "payload of {} bytes is over the limit of {max_payload}",
                        bytes.len()
                    );
                    self.refuse_publish(p.id, p.ns, ErrorCode::PayloadTooLarge, msg);
                    Step::Go
                }
                Some(PayloadDue::Publish(p)) => {
                    let p = *p;
                    self.publish(
                        p.id,
                        p.ns,
                        p.event,
                        Payload::Bytes(bytes.to_vec()),
                        p.key,
                        p.idempotency_key,
                    );
                    Step::Go
                }
                None => Step::End(Some((
                    CloseCode::Unsupported,
                    "binary frame without a frame saying bin: true before it".to_owned(),
                ))),
            },
            (Message::Binary(bytes), Encoding::Msgpack) => {
                let decoded = decode_msgpack(&bytes, max_payload);
                self.decoded(decoded)
            }
            (Message::Text(_), Encoding::Msgpack) => Step::End(Some((
                CloseCode::Unsupported,
                "rewind.v1.msgpack takes binary frames only".to_owned(),
            ))),
            (Message::Ping(_), _) => {
                self.flush_tungstenite();
                Step::Go
            }
            (Message::Pong(_), _) | (Message::Frame(_), _) => Step::Go,
            (Message::Close(_), _) => {
                self.flush_tungstenite();
                Step::End(None)
            }
        }
    }

    fn decoded(&mut self, decoded: Result<ClientFrame, FrameError>) -> Step {
        match decoded {
            Ok(frame) => self.dispatch(frame),
            // A publish's error takes its turn among the answers, with or without an id
            // (the n-th answer answers the n-th publish), and so does any frame with an id.
            Err(FrameError::Invalid {
                code,
                message,
                id,
                ns,
                publish,
            }) if publish || id.is_some() => {
                self.answers
                    .push_answered(ServerFrame::error(code, message, id, ns));
                Step::Go
            }
            Err(FrameError::Invalid {
                code, message, ns, ..
            }) => {
                self.error(code, message, ns);
                Step::Go
            }
            Err(FrameError::Unparsable(why)) => Step::End(Some((
                CloseCode::Unsupported,
                format!("unparsable frame: {why}"),
            ))),
        }
    }

    fn dispatch(&mut self, frame: ClientFrame) -> Step {
        match frame {
            ClientFrame::Open {
                ns,
                from,
                epoch,
                credit,
            } => {
                return Step::Open(Box::new(OpenRequest {
                    ns,
                    from,
                    epoch,
                    credit,
                }))
            }
            ClientFrame::Close { ns } => match self.subs.remove(&ns) {
                Some(sub) => {
                    sub.abort.abort();
                    self.send_frame(&ServerFrame::Closed { ns, reason: None });
                }
                None => self.error(ErrorCode::NotOpen, "namespace is not open", Some(ns)),
            },
            ClientFrame::Credit { ns, n } => match self.subs.get(&ns) {
                Some(sub) => sub.credit.add(n),
                None => self.error(ErrorCode::NotOpen, "namespace is not open", Some(ns)),
            },
            ClientFrame::Publish {
                id,
                ns,
                event,
                data,
                key,
                idempotency_key,
            } => match data {
                Some(data) => self.publish(id, ns, event, data, key, idempotency_key),
                None => {
                    self.payload_due = Some(PayloadDue::Publish(Box::new(PendingBinary {
                        id,
                        ns,
                        event,
                        key,
                        idempotency_key,
                    })));
                }
            },
            ClientFrame::Ping => self.send_frame(&ServerFrame::Pong),
            ClientFrame::Pong => {}
            ClientFrame::Auth { .. } if self.publish_rate.admit().is_err() => {
                let message =
                    "more auth and publish frames a second than publish_rate allows; retry later";
                self.send_frame(&ServerFrame::error(
                    ErrorCode::RateLimited,
                    message,
                    None,
                    None,
                ));
            }
            ClientFrame::Auth { token } => match self.token.refresh(&token) {
                Ok(answer) => {
                    self.send_frame(&answer);
                    for ns in self.token.revoked(self.subs.keys()) {
                        if let Some(sub) = self.subs.remove(&ns) {
                            sub.abort.abort();
                            let reason = Some(ErrorCode::Forbidden.as_str().to_owned());
                            self.send_frame(&ServerFrame::Closed { ns, reason });
                        }
                    }
                    return Step::Token;
                }
                Err(refused) => self.send_frame(&refused),
            },
        }
        Step::Go
    }

    /// Opens a subscription. The one wait here is for the writer to create a missing
    /// namespace, and the writer never waits for a session.
    async fn open(&mut self, req: OpenRequest) {
        let OpenRequest {
            ns,
            from,
            epoch,
            credit,
        } = req;
        if let Err(refused) = self.token.grant().may_subscribe(&ns) {
            return self.error(refused.code, refused.message, Some(ns));
        }
        if self.subs.contains_key(&ns) {
            return self.error(
                ErrorCode::AlreadyOpen,
                "namespace is already open",
                Some(ns),
            );
        }
        let max = self.ctx.log.config().ws_max_namespaces;
        if self.subs.len() >= max {
            let msg = format!("at most {max} namespaces per connection");
            return self.error(ErrorCode::TooManyNamespaces, msg, Some(ns));
        }
        // A subscription never creates its namespace (as an HTTP read does not): only
        // a publish or a PUT does.
        // With a shared store (Redis) another broker may have created it, appended past
        // what this one has heard of, or replaced the incarnation this one follows.
        let state = match self
            .ctx
            .log
            .namespace_reaching(&ns, &from, epoch.as_deref())
            .await
        {
            Ok(Some(state)) => state,
            Ok(None) => {
                let e = LogError::NotFound(ns.clone());
                return self.error(e.code(), e.to_string(), Some(ns));
            }
            Err(e) => return self.error(e.code(), e.to_string(), Some(ns)),
        };
        // Subscribe to live events before reading `visible`, so nothing falls in between.
        let live = state.subscribe_live();
        let visible = state.visible();
        let earliest = state.earliest();
        let epoch_changed = epoch.as_ref().is_some_and(|e| *e != state.epoch);
        let (cursor, truncated) = match from {
            Position::Offset(n) if epoch_changed => (earliest, Some((n, "epoch"))),
            from => match from.resolve(earliest, visible) {
                Err(e) => return self.error(ErrorCode::BadPosition, e.to_string(), Some(ns)),
                Ok(n) if n < earliest => (earliest, Some((n, "retention"))),
                Ok(n) => (n, None),
            },
        };
        self.send_frame(&ServerFrame::Opened {
            ns: ns.clone(),
            epoch: state.epoch.clone(),
            from: cursor,
            earliest,
            next: visible,
        });
        if let Some((requested, why)) = truncated {
            self.send_frame(&ServerFrame::Truncated {
                ns: ns.clone(),
                requested,
                from: cursor,
                reason: why.into(),
            });
        }
        let credit = Arc::new(Credit::new(credit));
        let sub = Subscription::new(
            self.ctx.log.clone(),
            state,
            live,
            cursor,
            Arc::clone(&credit),
            self.encoding,
            Arc::clone(&self.report.events_out),
        );
        self.report.opened += 1;
        let stream: Pin<Box<dyn Stream<Item = Vec<Yield>> + Send>> = Box::pin(sub.into_stream());
        let (abort, registration) = AbortHandle::new_pair();
        self.streams.push(Abortable::new(stream, registration));
        self.subs.insert(ns, OpenSub { credit, abort });
    }

    /// Queues a publish to the writer now, so a connection's publishes are appended in the
    /// order they arrived; its answer takes its place in line. When the writer's queue is
    /// full the publish is held, and the connection not read, until there is room.
    fn publish(
        &mut self,
        id: u64,
        ns: String,
        event: String,
        data: Payload,
        key: Option<String>,
        idempotency_key: Option<String>,
    ) {
        if let Err(refused) = self.token.grant().may_publish(&ns) {
            return self.refuse_publish(id, ns, refused.code, refused.message);
        }
        if let Err((code, message)) = self.publish_rate.admit() {
            return self.refuse_publish(id, ns, code, message);
        }
        let events = vec![NewEvent { event, key, data }];
        self.report.events_in += 1;
        match self.ctx.log.try_queue_slot() {
            // A full queue holds this publish, and with it the reading of the connection,
            // until the writer has taken enough: backpressure, not an error.
            Err(LogError::Overloaded) => {
                self.held = Some(Box::new(HeldPublish {
                    id,
                    ns,
                    events,
                    idempotency_key,
                    slot: Box::pin(self.ctx.log.queue_slot()),
                }));
            }
            slot => self.submit(slot, id, ns, events, idempotency_key),
        }
    }

    fn submit(
        &mut self,
        slot: Result<QueueSlot, LogError>,
        id: u64,
        ns: String,
        events: Vec<NewEvent>,
        idempotency_key: Option<String>,
    ) {
        match slot {
            Ok(slot) => {
                let idempotency = Idempotency::of(idempotency_key, &events, false);
                let pending = self
                    .ctx
                    .log
                    .submit_append_in(slot, &ns, events, idempotency);
                self.answers.push_waiting(id, ns, pending);
            }
            Err(e) => self.refuse_publish(id, ns, e.code(), e.to_string()),
        }
    }
}

/// Counts an `error` frame in `rewind_refused_requests_total`.
fn count_refusal(log: &crate::engine::Log, f: &ServerFrame) {
    if let ServerFrame::Error { code, .. } = f {
        log.metrics().refused(Transport::Ws, code);
    }
}

/// The close frame a failed read deserves, if any.
fn socket_error(e: WsError) -> CloseWith {
    let (code, why) = match &e {
        WsError::Capacity(_) => (CloseCode::Size, e.to_string()),
        WsError::Utf8(_) => (
            CloseCode::Invalid,
            "text frame is not valid UTF-8".to_owned(),
        ),
        WsError::Protocol(_) => (CloseCode::Protocol, e.to_string()),
        _ => {
            tracing::debug!(error = %e, "WebSocket read failed");
            return None;
        }
    };
    Some((code, why))
}

/// Completes at `deadline`, or never when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
