//! The engine's errors, and the one mapping from them to the wire codes every transport
//! answers with ([`LogError::code`]): the same mistake gets the same code over HTTP and
//! WebSocket.

use rewind_protocol::ErrorCode;

use crate::storage::StoreError;

/// Why a log operation failed. Cloneable, because one failed sync fails a whole group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The namespace does not exist.
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
    /// The namespace was deleted while the request waited on it or read it; the same
    /// answer as [`LogError::NotFound`] to the client, with a message that says why.
    #[error("namespace {0:?} was deleted")]
    Deleted(String),
    /// The write queue is full.
    #[error("the write queue is full; retry shortly")]
    Overloaded,
    /// The broker is shutting down and takes no more writes.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The read position is not valid for this namespace.
    #[error("{0}")]
    BadPosition(String),
    /// The disk is full.
    #[error("the disk is full")]
    DiskFull,
    /// The shared store (Redis) cannot be reached; nothing was acknowledged; retry.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store failed.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The idempotency key was used inside the window for a different request.
    #[error(
        "the idempotency key was used for a different request (offsets {first}..={last}); \
         a retry must send the same events"
    )]
    IdempotencyConflict {
        /// Offset of the first event of the original request.
        first: u64,
        /// Offset of the last event of the original request.
        last: u64,
    },
}

impl LogError {
    /// The wire code, the same on every transport.
    pub fn code(&self) -> ErrorCode {
        match self {
            LogError::NotFound(_) | LogError::Deleted(_) => ErrorCode::NotFound,
            LogError::Overloaded => ErrorCode::Overloaded,
            LogError::ShuttingDown => ErrorCode::ShuttingDown,
            LogError::BadPosition(_) => ErrorCode::BadPosition,
            LogError::DiskFull => ErrorCode::StorageFull,
            LogError::Unavailable(_) => ErrorCode::Unavailable,
            LogError::Storage(_) => ErrorCode::Internal,
            LogError::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
        }
    }
}

impl From<&StoreError> for LogError {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::NotFound(ns) => LogError::NotFound(ns.clone()),
            StoreError::IdempotencyConflict { first, last } => LogError::IdempotencyConflict {
                first: *first,
                last: *last,
            },
            StoreError::Unavailable(why) => LogError::Unavailable(why.clone()),
            _ if e.is_disk_full() => LogError::DiskFull,
            other => LogError::Storage(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_one_wire_code() {
        let cases = [
            (LogError::NotFound("n".into()), ErrorCode::NotFound),
            (LogError::Deleted("n".into()), ErrorCode::NotFound),
            (LogError::Overloaded, ErrorCode::Overloaded),
            (LogError::ShuttingDown, ErrorCode::ShuttingDown),
            (LogError::BadPosition("p".into()), ErrorCode::BadPosition),
            (LogError::DiskFull, ErrorCode::StorageFull),
            (LogError::Storage("s".into()), ErrorCode::Internal),
            (
                LogError::IdempotencyConflict { first: 1, last: 2 },
                ErrorCode::IdempotencyConflict,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
        let full = LogError::from(&StoreError::Io(std::io::Error::from_raw_os_error(28)));
        assert_eq!(full, LogError::DiskFull);
        assert_eq!(full.code(), ErrorCode::StorageFull);
        let missing = LogError::from(&StoreError::NotFound("n".into()));
        assert_eq!(missing, LogError::NotFound("n".into()));
        let conflict = LogError::from(&StoreError::IdempotencyConflict { first: 3, last: 4 });
        assert_eq!(
            conflict,
            LogError::IdempotencyConflict { first: 3, last: 4 }
        );
    }
}
