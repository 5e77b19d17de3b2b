//! Tokens (issue 12, item 1; `docs/security.md`, "Tokens"), against the real binary with
//! tokens minted here with `jsonwebtoken`: HS256 with a secret file, RS256 with the
//! test-only PEM keys under `tests/keys/`, ES256 with a JWKS of a key made here (rcgen).
//! Every way a token can be wrong, on every transport; what a good one allows and
//! forbids; refresh and expiry on a live WebSocket; the end of an SSE stream at expiry;
//! the listen-address rule; the CLI's `--token` and `REWIND_TOKEN`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rewind_protocol::frame::{ClientFrame, ServerFrame, ServerMessage};
use rewind_protocol::{Payload, Position};
use rewind_tests::ws::{Client, Received};
use rewind_tests::{rewind_bin, Broker, Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "a-test-secret-that-is-longer-than-32-bytes";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Claims good for an hour with `extra` laid over them.
fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "tester", "exp": now() + 3600});
    for (k, v) in extra.as_object().expect("an object").clone() {
        c[k] = v;
    }
    c
}

fn hs256(secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// An HS256 token signed with [`SECRET`] whose JOSE header is `header`, as given.
fn with_header(header: &Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let message = format!("{}.{}", part(header), part(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{signature}")
}

/// A token with `alg: none` and no signature (RFC 7519 §6.1).
fn unsigned(claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        part(&json!({"alg": "none", "typ": "JWT"})),
        part(claims)
    )
}

/// A directory holding the secret file; the broker's flags for it.
fn secret_dir() -> (TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write secret");
    let path = path.to_str().expect("utf-8 path").to_owned();
    (dir, path)
}

/// A broker that takes HS256 tokens signed with [`SECRET`], started with `extra` flags;
/// the directory holding the secret file lives as long as the returned `TempDir`.
fn hs256_broker(extra: &[&str]) -> (TempDir, Broker) {
    let (dir, secret) = secret_dir();
    let mut args = vec!["--auth-secret-file", secret.as_str()];
    args.extend_from_slice(extra);
    let broker = Broker::start(&args);
    (dir, broker)
}

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("keys")
}

async fn call(
    broker: &Broker,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> rewind_tests::Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let body = if method == Method::POST {
        r#"{"event":"e","data":1}"#
    } else if method == Method::PUT {
        r#"{"retention":{"max_events":10}}"#
    } else {
        ""
    };
    broker
        .request(method, path, &headers, body.to_owned())
        .await
}

fn assert_refused(r: &rewind_tests::Response, status: StatusCode, code: &str, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.error_code(), code, "{what}");
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        let challenge = r
            .headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or(""));
        assert!(
            challenge.is_some_and(|c| c.starts_with("Bearer")),
            "{what}: {challenge:?}"
        );
    }
}

#[tokio::test]
async fn hs256_tokens_gate_every_http_route() {
    let (_dir, broker) = hs256_broker(&["--auth-leeway-secs", "0"]);
    let admin = hs256(
        SECRET,
        &claims(json!({"admin": true, "publish": ["*"], "subscribe": ["*"]})),
    );
    let logs = hs256(
        SECRET,
        &claims(json!({"publish": ["logs.*"], "subscribe": ["logs.*", "metrics"]})),
    );

    // Open without a token: health, readiness, the browser files.
    for path in ["/healthz", "/readyz", "/rewind.js"] {
        assert_eq!(broker.get(path).await.status, StatusCode::OK, "{path}");
    }

    // Every other route needs a token that is taken.
    let bad_tokens = [
        ("no token", None),
        (
            "wrong secret",
            Some(hs256(
                "another-secret-that-is-also-32-bytes-long",
                &claims(json!({"publish": ["*"]})),
            )),
        ),
        (
            "alg none",
            Some(unsigned(&claims(json!({"publish": ["*"], "admin": true})))),
        ),
        (
            "expired",
            Some(hs256(
                SECRET,
                &claims(json!({"exp": now() - 60, "publish": ["*"]})),
            )),
        ),
        (
            "no exp",
            Some(hs256(SECRET, &json!({"sub": "x", "publish": ["*"]}))),
        ),
        (
            "not yet valid",
            Some(hs256(
                SECRET,
                &claims(json!({"nbf": now() + 600, "publish": ["*"]})),
            )),
        ),
        ("not a JWT", Some("abc".to_owned())),
        (
            "a pattern rewind does not read",
            Some(hs256(SECRET, &claims(json!({"publish": ["lo*gs"]})))),
        ),
        (
            "a pattern with a space",
            Some(hs256(SECRET, &claims(json!({"subscribe": ["a b"]})))),
        ),
        (
            "a pattern with a trailing space",
            Some(hs256(SECRET, &claims(json!({"subscribe": ["orders "]})))),
        ),
        (
            "a prefix pattern whose name breaks the rules",
            Some(hs256(SECRET, &claims(json!({"publish": ["a..b.*"]})))),
        ),
        (
            "a critical extension in the header",
            Some(with_header(
                &json!({"alg": "HS256", "typ": "JWT", "crit": ["foo"], "foo": 1}),
                &claims(json!({"publish": ["*"], "admin": true})),
            )),
        ),
        (
            "publish not a list",
            Some(hs256(SECRET, &claims(json!({"publish": "logs.a"})))),
        ),
    ];
    for (what, token) in &bad_tokens {
        for (method, path) in [
            (Method::POST, "/v1/namespaces/logs.a/events"),
            (Method::GET, "/v1/namespaces/logs.a/events"),
            (Method::GET, "/v1/namespaces/logs.a/sse"),
            (Method::GET, "/v1/namespaces"),
            (Method::GET, "/v1/namespaces/logs.a"),
            (Method::PUT, "/v1/namespaces/logs.a"),
            (Method::DELETE, "/v1/namespaces/logs.a"),
            (Method::GET, "/metrics"),
            (Method::GET, "/v1/ws"),
        ] {
            let r = call(&broker, method.clone(), path, token.as_deref()).await;
            assert_refused(
                &r,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &format!("{what}: {method} {path}"),
            );
        }
    }
    // Nothing a refused request touched was created.
    let list = call(&broker, Method::GET, "/v1/namespaces", Some(&admin))
        .await
        .json();
    assert_eq!(list["namespaces"], json!([]), "{list}");

    // A prefix pattern: `logs.*` takes `logs.a` and `logs.a.b`, not `logs` or `logsx`.
    for ns in ["logs.a", "logs.a.b"] {
        let r = call(
            &broker,
            Method::POST,
            &format!("/v1/namespaces/{ns}/events"),
            Some(&logs),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{ns}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    for ns in ["logs", "logsx", "metrics", "other"] {
        let r = call(
            &broker,
            Method::POST,
            &format!("/v1/namespaces/{ns}/events"),
            Some(&logs),
        )
        .await;
        assert_refused(&r, StatusCode::FORBIDDEN, "forbidden", ns);
    }
    // The token in the query does what the header does (browsers' way).
    let r = broker
        .request(
            Method::POST,
            &format!("/v1/namespaces/logs.q/events?token={logs}"),
            &[("content-type", "application/json")],
            r#"{"event":"e"}"#.to_owned(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = broker
        .get(&format!(
            "/v1/namespaces/logs.a/events?from=earliest&token={logs}"
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["events"].as_array().map(Vec::len), Some(1));
    let r = broker
        .get(&format!("/v1/namespaces/other/events?token={logs}"))
        .await;
    assert_refused(&r, StatusCode::FORBIDDEN, "forbidden", "read of other");
    // Another scheme in Authorization is refused, not ignored in favour of ?token=.
    let r = broker
        .request(
            Method::GET,
            &format!("/v1/namespaces/logs.a/events?token={logs}"),
            &[("authorization", "Basic dXNlcjpwYXNz")],
            "",
        )
        .await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthorized", "Basic");

    // None of the forbidden publishes created anything; the list shows what a token sees.
    let all = call(&broker, Method::GET, "/v1/namespaces", Some(&admin))
        .await
        .json();
    let names: Vec<&str> = all["namespaces"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{all}");
    for ns in ["logs", "logsx", "metrics", "other"] {
        assert!(!names.contains(&ns), "{ns} was created: {all}");
    }
    broker.publish_as(&admin, "private").await;
    let seen = call(&broker, Method::GET, "/v1/namespaces", Some(&logs))
        .await
        .json();
    let seen: Vec<&str> = seen["namespaces"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert!(
        seen.contains(&"logs.a") && !seen.contains(&"private"),
        "{seen:?}"
    );
    let r = call(&broker, Method::GET, "/v1/namespaces/private", Some(&logs)).await;
    assert_refused(&r, StatusCode::FORBIDDEN, "forbidden", "info of private");

    // Administration and metrics need admin: true.
    for (method, path) in [
        (Method::PUT, "/v1/namespaces/logs.a"),
        (Method::DELETE, "/v1/namespaces/logs.a"),
        (Method::GET, "/metrics"),
    ] {
        let r = call(&broker, method.clone(), path, Some(&logs)).await;
        assert_refused(
            &r,
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("{method} {path}"),
        );
    }
    let r = call(&broker, Method::PUT, "/v1/namespaces/logs.a", Some(&admin)).await;
    assert!(
        r.status.is_success(),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let metrics = call(&broker, Method::GET, "/metrics", Some(&admin)).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("unauthorized") && text.contains("forbidden"),
        "refusals are counted by code"
    );
    assert!(
        !text.contains(&logs) && !text.contains(&admin),
        "a token in /metrics"
    );
    let r = call(
        &broker,
        Method::DELETE,
        "/v1/namespaces/logs.a",
        Some(&admin),
    )
    .await;
    assert!(
        r.status.is_success(),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

trait PublishAs {
    async fn publish_as(&self, token: &str, ns: &str);
}

impl PublishAs for Broker {
    async fn publish_as(&self, token: &str, ns: &str) {
        let r = call(
            self,
            Method::POST,
            &format!("/v1/namespaces/{ns}/events"),
            Some(token),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let (_dir, broker) = hs256_broker(&[
        "--auth-audience",
        "rewind",
        "--auth-issuer",
        "https://issuer.example",
    ]);
    let good = json!({"aud": "rewind", "iss": "https://issuer.example", "publish": ["*"]});
    let r = call(
        &broker,
        Method::POST,
        "/v1/namespaces/a/events",
        Some(&hs256(SECRET, &claims(good.clone()))),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let several =
        json!({"aud": ["other", "rewind"], "iss": "https://issuer.example", "publish": ["*"]});
    let r = call(
        &broker,
        Method::POST,
        "/v1/namespaces/a/events",
        Some(&hs256(SECRET, &claims(several))),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for (what, c) in [
        (
            "wrong aud",
            json!({"aud": "other", "iss": "https://issuer.example", "publish": ["*"]}),
        ),
        (
            "no aud",
            json!({"iss": "https://issuer.example", "publish": ["*"]}),
        ),
        (
            "wrong iss",
            json!({"aud": "rewind", "iss": "https://evil.example", "publish": ["*"]}),
        ),
        ("no iss", json!({"aud": "rewind", "publish": ["*"]})),
    ] {
        let r = call(
            &broker,
            Method::POST,
            "/v1/namespaces/a/events",
            Some(&hs256(SECRET, &claims(c))),
        )
        .await;
        assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthorized", what);
    }
}

#[tokio::test]
async fn without_an_audience_configured_a_token_naming_one_is_refused() {
    let (_dir, broker) = hs256_broker(&[]);
    let r = call(
        &broker,
        Method::POST,
        "/v1/namespaces/a/events",
        Some(&hs256(SECRET, &claims(json!({"publish": ["*"]})))),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for (what, aud) in [
        ("one audience", json!("another-service")),
        ("several", json!(["another-service", "rewind"])),
        ("a number", json!(5)),
    ] {
        let r = call(
            &broker,
            Method::POST,
            "/v1/namespaces/a/events",
            Some(&hs256(
                SECRET,
                &claims(json!({"aud": aud, "publish": ["*"]})),
            )),
        )
        .await;
        assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthorized", what);
    }
}

#[tokio::test]
async fn nbf_and_iat_of_the_wrong_type_are_refused() {
    let (_dir, broker) = hs256_broker(&[]);
    let later = now() + 3600;
    let good = json!({"nbf": now() - 10, "iat": now() - 10, "publish": ["*"]});
    let r = call(
        &broker,
        Method::POST,
        "/v1/namespaces/a/events",
        Some(&hs256(SECRET, &claims(good))),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for (what, c) in [
        // jsonwebtoken 9 skips the nbf check for a string (CVE-2026-25537).
        (
            "nbf a string, in the future",
            json!({"nbf": later.to_string(), "publish": ["*"]}),
        ),
        ("nbf in the future", json!({"nbf": later, "publish": ["*"]})),
        ("nbf an object", json!({"nbf": {"t": 1}, "publish": ["*"]})),
        (
            "iat a string",
            json!({"iat": "yesterday", "publish": ["*"]}),
        ),
        ("iat negative", json!({"iat": -1, "publish": ["*"]})),
    ] {
        let r = call(
            &broker,
            Method::POST,
            "/v1/namespaces/a/events",
            Some(&hs256(SECRET, &claims(c))),
        )
        .await;
        assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthorized", what);
    }
}

#[tokio::test]
async fn rs256_takes_its_keys_tokens_and_refuses_the_key_confusion_attack() {
    let public = keys_dir().join("rs256-test-public.pem");
    let private = std::fs::read(keys_dir().join("rs256-test-private.pem")).expect("private key");
    let broker = Broker::start(&[
        "--auth-alg",
        "RS256",
        "--auth-public-keys",
        public.to_str().expect("path"),
    ]);
    let c = claims(json!({"publish": ["*"], "subscribe": ["*"]}));
    let good = encode(
        &Header::new(Algorithm::RS256),
        &c,
        &EncodingKey::from_rsa_pem(&private).expect("key"),
    )
    .expect("sign");
    let r = call(
        &broker,
        Method::POST,
        "/v1/namespaces/a/events",
        Some(&good),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // HS256 with the public key's PEM as the HMAC secret: a verifier that let the token
    // choose the algorithm would take it.
    let pem = std::fs::read(&public).expect("public key");
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(&pem),
    )
    .expect("sign");
    let r = call(
        &broker,
        Method::POST,
        "/v1/namespaces/a/events",
        Some(&forged),
    )
    .await;
    assert_refused(
        &r,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "HS256 with the public key",
    );
    let r = call(
        &broker,
        Method::POST,
        "/v1/namespaces/a/events",
        Some(&unsigned(&c)),
    )
    .await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthorized", "alg none");
    // RS512 with the right key is still not the configured algorithm.
    let other_alg = encode(
        &Header::new(Algorithm::RS512),
        &c,
        &EncodingKey::from_rsa_pem(&private).expect("key"),
    )
    .expect("sign");
    let r = call(
        &broker,
        Method::POST,
        "/v1/namespaces/a/events",
        Some(&other_alg),
    )
    .await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthorized", "RS512");
}

#[tokio::test]
async fn es256_keys_from_a_jwks_are_chosen_by_kid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut jwks = Vec::new();
    let mut signers = Vec::new();
    for kid in ["one", "two"] {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let raw = pair.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed P-256 point");
        jwks.push(json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        }));
        signers.push((
            kid,
            EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("key"),
        ));
    }
    let file = dir.path().join("keys.json");
    std::fs::write(&file, json!({"keys": jwks}).to_string()).expect("write jwks");
    let broker = Broker::start(&[
        "--auth-alg",
        "ES256",
        "--auth-public-keys",
        file.to_str().expect("path"),
    ]);
    let c = claims(json!({"publish": ["*"]}));
    for (kid, key) in &signers {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some((*kid).to_owned());
        let token = encode(&header, &c, key).expect("sign");
        let r = call(
            &broker,
            Method::POST,
            "/v1/namespaces/a/events",
            Some(&token),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "kid {kid}: {}",
            String::from_utf8_lossy(&r.body)
        );
        // Without a kid every key is tried.
        let token = encode(&Header::new(Algorithm::ES256), &c, key).expect("sign");
        let r = call(
            &broker,
            Method::POST,
            "/v1/namespaces/a/events",
            Some(&token),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "no kid");
    }
    // Signed by one, claiming the other's kid; and a kid the broker does not have.
    for (kid, key) in [("two", &signers[0].1), ("three", &signers[0].1)] {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let token = encode(&header, &c, key).expect("sign");
        let r = call(
            &broker,
            Method::POST,
            "/v1/namespaces/a/events",
            Some(&token),
        )
        .await;
        assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthorized", kid);
    }
}

/// A WebSocket to `broker` with `token` in `Authorization` (or in `?token=`).
async fn ws(addr: SocketAddr, token: &str, in_query: bool) -> Result<Client, StatusCode> {
    let url = if in_query {
        format!("ws://{addr}/v1/ws?token={token}")
    } else {
        format!("ws://{addr}/v1/ws")
    };
    let mut req = url.into_client_request().expect("request");
    if !in_query {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((socket, _)) => Ok(Client {
            socket,
            msgpack: false,
        }),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            Err(StatusCode::from_u16(res.status().as_u16()).expect("status"))
        }
        Err(e) => panic!("connect: {e}"),
    }
}

fn open(ns: &str) -> ClientFrame {
    ClientFrame::Open {
        ns: ns.into(),
        from: Position::Earliest,
        epoch: None,
        credit: 100,
    }
}

fn publish(id: u64, ns: &str) -> ClientFrame {
    ClientFrame::Publish {
        id,
        ns: ns.into(),
        event: "e".into(),
        data: Some(Payload::Json(id.to_string())),
        key: None,
        idempotency_key: None,
    }
}

/// The next frame that is not a ping.
async fn frame(c: &mut Client) -> ServerMessage {
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Ping) => {}
            m => return m,
        }
    }
}

#[tokio::test]
async fn a_websocket_gets_forbidden_per_namespace_refreshes_in_place_and_closes_at_expiry() {
    let (_dir, broker) =
        hs256_broker(&["--auth-leeway-secs", "0", "--auth-expiry-warning-secs", "2"]);
    let admin = hs256(
        SECRET,
        &claims(json!({"admin": true, "publish": ["*"], "subscribe": ["*"]})),
    );
    for ns in ["a", "b", "c"] {
        broker.publish_as(&admin, ns).await;
    }

    // Refused before the upgrade: no token, a bad one.
    for token in ["", "nope", &unsigned(&claims(json!({"subscribe": ["*"]})))] {
        assert_eq!(
            ws(broker.addr, token, true).await.err(),
            Some(StatusCode::UNAUTHORIZED),
            "{token:?}"
        );
    }

    let first = hs256(
        SECRET,
        &claims(json!({"subscribe": ["a", "b"], "publish": ["a"]})),
    );
    let mut c = ws(broker.addr, &first, false)
        .await
        .expect("upgrade with the header");
    c.send(&open("a")).await;
    assert!(
        matches!(frame(&mut c).await, ServerMessage::Frame(ServerFrame::Opened { ns, .. }) if ns == "a")
    );
    assert!(matches!(frame(&mut c).await, ServerMessage::Event(e) if e.ns == "a"));
    c.send(&open("b")).await;
    assert!(
        matches!(frame(&mut c).await, ServerMessage::Frame(ServerFrame::Opened { ns, .. }) if ns == "b")
    );
    assert!(matches!(frame(&mut c).await, ServerMessage::Event(e) if e.ns == "b"));
    // A namespace the token does not allow: `forbidden` for it, the others keep flowing.
    c.send(&open("c")).await;
    match frame(&mut c).await {
        ServerMessage::Frame(ServerFrame::Error { code, ns, .. }) => {
            assert_eq!((code.as_str(), ns.as_deref()), ("forbidden", Some("c")));
        }
        other => panic!("expected forbidden, got {other:?}"),
    }
    c.send(&publish(7, "b")).await;
    match frame(&mut c).await {
        ServerMessage::Frame(ServerFrame::Error { code, id, .. }) => {
            assert_eq!((code.as_str(), id), ("forbidden", Some(7)))
        }
        other => panic!("expected forbidden, got {other:?}"),
    }
    c.send(&publish(8, "a")).await;
    let mut published = false;
    let mut flowed = false;
    while !(published && flowed) {
        match frame(&mut c).await {
            ServerMessage::Frame(ServerFrame::Published { id: 8, ns, .. }) => published = ns == "a",
            ServerMessage::Event(e) if e.ns == "a" && e.event.offset == 1 => flowed = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    // b got nothing from the forbidden publish.
    let r = call(&broker, Method::GET, "/v1/namespaces/b", Some(&admin))
        .await
        .json();
    assert_eq!(r["next"], 1, "{r}");

    // A bad refresh is refused and the connection keeps its token; an empty token is
    // `unauthorized` too, as an empty `?token=` is on HTTP.
    for bad in ["nope", ""] {
        c.send(&ClientFrame::Auth { token: bad.into() }).await;
        match frame(&mut c).await {
            ServerMessage::Frame(ServerFrame::Error { code, .. }) => {
                assert_eq!(code, "unauthorized", "{bad:?}")
            }
            other => panic!("{bad:?}: expected unauthorized, got {other:?}"),
        }
    }
    let someone_else = hs256(
        SECRET,
        &claims(json!({"sub": "intruder", "subscribe": ["*"]})),
    );
    c.send(&ClientFrame::Auth {
        token: someone_else,
    })
    .await;
    assert!(
        matches!(frame(&mut c).await, ServerMessage::Frame(ServerFrame::Error { code, .. }) if code == "unauthorized")
    );

    // A refresh that allows only a, and expires in 3 s: b is closed `forbidden`, a stays,
    // the warning comes (3 s is within the 2 s warning after about 1 s), then 4001.
    let short = hs256(
        SECRET,
        &claims(json!({"exp": now() + 3, "subscribe": ["a"], "publish": ["a"]})),
    );
    c.send(&ClientFrame::Auth { token: short }).await;
    match frame(&mut c).await {
        ServerMessage::Frame(ServerFrame::AuthOk { in_ms }) => assert!(in_ms <= 3000, "{in_ms}"),
        other => panic!("expected auth_ok, got {other:?}"),
    }
    match frame(&mut c).await {
        ServerMessage::Frame(ServerFrame::Closed { ns, reason }) => {
            assert_eq!((ns.as_str(), reason.as_deref()), ("b", Some("forbidden")));
        }
        other => panic!("expected b closed, got {other:?}"),
    }
    broker.publish_as(&admin, "a").await;
    assert!(
        matches!(frame(&mut c).await, ServerMessage::Event(e) if e.ns == "a" && e.event.offset == 2)
    );
    match frame(&mut c).await {
        ServerMessage::Frame(ServerFrame::AuthExpiring { in_ms }) => {
            assert!(in_ms <= 2000, "{in_ms}")
        }
        other => panic!("expected auth_expiring, got {other:?}"),
    }
    assert_eq!(c.close_code().await, Some(4001));
}

#[tokio::test]
async fn a_refreshed_websocket_outlives_its_first_token() {
    let (_dir, broker) =
        hs256_broker(&["--auth-leeway-secs", "0", "--auth-expiry-warning-secs", "2"]);
    let token = |secs| {
        hs256(
            SECRET,
            &claims(json!({"exp": now() + secs, "publish": ["p"]})),
        )
    };
    let mut c = ws(broker.addr, &token(3), true)
        .await
        .expect("upgrade with ?token=");
    // Each warning is answered with a fresh token, as the JS client does.
    for _ in 0..2 {
        match frame(&mut c).await {
            ServerMessage::Frame(ServerFrame::AuthExpiring { .. }) => {}
            other => panic!("expected auth_expiring, got {other:?}"),
        }
        c.send(&ClientFrame::Auth { token: token(3) }).await;
        assert!(matches!(
            frame(&mut c).await,
            ServerMessage::Frame(ServerFrame::AuthOk { .. })
        ));
    }
    // Past the first token's expiry the connection still publishes.
    c.send(&publish(1, "p")).await;
    assert!(matches!(
        frame(&mut c).await,
        ServerMessage::Frame(ServerFrame::Published { id: 1, .. })
    ));
    drop(c);
}

#[tokio::test]
async fn a_refresh_inside_the_warning_window_is_not_warned_again() {
    let (_dir, broker) = hs256_broker(&[
        "--auth-leeway-secs",
        "0",
        "--auth-expiry-warning-secs",
        "30",
    ]);
    let token = |secs| {
        hs256(
            SECRET,
            &claims(json!({"exp": now() + secs, "publish": ["p"]})),
        )
    };
    let mut c = ws(broker.addr, &token(3), true).await.expect("upgrade");
    // Inside the 30 s window from the start: warned at once.
    assert!(matches!(
        frame(&mut c).await,
        ServerMessage::Frame(ServerFrame::AuthExpiring { .. })
    ));
    // Answered with another token that is also inside the window, as a client whose
    // issuer hands out short tokens would: `auth_ok`, and then no warning until the
    // close, where a warning at once would make the client refresh again, for ever.
    c.send(&ClientFrame::Auth { token: token(4) }).await;
    assert!(matches!(
        frame(&mut c).await,
        ServerMessage::Frame(ServerFrame::AuthOk { .. })
    ));
    let mut warnings = 0;
    let close = loop {
        match c.recv().await {
            Received::Message(ServerMessage::Frame(ServerFrame::AuthExpiring { .. })) => {
                warnings += 1;
                c.send(&ClientFrame::Auth { token: token(4) }).await;
                assert!(warnings < 50, "a refresh loop");
            }
            Received::Message(_) => {}
            Received::Closed(frame) => break frame.map(|f| u16::from(f.code)),
        }
    };
    assert_eq!((warnings, close), (0, Some(4001)));
}

#[tokio::test]
async fn auth_frames_share_the_publish_rate_bucket() {
    let (_dir, broker) = hs256_broker(&["--publish-rate", "2"]);
    let token = hs256(SECRET, &claims(json!({"publish": ["p"]})));
    let mut c = ws(broker.addr, &token, true).await.expect("upgrade");
    for _ in 0..6 {
        c.send(&ClientFrame::Auth {
            token: token.clone(),
        })
        .await;
    }
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..6 {
        match frame(&mut c).await {
            ServerMessage::Frame(ServerFrame::AuthOk { .. }) => ok += 1,
            ServerMessage::Frame(ServerFrame::Error { code, .. }) if code == "rate_limited" => {
                limited += 1
            }
            other => panic!("expected auth_ok or rate_limited, got {other:?}"),
        }
    }
    assert!(ok >= 1 && limited >= 1, "{ok} taken, {limited} limited");
    // The connection goes on.
    c.send(&ClientFrame::Ping).await;
    assert!(matches!(
        frame(&mut c).await,
        ServerMessage::Frame(ServerFrame::Pong)
    ));
}

#[tokio::test]
async fn a_long_poll_waits_no_longer_than_its_token_lives() {
    let (_dir, broker) = hs256_broker(&["--auth-leeway-secs", "0"]);
    let admin = hs256(SECRET, &claims(json!({"admin": true, "publish": ["*"]})));
    broker.publish_as(&admin, "lp").await;
    let exp = now() + 2;
    let token = hs256(SECRET, &claims(json!({"exp": exp, "subscribe": ["lp"]})));
    let bearer = format!("Bearer {token}");
    let addr = broker.addr;
    let poll = tokio::spawn(async move {
        rewind_tests::request(
            addr,
            Method::GET,
            "/v1/namespaces/lp/events?from=1&wait=30",
            &[("authorization", bearer.as_str())],
            Default::default(),
        )
        .await
        .expect("long-poll")
    });
    // Once the token has expired, an event: not the poll's to deliver.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.publish_as(&admin, "lp").await;
    let r = poll.await.expect("poll task");
    assert_eq!(r.status, StatusCode::OK);
    let page = r.json();
    assert_eq!(page["events"], json!([]), "{page}");
}

#[tokio::test]
async fn an_sse_stream_ends_when_its_token_expires() {
    let (_dir, broker) = hs256_broker(&["--auth-leeway-secs", "0"]);
    let admin = hs256(SECRET, &claims(json!({"admin": true, "publish": ["*"]})));
    broker.publish_as(&admin, "s").await;
    let token = hs256(
        SECRET,
        &claims(json!({"exp": now() + 2, "subscribe": ["s"]})),
    );
    let url = format!(
        "{}/v1/namespaces/s/sse?from=earliest&token={token}",
        broker.url()
    );
    let http = rewind_client::reqwest::Client::new();
    let mut res = http.get(url).send().await.expect("sse");
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = String::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = res.chunk().await.expect("chunk") {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(read.is_ok(), "the stream did not end at expiry: {body}");
    assert!(
        body.contains("event: rewind.opened") && body.contains("id: 0"),
        "{body}"
    );
    assert!(
        body.ends_with("event: rewind.closed\ndata: {\"reason\":\"token_expired\"}\n\n"),
        "{body}"
    );
}

/// `rewind serve` with `args` and `RUST_LOG=debug`, stderr to a file: the child and its
/// address, or its exit status and stderr when it refuses to start.
fn serve(
    listen: &str,
    args: &[&str],
    dir: &Path,
) -> Result<(Child, SocketAddr, PathBuf), (i32, String)> {
    serve_logged(listen, args, dir, "debug")
}

/// [`serve`] with `RUST_LOG=rust_log`.
fn serve_logged(
    listen: &str,
    args: &[&str],
    dir: &Path,
    rust_log: &str,
) -> Result<(Child, SocketAddr, PathBuf), (i32, String)> {
    let err = dir.join("stderr");
    let mut child = Command::new(rewind_bin())
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir.join("data"))
        .args(args)
        .env_remove("REWIND_CONFIG")
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start rewind");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    match line.trim().strip_prefix("rewind listening on http://") {
        Some(addr) => Ok((child, addr.parse().expect("address"), err)),
        None => {
            let status = child.wait().expect("exit");
            Err((
                status.code().unwrap_or(-1),
                std::fs::read_to_string(&err).unwrap_or_default(),
            ))
        }
    }
}

#[tokio::test]
async fn a_non_loopback_listen_address_needs_auth_or_insecure_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr) = serve("0.0.0.0:0", &[], dir.path()).expect_err("refused");
    assert_ne!(code, 0);
    assert!(
        stderr.contains("not loopback") && stderr.contains("--insecure-open"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a refused start created its data dir"
    );

    for args in [vec!["--insecure-open"], vec!["--insecure-open", "true"]] {
        let (mut child, addr, _) =
            serve("0.0.0.0:0", &args, dir.path()).expect("starts with --insecure-open");
        let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
        let r = rewind_tests::request(local, Method::GET, "/healthz", &[], Default::default())
            .await
            .expect("healthz");
        assert_eq!(r.status, StatusCode::OK);
        let _ = child.kill();
        let _ = child.wait();
    }

    let (_secret_dir, secret) = secret_dir();
    let (mut child, addr, _) = serve("0.0.0.0:0", &["--auth-secret-file", &secret], dir.path())
        .expect("starts with tokens");
    let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let r = rewind_tests::request(
        local,
        Method::GET,
        "/v1/namespaces",
        &[],
        Default::default(),
    )
    .await
    .expect("list");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn bad_key_configuration_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let short = dir.path().join("short");
    std::fs::write(&short, "too short").expect("write");
    let public = keys_dir().join("rs256-test-public.pem");
    let public = public.to_str().expect("path");
    let short = short.to_str().expect("path");
    for (args, says) in [
        (vec!["--auth-secret-file", short], "at least 32"),
        (
            vec!["--auth-secret-file", "/nonexistent/secret"],
            "/nonexistent/secret",
        ),
        (vec!["--auth-public-keys", public], "RS256 or ES256"),
        (
            vec!["--auth-alg", "ES256", "--auth-public-keys", public],
            "ES256",
        ),
        (
            vec!["--auth-alg", "RS256", "--auth-secret-file", short],
            "auth_public_keys",
        ),
        (vec!["--auth-alg", "none"], "HS256, RS256 or ES256"),
        // Token options without a key: the broker would start open.
        (
            vec!["--auth-audience", "rewind"],
            "auth_audience is set but no key",
        ),
        (
            vec!["--auth-issuer", "issuer"],
            "auth_issuer is set but no key",
        ),
        (vec!["--auth-alg", "RS256"], "auth_alg is set but no key"),
        (
            vec!["--auth-expiry-warning-secs", "5"],
            "auth_expiry_warning_secs is set but no key",
        ),
    ] {
        let (code, stderr) = serve("127.0.0.1:0", &args, dir.path())
            .err()
            .unwrap_or_else(|| panic!("{args:?} started"));
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn token_options_at_their_extremes_serve() {
    let (_dir, broker) = hs256_broker(&[
        "--auth-leeway-secs",
        "86400",
        "--auth-expiry-warning-secs",
        "18446744073709551615",
    ]);
    let token = hs256(SECRET, &claims(json!({"publish": ["*"]})));
    let r = call(
        &broker,
        Method::POST,
        "/v1/namespaces/a/events",
        Some(&token),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let mut c = ws(broker.addr, &token, true).await.expect("upgrade");
    // Every token is inside a warning window that long: warned at once.
    assert!(matches!(
        frame(&mut c).await,
        ServerMessage::Frame(ServerFrame::AuthExpiring { .. })
    ));
    c.send(&publish(1, "a")).await;
    assert!(matches!(
        frame(&mut c).await,
        ServerMessage::Frame(ServerFrame::Published { id: 1, .. })
    ));
}

#[tokio::test]
async fn tokens_never_reach_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_secret_dir, secret) = secret_dir();
    // At `trace`, where every library writes the most.
    let (mut child, addr, err) = serve_logged(
        "127.0.0.1:0",
        &["--auth-secret-file", &secret],
        dir.path(),
        "trace",
    )
    .expect("start");
    let token = hs256(
        SECRET,
        &claims(json!({"publish": ["*"], "subscribe": ["*"]})),
    );
    let path = format!("/v1/namespaces/n/events?token={token}");
    let r = rewind_tests::request(
        addr,
        Method::POST,
        &path,
        &[("content-type", "application/json")],
        r#"{"event":"e"}"#.into(),
    )
    .await
    .expect("publish");
    assert_eq!(r.status, StatusCode::CREATED);
    let bearer = format!("Bearer {token}");
    let r = rewind_tests::request(
        addr,
        Method::GET,
        "/v1/namespaces/n/events",
        &[("authorization", &bearer)],
        Default::default(),
    )
    .await
    .expect("read");
    assert_eq!(r.status, StatusCode::OK);
    let r = rewind_tests::request(
        addr,
        Method::GET,
        "/v1/namespaces/n/events?token=wrong.wrong.wrong",
        &[],
        Default::default(),
    )
    .await
    .expect("read");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A good token refused `403` is logged with its `sub` too.
    let reader = hs256(
        SECRET,
        &claims(json!({"sub": "reader", "subscribe": ["*"]})),
    );
    let r = rewind_tests::request(
        addr,
        Method::POST,
        &format!("/v1/namespaces/refused/events?token={reader}"),
        &[("content-type", "application/json")],
        r#"{"event":"e"}"#.into(),
    )
    .await
    .expect("publish");
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let mut c = ws(addr, &token, true).await.expect("upgrade");
    c.send(&ClientFrame::Auth {
        token: token.clone(),
    })
    .await;
    assert!(matches!(
        frame(&mut c).await,
        ServerMessage::Frame(ServerFrame::AuthOk { .. })
    ));
    c.socket.close(None).await.expect("close");
    while !matches!(c.recv().await, Received::Closed(_)) {}
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(err).expect("stderr");
    assert!(
        log.contains("/v1/namespaces/n/events"),
        "the requests were logged: {log}"
    );
    assert!(
        !log.contains(&token) && !log.contains(&reader) && !log.contains("wrong.wrong"),
        "a token in the log: {log}"
    );
    // The token's `sub` names who made each request and session.
    let lines = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains("sub=\"tester\""))
            .count()
    };
    assert!(lines("/v1/namespaces/n/events") >= 2, "{log}");
    assert_eq!(lines("websocket session"), 1, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("/v1/namespaces/refused/events")
                && l.contains("403")
                && l.contains("sub=\"reader\"")),
        "the 403 line names its sub: {log}"
    );
}

#[tokio::test]
async fn a_refused_token_is_never_echoed() {
    let (_dir, broker) = hs256_broker(&[]);
    let token = hs256(SECRET, &claims(json!({"subscribe": ["*"]})));
    let signature = token.rsplit('.').next().expect("three parts");
    for path in [
        format!("/v1/namespaces/n/events?token={token}%FF"),
        format!("/v1/namespaces/n/events?token={token}&token={token}"),
        format!("/v1/namespaces/n/events?token={token}x"),
        format!("/v1/ws?token={token}%FF"),
    ] {
        let r = call(&broker, Method::GET, &path, None).await;
        assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthorized", &path);
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains(signature), "{path}: {body}");
    }
}

#[tokio::test]
async fn the_cli_takes_a_token_from_its_flag_or_variable() {
    let (_dir, broker) = hs256_broker(&[]);
    let token = hs256(
        SECRET,
        &claims(json!({"publish": ["cli"], "subscribe": ["cli"], "admin": true})),
    );
    let rewind = |args: &[&str], env_token: Option<&str>| {
        let mut cmd = Command::new(rewind_bin());
        cmd.args(args)
            .env("REWIND_URL", broker.url())
            .env_remove("REWIND_TOKEN");
        if let Some(t) = env_token {
            cmd.env("REWIND_TOKEN", t);
        }
        cmd.output().expect("run rewind")
    };
    let refused = rewind(&["publish", "cli", "e", "--data", "1"], None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthorized"),
        "{refused:?}"
    );
    let ok = rewind(
        &["publish", "--token", &token, "cli", "e", "--data", "1"],
        None,
    );
    assert!(ok.status.success(), "{ok:?}");
    let ok = rewind(&["publish", "cli", "e", "--data", "2"], Some(&token));
    assert!(ok.status.success(), "{ok:?}");
    let listed = rewind(&["namespaces"], Some(&token));
    assert!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("cli"),
        "{listed:?}"
    );
    let tail = rewind(
        &["tail", "cli", "--from", "earliest", "--limit", "2"],
        Some(&token),
    );
    assert!(tail.status.success(), "{tail:?}");
    assert_eq!(
        String::from_utf8_lossy(&tail.stdout).lines().count(),
        2,
        "{tail:?}"
    );
    let once = rewind(
        &["tail", "cli", "--from", "earliest", "--no-follow"],
        Some(&token),
    );
    assert!(once.status.success(), "{once:?}");
    assert_eq!(
        String::from_utf8_lossy(&once.stdout).lines().count(),
        2,
        "{once:?}"
    );
}

/// A second `Authorization` header is `400 bad_frame` on every route and the WebSocket
/// upgrade, whichever copy comes first: no copy silently wins (`docs/http-api.md`).
#[tokio::test]
async fn a_second_authorization_header_is_refused_bad_frame() {
    let (_dir, broker) = hs256_broker(&[]);
    let all = hs256(
        SECRET,
        &claims(json!({"admin": true, "publish": ["*"], "subscribe": ["*"]})),
    );
    let good = format!("Bearer {all}");
    let none = format!(
        "Bearer {}",
        hs256(SECRET, &claims(json!({"subscribe": ["other"]})))
    );
    for (first, second) in [
        (good.as_str(), none.as_str()),
        (none.as_str(), good.as_str()),
        (good.as_str(), "Bearer garbage"),
        (good.as_str(), good.as_str()),
    ] {
        for (method, path) in [
            (Method::POST, "/v1/namespaces/two/events"),
            (Method::GET, "/v1/namespaces/two/events"),
            (Method::HEAD, "/v1/namespaces/two/events"),
            (Method::GET, "/v1/namespaces/two/sse"),
            (Method::GET, "/v1/namespaces/two"),
            (Method::PUT, "/v1/namespaces/two"),
            (Method::DELETE, "/v1/namespaces/two"),
            (Method::GET, "/v1/namespaces"),
            (Method::GET, "/metrics"),
            (Method::GET, "/v1/unknown"),
        ] {
            let r = broker
                .request(
                    method.clone(),
                    path,
                    &[
                        ("content-type", "application/json"),
                        ("authorization", first),
                        ("authorization", second),
                    ],
                    r#"{"event":"e"}"#.to_owned(),
                )
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {path}");
            if method != Method::HEAD {
                assert_eq!(r.error_code(), "bad_frame", "{method} {path}");
            }
        }
        let mut req = format!("ws://{}/v1/ws", broker.addr)
            .into_client_request()
            .expect("request");
        for value in [first, second] {
            req.headers_mut()
                .append("authorization", value.parse().expect("header"));
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status().as_u16(), 400)
            }
            Ok(_) => panic!("upgraded with two Authorization headers"),
            Err(e) => panic!("connect: {e}"),
        }
    }
    // Nothing was created by the refused publishes and PUTs.
    let r = call(&broker, Method::GET, "/v1/namespaces/two", Some(&all)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
