//! The storage contract, run against every implementation.

use proptest::prelude::*;
use rewind_protocol::idempotency::RequestDigest;
use rewind_protocol::{NewEvent, Payload};

use super::log_store::LogStore;
use super::open::OpenOptions;
use super::Retention;
use super::{Appended, IdempotencyKey, Storage, StoreError};

fn ev(name: &str, data: &str) -> NewEvent {
    NewEvent {
        event: name.to_owned(),
        key: None,
        data: Payload::Json(data.to_owned()),
    }
}

/// One implementation under test: how to open it on a directory (again, for restarts).
trait Subject {
    fn open(dir: &std::path::Path) -> Box<dyn Storage>;
    /// Whether [`Storage::mark_dirty`] marks survive a restart and give new epochs (the
    /// Redis store keeps none: a node holds no unwritten events, docs/storage.md).
    const KEEPS_DIRTY_MARKS: bool = true;
}

struct Segmented;

impl Subject for Segmented {
    fn open(dir: &std::path::Path) -> Box<dyn Storage> {
        // Small segments, so every test crosses segment boundaries.
        let opts = OpenOptions {
            cache_bytes: 8 << 20,
            segment_bytes: 256,
            recover: false,
            relaxed: false,
        };
        Box::new(LogStore::open(dir, opts).unwrap().0)
    }
}

/// The Redis store on the test process's `redis-server`, under a key prefix of its own
/// per directory: opening the same directory again is a restart of the broker.
struct Redis;

impl Subject for Redis {
    fn open(dir: &std::path::Path) -> Box<dyn Storage> {
        let opts = super::redis::RedisOptions {
            url: super::redis::test_server::url(),
            prefix: format!("contract{}", dir.display()),
            wait_replicas: 0,
            wait_timeout_ms: 100,
            timeout_ms: 5000,
        };
        Box::new(ArcStore(super::redis::RedisStore::open(opts).unwrap()))
    }
    const KEEPS_DIRTY_MARKS: bool = false;
}

/// A shared store as a boxed one.
struct ArcStore<T>(std::sync::Arc<T>);

impl<T: Storage> Storage for ArcStore<T> {
    fn namespaces(&self) -> Result<Vec<super::NsInfo>, StoreError> {
        self.0.namespaces()
    }
    fn info(&self, ns: &str) -> Result<Option<super::NsInfo>, StoreError> {
        self.0.info(ns)
    }
    fn create(&self, ns: &str, retention: Retention) -> Result<super::NsInfo, StoreError> {
        self.0.create(ns, retention)
    }
    fn undo_create(&self, ns: &str) -> Result<bool, StoreError> {
        self.0.undo_create(ns)
    }
    fn set_retention(&self, ns: &str, retention: Retention) -> Result<super::NsInfo, StoreError> {
        self.0.set_retention(ns, retention)
    }
    fn delete(&self, ns: &str) -> Result<bool, StoreError> {
        self.0.delete(ns)
    }
    fn append(
        &self,
        ns: &str,
        events: &[NewEvent],
        ts_ms: u64,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Appended, StoreError> {
        self.0.append(ns, events, ts_ms, idempotency)
    }
    fn append_at_epoch(
        &self,
        ns: &str,
        epoch: &str,
        min_next: u64,
        events: &[NewEvent],
        ts_ms: u64,
        idempotency: Option<IdempotencyKey<'_>>,
    ) -> Result<Appended, StoreError> {
        self.0
            .append_at_epoch(ns, epoch, min_next, events, ts_ms, idempotency)
    }
    fn append_all(
        &self,
        requests: &[super::AppendRequest<'_>],
    ) -> Vec<Result<Appended, StoreError>> {
        self.0.append_all(requests)
    }
    fn is_shared(&self) -> bool {
        self.0.is_shared()
    }
    fn lost_data(&self) -> Result<bool, StoreError> {
        self.0.lost_data()
    }
    fn last_sync_replicated(&self) -> bool {
        self.0.last_sync_replicated()
    }
    fn read(
        &self,
        ns: &str,
        from: u64,
        until: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<rewind_protocol::Event>, StoreError> {
        self.0.read(ns, from, until, max_events, max_bytes)
    }
    fn enforce_retention(
        &self,
        ns: &str,
        policy: &Retention,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.0.enforce_retention(ns, policy, now_ms)
    }
    fn prune_idempotency(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.0.prune_idempotency(before_ms)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.0.sync()
    }
    fn checkpoint(&self) -> Result<(), StoreError> {
        self.0.checkpoint()
    }
    fn mark_dirty(&self, ns: &str) -> Result<(), StoreError> {
        self.0.mark_dirty(ns)
    }
    fn clear_dirty(&self) -> Result<(), StoreError> {
        self.0.clear_dirty()
    }
    fn retain_dirty(&self, keep: &std::collections::HashSet<String>) -> Result<(), StoreError> {
        self.0.retain_dirty(keep)
    }
}

fn offsets_dense_and_batches_atomic<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let store = S::open(dir.path());
    store.create("a", Retention::default()).unwrap();
    assert_eq!(
        store.append("a", &[ev("x", "1")], 10, None).unwrap(),
        Appended::New { first: 0, last: 0 }
    );
    assert_eq!(
        store
            .append("a", &[ev("y", "2"), ev("z", "3")], 11, None)
            .unwrap(),
        Appended::New { first: 1, last: 2 }
    );
    let got = store.read("a", 0, 3, 10, 1 << 20).unwrap();
    assert_eq!(got.iter().map(|e| e.offset).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(got[2].event, "z");
    assert_eq!(got[2].ts, 11);
    assert!(store.append("missing", &[ev("x", "1")], 1, None).is_err());
}

fn offsets_survive_reopen_delete_and_retention<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let epoch1 = {
        let store = S::open(dir.path());
        let info = store.create("a", Retention::default()).unwrap();
        store
            .append("a", &[ev("x", "1"), ev("x", "2")], 1, None)
            .unwrap();
        store.sync().unwrap();
        info.epoch
    };
    let store = S::open(dir.path());
    let info = store.info("a").unwrap().unwrap();
    assert_eq!(
        (info.earliest, info.next, info.epoch.clone()),
        (0, 2, epoch1.clone())
    );
    // Retention that empties the log must not let offsets restart.
    let all = Retention {
        max_events: Some(0),
        ..Retention::default()
    };
    assert_eq!(store.enforce_retention("a", &all, 5).unwrap(), Some(2));
    store.sync().unwrap();
    drop(store);
    let store = S::open(dir.path());
    assert_eq!(store.info("a").unwrap().unwrap().next, 2);
    assert!(store.delete("a").unwrap());
    assert!(store.info("a").unwrap().is_none());
    let again = store.create("a", Retention::default()).unwrap();
    assert_ne!(again.epoch, epoch1);
    assert_eq!((again.earliest, again.next), (2, 2));
    assert_eq!(
        store.append("a", &[ev("x", "3")], 1, None).unwrap(),
        Appended::New { first: 2, last: 2 }
    );
}

fn idempotency_keys_dedupe_inside_the_window<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let store = S::open(dir.path());
    store.create("a", Retention::default()).unwrap();
    let two = [ev("x", "1"), ev("x", "2")];
    let one = [ev("x", "1")];
    let key = |not_before_ms, events: &[NewEvent]| IdempotencyKey {
        key: "k1",
        request: RequestDigest::of(events),
        request_v1: RequestDigest::of_v1(events),
        batch: events.len() > 1,
        not_before_ms,
    };
    let dup = |first, last, batch| Appended::Duplicate {
        first,
        last,
        batch: Some(batch),
    };
    let first = store.append("a", &two, 100, Some(key(0, &two))).unwrap();
    assert_eq!(first, Appended::New { first: 0, last: 1 });
    let retry = store.append("a", &two, 150, Some(key(50, &two))).unwrap();
    assert_eq!(retry, dup(0, 1, true));
    // Another request under the same key is refused, and stores nothing.
    match store.append("a", &one, 160, Some(key(50, &one))) {
        Err(StoreError::IdempotencyConflict { first: 0, last: 1 }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Outside the window the key is new again.
    let late = store.append("a", &one, 300, Some(key(200, &one))).unwrap();
    assert_eq!(late, Appended::New { first: 2, last: 2 });
    store.sync().unwrap();
    drop(store);
    // Digests survive a restart.
    let store = S::open(dir.path());
    let after = store.append("a", &one, 301, Some(key(200, &one))).unwrap();
    assert_eq!(after, dup(2, 2, false));
    match store.append("a", &two, 301, Some(key(200, &two))) {
        Err(StoreError::IdempotencyConflict { first: 2, last: 2 }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.prune_idempotency(1000).unwrap(), 1);
    let pruned = store.append("a", &one, 302, Some(key(0, &one))).unwrap();
    assert_eq!(pruned, Appended::New { first: 3, last: 3 });
}

/// A record written by a version that kept only text digests ([`RequestDigest::of_v1`])
/// still answers a retry of the same text, across a restart; other text under its key
/// conflicts, as it did before.
fn version_1_digests_still_answer_retries<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let store = S::open(dir.path());
    store.create("a", Retention::default()).unwrap();
    let sent = [ev("x", r#"{"z":1,"y":[1,2]}"#)];
    let spaced = [ev("x", r#"{ "z": 1, "y": [1, 2] }"#)];
    let old = IdempotencyKey {
        key: "old",
        request: RequestDigest::of_v1(&sent),
        request_v1: RequestDigest::of_v1(&sent),
        batch: false,
        not_before_ms: 0,
    };
    assert_eq!(
        store.append("a", &sent, 100, Some(old)).unwrap(),
        Appended::New { first: 0, last: 0 }
    );
    store.sync().unwrap();
    drop(store);
    let store = S::open(dir.path());
    let now = |events: &[NewEvent]| IdempotencyKey {
        key: "old",
        request: RequestDigest::of(events),
        request_v1: RequestDigest::of_v1(events),
        batch: false,
        not_before_ms: 0,
    };
    assert_eq!(
        store.append("a", &sent, 200, Some(now(&sent))).unwrap(),
        Appended::Duplicate {
            first: 0,
            last: 0,
            batch: Some(false)
        }
    );
    match store.append("a", &spaced, 200, Some(now(&spaced))) {
        Err(StoreError::IdempotencyConflict { first: 0, last: 0 }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.info("a").unwrap().unwrap().next, 1);
}

fn dirty_namespaces_get_a_new_epoch<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let (clean, dirty) = {
        let store = S::open(dir.path());
        let clean = store.create("clean", Retention::default()).unwrap().epoch;
        let dirty = store.create("dirty", Retention::default()).unwrap().epoch;
        store.mark_dirty("dirty").unwrap();
        store.sync().unwrap();
        (clean, dirty)
    };
    let store = S::open(dir.path());
    assert_eq!(store.info("clean").unwrap().unwrap().epoch, clean);
    let dirty_again = store.info("dirty").unwrap().unwrap().epoch;
    if !S::KEEPS_DIRTY_MARKS {
        // Nothing is ever unwritten in such a store: no epoch changes.
        assert_eq!(dirty_again, dirty);
        return;
    }
    assert_ne!(dirty_again, dirty);
    // Marks cleared after a sync are gone for good.
    store.mark_dirty("dirty").unwrap();
    store.sync().unwrap();
    store.clear_dirty().unwrap();
    store.sync().unwrap();
    drop(store);
    let store = S::open(dir.path());
    assert_eq!(store.info("dirty").unwrap().unwrap().epoch, dirty_again);
}

macro_rules! contract {
    ($module:ident, $subject:ty) => {
        mod $module {
            #[test]
            fn offsets_dense_and_batches_atomic() {
                super::offsets_dense_and_batches_atomic::<$subject>();
            }
            #[test]
            fn offsets_survive_reopen_delete_and_retention() {
                super::offsets_survive_reopen_delete_and_retention::<$subject>();
            }
            #[test]
            fn idempotency_keys_dedupe_inside_the_window() {
                super::idempotency_keys_dedupe_inside_the_window::<$subject>();
            }
            #[test]
            fn version_1_digests_still_answer_retries() {
                super::version_1_digests_still_answer_retries::<$subject>();
            }
            #[test]
            fn dirty_namespaces_get_a_new_epoch() {
                super::dirty_namespaces_get_a_new_epoch::<$subject>();
            }
        }
    };
}

contract!(segmented, super::Segmented);
contract!(redis, super::Redis);

/// One step of the model test.
#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Read { from: u64, limit: usize },
    KeepLast(u64),
    KeepBytes(u64),
    Reopen,
    Recreate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0u8..=255, 1..5).prop_map(Op::Append),
        3 => (0u64..40, 1usize..8).prop_map(|(from, limit)| Op::Read { from, limit }),
        1 => (0u64..6).prop_map(Op::KeepLast),
        1 => (0u64..200).prop_map(Op::KeepBytes),
        1 => Just(Op::Reopen),
        1 => Just(Op::Recreate),
    ]
}

fn model_run<S: Subject>(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = S::open(dir.path());
    store.create("m", Retention::default()).unwrap();
    // The model: (offset, payload byte, record size) of every retained event, and next.
    let mut log: Vec<(u64, u8, u64)> = Vec::new();
    let mut next = 0u64;
    for op in ops {
        match op {
            Op::Append(bytes) => {
                let events: Vec<NewEvent> = bytes
                    .iter()
                    .map(|b| NewEvent {
                        event: "e".into(),
                        key: None,
                        data: Payload::Bytes(vec![*b; *b as usize % 7]),
                    })
                    .collect();
                let got = store.append("m", &events, 1, None).unwrap();
                prop_assert_eq!(
                    got,
                    Appended::New {
                        first: next,
                        last: next + bytes.len() as u64 - 1
                    }
                );
                for (i, b) in bytes.iter().enumerate() {
                    let size = super::record::encode(&events[i], 1).len() as u64;
                    log.push((next + i as u64, *b, size));
                }
                next += bytes.len() as u64;
            }
            Op::Read { from, limit } => {
                let got = store.read("m", from, next, limit, usize::MAX).unwrap();
                let want: Vec<(u64, u8)> = log
                    .iter()
                    .filter(|(o, _, _)| *o >= from)
                    .take(limit)
                    .map(|(o, b, _)| (*o, *b))
                    .collect();
                let got: Vec<(u64, u8)> = got
                    .iter()
                    .map(|e| match &e.data {
                        Payload::Bytes(d) => (
                            e.offset,
                            d.first().copied().unwrap_or(want_byte(&log, e.offset)),
                        ),
                        Payload::Json(_) => (e.offset, 0),
                    })
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::KeepLast(n) => {
                let policy = Retention {
                    max_events: Some(n),
                    ..Retention::default()
                };
                store.enforce_retention("m", &policy, 1).unwrap();
                let drop = log.len().saturating_sub(n as usize);
                log.drain(..drop);
            }
            Op::KeepBytes(max) => {
                let policy = Retention {
                    max_bytes: Some(max),
                    ..Retention::default()
                };
                store.enforce_retention("m", &policy, 1).unwrap();
                let mut total: u64 = log.iter().map(|e| e.2).sum();
                while total > max {
                    total -= log.remove(0).2;
                }
            }
            Op::Reopen => {
                store.sync().unwrap();
                drop(store);
                store = S::open(dir.path());
            }
            Op::Recreate => {
                store.delete("m").unwrap();
                store.create("m", Retention::default()).unwrap();
                log.clear();
            }
        }
        let info = store.info("m").unwrap().unwrap();
        prop_assert_eq!(info.next, next);
        prop_assert_eq!(info.earliest, log.first().map_or(next, |e| e.0));
        prop_assert_eq!(info.bytes, log.iter().map(|e| e.2).sum::<u64>());
    }
    Ok(())
}

/// Payloads of length 0 carry no byte to compare; the model's byte stands in.
fn want_byte(log: &[(u64, u8, u64)], offset: u64) -> u8 {
    log.iter().find(|e| e.0 == offset).map_or(0, |e| e.1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn segmented_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        model_run::<Segmented>(ops)?;
    }

    #[test]
    fn redis_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        model_run::<Redis>(ops)?;
    }
}
