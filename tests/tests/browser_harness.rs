//! The browser harness itself: Chromium starts, evaluates JavaScript (promises awaited),
//! loads a page from a test's static site, reports the page's console and exceptions, and
//! takes a screenshot.

use std::time::Duration;

use rewind_tests::browser::{Browser, StaticSite};
use serde_json::json;

#[tokio::test]
async fn chromium_evaluates_and_loads_a_page() {
    let browser = Browser::launch().await;
    assert!(browser.version().await.contains("Chrome"));
    let blank = browser.blank_page().await;
    assert_eq!(blank.eval("1+1").await, json!(2));
    assert_eq!(
        blank
            .call_fn("async () => { await new Promise(r => setTimeout(r, 1)); return [1, 'a']; }")
            .await,
        json!([1, "a"])
    );
    let thrown = blank.try_eval("Promise.reject(new Error('no way'))").await;
    assert!(
        thrown.as_ref().is_err_and(|e| e.contains("no way")),
        "{thrown:?}"
    );

    let site = StaticSite::start().await;
    site.html(
        "/page.html",
        "<!doctype html><title>t</title><p id=p>hello</p>\
         <script type=module>console.log('loaded', 7); window.ready = 1;</script>",
    );
    let page = browser.page(&site.url("/page.html")).await;
    assert_eq!(
        page.eval("document.getElementById('p').textContent").await,
        json!("hello")
    );
    page.wait_for("window.ready === 1", Duration::from_secs(10))
        .await;
    assert!(
        page.console().iter().any(|l| l == "console.log: loaded 7"),
        "{:?}",
        page.console()
    );
    page.eval("setTimeout(() => { throw new Error('boom') }, 0), 0")
        .await;
    let line = page.wait_for_console("boom", Duration::from_secs(10)).await;
    assert!(line.starts_with("uncaught: Error: boom"), "{line}");

    let dir = tempfile::tempdir().expect("temp dir");
    let shot = dir.path().join("shots/shot.png");
    page.screenshot(&shot).await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}
