//! Helpers for the fault tests (issue 9): a size-limited tmpfs that is unmounted even when a
//! test fails, a filler that takes every free byte of it, whole-namespace reads, the store's
//! files, a seeded random generator, and the check of a refused start.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::StatusCode;
use rewind_protocol::codec::ReadPage;
use rewind_protocol::{Event, Payload};

use crate::{Broker, Refusal};

/// A tmpfs of a fixed size mounted on a fresh temporary directory; unmounted (and the
/// directory removed) when dropped, also when the test panics.
pub struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` bytes. `Err` says why it could not (not root, no `mount`):
    /// the caller skips with that message.
    pub fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir: Some(dir) })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let ok = Command::new("umount")
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something (a broker the test could not stop) still holds it: detach it now,
            // the kernel frees it when the last user goes.
            let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
        }
        drop(dir);
    }
}

/// Mounts a tmpfs of `bytes`, or prints why the test is skipped and returns `None`.
pub fn tmpfs_or_skip(test: &str, bytes: u64) -> Option<Tmpfs> {
    match Tmpfs::mount(bytes) {
        Ok(t) => Some(t),
        Err(why) => {
            eprintln!("SKIPPED {test}: needs a size-limited tmpfs (run as root): {why}");
            None
        }
    }
}

/// A file that took every free byte of its file system; [`Filler::free`] gives them back.
pub struct Filler {
    path: PathBuf,
    /// Bytes it holds.
    pub bytes: u64,
}

impl Filler {
    /// Writes `dir/name` until the file system is full (`ENOSPC`), in 1 MiB, then 4 KiB,
    /// then 1-byte writes, each synced, so no free block is left. Any other error fails.
    pub fn fill(dir: &Path, name: &str) -> Filler {
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut bytes = file.metadata().map_or(0, |m| m.len());
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0xA5u8; chunk];
            loop {
                match file.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => bytes += n as u64,
                    Err(e) if is_enospc(&e) => break,
                    Err(e) => panic!("fill {}: {e}", path.display()),
                }
            }
        }
        let _ = file.sync_all();
        Filler { path, bytes }
    }

    /// Deletes the file, freeing its space.
    pub fn free(self) {
        std::fs::remove_file(&self.path)
            .unwrap_or_else(|e| panic!("remove {}: {e}", self.path.display()));
    }
}

/// True for "no space left on device" (and "quota exceeded").
pub fn is_enospc(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// One namespace as a reader sees it: every event from its earliest offset on.
#[derive(Debug, Clone)]
pub struct NsLog {
    /// Its epoch.
    pub epoch: String,
    /// Its earliest offset.
    pub earliest: u64,
    /// The offset the next append gets.
    pub next: u64,
    /// The events, in offset order.
    pub events: Vec<Event>,
}

/// Reads every event of `ns` page by page (1000 at a time), from offset 0 (or its earliest).
/// `None` when the namespace does not exist (404).
pub async fn read_ns(b: &Broker, ns: &str) -> Option<NsLog> {
    let mut out: Option<NsLog> = None;
    let mut from = 0;
    // Bounded: each page moves `from` forward or ends the loop.
    loop {
        let r = b
            .get(&format!(
                "/v1/namespaces/{ns}/events?from={from}&limit=1000"
            ))
            .await;
        if r.status == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(
            r.status,
            StatusCode::OK,
            "read {ns} from {from}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let page = ReadPage::from_json(&r.body)
            .unwrap_or_else(|e| panic!("read {ns}: not a page ({e:?})"));
        assert!(page.error.is_none(), "read {ns}: {:?}", page.error);
        let log = out.get_or_insert_with(|| NsLog {
            epoch: page.epoch.clone(),
            earliest: page.earliest,
            next: page.next,
            events: Vec::new(),
        });
        assert_eq!(
            log.epoch, page.epoch,
            "{ns}: the epoch changed during a read"
        );
        if page.events.is_empty() {
            log.next = page.next;
            return out;
        }
        assert!(page.next > from, "{ns}: a page did not advance ({from})");
        from = page.next;
        log.events.extend(page.events);
    }
}

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Copies the directory tree `from` to `to` (which must not exist).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target)
                .unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
        }
    }
}

/// A small seeded random generator (SplitMix64): the same seed gives the same faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The seed from environment variable `var` if set, else from the clock; printed, so a
    /// failing run can be repeated.
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{var}={seed}");
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// A number from environment variable `var`, else `default`.
pub fn env_count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Checks a refused start is a clean one: exit status 1, no panic, and exactly one
/// `rewind: ` line, which names the file (any of `names`). Returns that line.
pub fn assert_clean_refusal(r: &Refusal, names: &[&str], context: &str) -> String {
    clean_refusal(r, names).unwrap_or_else(|e| panic!("{context}: {e}"))
}

/// [`assert_clean_refusal`] as a result: `Err` says what is wrong.
pub fn clean_refusal(r: &Refusal, names: &[&str]) -> Result<String, String> {
    if r.stderr.contains("panicked") {
        return Err(format!(
            "the broker panicked instead of refusing cleanly:\n{}",
            r.stderr
        ));
    }
    if r.status.code() != Some(1) {
        return Err(format!(
            "a refusal exits with status 1 (not a signal or another code): {r}"
        ));
    }
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("rewind: "))
        .collect();
    let [line] = lines[..] else {
        return Err(format!("a refusal is one `rewind: ` line:\n{}", r.stderr));
    };
    if !names.iter().any(|n| line.contains(n)) {
        return Err(format!("the refusal names none of {names:?}: {line}"));
    }
    Ok(line.to_owned())
}

/// Fails if `stderr` shows a panic.
pub fn assert_no_panic(stderr: &str, context: &str) {
    assert!(
        !stderr.contains("panicked"),
        "{context}: the broker panicked:\n{stderr}"
    );
}

/// The events a test had acknowledged, by namespace and offset (`data` as JSON text; every
/// event is named `e` and has no key), and the idempotency keys it used.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// namespace -> offset -> data
    pub events: BTreeMap<String, BTreeMap<u64, String>>,
    /// Keyed publishes: (namespace, key, body, first offset).
    pub keyed: Vec<(String, String, String, u64)>,
}

/// The JSON body publishing `data` (one object for one event, else an array).
pub fn publish_body(data: &[String]) -> String {
    let one = |d: &String| format!(r#"{{"event":"e","data":{d}}}"#);
    match data {
        [d] => one(d),
        _ => format!("[{}]", data.iter().map(one).collect::<Vec<_>>().join(",")),
    }
}

/// The first offset a `201` answer names (`offset` or `first`).
pub fn first_offset(r: &crate::Response) -> Option<u64> {
    let v = r.json();
    v["offset"].as_u64().or_else(|| v["first"].as_u64())
}

/// Sends the JSON publish `body` to `ns` again with its `Idempotency-Key` `key`; the
/// answer, and whether it says it was replayed (`Idempotent-Replayed: true`).
pub async fn retry_keyed(b: &Broker, ns: &str, key: &str, body: &str) -> (crate::Response, bool) {
    let r = b
        .request(
            crate::Method::POST,
            &format!("/v1/namespaces/{ns}/events"),
            &[
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ],
            body.to_owned(),
        )
        .await;
    let replayed = r
        .headers
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    (r, replayed)
}

impl Ledger {
    /// Records `data` as acknowledged at offsets `first..`.
    pub fn record(&mut self, ns: &str, first: u64, data: &[String]) {
        let log = self.events.entry(ns.to_owned()).or_default();
        for (i, d) in data.iter().enumerate() {
            log.insert(first + i as u64, d.clone());
        }
    }

    /// POSTs `data` to `ns` (with `key` as `Idempotency-Key` if given) and records it when
    /// answered `201`.
    pub async fn publish(
        &mut self,
        b: &Broker,
        ns: &str,
        data: &[String],
        key: Option<&str>,
    ) -> crate::Response {
        let body = publish_body(data);
        let mut headers = vec![("content-type", "application/json")];
        if let Some(k) = key {
            headers.push(("idempotency-key", k));
        }
        let r = b
            .request(
                crate::Method::POST,
                &format!("/v1/namespaces/{ns}/events"),
                &headers,
                body.clone(),
            )
            .await;
        if r.status == StatusCode::CREATED {
            let first = first_offset(&r).expect("201 names an offset");
            self.record(ns, first, data);
            if let Some(k) = key {
                self.keyed.push((ns.to_owned(), k.to_owned(), body, first));
            }
        }
        r
    }

    /// Acknowledged events in all.
    pub fn count(&self) -> usize {
        self.events.values().map(BTreeMap::len).sum()
    }

    /// Reads every namespace of the ledger and checks every acknowledged event is there,
    /// unchanged, at its offset, and that offsets are dense. Returns what was read.
    pub async fn check(&self, b: &Broker) -> Result<BTreeMap<String, NsLog>, String> {
        let mut out = BTreeMap::new();
        for (ns, acked) in &self.events {
            let log = read_ns(b, ns)
                .await
                .ok_or_else(|| format!("{ns}: gone (404), {} acknowledged events", acked.len()))?;
            check_dense(ns, &log)?;
            let mut missing = Vec::new();
            for (offset, data) in acked {
                let Some(ev) = offset
                    .checked_sub(log.earliest)
                    .and_then(|i| log.events.get(i as usize))
                else {
                    missing.push(*offset);
                    continue;
                };
                if ev.data != Payload::Json(data.clone()) || ev.event != "e" {
                    return Err(format!(
                        "{ns}@{offset}: changed: acknowledged {data}, now {} {:?}",
                        ev.event, ev.data
                    ));
                }
            }
            if !missing.is_empty() {
                return Err(format!(
                    "{ns}: {} acknowledged events missing (earliest {}, next {}, epoch {}), offsets {}…",
                    missing.len(),
                    log.earliest,
                    log.next,
                    log.epoch,
                    missing.iter().take(10).map(u64::to_string).collect::<Vec<_>>().join(",")
                ));
            }
            out.insert(ns.clone(), log);
        }
        Ok(out)
    }

    /// Retries every keyed publish with its key: each must answer `201` replayed with its
    /// original first offset.
    pub async fn check_keys(&self, b: &Broker) -> Result<(), String> {
        for (ns, key, body, first) in &self.keyed {
            let (r, replayed) = retry_keyed(b, ns, key, body).await;
            if r.status != StatusCode::CREATED || !replayed || first_offset(&r) != Some(*first) {
                return Err(format!(
                    "{ns}: the retry of key {key} (first offset {first}) got {} replayed={replayed}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
        Ok(())
    }
}

/// Checks a namespace's offsets run densely from `earliest` to `next`.
pub fn check_dense(ns: &str, log: &NsLog) -> Result<(), String> {
    for (i, ev) in log.events.iter().enumerate() {
        if ev.offset != log.earliest + i as u64 {
            return Err(format!(
                "{ns}: offset {} where {} belongs: not dense",
                ev.offset,
                log.earliest + i as u64
            ));
        }
    }
    if log.earliest + log.events.len() as u64 != log.next {
        return Err(format!(
            "{ns}: {} events from {} but next is {}",
            log.events.len(),
            log.earliest,
            log.next
        ));
    }
    Ok(())
}

/// `n` distinct JSON payloads tagged `tag`, each padded to about `pad` bytes.
pub fn payloads(tag: &str, n: usize, pad: usize) -> Vec<String> {
    let pad = "x".repeat(pad);
    (0..n)
        .map(|i| format!(r#"{{"tag":"{tag}","i":{i},"pad":"{pad}"}}"#))
        .collect()
}
