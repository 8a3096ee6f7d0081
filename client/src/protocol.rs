//! Requests and responses as plain values, and their frames.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use shardlog_wire::protocol::{
    encode_prefix, fb, verify_response, ProtocolLimits, FRAME_PREFIX_BYTES,
};

pub use shardlog_wire::protocol::fb::{Acks, OffsetSpec};

use crate::{BrokerError, Error};

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// Its name.
    pub name: String,
    /// Its number of partitions.
    pub partitions: u32,
    /// Retention by size (None: the broker's default).
    pub retention_bytes: Option<u64>,
    /// Retention by age (None: the broker's default).
    pub retention_ms: Option<u64>,
    /// Segment size (None: the broker's default).
    pub segment_bytes: Option<u64>,
    /// Copies of each partition, on as many brokers (None: 1).
    pub replication_factor: Option<u16>,
    /// Replicas in sync that an `acks=all` produce needs (None: 1).
    pub min_insync_replicas: Option<u16>,
    /// Let a replica outside the ISR lead when no ISR member is alive:
    /// availability over durability, acknowledged records may be lost (off by default).
    pub unclean_leader_election: bool,
}

impl NewTopic {
    /// A topic with the broker's default settings.
    pub fn new(name: impl Into<String>, partitions: u32) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            retention_bytes: None,
            retention_ms: None,
            segment_bytes: None,
            replication_factor: None,
            min_insync_replicas: None,
            unclean_leader_election: false,
        }
    }
}

/// What to fetch from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The first offset wanted.
    pub offset: u64,
    /// The most bytes wanted from this partition.
    pub max_bytes: u32,
}

/// A request, as plain values.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Request {
    /// The APIs and versions the broker serves.
    ApiVersions,
    /// Brokers, topics and placement (empty: every topic).
    Metadata(Vec<String>),
    /// Create topics.
    CreateTopics(Vec<NewTopic>),
    /// Delete topics.
    DeleteTopics(Vec<String>),
    /// Append encoded batches: (topic, partition, batches back to back).
    Produce {
        /// When the broker answers.
        acks: Acks,
        /// The longest the broker may take.
        timeout_ms: u32,
        /// The data.
        partitions: Vec<(String, u32, Bytes)>,
    },
    /// Read batches.
    Fetch {
        /// The longest to wait for `min_bytes`.
        max_wait_ms: u32,
        /// Answer as soon as this many bytes are there.
        min_bytes: u32,
        /// The most bytes in the response.
        max_bytes: u32,
        /// The partitions.
        partitions: Vec<FetchPartition>,
    },
    /// Look up offsets: (topic, partition, spec, timestamp for `Timestamp`).
    ListOffsets(Vec<(String, u32, OffsetSpec, i64)>),
    /// Get a producer id (-1), or bump the epoch of one.
    InitProducer {
        /// -1 for a new producer.
        producer_id: i64,
        /// The current epoch, or -1.
        producer_epoch: i16,
    },
    /// Join (epoch 0), stay in (the last epoch) or leave (-1) a consumer group.
    GroupHeartbeat {
        /// The group.
        group_id: String,
        /// Empty to join.
        member_id: String,
        /// 0 to join, -1 to leave, else the epoch last received.
        member_epoch: i32,
        /// The topics to consume (None: unchanged).
        subscribed_topics: Option<Vec<String>>,
        /// What the member consumes now.
        owned: Vec<(String, u32)>,
        /// The member is dropped after this long without a heartbeat.
        session_timeout_ms: u32,
        /// "sticky" or "range" (used when the group is created).
        assignor: String,
    },
    /// Commit the next offsets to consume.
    OffsetCommit {
        /// The group.
        group_id: String,
        /// The committing member (empty: from outside an empty group).
        member_id: String,
        /// ((topic, partition), offset).
        offsets: Vec<((String, u32), i64)>,
    },
    /// Committed offsets (None: every committed partition).
    OffsetFetch {
        /// The group.
        group_id: String,
        /// The partitions.
        partitions: Option<Vec<(String, u32)>>,
    },
    /// Every group.
    ListGroups,
    /// Members, assignments, committed offsets and log end offsets of groups.
    DescribeGroups(Vec<String>),
    /// Delete an empty group and its offsets.
    DeleteGroup(String),
    /// Set an empty group's offsets for every partition of a topic.
    ResetOffsets {
        /// The group.
        group_id: String,
        /// The topic.
        topic: String,
        /// Earliest, latest or by timestamp (ignored with `to_offset`).
        spec: OffsetSpec,
        /// The timestamp for `Timestamp`.
        timestamp_ms: i64,
        /// Reset every partition to this offset instead.
        to_offset: Option<i64>,
    },
    /// Bring poisoned partitions of a topic back (empty: every partition).
    RecoverPartitions {
        /// The topic.
        topic: String,
        /// The partitions.
        partitions: Vec<u32>,
    },
}

/// One partition's outcome of [`Request::RecoverPartitions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredPartition {
    /// The partition.
    pub partition: u32,
    /// The broker's error, if the partition could not be recovered.
    pub error: Option<BrokerError>,
    /// Whether it was poisoned (false: nothing to do).
    pub was_poisoned: bool,
    /// Its log end offset after recovery.
    pub log_end_offset: i64,
    /// Unsynced bytes that failed validation and were cut.
    pub cut_bytes: u64,
}

/// A committed offset, with what DescribeGroups adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset (-1: none).
    pub offset: i64,
    /// The partition's high watermark (DescribeGroups; else -1).
    pub log_end_offset: i64,
    /// The member the partition is assigned to (DescribeGroups; else empty).
    pub member_id: String,
}

/// A member as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The member id.
    pub member_id: String,
    /// Its epoch.
    pub member_epoch: i32,
    /// Its subscription.
    pub subscribed_topics: Vec<String>,
    /// What it consumes now.
    pub assignment: Vec<(String, u32)>,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group.
    pub group_id: String,
    /// The broker's error for this group.
    pub error: Option<BrokerError>,
    /// "empty", "stable" or "reconciling".
    pub state: String,
    /// The assignor.
    pub assignor: String,
    /// Members.
    pub members: Vec<MemberDescription>,
    /// Per assigned or committed partition.
    pub offsets: Vec<CommittedOffset>,
}

/// A partition's data in a fetch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The broker's error for this partition.
    pub error: Option<BrokerError>,
    /// The high watermark.
    pub high_watermark: i64,
    /// The log start offset.
    pub log_start_offset: i64,
    /// Whole batches, back to back (a slice of the response, not a copy).
    pub records: Bytes,
}

/// A per-partition result of produce or list-offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionResult {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The broker's error for this partition.
    pub error: Option<BrokerError>,
    /// Produce: base offset of the first batch. ListOffsets: the offset.
    pub offset: i64,
    /// The log start offset.
    pub log_start_offset: i64,
    /// ListOffsets: the high watermark (-1 for produce).
    pub high_watermark: i64,
    /// ListOffsets: how the partition's log is doing (online for produce).
    pub status: fb::PartitionStatus,
    /// Why it is not online (empty when it is).
    pub status_message: String,
    /// ListOffsets answered by a partition's leader: each follower's lag
    /// (empty otherwise).
    pub replica_lags: Vec<ReplicaLag>,
}

/// How far one follower is behind its partition's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLag {
    /// The follower broker.
    pub broker: u32,
    /// Offsets behind the leader's durable end.
    pub lag_offsets: u64,
    /// About how many bytes those offsets hold (to within one index interval).
    pub lag_bytes: u64,
}

/// A topic as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The name.
    pub name: String,
    /// The broker's error for this topic.
    pub error: Option<BrokerError>,
    /// The owning shard of each partition.
    pub partition_shards: Vec<u16>,
    /// Each partition's leader, replicas, ISR and leader epoch.
    pub leadership: Vec<PartitionLeadership>,
}

/// Who leads a partition and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLeadership {
    /// The leader broker; `None` when no replica may lead now.
    pub leader: Option<u32>,
    /// The brokers holding a replica, the preferred leader first.
    pub replicas: Vec<u32>,
    /// The in-sync replicas.
    pub isr: Vec<u32>,
    /// Grows with every leader change.
    pub leader_epoch: u64,
}

/// One broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDescription {
    /// Its id (`--node-id`).
    pub id: u32,
    /// Its host.
    pub host: String,
    /// Its shared port.
    pub port: u16,
    /// Each shard's own port.
    pub shard_ports: Vec<u16>,
    /// False when the controller fenced it.
    pub alive: bool,
}

/// Brokers and topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    /// Host of the broker.
    pub host: String,
    /// Its shared port.
    pub port: u16,
    /// Each shard's own port.
    pub shard_ports: Vec<u16>,
    /// The topics asked for.
    pub topics: Vec<TopicDescription>,
    /// Every broker of the cluster (the one broker, when it is not clustered).
    pub brokers: Vec<BrokerDescription>,
    /// The controller as the answering broker knows it; `None` when the cluster has none now.
    pub controller_id: Option<u32>,
    /// The answering broker's Raft term (0 when it is not clustered).
    pub raft_term: u64,
    /// The metadata revision the answer was made from.
    pub metadata_revision: u64,
    /// The cluster's id (empty when not clustered or not named yet).
    pub cluster_id: String,
    /// The broker that answered.
    pub answered_by: u32,
}

/// A response, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// (api, min, max) per API.
    ApiVersions(Vec<(u16, u16, u16)>),
    /// Metadata (boxed: it is the largest answer by far).
    Metadata(Box<ClusterDescription>),
    /// CreateTopics or DeleteTopics: (name, error) per topic.
    Topics(Vec<(String, Option<BrokerError>)>),
    /// Produce results.
    Produce(Vec<PartitionResult>),
    /// Fetch results.
    Fetch(Vec<FetchedPartition>),
    /// ListOffsets results.
    ListOffsets(Vec<PartitionResult>),
    /// A producer id and epoch.
    InitProducer {
        /// The id.
        producer_id: i64,
        /// The epoch.
        producer_epoch: i16,
    },
    /// An error not tied to one API (malformed frame, unknown API, ...).
    Error(BrokerError),
    /// A member's identity and what it may consume now.
    GroupHeartbeat {
        /// The member id (assigned on join).
        member_id: String,
        /// The member's epoch.
        member_epoch: i32,
        /// How often to heartbeat.
        heartbeat_interval_ms: u32,
        /// The partitions to consume now.
        assignment: Vec<(String, u32)>,
    },
    /// A commit, a group deletion: done.
    Done,
    /// Committed offsets (OffsetFetch, ResetOffsets).
    Offsets(Vec<CommittedOffset>),
    /// (group, state, members) of every group.
    Groups(Vec<(String, String, u32)>),
    /// DescribeGroups.
    GroupDescriptions(Vec<GroupDescription>),
    /// RecoverPartitions: one result per partition.
    Recovered(Vec<RecoveredPartition>),
}

fn broker_error(code: fb::ErrorCode, message: Option<&str>) -> Option<BrokerError> {
    (code != fb::ErrorCode::None).then(|| BrokerError {
        code,
        message: message.unwrap_or_default().to_string(),
    })
}

/// Bytes a request's flatbuffer needs besides its batches, with room to spare.
const REQUEST_OVERHEAD_BYTES: usize = 1024;

/// A guess of a request's encoded size: the builder is sized once instead
/// of doubling (a copy and a zero-fill each time) under a large batch.
fn request_size_hint(request: &Request) -> usize {
    match request {
        Request::Produce { partitions, .. } => partitions
            .iter()
            .map(|(topic, _, batches)| batches.len() + topic.len() + 64)
            .sum::<usize>()
            .saturating_add(REQUEST_OVERHEAD_BYTES),
        _ => REQUEST_OVERHEAD_BYTES,
    }
}

/// Encodes a request as a whole frame, prefix included. The prefix goes in
/// front of the flatbuffer in the builder's own buffer: no copy of the message.
pub fn encode_request(correlation_id: u32, request: &Request) -> Bytes {
    let mut fbb = FlatBufferBuilder::with_capacity(request_size_hint(request) + FRAME_PREFIX_BYTES);
    let (body_type, body) = encode_body(&mut fbb, request);
    let args = fb::RequestArgs {
        correlation_id,
        api_version: 0,
        client_id: None,
        body_type,
        body: Some(body),
    };
    let root = fb::Request::create(&mut fbb, &args);
    fbb.finish(root, None);
    let (mut buffer, head) = fbb.collapse();
    let message_len = buffer.len() - head;
    let prefix = encode_prefix(message_len, 0);
    if head < FRAME_PREFIX_BYTES {
        // The guess fell short and the builder grew to exactly its content.
        let mut frame = Vec::with_capacity(FRAME_PREFIX_BYTES + message_len);
        frame.extend_from_slice(&prefix);
        frame.extend_from_slice(&buffer[head..]);
        return Bytes::from(frame);
    }
    let start = head - FRAME_PREFIX_BYTES;
    buffer[start..head].copy_from_slice(&prefix);
    Bytes::from(buffer).slice(start..)
}

fn encode_body<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    request: &Request,
) -> (fb::RequestBody, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match request {
        Request::ApiVersions => {
            let body = fb::ApiVersionsRequest::create(
                fbb,
                &fb::ApiVersionsRequestArgs {
                    client_software: None,
                },
            );
            (fb::RequestBody::ApiVersionsRequest, body.as_union_value())
        }
        Request::Metadata(topics) => {
            let names: Vec<_> = topics.iter().map(|t| fbb.create_string(t)).collect();
            let topics = fbb.create_vector(&names);
            let body = fb::MetadataRequest::create(
                fbb,
                &fb::MetadataRequestArgs {
                    topics: Some(topics),
                },
            );
            (fb::RequestBody::MetadataRequest, body.as_union_value())
        }
        Request::CreateTopics(topics) => {
            let specs: Vec<_> = topics
                .iter()
                .map(|t| {
                    let name = fbb.create_string(&t.name);
                    let signed = |v: Option<u64>| v.map_or(-1, |v| v as i64);
                    // Too large for the wire: the broker refuses the maximum.
                    let short =
                        |v: Option<u16>| v.map_or(-1, |v| i16::try_from(v).unwrap_or(i16::MAX));
                    let args = fb::TopicSpecArgs {
                        name: Some(name),
                        partitions: t.partitions,
                        retention_bytes: signed(t.retention_bytes),
                        retention_ms: signed(t.retention_ms),
                        segment_bytes: signed(t.segment_bytes),
                        replication_factor: short(t.replication_factor),
                        min_insync_replicas: short(t.min_insync_replicas),
                        unclean_leader_election: t.unclean_leader_election,
                    };
                    fb::TopicSpec::create(fbb, &args)
                })
                .collect();
            let topics = fbb.create_vector(&specs);
            let body = fb::CreateTopicsRequest::create(
                fbb,
                &fb::CreateTopicsRequestArgs {
                    topics: Some(topics),
                },
            );
            (fb::RequestBody::CreateTopicsRequest, body.as_union_value())
        }
        Request::DeleteTopics(names) => {
            let names: Vec<_> = names.iter().map(|t| fbb.create_string(t)).collect();
            let names = fbb.create_vector(&names);
            let body = fb::DeleteTopicsRequest::create(
                fbb,
                &fb::DeleteTopicsRequestArgs { names: Some(names) },
            );
            (fb::RequestBody::DeleteTopicsRequest, body.as_union_value())
        }
        Request::Produce {
            acks,
            timeout_ms,
            partitions,
        } => encode_produce(fbb, *acks, *timeout_ms, partitions),
        Request::Fetch {
            max_wait_ms,
            min_bytes,
            max_bytes,
            partitions,
        } => {
            let topics = group_by_topic(partitions.iter().map(|p| (p.topic.as_str(), p)));
            let topic_offsets: Vec<_> = topics
                .iter()
                .map(|(topic, parts)| {
                    let entries: Vec<_> = parts
                        .iter()
                        .map(|p| {
                            fb::FetchPartition::create(
                                fbb,
                                &fb::FetchPartitionArgs {
                                    partition: p.partition,
                                    offset: p.offset,
                                    max_bytes: p.max_bytes,
                                },
                            )
                        })
                        .collect();
                    let partitions = fbb.create_vector(&entries);
                    let topic = fbb.create_string(topic);
                    fb::FetchTopic::create(
                        fbb,
                        &fb::FetchTopicArgs {
                            topic: Some(topic),
                            partitions: Some(partitions),
                        },
                    )
                })
                .collect();
            let topics = fbb.create_vector(&topic_offsets);
            let args = fb::FetchRequestArgs {
                max_wait_ms: *max_wait_ms,
                min_bytes: *min_bytes,
                max_bytes: *max_bytes,
                topics: Some(topics),
            };
            (
                fb::RequestBody::FetchRequest,
                fb::FetchRequest::create(fbb, &args).as_union_value(),
            )
        }
        Request::ListOffsets(queries) => {
            let topics = group_by_topic(queries.iter().map(|q| (q.0.as_str(), q)));
            let topic_offsets: Vec<_> = topics
                .iter()
                .map(|(topic, parts)| {
                    let entries: Vec<_> = parts
                        .iter()
                        .map(|(_, partition, spec, timestamp_ms)| {
                            let args = fb::ListOffsetsPartitionArgs {
                                partition: *partition,
                                spec: *spec,
                                timestamp_ms: *timestamp_ms,
                            };
                            fb::ListOffsetsPartition::create(fbb, &args)
                        })
                        .collect();
                    let partitions = fbb.create_vector(&entries);
                    let topic = fbb.create_string(topic);
                    fb::ListOffsetsTopic::create(
                        fbb,
                        &fb::ListOffsetsTopicArgs {
                            topic: Some(topic),
                            partitions: Some(partitions),
                        },
                    )
                })
                .collect();
            let topics = fbb.create_vector(&topic_offsets);
            let body = fb::ListOffsetsRequest::create(
                fbb,
                &fb::ListOffsetsRequestArgs {
                    topics: Some(topics),
                },
            );
            (fb::RequestBody::ListOffsetsRequest, body.as_union_value())
        }
        Request::GroupHeartbeat { .. }
        | Request::OffsetCommit { .. }
        | Request::OffsetFetch { .. }
        | Request::ListGroups
        | Request::DescribeGroups(_)
        | Request::DeleteGroup(_)
        | Request::ResetOffsets { .. } => encode_group_body(fbb, request),
        Request::RecoverPartitions { topic, partitions } => {
            let topic = fbb.create_string(topic);
            let partitions = fbb.create_vector(partitions);
            let args = fb::RecoverPartitionsRequestArgs {
                topic: Some(topic),
                partitions: Some(partitions),
            };
            (
                fb::RequestBody::RecoverPartitionsRequest,
                fb::RecoverPartitionsRequest::create(fbb, &args).as_union_value(),
            )
        }
        Request::InitProducer {
            producer_id,
            producer_epoch,
        } => {
            let args = fb::InitProducerRequestArgs {
                producer_id: *producer_id,
                producer_epoch: *producer_epoch,
            };
            (
                fb::RequestBody::InitProducerRequest,
                fb::InitProducerRequest::create(fbb, &args).as_union_value(),
            )
        }
    }
}

fn encode_produce<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    acks: Acks,
    timeout_ms: u32,
    partitions: &[(String, u32, Bytes)],
) -> (fb::RequestBody, WIPOffset<flatbuffers::UnionWIPOffset>) {
    let topics = group_by_topic(partitions.iter().map(|p| (p.0.as_str(), p)));
    let topic_offsets: Vec<_> = topics
        .iter()
        .map(|(topic, parts)| {
            let entries: Vec<_> = parts
                .iter()
                .map(|(_, partition, batches)| {
                    let batches = fbb.create_vector(batches.as_ref());
                    fb::PartitionData::create(
                        fbb,
                        &fb::PartitionDataArgs {
                            partition: *partition,
                            batches: Some(batches),
                        },
                    )
                })
                .collect();
            let partitions = fbb.create_vector(&entries);
            let topic = fbb.create_string(topic);
            fb::TopicData::create(
                fbb,
                &fb::TopicDataArgs {
                    topic: Some(topic),
                    partitions: Some(partitions),
                },
            )
        })
        .collect();
    let topics = fbb.create_vector(&topic_offsets);
    let body = fb::ProduceRequest::create(
        fbb,
        &fb::ProduceRequestArgs {
            acks,
            timeout_ms,
            topics: Some(topics),
        },
    );
    (fb::RequestBody::ProduceRequest, body.as_union_value())
}

/// Groups items by topic, keeping first-seen order.
fn group_by_topic<'t, T>(items: impl Iterator<Item = (&'t str, T)>) -> Vec<(&'t str, Vec<T>)> {
    let mut groups: Vec<(&str, Vec<T>)> = Vec::new();
    for (topic, item) in items {
        match groups.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, list)) => list.push(item),
            None => groups.push((topic, vec![item])),
        }
    }
    groups
}

/// Decodes a frame body (everything after the prefix) into a response.
///
/// # Errors
/// [`Error::Protocol`] when the flatbuffer does not verify or the payload
/// sizes do not add up.
pub fn decode_response(
    body: Bytes,
    message_bytes: usize,
    limits: &ProtocolLimits,
) -> Result<(u32, Response), Error> {
    let message = body
        .get(..message_bytes)
        .ok_or_else(|| Error::Protocol("message longer than frame".into()))?;
    let response = verify_response(message, limits).map_err(|e| Error::Protocol(e.to_string()))?;
    let payload = body.slice(message_bytes..);
    let decoded = decode_body(&response, payload)?;
    Ok((response.correlation_id(), decoded))
}

fn decode_body(response: &fb::Response<'_>, payload: Bytes) -> Result<Response, Error> {
    let missing = || Error::Protocol(format!("{:?} without a body", response.body_type()));
    Ok(match response.body_type() {
        fb::ResponseBody::ApiVersionsResponse => {
            let body = response
                .body_as_api_versions_response()
                .ok_or_else(missing)?;
            Response::ApiVersions(
                body.apis()
                    .iter()
                    .flatten()
                    .map(|r| (r.api(), r.min_version(), r.max_version()))
                    .collect(),
            )
        }
        fb::ResponseBody::MetadataResponse => Response::Metadata(Box::new(decode_metadata(
            response.body_as_metadata_response().ok_or_else(missing)?,
        ))),
        fb::ResponseBody::CreateTopicsResponse => {
            let body = response
                .body_as_create_topics_response()
                .ok_or_else(missing)?;
            Response::Topics(decode_topic_results(body.results()))
        }
        fb::ResponseBody::DeleteTopicsResponse => {
            let body = response
                .body_as_delete_topics_response()
                .ok_or_else(missing)?;
            Response::Topics(decode_topic_results(body.results()))
        }
        fb::ResponseBody::ProduceResponse => {
            let body = response.body_as_produce_response().ok_or_else(missing)?;
            let mut results = Vec::new();
            for topic in body.topics().iter().flatten() {
                for p in topic.partitions().iter().flatten() {
                    results.push(PartitionResult {
                        topic: topic.topic().unwrap_or_default().to_string(),
                        partition: p.partition(),
                        error: broker_error(p.error_code(), p.error_message()),
                        offset: p.base_offset(),
                        log_start_offset: p.log_start_offset(),
                        high_watermark: -1,
                        status: fb::PartitionStatus::Online,
                        status_message: String::new(),
                        replica_lags: Vec::new(),
                    });
                }
            }
            Response::Produce(results)
        }
        fb::ResponseBody::FetchResponse => Response::Fetch(decode_fetch(
            response.body_as_fetch_response().ok_or_else(missing)?,
            payload,
        )?),
        fb::ResponseBody::ListOffsetsResponse => {
            let body = response
                .body_as_list_offsets_response()
                .ok_or_else(missing)?;
            let mut results = Vec::new();
            for topic in body.topics().iter().flatten() {
                for p in topic.partitions().iter().flatten() {
                    results.push(PartitionResult {
                        topic: topic.topic().unwrap_or_default().to_string(),
                        partition: p.partition(),
                        error: broker_error(p.error_code(), p.error_message()),
                        offset: p.offset(),
                        log_start_offset: p.log_start_offset(),
                        high_watermark: p.high_watermark(),
                        status: p.status(),
                        status_message: p.status_message().unwrap_or_default().to_string(),
                        replica_lags: p
                            .replica_lags()
                            .iter()
                            .flatten()
                            .map(|lag| ReplicaLag {
                                broker: lag.broker(),
                                lag_offsets: lag.lag_offsets(),
                                lag_bytes: lag.lag_bytes(),
                            })
                            .collect(),
                    });
                }
            }
            Response::ListOffsets(results)
        }
        fb::ResponseBody::InitProducerResponse => {
            let body = response
                .body_as_init_producer_response()
                .ok_or_else(missing)?;
            if let Some(error) = broker_error(body.error_code(), body.error_message()) {
                return Ok(Response::Error(error));
            }
            Response::InitProducer {
                producer_id: body.producer_id(),
                producer_epoch: body.producer_epoch(),
            }
        }
        fb::ResponseBody::GroupHeartbeatResponse
        | fb::ResponseBody::OffsetCommitResponse
        | fb::ResponseBody::OffsetFetchResponse
        | fb::ResponseBody::ListGroupsResponse
        | fb::ResponseBody::DescribeGroupsResponse
        | fb::ResponseBody::DeleteGroupResponse
        | fb::ResponseBody::ResetOffsetsResponse => decode_group_body(response)?,
        fb::ResponseBody::RecoverPartitionsResponse => {
            let body = response
                .body_as_recover_partitions_response()
                .ok_or_else(missing)?;
            if let Some(error) = broker_error(body.error_code(), body.error_message()) {
                return Ok(Response::Error(error));
            }
            let results = body.results();
            let results = results.iter().flatten().map(|r| RecoveredPartition {
                partition: r.partition(),
                error: broker_error(r.error_code(), r.error_message()),
                was_poisoned: r.was_poisoned(),
                log_end_offset: r.log_end_offset(),
                cut_bytes: u64::try_from(r.cut_bytes()).unwrap_or(0),
            });
            Response::Recovered(results.collect())
        }
        fb::ResponseBody::ErrorResponse => {
            let body = response.body_as_error_response().ok_or_else(missing)?;
            Response::Error(BrokerError {
                code: body.error_code(),
                message: body.error_message().unwrap_or_default().to_string(),
            })
        }
        other => {
            return Err(Error::Protocol(format!(
                "unknown response type {}",
                other.0
            )))
        }
    })
}

/// (name, error) per topic of a CreateTopics or DeleteTopics response.
fn decode_topic_results(
    results: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::TopicResult<'_>>>>,
) -> Vec<(String, Option<BrokerError>)> {
    let results = results.iter().flatten();
    results
        .map(|r| {
            (
                r.name().unwrap_or_default().to_string(),
                broker_error(r.error_code(), r.error_message()),
            )
        })
        .collect()
}

fn decode_leadership(p: fb::PartitionInfo<'_>) -> PartitionLeadership {
    let ids =
        |v: Option<flatbuffers::Vector<'_, u32>>| v.map(|v| v.iter().collect()).unwrap_or_default();
    PartitionLeadership {
        leader: p.has_leader().then(|| p.leader_broker()),
        replicas: ids(p.replicas()),
        isr: ids(p.isr()),
        leader_epoch: p.leader_epoch(),
    }
}

fn decode_brokers(body: &fb::MetadataResponse<'_>) -> Vec<BrokerDescription> {
    body.brokers()
        .iter()
        .flatten()
        .map(|b| BrokerDescription {
            id: b.broker_id(),
            host: b.host().unwrap_or_default().to_string(),
            port: b.port(),
            shard_ports: b
                .shard_ports()
                .map(|p| p.iter().collect())
                .unwrap_or_default(),
            alive: b.state() != fb::BrokerState::Fenced,
        })
        .collect()
}

fn decode_metadata(body: fb::MetadataResponse<'_>) -> ClusterDescription {
    let answered_by = body.answered_by();
    // The answering broker's own entry: its shard ports are where this connection's shards are.
    let brokers_list = body.brokers();
    let broker = brokers_list
        .iter()
        .flatten()
        .find(|b| b.broker_id() == answered_by)
        .or_else(|| brokers_list.and_then(|b| b.iter().next()));
    let topics = body
        .topics()
        .iter()
        .flatten()
        .map(|t| TopicDescription {
            name: t.name().unwrap_or_default().to_string(),
            error: broker_error(t.error_code(), t.error_message()),
            partition_shards: t
                .partitions()
                .iter()
                .flatten()
                .map(|p| p.leader_shard())
                .collect(),
            leadership: t
                .partitions()
                .iter()
                .flatten()
                .map(decode_leadership)
                .collect(),
        })
        .collect();
    ClusterDescription {
        brokers: decode_brokers(&body),
        controller_id: u32::try_from(body.controller_id()).ok(),
        raft_term: body.raft_term(),
        metadata_revision: body.metadata_revision(),
        cluster_id: body.cluster_id().unwrap_or_default().to_string(),
        answered_by,
        host: broker
            .and_then(|b| b.host())
            .unwrap_or_default()
            .to_string(),
        port: broker.map_or(0, |b| b.port()),
        shard_ports: broker
            .and_then(|b| b.shard_ports())
            .map(|p| p.iter().collect())
            .unwrap_or_default(),
        topics,
    }
}

fn decode_fetch(
    body: fb::FetchResponse<'_>,
    payload: Bytes,
) -> Result<Vec<FetchedPartition>, Error> {
    let mut results = Vec::new();
    let mut at = 0usize;
    for topic in body.topics().iter().flatten() {
        for p in topic.partitions().iter().flatten() {
            let len = p.records_bytes() as usize;
            let end = at.checked_add(len).filter(|end| *end <= payload.len());
            let end = end.ok_or_else(|| {
                Error::Protocol("fetch payload shorter than its header says".into())
            })?;
            results.push(FetchedPartition {
                topic: topic.topic().unwrap_or_default().to_string(),
                partition: p.partition(),
                error: broker_error(p.error_code(), p.error_message()),
                high_watermark: p.high_watermark(),
                log_start_offset: p.log_start_offset(),
                records: payload.slice(at..end),
            });
            at = end;
        }
    }
    if at != payload.len() {
        return Err(Error::Protocol(
            "fetch payload longer than its header says".into(),
        ));
    }
    Ok(results)
}

type Union = WIPOffset<flatbuffers::UnionWIPOffset>;

fn encode_topic_partitions<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    list: &[(String, u32)],
) -> WIPOffset<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<fb::TopicPartitions<'a>>>> {
    let groups = group_by_topic(list.iter().map(|(t, p)| (t.as_str(), *p)));
    let entries: Vec<_> = groups
        .iter()
        .map(|(topic, partitions)| {
            let topic = fbb.create_string(topic);
            let partitions = fbb.create_vector(partitions);
            fb::TopicPartitions::create(
                fbb,
                &fb::TopicPartitionsArgs {
                    topic: Some(topic),
                    partitions: Some(partitions),
                },
            )
        })
        .collect();
    fbb.create_vector(&entries)
}

fn encode_group_body<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    request: &Request,
) -> (fb::RequestBody, Union) {
    match request {
        Request::GroupHeartbeat {
            group_id,
            member_id,
            member_epoch,
            subscribed_topics,
            owned,
            session_timeout_ms,
            assignor,
        } => {
            let group_id = fbb.create_string(group_id);
            let member_id = fbb.create_string(member_id);
            let topics = subscribed_topics.as_ref().map(|topics| {
                let names: Vec<_> = topics.iter().map(|t| fbb.create_string(t)).collect();
                fbb.create_vector(&names)
            });
            let owned = encode_topic_partitions(fbb, owned);
            let assignor = fbb.create_string(assignor);
            let args = fb::GroupHeartbeatRequestArgs {
                group_id: Some(group_id),
                member_id: Some(member_id),
                member_epoch: *member_epoch,
                subscribed_topics: topics,
                owned: Some(owned),
                session_timeout_ms: *session_timeout_ms,
                assignor: Some(assignor),
            };
            (
                fb::RequestBody::GroupHeartbeatRequest,
                fb::GroupHeartbeatRequest::create(fbb, &args).as_union_value(),
            )
        }
        Request::OffsetCommit {
            group_id,
            member_id,
            offsets,
        } => {
            let grouped = group_by_topic(offsets.iter().map(|((t, p), o)| (t.as_str(), (*p, *o))));
            let topics: Vec<_> = grouped
                .iter()
                .map(|(topic, parts)| {
                    let entries: Vec<_> = parts
                        .iter()
                        .map(|(partition, offset)| {
                            fb::CommitPartition::create(
                                fbb,
                                &fb::CommitPartitionArgs {
                                    partition: *partition,
                                    offset: *offset,
                                },
                            )
                        })
                        .collect();
                    let partitions = fbb.create_vector(&entries);
                    let topic = fbb.create_string(topic);
                    fb::CommitTopic::create(
                        fbb,
                        &fb::CommitTopicArgs {
                            topic: Some(topic),
                            partitions: Some(partitions),
                        },
                    )
                })
                .collect();
            let topics = fbb.create_vector(&topics);
            let (group_id, member_id) = (fbb.create_string(group_id), fbb.create_string(member_id));
            let args = fb::OffsetCommitRequestArgs {
                group_id: Some(group_id),
                member_id: Some(member_id),
                member_epoch: -1,
                topics: Some(topics),
            };
            (
                fb::RequestBody::OffsetCommitRequest,
                fb::OffsetCommitRequest::create(fbb, &args).as_union_value(),
            )
        }
        Request::OffsetFetch {
            group_id,
            partitions,
        } => {
            let topics = partitions.as_ref().map(|p| encode_topic_partitions(fbb, p));
            let group_id = fbb.create_string(group_id);
            let args = fb::OffsetFetchRequestArgs {
                group_id: Some(group_id),
                topics,
            };
            (
                fb::RequestBody::OffsetFetchRequest,
                fb::OffsetFetchRequest::create(fbb, &args).as_union_value(),
            )
        }
        Request::ListGroups => (
            fb::RequestBody::ListGroupsRequest,
            fb::ListGroupsRequest::create(fbb, &fb::ListGroupsRequestArgs {}).as_union_value(),
        ),
        Request::DescribeGroups(ids) => {
            let ids: Vec<_> = ids.iter().map(|g| fbb.create_string(g)).collect();
            let ids = fbb.create_vector(&ids);
            let args = fb::DescribeGroupsRequestArgs {
                group_ids: Some(ids),
            };
            (
                fb::RequestBody::DescribeGroupsRequest,
                fb::DescribeGroupsRequest::create(fbb, &args).as_union_value(),
            )
        }
        Request::DeleteGroup(id) => {
            let id = fbb.create_string(id);
            (
                fb::RequestBody::DeleteGroupRequest,
                fb::DeleteGroupRequest::create(
                    fbb,
                    &fb::DeleteGroupRequestArgs { group_id: Some(id) },
                )
                .as_union_value(),
            )
        }
        Request::ResetOffsets {
            group_id,
            topic,
            spec,
            timestamp_ms,
            to_offset,
        } => {
            let (group_id, topic) = (fbb.create_string(group_id), fbb.create_string(topic));
            let args = fb::ResetOffsetsRequestArgs {
                group_id: Some(group_id),
                topic: Some(topic),
                spec: *spec,
                offset: to_offset.unwrap_or(-1),
                timestamp_ms: *timestamp_ms,
                to_offset: to_offset.is_some(),
            };
            (
                fb::RequestBody::ResetOffsetsRequest,
                fb::ResetOffsetsRequest::create(fbb, &args).as_union_value(),
            )
        }
        _ => unreachable!("only group requests reach encode_group_body"),
    }
}

fn decode_topic_partitions(
    list: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::TopicPartitions<'_>>>>,
) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for entry in list.iter().flatten() {
        let topic = entry.topic().unwrap_or_default();
        out.extend(
            entry
                .partitions()
                .iter()
                .flatten()
                .map(|p| (topic.to_string(), p)),
        );
    }
    out
}

fn decode_committed(
    list: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::CommittedOffset<'_>>>>,
) -> Vec<CommittedOffset> {
    list.iter()
        .flatten()
        .map(|c| CommittedOffset {
            topic: c.topic().unwrap_or_default().to_string(),
            partition: c.partition(),
            offset: c.offset(),
            log_end_offset: c.log_end_offset(),
            member_id: c.member_id().unwrap_or_default().to_string(),
        })
        .collect()
}

/// A broker error travels as `Response::Error`: it answers the request and
/// leaves the connection intact (only malformed responses break a connection).
fn fail_on(code: fb::ErrorCode, message: Option<&str>) -> Result<(), Response> {
    broker_error(code, message).map_or(Ok(()), |e| Err(Response::Error(e)))
}

fn decode_group_body(response: &fb::Response<'_>) -> Result<Response, Error> {
    Ok(match decode_group_inner(response) {
        Ok(decoded) => decoded?,
        Err(error_response) => error_response,
    })
}

fn decode_group_inner(response: &fb::Response<'_>) -> Result<Result<Response, Error>, Response> {
    let missing = || Error::Protocol(format!("{:?} without a body", response.body_type()));
    if let Some(body) = response.body_as_group_heartbeat_response() {
        fail_on(body.error_code(), body.error_message())?;
        return Ok(Ok(Response::GroupHeartbeat {
            member_id: body.member_id().unwrap_or_default().to_string(),
            member_epoch: body.member_epoch(),
            heartbeat_interval_ms: body.heartbeat_interval_ms(),
            assignment: decode_topic_partitions(body.assignment()),
        }));
    }
    if let Some(body) = response.body_as_offset_commit_response() {
        fail_on(body.error_code(), body.error_message())?;
        return Ok(Ok(Response::Done));
    }
    if let Some(body) = response.body_as_offset_fetch_response() {
        fail_on(body.error_code(), body.error_message())?;
        return Ok(Ok(Response::Offsets(decode_committed(body.offsets()))));
    }
    if let Some(body) = response.body_as_reset_offsets_response() {
        fail_on(body.error_code(), body.error_message())?;
        return Ok(Ok(Response::Offsets(decode_committed(body.offsets()))));
    }
    if let Some(body) = response.body_as_delete_group_response() {
        fail_on(body.error_code(), body.error_message())?;
        return Ok(Ok(Response::Done));
    }
    if let Some(body) = response.body_as_list_groups_response() {
        let groups = body.groups();
        return Ok(Ok(Response::Groups(
            groups
                .iter()
                .flatten()
                .map(|g| {
                    (
                        g.group_id().unwrap_or_default().to_string(),
                        g.state().unwrap_or_default().to_string(),
                        g.members(),
                    )
                })
                .collect(),
        )));
    }
    let Some(body) = response.body_as_describe_groups_response() else {
        return Ok(Err(missing()));
    };
    let groups = body
        .groups()
        .iter()
        .flatten()
        .map(|g| GroupDescription {
            group_id: g.group_id().unwrap_or_default().to_string(),
            error: broker_error(g.error_code(), g.error_message()),
            state: g.state().unwrap_or_default().to_string(),
            assignor: g.assignor().unwrap_or_default().to_string(),
            members: g
                .members()
                .iter()
                .flatten()
                .map(|m| MemberDescription {
                    member_id: m.member_id().unwrap_or_default().to_string(),
                    member_epoch: m.member_epoch(),
                    subscribed_topics: m
                        .subscribed_topics()
                        .iter()
                        .flatten()
                        .map(str::to_string)
                        .collect(),
                    assignment: decode_topic_partitions(m.assignment()),
                })
                .collect(),
            offsets: decode_committed(g.offsets()),
        })
        .collect();
    Ok(Ok(Response::GroupDescriptions(groups)))
}
