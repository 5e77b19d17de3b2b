//! Many brokers sharing one log in Redis (issue 13, `docs/cluster.md`): the real `rewind`
//! binary, three nodes on one real `redis-server` each test starts, publishes spread over
//! the nodes, subscribers on other nodes, a node killed with `kill -9`, Redis stopped and
//! restarted with and without persistence.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rewind_client::{Client, ClientOptions, Item, Resume, StreamExt, Subscription};
use rewind_protocol::frame::{ClientFrame, ServerFrame, ServerMessage};
use rewind_protocol::Position;
use rewind_tests::redis::{Balancer, Persistence, PubSubStall, RedisServer};
use rewind_tests::{ws, Broker, StatusCode};

/// Every test's deadline for a condition it waits on.
const PATIENCE: Duration = Duration::from_secs(20);

fn node(redis: &RedisServer, extra: &[&str]) -> Broker {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str(), "--redis-heal-interval-ms", "100"];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

fn nodes(redis: &RedisServer, n: usize) -> Vec<Broker> {
    (0..n).map(|_| node(redis, &[])).collect()
}

fn options() -> ClientOptions {
    ClientOptions {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        liveness: Duration::from_secs(10),
        buffer: 64,
        root_certificates: Vec::new(),
        token: None,
    }
}

async fn next(sub: &mut Subscription) -> Item {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on")
}

/// Takes items until `n` events have arrived; returns their offsets and payloads.
async fn events(sub: &mut Subscription, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(sub).await {
            Item::Event(e) => out.push((e.offset, format!("{:?}", e.data))),
            Item::Epoch(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

/// A raw WebSocket subscription to `ns` on `b` from offset `from`: every event frame the
/// broker sends, not de-duplicated (the Rust client drops offsets below its next one, so it
/// would hide a duplicate).
async fn raw_subscribe(b: &Broker, ns: &str, from: u64) -> ws::Client {
    let mut c = ws::Client::connect(b.addr, None).await;
    c.send(&ClientFrame::Open {
        ns: ns.to_owned(),
        from: Position::Offset(from),
        epoch: None,
        credit: 1_000_000,
    })
    .await;
    c
}

/// Takes the next `n` events of a raw subscription and asserts their offsets are exactly
/// `from`, `from + 1`, ...: no gap, no duplicate, no reordering.
async fn consecutive(c: &mut ws::Client, from: u64, n: u64) {
    let mut want = from;
    while want < from + n {
        match c.next().await {
            ServerMessage::Event(e) => {
                assert_eq!(e.event.offset, want, "a gap, a duplicate or out of order");
                want += 1;
            }
            ServerMessage::Frame(
                f @ (ServerFrame::Closed { .. } | ServerFrame::Truncated { .. }),
            ) => panic!("at {want}: {f:?}"),
            ServerMessage::Frame(_) => {}
        }
    }
}

/// Waits until a long-poll is parked on `b` (its `rewind_long_poll_waits` gauge is 1).
async fn parked(b: &Broker) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = String::from_utf8(b.get("/metrics").await.body.to_vec()).expect("UTF-8");
        if text.lines().any(|l| l == "rewind_long_poll_waits 1") {
            return;
        }
        assert!(Instant::now() < deadline, "no long-poll parked: {text}");
        tokio::task::yield_now().await;
    }
}

async fn publish(b: &Broker, ns: &str, i: u64) -> (StatusCode, serde_json::Value) {
    let r = b
        .post_json(
            &format!("/v1/namespaces/{ns}/events"),
            &format!(r#"{{"event":"n","data":{i}}}"#),
        )
        .await;
    let status = r.status;
    (status, r.json())
}

async fn publish_ok(b: &Broker, ns: &str, i: u64) -> u64 {
    let (status, body) = publish(b, ns, i).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["offset"].as_u64().expect("an offset")
}

/// Node A on `redis`, and node B reaching it through a [`PubSubStall`] and re-reading the
/// store once a minute, with a subscriber on B that has read `ns`'s offsets 0 and 1
/// (published on A), and B's first heal done. The listener asks its writer for a heal once
/// subscribed, before it reads any announcement: once event 1 reached B's subscriber, that
/// heal is queued, and once the writer answered a later command, it is done. B then hears
/// of A's appends through its Pub/Sub connection only, which the proxy can hold back.
async fn lagging_node(redis: &RedisServer, ns: &str) -> (PubSubStall, Broker, Broker, ws::Client) {
    let proxy = PubSubStall::start(([127, 0, 0, 1], redis.port).into()).await;
    let a = node(redis, &[]);
    let url = proxy.url();
    let b = Broker::start(&["--redis", &url, "--redis-heal-interval-ms", "60000"]);
    publish_ok(&a, ns, 0).await;
    let mut sub = raw_subscribe(&b, ns, 0).await;
    consecutive(&mut sub, 0, 1).await;
    let deadline = Instant::now() + PATIENCE;
    while proxy.subscribed() == 0 {
        assert!(Instant::now() < deadline, "B's listener never subscribed");
        tokio::task::yield_now().await;
    }
    publish_ok(&a, ns, 1).await;
    consecutive(&mut sub, 1, 1).await;
    let r = b.put_json("/v1/namespaces/after-the-heal", "{}").await;
    assert!(r.status.is_success(), "{:?}", r.status);
    (proxy, a, b, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_spread_over_three_nodes_make_one_dense_log_every_node_reads_alike() {
    let redis = RedisServer::start(Persistence::None);
    let nodes = nodes(&redis, 3);
    // Concurrent publishers, each on its own node.
    let mut tasks = Vec::new();
    for (n, b) in nodes.iter().enumerate() {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..20u64 {
                let r = rewind_tests::request(
                    addr,
                    rewind_tests::Method::POST,
                    "/v1/namespaces/shared/events",
                    &[("content-type", "application/json")],
                    format!(r#"{{"event":"n","data":{}}}"#, n as u64 * 1000 + i).into(),
                )
                .await
                .expect("publish");
                assert_eq!(r.status, StatusCode::CREATED);
                got.push(r.json()["offset"].as_u64().expect("offset"));
            }
            got
        }));
    }
    let mut offsets = BTreeSet::new();
    for t in tasks {
        for o in t.await.expect("publisher") {
            assert!(offsets.insert(o), "offset {o} handed out twice");
        }
    }
    assert_eq!(offsets, (0..60).collect::<BTreeSet<u64>>());
    let mut pages = Vec::new();
    for b in &nodes {
        let page = b
            .get("/v1/namespaces/shared/events?from=0&limit=100")
            .await
            .json();
        let got: Vec<u64> = page["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["offset"].as_u64().expect("offset"))
            .collect();
        assert_eq!(got, (0..60).collect::<Vec<u64>>());
        pages.push(page);
    }
    assert_eq!(pages[0], pages[1]);
    assert_eq!(pages[1], pages[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_node_gets_what_the_others_publish_in_order() {
    let redis = RedisServer::start(Persistence::None);
    let nodes = nodes(&redis, 3);
    publish_ok(&nodes[0], "live", 0).await;
    let client = Client::connect(&nodes[1].url(), options()).await.unwrap();
    let mut sub = client.subscribe("live", Position::Offset(0)).await.unwrap();
    assert_eq!(events(&mut sub, 1).await, [(0, "Json(\"0\")".to_owned())]);
    // Live: node B only hears of these through Redis.
    for i in 1..=30u64 {
        let on = if i % 2 == 0 { &nodes[0] } else { &nodes[2] };
        publish_ok(on, "live", i).await;
    }
    let got = events(&mut sub, 30).await;
    let want: Vec<(u64, String)> = (1..=30).map(|i| (i, format!("Json(\"{i}\")"))).collect();
    assert_eq!(got, want);
    // A long-poll on node C wakes for a publish on node A.
    let c = nodes[2].addr;
    let poll = tokio::spawn(async move {
        rewind_tests::request(
            c,
            rewind_tests::Method::GET,
            "/v1/namespaces/live/events?from=31&wait=20",
            &[],
            bytes::Bytes::new(),
        )
        .await
        .expect("long-poll")
        .json()
    });
    // Parked before the publish, or the test would not exercise the wake.
    parked(&nodes[2]).await;
    publish_ok(&nodes[0], "live", 31).await;
    let page = tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("the long-poll woke")
        .expect("long-poll task");
    assert_eq!(page["events"][0]["offset"], 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_node_ends_subscriptions_on_the_others() {
    let redis = RedisServer::start(Persistence::None);
    let nodes = nodes(&redis, 2);
    publish_ok(&nodes[0], "gone", 0).await;
    let client = Client::connect(&nodes[1].url(), options()).await.unwrap();
    let mut sub = client.subscribe("gone", Position::Offset(0)).await.unwrap();
    assert_eq!(events(&mut sub, 1).await.len(), 1);
    let r = nodes[0]
        .request(
            rewind_tests::Method::DELETE,
            "/v1/namespaces/gone",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    match next(&mut sub).await {
        Item::Ended { reason } => assert_eq!(reason, "deleted"),
        other => panic!("expected the end, got {other:?}"),
    }
    let r = nodes[1].get("/v1/namespaces/gone").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_node_the_client_resumes_on_another_with_no_gap_and_no_duplicate() {
    let redis = RedisServer::start(Persistence::None);
    let mut nodes = nodes(&redis, 3);
    let balancer = Balancer::start(nodes.iter().map(|b| b.addr).collect()).await;
    publish_ok(&nodes[0], "k", 0).await;
    // The balancer's first connection, the client's, goes to node 0, and each reconnect
    // to the next node in turn that is still in the rotation.
    let client = Client::connect(&balancer.url(), options()).await.unwrap();
    let mut sub = client.subscribe("k", Position::Offset(0)).await.unwrap();
    let mut seen = events(&mut sub, 1).await;
    for i in 1..50u64 {
        publish_ok(&nodes[(i % 3) as usize], "k", i).await;
    }
    seen.extend(events(&mut sub, 49).await);
    for victim in 0..2 {
        balancer.remove(nodes[victim].addr);
        nodes[victim].kill9();
        for i in 0..10u64 {
            publish_ok(&nodes[2], "k", 50 + victim as u64 * 10 + i).await;
        }
        seen.extend(events(&mut sub, 10).await);
    }
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..70).collect::<Vec<u64>>());
    let payloads: Vec<String> = seen.iter().map(|(_, d)| d.clone()).collect();
    let want: Vec<String> = (0..70).map(|i| format!("Json(\"{i}\")")).collect();
    assert_eq!(payloads, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_persistence_gives_a_new_epoch_that_resuming_clients_are_told() {
    let mut redis = RedisServer::start(Persistence::None);
    let nodes = nodes(&redis, 2);
    for i in 0..5 {
        publish_ok(&nodes[0], "lost", i).await;
    }
    let before = nodes[1].get("/v1/namespaces/lost").await.json();
    let old_epoch = before["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(before["next"], 5);
    redis.restart();
    // The next node to notice gives the namespace a new epoch, and both serve it (a
    // read's page carries the epoch of the log the node serves).
    let page = "/v1/namespaces/lost/events?from=0";
    let after = nodes[1]
        .wait_for(page, |v| {
            v["epoch"].as_str().is_some_and(|e| e != old_epoch)
        })
        .await;
    let new_epoch = after["epoch"].as_str().expect("epoch").to_owned();
    nodes[0]
        .wait_for(page, |v| v["epoch"] == new_epoch.as_str())
        .await;
    assert_eq!(
        nodes[0].get("/v1/namespaces/lost").await.json()["epoch"],
        new_epoch.as_str()
    );
    assert_eq!(publish_ok(&nodes[0], "lost", 100).await, 0);
    // A client resuming after offset 4 of the old log is told, not fed the new log's 0.
    let client = Client::connect(&nodes[1].url(), options()).await.unwrap();
    let resume = Resume {
        next: 5,
        epoch: old_epoch.clone(),
    };
    let mut sub = client.subscribe("lost", resume).await.unwrap();
    let mut items = Vec::new();
    while !items.iter().any(|i| matches!(i, Item::Event(_))) {
        match tokio::time::timeout(PATIENCE, sub.next()).await {
            Ok(Some(item)) => items.push(item),
            other => panic!("after {items:?}: {other:?}"),
        }
    }
    assert!(
        items.iter().any(|i| matches!(
            i,
            Item::Truncated { requested: 5, from: 0, reason } if reason == "epoch"
        )),
        "{items:?}"
    );
    assert!(items.contains(&Item::Epoch(new_epoch)), "{items:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_publishes_get_503_unavailable_and_everything_recovers_after() {
    let mut redis = RedisServer::start(Persistence::AofAlways);
    let nodes = nodes(&redis, 2);
    publish_ok(&nodes[0], "down", 0).await;
    let client = Client::connect(&nodes[1].url(), options()).await.unwrap();
    let mut sub = client.subscribe("down", Position::Offset(0)).await.unwrap();
    assert_eq!(events(&mut sub, 1).await.len(), 1);
    redis.stop();
    let r = nodes[0]
        .post_json("/v1/namespaces/down/events", r#"{"event":"n","data":1}"#)
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "unavailable");
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let ready = nodes[1]
        .wait_for("/readyz", |v| v["status"] == "storage_unavailable")
        .await;
    assert_eq!(ready["error"]["code"], "unavailable");
    redis.restart();
    // Publishes are taken again once Redis answers; nothing was stored meanwhile.
    let deadline = Instant::now() + PATIENCE;
    let offset = loop {
        let (status, body) = publish(&nodes[0], "down", 1).await;
        if status == StatusCode::CREATED {
            break body["offset"].as_u64().expect("offset");
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < deadline, "publishes never recovered");
        tokio::task::yield_now().await;
    };
    assert_eq!(offset, 1);
    nodes[1]
        .wait_for("/readyz", |v| v["status"] == "ready")
        .await;
    // The subscriber on the other node goes on by itself.
    assert_eq!(events(&mut sub, 1).await[0].0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_a_replica_that_is_not_there_says_not_replicated_and_stores_anyway() {
    let redis = RedisServer::start(Persistence::None);
    let waiting = node(
        &redis,
        &[
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "50",
        ],
    );
    let plain = node(&redis, &[]);
    let (status, body) = publish(&waiting, "w", 0).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["replicated"], false, "{body}");
    assert_eq!(body["offset"], 0);
    let r = waiting
        .post_json(
            "/v1/namespaces/w/events",
            r#"[{"event":"n","data":1},{"event":"n","data":2}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.json(),
        serde_json::json!({"first": 1, "last": 2, "replicated": false})
    );
    // The same on WebSocket, in JSON and MessagePack: `published` says `replicated`
    // false, and the event is stored.
    for (offset, protocol) in (3..).zip(["rewind.v1.json", "rewind.v1.msgpack"]) {
        let mut c = ws::Client::connect(waiting.addr, Some(protocol)).await;
        c.send(&ClientFrame::Publish {
            id: 7,
            ns: "w".into(),
            event: "n".into(),
            data: Some(rewind_protocol::Payload::Json("5".into())),
            key: None,
            idempotency_key: None,
        })
        .await;
        match c.next().await {
            ServerMessage::Frame(f) => assert_eq!(
                f,
                ServerFrame::Published {
                    id: 7,
                    ns: "w".into(),
                    offset,
                    replicated: Some(false)
                },
                "{protocol}"
            ),
            other => panic!("{protocol}: {other:?}"),
        }
    }
    // Without WAIT the answer is as always, and the events are there for every node.
    let mut c = ws::Client::connect(plain.addr, None).await;
    c.send(&ClientFrame::Publish {
        id: 8,
        ns: "w".into(),
        event: "n".into(),
        data: Some(rewind_protocol::Payload::Json("6".into())),
        key: None,
        idempotency_key: None,
    })
    .await;
    match c.next().await {
        ServerMessage::Frame(f) => assert_eq!(
            f,
            ServerFrame::Published {
                id: 8,
                ns: "w".into(),
                offset: 5,
                replicated: None
            }
        ),
        other => panic!("{other:?}"),
    }
    let (status, body) = publish(&plain, "w", 3).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, serde_json::json!({"offset": 6}));
    let page = plain.get("/v1/namespaces/w/events?from=0").await.json();
    assert_eq!(page["events"].as_array().map(Vec::len), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_every_node_get_concurrent_publishes_from_all_nodes_once_in_order() {
    let redis = RedisServer::start(Persistence::None);
    let nodes = nodes(&redis, 3);
    publish_ok(&nodes[0], "burst", 0).await;
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for b in &nodes {
        let client = Client::connect(&b.url(), options()).await.unwrap();
        subs.push(
            client
                .subscribe("burst", Position::Offset(0))
                .await
                .unwrap(),
        );
        clients.push(client);
    }
    // And a raw reader on every node, which sees a duplicate if the broker sends one.
    let mut raws = Vec::new();
    for b in &nodes {
        let mut raw = raw_subscribe(b, "burst", 0).await;
        consecutive(&mut raw, 0, 1).await;
        raws.push(raw);
    }
    // Batches from every node at once, so each node's appends interleave with the others'.
    let mut tasks = Vec::new();
    for b in &nodes {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let body: Vec<String> = (0..10)
                    .map(|_| r#"{"event":"n","data":"x"}"#.to_owned())
                    .collect();
                let r = rewind_tests::request(
                    addr,
                    rewind_tests::Method::POST,
                    "/v1/namespaces/burst/events",
                    &[("content-type", "application/json")],
                    format!("[{}]", body.join(",")).into(),
                )
                .await
                .expect("publish");
                assert_eq!(r.status, StatusCode::CREATED);
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    for sub in &mut subs {
        let offsets: Vec<u64> = events(sub, 301).await.into_iter().map(|e| e.0).collect();
        assert_eq!(offsets, (0..301).collect::<Vec<u64>>());
    }
    for raw in &mut raws {
        consecutive(raw, 1, 300).await;
    }
}

/// Review F3: with Redis the writer made its own appends visible without waking the
/// live ring, and the listener, on first sight of a namespace, started from that visible
/// end: a subscriber on the publishing node waited for the next append. Several fresh
/// namespaces, each one a listener's first sight of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_the_publishing_node_gets_each_event_at_once() {
    let redis = RedisServer::start(Persistence::None);
    let b = node(&redis, &[]);
    // A client that would reconnect after a silence shorter than PATIENCE hides a stall.
    let patient = ClientOptions {
        liveness: PATIENCE * 3,
        ..options()
    };
    let client = Client::connect(&b.url(), patient).await.unwrap();
    for k in 0..8u64 {
        let ns = format!("same{k}");
        let r = b.put_json(&format!("/v1/namespaces/{ns}"), "{}").await;
        assert!(r.status.is_success(), "{:?}", r.status);
        let mut sub = client.subscribe(&ns, Position::Offset(0)).await.unwrap();
        for i in 0..3u64 {
            assert_eq!(publish_ok(&b, &ns, i).await, i);
            assert_eq!(
                events(&mut sub, 1).await,
                [(i, format!("Json(\"{i}\")"))],
                "{ns}"
            );
        }
    }
}

/// Review F1: node B's listener fed the next incarnation's events into the one it had
/// (CREATE keeps `next`, so the new incarnation's offsets follow the old one's): B's
/// subscriber got them under the old epoch before it heard of the delete. Now it hears
/// `closed` `deleted`, and no event past what the old incarnation held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_and_recreate_on_one_node_never_feeds_the_old_incarnation_on_another() {
    let redis = RedisServer::start(Persistence::None);
    let nodes = nodes(&redis, 2);
    for round in 0..3u64 {
        let ns = format!("again{round}");
        for i in 0..5 {
            publish_ok(&nodes[0], &ns, i).await;
        }
        let patient = ClientOptions {
            liveness: PATIENCE * 3,
            ..options()
        };
        let client = Client::connect(&nodes[1].url(), patient).await.unwrap();
        let mut sub = client.subscribe(&ns, Position::Offset(0)).await.unwrap();
        assert_eq!(events(&mut sub, 5).await.len(), 5);
        let a = nodes[0].addr;
        let path = format!("/v1/namespaces/{ns}");
        let ns2 = ns.clone();
        let again = tokio::spawn(async move {
            let r = rewind_tests::request(
                a,
                rewind_tests::Method::DELETE,
                &path,
                &[],
                bytes::Bytes::new(),
            )
            .await
            .expect("delete");
            assert_eq!(r.status, StatusCode::NO_CONTENT);
            for i in 0..20u64 {
                let r = rewind_tests::request(
                    a,
                    rewind_tests::Method::POST,
                    &format!("/v1/namespaces/{ns2}/events"),
                    &[("content-type", "application/json")],
                    format!(r#"{{"event":"n","data":{}}}"#, 100 + i).into(),
                )
                .await
                .expect("publish");
                assert_eq!(r.status, StatusCode::CREATED);
            }
        });
        loop {
            match next(&mut sub).await {
                Item::Ended { reason } => {
                    assert_eq!(reason, "deleted");
                    break;
                }
                Item::Event(e) => panic!("{ns}: the old incarnation was fed {e:?}"),
                _ => {}
            }
        }
        again.await.expect("publisher");
    }
}

/// Review F14: the same `Idempotency-Key` sent at once to two nodes appends once, and both
/// publishers get the same offsets (the record lives in Redis, checked in the same script
/// that appends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_two_nodes_at_once_appends_once() {
    let redis = RedisServer::start(Persistence::None);
    let nodes = nodes(&redis, 2);
    publish_ok(&nodes[0], "idem", 0).await;
    for k in 0..10u64 {
        let key = format!("key-{k}");
        let body = format!(r#"[{{"event":"n","data":{k}}},{{"event":"n","data":{k}}}]"#);
        let mut tasks = Vec::new();
        for b in &nodes {
            let (addr, key, body) = (b.addr, key.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let r = rewind_tests::request(
                    addr,
                    rewind_tests::Method::POST,
                    "/v1/namespaces/idem/events",
                    &[
                        ("content-type", "application/json"),
                        ("idempotency-key", key.as_str()),
                    ],
                    body.into(),
                )
                .await
                .expect("publish");
                assert!(r.status.is_success(), "{:?}", r.status);
                let v = r.json();
                (v["first"].as_u64(), v["last"].as_u64())
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.expect("publisher"));
        }
        assert_eq!(got[0], got[1], "{key}: two appends");
        assert_eq!(got[0], (Some(1 + 2 * k), Some(2 + 2 * k)), "{key}");
    }
    let page = nodes[1]
        .get("/v1/namespaces/idem/events?from=0&limit=100")
        .await
        .json();
    assert_eq!(page["events"].as_array().map(Vec::len), Some(21));
}

/// A client told an offset by one node starts there on another at once (found by a
/// new-user tester: `open` with the true next refused `bad_position` 66/200): the other
/// node's visible end lags Redis until it hears the announcement, and a start beyond it
/// but within what Redis holds is looked up in Redis, not refused — on every transport.
/// The lag is made, not hoped for: node B reaches Redis through a proxy that holds back
/// its Pub/Sub connection, and re-reads the store only once a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_a_lagging_node_has_not_heard_of_yet_is_taken_on_every_transport() {
    let redis = RedisServer::start(Persistence::None);
    let (proxy, a, b, mut early) = lagging_node(&redis, "lag").await;
    assert_eq!(proxy.subscribed(), 1, "one Pub/Sub connection");
    proxy.stall();
    for i in 2..6 {
        assert_eq!(publish_ok(&a, "lag", i).await, i);
    }
    assert_eq!(
        head_on(&b, "lag").await,
        Some(2),
        "B has heard of 2..=5 already"
    );
    // Its answers hold what Redis holds, heard or not.
    let known = b.get("/v1/namespaces/lag").await.json();
    assert_eq!(known["next"], 6, "{known}");
    // WebSocket `open` at the true next.
    let mut c = raw_subscribe(&b, "lag", 6).await;
    match c.next().await {
        ServerMessage::Frame(ServerFrame::Opened { from, next, .. }) => {
            assert_eq!((from, next), (6, 6))
        }
        other => panic!("open at 6 on the lagging node: {other:?}"),
    }
    // Beyond what Redis holds is still refused.
    let r = b.get("/v1/namespaces/lag/events?from=8").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "beyond Redis's next");
    // Long-poll (a read) at the true next.
    assert_eq!(publish_ok(&a, "lag", 6).await, 6);
    let r = b.get("/v1/namespaces/lag/events?from=7").await;
    assert_eq!(r.status, StatusCode::OK, "read at 7: {:?}", r.json());
    assert_eq!(r.json()["next"], 7);
    // SSE at the true next.
    assert_eq!(publish_ok(&a, "lag", 7).await, 7);
    let sse = rewind_tests::sse::Sse::open(b.addr, "/v1/namespaces/lag/sse?from=8", &[]).await;
    assert_eq!(sse.status, 200, "SSE at 8: {:?}", sse.headers);
    // What was held back arrives, in order, once the node hears again.
    proxy.resume();
    consecutive(&mut early, 2, 6).await;
}

/// Sends `DELETE /v1/namespaces/{ns}` to `b` and asserts it was deleted.
async fn delete_ns(b: &Broker, ns: &str) {
    let r = rewind_tests::request(
        b.addr,
        rewind_tests::Method::DELETE,
        &format!("/v1/namespaces/{ns}"),
        &[],
        bytes::Bytes::new(),
    )
    .await
    .expect("delete");
    assert_eq!(r.status, StatusCode::NO_CONTENT, "delete {ns}");
}

/// The next frame of a raw subscription that is not `opened` must be `closed` with
/// `reason`: no event and no `truncated` of a deleted (or lost) incarnation before it.
async fn closed_first(c: &mut ws::Client, ns: &str, reason: &str) {
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Opened { .. }) => {}
            ServerMessage::Frame(ServerFrame::Closed { reason: r, .. }) => {
                assert_eq!(r.as_deref(), Some(reason), "{ns}");
                return;
            }
            other => panic!("{ns}: before closed {reason}: {other:?}"),
        }
    }
}

/// Tester finding 3: a node whose listener is behind reads a namespace by name across a
/// delete. Its feed read the re-created incarnation's events into the old one's ring (a
/// `truncated` reason `retention`, then the new incarnation's events under the old epoch),
/// and a catch-up found the old log gone and jumped to the visible end (`truncated`
/// reason `retention`, no retention configured). Every read now checks the incarnation
/// in the same step; a reader that finds it gone gets `closed` and nothing else. The lag
/// is made, not hoped for: node B's Pub/Sub connection is held back by a proxy, and B
/// re-reads the store once a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_never_reads_across_a_delete_by_name() {
    let redis = RedisServer::start(Persistence::None);
    let (proxy, a, b, mut fed) = lagging_node(&redis, "inc").await;
    for i in 0..10 {
        assert_eq!(publish_ok(&a, "caught", i).await, i);
    }
    let mut early = raw_subscribe(&b, "caught", 0).await;
    consecutive(&mut early, 0, 10).await;

    proxy.stall();
    // The feed: 2 and 3 of the old incarnation, then a delete and a re-create (offsets
    // continue at 4) whose events B's listener must not read into the old ring.
    assert_eq!(publish_ok(&a, "inc", 2).await, 2);
    assert_eq!(publish_ok(&a, "inc", 3).await, 3);
    delete_ns(&a, "inc").await;
    for i in 104..108 {
        assert_eq!(publish_ok(&a, "inc", i).await, i - 100);
    }
    // The catch-up: B still serves `caught` with 10 visible; a new subscriber from 0
    // reads a log that is gone.
    delete_ns(&a, "caught").await;
    let mut late = raw_subscribe(&b, "caught", 0).await;
    match late.next().await {
        ServerMessage::Frame(ServerFrame::Opened { next, .. }) => assert_eq!(next, 10),
        other => panic!("open on the lagging node: {other:?}"),
    }
    // SSE and HTTP reads of the same gone log on the lagging node.
    let mut sse =
        rewind_tests::sse::Sse::open(b.addr, "/v1/namespaces/caught/sse?from=0", &[]).await;
    assert_eq!(
        sse.status, 200,
        "SSE on the lagging node: {:?}",
        sse.headers
    );
    let r = b.get("/v1/namespaces/caught/events?from=0").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found"),
        "an HTTP read of the deleted log: {:?}",
        r.json()
    );
    proxy.resume();
    closed_first(&mut late, "caught", "deleted").await;
    closed_first(&mut fed, "inc", "deleted").await;
    closed_first(&mut early, "caught", "deleted").await;
    loop {
        let m = sse.message().await;
        match m.event.as_str() {
            "rewind.opened" => {}
            "rewind.closed" => {
                assert_eq!(m.json()["reason"], "deleted", "{m:?}");
                break;
            }
            _ => panic!("SSE before rewind.closed: {m:?}"),
        }
    }

    // Redis loses everything while B is not listening: node A notices and creates `lost`
    // again with a new epoch; B's subscribers of the old one are told `epoch`, and a
    // catch-up there sends nothing of the new log under the old epoch.
    for i in 0..5 {
        assert_eq!(publish_ok(&a, "lost", i).await, i);
    }
    let mut held = raw_subscribe(&b, "lost", 0).await;
    consecutive(&mut held, 0, 5).await;
    let old = a.get("/v1/namespaces/lost").await.json()["epoch"].clone();
    proxy.stall();
    redis.command(&["FLUSHALL"]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = a.get("/v1/namespaces/lost").await;
        if now.status == StatusCode::OK && now.json()["epoch"] != old {
            break;
        }
        assert!(Instant::now() < deadline, "A never created `lost` again");
        tokio::task::yield_now().await;
    }
    let mut after = raw_subscribe(&b, "lost", 0).await;
    match after.next().await {
        ServerMessage::Frame(ServerFrame::Opened { next, epoch, .. }) => {
            assert_eq!((next, serde_json::Value::from(epoch)), (5, old))
        }
        other => panic!("open on the lagging node: {other:?}"),
    }
    proxy.resume();
    closed_first(&mut after, "lost", "epoch").await;
    closed_first(&mut held, "lost", "epoch").await;
}

/// The epoch node `a` serves for `ns` now.
async fn epoch_on(a: &Broker, ns: &str) -> String {
    let info = a.get(&format!("/v1/namespaces/{ns}")).await.json();
    info["epoch"].as_str().expect("an epoch").to_owned()
}

/// A raw WebSocket `open` of `ns` on `b` at `from` with `epoch`; asserts the broker opens
/// the incarnation `epoch` at `from`, then sends `n` events from there with no
/// `truncated` and nothing of another incarnation.
async fn opened_with_epoch(b: &Broker, ns: &str, from: u64, epoch: &str, n: u64) {
    let mut c = ws::Client::connect(b.addr, None).await;
    c.send(&ClientFrame::Open {
        ns: ns.to_owned(),
        from: Position::Offset(from),
        epoch: Some(epoch.to_owned()),
        credit: 1_000_000,
    })
    .await;
    match c.next().await {
        ServerMessage::Frame(ServerFrame::Opened {
            from: opened,
            epoch: e,
            ..
        }) => assert_eq!((opened, e.as_str()), (from, epoch), "{ns}"),
        other => panic!("{ns}: open on the lagging node: {other:?}"),
    }
    consecutive(&mut c, from, n).await;
}

/// Review F1, the rest: a node that has not heard yet that another node deleted and
/// created a namespace again (or that Redis lost its data and another node created it
/// anew) judged a client's start against its own, stale incarnation. A client that had
/// the new epoch from another node got `truncated` reason `epoch` over WebSocket and SSE,
/// and an HTTP read `404` `not_found` though the namespace is there. Now a start with an
/// epoch other than the node's own, or a read that finds the node's incarnation gone, is
/// looked up in Redis first. The lag is made: node B's Pub/Sub is held back, and B
/// re-reads the store once a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_serves_a_client_the_epoch_another_node_gave_it() {
    let redis = RedisServer::start(Persistence::None);
    let (proxy, a, b, _fed) = lagging_node(&redis, "lag").await;
    let names = ["ws", "sse", "read", "flushed"];
    for ns in names {
        for i in 0..5 {
            assert_eq!(publish_ok(&a, ns, i).await, i);
        }
        let known = b.get(&format!("/v1/namespaces/{ns}")).await;
        assert_eq!(known.status, StatusCode::OK, "B knows {ns}");
    }
    let old = epoch_on(&b, "ws").await;
    proxy.stall();
    // Deleted and created again on A; the offsets go on at 5, which B takes for its
    // own incarnation's end: only the epoch tells them apart.
    for ns in ["ws", "sse", "read"] {
        delete_ns(&a, ns).await;
        for i in 5..8 {
            assert_eq!(publish_ok(&a, ns, i).await, i);
        }
    }
    let new = epoch_on(&a, "ws").await;
    assert_ne!(new, old);

    // WebSocket `open` at 5 with the epoch A gave.
    opened_with_epoch(&b, "ws", 5, &new, 3).await;
    // SSE at 5 with the epoch A gave: `rewind.opened` of that epoch, then event 5.
    let new_sse = epoch_on(&a, "sse").await;
    let path = format!("/v1/namespaces/sse/sse?from=5&epoch={new_sse}");
    let mut sse = rewind_tests::sse::Sse::open(b.addr, &path, &[]).await;
    assert_eq!(
        sse.status, 200,
        "SSE on the lagging node: {:?}",
        sse.headers
    );
    let opened = sse.message().await;
    assert_eq!(opened.event, "rewind.opened", "{opened:?}");
    assert_eq!(
        (
            opened.json()["epoch"].as_str(),
            opened.json()["from"].as_u64()
        ),
        (Some(new_sse.as_str()), Some(5)),
        "{opened:?}"
    );
    let first = sse.message().await;
    assert_eq!(first.id.as_deref(), Some("5"), "not event 5: {first:?}");
    // An HTTP read (no epoch to give) of the namespace created again: its events.
    let r = b.get("/v1/namespaces/read/events?from=5").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "read on the lagging node: {:?}",
        r.json()
    );
    let page = r.json();
    assert_eq!(
        page["epoch"].as_str(),
        Some(epoch_on(&a, "read").await.as_str())
    );
    let offsets: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["offset"].as_u64().expect("an offset"))
        .collect();
    assert_eq!(offsets, [5, 6, 7]);

    // Redis loses its data; A creates `flushed` again with a new epoch from 0.
    let before = epoch_on(&a, "flushed").await;
    redis.command(&["FLUSHALL"]);
    let deadline = Instant::now() + PATIENCE;
    let lost = loop {
        let now = a.get("/v1/namespaces/flushed").await;
        if now.status == StatusCode::OK && now.json()["epoch"] != before.as_str() {
            break now.json()["epoch"].as_str().expect("an epoch").to_owned();
        }
        assert!(Instant::now() < deadline, "A never created `flushed` again");
        tokio::task::yield_now().await;
    };
    assert_eq!(publish_ok(&a, "flushed", 0).await, 0);
    assert_eq!(epoch_on(&a, "flushed").await, lost, "a second loss");
    opened_with_epoch(&b, "flushed", 0, &lost, 1).await;
    proxy.resume();
}

/// Waits until Redis holds a client back in `CLIENT PAUSE WRITE` (flag `b`) on `cmd`.
async fn held_in_pause(redis: &RedisServer, cmd: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let list = redis.bulk(&["CLIENT", "LIST"]);
        let held = list.lines().any(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            fields.contains(&"flags=b") && fields.contains(&format!("cmd={cmd}").as_str())
        });
        if held {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing held in the pause: {list}"
        );
        tokio::task::yield_now().await;
    }
}

/// Review F11: a read or `open` of a name the node did not know asked Redis through the
/// node's writer, one `HGETALL` in line behind every publish queued there, and a
/// WebSocket session waited for it inline. Now the lookup runs on the blocking pool. The
/// writer is held busy, made so: Redis pauses writes (`CLIENT PAUSE WRITE`, reads go on)
/// while node B's writer has a publish's append script in flight. Meanwhile B looks up a
/// name that does not exist (WebSocket `open`, HTTP read: `not_found`) and one another node
/// created (B's Pub/Sub is held back, so it has not heard): served, while the publish is
/// still unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_of_an_unknown_name_does_not_wait_behind_the_writer() {
    let redis = RedisServer::start(Persistence::None);
    let proxy = PubSubStall::start(([127, 0, 0, 1], redis.port).into()).await;
    let a = node(&redis, &[]);
    let url = proxy.url();
    // A Redis timeout longer than the pause: the writer waits for its append.
    let b = Broker::start(&[
        "--redis",
        &url,
        "--redis-heal-interval-ms",
        "60000",
        "--redis-timeout-ms",
        "60000",
    ]);
    assert_eq!(publish_ok(&b, "busy", 0).await, 0);
    let deadline = Instant::now() + PATIENCE;
    while proxy.subscribed() == 0 {
        assert!(Instant::now() < deadline, "B's listener never subscribed");
        tokio::task::yield_now().await;
    }
    proxy.stall();
    for i in 0..3 {
        assert_eq!(publish_ok(&a, "elsewhere", i).await, i);
    }
    // Until the test lets it go, or 40 s pass (the test then fails on a finished publish).
    redis.command(&["CLIENT", "PAUSE", "40000", "WRITE"]);
    let addr = b.addr;
    let held = tokio::spawn(async move {
        rewind_tests::request(
            addr,
            rewind_tests::Method::POST,
            "/v1/namespaces/busy/events",
            &[("content-type", "application/json")],
            bytes::Bytes::from_static(br#"{"event":"n","data":1}"#),
        )
        .await
        .expect("the publish is answered")
    });
    held_in_pause(&redis, "evalsha").await;

    let mut c = ws::Client::connect(b.addr, None).await;
    c.send(&ClientFrame::Open {
        ns: "nowhere".into(),
        from: Position::Earliest,
        epoch: None,
        credit: 100,
    })
    .await;
    match c.next().await {
        ServerMessage::Frame(ServerFrame::Error { code, ns, .. }) => {
            assert_eq!(
                (code.as_str(), ns.as_deref()),
                ("not_found", Some("nowhere"))
            )
        }
        other => panic!("open of a name that does not exist: {other:?}"),
    }
    let r = b.get("/v1/namespaces/nowhere/events").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    c.send(&ClientFrame::Open {
        ns: "elsewhere".into(),
        from: Position::Offset(0),
        epoch: None,
        credit: 100,
    })
    .await;
    consecutive(&mut c, 0, 3).await;
    let r = b.get("/v1/namespaces/elsewhere/events?from=1").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json()["events"][0]["offset"], 1);
    assert!(!held.is_finished(), "the writer was not held meanwhile");

    redis.command(&["CLIENT", "UNPAUSE"]);
    let answer = held.await.expect("the publish task");
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json());
    proxy.resume();
}

/// Reads `ns` from offset 0 on every node and records each `(epoch, offset)` with its
/// event, asserting none carries two different events; answers the epoch all nodes serve.
async fn witness_pairs(
    nodes: &[Broker],
    ns: &str,
    pairs: &mut HashMap<(String, u64), String>,
) -> String {
    let mut epochs = BTreeSet::new();
    for b in nodes {
        let page = b
            .get(&format!("/v1/namespaces/{ns}/events?from=0&limit=1000"))
            .await
            .json();
        let epoch = page["epoch"].as_str().expect("epoch").to_owned();
        for e in page["events"].as_array().expect("events") {
            let offset = e["offset"].as_u64().expect("offset");
            let data = e["data"].to_string();
            let before = pairs.entry((epoch.clone(), offset)).or_insert(data.clone());
            assert_eq!(
                *before, data,
                "({epoch}, {offset}) handed to two different events"
            );
        }
        epochs.insert(epoch);
    }
    assert_eq!(
        epochs.len(),
        1,
        "the nodes serve different epochs: {epochs:?}"
    );
    epochs.into_iter().next().expect("an epoch")
}

/// Tester finding 2: the same RDB snapshot restored twice brought an old epoch back with a
/// lower `next`, and an offset was handed out a second time under that epoch. The nodes
/// are witnesses: a lower `next` under the epoch they follow, or an epoch they saw
/// replaced, gives the namespace a fresh epoch before anything is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_snapshot_restored_twice_never_hands_out_an_epoch_and_offset_twice() {
    let mut redis = RedisServer::start(Persistence::None);
    let nodes = nodes(&redis, 2);
    let mut pairs = HashMap::new();
    for i in 0..5 {
        publish_ok(&nodes[0], "snap", i).await;
    }
    redis.save();
    for i in 5..10 {
        publish_ok(&nodes[0], "snap", i).await;
    }
    let mut epochs = vec![witness_pairs(&nodes, "snap", &mut pairs).await];
    for round in 0..2u64 {
        redis.restart();
        // Every node moves to an epoch never served before, the same one.
        let seen = epochs.clone();
        let fresh = nodes[round as usize]
            .wait_for("/v1/namespaces/snap", |v| {
                v["epoch"]
                    .as_str()
                    .is_some_and(|e| !seen.iter().any(|o| o == e))
            })
            .await["epoch"]
            .as_str()
            .expect("epoch")
            .to_owned();
        for b in &nodes {
            b.wait_for("/v1/namespaces/snap", |v| v["epoch"] == fresh.as_str())
                .await;
        }
        // The snapshot's next is 5: offsets 5.. again, under the fresh epoch only.
        for i in 0..3 {
            let on = &nodes[((round + i) % 2) as usize];
            assert_eq!(publish_ok(on, "snap", 100 * (round + 1) + i).await, 5 + i);
        }
        assert_eq!(witness_pairs(&nodes, "snap", &mut pairs).await, fresh);
        // A client resuming with the epoch before is told.
        let old = epochs.last().expect("an epoch").clone();
        for b in &nodes {
            let mut c = ws::Client::connect(b.addr, None).await;
            c.send(&ClientFrame::Open {
                ns: "snap".into(),
                from: Position::Offset(8),
                epoch: Some(old.clone()),
                credit: 100,
            })
            .await;
            loop {
                match c.next().await {
                    ServerMessage::Frame(ServerFrame::Truncated {
                        requested, reason, ..
                    }) => {
                        assert_eq!((requested, reason.as_str()), (8, "epoch"));
                        break;
                    }
                    ServerMessage::Frame(ServerFrame::Opened { epoch, .. }) => {
                        assert_eq!(epoch, fresh)
                    }
                    other => panic!("resuming with {old} at 8: {other:?}"),
                }
            }
        }
        epochs.push(fresh);
    }
}

/// Tester finding 3: a restored snapshot from before a namespace was created was taken as
/// a delete by another broker (logged so, subscribers `closed` `deleted`, the namespace
/// 404 on every node). A delete keeps the namespace's metadata in Redis; metadata gone
/// entirely is lost data: the namespace is created again with a new epoch, its
/// subscribers end with `closed` reason `epoch`, and resuming is told `truncated` epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_before_a_namespace_existed_is_lost_data_not_a_delete() {
    let mut redis = RedisServer::start(Persistence::None);
    let nodes = nodes(&redis, 2);
    publish_ok(&nodes[0], "older", 0).await;
    redis.save();
    for i in 0..3 {
        publish_ok(&nodes[0], "younger", i).await;
    }
    let old_epoch = nodes[1].get("/v1/namespaces/younger").await.json()["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    let mut sub = raw_subscribe(&nodes[1], "younger", 0).await;
    consecutive(&mut sub, 0, 3).await;
    redis.restart();
    loop {
        match sub.next().await {
            ServerMessage::Frame(ServerFrame::Closed { reason, .. }) => {
                assert_eq!(reason.as_deref(), Some("epoch"));
                break;
            }
            ServerMessage::Frame(_) => {}
            other => panic!("{other:?}"),
        }
    }
    for b in &nodes {
        let now = b
            .wait_for("/v1/namespaces/younger", |v| {
                v["epoch"].as_str().is_some_and(|e| e != old_epoch)
            })
            .await;
        assert_eq!(now["next"], 0, "{now}");
    }
    let mut c = ws::Client::connect(nodes[0].addr, None).await;
    c.send(&ClientFrame::Open {
        ns: "younger".into(),
        from: Position::Offset(3),
        epoch: Some(old_epoch.clone()),
        credit: 100,
    })
    .await;
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Truncated {
                requested, reason, ..
            }) => {
                assert_eq!((requested, reason.as_str()), (3, "epoch"));
                break;
            }
            ServerMessage::Frame(ServerFrame::Opened { .. }) => {}
            other => panic!("resuming with {old_epoch} at 3: {other:?}"),
        }
    }
}

/// Polls `/readyz` on `b` until its status is `want`, at most `polls` times: each answer
/// is fresh (`/readyz` asks Redis), so a small bound, not a clock, says how soon.
async fn ready_within(b: &Broker, want: &str, polls: usize) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..polls {
        last = b.get("/readyz").await.json();
        if last["status"] == want {
            return last;
        }
        tokio::task::yield_now().await;
    }
    panic!("/readyz not {want} after {polls} polls: {last}");
}

/// Tester finding 4: `/readyz` took 1.5–2.6 s to notice Redis gone (it only followed the
/// health ping every `redis_heal_interval_ms`). Each `/readyz` now asks Redis itself, so
/// the first one after Redis is killed says not ready, and the first one after Redis is
/// back, ready. The heal interval is a minute here: nothing else would notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_at_once_that_redis_is_gone_and_back() {
    let mut redis = RedisServer::start(Persistence::AofAlways);
    let url = redis.url();
    let b = Broker::start(&["--redis", &url, "--redis-heal-interval-ms", "60000"]);
    ready_within(&b, "ready", 1).await;
    publish_ok(&b, "r", 0).await;
    for _ in 0..2 {
        redis.stop();
        let r = ready_within(&b, "storage_unavailable", 1).await;
        assert_eq!(r["error"]["code"], "unavailable");
        redis.restart();
        // A pooled connection from before the restart may fail once.
        ready_within(&b, "ready", 2).await;
    }
    publish_ok(&b, "r", 1).await;
}

/// Review F12: against a read-only replica (an old primary after a failover) every write
/// fails `READONLY`, but `/readyz` said ready after each successful read. Now it is not
/// ready, and publishes are `503` `unavailable`, for as long as Redis takes no writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_read_only_replica_is_not_ready_and_refuses_publishes() {
    let primary = RedisServer::start(Persistence::None);
    let replica = RedisServer::start_replica(&primary);
    let url = replica.url();
    let b = Broker::start(&["--redis", &url, "--redis-heal-interval-ms", "100"]);
    for _ in 0..3 {
        let r = ready_within(&b, "storage_unavailable", 1).await;
        assert_eq!(r["error"]["code"], "unavailable");
        let (status, body) = publish(&b, "ro", 0).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        // Reads succeed on a replica, and must not make the node ready.
        assert_eq!(b.get("/v1/namespaces").await.status, StatusCode::OK);
    }
}

/// Decision (tester finding 5): a node whose Redis is down at startup does not exit; it
/// starts, not ready (`/readyz` 503, publishes 503), and serves once Redis answers, as a
/// node behind a load balancer should (the balancer's checks keep traffic away meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_redis_is_down_waits_for_it_not_ready() {
    let mut redis = RedisServer::start(Persistence::None);
    redis.stop();
    let url = redis.url();
    let b = Broker::start(&["--redis", &url, "--redis-heal-interval-ms", "100"]);
    let r = ready_within(&b, "storage_unavailable", 1).await;
    assert_eq!(r["error"]["code"], "unavailable");
    let (status, body) = publish(&b, "late", 0).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    redis.restart();
    ready_within(&b, "ready", 2).await;
    let a = node(&redis, &[]);
    assert_eq!(publish_ok(&a, "late", 0).await, 0);
    let mut sub = raw_subscribe(&b, "late", 0).await;
    consecutive(&mut sub, 0, 1).await;
    assert_eq!(publish_ok(&b, "late", 1).await, 1);
    consecutive(&mut sub, 1, 1).await;
}

/// Tester finding 1 (i13-fix2): a node started while Redis was down answered `404
/// not_found` for a namespace that exists (its refresh took "the store did not answer"
/// for "not there"). A lookup that cannot reach Redis is `503 unavailable` on every
/// transport; once Redis is back the same namespace is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_reach_redis_says_unavailable_not_not_found_on_every_transport() {
    let mut redis = RedisServer::start(Persistence::AofAlways);
    let a = node(&redis, &[]);
    publish_ok(&a, "snap", 0).await;
    redis.stop();
    let b = node(&redis, &[]);
    for path in [
        "/v1/namespaces/snap",
        "/v1/namespaces/snap/events?from=0",
        "/v1/namespaces/snap/events?from=1&wait=1",
        "/v1/namespaces/snap/sse?from=earliest",
    ] {
        let r = b.get(path).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(r.error_code(), "unavailable", "{path}");
    }
    let mut c = raw_subscribe(&b, "snap", 0).await;
    match c.next().await {
        ServerMessage::Frame(ServerFrame::Error { code, ns, .. }) => {
            assert_eq!(
                (code.as_str(), ns.as_deref()),
                ("unavailable", Some("snap"))
            );
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    redis.restart();
    ready_within(&b, "ready", 2).await;
    let info = b.wait_for("/v1/namespaces/snap", |v| v["next"] == 1).await;
    assert_eq!(info["next"], 1);
    let mut c = raw_subscribe(&b, "snap", 0).await;
    consecutive(&mut c, 0, 1).await;
}

/// Tester finding D (i13, third tester): a node that knows a namespace, reading it while
/// Redis is down, sent SSE readers `rewind.error` code `internal` where HTTP and WebSocket
/// say `unavailable` for the same failure. The same mistake gets the same code on every
/// transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_cannot_reach_redis_is_unavailable_on_sse_as_on_http() {
    let mut redis = RedisServer::start(Persistence::AofAlways);
    let a = node(&redis, &[]);
    for i in 0..3 {
        publish_ok(&a, "down", i).await;
    }
    redis.stop();
    let r = a.get("/v1/namespaces/down/events?from=0").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "unavailable");
    let mut sse = rewind_tests::sse::Sse::open(a.addr, "/v1/namespaces/down/sse?from=0", &[]).await;
    assert_eq!(sse.status, 200, "{:?}", sse.headers);
    // The node knows the namespace, so the stream opens; its first read fails.
    sse.expect("rewind.opened").await;
    let error = sse.expect("rewind.error").await.json();
    assert_eq!(error["code"], "unavailable", "{error}");
}

/// A page read on a node that has not yet heard of another node's appends holds them:
/// with Redis, what the store holds is acknowledged, so it is readable on every node at
/// once (the rule: whatever is acknowledged is readable by every reader). Before, such a
/// read stopped at the reading node's own visible end (a race seen in
/// `publishes_spread_over_three_nodes_…`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_read_on_a_lagging_node_holds_what_another_node_acknowledged() {
    let redis = RedisServer::start(Persistence::None);
    let (proxy, a, b, _sub) = lagging_node(&redis, "through").await;
    proxy.stall();
    for i in 2..6 {
        assert_eq!(publish_ok(&a, "through", i).await, i);
    }
    assert_eq!(
        head_on(&b, "through").await,
        Some(2),
        "B has heard of 2..=5 already"
    );
    let page = b.get("/v1/namespaces/through/events?from=0").await.json();
    let offsets: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, (0..6).collect::<Vec<u64>>(), "{page}");
    assert_eq!(page["next"], 6);
    proxy.resume();
}

/// Tester finding C (i13, third tester): a page whose read began after retention moved
/// the log's start, on a node that had not heard of it yet, said `truncated: true` with an
/// `earliest` below the offset asked for (docs: `truncated` means the requested offset is
/// below `earliest`). The page's `earliest` is at least its first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_page_never_reports_an_earliest_below_its_first_event() {
    let redis = RedisServer::start(Persistence::None);
    let proxy = PubSubStall::start(([127, 0, 0, 1], redis.port).into()).await;
    let a = node(&redis, &["--retention-interval-ms", "20"]);
    let url = proxy.url();
    // A Redis timeout longer than the test: B's Pub/Sub liveness check never gives up on
    // the held-back connection (a reconnect heals, and B would hear of A's appends).
    let b = Broker::start(&[
        "--redis",
        &url,
        "--redis-heal-interval-ms",
        "60000",
        "--redis-timeout-ms",
        "60000",
        "--retention-interval-ms",
        "3600000",
    ]);
    publish_ok(&a, "trim", 0).await;
    publish_ok(&a, "trim", 1).await;
    // B follows the namespace (a subscriber there), with earliest 0.
    let mut sub = raw_subscribe(&b, "trim", 0).await;
    consecutive(&mut sub, 0, 2).await;
    // B's listener subscribed, and the heal it asks for once subscribed done: the listener
    // asks for it before it reads any announcement, so once event 2 (published after the
    // subscription) reached B's subscriber it is queued, and the writer answers commands
    // in order. (Without event 2 the heal could be asked for after A's appends below, under
    // load, and B would read them: seen in a full test run.) From here B hears of A only
    // over Pub/Sub.
    let deadline = Instant::now() + PATIENCE;
    while proxy.subscribed() == 0 {
        assert!(Instant::now() < deadline, "B's listener never subscribed");
        tokio::task::yield_now().await;
    }
    publish_ok(&a, "trim", 2).await;
    consecutive(&mut sub, 2, 1).await;
    let r = b.put_json("/v1/namespaces/after-the-heal", "{}").await;
    assert!(r.status.is_success(), "{:?}", r.status);
    proxy.stall();
    let r = a
        .put_json("/v1/namespaces/trim", r#"{"retention":{"max_events":2}}"#)
        .await;
    assert!(r.status.is_success(), "{:?}", r.status);
    for i in 3..7 {
        publish_ok(&a, "trim", i).await;
    }
    a.wait_for("/v1/namespaces/trim", |v| v["earliest"] == 5)
        .await;
    assert_eq!(
        head_on(&b, "trim").await,
        Some(3),
        "B has heard of 3..=6 already"
    );
    let page = b.get("/v1/namespaces/trim/events?from=1").await.json();
    assert_eq!(page["truncated"], true, "{page}");
    assert_eq!(page["events"][0]["offset"], 5, "{page}");
    assert!(page["earliest"].as_u64() >= Some(5), "{page}");
    proxy.resume();
}

/// Node `b`'s visible end of `ns` as its `/metrics` shows it (`rewind_namespace_head_offset`,
/// present while `ns` has a subscriber there): what the node has heard of, whatever Redis
/// holds.
async fn head_on(b: &Broker, ns: &str) -> Option<u64> {
    let r = b.get("/metrics").await;
    let text = String::from_utf8_lossy(&r.body);
    let series = format!("rewind_namespace_head_offset{{namespace=\"{ns}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The next SSE message that is not `rewind.opened` must be `rewind.closed` with `reason`.
async fn sse_closed_first(sse: &mut rewind_tests::sse::Sse, ns: &str, reason: &str) {
    loop {
        let m = sse.message().await;
        match m.event.as_str() {
            "rewind.opened" => {}
            "rewind.closed" => {
                assert_eq!(m.json()["reason"], reason, "{ns}: {m:?}");
                return;
            }
            _ => panic!("{ns}: SSE before rewind.closed {reason}: {m:?}"),
        }
    }
}

/// Tester finding 13B: a DELETE on node A ended subscriptions on a publishing node B with
/// `closed` reason `epoch` (Redis lost data) instead of `deleted`, when B's own publish
/// found the namespace re-created (by A's publishers) before B's listener heard the
/// delete: B took the new incarnation as a replacement of its old one. B now asks Redis,
/// which keeps the epochs of deleted incarnations. The lag is made: B's Pub/Sub connection
/// is held back while A deletes, so B hears of the delete only through its own publish.
/// A loss (`FLUSHALL`) under the same lag still ends them with `epoch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_a_publishing_node_learns_of_late_ends_its_readers_deleted_not_epoch() {
    let redis = RedisServer::start(Persistence::None);
    let (proxy, a, b, mut ws_gone) = lagging_node(&redis, "gone").await;
    let mut sse_gone =
        rewind_tests::sse::Sse::open(b.addr, "/v1/namespaces/gone/sse?from=2", &[]).await;
    sse_gone.expect("rewind.opened").await;
    // Created by B itself after the delete (the path that already said `deleted`), and
    // lost by Redis.
    for ns in ["mine", "lost"] {
        assert_eq!(publish_ok(&a, ns, 0).await, 0);
    }
    let mut ws_mine = raw_subscribe(&b, "mine", 0).await;
    consecutive(&mut ws_mine, 0, 1).await;
    let mut ws_lost = raw_subscribe(&b, "lost", 0).await;
    consecutive(&mut ws_lost, 0, 1).await;
    let mut sse_lost =
        rewind_tests::sse::Sse::open(b.addr, "/v1/namespaces/lost/sse?from=1", &[]).await;
    sse_lost.expect("rewind.opened").await;

    proxy.stall();
    // Deleted on A and re-created by A's next publish; then B publishes: its append to
    // the old incarnation is refused, and B finds the new one in Redis.
    delete_ns(&a, "gone").await;
    assert_eq!(publish_ok(&a, "gone", 2).await, 2);
    assert_eq!(publish_ok(&b, "gone", 3).await, 3);
    closed_first(&mut ws_gone, "gone", "deleted").await;
    sse_closed_first(&mut sse_gone, "gone", "deleted").await;
    // Deleted on A; B's publish finds it gone and creates it again.
    delete_ns(&a, "mine").await;
    assert_eq!(publish_ok(&b, "mine", 1).await, 1);
    closed_first(&mut ws_mine, "mine", "deleted").await;
    // Lost: A's publish creates it again with a new epoch; B's publish finds that one.
    redis.command(&["FLUSHALL"]);
    assert_eq!(publish_ok(&a, "lost", 0).await, 0);
    assert_eq!(publish_ok(&b, "lost", 1).await, 1);
    closed_first(&mut ws_lost, "lost", "epoch").await;
    sse_closed_first(&mut sse_lost, "lost", "epoch").await;
    proxy.resume();
}

/// Starts a node on `redis` that must refuse to: its exit status and stderr.
fn refused(redis: &RedisServer, extra: &[&str]) -> rewind_tests::Refusal {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    match Broker::open(dir.path(), &args) {
        Ok(b) => panic!("a node with {extra:?} started on {}", b.addr),
        Err(refusal) => refusal,
    }
}

/// Tester finding 13A: a node started with another default retention than the running
/// nodes (`--retention-max-age-secs 3`, or no flag: the built-in 7 days) trimmed the
/// shared log of every namespace without its own retention, for every node, while the
/// others reported no limit. The first node records the defaults in Redis; a node whose
/// defaults differ refuses to start (exit status 1, a message naming both and how to
/// change them) and trims nothing; one with the same defaults starts. Changing them:
/// stop the nodes, delete the key, start them with the new defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_other_default_retention_than_the_cluster_refuses_to_start() {
    let redis = RedisServer::start(Persistence::None);
    let first = node(&redis, &["--retention-max-age-secs", "none"]);
    for i in 0..3 {
        assert_eq!(publish_ok(&first, "kept", i).await, i);
    }
    for (other, mine) in [
        (&["--retention-max-age-secs", "3"][..], "max_age_secs 3"),
        (&[][..], "max_age_secs 604800"),
        (
            &[
                "--retention-max-age-secs",
                "none",
                "--retention-max-events",
                "1",
            ][..],
            "max_events 1",
        ),
    ] {
        let refusal = refused(&redis, other);
        assert_eq!(refusal.status.code(), Some(1), "{other:?}: {refusal}");
        for said in [
            mine,
            "max_events none, max_bytes none, max_age_secs none",
            "redis-cli DEL rewind:retention",
        ] {
            assert!(
                refusal.stderr.contains(said),
                "{other:?}: no {said:?} in {refusal}"
            );
        }
    }
    let info = first.get("/v1/namespaces/kept").await.json();
    assert_eq!(
        (info["earliest"].as_u64(), info["next"].as_u64()),
        (Some(0), Some(3)),
        "{info}"
    );
    // The same defaults, however written, start.
    let second = node(
        &redis,
        &[
            "--retention-max-age-secs",
            "none",
            "--retention-max-bytes",
            "none",
        ],
    );
    let info = second.get("/v1/namespaces/kept").await.json();
    assert_eq!(
        info["retention"]["max_age_secs"],
        serde_json::Value::Null,
        "{info}"
    );
    assert_eq!(info["earliest"], 0, "{info}");
    // Changing them: every node stopped, the record deleted, the new defaults started.
    drop((first, second));
    redis.command(&["DEL", "rewind:retention"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = redis.url();
    let changed = Broker::open(
        dir.path(),
        &[
            "--redis",
            &url,
            "--retention-max-age-secs",
            "none",
            "--retention-max-events",
            "2",
        ],
    )
    .expect("the new defaults start");
    let info = changed
        .wait_for("/v1/namespaces/kept", |v| v["earliest"] == 1)
        .await;
    assert_eq!(info["retention"]["max_events"], 2, "{info}");
    let refusal = refused(&redis, &["--retention-max-age-secs", "none"]);
    assert!(refusal.stderr.contains("max_events 2"), "{refusal}");
    // The record deleted while a node runs, and a node with other defaults started (its
    // record written here, so that no retention pass of the running node comes first):
    // the running one stops enforcing its own, and says so.
    redis.command(&[
        "SET",
        "rewind:retention",
        r#"{"max_events":null,"max_bytes":null,"max_age_secs":null}"#,
    ]);
    let deadline = Instant::now() + PATIENCE;
    while !changed.stderr().contains("retention not enforced") {
        assert!(
            Instant::now() < deadline,
            "the running node never noticed: {}",
            changed.stderr()
        );
        tokio::task::yield_now().await;
    }
    assert!(changed
        .stderr()
        .contains("max_events 2, max_bytes none, max_age_secs none"));
    // And is not ready, so a load balancer stops sending it clients (tester 13D: it said
    // ready while it enforced nothing).
    let r = changed.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.json()["status"], "retention_mismatch");
    // Ready again once the record is its own.
    redis.command(&[
        "SET",
        "rewind:retention",
        r#"{"max_events":2,"max_bytes":null,"max_age_secs":null}"#,
    ]);
    changed
        .wait_for("/readyz", |v| v["status"] == "ready")
        .await;
}
