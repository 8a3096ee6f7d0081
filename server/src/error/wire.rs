//! The error a response carries: a wire code and a message for a person.

use shardlog_wire::protocol::fb::ErrorCode;

/// An error to put in a response: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// The code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl WireError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }

    /// The error of a shard that answered `Unavailable`.
    pub fn unavailable() -> WireError {
        WireError::new(
            ErrorCode::ShuttingDown,
            "the shard owning this partition is shutting down; retry on another broker or later",
        )
    }

    /// The code for an unknown topic or partition.
    pub fn unknown_partition(topic: &str, partition: u32) -> WireError {
        WireError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic {topic:?} has no partition {partition}"),
        )
    }
}

impl From<&shardlog_engine::Error> for WireError {
    fn from(error: &shardlog_engine::Error) -> WireError {
        use shardlog_engine::Error as E;
        let code = match error {
            E::InvalidBatch(inner) => return WireError::from(inner),
            E::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            E::StorageFull { .. } => ErrorCode::StorageFull,
            E::TooManyOpenFiles { .. } => ErrorCode::Busy,
            E::Closed => ErrorCode::ShuttingDown,
            E::Config(_) => ErrorCode::InvalidConfig,
            E::Poisoned { .. } => ErrorCode::PartitionPoisoned,
            E::Corrupt { .. } => ErrorCode::CorruptLog,
            _ => ErrorCode::StorageError,
        };
        WireError::new(code, error.to_string())
    }
}

impl From<&shardlog_wire::Error> for WireError {
    fn from(error: &shardlog_wire::Error) -> WireError {
        let code = match error {
            shardlog_wire::Error::TooLarge { .. } | shardlog_wire::Error::TooManyRecords { .. } => {
                ErrorCode::BatchTooLarge
            }
            _ => ErrorCode::CorruptBatch,
        };
        WireError::new(code, format!("invalid batch: {error}"))
    }
}
