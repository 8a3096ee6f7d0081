//! A partition's replication state on its owning shard: its role, the
//! high watermark, and, while this broker leads, each follower's progress.
//!
//! ```text
//!  leader:   high_watermark = max(previous, min(own durable end, end of every ISR follower))
//!  follower: high_watermark = min(leader's high watermark, own durable end)
//!  single:   high_watermark = the log's durable end (one-node broker, or no other replica)
//! ```
//!
//! A follower's end is the fetch offset of its last replica fetch: it
//! fetches from there only once everything below is durable under its own
//! flush policy, so the fetch is its acknowledgement. The ISR counted is
//! the one the controller committed (this shard's metadata copy): a shrink
//! counts only once committed, so a follower dropped from the ISR has
//! everything below the high watermark until it is out, and one that
//! joins was caught up when the leader proposed it. Consumers read below
//! the high watermark; `acks=all` produces resolve once it passes them.
//!
//! Concurrency contract: owned by the partition's shard; `Cell`/`RefCell`
//! steps between awaits, no borrow held across one.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use crate::cluster::state::BrokerId;

/// The partition's role on this broker, from the metadata copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The only replica (a one-node broker, or replication factor 1).
    Single,
    /// This broker leads it, at `leader_epoch`, with this committed ISR.
    Leader {
        /// This broker.
        me: BrokerId,
        /// The leader epoch in force.
        leader_epoch: u64,
        /// The committed ISR, this broker included (shared: a role is
        /// cloned on every replica fetch).
        isr: Rc<[BrokerId]>,
        /// Every replica's broker.
        replicas: Rc<[BrokerId]>,
    },
    /// Another broker leads it (or none does now).
    Follower {
        /// The leader, if any.
        leader: Option<BrokerId>,
        /// The leader epoch in force.
        leader_epoch: u64,
    },
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
pub struct FollowerProgress {
    /// The fetch offset of its last replica fetch: everything below is on its disk.
    pub log_end_offset: u64,
    /// The last moment it was known to be caught up with the leader's end.
    pub last_caught_up: Instant,
    /// When its last fetch came, and the leader's end then.
    last_fetch: Instant,
    leader_end_at_last_fetch: u64,
}

/// The partition's replication state.
#[derive(Debug)]
pub struct ReplicaState {
    role: RefCell<Role>,
    high_watermark: Cell<u64>,
    followers: RefCell<BTreeMap<BrokerId, FollowerProgress>>,
    /// Set while an ISR change this leader proposed is in flight.
    isr_change_in_flight: Cell<bool>,
    /// ISR changes seen while leading (counters, for metrics).
    isr_shrinks: Cell<u64>,
    isr_expands: Cell<u64>,
}

impl ReplicaState {
    /// A single replica whose high watermark starts at `durable_end`.
    pub fn new(durable_end: u64) -> ReplicaState {
        ReplicaState {
            role: RefCell::new(Role::Single),
            high_watermark: Cell::new(durable_end),
            followers: RefCell::new(BTreeMap::new()),
            isr_change_in_flight: Cell::new(false),
            isr_shrinks: Cell::new(0),
            isr_expands: Cell::new(0),
        }
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// True while this broker leads the partition (or is its only replica).
    pub fn leads(&self) -> bool {
        matches!(*self.role.borrow(), Role::Single | Role::Leader { .. })
    }

    /// Adopts the role the metadata names. A new leadership starts with
    /// every ISR follower counted as caught up now (it gets a whole
    /// `replica-lag-time-max-ms` to show it), and at no known end.
    pub fn set_role(&self, role: Role) {
        let mut current = self.role.borrow_mut();
        if *current == role {
            return;
        }
        let new_leadership = match (&*current, &role) {
            (
                Role::Leader {
                    leader_epoch: a, ..
                },
                Role::Leader {
                    leader_epoch: b, ..
                },
            ) => a != b,
            (_, Role::Leader { .. }) => true,
            _ => false,
        };
        if new_leadership {
            self.followers.borrow_mut().clear();
        }
        if let (Role::Leader { isr: before, .. }, Role::Leader { isr: after, .. }) =
            (&*current, &role)
        {
            if after.len() < before.len() {
                self.isr_shrinks.set(self.isr_shrinks.get() + 1);
            } else if after.len() > before.len() {
                self.isr_expands.set(self.isr_expands.get() + 1);
            }
        }
        if let Role::Leader { isr, me, .. } = &role {
            let now = Instant::now();
            let mut followers = self.followers.borrow_mut();
            for broker in isr.iter().filter(|b| *b != me) {
                followers.entry(*broker).or_insert(FollowerProgress {
                    log_end_offset: 0,
                    last_caught_up: now,
                    last_fetch: now,
                    leader_end_at_last_fetch: 0,
                });
            }
        }
        *current = role;
    }

    /// The high watermark, given the log's durable end now: offsets below
    /// it are on every ISR member. Never goes back while the role lasts.
    pub fn high_watermark(&self, durable_end: u64) -> u64 {
        let computed = match &*self.role.borrow() {
            Role::Single => durable_end,
            Role::Leader { me, isr, .. } => {
                let followers = self.followers.borrow();
                isr.iter()
                    .filter(|b| *b != me)
                    .map(|b| followers.get(b).map_or(0, |p| p.log_end_offset))
                    .fold(durable_end, u64::min)
            }
            // A follower learns it from its leader (`follower_learned`).
            Role::Follower { .. } => return self.high_watermark.get().min(durable_end),
        };
        let high_watermark = self.high_watermark.get().max(computed).min(durable_end);
        self.high_watermark.set(high_watermark);
        high_watermark
    }

    /// On a follower: the leader said its high watermark is `leader_high_watermark`.
    pub fn follower_learned(&self, leader_high_watermark: u64, durable_end: u64) {
        let high_watermark = leader_high_watermark.min(durable_end);
        self.high_watermark
            .set(self.high_watermark.get().max(high_watermark));
    }

    /// After a truncation to `end`: nothing at or past it is visible.
    pub fn truncated_to(&self, end: u64) {
        self.high_watermark.set(self.high_watermark.get().min(end));
    }

    /// On the leader: `follower` fetched from `fetch_offset` while the
    /// leader's durable end was `leader_end`. Returns its progress.
    pub fn follower_fetched(
        &self,
        follower: BrokerId,
        fetch_offset: u64,
        leader_end: u64,
        now: Instant,
    ) -> FollowerProgress {
        let mut followers = self.followers.borrow_mut();
        let progress = followers.entry(follower).or_insert(FollowerProgress {
            log_end_offset: 0,
            last_caught_up: now,
            last_fetch: now,
            leader_end_at_last_fetch: 0,
        });
        // Kafka's rule: caught up now if it has the leader's whole log; caught
        // up at its previous fetch if it has everything the leader had then.
        if fetch_offset >= leader_end {
            progress.last_caught_up = now;
        } else if fetch_offset >= progress.leader_end_at_last_fetch {
            progress.last_caught_up = progress.last_caught_up.max(progress.last_fetch);
        }
        progress.log_end_offset = fetch_offset;
        progress.last_fetch = now;
        progress.leader_end_at_last_fetch = leader_end;
        *progress
    }

    /// Every follower's progress known to this leader.
    pub fn followers(&self) -> Vec<(BrokerId, FollowerProgress)> {
        self.followers
            .borrow()
            .iter()
            .map(|(b, p)| (*b, *p))
            .collect()
    }

    /// ISR changes seen while leading: (shrinks, expands).
    pub fn isr_changes(&self) -> (u64, u64) {
        (self.isr_shrinks.get(), self.isr_expands.get())
    }

    /// While leading: how many replicas are out of the ISR, and each
    /// follower's durable end as its last fetch showed it (0 before any).
    /// `None` while not leading.
    pub fn leader_view(&self) -> Option<(usize, Vec<(BrokerId, u64)>)> {
        let role = self.role.borrow();
        let Role::Leader {
            me, isr, replicas, ..
        } = &*role
        else {
            return None;
        };
        let followers = self.followers.borrow();
        let ends = replicas
            .iter()
            .filter(|b| *b != me)
            .map(|b| (*b, followers.get(b).map_or(0, |p| p.log_end_offset)))
            .collect();
        Some((replicas.len().saturating_sub(isr.len()), ends))
    }

    /// Claims the right to propose an ISR change; false while one is in flight.
    pub fn begin_isr_change(&self) -> bool {
        !self.isr_change_in_flight.replace(true)
    }

    /// The proposed ISR change settled (either way).
    pub fn end_isr_change(&self) {
        self.isr_change_in_flight.set(false);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn leader(isr: &[u64]) -> Role {
        Role::Leader {
            me: BrokerId(1),
            leader_epoch: 3,
            isr: isr.iter().map(|b| BrokerId(*b)).collect(),
            replicas: [BrokerId(1), BrokerId(2), BrokerId(3)].into(),
        }
    }

    #[test]
    fn the_leaders_high_watermark_is_the_lowest_isr_end_and_never_goes_back() {
        let state = ReplicaState::new(0);
        state.set_role(leader(&[1, 2, 3]));
        let now = Instant::now();
        assert_eq!(state.high_watermark(100), 0, "no follower has fetched yet");
        state.follower_fetched(BrokerId(2), 80, 100, now);
        assert_eq!(state.high_watermark(100), 0, "broker 3 has not fetched");
        state.follower_fetched(BrokerId(3), 60, 100, now);
        assert_eq!(state.high_watermark(100), 60);
        state.follower_fetched(BrokerId(3), 100, 100, now);
        assert_eq!(state.high_watermark(100), 80);
        // Broker 2 leaves the ISR (committed): only 3 counts.
        state.set_role(leader(&[1, 3]));
        assert_eq!(state.high_watermark(100), 100);
        // Broker 2 rejoins behind: the high watermark stays.
        state.set_role(leader(&[1, 2, 3]));
        assert_eq!(state.high_watermark(120), 100);
        // Never above the leader's own durable end.
        state.set_role(leader(&[1]));
        assert_eq!(state.high_watermark(130), 130);
    }

    #[test]
    fn a_follower_sees_the_lower_of_its_end_and_the_leaders_high_watermark() {
        let state = ReplicaState::new(0);
        state.set_role(Role::Follower {
            leader: Some(BrokerId(2)),
            leader_epoch: 1,
        });
        state.follower_learned(50, 40);
        assert_eq!(state.high_watermark(40), 40);
        state.follower_learned(50, 70);
        assert_eq!(state.high_watermark(70), 50);
        state.truncated_to(45);
        assert_eq!(state.high_watermark(70), 45);
    }

    #[test]
    fn a_follower_is_caught_up_when_it_has_what_the_leader_had_at_its_last_fetch() {
        let state = ReplicaState::new(0);
        state.set_role(leader(&[1, 2]));
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let t2 = t0 + Duration::from_secs(2);
        let t3 = t0 + Duration::from_secs(3);
        let p = state.follower_fetched(BrokerId(2), 100, 100, t0);
        assert_eq!(p.last_caught_up, t0);
        // Behind the end now, but it has what the leader had at t0.
        let p = state.follower_fetched(BrokerId(2), 100, 150, t1);
        assert_eq!(p.last_caught_up, t0);
        let p = state.follower_fetched(BrokerId(2), 150, 200, t2);
        assert_eq!(p.last_caught_up, t1);
        // Fell behind what the leader had at t2: no progress.
        let p = state.follower_fetched(BrokerId(2), 180, 260, t3);
        assert_eq!(p.last_caught_up, t1);
    }
}
