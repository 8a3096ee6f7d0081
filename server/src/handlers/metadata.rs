//! ApiVersions, Metadata and InitProducer: answered by the shard that got them.

use std::rc::Rc;

use flatbuffers::FlatBufferBuilder;
use shardlog_wire::protocol::{self, fb};

use super::{error_parts, finish};
use crate::error::WireError;
use crate::net::Outgoing;
use crate::shard::ShardState;

pub fn api_versions(correlation_id: u32) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let ranges: Vec<fb::ApiVersionRange> = protocol::API_VERSIONS
        .iter()
        .map(|(api, min, max)| fb::ApiVersionRange::new(api.0.into(), *min, *max))
        .collect();
    let apis = fbb.create_vector(&ranges);
    let software = fbb.create_string(concat!("shardlog-server ", env!("CARGO_PKG_VERSION")));
    let body = fb::ApiVersionsResponse::create(
        &mut fbb,
        &fb::ApiVersionsResponseArgs {
            error_code: fb::ErrorCode::None,
            apis: Some(apis),
            server_software: Some(software),
        },
    );
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::ApiVersionsResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}

pub fn metadata(
    shard: &Rc<ShardState>,
    correlation_id: u32,
    topics: Option<Vec<String>>,
) -> Outgoing {
    let snapshot = shard.metadata();
    let config = &shard.config;
    let mut fbb = FlatBufferBuilder::new();
    let host = fbb.create_string(&config.listen.ip().to_string());
    let shard_ports: Vec<u16> = (0..shard.count).map(|i| config.shard_port(i)).collect();
    let shard_ports = fbb.create_vector(&shard_ports);
    let broker = fb::BrokerInfo::create(
        &mut fbb,
        &fb::BrokerInfoArgs {
            broker_id: 0,
            host: Some(host),
            port: config.listen.port(),
            shard_ports: Some(shard_ports),
        },
    );
    let brokers = fbb.create_vector(&[broker]);
    // Listing every topic leaves out internal ones (`__offsets`); asking by name still shows them.
    let names: Vec<String> = topics.unwrap_or_else(|| {
        snapshot
            .topics
            .keys()
            .filter(|t| !t.starts_with("__"))
            .cloned()
            .collect()
    });
    let mut topic_offsets = Vec::with_capacity(names.len());
    for name in &names {
        let topic = snapshot.topics.get(name);
        let mut partitions = Vec::new();
        if let Some(topic) = topic {
            for partition in 0..topic.partition_count() {
                let replicas = fbb.create_vector(&[0u32]);
                let leader_shard = topic.owner(partition, shard.count).unwrap_or(0) as u16;
                let args = fb::PartitionInfoArgs {
                    partition,
                    leader_broker: 0,
                    leader_shard,
                    replicas: Some(replicas),
                };
                partitions.push(fb::PartitionInfo::create(&mut fbb, &args));
            }
        }
        let error = topic.is_none().then(|| {
            WireError::new(
                fb::ErrorCode::UnknownTopicOrPartition,
                format!("topic {name:?} does not exist"),
            )
        });
        let (error_code, error_message) = error_parts(&mut fbb, error.as_ref());
        let partitions = fbb.create_vector(&partitions);
        let name_offset = fbb.create_string(name);
        let signed = |v: Option<u64>| v.map_or(-1, |v| v as i64);
        let args = fb::TopicInfoArgs {
            name: Some(name_offset),
            error_code,
            error_message,
            partitions: Some(partitions),
            retention_bytes: signed(topic.and_then(|t| t.retention_bytes)),
            retention_ms: signed(topic.and_then(|t| t.retention_ms)),
            segment_bytes: signed(topic.and_then(|t| t.segment_bytes)),
        };
        topic_offsets.push(fb::TopicInfo::create(&mut fbb, &args));
    }
    let topics = fbb.create_vector(&topic_offsets);
    let body = fb::MetadataResponse::create(
        &mut fbb,
        &fb::MetadataResponseArgs {
            brokers: Some(brokers),
            topics: Some(topics),
        },
    );
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::MetadataResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}

/// A new producer id with epoch 0, or the same id with its epoch bumped.
pub fn init_producer(
    shard: &Rc<ShardState>,
    correlation_id: u32,
    producer_id: i64,
    producer_epoch: i16,
) -> Outgoing {
    let outcome = if producer_id >= 0 {
        if producer_epoch == i16::MAX {
            Err(WireError::new(
                fb::ErrorCode::InvalidProducerEpoch,
                "the producer epoch is exhausted; ask for a new producer id",
            ))
        } else {
            Ok((producer_id, producer_epoch.max(-1) + 1))
        }
    } else {
        let allocated = shard.producer_ids.borrow_mut().allocate();
        allocated
            .map(|id| (id, 0))
            .map_err(|e| WireError::new(fb::ErrorCode::StorageError, e.to_string()))
    };
    let mut fbb = FlatBufferBuilder::new();
    let (ids, error) = match outcome {
        Ok(ids) => (ids, None),
        Err(error) => ((-1, -1), Some(error)),
    };
    let (error_code, error_message) = error_parts(&mut fbb, error.as_ref());
    let args = fb::InitProducerResponseArgs {
        error_code,
        error_message,
        producer_id: ids.0,
        producer_epoch: ids.1,
    };
    let body = fb::InitProducerResponse::create(&mut fbb, &args);
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::InitProducerResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}
