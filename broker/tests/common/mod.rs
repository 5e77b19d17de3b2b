//! Helpers of the engine tests: a log over a temporary data dir, events, and the broker
//! served in-process on a 127.0.0.1:0 listener with a WebSocket client for it.

#![allow(dead_code)] // Each test file uses its part.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rewind_broker::config::Config;
use rewind_broker::Log;
use rewind_protocol::{NewEvent, Payload};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Long enough for anything that should happen; what does not fails the test instead of
/// hanging it.
pub const BOUND: Duration = Duration::from_secs(10);

/// How long a connection that should send nothing more is watched for a wrong frame.
pub const QUIET: Duration = Duration::from_millis(200);

/// The default configuration over `dir`.
pub fn config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    }
}

/// Opens a log with `config` (blocks on disk: call it from the test's own thread).
pub fn open(config: Config) -> Log {
    Log::open(Arc::new(config)).expect("open the log")
}

/// `n` events named `name` whose data are `from`, `from + 1`, ….
pub fn events(name: &str, from: u64, n: u64) -> Vec<NewEvent> {
    (from..from + n)
        .map(|i| NewEvent {
            event: name.to_owned(),
            key: None,
            data: Payload::Json(i.to_string()),
        })
        .collect()
}

/// The broker served by `server::run` in this process.
pub struct Served {
    pub addr: SocketAddr,
    pub log: Log,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Served {
    /// Serves `log` on an ephemeral loopback port.
    pub async fn start(log: Log) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(rewind_broker::server::run(listener, log.clone(), async {
            let _ = stopped.await;
        }));
        Served {
            addr,
            log,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the server down and waits for it (bounded). Drop the WebSocket clients
    /// first: a session waits for its client's close (docs/protocol.md, "Close codes").
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(BOUND, task)
                .await
                .expect("the server stopped")
                .expect("server task");
        }
        tokio::time::timeout(BOUND, self.log.shutdown())
            .await
            .expect("the log shut down");
    }
}

/// A WebSocket client speaking `rewind.v1.json`.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects to `/v1/ws` (JSON, the default encoding).
    pub async fn connect(addr: SocketAddr) -> Ws {
        let (stream, _) = tokio::time::timeout(
            BOUND,
            tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")),
        )
        .await
        .expect("connected in time")
        .expect("connect");
        Ws { stream }
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next frame (bounded), as JSON; WebSocket pings and pongs are skipped.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(BOUND, self.stream.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .expect("a frame");
            match msg {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("a JSON frame")
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Every frame that arrives before the `pong` to a `ping` and within `QUIET` after
    /// it: what a test that expects nothing more gets. The broker answers the `ping` as
    /// soon as it reads it, which can be before a subscription's read of the log
    /// completes, so the `pong` alone does not prove nothing else is coming; the window
    /// after it can only let a wrong send slip through on a very slow machine, never fail
    /// a right one.
    pub async fn quiet(&mut self) -> Vec<Value> {
        let mut got = self.until_pong().await;
        while let Ok(frame) = tokio::time::timeout(QUIET, self.recv()).await {
            got.push(frame);
        }
        got
    }

    /// Sends `ping` and returns every frame that arrived before its `pong`. The broker
    /// puts the `pong` in the connection's outbox when it reads the `ping`, behind
    /// whatever was ready to send by then.
    pub async fn until_pong(&mut self) -> Vec<Value> {
        self.send(json!({"t": "ping"})).await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["t"] == "pong" {
                return before;
            }
            before.push(frame);
        }
    }
}

/// The offset of an `event` frame of `ns`, or a panic naming what came instead.
pub fn event_offset(frame: &Value, ns: &str) -> u64 {
    assert_eq!(frame["t"], "event", "expected an event, got {frame}");
    assert_eq!(frame["ns"], ns, "{frame}");
    frame["offset"].as_u64().expect("an offset")
}
