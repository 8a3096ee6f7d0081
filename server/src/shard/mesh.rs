//! The mesh service: this shard's end of glommio's channel mesh, the only
//! way work and answers cross cores.
//!
//! Concurrency contract: one per shard, used only on its thread. A request
//! to another shard is sent with a fresh id and answered by a `Response`
//! with the same id; the caller awaits a oneshot that the receive loop
//! completes. Channels are bounded ([`MESH_CHANNEL_CAPACITY`]) and data
//! requests served at once are bounded ([`MESH_DATA_REQUESTS_MAX`]): a busy
//! shard stops draining, its channels fill, and senders wait.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::sync::{Semaphore, StaticPermit};

use super::messages::{ShardMessage, ShardRequest, ShardResponse};

/// Capacity of each channel between two shards.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Data requests (produce, fetch, list offsets) from other shards that a
/// shard serves at once; while they are all busy it stops draining its
/// channels, so a full channel makes the forwarding shard wait.
pub const MESH_DATA_REQUESTS_MAX: u64 = 1024;

/// This shard's senders to every other shard, and its requests awaiting answers.
pub struct Mesh {
    shard: usize,
    senders: Senders<ShardMessage>,
    /// Mesh peer index of each shard id (learned from Hello messages).
    peer_of_shard: RefCell<Vec<Option<usize>>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<ShardResponse>>>,
    next_request_id: Cell<u64>,
    /// Data requests from other shards being served ([`MESH_DATA_REQUESTS_MAX`]).
    data_requests: Rc<Semaphore>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("shard", &self.shard)
            .field("pending", &self.pending.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Shard `shard`'s end of a mesh of `count` shards.
    pub fn new(shard: usize, count: usize, senders: Senders<ShardMessage>) -> Mesh {
        assert!(shard < count);
        let mut peer_of_shard = vec![None; count];
        peer_of_shard[shard] = Some(senders.peer_id());
        Mesh {
            shard,
            senders,
            peer_of_shard: RefCell::new(peer_of_shard),
            pending: RefCell::new(HashMap::new()),
            next_request_id: Cell::new(1),
            data_requests: Rc::new(Semaphore::new(MESH_DATA_REQUESTS_MAX)),
        }
    }

    /// Tells every peer which mesh index is this shard, and waits to hear from all of them.
    pub async fn handshake(&self) {
        for peer in 0..self.senders.nr_consumers() {
            if peer != self.senders.peer_id() {
                let sent = self
                    .senders
                    .send_to(peer, ShardMessage::Hello { shard: self.shard })
                    .await;
                assert!(sent.is_ok(), "the mesh is up during start-up");
            }
        }
        while self.peer_of_shard.borrow().iter().any(Option::is_none) {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// The permit a message from another shard needs before it is served:
    /// one of [`MESH_DATA_REQUESTS_MAX`] for a data request, none otherwise.
    /// Waiting here is the pushback: the channel fills and its sender waits.
    /// A permit is held only while serving, which never waits on the mesh,
    /// so the wait always ends.
    pub async fn admit(&self, message: &ShardMessage) -> Option<StaticPermit> {
        match message {
            ShardMessage::Request { request, .. } if request.is_data() => {
                self.data_requests.acquire_static_permit(1).await.ok()
            }
            _ => None,
        }
    }

    /// Shard `shard` is mesh peer `peer`.
    pub fn learn_peer(&self, shard: usize, peer: usize) {
        assert!(
            shard < self.peer_of_shard.borrow().len(),
            "shard ids stay below the shard count"
        );
        self.peer_of_shard.borrow_mut()[shard] = Some(peer);
    }

    /// Completes the request `id` with `response` (a late answer to a
    /// caller that stopped waiting is dropped).
    pub fn complete(&self, id: u64, response: ShardResponse) {
        if let Some(waiter) = self.pending.borrow_mut().remove(&id) {
            let _ = waiter.send(response);
        }
    }

    /// Sends `message` to shard `shard`, waiting for room in its channel.
    pub async fn send(&self, shard: usize, message: ShardMessage) {
        let peer = self.peer_of_shard.borrow()[shard].expect("handshake completed before serving");
        if self.senders.send_to(peer, message).await.is_err() {
            tracing::debug!(shard, "peer shard is gone; dropping a message");
        }
    }

    /// Runs `request` on another shard and waits for its answer
    /// (`Unavailable` when that shard is gone).
    pub async fn request(&self, shard: usize, request: ShardRequest) -> ShardResponse {
        assert!(
            shard != self.shard,
            "a shard serves its own requests directly"
        );
        let id = self.next_request_id.get();
        self.next_request_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.send(
            shard,
            ShardMessage::Request {
                from: self.shard,
                id,
                request,
            },
        )
        .await;
        rx.await.unwrap_or(ShardResponse::Unavailable)
    }
}
