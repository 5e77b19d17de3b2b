//! Wire-level vocabulary of rewind, with no I/O.
//!
//! A map of the modules:
//!
//! - [`names`]: the rules for namespace and event names (spec §2).
//! - [`event`]: events, their payloads, and read positions.
//! - [`publish`]: parsing of publish requests (a JSON object, a JSON array, NDJSON) into
//!   validated [`NewEvent`]s.
//! - [`value`]: the one validation of event values every way in uses (a value is
//!   accepted only if JSON and MessagePack both carry it), and the transcoders between
//!   the two encodings.
//! - [`idempotency`]: the rule for idempotency keys, and the digest of a publish request
//!   that tells a retry from a different request under the same key.
//! - [`frame`]: WebSocket frames in both encodings, with decoders that tell a broken
//!   frame (close the connection) from a mistaken one (answer with `error`).
//! - [`codec`]: how an event is written out to a reader, in JSON and in MessagePack.
//! - [`wire`]: the WebSocket encodings ([`wire::Encoding`]) and server frames as finished
//!   wire bytes, built once and written to every subscriber.
//! - [`error`]: the error codes shared by every transport, and this crate's error type.
//!
//! Everything here works on byte slices and values; the broker and the clients do the
//! reading and writing of sockets and files.

pub mod codec;
pub mod error;
pub mod event;
mod field;
pub mod frame;
pub mod idempotency;
pub mod names;
pub mod publish;
pub mod value;
pub mod wire;

pub use error::{ErrorCode, ProtocolError};
pub use event::{BeyondEnd, Event, NewEvent, Payload, Position};
pub use names::{validate_event_name, validate_namespace};
