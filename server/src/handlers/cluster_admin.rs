//! CreateTopics and DeleteTopics on a clustered broker: proposed to the
//! metadata group from the shard that got them ([`ClusterHandle::propose`],
//! which forwards once to the controller), answered once this shard has
//! applied the revision the command made.
//!
//! ```text
//!  client ─► any broker, any shard ─► check ─► propose ─► (Raft thread ─► controller ─► commit)
//!        ◄── results ◄── wait: this shard's applied revision ≥ the command's ◄── CommandResult
//! ```
//!
//! With no quorum (a majority of voters down) the proposal times out or
//! finds no leader; the answer is the retriable `ControllerUnavailable`.

use std::rc::Rc;
use std::time::Duration;

use shardlog_wire::protocol::fb;

use crate::cluster::raft::{ClusterHandle, ProposeError};
use crate::cluster::state::{
    BrokerLiveness, ClusterCommand, CommandError, CommandOutput, CommandResult, NewTopic,
    TopicOutcome,
};
use crate::error::WireError;
use crate::shard::messages::TopicRequest;
use crate::shard::ShardState;

/// How often a handler looks whether its shard applied a revision.
const APPLIED_POLL_MS: u64 = 5;
/// The longest a handler waits for its shard to apply a committed change.
const APPLIED_WAIT_MS_MAX: u64 = 10_000;

type Results = Vec<(String, Option<WireError>)>;

/// Creates topics through the metadata group.
pub async fn create(
    shard: &Rc<ShardState>,
    cluster: &ClusterHandle,
    topics: Vec<TopicRequest>,
) -> Results {
    let mut results: Vec<(String, Option<WireError>)> = Vec::with_capacity(topics.len());
    let mut proposed = Vec::new();
    for topic in topics {
        match check(shard, &topic) {
            Err(error) => results.push((topic.name, Some(error))),
            Ok((replication_factor, min_insync_replicas)) => {
                results.push((topic.name.clone(), None));
                proposed.push(NewTopic {
                    name: topic.name,
                    partitions: topic.partitions,
                    replication_factor,
                    min_insync_replicas,
                    retention_bytes: topic.retention_bytes,
                    retention_ms: topic.retention_ms,
                    segment_bytes: topic.segment_bytes,
                    internal: false,
                    unclean_leader_election: topic.unclean_leader_election,
                });
            }
        }
    }
    if proposed.is_empty() {
        return results;
    }
    wait_until_registered(shard).await;
    let command = ClusterCommand::CreateTopics { topics: proposed };
    let outcomes = match propose(shard, cluster, command).await {
        Ok(CommandOutput::TopicsCreated(outcomes)) => outcomes.into_iter().map(drop_id).collect(),
        Ok(other) => return fail_pending(results, &mismatch(&other)),
        Err(error) => return fail_pending(results, &error),
    };
    merge(results, outcomes)
}

/// Deletes topics through the metadata group.
pub async fn delete(
    shard: &Rc<ShardState>,
    cluster: &ClusterHandle,
    names: Vec<String>,
) -> Results {
    let results: Results = names.iter().map(|n| (n.clone(), None)).collect();
    let command = ClusterCommand::DeleteTopics { names };
    match propose(shard, cluster, command).await {
        Ok(CommandOutput::TopicsDeleted(outcomes)) => merge(results, outcomes),
        Ok(other) => fail_pending(results, &mismatch(&other)),
        Err(error) => fail_pending(results, &error),
    }
}

fn drop_id<T>(outcome: TopicOutcome<T>) -> TopicOutcome<()> {
    TopicOutcome {
        name: outcome.name,
        result: outcome.result.map(|_| ()),
    }
}

/// What this broker can refuse before asking the group (the group checks
/// the rest, such as replicas against alive brokers); the replication asked for.
fn check(shard: &ShardState, topic: &TopicRequest) -> Result<(u16, u16), WireError> {
    topic.check_name()?;
    topic.check_settings(&shard.config)
}

/// Proposes `command` and waits until this shard applied what it made.
async fn propose(
    shard: &ShardState,
    cluster: &ClusterHandle,
    command: ClusterCommand,
) -> Result<CommandOutput, WireError> {
    let CommandResult { revision, outcome } = cluster
        .propose(command)
        .await
        .map_err(|e| propose_error(&e))?;
    let output = outcome.map_err(|e| command_error(&e))?;
    let mut waited_ms = 0;
    while shard.partitions.applied_revision() < revision && waited_ms < APPLIED_WAIT_MS_MAX {
        glommio::timer::sleep(Duration::from_millis(APPLIED_POLL_MS)).await;
        waited_ms += APPLIED_POLL_MS;
    }
    if shard.partitions.applied_revision() < revision {
        tracing::warn!(
            revision,
            applied = shard.partitions.applied_revision(),
            "a committed change is not applied here yet"
        );
    }
    Ok(output)
}

/// Waits (bounded) until this broker is registered and alive in its copy:
/// placement uses alive brokers only, so a create sent right after the
/// cluster formed would otherwise find none, and fail.
async fn wait_until_registered(shard: &ShardState) {
    let registered = || {
        let metadata = shard.partitions.metadata();
        let view = metadata.cluster.as_ref();
        view.is_some_and(|view| {
            let own = view.brokers.get(&view.broker);
            own.is_some_and(|b| b.liveness == BrokerLiveness::Alive)
        })
    };
    let mut waited_ms = 0;
    while !registered() && waited_ms < APPLIED_WAIT_MS_MAX {
        glommio::timer::sleep(Duration::from_millis(APPLIED_POLL_MS)).await;
        waited_ms += APPLIED_POLL_MS;
    }
}

/// Puts the group's answers into the places of the topics that were proposed.
fn merge(mut results: Results, outcomes: Vec<TopicOutcome<()>>) -> Results {
    let mut outcomes = outcomes.into_iter();
    for (name, error) in results.iter_mut().filter(|(_, e)| e.is_none()) {
        match outcomes.next() {
            Some(outcome) => {
                assert!(outcome.name == *name, "the group answers in request order");
                *error = outcome.result.err().map(|e| command_error(&e));
            }
            None => *error = Some(mismatch(&"fewer answers than topics")),
        }
    }
    results
}

fn fail_pending(mut results: Results, error: &WireError) -> Results {
    for (_, outcome) in results.iter_mut().filter(|(_, e)| e.is_none()) {
        *outcome = Some(error.clone());
    }
    results
}

fn mismatch(answer: &dyn std::fmt::Debug) -> WireError {
    WireError::new(
        fb::ErrorCode::Unknown,
        format!("the metadata group answered with {answer:?}"),
    )
}

/// The wire error of a proposal that has no result.
pub fn propose_error(error: &ProposeError) -> WireError {
    match error {
        ProposeError::ShutDown => WireError::new(fb::ErrorCode::ShuttingDown, error.to_string()),
        e if e.is_retriable() => WireError::new(
            fb::ErrorCode::ControllerUnavailable,
            format!("the cluster's metadata group cannot commit now ({e}); retry when a majority of brokers is up"),
        ),
        e => WireError::new(fb::ErrorCode::Unknown, e.to_string()),
    }
}

/// The wire error of a command the group refused.
fn command_error(error: &CommandError) -> WireError {
    let code = match error {
        CommandError::TopicExists { .. } => fb::ErrorCode::TopicAlreadyExists,
        CommandError::UnknownTopic { .. } | CommandError::UnknownPartition { .. } => {
            fb::ErrorCode::UnknownTopicOrPartition
        }
        CommandError::InvalidTopicName { .. } | CommandError::InternalTopic { .. } => {
            fb::ErrorCode::InvalidTopic
        }
        CommandError::InvalidPartitionCount { .. } => fb::ErrorCode::InvalidPartitions,
        CommandError::DuplicateTopic { .. } => fb::ErrorCode::InvalidRequest,
        CommandError::InvalidReplicationFactor
        | CommandError::ReplicationFactorAboveAliveBrokers { .. }
        | CommandError::InvalidMinInsyncReplicas { .. } => fb::ErrorCode::InvalidReplicationFactor,
        _ => fb::ErrorCode::InvalidConfig,
    };
    WireError::new(code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_quorum_is_retriable_and_refusals_keep_their_codes() {
        for error in [
            ProposeError::NoLeader,
            ProposeError::Timeout { timeout_ms: 10 },
            ProposeError::LeaderUnreachable {
                leader: 1,
                reason: "down".into(),
            },
        ] {
            let wire = propose_error(&error);
            assert_eq!(wire.code, fb::ErrorCode::ControllerUnavailable);
            assert!(wire.code.is_retriable());
            assert!(wire.message.contains("retry"), "{}", wire.message);
        }
        let exists = CommandError::TopicExists { name: "t".into() };
        assert_eq!(
            command_error(&exists).code,
            fb::ErrorCode::TopicAlreadyExists
        );
        let results = vec![
            ("a".to_string(), None),
            ("b".to_string(), Some(mismatch(&1))),
        ];
        let merged = merge(
            results,
            vec![TopicOutcome {
                name: "a".into(),
                result: Err(exists),
            }],
        );
        assert_eq!(
            merged[0].1.as_ref().map(|e| e.code),
            Some(fb::ErrorCode::TopicAlreadyExists)
        );
        assert_eq!(
            merged[1].1.as_ref().map(|e| e.code),
            Some(fb::ErrorCode::Unknown)
        );
    }
}
