//! The broker library's structure, checked from its sources (`docs/architecture.md`):
//!
//! - no cycle between the library's top modules (a module may use another only if that
//!   one does not, directly or through others, use it back);
//! - no library module uses the client crate, clap or tempfile outside its tests — those
//!   belong to the `rewind` binary (`broker/src/bin/rewind/`).
//!
//! A reference is `crate::<module>` or a name inside `use crate::{…}`, outside comments
//! and outside a file's `#[cfg(test)]` tail (test modules sit at the bottom of a file or
//! in files of their own, which are skipped).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The library's top modules: every `.rs` file and directory of `src/` except `lib.rs`
/// and the binary's `bin/`.
fn top_modules() -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src()).expect("broker/src is readable") {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "lib.rs" || name == "bin" || name == "main.rs" {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".rs") {
            modules.insert(stem.to_owned());
        } else if entry.path().is_dir() {
            modules.insert(name);
        }
    }
    modules
}

/// Every `.rs` file of top module `module` that is not a test file.
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let dir = src().join(module);
    if dir.is_dir() {
        collect(&dir, &mut files);
    }
    files.retain(|f| !is_test_file(f));
    files
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Whether `path` holds only tests: its `mod` declaration in the parent file is marked
/// `#[cfg(test)]`, or it is the `tests` module of its parent.
fn is_test_file(path: &Path) -> bool {
    let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
        return false;
    };
    let Some(dir) = path.parent() else {
        return false;
    };
    // `a/b.rs` is declared in `a.rs` or `a/mod.rs`; `a/b/mod.rs` likewise, one level up.
    let (name, dir) = if stem == "mod" {
        match (dir.file_name(), dir.parent()) {
            (Some(n), Some(up)) => (n.to_string_lossy().into_owned(), up.to_path_buf()),
            _ => return false,
        }
    } else {
        (stem, dir.to_path_buf())
    };
    let parents = [
        dir.join("mod.rs"),
        dir.with_extension("rs"),
        dir.join("lib.rs"),
    ];
    parents.iter().any(|parent| {
        let text = std::fs::read_to_string(parent).unwrap_or_default();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        lines.windows(2).any(|w| {
            w[0] == "#[cfg(test)]"
                && w[1]
                    .trim_start_matches("pub(crate) ")
                    .trim_start_matches("pub(super) ")
                    == format!("mod {name};")
        })
    }) || is_test_file_dir(&dir)
}

/// Whether `dir` is itself the directory of a test-only module.
fn is_test_file_dir(dir: &Path) -> bool {
    dir.starts_with(src()) && dir != src() && is_test_file(&dir.with_extension("rs"))
}

/// The code of `path`: comment lines dropped, cut at the first `#[cfg(test)]`.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("a readable source file");
    let mut code = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// The top modules `code` refers to.
fn references(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the first name of each item at the
            // first level (`a`, `b`, `d`).
            let mut depth = 0usize;
            let mut name = String::new();
            let mut first = true;
            for c in group.chars() {
                let ident = c.is_alphanumeric() || c == '_';
                if ident && depth == 0 && first {
                    name.push(c);
                    continue;
                }
                if !name.is_empty() {
                    found.extend(modules.get(&name).cloned());
                    name.clear();
                    first = false;
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => first = true,
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) {
                found.insert(name);
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = top_modules();
    let mut edges = BTreeMap::new();
    for module in &modules {
        let mut uses = BTreeSet::new();
        for file in files_of(module) {
            uses.extend(references(&code_of(&file), &modules));
        }
        uses.remove(module);
        edges.insert(module.clone(), uses);
    }
    edges
}

/// A cycle through `graph`, as the list of modules on it, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_checker_finds_references_and_cycles() {
    let modules: BTreeSet<String> = ["engine", "http", "storage"].map(String::from).into();
    let code =
        "use crate::{engine::{Log, LogError}, storage::Storage};\nfn f() { crate::http::x() }";
    assert_eq!(
        references(code, &modules),
        ["engine", "http", "storage"].map(String::from).into()
    );
    let mut looped = BTreeMap::new();
    looped.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    looped.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        cycle(&looped),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    looped.insert("b".to_owned(), BTreeSet::new());
    assert_eq!(cycle(&looped), None);
}

#[test]
fn no_cycle_between_the_librarys_top_modules() {
    let graph = graph();
    assert!(
        graph.len() >= 5,
        "expected the library's top modules, found {graph:?}"
    );
    if let Some(cycle) = cycle(&graph) {
        panic!(
            "module cycle: {}\nall edges: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_library_leaves_client_clap_and_tempfile_to_the_binary() {
    let mut offenders = Vec::new();
    for module in top_modules() {
        for file in files_of(&module) {
            let code = code_of(&file);
            for needle in ["rewind_client", "clap::", "tempfile"] {
                if code.contains(needle) {
                    offenders.push(format!("{} uses {needle}", file.display()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}
