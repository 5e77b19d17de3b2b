//! The browser's files, embedded in the binary (no file is read at run time): the
//! dashboard at `GET /` (`broker/assets/dashboard/`) and the JavaScript client at
//! `GET /rewind.js` with its declarations at `GET /rewind.d.ts` (`client/js/`). See
//! `docs/browser.md`.
//!
//! Every answer carries `Cache-Control: no-cache` and an `ETag` (the CRC-32 of the
//! embedded bytes, so it changes with the binary's files): a browser asks again each time
//! and gets `304 Not Modified` for an `If-None-Match` that names it. The client's files
//! carry `Access-Control-Allow-Origin: *`: a module script is fetched in CORS mode, so a
//! page on another origin can `import` it only with that header.

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use hyper::{StatusCode, Uri};
use rewind_protocol::ErrorCode;

use super::response::{self, ApiError};

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// Served to any origin (the client's files).
    cross_origin: bool,
}

const INDEX: Asset = Asset {
    body: include_bytes!("../../assets/dashboard/index.html"),
    content_type: "text/html; charset=utf-8",
    cross_origin: false,
};

const CLIENT: Asset = Asset {
    body: include_bytes!("../../../client/js/rewind.js"),
    content_type: "text/javascript; charset=utf-8",
    cross_origin: true,
};

const DECLARATIONS: Asset = Asset {
    body: include_bytes!("../../../client/js/rewind.d.ts"),
    content_type: "application/typescript; charset=utf-8",
    cross_origin: true,
};

/// The dashboard's files under `/dashboard/`, by name.
const DASHBOARD: &[(&str, Asset)] = &[
    (
        "dashboard.js",
        Asset {
            body: include_bytes!("../../assets/dashboard/dashboard.js"),
            content_type: "text/javascript; charset=utf-8",
            cross_origin: false,
        },
    ),
    (
        "dashboard.css",
        Asset {
            body: include_bytes!("../../assets/dashboard/dashboard.css"),
            content_type: "text/css; charset=utf-8",
            cross_origin: false,
        },
    ),
];

/// `GET /`: the dashboard page.
pub(super) async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /rewind.js`: the JavaScript client, an ES module.
pub(super) async fn client(headers: HeaderMap) -> Response {
    serve(&CLIENT, &headers)
}

/// `GET /rewind.d.ts`: its TypeScript declarations.
pub(super) async fn declarations(headers: HeaderMap) -> Response {
    serve(&DECLARATIONS, &headers)
}

/// `GET /dashboard/{file}`: a file of the dashboard, or `404 not_found`.
pub(super) async fn dashboard(uri: Uri, headers: HeaderMap) -> Response {
    let file = uri.path().trim_start_matches("/dashboard/");
    match DASHBOARD.iter().find(|(name, _)| *name == file) {
        Some((_, asset)) => serve(asset, &headers),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no dashboard file {file}"),
        )
        .into_response(),
    }
}

/// The entity tag of `body`: its CRC-32, quoted (RFC 9110 §8.8.3).
fn etag(body: &[u8]) -> String {
    format!("\"{:08x}\"", crc32fast::hash(body))
}

/// True when `If-None-Match` names `tag` (or is `*`), as RFC 9110 §13.1.2 compares: weakly.
fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.trim_start_matches("W/") == tag)
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let tag = etag(asset.body);
    let mut res = if not_modified(headers, &tag) {
        response::empty(StatusCode::NOT_MODIFIED)
    } else {
        response::with_body(StatusCode::OK, asset.content_type, asset.body)
    };
    let h = res.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(ETAG, v);
    }
    if asset.cross_origin {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    res.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_in_lists() {
        let tag = etag(b"abc");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            not_modified(&h, &tag)
        };
        assert!(with(&tag));
        assert!(with(&format!("\"x\", W/{tag}")));
        assert!(with("*"));
        assert!(!with("\"00000000\""));
        assert!(!not_modified(&HeaderMap::new(), &tag));
        assert_ne!(etag(b"abc"), etag(b"abd"));
    }
}
