//! CPU per GB and the broker's memory: what moving the data cost.
//!
//! Throughput alone hides whether a broker got faster or just took more
//! cores. Both processes' CPU time is read at the start of the measured
//! window and at its end and divided by the gigabytes the window counted
//! (GB = 10^9 bytes of record values):
//!
//! - the broker's from its own `/metrics` (`process_cpu_seconds_total`,
//!   `process_resident_memory_max_bytes`), so a broker on another machine is
//!   measured the same way as an embedded one. A cluster's is the sum over
//!   its brokers, every one read at both ends of the window (the cluster's
//!   core-seconds per GB), and its peak memory the largest broker's;
//! - the load generator's from `getrusage(RUSAGE_SELF)`: every thread of
//!   this process. An embedded broker is a child process, and a child's
//!   time is in `RUSAGE_CHILDREN` only after it has been waited for, so it
//!   is never mixed in.
//!
//! A broker whose metrics cannot be reached leaves the brokers' figures out
//! (the table and the JSON say why) instead of failing the run; so does a
//! cluster with more or fewer brokers than metrics endpoints. A sum over
//! fewer brokers than the cluster has is never reported.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest a scrape may take, connecting and reading.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of a metrics response read (10,000 partitions render ~5 MB).
const SCRAPE_BYTES_MAX: u64 = 64 << 20;
/// Bytes in the GB of "CPU seconds per GB".
pub const BYTES_PER_GB: f64 = 1e9;

/// The broker's process counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BrokerSample {
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: f64,
    /// `process_resident_memory_bytes`.
    pub resident_bytes: u64,
    /// `process_resident_memory_max_bytes`.
    pub resident_max_bytes: u64,
}

/// Both processes' counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// This process's CPU seconds (every thread).
    pub client_cpu_seconds: f64,
    /// Each broker's, in the order of the metrics endpoints, or why it could not be read.
    pub brokers: Vec<Result<BrokerSample, String>>,
}

/// One broker's share of the measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerUsage {
    /// Where its metrics were read.
    pub metrics: String,
    /// Its CPU core-seconds in the window.
    pub cpu_s: f64,
    /// Its peak resident memory (VmHWM) at the window's end.
    pub peak_rss_bytes: u64,
    /// Its resident memory at the window's end.
    pub rss_bytes: u64,
}

/// What the measured window cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Where the brokers' metrics were read (comma-separated when several).
    pub broker_metrics: String,
    /// Why they could not be, if so: then no broker figure is given.
    pub broker_metrics_error: Option<String>,
    /// Brokers in the cluster, as its metadata lists them (1 for a one-node broker).
    pub broker_count: usize,
    /// The brokers' CPU core-seconds in the window, summed over every broker.
    pub broker_cpu_s: Option<f64>,
    /// This process's CPU core-seconds in the window.
    pub client_cpu_s: f64,
    /// `broker_cpu_s` per 10^9 bytes of record values counted: the cluster's core-seconds per GB.
    pub broker_cpu_s_per_gb: Option<f64>,
    /// `client_cpu_s` per 10^9 bytes of record values counted.
    pub client_cpu_s_per_gb: Option<f64>,
    /// The largest peak resident memory (VmHWM) of any broker at the window's end.
    pub broker_peak_rss_bytes: Option<u64>,
    /// The largest resident memory of any broker at the window's end.
    pub broker_rss_bytes: Option<u64>,
    /// Each broker's figures, in the order of `broker_metrics` (empty when not measured).
    pub per_broker: Vec<BrokerUsage>,
}

/// CPU seconds per GB, or None when nothing was moved.
pub fn per_gb(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_seconds / (bytes as f64 / BYTES_PER_GB))
}

/// Each broker's share of the window between `before` and `after` (one
/// sample per endpoint in `metrics_addrs`, in its order), or every reason
/// one of them cannot be given: a broker that could not be read at either
/// end, or a cluster of `broker_count` brokers measured through another
/// number of endpoints.
///
/// # Errors
/// The reasons, joined by "; ".
pub fn brokers_between(
    metrics_addrs: &[String],
    broker_count: usize,
    before: &[Result<BrokerSample, String>],
    after: &[Result<BrokerSample, String>],
) -> Result<Vec<BrokerUsage>, String> {
    if metrics_addrs.len() != broker_count {
        return Err(format!(
            "the cluster has {broker_count} broker(s) but {} metrics endpoint(s) were given \
             ({}): give --broker-metrics one HOST:PORT per broker",
            metrics_addrs.len(),
            metrics_addrs.join(",")
        ));
    }
    if before.len() != metrics_addrs.len() || after.len() != metrics_addrs.len() {
        return Err(format!(
            "{} metrics endpoints but {} samples before the window and {} after",
            metrics_addrs.len(),
            before.len(),
            after.len()
        ));
    }
    let mut errors: Vec<String> = Vec::new();
    let mut usage = Vec::with_capacity(metrics_addrs.len());
    for ((addr, before), after) in metrics_addrs.iter().zip(before).zip(after) {
        match (before, after) {
            (Ok(before), Ok(after)) => usage.push(BrokerUsage {
                metrics: addr.clone(),
                cpu_s: (after.cpu_seconds - before.cpu_seconds).max(0.0),
                peak_rss_bytes: after.resident_max_bytes,
                rss_bytes: after.resident_bytes,
            }),
            (Err(error), _) | (_, Err(error)) => {
                if !errors.contains(error) {
                    errors.push(error.clone());
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(usage)
    } else {
        Err(errors.join("; "))
    }
}

impl Usage {
    /// The cost of the window between `before` and `after`, which counted
    /// `bytes`, on a cluster of `broker_count` brokers whose metrics were
    /// read at `metrics_addrs`.
    pub fn between(
        metrics_addrs: &[String],
        broker_count: usize,
        before: &Sample,
        after: &Sample,
        bytes: u64,
    ) -> Usage {
        let client_cpu_s = (after.client_cpu_seconds - before.client_cpu_seconds).max(0.0);
        let brokers = brokers_between(metrics_addrs, broker_count, &before.brokers, &after.brokers);
        let measured = brokers.as_ref().ok();
        let broker_cpu_s = measured.map(|b| b.iter().map(|b| b.cpu_s).sum::<f64>());
        let largest =
            |pick: fn(&BrokerUsage) -> u64| measured.and_then(|b| b.iter().map(pick).max());
        Usage {
            broker_metrics: metrics_addrs.join(","),
            broker_count,
            broker_cpu_s,
            client_cpu_s,
            broker_cpu_s_per_gb: broker_cpu_s.and_then(|s| per_gb(s, bytes)),
            client_cpu_s_per_gb: per_gb(client_cpu_s, bytes),
            broker_peak_rss_bytes: largest(|b| b.peak_rss_bytes),
            broker_rss_bytes: largest(|b| b.rss_bytes),
            per_broker: measured.cloned().unwrap_or_default(),
            broker_metrics_error: brokers.err(),
        }
    }
}

/// This process's CPU time so far (user + system, every thread), in seconds.
pub fn client_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert!(status == 0, "getrusage(RUSAGE_SELF) cannot fail");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Reads this process's counters and every broker's now (the brokers at once).
pub async fn sample(metrics_addrs: &[String]) -> Sample {
    let brokers = futures_util::future::join_all(
        metrics_addrs
            .iter()
            .map(|addr| async move { scrape(addr).await.map_err(|e| format!("{e:#}")) }),
    )
    .await;
    Sample {
        client_cpu_seconds: client_cpu_seconds(),
        brokers,
    }
}

/// `GET /metrics` from `addr` and the three process series from it.
///
/// # Errors
/// The broker cannot be reached, answers with another status, or lacks the series.
pub async fn scrape(addr: &str) -> anyhow::Result<BrokerSample> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream
            .take(SCRAPE_BYTES_MAX)
            .read_to_end(&mut response)
            .await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} in {SCRAPE_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("cannot scrape {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{addr} did not answer HTTP"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status = head.lines().next().unwrap_or_default();
        anyhow::bail!("{addr}/metrics answered {status:?}");
    }
    parse_metrics(body).map_err(|e| anyhow::anyhow!("{addr}/metrics: {e}"))
}

/// The process series from a Prometheus text rendering.
///
/// # Errors
/// A series is missing or its value is not a number.
pub fn parse_metrics(text: &str) -> anyhow::Result<BrokerSample> {
    let value = |name: &str| -> anyhow::Result<f64> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} (a broker from before it was added?)"))?;
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("{name} has no numeric value: {line:?}"))
    };
    Ok(BrokerSample {
        cpu_seconds: value("process_cpu_seconds_total")?,
        resident_bytes: value("process_resident_memory_bytes")? as u64,
        resident_max_bytes: value("process_resident_memory_max_bytes")? as u64,
    })
}

/// Where a broker at `broker` (host:port) serves its metrics by default:
/// the same host, the broker's default metrics port.
pub fn default_metrics_addr(broker: &str) -> String {
    let host = broker.rsplit_once(':').map_or(broker, |(host, _)| host);
    format!("{host}:9644")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_from_a_rendering() {
        let text =
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total 12.5\n\
                    process_resident_memory_bytes 104857600\n\
                    process_resident_memory_max_bytes 209715200\n\
                    shardlog_requests_total{shard=\"0\",api=\"produce\"} 7\n";
        let sample = parse_metrics(text).unwrap();
        assert_eq!(sample.cpu_seconds, 12.5);
        assert_eq!(sample.resident_bytes, 100 << 20);
        assert_eq!(sample.resident_max_bytes, 200 << 20);
        let missing = parse_metrics("shardlog_requests_total 7\n").unwrap_err();
        assert!(format!("{missing}").contains("process_cpu_seconds_total"));
    }

    fn broker(cpu_seconds: f64, resident_bytes: u64, resident_max_bytes: u64) -> BrokerSample {
        BrokerSample {
            cpu_seconds,
            resident_bytes,
            resident_max_bytes,
        }
    }

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn usage_divides_the_window_by_gigabytes() {
        let before = Sample {
            client_cpu_seconds: 1.0,
            brokers: vec![Ok(broker(10.0, 1, 2))],
        };
        let after = Sample {
            client_cpu_seconds: 4.0,
            brokers: vec![Ok(broker(12.0, 3, 5))],
        };
        let one = addrs(&["h:9644"]);
        let usage = Usage::between(&one, 1, &before, &after, 2_000_000_000);
        assert_eq!(usage.broker_cpu_s, Some(2.0));
        assert_eq!(usage.broker_cpu_s_per_gb, Some(1.0));
        assert_eq!(usage.client_cpu_s, 3.0);
        assert_eq!(usage.client_cpu_s_per_gb, Some(1.5));
        assert_eq!(usage.broker_peak_rss_bytes, Some(5));
        assert_eq!(usage.broker_rss_bytes, Some(3));
        assert_eq!(usage.broker_metrics_error, None);
        assert_eq!(usage.broker_metrics, "h:9644");
        assert_eq!(usage.broker_count, 1);
        assert_eq!(usage.per_broker.len(), 1);
        let unreachable = Sample {
            client_cpu_seconds: 4.0,
            brokers: vec![Err("connection refused".into())],
        };
        let usage = Usage::between(&one, 1, &before, &unreachable, 0);
        assert_eq!(usage.broker_cpu_s, None);
        assert_eq!(usage.broker_cpu_s_per_gb, None);
        assert_eq!(
            usage.client_cpu_s_per_gb, None,
            "no bytes: no per-GB figure"
        );
        assert_eq!(
            usage.broker_metrics_error.as_deref(),
            Some("connection refused")
        );
        assert!(usage.per_broker.is_empty());
    }

    #[test]
    fn a_clusters_cpu_is_the_sum_of_its_brokers_and_its_memory_the_largest() {
        let three = addrs(&["a:1", "b:2", "c:3"]);
        let before = Sample {
            client_cpu_seconds: 0.0,
            brokers: vec![
                Ok(broker(10.0, 100, 200)),
                Ok(broker(20.0, 100, 200)),
                Ok(broker(30.0, 100, 200)),
            ],
        };
        let after = Sample {
            client_cpu_seconds: 1.0,
            brokers: vec![
                Ok(broker(11.0, 300, 900)),
                Ok(broker(22.5, 700, 800)),
                // A counter that went back (a restarted broker) counts nothing, not less.
                Ok(broker(29.0, 100, 200)),
            ],
        };
        let usage = Usage::between(&three, 3, &before, &after, 500_000_000);
        assert_eq!(usage.broker_metrics_error, None);
        assert_eq!(usage.broker_cpu_s, Some(3.5));
        assert_eq!(usage.broker_cpu_s_per_gb, Some(7.0));
        assert_eq!(usage.broker_peak_rss_bytes, Some(900));
        assert_eq!(usage.broker_rss_bytes, Some(700));
        assert_eq!(usage.broker_metrics, "a:1,b:2,c:3");
        assert_eq!(usage.broker_count, 3);
        let each: Vec<(&str, f64)> = usage
            .per_broker
            .iter()
            .map(|b| (b.metrics.as_str(), b.cpu_s))
            .collect();
        assert_eq!(each, [("a:1", 1.0), ("b:2", 2.5), ("c:3", 0.0)]);
    }

    #[test]
    fn one_unread_broker_or_a_missing_endpoint_leaves_the_cluster_unmeasured() {
        let three = addrs(&["a:1", "b:2", "c:3"]);
        let good = |cpu| Ok(broker(cpu, 1, 1));
        let before = vec![good(1.0), good(1.0), good(1.0)];
        let after = vec![
            good(2.0),
            Err("cannot scrape b:2: connection refused".into()),
            good(2.0),
        ];
        let error = brokers_between(&three, 3, &before, &after).unwrap_err();
        assert_eq!(error, "cannot scrape b:2: connection refused");
        let sample = |brokers: &Vec<Result<BrokerSample, String>>| Sample {
            client_cpu_seconds: 0.0,
            brokers: brokers.clone(),
        };
        let usage = Usage::between(&three, 3, &sample(&before), &sample(&after), 1_000);
        assert_eq!(usage.broker_cpu_s, None, "never a sum over two of three");
        assert_eq!(usage.broker_cpu_s_per_gb, None);
        assert_eq!(usage.broker_peak_rss_bytes, None);
        assert!(usage.per_broker.is_empty());
        assert_eq!(usage.broker_metrics_error.as_deref(), Some(error.as_str()));
        // Two unread brokers: both reasons.
        let before = vec![Err("a down".into()), good(1.0), Err("c down".into())];
        let error = brokers_between(&three, 3, &before, &after).unwrap_err();
        assert_eq!(
            error,
            "a down; cannot scrape b:2: connection refused; c down"
        );
        // A three-broker cluster measured through one endpoint.
        let one = addrs(&["a:1"]);
        let error = brokers_between(&one, 3, &[good(1.0)], &[good(2.0)]).unwrap_err();
        assert!(
            error.contains("the cluster has 3 broker(s) but 1 metrics endpoint(s)"),
            "{error}"
        );
        assert!(error.contains("--broker-metrics"), "{error}");
    }

    #[test]
    fn the_metrics_address_defaults_to_the_brokers_host() {
        assert_eq!(default_metrics_addr("10.1.2.3:7070"), "10.1.2.3:9644");
        assert_eq!(default_metrics_addr("[::1]:7070"), "[::1]:9644");
        assert_eq!(default_metrics_addr("broker"), "broker:9644");
        let before = client_cpu_seconds();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(client_cpu_seconds() >= before);
    }
}
