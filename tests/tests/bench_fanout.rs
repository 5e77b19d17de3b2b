//! `rewind bench fanout` / `namespaces` / `idle` / `publish` parse their options and run tiny cases, and
//! the fan-out load generator counts what it was owed: against rewind nothing is lost, and
//! a `--target` peer that drops events is reported as losing them (small sizes: this
//! checks the bench works, not the numbers).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use rewind_tests::rewind_bin;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// Runs `rewind bench ARGS --json`; one JSON object per scenario.
fn bench_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new(rewind_bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .expect("rewind runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

#[test]
fn fanout_flood_and_paced_against_rewind_lose_nothing_and_report_both_cpus() {
    for durability in ["durable", "relaxed"] {
        let rows = bench_json(&[
            "fanout",
            "--subscribers",
            "3",
            "--seconds",
            "1",
            "--rate",
            "100",
            "--durability",
            durability,
        ]);
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let (flood, paced) = (&rows[0], &rows[1]);
        for r in &rows {
            let name = r["name"].as_str().expect("a name");
            assert!(name.contains(&format!("rewind ({durability})")), "{name}");
            assert_eq!(r["lost"], 0, "{r}");
            assert!(num(r, "events_per_sec") > 0.0, "{r}");
            assert!(num(r, "server_cpu_s_per_million") > 0.0, "{r}");
            assert!(num(r, "loadgen_cores") > 0.0, "{r}");
            assert!(num(r, "p50_us") <= num(r, "p99_us"), "{r}");
            assert!(num(r, "p99_us") <= num(r, "p999_us"), "{r}");
            assert!(num(r, "p999_us") <= num(r, "max_us"), "{r}");
        }
        assert!(flood["name"].as_str().is_some_and(|n| n.contains("flood")));
        // 100 events/s for 1 s to 3 subscribers: about 300 deliveries, every one timed.
        let paced_rate = num(paced, "events_per_sec");
        assert!((200.0..=400.0).contains(&paced_rate), "{paced}");
    }
}

#[test]
fn idle_namespaces_and_publish_run_tiny_cases() {
    let many = bench_json(&[
        "namespaces",
        "--namespaces",
        "20",
        "--rate",
        "100",
        "--seconds",
        "1",
    ]);
    assert_eq!(many.len(), 1, "{many:#?}");
    // 100 events/s round-robin over 20 namespaces, one subscriber each: each event is one
    // delivery, and none is lost.
    assert_eq!(many[0]["lost"], 0, "{}", many[0]);
    let delivered = num(&many[0], "events_per_sec");
    assert!((80.0..=140.0).contains(&delivered), "{}", many[0]);
    assert!(
        num(&many[0], "server_cpu_s_per_million") > 0.0,
        "{}",
        many[0]
    );

    let idle = bench_json(&["idle", "--connections", "20"]);
    assert_eq!(idle.len(), 1);
    let name = idle[0]["name"].as_str().expect("a name");
    assert!(
        name.contains("20 connections") && name.contains("KiB each"),
        "{name}"
    );

    let publish = bench_json(&[
        "publish",
        "--seconds",
        "1",
        "--ws-only",
        "--durability",
        "relaxed",
    ]);
    assert_eq!(publish.len(), 2, "{publish:#?}");
    for r in &publish {
        assert!(
            r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("relaxed ")),
            "{r}"
        );
        assert!(num(r, "events_per_sec") > 0.0, "{r}");
        // The broker is a child process, so its CPU is its own (issue 14 part B).
        assert!(num(r, "server_cpu_s_per_million") > 0.0, "{r}");
        assert!(num(r, "loadgen_cores") >= 0.0, "{r}");
    }
}

/// A bare-broadcast peer speaking the `--target` protocol that forwards all but every
/// `drop_every`-th publish (none when 0); returns its `ws://` URL.
async fn peer(drop_every: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let subs: Arc<Mutex<Vec<mpsc::UnboundedSender<Message>>>> = Arc::default();
    let seen = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (subs, seen) = (Arc::clone(&subs), Arc::clone(&seen));
            tokio::spawn(async move {
                let mut path = String::new();
                // The callback's error type is tungstenite's (an HTTP response), not ours.
                #[allow(clippy::result_large_err)]
                let cb = |req: &Request, res: Response| {
                    path = req.uri().path().to_owned();
                    Ok(res)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                if path == "/sub" {
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    subs.lock().expect("not poisoned").push(tx);
                    if sink.send(Message::text("ready")).await.is_err() {
                        return;
                    }
                    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
                    while let Some(m) = rx.recv().await {
                        if sink.send(m).await.is_err() {
                            return;
                        }
                    }
                } else {
                    while let Some(Ok(m)) = stream.next().await {
                        let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
                        if !m.is_text() || (drop_every > 0 && n % drop_every == 0) {
                            continue;
                        }
                        for tx in subs.lock().expect("not poisoned").iter() {
                            let _ = tx.send(m.clone());
                        }
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_peer_is_measured_and_its_losses_are_reported() {
    for drop_every in [0u64, 10] {
        let url = peer(drop_every).await;
        let rows = tokio::task::spawn_blocking(move || {
            bench_json(&[
                "fanout",
                "--subscribers",
                "2",
                "--seconds",
                "1",
                "--case",
                "paced",
                "--rate",
                "200",
                "--target",
                &url,
            ])
        })
        .await
        .expect("bench ran");
        assert_eq!(rows.len(), 1, "{rows:#?}");
        let r = &rows[0];
        assert!(
            r["name"]
                .as_str()
                .is_some_and(|n| n.contains("peer at ws://")),
            "{r}"
        );
        // No --target-pid: the peer's CPU is not measured, and says so.
        assert!(r["server_cpu_s_per_million"].is_null(), "{r}");
        let lost = r["lost"].as_u64().expect("lost counted");
        let delivered = num(r, "events_per_sec");
        if drop_every == 0 {
            assert_eq!(lost, 0, "{r}");
            assert!(r["warning"].is_null(), "{r}");
        } else {
            // One publish in ten never reaches either subscriber.
            let owed = delivered + lost as f64;
            assert!(
                (lost as f64) >= owed / 12.0 && (lost as f64) <= owed / 8.0,
                "{r}"
            );
            assert!(
                r["warning"]
                    .as_str()
                    .is_some_and(|w| w.contains(&format!("{lost} deliveries lost"))),
                "{r}"
            );
        }
    }
}

/// The processes whose command line names `path`.
fn processes_naming(path: &std::path::Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

/// A benchmark told to stop (Ctrl-C's SIGINT, or SIGTERM) stops the broker it started and
/// removes that broker's temporary data directory, and says why it ended (a tester found
/// both left behind).
#[test]
fn an_interrupted_benchmark_leaves_no_broker_and_no_temporary_directory() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    for signal in ["INT", "TERM"] {
        let tmp = tempfile::tempdir().unwrap();
        let child = Command::new(rewind_bin())
            .args(["bench", "fanout", "--subscribers", "2", "--case", "paced"])
            .args(["--rate", "10", "--seconds", "600"])
            .env("TMPDIR", tmp.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rewind runs");
        // Polled (nothing announces it): the broker is running on its data directory.
        let deadline = Instant::now() + Duration::from_secs(30);
        while processes_naming(tmp.path()).is_empty() {
            assert!(Instant::now() < deadline, "no broker started under {tmp:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_some());
        let sent = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{signal}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by SIG{signal}")),
            "{stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{signal}: left behind {left:?}");
        let running = processes_naming(tmp.path());
        assert!(running.is_empty(), "{signal}: still running {running:?}");
    }
}
