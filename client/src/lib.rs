//! A Rust client for the rewind broker (spec §7); the [`guide`] (`docs/client.md`) shows
//! it in use, and its examples are compiled as doc tests.
//!
//! - [`client`]: [`Client`], one WebSocket multiplexing subscriptions ([`Subscription`], a
//!   `Stream` of [`Item`]s) and publishes, reconnecting with backoff and jitter, resuming
//!   by offset and epoch, de-duplicating by offset, granting credit as the application
//!   consumes, and sending unanswered publishes again with their idempotency keys.
//! - [`backoff`]: [`Backoff`], the doubling waits between attempts that both of them
//!   (and the `rewind` command through them) use, and [`jitter`].
//! - [`http`]: [`Publisher`], a plain HTTP publisher for services that never
//!   subscribe: one event or a batch, answered with offsets once durable, with an
//!   idempotency key so a retried request is appended once.
//!   [`http_client_builder`] is the one HTTP client setup (reqwest, rustls) every HTTP
//!   caller of the project starts from; `reqwest` itself is re-exported.
//! - [`record`]: what both publish: [`Data`] (a JSON value, checked JSON text or
//!   bytes) and [`Record`] (event name, optional key, data).
//! - [`offsets`]: where a consumer keeps the next offset it wants per namespace, in memory
//!   or in a file that survives a restart (atomic write-and-rename).
//! - [`tls`]: `https://`/`wss://` through rustls, and [`Certificate`] for extra roots.
//!
//! Everything an application needs is re-exported here: the protocol's [`Event`],
//! [`Payload`] and [`Position`], `serde_json`'s [`json!`] and [`Value`], and `futures`'
//! [`StreamExt`] (for `subscription.next()`); the whole protocol crate is [`protocol`].
//!
//! ```no_run
//! use rewind_client::{json, Publisher, PublisherOptions};
//!
//! # async fn demo() -> Result<(), rewind_client::PublishError> {
//! let publisher = Publisher::new("http://127.0.0.1:7070", PublisherOptions::default())?;
//! let offset = publisher
//!     .publish("orders", "created", json!({"id": 42}))
//!     .await?;
//! println!("stored at offset {offset}");
//! # Ok(())
//! # }
//! ```

pub mod backoff;
pub mod client;
pub mod http;
pub mod offsets;
pub mod record;
pub mod subscription;
pub mod tls;

#[doc = include_str!("../../docs/client.md")]
pub mod guide {}

pub use backoff::{jitter, Backoff};
pub use client::{Client, ClientError, ClientOptions, Start};
pub use futures::StreamExt;
pub use http::{http_client_builder, PublishError, Published, Publisher, PublisherOptions};
pub use offsets::{FileOffsetStore, MemoryOffsetStore, OffsetStore, Resume};
pub use record::{BadJson, Data, JsonText, Record};
pub use reqwest;
pub use rewind_protocol as protocol;
pub use rewind_protocol::{Event, Payload, Position};
pub use serde_json::{json, Value};
pub use subscription::{Item, Subscription};
pub use tls::{Certificate, TlsError};
