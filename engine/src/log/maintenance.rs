//! Operations that reshape the log: rolling on demand, retention and
//! truncation. Each one takes the writer role first, so it never overlaps a
//! write round: the writer task and these operations are the only code that
//! changes segment files.

use std::rc::Rc;

use glommio::io::DmaFile;

use super::append::{create_segment_file, sync_dir};
use super::open::{open_segment_rw, rebuilt_active, scan_segment};
use super::{LogConfig, LogInner, LogState, PartitionLog};
use crate::segment::scan::{self, FrameStart, HeaderWalk, Recovered, ScanStart};
use crate::segment::{index_path, log_path, SegmentFile};
use crate::{Error, Result};

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    /// Sealed segments deleted.
    pub segments_deleted: usize,
    /// Bytes deleted.
    pub bytes_deleted: u64,
    /// The first offset still stored afterwards.
    pub log_start_offset: u64,
}

/// Holding this, the caller is the only writer of the log's files.
pub(super) struct WriterRole {
    inner: Rc<LogInner>,
}

impl Drop for WriterRole {
    fn drop(&mut self) {
        self.inner.state.borrow_mut().writer_running = false;
        self.inner.wake_role_waiters();
        self.inner.start_writer();
    }
}

/// Counts a task in `role_wanted` for as long as it waits for the role.
struct RoleWanted<'a> {
    inner: &'a Rc<LogInner>,
}

impl<'a> RoleWanted<'a> {
    fn new(inner: &'a Rc<LogInner>) -> RoleWanted<'a> {
        inner.state.borrow_mut().role_wanted += 1;
        RoleWanted { inner }
    }
}

impl Drop for RoleWanted<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.state.borrow_mut();
        assert!(state.role_wanted > 0);
        state.role_wanted -= 1;
        drop(state);
        // Appends queued while the writer was held back get written now
        // (a no-op while this task holds the role).
        self.inner.start_writer();
    }
}

/// How many of the oldest sealed segments retention deletes now: while the
/// log would still hold `retention_bytes` without the oldest, or its newest
/// record is older than `retention_age`.
fn doomed_count(state: &LogState, config: &LogConfig, now_ms: i64) -> usize {
    let mut total_bytes: u64 =
        state.sealed.iter().map(|s| s.meta.log_bytes).sum::<u64>() + state.active.written_bytes;
    let age_ms = config.retention_age.map(|age| age.as_millis() as i64);
    let mut count = 0;
    for oldest in &state.sealed {
        let size = oldest.meta.log_bytes;
        let over_size = config
            .retention_bytes
            .is_some_and(|max| total_bytes - size >= max);
        let too_old = age_ms
            .is_some_and(|age_ms| oldest.meta.max_timestamp_ms < now_ms.saturating_sub(age_ms));
        if !(over_size || too_old) {
            break;
        }
        total_bytes -= size;
        count += 1;
    }
    count
}

impl LogInner {
    /// Waits for the writer task to go idle and takes its role. Without
    /// `drained` the writer is asked to stop at the next batch boundary, so
    /// the wait is at most the writes in flight, however busy the log is.
    /// With `drained`, also waits until no append is queued or unsynced.
    pub(super) async fn take_writer_role(self: &Rc<Self>, drained: bool) -> Result<WriterRole> {
        let _wanted = (!drained).then(|| RoleWanted::new(self));
        loop {
            {
                let mut state = self.state.borrow_mut();
                let quiet = !drained
                    || (state.pending.is_empty() && state.durable_offset == state.next_offset);
                if !state.writer_running && quiet {
                    state.writer_running = true;
                    return Ok(WriterRole {
                        inner: self.clone(),
                    });
                }
            }
            if drained {
                PartitionLog {
                    inner: self.clone(),
                }
                .flush()
                .await?;
            }
            self.writer_idle().await;
        }
    }

    /// Resolves once the writer role is free.
    async fn writer_idle(&self) {
        futures_lite::future::poll_fn(|cx| {
            if !self.state.borrow().writer_running {
                return std::task::Poll::Ready(());
            }
            self.role_waiters.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
    }

    /// Wakes the tasks waiting in [`LogInner::writer_idle`].
    pub(super) fn wake_role_waiters(&self) {
        let waiters = std::mem::take(&mut *self.role_waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }
}

impl PartitionLog {
    /// Seals the active segment now (if it holds anything) and starts a new one.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn roll(&self) -> Result<()> {
        let inner = &self.inner;
        let _role = inner.take_writer_role(false).await?;
        {
            let state = inner.state.borrow();
            if let Some(error) = inner.poisoned_error(&state) {
                return Err(error);
            }
            if state.active.written_bytes == 0 {
                return Ok(());
            }
        }
        let Err(error) = inner.roll().await else {
            return Ok(());
        };
        // Queued appends still fit the old segment: only a failure that is
        // not a full disk changes the log (it poisons it).
        if !matches!(error, Error::StorageFull { .. }) {
            inner.poison(&mut inner.state.borrow_mut(), error.duplicate());
        }
        Err(error)
    }

    /// Deletes the oldest sealed segments while the log would still hold at
    /// least `retention_bytes` without them, and those whose newest record is
    /// older than `retention_age`. The active segment is never deleted.
    ///
    /// # Errors
    /// I/O errors deleting files.
    pub async fn apply_retention(&self, now_ms: i64) -> Result<RetentionOutcome> {
        if !self.retention_due(now_ms) {
            return Ok(RetentionOutcome {
                log_start_offset: self.log_start_offset(),
                ..RetentionOutcome::default()
            });
        }
        let _role = self.inner.take_writer_role(false).await?;
        let doomed: Vec<_> = {
            let mut state = self.inner.state.borrow_mut();
            let count = doomed_count(&state, &self.inner.config, now_ms);
            state.sealed.drain(..count).map(|s| s.meta).collect()
        };
        let mut outcome = RetentionOutcome::default();
        for meta in &doomed {
            let shard = &self.inner.shard;
            shard.forget_sealed_file(self.inner.cache_key, meta.base_offset);
            remove_segment_files(&self.inner.dir, meta.base_offset)?;
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += meta.log_bytes;
        }
        if !doomed.is_empty() {
            sync_dir(&self.inner.dir).await?;
            tracing::info!(dir = %self.inner.dir.display(), segments = doomed.len(), bytes = outcome.bytes_deleted, "retention deleted segments");
        }
        outcome.log_start_offset = self.log_start_offset();
        Ok(outcome)
    }

    /// True when [`PartitionLog::apply_retention`] would delete a segment now.
    fn retention_due(&self, now_ms: i64) -> bool {
        doomed_count(&self.inner.state.borrow(), &self.inner.config, now_ms) > 0
    }

    /// Removes every record at or after `offset` (rounded down to the start of
    /// the batch holding it) and returns the new end offset. Waits for queued
    /// appends first; appends made meanwhile land after the new end.
    /// Replication uses this to cut a divergent tail.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] below the log start; I/O errors.
    pub async fn truncate_to(&self, offset: u64) -> Result<u64> {
        let inner = &self.inner;
        let _role = inner.take_writer_role(true).await?;
        let (log_start_offset, end_offset) = (self.log_start_offset(), self.log_end_offset());
        if offset >= end_offset {
            return Ok(end_offset);
        }
        if offset < log_start_offset {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark: end_offset,
            });
        }
        let cut = inner.note_read(self.locate_cut(offset).await)?;
        let (file, found) = inner.note_read(self.validate_kept(&cut).await)?;
        // Synced bytes are about to change: no checkpoint may speak for them.
        let _checkpoints = inner.remove_checkpoints().await?;
        inner.state.borrow_mut().durable_offset = cut.new_end;
        inner.shard.cache().borrow_mut().remove(inner.cache_key);
        let later: Vec<u64> = segment_bases(&inner.state.borrow())
            .into_iter()
            .filter(|b| *b > cut.segment_base)
            .collect();
        for base in later.iter().rev() {
            inner.shard.forget_sealed_file(inner.cache_key, *base);
            remove_segment_files(&inner.dir, *base)?;
        }
        // The cut segment becomes the active one, written with O_DIRECT.
        inner
            .shard
            .forget_sealed_file(inner.cache_key, cut.segment_base);
        let path = log_path(&inner.dir, cut.segment_base);
        file.truncate(cut.position)
            .await
            .map_err(|e| Error::io("truncating segment", &path, e))?;
        file.fdatasync()
            .await
            .map_err(|e| Error::io("syncing segment", &path, e))?;
        let _ = std::fs::remove_file(index_path(&inner.dir, cut.segment_base));
        let rebuilt = rebuilt_active(&inner.dir, cut.segment_base, file, found, &inner.config);
        let rebuilt = rebuilt.await?;
        // Epochs that began in the cut tail go with it (a crash before this
        // is written down is mended at open the same way).
        {
            let mut state = inner.state.borrow_mut();
            state
                .sealed
                .retain(|s| s.meta.base_offset < cut.segment_base);
            let _old_file = state.active.reset_to(rebuilt);
            state.next_offset = cut.new_end;
            state.written_offset = cut.new_end;
            state.durable_offset = cut.new_end;
            LogInner::cut_epochs(&mut state, cut.new_end);
        }
        // This holds the writer role, so no writer stores the file meanwhile.
        inner.store_epochs().await?;
        tracing::info!(dir = %inner.dir.display(), new_end = cut.new_end, "truncated log");
        Ok(cut.new_end)
    }

    /// Empties the log and makes `offset`, past its end, its new start and
    /// end: what a follower does when its copy ends below its leader's log
    /// start (retention removed what it lacks), so that it fetches on from
    /// there (Kafka's truncate-fully-and-start-at). Waits for queued appends
    /// first. The old segments go oldest first and only then is the new
    /// empty one made, so a crash in between leaves a log that starts later
    /// or holds nothing, never one with a gap. The leader epochs go with the
    /// batches that carried them.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] when `offset` is not past the log end (a
    /// log restarts only ahead of itself); I/O errors, after which the log
    /// is poisoned (its files no longer match what it held).
    pub async fn restart_at(&self, offset: u64) -> Result<()> {
        let inner = &self.inner;
        let _role = inner.take_writer_role(true).await?;
        let end_offset = self.log_end_offset();
        if offset <= end_offset {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset(),
                high_watermark: end_offset,
            });
        }
        let restarted = self.replace_segments(offset).await;
        if let Err(error) = &restarted {
            inner.poison(&mut inner.state.borrow_mut(), error.duplicate());
        }
        restarted?;
        // This holds the writer role, so no writer stores the file meanwhile.
        inner.store_epochs().await?;
        tracing::info!(dir = %inner.dir.display(), from = end_offset, offset, "restarted the log ahead of its end");
        Ok(())
    }

    /// [`PartitionLog::restart_at`]'s file work, under the writer role.
    async fn replace_segments(&self, offset: u64) -> Result<()> {
        let inner = &self.inner;
        // The synced bytes go: no checkpoint may speak for them.
        let _checkpoints = inner.remove_checkpoints().await?;
        inner.shard.cache().borrow_mut().remove(inner.cache_key);
        let bases = segment_bases(&inner.state.borrow());
        for base in &bases {
            inner.shard.forget_sealed_file(inner.cache_key, *base);
            remove_segment_files(&inner.dir, *base)?;
            inner
                .state
                .borrow_mut()
                .sealed
                .retain(|s| s.meta.base_offset != *base);
        }
        sync_dir(&inner.dir).await?;
        let file = create_segment_file(&inner.dir, offset).await?;
        let mut state = inner.state.borrow_mut();
        assert!(state.sealed.is_empty());
        let _old_index = state.active.restart(offset, file, &inner.config);
        state.next_offset = offset;
        state.written_offset = offset;
        state.durable_offset = offset;
        if !state.epochs.entries().is_empty() {
            state.epochs = super::epochs::EpochCache::default();
            state.epochs_changes += 1;
        }
        Ok(())
    }

    /// Validates, frame by frame, what a truncation keeps of the segment it
    /// cuts, before anything is destroyed: the cut segment becomes the active one.
    async fn validate_kept(&self, cut: &Cut) -> Result<(Rc<DmaFile>, Recovered)> {
        let inner = &self.inner;
        let path = log_path(&inner.dir, cut.segment_base);
        let file = open_segment_rw(&path).await?;
        let start = ScanStart::segment(cut.segment_base);
        let found = scan_segment(
            &file,
            &path,
            cut.segment_base,
            start,
            cut.position,
            &inner.config,
        );
        let found = found.await?;
        if found.valid_bytes != cut.position || found.next_offset != cut.new_end {
            return Err(Error::Corrupt {
                path,
                position: found.valid_bytes,
                reason: format!(
                    "frames before the cut at offset {} are damaged ({:?}); nothing was truncated",
                    cut.new_end, found.stop
                ),
            });
        }
        Ok((file, found))
    }

    /// Where a truncation to `offset` cuts: the segment, and the frame holding `offset`.
    async fn locate_cut(&self, offset: u64) -> Result<Cut> {
        let (segment_base, end, active) = {
            let state = self.inner.state.borrow();
            let active = &state.active;
            let sealed = state
                .sealed
                .iter()
                .rev()
                .find(|s| s.meta.base_offset <= offset);
            match sealed {
                Some(s) if offset < active.base_offset => {
                    let end = FrameStart {
                        position: s.meta.log_bytes,
                        offset: s.meta.next_offset,
                    };
                    (s.meta.base_offset, end, None)
                }
                _ => {
                    let end = FrameStart {
                        position: active.written_bytes,
                        offset: state.written_offset,
                    };
                    (active.base_offset, end, Some(active.file.clone()))
                }
            }
        };
        let path = log_path(&self.inner.dir, segment_base);
        let source = match active {
            Some(file) => SegmentFile::Direct(file),
            None => SegmentFile::Buffered(self.inner.sealed_file(segment_base).await?),
        };
        let start = FrameStart {
            position: 0,
            offset: segment_base,
        };
        let mut walk = HeaderWalk::new(&source, &path, start, end);
        let (position, header) = scan::find_batch(&mut walk, offset).await?;
        Ok(Cut {
            segment_base,
            position,
            new_end: header.base_offset,
        })
    }
}

/// Where a truncation cuts: in segment `segment_base` at byte `position`,
/// the start of the frame at offset `new_end`.
struct Cut {
    segment_base: u64,
    position: u64,
    new_end: u64,
}

/// Every segment's base offset, oldest first, the active one last.
fn segment_bases(state: &LogState) -> Vec<u64> {
    let sealed = state.sealed.iter().map(|s| s.meta.base_offset);
    sealed
        .chain(std::iter::once(state.active.base_offset))
        .collect()
}

fn remove_segment_files(dir: &std::path::Path, base_offset: u64) -> Result<()> {
    let index = index_path(dir, base_offset);
    if let Err(error) = std::fs::remove_file(&index) {
        if error.kind() != std::io::ErrorKind::NotFound {
            return Err(Error::io("deleting index", &index, error));
        }
    }
    let log = log_path(dir, base_offset);
    std::fs::remove_file(&log).map_err(|e| Error::io("deleting segment", &log, e))
}
