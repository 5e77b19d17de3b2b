//! The JavaScript client (`/rewind.js`) in headless Chromium, imported by a page on
//! ANOTHER origin (a static site of the test's) with
//! `import {connect} from "http://127.0.0.1:PORT/rewind.js"`: it receives events (JSON and
//! bytes), publishes, follows a namespace through a broker restart with no gap and no
//! duplicate, falls back to long-polling when a proxy refuses WebSockets and returns to
//! the WebSocket, and reports a deletion.

use std::time::Duration;

use rewind_tests::browser::{Browser, Page, StaticSite};
use rewind_tests::proxy::WsProxy;
use rewind_tests::{Broker, StatusCode};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);

async fn publish_range(b: &Broker, ns: &str, from: u64, to: u64) {
    let batch: Vec<Value> = (from..to)
        .map(|i| json!({"event": "tick", "data": {"i": i}}))
        .collect();
    b.publish(ns, &Value::Array(batch).to_string()).await;
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

/// A page on `site` whose module script imports the client from the broker at `broker`
/// and puts `connect` on `window`; `window.ready` once it has run.
async fn page_elsewhere(browser: &Browser, site: &StaticSite, broker: &str) -> Page {
    site.html(
        "/",
        &format!(
            r#"<!doctype html><meta charset=utf-8><title>elsewhere</title>
<script type="module">
import {{ connect }} from "{broker}/rewind.js";
window.connect = connect;
window.ready = true;
</script><p>a page elsewhere"#
        ),
    );
    let page = browser.page(&site.url("/")).await;
    page.wait_for("window.ready === true", PATIENCE).await;
    page
}

/// Connects `window.client` to `url` with `options` (a JS object literal) and subscribes
/// `ns` from `from`, recording every item in `window.rec`.
async fn follow(page: &Page, url: &str, options: &str, ns: &str, from: Value) -> Value {
    let script = format!(
        r#"(async () => {{
            const rec = {{events: [], gaps: [], truncated: [], ended: [], epochs: [], transports: []}};
            window.rec = rec;
            const client = await window.connect({url}, {options});
            window.client = client;
            client.on("state", s => rec.transports.push(s.transport));
            client.subscribe({ns}, {{from: {from}}}, {{
                onEvent: e => rec.events.push({{
                    offset: e.offset, event: e.event, key: e.key ?? null,
                    bytes: e.data instanceof Uint8Array ? Array.from(e.data) : null,
                    data: e.data instanceof Uint8Array ? null : e.data,
                }}),
                onGap: g => rec.gaps.push(g),
                onTruncated: t => rec.truncated.push(t),
                onEnded: e => rec.ended.push(e),
                onEpoch: e => rec.epochs.push(e),
            }});
            return client.transport;
        }})()"#,
        url = json!(url),
        ns = json!(ns),
    );
    page.eval(&script).await
}

/// Waits until the page has recorded `n` events; returns their offsets, checking that each
/// `tick`'s data matches its offset.
async fn offsets(page: &Page, n: usize) -> Vec<u64> {
    page.wait_for(&format!("window.rec.events.length >= {n}"), PATIENCE)
        .await;
    let events = page.eval("window.rec.events").await;
    events
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let offset = e["offset"].as_u64().expect("offset");
            if e["event"] == "tick" {
                assert_eq!(e["data"]["i"], json!(offset), "{e}");
            }
            offset
        })
        .collect()
}

async fn no_gaps(page: &Page) {
    let rec = page
        .eval("({gaps: window.rec.gaps, truncated: window.rec.truncated, ended: window.rec.ended})")
        .await;
    assert_eq!(
        rec,
        json!({"gaps": [], "truncated": [], "ended": []}),
        "{}",
        page.console_report()
    );
}

#[tokio::test]
async fn a_page_elsewhere_imports_the_client_publishes_and_follows_through_a_broker_restart() {
    let (site, mut b) = site_and_broker(&[]).await;
    let browser = Browser::launch().await;
    let page = page_elsewhere(&browser, &site, &b.url()).await;
    publish_range(&b, "feed", 0, 3).await;
    let transport = follow(
        &page,
        &b.url(),
        "{backoffMin: 50, backoffMax: 500}",
        "feed",
        json!("earliest"),
    )
    .await;
    assert_eq!(transport, json!("websocket"));
    assert_eq!(offsets(&page, 3).await, [0, 1, 2]);

    // Publishing from the page: the offsets come back; bytes arrive as a Uint8Array.
    let published = page
        .eval(
            r#"(async () => [
                await window.client.publish("feed", "note", {hello: "world"}, {key: "k"}),
                await window.client.publish("feed", "blob", new Uint8Array([0, 1, 127, 128, 255])),
            ])()"#,
        )
        .await;
    assert_eq!(published, json!([3, 4]));
    assert_eq!(offsets(&page, 5).await, [0, 1, 2, 3, 4]);
    let events = page.eval("window.rec.events.slice(3)").await;
    assert_eq!(
        events,
        json!([
            {"offset": 3, "event": "note", "key": "k", "bytes": null, "data": {"hello": "world"}},
            {"offset": 4, "event": "blob", "key": null, "bytes": [0, 1, 127, 128, 255], "data": null},
        ])
    );
    let read = b.get("/v1/namespaces/feed/events?from=4").await.json();
    assert_eq!(read["events"][0]["data_b64"], "AAF/gP8=");

    // kill -9 and a restart on the same port and data dir: the client resumes by itself.
    b.kill9();
    b.restart();
    publish_range(&b, "feed", 5, 10).await;
    assert_eq!(offsets(&page, 10).await, (0..10).collect::<Vec<u64>>());
    no_gaps(&page).await;
    page.wait_for(
        "window.client.state === 'open' && window.rec.transports.includes(null)",
        PATIENCE,
    )
    .await;
    // And again, while the page publishes through it.
    b.kill9();
    let pending = page
        .eval("window.pending = window.client.publish('feed', 'during', 10); true")
        .await;
    assert_eq!(pending, json!(true));
    b.restart();
    assert_eq!(page.eval("window.pending").await, json!(10));
    publish_range(&b, "feed", 11, 13).await;
    assert_eq!(offsets(&page, 13).await, (0..13).collect::<Vec<u64>>());
    no_gaps(&page).await;
    let epochs = page.eval("window.rec.epochs.length").await;
    assert_eq!(epochs, json!(1), "one log, one epoch");
}

#[tokio::test]
async fn websockets_refused_by_a_proxy_fall_back_to_long_polling_and_come_back() {
    let (site, b) = site_and_broker(&[]).await;
    let proxy = WsProxy::start(b.addr);
    let browser = Browser::launch().await;
    let page = page_elsewhere(&browser, &site, &b.url()).await;
    publish_range(&b, "wall", 0, 2).await;
    let options = "{backoffMin: 50, backoffMax: 300, probeMin: 200, probeMax: 500, pollWait: 2, stableAfter: 500}";
    let transport = follow(&page, &proxy.url(), options, "wall", json!(0)).await;
    assert_eq!(transport, json!("websocket"));
    assert_eq!(offsets(&page, 2).await, [0, 1]);

    proxy.refuse_websockets(true);
    page.wait_for("window.client.transport === 'longpoll'", PATIENCE)
        .await;
    publish_range(&b, "wall", 2, 6).await;
    let offset = page
        .eval("window.client.publish('wall', 'tick', {i: 6})")
        .await;
    assert_eq!(offset, json!(6));
    assert_eq!(offsets(&page, 7).await, (0..7).collect::<Vec<u64>>());
    assert_eq!(
        page.eval("window.client.transport").await,
        json!("longpoll")
    );

    proxy.refuse_websockets(false);
    page.wait_for("window.client.transport === 'websocket'", PATIENCE)
        .await;
    publish_range(&b, "wall", 7, 10).await;
    assert_eq!(offsets(&page, 10).await, (0..10).collect::<Vec<u64>>());
    no_gaps(&page).await;
    let transports = page.eval("window.rec.transports").await;
    let seen: Vec<&str> = transports
        .as_array()
        .expect("transports")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        seen.contains(&"longpoll") && seen.last() == Some(&"websocket"),
        "{transports}"
    );
}

#[tokio::test]
async fn deletion_is_reported_to_the_page_over_both_transports() {
    let (site, b) = site_and_broker(&[]).await;
    let browser = Browser::launch().await;
    let page = page_elsewhere(&browser, &site, &b.url()).await;
    for transport in ["websocket", "longpoll"] {
        let ns = format!("gone.{transport}");
        publish_range(&b, &ns, 0, 1).await;
        let options = format!("{{transport: {}, pollWait: 2}}", json!(transport));
        assert_eq!(
            follow(&page, &b.url(), &options, &ns, json!("earliest")).await,
            json!(transport)
        );
        assert_eq!(offsets(&page, 1).await, [0]);
        let r = b
            .request(
                rewind_tests::Method::DELETE,
                &format!("/v1/namespaces/{ns}"),
                &[],
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        page.wait_for("window.rec.ended.length === 1", PATIENCE)
            .await;
        assert_eq!(
            page.eval("window.rec.ended").await,
            json!([{"reason": "deleted"}])
        );
        page.eval("window.client.close(); true").await;
    }
}
