//! One consumer group as its coordinator holds it.
//!
//! ```text
//!  heartbeat(member, epoch, subscription, owned)
//!     ─► update the member ─► membership, a subscription or a subscribed topic's
//!        partition count changed? recompute the target (sticky) ─► bump the
//!        group epoch if it changed
//!     ◄─ assignment = the member's target partitions that no other member still owns
//! ```
//!
//! A partition moves in two steps: its old owner stops getting it in its
//! assignment (revoke), commits, and stops listing it in `owned`; only then
//! does the new owner get it. Members that stop heartbeating for longer than
//! their session timeout are removed and their partitions are freed.
//!
//! The target is a function of the members, their subscriptions and the
//! subscribed topics' partition counts (and, for sticky, the previous
//! target). A heartbeat that changes none of them keeps the target as it
//! is: recomputing would cost O(partitions) per heartbeat, and the sticky
//! assignor is not idempotent when subscriptions differ (computing it again
//! from its own result can move partitions), so recomputing could also
//! move partitions between members for no reason.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use shardlog_wire::protocol::fb::ErrorCode;

use super::assign::{assign, Assignor, TopicPartition};
use crate::error::WireError;

/// Members per group.
pub const MEMBERS_PER_GROUP_MAX: usize = 1000;
/// Heartbeat interval the coordinator asks for.
pub const HEARTBEAT_INTERVAL_MS: u32 = 500;
/// Session timeouts allowed.
pub const SESSION_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=300_000;

/// A member.
#[derive(Debug, Clone)]
pub struct Member {
    pub topics: BTreeSet<String>,
    pub owned: BTreeSet<TopicPartition>,
    pub session_timeout: Duration,
    pub last_seen: Instant,
    pub epoch: i32,
}

/// What a member sends.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub topics: Option<BTreeSet<String>>,
    pub owned: BTreeSet<TopicPartition>,
    pub session_timeout_ms: u64,
    pub assignor: String,
}

/// What the coordinator answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    pub member_id: String,
    pub member_epoch: i32,
    pub assignment: Vec<TopicPartition>,
}

/// Each topic's partition count as of one metadata revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionCounts {
    /// The metadata revision the counts come from.
    pub revision: u64,
    /// Partitions per topic.
    pub topics: BTreeMap<String, u32>,
}

/// What the current target was computed from, besides the members.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetInputs {
    revision: u64,
    /// The partition count of every subscribed topic (0 for a missing topic).
    subscribed_counts: BTreeMap<String, u32>,
}

/// A group.
#[derive(Debug, Clone)]
pub struct Group {
    pub assignor: Assignor,
    pub epoch: i32,
    pub members: BTreeMap<String, Member>,
    pub target: BTreeMap<TopicPartition, String>,
    pub committed: BTreeMap<TopicPartition, i64>,
    next_member: u64,
    /// `None` once membership or a subscription changed: the target is stale.
    target_inputs: Option<TargetInputs>,
    /// How many times the target was computed (for tests and debugging).
    pub targets_computed: u64,
    /// Wall clock (Unix ms) of the group's last use: its last commit, or
    /// the moment its last member left. Retention counts from here.
    pub last_used_ms: i64,
    /// The group does not expire before this (Unix ms): a grace after a
    /// restart, or a pause after a failed expiry.
    pub expiry_not_before_ms: i64,
    /// Commits (or a reset) of this group being appended to `__offsets`.
    pub persists_in_flight: u32,
    /// The group's deletion is being appended to `__offsets`.
    pub deleting: bool,
    /// When the group expires (Unix ms), while it is in the coordinator's expiry queue.
    pub expires_at_ms: Option<i64>,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            assignor: Assignor::Sticky,
            epoch: 0,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            committed: BTreeMap::new(),
            next_member: 0,
            target_inputs: None,
            targets_computed: 0,
            last_used_ms: i64::MIN,
            expiry_not_before_ms: i64::MIN,
            persists_in_flight: 0,
            deleting: false,
            expires_at_ms: None,
        }
    }
}

impl Group {
    /// "empty", "stable" (every member has its target) or "reconciling".
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else if self.target.iter().all(|(tp, m)| {
            self.members
                .get(m)
                .is_some_and(|member| member.owned.contains(tp))
        }) {
            "stable"
        } else {
            "reconciling"
        }
    }

    /// Handles a heartbeat; `partitions` gives each topic's partition count.
    ///
    /// # Errors
    /// `UnknownMemberId` (the member must rejoin with epoch 0), `InvalidGroup`
    /// for bad parameters or a full group.
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        request: Heartbeat,
        partitions: &PartitionCounts,
        now: Instant,
    ) -> Result<HeartbeatOutcome, WireError> {
        if !SESSION_TIMEOUT_MS_RANGE.contains(&request.session_timeout_ms) {
            let message = format!("session_timeout_ms must be in {SESSION_TIMEOUT_MS_RANGE:?}");
            return Err(WireError::new(ErrorCode::InvalidGroup, message));
        }
        if request.member_epoch == -1 {
            if self.members.remove(&request.member_id).is_some() {
                self.target_inputs = None;
            }
            self.refresh_target(partitions);
            return Ok(HeartbeatOutcome {
                member_id: request.member_id,
                member_epoch: -1,
                assignment: Vec::new(),
            });
        }
        let member_id = if request.member_epoch == 0 {
            self.join(group_id, &request)?
        } else if self.members.contains_key(&request.member_id) {
            request.member_id.clone()
        } else {
            let message = format!("member {:?} is not in group {group_id:?} (its session may have expired); rejoin with epoch 0", request.member_id);
            return Err(WireError::new(ErrorCode::UnknownMemberId, message));
        };
        let member = self
            .members
            .get_mut(&member_id)
            .expect("the member was just found or added");
        member.last_seen = now;
        member.session_timeout = Duration::from_millis(request.session_timeout_ms);
        if let Some(topics) = request.topics {
            if member.topics != topics {
                member.topics = topics;
                self.target_inputs = None;
            }
        }
        member.owned = request.owned;
        self.refresh_target(partitions);
        let epoch = self.epoch;
        let assignment = self.assignment_of(&member_id);
        if let Some(member) = self.members.get_mut(&member_id) {
            member.epoch = epoch;
        }
        Ok(HeartbeatOutcome {
            member_id,
            member_epoch: epoch,
            assignment,
        })
    }

    fn join(&mut self, group_id: &str, request: &Heartbeat) -> Result<String, WireError> {
        if self.members.is_empty() {
            self.assignor = Assignor::parse(&request.assignor).ok_or_else(|| {
                WireError::new(
                    ErrorCode::InvalidGroup,
                    format!(
                        "unknown assignor {:?}; use sticky or range",
                        request.assignor
                    ),
                )
            })?;
        }
        if !request.member_id.is_empty() && self.members.contains_key(&request.member_id) {
            return Ok(request.member_id.clone());
        }
        if self.members.len() >= MEMBERS_PER_GROUP_MAX {
            return Err(WireError::new(
                ErrorCode::InvalidGroup,
                format!("group {group_id:?} already has {MEMBERS_PER_GROUP_MAX} members"),
            ));
        }
        self.next_member += 1;
        let member_id = if request.member_id.is_empty() {
            format!("{group_id}-{}-{}", std::process::id(), self.next_member)
        } else {
            request.member_id.clone()
        };
        let member = Member {
            topics: BTreeSet::new(),
            owned: BTreeSet::new(),
            session_timeout: Duration::from_millis(request.session_timeout_ms),
            last_seen: Instant::now(),
            epoch: 0,
        };
        self.members.insert(member_id.clone(), member);
        self.target_inputs = None;
        Ok(member_id)
    }

    /// The partitions `member` may consume now: its target, less what another member still owns.
    pub fn assignment_of(&self, member: &str) -> Vec<TopicPartition> {
        self.target
            .iter()
            .filter(|(_, owner)| owner.as_str() == member)
            .filter(|(tp, _)| {
                !self
                    .members
                    .iter()
                    .any(|(other, m)| other != member && m.owned.contains(*tp))
            })
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// Recomputes the target if what it depends on changed since it was computed.
    fn refresh_target(&mut self, partitions: &PartitionCounts) {
        if let Some(inputs) = &self.target_inputs {
            if inputs.revision == partitions.revision {
                return;
            }
        }
        let subscribed_counts: BTreeMap<String, u32> = self
            .members
            .values()
            .flat_map(|m| m.topics.iter())
            .map(|t| (t.clone(), partitions.topics.get(t).copied().unwrap_or(0)))
            .collect();
        let unchanged = self
            .target_inputs
            .as_ref()
            .is_some_and(|inputs| inputs.subscribed_counts == subscribed_counts);
        self.target_inputs = Some(TargetInputs {
            revision: partitions.revision,
            subscribed_counts,
        });
        if !unchanged {
            self.recompute(partitions);
        }
    }

    fn recompute(&mut self, partitions: &PartitionCounts) {
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        let target = assign(
            self.assignor,
            &subscriptions,
            &partitions.topics,
            &self.target,
        );
        self.targets_computed += 1;
        assert!(
            target.values().all(|m| self.members.contains_key(m)),
            "the target names members only"
        );
        if target != self.target {
            self.target = target;
            self.epoch += 1;
        }
    }

    /// Removes members whose session expired and returns their ids.
    pub fn expire(&mut self, partitions: &PartitionCounts, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) > m.session_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.target_inputs = None;
            self.refresh_target(partitions);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(member_id: &str, epoch: i32, owned: &[u32]) -> Heartbeat {
        Heartbeat {
            member_id: member_id.into(),
            member_epoch: epoch,
            topics: Some(["t".to_string()].into()),
            owned: owned.iter().map(|p| ("t".to_string(), *p)).collect(),
            session_timeout_ms: 10_000,
            assignor: String::new(),
        }
    }

    fn counts(topics: &[(&str, u32)]) -> PartitionCounts {
        PartitionCounts {
            revision: 1,
            topics: topics.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        }
    }

    fn parts(outcome: &HeartbeatOutcome) -> Vec<u32> {
        outcome.assignment.iter().map(|(_, p)| *p).collect()
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_revoked_it() {
        let partitions = counts(&[("t", 4)]);
        let now = Instant::now();
        let mut group = Group::default();
        let a = group
            .heartbeat("g", beat("", 0, &[]), &partitions, now)
            .unwrap();
        assert_eq!(parts(&a), vec![0, 1, 2, 3]);
        let a = group
            .heartbeat(
                "g",
                beat(&a.member_id, a.member_epoch, &[0, 1, 2, 3]),
                &partitions,
                now,
            )
            .unwrap();
        assert_eq!(group.state(), "stable");
        let b = group
            .heartbeat("g", beat("", 0, &[]), &partitions, now)
            .unwrap();
        assert!(
            parts(&b).is_empty(),
            "b waits until a gives the partitions up"
        );
        assert_eq!(group.state(), "reconciling");
        let a2 = group
            .heartbeat(
                "g",
                beat(&a.member_id, a.member_epoch, &[0, 1, 2, 3]),
                &partitions,
                now,
            )
            .unwrap();
        assert_eq!(parts(&a2).len(), 2, "a is told to keep two");
        let kept: Vec<u32> = parts(&a2);
        let b2 = group
            .heartbeat(
                "g",
                beat(&b.member_id, b.member_epoch, &[]),
                &partitions,
                now,
            )
            .unwrap();
        assert!(parts(&b2).is_empty(), "a still owns everything");
        group
            .heartbeat(
                "g",
                beat(&a.member_id, a2.member_epoch, &kept),
                &partitions,
                now,
            )
            .unwrap();
        let b3 = group
            .heartbeat(
                "g",
                beat(&b.member_id, b2.member_epoch, &[]),
                &partitions,
                now,
            )
            .unwrap();
        assert_eq!(parts(&b3).len(), 2);
        assert!(parts(&b3).iter().all(|p| !kept.contains(p)));
    }

    #[test]
    fn leaving_and_expiring_free_partitions() {
        let partitions = counts(&[("t", 2)]);
        let now = Instant::now();
        let mut group = Group::default();
        let a = group
            .heartbeat("g", beat("", 0, &[]), &partitions, now)
            .unwrap();
        let b = group
            .heartbeat("g", beat("", 0, &[]), &partitions, now)
            .unwrap();
        group
            .heartbeat("g", beat(&a.member_id, 1, &[]), &partitions, now)
            .unwrap();
        group
            .heartbeat("g", beat(&b.member_id, 1, &[]), &partitions, now)
            .unwrap();
        assert_eq!(group.members.len(), 2);
        group
            .heartbeat("g", beat(&b.member_id, -1, &[]), &partitions, now)
            .unwrap();
        let a2 = group
            .heartbeat("g", beat(&a.member_id, 2, &[]), &partitions, now)
            .unwrap();
        assert_eq!(parts(&a2), vec![0, 1]);
        let later = now + Duration::from_secs(11);
        assert_eq!(group.expire(&partitions, later), vec![a.member_id.clone()]);
        assert_eq!(group.state(), "empty");
        let stale = group.heartbeat("g", beat(&a.member_id, 3, &[]), &partitions, later);
        assert_eq!(stale.unwrap_err().code, ErrorCode::UnknownMemberId);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut group = Group::default();
        let mut request = beat("", 0, &[]);
        request.session_timeout_ms = 5;
        assert_eq!(
            group
                .heartbeat("g", request, &PartitionCounts::default(), Instant::now())
                .unwrap_err()
                .code,
            ErrorCode::InvalidGroup
        );
        let mut request = beat("", 0, &[]);
        request.assignor = "roundrobin".into();
        assert_eq!(
            group
                .heartbeat("g", request, &PartitionCounts::default(), Instant::now())
                .unwrap_err()
                .code,
            ErrorCode::InvalidGroup
        );
    }

    #[test]
    fn the_target_is_computed_only_when_its_inputs_change() {
        let mut partitions = counts(&[("t", 2), ("u", 1)]);
        let now = Instant::now();
        let mut group = Group::default();
        let a = group
            .heartbeat("g", beat("", 0, &[]), &partitions, now)
            .unwrap();
        assert_eq!(group.targets_computed, 1);
        for _ in 0..5 {
            group
                .heartbeat("g", beat(&a.member_id, 1, &[0, 1]), &partitions, now)
                .unwrap();
        }
        assert_eq!(group.targets_computed, 1, "nothing changed");
        let mut resubscribe = beat(&a.member_id, 1, &[0, 1]);
        resubscribe.topics = Some(["t".to_string(), "u".to_string()].into());
        let a2 = group.heartbeat("g", resubscribe, &partitions, now).unwrap();
        assert_eq!(group.targets_computed, 2, "a subscription changed");
        assert_eq!(a2.assignment.len(), 3);
        let mut same = beat(&a.member_id, a2.member_epoch, &[0, 1]);
        same.topics = Some(["t".to_string(), "u".to_string()].into());
        let b = group
            .heartbeat("g", beat("", 0, &[]), &partitions, now)
            .unwrap();
        assert_eq!(group.targets_computed, 3, "a member joined");
        group
            .heartbeat("g", same.clone(), &partitions, now)
            .unwrap();
        assert_eq!(group.targets_computed, 3);
        partitions.revision = 2;
        partitions.topics.insert("unrelated".into(), 8);
        group
            .heartbeat("g", same.clone(), &partitions, now)
            .unwrap();
        assert_eq!(group.targets_computed, 3, "no subscribed topic changed");
        partitions.revision = 3;
        partitions.topics.insert("t".into(), 3);
        group
            .heartbeat("g", same.clone(), &partitions, now)
            .unwrap();
        assert_eq!(group.targets_computed, 4, "a subscribed topic grew");
        assert_eq!(group.target.len(), 4);
        group
            .heartbeat("g", beat(&b.member_id, -1, &[]), &partitions, now)
            .unwrap();
        assert_eq!(group.targets_computed, 5, "a member left");
        let later = now + Duration::from_secs(11);
        assert_eq!(group.expire(&partitions, later).len(), 1);
        assert_eq!(group.targets_computed, 6, "a session expired");
        assert!(group.target.is_empty());
    }
}
