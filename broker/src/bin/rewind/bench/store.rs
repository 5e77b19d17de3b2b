//! `rewind bench store`: what the store costs (issue 9 §4), against a broker started as a
//! child process (`rewind serve`, durable mode, default configuration) on a temporary data
//! directory, so it measures whatever store the binary has.
//!
//! - `disk`: on-disk bytes ÷ payload bytes: `disk_events` events of `disk_payload_bytes`
//!   published over HTTP (batches of 100), a clean shutdown (SIGTERM, which checkpoints),
//!   then the blocks allocated to every file under the data directory, as `du` counts them.
//! - `idle`: RSS per idle namespace: `namespaces` namespaces created by a publish of one
//!   event each, a clean shutdown and a restart, so only what open keeps is counted; minus
//!   the RSS of a broker started on an empty directory in the same run.
//! - `latency`: publish acknowledgement latency at a steady `rate` events/s for `seconds`,
//!   open loop: `publishers` WebSocket connections, each publishing single events to its
//!   own namespace on a fixed schedule whatever the answers do; each latency runs from the
//!   time the publish was due to its `published` answer (so a stall counts for every
//!   publish it delays), recorded in an HdrHistogram. Beside it, a disk probe in the
//!   benchmark's process (`probe_interval_ms`) writes 200 bytes to a file next to the data
//!   directory and `fdatasync`s it, and reports the same percentiles: what the disk itself
//!   did during the run, as a same-run reference on a shared machine.
//! - `catchup`: `catchup_events` events published, a clean shutdown and a restart, every
//!   data file written to disk and dropped from the OS page cache (`posix_fadvise
//!   DONTNEED`, per file: the machine is shared, so not `/proc/sys/vm/drop_caches`); then
//!   one subscriber reads the namespace from offset 0 ("cold"), then again ("warm", from
//!   whatever the store and the OS cached). The bytes the broker read from the block layer
//!   (`/proc/<pid>/io` `read_bytes`) are reported with each, to show which was which,
//!   and the restart's start-up time (spawn to the `listening` line, the files dropped from
//!   the page cache before it too) with the data's size.
//! - `sync` (only when asked for): the disk probe alone for `seconds`, no broker running,
//!   in a temporary directory under `$TMPDIR` (else `/tmp`), where the brokers of `rewind
//!   bench` keep their data too: what one durable group commit's `fdatasync` costs that
//!   disk, the floor under every durable latency (`tests/peers/compare.sh` runs it each
//!   round). Its events/s is 0: it publishes nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::Message;

use super::fanout::{batch, replay_events, subscribe, Publisher};
use super::http::Http;
use super::loadgen::thread_cpu;
use super::{err, BenchError, Measured};

/// The scenarios of `rewind bench store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreScenario {
    /// On-disk bytes ÷ payload bytes
    Disk,
    /// RSS per idle namespace after a restart
    Idle,
    /// Publish acknowledgement latency at a steady rate, open loop
    Latency,
    /// Catch-up from offset 0 with the data files out of the page cache, then in it
    Catchup,
    /// The disk alone, no broker: the disk probe for `seconds` (not in the default list)
    Sync,
}

/// How the latency scenario publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LatencyTransport {
    /// WebSocket connections pipelining single-event publishes
    Ws,
    /// Keep-alive HTTP connections, one single-event POST in flight each
    Http,
}

/// Options of `rewind bench store`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Scenarios to run (comma-separated)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "disk,idle,latency,catchup"
    )]
    pub only: Vec<StoreScenario>,
    /// disk: events to publish
    #[arg(long, default_value_t = 50_000)]
    pub disk_events: u64,
    /// disk: bytes of each event's JSON payload (a string, quotes included)
    #[arg(long, default_value_t = 1024)]
    pub disk_payload_bytes: usize,
    /// idle: namespaces, each created by a publish of one event
    #[arg(long, default_value_t = 10_000)]
    pub namespaces: usize,
    /// latency: events per second, all publishers together
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// latency, sync: seconds measured
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// latency: WebSocket publishers, one namespace each
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// latency: bytes of each event's JSON payload
    #[arg(long, default_value_t = 100)]
    pub latency_payload_bytes: usize,
    /// latency: how publishers publish: `ws` (`publishers` WebSocket connections, each
    /// pipelining single events to its own namespace) or `http` (`http_connections`
    /// keep-alive connections, one single-event POST in flight each, to the `publishers`
    /// namespaces in turn)
    #[arg(long, value_enum, default_value_t = LatencyTransport::Ws)]
    pub transport: LatencyTransport,
    /// latency, sync: milliseconds between the disk probe's `fdatasync`s (latency: 0 runs
    /// no probe; sync: at least 1)
    #[arg(long, default_value_t = 10)]
    pub probe_interval_ms: u64,
    /// latency, `--transport http`: keep-alive connections; a publish that comes due
    /// while all are busy waits for one, and that wait is part of its latency
    #[arg(long, default_value_t = 64)]
    pub http_connections: usize,
    /// catchup: events in the log
    #[arg(long, default_value_t = 1_000_000)]
    pub catchup_events: u64,
    /// catchup: bytes of each event's JSON payload
    #[arg(long, default_value_t = 100)]
    pub catchup_payload_bytes: usize,
    /// More `rewind serve` flags for every broker started, in one argument separated by
    /// spaces (e.g. `--serve-args="--store-cache-bytes 4194304"`)
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    pub serve_args: Vec<String>,
    /// One JSON object per scenario instead of the table
    #[arg(long)]
    pub json: bool,
}

/// A broker child process on a data directory the benchmark keeps across restarts.
struct Broker {
    child: Option<Child>,
    addr: SocketAddr,
    /// From spawn to the `listening` line.
    startup: Duration,
}

impl Broker {
    fn start(dir: &Path, extra: &[String]) -> Result<Broker, BenchError> {
        let t0 = Instant::now();
        let args = ["--max-connections", "20000"]
            .into_iter()
            .chain(extra.iter().map(String::as_str).filter(|a| !a.is_empty()));
        let (child, addr) = super::spawn_serve(dir, args)?;
        Ok(Broker {
            child: Some(child),
            addr,
            startup: t0.elapsed(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn proc_file(&self, file: &str) -> Result<String, BenchError> {
        Ok(std::fs::read_to_string(format!(
            "/proc/{}/{file}",
            self.pid()
        ))?)
    }

    /// A `key: value` number of a `/proc/<pid>` file.
    fn proc_number(&self, file: &str, key: &str) -> Result<u64, BenchError> {
        self.proc_file(file)?
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| err(format!("no {key} in /proc/{}/{file}", self.pid())))
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> Result<u64, BenchError> {
        self.proc_number("status", "VmRSS:")
    }

    /// Bytes the broker has had read from the block layer so far.
    fn read_bytes(&self) -> Result<u64, BenchError> {
        self.proc_number("io", "read_bytes:")
    }

    /// Asks for a clean shutdown (SIGTERM) and waits for it; a failed exit is an error.
    fn stop(mut self) -> Result<(), BenchError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).map_err(err)?;
        // SAFETY: kill(2) with a pid this process spawned and has not yet waited for.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let status = child.wait()?;
        if !status.success() {
            return Err(err(format!("the broker exited with {status} on SIGTERM")));
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every file under `dir`.
fn files(dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}

/// Bytes allocated on disk (as `du` counts them) and apparent bytes of every file under
/// `dir`.
fn disk_usage(dir: &Path) -> Result<(u64, u64), BenchError> {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    for f in files(dir)? {
        let m = std::fs::metadata(&f)?;
        allocated += m.blocks() * 512;
        apparent += m.len();
    }
    Ok((allocated, apparent))
}

/// Writes every file under `dir` to disk and drops it from the OS page cache.
fn drop_from_page_cache(dir: &Path) -> Result<(), BenchError> {
    use std::os::fd::AsRawFd;
    for f in files(dir)? {
        let file = std::fs::File::open(&f)?;
        // Dirty pages are not dropped: write them first.
        file.sync_all()?;
        // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc).into());
        }
    }
    Ok(())
}

/// Publishes `events` events of `payload_bytes` to `ns` in batches of `per_batch`.
async fn fill(
    addr: SocketAddr,
    ns: &str,
    events: u64,
    payload_bytes: usize,
    per_batch: u64,
) -> Result<u64, BenchError> {
    let mut p = Publisher::connect(addr).await?;
    let body = batch(payload_bytes, per_batch as usize);
    let mut n = 0;
    while n + per_batch <= events {
        p.post(ns, body.clone()).await?;
        n += per_batch;
    }
    if n < events {
        p.post(ns, batch(payload_bytes, (events - n) as usize))
            .await?;
        n = events;
    }
    Ok(n)
}

async fn disk(args: &StoreArgs) -> Result<Vec<Measured>, BenchError> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let b = Broker::start(&data, &args.serve_args)?;
    let n = fill(
        b.addr,
        "disk",
        args.disk_events,
        args.disk_payload_bytes,
        100,
    )
    .await?;
    b.stop()?;
    let (allocated, apparent) = disk_usage(&data)?;
    let payload = n * args.disk_payload_bytes as u64;
    // Where it is: each entry of the data directory holding at least 1 % of it.
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(&data)? {
        let path = entry?.path();
        let (bytes, _) = if path.is_dir() {
            disk_usage(&path)?
        } else {
            use std::os::unix::fs::MetadataExt;
            (std::fs::metadata(&path)?.blocks() * 512, 0)
        };
        if bytes * 100 >= allocated {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            parts.push((bytes, name.unwrap_or_default()));
        }
    }
    parts.sort_unstable_by(|a, b| b.cmp(a));
    let parts: Vec<String> = parts
        .iter()
        .map(|(bytes, name)| format!("{name} {:.1} MiB", *bytes as f64 / (1 << 20) as f64))
        .collect();
    Ok(vec![Measured::rate(
        format!(
            "on disk after {n} events of {} B and a clean shutdown: {allocated} B allocated \
             ({apparent} B apparent; {}) for {payload} B of payload: **{:.2}×** ({:.2}× \
             apparent)",
            args.disk_payload_bytes,
            parts.join(", "),
            allocated as f64 / payload as f64,
            apparent as f64 / payload as f64
        ),
        0.0,
    )])
}

/// `GET /healthz` until it answers, so the broker is serving before RSS is read.
async fn healthy(addr: SocketAddr) -> Result<(), BenchError> {
    Http::connect(addr).await.map(drop)
}

async fn idle(args: &StoreArgs) -> Result<Vec<Measured>, BenchError> {
    let tmp = tempfile::tempdir()?;
    let empty = Broker::start(&tmp.path().join("empty"), &args.serve_args)?;
    healthy(empty.addr).await?;
    let empty_rss = empty.rss_kib()?;
    empty.stop()?;

    let data = tmp.path().join("data");
    let b = Broker::start(&data, &args.serve_args)?;
    // Eight publishers, each creating its share of the namespaces by publishing to them.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (addr, total) = (b.addr, args.namespaces);
        tasks.push(tokio::spawn(async move {
            let mut p = Publisher::connect(addr).await?;
            for i in (w..total).step_by(8) {
                p.post(&format!("idle-{i:06}"), batch(100, 1)).await?;
            }
            Ok::<(), BenchError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(err)??;
    }
    b.stop()?;
    let b = Broker::start(&data, &args.serve_args)?;
    healthy(b.addr).await?;
    let rss = b.rss_kib()?;
    let startup = b.startup;
    b.stop()?;
    let per_ns = (rss.saturating_sub(empty_rss) * 1024) as f64 / args.namespaces as f64;
    Ok(vec![Measured::rate(
        format!(
            "{} idle namespaces (one event each) after a restart: RSS {rss} KiB, empty broker \
             {empty_rss} KiB: **{:.2} KiB per namespace**; start-up {:.2} s",
            args.namespaces,
            per_ns / 1024.0,
            startup.as_secs_f64()
        ),
        0.0,
    )])
}

/// One open-loop publisher: publishes `total` single events to `ns`, the k-th due at
/// `start + k × interval`; returns the latency of each answer from when it was due.
async fn paced_publisher(
    addr: SocketAddr,
    ns: String,
    start: TokioInstant,
    interval: Duration,
    total: u64,
    payload_bytes: usize,
) -> Result<Histogram<u64>, BenchError> {
    let (mut sink, mut stream) = super::ws::connect(addr, 16 << 10).await?.split();
    let reader = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new(3).map_err(err)?;
        let mut k = 0u64;
        while k < total {
            let answer = match stream.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => return Err(err(format!("connection ended: {other:?}"))),
            };
            if answer.starts_with(r#"{"t":"error""#) {
                return Err(err(format!("publish refused: {answer}")));
            }
            if !answer.starts_with(r#"{"t":"published""#) {
                continue;
            }
            let due = start + interval.mul_f64(k as f64);
            let us = TokioInstant::now()
                .saturating_duration_since(due)
                .as_micros();
            hist.record(u64::try_from(us).unwrap_or(u64::MAX))
                .map_err(err)?;
            k += 1;
        }
        Ok::<_, BenchError>(hist)
    });
    let data = format!("\"{}\"", "x".repeat(payload_bytes.saturating_sub(2)));
    for k in 0..total {
        let due = start + interval.mul_f64(k as f64);
        if due > TokioInstant::now() {
            sink.flush().await.map_err(err)?;
            tokio::time::sleep_until(due).await;
        }
        let frame =
            format!(r#"{{"t":"publish","id":{k},"ns":"{ns}","event":"bench","data":{data}}}"#);
        sink.feed(Message::Text(frame.into())).await.map_err(err)?;
    }
    sink.flush().await.map_err(err)?;
    let hist = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .map_err(|_| err("answers never all came"))?
        .map_err(err)??;
    let _ = sink.close().await;
    Ok(hist)
}

/// Tells the disk probe to stop when dropped, also when the scenario fails early.
struct StopProbe(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopProbe {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How soon the disk probe sees that it is told to stop, at most.
const STOP_SLICE: Duration = Duration::from_millis(10);

/// What the disk probe measured.
struct Probed {
    /// The time each write + `fdatasync` took, in µs.
    latency: Histogram<u64>,
    /// The probe thread's own CPU time in its writes and syncs, all of them together
    /// (`None` if the thread's CPU clock could not be read).
    cpu: Option<Duration>,
}

impl Probed {
    /// The probe thread's CPU per write + `fdatasync`, in µs (`None` before the first, or
    /// without the clock). The kernel's own threads' share (the journal's commit) is not
    /// in it: a lower bound, as the servers' CPU figures are.
    fn cpu_us_each(&self) -> Option<f64> {
        let n = self.latency.len();
        let cpu = self.cpu?;
        (n > 0).then(|| cpu.as_secs_f64() * 1e6 / n as f64)
    }

    /// `; CPU X µs each` for a result's name, or nothing without that figure.
    fn cpu_note(&self) -> String {
        self.cpu_us_each()
            .map_or(String::new(), |us| format!("; CPU {us:.1} µs each"))
    }
}

/// The disk probe: until `stop`, every `interval` appends 200 bytes to a file in `dir` and
/// `fdatasync`s it; returns the time each write and sync took, in µs, and the CPU time the
/// probe's thread spent in them (on a virtual machine, a sync's exits to the host show up
/// here). A thread of its own, so the benchmark's async tasks cannot delay it.
fn disk_probe(
    dir: PathBuf,
    interval: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<Probed, BenchError>> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut hist = Histogram::<u64>::new(3).map_err(err)?;
        let mut cpu = Some(Duration::ZERO);
        let path = dir.join("probe");
        let mut file = std::fs::File::create(&path)?;
        let mut due = Some(Instant::now());
        while !stop.load(Ordering::Relaxed) {
            if due.is_some_and(|d| Instant::now() >= d) {
                let t0 = Instant::now();
                let cpu0 = thread_cpu();
                file.write_all(&[b'p'; 200])?;
                file.sync_data()?;
                cpu = cpu
                    .zip(cpu0)
                    .zip(thread_cpu())
                    .map(|((sum, from), to)| sum + to.saturating_sub(from));
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                hist.record(us).map_err(err)?;
                // Past what the clock holds: no further sync.
                due = due.and_then(|d| d.checked_add(interval));
            }
            // In slices, so a stop is seen within one whatever the interval.
            let wait = due.map_or(STOP_SLICE, |d| d.saturating_duration_since(Instant::now()));
            std::thread::sleep(wait.min(STOP_SLICE));
        }
        drop(file);
        std::fs::remove_file(&path)?;
        Ok(Probed { latency: hist, cpu })
    })
}

/// What the disk probe measured, once it has stopped (told to by its [`StopProbe`]);
/// waited for off the async workers.
async fn probe_result(
    probe: std::thread::JoinHandle<Result<Probed, BenchError>>,
) -> Result<Probed, BenchError> {
    tokio::task::spawn_blocking(move || probe.join())
        .await
        .map_err(err)?
        .map_err(|_| err("the disk probe panicked"))?
}

/// The schedule the HTTP connections of the latency scenario share: publish k (to
/// namespace `lat-{k mod namespaces}`) is due at `start + k × interval`.
struct HttpSchedule {
    next: AtomicU64,
    total: u64,
    start: TokioInstant,
    interval: Duration,
    namespaces: u64,
    body: String,
}

/// One HTTP connection of the latency scenario: takes the next publish due, waits until
/// it is due, posts it; its latency runs from when it was due.
async fn http_paced(
    mut conn: Publisher,
    schedule: Arc<HttpSchedule>,
) -> Result<Histogram<u64>, BenchError> {
    let mut hist = Histogram::<u64>::new(3).map_err(err)?;
    loop {
        let k = schedule.next.fetch_add(1, Ordering::Relaxed);
        if k >= schedule.total {
            return Ok(hist);
        }
        let due = schedule.start + schedule.interval.mul_f64(k as f64);
        tokio::time::sleep_until(due).await;
        let ns = format!("lat-{}", k % schedule.namespaces);
        conn.post(&ns, schedule.body.clone()).await?;
        let us = TokioInstant::now()
            .saturating_duration_since(due)
            .as_micros();
        hist.record(u64::try_from(us).unwrap_or(u64::MAX))
            .map_err(err)?;
    }
}

async fn latency(args: &StoreArgs) -> Result<Vec<Measured>, BenchError> {
    let tmp = tempfile::tempdir()?;
    let b = Broker::start(&tmp.path().join("data"), &args.serve_args)?;
    let publishers = args.publishers.max(1);
    let mut p = Publisher::connect(b.addr).await?;
    for i in 0..publishers {
        p.create(&format!("lat-{i}")).await?;
    }
    let per = (args.rate as f64 / publishers as f64).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / per);
    let total = (per * args.seconds as f64) as u64;
    // HTTP connections are made first; WebSocket publishers connect in their task, and
    // all start on the same schedule.
    let mut conns = Vec::new();
    if args.transport == LatencyTransport::Http {
        for _ in 0..args.http_connections.max(1) {
            conns.push(Publisher::connect(b.addr).await?);
        }
    }
    let start = TokioInstant::now() + Duration::from_millis(500);
    let stop_probe = StopProbe(Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let probe = (args.probe_interval_ms > 0).then(|| {
        disk_probe(
            tmp.path().to_path_buf(),
            Duration::from_millis(args.probe_interval_ms),
            Arc::clone(&stop_probe.0),
        )
    });
    let mut tasks = Vec::new();
    match args.transport {
        LatencyTransport::Ws => {
            for i in 0..publishers {
                tasks.push(tokio::spawn(paced_publisher(
                    b.addr,
                    format!("lat-{i}"),
                    start + interval.mul_f64(i as f64 / publishers as f64),
                    interval,
                    total,
                    args.latency_payload_bytes,
                )));
            }
        }
        LatencyTransport::Http => {
            let schedule = Arc::new(HttpSchedule {
                next: AtomicU64::new(0),
                total: total * publishers as u64,
                start,
                interval: Duration::from_secs_f64(1.0 / (per * publishers as f64)),
                namespaces: publishers as u64,
                body: batch(args.latency_payload_bytes, 1),
            });
            for conn in conns {
                tasks.push(tokio::spawn(http_paced(conn, Arc::clone(&schedule))));
            }
        }
    }
    let mut hist = Histogram::<u64>::new(3).map_err(err)?;
    for t in tasks {
        hist.add(t.await.map_err(err)??).map_err(err)?;
    }
    let elapsed = start.elapsed();
    drop(stop_probe);
    b.stop()?;
    let ms = |us: u64| us as f64 / 1000.0;
    let mut out = vec![Measured {
        name: format!(
            "durable publish acknowledgement, open loop at {} events/s for {} s ({}, {} \
             namespaces, {} B payloads, {} publishes; p99.9 {:.2} ms), latency from when each \
             publish was due",
            args.rate,
            args.seconds,
            match args.transport {
                LatencyTransport::Ws => format!("{publishers} WebSocket publishers"),
                LatencyTransport::Http =>
                    format!("{} HTTP connections", args.http_connections.max(1)),
            },
            publishers,
            args.latency_payload_bytes,
            hist.len(),
            ms(hist.value_at_quantile(0.999))
        ),
        events_per_sec: hist.len() as f64 / elapsed.as_secs_f64(),
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        ..Measured::default()
    }];
    if let Some(probe) = probe {
        let probed = probe_result(probe).await?;
        let probe = &probed.latency;
        out.push(Measured {
            name: format!(
                "disk probe during that run: 200-byte write + fdatasync every {} ms beside the \
                 data directory ({} syncs; p99.9 {:.2} ms{})",
                args.probe_interval_ms,
                probe.len(),
                ms(probe.value_at_quantile(0.999)),
                probed.cpu_note()
            ),
            events_per_sec: 0.0,
            p50_us: probe.value_at_quantile(0.50),
            p99_us: probe.value_at_quantile(0.99),
            p999_us: probe.value_at_quantile(0.999),
            max_us: probe.max(),
            cpu_us_per_op: probed.cpu_us_each(),
            ..Measured::default()
        });
    }
    Ok(out)
}

/// The disk probe alone for `args.seconds`, no broker running.
async fn sync(args: &StoreArgs) -> Result<Vec<Measured>, BenchError> {
    if args.probe_interval_ms == 0 {
        return Err(err(
            "sync: --probe-interval-ms must be at least 1 (it is the probe's interval)",
        ));
    }
    let dir = tempfile::tempdir()?;
    let interval = Duration::from_millis(args.probe_interval_ms);
    let stop = StopProbe(Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let probe = disk_probe(dir.path().to_owned(), interval, Arc::clone(&stop.0));
    // The benchmark's length, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    drop(stop);
    let probed = probe_result(probe).await?;
    let hist = &probed.latency;
    Ok(vec![Measured {
        name: format!(
            "disk alone: 200-byte write + fdatasync every {} ms for {} s, no broker ({} syncs; \
             p99.9 {:.2} ms{})",
            interval.as_millis(),
            args.seconds,
            hist.len(),
            hist.value_at_quantile(0.999) as f64 / 1000.0,
            probed.cpu_note()
        ),
        events_per_sec: 0.0,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        cpu_us_per_op: probed.cpu_us_each(),
        ..Measured::default()
    }])
}

/// Reads `ns` from offset 0 to `n` events with one subscriber; the rate and the bytes
/// the broker read from the block layer meanwhile.
async fn replay(b: &Broker, ns: &str, n: u64) -> Result<(f64, u64), BenchError> {
    let read0 = b.read_bytes()?;
    let t0 = Instant::now();
    let mut ws = subscribe(b.addr, ns, "0").await?;
    replay_events(&mut ws, n).await?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    Ok((rate, b.read_bytes()?.saturating_sub(read0)))
}

async fn catchup(args: &StoreArgs) -> Result<Vec<Measured>, BenchError> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let b = Broker::start(&data, &args.serve_args)?;
    let n = fill(
        b.addr,
        "replay",
        args.catchup_events,
        args.catchup_payload_bytes,
        1000,
    )
    .await?;
    b.stop()?;
    let (on_disk, _) = disk_usage(&data)?;
    // Open verifies every frame: its time is measured with the files out of the page cache.
    drop_from_page_cache(&data)?;
    let b = Broker::start(&data, &args.serve_args)?;
    healthy(b.addr).await?;
    let startup = b.startup;
    drop_from_page_cache(&data)?;
    let (cold, cold_read) = replay(&b, "replay", n).await?;
    let (warm, warm_read) = replay(&b, "replay", n).await?;
    b.stop()?;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    Ok(vec![
        Measured::rate(
            format!(
                "catch-up of {n} events of {} B from offset 0 after a restart (start-up \
                 {:.2} s with {:.1} MiB on disk), data files dropped from the page cache \
                 ({:.1} MiB read from disk)",
                args.catchup_payload_bytes,
                startup.as_secs_f64(),
                mib(on_disk),
                mib(cold_read)
            ),
            cold,
        ),
        Measured::rate(
            format!(
                "the same read again, from cache ({:.1} MiB read from disk)",
                mib(warm_read)
            ),
            warm,
        ),
    ])
}

/// Runs the chosen scenarios in order.
pub async fn run(args: &StoreArgs) -> Result<Vec<Measured>, BenchError> {
    let mut out = Vec::new();
    for scenario in &args.only {
        out.extend(match scenario {
            StoreScenario::Disk => disk(args).await?,
            StoreScenario::Idle => idle(args).await?,
            StoreScenario::Latency => latency(args).await?,
            StoreScenario::Catchup => catchup(args).await?,
            StoreScenario::Sync => sync(args).await?,
        });
    }
    Ok(out)
}
