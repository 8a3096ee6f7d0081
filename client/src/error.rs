//! The one error type of `shardlog-client`.

use shardlog_wire::protocol::fb::ErrorCode;

/// An error code and message a broker answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct BrokerError {
    /// The code.
    pub code: ErrorCode,
    /// The broker's message.
    pub message: String,
}

impl BrokerError {
    /// True when the same request may succeed later.
    pub fn is_retriable(&self) -> bool {
        self.code.is_retriable()
    }
}

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection failed or was closed.
    #[error("connection to the broker failed: {0}; is the broker running at that address?")]
    Io(#[from] std::io::Error),
    /// The broker sent something that is not a valid response.
    #[error("the broker sent an invalid response: {0}")]
    Protocol(String),
    /// The broker answered with an error.
    #[error("the broker refused the request: {0}")]
    Broker(#[from] BrokerError),
    /// A record could not be delivered within the delivery timeout.
    #[error("record for {topic}/{partition} not delivered within the delivery timeout; last error: {last_error}")]
    DeliveryTimeout {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What the last attempt ran into.
        last_error: String,
    },
    /// A record larger than a batch may be.
    #[error("a record of {size_bytes} bytes exceeds the batch limit of {limit_bytes} bytes")]
    RecordTooLarge {
        /// The record's encoded size.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// A consumer's position lies outside its partition's log (retention
    /// deleted it, or it is past the end) and `auto_offset_reset` is `none`.
    /// Polls keep failing until the application seeks the partition.
    #[error("offset {offset} of {topic}/{partition} is out of range and auto_offset_reset is none; seek the partition to go on ({reason})")]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The position that is out of range.
        offset: u64,
        /// The broker's answer (it names the range the log holds).
        reason: BrokerError,
    },
    /// A group member was given a partition that has no committed offset,
    /// and `auto_offset_reset` is `none`. Polls keep failing until the
    /// application seeks the partition.
    #[error("group {group} has no committed offset for {topic}/{partition} and auto_offset_reset is none; seek the partition or reset the group's offsets")]
    NoCommittedOffset {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// The producer or consumer was closed.
    #[error("the client was closed")]
    Closed,
}

impl Error {
    /// True when the same request may succeed later without change.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Io(_) => true,
            Error::Broker(error) => {
                error.is_retriable() || error.code == ErrorCode::UnknownTopicOrPartition
            }
            _ => false,
        }
    }
}
