//! How a metadata node runs: every setting of the Raft group, with its
//! default, checked before the node starts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openraft::SnapshotPolicy;

use super::{ClusterError, NodeAddr, NodeId};

/// Most voters in the metadata group.
pub const VOTERS_MAX: usize = 5;

/// How a node runs. Build with [`ClusterNodeConfig::new`], which sets every default.
#[derive(Debug, Clone)]
pub struct ClusterNodeConfig {
    /// This node (`--node-id`); one of `voters`.
    pub node_id: NodeId,
    /// Every voter and its address (`--peers`): 1, 3 or 5.
    pub voters: BTreeMap<NodeId, NodeAddr>,
    /// The broker's data directory; the Raft files go to `<data_dir>/raft/`.
    pub data_dir: PathBuf,
    /// How often the leader sends heartbeats [default: 100].
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in
    /// `election_timeout_min_ms..election_timeout_max_ms` starts an election [default: 1000..2000].
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// Longest wait for a proposal's answer, forwarding included [default: 10000].
    pub propose_timeout_ms: u64,
    /// A snapshot is built after this many applied entries since the last [default: 1024].
    pub snapshot_logs_since_last_count: u64,
    /// Entries kept in the log behind the snapshot, for lagging followers [default: 256].
    pub logs_kept_after_snapshot_count: u64,
    /// Largest snapshot chunk in one install-snapshot RPC [default: 262144].
    pub snapshot_chunk_bytes_max: u64,
    /// Requests (proposals, RPCs) queued for the Raft thread [default: 1024].
    pub requests_queued_max: usize,
    /// Requests the Raft thread serves at once [default: 1024].
    pub requests_in_flight_max: usize,
    /// Applied states a subscriber may fall behind before it skips some [default: 1024].
    pub subscriber_backlog_max: usize,
    /// The controller fences a broker it has not heard a heartbeat from for this long [default: 6000].
    pub broker_session_timeout_ms: u64,
}

impl ClusterNodeConfig {
    /// A configuration with every default.
    pub fn new(
        node_id: NodeId,
        voters: BTreeMap<NodeId, NodeAddr>,
        data_dir: PathBuf,
    ) -> ClusterNodeConfig {
        ClusterNodeConfig {
            node_id,
            voters,
            data_dir,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            propose_timeout_ms: 10_000,
            snapshot_logs_since_last_count: 1024,
            logs_kept_after_snapshot_count: 256,
            snapshot_chunk_bytes_max: 256 * 1024,
            requests_queued_max: 1024,
            requests_in_flight_max: 1024,
            subscriber_backlog_max: 1024,
            broker_session_timeout_ms: 6000,
        }
    }

    /// Checks the limits against each other.
    ///
    /// # Errors
    /// [`ClusterError::Config`] naming the setting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |message: String| Err(ClusterError::Config(message));
        if !self.voters.contains_key(&self.node_id) {
            return bad(format!(
                "node {} is not one of the voters {:?}",
                self.node_id,
                self.voters.keys()
            ));
        }
        if self.voters.len() > VOTERS_MAX || self.voters.len() % 2 == 0 {
            return bad(format!(
                "the cluster has 1, 3 or 5 voters, not {}",
                self.voters.len()
            ));
        }
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_min_ms <= self.heartbeat_interval_ms
        {
            return bad("the election timeout must be longer than the heartbeat interval".into());
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return bad("election-timeout-max-ms must be above election-timeout-min-ms".into());
        }
        let counts = [
            ("propose-timeout-ms", self.propose_timeout_ms),
            (
                "snapshot-logs-since-last-count",
                self.snapshot_logs_since_last_count,
            ),
            ("snapshot-chunk-bytes-max", self.snapshot_chunk_bytes_max),
            ("requests-queued-max", self.requests_queued_max as u64),
            ("requests-in-flight-max", self.requests_in_flight_max as u64),
            ("subscriber-backlog-max", self.subscriber_backlog_max as u64),
            ("broker-session-timeout-ms", self.broker_session_timeout_ms),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return bad(format!("{name} must be above 0"));
        }
        Ok(())
    }

    pub(super) fn raft_config(&self) -> Result<openraft::Config, ClusterError> {
        let config = openraft::Config {
            cluster_name: "shardlog-metadata".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last_count),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot_count,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes_max,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| ClusterError::Config(e.to_string()))
    }
}
