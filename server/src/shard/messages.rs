//! Messages between shards. Everything here is `Send`: it crosses cores
//! through the glommio channel mesh, and nothing else does.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardlog_wire::protocol::fb;

pub use super::partition::PartitionHealth;
use crate::cluster::topic_name::validate_topic_name;
use crate::config::ServerConfig;
use crate::error::WireError;
use crate::groups::TopicPartition;
use crate::metadata::ClusterMetadata;

/// A request from one shard to another, or a reply.
#[derive(Debug)]
pub enum ShardMessage {
    /// Sent once by every shard at start: maps mesh peers to shard ids.
    Hello {
        /// The sender's shard id.
        shard: usize,
    },
    /// Work for the receiving shard.
    Request {
        /// The sender's shard id.
        from: usize,
        /// Echoed in the response.
        id: u64,
        /// What to do.
        request: ShardRequest,
    },
    /// The answer to a request.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        response: ShardResponse,
    },
}

/// Work one shard asks of another (or of itself), by the service that serves it.
#[derive(Debug)]
pub enum ShardRequest {
    /// For the partitions service of the shard owning the partition.
    Partition(PartitionCall),
    /// For the controller shard of a one-node broker: topic admin.
    Controller(ControllerCall),
    /// For every shard's partitions service: adopt this metadata snapshot
    /// (sent by the controller).
    ApplyMetadata(Arc<ClusterMetadata>),
    /// For every shard: render its metrics (sent by shard 0 for a scrape).
    Metrics,
    /// For the coordinator of a group (or, for `List` and `Commits`, every shard).
    Group(GroupCall),
}

impl ShardRequest {
    /// Produce, fetch and list offsets: the requests a client's traffic
    /// forwards, which never wait on the mesh while served.
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            ShardRequest::Partition(
                PartitionCall::Produce { .. }
                    | PartitionCall::Fetch { .. }
                    | PartitionCall::ListOffsets { .. }
            )
        )
    }
}

/// Work for the partitions service of the shard that owns the partition.
#[derive(Debug)]
pub enum PartitionCall {
    /// Append batches.
    Produce {
        topic: String,
        partition: u32,
        batches: BytesMut,
        acks: fb::Acks,
        /// How long an `acks=all` produce may wait for the ISR: what is
        /// left of the request's `timeout_ms`.
        wait_ms: u64,
    },
    /// Read.
    Fetch {
        topic: String,
        partition: u32,
        offset: u64,
        limit: ReadLimit,
    },
    /// Resolve when the partition has data past `offset`, or after `wait_ms`.
    Watch {
        topic: String,
        partition: u32,
        offset: u64,
        wait_ms: u64,
    },
    /// Look up an offset.
    ListOffsets {
        topic: String,
        partition: u32,
        spec: fb::OffsetSpec,
        timestamp_ms: i64,
    },
    /// Recover a poisoned partition.
    Recover { topic: String, partition: u32 },
}

/// The partitions service's answer to a [`PartitionCall`].
#[derive(Debug)]
pub enum PartitionReply {
    Produce(ProduceOutcome),
    Fetch(Result<RemoteFetch, WireError>),
    Watched,
    ListOffsets(Result<OffsetsOutcome, WireError>),
    Recovered(Result<Recovered, WireError>),
}

/// Topic admin for the controller shard of a one-node broker (a clustered
/// broker proposes to the metadata group instead).
#[derive(Debug)]
pub enum ControllerCall {
    CreateTopics(Vec<TopicRequest>),
    DeleteTopics(Vec<String>),
}

/// Work for a group coordinator.
#[derive(Debug)]
pub enum GroupCall {
    Heartbeat {
        group: String,
        heartbeat: crate::groups::Heartbeat,
    },
    Commit {
        group: String,
        member_id: String,
        commits: Vec<(TopicPartition, i64)>,
    },
    Fetch {
        group: String,
        partitions: Option<Vec<TopicPartition>>,
    },
    List,
    Describe {
        group: String,
    },
    Delete {
        group: String,
    },
    Reset {
        group: String,
        offsets: Vec<(TopicPartition, i64)>,
    },
    Commits,
}

/// A coordinator's answer.
#[derive(Debug)]
pub enum GroupReply {
    Heartbeat(Result<crate::groups::HeartbeatOutcome, WireError>),
    Done(Result<(), WireError>),
    Offsets(Result<Vec<(TopicPartition, i64)>, WireError>),
    Listed(Vec<(String, &'static str, u32)>),
    Described(Result<crate::groups::GroupSnapshot, WireError>),
    Commits(Vec<(String, TopicPartition, i64)>),
}

impl GroupReply {
    fn mismatch() -> WireError {
        WireError::unavailable()
    }

    /// The heartbeat outcome; any other reply means the coordinator could not answer.
    pub fn into_heartbeat(self) -> Result<crate::groups::HeartbeatOutcome, WireError> {
        match self {
            GroupReply::Heartbeat(outcome) => outcome,
            _ => Err(Self::mismatch()),
        }
    }

    /// The outcome of a commit or a deletion.
    pub fn into_done(self) -> Result<(), WireError> {
        match self {
            GroupReply::Done(outcome) => outcome,
            _ => Err(Self::mismatch()),
        }
    }

    /// Committed offsets (fetch, reset).
    pub fn into_offsets(self) -> Result<Vec<(TopicPartition, i64)>, WireError> {
        match self {
            GroupReply::Offsets(outcome) => outcome,
            _ => Err(Self::mismatch()),
        }
    }

    /// A group's description.
    pub fn into_described(self) -> Result<crate::groups::GroupSnapshot, WireError> {
        match self {
            GroupReply::Described(outcome) => outcome,
            _ => Err(Self::mismatch()),
        }
    }
}

/// How much one partition's read may return.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimit {
    /// At most this many bytes (0: the watermarks only).
    pub max_bytes: u64,
    /// The batch holding the offset may pass `max_bytes` (a response's first data).
    pub whole_first: bool,
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct TopicRequest {
    pub name: String,
    pub partitions: u32,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
    /// Copies of each partition, as asked (-1: [`TopicRequest::DEFAULT_REPLICATION`]).
    pub replication_factor: i16,
    /// ISR members an `acks=all` produce needs, as asked (-1: 1).
    pub min_insync_replicas: i16,
    /// Elect outside the ISR when no ISR member is alive (off by default, as in Kafka).
    pub unclean_leader_election: bool,
}

impl TopicRequest {
    /// The replication factor of a topic created without one (Kafka's `default.replication.factor`).
    pub const DEFAULT_REPLICATION: u16 = 1;

    /// Refuses a name outside the topic rules.
    pub fn check_name(&self) -> Result<(), WireError> {
        validate_topic_name(&self.name).map_err(|reason| {
            let message = format!("topic {:?}: {reason}", self.name);
            WireError::new(fb::ErrorCode::InvalidTopic, message)
        })
    }

    /// Checks the partition count and segment size against the broker's
    /// limits; the replication factor and min-insync-replicas asked for.
    pub fn check_settings(&self, config: &ServerConfig) -> Result<(u16, u16), WireError> {
        let max = config.limits.partitions_per_topic_max;
        if self.partitions == 0 || self.partitions > max {
            let message = format!("a topic has 1 to {max} partitions, not {}", self.partitions);
            return Err(WireError::new(fb::ErrorCode::InvalidPartitions, message));
        }
        if let Some(segment_bytes) = self.segment_bytes {
            if let Err(error) = config.log_config(segment_bytes).validate() {
                return Err(WireError::new(
                    fb::ErrorCode::InvalidConfig,
                    error.to_string(),
                ));
            }
        }
        self.replication()
    }

    /// The replication factor and min-insync-replicas asked for, defaults filled in.
    pub fn replication(&self) -> Result<(u16, u16), WireError> {
        let factor = match self.replication_factor {
            -1 => Self::DEFAULT_REPLICATION,
            f if f >= 1 => f.unsigned_abs(),
            f => {
                return Err(WireError::new(
                    fb::ErrorCode::InvalidReplicationFactor,
                    format!("the replication factor is at least 1, not {f}"),
                ))
            }
        };
        let min_insync = match self.min_insync_replicas {
            -1 => 1,
            m if m >= 1 && m.unsigned_abs() <= factor => m.unsigned_abs(),
            m => {
                return Err(WireError::new(
                    fb::ErrorCode::InvalidReplicationFactor,
                    format!("min-insync-replicas is 1 to the replication factor {factor}, not {m}"),
                ))
            }
        };
        Ok((factor, min_insync))
    }
}

/// The answer to a [`ShardRequest`], by the service that served it.
#[derive(Debug)]
pub enum ShardResponse {
    Partition(PartitionReply),
    /// To a [`ControllerCall`]: each topic's outcome.
    Topics(Vec<(String, Option<WireError>)>),
    /// The metadata was adopted, or why the shard could not open what it places there.
    Applied(Result<(), String>),
    Metrics(String),
    Group(GroupReply),
    /// The receiving shard is stopping.
    Unavailable,
}

/// What recovering one partition did.
#[derive(Debug, Clone, Copy)]
pub struct Recovered {
    /// False: the partition was online and nothing was done.
    pub was_poisoned: bool,
    /// Its log end offset afterwards.
    pub log_end_offset: u64,
    /// Bytes after the last synced point that failed validation and were cut.
    pub cut_bytes: u64,
}

/// The result of producing to one partition.
#[derive(Debug, Clone)]
pub struct ProduceOutcome {
    /// Base offset of the first batch, -1 with `acks = none`, or the error.
    pub result: Result<i64, WireError>,
    pub log_start_offset: i64,
}

/// Fetched bytes copied out of the owner's cache or files, to cross cores.
#[derive(Debug)]
pub struct RemoteFetch {
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub parts: Vec<Bytes>,
}

/// The answer to a ListOffsets query on one partition.
#[derive(Debug, Clone)]
pub struct OffsetsOutcome {
    pub offset: i64,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub health: PartitionHealth,
    /// On a leader: each follower's lag.
    pub replica_lags: Vec<super::partition::FollowerLag>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(replication_factor: i16, min_insync_replicas: i16) -> Result<(u16, u16), WireError> {
        TopicRequest {
            name: "t".into(),
            partitions: 1,
            retention_bytes: None,
            retention_ms: None,
            segment_bytes: None,
            replication_factor,
            min_insync_replicas,
            unclean_leader_election: false,
        }
        .replication()
    }

    #[test]
    fn replication_defaults_to_one_and_refuses_what_cannot_be() {
        assert_eq!(asked(-1, -1), Ok((1, 1)));
        assert_eq!(asked(3, -1), Ok((3, 1)));
        assert_eq!(asked(3, 2), Ok((3, 2)));
        assert_eq!(asked(3, 3), Ok((3, 3)));
        assert_eq!(asked(i16::MAX, 1), Ok((i16::MAX.unsigned_abs(), 1)));
        for (factor, min) in [
            (0, -1),
            (-2, -1),
            (i16::MIN, 1),
            (3, 4),
            (3, 0),
            (-1, 2),
            (2, -7),
        ] {
            let error = asked(factor, min).expect_err("refused");
            assert_eq!(
                error.code,
                fb::ErrorCode::InvalidReplicationFactor,
                "{factor} {min}"
            );
        }
    }
}
