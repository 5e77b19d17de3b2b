//! WebSocket subscriptions against the broker served in-process: credit (a subscription
//! never receives more than its credit, and after a refill gets the rest without a gap or a
//! duplicate) and a subscriber that falls behind retention (told `truncated` with reason
//! `retention`, then delivery goes on at `earliest`). Spec §2 and §3.1; docs/protocol.md,
//! "Subscriptions" and "Flow control".

mod common;

use std::time::Duration;

use common::{config, event_offset, events, open, Served, Ws, BOUND};
use rewind_broker::config::{Config, Retention};
use rewind_broker::{Log, ReadRequest};
use rewind_protocol::Position;
use serde_json::{json, Value};

/// The next `n` frames, each an event of `ns`: their offsets.
async fn offsets(ws: &mut Ws, ns: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(event_offset(&ws.recv().await, ns));
    }
    out
}

fn opened(frame: &Value, ns: &str) -> (u64, u64, u64) {
    assert_eq!(frame["t"], "opened", "expected opened, got {frame}");
    assert_eq!(frame["ns"], ns, "{frame}");
    let field = |k: &str| frame[k].as_u64().expect("an offset");
    (field("from"), field("earliest"), field("next"))
}

#[tokio::test]
async fn a_subscription_gets_exactly_its_credit_then_the_rest_after_a_refill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(open(config(dir.path()))).await;
    let log = served.log.clone();
    log.append("c", events("e", 0, 10), None)
        .await
        .expect("append");
    let mut ws = Ws::connect(served.addr).await;

    ws.send(json!({"t": "open", "ns": "c", "from": 0, "credit": 3}))
        .await;
    assert_eq!(opened(&ws.recv().await, "c"), (0, 0, 10));
    let mut got = offsets(&mut ws, "c", 3).await;
    assert_eq!(got, [0, 1, 2]);
    // Credit spent: nothing more, from the log or live.
    assert_eq!(ws.quiet().await, Vec::<Value>::new(), "beyond credit");
    log.append("c", events("e", 10, 1), None)
        .await
        .expect("append");
    assert_eq!(ws.quiet().await, Vec::<Value>::new(), "beyond credit");

    // Another namespace on the same connection is not held up by the stalled one.
    ws.send(json!({"t": "open", "ns": "other", "credit": 10}))
        .await;
    // `other` does not exist yet: a subscription never creates its namespace.
    let refused = ws.recv().await;
    assert_eq!(
        (&refused["t"], &refused["code"]),
        (&json!("error"), &json!("not_found"))
    );
    log.append("other", events("o", 0, 1), None)
        .await
        .expect("append");
    ws.send(json!({"t": "open", "ns": "other", "from": "earliest", "credit": 10}))
        .await;
    assert_eq!(opened(&ws.recv().await, "other"), (0, 0, 1));
    assert_eq!(offsets(&mut ws, "other", 1).await, [0]);

    // A refill of 4 gets the next 4, and again nothing more.
    ws.send(json!({"t": "credit", "ns": "c", "n": 4})).await;
    let four = offsets(&mut ws, "c", 4).await;
    assert_eq!(four, [3, 4, 5, 6]);
    got.extend(four);
    assert_eq!(ws.quiet().await, Vec::<Value>::new(), "beyond credit");

    // Plenty of credit: the rest of the log, the event appended while stalled, then live.
    ws.send(json!({"t": "credit", "ns": "c", "n": 100})).await;
    got.extend(offsets(&mut ws, "c", 4).await);
    log.append("c", events("e", 11, 1), None)
        .await
        .expect("append");
    got.extend(offsets(&mut ws, "c", 1).await);
    assert_eq!(got, (0..=11).collect::<Vec<u64>>(), "a gap or a duplicate");
    assert_eq!(
        ws.quiet().await,
        Vec::<Value>::new(),
        "more than was published"
    );

    // The events are the ones published at those offsets.
    let stored = log.read_range("c", 0, 12, 100).await.expect("read");
    assert_eq!(stored.len(), 12);
    drop(ws);
    served.stop().await;
}

#[tokio::test]
async fn a_subscription_opened_with_zero_credit_gets_nothing_until_credit_comes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(open(config(dir.path()))).await;
    let log = served.log.clone();
    log.append("z", events("e", 0, 2), None)
        .await
        .expect("append");
    let mut ws = Ws::connect(served.addr).await;

    ws.send(json!({"t": "open", "ns": "z", "from": "earliest", "credit": 0}))
        .await;
    assert_eq!(opened(&ws.recv().await, "z"), (0, 0, 2));
    assert_eq!(ws.quiet().await, Vec::<Value>::new(), "sent at zero credit");
    ws.send(json!({"t": "credit", "ns": "z", "n": 1})).await;
    assert_eq!(offsets(&mut ws, "z", 1).await, [0]);
    assert_eq!(ws.quiet().await, Vec::<Value>::new(), "beyond credit");
    ws.send(json!({"t": "credit", "ns": "z", "n": 1})).await;
    assert_eq!(offsets(&mut ws, "z", 1).await, [1]);
    drop(ws);
    served.stop().await;
}

/// Retention keeps 3 events, in one-event segments (it removes whole segments), run every
/// 20 ms; the live ring keeps one run, so a subscriber that falls behind reads the log.
fn retaining_three(dir: &std::path::Path) -> Config {
    Config {
        retention: Retention {
            max_events: Some(3),
            max_bytes: None,
            max_age_secs: None,
        },
        retention_interval_ms: 20,
        segment_bytes: 1,
        fanout_buffer: 1,
        ..config(dir)
    }
}

/// Waits until retention holds `ns` to its 3 events; returns its `earliest` then. Retention
/// runs on the broker's timer, so this polls `Log::info` (bounded).
async fn retained(log: &Log, ns: &str) -> u64 {
    tokio::time::timeout(BOUND, async {
        loop {
            let info = log.info(ns).await.expect("info").expect("exists");
            if info.next - info.earliest <= 3 {
                return info.earliest;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("retention ran")
}

#[tokio::test]
async fn a_subscriber_left_behind_by_retention_is_told_truncated_then_continues_at_earliest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(open(retaining_three(dir.path()))).await;
    let log = served.log.clone();
    for i in 0..2 {
        log.append("r", events("e", i, 1), None)
            .await
            .expect("append");
    }
    let mut ws = Ws::connect(served.addr).await;
    ws.send(json!({"t": "open", "ns": "r", "from": 0, "credit": 1}))
        .await;
    assert_eq!(opened(&ws.recv().await, "r"), (0, 0, 2));
    assert_eq!(offsets(&mut ws, "r", 1).await, [0]);
    // Stalled at offset 1 (no credit) while 8 more come and retention removes the oldest.
    for i in 2..10 {
        log.append("r", events("e", i, 1), None)
            .await
            .expect("append");
    }
    let earliest = retained(&log, "r").await;
    assert!(
        earliest > 1,
        "retention did not pass the subscriber ({earliest})"
    );
    assert_eq!(ws.quiet().await, Vec::<Value>::new(), "sent at zero credit");

    ws.send(json!({"t": "credit", "ns": "r", "n": 100})).await;
    let truncated = ws.recv().await;
    assert_eq!(
        truncated,
        json!({"t": "truncated", "ns": "r", "requested": 1, "from": earliest, "reason": "retention"})
    );
    let n = (10 - earliest) as usize;
    assert_eq!(
        offsets(&mut ws, "r", n).await,
        (earliest..10).collect::<Vec<u64>>()
    );
    // Then live, without a gap.
    log.append("r", events("e", 10, 1), None)
        .await
        .expect("append");
    assert_eq!(offsets(&mut ws, "r", 1).await, [10]);
    assert_eq!(
        ws.quiet().await,
        Vec::<Value>::new(),
        "more than was published"
    );

    // A subscriber resuming below `earliest` is told the same way, and so is a long-poll
    // (retention has moved on since the append).
    let earliest = retained(&log, "r").await;
    let n = (10 - earliest) as usize;
    let mut late = Ws::connect(served.addr).await;
    late.send(json!({"t": "open", "ns": "r", "from": 1})).await;
    assert_eq!(opened(&late.recv().await, "r"), (earliest, earliest, 11));
    assert_eq!(
        late.recv().await,
        json!({"t": "truncated", "ns": "r", "requested": 1, "from": earliest, "reason": "retention"})
    );
    assert_eq!(
        offsets(&mut late, "r", n + 1).await,
        (earliest..=10).collect::<Vec<u64>>()
    );
    let page = log
        .read(
            "r",
            ReadRequest {
                from: Position::Offset(1),
                limit: 100,
                wait: Duration::ZERO,
            },
        )
        .await
        .expect("read");
    assert!(page.truncated);
    assert_eq!(page.earliest, earliest);
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (earliest..=10).collect::<Vec<u64>>()
    );
    drop((ws, late));
    served.stop().await;
}
