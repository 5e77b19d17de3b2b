//! Whatever is acknowledged is readable in every encoding (issue 8, section 4), against
//! the real binary:
//!
//! - every way in (HTTP JSON, a JSON batch, NDJSON, WebSocket JSON, WebSocket
//!   MessagePack) refuses every kind of value one encoding cannot carry, with
//!   `bad_frame`/400 and the path of the fault, and appends nothing;
//! - what is accepted reads back as the same value from every reader in both encodings,
//!   including by third-party decoders (serde_json, rmp-serde) reading whole answers;
//! - an event that cannot be encoded (a log written before the rules, by the broker's
//!   library directly) reaches every reader as an error with its offset, never as an
//!   empty frame, a 500 or a silent skip: HTTP reads and long-polls in JSON and
//!   MessagePack, WebSocket subscribers in JSON and MessagePack, the Rust client and
//!   `rewind tail`.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rewind_client::{Client, ClientOptions, Item};
use rewind_protocol::codec::ReadPage;
use rewind_protocol::frame::{ClientFrame, ServerFrame, ServerMessage};
use rewind_protocol::{NewEvent, Payload, Position};
use rewind_tests::ws::{Client as Ws, PATIENCE};
use rewind_tests::{rewind_bin, Broker};
use rewind_tests::{Method, StatusCode};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// A kind of JSON value MessagePack cannot carry: what, the `data`, the path the
/// refusal must name, and a word of its reason.
struct Bad {
    what: &'static str,
    data: String,
    path: &'static str,
    why: &'static str,
}

fn bad(what: &'static str, data: &str, path: &'static str, why: &'static str) -> Bad {
    Bad {
        what,
        data: data.to_owned(),
        path,
        why,
    }
}

fn bad_json_values() -> Vec<Bad> {
    vec![
        bad(
            "lone leading surrogate",
            r#"{"k":"\ud800"}"#,
            "data.k",
            "surrogate",
        ),
        bad(
            "lone trailing surrogate",
            r#"{"k":[1,2,3,"a\udc00"]}"#,
            "data.k[3]",
            "surrogate",
        ),
        bad(
            "lone surrogate in a key",
            r#"{"m":{"\ud800":1}}"#,
            "data.m",
            "surrogate",
        ),
        bad("a key twice", r#"{"m":{"a":1,"a":2}}"#, "data.m", "twice"),
        bad(
            "integer above 2^64-1",
            r#"{"n":18446744073709551616}"#,
            "data.n",
            "64-bit",
        ),
        bad(
            "integer below -2^63",
            r#"{"n":[-9223372036854775809]}"#,
            "data.n[0]",
            "64-bit",
        ),
        bad("float too large", r#"{"f":1e400}"#, "data.f", "too large"),
        bad("float too small", r#"{"f":-1e-400}"#, "data.f", "too small"),
        bad("nested 101", &nested(101), "data[0][0]", "deeper than 100"),
        bad("nested 128", &nested(128), "data[0][0]", "deeper than 100"),
        bad(
            "nested 1,000",
            &nested(1000),
            "data[0][0]",
            "deeper than 100",
        ),
    ]
}

fn assert_names(message: &str, b: &Bad) {
    assert!(
        message.contains(b.path) && message.contains(b.why),
        "{}: the message should name {} and say {:?}: {message}",
        b.what,
        b.path,
        b.why
    );
}

async fn next_offset(b: &Broker, ns: &str) -> u64 {
    let info = b.get(&format!("/v1/namespaces/{ns}")).await.json();
    info["next"].as_u64().unwrap_or_else(|| panic!("{info}"))
}

async fn expect_frame(c: &mut Ws) -> ServerFrame {
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Ping) => {}
            ServerMessage::Frame(f) => return f,
            ServerMessage::Event(e) => panic!("expected a frame, got event {e:?}"),
        }
    }
}

#[tokio::test]
async fn http_json_batch_and_ndjson_refuse_what_messagepack_cannot_carry() {
    let b = Broker::start(&[]);
    // The issue's input: a lone surrogate between two normal events.
    assert_eq!(
        b.post_json("/v1/namespaces/enc/events", r#"{"event":"x","data":1}"#)
            .await
            .status,
        StatusCode::CREATED
    );
    for bad in bad_json_values() {
        let single = format!(r#"{{"event":"x","data":{}}}"#, bad.data);
        let r = b.post_json("/v1/namespaces/enc/events", &single).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", bad.what);
        assert_eq!(r.error_code(), "bad_frame", "{}", bad.what);
        assert_names(r.json()["error"]["message"].as_str().unwrap(), &bad);

        let batch = format!(r#"[{{"event":"ok"}},{{"event":"x","data":{}}}]"#, bad.data);
        let r = b.post_json("/v1/namespaces/enc/events", &batch).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", bad.what);
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with("item 1: "), "{message}");
        assert_names(&message, &bad);

        let ndjson = format!(
            "{{\"event\":\"ok\"}}\n{{\"event\":\"x\",\"data\":{}}}\n",
            bad.data
        );
        let r = b
            .request(
                Method::POST,
                "/v1/namespaces/enc/events",
                &[("content-type", "application/x-ndjson")],
                ndjson,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", bad.what);
        assert_eq!(r.error_code(), "bad_frame");
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with("line 2: "), "{message}");
        assert_names(&message, &bad);
    }
    assert_eq!(
        b.post_json("/v1/namespaces/enc/events", r#"{"event":"x","data":2}"#)
            .await
            .status,
        StatusCode::CREATED
    );
    // Nothing refused was appended, not even the good half of a batch.
    assert_eq!(next_offset(&b, "enc").await, 2);
    let page = ReadPage::from_msgpack(
        &b.request(
            Method::GET,
            "/v1/namespaces/enc/events?from=0",
            &[("accept", "application/msgpack")],
            "",
        )
        .await
        .body,
    )
    .unwrap();
    let data: Vec<Payload> = page.events.into_iter().map(|e| e.data).collect();
    assert_eq!(data, [Payload::Json("1".into()), Payload::Json("2".into())]);
    // A MessagePack subscriber gets both, whole (the test client refuses empty frames).
    let mut c = Ws::connect(b.addr, Some("rewind.v1.msgpack")).await;
    c.send(&ClientFrame::Open {
        ns: "enc".into(),
        from: Position::Earliest,
        epoch: None,
        credit: 10,
    })
    .await;
    assert!(matches!(
        expect_any(&mut c).await,
        Got::Frame(ServerFrame::Opened { .. })
    ));
    for want in 0..2 {
        assert_eq!(expect_any(&mut c).await.summary(), format!("event {want}"));
    }
}

#[tokio::test]
async fn websocket_json_publishes_refuse_what_messagepack_cannot_carry() {
    let b = Broker::start(&[]);
    let mut c = Ws::connect(b.addr, Some("rewind.v1.json")).await;
    for (id, bad) in bad_json_values().iter().enumerate() {
        let frame = format!(
            r#"{{"t":"publish","id":{id},"ns":"enc","event":"x","data":{}}}"#,
            bad.data
        );
        c.raw(Message::Text(frame.into())).await;
        match expect_frame(&mut c).await {
            ServerFrame::Error {
                code,
                message,
                id: Some(got),
                ..
            } => {
                assert_eq!(
                    (code.as_str(), got),
                    ("bad_frame", id as u64),
                    "{}",
                    bad.what
                );
                assert_names(&message, bad);
            }
            f => panic!("{}: expected an error, got {f:?}", bad.what),
        }
    }
    // The connection is still up, and only this publish was appended.
    c.raw(Message::Text(
        r#"{"t":"publish","id":99,"ns":"enc","event":"x","data":{"ok":true}}"#.into(),
    ))
    .await;
    assert_eq!(
        expect_frame(&mut c).await,
        ServerFrame::Published {
            id: 99,
            ns: "enc".into(),
            offset: 0,
            replicated: None
        }
    );
    assert_eq!(next_offset(&b, "enc").await, 1);
}

fn mp_str(s: &str) -> Vec<u8> {
    assert!(s.len() < 32);
    [&[0xa0 | s.len() as u8][..], s.as_bytes()].concat()
}

/// `{"t":"publish","id":id,"ns":ns,"event":"x","data":data}` with `data` as given.
fn mp_publish(id: u8, ns: &str, data: &[u8]) -> Vec<u8> {
    assert!(id < 128);
    [
        vec![0x85],
        mp_str("t"),
        mp_str("publish"),
        mp_str("id"),
        vec![id],
        mp_str("ns"),
        mp_str(ns),
        mp_str("event"),
        mp_str("x"),
        mp_str("data"),
        data.to_vec(),
    ]
    .concat()
}

/// A one-entry map `{key: value}`.
fn mp_map1(key: &str, value: &[u8]) -> Vec<u8> {
    [vec![0x81], mp_str(key), value.to_vec()].concat()
}

fn mp_nested(depth: usize) -> Vec<u8> {
    [vec![0x91; depth], vec![0x01]].concat()
}

/// Kinds of MessagePack value JSON cannot carry, as (what, data, path, a word of why).
fn bad_msgpack_values() -> Vec<(&'static str, Vec<u8>, &'static str, &'static str)> {
    let nan = [&[0xcb][..], &f64::NAN.to_be_bytes()].concat();
    let inf = [&[0xca][..], &f32::INFINITY.to_be_bytes()].concat();
    vec![
        (
            "nested 101",
            mp_nested(101),
            "data[0][0]",
            "deeper than 100",
        ),
        (
            "nested 129",
            mp_nested(129),
            "data[0][0]",
            "deeper than 100",
        ),
        (
            "nested 1,000",
            mp_nested(1000),
            "data[0][0]",
            "deeper than 100",
        ),
        (
            "nested 1,100",
            mp_nested(1100),
            "data[0][0]",
            "deeper than 100",
        ),
        (
            "an integer key",
            mp_map1("m", &[0x81, 0x01, 0x02]),
            "data.m",
            "not a string",
        ),
        (
            "an array key",
            mp_map1("m", &[0x81, 0x90, 0x02]),
            "data.m",
            "not a string",
        ),
        (
            "bytes inside a value",
            mp_map1("k", &[0x92, 0x01, 0xc4, 0x01, 0x00]),
            "data.k[1]",
            "bytes",
        ),
        (
            "an extension",
            mp_map1("at", &[0xd6, 0xff, 0, 0, 0, 0]),
            "data.at",
            "extension",
        ),
        ("NaN", mp_map1("x", &nan), "data.x", "NaN"),
        ("float32 infinity", mp_map1("x", &inf), "data.x", "inf"),
        (
            "an encoded surrogate",
            mp_map1("s", &[0xa3, 0xed, 0xa0, 0x80]),
            "data.s",
            "UTF-8",
        ),
        (
            "a key twice",
            [vec![0x82], mp_str("a"), vec![1], mp_str("a"), vec![2]].concat(),
            "data",
            "twice",
        ),
    ]
}

#[tokio::test]
async fn websocket_messagepack_publishes_refuse_what_json_cannot_carry() {
    let b = Broker::start(&[]);
    let mut c = Ws::connect(b.addr, Some("rewind.v1.msgpack")).await;
    for (id, (what, data, path, why)) in bad_msgpack_values().into_iter().enumerate() {
        c.raw(Message::Binary(mp_publish(id as u8, "enc", &data).into()))
            .await;
        match c.recv().await {
            rewind_tests::ws::Received::Message(ServerMessage::Frame(ServerFrame::Error {
                code,
                message,
                id: Some(got),
                ..
            })) => {
                assert_eq!((code.as_str(), got), ("bad_frame", id as u64), "{what}");
                assert!(
                    message.contains(path) && message.contains(why),
                    "{what}: {message}"
                );
            }
            other => panic!("{what}: expected bad_frame, got {other:?}"),
        }
    }
    // Still connected; a value both encodings carry is taken, with its key order.
    let good = [vec![0x82], mp_str("b"), vec![1], mp_str("a"), mp_nested(98)].concat();
    c.raw(Message::Binary(mp_publish(100, "enc", &good).into()))
        .await;
    assert_eq!(
        expect_frame(&mut c).await,
        ServerFrame::Published {
            id: 100,
            ns: "enc".into(),
            offset: 0,
            replicated: None
        }
    );
    let page = b.get("/v1/namespaces/enc/events?from=0").await;
    let page = ReadPage::from_json(&page.body).unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(
        page.events[0].data,
        Payload::Json(format!(r#"{{"b":1,"a":{}}}"#, nested(98)))
    );
}

/// Values at the edges of what both encodings carry.
fn good_values() -> Vec<String> {
    vec![
        r#"{"b":1,"a":[18446744073709551615,-9223372036854775808,1.5,-0.125,3.0]}"#.into(),
        r#""\ud83d\ude00 é \u0000 \"""#.into(),
        r#"{"":{},"x":[],"\ud83d\ude00":null}"#.into(),
        nested(100),
        format!(r#"{{"deep":{}}}"#, nested(99)),
        "null".into(),
    ]
}

#[tokio::test]
async fn accepted_values_read_back_the_same_from_every_way_in_and_every_reader() {
    let b = Broker::start(&[]);
    let expected: Vec<Value> = good_values()
        .iter()
        .map(|v| serde_json::from_str(v).unwrap())
        .collect();
    let n = expected.len();
    // In through HTTP JSON, NDJSON, WebSocket JSON and WebSocket MessagePack.
    for v in good_values() {
        let r = b
            .post_json(
                "/v1/namespaces/good/events",
                &format!(r#"{{"event":"v","data":{v}}}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{v}");
    }
    let ndjson: String = good_values()
        .iter()
        .map(|v| format!("{{\"event\":\"v\",\"data\":{v}}}\n"))
        .collect();
    let r = b
        .request(
            Method::POST,
            "/v1/namespaces/good/events",
            &[("content-type", "application/x-ndjson")],
            ndjson,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let mut wj = Ws::connect(b.addr, Some("rewind.v1.json")).await;
    let mut wm = Ws::connect(b.addr, Some("rewind.v1.msgpack")).await;
    for (i, v) in good_values().iter().enumerate() {
        wj.send(&ClientFrame::Publish {
            id: i as u64,
            ns: "good".into(),
            event: "v".into(),
            data: Some(Payload::Json(v.clone())),
            key: None,
            idempotency_key: None,
        })
        .await;
        assert!(matches!(
            expect_frame(&mut wj).await,
            ServerFrame::Published { .. }
        ));
        let data = rmp_serde::to_vec(&expected[i]).unwrap();
        wm.raw(Message::Binary(mp_publish(i as u8, "good", &data).into()))
            .await;
        assert!(matches!(
            expect_frame(&mut wm).await,
            ServerFrame::Published { .. }
        ));
    }
    let total = 4 * n;
    assert_eq!(next_offset(&b, "good").await, total as u64);
    // HTTP JSON, then NDJSON, then the two WebSocket publishers taking turns.
    let order: Vec<&Value> = (0..2 * n)
        .map(|i| &expected[i % n])
        .chain(expected.iter().flat_map(|v| [v, v]))
        .collect();
    let want = |offset: usize| order[offset];

    // HTTP, whole pages read by serde_json and by rmp-serde.
    let json = b.get("/v1/namespaces/good/events?from=0&limit=1000").await;
    let page: Value = serde_json::from_slice(&json.body).expect("serde_json reads the page");
    let msgpack = b
        .request(
            Method::GET,
            "/v1/namespaces/good/events?from=0&limit=1000",
            &[("accept", "application/msgpack")],
            "",
        )
        .await;
    let mpage: Value = rmp_serde::from_slice(&msgpack.body).expect("rmp-serde reads the page");
    for (i, (j, m)) in page["events"]
        .as_array()
        .unwrap()
        .iter()
        .zip(mpage["events"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(&j["data"], want(i), "HTTP JSON, offset {i}");
        assert_eq!(&m["data"], want(i), "HTTP MessagePack, offset {i}");
    }
    assert_eq!(page["events"].as_array().unwrap().len(), total);
    assert_eq!(mpage["events"].as_array().unwrap().len(), total);

    // WebSocket subscribers, whole frames read by serde_json and by rmp-serde.
    for (c, msgpack) in [(&mut wj, false), (&mut wm, true)] {
        c.send(&ClientFrame::Open {
            ns: "good".into(),
            from: Position::Earliest,
            epoch: None,
            credit: 1000,
        })
        .await;
        let mut seen = 0;
        while seen < total {
            let m = tokio::time::timeout(PATIENCE, c.socket.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("a frame");
            let frame: Value = match (m, msgpack) {
                (Message::Text(t), false) => serde_json::from_str(&t).expect("serde_json reads it"),
                (Message::Binary(b), true) => {
                    rmp_serde::from_slice(&b).expect("rmp-serde reads it")
                }
                (other, _) => panic!("unexpected {other:?}"),
            };
            if frame["t"] != "event" {
                continue;
            }
            assert_eq!(frame["offset"], seen as u64);
            assert_eq!(
                &frame["data"],
                want(seen),
                "msgpack {msgpack}, offset {seen}"
            );
            seen += 1;
        }
    }
}

/// A log written by the broker's library directly, as a broker from before the value
/// rules stored it: events 1 and 3 break the rules, the others do not.
fn legacy_log(dir: &Path) {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let config = rewind_broker::config::Config {
                data_dir: dir,
                ..Default::default()
            };
            let log = rewind_broker::Log::open(Arc::new(config)).expect("open the log");
            let json = |e: &str, d: &str| NewEvent {
                event: e.into(),
                key: None,
                data: Payload::Json(d.into()),
            };
            let events = vec![
                json("ok", r#"{"a":1}"#),
                json("surrogate", r#"{"k":"\ud800"}"#),
                json("ok", r#""two""#),
                json("deep", &nested(128)),
                NewEvent {
                    event: "bytes".into(),
                    key: None,
                    data: Payload::Bytes(vec![1, 2, 3]),
                },
            ];
            log.append("legacy", events, None).await.expect("append");
            log.shutdown().await;
        });
    })
    .join()
    .expect("the legacy writer");
}

async fn msgpack_page(b: &Broker, query: &str) -> ReadPage {
    let r = b
        .request(
            Method::GET,
            &format!("/v1/namespaces/legacy/events?{query}"),
            &[("accept", "application/msgpack")],
            "",
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    ReadPage::from_msgpack(&r.body).unwrap()
}

#[tokio::test]
async fn http_readers_report_an_event_they_cannot_encode_with_its_offset() {
    let b = Broker::start_prepared(&[], legacy_log);
    // JSON carries every stored payload as it is.
    let page =
        ReadPage::from_json(&b.get("/v1/namespaces/legacy/events?from=0").await.body).unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(
        page.events[1].data,
        Payload::Json(r#"{"k":"\ud800"}"#.into())
    );
    assert_eq!(page.error, None);

    // MessagePack: each page stops at the event it cannot encode, names it, and `next`
    // goes past it; the events around it still arrive.
    let mut from = 0;
    let mut got = Vec::new();
    let mut errors = Vec::new();
    while from < 5 {
        let page = msgpack_page(&b, &format!("from={from}")).await;
        got.extend(page.events.iter().map(|e| e.offset));
        if let Some(e) = page.error {
            assert_eq!(e.code, "internal");
            assert!(
                e.message.contains(&format!("event {}", e.offset)),
                "{}",
                e.message
            );
            assert_eq!(page.next, e.offset + 1);
            errors.push(e.offset);
        }
        assert!(page.next > from);
        from = page.next;
    }
    assert_eq!(got, [0, 2, 4]);
    assert_eq!(errors, [1, 3]);

    // A JSON long-poll gets the payload as stored.
    let page = ReadPage::from_json(
        &b.get("/v1/namespaces/legacy/events?from=1&limit=1&wait=20")
            .await
            .body,
    )
    .unwrap();
    assert_eq!(
        page.events[0].data,
        Payload::Json(r#"{"k":"\ud800"}"#.into())
    );
    // A MessagePack long-poll answers like a read, at once, when the event is there.
    let page = msgpack_page(&b, "from=1&wait=20").await;
    assert!(page.events.is_empty());
    assert_eq!(page.error.map(|e| e.offset), Some(1));
    assert_eq!(page.next, 2);
    // A MessagePack long-poll past the end gets what is appended next, in whichever
    // order the poll and the publish reach the broker.
    let waiting = {
        let addr = b.addr;
        tokio::spawn(async move {
            rewind_tests::request(
                addr,
                Method::GET,
                "/v1/namespaces/legacy/events?from=5&wait=20",
                &[("accept", "application/msgpack")],
                bytes::Bytes::new(),
            )
            .await
            .expect("long-poll")
        })
    };
    b.post_json(
        "/v1/namespaces/legacy/events",
        r#"{"event":"new","data":5}"#,
    )
    .await;
    let page = ReadPage::from_msgpack(&waiting.await.unwrap().body).unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [5]
    );
}

#[tokio::test]
async fn websocket_subscribers_get_an_error_with_the_offset_in_place_of_the_event() {
    let b = Broker::start_prepared(&[], legacy_log);
    for protocol in ["rewind.v1.json", "rewind.v1.msgpack"] {
        let mut c = Ws::connect(b.addr, Some(protocol)).await;
        c.send(&ClientFrame::Open {
            ns: "legacy".into(),
            from: Position::Earliest,
            epoch: None,
            credit: 100,
        })
        .await;
        assert!(matches!(
            expect_any(&mut c).await,
            Got::Frame(ServerFrame::Opened { .. })
        ));
        let mut got = Vec::new();
        while got.len() < 5 {
            got.push(expect_any(&mut c).await);
        }
        let summary: Vec<String> = got.iter().map(Got::summary).collect();
        if protocol == "rewind.v1.json" {
            // JSON carries every stored payload as it is.
            assert_eq!(
                summary,
                ["event 0", "event 1", "event 2", "event 3", "event 4"]
            );
        } else {
            assert_eq!(
                summary,
                [
                    "event 0",
                    "internal at 1",
                    "event 2",
                    "internal at 3",
                    "event 4"
                ],
                "{got:?}"
            );
        }
        // The subscription goes on live after them.
        b.post_json(
            "/v1/namespaces/legacy/events",
            &format!(r#"{{"event":"live","data":"{protocol}"}}"#),
        )
        .await;
        let live = expect_any(&mut c).await;
        assert!(matches!(live, Got::Event(_)), "{live:?}");
    }
}

#[derive(Debug)]
enum Got {
    Event(u64),
    Frame(ServerFrame),
}

impl Got {
    fn summary(&self) -> String {
        match self {
            Got::Event(o) => format!("event {o}"),
            Got::Frame(ServerFrame::Error {
                code,
                offset: Some(o),
                ns: Some(ns),
                ..
            }) if ns == "legacy" => format!("{code} at {o}"),
            Got::Frame(f) => format!("{f:?}"),
        }
    }
}

async fn expect_any(c: &mut Ws) -> Got {
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Ping) => {}
            ServerMessage::Frame(f) => return Got::Frame(f),
            ServerMessage::Event(e) => return Got::Event(e.event.offset),
        }
    }
}

#[tokio::test]
async fn the_rust_client_reports_what_it_did_not_get_as_a_gap() {
    let b = Broker::start_prepared(&[], legacy_log);
    let client = Client::connect(&b.url(), ClientOptions::default())
        .await
        .unwrap();
    let mut sub = client
        .subscribe("legacy", Position::Earliest)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 6 {
        let item = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("an item in time")
            .expect("the subscription goes on");
        got.push(match item {
            Item::Epoch(_) => "epoch".to_owned(),
            Item::Event(e) => format!("event {}", e.offset),
            Item::Gap { from, to, reason } => {
                assert!(reason.starts_with("internal"), "{reason}");
                format!("gap {from}..{to}")
            }
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        got,
        ["epoch", "event 0", "gap 1..2", "event 2", "gap 3..4", "event 4"]
    );
}

#[tokio::test]
async fn rewind_tail_says_on_stderr_which_offsets_it_did_not_get() {
    let b = Broker::start_prepared(&[], legacy_log);
    let mut tail = Command::new(rewind_bin())
        .args(["tail", "legacy", "--from", "earliest", "--url", &b.url()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tail");
    let stdout = tail.stdout.take().unwrap();
    let mut stderr = tail.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let offsets: Vec<u64> = (0..3)
        .map(|_| {
            let line = lines
                .recv_timeout(Duration::from_secs(20))
                .expect("a line from tail");
            let v: Value = serde_json::from_str(&line).unwrap();
            v["offset"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(offsets, [0, 2, 4]);
    let _ = tail.kill();
    let _ = tail.wait();
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    for gap in [
        "offsets 1..2 were not delivered",
        "offsets 3..4 were not delivered",
    ] {
        assert!(err.contains(gap), "{err}");
    }
    assert!(err.contains("internal"), "{err}");
}

/// A broker stand-in that answers `open` with `opened`, then events 0 and 2 and nothing
/// for 1: a hole no broker frame announced.
#[tokio::test]
async fn the_rust_client_reports_an_unannounced_hole_in_the_offsets() {
    use futures::SinkExt;
    use rewind_protocol::frame::{decode_msgpack, encode_event_msgpack};
    use rewind_protocol::Event;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // The signature, and its large error type, are tungstenite's callback.
        #[allow(clippy::result_large_err)]
        fn echo(_: &Request, mut res: Response) -> Result<Response, ErrorResponse> {
            res.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("rewind.v1.msgpack"),
            );
            Ok(res)
        }
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, echo)
            .await
            .unwrap();
        loop {
            let Some(Ok(Message::Binary(b))) = ws.next().await else {
                return;
            };
            if let Ok(ClientFrame::Open { ns, .. }) = decode_msgpack(&b, 1 << 20) {
                let opened = ServerFrame::Opened {
                    ns: ns.clone(),
                    epoch: "0123456789abcdef".into(),
                    from: 0,
                    earliest: 0,
                    next: 3,
                };
                ws.send(Message::Binary(opened.to_msgpack().into()))
                    .await
                    .unwrap();
                for offset in [0, 2] {
                    let ev = Event {
                        offset,
                        event: "e".into(),
                        ts: 1,
                        key: None,
                        data: Payload::Json(offset.to_string()),
                    };
                    let frame = encode_event_msgpack(&ns, &ev).unwrap();
                    ws.send(Message::Binary(frame.into())).await.unwrap();
                }
            }
        }
    });
    let client = Client::connect(&format!("ws://{addr}"), ClientOptions::default())
        .await
        .unwrap();
    let mut sub = client.subscribe("holey", Position::Earliest).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let item = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("an item in time")
            .expect("the subscription goes on");
        got.push(match item {
            Item::Epoch(_) => "epoch".to_owned(),
            Item::Event(e) => format!("event {}", e.offset),
            Item::Gap { from, to, .. } => format!("gap {from}..{to}"),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(got, ["epoch", "event 0", "gap 1..2", "event 2"]);
    assert_eq!(sub.resume().map(|r| r.next), Some(3));
    drop(sub);
    drop(client);
    server.abort();
}
