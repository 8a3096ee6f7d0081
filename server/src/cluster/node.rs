//! What the Raft thread's tasks share: the openraft node, the transport,
//! the settings, the publisher of applied states, and the heartbeats the
//! leader heard. `raft.rs` runs the node; `liveness.rs` fences and
//! unfences brokers with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::Raft;
use tokio::sync::Semaphore;

use super::node_config::ClusterNodeConfig;
use super::state::BrokerId;
use super::store::state_machine::StatePublisher;
use super::transport::RaftTransport;
use super::TypeConfig;

/// What the Raft thread's tasks share.
pub(super) struct NodeShared {
    pub(super) raft: Raft<TypeConfig>,
    pub(super) transport: Arc<dyn RaftTransport>,
    pub(super) config: ClusterNodeConfig,
    pub(super) publisher: Arc<StatePublisher>,
    pub(super) in_flight: Arc<Semaphore>,
    /// Heartbeats heard while leading (`liveness.rs`).
    pub(super) liveness: Liveness,
}

/// What the leader heard, since it leads.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    heard: Mutex<HashMap<BrokerId, Heard>>,
}

/// The last heartbeat of a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Heard {
    pub(super) broker_epoch: u64,
    pub(super) at: Instant,
    /// The last revision every shard of the broker had applied.
    pub(super) applied_revision: u64,
}

impl Liveness {
    pub(super) fn record(&self, broker: BrokerId, broker_epoch: u64, applied_revision: u64) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let at = Instant::now();
        let entry = Heard {
            broker_epoch,
            at,
            applied_revision,
        };
        heard.insert(broker, entry);
    }

    /// The last heartbeat of `broker`'s incarnation `broker_epoch`.
    pub(super) fn heard(&self, broker: BrokerId, broker_epoch: u64) -> Option<Heard> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let entry = heard.get(&broker)?;
        (entry.broker_epoch == broker_epoch).then_some(*entry)
    }

    pub(super) fn forget_all(&self) {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
