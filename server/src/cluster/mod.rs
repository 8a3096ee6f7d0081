//! The cluster control plane: the replicated metadata and its placement.
//!
//! - [`state`]: [`state::ClusterState`] and its pure, deterministic `apply`.
//! - [`placement`]: where a new topic's replicas go.
pub mod placement;
pub mod state;
