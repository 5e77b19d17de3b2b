//! The WebSocket transport against the real binary, with a raw WebSocket client.

use std::collections::HashMap;

use rewind_protocol::frame::{ClientFrame, EventFrame, ServerFrame, ServerMessage};
use rewind_protocol::{Payload, Position};
use rewind_tests::ws::Client;
use rewind_tests::{rss_kib, Broker};
use rewind_tests::{Method, StatusCode};
use tokio_tungstenite::tungstenite::Message;

fn open(ns: &str, from: Position, epoch: Option<&str>, credit: u64) -> ClientFrame {
    ClientFrame::Open {
        ns: ns.into(),
        from,
        epoch: epoch.map(str::to_owned),
        credit,
    }
}

fn publish(id: u64, ns: &str, data: Payload) -> ClientFrame {
    ClientFrame::Publish {
        id,
        ns: ns.into(),
        event: "e".into(),
        data: Some(data),
        key: None,
        idempotency_key: None,
    }
}

async fn expect_frame(c: &mut Client) -> ServerFrame {
    match c.next().await {
        ServerMessage::Frame(f) => f,
        ServerMessage::Event(e) => panic!("expected a frame, got event {e:?}"),
    }
}

async fn expect_event(c: &mut Client) -> EventFrame {
    loop {
        match c.next().await {
            ServerMessage::Event(e) => return e,
            ServerMessage::Frame(ServerFrame::Ping) => {}
            ServerMessage::Frame(f) => panic!("expected an event, got {f:?}"),
        }
    }
}

async fn expect_error(c: &mut Client) -> (String, Option<u64>, Option<String>) {
    match expect_frame(c).await {
        ServerFrame::Error { code, id, ns, .. } => (code, id, ns),
        f => panic!("expected an error, got {f:?}"),
    }
}

/// Creates namespaces: opening a subscription does not (only a publish or a PUT does).
async fn create(b: &Broker, names: &[&str]) {
    for ns in names {
        let r = b.put_json(&format!("/v1/namespaces/{ns}"), "").await;
        assert_eq!(r.status, StatusCode::CREATED, "{ns}");
    }
}

async fn http_publish(b: &Broker, ns: &str, body: String) {
    let r = b
        .post_json(&format!("/v1/namespaces/{ns}/events"), &body)
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test]
async fn multiplexed_namespaces_open_stream_and_close() {
    let b = Broker::start(&[]);
    create(&b, &["a", "b"]).await;
    http_publish(
        &b,
        "a",
        r#"[{"event":"x","data":1},{"event":"x","data":2}]"#.into(),
    )
    .await;
    let mut c = Client::connect(b.addr, None).await;
    c.send(&open("a", Position::Earliest, None, 100)).await;
    c.send(&open("b", Position::Latest, None, 100)).await;
    let mut opened = HashMap::new();
    let mut events: Vec<(String, u64)> = Vec::new();
    while opened.len() < 2 || events.len() < 2 {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Opened {
                ns,
                from,
                earliest,
                next,
                ..
            }) => {
                opened.insert(ns, (from, earliest, next));
            }
            ServerMessage::Event(e) => events.push((e.ns, e.event.offset)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(opened["a"], (0, 0, 2));
    assert_eq!(opened["b"], (0, 0, 0));
    // Live events on both, interleaved on one connection.
    http_publish(&b, "b", r#"{"event":"y","data":"b0"}"#.into()).await;
    http_publish(&b, "a", r#"{"event":"y","data":"a2"}"#.into()).await;
    let mut live = [expect_event(&mut c).await, expect_event(&mut c).await];
    live.sort_by(|x, y| x.ns.cmp(&y.ns));
    assert_eq!((live[0].ns.as_str(), live[0].event.offset), ("a", 2));
    assert_eq!(live[0].event.data, Payload::Json("\"a2\"".into()));
    assert_eq!((live[1].ns.as_str(), live[1].event.offset), ("b", 0));
    c.send(&ClientFrame::Close { ns: "a".into() }).await;
    assert_eq!(
        expect_frame(&mut c).await,
        ServerFrame::Closed {
            ns: "a".into(),
            reason: None
        }
    );
    http_publish(&b, "a", r#"{"event":"z"}"#.into()).await;
    http_publish(&b, "b", r#"{"event":"z"}"#.into()).await;
    let e = expect_event(&mut c).await;
    assert_eq!(
        (e.ns.as_str(), e.event.offset),
        ("b", 1),
        "a is closed, b still flows"
    );
    // App-level ping.
    c.send(&ClientFrame::Ping).await;
    assert_eq!(expect_frame(&mut c).await, ServerFrame::Pong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_reconnects_is_exactly_once_while_publishing() {
    const TOTAL: u64 = 10_000;
    let b = Broker::start(&[]);
    create(&b, &["resume"]).await;
    let addr = b.addr;
    let publisher = tokio::spawn(async move {
        for batch in 0..(TOTAL / 100) {
            let body: Vec<String> = (0..100)
                .map(|i| format!(r#"{{"event":"n","data":{}}}"#, batch * 100 + i))
                .collect();
            let r = rewind_tests::request(
                addr,
                Method::POST,
                "/v1/namespaces/resume/events",
                &[("content-type", "application/json")],
                format!("[{}]", body.join(",")).into(),
            )
            .await
            .unwrap();
            assert_eq!(r.status, StatusCode::CREATED);
        }
    });
    let mut got: Vec<u64> = Vec::new();
    let mut epoch: Option<String> = None;
    let mut connections = 0;
    while (got.len() as u64) < TOTAL {
        connections += 1;
        let mut c = Client::connect(
            addr,
            if connections % 2 == 0 {
                Some("rewind.v1.msgpack")
            } else {
                None
            },
        )
        .await;
        let from = got
            .last()
            .map_or(Position::Earliest, |l| Position::Offset(l + 1));
        c.send(&open("resume", from, epoch.as_deref(), 500)).await;
        match expect_frame(&mut c).await {
            ServerFrame::Opened {
                epoch: e, from: f, ..
            } => {
                if let Some(old) = &epoch {
                    assert_eq!(old, &e, "same log, same epoch");
                }
                epoch = Some(e);
                assert_eq!(f, got.last().map_or(0, |l| l + 1));
            }
            f => panic!("{f:?}"),
        }
        // Take a share of the stream, granting credit as we go, then drop the connection.
        let share = 1_700 + connections * 97;
        let mut taken = 0u64;
        while taken < share && (got.len() as u64) < TOTAL {
            let e = expect_event(&mut c).await;
            let expected = got.last().map_or(0, |l| l + 1);
            assert_eq!(e.event.offset, expected, "no gap, no duplicate");
            assert_eq!(e.event.data, Payload::Json(expected.to_string()));
            got.push(e.event.offset);
            taken += 1;
            if taken.is_multiple_of(250) {
                c.send(&ClientFrame::Credit {
                    ns: "resume".into(),
                    n: 250,
                })
                .await;
            }
        }
        drop(c);
    }
    publisher.await.unwrap();
    assert!(connections >= 6, "only {connections} connections");
    assert_eq!(got, (0..TOTAL).collect::<Vec<_>>());
}

#[tokio::test]
async fn msgpack_and_binary_payloads_both_ways() {
    let b = Broker::start(&[]);
    create(&b, &["bin"]).await;
    let bytes: Vec<u8> = (0..=255u8).rev().collect();
    // JSON encoding: bin: true, then one binary frame, both ways.
    let mut j = Client::connect(b.addr, Some("rewind.v1.json")).await;
    j.send(&open("bin", Position::Earliest, None, 10)).await;
    assert!(matches!(
        expect_frame(&mut j).await,
        ServerFrame::Opened { .. }
    ));
    j.send(&publish(1, "bin", Payload::Bytes(bytes.clone())))
        .await;
    j.send(&publish(2, "bin", Payload::Json(r#"{"k":[1,2]}"#.into())))
        .await;
    let mut published = HashMap::new();
    let mut events = Vec::new();
    while published.len() < 2 || events.len() < 2 {
        match j.next().await {
            ServerMessage::Frame(ServerFrame::Published { id, offset, .. }) => {
                published.insert(id, offset);
            }
            ServerMessage::Event(e) => events.push(e),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (published[&1], published[&2]),
        (0, 1),
        "publishes keep their order"
    );
    assert!(events[0].bin);
    assert_eq!(events[0].event.data, Payload::Bytes(bytes.clone()));
    assert_eq!(events[1].event.data, Payload::Json(r#"{"k":[1,2]}"#.into()));

    // MessagePack: native bytes, and JSON values as MessagePack values.
    let mut m = Client::connect(b.addr, Some("rewind.v1.msgpack")).await;
    assert!(m.msgpack);
    m.send(&open("bin", Position::Offset(0), None, 10)).await;
    assert!(matches!(
        expect_frame(&mut m).await,
        ServerFrame::Opened { from: 0, .. }
    ));
    let e0 = expect_event(&mut m).await;
    assert_eq!(e0.event.data, Payload::Bytes(bytes.clone()));
    let e1 = expect_event(&mut m).await;
    assert_eq!(e1.event.data, Payload::Json(r#"{"k":[1,2]}"#.into()));
    m.send(&publish(9, "bin", Payload::Bytes(vec![1, 2, 3])))
        .await;
    let mut saw_published = false;
    let mut saw_event = false;
    while !(saw_published && saw_event) {
        match m.next().await {
            ServerMessage::Frame(ServerFrame::Published {
                id: 9, offset: 2, ..
            }) => saw_published = true,
            ServerMessage::Event(e) => {
                assert_eq!(e.event.data, Payload::Bytes(vec![1, 2, 3]));
                saw_event = true;
            }
            other => panic!("{other:?}"),
        }
    }
    // And the HTTP read agrees.
    let page = rewind_protocol::codec::ReadPage::from_json(
        &b.get("/v1/namespaces/bin/events?from=2").await.body,
    )
    .unwrap();
    assert_eq!(page.events[0].data, Payload::Bytes(vec![1, 2, 3]));
}

#[tokio::test]
async fn truncation_by_retention_and_by_epoch() {
    let b = Broker::start(&["--retention-interval-ms", "20"]);
    create(&b, &["u"]).await;
    let r = b
        .put_json("/v1/namespaces/t", r#"{"retention":{"max_events":3}}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let epoch = r.json()["epoch"].as_str().unwrap().to_owned();
    for i in 0..10 {
        http_publish(&b, "t", format!(r#"{{"event":"e","data":{i}}}"#)).await;
    }
    b.wait_for("/v1/namespaces/t", |info| info["earliest"] == 7)
        .await;
    let mut c = Client::connect(b.addr, None).await;
    c.send(&open("t", Position::Offset(2), Some(&epoch), 100))
        .await;
    assert_eq!(
        expect_frame(&mut c).await,
        ServerFrame::Opened {
            ns: "t".into(),
            epoch: epoch.clone(),
            from: 7,
            earliest: 7,
            next: 10
        }
    );
    assert_eq!(
        expect_frame(&mut c).await,
        ServerFrame::Truncated {
            ns: "t".into(),
            requested: 2,
            from: 7,
            reason: "retention".into()
        }
    );
    for want in 7..10 {
        assert_eq!(expect_event(&mut c).await.event.offset, want);
    }
    // Another epoch: the client's offsets mean nothing here; it gets the whole log.
    c.send(&open("u", Position::Latest, None, 1)).await;
    assert!(matches!(
        expect_frame(&mut c).await,
        ServerFrame::Opened { .. }
    ));
    let mut c2 = Client::connect(b.addr, None).await;
    c2.send(&open(
        "t",
        Position::Offset(9),
        Some("0123456789abcdef"),
        100,
    ))
    .await;
    assert!(matches!(
        expect_frame(&mut c2).await,
        ServerFrame::Opened { from: 7, .. }
    ));
    assert_eq!(
        expect_frame(&mut c2).await,
        ServerFrame::Truncated {
            ns: "t".into(),
            requested: 9,
            from: 7,
            reason: "epoch".into()
        }
    );
    assert_eq!(expect_event(&mut c2).await.event.offset, 7);
}

/// Publishes about 50 MB to `ns` in batches; returns how many events.
async fn publish_50mb(b: &Broker, ns: &str) -> u64 {
    let payload = "x".repeat(1000);
    let one = format!(r#"{{"event":"big","data":"{payload}"}}"#);
    let batch = format!("[{}]", vec![one.as_str(); 500].join(","));
    for _ in 0..100 {
        http_publish(b, ns, batch.clone()).await;
    }
    50_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_costs_a_cursor_and_does_not_stall_its_neighbours() {
    // Baseline: the same publish with nobody subscribed. A small store cache keeps the
    // store's own memory (which is not the subscriber's cost) from drowning the signal.
    let base = Broker::start(&["--store-cache-bytes", "4194304"]);
    http_publish(&base, "big", r#"{"event":"warm"}"#.into()).await;
    let before = rss_kib(base.pid());
    publish_50mb(&base, "big").await;
    let base_growth = rss_kib(base.pid()).saturating_sub(before);

    let b = Broker::start(&["--store-cache-bytes", "4194304"]);
    create(&b, &["side"]).await;
    http_publish(&b, "big", r#"{"event":"warm"}"#.into()).await;
    let mut c = Client::connect(b.addr, None).await;
    c.send(&open("big", Position::Latest, None, 10)).await;
    c.send(&open("side", Position::Latest, None, 1000)).await;
    assert!(matches!(
        expect_frame(&mut c).await,
        ServerFrame::Opened { .. }
    ));
    assert!(matches!(
        expect_frame(&mut c).await,
        ServerFrame::Opened { .. }
    ));
    let before = rss_kib(b.pid());
    let total = publish_50mb(&b, "big").await;
    http_publish(&b, "side", r#"{"event":"still","data":"flowing"}"#.into()).await;
    let growth = rss_kib(b.pid()).saturating_sub(before);
    // Exactly the 10 credited events of "big", and "side" gets through behind them.
    let mut big = Vec::new();
    loop {
        let e = expect_event(&mut c).await;
        if e.ns == "side" {
            assert_eq!(e.event.data, Payload::Json("\"flowing\"".into()));
            break;
        }
        big.push(e.event.offset);
    }
    assert_eq!(big, (1..=10).collect::<Vec<_>>());
    eprintln!("RSS growth: {growth} KiB with a stalled subscriber, {base_growth} KiB without");
    // A subscriber that buffered the log would add its ~50 MB; the store's own growth
    // varies by ±10 MB between two brokers doing the same work (39–52 MB seen on a busy
    // machine), so the margin is 24 MiB: well above that noise, well below 50 MB.
    assert!(
        growth <= base_growth + 24 * 1024,
        "RSS grew {growth} KiB with a stalled subscriber, {base_growth} KiB without"
    );
    // More credit: it resumes from the log exactly where it stopped.
    c.send(&ClientFrame::Credit {
        ns: "big".into(),
        n: 5,
    })
    .await;
    for want in 11..=15 {
        assert_eq!(expect_event(&mut c).await.event.offset, want);
    }
    assert!(total > 15);
}

#[tokio::test]
async fn every_recoverable_mistake_gets_its_error_code_and_the_connection_stays_up() {
    let b = Broker::start(&["--ws-max-namespaces", "2", "--max-payload-bytes", "100"]);
    create(&b, &["x", "y"]).await;
    let mut c = Client::connect(b.addr, None).await;
    async fn check(c: &mut Client, frame: String, code: &str) {
        c.raw(Message::Text(frame.clone().into())).await;
        let (got, _, _) = expect_error(c).await;
        assert_eq!(got, code, "{frame}");
    }
    check(&mut c, r#"{"t":"open"}"#.into(), "bad_frame").await;
    check(&mut c, r#"{"t":"open","ns":5}"#.into(), "bad_frame").await;
    check(&mut c, r#"{"t":"dance"}"#.into(), "unknown_type").await;
    check(
        &mut c,
        r#"{"t":"open","ns":"a..b"}"#.into(),
        "bad_namespace",
    )
    .await;
    check(
        &mut c,
        r#"{"t":"open","ns":"x","from":99}"#.into(),
        "bad_position",
    )
    .await;
    check(&mut c, r#"{"t":"close","ns":"x"}"#.into(), "not_open").await;
    check(
        &mut c,
        r#"{"t":"credit","ns":"x","n":1}"#.into(),
        "not_open",
    )
    .await;
    let big = format!(
        r#"{{"t":"publish","id":1,"ns":"x","event":"e","data":"{}"}}"#,
        "y".repeat(200)
    );
    check(&mut c, big, "payload_too_large").await;
    let deep = format!(
        r#"{{"t":"publish","id":1,"ns":"x","event":"e","data":{}{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    check(&mut c, deep, "bad_frame").await;
    c.send(&open("x", Position::Latest, None, 1)).await;
    assert!(matches!(
        expect_frame(&mut c).await,
        ServerFrame::Opened { .. }
    ));
    check(&mut c, r#"{"t":"open","ns":"x"}"#.into(), "already_open").await;
    c.send(&open("y", Position::Latest, None, 1)).await;
    assert!(matches!(
        expect_frame(&mut c).await,
        ServerFrame::Opened { .. }
    ));
    check(
        &mut c,
        r#"{"t":"open","ns":"z"}"#.into(),
        "too_many_namespaces",
    )
    .await;
    // The error carries the id of a publish it answers.
    c.raw(Message::Text(r#"{"t":"publish","id":77,"ns":"x"}"#.into()))
        .await;
    assert_eq!(
        expect_error(&mut c).await,
        ("bad_frame".into(), Some(77), Some("x".into()))
    );
    // Still up: a publish goes through.
    c.send(&publish(5, "x", Payload::Json("1".into()))).await;
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Published {
                id: 5, offset: 0, ..
            }) => break,
            ServerMessage::Event(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn broken_input_closes_with_the_right_code_and_never_panics() {
    let b = Broker::start(&["--ws-max-frame-bytes", "65536"]);
    let cases: Vec<(Option<&str>, Message, u16)> = vec![
        (None, Message::Text("not json".into()), 1003),
        (
            None,
            Message::Text(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into()),
            1003,
        ),
        (
            None,
            Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into()),
            1003,
        ),
        (
            Some("rewind.v1.msgpack"),
            Message::Binary(vec![0xc1, 0x00, 0xff].into()),
            1003,
        ),
        (
            Some("rewind.v1.msgpack"),
            Message::Text(r#"{"t":"ping"}"#.into()),
            1003,
        ),
        (None, Message::Text("x".repeat(70_000).into()), 1009),
    ];
    for (protocol, msg, code) in cases {
        let shown = format!("{msg:?}").chars().take(60).collect::<String>();
        let mut c = Client::connect(b.addr, protocol).await;
        c.raw(msg).await;
        assert_eq!(c.close_code().await, Some(code), "{shown}");
    }
    // Invalid UTF-8 in a text frame, and a frame that breaks the protocol, written raw.
    for (bytes, code) in [
        (vec![0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe], 1007u16),
        (vec![0x8b, 0x80, 0, 0, 0, 0], 1002),
    ] {
        let mut c = Client::connect(b.addr, None).await;
        use tokio::io::AsyncWriteExt;
        match c.socket.get_mut() {
            tokio_tungstenite::MaybeTlsStream::Plain(s) => s.write_all(&bytes).await.unwrap(),
            _ => unreachable!(),
        }
        assert_eq!(c.close_code().await, Some(code), "{bytes:?}");
    }
    // A WebSocket-level ping is answered.
    let mut c = Client::connect(b.addr, None).await;
    c.raw(Message::Ping(b"hi".to_vec().into())).await;
    use futures::StreamExt;
    let pong = tokio::time::timeout(rewind_tests::ws::PATIENCE, c.socket.next())
        .await
        .unwrap();
    assert!(matches!(pong, Some(Ok(Message::Pong(p))) if &p[..] == b"hi"));
    assert_eq!(b.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn silence_after_a_ping_drops_the_connection_and_answers_keep_it() {
    let b = Broker::start(&[
        "--ws-ping-interval-secs",
        "1",
        "--ws-ping-timeout-secs",
        "1",
    ]);
    let mut quiet = Client::connect(b.addr, None).await;
    let mut chatty = Client::connect(b.addr, None).await;
    // The quiet one says nothing: it is dropped with a policy close.
    let quiet = tokio::spawn(async move {
        assert_eq!(expect_frame(&mut quiet).await, ServerFrame::Ping);
        quiet.close_code().await
    });
    // The chatty one answers every ping and is still there three pings later.
    for _ in 0..3 {
        assert_eq!(expect_frame(&mut chatty).await, ServerFrame::Ping);
        chatty.send(&ClientFrame::Pong).await;
    }
    assert_eq!(quiet.await.unwrap(), Some(1008));
    chatty.send(&ClientFrame::Ping).await;
    loop {
        match expect_frame(&mut chatty).await {
            ServerFrame::Pong => break,
            ServerFrame::Ping => chatty.send(&ClientFrame::Pong).await,
            f => panic!("{f:?}"),
        }
    }
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let mut b = Broker::start(&[]);
    create(&b, &["s"]).await;
    let mut c = Client::connect(b.addr, None).await;
    c.send(&open("s", Position::Latest, None, 10)).await;
    assert!(matches!(
        expect_frame(&mut c).await,
        ServerFrame::Opened { .. }
    ));
    let waiter = tokio::spawn(async move { c.close_code().await });
    let status = tokio::task::spawn_blocking(move || {
        let s = b.terminate();
        drop(b);
        s
    })
    .await
    .unwrap();
    assert!(status.success());
    assert_eq!(waiter.await.unwrap(), Some(1001));
}

#[tokio::test]
async fn publish_over_websocket_is_idempotent_with_a_key() {
    let b = Broker::start(&[]);
    let mut c = Client::connect(b.addr, None).await;
    let with_key = |id| ClientFrame::Publish {
        id,
        ns: "idem".into(),
        event: "e".into(),
        data: Some(Payload::Json("1".into())),
        key: Some("k".into()),
        idempotency_key: Some("once".into()),
    };
    c.send(&with_key(1)).await;
    c.send(&with_key(2)).await;
    let mut offsets = HashMap::new();
    while offsets.len() < 2 {
        if let ServerFrame::Published { id, offset, .. } = expect_frame(&mut c).await {
            offsets.insert(id, offset);
        }
    }
    assert_eq!((offsets[&1], offsets[&2]), (0, 0));
    assert_eq!(b.get("/v1/namespaces/idem").await.json()["next"], 1);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_503() {
    let b = Broker::start(&["--max-connections", "2"]);
    let mut first = Client::connect(b.addr, None).await;
    let _second = Client::connect(b.addr, None).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", b.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // Closing one frees its slot.
    first.raw(Message::Close(None)).await;
    assert_eq!(first.close_code().await, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", b.addr)).await {
            Ok(_) => break,
            Err(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::task::yield_now().await;
            }
        }
    }
}
