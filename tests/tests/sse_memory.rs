//! An SSE reader that stops reading is a cursor, not a buffer: while 50 MB are published
//! to a namespace that eight such readers follow, the broker's memory grows no more than
//! with nobody reading (within the noise between two brokers), and a stalled reader that
//! reads again gets every event in order.

use std::time::{Duration, Instant};

use rewind_tests::sse::Sse;
use rewind_tests::{rss_kib, Broker, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// 1 KB events, in batches of 1,000: 50 batches, about 50 MB.
const BATCHES: usize = 50;
const READERS: usize = 8;
const MIB: u64 = 1024;

async fn publish(b: &Broker, body: &str) {
    let r = b.post_json("/v1/namespaces/flood/events", body).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

async fn flood(b: &Broker) {
    let one = format!(r#"{{"event":"big","data":"{}"}}"#, "x".repeat(1000));
    let batch = format!("[{}]", vec![one.as_str(); 1000].join(","));
    for _ in 0..BATCHES {
        publish(b, &batch).await;
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

/// Polls RSS (every 100 ms: nothing announces it) until it is at most `limit` KiB or 30 s
/// pass; returns the last value. Freed memory goes back to the OS about a second after it
/// is freed (the broker's purge thread, `decisions.md`), and readers that filled their
/// socket buffers before they stalled freed what they read.
async fn rss_falls_to(b: &Broker, limit: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rss = rss_kib(b.pid());
        if rss <= limit || Instant::now() > deadline {
            return rss;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_stop_reading_cost_their_cursor_not_the_events_published() {
    // Baseline: the same publishes with nobody reading.
    let base = broker();
    publish(&base, r#"{"event":"warm","data":0}"#).await;
    let before = rss_kib(base.pid());
    flood(&base).await;
    let base_growth = rss_kib(base.pid()).saturating_sub(before);
    drop(base);

    let b = broker();
    publish(&b, r#"{"event":"warm","data":0}"#).await;
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
    let growth = rss_falls_to(&b, limit).await.saturating_sub(before);
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
