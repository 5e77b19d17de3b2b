//! The engine: everything between the transports and the store.
//!
//! - [`error`]: the engine's errors and their one mapping to wire codes.
//! - [`log`]: the [`Log`] handle transports use to publish, read and manage namespaces.
//! - [`writer`]: the one thread that applies every write and commits in groups, so
//!   concurrent publishes share one `fdatasync`.
//! - [`namespaces`]: a namespace's live state, one `Namespace` per incarnation (epoch,
//!   visible end, earliest, live ring, deletion), owned by the writer.
//! - [`fanout`]: live events encoded once per encoding and shared by every subscriber.
//! - [`cluster`]: with Redis, follows what the other brokers sharing it change.
//! - [`live`]: each namespace's ring of live runs, and the one memory budget of them all.
//!
//! Outside the crate only the re-exports below are reachable; the modules are the
//! crate's own.

pub(crate) mod cluster;
pub(crate) mod error;
pub(crate) mod fanout;
pub(crate) mod live;
pub(crate) mod log;
pub(crate) mod namespaces;
pub(crate) mod writer;

pub use error::LogError;
pub use log::{Log, Pending, QueueSlot, ReadRequest};
pub use writer::Idempotency;

/// What transports read back from the store through the engine.
pub use crate::storage::{Appended, NsInfo};
