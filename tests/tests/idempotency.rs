//! Idempotency keys against the real binary: one key rule on every transport, a retry
//! answered in the original's shape, and a different request under a used key refused
//! with `idempotency_conflict` (issue 8 §6).

use rewind_protocol::codec::ReadPage;
use rewind_protocol::frame::{ServerFrame, ServerMessage};
use rewind_tests::ws::Client;
use rewind_tests::{raw_http, Broker, Response};
use rewind_tests::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const EVENTS: &str = "/v1/namespaces/orders/events";

async fn post(b: &Broker, path: &str, ctype: &str, key: &str, body: &str) -> Response {
    b.request(
        Method::POST,
        path,
        &[("content-type", ctype), ("idempotency-key", key)],
        body.to_owned(),
    )
    .await
}

fn created(r: &Response, want: Value, replayed: bool) {
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::CREATED, want),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let header = r
        .headers
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap());
    assert_eq!(header, replayed.then_some("true"));
}

fn conflict(r: &Response, original: &str) {
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.error_code(), "idempotency_conflict");
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains(original), "{message}");
}

async fn offsets(b: &Broker, ns: &str) -> Vec<u64> {
    let r = b.get(&format!("/v1/namespaces/{ns}/events?from=0")).await;
    let page = ReadPage::from_json(&r.body).unwrap();
    page.events.iter().map(|e| e.offset).collect()
}

#[tokio::test]
async fn an_http_retry_answers_the_original_and_a_different_body_is_a_conflict() {
    let mut b = Broker::start(&[]);
    let json = "application/json";
    let pair = r#"[{"event":"a","data":1},{"event":"b","data":2}]"#;
    created(
        &post(&b, EVENTS, json, "k-1", pair).await,
        json!({"first": 0, "last": 1}),
        false,
    );
    // The same batch again: the original answer, nothing appended.
    created(
        &post(&b, EVENTS, json, "k-1", pair).await,
        json!({"first": 0, "last": 1}),
        true,
    );
    // The same events as NDJSON: the same request.
    let ndjson = "{\"event\":\"a\",\"data\":1}\n{\"event\":\"b\",\"data\":2}\n";
    created(
        &post(&b, EVENTS, "application/x-ndjson", "k-1", ndjson).await,
        json!({"first": 0, "last": 1}),
        true,
    );
    // The issue's input: the batch retried as a single event is another request.
    conflict(
        &post(&b, EVENTS, json, "k-1", r#"{"event":"a","data":1}"#).await,
        "0..=1",
    );
    for other in [
        r#"[{"event":"a","data":1}]"#,
        r#"[{"event":"a","data":1},{"event":"b","data":3}]"#,
        r#"[{"event":"a","data":1},{"event":"c","data":2}]"#,
        r#"[{"event":"a","data":1},{"event":"b","data":2,"key":"k"}]"#,
        r#"[{"event":"b","data":2},{"event":"a","data":1}]"#,
    ] {
        conflict(&post(&b, EVENTS, json, "k-1", other).await, "0..=1");
    }
    // A batch of one retried as a single event answers in the batch's shape, and the
    // other way round.
    let one = r#"{"event":"c","data":{"x":[1,2]}}"#;
    let one_batch = format!("[{one}]");
    created(
        &post(&b, EVENTS, json, "k-2", &one_batch).await,
        json!({"first": 2, "last": 2}),
        false,
    );
    created(
        &post(&b, EVENTS, json, "k-2", one).await,
        json!({"first": 2, "last": 2}),
        true,
    );
    created(
        &post(&b, EVENTS, json, "k-3", one).await,
        json!({"offset": 3}),
        false,
    );
    created(
        &post(&b, EVENTS, json, "k-3", &one_batch).await,
        json!({"offset": 3}),
        true,
    );
    // Raw bytes: the same bytes are a retry, other bytes a conflict.
    let raw = "/v1/namespaces/orders/events?event=blob";
    let bin = "application/octet-stream";
    created(
        &post(&b, raw, bin, "k-4", "\u{1}\u{2}").await,
        json!({"offset": 4}),
        false,
    );
    created(
        &post(&b, raw, bin, "k-4", "\u{1}\u{2}").await,
        json!({"offset": 4}),
        true,
    );
    conflict(&post(&b, raw, bin, "k-4", "\u{1}\u{3}").await, "4..=4");
    assert_eq!(offsets(&b, "orders").await, [0, 1, 2, 3, 4]);

    // The digests and shapes survive a crash (they are replayed from the write-ahead log).
    b.kill9();
    b.restart();
    created(
        &post(&b, EVENTS, json, "k-1", pair).await,
        json!({"first": 0, "last": 1}),
        true,
    );
    conflict(
        &post(&b, EVENTS, json, "k-1", r#"{"event":"a","data":1}"#).await,
        "0..=1",
    );
    created(
        &post(&b, EVENTS, json, "k-2", one).await,
        json!({"first": 2, "last": 2}),
        true,
    );
    assert_eq!(offsets(&b, "orders").await, [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_websocket_retry_answers_the_original_and_a_different_publish_is_a_conflict() {
    let b = Broker::start(&[]);
    for (protocol, ns) in [
        ("rewind.v1.json", "ws.json"),
        ("rewind.v1.msgpack", "ws.msgpack"),
    ] {
        let events = format!("/v1/namespaces/{ns}/events");
        let json = "application/json";
        created(
            &post(&b, &events, json, "w-1", r#"{"event":"e","data":"x"}"#).await,
            json!({"offset": 0}),
            false,
        );
        created(
            &post(
                &b,
                &events,
                json,
                "w-2",
                r#"[{"event":"e","data":"x"},{"event":"e","data":"y"}]"#,
            )
            .await,
            json!({"first": 1, "last": 2}),
            false,
        );
        let mut c = Client::connect(b.addr, Some(protocol)).await;
        let publish = |id: u64, data: &str, key: &str| json!({"t": "publish", "id": id, "ns": ns, "event": "e", "data": data, "idempotency_key": key});
        // The same event under the key HTTP used: the original offset.
        assert_eq!(
            c.answer(&publish(1, "x", "w-1")).await,
            ServerFrame::Published {
                id: 1,
                ns: ns.into(),
                offset: 0,
                replicated: None
            }
        );
        // Another payload under that key, and one event under a batch's key: conflicts.
        for (id, data, key) in [(2, "y", "w-1"), (3, "x", "w-2")] {
            match c.answer(&publish(id, data, key)).await {
                ServerFrame::Error {
                    code,
                    id: got,
                    ns: got_ns,
                    ..
                } => {
                    assert_eq!(
                        (code.as_str(), got, got_ns.as_deref()),
                        ("idempotency_conflict", Some(id), Some(ns))
                    );
                }
                other => panic!("{protocol}: expected a conflict, got {other:?}"),
            }
        }
        // A key first used over WebSocket is retried over HTTP.
        assert_eq!(
            c.answer(&publish(4, "z", "w-3")).await,
            ServerFrame::Published {
                id: 4,
                ns: ns.into(),
                offset: 3,
                replicated: None
            }
        );
        created(
            &post(&b, &events, json, "w-3", r#"{"event":"e","data":"z"}"#).await,
            json!({"offset": 3}),
            true,
        );
        conflict(
            &post(&b, &events, json, "w-3", r#"{"event":"e","data":"q"}"#).await,
            "3..=3",
        );
        // And the connection is still up; nothing else was appended.
        assert_eq!(c.answer(&json!({"t": "ping"})).await, ServerFrame::Pong);
        assert_eq!(offsets(&b, ns).await, [0, 1, 2, 3]);
    }
}

/// Keys every transport refuses (control characters other than TAB are refused by
/// HTTP/1.1's own parser already, so they are tried over WebSocket only).
const BAD_KEYS: [&str; 6] = ["", " ", "a b", "\t", "a\tb", "é"];
const BAD_CONTROL_KEYS: [&str; 3] = ["a\u{7f}", "x\u{1}", "\n"];

fn good_keys() -> Vec<String> {
    vec![
        "a".into(),
        "!~".into(),
        "8e03978e-40d5-43e8-bc93-6894a57f9324".into(),
        "k".repeat(256),
    ]
}

#[tokio::test]
async fn one_idempotency_key_rule_on_every_transport() {
    let b = Broker::start(&[]);
    let mut bad: Vec<String> = BAD_KEYS.iter().map(|k| k.to_string()).collect();
    bad.push("k".repeat(257));
    bad.extend(BAD_CONTROL_KEYS.iter().map(|k| k.to_string()));
    for key in &bad {
        // Over HTTP, written raw: a client library would refuse some of these bytes.
        let body = r#"{"event":"e"}"#;
        let mut req = format!(
            "POST /v1/namespaces/keys/events HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nidempotency-key: ",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(key.as_bytes());
        req.extend_from_slice(b"\r\n\r\n");
        req.extend_from_slice(body.as_bytes());
        if !BAD_CONTROL_KEYS.contains(&key.as_str()) {
            let answer = String::from_utf8_lossy(&raw_http(b.addr, &req).await).into_owned();
            assert!(answer.starts_with("HTTP/1.1 400"), "{key:?}: {answer}");
            assert!(
                answer.contains(r#""code":"bad_frame""#),
                "{key:?}: {answer}"
            );
        }
        for protocol in ["rewind.v1.json", "rewind.v1.msgpack"] {
            let mut c = Client::connect(b.addr, Some(protocol)).await;
            let frame = json!({"t": "publish", "id": 9, "ns": "keys", "event": "e", "idempotency_key": key});
            match c.answer(&frame).await {
                ServerFrame::Error { code, id, .. } => {
                    assert_eq!(
                        (code.as_str(), id),
                        ("bad_frame", Some(9)),
                        "{protocol} {key:?}"
                    )
                }
                other => panic!("{protocol} {key:?}: {other:?}"),
            }
        }
    }
    // Nothing was appended, and the refusals created nothing.
    assert_eq!(
        b.get("/v1/namespaces/keys").await.status,
        StatusCode::NOT_FOUND
    );
    for (next, key) in good_keys().into_iter().enumerate() {
        let r = post(
            &b,
            "/v1/namespaces/keys/events",
            "application/json",
            &key,
            r#"{"event":"e"}"#,
        )
        .await;
        created(&r, json!({"offset": next}), false);
        for protocol in ["rewind.v1.json", "rewind.v1.msgpack"] {
            let mut c = Client::connect(b.addr, Some(protocol)).await;
            let frame = json!({"t": "publish", "id": 1, "ns": "keys", "event": "e", "idempotency_key": key});
            assert_eq!(
                c.answer(&frame).await,
                ServerFrame::Published {
                    id: 1,
                    ns: "keys".into(),
                    offset: next as u64,
                    replicated: None
                },
                "{protocol} {key:?}"
            );
        }
    }
}

/// Sends `text` as it is in a JSON WebSocket text frame and returns the next answer.
async fn ws_text_answer(c: &mut Client, text: &str) -> ServerFrame {
    c.raw(Message::Text(text.to_owned().into())).await;
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Ping) => {}
            ServerMessage::Frame(f) => return f,
            ServerMessage::Event(e) => panic!("unexpected event {e:?}"),
        }
    }
}

fn published(f: ServerFrame, id: u64, offset: u64) {
    assert_eq!(
        f,
        ServerFrame::Published {
            id,
            ns: "ws1".into(),
            offset,
            replicated: None
        }
    );
}

/// The issue's inputs: a retry is compared by value, so whitespace, escapes, the float's
/// spelling and the encoding do not count; key order, integer against float and bytes
/// against JSON do (docs/http-api.md, "Idempotency-Key").
#[tokio::test]
async fn the_same_value_is_the_same_request_whatever_its_spelling_or_encoding() {
    let b = Broker::start(&[]);
    let events = "/v1/namespaces/ws1/events";
    let json = "application/json";
    let ndjson = "application/x-ndjson";
    // Whitespace, over JSON and NDJSON.
    let tight = r#"{"event":"a","data":{"z":1,"y":[1,2]}}"#;
    let spaced = r#"{"event":"a","data":{ "z": 1, "y": [1, 2] }}"#;
    created(
        &post(&b, events, json, "w1", tight).await,
        json!({"offset": 0}),
        false,
    );
    created(
        &post(&b, events, json, "w1", spaced).await,
        json!({"offset": 0}),
        true,
    );
    let pretty = "{\n  \"event\": \"a\",\n  \"data\": {\n    \"z\": 1,\n    \"y\": [\n      1,\n      2\n    ]\n  }\n}";
    created(
        &post(&b, events, json, "w1", pretty).await,
        json!({"offset": 0}),
        true,
    );
    created(
        &post(&b, events, ndjson, "w1", &format!("{spaced}\n")).await,
        json!({"offset": 0}),
        true,
    );
    // Key order counts: every reader gets the keys in the order they were sent.
    conflict(
        &post(
            &b,
            events,
            json,
            "w1",
            r#"{"event":"a","data":{"y":[1,2],"z":1}}"#,
        )
        .await,
        "0..=0",
    );
    // Float spellings of one float are one value; an integer is not a float.
    let data = |d: &str| format!(r#"{{"event":"n","data":{d}}}"#);
    created(
        &post(&b, events, json, "n1", &data("1e2")).await,
        json!({"offset": 1}),
        false,
    );
    for same in ["100.0", "1.0e2", "100.000", "1E+2"] {
        created(
            &post(&b, events, json, "n1", &data(same)).await,
            json!({"offset": 1}),
            true,
        );
    }
    for other in ["100", "100.5"] {
        conflict(&post(&b, events, json, "n1", &data(other)).await, "1..=1");
    }
    created(
        &post(&b, events, json, "n2", &data("1")).await,
        json!({"offset": 2}),
        false,
    );
    conflict(&post(&b, events, json, "n2", &data("1.0")).await, "2..=2");
    // String escapes are the string they stand for.
    created(
        &post(&b, events, json, "s1", &data(r#""A\u00e9""#)).await,
        json!({"offset": 3}),
        false,
    );
    created(
        &post(&b, events, json, "s1", &data(r#""\u0041é""#)).await,
        json!({"offset": 3}),
        true,
    );

    // A WebSocket JSON publish written with spaces (Python's json.dumps), then HTTP and
    // WebSocket MessagePack publishes of the same value: one request.
    let mut text = Client::connect(b.addr, Some("rewind.v1.json")).await;
    let frame = r#"{"t": "publish", "id": 1, "ns": "ws1", "event": "a", "data": {"x": [1, 2]}, "idempotency_key": "wk"}"#;
    published(ws_text_answer(&mut text, frame).await, 1, 4);
    created(
        &post(
            &b,
            events,
            json,
            "wk",
            r#"{"event":"a","data":{"x":[1,2]}}"#,
        )
        .await,
        json!({"offset": 4}),
        true,
    );
    let mut packed = Client::connect(b.addr, Some("rewind.v1.msgpack")).await;
    let publish = |id: u64, data: Value, key: &str| json!({"t": "publish", "id": id, "ns": "ws1", "event": "a", "data": data, "idempotency_key": key});
    published(
        packed.answer(&publish(2, json!({"x": [1, 2]}), "wk")).await,
        2,
        4,
    );
    // MessagePack first, then JSON text with spaces over both other ways in.
    published(
        packed
            .answer(&publish(3, json!({"f": 0.5, "s": "é"}), "mk"))
            .await,
        3,
        5,
    );
    created(
        &post(
            &b,
            events,
            ndjson,
            "mk",
            "{\"event\": \"a\", \"data\": {\"f\": 5e-1, \"s\": \"\\u00e9\"}}\n",
        )
        .await,
        json!({"offset": 5}),
        true,
    );
    let frame = r#"{"t":"publish","id":4,"ns":"ws1","event":"a","data":{ "f" : 0.50 , "s" : "é" },"idempotency_key":"mk"}"#;
    published(ws_text_answer(&mut text, frame).await, 4, 5);
    // Bytes are not the JSON value they spell.
    created(
        &post(
            &b,
            "/v1/namespaces/ws1/events?event=a",
            "application/octet-stream",
            "b1",
            r#"{"x":[1,2]}"#,
        )
        .await,
        json!({"offset": 6}),
        false,
    );
    conflict(
        &post(
            &b,
            events,
            json,
            "b1",
            r#"{"event":"a","data":{"x":[1,2]}}"#,
        )
        .await,
        "6..=6",
    );
    assert_eq!(offsets(&b, "ws1").await, [0, 1, 2, 3, 4, 5, 6]);
}
