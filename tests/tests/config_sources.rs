//! Every option `rewind serve --help` lists comes from three sources besides its default —
//! its flag, its `REWIND_*` variable and its key in the TOML file — and a bad value from
//! any of them stops the start with one line naming that source and no other, exit
//! status 1. The TOML key is the option's name; anything else is an unknown key. The
//! table in `docs/operations.md` gives each option's key, flag and default as `--help`
//! does.

use std::path::Path;
use std::process::Command;

use rewind_tests::{refusal, rewind_bin};

/// One option as `rewind serve --help` shows it.
struct Shown {
    /// The flag without `--` (`write-queue`).
    flag: String,
    /// The default shown (`4096`, `none`).
    default: String,
    /// The variable shown (`REWIND_WRITE_QUEUE`).
    variable: String,
}

impl Shown {
    /// The option's name, which is its TOML key.
    fn key(&self) -> String {
        self.flag.replace('-', "_")
    }
}

/// Every option of `rewind serve --help`: each flag with a default (not `--config`,
/// `--recover`, `--help`).
fn shown_options() -> Vec<Shown> {
    let out = Command::new(rewind_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let between = |text: &str, start: &str| -> Option<String> {
        let rest = text.split(start).nth(1)?;
        Some(rest.split(']').next()?.to_owned())
    };
    let options: Vec<Shown> = help
        .split("\n      --")
        .skip(1)
        .filter_map(|entry| {
            let flag = entry.split([' ', '\n']).next()?.to_owned();
            let default = between(entry, "[default: ")?;
            let variable =
                between(entry, "[env: ").unwrap_or_else(|| panic!("--{flag} shows no variable"));
            Some(Shown {
                flag,
                default,
                variable,
            })
        })
        .collect();
    assert!(options.len() >= 30, "{help}");
    options
}

/// A value `option` does not take.
fn bad_value(option: &Shown) -> &'static str {
    // Any text is a path but the empty one.
    if option.key() == "data_dir" {
        ""
    } else {
        "bogus"
    }
}

/// `rewind serve` in `dir`, on port 0, with the other options at their defaults except
/// where `option` is the one the test sets (so it is not given twice).
fn serve(dir: &Path, option: &Shown) -> Command {
    let mut cmd = Command::new(rewind_bin());
    cmd.arg("serve");
    if option.key() != "data_dir" {
        cmd.arg("--data-dir").arg(dir.join("data"));
    }
    if option.key() != "listen" {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    // Variables of other options must not decide the outcome.
    for other in shown_options() {
        cmd.env_remove(&other.variable);
    }
    cmd
}

/// `err` is one line, `rewind: ` and then `source`, and names none of `others`.
fn blames(err: &str, source: &str, others: &[String]) {
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("rewind: {source}")),
        "{source}: {err}"
    );
    for other in others {
        assert!(!err.contains(other.as_str()), "{source} and {other}: {err}");
    }
}

#[test]
fn a_bad_value_from_each_source_names_that_source_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rewind.toml");
    let file_text = file.to_str().unwrap().to_owned();
    for option in shown_options() {
        let bad = bad_value(&option);
        let flag = format!("--{}", option.flag);
        let var = format!("{}=", option.variable);
        let key = format!("key `{}`", option.key());

        let err = refusal(serve(dir.path(), &option).arg(format!("{flag}={bad}")));
        blames(
            &err,
            &format!("{flag}: "),
            &[var.clone(), file_text.clone()],
        );

        let err = refusal(serve(dir.path(), &option).env(&option.variable, bad));
        let source = format!("environment variable {}={bad:?}: ", option.variable);
        blames(&err, &source, &[flag.clone(), file_text.clone()]);

        std::fs::write(&file, format!("{} = {bad:?}\n", option.key())).unwrap();
        let err = refusal(serve(dir.path(), &option).arg("--config").arg(&file));
        let source = format!("config file {file_text}, {key}: ");
        blames(&err, &source, &[flag.clone(), var.clone()]);
    }
}

#[test]
fn a_value_under_an_options_least_is_blamed_on_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rewind.toml");
    let options = shown_options();
    let write_queue = options.iter().find(|o| o.key() == "write_queue").unwrap();
    // The file says 0, the variable 0, the flag 0: the last one read is blamed.
    std::fs::write(&file, "write_queue = 0\n").unwrap();
    let file_source = format!("config file {}, key `write_queue`: ", file.display());
    let err = refusal(serve(dir.path(), write_queue).arg("--config").arg(&file));
    blames(&err, &file_source, &["REWIND_WRITE_QUEUE".to_owned()]);
    assert!(err.contains("must be at least 1"), "{err}");
    let err = refusal(
        serve(dir.path(), write_queue)
            .arg("--config")
            .arg(&file)
            .env("REWIND_WRITE_QUEUE", "0"),
    );
    blames(
        &err,
        "environment variable REWIND_WRITE_QUEUE=\"0\": ",
        &["--write-queue".to_owned()],
    );
    let err = refusal(
        serve(dir.path(), write_queue)
            .args(["--write-queue", "0"])
            .env("REWIND_WRITE_QUEUE", "0"),
    );
    blames(&err, "--write-queue: ", &["REWIND_WRITE_QUEUE".to_owned()]);
}

#[test]
fn only_the_option_names_are_toml_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rewind.toml");
    let options = shown_options();
    let listen = options.iter().find(|o| o.key() == "listen").unwrap();
    // The flag's spelling, the variable's, and the two flags that are not options.
    for text in [
        "write-queue = 5\n",
        "REWIND_WRITE_QUEUE = 5\n",
        "WRITE_QUEUE = 5\n",
        "recover = true\n",
        "config = \"other.toml\"\n",
        "[retention]\nmax_event = 5\n",
    ] {
        std::fs::write(&file, text).unwrap();
        let err = refusal(serve(dir.path(), listen).arg("--config").arg(&file));
        let key = text
            .split(" =")
            .next()
            .unwrap()
            .replace("[retention]\n", "retention.");
        blames(
            &err,
            &format!("config file {}, key `{key}`: unknown key", file.display()),
            &[],
        );
        // The message lists what the keys are.
        for option in &options {
            assert!(err.contains(&option.key()), "{}: {err}", option.key());
        }
    }
}

/// The rows of the table in `docs/operations.md`'s configuration section: each key with
/// its flag column and its default column.
fn doc_rows() -> Vec<(String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let key = cells.get(1)?.trim_matches('`').to_owned();
            Some((key, cells.get(2)?.to_string(), cells.get(3)?.to_string()))
        })
        .collect()
}

#[test]
fn the_docs_table_gives_every_option_its_flag_and_the_default_help_shows() {
    let rows = doc_rows();
    let options = shown_options();
    for option in &options {
        let (_, flag, default) = rows
            .iter()
            .find(|(key, _, _)| *key == option.key())
            .unwrap_or_else(|| panic!("docs/operations.md has no row for `{}`", option.key()));
        assert!(
            flag.starts_with(&format!("`--{}`", option.flag)),
            "{}: {flag}",
            option.key()
        );
        // The default as shown, in backticks or not, then perhaps a gloss: `604800 (7 days)`.
        let first = default.split(" (").next().unwrap().trim_matches('`');
        assert_eq!(first, option.default, "{}: {default}", option.key());
    }
    // And no row for an option that is not there.
    for (key, _, _) in &rows {
        assert!(
            options.iter().any(|o| o.key() == *key),
            "docs/operations.md has a row for `{key}`, which is not an option"
        );
    }
}
