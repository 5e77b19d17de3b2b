//! Running the broker as an operator does: configuration from flags, `REWIND_*` variables
//! and TOML, what goes to stderr, and what a load balancer sees during shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rewind_tests::{refusal, request, rewind_bin, spawn_piped, Broker};
use rewind_tests::{Method, StatusCode};

/// A broker whose stderr is a pipe (so not a terminal), kept for inspection.
struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: Option<JoinHandle<String>>,
    lines: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Served {
    /// `rewind serve` on port 0 with a temporary data directory, `args` and `env` added.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let piped = spawn_piped(
            Command::new(rewind_bin())
                .args(["serve", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(listen)
                .args(args)
                .env_remove("REWIND_CONFIG")
                .env("RUST_LOG", "info")
                .envs(env.iter().copied()),
        );
        Served {
            child: piped.child,
            addr: piped.addr,
            stderr: Some(piped.stderr),
            lines: piped.lines,
            _dir: dir,
        }
    }

    /// Waits (at most 20 s) for a line of stderr containing `needle`; panics without one.
    fn wait_for_line(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {needle:?}: {e}"),
            }
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
    // A connection made before the signal whose request comes after it.
    let mut early = TcpStream::connect(b.addr).unwrap();
    b.sigterm();
    // Every answer is 200 until the signal is handled, then 503; never a refused
    // connection while the publish is still in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = b
            .get("/readyz")
            .await
            .expect("readyz answers during the drain");
        if res.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(res.error_code(), "shutting_down");
            break;
        }
        assert_eq!(res.status, StatusCode::OK);
        assert!(Instant::now() < deadline, "readyz never turned 503");
        tokio::task::yield_now().await;
    }
    early
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    early.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("shutting_down"), "{answer}");
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

/// One raw `GET path` on a new connection (`Connection: close`): the whole answer, or
/// what the read met instead (a reset, a timeout after 20 s).
fn raw_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    match stream.read_to_string(&mut answer) {
        Ok(_) if !answer.is_empty() => Ok(answer),
        Ok(_) => Err("closed without an answer".to_owned()),
        Err(e) => Err(format!("{e} after {answer:?}")),
    }
}

/// A broker with one connection slot (and a shutdown timeout of 60 s), held by a publish
/// in flight, and a second connection (20 s read timeout) it has accepted and is waiting
/// for a slot for — once its debug line says so.
fn one_slot_held_and_a_connection_waiting() -> (Served, InFlight, TcpStream) {
    let b = Served::start(
        &["--max-connections", "1", "--shutdown-timeout-secs", "60"],
        &[("RUST_LOG", "info,rewind_broker::server=debug")],
    );
    let publish = InFlight::start(b.addr);
    let waiting = TcpStream::connect(b.addr).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    b.wait_for_line("a new connection waits for one");
    (b, publish, waiting)
}

/// Sends the body of `publish` (held open across the signal), checks it is still answered
/// `201`, and that the broker then exits 0.
async fn publish_finishes_and_the_broker_exits(b: Served, publish: InFlight) {
    let answer = tokio::task::spawn_blocking(move || publish.finish())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let (status, stderr) = tokio::task::spawn_blocking(move || b.wait()).await.unwrap();
    assert!(status.success(), "{stderr}");
}

/// With every slot held by a request in flight, shutdown still answers every connection:
/// the one the broker accepted before the signal but had no slot for, and new ones during
/// the drain (a tester found them left in the backlog and reset at exit).
#[tokio::test]
async fn connections_without_a_slot_are_answered_while_in_flight_work_drains() {
    let (b, publish, mut waiting) = one_slot_held_and_a_connection_waiting();
    waiting
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    b.sigterm();
    let mut answer = String::new();
    let read = waiting.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{read:?}: {answer:?}");
    assert!(answer.contains("shutting_down"), "{answer}");
    let addr = b.addr;
    let during = tokio::task::spawn_blocking(move || {
        ["/readyz", "/healthz", "/v1/namespaces", "/readyz"].map(|path| (path, raw_get(addr, path)))
    })
    .await
    .unwrap();
    for (path, answer) in during {
        let answer = answer.unwrap_or_else(|e| panic!("{path} during the drain: {e}"));
        let want = if path == "/healthz" {
            "HTTP/1.1 200"
        } else {
            "HTTP/1.1 503"
        };
        assert!(answer.starts_with(want), "{path}: {answer}");
    }
    publish_finishes_and_the_broker_exits(b, publish).await;
}

/// The connection that was waiting for a slot at the signal, like one accepted before it,
/// gets a moment to send its request even if the drain is over by then (the reviewer
/// showed it cut when the drain ended first).
#[tokio::test]
async fn a_connection_waiting_for_a_slot_may_send_its_request_after_the_drain() {
    let (b, publish, mut late) = one_slot_held_and_a_connection_waiting();
    b.sigterm();
    // Draining: a new connection is answered 503.
    let addr = b.addr;
    let draining = tokio::task::spawn_blocking(move || raw_get(addr, "/readyz"))
        .await
        .unwrap()
        .expect("an answer during the drain");
    assert!(draining.starts_with("HTTP/1.1 503"), "{draining}");
    let answer = tokio::task::spawn_blocking(move || publish.finish())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // A client that sends its request a little after the drain ended (not a wait for
    // anything: the request is late on purpose, well within the 1 s it is given).
    tokio::time::sleep(Duration::from_millis(200)).await;
    late.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let read = late.read_to_string(&mut answer);
    let (status, stderr) = b.wait();
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "{read:?}: {answer:?}\n{stderr}"
    );
    assert!(status.success(), "{stderr}");
}

/// A long-poll holding the only slot is answered at the signal, so the drain ends at once:
/// the connections queued behind it, their requests sent before the signal, are still
/// answered (a tester found 129 of 150 reset).
#[tokio::test]
async fn connections_queued_when_the_drain_ends_at_once_are_answered() {
    let b = Served::start(
        &["--max-connections", "1", "--shutdown-timeout-secs", "60"],
        &[("RUST_LOG", "info,rewind_broker::server=debug")],
    );
    // One connection: a publish (so the namespace exists), then a long-poll past it.
    let mut held = TcpStream::connect(b.addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let body = r#"{"event":"e","data":1}"#;
    write!(
        held,
        "POST /v1/namespaces/lp/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut created = [0u8; 12];
    held.read_exact(&mut created).unwrap();
    assert_eq!(&created, b"HTTP/1.1 201");
    held.write_all(b"GET /v1/namespaces/lp/events?from=1&wait=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut queued: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut c = TcpStream::connect(b.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    b.wait_for_line("a new connection waits for one");
    b.sigterm();
    for (i, c) in queued.iter_mut().enumerate() {
        let mut answer = String::new();
        let read = c.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 503"),
            "queued {i}: {read:?}: {answer:?}"
        );
    }
    let (status, stderr) = b.wait();
    assert!(status.success(), "{stderr}");
}

/// Connections opened during the drain that send nothing hold the draining server's places
/// for at most 1 s, not `http_header_timeout_secs` (60 here): a health check behind them is
/// answered (a tester found such probes starved until the head timeout, or reset).
#[tokio::test]
async fn silent_connections_during_the_drain_do_not_starve_health_checks() {
    let b = Served::start(
        &[
            "--max-connections",
            "1",
            "--shutdown-timeout-secs",
            "60",
            "--http-header-timeout-secs",
            "60",
        ],
        &[],
    );
    let publish = InFlight::start(b.addr);
    b.sigterm();
    let addr = b.addr;
    // Draining (a probe answered 503), then two silent connections, then a probe.
    let (first, silent, probe) = tokio::task::spawn_blocking(move || {
        let first = raw_get(addr, "/readyz");
        let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        (first, silent, raw_get(addr, "/readyz"))
    })
    .await
    .unwrap();
    let first = first.expect("an answer during the drain");
    assert!(first.starts_with("HTTP/1.1 503"), "{first}");
    let probe = probe.expect("a probe behind silent connections is answered");
    assert!(probe.starts_with("HTTP/1.1 503"), "{probe}");
    drop(silent);
    publish_finishes_and_the_broker_exits(b, publish).await;
}

#[tokio::test]
async fn a_shutdown_timeout_blames_only_what_is_really_left_open() {
    let b = Served::start(&["--shutdown-timeout-secs", "1"], &[]);
    let publish = InFlight::start(b.addr);
    b.sigterm();
    let (status, stderr) = tokio::task::spawn_blocking(move || b.wait()).await.unwrap();
    drop(publish);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("connections still open after the shutdown timeout"),
        "{stderr}"
    );
    // No WebSocket was ever open.
    assert!(
        !stderr.contains("WebSocket sessions still open"),
        "{stderr}"
    );
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

/// `rewind serve` with `args` and `env` (on port 0 unless `args` say otherwise, in a
/// temporary directory), which must fail to start: its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let listen: &[&str] = if args.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    refusal(
        Command::new(rewind_bin())
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(listen)
            .args(args)
            .envs(env.iter().copied()),
    )
}

/// A TOML file holding `text`.
fn toml_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("rewind.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_bad_toml_file_is_reported_once_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "max_batch_events = \"many\"\n",
            "key `max_batch_events`",
            "\"many\"",
        ),
        ("auto_create = 1\n", "key `auto_create`", "true or false"),
        ("write_queue = -3\n", "key `write_queue`", "-3"),
        ("durability = \"fast\"\n", "key `durability`", "\"fast\""),
        ("listen = \"localhost\"\n", "key `listen`", "HOST:PORT"),
        ("lissen = \"127.0.0.1:0\"\n", "key `lissen`", "unknown key"),
        (
            "[retention]\nmax_age_secs = 0\n",
            "key `retention.max_age_secs`",
            "none",
        ),
        (
            "[retention]\nmax_agesecs = 5\n",
            "key `retention.max_agesecs`",
            "unknown key",
        ),
        (
            "retention_max_events = 0\n",
            "key `retention_max_events`",
            "none",
        ),
        (
            "retention_max_bytes = 10\n[retention]\nmax_bytes = 20\n",
            "retention.max_bytes",
            "retention_max_bytes",
        ),
        ("max_wait_secs = 0x\n", "not valid TOML", "line 1"),
    ];
    for (text, names, says) in cases {
        let file = toml_file(&dir, text);
        // No --listen, so nothing overrides the file's.
        let err = refusal(
            Command::new(rewind_bin())
                .args(["serve", "--config", &file, "--data-dir"])
                .arg(dir.path().join("data")),
        );
        assert!(err.contains(&file), "{text}: {err}");
        assert!(err.contains(names), "{text}: {err}");
        assert!(err.contains(says), "{text}: {err}");
        // Once: the file is named on one line only, and that line is the first.
        assert_eq!(err.matches(&file).count(), 1, "{text}: {err}");
        assert!(err.starts_with("rewind: config file"), "{text}: {err}");
    }
}

#[test]
fn a_bad_variable_is_named_as_the_variable() {
    let cases = [
        ("REWIND_WRITE_QUEUE", "abc"),
        ("REWIND_WRITE_QUEUE", "0"),
        ("REWIND_MAX_WAIT_SECS", "-1"),
        ("REWIND_AUTO_CREATE", "yes"),
        ("REWIND_DURABILITY", "fast"),
        ("REWIND_LISTEN", "nowhere"),
        ("REWIND_RETENTION_MAX_AGE_SECS", "0"),
        ("REWIND_RETENTION_MAX_EVENTS", "lots"),
    ];
    for (name, value) in cases {
        // Without --listen, so a bad REWIND_LISTEN is not overridden (the last value
        // given for a variable is the one the process gets).
        let dir = tempfile::tempdir().unwrap();
        let err = refusal(
            Command::new(rewind_bin())
                .args(["serve", "--data-dir"])
                .arg(dir.path())
                .env("REWIND_LISTEN", "127.0.0.1:0")
                .env(name, value),
        );
        assert!(
            err.contains(&format!("environment variable {name}=\"{value}\"")),
            "{name}={value}: {err}"
        );
        let flag = format!(
            "--{}",
            name["REWIND_".len()..].to_lowercase().replace('_', "-")
        );
        assert!(!err.contains(&flag), "{name}={value}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}={value}: {err}");
    }
    // The same mistake as a flag names the flag.
    let err = refused(&["--write-queue", "abc"], &[]);
    assert!(err.contains("--write-queue"), "{err}");
    assert!(!err.contains("REWIND_WRITE_QUEUE="), "{err}");
}

/// Every option `rewind serve --help` lists, with the default it shows. `--recover` is
/// not one: it is what one start is asked to do, never configuration (a TOML file or a
/// variable that recovered on every start would hide damage for good).
fn help_options() -> Vec<(String, String)> {
    let out = Command::new(rewind_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    help.split("\n      --")
        .skip(1)
        .filter(|chunk| {
            !chunk.starts_with("config")
                && !chunk.starts_with("help")
                && !chunk.starts_with("recover")
        })
        .map(|chunk| {
            let flag = chunk.split([' ', '\n']).next().unwrap().to_owned();
            let default = chunk
                .split("[default: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
                .unwrap_or_else(|| panic!("--{flag} shows no default"))
                .to_owned();
            (flag, default)
        })
        .collect()
}

/// A TOML value for what `--help` shows: a number, a boolean, or else a string.
fn toml_value(shown: &str) -> String {
    if shown.parse::<u64>().is_ok() || shown == "true" || shown == "false" {
        shown.to_owned()
    } else {
        format!("{shown:?}")
    }
}

#[tokio::test]
async fn every_option_in_help_is_a_toml_key_and_a_variable_taking_its_shown_default() {
    let options = help_options();
    assert!(options.len() >= 25, "{options:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut env = Vec::new();
    for (flag, default) in &options {
        let key = flag.replace('-', "_");
        // Port 0 and the test's own directory, so that the broker can start here.
        let value = match key.as_str() {
            "listen" => "127.0.0.1:0".to_owned(),
            "data_dir" => dir.path().join("data").to_str().unwrap().to_owned(),
            _ => default.clone(),
        };
        text.push_str(&format!("{key} = {}\n", toml_value(&value)));
        env.push((format!("REWIND_{}", key.to_uppercase()), value));
    }
    // From the file alone.
    let file = toml_file(&dir, &text);
    let b = Served::start(&["--config", &file, "--listen", "127.0.0.1:0"], &[]);
    let ns = b.get("/v1/namespaces").await.unwrap();
    assert_eq!(ns.status, StatusCode::OK);
    b.sigterm();
    let (status, stderr) = b.wait();
    assert!(status.success(), "{stderr}");
    // From the variables alone.
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = Served::start(&["--listen", "127.0.0.1:0"], &env);
    assert_eq!(b.get("/healthz").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn listen_takes_a_host_name() {
    let b = Served::start(&["--listen", "localhost:0"], &[]);
    assert!(b.addr.ip().is_loopback(), "{}", b.addr);
    assert_eq!(b.get("/healthz").await.unwrap().status, StatusCode::OK);
    let err = refused(&["--listen", "localhost"], &[]);
    assert!(err.contains("HOST:PORT"), "{err}");
    let err = refused(&["--listen", "no-such-host.invalid:0"], &[]);
    assert!(err.contains("no-such-host.invalid:0"), "{err}");
}

/// Publishes `n` events to `ns`.
async fn publish(b: &Broker, ns: &str, n: usize) {
    for i in 0..n {
        let res = b
            .post_json(
                &format!("/v1/namespaces/{ns}/events"),
                &format!(r#"{{"event":"e","data":{i}}}"#),
            )
            .await;
        assert_eq!(res.status, StatusCode::CREATED);
    }
}

#[tokio::test]
async fn retention_none_keeps_events_while_a_limit_removes_them() {
    // The file sets a 1 s default; the flag says no limit, and wins.
    let dir = tempfile::tempdir().unwrap();
    let file = toml_file(&dir, "retention_max_age_secs = 1\n");
    let b = Broker::start(&[
        "--config",
        &file,
        "--retention-max-age-secs",
        "none",
        "--retention-interval-ms",
        "20",
    ]);
    // A namespace of its own with a 1 s limit shows that retention runs.
    let put = b
        .put_json(
            "/v1/namespaces/short",
            r#"{"retention":{"max_age_secs":1}}"#,
        )
        .await;
    assert_eq!(put.json()["retention"]["max_age_secs"], 1);
    publish(&b, "kept", 3).await;
    publish(&b, "short", 3).await;
    b.wait_for("/v1/namespaces/short", |v| v["events"] == 0)
        .await;
    let kept = b.get("/v1/namespaces/kept").await.json();
    assert_eq!(kept["events"], 3, "{kept}");
    assert!(kept["retention"]["max_age_secs"].is_null(), "{kept}");
}

#[tokio::test]
async fn put_null_means_no_limit_over_a_configured_one_and_shows_null() {
    let dir = tempfile::tempdir().unwrap();
    let file = toml_file(&dir, "[retention]\nmax_age_secs = 1\nmax_events = 100\n");
    let mut b = Broker::start(&["--config", &file, "--retention-interval-ms", "20"]);
    let put = b
        .put_json(
            "/v1/namespaces/forever",
            r#"{"retention":{"max_age_secs":null,"max_events":null}}"#,
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED);
    let shown = put.json();
    assert!(shown["retention"]["max_age_secs"].is_null(), "{shown}");
    assert!(shown["retention"]["max_events"].is_null(), "{shown}");
    // Left out: the configured default applies.
    let put = b
        .put_json("/v1/namespaces/usual", r#"{"retention":{}}"#)
        .await;
    assert_eq!(put.json()["retention"]["max_age_secs"], 1);
    assert_eq!(put.json()["retention"]["max_events"], 100);
    publish(&b, "forever", 3).await;
    publish(&b, "usual", 3).await;
    b.wait_for("/v1/namespaces/usual", |v| v["events"] == 0)
        .await;
    let forever = b.get("/v1/namespaces/forever").await.json();
    assert_eq!(forever["events"], 3, "{forever}");
    assert!(forever["retention"]["max_age_secs"].is_null(), "{forever}");
    let listed = b.get("/v1/namespaces").await.json();
    let row = listed["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "forever")
        .unwrap()
        .clone();
    assert!(row["retention"]["max_age_secs"].is_null(), "{row}");
    // "No limit" is stored as such, not as "not set".
    b.kill9();
    b.restart();
    let forever = b.get("/v1/namespaces/forever").await.json();
    assert!(forever["retention"]["max_age_secs"].is_null(), "{forever}");
    assert!(forever["retention"]["max_events"].is_null(), "{forever}");
    assert_eq!(forever["events"], 3, "{forever}");
}

#[tokio::test]
async fn a_retention_limit_of_zero_is_refused_everywhere() {
    for flag in [
        "--retention-max-age-secs",
        "--retention-max-events",
        "--retention-max-bytes",
    ] {
        let err = refused(&[flag, "0"], &[]);
        assert!(err.contains(flag) && err.contains("none"), "{err}");
    }
    let err = refused(&[], &[("REWIND_RETENTION_MAX_BYTES", "0")]);
    assert!(
        err.contains("REWIND_RETENTION_MAX_BYTES") && err.contains("none"),
        "{err}"
    );
    let b = Broker::start(&[]);
    for field in ["max_age_secs", "max_events", "max_bytes"] {
        let res = b
            .put_json(
                "/v1/namespaces/zero",
                &format!(r#"{{"retention":{{"{field}":0}}}}"#),
            )
            .await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST);
        assert!(res.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("null"));
    }
    // Refused, so nothing was created.
    assert_eq!(
        b.get("/v1/namespaces/zero").await.status,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn every_bad_flag_is_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--write-queue", "abc"], "--write-queue", "from 1 up"),
        (&["--write-queue", "0"], "--write-queue", "at least 1"),
        (&["--write-queue", "-1"], "--write-queue", "from 1 up"),
        (&["--max-wait-secs", "-1"], "--max-wait-secs", "from 0 up"),
        (
            &["--max-wait-secs", "99999999999999999999"],
            "--max-wait-secs",
            "18446744073709551615",
        ),
        (
            &["--retention-max-events", "0"],
            "--retention-max-events",
            "none",
        ),
        (
            &["--retention-max-bytes", "lots"],
            "--retention-max-bytes",
            "none",
        ),
        (&["--durability", "fast"], "--durability", "relaxed"),
        (&["--auto-create", "yes"], "--auto-create", "true or false"),
        (&["--listen", "nowhere"], "--listen", "HOST:PORT"),
        (&["--write-queu", "3"], "--write-queu", "--write-queue"),
        (&["--write-queue"], "--write-queue", "value"),
        (
            &["--write-queue", "1", "--write-queue", "2"],
            "--write-queue",
            "multiple times",
        ),
        (&["stray"], "stray", "--help"),
    ];
    for (args, names, says) in cases {
        let err = refused(args, &[]);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("rewind: "), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Help and the version are not errors.
    for args in [&["serve", "--help"][..], &["--version"], &["--help"]] {
        let out = Command::new(rewind_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn range_messages_give_each_options_real_range() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("write_queue = -1\n", "from 1 up"),
        ("write_queue = \"many\"\n", "from 1 up"),
        ("max_wait_secs = -1\n", "from 0 up"),
        ("retention_max_events = -1\n", "from 1 up, or \"none\""),
    ];
    for (text, says) in cases {
        let file = toml_file(&dir, text);
        let err = refusal(
            Command::new(rewind_bin())
                .args(["serve", "--config", &file, "--data-dir"])
                .arg(dir.path().join("data")),
        );
        assert!(err.contains(says), "{text}: {err}");
        assert!(
            !err.contains("from 0 up") || says.contains("from 0 up"),
            "{text}: {err}"
        );
    }
    let err = refused(&[], &[("REWIND_FANOUT_BUFFER", "-5")]);
    assert!(err.contains("from 1 up"), "{err}");
}

#[test]
fn a_store_that_cannot_be_opened_gives_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let err = refusal(
        Command::new(rewind_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(file.join("data")),
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("opening the store"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

#[tokio::test]
async fn an_invalid_rust_log_is_named_once_and_the_default_filter_used() {
    for value in ["bogus[[", "info,=x=y"] {
        let b = Served::start(&[], &[("RUST_LOG", value)]);
        assert_eq!(b.get("/healthz").await.unwrap().status, StatusCode::OK);
        b.sigterm();
        let (status, stderr) = b.wait();
        assert!(status.success(), "{stderr}");
        assert_eq!(stderr.matches("RUST_LOG").count(), 1, "{value}: {stderr}");
        assert!(stderr.contains("WARN"), "{value}: {stderr}");
        // The default filter, info, is in force.
        assert!(stderr.contains("rewind started"), "{value}: {stderr}");
    }
}
