//! The policies the store enforces: how long a namespace's events are kept
//! ([`Retention`]) and when a write counts as done ([`Durability`]). The configuration
//! sets the broker's defaults; a namespace may set its own retention.

use serde::{Deserialize, Serialize};

/// When a publish is acknowledged (spec §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge after the write is flushed and `fdatasync`ed; concurrent publishes share
    /// one flush (group commit).
    Durable,
    /// Acknowledge after the write; flush every `flush_interval_ms`. After an unclean
    /// shutdown, namespaces that had unflushed writes get a new epoch.
    Relaxed,
}

/// Retention limits of a namespace. `None` means no limit of that kind in the
/// configuration, and "not set here, the configured default applies" in a namespace's own
/// limits, where [`NO_LIMIT`] says "no limit" instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Keep at most this many events.
    pub max_events: Option<u64>,
    /// Keep at most this many bytes of stored events.
    pub max_bytes: Option<u64>,
    /// Drop events older than this many seconds.
    pub max_age_secs: Option<u64>,
}

/// A retention limit of `u64::MAX` events, bytes or seconds, which is no limit: what
/// `none` (flags, variables, TOML) and `null` (`PUT /v1/namespaces/{ns}`) store where a
/// limit must be told apart from one not set. Enforcing it removes nothing.
pub const NO_LIMIT: u64 = u64::MAX;

impl Retention {
    /// The limits in force, with [`NO_LIMIT`] shown as `None` (as the HTTP API shows it,
    /// `null`).
    pub fn in_force(self) -> Retention {
        let limit = |v: Option<u64>| v.filter(|&n| n != NO_LIMIT);
        Retention {
            max_events: limit(self.max_events),
            max_bytes: limit(self.max_bytes),
            max_age_secs: limit(self.max_age_secs),
        }
    }

    /// This retention with every limit that `over` sets replaced by `over`'s.
    pub fn overlaid(self, over: &Retention) -> Retention {
        Retention {
            max_events: over.max_events.or(self.max_events),
            max_bytes: over.max_bytes.or(self.max_bytes),
            max_age_secs: over.max_age_secs.or(self.max_age_secs),
        }
    }
}
