//! The broker's metrics, served by `GET /metrics` in the OpenMetrics text format
//! (`docs/operations.md` lists every one).
//!
//! One [`Metrics`] per [`crate::Log`], so two brokers in one process (tests calling
//! `server::run`) never mix their figures. The counters and gauges the transports and the
//! writer move are atomics, bumped once per connection, subscription, batch of events or
//! group commit, never once per delivered event; the two histograms take a short lock per
//! observation (one per publish, one per sync). What can be read when a scrape comes —
//! the write-queue depth, the namespaces' head offsets and their subscribers' lag, the
//! bytes on disk — is read then, costing nothing between scrapes.
//!
//! ### Bounded label sets
//!
//! - `transport` is `http` or `ws`; `code` is one of the protocol's error codes.
//! - Per-namespace series (`rewind_namespace_head_offset`, `rewind_namespace_subscriber_lag`)
//!   exist only for the `metrics_namespaces` namespaces whose subscribers lag the most at
//!   the scrape (ties: by name), so a broker with a million namespaces still exposes at most
//!   that many series; `rewind_subscriber_lag_max` covers every namespace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A transport, as the `transport` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// The HTTP API (publish, read, admin).
    Http,
    /// The WebSocket transport.
    Ws,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
        }
    }
}

type RefusalLabels = [(&'static str, String); 2];
type NsLabels = [(&'static str, String); 1];

/// Every figure the broker reports, and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    http_connections: Gauge,
    ws_sessions: Gauge,
    long_polls: Gauge,
    subscriptions: Gauge,
    appended_events: Counter,
    appended_bytes: Counter,
    deliveries: Counter,
    publish_seconds: Histogram,
    sync_seconds: Histogram,
    refused: Family<RefusalLabels, Counter>,
    write_queue_depth: Gauge,
    namespaces: Gauge,
    disk_bytes: Gauge,
    lag_max: Gauge,
    ns_head: Family<NsLabels, Gauge>,
    ns_lag: Family<NsLabels, Gauge>,
    cursors: Arc<Cursors>,
    top_namespaces: usize,
    /// Held while one scrape refills the per-namespace series and encodes.
    scrape: Mutex<()>,
}

/// The cursors of the open subscriptions, by id: where each one's next event is.
#[derive(Default)]
struct Cursors {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Cursor>>,
}

/// One subscription's namespace and next offset.
type Cursor = (Arc<str>, Arc<AtomicU64>);

/// What a scrape reads from the broker at that moment.
pub(crate) struct Snapshot {
    /// Commands waiting in the writer's queue.
    pub write_queue_depth: u64,
    /// Namespaces that exist.
    pub namespaces: u64,
    /// Bytes of the files under the data directory.
    pub disk_bytes: u64,
}

impl Metrics {
    /// A fresh set, with per-namespace series for at most `top_namespaces` namespaces.
    pub(crate) fn new(top_namespaces: usize) -> Metrics {
        let mut r = Registry::with_prefix("rewind");
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let http_connections = gauge(
            &mut r,
            "http_connections",
            "Open HTTP connections (a WebSocket's connection counts here until it is upgraded)",
        );
        let ws_sessions = gauge(&mut r, "ws_sessions", "Open WebSocket sessions");
        let long_polls = gauge(
            &mut r,
            "long_poll_waits",
            "HTTP long-polls waiting for an event",
        );
        let subscriptions = gauge(&mut r, "subscriptions", "Open WebSocket subscriptions");
        let appended_events = counter(
            &mut r,
            "appended_events",
            "Events appended (durable, or written in relaxed mode); idempotent replays not counted",
        );
        let appended_bytes = counter(
            &mut r,
            "appended_bytes",
            "Payload bytes of the appended events",
        );
        let deliveries = counter(
            &mut r,
            "deliveries",
            "Events handed to WebSocket subscribers (put in their connection's outbox)",
        );
        // 100 µs to ~3.3 s, doubling: a sync on a fast SSD to a stalled disk.
        let publish_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        r.register(
            "publish_latency_seconds",
            "From a publish queued to the writer to its answer (durable, or refused by the store)",
            publish_seconds.clone(),
        );
        let sync_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        r.register(
            "sync_latency_seconds",
            "One group commit's sync (fdatasync of the write-ahead log)",
            sync_seconds.clone(),
        );
        let refused = Family::<RefusalLabels, Counter>::default();
        r.register(
            "refused_requests",
            "Requests and frames answered with an error code, by transport and code",
            refused.clone(),
        );
        let write_queue_depth = gauge(
            &mut r,
            "write_queue_depth",
            "Commands waiting in the writer's queue at the scrape",
        );
        let namespaces = gauge(&mut r, "namespaces", "Namespaces that exist");
        let disk_bytes = gauge(
            &mut r,
            "disk_bytes",
            "Bytes of the files under the data directory",
        );
        let lag_max = gauge(
            &mut r,
            "subscriber_lag_max",
            "Most events any subscriber of any namespace is behind its namespace's head",
        );
        let ns_head = Family::<NsLabels, Gauge>::default();
        r.register(
            "namespace_head_offset",
            "A namespace's next offset (visible end); only for the namespaces of rewind_namespace_subscriber_lag",
            ns_head.clone(),
        );
        let ns_lag = Family::<NsLabels, Gauge>::default();
        r.register(
            "namespace_subscriber_lag",
            "Events the namespace's slowest subscriber is behind its head; the metrics_namespaces namespaces that lag most",
            ns_lag.clone(),
        );
        Metrics {
            registry: r,
            http_connections,
            ws_sessions,
            long_polls,
            subscriptions,
            appended_events,
            appended_bytes,
            deliveries,
            publish_seconds,
            sync_seconds,
            refused,
            write_queue_depth,
            namespaces,
            disk_bytes,
            lag_max,
            ns_head,
            ns_lag,
            cursors: Arc::new(Cursors::default()),
            top_namespaces,
            scrape: Mutex::new(()),
        }
    }

    /// An open HTTP connection, counted until the guard drops.
    pub(crate) fn http_connection(&self) -> Open {
        Open::new(&self.http_connections)
    }

    /// An open WebSocket session, counted until the guard drops.
    pub(crate) fn ws_session(&self) -> Open {
        Open::new(&self.ws_sessions)
    }

    /// A long-poll waiting, counted until the guard drops.
    pub(crate) fn long_poll(&self) -> Open {
        Open::new(&self.long_polls)
    }

    /// The events one group commit made durable, as their payloads' sizes in bytes.
    pub(crate) fn appended(&self, payload_bytes: impl Iterator<Item = u64>) {
        let (events, bytes) = payload_bytes.fold((0, 0), |(n, b), p| (n + 1, b + p));
        if events > 0 {
            self.appended_events.inc_by(events);
            self.appended_bytes.inc_by(bytes);
        }
    }

    /// `events` events handed to one subscriber at once.
    pub(crate) fn delivered(&self, events: u64) {
        if events > 0 {
            self.deliveries.inc_by(events);
        }
    }

    /// A timer for one publish; it observes when dropped.
    pub(crate) fn publish_timer(self: &Arc<Self>) -> Timer {
        Timer {
            since: Instant::now(),
            metrics: Arc::clone(self),
        }
    }

    /// One sync, begun at `since`, done now.
    pub(crate) fn synced(&self, since: Instant) {
        self.sync_seconds.observe(since.elapsed().as_secs_f64());
    }

    /// A request or frame answered with error code `code` (one of the protocol's
    /// `ErrorCode`s).
    pub(crate) fn refused(&self, transport: Transport, code: &str) {
        self.refused
            .get_or_create(&[
                ("transport", transport.as_str().to_owned()),
                ("code", code.to_owned()),
            ])
            .inc();
    }

    /// A subscription of `ns` starting at `cursor`; counted, and its cursor followed for
    /// the lag, until the handle drops.
    pub(crate) fn subscribed(&self, ns: &str, cursor: u64) -> Subscribed {
        let position = Arc::new(AtomicU64::new(cursor));
        let id = self.cursors.next_id.fetch_add(1, Ordering::Relaxed);
        self.cursors
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (Arc::from(ns), Arc::clone(&position)));
        self.subscriptions.inc();
        Subscribed {
            id,
            position,
            cursors: Arc::clone(&self.cursors),
            gauge: self.subscriptions.clone(),
        }
    }

    /// The text of a scrape. `head` gives a namespace's visible end (`None`: it is gone).
    pub(crate) fn render(&self, snapshot: &Snapshot, head: impl Fn(&str) -> Option<u64>) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.write_queue_depth
            .set(gauge_value(snapshot.write_queue_depth));
        self.namespaces.set(gauge_value(snapshot.namespaces));
        self.disk_bytes.set(gauge_value(snapshot.disk_bytes));
        // The slowest cursor of each subscribed namespace.
        let mut slowest: HashMap<Arc<str>, u64> = HashMap::new();
        for (ns, position) in self
            .cursors
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let at = position.load(Ordering::Relaxed);
            slowest
                .entry(Arc::clone(ns))
                .and_modify(|s| *s = (*s).min(at))
                .or_insert(at);
        }
        let mut lags: Vec<(Arc<str>, u64, u64)> = slowest
            .into_iter()
            .filter_map(|(ns, at)| head(&ns).map(|h| (ns, h, h.saturating_sub(at))))
            .collect();
        lags.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        self.lag_max
            .set(gauge_value(lags.first().map_or(0, |l| l.2)));
        self.ns_head.clear();
        self.ns_lag.clear();
        for (ns, head, lag) in lags.into_iter().take(self.top_namespaces) {
            let labels = [("namespace", ns.to_string())];
            self.ns_head.get_or_create(&labels).set(gauge_value(head));
            self.ns_lag.get_or_create(&labels).set(gauge_value(lag));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// A gauge holds an `i64`; figures beyond it (never reached) show as its most.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Something open, counted in a gauge until this drops.
pub(crate) struct Open(Gauge);

impl Open {
    fn new(gauge: &Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A publish's time, observed when this drops.
pub(crate) struct Timer {
    since: Instant,
    metrics: Arc<Metrics>,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let seconds = self.since.elapsed().as_secs_f64();
        self.metrics.publish_seconds.observe(seconds);
    }
}

/// An open subscription: its cursor, as the lag metrics read it.
pub(crate) struct Subscribed {
    id: u64,
    position: Arc<AtomicU64>,
    cursors: Arc<Cursors>,
    gauge: Gauge,
}

impl Subscribed {
    /// The subscription's next offset moved to `cursor`.
    pub(crate) fn at(&self, cursor: u64) {
        self.position.store(cursor, Ordering::Relaxed);
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.cursors
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.gauge.dec();
    }
}

/// The peer address of a request's connection, put in its extensions by the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub std::net::SocketAddr);

/// Bytes of the regular files under `dir`, walked now (blocking).
pub(crate) fn disk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total = total.saturating_add(m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_protocol::ErrorCode;

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn only_the_namespaces_that_lag_most_get_series_of_their_own() {
        let m = Metrics::new(2);
        let heads: HashMap<&str, u64> = [("a", 10), ("b", 50), ("c", 100)].into();
        let _a = m.subscribed("a", 0); // lag 10
        let _b = m.subscribed("b", 45); // lag 5
        let c1 = m.subscribed("c", 100); // lag 0 ...
        let _c2 = m.subscribed("c", 30); // ... but its slowest lags 70
        let snap = Snapshot {
            write_queue_depth: 3,
            namespaces: 3,
            disk_bytes: 7,
        };
        let text = m.render(&snap, |ns| heads.get(ns).copied());
        assert_eq!(value(&text, "rewind_subscriptions").as_deref(), Some("4"));
        assert_eq!(
            value(&text, "rewind_subscriber_lag_max").as_deref(),
            Some("70")
        );
        assert_eq!(
            value(&text, "rewind_namespace_subscriber_lag{namespace=\"c\"}").as_deref(),
            Some("70")
        );
        assert_eq!(
            value(&text, "rewind_namespace_head_offset{namespace=\"a\"}").as_deref(),
            Some("10")
        );
        assert!(!text.contains("namespace=\"b\""), "{text}");
        assert_eq!(
            value(&text, "rewind_write_queue_depth").as_deref(),
            Some("3")
        );
        // A cursor that moves and a subscription that goes change the next scrape.
        c1.at(100);
        drop(_c2);
        let text = m.render(&snap, |ns| heads.get(ns).copied());
        assert_eq!(value(&text, "rewind_subscriptions").as_deref(), Some("3"));
        assert_eq!(
            value(&text, "rewind_subscriber_lag_max").as_deref(),
            Some("10")
        );
        assert!(text.contains("namespace=\"b\""), "{text}");
        assert!(!text.contains("namespace=\"c\""), "{text}");
    }

    #[test]
    fn refusals_are_counted_by_transport_and_code() {
        let m = Metrics::new(0);
        m.refused(Transport::Http, ErrorCode::NotFound.as_str());
        m.refused(Transport::Http, ErrorCode::NotFound.as_str());
        m.refused(Transport::Ws, ErrorCode::BadFrame.as_str());
        let snap = Snapshot {
            write_queue_depth: 0,
            namespaces: 0,
            disk_bytes: 0,
        };
        let text = m.render(&snap, |_| None);
        assert!(
            text.contains("rewind_refused_requests_total{transport=\"http\",code=\"not_found\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("rewind_refused_requests_total{transport=\"ws\",code=\"bad_frame\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
