//! Partition leadership in [`ClusterState`]: a leader's ISR changes
//! (`AlterIsr`) and elections (`ElectLeaders`), the same pure transitions
//! as the rest of `apply` (see the parent module's invariants).

use super::*;

impl ClusterState {
    pub(super) fn alter_isr(
        &mut self,
        topic: &str,
        partition: u32,
        leader: BrokerId,
        leader_epoch: u64,
        isr: Vec<BrokerId>,
    ) -> Applied {
        let checked = self
            .partition(topic, partition)
            .and_then(|state| self.check_isr(topic, partition, state, leader, leader_epoch, &isr));
        let in_replica_order = match checked {
            Err(error) => return Applied::unchanged(Err(error)),
            Ok(ordered) => ordered,
        };
        let state = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
            .expect("checked above");
        let output = CommandOutput::IsrAltered { leader_epoch };
        if state.isr == in_replica_order {
            return Applied::unchanged(Ok(output));
        }
        state.isr = in_replica_order;
        Applied::changed(output)
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<&PartitionState, CommandError> {
        let state = self.topics.get(topic).ok_or(CommandError::UnknownTopic {
            name: topic.to_string(),
        })?;
        state
            .partitions
            .get(partition as usize)
            .ok_or(CommandError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })
    }

    /// Checks an AlterIsr; returns the ISR in replica order.
    fn check_isr(
        &self,
        topic: &str,
        partition: u32,
        state: &PartitionState,
        leader: BrokerId,
        leader_epoch: u64,
        isr: &[BrokerId],
    ) -> Result<Vec<BrokerId>, CommandError> {
        let (topic_name, current) = (topic.to_string(), state.leader_epoch);
        if leader_epoch < current {
            let proposed = leader_epoch;
            return Err(CommandError::StaleLeaderEpoch {
                topic: topic_name,
                partition,
                current,
                proposed,
            });
        }
        if leader_epoch > current {
            let proposed = leader_epoch;
            return Err(CommandError::UnknownLeaderEpoch {
                topic: topic_name,
                partition,
                current,
                proposed,
            });
        }
        if state.leader != Some(leader) {
            let current = state.leader;
            return Err(CommandError::NotLeader {
                topic: topic_name,
                partition,
                current,
                proposed: leader,
            });
        }
        let invalid = |reason: String| CommandError::InvalidIsr {
            topic: topic.to_string(),
            partition,
            reason,
        };
        let proposed: BTreeSet<BrokerId> = isr.iter().copied().collect();
        if proposed.len() != isr.len() {
            return Err(invalid("a broker appears twice".into()));
        }
        if !proposed.contains(&leader) {
            return Err(invalid("the ISR must contain the leader".into()));
        }
        for broker in &proposed {
            if !state.replicas.iter().any(|r| r.broker == *broker) {
                return Err(invalid(format!("broker {broker} holds no replica")));
            }
            if !self.is_alive(*broker) {
                return Err(invalid(format!("broker {broker} is not alive")));
            }
        }
        let ordered: Vec<BrokerId> = state
            .replicas
            .iter()
            .map(|r| r.broker)
            .filter(|b| proposed.contains(b))
            .collect();
        assert!(ordered.len() == isr.len());
        Ok(ordered)
    }

    pub(super) fn elect_leaders(&mut self, scope: &ElectionScope, kind: ElectionKind) -> Applied {
        let targets: Vec<TopicPartition> = match scope {
            ElectionScope::All => self
                .topics
                .iter()
                .flat_map(|(name, topic)| {
                    (0..topic.partitions.len() as u32).map(|partition| TopicPartition {
                        topic: name.clone(),
                        partition,
                    })
                })
                .collect(),
            ElectionScope::Partitions(partitions) => partitions.clone(),
        };
        let mut elections = Vec::new();
        for target in targets {
            let Ok(state) = self.partition(&target.topic, target.partition) else {
                continue;
            };
            let unclean_allowed = self.topics[&target.topic].unclean_leader_election;
            let Some((leader, isr, unclean)) = self.choose_leader(state, kind, unclean_allowed)
            else {
                continue;
            };
            let state = self
                .topics
                .get_mut(&target.topic)
                .and_then(|t| t.partitions.get_mut(target.partition as usize))
                .expect("looked up above");
            // The epoch counts leaders: an ISR that only lost fenced
            // followers keeps it, so the leader's fetchers stay valid.
            if state.leader != leader {
                state.leader_epoch += 1;
            }
            state.leader = leader;
            state.isr = isr;
            let leader_epoch = state.leader_epoch;
            elections.push(Election {
                partition: target,
                leader,
                leader_epoch,
                unclean,
            });
        }
        let changed = !elections.is_empty();
        Applied {
            outcome: Ok(CommandOutput::LeadersElected(elections)),
            changed,
        }
    }

    /// The partition's next (leader, ISR, unclean), or `None` to leave it be.
    /// True when `ElectLeaders` of unavailable partitions would change
    /// something: a leader missing or fenced, or a fenced broker in an ISR.
    pub fn elections_needed(&self) -> bool {
        self.topics.values().any(|topic| {
            topic.partitions.iter().any(|state| {
                self.choose_leader(
                    state,
                    ElectionKind::Unavailable,
                    topic.unclean_leader_election,
                )
                .is_some()
            })
        })
    }

    fn choose_leader(
        &self,
        state: &PartitionState,
        kind: ElectionKind,
        unclean_allowed: bool,
    ) -> Option<(Option<BrokerId>, Vec<BrokerId>, bool)> {
        let alive_isr: Vec<BrokerId> = state
            .isr
            .iter()
            .copied()
            .filter(|b| self.is_alive(*b))
            .collect();
        let leader_alive = state.leader.is_some_and(|l| self.is_alive(l));
        if leader_alive {
            let preferred = state.replicas.first().map(|r| r.broker);
            let move_to_preferred = kind == ElectionKind::Preferred
                && preferred != state.leader
                && preferred.is_some_and(|p| alive_isr.contains(&p));
            if move_to_preferred {
                return Some((preferred, alive_isr, false));
            }
            // A fenced follower leaves the ISR at once (as in KRaft), so the
            // leader's high watermark does not wait a whole lag time for it.
            return (alive_isr.len() < state.isr.len()).then_some((state.leader, alive_isr, false));
        }
        // First alive ISR member in replica order (the ISR is kept in that order).
        if let Some(leader) = alive_isr.first().copied() {
            return Some((Some(leader), alive_isr, false));
        }
        if unclean_allowed {
            let alive_replica = state
                .replicas
                .iter()
                .map(|r| r.broker)
                .find(|b| self.is_alive(*b));
            if let Some(leader) = alive_replica {
                return Some((Some(leader), vec![leader], true));
            }
        }
        // No one may lead. Keep the ISR: its last member is where the data is,
        // and it becomes leader again once it is back.
        state
            .leader
            .is_some()
            .then(|| (None, state.isr.clone(), false))
    }
}
