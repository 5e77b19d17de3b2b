//! The bare broadcast: the least a WebSocket fan-out server can do, the ceiling rewind is
//! measured against (`rewind bench fanout --target`).
//!
//! Protocol: a WebSocket connection to `/sub` is a subscriber; it is registered before
//! the server sends it one text frame `ready`. Every text frame a connection to `/pub`
//! sends is sent, verbatim, to every subscriber, in order. Nothing is dropped.
//!
//! What makes it a fair ceiling, not a strawman (issue 14, part B):
//!
//! - The publisher takes every frame its socket already holds (up to [`BATCH`]) before it
//!   hands them on, as one shared batch: under a flood a subscriber is woken once per
//!   batch, not once per frame, and writes the batch with one flush (one `write`); paced,
//!   a batch is one frame and nothing waits for more.
//! - A frame is never copied per subscriber before tungstenite frames it: the batch is an
//!   `Arc<[Message]>` and each `Message::Text` shares its bytes (`Utf8Bytes`).
//! - Each subscriber has a queue of [`QUEUE_FRAMES`] frames (in shared batches); the
//!   publisher waits while one is full, so a flooding publisher is held back by TCP, as
//!   rewind's is by its window.
//!
//! Usage: `peer-bare-broadcast [ADDR]` (default `127.0.0.1:0`); the first line on stdout
//! is `listening on ws://ADDR`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Frames the publisher takes from its socket, at most, before it hands them on.
const BATCH: usize = 256;

/// Frames a subscriber may have queued before the publisher waits for it. Counted in
/// frames, not batches: paced, a batch is one frame, and a queue of a few batches held
/// the publisher back as soon as one subscriber was a millisecond late at 10,000
/// events/s; a queue of many batches let a flood queue a quarter of a million frames per
/// subscriber, and the broadcast slowed down under its own backlog.
const QUEUE_FRAMES: u32 = 4096;

/// Frames handed on together, shared by every subscriber.
type Batch = Arc<[Message]>;

/// One subscriber's queue: the batches, and the room left in it, in frames.
#[derive(Clone)]
struct Queue {
    batches: mpsc::UnboundedSender<Batch>,
    room: Arc<Semaphore>,
}

/// The subscribers, replaced whole when one joins or leaves, so a publisher reads a
/// snapshot without holding the lock.
type Subscribers = Arc<Mutex<Arc<Vec<Queue>>>>;

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
    // 4 KiB: a few dozen 100-byte frames per read for the publisher, and an idle
    // subscriber stays small (tungstenite zero-fills the buffer's spare room on each read,
    // so its default of 128 KiB costs more than it saves).
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
    let (tx, mut rx) = mpsc::unbounded_channel::<Batch>();
    let room = Arc::new(Semaphore::new(QUEUE_FRAMES as usize));
    {
        let mut all = subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::clone(&all);
        next.push(Queue {
            batches: tx,
            room: Arc::clone(&room),
        });
        *all = Arc::new(next);
    }
    if sink.send(Message::text("ready")).await.is_err() {
        return;
    }
    // Reads (and drops) what the subscriber sends, so a close is seen.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    // Every batch queued is fed (framed into tungstenite's write buffer), then written
    // with one flush.
    'out: while let Some(first) = rx.recv().await {
        let mut batch = Some(first);
        while let Some(b) = batch.take() {
            for m in b.iter() {
                if sink.feed(m.clone()).await.is_err() {
                    break 'out;
                }
            }
            room.add_permits(b.len());
            batch = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    // A publisher waiting for room in this queue stops waiting for it.
    room.close();
    reader.abort();
}

/// What one read of the publisher's socket gave.
enum Read {
    /// Frames to hand on (at least one).
    Frames(Vec<Message>),
    /// The connection ended.
    End,
}

/// Waits for one frame, then takes every frame already readable, up to [`BATCH`].
async fn read_batch(
    stream: &mut futures_util::stream::SplitStream<tokio_tungstenite::WebSocketStream<TcpStream>>,
) -> Read {
    let mut frames = Vec::new();
    std::future::poll_fn(|cx| loop {
        match stream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(m))) => {
                if m.is_text() {
                    frames.push(m);
                    if frames.len() == BATCH {
                        return Poll::Ready(());
                    }
                }
            }
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending if frames.is_empty() => return Poll::Pending,
            Poll::Pending => return Poll::Ready(()),
        }
    })
    .await;
    if frames.is_empty() {
        Read::End
    } else {
        Read::Frames(frames)
    }
}

async fn publisher(ws: tokio_tungstenite::WebSocketStream<TcpStream>, subscribers: Subscribers) {
    let (_sink, mut stream) = ws.split();
    while let Read::Frames(frames) = read_batch(&mut stream).await {
        let batch: Batch = frames.into();
        let now = Arc::clone(&subscribers.lock().unwrap_or_else(|e| e.into_inner()));
        // At most BATCH frames, so the count fits the semaphore's u32.
        let frames = batch.len() as u32;
        let mut gone = false;
        for q in now.iter() {
            match q.room.try_acquire_many(frames) {
                Ok(permits) => permits.forget(),
                Err(_) => match q.room.acquire_many(frames).await {
                    Ok(permits) => permits.forget(),
                    Err(_) => gone = true,
                },
            }
            gone |= q.batches.send(Arc::clone(&batch)).is_err();
        }
        if gone {
            let mut all = subscribers.lock().unwrap_or_else(|e| e.into_inner());
            let next: Vec<_> = all
                .iter()
                .filter(|q| !q.batches.is_closed())
                .cloned()
                .collect();
            *all = Arc::new(next);
        }
    }
}
