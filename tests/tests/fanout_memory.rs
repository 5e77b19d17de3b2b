//! The memory held for stalled subscribers: one budget (`fanout_memory_bytes`) for the
//! whole broker, given back when they close.

use std::time::Instant;

use rewind_protocol::frame::{ClientFrame, ServerFrame, ServerMessage};
use rewind_protocol::Position;
use rewind_tests::ws::Client;
use rewind_tests::{rss_falls_to, rss_kib, Broker};

const NAMESPACES: usize = 100;
/// 1 KB events per namespace, in batches of 500: about 1.5 MB each, 150 MB in all.
const BATCHES: usize = 3;
/// The default: large enough that what it holds stands well clear of the ±10 MB by which
/// two brokers doing the same work differ.
const BUDGET: u64 = 64 << 20;
const MIB: u64 = 1024;

fn name(i: usize) -> String {
    format!("busy-{i:03}")
}

/// Creates every namespace with one small event.
async fn warm(b: &Broker) {
    for i in 0..NAMESPACES {
        b.publish(&name(i), r#"{"event":"warm"}"#).await;
    }
}

/// Publishes about 1.5 MB of 1 KB events to every namespace.
async fn publish_all(b: &Broker) {
    let one = format!(r#"{{"event":"big","data":"{}"}}"#, "x".repeat(1000));
    let batch = format!("[{}]", vec![one.as_str(); 500].join(","));
    for _ in 0..BATCHES {
        for i in 0..NAMESPACES {
            b.publish(&name(i), &batch).await;
        }
    }
}

fn broker() -> Broker {
    // A small store cache keeps the store's own memory from drowning the signal.
    Broker::start(&[
        "--store-cache-bytes",
        "4194304",
        "--fanout-memory-bytes",
        &BUDGET.to_string(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_on_100_busy_namespaces_is_held_to_the_budget_and_freed_on_close() {
    // Baseline: the same publishes with nobody subscribed.
    let base = broker();
    warm(&base).await;
    let before = rss_kib(base.pid());
    publish_all(&base).await;
    let base_growth = rss_kib(base.pid()).saturating_sub(before);
    drop(base);

    let b = broker();
    warm(&b).await;
    let mut c = Client::connect(b.addr, None).await;
    for i in 0..NAMESPACES {
        c.send(&ClientFrame::Open {
            ns: name(i),
            from: Position::Latest,
            epoch: None,
            credit: 1,
        })
        .await;
    }
    for _ in 0..NAMESPACES {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Opened { .. }) => {}
            other => panic!("expected opened, got {other:?}"),
        }
    }
    let before = rss_kib(b.pid());
    publish_all(&b).await;
    let stalled = rss_kib(b.pid());
    let growth = stalled.saturating_sub(before);
    // Each subscription got exactly its one credited event, the first of the flood.
    let mut got = vec![0; NAMESPACES];
    for _ in 0..NAMESPACES {
        match c.next().await {
            ServerMessage::Event(e) => {
                assert_eq!(e.event.offset, 1, "{}", e.ns);
                let i: usize = e.ns["busy-".len()..].parse().expect("a namespace of ours");
                got[i] += 1;
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert!(got.iter().all(|&n| n == 1), "{got:?}");
    eprintln!(
        "RSS growth: {growth} KiB with a subscriber stalled on {NAMESPACES} namespaces, \
         {base_growth} KiB without; budget {} KiB",
        BUDGET / 1024
    );
    // Without the budget each namespace's ring held ~1.5 MB here (~150 MB in all). The
    // store's own growth varies by ±10 MB between two brokers doing the same work, so
    // the margin is 24 MiB.
    assert!(
        growth <= base_growth + BUDGET / 1024 + 24 * MIB,
        "RSS grew {growth} KiB with a stalled subscriber, {base_growth} KiB without"
    );
    // Closing gives the held runs back: RSS falls by most of the budget.
    c.raw(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    c.close_code().await;
    let closed = Instant::now();
    let target = stalled.saturating_sub(BUDGET / 1024 / 2);
    let after = rss_falls_to(b.pid(), target).await;
    eprintln!(
        "RSS {stalled} KiB while stalled, {after} KiB {:?} after the subscriber closed",
        closed.elapsed()
    );
    assert!(
        after <= target,
        "RSS {stalled} KiB while stalled, still {after} KiB 30 s after the subscriber closed"
    );
}
