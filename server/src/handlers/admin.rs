//! CreateTopics and DeleteTopics: forwarded to the controller (shard 0),
//! which validates, persists the new metadata, and has every shard adopt it
//! before answering, so a topic is usable on every shard once created. A
//! clustered broker proposes them to its metadata group instead
//! (`cluster_admin.rs`).

use std::rc::Rc;
use std::sync::Arc;

use flatbuffers::FlatBufferBuilder;
use shardlog_wire::protocol::fb;

use super::Outgoing;
use super::{error_parts, finish};
use crate::error::WireError;
use crate::metadata::{ClusterMetadata, TopicMetadata};
use crate::shard::messages::{ControllerCall, TopicRequest};
use crate::shard::{ShardRequest, ShardResponse, ShardState, CONTROLLER_SHARD};

/// Most topics in one request.
const TOPICS_PER_REQUEST_MAX: usize = 1000;

fn optional(value: i64) -> Option<u64> {
    u64::try_from(value).ok()
}

pub fn parse_create(body: fb::CreateTopicsRequest<'_>) -> Result<Vec<TopicRequest>, WireError> {
    let topics = body
        .topics()
        .map(|t| t.iter().collect::<Vec<_>>())
        .unwrap_or_default();
    if topics.len() > TOPICS_PER_REQUEST_MAX {
        return Err(WireError::new(
            fb::ErrorCode::InvalidRequest,
            format!("at most {TOPICS_PER_REQUEST_MAX} topics per request"),
        ));
    }
    Ok(topics
        .into_iter()
        .map(|spec| TopicRequest {
            name: spec.name().unwrap_or_default().to_string(),
            partitions: spec.partitions(),
            retention_bytes: optional(spec.retention_bytes()),
            retention_ms: optional(spec.retention_ms()),
            segment_bytes: optional(spec.segment_bytes()),
            replication_factor: spec.replication_factor(),
            min_insync_replicas: spec.min_insync_replicas(),
            unclean_leader_election: spec.unclean_leader_election(),
        })
        .collect())
}

pub fn parse_delete(body: fb::DeleteTopicsRequest<'_>) -> Vec<String> {
    body.names()
        .map(|n| {
            n.iter()
                .take(TOPICS_PER_REQUEST_MAX)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub async fn create_topics(
    shard: &Rc<ShardState>,
    correlation_id: u32,
    topics: Vec<TopicRequest>,
) -> Outgoing {
    let results = match &shard.cluster {
        Some(cluster) => super::cluster_admin::create(shard, cluster, topics).await,
        None => {
            let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
            let call = ControllerCall::CreateTopics(topics);
            ask_controller(shard, ShardRequest::Controller(call), names).await
        }
    };
    topic_results(correlation_id, &results, true)
}

pub async fn delete_topics(
    shard: &Rc<ShardState>,
    correlation_id: u32,
    names: Vec<String>,
) -> Outgoing {
    let results = match &shard.cluster {
        Some(cluster) => super::cluster_admin::delete(shard, cluster, names).await,
        None => {
            let call = ControllerCall::DeleteTopics(names.clone());
            ask_controller(shard, ShardRequest::Controller(call), names).await
        }
    };
    topic_results(correlation_id, &results, false)
}

/// Sends a topic change to the controller; if it cannot answer, every named topic fails.
async fn ask_controller(
    shard: &Rc<ShardState>,
    request: ShardRequest,
    names: Vec<String>,
) -> Vec<(String, Option<WireError>)> {
    match shard.call(CONTROLLER_SHARD, request).await {
        ShardResponse::Topics(results) => results,
        _ => names
            .into_iter()
            .map(|n| (n, Some(WireError::unavailable())))
            .collect(),
    }
}

fn topic_results(
    correlation_id: u32,
    results: &[(String, Option<WireError>)],
    created: bool,
) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let mut offsets = Vec::with_capacity(results.len());
    for (name, error) in results {
        let name = fbb.create_string(name);
        let (error_code, error_message) = error_parts(&mut fbb, error.as_ref());
        offsets.push(fb::TopicResult::create(
            &mut fbb,
            &fb::TopicResultArgs {
                name: Some(name),
                error_code,
                error_message,
            },
        ));
    }
    let results = fbb.create_vector(&offsets);
    let (body_type, body) = if created {
        let body = fb::CreateTopicsResponse::create(
            &mut fbb,
            &fb::CreateTopicsResponseArgs {
                results: Some(results),
            },
        );
        (
            fb::ResponseBody::CreateTopicsResponse,
            body.as_union_value(),
        )
    } else {
        let body = fb::DeleteTopicsResponse::create(
            &mut fbb,
            &fb::DeleteTopicsResponseArgs {
                results: Some(results),
            },
        );
        (
            fb::ResponseBody::DeleteTopicsResponse,
            body.as_union_value(),
        )
    };
    Outgoing {
        message: finish(fbb, correlation_id, body_type, body),
        payload: Vec::new(),
    }
}

/// On the controller: adds the valid topics to the metadata. If a shard
/// cannot open a new partition, the topics are taken out again, so that
/// metadata never names a partition that does not open.
pub async fn create_on_controller(
    shard: &Rc<ShardState>,
    topics: Vec<TopicRequest>,
) -> Vec<(String, Option<WireError>)> {
    shard
        .with_controller_lock(async {
            let before = shard.partitions.metadata();
            let mut next = (*before).clone();
            let mut results = Vec::with_capacity(topics.len());
            for topic in topics {
                let outcome = check_new_topic(shard, &next, &topic)
                    .or_else(|| check_open_files(shard, &next, topic.partitions));
                if outcome.is_none() {
                    let partition_shards = next.place(topic.partitions, shard.count);
                    let metadata = TopicMetadata {
                        id: next.next_topic_id,
                        partition_shards,
                        retention_bytes: topic.retention_bytes,
                        retention_ms: topic.retention_ms,
                        segment_bytes: topic.segment_bytes,
                        replication: Vec::new(),
                        min_insync_replicas: 1,
                    };
                    next.next_topic_id += 1;
                    next.topics.insert(topic.name.clone(), metadata);
                }
                results.push((topic.name, outcome));
            }
            if let Err(error) = commit(shard, next, &mut results).await {
                let mut undo = (*before).clone();
                undo.revision = shard.partitions.metadata().revision;
                if let Err(undo_error) = publish(shard, undo).await {
                    tracing::error!(%undo_error, "taking back topics that did not open failed");
                }
                let failed = WireError::new(
                    fb::ErrorCode::StorageError,
                    format!("a partition of the topic did not open, so the topic was not created: {error}"),
                );
                for (_, outcome) in results.iter_mut().filter(|(_, e)| e.is_none()) {
                    *outcome = Some(failed.clone());
                }
            }
            results
        })
        .await
}

/// Refuses partitions that would leave a shard unable to hold its active
/// segments open (`open_files_per_shard_max`), before anything is created.
fn check_open_files(
    shard: &ShardState,
    metadata: &ClusterMetadata,
    partitions: u32,
) -> Option<WireError> {
    // Every shard has the same budget; each partition holds its active segment open.
    let budget = shard.config.limits.open_files_per_shard_max;
    let pinned_max = shard.partitions.storage.pinned_files_max();
    let placement = metadata.place(partitions, shard.count);
    let mut owned = metadata.partitions_per_shard(shard.count);
    for placed in placement {
        owned[usize::from(placed)] += 1;
    }
    let (busiest, count) = owned.iter().enumerate().max_by_key(|(_, c)| **c)?;
    (*count > u64::from(pinned_max)).then(|| {
        WireError::new(
            fb::ErrorCode::InvalidPartitions,
            format!(
                "{partitions} more partitions would put {count} on shard {busiest}, but a shard \
                 holds at most {pinned_max} (--open-files-per-shard-max {budget} less the part \
                 kept for reading sealed segments); raise the limit or create fewer partitions"
            ),
        )
    })
}

fn check_new_topic(
    shard: &ShardState,
    metadata: &ClusterMetadata,
    topic: &TopicRequest,
) -> Option<WireError> {
    if let Err(error) = topic.check_name() {
        return Some(error);
    }
    if metadata.topics.contains_key(&topic.name) {
        return Some(WireError::new(
            fb::ErrorCode::TopicAlreadyExists,
            format!("topic {:?} already exists", topic.name),
        ));
    }
    match topic.check_settings(&shard.config) {
        Err(error) => Some(error),
        Ok((factor, _)) if factor > 1 => Some(WireError::new(
            fb::ErrorCode::InvalidReplicationFactor,
            format!(
                "replication factor {factor} needs {factor} alive brokers, but this broker runs \
                 alone; start a cluster with --peers, or create the topic with replication factor 1"
            ),
        )),
        Ok(_) => None,
    }
}

/// On the controller: removes the named topics from the metadata.
pub async fn delete_on_controller(
    shard: &Rc<ShardState>,
    names: Vec<String>,
) -> Vec<(String, Option<WireError>)> {
    shard
        .with_controller_lock(async {
            let mut next = (*shard.partitions.metadata()).clone();
            let mut results = Vec::with_capacity(names.len());
            for name in names {
                if name.starts_with("__") {
                    let error = WireError::new(
                        fb::ErrorCode::InvalidTopic,
                        format!("{name:?} is an internal topic and cannot be deleted"),
                    );
                    results.push((name, Some(error)));
                    continue;
                }
                let outcome = match next.topics.remove(&name) {
                    Some(_) => None,
                    None => Some(WireError::new(
                        fb::ErrorCode::UnknownTopicOrPartition,
                        format!("topic {name:?} does not exist"),
                    )),
                };
                results.push((name, outcome));
            }
            if let Err(error) = commit(shard, next, &mut results).await {
                tracing::error!(%error, "a shard could not apply a topic deletion");
            }
            results
        })
        .await
}

/// On the controller at start-up: creates the internal `__offsets` topic if it is missing.
///
/// # Errors
/// Persisting the metadata failed.
pub async fn ensure_offsets_topic(shard: &Rc<ShardState>) -> Result<(), WireError> {
    shard
        .with_controller_lock(async {
            let mut next = (*shard.partitions.metadata()).clone();
            if next.topics.contains_key(crate::groups::OFFSETS_TOPIC) {
                return Ok(());
            }
            let metadata = TopicMetadata {
                id: next.next_topic_id,
                partition_shards: next.place(crate::groups::OFFSETS_PARTITIONS, shard.count),
                retention_bytes: None,
                retention_ms: Some(u64::MAX / 2),
                segment_bytes: Some(64 * 1024 * 1024),
                replication: Vec::new(),
                min_insync_replicas: 1,
            };
            next.next_topic_id += 1;
            next.topics
                .insert(crate::groups::OFFSETS_TOPIC.to_string(), metadata);
            let mut results = vec![(crate::groups::OFFSETS_TOPIC.to_string(), None)];
            if let Err(error) = commit(shard, next, &mut results).await {
                return Err(WireError::new(fb::ErrorCode::StorageError, error));
            }
            results
                .pop()
                .and_then(|(_, error)| error)
                .map_or(Ok(()), Err)
        })
        .await
}

/// Persists `next` (if anything changed) and has every shard adopt it.
/// A persisting failure becomes each change's error; the error of a shard
/// that could not adopt it is returned.
async fn commit(
    shard: &Rc<ShardState>,
    next: ClusterMetadata,
    results: &mut [(String, Option<WireError>)],
) -> Result<(), String> {
    if results.iter().all(|(_, error)| error.is_some()) {
        return Ok(());
    }
    match publish(shard, next).await {
        Err(Published::NotStored(error)) => {
            for (_, outcome) in results.iter_mut().filter(|(_, e)| e.is_none()) {
                *outcome = Some(WireError::new(fb::ErrorCode::StorageError, error.clone()));
            }
            Ok(())
        }
        Err(Published::NotApplied(error)) => Err(error),
        Ok(()) => Ok(()),
    }
}

/// Why [`publish`] failed.
#[derive(Debug)]
enum Published {
    /// `metadata.json` could not be written: nothing changed.
    NotStored(String),
    /// Stored, but a shard could not open what it now places there.
    NotApplied(String),
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Published::NotStored(e) | Published::NotApplied(e) => f.write_str(e),
        }
    }
}

/// Persists `next` as the following revision and has every shard adopt it.
async fn publish(shard: &Rc<ShardState>, mut next: ClusterMetadata) -> Result<(), Published> {
    next.revision += 1;
    if let Err(error) = next.store(&shard.config.data_dir) {
        tracing::error!(%error, "persisting metadata failed");
        return Err(Published::NotStored(format!(
            "persisting metadata failed: {error}"
        )));
    }
    let next = Arc::new(next);
    let applied = (0..shard.count)
        .map(|target| shard.call(target, ShardRequest::ApplyMetadata(next.clone())));
    let applied = futures_util::future::join_all(applied).await;
    tracing::info!(revision = next.revision, "metadata changed");
    for outcome in applied {
        match outcome {
            ShardResponse::Applied(Ok(())) => {}
            ShardResponse::Applied(Err(error)) => return Err(Published::NotApplied(error)),
            _ => {
                let error = "a shard did not answer: it is stopping".to_string();
                return Err(Published::NotApplied(error));
            }
        }
    }
    Ok(())
}
