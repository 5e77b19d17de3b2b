//! The JavaScript client's own tests (`client/js/test/*.test.mjs`) under Node's test
//! runner, against the real broker: this test starts a broker (ephemeral port, temporary
//! data dir), a proxy in front of it that can refuse WebSockets ([`WsProxy`]), and a
//! control endpoint through which the Node tests restart the broker and switch the proxy,
//! then runs `node --experimental-websocket --test` and fails on any Node failure,
//! printing Node's output.
//!
//! Node tests get, in the environment: `REWIND_URL` (the broker), `REWIND_PROXY_URL` (the
//! proxy) and `REWIND_CONTROL_URL`, which answers `POST /restart` (kill -9, then the broker
//! again on the same port and data dir, answered once it listens), `POST /ws/refuse`,
//! `POST /ws/cut` (handshakes pass, each socket is cut 100 ms later), `POST /ws/allow`
//! and `GET /ws/upgrades` (WebSocket handshakes the proxy passed); and `REWIND_AUTH_URL`,
//! a second broker that checks HS256 tokens made with `REWIND_AUTH_SECRET` (no leeway, a
//! 2 s expiry warning), for `auth.test.mjs`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rewind_tests::proxy::WsProxy;
use rewind_tests::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long the whole Node run may take before it is killed and the test fails.
const NODE_PATIENCE: Duration = Duration::from_secs(240);

/// `node` from `$NODE`, else from `PATH`; a missing Node fails the test with what to do.
pub fn node() -> PathBuf {
    let node = std::env::var_os("NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let version = Command::new(&node).arg("--version").output();
    let Ok(out) = version else {
        panic!("Node.js (>= 20.10) is needed for the JavaScript client's tests: install it (apt-get install -y nodejs) or set $NODE");
    };
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major: u32 = text
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(major >= 20, "Node.js >= 20.10 is needed, found {text:?}");
    node
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/js")
}

/// Serves the control endpoint on a thread of its own; returns its address.
fn control(broker: Arc<Mutex<Broker>>, proxy: WsProxy) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("listener");
            while let Ok((mut tcp, _)) = listener.accept().await {
                let broker = Arc::clone(&broker);
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let (status, body) = match line.split(' ').take(2).collect::<Vec<_>>()[..] {
                        ["POST", "/restart"] => {
                            let restarted = tokio::task::spawn_blocking(move || {
                                let mut b = broker.lock().expect("broker lock");
                                b.kill9();
                                b.restart();
                            })
                            .await;
                            match restarted {
                                Ok(()) => ("200 OK", "restarted".to_owned()),
                                Err(e) => ("500 Internal Server Error", e.to_string()),
                            }
                        }
                        ["POST", "/ws/refuse"] => {
                            proxy.refuse_websockets(true);
                            ("200 OK", "refusing".to_owned())
                        }
                        ["POST", "/ws/cut"] => {
                            proxy.cut_websockets(true);
                            ("200 OK", "cutting".to_owned())
                        }
                        ["POST", "/ws/allow"] => {
                            proxy.refuse_websockets(false);
                            proxy.cut_websockets(false);
                            ("200 OK", "allowing".to_owned())
                        }
                        ["GET", "/ws/upgrades"] => ("200 OK", proxy.upgrades().to_string()),
                        _ => ("404 Not Found", format!("no control {line}")),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\naccess-control-allow-origin: *\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(answer.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
    });
    addr
}

/// Runs `node args…` in `client/js` with `env`, killed past [`NODE_PATIENCE`]; returns
/// whether it succeeded and everything it printed.
fn run_node(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let mut cmd = Command::new(node());
    // A process group of its own: `node --test` runs each file in a child process, which
    // must not outlive a run killed for taking too long.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.current_dir(js_dir())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("node starts");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + NODE_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "{}{}",
        reader.join().unwrap_or_default(),
        err_reader.join().unwrap_or_default()
    );
    match status {
        Some(s) => (s.success(), output),
        None => (
            false,
            format!("node ran past {NODE_PATIENCE:?} and was killed\n{output}"),
        ),
    }
}

#[test]
fn javascript_client_tests_pass_under_node_against_the_real_broker() {
    let broker = Broker::start(&[]);
    let url = broker.url();
    let proxy = WsProxy::start(broker.addr);
    let broker = Arc::new(Mutex::new(broker));
    let control = control(Arc::clone(&broker), proxy.clone());
    let secret_dir = tempfile::tempdir().expect("temp dir");
    let secret = "js-client-test-secret-of-at-least-32-bytes";
    let secret_file = secret_dir.path().join("secret");
    std::fs::write(&secret_file, secret).expect("write the secret");
    let secured = Broker::start(&[
        "--auth-secret-file",
        secret_file.to_str().expect("utf-8 path"),
        "--auth-leeway-secs",
        "0",
        "--auth-expiry-warning-secs",
        "2",
    ]);
    let (ok, output) = run_node(
        &[
            "--experimental-websocket",
            "--test",
            "--test-concurrency=1",
            "--test-reporter=tap",
            "test/",
        ],
        &[
            ("REWIND_URL", url),
            ("REWIND_PROXY_URL", proxy.url()),
            ("REWIND_CONTROL_URL", format!("http://{control}")),
            ("REWIND_AUTH_URL", secured.url()),
            ("REWIND_AUTH_SECRET", secret.to_owned()),
        ],
    );
    // The control thread keeps its handle for ever: the broker is stopped here.
    broker.lock().expect("broker lock").kill9();
    println!("{output}");
    assert!(ok, "the JavaScript client's Node tests failed:\n{output}");
    // The run covered both files (a test runner that found nothing would succeed too).
    for file in ["logic.test.mjs", "broker.test.mjs", "auth.test.mjs"] {
        assert!(
            js_dir().join("test").join(file).is_file(),
            "client/js/test/{file} is missing"
        );
    }
    let count = |what: &str| -> usize {
        output
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("# {what} ")))
            .filter_map(|n| n.trim().parse::<usize>().ok())
            .sum()
    };
    assert_eq!(count("fail"), 0, "{output}");
    assert!(count("pass") >= 20, "too few Node tests ran:\n{output}");
}
