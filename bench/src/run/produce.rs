//! Producer tasks: each sends its share of the records to its topic, on
//! schedule when a rate is set, and records publish latency in its
//! delivery callbacks.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use shardlog_client::{Acks, Compression, Producer, ProducerConfig, ProducerRecord};
use tokio::time::Instant;

use super::{lock, Run, TaskStats};
use crate::config::{AcksArg, BenchConfig, CompressionArg};

/// Runs every producer of the plan to the end.
pub(super) async fn produce_all(run: Arc<Run>) -> anyhow::Result<()> {
    let producers = run.plan.producer_count();
    assert!(producers > 0);
    let mut tasks = Vec::with_capacity(producers);
    for index in 0..producers {
        tasks.push(tokio::spawn(produce_one(run.clone(), index, producers)));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn producer_config(config: &BenchConfig, run: &Run) -> ProducerConfig {
    ProducerConfig {
        client: run.client.clone(),
        linger: Duration::from_millis(config.linger_ms),
        batch_size: config.batch_size,
        acks: match config.acks {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::All => Acks::All,
        },
        compression: match config.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        },
        ..ProducerConfig::default()
    }
}

/// The records producer `index` of `producers` sends, for a run bounded by count.
fn share(records: Option<u64>, index: usize, producers: usize) -> Option<u64> {
    records.map(|r| r / producers as u64 + u64::from((index as u64) < r % producers as u64))
}

/// One producer client: sends its share of the records, on schedule when a rate is set.
async fn produce_one(run: Arc<Run>, index: usize, producers: usize) -> anyhow::Result<()> {
    let plan = &run.plan;
    let topic = plan.topics[index % plan.topics.len()].clone();
    let producer = Producer::new(producer_config(&run.config, &run)).await?;
    let share = share(plan.records, index, producers);
    let interval = plan
        .rate_per_second
        .map(|rate| Duration::from_secs_f64(producers as f64 / rate));
    let stats = Arc::new(ProducerStats {
        run: run.clone(),
        task: run.task_stats(),
        error: Mutex::new(None),
    });
    // Only consumers read a value's send time; without them every record
    // carries the same payload, as OpenMessaging Benchmark's producers do.
    let stamped = !matches!(plan.consumers, crate::plan::Consumers::None);
    let mut values = ValueArena::new(stamped);
    let mut sent = 0u64;
    let start = Instant::now();
    // The clock is read for the window once every EXPIRY_CHECK_RECORDS records.
    while share.is_none_or(|n| sent < n) && (sent % EXPIRY_CHECK_RECORDS != 0 || !run.expired()) {
        let intended = match interval {
            Some(interval) => {
                let at = start + interval.mul_f64(sent as f64);
                tokio::time::sleep_until(at).await;
                at
            }
            None => Instant::now(),
        };
        match interval {
            Some(_) => stats.handed_over(intended),
            // Unpaced, a record is handed over when it is made: no delay to measure.
            None => stats.handed_over_at(intended, intended),
        }
        let since_origin = intended.duration_since(run.window.origin());
        let value = values.value(plan.record_size_bytes, since_origin);
        let mut record = ProducerRecord::new(topic.clone(), value);
        if plan.key_space > 0 {
            record.key = Some(Bytes::from(
                (sent.wrapping_mul(2_654_435_761) % plan.key_space).to_string(),
            ));
        }
        let stats_for_record = stats.clone();
        producer
            .send_with_callback(record, move |result| {
                stats_for_record.delivered(intended, result)
            })
            .await?;
        sent += 1;
    }
    producer.flush().await?;
    producer.close().await?;
    if let Some(error) = lock(&stats.error).take() {
        anyhow::bail!("a record failed: {error}");
    }
    Ok(())
}

/// Records sent between two looks at the clock for the end of the run.
const EXPIRY_CHECK_RECORDS: u64 = 64;

/// What one producer's delivery callbacks collect.
struct ProducerStats {
    run: Arc<Run>,
    task: Arc<Mutex<TaskStats>>,
    /// The first failure; the run stops at it.
    error: Mutex<Option<shardlog_client::Error>>,
}

impl ProducerStats {
    /// A record intended for `intended` is handed to the producer now: OMB's publish delay.
    fn handed_over(&self, intended: Instant) {
        self.handed_over_at(intended, Instant::now());
    }

    /// As `handed_over`, at `now`.
    fn handed_over_at(&self, intended: Instant, now: Instant) {
        if self.run.window.measuring(now) {
            let delay_us = now.saturating_duration_since(intended).as_micros() as u64;
            lock(&self.task).record(|h| &mut h.publish_delay, delay_us);
        }
    }

    /// A delivery callback: records the latency from the intended send time.
    fn delivered(
        &self,
        intended: Instant,
        result: Result<shardlog_client::RecordMetadata, shardlog_client::Error>,
    ) {
        let run = &self.run;
        match result {
            Ok(_) => {
                let now = Instant::now();
                run.counters.published_total.fetch_add(1, Ordering::Relaxed);
                if run.window.measuring(now) {
                    let latency_us = now.duration_since(intended).as_micros() as u64;
                    lock(&self.task).record(|h| &mut h.publish, latency_us);
                    run.count_at(now, run.plan.record_size_bytes);
                }
            }
            Err(error) => {
                run.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                lock(&self.error).get_or_insert(error);
                run.stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Record values carved from 1 MiB chunks, one allocation per chunk rather
/// than per record (the producer copies each value into its batch); or,
/// when nobody reads the send time, one shared payload.
#[derive(Default)]
pub(super) struct ValueArena {
    chunk: BytesMut,
    /// `Some` when values need not carry their send time: the shared payload.
    unstamped: Option<Bytes>,
}

impl ValueArena {
    const CHUNK_BYTES: usize = 1 << 20;

    /// Values that carry their send time (`stamped`), or all the same bytes.
    pub(super) fn new(stamped: bool) -> ValueArena {
        ValueArena {
            chunk: BytesMut::new(),
            unstamped: (!stamped).then(Bytes::new),
        }
    }

    /// A value of `size` bytes (at least 8) that starts with its send time,
    /// or (unstamped) with zero.
    pub(super) fn value(&mut self, size: usize, since_origin: Duration) -> Bytes {
        let size = size.max(8);
        if let Some(shared) = &mut self.unstamped {
            if shared.len() != size {
                let mut payload = BytesMut::with_capacity(size);
                payload.put_u64_le(0);
                payload.resize(size, 0x61);
                *shared = payload.freeze();
            }
            return shared.clone();
        }
        if self.chunk.capacity() < size {
            self.chunk = BytesMut::with_capacity(Self::CHUNK_BYTES.max(size));
        }
        self.chunk.put_u64_le(since_origin.as_micros() as u64);
        self.chunk.resize(size, 0x61);
        self.chunk.split().freeze()
    }
}

/// The send time a value carries, in microseconds since the origin.
pub(super) fn sent_us(value: &[u8]) -> Option<u64> {
    let head: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_send_time() {
        let mut values = ValueArena::new(true);
        let value = values.value(64, Duration::from_micros(123_456));
        assert_eq!(value.len(), 64);
        assert_eq!(sent_us(&value), Some(123_456));
        assert!(value[8..].iter().all(|b| *b == 0x61));
        // The next value is its own bytes, not an alias of the first.
        let next = values.value(64, Duration::from_micros(7));
        assert_eq!(sent_us(&next), Some(7));
        assert_eq!(sent_us(&value), Some(123_456));
        assert_eq!(sent_us(b"short"), None);
    }

    #[test]
    fn unstamped_values_share_one_payload_of_the_asked_size() {
        let mut values = ValueArena::new(false);
        let a = values.value(1024, Duration::from_micros(5));
        let b = values.value(1024, Duration::from_micros(9));
        assert_eq!((a.len(), b.len()), (1024, 1024));
        assert_eq!(a.as_ptr(), b.as_ptr(), "one payload, shared");
        assert_eq!(sent_us(&a), Some(0));
        assert!(a[8..].iter().all(|x| *x == 0x61));
        assert_eq!(values.value(100, Duration::ZERO).len(), 100);
    }

    #[test]
    fn values_larger_than_a_chunk_get_their_own() {
        let mut values = ValueArena::default();
        let size = ValueArena::CHUNK_BYTES + 10;
        let value = values.value(size, Duration::from_micros(1));
        assert_eq!(value.len(), size);
    }

    #[test]
    fn shares_add_up_to_the_records() {
        let shares: Vec<u64> = (0..3).map(|i| share(Some(10), i, 3).unwrap()).collect();
        assert_eq!(shares, [4, 3, 3]);
        assert_eq!(share(None, 0, 3), None);
    }
}
