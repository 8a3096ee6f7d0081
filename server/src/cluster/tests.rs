//! Tests of whole nodes: 1, 3 and 5 in one process over an in-memory
//! [`RaftTransport`] whose links can be cut.
//!
//! Every wait is for an event, bounded by a generous deadline ([`DEADLINE`]);
//! no assertion is about speed. The Raft timings are set short so the tests
//! run in seconds, which is a configuration, not a threshold.
//!
//! Proposals through a follower are forwarded to the leader (one hop) and
//! answered with the applied result; while there is no leader they fail
//! with a retriable [`ProposeError`], and [`propose_until_applied`] retries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::raft::{
    ClusterHandle, ClusterNode, ClusterNodeConfig, NodeRole, ProposeError, RaftTransport,
    TransportError, TransportFuture,
};
use super::state::{
    BrokerId, ClusterCommand, ClusterState, CommandOutput, CommandResult, NewTopic,
};
use super::{NodeAddr, NodeId};

/// How long any awaited event may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Nodes by id, and which links are cut.
#[derive(Default)]
struct MemNetwork {
    nodes: Mutex<BTreeMap<NodeId, ClusterHandle>>,
    cut: Mutex<BTreeSet<(NodeId, NodeId)>>,
    calls_count: AtomicU64,
}

struct MemTransport {
    from: NodeId,
    network: Arc<MemNetwork>,
}

impl RaftTransport for MemTransport {
    fn call<'a>(
        &'a self,
        target: NodeId,
        _addr: &'a NodeAddr,
        request: Vec<u8>,
    ) -> TransportFuture<'a> {
        Box::pin(async move {
            self.network.calls_count.fetch_add(1, Ordering::Relaxed);
            let unreachable = |reason: &str| TransportError::Unreachable {
                target,
                reason: reason.into(),
            };
            if self.network.is_cut(self.from, target) {
                return Err(unreachable("the link is cut"));
            }
            let handle = self.network.nodes.lock().unwrap().get(&target).cloned();
            let handle = handle.ok_or_else(|| unreachable("no such node"))?;
            handle
                .handle_rpc(request)
                .await
                .map_err(|e| TransportError::Refused {
                    target,
                    reason: e.to_string(),
                })
        })
    }
}

impl MemNetwork {
    fn is_cut(&self, a: NodeId, b: NodeId) -> bool {
        let cut = self.cut.lock().unwrap();
        cut.contains(&(a, b)) || cut.contains(&(b, a))
    }

    fn isolate(&self, node: NodeId, others: impl Iterator<Item = NodeId>) {
        let mut cut = self.cut.lock().unwrap();
        cut.extend(others.map(|other| (node, other)));
    }

    fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }
}

/// Nodes with their data directories; a stopped node keeps its directory.
struct TestCluster {
    network: Arc<MemNetwork>,
    voters: BTreeMap<NodeId, NodeAddr>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    running: BTreeMap<NodeId, ClusterHandle>,
    tune: fn(&mut ClusterNodeConfig),
}

fn fast(config: &mut ClusterNodeConfig) {
    config.heartbeat_interval_ms = 50;
    config.election_timeout_min_ms = 300;
    config.election_timeout_max_ms = 600;
    config.propose_timeout_ms = 3_000;
}

impl TestCluster {
    fn start(voters_count: u64, tune: fn(&mut ClusterNodeConfig)) -> TestCluster {
        let voters = (1..=voters_count)
            .map(|id| {
                (
                    id,
                    NodeAddr {
                        host: format!("node-{id}"),
                        port: 9000 + id as u16,
                    },
                )
            })
            .collect();
        let mut cluster = TestCluster {
            network: Arc::default(),
            voters,
            dirs: BTreeMap::new(),
            running: BTreeMap::new(),
            tune,
        };
        for id in 1..=voters_count {
            cluster.dirs.insert(id, tempfile::tempdir().unwrap());
            cluster.start_node(id);
        }
        cluster
    }

    fn start_node(&mut self, id: NodeId) {
        let mut config =
            ClusterNodeConfig::new(id, self.voters.clone(), self.dirs[&id].path().to_path_buf());
        (self.tune)(&mut config);
        let transport = Arc::new(MemTransport {
            from: id,
            network: self.network.clone(),
        });
        let handle = ClusterNode::start(config, transport).unwrap();
        self.network
            .nodes
            .lock()
            .unwrap()
            .insert(id, handle.clone());
        self.running.insert(id, handle);
    }

    async fn stop_node(&mut self, id: NodeId) {
        let handle = self.running.remove(&id).unwrap();
        handle.shutdown().await;
        self.network.nodes.lock().unwrap().remove(&id);
    }

    fn handle(&self, id: NodeId) -> &ClusterHandle {
        &self.running[&id]
    }

    /// Waits until every node in `among` names the same leader, itself in `among` and leading.
    async fn leader_among(&self, among: &[NodeId]) -> NodeId {
        eventually("a leader agreed on", || {
            let leaders: BTreeSet<Option<NodeId>> = among
                .iter()
                .map(|id| self.handle(*id).metrics().leader)
                .collect();
            let leader = match leaders.into_iter().collect::<Vec<_>>()[..] {
                [Some(leader)] if among.contains(&leader) => leader,
                _ => return None,
            };
            (self.handle(leader).metrics().role == NodeRole::Leader).then_some(leader)
        })
        .await
    }

    async fn leader(&self) -> NodeId {
        let running: Vec<NodeId> = self.running.keys().copied().collect();
        self.leader_among(&running).await
    }

    /// Waits until every running node applied the same state, and returns it.
    async fn converged(&self) -> Arc<ClusterState> {
        eventually("every node applied the same state", || {
            let states: Vec<Arc<ClusterState>> = self.running.values().map(|h| h.state()).collect();
            states
                .windows(2)
                .all(|w| w[0] == w[1])
                .then(|| states[0].clone())
        })
        .await
    }

    /// With two brokers registered, cuts the leader off from every other
    /// node; returns it and the others (a majority).
    async fn cut_off_the_leader(&self) -> (NodeId, Vec<NodeId>) {
        let leader = self.leader().await;
        add_brokers(self.handle(leader), 2).await;
        let others: Vec<NodeId> = self
            .running
            .keys()
            .copied()
            .filter(|id| *id != leader)
            .collect();
        self.network.isolate(leader, others.iter().copied());
        (leader, others)
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.running.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Proposes until applied, retrying while there is no leader to take it (an
/// election may be on). Not after a timeout: that command may still apply,
/// and a retry would meet it (`TopicExists`).
async fn propose_until_applied(handle: &ClusterHandle, command: ClusterCommand) -> CommandResult {
    let start = Instant::now();
    loop {
        match handle.propose(command.clone()).await {
            Ok(result) => return result,
            Err(
                ProposeError::NoLeader
                | ProposeError::NotLeader { .. }
                | ProposeError::LeaderUnreachable { .. },
            ) if start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!(
                "proposing {command:?} through node {}: {error}",
                handle.node_id()
            ),
        }
    }
}

fn register(broker: u64) -> ClusterCommand {
    ClusterCommand::RegisterBroker {
        broker: BrokerId(broker),
        host: "127.0.0.1".into(),
        port: 9092,
        shard_ports: vec![9093, 9094],
        now_ms: 1_000,
    }
}

fn create_topic(name: &str, partitions: u32, replication_factor: u16) -> ClusterCommand {
    ClusterCommand::CreateTopics {
        topics: vec![NewTopic {
            name: name.into(),
            partitions,
            replication_factor,
            min_insync_replicas: 1,
            retention_bytes: None,
            retention_ms: None,
            segment_bytes: None,
            internal: false,
            unclean_leader_election: false,
        }],
    }
}

/// Registers and unfences brokers `1..=count` through `handle`.
async fn add_brokers(handle: &ClusterHandle, count: u64) {
    for broker in 1..=count {
        let registered = propose_until_applied(handle, register(broker)).await;
        let Ok(CommandOutput::BrokerRegistered { broker_epoch }) = registered.outcome else {
            panic!("{registered:?}");
        };
        let unfence = ClusterCommand::UnfenceBroker {
            broker: BrokerId(broker),
            broker_epoch,
        };
        assert!(propose_until_applied(handle, unfence).await.outcome.is_ok());
    }
}

fn created(result: &CommandResult) -> bool {
    matches!(&result.outcome, Ok(CommandOutput::TopicsCreated(o)) if o.iter().all(|t| t.result.is_ok()))
}

/// Collects what a node's subscriber receives until the node shuts down.
fn record(handle: &ClusterHandle) -> tokio::task::JoinHandle<Vec<Arc<ClusterState>>> {
    let mut subscriber = handle.subscribe();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(state) = subscriber.next().await {
            seen.push(state);
        }
        assert_eq!(
            subscriber.skipped_count(),
            0,
            "the test stays within the backlog"
        );
        seen
    })
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn a_one_node_cluster_works_with_no_network_and_restarts() {
    block_on(async {
        let mut cluster = TestCluster::start(1, fast);
        assert_eq!(cluster.leader().await, 1);
        let node = cluster.handle(1).clone();
        eventually("the leader names the cluster", || {
            (!node.state().cluster_id.is_empty()).then_some(())
        })
        .await;
        add_brokers(&node, 1).await;
        assert!(created(
            &propose_until_applied(&node, create_topic("t", 4, 1)).await
        ));
        let before = node.state();
        assert_eq!(before.topics["t"].partitions.len(), 4);

        cluster.stop_node(1).await;
        cluster.start_node(1);
        let node = cluster.handle(1).clone();
        eventually("the restarted node re-applies its log", || {
            (node.state() == before).then_some(())
        })
        .await;
        assert_eq!(node.metrics().voters, BTreeSet::from([1]));
        assert_eq!(
            cluster.network.calls_count.load(Ordering::Relaxed),
            0,
            "no RPC at all"
        );
        cluster.shutdown().await;
    });
}

#[test]
fn three_nodes_forward_a_follower_proposal_and_apply_the_same_revisions() {
    block_on(async {
        let cluster = TestCluster::start(3, fast);
        let recorders: Vec<_> = cluster.running.values().map(record).collect();
        let leader = cluster.leader().await;
        let follower = *cluster.running.keys().find(|id| **id != leader).unwrap();
        let through = cluster.handle(follower).clone();
        add_brokers(&through, 3).await;

        let mut latencies_us = Vec::new();
        for i in 0..20 {
            let start = Instant::now();
            let result = through.propose(create_topic(&format!("t{i}"), 3, 3)).await;
            latencies_us.push(start.elapsed().as_micros());
            assert!(created(
                &result.expect("forwarded to the leader and applied")
            ));
        }
        latencies_us.sort();
        eprintln!(
            "in-memory 3 nodes, proposal through a follower: p50 {} µs, max {} µs (information only)",
            latencies_us[latencies_us.len() / 2],
            latencies_us[latencies_us.len() - 1]
        );
        let state = cluster.converged().await;
        assert_eq!(state.topics.len(), 20);
        for partition in state.topics.values().flat_map(|t| &t.partitions) {
            let brokers: BTreeSet<BrokerId> = partition.replicas.iter().map(|r| r.broker).collect();
            assert_eq!(brokers.len(), 3);
        }
        cluster.shutdown().await;

        let sequences: Vec<Vec<Arc<ClusterState>>> = futures_util::future::join_all(recorders)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for sequence in &sequences {
            assert!(
                sequence.windows(2).all(|w| w[0].revision < w[1].revision),
                "revisions grow"
            );
            assert_eq!(sequence.last().unwrap().revision, state.revision);
        }
        assert!(
            sequences.windows(2).all(|w| w[0] == w[1]),
            "every node's subscriber saw the same states"
        );
    });
}

fn a_new_leader_takes_over(voters_count: u64) {
    block_on(async {
        let mut cluster = TestCluster::start(voters_count, fast);
        let old_leader = cluster.leader().await;
        add_brokers(cluster.handle(old_leader), 3).await;
        cluster.stop_node(old_leader).await;

        let new_leader = cluster.leader().await;
        assert_ne!(new_leader, old_leader);
        let any = cluster.running.values().next().unwrap().clone();
        assert!(created(
            &propose_until_applied(&any, create_topic("after", 2, 3)).await
        ));

        cluster.start_node(old_leader);
        let state = cluster.converged().await;
        assert!(
            state.topics.contains_key("after"),
            "the old leader caught up"
        );
        cluster.shutdown().await;
    });
}

#[test]
fn three_nodes_elect_a_new_leader_when_the_leader_stops() {
    a_new_leader_takes_over(3);
}

#[test]
fn five_nodes_elect_a_new_leader_when_the_leader_stops() {
    a_new_leader_takes_over(5);
}

fn snapshot_often(config: &mut ClusterNodeConfig) {
    fast(config);
    config.snapshot_logs_since_last_count = 4;
    config.logs_kept_after_snapshot_count = 0;
}

/// The follower stops; the leader snapshots and purges its log past the
/// follower's last entry, so the follower can only catch up by installing
/// the leader's snapshot.
#[test]
fn a_restarted_node_catches_up_past_a_snapshot() {
    block_on(async {
        let mut cluster = TestCluster::start(3, snapshot_often);
        let leader = cluster.leader().await;
        let follower = *cluster.running.keys().find(|id| **id != leader).unwrap();
        let leader_handle = cluster.handle(leader).clone();
        add_brokers(&leader_handle, 3).await;
        cluster.converged().await;
        let follower_last_index = cluster.handle(follower).metrics().last_log_index.unwrap();
        cluster.stop_node(follower).await;
        for i in 0..10 {
            assert!(created(
                &propose_until_applied(&leader_handle, create_topic(&format!("t{i}"), 1, 2)).await
            ));
        }
        eventually(
            "the leader purged its log past the follower's last entry",
            || {
                leader_handle
                    .metrics()
                    .purged_index
                    .filter(|purged| *purged > follower_last_index)
            },
        )
        .await;
        cluster.start_node(follower);
        let state = cluster.converged().await;
        assert_eq!(state.topics.len(), 10);
        let follower_metrics = cluster.handle(follower).metrics();
        assert!(
            follower_metrics.snapshot_index > Some(follower_last_index),
            "{follower_metrics:?}"
        );
        cluster.shutdown().await;
    });
}

#[test]
fn without_a_quorum_proposals_fail_with_a_retriable_error() {
    block_on(async {
        let mut cluster = TestCluster::start(3, fast);
        let leader = cluster.leader().await;
        add_brokers(cluster.handle(leader), 1).await;
        // Stop both followers: the leader is left alone and cannot commit.
        let followers: Vec<NodeId> = cluster
            .running
            .keys()
            .copied()
            .filter(|id| *id != leader)
            .collect();
        for follower in &followers {
            cluster.stop_node(*follower).await;
        }
        let alone = cluster
            .handle(leader)
            .propose(create_topic("x", 1, 1))
            .await;
        assert!(matches!(&alone, Err(e) if e.is_retriable()), "{alone:?}");

        // Bring one follower back and stop the leader: a follower alone has no leader to reach.
        cluster.start_node(followers[0]);
        cluster.converged().await;
        cluster.stop_node(leader).await;
        let follower_alone = cluster
            .handle(followers[0])
            .propose(create_topic("y", 1, 1))
            .await;
        match &follower_alone {
            Err(
                error @ (ProposeError::NoLeader
                | ProposeError::LeaderUnreachable { .. }
                | ProposeError::Timeout { .. }),
            ) => {
                assert!(error.is_retriable());
            }
            other => panic!("expected a retriable error, got {other:?}"),
        }
        cluster.shutdown().await;
    });
}

#[test]
fn a_partitioned_leader_is_replaced_and_rejoins() {
    block_on(async {
        let cluster = TestCluster::start(3, fast);
        let recorders: Vec<_> = cluster.running.values().map(record).collect();
        let (old_leader, majority) = cluster.cut_off_the_leader().await;

        let new_leader = cluster.leader_among(&majority).await;
        assert_ne!(new_leader, old_leader);
        assert!(created(
            &propose_until_applied(cluster.handle(majority[0]), create_topic("majority", 1, 2))
                .await
        ));
        let cut_off = cluster
            .handle(old_leader)
            .propose(create_topic("minority", 1, 1))
            .await;
        assert!(
            matches!(&cut_off, Err(e) if e.is_retriable()),
            "{cut_off:?}"
        );

        cluster.network.heal();
        let state = cluster.converged().await;
        assert!(state.topics.contains_key("majority"));
        assert!(
            !state.topics.contains_key("minority"),
            "the cut-off leader's entry was never committed"
        );
        cluster.leader().await;
        cluster.shutdown().await;

        let sequences: Vec<Vec<Arc<ClusterState>>> = futures_util::future::join_all(recorders)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // Whatever each saw, a revision means the same state everywhere.
        let mut by_revision: BTreeMap<u64, Arc<ClusterState>> = BTreeMap::new();
        for state in sequences.iter().flatten() {
            let first = by_revision
                .entry(state.revision)
                .or_insert_with(|| state.clone());
            assert_eq!(
                first, state,
                "revision {} differs between nodes",
                state.revision
            );
        }
    });
}

/// [`fast`], with proposals that wait long enough to outlast a cut.
fn fast_patient_proposals(config: &mut ClusterNodeConfig) {
    fast(config);
    config.propose_timeout_ms = 30_000;
}

#[test]
fn a_deposed_leaders_own_decision_is_never_forwarded_to_the_next_leader() {
    block_on(async {
        let cluster = TestCluster::start(3, fast_patient_proposals);
        let (old_leader, majority) = cluster.cut_off_the_leader().await;
        // Cut off, the old leader decides something as controller (as its
        // fence loop does); the proposal waits for a quorum it cannot get.
        let deposed = cluster.handle(old_leader).clone();
        let decided =
            tokio::spawn(
                async move { deposed.propose_as_leader(create_topic("stale", 1, 1)).await },
            );
        let new_leader = cluster.leader_among(&majority).await;
        assert_ne!(new_leader, old_leader);
        // Healed while it still waits: it learns it was deposed, and the
        // decision is refused, not handed to the new leader.
        cluster.network.heal();
        let outcome = decided.await.expect("the proposal task");
        assert!(
            matches!(&outcome, Err(ProposeError::NotLeader { .. })),
            "{outcome:?}"
        );
        let state = cluster.converged().await;
        assert!(
            !state.topics.contains_key("stale"),
            "the deposed leader's decision was never applied"
        );
        // A user's proposal through the same node is still forwarded.
        assert!(created(
            &cluster
                .handle(old_leader)
                .propose(create_topic("fresh", 1, 1))
                .await
                .expect("forwarded to the new leader")
        ));
        cluster.shutdown().await;
    });
}
