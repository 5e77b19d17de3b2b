//! Publishing over one WebSocket connection without waiting for answers (issue 8 §1):
//! pipelined publishers never hang their connection, every publish is appended once and
//! answered once, answers come back in the order the publishes were sent, and a client
//! that never reads costs the broker bounded memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rewind_protocol::frame::{decode_server_json, ClientFrame, ServerFrame, ServerMessage};
use rewind_protocol::{Payload, Position};
use rewind_tests::ws::{Client, Received};
use rewind_tests::Broker;
use tokio_tungstenite::tungstenite::Message;

/// Longest any of these tests may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(120);

fn publish_frame(id: u64, ns: &str) -> Message {
    Message::Text(
        format!(r#"{{"t":"publish","id":{id},"ns":"{ns}","event":"e","data":{id}}}"#).into(),
    )
}

/// What one answer said: `Ok((id, offset))` for `published`, `Err((id, code))` for an
/// `error` that names a publish.
type Answer = Result<(u64, u64), (Option<u64>, String)>;

fn answer(m: &Message) -> Option<Answer> {
    let Message::Text(t) = m else {
        return None;
    };
    match decode_server_json(t).expect("a frame the protocol knows") {
        ServerMessage::Frame(ServerFrame::Published { id, offset, .. }) => Some(Ok((id, offset))),
        ServerMessage::Frame(ServerFrame::Error { id, code, .. }) => Some(Err((id, code))),
        _ => None,
    }
}

/// Reads answers until `n` publishes have been answered.
async fn read_answers<S>(stream: &mut S, n: usize) -> Vec<Answer>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let m = tokio::time::timeout(rewind_tests::ws::PATIENCE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no answer in time after {} answers", got.len()))
            .expect("the connection stays open")
            .expect("a frame");
        if let Some(a) = answer(&m) {
            got.push(a);
        }
    }
    got
}

/// Every publish `0..n` answered `published`, in order, with offsets following send order
/// from `first_offset`.
fn assert_all_published_in_order(answers: &[Answer], n: u64, first_offset: u64) {
    assert_eq!(answers.len() as u64, n);
    for (i, a) in answers.iter().enumerate() {
        let i = i as u64;
        assert_eq!(
            *a,
            Ok((i, first_offset + i)),
            "answer {i} out of order or refused"
        );
    }
}

/// Reads the whole of `ns` over a new connection and checks it holds `want`, in order:
/// every publish appended exactly once.
async fn assert_log_holds(b: &Broker, ns: &str, want: &[Payload]) {
    let info = b.get(&format!("/v1/namespaces/{ns}")).await.json();
    assert_eq!(info["next"], want.len() as u64, "{info}");
    let mut c = Client::connect(b.addr, None).await;
    c.send(&ClientFrame::Open {
        ns: ns.into(),
        from: Position::Earliest,
        epoch: None,
        credit: u64::from(u32::MAX),
    })
    .await;
    let mut offset = 0u64;
    while offset < want.len() as u64 {
        match c.next().await {
            ServerMessage::Event(e) => {
                assert_eq!(e.event.offset, offset);
                assert_eq!(e.event.data, want[offset as usize], "offset {offset}");
                offset += 1;
            }
            ServerMessage::Frame(ServerFrame::Opened { .. } | ServerFrame::Ping) => {}
            ServerMessage::Frame(f) => panic!("unexpected {f:?}"),
        }
    }
}

fn json_payloads(n: u64) -> Vec<Payload> {
    (0..n).map(|i| Payload::Json(i.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_pipelined_publishes_with_a_concurrent_reader() {
    const N: u64 = 100_000;
    let b = Broker::start(&[]);
    let c = Client::connect(b.addr, None).await;
    let (mut sink, mut stream) = c.socket.split();
    tokio::time::timeout(HANG, async {
        let reader = tokio::spawn(async move { read_answers(&mut stream, N as usize).await });
        for id in 0..N {
            // `feed` without a flush per frame: as fast as a client can pipeline.
            sink.feed(publish_frame(id, "pipe")).await.expect("send");
        }
        sink.flush().await.expect("flush");
        let answers = reader.await.expect("reader");
        assert_all_published_in_order(&answers, N, 0);
    })
    .await
    .expect("the pipelined publisher hung");
    assert_log_holds(&b, "pipe", &json_payloads(N)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_publishes_sent_before_reading_any_answer() {
    // Some carry their payload in a binary frame (`bin: true`), some are refused: every
    // one is answered in its turn all the same.
    const N: u64 = 10_000;
    let b = Broker::start(&[]);
    let c = Client::connect(b.addr, None).await;
    let (mut sink, mut stream) = c.socket.split();
    let refused = |id: u64| id % 1000 == 999;
    let bytes = |id: u64| id % 10 == 3;
    let mut want = Vec::new();
    tokio::time::timeout(HANG, async {
        for id in 0..N {
            if refused(id) {
                let bad = format!(r#"{{"t":"publish","id":{id},"ns":"quiet","event":""}}"#);
                sink.feed(Message::Text(bad.into())).await.expect("send");
            } else if bytes(id) {
                let header =
                    format!(r#"{{"t":"publish","id":{id},"ns":"quiet","event":"e","bin":true}}"#);
                sink.feed(Message::Text(header.into())).await.expect("send");
                let payload = id.to_be_bytes().to_vec();
                sink.feed(Message::Binary(payload.clone().into()))
                    .await
                    .expect("send");
                want.push(Payload::Bytes(payload));
            } else {
                sink.feed(publish_frame(id, "quiet")).await.expect("send");
                want.push(Payload::Json(id.to_string()));
            }
        }
        sink.flush().await.expect("flush");
        let answers = read_answers(&mut stream, N as usize).await;
        let mut offset = 0;
        for (i, a) in answers.iter().enumerate() {
            let id = i as u64;
            if refused(id) {
                assert_eq!(*a, Err((Some(id), "bad_frame".to_owned())), "answer {i}");
            } else {
                assert_eq!(*a, Ok((id, offset)), "answer {i}");
                offset += 1;
            }
        }
    })
    .await
    .expect("the publisher that reads nothing until it has sent all hung");
    assert_log_holds(&b, "quiet", &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_publisher_is_answered_in_order_when_the_broker_falls_behind() {
    // 10,000 publishes/s for 2 s: a debug build on a shared machine cannot always keep up,
    // so the publisher runs ahead of the answers, as in the report.
    const N: u64 = 20_000;
    let b = Broker::start(&[]);
    let c = Client::connect(b.addr, None).await;
    let (mut sink, mut stream) = c.socket.split();
    tokio::time::timeout(HANG, async {
        let reader = tokio::spawn(async move { read_answers(&mut stream, N as usize).await });
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        for burst in 0..N / 10 {
            ticks.tick().await;
            for id in burst * 10..burst * 10 + 10 {
                sink.feed(publish_frame(id, "paced")).await.expect("send");
            }
            sink.flush().await.expect("flush");
        }
        let answers = reader.await.expect("reader");
        assert_all_published_in_order(&answers, N, 0);
    })
    .await
    .expect("the paced publisher hung");
    assert_log_holds(&b, "paced", &json_payloads(N)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_bounded_memory() {
    // Each frame is answered with more bytes than it has (an `error` naming a 128-byte
    // namespace), and one in a hundred is a real publish. 300,000 of them would be about
    // 60 MB of answers: a broker that kept reading would hold them all.
    const FRAMES: u64 = 300_000;
    let b = Broker::start(&[]);
    let long_ns = "n".repeat(128);
    let c = Client::connect(b.addr, None).await;
    let (mut sink, mut stream) = c.socket.split();
    // Let the broker settle (a publish answered) before taking its baseline.
    sink.send(publish_frame(0, "never")).await.expect("send");
    assert_eq!(read_answers(&mut stream, 1).await, vec![Ok((0, 0))]);
    let before = rewind_tests::status_kib(b.pid(), "VmRSS:");
    let sent = Arc::new(AtomicU64::new(0));
    let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
    let sender = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut stalled = Some(stalled_tx);
            for i in 1..FRAMES {
                let m = if i % 100 == 0 {
                    publish_frame(i / 100, "never")
                } else {
                    Message::Text(format!(r#"{{"t":"credit","ns":"{long_ns}","n":{i}}}"#).into())
                };
                // A send that takes a second means the broker has stopped reading and
                // every buffer between the two is full.
                let mut send = sink.send(m);
                if tokio::time::timeout(Duration::from_secs(1), &mut send)
                    .await
                    .is_err()
                {
                    if let Some(tx) = stalled.take() {
                        let _ = tx.send(true);
                    }
                }
                send.await.expect("send");
                sent.store(i, Ordering::Relaxed);
            }
            if let Some(tx) = stalled.take() {
                let _ = tx.send(false);
            }
            sink
        })
    };
    let stalled = tokio::time::timeout(HANG, stalled_rx)
        .await
        .expect("the sender neither stalled nor finished")
        .expect("sender");
    assert!(
        stalled,
        "the broker read all {FRAMES} frames from a client that reads nothing"
    );
    let peak_while_stalled = rewind_tests::status_kib(b.pid(), "VmHWM:");
    let taken = sent.load(Ordering::Relaxed);
    eprintln!(
        "broker stopped reading after {taken} of {FRAMES} frames; RSS {before} KiB before, peak {peak_while_stalled} KiB"
    );
    // Now read: everything the client sent is answered, the publishes in order.
    let publishes = FRAMES / 100;
    let mut published = Vec::new();
    let mut not_open = 0u64;
    tokio::time::timeout(HANG, async {
        while not_open + (published.len() as u64) < FRAMES - 1 {
            let m = stream
                .next()
                .await
                .expect("the connection stays open")
                .expect("a frame");
            match answer(&m) {
                Some(Ok((id, offset))) => published.push((id, offset)),
                Some(Err((None, code))) if code == "not_open" => not_open += 1,
                Some(other) => panic!("unexpected answer {other:?}"),
                None => {}
            }
        }
    })
    .await
    .expect("the answers never all came");
    assert_eq!(published.len() as u64, publishes - 1);
    for (i, p) in published.iter().enumerate() {
        let want = i as u64 + 1;
        assert_eq!(*p, (want, want), "publish answers out of order");
    }
    assert_eq!(not_open, FRAMES - publishes);
    drop(sender.await.expect("sender"));
    let peak = rewind_tests::status_kib(b.pid(), "VmHWM:");
    assert!(
        peak.saturating_sub(before) <= 16 * 1024,
        "the broker's RSS peaked {} KiB above its {before} KiB baseline",
        peak.saturating_sub(before)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_publish_it_took_then_closes_with_1001() {
    const N: u64 = 5_000;
    let mut b = Broker::start(&[]);
    let c = Client::connect(b.addr, None).await;
    let (mut sink, mut stream) = c.socket.split();
    for id in 0..N {
        sink.feed(publish_frame(id, "last")).await.expect("send");
    }
    sink.flush().await.expect("flush");
    assert_eq!(read_answers(&mut stream, 1).await, vec![Ok((0, 0))]);
    let stopped = tokio::task::spawn_blocking(move || {
        let status = b.terminate();
        (b, status)
    });
    // Whatever the broker took before it stopped reading is answered, in order, and only
    // then does the close come.
    let mut answered = 1u64;
    let close = tokio::time::timeout(HANG, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(m)) => {
                    if let Some(a) = answer(&m) {
                        assert_eq!(a, Ok((answered, answered)), "answer out of order");
                        answered += 1;
                    }
                }
                other => panic!("the connection ended without a close: {other:?}"),
            }
        }
    })
    .await
    .expect("no close from the broker");
    assert_eq!(close, Some(1001));
    let (mut b, status) = stopped.await.expect("terminate");
    assert!(status.success());
    // Nothing was appended that was not answered.
    b.restart();
    let info = b.get("/v1/namespaces/last").await.json();
    assert_eq!(info["next"], answered, "{info}");
    eprintln!("{answered} of {N} publishes answered before the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_holds_publishes_back_instead_of_refusing_them() {
    // A write queue of one request: a pipelining publisher finds it full all the time. Its
    // publishes wait (and the connection is not read meanwhile); none is refused.
    const N: u64 = 2_000;
    let b = Broker::start(&["--write-queue", "1"]);
    let c = Client::connect(b.addr, None).await;
    let (mut sink, mut stream) = c.socket.split();
    tokio::time::timeout(HANG, async {
        let reader = tokio::spawn(async move { read_answers(&mut stream, N as usize).await });
        for id in 0..N {
            sink.feed(publish_frame(id, "narrow")).await.expect("send");
        }
        sink.flush().await.expect("flush");
        let answers = reader.await.expect("reader");
        assert_all_published_in_order(&answers, N, 0);
    })
    .await
    .expect("the publisher hung");
    assert_log_holds(&b, "narrow", &json_payloads(N)).await;
}

/// Publishes `0..n` to `ns` on `c`, then `violation`; every publish is answered in order
/// before the close, which carries `code`, and the log holds exactly what was answered.
async fn answered_before_the_close(
    b: &Broker,
    mut c: Client,
    ns: &str,
    n: u64,
    violation: Message,
    code: u16,
) {
    for id in 0..n {
        let data = Some(Payload::Json(id.to_string()));
        c.send(&ClientFrame::Publish {
            id,
            ns: ns.into(),
            event: "e".into(),
            data,
            key: None,
            idempotency_key: None,
        })
        .await;
    }
    // The violation may find the socket already closing on a fast broker; what matters is
    // what the broker sent.
    let _ = c.socket.send(violation).await;
    let mut answered = 0u64;
    let close = loop {
        match c.recv().await {
            Received::Message(ServerMessage::Frame(ServerFrame::Published {
                id, offset, ..
            })) => {
                assert_eq!(
                    (id, offset),
                    (answered, answered),
                    "{ns}: answer out of order"
                );
                answered += 1;
            }
            Received::Message(ServerMessage::Frame(ServerFrame::Ping)) => {}
            Received::Message(m) => panic!("{ns}: unexpected {m:?}"),
            Received::Closed(frame) => break frame.map(|f| u16::from(f.code)),
        }
    };
    assert_eq!(
        answered, n,
        "{ns}: publishes taken before the violation go unanswered"
    );
    assert_eq!(close, Some(code), "{ns}");
    let info = b.get(&format!("/v1/namespaces/{ns}")).await.json();
    assert_eq!(info["next"], n, "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_violation_closes_only_after_every_publish_taken_is_answered() {
    // The tester's input: 50 publishes, then a text frame that is not JSON. The broker had
    // appended all 50 and closed with 1003 without answering one.
    const N: u64 = 50;
    let b = Broker::start(&[]);
    let too_big = vec![0u8; 2 << 20];
    let violations: [(&str, Option<&str>, Message, u16); 5] = [
        ("v.text", None, Message::Text("garbage".into()), 1003),
        (
            "v.bin",
            None,
            Message::Binary(b"unannounced".to_vec().into()),
            1003,
        ),
        ("v.size", None, Message::Binary(too_big.into()), 1009),
        (
            "v.mtext",
            Some("rewind.v1.msgpack"),
            Message::Text("{}".into()),
            1003,
        ),
        (
            "v.mbin",
            Some("rewind.v1.msgpack"),
            Message::Binary(vec![0xc1].into()),
            1003,
        ),
    ];
    for (ns, protocol, violation, code) in violations {
        let c = Client::connect(b.addr, protocol).await;
        tokio::time::timeout(
            HANG,
            answered_before_the_close(&b, c, ns, N, violation, code),
        )
        .await
        .unwrap_or_else(|_| panic!("{ns}: hung"));
    }
}
