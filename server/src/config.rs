//! Broker configuration: defaults, then a TOML file (`--config`), then flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;
use shardlog_engine::FlushPolicy;

use crate::{Error, Result};

/// Command-line flags. Every flag except `--config` may also be set in the
/// TOML file under the same name; flags win.
#[derive(Debug, Parser, Default)]
#[command(
    name = "shardlog-server",
    version,
    about = "The shardlog broker: a persistent, partitioned log."
)]
pub struct Cli {
    /// TOML file with the same keys as the flags (e.g. `data-dir = "/var/lib/shardlog"`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory holding metadata and partition logs [default: ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address every shard accepts on; shard i also accepts on port + 1 + i [default: 127.0.0.1:7070].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Number of shards (one pinned thread each) [default: one per available core].
    #[arg(long)]
    pub shards: Option<usize>,
    /// When appends are forced to disk: always | interval=<ms> | never [default: always].
    #[arg(long)]
    pub flush: Option<String>,
    /// Address of the Prometheus endpoint /metrics [default: 127.0.0.1:7071].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Roll segments past this many bytes [default: 1073741824].
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// Bytes of recent batches each shard keeps in memory [default: 268435456].
    #[arg(long)]
    pub cache_bytes: Option<u64>,
    /// Log filter (tracing-subscriber syntax); RUST_LOG wins when set [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// How often each shard applies retention to its partitions, in ms [default: 30000].
    #[arg(long)]
    pub retention_check_interval_ms: Option<u64>,
    /// Consumer groups one shard coordinates (with members or committed offsets) [default: 10000].
    #[arg(long)]
    pub groups_per_shard_max: Option<usize>,
    /// An empty group's committed offsets are deleted this long after its last use, in ms [default: 604800000, 7 days].
    #[arg(long)]
    pub group_retention_ms: Option<u64>,
}

/// The same keys as [`Cli`], from a TOML file.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    shards: Option<usize>,
    flush: Option<String>,
    metrics_listen: Option<SocketAddr>,
    segment_bytes: Option<u64>,
    cache_bytes: Option<u64>,
    log_level: Option<String>,
    retention_check_interval_ms: Option<u64>,
    groups_per_shard_max: Option<usize>,
    group_retention_ms: Option<u64>,
}

/// The resolved configuration of a broker.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory holding metadata and partition logs.
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
    /// Log filter.
    pub log_level: String,
    /// Open connections per shard before new ones are refused.
    pub connections_per_shard_max: usize,
    /// Requests a connection may have in flight before the broker stops reading it.
    pub inflight_requests_max: usize,
    /// Bytes of requests a shard holds at once before it stops reading sockets.
    pub request_bytes_per_shard_max: u64,
    /// Partitions one topic may have.
    pub partitions_per_topic_max: u32,
    /// Retention of topics that do not set their own.
    pub retention_ms_default: Option<u64>,
    /// How often each shard applies retention.
    pub retention_check_interval_ms: u64,
    /// Groups one shard coordinates; a heartbeat or commit creating one more gets `Busy`.
    pub groups_per_shard_max: usize,
    /// How long an empty group keeps its committed offsets after its last use.
    pub group_retention_ms: u64,
}

/// Bounds of the retention check interval: 1 ms to 1 day.
pub const RETENTION_CHECK_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400_000;
/// Bounds of `groups-per-shard-max`.
pub const GROUPS_PER_SHARD_MAX_RANGE: std::ops::RangeInclusive<usize> = 1..=1_000_000;
/// Bounds of `group-retention-ms`: 1 ms to 100 years (the clock arithmetic stays far from overflow).
pub const GROUP_RETENTION_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=100 * 365 * 86_400_000;

impl ServerConfig {
    /// Defaults, then the file named by `--config`, then the flags.
    ///
    /// # Errors
    /// [`Error::Config`] for an unreadable file or a value out of range.
    pub fn resolve(cli: Cli) -> Result<ServerConfig> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io("reading config", path, e))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let flush_text = cli.flush.or(file.flush).unwrap_or_else(|| "always".into());
        let flush = flush_text
            .parse::<FlushPolicy>()
            .map_err(|e| Error::Config(e.to_string()))?;
        let config = ServerConfig {
            data_dir: cli
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            listen: cli
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070))),
            shards: cli.shards.or(file.shards).unwrap_or(cores),
            flush,
            metrics_listen: cli
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7071))),
            segment_bytes: cli
                .segment_bytes
                .or(file.segment_bytes)
                .unwrap_or(1024 * 1024 * 1024),
            cache_bytes: cli
                .cache_bytes
                .or(file.cache_bytes)
                .unwrap_or(256 * 1024 * 1024),
            log_level: cli
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            connections_per_shard_max: 4096,
            inflight_requests_max: 64,
            request_bytes_per_shard_max: 512 * 1024 * 1024,
            partitions_per_topic_max: 100_000,
            retention_ms_default: Some(7 * 24 * 3600 * 1000),
            retention_check_interval_ms: cli
                .retention_check_interval_ms
                .or(file.retention_check_interval_ms)
                .unwrap_or(30_000),
            groups_per_shard_max: cli
                .groups_per_shard_max
                .or(file.groups_per_shard_max)
                .unwrap_or(10_000),
            group_retention_ms: cli
                .group_retention_ms
                .or(file.group_retention_ms)
                .unwrap_or(7 * 24 * 3600 * 1000),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.shards == 0 || self.shards > 256 {
            return Err(Error::Config(format!(
                "--shards {} must be in 1..=256",
                self.shards
            )));
        }
        let last_port = u32::from(self.listen.port()) + self.shards as u32;
        if self.listen.port() == 0 || last_port > u32::from(u16::MAX) {
            return Err(Error::Config(format!(
                "--listen port {} leaves no room for {} shard ports",
                self.listen.port(),
                self.shards
            )));
        }
        check_range(
            "--retention-check-interval-ms",
            self.retention_check_interval_ms,
            &RETENTION_CHECK_INTERVAL_MS_RANGE,
        )?;
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
        log_config(self.flush, self.segment_bytes)
            .validate()
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The port shard `shard` accepts on besides the shared one.
    pub fn shard_port(&self, shard: usize) -> u16 {
        self.listen.port() + 1 + shard as u16
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

/// The log configuration of a partition: batches are capped at 1 MiB, or at
/// the segment size when segments are smaller (a segment holds at least one batch).
pub fn log_config(flush: FlushPolicy, segment_bytes: u64) -> shardlog_engine::LogConfig {
    let mut config = shardlog_engine::LogConfig {
        flush,
        segment_bytes,
        ..Default::default()
    };
    let cap = u32::try_from(segment_bytes).unwrap_or(u32::MAX);
    config.batch_limits.batch_bytes_max = config.batch_limits.batch_bytes_max.min(cap);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_a_durable_local_broker() {
        let config = ServerConfig::resolve(Cli::default()).unwrap();
        assert_eq!(config.flush, FlushPolicy::Always);
        assert_eq!(config.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.shard_port(1), 7072);
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, "shards = 3\nflush = \"never\"\ndata-dir = \"/x\"\n").unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            shards: Some(2),
            ..Cli::default()
        };
        let config = ServerConfig::resolve(cli).unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(config.flush, FlushPolicy::Never);
        assert_eq!(config.data_dir, PathBuf::from("/x"));
        std::fs::write(&path, "shard = 3\n").unwrap();
        assert!(
            ServerConfig::resolve(Cli {
                config: Some(path),
                ..Cli::default()
            })
            .is_err(),
            "unknown keys are refused"
        );
        assert!(ServerConfig::resolve(Cli {
            flush: Some("sometimes".into()),
            ..Cli::default()
        })
        .is_err());
        assert!(ServerConfig::resolve(Cli {
            shards: Some(0),
            ..Cli::default()
        })
        .is_err());
    }

    #[test]
    fn group_limits_have_defaults_file_keys_and_bounds() {
        let config = ServerConfig::resolve(Cli::default()).unwrap();
        assert_eq!(config.groups_per_shard_max, 10_000);
        assert_eq!(config.group_retention_ms, 7 * 24 * 3600 * 1000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        let keys = "groups-per-shard-max = 5\ngroup-retention-ms = 60000\n";
        std::fs::write(&path, keys).unwrap();
        let config = ServerConfig::resolve(Cli {
            config: Some(path),
            ..Cli::default()
        })
        .unwrap();
        assert_eq!(config.groups_per_shard_max, 5);
        assert_eq!(config.group_retention_ms, 60_000);
        for bad in [
            Cli {
                groups_per_shard_max: Some(0),
                ..Cli::default()
            },
            Cli {
                group_retention_ms: Some(0),
                ..Cli::default()
            },
        ] {
            assert!(ServerConfig::resolve(bad).is_err());
        }
    }

    #[test]
    fn the_retention_check_interval_is_a_flag_and_a_key() {
        assert_eq!(
            ServerConfig::resolve(Cli::default())
                .unwrap()
                .retention_check_interval_ms,
            30_000
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, "retention-check-interval-ms = 100\n").unwrap();
        let cli = Cli {
            config: Some(path),
            ..Cli::default()
        };
        assert_eq!(
            ServerConfig::resolve(cli)
                .unwrap()
                .retention_check_interval_ms,
            100
        );
        let zero = Cli {
            retention_check_interval_ms: Some(0),
            ..Cli::default()
        };
        assert!(ServerConfig::resolve(zero).is_err());
    }
}
