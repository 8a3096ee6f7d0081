//! CPU per GB and the broker's memory: what moving the data cost.
//!
//! Throughput alone hides whether a broker got faster or just took more
//! cores. Both processes' CPU time is read at the start of the measured
//! window and at its end and divided by the gigabytes the window counted
//! (GB = 10^9 bytes of record values):
//!
//! - the broker's from its own `/metrics` (`process_cpu_seconds_total`,
//!   `process_resident_memory_max_bytes`), so a broker on another machine is
//!   measured the same way as an embedded one;
//! - the load generator's from `getrusage(RUSAGE_SELF)`: every thread of
//!   this process. An embedded broker is a child process, and a child's
//!   time is in `RUSAGE_CHILDREN` only after it has been waited for, so it
//!   is never mixed in.
//!
//! A broker whose metrics cannot be reached leaves its figures out (the
//! table and the JSON say why) instead of failing the run.

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
    /// The broker's, or why it could not be read.
    pub broker: Result<BrokerSample, String>,
}

/// What the measured window cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Where the broker's metrics were read.
    pub broker_metrics: String,
    /// Why they could not be, if so.
    pub broker_metrics_error: Option<String>,
    /// The broker's CPU core-seconds in the window.
    pub broker_cpu_s: Option<f64>,
    /// This process's CPU core-seconds in the window.
    pub client_cpu_s: f64,
    /// `broker_cpu_s` per 10^9 bytes of record values counted.
    pub broker_cpu_s_per_gb: Option<f64>,
    /// `client_cpu_s` per 10^9 bytes of record values counted.
    pub client_cpu_s_per_gb: Option<f64>,
    /// The broker's peak resident memory (VmHWM) at the window's end.
    pub broker_peak_rss_bytes: Option<u64>,
    /// The broker's resident memory at the window's end.
    pub broker_rss_bytes: Option<u64>,
}

/// CPU seconds per GB, or None when nothing was moved.
pub fn per_gb(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_seconds / (bytes as f64 / BYTES_PER_GB))
}

impl Usage {
    /// The cost of the window between `before` and `after`, which counted `bytes`.
    pub fn between(metrics_addr: &str, before: &Sample, after: &Sample, bytes: u64) -> Usage {
        let client_cpu_s = (after.client_cpu_seconds - before.client_cpu_seconds).max(0.0);
        let broker = match (&before.broker, &after.broker) {
            (Ok(before), Ok(after)) => Ok((before, after)),
            (Err(error), _) | (_, Err(error)) => Err(error.clone()),
        };
        let broker_cpu_s = broker
            .as_ref()
            .ok()
            .map(|(b, a)| (a.cpu_seconds - b.cpu_seconds).max(0.0));
        let after_broker = broker.as_ref().ok().map(|(_, a)| *a);
        Usage {
            broker_metrics: metrics_addr.to_string(),
            broker_metrics_error: broker.err(),
            broker_cpu_s,
            client_cpu_s,
            broker_cpu_s_per_gb: broker_cpu_s.and_then(|s| per_gb(s, bytes)),
            client_cpu_s_per_gb: per_gb(client_cpu_s, bytes),
            broker_peak_rss_bytes: after_broker.map(|a| a.resident_max_bytes),
            broker_rss_bytes: after_broker.map(|a| a.resident_bytes),
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

/// Reads both processes' counters now.
pub async fn sample(metrics_addr: &str) -> Sample {
    let broker = scrape(metrics_addr).await.map_err(|e| format!("{e:#}"));
    Sample {
        client_cpu_seconds: client_cpu_seconds(),
        broker,
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

    #[test]
    fn usage_divides_the_window_by_gigabytes() {
        let before = Sample {
            client_cpu_seconds: 1.0,
            broker: Ok(BrokerSample {
                cpu_seconds: 10.0,
                resident_bytes: 1,
                resident_max_bytes: 2,
            }),
        };
        let after = Sample {
            client_cpu_seconds: 4.0,
            broker: Ok(BrokerSample {
                cpu_seconds: 12.0,
                resident_bytes: 3,
                resident_max_bytes: 5,
            }),
        };
        let usage = Usage::between("h:9644", &before, &after, 2_000_000_000);
        assert_eq!(usage.broker_cpu_s, Some(2.0));
        assert_eq!(usage.broker_cpu_s_per_gb, Some(1.0));
        assert_eq!(usage.client_cpu_s, 3.0);
        assert_eq!(usage.client_cpu_s_per_gb, Some(1.5));
        assert_eq!(usage.broker_peak_rss_bytes, Some(5));
        assert_eq!(usage.broker_rss_bytes, Some(3));
        assert_eq!(usage.broker_metrics_error, None);
        let unreachable = Sample {
            client_cpu_seconds: 4.0,
            broker: Err("connection refused".into()),
        };
        let usage = Usage::between("h:9644", &before, &unreachable, 0);
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
