//! One WebSocket connection, served by one task: it reads client frames, polls every open
//! subscription, writes what they yield straight to the socket, and sends the answers of
//! publishes once they are durable.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{AbortHandle, Abortable, SelectAll};
use futures::{SinkExt, Stream, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rewind_protocol::frame::{decode_json, decode_msgpack, ClientFrame, FrameError, ServerFrame};
use rewind_protocol::{ErrorCode, NewEvent, Payload, Position};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::subscription::{Credit, Subscription, Yield};
use super::wire;
use super::WsContext;
use crate::fanout::Encoding;
use crate::log::LogError;

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// An open subscription's stream, abortable when the client closes it.
type SubStream = Abortable<Pin<Box<dyn Stream<Item = Vec<Yield>> + Send>>>;

/// A publish whose payload is the next binary frame (JSON encoding, `bin: true`).
struct PendingBinary {
    id: u64,
    ns: String,
    event: String,
    key: Option<String>,
    idempotency_key: Option<String>,
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
    streams: SelectAll<SubStream>,
    /// Answers of publishes, sent by the tasks that wait for their durability. Boxed, so
    /// the queue's slots (allocated up front, for idle connections too) stay one word.
    answers: mpsc::Sender<Box<ServerFrame>>,
    answers_rx: mpsc::Receiver<Box<ServerFrame>>,
    pending_binary: Option<Box<PendingBinary>>,
    /// Made on the first publish: most dashboard connections never publish.
    publish_slots: Option<Arc<Semaphore>>,
}

/// Close reasons must fit in a control frame (123 bytes).
fn reason(text: &str) -> String {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn log_error_code(e: &LogError) -> ErrorCode {
    match e {
        LogError::NotFound(_) | LogError::Deleted(_) => ErrorCode::BadNamespace,
        LogError::Overloaded | LogError::ShuttingDown => ErrorCode::Overloaded,
        LogError::BadPosition(_) => ErrorCode::BadPosition,
        LogError::DiskFull | LogError::Storage(_) => ErrorCode::Internal,
    }
}

/// Serves one upgraded connection until it ends.
pub(super) async fn run(ws: Socket, encoding: Encoding, ctx: WsContext) {
    let cfg = ctx.log.config();
    let (answers, answers_rx) = mpsc::channel(cfg.ws_max_inflight_publishes.max(1));
    let session = Session {
        ctx: ctx.clone(),
        encoding,
        ws,
        subs: HashMap::new(),
        streams: SelectAll::new(),
        answers,
        answers_rx,
        pending_binary: None,
        publish_slots: None,
    };
    session.serve().await;
}

impl Session {
    async fn serve(mut self) {
        let cfg = self.ctx.log.config();
        let mut ping = tokio::time::interval(Duration::from_secs(cfg.ws_ping_interval_secs));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let ping_timeout = Duration::from_secs(cfg.ws_ping_timeout_secs);
        let mut deadline: Option<Instant> = None;
        let mut shutdown = self.ctx.log.shutdown_signal();
        loop {
            let go_on = tokio::select! {
                msg = self.ws.next() => match msg {
                    Some(Ok(m)) => {
                        deadline = None;
                        // Boxed: handling a frame needs far more state than waiting for
                        // one, and an idle connection should only pay for the waiting.
                        Box::pin(self.handle(m)).await
                    }
                    Some(Err(e)) => {
                        self.socket_error(e).await;
                        false
                    }
                    None => false,
                },
                Some(yields) = self.streams.next(), if !self.streams.is_empty() => {
                    Box::pin(self.write_yields(yields)).await
                }
                Some(answer) = self.answers_rx.recv() => self.send_frame(*answer).await,
                _ = ping.tick() => {
                    deadline.get_or_insert(Instant::now() + ping_timeout);
                    self.send_frame(ServerFrame::Ping).await
                }
                () = sleep_until(deadline) => {
                    self.close(CloseCode::Policy, "no frame within ping_timeout after a ping").await;
                    false
                }
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    self.close(CloseCode::Away, "broker shutting down").await;
                    false
                }
            };
            if !go_on {
                break;
            }
        }
        for (_, sub) in self.subs.drain() {
            sub.abort.abort();
        }
        let _ = self.ws.close(None).await;
    }

    /// Writes finished frames to the socket (see [`super::wire`] for why tungstenite is
    /// flushed first).
    async fn write(&mut self, mut frames: Vec<Bytes>) -> bool {
        if self.ws.flush().await.is_err() {
            return false;
        }
        let max = self.ctx.log.config().ws_write_buffer_bytes;
        wire::write_all(self.ws.get_mut(), &mut frames, max)
            .await
            .is_ok()
    }

    fn encode(&self, f: &ServerFrame) -> Bytes {
        match self.encoding {
            Encoding::Json => wire::text(f.to_json().as_bytes()),
            Encoding::Msgpack => wire::binary(&f.to_msgpack()),
        }
    }

    async fn send_frame(&mut self, f: ServerFrame) -> bool {
        let m = self.encode(&f);
        self.write(vec![m]).await
    }

    /// Writes what a subscription yielded; forgets the subscription when it ended.
    async fn write_yields(&mut self, yields: Vec<Yield>) -> bool {
        let mut messages = Vec::new();
        for y in yields {
            match y {
                Yield::Events(events) if messages.is_empty() => messages = events,
                Yield::Events(events) => messages.extend(events),
                Yield::Frame(f) => {
                    if let ServerFrame::Closed { ns, .. }
                    | ServerFrame::Error { ns: Some(ns), .. } = &f
                    {
                        self.subs.remove(ns);
                    }
                    messages.push(self.encode(&f));
                }
            }
        }
        self.write(messages).await
    }

    async fn socket_error(&mut self, e: WsError) {
        let (code, why) = match &e {
            WsError::Capacity(_) => (CloseCode::Size, e.to_string()),
            WsError::Utf8(_) => (
                CloseCode::Invalid,
                "text frame is not valid UTF-8".to_owned(),
            ),
            WsError::Protocol(_) => (CloseCode::Protocol, e.to_string()),
            _ => {
                tracing::debug!(error = %e, "WebSocket read failed");
                return;
            }
        };
        self.close(code, &why).await;
    }

    async fn close(&mut self, code: CloseCode, why: &str) {
        let frame = CloseFrame {
            code,
            reason: reason(why).into(),
        };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        id: Option<u64>,
        ns: Option<String>,
    ) -> bool {
        self.send_frame(ServerFrame::error(code, message, id, ns))
            .await
    }

    /// Handles one incoming message; false ends the connection.
    async fn handle(&mut self, m: Message) -> bool {
        let max_payload = self.ctx.log.config().max_payload_bytes;
        match (m, self.encoding) {
            (Message::Text(text), Encoding::Json) => {
                if let Some(p) = self.pending_binary.take() {
                    let msg = format!(
                        "publish {} said bin: true; its payload must be the next frame, in binary",
                        p.id
                    );
                    if !self
                        .error(ErrorCode::BadFrame, msg, Some(p.id), Some(p.ns))
                        .await
                    {
                        return false;
                    }
                }
                let decoded = decode_json(&text, max_payload);
                self.decoded(decoded).await
            }
            (Message::Binary(bytes), Encoding::Json) => match self.pending_binary.take() {
                Some(p) if bytes.len() > max_payload => {
                    let msg = format!(
                        "payload of {} bytes is over the limit of {max_payload}",
                        bytes.len()
                    );
                    self.error(ErrorCode::PayloadTooLarge, msg, Some(p.id), Some(p.ns))
                        .await
                }
                Some(p) => {
                    let p = *p;
                    self.publish(
                        p.id,
                        p.ns,
                        p.event,
                        Payload::Bytes(bytes.to_vec()),
                        p.key,
                        p.idempotency_key,
                    )
                    .await
                }
                None => {
                    self.close(
                        CloseCode::Unsupported,
                        "binary frame without a publish saying bin: true",
                    )
                    .await;
                    false
                }
            },
            (Message::Binary(bytes), Encoding::Msgpack) => {
                let decoded = decode_msgpack(&bytes, max_payload);
                self.decoded(decoded).await
            }
            (Message::Text(_), Encoding::Msgpack) => {
                self.close(
                    CloseCode::Unsupported,
                    "rewind.v1.msgpack takes binary frames only",
                )
                .await;
                false
            }
            // tungstenite has queued the pong; have it written now.
            (Message::Ping(_), _) => self.ws.flush().await.is_ok(),
            (Message::Pong(_), _) | (Message::Frame(_), _) => true,
            // tungstenite has queued the closing handshake's reply; write it before leaving.
            (Message::Close(_), _) => {
                let _ = self.ws.flush().await;
                false
            }
        }
    }

    async fn decoded(&mut self, decoded: Result<ClientFrame, FrameError>) -> bool {
        match decoded {
            Ok(frame) => self.dispatch(frame).await,
            Err(FrameError::Invalid {
                code,
                message,
                id,
                ns,
            }) => self.error(code, message, id, ns).await,
            Err(FrameError::Unparsable(why)) => {
                self.close(CloseCode::Unsupported, &format!("unparsable frame: {why}"))
                    .await;
                false
            }
        }
    }

    async fn dispatch(&mut self, frame: ClientFrame) -> bool {
        match frame {
            ClientFrame::Open {
                ns,
                from,
                epoch,
                credit,
            } => self.open(ns, from, epoch, credit).await,
            ClientFrame::Close { ns } => match self.subs.remove(&ns) {
                Some(sub) => {
                    sub.abort.abort();
                    self.send_frame(ServerFrame::Closed { ns, reason: None })
                        .await
                }
                None => {
                    self.error(ErrorCode::NotOpen, "namespace is not open", None, Some(ns))
                        .await
                }
            },
            ClientFrame::Credit { ns, n } => match self.subs.get(&ns) {
                Some(sub) => {
                    sub.credit.add(n);
                    true
                }
                None => {
                    self.error(ErrorCode::NotOpen, "namespace is not open", None, Some(ns))
                        .await
                }
            },
            ClientFrame::Publish {
                id,
                ns,
                event,
                data,
                key,
                idempotency_key,
            } => match data {
                Some(data) => {
                    self.publish(id, ns, event, data, key, idempotency_key)
                        .await
                }
                None => {
                    self.pending_binary = Some(Box::new(PendingBinary {
                        id,
                        ns,
                        event,
                        key,
                        idempotency_key,
                    }));
                    true
                }
            },
            ClientFrame::Ping => self.send_frame(ServerFrame::Pong).await,
            ClientFrame::Pong => true,
        }
    }

    async fn open(
        &mut self,
        ns: String,
        from: Position,
        epoch: Option<String>,
        credit: u64,
    ) -> bool {
        if self.subs.contains_key(&ns) {
            return self
                .error(
                    ErrorCode::AlreadyOpen,
                    "namespace is already open",
                    None,
                    Some(ns),
                )
                .await;
        }
        let max = self.ctx.log.config().ws_max_namespaces;
        if self.subs.len() >= max {
            let msg = format!("at most {max} namespaces per connection");
            return self
                .error(ErrorCode::TooManyNamespaces, msg, None, Some(ns))
                .await;
        }
        let state = match self.ctx.log.open_namespace(&ns).await {
            Ok(state) => state,
            Err(e) => {
                return self
                    .error(log_error_code(&e), e.to_string(), None, Some(ns))
                    .await
            }
        };
        // Subscribe to live events before reading `visible`, so nothing falls in between.
        let live = state.subscribe_live();
        let visible = state.visible();
        let earliest = state.earliest();
        let epoch_changed = epoch.as_ref().is_some_and(|e| *e != state.epoch);
        let (cursor, truncated) = match from {
            Position::Earliest => (earliest, None),
            Position::Latest => (visible, None),
            Position::Offset(n) if epoch_changed => (earliest, Some((n, "epoch"))),
            Position::Offset(n) if n > visible => {
                let msg = format!("offset {n} is beyond the end of the log (next is {visible})");
                return self
                    .error(ErrorCode::BadPosition, msg, None, Some(ns))
                    .await;
            }
            Position::Offset(n) if n < earliest => (earliest, Some((n, "retention"))),
            Position::Offset(n) => (n, None),
        };
        let mut frames = vec![self.encode(&ServerFrame::Opened {
            ns: ns.clone(),
            epoch: state.epoch.clone(),
            from: cursor,
            earliest,
            next: visible,
        })];
        if let Some((requested, why)) = truncated {
            frames.push(self.encode(&ServerFrame::Truncated {
                ns: ns.clone(),
                requested,
                from: cursor,
                reason: why.into(),
            }));
        }
        if !self.write(frames).await {
            return false;
        }
        let credit = Arc::new(Credit::new(credit));
        let sub = Subscription::new(
            self.ctx.log.clone(),
            state,
            live,
            cursor,
            Arc::clone(&credit),
            self.encoding,
        );
        let stream: Pin<Box<dyn Stream<Item = Vec<Yield>> + Send>> = Box::pin(sub.into_stream());
        let (abort, registration) = AbortHandle::new_pair();
        self.streams.push(Abortable::new(stream, registration));
        self.subs.insert(ns, OpenSub { credit, abort });
        true
    }

    async fn publish(
        &mut self,
        id: u64,
        ns: String,
        event: String,
        data: Payload,
        key: Option<String>,
        idempotency_key: Option<String>,
    ) -> bool {
        // Waiting for a slot stops reading this connection: backpressure on a publisher
        // that outruns the disk.
        let max = self.ctx.log.config().ws_max_inflight_publishes;
        let slots = self
            .publish_slots
            .get_or_insert_with(|| Arc::new(Semaphore::new(max)));
        let Ok(slot) = Arc::clone(slots).acquire_owned().await else {
            return false;
        };
        let events = vec![NewEvent { event, key, data }];
        let pending = match self.ctx.log.submit_append(&ns, events, idempotency_key) {
            Ok(pending) => pending,
            Err(e) => {
                return self
                    .error(log_error_code(&e), e.to_string(), Some(id), Some(ns))
                    .await
            }
        };
        let answers = self.answers.clone();
        tokio::spawn(async move {
            let answer = match pending.wait().await {
                Ok(appended) => ServerFrame::Published {
                    id,
                    ns,
                    offset: appended.first(),
                },
                Err(e) => ServerFrame::error(log_error_code(&e), e.to_string(), Some(id), Some(ns)),
            };
            let _ = answers.send(Box::new(answer)).await;
            drop(slot);
        });
        true
    }
}

/// Completes at `deadline`, or never when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
