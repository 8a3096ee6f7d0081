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
//!   rule. The expiry loop (`service.rs`) runs both session and group expiry.

pub mod assign;
mod coordinator;
mod service;
pub mod state;
mod store;

use std::time::Duration;

use shardlog_wire::protocol::fb::ErrorCode;

pub use assign::TopicPartition;
pub use coordinator::{Coordinator, GroupLimits, GroupSnapshot, Writer};
pub use service::{expiry_loop, GroupService};
pub use state::{Group, Heartbeat, HeartbeatOutcome, PartitionCounts};

use crate::error::WireError;

pub use shardlog_wire::offsets::{offsets_partition, OFFSETS_PARTITIONS, OFFSETS_TOPIC};
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
