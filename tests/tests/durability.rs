//! What survives: clean restarts, `kill -9` under concurrent publishers, relaxed mode.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rewind_protocol::codec::ReadPage;
use rewind_protocol::{Event, Payload};
use rewind_tests::Broker;
use rewind_tests::{Method, StatusCode};
use tokio::sync::watch;

/// Every event of a namespace, read page by page.
async fn read_all(b: &Broker, ns: &str) -> Vec<Event> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let r = b
            .get(&format!(
                "/v1/namespaces/{ns}/events?from={from}&limit=1000"
            ))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let page = ReadPage::from_json(&r.body).unwrap();
        if page.events.is_empty() {
            return out;
        }
        from = page.next;
        out.extend(page.events);
    }
}

#[tokio::test]
async fn clean_restart_keeps_events_epoch_and_offsets() {
    let mut b = Broker::start(&[]);
    b.post_json(
        "/v1/namespaces/c/events",
        r#"[{"event":"a","data":1},{"event":"b","data":2}]"#,
    )
    .await;
    let epoch = b.get("/v1/namespaces/c").await.json()["epoch"].clone();
    let status = b.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    b.restart();
    let info = b.get("/v1/namespaces/c").await.json();
    assert_eq!(info["epoch"], epoch);
    assert_eq!(info["next"], 2);
    let r = b
        .post_json("/v1/namespaces/c/events", r#"{"event":"c"}"#)
        .await;
    assert_eq!(r.json()["offset"], 2);
    let events = read_all(&b, "c").await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[1].data, Payload::Json("2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_eight_concurrent_publishers_loses_no_acknowledged_event() {
    const PUBLISHERS: usize = 8;
    const KILL_AFTER_ACKS: usize = 1000;
    let mut b = Broker::start(&[]);
    let addr = b.addr;
    let (acks_tx, mut acks_rx) = watch::channel(0usize);
    let acks_tx = Arc::new(acks_tx);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let acks_tx = Arc::clone(&acks_tx);
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(u64, String)> = Vec::new();
            for n in 0.. {
                let data = format!(r#"{{"p":{p},"n":{n}}}"#);
                let body = format!(r#"{{"event":"e","data":{data}}}"#);
                let res = rewind_tests::request(
                    addr,
                    Method::POST,
                    "/v1/namespaces/k9/events",
                    &[("content-type", "application/json")],
                    body.into(),
                )
                .await;
                match res {
                    Ok(r) if r.status == StatusCode::CREATED => {
                        acked.push((r.json()["offset"].as_u64().unwrap(), data));
                        acks_tx.send_modify(|n| *n += 1);
                    }
                    // The broker is gone (or going): stop.
                    _ => break,
                }
            }
            acked
        }));
    }
    acks_rx.wait_for(|n| *n >= KILL_AFTER_ACKS).await.unwrap();
    b.kill9();
    let mut acked: HashMap<u64, String> = HashMap::new();
    for t in tasks {
        for (offset, data) in t.await.unwrap() {
            assert!(
                acked.insert(offset, data).is_none(),
                "offset {offset} acknowledged twice"
            );
        }
    }
    assert!(acked.len() >= KILL_AFTER_ACKS);

    b.restart();
    let events = read_all(&b, "k9").await;
    let next = b.get("/v1/namespaces/k9").await.json()["next"]
        .as_u64()
        .unwrap();
    assert_eq!(events.len() as u64, next);
    let mut seen = HashSet::new();
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev.offset, i as u64, "offsets must be dense from 0");
        let Payload::Json(data) = &ev.data else {
            panic!("unexpected payload")
        };
        assert!(seen.insert(data.clone()), "{data} stored twice");
    }
    for (offset, data) in &acked {
        let stored = events
            .get(*offset as usize)
            .unwrap_or_else(|| panic!("acknowledged offset {offset} lost (next is {next})"));
        assert_eq!(
            stored.data,
            Payload::Json(data.clone()),
            "offset {offset} changed"
        );
    }
    // The broker takes new writes after the crash, right after the last offset.
    let r = b
        .post_json("/v1/namespaces/k9/events", r#"{"event":"after"}"#)
        .await;
    assert_eq!(r.json()["offset"], next);
}

async fn epoch(b: &Broker, ns: &str) -> serde_json::Value {
    b.get(&format!("/v1/namespaces/{ns}")).await.json()["epoch"].clone()
}

/// The namespaces in the data directory's `dirty` file, and the file's identity (inode and
/// modification time: each write of it creates a new file and renames it over the old).
fn dirty_marks(b: &Broker) -> (Vec<String>, (u64, std::time::SystemTime)) {
    use std::os::unix::fs::MetadataExt;
    let path = b.data_dir.join("dirty");
    let text = std::fs::read_to_string(&path).expect("the dirty file");
    let meta = std::fs::metadata(&path).expect("the dirty file");
    let id = (meta.ino(), meta.modified().expect("mtime"));
    (text.lines().map(str::to_owned).collect(), id)
}

/// Waits (at most 10 s) until `done` holds for the dirty marks, and returns them.
async fn dirty_marks_until(
    b: &Broker,
    done: impl Fn(&[String]) -> bool,
) -> (Vec<String>, (u64, std::time::SystemTime)) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let marks = dirty_marks(b);
        if done(&marks.0) {
            return marks;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dirty marks never got there: {:?}",
            marks.0
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Issue 14: relaxed mode keeps a steadily published namespace's dirty mark across flushes
/// (the `dirty` file is not written again while it is published) and clears a namespace's
/// mark once it has gone quiet and been flushed. `kill -9` while publishing still gives the
/// published namespace a new epoch, with every acknowledged event; the quiet one keeps its.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_mode_keeps_the_mark_of_a_namespace_published_steadily() {
    const FLUSH_MS: u64 = 400;
    const PUBLISHERS: usize = 2;
    let flush = FLUSH_MS.to_string();
    let mut b = Broker::start(&["--durability", "relaxed", "--flush-interval-ms", &flush]);
    let addr = b.addr;
    let (acks_tx, mut acks_rx) = watch::channel(0usize);
    let acks_tx = Arc::new(acks_tx);
    // Each publishes one event after another to `steady` until the broker is gone, and
    // returns the offsets acknowledged.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let acks_tx = Arc::clone(&acks_tx);
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0u64.. {
                    let res = rewind_tests::request(
                        addr,
                        Method::POST,
                        "/v1/namespaces/steady/events",
                        &[("content-type", "application/json")],
                        format!(r#"{{"event":"e","data":[{p},{n}]}}"#).into(),
                    )
                    .await;
                    match res {
                        Ok(r) if r.status == StatusCode::CREATED => {
                            acked.push(r.json()["offset"].as_u64().unwrap());
                            acks_tx.send_modify(|n| *n += 1);
                        }
                        // The broker is gone: stop.
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    acks_rx.wait_for(|n| *n >= 1).await.unwrap();
    let steady_epoch = epoch(&b, "steady").await;

    // A quiet namespace: marked on disk once its publish is answered (a flush clears it
    // only at the second flush after, FLUSH_MS at least), unmarked once quiet and flushed.
    for i in 0..3 {
        b.publish("quiet", &format!(r#"{{"event":"q","data":{i}}}"#))
            .await;
    }
    let (marks, _) = dirty_marks(&b);
    assert!(marks.iter().any(|m| m == "quiet"), "{marks:?}");
    let quiet_epoch = epoch(&b, "quiet").await;
    let (_, id) = dirty_marks_until(&b, |m| m == ["steady"]).await;

    // Six more flush intervals of steady publishing: the file is not written again. A
    // pause of the publishers as long as a flush interval (a loaded machine) would let a
    // flush clear the mark and the next publish write it again, so only the acknowledgements
    // coming closer together than that make the check.
    let before = *acks_rx.borrow();
    let since = std::time::Instant::now();
    let mut last = since;
    let mut longest = std::time::Duration::ZERO;
    while since.elapsed() < std::time::Duration::from_millis(6 * FLUSH_MS) {
        acks_rx.changed().await.unwrap();
        longest = longest.max(last.elapsed());
        last = std::time::Instant::now();
    }
    let (marks_after, id_after) = dirty_marks(&b);
    assert!(*acks_rx.borrow() > before + 6);
    if longest < std::time::Duration::from_millis(FLUSH_MS / 2) {
        assert_eq!(marks_after, ["steady"], "steady lost its mark");
        assert_eq!(
            id_after, id,
            "the dirty file was written while steady was published"
        );
    } else {
        eprintln!("publishers paused {longest:?}: the dirty file's identity is not checked");
    }

    b.kill9();
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    b.restart();
    assert_eq!(
        epoch(&b, "quiet").await,
        quiet_epoch,
        "quiet, flushed: same epoch"
    );
    assert_ne!(
        epoch(&b, "steady").await,
        steady_epoch,
        "killed while published: new epoch"
    );
    let events = read_all(&b, "steady").await;
    for offset in &acked {
        assert!(
            (*offset as usize) < events.len(),
            "acknowledged offset {offset} lost"
        );
    }
    assert_eq!(read_all(&b, "quiet").await.len(), 3);
}

#[tokio::test]
async fn relaxed_mode_changes_the_epoch_only_after_an_unclean_shutdown() {
    // A long flush interval keeps the writes unflushed when the broker is killed.
    let mut b = Broker::start(&["--durability", "relaxed", "--flush-interval-ms", "600000"]);
    b.post_json("/v1/namespaces/rx/events", r#"{"event":"a"}"#)
        .await;
    b.post_json("/v1/namespaces/quiet/events", r#"{"event":"a"}"#)
        .await;
    let rx_epoch = epoch(&b, "rx").await;
    assert!(b.terminate().success());
    b.restart();
    assert_eq!(
        epoch(&b, "rx").await,
        rx_epoch,
        "a clean shutdown keeps the epoch"
    );

    let quiet_epoch = epoch(&b, "quiet").await;
    b.post_json("/v1/namespaces/rx/events", r#"{"event":"b"}"#)
        .await;
    b.kill9();
    b.restart();
    assert_ne!(
        epoch(&b, "rx").await,
        rx_epoch,
        "unflushed writes: new epoch"
    );
    assert_eq!(
        epoch(&b, "quiet").await,
        quiet_epoch,
        "no unflushed writes: same epoch"
    );
}
