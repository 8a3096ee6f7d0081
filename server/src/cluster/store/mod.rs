//! openraft's storage for the metadata group, on plain files under `<data-dir>/raft/`.
//!
//! ```text
//!  <data-dir>/raft/
//!    log        "SLRLOG01", a header record {last_purged}, then one record per entry
//!    vote       "SLVOTE01", one record: the vote (replaced atomically)
//!    snapshot   "SLSNAP01", two records: the snapshot's meta, then the state (replaced atomically)
//!    *.tmp      a replacement being written; ignored and overwritten
//! ```
//!
//! Records are framed by [`file`]: length, CRC-32C, JSON. The log is
//! append-only: an append writes its entries with one `write` at the end and
//! fsyncs (`fdatasync`) before openraft is told they are durable; a
//! truncation cuts the file and fsyncs; a purge (after a snapshot) rewrites
//! the remaining entries into a new file with the new `last_purged` in its
//! header and renames it over the old one. At open, a torn tail is cut and
//! fsynced; damage anywhere else is [`ClusterError::Corrupt`] with the path.
//!
//! The whole log between two purges is kept in memory too (reads come from
//! there): the snapshot policy bounds it, metadata entries are small.
//!
//! The file I/O is synchronous, on the Raft thread: an fsync of a small
//! append is far shorter than a heartbeat interval, and only this node's
//! consensus waits for it, never a shard.
//!
//! The state machine is not written per command: its durable form is the
//! snapshot, and after a restart openraft applies the log entries after the
//! snapshot again (the log keeps them until a later snapshot covers them).

pub mod file;
pub mod log;
pub mod state_machine;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use super::{ClusterError, NodeId};

/// The directory of the Raft files in a broker's data directory.
pub fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("raft")
}

/// Creates `<data-dir>/raft/` if needed (and makes the creation durable).
///
/// # Errors
/// I/O errors with the path.
pub fn ensure_raft_dir(data_dir: &Path) -> Result<PathBuf, ClusterError> {
    let dir = raft_dir(data_dir);
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).map_err(|e| ClusterError::io("creating", &dir, e))?;
        file::sync_dir(&dir)?;
    }
    Ok(dir)
}

/// Wraps one of our errors for openraft, which stops the node on any storage error.
pub(crate) fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &ClusterError,
) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(error)),
    }
}
