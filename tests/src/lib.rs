//! Helpers for end-to-end tests: start the real `rewind` binary on an ephemeral port with
//! a temporary data directory, talk HTTP to it, kill it, restart it.
//!
//! The binary is `$REWIND_BIN` if set, else the workspace's `rewind`, which [`rewind_bin`]
//! builds first if its sources changed: `cargo test -p rewind-tests` alone tests the
//! broker as the sources are.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub mod browser;
pub mod fault;
pub mod proxy;
pub mod redis;
pub mod sse;

use bytes::Bytes;
use tempfile::TempDir;

/// The HTTP types of the requests and answers: the client crate's (reqwest's, the `http`
/// crate's), so a test names `Method`, `StatusCode` and `HeaderMap` from here.
pub use rewind_client::reqwest::header::HeaderMap;
pub use rewind_client::reqwest::{Method, StatusCode};

/// Path of the `rewind` binary under test: `$REWIND_BIN` if set; else the workspace's own,
/// built (or found up to date) by `cargo build -p rewind-broker --bin rewind` once per
/// test process, in the profile of the test executable, so no test ever runs a binary
/// older than its sources. (cargo releases its build lock before it runs test
/// executables, so the nested build does not wait on the outer one.)
pub fn rewind_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("REWIND_BIN") {
        return PathBuf::from(bin);
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_rewind).clone()
}

/// Builds the `rewind` binary beside the test executable's `deps/` directory.
fn build_rewind() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "rewind-broker", "--bin", "rewind"]);
    if dir.file_name().is_some_and(|p| p == "release") {
        cargo.arg("--release");
    }
    let out = cargo.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "building the rewind binary failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = dir.join(format!("rewind{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing after the build",
        bin.display()
    );
    bin
}

/// A running broker process.
pub struct Broker {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    _tmp: Option<TempDir>,
    args: Vec<String>,
    /// Where its stderr goes when captured (see [`Broker::open`]).
    stderr: Option<(TempDir, PathBuf)>,
}

/// A start the broker refused: it exited before it listened.
#[derive(Debug)]
pub struct Refusal {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused ({}): {}", self.status, self.stderr.trim_end())
    }
}

/// How long a start may take before the test fails (a guard against hangs).
pub const START_PATIENCE: Duration = Duration::from_secs(60);

impl Broker {
    /// Starts a broker on port 0 with a fresh temporary data directory and `args` added.
    pub fn start(args: &[&str]) -> Broker {
        Broker::start_prepared(args, |_| {})
    }

    /// Starts a broker on port 0 with a fresh temporary data directory that `prepare`
    /// fills first (for example with a log written by the broker's library directly).
    pub fn start_prepared(args: &[&str], prepare: impl FnOnce(&Path)) -> Broker {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        prepare(&data_dir);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn(&data_dir, "127.0.0.1:0", &args);
        Broker {
            child,
            addr,
            data_dir,
            _tmp: Some(tmp),
            args,
            stderr: None,
        }
    }

    /// Starts a broker on port 0 on `data_dir` (which the caller owns: it is kept when the
    /// broker is dropped) with `args` added, capturing its stderr. A broker that exits
    /// before it listens is a [`Refusal`]; one that neither listens nor exits within
    /// [`START_PATIENCE`] fails the test.
    pub fn open(data_dir: &Path, args: &[&str]) -> Result<Broker, Refusal> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("stderr");
        let (child, addr) = spawn_captured(data_dir, "127.0.0.1:0", &args, &path)?;
        Ok(Broker {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            _tmp: None,
            args,
            stderr: Some((dir, path)),
        })
    }

    /// Starts the broker again on the same data directory, port and arguments, capturing
    /// stderr into the same file (appended), or the refusal.
    pub fn try_restart(&mut self) -> Result<(), Refusal> {
        let _ = self.child.try_wait();
        let Some((_, path)) = &self.stderr else {
            self.restart();
            return Ok(());
        };
        let (child, addr) =
            spawn_captured(&self.data_dir, &self.addr.to_string(), &self.args, path)?;
        self.child = child;
        self.addr = addr;
        Ok(())
    }

    /// What the broker wrote to stderr so far (empty unless started by [`Broker::open`]).
    pub fn stderr(&self) -> String {
        self.stderr
            .as_ref()
            .and_then(|(_, p)| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().expect("wait for broker")
    }

    /// Waits for the process to exit (after a signal the test sent itself).
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for broker")
    }

    /// Starts the broker again on the same data directory and the same port.
    pub fn restart(&mut self) {
        let _ = self.child.try_wait();
        let (child, addr) = spawn(&self.data_dir, &self.addr.to_string(), &self.args);
        self.child = child;
        self.addr = addr;
    }

    /// Sends a request and returns status, headers and body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Response {
        request(self.addr, method, path, headers, body.into())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// `POST` a JSON body.
    pub async fn post_json(&self, path: &str, body: &str) -> Response {
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body.to_owned(),
        )
        .await
    }

    /// `POST`s `body` (one event or a JSON array of them) to namespace `ns` and checks the
    /// broker answered `201 Created` (the test fails with the answer's body otherwise).
    pub async fn publish(&self, ns: &str, body: &str) -> Response {
        let r = self
            .post_json(&format!("/v1/namespaces/{ns}/events"), body)
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        r
    }

    /// `GET` a path.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// `PUT` a JSON body.
    pub async fn put_json(&self, path: &str, body: &str) -> Response {
        self.request(
            Method::PUT,
            path,
            &[("content-type", "application/json")],
            body.to_owned(),
        )
        .await
    }

    /// `GET`s `path` (a JSON answer) until `done` holds for it, for at most 10 seconds:
    /// for state the broker reaches in the background, such as retention.
    pub async fn wait_for(
        &self,
        path: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let value = self.get(path).await.json();
            if done(&value) {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} never got there: {value}"
            );
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rewind serve --listen LISTEN --data-dir DATA_DIR ARGS…`, with no configuration file
/// from the environment, `RUST_LOG` as the test's (else `warn`), and stdout piped.
fn serve_command(data_dir: &Path, listen: &str, args: &[String]) -> Command {
    let mut command = Command::new(rewind_bin());
    command
        .arg("serve")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("REWIND_CONFIG")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped());
    command
}

fn spawn(data_dir: &Path, listen: &str, args: &[String]) -> (Child, SocketAddr) {
    let mut child = serve_command(data_dir, listen, args)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rewind");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the broker's first line");
    let addr = line
        .trim()
        .strip_prefix("rewind listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line from rewind: {line:?}"))
        .parse()
        .expect("address");
    (child, addr)
}

/// Like [`spawn`], with stderr appended to `stderr`, a bounded wait for the first line, and
/// a broker that exits first returned as a [`Refusal`].
fn spawn_captured(
    data_dir: &Path,
    listen: &str,
    args: &[String],
    stderr: &Path,
) -> Result<(Child, SocketAddr), Refusal> {
    let err_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr)
        .expect("stderr file");
    let before = err_file.metadata().map_or(0, |m| m.len() as usize);
    let mut child = serve_command(data_dir, listen, args)
        .stderr(Stdio::from(err_file))
        .spawn()
        .expect("start rewind");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let Ok(line) = rx.recv_timeout(START_PATIENCE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("rewind neither listened nor exited within {START_PATIENCE:?}");
    };
    if let Some(addr) = line.trim().strip_prefix("rewind listening on http://") {
        return Ok((child, addr.parse().expect("address")));
    }
    // No first line: it is exiting (stdout closed). Wait for it, boundedly.
    let deadline = std::time::Instant::now() + START_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for rewind") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rewind closed stdout ({line:?}) but did not exit within {START_PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = std::fs::read(stderr)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if !line.is_empty() {
        panic!("unexpected first line from rewind: {line:?} ({status}; stderr: {stderr})");
    }
    Err(Refusal {
        status,
        stderr: stderr.get(before..).unwrap_or_default().to_owned(),
    })
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", String::from_utf8_lossy(&self.body)))
            .to_owned()
    }
}

/// Sends one request on a new connection, through the client crate's HTTP client
/// ([`rewind_client::http_client_builder`]: reqwest). `path` goes out as written; a path
/// the client's URL parser would rewrite (it resolves `%2E%2E` to `..` and then away, as
/// browsers do) goes out as raw bytes instead (see [`raw_request`]), since such a path is
/// exactly what a test of the broker's own decoding must send.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    let url = rewind_client::reqwest::Url::parse(&format!("http://{addr}{path}"))?;
    let kept = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    if kept != path {
        return raw_request(addr, &method, path, headers, &body).await;
    }
    // A client per request, pooling nothing: every request has a connection of its own,
    // and no connection outlives the test's runtime.
    let client = rewind_client::http_client_builder(&[])?
        .no_proxy()
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .build()?;
    let mut req = client.request(method, url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await?;
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.bytes().await?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// [`request`] for a path an HTTP client library would rewrite: the request as raw
/// HTTP/1.1 bytes with `Connection: close`, and the answer read to the end of the
/// connection (status line, headers, and a body of the `Content-Length` the broker sends).
async fn raw_request(
    addr: SocketAddr,
    method: &Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let answer = raw_http(addr, &bytes).await;
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the answer's headers")?;
    let head = std::str::from_utf8(&answer[..end])?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .ok_or("no status line")?;
    let status = StatusCode::from_bytes(status.as_bytes())?;
    let mut map = HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or("a header line without a colon")?;
        map.append(
            rewind_client::reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            value.trim().parse()?,
        );
    }
    let length = match map.get("content-length") {
        Some(v) => v.to_str()?.parse::<usize>()?,
        None => answer.len() - end - 4,
    };
    let body = answer
        .get(end + 4..end + 4 + length)
        .ok_or("the answer is shorter than its Content-Length")?;
    Ok(Response {
        status,
        headers: map,
        body: Bytes::copy_from_slice(body),
    })
}

/// A raw WebSocket client for tests.
pub mod ws {
    use std::net::SocketAddr;
    use std::time::Duration;

    use futures::{SinkExt, StreamExt};
    use rewind_protocol::frame::{
        decode_server_json, decode_server_msgpack, encode_client_json, encode_client_msgpack,
        ClientFrame, ServerFrame, ServerMessage,
    };
    use rewind_protocol::Payload;
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    /// How long a test waits for a frame before it fails (a guard against hangs).
    pub const PATIENCE: Duration = Duration::from_secs(20);

    /// One connection.
    pub struct Client {
        /// The socket.
        pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
        /// True for `rewind.v1.msgpack`.
        pub msgpack: bool,
    }

    /// What the broker sent: a decoded frame, or the end of the connection.
    #[derive(Debug)]
    pub enum Received {
        /// A frame (for JSON events with `bin: true`, the payload frame is already attached).
        Message(ServerMessage),
        /// A close frame.
        Closed(Option<CloseFrame>),
    }

    impl Client {
        /// Connects to `/v1/ws`, offering `protocol` if given.
        pub async fn connect(addr: SocketAddr, protocol: Option<&str>) -> Client {
            let mut req = format!("ws://{addr}/v1/ws")
                .into_client_request()
                .expect("request");
            if let Some(p) = protocol {
                req.headers_mut()
                    .insert("sec-websocket-protocol", p.parse().expect("header"));
            }
            let (socket, res) = tokio_tungstenite::connect_async(req)
                .await
                .expect("connect");
            let chosen = res
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(p) = protocol {
                if p == "rewind.v1.json" || p == "rewind.v1.msgpack" {
                    assert_eq!(chosen.as_deref(), Some(p));
                }
            }
            Client {
                socket,
                msgpack: chosen.as_deref() == Some("rewind.v1.msgpack"),
            }
        }

        /// Sends a client frame in the connection's encoding (and, for a JSON publish of
        /// bytes, the binary frame after it).
        pub async fn send(&mut self, frame: &ClientFrame) {
            if self.msgpack {
                self.raw(Message::Binary(encode_client_msgpack(frame).into()))
                    .await;
                return;
            }
            self.raw(Message::Text(encode_client_json(frame).into()))
                .await;
            if let ClientFrame::Publish {
                data: Some(Payload::Bytes(b)),
                ..
            } = frame
            {
                self.raw(Message::Binary(b.clone().into())).await;
            }
        }

        /// Sends any message.
        pub async fn raw(&mut self, m: Message) {
            self.socket.send(m).await.expect("send");
        }

        /// The next frame from the broker (pings answered are skipped only if `skip_pings`).
        pub async fn recv(&mut self) -> Received {
            loop {
                let next = tokio::time::timeout(PATIENCE, self.socket.next())
                    .await
                    .expect("no frame from the broker in time");
                let m = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => panic!("socket error: {e}"),
                    None => return Received::Closed(None),
                };
                let decoded = match m {
                    Message::Text(t) => decode_server_json(&t),
                    Message::Binary(b) => decode_server_msgpack(&b),
                    Message::Close(c) => return Received::Closed(c),
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                };
                let mut msg =
                    decoded.unwrap_or_else(|e| panic!("undecodable frame from the broker: {e}"));
                if let ServerMessage::Event(ev) = &mut msg {
                    if ev.bin {
                        let payload = tokio::time::timeout(PATIENCE, self.socket.next())
                            .await
                            .expect("payload frame in time");
                        match payload {
                            Some(Ok(Message::Binary(b))) => {
                                ev.event.data = Payload::Bytes(b.to_vec())
                            }
                            other => panic!("expected the binary payload, got {other:?}"),
                        }
                    }
                }
                return Received::Message(msg);
            }
        }

        /// Sends `frame` as it is, in the connection's encoding (so anything can be sent),
        /// and returns the next answer that is not a ping; an event is a failure.
        pub async fn answer(&mut self, frame: &serde_json::Value) -> ServerFrame {
            let m = if self.msgpack {
                Message::Binary(rmp_serde::to_vec_named(frame).expect("msgpack").into())
            } else {
                Message::Text(frame.to_string().into())
            };
            self.raw(m).await;
            loop {
                match self.next().await {
                    ServerMessage::Frame(ServerFrame::Ping) => {}
                    ServerMessage::Frame(f) => return f,
                    ServerMessage::Event(e) => panic!("unexpected event {e:?}"),
                }
            }
        }

        /// The next frame, which must be a message (not a close).
        pub async fn next(&mut self) -> ServerMessage {
            match self.recv().await {
                Received::Message(m) => m,
                Received::Closed(c) => panic!("connection closed: {c:?}"),
            }
        }

        /// Reads until the broker closes; returns the close code.
        pub async fn close_code(&mut self) -> Option<u16> {
            loop {
                if let Received::Closed(c) = self.recv().await {
                    return c.map(|c| u16::from(c.code));
                }
            }
        }
    }
}

/// A TLS-terminating proxy for tests of `https://` and `wss://`.
pub mod tls {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::TlsAcceptor;

    /// A proxy on loopback that accepts TLS with a self-signed certificate (for
    /// `127.0.0.1` and `localhost`, made with rcgen when the proxy starts) and forwards
    /// the plain bytes to the broker. It runs on a thread of its own, so tests that block
    /// on a child process do not stall it; it ends with the test process.
    pub struct TlsProxy {
        /// Where it listens.
        pub addr: SocketAddr,
        /// Its certificate, PEM.
        pub cert_pem: String,
        /// Its certificate, DER.
        pub cert_der: Vec<u8>,
        handshakes: Arc<AtomicUsize>,
    }

    impl TlsProxy {
        /// Starts a proxy in front of `target`.
        pub fn start(target: SocketAddr) -> TlsProxy {
            let certified = rcgen::generate_simple_self_signed(vec![
                "127.0.0.1".to_owned(),
                "localhost".to_owned(),
            ])
            .expect("a self-signed certificate");
            let cert_der = certified.cert.der().to_vec();
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(vec![CertificateDer::from(cert_der.clone())], key)
                .expect("server config");
            let acceptor = TlsAcceptor::from(Arc::new(config));
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            let addr = listener.local_addr().expect("address");
            let handshakes = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&handshakes);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("listener");
                    while let Ok((tcp, _)) = listener.accept().await {
                        let acceptor = acceptor.clone();
                        let counted = Arc::clone(&counted);
                        tokio::spawn(async move {
                            let Ok(mut tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            counted.fetch_add(1, Ordering::SeqCst);
                            let Ok(mut broker) = TcpStream::connect(target).await else {
                                return;
                            };
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                        });
                    }
                });
            });
            TlsProxy {
                addr,
                cert_pem: certified.cert.pem(),
                cert_der,
                handshakes,
            }
        }

        /// TLS handshakes completed so far.
        pub fn handshakes(&self) -> usize {
            self.handshakes.load(Ordering::SeqCst)
        }
    }
}

/// Sends `request` as raw bytes on a new connection and returns everything the broker
/// sends back until it closes the connection (send `Connection: close`): for checking
/// what goes over the wire, such as a `HEAD` answer having no body, or header bytes a
/// client library would refuse to send.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut out),
    )
    .await
    .expect("the broker closes the connection in time")
    .expect("read");
    out
}

/// A `kB` figure of `/proc/<pid>/status`, by its field name with the colon (`"VmRSS:"`,
/// `"VmHWM:"`), in KiB. Panics if the process or the field is missing.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Takes `child`'s piped stderr and reads it to the end on a thread (so a chatty child
/// never blocks on a full pipe); the thread returns the whole text, and sends each line
/// on the returned channel as it comes (for a test that waits for one).
fn stderr_to_end(
    child: &mut Child,
) -> (
    std::thread::JoinHandle<String>,
    std::sync::mpsc::Receiver<String>,
) {
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut err = BufReader::new(err);
        let mut bytes = Vec::new();
        // To the end whatever the bytes (a line that is not UTF-8 is kept, lossily), so
        // the child never blocks on a full pipe.
        while matches!(err.read_until(b'\n', &mut bytes), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&bytes)
                .trim_end_matches('\n')
                .to_owned();
            text.push_str(&line);
            text.push('\n');
            let _ = tx.send(line);
            bytes.clear();
        }
        text
    });
    (reader, rx)
}

/// Runs `cmd`, a `rewind serve` that must refuse to start, and returns its stderr after
/// checking the exit status is 1 (every configuration error exits 1, whichever source it
/// came from). One that starts anyway (it prints its listening line) is killed and the
/// test fails, instead of hanging.
pub fn refusal(cmd: &mut Command) -> String {
    let mut child = cmd
        .env_remove("REWIND_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rewind starts");
    let (stderr, _) = stderr_to_end(&mut child);
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line);
    if !line.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} started: {line}");
    }
    let status = child.wait().expect("rewind exits");
    let stderr = stderr.join().expect("stderr reader");
    assert_eq!(status.code(), Some(1), "{cmd:?}: {stderr}");
    stderr
}

/// The status and the JSON body of a whole raw HTTP answer (`Null` for a body that is not
/// JSON). Panics if there is no status line.
pub fn status_and_json(answer: &[u8]) -> (u16, serde_json::Value) {
    let text = String::from_utf8_lossy(answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls the RSS of process `pid` (every 100 ms: nothing announces it) until it is at most
/// `limit` KiB or 30 s pass; returns the last value, in KiB. The broker is sent nothing
/// meanwhile: freed memory goes back to the OS by itself, about a second after it is freed
/// (the broker's purge thread; see `purge_freed_memory` in `broker/src/bin/rewind/main.rs`
/// and `decisions.md`).
pub async fn rss_falls_to(pid: u32, limit: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rss = rss_kib(pid);
        if rss <= limit || std::time::Instant::now() > deadline {
            return rss;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `rewind serve` started by a test's own [`Command`], whose stdout and stderr are pipes.
pub struct Piped {
    /// The process.
    pub child: Child,
    /// The address of its listening line.
    pub addr: SocketAddr,
    /// Its whole stderr, read on a thread until the process closes it.
    pub stderr: std::thread::JoinHandle<String>,
    /// Its stderr's lines, each as it is read.
    pub lines: std::sync::mpsc::Receiver<String>,
}

/// Spawns `cmd` (a `rewind serve` on an ephemeral port) with stdout and stderr piped,
/// starts reading its stderr to the end on a thread, and waits for its first stdout line,
/// `rewind listening on http://ADDR`. Panics if the first line is anything else.
pub fn spawn_piped(cmd: &mut Command) -> Piped {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rewind");
    let (stderr, lines) = stderr_to_end(&mut child);
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("rewind listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("listening address");
    Piped {
        child,
        addr,
        stderr,
        lines,
    }
}
