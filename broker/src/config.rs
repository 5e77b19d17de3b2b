//! Broker configuration: one struct, [`Config`], loaded with the precedence flags >
//! `REWIND_*` environment > TOML file > defaults (spec §8).
//!
//! Each option is declared once, in the `options!` invocation below: its name, its type,
//! its default, its documentation and the one-line summary `rewind serve --help` shows.
//! From that declaration come the [`Config`] field, [`Config::default`], the entry of
//! [`OPTIONS`] the binary builds its flag from, and the reading of the option from a
//! flag, a variable and the TOML file. The library knows no command-line parser: the
//! binary hands [`Config::load`] the flags it was given as text, in [`Sources`].
//!
//! Every option has one name: the TOML key, the flag without `--` and with `_` for `-`,
//! and the variable without `REWIND_` in lower case (`write_queue`, `--write-queue`,
//! `REWIND_WRITE_QUEUE`). Flags, variables and keys are read by the same code, so every
//! error names where the value came from (the flag, the variable, or the file and key).
//!
//! The layering is figment's: the file, the variables and the flags are three figment
//! providers merged in that order, and for each option figment gives the winning value and
//! its source. The reading is the option's own, of every value any source gives, so the
//! messages give the option's range (figment's serde extraction would not).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

pub use crate::storage::{Durability, Retention, NO_LIMIT};

/// One option as the binary and the docs see it, from its declaration in `options!`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    /// The option's name: the TOML key, and the flag and the variable derived from it.
    pub name: &'static str,
    /// What the value looks like (`N`, `BYTES|none`, `HOST:PORT`), for `--help`.
    pub value_name: &'static str,
    /// One line saying what the option does, for `--help` (the field's documentation
    /// says more).
    pub summary: &'static str,
    /// The least whole number the option takes (its declaration's `min`, else 0); 0 for
    /// an option that is not a number. [`Config::load`] refuses less, naming where the
    /// value came from.
    least: u64,
    /// The largest whole number the option takes (its declaration's `max`, else
    /// `u64::MAX`: only its type bounds it). [`Config::load`] refuses more, naming where
    /// the value came from.
    most: u64,
}

impl OptionSpec {
    /// The option called `name`, if there is one.
    pub fn named(name: &str) -> Option<&'static OptionSpec> {
        OPTIONS.iter().find(|o| o.name == name)
    }

    /// The flag's long name, without `--`: the name with `-` for `_` (`write-queue`).
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }

    /// The environment variable: `REWIND_` and the name in upper case
    /// (`REWIND_WRITE_QUEUE`).
    pub fn variable(&self) -> String {
        format!("REWIND_{}", self.name.to_uppercase())
    }

    /// The default, as a flag or a variable takes it (`4096`, `none`, `durable`): shown
    /// from [`Config::default`], so `--help` can only say what the code does.
    pub fn default_text(&self) -> String {
        Config::default()
            .show(self.name)
            .unwrap_or_else(|| "none".to_owned())
    }

    /// Reads `text` as a flag or a variable of this option is read (surrounding
    /// whitespace ignored): `Err` with the message [`Config::load`] gives for it. The
    /// range check that needs the whole configuration (`must be at least 1`, `must be at
    /// most N`) is not made here.
    pub fn check_text(&self, text: &str) -> Result<(), String> {
        Config::default()
            .set(self.name, Raw::Text(text))
            .map(|_| ())
    }

    /// The largest whole number the option takes, if its declaration gives one (`max`);
    /// `None` where only its type bounds it.
    pub fn most(&self) -> Option<u64> {
        (self.most != u64::MAX).then_some(self.most)
    }
}

/// tokio's `Semaphore::MAX_PERMITS` (`usize::MAX >> 3`): a semaphore or a bounded channel
/// (`tokio::sync::mpsc::channel`) of more permits panics when it is made.
const TOKIO_MAX_PERMITS: u64 = tokio::sync::Semaphore::MAX_PERMITS as u64;

/// The most blocking threads: Linux's default `pid_max` (32768, `kernel/pid_max`) bounds
/// the threads of a default system, so more could never run; tokio's builder adds its
/// worker threads to the figure and overflows near `usize::MAX`.
const MOST_BLOCKING_THREADS: u64 = 32_768;

/// The most runtime workers: tokio starts every worker when the runtime is built (blocking
/// threads only when needed) and panics when the system refuses a thread, so the bound is
/// what a default system starts at once — 32768 threads did not start on the project's
/// machine (`EAGAIN`), 1024 did — and more workers than cores only add context switches.
const MOST_WORKER_THREADS: u64 = 1024;

/// The largest WebSocket read buffer, 64 MiB: tungstenite allocates it for every
/// connection and zero-fills all of it on every read (tungstenite-rs#547), so past a few
/// MiB a larger one costs more than it saves; 64 MiB is sixty times the default largest
/// frame. Near `usize::MAX` the allocation panicked (capacity overflow), and 1 TiB got the
/// broker killed for its memory at the first connection.
const MOST_WS_READ_BUFFER_BYTES: u64 = 64 << 20;

/// The most header lines a request may be allowed: hyper allocates room for this many
/// for every request it parses, so near `usize::MAX` the first request would abort the
/// broker; 10,000 is a hundred times the default.
const MOST_HTTP_MAX_HEADERS: u64 = 10_000;

/// The largest request head that can be allowed: hyper's read buffer, which holds the
/// head, never grows past 417792 bytes (8 KiB + 100 × 4 KiB, its default `max_buf_size`),
/// so a larger figure would change nothing.
const MOST_HTTP_MAX_HEADER_BYTES: u64 = 417_792;

/// The longest a duration option is taken to mean: about a century. A deadline that far
/// off is never reached, and `Instant::now()` plus `u64::MAX` seconds overflows the clock
/// (a panic); see [`seconds`].
const LONGEST: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// `secs` seconds as a duration to add to `Instant::now()`: at most [`LONGEST`] (a
/// century), so the deadline can be computed for any value an option takes.
pub(crate) fn seconds(secs: u64) -> std::time::Duration {
    std::time::Duration::from_secs(secs).min(LONGEST)
}

/// The least value of `min` in a declaration: 0 when it is left out.
macro_rules! least {
    () => {
        0
    };
    ($least:literal) => {
        $least
    };
}

/// The value of `max` in a declaration: `u64::MAX` (only the type bounds it) when it is
/// left out.
macro_rules! most {
    () => {
        u64::MAX
    };
    ($most:expr) => {
        $most
    };
}

/// Declares every option once. For each plain option: its documentation, `name: Type =
/// default`, the value name and the `--help` summary, `min N` if less than N is refused
/// and `max N` if more than N is (where the value feeds an API with a bound). The
/// retention options live in [`Config::retention`]; for each, the option name, the
/// [`Retention`] field it sets, its default (`None`: no limit) and the same texts; they
/// take a number from 1 up, or `none`.
///
/// Generates the [`Config`] struct, its `Default`, [`OPTIONS`], and `Config::set`,
/// `Config::show` and `Config::whole` (the option's value as a whole number, for the
/// range check).
macro_rules! options {
    (
        $(
            $(#[doc = $doc:literal])*
            $field:ident: $ty:ty = $default:expr, $value_name:literal, $summary:literal
            $(, min $least:literal)? $(, max $most:expr)?;
        )*
        @retention {
            $(
                $(#[doc = $rdoc:literal])*
                $roption:ident => $rfield:ident = $rdefault:expr, $rvalue_name:literal,
                $rsummary:literal;
            )*
        }
    ) => {
        /// Everything the broker can be told. Each field is one option, whose name is the
        /// field's; its default is [`Config::default`]'s.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!("Default: `", stringify!($default), "`.")]
                pub $field: $ty,
            )*
            /// Default retention of every namespace; `PUT /v1/namespaces/{ns}` overrides
            /// it per namespace. A limit of 0 is refused (it would remove every event);
            /// `none` means no limit. The options:
            $(
                #[doc = concat!("- `", stringify!($roption), "` (default `",
                    stringify!($rdefault), "`):")]
                $(#[doc = $rdoc])*
            )*
            pub retention: Retention,
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    $($field: $default,)*
                    retention: Retention {
                        $($rfield: $rdefault,)*
                    },
                }
            }
        }

        /// Every option, in `--help` order.
        pub const OPTIONS: &[OptionSpec] = &[
            $(OptionSpec {
                name: stringify!($field),
                value_name: $value_name,
                summary: $summary,
                least: least!($($least)?),
                most: most!($($most)?),
            },)*
            $(OptionSpec {
                name: stringify!($roption),
                value_name: $rvalue_name,
                summary: $rsummary,
                least: 1,
                most: u64::MAX,
            },)*
        ];

        impl Config {
            /// Sets `option` from `raw`; `Ok(false)` if there is no such option.
            fn set(&mut self, option: &str, raw: Raw<'_>) -> Result<bool, String> {
                match option {
                    $(stringify!($field) => self.$field = OptionValue::read(raw, option)?,)*
                    $(stringify!($roption) => {
                        self.retention.$rfield = Limit::read(raw, option)?.0
                    })*
                    _ => return Ok(false),
                }
                Ok(true)
            }

            /// `option`'s value as a flag would take it; `None` if there is no such option.
            fn show(&self, option: &str) -> Option<String> {
                Some(match option {
                    $(stringify!($field) => self.$field.show(),)*
                    $(stringify!($roption) => Limit(self.retention.$rfield).show(),)*
                    _ => return None,
                })
            }

            /// `option`'s value as a whole number ([`NO_LIMIT`] for no retention limit);
            /// `None` if it is not a number or there is no such option.
            fn whole(&self, option: &str) -> Option<u64> {
                match option {
                    $(stringify!($field) => self.$field.whole(),)*
                    $(stringify!($roption) => {
                        Some(self.retention.$rfield.unwrap_or(NO_LIMIT))
                    })*
                    _ => None,
                }
            }
        }
    };
}

/// The listen address of a default, known to be good.
fn listen(text: &str) -> ListenAddr {
    ListenAddr(text.to_owned())
}

options! {
    /// Address to listen on, `HOST:PORT`: HOST is an IP address (IPv6 in brackets) or a
    /// name, resolved at start; the broker binds the first of its addresses that it can,
    /// in the resolver's order.
    listen: ListenAddr = listen("127.0.0.1:7070"), "HOST:PORT",
        "Address to listen on; a host name binds its first address";
    /// Origins whose web pages may use the broker (WebSocket upgrades, SSE, the HTTP
    /// API: any request carrying `Origin`), besides the broker's own
    /// (`http://127.0.0.1:PORT`, `http://localhost:PORT`, `http://[::1]:PORT` for the
    /// bound port, and the bound address when it is a specific one), which are always
    /// allowed. A comma-separated list (an array in the TOML file) of
    /// `scheme://host[:port]`, compared once scheme and host are in lower case and a
    /// default port dropped; `*` allows any origin but `null`, `null` allows pages with
    /// that origin (sandboxed iframes, `file://`); `none`, the default, lists nothing. A
    /// page of another origin gets `403 origin_not_allowed` (`docs/security.md`).
    allowed_origins: AllowedOrigins = AllowedOrigins::default(), "ORIGIN,...|*|none",
        "Origins (besides the broker's own) whose web pages may use the broker";
    /// Directory of the embedded store.
    data_dir: PathBuf = PathBuf::from("./rewind-data"), "DIR",
        "Directory of the embedded store";
    /// When publishes are acknowledged.
    durability: Durability = Durability::Durable, "durable|relaxed",
        "When publishes are acknowledged";
    /// In `relaxed` mode, how often writes are flushed, in milliseconds.
    flush_interval_ms: u64 = 100, "MS", "Relaxed mode: flush interval in ms", min 1;
    /// How often the store takes a checkpoint — syncs segment files, writes idempotency
    /// records into sled and the `manifest`, trims the write-ahead log — in milliseconds.
    checkpoint_interval_ms: u64 = 1000, "MS",
        "How often the store checkpoints (segments synced, manifest written, write-ahead log trimmed), in ms",
        min 1;
    /// Write requests that may wait for the writer; when full, publishers get 503 with
    /// `Retry-After`. At most tokio's `Semaphore::MAX_PERMITS` (2305843009213693951), the
    /// most a bounded channel holds.
    write_queue: usize = 4096, "N", "Write requests that may queue before publishers get 503",
        min 1, max TOKIO_MAX_PERMITS;
    /// Most write requests applied together before one flush (group commit).
    max_group_commit: usize = 1024, "N", "Most write requests sharing one flush", min 1;
    /// Largest payload of one event, in bytes (1 MiB).
    max_payload_bytes: usize = 1 << 20, "BYTES", "Largest event payload in bytes", min 1;
    /// Largest HTTP request body, in bytes (16 MiB); larger bodies get 413.
    max_body_bytes: usize = 16 << 20, "BYTES", "Largest HTTP request body in bytes", min 1;
    /// Seconds a client has to send a whole HTTP request body, counted from the end of
    /// its headers; a deadline for the body as a whole, so a body that trickles in byte by
    /// byte is bounded too. Past it: 408 `request_timeout`, the connection is closed and
    /// nothing of the request is kept. The default is the headers' read timeout.
    http_body_timeout_secs: u64 = 30, "SECS",
        "Seconds a client has to send a whole HTTP request body", min 1;
    /// Most events in one batch publish.
    max_batch_events: usize = 10_000, "N", "Most events in one batch publish", min 1;
    /// Most events one read returns (`limit` is capped to this).
    max_read_events: usize = 1000, "N", "Most events one read returns", min 1;
    /// Most payload bytes one read returns (4 MiB); a page always holds at least one event.
    max_read_bytes: usize = 4 << 20, "BYTES", "Most payload bytes one read returns", min 1;
    /// Longest `wait` of a long-poll read, in seconds.
    max_wait_secs: u64 = 60, "SECS", "Longest long-poll wait in seconds";
    /// SSE: seconds without anything to send after which a stream sends a comment line,
    /// so proxies keep it open and a vanished client is noticed by the failed write.
    sse_heartbeat_secs: u64 = 15, "SECS", "SSE: seconds between heartbeat comments when idle",
        min 1;
    /// How often retention is enforced, in milliseconds.
    retention_interval_ms: u64 = 1000, "MS", "How often retention runs, in ms", min 1;
    /// How long an `Idempotency-Key` is remembered, in seconds (an hour).
    idempotency_window_secs: u64 = 3600, "SECS",
        "How long an Idempotency-Key is remembered, in seconds";
    /// Create a namespace on its first publish.
    auto_create: bool = true, "BOOL", "Create namespaces on first publish";
    /// Most concurrent client connections; further ones wait to be accepted. At most
    /// tokio's `Semaphore::MAX_PERMITS` (2305843009213693951), the most a semaphore counts.
    max_connections: usize = 10_000, "N", "Most concurrent connections", min 1,
        max TOKIO_MAX_PERMITS;
    /// Seconds a client has to send a request's head (request line and headers), counted
    /// from when the connection is accepted or, on a keep-alive connection, from the end
    /// of the previous answer; so it is the idle keep-alive timeout too. Past it the
    /// connection is closed without an answer (hyper's header read timeout). Short by
    /// default (10 s) so that clients that never finish their headers (slowloris) hold a
    /// connection slot briefly.
    http_header_timeout_secs: u64 = 10, "SECS",
        "Seconds a client has to send a request's headers; also the idle keep-alive timeout",
        min 1;
    /// Largest request head (request line and headers) in bytes, 100 KiB: room for the
    /// longest path hyper takes (65534 bytes, past which it answers `414`) and headers
    /// beside it. A larger head is answered `431` and the connection closed, once this
    /// much of it has been read (so a 20 MB header costs at most this much). Also the
    /// limit of chunked trailers. At most 417792, hyper's own bound on its read buffer.
    http_max_header_bytes: usize = 100 << 10, "BYTES",
        "Largest HTTP request head (request line and headers) in bytes", min 1,
        max MOST_HTTP_MAX_HEADER_BYTES;
    /// Most header lines in one request, 100; more is answered `431` and the connection
    /// closed. At most 10,000 (hyper makes room for this many per request).
    http_max_headers: usize = 100, "N", "Most header lines in one HTTP request", min 1,
        max MOST_HTTP_MAX_HEADERS;
    /// Most connections open at once from one IP address (HTTP and WebSocket alike);
    /// beyond it a new connection gets `503 too_many_connections` and is closed, so a few
    /// peers cannot take every slot of `max_connections`.
    max_connections_per_ip: usize = 1000, "N", "Most concurrent connections from one IP address",
        min 1;
    /// New connections one IP address may open per second (a token bucket holding one
    /// second's worth); beyond it a new connection gets `429 rate_limited` and is closed.
    new_connections_per_sec_per_ip: u64 = 1000, "N",
        "New connections per second from one IP address", min 1;
    /// Publishes per second on one connection (an HTTP keep-alive connection or a
    /// WebSocket), a token bucket holding one second's worth; beyond it a publish is
    /// refused with `rate_limited` (HTTP `429` with `Retry-After`, a WebSocket `error`
    /// frame) and nothing is appended. A batch is one publish. 0, the default, is no
    /// limit: the write queue (`write_queue`) already bounds what the broker holds.
    publish_rate: u64 = 0, "N", "Publishes per second per connection (0: no limit)";
    /// Memory sled may use as its page cache, in bytes (512 MiB); a cap, filled only as
    /// data is written and read. sled holds only idempotency records; events live in
    /// segment files read through the OS page cache (`docs/storage.md`). At least 256:
    /// sled refuses a smaller cache when the store is opened ("configure the cache
    /// capacity to be at least 256 bytes"), so a smaller one is refused here, before
    /// anything is opened.
    store_cache_bytes: u64 = 512 << 20, "BYTES", "Page cache of the embedded store in bytes",
        min 256;
    /// Size at which a namespace's log starts a new segment file, in bytes (16 MiB);
    /// retention removes whole segments, so a namespace holds up to this much more than
    /// its limits allow. A segment holds at least one event, however large.
    segment_bytes: u64 = 16 << 20, "BYTES",
        "Size at which a namespace's log starts a new segment file, in bytes", min 1;
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in seconds
    /// (more than a century is taken as a century: a deadline that far off is never
    /// reached, and the clock cannot hold `u64::MAX` seconds from now).
    shutdown_timeout_secs: u64 = 30, "SECS",
        "Seconds in-flight requests get to finish on shutdown";
    /// Runs of live events kept per namespace for subscribers that keep up (a run is up to
    /// 256 consecutive events and about 4 KiB of payload, or one larger event); one that
    /// falls further behind reads the log instead. The default is about 2 MiB of small
    /// events per busy namespace with a subscriber (none without one), within
    /// `fanout_memory_bytes` for all namespaces together.
    fanout_buffer: usize = 512, "N", "Runs of live events kept per namespace for subscribers",
        min 1;
    /// Bytes the live runs of every namespace may hold together, for the whole broker
    /// (events and their built frames, as `fanout::SharedRun` counts them), 64 MiB. Past
    /// it the oldest runs, whatever their namespace, are let go, and subscribers that
    /// still needed them read the log. 0 keeps no live runs (every subscriber reads the
    /// log).
    fanout_memory_bytes: u64 = 64 << 20, "BYTES",
        "Bytes of live events held for subscribers, for the whole broker";
    /// WebSocket: seconds between the broker's `ping`s (more than a century is taken as a
    /// century: a deadline that far off is never reached, and the clock cannot hold
    /// `u64::MAX` seconds from now).
    ws_ping_interval_secs: u64 = 25, "SECS", "WebSocket ping interval in seconds", min 1;
    /// WebSocket: seconds after a `ping` within which the client must send something,
    /// else the connection is dropped (more than a century is taken as a century: a
    /// deadline that far off is never reached, and the clock cannot hold `u64::MAX`
    /// seconds from now).
    ws_ping_timeout_secs: u64 = 20, "SECS",
        "WebSocket: silence allowed after a ping, in seconds", min 1;
    /// WebSocket: most namespaces open on one connection.
    ws_max_namespaces: usize = 100, "N", "WebSocket: namespaces per connection", min 1;
    /// WebSocket: largest incoming frame or message, in bytes; larger closes the connection
    /// with 1009 before the payload is read. The default is 1 MiB of payload plus 64 KiB
    /// for the frame around it.
    ws_max_frame_bytes: usize = (1 << 20) + (64 << 10), "BYTES",
        "WebSocket: largest incoming frame in bytes", min 1;
    /// WebSocket: read buffer per connection, in bytes. The default is small: it is
    /// allocated for every connection, idle or not, and most of a dashboard's connections
    /// only read small frames; publish-heavy clients gain from a larger one. At most
    /// 64 MiB: tungstenite allocates it for every connection and zero-fills all of it on
    /// every read (tungstenite-rs#547).
    ws_read_buffer_bytes: usize = 2048, "BYTES",
        "WebSocket: read buffer per connection in bytes", min 1,
        max MOST_WS_READ_BUFFER_BYTES;
    /// WebSocket: the most bytes one socket write carries (64 KiB). Outgoing frames are
    /// shared, already-framed bytes handed to one vectored write, so this is not a buffer
    /// and costs no memory; it only bounds how much one write takes on. At least 1: a
    /// connection takes events from its subscriptions only while fewer bytes than this
    /// wait to be written, so 0 would never send one.
    ws_write_buffer_bytes: usize = 64 << 10, "BYTES", "WebSocket: most bytes per socket write",
        min 1;
    /// WebSocket: publishes one connection may have unanswered (waiting for durability, or
    /// for the answers of earlier publishes); past it the broker stops reading the
    /// connection until one is answered. One connection's throughput is about this many
    /// publishes per commit round trip, and 64 held a pipelining client to about half of
    /// what the default, 256, allows (`docs/benchmarks.md`).
    ws_max_inflight_publishes: usize = 256, "N",
        "WebSocket: publishes in flight per connection", min 1;
    /// WebSocket: bytes waiting to be written to one connection (answers, events, pongs)
    /// past which the broker stops reading it until the client reads. In the default,
    /// 1 MiB, 10,000 pipelined publishes' answers fit, whether or not the client reads
    /// them while it sends.
    ws_max_unsent_bytes: usize = 1 << 20, "BYTES",
        "WebSocket: unsent bytes per connection before it is no longer read", min 1;
    /// Threads for blocking work (store reads, checkpoints, opening the store) at most;
    /// more work waits in tokio's queue. Each thread keeps memory of its own (its stack,
    /// mimalloc's per-thread pages), and tokio's default of 512 let stalled WebSocket
    /// subscribers catching up grow RSS by about 150 KiB a thread
    /// (`tests/tests/ws_catch_up_memory.rs`). At most 32768, Linux's default `pid_max`
    /// (more threads could not run on a default system, and tokio's builder overflows
    /// near `usize::MAX`).
    blocking_threads: usize = 32, "N",
        "Threads for blocking work (store reads, checkpoints) at most", min 1,
        max MOST_BLOCKING_THREADS;
    /// Threads that run the connections (tokio's runtime workers); 0, the default, starts
    /// one fewer than the cores the process may use, at least 1
    /// ([`Config::runtime_workers`]): the write-ahead log's writer thread takes part in
    /// every publish and every delivery's wake-up, and with as many workers as cores a
    /// third runnable thread on a 2-core machine cost 13-32 % more CPU per delivery at
    /// 100 subscribers x 200 events/s (`docs/benchmarks.md`, issue 14). At most 1024.
    worker_threads: usize = 0, "N",
        "Threads running the connections (0: one fewer than the cores, at least 1)",
        max MOST_WORKER_THREADS;
    /// `GET /metrics`: how many namespaces get series of their own (head offset,
    /// subscriber lag): those whose slowest subscriber lags the most at the scrape. Bounds
    /// the label cardinality whatever the number of namespaces; 0 gives none.
    metrics_namespaces: usize = 10, "N",
        "Metrics: namespaces with series of their own (the most lagging)";
    /// How log lines are written to stderr: `text` (one line per event, coloured only at
    /// a terminal) or `json` (one JSON object per line).
    log_format: LogFormat = LogFormat::Text, "text|json", "Log line format on stderr";
    /// Keep every namespace in Redis at this URL instead of under `data_dir`, so any number
    /// of broker nodes sharing it serve one log (`docs/cluster.md`): `redis://HOST:PORT`,
    /// `rediss://` for TLS, with `USER:PASSWORD@` and `/DB` as Redis URLs take them; `none`
    /// for the embedded store. `data_dir` is not used then.
    redis: RedisUrl = RedisUrl(None), "URL|none",
        "Redis URL (redis:// or rediss://) of a log shared by many nodes; none: embedded store";
    /// With `redis`: the prefix of every key (followed by `:`); nodes with the same prefix
    /// share their namespaces. Letters, digits and `_ - . :`.
    redis_prefix: KeyPrefix = KeyPrefix("rewind".to_owned()), "PREFIX",
        "With --redis: prefix of every key";
    /// With `redis`: replicas that must have each write (Redis `WAIT`) before a publish is
    /// acknowledged; 0 waits for none. When `WAIT` times out the answer says
    /// `"replicated": false` (`docs/cluster.md`).
    redis_wait_replicas: u64 = 0, "N", "With --redis: replicas WAIT must reach before an ack",
        max 1_000_000;
    /// With `redis` and `redis_wait_replicas`: how long `WAIT` waits, in milliseconds.
    redis_wait_timeout_ms: u64 = 1000, "MS", "With --redis: how long WAIT waits, in ms", min 1;
    /// With `redis`: connect, read and write timeout of each Redis command, in
    /// milliseconds; past it the command fails and publishes get 503 `unavailable`.
    redis_timeout_ms: u64 = 2000, "MS", "With --redis: timeout of each Redis command, in ms",
        min 1;
    /// With `redis`: how often a node compares what it knows of every namespace with
    /// Redis (healing a missed Pub/Sub announcement, noticing data Redis lost) and pings
    /// Redis for `/readyz`, in milliseconds.
    redis_heal_interval_ms: u64 = 1000, "MS",
        "With --redis: how often a node re-reads every namespace's state from Redis, in ms",
        min 1;
    /// Tokens: the JWT algorithm every token must be signed with, `HS256` (with
    /// `auth_secret_file`), `RS256` or `ES256` (with `auth_public_keys`). A token naming
    /// any other algorithm, `none` included, is refused: the algorithm comes from here,
    /// never from the token (`docs/security.md`, "Tokens").
    auth_alg: AuthAlg = AuthAlg::Hs256, "HS256|RS256|ES256", "Tokens: the one JWT algorithm accepted";
    /// Tokens: a file holding the HS256 secret (its bytes, a final newline dropped); at
    /// least 32 bytes (RFC 7518 §3.2). A file, not a flag, so the secret never shows in
    /// `ps`. Setting it turns authentication on.
    auth_secret_file: Option<PathBuf> = None, "FILE|none", "Tokens: file holding the HS256 secret";
    /// Tokens: the RS256/ES256 public keys, a comma-separated list of files (a TOML array
    /// too), each a PEM public key or a JWKS (a `.json` file, RFC 7517 §5); a token with a
    /// `kid` is checked with the key of that id. Setting it turns authentication on. Keys
    /// are read at start only.
    auth_public_keys: Vec<PathBuf> = Vec::new(), "FILE[,FILE]|none",
        "Tokens: PEM or JWKS files of the RS256/ES256 public keys";
    /// Tokens: the `aud` every token must carry (one of its audiences); none: tokens with
    /// an `aud` are taken whatever it says.
    auth_audience: Option<String> = None, "AUD|none", "Tokens: the audience tokens must carry";
    /// Tokens: the `iss` every token must carry; none: not checked.
    auth_issuer: Option<String> = None, "ISS|none", "Tokens: the issuer tokens must carry";
    /// Tokens: seconds of clock skew allowed past `exp` (and before `nbf`); a WebSocket
    /// is closed this long after its token's `exp`. At most a day: jsonwebtoken subtracts
    /// it from the current time, and more than a day of skew is a broken clock.
    auth_leeway_secs: u64 = 5, "SECS", "Tokens: clock skew allowed past exp, in seconds",
        max 86_400;
    /// Tokens: seconds before a WebSocket's token expires that the broker sends
    /// `auth_expiring` (a token that has less left when it arrives gets it at once).
    auth_expiry_warning_secs: u64 = 30, "SECS",
        "Tokens: how long before expiry a WebSocket is warned, in seconds";
    /// Start without authentication on a listen address that is not loopback; without
    /// it such a start is refused (spec §6).
    insecure_open: bool = false, "BOOL", "Allow no auth on a non-loopback listen address";
    @retention {
        /// keep at most this many events of a namespace.
        retention_max_events => max_events = None, "N|none",
            "Default retention: most events per namespace, or none";
        /// keep at most this many bytes of a namespace's stored events.
        retention_max_bytes => max_bytes = None, "BYTES|none",
            "Default retention: most bytes per namespace, or none";
        /// drop a namespace's events older than this many seconds (7 days).
        retention_max_age_secs => max_age_secs = Some(7 * 24 * 3600), "SECS|none",
            "Default retention: oldest event age in seconds, or none";
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
        /// Its value (where it is not UTF-8, each bad sequence as U+FFFD).
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
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and what (the TOML parser's message).
        message: String,
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

/// Where [`Config::load`] reads the configuration from, besides the defaults and the
/// `REWIND_*` variables of the process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// The TOML file (`--config`), if any.
    pub file: Option<PathBuf>,
    /// The flags given: each option's name (not the flag: `write_queue`) and its text as
    /// written. A flag given twice is the command line parser's error to report.
    pub flags: Vec<(String, String)>,
}

impl Sources {
    /// `self` with the flag of `option` set to `text`.
    pub fn flag(mut self, option: &str, text: &str) -> Sources {
        self.flags.push((option.to_owned(), text.to_owned()));
        self
    }
}

impl Config {
    /// How many runtime workers `rewind serve` starts, on a machine where the process may
    /// use `cores` cores: `worker_threads`, or for its default of 0 one fewer than
    /// `cores`, at least 1 (the write-ahead log's writer thread runs beside them;
    /// `docs/decisions.md`, "runtime workers").
    pub fn runtime_workers(&self, cores: usize) -> usize {
        match self.worker_threads {
            0 => cores.saturating_sub(1).max(1),
            n => n,
        }
    }

    /// Reads a TOML file over the defaults (without the range check of [`Config::load`]).
    pub fn from_toml_file(path: &Path) -> Result<Config, ConfigError> {
        let layers = Figment::from(FileLayer::read(path)?);
        Ok(Config::from_layers(&layers)?.0)
    }

    /// Defaults, then the TOML file of `sources`, then the `REWIND_*` variables of this
    /// process, then the flags of `sources`. The first bad value is the error, naming
    /// where it came from.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        Config::load_from(sources, |name| std::env::var_os(name))
    }

    /// [`Config::load`] with the variables looked up by `env`.
    ///
    /// figment lays the sources over each other and says which one gave each option's
    /// value; every value any source gives is read by its option's own reading first
    /// (so a bad value is refused even where a later source overrides it), and the
    /// range check is blamed on the source whose value won.
    pub fn load_from(
        sources: &Sources,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let mut layers = Figment::new();
        if let Some(path) = &sources.file {
            layers = layers.merge(FileLayer::read(path)?);
        }
        let mut variables = Vec::new();
        for spec in OPTIONS {
            let name = spec.variable();
            let Some(text) = env(&name) else {
                continue;
            };
            // Refused as a flag that is not UTF-8 is: changed, it would be another value
            // (another directory).
            let text = text.into_string().map_err(|text| ConfigError::Value {
                origin: Origin::Variable {
                    name: name.clone(),
                    value: text.to_string_lossy().into_owned(),
                },
                message: "the value is not UTF-8".to_owned(),
            })?;
            variables.push((spec.name.to_owned(), text));
        }
        let layers = layers
            .merge(Texts::read(TextKind::Variable, variables.into_iter())?)
            .merge(Texts::read(TextKind::Flag, sources.flags.iter().cloned())?);
        let (cfg, origins) = Config::from_layers(&layers)?;
        cfg.check().map_err(|(option, message)| {
            match origins.iter().find(|(o, _)| *o == option) {
                Some((_, origin)) => ConfigError::Value {
                    origin: origin.clone(),
                    message,
                },
                None => ConfigError::Invalid(format!("{option} {message}")),
            }
        })?;
        Ok(cfg)
    }

    /// The defaults with each option that `layers` gives a value set to the value of the
    /// last layer that gives one (figment's merge), and where each came from (figment's
    /// metadata of that layer: the file, or the flag or variable it names the key by).
    fn from_layers(layers: &Figment) -> Result<(Config, Origins), ConfigError> {
        let mut cfg = Config::default();
        let mut origins = Vec::new();
        for spec in OPTIONS {
            // A key of the file's `[retention]` table is the option `retention_` + key.
            let table_key = spec
                .name
                .strip_prefix("retention_")
                .map(|k| format!("retention.{k}"));
            let found = std::iter::once(spec.name.to_owned())
                .chain(table_key)
                .find_map(|key| {
                    let value = layers.find_value(&key).ok()?;
                    Some((layers.find_metadata(&key)?, key, value))
                });
            let Some((metadata, key, value)) = found else {
                continue;
            };
            let (origin, toml_value);
            let raw = match (&metadata.source, TextKind::of(metadata)) {
                (Some(Source::File(path)), _) => {
                    origin = Origin::File {
                        path: path.clone(),
                        key,
                    };
                    toml_value = as_toml(&value).map_err(|message| ConfigError::Value {
                        origin: origin.clone(),
                        message,
                    })?;
                    Raw::Toml(&toml_value)
                }
                (_, Some(kind)) => {
                    let text = value.as_str().unwrap_or_default();
                    origin = kind.origin(metadata, spec.name, text);
                    Raw::Text(text)
                }
                // No layer but these three is merged.
                (_, None) => continue,
            };
            if let Err(message) = cfg.set(spec.name, raw) {
                return Err(ConfigError::Value { origin, message });
            }
            origins.push((spec.name, origin));
        }
        Ok((cfg, origins))
    }

    /// Rejects values that would make the broker misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|(option, message)| ConfigError::Invalid(format!("{option} {message}")))
    }

    /// The first option whose value is under its least (its declaration's `min`) or
    /// over its most (`max`), and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        for spec in OPTIONS {
            let Some(value) = self.whole(spec.name) else {
                continue;
            };
            if value < spec.least {
                return Err((spec.name, format!("must be at least {}", spec.least)));
            }
            if value > spec.most {
                return Err((spec.name, format!("must be at most {}", spec.most)));
            }
        }
        Ok(())
    }
}

/// The TOML file's keys and values as a figment layer, named after the file.
struct FileLayer {
    path: PathBuf,
    table: Dict,
}

impl FileLayer {
    /// Reads the TOML file at `path`, once each of its keys is known to be an option's
    /// name (figment takes any key) and its value one the option takes. Keys are the
    /// option names; a `[retention]` table with `max_events`, `max_bytes` and
    /// `max_age_secs` (the shape of the HTTP API's retention) is read too.
    fn read(path: &Path) -> Result<FileLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut parsed = Toml::string(&text).data().map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.kind.to_string(),
        })?;
        let table = parsed.remove(&Profile::Default).unwrap_or_default();
        let mut entries = Vec::new();
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("retention", Value::Dict(_, inner)) => {
                    for (k, v) in inner {
                        entries.push((format!("retention_{k}"), format!("retention.{k}"), v));
                    }
                }
                _ => entries.push((key.clone(), key.clone(), value)),
            }
        }
        let mut seen: Vec<(String, String)> = Vec::new();
        for (option, key, value) in entries {
            let origin = Origin::File {
                path: path.to_owned(),
                key: key.clone(),
            };
            let bad = |message: String| ConfigError::Value {
                origin: origin.clone(),
                message,
            };
            if let Some((_, first)) = seen.iter().find(|(o, _)| *o == option) {
                return Err(bad(format!("sets the same option as key `{first}`")));
            }
            let value = as_toml(value).map_err(bad)?;
            match Config::default().set(&option, Raw::Toml(&value)) {
                Ok(true) => seen.push((option, key)),
                Ok(false) => {
                    let names: Vec<&str> = OPTIONS.iter().map(|o| o.name).collect();
                    return Err(bad(format!(
                        "unknown key; the keys are the option names: {}",
                        names.join(", ")
                    )));
                }
                Err(message) => return Err(bad(message)),
            }
        }
        Ok(FileLayer {
            path: path.to_owned(),
            table,
        })
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.table.clone()))
    }
}

/// A value of the TOML file as TOML again (figment keeps a TOML datetime as a table
/// with one magic key, which `toml::Value` reads back as the datetime).
fn as_toml(value: &Value) -> Result<toml::Value, String> {
    value.deserialize().map_err(|e| e.kind.to_string())
}

/// Flags and variables, which give an option's value as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Flag,
    Variable,
}

impl TextKind {
    /// The name figment knows the layer by.
    fn name(self) -> &'static str {
        match self {
            TextKind::Flag => "flags",
            TextKind::Variable => "environment variables",
        }
    }

    /// The kind of the layer `metadata` describes; `None` for another.
    fn of(metadata: &Metadata) -> Option<TextKind> {
        [TextKind::Flag, TextKind::Variable]
            .into_iter()
            .find(|kind| metadata.name == kind.name())
    }

    /// The layer's metadata: its name, and the flag or variable of an option name.
    fn metadata(self) -> Metadata {
        let metadata = Metadata::named(self.name());
        match self {
            TextKind::Flag => metadata.interpolater(|_: &Profile, keys: &[&str]| {
                format!("--{}", keys.join(".").replace('_', "-"))
            }),
            TextKind::Variable => metadata.interpolater(|_: &Profile, keys: &[&str]| {
                format!("REWIND_{}", keys.join(".").to_uppercase())
            }),
        }
    }

    /// Where `option`'s `text` came from, named by the layer's `metadata`.
    fn origin(self, metadata: &Metadata, option: &str, text: &str) -> Origin {
        let name = metadata.interpolate(&Profile::Default, &[option]);
        match self {
            TextKind::Flag => Origin::Flag { flag: name },
            TextKind::Variable => Origin::Variable {
                name,
                value: text.to_owned(),
            },
        }
    }
}

/// A layer of option texts (flags, or variables) as a figment provider: each value is
/// the string written, whatever it looks like. Not figment's `Env`, which parses a
/// variable's text as a value (`007` arrives as 7, `1.0` as a float, `"relaxed"`
/// without its quotes, `-0` as 0) and takes its name in any case
/// (`rewind_write_queue`), so what reached an option would not be what was written.
struct Texts {
    kind: TextKind,
    values: Dict,
}

impl Texts {
    /// The layer of `values` (option name, text), each read by its option's reading
    /// (all but the range check): the first bad one is the error, naming its flag or
    /// variable.
    fn read(
        kind: TextKind,
        values: impl Iterator<Item = (String, String)>,
    ) -> Result<Texts, ConfigError> {
        let mut dict = Dict::new();
        for (option, text) in values {
            let bad = |message: String| ConfigError::Value {
                origin: kind.origin(&kind.metadata(), &option, &text),
                message,
            };
            match Config::default().set(&option, Raw::Text(&text)) {
                Ok(true) => {}
                Ok(false) => return Err(bad("no such option".to_owned())),
                Err(message) => return Err(bad(message)),
            }
            dict.insert(option, Value::from(text));
        }
        Ok(Texts { kind, values: dict })
    }
}

impl Provider for Texts {
    fn metadata(&self) -> Metadata {
        self.kind.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// Where each option's value came from, by option name.
type Origins = Vec<(&'static str, Origin)>;

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
                "expected {}, found {}",
                Self::EXPECTED,
                found(other)
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
    /// The value as a whole number, for the range check; `None` if it is not one.
    fn whole(&self) -> Option<u64> {
        None
    }
}

/// A TOML value an option does not take, for messages: its type and the value as TOML
/// writes it (`string "many"`, `array [1, 2]`, `datetime 1979-05-27`).
fn found(value: &toml::Value) -> String {
    match value {
        // toml shows a datetime as the table it is serialized through.
        toml::Value::Datetime(datetime) => format!("datetime {datetime}"),
        other => format!("{} {other}", other.type_str()),
    }
}

/// The least value of `option` (0 if there is no such option).
fn option_least(option: &str) -> u64 {
    OptionSpec::named(option).map_or(0, |o| o.least)
}

/// The range of a whole-number option, for messages: "a whole number from 1 up".
fn whole_range(option: &str) -> String {
    let least = option_least(option);
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
            "expected {}, found {}",
            whole_range(option),
            found(other)
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
            fn whole(&self) -> Option<u64> {
                u64::try_from(*self).ok()
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
            .ok_or_else(|| format!("expected true or false, found {}", found(value)))
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

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing-subscriber's plain lines.
    Text,
    /// One JSON object per line (tracing-subscriber's `json`).
    Json,
}

impl OptionValue for LogFormat {
    const EXPECTED: &'static str = "\"text\" or \"json\"";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected text or json, found {text:?}")),
        }
    }
    fn show(&self) -> String {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
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

/// The `auth_alg` option: the one JWT algorithm tokens are taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAlg {
    /// HMAC with SHA-256, with the secret of `auth_secret_file`.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, with the keys of `auth_public_keys`.
    Rs256,
    /// ECDSA on P-256 with SHA-256, with the keys of `auth_public_keys`.
    Es256,
}

impl OptionValue for AuthAlg {
    const EXPECTED: &'static str = "\"HS256\", \"RS256\" or \"ES256\"";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        match text.to_ascii_uppercase().as_str() {
            "HS256" => Ok(AuthAlg::Hs256),
            "RS256" => Ok(AuthAlg::Rs256),
            "ES256" => Ok(AuthAlg::Es256),
            _ => Err(format!("expected HS256, RS256 or ES256, found {text:?}")),
        }
    }
    fn show(&self) -> String {
        match self {
            AuthAlg::Hs256 => "HS256",
            AuthAlg::Rs256 => "RS256",
            AuthAlg::Es256 => "ES256",
        }
        .to_owned()
    }
}

/// An optional path: `none` for none.
impl OptionValue for Option<PathBuf> {
    const EXPECTED: &'static str = "a path or \"none\"";
    fn from_text(text: &str, option: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(None),
            _ => PathBuf::from_text(text, option).map(Some),
        }
    }
    fn show(&self) -> String {
        self.as_ref()
            .map_or_else(|| "none".to_owned(), PathBuf::show)
    }
}

/// A list of paths: comma-separated in a flag or variable, a string or an array of
/// strings in TOML; `none` (or an empty array) for none.
impl OptionValue for Vec<PathBuf> {
    const EXPECTED: &'static str = "paths or \"none\"";
    fn from_text(text: &str, option: &str) -> Result<Self, String> {
        if text == "none" {
            return Ok(Vec::new());
        }
        text.split(',')
            .map(|p| PathBuf::from_text(p.trim(), option))
            .collect()
    }
    fn from_toml(value: &toml::Value, option: &str) -> Result<Self, String> {
        match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => PathBuf::from_text(s, option),
                    other => Err(format!("expected a path, found {}", found(other))),
                })
                .collect(),
            toml::Value::String(s) => Self::from_text(s, option),
            other => Err(format!(
                "expected {}, found {}",
                Self::EXPECTED,
                found(other)
            )),
        }
    }
    fn show(&self) -> String {
        if self.is_empty() {
            return "none".to_owned();
        }
        self.iter().map(PathBuf::show).collect::<Vec<_>>().join(",")
    }
}

/// Optional text: `none` for none.
impl OptionValue for Option<String> {
    const EXPECTED: &'static str = "text or \"none\"";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        match text {
            "" => Err("the value is empty; none for no value".to_owned()),
            "none" => Ok(None),
            _ => Ok(Some(text.to_owned())),
        }
    }
    fn show(&self) -> String {
        self.clone().unwrap_or_else(|| "none".to_owned())
    }
}

/// The `redis` option: a `redis://` or `rediss://` URL, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl(pub Option<String>);

impl OptionValue for RedisUrl {
    const EXPECTED: &'static str = "a redis:// or rediss:// URL, or \"none\"";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("none") {
            return Ok(RedisUrl(None));
        }
        if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
            return Err(format!(
                "expected a redis:// or rediss:// URL, or none, found {text:?}"
            ));
        }
        Ok(RedisUrl(Some(text.to_owned())))
    }
    fn show(&self) -> String {
        self.0.clone().unwrap_or_else(|| "none".to_owned())
    }
}

/// The `allowed_origins` option: each entry normalised
/// (`crate::origin::entry`: an origin, `*` or `null`), in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(pub Vec<String>);

impl OptionValue for AllowedOrigins {
    const EXPECTED: &'static str = "origins separated by commas, \"*\" or \"none\"";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("none") {
            return Ok(AllowedOrigins::default());
        }
        text.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(crate::origin::entry)
            .collect::<Result<_, _>>()
            .map(AllowedOrigins)
    }
    fn from_toml(value: &toml::Value, option: &str) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Self::from_text(s, option),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => crate::origin::entry(s.trim()),
                    other => Err(format!("expected an origin, found {}", found(other))),
                })
                .collect::<Result<_, _>>()
                .map(AllowedOrigins),
            other => Err(format!(
                "expected {}, found {}",
                Self::EXPECTED,
                found(other)
            )),
        }
    }
    fn show(&self) -> String {
        if self.0.is_empty() {
            return "none".to_owned();
        }
        self.0.join(",")
    }
}

/// The `redis_prefix` option: 1–64 of `A-Z a-z 0-9 _ - . :`, so no key of it has a
/// hash tag of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(pub String);

impl OptionValue for KeyPrefix {
    const EXPECTED: &'static str = "a key prefix";
    fn from_text(text: &str, _option: &str) -> Result<Self, String> {
        let ok = (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !ok {
            return Err(format!(
                "expected 1 to 64 of A-Z a-z 0-9 _ - . :, found {text:?}"
            ));
        }
        Ok(KeyPrefix(text.to_owned()))
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
                "expected {}, found {}",
                Self::EXPECTED,
                found(other)
            )),
        }
    }
    fn show(&self) -> String {
        self.0.map_or_else(|| "none".to_owned(), |n| n.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    /// Sources reading the TOML file `text`, kept in `dir`.
    fn file(dir: &tempfile::TempDir, text: &str) -> (PathBuf, Sources) {
        let file = dir.path().join("rewind.toml");
        std::fs::write(&file, text).unwrap();
        let sources = Sources {
            file: Some(file.clone()),
            ..Sources::default()
        };
        (file, sources)
    }

    #[test]
    fn precedence_flags_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let (_, sources) = file(
            &dir,
            "listen = \"127.0.0.1:9000\"\nwrite_queue = 7\n[retention]\nmax_events = 5\n",
        );
        let sources = sources
            .flag("write_queue", "9")
            .flag("retention_max_bytes", "100");
        let cfg = Config::load_from(&sources, env(&[])).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(cfg.write_queue, 9);
        assert_eq!(cfg.retention.max_events, Some(5));
        assert_eq!(cfg.retention.max_bytes, Some(100));
        assert_eq!(cfg.max_batch_events, Config::default().max_batch_events);
    }

    #[test]
    fn rejects_unknown_keys_and_zero_limits() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = file(&dir, "lissen = \"x\"\n");
        assert!(Config::from_toml_file(&path).is_err());
        let sources = Sources::default().flag("write_queue", "0");
        assert!(Config::load_from(&sources, env(&[])).is_err());
    }

    #[test]
    fn variables_sit_between_the_file_and_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (_, sources) = file(
            &dir,
            "write_queue = 7\nmax_wait_secs = 5\nretention_max_age_secs = 10\n",
        );
        let sources = sources.flag("write_queue", "9");
        let vars = [
            ("REWIND_WRITE_QUEUE", "8"),
            ("REWIND_MAX_WAIT_SECS", "6"),
            ("REWIND_RETENTION_MAX_AGE_SECS", "none"),
        ];
        let cfg = Config::load_from(&sources, env(&vars)).unwrap();
        assert_eq!(cfg.write_queue, 9);
        assert_eq!(cfg.max_wait_secs, 6);
        assert_eq!(cfg.retention.max_age_secs, None);
        let cfg = Config::load_from(&sources, env(&[])).unwrap();
        assert_eq!(cfg.max_wait_secs, 5);
        assert_eq!(cfg.retention.max_age_secs, Some(10));
        let none_flag = sources.flag("retention_max_age_secs", "none");
        let cfg = Config::load_from(&none_flag, env(&[])).unwrap();
        assert_eq!(cfg.retention.max_age_secs, None);
    }

    #[test]
    fn an_out_of_range_value_is_blamed_on_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let (path, sources) = file(&dir, "fanout_buffer = 0\n");
        let err = Config::load_from(&sources, env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "config file {}, key `fanout_buffer`: must be at least 1",
                path.display()
            )
        );
        let err = Config::load_from(&sources, env(&[("REWIND_FANOUT_BUFFER", "0")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "environment variable REWIND_FANOUT_BUFFER=\"0\": must be at least 1"
        );
        let flagged = sources.flag("fanout_buffer", "0");
        let err = Config::load_from(&flagged, env(&[("REWIND_FANOUT_BUFFER", "3")]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--fanout-buffer: must be at least 1");
    }

    /// A value no option takes, as text, for every option.
    fn bad_text(spec: &OptionSpec) -> &'static str {
        match spec.name {
            "data_dir" | "auth_secret_file" | "auth_public_keys" | "auth_audience"
            | "auth_issuer" => "",
            "listen" => "nowhere",
            "redis_prefix" => "{tag}",
            _ => "bogus",
        }
    }

    #[test]
    fn a_bad_value_from_each_source_names_that_source_and_only_it() {
        let dir = tempfile::tempdir().unwrap();
        for spec in OPTIONS {
            let bad = bad_text(spec);
            let why = spec.check_text(bad).unwrap_err();
            let flag = format!("--{}", spec.flag());
            let variable = spec.variable();

            let sources = Sources::default().flag(spec.name, bad);
            let err = Config::load_from(&sources, env(&[]))
                .unwrap_err()
                .to_string();
            assert_eq!(err, format!("{flag}: {why}"));

            let vars = [(variable.as_str(), bad)];
            let err = Config::load_from(&Sources::default(), env(&vars))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("environment variable {variable}={bad:?}: {why}")
            );

            let (path, sources) = file(&dir, &format!("{} = {bad:?}\n", spec.name));
            let err = Config::load_from(&sources, env(&[]))
                .unwrap_err()
                .to_string();
            let prefix = format!("config file {}, key `{}`: ", path.display(), spec.name);
            assert!(err.starts_with(&prefix), "{err}");
            assert!(!err.contains(&flag) && !err.contains(&variable), "{err}");
        }
    }

    /// The TOML form of `text`, an option's value as `--help` shows it.
    fn toml_value(text: &str) -> String {
        if text.parse::<u64>().is_ok() || text == "true" || text == "false" {
            text.to_owned()
        } else {
            format!("{text:?}")
        }
    }

    #[test]
    fn every_toml_key_is_the_option_name_and_takes_what_help_shows() {
        let dir = tempfile::tempdir().unwrap();
        for spec in OPTIONS {
            // A value that is not the default, where the option has a whole-number one.
            let mut shown = spec.default_text();
            if let Ok(n) = shown.parse::<u64>() {
                shown = (n + 1).to_string();
            }
            let (path, _) = file(&dir, &format!("{} = {}\n", spec.name, toml_value(&shown)));
            let cfg = Config::from_toml_file(&path).unwrap();
            assert_eq!(cfg.show(spec.name), Some(shown.clone()), "{}", spec.name);
            let vars = [(spec.variable(), shown.clone())];
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let cfg = Config::load_from(&Sources::default(), env(&vars)).unwrap();
            assert_eq!(cfg.show(spec.name), Some(shown.clone()), "{}", spec.name);
            let flagged = Sources::default().flag(spec.name, &shown);
            let cfg = Config::load_from(&flagged, env(&[])).unwrap();
            assert_eq!(cfg.show(spec.name), Some(shown), "{}", spec.name);
        }
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it_and_listing_the_options() {
        let dir = tempfile::tempdir().unwrap();
        for key in ["lissen", "write-queue", "WRITE_QUEUE", "recover", "config"] {
            let (path, sources) = file(&dir, &format!("{key} = 1\n"));
            let err = Config::load_from(&sources, env(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!(
                    "config file {}, key `{key}`: unknown key",
                    path.display()
                )),
                "{err}"
            );
            assert!(err.contains("write_queue, max_group_commit"), "{err}");
        }
        let (_, sources) = file(&dir, "[retention]\nmax_evnts = 1\n");
        let err = Config::load_from(&sources, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `retention.max_evnts`: unknown key"),
            "{err}"
        );
        let err = Config::load_from(&Sources::default().flag("lissen", "x"), env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--lissen: no such option");
    }

    #[test]
    fn messages_give_the_range_check_enforces() {
        for spec in OPTIONS {
            let option = spec.name;
            let mut cfg = Config::default();
            if cfg.set(option, Raw::Text("0")).is_err()
                || Config::default().set(option, Raw::Text("x")).is_ok()
            {
                // Not a whole number, or a retention limit (refused at 0 when read).
                continue;
            }
            let zero_refused = cfg.check().is_err();
            assert_eq!(spec.least > 0, zero_refused, "{option}");
            // The least the check takes is the one the message gives.
            let least = least_taken(option);
            assert_eq!(least, spec.least, "{option}");
            let err = Config::default().set(option, Raw::Text("-1")).unwrap_err();
            assert!(err.contains(&format!("from {least} up")), "{option}: {err}");
        }
    }

    /// The least whole number the range check takes for `option`, found by trying.
    fn least_taken(option: &str) -> u64 {
        (0..=u64::from(u16::MAX))
            .find(|n| {
                let mut cfg = Config::default();
                cfg.set(option, Raw::Text(&n.to_string())).is_ok() && cfg.check().is_ok()
            })
            .unwrap()
    }

    #[test]
    fn a_store_cache_under_sleds_floor_and_a_write_buffer_of_0_are_refused() {
        // sled refuses a cache under 256 bytes only when the store is opened, and then
        // as damage; a write buffer of 0 would never send an event.
        assert_eq!(least_taken("store_cache_bytes"), 256);
        assert_eq!(least_taken("ws_write_buffer_bytes"), 1);
        for (variable, text, why) in [
            ("REWIND_STORE_CACHE_BYTES", "0", "must be at least 256"),
            ("REWIND_STORE_CACHE_BYTES", "255", "must be at least 256"),
            ("REWIND_WS_WRITE_BUFFER_BYTES", "0", "must be at least 1"),
        ] {
            let err = refused(&Sources::default(), &[(variable, text)]);
            assert_eq!(
                err,
                format!("environment variable {variable}={text:?}: {why}")
            );
        }
        let cfg = Config::load_from(
            &Sources::default().flag("store_cache_bytes", "256"),
            env(&[]),
        )
        .unwrap();
        assert_eq!(cfg.store_cache_bytes, 256);
    }

    #[test]
    fn runtime_workers_leave_a_core_to_the_writer_unless_set() {
        let auto = Config::default();
        assert_eq!(auto.worker_threads, 0);
        assert_eq!(
            [1, 2, 3, 8].map(|cores| auto.runtime_workers(cores)),
            [1, 1, 2, 7]
        );
        let set =
            Config::load_from(&Sources::default().flag("worker_threads", "3"), env(&[])).unwrap();
        assert_eq!([1, 2, 8].map(|cores| set.runtime_workers(cores)), [3, 3, 3]);
    }

    #[test]
    fn a_value_over_an_options_most_is_blamed_on_where_it_came_from() {
        let permits = tokio::sync::Semaphore::MAX_PERMITS as u64;
        let cases = [
            ("write_queue", permits),
            ("max_connections", permits),
            ("blocking_threads", 32_768),
            ("worker_threads", 1024),
            ("ws_read_buffer_bytes", 64 << 20),
            ("http_max_headers", 10_000),
            ("http_max_header_bytes", 417_792),
            ("redis_wait_replicas", 1_000_000),
            ("auth_leeway_secs", 86_400),
        ];
        for (option, most) in cases {
            let spec = OptionSpec::named(option).unwrap();
            assert_eq!(spec.most(), Some(most), "{option}");
            let over = (most + 1).to_string();
            let err = refused(&Sources::default().flag(option, &over), &[]);
            assert_eq!(err, format!("--{}: must be at most {most}", spec.flag()));
            let variable = spec.variable();
            let err = refused(&Sources::default(), &[(variable.as_str(), over.as_str())]);
            assert_eq!(
                err,
                format!("environment variable {variable}={over:?}: must be at most {most}")
            );
            let dir = tempfile::tempdir().unwrap();
            let (path, sources) = file(
                &dir,
                &format!(
                    "{option} = {}
",
                    most + 1
                ),
            );
            assert_eq!(
                refused(&sources, &[]),
                format!(
                    "config file {}, key `{option}`: must be at most {most}",
                    path.display()
                )
            );
            let err = refused(
                &Sources::default().flag(option, &usize::MAX.to_string()),
                &[],
            );
            assert!(err.ends_with(&format!("must be at most {most}")), "{err}");
            let cfg = Config::load_from(
                &Sources::default().flag(option, &most.to_string()),
                env(&[]),
            )
            .unwrap();
            assert_eq!(cfg.whole(option), Some(most));
        }
        // Every other option is bounded by its type only.
        for spec in OPTIONS {
            if !cases.iter().any(|(o, _)| *o == spec.name) {
                assert_eq!(spec.most(), None, "{}", spec.name);
            }
        }
    }

    #[test]
    fn seconds_of_any_option_make_a_deadline() {
        let now = std::time::Instant::now();
        for secs in [0, 30, u64::MAX / 1000, u64::MAX] {
            let after = seconds(secs);
            assert!(now.checked_add(after).is_some(), "{secs}");
            assert!(tokio::time::Instant::now().checked_add(after).is_some());
        }
        assert_eq!(seconds(30), std::time::Duration::from_secs(30));
        assert_eq!(seconds(u64::MAX), LONGEST);
    }

    #[test]
    fn a_variable_that_is_not_utf8_is_refused_naming_it() {
        use std::os::unix::ffi::OsStringExt;
        for name in ["REWIND_DATA_DIR", "REWIND_WRITE_QUEUE", "REWIND_LISTEN"] {
            let env = |asked: &str| (asked == name).then(|| OsString::from_vec(b"d-\xff".to_vec()));
            let err = Config::load_from(&Sources::default(), env)
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("environment variable {name}=\"d-\u{fffd}\": the value is not UTF-8")
            );
        }
    }

    /// Loads `sources` with `vars`, for the error message.
    fn refused(sources: &Sources, vars: &[(&str, &str)]) -> String {
        Config::load_from(sources, env(vars))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_flag_or_variable_reaches_its_option_as_written() {
        // Texts a value parser would turn into other values (a number, a float, a
        // string without its quotes, an array) reach the option as the text written.
        let var =
            |name: &str, text: &str| Config::load_from(&Sources::default(), env(&[(name, text)]));
        let flag = |option: &str, text: &str| {
            Config::load_from(&Sources::default().flag(option, text), env(&[]))
        };
        for text in ["007", "1.50", "[a]", "{a=b}", "true", "\"x\"", "'y'"] {
            let path = PathBuf::from(text);
            assert_eq!(var("REWIND_DATA_DIR", text).unwrap().data_dir, path);
            assert_eq!(flag("data_dir", text).unwrap().data_dir, path);
        }
        assert_eq!(var("REWIND_WRITE_QUEUE", "007").unwrap().write_queue, 7);
        assert_eq!(var("REWIND_WRITE_QUEUE", " 5 ").unwrap().write_queue, 5);
        assert_eq!(var("REWIND_WRITE_QUEUE", "+5").unwrap().write_queue, 5);
        assert!(!var("REWIND_AUTO_CREATE", "false").unwrap().auto_create);
        assert_eq!(
            var("REWIND_RETENTION_MAX_EVENTS", "NONE")
                .unwrap()
                .retention
                .max_events,
            None
        );
        let cases = [
            (
                "REWIND_WRITE_QUEUE",
                "1.0",
                "expected a whole number from 1 up, found \"1.0\"",
            ),
            (
                "REWIND_WRITE_QUEUE",
                "1e3",
                "expected a whole number from 1 up, found \"1e3\"",
            ),
            (
                "REWIND_WRITE_QUEUE",
                "",
                "expected a whole number from 1 up, found \"\"",
            ),
            (
                "REWIND_WRITE_QUEUE",
                " -1",
                "expected a whole number from 1 up, found \"-1\"",
            ),
            (
                "REWIND_WRITE_QUEUE",
                "[1]",
                "expected a whole number from 1 up, found \"[1]\"",
            ),
            (
                "REWIND_MAX_WAIT_SECS",
                "-0",
                "expected a whole number from 0 up, found \"-0\"",
            ),
            (
                "REWIND_MAX_WAIT_SECS",
                "18446744073709551616",
                "18446744073709551616 is over the largest value, 18446744073709551615",
            ),
            (
                "REWIND_DURABILITY",
                "\"relaxed\"",
                "expected durable or relaxed, found \"\\\"relaxed\\\"\"",
            ),
            (
                "REWIND_AUTO_CREATE",
                "1",
                "expected true or false, found \"1\"",
            ),
            (
                "REWIND_AUTO_CREATE",
                "TRUE",
                "expected true or false, found \"TRUE\"",
            ),
            ("REWIND_DATA_DIR", "  ", "the path is empty"),
            (
                "REWIND_LISTEN",
                "7070",
                "expected HOST:PORT (an IP address or a host name, and a port)",
            ),
        ];
        for (name, text, why) in cases {
            let err = refused(&Sources::default(), &[(name, text)]);
            assert_eq!(err, format!("environment variable {name}={text:?}: {why}"));
            let option = name.strip_prefix("REWIND_").unwrap().to_lowercase();
            let err = refused(&Sources::default().flag(&option, text), &[]);
            assert_eq!(err, format!("--{}: {why}", option.replace('_', "-")));
        }
        // Only the variable's exact name is read.
        let cfg = var("rewind_write_queue", "0").unwrap();
        assert_eq!(cfg.write_queue, Config::default().write_queue);
    }

    #[test]
    fn a_file_value_is_read_as_the_toml_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "write_queue = 1.0",
                "expected a whole number from 1 up, found float 1.0",
            ),
            (
                "write_queue = 1e3",
                "expected a whole number from 1 up, found float 1000.0",
            ),
            (
                "write_queue = -1",
                "expected a whole number from 1 up, found -1",
            ),
            (
                "write_queue = \"7\"",
                "expected a whole number from 1 up, found string \"7\"",
            ),
            (
                "write_queue = true",
                "expected a whole number from 1 up, found boolean true",
            ),
            (
                "write_queue = [1, 2]",
                "expected a whole number from 1 up, found array [1, 2]",
            ),
            (
                "write_queue = { a = 1 }",
                "expected a whole number from 1 up, found table { a = 1 }",
            ),
            (
                "write_queue = 1979-05-27",
                "expected a whole number from 1 up, found datetime 1979-05-27",
            ),
            (
                "auto_create = \"true\"",
                "expected true or false, found string \"true\"",
            ),
            ("data_dir = 7", "expected a path, found integer 7"),
            ("data_dir = \"\"", "the path is empty"),
            (
                "durability = \"Durable\"",
                "expected durable or relaxed, found \"Durable\"",
            ),
            (
                "retention_max_events = -1",
                "expected a whole number from 1 up, or \"none\", found -1",
            ),
            (
                "retention_max_events = 1.5",
                "expected a whole number from 1 up, or \"none\", found float 1.5",
            ),
        ];
        for (text, why) in cases {
            let (path, sources) = file(&dir, &format!("{text}\n"));
            let key = text.split(" =").next().unwrap();
            assert_eq!(
                refused(&sources, &[]),
                format!("config file {}, key `{key}`: {why}", path.display()),
                "{text}"
            );
        }
        let (_, sources) = file(&dir, "write_queue = 9_000\ndata_dir = \"007\"\n");
        let cfg = Config::load_from(&sources, env(&[])).unwrap();
        assert_eq!(
            (cfg.write_queue, cfg.data_dir),
            (9000, PathBuf::from("007"))
        );
    }

    #[test]
    fn a_bad_value_is_refused_where_a_later_source_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, sources) = file(&dir, "write_queue = \"many\"\n");
        let good_var = [("REWIND_WRITE_QUEUE", "5")];
        let err = refused(&sources.clone().flag("write_queue", "6"), &good_var);
        let file_key = format!("config file {}, key `write_queue`: ", path.display());
        assert!(err.starts_with(&file_key), "{err}");
        let bad_var = [("REWIND_WRITE_QUEUE", "x")];
        let err = refused(&Sources::default().flag("write_queue", "6"), &bad_var);
        assert!(
            err.starts_with("environment variable REWIND_WRITE_QUEUE=\"x\": "),
            "{err}"
        );
    }

    #[test]
    fn the_retention_table_sits_under_variables_and_flags_and_is_blamed_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (path, sources) = file(&dir, "[retention]\nmax_events = 5\ninterval_ms = 0\n");
        let err = refused(&sources, &[]);
        assert_eq!(
            err,
            format!(
                "config file {}, key `retention.interval_ms`: must be at least 1",
                path.display()
            )
        );
        let (_, sources) = file(&dir, "[retention]\nmax_events = 5\nmax_bytes = 9\n");
        let vars = [("REWIND_RETENTION_MAX_EVENTS", "7")];
        let flagged = sources.clone().flag("retention_max_bytes", "none");
        let cfg = Config::load_from(&flagged, env(&vars)).unwrap();
        assert_eq!(cfg.retention.max_events, Some(7));
        assert_eq!(cfg.retention.max_bytes, None);
        let cfg = Config::load_from(&sources, env(&[])).unwrap();
        assert_eq!(cfg.retention.max_events, Some(5));
        assert_eq!(cfg.retention.max_bytes, Some(9));
    }

    #[test]
    fn a_file_that_is_not_toml_or_not_there_is_named_once() {
        let dir = tempfile::tempdir().unwrap();
        let (path, sources) = file(&dir, "max_wait_secs = 0x\n");
        let err = refused(&sources, &[]);
        let start = format!("config file {} is not valid TOML: ", path.display());
        assert!(err.starts_with(&start), "{err}");
        assert!(err.contains("line 1"), "{err}");
        assert_eq!(err.matches(&path.display().to_string()).count(), 1, "{err}");
        let missing = Sources {
            file: Some(dir.path().join("absent.toml")),
            ..Sources::default()
        };
        let err = Config::load_from(&missing, env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn redis_urls_and_key_prefixes_are_checked() {
        let load = |option: &str, text: &str| {
            Config::load_from(&Sources::default().flag(option, text), env(&[]))
        };
        for url in ["redis://127.0.0.1:6379", "rediss://u:p@cache:6380/2"] {
            assert_eq!(
                load("redis", url).unwrap().redis,
                RedisUrl(Some(url.to_owned()))
            );
        }
        assert_eq!(load("redis", "none").unwrap().redis, RedisUrl(None));
        for bad in ["http://x:1", "127.0.0.1:6379", ""] {
            let err = load("redis", bad).unwrap_err().to_string();
            assert!(err.contains("redis:// or rediss://"), "{bad}: {err}");
        }
        assert_eq!(
            load("redis_prefix", "app-1.prod:rw").unwrap().redis_prefix,
            KeyPrefix("app-1.prod:rw".to_owned())
        );
        for bad in ["", "{ns}", "a b", &"x".repeat(65)] {
            assert!(load("redis_prefix", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shown_defaults_read_back_as_the_defaults() {
        let defaults = Config::default();
        for spec in OPTIONS {
            let shown = spec.default_text();
            assert_eq!(defaults.show(spec.name), Some(shown.clone()));
            let mut again = Config::default();
            again.set(spec.name, Raw::Text(&shown)).unwrap();
            assert_eq!(again, defaults, "{}", spec.name);
        }
        let shown = |name| OptionSpec::named(name).unwrap().default_text();
        assert_eq!(shown("retention_max_age_secs"), "604800");
        assert_eq!(shown("retention_max_bytes"), "none");
        assert_eq!(shown("write_queue"), "4096");
        assert_eq!(shown("redis"), "none");
        assert_eq!(shown("redis_prefix"), "rewind");
        assert_eq!(shown("allowed_origins"), "none");
        assert_eq!(OPTIONS.len(), 60);
    }

    #[test]
    fn allowed_origins_from_a_list_flag_a_variable_or_a_toml_array() {
        let listed = |cfg: Config| cfg.allowed_origins.0;
        let sources = Sources::default().flag(
            "allowed_origins",
            " HTTPS://Dash.example/ , http://localhost:5173,null,*",
        );
        let want = ["https://dash.example", "http://localhost:5173", "null", "*"];
        assert_eq!(listed(Config::load_from(&sources, env(&[])).unwrap()), want);
        let vars = [("REWIND_ALLOWED_ORIGINS", "http://a.example:8080")];
        let cfg = Config::load_from(&Sources::default(), env(&vars)).unwrap();
        assert_eq!(listed(cfg), ["http://a.example:8080"]);
        let dir = tempfile::tempdir().unwrap();
        let (_, sources) = file(
            &dir,
            "allowed_origins = [\"https://dash.example:443\", \"null\"]\n",
        );
        let cfg = Config::load_from(&sources, env(&[])).unwrap();
        assert_eq!(listed(cfg), ["https://dash.example", "null"]);
        for bad in ["https://a.example/app", "a.example", "http://u@a.example"] {
            let sources = Sources::default().flag("allowed_origins", bad);
            let err = Config::load_from(&sources, env(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("is not an origin"), "{bad}: {err}");
            assert!(err.contains("--allowed-origins"), "{bad}: {err}");
        }
        let (_, sources) = file(&dir, "allowed_origins = [1]\n");
        let err = Config::load_from(&sources, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected an origin"), "{err}");
    }
}
