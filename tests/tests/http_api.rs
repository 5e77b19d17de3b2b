//! The HTTP API against the real binary: publish, read, long-poll, admin, bad input.

use rewind_protocol::codec::ReadPage;
use rewind_protocol::Payload;
use rewind_tests::Broker;
use rewind_tests::{Method, StatusCode};

#[tokio::test]
async fn publish_then_read_every_body_kind() {
    let b = Broker::start(&[]);
    let r = b
        .post_json(
            "/v1/namespaces/logs.api/events",
            r#"{"event":"hello","data":{"x":1}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json(), serde_json::json!({"offset": 0}));

    let r = b
        .post_json(
            "/v1/namespaces/logs.api/events",
            r#"[{"event":"a","data":[1,2]},{"event":"b","key":"k7"}]"#,
        )
        .await;
    assert_eq!(r.json(), serde_json::json!({"first": 1, "last": 2}));

    let r = b
        .request(
            Method::POST,
            "/v1/namespaces/logs.api/events",
            &[("content-type", "application/x-ndjson")],
            "{\"event\":\"c\",\"data\":\"x\"}\n{\"event\":\"d\",\"data\":true}\n",
        )
        .await;
    assert_eq!(r.json(), serde_json::json!({"first": 3, "last": 4}));

    let raw: Vec<u8> = (0..=255u8).collect();
    let r = b
        .request(
            Method::POST,
            "/v1/namespaces/logs.api/events?event=blob%20v1&key=k%2F1",
            &[("content-type", "application/octet-stream")],
            raw.clone(),
        )
        .await;
    assert_eq!(r.json(), serde_json::json!({"offset": 5}));

    let page =
        ReadPage::from_json(&b.get("/v1/namespaces/logs.api/events?from=0").await.body).unwrap();
    let offsets: Vec<u64> = page.events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4, 5]);
    assert_eq!(page.next, 6);
    assert!(!page.truncated);
    assert_eq!(page.events[0].data, Payload::Json(r#"{"x":1}"#.into()));
    assert_eq!(page.events[2].data, Payload::Json("null".into()));
    assert_eq!(page.events[2].key.as_deref(), Some("k7"));
    assert_eq!(page.events[5].event, "blob v1");
    assert_eq!(page.events[5].key.as_deref(), Some("k/1"));
    assert_eq!(page.events[5].data, Payload::Bytes(raw.clone()));

    // Paging with limit, and MessagePack with native bytes.
    let page = ReadPage::from_json(
        &b.get("/v1/namespaces/logs.api/events?from=2&limit=2")
            .await
            .body,
    )
    .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(page.next, 4);
    let r = b
        .request(
            Method::GET,
            "/v1/namespaces/logs.api/events?from=5",
            &[("accept", "application/msgpack")],
            "",
        )
        .await;
    assert_eq!(r.headers["content-type"], "application/msgpack");
    let page = ReadPage::from_msgpack(&r.body).unwrap();
    assert_eq!(page.events[0].data, Payload::Bytes(raw));

    // `latest` with no wait is an empty page that says where the end is.
    let page = ReadPage::from_json(
        &b.get("/v1/namespaces/logs.api/events?from=latest")
            .await
            .body,
    )
    .unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next, 6);
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let b = Broker::start(&[]);
    b.post_json("/v1/namespaces/n/events", r#"{"event":"first"}"#)
        .await;
    let r = b
        .post_json(
            "/v1/namespaces/n/events",
            r#"[{"event":"ok"},{"event":""},{"event":"ok2"}]"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code(), "bad_frame");
    let info = b.get("/v1/namespaces/n").await.json();
    assert_eq!(info["next"], 1);
    let r = b
        .post_json(
            "/v1/namespaces/n/events",
            r#"[{"event":"x"},{"event":"y"}]"#,
        )
        .await;
    assert_eq!(r.json(), serde_json::json!({"first": 1, "last": 2}));
}

#[tokio::test]
async fn long_poll_is_woken_by_a_publish_and_times_out_empty() {
    let b = Broker::start(&[]);
    b.post_json("/v1/namespaces/w/events", r#"{"event":"e0"}"#)
        .await;
    // Nothing arrives: the wait ends with an empty page.
    let page =
        ReadPage::from_json(&b.get("/v1/namespaces/w/events?from=1&wait=0.2").await.body).unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next, 1);
    let url = b.addr;
    let waiter = tokio::spawn(async move {
        rewind_tests::request(
            url,
            Method::GET,
            "/v1/namespaces/w/events?from=1&wait=30",
            &[],
            Default::default(),
        )
        .await
        .unwrap()
    });
    let r = b
        .post_json("/v1/namespaces/w/events", r#"{"event":"e1","data":42}"#)
        .await;
    assert_eq!(r.json()["offset"], 1);
    let page = ReadPage::from_json(&waiter.await.unwrap().body).unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].offset, 1);
    assert_eq!(page.events[0].data, Payload::Json("42".into()));
}

#[tokio::test]
async fn idempotent_retry_appends_once_even_after_restart() {
    let mut b = Broker::start(&[]);
    async fn publish(b: &Broker, key: &str) -> rewind_tests::Response {
        b.request(
            Method::POST,
            "/v1/namespaces/i/events",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ],
            r#"[{"event":"a"},{"event":"b"}]"#,
        )
        .await
    }
    let first = publish(&b, "req-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.json(), serde_json::json!({"first": 0, "last": 1}));
    let retry = publish(&b, "req-1").await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.json(), first.json());
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    let other = publish(&b, "req-2").await;
    assert_eq!(other.json(), serde_json::json!({"first": 2, "last": 3}));
    assert!(b.terminate().success());
    b.restart();
    let after = publish(&b, "req-1").await;
    assert_eq!(after.json(), first.json());
    assert_eq!(b.get("/v1/namespaces/i").await.json()["next"], 4);
}

#[tokio::test]
async fn retention_removes_old_events_and_reads_say_truncated() {
    let b = Broker::start(&["--retention-interval-ms", "20"]);
    let r = b
        .put_json("/v1/namespaces/r", r#"{"retention":{"max_events":3}}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["retention"]["max_events"], 3);
    for i in 0..10 {
        b.post_json(
            "/v1/namespaces/r/events",
            &format!(r#"{{"event":"e","data":{i}}}"#),
        )
        .await;
    }
    // Retention runs in the background.
    b.wait_for("/v1/namespaces/r", |info| info["earliest"] == 7)
        .await;
    let page = ReadPage::from_json(&b.get("/v1/namespaces/r/events?from=0").await.body).unwrap();
    assert!(page.truncated);
    assert_eq!(page.earliest, 7);
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [7, 8, 9]
    );
    assert_eq!(page.events[0].data, Payload::Json("7".into()));
    // Reading exactly at earliest is not truncated; the namespace info agrees.
    let page = ReadPage::from_json(&b.get("/v1/namespaces/r/events?from=7").await.body).unwrap();
    assert!(!page.truncated);
    let info = b.get("/v1/namespaces/r").await.json();
    assert_eq!(
        (info["earliest"].as_u64(), info["events"].as_u64()),
        (Some(7), Some(3))
    );
}

#[tokio::test]
async fn namespace_admin_and_recreate_keeps_offsets_unique() {
    let b = Broker::start(&[]);
    let put = |body: &'static str| {
        b.request(
            Method::PUT,
            "/v1/namespaces/adm",
            &[("content-type", "application/json")],
            body,
        )
    };
    let created = put("").await;
    assert_eq!(created.status, StatusCode::CREATED);
    let epoch = created.json()["epoch"].as_str().unwrap().to_owned();
    let again = put(r#"{"retention":{"max_bytes":1000}}"#).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["retention"]["max_bytes"], 1000);
    assert_eq!(again.json()["epoch"], epoch.as_str());
    b.post_json(
        "/v1/namespaces/adm/events",
        r#"[{"event":"a"},{"event":"b"}]"#,
    )
    .await;
    let list = b.get("/v1/namespaces").await.json();
    assert_eq!(list["namespaces"][0]["name"], "adm");
    assert_eq!(list["namespaces"][0]["events"], 2);
    assert!(list["namespaces"][0]["bytes"].as_u64().unwrap() > 0);

    let del = b
        .request(Method::DELETE, "/v1/namespaces/adm", &[], "")
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(
        b.get("/v1/namespaces/adm").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        b.get("/v1/namespaces/adm/events").await.error_code(),
        "not_found"
    );
    let del = b
        .request(Method::DELETE, "/v1/namespaces/adm", &[], "")
        .await;
    assert_eq!(del.status, StatusCode::NOT_FOUND);

    // Re-created by a publish: a new epoch, and offsets continue after the old ones.
    let r = b
        .post_json("/v1/namespaces/adm/events", r#"{"event":"c"}"#)
        .await;
    assert_eq!(r.json()["offset"], 2);
    let info = b.get("/v1/namespaces/adm").await.json();
    assert_ne!(info["epoch"], epoch.as_str());
    assert_eq!(info["earliest"], 2);

    assert_eq!(b.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(b.get("/readyz").await.status, StatusCode::OK);
}

/// Method, path, content type, body, expected status, expected error code.
type BadCase = (
    Method,
    String,
    Option<&'static str>,
    String,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn bad_input_gets_the_right_status_and_code_and_appends_nothing() {
    let b = Broker::start(&[
        "--max-body-bytes",
        "4096",
        "--max-payload-bytes",
        "1024",
        "--auto-create",
        "false",
    ]);
    assert_eq!(
        b.request(Method::PUT, "/v1/namespaces/bad", &[], "")
            .await
            .status,
        StatusCode::CREATED
    );
    let json = "application/json";
    let deep = format!(
        "{{\"event\":\"e\",\"data\":{}{}}}",
        "[".repeat(500),
        "]".repeat(500)
    );
    let big_payload = format!(r#"{{"event":"e","data":"{}"}}"#, "x".repeat(2000));
    let huge_body = "x".repeat(5000);
    let cases: Vec<BadCase> = vec![
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            r#"{"event":7}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            r#"{"event":"e","key":[]}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            r#"{"event":"e","dta":1}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            "[]".into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            "\"str\"".into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            r#"{"event":"tab\there"}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            deep,
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some("application/x-ndjson"),
            "{\"event\":\"a\"}\nnope\n".into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            big_payload,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some(json),
            huge_body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some("application/x-www-form-urlencoded"),
            "a=b".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            None,
            "{}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some("application/json; charset=latin1"),
            "{}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events".into(),
            Some("application/octet-stream"),
            "raw".into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/bad/events?event=".into(),
            Some("application/octet-stream"),
            "raw".into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::POST,
            "/v1/namespaces/.bad/events".into(),
            Some(json),
            r#"{"event":"e"}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_namespace",
        ),
        (
            Method::POST,
            "/v1/namespaces/a..b/events".into(),
            Some(json),
            r#"{"event":"e"}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_namespace",
        ),
        (
            Method::POST,
            "/v1/namespaces/sp%20ace/events".into(),
            Some(json),
            r#"{"event":"e"}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_namespace",
        ),
        (
            Method::POST,
            "/v1/namespaces/nobody/events".into(),
            Some(json),
            r#"{"event":"e"}"#.into(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/namespaces/bad/events?from=soon".into(),
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        (
            Method::GET,
            "/v1/namespaces/bad/events?from=-1".into(),
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        (
            Method::GET,
            "/v1/namespaces/bad/events?from=99".into(),
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        (
            Method::GET,
            "/v1/namespaces/bad/events?limit=0".into(),
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        (
            Method::GET,
            "/v1/namespaces/bad/events?wait=61".into(),
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        (
            Method::GET,
            "/v1/namespaces/bad/events?wait=NaN".into(),
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "bad_position",
        ),
        (
            Method::PUT,
            "/v1/namespaces/bad".into(),
            Some(json),
            r#"{"retention":{"max_events":"x"}}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_frame",
        ),
        (
            Method::PATCH,
            "/v1/namespaces/bad/events".into(),
            None,
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v2/whatever".into(),
            None,
            String::new(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, ctype, body, status, code) in cases {
        let mut headers = vec![];
        if let Some(c) = ctype {
            headers.push(("content-type", c));
        }
        let shown = format!(
            "{method} {path} {:?}",
            body.chars().take(60).collect::<String>()
        );
        let r = b.request(method, &path, &headers, body).await;
        assert_eq!(
            r.status,
            status,
            "{shown}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code(), code, "{shown}");
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    }
    // None of it was appended, and no namespace was created on the way.
    let info = b.get("/v1/namespaces/bad").await.json();
    assert_eq!(info["next"], 0, "{info}");
    assert_eq!(
        b.get("/v1/namespaces/nobody").await.status,
        StatusCode::NOT_FOUND
    );
}
