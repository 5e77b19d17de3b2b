//! One WebSocket connection: read frames, multiplex subscriptions, publish, keep the link
//! alive, and write everything out through one queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rewind_protocol::frame::{decode_json, decode_msgpack, ClientFrame, FrameError, ServerFrame};
use rewind_protocol::{ErrorCode, NewEvent, Payload, Position};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::subscription::{Credit, Subscription};
use super::WsContext;
use crate::fanout::{Encoding, EventFrames};
use crate::log::LogError;

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Something for the writer to put on the wire. Kept to two words: the queue allocates
/// its slots up front, for every connection, idle or not.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// A control or answer frame.
    Frame(Box<Message>),
    /// Events of one subscription, in order (each one frame, or a header and its payload
    /// back to back). Several at once, so a burst costs one queue hand-off and one write.
    Events(Box<[EventFrames]>),
    /// Write out what is buffered (e.g. the pong tungstenite queued for a ping).
    Flush,
    /// Send a close frame and stop.
    Close(Box<CloseFrame>),
}

impl Outgoing {
    /// A server frame in the connection's encoding.
    pub(super) fn frame(f: &ServerFrame, encoding: Encoding) -> Outgoing {
        Outgoing::Frame(Box::new(match encoding {
            Encoding::Json => Message::Text(f.to_json().into()),
            Encoding::Msgpack => Message::Binary(f.to_msgpack().into()),
        }))
    }
}

async fn feed_events(
    sink: &mut SplitSink<Socket, Message>,
    events: Box<[EventFrames]>,
) -> Result<(), WsError> {
    for ev in events.into_vec() {
        match ev {
            EventFrames::One(m) => sink.feed(m).await?,
            EventFrames::WithPayload(header, payload) => {
                sink.feed(header).await?;
                sink.feed(payload).await?;
            }
        }
    }
    Ok(())
}

/// Writes queued frames, flushing whenever the queue runs dry.
async fn write_loop(mut sink: SplitSink<Socket, Message>, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(o) = next.take() {
            let fed = match o {
                Outgoing::Frame(m) => sink.feed(*m).await,
                Outgoing::Events(events) => feed_events(&mut sink, events).await,
                Outgoing::Flush => Ok(()),
                Outgoing::Close(frame) => {
                    let _ = sink.send(Message::Close(Some(*frame))).await;
                    return;
                }
            };
            if fed.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

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
    task: JoinHandle<()>,
}

struct Session {
    ctx: WsContext,
    encoding: Encoding,
    out: mpsc::Sender<Outgoing>,
    subs: HashMap<String, OpenSub>,
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
        LogError::NotFound(_) => ErrorCode::BadNamespace,
        LogError::Overloaded | LogError::ShuttingDown => ErrorCode::Overloaded,
        LogError::BadPosition(_) => ErrorCode::BadPosition,
        LogError::DiskFull | LogError::Storage(_) => ErrorCode::Internal,
    }
}

/// Serves one upgraded connection until it ends.
pub(super) async fn run(ws: Socket, encoding: Encoding, ctx: WsContext) {
    let cfg = ctx.log.config();
    let (sink, stream) = ws.split();
    let (out, out_rx) = mpsc::channel(cfg.ws_send_queue);
    let session = Session {
        publish_slots: None,
        ctx: ctx.clone(),
        encoding,
        out,
        subs: HashMap::new(),
        pending_binary: None,
    };
    tokio::join!(session.read_loop(stream), write_loop(sink, out_rx));
}

impl Session {
    async fn read_loop(mut self, mut stream: SplitStream<Socket>) {
        let cfg = self.ctx.log.config();
        let mut ping = tokio::time::interval(Duration::from_secs(cfg.ws_ping_interval_secs));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let ping_timeout = Duration::from_secs(cfg.ws_ping_timeout_secs);
        let mut deadline: Option<Instant> = None;
        let mut shutdown = self.ctx.log.shutdown_signal();
        loop {
            let go_on = tokio::select! {
                msg = stream.next() => match msg {
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
            sub.task.abort();
        }
    }

    async fn socket_error(&self, e: WsError) {
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

    async fn close(&self, code: CloseCode, why: &str) {
        let frame = CloseFrame {
            code,
            reason: reason(why).into(),
        };
        let _ = self.out.send(Outgoing::Close(Box::new(frame))).await;
    }

    async fn send_frame(&self, f: ServerFrame) -> bool {
        self.out
            .send(Outgoing::frame(&f, self.encoding))
            .await
            .is_ok()
    }

    async fn error(
        &self,
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
            (Message::Ping(_), _) => self.out.send(Outgoing::Flush).await.is_ok(),
            (Message::Pong(_), _) | (Message::Frame(_), _) => true,
            (Message::Close(_), _) => false,
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
                    sub.task.abort();
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
        if let Some(sub) = self.subs.get(&ns) {
            if !sub.task.is_finished() {
                return self
                    .error(
                        ErrorCode::AlreadyOpen,
                        "namespace is already open",
                        None,
                        Some(ns),
                    )
                    .await;
            }
            self.subs.remove(&ns);
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
        let opened = ServerFrame::Opened {
            ns: ns.clone(),
            epoch: state.epoch.clone(),
            from: cursor,
            earliest,
            next: visible,
        };
        if !self.send_frame(opened).await {
            return false;
        }
        if let Some((requested, why)) = truncated {
            let f = ServerFrame::Truncated {
                ns: ns.clone(),
                requested,
                from: cursor,
                reason: why.into(),
            };
            if !self.send_frame(f).await {
                return false;
            }
        }
        let credit = Arc::new(Credit::new(credit));
        let sub = Subscription {
            log: self.ctx.log.clone(),
            state,
            live,
            cursor,
            credit: Arc::clone(&credit),
            out: self.out.clone(),
            encoding: self.encoding,
        };
        let task = tokio::spawn(sub.run());
        self.subs.insert(ns, OpenSub { credit, task });
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
        let out = self.out.clone();
        let encoding = self.encoding;
        tokio::spawn(async move {
            let answer = match pending.wait().await {
                Ok(appended) => {
                    let (rewind_first, _) = match appended {
                        crate::storage::Appended::New { first, last }
                        | crate::storage::Appended::Duplicate { first, last } => (first, last),
                    };
                    ServerFrame::Published {
                        id,
                        ns,
                        offset: rewind_first,
                    }
                }
                Err(e) => ServerFrame::error(log_error_code(&e), e.to_string(), Some(id), Some(ns)),
            };
            let _ = out.send(Outgoing::frame(&answer, encoding)).await;
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
