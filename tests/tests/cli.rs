//! The `rewind` CLI's client commands against the real broker.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rewind_tests::{rewind_bin, Broker};

fn rewind(args: &[&str], url: &str) -> std::process::Output {
    Command::new(rewind_bin())
        .args(args)
        .args(["--url", url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run rewind")
}

#[tokio::test]
async fn publish_and_namespaces_print_what_they_did() {
    let b = Broker::start(&[]);
    let url = b.url();
    let out = rewind(
        &["publish", "cli.ns", "hello", "--data", r#"{"a":1}"#],
        &url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), [0u8, 1, 2]).unwrap();
    let out = rewind(
        &[
            "publish",
            "cli.ns",
            "bytes",
            "--file",
            file.path().to_str().unwrap(),
        ],
        &url,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let out = rewind(&["namespaces"], &url);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.starts_with("NAME"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("cli.ns"))
        .expect("a row");
    assert!(
        row.split_whitespace().collect::<Vec<_>>()[2..5] == ["0", "2", "2"],
        "{row}"
    );
    // Errors go to stderr with a non-zero exit.
    let out = rewind(&["publish", "a..b", "e", "--data", "1"], &url);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_namespace"));
    let out = rewind(&["publish", "x", "e", "--data", "not json"], &url);
    assert!(!out.status.success());
}

#[tokio::test]
async fn tail_prints_every_offset_once_across_a_kill9_and_restart() {
    let mut b = Broker::start(&[]);
    let mut tail = Command::new(rewind_bin())
        .args(["tail", "tailed", "--from", "earliest", "--url", &b.url()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tail");
    let stdout = tail.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let offsets = |n: usize| -> Vec<u64> {
        (0..n)
            .map(|_| {
                let line = lines
                    .recv_timeout(Duration::from_secs(20))
                    .expect("a line from tail");
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert!(
                    v["event"].is_string() && v["ts"].is_u64() && !v["data"].is_null(),
                    "{line}"
                );
                v["offset"].as_u64().unwrap()
            })
            .collect()
    };
    for i in 0..50 {
        b.post_json(
            "/v1/namespaces/tailed/events",
            &format!(r#"{{"event":"n","data":{i}}}"#),
        )
        .await;
    }
    let mut got = offsets(50);
    b.kill9();
    b.restart();
    for i in 50..100 {
        b.post_json(
            "/v1/namespaces/tailed/events",
            &format!(r#"{{"event":"n","data":{i}}}"#),
        )
        .await;
    }
    got.extend(offsets(50));
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    let _ = tail.kill();
    let _ = tail.wait();
    // Everything it printed before it was stopped: nothing beyond the 100, so no offset
    // twice (the reader ends at the closed pipe, which ends the channel).
    let rest: Vec<String> = lines.iter().collect();
    assert!(rest.is_empty(), "{rest:?}");
}
