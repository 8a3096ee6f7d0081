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
}

/// A response, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// (api, min, max) per API.
    ApiVersions(Vec<(u16, u16, u16)>),
    /// Metadata.
    Metadata(ClusterDescription),
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
}

fn broker_error(code: fb::ErrorCode, message: Option<&str>) -> Option<BrokerError> {
    (code != fb::ErrorCode::None).then(|| BrokerError {
        code,
        message: message.unwrap_or_default().to_string(),
    })
}

/// Encodes a request as a whole frame, prefix included.
pub fn encode_request(correlation_id: u32, request: &Request) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
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
    let message = fbb.finished_data();
    let mut frame = Vec::with_capacity(FRAME_PREFIX_BYTES + message.len());
    frame.extend_from_slice(&encode_prefix(message.len(), 0));
    frame.extend_from_slice(message);
    frame
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
                    let args = fb::TopicSpecArgs {
                        name: Some(name),
                        partitions: t.partitions,
                        retention_bytes: signed(t.retention_bytes),
                        retention_ms: signed(t.retention_ms),
                        segment_bytes: signed(t.segment_bytes),
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
        fb::ResponseBody::MetadataResponse => Response::Metadata(decode_metadata(
            response.body_as_metadata_response().ok_or_else(missing)?,
        )),
        fb::ResponseBody::CreateTopicsResponse => {
            let body = response
                .body_as_create_topics_response()
                .ok_or_else(missing)?;
            Response::Topics(
                body.results()
                    .iter()
                    .flatten()
                    .map(|r| {
                        (
                            r.name().unwrap_or_default().to_string(),
                            broker_error(r.error_code(), r.error_message()),
                        )
                    })
                    .collect(),
            )
        }
        fb::ResponseBody::DeleteTopicsResponse => {
            let body = response
                .body_as_delete_topics_response()
                .ok_or_else(missing)?;
            Response::Topics(
                body.results()
                    .iter()
                    .flatten()
                    .map(|r| {
                        (
                            r.name().unwrap_or_default().to_string(),
                            broker_error(r.error_code(), r.error_message()),
                        )
                    })
                    .collect(),
            )
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
                return Err(Error::Broker(error));
            }
            Response::InitProducer {
                producer_id: body.producer_id(),
                producer_epoch: body.producer_epoch(),
            }
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

fn decode_metadata(body: fb::MetadataResponse<'_>) -> ClusterDescription {
    let broker = body.brokers().and_then(|b| b.iter().next());
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
        })
        .collect();
    ClusterDescription {
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
