//! The WebSocket publisher of the benchmarks: one connection, single-event `publish`
//! frames, up to a window of them unanswered (the broker's `ws_max_inflight_publishes`,
//! 64 by default), answers read as they come and checked to follow send order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{err, BenchError};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Connects to `/v1/ws` with a `read_buffer`-byte read buffer (see `fanout` for why
/// the load generator's is small).
pub(super) async fn connect(addr: SocketAddr, read_buffer: usize) -> Result<Ws, BenchError> {
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/v1/ws"),
        Some(config),
        // TCP_NODELAY, as a latency-minded client sets it: with Nagle's algorithm a
        // connection that only sends (a peer's publisher gets nothing back) holds each
        // small frame until the previous one is acknowledged, which a delayed ACK defers.
        true,
    )
    .await
    .map_err(err)?;
    Ok(ws)
}

/// What a publisher did: events answered `published`, and each one's time from send to
/// answer in microseconds.
pub(super) struct Published {
    pub events: u64,
    pub latencies_us: Vec<u32>,
}

/// A pipelining publisher on one connection.
pub(super) struct WsPublisher {
    sink: SplitSink<Ws, Message>,
    /// Free places in the window; the answer reader gives one back per answer.
    window: Arc<Semaphore>,
    /// Send times, in send order, for the answer reader.
    sent: mpsc::UnboundedSender<Instant>,
    reader: tokio::task::JoinHandle<Result<Published, BenchError>>,
    next_id: u64,
    ns: String,
}

impl WsPublisher {
    /// Connects; at most `window` publishes are ever unanswered.
    pub(super) async fn connect(
        addr: SocketAddr,
        ns: &str,
        window: usize,
    ) -> Result<WsPublisher, BenchError> {
        let (sink, stream) = connect(addr, 16 << 10).await?.split();
        let window = Arc::new(Semaphore::new(window.max(1)));
        let (sent, times) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_answers(stream, times, Arc::clone(&window)));
        Ok(WsPublisher {
            sink,
            window,
            sent,
            reader,
            next_id: 0,
            ns: ns.to_owned(),
        })
    }

    /// Queues one publish of `data` (a JSON value), waiting (after flushing what is
    /// queued) while the window is full.
    pub(super) async fn publish(&mut self, data: &str) -> Result<(), BenchError> {
        let ns = std::mem::take(&mut self.ns);
        let sent = self.publish_to(&ns, data).await;
        self.ns = ns;
        sent
    }

    /// Queues one publish of `data` to namespace `ns`, as [`publish`](Self::publish).
    pub(super) async fn publish_to(&mut self, ns: &str, data: &str) -> Result<(), BenchError> {
        let permit = match self.window.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.sink.flush().await.map_err(err)?;
                self.window.acquire().await.map_err(err)?
            }
        };
        permit.forget();
        let frame = format!(
            r#"{{"t":"publish","id":{},"ns":"{ns}","event":"bench","data":{data}}}"#,
            self.next_id
        );
        self.next_id += 1;
        let _ = self.sent.send(Instant::now());
        self.sink
            .feed(Message::Text(frame.into()))
            .await
            .map_err(err)
    }

    /// Sends what is queued.
    pub(super) async fn flush(&mut self) -> Result<(), BenchError> {
        self.sink.flush().await.map_err(err)
    }

    /// Publishes `data` as fast as the window allows until `until`.
    pub(super) async fn flood_until(
        &mut self,
        data: &str,
        until: Instant,
    ) -> Result<(), BenchError> {
        while Instant::now() < until {
            for _ in 0..64 {
                self.publish(data).await?;
            }
        }
        self.flush().await
    }

    /// Waits for every answer, then closes; returns what was answered.
    pub(super) async fn finish(mut self) -> Result<Published, BenchError> {
        self.flush().await?;
        let sent = self.next_id;
        drop(self.sent);
        let done = tokio::time::timeout(Duration::from_secs(60), self.reader)
            .await
            .map_err(|_| err("answers never all came"))?
            .map_err(err)??;
        let _ = self.sink.close().await;
        if done.events != sent {
            return Err(err(format!("{sent} publishes, {} answers", done.events)));
        }
        Ok(done)
    }
}

/// Reads answers until every publish sent has been answered (the send-time channel is
/// closed and drained); each `published` must carry the next id.
async fn read_answers(
    mut stream: SplitStream<Ws>,
    mut times: mpsc::UnboundedReceiver<Instant>,
    window: Arc<Semaphore>,
) -> Result<Published, BenchError> {
    let mut out = Published {
        events: 0,
        latencies_us: Vec::new(),
    };
    while let Some(sent) = times.recv().await {
        let answer = loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"t":"published""#) => break t,
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"t":"error""#) => {
                    return Err(err(format!("publish refused: {t}")))
                }
                Some(Ok(_)) => {}
                other => return Err(err(format!("connection ended: {other:?}"))),
            }
        };
        let want = format!(r#"{{"t":"published","id":{},"#, out.events);
        if !answer.starts_with(&want) {
            return Err(err(format!("answer out of order: {answer}")));
        }
        out.latencies_us
            .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        out.events += 1;
        window.add_permits(1);
    }
    Ok(out)
}
