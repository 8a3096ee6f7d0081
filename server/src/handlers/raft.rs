//! RaftRequest: a metadata-group RPC from another cluster member, relayed
//! to this broker's Raft thread ([`ClusterHandle::handle_rpc`](crate::cluster::raft::ClusterHandle::handle_rpc)).
//!
//! It arrives like any client frame (same limits, timeouts and verifier);
//! the shard checks who sent it and relays the bytes, it never decodes
//! them: that happens on the Raft thread, and bytes that do not decode come
//! back as an error answer, never a panic.

use flatbuffers::FlatBufferBuilder;
use shardlog_wire::protocol::fb;

use super::Outgoing;
use super::{error_parts, finish};
use crate::cluster::raft::ClusterHandle;
use crate::cluster::ClusterError;
use crate::config::ServerConfig;
use crate::error::WireError;

/// A RaftRequest, parsed into owned values.
#[derive(Debug)]
pub struct RaftParsed {
    from_node: u64,
    cluster_id: String,
    auth_bytes: usize,
    payload: Vec<u8>,
}

pub fn parse(body: fb::RaftRequest<'_>) -> RaftParsed {
    RaftParsed {
        from_node: body.from_node(),
        cluster_id: body.cluster_id().unwrap_or_default().to_string(),
        auth_bytes: body.auth().map_or(0, |a| a.len()),
        payload: body
            .payload()
            .map(|p| p.bytes().to_vec())
            .unwrap_or_default(),
    }
}

/// Takes the broker's configuration and its metadata group: nothing of the shard.
pub async fn handle(
    config: &ServerConfig,
    cluster: Option<&ClusterHandle>,
    correlation_id: u32,
    request: RaftParsed,
) -> Outgoing {
    let outcome = match check_sender(config, cluster, &request) {
        Err(error) => Err(error),
        Ok(cluster) => cluster
            .handle_rpc(request.payload)
            .await
            .map_err(|error| match error {
                ClusterError::ShutDown => WireError::new(
                    fb::ErrorCode::ShuttingDown,
                    "this broker's metadata node is stopping",
                ),
                other => WireError::new(fb::ErrorCode::InvalidRequest, other.to_string()),
            }),
    };
    encode(correlation_id, outcome)
}

/// The cluster handle, if the sender is a voter of this broker's cluster.
fn check_sender<'a>(
    config: &ServerConfig,
    cluster: Option<&'a ClusterHandle>,
    request: &RaftParsed,
) -> Result<&'a ClusterHandle, WireError> {
    let invalid = |message: String| WireError::new(fb::ErrorCode::InvalidRequest, message);
    let (Some(cluster), Some(peers)) = (cluster, &config.peers) else {
        return Err(invalid(
            "this broker is not a cluster member (it runs without --peers)".into(),
        ));
    };
    // Reserved for broker authentication, which a later version adds: a
    // sender that fills it expects a check this build cannot make.
    if request.auth_bytes > 0 {
        return Err(invalid(
            "broker authentication is not supported by this broker; send an empty auth field"
                .into(),
        ));
    }
    if !peers.contains_key(&request.from_node) {
        return Err(invalid(format!(
            "node {} is not a voter of this cluster ({:?})",
            request.from_node,
            peers.keys()
        )));
    }
    let ours = &cluster.state().cluster_id;
    if !request.cluster_id.is_empty() && !ours.is_empty() && *ours != request.cluster_id {
        return Err(invalid(format!(
            "node {} is in cluster {}, this broker in cluster {ours}",
            request.from_node, request.cluster_id
        )));
    }
    Ok(cluster)
}

fn encode(correlation_id: u32, outcome: Result<Vec<u8>, WireError>) -> Outgoing {
    let mut fbb = FlatBufferBuilder::new();
    let (payload, error) = match outcome {
        Ok(reply) => (Some(fbb.create_vector(&reply)), None),
        Err(error) => (None, Some(error)),
    };
    let (error_code, error_message) = error_parts(&mut fbb, error.as_ref());
    let body = fb::RaftResponse::create(
        &mut fbb,
        &fb::RaftResponseArgs {
            error_code,
            error_message,
            payload,
        },
    );
    Outgoing {
        message: finish(
            fbb,
            correlation_id,
            fb::ResponseBody::RaftResponse,
            body.as_union_value(),
        ),
        payload: Vec::new(),
    }
}
