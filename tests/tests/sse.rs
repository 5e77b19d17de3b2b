//! Server-Sent Events (`GET /v1/namespaces/{ns}/sse`, spec §3.4) against the real binary,
//! parsed by the HTML standard's rules (`rewind_tests::sse`): framing, where a stream
//! starts (`from`, `Last-Event-ID`, `epoch`), heartbeats, truncation, deletion, values
//! that must not inject lines, bad inputs, CORS, shutdown, and the memory of a reader
//! that stops reading.

use rewind_tests::sse::{Item, Message, Sse};
use rewind_tests::{Broker, Method, StatusCode};
use serde_json::{json, Value};

async fn publish(b: &Broker, ns: &str, body: &Value) -> Value {
    b.publish(ns, &body.to_string()).await.json()
}

/// Publishes `n` events `e` with data `{"i": i}`.
async fn publish_n(b: &Broker, ns: &str, n: usize) {
    let batch: Vec<Value> = (0..n)
        .map(|i| json!({"event": "e", "data": {"i": i}}))
        .collect();
    publish(b, ns, &Value::Array(batch)).await;
}

async fn delete(b: &Broker, ns: &str) {
    let r = b
        .request(Method::DELETE, &format!("/v1/namespaces/{ns}"), &[], "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
}

async fn open(b: &Broker, path: &str, headers: &[(&str, &str)]) -> Sse {
    let sse = Sse::open(b.addr, path, headers).await;
    assert_eq!(sse.status, 200, "{path}: {:?}", sse.headers);
    sse
}

/// Reads the opening (`retry`, `rewind.opened`) and returns the opened data.
async fn opened(sse: &mut Sse) -> Value {
    assert_eq!(sse.next().await, Some(Item::Retry(1000)));
    let m = sse.expect("rewind.opened").await;
    let data = m.json();
    // The id before `from` (none from offset 0): a stream that breaks before its first
    // event resumes at `from`, not at its URL's start again.
    let from = data["from"].as_u64().expect("from");
    let id = from.checked_sub(1).map(|k| k.to_string());
    assert_eq!(m.id, id, "{m:?}");
    data
}

/// The offsets of the next `n` messages, each an event.
async fn offsets(sse: &mut Sse, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = sse.message().await;
        let offset: u64 =
            m.id.as_deref()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("not an event: {m:?}"));
        assert_eq!(m.json()["offset"], json!(offset), "{m:?}");
        out.push(offset);
    }
    out
}

/// The page a long-poll read answers from `from`.
async fn page(b: &Broker, ns: &str, from: u64) -> Value {
    b.get(&format!(
        "/v1/namespaces/{ns}/events?from={from}&limit=1000"
    ))
    .await
    .json()
}

#[tokio::test]
async fn each_event_is_id_event_and_the_long_poll_object_and_bytes_are_base64() {
    let b = Broker::start(&[]);
    publish(
        &b,
        "n",
        &json!([
            {"event": "created", "data": {"a": [1, 2.5, "x"], "b": null}},
            {"event": "über ereignis", "data": "text", "key": "k-1"},
            {"event": "n", "data": 42},
        ]),
    )
    .await;
    let raw = b
        .request(
            Method::POST,
            "/v1/namespaces/n/events?event=blob",
            &[("content-type", "application/octet-stream")],
            vec![0u8, 13, 10, 255, 58],
        )
        .await;
    assert_eq!(raw.status, StatusCode::CREATED);

    let mut sse = open(&b, "/v1/namespaces/n/sse?from=earliest", &[]).await;
    assert_eq!(
        sse.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    let info = b.get("/v1/namespaces/n").await.json();
    assert_eq!(
        opened(&mut sse).await,
        json!({"ns": "n", "epoch": info["epoch"], "from": 0, "earliest": 0, "next": 4})
    );
    // Every message is exactly the long-poll page's event, under its offset and name.
    let polled = page(&b, "n", 0).await;
    let events = polled["events"].as_array().expect("events");
    assert_eq!(events.len(), 4);
    for ev in events {
        let m = sse.message().await;
        assert_eq!(
            m,
            Message {
                id: Some(ev["offset"].to_string()),
                event: ev["event"].as_str().expect("name").to_owned(),
                data: m.data.clone(),
            }
        );
        assert_eq!(&m.json(), ev);
    }
    assert_eq!(events[3]["data_b64"], json!("AA0K/zo="));
    assert_eq!(events[1]["key"], json!("k-1"));

    // HEAD: the stream's status and headers, no body, and the request ends.
    let head = b
        .request(Method::HEAD, "/v1/namespaces/n/sse", &[], "")
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/event-stream; charset=utf-8"[..])
    );
    assert!(head.body.is_empty());

    // Live: an event published now arrives next.
    publish(&b, "n", &json!({"event": "later", "data": [true]})).await;
    let m = sse.expect("later").await;
    assert_eq!(
        (m.id.as_deref(), m.json()["data"].clone()),
        (Some("4"), json!([true]))
    );
}

#[tokio::test]
async fn from_takes_every_position_and_last_event_id_wins_over_it() {
    let b = Broker::start(&[]);
    publish_n(&b, "n", 5).await;

    let mut sse = open(&b, "/v1/namespaces/n/sse?from=2", &[]).await;
    assert_eq!(opened(&mut sse).await["from"], json!(2));
    assert_eq!(offsets(&mut sse, 3).await, vec![2, 3, 4]);

    // Absent `from` is `latest`, as a WebSocket `open`: only what comes next.
    for (path, next) in [
        ("/v1/namespaces/n/sse", 5),
        ("/v1/namespaces/n/sse?from=latest", 6),
    ] {
        let mut sse = open(&b, path, &[]).await;
        assert_eq!(opened(&mut sse).await["from"], json!(next), "{path}");
        publish_n(&b, "n", 1).await;
        assert_eq!(offsets(&mut sse, 1).await, vec![next], "{path}");
    }
    let next = b.get("/v1/namespaces/n").await.json()["next"]
        .as_u64()
        .expect("next");

    // Last-Event-ID: K resumes at K + 1, whatever `from` says.
    for path in [
        "/v1/namespaces/n/sse?from=earliest",
        "/v1/namespaces/n/sse?from=latest",
        "/v1/namespaces/n/sse?from=0",
        "/v1/namespaces/n/sse",
    ] {
        let mut sse = open(&b, path, &[("last-event-id", "3")]).await;
        assert_eq!(opened(&mut sse).await["from"], json!(4), "{path}");
        assert_eq!(offsets(&mut sse, 2).await, vec![4, 5], "{path}");
    }
    // The last event seen was the last one: nothing until the next.
    let last = (next - 1).to_string();
    let mut sse = open(
        &b,
        "/v1/namespaces/n/sse?from=0",
        &[("last-event-id", &last)],
    )
    .await;
    assert_eq!(opened(&mut sse).await["from"], json!(next));
    publish_n(&b, "n", 1).await;
    assert_eq!(offsets(&mut sse, 1).await, vec![next]);
    // An empty Last-Event-ID (a browser sends none then) leaves `from` in charge.
    let mut sse = open(&b, "/v1/namespaces/n/sse?from=1", &[("last-event-id", "")]).await;
    assert_eq!(opened(&mut sse).await["from"], json!(1));
    assert_eq!(offsets(&mut sse, 1).await, vec![1]);
}

#[tokio::test]
async fn bad_positions_are_400_bad_position_as_a_long_poll_says_and_create_nothing() {
    let b = Broker::start(&[]);
    publish_n(&b, "n", 3).await;
    let bad_from = b.get("/v1/namespaces/n/events?from=soon").await;
    assert_eq!(bad_from.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_from.error_code(), "bad_position");
    for path in [
        "/v1/namespaces/n/sse?from=soon",
        "/v1/namespaces/n/sse?from=-1",
        "/v1/namespaces/n/sse?from=",
        "/v1/namespaces/n/sse?from=4",
        "/v1/namespaces/n/sse?from=18446744073709551616",
        "/v1/namespaces/n/sse?from=1&from=2",
    ] {
        let r = b.get(path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.error_code(), "bad_position", "{path}");
    }
    for id in [
        "x",
        "-1",
        "1.5",
        "0x1",
        "+1",
        "1 2",
        "3",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999",
        "é",
    ] {
        let r = b
            .request(
                Method::GET,
                "/v1/namespaces/n/sse?from=0",
                &[("last-event-id", id)],
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "Last-Event-ID {id:?}");
        assert_eq!(r.error_code(), "bad_position", "Last-Event-ID {id:?}");
        assert_eq!(
            r.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
    for epoch in [
        "abc",
        "0123456789ABCDEF",
        "0123456789abcdef0",
        "%FF",
        "a&epoch=b",
    ] {
        let path = format!("/v1/namespaces/n/sse?from=0&epoch={epoch}");
        let r = b.get(&path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.error_code(), "bad_frame", "{path}");
    }
    let mut twice = Sse::open(
        b.addr,
        "/v1/namespaces/n/sse",
        &[("last-event-id", "1"), ("last-event-id", "1")],
    )
    .await;
    assert_eq!(twice.status, 400);
    let body: Value = serde_json::from_slice(&twice.body().await).expect("JSON");
    assert_eq!(body["error"]["code"], json!("bad_position"));

    // A namespace that does not exist: 404 as a long-poll read, and it stays absent.
    for path in ["/v1/namespaces/ghost/sse", "/v1/namespaces/ghost/events"] {
        let r = b.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.error_code(), "not_found", "{path}");
    }
    assert_eq!(
        b.get("/v1/namespaces/ghost").await.status,
        StatusCode::NOT_FOUND
    );
    let r = b.get("/v1/namespaces/bad..name/sse").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_namespace")
    );
    let r = b.post_json("/v1/namespaces/n/sse", "{}").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.headers.get("allow").map(|v| v.as_bytes()),
        Some(&b"GET, HEAD"[..])
    );
}

#[tokio::test]
async fn an_idle_stream_sends_comment_heartbeats() {
    let b = Broker::start(&["--sse-heartbeat-secs", "1"]);
    publish_n(&b, "n", 1).await;
    let mut sse = open(&b, "/v1/namespaces/n/sse?from=0", &[]).await;
    opened(&mut sse).await;
    assert_eq!(offsets(&mut sse, 1).await, vec![0]);
    for _ in 0..2 {
        assert_eq!(sse.next().await, Some(Item::Comment(" heartbeat".into())));
    }
    // Events still flow after heartbeats.
    publish_n(&b, "n", 1).await;
    assert_eq!(offsets(&mut sse, 1).await, vec![1]);
}

#[tokio::test]
async fn a_start_below_earliest_is_announced_as_truncated_by_retention() {
    let b = Broker::start(&["--retention-interval-ms", "10", "--segment-bytes", "1"]);
    publish_n(&b, "n", 10).await;
    let r = b
        .put_json("/v1/namespaces/n", r#"{"retention": {"max_events": 3}}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    b.wait_for("/v1/namespaces/n", |v| v["earliest"] == json!(7))
        .await;

    let mut sse = open(&b, "/v1/namespaces/n/sse?from=2", &[]).await;
    assert_eq!(opened(&mut sse).await["from"], json!(7));
    let t = sse.expect("rewind.truncated").await;
    assert_eq!(t.id, None);
    assert_eq!(
        t.json(),
        json!({"requested": 2, "from": 7, "reason": "retention"})
    );
    assert_eq!(offsets(&mut sse, 3).await, vec![7, 8, 9]);

    // A reconnect whose last event has since been removed is told the same way.
    let mut sse = open(&b, "/v1/namespaces/n/sse", &[("last-event-id", "0")]).await;
    opened(&mut sse).await;
    assert_eq!(
        sse.expect("rewind.truncated").await.json(),
        json!({"requested": 1, "from": 7, "reason": "retention"})
    );
    assert_eq!(offsets(&mut sse, 1).await, vec![7]);
}

#[tokio::test]
async fn deletion_closes_the_stream_at_once_and_clears_the_last_event_id() {
    let b = Broker::start(&[]);
    publish_n(&b, "n", 2).await;
    let epoch = b.get("/v1/namespaces/n").await.json()["epoch"].clone();
    let mut waiting = open(&b, "/v1/namespaces/n/sse?from=0", &[]).await;
    assert_eq!(opened(&mut waiting).await["epoch"], epoch);
    assert_eq!(offsets(&mut waiting, 2).await, vec![0, 1]);
    // A reader that has not read what it was sent: it sees it all, then the close.
    let mut behind = open(&b, "/v1/namespaces/n/sse?from=0", &[]).await;

    delete(&b, "n").await;
    let closed = waiting.expect("rewind.closed").await;
    assert_eq!(closed.id.as_deref(), Some(""), "the id is cleared");
    assert_eq!(closed.json(), json!({"ns": "n", "reason": "deleted"}));
    assert_eq!(waiting.next().await, None, "the stream ends");
    opened(&mut behind).await;
    let mut rest = Vec::new();
    loop {
        let m = behind.message().await;
        if m.event == "rewind.closed" {
            break;
        }
        rest.push(m.id.expect("an event"));
    }
    assert!(rest.len() <= 2, "{rest:?}");
    assert_eq!(behind.next().await, None);

    // What the browser's reconnect (no Last-Event-ID) then meets: 404, and nothing made.
    let r = b.get("/v1/namespaces/n/sse?from=0").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    assert_eq!(
        b.get("/v1/namespaces/n").await.status,
        StatusCode::NOT_FOUND
    );

    // Created again (offsets go on from where the deleted log ended: never reused): a
    // new stream follows the new log under its new epoch.
    publish_n(&b, "n", 1).await;
    let mut again = open(&b, "/v1/namespaces/n/sse?from=earliest", &[]).await;
    let o = opened(&mut again).await;
    assert_ne!(o["epoch"], epoch);
    assert_eq!(o["from"], json!(2));
    assert_eq!(offsets(&mut again, 1).await, vec![2]);
}

#[tokio::test]
async fn an_offset_from_another_epoch_starts_at_the_new_logs_earliest_and_says_so() {
    let b = Broker::start(&[]);
    publish_n(&b, "n", 5).await;
    let old = b.get("/v1/namespaces/n").await.json()["epoch"].clone();
    delete(&b, "n").await;
    publish_n(&b, "n", 2).await;
    let new = b.get("/v1/namespaces/n").await.json()["epoch"].clone();
    assert_ne!(old, new);
    let old = old.as_str().expect("epoch");

    // Offsets are never reused, so the new log starts where the old one ended, at 5;
    // offset 6 exists in both, and the old epoch says which one was meant.
    publish_n(&b, "n", 1).await;
    let mut sse = open(&b, &format!("/v1/namespaces/n/sse?from=6&epoch={old}"), &[]).await;
    assert_eq!(opened(&mut sse).await["from"], json!(5));
    assert_eq!(
        sse.expect("rewind.truncated").await.json(),
        json!({"requested": 6, "from": 5, "reason": "epoch", "epoch": new})
    );
    assert_eq!(offsets(&mut sse, 3).await, vec![5, 6, 7]);

    // The right epoch, or positions that are not offsets: no truncation.
    let new = new.as_str().expect("epoch");
    for path in [
        format!("/v1/namespaces/n/sse?from=6&epoch={new}"),
        format!("/v1/namespaces/n/sse?from=earliest&epoch={old}"),
    ] {
        let mut sse = open(&b, &path, &[]).await;
        let from = opened(&mut sse).await["from"].as_u64().expect("from");
        assert_eq!(offsets(&mut sse, 1).await, vec![from], "{path}");
    }
    // A browser's reconnect names an offset this stream itself handed out (in the log
    // it was following), so `epoch` from the page's URL is not held against it.
    let mut sse = open(
        &b,
        &format!("/v1/namespaces/n/sse?from=5&epoch={old}"),
        &[("last-event-id", "5")],
    )
    .await;
    assert_eq!(opened(&mut sse).await["from"], json!(6));
    assert_eq!(offsets(&mut sse, 1).await, vec![6]);
}

#[tokio::test]
async fn no_value_injects_a_line_every_control_character_and_line_break_included() {
    let b = Broker::start(&[]);
    // Every control character, the Unicode line and paragraph separators, NEL, and a
    // lone CR, inside strings (JSON escapes them) and as keys.
    let controls: String = (0u32..0x20)
        .chain([0x7f, 0x85, 0x2028, 0x2029])
        .filter_map(char::from_u32)
        .collect();
    let mut sent = vec![
        json!({"event": "ctl", "data": controls, "key": controls}),
        json!({"event": "ctl", "data": {controls.clone(): "\r", "\n": "\r\n\u{0}"}}),
        json!({"event": "sep\u{2028}name\u{2029}", "data": "id: 9\n\nevent: rewind.closed\ndata: {}"}),
        json!({"event": ": not a comment", "data": "\rdata: x"}),
        json!({"event": "data", "data": "event"}),
    ];
    for ev in &sent {
        publish(&b, "n", ev).await;
    }
    // A JSON payload published with CR, LF and CR LF between its tokens.
    let r = b
        .post_json(
            "/v1/namespaces/n/events",
            "{\"event\":\"spaced\",\"data\":{\r\n\"a\" :\r[1,\n2 ]\r\n,\"b\":\"\\r\"}}",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    sent.push(json!({"event": "spaced", "data": {"a": [1, 2], "b": "\r"}}));
    // Bytes holding every byte value, line breaks and NUL among them.
    let bytes: Vec<u8> = (0..=255).collect();
    let r = b
        .request(
            Method::POST,
            "/v1/namespaces/n/events?event=bytes",
            &[("content-type", "application/octet-stream")],
            bytes.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Names with a line break or NUL never get in.
    for name in ["a\rb", "a\nb", "a\r\nb", "a\u{0}b", "\r", "rewind.closed"] {
        let r = b
            .post_json(
                "/v1/namespaces/n/events",
                &json!({"event": name, "data": 1}).to_string(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name:?}");
        assert_eq!(r.error_code(), "bad_frame", "{name:?}");
    }

    let mut sse = open(&b, "/v1/namespaces/n/sse?from=0", &[]).await;
    opened(&mut sse).await;
    for (i, ev) in sent.iter().enumerate() {
        let m = sse.message().await;
        assert_eq!(m.id, Some(i.to_string()));
        assert_eq!(m.event, ev["event"].as_str().expect("name"), "{i}");
        let got = m.json();
        assert_eq!(got["data"], ev["data"], "{i}");
        if let Some(key) = ev.get("key") {
            assert_eq!(&got["key"], key);
        }
    }
    let m = sse.expect("bytes").await;
    assert_eq!(m.id.as_deref(), Some(&*sent.len().to_string()));
    let b64 = m.json()["data_b64"].as_str().expect("data_b64").to_owned();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
        bytes
    );
    // Nothing else was dispatched: the next message is a new event.
    publish_n(&b, "n", 1).await;
    let next = sse.message().await;
    assert_eq!(next.id, Some((sent.len() + 1).to_string()), "{next:?}");
}

#[tokio::test]
async fn shutdown_ends_open_streams_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut b = Broker::open(dir.path(), &["--shutdown-timeout-secs", "20"]).expect("starts");
    publish_n(&b, "n", 1).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut sse = open(&b, "/v1/namespaces/n/sse?from=0", &[]).await;
        opened(&mut sse).await;
        assert_eq!(offsets(&mut sse, 1).await, vec![0]);
        streams.push(sse);
    }
    let status = b.terminate();
    assert!(status.success(), "{status}");
    for sse in &mut streams {
        // Heartbeats may have come before the signal; then the end.
        loop {
            match sse.next().await {
                None => break,
                Some(Item::Comment(_)) => {}
                Some(other) => panic!("after the last event: {other:?}"),
            }
        }
    }
    // Had a stream held its connection, the broker would have waited out the timeout.
    let stderr = b.stderr();
    assert!(
        !stderr.contains("still open after the shutdown timeout"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_listed_origin_may_read_and_publish_and_a_preflight_allows_json_posts() {
    let b = Broker::start(&["--allowed-origins", "http://page.example:8000"]);
    let r = b
        .request(
            Method::OPTIONS,
            "/v1/namespaces/n/events",
            &[
                ("origin", "http://page.example:8000"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type,idempotency-key",
                ),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let h = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert_eq!(h("access-control-allow-origin"), "http://page.example:8000");
    assert!(h("access-control-allow-methods").contains("post"), "{r:?}");
    for header in ["content-type", "idempotency-key", "last-event-id"] {
        assert!(h("access-control-allow-headers").contains(header), "{r:?}");
    }
    assert!(!h("access-control-max-age").is_empty(), "{r:?}");

    let origin = [("origin", "http://page.example:8000")];
    let r = b
        .request(
            Method::POST,
            "/v1/namespaces/n/events",
            &[origin[0], ("content-type", "application/json")],
            r#"{"event":"e","data":1}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.headers.get("access-control-allow-origin").unwrap(),
        "http://page.example:8000"
    );
    for path in [
        "/v1/namespaces",
        "/v1/namespaces/n/events?from=0",
        "/v1/namespaces/ghost/events",
        "/healthz",
    ] {
        let r = b.request(Method::GET, path, &origin, "").await;
        assert_eq!(
            r.headers
                .get("access-control-allow-origin")
                .map(|v| v.as_bytes()),
            Some(&b"http://page.example:8000"[..]),
            "{path}"
        );
    }
    // A long-poll read varies by Accept, and by Origin (each allowed origin is echoed).
    let r = b
        .request(Method::GET, "/v1/namespaces/n/events?from=0", &origin, "")
        .await;
    let vary: Vec<_> = r
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect();
    assert_eq!(vary[0], "accept", "{vary:?}");
    assert!(vary[1..].iter().any(|v| v.contains("origin")), "{vary:?}");
    let sse = open(&b, "/v1/namespaces/n/sse", &origin).await;
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some("http://page.example:8000")
    );
    assert_eq!(sse.header("access-control-allow-credentials"), None);
}

/// While a broker drains (a publish still uploading its body), an SSE request is answered
/// with an empty event stream and `retry:`, which makes an `EventSource` try again, not
/// the `503` that would make it give up for good.
#[tokio::test]
async fn a_stream_asked_for_while_the_broker_drains_is_told_to_retry() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Broker::start(&["--shutdown-timeout-secs", "60"]);
    publish_n(&b, "n", 1).await;
    // A publish whose body is not sent yet keeps the broker draining.
    let mut publish = tokio::net::TcpStream::connect(b.addr)
        .await
        .expect("connect");
    let body = br#"{"event":"late","data":1}"#;
    publish
        .write_all(
            format!(
                "POST /v1/namespaces/n/events HTTP/1.1\r\nhost: x\r\ncontent-type: \
                 application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("send");
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        got.push(publish.read_u8().await.expect("100 Continue"));
    }
    assert!(got.starts_with(b"HTTP/1.1 100"));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &b.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    b.wait_for("/readyz", |v| v["error"]["code"] == json!("shutting_down"))
        .await;

    // The broker's own origin (its dashboard's) is allowed by default.
    let own = format!("http://localhost:{}", b.addr.port());
    let mut sse = Sse::open(
        b.addr,
        "/v1/namespaces/n/sse?from=0",
        &[("last-event-id", "0"), ("origin", &own)],
    )
    .await;
    assert_eq!(sse.status, 200, "{:?}", sse.headers);
    assert_eq!(
        sse.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    // A page of an allowed origin must be able to read it, or its EventSource gives up.
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some(own.as_str())
    );
    assert_eq!(sse.next().await, Some(Item::Retry(1000)));
    assert!(matches!(sse.next().await, Some(Item::Comment(_))));
    assert_eq!(sse.next().await, None);
    // Other requests still get 503.
    let r = b
        .request(
            Method::GET,
            "/v1/namespaces/n/events?from=0",
            &[("origin", &own)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // Readable by the page too, with its Retry-After.
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(own.as_str())
    );
    assert!(r
        .headers
        .get("access-control-expose-headers")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("retry-after")));

    publish.write_all(body).await.expect("body");
    let mut answer = String::new();
    let _ = publish.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

/// A reader that fell behind while retention moved `earliest` past its cursor is told,
/// in the stream, which offsets it skipped, and goes on from `earliest`.
#[tokio::test]
async fn retention_overtaking_a_slow_reader_is_announced_in_the_stream() {
    let b = Broker::start(&["--retention-interval-ms", "10", "--segment-bytes", "65536"]);
    publish_n(&b, "n", 1).await;
    let mut sse = Sse::open_small(b.addr, "/v1/namespaces/n/sse?from=earliest", &[]).await;
    assert_eq!(sse.status, 200);
    opened(&mut sse).await;
    assert_eq!(offsets(&mut sse, 1).await, vec![0]);
    // 10 MB of 10 KB events, more than twice what the socket buffers between us hold
    // (64 KiB here, 4 MiB at most on the broker's side): the stream stops reading the
    // log far behind the end while this reader does not read.
    let one = json!({"event": "e", "data": "x".repeat(10_000)});
    for _ in 0..10 {
        publish(&b, "n", &Value::Array(vec![one.clone(); 100])).await;
    }
    let r = b
        .put_json("/v1/namespaces/n", r#"{"retention": {"max_events": 10}}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let info = b
        .wait_for("/v1/namespaces/n", |v| v["earliest"].as_u64() >= Some(900))
        .await;
    let earliest = info["earliest"].as_u64().expect("earliest");

    let mut next = 1;
    let jump = loop {
        let m = sse.message().await;
        if m.event == "rewind.truncated" {
            break m.json();
        }
        assert_eq!(m.id, Some(next.to_string()));
        next += 1;
    };
    assert!(
        next < earliest,
        "the reader was behind: {next} vs {earliest}"
    );
    assert_eq!(
        jump,
        json!({"requested": next, "from": jump["from"], "reason": "retention"})
    );
    let from = jump["from"].as_u64().expect("from");
    assert!(from >= earliest, "{jump}");
    let got = offsets(&mut sse, (1001 - from) as usize).await;
    assert_eq!(got, (from..1001).collect::<Vec<u64>>());
}
