//! Why a proposal to the metadata group has no result: what a shard's
//! handler turns into `ControllerUnavailable` or a refusal, and what the
//! RPCs carry between nodes.

use serde::{Deserialize, Serialize};

use super::NodeId;

/// Why a proposal has no result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known now (an election is on, or there is no quorum). Retry.
    #[error("the metadata group has no leader now; retry")]
    NoLeader,
    /// The node asked is not the leader; try `leader` when known.
    #[error("this node is not the metadata leader; try node {leader:?}")]
    NotLeader {
        /// The leader as that node knows it.
        leader: Option<NodeId>,
    },
    /// The leader did not answer the forwarded proposal. Retry.
    #[error("the metadata leader {leader} is unreachable: {reason}")]
    LeaderUnreachable {
        /// The leader.
        leader: NodeId,
        /// Why.
        reason: String,
    },
    /// No answer in time: the command may or may not be applied. Retry with care.
    #[error("no answer within {timeout_ms} ms; the command may still be applied")]
    Timeout {
        /// The propose timeout.
        timeout_ms: u64,
    },
    /// The node has shut down.
    #[error("the cluster node has shut down")]
    ShutDown,
    /// openraft failed (a storage error stops the node).
    #[error("raft failed: {reason}")]
    Raft {
        /// What it said.
        reason: String,
    },
}

impl ProposeError {
    /// True when the same proposal may succeed later, on this node or on [`ProposeError::leader_hint`].
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ProposeError::NoLeader
                | ProposeError::NotLeader { .. }
                | ProposeError::LeaderUnreachable { .. }
                | ProposeError::Timeout { .. }
        )
    }

    /// The node to try, when one is known.
    pub fn leader_hint(&self) -> Option<NodeId> {
        match self {
            ProposeError::NotLeader { leader } => *leader,
            ProposeError::LeaderUnreachable { leader, .. } => Some(*leader),
            _ => None,
        }
    }
}
