//! Creating, deleting, listing and describing topics.

use std::sync::Arc;

use crate::cluster::{unknown_topic, ClientConfig, Cluster};
use crate::protocol::{
    ClusterDescription, NewTopic, OffsetSpec, RecoveredPartition, ReplicaLag, Request, Response,
};
use crate::Error;

/// One partition as [`Admin::describe_topic`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// The partition number.
    pub partition: u32,
    /// The shard that owns it.
    pub shard: u16,
    /// The first offset still stored.
    pub log_start_offset: i64,
    /// One past the last acknowledged offset.
    pub high_watermark: i64,
    /// "online", or what is wrong with the partition's log ("poisoned: …", "corrupt: …").
    pub status: String,
    /// The leader broker; `None` when no replica may lead now.
    pub leader: Option<u32>,
    /// The brokers holding a replica, the preferred leader first.
    pub replicas: Vec<u32>,
    /// The in-sync replicas.
    pub isr: Vec<u32>,
    /// Grows with every leader change.
    pub leader_epoch: u64,
    /// Each follower's lag behind the leader, as the leader reports it
    /// (empty for a single replica, or when the leader did not answer).
    pub replica_lags: Vec<ReplicaLag>,
}

/// A topic as [`Admin::describe_topic`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The name.
    pub name: String,
    /// Its partitions, in order.
    pub partitions: Vec<PartitionDescription>,
}

/// Topic administration.
///
/// ```no_run
/// # async fn demo() -> Result<(), shardlog_client::Error> {
/// use shardlog_client::{Admin, ClientConfig, NewTopic};
/// let admin = Admin::new(ClientConfig::new("127.0.0.1:7070"));
/// admin.create_topic(NewTopic::new("clicks", 8)).await?;
/// assert!(admin.list_topics().await?.contains(&"clicks".to_string()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    cluster: Arc<Cluster>,
}

fn check(results: Vec<(String, Option<crate::BrokerError>)>) -> Result<(), Error> {
    match results.into_iter().find_map(|(_, error)| error) {
        Some(error) => Err(Error::Broker(error)),
        None => Ok(()),
    }
}

impl Admin {
    /// An admin client for the broker in `config`.
    pub fn new(config: ClientConfig) -> Admin {
        Admin {
            cluster: Arc::new(Cluster::new(config)),
        }
    }

    /// Creates a topic.
    ///
    /// # Errors
    /// [`Error::Broker`] with `TopicAlreadyExists`, `InvalidTopic`, `InvalidPartitions`; I/O errors.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<(), Error> {
        match self
            .cluster
            .call(Request::CreateTopics(vec![topic]))
            .await?
        {
            Response::Topics(results) => check(results),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a topic and its data.
    ///
    /// # Errors
    /// [`Error::Broker`] with `UnknownTopicOrPartition`; I/O errors.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        self.cluster.forget(name);
        match self
            .cluster
            .call(Request::DeleteTopics(vec![name.to_string()]))
            .await?
        {
            Response::Topics(results) => check(results),
            other => Err(unexpected(other)),
        }
    }

    /// The names of every topic, sorted.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn list_topics(&self) -> Result<Vec<String>, Error> {
        match self.cluster.call(Request::Metadata(Vec::new())).await? {
            Response::Metadata(cluster) => {
                let mut names: Vec<String> = cluster.topics.into_iter().map(|t| t.name).collect();
                names.sort();
                Ok(names)
            }
            other => Err(unexpected(other)),
        }
    }

    /// The cluster as the broker asked knows it: every broker with its
    /// state, the controller, the Raft term and the metadata revision.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription, Error> {
        match self.cluster.call(Request::Metadata(Vec::new())).await? {
            Response::Metadata(cluster) => Ok(*cluster),
            other => Err(unexpected(other)),
        }
    }

    /// The partitions of a topic with their placement and offsets.
    ///
    /// # Errors
    /// [`Error::Broker`] with `UnknownTopicOrPartition`; I/O errors.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, Error> {
        let Response::Metadata(cluster) = self
            .cluster
            .call(Request::Metadata(vec![name.to_string()]))
            .await?
        else {
            return Err(Error::Protocol(
                "metadata answered with another response".into(),
            ));
        };
        let topic = cluster
            .topics
            .into_iter()
            .next()
            .ok_or_else(|| unknown_topic(name))?;
        if let Some(error) = topic.error {
            return Err(Error::Broker(error));
        }
        let queries = |spec| {
            (0..topic.partition_shards.len() as u32)
                .map(move |p| (name.to_string(), p, spec, 0))
                .collect::<Vec<_>>()
        };
        let mut queries_all = queries(OffsetSpec::Earliest);
        queries_all.extend(queries(OffsetSpec::Latest));
        let results = self.cluster.list_offsets(queries_all).await?;
        let count = topic.partition_shards.len();
        let partitions = topic
            .partition_shards
            .iter()
            .zip(topic.leadership)
            .enumerate()
            .map(|(p, (shard, leadership))| PartitionDescription {
                leader: leadership.leader,
                replicas: leadership.replicas,
                isr: leadership.isr,
                leader_epoch: leadership.leader_epoch,
                partition: p as u32,
                shard: *shard,
                log_start_offset: results.get(p).map_or(-1, |r| r.offset),
                high_watermark: results.get(count + p).map_or(-1, |r| r.offset),
                status: results
                    .get(count + p)
                    .map_or_else(|| "unknown".into(), status_text),
                replica_lags: results
                    .get(count + p)
                    .map(|r| r.replica_lags.clone())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(TopicDescription {
            name: topic.name,
            partitions,
        })
    }

    /// Brings poisoned partitions of `topic` back without restarting the
    /// broker (all of them when `partitions` is empty): each is reopened and
    /// rescanned from its last synced point, and takes writes again.
    ///
    /// # Errors
    /// The broker's error (an unknown topic), or a protocol failure. A
    /// partition that could not be recovered carries its own error.
    pub async fn recover_partitions(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> Result<Vec<RecoveredPartition>, Error> {
        let request = Request::RecoverPartitions {
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
        };
        match self.cluster.call(request).await? {
            Response::Recovered(results) => Ok(results),
            Response::Error(error) => Err(Error::Broker(error)),
            _ => Err(Error::Protocol(
                "recover partitions answered with another response".into(),
            )),
        }
    }
}

/// "online", or the status and why, for a partition's ListOffsets result.
fn status_text(result: &crate::protocol::PartitionResult) -> String {
    use shardlog_wire::protocol::fb::PartitionStatus;
    match result.status {
        PartitionStatus::Online => "online".into(),
        PartitionStatus::Poisoned => format!("poisoned: {}", result.status_message),
        PartitionStatus::Corrupt => format!("corrupt: {}", result.status_message),
        other => format!("status {}: {}", other.0, result.status_message),
    }
}

pub(crate) fn unexpected(response: Response) -> Error {
    match response {
        Response::Error(error) => Error::Broker(error),
        other => Error::Protocol(format!("unexpected response {other:?}")),
    }
}

/// A group's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// The group.
    pub group_id: String,
    /// "empty", "stable" or "reconciling".
    pub state: String,
    /// Members now.
    pub members: u32,
}

impl Admin {
    /// Every consumer group, sorted.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, Error> {
        match self.cluster.call(Request::ListGroups).await? {
            Response::Groups(groups) => Ok(groups
                .into_iter()
                .map(|(group_id, state, members)| GroupListing {
                    group_id,
                    state,
                    members,
                })
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    /// A group's members, assignments and, per partition, its committed
    /// offset and the log end offset (lag is their difference).
    ///
    /// # Errors
    /// [`Error::Broker`] with `UnknownGroup`; I/O errors.
    pub async fn describe_group(
        &self,
        group_id: &str,
    ) -> Result<crate::protocol::GroupDescription, Error> {
        match self
            .cluster
            .call_coordinator(
                group_id,
                Request::DescribeGroups(vec![group_id.to_string()]),
            )
            .await?
        {
            Response::GroupDescriptions(mut groups) if !groups.is_empty() => {
                let group = groups.remove(0);
                match group.error {
                    Some(error) => Err(Error::Broker(error)),
                    None => Ok(group),
                }
            }
            other => Err(unexpected(other)),
        }
    }

    /// Sets the committed offsets of every partition of `topic` for an empty group.
    ///
    /// # Errors
    /// [`Error::Broker`] with `GroupNotEmpty` while members are active; I/O errors.
    pub async fn reset_offsets(
        &self,
        group_id: &str,
        topic: &str,
        to: crate::Offset,
    ) -> Result<Vec<crate::protocol::CommittedOffset>, Error> {
        let (spec, timestamp_ms, to_offset) = match to {
            crate::Offset::Earliest => (OffsetSpec::Earliest, 0, None),
            crate::Offset::Latest => (OffsetSpec::Latest, 0, None),
            crate::Offset::At(offset) => (OffsetSpec::Earliest, 0, Some(offset as i64)),
            crate::Offset::Timestamp(ms) => (OffsetSpec::Timestamp, ms, None),
        };
        let request = Request::ResetOffsets {
            group_id: group_id.to_string(),
            topic: topic.to_string(),
            spec,
            timestamp_ms,
            to_offset,
        };
        match self.cluster.call_coordinator(group_id, request).await? {
            Response::Offsets(offsets) => Ok(offsets),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes an empty group and its committed offsets.
    ///
    /// # Errors
    /// [`Error::Broker`] with `GroupNotEmpty` or `UnknownGroup`; I/O errors.
    pub async fn delete_group(&self, group_id: &str) -> Result<(), Error> {
        match self
            .cluster
            .call_coordinator(group_id, Request::DeleteGroup(group_id.to_string()))
            .await?
        {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
