//! The browser's own `EventSource` against the real broker, in headless Chromium, from a
//! page on another origin (a static site of the test's): it receives events (JSON and
//! bytes), resumes across a broker restart with `Last-Event-ID` by itself with no gap and
//! no duplicate, and learns of a deletion (and then stops, with no reconnect loop). A page
//! on another origin also reads and publishes with `fetch` (CORS).

use std::time::Duration;

use rewind_tests::browser::{Browser, Page, StaticSite};
use rewind_tests::{Broker, StatusCode};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);

async fn publish(b: &Broker, ns: &str, body: &Value) {
    b.publish(ns, &body.to_string()).await;
}

async fn publish_range(b: &Broker, ns: &str, from: u64, to: u64) {
    let batch: Vec<Value> = (from..to)
        .map(|i| json!({"event": "tick", "data": {"i": i}}))
        .collect();
    publish(b, ns, &Value::Array(batch)).await;
}

/// A static site for the test's page (another origin than the broker's), and a broker
/// that lists its origin in `--allowed-origins`, started with `args` besides.
async fn site_and_broker(args: &[&str]) -> (StaticSite, Broker) {
    let site = StaticSite::start().await;
    let origin = site.origin();
    let mut all = vec!["--allowed-origins", origin.as_str()];
    all.extend_from_slice(args);
    let b = Broker::start(&all);
    (site, b)
}

/// A blank page on `site`.
async fn page_elsewhere(browser: &Browser, site: &StaticSite) -> Page {
    site.html(
        "/",
        "<!doctype html><meta charset=utf-8><title>elsewhere</title><p>a page elsewhere",
    );
    browser.page(&site.url("/")).await
}

/// Opens `window.es` on `url` in the page, recording every message and error in
/// `window.rec`: `opened` (data), `events` (`[lastEventId, data]` for the names in
/// `names`), `truncated`, `closed` (`[lastEventId, data]`), `errors` (`readyState`s).
async fn follow(page: &Page, url: &str, names: &[&str]) {
    let script = format!(
        r#"(() => {{
            const rec = {{opened: [], events: [], truncated: [], closed: [], errors: []}};
            window.rec = rec;
            const es = new EventSource({url});
            window.es = es;
            es.addEventListener("rewind.opened", m => rec.opened.push(JSON.parse(m.data)));
            es.addEventListener("rewind.truncated", m => rec.truncated.push(JSON.parse(m.data)));
            es.addEventListener("rewind.closed", m => rec.closed.push([m.lastEventId, JSON.parse(m.data)]));
            for (const name of {names}) {{
                es.addEventListener(name, m => rec.events.push([m.lastEventId, JSON.parse(m.data)]));
            }}
            es.onerror = () => rec.errors.push(es.readyState);
            return true;
        }})()"#,
        url = json!(url),
        names = json!(names),
    );
    page.eval(&script).await;
}

/// The offsets of the events recorded so far, checking each one's id against its data.
async fn offsets(page: &Page) -> Vec<u64> {
    let events = page.eval("window.rec.events").await;
    events
        .as_array()
        .expect("events")
        .iter()
        .map(|pair| {
            let offset = pair[1]["offset"].as_u64().expect("offset");
            assert_eq!(pair[0], json!(offset.to_string()), "{pair}");
            offset
        })
        .collect()
}

#[tokio::test]
async fn an_event_source_on_another_origin_receives_json_and_bytes() {
    let (site, b) = site_and_broker(&[]).await;
    publish(
        &b,
        "feed",
        &json!({"event": "tick", "data": {"msg": "héllo\n"}, "key": "k"}),
    )
    .await;
    let raw = b
        .request(
            rewind_tests::Method::POST,
            "/v1/namespaces/feed/events?event=blob",
            &[("content-type", "application/octet-stream")],
            vec![0u8, 1, 2, 255],
        )
        .await;
    assert_eq!(raw.status, StatusCode::CREATED);
    let browser = Browser::launch().await;
    let page = page_elsewhere(&browser, &site).await;
    let url = format!("{}/v1/namespaces/feed/sse?from=earliest", b.url());
    follow(&page, &url, &["tick", "blob"]).await;
    page.wait_for("window.rec.events.length === 2", PATIENCE)
        .await;
    // Live, after the page caught up.
    publish(&b, "feed", &json!({"event": "tick", "data": [1, 2]})).await;
    page.wait_for("window.rec.events.length === 3", PATIENCE)
        .await;

    let rec = page.eval("window.rec").await;
    let epoch = b.get("/v1/namespaces/feed").await.json()["epoch"].clone();
    assert_eq!(
        rec["opened"],
        json!([{"ns": "feed", "epoch": epoch, "from": 0, "earliest": 0, "next": 2}])
    );
    let events = rec["events"].as_array().expect("events");
    assert_eq!(events[0][1]["data"], json!({"msg": "héllo\n"}));
    assert_eq!(events[0][1]["key"], json!("k"));
    assert_eq!(events[1][1]["event"], json!("blob"));
    let bytes = page
        .eval("Array.from(atob(window.rec.events[1][1].data_b64), c => c.charCodeAt(0))")
        .await;
    assert_eq!(bytes, json!([0, 1, 2, 255]));
    assert_eq!(events[2][1]["data"], json!([1, 2]));
    assert_eq!(offsets(&page).await, vec![0, 1, 2]);
    assert_eq!(rec["errors"], json!([]), "{}", page.console_report());
    assert_eq!(page.eval("window.es.readyState").await, json!(1));
}

#[tokio::test]
async fn an_event_source_resumes_across_a_broker_restart_with_no_gap_and_no_duplicate() {
    let (site, mut b) = site_and_broker(&[]).await;
    publish_range(&b, "feed", 0, 5).await;
    let browser = Browser::launch().await;
    let page = page_elsewhere(&browser, &site).await;
    // `from=earliest` in the URL: a reconnect that ignored Last-Event-ID would start
    // over at 0 and show duplicates.
    let url = format!("{}/v1/namespaces/feed/sse?from=earliest", b.url());
    follow(&page, &url, &["tick"]).await;
    page.wait_for("window.rec.events.length === 5", PATIENCE)
        .await;

    // Killed outright: the browser sees the connection drop.
    b.kill9();
    page.wait_for("window.rec.errors.length >= 1", PATIENCE)
        .await;
    assert_eq!(
        page.eval("window.es.readyState").await,
        json!(0),
        "reconnecting, not closed"
    );
    b.restart();
    publish_range(&b, "feed", 5, 9).await;
    page.wait_for("window.rec.events.length >= 9", PATIENCE)
        .await;
    // Once more, with a clean shutdown (SIGTERM) this time.
    let status = b.terminate();
    assert!(status.success());
    b.restart();
    publish_range(&b, "feed", 9, 12).await;
    page.wait_for("window.rec.events.length >= 12", PATIENCE)
        .await;

    assert_eq!(offsets(&page).await, (0..12).collect::<Vec<u64>>());
    let rec = page.eval("window.rec").await;
    let opened = rec["opened"].as_array().expect("opened");
    assert_eq!(opened.len(), 3, "{rec}");
    // Each reconnect started where the page was: Last-Event-ID, not the URL's `from`.
    assert_eq!(
        opened.iter().map(|o| o["from"].clone()).collect::<Vec<_>>(),
        [json!(0), json!(5), json!(9)]
    );
    assert!(
        opened.iter().all(|o| o["epoch"] == opened[0]["epoch"]),
        "{rec}"
    );
    assert_eq!(rec["truncated"], json!([]));
    assert_eq!(page.eval("window.es.readyState").await, json!(1));
}

#[tokio::test]
async fn deletion_reaches_the_event_source_which_then_stops_without_a_reconnect_loop() {
    let (site, b) = site_and_broker(&[]).await;
    publish_range(&b, "doomed", 0, 3).await;
    let browser = Browser::launch().await;
    let page = page_elsewhere(&browser, &site).await;
    let url = format!("{}/v1/namespaces/doomed/sse?from=earliest", b.url());
    follow(&page, &url, &["tick"]).await;
    page.wait_for("window.rec.events.length === 3", PATIENCE)
        .await;

    let r = b
        .request(
            rewind_tests::Method::DELETE,
            "/v1/namespaces/doomed",
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    page.wait_for("window.rec.closed.length === 1", PATIENCE)
        .await;
    assert_eq!(
        page.eval("window.rec.closed[0]").await,
        json!(["", {"ns": "doomed", "reason": "deleted"}])
    );
    // The page did not close it: the browser reconnects once, meets 404, and gives up.
    page.wait_for("window.es.readyState === 2", PATIENCE).await;
    let rec = page.eval("window.rec").await;
    assert_eq!(rec["errors"].as_array().map(Vec::len), Some(2), "{rec}");
    assert_eq!(rec["opened"].as_array().map(Vec::len), Some(1), "{rec}");
    assert_eq!(offsets(&page).await, vec![0, 1, 2]);
    // And it created nothing.
    assert_eq!(
        b.get("/v1/namespaces/doomed").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_page_on_another_origin_reads_and_publishes_with_fetch() {
    let (site, b) = site_and_broker(&[]).await;
    publish_range(&b, "feed", 0, 2).await;
    let browser = Browser::launch().await;
    let page = page_elsewhere(&browser, &site).await;
    let script = format!(
        r#"(async () => {{
            const base = {base};
            const list = await (await fetch(base + "/v1/namespaces")).json();
            const read = await (await fetch(base + "/v1/namespaces/feed/events?from=0&wait=1")).json();
            // JSON with an Idempotency-Key: not a simple request, so a preflight first.
            const post = await fetch(base + "/v1/namespaces/feed/events", {{
                method: "POST",
                headers: {{"Content-Type": "application/json", "Idempotency-Key": "page-1"}},
                body: JSON.stringify({{event: "from-page", data: {{ok: true}}}}),
            }});
            const missing = await fetch(base + "/v1/namespaces/ghost/events");
            return {{
                names: list.namespaces.map(n => n.name),
                offsets: read.events.map(e => e.offset),
                posted: [post.status, await post.json()],
                missing: [missing.status, (await missing.json()).error.code],
            }};
        }})()"#,
        base = json!(b.url()),
    );
    let got = page.eval(&script).await;
    assert_eq!(
        got,
        json!({
            "names": ["feed"],
            "offsets": [0, 1],
            "posted": [201, {"offset": 2}],
            "missing": [404, "not_found"],
        }),
        "{}",
        page.console_report()
    );
    let polled = b.get("/v1/namespaces/feed/events?from=2").await.json();
    assert_eq!(polled["events"][0]["event"], json!("from-page"));
}

/// The attack issue 12 found, in a browser: a page on an origin the broker does not list
/// can open no WebSocket and no `EventSource`, read nothing with `fetch`, and its
/// `no-cors` text/plain POST (which needs no preflight, so the browser sends it whatever
/// the answer) is refused by the broker before anything is created.
#[tokio::test]
async fn a_page_on_an_unlisted_origin_can_neither_follow_nor_read_nor_publish() {
    let site = StaticSite::start().await;
    let b = Broker::start(&[]);
    publish_range(&b, "feed", 0, 2).await;
    let browser = Browser::launch().await;
    let page = page_elsewhere(&browser, &site).await;
    let script = format!(
        r#"(async () => {{
            const base = {base};
            const ws = await new Promise(done => {{
                const s = new WebSocket(base.replace("http", "ws") + "/v1/ws");
                s.onopen = () => done("open");
                s.onclose = e => done("closed " + e.code);
            }});
            const es = await new Promise(done => {{
                const s = new EventSource(base + "/v1/namespaces/feed/sse?from=earliest");
                s.onmessage = () => done("message");
                s.onerror = () => {{ done("error, readyState " + s.readyState); s.close(); }};
            }});
            let read;
            try {{
                await fetch(base + "/v1/namespaces/feed/events?from=0");
                read = "read";
            }} catch (e) {{
                read = e.name;
            }}
            const post = await fetch(base + "/v1/namespaces/from-a-page/events?event=note", {{
                method: "POST",
                mode: "no-cors",
                headers: {{"Content-Type": "text/plain"}},
                body: "written by a page",
            }});
            return {{ws, es, read, post: post.type}};
        }})()"#,
        base = json!(b.url()),
    );
    let got = page.eval(&script).await;
    assert_eq!(
        got,
        json!({
            "ws": "closed 1006",
            "es": "error, readyState 2",
            "read": "TypeError",
            "post": "opaque",
        }),
        "{}",
        page.console_report()
    );
    // The POST reached the broker (an opaque answer is an answer) and was refused.
    assert_eq!(
        b.get("/v1/namespaces/from-a-page").await.status,
        StatusCode::NOT_FOUND
    );
    let metrics = String::from_utf8(b.get("/metrics").await.body.to_vec()).expect("UTF-8");
    let refused = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"rewind_refused_requests_total{transport="http",code="origin_not_allowed"} "#,
            )
        })
        .map_or(0.0, |v| v.trim().parse::<f64>().expect("a number"));
    // The WebSocket handshake, the EventSource, the read and the POST.
    assert!(refused >= 4.0, "{metrics}");
}
