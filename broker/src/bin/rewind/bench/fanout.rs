//! WebSocket benchmarks against a broker started as a child process (`rewind serve` on
//! `127.0.0.1:0` with a temporary data directory, durable mode), so the broker's CPU time
//! and memory are read from `/proc/<pid>` apart from the load generator's.

use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use futures::{SinkExt, StreamExt};
use rewind_client::reqwest::Method;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::http::Http;
use super::{err, BenchError, Measured};

/// Read buffer of each load-generating WebSocket connection.
const LOAD_READ_BUFFER: usize = 4096;

/// Options of `rewind bench fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscriber counts, one pair of scenarios each (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub subscribers: Vec<usize>,
    /// Seconds each scenario measures
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Size of each event's JSON payload in bytes
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Deliveries per second in the paced (latency) scenario
    #[arg(long, default_value_t = 20_000)]
    pub paced_deliveries: u64,
    /// Flooded subscribers open with this much credit and grant a quarter of it back each
    /// time they have taken a quarter, as the Rust client does (default: unlimited credit)
    #[arg(long)]
    pub window: Option<u64>,
    /// How the publisher publishes: `ws` (one WebSocket connection, single-event
    /// publishes, `ws_max_inflight_publishes` in flight) or `http` (batches of 100 flooding, single events paced)
    #[arg(long, value_enum, default_value_t = PublisherKind::Ws)]
    pub publisher: PublisherKind,
    /// Run a cluster of two brokers sharing this Redis (`redis://HOST:PORT`) instead of one
    /// broker on the embedded store: the publisher on one node, every subscriber on the
    /// other, so each event reaches them through Redis. Broker CPU is both nodes'.
    #[arg(long)]
    pub redis: Option<String>,
}

/// The fan-out scenarios' publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublisherKind {
    /// One WebSocket connection pipelining single-event publishes.
    Ws,
    /// Keep-alive HTTP: batches of 100 flooding, single events paced.
    Http,
}

/// Unanswered publishes of the WebSocket publisher: the broker's default
/// `ws_max_inflight_publishes`.
fn ws_window() -> usize {
    rewind_broker::Config::default().ws_max_inflight_publishes
}

/// Options of `rewind bench catchup`.
#[derive(Debug, Clone, Args)]
pub struct CatchupArgs {
    /// Events in the log to replay
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Size of each event's JSON payload in bytes
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
}

/// Options of `rewind bench idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Idle WebSocket connections to open, each with one namespace open
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
}

/// The broker under test, as a child process.
struct ChildBroker {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ChildBroker {
    fn start(extra: &[&str]) -> Result<ChildBroker, BenchError> {
        let dir = tempfile::tempdir()?;
        let args = ["--ws-ping-interval-secs", "3600"].iter().chain(extra);
        let (child, addr) = super::spawn_serve(dir.path(), args)?;
        Ok(ChildBroker {
            child,
            addr,
            _dir: dir,
        })
    }

    fn proc_field(&self, file: &str) -> Result<String, BenchError> {
        Ok(std::fs::read_to_string(format!(
            "/proc/{}/{file}",
            self.child.id()
        ))?)
    }

    /// User plus system CPU seconds so far.
    fn cpu_secs(&self) -> Result<f64, BenchError> {
        let stat = self.proc_field("stat")?;
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime, in clock ticks of 1/100 s (USER_HZ on Linux).
        Ok((ticks(11) + ticks(12)) / 100.0)
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> Result<u64, BenchError> {
        Ok(self
            .proc_field("status")?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0))
    }
}

/// The brokers of one scenario: one on the embedded store, or two sharing a Redis under a
/// key prefix of the scenario's own (`--redis`). Publishers talk to the first, subscribers
/// to the last.
struct Brokers(Vec<ChildBroker>);

impl Brokers {
    fn start(args: &FanoutArgs) -> Result<Brokers, BenchError> {
        let Some(url) = &args.redis else {
            return Ok(Brokers(vec![ChildBroker::start(&[])?]));
        };
        static RUN: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "bench-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let extra = ["--redis", url.as_str(), "--redis-prefix", prefix.as_str()];
        Ok(Brokers(vec![
            ChildBroker::start(&extra)?,
            ChildBroker::start(&extra)?,
        ]))
    }

    fn publisher(&self) -> SocketAddr {
        self.0[0].addr
    }

    fn subscriber(&self) -> SocketAddr {
        self.0[self.0.len() - 1].addr
    }

    /// User plus system CPU seconds so far, of every broker.
    fn cpu_secs(&self) -> Result<f64, BenchError> {
        self.0.iter().map(ChildBroker::cpu_secs).sum()
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Connects and opens `ns` from `from` with (practically) unlimited credit; returns once
/// `opened` has arrived.
pub(super) async fn subscribe(addr: SocketAddr, ns: &str, from: &str) -> Result<Ws, BenchError> {
    subscribe_with_credit(addr, ns, from, u64::from(u32::MAX)).await
}

/// Connects and opens `ns` from `from` with `credit`; returns once `opened` has arrived.
async fn subscribe_with_credit(
    addr: SocketAddr,
    ns: &str,
    from: &str,
    credit: u64,
) -> Result<Ws, BenchError> {
    // tungstenite zero-fills its whole read buffer on every read (tungstenite-rs#547): the
    // default 128 KiB would make the load generator, which shares the cores with the
    // broker, spend more per message than the broker does.
    let config = WebSocketConfig::default().read_buffer_size(LOAD_READ_BUFFER);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/v1/ws"),
        Some(config),
        false,
    )
    .await
    .map_err(err)?;
    let open = format!(r#"{{"t":"open","ns":"{ns}","from":{from},"credit":{credit}}}"#);
    ws.send(Message::Text(open.into())).await.map_err(err)?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with(r#"{"t":"opened""#) => return Ok(ws),
            Some(Ok(_)) => {}
            other => return Err(err(format!("no opened: {other:?}"))),
        }
    }
}

/// Reads `n` events from a subscription, whatever else comes between them.
pub(super) async fn replay_events(ws: &mut Ws, n: u64) -> Result<(), BenchError> {
    let mut got = 0u64;
    while got < n {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if is_event(&t) => got += 1,
            Some(Ok(_)) => {}
            other => return Err(err(format!("replay ended early: {other:?}"))),
        }
    }
    Ok(())
}

pub(super) fn is_event(t: &str) -> bool {
    t.starts_with(r#"{"t":"event""#)
}

/// A keep-alive HTTP/1.1 publisher.
pub(super) struct Publisher {
    http: Http,
}

impl Publisher {
    pub(super) async fn connect(addr: SocketAddr) -> Result<Publisher, BenchError> {
        Ok(Publisher {
            http: Http::connect(addr).await?,
        })
    }

    /// Creates `ns` with `PUT` (subscribing does not create a namespace).
    pub(super) async fn create(&mut self, ns: &str) -> Result<(), BenchError> {
        let path = format!("/v1/namespaces/{ns}");
        self.http
            .send(Method::PUT, &path, None, Bytes::new(), |s| s.is_success())
            .await
            .map(drop)
    }

    pub(super) async fn post(&mut self, ns: &str, body: String) -> Result<(), BenchError> {
        self.http.publish(ns, Bytes::from(body)).await
    }
}

pub(super) fn batch(payload_bytes: usize, n: usize) -> String {
    let one = format!(
        r#"{{"event":"bench","data":"{}"}}"#,
        "x".repeat(payload_bytes.saturating_sub(2))
    );
    format!("[{}]", vec![one.as_str(); n].join(","))
}

/// The number after `"data":` in an event frame.
fn sent_time(frame: &str) -> Option<u64> {
    let at = frame.rfind("\"data\":")? + 7;
    frame[at..].trim_end_matches('}').parse().ok()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The flooding publisher, with what it publishes.
enum Flooder {
    Http(Publisher, String),
    Ws(super::ws::WsPublisher, String),
}

impl Flooder {
    /// Publishes as fast as the broker takes it until `until`.
    async fn until(&mut self, until: Instant) -> Result<(), BenchError> {
        match self {
            Flooder::Ws(p, data) => p.flood_until(data, until).await,
            Flooder::Http(p, body) => {
                while Instant::now() < until {
                    p.post("fan", body.clone()).await?;
                }
                Ok(())
            }
        }
    }
}

/// Flooding: one publisher sends batches as fast as the broker takes them; every
/// subscriber counts the events it gets.
async fn flood(args: &FanoutArgs, subscribers: usize) -> Result<Measured, BenchError> {
    let broker = Brokers::start(args)?;
    Publisher::connect(broker.publisher())
        .await?
        .create("fan")
        .await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // With a window, credit comes back a quarter at a time, as the Rust client grants it.
    let (credit, grant) = match args.window {
        Some(w) => (w.max(4), (w / 4).max(1)),
        None => (u64::from(u32::MAX), 0),
    };
    let grant_frame = format!(r#"{{"t":"credit","ns":"fan","n":{grant}}}"#);
    for _ in 0..subscribers {
        let mut ws =
            subscribe_with_credit(broker.subscriber(), "fan", "\"latest\"", credit).await?;
        let delivered = Arc::clone(&delivered);
        let mut stop = stop_rx.clone();
        let grant_frame = grant_frame.clone();
        tasks.push(tokio::spawn(async move {
            let mut taken = 0u64;
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) if is_event(&t) => {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            taken += 1;
                            if grant > 0
                                && taken.is_multiple_of(grant)
                                && ws.send(Message::Text(grant_frame.clone().into())).await.is_err()
                            {
                                break;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    let mut publisher = match args.publisher {
        PublisherKind::Http => Flooder::Http(
            Publisher::connect(broker.publisher()).await?,
            batch(args.payload_bytes, 100),
        ),
        PublisherKind::Ws => Flooder::Ws(
            super::ws::WsPublisher::connect(broker.publisher(), "fan", ws_window()).await?,
            format!("\"{}\"", "x".repeat(args.payload_bytes.saturating_sub(2))),
        ),
    };
    // Warm up for a second, then measure.
    publisher
        .until(Instant::now() + Duration::from_secs(1))
        .await?;
    let (d0, c0, t0) = (
        delivered.load(Ordering::Relaxed),
        broker.cpu_secs()?,
        Instant::now(),
    );
    publisher
        .until(t0 + Duration::from_secs(args.seconds))
        .await?;
    let (d1, c1, elapsed) = (
        delivered.load(Ordering::Relaxed),
        broker.cpu_secs()?,
        t0.elapsed(),
    );
    if let Flooder::Ws(p, _) = publisher {
        p.finish().await?;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let deliveries = (d1 - d0) as f64;
    Ok(Measured::rate(
        format!(
            "fan-out flood, 1 publisher ({}) → {subscribers} subscribers{}; broker CPU {:.3} s per million deliveries",
            match args.publisher {
                PublisherKind::Ws => format!("WebSocket, single events, {} in flight", ws_window()),
                PublisherKind::Http => "HTTP batches of 100".to_owned(),
            },
            args.window.map_or(String::new(), |w| format!(" (credit window {w})")),
            (c1 - c0) / deliveries * 1e6
        ),
        deliveries / elapsed.as_secs_f64(),
    ))
}

/// Paced: single-event publishes at `paced_deliveries / subscribers` per second; every
/// subscriber measures publish-to-receive latency from the send time in the payload.
async fn paced(args: &FanoutArgs, subscribers: usize) -> Result<Measured, BenchError> {
    let broker = Brokers::start(args)?;
    Publisher::connect(broker.publisher())
        .await?
        .create("paced")
        .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut ws = subscribe(broker.subscriber(), "paced", "\"latest\"").await?;
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) if is_event(&t) => {
                            // The send time is the payload, last in the frame: read just
                            // that, so the load generator takes as little CPU as it can
                            // from the broker it measures.
                            if let Some(sent) = sent_time(&t) {
                                lat.push(now_us().saturating_sub(sent));
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            lat
        }));
    }
    let rate = (args.paced_deliveries as f64 / subscribers as f64).max(1.0);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut http = None;
    let mut ws = None;
    match args.publisher {
        PublisherKind::Http => http = Some(Publisher::connect(broker.publisher()).await?),
        PublisherKind::Ws => {
            ws = Some(
                super::ws::WsPublisher::connect(broker.publisher(), "paced", ws_window()).await?,
            )
        }
    }
    let (c0, t0) = (broker.cpu_secs()?, Instant::now());
    let until = t0 + Duration::from_secs(args.seconds);
    let mut publishes = Vec::new();
    while Instant::now() < until {
        ticks.tick().await;
        let sent = now_us();
        if let Some(p) = ws.as_mut() {
            p.publish(&sent.to_string()).await?;
            p.flush().await?;
        } else if let Some(p) = http.as_mut() {
            p.post("paced", format!(r#"{{"event":"t","data":{sent}}}"#))
                .await?;
            publishes.push(now_us().saturating_sub(sent));
        }
    }
    if let Some(p) = ws {
        publishes = p
            .finish()
            .await?
            .latencies_us
            .into_iter()
            .map(u64::from)
            .collect();
    }
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c1 = broker.cpu_secs()?;
    let _ = stop_tx.send(true);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.map_err(err)?);
    }
    lat.sort_unstable();
    publishes.sort_unstable();
    let deliveries = lat.len() as f64;
    Ok(Measured {
        name: format!(
            "fan-out paced, {} single-event publishes (answered in p50 {:.2} / p99 {:.2} ms) → {subscribers} subscribers ({} deliveries); broker CPU {:.3} s per million deliveries",
            publishes.len(),
            percentile(&publishes, 0.50) as f64 / 1000.0,
            percentile(&publishes, 0.99) as f64 / 1000.0,
            lat.len(),
            (c1 - c0) / deliveries.max(1.0) * 1e6
        ),
        events_per_sec: deliveries / args.seconds as f64,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        max_us: lat.last().copied().unwrap_or(0),
    })
}

/// The `p` quantile of sorted values (0 when there are none).
fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// Runs the flood and paced scenarios for each subscriber count.
pub async fn run(args: &FanoutArgs) -> Result<Vec<Measured>, BenchError> {
    let mut out = Vec::new();
    for &n in &args.subscribers {
        out.push(flood(args, n).await?);
        out.push(paced(args, n).await?);
    }
    if args.redis.is_some() {
        for m in &mut out {
            m.name = format!("[Redis, 2 nodes] {}", m.name);
        }
    }
    Ok(out)
}

/// Fills a log, then measures how fast one subscriber replays it from the start.
pub async fn catchup(args: &CatchupArgs) -> Result<Vec<Measured>, BenchError> {
    let broker = ChildBroker::start(&[])?;
    let mut publisher = Publisher::connect(broker.addr).await?;
    let body = batch(args.payload_bytes, 1000);
    let mut n = 0;
    while n < args.events {
        publisher.post("replay", body.clone()).await?;
        n += 1000;
    }
    let (c0, t0) = (broker.cpu_secs()?, Instant::now());
    let mut ws = subscribe(broker.addr, "replay", "\"earliest\"").await?;
    replay_events(&mut ws, n).await?;
    let (elapsed, c1) = (t0.elapsed(), broker.cpu_secs()?);
    Ok(vec![Measured::rate(
        format!(
            "catch-up replay of {n} events to one subscriber; broker CPU {:.3} s per million",
            (c1 - c0) / n as f64 * 1e6
        ),
        n as f64 / elapsed.as_secs_f64(),
    )])
}

/// Opens idle connections, each with one namespace, and reports the broker's RSS growth.
pub async fn idle(args: &IdleArgs) -> Result<Vec<Measured>, BenchError> {
    let broker = ChildBroker::start(&["--max-connections", &(args.connections + 100).to_string()])?;
    // One connection first, so the runtime and the namespace exist before the baseline.
    Publisher::connect(broker.addr)
        .await?
        .create("idle")
        .await?;
    let first = subscribe(broker.addr, "idle", "\"latest\"").await?;
    let before = broker.rss_kib()?;
    let mut open = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        open.push(subscribe(broker.addr, "idle", "\"latest\"").await?);
    }
    let after = broker.rss_kib()?;
    let per = (after.saturating_sub(before)) as f64 / args.connections as f64;
    drop(open);
    drop(first);
    Ok(vec![Measured::rate(
        format!(
            "idle WebSocket connections with one namespace open: {} connections, broker RSS {before} → {after} KiB, {per:.2} KiB each",
            args.connections
        ),
        0.0,
    )])
}
