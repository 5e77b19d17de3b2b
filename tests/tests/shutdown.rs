//! Graceful shutdown (spec §8, issue 12): what a client on a connection opened before
//! SIGTERM gets while in-flight work drains. (WebSocket publishes taken before the signal
//! are answered before the 1001: `ws_publish.rs`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rewind_tests::{Broker, StatusCode};

/// Reads one answer (head and a `Content-Length` body) from a keep-alive connection.
fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("an answer");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).expect("ASCII head");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("the body");
    head + &String::from_utf8_lossy(&body)
}

/// A publish whose handler waits for its body (the broker sent `100 Continue`): it holds
/// the shutdown's drain open until [`finish`] sends the body.
fn publish_in_flight(addr: SocketAddr) -> (TcpStream, &'static [u8]) {
    let body: &'static [u8] = br#"{"event":"late","data":1}"#;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/namespaces/drain/events HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let continued = read_answer(&mut s);
    assert!(continued.starts_with("HTTP/1.1 100"), "{continued}");
    (s, body)
}

fn finish((mut s, body): (TcpStream, &'static [u8])) -> String {
    s.write_all(body).unwrap();
    read_answer(&mut s)
}

#[tokio::test]
async fn an_idle_keep_alive_connection_gets_503_while_the_drain_lasts() {
    let mut b = Broker::start(&["--shutdown-timeout-secs", "60"]);
    // A keep-alive connection that has been served once and is idle at the signal.
    let mut idle = TcpStream::connect(b.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    idle.write_all(b"GET /v1/namespaces HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = read_answer(&mut idle);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let publish = publish_in_flight(b.addr);
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &b.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // The drain has begun once a new connection's `/readyz` says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = b.get("/readyz").await;
        if res.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(Instant::now() < deadline, "readyz never turned 503");
        tokio::task::yield_now().await;
    }
    // The idle connection is still open, and its next request is answered, not cut off.
    idle.write_all(b"GET /v1/namespaces HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    idle.read_to_string(&mut answer)
        .expect("an answer, then the connection closed");
    let lower = answer.to_ascii_lowercase();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(lower.contains("retry-after: 1\r\n"), "{answer}");
    assert!(lower.contains("connection: close\r\n"), "{answer}");
    assert!(answer.contains(r#""code":"shutting_down""#), "{answer}");
    // The publish in flight at the signal still finishes, and the broker then exits.
    let done = tokio::task::spawn_blocking(move || finish(publish))
        .await
        .unwrap();
    assert!(done.starts_with("HTTP/1.1 201"), "{done}");
    let status = tokio::task::spawn_blocking(move || {
        let status = b.wait();
        (b, status)
    })
    .await
    .unwrap();
    let (mut b, status) = status;
    assert!(status.success());
    b.restart();
    assert_eq!(b.get("/v1/namespaces/drain").await.json()["next"], 1);
}
