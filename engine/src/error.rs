//! The one error type of `shardlog-engine`.

use std::path::PathBuf;

/// What can go wrong in the storage engine.
///
/// Operating errors (a full disk, a bad batch from a producer) are values of
/// this type; broken invariants are assertions, not errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the engine was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The disk is full: the append was not stored. Retry once space is freed.
    #[error(
        "no space left on the device holding {path}; free space or lower retention, then retry"
    )]
    StorageFull {
        /// The file being written.
        path: PathBuf,
    },
    /// The batch failed validation; nothing was stored.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] shardlog_wire::Error),
    /// The requested offset is not in the log.
    #[error(
        "offset {offset} is out of range: the log holds [{log_start_offset}, {high_watermark})"
    )]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The first offset still stored.
        log_start_offset: u64,
        /// One past the last readable offset.
        high_watermark: u64,
    },
    /// A replicated batch does not continue the log: its base offset is not
    /// the log end offset, or its leader epoch is older than the log's.
    #[error("a replicated batch at offset {base_offset}, leader epoch {leader_epoch}, does not continue this log (end offset {log_end_offset}, leader epoch {log_leader_epoch}); fetch from the end offset, or truncate to where the logs agree")]
    NotContinuous {
        /// The batch's base offset.
        base_offset: u64,
        /// The batch's leader epoch.
        leader_epoch: u32,
        /// Where the log ends.
        log_end_offset: u64,
        /// The newest leader epoch in the log.
        log_leader_epoch: u32,
    },
    /// Stored bytes are damaged beyond what recovery may repair by truncation.
    #[error("log corrupted at {path} position {position}: {reason}; restore the partition from a replica or backup")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the problem.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The shard's open-file budget is used up.
    #[error("the shard already holds its limit of {limit} open files; raise open_files_max or host fewer partitions per shard")]
    TooManyOpenFiles {
        /// The limit in force.
        limit: u32,
    },
    /// A configuration value is out of its range.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// An earlier segment write (other than a full disk) or fdatasync
    /// failed, so what is on disk past the last successful sync is unknown:
    /// the log refuses appends until [`crate::PartitionLog::recover`]
    /// rescans it (or the broker restarts). Appends waiting when it
    /// happened fail with this error too.
    #[error("log {path} is poisoned by an earlier failure ({reason}) and refuses appends until recovered: run `shardlog topic recover <topic> --partition <p>` to rescan it from its last synced point (or restart the broker)")]
    Poisoned {
        /// The partition directory.
        path: PathBuf,
        /// The failure that poisoned the log.
        reason: String,
    },
    /// The log was closed.
    #[error("log is closed")]
    Closed,
}

impl Error {
    /// True when the same request may succeed later without any change to it.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Error::StorageFull { .. } | Error::TooManyOpenFiles { .. }
        )
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Error {
        let path = path.into();
        let source = source.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.kind() == std::io::ErrorKind::StorageFull
        {
            return Error::StorageFull { path };
        }
        Error::Io { op, path, source }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
