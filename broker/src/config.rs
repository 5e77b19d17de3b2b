//! Broker configuration: one struct whose fields document their defaults, loaded with the
//! precedence flags > `REWIND_*` environment > TOML file > defaults (spec §8).
//!
//! Every option has one name: the TOML key, the flag without `--` and with `_` for `-`,
//! and the variable without `REWIND_` in lower case (`write_queue`, `--write-queue`,
//! `REWIND_WRITE_QUEUE`). Flags are parsed by clap; variables and the file are read here,
//! so every error names where the value came from (the variable, or the file and key),
//! and `--help` shows the defaults of [`Config::default`].

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;

pub use crate::storage::{Durability, Retention, NO_LIMIT};

/// Everything the broker can be told. Each field's doc states its default.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on, `HOST:PORT`: HOST is an IP address (IPv6 in brackets) or a
    /// name, resolved at start; the broker binds the first of its addresses that it can,
    /// in the resolver's order. Default `127.0.0.1:7070`.
    pub listen: ListenAddr,
    /// Directory of the embedded store. Default `./rewind-data`.
    pub data_dir: PathBuf,
    /// When publishes are acknowledged. Default `durable`.
    pub durability: Durability,
    /// In `relaxed` mode, how often writes are flushed, in milliseconds. Default 100.
    pub flush_interval_ms: u64,
    /// How often the store takes a checkpoint — syncs segment files, writes idempotency
    /// records into sled and the `manifest`, trims the write-ahead log — in milliseconds.
    /// Default 1000.
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
    /// Seconds a client has to send a whole HTTP request body, counted from the end of
    /// its headers; a deadline for the body as a whole, so a body that trickles in byte by
    /// byte is bounded too. Past it: 408 `request_timeout`, the connection is closed and
    /// nothing of the request is kept. Default 30, as the headers' read timeout.
    pub http_body_timeout_secs: u64,
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
    /// namespace. Default: no count or size limit, `max_age_secs` 604800 (7 days). A
    /// limit of 0 is refused (it would remove every event); `none` means no limit.
    pub retention: Retention,
    /// How often retention is enforced, in milliseconds. Default 1000.
    pub retention_interval_ms: u64,
    /// How long an `Idempotency-Key` is remembered, in seconds. Default 3600.
    pub idempotency_window_secs: u64,
    /// Create a namespace on its first publish. Default true.
    pub auto_create: bool,
    /// Most concurrent client connections; further ones wait to be accepted. Default 10000.
    pub max_connections: usize,
    /// Memory sled may use as its page cache, in bytes; a cap, filled only as data is
    /// written and read. sled holds only idempotency records; events live in segment files
    /// read through the OS page cache (`docs/storage.md`). Default 512 MiB.
    pub store_cache_bytes: u64,
    /// Size at which a namespace's log starts a new segment file, in bytes; retention
    /// removes whole segments, so a namespace holds up to this much more than its limits
    /// allow. A segment holds at least one event, however large. Default 16 MiB (16777216).
    pub segment_bytes: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in seconds.
    /// Default 30.
    pub shutdown_timeout_secs: u64,
    /// Runs of live events kept per namespace for subscribers that keep up (a run is up to
    /// 256 consecutive events and about 4 KiB of payload, or one larger event); one that
    /// falls further behind reads the log instead. Default 512: about 2 MiB of small
    /// events per busy namespace with a subscriber (none without one), within
    /// `fanout_memory_bytes` for all namespaces together.
    pub fanout_buffer: usize,
    /// Bytes the live runs of every namespace may hold together, for the whole broker
    /// (events and their built frames, as `fanout::SharedRun` counts them). Past it the
    /// oldest runs, whatever their namespace, are let go, and subscribers that still
    /// needed them read the log. Default 64 MiB; 0 keeps no live runs (every subscriber
    /// reads the log).
    pub fanout_memory_bytes: u64,
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
    /// WebSocket: publishes one connection may have unanswered (waiting for durability, or
    /// for the answers of earlier publishes); past it the broker stops reading the
    /// connection until one is answered. Default 256: one connection's throughput is
    /// about this many publishes per commit round trip, and 64 held a pipelining client to
    /// about half of what 256 allows (`docs/benchmarks.md`).
    pub ws_max_inflight_publishes: usize,
    /// WebSocket: bytes waiting to be written to one connection (answers, events, pongs)
    /// past which the broker stops reading it until the client reads. Default 1048576
    /// (1 MiB): 10,000 pipelined publishes' answers fit, whether or not the client reads
    /// them while it sends.
    pub ws_max_unsent_bytes: usize,
    /// Threads for blocking work (store reads, checkpoints, opening the store) at most;
    /// more work waits in tokio's queue. Default 32: each thread keeps memory of its own
    /// (its stack, mimalloc's per-thread pages), and tokio's default of 512 let stalled
    /// WebSocket subscribers catching up grow RSS by about 150 KiB a thread
    /// (`tests/tests/ws_catch_up_memory.rs`).
    pub blocking_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ListenAddr("127.0.0.1:7070".to_owned()),
            data_dir: PathBuf::from("./rewind-data"),
            durability: Durability::Durable,
            flush_interval_ms: 100,
            checkpoint_interval_ms: 1000,
            write_queue: 4096,
            max_group_commit: 1024,
            max_payload_bytes: 1 << 20,
            max_body_bytes: 16 << 20,
            http_body_timeout_secs: 30,
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
            segment_bytes: 16 << 20,
            shutdown_timeout_secs: 30,
            fanout_buffer: 512,
            fanout_memory_bytes: 64 << 20,
            ws_ping_interval_secs: 25,
            ws_ping_timeout_secs: 20,
            ws_max_namespaces: 100,
            ws_max_frame_bytes: (1 << 20) + (64 << 10),
            ws_read_buffer_bytes: 2048,
            ws_write_buffer_bytes: 64 << 10,
            ws_max_inflight_publishes: 256,
            ws_max_unsent_bytes: 1 << 20,
            blocking_threads: 32,
        }
    }
}

/// Where a value came from, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A flag of `rewind serve`.
    Flag {
        /// Its name, with `--`.
        flag: String,
    },
    /// A `REWIND_*` environment variable.
    Variable {
        /// Its name.
        name: String,
        /// Its value.
        value: String,
    },
    /// A key of the TOML file.
    File {
        /// The file.
        path: PathBuf,
        /// The key as written there (`retention.max_age_secs` for one in a table).
        key: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag { flag } => write!(f, "{flag}"),
            Origin::Variable { name, value } => {
                write!(f, "environment variable {name}={value:?}")
            }
            Origin::File { path, key } => {
                write!(f, "config file {}, key `{key}`", path.display())
            }
        }
    }
}

/// Why the configuration could not be loaded. Each is one line (the TOML syntax error
/// adds the file's line it points at) naming where the bad value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The TOML file is not TOML.
    #[error("config file {} is not valid TOML", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and what.
        source: toml::de::Error,
    },
    /// A value from a flag, a variable or the file is not one the option takes.
    #[error("{origin}: {message}")]
    Value {
        /// Where it came from.
        origin: Origin,
        /// What is wrong with it.
        message: String,
    },
    /// A value is out of its allowed range (from [`Config::validate`], which does not
    /// know where the value came from).
    #[error("bad config: {0}")]
    Invalid(String),
}

/// The names of the retention options, which live in [`Config::retention`].
const RETENTION_OPTIONS: [&str; 3] = [
    "retention_max_events",
    "retention_max_bytes",
    "retention_max_age_secs",
];

/// The flag's help line: `summary`, then the default from [`Config::default`] and the
/// variable, both derived from the option's name.
fn flag_help(option: &str, summary: &str) -> String {
    let default = Config::default()
        .show(option)
        .unwrap_or_else(|| "none".to_owned());
    format!(
        "{summary} [default: {default}] [env: REWIND_{}]",
        option.to_uppercase()
    )
}

/// A retention flag: a positive number, or `none` ([`NO_LIMIT`]).
fn parse_limit(text: &str) -> Result<u64, String> {
    Limit::from_text(text.trim(), "").map(|l| l.0.unwrap_or(NO_LIMIT))
}

/// The parser of `option`'s flag: the same reading, and the same messages, as its
/// variable's. A bad flag is then reported as `--flag: message` (see `main.rs`).
fn flag<T: OptionValue + Clone + Send + Sync + 'static>(
    option: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text| T::read(Raw::Text(text), option)
}

/// The `rewind serve` flags. Each can also come from its `REWIND_*` variable (read by
/// [`Config::load`], not by clap, so that its errors name the variable); a flag wins over
/// the variable, and both win over the TOML file. A retention flag of `none` is
/// [`NO_LIMIT`].
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file: its keys are the option names below with `_` for `-`
    /// (`write_queue = 64`, `retention_max_age_secs = "none"`)
    #[arg(long, env = "REWIND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Start even if stored files are damaged: keep every record whose checksum holds, and
    /// give each namespace that lost anything a new epoch, its surviving events written
    /// again after its old `next` (docs/storage.md). Without it, damage refuses the start.
    #[arg(long)]
    pub recover: bool,
    #[arg(long, value_name = "HOST:PORT", value_parser = flag::<ListenAddr>("listen"),
        help = flag_help("listen", "Address to listen on; a host name binds its first address"))]
    pub listen: Option<ListenAddr>,
    #[arg(long, value_name = "DIR", value_parser = flag::<PathBuf>("data_dir"),
        help = flag_help("data_dir", "Directory of the embedded store"))]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_name = "durable|relaxed", value_parser = flag::<Durability>("durability"),
        help = flag_help("durability", "When publishes are acknowledged"))]
    pub durability: Option<Durability>,
    #[arg(long, value_name = "MS", value_parser = flag::<u64>("flush_interval_ms"),
        help = flag_help("flush_interval_ms", "Relaxed mode: flush interval in ms"))]
    pub flush_interval_ms: Option<u64>,
    #[arg(long, value_name = "MS", value_parser = flag::<u64>("checkpoint_interval_ms"),
        help = flag_help("checkpoint_interval_ms", "How often the store checkpoints (segments synced, manifest written, write-ahead log trimmed), in ms"))]
    pub checkpoint_interval_ms: Option<u64>,
    #[arg(long, value_name = "N", value_parser = flag::<usize>("write_queue"),
        help = flag_help("write_queue", "Write requests that may queue before publishers get 503"))]
    pub write_queue: Option<usize>,
    #[arg(long, value_name = "N", value_parser = flag::<usize>("max_group_commit"),
        help = flag_help("max_group_commit", "Most write requests sharing one flush"))]
    pub max_group_commit: Option<usize>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<usize>("max_payload_bytes"),
        help = flag_help("max_payload_bytes", "Largest event payload in bytes"))]
    pub max_payload_bytes: Option<usize>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<usize>("max_body_bytes"),
        help = flag_help("max_body_bytes", "Largest HTTP request body in bytes"))]
    pub max_body_bytes: Option<usize>,
    #[arg(long, value_name = "SECS", value_parser = flag::<u64>("http_body_timeout_secs"),
        help = flag_help("http_body_timeout_secs", "Seconds a client has to send a whole HTTP request body"))]
    pub http_body_timeout_secs: Option<u64>,
    #[arg(long, value_name = "N", value_parser = flag::<usize>("max_batch_events"),
        help = flag_help("max_batch_events", "Most events in one batch publish"))]
    pub max_batch_events: Option<usize>,
    #[arg(long, value_name = "N", value_parser = flag::<usize>("max_read_events"),
        help = flag_help("max_read_events", "Most events one read returns"))]
    pub max_read_events: Option<usize>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<usize>("max_read_bytes"),
        help = flag_help("max_read_bytes", "Most payload bytes one read returns"))]
    pub max_read_bytes: Option<usize>,
    #[arg(long, value_name = "SECS", value_parser = flag::<u64>("max_wait_secs"),
        help = flag_help("max_wait_secs", "Longest long-poll wait in seconds"))]
    pub max_wait_secs: Option<u64>,
    #[arg(long, value_name = "N|none", value_parser = parse_limit,
        help = flag_help("retention_max_events", "Default retention: most events per namespace, or none"))]
    pub retention_max_events: Option<u64>,
    #[arg(long, value_name = "BYTES|none", value_parser = parse_limit,
        help = flag_help("retention_max_bytes", "Default retention: most bytes per namespace, or none"))]
    pub retention_max_bytes: Option<u64>,
    #[arg(long, value_name = "SECS|none", value_parser = parse_limit,
        help = flag_help("retention_max_age_secs", "Default retention: oldest event age in seconds, or none"))]
    pub retention_max_age_secs: Option<u64>,
    #[arg(long, value_name = "MS", value_parser = flag::<u64>("retention_interval_ms"),
        help = flag_help("retention_interval_ms", "How often retention runs, in ms"))]
    pub retention_interval_ms: Option<u64>,
    #[arg(long, value_name = "SECS", value_parser = flag::<u64>("idempotency_window_secs"),
        help = flag_help("idempotency_window_secs", "How long an Idempotency-Key is remembered, in seconds"))]
    pub idempotency_window_secs: Option<u64>,
    #[arg(long, value_name = "BOOL", value_parser = flag::<bool>("auto_create"),
        help = flag_help("auto_create", "Create namespaces on first publish"))]
    pub auto_create: Option<bool>,
    #[arg(long, value_name = "N", value_parser = flag::<usize>("max_connections"),
        help = flag_help("max_connections", "Most concurrent connections"))]
    pub max_connections: Option<usize>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<u64>("store_cache_bytes"),
        help = flag_help("store_cache_bytes", "Page cache of the embedded store in bytes"))]
    pub store_cache_bytes: Option<u64>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<u64>("segment_bytes"),
        help = flag_help("segment_bytes", "Size at which a namespace's log starts a new segment file, in bytes"))]
    pub segment_bytes: Option<u64>,
    #[arg(long, value_name = "SECS", value_parser = flag::<u64>("shutdown_timeout_secs"),
        help = flag_help("shutdown_timeout_secs", "Seconds in-flight requests get to finish on shutdown"))]
    pub shutdown_timeout_secs: Option<u64>,
    #[arg(long, value_name = "N", value_parser = flag::<usize>("fanout_buffer"),
        help = flag_help("fanout_buffer", "Runs of live events kept per namespace for subscribers"))]
    pub fanout_buffer: Option<usize>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<u64>("fanout_memory_bytes"),
        help = flag_help("fanout_memory_bytes", "Bytes of live events held for subscribers, for the whole broker"))]
    pub fanout_memory_bytes: Option<u64>,
    #[arg(long, value_name = "SECS", value_parser = flag::<u64>("ws_ping_interval_secs"),
        help = flag_help("ws_ping_interval_secs", "WebSocket ping interval in seconds"))]
    pub ws_ping_interval_secs: Option<u64>,
    #[arg(long, value_name = "SECS", value_parser = flag::<u64>("ws_ping_timeout_secs"),
        help = flag_help("ws_ping_timeout_secs", "WebSocket: silence allowed after a ping, in seconds"))]
    pub ws_ping_timeout_secs: Option<u64>,
    #[arg(long, value_name = "N", value_parser = flag::<usize>("ws_max_namespaces"),
        help = flag_help("ws_max_namespaces", "WebSocket: namespaces per connection"))]
    pub ws_max_namespaces: Option<usize>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<usize>("ws_max_frame_bytes"),
        help = flag_help("ws_max_frame_bytes", "WebSocket: largest incoming frame in bytes"))]
    pub ws_max_frame_bytes: Option<usize>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<usize>("ws_read_buffer_bytes"),
        help = flag_help("ws_read_buffer_bytes", "WebSocket: read buffer per connection in bytes"))]
    pub ws_read_buffer_bytes: Option<usize>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<usize>("ws_write_buffer_bytes"),
        help = flag_help("ws_write_buffer_bytes", "WebSocket: most bytes per socket write"))]
    pub ws_write_buffer_bytes: Option<usize>,
    #[arg(long, value_name = "N", value_parser = flag::<usize>("ws_max_inflight_publishes"),
        help = flag_help("ws_max_inflight_publishes", "WebSocket: publishes in flight per connection"))]
    pub ws_max_inflight_publishes: Option<usize>,
    #[arg(long, value_name = "BYTES", value_parser = flag::<usize>("ws_max_unsent_bytes"),
        help = flag_help("ws_max_unsent_bytes", "WebSocket: unsent bytes per connection before it is no longer read"))]
    pub ws_max_unsent_bytes: Option<usize>,
    #[arg(long, value_name = "N", value_parser = flag::<usize>("blocking_threads"),
        help = flag_help("blocking_threads", "Threads for blocking work (store reads, checkpoints) at most"))]
    pub blocking_threads: Option<usize>,
}

/// A value as a variable (text) or the TOML file (a TOML value) gives it.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Text(&'a str),
    Toml(&'a toml::Value),
}

/// A type an option can have: how it is read from text and from TOML, and shown.
/// `option` is the option being read, for messages that give its range.
trait OptionValue: Sized {
    /// What a good value looks like, for error messages.
    const EXPECTED: &'static str;
    fn from_text(text: &str, option: &str) -> Result<Self, String>;
    /// From TOML: by default a TOML string read as text.
    fn from_toml(value: &toml::Value, option: &str) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Self::from_text(s, option),
            other => Err(format!(
                "expected {}, found {} {other}",
                Self::EXPECTED,
                other.type_str()
            )),
        }
    }
    fn read(raw: Raw<'_>, option: &str) -> Result<Self, String> {
        match raw {
            Raw::Text(t) => Self::from_text(t.trim(), option),
            Raw::Toml(v) => Self::from_toml(v, option),
        }
    }
    fn show(&self) -> String;
}

/// The options that must be at least 1 (0 would stop the broker working, or remove every
/// event at once); every other whole-number option takes 0. [`Config::check`] enforces it.
const AT_LEAST_ONE: &[&str] = &[
    "flush_interval_ms",
    "checkpoint_interval_ms",
    "write_queue",
    "max_group_commit",
    "max_payload_bytes",
    "max_body_bytes",
    "http_body_timeout_secs",
    "max_batch_events",
    "max_read_events",
    "max_read_bytes",
    "retention_interval_ms",
    "max_connections",
    "segment_bytes",
    "fanout_buffer",
    "ws_ping_interval_secs",
    "ws_ping_timeout_secs",
    "ws_max_namespaces",
    "ws_max_frame_bytes",
    "ws_read_buffer_bytes",
    "ws_max_inflight_publishes",
    "ws_max_unsent_bytes",
    "blocking_threads",
    "retention_max_events",
    "retention_max_bytes",
    "retention_max_age_secs",
];

/// The range of a whole-number option, for messages: "a whole number from 1 up".
fn whole_range(option: &str) -> String {
    let least = u8::from(AT_LEAST_ONE.contains(&option));
    format!("a whole number from {least} up")
}

/// A whole number from text: the message gives the option's real range, and says so
/// when the number is too large for it (`max`).
fn whole_text<T: std::str::FromStr>(text: &str, option: &str, max: u64) -> Result<T, String> {
    text.parse().map_err(|_| {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            format!("{text} is over the largest value, {max}")
        } else {
            format!("expected {}, found {text:?}", whole_range(option))
        }
    })
}

fn whole_number<T: TryFrom<i64>>(raw_value: &toml::Value, option: &str) -> Result<T, String> {
    match raw_value {
        toml::Value::Integer(n) => {
            T::try_from(*n).map_err(|_| format!("expected {}, found {n}", whole_range(option)))
        }
        other => Err(format!(
            "expected {}, found {} {other}",
            whole_range(option),
            other.type_str()
        )),
    }
}

macro_rules! whole_number_option {
    ($($t:ty),*) => {$(
        impl OptionValue for $t {
            const EXPECTED: &'static str = "a whole number";
            fn from_text(text: &str, option: &str) -> Result<Self, String> {
                whole_text(text, option, <$t>::MAX as u64)
            }
            fn from_toml(value: &toml::Value, option: &str) -> Result<Self, String> {
                whole_number(value, option)
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
whole_number_option!(u64, usize);

impl OptionValue for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        match text {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("expected true or false, found {text:?}")),
        }
    }
    fn from_toml(value: &toml::Value, _option: &str) -> Result<Self, String> {
        value
            .as_bool()
            .ok_or_else(|| format!("expected true or false, found {} {value}", value.type_str()))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for PathBuf {
    const EXPECTED: &'static str = "a path";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the path is empty".to_owned());
        }
        Ok(PathBuf::from(text))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl OptionValue for Durability {
    const EXPECTED: &'static str = "\"durable\" or \"relaxed\"";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        match text {
            "durable" => Ok(Durability::Durable),
            "relaxed" => Ok(Durability::Relaxed),
            _ => Err(format!("expected durable or relaxed, found {text:?}")),
        }
    }
    fn show(&self) -> String {
        match self {
            Durability::Durable => "durable",
            Durability::Relaxed => "relaxed",
        }
        .to_owned()
    }
}

/// An address to listen on, `HOST:PORT`: HOST is an IP address (IPv6 in brackets) or a
/// name to resolve, PORT a number from 0 to 65535 (0: any free port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr(String);

impl ListenAddr {
    /// As written, for `TcpListener::bind` (which resolves a name).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or("expected HOST:PORT (an IP address or a host name, and a port)")?;
        if host.is_empty() {
            return Err("the host is empty (0.0.0.0 means every IPv4 address)".to_owned());
        }
        port.parse::<u16>()
            .map_err(|_| format!("the port {port:?} is not a number from 0 to 65535"))?;
        Ok(ListenAddr(text.to_owned()))
    }
}

impl OptionValue for ListenAddr {
    const EXPECTED: &'static str = "\"HOST:PORT\"";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        text.parse()
    }
    fn show(&self) -> String {
        self.0.clone()
    }
}

/// A retention limit: a number from 1 up, or `none`.
struct Limit(Option<u64>);

impl Limit {
    fn checked(n: u64) -> Result<Limit, String> {
        if n == 0 {
            return Err("0 would remove every event at once; use none for no limit".to_owned());
        }
        Ok(Limit((n != NO_LIMIT).then_some(n)))
    }
}

impl OptionValue for Limit {
    const EXPECTED: &'static str = "a whole number from 1 up, or \"none\"";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("none") {
            return Ok(Limit(None));
        }
        let n = text
            .parse()
            .map_err(|_| format!("expected a whole number from 1 up, or none, found {text:?}"))?;
        Limit::checked(n)
    }
    fn from_toml(value: &toml::Value, option: &str) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Self::from_text(s, option),
            toml::Value::Integer(n) => Limit::checked(
                u64::try_from(*n).map_err(|_| format!("expected {}, found {n}", Self::EXPECTED))?,
            ),
            other => Err(format!(
                "expected {}, found {} {other}",
                Self::EXPECTED,
                other.type_str()
            )),
        }
    }
    fn show(&self) -> String {
        self.0.map_or_else(|| "none".to_owned(), |n| n.to_string())
    }
}

/// Generates, from the names of the options that are plain fields of [`Config`] (the
/// retention ones are added by hand), the list of every option, reading one from text or
/// TOML, showing one, and laying the flags over a config.
macro_rules! options {
    ($($field:ident),* $(,)?) => {
        /// Every option's name, in `--help` order.
        pub const OPTIONS: &[&str] = &[
            $(stringify!($field),)*
            RETENTION_OPTIONS[0], RETENTION_OPTIONS[1], RETENTION_OPTIONS[2],
        ];

        impl Config {
            /// Sets `option` from `raw`; `Ok(false)` if there is no such option.
            fn set(&mut self, option: &str, raw: Raw<'_>) -> Result<bool, String> {
                match option {
                    $(stringify!($field) => self.$field = OptionValue::read(raw, option)?,)*
                    "retention_max_events" => {
                        self.retention.max_events = Limit::read(raw, option)?.0
                    }
                    "retention_max_bytes" => {
                        self.retention.max_bytes = Limit::read(raw, option)?.0
                    }
                    "retention_max_age_secs" => {
                        self.retention.max_age_secs = Limit::read(raw, option)?.0
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            }

            /// `option`'s value as a flag would take it; `None` if there is no such option.
            fn show(&self, option: &str) -> Option<String> {
                Some(match option {
                    $(stringify!($field) => self.$field.show(),)*
                    "retention_max_events" => Limit(self.retention.max_events).show(),
                    "retention_max_bytes" => Limit(self.retention.max_bytes).show(),
                    "retention_max_age_secs" => Limit(self.retention.max_age_secs).show(),
                    _ => return None,
                })
            }

            /// Lays the flags given over `self`; returns their option names.
            fn overlay_flags(&mut self, args: &ServeArgs) -> Vec<&'static str> {
                let mut given = Vec::new();
                $(if let Some(v) = &args.$field {
                    self.$field = v.clone();
                    given.push(stringify!($field));
                })*
                let limits = [
                    (args.retention_max_events, &mut self.retention.max_events),
                    (args.retention_max_bytes, &mut self.retention.max_bytes),
                    (args.retention_max_age_secs, &mut self.retention.max_age_secs),
                ];
                for (i, (flag, limit)) in limits.into_iter().enumerate() {
                    if let Some(v) = flag {
                        *limit = (v != NO_LIMIT).then_some(v);
                        given.push(RETENTION_OPTIONS[i]);
                    }
                }
                given
            }
        }
    };
}

options!(
    listen,
    data_dir,
    durability,
    flush_interval_ms,
    checkpoint_interval_ms,
    write_queue,
    max_group_commit,
    max_payload_bytes,
    max_body_bytes,
    http_body_timeout_secs,
    max_batch_events,
    max_read_events,
    max_read_bytes,
    max_wait_secs,
    retention_interval_ms,
    idempotency_window_secs,
    auto_create,
    max_connections,
    store_cache_bytes,
    segment_bytes,
    shutdown_timeout_secs,
    fanout_buffer,
    fanout_memory_bytes,
    ws_ping_interval_secs,
    ws_ping_timeout_secs,
    ws_max_namespaces,
    ws_max_frame_bytes,
    ws_read_buffer_bytes,
    ws_write_buffer_bytes,
    ws_max_inflight_publishes,
    ws_max_unsent_bytes,
    blocking_threads,
);

/// The variable of `option`.
fn variable(option: &str) -> String {
    format!("REWIND_{}", option.to_uppercase())
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_toml_file(path: &Path) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        cfg.read_toml_file(path, &mut Vec::new())?;
        Ok(cfg)
    }

    /// Lays the TOML file at `path` over `self`, noting where each value came from.
    /// Keys are the option names; a `[retention]` table with `max_events`, `max_bytes`
    /// and `max_age_secs` (the shape of the HTTP API's retention) is read too.
    fn read_toml_file(
        &mut self,
        path: &Path,
        origins: &mut Vec<(String, Origin)>,
    ) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut entries = Vec::new();
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("retention", toml::Value::Table(inner)) => {
                    for (k, v) in inner {
                        entries.push((format!("retention_{k}"), format!("retention.{k}"), v));
                    }
                }
                _ => entries.push((key.clone(), key.clone(), value)),
            }
        }
        for (option, key, value) in entries {
            let origin = Origin::File {
                path: path.to_owned(),
                key: key.clone(),
            };
            let bad = |message: String| ConfigError::Value {
                origin: origin.clone(),
                message,
            };
            if let Some((_, Origin::File { key, .. })) = origins.iter().find(|(o, _)| *o == option)
            {
                return Err(bad(format!("sets the same option as key `{key}`")));
            }
            match self.set(&option, Raw::Toml(value)) {
                Ok(true) => origins.push((option, origin)),
                Ok(false) => {
                    return Err(bad(format!(
                        "unknown key; the keys are the option names: {}",
                        OPTIONS.join(", ")
                    )))
                }
                Err(message) => return Err(bad(message)),
            }
        }
        Ok(())
    }

    /// Defaults, then the TOML file named by `args.config`, then the `REWIND_*`
    /// variables of this process, then the flags.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        Config::load_from(args, |name| std::env::var_os(name))
    }

    /// [`Config::load`] with the variables looked up by `env`.
    pub fn load_from(
        args: &ServeArgs,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let mut origins: Vec<(String, Origin)> = Vec::new();
        if let Some(path) = &args.config {
            cfg.read_toml_file(path, &mut origins)?;
        }
        for option in OPTIONS {
            let name = variable(option);
            let Some(value) = env(&name) else { continue };
            let value = value.to_string_lossy().into_owned();
            let origin = Origin::Variable {
                name,
                value: value.clone(),
            };
            if let Err(message) = cfg.set(option, Raw::Text(&value)) {
                return Err(ConfigError::Value { origin, message });
            }
            origins.push((option.to_string(), origin));
        }
        for option in cfg.overlay_flags(args) {
            let flag = Origin::Flag {
                flag: format!("--{}", option.replace('_', "-")),
            };
            origins.push((option.to_owned(), flag));
        }
        cfg.check().map_err(|(option, message)| {
            match origins.iter().rev().find(|(o, _)| o == option) {
                Some((_, origin)) => ConfigError::Value {
                    origin: origin.clone(),
                    message,
                },
                None => ConfigError::Invalid(format!("{option} {message}")),
            }
        })?;
        Ok(cfg)
    }

    /// Rejects values that would make the broker misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|(option, message)| ConfigError::Invalid(format!("{option} {message}")))
    }

    /// The first option whose value is out of range, and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("flush_interval_ms", self.flush_interval_ms),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("write_queue", self.write_queue as u64),
            ("max_group_commit", self.max_group_commit as u64),
            ("max_payload_bytes", self.max_payload_bytes as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("http_body_timeout_secs", self.http_body_timeout_secs),
            ("max_batch_events", self.max_batch_events as u64),
            ("max_read_events", self.max_read_events as u64),
            ("max_read_bytes", self.max_read_bytes as u64),
            ("retention_interval_ms", self.retention_interval_ms),
            ("max_connections", self.max_connections as u64),
            ("segment_bytes", self.segment_bytes),
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
            ("ws_max_unsent_bytes", self.ws_max_unsent_bytes as u64),
            ("blocking_threads", self.blocking_threads as u64),
            (
                "retention_max_events",
                self.retention.max_events.unwrap_or(NO_LIMIT),
            ),
            (
                "retention_max_bytes",
                self.retention.max_bytes.unwrap_or(NO_LIMIT),
            ),
            (
                "retention_max_age_secs",
                self.retention.max_age_secs.unwrap_or(NO_LIMIT),
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err((name, "must be at least 1".to_owned()));
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

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn variables_sit_between_the_file_and_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rewind.toml");
        std::fs::write(
            &file,
            "write_queue = 7\nmax_wait_secs = 5\nretention_max_age_secs = 10\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            write_queue: Some(9),
            ..ServeArgs::default()
        };
        let vars = [
            ("REWIND_WRITE_QUEUE", "8"),
            ("REWIND_MAX_WAIT_SECS", "6"),
            ("REWIND_RETENTION_MAX_AGE_SECS", "none"),
        ];
        let cfg = Config::load_from(&args, env(&vars)).unwrap();
        assert_eq!(cfg.write_queue, 9);
        assert_eq!(cfg.max_wait_secs, 6);
        assert_eq!(cfg.retention.max_age_secs, None);
        let cfg = Config::load_from(&args, env(&[])).unwrap();
        assert_eq!(cfg.max_wait_secs, 5);
        assert_eq!(cfg.retention.max_age_secs, Some(10));
        let none_flag = ServeArgs {
            retention_max_age_secs: Some(NO_LIMIT),
            ..args
        };
        let cfg = Config::load_from(&none_flag, env(&[])).unwrap();
        assert_eq!(cfg.retention.max_age_secs, None);
    }

    #[test]
    fn an_out_of_range_value_is_blamed_on_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rewind.toml");
        std::fs::write(&file, "fanout_buffer = 0\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        let err = Config::load_from(&args, env(&[])).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "config file {}, key `fanout_buffer`: must be at least 1",
                file.display()
            )
        );
        let err = Config::load_from(&args, env(&[("REWIND_FANOUT_BUFFER", "0")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "environment variable REWIND_FANOUT_BUFFER=\"0\": must be at least 1"
        );
        let flagged = ServeArgs {
            fanout_buffer: Some(0),
            ..args
        };
        let err = Config::load_from(&flagged, env(&[("REWIND_FANOUT_BUFFER", "3")]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--fanout-buffer: must be at least 1");
    }

    #[test]
    fn messages_give_the_range_check_enforces() {
        for option in OPTIONS {
            let mut cfg = Config::default();
            if cfg.set(option, Raw::Text("0")).is_err()
                || Config::default().set(option, Raw::Text("x")).is_ok()
            {
                // Not a whole number, or a retention limit (refused at 0 when read).
                continue;
            }
            let zero_refused = cfg.check().is_err();
            assert_eq!(AT_LEAST_ONE.contains(option), zero_refused, "{option}");
            let err = Config::default().set(option, Raw::Text("-1")).unwrap_err();
            let least = u8::from(zero_refused);
            assert!(err.contains(&format!("from {least} up")), "{option}: {err}");
        }
    }

    #[test]
    fn help_defaults_come_from_the_defaults() {
        let defaults = Config::default();
        for option in OPTIONS {
            let shown = defaults.show(option).unwrap();
            assert!(flag_help(option, "x").contains(&format!("[default: {shown}]")));
            let mut again = Config::default();
            again.set(option, Raw::Text(&shown)).unwrap();
            assert_eq!(again.show(option), Some(shown), "{option}");
        }
        assert_eq!(defaults.show("retention_max_age_secs").unwrap(), "604800");
        assert_eq!(defaults.show("retention_max_bytes").unwrap(), "none");
    }
}
