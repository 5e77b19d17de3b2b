//! Damaged files with the real binary: a flipped byte in a namespace's segment file stops
//! the start with one line naming the file and byte; `rewind serve --recover` keeps every
//! valid event and gives the namespace a new epoch, its survivors after its old `next`;
//! the start after that needs no flag.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rewind_tests::{rewind_bin, Broker};

fn segment_of(data_dir: &Path, ns: &str) -> PathBuf {
    let ns_dir = data_dir.join("log").join(ns);
    let epoch = std::fs::read_dir(&ns_dir)
        .unwrap()
        .next()
        .expect("an epoch directory")
        .unwrap()
        .path();
    let mut segs: Vec<PathBuf> = std::fs::read_dir(epoch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.remove(0)
}

async fn publish(b: &Broker, ns: &str, i: u64) {
    let res = b
        .post_json(
            &format!("/v1/namespaces/{ns}/events"),
            &format!(r#"{{"event":"e","data":{{"i":{i}}}}}"#),
        )
        .await;
    assert_eq!(res.json()["offset"], i, "{:?}", res.json());
}

#[tokio::test]
async fn a_damaged_segment_is_refused_then_recovered_with_a_new_epoch() {
    let mut b = Broker::start(&[]);
    for i in 0..6 {
        publish(&b, "orders", i).await;
    }
    publish(&b, "other", 0).await;
    let before = b.get("/v1/namespaces/orders").await.json();
    let other = b.get("/v1/namespaces/other").await.json();
    assert!(b.terminate().success());

    // One byte in the middle of the third event's frame.
    let seg = segment_of(&b.data_dir, "orders");
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames_start = 8 + 8 + 16 + 2 + "orders".len() + 4;
    let frame = (bytes.len() - frames_start) / 6;
    bytes[frames_start + 2 * frame + frame / 2] ^= 0x41;
    std::fs::write(&seg, &bytes).unwrap();

    let out = Command::new(rewind_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&b.data_dir)
        .env_remove("REWIND_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("rewind:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&seg.display().to_string()), "{err}");
    assert!(lines[0].contains("at byte"), "{err}");
    assert!(lines[0].contains("--recover"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let recovering = Broker::start_prepared(&["--recover"], |dir| {
        copy_dir(&b.data_dir, dir);
    });
    let after = recovering.get("/v1/namespaces/orders").await.json();
    assert_ne!(after["epoch"], before["epoch"]);
    assert_eq!(after["earliest"], 6);
    assert_eq!(after["next"], 11);
    let page = recovering
        .get("/v1/namespaces/orders/events?from=earliest")
        .await
        .json();
    let seen: Vec<(u64, u64)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["data"]["i"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(6, 0), (7, 1), (8, 3), (9, 4), (10, 5)]);
    // A namespace that lost nothing keeps its epoch.
    assert_eq!(recovering.get("/v1/namespaces/other").await.json(), other);
    let data_dir = recovering.data_dir.clone();
    let mut recovering = recovering;
    assert!(recovering.terminate().success());

    // The next start needs no flag, and offsets go on after the survivors.
    let again = Broker::start_prepared(&[], |dir| copy_dir(&data_dir, dir));
    publish(&again, "orders", 11).await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// FIXA 9: a damaged sled configuration file is refused in rewind's words only; sled's own
/// WARN/ERROR lines (which blame a sled version) are not printed by default.
#[tokio::test]
async fn a_damaged_idempotency_store_is_refused_without_sleds_own_lines() {
    let mut b = Broker::start(&[]);
    publish(&b, "orders", 0).await;
    assert!(b.terminate().success());
    let conf = b.data_dir.join("idem").join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[3] ^= 0x80;
    std::fs::write(&conf, &bytes).unwrap();
    let out = Command::new(rewind_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&b.data_dir)
        .env_remove("REWIND_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let rewind: Vec<&str> = err.lines().filter(|l| l.starts_with("rewind:")).collect();
    assert_eq!(rewind.len(), 1, "{err}");
    assert!(rewind[0].contains("idem"), "{err}");
    assert!(!err.contains("sled::"), "sled's own lines: {err}");
    assert!(!err.contains("sled version"), "sled's own lines: {err}");
}

/// FIXA 1 with the real binary: a copy of a namespace's first segment under another
/// epoch directory is refused naming it; `--recover` sets it aside in `lost+found/` and
/// the namespace keeps its epoch, events and offsets.
#[tokio::test]
async fn an_unlisted_epoch_directory_is_set_aside_not_merged() {
    let mut b = Broker::start(&[]);
    for i in 0..5 {
        publish(&b, "orders", i).await;
    }
    let before = b.get("/v1/namespaces/orders").await.json();
    assert!(b.terminate().success());
    let seg = segment_of(&b.data_dir, "orders");
    let stray = b.data_dir.join("log/orders/ffffffffffffffff");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::copy(&seg, stray.join(seg.file_name().unwrap())).unwrap();
    let out = Command::new(rewind_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&b.data_dir)
        .env_remove("REWIND_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&stray.display().to_string()), "{err}");
    let mut recovering = Broker::start_prepared(&["--recover"], |dir| copy_dir(&b.data_dir, dir));
    assert_eq!(recovering.get("/v1/namespaces/orders").await.json(), before);
    let found = recovering.data_dir.join("lost+found");
    let stamp = std::fs::read_dir(&found)
        .unwrap()
        .next()
        .expect("a lost+found entry")
        .unwrap()
        .path();
    assert!(stamp
        .join("log/orders/ffffffffffffffff")
        .join(seg.file_name().unwrap())
        .is_file());
    publish(&recovering, "orders", 5).await;
    assert!(recovering.terminate().success());
}
