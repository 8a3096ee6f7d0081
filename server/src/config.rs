//! Broker configuration: defaults, then a TOML file (`--config`), then flags.
//!
//! Every setting is one field of [`Settings`]: the same name is a flag
//! (`--connection-idle-timeout-ms`) and a TOML key
//! (`connection-idle-timeout-ms = 600000`), and flags win. Limits carry
//! their unit and `_max` in the name; each has a default, and
//! [`ServerConfig::resolve`] checks them against each other at start, so a
//! broker never starts with limits that cannot hold. Relative paths are
//! resolved against the working directory at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use shardlog_engine::FlushPolicy;

use crate::cluster::{NodeAddr, NodeId};
use crate::{Error, Result};

/// Declares [`Settings`]: one optional field per setting, usable as a flag and a TOML key.
macro_rules! settings {
    ($( $(#[doc = $doc:expr])* $field:ident : $ty:ty ),* $(,)?) => {
        /// Every setting, each optional: flags and the TOML file fill what they name.
        #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        pub struct Settings {
            $( $(#[doc = $doc])* #[arg(long)] pub $field: Option<$ty>, )*
        }

        impl Settings {
            /// Each setting from `self`, or else from `fallback`.
            fn or(self, fallback: Settings) -> Settings {
                Settings { $( $field: self.$field.or(fallback.$field), )* }
            }
        }
    };
}

settings! {
    /// Directory holding metadata and partition logs; relative to the working directory [default: ./data].
    data_dir: PathBuf,
    /// Address every shard accepts on (SO_REUSEPORT); shard i also accepts on port + 1 + i [default: 127.0.0.1:7070].
    listen: SocketAddr,
    /// Number of shards (one pinned thread each) [default: one per available core].
    shards: usize,
    /// When appends are forced to disk: always | interval=<ms> | never [default: always].
    flush: String,
    /// Address of the Prometheus endpoint /metrics [default: 127.0.0.1:9644].
    metrics_listen: SocketAddr,
    /// Roll segments past this many bytes, for topics that set no size [default: 1073741824].
    segment_bytes: u64,
    /// Bytes of recent batches each shard keeps in memory [default: 268435456].
    cache_bytes: u64,
    /// Delete sealed segments older than this, for topics that set no retention [default: 604800000 (7 days)].
    retention_ms: u64,
    /// How often each shard applies retention [default: 30000].
    retention_check_interval_ms: u64,
    /// Log filter (tracing-subscriber syntax); RUST_LOG wins when set [default: info].
    log_level: String,
    /// Log line format on stderr: text | json (one object per line) [default: text].
    log_format: String,
    /// Open client connections per shard; more are refused [default: from RLIMIT_NOFILE, at most 4096].
    connections_per_shard_max: usize,
    /// Segment files each shard holds open; idle sealed ones are closed least recently used first [default: from RLIMIT_NOFILE, at most 10000].
    open_files_per_shard_max: u32,
    /// Requests one connection may have in flight before the broker stops reading it [default: 64].
    inflight_requests_max: usize,
    /// Largest request frame, prefix included [default: 67108864].
    frame_bytes_max: u32,
    /// Bytes of requests and responses one connection holds at once [default: 134217728].
    connection_memory_bytes_max: u64,
    /// Bytes of requests and responses one shard holds at once; reading sockets pauses when it is spent [default: 536870912].
    shard_memory_bytes_max: u64,
    /// Close a connection that sends nothing for this long [default: 600000].
    connection_idle_timeout_ms: u64,
    /// Close a connection whose frame, once begun, does not arrive whole within this time [default: 30000].
    frame_read_timeout_ms: u64,
    /// Close a connection that does not take a response within this time [default: 60000].
    response_write_timeout_ms: u64,
    /// Bytes one fetch response may carry, whatever the client asks [default: 52428800].
    fetch_bytes_max: u64,
    /// Bytes one partition may contribute to a fetch response [default: 10485760].
    fetch_partition_bytes_max: u64,
    /// The longest a fetch may wait for data [default: 60000].
    fetch_wait_ms_max: u64,
    /// The longest a produce may wait for its appends [default: 300000].
    produce_timeout_ms_max: u64,
    /// Largest record batch accepted (capped by the segment size) [default: 1048576].
    batch_bytes_max: u32,
    /// Bytes of appends queued per partition before producers wait [default: 33554432].
    partition_pending_bytes_max: u64,
    /// How often, at most, a partition writes its recovery checkpoint (the synced point a restart after a crash scans from) [default: 10000].
    recovery_checkpoint_interval_ms: u64,
    /// Bytes of disk a partition allocates ahead of its writes, so that direct writes need no block allocation (0: off; capped by the segment size) [default: 16777216].
    segment_preallocate_bytes: u64,
    /// Partitions one topic may have [default: 100000].
    partitions_per_topic_max: u32,
    /// Open connections to the metrics endpoint; more are refused [default: 16].
    metrics_connections_max: usize,
    /// The longest one metrics request may take, reading and answering [default: 10000].
    metrics_request_timeout_ms: u64,
    /// Space kept in a reserve file in the data directory and given up when the disk is full, so that metadata changes (deleting a topic) still work [default: 16777216].
    disk_reserve_bytes: u64,
    /// Consumer groups one shard coordinates (with members or committed offsets); more get Busy [default: 10000].
    groups_per_shard_max: usize,
    /// An empty group's committed offsets are deleted this long after its last use [default: 604800000 (7 days)].
    group_retention_ms: u64,
    /// This broker's id in its cluster, 0..=4294967295; recorded in the data directory [default: 0].
    node_id: u64,
    /// The cluster's voters, `<id>@<host>:<port>,...`, each `host:port` that node's `--listen` address, this node included [default: none: a one-node broker].
    peers: String,
    /// The controller fences a broker it has not heard a heartbeat from for this long; brokers heartbeat three times per session [default: 6000].
    broker_session_timeout_ms: u64,
    /// A follower that has not caught up with its leader for this long leaves the partition's ISR; it rejoins once caught up [default: 30000].
    replica_lag_time_max_ms: u64,
}

/// Command-line flags: every setting, plus `--config`.
#[derive(Debug, Parser, Default)]
#[command(
    name = "shardlog-server",
    version,
    about = "The shardlog broker: a persistent, partitioned log."
)]
pub struct Cli {
    /// TOML file with the same keys as the flags (e.g. `data-dir = "/var/lib/shardlog"`); flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The settings.
    #[command(flatten)]
    pub settings: Settings,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (ANSI colours only on a terminal).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The resolved configuration of a broker.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory holding metadata and partition logs (absolute).
    pub data_dir: PathBuf,
    /// The shared listen address.
    pub listen: SocketAddr,
    /// Number of shards.
    pub shards: usize,
    /// The flush policy of every partition log.
    pub flush: FlushPolicy,
    /// The metrics endpoint address.
    pub metrics_listen: SocketAddr,
    /// Segment size of topics that do not set their own.
    pub segment_bytes: u64,
    /// Tail cache bytes per shard.
    pub cache_bytes: u64,
    /// Retention of topics that do not set their own.
    pub retention_ms_default: Option<u64>,
    /// How often each shard applies retention.
    pub retention_check_interval_ms: u64,
    /// Log filter.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Every limit, checked against the others.
    pub limits: Limits,
    /// This broker's id (`--node-id`).
    pub node_id: NodeId,
    /// The cluster's voters (`--peers`), this node included; `None` for a one-node broker.
    pub peers: Option<BTreeMap<NodeId, NodeAddr>>,
    /// A broker silent this long is fenced by the controller.
    pub broker_session_timeout_ms: u64,
    /// A follower behind its leader this long leaves the ISR (`--replica-lag-time-max-ms`).
    pub replica_lag_time_max_ms: u64,
}

/// The broker's limits. Each is a setting of the same name (see [`Settings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections per shard.
    pub connections_per_shard_max: usize,
    /// Segment files each shard holds open.
    pub open_files_per_shard_max: u32,
    /// Requests a connection may have in flight.
    pub inflight_requests_max: usize,
    /// Largest request frame.
    pub frame_bytes_max: u32,
    /// Request and response bytes one connection holds.
    pub connection_memory_bytes_max: u64,
    /// Request and response bytes one shard holds.
    pub shard_memory_bytes_max: u64,
    /// Idle connections are closed after this.
    pub connection_idle_timeout_ms: u64,
    /// A begun frame must arrive whole within this.
    pub frame_read_timeout_ms: u64,
    /// A response must be taken within this.
    pub response_write_timeout_ms: u64,
    /// Bytes of one fetch response.
    pub fetch_bytes_max: u64,
    /// Bytes one partition adds to a fetch response.
    pub fetch_partition_bytes_max: u64,
    /// The longest fetch wait.
    pub fetch_wait_ms_max: u64,
    /// The longest produce wait.
    pub produce_timeout_ms_max: u64,
    /// Largest batch.
    pub batch_bytes_max: u32,
    /// Queued append bytes per partition.
    pub partition_pending_bytes_max: u64,
    /// The most often a partition writes its recovery checkpoint.
    pub recovery_checkpoint_interval_ms: u64,
    /// Bytes allocated ahead of a partition's writes.
    pub segment_preallocate_bytes: u64,
    /// Partitions per topic.
    pub partitions_per_topic_max: u32,
    /// Connections to the metrics endpoint.
    pub metrics_connections_max: usize,
    /// Time for one metrics request.
    pub metrics_request_timeout_ms: u64,
    /// Bytes of the disk reserve file.
    pub disk_reserve_bytes: u64,
    /// Groups one shard coordinates.
    pub groups_per_shard_max: usize,
    /// How long an empty group keeps its committed offsets after its last use.
    pub group_retention_ms: u64,
}

/// Allowed `--replica-lag-time-max-ms`: half a second to an hour.
pub const REPLICA_LAG_TIME_MAX_MS_RANGE: std::ops::RangeInclusive<u64> = 500..=3_600_000;
/// Bounds of `broker-session-timeout-ms`: 300 ms (three heartbeats of 100 ms) to 10 minutes.
pub const BROKER_SESSION_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 300..=600_000;
/// Bounds of `groups-per-shard-max`.
pub const GROUPS_PER_SHARD_MAX_RANGE: std::ops::RangeInclusive<usize> = 1..=1_000_000;
/// Bounds of `recovery-checkpoint-interval-ms`: the engine's range, 1 ms to 1 hour.
pub const RECOVERY_CHECKPOINT_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=3_600_000;
/// Bounds of `group-retention-ms`: 1 ms to 100 years (the clock arithmetic stays far from overflow).
pub const GROUP_RETENTION_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=100 * 365 * 86_400_000;
/// Bounds of `retention-check-interval-ms`: 1 ms to 1 day.
pub const RETENTION_CHECK_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400_000;

/// Most partitions one produce, fetch, list-offsets or recover request names.
pub const PARTITIONS_PER_REQUEST_MAX: usize = 10_000;

/// File descriptors kept out of the shards' budgets: listeners, the mesh,
/// the metrics endpoint, metadata writes, the lock file.
const FILE_DESCRIPTORS_RESERVED: u64 = 256;
/// Largest default connection budget of a shard.
const CONNECTIONS_PER_SHARD_DEFAULT_MAX: u64 = 4096;
/// Largest default open-file budget of a shard.
const OPEN_FILES_PER_SHARD_DEFAULT_MAX: u64 = 10_000;

impl ServerConfig {
    /// Defaults, then the file named by `--config`, then the flags.
    /// `descriptors_max` is the process's RLIMIT_NOFILE (as raised at start);
    /// the default connection and open-file budgets share it.
    ///
    /// # Errors
    /// [`Error::Config`] for an unreadable file or a value out of range.
    pub fn resolve(cli: Cli, descriptors_max: u64) -> Result<ServerConfig> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io("reading config", path, e))?;
                toml::from_str::<Settings>(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => Settings::default(),
        };
        let s = cli.settings.or(file);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = s.shards.unwrap_or(cores);
        let flush = s
            .flush
            .as_deref()
            .unwrap_or("always")
            .parse::<FlushPolicy>()
            .map_err(|e| Error::Config(e.to_string()))?;
        let log_format = match s.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(Error::Config(format!(
                    "--log-format {other:?}: use text or json"
                )))
            }
        };
        let data_dir = absolute(&s.data_dir.clone().unwrap_or_else(|| "./data".into()))?;
        let peers = match s.peers.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(peers) => Some(
                crate::cluster::parse_peers(peers)
                    .map_err(|e| Error::Config(format!("--peers: {e}")))?,
            ),
        };
        let config = ServerConfig {
            data_dir,
            listen: s.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7070))),
            shards,
            flush,
            metrics_listen: s
                .metrics_listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9644))),
            segment_bytes: s.segment_bytes.unwrap_or(1 << 30),
            cache_bytes: s.cache_bytes.unwrap_or(256 << 20),
            retention_ms_default: Some(s.retention_ms.unwrap_or(7 * 24 * 3600 * 1000)),
            retention_check_interval_ms: s.retention_check_interval_ms.unwrap_or(30_000),
            log_level: s.log_level.clone().unwrap_or_else(|| "info".into()),
            log_format,
            limits: Limits::from_settings(&s, shards, descriptors_max),
            node_id: s.node_id.unwrap_or(0),
            peers,
            broker_session_timeout_ms: s.broker_session_timeout_ms.unwrap_or(6000),
            replica_lag_time_max_ms: s.replica_lag_time_max_ms.unwrap_or(30_000),
        };
        config.validate(descriptors_max)?;
        Ok(config)
    }

    fn validate(&self, descriptors_max: u64) -> Result<()> {
        let bad = |message: String| Err(Error::Config(message));
        if self.shards == 0 || self.shards > 256 {
            return bad(format!("--shards {} must be in 1..=256", self.shards));
        }
        self.validate_ports()?;
        self.validate_peers()?;
        check_range(
            "--broker-session-timeout-ms",
            self.broker_session_timeout_ms,
            &BROKER_SESSION_TIMEOUT_MS_RANGE,
        )?;
        check_range(
            "--replica-lag-time-max-ms",
            self.replica_lag_time_max_ms,
            &REPLICA_LAG_TIME_MAX_MS_RANGE,
        )?;
        check_range(
            "--retention-check-interval-ms",
            self.retention_check_interval_ms,
            &RETENTION_CHECK_INTERVAL_MS_RANGE,
        )?;
        self.limits.validate(self.shards, descriptors_max)?;
        self.log_config(self.segment_bytes)
            .validate()
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The shared port, the shard ports after it and the metrics port must
    /// not overlap: a port shared by accident splits its connections between
    /// two listeners.
    fn validate_ports(&self) -> Result<()> {
        let first = u32::from(self.listen.port());
        let last = first + self.shards as u32;
        if first == 0 || last > u32::from(u16::MAX) {
            return Err(Error::Config(format!(
                "--listen port {first} leaves no room for {} shard ports after it",
                self.shards
            )));
        }
        let metrics = u32::from(self.metrics_listen.port());
        let same_host = self.metrics_listen.ip() == self.listen.ip()
            || self.metrics_listen.ip().is_unspecified()
            || self.listen.ip().is_unspecified();
        if metrics == 0 || (same_host && (first..=last).contains(&metrics)) {
            return Err(Error::Config(format!(
                "--metrics-listen port {metrics} overlaps the broker's ports {first}..={last} \
                 (the shared port and one per shard); pick a port outside them"
            )));
        }
        Ok(())
    }

    /// `--node-id` fits the wire's broker ids, and `--peers` names 1, 3 or
    /// 5 voters, this node among them at its own `--listen` port.
    fn validate_peers(&self) -> Result<()> {
        if self.node_id > u64::from(u32::MAX) {
            return Err(Error::Config(format!(
                "--node-id {} must be at most {}",
                self.node_id,
                u32::MAX
            )));
        }
        let Some(peers) = &self.peers else {
            return Ok(());
        };
        crate::cluster::raft::ClusterNodeConfig::new(
            self.node_id,
            peers.clone(),
            self.data_dir.clone(),
        )
        .validate()
        .map_err(|e| Error::Config(format!("--peers: {e}")))?;
        if let Some((id, _)) = peers.iter().find(|(id, _)| **id > u64::from(u32::MAX)) {
            return Err(Error::Config(format!(
                "--peers: node id {id} must be at most {}",
                u32::MAX
            )));
        }
        let own = &peers[&self.node_id];
        if own.port != self.listen.port() {
            return Err(Error::Config(format!(
                "--peers names node {} at {own}, but --listen is {}: each peer's address is that node's --listen address",
                self.node_id, self.listen
            )));
        }
        Ok(())
    }

    /// True when this broker is a member of a Raft cluster (`--peers`).
    pub fn is_clustered(&self) -> bool {
        self.peers.is_some()
    }

    /// The port shard `shard` accepts on besides the shared one.
    pub fn shard_port(&self, shard: usize) -> u16 {
        self.listen.port() + 1 + shard as u16
    }

    /// The log configuration of a partition whose segments roll at `segment_bytes`.
    pub fn log_config(&self, segment_bytes: u64) -> shardlog_engine::LogConfig {
        log_config(
            self.flush,
            segment_bytes,
            self.limits.batch_bytes_max,
            self.limits.partition_pending_bytes_max,
            self.limits.recovery_checkpoint_interval_ms,
            self.limits.segment_preallocate_bytes,
        )
    }
}

impl Limits {
    fn from_settings(s: &Settings, shards: usize, descriptors_max: u64) -> Limits {
        // Without explicit budgets, a shard gets its share of the
        // descriptors: a third for connections, the rest for files.
        let per_shard =
            descriptors_max.saturating_sub(FILE_DESCRIPTORS_RESERVED) / shards.max(1) as u64;
        let connections = s.connections_per_shard_max.map_or(
            (per_shard / 3).min(CONNECTIONS_PER_SHARD_DEFAULT_MAX),
            |c| c as u64,
        );
        let files = s.open_files_per_shard_max.map_or(
            per_shard
                .saturating_sub(connections)
                .min(OPEN_FILES_PER_SHARD_DEFAULT_MAX),
            u64::from,
        );
        Limits {
            connections_per_shard_max: connections as usize,
            open_files_per_shard_max: u32::try_from(files).unwrap_or(u32::MAX),
            inflight_requests_max: s.inflight_requests_max.unwrap_or(64),
            frame_bytes_max: s.frame_bytes_max.unwrap_or(64 << 20),
            connection_memory_bytes_max: s.connection_memory_bytes_max.unwrap_or(128 << 20),
            shard_memory_bytes_max: s.shard_memory_bytes_max.unwrap_or(512 << 20),
            connection_idle_timeout_ms: s.connection_idle_timeout_ms.unwrap_or(600_000),
            frame_read_timeout_ms: s.frame_read_timeout_ms.unwrap_or(30_000),
            response_write_timeout_ms: s.response_write_timeout_ms.unwrap_or(60_000),
            fetch_bytes_max: s.fetch_bytes_max.unwrap_or(50 << 20),
            fetch_partition_bytes_max: s.fetch_partition_bytes_max.unwrap_or(10 << 20),
            fetch_wait_ms_max: s.fetch_wait_ms_max.unwrap_or(60_000),
            produce_timeout_ms_max: s.produce_timeout_ms_max.unwrap_or(300_000),
            batch_bytes_max: s.batch_bytes_max.unwrap_or(1 << 20),
            partition_pending_bytes_max: s.partition_pending_bytes_max.unwrap_or(32 << 20),
            recovery_checkpoint_interval_ms: s.recovery_checkpoint_interval_ms.unwrap_or(10_000),
            segment_preallocate_bytes: s.segment_preallocate_bytes.unwrap_or(16 << 20),
            partitions_per_topic_max: s.partitions_per_topic_max.unwrap_or(100_000),
            metrics_connections_max: s.metrics_connections_max.unwrap_or(16),
            metrics_request_timeout_ms: s.metrics_request_timeout_ms.unwrap_or(10_000),
            disk_reserve_bytes: s.disk_reserve_bytes.unwrap_or(16 << 20),
            groups_per_shard_max: s.groups_per_shard_max.unwrap_or(10_000),
            group_retention_ms: s.group_retention_ms.unwrap_or(7 * 24 * 3600 * 1000),
        }
    }

    /// Checks each limit against its range and the others.
    fn validate(&self, shards: usize, descriptors_max: u64) -> Result<()> {
        let bad = |message: String| Err(Error::Config(message));
        let positive = [
            (
                "connections-per-shard-max",
                self.connections_per_shard_max as u64,
            ),
            (
                "open-files-per-shard-max",
                u64::from(self.open_files_per_shard_max),
            ),
            ("inflight-requests-max", self.inflight_requests_max as u64),
            (
                "connection-idle-timeout-ms",
                self.connection_idle_timeout_ms,
            ),
            ("frame-read-timeout-ms", self.frame_read_timeout_ms),
            ("response-write-timeout-ms", self.response_write_timeout_ms),
            ("fetch-bytes-max", self.fetch_bytes_max),
            ("fetch-partition-bytes-max", self.fetch_partition_bytes_max),
            ("produce-timeout-ms-max", self.produce_timeout_ms_max),
            (
                "partitions-per-topic-max",
                u64::from(self.partitions_per_topic_max),
            ),
            (
                "metrics-connections-max",
                self.metrics_connections_max as u64,
            ),
            (
                "metrics-request-timeout-ms",
                self.metrics_request_timeout_ms,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return bad(format!("--{name} must be positive"));
        }
        check_range(
            "--groups-per-shard-max",
            self.groups_per_shard_max,
            &GROUPS_PER_SHARD_MAX_RANGE,
        )?;
        check_range(
            "--group-retention-ms",
            self.group_retention_ms,
            &GROUP_RETENTION_MS_RANGE,
        )?;
        check_range(
            "--recovery-checkpoint-interval-ms",
            self.recovery_checkpoint_interval_ms,
            &RECOVERY_CHECKPOINT_INTERVAL_MS_RANGE,
        )?;
        let frame = u64::from(self.frame_bytes_max);
        if !(4096..=1 << 30).contains(&frame) {
            return bad(format!(
                "--frame-bytes-max {frame} must be in 4096..=1073741824"
            ));
        }
        if u64::from(self.batch_bytes_max) + 4096 > frame {
            return bad(format!(
                "--batch-bytes-max {} must leave room for a request header inside --frame-bytes-max {frame}",
                self.batch_bytes_max
            ));
        }
        if self.connection_memory_bytes_max < frame {
            return bad(format!(
                "--connection-memory-bytes-max {} must hold one whole frame (--frame-bytes-max {frame})",
                self.connection_memory_bytes_max
            ));
        }
        if self.shard_memory_bytes_max < self.connection_memory_bytes_max {
            return bad(format!(
                "--shard-memory-bytes-max {} must be at least --connection-memory-bytes-max {}",
                self.shard_memory_bytes_max, self.connection_memory_bytes_max
            ));
        }
        // A response is one frame: the cap plus one batch returned whole for progress.
        if self.fetch_bytes_max + u64::from(self.batch_bytes_max) + 65_536 > frame {
            return bad(format!(
                "--fetch-bytes-max {} plus one batch (--batch-bytes-max {}) must fit in --frame-bytes-max {frame}",
                self.fetch_bytes_max, self.batch_bytes_max
            ));
        }
        if self.fetch_partition_bytes_max > self.fetch_bytes_max {
            return bad(format!(
                "--fetch-partition-bytes-max {} must not exceed --fetch-bytes-max {}",
                self.fetch_partition_bytes_max, self.fetch_bytes_max
            ));
        }
        if self.fetch_wait_ms_max > u64::from(u32::MAX)
            || self.produce_timeout_ms_max > u64::from(u32::MAX)
        {
            return bad("--fetch-wait-ms-max and --produce-timeout-ms-max must fit 32 bits".into());
        }
        let longest_wait_ms = self.fetch_wait_ms_max.max(self.produce_timeout_ms_max);
        if self.connection_idle_timeout_ms <= longest_wait_ms {
            return bad(format!(
                "--connection-idle-timeout-ms {} must exceed the longest a request may wait \
                 (--fetch-wait-ms-max, --produce-timeout-ms-max: {longest_wait_ms}), or a client \
                 waiting for an answer could be taken for idle",
                self.connection_idle_timeout_ms
            ));
        }
        let per_shard =
            self.connections_per_shard_max as u64 + u64::from(self.open_files_per_shard_max);
        let needed = per_shard * shards as u64 + FILE_DESCRIPTORS_RESERVED;
        if needed > descriptors_max {
            return bad(format!(
                "{shards} shards × (--connections-per-shard-max {} + --open-files-per-shard-max {}) \
                 need {needed} file descriptors but RLIMIT_NOFILE allows {descriptors_max}; \
                 lower them or raise the limit (ulimit -n, LimitNOFILE=)",
                self.connections_per_shard_max, self.open_files_per_shard_max
            ));
        }
        Ok(())
    }
}

fn check_range<T: PartialOrd + std::fmt::Display + std::fmt::Debug>(
    flag: &str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
) -> Result<()> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{flag} {value} must be in {range:?}"
    )))
}

/// `path` made absolute against the working directory (it need not exist yet).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io("resolving path", path, e))
}

/// The log configuration of a partition: batches are capped at
/// `batch_bytes_max`, or at the segment size when segments are smaller (a
/// segment holds at least one batch).
pub fn log_config(
    flush: FlushPolicy,
    segment_bytes: u64,
    batch_bytes_max: u32,
    pending_bytes_max: u64,
    recovery_checkpoint_interval_ms: u64,
    preallocate_bytes: u64,
) -> shardlog_engine::LogConfig {
    let mut config = shardlog_engine::LogConfig {
        flush,
        segment_bytes,
        pending_bytes_max,
        recovery_checkpoint_interval: std::time::Duration::from_millis(
            recovery_checkpoint_interval_ms,
        ),
        preallocate_bytes: preallocate_bytes.min(segment_bytes),
        ..Default::default()
    };
    let cap = u32::try_from(segment_bytes).unwrap_or(u32::MAX);
    config.batch_limits.batch_bytes_max = batch_bytes_max.min(cap);
    config
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
