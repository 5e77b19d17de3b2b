//! An SSE reader that stops reading is a cursor, not a buffer: while 50 MB are published
//! to a namespace that eight such readers follow, the broker's memory grows no more than
//! with nobody reading (within the noise between two brokers), and a stalled reader that
//! reads again gets every event in order.

use rewind_tests::sse::Sse;
use rewind_tests::{rss_falls_to, rss_kib, Broker};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// 1 KB events, in batches of 1,000: 50 batches, about 50 MB.
const BATCHES: usize = 50;
const READERS: usize = 8;
const MIB: u64 = 1024;

async fn flood(b: &Broker) {
    let one = format!(r#"{{"event":"big","data":"{}"}}"#, "x".repeat(1000));
    let batch = format!("[{}]", vec![one.as_str(); 1000].join(","));
    for _ in 0..BATCHES {
        b.publish("flood", &batch).await;
    }
}

fn broker() -> Broker {
    // A small store cache keeps the store's own memory from drowning the signal.
    Broker::start(&["--store-cache-bytes", "4194304"])
}

/// An SSE request from `earliest` whose answer is never read.
async fn stalled(b: &Broker) -> TcpStream {
    let mut conn = TcpStream::connect(b.addr).await.expect("connect");
    let req = format!(
        "GET /v1/namespaces/flood/sse?from=earliest HTTP/1.1\r\nhost: {}\r\n\r\n",
        b.addr
    );
    conn.write_all(req.as_bytes()).await.expect("send");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_stop_reading_cost_their_cursor_not_the_events_published() {
    // Baseline: the same publishes with nobody reading.
    let base = broker();
    base.publish("flood", r#"{"event":"warm","data":0}"#).await;
    let before = rss_kib(base.pid());
    flood(&base).await;
    let base_growth = rss_kib(base.pid()).saturating_sub(before);
    drop(base);

    let b = broker();
    b.publish("flood", r#"{"event":"warm","data":0}"#).await;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(stalled(&b).await);
    }
    // One more, read through the SSE parser, that also stops after its first event.
    let mut resumed = Sse::open(b.addr, "/v1/namespaces/flood/sse?from=earliest", &[]).await;
    assert_eq!(resumed.status, 200);
    resumed.expect("rewind.opened").await;
    assert_eq!(resumed.message().await.id.as_deref(), Some("0"));
    let before = rss_kib(b.pid());
    flood(&b).await;
    let limit = before + base_growth + 24 * MIB;
    let growth = rss_falls_to(b.pid(), limit).await.saturating_sub(before);
    eprintln!(
        "RSS growth: {growth} KiB with {} stalled SSE readers, {base_growth} KiB without",
        READERS + 1
    );
    // Buffered, each reader would hold the ~50 MB of events (more as SSE text). Two
    // brokers doing the same work differ by about ±10 MB (fanout_memory.rs), so the
    // margin is 24 MiB: a fraction of what one buffered reader would hold.
    assert!(
        growth <= base_growth + 24 * MIB,
        "RSS grew {growth} KiB with stalled SSE readers, {base_growth} KiB without"
    );

    // The stalled reader reads again: every event, in order, from where it stopped.
    for expected in 1..=3000u64 {
        let m = resumed.message().await;
        assert_eq!(m.id, Some(expected.to_string()), "{}", m.event);
    }
    drop(readers);
}
