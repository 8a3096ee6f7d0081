//! Tests of [`ClusterState::apply`]: one per rule, and a property test over
//! random command sequences for the invariants every state must keep.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn register(state: &mut ClusterState, broker: u64, shards: usize) -> u64 {
    let result = state.apply(ClusterCommand::RegisterBroker {
        broker: BrokerId(broker),
        host: "127.0.0.1".into(),
        port: 9000 + broker as u16,
        shard_ports: (0..shards).map(|s| 10_000 + s as u16).collect(),
        now_ms: 1_000,
    });
    match result.outcome {
        Ok(CommandOutput::BrokerRegistered { broker_epoch }) => broker_epoch,
        other => panic!("registration failed: {other:?}"),
    }
}

fn alive_cluster(brokers: u64) -> ClusterState {
    let mut state = ClusterState::default();
    for broker in 1..=brokers {
        let broker_epoch = register(&mut state, broker, 2);
        let unfenced = state.apply(ClusterCommand::UnfenceBroker {
            broker: BrokerId(broker),
            broker_epoch,
        });
        assert_eq!(unfenced.outcome, Ok(CommandOutput::BrokerUnfenced));
    }
    state
}

fn topic(name: &str, partitions: u32, replication_factor: u16) -> NewTopic {
    NewTopic {
        name: name.into(),
        partitions,
        replication_factor,
        min_insync_replicas: 1,
        retention_bytes: None,
        retention_ms: None,
        segment_bytes: None,
        internal: false,
        unclean_leader_election: false,
    }
}

fn create(state: &mut ClusterState, topics: Vec<NewTopic>) -> Vec<Result<TopicId, CommandError>> {
    match state.apply(ClusterCommand::CreateTopics { topics }).outcome {
        Ok(CommandOutput::TopicsCreated(outcomes)) => {
            outcomes.into_iter().map(|o| o.result).collect()
        }
        other => panic!("{other:?}"),
    }
}

fn epoch_of(state: &ClusterState, broker: u64) -> u64 {
    state.brokers[&BrokerId(broker)].broker_epoch
}

fn fence(state: &mut ClusterState, broker: u64) {
    let broker_epoch = epoch_of(state, broker);
    let result = state.apply(ClusterCommand::FenceBroker {
        broker: BrokerId(broker),
        broker_epoch,
    });
    assert_eq!(result.outcome, Ok(CommandOutput::BrokerFenced));
}

fn elect(state: &mut ClusterState, kind: ElectionKind) -> Vec<Election> {
    let result = state.apply(ClusterCommand::ElectLeaders {
        scope: ElectionScope::All,
        kind,
    });
    match result.outcome {
        Ok(CommandOutput::LeadersElected(elections)) => elections,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_first_cluster_id_wins() {
    let mut state = ClusterState::default();
    let first = state.apply(ClusterCommand::InitCluster {
        cluster_id: "a".into(),
    });
    assert_eq!(first.revision, 1);
    let again = state.apply(ClusterCommand::InitCluster {
        cluster_id: "a".into(),
    });
    assert_eq!(again.revision, 1, "the same id again changes nothing");
    assert!(again.outcome.is_ok());
    let other = state.apply(ClusterCommand::InitCluster {
        cluster_id: "b".into(),
    });
    assert!(matches!(
        other.outcome,
        Err(CommandError::ClusterIdMismatch { .. })
    ));
    assert_eq!(state.cluster_id, "a");
    let empty = state.apply(ClusterCommand::InitCluster {
        cluster_id: String::new(),
    });
    assert_eq!(empty.outcome, Err(CommandError::InvalidClusterId));
}

#[test]
fn brokers_register_fenced_and_commands_name_their_epoch() {
    let mut state = ClusterState::default();
    let epoch = register(&mut state, 1, 2);
    assert_eq!(
        epoch, state.revision,
        "the epoch is the revision the registration made"
    );
    assert_eq!(state.brokers[&BrokerId(1)].liveness, BrokerLiveness::Fenced);
    let stale = state.apply(ClusterCommand::UnfenceBroker {
        broker: BrokerId(1),
        broker_epoch: epoch + 7,
    });
    assert!(
        matches!(stale.outcome, Err(CommandError::StaleBrokerEpoch { current, .. }) if current == epoch)
    );
    let unknown = state.apply(ClusterCommand::BrokerHeartbeat {
        broker: BrokerId(9),
        broker_epoch: 1,
        now_ms: 5,
    });
    assert_eq!(
        unknown.outcome,
        Err(CommandError::UnknownBroker {
            broker: BrokerId(9)
        })
    );
    state.apply(ClusterCommand::UnfenceBroker {
        broker: BrokerId(1),
        broker_epoch: epoch,
    });
    assert_eq!(state.brokers[&BrokerId(1)].liveness, BrokerLiveness::Alive);

    let restarted = register(&mut state, 1, 3);
    assert!(restarted > epoch);
    assert_eq!(
        state.brokers[&BrokerId(1)].liveness,
        BrokerLiveness::Fenced,
        "a restart fences"
    );
    let late = state.apply(ClusterCommand::BrokerHeartbeat {
        broker: BrokerId(1),
        broker_epoch: epoch,
        now_ms: 9_000,
    });
    assert!(
        matches!(late.outcome, Err(CommandError::StaleBrokerEpoch { .. })),
        "the old incarnation's heartbeat"
    );

    let no_shards = state.apply(ClusterCommand::RegisterBroker {
        broker: BrokerId(2),
        host: "h".into(),
        port: 1,
        shard_ports: vec![],
        now_ms: 0,
    });
    assert!(matches!(
        no_shards.outcome,
        Err(CommandError::InvalidBroker { .. })
    ));
}

#[test]
fn heartbeats_only_move_time_forward_and_sessions_expire() {
    let mut state = alive_cluster(2);
    let epoch = epoch_of(&state, 1);
    let beat = |state: &mut ClusterState, now_ms| {
        state.apply(ClusterCommand::BrokerHeartbeat {
            broker: BrokerId(1),
            broker_epoch: epoch,
            now_ms,
        })
    };
    let revision = state.revision;
    assert_eq!(beat(&mut state, 5_000).revision, revision + 1);
    assert_eq!(
        beat(&mut state, 4_000).revision,
        revision + 1,
        "an older clock changes nothing"
    );
    assert_eq!(state.brokers[&BrokerId(1)].last_heartbeat_ms, 5_000);
    // Broker 2 last heard of at 1_000 (its registration).
    assert_eq!(
        state.brokers_past_session(7_000, 3_000),
        vec![(BrokerId(2), epoch_of(&state, 2))]
    );
    assert!(state.brokers_past_session(3_000, 3_000).is_empty());
}

#[test]
fn topics_are_created_one_by_one_and_one_revision_for_all() {
    let mut state = alive_cluster(3);
    let revision = state.revision;
    let mut internal = topic("__offsets", 16, 3);
    internal.internal = true;
    let mut min_isr = topic("m", 1, 2);
    min_isr.min_insync_replicas = 3;
    let results = create(
        &mut state,
        vec![
            topic("a", 3, 3),
            topic("a", 1, 1),
            topic("b", 1, 4),
            internal,
            topic("__x", 1, 1),
            min_isr,
        ],
    );
    assert_eq!(results[0], Ok(TopicId(0)));
    assert!(matches!(
        results[1],
        Err(CommandError::DuplicateTopic { .. })
    ));
    assert_eq!(
        results[2],
        Err(CommandError::ReplicationFactorAboveAliveBrokers {
            replication_factor: 4,
            alive_brokers: 3
        })
    );
    assert!(results[2].as_ref().unwrap_err().is_retriable());
    assert_eq!(results[3], Ok(TopicId(1)));
    assert!(
        matches!(results[4], Err(CommandError::InvalidTopicName { .. })),
        "__ is for internal topics"
    );
    assert!(matches!(
        results[5],
        Err(CommandError::InvalidMinInsyncReplicas { .. })
    ));
    assert_eq!(state.revision, revision + 1);
    let a = &state.topics["a"];
    for partition in &a.partitions {
        assert_eq!(partition.leader, Some(partition.replicas[0].broker));
        let replicas: Vec<BrokerId> = partition.replicas.iter().map(|r| r.broker).collect();
        assert_eq!(partition.isr, replicas, "empty replicas are all in sync");
        assert_eq!(partition.leader_epoch, 0);
    }
    assert!(matches!(
        create(&mut state, vec![topic("a", 1, 1)])[0],
        Err(CommandError::TopicExists { .. })
    ));
    assert!(matches!(
        create(&mut state, vec![topic("z", 0, 1)])[0],
        Err(CommandError::InvalidPartitionCount { .. })
    ));
    assert_eq!(state.revision, revision + 1, "refusals change nothing");
}

#[test]
fn fenced_brokers_get_no_replicas() {
    let mut state = alive_cluster(3);
    fence(&mut state, 2);
    assert!(matches!(
        create(&mut state, vec![topic("a", 1, 3)])[0],
        Err(CommandError::ReplicationFactorAboveAliveBrokers { .. })
    ));
    assert!(create(&mut state, vec![topic("a", 4, 2)])[0].is_ok());
    let replicas = state.topics["a"]
        .partitions
        .iter()
        .flat_map(|p| p.replicas.iter());
    assert!(replicas.into_iter().all(|r| r.broker != BrokerId(2)));
}

#[test]
fn deleting_refuses_internal_and_unknown_topics() {
    let mut state = alive_cluster(1);
    let mut internal = topic("__offsets", 1, 1);
    internal.internal = true;
    create(&mut state, vec![topic("a", 1, 1), internal]);
    let revision = state.revision;
    let result = state.apply(ClusterCommand::DeleteTopics {
        names: vec!["a".into(), "__offsets".into(), "nope".into()],
    });
    let Ok(CommandOutput::TopicsDeleted(outcomes)) = result.outcome else {
        panic!()
    };
    assert_eq!(outcomes[0].result, Ok(()));
    assert!(matches!(
        outcomes[1].result,
        Err(CommandError::InternalTopic { .. })
    ));
    assert!(matches!(
        outcomes[2].result,
        Err(CommandError::UnknownTopic { .. })
    ));
    assert_eq!(result.revision, revision + 1);
    assert!(!state.topics.contains_key("a"));
    let again = create(&mut state, vec![topic("a", 1, 1)]);
    assert_eq!(again[0], Ok(TopicId(2)), "ids are never reused");
}

fn alter_isr(
    state: &mut ClusterState,
    leader: u64,
    leader_epoch: u64,
    isr: &[u64],
) -> CommandResult {
    alter_isr_of(state, "a", 0, leader, leader_epoch, isr)
}

fn alter_isr_of(
    state: &mut ClusterState,
    topic: &str,
    partition: u32,
    leader: u64,
    leader_epoch: u64,
    isr: &[u64],
) -> CommandResult {
    state.apply(ClusterCommand::AlterIsr {
        topic: topic.into(),
        partition,
        leader: BrokerId(leader),
        leader_epoch,
        isr: isr.iter().map(|b| BrokerId(*b)).collect(),
    })
}

/// Every replica of `topic` caught up: each leader adds its followers to the
/// ISR, as replication will once followers hold the leader's log.
fn caught_up(state: &mut ClusterState, topic: &str) {
    let partitions = state.topics[topic].partitions.clone();
    for (index, partition) in partitions.iter().enumerate() {
        let leader = partition.leader.expect("a new partition has a leader");
        let all: Vec<u64> = partition.replicas.iter().map(|r| r.broker.0).collect();
        let grown = alter_isr_of(
            state,
            topic,
            index as u32,
            leader.0,
            partition.leader_epoch,
            &all,
        );
        assert!(grown.outcome.is_ok(), "{grown:?}");
    }
}

#[test]
fn alter_isr_checks_leader_epoch_and_members() {
    let mut state = alive_cluster(3);
    create(&mut state, vec![topic("a", 1, 3)]);
    let p = state.topics["a"].partitions[0].clone();
    let leader = p.leader.unwrap().0;
    let followers: Vec<u64> = p.replicas[1..].iter().map(|r| r.broker.0).collect();

    assert!(matches!(
        alter_isr(&mut state, followers[0], 0, &[followers[0]]).outcome,
        Err(CommandError::NotLeader { .. })
    ));
    assert!(matches!(
        alter_isr(&mut state, leader, 1, &[leader]).outcome,
        Err(CommandError::UnknownLeaderEpoch { .. })
    ));
    assert!(matches!(
        alter_isr(&mut state, leader, 0, &[followers[0]]).outcome,
        Err(CommandError::InvalidIsr { .. })
    ));
    assert!(matches!(
        alter_isr(&mut state, leader, 0, &[leader, leader]).outcome,
        Err(CommandError::InvalidIsr { .. })
    ));
    assert!(matches!(
        alter_isr(&mut state, leader, 0, &[leader, 7]).outcome,
        Err(CommandError::InvalidIsr { .. })
    ));

    let grown = alter_isr(&mut state, leader, 0, &[followers[0], leader]);
    assert_eq!(
        grown.outcome,
        Ok(CommandOutput::IsrAltered { leader_epoch: 0 })
    );
    let isr = &state.topics["a"].partitions[0].isr;
    assert_eq!(
        isr,
        &vec![BrokerId(leader), BrokerId(followers[0])],
        "kept in replica order"
    );

    fence(&mut state, followers[1]);
    let fenced = alter_isr(&mut state, leader, 0, &[leader, followers[0], followers[1]]);
    assert!(
        matches!(fenced.outcome, Err(CommandError::InvalidIsr { .. })),
        "a fenced broker cannot join"
    );

    fence(&mut state, leader);
    elect(&mut state, ElectionKind::Unavailable);
    let deposed = alter_isr(&mut state, leader, 0, &[leader]);
    assert!(
        matches!(
            deposed.outcome,
            Err(CommandError::StaleLeaderEpoch {
                current: 1,
                proposed: 0,
                ..
            })
        ),
        "{deposed:?}"
    );
}

#[test]
fn a_fenced_follower_leaves_the_isr_and_the_leader_keeps_its_epoch() {
    let mut state = alive_cluster(3);
    create(&mut state, vec![topic("a", 1, 3)]);
    assert!(!state.elections_needed(), "all alive, all lead");
    let a = state.topics["a"].partitions[0].clone();
    let leader = a.leader.unwrap();
    let follower = a
        .replicas
        .iter()
        .map(|r| r.broker)
        .find(|b| *b != leader)
        .unwrap();
    fence(&mut state, follower.0);
    assert!(state.elections_needed(), "a fenced broker in an ISR");
    let elections = elect(&mut state, ElectionKind::Unavailable);
    assert_eq!(elections.len(), 1, "{elections:?}");
    let after = &state.topics["a"].partitions[0];
    assert_eq!(after.leader, Some(leader), "the leader stays");
    assert_eq!(
        after.leader_epoch, a.leader_epoch,
        "no new leader, no new epoch"
    );
    assert!(!after.isr.contains(&follower), "{after:?}");
    assert_eq!(after.isr.len(), 2);
    assert!(!state.elections_needed());
    // The leader goes too: the last ISR member leads, at a new epoch.
    fence(&mut state, leader.0);
    assert!(state.elections_needed());
    elect(&mut state, ElectionKind::Unavailable);
    let after = &state.topics["a"].partitions[0];
    assert_ne!(after.leader, Some(leader));
    assert_eq!(after.leader_epoch, a.leader_epoch + 1);
    assert_eq!(after.isr, vec![after.leader.unwrap()]);
}

#[test]
fn elections_pick_the_next_in_sync_replica() {
    let mut state = alive_cluster(3);
    create(&mut state, vec![topic("a", 1, 3)]);
    caught_up(&mut state, "a");
    assert!(
        elect(&mut state, ElectionKind::Unavailable).is_empty(),
        "nothing to do while all lead"
    );

    let a = state.topics["a"].partitions[0].clone();
    let old_leader = a.leader.unwrap();
    fence(&mut state, old_leader.0);
    let elections = elect(&mut state, ElectionKind::Unavailable);
    let a_now = &state.topics["a"].partitions[0];
    assert_eq!(
        a_now.leader,
        Some(a.replicas[1].broker),
        "the next in-sync replica in replica order"
    );
    assert_eq!(a_now.leader_epoch, 1);
    assert!(
        !a_now.isr.contains(&old_leader),
        "the fenced leader leaves the ISR"
    );
    assert!(elections
        .iter()
        .any(|e| e.partition.topic == "a" && !e.unclean));
}

#[test]
fn unclean_election_only_where_the_topic_allows_it() {
    let mut state = alive_cluster(2);
    let mut unclean = topic("u", 1, 2);
    unclean.unclean_leader_election = true;
    create(&mut state, vec![topic("c", 1, 2), unclean]);
    let leader = |state: &ClusterState, name: &str| state.topics[name].partitions[0].leader;
    assert_eq!(leader(&state, "c"), Some(BrokerId(1)));
    assert_eq!(leader(&state, "u"), Some(BrokerId(2)), "leaders spread");
    for (name, broker) in [("c", 1), ("u", 2)] {
        let shrink = state.apply(ClusterCommand::AlterIsr {
            topic: name.into(),
            partition: 0,
            leader: BrokerId(broker),
            leader_epoch: 0,
            isr: vec![BrokerId(broker)],
        });
        assert!(shrink.outcome.is_ok(), "{shrink:?}");
    }

    fence(&mut state, 1);
    let elections = elect(&mut state, ElectionKind::Unavailable);
    assert_eq!(elections.len(), 1);
    let c = &state.topics["c"].partitions[0];
    assert_eq!(
        c.leader, None,
        "no clean candidate and unclean not allowed: no leader"
    );
    assert_eq!(c.isr, vec![BrokerId(1)], "the ISR keeps its last member");
    assert_eq!(c.leader_epoch, 1);

    let epoch = epoch_of(&state, 1);
    state.apply(ClusterCommand::UnfenceBroker {
        broker: BrokerId(1),
        broker_epoch: epoch,
    });
    fence(&mut state, 2);
    let elections = elect(&mut state, ElectionKind::Unavailable);
    assert_eq!(
        leader(&state, "c"),
        Some(BrokerId(1)),
        "the last ISR member leads again"
    );
    let u = &state.topics["u"].partitions[0];
    assert_eq!(
        u.leader,
        Some(BrokerId(1)),
        "unclean: a live replica outside the ISR"
    );
    assert_eq!(u.isr, vec![BrokerId(1)]);
    assert!(elections
        .iter()
        .any(|e| e.partition.topic == "u" && e.unclean));
    assert!(elections
        .iter()
        .any(|e| e.partition.topic == "c" && !e.unclean));
}

#[test]
fn a_returning_isr_member_leads_again_and_preferred_election_moves_back() {
    let mut state = alive_cluster(2);
    create(&mut state, vec![topic("a", 1, 2)]);
    caught_up(&mut state, "a");
    let p = state.topics["a"].partitions[0].clone();
    let (first, second) = (p.replicas[0].broker, p.replicas[1].broker);
    fence(&mut state, first.0);
    elect(&mut state, ElectionKind::Unavailable);
    assert_eq!(state.topics["a"].partitions[0].leader, Some(second));
    // The second leader shrinks the ISR to itself, then it is fenced too.
    alter_isr(&mut state, second.0, 1, &[second.0]);
    fence(&mut state, second.0);
    elect(&mut state, ElectionKind::Unavailable);
    assert_eq!(state.topics["a"].partitions[0].leader, None);
    assert_eq!(state.topics["a"].partitions[0].leader_epoch, 2);

    let epoch = epoch_of(&state, second.0);
    state.apply(ClusterCommand::UnfenceBroker {
        broker: second,
        broker_epoch: epoch,
    });
    elect(&mut state, ElectionKind::Unavailable);
    assert_eq!(state.topics["a"].partitions[0].leader, Some(second));
    assert_eq!(state.topics["a"].partitions[0].leader_epoch, 3);

    // The first replica returns and catches up (the leader adds it back).
    let epoch = epoch_of(&state, first.0);
    state.apply(ClusterCommand::UnfenceBroker {
        broker: first,
        broker_epoch: epoch,
    });
    alter_isr(&mut state, second.0, 3, &[second.0, first.0]);
    assert!(elect(&mut state, ElectionKind::Unavailable).is_empty());
    let moved = elect(&mut state, ElectionKind::Preferred);
    assert_eq!(moved.len(), 1);
    assert_eq!(state.topics["a"].partitions[0].leader, Some(first));
    assert_eq!(state.topics["a"].partitions[0].isr, vec![first, second]);
}

#[test]
fn state_survives_json() {
    let mut state = alive_cluster(3);
    create(&mut state, vec![topic("a", 3, 2)]);
    let json = serde_json::to_vec(&state).unwrap();
    let back: ClusterState = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, state);
}

/// An intent, resolved against the current state so that the interesting
/// commands (right epochs, the real leader) are generated often.
#[derive(Debug, Clone)]
enum Op {
    Register(u64, usize),
    Heartbeat(u64, u64),
    Fence(u64),
    Unfence(u64),
    StaleFence(u64),
    Create(u8, u32, u16, bool),
    Delete(u8),
    ShrinkIsr(u8, u32, usize),
    ExpandIsr(u8, u32),
    StaleAlterIsr(u8, u32),
    Elect(bool),
    Init(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..6, 1usize..4).prop_map(|(b, s)| Op::Register(b, s)),
        (1u64..6, 0u64..10_000).prop_map(|(b, t)| Op::Heartbeat(b, t)),
        (1u64..6).prop_map(Op::Fence),
        (1u64..6).prop_map(Op::Unfence),
        (1u64..6).prop_map(Op::Unfence),
        (1u64..6).prop_map(Op::StaleFence),
        (0u8..4, 1u32..5, 1u16..4, any::<bool>()).prop_map(|(t, p, r, u)| Op::Create(t, p, r, u)),
        (0u8..4).prop_map(Op::Delete),
        (0u8..4, 0u32..5, 0usize..3).prop_map(|(t, p, i)| Op::ShrinkIsr(t, p, i)),
        (0u8..4, 0u32..5).prop_map(|(t, p)| Op::ExpandIsr(t, p)),
        (0u8..4, 0u32..5).prop_map(|(t, p)| Op::StaleAlterIsr(t, p)),
        any::<bool>().prop_map(Op::Elect),
        (0u8..2).prop_map(Op::Init),
    ]
}

fn name(t: u8) -> String {
    format!("t{t}")
}

fn to_command(state: &ClusterState, op: Op) -> ClusterCommand {
    let epoch = |b: u64| {
        state
            .brokers
            .get(&BrokerId(b))
            .map_or(1, |i| i.broker_epoch)
    };
    match op {
        Op::Register(b, shards) => ClusterCommand::RegisterBroker {
            broker: BrokerId(b),
            host: "h".into(),
            port: 1,
            shard_ports: vec![1; shards],
            now_ms: 0,
        },
        Op::Heartbeat(b, now_ms) => ClusterCommand::BrokerHeartbeat {
            broker: BrokerId(b),
            broker_epoch: epoch(b),
            now_ms,
        },
        Op::Fence(b) => ClusterCommand::FenceBroker {
            broker: BrokerId(b),
            broker_epoch: epoch(b),
        },
        Op::Unfence(b) => ClusterCommand::UnfenceBroker {
            broker: BrokerId(b),
            broker_epoch: epoch(b),
        },
        Op::StaleFence(b) => ClusterCommand::FenceBroker {
            broker: BrokerId(b),
            broker_epoch: epoch(b).saturating_sub(1),
        },
        Op::Create(t, partitions, rf, unclean) => {
            let mut new = topic(&name(t), partitions, rf);
            new.unclean_leader_election = unclean;
            ClusterCommand::CreateTopics { topics: vec![new] }
        }
        Op::Delete(t) => ClusterCommand::DeleteTopics {
            names: vec![name(t)],
        },
        Op::ShrinkIsr(..) | Op::ExpandIsr(..) | Op::StaleAlterIsr(..) => isr_command(state, op),
        Op::Elect(preferred) => ClusterCommand::ElectLeaders {
            scope: ElectionScope::All,
            kind: if preferred {
                ElectionKind::Preferred
            } else {
                ElectionKind::Unavailable
            },
        },
        Op::Init(id) => ClusterCommand::InitCluster {
            cluster_id: format!("c{id}"),
        },
    }
}

/// An AlterIsr from the partition's real leader (right or stale epoch), or a no-op.
fn isr_command(state: &ClusterState, op: Op) -> ClusterCommand {
    let (t, p) = match op {
        Op::ShrinkIsr(t, p, _) | Op::ExpandIsr(t, p) | Op::StaleAlterIsr(t, p) => (t, p),
        other => unreachable!("{other:?}"),
    };
    let Some(partition) = state
        .topics
        .get(&name(t))
        .and_then(|s| s.partitions.get(p as usize))
    else {
        return ClusterCommand::DeleteTopics { names: vec![] };
    };
    let (mut leader_epoch, mut isr) = (partition.leader_epoch, partition.isr.clone());
    match op {
        Op::ShrinkIsr(_, _, drop_index) if isr.len() > 1 => {
            let drop_at = drop_index % isr.len();
            if Some(isr[drop_at]) != partition.leader {
                isr.remove(drop_at);
            }
        }
        Op::ExpandIsr(..) => isr = partition.replicas.iter().map(|r| r.broker).collect(),
        Op::StaleAlterIsr(..) => leader_epoch = leader_epoch.wrapping_sub(1),
        _ => {}
    }
    ClusterCommand::AlterIsr {
        topic: name(t),
        partition: p,
        leader: partition.leader.unwrap_or(BrokerId(1)),
        leader_epoch,
        isr,
    }
}

/// What every state keeps, whatever was applied.
fn check_invariants(state: &ClusterState) -> Result<(), TestCaseError> {
    let mut ids = std::collections::BTreeSet::new();
    for (name, topic) in &state.topics {
        prop_assert!(topic.id.0 < state.next_topic_id, "{name}");
        prop_assert!(ids.insert(topic.id), "topic ids are unique");
        for p in &topic.partitions {
            prop_assert_eq!(p.replicas.len(), usize::from(topic.replication_factor));
            let mut brokers: Vec<BrokerId> = p.replicas.iter().map(|r| r.broker).collect();
            brokers.sort();
            brokers.dedup();
            prop_assert_eq!(
                brokers.len(),
                p.replicas.len(),
                "replicas on distinct brokers"
            );
            prop_assert!(!p.isr.is_empty(), "the ISR is never empty");
            let in_order: Vec<BrokerId> = p
                .replicas
                .iter()
                .map(|r| r.broker)
                .filter(|b| p.isr.contains(b))
                .collect();
            prop_assert_eq!(
                &in_order,
                &p.isr,
                "the ISR is distinct replicas in replica order"
            );
            if let Some(leader) = p.leader {
                prop_assert!(p.isr.contains(&leader), "the leader is in sync");
            }
        }
    }
    for info in state.brokers.values() {
        prop_assert!(info.broker_epoch <= state.revision);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Over random command sequences: the invariants hold after every
    /// command, the revision grows by one exactly when something changed,
    /// leader epochs never go back, replaying the same commands gives the
    /// same states and answers, and every state survives JSON.
    #[test]
    fn apply_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let mut state = ClusterState::default();
        let mut replay = ClusterState::default();
        let mut epochs: BTreeMap<(TopicId, usize), u64> = BTreeMap::new();
        for op in ops {
            let command = to_command(&state, op);
            let before = state.clone();
            let result = state.apply(command.clone());
            prop_assert_eq!(&replay.apply(command), &result, "deterministic");
            prop_assert_eq!(&replay, &state);
            let mut unrevised = state.clone();
            unrevised.revision = before.revision;
            let changed = unrevised != before;
            prop_assert_eq!(state.revision, before.revision + u64::from(changed));
            prop_assert_eq!(result.revision, state.revision);
            check_invariants(&state)?;
            for topic in state.topics.values() {
                for (i, p) in topic.partitions.iter().enumerate() {
                    let seen = epochs.entry((topic.id, i)).or_insert(p.leader_epoch);
                    prop_assert!(p.leader_epoch >= *seen, "leader epochs never go back");
                    *seen = p.leader_epoch;
                }
            }
            let json = serde_json::to_vec(&state).unwrap();
            prop_assert_eq!(serde_json::from_slice::<ClusterState>(&json).unwrap(), state.clone());
        }
    }
}
