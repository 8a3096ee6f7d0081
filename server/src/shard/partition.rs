//! A partition as its owning shard holds it: the log, the idempotent
//! producer state, and the fetches waiting for new data.

use std::cell::RefCell;
use std::time::Duration;

use futures_channel::oneshot;
use shardlog_engine::{LogHealth, PartitionLog};
use shardlog_wire::protocol::fb;

use super::producers::ProducerTable;
use super::replica::ReplicaState;

/// Offsets back from the high watermark scanned at open to rebuild producer state.
pub const PRODUCER_STATE_RECOVERY_OFFSETS: u64 = 4096;
/// Fetches that may wait on one partition at once.
pub const WATCHERS_PER_PARTITION_MAX: usize = 4096;

/// The idempotent-producer state the last few thousand offsets of `log` hold.
async fn restore_producers(log: &PartitionLog) -> shardlog_engine::Result<ProducerTable> {
    let mut producers = ProducerTable::default();
    let high_watermark = log.high_watermark();
    let from = high_watermark
        .saturating_sub(PRODUCER_STATE_RECOVERY_OFFSETS)
        .max(log.log_start_offset());
    if from < high_watermark {
        match log.batch_headers(from).await {
            Ok(headers) => headers.iter().for_each(|h| producers.restore(h)),
            // Damaged data is the partition's own problem (it shows as
            // corrupt): it must not keep the broker from starting.
            Err(error @ shardlog_engine::Error::Corrupt { .. }) => tracing::error!(
                dir = %log.dir().display(),
                %error,
                "producer state not restored: the log is damaged; idempotent producers start over here"
            ),
            Err(error) => return Err(error),
        }
    }
    Ok(producers)
}

/// One partition owned by this shard.
#[derive(Debug)]
pub struct PartitionState {
    pub log: PartitionLog,
    pub producers: RefCell<ProducerTable>,
    /// Role, high watermark and followers' progress (`replica.rs`).
    pub replica: ReplicaState,
    watchers: RefCell<Vec<oneshot::Sender<()>>>,
}

impl PartitionState {
    /// Wraps an open log and rebuilds the producer state from its tail.
    ///
    /// # Errors
    /// I/O errors reading the tail.
    pub async fn new(log: PartitionLog) -> shardlog_engine::Result<PartitionState> {
        let producers = restore_producers(&log).await?;
        let replica = ReplicaState::new(log.high_watermark());
        Ok(PartitionState {
            log,
            producers: RefCell::new(producers),
            replica,
            watchers: RefCell::new(Vec::new()),
        })
    }

    /// Rebuilds the producer state from the log's tail, after a recovery
    /// kept batches whose appends had failed (see `handlers/recover.rs`).
    ///
    /// # Errors
    /// I/O errors reading the tail.
    pub async fn rebuild_producers(&self) -> shardlog_engine::Result<()> {
        let producers = restore_producers(&self.log).await?;
        *self.producers.borrow_mut() = producers;
        Ok(())
    }

    /// How the log is doing, for ListOffsets and metrics.
    pub fn health(&self) -> PartitionHealth {
        let (status, message, corrupt_reads_count) = match self.log.health() {
            LogHealth::Healthy => (fb::PartitionStatus::Online, String::new(), 0),
            LogHealth::Poisoned { reason, .. } => (fb::PartitionStatus::Poisoned, reason, 0),
            LogHealth::Corrupt {
                corrupt_reads_count,
                last_reason,
            } => (
                fb::PartitionStatus::Corrupt,
                last_reason,
                corrupt_reads_count,
            ),
            other => (fb::PartitionStatus::Corrupt, format!("{other:?}"), 0),
        };
        PartitionHealth {
            status,
            message,
            corrupt_reads_count,
        }
    }

    /// Wakes every fetch waiting for new data.
    pub fn notify_appended(&self) {
        for watcher in self.watchers.borrow_mut().drain(..) {
            let _ = watcher.send(());
        }
    }

    /// While leading: how many replicas are out of the ISR, and how far
    /// each follower is behind this log's durable end, in offsets and
    /// (estimated, see [`PartitionLog::bytes_from`]) bytes. `None` while
    /// not leading.
    pub fn replica_lags(&self) -> Option<(usize, Vec<FollowerLag>)> {
        let (out_of_sync, ends) = self.replica.leader_view()?;
        let durable_end = self.log.high_watermark();
        let bytes_to_end = self.log.bytes_from(durable_end);
        let lags = ends
            .into_iter()
            .map(|(broker, end)| FollowerLag {
                broker,
                offsets: durable_end.saturating_sub(end),
                bytes: self.log.bytes_from(end).saturating_sub(bytes_to_end),
            })
            .collect();
        Some((out_of_sync, lags))
    }

    /// The high watermark: offsets below it are on every ISR member (on a
    /// single replica: durable), and consumers may read them.
    pub fn high_watermark(&self) -> u64 {
        self.replica.high_watermark(self.log.high_watermark())
    }

    /// Resolves once the high watermark passes `offset`, or after `wait`.
    pub async fn wait_for_data(&self, offset: u64, wait: Duration) {
        if self.high_watermark() > offset || wait.is_zero() {
            return;
        }
        self.wait_change(wait).await;
    }

    /// Resolves once the log's durable end passes `offset` (what a follower
    /// may fetch), or after `wait`.
    pub async fn wait_for_durable(&self, offset: u64, wait: Duration) {
        if self.log.high_watermark() > offset || wait.is_zero() {
            return;
        }
        self.wait_change(wait).await;
    }

    /// For an `acks=all` produce: resolves once the high watermark reaches
    /// `end` (every ISR member has the batches below it), or fails when
    /// this broker stops leading or `wait` passes.
    pub async fn wait_replicated(&self, end: u64, wait: Duration) -> Result<(), WaitError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if self.high_watermark() >= end {
                return Ok(());
            }
            if !self.replica.leads() {
                return Err(WaitError::NotLeader);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(WaitError::TimedOut);
            }
            self.wait_change(left).await;
        }
    }

    /// Resolves at the next `notify_appended`, or after `wait`.
    async fn wait_change(&self, wait: Duration) {
        let rx = {
            let mut watchers = self.watchers.borrow_mut();
            watchers.retain(|w| !w.is_canceled());
            if watchers.len() >= WATCHERS_PER_PARTITION_MAX {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                watchers.push(tx);
                Some(rx)
            }
        };
        let sleep = glommio::timer::sleep(wait);
        match rx {
            Some(rx) => {
                futures_lite::future::or(
                    async {
                        let _ = rx.await;
                    },
                    sleep,
                )
                .await;
            }
            None => sleep.await,
        }
    }
}

/// Why [`PartitionState::wait_replicated`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// Leadership moved away: the produce may or may not survive.
    NotLeader,
    /// The ISR did not catch up in time.
    TimedOut,
}

/// How far one follower is behind its leader, for ListOffsets and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerLag {
    pub broker: crate::cluster::state::BrokerId,
    /// Offsets behind the leader's durable end.
    pub offsets: u64,
    /// About how many bytes those offsets hold.
    pub bytes: u64,
}

/// How a partition's log is doing, for ListOffsets and metrics.
#[derive(Debug, Clone)]
pub struct PartitionHealth {
    pub status: fb::PartitionStatus,
    /// Why it is not online (empty when it is).
    pub message: String,
    /// Reads that found damaged data since the partition opened.
    pub corrupt_reads_count: u64,
}
