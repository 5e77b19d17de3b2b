//! A headless Chromium driven over the Chrome DevTools Protocol (CDP), for the browser
//! tests: [`Browser::launch`] starts `chromium` with a fresh temporary profile,
//! [`Browser::page`] opens a tab, and a [`Page`] evaluates JavaScript in it ([`Page::eval`],
//! promises awaited), waits for a condition in the page ([`Page::wait_for`]), takes
//! screenshots ([`Page::screenshot`]) and collects the page's console messages, uncaught
//! exceptions and browser log entries (CORS refusals, failed loads) for failure output
//! ([`Page::console`]).
//!
//! The binary is `$CHROMIUM` if set, else `/usr/bin/chromium` (Debian's `chromium`
//! package, which `.ci/run` installs when missing). A missing browser fails the test with
//! a message saying how to install it: the browser tests are never skipped.
//!
//! CDP is JSON over one WebSocket (<https://chromedevtools.github.io/devtools-protocol/>):
//! requests `{id, method, params, sessionId?}`, answers `{id, result | error}`, events
//! `{method, params, sessionId?}`. A tab is attached with `flatten: true`, so its commands
//! go over the browser's socket with the tab's `sessionId`.
//!
//! [`StaticSite`] is a tiny HTTP server on another ephemeral port for a test's own pages:
//! a page served there is on another origin than the broker.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long one CDP command may take before the test fails (a guard against hangs, not a
/// synchronisation).
const COMMAND_PATIENCE: Duration = Duration::from_secs(30);

/// The flags every launch gets. The background-networking, component-update and sync
/// flags keep Chromium from dialling out (this machine's network refuses it, and a test
/// must talk only to 127.0.0.1); `--disable-quic` keeps it on TCP.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
];

/// Path of the Chromium binary: `$CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;
/// A static site's files: path → (content type, body).
type Files = Arc<Mutex<HashMap<String, (String, Vec<u8>)>>>;
type Consoles = Arc<Mutex<HashMap<String, Arc<Mutex<Vec<String>>>>>>;

/// One CDP event: its method, params and the session (tab) it came from.
#[derive(Clone, Debug)]
pub struct CdpEvent {
    /// The tab's session, `None` for browser-level events.
    pub session: Option<String>,
    /// For example `Page.loadEventFired`.
    pub method: String,
    /// The event's parameters.
    pub params: Value,
}

/// The DevTools connection shared by the browser and its pages.
struct Cdp {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<CdpEvent>,
    consoles: Consoles,
}

impl Cdp {
    async fn connect(ws_url: &str) -> Cdp {
        let (socket, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .unwrap_or_else(|e| panic!("connect to Chromium's DevTools at {ws_url}: {e}"));
        let (mut sink, mut stream) = socket.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let consoles: Consoles = Arc::default();
        let (events, _) = broadcast::channel(4096);
        let (p, c, e) = (pending.clone(), consoles.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(text) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    let waiter = p.lock().expect("pending lock").remove(&id);
                    if let Some(w) = waiter {
                        let answer = match v.get("error") {
                            Some(err) => Err(err.clone()),
                            None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                        };
                        let _ = w.send(answer);
                    }
                    continue;
                }
                let event = CdpEvent {
                    session: v
                        .get("sessionId")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    method: v["method"].as_str().unwrap_or_default().to_owned(),
                    params: v.get("params").cloned().unwrap_or(Value::Null),
                };
                if let (Some(session), Some(line)) = (&event.session, console_line(&event)) {
                    let log = c.lock().expect("consoles lock").get(session).cloned();
                    if let Some(log) = log {
                        log.lock().expect("console lock").push(line);
                    }
                }
                let _ = e.send(event);
            }
            // The browser is gone: fail every command still waiting.
            p.lock().expect("pending lock").clear();
        });
        Cdp {
            out,
            pending,
            next_id: AtomicU64::new(1),
            events,
            consoles,
        }
    }

    /// Sends `method` (to the tab `session`, or to the browser) and returns its result or
    /// the protocol's error object.
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            request["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        if self.out.send(Message::text(request.to_string())).is_err() {
            return Err(json!({"message": "the DevTools connection is closed"}));
        }
        match tokio::time::timeout(COMMAND_PATIENCE, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(json!({"message": "the browser went away"})),
            Err(_) => {
                Err(json!({"message": format!("{method}: no answer in {COMMAND_PATIENCE:?}")}))
            }
        }
    }
}

/// The console text of a CDP event, if it is a console call, an uncaught exception or a
/// browser log entry.
fn console_line(event: &CdpEvent) -> Option<String> {
    let p = &event.params;
    match event.method.as_str() {
        "Runtime.consoleAPICalled" => {
            let args: Vec<String> = p["args"]
                .as_array()
                .map(|a| a.iter().map(remote_object_text).collect())
                .unwrap_or_default();
            Some(format!(
                "console.{}: {}",
                p["type"].as_str().unwrap_or("log"),
                args.join(" ")
            ))
        }
        "Runtime.exceptionThrown" => Some(format!(
            "uncaught: {}",
            exception_text(&p["exceptionDetails"])
        )),
        "Log.entryAdded" => Some(format!(
            "log.{}: {} {}",
            p["entry"]["level"].as_str().unwrap_or("info"),
            p["entry"]["text"].as_str().unwrap_or_default(),
            p["entry"]["url"].as_str().unwrap_or_default()
        )),
        _ => None,
    }
}

fn remote_object_text(o: &Value) -> String {
    match o.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => o["description"]
            .as_str()
            .or(o["type"].as_str())
            .unwrap_or_default()
            .to_owned(),
    }
}

fn exception_text(details: &Value) -> String {
    let described = details["exception"]["description"].as_str();
    let value = details["exception"].get("value").map(Value::to_string);
    let text = details["text"].as_str().unwrap_or("exception");
    match (described, value) {
        (Some(d), _) => d.to_owned(),
        (None, Some(v)) => format!("{text} {v}"),
        (None, None) => text.to_owned(),
    }
}

/// A running headless Chromium with a temporary profile; killed when dropped.
pub struct Browser {
    child: Child,
    cdp: Arc<Cdp>,
    stderr: Arc<Mutex<Vec<String>>>,
    _profile: TempDir,
}

impl Browser {
    /// Starts Chromium (see [`chromium_bin`]) headless with a fresh `--user-data-dir` and
    /// connects to its DevTools socket. Fails the test if Chromium is missing or does not
    /// come up within 60 s.
    pub async fn launch() -> Browser {
        let bin = chromium_bin();
        assert!(
            bin.is_file(),
            "Chromium not found at {} (set $CHROMIUM to another binary): the browser tests \
             need it — install it with `apt-get install -y chromium` (.ci/run does)",
            bin.display()
        );
        let profile = tempfile::tempdir().expect("temp dir for the Chromium profile");
        let mut child = Command::new(&bin)
            // A process group of its own, so dropping the browser ends its helper
            // processes (zygote, renderers, GPU, network service) too.
            .process_group(0)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("stderr");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = lines.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_owned());
                    }
                }
                let mut kept = kept.lock().expect("stderr lock");
                if kept.len() < 200 {
                    kept.push(line);
                }
            }
        });
        let ws_url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .expect("join");
        let ws_url = match ws_url {
            Ok(url) => url,
            Err(_) => {
                kill_group(&mut child);
                panic!(
                    "Chromium ({}) did not open its DevTools socket; its stderr:\n{}",
                    bin.display(),
                    lines.lock().expect("stderr lock").join("\n")
                );
            }
        };
        let cdp = Arc::new(Cdp::connect(&ws_url).await);
        Browser {
            child,
            cdp,
            stderr: lines,
            _profile: profile,
        }
    }

    /// The browser's version string, e.g. `Chrome/148.0.7778.167` (`Browser.getVersion`).
    pub async fn version(&self) -> String {
        let v = self
            .cdp
            .call(None, "Browser.getVersion", json!({}))
            .await
            .unwrap_or_else(|e| panic!("Browser.getVersion: {e}"));
        v["product"].as_str().unwrap_or_default().to_owned()
    }

    /// Opens a new tab on `url` and waits for its `load` event (module scripts have run by
    /// then). A navigation error (refused connection, bad URL) fails the test.
    pub async fn page(&self, url: &str) -> Page {
        let page = self.blank_page().await;
        page.goto(url).await;
        page
    }

    /// Opens a new tab on `about:blank`, with console collection on.
    pub async fn blank_page(&self) -> Page {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await
            .unwrap_or_else(|e| panic!("Target.createTarget: {e}"));
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await
            .unwrap_or_else(|e| panic!("Target.attachToTarget: {e}"));
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        self.cdp
            .consoles
            .lock()
            .expect("consoles lock")
            .insert(session.clone(), console.clone());
        let page = Page {
            cdp: self.cdp.clone(),
            session,
            target_id,
            console,
            browser_stderr: self.stderr.clone(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }

    /// Every CDP event from now on (for tests that watch the protocol directly).
    pub fn events(&self) -> broadcast::Receiver<CdpEvent> {
        self.cdp.events.subscribe()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Kills a browser's whole process group (its own, see [`Browser::launch`]) and reaps it.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// A tab of a [`Browser`].
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    target_id: String,
    console: Arc<Mutex<Vec<String>>>,
    browser_stderr: Arc<Mutex<Vec<String>>>,
}

impl Page {
    /// Sends a CDP command to this tab and returns its result; a protocol error fails the
    /// test (with the console so far).
    pub async fn call(&self, method: &str, params: Value) -> Value {
        match self.cdp.call(Some(&self.session), method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}{}", self.console_report()),
        }
    }

    /// Navigates to `url` and waits (at most 30 s) for the `load` event.
    pub async fn goto(&self, url: &str) {
        let mut events = self.cdp.events.subscribe();
        let nav = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(err) = nav.get("errorText").and_then(Value::as_str) {
            panic!("navigating to {url}: {err}{}", self.console_report());
        }
        let deadline = Instant::now() + COMMAND_PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Ok(e))
                    if e.method == "Page.loadEventFired"
                        && e.session.as_deref() == Some(&self.session) =>
                {
                    return
                }
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    panic!("the browser went away while loading {url}")
                }
                Err(_) => panic!(
                    "{url} did not fire `load` within {COMMAND_PATIENCE:?}{}",
                    self.console_report()
                ),
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value as JSON; a
    /// promise is awaited (so `(async () => { … })()` works, and so does `fetch(…)
    /// .then(r => r.status)`). `undefined` is `null`. A thrown exception or rejected
    /// promise fails the test with the page's console.
    pub async fn eval(&self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(v) => v,
            Err(e) => panic!(
                "evaluating `{}` threw: {e}{}",
                short(expression),
                self.console_report()
            ),
        }
    }

    /// Like [`Page::eval`], with an exception or rejection returned as its text.
    pub async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "awaitPromise": true,
                    "returnByValue": true,
                    "userGesture": true,
                }),
            )
            .await;
        if let Some(details) = r.get("exceptionDetails") {
            return Err(exception_text(details));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Calls a JavaScript function given as source, e.g. `async () => { … }`, and returns
    /// its (awaited) value: `eval("(SRC)()")`.
    pub async fn call_fn(&self, function: &str) -> Value {
        self.eval(&format!("({function})()")).await
    }

    /// Evaluates `condition` in the page until it is truthy, for at most `timeout`; returns
    /// its last value. Polling the page's own state is the synchronisation: the test fails
    /// with the condition, its last value and the console if it never holds.
    pub async fn wait_for(&self, condition: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.try_eval(condition).await;
            if let Ok(v) = &v {
                if truthy(v) {
                    return v.clone();
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "`{}` did not hold within {timeout:?}; last: {v:?}{}",
                    short(condition),
                    self.console_report()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sets the viewport, in CSS pixels (`Emulation.setDeviceMetricsOverride`); `mobile`
    /// emulates a phone's viewport meta handling.
    pub async fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    /// Saves a PNG screenshot of the viewport at `path` (its directory is created).
    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The console messages, uncaught exceptions and browser log entries so far.
    pub fn console(&self) -> Vec<String> {
        self.console.lock().expect("console lock").clone()
    }

    /// Waits (at most `timeout`) until a console line contains `needle`; returns that line.
    pub async fn wait_for_console(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.console().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no console line with `{needle}` within {timeout:?}{}",
                    self.console_report()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The console (and, if the page logged nothing, Chromium's stderr) as a block to append
    /// to a failure message.
    pub fn console_report(&self) -> String {
        let console = self.console();
        if console.is_empty() {
            let stderr = self.browser_stderr.lock().expect("stderr lock").join("\n");
            return format!("\n(the page logged nothing; Chromium's stderr:\n{stderr})");
        }
        format!("\nthe page's console:\n{}", console.join("\n"))
    }

    /// Closes the tab.
    pub async fn close(self) {
        let _ = self
            .cdp
            .call(
                None,
                "Target.closeTarget",
                json!({"targetId": self.target_id}),
            )
            .await;
    }
}

/// JavaScript truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A tiny static HTTP/1.1 server on 127.0.0.1 (an ephemeral port) for a test's own pages:
/// `GET path` answers the file registered for it, anything else 404. Each answer closes
/// its connection. It runs until dropped.
pub struct StaticSite {
    /// Where it listens.
    pub addr: SocketAddr,
    files: Files,
    task: tokio::task::JoinHandle<()>,
}

impl StaticSite {
    /// Starts an empty site.
    pub async fn start() -> StaticSite {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the static site");
        let addr = listener.local_addr().expect("address");
        let files: Files = Arc::default();
        let served = files.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let served = served.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let mut parts = head.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_owned();
                    let target = parts.next().unwrap_or_default();
                    let path = target.split('?').next().unwrap_or_default().to_owned();
                    let file = served.lock().expect("files lock").get(&path).cloned();
                    let (status, ctype, body) = match file {
                        Some((ctype, body)) => ("200 OK", ctype, body),
                        None => ("404 Not Found", "text/plain".into(), b"not found".to_vec()),
                    };
                    let mut answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\
                         cache-control: no-store\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    if method != "HEAD" {
                        answer.extend_from_slice(&body);
                    }
                    let _ = conn.write_all(&answer).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        StaticSite { addr, files, task }
    }

    /// Serves `body` with `content_type` at `path` (which starts with `/`).
    pub fn add(&self, path: &str, content_type: &str, body: impl Into<Vec<u8>>) {
        self.files
            .lock()
            .expect("files lock")
            .insert(path.to_owned(), (content_type.to_owned(), body.into()));
    }

    /// Serves an HTML page at `path`.
    pub fn html(&self, path: &str, html: &str) {
        self.add(path, "text/html; charset=utf-8", html);
    }

    /// The origin of this site's pages, `http://127.0.0.1:PORT`: what a broker must list in
    /// `--allowed-origins` for them to use it.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path` on this site, `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}
