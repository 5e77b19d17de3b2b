//! JSON reaches the broker as the publisher wrote it and comes back as it was stored:
//! the CLI (`publish --data`/stdin, `tail` following or not) and the Rust client, against
//! the real binary. What the broker refuses is refused before sending, with its message.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rewind_client::{
    json, Client, ClientError, ClientOptions, Data, Item, Publisher, PublisherOptions, StreamExt,
};
use rewind_protocol::codec::ReadPage;
use rewind_protocol::value::{json_to_msgpack, msgpack_to_json};
use rewind_protocol::{Payload, Position};
use rewind_tests::Method;
use rewind_tests::{rewind_bin, Broker};
use serde_json::value::RawValue;

/// Runs the CLI with `stdin` as its input.
fn rewind(args: &[&str], url: &str, stdin: &str) -> Output {
    let mut child = Command::new(rewind_bin())
        .args(args)
        .args(["--url", url])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rewind");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().expect("rewind ends")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `data` of each line `rewind tail` printed, as the text it printed.
fn printed_data(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let fields: HashMap<String, Box<RawValue>> =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            fields["data"].get().to_owned()
        })
        .collect()
}

/// The JSON text of every event of `ns`, as the broker's HTTP readers get it.
async fn stored(b: &Broker, ns: &str) -> Vec<String> {
    let r = b
        .get(&format!(
            "/v1/namespaces/{ns}/events?from=earliest&limit=1000"
        ))
        .await;
    assert!(r.status.is_success(), "{:?}", r.status);
    ReadPage::from_json(&r.body)
        .unwrap()
        .events
        .into_iter()
        .map(|e| match e.data {
            Payload::Json(text) => text,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// What the broker answers when `data` is posted to it directly: the status and message.
async fn broker_answer(b: &Broker, ns: &str, data: &str) -> (u16, String) {
    let r = b
        .post_json(
            &format!("/v1/namespaces/{ns}/events"),
            &format!(r#"{{"event":"e","data":{data}}}"#),
        )
        .await;
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (r.status.as_u16(), message)
}

fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

/// JSON text the broker refuses: each is refused by the CLI (from `--data` and from
/// stdin) and by `Data::json_text`, with the broker's own status, code and message,
/// and nothing is sent.
const REFUSED: &[&str] = &[
    r#"{"a":1,"a":2}"#,
    r#"{"b":1,"b":[1,2]}"#,
    r#"{"k":[{"x":{"d":0,"d":0}}]}"#,
    "18446744073709551616",
    "-9223372036854775809",
    r#"{"n":1e400}"#,
    r#""\ud800""#,
];

#[tokio::test]
async fn the_cli_and_the_client_refuse_what_the_broker_refuses_with_its_message() {
    let b = Broker::start(&[]);
    let url = b.url();
    let deep = [nested(101), nested(128), nested(5000)];
    let inputs = REFUSED
        .iter()
        .copied()
        .chain(deep.iter().map(String::as_str));
    for data in inputs {
        let shown: String = data.chars().take(40).collect();
        let (status, message) = broker_answer(&b, "direct", data).await;
        assert_eq!(status, 400, "{shown}: {message}");
        let expected = format!("rewind: rejected with 400 bad_frame: {message}\n");
        for out in [
            rewind(&["publish", "fid.cli", "e", "--data", data], &url, ""),
            rewind(&["publish", "fid.cli", "e"], &url, &format!("{data}\n")),
        ] {
            assert_eq!(out.status.code(), Some(1), "{shown}");
            assert_eq!(stderr(&out), expected, "{shown}");
        }
        let e = Data::json_text(data).unwrap_err();
        assert_eq!(e.code().as_str(), "bad_frame");
        assert_eq!(e.to_string(), message, "{shown}");
        // The Rust client cannot even build a Value the rules refuse, except by depth.
        if data.starts_with("[[") {
            let value: serde_json::Value = serde_json::from_str(&nested(101)).unwrap();
            let client = Client::connect(&url, ClientOptions::default())
                .await
                .unwrap();
            match client.publish("fid.client", "e", value).await {
                Err(ClientError::Rejected { code, message }) => {
                    assert_eq!(code, "bad_frame");
                    assert!(message.starts_with("data[0][0]"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
    // Nothing was sent: the namespaces the refused publishes named were never created.
    for ns in ["fid.cli", "fid.client"] {
        let r = b.get(&format!("/v1/namespaces/{ns}")).await;
        assert_eq!(r.status.as_u16(), 404, "{ns}");
    }
    // Text that is not JSON is still told apart, with where it breaks.
    let out = rewind(&["publish", "fid.cli", "e", "--data", "{\"a\":"], &url, "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("rewind: the payload is not JSON (malformed input: EOF"),
        "{}",
        stderr(&out)
    );
}

/// JSON text that the broker accepts, and what a JSON reader gets back: the same text
/// (without the whitespace around it): key order, number spelling, integers up to 2⁶⁴−1
/// and the publisher's spacing are kept.
const KEPT: &[&str] = &[
    r#"{"z":1,"a":2}"#,
    r#"{"z":1,"a":2,"m":3}"#,
    "1e2",
    "18446744073709551615",
    "-9223372036854775808",
    r#"{"z":{"y":[1.50,2E-3,{"b":null,"a":true}]},"a":"é\u00e9"}"#,
    "{ \"z\" : 1 ,\n  \"a\" : [ ] }",
];

#[tokio::test]
async fn the_cli_publishes_json_as_written_and_tail_prints_it_as_stored() {
    let b = Broker::start(&[]);
    let url = b.url();
    for data in KEPT {
        let out = rewind(&["publish", "fid.kept", "e", "--data", data], &url, "");
        assert!(out.status.success(), "{data}: {}", stderr(&out));
        let out = rewind(&["publish", "fid.kept", "e"], &url, &format!("\n{data}\n"));
        assert!(out.status.success(), "{data}: {}", stderr(&out));
    }
    let expected: Vec<String> = KEPT
        .iter()
        .flat_map(|d| [d.to_string(), d.to_string()])
        .collect();
    assert_eq!(stored(&b, "fid.kept").await, expected);

    // --no-follow prints what the HTTP reader got, unchanged.
    let out = rewind(
        &["tail", "fid.kept", "--from", "earliest", "--no-follow"],
        &url,
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // One event per line: a line break between tokens is printed as a space.
    let one_line: Vec<String> = expected.iter().map(|t| t.replace('\n', " ")).collect();
    assert_eq!(printed_data(&out), one_line);

    // Following, events come over the MessagePack WebSocket: keys in their order, numbers
    // as MessagePack carries them (`1e2` is the float 100.0).
    let n = expected.len().to_string();
    let out = rewind(
        &["tail", "fid.kept", "--from", "earliest", "--limit", &n],
        &url,
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let over_msgpack: Vec<String> = expected
        .iter()
        .map(|text| {
            let mut mp = Vec::new();
            json_to_msgpack(text, &mut mp).unwrap();
            msgpack_to_json(&mp).unwrap()
        })
        .collect();
    let printed = printed_data(&out);
    assert_eq!(printed, over_msgpack);
    assert_eq!(printed[2], r#"{"z":1,"a":2,"m":3}"#);

    // A MessagePack page read with the protocol crate has the same order.
    let r = b
        .request(
            Method::GET,
            "/v1/namespaces/fid.kept/events?from=earliest",
            &[("accept", "application/msgpack")],
            Vec::new(),
        )
        .await;
    let page = ReadPage::from_msgpack(&r.body).unwrap();
    let read: Vec<Payload> = page.events.into_iter().map(|e| e.data).collect();
    let want: Vec<Payload> = over_msgpack.into_iter().map(Payload::Json).collect();
    assert_eq!(read, want);
}

#[tokio::test]
async fn the_client_sends_json_text_as_written_and_delivers_it_in_order() {
    let b = Broker::start(&[]);
    let options = PublisherOptions::default();
    let publisher = Publisher::new(&b.url(), options).unwrap();
    for data in KEPT {
        let text = Data::json_text(data).unwrap();
        publisher.publish("fid.http", "e", text).await.unwrap();
    }
    let batch = KEPT.iter().map(|d| ("e", d.parse::<Data>().unwrap()));
    publisher.publish_batch("fid.http", batch).await.unwrap();
    let expected: Vec<String> = KEPT.iter().chain(KEPT).map(|d| d.to_string()).collect();
    assert_eq!(stored(&b, "fid.http").await, expected);

    // Over the WebSocket: key order kept both ways; a `Value` goes in serde_json's order.
    let client = Client::connect(&b.url(), ClientOptions::default())
        .await
        .unwrap();
    let text = r#"{"z":1,"a":[{"y":2,"b":3}],"m":"x"}"#;
    client
        .publish("fid.ws", "e", Data::json_text(text).unwrap())
        .await
        .unwrap();
    client
        .publish("fid.ws", "e", json!({"z": 1, "a": 2}))
        .await
        .unwrap();
    assert_eq!(
        stored(&b, "fid.ws").await,
        [text.to_owned(), r#"{"a":2,"z":1}"#.to_owned()]
    );
    let mut sub = client
        .subscribe("fid.ws", Position::Earliest)
        .await
        .unwrap();
    let first = loop {
        match tokio::time::timeout(Duration::from_secs(20), sub.next()).await {
            Ok(Some(Item::Event(ev))) => break ev,
            Ok(Some(Item::Epoch(_))) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(first.data, Payload::Json(text.into()));
    // Published again as it was read, it is stored the same.
    let again = Data::try_from(first.data).unwrap();
    publisher.publish("fid.ws", "e", again).await.unwrap();
    assert_eq!(stored(&b, "fid.ws").await[2], text);
}

#[tokio::test]
async fn publish_batch_and_tail_limit_are_checked_before_anything_is_sent() {
    let b = Broker::start(&[]);
    let url = b.url();
    for batch in ["0", "10001", "20000"] {
        let out = rewind(
            &["publish", "fid.lines", "line", "--lines", "--batch", batch],
            &url,
            "a\nb\nc\n",
        );
        assert_eq!(out.status.code(), Some(1), "{batch}");
        assert_eq!(
            stderr(&out),
            format!(
                "rewind: --batch must be 1 to 10000 (the broker's default \
                 max_batch_events), not {batch}\n"
            )
        );
    }
    assert_eq!(
        b.get("/v1/namespaces/fid.lines").await.status.as_u16(),
        404,
        "a refused command sends nothing"
    );
    let lines: String = (0..10_005).map(|i| format!("{i}\n")).collect();
    for batch in ["1", "10000"] {
        let out = rewind(
            &["publish", "fid.lines", "line", "--lines", "--batch", batch],
            &url,
            if batch == "1" { "a\nb\nc\n" } else { &lines },
        );
        assert!(out.status.success(), "{batch}: {}", stderr(&out));
    }
    let info = b.get("/v1/namespaces/fid.lines").await.json();
    assert_eq!(info["next"], 3 + 10_005, "{info}");
    for follow in [&[][..], &["--no-follow"][..]] {
        let mut args = vec!["tail", "fid.lines", "--from", "earliest", "--limit", "0"];
        args.extend_from_slice(follow);
        let out = rewind(&args, &url, "");
        assert_eq!(out.status.code(), Some(1), "{follow:?}");
        assert_eq!(
            stderr(&out),
            "rewind: --limit must be at least 1 (without it, tail prints every event)\n"
        );
        assert!(out.stdout.is_empty());
    }
}

/// `tail --no-follow` of a namespace deleted while it reads says so, as following does.
#[tokio::test]
async fn tail_no_follow_says_when_the_namespace_is_deleted_under_it() {
    let b = Broker::start(&[]);
    // Three pages of events big enough that the first page fills the pipe: the tail
    // cannot ask for the second page before this test has read the first.
    let big = "x".repeat(300);
    for _ in 0..3 {
        let batch: Vec<String> = (0..1000)
            .map(|_| format!(r#"{{"event":"e","data":"{big}"}}"#))
            .collect();
        let r = b
            .post_json(
                "/v1/namespaces/del.nf/events",
                &format!("[{}]", batch.join(",")),
            )
            .await;
        assert!(r.status.is_success(), "{:?}", r.status);
    }
    let mut tail = Command::new(rewind_bin())
        .args(["tail", "del.nf", "--from", "earliest", "--no-follow"])
        .args(["--url", &b.url()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tail");
    let mut stdout = BufReader::new(tail.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with(r#"{"offset":0,"#), "{first}");
    let r = b
        .request(Method::DELETE, "/v1/namespaces/del.nf", &[], Vec::new())
        .await;
    assert!(r.status.is_success(), "{:?}", r.status);
    let rest: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    assert_eq!(rest.len(), 999, "the rest of the first page, then nothing");
    let mut err = String::new();
    tail.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = tail.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(err, "rewind: namespace del.nf was deleted\n");
}
