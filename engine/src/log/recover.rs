//! Bringing a poisoned log back without a restart.
//!
//! A failed write (other than a full disk) or a failed fdatasync poisons
//! the log: nobody knows what reached the disk after the last successful
//! sync. `recover` finds out the way crash recovery would, but only for
//! the part in doubt:
//!
//! ```text
//!  active segment:  [frames ........ |entry| .. synced ┊ .......... written ┊ failed rounds? ]
//!                   trusted, unread  ^ rescan from here                     ^ scan ends here
//!                                    validate every frame (CRC, offset continuity), cut after the
//!                                    last valid one, fdatasync, continue appending right there
//! ```
//!
//! - The rescan starts at the sparse-index entry at or before the block
//!   holding the synced end, not at the synced end itself: the next write
//!   round rewrote that block (the tail block is rewritten with every
//!   round), so a failed round may have torn frames that were already
//!   synced. Blocks before it are never written again, so the frames there
//!   stay trusted. If validation stops before the synced end, acknowledged
//!   data is damaged: `recover` refuses (`Error::Corrupt`) and the log stays
//!   poisoned, rather than lose it quietly.
//! - The scan ends at the written end the writer knows of: bytes past it
//!   belong to rounds that failed, whose appends were refused, so they are
//!   cut even when they look whole.
//! - Appends that failed because the log was poisoned may survive when
//!   their write had completed (only their sync was missing):
//!   [`RecoverOutcome::failed_appends_kept`] names them, so that the broker
//!   can rebuild its idempotent-producer state before a retry duplicates them.
//!
//! The writer role is held throughout, so no write round runs; syncs that
//! started before are told apart by `io_epoch` and their outcome ignored.

use std::ops::Range;
use std::rc::Rc;

use super::append::sync_segment;
use super::open::{open_segment_rw, rebuilt_active, scan_segment, segment_size, Rebuilt};
use super::{LogInner, LogState, PartitionLog, SyncedPoint};
use crate::hooks::record_event;
use crate::segment::scan::ScanStart;
use crate::segment::{align_down, index_path, log_path, parse_log_name};
use crate::{Error, Result};

/// What [`PartitionLog::recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverOutcome {
    /// False when the log was not poisoned and nothing was done.
    pub was_poisoned: bool,
    /// Base offset of the active segment that was rescanned.
    pub segment_base_offset: u64,
    /// Where the last successful fdatasync (or the open) left the segment.
    pub synced_bytes: u64,
    /// Where validation started; the bytes before were kept unread.
    pub rescanned_from_bytes: u64,
    /// The segment's length afterwards; appends continue here.
    pub kept_bytes: u64,
    /// Bytes cut from the end of the segment file (torn, damaged or refused frames).
    pub cut_bytes: u64,
    /// The log end offset, and the high watermark, afterwards.
    pub next_offset: u64,
    /// Offsets kept although their appends failed when the log was poisoned
    /// (written, not yet synced). Empty unless the policy is `Always`.
    pub failed_appends_kept: Range<u64>,
    /// Acknowledged offsets that did not survive: possible only under
    /// `Never` and `Interval`, which acknowledge before a sync.
    pub acknowledged_cut: Range<u64>,
}

/// What the rescan starts from, taken from the state in one step.
struct RescanPlan {
    base_offset: u64,
    synced: SyncedPoint,
    written_bytes: u64,
    durable_offset: u64,
    start: ScanStart,
}

impl RescanPlan {
    fn new(state: &LogState) -> RescanPlan {
        let active = &state.active;
        let base_offset = active.base_offset;
        assert!(active.synced.position_bytes <= active.written_bytes);
        let start = match active
            .index
            .split_at_position(align_down(active.synced.position_bytes))
        {
            Some((entry, before)) => ScanStart {
                position: u64::from(entry.position),
                next_offset: base_offset + u64::from(entry.relative_offset),
                index: before,
                max_timestamp_ms: entry.max_timestamp_before_ms,
            },
            None => ScanStart::segment(base_offset),
        };
        assert!(start.position <= active.synced.position_bytes);
        RescanPlan {
            base_offset,
            synced: active.synced,
            written_bytes: active.written_bytes,
            durable_offset: state.durable_offset,
            start,
        }
    }
}

impl PartitionLog {
    /// Brings a poisoned log back without a restart: takes the writer role,
    /// reopens the active segment, validates it frame by frame from its last
    /// synced point (see the `recover` module), cuts it after the last valid
    /// frame, syncs it, and lets appends continue there. Nothing acknowledged
    /// under `Always` is lost. On a healthy log it does nothing and returns
    /// `Ok` with `was_poisoned: false`.
    ///
    /// # Errors
    /// I/O errors (the disk still fails; the log stays poisoned and
    /// `recover` may be tried again), [`Error::Corrupt`] when frames that
    /// were already synced are damaged (the log stays poisoned),
    /// [`Error::Closed`].
    pub async fn recover(&self) -> Result<RecoverOutcome> {
        let inner = &self.inner;
        let _role = inner.take_writer_role(false).await?;
        let plan = {
            let mut state = inner.state.borrow_mut();
            if state.closed {
                return Err(Error::Closed);
            }
            if state.poison.is_none() {
                return Ok(RecoverOutcome::healthy(&state));
            }
            state.io_epoch += 1;
            RescanPlan::new(&state)
        };
        let (rebuilt, outcome) = match inner.rescan_active(plan).await {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(dir = %inner.dir.display(), %error, "recovering the log failed; it stays poisoned");
                return Err(error);
            }
        };
        let old_file = {
            let mut state = inner.state.borrow_mut();
            let old_file = state.active.reset_to(rebuilt);
            state.next_offset = outcome.next_offset;
            state.written_offset = outcome.next_offset;
            state.durable_offset = outcome.next_offset;
            LogInner::cut_epochs(&mut state, outcome.next_offset);
            state.poison = None;
            old_file
        };
        inner.shard.cache().borrow_mut().remove(inner.cache_key);
        if let Ok(file) = Rc::try_unwrap(old_file) {
            let _ = file.close().await;
        }
        tracing::warn!(dir = %inner.dir.display(), ?outcome, "recovered the poisoned log");
        record_event!(
            &inner.dir,
            crate::events::Event::Recovered {
                next_offset: outcome.next_offset
            }
        );
        Ok(outcome)
    }
}

impl RecoverOutcome {
    fn healthy(state: &LogState) -> RecoverOutcome {
        let active = &state.active;
        RecoverOutcome {
            was_poisoned: false,
            segment_base_offset: active.base_offset,
            synced_bytes: active.synced.position_bytes,
            rescanned_from_bytes: active.written_bytes,
            kept_bytes: active.written_bytes,
            cut_bytes: 0,
            next_offset: state.next_offset,
            failed_appends_kept: state.next_offset..state.next_offset,
            acknowledged_cut: state.next_offset..state.next_offset,
        }
    }
}

impl LogInner {
    /// Reopens, validates, cuts and syncs the active segment as `plan` says.
    async fn rescan_active(&self, plan: RescanPlan) -> Result<(Rebuilt, RecoverOutcome)> {
        let base_offset = plan.base_offset;
        let path = log_path(&self.dir, base_offset);
        remove_failed_roll_leftovers(&self.dir, base_offset)?;
        let file = open_segment_rw(&path).await?;
        let file_bytes = segment_size(&file, &path).await?;
        let rescanned_from_bytes = plan.start.position;
        let end_bytes = file_bytes.min(plan.written_bytes);
        let found = scan_segment(
            &file,
            &path,
            base_offset,
            plan.start,
            end_bytes,
            &self.config,
        );
        let found = found.await?;
        if found.valid_bytes < plan.synced.position_bytes {
            return Err(Error::Corrupt {
                path,
                position: found.valid_bytes,
                reason: format!(
                    "frames before the last synced point {} are damaged ({:?}); the log stays poisoned rather than lose acknowledged data",
                    plan.synced.position_bytes, found.stop
                ),
            });
        }
        if found.valid_bytes < file_bytes {
            file.truncate(found.valid_bytes)
                .await
                .map_err(|e| Error::io("truncating segment", &path, e))?;
        }
        sync_segment(&file, &self.dir, base_offset).await?;
        let next_offset = found.next_offset;
        let outcome = RecoverOutcome {
            was_poisoned: true,
            segment_base_offset: base_offset,
            synced_bytes: plan.synced.position_bytes,
            rescanned_from_bytes,
            kept_bytes: found.valid_bytes,
            cut_bytes: file_bytes - found.valid_bytes,
            next_offset,
            failed_appends_kept: plan.durable_offset.min(next_offset)..next_offset,
            acknowledged_cut: next_offset.min(plan.durable_offset)..plan.durable_offset,
        };
        let rebuilt = rebuilt_active(&self.dir, base_offset, file, found, &self.config).await?;
        Ok((rebuilt, outcome))
    }
}

/// Removes what a roll that failed half-way may have left: the index file
/// of the active segment and an empty segment file after it. Anything else
/// after the active segment is not ours to delete.
fn remove_failed_roll_leftovers(dir: &std::path::Path, active_base_offset: u64) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing log directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing log directory", dir, e))?;
        let name = entry.file_name();
        let Some(base) = name.to_str().and_then(parse_log_name) else {
            continue;
        };
        if base <= active_base_offset {
            continue;
        }
        let path = entry.path();
        let size_bytes = entry
            .metadata()
            .map_err(|e| Error::io("reading segment size", &path, e))?
            .len();
        if size_bytes > 0 {
            return Err(Error::Corrupt {
                path,
                position: 0,
                reason: format!(
                    "a segment with data follows the active segment {active_base_offset}"
                ),
            });
        }
        std::fs::remove_file(&path).map_err(|e| Error::io("deleting segment", &path, e))?;
    }
    let index = index_path(dir, active_base_offset);
    match std::fs::remove_file(&index) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("deleting index", &index, error))
        }
        _ => Ok(()),
    }
}
