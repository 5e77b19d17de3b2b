//! `rewind bench`: benchmarks whose numbers go into `docs/benchmarks.md`.
//!
//! - [`publish`]: durable HTTP and WebSocket publish against the raw store, in-process.
//! - [`fanout`]: WebSocket fan-out, latency, catch-up and idle connections against a
//!   broker started as a child process, so its CPU time is measured apart from the load
//!   generator's.
//! - [`store`]: what the store costs — disk per payload byte, RSS per idle namespace,
//!   acknowledgement latency at a steady rate, catch-up from beyond the page cache —
//!   against a broker child process, whatever its store.

pub mod fanout;
mod http;
pub mod publish;
pub mod store;
mod ws;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use clap::Subcommand;
use rewind_broker::StoreError;

/// The benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Durable HTTP and WebSocket publish throughput vs the raw store
    Publish(publish::PublishArgs),
    /// WebSocket fan-out: deliveries/s flooding, latency paced, broker CPU per million
    Fanout(fanout::FanoutArgs),
    /// Catch-up replay rate to one WebSocket subscriber
    Catchup(fanout::CatchupArgs),
    /// Broker RSS per idle WebSocket connection with one namespace open
    Idle(fanout::IdleArgs),
    /// The store's costs: disk ÷ payload, RSS per idle namespace, ack latency, cold catch-up
    Store(store::StoreArgs),
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket or file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The broker answered something other than 201.
    #[error("publish failed: {0}")]
    Publish(String),
}

/// Any other failure of a benchmark's connection or broker, as its message.
fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Publish(e.to_string())
}

/// Starts this executable as `rewind serve --listen 127.0.0.1:0 --data-dir DATA_DIR` with
/// `args` added (`RUST_LOG=warn`, stdout piped) and reads its `rewind listening on
/// http://ADDR` line: the broker child process of the `fanout` and `store` benchmarks.
fn spawn_serve<S: AsRef<OsStr>>(
    data_dir: &Path,
    args: impl IntoIterator<Item = S>,
) -> Result<(Child, SocketAddr), BenchError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| err("no stdout from the broker"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("rewind listening on http://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| err(format!("unexpected first line {line:?}")))?;
    Ok((child, addr))
}

/// One scenario's result.
#[derive(Debug, Clone)]
pub struct Measured {
    /// What was measured.
    pub name: String,
    /// Events stored per second.
    pub events_per_sec: f64,
    /// Median request latency in microseconds (0 where requests are not timed).
    pub p50_us: u64,
    /// 99th percentile request latency in microseconds.
    pub p99_us: u64,
    /// Slowest request, in microseconds.
    pub max_us: u64,
}

impl Measured {
    /// A throughput with no latencies.
    pub fn rate(name: impl Into<String>, events_per_sec: f64) -> Measured {
        Measured {
            name: name.into(),
            events_per_sec,
            p50_us: 0,
            p99_us: 0,
            max_us: 0,
        }
    }
}

/// The results as a Markdown table.
pub fn table(results: &[Measured]) -> String {
    let mut out = String::from(
        "| scenario | events/s | p50 | p99 | max |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for m in results {
        let lat = |us: u64| {
            if us == 0 {
                "–".to_owned()
            } else {
                format!("{:.2} ms", us as f64 / 1000.0)
            }
        };
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} |\n",
            m.name,
            m.events_per_sec,
            lat(m.p50_us),
            lat(m.p99_us),
            lat(m.max_us)
        ));
    }
    out
}
