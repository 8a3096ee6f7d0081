//! A partition log: an ordered list of segments, the last one active.
//!
//! ```text
//!   append ──► pending queue ──► writer task ──► DMA writes ─► (Always) syncer task ──► fdatasync
//!     │            (bounded by            │ rounds of ≤ 2 MiB, two in flight: │
//!     │          pending_bytes_max)        │ tail block + queued batch bytes   │
//!     └──────────── waits on its oneshot ◄─┴──── written (Never/Interval) ◄────┴── durable (Always)
//! ```
//!
//! Offsets are assigned when a batch enters the pending queue, so the queue
//! order is the log order. Three watermarks move forward only:
//! `durable_offset <= written_offset <= next_offset`. `durable_offset` is the
//! high watermark: appends resolve and reads stop there. Group commit falls
//! out of the shape: every append queued while a write or fdatasync is in
//! flight rides the next one, and the writer never waits for the syncer.
//!
//! State lives in a `RefCell` and changes in short synchronous steps between
//! awaits; no borrow is held across an `.await`.

mod append;
mod checkpoint;
pub mod epochs;
mod maintenance;
mod open;
mod read;
mod recover;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use glommio::io::DmaFile;
use glommio::sync::Semaphore;
use shardlog_wire::batch::{
    set_base_offset, set_leader_epoch, BatchHeader, BatchLimits, ValidBatch,
};

use crate::cache::CacheKey;
use crate::config::LogConfig;
use crate::hooks::record_event;
use crate::segment::index::{IndexHeader, SealedMeta, SparseIndex};
use crate::shard::{FileSlot, StorageShard};
use crate::{Error, Result};

pub use maintenance::RetentionOutcome;
pub use read::{ReadPart, ReadSlice};
pub use recover::RecoverOutcome;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
}

/// One partition's log. Cheap to clone (an `Rc`); `!Send`: it lives on the
/// shard that opened it.
#[derive(Debug, Clone)]
pub struct PartitionLog {
    inner: Rc<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    dir: PathBuf,
    config: LogConfig,
    shard: StorageShard,
    cache_key: CacheKey,
    /// Units are bytes of queued batches; `append` waits here when the queue is full.
    pending_permits: Semaphore,
    state: RefCell<LogState>,
    /// Tasks waiting for the writer to go idle so they can take its role.
    role_waiters: RefCell<Vec<std::task::Waker>>,
    /// One unit: held while a checkpoint is written, and by a truncation
    /// while it removes the checkpoints and changes synced bytes.
    checkpoint_lock: Semaphore,
}

#[derive(Debug)]
struct LogState {
    sealed: VecDeque<Sealed>,
    active: Active,
    next_offset: u64,
    written_offset: u64,
    durable_offset: u64,
    pending: VecDeque<Pending>,
    pending_bytes: u64,
    waiters: VecDeque<Waiter>,
    writer_running: bool,
    /// Maintenance operations waiting for the writer role; while non-zero the
    /// writer finishes its rounds in flight and stops instead of starting new ones.
    role_wanted: u32,
    syncer_running: bool,
    interval_sync_scheduled: bool,
    /// Set by a write error other than a full disk, or by any failed
    /// fdatasync; cleared only by `recover`.
    poison: Option<Poison>,
    /// Bumped when `recover` reopens the active segment: a sync that
    /// started before carries an older value and its outcome is ignored.
    io_epoch: u64,
    /// Reads that found damaged data on disk (since open; never reset).
    corrupt_reads_count: u64,
    last_corruption: Option<String>,
    closed: bool,
    /// The epoch stamped into batches this log leads; never below the
    /// newest epoch in `epochs`.
    leader_epoch: u32,
    /// The first offset of each leader epoch that holds a batch (`epochs.rs`).
    epochs: epochs::EpochCache,
    /// Changes made to `epochs` (a counter), and how many of them the
    /// `leader-epochs` file holds: the writer stores the file before it
    /// writes a round whenever the two differ.
    epochs_changes: u64,
    epochs_stored_changes: u64,
    checkpoint: checkpoint::CheckpointState,
}

#[derive(Debug, Clone)]
struct Poison {
    reason: String,
    since_ms: i64,
}

/// The state of a log as an operator sees it. Cheap to ask for (one
/// borrow, a clone of a short string when unhealthy).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogHealth {
    /// Appends and reads work.
    Healthy,
    /// A write or fdatasync failed: the log refuses appends until
    /// [`PartitionLog::recover`] (or a restart). Reads below the high
    /// watermark still work. Reported before `Corrupt` when both hold.
    Poisoned {
        /// The failure, as its error message.
        reason: String,
        /// Wall-clock time of the failure, in milliseconds since the Unix epoch.
        since_ms: i64,
    },
    /// Reads found data on disk that fails its checks ([`Error::Corrupt`]);
    /// appends still work. Stays until the log is reopened.
    Corrupt {
        /// Reads that failed on damaged data since the log was opened.
        corrupt_reads_count: u64,
        /// What the last of them found.
        last_reason: String,
    },
}

/// A sealed segment. Its file is opened by reads, through the page cache
/// so it can be sendfile'd, and held in the shard's LRU (`StorageShard`).
#[derive(Debug)]
struct Sealed {
    meta: SealedMeta,
    index: SealedIndex,
}

/// A sealed segment's index: in memory, or only its header until first needed.
#[derive(Debug)]
enum SealedIndex {
    Loaded(Rc<SparseIndex>),
    OnDisk(IndexHeader),
}

#[derive(Debug)]
struct Active {
    base_offset: u64,
    file: Rc<DmaFile>,
    _slot: FileSlot,
    /// Bytes of whole frames in the file; the next frame goes here.
    written_bytes: u64,
    index: SparseIndex,
    index_builder: crate::segment::scan::IndexBuilder,
    /// Wall-clock time of the segment's first batch, for rolling by age.
    first_append_ms: Option<i64>,
    /// The bytes of the last, partly filled alignment block: `[align_down(written_bytes), written_bytes)`.
    tail: Vec<u8>,
    /// What the last successful fdatasync of this file (or recovery) covered.
    synced: SyncedPoint,
    /// The file's size as far as this log made it: writes below it need no
    /// block allocation, so io_uring submits them inline instead of handing
    /// them to an io-wq worker (see `LogInner::allocate_ahead`).
    allocated_bytes: u64,
}

/// The end of the frames that a completed fdatasync covered: everything
/// before `position_bytes` (offsets before `next_offset`) is on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SyncedPoint {
    position_bytes: u64,
    next_offset: u64,
    /// The largest timestamp of the frames before `position_bytes` (`i64::MIN` if none).
    max_timestamp_ms: i64,
}

#[derive(Debug)]
struct Pending {
    base_offset: u64,
    next_offset: u64,
    bytes: Bytes,
}

#[derive(Debug)]
struct Waiter {
    next_offset: u64,
    tx: oneshot::Sender<Result<()>>,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering it from disk. See the
    /// `open` module for what recovery trusts and what it scans.
    ///
    /// # Errors
    /// Invalid configuration, I/O failures, [`Error::Corrupt`] when sealed
    /// segments disagree with each other, [`Error::TooManyOpenFiles`].
    pub async fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
        shard: &StorageShard,
    ) -> Result<PartitionLog> {
        open::open(dir.as_ref(), config, shard).await
    }

    /// Appends one batch: validates it, assigns its offsets, stamps them (and
    /// the leader epoch) into its header, and resolves once the batch is
    /// written and the flush policy is satisfied.
    ///
    /// Waits while `pending_bytes_max` of appends are queued (backpressure).
    ///
    /// # Errors
    /// [`Error::InvalidBatch`] (nothing stored), [`Error::StorageFull`]
    /// (retriable; the log goes on), [`Error::Poisoned`] when this or an
    /// earlier write or fdatasync failed (see [`PartitionLog::recover`]),
    /// [`Error::Closed`].
    pub async fn append(&self, batch: BytesMut) -> Result<AppendInfo> {
        let batch = ValidBatch::check(batch, &self.inner.config.batch_limits)?;
        self.append_valid(batch).await
    }

    /// As [`PartitionLog::append`], for a batch the caller has validated
    /// already (the broker does so where it splits a produce request, to
    /// read the producer fields), so that its CRC is computed once. Only the
    /// log's limits are checked again, which costs two comparisons.
    ///
    /// # Errors
    /// As [`PartitionLog::append`].
    pub async fn append_valid(&self, batch: ValidBatch) -> Result<AppendInfo> {
        self.append_stamped(batch, Stamp::Leader).await
    }

    /// Appends a batch a follower fetched from its leader, verbatim: its
    /// base offset and leader epoch stay as the leader stamped them, so the
    /// follower's log is the leader's byte for byte. The batch must
    /// continue the log (its base offset is the log end offset, its leader
    /// epoch no older than the log's newest); the log's leader epoch moves
    /// up to the batch's. Resolves as [`PartitionLog::append`] does: once
    /// the batch is durable under this log's own flush policy.
    ///
    /// # Errors
    /// [`Error::NotContinuous`] (nothing stored), and as [`PartitionLog::append`].
    pub async fn append_replica(&self, batch: ValidBatch) -> Result<AppendInfo> {
        self.append_stamped(batch, Stamp::Replica).await
    }

    async fn append_stamped(&self, batch: ValidBatch, stamp: Stamp) -> Result<AppendInfo> {
        let (header, mut batch) = batch.into_parts();
        check_limits(&header, &self.inner.config.batch_limits)?;
        let size_bytes = batch.len() as u64;
        self.inner
            .pending_permits
            .acquire(size_bytes)
            .await
            .map_err(|_| Error::Closed)?;
        let (info, rx) = {
            let mut state = self.inner.state.borrow_mut();
            let checked = self
                .inner
                .check_writable(&state)
                .and_then(|()| match stamp {
                    Stamp::Leader => Ok(()),
                    Stamp::Replica => check_continues(&state, &header),
                });
            if let Err(error) = checked {
                drop(state);
                self.inner.pending_permits.signal(size_bytes);
                return Err(error);
            }
            let base_offset = state.next_offset;
            let epoch = match stamp {
                Stamp::Leader => {
                    set_base_offset(&mut batch, base_offset);
                    set_leader_epoch(&mut batch, state.leader_epoch);
                    state.leader_epoch
                }
                Stamp::Replica => {
                    assert!(header.base_offset == base_offset);
                    state.leader_epoch = state.leader_epoch.max(header.leader_epoch);
                    header.leader_epoch
                }
            };
            // The first batch of an epoch: its entry is made durable by the
            // writer before it writes the round holding this batch.
            if state.epochs.is_new(epoch) {
                state.epochs.assign(epoch, base_offset);
                state.epochs_changes += 1;
            }
            let next_offset = base_offset + u64::from(header.record_count);
            state.next_offset = next_offset;
            state.pending_bytes += size_bytes;
            state.pending.push_back(Pending {
                base_offset,
                next_offset,
                bytes: batch.freeze(),
            });
            let (tx, rx) = oneshot::channel();
            state.waiters.push_back(Waiter { next_offset, tx });
            (
                AppendInfo {
                    base_offset,
                    last_offset: next_offset - 1,
                },
                rx,
            )
        };
        self.inner.start_writer();
        match rx.await {
            Ok(Ok(())) => {
                record_event!(
                    &self.inner.dir,
                    crate::events::Event::Acknowledged {
                        next_offset: info.last_offset + 1
                    }
                );
                Ok(info)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Resolves once every append made before the call is durable under the
    /// flush policy (for `Never` and `Interval`: written).
    ///
    /// # Errors
    /// As [`PartitionLog::append`].
    pub async fn flush(&self) -> Result<()> {
        let rx = {
            let mut state = self.inner.state.borrow_mut();
            if let Some(error) = self.inner.poisoned_error(&state) {
                return Err(error);
            }
            if state.durable_offset == state.next_offset {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            let next_offset = state.next_offset;
            state.waiters.push_back(Waiter { next_offset, tx });
            rx
        };
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Flushes, forces the active segment to stable storage whatever the
    /// policy, and refuses further appends.
    ///
    /// # Errors
    /// As [`PartitionLog::flush`].
    pub async fn close(&self) -> Result<()> {
        self.flush().await?;
        self.inner.state.borrow_mut().closed = true;
        self.inner.sync_active().await?;
        // The clean-shutdown point: a restart scans nothing of the active segment.
        if let Err(error) = self.inner.write_checkpoint().await {
            tracing::warn!(dir = %self.inner.dir.display(), %error,
                "writing the recovery checkpoint at close failed; the next start scans the active segment");
        }
        self.inner
            .shard
            .cache()
            .borrow_mut()
            .remove(self.inner.cache_key);
        self.inner.shard.forget_log(self.inner.cache_key);
        self.inner.pending_permits.close();
        Ok(())
    }

    /// The first offset still stored.
    pub fn log_start_offset(&self) -> u64 {
        let state = self.inner.state.borrow();
        state
            .sealed
            .front()
            .map_or(state.active.base_offset, |s| s.meta.base_offset)
    }

    /// One past the last durable (acknowledged, readable) offset: the high
    /// watermark of a single-replica log.
    pub fn high_watermark(&self) -> u64 {
        self.inner.state.borrow().durable_offset
    }

    /// One past the last offset handed out (including appends still in flight).
    pub fn log_end_offset(&self) -> u64 {
        self.inner.state.borrow().next_offset
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        let state = self.inner.state.borrow();
        state.sealed.iter().map(|s| s.meta.log_bytes).sum::<u64>() + state.active.written_bytes
    }

    /// About how many bytes the log holds from `offset` to its written end,
    /// for lag metrics; no I/O. Exact at segment bounds; inside the active
    /// segment it counts from the indexed frame at or before `offset` (at
    /// most one index interval more); inside a sealed segment it takes the
    /// segment's share of `offset`'s offsets. Everything below the log
    /// start, nothing at or past the end.
    pub fn bytes_from(&self, offset: u64) -> u64 {
        let state = self.inner.state.borrow();
        if offset >= state.written_offset {
            return 0;
        }
        let active = &state.active;
        if offset >= active.base_offset {
            let (position, _) = active.index.entry_for_offset(offset - active.base_offset);
            return active.written_bytes.saturating_sub(position);
        }
        let mut bytes = active.written_bytes;
        for sealed in state.sealed.iter().rev() {
            let meta = &sealed.meta;
            if offset >= meta.base_offset {
                let offsets = meta.next_offset.saturating_sub(meta.base_offset).max(1);
                let left = meta.next_offset.saturating_sub(offset).min(offsets);
                let share = u128::from(meta.log_bytes) * u128::from(left) / u128::from(offsets);
                return bytes + share as u64;
            }
            bytes += meta.log_bytes;
        }
        bytes
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().sealed.len() + 1
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// For a follower whose newest leader epoch is `epoch`: the largest
    /// epoch of this log not above it, and where that epoch ends here
    /// (KIP-279); `None` when every epoch here is newer (or the log has no
    /// batch yet).
    pub fn end_offset_for_epoch(&self, epoch: u32) -> Option<(u32, u64)> {
        let state = self.inner.state.borrow();
        state.epochs.end_offset_for(epoch, state.next_offset)
    }

    /// The first offset of each leader epoch that holds a batch, oldest first.
    pub fn leader_epochs(&self) -> Vec<epochs::EpochStart> {
        self.inner.state.borrow().epochs.entries().to_vec()
    }

    /// The epoch stamped into batches this log appends as leader.
    pub fn leader_epoch(&self) -> u32 {
        self.inner.state.borrow().leader_epoch
    }

    /// Sets the leader epoch stamped into batches appended from now on (the
    /// epoch is written down with its first batch).
    pub fn set_leader_epoch(&self, leader_epoch: u32) {
        let mut state = self.inner.state.borrow_mut();
        assert!(
            leader_epoch >= state.leader_epoch,
            "leader epochs never go back"
        );
        state.leader_epoch = leader_epoch;
    }
}

impl PartitionLog {
    /// Whether the log takes appends and serves reads; for metrics and the
    /// operator. See [`LogHealth`].
    pub fn health(&self) -> LogHealth {
        let state = self.inner.state.borrow();
        if let Some(poison) = &state.poison {
            return LogHealth::Poisoned {
                reason: poison.reason.clone(),
                since_ms: poison.since_ms,
            };
        }
        match &state.last_corruption {
            Some(reason) => LogHealth::Corrupt {
                corrupt_reads_count: state.corrupt_reads_count,
                last_reason: reason.clone(),
            },
            None => LogHealth::Healthy,
        }
    }

    /// Reads that failed with [`Error::Corrupt`] since the log was opened (a counter).
    pub fn corrupt_reads_count(&self) -> u64 {
        self.inner.state.borrow().corrupt_reads_count
    }
}

impl Drop for LogInner {
    fn drop(&mut self) {
        // Its sealed files would otherwise hold slots of the shard's budget.
        self.shard.forget_log(self.cache_key);
    }
}

impl LogInner {
    /// Drops the epochs of offsets the log no longer holds (at or past `end_offset`).
    fn cut_epochs(state: &mut LogState, end_offset: u64) {
        if state.epochs.truncate_from_end(end_offset) {
            state.epochs_changes += 1;
        }
    }

    /// Makes the `leader-epochs` file hold every change made to the cache so
    /// far. Called only by the writer role's holder, so never twice at once.
    async fn store_epochs(&self) -> Result<()> {
        let (cache, changes) = {
            let state = self.state.borrow();
            if state.epochs_changes == state.epochs_stored_changes {
                return Ok(());
            }
            (state.epochs.clone(), state.epochs_changes)
        };
        epochs::store(&self.dir, &cache).await?;
        let mut state = self.state.borrow_mut();
        state.epochs_stored_changes = state.epochs_stored_changes.max(changes);
        Ok(())
    }

    fn check_writable(&self, state: &LogState) -> Result<()> {
        if let Some(error) = self.poisoned_error(state) {
            return Err(error);
        }
        if state.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The error a poisoned log answers with; `None` while it is not poisoned.
    fn poisoned_error(&self, state: &LogState) -> Option<Error> {
        state.poison.as_ref().map(|poison| Error::Poisoned {
            path: self.dir.clone(),
            reason: poison.reason.clone(),
        })
    }

    /// Counts a read that found damaged data, so `health` reports it.
    fn note_read<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(error @ Error::Corrupt { .. }) = &result {
            tracing::error!(dir = %self.dir.display(), %error, "a read found damaged data");
            let mut state = self.state.borrow_mut();
            state.corrupt_reads_count += 1;
            state.last_corruption = Some(error.to_string());
        }
        result
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_millis() as i64)
}

/// The limits of a batch that was validated against limits of its holder's choosing.
/// Who set a batch's base offset and leader epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// This log, as the partition's leader: the next offset, its epoch.
    Leader,
    /// The leader, whose bytes a follower stores as they are.
    Replica,
}

/// A replicated batch continues the log: at its end offset, in an epoch no older.
fn check_continues(state: &LogState, header: &BatchHeader) -> Result<()> {
    if header.base_offset == state.next_offset && header.leader_epoch >= state.leader_epoch {
        return Ok(());
    }
    Err(Error::NotContinuous {
        base_offset: header.base_offset,
        leader_epoch: header.leader_epoch,
        log_end_offset: state.next_offset,
        log_leader_epoch: state.leader_epoch,
    })
}

fn check_limits(header: &BatchHeader, limits: &BatchLimits) -> Result<()> {
    if header.length_bytes > limits.batch_bytes_max {
        return Err(Error::InvalidBatch(shardlog_wire::Error::TooLarge {
            length_bytes: header.length_bytes,
            limit_bytes: limits.batch_bytes_max,
        }));
    }
    if header.record_count > limits.record_count_max {
        return Err(Error::InvalidBatch(shardlog_wire::Error::TooManyRecords {
            record_count: header.record_count,
            limit_count: limits.record_count_max,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod tests;
