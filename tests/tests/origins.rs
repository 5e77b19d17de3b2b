//! The origin allow-list (spec §6; `docs/security.md`, "Origins"): a page of an origin
//! that is not allowed gets `403 origin_not_allowed` on every transport — the WebSocket
//! handshake, SSE, every HTTP route, preflights — before anything is created; the broker's
//! own origins are allowed on the port it bound; `allowed_origins` adds others, `*` any
//! but `null`, and `null` only itself. Origins are compared once normalised (scheme and
//! host in lower case, default port dropped) and never by prefix.

use rewind_tests::sse::Sse;
use rewind_tests::{raw_http, status_and_json, Broker, Method, Response, StatusCode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

const EVIL: &str = "http://evil.example";

/// The `rewind_refused_requests_total` series of HTTP refusals with `code`, 0 if absent.
async fn refused(b: &Broker, code: &str) -> f64 {
    let text = String::from_utf8(b.get("/metrics").await.body.to_vec()).expect("UTF-8");
    let series = format!(r#"rewind_refused_requests_total{{transport="http",code="{code}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// A `403 origin_not_allowed` answer in the JSON error shape.
fn assert_origin_refused(r: &Response, what: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {r:?}");
    assert_eq!(r.error_code(), "origin_not_allowed", "{what}");
    assert_eq!(r.headers["content-type"], "application/json", "{what}");
    assert!(
        r.headers.get("access-control-allow-origin").is_none(),
        "{what}: a refused origin gets no CORS permission: {r:?}"
    );
}

/// Whether namespace `ns` exists (asked without an `Origin`, as a service would).
async fn exists(b: &Broker, ns: &str) -> bool {
    let r = b.get(&format!("/v1/namespaces/{ns}")).await;
    match r.status {
        StatusCode::OK => true,
        StatusCode::NOT_FOUND => false,
        other => panic!("GET /v1/namespaces/{ns}: {other}"),
    }
}

/// The WebSocket handshake with `Origin: origin`: `Ok` once switched, else the refusal's
/// status and body.
async fn ws_open(b: &Broker, origin: &str) -> Result<(), (u16, serde_json::Value)> {
    let mut req = format!("ws://{}/v1/ws", b.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("origin", origin.parse().expect("header value"));
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut socket, _)) => {
            socket.close(None).await.ok();
            Ok(())
        }
        Err(WsError::Http(res)) => {
            let body = res.body().clone().unwrap_or_default();
            Err((
                res.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or_default(),
            ))
        }
        Err(e) => panic!("WebSocket handshake with Origin {origin}: {e}"),
    }
}

/// The text/plain POST any web page can send without a preflight (a "simple request"),
/// as Chromium sends it.
async fn simple_post(b: &Broker, ns: &str, origin: Option<&str>) -> Response {
    let mut headers = vec![("content-type", "text/plain;charset=UTF-8")];
    if let Some(o) = origin {
        headers.push(("origin", o));
    }
    b.request(
        Method::POST,
        &format!("/v1/namespaces/{ns}/events?event=note"),
        &headers,
        "written by a page",
    )
    .await
}

#[tokio::test]
async fn a_page_of_another_origin_is_refused_on_every_transport_and_creates_nothing() {
    let b = Broker::start(&[]);
    b.publish("kept", r#"{"event":"e","data":1}"#).await;
    let before = refused(&b, "origin_not_allowed").await;
    let evil = [("origin", EVIL)];
    let mut refusals = 0.0;

    // The issue's finding: this request published. Now refused, and nothing created.
    let r = simple_post(&b, "from-a-page", Some(EVIL)).await;
    assert_origin_refused(&r, "text/plain POST");
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(EVIL) && m.contains("allowed_origins")));
    refusals += 1.0;
    let r = b
        .request(
            Method::POST,
            "/v1/namespaces/from-a-page/events",
            &[evil[0], ("content-type", "application/json")],
            r#"{"event":"e","data":1}"#,
        )
        .await;
    assert_origin_refused(&r, "JSON POST");
    refusals += 1.0;
    assert!(
        !exists(&b, "from-a-page").await,
        "a refused publish created its namespace"
    );

    // Reads: a page, a long-poll (answered at once, not after its wait), the list.
    for path in [
        "/v1/namespaces/kept/events?from=0",
        "/v1/namespaces/kept/events?from=1&wait=30",
        "/v1/namespaces",
        "/v1/namespaces/kept",
        "/metrics",
        "/healthz",
    ] {
        let started = std::time::Instant::now();
        let r = b.request(Method::GET, path, &evil, "").await;
        assert_origin_refused(&r, path);
        assert!(started.elapsed().as_secs() < 10, "{path} waited");
        refusals += 1.0;
    }

    // Admin: neither created nor deleted.
    let r = b
        .request(
            Method::PUT,
            "/v1/namespaces/made-by-a-page",
            &[evil[0], ("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_origin_refused(&r, "PUT");
    let r = b
        .request(Method::DELETE, "/v1/namespaces/kept", &evil, "")
        .await;
    assert_origin_refused(&r, "DELETE");
    refusals += 2.0;
    assert!(!exists(&b, "made-by-a-page").await);
    assert!(exists(&b, "kept").await, "a refused DELETE deleted");

    // SSE, as an EventSource asks.
    let sse = Sse::open(b.addr, "/v1/namespaces/kept/sse?from=0", &evil).await;
    assert_eq!(sse.status, 403, "{:?}", sse.headers);
    refusals += 1.0;

    // The WebSocket handshake, by a client library and as raw bytes.
    let (status, body) = ws_open(&b, EVIL).await.expect_err("switched for evil");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    let answer = raw_http(
        b.addr,
        format!(
            "GET /v1/ws HTTP/1.1\r\nhost: {}\r\nconnection: Upgrade, close\r\nupgrade: \
             websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: \
             dGhlIHNhbXBsZSBub25jZQ==\r\norigin: {EVIL}\r\n\r\n",
            b.addr
        )
        .as_bytes(),
    )
    .await;
    let (status, body) = status_and_json(&answer);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    refusals += 2.0;

    // Counted as other refusals are.
    assert_eq!(refused(&b, "origin_not_allowed").await - before, refusals);

    // The same requests without an Origin (curl, a service) are not a page's: they pass.
    let r = simple_post(&b, "from-a-service", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert!(exists(&b, "from-a-service").await);
}

#[tokio::test]
async fn the_brokers_own_origins_are_allowed_on_the_port_the_kernel_chose() {
    // `Broker::start` listens on 127.0.0.1:0: the own origins are those of the bound port.
    let b = Broker::start(&[]);
    let port = b.addr.port();
    for own in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
        format!("HTTP://LOCALHOST:{port}"),
        format!("http://LocalHost:{port}"),
    ] {
        let r = simple_post(&b, "own", Some(&own)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{own}: {r:?}");
        // The origin echoed as sent, never `*`; the answer varies by origin.
        assert_eq!(r.headers["access-control-allow-origin"], own.as_str());
        assert!(
            r.headers.get_all("vary").iter().any(|v| v
                .to_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .contains("origin")),
            "{r:?}"
        );
        ws_open(&b, &own)
            .await
            .unwrap_or_else(|e| panic!("{own}: {e:?}"));
    }
    // Look-alikes: compared whole, never by prefix; no path, user or other port.
    for other in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://127.0.0.1:{port}.evil.example"),
        format!("http://127.0.0.1:{port}@evil.example"),
        format!("http://user@127.0.0.1:{port}"),
        format!("http://evil.example#@127.0.0.1:{port}"),
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port ^ 1),
        "http://127.0.0.1".to_owned(),
        "http://localhost".to_owned(),
        "null".to_owned(),
        "not an origin".to_owned(),
    ] {
        let r = simple_post(&b, "look-alike", Some(&other)).await;
        assert_origin_refused(&r, &other);
        let (status, _) = ws_open(&b, &other).await.expect_err(&other);
        assert_eq!(status, 403, "{other}");
    }
    assert!(!exists(&b, "look-alike").await);
}

#[tokio::test]
async fn null_is_refused_unless_listed_and_star_allows_any_other_origin() {
    let listed = Broker::start(&["--allowed-origins", "null"]);
    let r = simple_post(&listed, "n", Some("null")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.headers["access-control-allow-origin"], "null");
    ws_open(&listed, "null").await.expect("null listed");
    assert_origin_refused(&simple_post(&listed, "n", Some(EVIL)).await, "evil");

    let any = Broker::start(&["--allowed-origins", "*"]);
    for origin in [EVIL, "https://dash.example:8443", "chrome-extension://abc"] {
        let r = simple_post(&any, "n", Some(origin)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{origin}: {r:?}");
        assert_eq!(r.headers["access-control-allow-origin"], origin);
        ws_open(&any, origin).await.expect(origin);
    }
    assert_origin_refused(
        &simple_post(&any, "null", Some("null")).await,
        "null under *",
    );
    let (status, _) = ws_open(&any, "null").await.expect_err("null under *");
    assert_eq!(status, 403);
    assert!(!exists(&any, "null").await);
}

/// A browser's preflight of a JSON publish with every request header clients send.
async fn preflight(b: &Broker, origin: &str) -> Response {
    b.request(
        Method::OPTIONS,
        "/v1/namespaces/n/events",
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type,authorization,idempotency-key,last-event-id",
            ),
        ],
        "",
    )
    .await
}

#[tokio::test]
async fn a_preflight_is_answered_for_listed_origins_only() {
    let b = Broker::start(&[
        "--allowed-origins",
        "https://dash.example/,http://localhost:5173",
    ]);
    for origin in [
        "https://dash.example",
        "HTTPS://DASH.EXAMPLE:443",
        "http://localhost:5173",
    ] {
        let r = preflight(&b, origin).await;
        assert_eq!(r.status, StatusCode::OK, "{origin}: {r:?}");
        let h = |name: &str| {
            r.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or_default().to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(r.headers["access-control-allow-origin"], origin);
        for method in ["get", "post", "put", "delete"] {
            assert!(h("access-control-allow-methods").contains(method), "{r:?}");
        }
        for header in [
            "content-type",
            "authorization",
            "idempotency-key",
            "last-event-id",
        ] {
            assert!(h("access-control-allow-headers").contains(header), "{r:?}");
        }
        assert!(!h("access-control-max-age").is_empty(), "{r:?}");
        assert!(h("vary").contains("origin"), "{r:?}");
        assert!(r.headers.get("access-control-allow-credentials").is_none());
    }
    for origin in [
        EVIL,
        "https://dash.example.evil.example",
        "http://dash.example",
        "null",
    ] {
        assert_origin_refused(&preflight(&b, origin).await, origin);
    }

    // The request after the preflight: its answer headers readable by the page.
    let origin = [("origin", "https://dash.example")];
    let r = b
        .request(
            Method::POST,
            "/v1/namespaces/n/events",
            &[
                origin[0],
                ("content-type", "application/json"),
                ("idempotency-key", "k1"),
            ],
            r#"{"event":"e","data":1}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://dash.example"
    );
    let exposed = r.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in [
        "retry-after",
        "etag",
        "idempotent-replayed",
        "www-authenticate",
    ] {
        assert!(exposed.contains(header), "{exposed}");
    }
    // A long-poll read varies by Accept and by Origin.
    let r = b
        .request(Method::GET, "/v1/namespaces/n/events?from=0", &origin, "")
        .await;
    let vary: Vec<String> = r
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(vary.iter().any(|v| v.contains("accept")), "{vary:?}");
    assert!(vary.iter().any(|v| v.contains("origin")), "{vary:?}");
    let sse = Sse::open(b.addr, "/v1/namespaces/n/sse?from=0", &origin).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some("https://dash.example")
    );
}

#[tokio::test]
async fn the_brokers_files_are_served_to_any_origin_and_their_pages_checked() {
    let b = Broker::start(&[]);
    // The client library is made to be imported by pages anywhere.
    let r = b
        .request(Method::GET, "/rewind.js", &[("origin", EVIL)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    let r = b
        .request(
            Method::GET,
            "/dashboard/dashboard.js",
            &[("origin", EVIL)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // But nothing but a read of them skips the check.
    let r = b
        .request(Method::POST, "/rewind.js", &[("origin", EVIL)], "")
        .await;
    assert_origin_refused(&r, "POST /rewind.js");
}

#[tokio::test]
async fn a_bad_entry_is_refused_at_start_and_a_toml_array_is_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    for bad in [
        "https://dash.example/app",
        "dash.example",
        "https://u:p@dash.example",
    ] {
        let refusal = match Broker::open(&dir.path().join("data"), &["--allowed-origins", bad]) {
            Ok(_) => panic!("{bad} accepted"),
            Err(refusal) => refusal,
        };
        assert!(refusal.stderr.contains("is not an origin"), "{refusal}");
        assert!(refusal.stderr.contains("--allowed-origins"), "{refusal}");
    }
    let config = dir.path().join("rewind.toml");
    std::fs::write(
        &config,
        "allowed_origins = [\"https://dash.example\", \"http://localhost:5173\"]\n",
    )
    .expect("write config");
    let b = Broker::start(&["--config", config.to_str().expect("UTF-8 path")]);
    for origin in ["https://dash.example", "http://localhost:5173"] {
        let r = simple_post(&b, "n", Some(origin)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{origin}: {r:?}");
    }
    assert_origin_refused(&simple_post(&b, "n", Some(EVIL)).await, "evil");
}
