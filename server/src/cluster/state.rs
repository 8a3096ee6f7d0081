//! The replicated cluster metadata and its one pure transition, [`ClusterState::apply`].
//!
//! Every node's state machine holds a [`ClusterState`] and applies the same
//! committed [`ClusterCommand`]s in the same order, so `apply` must be a
//! function of the state and the command alone: no clock, no randomness, no
//! I/O, no iteration over a hash map. Timestamps arrive inside the command
//! (stamped by the controller that proposed it), placement runs inside
//! `apply` against the state of that moment (so two concurrent topic
//! creations never place against the same stale counts), and every error is
//! a [`CommandError`] value returned to the proposer, never a panic: a
//! command that a replica could refuse differently from another would fork
//! the metadata.
//!
//! `revision` grows by one for each command that changed anything, and only
//! then: a shard's copy compares revisions to drop a stale broadcast, and a
//! proposer may wait for its shard to reach the revision its command made.
//!
//! Brokers follow KRaft's life cycle:
//!
//! ```text
//!  RegisterBroker ──► Fenced ──UnfenceBroker──► Alive ──FenceBroker──► Fenced
//!   (new broker_epoch)   ▲                        │ BrokerHeartbeat keeps
//!                        └──── RegisterBroker ◄───┘ last_heartbeat_ms fresh
//! ```
//!
//! A (re-)registration starts a new incarnation (`broker_epoch`, the
//! revision it made) and starts fenced: a restarted broker serves nothing
//! until the controller has seen it ready. Commands about a broker name the
//! epoch they were meant for, so a late message about an old incarnation is
//! refused ([`CommandError::StaleBrokerEpoch`]).
//!
//! Partition leadership: the first replica is the preferred leader; a new
//! partition starts led by it with every replica in sync and leader epoch 0.
//! `ElectLeaders` moves leadership off fenced brokers (the ISR shrinks to
//! its live members, the epoch grows) and, unclean only where the topic
//! allows it, onto a live replica outside the ISR. `AlterIsr` is how a
//! leader changes its ISR; it names the leader epoch it holds, so a deposed
//! leader's late request is refused ([`CommandError::StaleLeaderEpoch`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use super::ids::{BrokerId, Replica, ShardId};
use super::placement::{self, Load, PlacementError};

/// A topic's id, never reused, so a topic created again never meets its predecessor's files.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct TopicId(pub u64);

/// Most partitions in one topic (the broker's `partitions-per-topic-max` may be lower).
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 100_000;
/// Most shards one broker may register.
pub const SHARDS_PER_BROKER_MAX: usize = 1024;
/// Longest broker host name.
pub const HOST_BYTES_MAX: usize = 255;
/// Longest cluster id.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;

/// The whole replicated metadata. Cloned into an `Arc` for every applied
/// revision; never mutated once shared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Grows by one with every command that changed the state.
    pub revision: u64,
    /// Set once by the first leader ([`ClusterCommand::InitCluster`]); empty before.
    pub cluster_id: String,
    /// Registered brokers.
    pub brokers: BTreeMap<BrokerId, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicState>,
    /// The id the next topic gets.
    pub next_topic_id: u64,
}

/// Whether a broker may lead or join an ISR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerLiveness {
    /// Registered, heartbeating and unfenced: may hold replicas, lead, join ISRs.
    Alive,
    /// Registered but not trusted now: leads nothing, joins no ISR, gets no new replicas.
    Fenced,
}

/// One registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    /// Its id.
    pub id: BrokerId,
    /// The host clients and peers connect to.
    pub host: String,
    /// The shared (`--listen`) port.
    pub port: u16,
    /// One port per shard: index = shard id. Its length is the broker's shard count.
    pub shard_ports: Vec<u16>,
    /// Alive or fenced.
    pub liveness: BrokerLiveness,
    /// The incarnation: the revision its last registration made.
    pub broker_epoch: u64,
    /// The controller's clock at its last registration or heartbeat.
    pub last_heartbeat_ms: u64,
    /// The revision that last fenced it (its registration, or a missed
    /// session): it is unfenced only once it has applied this revision,
    /// that is, caught up with the metadata it missed.
    #[serde(default)]
    pub fenced_at_revision: u64,
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    /// Its id.
    pub id: TopicId,
    /// Partitions by number.
    pub partitions: Vec<PartitionState>,
    /// Replicas per partition.
    pub replication_factor: u16,
    /// ISR size below which `acks=all` produces fail.
    pub min_insync_replicas: u16,
    /// Retention by size, if set.
    pub retention_bytes: Option<u64>,
    /// Retention by age, if set.
    pub retention_ms: Option<u64>,
    /// Segment size, if set.
    pub segment_bytes: Option<u64>,
    /// An internal topic (`__offsets`): named `__…`, never deleted by a client.
    pub internal: bool,
    /// Whether a replica outside the ISR may become leader when no ISR member is alive.
    pub unclean_leader_election: bool,
}

/// One partition's replicas and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Distinct brokers; the first is the preferred leader.
    pub replicas: Vec<Replica>,
    /// The leader, if any replica may lead now.
    pub leader: Option<BrokerId>,
    /// Grows with every leader change (including to none).
    pub leader_epoch: u64,
    /// In-sync replicas, in replica order; contains the leader when there is one.
    pub isr: Vec<BrokerId>,
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTopic {
    /// The name: the topic rules (`topic_name::validate_topic_name`), or `__…` when internal.
    pub name: String,
    /// Partition count, 1..=[`PARTITIONS_PER_TOPIC_MAX`].
    pub partitions: u32,
    /// Replicas per partition, at most the alive brokers.
    pub replication_factor: u16,
    /// 1..=replication_factor.
    pub min_insync_replicas: u16,
    /// Retention by size.
    pub retention_bytes: Option<u64>,
    /// Retention by age.
    pub retention_ms: Option<u64>,
    /// Segment size.
    pub segment_bytes: Option<u64>,
    /// Internal topic.
    pub internal: bool,
    /// Allow unclean leader election.
    pub unclean_leader_election: bool,
}

/// A topic's partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
}

/// Which partitions an election looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionScope {
    /// Every partition of every topic.
    All,
    /// These partitions (unknown ones are skipped).
    Partitions(Vec<TopicPartition>),
}

/// What an election may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionKind {
    /// Only partitions whose leader is missing or not alive.
    Unavailable,
    /// Also move leadership back to the preferred (first) replica where it is alive and in sync.
    Preferred,
}

/// A change to the cluster metadata, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// Names the cluster; the first one wins, the same id again is a no-op.
    InitCluster {
        /// 1..=[`CLUSTER_ID_BYTES_MAX`] bytes.
        cluster_id: String,
    },
    /// A broker (re)starts: new incarnation, addresses, fenced.
    RegisterBroker {
        /// The broker.
        broker: BrokerId,
        /// Its host.
        host: String,
        /// Its shared port.
        port: u16,
        /// One port per shard.
        shard_ports: Vec<u16>,
        /// The controller's clock.
        now_ms: u64,
    },
    /// A broker is still there.
    BrokerHeartbeat {
        /// The broker.
        broker: BrokerId,
        /// The incarnation the heartbeat came from.
        broker_epoch: u64,
        /// The controller's clock.
        now_ms: u64,
    },
    /// Take a broker's trust away (missed session, controlled shutdown).
    FenceBroker {
        /// The broker.
        broker: BrokerId,
        /// The incarnation meant.
        broker_epoch: u64,
    },
    /// Trust a registered broker again.
    UnfenceBroker {
        /// The broker.
        broker: BrokerId,
        /// The incarnation meant.
        broker_epoch: u64,
    },
    /// Create topics; each succeeds or fails on its own.
    CreateTopics {
        /// The topics.
        topics: Vec<NewTopic>,
    },
    /// Delete topics; each succeeds or fails on its own.
    DeleteTopics {
        /// The names.
        names: Vec<String>,
    },
    /// A partition leader changes its ISR.
    AlterIsr {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The proposing leader.
        leader: BrokerId,
        /// The leader epoch it holds.
        leader_epoch: u64,
        /// The new ISR: distinct alive replicas including the leader.
        isr: Vec<BrokerId>,
    },
    /// Elect leaders where needed.
    ElectLeaders {
        /// Which partitions.
        scope: ElectionScope,
        /// Which changes.
        kind: ElectionKind,
    },
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The state's revision after the command (unchanged if it changed nothing).
    pub revision: u64,
    /// The command's own answer.
    pub outcome: Result<CommandOutput, CommandError>,
}

/// The answer of a command that was accepted (in part, for topic batches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    /// The cluster id now in force.
    ClusterInitialized {
        /// The id.
        cluster_id: String,
    },
    /// The broker's new incarnation.
    BrokerRegistered {
        /// Its epoch.
        broker_epoch: u64,
    },
    /// The heartbeat was recorded.
    HeartbeatRecorded,
    /// The broker is fenced (it may have been already).
    BrokerFenced,
    /// The broker is alive (it may have been already).
    BrokerUnfenced,
    /// One answer per requested topic, in request order.
    TopicsCreated(Vec<TopicOutcome<TopicId>>),
    /// One answer per requested name, in request order.
    TopicsDeleted(Vec<TopicOutcome<()>>),
    /// The ISR is in force.
    IsrAltered {
        /// The (unchanged) leader epoch.
        leader_epoch: u64,
    },
    /// Every partition whose leader changed.
    LeadersElected(Vec<Election>),
}

/// The answer for one topic of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOutcome<T> {
    /// The topic.
    pub name: String,
    /// Its answer.
    pub result: Result<T, CommandError>,
}

/// One leader change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Election {
    /// The partition.
    pub partition: TopicPartition,
    /// Its new leader (none: no eligible replica).
    pub leader: Option<BrokerId>,
    /// Its new leader epoch.
    pub leader_epoch: u64,
    /// Chosen outside the ISR (data may be lost).
    pub unclean: bool,
}

/// Why a command (or one topic of it) was refused. The lead maps each to a wire code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// The cluster already has another id.
    #[error("the cluster is already named {current:?}, not {proposed:?}")]
    ClusterIdMismatch {
        /// In force.
        current: String,
        /// Proposed.
        proposed: String,
    },
    /// A cluster id must have 1 to 64 bytes.
    #[error("a cluster id has 1 to {CLUSTER_ID_BYTES_MAX} bytes")]
    InvalidClusterId,
    /// The broker's registration is malformed.
    #[error("broker {broker}: {reason}")]
    InvalidBroker {
        /// The broker.
        broker: BrokerId,
        /// What is wrong.
        reason: String,
    },
    /// No such broker is registered.
    #[error("broker {broker} is not registered")]
    UnknownBroker {
        /// The broker.
        broker: BrokerId,
    },
    /// The command was meant for another incarnation of the broker.
    #[error("broker {broker} is at epoch {current}, not {proposed}")]
    StaleBrokerEpoch {
        /// The broker.
        broker: BrokerId,
        /// In force.
        current: u64,
        /// Named by the command.
        proposed: u64,
    },
    /// The name breaks the topic rules.
    #[error("topic {name:?}: {reason}")]
    InvalidTopicName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The topic exists.
    #[error("topic {name:?} already exists")]
    TopicExists {
        /// The name.
        name: String,
    },
    /// The same name twice in one request.
    #[error("topic {name:?} appears twice in the request")]
    DuplicateTopic {
        /// The name.
        name: String,
    },
    /// The topic does not exist.
    #[error("topic {name:?} does not exist")]
    UnknownTopic {
        /// The name.
        name: String,
    },
    /// The partition does not exist.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// Internal topics cannot be deleted by a client.
    #[error("{name:?} is an internal topic and cannot be deleted")]
    InternalTopic {
        /// The name.
        name: String,
    },
    /// Partition count out of range.
    #[error("a topic has 1 to {PARTITIONS_PER_TOPIC_MAX} partitions, not {partitions}")]
    InvalidPartitionCount {
        /// Requested.
        partitions: u32,
    },
    /// A replication factor of 0.
    #[error("the replication factor is at least 1")]
    InvalidReplicationFactor,
    /// More replicas than alive brokers. Retriable once brokers come back.
    #[error("replication factor {replication_factor} needs as many alive brokers, but {alive_brokers} are alive")]
    ReplicationFactorAboveAliveBrokers {
        /// Requested.
        replication_factor: u16,
        /// Alive (unfenced) brokers.
        alive_brokers: usize,
    },
    /// min-insync-replicas out of 1..=replication factor.
    #[error("min-insync-replicas {min_insync_replicas} is not within 1..={replication_factor}")]
    InvalidMinInsyncReplicas {
        /// Requested.
        min_insync_replicas: u16,
        /// The replication factor.
        replication_factor: u16,
    },
    /// AlterIsr from a broker that does not lead the partition.
    #[error(
        "{topic}/{partition}: broker {proposed} is not the leader (the leader is {current:?})"
    )]
    NotLeader {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The leader in force.
        current: Option<BrokerId>,
        /// The proposer.
        proposed: BrokerId,
    },
    /// AlterIsr with an old leader epoch: a newer leader exists.
    #[error(
        "{topic}/{partition}: leader epoch {proposed} is stale, the partition is at {current}"
    )]
    StaleLeaderEpoch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// In force.
        current: u64,
        /// Named by the command.
        proposed: u64,
    },
    /// AlterIsr with an epoch the controller never gave out.
    #[error(
        "{topic}/{partition}: leader epoch {proposed} is newer than the partition's {current}"
    )]
    UnknownLeaderEpoch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// In force.
        current: u64,
        /// Named by the command.
        proposed: u64,
    },
    /// The proposed ISR breaks a rule.
    #[error("{topic}/{partition}: invalid ISR: {reason}")]
    InvalidIsr {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Which rule.
        reason: String,
    },
}

impl From<PlacementError> for CommandError {
    fn from(error: PlacementError) -> CommandError {
        match error {
            PlacementError::InvalidReplicationFactor => CommandError::InvalidReplicationFactor,
            PlacementError::ReplicationFactorAboveAliveBrokers {
                replication_factor,
                alive_brokers,
            } => CommandError::ReplicationFactorAboveAliveBrokers {
                replication_factor,
                alive_brokers,
            },
        }
    }
}

impl CommandError {
    /// True when the same command may succeed later without change (brokers come back).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            CommandError::ReplicationFactorAboveAliveBrokers { .. }
        )
    }
}

/// A handler's answer and whether it changed the state.
struct Applied {
    outcome: Result<CommandOutput, CommandError>,
    changed: bool,
}

impl Applied {
    fn changed(output: CommandOutput) -> Applied {
        Applied {
            outcome: Ok(output),
            changed: true,
        }
    }

    fn unchanged(outcome: Result<CommandOutput, CommandError>) -> Applied {
        Applied {
            outcome,
            changed: false,
        }
    }
}

impl ClusterState {
    /// Applies one committed command: deterministic, and the revision grows
    /// by one exactly when the state changed.
    pub fn apply(&mut self, command: ClusterCommand) -> CommandResult {
        let revision_before = self.revision;
        let applied = match command {
            ClusterCommand::InitCluster { cluster_id } => self.init_cluster(cluster_id),
            ClusterCommand::RegisterBroker {
                broker,
                host,
                port,
                shard_ports,
                now_ms,
            } => self.register_broker(broker, host, port, shard_ports, now_ms),
            ClusterCommand::BrokerHeartbeat {
                broker,
                broker_epoch,
                now_ms,
            } => self.heartbeat(broker, broker_epoch, now_ms),
            ClusterCommand::FenceBroker {
                broker,
                broker_epoch,
            } => self.set_liveness(broker, broker_epoch, BrokerLiveness::Fenced),
            ClusterCommand::UnfenceBroker {
                broker,
                broker_epoch,
            } => self.set_liveness(broker, broker_epoch, BrokerLiveness::Alive),
            ClusterCommand::CreateTopics { topics } => self.create_topics(topics),
            ClusterCommand::DeleteTopics { names } => self.delete_topics(names),
            ClusterCommand::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                isr,
            } => self.alter_isr(&topic, partition, leader, leader_epoch, isr),
            ClusterCommand::ElectLeaders { scope, kind } => self.elect_leaders(&scope, kind),
        };
        if applied.changed {
            self.revision += 1;
        }
        assert!(self.revision == revision_before + u64::from(applied.changed));
        CommandResult {
            revision: self.revision,
            outcome: applied.outcome,
        }
    }

    /// What placement counts: the alive brokers and their shards, with the
    /// replicas and preferred leaderships they hold now.
    pub(super) fn load(&self) -> Load {
        let mut load = Load::new(self.alive_brokers().map(|b| (b.id, b.shard_ports.len())));
        let partitions = self.topics.values().flat_map(|t| t.partitions.iter());
        for partition in partitions {
            for (position, replica) in partition.replicas.iter().enumerate() {
                load.count(*replica, position == 0);
            }
        }
        load
    }

    /// Brokers that may hold new replicas, lead and join ISRs, by id.
    pub fn alive_brokers(&self) -> impl Iterator<Item = &BrokerInfo> {
        self.brokers
            .values()
            .filter(|b| b.liveness == BrokerLiveness::Alive)
    }

    /// Alive brokers whose last heartbeat is more than `session_timeout_ms`
    /// before `now_ms`, with their epochs: what the controller's session
    /// check proposes to fence.
    pub fn brokers_past_session(
        &self,
        now_ms: u64,
        session_timeout_ms: u64,
    ) -> Vec<(BrokerId, u64)> {
        self.alive_brokers()
            .filter(|b| now_ms.saturating_sub(b.last_heartbeat_ms) > session_timeout_ms)
            .map(|b| (b.id, b.broker_epoch))
            .collect()
    }

    fn is_alive(&self, broker: BrokerId) -> bool {
        self.brokers
            .get(&broker)
            .is_some_and(|b| b.liveness == BrokerLiveness::Alive)
    }

    fn init_cluster(&mut self, cluster_id: String) -> Applied {
        if cluster_id.is_empty() || cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return Applied::unchanged(Err(CommandError::InvalidClusterId));
        }
        if self.cluster_id.is_empty() {
            self.cluster_id = cluster_id.clone();
            return Applied::changed(CommandOutput::ClusterInitialized { cluster_id });
        }
        if self.cluster_id == cluster_id {
            return Applied::unchanged(Ok(CommandOutput::ClusterInitialized { cluster_id }));
        }
        Applied::unchanged(Err(CommandError::ClusterIdMismatch {
            current: self.cluster_id.clone(),
            proposed: cluster_id,
        }))
    }

    fn register_broker(
        &mut self,
        broker: BrokerId,
        host: String,
        port: u16,
        shard_ports: Vec<u16>,
        now_ms: u64,
    ) -> Applied {
        let invalid = |reason: &str| {
            Applied::unchanged(Err(CommandError::InvalidBroker {
                broker,
                reason: reason.to_string(),
            }))
        };
        if host.is_empty() || host.len() > HOST_BYTES_MAX {
            return invalid("the host has 1 to 255 bytes");
        }
        if shard_ports.is_empty() || shard_ports.len() > SHARDS_PER_BROKER_MAX {
            return invalid("a broker has 1 to 1024 shards");
        }
        // The incarnation is the revision this registration makes: unique and growing.
        let broker_epoch = self.revision + 1;
        let info = BrokerInfo {
            id: broker,
            host,
            port,
            shard_ports,
            liveness: BrokerLiveness::Fenced,
            broker_epoch,
            last_heartbeat_ms: now_ms,
            fenced_at_revision: broker_epoch,
        };
        self.brokers.insert(broker, info);
        Applied::changed(CommandOutput::BrokerRegistered { broker_epoch })
    }

    /// The broker, if `broker_epoch` is its current incarnation.
    fn broker_at_epoch(
        &mut self,
        broker: BrokerId,
        broker_epoch: u64,
    ) -> Result<&mut BrokerInfo, CommandError> {
        let info = self
            .brokers
            .get_mut(&broker)
            .ok_or(CommandError::UnknownBroker { broker })?;
        if info.broker_epoch != broker_epoch {
            return Err(CommandError::StaleBrokerEpoch {
                broker,
                current: info.broker_epoch,
                proposed: broker_epoch,
            });
        }
        Ok(info)
    }

    fn heartbeat(&mut self, broker: BrokerId, broker_epoch: u64, now_ms: u64) -> Applied {
        match self.broker_at_epoch(broker, broker_epoch) {
            Err(error) => Applied::unchanged(Err(error)),
            // Controllers' clocks differ across leader changes: time only moves forward here.
            Ok(info) if now_ms <= info.last_heartbeat_ms => {
                Applied::unchanged(Ok(CommandOutput::HeartbeatRecorded))
            }
            Ok(info) => {
                info.last_heartbeat_ms = now_ms;
                Applied::changed(CommandOutput::HeartbeatRecorded)
            }
        }
    }

    fn set_liveness(&mut self, broker: BrokerId, broker_epoch: u64, to: BrokerLiveness) -> Applied {
        let output = match to {
            BrokerLiveness::Alive => CommandOutput::BrokerUnfenced,
            BrokerLiveness::Fenced => CommandOutput::BrokerFenced,
        };
        let revision = self.revision + 1;
        match self.broker_at_epoch(broker, broker_epoch) {
            Err(error) => Applied::unchanged(Err(error)),
            Ok(info) if info.liveness == to => Applied::unchanged(Ok(output)),
            Ok(info) => {
                info.liveness = to;
                if to == BrokerLiveness::Fenced {
                    info.fenced_at_revision = revision;
                }
                Applied::changed(output)
            }
        }
    }

    fn create_topics(&mut self, topics: Vec<NewTopic>) -> Applied {
        let mut seen = BTreeSet::new();
        let mut outcomes = Vec::with_capacity(topics.len());
        let mut changed = false;
        for topic in topics {
            let name = topic.name.clone();
            let result = if seen.insert(name.clone()) {
                self.create_topic(topic)
            } else {
                Err(CommandError::DuplicateTopic { name: name.clone() })
            };
            changed |= result.is_ok();
            outcomes.push(TopicOutcome { name, result });
        }
        Applied {
            outcome: Ok(CommandOutput::TopicsCreated(outcomes)),
            changed,
        }
    }

    fn create_topic(&mut self, topic: NewTopic) -> Result<TopicId, CommandError> {
        self.check_new_topic(&topic)?;
        let replicas =
            placement::place_partitions(self.load(), topic.partitions, topic.replication_factor)?;
        let partitions: Vec<PartitionState> = replicas
            .into_iter()
            .map(|replicas| {
                assert!(replicas.len() == usize::from(topic.replication_factor));
                // Every replica is empty, so every one is in sync (as in
                // Kafka); the leader's high watermark counts each only
                // once it has fetched, so acks=all waits for them.
                PartitionState {
                    leader: Some(replicas[0].broker),
                    leader_epoch: 0,
                    isr: replicas.iter().map(|r| r.broker).collect(),
                    replicas,
                }
            })
            .collect();
        assert!(partitions.len() == topic.partitions as usize);
        let id = TopicId(self.next_topic_id);
        self.next_topic_id += 1;
        let state = TopicState {
            id,
            partitions,
            replication_factor: topic.replication_factor,
            min_insync_replicas: topic.min_insync_replicas,
            retention_bytes: topic.retention_bytes,
            retention_ms: topic.retention_ms,
            segment_bytes: topic.segment_bytes,
            internal: topic.internal,
            unclean_leader_election: topic.unclean_leader_election,
        };
        self.topics.insert(topic.name, state);
        Ok(id)
    }

    fn check_new_topic(&self, topic: &NewTopic) -> Result<(), CommandError> {
        let name = &topic.name;
        let checked = match (topic.internal, name.strip_prefix("__")) {
            (true, Some(rest)) => super::topic_name::validate_topic_name(rest),
            (true, None) => Err("an internal topic's name starts with __".to_string()),
            (false, _) => super::topic_name::validate_topic_name(name),
        };
        checked.map_err(|reason| CommandError::InvalidTopicName {
            name: name.clone(),
            reason,
        })?;
        if self.topics.contains_key(name) {
            return Err(CommandError::TopicExists { name: name.clone() });
        }
        if topic.partitions == 0 || topic.partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(CommandError::InvalidPartitionCount {
                partitions: topic.partitions,
            });
        }
        if topic.replication_factor == 0 {
            return Err(CommandError::InvalidReplicationFactor);
        }
        if topic.min_insync_replicas == 0 || topic.min_insync_replicas > topic.replication_factor {
            return Err(CommandError::InvalidMinInsyncReplicas {
                min_insync_replicas: topic.min_insync_replicas,
                replication_factor: topic.replication_factor,
            });
        }
        Ok(())
    }

    fn delete_topics(&mut self, names: Vec<String>) -> Applied {
        let mut outcomes = Vec::with_capacity(names.len());
        let mut changed = false;
        for name in names {
            let result = match self.topics.get(&name) {
                None => Err(CommandError::UnknownTopic { name: name.clone() }),
                Some(topic) if topic.internal => {
                    Err(CommandError::InternalTopic { name: name.clone() })
                }
                Some(_) => {
                    self.topics.remove(&name);
                    changed = true;
                    Ok(())
                }
            };
            outcomes.push(TopicOutcome { name, result });
        }
        Applied {
            outcome: Ok(CommandOutput::TopicsDeleted(outcomes)),
            changed,
        }
    }
}

// Leadership (ISR changes, elections): `state_leadership.rs`.
#[path = "state_leadership.rs"]
mod leadership;

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
