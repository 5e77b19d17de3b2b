//! The engine: everything between the transports and the store.
//!
//! - [`error`]: the engine's errors and their one mapping to wire codes.
//! - [`log`]: the [`Log`] handle transports use to publish, read and manage namespaces.
//! - [`writer`]: the one thread that applies every write and commits in groups, so
//!   concurrent publishes share one `fdatasync`.
//! - [`namespaces`]: per-namespace state readers see (epoch, the visible end, earliest).
//! - [`fanout`]: live events encoded once per encoding and shared by every subscriber.
//! - [`live`]: each namespace's ring of live runs, and the one memory budget of them all.

pub mod error;
pub mod fanout;
pub mod live;
pub mod log;
pub mod namespaces;
pub mod writer;

pub use error::LogError;
pub use log::{Log, Pending, QueueSlot, ReadRequest};
pub use writer::Idempotency;

/// What transports read back from the store through the engine.
pub use crate::storage::{Appended, NsInfo};
