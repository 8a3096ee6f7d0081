//! The cluster control plane: the metadata's Raft group, its state machine
//! and its storage, as a self-contained core that the broker plugs into.
//!
//! Brokers started with `--peers <id>@<host>:<port>,...` form one Raft group
//! of voters (1, 3 or 5) on openraft. The group replicates one log of
//! [`state::ClusterCommand`]s; every node applies them to its own
//! [`state::ClusterState`] (brokers, topics, replicas as (broker, shard),
//! leaders, leader epochs, ISRs) and publishes each applied revision to
//! subscribers, so every shard can hold a copy.
//!
//! ```text
//!  state.rs      ClusterState + ClusterCommand: the pure, deterministic apply
//!  placement.rs  where a new topic's replicas go (called by apply)
//!  store/        openraft storage under <data-dir>/raft/: the log, the vote,
//!                the state machine and its snapshots
//!  rpc.rs        the byte encoding of Raft RPCs and forwarded proposals
//!  raft.rs       ClusterNode / ClusterHandle: the Raft thread and its bridge
//!  transport.rs  TcpTransport: RPCs to peers' --listen ports, from the Raft thread
//!  identity.rs   <data-dir>/node.json: the node id, voters and cluster id a directory belongs to
//!  liveness.rs   heartbeats in the leader's memory; fence / unfence through the log
//! ```
//!
//! Why a thread of its own: openraft's futures must be `Send` and it wants a
//! tokio-like runtime (timers, spawned tasks, `tokio::sync`); glommio's
//! shard executors are `!Send` and single-threaded, so openraft cannot live
//! on a shard, and running it there would put consensus fsyncs and election
//! timers on a core's data path. One dedicated thread runs a tokio
//! current-thread runtime with the `Raft`; shards reach it only through
//! [`raft::ClusterHandle`], whose methods send messages over bounded tokio
//! channels (runtime-agnostic, so a glommio task can await them) and whose
//! subscribers receive `Arc<ClusterState>` snapshots. No shard shares
//! mutable state with it.
//!
//! How the broker wires it: `--node-id` and `--peers` become a
//! [`raft::ClusterNodeConfig`] (`server.rs`), after [`identity`] checked that
//! the data directory belongs to this node and these voters; [`transport`]
//! carries the [`rpc`]-encoded requests from the Raft thread to a peer's
//! `--listen` port as `RaftRequest` frames, where any shard relays the bytes
//! to [`raft::ClusterHandle::handle_rpc`] (`handlers/raft.rs`); shard 0
//! registers the broker, publishes every applied state to every shard's
//! metadata copy and, while this node leads, creates `__offsets`
//! (`shard/control.rs`); topic admin proposes through
//! [`raft::ClusterHandle::propose`] (`handlers/cluster_admin.rs`); brokers
//! heartbeat through [`raft::ClusterHandle::heartbeat`] into the leader's
//! memory, and the leader fences the silent and then elects leaders where
//! a fence left a partition without one (`liveness.rs`, `ElectLeaders`).
//!
//! Architecture Invariant: nothing here runs on a shard. The only things that
//! cross to a shard are `Send` messages and `Arc<ClusterState>` snapshots,
//! which are never mutated once published.
//!
//! Architecture Invariant: `ClusterState::apply` reads nothing but the state
//! and the command (no clock, no I/O, no hash-map order), so every node
//! computes the same state from the same log.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod identity;
pub mod ids;
mod liveness;
mod node;
pub mod node_config;
pub mod placement;
pub mod propose_error;
pub mod raft;
pub mod rpc;
pub mod state;
pub mod store;
#[cfg(test)]
mod tests;
pub mod topic_name;
pub mod transport;

/// A Raft node's id: the broker's `--node-id`, the same number as its [`state::BrokerId`].
pub type NodeId = u64;

/// Where a node listens for broker-to-broker traffic (its `--listen` address).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Parses `--peers`: `<id>@<host>:<port>` separated by commas.
///
/// # Errors
/// [`ClusterError::Config`] naming the malformed peer or a repeated id.
pub fn parse_peers(peers: &str) -> Result<BTreeMap<NodeId, NodeAddr>, ClusterError> {
    let mut parsed = BTreeMap::new();
    for peer in peers.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || ClusterError::Config(format!("peer {peer:?} is not <id>@<host>:<port>"));
        let (id, addr) = peer.split_once('@').ok_or_else(bad)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let id: NodeId = id.parse().map_err(|_| bad())?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        let addr = NodeAddr {
            host: host.to_string(),
            port,
        };
        if parsed.insert(id, addr).is_some() {
            return Err(ClusterError::Config(format!("peer id {id} appears twice")));
        }
    }
    Ok(parsed)
}

openraft::declare_raft_types!(
    /// openraft's types for the metadata group. An entry's response is
    /// `None` for entries that carry no command (blank, membership).
    pub TypeConfig:
        D = state::ClusterCommand,
        R = Option<state::CommandResult>,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What can go wrong in the cluster module outside a command's own refusal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the node was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file under `<data-dir>/raft/` is damaged (not a torn tail).
    #[error("{path} is damaged at byte {offset}: {reason}; restore the node from a peer (empty its raft directory) or from a backup")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The node's configuration is wrong.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// openraft refused or failed.
    #[error("raft: {0}")]
    Raft(String),
    /// The node has shut down (or its thread stopped).
    #[error("the cluster node has shut down")]
    ShutDown,
    /// An RPC's bytes do not decode.
    #[error("undecodable raft rpc: {0}")]
    Rpc(String),
}

impl ClusterError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ClusterError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_are_named() {
        let peers = parse_peers("1@127.0.0.1:9092, 2@[::1]:9093,3@h:1").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[&2].host, "[::1]");
        assert_eq!(peers[&2].to_string(), "[::1]:9093");
        for bad in ["1@h", "x@h:1", "1@:1", "1@h:70000", "1@h:1,1@h:2", "h:1"] {
            assert!(
                matches!(parse_peers(bad), Err(ClusterError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_are_send_and_sync() {
        fn check<T: Send + Sync + std::error::Error>() {}
        check::<ClusterError>();
        check::<state::CommandError>();
        check::<raft::ProposeError>();
    }
}
