//! `rewind bench publish`: measures the durable HTTP publish path against the raw store, in
//! one run on one machine, so the two numbers can be compared.
//!
//! It starts a broker as a child process (`rewind serve` on `127.0.0.1:0` with a
//! temporary data directory; `--durability`, durable by default; the default
//! configuration otherwise), so the broker's CPU is read from `/proc/<pid>` apart from the
//! load generator's, then runs each scenario for a fixed time with keep-alive HTTP/1.1
//! connections, one per publisher, or one WebSocket connection. The load generator shares
//! the machine with the broker, as a dashboard fleet's publishers would not; the numbers
//! are therefore a floor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use rewind_broker::{Config, LogStore, OpenOptions, Retention, Storage, StoreError};
use rewind_protocol::{NewEvent, Payload};

use super::http::Http;
use super::{BenchError, Measured};

/// Numbers the scenarios' namespaces.
static SCENARIO: AtomicUsize = AtomicUsize::new(0);

/// Options of `rewind bench publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Seconds each scenario runs
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Size of each event's JSON payload in bytes
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Concurrent single-event publishers, one scenario each (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub publishers: Vec<usize>,
    /// Events per batch in the batch scenario
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent publishers in the batch scenario
    #[arg(long, default_value_t = 4)]
    pub batch_publishers: usize,
    /// Run only the WebSocket scenario (and the 64-publisher HTTP one as its reference)
    #[arg(long)]
    pub ws_only: bool,
    /// Keep the log in this Redis (`redis://HOST:PORT`) instead of the embedded store,
    /// under a key prefix of this run's own; the raw-store scenarios are left out.
    #[arg(long)]
    pub redis: Option<String>,
    /// The broker's `ws_max_inflight_publishes` (the WebSocket publisher keeps this many
    /// unanswered) [default: the broker's default]
    #[arg(long)]
    pub ws_inflight: Option<usize>,
    /// The broker's durability: `durable` (answered once synced) or `relaxed`
    #[arg(long, value_enum, default_value_t = super::fanout::DurabilityArg::Durable)]
    pub durability: super::fanout::DurabilityArg,
    /// One JSON object per scenario instead of the table
    #[arg(long)]
    pub json: bool,
}

fn payload(bytes: usize) -> String {
    // A JSON string of `bytes` bytes in all, quotes included.
    format!("\"{}\"", "x".repeat(bytes.saturating_sub(2)))
}

/// Inserts single records into a bare sled tree (the storage engine alone), never
/// flushing, for `seconds`.
fn raw_sled(seconds: u64, payload_bytes: usize) -> Result<Measured, BenchError> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(Config::default().store_cache_bytes)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .map_err(StoreError::from)?;
    let tree = db.open_tree("bench").map_err(StoreError::from)?;
    // A value the size of the store's record of the event (an 8-byte timestamp, a flags
    // byte, the name's 2-byte length, the name, the data: `storage::record`), so the
    // engine alone is given what the store would give it.
    let event = bench_event(payload_bytes);
    let data_len = match &event.data {
        Payload::Json(text) => text.len(),
        Payload::Bytes(bytes) => bytes.len(),
    };
    let value = vec![b'x'; 8 + 1 + 2 + event.event.len() + data_len];
    let rate = repeat_for(seconds, |n| {
        tree.insert(n.to_be_bytes(), value.as_slice())
            .map(drop)
            .map_err(StoreError::from)
    })?;
    Ok(Measured::rate(
        "raw sled insert, no flush (the engine alone)",
        rate,
    ))
}

/// Calls `op(0)`, `op(1)`, … for `seconds`; returns the calls per second.
fn repeat_for(
    seconds: u64,
    mut op: impl FnMut(u64) -> Result<(), StoreError>,
) -> Result<f64, BenchError> {
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < until {
        for _ in 0..256 {
            op(n)?;
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn bench_event(payload_bytes: usize) -> NewEvent {
    NewEvent {
        event: "bench".into(),
        key: None,
        data: Payload::Json(payload(payload_bytes)),
    }
}

/// Appends single events through the store (write-ahead log plus segment files), never
/// syncing, for `seconds`.
fn raw_store(seconds: u64, payload_bytes: usize) -> Result<Measured, BenchError> {
    let dir = tempfile::tempdir()?;
    let defaults = Config::default();
    let opts = OpenOptions {
        cache_bytes: defaults.store_cache_bytes,
        segment_bytes: defaults.segment_bytes,
        recover: false,
        relaxed: false,
    };
    let (store, _) = LogStore::open(dir.path(), opts)?;
    store.create("bench", Retention::default())?;
    let event = [bench_event(payload_bytes)];
    let rate = repeat_for(seconds, |_| {
        store.append("bench", &event, 0, None).map(drop)
    })?;
    Ok(Measured::rate(
        "store append (write-ahead log + segment), no sync",
        rate,
    ))
}

async fn publisher(
    addr: std::net::SocketAddr,
    ns: String,
    body: Bytes,
    per_request: u64,
    until: Instant,
) -> Result<(u64, Vec<u32>), BenchError> {
    let http = Http::connect(addr).await?;
    let mut events = 0;
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let sent = Instant::now();
        http.publish(&ns, body.clone()).await?;
        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        events += per_request;
    }
    Ok((events, latencies))
}

async fn http_scenario(
    name: String,
    addr: std::net::SocketAddr,
    publishers: usize,
    body: Bytes,
    per_request: u64,
    seconds: u64,
) -> Result<Measured, BenchError> {
    // Each scenario writes its own namespace, so one does not inherit another's log.
    let ns = format!("bench.{}", SCENARIO.fetch_add(1, Ordering::Relaxed));
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..publishers)
        .map(|_| {
            tokio::spawn(publisher(
                addr,
                ns.clone(),
                body.clone(),
                per_request,
                until,
            ))
        })
        .collect();
    let mut events = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (n, l) = t.await.map_err(|e| BenchError::Publish(e.to_string()))??;
        events += n;
        latencies.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    Ok(Measured {
        name,
        events_per_sec: events as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: latencies.last().copied().unwrap_or(0) as u64,
        ..Measured::default()
    })
}

/// One WebSocket connection pipelining single-event publishes, with as many unanswered
/// as the broker allows (`ws_max_inflight_publishes`).
async fn ws_scenario(
    addr: std::net::SocketAddr,
    window: usize,
    args: &PublishArgs,
) -> Result<Measured, BenchError> {
    let ns = format!("bench.{}", SCENARIO.fetch_add(1, Ordering::Relaxed));
    let mut publisher = super::ws::WsPublisher::connect(addr, &ns, window).await?;
    let data = payload(args.payload_bytes);
    let start = Instant::now();
    publisher
        .flood_until(&data, start + Duration::from_secs(args.seconds))
        .await?;
    let mut done = publisher.finish().await?;
    let elapsed = start.elapsed().as_secs_f64();
    done.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let l = &done.latencies_us;
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    Ok(Measured {
        name: format!(
            "{} WebSocket publish, 1 connection, single-event publishes, {window} in flight",
            args.durability.as_str()
        ),
        events_per_sec: done.events as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: done.latencies_us.last().copied().unwrap_or(0) as u64,
        ..Measured::default()
    })
}

/// Fills in `m`'s broker CPU per million events and cores, and the load generator's cores,
/// from two marks of (broker CPU s, own CPU s, instant).
fn with_cpu(mut m: Measured, c0: (f64, f64, Instant), c1: (f64, f64, Instant)) -> Measured {
    let secs = (c1.2 - c0.2).as_secs_f64().max(1e-9);
    let events = (m.events_per_sec * secs).max(1.0);
    m.server_cpu_per_million = Some((c1.0 - c0.0) / events * 1e6);
    m.server_cores = Some((c1.0 - c0.0) / secs);
    let own = (c1.1 - c0.1) / secs;
    m.loadgen_cores = Some(own);
    if own >= super::loadgen::LOADGEN_BOTTLENECK_CORES {
        m.warning = Some(format!(
            "the load generator used {own:.2} cores: it may be the bottleneck"
        ));
    }
    m
}

/// Runs every scenario and returns the results in order.
pub async fn run(args: &PublishArgs) -> Result<Vec<Measured>, BenchError> {
    let mut results = Vec::new();

    let window = args
        .ws_inflight
        .unwrap_or(Config::default().ws_max_inflight_publishes);
    let window_arg = window.to_string();
    let prefix = format!("bench-{}", std::process::id());
    let mut extra = vec![
        "--durability",
        args.durability.as_str(),
        "--ws-max-inflight-publishes",
        window_arg.as_str(),
    ];
    if let Some(url) = &args.redis {
        extra.extend(["--redis", url.as_str(), "--redis-prefix", prefix.as_str()]);
    }
    let broker = super::fanout::ChildBroker::start(&extra)?;
    let addr = broker.addr;
    // Each scenario with the broker's CPU and this process's over it.
    let mark = || -> Result<(f64, f64, Instant), BenchError> {
        Ok((
            broker.cpu_secs()?,
            super::loadgen::own_cpu_secs(),
            Instant::now(),
        ))
    };
    let measured =
        |m: Measured, c0| -> Result<Measured, BenchError> { Ok(with_cpu(m, c0, mark()?)) };

    let one = format!(
        r#"{{"event":"bench","data":{}}}"#,
        payload(args.payload_bytes)
    );
    let c0 = mark()?;
    results.push(measured(ws_scenario(addr, window, args).await?, c0)?);
    let publishers = if args.ws_only {
        vec![64]
    } else {
        args.publishers.clone()
    };
    for n in publishers {
        let c0 = mark()?;
        let m = http_scenario(
            format!(
                "{} HTTP publish, {n} concurrent single-event publishers",
                args.durability.as_str()
            ),
            addr,
            n,
            Bytes::from(one.clone()),
            1,
            args.seconds,
        )
        .await?;
        results.push(measured(m, c0)?);
    }
    if args.ws_only {
        return Ok(results);
    }
    let batch = format!("[{}]", vec![one.as_str(); args.batch].join(","));
    let c0 = mark()?;
    let m = http_scenario(
        format!(
            "{} HTTP publish, batches of {}, {} concurrent publishers",
            args.durability.as_str(),
            args.batch,
            args.batch_publishers
        ),
        addr,
        args.batch_publishers,
        Bytes::from(batch),
        args.batch as u64,
        args.seconds,
    )
    .await?;
    results.push(measured(m, c0)?);
    drop(broker);
    if args.redis.is_some() {
        for m in &mut results {
            m.name = format!("[Redis] {}", m.name);
        }
        return Ok(results);
    }
    // Last, so the store's background writing does not overlap the HTTP scenarios.
    let (seconds, payload_bytes) = (args.seconds, args.payload_bytes);
    for raw in [raw_sled, raw_store] {
        results.push(
            tokio::task::spawn_blocking(move || raw(seconds, payload_bytes))
                .await
                .map_err(|e| BenchError::Publish(e.to_string()))??,
        );
    }
    Ok(results)
}
