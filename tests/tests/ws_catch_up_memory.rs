//! Catch-up reads held for WebSocket subscribers that stop reading: one budget
//! (`fanout_memory_bytes`) for the whole broker, given back when the connections close,
//! while a reader that does read on the same broker still gets everything.

use std::time::{Duration, Instant};

use rewind_protocol::frame::{ClientFrame, ServerFrame, ServerMessage};
use rewind_protocol::Position;
use rewind_tests::ws::Client;
use rewind_tests::StatusCode;
use rewind_tests::{rss_kib, Broker};

const NAMESPACES: usize = 10;
const CONNECTIONS: usize = 10;
/// 2 KB events per namespace, in batches of 500: about 6 MB each, 60 MB in all.
const BATCHES: usize = 6;
const EVENTS: u64 = (BATCHES * 500) as u64;
/// The default credit of the tester's clients: enough for a full catch-up batch.
const CREDIT: u64 = 1000;
const BUDGET: u64 = 16 << 20;
const MIB: u64 = 1024;

fn name(i: usize) -> String {
    format!("busy-{i:02}")
}

async fn publish_all(b: &Broker) {
    let one = format!(r#"{{"event":"big","data":"{}"}}"#, "x".repeat(2000));
    let batch = format!("[{}]", vec![one.as_str(); 500].join(","));
    for _ in 0..BATCHES {
        for i in 0..NAMESPACES {
            let r = b
                .post_json(&format!("/v1/namespaces/{}/events", name(i)), &batch)
                .await;
            assert_eq!(
                r.status,
                StatusCode::CREATED,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
}

/// Opens every namespace from offset 0 with `credit`, and reads the `opened` answers.
async fn open_all(c: &mut Client, credit: u64) {
    for i in 0..NAMESPACES {
        c.send(&ClientFrame::Open {
            ns: name(i),
            from: Position::Offset(0),
            epoch: None,
            credit,
        })
        .await;
    }
}

/// Samples RSS every 100 ms until it grows by less than 1 MiB in a second (or 30 s
/// pass); returns the highest value seen.
async fn rss_settled(b: &Broker) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut peak = rss_kib(b.pid());
    let mut mark = (Instant::now(), peak);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss = rss_kib(b.pid());
        peak = peak.max(rss);
        if mark.0.elapsed() >= Duration::from_secs(1) {
            if peak < mark.1 + MIB || Instant::now() > deadline {
                return peak;
            }
            mark = (Instant::now(), peak);
        }
    }
}

/// Polls RSS until it is at most `limit` KiB or 30 s pass; returns the last value.
async fn rss_falls_to(b: &Broker, limit: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rss = rss_kib(b.pid());
        if rss <= limit || Instant::now() > deadline {
            return rss;
        }
        // The broker's allocator gives freed pages back as it works: keep it working.
        let r = b.get("/healthz").await;
        assert_eq!(r.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_catch_up_subscribers_are_held_to_the_budget_and_freed_on_close() {
    let b = Broker::start(&[
        "--store-cache-bytes",
        "4194304",
        "--fanout-memory-bytes",
        &BUDGET.to_string(),
    ]);
    publish_all(&b).await;
    let before = rss_kib(b.pid());

    // Connections that open every namespace from the start and never read.
    let mut stalled = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut c = Client::connect(b.addr, None).await;
        open_all(&mut c, CREDIT).await;
        stalled.push(c);
    }

    // A reader on the same broker gets every event of one namespace, in order.
    let mut reader = Client::connect(b.addr, None).await;
    reader
        .send(&ClientFrame::Open {
            ns: name(0),
            from: Position::Offset(0),
            epoch: None,
            credit: EVENTS,
        })
        .await;
    let mut next = 0;
    while next < EVENTS {
        match reader.next().await {
            ServerMessage::Event(e) => {
                assert_eq!(e.event.offset, next, "{}", e.ns);
                next += 1;
            }
            ServerMessage::Frame(ServerFrame::Opened { .. }) => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }

    let held = rss_settled(&b).await;
    let growth = held.saturating_sub(before);
    // Each stalled connection may also hold its outbox (`ws_write_buffer_bytes`, 64 KiB,
    // plus one catch-up read of up to 2 MiB), and each subscription one event read past
    // the budget. The broker's 32 blocking threads keep up to about 1 MiB each of their
    // own (a read's 1 MiB window, mimalloc's per-thread pages), whatever the number of
    // subscriptions.
    let outboxes = CONNECTIONS as u64 * 2 * MIB;
    let threads = 32 * MIB;
    eprintln!(
        "RSS growth: {growth} KiB with {CONNECTIONS} connections x {NAMESPACES} namespaces \
         stalled in catch-up; budget {} KiB, outboxes {outboxes} KiB, threads {threads} KiB",
        BUDGET / 1024
    );
    // Without the budget every subscription held a read of up to 1000 events (2 MB), and
    // hundreds of blocking threads their own memory: RSS grew by 294 MB here. With the
    // budget, growth measured 41–106 MB across runs on this 2-core machine (the high end
    // with other builds running: more blocking threads busy at once, each with its own
    // allocator pages), so the margin is 48 MiB: the bound (116 MiB) still fails the
    // unbudgeted broker by far.
    assert!(
        growth <= BUDGET / 1024 + outboxes + threads + 48 * MIB,
        "RSS grew {growth} KiB with stalled subscribers"
    );

    // Closing gives back what they held: RSS falls by at least half its growth.
    // Dropped: with unread data in their sockets they reset, which the broker sees at its
    // next write even while it is not reading them.
    drop(stalled);
    drop(reader);
    let target = held.saturating_sub(growth / 2);
    let after = rss_falls_to(&b, target).await;
    eprintln!("RSS {held} KiB while stalled, {after} KiB after the connections closed");
    assert!(
        after <= target,
        "RSS {held} KiB while stalled, still {after} KiB 30 s after the connections closed"
    );
}
