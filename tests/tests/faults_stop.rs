//! Faults beyond crashes, full disks and damaged files (issue 12): a broker frozen by
//! SIGSTOP while its clients time out and retry, and clients that stop reading.
//!
//! Clients that stop reading, by transport: HTTP reads here; WebSocket subscribers in
//! `fanout_memory.rs` (live) and `ws_catch_up_memory.rs` (catching up), a WebSocket
//! publisher that never reads its answers in `ws_publish.rs`. Server-sent events (being
//! written in issue 11) need the same: a stream whose client stops reading must hold at
//! most its own bounded buffer, measured the same way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rewind_protocol::Payload;
use rewind_tests::fault::read_ns;
use rewind_tests::{request, rss_kib, Broker, Method, StatusCode};

/// How long the broker stays stopped: the issue's figure.
const FROZEN: Duration = Duration::from_secs(30);
/// The clients' own timeout for one attempt.
const ATTEMPT: Duration = Duration::from_secs(2);

fn signal(pid: u32, sig: &str) {
    let sent = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill {sig} failed");
}

/// Publishes event `n` of client `client` with its own `Idempotency-Key`, attempt after
/// attempt (each cut off at [`ATTEMPT`], as a client library does) until one is answered
/// `201`. Returns the number of attempts.
async fn publish_until_answered(addr: std::net::SocketAddr, client: usize, n: usize) -> u32 {
    let key = format!("c{client}-e{n}");
    let body = format!(r#"{{"event":"e","data":"{key}"}}"#);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let headers = [
            ("content-type", "application/json"),
            ("idempotency-key", key.as_str()),
        ];
        let sent = request(
            addr,
            Method::POST,
            "/v1/namespaces/frozen/events",
            &headers,
            Bytes::from(body.clone()),
        );
        match tokio::time::timeout(ATTEMPT, sent).await {
            Ok(Ok(res)) if res.status == StatusCode::CREATED => return attempts,
            // Refused for now (503 while the queue is full) or cut off: try again.
            Ok(_) | Err(_) => {}
        }
        assert!(attempts < 1000, "{key}: never answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_for_30_s_appends_each_retried_key_once() {
    const CLIENTS: usize = 8;
    const EACH: usize = 40;
    let mut b = Broker::start(&[]);
    let addr = b.addr;
    let pid = b.pid();
    let (first_tx, mut first) = tokio::sync::mpsc::channel::<()>(CLIENTS * EACH);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let first_tx = first_tx.clone();
            tokio::spawn(async move {
                let mut retried = 0;
                for n in 0..EACH {
                    let attempts = publish_until_answered(addr, c, n).await;
                    retried += attempts - 1;
                    let _ = first_tx.try_send(());
                }
                retried
            })
        })
        .collect();
    drop(first_tx);
    // Freeze it once publishing is under way, so requests are in flight at the stop.
    for _ in 0..CLIENTS {
        first.recv().await.expect("a client published");
    }
    signal(pid, "-STOP");
    let stopped = Instant::now();
    // The fault's length, not a wait for something: the clients time out and retry
    // meanwhile.
    tokio::time::sleep(FROZEN).await;
    signal(pid, "-CONT");
    assert!(stopped.elapsed() >= FROZEN);
    let mut retried = 0;
    for c in clients {
        retried += c.await.expect("client");
    }
    assert!(
        retried > 0,
        "no client ever timed out: the stop was not felt"
    );
    let log = read_ns(&b, "frozen").await.expect("the namespace exists");
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for ev in &log.events {
        let key = match &ev.data {
            Payload::Json(text) => text.trim_matches('"').to_owned(),
            Payload::Bytes(b) => panic!("bytes {b:?} where a key was published"),
        };
        *seen.entry(key).or_default() += 1;
    }
    assert_eq!(seen.len(), CLIENTS * EACH, "keys missing");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "appended more than once: {twice:?}");
    assert_eq!(log.next, (CLIENTS * EACH) as u64);
    assert!(b.terminate().success());
}

/// Readers that ask for pages and never read the answers: each holds at most one page
/// (`max_read_bytes` of events, encoded) in the broker, whatever the log holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_readers_that_never_read_hold_at_most_a_page_each() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Pages larger than loopback's socket buffers, so the broker holds what the kernel
    // cannot take.
    const READERS: usize = 20;
    const PAGE: u64 = 8 << 20;
    const PAYLOAD: usize = 16 << 10;
    let page = PAGE.to_string();
    let b = Broker::start(&[
        "--max-read-bytes",
        &page,
        "--max-read-events",
        "10000",
        "--max-body-bytes",
        "33554432",
    ]);
    // 48 MiB of events: six pages' worth.
    let data = "x".repeat(PAYLOAD);
    let batch = format!(
        "[{}]",
        vec![format!(r#"{{"event":"e","data":"{data}"}}"#); 64].join(",")
    );
    for _ in 0..48 {
        let res = b.post_json("/v1/namespaces/big/events", &batch).await;
        assert_eq!(res.status, StatusCode::CREATED);
    }
    // One page read and answered first, so the baseline has what any read costs.
    let warm = b.get("/v1/namespaces/big/events?from=0&limit=10000").await;
    assert_eq!(warm.status, StatusCode::OK);
    assert!(warm.body.len() as u64 > PAGE / 2, "{}", warm.body.len());
    let before = rss_kib(b.pid());
    let mut held = Vec::new();
    for _ in 0..READERS {
        let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
        s.write_all(
            b"GET /v1/namespaces/big/events?from=0&limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
        // The answer has begun: the reader takes its status line and reads no more.
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut peak = rss_kib(b.pid());
    // The broker still serves the rest meanwhile.
    for _ in 0..3 {
        let page_read = b.get("/v1/namespaces/big/events?from=0&limit=10000").await;
        assert_eq!(page_read.status, StatusCode::OK);
        peak = peak.max(rss_kib(b.pid()));
    }
    let grown = peak.saturating_sub(before);
    // A page is at most `max_read_bytes` of stored events, and its JSON about as large
    // (the payloads are JSON strings): a stalled reader holds its answer's body, less
    // what the kernel took; 2 pages a reader leaves room for the allocator's slack.
    // Without the page limit each would hold the whole log (48 MiB).
    let bound = READERS as u64 * 2 * PAGE / 1024;
    println!("{READERS} stalled readers: RSS {before} KiB -> {peak} KiB (+{grown} KiB, bound {bound} KiB)");
    assert!(
        grown <= bound,
        "{READERS} readers that never read grew the broker by {grown} KiB (bound {bound} KiB)"
    );
    drop(held);
}
