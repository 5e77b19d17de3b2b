//! The rewind broker.
//!
//! A map of the modules, from the disk up:
//!
//! - [`storage`]: the log store trait and its sled implementation (offsets, epochs,
//!   retention, idempotency records, the durable sync).
//! - [`writer`]: the one thread that applies every write and commits in groups, so
//!   concurrent publishes share one `fdatasync`.
//! - [`namespaces`]: per-namespace state readers see (epoch, the visible end, earliest).
//! - [`fanout`]: live events encoded once per encoding and shared by every subscriber.
//! - [`live`]: each namespace's ring of live runs, and the one memory budget of them all.
//! - [`log`]: the handle transports use to publish, read and manage namespaces.
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
pub mod fanout;
pub mod http;
pub mod live;
pub mod log;
pub mod namespaces;
pub mod server;
pub mod storage;
pub mod writer;
pub mod ws;
