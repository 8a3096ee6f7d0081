//! ApiVersions, Metadata and InitProducer: answered by the shard that got them.

use std::cell::RefCell;

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use shardlog_wire::protocol::{self, fb};

use super::Outgoing;
use super::{error_parts, finish};
use crate::cluster::raft::ClusterHandle;
use crate::cluster::state::BrokerLiveness;
use crate::config::ServerConfig;
use crate::error::WireError;
use crate::metadata::{ClusterMetadata, TopicMetadata};
use crate::shard::ProducerIds;

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

/// Takes the broker's configuration, its metadata group (when clustered)
/// and the shard's metadata copy: nothing else of the shard.
pub fn metadata(
    config: &ServerConfig,
    cluster: Option<&ClusterHandle>,
    snapshot: &ClusterMetadata,
    correlation_id: u32,
    topics: Option<Vec<String>>,
) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let brokers = encode_brokers(&mut fbb, config, snapshot);
    let brokers = fbb.create_vector(&brokers);
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
        let partitions =
            topic.map_or_else(Vec::new, |topic| encode_partitions(&mut fbb, config, topic));
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
    let group = cluster.map(ClusterHandle::metrics);
    let cluster_id = snapshot
        .cluster
        .as_ref()
        .map(|c| fbb.create_string(&c.cluster_id));
    let body = fb::MetadataResponse::create(
        &mut fbb,
        &fb::MetadataResponseArgs {
            brokers: Some(brokers),
            topics: Some(topics),
            // A one-node broker is its own controller.
            controller_id: match &group {
                Some(group) => group.leader.map_or(-1, |l| l as i64),
                None => i64::from(config.node_id as u32),
            },
            raft_term: group.as_ref().map_or(0, |g| g.term),
            metadata_revision: snapshot.revision,
            cluster_id,
            answered_by: config.node_id as u32,
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

/// Every registered broker of a cluster, or this one broker.
fn encode_brokers<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    config: &ServerConfig,
    snapshot: &ClusterMetadata,
) -> Vec<WIPOffset<fb::BrokerInfo<'a>>> {
    let one_node = || {
        let own_ports: Vec<u16> = (0..config.shards).map(|i| config.shard_port(i)).collect();
        (
            config.node_id,
            config.listen.ip().to_string(),
            config.listen.port(),
            own_ports,
            fb::BrokerState::Alive,
        )
    };
    let brokers: Vec<_> = match &snapshot.cluster {
        None => vec![one_node()],
        Some(view) => view
            .brokers
            .values()
            .map(|b| {
                let state = match b.liveness {
                    BrokerLiveness::Alive => fb::BrokerState::Alive,
                    BrokerLiveness::Fenced => fb::BrokerState::Fenced,
                };
                (b.id.0, b.host.clone(), b.port, b.shard_ports.clone(), state)
            })
            .collect(),
    };
    brokers
        .into_iter()
        .map(|(id, host, port, ports, state)| {
            let host = fbb.create_string(&host);
            let shard_ports = fbb.create_vector(&ports);
            fb::BrokerInfo::create(
                fbb,
                &fb::BrokerInfoArgs {
                    broker_id: id as u32,
                    host: Some(host),
                    port,
                    shard_ports: Some(shard_ports),
                    state,
                },
            )
        })
        .collect()
}

/// A topic's partitions: on a cluster, the leader, replicas, ISR and epoch
/// from the Raft state; on one broker, this broker and the owning shard.
fn encode_partitions<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    config: &ServerConfig,
    topic: &TopicMetadata,
) -> Vec<WIPOffset<fb::PartitionInfo<'a>>> {
    let own = config.node_id as u32;
    (0..topic.partition_count())
        .map(|partition| {
            let leader_shard = topic.owner(partition, config.shards).unwrap_or(0) as u16;
            let replication = topic.replication.get(partition as usize);
            let mut ids = |brokers: Vec<u32>| fbb.create_vector(&brokers);
            let (leader, replicas, isr, leader_epoch) = match replication {
                None => (Some(own), ids(vec![own]), ids(vec![own]), 0),
                Some(state) => (
                    state.leader.map(|b| b.0 as u32),
                    ids(state.replicas.iter().map(|r| r.broker.0 as u32).collect()),
                    ids(state.isr.iter().map(|b| b.0 as u32).collect()),
                    state.leader_epoch,
                ),
            };
            let args = fb::PartitionInfoArgs {
                partition,
                leader_broker: leader.unwrap_or(0),
                leader_shard,
                replicas: Some(replicas),
                isr: Some(isr),
                leader_epoch,
                has_leader: leader.is_some(),
            };
            fb::PartitionInfo::create(fbb, &args)
        })
        .collect()
}

/// A new producer id with epoch 0, or the same id with its epoch bumped.
pub fn init_producer(
    producer_ids: &RefCell<ProducerIds>,
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
        let allocated = producer_ids.borrow_mut().allocate();
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
