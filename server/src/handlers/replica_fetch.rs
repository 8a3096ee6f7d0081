//! ReplicaFetch, the leader's side: a follower's shard pulls the partitions
//! it follows that this shard leads, on this shard's own port.
//!
//! ```text
//!  follower shard F ── ReplicaFetch {p1 @ 120 epoch 4, p7 @ 88 epoch 4, …} ──► leader shard L (this)
//!    for each partition: check the leader epoch; check the follower's last
//!    epoch ends where it says (else answer the divergence point, KIP-320);
//!    record its fetch offset (its acknowledgement: the high watermark may
//!    move, acks=all produces resolve, it may rejoin the ISR); read from
//!    there up to the durable end
//!  ◄── ReplicaFetchResponse {results, high watermarks} ++ batches (cache, O_DIRECT, sendfile)
//! ```
//!
//! Nothing hops cores: a partition another shard of this broker owns is
//! answered `NotLeader` (the follower picks the leader's shard from the
//! metadata, so this only happens around a metadata change). With no data
//! for any partition the request waits, up to `max_wait_ms`, for any of
//! them to grow, like a consumer's fetch.

use std::rc::Rc;
use std::time::{Duration, Instant};

use flatbuffers::FlatBufferBuilder;
use shardlog_engine::ReadSlice;
use shardlog_wire::protocol::fb;

use super::fetch::local_part;
use super::{error_parts, finish, Answer, ConnectionContext, Outgoing};
use crate::cluster::state::BrokerId;
use crate::config::PARTITIONS_PER_REQUEST_MAX;
use crate::error::WireError;
use crate::replication::isr;
use crate::shard::replica::Role;
use crate::shard::{PartitionState, ShardState};

/// Longest a replica fetch waits for data, whatever the follower asks.
pub const REPLICA_FETCH_WAIT_MS_MAX: u64 = 5_000;

/// One partition of a replica fetch.
#[derive(Debug, Clone)]
struct PartitionFetch {
    topic: String,
    partition: u32,
    current_leader_epoch: u64,
    fetch_offset: u64,
    last_fetched_epoch: Option<u32>,
    max_bytes: u64,
}

/// A ReplicaFetch request in owned values.
#[derive(Debug)]
pub struct ReplicaFetchParsed {
    from_broker: u64,
    cluster_id: String,
    max_wait_ms: u32,
    max_bytes: u32,
    partitions: Vec<PartitionFetch>,
}

pub fn parse(body: fb::ReplicaFetchRequest<'_>) -> Result<ReplicaFetchParsed, WireError> {
    let mut partitions = Vec::new();
    for p in body.partitions().iter().flatten() {
        if partitions.len() == PARTITIONS_PER_REQUEST_MAX {
            let message = format!("at most {PARTITIONS_PER_REQUEST_MAX} partitions per fetch");
            return Err(WireError::new(fb::ErrorCode::InvalidRequest, message));
        }
        let last_fetched_epoch = match p.last_fetched_epoch() {
            -1 => None,
            e => Some(u32::try_from(e).map_err(|_| {
                WireError::new(
                    fb::ErrorCode::InvalidRequest,
                    format!("last_fetched_epoch {e} is not an epoch (0..=4294967295, or -1)"),
                )
            })?),
        };
        partitions.push(PartitionFetch {
            topic: p.topic().unwrap_or_default().to_string(),
            partition: p.partition(),
            current_leader_epoch: p.current_leader_epoch(),
            fetch_offset: p.fetch_offset(),
            last_fetched_epoch,
            max_bytes: u64::from(p.max_bytes().max(1)),
        });
    }
    Ok(ReplicaFetchParsed {
        from_broker: body.from_broker(),
        cluster_id: body.cluster_id().unwrap_or_default().to_string(),
        max_wait_ms: body.max_wait_ms(),
        max_bytes: body.max_bytes().max(1),
        partitions,
    })
}

/// What one partition answers.
struct Served {
    data: Option<ReadSlice>,
    high_watermark: u64,
    log_start_offset: u64,
    log_end_offset: u64,
    /// Where the follower's log diverges: (epoch, or none before any; end offset).
    diverging: Option<(Option<u32>, u64)>,
}

/// Why one partition is not served, and, for a follower whose copy ends
/// below this log's start, where that start is (it restarts its copy there).
struct Refused {
    error: WireError,
    log_start_offset: Option<u64>,
}

impl From<WireError> for Refused {
    fn from(error: WireError) -> Refused {
        Refused {
            error,
            log_start_offset: None,
        }
    }
}

type Round = Vec<Result<Served, Refused>>;

pub async fn handle(
    shard: &Rc<ShardState>,
    context: &ConnectionContext,
    correlation_id: u32,
    request: ReplicaFetchParsed,
) -> Answer {
    let follower = match check_sender(shard, &request) {
        Ok(follower) => follower,
        Err(error) => return encode(correlation_id, &request, Err(error), None),
    };
    let wait_ms = u64::from(request.max_wait_ms).min(REPLICA_FETCH_WAIT_MS_MAX);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let cap_bytes = u64::from(request.max_bytes).min(shard.config.limits.fetch_bytes_max);
    loop {
        let mut charge = context.budget.charge();
        let granted_bytes = charge.grow_up_to(cap_bytes);
        let round = serve_round(shard, follower, &request, granted_bytes).await;
        let answer_now = round.iter().any(|r| match r {
            Ok(served) => served.data.is_some() || served.diverging.is_some(),
            Err(_) => true,
        });
        let now = Instant::now();
        if answer_now || now >= deadline || shard.shutdown.is_started() || granted_bytes == 0 {
            let file_bytes: u64 = round
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .filter_map(|s| s.data.as_ref())
                .map(super::fetch::slice_file_bytes)
                .sum();
            let bytes: u64 = round
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .filter_map(|s| s.data.as_ref())
                .map(ReadSlice::size_bytes)
                .sum();
            charge.shrink_to(bytes - file_bytes);
            return encode(correlation_id, &request, Ok(round), Some(charge));
        }
        drop(round);
        drop(charge);
        wait_for_more(shard, &request, deadline - now).await;
    }
}

/// The follower's broker id, if it is a member of this broker's cluster.
fn check_sender(shard: &ShardState, request: &ReplicaFetchParsed) -> Result<BrokerId, WireError> {
    let invalid = |message: String| WireError::new(fb::ErrorCode::InvalidRequest, message);
    let metadata = shard.partitions.metadata();
    let Some(view) = &metadata.cluster else {
        return Err(invalid(
            "this broker is not a cluster member (it runs without --peers)".into(),
        ));
    };
    if !view.cluster_id.is_empty() && request.cluster_id != view.cluster_id {
        return Err(invalid(format!(
            "the follower belongs to cluster {:?}, this broker to {:?}",
            request.cluster_id, view.cluster_id
        )));
    }
    let follower = BrokerId(request.from_broker);
    if !view.brokers.contains_key(&follower) || follower == view.broker {
        return Err(invalid(format!(
            "broker {follower} is not another registered broker of this cluster"
        )));
    }
    Ok(follower)
}

/// Serves every partition in order within `budget_bytes`.
async fn serve_round(
    shard: &Rc<ShardState>,
    follower: BrokerId,
    request: &ReplicaFetchParsed,
    budget_bytes: u64,
) -> Round {
    let mut remaining = budget_bytes;
    let mut round = Round::with_capacity(request.partitions.len());
    for fetch in &request.partitions {
        let allotted = fetch.max_bytes.min(remaining);
        let served = serve_partition(shard, follower, fetch, allotted).await;
        if let Ok(Served {
            data: Some(slice), ..
        }) = &served
        {
            remaining = remaining.saturating_sub(slice.size_bytes());
        }
        round.push(served);
    }
    round
}

async fn serve_partition(
    shard: &Rc<ShardState>,
    follower: BrokerId,
    fetch: &PartitionFetch,
    max_bytes: u64,
) -> Result<Served, Refused> {
    let (topic, partition) = (fetch.topic.as_str(), fetch.partition);
    let state = led_partition(shard, fetch, follower)?;
    let log = &state.log;
    let durable_end = log.high_watermark();
    if fetch.fetch_offset > log.log_end_offset() {
        // Past anything this leader wrote: not a follower's real end, and
        // counting it would move the high watermark over what it lacks.
        return Err(WireError::new(
            fb::ErrorCode::OffsetOutOfRange,
            format!(
                "{topic}/{partition}: offset {} is past the leader's log end {}",
                fetch.fetch_offset,
                log.log_end_offset()
            ),
        )
        .into());
    }
    if let Some(diverging) = divergence(&state, fetch) {
        return Ok(Served {
            data: None,
            high_watermark: state.high_watermark(),
            log_start_offset: log.log_start_offset(),
            log_end_offset: durable_end,
            diverging: Some(diverging),
        });
    }
    let log_start_offset = log.log_start_offset();
    if fetch.fetch_offset < log_start_offset {
        let error = WireError::new(
            fb::ErrorCode::OffsetOutOfRange,
            format!(
                "{topic}/{partition}: offset {} is below the leader's log start \
                 {log_start_offset} (retention removed what the follower lacks); it \
                 restarts its copy there",
                fetch.fetch_offset
            ),
        );
        return Err(Refused {
            error,
            log_start_offset: Some(log_start_offset),
        });
    }
    // The fetch offset is the follower's acknowledgement of everything below it.
    let fetch_offset = fetch.fetch_offset.min(durable_end);
    let before = state.high_watermark();
    state
        .replica
        .follower_fetched(follower, fetch_offset, durable_end, Instant::now());
    let high_watermark = state.high_watermark();
    if high_watermark > before {
        state.notify_appended();
    }
    isr::maybe_expand(shard, topic, partition, &state, follower, fetch_offset);
    let data = if fetch_offset < durable_end && max_bytes > 0 {
        let slice = log
            .read(fetch_offset, max_bytes, None)
            .await
            .map_err(|e| WireError::from(&e))?;
        (!slice.is_empty()).then_some(slice)
    } else {
        None
    };
    Ok(Served {
        data,
        high_watermark,
        log_start_offset: log.log_start_offset(),
        log_end_offset: durable_end,
        diverging: None,
    })
}

/// The partition, if this shard leads it at the epoch the follower names
/// and the follower holds one of its replicas.
fn led_partition(
    shard: &ShardState,
    fetch: &PartitionFetch,
    follower: BrokerId,
) -> Result<Rc<PartitionState>, WireError> {
    let (topic, partition) = (fetch.topic.as_str(), fetch.partition);
    let Some(state) = shard.partitions.partition(topic, partition) else {
        return Err(match shard.partitions.owner_of(topic, partition) {
            Some(owner) => WireError::new(
                fb::ErrorCode::NotLeader,
                format!("{topic}/{partition}: shard {owner} of this broker holds it, not shard {}; refresh metadata", shard.id),
            ),
            None => WireError::unknown_partition(topic, partition),
        });
    };
    let Role::Leader {
        leader_epoch,
        replicas,
        ..
    } = state.replica.role()
    else {
        return Err(WireError::new(
            fb::ErrorCode::NotLeader,
            format!("{topic}/{partition}: this broker does not lead it; refresh metadata"),
        ));
    };
    if !replicas.contains(&follower) {
        return Err(WireError::new(
            fb::ErrorCode::InvalidRequest,
            format!("{topic}/{partition}: broker {follower} holds no replica of it"),
        ));
    }
    if fetch.current_leader_epoch < leader_epoch {
        return Err(WireError::new(
            fb::ErrorCode::FencedLeaderEpoch,
            format!(
                "{topic}/{partition}: the follower names leader epoch {}, the partition is at {leader_epoch}; refresh metadata",
                fetch.current_leader_epoch
            ),
        ));
    }
    if fetch.current_leader_epoch > leader_epoch {
        return Err(WireError::new(
            fb::ErrorCode::UnknownLeaderEpoch,
            format!(
                "{topic}/{partition}: the follower names leader epoch {}, this leader knows {leader_epoch} yet; retry",
                fetch.current_leader_epoch
            ),
        ));
    }
    Ok(state)
}

/// Where the follower's log leaves this one, if it does (KIP-320): its last
/// epoch must end here no earlier than its fetch offset.
fn divergence(state: &PartitionState, fetch: &PartitionFetch) -> Option<(Option<u32>, u64)> {
    let log = &state.log;
    let Some(last_epoch) = fetch.last_fetched_epoch else {
        // An empty follower log cannot diverge.
        return None;
    };
    match log.end_offset_for_epoch(last_epoch) {
        Some((epoch, end)) if epoch == last_epoch && end >= fetch.fetch_offset => None,
        Some((epoch, end)) => Some((Some(epoch), end.min(fetch.fetch_offset))),
        // Every epoch here is newer: nothing of the follower's is known to be ours.
        None => {
            let first = log.leader_epochs().first().map_or(0, |e| e.start_offset);
            Some((None, first.min(fetch.fetch_offset)))
        }
    }
}

/// Waits until any partition's durable end passes the fetch offset, or `wait` passes.
async fn wait_for_more(shard: &Rc<ShardState>, request: &ReplicaFetchParsed, wait: Duration) {
    let mut waits: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>> = Vec::new();
    for fetch in &request.partitions {
        if let Some(state) = shard.partitions.partition(&fetch.topic, fetch.partition) {
            let offset = fetch.fetch_offset;
            waits.push(Box::pin(async move {
                state.wait_for_durable(offset, wait).await
            }));
        }
    }
    waits.push(Box::pin(glommio::timer::sleep(wait)));
    waits.push(Box::pin(shard.shutdown.wait()));
    futures_util::future::select_all(waits).await;
}

fn encode(
    correlation_id: u32,
    request: &ReplicaFetchParsed,
    round: Result<Round, WireError>,
    charge: Option<crate::shard::budget::MemoryCharge>,
) -> Answer {
    let mut fbb = FlatBufferBuilder::new();
    let mut payload = Vec::new();
    let (whole_error, round) = match round {
        Ok(round) => (None, round),
        Err(error) => (Some(error), Vec::new()),
    };
    let mut results = Vec::with_capacity(round.len());
    for (fetch, served) in request.partitions.iter().zip(round) {
        let topic = fbb.create_string(&fetch.topic);
        let (refused, served) = match served {
            Ok(served) => (None, Some(served)),
            Err(refused) => (Some(refused), None),
        };
        let error = refused.as_ref().map(|r| &r.error);
        let (error_code, error_message) = error_parts(&mut fbb, error);
        let mut args = fb::ReplicaFetchPartitionResultArgs {
            topic: Some(topic),
            partition: fetch.partition,
            error_code,
            error_message,
            ..Default::default()
        };
        if let Some(start) = refused.and_then(|r| r.log_start_offset) {
            args.log_start_offset = start as i64;
        }
        if let Some(served) = served {
            args.high_watermark = served.high_watermark as i64;
            args.log_start_offset = served.log_start_offset as i64;
            args.log_end_offset = served.log_end_offset as i64;
            if let Some((epoch, end)) = served.diverging {
                args.diverging_epoch = epoch.map_or(-1, i64::from);
                args.diverging_end_offset = end as i64;
            }
            if let Some(slice) = served.data {
                args.records_bytes = slice.size_bytes() as u32;
                payload.extend(slice.parts.into_iter().map(local_part));
            }
        }
        results.push(fb::ReplicaFetchPartitionResult::create(&mut fbb, &args));
    }
    let partitions = fbb.create_vector(&results);
    let (error_code, error_message) = error_parts(&mut fbb, whole_error.as_ref());
    let body = fb::ReplicaFetchResponse::create(
        &mut fbb,
        &fb::ReplicaFetchResponseArgs {
            error_code,
            error_message,
            partitions: Some(partitions),
        },
    );
    let outgoing = Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::ReplicaFetchResponse,
            body.as_union_value(),
        ),
        payload,
    };
    Answer { outgoing, charge }
}
