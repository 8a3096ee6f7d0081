//! A clustered broker's side of the control plane, run by shard 0.
//!
//! ```text
//!  Raft thread ── applied Arc<ClusterState> (subscribe, revision order) ──► shard 0: publish
//!                                                                              │ record the cluster id (node.json)
//!                                                                              │ ClusterMetadata::from_cluster
//!                                                                              └─► ApplyMetadata ──mesh──► every shard
//!  shard 0: register ── propose RegisterBroker; once every shard applied it, UnfenceBroker ──► ClusterHandle
//!           then heartbeat (with the revision every shard applied), 3 per session ──► the controller's memory
//!  shard 0, while this node leads: create __offsets once every voter is registered and alive
//! ```
//!
//! Shard 0 only awaits `Send` futures of the [`ClusterHandle`]; the
//! consensus itself runs on the Raft thread. Each shard rejects a copy
//! older than its own (`ShardState::apply_metadata`), and the subscriber
//! hands states over in revision order, so every shard's copy only moves
//! forward. After registering, shard 0 heartbeats to the controller three
//! times per `broker-session-timeout-ms` (`cluster/liveness.rs` fences the
//! silent).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cluster::identity::{self, NodeIdentity};
use crate::cluster::raft::{ClusterHandle, ProposeError};
use crate::cluster::state::{
    BrokerId, BrokerLiveness, ClusterCommand, ClusterState, CommandOutput, CommandResult,
    ElectionKind, ElectionScope, NewTopic,
};
use crate::metadata::ClusterMetadata;
use crate::shard::{ShardRequest, ShardResponse, ShardState, CONTROLLER_SHARD};

/// Pause between attempts to register while the group has no leader.
const REGISTER_RETRY_MS: u64 = 250;
/// Pause between looks at whether every shard applied the registration.
const CAUGHT_UP_POLL_MS: u64 = 5;

/// Starts the control tasks on shard 0 of a clustered broker.
pub fn start(shard: &Rc<ShardState>, identity: NodeIdentity, cluster_id: Arc<OnceLock<String>>) {
    assert!(shard.id == CONTROLLER_SHARD);
    let Some(cluster) = shard.cluster.clone() else {
        unreachable!("control tasks run only on a clustered broker");
    };
    let offsets_proposed = Rc::new(Cell::new(false));
    let published = Rc::new(Cell::new(0));
    glommio::spawn_local(publish_loop(
        shard.clone(),
        cluster.clone(),
        identity,
        cluster_id,
        offsets_proposed,
        published.clone(),
    ))
    .detach();
    glommio::spawn_local(register(shard.clone(), cluster, published)).detach();
}

/// Publishes every applied state to every shard, until the node or the shard stops.
async fn publish_loop(
    shard: Rc<ShardState>,
    cluster: ClusterHandle,
    mut identity: NodeIdentity,
    cluster_id: Arc<OnceLock<String>>,
    offsets_proposed: Rc<Cell<bool>>,
    published: Rc<Cell<u64>>,
) {
    let broker = shard.partitions.broker_id().unwrap_or_default();
    let mut states = cluster.subscribe();
    loop {
        let stopped = async {
            shard.shutdown.wait().await;
            None
        };
        let Some(state) = futures_lite::future::or(states.next(), stopped).await else {
            return;
        };
        if !state.cluster_id.is_empty() {
            let data_dir = &shard.config.data_dir;
            if let Err(error) =
                identity::record_cluster_id(data_dir, &mut identity, &state.cluster_id)
            {
                // Serving a cluster the data directory was not made in would mix two clusters' data.
                tracing::error!(%error, "refusing to serve");
                eprintln!("shardlog-server: {error}");
                std::process::exit(1);
            }
            let _ = cluster_id.set(state.cluster_id.clone());
        }
        let metadata = Arc::new(ClusterMetadata::from_cluster(&state, broker));
        publish(&shard, metadata).await;
        published.set(published.get().max(state.revision));
        if cluster.metrics().leader == Some(cluster.node_id()) && !offsets_proposed.get() {
            if let Some(command) = offsets_topic_command(&state, &shard) {
                offsets_proposed.set(true);
                let (cluster, proposed) = (cluster.clone(), offsets_proposed.clone());
                glommio::spawn_local(async move {
                    if let Err(error) = cluster.propose(command).await {
                        tracing::info!(%error, "creating the offsets topic failed; tried again at the next change");
                    }
                    proposed.set(false);
                })
                .detach();
            }
        }
    }
}

/// Has every shard adopt `metadata`; a shard that cannot open a partition says so in the log.
async fn publish(shard: &Rc<ShardState>, metadata: Arc<ClusterMetadata>) {
    let applied = (0..shard.count)
        .map(|target| shard.call(target, ShardRequest::ApplyMetadata(metadata.clone())));
    for outcome in futures_util::future::join_all(applied).await {
        match outcome {
            ShardResponse::Applied(Ok(())) => {}
            ShardResponse::Applied(Err(error)) => {
                tracing::error!(revision = metadata.revision, %error, "a shard could not apply the metadata");
            }
            _ => tracing::debug!("a shard is stopping; it did not apply the metadata"),
        }
    }
    tracing::debug!(revision = metadata.revision, "metadata applied");
}

/// Replicas of each `__offsets` partition, at most.
pub const OFFSETS_REPLICATION_FACTOR_MAX: usize = 3;

/// The command that creates `__offsets`, when it is missing and every voter is registered and alive.
fn offsets_topic_command(state: &ClusterState, shard: &ShardState) -> Option<ClusterCommand> {
    if state.topics.contains_key(crate::groups::OFFSETS_TOPIC) {
        return None;
    }
    let peers = shard.config.peers.as_ref()?;
    let all_alive = peers.keys().all(|id| {
        state
            .brokers
            .get(&crate::cluster::state::BrokerId(*id))
            .is_some_and(|b| b.liveness == BrokerLiveness::Alive)
    });
    // Replicated like Kafka's offsets.topic.replication.factor (3, or
    // every broker of a smaller cluster), so a group's commits outlive
    // its coordinator's broker.
    let replication_factor = peers.len().min(OFFSETS_REPLICATION_FACTOR_MAX) as u16;
    all_alive.then(|| ClusterCommand::CreateTopics {
        topics: vec![NewTopic {
            name: crate::groups::OFFSETS_TOPIC.to_string(),
            partitions: crate::groups::OFFSETS_PARTITIONS,
            replication_factor,
            min_insync_replicas: replication_factor.min(2),
            retention_bytes: None,
            retention_ms: Some(u64::MAX / 2),
            segment_bytes: Some(64 * 1024 * 1024),
            internal: true,
            unclean_leader_election: false,
        }],
    })
}

/// Registers this broker (a new incarnation, fenced), then, once every
/// shard has applied the revision of its registration (caught up with the
/// metadata before it), unfences it.
async fn register(shard: Rc<ShardState>, cluster: ClusterHandle, published: Rc<Cell<u64>>) {
    let config = &shard.config;
    let broker = shard.partitions.broker_id().unwrap_or_default();
    let host = config
        .peers
        .as_ref()
        .and_then(|peers| peers.get(&config.node_id))
        .map_or_else(|| config.listen.ip().to_string(), |addr| addr.host.clone());
    let command = ClusterCommand::RegisterBroker {
        broker,
        host,
        port: config.listen.port(),
        shard_ports: (0..shard.count).map(|i| config.shard_port(i)).collect(),
        now_ms: now_ms(),
    };
    let Some(CommandOutput::BrokerRegistered { broker_epoch }) =
        propose_until_done(&shard, &cluster, command).await
    else {
        return;
    };
    while published.get() < broker_epoch {
        if shard.shutdown.is_started() {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(CAUGHT_UP_POLL_MS)).await;
    }
    let unfence = ClusterCommand::UnfenceBroker {
        broker,
        broker_epoch,
    };
    if propose_until_done(&shard, &cluster, unfence)
        .await
        .is_none()
    {
        return;
    }
    tracing::info!(broker = %broker, broker_epoch, "registered with the controller");
    heartbeat_loop(&shard, &cluster, broker, broker_epoch, &published).await;
}

/// Heartbeats three times per session until the broker stops; a missed one is only logged.
async fn heartbeat_loop(
    shard: &ShardState,
    cluster: &ClusterHandle,
    broker: BrokerId,
    broker_epoch: u64,
    published: &Cell<u64>,
) {
    let interval = Duration::from_millis(shard.config.broker_session_timeout_ms / 3);
    while !shard.shutdown.is_leaving() {
        let heartbeat = cluster.heartbeat(broker, broker_epoch, published.get());
        // One at a time, each within an interval, so the cadence holds
        // while the controller moves.
        let bounded = futures_lite::future::or(async { Some(heartbeat.await) }, async {
            glommio::timer::sleep(interval).await;
            None
        });
        match bounded.await {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                tracing::debug!(%error, "a heartbeat did not reach the controller")
            }
            None => tracing::debug!("a heartbeat took longer than its interval; sending the next"),
        }
        futures_lite::future::or(glommio::timer::sleep(interval), shard.shutdown.wait()).await;
    }
}

/// Longest a controlled shutdown waits for leadership to move off the broker.
pub const CONTROLLED_SHUTDOWN_WAIT_MS: u64 = 10_000;

/// On SIGTERM, before the shards stop serving: the broker stops
/// heartbeating, fences itself and asks for leaders elsewhere, then waits
/// (at most [`CONTROLLED_SHUTDOWN_WAIT_MS`]) until it leads nothing. Its
/// partitions' producers and consumers meet `NotLeader` and move to the
/// new leaders while this broker still answers, so a rolling restart shows
/// them no error; followers leave its ISRs at once instead of a session
/// later. Runs on shard 0 of a clustered broker.
pub async fn controlled_shutdown(shard: &ShardState) {
    let Some(cluster) = &shard.cluster else {
        return;
    };
    shard.shutdown.begin_leaving();
    let metadata = shard.partitions.metadata();
    let Some(view) = &metadata.cluster else {
        return;
    };
    let me = view.broker;
    let Some(info) = view.brokers.get(&me) else {
        return;
    };
    tracing::info!(broker = %me, "controlled shutdown: moving leadership off this broker");
    let deadline = std::time::Instant::now() + Duration::from_millis(CONTROLLED_SHUTDOWN_WAIT_MS);
    let commands = [
        ClusterCommand::FenceBroker {
            broker: me,
            broker_epoch: info.broker_epoch,
        },
        ClusterCommand::ElectLeaders {
            scope: ElectionScope::All,
            kind: ElectionKind::Unavailable,
        },
    ];
    for command in commands {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let proposed =
            futures_lite::future::or(async { Some(cluster.propose(command).await) }, async {
                glommio::timer::sleep(left).await;
                None
            });
        match proposed.await {
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::warn!(%error, "controlled shutdown: the metadata group refused; stopping anyway");
                return;
            }
            None => break,
        }
    }
    while std::time::Instant::now() < deadline {
        let metadata = shard.partitions.metadata();
        let leads = metadata
            .topics
            .values()
            .any(|topic| topic.replication.iter().any(|p| p.leader == Some(me)));
        if !leads {
            tracing::info!(broker = %me, "controlled shutdown: this broker leads nothing now");
            return;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(broker = %me, "controlled shutdown: leadership did not move in time; stopping anyway");
}

/// Proposes `command` until it is applied, retrying while the group cannot
/// commit; `None` when it was refused or the broker stops.
async fn propose_until_done(
    shard: &ShardState,
    cluster: &ClusterHandle,
    command: ClusterCommand,
) -> Option<CommandOutput> {
    while !shard.shutdown.is_started() {
        match cluster.propose(command.clone()).await {
            Ok(CommandResult {
                outcome: Ok(output),
                ..
            }) => return Some(output),
            Ok(CommandResult {
                outcome: Err(error),
                ..
            }) => {
                tracing::error!(%error, ?command, "the controller refused this broker's command");
                return None;
            }
            Err(error) if error.is_retriable() => {
                tracing::debug!(%error, "the metadata group cannot commit yet; retrying");
                glommio::timer::sleep(Duration::from_millis(REGISTER_RETRY_MS)).await;
            }
            Err(ProposeError::ShutDown) => return None,
            Err(error) => {
                tracing::error!(%error, "registering with the controller failed");
                return None;
            }
        }
    }
    None
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
