//! `shardlog-server`: the shardlog broker.
//!
//! Thread-per-core: every shard is a pinned glommio executor with its own
//! io_uring that owns a set of partitions outright. Connections arrive on a
//! shared port (SO_REUSEPORT) or on a shard's own port; a request for a
//! partition owned by another shard travels there over the channel mesh.
//! See `ARCHITECTURE.md` at the repository root for the map.
//!
//! - [`cluster`]: the cluster metadata's Raft group (openraft on its own thread).
//! - [`config`]: flags, TOML file, defaults.
//! - [`server`]: start-up and shutdown.
//! - [`shard`]: per-core state, cross-shard messages, idempotent producers.
//! - [`net`]: listeners, connections, sendfile.
//! - [`handlers`]: one module per API.
//! - [`metadata`]: topics and placement, persisted by the controller shard.
//! - [`metrics`]: Prometheus text at `/metrics`, gathered from every shard by shard 0.
#![deny(missing_docs)]

pub mod cluster;
pub mod config;
mod error;
#[allow(missing_docs)]
pub mod groups;
#[allow(missing_docs)]
pub mod handlers;
pub mod metadata;
pub mod metrics;
#[allow(missing_docs)]
pub mod net;
pub mod replication;
pub mod server;
#[allow(missing_docs)]
pub mod shard;
pub mod socket;

pub use error::{Error, Result, WireError};
