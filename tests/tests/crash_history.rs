//! Issue 9 §1: a Jepsen-style history check across `kill -9`.
//!
//! Each round: HTTP batches (20–500 events, each with an `Idempotency-Key`), HTTP single
//! publishes (half with a key) and pipelined WebSocket publishes (half with a key) run
//! concurrently on three namespaces (half the starts checkpoint every 5 ms, so kills also
//! land inside checkpoints); the broker is killed with SIGKILL once a random number
//! of events has been acknowledged; it restarts on the same data directory; every
//! unanswered request that carries a key is retried with it; then every namespace is read
//! whole and checked against the history of all rounds so far:
//!
//! - every acknowledged event is present exactly once, unchanged, at its acknowledged offset;
//! - every event whose publish went unanswered is present once or absent, a batch wholly
//!   (consecutive, in order) or not at all;
//! - a retry of an unanswered keyed request answers the original offsets when the events
//!   are there (`Idempotent-Replayed`), and appends them once when they are not;
//! - acknowledged keyed requests of any round (20 a round, at random) sent again answer
//!   their original offsets: keys survive crashes;
//! - a refused request left nothing; nothing is stored that nobody published;
//! - offsets are dense from 0, and epochs do not change (durable mode).
//!
//! `kill9_history_in_relaxed_mode` runs a quarter of the rounds with `--durability relaxed`:
//! the same checks but the epochs.
//!
//! `REWIND_CRASH_ROUNDS` sets the number of rounds (default 20, which CI runs; the full
//! check of the issue is 50, see `docs/storage.md`), `REWIND_CRASH_SEED` the seed (printed).
//! On a failure the whole history goes to a file under `CARGO_TARGET_TMPDIR`, and the
//! operations it concerns are printed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rewind_protocol::frame::{
    decode_server_json, encode_client_json, ClientFrame, ServerFrame, ServerMessage,
};
use rewind_protocol::Payload;
use rewind_tests::fault::{self, NsLog, Rng};
use rewind_tests::Broker;
use rewind_tests::{Method, StatusCode};
use tokio_tungstenite::tungstenite::Message;

const NAMESPACES: [&str; 3] = ["h0", "h1", "h2"];
/// A request or answer that takes longer than this fails the test (a guard against hangs).
const PATIENCE: Duration = Duration::from_secs(30);
/// WebSocket publishes in flight at once.
const WS_WINDOW: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Batch,
    Single,
    Ws,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Not sent or not answered yet.
    Pending,
    /// Acknowledged at offsets `first..first + events`.
    Acked { first: u64, replayed: bool },
    /// No answer (the broker died): may or may not be stored.
    Unknown,
    /// Refused with this status or code: nothing stored.
    Refused(String),
}

/// One request of the history.
#[derive(Debug, Clone)]
struct Op {
    id: String,
    kind: Kind,
    ns: &'static str,
    key: Option<String>,
    /// The events' `data` texts; event `i` has name `kind_name()` and key `k{i}` if i is even.
    data: Vec<String>,
    outcome: Outcome,
    /// The answer to the retry after the restart.
    retry: Option<Outcome>,
    /// The answer to sending it again after a later restart although it was acknowledged.
    recheck: Option<Outcome>,
}

impl Op {
    /// An operation of `n` events, each with `pad` bytes of padding in its payload.
    fn new(id: String, kind: Kind, ns: &'static str, key: bool, n: usize, pad: usize) -> Op {
        let pad = "p".repeat(pad);
        let data = (0..n)
            .map(|i| format!(r#"{{"op":"{id}","i":{i},"pad":"{pad}"}}"#))
            .collect();
        Op {
            key: key.then(|| format!("key-{id}")),
            id,
            kind,
            ns,
            data,
            outcome: Outcome::Pending,
            retry: None,
            recheck: None,
        }
    }

    fn event_name(&self) -> &'static str {
        match self.kind {
            Kind::Batch => "batch",
            Kind::Single => "single",
            Kind::Ws => "ws",
        }
    }

    fn event_key(i: usize) -> Option<String> {
        i.is_multiple_of(2).then(|| format!("k{i}"))
    }

    fn http_body(&self) -> String {
        let one = |i: usize| {
            let mut s = format!(
                r#"{{"event":"{}","data":{}"#,
                self.event_name(),
                self.data[i]
            );
            if let Some(k) = Op::event_key(i) {
                let _ = write!(s, r#","key":"{k}""#);
            }
            s.push('}');
            s
        };
        match self.kind {
            Kind::Batch => {
                let parts: Vec<String> = (0..self.data.len()).map(one).collect();
                format!("[{}]", parts.join(","))
            }
            _ => one(0),
        }
    }

    fn ws_frame(&self, id: u64) -> String {
        encode_client_json(&ClientFrame::Publish {
            id,
            ns: self.ns.to_owned(),
            event: self.event_name().to_owned(),
            data: Some(Payload::Json(self.data[0].clone())),
            key: Op::event_key(0),
            idempotency_key: self.key.clone(),
        })
    }

    /// The answer that counts: the retry's if there was one.
    fn last(&self) -> &Outcome {
        self.retry.as_ref().unwrap_or(&self.outcome)
    }

    fn line(&self) -> String {
        format!(
            "{} {:?} ns={} n={} key={} -> {:?}{}",
            self.id,
            self.kind,
            self.ns,
            self.data.len(),
            self.key.as_deref().unwrap_or("-"),
            self.outcome,
            self.retry
                .as_ref()
                .map(|r| format!(" / retry -> {r:?}"))
                .unwrap_or_default()
                + &self
                    .recheck
                    .as_ref()
                    .map(|r| format!(" / sent again -> {r:?}"))
                    .unwrap_or_default()
        )
    }
}

/// The history of every round: the operations, and events of the kills and restarts.
#[derive(Default)]
struct History {
    ops: Vec<Op>,
    notes: Vec<String>,
}

type Shared = Arc<Mutex<History>>;

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, History> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

fn record(h: &Shared, op: Op) -> usize {
    let mut h = lock(h);
    h.ops.push(op);
    h.ops.len() - 1
}

fn settle(h: &Shared, at: usize, outcome: Outcome) {
    lock(h).ops[at].outcome = outcome;
}

/// Publishes with HTTP until the broker stops answering; returns when it does.
async fn http_worker(
    addr: SocketAddr,
    h: Shared,
    acked: Arc<AtomicU64>,
    round: u32,
    kind: Kind,
    worker: u32,
    mut rng: Rng,
) {
    for n in 0u64.. {
        let ns = NAMESPACES[rng.range(0, 2) as usize];
        let (events, key) = match kind {
            Kind::Batch => (rng.range(20, 500) as usize, true),
            _ => (1, rng.range(0, 1) == 0),
        };
        let id = format!("r{round}{}{worker}n{n}", &format!("{kind:?}")[..1]);
        let op = Op::new(id, kind, ns, key, events, rng.range(0, 1000) as usize);
        let body = op.http_body();
        let key = op.key.clone();
        let at = record(&h, op);
        let mut headers = vec![("content-type", "application/json")];
        if let Some(k) = &key {
            headers.push(("idempotency-key", k));
        }
        let path = format!("/v1/namespaces/{ns}/events");
        let sent = tokio::time::timeout(
            PATIENCE,
            rewind_tests::request(addr, Method::POST, &path, &headers, body.into()),
        )
        .await;
        let outcome = match sent {
            Err(_) => panic!("POST {path} unanswered for {PATIENCE:?} while the broker ran"),
            Ok(Err(_)) => Outcome::Unknown,
            Ok(Ok(r)) => http_outcome(&r, events),
        };
        let stop = outcome == Outcome::Unknown;
        if let Outcome::Acked { .. } = outcome {
            acked.fetch_add(events as u64, Ordering::SeqCst);
        }
        settle(&h, at, outcome);
        if stop {
            return;
        }
    }
}

fn http_outcome(r: &rewind_tests::Response, events: usize) -> Outcome {
    if r.status != StatusCode::CREATED {
        return Outcome::Refused(format!(
            "{} {}",
            r.status.as_u16(),
            String::from_utf8_lossy(&r.body)
        ));
    }
    let v = r.json();
    let replayed = r
        .headers
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let first = match (
        v["offset"].as_u64(),
        v["first"].as_u64(),
        v["last"].as_u64(),
    ) {
        (Some(o), None, None) if events == 1 => o,
        (None, Some(f), Some(l)) if l + 1 == f + events as u64 => f,
        _ => return Outcome::Refused(format!("201 with a wrong shape: {v}")),
    };
    Outcome::Acked { first, replayed }
}

/// Publishes over one WebSocket, up to [`WS_WINDOW`] unanswered at a time, until the
/// connection ends.
async fn ws_worker(addr: SocketAddr, h: Shared, acked: Arc<AtomicU64>, round: u32, mut rng: Rng) {
    let url = format!("ws://{addr}/v1/ws");
    let Ok(Ok((socket, _))) =
        tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url)).await
    else {
        return;
    };
    let (mut sink, mut stream) = socket.split();
    let mut in_flight: std::collections::VecDeque<(u64, usize)> = Default::default();
    let mut next_id = 0u64;
    loop {
        while in_flight.len() < WS_WINDOW {
            let ns = NAMESPACES[rng.range(0, 2) as usize];
            let op = Op::new(
                format!("r{round}W0n{next_id}"),
                Kind::Ws,
                ns,
                rng.range(0, 1) == 0,
                1,
                rng.range(0, 1000) as usize,
            );
            let frame = op.ws_frame(next_id);
            let at = record(&h, op);
            // Sent or not, it is unanswered until an answer comes.
            settle(&h, at, Outcome::Unknown);
            in_flight.push_back((next_id, at));
            next_id += 1;
            if sink.send(Message::Text(frame.into())).await.is_err() {
                return;
            }
        }
        let msg = match tokio::time::timeout(PATIENCE, stream.next()).await {
            Err(_) => panic!("no WebSocket answer for {PATIENCE:?} while the broker ran"),
            Ok(Some(Ok(m))) => m,
            Ok(_) => return,
        };
        let Message::Text(text) = msg else {
            if let Message::Close(_) = msg {
                return;
            }
            continue;
        };
        let frame = match decode_server_json(&text) {
            Ok(ServerMessage::Frame(f)) => f,
            other => panic!("unexpected WebSocket message {other:?}"),
        };
        let (id, outcome) = match frame {
            ServerFrame::Published { id, offset, .. } => (
                id,
                Outcome::Acked {
                    first: offset,
                    replayed: false,
                },
            ),
            ServerFrame::Error {
                id: Some(id), code, ..
            } => (id, Outcome::Refused(code)),
            ServerFrame::Ping | ServerFrame::Pong => continue,
            other => panic!("unexpected WebSocket frame {other:?}"),
        };
        let Some((expected, at)) = in_flight.pop_front() else {
            panic!("an answer to id {id} with nothing in flight");
        };
        assert_eq!(id, expected, "publish answers come in the order sent");
        if let Outcome::Acked { .. } = outcome {
            acked.fetch_add(1, Ordering::SeqCst);
        }
        settle(&h, at, outcome);
    }
}

/// Retries, with its key, every unanswered keyed request of the history (HTTP ones over
/// HTTP, WebSocket ones over one WebSocket), recording the answers.
async fn retry_unanswered(b: &Broker, h: &Shared) {
    let todo: Vec<(usize, Op)> = lock(h)
        .ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.outcome == Outcome::Unknown && o.key.is_some() && o.retry.is_none())
        .map(|(i, o)| (i, o.clone()))
        .collect();
    let mut ws = None;
    for (at, op) in todo {
        let outcome = resend(b, &mut ws, at, &op).await;
        lock(h).ops[at].retry = Some(outcome);
    }
}

/// Sends again, with its key, up to `n` acknowledged keyed requests of any round (chosen at
/// random): each must answer its original offsets and append nothing — keys survive crashes.
async fn resend_acknowledged(b: &Broker, h: &Shared, n: usize, rng: &mut Rng) {
    let acked: Vec<(usize, Op)> = lock(h)
        .ops
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o.outcome, Outcome::Acked { .. }) && o.key.is_some())
        .map(|(i, o)| (i, o.clone()))
        .collect();
    let mut ws = None;
    for _ in 0..n.min(acked.len()) {
        let (at, op) = &acked[rng.range(0, acked.len() as u64 - 1) as usize];
        let outcome = resend(b, &mut ws, *at, op).await;
        lock(h).ops[*at].recheck = Some(outcome);
    }
}

/// Sends `op` (number `at` of the history) again with its key, over its own transport.
async fn resend(
    b: &Broker,
    ws: &mut Option<rewind_tests::ws::Client>,
    at: usize,
    op: &Op,
) -> Outcome {
    if op.kind == Kind::Ws {
        let client = match ws {
            Some(c) => c,
            None => ws.insert(rewind_tests::ws::Client::connect(b.addr, None).await),
        };
        // The frame's text as it is: a JSON value would reorder the payload's keys.
        client
            .raw(Message::Text(op.ws_frame(at as u64).into()))
            .await;
        let answer = loop {
            match client.next().await {
                ServerMessage::Frame(ServerFrame::Ping) => {}
                ServerMessage::Frame(f) => break f,
                ServerMessage::Event(e) => panic!("unexpected event {e:?}"),
            }
        };
        match answer {
            ServerFrame::Published { id, offset, .. } if id == at as u64 => Outcome::Acked {
                first: offset,
                replayed: false,
            },
            ServerFrame::Error { code, .. } => Outcome::Refused(code),
            other => Outcome::Refused(format!("unexpected answer {other:?}")),
        }
    } else {
        let key = op.key.clone().unwrap_or_default();
        let r = b
            .request(
                Method::POST,
                &format!("/v1/namespaces/{}/events", op.ns),
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", &key),
                ],
                op.http_body(),
            )
            .await;
        http_outcome(&r, op.data.len())
    }
}

/// Where each stored event came from: `(op index, event index)`.
fn identify(data: &str, index: &HashMap<String, usize>) -> Option<(usize, usize)> {
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    let op = *index.get(v["op"].as_str()?)?;
    Some((op, v["i"].as_u64()? as usize))
}

/// Checks the namespaces as read against the history. `Err` names what is wrong and the
/// operations concerned.
fn check(
    h: &History,
    logs: &HashMap<&'static str, NsLog>,
    epochs: &HashMap<&'static str, String>,
) -> Result<(), (String, Vec<usize>)> {
    let index: HashMap<String, usize> = h
        .ops
        .iter()
        .enumerate()
        .map(|(i, o)| (o.id.clone(), i))
        .collect();
    // op -> event index -> offsets where it is stored
    let mut seen: HashMap<usize, HashMap<usize, Vec<u64>>> = HashMap::new();
    for (ns, log) in logs {
        if let Some(e) = epochs.get(ns) {
            if *e != log.epoch {
                return Err((
                    format!(
                        "{ns}: epoch changed from {e} to {} across kill -9",
                        log.epoch
                    ),
                    vec![],
                ));
            }
        }
        if log.earliest != 0 || log.next != log.events.len() as u64 {
            return Err((
                format!(
                    "{ns}: earliest {} next {} but {} events: offsets not dense from 0",
                    log.earliest,
                    log.next,
                    log.events.len()
                ),
                vec![],
            ));
        }
        for (j, ev) in log.events.iter().enumerate() {
            if ev.offset != j as u64 {
                return Err((
                    format!("{ns}: offset {} at position {j}: not dense", ev.offset),
                    vec![],
                ));
            }
            let Payload::Json(text) = &ev.data else {
                return Err((
                    format!("{ns}@{}: a bytes payload nobody sent", ev.offset),
                    vec![],
                ));
            };
            let Some((op, i)) = identify(text, &index) else {
                return Err((
                    format!("{ns}@{}: {text} was never published", ev.offset),
                    vec![],
                ));
            };
            let o = &h.ops[op];
            if o.ns != *ns
                || o.data.get(i) != Some(text)
                || ev.event != o.event_name()
                || ev.key != Op::event_key(i)
            {
                return Err((
                    format!(
                        "{ns}@{}: changed: {} {:?} {text} is not what {} published",
                        ev.offset, ev.event, ev.key, o.id
                    ),
                    vec![op],
                ));
            }
            seen.entry(op)
                .or_default()
                .entry(i)
                .or_default()
                .push(ev.offset);
        }
    }
    for (at, o) in h.ops.iter().enumerate() {
        let stored = seen.get(&at);
        if let Some(stored) = stored {
            let twice = stored.values().filter(|offs| offs.len() > 1).count();
            if let Some((i, offs)) = stored.iter().find(|(_, offs)| offs.len() > 1) {
                return Err((
                    format!(
                        "{}: {twice} of its {} events stored more than once (event {i} at {offs:?})",
                        o.id,
                        o.data.len()
                    ),
                    vec![at],
                ));
            }
        }
        let count = stored.map_or(0, HashMap::len);
        let first = stored.and_then(|s| s.get(&0)).map(|v| v[0]);
        if count != 0 && count != o.data.len() {
            return Err((
                format!(
                    "{}: {count} of its {} events stored, not all or nothing",
                    o.id,
                    o.data.len()
                ),
                vec![at],
            ));
        }
        if let Some(first) = first {
            for i in 0..o.data.len() {
                let at_i = stored.and_then(|s| s.get(&i)).map(|v| v[0]);
                if at_i != Some(first + i as u64) {
                    return Err((
                        format!(
                            "{}: event {i} at {at_i:?}, not at {}",
                            o.id,
                            first + i as u64
                        ),
                        vec![at],
                    ));
                }
            }
        }
        match (&o.outcome, &o.retry) {
            (Outcome::Acked { first: f, .. }, _) if first != Some(*f) => {
                return Err((
                    format!("{}: acknowledged at {f}, stored at {first:?}", o.id),
                    vec![at],
                ));
            }
            (Outcome::Refused(why), _) if count != 0 => {
                return Err((format!("{}: refused ({why}) but stored", o.id), vec![at]));
            }
            (Outcome::Unknown, Some(Outcome::Acked { first: f, .. })) if first != Some(*f) => {
                return Err((
                    format!("{}: the retry answered {f}, stored at {first:?}", o.id),
                    vec![at],
                ));
            }
            (Outcome::Unknown, Some(Outcome::Refused(why))) => {
                return Err((format!("{}: the retry was refused: {why}", o.id), vec![at]));
            }
            (Outcome::Acked { first: f, .. }, _)
                if o.recheck.as_ref().is_some_and(|r| {
                    *r != Outcome::Acked {
                        first: *f,
                        replayed: o.kind != Kind::Ws,
                    }
                }) =>
            {
                return Err((
                    format!(
                        "{}: acknowledged at {f}; sent again with its key after a restart: {:?}, not a replay of {f}",
                        o.id, o.recheck
                    ),
                    vec![at],
                ));
            }
            (Outcome::Pending, _) => {
                return Err((format!("{}: still pending after the round", o.id), vec![at]));
            }
            _ => {}
        }
    }
    Ok(())
}

fn fail(h: &History, seed_note: &str, what: &str, ops: &[usize]) -> ! {
    let mut full = String::new();
    for n in &h.notes {
        let _ = writeln!(full, "# {n}");
    }
    for o in &h.ops {
        let _ = writeln!(full, "{}", o.line());
    }
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("crash_history.txt");
    let saved = std::fs::write(&file, &full).is_ok();
    let concerned: Vec<String> = ops.iter().map(|&i| h.ops[i].line()).collect();
    let unanswered: Vec<String> = h
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Unknown)
        .rev()
        .take(40)
        .map(Op::line)
        .collect();
    panic!(
        "{what}\n{seed_note}\nconcerned:\n  {}\nlast unanswered requests:\n  {}\nrounds:\n  {}\nfull history ({} requests): {}",
        concerned.join("\n  "),
        unanswered.join("\n  "),
        h.notes.join("\n  "),
        h.ops.len(),
        if saved { file.display().to_string() } else { "not saved".into() }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_history_batches_singles_and_websocket_publishes() {
    let rounds = fault::env_count("REWIND_CRASH_ROUNDS", 20) as u32;
    history(rounds, &[]).await;
}

/// Relaxed mode acknowledges on write: `kill -9` (not a power cut) still loses nothing
/// acknowledged, and batches are still whole or absent; namespaces written since the last
/// flush get a new epoch, so epochs are not compared. A quarter of the durable rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_history_in_relaxed_mode() {
    let rounds = (fault::env_count("REWIND_CRASH_ROUNDS", 20) as u32 / 4).max(1);
    history(rounds, &["--durability", "relaxed"]).await;
}

/// The history check: `rounds` rounds on one data directory, every start with `mode_args`.
async fn history(rounds: u32, mode_args: &[&str]) {
    let durable = mode_args.is_empty();
    let mut rng = Rng::from_env("REWIND_CRASH_SEED");
    let seed_note = format!(
        "repeat with the seed printed above (REWIND_CRASH_SEED), {rounds} rounds, {mode_args:?}"
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let mut b = Broker::open(&data, mode_args).unwrap_or_else(|r| panic!("first start: {r}"));
    let h: Shared = Arc::default();
    let mut epochs: HashMap<&'static str, String> = HashMap::new();
    for round in 0..rounds {
        let started = Instant::now();
        let acked = Arc::new(AtomicU64::new(0));
        let kill_after = rng.range(200, 3000);
        let mut tasks = Vec::new();
        for (w, kind) in [
            (0, Kind::Batch),
            (1, Kind::Batch),
            (2, Kind::Batch),
            (0, Kind::Single),
        ] {
            let (h, acked, r) = (Arc::clone(&h), Arc::clone(&acked), Rng::new(rng.next_u64()));
            tasks.push(tokio::spawn(http_worker(
                b.addr, h, acked, round, kind, w, r,
            )));
        }
        {
            let (h, acked, r) = (Arc::clone(&h), Arc::clone(&acked), Rng::new(rng.next_u64()));
            tasks.push(tokio::spawn(ws_worker(b.addr, h, acked, round, r)));
        }
        // The random moment: once `kill_after` events are acknowledged.
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < kill_after {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} of {kill_after} events acknowledged in 120 s",
                acked.load(Ordering::SeqCst)
            );
            if tasks.iter().any(|t| t.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // ... and a little later, so the kill does not always follow an acknowledgement.
        tokio::time::sleep(Duration::from_micros(rng.range(0, 50_000))).await;
        b.kill9();
        for t in tasks {
            tokio::time::timeout(PATIENCE, t)
                .await
                .expect("publishers stop once the broker is gone")
                .expect("publisher task");
        }
        // Every other start (at random) checkpoints every 5 ms, so kills also land in the
        // middle of checkpoints.
        let mut args = mode_args.to_vec();
        if rng.range(0, 1) == 0 {
            args.extend(["--checkpoint-interval-ms", "5"]);
        }
        match Broker::open(&data, &args) {
            Ok(next) => b = next,
            Err(r) => {
                let hist = lock(&h);
                fail(
                    &hist,
                    &seed_note,
                    &format!("round {round}: restart after kill -9 ({args:?}) {r}"),
                    &[],
                );
            }
        }
        fault::assert_no_panic(&b.stderr(), "after restart");
        retry_unanswered(&b, &h).await;
        resend_acknowledged(&b, &h, 20, &mut rng).await;
        let mut logs = HashMap::new();
        for ns in NAMESPACES {
            if let Some(log) = fault::read_ns(&b, ns).await {
                logs.insert(ns, log);
            }
        }
        let mut hist = lock(&h);
        let unknown = hist
            .ops
            .iter()
            .filter(|o| o.id.starts_with(&format!("r{round}")) && o.outcome == Outcome::Unknown)
            .count();
        hist.notes.push(format!(
            "round {round}: killed after {} acknowledged events (target {kill_after}), {unknown} unanswered, {:?}",
            acked.load(Ordering::SeqCst),
            started.elapsed()
        ));
        if let Err((what, ops)) = check(&hist, &logs, &epochs) {
            fail(&hist, &seed_note, &format!("round {round}: {what}"), &ops);
        }
        for (ns, log) in &logs {
            if durable {
                epochs.entry(ns).or_insert_with(|| log.epoch.clone());
            }
        }
        let total: usize = logs.values().map(|l| l.events.len()).sum();
        eprintln!(
            "{} ({total} events stored)",
            hist.notes.last().expect("note")
        );
    }
    let hist = lock(&h);
    let acked_events: usize = hist
        .ops
        .iter()
        .filter(|o| matches!(o.last(), Outcome::Acked { .. }))
        .map(|o| o.data.len())
        .sum();
    let retried = hist.ops.iter().filter(|o| o.retry.is_some()).count();
    assert!(acked_events > 0 && rounds > 0, "nothing was acknowledged");
    eprintln!("{rounds} rounds, {acked_events} events acknowledged, {retried} requests retried");
}
