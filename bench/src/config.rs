//! Options of `shardlog-bench`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
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
    /// The broker to measure.
    #[arg(long, default_value = "127.0.0.1:7070", conflicts_with = "embedded")]
    pub broker: String,
    /// Start a shardlog-server on a temporary directory and a free port, and stop it after.
    #[arg(long)]
    pub embedded: bool,
    /// With --embedded: the broker's shards (default: one per core).
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
    /// The topic (created if missing).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
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
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput over time and the latency percentile curve (.svg).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

impl BenchConfig {
    /// The run's length in seconds when it is bounded by time.
    pub fn duration_secs(&self) -> Option<f64> {
        match (self.records, self.duration) {
            (Some(_), _) => None,
            (None, Some(seconds)) => Some(seconds),
            (None, None) => Some(10.0),
        }
    }

    /// Checks combinations clap cannot.
    ///
    /// # Errors
    /// A message naming the bad option.
    pub fn validate(&self) -> Result<(), String> {
        if self.producers == 0 && self.workload != Workload::Consume {
            return Err("--producers must be at least 1".into());
        }
        if self.consumers == 0 && self.workload != Workload::Produce {
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
        Ok(())
    }
}

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
