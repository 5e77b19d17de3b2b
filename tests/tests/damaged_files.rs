//! Issue 9 §3: damaged files are detected and refused, or recovered explicitly — never a
//! panic, never silence, never an offset that changes meaning under an epoch a client holds.
//!
//! A store is written by the real broker (3 namespaces, 3,000 events in publishes of 1–100,
//! every other one with an `Idempotency-Key`, small segment files), stopped (SIGTERM, or
//! `kill -9` to keep the write-ahead log), and copied once per trial. Each trial damages the
//! copy in place — one byte flipped at a seeded random position, or the end of a file cut
//! off — and starts the broker on it. Then:
//!
//! - it refuses: exit status 1, one `rewind: ` line naming the file (and, for segment and
//!   log files, `at byte N` with N at or before the damage), no panic; or it starts with every
//!   acknowledged event present and unchanged, every key still answering its offsets, and
//!   the next publish after the last offset;
//! - after a refusal, `--recover` starts (no panic, a WARN naming the file), keeps every
//!   event but those the damage destroyed (at most one frame's worth, in one namespace), and
//!   a namespace that lost anything has a new epoch, so no offset repeats with other content
//!   under an epoch a client saw, and its survivors are written again from the old `next`
//!   (DESIGN9), so no offset is handed out twice; publishing goes on, and a normal start
//!   afterwards serves the same;
//! - damage in the last log frame looks like a torn tail, but the segments hold its events
//!   (the log frame is written first): the start must refuse, naming the log file, and
//!   `--recover` keep them under a new epoch (FIXA 2).
//!
//! `REWIND_DAMAGE_FLIPS` sets the flips per kind of file (default 8; the issue's full run is
//! 30), `REWIND_DAMAGE_SEED` the seed (printed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rewind_protocol::Payload;
use rewind_tests::fault::{self, Ledger, NsLog, Rng};
use rewind_tests::StatusCode;
use rewind_tests::{rewind_bin, Broker};

const NAMESPACES: [&str; 3] = ["d0", "d1", "d2"];
/// The largest publish of the corpus: the most one write-ahead log frame holds.
const MAX_PUBLISH: usize = 100;

/// A store written by the broker, to be copied for each trial.
struct Pristine {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    args: Vec<String>,
    ledger: Ledger,
    epochs: BTreeMap<String, String>,
    next: BTreeMap<String, u64>,
    /// Payloads of publishes that were never answered (may or may not be stored).
    maybe: HashSet<String>,
    /// The last publish: namespace, first offset, events.
    last: Option<(String, u64, usize)>,
}

/// `serve` flags every store of these tests gets: small segments (when the broker has
/// them), so namespaces have several segment files.
fn base_args() -> Vec<String> {
    let help = Command::new(rewind_bin())
        .args(["serve", "--help"])
        .output()
        .expect("rewind serve --help");
    if String::from_utf8_lossy(&help.stdout).contains("--segment-bytes") {
        vec!["--segment-bytes".into(), "8192".into()]
    } else {
        Vec::new()
    }
}

fn args_of(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Publishes the corpus sequentially: 10 rounds over the namespaces, publishes of 1–100
/// events, every other one keyed.
async fn publish_corpus(b: &Broker, ledger: &mut Ledger, rng: &mut Rng) -> (String, u64, usize) {
    let mut last = None;
    for round in 0..10 {
        for ns in NAMESPACES {
            let n = if rng.range(0, 3) == 0 {
                1
            } else {
                rng.range(2, MAX_PUBLISH as u64) as usize
            };
            let tag = format!("{ns}-{round}");
            let key = (round % 2 == 0).then(|| format!("key-{tag}"));
            let data = fault::payloads(&tag, n, rng.range(0, 60) as usize);
            let r = ledger.publish(b, ns, &data, key.as_deref()).await;
            assert_eq!(
                r.status,
                StatusCode::CREATED,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            last = Some((ns.to_owned(), fault::first_offset(&r).expect("offset"), n));
        }
    }
    last.expect("published")
}

async fn snapshot(b: &Broker, p: &mut Pristine) {
    for ns in NAMESPACES {
        let log = fault::read_ns(b, ns).await.expect("namespace");
        p.epochs.insert(ns.to_owned(), log.epoch);
        p.next.insert(ns.to_owned(), log.next);
    }
}

fn pristine(args: Vec<String>) -> Pristine {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    Pristine {
        _tmp: tmp,
        dir,
        args,
        ledger: Ledger::default(),
        epochs: BTreeMap::new(),
        next: BTreeMap::new(),
        maybe: HashSet::new(),
        last: None,
    }
}

/// The corpus, then SIGTERM: segments and manifest complete, the write-ahead log folded.
async fn clean_store(rng: &mut Rng) -> Pristine {
    let mut p = pristine(base_args());
    let mut b = Broker::open(&p.dir, &args_of(&p.args)).unwrap_or_else(|r| panic!("start: {r}"));
    p.last = Some(publish_corpus(&b, &mut p.ledger, rng).await);
    snapshot(&b, &mut p).await;
    assert!(b.terminate().success(), "clean stop: {}", b.stderr());
    p
}

/// The corpus with checkpoints far apart, then `kill -9`: the newest write-ahead log
/// segment holds every publish.
async fn killed_store(rng: &mut Rng) -> Pristine {
    let mut args = base_args();
    args.extend(["--checkpoint-interval-ms".into(), "3600000".into()]);
    let mut p = pristine(args);
    let mut b = Broker::open(&p.dir, &args_of(&p.args)).unwrap_or_else(|r| panic!("start: {r}"));
    p.last = Some(publish_corpus(&b, &mut p.ledger, rng).await);
    snapshot(&b, &mut p).await;
    b.kill9();
    p
}

/// Write-ahead log segments, oldest first.
fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fault::files_under(&dir.join("wal"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// The least an older write-ahead log segment must hold to be worth damaging (dozens of
/// publishes).
const OLDER_WAL_BYTES: u64 = 4096;

fn older_wal_with_data(dir: &Path) -> bool {
    let segs = wal_segments(dir);
    segs.len() >= 2 && std::fs::metadata(&segs[0]).is_ok_and(|m| m.len() >= OLDER_WAL_BYTES)
}

/// `kill -9` while a checkpoint is between starting a new write-ahead log segment and
/// deleting the older one, so an older segment with frames (at least [`OLDER_WAL_BYTES`]) is
/// left. Checkpoints run every 20 ms under a steady publisher; the directory is watched and the broker killed the moment
/// it holds two segments (repeated until one kill catches it, at most 60 s).
async fn older_wal_store(rng: &mut Rng) -> Pristine {
    let mut args = base_args();
    args.extend(["--checkpoint-interval-ms".into(), "20".into()]);
    let mut p = pristine(args);
    let mut b = Broker::open(&p.dir, &args_of(&p.args)).unwrap_or_else(|r| panic!("start: {r}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first = Ledger::default();
    for ns in NAMESPACES {
        let r = first
            .publish(&b, ns, &fault::payloads(ns, 1, 10), None)
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let shared = Arc::new(Mutex::new((first, HashSet::<String>::new())));
    for attempt in 0u64.. {
        assert!(
            Instant::now() < deadline,
            "no kill -9 caught two write-ahead log segments in 60 s ({attempt} tries)"
        );
        if attempt > 0 {
            b.try_restart().unwrap_or_else(|r| panic!("restart: {r}"));
        }
        let publisher = {
            let (shared, addr, seed) = (Arc::clone(&shared), b.addr, rng.next_u64());
            tokio::spawn(async move {
                let mut rng = Rng::new(seed);
                for n in 0u64.. {
                    let ns = NAMESPACES[(n % 3) as usize];
                    let data = fault::payloads(
                        &format!("w{attempt}-{n}"),
                        rng.range(1, MAX_PUBLISH as u64) as usize,
                        20,
                    );
                    let sent = rewind_tests::request(
                        addr,
                        rewind_tests::Method::POST,
                        &format!("/v1/namespaces/{ns}/events"),
                        &[("content-type", "application/json")],
                        fault::publish_body(&data).into(),
                    )
                    .await;
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    match sent {
                        Ok(r) if r.status == StatusCode::CREATED => {
                            let first = fault::first_offset(&r).expect("offset");
                            s.0.record(ns, first, &data);
                        }
                        Ok(r) => {
                            panic!("publish: {} {}", r.status, String::from_utf8_lossy(&r.body))
                        }
                        Err(_) => {
                            s.1.extend(data);
                            return;
                        }
                    }
                }
            })
        };
        let watch_until = Instant::now() + Duration::from_secs(3);
        while !older_wal_with_data(&p.dir) && Instant::now() < watch_until {
            tokio::task::yield_now().await;
        }
        b.kill9();
        tokio::time::timeout(Duration::from_secs(30), publisher)
            .await
            .expect("the publisher stops")
            .expect("publisher");
        if older_wal_with_data(&p.dir) {
            break;
        }
    }
    {
        let s = shared.lock().unwrap_or_else(|e| e.into_inner());
        p.ledger = s.0.clone();
        p.maybe = s.1.clone();
    }
    // Epochs and next as a reader saw them before the kill: read with a start on a copy,
    // so the trials' copies stay as the kill left them.
    let look = tempfile::tempdir().expect("temp dir");
    let copy = look.path().join("data");
    fault::copy_dir(&p.dir, &copy);
    let b = Broker::open(&copy, &args_of(&p.args)).unwrap_or_else(|r| panic!("start: {r}"));
    p.ledger
        .check(&b)
        .await
        .unwrap_or_else(|e| panic!("before damage: {e}"));
    snapshot(&b, &mut p).await;
    p
}

/// What is done to a copy of the store.
#[derive(Debug, Clone)]
enum Damage {
    /// Byte `pos` of `file` (relative to the data directory) XOR 0xFF.
    Flip { file: PathBuf, pos: u64 },
    /// The last `bytes` bytes of `file` cut off.
    Cut { file: PathBuf, bytes: u64 },
}

impl Damage {
    fn file(&self) -> &Path {
        match self {
            Damage::Flip { file, .. } | Damage::Cut { file, .. } => file,
        }
    }

    /// The first byte changed (a cut: the new length).
    fn at(&self, dir: &Path) -> u64 {
        match self {
            Damage::Flip { pos, .. } => *pos,
            Damage::Cut { file, bytes } => {
                std::fs::metadata(dir.join(file)).map_or(0, |m| m.len()) - bytes
            }
        }
    }

    fn apply(&self, dir: &Path) {
        match self {
            Damage::Flip { file, pos } => {
                let path = dir.join(file);
                let mut bytes = std::fs::read(&path).expect("read file to damage");
                bytes[*pos as usize] ^= 0xFF;
                std::fs::write(&path, bytes).expect("write damaged file");
            }
            Damage::Cut { file, bytes } => {
                let path = dir.join(file);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open file to cut");
                let len = f.metadata().expect("metadata").len();
                f.set_len(len - bytes).expect("cut");
            }
        }
    }

    /// How a refusal or a repair names the file: `idem` for sled's files, else the path
    /// under the data directory.
    fn name(&self) -> String {
        let file = self.file();
        if file.starts_with("idem") {
            "idem".into()
        } else {
            file.to_string_lossy().into_owned()
        }
    }
}

/// What a trial allows `--recover` to lose: at most `max` events, consecutive, of one
/// namespace (`ns` if given).
#[derive(Debug, Clone)]
struct Loss {
    ns: Option<String>,
    max: usize,
}

struct Trial {
    damage: Damage,
    loss: Loss,
    /// The refusal must say `at byte N` (N at or before the damage).
    position: bool,
}

/// Runs one trial on a fresh copy; `Ok` describes what happened.
async fn run_trial(p: &Pristine, t: &Trial) -> Result<String, String> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    fault::copy_dir(&p.dir, &dir);
    let at = t.damage.at(&dir);
    t.damage.apply(&dir);
    let name = t.damage.name();
    let args = args_of(&p.args);
    match Broker::open(&dir, &args) {
        Ok(mut b) => {
            let stderr = b.stderr();
            if stderr.contains("panicked") {
                return Err(format!("started, but panicked:\n{stderr}"));
            }
            let outcome = match p.ledger.check(&b).await {
                Ok(_) => {
                    p.ledger.check_keys(&b).await?;
                    "started, everything there".to_owned()
                }
                Err(e) => {
                    // The segments of a lost log frame hold its events: a start that cuts
                    // them must refuse instead (FIXA 2), so `--recover` can keep them.
                    return Err(format!(
                        "started with acknowledged events lost or changed: {e}\nstderr: {stderr}"
                    ));
                }
            };
            for ns in NAMESPACES {
                let Some(log) = fault::read_ns(&b, ns).await else {
                    return Err(format!("{ns} gone"));
                };
                let r = b
                    .post_json(
                        &format!("/v1/namespaces/{ns}/events"),
                        r#"{"event":"after"}"#,
                    )
                    .await;
                if fault::first_offset(&r) != Some(log.next) {
                    return Err(format!(
                        "{ns}: the next publish got {}, next was {}",
                        String::from_utf8_lossy(&r.body),
                        log.next
                    ));
                }
            }
            b.kill9();
            Ok(outcome)
        }
        Err(refusal) => {
            let line = fault::clean_refusal(&refusal, &[&name])?;
            if t.position {
                match byte_in(&line) {
                    None => {
                        return Err(format!(
                            "the refusal gives no position (`at byte N`): {line}"
                        ))
                    }
                    Some(n) if n > at => {
                        return Err(format!(
                            "the refusal names byte {n}, after the damage at {at}: {line}"
                        ))
                    }
                    Some(_) => {}
                }
            }
            let recovered = recover(p, t, &dir).await?;
            Ok(format!("refused: {line} | --recover: {recovered}"))
        }
    }
}

/// `N` of the first `at byte N` in `line`.
fn byte_in(line: &str) -> Option<u64> {
    let rest = &line[line.find("at byte ")? + "at byte ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `--recover` on a damaged copy, then a normal start; checks what each kept.
async fn recover(p: &Pristine, t: &Trial, dir: &Path) -> Result<String, String> {
    let mut args = args_of(&p.args);
    args.push("--recover");
    let mut b = Broker::open(dir, &args).map_err(|r| format!("--recover did not start: {r}"))?;
    let stderr = b.stderr();
    if stderr.contains("panicked") {
        return Err(format!("--recover panicked:\n{stderr}"));
    }
    let name = t.damage.name();
    if !stderr.contains(&name) {
        return Err(format!("--recover said nothing naming {name}: {stderr}"));
    }
    let logs = read_all(&b).await?;
    let (mut lost, lost_in) = judge(p, t, &logs)?;
    // A damaged `idem/` is started afresh (its keys are forgotten, documented).
    let mut logs = logs;
    if !t.damage.file().starts_with("idem") {
        lost.push_str(&keys_after_recovery(p, t, &b, &logs, &lost_in).await?);
        // Retries of dropped keys appended: read again for the offsets that follow.
        logs = read_all(&b).await?;
    }
    let mut after = BTreeMap::new();
    for (ns, log) in &logs {
        let r = b
            .post_json(
                &format!("/v1/namespaces/{ns}/events"),
                r#"{"event":"after"}"#,
            )
            .await;
        if fault::first_offset(&r) != Some(log.next) {
            return Err(format!(
                "{ns}: after --recover the next publish got {}, next was {}",
                String::from_utf8_lossy(&r.body),
                log.next
            ));
        }
        after.insert(ns.clone(), (log.epoch.clone(), log.next + 1));
    }
    if !b.terminate().success() {
        return Err(format!(
            "--recover broker did not stop cleanly: {}",
            b.stderr()
        ));
    }
    drop(b);
    let b = Broker::open(dir, &args_of(&p.args))
        .map_err(|r| format!("a normal start after --recover refused: {r}"))?;
    for (ns, (epoch, next)) in &after {
        let log = fault::read_ns(&b, ns)
            .await
            .ok_or(format!("{ns} gone after restart"))?;
        if (&log.epoch, log.next) != (epoch, *next) {
            return Err(format!(
                "{ns}: after --recover epoch {epoch} next {next}, after a restart epoch {} next {}",
                log.epoch, log.next
            ));
        }
    }
    Ok(lost)
}

async fn read_all(b: &Broker) -> Result<BTreeMap<String, NsLog>, String> {
    let mut logs = BTreeMap::new();
    for ns in NAMESPACES {
        let log = fault::read_ns(b, ns)
            .await
            .ok_or_else(|| format!("{ns} gone after --recover"))?;
        fault::check_dense(ns, &log)?;
        logs.insert(ns.to_owned(), log);
    }
    Ok(logs)
}

/// After `--recover`, every acknowledged keyed publish is retried with its key. FIX9 item 2:
/// keys move with their events, so the retry is answered as a replay with the offset its
/// first event has now (the same offset under a kept epoch, the rewritten one under a new
/// epoch). A key may be forgotten (the retry appends) only where events were lost (its
/// batch may have lost some) or the damage was in the write-ahead log (the damaged frame
/// held the key).
async fn keys_after_recovery(
    p: &Pristine,
    t: &Trial,
    b: &Broker,
    logs: &BTreeMap<String, NsLog>,
    lost_in: &[String],
) -> Result<String, String> {
    let wal_damaged = t.damage.file().starts_with("wal");
    let (mut replayed_n, mut dropped) = (0, 0);
    for (ns, key, body, first) in &p.ledger.keyed {
        let (r, replayed) = fault::retry_keyed(b, ns, key, body).await;
        if r.status != StatusCode::CREATED {
            return Err(format!(
                "{ns}: the retry of key {key} after --recover got {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        if !replayed {
            if !(wal_damaged || lost_in.contains(ns)) {
                return Err(format!(
                    "{ns}: key {key} forgotten by --recover though {ns} lost nothing and the log was not damaged"
                ));
            }
            dropped += 1;
            continue;
        }
        let original = p.ledger.events.get(ns).and_then(|e| e.get(first));
        let answered = fault::first_offset(&r);
        let now = logs.get(ns).and_then(|log| {
            log.events
                .iter()
                .find(|e| Some(e.offset) == answered)
                .map(|e| e.data.clone())
        });
        let same = match (&now, original) {
            (Some(Payload::Json(text)), Some(o)) => text == o,
            _ => false,
        };
        if !same {
            return Err(format!(
                "{ns}: the retry of key {key} (first event {original:?}, at {first} before) was answered with offset {answered:?}, which holds {now:?}"
            ));
        }
        replayed_n += 1;
    }
    Ok(format!(
        "; {replayed_n} keys answered with their events' offsets, {dropped} forgotten"
    ))
}

/// Checks the recovered namespaces against the store before the damage; returns how many
/// acknowledged events were lost, and in which namespaces.
fn judge(
    p: &Pristine,
    t: &Trial,
    logs: &BTreeMap<String, NsLog>,
) -> Result<(String, Vec<String>), String> {
    let mut lost_total = 0;
    let mut lost_in = Vec::new();
    for (ns, log) in logs {
        let acked = p.ledger.events.get(ns).cloned().unwrap_or_default();
        let old_epoch = &p.epochs[ns];
        let old_next = p.next[ns];
        let by_data: HashMap<&str, u64> = acked.iter().map(|(o, d)| (d.as_str(), *o)).collect();
        let mut present = HashSet::new();
        let mut reused = None;
        let mut last_original = None;
        for ev in &log.events {
            let Payload::Json(text) = &ev.data else {
                return Err(format!("{ns}@{}: a bytes payload nobody sent", ev.offset));
            };
            let original = by_data.get(text.as_str()).copied();
            if log.epoch == *old_epoch {
                // Same epoch: every offset means what it meant.
                if original != Some(ev.offset) && !(ev.offset >= old_next && p.maybe.contains(text))
                {
                    return Err(format!(
                        "{ns}@{} under the same epoch {old_epoch}: {text} (acknowledged at {original:?})",
                        ev.offset
                    ));
                }
            } else if original.is_none() && !p.maybe.contains(text) {
                return Err(format!("{ns}@{}: {text} was never published", ev.offset));
            } else if ev.offset < old_next && reused.is_none() {
                // DESIGN9: survivors are written again from the old next, so no offset a
                // reader saw under any epoch is handed out again.
                reused = Some(format!(
                    "{ns}: new epoch puts {text} (was {original:?}) at {}, below the old next {old_next} (DESIGN9 rewrites from the old next)",
                    ev.offset
                ));
            }
            if let Some(o) = original {
                if !present.insert(o) {
                    return Err(format!("{ns}: {text} kept twice"));
                }
                if last_original.is_some_and(|l| l > o) {
                    return Err(format!("{ns}: {text} out of order after recovery"));
                }
                last_original = Some(o);
            }
        }
        let lost: Vec<u64> = acked
            .keys()
            .filter(|o| !present.contains(o))
            .copied()
            .collect();
        if let Some(r) = reused {
            return Err(r);
        } else if log.epoch != *old_epoch && log.earliest < old_next {
            return Err(format!(
                "{ns}: new epoch keeps offsets from {} (DESIGN9 rewrites them from the old next {old_next})",
                log.earliest
            ));
        }
        if !lost.is_empty() {
            if log.epoch == *old_epoch {
                return Err(format!(
                    "{ns}: {} acknowledged events lost (from {}) but the epoch {old_epoch} kept",
                    lost.len(),
                    lost[0]
                ));
            }
            let run = lost.windows(2).all(|w| w[1] == w[0] + 1);
            if !run || lost.len() > t.loss.max {
                return Err(format!(
                    "{ns}: lost {} acknowledged events ({}..={}, consecutive: {run}); this damage destroys at most {}",
                    lost.len(),
                    lost[0],
                    lost[lost.len() - 1],
                    t.loss.max
                ));
            }
            if t.loss.ns.as_ref().is_some_and(|n| n != ns) {
                return Err(format!(
                    "{ns} lost events, but the damage was in {:?}",
                    t.loss.ns
                ));
            }
            lost_in.push(ns.clone());
            lost_total += lost.len();
        }
    }
    if lost_in.len() > 1 {
        return Err(format!(
            "events lost in {lost_in:?}: the damage was in one place"
        ));
    }
    Ok((format!("{lost_total} events lost"), lost_in))
}

/// Runs every trial, printing each outcome; fails if any went wrong, naming each and the seed.
async fn run_all(what: &str, p: &Pristine, trials: Vec<Trial>) {
    assert!(!trials.is_empty(), "{what}: no trials");
    let started = Instant::now();
    let mut wrong = Vec::new();
    for (i, t) in trials.iter().enumerate() {
        match run_trial(p, t).await {
            Ok(outcome) => eprintln!("{what} #{i} {:?}: {outcome}", t.damage),
            Err(e) => {
                eprintln!("{what} #{i} {:?}: WRONG: {e}", t.damage);
                wrong.push(format!("#{i} {:?}: {e}", t.damage));
            }
        }
    }
    eprintln!("{what}: {} trials in {:?}", trials.len(), started.elapsed());
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} trials went wrong (repeat with the REWIND_DAMAGE_SEED printed above):\n{}",
        wrong.len(),
        trials.len(),
        wrong.join("\n")
    );
}

/// The trial of a flipped byte `(file, pos)`, allowed to lose what `loss` says for that
/// file; `position`: the refusal must name the byte.
fn flip(loss: impl Fn(&Path) -> Loss, position: bool) -> impl Fn((PathBuf, u64)) -> Trial {
    move |(file, pos)| Trial {
        loss: loss(&file),
        damage: Damage::Flip { file, pos },
        position,
    }
}

fn flips() -> u64 {
    fault::env_count("REWIND_DAMAGE_FLIPS", 8)
}

fn rel(p: &Pristine, file: &Path) -> PathBuf {
    file.strip_prefix(&p.dir)
        .expect("under the data dir")
        .to_owned()
}

/// Segment files of `ns`, oldest first.
fn segments_of(p: &Pristine, ns: &str) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = fault::files_under(&p.dir.join("log").join(ns))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert!(
        !files.is_empty(),
        "no segment files under log/{ns}/ (layout of DESIGN9: log/<namespace>/<epoch>/<first offset>.seg); found {:?}",
        fault::files_under(&p.dir)
    );
    files
}

/// One flip at a random position of each of `files` (small files such as sled's `conf` are
/// rarely drawn in proportion to their size).
fn one_flip_each(p: &Pristine, files: &[PathBuf], rng: &mut Rng) -> Vec<(PathBuf, u64)> {
    files
        .iter()
        .filter_map(|f| {
            let len = std::fs::metadata(f).map_or(0, |m| m.len());
            (len > 0).then(|| (rel(p, f), rng.range(0, len - 1)))
        })
        .collect()
}

/// `n` flips at random positions of `files` (a file chosen in proportion to its size).
fn random_flips(p: &Pristine, files: &[PathBuf], n: u64, rng: &mut Rng) -> Vec<(PathBuf, u64)> {
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .collect();
    let total: u64 = sizes.iter().sum();
    assert!(total > 0, "nothing to damage in {files:?}");
    (0..n)
        .map(|_| {
            let mut at = rng.range(0, total - 1);
            let mut i = 0;
            while at >= sizes[i] {
                at -= sizes[i];
                i += 1;
            }
            (rel(p, &files[i]), at)
        })
        .collect()
}

/// The namespace a file under `log/` belongs to.
fn ns_of(file: &Path) -> Option<String> {
    let mut parts = file.components();
    (parts.next()?.as_os_str() == "log")
        .then(|| {
            parts
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
        })
        .flatten()
}

#[tokio::test]
async fn cutting_the_end_of_a_segment_file_is_refused_or_harmless_never_a_reused_offset() {
    let mut rng = Rng::from_env("REWIND_DAMAGE_SEED");
    let p = clean_store(&mut rng).await;
    let mut trials = Vec::new();
    let last = segments_of(&p, "d0").pop().expect("segment");
    let len = std::fs::metadata(&last).expect("segment").len();
    for bytes in [1, 5, len / 2] {
        trials.push(Trial {
            damage: Damage::Cut {
                file: rel(&p, &last),
                bytes,
            },
            loss: Loss {
                ns: Some("d0".into()),
                max: (bytes / 16 + 1) as usize,
            },
            position: true,
        });
    }
    let d1 = segments_of(&p, "d1");
    assert!(d1.len() >= 2, "d1 has one segment file only: {d1:?}");
    for file in [&d1[0], &d1[d1.len() - 1]] {
        trials.push(Trial {
            damage: Damage::Cut {
                file: rel(&p, file),
                bytes: 5,
            },
            loss: Loss {
                ns: Some("d1".into()),
                max: 1,
            },
            position: true,
        });
    }
    run_all("cut segment", &p, trials).await;
}

#[tokio::test]
async fn flipped_bytes_in_segment_files_are_refused_naming_file_and_byte() {
    let mut rng = Rng::from_env("REWIND_DAMAGE_SEED");
    let p = clean_store(&mut rng).await;
    let files: Vec<PathBuf> = NAMESPACES
        .iter()
        .flat_map(|ns| segments_of(&p, ns))
        .collect();
    let trials = random_flips(&p, &files, flips(), &mut rng)
        .into_iter()
        .map(flip(
            |file| Loss {
                ns: ns_of(file),
                max: 1,
            },
            true,
        ))
        .collect();
    run_all("flip segment", &p, trials).await;
}

#[tokio::test]
async fn flipped_bytes_in_the_manifest_are_refused_and_recovered_from_the_segments() {
    let mut rng = Rng::from_env("REWIND_DAMAGE_SEED");
    let p = clean_store(&mut rng).await;
    let manifest = p.dir.join("manifest");
    assert!(
        manifest.is_file(),
        "no manifest (DESIGN9): {:?}",
        fault::files_under(&p.dir)
    );
    let trials = random_flips(&p, &[manifest], flips(), &mut rng)
        .into_iter()
        .map(flip(|_| Loss { ns: None, max: 0 }, false))
        .collect();
    run_all("flip manifest", &p, trials).await;
}

#[tokio::test]
async fn flipped_bytes_in_the_newest_write_ahead_log_segment_are_refused_not_taken_for_a_torn_tail()
{
    let mut rng = Rng::from_env("REWIND_DAMAGE_SEED");
    let p = killed_store(&mut rng).await;
    let newest = wal_segments(&p.dir)
        .pop()
        .expect("a write-ahead log segment");
    let bytes = std::fs::read(&newest).expect("wal");
    // Frames: len u32 LE | crc u32 LE | body. The last one alone may be taken for a torn tail.
    let mut last_frame = 0;
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if at + 8 + len > bytes.len() {
            break;
        }
        last_frame = at;
        at += 8 + len;
    }
    // The last frame's damage is always tried too (its checksum, a body byte, its last
    // byte): it looks like a torn tail, but the segments hold its events, so the start
    // must refuse and `--recover` keep them (FIXA 2).
    let rel_newest = rel(&p, &newest);
    let last_frame_flips = [last_frame + 5, last_frame + 9, bytes.len() - 1]
        .into_iter()
        .map(|pos| (rel_newest.clone(), pos as u64));
    let trials = random_flips(&p, std::slice::from_ref(&newest), flips(), &mut rng)
        .into_iter()
        .chain(last_frame_flips)
        .map(flip(
            |_| Loss {
                ns: None,
                max: MAX_PUBLISH,
            },
            true,
        ))
        .collect();
    run_all("flip newest wal", &p, trials).await;
}

#[tokio::test]
async fn flipped_bytes_in_an_older_write_ahead_log_segment_are_refused() {
    let mut rng = Rng::from_env("REWIND_DAMAGE_SEED");
    let p = older_wal_store(&mut rng).await;
    let oldest = wal_segments(&p.dir).remove(0);
    let trials = random_flips(&p, std::slice::from_ref(&oldest), flips(), &mut rng)
        .into_iter()
        .map(flip(
            |_| Loss {
                ns: None,
                max: MAX_PUBLISH,
            },
            true,
        ))
        .collect();
    run_all("flip older wal", &p, trials).await;
}

#[tokio::test]
async fn flipped_bytes_in_sleds_idempotency_files_are_refused_or_harmless() {
    let mut rng = Rng::from_env("REWIND_DAMAGE_SEED");
    let p = clean_store(&mut rng).await;
    let files = fault::files_under(&p.dir.join("idem"));
    assert!(
        !files.is_empty(),
        "no files under idem/ (DESIGN9): {:?}",
        fault::files_under(&p.dir)
    );
    let mut chosen = one_flip_each(&p, &files, &mut rng);
    chosen.extend(random_flips(&p, &files, flips(), &mut rng));
    let trials = chosen
        .into_iter()
        .map(flip(|_| Loss { ns: None, max: 0 }, false))
        .collect();
    run_all("flip idem", &p, trials).await;
}

/// The kind: a flipped byte or a cut end in any file the store keeps.
#[tokio::test]
async fn any_file_of_the_store_flipped_or_cut_is_refused_or_harmless() {
    let mut rng = Rng::from_env("REWIND_DAMAGE_SEED");
    let p = clean_store(&mut rng).await;
    let files: Vec<PathBuf> = fault::files_under(&p.dir)
        .into_iter()
        .filter(|f| !f.to_string_lossy().to_lowercase().contains("lock"))
        .collect();
    let mut chosen = one_flip_each(&p, &files, &mut rng);
    chosen.extend(random_flips(&p, &files, flips(), &mut rng));
    let mut trials: Vec<Trial> = chosen
        .into_iter()
        .map(flip(
            |file| Loss {
                ns: ns_of(file),
                max: 1,
            },
            false,
        ))
        .collect();
    for file in &files {
        if std::fs::metadata(file).is_ok_and(|m| m.len() >= 5) {
            let file = rel(&p, file);
            trials.push(Trial {
                loss: Loss {
                    ns: ns_of(&file),
                    max: 1,
                },
                damage: Damage::Cut { file, bytes: 5 },
                position: false,
            });
        }
    }
    run_all("any file", &p, trials).await;
}
