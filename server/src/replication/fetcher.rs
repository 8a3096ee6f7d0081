//! The follower's side: one fetcher task per (this shard, leader broker,
//! leader shard), pulling every partition this shard follows from that
//! leader shard in one request.
//!
//! ```text
//!  loop:
//!    partitions = those this shard follows whose leader is (broker B, shard S)   (none left: stop)
//!    ReplicaFetch {p @ durable end, last epoch, leader epoch …} ──► B's shard-S port
//!    for each answer: diverging ─► truncate there (KIP-320), rebuild producer state
//!                     batches   ─► append_replica each, verbatim (resolves once durable
//!                                  under this broker's flush policy: the next fetch offset
//!                                  is the acknowledgement)
//!                     high watermark learned
//! ```
//!
//! The fetch offset is the log's durable end, and a fetch is sent only once
//! the previous answer's appends resolved, so a follower never acknowledges
//! what its own flush policy has not made durable. Any failure drops the
//! connection and backs off [`RETRY_BACKOFF_MS`]; a leader that moved is
//! found again in the metadata the next round reads.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use flatbuffers::FlatBufferBuilder;
use shardlog_wire::batch::{peek_length_bytes, ValidBatch, BATCH_HEADER_BYTES};
use shardlog_wire::protocol::{self, fb, ProtocolLimits};

use super::client::{CallError, PeerConnection};
use crate::cluster::state::BrokerId;
use crate::shard::replica::Role;
use crate::shard::{PartitionState, ShardState};

/// How long a follower's fetch asks the leader to wait for data.
pub const REPLICA_FETCH_WAIT_MS: u32 = 500;
/// Bytes one replica fetch response may carry.
pub const REPLICA_FETCH_BYTES_MAX: u32 = 8 << 20;
/// Bytes one partition may add to it.
pub const REPLICA_FETCH_PARTITION_BYTES_MAX: u32 = 1 << 20;
/// Pause after a failed round before the next.
pub const RETRY_BACKOFF_MS: u64 = 200;
/// Time allowed for an answer beyond the wait the fetch asks for.
pub const ANSWER_TIMEOUT_MS: u64 = 5_000;

/// The leader shard a fetcher pulls from.
pub type LeaderShard = (BrokerId, usize);

/// One partition this shard follows.
#[derive(Debug, Clone)]
struct Followed {
    topic: String,
    partition: u32,
    leader_epoch: u64,
    state: Rc<PartitionState>,
}

/// Starts a fetcher for every leader shard this shard follows a partition
/// of and has none for yet. Called after each metadata change.
pub fn ensure_fetchers(shard: &Rc<ShardState>) {
    for leader in followed(shard, None).into_keys() {
        if shard.partitions.start_fetching_from(leader) {
            let shard = shard.clone();
            glommio::spawn_local(async move { run(shard, leader).await }).detach();
        }
    }
}

/// The partitions this shard follows, by leader shard; with `only`, those
/// of that leader shard alone (a fetcher's round needs no other).
fn followed(shard: &ShardState, only: Option<LeaderShard>) -> BTreeMap<LeaderShard, Vec<Followed>> {
    let metadata = shard.partitions.metadata();
    let mut by_leader: BTreeMap<LeaderShard, Vec<Followed>> = BTreeMap::new();
    let Some(view) = &metadata.cluster else {
        return by_leader;
    };
    for ((topic, partition), state) in shard.partitions.local_partitions() {
        let Role::Follower {
            leader: Some(leader),
            leader_epoch,
        } = state.replica.role()
        else {
            continue;
        };
        let replica = metadata
            .topics
            .get(&topic)
            .and_then(|t| t.replication.get(partition as usize))
            .and_then(|p| p.replicas.iter().find(|r| r.broker == leader));
        let (Some(replica), Some(info)) = (replica, view.brokers.get(&leader)) else {
            continue;
        };
        if info.shard_ports.is_empty() {
            continue;
        }
        let leader_shard = (
            leader,
            usize::from(replica.shard.0) % info.shard_ports.len(),
        );
        if only.is_some_and(|wanted| wanted != leader_shard) {
            continue;
        }
        by_leader.entry(leader_shard).or_default().push(Followed {
            topic,
            partition,
            leader_epoch,
            state,
        });
    }
    by_leader
}

/// The fetch loop for one leader shard; ends when this shard follows
/// nothing there any more, or at shutdown.
async fn run(shard: Rc<ShardState>, leader: LeaderShard) {
    tracing::info!(shard = shard.id, leader = %leader.0, leader_shard = leader.1, "replica fetcher started");
    let limits = ProtocolLimits {
        frame_bytes_max: shard.config.limits.frame_bytes_max,
        ..ProtocolLimits::default()
    };
    let mut connection: Option<PeerConnection> = None;
    let mut correlation_id = 0u32;
    // The partitions to fetch, looked up again only when the shard's
    // partitions or roles changed (not every round: that walk allocated).
    let mut followed_at: Option<(u64, Vec<Followed>)> = None;
    loop {
        if shard.shutdown.is_started() {
            break;
        }
        let generation = shard.partitions.generation();
        if followed_at.as_ref().map(|(at, _)| *at) != Some(generation) {
            followed_at = followed(&shard, Some(leader))
                .remove(&leader)
                .map(|partitions| (generation, partitions));
        }
        let Some((_, partitions)) = &followed_at else {
            break;
        };
        correlation_id = correlation_id.wrapping_add(1);
        let outcome = round(
            &shard,
            leader,
            partitions,
            &mut connection,
            correlation_id,
            &limits,
        )
        .await;
        if let Err(error) = outcome {
            connection = None;
            tracing::debug!(shard = shard.id, leader = %leader.0, %error, "replica fetch failed; retrying");
            futures_lite::future::or(
                glommio::timer::sleep(Duration::from_millis(RETRY_BACKOFF_MS)),
                shard.shutdown.wait(),
            )
            .await;
        }
    }
    shard.partitions.stop_fetching_from(leader);
    tracing::info!(shard = shard.id, leader = %leader.0, leader_shard = leader.1, "replica fetcher stopped");
}

/// One request to the leader shard and the appends of its answer.
async fn round(
    shard: &Rc<ShardState>,
    leader: LeaderShard,
    partitions: &[Followed],
    connection: &mut Option<PeerConnection>,
    correlation_id: u32,
    limits: &ProtocolLimits,
) -> Result<(), CallError> {
    if connection.is_none() {
        let (host, port) = leader_address(shard, leader)
            .ok_or_else(|| CallError::Io(format!("broker {} has no address", leader.0)))?;
        *connection = Some(PeerConnection::connect(&host, port).await?);
    }
    let Some(peer) = connection.as_mut() else {
        unreachable!("connected above");
    };
    let frame = encode_request(shard, partitions, correlation_id);
    let timeout = Duration::from_millis(u64::from(REPLICA_FETCH_WAIT_MS) + ANSWER_TIMEOUT_MS);
    let answer = peer.call(&frame, timeout, limits).await?;
    apply_answer(shard, partitions, correlation_id, answer, limits).await
}

fn leader_address(shard: &ShardState, leader: LeaderShard) -> Option<(String, u16)> {
    let metadata = shard.partitions.metadata();
    let info = metadata.cluster.as_ref()?.brokers.get(&leader.0)?;
    Some((info.host.clone(), *info.shard_ports.get(leader.1)?))
}

fn encode_request(shard: &ShardState, partitions: &[Followed], correlation_id: u32) -> Vec<u8> {
    let metadata = shard.partitions.metadata();
    let (broker, broker_epoch, cluster_id) = match &metadata.cluster {
        Some(view) => (
            view.broker,
            view.brokers.get(&view.broker).map_or(0, |b| b.broker_epoch),
            view.cluster_id.clone(),
        ),
        None => (BrokerId(shard.config.node_id), 0, String::new()),
    };
    let mut fbb = FlatBufferBuilder::with_capacity(256 + 64 * partitions.len());
    let mut entries = Vec::with_capacity(partitions.len());
    for followed in partitions {
        let log = &followed.state.log;
        let topic = fbb.create_string(&followed.topic);
        // An empty log names no epoch (a crash may have left the epochs of
        // a copy that was restarted further on).
        let empty = log.log_end_offset() == log.log_start_offset();
        let last_fetched_epoch = log
            .leader_epochs()
            .last()
            .filter(|_| !empty)
            .map_or(-1, |e| i64::from(e.epoch));
        entries.push(fb::ReplicaFetchPartition::create(
            &mut fbb,
            &fb::ReplicaFetchPartitionArgs {
                topic: Some(topic),
                partition: followed.partition,
                current_leader_epoch: followed.leader_epoch,
                fetch_offset: log.high_watermark(),
                last_fetched_epoch,
                max_bytes: REPLICA_FETCH_PARTITION_BYTES_MAX,
            },
        ));
    }
    let entries = fbb.create_vector(&entries);
    let cluster_id = fbb.create_string(&cluster_id);
    let body = fb::ReplicaFetchRequest::create(
        &mut fbb,
        &fb::ReplicaFetchRequestArgs {
            from_broker: broker.0,
            broker_epoch,
            cluster_id: Some(cluster_id),
            max_wait_ms: REPLICA_FETCH_WAIT_MS,
            max_bytes: REPLICA_FETCH_BYTES_MAX,
            partitions: Some(entries),
        },
    );
    let client_id = format!("shardlog-server {broker} shard {}", shard.id);
    protocol::request_frame(
        fbb,
        correlation_id,
        Some(&client_id),
        fb::RequestBody::ReplicaFetchRequest,
        body.as_union_value(),
    )
}

/// What one partition's answer asks of the follower, read out of the frame.
struct PartitionAnswer {
    error: Option<(fb::ErrorCode, String)>,
    high_watermark: i64,
    log_start_offset: i64,
    diverging_epoch: i64,
    diverging_end_offset: i64,
    records_bytes: usize,
    records: BytesMut,
}

async fn apply_answer(
    shard: &Rc<ShardState>,
    partitions: &[Followed],
    correlation_id: u32,
    answer: super::client::ResponseFrame,
    limits: &ProtocolLimits,
) -> Result<(), CallError> {
    let answers = read_answer(partitions, correlation_id, answer, limits)?;
    let mut appends = Vec::with_capacity(partitions.len());
    for (followed, answer) in partitions.iter().zip(answers) {
        appends.push(apply_partition(shard, followed, answer));
    }
    // Partitions append side by side; each keeps its batches' order.
    futures_util::future::join_all(appends).await;
    Ok(())
}

/// Checks the response and splits each partition's batches off the frame.
fn read_answer(
    partitions: &[Followed],
    correlation_id: u32,
    answer: super::client::ResponseFrame,
    limits: &ProtocolLimits,
) -> Result<Vec<PartitionAnswer>, CallError> {
    let super::client::ResponseFrame {
        mut bytes,
        message_bytes,
    } = answer;
    let mut payload = bytes.split_off(message_bytes);
    let mut answers = read_results(partitions, correlation_id, &bytes, limits)?;
    let wanted: usize = answers.iter().map(|a| a.records_bytes).sum();
    if wanted != payload.len() {
        return Err(CallError::Protocol(format!(
            "the results name {wanted} bytes of batches, the frame carries {}",
            payload.len()
        )));
    }
    for answer in &mut answers {
        answer.records = payload.split_to(answer.records_bytes);
    }
    Ok(answers)
}

/// The results of a verified response, in request order, with empty
/// `records` (the caller splits them off the payload by `records_bytes`).
fn read_results(
    partitions: &[Followed],
    correlation_id: u32,
    message: &[u8],
    limits: &ProtocolLimits,
) -> Result<Vec<PartitionAnswer>, CallError> {
    let bad = |m: String| CallError::Protocol(m);
    let response = protocol::verify_response(message, limits).map_err(|e| bad(e.to_string()))?;
    if response.correlation_id() != correlation_id {
        return Err(bad(format!(
            "answered request {} instead of {correlation_id}",
            response.correlation_id()
        )));
    }
    if let Some(error) = response.body_as_error_response() {
        let text = error.error_message().unwrap_or_default();
        return Err(CallError::Io(format!("{:?}: {text}", error.error_code())));
    }
    let body = response
        .body_as_replica_fetch_response()
        .ok_or_else(|| bad(format!("answered with {:?}", response.body_type())))?;
    if body.error_code() != fb::ErrorCode::None {
        let text = body.error_message().unwrap_or_default();
        return Err(CallError::Io(format!("{:?}: {text}", body.error_code())));
    }
    let results: Vec<_> = body.partitions().iter().flatten().collect();
    if results.len() != partitions.len() {
        return Err(bad(format!(
            "{} partition results for {} partitions",
            results.len(),
            partitions.len()
        )));
    }
    let mut answers = Vec::with_capacity(results.len());
    for (result, followed) in results.iter().zip(partitions) {
        if result.partition() != followed.partition
            || result.topic().unwrap_or_default() != followed.topic
        {
            return Err(bad("the results are not in request order".into()));
        }
        let error = (result.error_code() != fb::ErrorCode::None).then(|| {
            (
                result.error_code(),
                result.error_message().unwrap_or_default().to_string(),
            )
        });
        answers.push(PartitionAnswer {
            error,
            high_watermark: result.high_watermark(),
            log_start_offset: result.log_start_offset(),
            diverging_epoch: result.diverging_epoch(),
            diverging_end_offset: result.diverging_end_offset(),
            records_bytes: result.records_bytes() as usize,
            records: BytesMut::new(),
        });
    }
    Ok(answers)
}

/// Applies one partition's answer: truncation, batches, high watermark.
async fn apply_partition(shard: &ShardState, followed: &Followed, answer: PartitionAnswer) {
    let (topic, partition) = (followed.topic.as_str(), followed.partition);
    let state = &followed.state;
    if let Some((code, message)) = answer.error {
        let leader_start = u64::try_from(answer.log_start_offset).ok();
        if let Some(start) = leader_start.filter(|_| code == fb::ErrorCode::OffsetOutOfRange) {
            restart_below_leader_start(followed, start).await;
            return;
        }
        tracing::debug!(
            shard = shard.id,
            topic,
            partition,
            ?code,
            message,
            "the leader refused a partition of a replica fetch"
        );
        return;
    }
    if answer.diverging_end_offset >= 0 {
        truncate_diverged(
            followed,
            answer.diverging_epoch,
            answer.diverging_end_offset as u64,
        )
        .await;
        return;
    }
    if !answer.records.is_empty() {
        if let Err(reason) = append_batches(state, answer.records).await {
            tracing::warn!(
                shard = shard.id,
                topic,
                partition,
                reason,
                "storing replicated batches failed; fetching again"
            );
            return;
        }
    }
    if answer.high_watermark >= 0 {
        let durable_end = state.log.high_watermark();
        state
            .replica
            .follower_learned(answer.high_watermark as u64, durable_end);
    }
}

/// Cuts the follower's log where it left the leader's: at the smaller of
/// the leader's end of the epoch and the follower's own.
async fn truncate_diverged(followed: &Followed, epoch: i64, leader_end: u64) {
    let (topic, partition) = (followed.topic.as_str(), followed.partition);
    let state = &followed.state;
    let own_end = u32::try_from(epoch)
        .ok()
        .and_then(|e| state.log.end_offset_for_epoch(e))
        .filter(|(found, _)| i64::from(*found) == epoch)
        .map_or(leader_end, |(_, end)| end);
    let to = leader_end.min(own_end).max(state.log.log_start_offset());
    tracing::warn!(
        topic,
        partition,
        epoch,
        to,
        from = state.log.log_end_offset(),
        "the follower's log diverged from the new leader's: truncating"
    );
    match state.log.truncate_to(to).await {
        Ok(end) => {
            state.replica.truncated_to(end);
            if let Err(error) = state.rebuild_producers().await {
                tracing::error!(topic, partition, %error, "rebuilding producer state after a truncation failed");
            }
        }
        Err(error) => {
            tracing::error!(topic, partition, %error, "truncating a diverged follower failed")
        }
    }
}

/// The follower's copy ends below the leader's log start (retention removed
/// what it lacks): it is emptied and starts at the leader's start, as
/// Kafka's followers do. What it held lies below that start, where the
/// leader keeps nothing either.
async fn restart_below_leader_start(followed: &Followed, leader_start: u64) {
    let (topic, partition) = (followed.topic.as_str(), followed.partition);
    let state = &followed.state;
    let own_end = state.log.log_end_offset();
    if own_end >= leader_start {
        // An answer to an older fetch; the next one asks from the new end.
        return;
    }
    tracing::warn!(
        topic,
        partition,
        own_end,
        leader_start,
        "the follower's copy ends below the leader's log start: restarting it there"
    );
    match state.log.restart_at(leader_start).await {
        Ok(()) => {
            state.replica.truncated_to(leader_start);
            if let Err(error) = state.rebuild_producers().await {
                tracing::error!(topic, partition, %error, "rebuilding producer state after a restart failed");
            }
        }
        Err(error) => {
            tracing::error!(topic, partition, %error, "restarting the follower's copy failed")
        }
    }
}

/// Splits `records` into batches and appends each verbatim, in order.
async fn append_batches(state: &PartitionState, mut records: BytesMut) -> Result<(), String> {
    let limits = state.log.batch_limits();
    let mut batches = Vec::new();
    while !records.is_empty() {
        let length = peek_length_bytes(&records).map_or(0, |l| l as usize);
        if length < BATCH_HEADER_BYTES || length > records.len() {
            return Err("the leader's bytes do not split into whole batches".into());
        }
        let batch = ValidBatch::check(records.split_to(length), &limits)
            .map_err(|e| format!("a replicated batch failed its checks: {e}"))?;
        batches.push(batch);
    }
    let headers: Vec<_> = batches.iter().map(|b| *b.header()).collect();
    let appends = batches.into_iter().map(|b| state.log.append_replica(b));
    let results = futures_util::future::join_all(appends).await;
    let mut producers = state.producers.borrow_mut();
    for (header, result) in headers.iter().zip(results) {
        result.map_err(|e| e.to_string())?;
        // Idempotence survives a failover: this replica knows each
        // producer's sequences as the leader stored them.
        producers.restore(header);
    }
    Ok(())
}
