//! The rewind broker.
//!
//! A map of the modules, from the disk up:
//!
//! - [`storage`]: the log store trait and its sled implementation (offsets, epochs,
//!   retention, idempotency records, the durable sync).
//! - [`engine`]: the [`Log`] handle transports use to publish, read and manage
//!   namespaces; the writer thread that commits in groups; each namespace's live state;
//!   the fan-out of live events to subscribers.
//! - [`http`]: the HTTP API — routing, publish, read and long-poll, namespace admin.
//! - [`ws`]: the WebSocket transport — sessions, multiplexed subscriptions with credit,
//!   publishing, liveness.
//! - [`server`]: the accept loop with its connection cap and graceful shutdown; tests
//!   call [`server::run`] on a listener bound to port 0.
//! - [`bench`]: `rewind bench`, the publish-path benchmark.
//! - [`config`]: the configuration struct, its defaults, and how flags, environment and
//!   TOML combine.

pub mod bench;
pub mod config;
pub mod engine;
pub mod http;
pub mod server;
pub mod storage;
pub mod ws;

pub use engine::Log;
