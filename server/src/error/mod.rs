//! The one error type of `shardlog-server`; `wire.rs` holds the error a
//! response carries and the single place that maps engine and format errors
//! to wire error codes.

pub mod wire;

use std::path::PathBuf;

/// What can stop the broker from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// Another broker holds the data directory.
    #[error("data directory {path} is in use by another shardlog-server; stop it or pick another --data-dir")]
    DataDirLocked {
        /// The data directory.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the broker was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The persisted metadata cannot be read.
    #[error("metadata file {path} is unreadable: {reason}; restore it from a backup")]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data directory was written in an on-disk format this build cannot read.
    #[error("data directory {path} holds {found}, which this build cannot read (it stores Kafka RecordBatch v2, data format {supported}); there is no converter: move or delete the directory, or pick another --data-dir")]
    DataFormat {
        /// The data directory.
        path: PathBuf,
        /// What was found.
        found: String,
        /// The data format this build reads and writes.
        supported: u32,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Engine(#[from] shardlog_engine::Error),
    /// The data directory belongs to another node or cluster, or its `node.json` is unreadable.
    #[error(transparent)]
    Identity(#[from] crate::cluster::identity::IdentityError),
    /// The metadata group's node did not start.
    #[error("the metadata group: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A shard failed to start or stopped.
    #[error("shard {shard}: {message}")]
    Shard {
        /// The shard.
        shard: usize,
        /// What happened, with the path or address and the OS error.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// The broker's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use wire::WireError;

#[cfg(test)]
mod tests {
    use super::*;
    use shardlog_wire::protocol::fb::ErrorCode;

    #[test]
    fn engine_errors_map_to_codes() {
        let full = shardlog_engine::Error::StorageFull { path: "x".into() };
        assert_eq!(WireError::from(&full).code, ErrorCode::StorageFull);
        let big = shardlog_engine::Error::InvalidBatch(shardlog_wire::Error::TooLarge {
            length_bytes: 9,
            limit_bytes: 1,
        });
        assert_eq!(WireError::from(&big).code, ErrorCode::BatchTooLarge);
        let crc = shardlog_wire::Error::CrcMismatch {
            expected: 1,
            actual: 2,
        };
        assert_eq!(WireError::from(&crc).code, ErrorCode::CorruptBatch);
    }
}
