//! Produce: batches are carved out of the request buffer as `BytesMut`
//! pieces (no copy), routed to the shard owning each partition, validated
//! there, checked for idempotence, and appended.

use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use flatbuffers::FlatBufferBuilder;
use shardlog_wire::batch::{self, peek_length_bytes, BatchHeader, ValidBatch, BATCH_HEADER_BYTES};
use shardlog_wire::protocol::fb;

use super::Outgoing;
use super::{error_parts, finish};
use crate::config::PARTITIONS_PER_REQUEST_MAX;
use crate::error::WireError;
use crate::shard::messages::{PartitionCall, PartitionReply, ProduceOutcome};
use crate::shard::partition::WaitError;
use crate::shard::producers::SequenceCheck;
use crate::shard::Partitions;
use crate::shard::{ShardRequest, ShardResponse, ShardState};

/// A partition and where its batches lie in the request buffer.
type PartitionRange = (u32, Range<usize>);

/// A produce request: where each partition's batches lie in the request buffer.
#[derive(Debug)]
pub struct ProduceParsed {
    acks: fb::Acks,
    timeout_ms: u32,
    topics: Vec<(String, Vec<PartitionRange>)>,
}

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(fb::ErrorCode::InvalidRequest, message)
}

pub fn parse(
    body: fb::ProduceRequest<'_>,
    request: &fb::Request<'_>,
    message_bytes: usize,
) -> Result<ProduceParsed, WireError> {
    let base = request._tab.buf().as_ptr() as usize;
    let mut topics = Vec::new();
    let mut count = 0usize;
    for topic in body.topics().iter().flatten() {
        let name = topic
            .topic()
            .ok_or_else(|| invalid("a produce topic has no name"))?
            .to_string();
        let mut partitions = Vec::new();
        for data in topic.partitions().iter().flatten() {
            count += 1;
            if count > PARTITIONS_PER_REQUEST_MAX {
                return Err(invalid(format!(
                    "at most {PARTITIONS_PER_REQUEST_MAX} partitions per produce request"
                )));
            }
            let bytes = data.batches().map(|b| b.bytes()).unwrap_or_default();
            let start = (bytes.as_ptr() as usize).wrapping_sub(base);
            if bytes.is_empty() || start + bytes.len() > message_bytes {
                return Err(invalid(format!(
                    "partition {} of {name:?} carries no batch",
                    data.partition()
                )));
            }
            partitions.push((data.partition(), start..start + bytes.len()));
        }
        topics.push((name, partitions));
    }
    let acks = body.acks();
    if !matches!(acks, fb::Acks::None | fb::Acks::Leader | fb::Acks::All) {
        return Err(invalid(format!("unknown acks value {}", acks.0)));
    }
    Ok(ProduceParsed {
        acks,
        timeout_ms: body.timeout_ms(),
        topics,
    })
}

/// Cuts the byte ranges out of `frame`, in request order. Ranges may not overlap.
fn carve(mut frame: BytesMut, ranges: &[Range<usize>]) -> Result<Vec<BytesMut>, WireError> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|i| ranges[*i].start);
    let mut pieces: Vec<Option<BytesMut>> = (0..ranges.len()).map(|_| None).collect();
    let mut consumed = 0usize;
    for i in order {
        let range = &ranges[i];
        if range.start < consumed {
            return Err(invalid(
                "two partitions' batches overlap in the request buffer",
            ));
        }
        let _ = frame.split_to(range.start - consumed);
        pieces[i] = Some(frame.split_to(range.len()));
        consumed = range.end;
    }
    Ok(pieces
        .into_iter()
        .map(|p| p.expect("every range was carved"))
        .collect())
}

pub async fn handle(
    shard: &Rc<ShardState>,
    correlation_id: u32,
    request: ProduceParsed,
    frame: BytesMut,
) -> Outgoing {
    let ranges: Vec<Range<usize>> = request
        .topics
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, r)| r.clone()))
        .collect();
    let pieces = match carve(frame, &ranges) {
        Ok(pieces) => pieces,
        Err(error) => return super::error_response(correlation_id, &error),
    };
    let timeout_ms =
        u64::from(request.timeout_ms.max(1)).min(shard.config.limits.produce_timeout_ms_max);
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut pieces = pieces.into_iter();
    let mut calls = Vec::new();
    for (topic, partitions) in &request.topics {
        for (partition, _) in partitions {
            let batches = pieces.next().expect("one piece per partition");
            let call = produce_partition(
                shard,
                topic.clone(),
                *partition,
                batches,
                request.acks,
                deadline,
            );
            calls.push(within(deadline, call));
        }
    }
    let outcomes = futures_util::future::join_all(calls).await;
    encode(correlation_id, &request, &outcomes)
}

/// The outcome of `call`, or `RequestTimedOut` at `deadline`. Giving up here
/// never stops an append: it runs on in its own task (see [`produce_partition`]).
async fn within(
    deadline: Instant,
    call: impl std::future::Future<Output = ProduceOutcome>,
) -> ProduceOutcome {
    let expire = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        ProduceOutcome {
            result: Err(WireError::new(
                fb::ErrorCode::RequestTimedOut,
                "the produce did not complete within timeout_ms; retry \
                 (idempotent producers are safe to retry: a stored batch is answered with its offset)",
            )),
            log_start_offset: -1,
        }
    };
    futures_lite::future::or(call, expire).await
}

async fn produce_partition(
    shard: &Rc<ShardState>,
    topic: String,
    partition: u32,
    batches: BytesMut,
    acks: fb::Acks,
    deadline: Instant,
) -> ProduceOutcome {
    if topic.starts_with("__") {
        let error = WireError::new(
            fb::ErrorCode::InvalidTopic,
            format!("{topic:?} is internal; clients cannot write to it"),
        );
        return ProduceOutcome {
            result: Err(error),
            log_start_offset: -1,
        };
    }
    let checked = shard
        .partitions
        .produce_owner_of(&topic, partition, acks == fb::Acks::All);
    let owner = match checked {
        Ok(owner) => owner,
        Err(error) => {
            return ProduceOutcome {
                result: Err(error),
                log_start_offset: -1,
            }
        }
    };
    if owner == shard.id {
        // Its own task: once the idempotence check has recorded a sequence
        // as in flight, the append must finish (or fail) to settle it,
        // whether or not this handler still waits. A forwarded produce is
        // served the same way on its owner.
        let shard = shard.clone();
        let wait = deadline.saturating_duration_since(Instant::now());
        let append = async move {
            append_local(&shard.partitions, &topic, partition, batches, acks, wait).await
        };
        return glommio::spawn_local(append)
            .detach()
            .await
            .unwrap_or_else(|| ProduceOutcome {
                result: Err(WireError::unavailable()),
                log_start_offset: -1,
            });
    }
    match shard
        .call(
            owner,
            ShardRequest::Partition(PartitionCall::Produce {
                topic,
                partition,
                batches,
                acks,
                wait_ms: deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
            }),
        )
        .await
    {
        ShardResponse::Partition(PartitionReply::Produce(outcome)) => outcome,
        _ => ProduceOutcome {
            result: Err(WireError::unavailable()),
            log_start_offset: -1,
        },
    }
}

fn encode(correlation_id: u32, request: &ProduceParsed, outcomes: &[ProduceOutcome]) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let mut outcomes = outcomes.iter();
    let mut topic_offsets = Vec::with_capacity(request.topics.len());
    for (topic, partitions) in &request.topics {
        let mut partition_offsets = Vec::with_capacity(partitions.len());
        for (partition, _) in partitions {
            let outcome = outcomes.next().expect("one outcome per partition");
            let (base_offset, error) = match &outcome.result {
                Ok(base_offset) => (*base_offset, None),
                Err(error) => (-1, Some(error)),
            };
            let (error_code, error_message) = error_parts(&mut fbb, error);
            let args = fb::PartitionProduceResultArgs {
                partition: *partition,
                error_code,
                error_message,
                base_offset,
                log_start_offset: outcome.log_start_offset,
            };
            partition_offsets.push(fb::PartitionProduceResult::create(&mut fbb, &args));
        }
        let partitions = fbb.create_vector(&partition_offsets);
        let topic = fbb.create_string(topic);
        topic_offsets.push(fb::TopicProduceResult::create(
            &mut fbb,
            &fb::TopicProduceResultArgs {
                topic: Some(topic),
                partitions: Some(partitions),
            },
        ));
    }
    let topics = fbb.create_vector(&topic_offsets);
    let body = fb::ProduceResponse::create(
        &mut fbb,
        &fb::ProduceResponseArgs {
            topics: Some(topics),
        },
    );
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::ProduceResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}

/// Splits a partition's data into single batches and validates every one,
/// so that nothing is appended unless all of it is good.
/// Splits a partition's data into batches and validates each, CRC included:
/// the one CRC pass of the produce path (the log appends a [`ValidBatch`]
/// without another). Control batches are the broker's to write, as in Kafka.
fn split_batches(
    mut data: BytesMut,
    limits: &batch::BatchLimits,
) -> Result<Vec<ValidBatch>, WireError> {
    let mut batches = Vec::new();
    while !data.is_empty() {
        let length = peek_length_bytes(&data).map_or(0, |l| l as usize);
        if length < BATCH_HEADER_BYTES || length > data.len() {
            return Err(WireError::new(
                fb::ErrorCode::CorruptBatch,
                "the batches do not split into whole batches: a length field is wrong",
            ));
        }
        let one = data.split_to(length);
        let valid = ValidBatch::check(one, limits).map_err(|e| WireError::from(&e))?;
        if valid.header().is_control() {
            return Err(WireError::new(
                fb::ErrorCode::InvalidRequest,
                "control batches (transaction markers) are written by the broker, not by producers",
            ));
        }
        batches.push(valid);
    }
    Ok(batches)
}

/// On the owning shard: validates, deduplicates and appends a partition's batches.
pub async fn append_local(
    partitions: &Partitions,
    topic: &str,
    partition: u32,
    data: BytesMut,
    acks: fb::Acks,
    wait: Duration,
) -> ProduceOutcome {
    let Some(state) = partitions.partition(topic, partition) else {
        return ProduceOutcome {
            result: Err(WireError::unknown_partition(topic, partition)),
            log_start_offset: -1,
        };
    };
    let log_start_offset = state.log.log_start_offset() as i64;
    let limits = state.log.batch_limits();
    let batches = match split_batches(data, &limits) {
        Ok(batches) => batches,
        Err(error) => {
            return ProduceOutcome {
                result: Err(error),
                log_start_offset,
            }
        }
    };
    let mut duplicate_base: Option<u64> = None;
    let mut to_append = Vec::with_capacity(batches.len());
    for valid in batches {
        let header = *valid.header();
        if header.producer_id < 0 {
            to_append.push(valid);
            continue;
        }
        let check = state.producers.borrow_mut().check(&header);
        let error = match check {
            SequenceCheck::Append => {
                to_append.push(valid);
                continue;
            }
            SequenceCheck::Duplicate { base_offset } => {
                duplicate_base.get_or_insert(base_offset);
                continue;
            }
            SequenceCheck::DuplicateInFlight => WireError::new(
                fb::ErrorCode::Busy,
                "a retry of a batch still being appended; retry shortly",
            ),
            SequenceCheck::UnknownProducer => WireError::new(
                fb::ErrorCode::UnknownProducerId,
                format!(
                    "producer {} has no sequence state in this partition (new here, or forgotten) \
                     and sent sequence {}; a producer starts each partition at sequence 0 \
                     (the SDK starts over with a new producer id)",
                    header.producer_id, header.base_sequence
                ),
            ),
            SequenceCheck::OutOfOrder { expected } => WireError::new(
                fb::ErrorCode::OutOfOrderSequence,
                format!(
                    "producer {} sent sequence {} but {expected} was expected",
                    header.producer_id, header.base_sequence
                ),
            ),
            SequenceCheck::Fenced { current_epoch } => WireError::new(
                fb::ErrorCode::InvalidProducerEpoch,
                format!(
                    "producer {} epoch {} is older than its current epoch {current_epoch}",
                    header.producer_id, header.producer_epoch
                ),
            ),
        };
        for recorded in to_append
            .iter()
            .map(ValidBatch::header)
            .filter(|h| h.producer_id >= 0)
        {
            state
                .producers
                .borrow_mut()
                .abort(recorded.producer_id, recorded.base_sequence);
        }
        return ProduceOutcome {
            result: Err(error),
            log_start_offset,
        };
    }
    // With acks = none the client is told no offset, but the request still
    // waits for its appends: so it stays in flight, charged to the memory
    // budget, and a producer that ignores answers is bounded like any other.
    let result = append_checked(state.clone(), to_append, duplicate_base).await;
    let result = match (result, acks) {
        (Ok((base, end)), fb::Acks::All) => {
            let insync = wait_insync(&state, topic, partition, end, wait).await;
            // The ISR may have shrunk while it waited (Kafka's
            // NOT_ENOUGH_REPLICAS_AFTER_APPEND): the batch is stored, and an
            // idempotent retry is answered with its offset once enough are back.
            let after = insync.and_then(|()| partitions.produce_owner_of(topic, partition, true));
            after.map(|_| base)
        }
        (result, _) => result.map(|(base, _)| base),
    };
    let result = match acks {
        fb::Acks::None => result.map(|_| -1),
        _ => result,
    };
    ProduceOutcome {
        result,
        log_start_offset,
    }
}

/// For `acks=all`: waits until every ISR member has the offsets below `end`.
async fn wait_insync(
    state: &crate::shard::PartitionState,
    topic: &str,
    partition: u32,
    end: u64,
    wait: Duration,
) -> Result<(), WireError> {
    match state.wait_replicated(end, wait).await {
        Ok(()) => Ok(()),
        Err(WaitError::NotLeader) => Err(WireError::new(
            fb::ErrorCode::NotLeader,
            format!(
                "{topic}/{partition}: leadership moved before the ISR had the batch;                  refresh metadata and retry (an idempotent producer's retry is not stored twice)"
            ),
        )),
        Err(WaitError::TimedOut) => Err(WireError::new(
            fb::ErrorCode::RequestTimedOut,
            format!(
                "{topic}/{partition}: the ISR did not catch up with the batch in time; retry                  (an idempotent producer's retry is not stored twice)"
            ),
        )),
    }
}

/// Appends batches that passed the checks; the result is the base offset of
/// the first and the end (one past the last offset) of every batch stored
/// or found stored.
async fn append_checked(
    state: Rc<crate::shard::PartitionState>,
    batches: Vec<ValidBatch>,
    duplicate_base: Option<u64>,
) -> Result<(i64, u64), WireError> {
    let headers: Vec<BatchHeader> = batches.iter().map(|b| *b.header()).collect();
    let appends = batches
        .into_iter()
        .map(|batch| state.log.append_valid(batch));
    let results = futures_util::future::join_all(appends).await;
    let mut first: Option<Result<i64, WireError>> = duplicate_base.map(|b| Ok(b as i64));
    // A duplicate's batch ends past its base offset: the high watermark
    // moves by whole batches, so passing the base means having the batch.
    let mut end = duplicate_base.map_or(0, |b| b + 1);
    for (header, result) in headers.iter().zip(results) {
        if let Ok(info) = &result {
            end = end.max(info.last_offset + 1);
        }
        match &result {
            Ok(info) if header.producer_id >= 0 => state.producers.borrow_mut().complete(
                header.producer_id,
                header.base_sequence,
                info.base_offset,
            ),
            Err(_) if header.producer_id >= 0 => state
                .producers
                .borrow_mut()
                .abort(header.producer_id, header.base_sequence),
            _ => {}
        }
        if first.is_none() || matches!(first, Some(Ok(_))) && result.is_err() {
            first = Some(
                result
                    .map(|info| info.base_offset as i64)
                    .map_err(|e| WireError::from(&e)),
            );
        }
    }
    state.notify_appended();
    first.unwrap_or(Ok(-1)).map(|base| (base, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carving_keeps_request_order_and_refuses_overlaps() {
        let frame = BytesMut::from(&b"0123456789"[..]);
        let pieces = carve(frame.clone(), &[6..8, 1..3]).unwrap();
        assert_eq!(&pieces[0][..], b"67");
        assert_eq!(&pieces[1][..], b"12");
        assert!(carve(frame, &[1..5, 4..6]).is_err());
    }

    #[test]
    fn partition_data_must_be_whole_valid_batches() {
        let limits = batch::BatchLimits::default();
        let mut builder = batch::BatchBuilder::new(batch::BatchBuilderOptions::default());
        builder.append(0, None, Some(b"v"), &[]).unwrap();
        let one = builder.finish().unwrap();
        let mut two = one.clone();
        two.extend_from_slice(&one);
        assert_eq!(split_batches(two.clone(), &limits).unwrap().len(), 2);
        two.truncate(two.len() - 1);
        assert_eq!(
            split_batches(two, &limits).unwrap_err().code,
            fb::ErrorCode::CorruptBatch
        );
        let mut corrupt = one.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(
            split_batches(corrupt, &limits).unwrap_err().code,
            fb::ErrorCode::CorruptBatch
        );
        // A control batch (Kafka attribute bit 5) with a valid CRC: a broker's to write.
        let mut control = one.clone();
        control[22] |= 1 << 5;
        let crc = crc32c::crc32c(&control[21..]);
        control[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            split_batches(control, &limits).unwrap_err().code,
            fb::ErrorCode::InvalidRequest
        );
    }
}
