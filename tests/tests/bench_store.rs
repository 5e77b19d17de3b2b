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

#[test]
fn every_store_scenario_runs_and_reports_its_measure() {
    let out = Command::new(rewind_bin())
        .args([
            "bench",
            "store",
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
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("rewind runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout.lines().skip(2).collect();
    assert_eq!(rows.len(), 5, "{stdout}");
    // Disk: every event stored, and some bytes for them.
    assert!(
        rows[0].contains("after 500 events of 1024 B"),
        "{}",
        rows[0]
    );
    assert!(number_before(rows[0], "×**") > 0.0, "{}", rows[0]);
    // Idle namespaces: an RSS was read for the full broker and the empty one.
    assert!(rows[1].starts_with("| 50 idle namespaces"), "{}", rows[1]);
    assert!(number_before(rows[1], " KiB, empty broker") > 0.0);
    // Latency: open loop, so exactly rate × seconds publishes, every one answered.
    assert!(rows[2].contains("800 publishes"), "{}", rows[2]);
    // Catch-up: both reads of the whole log, at some rate.
    assert!(rows[3].contains("catch-up of 3000 events"), "{}", rows[3]);
    for row in &rows[3..] {
        assert!(number_before(row, " | – | – | – |") > 0.0, "{row}");
    }
}
