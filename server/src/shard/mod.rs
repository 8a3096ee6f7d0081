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
pub mod mesh;
pub mod messages;
pub mod partition;
pub mod partitions;
pub mod producers;
pub mod replica;
pub mod shutdown;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;

pub use mesh::{Mesh, MESH_CHANNEL_CAPACITY};
pub use messages::{ShardMessage, ShardRequest, ShardResponse};
pub use partition::PartitionState;
pub use partitions::{PartitionKey, Partitions};
pub use shutdown::Shutdown;

use crate::cluster::raft::ClusterHandle;
use crate::config::ServerConfig;
use crate::metadata::ClusterMetadata;
use crate::{Error, Result};

/// The controller shard.
pub const CONTROLLER_SHARD: usize = 0;

/// One core's share of the broker.
pub struct ShardState {
    pub id: usize,
    pub count: usize,
    pub config: Arc<ServerConfig>,
    /// The metadata copy and the partitions this shard owns.
    pub partitions: Partitions,
    /// This shard's end of the channel mesh.
    pub mesh: Mesh,
    /// How it serves requests (the handlers' dispatch).
    serve: Serve,
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
    /// The metadata group's node, on a clustered broker (`--peers`): `Send`
    /// handles into the Raft thread, never consensus work on this shard.
    pub cluster: Option<ClusterHandle>,
}

impl std::fmt::Debug for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardState")
            .field("id", &self.id)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// How a shard serves a request, from another shard or from itself: the
/// handlers' dispatch, handed in at start-up, so that this layer does not
/// import the one above it.
pub type Serve = fn(Rc<ShardState>, ShardRequest) -> LocalBoxFuture<'static, ShardResponse>;

impl ShardState {
    /// Builds the shard's state and starts the tasks that serve its mesh
    /// receivers with `serve`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        config: Arc<ServerConfig>,
        metadata: Arc<ClusterMetadata>,
        senders: Senders<ShardMessage>,
        receivers: Receivers<ShardMessage>,
        producer_ids: ProducerIds,
        cluster: Option<ClusterHandle>,
        serve: Serve,
    ) -> Rc<ShardState> {
        let state = Rc::new(ShardState {
            id,
            count: config.shards,
            memory: Rc::new(Semaphore::new(config.limits.shard_memory_bytes_max)),
            partitions: Partitions::new(id, config.clone(), metadata),
            mesh: Mesh::new(id, config.shards, senders),
            serve,
            config,
            controller_lock: Semaphore::new(1),
            producer_ids: RefCell::new(producer_ids),
            shutdown: Shutdown::default(),
            connections: Cell::new(0),
            metrics: crate::metrics::ShardMetrics::default(),
            coordinator: crate::groups::Coordinator::default(),
            cluster,
        });
        let mut receivers = receivers;
        for (peer, receiver) in receivers.streams() {
            let shard = state.clone();
            glommio::spawn_local(async move {
                while let Some(message) = receiver.recv().await {
                    let permit = shard.mesh.admit(&message).await;
                    shard.clone().on_message(peer, message, permit);
                }
            })
            .detach();
        }
        state
    }

    /// Handles a message that arrived on the stream from mesh peer `peer`.
    fn on_message(
        self: Rc<Self>,
        peer: usize,
        message: ShardMessage,
        permit: Option<glommio::sync::StaticPermit>,
    ) {
        match message {
            ShardMessage::Hello { shard } => self.mesh.learn_peer(shard, peer),
            ShardMessage::Request { from, id, request } => {
                glommio::spawn_local(async move {
                    let response = (self.serve)(self.clone(), request).await;
                    // Served: the permit goes back before the reply waits for room.
                    drop(permit);
                    self.mesh
                        .send(from, ShardMessage::Response { id, response })
                        .await;
                })
                .detach();
            }
            ShardMessage::Response { id, response } => self.mesh.complete(id, response),
        }
    }

    /// Runs `request` on `shard`: here, or over the mesh.
    pub async fn call(self: &Rc<Self>, shard: usize, request: ShardRequest) -> ShardResponse {
        if shard == self.id {
            return (self.serve)(self.clone(), request).await;
        }
        self.metrics.cross_shard_message();
        self.mesh.request(shard, request).await
    }

    /// Adopts a newer metadata snapshot ([`Partitions::apply`]); an
    /// `__offsets` partition it opens is replayed into the coordinator
    /// before requests can find it.
    ///
    /// # Errors
    /// Opening or replaying a partition log failed.
    pub async fn apply_metadata(&self, metadata: Arc<ClusterMetadata>) -> Result<()> {
        let coordinator = &self.coordinator;
        let promoted = self
            .partitions
            .apply(metadata, async |name: &str, state: &PartitionState| {
                if name == crate::groups::OFFSETS_TOPIC {
                    coordinator.replay(state).await?;
                }
                Ok(())
            })
            .await?;
        // The coordinator moves with the leader of its `__offsets` partition:
        // a new leader learns what the old one committed from its copy.
        for ((name, partition), state) in promoted {
            if name == crate::groups::OFFSETS_TOPIC {
                tracing::info!(
                    partition,
                    "leading an __offsets partition: replaying its commits"
                );
                coordinator.replay(&state).await?;
            }
        }
        Ok(())
    }

    /// The group APIs' view of this shard.
    pub fn groups(&self) -> crate::groups::GroupService<'_> {
        crate::groups::GroupService {
            coordinator: &self.coordinator,
            partitions: &self.partitions,
            limits: crate::groups::GroupLimits::of(&self.config),
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
