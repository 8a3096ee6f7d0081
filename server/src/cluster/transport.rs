//! [`TcpTransport`]: the metadata group's RPCs over the broker protocol.
//!
//! ```text
//!  Raft thread (tokio)                                   peer broker, any shard (glommio)
//!  PeerClient ─► TcpTransport::call(target, addr, rpc)
//!     idle connection to target, or connect ───────────► --listen port: the client frame loop
//!     frame: Request { RaftRequest { from_node,          (same limits, timeouts, error answers)
//!            cluster_id, auth (reserved), payload } } ─► handlers::raft ─► ClusterHandle::handle_rpc
//!     ◄─ Response { RaftResponse { payload } } ◄───────────────────────── reply bytes ◄─┘
//! ```
//!
//! The connections belong to the Raft thread, not to a shard: only the
//! metadata group uses them, and a shard would only relay bytes it cannot
//! read. One request at a time per connection; a call takes an idle
//! connection to its target or opens one, and gives it back when the answer
//! came (at most [`IDLE_CONNECTIONS_PER_PEER_MAX`] kept per peer). A
//! connection that failed in any way is dropped, never reused: its next
//! bytes could belong to the answer that did not arrive. Every call is
//! bounded by [`CALL_TIMEOUT_MS`] on top of openraft's own RPC deadline.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use flatbuffers::FlatBufferBuilder;
use shardlog_wire::protocol::{self, fb, ProtocolLimits, FRAME_PREFIX_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{NodeAddr, NodeId};

/// Why a transport call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No connection to the node, or it broke: the caller backs off and tries again.
    #[error("node {target} is unreachable: {reason}")]
    Unreachable {
        /// The node.
        target: NodeId,
        /// Why.
        reason: String,
    },
    /// The node answered with an error (it is stopping, or refused the bytes).
    #[error("node {target} refused the request: {reason}")]
    Refused {
        /// The node.
        target: NodeId,
        /// What it said.
        reason: String,
    },
}

/// The future a transport call returns.
pub type TransportFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send + 'a>>;

/// Carries [`rpc`](super::rpc)-encoded requests to another node and brings its reply back.
///
/// This is `async fn call(&self, target, addr, request) -> Result<Vec<u8>, TransportError>`
/// written out so that `Arc<dyn RaftTransport>` works. The future runs on the
/// Raft thread's tokio runtime; an implementation over shard-held
/// connections sends the bytes to a shard over a channel and awaits the
/// reply. On the receiving node the bytes go to [`ClusterHandle::handle_rpc`](super::raft::ClusterHandle::handle_rpc)
/// and its answer comes back as the reply. openraft bounds each call by its
/// own RPC deadline.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `request` to node `target` at `addr` and returns its reply.
    fn call<'a>(
        &'a self,
        target: NodeId,
        addr: &'a NodeAddr,
        request: Vec<u8>,
    ) -> TransportFuture<'a>;
}

/// Idle connections kept to one peer.
pub const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 4;
/// The longest a connection attempt takes.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// The longest one call takes, connecting included.
pub const CALL_TIMEOUT_MS: u64 = 15_000;

/// The transport of one node.
pub struct TcpTransport {
    node_id: NodeId,
    /// The cluster id, once this node knows it: sent with every request.
    cluster_id: std::sync::Arc<OnceLock<String>>,
    limits: ProtocolLimits,
    idle: Mutex<HashMap<NodeId, Vec<TcpStream>>>,
    next_correlation_id: AtomicU32,
}

impl TcpTransport {
    /// A transport for node `node_id` whose frames answer to `limits`.
    pub fn new(
        node_id: NodeId,
        cluster_id: std::sync::Arc<OnceLock<String>>,
        limits: ProtocolLimits,
    ) -> TcpTransport {
        TcpTransport {
            node_id,
            cluster_id,
            limits,
            idle: Mutex::new(HashMap::new()),
            next_correlation_id: AtomicU32::new(1),
        }
    }

    fn take_idle(&self, target: NodeId) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(&target).and_then(Vec::pop)
    }

    fn give_back(&self, target: NodeId, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let streams = idle.entry(target).or_default();
        if streams.len() < IDLE_CONNECTIONS_PER_PEER_MAX {
            streams.push(stream);
        }
    }

    async fn call_once(
        &self,
        target: NodeId,
        addr: &NodeAddr,
        request: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable { target, reason };
        let mut stream = match self.take_idle(target) {
            Some(stream) => stream,
            None => connect(addr).await.map_err(unreachable)?,
        };
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode_request(correlation_id, request);
        stream
            .write_all(&frame)
            .await
            .map_err(|e| unreachable(format!("sending to {addr}: {e}")))?;
        let message = read_frame(&mut stream, &self.limits)
            .await
            .map_err(|e| unreachable(format!("reading from {addr}: {e}")))?;
        let reply = decode_reply(target, correlation_id, &message, &self.limits)?;
        self.give_back(target, stream);
        Ok(reply)
    }

    fn encode_request(&self, correlation_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::with_capacity(payload.len() + 256);
        let payload = fbb.create_vector(payload);
        let cluster_id = fbb.create_string(self.cluster_id.get().map_or("", String::as_str));
        let body = fb::RaftRequest::create(
            &mut fbb,
            &fb::RaftRequestArgs {
                from_node: self.node_id,
                cluster_id: Some(cluster_id),
                auth: None,
                payload: Some(payload),
            },
        );
        let client_id = format!("shardlog-server node {}", self.node_id);
        protocol::request_frame(
            fbb,
            correlation_id,
            Some(&client_id),
            fb::RequestBody::RaftRequest,
            body.as_union_value(),
        )
    }
}

impl RaftTransport for TcpTransport {
    fn call<'a>(
        &'a self,
        target: NodeId,
        addr: &'a NodeAddr,
        request: Vec<u8>,
    ) -> TransportFuture<'a> {
        Box::pin(async move {
            let call = self.call_once(target, addr, &request);
            match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), call).await {
                Ok(outcome) => outcome,
                Err(_) => Err(TransportError::Unreachable {
                    target,
                    reason: format!("no answer from {addr} within {CALL_TIMEOUT_MS} ms"),
                }),
            }
        })
    }
}

async fn connect(addr: &NodeAddr) -> Result<TcpStream, String> {
    // `--peers` writes IPv6 hosts in brackets; the resolver wants them bare.
    let host = addr.host.trim_start_matches('[').trim_end_matches(']');
    let connecting = TcpStream::connect((host, addr.port));
    let stream = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
        .await
        .map_err(|_| format!("connecting to {addr} took over {CONNECT_TIMEOUT_MS} ms"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("setting TCP_NODELAY on {addr}: {e}"))?;
    Ok(stream)
}

/// Reads one frame and returns its flatbuffer (a Raft reply has no payload part).
async fn read_frame(stream: &mut TcpStream, limits: &ProtocolLimits) -> Result<Vec<u8>, String> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| e.to_string())?;
    let parsed = protocol::parse_prefix(&prefix, limits)
        .map_err(|e| format!("a bad frame prefix: {e:?}"))?
        .ok_or("a short frame prefix")?;
    let mut rest = vec![0u8; parsed.frame_bytes - FRAME_PREFIX_BYTES];
    stream
        .read_exact(&mut rest)
        .await
        .map_err(|e| e.to_string())?;
    rest.truncate(parsed.message_bytes);
    Ok(rest)
}

/// The reply bytes of a verified response, or what the peer said instead.
fn decode_reply(
    target: NodeId,
    correlation_id: u32,
    message: &[u8],
    limits: &ProtocolLimits,
) -> Result<Vec<u8>, TransportError> {
    let refused = |reason: String| TransportError::Refused { target, reason };
    let response = protocol::verify_response(message, limits)
        .map_err(|e| refused(format!("an unreadable response: {e}")))?;
    if response.correlation_id() != correlation_id {
        return Err(refused(format!(
            "answered request {} instead of {correlation_id}",
            response.correlation_id()
        )));
    }
    if let Some(error) = response.body_as_error_response() {
        let message = error.error_message().unwrap_or_default();
        return Err(refused(format!("{:?}: {message}", error.error_code())));
    }
    let body = response
        .body_as_raft_response()
        .ok_or_else(|| refused(format!("answered with {:?}", response.body_type())))?;
    if body.error_code() != fb::ErrorCode::None {
        let message = body.error_message().unwrap_or_default();
        return Err(refused(format!("{:?}: {message}", body.error_code())));
    }
    Ok(body
        .payload()
        .map(|p| p.bytes().to_vec())
        .unwrap_or_default())
}
