//! RecoverPartitions: brings poisoned partitions back without a restart.
//!
//! A partition is poisoned when a write or an fdatasync failed: what reached
//! the disk is unknown, so its log refuses writes. Recovering it reopens the
//! log on its owner, which rescans the active segment from the last point a
//! successful sync covered, cuts what does not validate, and takes writes
//! again; the idempotent-producer state is rebuilt from the recovered log,
//! so a producer retrying a batch that did reach the disk is answered with
//! its offset instead of storing it twice.

use std::rc::Rc;

use flatbuffers::FlatBufferBuilder;
use shardlog_wire::protocol::fb;

use super::Outgoing;
use super::{error_parts, finish};
use crate::config::PARTITIONS_PER_REQUEST_MAX;
use crate::error::WireError;
use crate::shard::messages::{PartitionCall, PartitionReply, Recovered};
use crate::shard::Partitions;
use crate::shard::{ShardRequest, ShardResponse, ShardState};

/// A RecoverPartitions request in owned values.
#[derive(Debug)]
pub struct RecoverParsed {
    topic: String,
    /// Empty: every partition of the topic.
    partitions: Vec<u32>,
}

pub fn parse(body: fb::RecoverPartitionsRequest<'_>) -> Result<RecoverParsed, WireError> {
    let topic = body.topic().unwrap_or_default().to_string();
    let partitions: Vec<u32> = body
        .partitions()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    if partitions.len() > PARTITIONS_PER_REQUEST_MAX {
        return Err(WireError::new(
            fb::ErrorCode::InvalidRequest,
            format!(
                "at most {} partitions per request",
                PARTITIONS_PER_REQUEST_MAX
            ),
        ));
    }
    Ok(RecoverParsed { topic, partitions })
}

pub async fn handle(
    shard: &Rc<ShardState>,
    correlation_id: u32,
    request: RecoverParsed,
) -> Outgoing {
    let Some(count) = shard
        .partitions
        .metadata()
        .topics
        .get(&request.topic)
        .map(|t| t.partition_count())
    else {
        let error = WireError::new(
            fb::ErrorCode::UnknownTopicOrPartition,
            format!("topic {:?} does not exist", request.topic),
        );
        return encode(correlation_id, Some(&error), &[]);
    };
    let partitions = match request.partitions.is_empty() {
        true => (0..count).collect(),
        false => request.partitions,
    };
    let calls = partitions
        .iter()
        .map(|p| recover(shard, &request.topic, *p));
    let outcomes = futures_util::future::join_all(calls).await;
    let results: Vec<(u32, Result<Recovered, WireError>)> =
        partitions.into_iter().zip(outcomes).collect();
    encode(correlation_id, None, &results)
}

async fn recover(
    shard: &Rc<ShardState>,
    topic: &str,
    partition: u32,
) -> Result<Recovered, WireError> {
    let owner = shard
        .partitions
        .owner_of(topic, partition)
        .ok_or_else(|| WireError::unknown_partition(topic, partition))?;
    let request = ShardRequest::Partition(PartitionCall::Recover {
        topic: topic.to_string(),
        partition,
    });
    match shard.call(owner, request).await {
        ShardResponse::Partition(PartitionReply::Recovered(outcome)) => outcome,
        _ => Err(WireError::unavailable()),
    }
}

/// On the owner: recovers one partition's log and its producer state.
pub async fn recover_local(
    partitions: &Partitions,
    topic: &str,
    partition: u32,
) -> Result<Recovered, WireError> {
    let state = partitions
        .partition(topic, partition)
        .ok_or_else(|| WireError::unknown_partition(topic, partition))?;
    let outcome = state.log.recover().await.map_err(|e| WireError::from(&e))?;
    if outcome.was_poisoned {
        state
            .rebuild_producers()
            .await
            .map_err(|e| WireError::from(&e))?;
        tracing::info!(topic, partition, ?outcome, "recovered a poisoned partition");
    }
    state.notify_appended();
    Ok(Recovered {
        was_poisoned: outcome.was_poisoned,
        log_end_offset: state.log.log_end_offset(),
        cut_bytes: outcome.cut_bytes,
    })
}

fn encode(
    correlation_id: u32,
    error: Option<&WireError>,
    results: &[(u32, Result<Recovered, WireError>)],
) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let mut offsets = Vec::with_capacity(results.len());
    for (partition, outcome) in results {
        let (error_code, error_message) = error_parts(&mut fbb, outcome.as_ref().err());
        let recovered = outcome.as_ref().ok();
        let args = fb::RecoverPartitionResultArgs {
            partition: *partition,
            error_code,
            error_message,
            was_poisoned: recovered.is_some_and(|r| r.was_poisoned),
            log_end_offset: recovered.map_or(-1, |r| r.log_end_offset as i64),
            cut_bytes: recovered.map_or(0, |r| r.cut_bytes as i64),
        };
        offsets.push(fb::RecoverPartitionResult::create(&mut fbb, &args));
    }
    let results = fbb.create_vector(&offsets);
    let (error_code, error_message) = error_parts(&mut fbb, error);
    let body = fb::RecoverPartitionsResponse::create(
        &mut fbb,
        &fb::RecoverPartitionsResponseArgs {
            error_code,
            error_message,
            results: Some(results),
        },
    );
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::RecoverPartitionsResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}
