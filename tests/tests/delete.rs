//! Deleting a namespace, as every kind of reader sees it (issue 8, section 3): WebSocket
//! subscriptions at any credit and in both encodings, HTTP long-polls, the Rust client
//! and `rewind tail` learn at once that the log is gone, and nothing keeps serving it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rewind_protocol::frame::{ClientFrame, ServerFrame, ServerMessage};
use rewind_protocol::{Payload, Position};
use rewind_tests::ws::Client;
use rewind_tests::{rewind_bin, Broker};
use rewind_tests::{Method, StatusCode};

fn open(ns: &str, from: Position, epoch: Option<&str>, credit: u64) -> ClientFrame {
    ClientFrame::Open {
        ns: ns.into(),
        from,
        epoch: epoch.map(str::to_owned),
        credit,
    }
}

/// Publishes `n` events with small JSON data over HTTP.
async fn publish_n(b: &Broker, ns: &str, n: usize) {
    let body: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"event":"n","data":{i}}}"#))
        .collect();
    let r = b
        .post_json(
            &format!("/v1/namespaces/{ns}/events"),
            &format!("[{}]", body.join(",")),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Creates (or re-creates) `ns` with `PUT`: a subscription does not create it.
async fn create(b: &Broker, ns: &str) {
    let r = b.put_json(&format!("/v1/namespaces/{ns}"), "").await;
    assert_eq!(r.status, StatusCode::CREATED);
}

async fn delete(b: &Broker, ns: &str) {
    let r = b
        .request(Method::DELETE, &format!("/v1/namespaces/{ns}"), &[], "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

/// The next message that is not a `ping`.
async fn next(c: &mut Client) -> ServerMessage {
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Ping) => {}
            m => return m,
        }
    }
}

async fn expect_frame(c: &mut Client) -> ServerFrame {
    match next(c).await {
        ServerMessage::Frame(f) => f,
        ServerMessage::Event(e) => panic!("expected a frame, got event {e:?}"),
    }
}

/// The `opened` frame's epoch and `next`.
async fn expect_opened(c: &mut Client, ns: &str) -> (String, u64) {
    match expect_frame(c).await {
        ServerFrame::Opened {
            ns: got,
            epoch,
            next,
            ..
        } if got == ns => (epoch, next),
        f => panic!("expected opened for {ns}, got {f:?}"),
    }
}

fn deleted(ns: &str) -> ServerFrame {
    ServerFrame::Closed {
        ns: ns.into(),
        reason: Some("deleted".into()),
    }
}

/// Reads until `closed {ns, reason: "deleted"}`; returns the offsets of the events of
/// `ns` that came before it. Any other frame fails the test.
async fn events_until_deleted(c: &mut Client, ns: &str) -> Vec<u64> {
    let mut offsets = Vec::new();
    loop {
        match next(c).await {
            ServerMessage::Event(e) if e.ns == ns => offsets.push(e.event.offset),
            ServerMessage::Frame(f) if f == deleted(ns) => return offsets,
            other => panic!("while waiting for {ns} to close: {other:?}"),
        }
    }
}

/// `credit` for a namespace the broker no longer has open here is `not_open`: the
/// subscription was unregistered.
async fn assert_not_open(c: &mut Client, ns: &str) {
    c.send(&ClientFrame::Credit {
        ns: ns.into(),
        n: 10,
    })
    .await;
    match expect_frame(c).await {
        ServerFrame::Error { code, ns: got, .. } => {
            assert_eq!((code.as_str(), got.as_deref()), ("not_open", Some(ns)))
        }
        f => panic!("expected not_open, got {f:?}"),
    }
}

/// Issue 8 §3, first input: a caught-up JSON subscriber of `doomed`, then `DELETE`.
#[tokio::test]
async fn a_caught_up_subscriber_is_told_at_once_and_can_open_the_new_incarnation() {
    let b = Broker::start(&[]);
    publish_n(&b, "doomed", 2).await;
    let mut c = Client::connect(b.addr, Some("rewind.v1.json")).await;
    c.send(&open("doomed", Position::Earliest, None, 100)).await;
    let (old_epoch, _) = expect_opened(&mut c, "doomed").await;
    for offset in 0..2 {
        match next(&mut c).await {
            ServerMessage::Event(e) => assert_eq!(e.event.offset, offset),
            m => panic!("{m:?}"),
        }
    }

    delete(&b, "doomed").await;
    assert_eq!(expect_frame(&mut c).await, deleted("doomed"));
    assert_not_open(&mut c, "doomed").await;

    // Re-created, open again: no `already_open`; the new incarnation, its new epoch, and
    // its events reach the new subscription.
    create(&b, "doomed").await;
    c.send(&open("doomed", Position::Latest, None, 100)).await;
    let (new_epoch, next_offset) = expect_opened(&mut c, "doomed").await;
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(next_offset, 2, "offsets continue after the deleted log's");
    publish_n(&b, "doomed", 1).await;
    match next(&mut c).await {
        ServerMessage::Event(e) => {
            assert_eq!((e.ns.as_str(), e.event.offset), ("doomed", 2));
            assert_eq!(e.event.data, Payload::Json("0".into()));
        }
        m => panic!("{m:?}"),
    }
}

/// Issue 8 §3: a subscription at zero credit only heard of the delete once given credit.
/// In MessagePack; then a resume with the old epoch is told the log is another one.
#[tokio::test]
async fn a_subscriber_at_zero_credit_is_told_without_credit_and_resumes_into_the_new_epoch() {
    let b = Broker::start(&[]);
    let mut c = Client::connect(b.addr, Some("rewind.v1.msgpack")).await;
    create(&b, "doomed").await;
    c.send(&open("doomed", Position::Earliest, None, 0)).await;
    let (old_epoch, _) = expect_opened(&mut c, "doomed").await;
    publish_n(&b, "doomed", 3).await;

    delete(&b, "doomed").await;
    // Nothing was owed (no credit), so the very next frame is the close.
    assert_eq!(expect_frame(&mut c).await, deleted("doomed"));
    assert_not_open(&mut c, "doomed").await;

    // Re-created by a publish; a client resuming at offset 0 of the old epoch is told.
    publish_n(&b, "doomed", 1).await;
    c.send(&open("doomed", Position::Offset(0), Some(&old_epoch), 10))
        .await;
    let (new_epoch, _) = expect_opened(&mut c, "doomed").await;
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(
        expect_frame(&mut c).await,
        ServerFrame::Truncated {
            ns: "doomed".into(),
            requested: 0,
            from: 3,
            reason: "epoch".into(),
        }
    );
    match next(&mut c).await {
        ServerMessage::Event(e) => assert_eq!(e.event.offset, 3),
        m => panic!("{m:?}"),
    }
}

/// A subscription catching up from the log (here blocked on a socket its client does not
/// read) stops at the delete: it does not go on sending the deleted log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_mid_catch_up_stops_serving_the_deleted_log() {
    // 300 events of 64 KiB: far more than the socket buffers hold, so the broker is
    // still catching up when the delete comes.
    const EVENTS: u64 = 300;
    let b = Broker::start(&[]);
    let big = format!("\"{}\"", "x".repeat(64 << 10));
    for _ in 0..EVENTS / 10 {
        let batch: Vec<String> = (0..10)
            .map(|_| format!(r#"{{"event":"big","data":{big}}}"#))
            .collect();
        let r = b
            .post_json(
                "/v1/namespaces/doomed/events",
                &format!("[{}]", batch.join(",")),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let mut c = Client::connect(b.addr, Some("rewind.v1.json")).await;
    c.send(&open("doomed", Position::Earliest, None, 1000))
        .await;
    expect_opened(&mut c, "doomed").await;
    match next(&mut c).await {
        ServerMessage::Event(e) => assert_eq!(e.event.offset, 0),
        m => panic!("{m:?}"),
    }

    delete(&b, "doomed").await;
    let rest = events_until_deleted(&mut c, "doomed").await;
    assert_eq!(
        rest,
        (1..1 + rest.len() as u64).collect::<Vec<_>>(),
        "no gap before the close"
    );
    assert!(
        (rest.len() as u64) < EVENTS - 1,
        "the whole deleted log was sent ({} events) before the close",
        rest.len() + 1
    );
    // The connection goes on.
    c.send(&ClientFrame::Ping).await;
    assert_eq!(expect_frame(&mut c).await, ServerFrame::Pong);
}

/// Several subscribers on several connections, in both encodings and at different
/// credit, each told once; their other namespaces keep flowing.
#[tokio::test]
async fn every_subscriber_on_every_connection_is_told_and_other_namespaces_flow_on() {
    let b = Broker::start(&[]);
    publish_n(&b, "doomed", 5).await;
    publish_n(&b, "kept", 1).await;
    // (subprotocol, credit on doomed): caught up, at zero credit, part way through.
    let setups = [
        ("rewind.v1.json", 100),
        ("rewind.v1.msgpack", 0),
        ("rewind.v1.json", 2),
        ("rewind.v1.msgpack", 100),
    ];
    let mut clients = Vec::new();
    for (protocol, credit) in setups {
        let mut c = Client::connect(b.addr, Some(protocol)).await;
        c.send(&open("doomed", Position::Earliest, None, credit))
            .await;
        expect_opened(&mut c, "doomed").await;
        c.send(&open("kept", Position::Latest, None, 100)).await;
        // Take every event of `doomed` the credit allows, and `kept`'s opened.
        let owed = credit.min(5);
        let mut got = Vec::new();
        let mut kept_open = false;
        while !kept_open || (got.len() as u64) < owed {
            match next(&mut c).await {
                ServerMessage::Event(e) if e.ns == "doomed" => got.push(e.event.offset),
                ServerMessage::Frame(ServerFrame::Opened { ns, .. }) if ns == "kept" => {
                    kept_open = true
                }
                m => panic!("{m:?}"),
            }
        }
        assert_eq!(got, (0..owed).collect::<Vec<_>>(), "credit {credit}");
        clients.push(c);
    }

    delete(&b, "doomed").await;
    for c in &mut clients {
        // Caught up or out of credit: the close is the very next thing for `doomed`.
        assert_eq!(events_until_deleted(c, "doomed").await, Vec::<u64>::new());
        assert_not_open(c, "doomed").await;
    }
    publish_n(&b, "kept", 1).await;
    for c in &mut clients {
        match next(c).await {
            ServerMessage::Event(e) => assert_eq!((e.ns.as_str(), e.event.offset), ("kept", 1)),
            m => panic!("{m:?}"),
        }
    }
}

/// One long-poll, sent before the delete; its status and error body.
async fn poll(b: &Broker, path: String, accept: &'static str) -> (StatusCode, String, String) {
    let addr = b.addr;
    let poll = tokio::spawn(async move {
        rewind_tests::request(
            addr,
            Method::GET,
            &path,
            &[("accept", accept)],
            bytes::Bytes::new(),
        )
        .await
        .expect("the poll's answer")
    });
    // The polls wait up to 60 s; "at once" is anything well before that.
    let r = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("the long-poll was answered at the end of its wait, not at the delete")
        .expect("poll task");
    let body = r.json();
    (
        r.status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Issue 8 §3, second input: a long-poll waiting on a namespace is answered 404 at once
/// when the namespace is deleted, at every position it can wait at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_answered_404_at_once_when_its_namespace_is_deleted() {
    let b = Broker::start(&[]);
    // A poll that reaches the broker only after the delete finds no namespace ("does not
    // exist"); that says nothing about waiting polls, so such a round is run again.
    for round in 0..10 {
        let full = format!("full{round}");
        let empty = format!("empty{round}");
        publish_n(&b, &full, 3).await;
        let kept = format!("kept{round}");
        for ns in [&empty, &kept] {
            let created = b.put_json(&format!("/v1/namespaces/{ns}"), "").await;
            assert_eq!(created.status, StatusCode::CREATED);
        }
        // A poll of another namespace is not disturbed: it gets the event published
        // after the deletes (from offset 0, so whenever it arrives).
        let addr = b.addr;
        let kept_path = format!("/v1/namespaces/{kept}/events?from=0&wait=60");
        let kept_poll = tokio::spawn(async move {
            rewind_tests::request(addr, Method::GET, &kept_path, &[], bytes::Bytes::new())
                .await
                .expect("the poll's answer")
        });
        let paths = [
            (
                format!("/v1/namespaces/{full}/events?from=latest&wait=60"),
                "application/json",
            ),
            (
                format!("/v1/namespaces/{full}/events?from=3&wait=60"),
                "application/msgpack",
            ),
            (
                format!("/v1/namespaces/{empty}/events?from=earliest&wait=60"),
                "application/json",
            ),
            (
                format!("/v1/namespaces/{empty}/events?from=0&limit=5&wait=59.5"),
                "application/msgpack",
            ),
        ];
        let polls: Vec<_> = paths
            .into_iter()
            .map(|(path, accept)| {
                let b = &b;
                async move { poll(b, path, accept).await }
            })
            .collect();
        let deletes = async {
            delete(&b, &full).await;
            delete(&b, &empty).await;
        };
        let (answers, ()) = tokio::join!(futures::future::join_all(polls), deletes);
        for (status, code, _) in &answers {
            assert_eq!(
                (*status, code.as_str()),
                (StatusCode::NOT_FOUND, "not_found")
            );
        }
        publish_n(&b, &kept, 1).await;
        let page = tokio::time::timeout(Duration::from_secs(30), kept_poll)
            .await
            .expect("the other namespace's poll was answered by its event")
            .expect("poll task");
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.json()["events"][0]["offset"], 0);
        if answers.iter().all(|(_, _, m)| m.contains("was deleted")) {
            // After the delete, a poll is refused at once too.
            let (status, code, _) = poll(
                &b,
                format!("/v1/namespaces/{full}/events?from=latest&wait=60"),
                "application/json",
            )
            .await;
            assert_eq!(
                (status, code.as_str()),
                (StatusCode::NOT_FOUND, "not_found")
            );
            return;
        }
    }
    panic!("in 10 rounds the polls never reached the broker before the delete");
}

/// Issue 8 §3: `rewind tail` of a namespace that is deleted prints one line on stderr
/// and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_tail_says_the_namespace_was_deleted_and_exits_non_zero() {
    let b = Broker::start(&[]);
    publish_n(&b, "doomed", 1).await;
    let mut tail = Command::new(rewind_bin())
        .args(["tail", "doomed", "--from", "earliest", "--url", &b.url()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tail");
    let mut stdout = BufReader::new(tail.stdout.take().expect("stdout"));
    let mut stderr = tail.stderr.take().expect("stderr");
    let mut first = String::new();
    stdout.read_line(&mut first).expect("a line from tail");
    let v: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(v["offset"], 0);

    delete(&b, "doomed").await;
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = done_tx.send((tail.wait().expect("wait for tail"), out, err));
    });
    let (status, out, err) = done
        .recv_timeout(Duration::from_secs(20))
        .expect("tail exits once its namespace is deleted");
    assert!(!status.success(), "{status:?}");
    assert_eq!(out, "", "nothing more on stdout");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err:?}");
    assert!(
        lines[0].starts_with("rewind: ") && lines[0].contains("doomed was deleted"),
        "{err:?}"
    );
}

mod rust_client {
    use std::time::Duration;

    use futures::StreamExt;
    use rewind_client::{Client, ClientOptions, Item, Subscription};
    use rewind_protocol::Position;
    use rewind_tests::Broker;

    use super::{create, delete, publish_n};

    fn options(buffer: usize) -> ClientOptions {
        ClientOptions {
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            liveness: Duration::from_secs(10),
            buffer,
            ..ClientOptions::default()
        }
    }

    async fn next(sub: &mut Subscription) -> Option<Item> {
        tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("an item, or the end, in time")
    }

    /// Every item until the stream ends.
    async fn all(sub: &mut Subscription) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(item) = next(sub).await {
            items.push(item);
        }
        items
    }

    /// The subscription's buffer is full when the delete comes: `Ended` still arrives,
    /// after every event that came before it, and then the stream ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ended_reaches_a_consumer_whose_buffer_is_full() {
        let b = Broker::start(&[]);
        publish_n(&b, "doomed", 10).await;
        let client = Client::connect(&b.url(), options(4)).await.unwrap();
        create(&b, "barrier").await;
        let mut barrier = client.subscribe("barrier", Position::Latest).await.unwrap();
        assert!(matches!(next(&mut barrier).await, Some(Item::Epoch(_))));
        let mut sub = client
            .subscribe("doomed", Position::Earliest)
            .await
            .unwrap();
        // Four items fill the buffer (the epoch and three events; a fourth event waits
        // in the client): wait until they are there, then delete.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while sub.queued() < 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the buffer never filled"
            );
            tokio::task::yield_now().await;
        }
        delete(&b, "doomed").await;
        // The broker tells at once; an event published after the delete, on the same
        // connection, arrives after that (so the close found the buffer full).
        publish_n(&b, "barrier", 1).await;
        assert!(matches!(next(&mut barrier).await, Some(Item::Event(_))));
        let items = all(&mut sub).await;
        let (last, events) = items.split_last().expect("items");
        assert!(matches!(&items[0], Item::Epoch(_)), "{items:?}");
        let offsets: Vec<u64> = events
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e.offset),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, vec![0, 1, 2, 3], "{items:?}");
        assert_eq!(
            last,
            &Item::Ended {
                reason: "deleted".into()
            }
        );
    }

    /// After `Ended`, subscribing again works (while the old handle is still alive, and
    /// dropping the old handle does not touch the new subscription), with the new epoch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_subscription_after_ended_sees_the_new_incarnation() {
        let b = Broker::start(&[]);
        publish_n(&b, "doomed", 2).await;
        let client = Client::connect(&b.url(), options(64)).await.unwrap();
        let mut old = client
            .subscribe("doomed", Position::Earliest)
            .await
            .unwrap();
        let Some(Item::Epoch(old_epoch)) = next(&mut old).await else {
            panic!("the epoch first");
        };
        for offset in 0..2 {
            match next(&mut old).await {
                Some(Item::Event(e)) => assert_eq!(e.offset, offset),
                other => panic!("{other:?}"),
            }
        }
        delete(&b, "doomed").await;
        assert_eq!(
            next(&mut old).await,
            Some(Item::Ended {
                reason: "deleted".into()
            })
        );
        assert_eq!(next(&mut old).await, None);

        create(&b, "doomed").await;
        let mut new = client.subscribe("doomed", Position::Latest).await.unwrap();
        drop(old);
        let Some(Item::Epoch(new_epoch)) = next(&mut new).await else {
            panic!("the epoch first");
        };
        assert_ne!(new_epoch, old_epoch);
        publish_n(&b, "doomed", 1).await;
        match next(&mut new).await {
            Some(Item::Event(e)) => assert_eq!(e.offset, 2),
            other => panic!("{other:?}"),
        }
    }

    /// A subscription dropped and made again at once on the same client gets nothing the
    /// dropped one was still being sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resubscription_gets_nothing_meant_for_the_dropped_one() {
        let b = Broker::start(&[]);
        publish_n(&b, "r", 500).await;
        let client = Client::connect(&b.url(), options(256)).await.unwrap();
        let old = client.subscribe("r", Position::Earliest).await.unwrap();
        drop(old);
        let mut new = client.subscribe("r", Position::Latest).await.unwrap();
        let first = next(&mut new).await;
        assert!(matches!(first, Some(Item::Epoch(_))), "{first:?}");
        publish_n(&b, "r", 1).await;
        match next(&mut new).await {
            Some(Item::Event(e)) => assert_eq!(e.offset, 500),
            other => panic!("{other:?}"),
        }
    }
}
