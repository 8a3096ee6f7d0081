//! Options of `shardlog-bench`.
//!
//! Most options shape one workload directly. `workload FILE.yaml` takes
//! the shape (topics, partitions, record size, producers, consumers, rate,
//! durations) from an OpenMessaging Benchmark file instead; an option that
//! would contradict the file is refused rather than silently ignored, except
//! `--duration` and `--warmup`, which override the file's minutes (a short
//! trial of a long workload).

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::Serialize;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Producers only: throughput and publish latency (send → ack).
    Produce,
    /// Consumers only, catching up from the beginning of what a first phase produced.
    Consume,
    /// Consumers at the tail while producers write.
    ConsumeTail,
    /// Producers and consumers together: end-to-end latency (send → receipt).
    E2e,
    /// Producers, and consumers that are members of one consumer group at the tail.
    Group,
    /// An OpenMessaging Benchmark workload file (give its path after the word).
    #[value(name = "workload")]
    #[serde(rename = "workload")]
    Omb,
}

impl Workload {
    /// The name on the command line.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string())
    }

    /// Whether the workload has consumers.
    pub fn consumes(self) -> bool {
        self != Workload::Produce
    }

    /// Whether producers write while the consumers read (latency is end to end).
    pub fn at_the_tail(self) -> bool {
        matches!(
            self,
            Workload::ConsumeTail | Workload::E2e | Workload::Group | Workload::Omb
        )
    }
}

/// `acks` as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcksArg {
    None,
    Leader,
    All,
}

/// Compression as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

/// Benchmark a shardlog broker.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "shardlog-bench",
    version,
    about = "Benchmark a shardlog broker: throughput and latency percentiles."
)]
pub struct BenchConfig {
    /// The workload.
    #[arg(value_enum)]
    pub workload: Workload,
    /// With `workload`: the OpenMessaging Benchmark workload file.
    #[arg(value_name = "FILE.yaml")]
    pub file: Option<PathBuf>,
    /// The broker to measure; a cluster's bootstrap addresses, comma-separated
    /// (`a:7070,b:7070`).
    #[arg(
        long,
        value_name = "HOST:PORT[,HOST:PORT...]",
        default_value = "127.0.0.1:7070",
        conflicts_with = "embedded"
    )]
    pub broker: String,
    /// The brokers' metrics endpoints, for their CPU and memory, comma-separated,
    /// one per broker of the cluster [default: each --broker address's host,
    /// port 9644; with --embedded, their own].
    #[arg(
        long,
        value_name = "HOST:PORT[,HOST:PORT...]",
        conflicts_with = "embedded"
    )]
    pub broker_metrics: Option<String>,
    /// Start a shardlog-server (or --brokers of them, as a cluster) on a temporary
    /// directory and free ports, and stop it after.
    #[arg(long)]
    pub embedded: bool,
    /// With --embedded: start this many brokers as one cluster (1, 3 or 5, the
    /// metadata group's voters), each on its own temporary directory and ports;
    /// 1 is a one-node broker.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub brokers: usize,
    /// With --embedded: each broker's shards (default: one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// With --embedded: the broker's flush policy.
    #[arg(long, default_value = "always")]
    pub flush: String,
    /// With --embedded: the broker's segment size (small segments make catch-up reads come from sealed segments).
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// With --embedded: the broker's tail cache per shard (0 sends every read to disk).
    #[arg(long)]
    pub cache_bytes: Option<u64>,
    /// With --embedded: the brokers' log level (a cluster's lines are passed on with their node id).
    #[arg(long, default_value = "warn")]
    pub broker_log_level: String,
    /// The topic (created if missing); with `workload`, the prefix of the topics' names.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// With `group`: the consumer group's id.
    #[arg(long, default_value = "bench-group")]
    pub group: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    /// Copies of each partition of the topics the run creates, on as many brokers.
    #[arg(long, value_name = "R", default_value_t = 1)]
    pub replication_factor: u16,
    /// Replicas in sync that an `acks=all` produce needs, for the topics the run
    /// creates [default: min(2, R) when --replication-factor R is above 1, else 1].
    #[arg(long, value_name = "M")]
    pub min_insync_replicas: Option<u16>,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Distinct keys (0: no keys, sticky partitioning).
    #[arg(long, default_value_t = 0)]
    pub key_space: u64,
    /// Records to send (per run, over all producers).
    #[arg(long, conflicts_with = "duration")]
    pub records: Option<u64>,
    /// Seconds to run [default 10 when --records is absent].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds at the start whose figures are discarded.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Producer clients.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer clients.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Producer acks.
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Producer compression.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub batch_size: usize,
    /// Producer linger in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Total records per second on a constant schedule; latency counts from each
    /// record's intended send time, so stalls are not hidden. Absent: as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Consumers do not fetch ahead: each poll's time is then a whole fetch round trip.
    #[arg(long)]
    pub no_prefetch: bool,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the results as the OpenMessaging Benchmark's result JSON
    /// (for its `bin/create_charts.py`).
    #[arg(long, value_name = "FILE")]
    pub omb_json: Option<PathBuf>,
    /// Draw throughput over time and the latency percentile curve (.svg).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

/// Options that a workload file sets; given on the command line too, they are refused.
pub const SET_BY_WORKLOAD_FILE: [&str; 6] = [
    "partitions",
    "record_size",
    "key_space",
    "producers",
    "consumers",
    "rate",
];

impl BenchConfig {
    /// Parses the command line (`args` includes the program name) and
    /// checks it, reporting which options a workload file already sets.
    ///
    /// # Errors
    /// clap's error (`--help` and `--version` come this way too), or a
    /// message naming the bad option.
    pub fn from_args<I, T>(args: I) -> Result<BenchConfig, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = BenchConfig::command()
            .try_get_matches_from(args)
            .map_err(ConfigError::Clap)?;
        let config = BenchConfig::from_arg_matches(&matches).map_err(ConfigError::Clap)?;
        if config.workload == Workload::Omb {
            let given = SET_BY_WORKLOAD_FILE
                .iter()
                .find(|id| matches.value_source(id) == Some(ValueSource::CommandLine));
            if let Some(id) = given {
                return Err(ConfigError::Invalid(format!(
                    "--{} is set by the workload file; edit the file instead",
                    id.replace('_', "-")
                )));
            }
        }
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// The run's length in seconds when it is bounded by time.
    pub fn duration_secs(&self) -> Option<f64> {
        match (self.records, self.duration) {
            (Some(_), _) => None,
            (None, Some(seconds)) => Some(seconds),
            (None, None) => Some(10.0),
        }
    }

    /// The bootstrap addresses in `--broker`, in order.
    pub fn broker_addrs(&self) -> Vec<String> {
        comma_list(&self.broker)
    }

    /// Where the brokers' metrics are read when the harness does not start
    /// them: `--broker-metrics`, or else each `--broker` address's host on
    /// the default metrics port (each endpoint once).
    pub fn metrics_addrs(&self) -> Vec<String> {
        match &self.broker_metrics {
            Some(list) => comma_list(list),
            None => {
                let mut addrs: Vec<String> = Vec::new();
                for addr in self.broker_addrs() {
                    let metrics = crate::resources::default_metrics_addr(&addr);
                    if !addrs.contains(&metrics) {
                        addrs.push(metrics);
                    }
                }
                addrs
            }
        }
    }

    /// The min-insync-replicas of the topics the run creates: the option, or
    /// else [`default_min_insync_replicas`] of the replication factor.
    pub fn min_insync_replicas(&self) -> u16 {
        self.min_insync_replicas
            .unwrap_or_else(|| default_min_insync_replicas(self.replication_factor))
    }

    /// Checks combinations clap cannot.
    ///
    /// # Errors
    /// A message naming the bad option.
    pub fn validate(&self) -> Result<(), String> {
        match (self.workload, &self.file) {
            (Workload::Omb, None) => {
                return Err("workload needs a file: shardlog-bench workload FILE.yaml".into())
            }
            (Workload::Omb, Some(_)) => {}
            (_, Some(file)) => {
                return Err(format!(
                    "unexpected {}: only `workload` takes a file",
                    file.display()
                ))
            }
            (_, None) => {}
        }
        if self.producers == 0 && self.workload != Workload::Consume {
            return Err("--producers must be at least 1".into());
        }
        if self.consumers == 0 && self.workload.consumes() {
            return Err("--consumers must be at least 1".into());
        }
        if self.record_size < 16 {
            return Err(
                "--record-size must be at least 16 bytes (records carry their send time)".into(),
            );
        }
        if self.rate.is_some_and(|r| r <= 0.0) {
            return Err("--rate must be positive".into());
        }
        if self
            .plot
            .as_ref()
            .is_some_and(|p| p.extension().is_none_or(|e| e != "svg" && e != "png"))
        {
            return Err("--plot writes SVG or PNG: give a path ending in .svg or .png".into());
        }
        if self.workload == Workload::Omb && self.records.is_some() {
            return Err("a workload file's run is bounded by time, not --records".into());
        }
        self.validate_cluster()
    }

    /// Checks the addresses, `--brokers` and the replication options.
    fn validate_cluster(&self) -> Result<(), String> {
        for (flag, list) in [
            ("--broker", Some(&self.broker)),
            ("--broker-metrics", self.broker_metrics.as_ref()),
        ] {
            if let Some(list) = list {
                check_comma_list(flag, list)?;
            }
        }
        if !VOTER_COUNTS.contains(&self.brokers) {
            return Err(format!(
                "--brokers {} cannot form a cluster: every broker is a voter of the \
                 metadata group, which has 1, 3 or 5",
                self.brokers
            ));
        }
        if self.brokers > 1 && !self.embedded {
            return Err(format!(
                "--brokers {} starts brokers and needs --embedded; to measure a running \
                 cluster, give its addresses: --broker a:7070,b:7070 --broker-metrics a:9644,b:9644",
                self.brokers
            ));
        }
        let factor = self.replication_factor;
        if factor == 0 {
            return Err("--replication-factor must be at least 1".into());
        }
        if self.embedded && usize::from(factor) > self.brokers {
            return Err(format!(
                "--replication-factor {factor} needs at least {factor} brokers: add --brokers {}",
                VOTER_COUNTS
                    .iter()
                    .find(|n| **n >= usize::from(factor))
                    .map_or_else(|| factor.to_string(), |n| n.to_string())
            ));
        }
        let min_insync = self.min_insync_replicas();
        if min_insync == 0 || min_insync > factor {
            return Err(format!(
                "--min-insync-replicas must be within 1..={factor} (the replication factor), not {min_insync}"
            ));
        }
        Ok(())
    }
}

/// The cluster sizes `--brokers` accepts: the metadata group's voter counts.
pub const VOTER_COUNTS: [usize; 3] = [1, 3, 5];

/// The min-insync-replicas of a topic with `replication_factor` copies when
/// none is given: 2 when there are at least that many copies (one broker may
/// be lost without refusing `acks=all`), else 1.
pub fn default_min_insync_replicas(replication_factor: u16) -> u16 {
    if replication_factor > 1 {
        replication_factor.min(2)
    } else {
        1
    }
}

/// The items of a comma-separated list, trimmed, empty ones dropped.
pub fn comma_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// Refuses a list with an empty item or an item that is not `host:port`.
fn check_comma_list(flag: &str, list: &str) -> Result<(), String> {
    let items: Vec<&str> = list.split(',').map(str::trim).collect();
    if items.iter().any(|item| item.is_empty()) {
        return Err(format!(
            "{flag} {list:?} has an empty address: give HOST:PORT[,HOST:PORT...]"
        ));
    }
    let bad = items.iter().find(|item| {
        item.rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    });
    match bad {
        Some(item) => Err(format!("{flag}: {item:?} is not HOST:PORT")),
        None => Ok(()),
    }
}

/// Why the command line was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// clap's own (including `--help` and `--version`, which are not errors to the user).
    Clap(clap::Error),
    /// A combination clap cannot check.
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Clap(error) => write!(f, "{error}"),
            ConfigError::Invalid(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_their_defaults() {
        let config = BenchConfig::try_parse_from(["shardlog-bench", "produce"]).unwrap();
        assert_eq!(config.workload, Workload::Produce);
        assert_eq!(config.partitions, 16);
        assert_eq!(config.record_size, 1024);
        assert_eq!(config.duration_secs(), Some(10.0));
        assert!(config.validate().is_ok());
        let config = BenchConfig::try_parse_from([
            "shardlog-bench",
            "e2e",
            "--embedded",
            "--shards",
            "2",
            "--records",
            "500",
            "--rate",
            "100",
            "--acks",
            "leader",
        ])
        .unwrap();
        assert_eq!(config.duration_secs(), None);
        assert_eq!(config.acks, AcksArg::Leader);
        assert_eq!(config.rate, Some(100.0));
        assert_eq!(config.broker_metrics, None);
        assert!(!config.no_prefetch);
    }

    #[test]
    fn the_new_options_parse() {
        let config = BenchConfig::from_args([
            "shardlog-bench",
            "group",
            "--group",
            "g1",
            "--consumers",
            "3",
            "--broker-metrics",
            "10.0.0.5:9999",
            "--omb-json",
            "omb.json",
            "--no-prefetch",
        ])
        .unwrap();
        assert_eq!(config.workload, Workload::Group);
        assert_eq!(config.group, "g1");
        assert_eq!(config.broker_metrics.as_deref(), Some("10.0.0.5:9999"));
        assert_eq!(config.omb_json, Some(PathBuf::from("omb.json")));
        assert!(config.no_prefetch);
        let config = BenchConfig::from_args([
            "shardlog-bench",
            "workload",
            "w.yaml",
            "--embedded",
            "--duration",
            "5",
        ])
        .unwrap();
        assert_eq!(config.workload, Workload::Omb);
        assert_eq!(config.file, Some(PathBuf::from("w.yaml")));
        assert_eq!(config.duration, Some(5.0));
        // --broker-metrics names an outside broker's endpoint.
        assert!(BenchConfig::from_args([
            "shardlog-bench",
            "produce",
            "--embedded",
            "--broker-metrics",
            "x:1"
        ])
        .is_err());
    }

    #[test]
    fn several_brokers_and_metrics_endpoints_are_comma_lists() {
        let config = BenchConfig::from_args([
            "shardlog-bench",
            "produce",
            "--broker",
            "10.0.0.1:7070, 10.0.0.2:7070,10.0.0.3:7071",
            "--broker-metrics",
            "10.0.0.1:9644,10.0.0.2:9644 ,10.0.0.3:9645",
        ])
        .unwrap();
        assert_eq!(
            config.broker_addrs(),
            ["10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7071"]
        );
        assert_eq!(
            config.metrics_addrs(),
            ["10.0.0.1:9644", "10.0.0.2:9644", "10.0.0.3:9645"]
        );
        // Without --broker-metrics: each broker's host on the default port, once each.
        let config = BenchConfig::from_args([
            "shardlog-bench",
            "produce",
            "--broker",
            "a:7070,b:7070,a:7080",
        ])
        .unwrap();
        assert_eq!(config.metrics_addrs(), ["a:9644", "b:9644"]);
        let config = BenchConfig::from_args(["shardlog-bench", "produce"]).unwrap();
        assert_eq!(config.broker_addrs(), ["127.0.0.1:7070"]);
        assert_eq!(config.metrics_addrs(), ["127.0.0.1:9644"]);
        assert_eq!(comma_list(" a:1 ,, b:2,"), ["a:1", "b:2"]);
        let refused = |args: &[&str]| match BenchConfig::from_args(args) {
            Err(ConfigError::Invalid(message)) => message,
            other => panic!("{args:?} gave {other:?}"),
        };
        let message = refused(&["shardlog-bench", "produce", "--broker", "a:1,,b:2"]);
        assert!(message.contains("empty address"), "{message}");
        let message = refused(&["shardlog-bench", "produce", "--broker-metrics", "a:1,b"]);
        assert!(message.contains("\"b\" is not HOST:PORT"), "{message}");
        let message = refused(&["shardlog-bench", "produce", "--broker", "a:x"]);
        assert!(message.contains("--broker"), "{message}");
        assert!(
            BenchConfig::from_args(["shardlog-bench", "produce", "--broker", "[::1]:7070"]).is_ok()
        );
    }

    #[test]
    fn min_insync_replicas_defaults_to_two_when_replicated() {
        assert_eq!(default_min_insync_replicas(1), 1);
        assert_eq!(default_min_insync_replicas(2), 2);
        assert_eq!(default_min_insync_replicas(3), 2);
        assert_eq!(default_min_insync_replicas(5), 2);
        let parse = |args: &[&str]| {
            let mut all = vec!["shardlog-bench", "produce"];
            all.extend_from_slice(args);
            BenchConfig::from_args(all)
        };
        let config = parse(&[]).unwrap();
        assert_eq!((config.brokers, config.replication_factor), (1, 1));
        assert_eq!(config.min_insync_replicas(), 1);
        let config = parse(&["--embedded", "--brokers", "3", "--replication-factor", "3"]).unwrap();
        assert_eq!(config.brokers, 3);
        assert_eq!(config.min_insync_replicas(), 2);
        let config = parse(&["--replication-factor", "3", "--min-insync-replicas", "3"]).unwrap();
        assert_eq!(config.min_insync_replicas(), 3);
        let help = BenchConfig::command().render_long_help().to_string();
        assert!(
            help.contains("min(2, R) when --replication-factor R is above 1"),
            "{help}"
        );
    }

    #[test]
    fn cluster_options_that_cannot_work_are_refused() {
        let refused = |args: &[&str]| {
            let mut all = vec!["shardlog-bench", "produce"];
            all.extend_from_slice(args);
            match BenchConfig::from_args(all) {
                Err(ConfigError::Invalid(message)) => message,
                other => panic!("{args:?} gave {other:?}"),
            }
        };
        let message = refused(&["--embedded", "--brokers", "2"]);
        assert!(message.contains("1, 3 or 5"), "{message}");
        let message = refused(&["--brokers", "3"]);
        assert!(message.contains("needs --embedded"), "{message}");
        let message = refused(&["--embedded", "--replication-factor", "3"]);
        assert!(message.contains("add --brokers 3"), "{message}");
        let message = refused(&["--embedded", "--brokers", "3", "--replication-factor", "4"]);
        assert!(message.contains("add --brokers 5"), "{message}");
        let message = refused(&["--replication-factor", "0"]);
        assert!(message.contains("at least 1"), "{message}");
        let message = refused(&["--replication-factor", "3", "--min-insync-replicas", "4"]);
        assert!(message.contains("1..=3"), "{message}");
        let message = refused(&["--min-insync-replicas", "0"]);
        assert!(message.contains("1..=1"), "{message}");
        // A running cluster: the factor is checked by the brokers, not here.
        assert!(BenchConfig::from_args([
            "shardlog-bench",
            "produce",
            "--broker",
            "a:1,b:2,c:3",
            "--replication-factor",
            "3"
        ])
        .is_ok());
    }

    #[test]
    fn a_workload_file_is_required_and_not_contradicted() {
        let refused = |args: &[&str]| match BenchConfig::from_args(args) {
            Err(ConfigError::Invalid(message)) => message,
            other => panic!("{args:?} gave {other:?}"),
        };
        assert!(refused(&["shardlog-bench", "workload"]).contains("needs a file"));
        assert!(refused(&["shardlog-bench", "produce", "x.yaml"]).contains("only `workload`"));
        let message = refused(&["shardlog-bench", "workload", "w.yaml", "--partitions", "4"]);
        assert!(
            message.contains("--partitions is set by the workload file"),
            "{message}"
        );
        let message = refused(&[
            "shardlog-bench",
            "workload",
            "w.yaml",
            "--record-size",
            "64",
        ]);
        assert!(message.contains("--record-size"), "{message}");
        // A default is not a contradiction.
        assert!(BenchConfig::from_args(["shardlog-bench", "workload", "w.yaml"]).is_ok());
    }

    #[test]
    fn bad_combinations_are_refused() {
        assert!(BenchConfig::try_parse_from([
            "shardlog-bench",
            "produce",
            "--records",
            "5",
            "--duration",
            "3"
        ])
        .is_err());
        assert!(BenchConfig::try_parse_from([
            "shardlog-bench",
            "produce",
            "--embedded",
            "--broker",
            "x:1"
        ])
        .is_err());
        assert!(BenchConfig::try_parse_from(["shardlog-bench", "nonsense"]).is_err());
        let tiny = BenchConfig::try_parse_from(["shardlog-bench", "produce", "--record-size", "4"])
            .unwrap();
        assert!(tiny.validate().is_err());
        let png =
            BenchConfig::try_parse_from(["shardlog-bench", "produce", "--plot", "x.png"]).unwrap();
        assert!(png.validate().is_ok());
        let gif =
            BenchConfig::try_parse_from(["shardlog-bench", "produce", "--plot", "x.gif"]).unwrap();
        assert!(gif.validate().is_err());
    }
}
