//! A Rust client for the rewind broker (spec §7). Built so far:
//!
//! - [`offsets`]: where a consumer keeps the next offset it wants per namespace, in memory
//!   or in a file that survives a restart (atomic write-and-rename).
//! - [`http`]: [`http::Publisher`], a plain HTTP publisher for services that never
//!   subscribe: one event or a batch, answered with offsets once durable, with an
//!   idempotency key so a retried request is appended once.
//!
//! The WebSocket client (subscriptions with reconnect and credit) comes next.
//!
//! ```no_run
//! use rewind_client::{Publisher, PublisherOptions};
//!
//! # async fn demo() -> Result<(), rewind_client::PublishError> {
//! let publisher = Publisher::new("http://127.0.0.1:7070", PublisherOptions::default())?;
//! let offset = publisher
//!     .publish("orders", "created", &serde_json::json!({"id": 42}))
//!     .await?;
//! println!("stored at offset {offset}");
//! # Ok(())
//! # }
//! ```

pub mod http;
pub mod offsets;

pub use http::{PublishError, Published, Publisher, PublisherOptions};
pub use offsets::{FileOffsetStore, MemoryOffsetStore, OffsetStore, Resume};
