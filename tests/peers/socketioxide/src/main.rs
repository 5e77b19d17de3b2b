//! A fan-out peer of the benchmarks: socketioxide, the room broadcast a Rust user of
//! Socket.IO would write.
//!
//! Protocol (the same as `../socketio/server.js`): a client connecting with `?role=pub` is
//! the publisher, and every `pub` event it emits is broadcast as `event`, its data
//! unchanged, to the room `fan` (acknowledged after the broadcast when the publisher asks
//! for an ack). Any other client joins `fan` in the connect handler and is then sent
//! `ready`; handlers are registered before the client can emit. Usage:
//! `peer-socketioxide [ADDR] [QUEUE]` (default `127.0.0.1:0` and 1,048,576 packets: the
//! per-socket queue, 128 by default, past which socketioxide drops an emit with an error;
//! each drop is counted on stderr). The first line on stdout is `listening on http://ADDR`.

use std::sync::atomic::{AtomicU64, Ordering};

use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::{SocketIo, TransportType};

/// Broadcasts that failed for at least one subscriber (its queue full).
static FAILED: AtomicU64 = AtomicU64::new(0);

async fn on_pub(s: SocketRef, Data(data): Data<serde_json::Value>, ack: AckSender) {
    if let Err(e) = s.to("fan").emit("event", &data).await {
        let n = FAILED.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            eprintln!("broadcast failed ({n} so far): {e}");
        }
    }
    let _ = ack.send(&());
}

async fn on_connect(s: SocketRef) {
    let publisher = s
        .req_parts()
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "role=pub"));
    if publisher {
        s.on("pub", on_pub);
    } else {
        s.join("fan");
        let _ = s.emit("ready", &());
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let queue = args.next().and_then(|q| q.parse().ok()).unwrap_or(1 << 20);
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(queue)
        .transports([TransportType::Websocket])
        .build_layer();
    io.ns("/", on_connect);
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
