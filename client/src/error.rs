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
}
