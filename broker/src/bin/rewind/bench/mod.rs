//! `rewind bench`: benchmarks whose numbers go into `docs/benchmarks.md`.
//!
//! - [`publish`]: durable HTTP and WebSocket publish against the raw store, in-process.
//! - [`fanout`]: WebSocket fan-out (flooded and paced), many namespaces, latency,
//!   catch-up and idle connections against a broker started as a child process, so its
//!   CPU time is measured apart from the load generator's (`getrusage`), or against a
//!   bare-broadcast peer (`--target`, the protocol in `loadgen`).
//! - [`store`]: what the store costs — disk per payload byte, RSS per idle namespace,
//!   acknowledgement latency at a steady rate, catch-up from beyond the page cache —
//!   against a broker child process, whatever its store.

pub mod fanout;
mod http;
mod loadgen;
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
    /// Many namespaces with one subscriber each, paced round-robin: latency and CPU
    Namespaces(fanout::NamespacesArgs),
    /// The store's costs: disk ÷ payload, RSS per idle namespace, ack latency, cold catch-up
    Store(store::StoreArgs),
}

impl BenchCommand {
    /// Whether `--json` was given: one JSON object per scenario instead of the table.
    pub fn json(&self) -> bool {
        match self {
            BenchCommand::Publish(a) => a.json,
            BenchCommand::Fanout(a) => a.json,
            BenchCommand::Catchup(a) => a.json,
            BenchCommand::Idle(a) => a.json,
            BenchCommand::Namespaces(a) => a.json,
            BenchCommand::Store(a) => a.json,
        }
    }
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
    /// Anything else: the broker answered something other than expected, a connection
    /// failed, or the benchmark's options cannot run.
    #[error("benchmark failed: {0}")]
    Publish(String),
}

/// Installs the handlers for the signals that stop a benchmark (SIGINT, as Ctrl-C sends,
/// and SIGTERM) at once — before the run starts, so a signal during its start-up is not
/// the process's end — and returns what completes when one comes, as the error the
/// benchmark ends with. If the handlers cannot be installed, that never completes (the
/// signal then ends the process as before, leaving its temporary directory). Call it
/// inside the runtime.
pub fn interrupted() -> impl std::future::Future<Output = BenchError> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        err(format!(
            "interrupted by {name} (what it started is stopped, its temporary files removed)"
        ))
    }
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
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// What was measured.
    pub name: String,
    /// Events stored (publish) or delivered (fan-out) per second.
    pub events_per_sec: f64,
    /// Median latency in microseconds (0 where nothing is timed).
    pub p50_us: u64,
    /// 99th percentile latency in microseconds.
    pub p99_us: u64,
    /// 99.9th percentile latency in microseconds (0 where not recorded).
    pub p999_us: u64,
    /// Slowest, in microseconds.
    pub max_us: u64,
    /// Deliveries that never arrived (fan-out), when counted.
    pub lost: Option<u64>,
    /// The server's CPU seconds per million deliveries, when measured.
    pub server_cpu_per_million: Option<f64>,
    /// The server's CPU over the measured time, in cores.
    pub server_cores: Option<f64>,
    /// The load generator's own CPU (`getrusage`) over the measured time, in cores.
    pub loadgen_cores: Option<f64>,
    /// A warning about the run (the load generator near a full core, events lost).
    pub warning: Option<String>,
    /// The measuring thread's own CPU per operation, in µs, where that is the figure (the
    /// disk probe's write + `fdatasync`).
    pub cpu_us_per_op: Option<f64>,
}

impl Measured {
    /// A throughput with no latencies.
    pub fn rate(name: impl Into<String>, events_per_sec: f64) -> Measured {
        Measured {
            name: name.into(),
            events_per_sec,
            ..Measured::default()
        }
    }

    /// The result as one JSON object: the fields above, `null` where not measured.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "events_per_sec": self.events_per_sec,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "lost": self.lost,
            "server_cpu_s_per_million": self.server_cpu_per_million,
            "server_cores": self.server_cores,
            "loadgen_cores": self.loadgen_cores,
            "warning": self.warning,
            "cpu_us_per_op": self.cpu_us_per_op,
        })
    }
}

/// The results as one JSON object a line (`--json`) or as a Markdown table.
pub fn render(results: &[Measured], json: bool) -> String {
    if json {
        results.iter().map(|m| format!("{}\n", m.json())).collect()
    } else {
        table(results)
    }
}

/// The results as a Markdown table.
pub fn table(results: &[Measured]) -> String {
    let mut out = String::from(
        "| scenario | events/s | p50 | p99 | max | p99.9 | lost | server CPU-s per million | load generator cores |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let lat = |us: u64| {
        if us == 0 {
            "–".to_owned()
        } else {
            format!("{:.2} ms", us as f64 / 1000.0)
        }
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "–".to_owned());
    for m in results {
        out.push_str(&format!(
            "| {}{} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            m.name,
            m.warning
                .as_ref()
                .map_or(String::new(), |w| format!(" **WARNING: {w}**")),
            m.events_per_sec,
            lat(m.p50_us),
            lat(m.p99_us),
            lat(m.max_us),
            lat(m.p999_us),
            opt(m.lost.map(|l| l.to_string())),
            opt(m.server_cpu_per_million.map(|c| format!("{c:.3}"))),
            opt(m.loadgen_cores.map(|c| format!("{c:.2}"))),
        ));
    }
    out
}
