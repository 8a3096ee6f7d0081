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

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::node::{Heard, NodeShared};
use super::propose_error::ProposeError;
use super::rpc::{self, RpcReply, RpcRequest};
use super::state::{
    BrokerId, BrokerInfo, BrokerLiveness, ClusterCommand, ElectionKind, ElectionScope,
};

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
        applied_revision: u64,
    ) -> Result<(), ProposeError> {
        if self.leads() {
            self.liveness.record(broker, broker_epoch, applied_revision);
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
            applied_revision,
        });
        // Bounded by a heartbeat interval: a heartbeat stuck on a leader
        // that just went away must not keep this broker silent to the next
        // one for a whole session (it would be fenced though alive).
        let interval = Duration::from_millis(self.config.broker_session_timeout_ms / 3);
        let call = self.transport.call(leader, &addr, request);
        let reply = tokio::time::timeout(interval, call)
            .await
            .map_err(|_| unreachable(format!("no answer within {} ms", interval.as_millis())))?
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
        applied_revision: u64,
    ) -> Result<(), ProposeError> {
        if !self.leads() {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        self.liveness.record(broker, broker_epoch, applied_revision);
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
            if let Err(error) = node.propose_as_leader(command.clone()).await {
                tracing::info!(%error, ?command, "a liveness change did not commit; tried again at the next check");
            }
        }
        // Leaders off fenced brokers (and back onto returning ones when no
        // one else could lead); fenced followers out of the ISR.
        if node.publisher.current().elections_needed() {
            let command = ClusterCommand::ElectLeaders {
                scope: ElectionScope::All,
                kind: ElectionKind::Unavailable,
            };
            if let Err(error) = node.propose_as_leader(command).await {
                tracing::info!(%error, "electing leaders did not commit; tried again at the next check");
            }
        }
    }
}

/// The fence and unfence commands the state needs now.
fn liveness_changes(node: &NodeShared, since: Instant, session: Duration) -> Vec<ClusterCommand> {
    let now = Instant::now();
    let state = node.publisher.current();
    let changes = state.brokers.iter().filter_map(|(broker, info)| {
        let heard = node.liveness.heard(*broker, info.broker_epoch);
        liveness_change(*broker, info, heard, since, now, session)
    });
    changes.collect()
}

/// What one broker needs: fenced when silent for a `session` (counted from
/// `since` at the earliest, when this node began to lead); unfenced when
/// heard within a session and caught up, that is, every shard of it has
/// applied the revision that fenced it.
fn liveness_change(
    broker: BrokerId,
    info: &BrokerInfo,
    heard: Option<Heard>,
    since: Instant,
    now: Instant,
    session: Duration,
) -> Option<ClusterCommand> {
    let last = heard.map_or(since, |h| h.at.max(since));
    let silent = now.saturating_duration_since(last) > session;
    let broker_epoch = info.broker_epoch;
    match info.liveness {
        BrokerLiveness::Alive if silent => {
            tracing::warn!(broker = %broker, broker_epoch, "no heartbeat for a session: fencing");
            Some(ClusterCommand::FenceBroker {
                broker,
                broker_epoch,
            })
        }
        BrokerLiveness::Fenced if !silent => {
            let heard = heard?;
            if heard.applied_revision < info.fenced_at_revision {
                tracing::debug!(broker = %broker, applied = heard.applied_revision, fenced_at = info.fenced_at_revision, "heard again, not caught up yet");
                return None;
            }
            tracing::info!(broker = %broker, broker_epoch, "heard again and caught up: unfencing");
            Some(ClusterCommand::UnfenceBroker {
                broker,
                broker_epoch,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fenced_at(revision: u64) -> BrokerInfo {
        BrokerInfo {
            id: BrokerId(2),
            host: "127.0.0.1".into(),
            port: 9000,
            shard_ports: vec![9001],
            liveness: BrokerLiveness::Fenced,
            broker_epoch: 5,
            last_heartbeat_ms: 0,
            fenced_at_revision: revision,
        }
    }

    #[test]
    fn a_fenced_broker_is_unfenced_only_once_heard_and_caught_up() {
        let session = Duration::from_secs(6);
        let since = Instant::now();
        let now = since + Duration::from_secs(1);
        let heard = |applied_revision| {
            Some(Heard {
                broker_epoch: 5,
                at: now,
                applied_revision,
            })
        };
        let info = fenced_at(40);
        let change = |heard| liveness_change(BrokerId(2), &info, heard, since, now, session);
        assert_eq!(change(None), None, "not heard: stays fenced");
        assert_eq!(change(heard(39)), None, "heard, but behind its fencing");
        assert_eq!(
            change(heard(40)),
            Some(ClusterCommand::UnfenceBroker {
                broker: BrokerId(2),
                broker_epoch: 5
            })
        );
        let long_ago = Some(Heard {
            broker_epoch: 5,
            at: since,
            applied_revision: 99,
        });
        let later = since + session + Duration::from_secs(1);
        assert_eq!(
            liveness_change(BrokerId(2), &info, long_ago, since, later, session),
            None,
            "caught up but silent for a session"
        );
    }

    #[test]
    fn an_alive_broker_is_fenced_after_a_silent_session_only() {
        let session = Duration::from_secs(6);
        let since = Instant::now();
        let info = BrokerInfo {
            liveness: BrokerLiveness::Alive,
            ..fenced_at(0)
        };
        let within = since + session;
        assert_eq!(
            liveness_change(BrokerId(2), &info, None, since, within, session),
            None,
            "a new leader counts everyone as heard when it took over"
        );
        let after = within + Duration::from_millis(1);
        assert!(matches!(
            liveness_change(BrokerId(2), &info, None, since, after, session),
            Some(ClusterCommand::FenceBroker { .. })
        ));
    }
}
