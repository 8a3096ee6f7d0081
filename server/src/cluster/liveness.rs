//! Broker liveness at the controller: heartbeats live in the leader's
//! memory; only the changes they cause (FenceBroker, UnfenceBroker) go
//! through the Raft log.
//!
//! ```text
//!  broker's shard 0 ── ClusterHandle::heartbeat ──► its Raft thread ──(forwarded once)──► leader: heard[broker] = (epoch, now)
//!  leader, every session/4: Alive and not heard for a session ─► propose FenceBroker
//!                           Fenced and heard within a session  ─► propose UnfenceBroker
//! ```
//!
//! Why not log heartbeats: a heartbeat per broker per second would be a
//! Raft entry, an fsync on every voter and a new revision broadcast to every
//! shard, for nothing that changes. A new leader knows no heartbeats yet, so
//! it counts every broker as heard at the moment it took over: a broker is
//! fenced only after a whole session of silence under one leader. A
//! heartbeat from an old incarnation (another `broker_epoch`) is kept, but
//! counts for nothing until the broker's registration of that epoch applies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::propose_error::ProposeError;
use super::raft::NodeShared;
use super::rpc::{self, RpcReply, RpcRequest};
use super::state::{BrokerId, BrokerLiveness, ClusterCommand};

/// What the leader heard, since it leads.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    heard: Mutex<HashMap<BrokerId, Heard>>,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    broker_epoch: u64,
    at: Instant,
}

impl Liveness {
    fn record(&self, broker: BrokerId, broker_epoch: u64) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let at = Instant::now();
        heard.insert(broker, Heard { broker_epoch, at });
    }

    fn heard_at(&self, broker: BrokerId, broker_epoch: u64) -> Option<Instant> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let entry = heard.get(&broker)?;
        (entry.broker_epoch == broker_epoch).then_some(entry.at)
    }

    fn forget_all(&self) {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl NodeShared {
    fn leader(&self) -> Option<super::NodeId> {
        let metrics = self.raft.metrics();
        let now = metrics.borrow();
        now.current_leader
    }

    fn leads(&self) -> bool {
        let metrics = self.raft.metrics();
        let now = metrics.borrow();
        now.state == ServerState::Leader && now.current_leader == Some(self.config.node_id)
    }

    /// A heartbeat of this node's broker: recorded here if it leads, else forwarded once.
    pub(super) async fn heartbeat(
        &self,
        broker: BrokerId,
        broker_epoch: u64,
    ) -> Result<(), ProposeError> {
        if self.leads() {
            self.liveness.record(broker, broker_epoch);
            return Ok(());
        }
        let Some(leader) = self.leader() else {
            return Err(ProposeError::NoLeader);
        };
        let Some(addr) = self.config.voters.get(&leader).cloned() else {
            return Err(ProposeError::NotLeader {
                leader: Some(leader),
            });
        };
        let unreachable = |reason: String| ProposeError::LeaderUnreachable { leader, reason };
        let request = rpc::encode(&RpcRequest::Heartbeat {
            broker,
            broker_epoch,
        });
        let reply = self
            .transport
            .call(leader, &addr, request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match rpc::decode::<RpcReply>(&reply) {
            Ok(RpcReply::Heartbeat(outcome)) => outcome,
            Ok(other) => Err(unreachable(format!("answered a heartbeat with {other:?}"))),
            Err(error) => Err(unreachable(error.to_string())),
        }
    }

    /// A heartbeat forwarded to this node: taken only if it leads.
    pub(super) fn heartbeat_received(
        &self,
        broker: BrokerId,
        broker_epoch: u64,
    ) -> Result<(), ProposeError> {
        if !self.leads() {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        self.liveness.record(broker, broker_epoch);
        Ok(())
    }
}

/// While this node leads: fences brokers silent for a session, unfences those heard again.
pub(super) async fn fence_loop(node: Arc<NodeShared>) {
    let session = Duration::from_millis(node.config.broker_session_timeout_ms);
    let mut tick = tokio::time::interval(session / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        if !node.leads() {
            if leading_since.take().is_some() {
                node.liveness.forget_all();
            }
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        for command in liveness_changes(&node, since, session) {
            if let Err(error) = node.propose(command.clone()).await {
                tracing::info!(%error, ?command, "a liveness change did not commit; tried again at the next check");
            }
        }
    }
}

/// The fence and unfence commands the state needs now.
fn liveness_changes(node: &NodeShared, since: Instant, session: Duration) -> Vec<ClusterCommand> {
    let now = Instant::now();
    let state = node.publisher.current();
    let mut commands = Vec::new();
    for (broker, info) in &state.brokers {
        let heard = node.liveness.heard_at(*broker, info.broker_epoch);
        let last = heard.map_or(since, |at| at.max(since));
        let silent = now.saturating_duration_since(last) > session;
        let (broker, broker_epoch) = (*broker, info.broker_epoch);
        match info.liveness {
            BrokerLiveness::Alive if silent => {
                tracing::warn!(broker = %broker, broker_epoch, "no heartbeat for a session: fencing");
                commands.push(ClusterCommand::FenceBroker {
                    broker,
                    broker_epoch,
                });
            }
            BrokerLiveness::Fenced if heard.is_some() && !silent => {
                tracing::info!(broker = %broker, broker_epoch, "heard again: unfencing");
                commands.push(ClusterCommand::UnfenceBroker {
                    broker,
                    broker_epoch,
                });
            }
            _ => {}
        }
    }
    commands
}
