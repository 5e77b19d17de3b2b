//! The option names the docs mention are the ones the binary has: every `--flag` in
//! backticks in `docs/*.md` and `README.md` is in some `rewind … --help`, and every
//! backticked config key that looks like one of `rewind serve`'s (the same first two
//! words, such as `ws_ping_interval`) is one exactly.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use rewind_tests::rewind_bin;

fn help(args: &[&str]) -> String {
    let out = Command::new(rewind_bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("run rewind --help");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The subcommands a help text lists under `Commands:`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The `--flag`s in `text` that start at a word boundary.
fn flags(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        let before = rest[..i].chars().last();
        let name: String = rest[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
            && name.starts_with(|c: char| c.is_ascii_lowercase())
        {
            found.push(format!("--{name}"));
        }
        rest = &rest[i + 2 + name.len()..];
    }
    found
}

/// Every help text of the binary: the top level and each subcommand, recursively.
fn all_help(args: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = help(&refs);
    for sub in subcommands(&text) {
        let mut next = args.clone();
        next.push(sub);
        all_help(next, out);
    }
    out.push((args, text));
}

/// The backticked spans outside fenced code blocks, with the file they are in.
fn doc_spans() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root.join("README.md"));
    files.sort();
    let mut spans = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a doc");
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut fenced = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if fenced {
                continue;
            }
            for span in line.split('`').skip(1).step_by(2) {
                spans.push((name.clone(), span.to_owned()));
            }
        }
    }
    spans
}

fn first_two_words(name: &str) -> String {
    name.split('_').take(2).collect::<Vec<_>>().join("_")
}

#[test]
fn every_option_the_docs_name_is_in_help() {
    let mut helps = Vec::new();
    all_help(Vec::new(), &mut helps);
    let known: BTreeSet<String> = helps.iter().flat_map(|(_, h)| flags(h)).collect();
    let serve = &helps
        .iter()
        .find(|(args, _)| args == &["serve"])
        .expect("a serve subcommand")
        .1;
    let keys: BTreeSet<String> = flags(serve)
        .iter()
        .map(|f| f.trim_start_matches("--").replace('-', "_"))
        .filter(|k| k != "help")
        .collect();
    assert!(keys.contains("ws_ping_interval_secs"), "{keys:?}");
    let spans = doc_spans();
    assert!(spans.len() > 100, "only {} spans found", spans.len());

    let mut wrong = Vec::new();
    let mut checked = 0;
    for (file, span) in &spans {
        // Other programs' and the scripts' own flags are not rewind's (also after environment
        // variables: `REWIND_CRASH_ROUNDS=50 cargo test …`, `tests/peers/compare.sh --quick`).
        let command = span.split_whitespace().find(|w| !w.contains('='));
        let other = [
            "cargo",
            "node",
            "npm",
            "npx",
            "redis-server",
            "chromium",
            "perf",
            "strace",
        ];
        if command.is_some_and(|c| other.contains(&c) || c.ends_with(".sh")) {
            continue;
        }
        for flag in flags(span) {
            checked += 1;
            if !known.contains(&flag) {
                wrong.push(format!("{file}: flag {flag} in `{span}`"));
            }
        }
        let snake = span.contains('_')
            && span.split('_').all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if snake
            && keys
                .iter()
                .any(|k| first_two_words(k) == first_two_words(span))
        {
            checked += 1;
            if !keys.contains(span) {
                wrong.push(format!("{file}: config key `{span}`"));
            }
        }
    }
    assert!(checked > 20, "only {checked} option names checked");
    assert!(
        wrong.is_empty(),
        "not options of the binary:\n{}",
        wrong.join("\n")
    );
}
