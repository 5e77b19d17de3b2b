//! What the broker says about a bad request, against the real binary: publish-body
//! messages in the API's words (not serde's), and the requests hyper refuses before the
//! broker sees them, which are answered without a JSON body (documented in
//! `docs/http-api.md`, "Requests that are not HTTP").

use rewind_tests::{raw_http, Broker};
use rewind_tests::{Method, StatusCode};

/// The `error.message` of a `400 bad_frame`.
async fn bad_frame(b: &Broker, content_type: &str, body: &str) -> String {
    let res = b
        .request(
            Method::POST,
            "/v1/namespaces/m/events",
            &[("content-type", content_type)],
            body.to_owned(),
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(res.error_code(), "bad_frame", "{body}");
    res.json()["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn publish_body_messages_say_what_is_wrong_in_the_apis_words() {
    let b = Broker::start(&[]);
    let ndjson = "application/x-ndjson";
    let json = "application/json";
    let cases = [
        (
            ndjson,
            "[{\"event\":\"a\"}]\n",
            "line 1: each line is one event object",
        ),
        (
            ndjson,
            "{\"event\":\"a\"}\n\"b\"\n",
            "line 2: each line is one event object",
        ),
        (
            ndjson,
            "{\"event\":\"a\",}\n",
            "line 1: trailing comma at column",
        ),
        (
            json,
            "[{\"event\":\"a\"},2]",
            "item 1: each item is one event object",
        ),
        (
            json,
            r#"{"event":{}}"#,
            "event must be a string, not an object",
        ),
        (
            json,
            r#"{"event":["a"]}"#,
            "event must be a string, not an array",
        ),
        (
            json,
            r#"[{"event":"a","key":1}]"#,
            "item 0: key must be a string, not a number",
        ),
        (json, r#"{"event":"a","dta":1}"#, "unknown field `dta`"),
        (json, r#"{"data":1}"#, "missing field `event`"),
    ];
    for (content_type, body, says) in cases {
        let message = bad_frame(&b, content_type, body).await;
        assert!(message.contains(says), "{body}: {message}");
        for serde_words in [
            "invalid type",
            "struct ",
            "expected a string",
            "line 1 column",
        ] {
            assert!(!message.contains(serde_words), "{body}: {message}");
        }
    }
    // Nothing was published, so nothing was created.
    assert_eq!(
        b.get("/v1/namespaces/m").await.status,
        StatusCode::NOT_FOUND
    );
}

/// The status code of a raw HTTP answer, and its body (what follows the blank line).
fn status_and_body(answer: &[u8]) -> (u16, Vec<u8>) {
    let text = String::from_utf8_lossy(answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    (status, answer[split + 4..].to_vec())
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_a_bare_status_and_the_connection_closes() {
    let b = Broker::start(&[]);
    let many_headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "two different Content-Lengths",
            b"POST /v1/namespaces/h/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 13\r\ncontent-length: 14\r\n\r\n{\"event\":\"a\"}"
                .to_vec(),
            400,
        ),
        (
            "a 70,000-byte path",
            format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
        ),
        (
            "200 headers",
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
    ];
    for (what, request, status) in cases {
        let answer = raw_http(b.addr, &request).await;
        let (got, body) = status_and_body(&answer);
        assert_eq!(got, status, "{what}: {}", String::from_utf8_lossy(&answer));
        // hyper writes these answers itself, with no body (the documented exception to
        // "every error is JSON").
        assert!(
            body.is_empty(),
            "{what}: {}",
            String::from_utf8_lossy(&answer)
        );
        let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(head.contains("connection: close"), "{what}: {head}");
    }
    // Nothing was published, and the broker serves on.
    assert_eq!(
        b.get("/v1/namespaces/h").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn put_body_messages_say_what_a_limit_is() {
    let b = Broker::start(&[]);
    let cases = [
        (
            r#"{"retention":{"max_events":"x"}}"#,
            "a limit is a whole number from 1 up, or null for no limit",
        ),
        (
            r#"{"retention":{"max_bytes":-1}}"#,
            "a limit is a whole number from 1 up, or null for no limit",
        ),
        (r#"{"retention":{"max_age_secs":0}}"#, "null means no limit"),
        (r#"{"retention":[]}"#, "retention is an object"),
        (r#"{"retention":[5]}"#, "retention is an object"),
        (r#"{"retention":null}"#, "retention is an object"),
        ("[]", "the body is an object"),
        ("[{}]", "the body is an object"),
    ];
    for (body, says) in cases {
        let res = b.put_json("/v1/namespaces/p", body).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(res.error_code(), "bad_frame", "{body}");
        let message = res.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{body}: {message}");
        for serde_words in ["struct ", "expected u64", "PutBody", "PutRetention"] {
            assert!(!message.contains(serde_words), "{body}: {message}");
        }
    }
    assert_eq!(
        b.get("/v1/namespaces/p").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_byte_order_mark_is_ignored_and_ndjson_has_both_spellings() {
    // A tester's input: a body saved by an editor that writes a BOM was refused with
    // "each line is one event object", which does not say what is wrong. RFC 8259 §8.1
    // lets a parser ignore it; the events are stored without it.
    let b = Broker::start(&[]);
    let cases = [
        (
            "application/json",
            "\u{feff}{\"event\":\"a\",\"data\":1}",
            1,
        ),
        (
            "application/json",
            "\u{feff}[{\"event\":\"b\"},{\"event\":\"c\"}]",
            2,
        ),
        (
            "application/x-ndjson",
            "\u{feff}{\"event\":\"d\"}\n{\"event\":\"e\"}\n",
            2,
        ),
        // NDJSON under the spelling without `x-` (a tester's input: it was taken for a
        // raw payload and refused for want of `?event=`).
        ("application/ndjson", "{\"event\":\"f\"}\n", 1),
    ];
    let mut next = 0;
    for (content_type, body, n) in cases {
        let res = b
            .request(
                Method::POST,
                "/v1/namespaces/bom/events",
                &[("content-type", content_type)],
                body.to_owned(),
            )
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "{body:?}");
        next += n;
    }
    let page = b.get("/v1/namespaces/bom/events?from=0").await.json();
    let names: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c", "d", "e", "f"]);
    assert_eq!(page["next"], next);
}
