//! The recovery checkpoint of the active segment: what a restart may trust
//! without scanning.
//!
//! A crash can leave a torn frame or zero padding only after the last
//! fdatasync, so recovery need scan the active segment only from there.
//! The checkpoint records such a point, `<base>.checkpoint` beside the
//! segment, in the sealed index's format: the synced position, the offset
//! after it, the largest timestamp before it and the sparse index entries of
//! the frames before it.
//!
//! ```text
//!   active segment: [ frames covered by the checkpoint | frames after it | padding ]
//!   restart:          trusted (index loaded, no CRCs)    scanned, cut at the first bad frame
//! ```
//!
//! - **When it is written.** At most once per `recovery_checkpoint_interval`
//!   after a sync moved the synced point, and by [`PartitionLog::close`] at
//!   the log end, so a clean shutdown restarts with nothing to scan (Kafka's
//!   recovery-point checkpoint and clean-shutdown marker in one file).
//! - **Why it needs no fsync.** Every checkpoint ever written states a point
//!   that was synced when it was written, and the bytes before a synced
//!   point change only by [`PartitionLog::truncate_to`], which first removes
//!   every checkpoint durably (waiting for a write in flight). A checkpoint
//!   lost or torn by a power cut fails its CRCs and recovery scans the whole
//!   segment, as without one. So the write is a temporary file and a rename.
//! - **What is trusted.** The frames before the point were validated when
//!   they were appended and are not read again at start; damage there shows
//!   on reads, as for sealed segments. A checkpoint that claims more bytes
//!   than the file holds, or is for another segment, is ignored.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::LogInner;
use crate::segment::index::{IndexHeader, SealedMeta, SparseIndex};
use crate::segment::scan::ScanStart;
use crate::segment::TMP_SUFFIX;
use crate::{Error, Result};

pub(crate) const CHECKPOINT_SUFFIX: &str = ".checkpoint";

pub(crate) fn checkpoint_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}{CHECKPOINT_SUFFIX}"))
}

/// Where recovery of the active segment at `base_offset` may start, from its
/// checkpoint; `None` (scan from the start) when there is none to trust.
pub(super) fn load(dir: &Path, base_offset: u64, file_bytes: u64) -> Option<ScanStart> {
    let path = checkpoint_path(dir, base_offset);
    let bytes = std::fs::read(&path).ok()?;
    let trusted = IndexHeader::decode(&bytes, base_offset).and_then(|header| {
        let index = SparseIndex::decode_entries(&bytes, &header)?;
        Some((header.meta, index))
    });
    match trusted {
        Some((meta, index)) if meta.log_bytes <= file_bytes => Some(ScanStart {
            position: meta.log_bytes,
            next_offset: meta.next_offset,
            index,
            max_timestamp_ms: meta.max_timestamp_ms,
        }),
        Some((meta, _)) => {
            tracing::warn!(checkpoint = %path.display(), checkpoint_bytes = meta.log_bytes, file_bytes,
                "the segment is shorter than its checkpoint; scanning it whole");
            None
        }
        None => {
            tracing::warn!(checkpoint = %path.display(), "damaged checkpoint; scanning the segment whole");
            None
        }
    }
}

/// Removes every checkpoint file in `dir` but the one of `keep_base` (if any).
pub(super) fn remove_others(dir: &Path, keep_base: Option<u64>) -> Result<usize> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing log directory", dir, e))?;
    let keep = keep_base.map(|base| checkpoint_path(dir, base));
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing log directory", dir, e))?;
        let path = entry.path();
        let is_checkpoint = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(CHECKPOINT_SUFFIX));
        if is_checkpoint && keep.as_deref() != Some(path.as_path()) {
            std::fs::remove_file(&path).map_err(|e| Error::io("removing checkpoint", &path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A checkpoint about to be written: the active segment's synced point.
struct Snapshot {
    base_offset: u64,
    position_bytes: u64,
    encoded: Vec<u8>,
}

impl LogInner {
    /// Called after the synced point moved: writes a checkpoint once the
    /// interval has passed, unless one is already scheduled.
    pub(super) fn schedule_checkpoint(self: &Rc<Self>) {
        {
            let mut state = self.state.borrow_mut();
            if state.checkpoint.scheduled || state.closed {
                return;
            }
            state.checkpoint.scheduled = true;
        }
        // A weak handle: a closed and dropped log gives its files back at once.
        let weak = Rc::downgrade(self);
        let interval = self.config.recovery_checkpoint_interval;
        glommio::spawn_local(async move {
            glommio::timer::sleep(interval).await;
            let Some(this) = weak.upgrade() else { return };
            {
                let mut state = this.state.borrow_mut();
                state.checkpoint.scheduled = false;
                if state.closed {
                    return;
                }
            }
            if let Err(error) = this.write_checkpoint().await {
                tracing::warn!(dir = %this.dir.display(), %error,
                    "writing the recovery checkpoint failed; a restart will scan more of the active segment");
            }
        })
        .detach();
    }

    /// Writes the checkpoint of the active segment's synced point, if it
    /// moved since the last one. Returns whether a checkpoint was written.
    pub(super) async fn write_checkpoint(&self) -> Result<bool> {
        let _permit = self
            .checkpoint_lock
            .acquire_permit(1)
            .await
            .map_err(|_| Error::Closed)?;
        let Some(snapshot) = self.checkpoint_snapshot() else {
            return Ok(false);
        };
        let path = checkpoint_path(&self.dir, snapshot.base_offset);
        let tmp = path.with_extension(&TMP_SUFFIX[1..]);
        let file = glommio::io::BufferedFile::create(&tmp)
            .await
            .map_err(|e| Error::io("creating checkpoint", &tmp, e))?;
        let written = file.write_at(snapshot.encoded, 0).await;
        let _ = file.close().await;
        written.map_err(|e| Error::io("writing checkpoint", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming checkpoint", &path, e))?;
        let mut state = self.state.borrow_mut();
        state.checkpoint.written = Some((snapshot.base_offset, snapshot.position_bytes));
        Ok(true)
    }

    fn checkpoint_snapshot(&self) -> Option<Snapshot> {
        let state = self.state.borrow();
        let active = &state.active;
        let synced = active.synced;
        let already = state.checkpoint.written == Some((active.base_offset, synced.position_bytes));
        if synced.position_bytes == 0 || already || state.poison.is_some() {
            return None;
        }
        assert!(synced.position_bytes <= active.written_bytes);
        assert!(synced.next_offset > active.base_offset);
        let meta = SealedMeta {
            base_offset: active.base_offset,
            next_offset: synced.next_offset,
            log_bytes: synced.position_bytes,
            max_timestamp_ms: synced.max_timestamp_ms,
        };
        let encoded = active
            .index
            .before_position(synced.position_bytes)
            .encode(&meta);
        Some(Snapshot {
            base_offset: active.base_offset,
            position_bytes: synced.position_bytes,
            encoded,
        })
    }

    /// Removes every checkpoint, durably, before bytes they cover change;
    /// holds off checkpoint writes until the returned permit is dropped.
    pub(super) async fn remove_checkpoints(&self) -> Result<glommio::sync::Permit<'_>> {
        let permit = self
            .checkpoint_lock
            .acquire_permit(1)
            .await
            .map_err(|_| Error::Closed)?;
        if remove_others(&self.dir, None)? > 0 {
            super::append::sync_dir(&self.dir).await?;
        }
        self.state.borrow_mut().checkpoint.written = None;
        Ok(permit)
    }
}

/// Per-log checkpoint bookkeeping (in `LogState`).
#[derive(Debug, Default)]
pub(super) struct CheckpointState {
    /// A timer task will write the next checkpoint.
    pub scheduled: bool,
    /// (segment base, position) of the last checkpoint written.
    pub written: Option<(u64, u64)>,
}
