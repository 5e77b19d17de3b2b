//! A Rust client for the rewind broker (spec §7); `docs/client.md` has the guide.
//!
//! - [`client`]: [`Client`], one WebSocket multiplexing subscriptions ([`Subscription`], a
//!   `Stream` of [`Item`]s) and publishes, reconnecting with backoff and jitter, resuming
//!   by offset and epoch, de-duplicating by offset, granting credit as the application
//!   consumes, and sending unanswered publishes again with their idempotency keys.
//! - [`offsets`]: where a consumer keeps the next offset it wants per namespace, in memory
//!   or in a file that survives a restart (atomic write-and-rename).
//! - [`http`]: [`http::Publisher`], a plain HTTP publisher for services that never
//!   subscribe: one event or a batch, answered with offsets once durable, with an
//!   idempotency key so a retried request is appended once.
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

pub mod client;
pub mod http;
pub mod offsets;
pub mod subscription;

pub use client::{Client, ClientError, ClientOptions, Start};
pub use http::{PublishError, Published, Publisher, PublisherOptions};
pub use offsets::{FileOffsetStore, MemoryOffsetStore, OffsetStore, Resume};
pub use subscription::{Item, Subscription};
