//! The `rewind` command: a thin layer over the `rewind_broker` library. `serve` reads
//! its flags as [`serve::ServeArgs`] and runs the library's server; the client commands
//! and the benchmarks have their own modules.

mod bench;
mod cli;
mod serve;

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context;
use bench::BenchCommand;
use clap::{Parser, Subcommand};
use rewind_broker::config::{Config, LogFormat};
use rewind_broker::server;
use rewind_broker::Log;
use serve::ServeArgs;

/// mimalloc instead of glibc's malloc: the store allocates and frees small nodes on every
/// insert, and glibc's bins and consolidation were a tenth of the broker's CPU in a
/// fan-out profile (see `docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rewind",
    version,
    about = "An offset-based, reliable event-streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker
    // `--write-queue -1` is a bad value of the flag, not an unknown flag `-1`.
    #[command(allow_negative_numbers = true)]
    Serve(Box<ServeArgs>),
    /// Publish one event and print its offset, or each line of stdin (--lines)
    Publish(cli::PublishArgs),
    /// Print a namespace's events as JSON lines, following it (or --no-follow, --limit N)
    Tail(cli::TailArgs),
    /// List the namespaces
    Namespaces(cli::NamespacesArgs),
    /// Run a benchmark (see docs/benchmarks.md)
    #[command(subcommand)]
    Bench(BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return refused(e),
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the chain of causes on one line, without a backtrace.
            cli::say(format_args!("rewind: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Answers a command line clap refused. `--help` and `--version` are clap's as ever; a
/// mistake is one line naming the flag, with exit status 1, like every other error of
/// every command (`docs/operations.md`, `docs/client.md`).
fn refused(e: clap::Error) -> std::process::ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.split(' ').next().map(str::to_owned),
        _ => None,
    };
    let line = match (e.kind(), flag, std::error::Error::source(&e)) {
        // The flag's own parser said what is wrong (`serve.rs`, reading as `config.rs`
        // does).
        (ErrorKind::ValueValidation, Some(flag), Some(why)) => format!("{flag}: {why}"),
        _ => {
            // clap's message without its `error: ` (with what it lists under it, such as
            // missing arguments), and its tips after it; not its usage.
            let text = e.to_string();
            let mut message: Vec<&str> = Vec::new();
            let mut tips: Vec<&str> = Vec::new();
            for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if l.starts_with("Usage:") || l.starts_with("For more information") {
                    break;
                }
                match l.strip_prefix("tip: ") {
                    Some(tip) => tips.push(tip),
                    None => message.push(l.strip_prefix("error: ").unwrap_or(l)),
                }
            }
            let first = if message.is_empty() {
                "bad arguments".to_owned()
            } else {
                message.join(" ")
            };
            if tips.is_empty() {
                let command = std::env::args_os()
                    .nth(1)
                    .and_then(|a| a.to_str().map(str::to_owned))
                    .filter(|a| !a.starts_with('-') && e.kind() != ErrorKind::InvalidSubcommand);
                match command {
                    Some(c) => format!("{first} (rewind {c} --help lists the flags)"),
                    None => format!("{first} (rewind --help lists the commands)"),
                }
            } else {
                format!("{first} ({})", tips.join("; "))
            }
        }
    };
    cli::say(format_args!("rewind: {line}"));
    std::process::ExitCode::FAILURE
}

/// The log filter: `RUST_LOG` if it is set and valid, else `info` with sled's own lines
/// off (sled's damage reports blame sled versions and name no store; rewind reports what
/// sled refused in its own words). An invalid one is named in a warning once logging is
/// up, instead of silently changing what is logged. A `RUST_LOG` turning every target up
/// to `trace` gets `tungstenite` capped at `debug` ([`caps_tungstenite`]).
fn log_filter() -> (tracing_subscriber::EnvFilter, Option<String>) {
    use tracing_subscriber::EnvFilter;
    let fallback = || EnvFilter::new("info,sled=off");
    match std::env::var("RUST_LOG") {
        Err(std::env::VarError::NotPresent) => (fallback(), None),
        Err(std::env::VarError::NotUnicode(v)) => {
            (fallback(), Some(format!("RUST_LOG={v:?} is not UTF-8")))
        }
        Ok(v) => match EnvFilter::try_new(&v) {
            Ok(filter) if caps_tungstenite(&v) => match "tungstenite=debug".parse() {
                Ok(cap) => (filter.add_directive(cap), None),
                Err(e) => (
                    filter,
                    Some(format!("tungstenite=debug is not a directive: {e}")),
                ),
            },
            Ok(filter) => (filter, None),
            Err(e) => (
                fallback(),
                Some(format!("RUST_LOG={v:?} is not a filter: {e}")),
            ),
        },
    }
}

/// Whether the `RUST_LOG` filter `filter` needs `tungstenite=debug` added: it has a
/// directive without a target at `trace` (`trace`, `info,trace`, `[span]=trace`) and names
/// no `tungstenite` target itself. `tungstenite` writes every WebSocket message whole at
/// `trace`, an `auth` frame's token included (`docs/security.md`: no token is ever
/// logged); who names `tungstenite` asked for its lines and gets them.
fn caps_tungstenite(filter: &str) -> bool {
    let mut wide_trace = false;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (target, level),
            None if directive
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_ok() =>
            {
                ("", directive)
            }
            // A target alone turns it up to `trace`.
            None => (directive, "trace"),
        };
        let target = target.split('[').next().unwrap_or_default().trim();
        if target.starts_with("tungstenite") {
            return false;
        }
        if target.is_empty()
            && level
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_ok_and(|l| l == tracing_subscriber::filter::LevelFilter::TRACE)
        {
            wide_trace = true;
        }
    }
    wide_trace
}

/// Sets up logging to stderr in `format`: tracing-subscriber's plain lines, coloured only
/// when stderr is a terminal, or one JSON object per line, its fields at the top level
/// beside `timestamp`, `level`, `target` and `message` (`docs/operations.md`).
fn start_logging(format: LogFormat) {
    let (filter, bad_filter) = log_filter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour codes only for a person at a terminal, never in a file or a log collector.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    if let Some(why) = bad_filter {
        tracing::warn!("{why}; logging with the default filter, info");
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // `workers`: tokio's default (one per core) when `None`.
    let runtime = |workers: Option<usize>, blocking_threads: usize| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().max_blocking_threads(blocking_threads);
        if let Some(n) = workers {
            builder.worker_threads(n);
        }
        builder.build().context("starting the runtime")
    };
    let serve_runtime = |config: &Config| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = config.runtime_workers(cores);
        // tokio starts every worker here and panics when the system refuses a thread
        // (a pids limit, an address-space limit); unwinding then waits forever for the
        // workers already started. One line and exit status 1 instead, as for any bad
        // configuration.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let why = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("a thread could not be started");
            eprintln!(
                "rewind: starting {workers} runtime workers (worker_threads): {why}; \
                 set worker_threads lower, or raise the system's thread limits"
            );
            std::process::exit(1);
        }));
        let built = runtime(Some(workers), config.blocking_threads);
        std::panic::set_hook(previous);
        built
    };
    let default_threads = Config::default().blocking_threads;
    if !matches!(cli.command, Command::Serve(_)) {
        start_logging(LogFormat::Text);
    }
    match cli.command {
        Command::Serve(args) => {
            // Read before the runtime is built: it sizes the runtime's blocking pool, and
            // before logging starts: it says the log format.
            let config = Config::load(&args.sources())?;
            start_logging(config.log_format);
            serve_runtime(&config)?.block_on(serve(*args, config))
        }
        Command::Publish(args) => runtime(None, default_threads)?.block_on(cli::publish(args)),
        Command::Tail(args) => runtime(None, default_threads)?.block_on(cli::tail(args)),
        Command::Namespaces(args) => {
            runtime(None, default_threads)?.block_on(cli::namespaces(args))
        }
        Command::Bench(which) => {
            let results = runtime(None, default_threads)?.block_on(async {
                let interrupted = bench::interrupted();
                let run = async {
                    match &which {
                        BenchCommand::Publish(a) => bench::publish::run(a).await,
                        BenchCommand::Fanout(a) => bench::fanout::run(a).await,
                        BenchCommand::Catchup(a) => bench::fanout::catchup(a).await,
                        BenchCommand::Idle(a) => bench::fanout::idle(a).await,
                        BenchCommand::Namespaces(a) => bench::fanout::namespaces(a).await,
                        BenchCommand::Store(a) => bench::store::run(a).await,
                    }
                };
                // Interrupted, the run is dropped: the broker it started is killed and its
                // temporary data directory removed, instead of left behind.
                tokio::select! {
                    results = run => results,
                    signal = interrupted => Err(signal),
                }
            })?;
            print!("{}", bench::render(&results, which.json()));
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs, config: Config) -> anyhow::Result<()> {
    // Tokens' keys are read, and the listen address checked, before anything is opened.
    let auth = rewind_broker::auth::Auth::from_config(&config)?;
    if auth.is_none() && !config.insecure_open {
        let addrs = tokio::net::lookup_host(config.listen.as_str())
            .await
            .with_context(|| format!("resolving the listen address {}", config.listen))?;
        if let Some(open) = addrs.map(|a| a.ip()).find(|ip| !ip.is_loopback()) {
            anyhow::bail!(
                "refusing to listen on {} ({open} is not loopback) with no authentication: \
                 configure tokens (auth_secret_file or auth_public_keys, docs/security.md), \
                 or pass --insecure-open to let anyone who can reach it in",
                config.listen
            );
        }
    }
    let config = Arc::new(config);
    let open_config = Arc::clone(&config);
    let recover = args.recover;
    let log = tokio::task::spawn_blocking(move || Log::open_with(open_config, recover))
        .await
        .context("opening the store")?
        .with_context(|| match &config.redis.0 {
            Some(_) => "opening the store in Redis (--redis)".to_owned(),
            None => format!("opening the store in {}", config.data_dir.display()),
        })?;
    // A host name is resolved here; tokio binds the first of its addresses it can.
    let listener = tokio::net::TcpListener::bind(config.listen.as_str())
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Checked again on the address bound: the name is resolved once more by the bind,
    // and may have answered otherwise than the check before opening the store.
    if auth.is_none() && !config.insecure_open && !addr.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve on {addr} (not loopback) with no authentication: configure \
             tokens (auth_secret_file or auth_public_keys, docs/security.md), or pass \
             --insecure-open to let anyone who can reach it in"
        );
    }
    if let Ok(all) = tokio::net::lookup_host(config.listen.as_str()).await {
        let others: Vec<String> = all
            .filter(|a| a.ip() != addr.ip())
            .map(|a| a.ip().to_string())
            .collect();
        if !others.is_empty() {
            tracing::info!(listen = %config.listen, bound = %addr.ip(), not_bound = ?others, "the listen name has more addresses; only the first that could be bound is used");
        }
    }
    purge_freed_memory()?;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(%addr, data_dir = %config.data_dir.display(), durability = ?config.durability, workers, "rewind started");
    let shutdown = shutdown_signal()?;
    // Scripts and tests read the bound address (the port may have been 0) from this line.
    let mut out = std::io::stdout();
    writeln!(out, "rewind listening on http://{addr}")?;
    out.flush()?;
    server::run(listener, log, shutdown).await;
    Ok(())
}

/// How often [`purge_freed_memory`] runs mimalloc's due purges: its `purge_delay`, so
/// freed memory is back with the OS within about twice that.
const PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the thread that hands freed memory back to the OS while the broker is idle.
///
/// mimalloc gives the pages of freed memory back (purges them) `purge_delay` (1 s) after
/// they are freed, but only when some thread next calls into it for pages: frees a whole
/// page, takes a new one, or collects. A broker that goes quiet right after freeing much —
/// a stalled subscriber's runs, up to `fanout_memory_bytes`, when it closes — would keep
/// all of it resident until the next burst of work (`tests/tests/fanout_memory.rs` saw
/// 70 MB stay for 30 s). This thread collects once a [`PURGE_INTERVAL`]: its own heap is
/// empty, so the collect runs the purges that are due, and when none is due it reads a
/// clock and an atomic (see `docs/decisions.md`).
fn purge_freed_memory() -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("rewind-purge".into())
        .spawn(|| {
            // A thread that has not allocated has no heap yet, and a collect without one
            // returns at once, purging nothing.
            // SAFETY: neither function takes a pointer; both may be called on any thread.
            unsafe { libmimalloc_sys::mi_thread_init() };
            loop {
                std::thread::sleep(PURGE_INTERVAL);
                // SAFETY: as above.
                unsafe { libmimalloc_sys::mi_collect(false) };
            }
        })
        .context("starting the memory purge thread")?;
    Ok(())
}

/// Listens for SIGINT and SIGTERM from the moment it is called (so a signal sent as soon
/// as the listening line is out is not lost to the default action, which kills the
/// process); the future completes on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT"),
            _ = term.recv() => tracing::info!("SIGTERM"),
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => tracing::info!("Ctrl-C"),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::caps_tungstenite;

    #[test]
    fn tungstenite_is_capped_under_a_wide_trace_unless_named() {
        for filter in [
            "trace",
            "TRACE",
            "info,trace",
            "5",
            "rewind_broker=info,trace",
            "[conn]=trace",
        ] {
            assert!(caps_tungstenite(filter), "{filter}");
        }
        for filter in [
            "",
            "info",
            "debug",
            "rewind_broker=trace",
            "trace,tungstenite=trace",
            "tungstenite",
            "trace,tungstenite::protocol=trace",
            "bogus",
        ] {
            assert!(!caps_tungstenite(filter), "{filter}");
        }
    }
}
