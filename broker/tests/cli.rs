//! The `rewind` binary's command line. (Having an integration test also makes
//! `cargo test --workspace` build the binary that the end-to-end tests in `tests/` start.)

use std::process::Command;

fn rewind(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(args)
        .env_remove("REWIND_CONFIG")
        .output()
        .expect("run rewind")
}

#[test]
fn serve_help_documents_every_option_with_its_default() {
    let out = rewind(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let options: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--") && !l.starts_with("--help") && !l.starts_with("--config"))
        .collect();
    assert!(options.len() >= 20, "{help}");
    for line in help.split("\n  --").skip(1) {
        if line.starts_with("help") || line.starts_with("config") {
            continue;
        }
        assert!(
            line.contains("[default: "),
            "option without a default: --{line}"
        );
        assert!(
            line.contains("[env: REWIND_"),
            "option without a variable: --{line}"
        );
    }
}

#[test]
fn bad_config_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rewind.toml");
    std::fs::write(&file, "max_batch_events = \"many\"\n").unwrap();
    let out = rewind(&["serve", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_batch_events"), "{err}");
}
