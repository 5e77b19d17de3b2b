//! Broker configuration: one serde struct whose fields document their defaults, loaded with
//! the precedence flags > `REWIND_*` environment > TOML file > defaults (spec §8).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

/// When a publish is acknowledged (spec §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge after the write is flushed and `fdatasync`ed; concurrent publishes share
    /// one flush (group commit).
    Durable,
    /// Acknowledge after the write; flush every `flush_interval_ms`. After an unclean
    /// shutdown, namespaces that had unflushed writes get a new epoch.
    Relaxed,
}

/// Retention limits of a namespace. `None` means no limit of that kind.
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

impl Retention {
    /// This retention with every limit that `over` sets replaced by `over`'s.
    pub fn overlaid(self, over: &Retention) -> Retention {
        Retention {
            max_events: over.max_events.or(self.max_events),
            max_bytes: over.max_bytes.or(self.max_bytes),
            max_age_secs: over.max_age_secs.or(self.max_age_secs),
        }
    }
}

/// Everything the broker can be told. Each field's doc states its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// Directory of the embedded store. Default `./rewind-data`.
    pub data_dir: PathBuf,
    /// When publishes are acknowledged. Default `durable`.
    pub durability: Durability,
    /// In `relaxed` mode, how often writes are flushed, in milliseconds. Default 100.
    pub flush_interval_ms: u64,
    /// How often the store's write-ahead log is folded into sled (a checkpoint), in
    /// milliseconds. Default 1000.
    pub checkpoint_interval_ms: u64,
    /// Write requests that may wait for the writer; when full, publishers get 503 with
    /// `Retry-After`. Default 4096.
    pub write_queue: usize,
    /// Most write requests applied together before one flush (group commit). Default 1024.
    pub max_group_commit: usize,
    /// Largest payload of one event, in bytes. Default 1 MiB (1048576).
    pub max_payload_bytes: usize,
    /// Largest HTTP request body, in bytes; larger bodies get 413. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Most events in one batch publish. Default 10000.
    pub max_batch_events: usize,
    /// Most events one read returns (`limit` is capped to this). Default 1000.
    pub max_read_events: usize,
    /// Most payload bytes one read returns; a page always holds at least one event.
    /// Default 4 MiB.
    pub max_read_bytes: usize,
    /// Longest `wait` of a long-poll read, in seconds. Default 60.
    pub max_wait_secs: u64,
    /// Default retention of every namespace; `PUT /v1/namespaces/{ns}` overrides it per
    /// namespace. Default: no count or size limit, `max_age_secs` 604800 (7 days).
    pub retention: Retention,
    /// How often retention is enforced, in milliseconds. Default 1000.
    pub retention_interval_ms: u64,
    /// How long an `Idempotency-Key` is remembered, in seconds. Default 3600.
    pub idempotency_window_secs: u64,
    /// Create a namespace on its first publish. Default true.
    pub auto_create: bool,
    /// Most concurrent client connections; further ones wait to be accepted. Default 10000.
    pub max_connections: usize,
    /// Memory the embedded store may use as its page cache, in bytes; a cap, filled only
    /// as data is written and read. Default 512 MiB: subscribers replaying a history that
    /// does not fit here catch up at about a third of the speed (`docs/benchmarks.md`).
    pub store_cache_bytes: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in seconds.
    /// Default 30.
    pub shutdown_timeout_secs: u64,
    /// Runs of live events kept per namespace for subscribers that keep up (a run is up to
    /// 256 consecutive events and about 4 KiB of payload, or one larger event); one that
    /// falls further behind reads the log instead. Default 512: about 2 MiB of small
    /// events per busy namespace, held whether or not its subscribers read.
    pub fanout_buffer: usize,
    /// WebSocket: seconds between the broker's `ping`s. Default 25.
    pub ws_ping_interval_secs: u64,
    /// WebSocket: seconds after a `ping` within which the client must send something,
    /// else the connection is dropped. Default 20.
    pub ws_ping_timeout_secs: u64,
    /// WebSocket: most namespaces open on one connection. Default 100.
    pub ws_max_namespaces: usize,
    /// WebSocket: largest incoming frame or message, in bytes; larger closes the connection
    /// with 1009 before the payload is read. Default 1114112 (1 MiB of payload plus 64 KiB
    /// for the frame around it).
    pub ws_max_frame_bytes: usize,
    /// WebSocket: read buffer per connection, in bytes. Default 2048: it is allocated for
    /// every connection, idle or not, and most of a dashboard's connections only read
    /// small frames; publish-heavy clients gain from a larger one.
    pub ws_read_buffer_bytes: usize,
    /// WebSocket: the most bytes one socket write carries. Default 65536. Outgoing frames
    /// are shared, already-framed bytes handed to one vectored write, so this is not a
    /// buffer and costs no memory; it only bounds how much one write takes on.
    pub ws_write_buffer_bytes: usize,
    /// WebSocket: publishes one connection may have waiting for durability. Default 64.
    pub ws_max_inflight_publishes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("./rewind-data"),
            durability: Durability::Durable,
            flush_interval_ms: 100,
            checkpoint_interval_ms: 1000,
            write_queue: 4096,
            max_group_commit: 1024,
            max_payload_bytes: 1 << 20,
            max_body_bytes: 16 << 20,
            max_batch_events: 10_000,
            max_read_events: 1000,
            max_read_bytes: 4 << 20,
            max_wait_secs: 60,
            retention: Retention {
                max_events: None,
                max_bytes: None,
                max_age_secs: Some(7 * 24 * 3600),
            },
            retention_interval_ms: 1000,
            idempotency_window_secs: 3600,
            auto_create: true,
            max_connections: 10_000,
            store_cache_bytes: 512 << 20,
            shutdown_timeout_secs: 30,
            fanout_buffer: 512,
            ws_ping_interval_secs: 25,
            ws_ping_timeout_secs: 20,
            ws_max_namespaces: 100,
            ws_max_frame_bytes: (1 << 20) + (64 << 10),
            ws_read_buffer_bytes: 2048,
            ws_write_buffer_bytes: 64 << 10,
            ws_max_inflight_publishes: 64,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The TOML file is not valid for this struct.
    #[error("bad config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: toml::de::Error,
    },
    /// A value is out of its allowed range.
    #[error("bad config: {0}")]
    Invalid(String),
}

/// The `rewind serve` flags. Each one can also come from its `REWIND_*` variable; a flag
/// wins over the variable, and both win over the TOML file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (keys are the long option names with `_` for `-`)
    #[arg(long, env = "REWIND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070]
    #[arg(long, env = "REWIND_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded store [default: ./rewind-data]
    #[arg(long, env = "REWIND_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When publishes are acknowledged [default: durable]
    #[arg(long, env = "REWIND_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// Relaxed mode: flush interval in ms [default: 100]
    #[arg(long, env = "REWIND_FLUSH_INTERVAL_MS", value_name = "MS")]
    pub flush_interval_ms: Option<u64>,
    /// How often the write-ahead log is folded into the store, in ms [default: 1000]
    #[arg(long, env = "REWIND_CHECKPOINT_INTERVAL_MS", value_name = "MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Write requests that may queue before publishers get 503 [default: 4096]
    #[arg(long, env = "REWIND_WRITE_QUEUE", value_name = "N")]
    pub write_queue: Option<usize>,
    /// Most write requests sharing one flush [default: 1024]
    #[arg(long, env = "REWIND_MAX_GROUP_COMMIT", value_name = "N")]
    pub max_group_commit: Option<usize>,
    /// Largest event payload in bytes [default: 1048576]
    #[arg(long, env = "REWIND_MAX_PAYLOAD_BYTES", value_name = "BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Largest HTTP request body in bytes [default: 16777216]
    #[arg(long, env = "REWIND_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most events in one batch publish [default: 10000]
    #[arg(long, env = "REWIND_MAX_BATCH_EVENTS", value_name = "N")]
    pub max_batch_events: Option<usize>,
    /// Most events one read returns [default: 1000]
    #[arg(long, env = "REWIND_MAX_READ_EVENTS", value_name = "N")]
    pub max_read_events: Option<usize>,
    /// Most payload bytes one read returns [default: 4194304]
    #[arg(long, env = "REWIND_MAX_READ_BYTES", value_name = "BYTES")]
    pub max_read_bytes: Option<usize>,
    /// Longest long-poll wait in seconds [default: 60]
    #[arg(long, env = "REWIND_MAX_WAIT_SECS", value_name = "SECS")]
    pub max_wait_secs: Option<u64>,
    /// Default retention: most events per namespace [default: unlimited]
    #[arg(long, env = "REWIND_RETENTION_MAX_EVENTS", value_name = "N")]
    pub retention_max_events: Option<u64>,
    /// Default retention: most bytes per namespace [default: unlimited]
    #[arg(long, env = "REWIND_RETENTION_MAX_BYTES", value_name = "BYTES")]
    pub retention_max_bytes: Option<u64>,
    /// Default retention: oldest event age in seconds [default: 604800]
    #[arg(long, env = "REWIND_RETENTION_MAX_AGE_SECS", value_name = "SECS")]
    pub retention_max_age_secs: Option<u64>,
    /// How often retention runs, in ms [default: 1000]
    #[arg(long, env = "REWIND_RETENTION_INTERVAL_MS", value_name = "MS")]
    pub retention_interval_ms: Option<u64>,
    /// How long an Idempotency-Key is remembered, in seconds [default: 3600]
    #[arg(long, env = "REWIND_IDEMPOTENCY_WINDOW_SECS", value_name = "SECS")]
    pub idempotency_window_secs: Option<u64>,
    /// Create namespaces on first publish [default: true]
    #[arg(long, env = "REWIND_AUTO_CREATE", value_name = "BOOL")]
    pub auto_create: Option<bool>,
    /// Most concurrent connections [default: 10000]
    #[arg(long, env = "REWIND_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Page cache of the embedded store in bytes [default: 536870912]
    #[arg(long, env = "REWIND_STORE_CACHE_BYTES", value_name = "BYTES")]
    pub store_cache_bytes: Option<u64>,
    /// Seconds in-flight requests get to finish on shutdown [default: 30]
    #[arg(long, env = "REWIND_SHUTDOWN_TIMEOUT_SECS", value_name = "SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Runs of live events kept per namespace for subscribers [default: 512]
    #[arg(long, env = "REWIND_FANOUT_BUFFER", value_name = "N")]
    pub fanout_buffer: Option<usize>,
    /// WebSocket ping interval in seconds [default: 25]
    #[arg(long, env = "REWIND_WS_PING_INTERVAL_SECS", value_name = "SECS")]
    pub ws_ping_interval_secs: Option<u64>,
    /// WebSocket: silence allowed after a ping, in seconds [default: 20]
    #[arg(long, env = "REWIND_WS_PING_TIMEOUT_SECS", value_name = "SECS")]
    pub ws_ping_timeout_secs: Option<u64>,
    /// WebSocket: namespaces per connection [default: 100]
    #[arg(long, env = "REWIND_WS_MAX_NAMESPACES", value_name = "N")]
    pub ws_max_namespaces: Option<usize>,
    /// WebSocket: largest incoming frame in bytes [default: 1114112]
    #[arg(long, env = "REWIND_WS_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub ws_max_frame_bytes: Option<usize>,
    /// WebSocket: read buffer per connection in bytes [default: 2048]
    #[arg(long, env = "REWIND_WS_READ_BUFFER_BYTES", value_name = "BYTES")]
    pub ws_read_buffer_bytes: Option<usize>,
    /// WebSocket: most bytes per socket write [default: 65536]
    #[arg(long, env = "REWIND_WS_WRITE_BUFFER_BYTES", value_name = "BYTES")]
    pub ws_write_buffer_bytes: Option<usize>,
    /// WebSocket: publishes in flight per connection [default: 64]
    #[arg(long, env = "REWIND_WS_MAX_INFLIGHT_PUBLISHES", value_name = "N")]
    pub ws_max_inflight_publishes: Option<usize>,
}

macro_rules! overlay {
    ($cfg:ident, $args:ident, $($field:ident),*) => {
        $(if let Some(v) = $args.$field.clone() { $cfg.$field = v; })*
    };
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_toml_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Defaults, then the TOML file named by `args.config`, then the flags and variables.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let mut cfg = match &args.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        overlay!(
            cfg,
            args,
            listen,
            data_dir,
            durability,
            flush_interval_ms,
            checkpoint_interval_ms,
            write_queue,
            max_group_commit,
            max_payload_bytes,
            max_body_bytes,
            max_batch_events,
            max_read_events,
            max_read_bytes,
            max_wait_secs,
            retention_interval_ms,
            idempotency_window_secs,
            auto_create,
            max_connections,
            store_cache_bytes,
            shutdown_timeout_secs,
            fanout_buffer,
            ws_ping_interval_secs,
            ws_ping_timeout_secs,
            ws_max_namespaces,
            ws_max_frame_bytes,
            ws_read_buffer_bytes,
            ws_write_buffer_bytes,
            ws_max_inflight_publishes
        );
        cfg.retention = cfg.retention.overlaid(&Retention {
            max_events: args.retention_max_events,
            max_bytes: args.retention_max_bytes,
            max_age_secs: args.retention_max_age_secs,
        });
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects values that would make the broker misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("flush_interval_ms", self.flush_interval_ms),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("write_queue", self.write_queue as u64),
            ("max_group_commit", self.max_group_commit as u64),
            ("max_payload_bytes", self.max_payload_bytes as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_batch_events", self.max_batch_events as u64),
            ("max_read_events", self.max_read_events as u64),
            ("max_read_bytes", self.max_read_bytes as u64),
            ("retention_interval_ms", self.retention_interval_ms),
            ("max_connections", self.max_connections as u64),
            ("fanout_buffer", self.fanout_buffer as u64),
            ("ws_ping_interval_secs", self.ws_ping_interval_secs),
            ("ws_ping_timeout_secs", self.ws_ping_timeout_secs),
            ("ws_max_namespaces", self.ws_max_namespaces as u64),
            ("ws_max_frame_bytes", self.ws_max_frame_bytes as u64),
            ("ws_read_buffer_bytes", self.ws_read_buffer_bytes as u64),
            (
                "ws_max_inflight_publishes",
                self.ws_max_inflight_publishes as u64,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_flags_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rewind.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nwrite_queue = 7\n[retention]\nmax_events = 5\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            write_queue: Some(9),
            retention_max_bytes: Some(100),
            ..ServeArgs::default()
        };
        let cfg = Config::load(&args).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(cfg.write_queue, 9);
        assert_eq!(cfg.retention.max_events, Some(5));
        assert_eq!(cfg.retention.max_bytes, Some(100));
        assert_eq!(cfg.max_batch_events, Config::default().max_batch_events);
    }

    #[test]
    fn rejects_unknown_keys_and_zero_limits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rewind.toml");
        std::fs::write(&file, "lissen = \"x\"\n").unwrap();
        assert!(Config::from_toml_file(&file).is_err());
        let args = ServeArgs {
            write_queue: Some(0),
            ..ServeArgs::default()
        };
        assert!(Config::load(&args).is_err());
    }
}
