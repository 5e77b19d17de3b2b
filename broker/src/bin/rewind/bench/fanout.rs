//! WebSocket benchmarks against a broker started as a child process (`rewind serve` on
//! `127.0.0.1:0` with a temporary data directory, durable mode), so the broker's CPU time
//! and memory are read from `/proc/<pid>` apart from the load generator's.

use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

use super::loadgen::LOAD_READ_BUFFER;

/// Options of `rewind bench fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscriber counts, one pair of scenarios each (comma-separated; e.g. 10,100,1000,10000)
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
    /// Which scenarios to run for each subscriber count (comma-separated)
    #[arg(
        long = "case",
        value_enum,
        value_delimiter = ',',
        default_value = "flood,paced"
    )]
    pub cases: Vec<FanoutCase>,
    /// Paced: events per second from the publisher (default: paced-deliveries ÷ subscribers)
    #[arg(long)]
    pub rate: Option<u64>,
    /// The rewind broker's durability (the child process's `--durability`)
    #[arg(long, value_enum, default_value_t = DurabilityArg::Durable)]
    pub durability: DurabilityArg,
    /// Measure a bare-broadcast peer already listening at this `ws://HOST:PORT` instead of
    /// starting rewind (the peer protocol is in docs/benchmarks.md)
    #[arg(long)]
    pub target: Option<String>,
    /// The `--target` peer's process id, so its CPU is read from /proc
    #[arg(long, requires = "target")]
    pub target_pid: Option<u32>,
    /// One JSON object per scenario instead of the table
    #[arg(long)]
    pub json: bool,
    /// Run a cluster of two brokers sharing this Redis (`redis://HOST:PORT`) instead of one
    /// broker on the embedded store: the publisher on one node, every subscriber on the
    /// other, so each event reaches them through Redis. Broker CPU is both nodes'.
    #[arg(long, conflicts_with = "target")]
    pub redis: Option<String>,
}

/// The fan-out scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FanoutCase {
    /// As fast as the server takes it: deliveries/s and CPU per million.
    Flood,
    /// Single events at a steady rate: publish-to-receive latency and CPU per million.
    Paced,
}

/// The durability of the rewind broker under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Publishes acknowledged once synced to disk.
    Durable,
    /// Publishes acknowledged once written; synced every `relaxed_flush_ms`.
    Relaxed,
}

impl DurabilityArg {
    /// The `--durability` value of `rewind serve`.
    pub fn as_str(self) -> &'static str {
        match self {
            DurabilityArg::Durable => "durable",
            DurabilityArg::Relaxed => "relaxed",
        }
    }
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
    /// One JSON object per scenario instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Options of `rewind bench namespaces`.
#[derive(Debug, Clone, Args)]
pub struct NamespacesArgs {
    /// Namespaces, each with one WebSocket subscriber of its own
    #[arg(long, default_value_t = 10_000)]
    pub namespaces: usize,
    /// Events per second in all, published round-robin over the namespaces by one
    /// WebSocket publisher
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds the paced publishing lasts
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Size of each event's JSON payload in bytes
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// The rewind broker's durability (the child process's `--durability`)
    #[arg(long, value_enum, default_value_t = DurabilityArg::Durable)]
    pub durability: DurabilityArg,
    /// One JSON object per scenario instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Options of `rewind bench idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Idle WebSocket connections to open, each with one namespace open
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Measure a bare-broadcast peer already listening at this `ws://HOST:PORT` (its
    /// `/sub` connections) instead of starting rewind; needs `--target-pid`
    #[arg(long, requires = "target_pid")]
    pub target: Option<String>,
    /// The `--target` peer's process id, so its RSS is read from /proc
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// One JSON object per scenario instead of the table
    #[arg(long)]
    pub json: bool,
}

/// The broker under test, as a child process.
pub(super) struct ChildBroker {
    child: Child,
    pub(super) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ChildBroker {
    pub(super) fn start(extra: &[&str]) -> Result<ChildBroker, BenchError> {
        let dir = tempfile::tempdir()?;
        let args = ["--ws-ping-interval-secs", "3600"].iter().chain(extra);
        let (child, addr) = super::spawn_serve(dir.path(), args)?;
        Ok(ChildBroker {
            child,
            addr,
            _dir: dir,
        })
    }

    /// User plus system CPU seconds so far.
    pub(super) fn cpu_secs(&self) -> Result<f64, BenchError> {
        super::loadgen::proc_cpu_secs(self.child.id())
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
        // TCP_NODELAY, as a latency-minded client sets it: with Nagle's algorithm a
        // connection that only sends (a peer's publisher gets nothing back) holds each
        // small frame until the previous one is acknowledged, which a delayed ACK defers.
        true,
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

/// The server a fan-out scenario measures: a rewind child process, or a bare-broadcast
/// peer already running at `--target`.
enum Server {
    Rewind(ChildBroker),
    /// Two rewind nodes sharing a Redis (`--redis`) under a key prefix of the scenario's
    /// own: the publisher talks to the first, subscribers to the second.
    Cluster(Box<[ChildBroker; 2]>),
    Peer {
        url: String,
        pid: Option<u32>,
    },
}

impl Server {
    fn start(args: &FanoutArgs) -> Result<Server, BenchError> {
        Ok(match &args.target {
            Some(url) => Server::Peer {
                url: url.clone(),
                pid: args.target_pid,
            },
            None => {
                // Room for the largest subscriber count, the publisher and the creator.
                let most = (args.subscribers.iter().max().copied().unwrap_or(0) + 100).to_string();
                let mut extra = vec![
                    "--durability",
                    args.durability.as_str(),
                    "--max-connections",
                    most.as_str(),
                ];
                match &args.redis {
                    None => Server::Rewind(ChildBroker::start(&extra)?),
                    Some(url) => {
                        static RUN: AtomicU64 = AtomicU64::new(0);
                        let prefix = format!(
                            "bench-{}-{}",
                            std::process::id(),
                            RUN.fetch_add(1, Ordering::Relaxed)
                        );
                        extra.extend(["--redis", url.as_str(), "--redis-prefix", prefix.as_str()]);
                        Server::Cluster(Box::new([
                            ChildBroker::start(&extra)?,
                            ChildBroker::start(&extra)?,
                        ]))
                    }
                }
            }
        })
    }

    /// What the scenario's name calls the server.
    fn label(&self, args: &FanoutArgs) -> String {
        match self {
            Server::Rewind(_) => format!("rewind ({})", args.durability.as_str()),
            Server::Cluster(_) => "rewind [Redis, 2 nodes]".to_owned(),
            Server::Peer { url, .. } => format!("peer at {url}"),
        }
    }

    /// The server's CPU seconds so far, when it can be read.
    fn cpu_secs(&self) -> Result<Option<f64>, BenchError> {
        match self {
            Server::Rewind(b) => b.cpu_secs().map(Some),
            Server::Cluster(nodes) => Ok(Some(nodes[0].cpu_secs()? + nodes[1].cpu_secs()?)),
            Server::Peer { pid: Some(pid), .. } => super::loadgen::proc_cpu_secs(*pid).map(Some),
            Server::Peer { pid: None, .. } => Ok(None),
        }
    }

    /// Creates the namespace (rewind) and subscribes with `credit`.
    async fn subscribe(&self, ns: &str, credit: u64) -> Result<Ws, BenchError> {
        match self {
            Server::Rewind(b) => subscribe_with_credit(b.addr, ns, "\"latest\"", credit).await,
            Server::Cluster(nodes) => {
                subscribe_with_credit(nodes[1].addr, ns, "\"latest\"", credit).await
            }
            Server::Peer { url, .. } => super::loadgen::peer_subscribe(url).await,
        }
    }

    fn is_event(&self) -> fn(&str) -> bool {
        match self {
            Server::Rewind(_) | Server::Cluster(_) => is_event,
            Server::Peer { .. } => |_| true,
        }
    }

    async fn create(&self, ns: &str) -> Result<(), BenchError> {
        match self {
            Server::Rewind(b) => Publisher::connect(b.addr).await?.create(ns).await,
            Server::Cluster(nodes) => Publisher::connect(nodes[0].addr).await?.create(ns).await,
            Server::Peer { .. } => Ok(()),
        }
    }

    async fn publisher(&self, args: &FanoutArgs, ns: &str) -> Result<Pub, BenchError> {
        Ok(match (self, args.publisher) {
            (Server::Peer { url, .. }, _) => {
                Pub::Peer(Box::new(super::loadgen::peer_connect(url, "pub").await?))
            }
            (Server::Rewind(b), kind) => Pub::rewind(b.addr, kind, ns).await?,
            (Server::Cluster(nodes), kind) => Pub::rewind(nodes[0].addr, kind, ns).await?,
        })
    }
}

/// A fan-out scenario's publisher. Every event's payload is
/// [`payload`](super::loadgen::payload)`(seq, sent_us, payload_bytes)`.
enum Pub {
    /// rewind: one WebSocket connection pipelining single-event publishes.
    Ws(super::ws::WsPublisher),
    /// rewind: keep-alive HTTP, batches of 100 flooding, single events paced.
    Http(Publisher),
    /// A bare-broadcast peer: one text frame per event on its `/pub` connection.
    Peer(Box<Ws>),
}

impl Pub {
    /// A publisher to the rewind broker at `addr`.
    async fn rewind(addr: SocketAddr, kind: PublisherKind, ns: &str) -> Result<Pub, BenchError> {
        Ok(match kind {
            PublisherKind::Ws => {
                Pub::Ws(super::ws::WsPublisher::connect(addr, ns, ws_window()).await?)
            }
            PublisherKind::Http => Pub::Http(Publisher::connect(addr).await?),
        })
    }

    /// Sends `events` (batched as one request over HTTP, pipelined otherwise) and flushes.
    async fn send(&mut self, ns: &str, events: &[String]) -> Result<(), BenchError> {
        match self {
            Pub::Ws(p) => {
                for e in events {
                    p.publish(e).await?;
                }
                p.flush().await
            }
            Pub::Http(p) if events.len() == 1 => {
                p.post(ns, format!(r#"{{"event":"bench","data":{}}}"#, events[0]))
                    .await
            }
            Pub::Http(p) => {
                let all: Vec<String> = events
                    .iter()
                    .map(|e| format!(r#"{{"event":"bench","data":{e}}}"#))
                    .collect();
                p.post(ns, format!("[{}]", all.join(","))).await
            }
            Pub::Peer(ws) => {
                for e in events {
                    ws.feed(Message::Text(e.clone().into()))
                        .await
                        .map_err(err)?;
                }
                ws.flush().await.map_err(err)
            }
        }
    }

    /// Waits for rewind's answers to every WebSocket publish (their latencies, µs) and closes.
    async fn finish(self) -> Result<Vec<u32>, BenchError> {
        match self {
            Pub::Ws(p) => Ok(p.finish().await?.latencies_us),
            Pub::Http(_) => Ok(Vec::new()),
            Pub::Peer(mut ws) => {
                let _ = Ws::close(&mut ws, None).await;
                Ok(Vec::new())
            }
        }
    }
}

/// How long a scenario waits, after the last publish, for deliveries that have stopped
/// coming before it counts the rest as lost.
const SETTLE: Duration = Duration::from_secs(3);

/// Subscribers of one scenario, counting deliveries.
struct Subscribers {
    delivered: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<super::loadgen::Seen>>,
}

impl Subscribers {
    /// Subscribes `n` connections to `ns` (each registered before this returns).
    async fn open(
        server: &Server,
        ns: &str,
        n: usize,
        window: Option<u64>,
    ) -> Result<Subscribers, BenchError> {
        let names = vec![ns.to_owned(); n];
        Subscribers::open_each(server, &names, window).await
    }

    /// Subscribes one connection to each of `names` (each registered before this returns).
    async fn open_each(
        server: &Server,
        names: &[String],
        window: Option<u64>,
    ) -> Result<Subscribers, BenchError> {
        let n = names.len();
        let delivered = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = watch::channel(false);
        // With a window, credit comes back a quarter at a time, as the Rust client grants it.
        let (credit, grant) = match window {
            Some(w) => (w.max(4), (w / 4).max(1)),
            None => (u64::from(u32::MAX), 0),
        };
        let mut progress = super::loadgen::Progress::new("subscribing");
        let mut tasks = Vec::with_capacity(n);
        for (i, ns) in names.iter().enumerate() {
            let grant_frame = format!(r#"{{"t":"credit","ns":"{ns}","n":{grant}}}"#);
            let ws = server.subscribe(ns, credit).await?;
            tasks.push(tokio::spawn(super::loadgen::subscriber(
                ws,
                server.is_event(),
                Arc::clone(&delivered),
                stop_rx.clone(),
                grant,
                grant_frame,
            )));
            progress.show(i as u64 + 1, n as u64);
        }
        Ok(Subscribers {
            delivered,
            stop,
            tasks,
        })
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Waits for `expected` deliveries (or [`SETTLE`] without one), stops every
    /// subscriber, and returns the merged latency histogram and the deliveries lost.
    async fn close(self, expected: u64) -> Result<(hdrhistogram::Histogram<u64>, u64), BenchError> {
        super::loadgen::settle(&self.delivered, expected, SETTLE).await;
        let _ = self.stop.send(true);
        let mut hist = super::loadgen::histogram();
        let mut got = 0;
        for t in self.tasks {
            let seen = t.await.map_err(err)?;
            got += seen.events;
            hist.add(&seen.latency).map_err(err)?;
        }
        Ok((hist, expected.saturating_sub(got)))
    }
}

/// CPU of the server and of this process at one instant.
struct CpuMark {
    server: Option<f64>,
    own: f64,
    at: Instant,
}

impl CpuMark {
    fn now(server: &Server) -> Result<CpuMark, BenchError> {
        Ok(CpuMark {
            server: server.cpu_secs()?,
            own: super::loadgen::own_cpu_secs(),
            at: Instant::now(),
        })
    }

    /// Fills in `m`'s CPU figures from `self` to `end` for `deliveries`, and its warnings.
    fn fill(&self, end: &CpuMark, deliveries: u64, m: &mut Measured) {
        let secs = (end.at - self.at).as_secs_f64().max(1e-9);
        if let (Some(a), Some(b)) = (self.server, end.server) {
            m.server_cpu_per_million = Some((b - a) / (deliveries.max(1) as f64) * 1e6);
            m.server_cores = Some((b - a) / secs);
        }
        let own = (end.own - self.own) / secs;
        m.loadgen_cores = Some(own);
        let mut warnings = Vec::new();
        if own >= super::loadgen::LOADGEN_BOTTLENECK_CORES {
            warnings.push(format!(
                "the load generator used {own:.2} cores: it may be the bottleneck"
            ));
        }
        if let Some(lost) = m.lost.filter(|&l| l > 0) {
            warnings.push(format!("{lost} deliveries lost"));
        }
        if !warnings.is_empty() {
            m.warning = Some(warnings.join("; "));
        }
    }
}

/// Flooding: one publisher sends as fast as the server takes it (rewind: as its answers
/// allow; HTTP: batches of 100; a peer: as TCP takes it); every subscriber counts the
/// events it gets. Deliveries/s and CPU are measured over `seconds` after 1 s of warm-up;
/// then the publisher stops and every event sent must arrive at every subscriber.
async fn flood(args: &FanoutArgs, subscribers: usize) -> Result<Measured, BenchError> {
    let server = Server::start(args)?;
    server.create("fan").await?;
    let subs = Subscribers::open(&server, "fan", subscribers, args.window).await?;
    let mut publisher = server.publisher(args, "fan").await?;
    let per_send = if matches!(publisher, Pub::Http(_)) {
        100
    } else {
        64
    };
    let mut seq = 0u64;
    let warm_up = Instant::now() + Duration::from_secs(1);
    flood_until(
        &mut publisher,
        &mut seq,
        per_send,
        args.payload_bytes,
        warm_up,
    )
    .await?;
    let (d0, m0) = (subs.delivered(), CpuMark::now(&server)?);
    let until = m0.at + Duration::from_secs(args.seconds);
    flood_until(
        &mut publisher,
        &mut seq,
        per_send,
        args.payload_bytes,
        until,
    )
    .await?;
    let sent = seq;
    let (d1, m1) = (subs.delivered(), CpuMark::now(&server)?);
    publisher.finish().await?;
    let (hist, lost) = subs.close(sent * subscribers as u64).await?;
    let mut m = Measured {
        name: format!(
            "fan-out flood, {}, 1 publisher ({}) → {subscribers} subscribers{}",
            server.label(args),
            publisher_label(args, &server),
            args.window
                .map_or(String::new(), |w| format!(" (credit window {w})")),
        ),
        events_per_sec: (d1 - d0) as f64 / (m1.at - m0.at).as_secs_f64(),
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        lost: Some(lost),
        ..Measured::default()
    };
    m0.fill(&m1, d1 - d0, &mut m);
    Ok(m)
}

/// Publishes `per_send` events at a time, numbered from `seq`, until `until`.
async fn flood_until(
    publisher: &mut Pub,
    seq: &mut u64,
    per_send: usize,
    payload_bytes: usize,
    until: Instant,
) -> Result<(), BenchError> {
    let mut events = Vec::with_capacity(per_send);
    while Instant::now() < until {
        events.clear();
        let sent = super::loadgen::now_us();
        for _ in 0..per_send {
            events.push(super::loadgen::payload(*seq, sent, payload_bytes));
            *seq += 1;
        }
        publisher.send("fan", &events).await?;
    }
    Ok(())
}

fn publisher_label(args: &FanoutArgs, server: &Server) -> String {
    match (server, args.publisher) {
        (Server::Peer { .. }, _) => "one text frame per event".to_owned(),
        (_, PublisherKind::Ws) => format!("WebSocket, single events, {} in flight", ws_window()),
        (_, PublisherKind::Http) => "HTTP batches of 100 flooding, single events paced".to_owned(),
    }
}

/// Paced: single-event publishes at `--rate` per second (or `paced_deliveries /
/// subscribers`); every subscriber records publish-to-receive latency from the send time
/// in the payload, into one HdrHistogram.
async fn paced(args: &FanoutArgs, subscribers: usize) -> Result<Measured, BenchError> {
    let server = Server::start(args)?;
    server.create("paced").await?;
    let subs = Subscribers::open(&server, "paced", subscribers, None).await?;
    let rate = args
        .rate
        .map_or(args.paced_deliveries as f64 / subscribers as f64, |r| {
            r as f64
        })
        .max(1.0);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publisher = server.publisher(args, "paced").await?;
    let m0 = CpuMark::now(&server)?;
    let until = m0.at + Duration::from_secs(args.seconds);
    let mut seq = 0u64;
    let mut event = [String::new()];
    while Instant::now() < until {
        ticks.tick().await;
        event[0] = super::loadgen::payload(seq, super::loadgen::now_us(), args.payload_bytes);
        seq += 1;
        publisher.send("paced", &event).await?;
    }
    let mut answers = publisher.finish().await?;
    let (hist, lost) = subs.close(seq * subscribers as u64).await?;
    let m1 = CpuMark::now(&server)?;
    answers.sort_unstable();
    let answered = |p: f64| {
        answers
            .get(((answers.len() as f64 * p) as usize).min(answers.len().saturating_sub(1)))
            .map_or(0.0, |&us| f64::from(us) / 1000.0)
    };
    let delivered = hist.len();
    let mut m = Measured {
        name: format!(
            "fan-out paced, {}, {seq} single-event publishes at {rate:.0}/s ({}{}) → {subscribers} subscribers",
            server.label(args),
            publisher_label(args, &server),
            if answers.is_empty() {
                String::new()
            } else {
                format!(", answered in p50 {:.2} / p99 {:.2} ms", answered(0.50), answered(0.99))
            },
        ),
        events_per_sec: delivered as f64 / args.seconds as f64,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        lost: Some(lost),
        ..Measured::default()
    };
    m0.fill(&m1, delivered, &mut m);
    Ok(m)
}

/// Runs the chosen scenarios (`--case`) for each subscriber count.
pub async fn run(args: &FanoutArgs) -> Result<Vec<Measured>, BenchError> {
    let mut out = Vec::new();
    for &n in &args.subscribers {
        if args.cases.contains(&FanoutCase::Flood) {
            out.push(flood(args, n).await?);
        }
        if args.cases.contains(&FanoutCase::Paced) {
            out.push(paced(args, n).await?);
        }
    }
    Ok(out)
}

/// Many namespaces, one subscriber each: `namespaces` namespaces created with `PUT`, one
/// WebSocket subscriber on each, and one WebSocket publisher publishing single events
/// round-robin over them at `rate` per second; publish-to-receive latency, broker CPU per
/// million deliveries, deliveries lost.
pub async fn namespaces(args: &NamespacesArgs) -> Result<Vec<Measured>, BenchError> {
    let broker = ChildBroker::start(&[
        "--durability",
        args.durability.as_str(),
        "--max-connections",
        &(args.namespaces + 100).to_string(),
    ])?;
    let addr = broker.addr;
    let server = Server::Rewind(broker);
    let names: Vec<String> = (0..args.namespaces.max(1))
        .map(|i| format!("many.{i}"))
        .collect();
    let mut creator = Publisher::connect(addr).await?;
    let mut progress = super::loadgen::Progress::new("creating namespaces");
    for (i, ns) in names.iter().enumerate() {
        creator.create(ns).await?;
        progress.show(i as u64 + 1, names.len() as u64);
    }
    let subs = Subscribers::open_each(&server, &names, None).await?;
    let mut publisher = super::ws::WsPublisher::connect(addr, &names[0], ws_window()).await?;
    let rate = args.rate.max(1) as f64;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let m0 = CpuMark::now(&server)?;
    let until = m0.at + Duration::from_secs(args.seconds);
    let mut seq = 0u64;
    while Instant::now() < until {
        ticks.tick().await;
        let data = super::loadgen::payload(seq, super::loadgen::now_us(), args.payload_bytes);
        publisher
            .publish_to(&names[seq as usize % names.len()], &data)
            .await?;
        publisher.flush().await?;
        seq += 1;
    }
    publisher.finish().await?;
    let (hist, lost) = subs.close(seq).await?;
    let m1 = CpuMark::now(&server)?;
    let delivered = hist.len();
    let mut m = Measured {
        name: format!(
            "{} namespaces, one subscriber each, rewind ({}): {seq} single-event publishes at {rate:.0}/s round-robin (WebSocket, {} in flight)",
            names.len(),
            args.durability.as_str(),
            ws_window()
        ),
        events_per_sec: delivered as f64 / args.seconds.max(1) as f64,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        lost: Some(lost),
        ..Measured::default()
    };
    m0.fill(&m1, delivered, &mut m);
    Ok(vec![m])
}

/// Fills a log, then measures how fast one subscriber replays it from the start.
pub async fn catchup(args: &CatchupArgs) -> Result<Vec<Measured>, BenchError> {
    let broker = ChildBroker::start(&[])?;
    let mut publisher = Publisher::connect(broker.addr).await?;
    let body = batch(args.payload_bytes, 1000);
    let mut n = 0;
    let mut progress = super::loadgen::Progress::new("filling the log");
    while n < args.events {
        publisher.post("replay", body.clone()).await?;
        n += 1000;
        progress.show(n, args.events);
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

/// Opens idle connections, each with one namespace open (rewind) or registered as a
/// subscriber (a `--target` peer), and reports the server's RSS growth per connection.
pub async fn idle(args: &IdleArgs) -> Result<Vec<Measured>, BenchError> {
    let mut broker = None;
    let (pid, label) = match (&args.target, args.target_pid) {
        (Some(url), Some(pid)) => (pid, format!("peer at {url}")),
        _ => {
            let b =
                ChildBroker::start(&["--max-connections", &(args.connections + 100).to_string()])?;
            Publisher::connect(b.addr).await?.create("idle").await?;
            let pid = b.child.id();
            broker = Some(b);
            (pid, "rewind".to_owned())
        }
    };
    let addr = broker.as_ref().map(|b| b.addr);
    let connect = || async {
        match (&args.target, addr) {
            (Some(url), _) => super::loadgen::peer_subscribe(url).await,
            (None, Some(addr)) => subscribe(addr, "idle", "\"latest\"").await,
            (None, None) => Err(err("no server")),
        }
    };
    // One connection first, so the runtime (and the namespace) exist before the baseline.
    let first = connect().await?;
    let before = super::loadgen::proc_rss_kib(pid)?;
    let mut open = Vec::with_capacity(args.connections);
    let mut progress = super::loadgen::Progress::new("idle connections");
    for i in 0..args.connections {
        open.push(connect().await?);
        progress.show(i as u64 + 1, args.connections as u64);
    }
    let after = super::loadgen::proc_rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 / args.connections as f64;
    drop(open);
    drop(first);
    Ok(vec![Measured::rate(
        format!(
            "idle WebSocket connections, {label}: {} connections, server RSS {before} → {after} KiB, {per:.2} KiB each",
            args.connections
        ),
        0.0,
    )])
}
