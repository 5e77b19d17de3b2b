//! Request bodies have a deadline (`http_body_timeout_secs`): a body that stalls, or that
//! trickles in a byte at a time, is answered `408 request_timeout` and its connection
//! closed, nothing of it is kept, and the connection slot comes back.

use std::net::SocketAddr;
use std::time::Duration;

use rewind_tests::Broker;
use rewind_tests::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A guard against hangs, not a timing assertion: the deadline in these tests is 1 s.
const PATIENCE: Duration = Duration::from_secs(30);

/// Every route that reads a body: method, path, content type, and a whole body.
const ROUTES: &[(&str, &str, &str, &str)] = &[
    (
        "POST",
        "/v1/namespaces/{ns}/events",
        "application/json",
        r#"{"event":"a","data":{"k":1}}"#,
    ),
    (
        "POST",
        "/v1/namespaces/{ns}/events",
        "application/x-ndjson",
        "{\"event\":\"a\",\"data\":1}\n{\"event\":\"b\",\"data\":2}\n",
    ),
    (
        "POST",
        "/v1/namespaces/{ns}/events",
        "application/ndjson",
        "{\"event\":\"a\",\"data\":1}\n",
    ),
    (
        "POST",
        "/v1/namespaces/{ns}/events?event=a",
        "application/octet-stream",
        "raw payload bytes",
    ),
    (
        "PUT",
        "/v1/namespaces/{ns}",
        "application/json",
        r#"{"retention":{"max_events":10}}"#,
    ),
];

/// The request head of `route` for namespace `ns`, declaring `declared` body bytes.
fn head(route: &(&str, &str, &str, &str), ns: &str, declared: usize) -> Vec<u8> {
    let (method, path, content_type, _) = route;
    format!(
        "{method} {} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n\
         content-length: {declared}\r\n\r\n",
        path.replace("{ns}", ns)
    )
    .into_bytes()
}

/// Everything the broker sends on `stream` until it closes it.
async fn answer(stream: &mut tokio::net::tcp::OwnedReadHalf) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out))
        .await
        .expect("the broker answers and closes the connection")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks that `answer` is a 408 with the JSON error body, closing the connection.
fn assert_timed_out(answer: &str, what: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{what}: {answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {answer}"));
    assert_eq!(json["error"]["code"], "request_timeout", "{what}: {answer}");
}

/// Sends `route`'s head and the first 5 bytes of its body, then nothing; returns the
/// broker's answer.
async fn stalled(addr: SocketAddr, route: &(&str, &str, &str, &str), ns: &str) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let body = route.3.as_bytes();
    let mut request = head(route, ns, body.len());
    request.extend_from_slice(&body[..5]);
    write.write_all(&request).await.expect("write");
    let out = answer(&mut read).await;
    drop(write);
    out
}

/// Sends `route`'s head (a body of 60,000 bytes, under every limit) and then one byte at a
/// time, never pausing long (an idle timeout would never fire), until the broker answers;
/// returns the answer.
async fn trickled(addr: SocketAddr, route: &(&str, &str, &str, &str), ns: &str) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(&head(route, ns, 60_000))
        .await
        .expect("write");
    let trickle = tokio::spawn(async move {
        // Pacing the trickle, not synchronisation: it stops when the broker closes.
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        loop {
            ticks.tick().await;
            if write.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let out = answer(&mut read).await;
    trickle.abort();
    out
}

/// A stalled or a trickling body of `route`; the broker's answer.
async fn slow(
    addr: SocketAddr,
    route: &(&str, &str, &str, &str),
    ns: &str,
    trickle: bool,
) -> String {
    if trickle {
        trickled(addr, route, ns).await
    } else {
        stalled(addr, route, ns).await
    }
}

/// For every route, two slow bodies (stalled, or trickling) take two of the four
/// connection slots, as the slowloris client did: each gets a 408, nothing is kept, and the
/// slots come back for `/healthz`. The other two slots are for the test's own two checks: a
/// checking connection the test has closed can hold its slot until the broker notices, and
/// with only the slow bodies' two slots the next route's slow bodies then made the broker close the connection idle
/// the longest to make room — which can be a slow body just accepted whose first bytes it has
/// not seen yet (eviction is tested in `limits.rs`).
async fn slow_bodies_time_out(trickle: bool) {
    let b = Broker::start(&["--http-body-timeout-secs", "1", "--max-connections", "4"]);
    for (i, route) in ROUTES.iter().enumerate() {
        let ns = format!("slow{i}");
        let (first, second) = tokio::join!(
            slow(b.addr, route, &ns, trickle),
            slow(b.addr, route, &ns, trickle)
        );
        assert_timed_out(&first, route.2);
        assert_timed_out(&second, route.2);
        let info = b.get(&format!("/v1/namespaces/{ns}")).await;
        assert_eq!(info.status, StatusCode::NOT_FOUND, "{}: {info:?}", route.2);
        let health = tokio::time::timeout(PATIENCE, b.get("/healthz"))
            .await
            .expect("a slot comes back for /healthz");
        assert_eq!(health.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_its_slot_back() {
    slow_bodies_time_out(false).await;
}

#[tokio::test]
async fn a_trickling_body_is_bounded_by_a_deadline_not_an_idle_timeout() {
    slow_bodies_time_out(true).await;
}

#[tokio::test]
async fn a_body_in_time_is_kept() {
    let b = Broker::start(&["--http-body-timeout-secs", "1"]);
    for (i, route) in ROUTES.iter().enumerate() {
        let ns = format!("intime{i}");
        // Head and body in separate writes, the body in two parts.
        let stream = TcpStream::connect(b.addr).await.expect("connect");
        let (mut read, mut write) = stream.into_split();
        let body = route.3.as_bytes();
        let mut request = head(route, &ns, body.len());
        request.truncate(request.len() - 2);
        request.extend_from_slice(b"connection: close\r\n\r\n");
        write.write_all(&request).await.expect("write head");
        write.write_all(&body[..5]).await.expect("write");
        write.write_all(&body[5..]).await.expect("write");
        let out = answer(&mut read).await;
        assert!(out.starts_with("HTTP/1.1 201"), "{}: {out}", route.2);
        let info = b.get(&format!("/v1/namespaces/{ns}")).await;
        assert_eq!(info.status, StatusCode::OK, "{}: {info:?}", route.2);
    }
}
