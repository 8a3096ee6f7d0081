//! The ids of the cluster's things: brokers, their shards, and where a
//! replica lives.

use serde::{Deserialize, Serialize};

/// A broker's id: the `--node-id` of the node, the same number as its Raft node id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct BrokerId(pub u64);

/// A shard's index within its broker (`0..shard_ports.len()`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct ShardId(pub u16);

impl std::fmt::Display for BrokerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where one replica lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Replica {
    /// The broker.
    pub broker: BrokerId,
    /// Its shard, as placed. A broker restarted with fewer shards serves it on
    /// `shard % shard_count`, as one-broker placement does today.
    pub shard: ShardId,
}
