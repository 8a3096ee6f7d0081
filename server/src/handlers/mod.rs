//! One module per API. Each parses its flatbuffer into plain owned values
//! (so that no borrow of the receive buffer crosses an `.await`), does its
//! work on the shards that own the partitions, and encodes its response.
//!
//! What a handler takes: one that answers from this shard alone takes only
//! the services it reads (`metadata.rs`: the configuration, the metadata
//! copy, the metadata group, the producer ids; `raft.rs`: the
//! configuration and the group; the owner's side of produce, fetch, list
//! offsets and recover: [`Partitions`]; the
//! group calls: [`GroupService`](crate::groups::GroupService)). One that
//! routes to other shards takes the shard, because
//! [`ShardState::call`](crate::shard::ShardState::call) may serve the
//! request right here.

pub(crate) mod admin;
mod cluster_admin;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod produce;
mod raft;
mod recover;
mod replica_fetch;
mod reply;

pub use reply::{Answer, ConnectionContext, Outgoing, PayloadPart};

use std::rc::Rc;

use bytes::BytesMut;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use shardlog_wire::protocol::{self, fb};

use crate::error::WireError;
use crate::metrics::ShardGauges;

use crate::shard::messages::{ControllerCall, PartitionCall, PartitionReply};
use crate::shard::{Partitions, ShardRequest, ShardResponse, ShardState};

/// A request, parsed into owned values.
#[derive(Debug)]
pub enum Parsed {
    ApiVersions,
    Metadata(Option<Vec<String>>),
    CreateTopics(Vec<crate::shard::messages::TopicRequest>),
    DeleteTopics(Vec<String>),
    Produce(produce::ProduceParsed),
    Fetch(fetch::FetchParsed),
    ListOffsets(list_offsets::ListOffsetsParsed),
    InitProducer {
        producer_id: i64,
        producer_epoch: i16,
    },
    Group(groups::GroupParsed),
    RecoverPartitions(recover::RecoverParsed),
    Raft(raft::RaftParsed),
    ReplicaFetch(replica_fetch::ReplicaFetchParsed),
}

/// Parses a verified request. Errors carry the correlation id to answer with.
pub fn parse(
    request: fb::Request<'_>,
    message_bytes: usize,
) -> Result<(u32, Parsed), (u32, WireError)> {
    let correlation_id = request.correlation_id();
    let api = request.body_type();
    let Some(max_version) = protocol::max_version(api) else {
        let message = format!(
            "unknown API {}; this broker serves {:?}",
            api.0,
            protocol::API_VERSIONS
        );
        return Err((
            correlation_id,
            WireError::new(fb::ErrorCode::UnknownApi, message),
        ));
    };
    if request.api_version() > max_version {
        let message = format!(
            "{api:?} version {} is newer than this broker's {max_version}",
            request.api_version()
        );
        return Err((
            correlation_id,
            WireError::new(fb::ErrorCode::UnsupportedVersion, message),
        ));
    }
    let parsed = parse_body(&request, message_bytes).map_err(|e| (correlation_id, e))?;
    Ok((correlation_id, parsed))
}

fn parse_body(request: &fb::Request<'_>, message_bytes: usize) -> Result<Parsed, WireError> {
    let missing = || WireError::new(fb::ErrorCode::InvalidRequest, "the request body is missing");
    Ok(match request.body_type() {
        fb::RequestBody::ApiVersionsRequest => Parsed::ApiVersions,
        fb::RequestBody::MetadataRequest => {
            let body = request.body_as_metadata_request().ok_or_else(missing)?;
            let topics = body
                .topics()
                .filter(|t| !t.is_empty())
                .map(|t| t.iter().map(str::to_string).collect());
            Parsed::Metadata(topics)
        }
        fb::RequestBody::CreateTopicsRequest => Parsed::CreateTopics(admin::parse_create(
            request
                .body_as_create_topics_request()
                .ok_or_else(missing)?,
        )?),
        fb::RequestBody::DeleteTopicsRequest => Parsed::DeleteTopics(admin::parse_delete(
            request
                .body_as_delete_topics_request()
                .ok_or_else(missing)?,
        )),
        fb::RequestBody::ProduceRequest => Parsed::Produce(produce::parse(
            request.body_as_produce_request().ok_or_else(missing)?,
            request,
            message_bytes,
        )?),
        fb::RequestBody::FetchRequest => Parsed::Fetch(fetch::parse(
            request.body_as_fetch_request().ok_or_else(missing)?,
        )?),
        fb::RequestBody::ListOffsetsRequest => Parsed::ListOffsets(list_offsets::parse(
            request.body_as_list_offsets_request().ok_or_else(missing)?,
        )?),
        fb::RequestBody::InitProducerRequest => {
            let body = request
                .body_as_init_producer_request()
                .ok_or_else(missing)?;
            Parsed::InitProducer {
                producer_id: body.producer_id(),
                producer_epoch: body.producer_epoch(),
            }
        }
        fb::RequestBody::RecoverPartitionsRequest => Parsed::RecoverPartitions(recover::parse(
            request
                .body_as_recover_partitions_request()
                .ok_or_else(missing)?,
        )?),
        fb::RequestBody::RaftRequest => Parsed::Raft(raft::parse(
            request.body_as_raft_request().ok_or_else(missing)?,
        )),
        fb::RequestBody::ReplicaFetchRequest => Parsed::ReplicaFetch(replica_fetch::parse(
            request
                .body_as_replica_fetch_request()
                .ok_or_else(missing)?,
        )?),
        _ => Parsed::Group(groups::parse(request)?),
    })
}

/// Handles a parsed request; `frame` is the request's body buffer (produce carves its batches from it).
pub async fn handle(
    shard: &Rc<ShardState>,
    context: &ConnectionContext,
    correlation_id: u32,
    request: Parsed,
    frame: BytesMut,
) -> Answer {
    match request {
        Parsed::Fetch(fetch) => fetch::handle(shard, context, correlation_id, fetch).await,
        Parsed::ReplicaFetch(fetch) => {
            replica_fetch::handle(shard, context, correlation_id, fetch).await
        }
        Parsed::Produce(produce) => produce::handle(shard, correlation_id, produce, frame)
            .await
            .into(),
        Parsed::ApiVersions => metadata::api_versions(correlation_id).into(),
        Parsed::Metadata(topics) => {
            let snapshot = shard.partitions.metadata();
            let cluster = shard.cluster.as_ref();
            metadata::metadata(&shard.config, cluster, &snapshot, correlation_id, topics).into()
        }
        Parsed::CreateTopics(topics) => admin::create_topics(shard, correlation_id, topics)
            .await
            .into(),
        Parsed::DeleteTopics(names) => admin::delete_topics(shard, correlation_id, names)
            .await
            .into(),
        Parsed::ListOffsets(request) => list_offsets::handle(shard, correlation_id, request)
            .await
            .into(),
        Parsed::Group(request) => groups::handle(shard, correlation_id, request).await.into(),
        Parsed::RecoverPartitions(request) => {
            recover::handle(shard, correlation_id, request).await.into()
        }
        Parsed::Raft(request) => {
            let cluster = shard.cluster.as_ref();
            raft::handle(&shard.config, cluster, correlation_id, request)
                .await
                .into()
        }
        Parsed::InitProducer {
            producer_id,
            producer_epoch,
        } => {
            let ids = &shard.producer_ids;
            metadata::init_producer(ids, correlation_id, producer_id, producer_epoch).into()
        }
    }
}

/// [`serve_shard_request`] as the shard's [`crate::shard::Serve`].
pub fn serve_boxed(
    shard: Rc<ShardState>,
    request: ShardRequest,
) -> futures_util::future::LocalBoxFuture<'static, ShardResponse> {
    Box::pin(async move { serve_shard_request(&shard, request).await })
}

/// Serves work another shard (or this one) asked of this shard.
pub async fn serve_shard_request(shard: &Rc<ShardState>, request: ShardRequest) -> ShardResponse {
    if shard.shutdown.is_started()
        && !matches!(
            request,
            ShardRequest::ApplyMetadata(_) | ShardRequest::Metrics
        )
    {
        return ShardResponse::Unavailable;
    }
    match request {
        ShardRequest::Partition(call) => {
            ShardResponse::Partition(serve_partition(&shard.partitions, call).await)
        }
        ShardRequest::Controller(ControllerCall::CreateTopics(topics)) => {
            ShardResponse::Topics(admin::create_on_controller(shard, topics).await)
        }
        ShardRequest::Controller(ControllerCall::DeleteTopics(names)) => {
            ShardResponse::Topics(admin::delete_on_controller(shard, names).await)
        }
        ShardRequest::Metrics => ShardResponse::Metrics(shard.metrics.render(ShardGauges {
            id: shard.id,
            connections: shard.connections.get(),
            memory_available_bytes: shard.memory.available(),
            storage: &shard.partitions.storage,
            partitions: shard.partitions.local_partitions(),
        })),
        ShardRequest::Group(call) => ShardResponse::Group(groups::serve(shard, call).await),
        ShardRequest::ApplyMetadata(metadata) => {
            let applied = shard.apply_metadata(metadata).await;
            crate::replication::after_metadata(shard);
            if let Err(error) = &applied {
                tracing::error!(shard = shard.id, %error, "applying metadata failed");
            }
            ShardResponse::Applied(applied.map_err(|e| format!("shard {}: {e}", shard.id)))
        }
    }
}

/// The partitions service's side of a [`PartitionCall`]: it takes only the
/// shard's partitions.
async fn serve_partition(partitions: &Partitions, call: PartitionCall) -> PartitionReply {
    match call {
        PartitionCall::Produce {
            topic,
            partition,
            batches,
            acks,
            wait_ms,
        } => {
            let wait = std::time::Duration::from_millis(wait_ms);
            let appended =
                produce::append_local(partitions, &topic, partition, batches, acks, wait);
            PartitionReply::Produce(appended.await)
        }
        PartitionCall::Fetch {
            topic,
            partition,
            offset,
            limit,
        } => PartitionReply::Fetch(
            fetch::read_for_remote(partitions, &topic, partition, offset, limit).await,
        ),
        PartitionCall::Watch {
            topic,
            partition,
            offset,
            wait_ms,
        } => {
            if let Some(state) = partitions.partition(&topic, partition) {
                state
                    .wait_for_data(offset, std::time::Duration::from_millis(wait_ms))
                    .await;
            }
            PartitionReply::Watched
        }
        PartitionCall::ListOffsets {
            topic,
            partition,
            spec,
            timestamp_ms,
        } => PartitionReply::ListOffsets(
            list_offsets::lookup_local(partitions, &topic, partition, spec, timestamp_ms).await,
        ),
        PartitionCall::Recover { topic, partition } => {
            PartitionReply::Recovered(recover::recover_local(partitions, &topic, partition).await)
        }
    }
}

/// The high watermark of a partition, from its owner.
pub(crate) async fn latest_offset(
    shard: &Rc<ShardState>,
    topic: &str,
    partition: u32,
) -> Option<i64> {
    list_offsets::lookup(shard, topic, partition, fb::OffsetSpec::Latest, 0)
        .await
        .ok()
        .map(|o| o.offset)
}

/// Finishes a response flatbuffer.
pub(crate) fn finish(
    mut fbb: FlatBufferBuilder<'_>,
    correlation_id: u32,
    body_type: fb::ResponseBody,
    body: WIPOffset<UnionWIPOffset>,
) -> Vec<u8> {
    let response = fb::Response::create(
        &mut fbb,
        &fb::ResponseArgs {
            correlation_id,
            body_type,
            body: Some(body),
        },
    );
    fbb.finish(response, None);
    fbb.finished_data().to_vec()
}

/// A response carrying only an error.
pub fn error_response(correlation_id: u32, error: &WireError) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let message = fbb.create_string(&error.message);
    let body = fb::ErrorResponse::create(
        &mut fbb,
        &fb::ErrorResponseArgs {
            error_code: error.code,
            error_message: Some(message),
        },
    );
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::ErrorResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}

/// Splits an error into the pieces a result table wants.
pub(crate) fn error_parts<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    error: Option<&WireError>,
) -> (fb::ErrorCode, Option<WIPOffset<&'a str>>) {
    match error {
        Some(error) => (error.code, Some(fbb.create_string(&error.message))),
        None => (fb::ErrorCode::None, None),
    }
}
