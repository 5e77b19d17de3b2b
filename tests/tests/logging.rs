//! The request log (docs/operations.md): one line per HTTP request and per WebSocket
//! session at `info`, in both formats, read back from the real binary's stderr.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use rewind_protocol::frame::{ServerFrame, ServerMessage};
use rewind_tests::ws::Client;
use rewind_tests::{request, rewind_bin, spawn_piped, Method, StatusCode};
use serde_json::{json, Value};

/// A broker whose stderr is a pipe, read to the end once it exits.
struct Logged {
    child: Child,
    addr: SocketAddr,
    stderr: Option<JoinHandle<String>>,
    _dir: tempfile::TempDir,
}

impl Logged {
    fn start(args: &[&str]) -> Logged {
        let dir = tempfile::tempdir().unwrap();
        let piped = spawn_piped(
            Command::new(rewind_bin())
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(args)
                .env_remove("REWIND_CONFIG")
                .env_remove("REWIND_LOG_FORMAT")
                .env("RUST_LOG", "info"),
        );
        Logged {
            child: piped.child,
            addr: piped.addr,
            stderr: Some(piped.stderr),
            _dir: dir,
        }
    }

    async fn send(&self, method: Method, path: &str, body: &str) -> StatusCode {
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        request(self.addr, method, path, headers, body.to_owned().into())
            .await
            .expect("an answer")
            .status
    }

    /// SIGTERM, then everything the broker wrote on stderr.
    fn stop(mut self) -> String {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        assert!(self.child.wait().unwrap().success());
        self.stderr.take().unwrap().join().unwrap()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same traffic for both formats: a publish, a refused read (its query carrying a
/// secret), scrapes and probes, and a WebSocket session that opens one namespace,
/// publishes once and is closed by the shutdown. Returns the stderr.
async fn traffic(args: &[&str]) -> String {
    let b = Logged::start(args);
    let publish = b
        .send(
            Method::POST,
            "/v1/namespaces/logged/events",
            r#"{"event":"e","data":1}"#,
        )
        .await;
    assert_eq!(publish, StatusCode::CREATED);
    let missing = b
        .send(Method::GET, "/v1/namespaces/absent/events?token=sekrit", "")
        .await;
    assert_eq!(missing, StatusCode::NOT_FOUND);
    assert_eq!(b.send(Method::GET, "/metrics", "").await, StatusCode::OK);
    assert_eq!(b.send(Method::GET, "/healthz", "").await, StatusCode::OK);
    let mut c = Client::connect(b.addr, None).await;
    let opened = c
        .answer(&json!({"t": "open", "ns": "logged", "from": 0, "credit": 10}))
        .await;
    assert!(matches!(opened, ServerFrame::Opened { .. }), "{opened:?}");
    assert!(matches!(c.next().await, ServerMessage::Event(_)));
    let published = c
        .answer(&json!({"t": "publish", "id": 1, "ns": "logged", "event": "e"}))
        .await;
    assert!(
        matches!(published, ServerFrame::Published { .. }),
        "{published:?}"
    );
    // Its own publish comes back as an event.
    assert!(matches!(c.next().await, ServerMessage::Event(_)));
    let stopping = tokio::task::spawn_blocking(move || b.stop());
    assert_eq!(c.close_code().await, Some(1001));
    // Gone, rather than holding the closing handshake's reply unsent.
    drop(c);
    stopping.await.unwrap()
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_a_line_per_request_and_session() {
    let stderr = traffic(&["--log-format", "json"]).await;
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    // The publish and the refused read; not the scrape, the probe or the upgrade.
    assert_eq!(requests.len(), 2, "{stderr}");
    let publish = requests[0];
    assert_eq!(publish["level"], "INFO");
    assert_eq!(publish["method"], "POST");
    assert_eq!(publish["path"], "/v1/namespaces/logged/events");
    assert_eq!(publish["status"], 201);
    assert!(
        publish["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{publish}"
    );
    assert!(
        publish["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{publish}"
    );
    assert_eq!(requests[1]["status"], 404);
    assert_eq!(requests[1]["path"], "/v1/namespaces/absent/events");
    assert!(!stderr.contains("sekrit"), "{stderr}");
    let sessions: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "websocket session")
        .collect();
    assert_eq!(sessions.len(), 1, "{stderr}");
    let s = sessions[0];
    assert_eq!(s["level"], "INFO");
    assert_eq!(s["subscriptions"], 1);
    assert_eq!(s["events_in"], 1);
    assert_eq!(s["events_out"], 2);
    assert_eq!(s["close"], 1001);
    assert!(s["duration_ms"].as_f64().is_some(), "{s}");
    assert!(s["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
}

#[tokio::test]
async fn text_logs_have_the_same_lines_without_colour_codes() {
    let stderr = traffic(&[]).await;
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    let requests: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" request ") || l.ends_with(" request"))
        .collect();
    assert_eq!(requests.len(), 2, "{stderr}");
    assert!(requests[0].contains("INFO"), "{}", requests[0]);
    for field in [
        "method=\"POST\"",
        "path=\"/v1/namespaces/logged/events\"",
        "status=201",
        "duration_ms=",
        "peer=127.0.0.1:",
    ] {
        assert!(requests[0].contains(field), "{field}: {}", requests[0]);
    }
    let session = stderr
        .lines()
        .find(|l| l.contains("websocket session"))
        .unwrap_or_else(|| panic!("{stderr}"));
    for field in [
        "subscriptions=1",
        "events_in=1",
        "events_out=2",
        "close=1001",
    ] {
        assert!(session.contains(field), "{field}: {session}");
    }
    assert!(!stderr.contains("sekrit"), "{stderr}");
}

#[tokio::test]
async fn scrapes_and_probes_are_logged_at_debug() {
    // Debug for the server's lines only: the scrape's line is there, at debug.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(rewind_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env_remove("REWIND_CONFIG")
        .env("RUST_LOG", "info,rewind_broker::server=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("rewind listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    let res = request(addr, Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::OK);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let scrape = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "request" && l["path"] == "/metrics")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(scrape["level"], "DEBUG");
    assert_eq!(scrape["status"], 200);
}
