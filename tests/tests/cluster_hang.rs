//! A hung Redis (issue 13, `docs/cluster.md`): `redis-server` frozen with `SIGSTOP`, so
//! the kernel still accepts connections and nothing answers. Every publish, over HTTP and
//! over WebSocket, one after another and many at once, is answered `503 unavailable`
//! within a bound derived from `redis_timeout_ms`, and so is each `/readyz`; once Redis
//! goes on (`SIGCONT`) publishing works again by itself, a publish answered "not sent" is
//! not in the log, and each one retried with its `Idempotency-Key` is appended once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rewind_protocol::frame::{ClientFrame, ServerFrame, ServerMessage};
use rewind_protocol::Payload;
use rewind_tests::redis::{Persistence, RedisServer};
use rewind_tests::{ws, Broker, Method, StatusCode};

/// Each node's `redis_timeout_ms`: deliberately small, so the bound below is short.
const TIMEOUT_MS: u64 = 300;

/// Every test's deadline for a condition it waits on.
const PATIENCE: Duration = Duration::from_secs(20);

/// The longest any answer may take while Redis hangs: an upper bound (4x a small
/// timeout), not a speed target. Before the fix, answers queued one behind another in
/// the writer and came when Redis went on (seconds later).
fn bound() -> Duration {
    Duration::from_millis(4 * TIMEOUT_MS)
}

fn node(redis: &RedisServer) -> Broker {
    let url = redis.url();
    let timeout = TIMEOUT_MS.to_string();
    Broker::start(&[
        "--redis",
        &url,
        "--redis-timeout-ms",
        &timeout,
        "--redis-heal-interval-ms",
        "100",
    ])
}

/// One answer to a publish made while Redis hung.
#[derive(Debug)]
struct Answer {
    /// The publish's `data` (also its key's number).
    data: u64,
    code: String,
    message: String,
    took: Duration,
}

fn key(data: u64) -> String {
    format!("hang-{data}")
}

/// `POST`s event `data` with its key; status, JSON body, whether it was a replay, time.
async fn publish_http(
    addr: SocketAddr,
    data: u64,
) -> (StatusCode, serde_json::Value, bool, Duration) {
    let started = Instant::now();
    let key = key(data);
    let r = rewind_tests::request(
        addr,
        Method::POST,
        "/v1/namespaces/hung/events",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", &key),
        ],
        format!(r#"{{"event":"h","data":{data}}}"#).into(),
    )
    .await
    .expect("publish");
    let replayed = r.headers.get("idempotent-replayed").is_some();
    (r.status, r.json(), replayed, started.elapsed())
}

/// A publish over HTTP while Redis hangs: must be `503 unavailable`.
async fn refused_http(addr: SocketAddr, data: u64) -> Answer {
    let (status, body, _, took) = tokio::time::timeout(PATIENCE, publish_http(addr, data))
        .await
        .unwrap_or_else(|_| panic!("{data}: no answer in {PATIENCE:?} while Redis hung"));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{data}: {body}");
    Answer {
        data,
        code: body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        message: body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        took,
    }
}

fn publish_frame(id: u64, data: u64) -> ClientFrame {
    ClientFrame::Publish {
        id,
        ns: "hung".into(),
        event: "h".into(),
        data: Some(Payload::Json(data.to_string())),
        key: None,
        idempotency_key: Some(key(data)),
    }
}

/// What a WebSocket publish was answered: its id, its offset or error, and when.
type WsAnswer = (u64, Result<u64, (String, String)>, Instant);

/// The next answer to a publish on `c` (`published` or `error`).
async fn ws_answer(c: &mut ws::Client) -> WsAnswer {
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Published { id, offset, .. }) => {
                return (id, Ok(offset), Instant::now())
            }
            ServerMessage::Frame(ServerFrame::Error {
                id: Some(id),
                code,
                message,
                ..
            }) => return (id, Err((code, message)), Instant::now()),
            ServerMessage::Frame(ServerFrame::Ping) => {}
            other => panic!("not an answer to a publish: {other:?}"),
        }
    }
}

/// Publishes each of `data` on one WebSocket connection, all sent before any answer is
/// read (`pipelined`) or each after the previous one's answer; every answer must be an
/// `error` `unavailable`, in order.
async fn refused_ws(addr: SocketAddr, data: Vec<u64>, pipelined: bool) -> Vec<Answer> {
    let mut c = ws::Client::connect(addr, None).await;
    let mut answers = Vec::new();
    let mut sent = Vec::new();
    for (id, &d) in data.iter().enumerate() {
        sent.push((d, Instant::now()));
        c.send(&publish_frame(id as u64, d)).await;
        if !pipelined {
            answers.push(ws_answer(&mut c).await);
        }
    }
    while answers.len() < data.len() {
        answers.push(ws_answer(&mut c).await);
    }
    answers
        .into_iter()
        .zip(sent)
        .enumerate()
        .map(|(want, ((id, answer, answered), (d, sent)))| {
            assert_eq!(id, want as u64, "answers out of order");
            let (code, message) = answer.expect_err("a publish acknowledged while Redis hung");
            Answer {
                data: d,
                code,
                message,
                took: answered - sent,
            }
        })
        .collect()
}

/// `/readyz` while Redis hangs: `503` within the bound.
async fn not_ready(b: &Broker) {
    let started = Instant::now();
    let r = b.get("/readyz").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["status"], "storage_unavailable");
    eprintln!("/readyz answered 503 after {took:?}");
    assert!(took <= bound(), "/readyz took {took:?}");
}

async fn ready(b: &Broker) {
    let deadline = Instant::now() + PATIENCE;
    while b.get("/readyz").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::task::yield_now().await;
    }
}

/// The `data` of every event of `hung`, in offset order.
async fn log_data(b: &Broker) -> Vec<u64> {
    let page = b
        .get("/v1/namespaces/hung/events?from=0&limit=1000")
        .await
        .json();
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["data"].as_u64().expect("data"))
        .collect()
}

/// Tester finding (i13): with Redis hung only the first publish per node failed within
/// `redis_timeout_ms`; the next ones queued one behind another in the writer, each
/// waiting out its own timeouts, and were acknowledged when Redis went on (one after
/// 16 s); `/readyz` took twice the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_redis_answers_every_publish_503_in_time_and_appends_nothing_late() {
    let redis = RedisServer::start(Persistence::AofAlways);
    let nodes = [node(&redis), node(&redis)];
    for (i, b) in nodes.iter().enumerate() {
        let (status, body, _, _) = publish_http(b.addr, i as u64).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    redis.pause();

    let mut answers: Vec<Answer> = Vec::new();
    // HTTP, one after another, then many at once on both nodes.
    for d in 100..104 {
        answers.push(refused_http(nodes[0].addr, d).await);
    }
    not_ready(&nodes[0]).await;
    not_ready(&nodes[1]).await;
    let many: Vec<_> = (200..208)
        .map(|d| tokio::spawn(refused_http(nodes[(d % 2) as usize].addr, d)))
        .collect();
    for task in many {
        answers.push(task.await.expect("publish task"));
    }
    // WebSocket: one after another on one connection, then pipelined on three at once.
    answers.extend(refused_ws(nodes[1].addr, (300..304).collect(), false).await);
    let many: Vec<_> = (0..3u64)
        .map(|c| {
            let addr = nodes[(c % 2) as usize].addr;
            let data = (0..4).map(|j| 400 + 10 * c + j).collect();
            tokio::spawn(refused_ws(addr, data, true))
        })
        .collect();
    for task in many {
        answers.extend(task.await.expect("WebSocket task"));
    }
    not_ready(&nodes[0]).await;
    not_ready(&nodes[1]).await;
    let worst = answers.iter().max_by_key(|a| a.took);
    eprintln!(
        "{} publishes answered 503, the slowest: {worst:?}",
        answers.len()
    );
    for a in &answers {
        assert_eq!(a.code, "unavailable", "{a:?}");
        assert!(
            a.message.contains("not sent") || a.message.contains("outcome unknown"),
            "{a:?}"
        );
        assert!(a.took <= bound(), "answered after {:?}: {a:?}", a.took);
    }

    redis.resume();
    for b in &nodes {
        ready(b).await;
    }
    // Nothing answered "not sent" was written, then or when Redis went on.
    let not_sent: BTreeSet<u64> = answers
        .iter()
        .filter(|a| a.message.contains("not sent"))
        .map(|a| a.data)
        .collect();
    let before_retries = log_data(&nodes[0]).await;
    for d in &before_retries {
        assert!(
            !not_sent.contains(d),
            "{d} was answered not sent and is in the log"
        );
    }
    // Each retried with its key until taken, on the other node: appended once.
    let mut offsets = BTreeMap::new();
    for (i, a) in answers.iter().enumerate() {
        let addr = nodes[(i + 1) % 2].addr;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, body, replayed, _) = publish_http(addr, a.data).await;
            if status == StatusCode::CREATED || status == StatusCode::OK {
                assert!(
                    !(replayed && not_sent.contains(&a.data)),
                    "{} was answered not sent and was in Redis: {body}",
                    a.data
                );
                offsets.insert(a.data, body["offset"].as_u64().expect("offset"));
                break;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(
                Instant::now() < deadline,
                "publishes never recovered: {body}"
            );
            tokio::task::yield_now().await;
        }
    }
    let data = log_data(&nodes[1]).await;
    let mut want: Vec<u64> = vec![0, 1];
    want.extend(answers.iter().map(|a| a.data));
    want.sort_unstable();
    let mut got = data.clone();
    got.sort_unstable();
    assert_eq!(got, want, "each publish once: {data:?}");
    for (d, offset) in &offsets {
        assert_eq!(data.get(*offset as usize), Some(d), "offset {offset}");
    }
}

/// A page read on a node whose circuit is still closed, the moment Redis hangs, is
/// answered `503 unavailable` saying Redis did not answer within `redis_timeout_ms`
/// (tester 13D: the socket's bare "Resource temporarily unavailable"). The read is a
/// four-command transaction and the client waits out the timeout once per reply, so the
/// bound here is 8x a small timeout: a guard against a hang, not a speed target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_a_hung_redis_says_redis_did_not_answer() {
    let redis = RedisServer::start(Persistence::None);
    let b = node(&redis);
    for data in 0..3 {
        let (status, body, _, _) = publish_http(b.addr, data).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    redis.pause();
    let started = Instant::now();
    let r = b.get("/v1/namespaces/hung/events?from=0").await;
    let took = started.elapsed();
    redis.resume();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.error_code(), "unavailable");
    let message = r.json()["error"]["message"].to_string();
    assert!(message.contains("redis_timeout_ms"), "{message}");
    assert!(
        took <= Duration::from_millis(8 * TIMEOUT_MS),
        "took {took:?} with redis_timeout_ms {TIMEOUT_MS}"
    );
}
