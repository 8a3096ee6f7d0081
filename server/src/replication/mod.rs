//! Partition replication between brokers, shard to shard.
//!
//! ```text
//!  broker A, shard 1 (leader of p)                      broker B, shard 0 (follower of p)
//!   produce ─► log (durable under A's flush policy)       fetcher (A, shard 1) ── one per leader shard
//!   acks=all waits for the high watermark                   │ ReplicaFetch {p @ B's durable end, …}
//!   handlers/replica_fetch.rs ◄──── A's shard-1 port ◄──────┘ (and every other partition B's
//!     records B's offset (its ack) ─► high watermark          shard 0 follows from A's shard 1)
//!     may propose B back into the ISR (isr.rs)
//!     answers batches (cache, O_DIRECT, sendfile) ─────────► append_replica, verbatim
//! ```
//!
//! Pull, as Kafka does, rather than push: the follower decides when it has
//! made a batch durable under its own flush policy and says so with its
//! next fetch offset, a slow follower slows only itself, and the leader's
//! side is the consumer fetch path (the same zero-copy reads). Traffic is
//! batched per (follower shard, leader shard): one request carries every
//! partition the follower shard follows there, and because the connection
//! ends on the leader's own shard port nothing hops cores on either side.
//! What a shard needs from elsewhere (ISR changes, leaders) comes through
//! the metadata group and this shard's metadata copy.
//!
//! Where the pieces live: the per-partition role, high watermark and
//! followers' progress in `shard/replica.rs`; the leader's handler in
//! `handlers/replica_fetch.rs`; the follower's loop in [`fetcher`]; ISR
//! changes in [`isr`].

pub mod client;
pub mod fetcher;
pub mod isr;

use std::rc::Rc;
use std::time::Duration;

use crate::shard::ShardState;

/// After a metadata change: start the fetchers the shard now needs (those
/// it no longer needs stop by themselves).
pub fn after_metadata(shard: &Rc<ShardState>) {
    if shard.cluster.is_some() {
        fetcher::ensure_fetchers(shard);
    }
}

/// Starts the shard's ISR upkeep, on a clustered broker.
pub fn start(shard: &Rc<ShardState>) {
    if shard.cluster.is_none() {
        return;
    }
    let lag = Duration::from_millis(shard.config.replica_lag_time_max_ms);
    let shard = shard.clone();
    glommio::spawn_local(async move { isr::shrink_loop(shard, lag).await }).detach();
}
