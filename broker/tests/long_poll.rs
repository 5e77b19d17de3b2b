//! Long-poll reads of the engine (`Log::read` with a wait): woken by an append to their
//! namespace, told at once of its deletion, answered empty at shutdown and at the end of
//! the wait (capped by `max_wait_secs`). Spec §3.3; `Log::read`'s docs.

mod common;

use std::time::{Duration, Instant};

use common::{config, events, open, BOUND};
use rewind_broker::{LogError, ReadRequest};
use rewind_protocol::{ErrorCode, Position};

/// A wait far longer than `BOUND`: a read that returns within `BOUND` was answered by
/// something other than the end of its wait.
const LONG: Duration = Duration::from_secs(60);

fn waiting(from: Position, wait: Duration) -> ReadRequest {
    ReadRequest {
        from,
        limit: 100,
        wait,
    }
}

#[tokio::test]
async fn a_waiting_read_wakes_when_an_event_is_appended_to_its_namespace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open(config(dir.path()));
    log.append("p", events("a", 0, 1), None)
        .await
        .expect("append");

    let mut at_next = Box::pin(log.read("p", waiting(Position::Offset(1), LONG)));
    let mut at_latest = Box::pin(log.read("p", waiting(Position::Latest, LONG)));
    assert!(futures::poll!(&mut at_next).is_pending(), "did not wait");
    assert!(futures::poll!(&mut at_latest).is_pending(), "did not wait");

    // An append elsewhere answers neither.
    log.append("other", events("x", 0, 1), None)
        .await
        .expect("append");
    assert!(
        futures::poll!(&mut at_next).is_pending(),
        "woken by another namespace"
    );
    assert!(
        futures::poll!(&mut at_latest).is_pending(),
        "woken by another namespace"
    );

    log.append("p", events("b", 1, 2), None)
        .await
        .expect("append");
    for read in [at_next, at_latest] {
        let page = tokio::time::timeout(BOUND, read)
            .await
            .expect("woken by the append, not the end of the wait")
            .expect("read");
        let got: Vec<(u64, &str)> = page
            .events
            .iter()
            .map(|e| (e.offset, e.event.as_str()))
            .collect();
        assert_eq!(got, [(1, "b"), (2, "b")]);
        assert_eq!((page.next, page.earliest, page.truncated), (3, 0, false));
    }
    log.shutdown().await;
}

#[tokio::test]
async fn a_waiting_read_is_told_at_once_when_its_namespace_is_deleted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open(config(dir.path()));
    log.append("d", events("a", 0, 1), None)
        .await
        .expect("append");
    let mut read = Box::pin(log.read("d", waiting(Position::Offset(1), LONG)));
    assert!(futures::poll!(&mut read).is_pending(), "did not wait");

    assert!(log.delete("d").await.expect("delete"), "it existed");
    let err = tokio::time::timeout(BOUND, read)
        .await
        .expect("told of the delete, not at the end of the wait")
        .expect_err("a deleted namespace has nothing to read");
    assert_eq!(err, LogError::Deleted("d".into()));
    assert_eq!(err.code(), ErrorCode::NotFound);

    // A read that comes after the delete finds nothing either, and creates nothing.
    let after = log
        .read("d", waiting(Position::Earliest, LONG))
        .await
        .expect_err("gone");
    assert_eq!(after.code(), ErrorCode::NotFound);
    assert!(log.info("d").await.expect("info").is_none());
    log.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_a_waiting_read_with_an_empty_page() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open(config(dir.path()));
    log.append("s", events("a", 0, 2), None)
        .await
        .expect("append");
    let mut read = Box::pin(log.read("s", waiting(Position::Offset(2), LONG)));
    assert!(futures::poll!(&mut read).is_pending(), "did not wait");

    log.begin_shutdown();
    let page = tokio::time::timeout(BOUND, read)
        .await
        .expect("answered at shutdown, not at the end of the wait")
        .expect("read");
    assert!(page.events.is_empty(), "{:?}", page.events);
    assert_eq!((page.next, page.earliest, page.truncated), (2, 0, false));
    log.shutdown().await;
}

#[tokio::test]
async fn a_read_with_nothing_to_read_answers_empty_at_the_end_of_its_wait() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open(config(dir.path()));
    log.append("t", events("a", 0, 3), None)
        .await
        .expect("append");
    let wait = Duration::from_millis(300);

    let started = Instant::now();
    let page = tokio::time::timeout(BOUND, log.read("t", waiting(Position::Offset(3), wait)))
        .await
        .expect("answered at the end of the wait")
        .expect("read");
    assert!(
        started.elapsed() >= wait,
        "answered after {:?}, before its wait of {wait:?} ended",
        started.elapsed()
    );
    assert!(page.events.is_empty(), "{:?}", page.events);
    assert_eq!((page.next, page.earliest, page.truncated), (3, 0, false));

    // The next poll, from the page's `next`, gets what came meanwhile: nothing is skipped.
    log.append("t", events("b", 3, 1), None)
        .await
        .expect("append");
    let page = log
        .read("t", waiting(Position::Offset(page.next), wait))
        .await
        .expect("read");
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [3]
    );
    log.shutdown().await;
}

#[tokio::test]
async fn a_wait_is_capped_at_max_wait_secs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open(rewind_broker::config::Config {
        max_wait_secs: 1,
        ..config(dir.path())
    });
    log.append("c", events("a", 0, 1), None)
        .await
        .expect("append");

    let started = Instant::now();
    let page = tokio::time::timeout(
        BOUND,
        log.read("c", waiting(Position::Latest, Duration::from_secs(3600))),
    )
    .await
    .expect("the wait was capped at max_wait_secs")
    .expect("read");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(page.events.is_empty(), "{:?}", page.events);
    assert_eq!(page.next, 1);
    log.shutdown().await;
}
