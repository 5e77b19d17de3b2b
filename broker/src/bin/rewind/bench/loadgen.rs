//! The fan-out load generator's common parts: the event payload it publishes, the
//! subscriber task that counts and times what arrives, its own CPU, and the bare-broadcast
//! peer protocol (`--target`), so the same load generator drives rewind and the peers.
//!
//! The peer protocol (documented in `docs/benchmarks.md`, spoken by
//! `tests/peers/bare`): a WebSocket connection to `/sub` is a subscriber, registered
//! before the peer answers it with one text frame `ready`; every text frame a connection
//! to `/pub` sends is broadcast, verbatim, to every subscriber.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::fanout::Ws;
use super::{err, BenchError};

/// Read buffer of each load-generating WebSocket connection (see `fanout`).
pub(super) const LOAD_READ_BUFFER: usize = 4096;

/// Microseconds since the Unix epoch.
pub(super) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The JSON payload of event `seq` sent at `sent_us`: `{"seq":N,"sent_us":T,"pad":"x…"}`,
/// padded to `bytes` bytes in all (longer when the two numbers need it).
pub(super) fn payload(seq: u64, sent_us: u64, bytes: usize) -> String {
    let head = format!(r#"{{"seq":{seq},"sent_us":{sent_us},"pad":""#);
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(head.len() + pad + 2);
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// The number after the last `"sent_us":` in a frame.
pub(super) fn sent_us(frame: &str) -> Option<u64> {
    let at = frame.rfind("\"sent_us\":")? + 10;
    let digits = frame[at..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(&frame[at..], |end| &frame[at..at + end]);
    digits.parse().ok()
}

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// This process's user plus system CPU seconds so far (`getrusage(RUSAGE_SELF)`).
pub(super) fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The calling thread's own CPU time so far (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`,
/// nanosecond resolution: fine enough for one `fdatasync`); `None` if the clock cannot be
/// read.
pub(super) fn thread_cpu() -> Option<Duration> {
    // SAFETY: clock_gettime writes one `timespec` into the zeroed value it is given.
    let (rc, ts) = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        let rc = libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        (rc, ts)
    };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// User plus system CPU seconds of process `pid` so far, from `/proc/PID/stat`.
pub(super) fn proc_cpu_secs(pid: u32) -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
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

/// Resident memory of process `pid` in KiB, from `/proc/PID/status`.
pub(super) fn proc_rss_kib(pid: u32) -> Result<u64, BenchError> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}

/// Load generator CPU (cores, over a run) at or above which a run says the load generator
/// may be the bottleneck: near one full core of this process.
pub(super) const LOADGEN_BOTTLENECK_CORES: f64 = 0.9;

/// Connects to a bare-broadcast peer's `/sub` and waits for its `ready`.
pub(super) async fn peer_subscribe(url: &str) -> Result<Ws, BenchError> {
    let mut ws = peer_connect(url, "sub").await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "ready" => return Ok(ws),
            Some(Ok(_)) => {}
            other => return Err(err(format!("no ready from the peer: {other:?}"))),
        }
    }
}

/// Connects to `URL/PATH` of a bare-broadcast peer.
pub(super) async fn peer_connect(url: &str, path: &str) -> Result<Ws, BenchError> {
    let config = WebSocketConfig::default().read_buffer_size(LOAD_READ_BUFFER);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("{}/{path}", url.trim_end_matches('/')),
        Some(config),
        // TCP_NODELAY, as a latency-minded client sets it: with Nagle's algorithm a
        // connection that only sends (a peer's publisher gets nothing back) holds each
        // small frame until the previous one is acknowledged, which a delayed ACK defers.
        true,
    )
    .await
    .map_err(err)?;
    Ok(ws)
}

/// What one subscriber saw.
pub(super) struct Seen {
    /// Events received.
    pub events: u64,
    /// Publish-to-receive latencies, µs.
    pub latency: Histogram<u64>,
}

/// Reads events until `stop`: counts each in `delivered` and records its latency from the
/// `sent_us` in its payload. `is_event` tells an event frame from the rest; `grant`, when
/// not zero, sends `grant_frame` back after each `grant` events (rewind's credit).
pub(super) async fn subscriber(
    mut ws: Ws,
    is_event: fn(&str) -> bool,
    delivered: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    grant: u64,
    grant_frame: String,
) -> Seen {
    let mut seen = Seen {
        events: 0,
        latency: histogram(),
    };
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) if is_event(&t) => {
                    if let Some(sent) = sent_us(&t) {
                        let _ = seen.latency.record(now_us().saturating_sub(sent).max(1));
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                    seen.events += 1;
                    if grant > 0
                        && seen.events.is_multiple_of(grant)
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
    seen
}

/// Waits until `delivered` reaches `expected`, or has not moved for `quiet`; returns the
/// count it saw last.
pub(super) async fn settle(delivered: &AtomicU64, expected: u64, quiet: Duration) -> u64 {
    let mut last = delivered.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        if last >= expected || since.elapsed() >= quiet {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// A progress line on stderr, rewritten in place, only when stderr is a terminal.
pub(super) struct Progress {
    on: bool,
    what: String,
    last: Instant,
}

impl Progress {
    pub(super) fn new(what: impl Into<String>) -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            what: what.into(),
            last: Instant::now(),
        }
    }

    /// Shows `done` of `total`, at most ten times a second.
    pub(super) fn show(&mut self, done: u64, total: u64) {
        if self.on && (self.last.elapsed() >= Duration::from_millis(100) || done >= total) {
            self.last = Instant::now();
            eprint!("\r{}: {done}/{total}   ", self.what);
            if done >= total {
                eprintln!();
            }
        }
    }
}
