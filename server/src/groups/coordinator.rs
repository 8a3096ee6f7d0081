//! The groups one shard coordinates, and their life cycle.
//!
//! ```text
//!                 join                          last member leaves or expires
//!   (unknown) ───────────► has members ───────────────────────────────┐
//!       ▲                    ▲                                        ▼
//!       │ no offsets         │ join              empty ── no committed offsets ──► forgotten at once
//!       │                    └─────────────────── │
//!       │                                         │ offsets: queued by expiry time
//!       │   deletion durable in __offsets         ▼
//!       └────────────────────────────── deleting ◄── retention passed (or `group delete`)
//! ```
//!
//! Every change of a group ends in `Groups::settle`, which keeps the two
//! indexes true: `active` (the groups with members: the only ones session
//! expiry looks at) and `expiry` (empty groups with committed offsets, by
//! the wall-clock time they expire: a tick looks only at its front). So a
//! tick costs O(members of active groups + groups due), however many empty
//! groups wait for their retention.
//!
//! A group expires `retention_ms` after its last use: its last commit, or
//! when its last member left, whichever is later. After a restart the
//! clock of a replayed group starts at its last commit (the record's
//! timestamp), not at the restart, so restarts do not keep groups alive;
//! but the group is not expired before the replay plus the longest session
//! timeout (or the retention, if shorter), so that the members of a live
//! group, which rejoin within their session timeout, are not deleted from
//! under themselves.
//!
//! Writes to `__offsets` and the memory must tell the same story as a
//! replay would. A commit (or reset) counts in `persists_in_flight` from
//! its check to its outcome; a deletion starts only while none is in
//! flight, and while it is in flight (`deleting`) commits are refused with
//! `Busy`. So no commit can land on either side of a deletion in the log
//! while memory applies them in the other order. Members may join while a
//! deletion is in flight: the deletion removes offsets, not members.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Instant;

use shardlog_wire::protocol::fb::ErrorCode;

use super::assign::TopicPartition;
use super::state::{Group, Heartbeat, HeartbeatOutcome, PartitionCounts, SESSION_TIMEOUT_MS_RANGE};
use super::store::Event;
use crate::config::ServerConfig;
use crate::error::WireError;
use crate::metadata::ClusterMetadata;

/// The limits a coordinator enforces, from the broker's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Groups one shard coordinates (members or offsets).
    pub groups_per_shard_max: usize,
    /// How long an empty group keeps its offsets.
    pub group_retention_ms: u64,
}

impl GroupLimits {
    /// The limits of `config`.
    pub fn of(config: &ServerConfig) -> GroupLimits {
        GroupLimits {
            groups_per_shard_max: config.limits.groups_per_shard_max,
            group_retention_ms: config.limits.group_retention_ms,
        }
    }

    fn retention_ms(&self) -> i64 {
        i64::try_from(self.group_retention_ms).unwrap_or(i64::MAX)
    }

    /// How long a replayed group is kept at least, from its replay.
    fn replay_grace_ms(&self) -> i64 {
        let session_max = i64::try_from(*SESSION_TIMEOUT_MS_RANGE.end()).unwrap_or(i64::MAX);
        self.retention_ms().min(session_max)
    }
}

/// Who writes offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer<'a> {
    /// A commit from a member, or from outside the group (an empty member id)
    /// while it has no members.
    Member(&'a str),
    /// A reset, only while the group has no members.
    Reset,
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

#[derive(Debug, Default)]
struct Groups {
    by_id: BTreeMap<String, Group>,
    /// Groups with members.
    active: BTreeSet<String>,
    /// Empty groups with offsets, by the Unix ms they expire at.
    expiry: BTreeSet<(i64, String)>,
    /// Groups replayed from `__offsets` and when; the next tick schedules them.
    replayed: Vec<(String, i64)>,
}

/// The groups one shard coordinates.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: RefCell<Groups>,
    /// Partition counts of the latest metadata revision seen.
    partition_counts: RefCell<Option<Rc<PartitionCounts>>>,
}

impl Groups {
    /// Puts `group_id` in the indexes its state calls for, or forgets it.
    fn settle(&mut self, group_id: &str, limits: &GroupLimits) {
        let Groups {
            by_id,
            active,
            expiry,
            ..
        } = self;
        let Some(group) = by_id.get_mut(group_id) else {
            assert!(!active.contains(group_id), "only known groups are active");
            return;
        };
        assert!(
            !(group.deleting && group.persists_in_flight > 0),
            "a deletion never overlaps a commit"
        );
        let busy = group.deleting || group.persists_in_flight > 0;
        if group.members.is_empty() {
            active.remove(group_id);
            if group.committed.is_empty() && !busy {
                // Nothing about it is stored: forget it now.
                reschedule(expiry, group_id, group, None);
                by_id.remove(group_id);
                return;
            }
        } else if !active.contains(group_id) {
            active.insert(group_id.to_string());
        }
        let deadline = (group.members.is_empty() && !busy).then(|| {
            let after_use = group.last_used_ms.saturating_add(limits.retention_ms());
            after_use.max(group.expiry_not_before_ms)
        });
        reschedule(expiry, group_id, group, deadline);
    }

    /// Refuses a new group when the shard has no room for it.
    fn check_room(&self, group_id: &str, limits: &GroupLimits) -> Result<(), WireError> {
        if self.by_id.len() < limits.groups_per_shard_max {
            return Ok(());
        }
        let message = format!(
            "cannot create group {group_id:?}: its coordinator shard already holds {} groups, \
             its groups-per-shard-max; empty groups expire after group-retention-ms, or delete \
             unused ones (shardlog group delete); retry later",
            self.by_id.len()
        );
        Err(WireError::new(ErrorCode::Busy, message))
    }

    /// Handles the heartbeat of a group not known here; keeps it only if a member joined.
    fn heartbeat_new(
        &mut self,
        group_id: &str,
        request: Heartbeat,
        partitions: &PartitionCounts,
        limits: &GroupLimits,
        now: Instant,
    ) -> Result<HeartbeatOutcome, WireError> {
        let mut group = Group::default();
        let outcome = group.heartbeat(group_id, request, partitions, now)?;
        if !group.members.is_empty() {
            self.check_room(group_id, limits)?;
            self.by_id.insert(group_id.to_string(), group);
            self.settle(group_id, limits);
        }
        Ok(outcome)
    }
}

/// Moves a group's entry in the expiry queue to `deadline` (`None`: out of it).
fn reschedule(
    expiry: &mut BTreeSet<(i64, String)>,
    group_id: &str,
    group: &mut Group,
    deadline: Option<i64>,
) {
    if group.expires_at_ms == deadline {
        return;
    }
    if let Some(at) = group.expires_at_ms.take() {
        let removed = expiry.remove(&(at, group_id.to_string()));
        assert!(removed, "a group's expiry entry is in the queue");
    }
    if let Some(at) = deadline {
        expiry.insert((at, group_id.to_string()));
        group.expires_at_ms = Some(at);
    }
}

fn not_a_member(group_id: &str, member_id: &str) -> WireError {
    let message = format!("member {member_id:?} may not commit for group {group_id:?}; rejoin the group (or commit from outside only while it is empty)");
    WireError::new(ErrorCode::UnknownMemberId, message)
}

fn not_empty(group_id: &str, members: usize) -> WireError {
    WireError::new(
        ErrorCode::GroupNotEmpty,
        format!("group {group_id:?} has {members} active members; stop them first"),
    )
}

pub(super) fn unknown_group(group_id: &str) -> WireError {
    WireError::new(
        ErrorCode::UnknownGroup,
        format!("group {group_id:?} does not exist"),
    )
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

    /// Handles a heartbeat. A heartbeat that would add a group to a shard
    /// holding `groups_per_shard_max` is refused.
    ///
    /// # Errors
    /// As [`Group::heartbeat`]; `Busy` when the shard has no room for a new group.
    pub fn heartbeat(
        &self,
        group_id: &str,
        request: Heartbeat,
        partitions: &PartitionCounts,
        limits: &GroupLimits,
        now: Instant,
        now_ms: i64,
    ) -> Result<HeartbeatOutcome, WireError> {
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.by_id.get_mut(group_id) else {
            return groups.heartbeat_new(group_id, request, partitions, limits, now);
        };
        let had_members = !group.members.is_empty();
        let outcome = group.heartbeat(group_id, request, partitions, now);
        if had_members && group.members.is_empty() {
            group.last_used_ms = group.last_used_ms.max(now_ms);
        }
        groups.settle(group_id, limits);
        outcome
    }

    /// Removes members whose session expired, looking only at groups with
    /// members; returns (group, member) of each.
    pub fn expire_sessions(
        &self,
        partitions: &PartitionCounts,
        limits: &GroupLimits,
        now: Instant,
        now_ms: i64,
    ) -> Vec<(String, String)> {
        let mut groups = self.groups.borrow_mut();
        let mut expired = Vec::new();
        let mut emptied = Vec::new();
        let Groups { by_id, active, .. } = &mut *groups;
        for group_id in active.iter() {
            let group = by_id.get_mut(group_id).expect("active groups are known");
            for member in group.expire(partitions, now) {
                expired.push((group_id.clone(), member));
            }
            if group.members.is_empty() {
                group.last_used_ms = group.last_used_ms.max(now_ms);
                emptied.push(group_id.clone());
            }
        }
        for group_id in emptied {
            groups.settle(&group_id, limits);
        }
        expired
    }

    /// Schedules the expiry of the groups replayed since the last call.
    pub fn schedule_replayed(&self, limits: &GroupLimits) {
        let mut groups = self.groups.borrow_mut();
        if groups.replayed.is_empty() {
            return;
        }
        for (group_id, replayed_at_ms) in std::mem::take(&mut groups.replayed) {
            if let Some(group) = groups.by_id.get_mut(&group_id) {
                let not_before = replayed_at_ms.saturating_add(limits.replay_grace_ms());
                group.expiry_not_before_ms = group.expiry_not_before_ms.max(not_before);
                groups.settle(&group_id, limits);
            }
        }
        if groups.by_id.len() > limits.groups_per_shard_max {
            tracing::warn!(
                groups = groups.by_id.len(),
                groups_per_shard_max = limits.groups_per_shard_max,
                "this shard holds more groups than groups-per-shard-max; new groups are refused until enough expire"
            );
        }
    }

    /// Marks up to `count_max` empty groups whose retention passed as being
    /// deleted and returns them; the caller appends their deletion and ends
    /// it with [`Coordinator::end_delete`].
    pub fn take_expired(&self, now_ms: i64, count_max: usize) -> Vec<String> {
        let mut groups = self.groups.borrow_mut();
        let mut due = Vec::new();
        while due.len() < count_max {
            let Some((at, _)) = groups.expiry.first() else {
                break;
            };
            if *at > now_ms {
                break;
            }
            let (_, group_id) = groups
                .expiry
                .pop_first()
                .expect("the queue has a first entry");
            let group = groups
                .by_id
                .get_mut(&group_id)
                .expect("queued groups are known");
            group.expires_at_ms = None;
            assert!(group.members.is_empty(), "only empty groups are queued");
            assert!(!group.deleting, "a group being deleted is not queued");
            assert!(
                group.persists_in_flight == 0,
                "a group with commits in flight is not queued"
            );
            group.deleting = true;
            due.push(group_id);
        }
        due
    }

    /// Starts a commit or reset; end it with [`Coordinator::end_persist`].
    ///
    /// # Errors
    /// `UnknownMemberId` for a committer that is not a member (or an
    /// outside commit to a group with members), `GroupNotEmpty` for a reset
    /// of a group with members, `Busy` while the group is being deleted or
    /// when a new group does not fit.
    pub fn begin_persist(
        &self,
        group_id: &str,
        writer: Writer<'_>,
        limits: &GroupLimits,
    ) -> Result<(), WireError> {
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.by_id.get_mut(group_id) else {
            if let Writer::Member(member_id) = writer {
                if !member_id.is_empty() {
                    return Err(not_a_member(group_id, member_id));
                }
            }
            groups.check_room(group_id, limits)?;
            let mut group = Group::default();
            group.persists_in_flight = 1;
            groups.by_id.insert(group_id.to_string(), group);
            return Ok(());
        };
        match writer {
            Writer::Member("") if !group.members.is_empty() => {
                return Err(not_a_member(group_id, ""));
            }
            Writer::Member(member_id)
                if !member_id.is_empty() && !group.members.contains_key(member_id) =>
            {
                return Err(not_a_member(group_id, member_id));
            }
            Writer::Reset if !group.members.is_empty() => {
                return Err(not_empty(group_id, group.members.len()));
            }
            _ => {}
        }
        if group.deleting {
            let message = format!("group {group_id:?} is being deleted; retry");
            return Err(WireError::new(ErrorCode::Busy, message));
        }
        group.persists_in_flight += 1;
        groups.settle(group_id, limits);
        Ok(())
    }

    /// Ends a commit or reset: records `commits` once durable (`None`: it failed).
    pub fn end_persist(
        &self,
        group_id: &str,
        commits: Option<&[(TopicPartition, i64)]>,
        now_ms: i64,
        limits: &GroupLimits,
    ) {
        let mut groups = self.groups.borrow_mut();
        let group = groups
            .by_id
            .get_mut(group_id)
            .expect("a group with commits in flight is kept");
        assert!(
            group.persists_in_flight > 0,
            "end_persist follows begin_persist"
        );
        group.persists_in_flight -= 1;
        if let Some(commits) = commits {
            for (tp, offset) in commits {
                group.committed.insert(tp.clone(), *offset);
            }
            group.last_used_ms = group.last_used_ms.max(now_ms);
        }
        groups.settle(group_id, limits);
    }

    /// Starts the deletion of an empty group; end it with [`Coordinator::end_delete`].
    ///
    /// # Errors
    /// `UnknownGroup`, `GroupNotEmpty`, `Busy` while commits of the group are
    /// being written or it is already being deleted.
    pub fn begin_delete(&self, group_id: &str, limits: &GroupLimits) -> Result<(), WireError> {
        let mut groups = self.groups.borrow_mut();
        let group = groups
            .by_id
            .get_mut(group_id)
            .ok_or_else(|| unknown_group(group_id))?;
        if !group.members.is_empty() {
            return Err(not_empty(group_id, group.members.len()));
        }
        if group.deleting || group.persists_in_flight > 0 {
            let message = format!("offsets of group {group_id:?} are being written; retry");
            return Err(WireError::new(ErrorCode::Busy, message));
        }
        group.deleting = true;
        groups.settle(group_id, limits);
        Ok(())
    }

    /// Ends a deletion: once durable, the group's offsets are gone (and the
    /// group, unless members joined meanwhile); after a failure the group
    /// stays and does not expire before `retry_at_ms`.
    pub fn end_delete(
        &self,
        group_id: &str,
        durable: bool,
        retry_at_ms: i64,
        limits: &GroupLimits,
    ) {
        let mut groups = self.groups.borrow_mut();
        let group = groups
            .by_id
            .get_mut(group_id)
            .expect("a group being deleted is kept");
        assert!(
            group.deleting,
            "end_delete follows begin_delete or take_expired"
        );
        group.deleting = false;
        if durable {
            group.committed.clear();
        } else {
            group.expiry_not_before_ms = group.expiry_not_before_ms.max(retry_at_ms);
        }
        groups.settle(group_id, limits);
    }

    /// Applies one record of `__offsets`, replayed at `replayed_at_ms`.
    pub(super) fn apply_replayed(&self, event: Event, replayed_at_ms: i64) {
        let mut groups = self.groups.borrow_mut();
        match event {
            Event::Commit {
                group: group_id,
                tp,
                offset,
                timestamp_ms,
            } => {
                let known = groups.by_id.contains_key(&group_id);
                let group = groups.by_id.entry(group_id.clone()).or_default();
                group.committed.insert(tp, offset);
                group.last_used_ms = group.last_used_ms.max(timestamp_ms);
                if !known {
                    groups.replayed.push((group_id, replayed_at_ms));
                }
            }
            Event::Delete { group: group_id } => {
                let Groups { by_id, expiry, .. } = &mut *groups;
                let Some(group) = by_id.get_mut(&group_id) else {
                    return;
                };
                // Members may have joined while the partition was replaying
                // (its metadata is already here): a deletion removes offsets.
                group.committed.clear();
                if group.members.is_empty() {
                    reschedule(expiry, &group_id, group, None);
                    by_id.remove(&group_id);
                }
            }
        }
    }

    /// The committed offsets of `group_id` (of `wanted`, or all).
    pub fn committed(
        &self,
        group_id: &str,
        wanted: Option<&[TopicPartition]>,
    ) -> Vec<(TopicPartition, i64)> {
        let groups = self.groups.borrow();
        let Some(group) = groups.by_id.get(group_id) else {
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
            .by_id
            .iter()
            .map(|(id, g)| (id.clone(), g.state(), g.members.len() as u32))
            .collect()
    }

    /// Every committed offset here, for lag metrics: (group, partition, offset).
    pub fn all_commits(&self) -> Vec<(String, TopicPartition, i64)> {
        let groups = self.groups.borrow();
        groups
            .by_id
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
            .by_id
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

    /// How many groups this shard holds.
    pub fn group_count(&self) -> usize {
        self.groups.borrow().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: GroupLimits = GroupLimits {
        groups_per_shard_max: 2,
        group_retention_ms: 10_000,
    };

    fn counts() -> PartitionCounts {
        PartitionCounts {
            revision: 1,
            topics: [("t".to_string(), 2)].into(),
        }
    }

    fn beat(member_id: &str, member_epoch: i32) -> Heartbeat {
        Heartbeat {
            member_id: member_id.into(),
            member_epoch,
            topics: Some(["t".to_string()].into()),
            owned: BTreeSet::new(),
            session_timeout_ms: 1_000,
            assignor: String::new(),
        }
    }

    /// Joins `group_id` with one member and returns its id.
    fn join(coordinator: &Coordinator, group_id: &str, now_ms: i64) -> String {
        let outcome = coordinator
            .heartbeat(
                group_id,
                beat("", 0),
                &counts(),
                &LIMITS,
                Instant::now(),
                now_ms,
            )
            .unwrap();
        outcome.member_id
    }

    fn leave(coordinator: &Coordinator, group_id: &str, member_id: &str, now_ms: i64) {
        let beat = beat(member_id, -1);
        let outcome =
            coordinator.heartbeat(group_id, beat, &counts(), &LIMITS, Instant::now(), now_ms);
        assert_eq!(outcome.unwrap().member_epoch, -1);
    }

    fn commit(coordinator: &Coordinator, group_id: &str, member_id: &str, now_ms: i64) {
        coordinator
            .begin_persist(group_id, Writer::Member(member_id), &LIMITS)
            .unwrap();
        let commits = [(("t".to_string(), 0), 7)];
        coordinator.end_persist(group_id, Some(&commits), now_ms, &LIMITS);
    }

    #[test]
    fn groups_beyond_the_limit_are_refused_and_unstored_empty_ones_are_forgotten() {
        let coordinator = Coordinator::default();
        let _a = join(&coordinator, "g1", 0);
        let b = join(&coordinator, "g2", 0);
        assert_eq!(coordinator.group_count(), 2);
        let refused =
            coordinator.heartbeat("g3", beat("", 0), &counts(), &LIMITS, Instant::now(), 0);
        assert_eq!(refused.unwrap_err().code, ErrorCode::Busy);
        let refused = coordinator.begin_persist("g3", Writer::Member(""), &LIMITS);
        assert_eq!(refused.unwrap_err().code, ErrorCode::Busy);
        let stale =
            coordinator.heartbeat("g3", beat("x", 4), &counts(), &LIMITS, Instant::now(), 0);
        assert_eq!(stale.unwrap_err().code, ErrorCode::UnknownMemberId);
        leave(&coordinator, "g3", "x", 0);
        assert_eq!(
            coordinator.group_count(),
            2,
            "heartbeats that join nobody create no group"
        );
        leave(&coordinator, "g2", &b, 0);
        assert_eq!(
            coordinator.group_count(),
            1,
            "g2 had no offsets: forgotten at once"
        );
        join(&coordinator, "g3", 0);
        assert_eq!(coordinator.group_count(), 2);
    }

    #[test]
    fn an_empty_group_expires_its_retention_after_its_last_use() {
        let coordinator = Coordinator::default();
        let a = join(&coordinator, "g", 0);
        commit(&coordinator, "g", &a, 1_000);
        assert!(
            coordinator.take_expired(i64::MAX, 10).is_empty(),
            "members keep it"
        );
        leave(&coordinator, "g", &a, 5_000);
        assert!(coordinator.take_expired(14_999, 10).is_empty());
        commit(&coordinator, "g", "", 8_000);
        assert!(
            coordinator.take_expired(17_999, 10).is_empty(),
            "a commit is a use"
        );
        let again = join(&coordinator, "g", 9_000);
        leave(&coordinator, "g", &again, 9_500);
        assert!(
            coordinator.take_expired(19_499, 10).is_empty(),
            "so is a member leaving"
        );
        assert_eq!(coordinator.take_expired(19_500, 10), vec!["g".to_string()]);
        let refused = coordinator.begin_persist("g", Writer::Member(""), &LIMITS);
        assert_eq!(
            refused.unwrap_err().code,
            ErrorCode::Busy,
            "no commit while it is deleted"
        );
        coordinator.end_delete("g", true, 0, &LIMITS);
        assert_eq!(coordinator.group_count(), 0);
        assert_eq!(coordinator.committed("g", None), vec![]);
    }

    #[test]
    fn a_group_that_empties_by_session_expiry_is_queued_from_then() {
        let coordinator = Coordinator::default();
        let a = join(&coordinator, "g", 0);
        commit(&coordinator, "g", &a, 0);
        let later = Instant::now() + Duration::from_secs(5);
        let expired = coordinator.expire_sessions(&counts(), &LIMITS, later, 3_000);
        assert_eq!(expired, vec![("g".to_string(), a)]);
        assert!(coordinator.take_expired(12_999, 10).is_empty());
        assert_eq!(coordinator.take_expired(13_000, 10), vec!["g".to_string()]);
    }

    #[test]
    fn a_replayed_group_expires_from_its_last_commit_after_a_grace() {
        let limits = GroupLimits {
            groups_per_shard_max: 10,
            group_retention_ms: 600_000,
        };
        let coordinator = Coordinator::default();
        let commit_at = |group: &str, timestamp_ms| Event::Commit {
            group: group.into(),
            tp: ("t".into(), 0),
            offset: 1,
            timestamp_ms,
        };
        let replayed_at_ms = 1_000_000_000;
        coordinator.apply_replayed(commit_at("old", 0), replayed_at_ms);
        coordinator.apply_replayed(
            commit_at("recent", replayed_at_ms - 100_000),
            replayed_at_ms,
        );
        coordinator.apply_replayed(commit_at("gone", 0), replayed_at_ms);
        coordinator.apply_replayed(
            Event::Delete {
                group: "gone".into(),
            },
            replayed_at_ms,
        );
        coordinator.schedule_replayed(&limits);
        assert_eq!(coordinator.group_count(), 2);
        // The grace is the longest session timeout, 300 s.
        assert!(
            coordinator
                .take_expired(replayed_at_ms + 299_999, 10)
                .is_empty(),
            "old's retention passed before the restart, but its members get a grace to rejoin"
        );
        let due = coordinator.take_expired(replayed_at_ms + 300_000, 10);
        assert_eq!(due, vec!["old".to_string()]);
        assert!(coordinator
            .take_expired(replayed_at_ms + 499_999, 10)
            .is_empty());
        let due = coordinator.take_expired(replayed_at_ms + 500_000, 10);
        assert_eq!(
            due,
            vec!["recent".to_string()],
            "its last commit + the retention"
        );
    }

    #[test]
    fn a_deletion_waits_for_commits_in_flight_and_a_failed_one_is_retried_later() {
        let coordinator = Coordinator::default();
        commit(&coordinator, "g", "", 0);
        coordinator
            .begin_persist("g", Writer::Reset, &LIMITS)
            .unwrap();
        let refused = coordinator.begin_delete("g", &LIMITS);
        assert_eq!(refused.unwrap_err().code, ErrorCode::Busy);
        assert!(
            coordinator.take_expired(i64::MAX, 10).is_empty(),
            "a commit is in flight"
        );
        coordinator.end_persist("g", None, 0, &LIMITS);
        coordinator.begin_delete("g", &LIMITS).unwrap();
        coordinator.end_delete("g", false, 50_000, &LIMITS);
        assert_eq!(
            coordinator.committed("g", None).len(),
            1,
            "a failed deletion keeps the offsets"
        );
        assert!(coordinator.take_expired(49_999, 10).is_empty());
        assert_eq!(coordinator.take_expired(50_000, 10), vec!["g".to_string()]);
    }

    #[test]
    fn a_reset_or_outside_commit_is_refused_while_the_group_has_members() {
        let coordinator = Coordinator::default();
        let a = join(&coordinator, "g", 0);
        let reset = coordinator.begin_persist("g", Writer::Reset, &LIMITS);
        assert_eq!(reset.unwrap_err().code, ErrorCode::GroupNotEmpty);
        let outside = coordinator.begin_persist("g", Writer::Member(""), &LIMITS);
        assert_eq!(outside.unwrap_err().code, ErrorCode::UnknownMemberId);
        let stranger = coordinator.begin_persist("g", Writer::Member("x"), &LIMITS);
        assert_eq!(stranger.unwrap_err().code, ErrorCode::UnknownMemberId);
        let unknown = coordinator.begin_persist("h", Writer::Member("x"), &LIMITS);
        assert_eq!(unknown.unwrap_err().code, ErrorCode::UnknownMemberId);
        assert_eq!(coordinator.group_count(), 1);
        commit(&coordinator, "g", &a, 0);
        let delete = coordinator.begin_delete("g", &LIMITS);
        assert_eq!(delete.unwrap_err().code, ErrorCode::GroupNotEmpty);
    }
}
