//! Running the broker as an operator does: configuration from flags, `REWIND_*` variables
//! and TOML, what goes to stderr, and what a load balancer sees during shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use rewind_tests::{request, rewind_bin};

/// A broker whose stderr is a pipe (so not a terminal), kept for inspection.
struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: Option<JoinHandle<String>>,
    _dir: tempfile::TempDir,
}

impl Served {
    /// `rewind serve` on port 0 with a temporary data directory, `args` and `env` added.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(rewind_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env_remove("REWIND_CONFIG")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rewind");
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("rewind listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Served {
            child,
            addr,
            stderr: Some(stderr),
            _dir: dir,
        }
    }

    fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to exit; its status and everything it wrote on stderr.
    fn wait(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, stderr)
    }

    async fn get(&self, path: &str) -> Result<rewind_tests::Response, String> {
        request(self.addr, Method::GET, path, &[], Bytes::new())
            .await
            .map_err(|e| e.to_string())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A publish whose headers have been read by the broker and whose handler is waiting for
/// the body: the broker answered `100 Continue`, which it does only once the handler
/// reads the body. It holds a shutdown open until [`InFlight::finish`].
struct InFlight {
    stream: TcpStream,
    rest: &'static [u8],
}

impl InFlight {
    fn start(addr: SocketAddr) -> InFlight {
        let body: &'static [u8] = br#"{"event":"late","data":1}"#;
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        write!(
            stream,
            "POST /v1/namespaces/drain/events HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            got.push(byte[0]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 100"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        InFlight { stream, rest: body }
    }

    /// Sends the body; the broker's whole answer.
    fn finish(mut self) -> String {
        self.stream.write_all(self.rest).unwrap();
        let mut answer = String::new();
        let _ = self.stream.read_to_string(&mut answer);
        answer
    }
}

#[tokio::test]
async fn readyz_answers_503_from_sigterm_while_in_flight_work_drains() {
    let b = Served::start(&["--shutdown-timeout-secs", "60"], &[]);
    assert_eq!(b.get("/readyz").await.unwrap().status, StatusCode::OK);
    let publish = InFlight::start(b.addr);
    b.sigterm();
    // Every answer is 200 until the signal is handled, then 503; never a refused
    // connection while the publish is still in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = b.get("/readyz").await.expect("readyz answers during the drain");
        if res.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(res.error_code(), "shutting_down");
            break;
        }
        assert_eq!(res.status, StatusCode::OK);
        assert!(Instant::now() < deadline, "readyz never turned 503");
        tokio::task::yield_now().await;
    }
    // Liveness still holds; new work is turned away with a code a client can act on.
    assert_eq!(b.get("/healthz").await.unwrap().status, StatusCode::OK);
    let refused = b.get("/v1/namespaces").await.unwrap();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error_code(), "shutting_down");
    assert_eq!(refused.headers["retry-after"], "1");
    // The publish that was in flight when the signal came still finishes.
    let answer = tokio::task::spawn_blocking(move || publish.finish())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let (status, stderr) = b.wait();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("still open"), "{stderr}");
}

#[tokio::test]
async fn a_shutdown_timeout_blames_only_what_is_really_left_open() {
    let b = Served::start(&["--shutdown-timeout-secs", "1"], &[]);
    let publish = InFlight::start(b.addr);
    b.sigterm();
    let (status, stderr) = tokio::task::spawn_blocking(move || b.wait())
        .await
        .unwrap();
    drop(publish);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("connections still open after the shutdown timeout"),
        "{stderr}"
    );
    // No WebSocket was ever open.
    assert!(!stderr.contains("WebSocket sessions still open"), "{stderr}");
}

#[tokio::test]
async fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let b = Served::start(&[], &[]);
    b.sigterm();
    let (status, stderr) = b.wait();
    assert!(status.success());
    assert!(stderr.contains("rewind started"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}
