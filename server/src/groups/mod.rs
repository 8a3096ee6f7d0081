//! Consumer groups: the coordinator, committed offsets, assignment, expiry.
//!
//! The coordinator of a group is the shard that owns the group's partition
//! of the internal topic `__offsets` (CRC32C of the group id modulo its 16
//! partitions). Commits and group deletions are appended to that partition
//! as records and replayed when the partition opens; the latest commit per
//! (group, topic, partition) is held in memory. Membership lives in memory
//! only: after a broker restart members rejoin (their heartbeats get
//! `UnknownMemberId`), and their committed offsets are still there.
//!
//! No client can grow a coordinator without bound:
//!
//! - Names are checked at the API before anything is stored: group ids
//!   have 1 to [`GROUP_ID_BYTES_MAX`] bytes (`InvalidGroup`), and every topic
//!   name in a commit, reset, subscription or owned list follows the topic
//!   rules (1 to 200 of `[A-Za-z0-9._-]`, `InvalidTopic`). The `__offsets`
//!   records hold u16 lengths (`store.rs`): nothing is ever truncated.
//! - A shard coordinates at most `groups-per-shard-max` groups (a group
//!   counts while it has members or committed offsets). A heartbeat or an
//!   outside commit that would create one more gets `Busy`: retriable,
//!   since room comes back as empty groups expire or are deleted.
//! - A group without members and offsets is forgotten at once; an empty
//!   group with offsets expires `group-retention-ms` after its last use
//!   (7 days by default, as Kafka's `offsets.retention.minutes`): its
//!   deletion is appended to `__offsets`, as `group delete` does, and the
//!   group is forgotten. See `coordinator.rs` for the clock and the restart
//!   rule. The expiry loop below runs both session and group expiry.

pub mod assign;
mod coordinator;
pub mod state;
mod store;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shardlog_wire::protocol::fb::ErrorCode;

pub use assign::TopicPartition;
pub use coordinator::{Coordinator, GroupLimits, GroupSnapshot, Writer};
pub use state::{Group, Heartbeat, HeartbeatOutcome, PartitionCounts};

use crate::error::WireError;
use crate::shard::{PartitionState, ShardState};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__offsets";
/// Partitions of [`OFFSETS_TOPIC`].
pub const OFFSETS_PARTITIONS: u32 = 16;
/// Longest group id.
pub const GROUP_ID_BYTES_MAX: usize = 200;
/// Longest member id a client may send (members are held in memory, not stored).
pub const MEMBER_ID_BYTES_MAX: usize = 256;
/// How often coordinators look for expired sessions and expired groups.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The largest batch of commits: the batch limit of `__offsets` (1 MiB).
pub const COMMIT_BATCH_BYTES_MAX: usize = shardlog_wire::batch::BATCH_BYTES_MAX_DEFAULT as usize;
/// Most groups one expiry tick deletes (the rest wait for the next tick).
pub const GROUPS_EXPIRED_PER_TICK_MAX: usize = 1000;
/// After a failed expiry, the group waits this long before the next attempt.
pub const EXPIRY_RETRY_MS: i64 = 10_000;

// A generated member id ("{group}-{pid}-{n}") always fits.
const _: () = assert!(GROUP_ID_BYTES_MAX + 1 + 10 + 1 + 20 <= MEMBER_ID_BYTES_MAX);

// One tick's deletions of one `__offsets` partition fit in one batch.
const _: () =
    assert!(GROUPS_EXPIRED_PER_TICK_MAX * (GROUP_ID_BYTES_MAX + 32) < COMMIT_BATCH_BYTES_MAX);

/// The `__offsets` partition of a group.
pub fn offsets_partition(group_id: &str) -> u32 {
    crc32c::crc32c(group_id.as_bytes()) % OFFSETS_PARTITIONS
}

/// Checks a group id.
///
/// # Errors
/// `InvalidGroup` for an empty or overlong id.
pub fn validate_group_id(group_id: &str) -> Result<(), WireError> {
    if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
        return Err(WireError::new(
            ErrorCode::InvalidGroup,
            format!(
                "group ids have 1 to {GROUP_ID_BYTES_MAX} bytes, not {}",
                group_id.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a topic name that a group request would store or hold: the
/// rules of topic names ([`crate::cluster::topic_name::validate_topic_name`]), or an
/// internal topic's name.
///
/// # Errors
/// `InvalidTopic`.
pub fn validate_topic_name(name: &str) -> Result<(), WireError> {
    if name == OFFSETS_TOPIC {
        return Ok(());
    }
    crate::cluster::topic_name::validate_topic_name(name).map_err(|reason| {
        let shown: String = name.chars().take(64).collect();
        let message = format!("topic {shown:?} ({} bytes): {reason}", name.len());
        WireError::new(ErrorCode::InvalidTopic, message)
    })
}

/// The broker's wall clock, in Unix ms (0 before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Handles a heartbeat on the group's coordinator.
///
/// # Errors
/// As [`Coordinator::heartbeat`].
pub fn heartbeat(
    shard: &ShardState,
    group_id: &str,
    request: Heartbeat,
) -> Result<HeartbeatOutcome, WireError> {
    let coordinator = &shard.coordinator;
    let partitions = coordinator.partition_counts(&shard.metadata());
    let limits = GroupLimits::of(&shard.config);
    coordinator.heartbeat(
        group_id,
        request,
        &partitions,
        &limits,
        Instant::now(),
        now_ms(),
    )
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

/// Commits (or resets) offsets of `group_id`: checked, appended to
/// `__offsets` durably, then applied.
///
/// # Errors
/// As [`Coordinator::begin_persist`]; the append failed.
pub async fn commit(
    shard: &ShardState,
    group_id: &str,
    writer: Writer<'_>,
    commits: &[(TopicPartition, i64)],
) -> Result<(), WireError> {
    let limits = GroupLimits::of(&shard.config);
    shard.coordinator.begin_persist(group_id, writer, &limits)?;
    let persisting = Persisting {
        coordinator: &shard.coordinator,
        group_id,
        limits,
        ended: false,
    };
    let now_ms = now_ms();
    let partition = offsets_partition_state(shard, group_id)?;
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
    partition
        .log
        .append(batch)
        .await
        .map_err(|e| WireError::from(&e))?;
    persisting.finish(commits, now_ms);
    Ok(())
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

/// Deletes an empty group and its offsets, durably (`group delete`).
///
/// # Errors
/// As [`Coordinator::begin_delete`]; the append failed.
pub async fn delete(shard: &ShardState, group_id: &str) -> Result<(), WireError> {
    let limits = GroupLimits::of(&shard.config);
    shard.coordinator.begin_delete(group_id, &limits)?;
    let deleting = Deleting {
        coordinator: &shard.coordinator,
        group_ids: vec![group_id.to_string()],
        limits,
    };
    let result = persist_deletes(shard, &deleting.group_ids).await;
    deleting.finish(result.is_ok());
    result
}

/// Appends the deletion of `group_ids` (all of one `__offsets` partition), durably.
async fn persist_deletes(shard: &ShardState, group_ids: &[String]) -> Result<(), WireError> {
    let first = group_ids.first().expect("at least one group");
    assert!(
        group_ids
            .iter()
            .all(|g| offsets_partition(g) == offsets_partition(first)),
        "one batch per __offsets partition"
    );
    let partition = offsets_partition_state(shard, first)?;
    partition
        .log
        .append(store::encode_deletes(group_ids, now_ms()))
        .await
        .map_err(|e| WireError::from(&e))?;
    Ok(())
}

fn offsets_partition_state(
    shard: &ShardState,
    group_id: &str,
) -> Result<Rc<PartitionState>, WireError> {
    shard
        .partition(OFFSETS_TOPIC, offsets_partition(group_id))
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::ShuttingDown,
                format!("this shard does not coordinate group {group_id:?} (yet); retry"),
            )
        })
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

/// Deletes the groups whose retention passed: one append per `__offsets`
/// partition, all at once.
async fn expire_groups(shard: &ShardState, limits: GroupLimits) {
    let coordinator = &shard.coordinator;
    let due = coordinator.take_expired(now_ms(), GROUPS_EXPIRED_PER_TICK_MAX);
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
            coordinator,
            group_ids,
            limits,
        };
        match persist_deletes(shard, &deleting.group_ids).await {
            Ok(()) => {
                for group_id in &deleting.group_ids {
                    tracing::info!(
                        group = group_id,
                        retention_ms = limits.group_retention_ms,
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

/// Runs on every shard: expires sessions, then empty groups past their
/// retention, of the groups it coordinates.
pub async fn expiry_loop(shard: Rc<ShardState>) {
    let limits = GroupLimits::of(&shard.config);
    while !shard.shutdown.is_started() {
        futures_lite::future::or(
            glommio::timer::sleep(EXPIRY_CHECK_INTERVAL),
            shard.shutdown.wait(),
        )
        .await;
        let coordinator = &shard.coordinator;
        coordinator.schedule_replayed(&limits);
        let partitions = coordinator.partition_counts(&shard.metadata());
        let expired = coordinator.expire_sessions(&partitions, &limits, Instant::now(), now_ms());
        for (group, member) in expired {
            tracing::info!(
                group,
                member,
                "member session expired; its partitions go to the others"
            );
        }
        if !shard.shutdown.is_started() {
            expire_groups(&shard, limits).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_not_be_stored_are_refused() {
        assert!(validate_group_id(&"g".repeat(GROUP_ID_BYTES_MAX)).is_ok());
        for bad in [
            String::new(),
            "g".repeat(GROUP_ID_BYTES_MAX + 1),
            "g".repeat(70_000),
        ] {
            let error = validate_group_id(&bad).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidGroup);
        }
        assert!(validate_topic_name("orders.v2").is_ok());
        assert!(validate_topic_name(OFFSETS_TOPIC).is_ok());
        for bad in [
            String::new(),
            "t".repeat(201),
            "t".repeat(70_000),
            "a/b".into(),
        ] {
            let error = validate_topic_name(&bad).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidTopic);
            assert!(
                error.message.len() < 300,
                "the message does not echo a long name"
            );
        }
    }
}
