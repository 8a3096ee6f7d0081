//! Consumer groups: the coordinator, committed offsets, assignment.
//!
//! The coordinator of a group is the shard that owns the group's partition
//! of the internal topic `__offsets` (CRC32C of the group id modulo its 16
//! partitions). Commits and group deletions are appended to that partition
//! as records and replayed when the partition opens; the latest commit per
//! (group, topic, partition) is held in memory. Membership lives in memory
//! only: after a broker restart members rejoin (their heartbeats get
//! `UnknownMemberId`), and their committed offsets are still there.
//!
//! Names are checked at the API before anything is stored: group ids have
//! 1 to [`GROUP_ID_BYTES_MAX`] bytes (`InvalidGroup`), member ids at most
//! [`MEMBER_ID_BYTES_MAX`], and every topic name in a commit, reset,
//! subscription or owned list follows the topic rules (1 to 200 of
//! `[A-Za-z0-9._-]`, `InvalidTopic`). The `__offsets` records hold u16
//! lengths (`store.rs`): nothing is ever truncated.

pub mod assign;
pub mod state;
mod store;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use shardlog_wire::protocol::fb::ErrorCode;

pub use assign::TopicPartition;
pub use state::{Group, Heartbeat, HeartbeatOutcome, PartitionCounts};

use crate::error::WireError;
use crate::metadata::ClusterMetadata;
use crate::shard::{PartitionState, ShardState};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__offsets";
/// Partitions of [`OFFSETS_TOPIC`].
pub const OFFSETS_PARTITIONS: u32 = 16;
/// Longest group id.
pub const GROUP_ID_BYTES_MAX: usize = 200;
/// Longest member id a client may send (members are held in memory, not stored).
pub const MEMBER_ID_BYTES_MAX: usize = 256;
/// The largest batch of commits: the batch limit of `__offsets` (1 MiB).
pub const COMMIT_BATCH_BYTES_MAX: usize = shardlog_wire::batch::BATCH_BYTES_MAX_DEFAULT as usize;
/// How often coordinators look for expired sessions.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(250);

// A generated member id ("{group}-{pid}-{n}") always fits.
const _: () = assert!(GROUP_ID_BYTES_MAX + 1 + 10 + 1 + 20 <= MEMBER_ID_BYTES_MAX);

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
/// rules of topic names ([`crate::metadata::validate_topic_name`]), or an
/// internal topic's name.
///
/// # Errors
/// `InvalidTopic`.
pub fn validate_topic_name(name: &str) -> Result<(), WireError> {
    if name == OFFSETS_TOPIC {
        return Ok(());
    }
    crate::metadata::validate_topic_name(name).map_err(|reason| {
        let shown: String = name.chars().take(64).collect();
        let message = format!("topic {shown:?} ({} bytes): {reason}", name.len());
        WireError::new(ErrorCode::InvalidTopic, message)
    })
}

/// The groups one shard coordinates.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: RefCell<BTreeMap<String, Group>>,
    /// Partition counts of the latest metadata revision seen.
    partition_counts: RefCell<Option<Rc<PartitionCounts>>>,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    pub state: &'static str,
    pub assignor: &'static str,
    pub members: Vec<(String, i32, Vec<String>, Vec<TopicPartition>)>,
    /// Every assigned or committed partition: (partition, committed offset or -1, owner).
    pub offsets: Vec<(TopicPartition, i64, String)>,
}

impl Coordinator {
    /// Each topic's partition count for `metadata`, rebuilt only when its revision changed.
    pub fn partition_counts(&self, metadata: &ClusterMetadata) -> Rc<PartitionCounts> {
        let mut cached = self.partition_counts.borrow_mut();
        if let Some(counts) = cached.as_ref() {
            if counts.revision == metadata.revision {
                return counts.clone();
            }
        }
        let topics = metadata
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), t.partition_count()))
            .collect();
        let counts = Rc::new(PartitionCounts {
            revision: metadata.revision,
            topics,
        });
        *cached = Some(counts.clone());
        counts
    }

    /// Handles a heartbeat.
    ///
    /// # Errors
    /// As [`Group::heartbeat`].
    pub fn heartbeat(
        &self,
        shard: &ShardState,
        group_id: &str,
        request: Heartbeat,
    ) -> Result<HeartbeatOutcome, WireError> {
        let partitions = self.partition_counts(&shard.metadata());
        let mut groups = self.groups.borrow_mut();
        let group = groups.entry(group_id.to_string()).or_default();
        group.heartbeat(group_id, request, &partitions, Instant::now())
    }

    /// Removes expired members from every group.
    pub fn expire(&self, shard: &ShardState) {
        let partitions = self.partition_counts(&shard.metadata());
        let now = Instant::now();
        for (group_id, group) in self.groups.borrow_mut().iter_mut() {
            for member in group.expire(&partitions, now) {
                tracing::info!(
                    group = group_id,
                    member,
                    "member session expired; its partitions go to the others"
                );
            }
        }
    }

    /// Checks that a commit comes from a current member, or from outside an empty group.
    ///
    /// # Errors
    /// `UnknownMemberId` otherwise.
    pub fn check_committer(&self, group_id: &str, member_id: &str) -> Result<(), WireError> {
        let groups = self.groups.borrow();
        let members = groups.get(group_id).map(|g| &g.members);
        let allowed = match members {
            None => member_id.is_empty(),
            Some(members) if member_id.is_empty() => members.is_empty(),
            Some(members) => members.contains_key(member_id),
        };
        if !allowed {
            let message = format!("member {member_id:?} may not commit for group {group_id:?}; rejoin the group (or commit from outside only while it is empty)");
            return Err(WireError::new(ErrorCode::UnknownMemberId, message));
        }
        Ok(())
    }

    /// Records commits that are now durable in `__offsets`.
    pub fn apply_commits(&self, group_id: &str, commits: &[(TopicPartition, i64)]) {
        let mut groups = self.groups.borrow_mut();
        let group = groups.entry(group_id.to_string()).or_default();
        for (tp, offset) in commits {
            group.committed.insert(tp.clone(), *offset);
        }
    }

    /// The committed offsets of `group_id` (of `wanted`, or all).
    pub fn committed(
        &self,
        group_id: &str,
        wanted: Option<&[TopicPartition]>,
    ) -> Vec<(TopicPartition, i64)> {
        let groups = self.groups.borrow();
        let Some(group) = groups.get(group_id) else {
            return wanted
                .map(|w| w.iter().map(|tp| (tp.clone(), -1)).collect())
                .unwrap_or_default();
        };
        match wanted {
            Some(wanted) => wanted
                .iter()
                .map(|tp| (tp.clone(), group.committed.get(tp).copied().unwrap_or(-1)))
                .collect(),
            None => group
                .committed
                .iter()
                .map(|(tp, o)| (tp.clone(), *o))
                .collect(),
        }
    }

    /// (group, state, members) of every group here.
    pub fn list(&self) -> Vec<(String, &'static str, u32)> {
        self.groups
            .borrow()
            .iter()
            .map(|(id, g)| (id.clone(), g.state(), g.members.len() as u32))
            .collect()
    }

    /// Every committed offset here, for lag metrics: (group, partition, offset).
    pub fn all_commits(&self) -> Vec<(String, TopicPartition, i64)> {
        let groups = self.groups.borrow();
        groups
            .iter()
            .flat_map(|(id, g)| {
                g.committed
                    .iter()
                    .map(move |(tp, o)| (id.clone(), tp.clone(), *o))
            })
            .collect()
    }

    /// A group's members, assignment and committed offsets.
    ///
    /// # Errors
    /// `UnknownGroup`.
    pub fn describe(&self, group_id: &str) -> Result<GroupSnapshot, WireError> {
        let groups = self.groups.borrow();
        let group = groups
            .get(group_id)
            .ok_or_else(|| unknown_group(group_id))?;
        let members = group
            .members
            .iter()
            .map(|(id, m)| {
                (
                    id.clone(),
                    m.epoch,
                    m.topics.iter().cloned().collect(),
                    group.assignment_of(id),
                )
            })
            .collect();
        let mut partitions: BTreeSet<&TopicPartition> = group.committed.keys().collect();
        partitions.extend(group.target.keys());
        let offsets = partitions
            .into_iter()
            .map(|tp| {
                (
                    tp.clone(),
                    group.committed.get(tp).copied().unwrap_or(-1),
                    group.target.get(tp).cloned().unwrap_or_default(),
                )
            })
            .collect();
        Ok(GroupSnapshot {
            state: group.state(),
            assignor: group.assignor.name(),
            members,
            offsets,
        })
    }

    /// Checks that a group exists and has no members (for delete and reset).
    ///
    /// # Errors
    /// `UnknownGroup`, `GroupNotEmpty`.
    pub fn check_empty(&self, group_id: &str, must_exist: bool) -> Result<(), WireError> {
        match self.groups.borrow().get(group_id) {
            None if must_exist => Err(unknown_group(group_id)),
            Some(group) if !group.members.is_empty() => Err(WireError::new(
                ErrorCode::GroupNotEmpty,
                format!(
                    "group {group_id:?} has {} active members; stop them first",
                    group.members.len()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Forgets a group (its deletion is durable in `__offsets`).
    pub fn remove(&self, group_id: &str) {
        self.groups.borrow_mut().remove(group_id);
    }

    /// Replays an `__offsets` partition this shard just opened.
    ///
    /// # Errors
    /// Reading the partition failed.
    pub async fn replay(&self, partition: &PartitionState) -> shardlog_engine::Result<()> {
        let mut offset = partition.log.log_start_offset();
        while offset < partition.log.high_watermark() {
            let slice = partition.log.read(offset, 4 << 20, None).await?;
            let bytes = slice.to_bytes().await?;
            for event in store::decode(bytes) {
                match event {
                    store::Event::Commit { group, tp, offset } => {
                        self.apply_commits(&group, &[(tp, offset)])
                    }
                    store::Event::Delete { group } => self.remove(&group),
                }
            }
            offset = slice.next_offset;
        }
        Ok(())
    }
}

/// Appends commits of `group_id` to its `__offsets` partition, durably.
///
/// # Errors
/// The partition is not here, or the append failed.
pub async fn persist_commits(
    shard: &ShardState,
    group_id: &str,
    commits: &[(TopicPartition, i64)],
) -> Result<(), WireError> {
    let partition = offsets_partition_state(shard, group_id)?;
    let batch = store::encode_commits(group_id, commits);
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
    Ok(())
}

/// Appends the deletion of `group_id`, durably.
///
/// # Errors
/// As [`persist_commits`].
pub async fn persist_delete(shard: &ShardState, group_id: &str) -> Result<(), WireError> {
    let partition = offsets_partition_state(shard, group_id)?;
    partition
        .log
        .append(store::encode_delete(group_id))
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

fn unknown_group(group_id: &str) -> WireError {
    WireError::new(
        ErrorCode::UnknownGroup,
        format!("group {group_id:?} does not exist"),
    )
}

/// Runs on every shard: expires sessions of the groups it coordinates.
pub async fn expiry_loop(shard: Rc<ShardState>) {
    while !shard.shutdown.is_started() {
        futures_lite::future::or(
            glommio::timer::sleep(EXPIRY_CHECK_INTERVAL),
            shard.shutdown.wait(),
        )
        .await;
        shard.coordinator.expire(&shard);
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
