//! Fetch: long-poll reads of many partitions, within the broker's caps.
//!
//! A round reads the partitions one after another, in request order, each
//! within what is left of the response's budget: the smallest of the
//! client's `max_bytes`, `fetch_bytes_max`, and the memory the connection
//! and the shard can give right now (`budget.rs`). A partition adds at most
//! its own `max_bytes` and `fetch_partition_bytes_max`. As in Kafka
//! (KIP-74), the first batch of the first partition with data comes whole
//! even past those limits, so a consumer always progresses; nothing else
//! is read past them. A partition whose turn comes with no budget left
//! reports only its watermarks. If the round found fewer than `min_bytes`,
//! the handler gives the memory back and waits until any partition's high
//! watermark passes what the round saw, or until `max_wait_ms`, then reads
//! again. Local data goes out as the engine returned it (cache `Bytes`,
//! O_DIRECT buffers, sealed-file ranges for sendfile); data from another
//! shard arrives copied into `Bytes`.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use shardlog_engine::{ReadPart, ReadSlice};
use shardlog_wire::protocol::fb;

use super::{error_parts, finish};
use super::{Answer, ConnectionContext, Outgoing, PayloadPart};
use crate::config::PARTITIONS_PER_REQUEST_MAX;
use crate::error::WireError;
use crate::shard::budget::MemoryCharge;
use crate::shard::messages::{PartitionCall, PartitionReply, ReadLimit, RemoteFetch};
use crate::shard::Partitions;
use crate::shard::{ShardRequest, ShardResponse, ShardState};

/// How often a fetch that found no free memory looks again.
const BUDGET_RETRY_MS: u64 = 10;

#[derive(Debug, Clone)]
struct PartitionFetch {
    partition: u32,
    offset: u64,
    max_bytes: u64,
}

/// A fetch request in owned values.
#[derive(Debug)]
pub struct FetchParsed {
    max_wait_ms: u32,
    min_bytes: u32,
    max_bytes: u32,
    topics: Vec<(String, Vec<PartitionFetch>)>,
}

pub fn parse(body: fb::FetchRequest<'_>) -> Result<FetchParsed, WireError> {
    let mut topics = Vec::new();
    let mut count = 0usize;
    for topic in body.topics().iter().flatten() {
        let name = topic.topic().unwrap_or_default().to_string();
        let mut partitions = Vec::new();
        for p in topic.partitions().iter().flatten() {
            count += 1;
            if count > PARTITIONS_PER_REQUEST_MAX {
                let message = format!("at most {PARTITIONS_PER_REQUEST_MAX} partitions per fetch");
                return Err(WireError::new(fb::ErrorCode::InvalidRequest, message));
            }
            partitions.push(PartitionFetch {
                partition: p.partition(),
                offset: p.offset(),
                max_bytes: u64::from(p.max_bytes().max(1)),
            });
        }
        topics.push((name, partitions));
    }
    Ok(FetchParsed {
        max_wait_ms: body.max_wait_ms(),
        min_bytes: body.min_bytes(),
        max_bytes: body.max_bytes().max(1),
        topics,
    })
}

enum Data {
    Local(ReadSlice),
    Remote(Vec<Bytes>),
}

struct Fetched {
    data: Option<Data>,
    high_watermark: u64,
    log_start_offset: u64,
}

impl Fetched {
    fn size_bytes(&self) -> u64 {
        match &self.data {
            Some(Data::Local(slice)) => slice.size_bytes(),
            Some(Data::Remote(parts)) => parts.iter().map(|p| p.len() as u64).sum(),
            None => 0,
        }
    }
}

type Round = Vec<Result<Fetched, WireError>>;

pub async fn handle(
    shard: &Rc<ShardState>,
    context: &ConnectionContext,
    correlation_id: u32,
    request: FetchParsed,
) -> Answer {
    let limits = &shard.config.limits;
    let wait_ms = u64::from(request.max_wait_ms).min(limits.fetch_wait_ms_max);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let cap_bytes = u64::from(request.max_bytes).min(limits.fetch_bytes_max);
    loop {
        let mut charge = context.budget.charge();
        let granted_bytes = charge.grow_up_to(cap_bytes);
        let round = read_round(shard, &request, granted_bytes).await;
        let bytes: u64 = round
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(Fetched::size_bytes)
            .sum();
        let any_error = round.iter().any(Result::is_err);
        let now = Instant::now();
        let done = bytes >= u64::from(request.min_bytes) || any_error || now >= deadline;
        if done || shard.shutdown.is_started() {
            return encode(correlation_id, &request, round, charge, bytes);
        }
        // Give the memory back while waiting; the next round asks again.
        let seen: Vec<u64> = round
            .iter()
            .map(|r| r.as_ref().map_or(0, |f| f.high_watermark))
            .collect();
        drop(round);
        drop(charge);
        if granted_bytes == 0 {
            // No memory to read into: look again shortly, as long as the client waits.
            let pause = Duration::from_millis(BUDGET_RETRY_MS).min(deadline - now);
            glommio::timer::sleep(pause).await;
            continue;
        }
        wait_for_more(shard, &request, &seen, deadline - now).await;
    }
}

/// Reads every partition in order within `budget_bytes`; see the module doc.
async fn read_round(shard: &Rc<ShardState>, request: &FetchParsed, budget_bytes: u64) -> Round {
    let partition_cap = shard.config.limits.fetch_partition_bytes_max;
    let mut remaining = budget_bytes;
    let mut round = Round::new();
    for (topic, partitions) in &request.topics {
        for fetch in partitions {
            let allotted = fetch.max_bytes.min(partition_cap).min(remaining);
            // Only the first data of a response may come whole past the limits.
            let whole_first = remaining == budget_bytes;
            let fetched = read_partition(shard, topic, fetch, allotted, whole_first).await;
            if let Ok(found) = &fetched {
                remaining = remaining.saturating_sub(found.size_bytes());
            }
            round.push(fetched);
        }
    }
    round
}

/// Reads one partition, here or on its owner, within `max_bytes` (its first
/// batch may pass them when `whole_first`); `max_bytes` 0 asks for its
/// watermarks only.
async fn read_partition(
    shard: &Rc<ShardState>,
    topic: &str,
    fetch: &PartitionFetch,
    max_bytes: u64,
    whole_first: bool,
) -> Result<Fetched, WireError> {
    let owner = shard.partitions.leader_owner_of(topic, fetch.partition)?;
    let limit = ReadLimit {
        max_bytes,
        whole_first,
    };
    if owner == shard.id {
        let slice = read_local(
            &shard.partitions,
            topic,
            fetch.partition,
            fetch.offset,
            limit,
        )
        .await?;
        let (high_watermark, log_start_offset) = (slice.high_watermark, slice.log_start_offset);
        let data = (!slice.is_empty()).then_some(Data::Local(slice));
        return Ok(Fetched {
            data,
            high_watermark,
            log_start_offset,
        });
    }
    let request = ShardRequest::Partition(PartitionCall::Fetch {
        topic: topic.to_string(),
        partition: fetch.partition,
        offset: fetch.offset,
        limit,
    });
    match shard.call(owner, request).await {
        ShardResponse::Partition(PartitionReply::Fetch(Ok(remote))) => {
            let data = (!remote.parts.is_empty()).then_some(Data::Remote(remote.parts));
            Ok(Fetched {
                data,
                high_watermark: remote.high_watermark,
                log_start_offset: remote.log_start_offset,
            })
        }
        ShardResponse::Partition(PartitionReply::Fetch(Err(error))) => Err(error),
        _ => Err(WireError::unavailable()),
    }
}

async fn read_local(
    partitions: &Partitions,
    topic: &str,
    partition: u32,
    offset: u64,
    limit: ReadLimit,
) -> Result<ReadSlice, WireError> {
    let state = partitions
        .partition(topic, partition)
        .ok_or_else(|| WireError::unknown_partition(topic, partition))?;
    if limit.max_bytes == 0 {
        return Ok(ReadSlice {
            parts: Vec::new(),
            next_offset: offset,
            high_watermark: state.high_watermark(),
            log_start_offset: state.log.log_start_offset(),
        });
    }
    // Consumers read below the high watermark only: what every ISR member has.
    let high_watermark = state.high_watermark();
    let end = Some(high_watermark);
    let read = match limit.whole_first {
        true => state.log.read(offset, limit.max_bytes, end).await,
        false => state.log.read_within(offset, limit.max_bytes, end).await,
    };
    let mut slice = read.map_err(|e| WireError::from(&e))?;
    slice.high_watermark = high_watermark;
    Ok(slice)
}

/// On the owner, for another shard: the read, copied into `Bytes` to cross cores.
pub async fn read_for_remote(
    partitions: &Partitions,
    topic: &str,
    partition: u32,
    offset: u64,
    limit: ReadLimit,
) -> Result<RemoteFetch, WireError> {
    let slice = read_local(partitions, topic, partition, offset, limit).await?;
    let mut parts = Vec::with_capacity(slice.parts.len());
    for part in &slice.parts {
        parts.push(match part {
            ReadPart::Memory(bytes) => bytes.clone(),
            ReadPart::Direct(result) => Bytes::copy_from_slice(result),
            ReadPart::File {
                file,
                position,
                length,
            } => {
                let read = file.read_at(*position, *length as usize).await;
                let read = read.map_err(|e| {
                    WireError::new(
                        fb::ErrorCode::StorageError,
                        format!("reading a sealed segment: {e}"),
                    )
                })?;
                Bytes::copy_from_slice(&read)
            }
        });
    }
    Ok(RemoteFetch {
        high_watermark: slice.high_watermark,
        log_start_offset: slice.log_start_offset,
        parts,
    })
}

/// Waits until a partition's high watermark passes what `round` saw, or `wait` passes.
async fn wait_for_more(
    shard: &Rc<ShardState>,
    request: &FetchParsed,
    seen: &[u64],
    wait: Duration,
) {
    let mut waits: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = Vec::new();
    let seen = seen.iter().copied();
    let partitions = request
        .topics
        .iter()
        .flat_map(|(topic, partitions)| partitions.iter().map(move |p| (topic, p)));
    for ((topic, fetch), high_watermark) in partitions.zip(seen) {
        let from = fetch.offset.max(high_watermark);
        let Ok(owner) = shard.partitions.leader_owner_of(topic, fetch.partition) else {
            continue;
        };
        if owner == shard.id {
            if let Some(state) = shard.partitions.partition(topic, fetch.partition) {
                waits.push(Box::pin(
                    async move { state.wait_for_data(from, wait).await },
                ));
            }
        } else {
            let watch = ShardRequest::Partition(PartitionCall::Watch {
                topic: topic.clone(),
                partition: fetch.partition,
                offset: from,
                wait_ms: wait.as_millis() as u64,
            });
            waits.push(Box::pin(async move {
                let _ = shard.call(owner, watch).await;
            }));
        }
    }
    waits.push(Box::pin(glommio::timer::sleep(wait)));
    waits.push(Box::pin(shard.shutdown.wait()));
    futures_util::future::select_all(waits).await;
}

fn encode(
    correlation_id: u32,
    request: &FetchParsed,
    round: Round,
    mut charge: MemoryCharge,
    bytes: u64,
) -> Answer {
    // Sealed-file ranges go out with sendfile and hold no memory.
    let memory_bytes = bytes - round_file_bytes(&round);
    charge.shrink_to(memory_bytes);
    // A first batch that came whole past the grant is charged too, if it can be.
    charge.grow_up_to(memory_bytes.saturating_sub(charge.bytes()));
    let mut fbb = FlatBufferBuilder::new();
    let mut payload = Vec::new();
    let mut results = round.into_iter();
    let mut topic_offsets = Vec::with_capacity(request.topics.len());
    for (topic, partitions) in &request.topics {
        let mut partition_offsets = Vec::with_capacity(partitions.len());
        for fetch in partitions {
            let result = results.next().expect("one result per partition");
            let (error, high_watermark, log_start_offset, records_bytes) = match result {
                Ok(fetched) => {
                    let size = fetched.size_bytes();
                    match fetched.data {
                        Some(Data::Local(slice)) => {
                            payload.extend(slice.parts.into_iter().map(local_part))
                        }
                        Some(Data::Remote(parts)) => {
                            payload.extend(parts.into_iter().map(PayloadPart::Bytes))
                        }
                        None => {}
                    }
                    (
                        None,
                        fetched.high_watermark as i64,
                        fetched.log_start_offset as i64,
                        size as u32,
                    )
                }
                Err(error) => (Some(error), -1, -1, 0),
            };
            let (error_code, error_message) = error_parts(&mut fbb, error.as_ref());
            let args = fb::FetchPartitionResultArgs {
                partition: fetch.partition,
                error_code,
                error_message,
                high_watermark,
                log_start_offset,
                records_bytes,
            };
            partition_offsets.push(fb::FetchPartitionResult::create(&mut fbb, &args));
        }
        let partitions = fbb.create_vector(&partition_offsets);
        let topic = fbb.create_string(topic);
        topic_offsets.push(fb::FetchTopicResult::create(
            &mut fbb,
            &fb::FetchTopicResultArgs {
                topic: Some(topic),
                partitions: Some(partitions),
            },
        ));
    }
    let topics = fbb.create_vector(&topic_offsets);
    let body = fb::FetchResponse::create(
        &mut fbb,
        &fb::FetchResponseArgs {
            topics: Some(topics),
        },
    );
    let outgoing = Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::FetchResponse,
            body.as_union_value(),
        ),
        payload,
    };
    Answer {
        outgoing,
        charge: Some(charge),
    }
}

/// Bytes of the round that are sealed-file ranges (sent with sendfile, never in memory).
fn round_file_bytes(round: &Round) -> u64 {
    round
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter_map(|f| match &f.data {
            Some(Data::Local(slice)) => Some(slice_file_bytes(slice)),
            _ => None,
        })
        .sum()
}

/// Bytes of `slice` that are sealed-file ranges.
pub(crate) fn slice_file_bytes(slice: &ReadSlice) -> u64 {
    slice
        .parts
        .iter()
        .filter_map(|part| match part {
            ReadPart::File { length, .. } => Some(*length),
            _ => None,
        })
        .sum()
}

pub(crate) fn local_part(part: ReadPart) -> PayloadPart {
    match part {
        ReadPart::Memory(bytes) => PayloadPart::Bytes(bytes),
        ReadPart::Direct(result) => PayloadPart::Direct(result),
        ReadPart::File {
            file,
            position,
            length,
        } => PayloadPart::File {
            file,
            position,
            length,
        },
    }
}
