//! `GET /metrics` (docs/operations.md): scraped after doing things over HTTP and
//! WebSocket, each figure moves by exactly what was done.

use std::collections::HashMap;

use rewind_protocol::frame::{ServerFrame, ServerMessage};
use rewind_tests::ws::Client;
use rewind_tests::{Broker, StatusCode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// One scrape: every sample, by its series (name and labels as written).
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn of(b: &Broker) -> Scrape {
        let res = b.get("/metrics").await;
        assert_eq!(res.status, StatusCode::OK);
        assert!(
            res.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text"),
            "{:?}",
            res.headers
        );
        let text = String::from_utf8(res.body.to_vec()).expect("UTF-8");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let mut samples = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(samples.insert(series.to_owned(), value).is_none(), "{line}");
        }
        Scrape(samples)
    }

    /// A series' value; 0 for one not (yet) written, as Prometheus reads a counter that
    /// has not moved.
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    fn has(&self, series: &str) -> bool {
        self.0.contains_key(series)
    }
}

/// What moved between two scrapes.
fn delta(before: &Scrape, after: &Scrape, series: &str) -> f64 {
    after.get(series) - before.get(series)
}

async fn scrape_until(b: &Broker, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = Scrape::of(b).await;
        if ok(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn http_publishes_reads_and_refusals_move_their_counters_exactly() {
    let b = Broker::start(&[]);
    let before = Scrape::of(&b).await;
    // Three events in one batch, payloads of 1, 2 and 3 bytes of JSON text.
    let body = r#"[{"event":"e","data":1},{"event":"e","data":22},{"event":"e","data":333}]"#;
    let res = b.post_json("/v1/namespaces/m.http/events", body).await;
    assert_eq!(res.status, StatusCode::CREATED, "{:?}", res.body);
    let res = b
        .post_json(
            "/v1/namespaces/m.http/events",
            r#"{"event":"e","data":"ab"}"#,
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(
        b.get("/v1/namespaces/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        b.get("/v1/namespaces/nope").await.status,
        StatusCode::NOT_FOUND
    );
    let bad = b.post_json("/v1/namespaces/m.http/events", "{").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let after = Scrape::of(&b).await;
    assert_eq!(delta(&before, &after, "rewind_appended_events_total"), 4.0);
    assert_eq!(delta(&before, &after, "rewind_appended_bytes_total"), 10.0);
    assert_eq!(
        delta(&before, &after, "rewind_publish_latency_seconds_count"),
        2.0
    );
    assert!(delta(&before, &after, "rewind_sync_latency_seconds_count") >= 1.0);
    assert_eq!(
        delta(
            &before,
            &after,
            r#"rewind_refused_requests_total{transport="http",code="not_found"}"#
        ),
        2.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            r#"rewind_refused_requests_total{transport="http",code="bad_frame"}"#
        ),
        1.0
    );
    assert_eq!(after.get("rewind_namespaces"), 1.0);
    assert_eq!(after.get("rewind_write_queue_depth"), 0.0);
    assert!(after.get("rewind_disk_bytes") > 0.0);
    // Each request above had a connection of its own, closed by the client: once the
    // broker has seen them close, the scrape's own is the one open.
    scrape_until(&b, "only the scrape's connection open", |s| {
        s.get("rewind_http_connections") == 1.0
    })
    .await;
    // No subscriber: no per-namespace series.
    assert!(!after.0.keys().any(|k| k.contains("namespace=")));
}

#[tokio::test]
async fn a_long_poll_is_counted_while_it_waits() {
    let b = Broker::start(&[]);
    let res = b
        .post_json("/v1/namespaces/m.poll/events", r#"{"event":"e"}"#)
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    let addr = b.addr;
    let waiting = tokio::spawn(async move {
        rewind_tests::request(
            addr,
            rewind_tests::Method::GET,
            "/v1/namespaces/m.poll/events?from=1&wait=30",
            &[],
            bytes::Bytes::new(),
        )
        .await
        .expect("long-poll")
    });
    scrape_until(&b, "a long-poll waiting", |s| {
        s.get("rewind_long_poll_waits") == 1.0
    })
    .await;
    let res = b
        .post_json("/v1/namespaces/m.poll/events", r#"{"event":"e"}"#)
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(waiting.await.unwrap().status, StatusCode::OK);
    assert_eq!(Scrape::of(&b).await.get("rewind_long_poll_waits"), 0.0);
}

#[tokio::test]
async fn websocket_sessions_subscriptions_deliveries_lag_and_refusals() {
    let b = Broker::start(&["--metrics-namespaces", "1"]);
    for ns in ["m.lag", "m.quiet"] {
        let body = r#"[{"event":"e"},{"event":"e"},{"event":"e"},{"event":"e"},{"event":"e"}]"#;
        let res = b
            .post_json(&format!("/v1/namespaces/{ns}/events"), body)
            .await;
        assert_eq!(res.status, StatusCode::CREATED);
    }
    let before = Scrape::of(&b).await;
    assert_eq!(before.get("rewind_ws_sessions"), 0.0);
    let mut c = Client::connect(b.addr, None).await;
    // Credit for 3 of the 5 events of m.lag: two stay behind.
    let opened = c
        .answer(&json!({"t": "open", "ns": "m.lag", "from": 0, "credit": 3}))
        .await;
    assert!(matches!(opened, ServerFrame::Opened { .. }), "{opened:?}");
    for _ in 0..3 {
        assert!(matches!(c.next().await, ServerMessage::Event(_)));
    }
    // Everything of m.quiet: no lag there.
    let opened = c
        .answer(&json!({"t": "open", "ns": "m.quiet", "from": 0, "credit": 100}))
        .await;
    assert!(matches!(opened, ServerFrame::Opened { .. }), "{opened:?}");
    for _ in 0..5 {
        assert!(matches!(c.next().await, ServerMessage::Event(_)));
    }
    let refused = c
        .answer(&json!({"t": "open", "ns": "m.none", "from": 0}))
        .await;
    assert!(matches!(refused, ServerFrame::Error { .. }), "{refused:?}");
    let refused = c
        .answer(&json!({"t": "open", "ns": "m.quiet", "from": 0}))
        .await;
    assert!(matches!(refused, ServerFrame::Error { .. }), "{refused:?}");
    let after = Scrape::of(&b).await;
    assert_eq!(after.get("rewind_ws_sessions"), 1.0);
    assert_eq!(after.get("rewind_subscriptions"), 2.0);
    assert_eq!(delta(&before, &after, "rewind_deliveries_total"), 8.0);
    assert_eq!(after.get("rewind_subscriber_lag_max"), 2.0);
    // --metrics-namespaces 1: only the namespace that lags most has series of its own.
    assert_eq!(
        after.get(r#"rewind_namespace_subscriber_lag{namespace="m.lag"}"#),
        2.0
    );
    assert_eq!(
        after.get(r#"rewind_namespace_head_offset{namespace="m.lag"}"#),
        5.0
    );
    assert!(!after.has(r#"rewind_namespace_subscriber_lag{namespace="m.quiet"}"#));
    assert_eq!(
        delta(
            &before,
            &after,
            r#"rewind_refused_requests_total{transport="ws",code="not_found"}"#
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            r#"rewind_refused_requests_total{transport="ws",code="already_open"}"#
        ),
        1.0
    );
    // A publish over the WebSocket is an append and a publish like any other.
    let published = c
        .answer(&json!({"t": "publish", "id": 1, "ns": "m.quiet", "event": "e", "data": "xyz"}))
        .await;
    assert!(
        matches!(published, ServerFrame::Published { offset: 5, .. }),
        "{published:?}"
    );
    let later = Scrape::of(&b).await;
    assert_eq!(delta(&after, &later, "rewind_appended_events_total"), 1.0);
    assert_eq!(delta(&after, &later, "rewind_appended_bytes_total"), 5.0);
    assert_eq!(
        delta(&after, &later, "rewind_publish_latency_seconds_count"),
        1.0
    );
    // Credit for the rest: the lag is gone.
    c.raw(Message::Text(
        json!({"t": "credit", "ns": "m.lag", "n": 10})
            .to_string()
            .into(),
    ))
    .await;
    scrape_until(&b, "the lag caught up", |s| {
        s.get("rewind_subscriber_lag_max") == 0.0
    })
    .await;
    drop(c);
    let gone = scrape_until(&b, "the session ended", |s| {
        s.get("rewind_ws_sessions") == 0.0
    })
    .await;
    assert_eq!(gone.get("rewind_subscriptions"), 0.0);
    assert!(!gone.0.keys().any(|k| k.contains("namespace=")));
}

#[tokio::test]
async fn metrics_take_only_get() {
    let b = Broker::start(&[]);
    let res = b
        .request(
            rewind_tests::Method::POST,
            "/metrics",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
}
