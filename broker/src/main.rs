//! The `rewind` command.

mod cli;

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rewind_broker::bench::{self, BenchCommand};
use rewind_broker::config::{Config, ServeArgs};
use rewind_broker::log::Log;
use rewind_broker::server;

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
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the chain of causes on one line, without a backtrace.
            eprintln!("rewind: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a file or a log collector.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Publish(args) => runtime.block_on(cli::publish(args)),
        Command::Tail(args) => runtime.block_on(cli::tail(args)),
        Command::Namespaces(args) => runtime.block_on(cli::namespaces(args)),
        Command::Bench(which) => {
            let results = runtime.block_on(async {
                match &which {
                    BenchCommand::Publish(a) => bench::publish::run(a).await,
                    BenchCommand::Fanout(a) => bench::fanout::run(a).await,
                    BenchCommand::Catchup(a) => bench::fanout::catchup(a).await,
                    BenchCommand::Idle(a) => bench::fanout::idle(a).await,
                }
            })?;
            print!("{}", bench::table(&results));
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Arc::new(Config::load(&args)?);
    let open_config = Arc::clone(&config);
    let log = tokio::task::spawn_blocking(move || Log::open(open_config))
        .await
        .context("opening the store")?
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), durability = ?config.durability, "rewind started");
    // Scripts and tests read the bound address (the port may have been 0) from this line.
    let mut out = std::io::stdout();
    writeln!(out, "rewind listening on http://{addr}")?;
    out.flush()?;
    server::run(listener, log, shutdown_signal()).await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT"),
        () = term => tracing::info!("SIGTERM"),
    }
}
