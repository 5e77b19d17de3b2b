//! Every option `rewind serve --help` lists comes from three sources besides its default —
//! its flag, its `REWIND_*` variable and its key in the TOML file — and a bad value from
//! any of them stops the start with one line naming that source and no other, exit
//! status 1. The TOML key is the option's name; anything else is an unknown key. The
//! table in `docs/operations.md` gives each option's key, flag and default as `--help`
//! does.

use std::path::Path;
use std::process::Command;

use rewind_protocol::frame::{ClientFrame, ServerFrame, ServerMessage};
use rewind_protocol::Position;
use rewind_tests::ws::Client;
use rewind_tests::{refusal, rewind_bin, Broker, StatusCode};

/// One option as `rewind serve --help` shows it.
struct Shown {
    /// The flag without `--` (`write-queue`).
    flag: String,
    /// The default shown (`4096`, `none`).
    default: String,
    /// The variable shown (`REWIND_WRITE_QUEUE`).
    variable: String,
    /// The most shown (`[max: 32768]`), where the option has one.
    most: Option<String>,
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
            let most = between(entry, "[max: ").map(|m| m.split_whitespace().collect());
            Some(Shown {
                flag,
                default,
                variable,
                most,
            })
        })
        .collect();
    assert!(options.len() >= 30, "{help}");
    options
}

/// A value `option` does not take.
fn bad_value(option: &Shown) -> &'static str {
    // Any text is a path but the empty one; a key prefix has no braces.
    match option.key().as_str() {
        "data_dir" | "auth_secret_file" | "auth_public_keys" | "auth_audience" | "auth_issuer" => {
            ""
        }
        "redis_prefix" => "{tag}",
        _ => "bogus",
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

/// The option whose TOML key is `key`.
fn shown(key: &str) -> Shown {
    shown_options()
        .into_iter()
        .find(|o| o.key() == key)
        .unwrap_or_else(|| panic!("no option {key}"))
}

/// Every path under `dir` with its size, sorted: what a refused start must leave as it was.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            }
            let name = entry
                .path()
                .strip_prefix(dir)
                .unwrap()
                .display()
                .to_string();
            found.push((name, if meta.is_dir() { 0 } else { meta.len() }));
        }
    }
    found.sort();
    found
}

#[test]
fn a_store_cache_under_sleds_floor_is_refused_before_the_store_is_opened() {
    // sled refuses a cache under 256 bytes only when it opens the idempotency store, and
    // that used to be reported as damage, with --recover as the advice (which moved the
    // healthy store aside).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut b = Broker::open(&data, &[]).unwrap();
    assert!(b.terminate().success());
    let before = tree(&data);
    let file = dir.path().join("rewind.toml");
    let option = shown("store_cache_bytes");
    for (text, least) in [("0", 256), ("255", 256)] {
        let err = refusal(serve(dir.path(), &option).args(["--store-cache-bytes", text]));
        blames(&err, "--store-cache-bytes: ", &[]);
        assert!(
            err.trim_end()
                .ends_with(&format!("must be at least {least}")),
            "{err}"
        );
        let err = refusal(
            serve(dir.path(), &option)
                .arg("--recover")
                .env("REWIND_STORE_CACHE_BYTES", text),
        );
        let source = format!("environment variable REWIND_STORE_CACHE_BYTES=\"{text}\": ");
        blames(&err, &source, &[]);
        std::fs::write(&file, format!("store_cache_bytes = {text}\n")).unwrap();
        let err = refusal(serve(dir.path(), &option).arg("--config").arg(&file));
        let source = format!("config file {}, key `store_cache_bytes`: ", file.display());
        blames(&err, &source, &[]);
        assert!(
            !err.contains("damaged") && !err.contains("--recover"),
            "{err}"
        );
    }
    assert_eq!(tree(&data), before, "a refused start changed the store");
    let mut b = Broker::open(&data, &["--store-cache-bytes", "256"]).unwrap();
    assert!(b.terminate().success(), "{}", b.stderr());
    assert!(!b.stderr().contains("damaged"), "{}", b.stderr());
}

#[test]
fn a_value_over_an_options_most_is_refused_naming_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rewind.toml");
    // tokio's Semaphore::MAX_PERMITS, and Linux's default pid_max.
    let permits = (usize::MAX >> 3) as u64;
    let cases = [
        ("write_queue", permits),
        ("max_connections", permits),
        ("blocking_threads", 32_768),
        // every worker starts with the runtime: 32768 threads did not start here.
        ("worker_threads", 1024),
        // tungstenite allocates and zero-fills it for every connection.
        ("ws_read_buffer_bytes", 64 << 20),
        // hyper makes room for this many header lines per request.
        ("http_max_headers", 10_000),
        // hyper's read buffer, which holds the head, never grows past it.
        ("http_max_header_bytes", 417_792),
        // Redis WAIT's replica count: no deployment has a million replicas.
        ("redis_wait_replicas", 1_000_000),
    ];
    for (key, most) in cases {
        let option = shown(key);
        let flag = format!("--{}", option.flag);
        let why = format!("must be at most {most}");
        for over in [(most + 1).to_string(), usize::MAX.to_string()] {
            let err = refusal(serve(dir.path(), &option).args([flag.as_str(), over.as_str()]));
            blames(
                &err,
                &format!("{flag}: {why}"),
                std::slice::from_ref(&option.variable),
            );
            let err = refusal(serve(dir.path(), &option).env(&option.variable, &over));
            let source = format!("environment variable {}={over:?}: {why}", option.variable);
            blames(&err, &source, std::slice::from_ref(&flag));
        }
        // A TOML integer is at most i64::MAX, which every most is under.
        std::fs::write(&file, format!("{key} = {}\n", most + 1)).unwrap();
        let err = refusal(serve(dir.path(), &option).arg("--config").arg(&file));
        let source = format!("config file {}, key `{key}`: {why}", file.display());
        blames(&err, &source, std::slice::from_ref(&flag));
    }
}

#[test]
fn a_variable_that_is_not_utf8_is_refused_naming_it() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let option = shown("data_dir");
    let bad = std::ffi::OsStr::from_bytes(b"d-\xff");
    let err = refusal(
        serve(dir.path(), &option)
            .current_dir(dir.path())
            .env("REWIND_DATA_DIR", bad),
    );
    blames(
        &err,
        "environment variable REWIND_DATA_DIR=\"d-\u{fffd}\": the value is not UTF-8",
        &[],
    );
    // Nothing was created under another name.
    assert_eq!(tree(dir.path()), [], "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_at_their_extremes_serve_and_stop() {
    // Every whole-number option at its most: the one --help shows (the semaphores', the
    // thread pool's and the read buffer's bounds), else the largest number (seconds that
    // overflow the clock when added to it, sizes no arithmetic may overflow); and the
    // write buffer at its least.
    let mut args: Vec<String> = Vec::new();
    for option in shown_options() {
        let whole = option.default.parse::<u64>().is_ok() || option.default == "none";
        // `redis` is a URL or none, not a number (the Redis options are tested with a
        // real Redis in tests/tests/cluster.rs), and so are the token options that default
        // to none (files and names: tests/tests/auth.rs), and `allowed_origins`
        // (tests/tests/origins.rs).
        let named = option.default == "none" && !option.key().starts_with("retention_");
        // A token option without a key refuses to start: the token options' extremes are
        // served with a key in tests/tests/auth.rs.
        let token = option.key().starts_with("auth_");
        if !whole || named || token || option.key() == "ws_write_buffer_bytes" {
            continue;
        }
        // u64::MAX itself is `none` for a retention limit.
        let largest = if option.default == "none" || option.key().starts_with("retention_max") {
            u64::MAX - 1
        } else {
            u64::MAX
        };
        args.push(format!("--{}", option.flag));
        args.push(option.most.unwrap_or_else(|| largest.to_string()));
    }
    assert!(args.len() > 40, "{args:?}");
    args.extend(["--ws-write-buffer-bytes".to_owned(), "1".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::open(&dir.path().join("data"), &args).unwrap();
    let r = b
        .post_json("/v1/namespaces/a/events", r#"[{"event":"x","data":1}]"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    // A long-poll may ask for as long as `max_wait_secs` allows, however long (a tester's
    // `wait=18446744073709551615` panicked the handler: u64::MAX as f64 is 2^64).
    for wait in ["18446744073709551615", "18446744073709551616"] {
        let r = b
            .get(&format!("/v1/namespaces/a/events?from=0&wait={wait}"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "wait={wait}: {r:?}");
    }
    let mut c = Client::connect(b.addr, None).await;
    c.send(&ClientFrame::Open {
        ns: "a".into(),
        from: Position::Earliest,
        epoch: None,
        credit: 10,
    })
    .await;
    // The subscriber gets the event through a write buffer of 1 byte.
    loop {
        match c.next().await {
            ServerMessage::Event(e) => {
                assert_eq!(e.event.offset, 0);
                break;
            }
            ServerMessage::Frame(ServerFrame::Opened { .. } | ServerFrame::Ping) => {}
            ServerMessage::Frame(f) => panic!("unexpected {f:?}"),
        }
    }
    // And answers a ping: the session lives on, its ping timer set a century away.
    c.send(&ClientFrame::Ping).await;
    loop {
        match c.next().await {
            ServerMessage::Frame(ServerFrame::Pong) => break,
            ServerMessage::Frame(ServerFrame::Ping) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    drop(c);
    let status = b.terminate();
    assert!(status.success(), "{status}: {}", b.stderr());
    assert!(!b.stderr().contains("panicked"), "{}", b.stderr());
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

/// A tester's `--worker-threads 30` under a pids limit (and 30 to 1024 under an
/// address-space limit) panicked in tokio's runtime builder and then hung, not listening
/// and never exiting. Now one line and exit status 1.
#[test]
fn worker_threads_the_system_refuses_stop_the_broker_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    // 1 GB of address space: a few hundred threads' stacks (2 MiB each) do not fit.
    let stderr = refusal(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 1000000 && exec \"$0\" serve --listen 127.0.0.1:0 --data-dir \"$1\" --worker-threads 1000")
            .arg(rewind_bin())
            .arg(dir.path().join("data"))
            .env_remove("REWIND_WORKER_THREADS"),
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("rewind: starting 1000 runtime workers (worker_threads): "),
        "{stderr}"
    );
}
