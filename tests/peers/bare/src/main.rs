//! The bare broadcast: the least a WebSocket fan-out server can do, the ceiling rewind is
//! measured against (`rewind bench fanout --target`).
//!
//! Protocol: a WebSocket connection to `/sub` is a subscriber; it is registered before
//! the server sends it one text frame `ready`. Every text frame a connection to `/pub`
//! sends is sent, verbatim, to every subscriber, in order. Nothing is dropped: each
//! subscriber has a queue of `QUEUE` frames, and a publisher waits while a subscriber's
//! queue is full (so a flooding publisher is held back by TCP, as rewind's is by its
//! window). Usage: `peer-bare-broadcast [ADDR]` (default `127.0.0.1:0`); the first line on
//! stdout is `listening on ws://ADDR`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Frames a subscriber may have queued before a publisher waits for it.
const QUEUE: usize = 1024;

/// The subscribers, replaced whole when one joins or leaves, so a publisher reads a
/// snapshot without holding the lock.
type Subscribers = Arc<Mutex<Arc<Vec<mpsc::Sender<Message>>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on ws://{}", listener.local_addr()?)?;
        out.flush()?;
    }
    let subscribers: Subscribers = Arc::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, Arc::clone(&subscribers)));
    }
}

async fn connection(tcp: TcpStream, subscribers: Subscribers) {
    let mut path = String::new();
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let record_path = |req: &Request, res: Response| {
        path = req.uri().path().to_owned();
        Ok(res)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, record_path, Some(config)).await
    else {
        return;
    };
    match path.as_str() {
        "/sub" => subscriber(ws, subscribers).await,
        "/pub" => publisher(ws, subscribers).await,
        _ => {
            let mut ws = ws;
            let _ = ws.close(None).await;
        }
    }
}

async fn subscriber(ws: tokio_tungstenite::WebSocketStream<TcpStream>, subscribers: Subscribers) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel(QUEUE);
    {
        let mut all = subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::clone(&all);
        next.push(tx);
        *all = Arc::new(next);
    }
    if sink.send(Message::text("ready")).await.is_err() {
        return;
    }
    // Reads (and drops) what the subscriber sends, so a close is seen.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    'out: while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            break;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(m).await.is_err() {
                break 'out;
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    reader.abort();
}

async fn publisher(ws: tokio_tungstenite::WebSocketStream<TcpStream>, subscribers: Subscribers) {
    let (_sink, mut stream) = ws.split();
    while let Some(Ok(m)) = stream.next().await {
        if !m.is_text() {
            continue;
        }
        let now = Arc::clone(&subscribers.lock().unwrap_or_else(|e| e.into_inner()));
        let mut gone = false;
        for tx in now.iter() {
            match tx.try_send(m.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => gone |= tx.send(m).await.is_err(),
                Err(mpsc::error::TrySendError::Closed(_)) => gone = true,
            }
        }
        if gone {
            let mut all = subscribers.lock().unwrap_or_else(|e| e.into_inner());
            let next: Vec<_> = all.iter().filter(|t| !t.is_closed()).cloned().collect();
            *all = Arc::new(next);
        }
    }
}
