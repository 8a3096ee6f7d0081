//! The partitions service: the shard's copy of the metadata and the
//! partitions it owns, opened and closed as the metadata changes.
//!
//! Concurrency contract: one per shard, used only on its thread. Metadata
//! is applied one snapshot at a time (`apply_lock`), never an older revision
//! over a newer one; a partition becomes visible only once open (and, for
//! `__offsets`, replayed by the caller's `on_open`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use glommio::sync::Semaphore;
use shardlog_engine::{LogConfig, PartitionLog, StorageShard};

use super::partition::PartitionState;
use super::replica::Role;
use crate::cluster::state::BrokerId;
use crate::config::ServerConfig;
use crate::error::WireError;
use crate::metadata::{self, ClusterMetadata, TopicMetadata};
use crate::{Error, Result};

/// A partition's identity within the broker.
pub type PartitionKey = (String, u32);

/// The shard's metadata copy and its open partitions.
pub struct Partitions {
    /// This shard's id.
    shard: usize,
    /// Shards of the broker.
    count: usize,
    config: Arc<ServerConfig>,
    /// The shard's storage: page cache, open-file budget, flush latencies.
    pub storage: StorageShard,
    metadata: RefCell<Arc<ClusterMetadata>>,
    /// By topic, then partition: a lookup by `&str` allocates nothing.
    by_topic: RefCell<HashMap<String, BTreeMap<u32, Rc<PartitionState>>>>,
    /// Serializes metadata application (opening and deleting partitions).
    apply_lock: Semaphore,
    /// The revision of the last metadata this shard finished applying.
    applied_revision: Cell<u64>,
    /// The leader shards (broker, shard) this shard runs a replica fetcher for.
    fetching_from: RefCell<BTreeSet<(BrokerId, usize)>>,
    /// Grows whenever a partition opens or closes or a role changes, so a
    /// fetcher keeps its list of followed partitions until it does.
    generation: Cell<u64>,
}

impl std::fmt::Debug for Partitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitions")
            .field("shard", &self.shard)
            .field("revision", &self.metadata.borrow().revision)
            .finish_non_exhaustive()
    }
}

impl Partitions {
    /// Shard `shard`'s partitions, none open yet, with `metadata` as its copy.
    pub fn new(
        shard: usize,
        config: Arc<ServerConfig>,
        metadata: Arc<ClusterMetadata>,
    ) -> Partitions {
        let storage = StorageShard::new(shardlog_engine::ShardConfig {
            cache_bytes: config.cache_bytes,
            open_files_max: config.limits.open_files_per_shard_max,
            ..shardlog_engine::ShardConfig::default()
        });
        Partitions {
            shard,
            count: config.shards,
            config,
            storage,
            metadata: RefCell::new(metadata),
            by_topic: RefCell::new(HashMap::new()),
            apply_lock: Semaphore::new(1),
            applied_revision: Cell::new(0),
            generation: Cell::new(0),
            fetching_from: RefCell::new(BTreeSet::new()),
        }
    }

    /// Notes that a replica fetcher for `leader` runs; false if one did already.
    pub fn start_fetching_from(&self, leader: (BrokerId, usize)) -> bool {
        self.fetching_from.borrow_mut().insert(leader)
    }

    /// The replica fetcher for `leader` stopped.
    pub fn stop_fetching_from(&self, leader: (BrokerId, usize)) {
        self.fetching_from.borrow_mut().remove(&leader);
    }

    /// The latest metadata snapshot this shard has.
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.metadata.borrow().clone()
    }

    /// The shard owning `partition` of `topic`, if both exist and this broker holds it.
    pub fn owner_of(&self, topic: &str, partition: u32) -> Option<usize> {
        self.metadata.borrow().topics.get(topic)?.local_owner(
            partition,
            self.count,
            self.broker_id(),
        )
    }

    /// The shard serving clients' produce, fetch and list-offsets for a
    /// partition. On a clustered broker that is the leader's: a request that
    /// reached another broker gets the retriable `NotLeader`, and the client
    /// refreshes its metadata.
    pub fn leader_owner_of(&self, topic: &str, partition: u32) -> Result<usize, WireError> {
        self.leader_owner(topic, partition, false)
    }

    /// As [`Partitions::leader_owner_of`], for a produce: with `acks_all`,
    /// min-insync-replicas brokers must also be in the partition's ISR.
    pub fn produce_owner_of(
        &self,
        topic: &str,
        partition: u32,
        acks_all: bool,
    ) -> Result<usize, WireError> {
        self.leader_owner(topic, partition, acks_all)
    }

    fn leader_owner(&self, topic: &str, partition: u32, insync: bool) -> Result<usize, WireError> {
        let metadata = self.metadata.borrow();
        let known = metadata
            .topics
            .get(topic)
            .filter(|t| partition < t.partition_count());
        let Some(topic_metadata) = known else {
            return Err(WireError::unknown_partition(topic, partition));
        };
        let broker = self.broker_id();
        if let Some(refusal) = topic_metadata.not_leader(topic, partition, broker) {
            return Err(refusal);
        }
        let owner = topic_metadata
            .local_owner(partition, self.count, broker)
            .ok_or_else(|| WireError::unknown_partition(topic, partition))?;
        if insync {
            topic_metadata.check_insync(topic, partition)?;
        }
        Ok(owner)
    }

    /// This broker's id when it is a cluster member; `None` on a one-node broker.
    pub fn broker_id(&self) -> Option<BrokerId> {
        self.config
            .is_clustered()
            .then_some(BrokerId(self.config.node_id))
    }

    /// The revision of the last metadata this shard finished applying
    /// (its partitions open, its deleted ones closed).
    /// Changes whenever the set of partitions or any partition's role does.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    pub fn applied_revision(&self) -> u64 {
        self.applied_revision.get()
    }

    /// A partition this shard owns, if it is open.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<Rc<PartitionState>> {
        self.by_topic.borrow().get(topic)?.get(&partition).cloned()
    }

    /// Every partition this shard owns.
    pub fn local_partitions(&self) -> Vec<(PartitionKey, Rc<PartitionState>)> {
        let partitions = self.by_topic.borrow();
        let by_topic = partitions.iter().flat_map(|(topic, by_partition)| {
            by_partition
                .iter()
                .map(move |(p, state)| ((topic.clone(), *p), state.clone()))
        });
        by_topic.collect()
    }

    /// Adopts a newer metadata snapshot: opens the partitions it places
    /// here (each handed to `on_open` before it is visible), gives each its
    /// role, and closes and deletes those of deleted topics. Returns the
    /// partitions that were followers and lead now.
    ///
    /// # Errors
    /// Opening a partition log failed, or `on_open` did.
    pub async fn apply(
        &self,
        metadata: Arc<ClusterMetadata>,
        on_open: impl AsyncFn(&str, &PartitionState) -> Result<()>,
    ) -> Result<Vec<(PartitionKey, Rc<PartitionState>)>> {
        let _permit = self
            .apply_lock
            .acquire_permit(1)
            .await
            .expect("the apply lock is never closed");
        // Stale: a broadcast that lost a race with a newer one. The same
        // revision again is applied (it opens what is missing), which start-up relies on.
        if metadata.revision < self.metadata.borrow().revision {
            tracing::debug!(
                shard = self.shard,
                stale = metadata.revision,
                "ignoring older metadata"
            );
            return Ok(Vec::new());
        }
        let previous = self.metadata.replace(metadata.clone());
        let broker = self.broker_id();
        for (name, topic) in &metadata.topics {
            for partition in 0..topic.partition_count() {
                if topic.local_owner(partition, self.count, broker) == Some(self.shard)
                    && self.partition(name, partition).is_none()
                {
                    let state = self.open_partition(name, topic, partition).await?;
                    on_open(name, &state).await?;
                    self.by_topic
                        .borrow_mut()
                        .entry(name.clone())
                        .or_default()
                        .insert(partition, Rc::new(state));
                    self.bump_generation();
                }
            }
        }
        let promoted = self.adopt_roles(&metadata);
        self.bump_generation();
        let gone: Vec<String> = {
            let partitions = self.by_topic.borrow();
            let names = partitions
                .keys()
                .filter(|name| !metadata.topics.contains_key(*name));
            names.cloned().collect()
        };
        for name in gone {
            let removed = self.by_topic.borrow_mut().remove(&name).unwrap_or_default();
            self.bump_generation();
            for state in removed.into_values() {
                let _ = state.log.close().await;
                state.notify_appended();
                let dir = state.log.dir().to_path_buf();
                drop(state);
                if let Err(error) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), %error, "could not delete a deleted topic's partition");
                }
            }
            if let Some(topic) = previous.topics.get(&name) {
                let _ = std::fs::remove_dir(metadata::topic_dir(
                    &self.config.data_dir,
                    &name,
                    topic.id,
                ));
            }
        }
        self.applied_revision
            .set(self.applied_revision.get().max(metadata.revision));
        Ok(promoted)
    }

    fn bump_generation(&self) {
        self.generation.set(self.generation.get() + 1);
    }

    /// Gives every open partition the role `metadata` names for it; a new
    /// leader stamps its epoch into the batches it appends from now on.
    fn adopt_roles(&self, metadata: &ClusterMetadata) -> Vec<(PartitionKey, Rc<PartitionState>)> {
        let broker = self.broker_id();
        let mut promoted = Vec::new();
        for ((name, partition), state) in self.local_partitions() {
            let Some(topic) = metadata.topics.get(&name) else {
                continue;
            };
            let role = role_of(topic, partition, broker);
            if let Role::Leader { leader_epoch, .. } = &role {
                let epoch = u32::try_from(*leader_epoch).unwrap_or(u32::MAX);
                if epoch > state.log.leader_epoch() {
                    state.log.set_leader_epoch(epoch);
                }
            }
            let before = state.replica.role();
            if role != before {
                let leads_now = matches!(role, Role::Leader { .. });
                if leads_now && matches!(before, Role::Follower { .. }) {
                    promoted.push(((name.clone(), partition), state.clone()));
                }
                state.replica.set_role(role);
                // Waiting acks=all produces and fetches look again.
                state.notify_appended();
            }
        }
        promoted
    }

    async fn open_partition(
        &self,
        name: &str,
        topic: &TopicMetadata,
        partition: u32,
    ) -> Result<PartitionState> {
        let dir = metadata::partition_dir(&self.config.data_dir, name, topic.id, partition);
        let segment_bytes = topic.segment_bytes.unwrap_or(self.config.segment_bytes);
        let config = LogConfig {
            retention_bytes: topic.retention_bytes,
            retention_age: topic
                .retention_ms
                .or(self.config.retention_ms_default)
                .map(std::time::Duration::from_millis),
            ..self.config.log_config(segment_bytes)
        };
        let log = PartitionLog::open(&dir, config, &self.storage)
            .await
            .map_err(|error| match error {
                shardlog_engine::Error::TooManyOpenFiles { limit } => Error::Config(format!(
                    "partition {partition} of {name:?} needs an open file but shard {} already \
                     holds its limit of {limit}; raise --open-files-per-shard-max",
                    self.shard
                )),
                other => Error::from(other),
            })?;
        Ok(PartitionState::new(log).await?)
    }

    /// Closes every partition: flushes and syncs what was acknowledged.
    pub async fn close_partitions(&self) {
        let partitions = self.local_partitions();
        self.by_topic.borrow_mut().clear();
        for ((topic, partition), state) in partitions {
            if let Err(error) = state.log.close().await {
                tracing::warn!(topic, partition, %error, "closing a partition failed");
            }
        }
    }
}

/// The role of `partition` of `topic` on `broker` (`None`: a one-node broker).
pub fn role_of(topic: &TopicMetadata, partition: u32, broker: Option<BrokerId>) -> Role {
    let (Some(me), Some(state)) = (broker, topic.replication.get(partition as usize)) else {
        return Role::Single;
    };
    if state.replicas.len() <= 1 {
        return Role::Single;
    }
    if state.leader == Some(me) {
        return Role::Leader {
            me,
            leader_epoch: state.leader_epoch,
            isr: state.isr.as_slice().into(),
            replicas: state.replicas.iter().map(|r| r.broker).collect(),
        };
    }
    Role::Follower {
        leader: state.leader,
        leader_epoch: state.leader_epoch,
    }
}
