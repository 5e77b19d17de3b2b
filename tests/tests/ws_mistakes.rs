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
    assert_eq!(r.status, rewind_tests::StatusCode::CREATED, "{ns}");
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

/// A MessagePack string.
fn mp_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 32);
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// A MessagePack map of `fields`, each value given as its bytes.
fn mp_map(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x80 | fields.len() as u8];
    for (k, v) in fields {
        mp_str(&mut out, k);
        out.extend_from_slice(v);
    }
    out
}

fn mp_s(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    mp_str(&mut out, s);
    out
}

/// `s` as MessagePack `bin`.
fn mp_bin(s: &str) -> Vec<u8> {
    let mut out = vec![0xc4, s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// The next frame, which must be an `error`: (code, id, message).
async fn error_frame(c: &mut Client) -> (String, Option<u64>, String) {
    match c.next().await {
        ServerMessage::Frame(ServerFrame::Error {
            code, id, message, ..
        }) => (code, id, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn expect_pong(c: &mut Client) {
    c.send(&ClientFrame::Ping).await;
    assert!(matches!(
        c.next().await,
        ServerMessage::Frame(ServerFrame::Pong)
    ));
}

/// The close frame: (code, reason).
async fn closed(c: &mut Client) -> (u16, String) {
    loop {
        if let rewind_tests::ws::Received::Closed(f) = c.recv().await {
            let f = f.expect("a close frame");
            return (u16::from(f.code), f.reason.to_string());
        }
    }
}

/// A MessagePack frame is one map with a string `t` (`protocol.md`, close codes): bytes
/// after the map and a `t` in `bin` close with 1003, as their JSON equivalents do; a
/// string field sent as `bin` is the mistake "not a string", answered as in JSON.
/// Inputs from the new-user tester.
#[tokio::test]
async fn msgpack_frames_are_held_to_what_their_json_equivalent_can_be() {
    let b = Broker::start(&[]);
    create(&b, "mp.a").await;
    let ping = mp_map(&[("t", mp_s("ping"))]);
    let closing: Vec<(Option<&str>, Message, &str)> = vec![
        (
            Some("rewind.v1.msgpack"),
            Message::Binary([ping.clone(), vec![0xc0]].concat().into()),
            "1 bytes after the frame's map",
        ),
        (
            Some("rewind.v1.msgpack"),
            Message::Binary([ping.clone(), ping.clone()].concat().into()),
            "bytes after the frame's map",
        ),
        (None, Message::Text(r#"{"t":"ping"} x"#.into()), "not JSON"),
        (
            Some("rewind.v1.msgpack"),
            Message::Binary(mp_map(&[("t", mp_bin("ping"))]).into()),
            "t must be a string, not bin",
        ),
        (
            None,
            Message::Text(r#"{"t":5}"#.into()),
            "t must be a string, not 5",
        ),
    ];
    for (protocol, m, why) in closing {
        let shown = format!("{m:?}");
        let mut c = Client::connect(b.addr, protocol).await;
        c.raw(m).await;
        let (code, reason) = closed(&mut c).await;
        assert_eq!(code, 1003, "{shown}");
        assert!(reason.contains(why), "{shown}: {reason}");
    }
    // String fields in `bin`: bad_frame with the publish's id, in both encodings alike.
    let mut mp = Client::connect(b.addr, Some("rewind.v1.msgpack")).await;
    let mut js = Client::connect(b.addr, Some("rewind.v1.json")).await;
    for field in ["event", "key", "idempotency_key", "ns"] {
        let mut fields = vec![
            ("t", mp_s("publish")),
            ("id", vec![7]),
            ("ns", mp_s("mp.a")),
            ("event", mp_s("e")),
        ];
        fields.retain(|(k, _)| *k != field);
        fields.push((field, mp_bin("abc")));
        mp.raw(Message::Binary(mp_map(&fields).into())).await;
        let (code, id, message) = error_frame(&mut mp).await;
        assert_eq!((code.as_str(), id), ("bad_frame", Some(7)), "{field}");
        let want = format!("publish: {field} must be a string, not bin");
        assert!(message.starts_with(&want), "{field}: {message}");
        // The JSON equivalent: a field that is not a string.
        let mut json = serde_json::json!({"t": "publish", "id": 7, "ns": "mp.a", "event": "e"});
        json[field] = serde_json::json!(5);
        text(&mut js, &json.to_string()).await;
        let (code, id, message) = error_frame(&mut js).await;
        assert_eq!((code.as_str(), id), ("bad_frame", Some(7)), "{field}");
        assert_eq!(message, format!("publish: {field} must be a string, not 5"));
    }
    // Open's epoch in bin: the same.
    mp.raw(Message::Binary(
        mp_map(&[
            ("t", mp_s("open")),
            ("ns", mp_s("mp.a")),
            ("epoch", mp_bin("0123456789abcdef")),
        ])
        .into(),
    ))
    .await;
    let (code, _, message) = error_frame(&mut mp).await;
    assert_eq!(code, "bad_frame");
    assert!(
        message.starts_with("open: epoch must be a string, not bin"),
        "{message}"
    );
    // Nothing was appended, and both connections are up.
    expect_pong(&mut mp).await;
    expect_pong(&mut js).await;
    let r = b.get("/v1/namespaces/mp.a").await;
    assert_eq!(r.json()["next"], 0, "{:?}", r.json());
}

/// `open`'s `epoch` is what `opened` gave: 16 lowercase hex digits. Anything else is a
/// `bad_frame` (nothing is opened), in both encodings; HTTP takes no epoch anywhere.
#[tokio::test]
async fn an_epoch_that_is_not_one_is_refused() {
    let b = Broker::start(&[]);
    create(&b, "ep.a").await;
    for protocol in ["rewind.v1.json", "rewind.v1.msgpack"] {
        let mut c = Client::connect(b.addr, Some(protocol)).await;
        for epoch in [
            "zz",
            "",
            "0123456789ABCDEF",
            "0123456789abcdef0",
            "0123456789abcdeg",
        ] {
            c.send(&ClientFrame::Open {
                ns: "ep.a".into(),
                from: Position::Offset(0),
                epoch: Some(epoch.into()),
                credit: 10,
            })
            .await;
            let (code, _, message) = error_frame(&mut c).await;
            assert_eq!(code, "bad_frame", "{protocol} {epoch:?}");
            assert!(
                message.contains("epoch must be the 16 lowercase hex digits"),
                "{message}"
            );
            // Nothing was opened.
            c.send(&ClientFrame::Close { ns: "ep.a".into() }).await;
            assert_eq!(error_frame(&mut c).await.0, "not_open");
        }
        // A well-formed epoch of another log is not a mistake: `truncated` says so.
        c.send(&ClientFrame::Open {
            ns: "ep.a".into(),
            from: Position::Offset(0),
            epoch: Some("0123456789abcdef".into()),
            credit: 10,
        })
        .await;
        assert!(matches!(
            c.next().await,
            ServerMessage::Frame(ServerFrame::Opened { .. })
        ));
        assert!(matches!(
            c.next().await,
            ServerMessage::Frame(ServerFrame::Truncated { reason, .. }) if reason == "epoch"
        ));
    }
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

/// Messages say which field is wrong and what it must be, not the decoder's wording
/// (`floating point`, `hex escape`, `invalid type`). Inputs from the new-user tester.
#[tokio::test]
async fn mistakes_are_described_in_the_protocols_terms() {
    let b = Broker::start(&[]);
    create(&b, "msg.a").await;
    let mut c = Client::connect(b.addr, None).await;
    let cases = [
        (
            r#"{"t":"credit","ns":"msg.a","n":18446744073709551616}"#,
            "credit: n must be an integer from 0 to 18446744073709551615, not 18446744073709551616",
        ),
        (
            r#"{"t":"credit","ns":"msg.a","n":-1}"#,
            "credit: n must be an integer from 0 to 18446744073709551615, not -1",
        ),
        (
            r#"{"t":"credit","ns":"msg.a","n":1.5}"#,
            "credit: n must be an integer from 0 to 18446744073709551615, not 1.5",
        ),
        (
            r#"{"t":"credit","ns":"msg.a","n":"2"}"#,
            "credit: n must be an integer from 0 to 18446744073709551615, not a string",
        ),
        (
            r#"{"t":"open","ns":"msg.a","credit":-5}"#,
            "open: credit must be an integer from 0 to 18446744073709551615, not -5",
        ),
        (
            r#"{"t":"publish","id":1,"ns":"msg.a","event":"\ud800"}"#,
            r#"publish: event cannot hold a lone UTF-16 surrogate ("\ud800"): it has no UTF-8 form"#,
        ),
        (
            r#"{"t":"publish","id":1,"ns":"msg.a","event":"e","key":"a\udc00"}"#,
            r#"publish: key cannot hold a lone UTF-16 surrogate ("a\udc00"): it has no UTF-8 form"#,
        ),
        (
            r#"{"t":"publish","id":"x","ns":"msg.a","event":"e"}"#,
            "publish: id must be an integer from 0 to 18446744073709551615, not a string",
        ),
        (
            r#"{"t":"publish","id":1,"ns":["a"],"event":"e"}"#,
            "publish: ns must be a string, not an array",
        ),
        (
            r#"{"t":"publish","id":1,"ns":"msg.a","event":"e","bin":"yes"}"#,
            "publish: bin must be true or false, not a string",
        ),
    ];
    for (frame, want) in cases {
        text(&mut c, frame).await;
        let (code, _, message) = error_frame(&mut c).await;
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("bad_frame", want),
            "{frame}"
        );
    }
    // A `from` past u64 arrives rounded to a float: the message gives the rule, not the
    // rounded number as if it were the one sent (a tester's input).
    let positions = [
        (
            r#"{"t":"open","ns":"msg.a","from":18446744073709551616}"#,
            "bad position: an offset is at most 18446744073709551615",
        ),
        (
            r#"{"t":"open","ns":"msg.a","from":1.5}"#,
            "bad position 1.5: an offset is a whole number from 0 up",
        ),
    ];
    for (frame, want) in positions {
        text(&mut c, frame).await;
        let (code, _, message) = error_frame(&mut c).await;
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("bad_position", want),
            "{frame}"
        );
    }
    // The same mistakes over MessagePack read the same, with MessagePack's values.
    let mut mp = Client::connect(b.addr, Some("rewind.v1.msgpack")).await;
    let float = [vec![0xcb], 1.5f64.to_be_bytes().to_vec()].concat();
    let cases = [
        (
            mp_map(&[("t", mp_s("credit")), ("ns", mp_s("msg.a")), ("n", float)]),
            "credit: n must be an integer from 0 to 18446744073709551615, not 1.5",
        ),
        (
            mp_map(&[
                ("t", mp_s("open")),
                ("ns", mp_s("msg.a")),
                ("credit", vec![0xfb]),
            ]),
            "open: credit must be an integer from 0 to 18446744073709551615, not -5",
        ),
        (
            mp_map(&[
                ("t", mp_s("publish")),
                ("id", mp_s("x")),
                ("ns", mp_s("msg.a")),
                ("event", mp_s("e")),
            ]),
            "publish: id must be an integer from 0 to 18446744073709551615, not a string",
        ),
        (
            mp_map(&[
                ("t", mp_s("publish")),
                ("id", vec![1]),
                ("ns", mp_s("msg.a")),
                ("event", mp_s("e")),
                ("bin", vec![1]),
            ]),
            "publish: bin must be true or false, not 1",
        ),
    ];
    for (frame, want) in cases {
        mp.raw(Message::Binary(frame.into())).await;
        let (code, _, message) = error_frame(&mut mp).await;
        assert_eq!((code.as_str(), message.as_str()), ("bad_frame", want));
    }
    expect_pong(&mut c).await;
    expect_pong(&mut mp).await;
    // Frames that are not frames: the close reason says what a frame must be.
    for (frame, want) in [
        (
            "[1]",
            "unparsable frame: a frame must be a JSON object with a string t, not an array",
        ),
        ("{}", "unparsable frame: a frame needs a string t"),
        (
            r#"{"t":"\ud800"}"#,
            "unparsable frame: t cannot hold a lone UTF-16 surrogate",
        ),
        ("nope", "unparsable frame: not JSON ("),
    ] {
        let mut c = Client::connect(b.addr, None).await;
        text(&mut c, frame).await;
        let (code, reason) = closed(&mut c).await;
        assert_eq!(code, 1003, "{frame}");
        assert!(reason.starts_with(want), "{frame}: {reason}");
    }
}
