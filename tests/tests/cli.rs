//! The `rewind` CLI's client commands against the real broker.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rewind_tests::tls::TlsProxy;
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
    // `tail` does not create what it reads.
    let created = b.put_json("/v1/namespaces/tailed", "").await;
    assert_eq!(created.status, rewind_tests::StatusCode::CREATED);
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

/// Runs `rewind` with `stdin` as its standard input.
fn rewind_with_stdin(args: &[&str], url: &str, stdin: Stdio) -> std::process::Output {
    Command::new(rewind_bin())
        .args(args)
        .args(["--url", url])
        .env("RUST_LOG", "warn")
        .stdin(stdin)
        .output()
        .expect("run rewind")
}

/// Every line `rewind tail` printed, parsed.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn offsets(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|v| v["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn publish_lines_sends_a_file_of_thousands_of_lines_and_tail_reads_them_back() {
    let b = Broker::start(&[]);
    let url = b.url();
    // A log of 3,000 lines: text with quotes, backslashes, tabs and non-ASCII, blank lines,
    // a CRLF line ending, and a last line without a newline.
    let mut expected: Vec<String> = (0..3000)
        .map(|i| match i % 7 {
            0 => String::new(),
            1 => format!("{i} GET /api/items?id={i} \"quoted\" \\ back\tslash"),
            2 => format!("{i} héllo ✓ 日本"),
            _ => format!("2026-11-29T20:00:{:02} INFO request {i} done", i % 60),
        })
        .collect();
    expected[5] = "windows line".into();
    let mut text = String::new();
    for (i, line) in expected.iter().enumerate() {
        text.push_str(line);
        match i {
            5 => text.push_str("\r\n"),
            2999 => {}
            _ => text.push('\n'),
        }
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let out = rewind_with_stdin(
        &[
            "publish", "logs.app", "line", "--lines", "--key", "web-1", "--batch", "400",
        ],
        &url,
        Stdio::from(std::fs::File::open(file.path()).unwrap()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "published 3000 events to logs.app, offsets 0 to 2999\n"
    );
    // stderr is not a terminal here: no progress line.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    let all = json_lines(&rewind(
        &["tail", "logs.app", "--from", "earliest", "--no-follow"],
        &url,
    ));
    assert_eq!(offsets(&all), (0..3000).collect::<Vec<_>>());
    for (v, line) in all.iter().zip(&expected) {
        assert_eq!(v["data"], serde_json::Value::String(line.clone()), "{v}");
        assert_eq!(
            (v["event"].as_str(), v["key"].as_str()),
            (Some("line"), Some("web-1"))
        );
    }

    // --limit, with and without following; --from latest --no-follow prints nothing.
    let some = json_lines(&rewind(
        &[
            "tail",
            "logs.app",
            "--from",
            "10",
            "--no-follow",
            "--limit",
            "5",
        ],
        &url,
    ));
    assert_eq!(offsets(&some), [10, 11, 12, 13, 14]);
    let tail_end = json_lines(&rewind(
        &["tail", "logs.app", "--from", "2995", "--no-follow"],
        &url,
    ));
    assert_eq!(offsets(&tail_end), [2995, 2996, 2997, 2998, 2999]);
    let followed = json_lines(&rewind(
        &["tail", "logs.app", "--from", "earliest", "--limit", "3"],
        &url,
    ));
    assert_eq!(offsets(&followed), [0, 1, 2]);
    assert!(json_lines(&rewind(&["tail", "logs.app", "--no-follow"], &url)).is_empty());
    // A namespace that does not exist is an error, not an empty read.
    let missing = rewind(&["tail", "nothing.here", "--no-follow"], &url);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not_found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[tokio::test]
async fn publish_lines_follows_a_growing_input_and_counts_at_the_end() {
    let b = Broker::start(&[]);
    let mut child = Command::new(rewind_bin())
        .args([
            "publish",
            "logs.follow",
            "line",
            "--lines",
            "--url",
            &b.url(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rewind publish");
    let mut stdin = child.stdin.take().unwrap();
    // Lines written in stages arrive while the input is still open.
    for i in 0..5 {
        writeln!(stdin, "first {i}").unwrap();
    }
    stdin.flush().unwrap();
    b.wait_for("/v1/namespaces/logs.follow", |v| v["next"] == 5)
        .await;
    for i in 0..200 {
        writeln!(stdin, "second {i}").unwrap();
    }
    stdin.flush().unwrap();
    b.wait_for("/v1/namespaces/logs.follow", |v| v["next"] == 205)
        .await;
    write!(stdin, "last, without a newline").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "published 206 events to logs.follow, offsets 0 to 205\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let all = json_lines(&rewind(
        &["tail", "logs.follow", "--from", "200", "--no-follow"],
        &b.url(),
    ));
    let data: Vec<&str> = all.iter().map(|v| v["data"].as_str().unwrap()).collect();
    assert_eq!(
        data,
        [
            "second 195",
            "second 196",
            "second 197",
            "second 198",
            "second 199",
            "last, without a newline"
        ]
    );
}

#[tokio::test]
async fn publish_lines_stops_at_a_refused_batch_and_says_how_far_it_got() {
    let b = Broker::start(&["--max-payload-bytes", "100"]);
    let text = format!("short 1\nshort 2\n{}\nshort 4\n", "x".repeat(200));
    let out = rewind_with_stdin(
        &["publish", "logs.long", "line", "--lines", "--batch", "2"],
        &b.url(),
        Stdio::from({
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), text).unwrap();
            std::fs::File::open(file.path()).unwrap()
        }),
    );
    assert!(!out.status.success());
    // How the lines fall into batches depends on how fast stdin is read; whatever the
    // split, the count said is the count appended, and the refused batch is named.
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("payload_too_large"), "{err}");
    let said: u64 = err
        .split("; ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {err:?}"));
    assert!(
        err.contains(&format!("publishing lines {} to", said + 1)),
        "{err}"
    );
    assert!(said <= 2, "{err}");
    let next = b.get("/v1/namespaces/logs.long").await.json()["next"].clone();
    assert_eq!(next, said, "{err}");
}

#[tokio::test]
async fn publish_key_sets_the_key_of_one_event() {
    let b = Broker::start(&[]);
    let out = rewind(
        &["publish", "keyed", "e", "--data", "{}", "--key", "user-7"],
        &b.url(),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), [1u8, 2]).unwrap();
    let out = rewind(
        &[
            "publish",
            "keyed",
            "blob",
            "--file",
            file.path().to_str().unwrap(),
            "--key",
            "file-key",
        ],
        &b.url(),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let all = json_lines(&rewind(
        &["tail", "keyed", "--from", "earliest", "--no-follow"],
        &b.url(),
    ));
    let keys: Vec<&str> = all.iter().map(|v| v["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["user-7", "file-key"]);
}

#[tokio::test]
async fn the_cli_speaks_https_and_wss_through_a_tls_proxy_with_ca_cert() {
    let b = Broker::start(&[]);
    let proxy = TlsProxy::start(b.addr);
    let pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pem.path(), &proxy.cert_pem).unwrap();
    let ca = pem.path().to_str().unwrap();
    let https = format!("https://127.0.0.1:{}", proxy.addr.port());
    let wss = format!("wss://localhost:{}", proxy.addr.port());
    let out = rewind(
        &["publish", "tls.cli", "e", "--data", "[1]", "--ca-cert", ca],
        &https,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    let out = rewind_with_stdin(
        &["publish", "tls.cli", "line", "--lines", "--ca-cert", ca],
        &https,
        Stdio::from({
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), "a\nb\n").unwrap();
            std::fs::File::open(file.path()).unwrap()
        }),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "published 2 events to tls.cli, offsets 1 to 2\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let once = json_lines(&rewind(
        &[
            "tail",
            "tls.cli",
            "--from",
            "earliest",
            "--no-follow",
            "--ca-cert",
            ca,
        ],
        &https,
    ));
    assert_eq!(offsets(&once), [0, 1, 2]);
    let followed = json_lines(&rewind(
        &[
            "tail",
            "tls.cli",
            "--from",
            "1",
            "--limit",
            "2",
            "--ca-cert",
            ca,
        ],
        &wss,
    ));
    assert_eq!(offsets(&followed), [1, 2]);
    let table = rewind(&["namespaces", "--ca-cert", ca], &https);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("tls.cli"),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let handshakes = proxy.handshakes();
    assert!(handshakes >= 5, "{handshakes} TLS connections");
    // Without --ca-cert the proxy's certificate is not trusted, by any command.
    for args in [
        &["publish", "tls.cli", "e", "--data", "1"][..],
        &["tail", "tls.cli", "--no-follow"][..],
        &["namespaces"][..],
    ] {
        let out = rewind(args, &https);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("certificate"), "{args:?}: {err}");
    }
    let out = rewind(&["tail", "tls.cli", "--limit", "1"], &wss);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate"));
    assert_eq!(proxy.handshakes(), handshakes);
    assert_eq!(b.get("/v1/namespaces/tls.cli").await.json()["next"], 3);
}

/// On a terminal (`script` gives the command a pseudo-terminal) `publish --lines` draws a
/// progress line on stderr and clears it at the end; elsewhere stderr stays empty (the
/// tests above).
#[tokio::test]
async fn publish_lines_draws_a_progress_line_only_on_a_terminal() {
    let b = Broker::start(&[]);
    let cmd = format!(
        "seq 1 5000 | {} publish logs.tty line --lines --batch 100 --url {}",
        rewind_bin().display(),
        b.url()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run script(1) from util-linux");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text:?}");
    assert!(
        text.contains("\rrewind: ") && text.contains(" events published to logs.tty"),
        "{text:?}"
    );
    assert!(text.contains("\r\x1b[K"), "{text:?}");
    assert!(
        text.contains("published 5000 events to logs.tty, offsets 0 to 4999"),
        "{text:?}"
    );
}

#[test]
fn every_command_line_mistake_is_one_line_with_status_1() {
    // A tester's inputs: clap's multi-line answers with status 2, although client.md
    // says errors are `rewind: …` with status 1. No broker is needed: nothing is sent.
    let cases: [(&[&str], &str); 6] = [
        (&["tail", "x", "--from", "soon"], "--from"),
        (&["publish", "x", "y", "--dat", "1"], "--dat"),
        (&["tail", "x", "--limit", "many"], "--limit"),
        (&["namespaces", "--bogus"], "--bogus"),
        (&["publish", "x"], "EVENT"),
        (&["bogus"], "bogus"),
    ];
    for (args, named) in cases {
        let out = Command::new(rewind_bin())
            .args(args)
            .output()
            .expect("run rewind");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("rewind: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?} should name {named}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // Help is still help.
    let out = Command::new(rewind_bin())
        .args(["tail", "--help"])
        .output()
        .expect("run rewind");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--no-follow"));
}

/// The lines of `from`, as they come, on a channel.
fn line_channel(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test]
async fn tail_says_when_the_log_it_follows_gets_a_new_epoch() {
    // A tester's input: relaxed mode, `kill -9` with unflushed writes, restart. The log
    // gets a new epoch; tail said "offsets 3..0 are gone (epoch)" and printed the log
    // again as if nothing had happened.
    let mut b = Broker::start(&["--durability", "relaxed", "--flush-interval-ms", "600000"]);
    let created = b.put_json("/v1/namespaces/rx", "").await;
    assert_eq!(created.status, rewind_tests::StatusCode::CREATED);
    let mut tail = Command::new(rewind_bin())
        .args(["tail", "rx", "--from", "earliest", "--url", &b.url()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tail");
    let out = line_channel(tail.stdout.take().unwrap());
    let err = line_channel(tail.stderr.take().unwrap());
    let next = |rx: &mpsc::Receiver<String>| {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a line from tail")
    };
    let offset = |line: String| -> u64 {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["offset"].as_u64().unwrap()
    };
    for i in 0..3 {
        b.post_json(
            "/v1/namespaces/rx/events",
            &format!(r#"{{"event":"n","data":{i}}}"#),
        )
        .await;
        assert_eq!(offset(next(&out)), i);
    }
    b.kill9();
    b.restart();
    let said = next(&err);
    assert!(
        said.contains("the log of rx was re-created (new epoch)")
            && said.contains("from its offset 0"),
        "{said}"
    );
    // It follows the new log from its start, and says nothing more.
    b.post_json("/v1/namespaces/rx/events", r#"{"event":"after"}"#)
        .await;
    let info = b.get("/v1/namespaces/rx").await.json();
    let end = info["next"].as_u64().unwrap();
    let again: Vec<u64> = (0..end).map(|_| offset(next(&out))).collect();
    assert_eq!(again, (0..end).collect::<Vec<_>>());
    let _ = tail.kill();
    let _ = tail.wait();
    let rest: Vec<String> = err.iter().collect();
    assert!(rest.is_empty(), "{rest:?}");
}
