//! The consensus node: openraft on a thread of its own, and the handle shards use.
//!
//! ```text
//!   any thread / shard (glommio)          "raft-<id>" thread: tokio current-thread runtime
//!  ┌──────────────────────────┐          ┌──────────────────────────────────────────────────┐
//!  │ ClusterHandle (Clone)    │ requests │ dispatch ── spawn (≤ requests_in_flight_max) ──┐ │
//!  │  propose(cmd) ───────────┼─mpsc────►│   Propose ─► Raft::client_write ─► committed,   │ │
//!  │  handle_rpc(bytes) ──────┼(bounded) │              applied ─► CommandResult           │ │
//!  │  shutdown() ─────────────┼─────────►│     not the leader? ─► transport.call(leader,   │ │
//!  │      ◄── oneshot reply ──┼──────────┤                        Propose) (one hop)       │ │
//!  │                          │          │   Rpc ─► decode ─► Raft::{vote, append_entries,│ │
//!  │  metrics() ◄─ watch ─────┼──────────┤          install_snapshot} ─► encode reply     │ │
//!  │  subscribe() ◄ broadcast ┼──────────┤ openraft core ─► LogStore (raft/log, raft/vote) │ │
//!  │   (Arc<ClusterState>)    │          │               ─► StateMachineStore ─► publish   │ │
//!  └──────────────────────────┘          │               ─► Network ─► RaftTransport::call ┼─► peers
//!                                        │ leader duty: name the cluster (InitCluster)     │
//!                                        └──────────────────────────────────────────────────┘
//! ```
//!
//! Every channel between the two sides is tokio's `sync` kind, which needs
//! no tokio runtime on the waiting side, so a glommio task awaits a reply
//! like any future. The request queue is bounded (`requests_queued_max`) and
//! so are the requests served at once (`requests_in_flight_max`): a flood of
//! proposals or RPCs waits in the caller, it does not grow a queue.
//!
//! Proposals: a follower's `propose` forwards the command to the leader it
//! knows (one hop, [`rpc::RpcRequest::Propose`]); the leader answers with the
//! applied [`CommandResult`]. When no leader is known, the leader cannot be
//! reached, or the node asked is no longer the leader, the answer is a
//! retriable [`ProposeError`] naming the leader to try when one is known.
//! [`ProposeError::Timeout`] is ambiguous: the command may still be applied
//! (Raft has no way to withdraw an entry), so a command retried after a
//! timeout may meet its own effect (`TopicExists`).
//!
//! Start-up: the stores open on the caller's thread (errors come back from
//! [`ClusterNode::start`]); on a fresh cluster the voter with the lowest id
//! initializes membership with every voter. openraft refuses to initialize a
//! node that has a vote or a log, so a restarted node never does it again,
//! and a second initialization with the same voters (the lowest node came
//! back empty) proposes the same membership at the same index, which Raft
//! reconciles. A one-voter cluster elects itself and never calls the
//! transport.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InitializeError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Raft, RaftMetrics, RaftNetwork, RaftNetworkFactory, ServerState};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::node::Liveness;
use super::node::NodeShared;
use super::rpc::{self, RpcReply, RpcRequest};
use super::state::{BrokerId, ClusterCommand, ClusterState, CommandResult};
use super::store::log::LogStore;
use super::store::state_machine::{StateMachineStore, StatePublisher, StateSubscriber};
use super::{store, ClusterError, NodeAddr, NodeId, TypeConfig};

pub use super::node_config::{ClusterNodeConfig, VOTERS_MAX};
pub use super::propose_error::ProposeError;
pub use super::transport::{RaftTransport, TransportError, TransportFuture};

/// A node's role in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Leads: the controller.
    Leader,
    /// Follows a leader.
    Follower,
    /// Asks for votes.
    Candidate,
    /// Not a voter (before initialization).
    Learner,
    /// Stopped.
    Shutdown,
}

/// What a node knows of the group, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetrics {
    /// This node.
    pub node_id: NodeId,
    /// Its role.
    pub role: NodeRole,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// The last applied log index.
    pub last_applied_index: Option<u64>,
    /// The last log index its snapshot covers.
    pub snapshot_index: Option<u64>,
    /// The last log index purged from its log (covered by the snapshot).
    pub purged_index: Option<u64>,
    /// The revision of the last applied state.
    pub applied_revision: u64,
    /// The voters of its membership.
    pub voters: BTreeSet<NodeId>,
}

/// Starts nodes.
pub struct ClusterNode;

impl ClusterNode {
    /// Opens the node's Raft files under `<data_dir>/raft/`, starts its
    /// thread and returns the handle. Blocks until the Raft is running;
    /// call it from the main thread at start-up, not from a shard.
    ///
    /// # Errors
    /// [`ClusterError::Config`] for a bad configuration; [`ClusterError::Corrupt`]
    /// or I/O errors from the stores; [`ClusterError::Raft`] when openraft refuses to start.
    pub fn start(
        config: ClusterNodeConfig,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<ClusterHandle, ClusterError> {
        config.validate()?;
        let raft_config = config.raft_config()?;
        let raft_dir = store::ensure_raft_dir(&config.data_dir)?;
        let log_store = LogStore::open(&raft_dir)?;
        let state_machine = StateMachineStore::open(&raft_dir, config.subscriber_backlog_max)?;
        let publisher = state_machine.publisher();
        let (requests, requests_rx) = mpsc::channel(config.requests_queued_max);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stopped_tx, stopped) = watch::channel(false);
        let node_id = config.node_id;
        let parts = NodeParts {
            config,
            raft_config,
            transport,
            log_store,
            state_machine,
        };
        let thread_publisher = publisher.clone();
        std::thread::Builder::new()
            .name(format!("raft-{node_id}"))
            .spawn(move || {
                run_thread(parts, requests_rx, started_tx);
                thread_publisher.close();
                let _ = stopped_tx.send(true);
            })
            .map_err(|e| ClusterError::Raft(format!("starting the raft thread: {e}")))?;
        let metrics = started_rx.recv().map_err(|_| ClusterError::ShutDown)??;
        Ok(ClusterHandle {
            shared: Arc::new(HandleShared {
                node_id,
                requests,
                metrics,
                publisher,
                stopped,
            }),
        })
    }
}

/// What the Raft thread is started with.
struct NodeParts {
    config: ClusterNodeConfig,
    raft_config: openraft::Config,
    transport: Arc<dyn RaftTransport>,
    log_store: LogStore,
    state_machine: StateMachineStore,
}

type Metrics = watch::Receiver<RaftMetrics<NodeId, NodeAddr>>;
type Started = std::sync::mpsc::Sender<Result<Metrics, ClusterError>>;

/// A request from a handle to the Raft thread.
enum Request {
    Propose {
        command: ClusterCommand,
        /// Forward to the leader when this node does not lead (a user's
        /// proposal); without, it is proposed here or refused.
        forward: bool,
        reply: oneshot::Sender<Result<CommandResult, ProposeError>>,
    },
    Rpc {
        request: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, ClusterError>>,
    },
    Heartbeat {
        broker: BrokerId,
        broker_epoch: u64,
        applied_revision: u64,
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
    Shutdown,
}

fn run_thread(parts: NodeParts, requests: mpsc::Receiver<Request>, started: Started) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => {
            runtime.block_on(run_node(parts, requests, started));
            // Dropping the runtime drops every task still there (openraft's
            // replication, our requests), and with them the open files.
            drop(runtime);
        }
        Err(e) => {
            let _ = started.send(Err(ClusterError::Raft(format!(
                "starting the raft runtime: {e}"
            ))));
        }
    }
}

async fn run_node(parts: NodeParts, requests: mpsc::Receiver<Request>, started: Started) {
    let NodeParts {
        config,
        raft_config,
        transport,
        log_store,
        state_machine,
    } = parts;
    let publisher = state_machine.publisher();
    let network = Network {
        transport: transport.clone(),
    };
    let raft = match Raft::new(
        config.node_id,
        Arc::new(raft_config),
        network,
        log_store,
        state_machine,
    )
    .await
    {
        Ok(raft) => raft,
        Err(e) => {
            let _ = started.send(Err(ClusterError::Raft(e.to_string())));
            return;
        }
    };
    if let Err(error) = initialize_if_first(&raft, &config).await {
        let _ = started.send(Err(error));
        let _ = raft.shutdown().await;
        return;
    }
    let _ = started.send(Ok(raft.metrics()));
    let node = Arc::new(NodeShared {
        raft: raft.clone(),
        transport,
        in_flight: Arc::new(Semaphore::new(config.requests_in_flight_max)),
        config,
        publisher,
        liveness: Liveness::default(),
    });
    let duties = tokio::spawn(leader_duties(node.clone()));
    let fencing = tokio::spawn(super::liveness::fence_loop(node.clone()));
    dispatch(node, requests).await;
    duties.abort();
    fencing.abort();
    if let Err(error) = raft.shutdown().await {
        tracing::warn!(%error, "the raft core did not stop cleanly");
    }
}

/// On a fresh cluster, the lowest voter initializes the membership.
async fn initialize_if_first(
    raft: &Raft<TypeConfig>,
    config: &ClusterNodeConfig,
) -> Result<(), ClusterError> {
    let lowest = config.voters.keys().next().copied();
    if lowest != Some(config.node_id) {
        return Ok(());
    }
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    match raft.initialize(config.voters.clone()).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(ClusterError::Raft(format!(
            "initializing the metadata group: {e}"
        ))),
    }
}

/// Serves handle requests until a shutdown or until every handle is gone.
async fn dispatch(node: Arc<NodeShared>, mut requests: mpsc::Receiver<Request>) {
    while let Some(request) = requests.recv().await {
        let Ok(permit) = node.in_flight.clone().acquire_owned().await else {
            return;
        };
        let shared = node.clone();
        match request {
            Request::Propose {
                command,
                forward,
                reply,
            } => {
                tokio::spawn(async move {
                    let outcome = if forward {
                        shared.propose(command).await
                    } else {
                        shared.propose_as_leader(command).await
                    };
                    let _ = reply.send(outcome);
                    drop(permit);
                });
            }
            Request::Rpc { request, reply } => {
                tokio::spawn(async move {
                    let _ = reply.send(shared.serve_rpc(&request).await);
                    drop(permit);
                });
            }
            Request::Heartbeat {
                broker,
                broker_epoch,
                applied_revision,
                reply,
            } => {
                tokio::spawn(async move {
                    let heartbeat = shared.heartbeat(broker, broker_epoch, applied_revision);
                    let _ = reply.send(heartbeat.await);
                    drop(permit);
                });
            }
            Request::Shutdown => return,
        }
    }
}

/// Where a proposal went when this node could not take it.
enum Local {
    Applied(CommandResult),
    Forward {
        leader: Option<NodeId>,
        addr: Option<NodeAddr>,
    },
    Failed(ProposeError),
}

impl NodeShared {
    fn propose_timeout(&self) -> Duration {
        Duration::from_millis(self.config.propose_timeout_ms)
    }

    /// A proposal from this node's handle: here if leader, else forwarded once.
    pub(super) async fn propose(
        &self,
        command: ClusterCommand,
    ) -> Result<CommandResult, ProposeError> {
        let timeout_ms = self.config.propose_timeout_ms;
        let attempt = async {
            match self.propose_here(command.clone()).await {
                Local::Applied(result) => Ok(result),
                Local::Failed(error) => Err(error),
                Local::Forward { leader: None, .. } => Err(ProposeError::NoLeader),
                Local::Forward {
                    leader: Some(leader),
                    addr,
                } => {
                    let addr = addr.or_else(|| self.config.voters.get(&leader).cloned());
                    match addr {
                        Some(addr) => self.forward(leader, &addr, command).await,
                        None => Err(ProposeError::NotLeader {
                            leader: Some(leader),
                        }),
                    }
                }
            }
        };
        tokio::time::timeout(self.propose_timeout(), attempt)
            .await
            .unwrap_or(Err(ProposeError::Timeout { timeout_ms }))
    }

    /// A proposal forwarded to this node: taken only if it leads.
    async fn propose_received(
        &self,
        command: ClusterCommand,
    ) -> Result<CommandResult, ProposeError> {
        self.propose_as_leader(command).await
    }

    /// A decision of this node as controller (fencing, unfencing,
    /// elections): proposed only here, never forwarded. It was made from
    /// this leader's view (the heartbeats it heard); a leader deposed while
    /// the proposal waited (cut off from the others, say) must not hand
    /// that stale view to the next leader, which would fence brokers it
    /// hears well.
    pub(super) async fn propose_as_leader(
        &self,
        command: ClusterCommand,
    ) -> Result<CommandResult, ProposeError> {
        let timeout_ms = self.config.propose_timeout_ms;
        let attempt = async {
            match self.propose_here(command).await {
                Local::Applied(result) => Ok(result),
                Local::Failed(error) => Err(error),
                Local::Forward { leader, .. } => Err(ProposeError::NotLeader { leader }),
            }
        };
        tokio::time::timeout(self.propose_timeout(), attempt)
            .await
            .unwrap_or(Err(ProposeError::Timeout { timeout_ms }))
    }

    async fn propose_here(&self, command: ClusterCommand) -> Local {
        match self.raft.client_write(command).await {
            Ok(response) => match response.data {
                Some(result) => Local::Applied(result),
                None => unreachable!("a command's entry always has a result"),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Local::Forward {
                    leader: forward.leader_id,
                    addr: forward.leader_node,
                }
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Local::Failed(ProposeError::Raft {
                    reason: e.to_string(),
                })
            }
            Err(RaftError::Fatal(fatal)) => Local::Failed(match fatal {
                openraft::error::Fatal::Stopped => ProposeError::ShutDown,
                other => ProposeError::Raft {
                    reason: other.to_string(),
                },
            }),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        addr: &NodeAddr,
        command: ClusterCommand,
    ) -> Result<CommandResult, ProposeError> {
        let request = rpc::encode(&RpcRequest::Propose(command));
        let unreachable = |reason: String| ProposeError::LeaderUnreachable { leader, reason };
        let reply = self
            .transport
            .call(leader, addr, request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match rpc::decode::<RpcReply>(&reply) {
            Ok(RpcReply::Propose(outcome)) => outcome,
            Ok(other) => Err(unreachable(format!("answered a proposal with {other:?}"))),
            Err(error) => Err(unreachable(error.to_string())),
        }
    }

    /// Answers one encoded RPC from another node.
    async fn serve_rpc(&self, request: &[u8]) -> Result<Vec<u8>, ClusterError> {
        let reply = match rpc::decode::<RpcRequest>(request)? {
            RpcRequest::Vote(vote) => RpcReply::Vote(self.raft.vote(vote).await),
            RpcRequest::AppendEntries(append) => {
                RpcReply::AppendEntries(self.raft.append_entries(append).await)
            }
            RpcRequest::InstallSnapshot(chunk) => {
                RpcReply::InstallSnapshot(self.raft.install_snapshot(chunk).await)
            }
            RpcRequest::Propose(command) => RpcReply::Propose(self.propose_received(command).await),
            RpcRequest::Heartbeat {
                broker,
                broker_epoch,
                applied_revision,
            } => {
                RpcReply::Heartbeat(self.heartbeat_received(broker, broker_epoch, applied_revision))
            }
        };
        Ok(rpc::encode(&reply))
    }
}

/// What only the leader does: name a cluster that has no id yet.
///
/// Re-checked at every metrics change, so a leader that fails over before
/// its `InitCluster` commits leaves the duty to the next one; the first id
/// applied wins, later ones are refused by `apply`.
async fn leader_duties(node: Arc<NodeShared>) {
    let mut metrics = node.raft.metrics();
    loop {
        let leads = {
            let now = metrics.borrow_and_update();
            now.state == ServerState::Leader && now.current_leader == Some(node.config.node_id)
        };
        if leads && node.publisher.current().cluster_id.is_empty() {
            let cluster_id = new_cluster_id(node.config.node_id);
            if let Err(error) = node
                .propose(ClusterCommand::InitCluster { cluster_id })
                .await
            {
                tracing::info!(%error, "naming the cluster failed; the next leader tries again");
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// A fresh random cluster id: 32 hex digits (std's per-process random hash keys, the clock, the node).
pub(crate) fn new_cluster_id(node_id: NodeId) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u64(node_id);
    hasher.write_u128(now_ns);
    hasher.write_u32(std::process::id());
    let high = hasher.finish();
    hasher.write_u8(1);
    format!("{high:016x}{:016x}", hasher.finish())
}

struct HandleShared {
    node_id: NodeId,
    requests: mpsc::Sender<Request>,
    metrics: Metrics,
    publisher: Arc<StatePublisher>,
    stopped: watch::Receiver<bool>,
}

/// The way into a running node: cheap to clone, `Send + Sync`, and every
/// method is runtime-agnostic (a glommio task may await it).
#[derive(Clone)]
pub struct ClusterHandle {
    shared: Arc<HandleShared>,
}

impl ClusterHandle {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// Tells the controller this broker's incarnation `broker_epoch` is
    /// alive and has applied metadata up to `applied_revision`; kept in the
    /// controller's memory, never logged. Forwarded once when this node
    /// does not lead.
    ///
    /// # Errors
    /// [`ProposeError`]: no leader, an unreachable one, a shut-down node.
    pub async fn heartbeat(
        &self,
        broker: BrokerId,
        broker_epoch: u64,
        applied_revision: u64,
    ) -> Result<(), ProposeError> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Heartbeat {
            broker,
            broker_epoch,
            applied_revision,
            reply,
        };
        if self.shared.requests.send(request).await.is_err() {
            return Err(ProposeError::ShutDown);
        }
        answer.await.unwrap_or(Err(ProposeError::ShutDown))
    }

    /// Proposes a command and waits until it is committed and applied here
    /// or on the leader; forwarded once when this node does not lead.
    ///
    /// # Errors
    /// [`ProposeError`]: [`ProposeError::is_retriable`] tells whether to try again.
    pub async fn propose(&self, command: ClusterCommand) -> Result<CommandResult, ProposeError> {
        self.send_proposal(command, true).await
    }

    /// Proposes `command` on this node only, as its controller decisions
    /// are: refused with `NotLeader` when it does not lead, never forwarded.
    #[cfg(test)]
    pub(crate) async fn propose_as_leader(
        &self,
        command: ClusterCommand,
    ) -> Result<CommandResult, ProposeError> {
        self.send_proposal(command, false).await
    }

    async fn send_proposal(
        &self,
        command: ClusterCommand,
        forward: bool,
    ) -> Result<CommandResult, ProposeError> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Propose {
            command,
            forward,
            reply,
        };
        if self.shared.requests.send(request).await.is_err() {
            return Err(ProposeError::ShutDown);
        }
        answer.await.unwrap_or(Err(ProposeError::ShutDown))
    }

    /// Answers an encoded RPC that arrived from another node on some connection.
    ///
    /// # Errors
    /// [`ClusterError::Rpc`] when the bytes do not decode, [`ClusterError::ShutDown`]
    /// when the node has stopped; the caller sends the peer an error for either.
    pub async fn handle_rpc(&self, request: Vec<u8>) -> Result<Vec<u8>, ClusterError> {
        let (reply, answer) = oneshot::channel();
        if self
            .shared
            .requests
            .send(Request::Rpc { request, reply })
            .await
            .is_err()
        {
            return Err(ClusterError::ShutDown);
        }
        answer.await.unwrap_or(Err(ClusterError::ShutDown))
    }

    /// A receiver of applied states: first the current one, then every change.
    pub fn subscribe(&self) -> StateSubscriber {
        self.shared.publisher.subscribe()
    }

    /// The last applied state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.shared.publisher.current()
    }

    /// What this node knows of the group now.
    pub fn metrics(&self) -> ClusterMetrics {
        let raft = self.shared.metrics.borrow();
        let role = match raft.state {
            ServerState::Leader => NodeRole::Leader,
            ServerState::Follower => NodeRole::Follower,
            ServerState::Candidate => NodeRole::Candidate,
            ServerState::Learner => NodeRole::Learner,
            ServerState::Shutdown => NodeRole::Shutdown,
        };
        ClusterMetrics {
            node_id: self.shared.node_id,
            role,
            leader: raft.current_leader,
            term: raft.current_term,
            last_log_index: raft.last_log_index,
            last_applied_index: raft.last_applied.map(|id| id.index),
            snapshot_index: raft.snapshot.map(|id| id.index),
            purged_index: raft.purged.map(|id| id.index),
            applied_revision: self.shared.publisher.current().revision,
            voters: raft.membership_config.membership().voter_ids().collect(),
        }
    }

    /// Stops the node and waits until its thread has let go of every file;
    /// subscribers then see the end. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.shared.requests.send(Request::Shutdown).await;
        let mut stopped = self.shared.stopped.clone();
        // An error means the thread is gone, which is what we wait for.
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }
}

/// openraft's network factory: one [`PeerClient`] per target over the transport.
struct Network {
    transport: Arc<dyn RaftTransport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient {
            target,
            addr: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// openraft's client for one peer.
struct PeerClient {
    target: NodeId,
    addr: NodeAddr,
    transport: Arc<dyn RaftTransport>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>;

impl PeerClient {
    /// One call; transport failures become `Unreachable` (openraft backs off), bad replies `NetworkError`.
    async fn call<E: std::error::Error>(
        &self,
        request: RpcRequest,
        option: &RPCOption,
    ) -> Result<RpcReply, RPCError<NodeId, NodeAddr, E>> {
        let bytes = rpc::encode(&request);
        let call = self.transport.call(self.target, &self.addr, bytes);
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => return Err(RPCError::Unreachable(Unreachable::new(&error))),
            Err(_) => {
                let error = TransportError::Unreachable {
                    target: self.target,
                    reason: format!("no reply within {} ms", option.hard_ttl().as_millis()),
                };
                return Err(RPCError::Unreachable(Unreachable::new(&error)));
            }
        };
        rpc::decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    // The error type is openraft's, fixed by `RaftNetwork`; boxing it is not ours to choose.
    #[allow(clippy::result_large_err)]
    fn remote<T, E: std::error::Error>(
        &self,
        outcome: Result<T, RaftError<NodeId, E>>,
    ) -> RpcResult<T, E> {
        outcome.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.addr.clone(),
                e,
            ))
        })
    }

    fn mismatch<E: std::error::Error>(&self, reply: &RpcReply) -> RPCError<NodeId, NodeAddr, E> {
        let error = ClusterError::Rpc(format!(
            "node {} answered with the wrong reply: {reply:?}",
            self.target
        ));
        RPCError::Network(NetworkError::new(&error))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self
            .call(RpcRequest::AppendEntries(request), &option)
            .await?
        {
            RpcReply::AppendEntries(outcome) => self.remote(outcome),
            other => Err(self.mismatch(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, openraft::error::InstallSnapshotError> {
        match self
            .call(RpcRequest::InstallSnapshot(request), &option)
            .await?
        {
            RpcReply::InstallSnapshot(outcome) => self.remote(outcome),
            other => Err(self.mismatch(&other)),
        }
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(RpcRequest::Vote(request), &option).await? {
            RpcReply::Vote(outcome) => self.remote(outcome),
            other => Err(self.mismatch(&other)),
        }
    }
}
