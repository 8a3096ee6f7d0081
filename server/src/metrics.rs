//! Metrics in the Prometheus text format.
//!
//! Every shard counts into its own [`ShardMetrics`] (plain `Cell`s and
//! histograms, never shared) and renders them on request. A scrape of
//! `http://<metrics-listen>/metrics` is served by shard 0
//! (`net/metrics_http.rs`), which asks every shard for its rendering over the
//! mesh and concatenates them: no shard reads another's memory.
//!
//! The process-wide series (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_resident_memory_max_bytes`)
//! come from `/proc/self` once per scrape, not per shard: CPU and memory
//! belong to the whole process (its shards, the io-wq workers io_uring
//! starts for it, any blocking-pool thread), and a benchmark divides the
//! change of the CPU counter by the bytes it moved.

use std::cell::{Cell, RefCell};
use std::fmt::Write;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::shard::partition::PartitionState;

/// The APIs requests are counted by, in `RequestBody` tag order.
pub const API_NAMES: [&str; 19] = [
    "none",
    "api_versions",
    "metadata",
    "create_topics",
    "delete_topics",
    "produce",
    "fetch",
    "list_offsets",
    "init_producer",
    "group_heartbeat",
    "offset_commit",
    "offset_fetch",
    "list_groups",
    "describe_groups",
    "delete_group",
    "reset_offsets",
    "recover_partitions",
    "raft",
    "replica_fetch",
];

/// Histogram bucket bounds, in microseconds.
const BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];
/// The largest latency recorded exactly (longer ones are clamped): 10 minutes.
const LATENCY_US_MAX: u64 = 600_000_000;
/// Why the broker closed connections, as counted by `shardlog_connections_closed_total`.
pub const CLOSE_REASONS: [&str; 5] = [
    "idle",
    "stalled_frame",
    "write_timeout",
    "broken",
    "refused",
];

/// The counters of one shard.
#[derive(Debug)]
pub struct ShardMetrics {
    requests: [Cell<u64>; API_NAMES.len()],
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    cross_shard_messages: Cell<u64>,
    connections_closed: [Cell<u64>; CLOSE_REASONS.len()],
    produce_latency_us: RefCell<Histogram<u64>>,
    fetch_latency_us: RefCell<Histogram<u64>>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        let histogram = || {
            RefCell::new(
                Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).expect("valid histogram bounds"),
            )
        };
        ShardMetrics {
            requests: Default::default(),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            cross_shard_messages: Cell::new(0),
            connections_closed: Default::default(),
            produce_latency_us: histogram(),
            fetch_latency_us: histogram(),
        }
    }
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

impl ShardMetrics {
    /// Counts a request of API `api` (the union tag) of `bytes` bytes.
    pub fn request(&self, api: u8, bytes: u64) {
        if let Some(counter) = self.requests.get(usize::from(api)) {
            add(counter, 1);
        }
        add(&self.bytes_in, bytes);
    }

    /// Counts bytes written back to clients.
    pub fn bytes_out(&self, bytes: u64) {
        add(&self.bytes_out, bytes);
    }

    /// Counts a message sent to another shard.
    pub fn cross_shard_message(&self) {
        add(&self.cross_shard_messages, 1);
    }

    /// Counts a connection the broker closed (or refused) for `reason`, one of [`CLOSE_REASONS`].
    pub fn connection_closed(&self, reason: &str) {
        let at = CLOSE_REASONS.iter().position(|r| *r == reason);
        assert!(at.is_some(), "unknown close reason {reason}");
        if let Some(at) = at {
            add(&self.connections_closed[at], 1);
        }
    }

    /// Records how long a request of API `api` took.
    pub fn latency(&self, api: u8, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        let histogram = match API_NAMES.get(usize::from(api)) {
            Some(&"produce") => &self.produce_latency_us,
            Some(&"fetch") => &self.fetch_latency_us,
            _ => return,
        };
        let _ = histogram.borrow_mut().record(micros);
    }

    /// Renders this shard's series (without HELP/TYPE lines, see [`header`]).
    pub fn render(&self, shard: ShardGauges<'_>) -> String {
        let mut out = String::new();
        let id = shard.id;
        for (api, counter) in API_NAMES.iter().zip(&self.requests).skip(1) {
            let _ = writeln!(
                out,
                "shardlog_requests_total{{shard=\"{id}\",api=\"{api}\"}} {}",
                counter.get()
            );
        }
        let _ = writeln!(
            out,
            "shardlog_bytes_in_total{{shard=\"{id}\"}} {}",
            self.bytes_in.get()
        );
        let _ = writeln!(
            out,
            "shardlog_bytes_out_total{{shard=\"{id}\"}} {}",
            self.bytes_out.get()
        );
        let _ = writeln!(
            out,
            "shardlog_cross_shard_messages_total{{shard=\"{id}\"}} {}",
            self.cross_shard_messages.get()
        );
        let _ = writeln!(
            out,
            "shardlog_connections{{shard=\"{id}\"}} {}",
            shard.connections
        );
        for (reason, count) in CLOSE_REASONS.iter().zip(&self.connections_closed) {
            let _ = writeln!(
                out,
                "shardlog_connections_closed_total{{shard=\"{id}\",reason=\"{reason}\"}} {}",
                count.get()
            );
        }
        let _ = writeln!(
            out,
            "shardlog_memory_available_bytes{{shard=\"{id}\"}} {}",
            shard.memory_available_bytes
        );
        let _ = writeln!(
            out,
            "shardlog_cache_bytes{{shard=\"{id}\"}} {}",
            shard.storage.cache_used_bytes()
        );
        render_histogram(
            &mut out,
            "shardlog_produce_latency_seconds",
            id,
            &self.produce_latency_us.borrow(),
        );
        render_histogram(
            &mut out,
            "shardlog_fetch_latency_seconds",
            id,
            &self.fetch_latency_us.borrow(),
        );
        render_flushes(&mut out, id, &shard.storage.flush_latencies());
        let mut partitions = shard.partitions;
        partitions.sort_by(|a, b| a.0.cmp(&b.0));
        for ((topic, partition), state) in partitions {
            let labels = format!("topic=\"{topic}\",partition=\"{partition}\",shard=\"{id}\"");
            let _ = writeln!(
                out,
                "shardlog_partition_log_end_offset{{{labels}}} {}",
                state.log.log_end_offset()
            );
            let _ = writeln!(
                out,
                "shardlog_partition_high_watermark{{{labels}}} {}",
                state.high_watermark()
            );
            let _ = writeln!(
                out,
                "shardlog_partition_log_start_offset{{{labels}}} {}",
                state.log.log_start_offset()
            );
            let _ = writeln!(
                out,
                "shardlog_partition_size_bytes{{{labels}}} {}",
                state.log.size_bytes()
            );
            render_replication(&mut out, &labels, &state);
            let health = state.health();
            let _ = writeln!(
                out,
                "shardlog_partition_status{{{labels}}} {}",
                health.status.0
            );
            let _ = writeln!(
                out,
                "shardlog_partition_corrupt_reads_total{{{labels}}} {}",
                health.corrupt_reads_count
            );
        }
        out
    }
}

/// A partition's replication series: whether this broker leads it, and
/// while it does, under-replication, ISR changes and each follower's lag.
fn render_replication(out: &mut String, labels: &str, state: &crate::shard::PartitionState) {
    let view = state.replica_lags();
    let leads = state.replica.leads();
    let _ = writeln!(
        out,
        "shardlog_partition_leader{{{labels}}} {}",
        u8::from(leads)
    );
    let (out_of_sync, lags) = view.unwrap_or_default();
    let _ = writeln!(
        out,
        "shardlog_partition_under_replicated{{{labels}}} {}",
        u8::from(out_of_sync > 0)
    );
    let (shrinks, expands) = state.replica.isr_changes();
    let _ = writeln!(
        out,
        "shardlog_partition_isr_shrinks_total{{{labels}}} {shrinks}"
    );
    let _ = writeln!(
        out,
        "shardlog_partition_isr_expands_total{{{labels}}} {expands}"
    );
    for lag in lags {
        let follower = lag.broker;
        let _ = writeln!(
            out,
            "shardlog_partition_replica_lag_offsets{{{labels},follower=\"{follower}\"}} {}",
            lag.offsets
        );
        let _ = writeln!(
            out,
            "shardlog_partition_replica_lag_bytes{{{labels},follower=\"{follower}\"}} {}",
            lag.bytes
        );
    }
}

/// What a shard reports beside its own counters.
#[derive(Debug)]
pub struct ShardGauges<'a> {
    /// The shard's id.
    pub id: usize,
    /// Client connections it holds.
    pub connections: usize,
    /// Its memory budget left, in bytes.
    pub memory_available_bytes: u64,
    /// Its storage: cache and flush latencies.
    pub storage: &'a shardlog_engine::StorageShard,
    /// The partitions it owns.
    pub partitions: Vec<((String, u32), Rc<PartitionState>)>,
}

fn render_histogram(out: &mut String, name: &str, shard: usize, histogram: &Histogram<u64>) {
    for bound in BUCKETS_US {
        let count = histogram.count_between(0, bound);
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{shard}\",le=\"{}\"}} {count}",
            bound as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {}",
        histogram.len()
    );
    let sum_seconds = histogram.mean() * histogram.len() as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum_seconds}");
    let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {}", histogram.len());
}

fn render_flushes(out: &mut String, shard: usize, flushes: &shardlog_engine::FlushLatencies) {
    let name = "shardlog_flush_latency_seconds";
    let mut cumulative = 0u64;
    for (bound, count) in shardlog_engine::FLUSH_BUCKETS_US
        .iter()
        .zip(flushes.counts.iter())
    {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{shard}\",le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {}",
        flushes.count
    );
    let _ = writeln!(
        out,
        "{name}_sum{{shard=\"{shard}\"}} {}",
        flushes.sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {}", flushes.count);
}

/// The HELP and TYPE lines of every series.
pub fn header() -> &'static str {
    "# HELP shardlog_requests_total Requests received, by API.\n\
     # TYPE shardlog_requests_total counter\n\
     # HELP shardlog_bytes_in_total Request bytes received.\n\
     # TYPE shardlog_bytes_in_total counter\n\
     # HELP shardlog_bytes_out_total Response bytes sent.\n\
     # TYPE shardlog_bytes_out_total counter\n\
     # HELP shardlog_cross_shard_messages_total Requests forwarded to another shard.\n\
     # TYPE shardlog_cross_shard_messages_total counter\n\
     # HELP shardlog_connections Open client connections.\n\
     # TYPE shardlog_connections gauge\n\
     # HELP shardlog_connections_closed_total Connections the broker closed or refused, by reason.\n\
     # TYPE shardlog_connections_closed_total counter\n\
     # HELP shardlog_memory_available_bytes What is left of the shard's memory budget for requests and responses.\n\
     # TYPE shardlog_memory_available_bytes gauge\n\
     # HELP shardlog_cache_bytes Bytes held by the tail cache.\n\
     # TYPE shardlog_cache_bytes gauge\n\
     # HELP shardlog_produce_latency_seconds Produce requests, from read to response ready.\n\
     # TYPE shardlog_produce_latency_seconds histogram\n\
     # HELP shardlog_fetch_latency_seconds Fetch requests, from read to response ready (long polls included).\n\
     # TYPE shardlog_fetch_latency_seconds histogram\n\
     # HELP shardlog_flush_latency_seconds fdatasync of segments.\n\
     # TYPE shardlog_flush_latency_seconds histogram\n\
     # HELP shardlog_partition_log_end_offset One past the last offset assigned.\n\
     # TYPE shardlog_partition_log_end_offset gauge\n\
     # HELP shardlog_partition_high_watermark One past the last acknowledged offset.\n\
     # TYPE shardlog_partition_high_watermark gauge\n\
     # HELP shardlog_partition_log_start_offset The first offset still stored.\n\
     # TYPE shardlog_partition_log_start_offset gauge\n\
     # HELP shardlog_group_committed_offset The group's committed offset (the next to consume).\n\
     # TYPE shardlog_group_committed_offset gauge\n\
     # HELP shardlog_group_lag Records between the committed offset and the high watermark.\n\
     # TYPE shardlog_group_lag gauge\n\
     # HELP shardlog_partition_size_bytes Bytes of the partition's segments.\n\
     # TYPE shardlog_partition_size_bytes gauge\n\
     # HELP shardlog_partition_status 0 online, 1 poisoned (refuses writes until recovered), 2 corrupt data found on read.\n\
     # TYPE shardlog_partition_status gauge\n\
     # HELP shardlog_partition_corrupt_reads_total Reads that found damaged data on disk.\n\
     # TYPE shardlog_partition_corrupt_reads_total counter\n\
     # HELP shardlog_partition_leader 1 where this broker leads the partition (or is its only replica); their sum is the broker's leader count.\n\
     # TYPE shardlog_partition_leader gauge\n\
     # HELP shardlog_partition_under_replicated 1 where this broker leads the partition and a replica is out of its ISR.\n\
     # TYPE shardlog_partition_under_replicated gauge\n\
     # HELP shardlog_partition_isr_shrinks_total ISR shrinks seen while this broker led the partition.\n\
     # TYPE shardlog_partition_isr_shrinks_total counter\n\
     # HELP shardlog_partition_isr_expands_total ISR expansions seen while this broker led the partition.\n\
     # TYPE shardlog_partition_isr_expands_total counter\n\
     # HELP shardlog_partition_replica_lag_offsets Offsets a follower is behind the leader's durable end (on the leader).\n\
     # TYPE shardlog_partition_replica_lag_offsets gauge\n\
     # HELP shardlog_partition_replica_lag_bytes About how many bytes a follower is behind the leader's durable end (on the leader; estimated to within one index interval).\n\
     # TYPE shardlog_partition_replica_lag_bytes gauge\n"
}

/// The whole process's CPU time and memory, read from `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system time of every thread, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size now, in bytes.
    pub resident_bytes: u64,
    /// The largest resident set size so far (VmHWM), in bytes.
    pub resident_max_bytes: u64,
}

impl ProcessStats {
    /// Reads the process's own counters.
    ///
    /// # Errors
    /// `/proc` is not mounted or a file is not in the expected shape.
    pub fn read() -> std::io::Result<ProcessStats> {
        // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks_per_second = u64::try_from(ticks_per_second)
            .ok()
            .filter(|t| *t > 0)
            .unwrap_or(100);
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let status = std::fs::read_to_string("/proc/self/status")?;
        parse_process_stats(&stat, &status, ticks_per_second).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "unexpected /proc/self/stat or /proc/self/status",
            )
        })
    }

    /// The three series with their HELP and TYPE lines.
    pub fn render(&self) -> String {
        format!(
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total {}\n\
             # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes {}\n\
             # HELP process_resident_memory_max_bytes Peak resident memory size in bytes (VmHWM).\n\
             # TYPE process_resident_memory_max_bytes gauge\n\
             process_resident_memory_max_bytes {}\n",
            self.cpu_seconds, self.resident_bytes, self.resident_max_bytes
        )
    }
}

/// Parses `/proc/self/stat` (utime and stime, fields 14 and 15, in clock
/// ticks) and `/proc/self/status` (VmRSS and VmHWM, in kB).
fn parse_process_stats(stat: &str, status: &str, ticks_per_second: u64) -> Option<ProcessStats> {
    assert!(ticks_per_second > 0);
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: count fields from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name come state (field 3) .. ; utime is field 14, stime 15.
    let utime_ticks: u64 = fields.nth(11)?.parse().ok()?;
    let stime_ticks: u64 = fields.next()?.parse().ok()?;
    let kilobytes = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(ProcessStats {
        cpu_seconds: (utime_ticks + stime_ticks) as f64 / ticks_per_second as f64,
        resident_bytes: kilobytes("VmRSS:")? * 1024,
        resident_max_bytes: kilobytes("VmHWM:")? * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_has_a_name_in_tag_order() {
        use shardlog_wire::protocol::{fb, API_VERSIONS};
        assert_eq!(API_NAMES.len(), usize::from(fb::RequestBody::ENUM_MAX) + 1);
        for (api, _, _) in API_VERSIONS {
            let name = API_NAMES[usize::from(api.0)];
            let variant = format!("{api:?}").to_lowercase().replace('_', "");
            assert_eq!(
                variant,
                format!("{}request", name.replace('_', "")),
                "tag {}",
                api.0
            );
        }
    }

    #[test]
    fn process_stats_parse_and_render_once() {
        // A command name with a space and a parenthesis, as comm allows.
        let stat = "4242 (shardlog (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 130 0 0 20 0 3 0 12345 104857600 2560 18446744073709551615";
        let status = "Name:\tshardlog\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        let stats = parse_process_stats(stat, status, 100).unwrap();
        assert_eq!(stats.cpu_seconds, 3.8);
        assert_eq!(stats.resident_bytes, 10240 * 1024);
        assert_eq!(stats.resident_max_bytes, 20480 * 1024);
        assert!(parse_process_stats("garbage", status, 100).is_none());
        assert!(parse_process_stats(stat, "Name: x\n", 100).is_none());

        let text = stats.render();
        let value = |name: &str| -> f64 {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(name))
                .collect();
            assert_eq!(lines.len(), 1, "{name} once in {text}");
            lines[0].split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        assert_eq!(value("process_cpu_seconds_total"), 3.8);
        assert_eq!(value("process_resident_memory_bytes"), 10_485_760.0);
        assert_eq!(value("process_resident_memory_max_bytes"), 20_971_520.0);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
        assert!(text.contains("# HELP process_resident_memory_max_bytes "));
        // This process's own counters read too (Linux only, as the broker).
        let own = ProcessStats::read().unwrap();
        assert!(own.resident_bytes > 0);
        assert!(own.resident_max_bytes >= own.resident_bytes);
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 2).unwrap();
        histogram.record(150).unwrap();
        histogram.record(3_000).unwrap();
        histogram.record(2_000_000).unwrap();
        let mut out = String::new();
        render_histogram(&mut out, "x", 0, &histogram);
        assert!(out.contains("x_bucket{shard=\"0\",le=\"0.0001\"} 0\n"));
        assert!(out.contains("x_bucket{shard=\"0\",le=\"0.00025\"} 1\n"));
        assert!(out.contains("x_bucket{shard=\"0\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{shard=\"0\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{shard=\"0\"} 3\n"));
    }
}
