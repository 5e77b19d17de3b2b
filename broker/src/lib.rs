//! The rewind broker.
//!
//! A map of the modules, from the disk up:
//!
//! - [`storage`]: the log store trait and its sled implementation (offsets, epochs,
//!   retention, idempotency records, the durable sync).
//! - [`config`]: the configuration struct, its defaults, and how flags, environment and
//!   TOML combine.

pub mod config;
pub mod storage;
