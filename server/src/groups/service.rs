//! The groups service: a shard's coordinator and the `__offsets`
//! partitions it writes commits and deletions to.
//!
//! Concurrency contract: built per call from the shard's own coordinator
//! and partitions, used on that shard only. A commit or deletion marks its
//! groups in the coordinator before its append and settles them after, even
//! when the task awaiting it is dropped ([`Persisting`], [`Deleting`]), so
//! no group is left half-written.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use shardlog_wire::protocol::fb::ErrorCode;

use super::coordinator::{Coordinator, GroupLimits, Writer};
use super::state::{Heartbeat, HeartbeatOutcome};
use super::{
    now_ms, offsets_partition, store, TopicPartition, COMMIT_BATCH_BYTES_MAX,
    EXPIRY_CHECK_INTERVAL, EXPIRY_RETRY_MS, GROUPS_EXPIRED_PER_TICK_MAX, OFFSETS_TOPIC,
};
use crate::error::WireError;
use crate::shard::partition::PartitionState;
use crate::shard::partitions::Partitions;
use crate::shard::shutdown::Shutdown;

/// What the group APIs use of a shard.
#[derive(Debug, Clone, Copy)]
pub struct GroupService<'a> {
    /// The groups this shard coordinates.
    pub coordinator: &'a Coordinator,
    /// Where its `__offsets` partitions are.
    pub partitions: &'a Partitions,
    /// The broker's group limits.
    pub limits: GroupLimits,
}

impl GroupService<'_> {
    /// Handles a heartbeat on the group's coordinator.
    ///
    /// # Errors
    /// As [`Coordinator::heartbeat`].
    pub fn heartbeat(
        &self,
        group_id: &str,
        request: Heartbeat,
    ) -> Result<HeartbeatOutcome, WireError> {
        let counts = self
            .coordinator
            .partition_counts(&self.partitions.metadata());
        self.coordinator.heartbeat(
            group_id,
            request,
            &counts,
            &self.limits,
            Instant::now(),
            now_ms(),
        )
    }

    /// Commits (or resets) offsets of `group_id`: checked, appended to
    /// `__offsets` durably, then applied.
    ///
    /// # Errors
    /// As [`Coordinator::begin_persist`]; the append failed.
    pub async fn commit(
        &self,
        group_id: &str,
        writer: Writer<'_>,
        commits: &[(TopicPartition, i64)],
    ) -> Result<(), WireError> {
        self.coordinator
            .begin_persist(group_id, writer, &self.limits)?;
        let persisting = Persisting {
            coordinator: self.coordinator,
            group_id,
            limits: self.limits,
            ended: false,
        };
        let now_ms = now_ms();
        let partition = self.offsets_partition(group_id)?;
        let batch = store::encode_commits(group_id, commits, now_ms);
        if batch.len() > COMMIT_BATCH_BYTES_MAX {
            let message = format!(
                "a commit of {} partitions takes {} bytes in {OFFSETS_TOPIC}, more than the \
                 {COMMIT_BATCH_BYTES_MAX} bytes one commit may; commit fewer partitions at once",
                commits.len(),
                batch.len()
            );
            return Err(WireError::new(ErrorCode::BatchTooLarge, message));
        }
        append_replicated(&partition, batch).await?;
        persisting.finish(commits, now_ms);
        Ok(())
    }

    /// Deletes an empty group and its offsets, durably (`group delete`).
    ///
    /// # Errors
    /// As [`Coordinator::begin_delete`]; the append failed.
    pub async fn delete(&self, group_id: &str) -> Result<(), WireError> {
        self.coordinator.begin_delete(group_id, &self.limits)?;
        let deleting = Deleting {
            coordinator: self.coordinator,
            group_ids: vec![group_id.to_string()],
            limits: self.limits,
        };
        let result = self.persist_deletes(&deleting.group_ids).await;
        deleting.finish(result.is_ok());
        result
    }

    /// Appends the deletion of `group_ids` (all of one `__offsets` partition), durably.
    async fn persist_deletes(&self, group_ids: &[String]) -> Result<(), WireError> {
        let first = group_ids.first().expect("at least one group");
        assert!(
            group_ids
                .iter()
                .all(|g| offsets_partition(g) == offsets_partition(first)),
            "one batch per __offsets partition"
        );
        let partition = self.offsets_partition(first)?;
        append_replicated(&partition, store::encode_deletes(group_ids, now_ms())).await
    }

    /// The group's `__offsets` partition, if this shard leads it (only a
    /// leader appends; a follower's log takes only its leader's bytes) and
    /// enough replicas are in sync to keep a commit.
    fn offsets_partition(&self, group_id: &str) -> Result<Rc<PartitionState>, WireError> {
        let partition = offsets_partition(group_id);
        self.partitions
            .produce_owner_of(OFFSETS_TOPIC, partition, true)?;
        let state = self.partitions.partition(OFFSETS_TOPIC, partition);
        state.filter(|s| s.replica.leads()).ok_or_else(|| {
            WireError::new(
                ErrorCode::NotLeader,
                format!("this shard does not coordinate group {group_id:?} now; refresh metadata and retry"),
            )
        })
    }

    /// Deletes the groups whose retention passed: one append per `__offsets`
    /// partition, all at once.
    async fn expire_groups(&self) {
        let due = self
            .coordinator
            .take_expired(now_ms(), GROUPS_EXPIRED_PER_TICK_MAX);
        if due.is_empty() {
            return;
        }
        let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for group_id in due {
            by_partition
                .entry(offsets_partition(&group_id))
                .or_default()
                .push(group_id);
        }
        let deletions = by_partition.into_values().map(|group_ids| async move {
            let deleting = Deleting {
                coordinator: self.coordinator,
                group_ids,
                limits: self.limits,
            };
            match self.persist_deletes(&deleting.group_ids).await {
                Ok(()) => {
                    for group_id in &deleting.group_ids {
                        tracing::info!(
                            group = group_id,
                            retention_ms = self.limits.group_retention_ms,
                            "empty group expired: its committed offsets are deleted"
                        );
                    }
                    deleting.finish(true);
                }
                Err(error) => {
                    tracing::warn!(groups = ?deleting.group_ids, code = ?error.code, error = error.message, "expiring groups failed; retrying later");
                    deleting.finish(false);
                }
            }
        });
        futures_util::future::join_all(deletions).await;
    }
}

/// Runs on every shard until `shutdown`: expires sessions, then empty
/// groups past their retention, of the groups it coordinates.
pub async fn expiry_loop(groups: GroupService<'_>, shutdown: &Shutdown) {
    while !shutdown.is_started() {
        futures_lite::future::or(
            glommio::timer::sleep(EXPIRY_CHECK_INTERVAL),
            shutdown.wait(),
        )
        .await;
        let coordinator = groups.coordinator;
        coordinator.schedule_replayed(&groups.limits);
        let counts = coordinator.partition_counts(&groups.partitions.metadata());
        let expired =
            coordinator.expire_sessions(&counts, &groups.limits, Instant::now(), now_ms());
        for (group, member) in expired {
            tracing::info!(
                group,
                member,
                "member session expired; its partitions go to the others"
            );
        }
        if !shutdown.is_started() {
            groups.expire_groups().await;
        }
    }
}

/// Ends a commit begun with [`Coordinator::begin_persist`] as failed unless
/// it is finished, even when the task awaiting it is dropped.
struct Persisting<'a> {
    coordinator: &'a Coordinator,
    group_id: &'a str,
    limits: GroupLimits,
    ended: bool,
}

impl Persisting<'_> {
    fn finish(mut self, commits: &[(TopicPartition, i64)], now_ms: i64) {
        self.ended = true;
        self.coordinator
            .end_persist(self.group_id, Some(commits), now_ms, &self.limits);
    }
}

impl Drop for Persisting<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.coordinator
                .end_persist(self.group_id, None, now_ms(), &self.limits);
        }
    }
}

/// Ends deletions begun with [`Coordinator::begin_delete`] or
/// [`Coordinator::take_expired`] as failed unless they are finished.
struct Deleting<'a> {
    coordinator: &'a Coordinator,
    group_ids: Vec<String>,
    limits: GroupLimits,
}

impl Deleting<'_> {
    fn finish(mut self, durable: bool) {
        let retry_at_ms = now_ms().saturating_add(EXPIRY_RETRY_MS);
        for group_id in std::mem::take(&mut self.group_ids) {
            self.coordinator
                .end_delete(&group_id, durable, retry_at_ms, &self.limits);
        }
    }
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        for group_id in std::mem::take(&mut self.group_ids) {
            self.coordinator
                .end_delete(&group_id, false, i64::MIN, &self.limits);
        }
    }
}

impl Coordinator {
    /// Replays an `__offsets` partition this shard just opened.
    ///
    /// # Errors
    /// Reading the partition failed.
    pub async fn replay(&self, partition: &PartitionState) -> shardlog_engine::Result<()> {
        let replayed_at_ms = now_ms();
        let mut offset = partition.log.log_start_offset();
        while offset < partition.log.high_watermark() {
            let slice = partition.log.read(offset, 4 << 20, None).await?;
            let bytes = slice.to_bytes().await?;
            for event in store::decode(bytes) {
                self.apply_replayed(event, replayed_at_ms);
            }
            offset = slice.next_offset;
        }
        Ok(())
    }
}

/// Longest a commit or deletion waits for the `__offsets` ISR to have it.
pub const COMMIT_REPLICATION_WAIT_MS: u64 = 30_000;

/// Appends `batch` to the `__offsets` partition and waits until every ISR
/// member has it: a commit is answered only once it survives the loss of
/// the coordinator's broker.
async fn append_replicated(
    partition: &PartitionState,
    batch: bytes::BytesMut,
) -> Result<(), WireError> {
    let info = partition
        .log
        .append(batch)
        .await
        .map_err(|e| WireError::from(&e))?;
    let wait = std::time::Duration::from_millis(COMMIT_REPLICATION_WAIT_MS);
    match partition.wait_replicated(info.last_offset + 1, wait).await {
        Ok(()) => Ok(()),
        Err(crate::shard::partition::WaitError::NotLeader) => Err(WireError::new(
            ErrorCode::NotLeader,
            "the group's coordinator moved before the commit was replicated; retry at the new one",
        )),
        Err(crate::shard::partition::WaitError::TimedOut) => Err(WireError::new(
            ErrorCode::RequestTimedOut,
            "the commit was not replicated in time; retry",
        )),
    }
}
