//! The browser's files served by the broker: the dashboard at `/` and `/dashboard/{file}`,
//! the JavaScript client at `/rewind.js` and `/rewind.d.ts` — content types, `HEAD`,
//! `Access-Control-Allow-Origin` on the client's files, `Cache-Control`, `ETag` and `304`.

use rewind_tests::{Broker, Method, StatusCode};

const CLIENT: &str = include_str!("../../client/js/rewind.js");
const DECLARATIONS: &str = include_str!("../../client/js/rewind.d.ts");
const INDEX: &str = include_str!("../../broker/assets/dashboard/index.html");

#[tokio::test]
async fn each_file_with_its_type_caching_headers_and_cors_where_imported() {
    let b = Broker::start(&[]);
    for (path, ctype, body, cors) in [
        ("/", "text/html; charset=utf-8", Some(INDEX), false),
        (
            "/rewind.js",
            "text/javascript; charset=utf-8",
            Some(CLIENT),
            true,
        ),
        (
            "/rewind.d.ts",
            "application/typescript; charset=utf-8",
            Some(DECLARATIONS),
            true,
        ),
        (
            "/dashboard/dashboard.js",
            "text/javascript; charset=utf-8",
            None,
            false,
        ),
        (
            "/dashboard/dashboard.css",
            "text/css; charset=utf-8",
            None,
            false,
        ),
    ] {
        let r = b
            .request(
                Method::GET,
                path,
                &[("origin", "http://elsewhere.example")],
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.headers["content-type"], ctype, "{path}");
        assert_eq!(r.headers["cache-control"], "no-cache", "{path}");
        if let Some(body) = body {
            assert_eq!(r.body, body.as_bytes(), "{path}");
        }
        assert!(!r.body.is_empty(), "{path}");
        if cors {
            assert_eq!(r.headers["access-control-allow-origin"], "*", "{path}");
        }
        let etag = r.headers["etag"].to_str().expect("etag").to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() == 10,
            "{etag}"
        );

        // HEAD: the same status and headers, no body.
        let h = b.request(Method::HEAD, path, &[], "").await;
        assert_eq!(h.status, StatusCode::OK, "{path}");
        assert!(h.body.is_empty(), "{path}");
        assert_eq!(h.headers["etag"], etag.as_str(), "{path}");
        assert_eq!(
            h.headers["content-length"],
            r.body.len().to_string().as_str(),
            "{path}"
        );

        // A revalidation with the tag is 304 with no body; another tag gets the file.
        let n = b
            .request(Method::GET, path, &[("if-none-match", &etag)], "")
            .await;
        assert_eq!(n.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(n.body.is_empty(), "{path}");
        assert_eq!(n.headers["etag"], etag.as_str(), "{path}");
        let other = b
            .request(Method::GET, path, &[("if-none-match", "\"00000000\"")], "")
            .await;
        assert_eq!(other.status, StatusCode::OK, "{path}");
    }
    // The page loads its script and style from where the broker serves them.
    assert!(INDEX.contains(r#"src="/dashboard/dashboard.js""#));
    assert!(INDEX.contains(r#"href="/dashboard/dashboard.css""#));
}

#[tokio::test]
async fn unknown_files_and_other_methods_are_json_errors() {
    let b = Broker::start(&[]);
    for path in [
        "/dashboard/nope.js",
        "/dashboard/../rewind.js.map",
        "/rewind.mjs",
    ] {
        let r = b.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.json()["error"]["code"], "not_found", "{path}");
    }
    for path in ["/", "/rewind.js", "/rewind.d.ts", "/dashboard/dashboard.js"] {
        let r = b.request(Method::POST, path, &[], "x").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(r.headers["allow"], "GET, HEAD", "{path}");
        assert_eq!(r.json()["error"]["code"], "method_not_allowed", "{path}");
    }
}
