//! Rules every transport keeps, against the real binary (issue 8 §6): the same mistake
//! gets the same code over HTTP and both WebSocket encodings; only publishes and `PUT`
//! create namespaces; `HEAD` answers like `GET`; content negotiation is case-insensitive
//! and honours `q=0`.

use std::process::Command;

use rewind_protocol::codec::ReadPage;
use rewind_protocol::frame::{ServerFrame, ServerMessage};
use rewind_tests::ws::Client;
use rewind_tests::{raw_http, rewind_bin, Broker};
use rewind_tests::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const PROTOCOLS: [&str; 2] = ["rewind.v1.json", "rewind.v1.msgpack"];

async fn ws_code(c: &mut Client, frame: &Value) -> String {
    match c.answer(frame).await {
        ServerFrame::Error { code, .. } => code,
        other => panic!("{frame}: expected an error, got {other:?}"),
    }
}

/// One mistake, as it is made over HTTP and over WebSocket, and the code both get.
struct Row {
    mistake: &'static str,
    http: (Method, String, Option<&'static str>, String),
    ws: Value,
    status: StatusCode,
    code: &'static str,
}

fn row(
    mistake: &'static str,
    http: (Method, &str, Option<&'static str>, &str),
    ws: Value,
    status: StatusCode,
    code: &'static str,
) -> Row {
    Row {
        mistake,
        http: (http.0, http.1.to_owned(), http.2, http.3.to_owned()),
        ws,
        status,
        code,
    }
}

/// The table of docs/protocol.md ("The same mistake on every transport"), row by row.
fn table() -> Vec<Row> {
    let json = Some("application/json");
    let publish = |extra: Value| {
        let mut f = json!({"t": "publish", "id": 1, "ns": "here", "event": "e"});
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        f
    };
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let long_key = "k".repeat(1025);
    vec![
        row(
            "from is not a position",
            (
                Method::GET,
                "/v1/namespaces/here/events?from=soon",
                None,
                "",
            ),
            json!({"t": "open", "ns": "here", "from": "soon"}),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        row(
            "from is negative",
            (Method::GET, "/v1/namespaces/here/events?from=-1", None, ""),
            json!({"t": "open", "ns": "here", "from": -1}),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        row(
            "from is a fraction",
            (Method::GET, "/v1/namespaces/here/events?from=1.5", None, ""),
            json!({"t": "open", "ns": "here", "from": 1.5}),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        row(
            "from is beyond the end of the log",
            (Method::GET, "/v1/namespaces/here/events?from=99", None, ""),
            json!({"t": "open", "ns": "here", "from": 99}),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        row(
            "the namespace name breaks the rules (read)",
            (Method::GET, "/v1/namespaces/a..b/events", None, ""),
            json!({"t": "open", "ns": "a..b"}),
            StatusCode::BAD_REQUEST,
            "bad_namespace",
        ),
        row(
            "the namespace name breaks the rules (publish)",
            (
                Method::POST,
                "/v1/namespaces/.x/events",
                json,
                r#"{"event":"e"}"#,
            ),
            json!({"t": "publish", "id": 1, "ns": ".x", "event": "e"}),
            StatusCode::BAD_REQUEST,
            "bad_namespace",
        ),
        row(
            "the namespace does not exist (read)",
            (Method::GET, "/v1/namespaces/nowhere/events", None, ""),
            json!({"t": "open", "ns": "nowhere"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        row(
            "the namespace does not exist (read from an offset)",
            (
                Method::GET,
                "/v1/namespaces/nowhere/events?from=5",
                None,
                "",
            ),
            json!({"t": "open", "ns": "nowhere", "from": 5}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        row(
            "no event name",
            (
                Method::POST,
                "/v1/namespaces/here/events",
                json,
                r#"{"data":1}"#,
            ),
            json!({"t": "publish", "id": 1, "ns": "here", "data": 1}),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        row(
            "an empty event name",
            (
                Method::POST,
                "/v1/namespaces/here/events",
                json,
                r#"{"event":""}"#,
            ),
            publish(json!({"event": ""})),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        row(
            "a key over 1024 bytes",
            (
                Method::POST,
                "/v1/namespaces/here/events",
                json,
                &format!(r#"{{"event":"e","key":"{long_key}"}}"#),
            ),
            publish(json!({"key": long_key})),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        row(
            "data nested deeper than the limit",
            (
                Method::POST,
                "/v1/namespaces/here/events",
                json,
                &format!(r#"{{"event":"e","data":{deep}}}"#),
            ),
            // Deeper than serde_json builds values: written by hand (see `deep_publish`).
            Value::Null,
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        row(
            "a payload over max_payload_bytes",
            (
                Method::POST,
                "/v1/namespaces/here/events",
                json,
                &format!(r#"{{"event":"e","data":"{}"}}"#, "y".repeat(200)),
            ),
            publish(json!({"data": "y".repeat(200)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ]
}

/// A publish whose `data` nests 300 arrays deep, in either encoding.
fn deep_publish(msgpack: bool) -> Message {
    const DEPTH: usize = 300;
    if !msgpack {
        let text = format!(
            r#"{{"t":"publish","id":1,"ns":"here","event":"e","data":{}{}}}"#,
            "[".repeat(DEPTH),
            "]".repeat(DEPTH)
        );
        return Message::Text(text.into());
    }
    let fixstr = |out: &mut Vec<u8>, s: &str| {
        out.push(0xa0 | s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    };
    let mut out = vec![0x85];
    for (k, v) in [("t", "publish"), ("ns", "here"), ("event", "e")] {
        fixstr(&mut out, k);
        fixstr(&mut out, v);
    }
    fixstr(&mut out, "id");
    out.push(1);
    fixstr(&mut out, "data");
    out.extend(std::iter::repeat_n(0x91, DEPTH));
    out.push(0xc0);
    Message::Binary(out.into())
}

#[tokio::test]
async fn the_same_mistake_gets_the_same_code_on_every_transport() {
    let b = Broker::start(&["--max-payload-bytes", "100"]);
    assert_eq!(
        b.put_json("/v1/namespaces/here", "").await.status,
        StatusCode::CREATED
    );
    let mut clients = Vec::new();
    for p in PROTOCOLS {
        clients.push(Client::connect(b.addr, Some(p)).await);
    }
    for row in table() {
        let (method, path, ctype, body) = row.http;
        let headers: Vec<(&str, &str)> = ctype.map(|c| ("content-type", c)).into_iter().collect();
        let r = b.request(method.clone(), &path, &headers, body).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (row.status, row.code),
            "HTTP: {}",
            row.mistake
        );
        for c in &mut clients {
            let code = if row.ws.is_null() {
                c.raw(deep_publish(c.msgpack)).await;
                match c.next().await {
                    ServerMessage::Frame(ServerFrame::Error { code, .. }) => code,
                    other => panic!("{}: {other:?}", row.mistake),
                }
            } else {
                ws_code(c, &row.ws).await
            };
            assert_eq!(
                code, row.code,
                "WebSocket (msgpack: {}): {}",
                c.msgpack, row.mistake
            );
        }
    }
    // Nothing was created or appended by any of it.
    let list = b.get("/v1/namespaces").await.json();
    let names: Vec<&str> = list["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["here"]);
    assert_eq!(b.get("/v1/namespaces/here").await.json()["next"], 0);
}

#[tokio::test]
async fn with_auto_create_off_a_publish_to_nowhere_is_not_found_on_every_transport() {
    let b = Broker::start(&["--auto-create", "false"]);
    let r = b
        .post_json("/v1/namespaces/nowhere/events", r#"{"event":"e"}"#)
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    for p in PROTOCOLS {
        let mut c = Client::connect(b.addr, Some(p)).await;
        let frame = json!({"t": "publish", "id": 4, "ns": "nowhere", "event": "e"});
        match c.answer(&frame).await {
            ServerFrame::Error { code, id, ns, .. } => assert_eq!(
                (code.as_str(), id, ns.as_deref()),
                ("not_found", Some(4), Some("nowhere")),
                "{p}"
            ),
            other => panic!("{p}: {other:?}"),
        }
    }
    assert_eq!(
        b.get("/v1/namespaces/nowhere").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_plain_request_to_the_websocket_endpoint_is_426_upgrade_required() {
    let b = Broker::start(&[]);
    for method in [Method::GET, Method::HEAD] {
        let r = b.request(method.clone(), "/v1/ws", &[], "").await;
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED, "{method}");
        assert_eq!(r.headers["upgrade"], "websocket", "{method}");
        assert_eq!(r.headers["content-type"], "application/json", "{method}");
        if method == Method::GET {
            assert_eq!(r.error_code(), "upgrade_required");
        }
    }
    // A version other than 13: the same, saying which version the broker speaks.
    let handshake = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for version in [Some("8"), None] {
        let mut headers = handshake.to_vec();
        headers.extend(version.map(|v| ("sec-websocket-version", v)));
        let r = b.request(Method::GET, "/v1/ws", &headers, "").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::UPGRADE_REQUIRED, "upgrade_required"),
            "{version:?}"
        );
        assert_eq!(r.headers["sec-websocket-version"], "13");
        // RFC 9110 §15.5.22: every 426 names the protocol (a tester found this one did not).
        assert_eq!(r.headers["upgrade"], "websocket", "{version:?}");
    }
    // Upgrade without Connection: Upgrade is not a handshake either.
    let r = b
        .request(Method::GET, "/v1/ws", &[("upgrade", "websocket")], "")
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::UPGRADE_REQUIRED, "upgrade_required")
    );
}

async fn exists(b: &Broker, ns: &str) -> bool {
    let r = b.get(&format!("/v1/namespaces/{ns}")).await;
    match r.status {
        StatusCode::OK => true,
        StatusCode::NOT_FOUND => false,
        s => panic!("{ns}: {s}"),
    }
}

#[tokio::test]
async fn reads_subscriptions_and_refusals_create_nothing_publishes_and_put_do() {
    let b = Broker::start(&["--max-payload-bytes", "100"]);
    for p in PROTOCOLS {
        let mut c = Client::connect(b.addr, Some(p)).await;
        // The issue's input: an open refused with bad_position (and every other open of a
        // name that does not exist) is refused as not_found, and creates nothing.
        for frame in [
            json!({"t": "open", "ns": "ghost", "from": 5}),
            json!({"t": "open", "ns": "ghost"}),
            json!({"t": "open", "ns": "ghost", "from": "earliest", "epoch": "0123456789abcdef"}),
        ] {
            match c.answer(&frame).await {
                ServerFrame::Error { code, ns, .. } => {
                    assert_eq!(
                        (code.as_str(), ns.as_deref()),
                        ("not_found", Some("ghost")),
                        "{p} {frame}"
                    )
                }
                other => panic!("{p} {frame}: {other:?}"),
            }
        }
        assert_eq!(
            ws_code(&mut c, &json!({"t": "credit", "ns": "ghost", "n": 5})).await,
            "not_open"
        );
        assert_eq!(
            ws_code(&mut c, &json!({"t": "close", "ns": "ghost"})).await,
            "not_open"
        );
        // A publish refused for its content creates nothing either.
        for (bad, code) in [
            (
                json!({"t": "publish", "id": 1, "ns": "ghost", "event": ""}),
                "bad_frame",
            ),
            (
                json!({"t": "publish", "id": 1, "ns": "ghost", "event": "e", "idempotency_key": "a b"}),
                "bad_frame",
            ),
            (
                json!({"t": "publish", "id": 1, "ns": "ghost", "event": "e", "data": "y".repeat(200)}),
                "payload_too_large",
            ),
        ] {
            assert_eq!(ws_code(&mut c, &bad).await, code, "{p} {bad}");
        }
    }
    for path in [
        "/v1/namespaces/ghost",
        "/v1/namespaces/ghost/events",
        "/v1/namespaces/ghost/events?from=latest&wait=0.2",
        "/v1/namespaces/ghost/events?from=7",
    ] {
        for method in [Method::GET, Method::HEAD] {
            let r = b.request(method.clone(), path, &[], "").await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    let publish = "/v1/namespaces/ghost/events";
    let big = format!(r#"{{"event":"e","data":"{}"}}"#, "y".repeat(200));
    for (headers, body, status) in [
        (
            vec![("content-type", "application/json")],
            r#"{"event":"e","dta":1}"#.to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![("content-type", "application/json")],
            big,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            vec![("content-type", "multipart/form-data; boundary=x")],
            "--x--".to_owned(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            vec![("content-type", "application/octet-stream")],
            "raw, no ?event=".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![
                ("content-type", "application/json"),
                ("idempotency-key", "a b"),
            ],
            r#"{"event":"e"}"#.to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let r = b.request(Method::POST, publish, &headers, body).await;
        assert_eq!(r.status, status, "{headers:?}");
    }
    let r = b
        .request(Method::DELETE, "/v1/namespaces/ghost", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // `rewind tail` of a name that does not exist says so and exits non-zero.
    let out = Command::new(rewind_bin())
        .args(["tail", "ghost", "--from", "earliest", "--url", &b.url()])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run rewind tail");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not_found"), "{stderr}");
    assert!(!exists(&b, "ghost").await);
    assert_eq!(
        b.get("/v1/namespaces").await.json(),
        json!({"namespaces": []})
    );

    // A publish creates (HTTP and WebSocket), and so does PUT; then subscriptions open.
    let r = b
        .post_json("/v1/namespaces/by.http/events", r#"{"event":"e"}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let mut c = Client::connect(b.addr, None).await;
    let frame = json!({"t": "publish", "id": 2, "ns": "by.ws", "event": "e"});
    assert!(matches!(
        c.answer(&frame).await,
        ServerFrame::Published {
            id: 2,
            offset: 0,
            ..
        }
    ));
    assert_eq!(
        b.put_json("/v1/namespaces/by.put", "").await.status,
        StatusCode::CREATED
    );
    for ns in ["by.http", "by.ws", "by.put"] {
        assert!(exists(&b, ns).await);
        let frame = json!({"t": "open", "ns": ns, "from": "latest"});
        match c.answer(&frame).await {
            ServerFrame::Opened { ns: got, .. } => assert_eq!(got, ns),
            other => panic!("{ns}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn head_answers_every_get_route_like_get_without_the_body() {
    let b = Broker::start(&[]);
    let r = b
        .post_json(
            "/v1/namespaces/h/events",
            r#"[{"event":"a"},{"event":"b","data":[1]}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let routes: [(&str, &[(&str, &str)]); 11] = [
        ("/healthz", &[]),
        ("/readyz", &[]),
        ("/v1/namespaces", &[]),
        ("/v1/namespaces/h", &[]),
        ("/v1/namespaces/h/events?from=0", &[]),
        (
            "/v1/namespaces/h/events?from=1",
            &[("accept", "application/msgpack")],
        ),
        ("/v1/namespaces/h/events?from=soon", &[]),
        ("/v1/namespaces/h/events?from=0", &[("accept", "text/html")]),
        ("/v1/namespaces/missing", &[]),
        ("/v1/ws", &[]),
        ("/v2/nothing", &[]),
    ];
    for (path, headers) in routes {
        let get = b.request(Method::GET, path, headers, "").await;
        let head = b.request(Method::HEAD, path, headers, "").await;
        assert_eq!(head.status, get.status, "{path}");
        assert_ne!(head.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        for name in ["content-type", "upgrade", "vary", "allow"] {
            assert_eq!(
                head.headers.get(name),
                get.headers.get(name),
                "{path}: {name}"
            );
        }
        assert_eq!(
            head.headers["content-length"].to_str().unwrap(),
            get.body.len().to_string(),
            "{path}"
        );
        assert!(head.body.is_empty(), "{path}");
    }
    // On the wire: the headers, and not one byte of body.
    let raw = raw_http(
        b.addr,
        b"HEAD /v1/namespaces/h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    // Methods a route does not take list HEAD beside GET.
    for (path, allow) in [
        ("/v1/namespaces/h/events", "GET, HEAD, POST"),
        ("/v1/namespaces/h", "GET, HEAD, PUT, DELETE"),
        ("/healthz", "GET, HEAD"),
    ] {
        let r = b.request(Method::PATCH, path, &[], "").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers["allow"], allow, "{path}");
    }
}

#[tokio::test]
async fn media_types_compare_case_insensitively_and_q0_means_not_this() {
    let b = Broker::start(&[]);
    // Content-Type: any case, parameters as they come.
    for (ctype, body, want) in [
        (
            "APPLICATION/JSON; charset=UTF-8",
            r#"{"event":"a","data":{"x":1}}"#,
            json!({"offset": 0}),
        ),
        (
            "Application/Json;Charset=\"utf-8\"",
            r#"[{"event":"b"}]"#,
            json!({"first": 1, "last": 1}),
        ),
        (
            "Application/X-NDJSON",
            "{\"event\":\"c\"}\n",
            json!({"first": 2, "last": 2}),
        ),
    ] {
        let r = b
            .request(
                Method::POST,
                "/v1/namespaces/m/events",
                &[("content-type", ctype)],
                body,
            )
            .await;
        assert_eq!((r.status, r.json()), (StatusCode::CREATED, want), "{ctype}");
    }
    for ctype in [
        "APPLICATION/JSON; charset=UTF-16",
        "Multipart/Form-Data; boundary=x",
        "Application/X-WWW-Form-Urlencoded",
    ] {
        let r = b
            .request(
                Method::POST,
                "/v1/namespaces/m/events",
                &[("content-type", ctype)],
                "{}",
            )
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            "{ctype}"
        );
    }
    let page = ReadPage::from_json(&b.get("/v1/namespaces/m/events?from=0").await.body).unwrap();
    assert_eq!(page.events.len(), 3);
    assert_eq!(
        page.events[0].data,
        rewind_protocol::Payload::Json(r#"{"x":1}"#.into())
    );

    // Accept: any case, q=0 rules a type out, the highest q wins.
    let json_type = "application/json";
    let msgpack_type = "application/msgpack";
    for (accept, want) in [
        (None, Some(json_type)),
        (Some("*/*"), Some(json_type)),
        (Some("application/*"), Some(json_type)),
        (Some("Application/MsgPack"), Some(msgpack_type)),
        (Some("APPLICATION/X-MSGPACK"), Some(msgpack_type)),
        (
            Some("application/msgpack;q=0, application/json"),
            Some(json_type),
        ),
        (Some("application/msgpack; q=0, */*"), Some(json_type)),
        (Some("application/json;q=0, */*"), Some(msgpack_type)),
        (
            Some("application/json;q=0.1, application/msgpack;q=0.9"),
            Some(msgpack_type),
        ),
        (Some("APPLICATION/JSON; charset=UTF-8"), Some(json_type)),
        (Some("text/html"), None),
        (Some("application/json;q=0"), None),
        (Some("*/*;q=0"), None),
    ] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let r = b
            .request(Method::GET, "/v1/namespaces/m/events?from=0", &headers, "")
            .await;
        match want {
            Some(t) => {
                assert_eq!(r.status, StatusCode::OK, "{accept:?}");
                assert_eq!(r.headers["content-type"], t, "{accept:?}");
                assert_eq!(r.headers["vary"], "accept", "{accept:?}");
                let page = if t == msgpack_type {
                    ReadPage::from_msgpack(&r.body)
                } else {
                    ReadPage::from_json(&r.body)
                };
                assert_eq!(page.unwrap().events.len(), 3, "{accept:?}");
            }
            None => assert_eq!(
                (r.status, r.error_code().as_str()),
                (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
                "{accept:?}"
            ),
        }
    }
}

/// A header the broker reads one value of, sent twice, is refused (`400 bad_frame`
/// naming the header) rather than one copy silently winning; the refusal creates
/// nothing and records no key.
#[tokio::test]
async fn a_repeated_single_valued_header_is_refused_by_name() {
    let b = Broker::start(&[]);
    let events = "/v1/namespaces/twice/events";
    let body = r#"{"event":"e"}"#;
    let json = ("content-type", "application/json");
    for (headers, name) in [
        (
            vec![json, ("idempotency-key", "s1"), ("idempotency-key", "s2")],
            "Idempotency-Key",
        ),
        (
            vec![json, ("Idempotency-Key", "s1"), ("idempotency-key", "s1")],
            "Idempotency-Key",
        ),
        (
            vec![json, ("content-type", "application/msgpack")],
            "Content-Type",
        ),
        (vec![json, json], "Content-Type"),
    ] {
        let r = b.request(Method::POST, events, &headers, body).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "bad_frame"),
            "{headers:?}"
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(name), "{headers:?}: {message}");
    }
    assert!(!exists(&b, "twice").await);
    // Neither s1 nor s2 was recorded: each is a new key now.
    for (key, offset) in [("s1", 0), ("s2", 1)] {
        let r = b
            .request(
                Method::POST,
                events,
                &[json, ("idempotency-key", key)],
                body,
            )
            .await;
        assert_eq!(
            (r.status, r.json()),
            (StatusCode::CREATED, json!({"offset": offset}))
        );
        assert!(!r.headers.contains_key("idempotent-replayed"));
    }
}

/// `q` in `Accept` is a number from 0 to 1 with at most three decimals (RFC 9110
/// §12.4.2); anything else is a malformed header (`400 bad_frame` naming `Accept`), not
/// a weight of 1.
#[tokio::test]
async fn an_accept_q_outside_rfc_9110_is_refused() {
    let b = Broker::start(&[]);
    let r = b
        .post_json("/v1/namespaces/q/events", r#"{"event":"e"}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let read = |accept: &'static str| {
        let b = &b;
        async move {
            b.request(
                Method::GET,
                "/v1/namespaces/q/events?from=0",
                &[("accept", accept)],
                "",
            )
            .await
        }
    };
    for bad in [
        "application/json;q=abc",
        "application/json;q=1.5",
        "application/json;q=1.001",
        "application/json;q=0.1234",
        "application/json;q=-0",
        "application/json;q=",
        "application/json;q=.5",
        "application/json;q=+1",
        "application/json;q=1e0",
        "application/msgpack;q=0.5, application/json;q=2",
    ] {
        let r = read(bad).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "bad_frame"),
            "{bad}"
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("Accept"), "{bad}: {message}");
    }
    for (good, t) in [
        ("application/json;q=1.000", "application/json"),
        ("application/json;Q=0.001", "application/json"),
        ("application/json;q=1.", "application/json"),
        (
            "application/json;q=0.5, application/msgpack;q=0.501",
            "application/msgpack",
        ),
        (
            "application/msgpack;q=0., application/json",
            "application/json",
        ),
    ] {
        let r = read(good).await;
        assert_eq!(r.status, StatusCode::OK, "{good}");
        assert_eq!(r.headers["content-type"], t, "{good}");
    }
}
