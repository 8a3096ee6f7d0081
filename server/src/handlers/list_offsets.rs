//! ListOffsets: the earliest offset, the latest (high watermark), or the
//! first offset at or after a timestamp, per partition, on its owner.

use std::rc::Rc;

use flatbuffers::FlatBufferBuilder;
use shardlog_wire::protocol::fb;

use super::Outgoing;
use super::{error_parts, finish};
use crate::config::PARTITIONS_PER_REQUEST_MAX;
use crate::error::WireError;
use crate::shard::messages::{OffsetsOutcome, PartitionCall, PartitionReply};
use crate::shard::Partitions;
use crate::shard::{ShardRequest, ShardResponse, ShardState};

/// One partition's query: (partition, spec, timestamp for `Timestamp`).
type Query = (u32, fb::OffsetSpec, i64);

/// A ListOffsets request in owned values: the queries of each topic.
#[derive(Debug)]
pub struct ListOffsetsParsed {
    topics: Vec<(String, Vec<Query>)>,
}

pub fn parse(body: fb::ListOffsetsRequest<'_>) -> Result<ListOffsetsParsed, WireError> {
    let mut topics = Vec::new();
    let mut count = 0;
    for topic in body.topics().iter().flatten() {
        let mut partitions = Vec::new();
        for p in topic.partitions().iter().flatten() {
            count += 1;
            if count > PARTITIONS_PER_REQUEST_MAX {
                return Err(WireError::new(
                    fb::ErrorCode::InvalidRequest,
                    format!("at most {PARTITIONS_PER_REQUEST_MAX} partitions per request"),
                ));
            }
            if !matches!(
                p.spec(),
                fb::OffsetSpec::Earliest | fb::OffsetSpec::Latest | fb::OffsetSpec::Timestamp
            ) {
                return Err(WireError::new(
                    fb::ErrorCode::InvalidRequest,
                    format!("unknown offset spec {}", p.spec().0),
                ));
            }
            partitions.push((p.partition(), p.spec(), p.timestamp_ms()));
        }
        topics.push((topic.topic().unwrap_or_default().to_string(), partitions));
    }
    Ok(ListOffsetsParsed { topics })
}

pub async fn handle(
    shard: &Rc<ShardState>,
    correlation_id: u32,
    request: ListOffsetsParsed,
) -> Outgoing {
    let lookups = request.topics.iter().flat_map(|(topic, partitions)| {
        partitions
            .iter()
            .map(move |(partition, spec, timestamp_ms)| {
                lookup(shard, topic, *partition, *spec, *timestamp_ms)
            })
    });
    let outcomes = futures_util::future::join_all(lookups).await;
    encode(correlation_id, &request, outcomes)
}

pub(crate) async fn lookup(
    shard: &Rc<ShardState>,
    topic: &str,
    partition: u32,
    spec: fb::OffsetSpec,
    timestamp_ms: i64,
) -> Result<OffsetsOutcome, WireError> {
    let owner = shard.partitions.leader_owner_of(topic, partition)?;
    let request = ShardRequest::Partition(PartitionCall::ListOffsets {
        topic: topic.to_string(),
        partition,
        spec,
        timestamp_ms,
    });
    match shard.call(owner, request).await {
        ShardResponse::Partition(PartitionReply::ListOffsets(outcome)) => outcome,
        _ => Err(WireError::unavailable()),
    }
}

/// On the owner: answers one partition's query.
pub async fn lookup_local(
    partitions: &Partitions,
    topic: &str,
    partition: u32,
    spec: fb::OffsetSpec,
    timestamp_ms: i64,
) -> Result<OffsetsOutcome, WireError> {
    let state = partitions
        .partition(topic, partition)
        .ok_or_else(|| WireError::unknown_partition(topic, partition))?;
    let (log_start_offset, high_watermark) = (state.log.log_start_offset(), state.high_watermark());
    let offset = match spec {
        fb::OffsetSpec::Earliest => log_start_offset as i64,
        fb::OffsetSpec::Latest => high_watermark as i64,
        _ => {
            let found = state
                .log
                .offset_for_timestamp(timestamp_ms)
                .await
                .map_err(|e| WireError::from(&e))?;
            found.map_or(-1, |o| o as i64)
        }
    };
    Ok(OffsetsOutcome {
        offset,
        log_start_offset,
        high_watermark,
        health: state.health(),
        replica_lags: state
            .replica_lags()
            .map(|(_, lags)| lags)
            .unwrap_or_default(),
    })
}

fn encode(
    correlation_id: u32,
    request: &ListOffsetsParsed,
    outcomes: Vec<Result<OffsetsOutcome, WireError>>,
) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let mut outcomes = outcomes.into_iter();
    let mut topic_offsets = Vec::new();
    for (topic, partitions) in &request.topics {
        let mut partition_offsets = Vec::new();
        for (partition, _, _) in partitions {
            let outcome = outcomes.next().expect("one outcome per partition");
            let (values, error, health, lags) = match outcome {
                Ok(o) => (
                    (o.offset, o.log_start_offset as i64, o.high_watermark as i64),
                    None,
                    Some(o.health),
                    o.replica_lags,
                ),
                Err(error) => ((-1, -1, -1), Some(error), None, Vec::new()),
            };
            let lags: Vec<_> = lags
                .iter()
                .map(|lag| {
                    let args = fb::ReplicaLagArgs {
                        broker: lag.broker.0 as u32,
                        lag_offsets: lag.offsets,
                        lag_bytes: lag.bytes,
                    };
                    fb::ReplicaLag::create(&mut fbb, &args)
                })
                .collect();
            let replica_lags = (!lags.is_empty()).then(|| fbb.create_vector(&lags));
            let (error_code, error_message) = error_parts(&mut fbb, error.as_ref());
            let status_message = health
                .as_ref()
                .filter(|h| !h.message.is_empty())
                .map(|h| fbb.create_string(&h.message));
            let args = fb::ListOffsetsPartitionResultArgs {
                partition: *partition,
                error_code,
                error_message,
                offset: values.0,
                log_start_offset: values.1,
                high_watermark: values.2,
                status: health.map_or(fb::PartitionStatus::Online, |h| h.status),
                status_message,
                replica_lags,
            };
            partition_offsets.push(fb::ListOffsetsPartitionResult::create(&mut fbb, &args));
        }
        let partitions = fbb.create_vector(&partition_offsets);
        let topic = fbb.create_string(topic);
        topic_offsets.push(fb::ListOffsetsTopicResult::create(
            &mut fbb,
            &fb::ListOffsetsTopicResultArgs {
                topic: Some(topic),
                partitions: Some(partitions),
            },
        ));
    }
    let topics = fbb.create_vector(&topic_offsets);
    let body = fb::ListOffsetsResponse::create(
        &mut fbb,
        &fb::ListOffsetsResponseArgs {
            topics: Some(topics),
        },
    );
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::ListOffsetsResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}
