//! The bytes of the metadata group's RPCs: what a [`RaftTransport`](super::raft::RaftTransport)
//! carries between nodes and [`ClusterHandle::handle_rpc`](super::raft::ClusterHandle::handle_rpc) answers.
//!
//! ```text
//!  request = [RPC_ENCODING_VERSION] ++ JSON(RpcRequest)
//!  reply   = [RPC_ENCODING_VERSION] ++ JSON(RpcReply)
//!
//!  RpcRequest::Vote(VoteRequest)                    ──► RpcReply::Vote(Result<VoteResponse, RaftError>)
//!  RpcRequest::AppendEntries(AppendEntriesRequest)  ──► RpcReply::AppendEntries(Result<AppendEntriesResponse, RaftError>)
//!  RpcRequest::InstallSnapshot(InstallSnapshotRequest: one chunk)
//!                                                   ──► RpcReply::InstallSnapshot(Result<InstallSnapshotResponse, RaftError<InstallSnapshotError>>)
//!  RpcRequest::Propose(ClusterCommand)              ──► RpcReply::Propose(Result<CommandResult, ProposeError>)
//! ```
//!
//! The Raft messages are openraft's own types through their serde derives
//! (feature `serde`), so a change of openraft version is a change of this
//! encoding: the version byte lets a node refuse bytes it does not know
//! rather than misread them, and the pin in `Cargo.toml` keeps the version
//! fixed. `Propose` carries a proposal from a follower to the leader (one
//! hop: the leader never forwards it again). A snapshot travels in chunks of
//! at most `snapshot_chunk_bytes_max` bytes (JSON makes a byte up to four),
//! so one request stays far below a frame limit of a few MiB; an
//! append-entries request holds at most openraft's `max_payload_entries`.
//!
//! The envelope is an externally tagged JSON object, e.g.
//! `{"Vote":{"vote":{"leader_id":{"term":3,"node_id":1},"committed":false},"last_log_id":null}}`.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::propose_error::ProposeError;
use super::state::{BrokerId, ClusterCommand, CommandResult};
use super::{ClusterError, NodeId, TypeConfig};

/// The first byte of every request and reply.
pub const RPC_ENCODING_VERSION: u8 = 1;

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    /// A candidate asks for a vote.
    Vote(VoteRequest<NodeId>),
    /// The leader replicates entries (or heartbeats).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// The leader sends one chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower forwards a proposal to the leader.
    Propose(ClusterCommand),
    /// A broker's heartbeat, forwarded to the controller (kept in its memory, never logged).
    Heartbeat {
        /// The broker.
        broker: BrokerId,
        /// Its incarnation.
        broker_epoch: u64,
        /// The last revision every shard of the broker has applied.
        #[serde(default)]
        applied_revision: u64,
    },
}

/// The answer to an [`RpcRequest`] of the same name.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    /// To [`RpcRequest::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`RpcRequest::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`RpcRequest::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// To [`RpcRequest::Propose`].
    Propose(Result<CommandResult, ProposeError>),
    /// To [`RpcRequest::Heartbeat`].
    Heartbeat(Result<(), ProposeError>),
}

/// Encodes a request or a reply.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut bytes = vec![RPC_ENCODING_VERSION];
    serde_json::to_writer(&mut bytes, message).expect("RPC messages always serialize");
    bytes
}

/// Decodes a request or a reply.
///
/// # Errors
/// [`ClusterError::Rpc`] for an unknown version or bytes that do not parse.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClusterError> {
    match bytes.split_first() {
        Some((&RPC_ENCODING_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| ClusterError::Rpc(e.to_string()))
        }
        Some((version, _)) => Err(ClusterError::Rpc(format!(
            "encoding version {version}, this node speaks {RPC_ENCODING_VERSION}"
        ))),
        None => Err(ClusterError::Rpc("an empty message".into())),
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    #[test]
    fn requests_round_trip_and_bad_bytes_are_errors() {
        let vote = VoteRequest {
            vote: Vote::new(3, 1),
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 7)),
        };
        let bytes = encode(&RpcRequest::Vote(vote.clone()));
        assert_eq!(bytes[0], RPC_ENCODING_VERSION);
        match decode::<RpcRequest>(&bytes).unwrap() {
            RpcRequest::Vote(decoded) => assert_eq!(decoded, vote),
            other => panic!("{other:?}"),
        }
        let command = ClusterCommand::InitCluster {
            cluster_id: "c".into(),
        };
        match decode::<RpcRequest>(&encode(&RpcRequest::Propose(command.clone()))).unwrap() {
            RpcRequest::Propose(decoded) => assert_eq!(decoded, command),
            other => panic!("{other:?}"),
        }
        let mut other_version = bytes.clone();
        other_version[0] = 2;
        assert!(matches!(
            decode::<RpcRequest>(&other_version),
            Err(ClusterError::Rpc(_))
        ));
        assert!(matches!(
            decode::<RpcRequest>(&[]),
            Err(ClusterError::Rpc(_))
        ));
        assert!(matches!(
            decode::<RpcRequest>(&bytes[..bytes.len() - 1]),
            Err(ClusterError::Rpc(_))
        ));
    }
}
