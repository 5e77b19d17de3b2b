//! Per-peer limits of the accept loop and the publish rate of a connection: token buckets
//! and the count of open connections per IP address (`max_connections_per_ip`,
//! `new_connections_per_sec_per_ip`, `publish_rate`; `docs/operations.md`, "Limits").

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rewind_protocol::ErrorCode;

/// A token bucket: `rate` tokens a second, holding at most one second's worth (so a burst
/// of `rate` is allowed after a quiet second). Each admitted action takes one token.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens a second (`rate` at least 1).
    pub(crate) fn new(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1) as f64;
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Takes a token; `Err` with how long until one is there when the bucket is empty.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Whether the bucket is full at `now` (it then remembers nothing worth keeping).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate
    }
}

/// The publish rate of one connection (`publish_rate`), shared by the requests of an
/// HTTP connection (as a request extension) or held by a WebSocket session. `None` inside
/// when the option is 0 (no limit).
#[derive(Debug, Clone)]
pub(crate) struct PublishRate(Option<Arc<Mutex<TokenBucket>>>);

impl PublishRate {
    /// `rate` publishes a second; 0 is no limit.
    pub(crate) fn new(rate: u64) -> PublishRate {
        PublishRate(
            (rate > 0).then(|| Arc::new(Mutex::new(TokenBucket::new(rate, Instant::now())))),
        )
    }

    /// Admits one publish, or says why not (`rate_limited`, with the limit in the message).
    pub(crate) fn admit(&self) -> Result<(), (ErrorCode, String)> {
        let Some(bucket) = &self.0 else {
            return Ok(());
        };
        let mut bucket = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        bucket.take(Instant::now()).map_err(|_| {
            let rate = bucket.rate;
            (
                ErrorCode::RateLimited,
                format!("more than {rate} publishes a second on this connection (publish_rate); retry later"),
            )
        })
    }
}

/// Why a new connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections_per_ip` connections from the address are open.
    TooMany(usize),
    /// The address opened more than `new_connections_per_sec_per_ip` a second.
    TooFast(u64),
}

impl Refusal {
    /// The code and message the refused connection is answered with.
    pub(crate) fn answer(self) -> (ErrorCode, String) {
        match self {
            Refusal::TooMany(n) => (
                ErrorCode::TooManyConnections,
                format!(
                    "{n} connections from this address are open already (max_connections_per_ip)"
                ),
            ),
            Refusal::TooFast(n) => (
                ErrorCode::RateLimited,
                format!(
                    "more than {n} new connections a second from this address \
                     (new_connections_per_sec_per_ip); retry later"
                ),
            ),
        }
    }
}

struct Peer {
    open: usize,
    arrivals: TokenBucket,
}

struct Peers {
    by_ip: HashMap<IpAddr, Peer>,
    /// The map's size at which forgotten peers are next swept out.
    sweep_at: usize,
}

/// Open connections and arrival rate per IP address. An address is remembered while it has
/// connections open or its arrival bucket is not full again; the others are swept out when
/// the map has doubled since the last sweep, so memory follows the busy addresses only.
#[derive(Clone)]
pub(crate) struct PeerLimits {
    peers: Arc<Mutex<Peers>>,
    max_open: usize,
    per_sec: u64,
}

/// Least map size at which a sweep runs.
const FIRST_SWEEP: usize = 1024;

impl PeerLimits {
    pub(crate) fn new(max_open: usize, per_sec: u64) -> PeerLimits {
        PeerLimits {
            peers: Arc::new(Mutex::new(Peers {
                by_ip: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            })),
            max_open,
            per_sec,
        }
    }

    /// Admits a new connection from `ip`: a guard that counts it open until dropped, or
    /// why it is refused. A refused connection takes no arrival token.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<PeerGuard, Refusal> {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.by_ip.len() >= peers.sweep_at {
            peers
                .by_ip
                .retain(|_, p| p.open > 0 || !p.arrivals.is_full(now));
            peers.sweep_at = (peers.by_ip.len() * 2).max(FIRST_SWEEP);
        }
        let per_sec = self.per_sec;
        let peer = peers.by_ip.entry(ip).or_insert_with(|| Peer {
            open: 0,
            arrivals: TokenBucket::new(per_sec, now),
        });
        if peer.open >= self.max_open {
            return Err(Refusal::TooMany(self.max_open));
        }
        peer.arrivals
            .take(now)
            .map_err(|_| Refusal::TooFast(per_sec))?;
        peer.open += 1;
        Ok(PeerGuard {
            limits: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_ip
            .len()
    }
}

/// One open connection of an address; dropping it closes it in the count.
pub(crate) struct PeerGuard {
    limits: PeerLimits,
    ip: IpAddr,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut peers = self
            .limits
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(peer) = peers.by_ip.get_mut(&self.ip) {
            peer.open = peer.open.saturating_sub(1);
        }
    }
}

/// The HTTP connections with no request being answered — waiting for their first
/// request's head, for the rest of a head (a slowloris), or idle between keep-alive
/// requests — in the order they became so. When every connection slot is taken, the
/// accept loop closes the one idle the longest to make room ([`IdleConnections::evict_oldest`]),
/// so clients that hold connections without sending requests cannot lock others out.
#[derive(Clone, Default)]
pub(crate) struct IdleConnections {
    inner: Arc<Mutex<IdleInner>>,
}

#[derive(Default)]
struct IdleInner {
    next: u64,
    idle: std::collections::BTreeMap<u64, tokio_util::sync::CancellationToken>,
}

impl IdleConnections {
    /// Signals the connection idle the longest to close; false when none is idle.
    pub(crate) fn evict_oldest(&self) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.idle.pop_first() {
            Some((_, evict)) => {
                evict.cancel();
                true
            }
            None => false,
        }
    }

    /// A new connection, idle from now; `evicted` is cancelled if it is chosen to close.
    pub(crate) fn track(&self, evicted: tokio_util::sync::CancellationToken) -> IdleState {
        let state = IdleState {
            registry: self.clone(),
            evicted,
            key: Arc::new(Mutex::new(None)),
        };
        state.idle();
        state
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .idle
            .len()
    }
}

/// One connection's place among the [`IdleConnections`]; clones share it. Dropping the
/// last clone does not remove it: the connection calls [`IdleState::busy`] when it ends.
#[derive(Clone)]
pub(crate) struct IdleState {
    registry: IdleConnections,
    evicted: tokio_util::sync::CancellationToken,
    key: Arc<Mutex<Option<u64>>>,
}

impl IdleState {
    /// A request is being answered: the connection may not be chosen to close.
    pub(crate) fn busy(&self) {
        let mut key = self.key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = key.take() {
            let mut inner = self
                .registry
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            inner.idle.remove(&k);
        }
    }

    /// The answer is done: the connection waits for its next request, the newest idle.
    pub(crate) fn idle(&self) {
        let mut key = self.key.lock().unwrap_or_else(PoisonError::into_inner);
        if key.is_some() || self.evicted.is_cancelled() {
            return;
        }
        let mut inner = self
            .registry
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let k = inner.next;
        inner.next += 1;
        inner.idle.insert(k, self.evicted.clone());
        *key = Some(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_rate_then_refuses_until_it_refills() {
        let start = Instant::now();
        let mut b = TokenBucket::new(3, start);
        for _ in 0..3 {
            assert!(b.take(start).is_ok());
        }
        let wait = b.take(start).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(b.take(start + Duration::from_millis(400)).is_ok());
        assert!(b.take(start + Duration::from_millis(400)).is_err());
        // Never more than one second's worth, however long it rested.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn open_connections_per_address_are_capped_and_released() {
        let limits = PeerLimits::new(2, 1000);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let g1 = limits.admit(a).unwrap();
        let _g2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Refusal::TooMany(2)));
        // Another address is not affected.
        let _g3 = limits.admit(b).unwrap();
        drop(g1);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn new_connections_per_address_are_rate_limited() {
        let limits = PeerLimits::new(1000, 5);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..5 {
            drop(limits.admit(a).unwrap());
        }
        assert_eq!(limits.admit(a).err(), Some(Refusal::TooFast(5)));
        assert!(limits.admit("127.0.0.3".parse().unwrap()).is_ok());
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let limits = PeerLimits::new(10, 1_000_000);
        for i in 0..(FIRST_SWEEP * 4) as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(limits.admit(ip).unwrap());
        }
        // A million a second refills one token in a microsecond, so swept addresses
        // are full again; the map never holds much more than a sweep's worth.
        assert!(
            limits.remembered() <= FIRST_SWEEP * 2,
            "{}",
            limits.remembered()
        );
    }

    #[test]
    fn the_connection_idle_the_longest_is_evicted_and_busy_ones_never() {
        let registry = IdleConnections::default();
        let tokens: Vec<_> = (0..3)
            .map(|_| tokio_util::sync::CancellationToken::new())
            .collect();
        let states: Vec<_> = tokens.iter().map(|t| registry.track(t.clone())).collect();
        // The oldest is busy answering a request; then it is idle again, the newest.
        states[0].busy();
        assert!(registry.evict_oldest());
        assert!(tokens[1].is_cancelled() && !tokens[0].is_cancelled());
        states[0].idle();
        assert!(registry.evict_oldest());
        assert!(tokens[2].is_cancelled() && !tokens[0].is_cancelled());
        assert!(registry.evict_oldest());
        assert!(tokens[0].is_cancelled());
        assert!(!registry.evict_oldest());
        // An evicted connection never comes back into the list.
        states[0].idle();
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn publish_rate_zero_is_no_limit() {
        let rate = PublishRate::new(0);
        for _ in 0..10_000 {
            assert!(rate.admit().is_ok());
        }
        let rate = PublishRate::new(2);
        assert!(rate.admit().is_ok());
        assert!(rate.admit().is_ok());
        assert_eq!(rate.admit().unwrap_err().0, ErrorCode::RateLimited);
    }
}
