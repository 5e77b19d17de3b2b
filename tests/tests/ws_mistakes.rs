//! Mistakes in WebSocket frames against the real binary: each is answered with an `error`
//! (or a close code where the frame is not a frame at all), in its turn among the
//! publishes' answers, and the connection goes on working.

use rewind_protocol::frame::{ClientFrame, EventFrame, ServerFrame, ServerMessage};
use rewind_protocol::{Payload, Position};
use rewind_tests::ws::Client;
use rewind_tests::Broker;
use tokio_tungstenite::tungstenite::Message;

/// Creates a namespace (a subscription does not).
async fn create(b: &Broker, ns: &str) {
    let r = b.put_json(&format!("/v1/namespaces/{ns}"), "").await;
    assert_eq!(r.status, hyper::StatusCode::CREATED, "{ns}");
}

async fn text(c: &mut Client, frame: &str) {
    c.raw(Message::Text(frame.to_owned().into())).await;
}

async fn binary(c: &mut Client, bytes: &[u8]) {
    c.raw(Message::Binary(bytes.to_vec().into())).await;
}

/// One answer to a publish: `Ok((id, offset))` or `Err((id, code))`.
type Answer = Result<(u64, u64), (Option<u64>, String)>;

/// Reads until `n` answers have come, keeping the events that came meanwhile; pings and
/// other frames fail the test.
async fn answers(c: &mut Client, n: usize, events: &mut Vec<EventFrame>) -> Vec<Answer> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Published { id, offset, .. }) => {
                got.push(Ok((id, offset)))
            }
            ServerMessage::Frame(ServerFrame::Error { id, code, .. }) => got.push(Err((id, code))),
            ServerMessage::Frame(ServerFrame::Ping) => {}
            ServerMessage::Event(e) => events.push(e),
            other => panic!("expected an answer, got {other:?} after {got:?}"),
        }
    }
    got
}

/// Every way a `publish` with `bin: true` can be refused: the refusal is answered in its
/// turn, its payload (the next binary frame) is read and discarded, and the connection
/// keeps publishing and delivering. Inputs from the new-user tester's `bin2.py`.
#[tokio::test]
async fn a_refused_bin_publish_is_answered_in_turn_and_its_payload_discarded() {
    let b = Broker::start(&[]);
    let ns = "val.e";
    create(&b, ns).await;
    let mut c = Client::connect(b.addr, Some("rewind.v1.json")).await;
    c.send(&ClientFrame::Open {
        ns: ns.into(),
        from: Position::Earliest,
        epoch: None,
        credit: 1000,
    })
    .await;
    assert!(matches!(
        c.next().await,
        ServerMessage::Frame(ServerFrame::Opened { .. })
    ));
    let long_key = "k".repeat(1025);
    let refused: Vec<(String, Option<u64>, &str)> = vec![
        (
            r#"{"t":"publish","id":5,"ns":"bad..ns","event":"b","bin":true}"#.into(),
            Some(5),
            "bad_namespace",
        ),
        (
            format!(r#"{{"t":"publish","id":6,"ns":"{ns}","event":"","bin":true}}"#),
            Some(6),
            "bad_frame",
        ),
        (
            format!(r#"{{"t":"publish","id":6,"ns":"{ns}","event":"a\n","bin":true}}"#),
            Some(6),
            "bad_frame",
        ),
        (
            format!(
                r#"{{"t":"publish","id":7,"ns":"{ns}","event":"e","key":"{long_key}","bin":true}}"#
            ),
            Some(7),
            "bad_frame",
        ),
        (
            format!(r#"{{"t":"publish","id":8,"ns":"{ns}","event":"e","data":1,"bin":true}}"#),
            Some(8),
            "bad_frame",
        ),
        (
            format!(r#"{{"t":"publish","ns":"{ns}","event":"e","bin":true}}"#),
            None,
            "bad_frame",
        ),
        (
            format!(r#"{{"t":"publish","id":"x","ns":"{ns}","event":"e","bin":true}}"#),
            None,
            "bad_frame",
        ),
        (
            r#"{"t":"publish","id":9,"event":"e","bin":true}"#.into(),
            Some(9),
            "bad_frame",
        ),
        (
            format!(
                r#"{{"t":"publish","id":10,"ns":"{ns}","event":"e","bin":true,"idempotency_key":""}}"#
            ),
            Some(10),
            "bad_frame",
        ),
        (
            format!(
                r#"{{"t":"publish","id":10,"ns":"{ns}","event":"e","bin":true,"idempotency_key":"a b"}}"#
            ),
            Some(10),
            "bad_frame",
        ),
        (
            format!(r#"{{"t":"publish","id":11,"ns":"{ns}","bin":true}}"#),
            Some(11),
            "bad_frame",
        ),
    ];
    // Each refusal between two good publishes, all pipelined: a refusal answered at once
    // would overtake the `published` before it, which waits for the disk.
    let mut expected = Vec::new();
    let mut sent_payloads = Vec::new();
    for (i, (frame, id, code)) in refused.iter().enumerate() {
        let good = 100 + i as u64;
        let payload = vec![0xff, i as u8, 0x00];
        text(
            &mut c,
            &format!(r#"{{"t":"publish","id":{good},"ns":"{ns}","event":"ok","bin":true}}"#),
        )
        .await;
        binary(&mut c, &payload).await;
        sent_payloads.push(payload);
        expected.push(Ok(good));
        text(&mut c, frame).await;
        binary(&mut c, b"zz").await;
        expected.push(Err((*id, code.to_string())));
    }
    text(
        &mut c,
        &format!(r#"{{"t":"publish","id":200,"ns":"{ns}","event":"ok","data":"last"}}"#),
    )
    .await;
    expected.push(Ok(200));
    let mut events = Vec::new();
    let got = answers(&mut c, expected.len(), &mut events).await;
    let got_shape: Vec<Result<u64, (Option<u64>, String)>> =
        got.iter().map(|a| a.clone().map(|(id, _)| id)).collect();
    assert_eq!(got_shape, expected);
    let offsets: Vec<u64> = got
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|a| a.1)
        .collect();
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    // The subscription on the same connection delivers exactly the accepted publishes:
    // the refused payloads were discarded, never appended.
    while events.len() < offsets.len() {
        match c.next().await {
            ServerMessage::Event(e) => events.push(e),
            ServerMessage::Frame(ServerFrame::Ping) => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
    let datas: Vec<Payload> = events.iter().map(|e| e.event.data.clone()).collect();
    let mut want: Vec<Payload> = sent_payloads.into_iter().map(Payload::Bytes).collect();
    want.push(Payload::Json(r#""last""#.into()));
    assert_eq!(datas, want);
}

/// The payload of a refused `bin: true` frame is the next frame only if that is binary: a
/// text frame instead is handled as a frame of its own, and the binary frame after it is
/// no one's payload (1003). A frame other than a publish that says `bin: true` is followed
/// by its payload too.
#[tokio::test]
async fn after_a_refused_bin_frame_a_text_frame_is_a_frame_of_its_own() {
    let b = Broker::start(&[]);
    let ns = "val.t";
    create(&b, ns).await;
    let mut c = Client::connect(b.addr, None).await;
    let mut events = Vec::new();
    // Refused, then a publish in text (no payload came): both answered, in order.
    text(
        &mut c,
        r#"{"t":"publish","id":1,"ns":"a..b","event":"e","bin":true}"#,
    )
    .await;
    text(
        &mut c,
        &format!(r#"{{"t":"publish","id":2,"ns":"{ns}","event":"e","data":2}}"#),
    )
    .await;
    assert_eq!(
        answers(&mut c, 2, &mut events).await,
        vec![Err((Some(1), "bad_namespace".into())), Ok((2, 0))]
    );
    // Not a publish, refused, with bin: true: its payload is discarded too.
    text(&mut c, r#"{"t":"dance","bin":true}"#).await;
    binary(&mut c, b"zz").await;
    assert_eq!(
        answers(&mut c, 1, &mut events).await,
        vec![Err((None, "unknown_type".into()))]
    );
    // Accepted and not a publish: the same.
    text(&mut c, r#"{"t":"ping","bin":true}"#).await;
    binary(&mut c, b"zz").await;
    text(&mut c, r#"{"t":"ping"}"#).await;
    for _ in 0..2 {
        assert!(matches!(
            c.next().await,
            ServerMessage::Frame(ServerFrame::Pong)
        ));
    }
    // `bin` that is not `true` announces nothing: a binary frame is no one's payload.
    text(
        &mut c,
        &format!(r#"{{"t":"publish","id":3,"ns":"{ns}","event":"e","bin":"yes"}}"#),
    )
    .await;
    assert_eq!(
        answers(&mut c, 1, &mut events).await,
        vec![Err((Some(3), "bad_frame".into()))]
    );
    binary(&mut c, b"zz").await;
    assert_eq!(c.close_code().await, Some(1003));
    assert!(events.is_empty(), "{events:?}");

    // The payload slot is one frame: a text frame after a refused bin frame uses it up.
    let mut c = Client::connect(b.addr, None).await;
    text(
        &mut c,
        r#"{"t":"publish","id":1,"ns":"a..b","event":"e","bin":true}"#,
    )
    .await;
    text(&mut c, r#"{"t":"ping"}"#).await;
    binary(&mut c, b"zz").await;
    assert_eq!(
        answers(&mut c, 1, &mut events).await,
        vec![Err((Some(1), "bad_namespace".into()))]
    );
    assert!(matches!(
        c.next().await,
        ServerMessage::Frame(ServerFrame::Pong)
    ));
    assert_eq!(c.close_code().await, Some(1003));
}

/// RFC 6455 §4.1: the key is 16 bytes in base64. Anything else is `400` with the JSON
/// error body, before any upgrade. Input from the new-user tester (`short`).
#[tokio::test]
async fn a_handshake_key_that_is_not_16_bytes_in_base64_is_400() {
    let b = Broker::start(&[]);
    for key in [
        "short",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZR==",
        "dGhlIHNhbXBsZSBub25jZQ==x",
        "dGhlIHNhbXBsZSBub2!jZQ==",
    ] {
        let req = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        let out = rewind_tests::raw_http(b.addr, req.as_bytes()).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 400"), "{key}: {out}");
        let body = &out[out.find("\r\n\r\n").expect("a body") + 4..];
        let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(json["error"]["code"], "bad_frame", "{key}: {body}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Sec-WebSocket-Key")),
            "{body}"
        );
    }
}
