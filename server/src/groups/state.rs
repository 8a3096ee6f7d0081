//! One consumer group as its coordinator holds it.
//!
//! ```text
//!  heartbeat(member, epoch, subscription, owned)
//!     ─► update the member ─► recompute the target (sticky) ─► bump the group epoch if it changed
//!     ◄─ assignment = the member's target partitions that no other member still owns
//! ```
//!
//! A partition moves in two steps: its old owner stops getting it in its
//! assignment (revoke), commits, and stops listing it in `owned`; only then
//! does the new owner get it. Members that stop heartbeating for longer than
//! their session timeout are removed and their partitions are freed.

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

/// A group.
#[derive(Debug, Clone)]
pub struct Group {
    pub assignor: Assignor,
    pub epoch: i32,
    pub members: BTreeMap<String, Member>,
    pub target: BTreeMap<TopicPartition, String>,
    pub committed: BTreeMap<TopicPartition, i64>,
    next_member: u64,
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
        partitions: &BTreeMap<String, u32>,
        now: Instant,
    ) -> Result<HeartbeatOutcome, WireError> {
        if !SESSION_TIMEOUT_MS_RANGE.contains(&request.session_timeout_ms) {
            let message = format!("session_timeout_ms must be in {SESSION_TIMEOUT_MS_RANGE:?}");
            return Err(WireError::new(ErrorCode::InvalidGroup, message));
        }
        if request.member_epoch == -1 {
            self.members.remove(&request.member_id);
            self.recompute(partitions);
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
            member.topics = topics;
        }
        member.owned = request.owned;
        self.recompute(partitions);
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

    fn recompute(&mut self, partitions: &BTreeMap<String, u32>) {
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        let target = assign(self.assignor, &subscriptions, partitions, &self.target);
        if target != self.target {
            self.target = target;
            self.epoch += 1;
        }
    }

    /// Removes members whose session expired; true when any was removed.
    pub fn expire(&mut self, partitions: &BTreeMap<String, u32>, now: Instant) -> Vec<String> {
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
            self.recompute(partitions);
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

    fn parts(outcome: &HeartbeatOutcome) -> Vec<u32> {
        outcome.assignment.iter().map(|(_, p)| *p).collect()
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_revoked_it() {
        let partitions: BTreeMap<String, u32> = [("t".to_string(), 4)].into();
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
        let partitions: BTreeMap<String, u32> = [("t".to_string(), 2)].into();
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
                .heartbeat("g", request, &BTreeMap::new(), Instant::now())
                .unwrap_err()
                .code,
            ErrorCode::InvalidGroup
        );
        let mut request = beat("", 0, &[]);
        request.assignor = "roundrobin".into();
        assert_eq!(
            group
                .heartbeat("g", request, &BTreeMap::new(), Instant::now())
                .unwrap_err()
                .code,
            ErrorCode::InvalidGroup
        );
    }
}
