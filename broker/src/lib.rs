//! The rewind broker.
//!
//! A map of the modules, in the order an event passes them (`docs/architecture.md` draws
//! the path; `tests/structure.rs` keeps the uses acyclic):
//!
//! - `http`: the HTTP API on axum — routing, publish, read and long-poll, namespace admin.
//! - `ws`: the WebSocket transport — sessions, multiplexed subscriptions with credit,
//!   publishing, liveness.
//! - `engine`: the [`Log`] handle both transports call; the writer thread that commits in
//!   groups; each namespace's live state; the fan-out of live events and its memory budget.
//!   Its errors ([`LogError`]) carry the one mapping to wire codes.
//! - `storage`: the [`Storage`] trait and the segmented store, [`LogStore`] (offsets,
//!   epochs, retention, the write-ahead log and its group-commit sync, idempotency records).
//! - `metrics`: the figures `GET /metrics` reports, one set per [`Log`].
//! - [`auth`]: tokens (JWT) and what each allows; `http` checks every request with it,
//!   `ws` every `open` and `publish`.
//! - [`server`]: the accept loop with its connection cap and graceful shutdown; tests
//!   call [`server::run`] on a listener bound to port 0.
//! - [`config`]: [`Config`], each option declared once, and how flags, environment and
//!   TOML combine (the binary builds its flags from [`config::OPTIONS`]).
//!
//! ### Entry points
//!
//! What the `rewind` binary's commands and benchmarks use, and all they may use: [`Config`],
//! [`Log`] and [`server::run`] to run a broker, and for the benchmark's raw-store
//! reference (`rewind bench publish` measures the store alone beside the broker) the
//! storage entry point [`LogStore`] opened with [`OpenOptions`], driven through the
//! [`Storage`] trait, failing with [`StoreError`], its namespaces created with a
//! [`Retention`].

pub use config::{Config, Retention};
pub use engine::{Appended, Idempotency, Log, LogError, NsInfo, Pending, QueueSlot, ReadRequest};
pub use storage::log_store::LogStore;
pub use storage::open::OpenOptions;
pub use storage::{Storage, StoreError};

pub mod auth;
pub mod config;
pub(crate) mod engine;
pub(crate) mod http;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod origin;
pub mod server;
pub(crate) mod storage;
pub(crate) mod ws;
