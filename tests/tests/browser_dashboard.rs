//! The dashboard at `/` in headless Chromium: it lists the namespaces (earliest, next,
//! events, bytes, retention, a live event rate), tails one live with events published
//! during the test (JSON pretty-printed, bytes as size and hex), filters and pauses the
//! tail, shows the connection's state and transport, and fits a phone's screen.
//!
//! Screenshots are saved under `$CARGO_TARGET_TMPDIR/dashboard/` (a test artifact); with
//! `REWIND_DASHBOARD_PNG=path` set, the laptop one is also written there (how
//! `docs/dashboard.png` is made).

use std::path::PathBuf;
use std::time::Duration;

use rewind_tests::browser::{Browser, Page};
use rewind_tests::{Broker, StatusCode};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);

async fn publish(b: &Broker, ns: &str, body: &Value) {
    b.publish(ns, &body.to_string()).await;
}

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("dashboard")
        .join(name)
}

/// The text of every cell of the namespace table's row for `ns`.
async fn row(page: &Page, ns: &str) -> Vec<String> {
    let cells = page
        .eval(&format!(
            r#"Array.from(document.querySelector('#ns-table tr[data-ns={}]')?.cells ?? [], c => c.textContent.trim())"#,
            json!(ns)
        ))
        .await;
    serde_json::from_value(cells).expect("cell texts")
}

#[tokio::test]
async fn the_dashboard_lists_namespaces_and_tails_one_live() {
    let b = Broker::start(&[]);
    let r = b
        .put_json(
            "/v1/namespaces/orders",
            r#"{"retention": {"max_events": 100000, "max_age_secs": 86400}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    publish(
        &b,
        "orders",
        &json!([
            {"event": "created", "data": {"id": 41, "items": [{"sku": "A-1", "qty": 2}], "total": 19.9}, "key": "order-41"},
            {"event": "paid", "data": {"id": 41, "via": "card"}, "key": "order-41"},
        ]),
    )
    .await;
    publish(
        &b,
        "logs.api",
        &json!({"event": "request", "data": {"path": "/v1/users", "status": 200}}),
    )
    .await;

    let browser = Browser::launch().await;
    let page = browser
        .page(&format!("{}/?ns=orders&from=earliest", b.url()))
        .await;
    page.set_viewport(1280, 860, false).await;

    // The namespace list, from GET /v1/namespaces.
    page.wait_for(
        "document.querySelectorAll('#ns-table tbody tr').length === 2",
        PATIENCE,
    )
    .await;
    let orders = row(&page, "orders").await;
    assert_eq!(orders[0..4], ["orders", "0", "2", "2"], "{orders:?}");
    assert!(orders[4].ends_with(" B"), "{orders:?}");
    assert_eq!(orders[5], "≤ 1 d · ≤ 100000 events", "{orders:?}");
    assert_eq!(row(&page, "logs.api").await[0..3], ["logs.api", "0", "1"]);

    // The connection and the tail of `orders` from the earliest event.
    page.wait_for(
        "document.getElementById('conn-state').textContent === 'open' && document.getElementById('conn-transport').textContent === 'websocket'",
        PATIENCE,
    )
    .await;
    page.wait_for(
        "document.querySelectorAll('#tail-list li[data-offset]').length === 2",
        PATIENCE,
    )
    .await;

    // Events published during the test appear live, newest first; bytes as size and hex.
    publish(
        &b,
        "orders",
        &json!({"event": "shipped", "data": {"carrier": "post", "id": 41}}),
    )
    .await;
    let r = b
        .request(
            rewind_tests::Method::POST,
            "/v1/namespaces/orders/events?event=label.pdf&key=order-41",
            &[("content-type", "application/pdf")],
            b"%PDF-1.7\n\x00\x01\x02".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    page.wait_for(
        "document.querySelector('#tail-list li[data-offset=\"3\"]') !== null",
        PATIENCE,
    )
    .await;
    let newest = page
        .eval(
            r#"Array.from(document.querySelectorAll('#tail-list li[data-offset]'), li => [
                li.dataset.offset, li.querySelector('.name').textContent,
                li.querySelector('pre').textContent, li.querySelector('.bytes')?.textContent ?? null])"#,
        )
        .await;
    assert_eq!(
        newest[0],
        json!([
            "3",
            "label.pdf",
            "25 50 44 46 2d 31 2e 37 0a 00 01 02",
            "12 B of bytes"
        ])
    );
    assert_eq!(
        newest[1],
        json!([
            "2",
            "shipped",
            "{\n  \"carrier\": \"post\",\n  \"id\": 41\n}",
            null
        ])
    );
    assert_eq!(newest[3][0], json!("0"));

    // The filter hides other names; pause holds new events until resume.
    page.eval("{ const f = document.getElementById('tail-filter'); f.value = 'paid'; f.dispatchEvent(new Event('input')); true }").await;
    let shown = page
        .eval("Array.from(document.querySelectorAll('#tail-list li[data-offset]')).filter(li => !li.hidden).map(li => li.dataset.offset)")
        .await;
    assert_eq!(shown, json!(["1"]));
    page.eval("{ const f = document.getElementById('tail-filter'); f.value = ''; f.dispatchEvent(new Event('input')); document.getElementById('tail-pause').click(); true }").await;
    assert_eq!(
        page.eval("document.getElementById('tail-pause').textContent")
            .await,
        json!("Resume")
    );
    publish(
        &b,
        "orders",
        &json!({"event": "delivered", "data": {"id": 41}}),
    )
    .await;
    // The broker has it (the table shows next = 5) while the paused tail does not.
    page.wait_for(
        "document.querySelector('#ns-table tr[data-ns=\"orders\"]').cells[2].textContent === '5'",
        PATIENCE,
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('#tail-list li[data-offset=\"4\"]') === null")
            .await,
        json!(true)
    );
    page.eval("document.getElementById('tail-pause').click(); true")
        .await;
    page.wait_for(
        "document.querySelector('#tail-list li[data-offset=\"4\"]') !== null",
        PATIENCE,
    )
    .await;

    // A double-clicked Follow (two closes of the same name pending at once) keeps the
    // live tail: the newest subscription gets none of the closed ones' frames.
    page.eval("{ document.getElementById('tail-from').value = 'earliest'; const f = document.getElementById('tail-form'); f.requestSubmit(); f.requestSubmit(); true }")
        .await;
    publish(
        &b,
        "orders",
        &json!({"event": "returned", "data": {"id": 41}}),
    )
    .await;
    page.wait_for(
        "document.querySelector('#tail-list li[data-offset=\"5\"]') !== null",
        PATIENCE,
    )
    .await;
    let status = page
        .eval("document.getElementById('tail-status').textContent")
        .await;
    assert!(
        !status.to_string().contains("Not following"),
        "the tail ended after a double-click on Follow: {status}"
    );

    // A steady stream: the event rate and its sparkline become live.
    let stream = tokio::spawn({
        let url = b.url();
        async move {
            let http = rewind_client::reqwest::Client::new();
            for i in 0..60u64 {
                let body = json!({"event": "request", "data": {"path": "/v1/users", "status": 200, "n": i}});
                let _ = http
                    .post(format!("{url}/v1/namespaces/logs.api/events"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                // An uneven rate, 0 to 150 ms apart (about 4.5 s in all).
                tokio::time::sleep(Duration::from_millis((i % 20) * 8)).await;
            }
        }
    });
    page.wait_for(
        "parseFloat(document.querySelector('#ns-table tr[data-ns=\"logs.api\"] td.rate').textContent) > 0",
        PATIENCE,
    )
    .await;
    page.wait_for(
        "document.querySelector('#ns-table tr[data-ns=\"logs.api\"] polyline').getAttribute('points').split(' ').length >= 3",
        PATIENCE,
    )
    .await;
    stream.await.expect("publisher");
    publish(
        &b,
        "orders",
        &json!({"event": "reviewed", "data": {"id": 41, "stars": 5, "text": "quick"}}),
    )
    .await;
    page.wait_for(
        "document.querySelector('#tail-list li[data-offset=\"5\"]') !== null",
        PATIENCE,
    )
    .await;

    let shot = artifact("laptop.png");
    page.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);
    if let Some(path) = std::env::var_os("REWIND_DASHBOARD_PNG") {
        std::fs::copy(&shot, path).expect("copy the screenshot");
    }

    // A phone: the page itself never scrolls sideways (the table scrolls in its box).
    page.set_viewport(390, 844, true).await;
    page.wait_for(
        "document.documentElement.scrollWidth <= window.innerWidth",
        PATIENCE,
    )
    .await;
    page.screenshot(&artifact("phone.png")).await;
}

#[tokio::test]
async fn the_dashboard_shows_long_polling_and_names_that_are_not_html() {
    let b = Broker::start(&[]);
    publish(
        &b,
        "x",
        &json!({"event": "<img src=x onerror=alert(1)>", "data": "<b>not bold</b>"}),
    )
    .await;
    let browser = Browser::launch().await;
    let page = browser
        .page(&format!("{}/?ns=x&from=0&transport=longpoll", b.url()))
        .await;
    page.wait_for(
        "document.getElementById('conn-transport').textContent === 'longpoll'",
        PATIENCE,
    )
    .await;
    page.wait_for(
        "document.querySelector('#tail-list li[data-offset=\"0\"]') !== null",
        PATIENCE,
    )
    .await;
    let shown = page
        .eval(r#"[document.querySelector('#tail-list .name').textContent, document.querySelector('#tail-list pre').textContent, document.querySelectorAll('img, b').length]"#)
        .await;
    assert_eq!(
        shown,
        json!(["<img src=x onerror=alert(1)>", "\"<b>not bold</b>\"", 0])
    );
    // The tail of a namespace deleted meanwhile says so.
    let r = b
        .request(rewind_tests::Method::DELETE, "/v1/namespaces/x", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    page.wait_for(
        "document.getElementById('tail-status').textContent.includes('deleted')",
        PATIENCE,
    )
    .await;
}
