//! [`Client`]: one WebSocket to the broker, multiplexing every subscription and publish,
//! kept alive across disconnects.
//!
//! A driver task owns the socket. After any disconnect (error, close, or silence past the
//! liveness timeout) it reconnects with exponential backoff and jitter, re-opens every
//! subscription at the offset after the last one it delivered (with the epoch it saw),
//! drops any offset it already delivered, and sends again every publish not yet answered,
//! with the same idempotency key, so each is appended once. A publish the broker answered
//! with an `error` is settled: it resolves with that error and is never sent again.
//!
//! `ws://` and `http://` URLs connect in the clear; `wss://` and `https://` through rustls
//! (see [`crate::tls`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rewind_protocol::frame::{
    decode_server_msgpack, encode_client_msgpack, ClientFrame, EventFrame, ServerFrame,
    ServerMessage,
};
use rewind_protocol::{ErrorCode, Payload, Position};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::backoff::{jitter, Backoff};
use crate::record::{Data, Record};
use crate::subscription::{Grants, Item, Subscription};
use crate::tls::Certificate;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a [`Client`] behaves. Each default is stated. Its `Debug` shows whether a token is
/// set, never the token.
#[derive(Clone)]
pub struct ClientOptions {
    /// First wait before reconnecting; doubles per failed attempt. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest wait before reconnecting. Default 10 s.
    pub backoff_max: Duration,
    /// Silence after which the link counts as dead: the broker's ping interval plus its
    /// timeout. Default 45 s.
    pub liveness: Duration,
    /// Items buffered per subscription; the broker is granted credit only for free room,
    /// so this bounds the client's memory per subscription. Default 256.
    pub buffer: usize,
    /// Root certificates trusted for `wss://`/`https://` besides the bundled Mozilla
    /// roots (a private CA, a proxy's self-signed certificate). Default none.
    pub root_certificates: Vec<Certificate>,
    /// A token for a broker that checks them (a JWT, `docs/security.md`, "Tokens"), sent
    /// as `Authorization: Bearer` on every connection. It is not refreshed: a connection
    /// is closed (4001) when it expires, and reconnects are refused after. Default none.
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("liveness", &self.liveness)
            .field("buffer", &self.buffer)
            .field("root_certificates", &self.root_certificates)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            liveness: Duration::from_secs(45),
            buffer: 256,
            root_certificates: Vec::new(),
            token: None,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `ws://`, `wss://`, `http://` or `https://` followed by `host:port`.
    #[error("bad broker URL {0:?}: expected ws://, wss://, http:// or https:// and host:port")]
    BadUrl(String),
    /// A root certificate in the options was refused.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The first connection failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The publish was refused and not appended: by the broker (its `error` frame, with
    /// the broker's code: `bad_namespace`, `bad_frame`, `payload_too_large`,
    /// `storage_full`, ...), or before sending, `bad_frame` with the broker's message for
    /// JSON data its value rules refuse (a `Value` nested deeper than 100 levels). Never
    /// retried.
    #[error("rejected: {code}: {message}")]
    Rejected {
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// The namespace is already subscribed on this client.
    #[error("already subscribed to {0}")]
    AlreadySubscribed(String),
    /// The client's driver has stopped.
    #[error("the client is closed")]
    Closed,
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The position.
    pub from: Position,
    /// The epoch `from` belongs to, when resuming.
    pub epoch: Option<String>,
}

impl From<Position> for Start {
    fn from(from: Position) -> Start {
        Start { from, epoch: None }
    }
}

impl From<crate::Resume> for Start {
    fn from(r: crate::Resume) -> Start {
        Start {
            from: Position::Offset(r.next),
            epoch: Some(r.epoch),
        }
    }
}

enum Command {
    Subscribe {
        ns: String,
        start: Start,
        tx: mpsc::Sender<Item>,
        grants: Arc<Grants>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// The subscription whose credit bookkeeping is this `Grants` was dropped (the name
    /// alone could be a later subscription to the same namespace).
    Unsubscribe(String, Arc<Grants>),
    Publish {
        id: u64,
        /// The encoded `publish` frame, sent again as it is after a reconnect.
        frame: bytes::Bytes,
        reply: oneshot::Sender<Result<u64, ClientError>>,
    },
}

/// A connection to a broker. Cheap to clone; the connection closes when every clone and
/// every subscription is dropped.
///
/// ```no_run
/// use futures::StreamExt;
/// use rewind_client::{json, Client, ClientOptions, Item, Position};
///
/// # async fn demo() -> Result<(), rewind_client::ClientError> {
/// let client = Client::connect("ws://127.0.0.1:7070", ClientOptions::default()).await?;
/// let mut sub = client.subscribe("logs.api", Position::Earliest).await?;
/// client.publish("logs.api", "started", json!({})).await?;
/// while let Some(item) = sub.next().await {
///     if let Item::Event(ev) = item {
///         println!("{} {}", ev.offset, ev.event);
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    cmd: mpsc::UnboundedSender<Command>,
    options: ClientOptions,
    wake: Arc<Notify>,
    /// Publish ids, shared by the clones.
    publish_ids: Arc<std::sync::atomic::AtomicU64>,
    /// Idempotency keys are this prefix and the publish id.
    key_prefix: Arc<str>,
}

/// The WebSocket URL of the broker at `url`.
fn ws_url(url: &str) -> Result<String, ClientError> {
    let (scheme, rest) = [
        ("ws", "ws://"),
        ("ws", "http://"),
        ("wss", "wss://"),
        ("wss", "https://"),
    ]
    .iter()
    .find_map(|(scheme, prefix)| url.strip_prefix(prefix).map(|rest| (scheme, rest)))
    .ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(ClientError::BadUrl(url.to_owned()));
    }
    Ok(format!("{scheme}://{authority}/v1/ws"))
}

/// The socket's read buffer. tungstenite zero-fills the whole buffer on every read
/// (tungstenite-rs#547), so its default of 128 KiB costs more CPU per small frame than
/// handling the frame; larger frames still arrive, in more reads.
const READ_BUFFER_BYTES: usize = 16 << 10;

async fn dial(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    token: Option<&str>,
) -> Result<Socket, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        req.headers_mut().insert("authorization", value);
    }
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "rewind.v1.msgpack"
            .parse()
            .map_err(|_| "header".to_owned())?,
    );
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let connector = Connector::Rustls(Arc::clone(tls));
    let (socket, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, Some(config), false, Some(connector))
            .await
            .map_err(|e| e.to_string())?;
    Ok(socket)
}

impl Client {
    /// Connects to the broker at `url`; fails if the first connection does. Later
    /// disconnects are repaired by reconnecting, forever.
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let url = ws_url(url)?;
        let tls = crate::tls::client_config(&options.root_certificates)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let socket = dial(&url, &tls, options.token.as_deref())
            .await
            .map_err(ClientError::Connect)?;
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let driver = Driver {
            url,
            tls,
            options: options.clone(),
            cmd_rx,
            wake: Arc::clone(&wake),
            subs: HashMap::new(),
            ending: Vec::new(),
            closing: HashSet::new(),
            pending: BTreeMap::new(),
        };
        tokio::spawn(driver.run(socket));
        Ok(Client {
            cmd,
            options,
            wake,
            publish_ids: Default::default(),
            key_prefix: key_prefix().into(),
        })
    }

    /// Subscribes to `ns` from `start` (a [`Position`], or a [`crate::Resume`] from an
    /// offset store). Items arrive in order, each offset once, across reconnects.
    pub async fn subscribe(
        &self,
        ns: &str,
        start: impl Into<Start>,
    ) -> Result<Subscription, ClientError> {
        let buffer = self.options.buffer.max(1);
        let (tx, rx) = mpsc::channel(buffer);
        let grants = Arc::new(Grants {
            consumed: Default::default(),
            wake: Arc::clone(&self.wake),
            batch: (buffer as u64 / 4).max(1),
        });
        let (reply, answer) = oneshot::channel();
        self.cmd
            .send(Command::Subscribe {
                ns: ns.to_owned(),
                start: start.into(),
                tx,
                grants: Arc::clone(&grants),
                reply,
            })
            .map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)??;
        let cmd = self.cmd.clone();
        let name = ns.to_owned();
        let own = Arc::clone(&grants);
        Ok(Subscription {
            ns: ns.to_owned(),
            rx,
            grants,
            epoch: None,
            next: None,
            unsubscribe: Some(Box::new(move || {
                let _ = cmd.send(Command::Unsubscribe(name, own));
            })),
        })
    }

    /// Publishes one event without a key; returns its offset once durable. `data` is a
    /// [`serde_json::Value`] (`json!(...)`), bytes (`Vec<u8>`), or a [`Data`].
    /// See [`Client::publish_record`] for what is retried and what is not.
    pub async fn publish(
        &self,
        ns: &str,
        event: &str,
        data: impl Into<Data>,
    ) -> Result<u64, ClientError> {
        self.publish_record(ns, Record::new(event, data)).await
    }

    /// Publishes one event, with its key if the record has one; returns its offset once
    /// durable. Answers are matched by id, so many publishes may be awaited at once.
    ///
    /// Only an unknown outcome is retried: a publish still unanswered when the link drops
    /// is sent again after reconnecting, with the same idempotency key, so it is appended
    /// once. A publish the broker refuses resolves at once with
    /// [`ClientError::Rejected`] and is never sent again; later publishes are unaffected.
    pub async fn publish_record(&self, ns: &str, record: Record) -> Result<u64, ClientError> {
        let id = self.publish_ids.fetch_add(1, Ordering::Relaxed);
        let frame = encode_publish(id, &self.key_prefix, ns, record)?;
        let (reply, answer) = oneshot::channel();
        self.cmd
            .send(Command::Publish { id, frame, reply })
            .map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)?
    }
}

/// The `publish` frame for `record`, or the broker's own refusal without sending it: a
/// JSON payload the value rules of `rewind_protocol::value` refuse (only a `Value`
/// nested deeper than 100 levels can be; [`Data::JsonText`] was checked when made) gets
/// `bad_frame` with the message the broker would give. Names and limits are left to the
/// broker, which answers with an `error` for the publish's id. A publish that does not
/// encode at all is refused too: the broker would close the connection on a frame that
/// is not one, and re-sending it on the next connection would never end.
fn encode_publish(
    id: u64,
    key_prefix: &str,
    ns: &str,
    record: Record,
) -> Result<bytes::Bytes, ClientError> {
    let refuse = |message: String| ClientError::Rejected {
        code: rewind_protocol::ErrorCode::BadFrame.as_str().to_owned(),
        message,
    };
    let data = record.data.to_payload();
    if let Payload::Json(text) = &data {
        rewind_protocol::value::validate_json(text).map_err(|e| refuse(e.to_string()))?;
    }
    let frame = ClientFrame::Publish {
        id,
        ns: ns.to_owned(),
        event: record.event,
        data: Some(data),
        key: record.key,
        idempotency_key: Some(format!("{key_prefix}-{id}")),
    };
    let bytes = encode_client_msgpack(&frame);
    if bytes.is_empty() {
        return Err(refuse(
            "the publish cannot be encoded as MessagePack".into(),
        ));
    }
    Ok(bytes.into())
}

impl Client {}

fn key_prefix() -> String {
    let mut bytes = [0u8; 8];
    // Without randomness, fall back to the clock: keys only need to differ per client.
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_be_bytes();
    }
    format!("{:016x}", u64::from_be_bytes(bytes))
}

struct SubState {
    start: Start,
    /// The next offset to deliver, once known.
    next: Option<u64>,
    /// The epoch last seen.
    epoch: Option<String>,
    tx: mpsc::Sender<Item>,
    grants: Arc<Grants>,
    /// Items that found the channel full. Events never do (the broker's credit is the
    /// channel's room), but `Epoch`, `Truncated` and `Ended` come without credit; they
    /// wait here, in order, so the driver never blocks on one subscription.
    held: std::collections::VecDeque<Item>,
}

struct PendingPublish {
    frame: bytes::Bytes,
    reply: oneshot::Sender<Result<u64, ClientError>>,
}

struct Driver {
    url: String,
    tls: Arc<rustls::ClientConfig>,
    options: ClientOptions,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    wake: Arc<Notify>,
    subs: HashMap<String, SubState>,
    /// Subscriptions the broker ended whose last items (`Ended` among them) wait for room
    /// in their channel; never opened again.
    ending: Vec<SubState>,
    /// Namespaces this connection sent `close` for and whose answer has not come: what
    /// arrives for them until it does belongs to the subscription that was dropped.
    closing: HashSet<String>,
    /// Publishes not yet answered, by id (sent again after a reconnect).
    pending: BTreeMap<u64, PendingPublish>,
}

/// Why a connection ended.
enum Ended {
    /// The link broke; reconnect.
    Link,
    /// Every handle is gone; stop.
    Done,
}

impl Driver {
    async fn run(mut self, first: Socket) {
        let mut socket = Some(first);
        let mut backoff = Backoff::new(self.options.backoff_min, self.options.backoff_max);
        loop {
            let ws = match socket.take() {
                Some(ws) => ws,
                None => match dial(&self.url, &self.tls, self.options.token.as_deref()).await {
                    Ok(ws) => {
                        backoff.reset();
                        ws
                    }
                    Err(_) => {
                        tokio::time::sleep(jitter(backoff.next_wait())).await;
                        if self.cmd_rx.is_closed() {
                            return;
                        }
                        continue;
                    }
                },
            };
            match self.serve(ws).await {
                Ended::Done => return,
                Ended::Link => tokio::time::sleep(jitter(self.options.backoff_min)).await,
            }
        }
    }

    fn open_frame(ns: &str, sub: &SubState) -> ClientFrame {
        sub.grants.consumed.store(0, Ordering::Release);
        let room = sub.tx.capacity().saturating_sub(sub.held.len());
        let (from, epoch) = match sub.next {
            Some(n) => (Position::Offset(n), sub.epoch.clone()),
            None => (sub.start.from, sub.start.epoch.clone()),
        };
        ClientFrame::Open {
            ns: ns.to_owned(),
            from,
            epoch,
            credit: room as u64,
        }
    }

    async fn send(ws: &mut Socket, frame: &ClientFrame) -> bool {
        ws.send(Message::Binary(encode_client_msgpack(frame).into()))
            .await
            .is_ok()
    }

    /// Serves one connection until it breaks or every handle is gone.
    async fn serve(&mut self, mut ws: Socket) -> Ended {
        self.closing.clear();
        let opens: Vec<ClientFrame> = self
            .subs
            .iter()
            .map(|(ns, s)| Self::open_frame(ns, s))
            .collect();
        for f in &opens {
            if !Self::send(&mut ws, f).await {
                return Ended::Link;
            }
        }
        // Publishes still unanswered: the outcome is unknown, so they go again as they
        // were, idempotency key included.
        let unanswered: Vec<bytes::Bytes> =
            self.pending.values().map(|p| p.frame.clone()).collect();
        for frame in unanswered {
            if ws.send(Message::Binary(frame)).await.is_err() {
                return Ended::Link;
            }
        }
        loop {
            tokio::select! {
                msg = tokio::time::timeout(self.options.liveness, ws.next()) => match msg {
                    Ok(Some(Ok(m))) => {
                        if !self.on_message(&mut ws, m).await {
                            return Ended::Link;
                        }
                    }
                    // Silence past the liveness timeout, an error, or the end: reconnect.
                    _ => return Ended::Link,
                },
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => {
                        if !self.on_command(&mut ws, cmd).await {
                            return Ended::Link;
                        }
                    }
                    // Every handle is gone (each subscription holds one, so they are gone too).
                    None => {
                        let _ = ws.close(None).await;
                        return Ended::Done;
                    }
                },
                () = self.wake.notified() => {
                    let mut grants = Vec::new();
                    // A subscription the application dropped stays until its `Unsubscribe`
                    // (sent by the drop) closes it on the broker.
                    for (ns, sub) in &mut self.subs {
                        let open = Self::drain(sub);
                        // Credit in batches, not a frame per event.
                        if open && sub.grants.consumed.load(Ordering::Acquire) >= sub.grants.batch {
                            grants.push((ns.clone(), sub.grants.consumed.swap(0, Ordering::AcqRel)));
                        }
                    }
                    self.ending.retain_mut(|sub| Self::drain(sub) && !sub.held.is_empty());
                    for (ns, n) in grants {
                        if !Self::send(&mut ws, &ClientFrame::Credit { ns, n }).await {
                            return Ended::Link;
                        }
                    }
                }
            }
        }
    }

    async fn on_command(&mut self, ws: &mut Socket, cmd: Command) -> bool {
        match cmd {
            Command::Subscribe {
                ns,
                start,
                tx,
                grants,
                reply,
            } => {
                if self.subs.contains_key(&ns) {
                    let _ = reply.send(Err(ClientError::AlreadySubscribed(ns)));
                    return true;
                }
                let sub = SubState {
                    start,
                    next: None,
                    epoch: None,
                    tx,
                    grants,
                    held: Default::default(),
                };
                let open = Self::open_frame(&ns, &sub);
                self.subs.insert(ns, sub);
                let _ = reply.send(Ok(()));
                Self::send(ws, &open).await
            }
            Command::Unsubscribe(ns, grants) => {
                self.ending.retain(|sub| !Arc::ptr_eq(&sub.grants, &grants));
                if !self
                    .subs
                    .get(&ns)
                    .is_some_and(|sub| Arc::ptr_eq(&sub.grants, &grants))
                {
                    // Ended by the broker already, or a later subscription's name.
                    return true;
                }
                self.subs.remove(&ns);
                self.closing.insert(ns.clone());
                Self::send(ws, &ClientFrame::Close { ns }).await
            }
            Command::Publish { id, frame, reply } => {
                self.pending.insert(
                    id,
                    PendingPublish {
                        frame: frame.clone(),
                        reply,
                    },
                );
                ws.send(Message::Binary(frame)).await.is_ok()
            }
        }
    }

    /// Hands an item to the application, or holds it back when the channel is full.
    fn deliver(&mut self, ns: &str, item: Item) {
        let Some(sub) = self.subs.get_mut(ns) else {
            return;
        };
        sub.held.push_back(item);
        // False when the application dropped it: its `Unsubscribe` follows.
        let _ = Self::drain(sub);
    }

    /// The broker ended the subscription: `Ended` goes after what is already held, and
    /// the subscription is kept (in `ending`, never re-opened) until it is delivered.
    fn end(&mut self, ns: &str, reason: String) {
        let Some(mut sub) = self.subs.remove(ns) else {
            return;
        };
        sub.held.push_back(Item::Ended { reason });
        if Self::drain(&mut sub) && !sub.held.is_empty() {
            self.ending.push(sub);
        }
    }

    /// Moves held-back items into the channel while there is room; false once the
    /// application has dropped the subscription.
    fn drain(sub: &mut SubState) -> bool {
        while let Some(item) = sub.held.pop_front() {
            match sub.tx.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    sub.held.push_front(item);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    async fn on_message(&mut self, ws: &mut Socket, m: Message) -> bool {
        let bytes = match m {
            Message::Binary(b) => b,
            Message::Close(_) => return false,
            _ => return true,
        };
        let Ok(msg) = decode_server_msgpack(&bytes) else {
            return true;
        };
        if let Some(ns) = closing_answer(&msg, &self.closing) {
            // The close this connection sent is answered (`closed`, or `not_open` when the
            // broker had ended it first); anything before that was for the dropped one.
            if let Some(ns) = ns {
                self.closing.remove(&ns);
            }
            return true;
        }
        match msg {
            ServerMessage::Event(EventFrame { ns, event, .. }) => {
                let Some(sub) = self.subs.get_mut(&ns) else {
                    return true;
                };
                if sub.next.is_some_and(|n| event.offset < n) {
                    return true;
                }
                // Offsets within a subscription are contiguous except where the broker
                // said otherwise; anything else is reported, never skipped in silence.
                let gap = sub.next.filter(|n| event.offset > *n);
                sub.next = Some(event.offset + 1);
                if let Some(from) = gap {
                    let reason = "offsets missing from the subscription's stream".to_owned();
                    let to = event.offset;
                    self.deliver(&ns, Item::Gap { from, to, reason });
                }
                self.deliver(&ns, Item::Event(event));
            }
            ServerMessage::Frame(ServerFrame::Opened {
                ns, epoch, from, ..
            }) => {
                let Some(sub) = self.subs.get_mut(&ns) else {
                    return true;
                };
                if sub.next.is_none() {
                    sub.next = Some(from);
                }
                if sub.epoch.as_deref() != Some(epoch.as_str()) {
                    sub.epoch = Some(epoch.clone());
                    self.deliver(&ns, Item::Epoch(epoch));
                }
            }
            ServerMessage::Frame(ServerFrame::Truncated {
                ns,
                requested,
                from,
                reason,
            }) => {
                if let Some(sub) = self.subs.get_mut(&ns) {
                    sub.next = Some(from);
                }
                self.deliver(
                    &ns,
                    Item::Truncated {
                        requested,
                        from,
                        reason,
                    },
                );
            }
            ServerMessage::Frame(ServerFrame::Closed { ns, reason }) => {
                self.end(&ns, reason.unwrap_or_else(|| "closed".into()));
            }
            ServerMessage::Frame(ServerFrame::Published { id, offset, .. }) => {
                if let Some(p) = self.pending.remove(&id) {
                    let _ = p.reply.send(Ok(offset));
                }
            }
            ServerMessage::Frame(ServerFrame::Error {
                code,
                message,
                id,
                ns,
                offset,
            }) => match (id, ns, offset) {
                // An event the broker could not encode: reported, and delivery goes on.
                (None, Some(ns), Some(offset)) => {
                    let Some(sub) = self.subs.get_mut(&ns) else {
                        return true;
                    };
                    if sub.next.is_some_and(|n| offset < n) {
                        return true;
                    }
                    let from = sub.next.unwrap_or(offset);
                    let to = offset.saturating_add(1);
                    sub.next = Some(to);
                    let reason = format!("{code}: {message}");
                    self.deliver(&ns, Item::Gap { from, to, reason });
                }
                (Some(id), _, _) => {
                    if let Some(p) = self.pending.remove(&id) {
                        let _ = p.reply.send(Err(ClientError::Rejected { code, message }));
                    }
                }
                // Answers a `credit` that crossed the broker's `closed`: nothing to end.
                (None, Some(_), None) if code == ErrorCode::NotOpen.as_str() => {}
                (None, Some(ns), None) => self.end(&ns, format!("{code}: {message}")),
                (None, None, _) => {}
            },
            ServerMessage::Frame(ServerFrame::Ping) => {
                return Self::send(ws, &ClientFrame::Pong).await
            }
            // A fixed token cannot be refreshed: the broker closes at its expiry.
            ServerMessage::Frame(
                ServerFrame::Pong | ServerFrame::AuthExpiring { .. } | ServerFrame::AuthOk { .. },
            ) => {}
        }
        true
    }
}

/// For a message about a namespace in `closing`: `Some(Some(ns))` when it answers the
/// close, `Some(None)` when it is a leftover of the closed subscription, `None` otherwise.
fn closing_answer(msg: &ServerMessage, closing: &HashSet<String>) -> Option<Option<String>> {
    let (ns, answers) = match msg {
        ServerMessage::Event(e) => (&e.ns, false),
        ServerMessage::Frame(
            ServerFrame::Opened { ns, .. } | ServerFrame::Truncated { ns, .. },
        ) => (ns, false),
        ServerMessage::Frame(ServerFrame::Closed { ns, .. }) => (ns, true),
        ServerMessage::Frame(ServerFrame::Error {
            ns: Some(ns),
            id: None,
            code,
            ..
        }) => (ns, code == ErrorCode::NotOpen.as_str()),
        _ => return None,
    };
    if !closing.contains(ns) {
        return None;
    }
    Some(answers.then(|| ns.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let options = ClientOptions {
            token: Some("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl".into()),
            ..ClientOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("c2lnbmF0dXJl"), "{shown}");
        assert!(shown.contains("token: Some(\"<redacted>\")"), "{shown}");
        assert!(format!("{:?}", ClientOptions::default()).contains("token: None"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            ws_url("ws://127.0.0.1:7070").unwrap(),
            "ws://127.0.0.1:7070/v1/ws"
        );
        assert_eq!(ws_url("http://h:1/").unwrap(), "ws://h:1/v1/ws");
        assert_eq!(ws_url("wss://h:1").unwrap(), "wss://h:1/v1/ws");
        assert_eq!(ws_url("https://h:1/").unwrap(), "wss://h:1/v1/ws");
        for bad in ["ftp://h:1", "h:1", "ws://", "ws://h:1/x", "https://h:1/x"] {
            assert!(ws_url(bad).is_err(), "{bad}");
        }
    }

    fn nested(levels: usize) -> serde_json::Value {
        let mut v = serde_json::json!("leaf");
        for _ in 0..levels {
            v = serde_json::json!([v]);
        }
        v
    }

    /// What `publish_record` sends is a frame the broker decodes to what was given (JSON
    /// keys in their order); what the broker would refuse for its value, or what cannot
    /// be encoded, is refused with `bad_frame` and the broker's message before sending
    /// (the issue 8 §5 kind: such a publish went out as an empty frame and was re-sent
    /// forever).
    #[test]
    fn a_publish_is_sent_faithfully_or_refused_before_sending() {
        let max = rewind_protocol::value::MAX_DATA_DEPTH;
        let ordered = crate::Data::json_text(r#"{"z":1,"a":[{"y":2,"b":3}]}"#).unwrap();
        let cases = [
            (Record::new("bytes", vec![0u8, 255]).key("k"), true),
            (
                Record::new("e", serde_json::json!({"n": u64::MAX, "f": 0.5, "s": "é"})),
                true,
            ),
            (Record::new("ordered", ordered), true),
            (Record::new("deepest", nested(max)), true),
            (Record::new("too deep", nested(max + 1)), false),
            (Record::new("unencodable", nested(2 * max)), false),
        ];
        for (id, (record, sent)) in cases.into_iter().enumerate() {
            let id = id as u64;
            let name = record.event.clone();
            match (sent, encode_publish(id, "p", "ns", record.clone())) {
                (true, Ok(bytes)) => {
                    let decoded = rewind_protocol::frame::decode_msgpack(&bytes, usize::MAX)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    let ClientFrame::Publish {
                        data,
                        key,
                        event,
                        idempotency_key,
                        ..
                    } = decoded
                    else {
                        panic!("{decoded:?}");
                    };
                    assert_eq!(
                        (event, data, key),
                        (name, Some(record.data.to_payload()), record.key)
                    );
                    assert_eq!(idempotency_key, Some(format!("p-{id}")));
                }
                (false, Err(ClientError::Rejected { code, message })) => {
                    assert_eq!(code, "bad_frame", "{name}");
                    assert!(
                        message.ends_with("nests deeper than 100 levels of arrays and maps"),
                        "{name}: {message}"
                    );
                }
                (_, other) => panic!("{name}: {other:?}"),
            }
        }
    }
}
