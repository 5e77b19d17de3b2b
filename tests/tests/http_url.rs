//! What a URL carries, against the real binary: query parameters and path segments are
//! percent-decoded strictly (invalid UTF-8 is refused, never turned into U+FFFD), a
//! parameter given twice is refused, and `%2F` makes no path hierarchy.

use rewind_tests::{Broker, Response};
use rewind_tests::{Method, StatusCode};

const RAW: (&str, &str) = ("content-type", "application/octet-stream");

async fn raw_publish(b: &Broker, path: &str) -> Response {
    b.request(Method::POST, path, &[RAW], "xx").await
}

/// `res` is a 400 with `code` whose message names `parameter`.
fn refused(res: &Response, code: &str, parameter: &str, what: &str) {
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{what}");
    assert_eq!(res.error_code(), code, "{what}");
    let message = res.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains(parameter), "{what}: {message}");
    assert!(!message.contains('\u{fffd}'), "{what}: {message}");
}

#[tokio::test]
async fn query_parameters_that_are_not_utf8_or_given_twice_are_refused() {
    let b = Broker::start(&[]);
    let publishes = [
        ("event=%FF", "event"),
        ("event=ok&key=%FF", "key"),
        ("event=ok&key=%ED%A0%80", "key"),
        ("event=%C3", "event"),
        ("event=a&event=b", "event"),
        ("event=a&key=x&key=y", "key"),
        ("ev%65nt=a&event=a", "event"),
    ];
    for (query, parameter) in publishes {
        let res = raw_publish(&b, &format!("/v1/namespaces/q/events?{query}")).await;
        refused(&res, "bad_frame", parameter, query);
        // The JSON way in decodes the same query the same way.
        let res = b
            .post_json(
                &format!("/v1/namespaces/q/events?{query}"),
                r#"{"event":"e"}"#,
            )
            .await;
        refused(&res, "bad_frame", parameter, query);
    }
    // Refused, so nothing was created.
    assert_eq!(
        b.get("/v1/namespaces/q").await.status,
        StatusCode::NOT_FOUND
    );

    // Well-formed encodings still decode: UTF-8 escapes, `+` as a space.
    let res = raw_publish(&b, "/v1/namespaces/q/events?event=caf%C3%A9&key=a+b%2Bc").await;
    assert_eq!(res.status, StatusCode::CREATED);
    let page = b.get("/v1/namespaces/q/events").await.json();
    assert_eq!(page["events"][0]["event"], "café", "{page}");
    assert_eq!(page["events"][0]["key"], "a b+c", "{page}");

    let reads = [
        ("from=%FF", "from"),
        ("limit=%FF", "limit"),
        ("wait=%FE", "wait"),
        ("from=0&from=1", "from"),
        ("limit=1&limit=2", "limit"),
        ("wait=0&wait=0", "wait"),
    ];
    for (query, parameter) in reads {
        let res = b.get(&format!("/v1/namespaces/q/events?{query}")).await;
        refused(&res, "bad_position", parameter, query);
    }
    // Parameters a route does not take are ignored, whatever their bytes.
    let res = b.get("/v1/namespaces/q/events?x=%FF&x=1&limit=1").await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn path_segments_are_percent_decoded_before_the_name_is_checked() {
    let b = Broker::start(&[]);
    let res = b
        .post_json("/v1/namespaces/a%2Eb/events", r#"{"event":"e"}"#)
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    let info = b.get("/v1/namespaces/a.b").await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.json()["name"], "a.b");
    // Every part of the path is decoded, the route's words too.
    let page = b.get("/v1/n%61mespaces/a%2eb/%65vents").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.json()["events"][0]["event"], "e");

    // `%2F` is a character of the segment, not a new one: refused as a name, as is what
    // does not decode to UTF-8 and what decodes to `..`.
    for ns in [
        "a%2Fb",
        "a%2fb%2Fevents",
        "%2E%2E",
        "%2Ehidden",
        "x%FFy",
        "x%ED%A0%80",
    ] {
        for (method, path) in [
            (Method::POST, format!("/v1/namespaces/{ns}/events")),
            (Method::PUT, format!("/v1/namespaces/{ns}")),
            (Method::GET, format!("/v1/namespaces/{ns}")),
        ] {
            let res = b
                .request(
                    method.clone(),
                    &path,
                    &[("content-type", "application/json")],
                    r#"{"event":"e"}"#,
                )
                .await;
            assert_eq!(res.status, StatusCode::BAD_REQUEST, "{method} {path}");
            assert_eq!(res.error_code(), "bad_namespace", "{method} {path}");
            let message = res.json()["error"]["message"].as_str().unwrap().to_owned();
            assert!(!message.contains('\u{fffd}'), "{path}: {message}");
        }
    }
    let all = b.get("/v1/namespaces").await.json();
    let names: Vec<&str> = all["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.b"]);
}
