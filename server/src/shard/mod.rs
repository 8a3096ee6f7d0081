//! A shard: one core's share of the broker.
//!
//! ```text
//!   connection on shard 1 ──Produce(t, p7)──► owner of p7? ── shard 1 ──► engine on shard 1
//!                                                          └─ shard 0 ──► mesh ──► shard 0 ─► engine
//!                                                                              ◄── Response ─┘
//! ```
//!
//! Each shard owns the partitions that the metadata places on it: their
//! logs, producer state and waiting fetches live in this shard's memory only
//! (`Rc`, `RefCell`, never `Send`). Work for another shard's partition
//! travels as a [`ShardMessage`] over glommio's channel mesh, carrying the
//! batch bytes (`BytesMut`), not a copy; the reply comes back the same way.
//! Shard 0 is the metadata controller. Channels are bounded (1024): a full
//! one makes the sender wait, which pushes back on the connection.

pub mod budget;
pub mod control;
pub mod messages;
pub mod partition;
pub mod producers;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use shardlog_engine::{LogConfig, PartitionLog, StorageShard};

pub use messages::{ShardMessage, ShardRequest, ShardResponse};
pub use partition::PartitionState;

use crate::cluster::raft::ClusterHandle;
use crate::cluster::state::BrokerId;
use crate::config::ServerConfig;
use crate::error::WireError;
use crate::metadata::{self, ClusterMetadata, TopicMetadata};
use crate::{Error, Result};

/// Capacity of each channel between two shards.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Data requests (produce, fetch, list offsets) from other shards that a
/// shard serves at once; while they are all busy it stops draining its
/// channels, so a full channel makes the forwarding shard wait.
pub const MESH_DATA_REQUESTS_MAX: u64 = 1024;
/// The controller shard.
pub const CONTROLLER_SHARD: usize = 0;

/// A partition's identity within the broker.
pub type PartitionKey = (String, u32);

/// One core's share of the broker.
pub struct ShardState {
    pub id: usize,
    pub count: usize,
    pub config: Arc<ServerConfig>,
    pub storage: StorageShard,
    metadata: RefCell<Arc<ClusterMetadata>>,
    /// By topic, then partition: a lookup by `&str` allocates nothing.
    partitions: RefCell<HashMap<String, BTreeMap<u32, Rc<PartitionState>>>>,
    senders: Senders<ShardMessage>,
    /// Mesh peer index of each shard id (learned from Hello messages).
    peer_of_shard: RefCell<Vec<Option<usize>>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<ShardResponse>>>,
    next_request_id: Cell<u64>,
    /// Serializes metadata changes on the controller.
    controller_lock: Semaphore,
    pub producer_ids: RefCell<ProducerIds>,
    pub shutdown: Shutdown,
    /// The shard's memory budget (`shard_memory_bytes_max`): units are bytes
    /// of request bodies and fetched data held until answered.
    pub memory: Rc<Semaphore>,
    pub connections: Cell<usize>,
    pub metrics: crate::metrics::ShardMetrics,
    pub coordinator: crate::groups::Coordinator,
    /// Serializes metadata application (opening and deleting partitions).
    apply_lock: Semaphore,
    /// Data requests from other shards being served ([`MESH_DATA_REQUESTS_MAX`]).
    mesh_data_requests: Rc<Semaphore>,
    /// The metadata group's node, on a clustered broker (`--peers`): `Send`
    /// handles into the Raft thread, never consensus work on this shard.
    pub cluster: Option<ClusterHandle>,
    /// The revision of the last metadata this shard finished applying.
    applied_revision: Cell<u64>,
}

impl std::fmt::Debug for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardState")
            .field("id", &self.id)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl ShardState {
    /// Builds the shard's state and starts the tasks that serve its mesh receivers.
    pub fn new(
        id: usize,
        config: Arc<ServerConfig>,
        metadata: Arc<ClusterMetadata>,
        senders: Senders<ShardMessage>,
        receivers: Receivers<ShardMessage>,
        producer_ids: ProducerIds,
        cluster: Option<ClusterHandle>,
    ) -> Rc<ShardState> {
        let storage = StorageShard::new(shardlog_engine::ShardConfig {
            cache_bytes: config.cache_bytes,
            open_files_max: config.limits.open_files_per_shard_max,
            ..shardlog_engine::ShardConfig::default()
        });
        let mut peer_of_shard = vec![None; config.shards];
        peer_of_shard[id] = Some(senders.peer_id());
        let state = Rc::new(ShardState {
            id,
            count: config.shards,
            memory: Rc::new(Semaphore::new(config.limits.shard_memory_bytes_max)),
            config,
            storage,
            metadata: RefCell::new(metadata),
            partitions: RefCell::new(HashMap::new()),
            senders,
            peer_of_shard: RefCell::new(peer_of_shard),
            pending: RefCell::new(HashMap::new()),
            next_request_id: Cell::new(1),
            controller_lock: Semaphore::new(1),
            producer_ids: RefCell::new(producer_ids),
            shutdown: Shutdown::default(),
            connections: Cell::new(0),
            metrics: crate::metrics::ShardMetrics::default(),
            coordinator: crate::groups::Coordinator::default(),
            apply_lock: Semaphore::new(1),
            mesh_data_requests: Rc::new(Semaphore::new(MESH_DATA_REQUESTS_MAX)),
            cluster,
            applied_revision: Cell::new(0),
        });
        let mut receivers = receivers;
        for (peer, receiver) in receivers.streams() {
            let shard = state.clone();
            glommio::spawn_local(async move {
                while let Some(message) = receiver.recv().await {
                    // Waiting here for a data request's permit is the
                    // pushback: the channel fills and its sender waits. A
                    // permit is held only while serving, which never waits
                    // on the mesh, so the wait always ends.
                    let permit = match &message {
                        ShardMessage::Request { request, .. } if request.is_data() => {
                            shard.mesh_data_requests.acquire_static_permit(1).await.ok()
                        }
                        _ => None,
                    };
                    shard.clone().on_message(peer, message, permit);
                }
            })
            .detach();
        }
        state
    }

    /// Tells every peer which mesh index is this shard, and waits to hear from all of them.
    pub async fn handshake(&self) {
        for peer in 0..self.senders.nr_consumers() {
            if peer != self.senders.peer_id() {
                let sent = self
                    .senders
                    .send_to(peer, ShardMessage::Hello { shard: self.id })
                    .await;
                assert!(sent.is_ok(), "the mesh is up during start-up");
            }
        }
        while self.peer_of_shard.borrow().iter().any(Option::is_none) {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Handles a message that arrived on the stream from mesh peer `peer`.
    fn on_message(
        self: Rc<Self>,
        peer: usize,
        message: ShardMessage,
        permit: Option<glommio::sync::StaticPermit>,
    ) {
        match message {
            ShardMessage::Hello { shard } => {
                assert!(shard < self.count, "shard ids stay below the shard count");
                self.peer_of_shard.borrow_mut()[shard] = Some(peer);
            }
            ShardMessage::Request { from, id, request } => {
                glommio::spawn_local(async move {
                    let response = crate::handlers::serve_shard_request(&self, request).await;
                    // Served: the permit goes back before the reply waits for room.
                    drop(permit);
                    self.send(from, ShardMessage::Response { id, response })
                        .await;
                })
                .detach();
            }
            ShardMessage::Response { id, response } => {
                if let Some(waiter) = self.pending.borrow_mut().remove(&id) {
                    let _ = waiter.send(response);
                }
            }
        }
    }

    async fn send(&self, shard: usize, message: ShardMessage) {
        let peer = self.peer_of_shard.borrow()[shard].expect("handshake completed before serving");
        if self.senders.send_to(peer, message).await.is_err() {
            tracing::debug!(shard, "peer shard is gone; dropping a message");
        }
    }

    /// Runs `request` on `shard`: here, or over the mesh.
    pub async fn call(self: &Rc<Self>, shard: usize, request: ShardRequest) -> ShardResponse {
        if shard == self.id {
            return crate::handlers::serve_shard_request(self, request).await;
        }
        self.metrics.cross_shard_message();
        let id = self.next_request_id.get();
        self.next_request_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.send(
            shard,
            ShardMessage::Request {
                from: self.id,
                id,
                request,
            },
        )
        .await;
        rx.await.unwrap_or(ShardResponse::Unavailable)
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
        topic_metadata
            .local_owner(partition, self.count, broker)
            .ok_or_else(|| WireError::unknown_partition(topic, partition))
    }

    /// `acks=all` needs min-insync-replicas brokers in the partition's ISR.
    pub fn check_insync(&self, topic: &str, partition: u32) -> Result<(), WireError> {
        let metadata = self.metadata.borrow();
        match metadata.topics.get(topic) {
            Some(t) => t.check_insync(topic, partition),
            None => Err(WireError::unknown_partition(topic, partition)),
        }
    }

    /// This broker's id when it is a cluster member; `None` on a one-node broker.
    pub fn broker_id(&self) -> Option<BrokerId> {
        self.config
            .is_clustered()
            .then_some(BrokerId(self.config.node_id))
    }

    /// The revision of the last metadata this shard finished applying
    /// (its partitions open, its deleted ones closed).
    pub fn applied_revision(&self) -> u64 {
        self.applied_revision.get()
    }

    /// A partition this shard owns, if it is open.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<Rc<PartitionState>> {
        self.partitions
            .borrow()
            .get(topic)?
            .get(&partition)
            .cloned()
    }

    /// Every partition this shard owns.
    pub fn local_partitions(&self) -> Vec<(PartitionKey, Rc<PartitionState>)> {
        let partitions = self.partitions.borrow();
        let by_topic = partitions.iter().flat_map(|(topic, by_partition)| {
            by_partition
                .iter()
                .map(move |(p, state)| ((topic.clone(), *p), state.clone()))
        });
        by_topic.collect()
    }

    /// Adopts a newer metadata snapshot: opens the partitions it places
    /// here, and closes and deletes those of deleted topics.
    ///
    /// # Errors
    /// Opening a partition log failed.
    pub async fn apply_metadata(&self, metadata: Arc<ClusterMetadata>) -> Result<()> {
        let _permit = self
            .apply_lock
            .acquire_permit(1)
            .await
            .expect("the apply lock is never closed");
        // Stale: a broadcast that lost a race with a newer one. The same
        // revision again is applied (it opens what is missing), which start-up relies on.
        if metadata.revision < self.metadata.borrow().revision {
            tracing::debug!(
                shard = self.id,
                stale = metadata.revision,
                "ignoring older metadata"
            );
            return Ok(());
        }
        let previous = self.metadata.replace(metadata.clone());
        let broker = self.broker_id();
        for (name, topic) in &metadata.topics {
            for partition in 0..topic.partition_count() {
                if topic.local_owner(partition, self.count, broker) == Some(self.id)
                    && self.partition(name, partition).is_none()
                {
                    let state = self.open_partition(name, topic, partition).await?;
                    if name == crate::groups::OFFSETS_TOPIC {
                        self.coordinator.replay(&state).await?;
                    }
                    self.partitions
                        .borrow_mut()
                        .entry(name.clone())
                        .or_default()
                        .insert(partition, Rc::new(state));
                }
            }
        }
        let gone: Vec<String> = {
            let partitions = self.partitions.borrow();
            let names = partitions
                .keys()
                .filter(|name| !metadata.topics.contains_key(*name));
            names.cloned().collect()
        };
        for name in gone {
            let removed = self
                .partitions
                .borrow_mut()
                .remove(&name)
                .unwrap_or_default();
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
        Ok(())
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
                    self.id
                )),
                other => Error::from(other),
            })?;
        Ok(PartitionState::new(log).await?)
    }

    /// Closes every partition: flushes and syncs what was acknowledged.
    pub async fn close_partitions(&self) {
        let partitions = self.local_partitions();
        self.partitions.borrow_mut().clear();
        for ((topic, partition), state) in partitions {
            if let Err(error) = state.log.close().await {
                tracing::warn!(topic, partition, %error, "closing a partition failed");
            }
        }
    }

    /// Runs `f` holding the controller's lock, on the controller.
    pub async fn with_controller_lock<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        assert!(self.id == CONTROLLER_SHARD);
        let _permit = self
            .controller_lock
            .acquire_permit(1)
            .await
            .expect("the controller lock is never closed");
        f.await
    }
}

/// Producer ids handed out by one shard:
/// `(broker_index << 56) | (shard << 48) | counter`, with the counter
/// reserved in blocks persisted before use, so ids never repeat across
/// restarts. `broker_index` is this broker's place among the cluster's
/// voters (0 for a one-node broker), so no two brokers of a cluster hand
/// out the same id: a producer's batches to partitions on other brokers
/// are never taken for another producer's (and dropped as duplicates).
#[derive(Debug)]
pub struct ProducerIds {
    path: std::path::PathBuf,
    /// `broker_index << 8 | shard`: the bits above the counter.
    prefix: u64,
    next: u64,
    reserved_until: u64,
}

/// Brokers whose ids can be told apart (bits 56..59 of a producer id).
const BROKER_INDEX_LIMIT: usize = 8;
/// Shards whose ids can be told apart (bits 48..56).
const SHARD_LIMIT: usize = 256;

/// Producer ids reserved per write of the counter file.
const PRODUCER_ID_BLOCK: u64 = 1024;

impl ProducerIds {
    /// Loads the counter of `shard` from the data directory.
    ///
    /// # Errors
    /// I/O errors reading the counter file.
    pub fn load(
        data_dir: &std::path::Path,
        broker_index: usize,
        shard: usize,
    ) -> Result<ProducerIds> {
        assert!(broker_index < BROKER_INDEX_LIMIT, "at most 5 voters");
        assert!(shard < SHARD_LIMIT, "--shards is at most 256");
        let path = data_dir.join(format!("producer-ids-{shard}"));
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| Error::Metadata {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::io("reading producer ids", path, e)),
        };
        Ok(ProducerIds {
            path,
            prefix: (broker_index as u64) << 8 | shard as u64,
            next,
            reserved_until: next,
        })
    }

    /// A producer id never handed out before.
    ///
    /// # Errors
    /// I/O errors persisting the next block.
    pub fn allocate(&mut self) -> Result<i64> {
        if self.next == self.reserved_until {
            let until = self.next + PRODUCER_ID_BLOCK;
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, until.to_string())
                .map_err(|e| Error::io("writing producer ids", &tmp, e))?;
            let file = std::fs::File::open(&tmp)
                .map_err(|e| Error::io("syncing producer ids", &tmp, e))?;
            file.sync_all()
                .map_err(|e| Error::io("syncing producer ids", &tmp, e))?;
            std::fs::rename(&tmp, &self.path)
                .map_err(|e| Error::io("renaming producer ids", &self.path, e))?;
            self.reserved_until = until;
        }
        let id = (self.prefix << 48) | self.next;
        self.next += 1;
        assert!(self.next < (1 << 48));
        Ok(id as i64)
    }
}

/// A shard-local shutdown flag that tasks can wait on.
#[derive(Debug, Default)]
pub struct Shutdown {
    started: Cell<bool>,
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl Shutdown {
    /// Starts the shutdown and wakes every waiter.
    pub fn start(&self) {
        self.started.set(true);
        for waiter in self.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }

    /// True once the shutdown started.
    pub fn is_started(&self) -> bool {
        self.started.get()
    }

    /// Resolves when the shutdown starts.
    pub async fn wait(&self) {
        if self.started.get() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push(tx);
        let _ = rx.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_ids_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = ProducerIds::load(dir.path(), 0, 3).unwrap();
        let first = ids.allocate().unwrap();
        let second = ids.allocate().unwrap();
        assert_eq!(first >> 48, 3, "a one-node broker's ids are as before");
        assert_eq!(second, first + 1);
        let mut again = ProducerIds::load(dir.path(), 0, 3).unwrap();
        assert!(again.allocate().unwrap() > second);
    }

    /// Brokers of one cluster each start their counters at 0: the broker's
    /// place among the voters keeps their ids apart, for every shard.
    #[test]
    fn brokers_of_a_cluster_never_hand_out_the_same_producer_id() {
        let mut seen = std::collections::BTreeSet::new();
        for broker_index in 0..5 {
            for shard in [0, 1, 255] {
                let dir = tempfile::tempdir().unwrap();
                let mut ids = ProducerIds::load(dir.path(), broker_index, shard).unwrap();
                for _ in 0..3 {
                    let id = ids.allocate().unwrap();
                    assert!(id > 0 || (broker_index, shard) == (0, 0), "{id}");
                    assert!(seen.insert(id), "{id} handed out twice");
                }
            }
        }
    }
}
