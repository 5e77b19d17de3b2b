//! `rewind bench store` runs every scenario against the binary's own store and reports
//! what it measured (small sizes: this checks the bench works, not the numbers).

use std::process::Command;

use rewind_tests::rewind_bin;

/// The number right before `after` in `line`.
fn number_before(line: &str, after: &str) -> f64 {
    let end = line
        .find(after)
        .unwrap_or_else(|| panic!("no {after:?} in {line}"));
    let start = line[..end]
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(0, |i| i + 1);
    line[start..end]
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {:?} in {line}", &line[start..end]))
}

/// Runs `rewind bench store` with `args`; its table's rows.
fn bench_store(args: &[&str]) -> Vec<String> {
    let out = Command::new(rewind_bin())
        .args(["bench", "store"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("rewind runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().skip(2).map(str::to_owned).collect()
}

#[test]
fn every_store_scenario_runs_and_reports_its_measure() {
    let rows = bench_store(&[
        "--disk-events",
        "500",
        "--namespaces",
        "50",
        "--rate",
        "400",
        "--seconds",
        "2",
        "--publishers",
        "2",
        "--catchup-events",
        "3000",
    ]);
    assert_eq!(rows.len(), 6, "{rows:#?}");
    // Disk: every event stored, and some bytes for them.
    assert!(
        rows[0].contains("after 500 events of 1024 B"),
        "{}",
        rows[0]
    );
    assert!(number_before(&rows[0], "×**") > 0.0, "{}", rows[0]);
    // Idle namespaces: an RSS was read for the full broker and the empty one.
    assert!(rows[1].starts_with("| 50 idle namespaces"), "{}", rows[1]);
    assert!(number_before(&rows[1], " KiB, empty broker") > 0.0);
    // Latency: open loop, so exactly rate × seconds publishes, every one answered.
    assert!(rows[2].contains("800 publishes"), "{}", rows[2]);
    // The disk probe beside it: some syncs were timed.
    assert!(
        rows[3].starts_with("| disk probe during that run"),
        "{}",
        rows[3]
    );
    assert!(!rows[3].contains("(0 syncs"), "{}", rows[3]);
    // Catch-up: both reads of the whole log, at some rate.
    assert!(rows[4].contains("catch-up of 3000 events"), "{}", rows[4]);
    for row in &rows[4..] {
        assert!(number_before(row, " | – | – | – |") > 0.0, "{row}");
    }
}

#[test]
fn the_latency_scenario_publishes_over_http_on_the_same_schedule() {
    let rows = bench_store(&[
        "--only",
        "latency",
        "--transport",
        "http",
        "--http-connections",
        "8",
        "--rate",
        "300",
        "--seconds",
        "1",
    ]);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(rows[0].contains("8 HTTP connections"), "{}", rows[0]);
    assert!(rows[0].contains("300 publishes"), "{}", rows[0]);
    assert!(
        rows[1].starts_with("| disk probe during that run"),
        "{}",
        rows[1]
    );
}

/// `--only sync`: the disk alone, for the seconds asked, however long the interval (a
/// tester's interval of 10^8 ms ran for a day instead of a second), with its CPU per
/// sync; an interval of 0 is refused with one line.
#[test]
fn the_sync_scenario_times_the_disk_alone_and_stops_on_time() {
    let sync_for_a_second = |interval| {
        bench_store(&[
            "--only",
            "sync",
            "--seconds",
            "1",
            "--probe-interval-ms",
            interval,
        ])
    };
    let rows = sync_for_a_second("5");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert!(rows[0].starts_with("| disk alone:"), "{}", rows[0]);
    assert!(number_before(&rows[0], " syncs;") >= 2.0, "{}", rows[0]);
    // The probe thread's own CPU per write + sync: a sync is never free.
    assert!(number_before(&rows[0], " µs each)") > 0.0, "{}", rows[0]);
    for interval in ["100000000", "18446744073709551615"] {
        // The run's own length bounds it: a probe that missed its stop would hang here.
        let rows = sync_for_a_second(interval);
        assert!(rows[0].contains("(1 syncs;"), "{}", rows[0]);
    }
    let out = Command::new(rewind_bin())
        .args(["bench", "store", "--only", "sync", "--seconds", "1"])
        .args(["--probe-interval-ms", "0"])
        .output()
        .expect("rewind runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--probe-interval-ms must be at least 1"),
        "{stderr}"
    );
}
